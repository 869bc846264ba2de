//! Probe results, as kubelet's `prober/results` manager holds them: the latest result per container instance and
//! probe kind. The probe workers that produce them are not there yet; until they are, no result is ever recorded, so
//! a container with a readiness or startup probe is never reported ready or started (kubelet's initial value for
//! both before a probe has passed), and liveness never kills.

use std::collections::BTreeMap;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ProbeKind {
    Liveness,
    Readiness,
    Startup,
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
