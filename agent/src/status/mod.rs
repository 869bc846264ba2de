//! The status manager: writes each pod's computed status to the API as kubelet's status manager does
//! (pkg/kubelet/status/status_manager.go): a strategic-merge patch from the status the server holds to the new one,
//! with the pod UID as a precondition, only for pods whose status differs, several pods at a time and one write at a
//! time per pod, failed ones retried every `syncPeriod`. The store tells it which pods changed (kubelet's per-pod
//! status channel); it looks at those alone, and the API's echo of its own write is not a change. It also keeps
//! mirror pods for static pods, and finishes graceful deletions by deleting the pod object with grace period 0 once
//! its containers are gone.

pub mod readiness;
pub mod store;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use k8s_openapi::api::core::v1::{Pod, PodCondition, PodStatus};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams, Preconditions};
use serde_json::{Map, Value};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tracing::Instrument;

use crate::api::strategic;
use crate::kubetypes::annotations::{
    CONFIG_HASH_ANNOTATION, CONFIG_MIRROR_ANNOTATION, CONFIG_SOURCE_ANNOTATION, FILE_SOURCE,
};
use crate::kubetypes::spec;
use crate::pods::status::{to_time, DISRUPTION_TARGET, PHASE_FAILED, PHASE_SUCCEEDED};
use crate::status::store::PodStore;

/// kubelet's status manager re-checks every pod this often (`syncPeriod`), which also retries failed writes.
pub const STATUS_SYNC_PERIOD: Duration = Duration::from_secs(10);

/// Status writes and final deletions in flight at once. Each pod has at most one, so its writes stay in order.
pub const MAX_WRITES_IN_FLIGHT: usize = 12;

/// Pod condition types kubelet owns (`kubetypes.PodConditionByKubelet`); others (readiness gates,
/// DisruptionTarget...) are kept as the API has them.
const KUBELET_CONDITIONS: [&str; 5] =
    ["PodReadyToStartContainers", "Initialized", "Ready", "ContainersReady", "PodScheduled"];

/// Mirror pods in the API, by `namespace/name`.
pub type MirrorPods = BTreeMap<String, Arc<Pod>>;

pub struct StatusManager {
    pub client: kube::Client,
    pub node_name: String,
    pub store: PodStore,
    pub mirrors: watch::Receiver<MirrorPods>,
    pub terminated: mpsc::UnboundedReceiver<Arc<Pod>>,
    pub counts: Arc<StatusManagerCounts>,
}

/// A pod from the manifest folder, whose status goes to its mirror pod.
pub fn is_static(pod: &Pod) -> bool {
    pod.metadata.annotations.as_ref().and_then(|a| a.get(CONFIG_SOURCE_ANNOTATION)).is_some_and(|s| s == FILE_SOURCE)
}

fn code(e: &kube::Error) -> Option<u16> {
    match e {
        kube::Error::Api(s) => Some(s.code),
        _ => None,
    }
}

fn terminal(phase: Option<&str>) -> bool {
    matches!(phase, Some(PHASE_SUCCEEDED) | Some(PHASE_FAILED))
}

/// The status to write, from ours and the one the server holds (`base`), as kubelet's `updateStatusInternal` and
/// `mergePodStatus` make it: `startTime` never changes once set, a condition whose status is unchanged keeps its
/// transition time, and the conditions and fields others own are kept as the server has them. With `base` read from
/// the API this also carries the times across an agent restart.
///
/// Our `DisruptionTarget` condition goes only with the write that makes the pod terminal, as kubelet's guard in
/// `mergePodStatus` sends it: the pod worker holds a killed pod's terminal phase back until its containers are gone,
/// so the API never shows the condition on a pod that could still run.
pub fn merge_status(ours: &PodStatus, base: Option<&PodStatus>) -> PodStatus {
    let mut merged = ours.clone();
    let empty = PodStatus::default();
    let base = base.unwrap_or(&empty);
    if base.start_time.is_some() {
        merged.start_time = base.start_time.clone();
    }
    let transitioning_to_terminal = !terminal(base.phase.as_deref()) && terminal(ours.phase.as_deref());
    let sent = |c: &PodCondition| c.type_ != DISRUPTION_TARGET || transitioning_to_terminal;
    let base_conditions = base.conditions.as_deref().unwrap_or_default();
    let mut conditions: Vec<_> = base_conditions
        .iter()
        .filter(|c| {
            !KUBELET_CONDITIONS.contains(&c.type_.as_str())
                && !ours.conditions.iter().flatten().any(|o| o.type_ == c.type_ && sent(o))
        })
        .cloned()
        .collect();
    for mut c in ours.conditions.iter().flatten().filter(|c| sent(c)).cloned() {
        if let Some(old) = base_conditions.iter().find(|b| b.type_ == c.type_ && b.status == c.status) {
            if old.last_transition_time.is_some() {
                c.last_transition_time = old.last_transition_time.clone();
            }
        } else if c.type_ == DISRUPTION_TARGET {
            // Its time is when it is sent: the one from the start of the kill is stale (kubelet's
            // `updateLastTransitionTime` in `mergePodStatus`).
            c.last_transition_time = to_time(SystemTime::now());
        }
        conditions.push(c);
    }
    merged.conditions = (!conditions.is_empty()).then_some(conditions);
    // Set by the scheduler and the resource claim controller, never by kubelet.
    merged.nominated_node_name = base.nominated_node_name.clone();
    merged.resource_claim_statuses = base.resource_claim_statuses.clone();
    merged
}

/// The object's status as the server would store it, for comparison and diffing.
fn status_json(status: Option<&PodStatus>) -> Value {
    status.and_then(|s| serde_json::to_value(s).ok()).and_then(|v| strategic::normalize(&v)).unwrap_or(Value::Null)
}

/// kubelet's `preparePatchBytesForPodStatus`: the two-way strategic merge patch from the status the server holds to
/// the new one, with `metadata.uid` so that a pod recreated under the same name is not touched. `None` when the
/// status is unchanged.
pub fn pod_status_patch(uid: &str, old: &Value, new: &Value) -> Option<Value> {
    let wrap = |v: &Value| {
        let mut m = Map::new();
        if !v.is_null() {
            m.insert("status".to_owned(), v.clone());
        }
        m
    };
    let mut patch = strategic::two_way(&wrap(old), &wrap(new), strategic::pod_merge_keys);
    if patch.is_empty() {
        return None;
    }
    patch.insert("metadata".to_owned(), serde_json::json!({ "uid": uid }));
    Some(Value::Object(patch))
}

/// Static pods whose mirror pod changed need their status compared again, unless the change is the answer to
/// our own write coming back through the watch.
fn mark_mirrors_changed(state: &mut State, old: &MirrorPods, new: &MirrorPods) {
    for (uid, pod) in &state.statics {
        let key = spec::key(pod);
        let (same, rv) = match (old.get(&key), new.get(&key)) {
            (Some(a), Some(b)) => (Arc::ptr_eq(a, b), b.metadata.resource_version.as_deref()),
            (None, None) => (true, None),
            (_, b) => (false, b.and_then(|b| b.metadata.resource_version.as_deref())),
        };
        let written =
            state.records.get(uid).and_then(|r| r.written.as_ref()).and_then(|w| w.resource_version.as_deref());
        if !same && (rv.is_none() || rv != written) {
            state.dirty.insert(uid.clone());
        }
    }
}

/// How often the status manager woke for changes, how many pods it looked at and how many writes it made: the
/// cost of its notifications (logged at debug level when it stops being idle).
#[derive(Debug, Default)]
pub struct StatusManagerCounts {
    pub wakes: AtomicU64,
    pub looked: AtomicU64,
    pub writes: AtomicU64,
}

fn digest(v: &Value) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    v.to_string().hash(&mut h);
    h.finish()
}

/// Numeric resource versions (etcd's) tell which of two copies of an object is newer; others are opaque.
fn newer(a: Option<&str>, than: Option<&str>) -> bool {
    match (a.and_then(|v| v.parse::<u64>().ok()), than.and_then(|v| v.parse::<u64>().ok())) {
        (Some(a), Some(b)) => a > b,
        _ => false,
    }
}

/// What the server answered to the last status write of a pod.
#[derive(Debug, Clone)]
struct Written {
    /// UID of the object written (the mirror pod's for a static pod).
    target_uid: String,
    /// Digest of the status asked for (normalized).
    sent: u64,
    /// The status the server returned, kept only until the watch has caught up with it, and its resourceVersion.
    response: Option<PodStatus>,
    resource_version: Option<String>,
}

/// The status manager's view of one pod.
#[derive(Debug, Default)]
struct PodRecord {
    /// `namespace/name`, for logs.
    key: String,
    /// A write failed: retried at the next sync period instead of at once.
    failed: bool,
    written: Option<Written>,
    /// The object of this UID is gone or was replaced (404, or the UID precondition failed).
    gone: Option<String>,
    /// The store's status version and the API copy's resourceVersion last looked at, for the periodic check.
    seen_version: u64,
    seen_rv: Option<String>,
}

/// What the status manager keeps between wake-ups.
#[derive(Debug, Default)]
struct State {
    records: HashMap<String, PodRecord>,
    /// Pods to look at: notified by the store, due for a retry, or with a changed mirror pod.
    dirty: BTreeSet<String>,
    /// Static pods by UID, whose mirror pods the manager keeps.
    statics: BTreeMap<String, Arc<Pod>>,
}

impl State {
    /// kubelet's periodic `syncBatch(all)`, without rescanning statuses: a pod needs another look only if its
    /// status or its API copy changed since the last look (other than by the answer to our own write), or its
    /// last write failed. Nothing is cloned.
    fn reconcile(&mut self, store: &PodStore) {
        for (uid, r) in self.records.iter_mut() {
            if std::mem::take(&mut r.failed) {
                self.dirty.insert(uid.clone());
            }
        }
        let (records, dirty) = (&self.records, &mut self.dirty);
        store.for_each_version(|uid, rv, version| {
            let stale = match records.get(uid) {
                None => true,
                Some(r) => {
                    let written = r.written.as_ref().and_then(|w| w.resource_version.as_deref());
                    r.seen_version != version || (rv != r.seen_rv.as_deref() && (rv.is_none() || rv != written))
                }
            };
            if stale {
                dirty.insert(uid.to_owned());
            }
        });
    }
}

/// The status and resourceVersion a write was answered with.
type Answer = (Option<PodStatus>, Option<String>);

enum Outcome {
    /// On success, the status the server answered with and its resourceVersion.
    Status {
        target_uid: String,
        sent: u64,
        /// The store's status version written.
        version: u64,
        /// The resourceVersion of the server's copy the patch was computed from.
        base_rv: Option<String>,
        result: Result<Box<Answer>, kube::Error>,
    },
    Delete {
        result: Result<(), kube::Error>,
    },
}

impl StatusManager {
    pub async fn run(mut self) {
        let mut state = State::default();
        let mut pending_deletes: BTreeMap<String, Arc<Pod>> = BTreeMap::new();
        // UIDs with a write or a deletion in flight.
        let mut in_flight: BTreeSet<String> = BTreeSet::new();
        let mut tasks: JoinSet<(String, Outcome)> = JoinSet::new();
        let mut tick = tokio::time::interval(STATUS_SYNC_PERIOD);
        let mut mirrors_seen = MirrorPods::new();
        // Deletions that failed wait for the next sync period.
        let mut deletes_failed: BTreeSet<String> = BTreeSet::new();
        loop {
            let mut resync_mirrors = false;
            tokio::select! {
                () = self.store.changed() => {
                    let uids = self.store.take_dirty();
                    let wakes = self.counts.wakes.fetch_add(1, Ordering::Relaxed) + 1;
                    let looked = self.counts.looked.load(Ordering::Relaxed);
                    tracing::debug!(pods = uids.len(), wakes, looked, "status manager notified");
                    state.dirty.extend(uids);
                }
                r = self.mirrors.changed() => {
                    if r.is_err() { return }
                    let mirrors = self.mirrors.borrow_and_update().clone();
                    mark_mirrors_changed(&mut state, &mirrors_seen, &mirrors);
                    mirrors_seen = mirrors;
                    resync_mirrors = true;
                }
                Some(pod) = self.terminated.recv() => {
                    if pod.metadata.deletion_timestamp.is_some() && !is_static(&pod) {
                        pending_deletes.insert(spec::uid(&pod).to_owned(), pod);
                    }
                }
                _ = tick.tick() => {
                    state.reconcile(&self.store);
                    deletes_failed.clear();
                    resync_mirrors = true;
                }
                Some(joined) = tasks.join_next(), if !tasks.is_empty() => {
                    if let Ok((uid, outcome)) = joined {
                        in_flight.remove(&uid);
                        if !self.finished(&uid, outcome, &mut state, &mut pending_deletes) {
                            deletes_failed.insert(uid);
                        }
                    }
                }
            }
            resync_mirrors |= self.start_writes(&mut state, &mut in_flight, &mut tasks);
            self.start_deletions(&pending_deletes, &deletes_failed, &mut in_flight, &mut tasks);
            if resync_mirrors {
                self.sync_mirror_pods(&state.statics).await;
            }
        }
    }

    /// Looks at the dirty pods (and only them) and starts the writes they need. True when the set of static pods
    /// changed, so their mirror pods need a look.
    fn start_writes(
        &self,
        state: &mut State,
        in_flight: &mut BTreeSet<String>,
        tasks: &mut JoinSet<(String, Outcome)>,
    ) -> bool {
        let mut statics_changed = false;
        let mirrors = self.mirrors.borrow().clone();
        let dirty: Vec<String> = state.dirty.iter().filter(|uid| !in_flight.contains(*uid)).cloned().collect();
        for uid in dirty {
            if tasks.len() >= MAX_WRITES_IN_FLIGHT {
                break;
            }
            if state.records.get(&uid).is_some_and(|r| r.failed) {
                continue;
            }
            state.dirty.remove(&uid);
            self.counts.looked.fetch_add(1, Ordering::Relaxed);
            let Some((pod, ours, version)) = self.store.get(&uid) else {
                state.records.remove(&uid);
                statics_changed |= state.statics.remove(&uid).is_some();
                continue;
            };
            if is_static(&pod) {
                statics_changed |= state.statics.insert(uid.clone(), pod.clone()).is_none();
            }
            let record = state.records.entry(uid.clone()).or_default();
            if record.key.is_empty() {
                record.key = spec::key(&pod);
            }
            record.seen_version = version;
            record.seen_rv = pod.metadata.resource_version.clone();
            let Some(ours) = ours else { continue };
            // A static pod's status goes to its mirror pod.
            let target: Arc<Pod> = if is_static(&pod) {
                match mirrors.get(&spec::key(&pod)) {
                    Some(m) => m.clone(),
                    None => {
                        self.store.set_settled(&uid, version);
                        continue;
                    }
                }
            } else {
                pod
            };
            if let Some((patch, target_uid, sent, base_rv)) = Self::patch_for(record, &target, &ours) {
                in_flight.insert(uid.clone());
                self.counts.writes.fetch_add(1, Ordering::Relaxed);
                let api: Api<Pod> = Api::namespaced(self.client.clone(), spec::namespace(&target));
                let name = spec::name(&target).to_owned();
                let span = tracing::debug_span!("pod", pod = %spec::key(&target), uid = %uid);
                tasks.spawn(
                    async move {
                        tracing::debug!(%patch, "patching pod status");
                        let result = api
                            .patch_status(&name, &PatchParams::default(), &Patch::Strategic(&patch))
                            .await
                            .map(|pod| Box::new((pod.status, pod.metadata.resource_version)));
                        (uid, Outcome::Status { target_uid, sent, version, base_rv, result })
                    }
                    .instrument(span),
                );
            } else {
                self.store.set_settled(&uid, version);
            }
        }
        statics_changed
    }

    /// kubelet's `needsUpdate` and `mergePodStatus`: the patch from the server's status to ours (with the digest of
    /// what is asked for and the resourceVersion it is computed from), or `None` when nothing is to be written.
    fn patch_for(
        record: &mut PodRecord,
        target: &Pod,
        ours: &PodStatus,
    ) -> Option<(Value, String, u64, Option<String>)> {
        let target_uid = spec::uid(target).to_owned();
        if record.gone.as_deref() == Some(target_uid.as_str()) {
            return None;
        }
        // The server's status: the copy from the watch, or the answer to our last write while the watch has
        // not caught up with it.
        let watched_rv = target.metadata.resource_version.as_deref();
        let written = record.written.as_mut().filter(|w| w.target_uid == target_uid);
        let lagging = written.as_ref().is_some_and(|w| newer(w.resource_version.as_deref(), watched_rv));
        let base_status: Option<PodStatus> = match written {
            Some(w) if lagging => w.response.clone(),
            Some(w) => {
                w.response = None;
                target.status.clone()
            }
            None => target.status.clone(),
        };
        let written = record.written.as_ref().filter(|w| w.target_uid == target_uid);
        // Never move a pod back from a terminal phase.
        if terminal(base_status.as_ref().and_then(|s| s.phase.as_deref())) && !terminal(ours.phase.as_deref()) {
            return None;
        }
        let new = status_json(Some(&merge_status(ours, base_status.as_ref())));
        let base = status_json(base_status.as_ref());
        let sent = digest(&new);
        // Asked for already and the server has not changed since: what differs is what it normalizes away.
        let unchanged_since_write =
            written.is_some_and(|w| w.sent == sent && (lagging || w.resource_version.as_deref() == watched_rv));
        if unchanged_since_write {
            return None;
        }
        let patch = pod_status_patch(&target_uid, &base, &new)?;
        Some((patch, target_uid, sent, watched_rv.map(str::to_owned)))
    }

    fn finished(
        &self,
        uid: &str,
        outcome: Outcome,
        state: &mut State,
        pending_deletes: &mut BTreeMap<String, Arc<Pod>>,
    ) -> bool {
        match outcome {
            Outcome::Status { target_uid, sent, version, base_rv, result } => {
                let Some(record) = state.records.get_mut(uid) else { return true };
                let key = record.key.as_str();
                // Written, or never to be written (gone, refused as invalid): done with this version.
                if !matches!(&result, Err(e) if !matches!(code(e), Some(404) | Some(409) | Some(422))) {
                    self.store.set_settled(uid, version);
                }
                match result {
                    Ok(answer) => {
                        let (response, resource_version) = *answer;
                        if target_uid == uid {
                            self.store.set_written(uid, resource_version.clone());
                        }
                        record.written = Some(Written { target_uid, sent, response, resource_version });
                    }
                    // Gone, or the name now belongs to another pod (the UID precondition failed): nothing to write.
                    Err(e) if matches!(code(&e), Some(404) | Some(409)) => {
                        tracing::debug!(pod = %key, error = %e, "pod gone; status not written");
                        record.gone = Some(target_uid);
                    }
                    // The server refuses this status as invalid: the same status is refused again, so it is sent
                    // anew only once it or the server's copy changes.
                    Err(e) if code(&e) == Some(422) => {
                        tracing::warn!(pod = %key, error = %e, "pod status rejected as invalid; not sending it again");
                        record.written = Some(Written { target_uid, sent, response: None, resource_version: base_rv });
                    }
                    Err(e) => {
                        tracing::warn!(pod = %key, error = %e, "failed to update pod status; will retry");
                        record.failed = true;
                    }
                }
                true
            }
            Outcome::Delete { result } => {
                let Some(pod) = pending_deletes.get(uid) else { return true };
                match result {
                    Ok(()) => {
                        tracing::info!(pod = %spec::key(pod), "pod deleted from the API after its containers stopped");
                        pending_deletes.remove(uid);
                        true
                    }
                    // Gone already, or another pod now has the name (UID precondition): nothing left to do.
                    Err(e) if matches!(code(&e), Some(404) | Some(409)) => {
                        pending_deletes.remove(uid);
                        true
                    }
                    Err(e) => {
                        tracing::warn!(pod = %spec::key(pod), error = %e, "failed to delete pod; will retry");
                        false
                    }
                }
            }
        }
    }

    /// Deletions are retried until they succeed, a failed one at the next sync period.
    fn start_deletions(
        &self,
        pending: &BTreeMap<String, Arc<Pod>>,
        failed: &BTreeSet<String>,
        in_flight: &mut BTreeSet<String>,
        tasks: &mut JoinSet<(String, Outcome)>,
    ) {
        for (uid, pod) in pending {
            if tasks.len() >= MAX_WRITES_IN_FLIGHT {
                return;
            }
            if in_flight.contains(uid) || failed.contains(uid) {
                continue;
            }
            in_flight.insert(uid.clone());
            let api: Api<Pod> = Api::namespaced(self.client.clone(), spec::namespace(pod));
            let name = spec::name(pod).to_owned();
            let uid = uid.clone();
            tasks.spawn(async move {
                let result = api.delete(&name, &delete_now(&uid)).await.map(|_| ());
                (uid, Outcome::Delete { result })
            });
        }
    }

    /// Each static pod has a mirror pod in the API carrying `kubernetes.io/config.mirror` = its config hash; a
    /// missing or outdated mirror pod is (re)created, and mirror pods of gone static pods are deleted.
    async fn sync_mirror_pods(&self, statics: &BTreeMap<String, Arc<Pod>>) {
        let mirrors = self.mirrors.borrow().clone();
        let statics: BTreeMap<String, &Arc<Pod>> = statics.values().map(|p| (spec::key(p), p)).collect();
        for (key, pod) in &statics {
            let hash = spec::uid(pod);
            let existing = mirrors.get(key);
            let current = existing.is_some_and(|m| {
                m.metadata.annotations.as_ref().and_then(|a| a.get(CONFIG_MIRROR_ANNOTATION)).is_some_and(|h| h == hash)
                    && m.metadata.deletion_timestamp.is_none()
            });
            if current {
                continue;
            }
            let api: Api<Pod> = Api::namespaced(self.client.clone(), spec::namespace(pod));
            if let Some(old) = existing {
                if old.metadata.deletion_timestamp.is_none() {
                    let _ = api.delete(spec::name(pod), &delete_now(spec::uid(old))).await;
                }
                continue; // recreated once the watch has seen the old one go
            }
            if let Err(e) = api.create(&PostParams::default(), &self.mirror_pod(pod).await).await {
                if code(&e) != Some(409) {
                    tracing::warn!(pod = %key, error = %e, "failed to create mirror pod");
                }
            }
        }
        for (key, mirror) in &mirrors {
            if !statics.contains_key(key) && mirror.metadata.deletion_timestamp.is_none() {
                let api: Api<Pod> = Api::namespaced(self.client.clone(), spec::namespace(mirror));
                if let Err(e) = api.delete(spec::name(mirror), &delete_now(spec::uid(mirror))).await {
                    if code(&e) != Some(404) {
                        tracing::warn!(pod = %key, error = %e, "failed to delete mirror pod");
                    }
                }
            }
        }
    }

    async fn mirror_pod(&self, pod: &Pod) -> Pod {
        let mut mirror = Pod { metadata: pod.metadata.clone(), spec: pod.spec.clone(), status: None };
        mirror.metadata.uid = None;
        mirror.metadata.resource_version = None;
        let annotations = mirror.metadata.annotations.get_or_insert_with(BTreeMap::new);
        annotations.insert(CONFIG_MIRROR_ANNOTATION.into(), spec::uid(pod).to_owned());
        annotations.insert(CONFIG_HASH_ANNOTATION.into(), spec::uid(pod).to_owned());
        // Owned by the Node, as kubelet does, so mirror pods go away with their node.
        let nodes: Api<k8s_openapi::api::core::v1::Node> = Api::all(self.client.clone());
        if let Ok(node) = nodes.get(&self.node_name).await {
            mirror.metadata.owner_references = Some(vec![OwnerReference {
                api_version: "v1".into(),
                kind: "Node".into(),
                name: self.node_name.clone(),
                uid: node.metadata.uid.unwrap_or_default(),
                controller: Some(true),
                ..Default::default()
            }]);
        }
        mirror
    }
}

/// Delete with grace period 0 and a UID precondition, as kubelet finishes a deletion.
fn delete_now(uid: &str) -> DeleteParams {
    DeleteParams {
        grace_period_seconds: Some(0),
        preconditions: Some(Preconditions { uid: Some(uid.to_owned()), resource_version: None }),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn status(v: Value) -> PodStatus {
        serde_json::from_value(v).expect("a valid status literal")
    }

    /// The patch the manager sends for `ours` against the server's `api` status.
    fn patch_for(ours: &PodStatus, api: &PodStatus) -> Option<Value> {
        let new = status_json(Some(&merge_status(ours, Some(api))));
        pod_status_patch("uid-1", &status_json(Some(api)), &new)
    }

    fn running(ready: &str, since: &str) -> Value {
        json!({
            "phase": "Running",
            "startTime": "2026-01-01T00:00:00Z",
            "conditions": [
                {"type": "Initialized", "status": "True", "lastTransitionTime": "2026-01-01T00:00:00Z"},
                {"type": "Ready", "status": ready, "lastTransitionTime": since},
            ],
            "containerStatuses": [{"name": "app", "ready": ready == "True", "restartCount": 0, "image": "i", "imageID": ""}],
        })
    }

    #[test]
    fn no_change_gives_no_patch() {
        let s = status(running("True", "2026-01-01T00:00:05Z"));
        assert_eq!(patch_for(&s, &s), None);
    }

    #[test]
    fn a_condition_change_is_a_by_type_entry_and_foreign_conditions_are_never_touched() {
        let mut api = running("False", "2026-01-01T00:00:00Z");
        api["conditions"]
            .as_array_mut()
            .unwrap()
            .insert(0, json!({"type": "DisruptionTarget", "status": "True", "reason": "PreemptionByScheduler"}));
        let ours = status(running("True", "2026-01-01T00:00:09Z"));
        let patch = patch_for(&ours, &status(api)).expect("a patch");
        assert_eq!(patch["metadata"], json!({"uid": "uid-1"}));
        assert_eq!(
            patch["status"]["conditions"],
            json!([{"type": "Ready", "status": "True", "lastTransitionTime": "2026-01-01T00:00:09Z"}])
        );
        assert_eq!(
            patch["status"]["$setElementOrder/conditions"],
            json!([{"type": "DisruptionTarget"}, {"type": "Initialized"}, {"type": "Ready"}])
        );
        let text = patch.to_string();
        assert!(!text.contains("PreemptionByScheduler") && !text.contains("\"delete\""), "{text}");
        // Container statuses have no merge key: the list goes whole.
        assert_eq!(patch["status"]["containerStatuses"][0]["ready"], json!(true));
    }

    #[test]
    fn our_disruption_target_goes_only_with_the_write_that_makes_the_pod_terminal() {
        let api = status(running("True", "2026-01-01T00:00:05Z"));
        let disruption = json!({"type": "DisruptionTarget", "status": "True", "reason": "TerminationByKubelet",
            "message": "m", "lastTransitionTime": "2026-01-01T00:00:06Z"});
        // While the kill is under way: the phase is held back, so the condition is not sent yet.
        let mut killing = running("False", "2026-01-01T00:00:06Z");
        killing["conditions"].as_array_mut().unwrap().push(disruption.clone());
        let merged = merge_status(&status(killing.clone()), Some(&api));
        assert!(merged.conditions.iter().flatten().all(|c| c.type_ != "DisruptionTarget"), "{merged:?}");
        // The containers are gone: Failed, with the condition, timed when it is sent.
        let mut done = killing;
        done["phase"] = json!("Failed");
        done["reason"] = json!("Evicted");
        let merged = merge_status(&status(done.clone()), Some(&api));
        let c = merged.conditions.iter().flatten().find(|c| c.type_ == "DisruptionTarget").expect("sent");
        assert_eq!((c.reason.as_deref(), c.message.as_deref()), (Some("TerminationByKubelet"), Some("m")));
        let killed_at = serde_json::from_value(json!("2026-01-01T00:00:06Z")).ok();
        assert!(c.last_transition_time.is_some() && c.last_transition_time > killed_at, "{c:?}");
        // Once the server has the pod terminal, its copy stays as it is.
        let terminal_api = merged;
        let mut later = done;
        later["conditions"][2]["message"] = json!("other");
        let merged = merge_status(&status(later), Some(&terminal_api));
        let c = merged.conditions.iter().flatten().find(|c| c.type_ == "DisruptionTarget").expect("kept");
        assert_eq!(c.message.as_deref(), Some("m"));
    }

    #[test]
    fn a_field_ours_no_longer_has_is_cleared() {
        let mut api = running("True", "2026-01-01T00:00:05Z");
        api["message"] = json!("Pod was rejected");
        api["reason"] = json!("OutOfcpu");
        let ours = status(running("True", "2026-01-01T00:00:05Z"));
        let patch = patch_for(&ours, &status(api)).expect("a patch");
        assert_eq!(patch["status"], json!({"message": null, "reason": null}));
    }

    #[test]
    fn start_time_and_unchanged_transition_times_come_from_the_api_after_a_restart() {
        let api = status(running("True", "2026-01-01T00:00:05Z"));
        // What a restarted worker computes: everything from now.
        let mut fresh = running("True", "2026-06-01T12:00:00Z");
        fresh["startTime"] = json!("2026-06-01T12:00:00Z");
        fresh["conditions"][0]["lastTransitionTime"] = json!("2026-06-01T12:00:00Z");
        let merged = merge_status(&status(fresh.clone()), Some(&api));
        assert_eq!(merged.start_time, api.start_time);
        assert_eq!(merged.conditions, api.conditions);
        assert_eq!(patch_for(&status(fresh), &api), None);
        // A condition that did change takes its new time.
        let flipped = status(running("False", "2026-06-01T12:00:00Z"));
        let merged = merge_status(&flipped, Some(&api));
        let ready = merged.conditions.unwrap().into_iter().find(|c| c.type_ == "Ready").unwrap();
        assert_eq!(serde_json::to_value(ready.last_transition_time).unwrap(), json!("2026-06-01T12:00:00Z"));
    }

    /// A fake API server answering status patches with the pod as patched (the status sent, a new
    /// resourceVersion), counting them, and keeping the last answer.
    struct FakeApi {
        patches: Arc<AtomicU64>,
        last: Arc<std::sync::Mutex<Option<Pod>>>,
    }

    fn strip_directives(v: &mut Value) {
        match v {
            Value::Object(m) => {
                m.retain(|k, _| !k.starts_with('$'));
                m.values_mut().for_each(strip_directives);
            }
            Value::Array(a) => a.iter_mut().for_each(strip_directives),
            _ => {}
        }
    }

    fn fake_api() -> (kube::Client, FakeApi) {
        use http_body_util::BodyExt;
        let fake = FakeApi { patches: Arc::default(), last: Arc::default() };
        let (patches, last) = (fake.patches.clone(), fake.last.clone());
        let service = tower::service_fn(move |req: axum::http::Request<kube::client::Body>| {
            let (patches, last) = (patches.clone(), last.clone());
            async move {
                let path = req.uri().path().to_owned();
                let body = req.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
                let mut patch: Value = serde_json::from_slice(&body).unwrap_or_default();
                strip_directives(&mut patch);
                let n = patches.fetch_add(1, Ordering::SeqCst) + 1;
                let name = path.trim_end_matches("/status").rsplit('/').next().unwrap_or_default().to_owned();
                let answer = json!({
                    "apiVersion": "v1", "kind": "Pod",
                    "metadata": {"name": name, "namespace": "default", "uid": patch["metadata"]["uid"],
                                 "resourceVersion": (1000 + n).to_string()},
                    "status": patch["status"],
                });
                if let Ok(mut l) = last.lock() {
                    *l = serde_json::from_value(answer.clone()).ok();
                }
                let response = axum::http::Response::builder()
                    .header("content-type", "application/json")
                    .body(kube::client::Body::from(answer.to_string().into_bytes()))
                    .expect("a response");
                Ok::<_, std::convert::Infallible>(response)
            }
        });
        (kube::Client::new(service, "default"), fake)
    }

    fn api_pod(i: usize, rv: &str, status: Option<PodStatus>) -> Arc<Pod> {
        let mut pod = Pod::default();
        pod.metadata.name = Some(format!("p{i}"));
        pod.metadata.namespace = Some("default".into());
        pod.metadata.uid = Some(format!("u{i}"));
        pod.metadata.resource_version = Some(rv.to_owned());
        pod.status = status;
        Arc::new(pod)
    }

    async fn eventually(what: &str, f: impl Fn() -> bool) {
        for _ in 0..200 {
            if f() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("timed out waiting for {what}");
    }

    /// Lets the manager run whatever is ready, then a little more.
    async fn settle() {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    #[tokio::test]
    async fn only_notified_pods_are_looked_at_and_our_own_echo_wakes_nothing_while_a_foreign_change_is_answered() {
        let (client, fake) = fake_api();
        let store = PodStore::default();
        let counts = Arc::new(StatusManagerCounts::default());
        let (_mirrors_tx, mirrors) = watch::channel(MirrorPods::new());
        let (_terminated_tx, terminated) = mpsc::unbounded_channel();
        for i in 0..30 {
            store.upsert_pod(&format!("u{i}"), api_pod(i, "1", None));
        }
        let manager = StatusManager {
            client,
            node_name: "n".into(),
            store: store.clone(),
            mirrors,
            terminated,
            counts: counts.clone(),
        };
        let task = tokio::spawn(manager.run());
        for i in 0..30 {
            store.set_status(&format!("u{i}"), status(running("False", "2026-01-01T00:00:00Z")));
        }
        eventually("30 first writes", || fake.patches.load(Ordering::SeqCst) == 30).await;
        settle().await;
        let writes = fake.patches.load(Ordering::SeqCst);
        assert_eq!(writes, 30, "one write per pod");

        // One pod's status changes: it alone is looked at and written.
        let looked = counts.looked.load(Ordering::SeqCst);
        store.set_status("u3", status(running("True", "2026-01-01T00:00:09Z")));
        eventually("the write of u3", || fake.patches.load(Ordering::SeqCst) == 31).await;
        settle().await;
        assert_eq!(counts.looked.load(Ordering::SeqCst) - looked, 1, "only u3 was looked at");
        let answer = fake.last.lock().expect("lock").clone().expect("an answer");
        assert_eq!(answer.metadata.name.as_deref(), Some("p3"));

        // The watch echoes our write (the resourceVersion it was answered with): no wake-up, no write.
        let wakes = counts.wakes.load(Ordering::SeqCst);
        store.upsert_pod(
            "u3",
            api_pod(3, answer.metadata.resource_version.as_deref().unwrap_or(""), answer.status.clone()),
        );
        settle().await;
        assert_eq!(counts.wakes.load(Ordering::SeqCst), wakes, "our own write coming back is not news");
        assert_eq!(fake.patches.load(Ordering::SeqCst), 31);

        // The node controller marks the pod not ready: answered at once with our status.
        let mut foreign = answer.status.clone().expect("a status");
        for c in foreign.conditions.iter_mut().flatten().filter(|c| c.type_ == "Ready") {
            c.status = "False".into();
            c.reason = Some("NodeNotReady".into());
        }
        store.upsert_pod("u3", api_pod(3, "5000", Some(foreign)));
        eventually("the answer to a foreign change", || fake.patches.load(Ordering::SeqCst) == 32).await;
        let answer = fake.last.lock().expect("lock").clone().expect("an answer");
        let ready = answer.status.and_then(|s| s.conditions).into_iter().flatten().find(|c| c.type_ == "Ready");
        assert_eq!(ready.map(|c| c.status), Some("True".to_owned()), "our Ready=True restored");
        task.abort();
    }

    #[tokio::test]
    async fn waiting_for_written_statuses_ends_once_the_api_has_each_pods_latest() {
        let (client, fake) = fake_api();
        let store = PodStore::default();
        let (_mirrors_tx, mirrors) = watch::channel(MirrorPods::new());
        let (_terminated_tx, terminated) = mpsc::unbounded_channel();
        for i in 0..3 {
            store.upsert_pod(&format!("u{i}"), api_pod(i, "1", None));
        }
        assert!(store.wait_written(Duration::from_millis(10)).await.is_empty(), "no status yet: nothing to write");
        store.set_status("u0", status(running("False", "2026-01-01T00:00:00Z")));
        store.set_status("u1", status(running("False", "2026-01-01T00:00:00Z")));
        // Nobody writes yet.
        assert_eq!(store.wait_written(Duration::from_millis(50)).await, vec!["default/p0", "default/p1"]);
        let manager = StatusManager {
            client,
            node_name: "n".into(),
            store: store.clone(),
            mirrors,
            terminated,
            counts: Arc::default(),
        };
        let task = tokio::spawn(manager.run());
        assert!(store.wait_written(Duration::from_secs(5)).await.is_empty());
        assert_eq!(fake.patches.load(Ordering::SeqCst), 2, "answered only once both were written");
        // A newer status is pending again until it is written too.
        let mut failed = status(running("False", "2026-01-01T00:00:00Z"));
        failed.phase = Some("Failed".into());
        failed.reason = Some("Terminated".into());
        store.set_status("u1", failed);
        assert!(store.wait_written(Duration::from_secs(5)).await.is_empty());
        assert_eq!(fake.patches.load(Ordering::SeqCst), 3);
        let answer = fake.last.lock().expect("lock").clone().expect("an answer");
        assert_eq!(answer.status.and_then(|s| s.reason).as_deref(), Some("Terminated"));
        task.abort();
    }

    #[tokio::test]
    async fn a_probe_result_lands_in_the_stored_status_and_marks_only_its_pod() {
        let store = PodStore::default();
        let mut pod = (*api_pod(1, "1", None)).clone();
        pod.spec = Some(
            serde_json::from_value(json!({"containers": [{"name": "app", "image": "i",
            "readinessProbe": {"exec": {"command": ["true"]}}}]}))
            .expect("a spec"),
        );
        store.upsert_pod("u1", Arc::new(pod));
        store.upsert_pod("u2", api_pod(2, "1", None));
        let mut s = running("False", "2026-01-01T00:00:00Z");
        s["containerStatuses"][0]["containerID"] = json!("containerd://c1");
        s["containerStatuses"][0]["started"] = json!(true);
        s["containerStatuses"][0]["state"] = json!({"running": {}});
        s["conditions"].as_array_mut().expect("conditions").push(json!({"type": "ContainersReady", "status": "False"}));
        let results = Arc::new(std::sync::Mutex::new(crate::kubetypes::probe::ProbeResults::default()));
        store.set_probe_results("u1", results.clone());
        // Before the first status, a result is ignored.
        store.apply_probe_results("u1", &results);
        assert!(store.take_dirty().is_empty());
        store.set_status("u1", status(s.clone()));
        store.set_status("u2", status(s.clone()));
        assert_eq!(store.take_dirty().len(), 2);
        if let Ok(mut r) = results.lock() {
            r.set("c1", crate::kubetypes::probe::ProbeKind::Readiness, crate::kubetypes::probe::ProbeResult::Success);
        }
        store.apply_probe_results("u1", &results);
        assert_eq!(store.take_dirty(), BTreeSet::from(["u1".to_owned()]));
        let ready = |uid| {
            let (_, s, _) = store.get(uid).expect("stored");
            s.and_then(|s| s.conditions).into_iter().flatten().find(|c| c.type_ == "Ready").map(|c| c.status)
        };
        assert_eq!(ready("u1").as_deref(), Some("True"));
        // A status computed from results older than the probe's does not undo it.
        store.set_status("u1", status(s));
        assert_eq!(ready("u1").as_deref(), Some("True"));
        assert!(store.take_dirty().is_empty(), "nothing changed");
    }

    #[test]
    fn newer_compares_numeric_resource_versions_only() {
        assert!(newer(Some("12"), Some("9")));
        assert!(!newer(Some("9"), Some("12")));
        assert!(!newer(Some("a"), Some("9")));
        assert!(!newer(Some("12"), None));
    }
}
