//! Pods, the pure decisions: what to do (`plan`, kubelet's `computePodActions`), what status to report (`status`,
//! `generateAPIPodStatus`), the active deadline, ephemeral containers and sysctls. No I/O here.

pub mod deadline;
pub mod ephemeral;
pub mod plan;
pub mod status;
pub mod sysctl;
