//! Probes, kubelet's `pkg/kubelet/prober`: the workers (`manager`) that run each container's startup, liveness and
//! readiness probes with their handlers (`handlers`, `http`, `grpc`), the pure threshold logic (`state`), and the
//! results they publish: the latest result per container instance and probe kind. Readiness and startup results go
//! straight into the pod's stored status (`started`, `ready` and the Ready conditions) for the status manager; the
//! planner kills on a failed liveness or startup result.

pub mod grpc;
pub mod handlers;
pub mod http;
pub mod manager;
pub mod metrics;
pub mod state;

pub use manager::Prober;

/// The User-Agent of kubelet's HTTP probes and hooks.
pub const USER_AGENT: &str = "kube-probe/1.28";
