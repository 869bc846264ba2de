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

use std::collections::BTreeMap;

pub use manager::Prober;

/// The User-Agent of kubelet's HTTP probes and hooks.
pub const USER_AGENT: &str = "kube-probe/1.28";

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ProbeKind {
    Liveness,
    Readiness,
    Startup,
}

impl ProbeKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ProbeKind::Liveness => "liveness",
            ProbeKind::Readiness => "readiness",
            ProbeKind::Startup => "startup",
        }
    }

    /// As kubelet names the probe in its events ("Liveness probe failed: ...").
    pub fn title(self) -> &'static str {
        match self {
            ProbeKind::Liveness => "Liveness",
            ProbeKind::Readiness => "Readiness",
            ProbeKind::Startup => "Startup",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProbeResult {
    Success,
    Failure,
}

/// The latest probe results of one pod's containers, keyed by container ID: a restarted container starts with
/// no results, as in kubelet.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProbeResults {
    results: BTreeMap<(String, ProbeKind), ProbeResult>,
}

impl ProbeResults {
    pub fn set(&mut self, container_id: &str, kind: ProbeKind, result: ProbeResult) {
        self.results.insert((container_id.to_owned(), kind), result);
    }

    pub fn get(&self, container_id: &str, kind: ProbeKind) -> Option<ProbeResult> {
        self.results.get(&(container_id.to_owned(), kind)).copied()
    }

    /// Forgets the results of container instances that are gone.
    pub fn retain_containers(&mut self, live: impl Fn(&str) -> bool) {
        self.results.retain(|(id, _), _| live(id));
    }
}
