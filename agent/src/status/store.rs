//! The pods the agent runs and their latest computed status: read by the read-only server and the status writer.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use k8s_openapi::api::core::v1::{Pod, PodStatus};

/// How long a pod took from first sight to all containers running, and the part of it spent inside CRI calls.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PodStartRecord {
    pub total: Duration,
    pub cri: Duration,
}

#[derive(Debug, Clone)]
pub struct PodEntry {
    pub pod: Arc<Pod>,
    pub status: Option<PodStatus>,
    pub start: Option<PodStartRecord>,
}

#[derive(Debug, Clone)]
pub struct PodStore {
    inner: Arc<RwLock<BTreeMap<String, PodEntry>>>,
    /// Bumped on every change, so the status manager wakes up.
    changes: Arc<tokio::sync::watch::Sender<u64>>,
}

impl Default for PodStore {
    fn default() -> Self {
        Self { inner: Arc::default(), changes: Arc::new(tokio::sync::watch::channel(0).0) }
    }
}

impl PodStore {
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.changes.subscribe()
    }

    fn changed(&self) {
        self.changes.send_modify(|v| *v = v.wrapping_add(1));
    }

    /// Stores the newest copy of the pod. A copy the API changed (another resourceVersion) wakes the status manager:
    /// what others wrote into the status (the node controller's Ready=False after an outage) is answered at once.
    pub fn upsert_pod(&self, uid: &str, pod: Arc<Pod>) {
        let mut api_changed = false;
        if let Ok(mut m) = self.inner.write() {
            match m.get_mut(uid) {
                Some(e) => {
                    api_changed = e.pod.metadata.resource_version != pod.metadata.resource_version;
                    e.pod = pod;
                }
                None => {
                    m.insert(uid.to_owned(), PodEntry { pod, status: None, start: None });
                }
            }
        }
        if api_changed {
            self.changed();
        }
    }

    pub fn set_status(&self, uid: &str, status: PodStatus) {
        if let Ok(mut m) = self.inner.write() {
            if let Some(e) = m.get_mut(uid) {
                e.status = Some(status);
            }
        }
        self.changed();
    }

    pub fn record_start(&self, uid: &str, record: PodStartRecord) {
        if let Ok(mut m) = self.inner.write() {
            if let Some(e) = m.get_mut(uid) {
                e.start = Some(record);
            }
        }
    }

    /// The phase of the pod's latest computed status.
    pub fn status_phase(&self, uid: &str) -> Option<String> {
        let inner = self.inner.read().unwrap_or_else(|e| e.into_inner());
        inner.get(uid).and_then(|e| e.status.as_ref()).and_then(|s| s.phase.clone())
    }

    pub fn remove(&self, uid: &str) {
        if let Ok(mut m) = self.inner.write() {
            m.remove(uid);
        }
        self.changed();
    }

    pub fn list(&self) -> Vec<PodEntry> {
        self.inner.read().map(|m| m.values().cloned().collect()).unwrap_or_default()
    }

    /// Pods with their status filled in, as the API would return them.
    pub fn pods_with_status(&self) -> Vec<Pod> {
        self.list()
            .into_iter()
            .map(|e| {
                let mut pod = (*e.pod).clone();
                pod.status = e.status;
                pod
            })
            .collect()
    }
}

/// The summary lists a pod by the status computed last, or the API's before the first sync.
impl crate::stats::PodLister for PodStore {
    fn pods_with_status(&self) -> Vec<Pod> {
        self.list()
            .into_iter()
            .map(|e| {
                let mut pod = (*e.pod).clone();
                pod.status = e.status.or(pod.status);
                pod
            })
            .collect()
    }
}
