//! The status manager: writes each pod's computed status to the API only when it changed (latest status wins, kept
//! and retried across API outages), keeps mirror pods for static pods, and finishes graceful deletions by deleting
//! the pod object with grace period 0 once its containers are gone, as kubelet's status manager does.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Pod, PodStatus};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams, Preconditions};
use tokio::sync::{mpsc, watch};

use super::pods::MirrorPods;
use crate::pods::source::{CONFIG_HASH_ANNOTATION, CONFIG_MIRROR_ANNOTATION, CONFIG_SOURCE_ANNOTATION, FILE_SOURCE};
use crate::pods::spec;
use crate::pods::status::{PHASE_FAILED, PHASE_SUCCEEDED};
use crate::pods::store::PodStore;

/// kubelet's status manager re-checks every pod this often (`syncPeriod`), which also retries failed writes.
pub const STATUS_SYNC_PERIOD: Duration = Duration::from_secs(10);

/// Pod condition types kubelet owns; others (readiness gates, DisruptionTarget...) are kept as the API has them.
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

/// Our status, plus the conditions others own on the API object.
pub fn merge_status(ours: &PodStatus, in_api: Option<&PodStatus>) -> PodStatus {
    let mut merged = ours.clone();
    if let Some(api_conditions) = in_api.and_then(|s| s.conditions.as_ref()) {
        let conditions = merged.conditions.get_or_insert_with(Vec::new);
        for c in api_conditions {
            if !KUBELET_CONDITIONS.contains(&c.type_.as_str()) {
                conditions.push(c.clone());
            }
        }
    }
    merged
}

impl StatusManager {
    pub async fn run(mut self) {
        let mut changes = self.store.subscribe();
        // Last status written per pod UID, with the UID of the object it was written to.
        let mut written: BTreeMap<String, (String, PodStatus)> = BTreeMap::new();
        let mut pending_deletes: BTreeMap<String, Arc<Pod>> = BTreeMap::new();
        let mut tick = tokio::time::interval(STATUS_SYNC_PERIOD);
        loop {
            tokio::select! {
                r = changes.changed() => if r.is_err() { return },
                r = self.mirrors.changed() => if r.is_err() { return },
                Some(pod) = self.terminated.recv() => {
                    if pod.metadata.deletion_timestamp.is_some() && !is_static(&pod) {
                        pending_deletes.insert(spec::uid(&pod).to_owned(), pod);
                    }
                }
                _ = tick.tick() => {}
            }
            self.sync_statuses(&mut written).await;
            self.sync_mirror_pods().await;
            self.finish_deletions(&mut pending_deletes).await;
        }
    }

    async fn sync_statuses(&self, written: &mut BTreeMap<String, (String, PodStatus)>) {
        let mirrors = self.mirrors.borrow().clone();
        let entries = self.store.list();
        let live: BTreeSet<String> = entries.iter().map(|e| spec::uid(&e.pod).to_owned()).collect();
        written.retain(|uid, _| live.contains(uid));
        for entry in entries {
            let Some(status) = entry.status.as_ref() else { continue };
            let uid = spec::uid(&entry.pod).to_owned();
            // A static pod's status goes to its mirror pod.
            let (target_uid, api_status) = if is_static(&entry.pod) {
                match mirrors.get(&spec::key(&entry.pod)) {
                    Some(m) => (spec::uid(m).to_owned(), m.status.clone()),
                    None => continue,
                }
            } else {
                (uid.clone(), entry.pod.status.clone())
            };
            // Written already, to this very object (a recreated mirror pod has a new UID and gets the status anew).
            if written.get(&uid).is_some_and(|(to, st)| *to == target_uid && st == status) {
                continue;
            }
            // Never move a pod back from a terminal phase.
            if terminal(api_status.as_ref().and_then(|s| s.phase.as_deref())) && !terminal(status.phase.as_deref()) {
                continue;
            }
            let merged = merge_status(status, api_status.as_ref());
            // metadata.uid makes the write a precondition: a pod recreated under the same name is not touched.
            let patch = serde_json::json!({ "metadata": { "uid": target_uid }, "status": merged });
            let api: Api<Pod> = Api::namespaced(self.client.clone(), spec::namespace(&entry.pod));
            match api.patch_status(spec::name(&entry.pod), &PatchParams::default(), &Patch::Merge(&patch)).await {
                Ok(_) => {
                    written.insert(uid, (target_uid, status.clone()));
                }
                Err(e) if code(&e) == Some(404) => {
                    written.insert(uid, (target_uid, status.clone()));
                }
                Err(e) => {
                    tracing::warn!(pod = %spec::key(&entry.pod), error = %e, "failed to update pod status; will retry");
                }
            }
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

    async fn finish_deletions(&self, pending: &mut BTreeMap<String, Arc<Pod>>) {
        let mut done = Vec::new();
        for (uid, pod) in pending.iter() {
            let api: Api<Pod> = Api::namespaced(self.client.clone(), spec::namespace(pod));
            match api.delete(spec::name(pod), &delete_now(uid)).await {
                Ok(_) => {
                    tracing::info!(pod = %spec::key(pod), "pod deleted from the API after its containers stopped");
                    done.push(uid.clone());
                }
                // Gone already, or another pod now has the name (UID precondition): nothing left to do.
                Err(e) if matches!(code(&e), Some(404) | Some(409)) => done.push(uid.clone()),
                Err(e) => tracing::warn!(pod = %spec::key(pod), error = %e, "failed to delete pod; will retry"),
            }
        }
        for uid in done {
            pending.remove(&uid);
        }
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
