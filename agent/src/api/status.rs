//! The status manager: writes each pod's computed status to the API as kubelet's status manager does
//! (pkg/kubelet/status/status_manager.go): a strategic-merge patch from the status the server holds to the new one,
//! with the pod UID as a precondition, only for pods whose status differs, several pods at a time and one write at a
//! time per pod, retried every `syncPeriod`. It also keeps mirror pods for static pods, and finishes graceful
//! deletions by deleting the pod object with grace period 0 once its containers are gone.

pub mod strategic;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Pod, PodStatus};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams, Preconditions};
use serde_json::{Map, Value};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tracing::Instrument;

use crate::api::pods::MirrorPods;
use crate::pods::source::{CONFIG_HASH_ANNOTATION, CONFIG_MIRROR_ANNOTATION, CONFIG_SOURCE_ANNOTATION, FILE_SOURCE};
use crate::pods::spec;
use crate::pods::status::{PHASE_FAILED, PHASE_SUCCEEDED};
use crate::pods::store::{PodEntry, PodStore};

/// kubelet's status manager re-checks every pod this often (`syncPeriod`), which also retries failed writes.
pub const STATUS_SYNC_PERIOD: Duration = Duration::from_secs(10);

/// Status writes and final deletions in flight at once. Each pod has at most one, so its writes stay in order.
pub const MAX_WRITES_IN_FLIGHT: usize = 12;

/// Pod condition types kubelet owns (`kubetypes.PodConditionByKubelet`); others (readiness gates,
/// DisruptionTarget...) are kept as the API has them.
const KUBELET_CONDITIONS: [&str; 5] =
    ["PodReadyToStartContainers", "Initialized", "Ready", "ContainersReady", "PodScheduled"];

pub struct StatusManager {
    pub client: kube::Client,
    pub node_name: String,
    pub store: PodStore,
    pub mirrors: watch::Receiver<MirrorPods>,
    pub terminated: mpsc::UnboundedReceiver<Arc<Pod>>,
}

fn is_static(pod: &Pod) -> bool {
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
pub fn merge_status(ours: &PodStatus, base: Option<&PodStatus>) -> PodStatus {
    let mut merged = ours.clone();
    let Some(base) = base else { return merged };
    if base.start_time.is_some() {
        merged.start_time = base.start_time.clone();
    }
    let base_conditions = base.conditions.as_deref().unwrap_or_default();
    let mut conditions: Vec<_> = base_conditions
        .iter()
        .filter(|c| {
            !KUBELET_CONDITIONS.contains(&c.type_.as_str())
                && !ours.conditions.iter().flatten().any(|o| o.type_ == c.type_)
        })
        .cloned()
        .collect();
    for mut c in ours.conditions.iter().flatten().cloned() {
        if let Some(old) = base_conditions.iter().find(|b| b.type_ == c.type_ && b.status == c.status) {
            if old.last_transition_time.is_some() {
                c.last_transition_time = old.last_transition_time.clone();
            }
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

/// Static pods whose mirror pod changed need their status compared again.
fn mark_mirrors_changed(records: &mut BTreeMap<String, PodRecord>, old: &MirrorPods, new: &MirrorPods) {
    for record in records.values_mut() {
        let Some(entry) = record.entry.as_ref().filter(|e| is_static(&e.pod)) else { continue };
        let key = spec::key(&entry.pod);
        let same = match (old.get(&key), new.get(&key)) {
            (Some(a), Some(b)) => Arc::ptr_eq(a, b),
            (None, None) => true,
            _ => false,
        };
        if !same {
            record.dirty = true;
        }
    }
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
    /// The store entry last looked at, to tell cheaply what changed.
    entry: Option<PodEntry>,
    dirty: bool,
    /// A write failed: retried at the next sync period instead of at once.
    failed: bool,
    written: Option<Written>,
    /// The object of this UID is gone or was replaced (404, or the UID precondition failed).
    gone: Option<String>,
}

/// The status and resourceVersion a write was answered with.
type Answer = (Option<PodStatus>, Option<String>);

enum Outcome {
    /// On success, the status the server answered with and its resourceVersion.
    Status {
        target_uid: String,
        sent: u64,
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
        let mut changes = self.store.subscribe();
        let mut records: BTreeMap<String, PodRecord> = BTreeMap::new();
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
                r = changes.changed() => {
                    if r.is_err() { return }
                    resync_mirrors = self.scan(&mut records);
                }
                r = self.mirrors.changed() => {
                    if r.is_err() { return }
                    let mirrors = self.mirrors.borrow_and_update().clone();
                    mark_mirrors_changed(&mut records, &mirrors_seen, &mirrors);
                    mirrors_seen = mirrors;
                    resync_mirrors = true;
                }
                Some(pod) = self.terminated.recv() => {
                    if pod.metadata.deletion_timestamp.is_some() && !is_static(&pod) {
                        pending_deletes.insert(spec::uid(&pod).to_owned(), pod);
                    }
                }
                _ = tick.tick() => {
                    // kubelet's periodic `syncBatch`: every pod is compared with the API again and failed writes retried.
                    self.scan(&mut records);
                    for r in records.values_mut() {
                        r.dirty = true;
                        r.failed = false;
                    }
                    deletes_failed.clear();
                    resync_mirrors = true;
                }
                Some(joined) = tasks.join_next(), if !tasks.is_empty() => {
                    if let Ok((uid, outcome)) = joined {
                        in_flight.remove(&uid);
                        if !self.finished(&uid, outcome, &mut records, &mut pending_deletes) {
                            deletes_failed.insert(uid);
                        }
                    }
                }
            }
            self.start_writes(&mut records, &mut in_flight, &mut tasks);
            self.start_deletions(&pending_deletes, &deletes_failed, &mut in_flight, &mut tasks);
            if resync_mirrors {
                self.sync_mirror_pods().await;
            }
        }
    }

    /// Marks the pods whose entry in the store changed; forgets pods gone from it. True when the set of static pods
    /// changed, so their mirror pods need a look.
    fn scan(&self, records: &mut BTreeMap<String, PodRecord>) -> bool {
        let entries = self.store.list();
        let live: BTreeSet<String> = entries.iter().map(|e| spec::uid(&e.pod).to_owned()).collect();
        let mut statics_changed = false;
        records.retain(|uid, r| {
            let keep = live.contains(uid);
            statics_changed |= !keep && r.entry.as_ref().is_some_and(|e| is_static(&e.pod));
            keep
        });
        for entry in entries {
            let uid = spec::uid(&entry.pod).to_owned();
            let record = records.entry(uid).or_default();
            // The API source hands over new copies of every pod on each watch event: a pod is the same when its
            // resourceVersion is.
            let same = record.entry.as_ref().is_some_and(|old| {
                let same_pod = Arc::ptr_eq(&old.pod, &entry.pod)
                    || (old.pod.metadata.resource_version.is_some()
                        && old.pod.metadata.resource_version == entry.pod.metadata.resource_version
                        && old.pod.metadata.uid == entry.pod.metadata.uid);
                same_pod && old.status == entry.status
            });
            if !same {
                statics_changed |= record.entry.is_none() && is_static(&entry.pod);
                record.dirty = true;
                record.entry = Some(entry);
            }
        }
        statics_changed
    }

    fn start_writes(
        &self,
        records: &mut BTreeMap<String, PodRecord>,
        in_flight: &mut BTreeSet<String>,
        tasks: &mut JoinSet<(String, Outcome)>,
    ) {
        let mirrors = self.mirrors.borrow().clone();
        for (uid, record) in records.iter_mut() {
            if tasks.len() >= MAX_WRITES_IN_FLIGHT {
                return;
            }
            if !record.dirty || record.failed || in_flight.contains(uid) {
                continue;
            }
            record.dirty = false;
            let Some(entry) = record.entry.as_ref() else { continue };
            let Some(ours) = entry.status.as_ref() else { continue };
            // A static pod's status goes to its mirror pod.
            let target: Arc<Pod> = if is_static(&entry.pod) {
                match mirrors.get(&spec::key(&entry.pod)) {
                    Some(m) => m.clone(),
                    None => continue,
                }
            } else {
                entry.pod.clone()
            };
            let target_uid = spec::uid(&target).to_owned();
            if record.gone.as_deref() == Some(target_uid.as_str()) {
                continue;
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
                continue;
            }
            let new = status_json(Some(&merge_status(ours, base_status.as_ref())));
            let base = status_json(base_status.as_ref());
            let sent = digest(&new);
            // Asked for already and the server has not changed since: what differs is what it normalizes away.
            let unchanged_since_write =
                written.is_some_and(|w| w.sent == sent && (lagging || w.resource_version.as_deref() == watched_rv));
            if unchanged_since_write {
                continue;
            }
            let Some(patch) = pod_status_patch(&target_uid, &base, &new) else { continue };
            in_flight.insert(uid.clone());
            let api: Api<Pod> = Api::namespaced(self.client.clone(), spec::namespace(&target));
            let name = spec::name(&target).to_owned();
            let span = tracing::debug_span!("pod", pod = %spec::key(&target), uid = %uid);
            let uid = uid.clone();
            let base_rv = watched_rv.map(str::to_owned);
            tasks.spawn(
                async move {
                    tracing::debug!(%patch, "patching pod status");
                    let result = api
                        .patch_status(&name, &PatchParams::default(), &Patch::Strategic(&patch))
                        .await
                        .map(|pod| Box::new((pod.status, pod.metadata.resource_version)));
                    (uid, Outcome::Status { target_uid, sent, base_rv, result })
                }
                .instrument(span),
            );
        }
    }

    fn finished(
        &self,
        uid: &str,
        outcome: Outcome,
        records: &mut BTreeMap<String, PodRecord>,
        pending_deletes: &mut BTreeMap<String, Arc<Pod>>,
    ) -> bool {
        match outcome {
            Outcome::Status { target_uid, sent, base_rv, result } => {
                let Some(record) = records.get_mut(uid) else { return true };
                let key = record.entry.as_ref().map(|e| spec::key(&e.pod)).unwrap_or_default();
                match result {
                    Ok(answer) => {
                        let (response, resource_version) = *answer;
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
                        record.dirty = true;
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
    async fn sync_mirror_pods(&self) {
        let mirrors = self.mirrors.borrow().clone();
        let statics: BTreeMap<String, Arc<Pod>> =
            self.store.list().into_iter().filter(|e| is_static(&e.pod)).map(|e| (spec::key(&e.pod), e.pod)).collect();
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

    #[test]
    fn newer_compares_numeric_resource_versions_only() {
        assert!(newer(Some("12"), Some("9")));
        assert!(!newer(Some("9"), Some("12")));
        assert!(!newer(Some("a"), Some("9")));
        assert!(!newer(Some("12"), None));
    }
}
