//! rkubelet: a kubelet-compatible node agent. It runs pods on a CRI runtime (containerd) from static manifests,
//! with kubelet's behaviour, names and defaults.

pub mod api;
pub mod cm;
pub mod config;
pub mod eviction;
pub mod kubelet;
pub mod kuberuntime;
pub mod kubetypes;
pub mod logs;
pub mod node;
pub mod pleg;
pub mod pods;
pub mod probes;
pub mod runtime;
pub mod server;
pub mod stats;
pub mod status;
pub mod volumes;
