//! The pod lifecycle event generator: relists the runtime every second and tells the pod manager which pods changed,
//! as kubelet's generic PLEG does (containerd 1.6 has no CRI event stream to do better).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::mpsc;

use crate::runtime::client::Runtime;
use crate::runtime::types::ContainerRunState;

/// kubelet's `genericPlegRelistPeriod`.
pub const RELIST_PERIOD: Duration = Duration::from_secs(1);
/// kubelet's `genericPlegRelistThreshold`: a PLEG that has not relisted for this long makes the node unhealthy.
pub const RELIST_THRESHOLD: Duration = Duration::from_secs(180);

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PlegEvent {
    /// Something about this pod's sandboxes or containers changed.
    PodChanged(String),
    /// A relist finished; these pod UIDs have sandboxes or containers in the runtime.
    Relisted(BTreeSet<String>),
}

/// What a relist sees of one pod: (id, state) of every sandbox and container.
type PodFingerprint = BTreeSet<(String, String)>;

#[derive(Clone, Default)]
pub struct PlegHealth {
    last_relist_unix_ms: Arc<AtomicU64>,
}

impl PlegHealth {
    fn mark(&self) {
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_millis() as u64;
        self.last_relist_unix_ms.store(now, Ordering::Relaxed);
    }

    /// True while relists keep succeeding within `RELIST_THRESHOLD`.
    pub fn healthy(&self) -> bool {
        let last = self.last_relist_unix_ms.load(Ordering::Relaxed);
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_millis() as u64;
        last != 0 && now.saturating_sub(last) < RELIST_THRESHOLD.as_millis() as u64
    }
}

pub struct Pleg {
    runtime: Runtime,
    health: PlegHealth,
    previous: BTreeMap<String, PodFingerprint>,
}

impl Pleg {
    pub fn new(runtime: Runtime) -> Self {
        Self { runtime, health: PlegHealth::default(), previous: BTreeMap::new() }
    }

    pub fn health(&self) -> PlegHealth {
        self.health.clone()
    }

    pub async fn run(mut self, events: mpsc::UnboundedSender<PlegEvent>) {
        let mut tick = tokio::time::interval(RELIST_PERIOD);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            match self.relist().await {
                Ok(changed) => {
                    self.health.mark();
                    for uid in changed {
                        if events.send(PlegEvent::PodChanged(uid)).is_err() {
                            return;
                        }
                    }
                    if events.send(PlegEvent::Relisted(self.previous.keys().cloned().collect())).is_err() {
                        return;
                    }
                }
                Err(e) => tracing::warn!(error = %e, "PLEG relist failed"),
            }
        }
    }

    async fn relist(&mut self) -> Result<Vec<String>, crate::runtime::RuntimeError> {
        let (sandboxes, containers) =
            tokio::join!(self.runtime.list_pod_sandboxes(None), self.runtime.list_containers(None));
        let mut current: BTreeMap<String, PodFingerprint> = BTreeMap::new();
        for s in sandboxes? {
            current.entry(s.pod_uid).or_default().insert((s.id, if s.ready { "ready" } else { "notready" }.into()));
        }
        for c in containers? {
            let state = match c.state {
                ContainerRunState::Created => "created",
                ContainerRunState::Running => "running",
                ContainerRunState::Exited => "exited",
                ContainerRunState::Unknown => "unknown",
            };
            current.entry(c.pod_uid).or_default().insert((c.id, state.into()));
        }
        let changed = diff(&self.previous, &current);
        self.previous = current;
        Ok(changed)
    }
}

/// Pod UIDs whose fingerprint differs between two relists, including pods that appeared or vanished.
fn diff(previous: &BTreeMap<String, PodFingerprint>, current: &BTreeMap<String, PodFingerprint>) -> Vec<String> {
    let uids: BTreeSet<&String> = previous.keys().chain(current.keys()).collect();
    uids.into_iter().filter(|uid| previous.get(*uid) != current.get(*uid)).cloned().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fp(entries: &[(&str, &str)]) -> PodFingerprint {
        entries.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect()
    }

    #[test]
    fn diff_reports_changed_new_and_gone_pods() {
        let prev = BTreeMap::from([
            ("a".to_string(), fp(&[("c1", "running")])),
            ("b".to_string(), fp(&[("c2", "running")])),
            ("gone".to_string(), fp(&[("c3", "exited")])),
        ]);
        let cur = BTreeMap::from([
            ("a".to_string(), fp(&[("c1", "running")])),
            ("b".to_string(), fp(&[("c2", "exited")])),
            ("new".to_string(), fp(&[("s1", "ready")])),
        ]);
        assert_eq!(diff(&prev, &cur), vec!["b".to_string(), "gone".to_string(), "new".to_string()]);
    }
}
