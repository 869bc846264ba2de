//! Probes, kubelet's `pkg/kubelet/prober`: the workers (`manager`) that run each container's startup, liveness and
//! readiness probes with their handlers (`handlers`, `http`, `grpc`), the pure threshold logic (`state`), and the
//! results they publish: the latest result per container instance and probe kind. The planner kills on a failed
//! liveness or startup result; the status holds `started` and `ready` until the startup and readiness probes pass.

pub mod grpc;
pub mod handlers;
pub mod http;
pub mod manager;
pub mod metrics;
pub mod state;

pub use manager::Prober;

/// The User-Agent of kubelet's HTTP probes and hooks.
pub const USER_AGENT: &str = "kube-probe/1.28";
