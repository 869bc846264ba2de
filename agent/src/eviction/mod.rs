//! The eviction manager's pure decisions (kubelet's `pkg/kubelet/eviction`).

pub mod local_storage;
pub mod psi;
