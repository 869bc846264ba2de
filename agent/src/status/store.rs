//! The pods the agent runs and their latest computed status: read by the read-only server and the status manager,
//! which is told which pods changed.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime};

use k8s_openapi::api::core::v1::{Pod, PodStatus};
use tokio::sync::Notify;

use crate::kubetypes::probe::ProbeResults;
use crate::status::{is_static, readiness};

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
    /// Bumped whenever `status` changes, so the status manager's periodic check compares a number, not a status.
    pub status_version: u64,
    /// The resourceVersion the API answered our last status write with: that copy coming back through the watch
    /// is our own write, not news.
    pub written_rv: Option<String>,
    /// The status version the status manager has written, or found nothing to write for.
    pub settled_version: u64,
    /// The pod's latest readiness and startup results, applied to every status set (a status computed from older
    /// results must not undo a probe result that landed meanwhile).
    probes: Option<Arc<Mutex<ProbeResults>>>,
}

/// The pods whose status or API copy changed since the status manager last looked (kubelet's per-pod
/// `podStatusChannel`): a set, so a pod changed twice is looked at once, and a `Notify` to wake the manager.
#[derive(Debug, Default)]
struct Dirty {
    uids: Mutex<BTreeSet<String>>,
    notify: Notify,
}

/// Wakes whoever waits for the statuses to be written (graceful node shutdown) when a write settles.
#[derive(Debug)]
struct Settled(tokio::sync::watch::Sender<()>);

impl Default for Settled {
    fn default() -> Self {
        Settled(tokio::sync::watch::Sender::new(()))
    }
}

#[derive(Debug, Clone, Default)]
pub struct PodStore {
    inner: Arc<RwLock<BTreeMap<String, PodEntry>>>,
    dirty: Arc<Dirty>,
    settled: Arc<Settled>,
}

impl PodStore {
    /// Tells the status manager that this pod needs a look.
    fn mark(&self, uid: &str) {
        if let Ok(mut d) = self.dirty.uids.lock() {
            d.insert(uid.to_owned());
        }
        self.dirty.notify.notify_one();
    }

    /// Waits until a pod was marked since the last [`take_dirty`](Self::take_dirty).
    pub async fn changed(&self) {
        self.dirty.notify.notified().await
    }

    /// The pods marked since the last call.
    pub fn take_dirty(&self) -> BTreeSet<String> {
        self.dirty.uids.lock().map(|mut d| std::mem::take(&mut *d)).unwrap_or_default()
    }

    /// Stores the newest copy of the pod. The status manager is told only when someone else changed the status
    /// (the node controller's Ready=False after an outage is answered at once); the copy answering our own write
    /// (its resourceVersion, or the same status as the copy before) is not news. A new static pod needs a mirror pod.
    pub fn upsert_pod(&self, uid: &str, pod: Arc<Pod>) {
        let mut news = false;
        if let Ok(mut m) = self.inner.write() {
            match m.get_mut(uid) {
                Some(e) => {
                    let rv = pod.metadata.resource_version.as_deref();
                    news = rv != e.pod.metadata.resource_version.as_deref()
                        && (rv.is_none() || rv != e.written_rv.as_deref())
                        && pod.status != e.pod.status;
                    e.pod = pod;
                }
                None => {
                    news = is_static(&pod);
                    let entry = PodEntry {
                        pod,
                        status: None,
                        start: None,
                        status_version: 0,
                        written_rv: None,
                        settled_version: 0,
                        probes: None,
                    };
                    m.insert(uid.to_owned(), entry);
                }
            }
        }
        if news {
            self.mark(uid);
        }
    }

    /// Sets the pod's status (with the latest probe results applied); the status manager is told when it changed.
    pub fn set_status(&self, uid: &str, mut status: PodStatus) {
        let mut changed = false;
        if let Ok(mut m) = self.inner.write() {
            if let Some(e) = m.get_mut(uid) {
                if let Some(results) = e.probes.as_ref().and_then(|r| r.lock().ok()) {
                    readiness::apply_probe_results(&e.pod, &mut status, &results, SystemTime::now());
                }
                readiness::keep_transition_times(&mut status, e.status.as_ref());
                if e.status.as_ref() != Some(&status) {
                    e.status = Some(status);
                    e.status_version += 1;
                    changed = true;
                }
            }
        }
        if changed {
            self.mark(uid);
        }
    }

    /// The probe results of the pod, applied to each status set from now on.
    pub fn set_probe_results(&self, uid: &str, results: Arc<Mutex<ProbeResults>>) {
        if let Ok(mut m) = self.inner.write() {
            if let Some(e) = m.get_mut(uid) {
                e.probes = Some(results);
            }
        }
    }

    /// Applies the pod's latest probe results to its stored status (kubelet's `SetContainerReadiness` and
    /// `SetContainerStartup`), telling the status manager if that changed it. Nothing happens before the pod's
    /// first status is computed.
    pub fn apply_probe_results(&self, uid: &str, results: &Mutex<ProbeResults>) {
        let mut changed = false;
        if let Ok(mut m) = self.inner.write() {
            if let Some(e) = m.get_mut(uid) {
                let pod = &e.pod;
                if let (Some(status), Ok(results)) = (e.status.as_mut(), results.lock()) {
                    changed = readiness::apply_probe_results(pod, status, &results, SystemTime::now());
                }
                if changed {
                    e.status_version += 1;
                }
            }
        }
        if changed {
            self.mark(uid);
        }
    }

    /// Records the resourceVersion the API answered a status write of the pod with.
    pub fn set_written(&self, uid: &str, resource_version: Option<String>) {
        if let Ok(mut m) = self.inner.write() {
            if let Some(e) = m.get_mut(uid) {
                e.written_rv = resource_version;
            }
        }
    }

    /// The status manager is done with the pod's status up to `version`: written, or nothing to write.
    pub fn set_settled(&self, uid: &str, version: u64) {
        if let Ok(mut m) = self.inner.write() {
            if let Some(e) = m.get_mut(uid) {
                e.settled_version = e.settled_version.max(version);
            }
        }
        self.settled.0.send_replace(());
    }

    /// Waits until the status manager is done with every pod's latest status, at most `timeout`; the pods
    /// (`namespace/name`) still waiting for a write then.
    pub async fn wait_written(&self, timeout: Duration) -> Vec<String> {
        let mut settled = self.settled.0.subscribe();
        let pending = || -> Vec<String> {
            let inner = self.inner.read().unwrap_or_else(|e| e.into_inner());
            inner
                .values()
                .filter(|e| e.status.is_some() && e.settled_version < e.status_version)
                .map(|e| crate::kubetypes::spec::key(&e.pod))
                .collect()
        };
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let left = pending();
            if left.is_empty() {
                return left;
            }
            if tokio::time::timeout_at(deadline, settled.changed()).await.is_err() {
                return pending();
            }
        }
    }

    /// The pod, its status and the status' version.
    pub fn get(&self, uid: &str) -> Option<(Arc<Pod>, Option<PodStatus>, u64)> {
        let inner = self.inner.read().unwrap_or_else(|e| e.into_inner());
        inner.get(uid).map(|e| (e.pod.clone(), e.status.clone(), e.status_version))
    }

    /// Calls `f` with each pod's UID, resourceVersion and status version, under the lock: nothing is cloned.
    pub fn for_each_version(&self, mut f: impl FnMut(&str, Option<&str>, u64)) {
        let inner = self.inner.read().unwrap_or_else(|e| e.into_inner());
        for (uid, e) in inner.iter() {
            f(uid, e.pod.metadata.resource_version.as_deref(), e.status_version);
        }
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
        self.mark(uid);
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
