//! The pod manager: merges the sources into the desired set of pods by UID, keeps one worker per pod (each waits on
//! the pod cache for what the runtime holds), and cleans up what the runtime holds for pods no source wants.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use k8s_openapi::api::core::v1::Pod;
use tokio::sync::{mpsc, oneshot, watch, Notify};

use crate::cm::ContainerManager;
use crate::eviction::NodePressure;
use crate::kubelet::admission;
use crate::kubelet::source::SourceUpdate;
use crate::kubelet::unsupported::{self, REASON_UNSUPPORTED_POD_SPEC};
use crate::kubelet::worker::{self, WorkerContext, WorkerInput};
use crate::kubetypes::admission::Rejection;
use crate::kubetypes::events::EventType;
use crate::kubetypes::kill::{KillPodRequest, PodKillerEnd};
use crate::kubetypes::nodeinfo::NodeInfo;
use crate::kubetypes::spec;
use crate::pleg::PlegEvent;
use crate::pods::sysctl::SysctlAllowlist;

/// kubelet's `podsDifferSemantically`: what a pod worker acts on. Status, resourceVersion and managed fields
/// changes are not among it.
pub fn pods_differ_semantically(existing: &Pod, update: &Pod) -> bool {
    let (a, b) = (&existing.metadata, &update.metadata);
    existing.spec != update.spec
        || a.labels != b.labels
        || a.annotations != b.annotations
        || a.deletion_timestamp != b.deletion_timestamp
        || a.deletion_grace_period_seconds != b.deletion_grace_period_seconds
}

/// Orphaned pod cgroups are looked for every this many relists (kubelet's housekeeping runs every 2 s).
const CGROUP_CLEANUP_EVERY_RELISTS: u32 = 2;

struct WorkerHandle {
    input: watch::Sender<WorkerInput>,
    /// The pod as it was when termination began (with the deletion's grace period, if any).
    terminating: Option<Arc<Pod>>,
}

enum Done {
    Worker(String),
    Orphan(String),
}

pub struct PodManager {
    ctx: Arc<WorkerContext>,
    /// Sources that must report once before anything unknown in the runtime is treated as an orphan.
    sources_pending: BTreeSet<&'static str>,
    desired: BTreeMap<&'static str, Vec<Arc<Pod>>>,
    workers: HashMap<String, WorkerHandle>,
    orphans: BTreeSet<String>,
    /// The QoS cgroups and pod cgroups (`cgroupsPerQOS`).
    container_manager: Option<ContainerManager>,
    relists: u32,
    done_tx: mpsc::UnboundedSender<Done>,
    done_rx: mpsc::UnboundedReceiver<Done>,
    /// Pods whose containers are all gone after termination, for the status manager to finish their deletion.
    terminated: Option<mpsc::UnboundedSender<Arc<Pod>>>,
    /// Pods deleted in the API whose termination is done, until the API object is gone.
    finished_deletions: BTreeSet<String>,
    /// The node as admission sees it; without it every pod is admitted.
    node: Option<watch::Receiver<NodeInfo>>,
    /// Pods that never run: rejected at admission, or already terminal in the API when first seen.
    not_running: BTreeSet<String>,
    /// The sysctls pods may set: the safe ones, and `allowedUnsafeSysctls`.
    sysctls: SysctlAllowlist,
    /// Pods being killed to make room for a critical pod; they end Failed.
    preempted: BTreeSet<String>,
    /// Set once every source has reported and its pods are in the pod store (kubelet's `podsSynced`).
    sources_ready: Option<watch::Sender<bool>>,
    /// Kill requests of the node's housekeeping (eviction, node shutdown), and where the active pods are published.
    killer: Option<PodKillerEnd>,
    /// The eviction manager's pressure conditions: new pods are refused under pressure as kubelet's eviction admit
    /// handler refuses them.
    pressure: Option<watch::Receiver<NodePressure>>,
    /// Those waiting for a pod's kill to finish, by UID.
    kill_waiters: HashMap<String, Vec<oneshot::Sender<()>>>,
    /// Pods the node stopped on its own: they end Failed with the kill's status and are not run again.
    killed: BTreeSet<String>,
}

impl PodManager {
    pub fn new(ctx: Arc<WorkerContext>, sources: &[&'static str]) -> Self {
        let container_manager = ctx.kuberuntime.cgroups.clone().map(ContainerManager::new);
        let (done_tx, done_rx) = mpsc::unbounded_channel();
        Self {
            ctx,
            sources_pending: sources.iter().copied().collect(),
            desired: BTreeMap::new(),
            workers: HashMap::new(),
            orphans: BTreeSet::new(),
            container_manager,
            relists: 0,
            done_tx,
            done_rx,
            terminated: None,
            finished_deletions: BTreeSet::new(),
            node: None,
            not_running: BTreeSet::new(),
            sysctls: SysctlAllowlist::safe(),
            preempted: BTreeSet::new(),
            sources_ready: None,
            killer: None,
            pressure: None,
            kill_waiters: HashMap::new(),
            killed: BTreeSet::new(),
        }
    }

    /// Refuses new pods under node pressure (kubelet's eviction manager `Admit`).
    pub fn with_eviction_admission(mut self, pressure: watch::Receiver<NodePressure>) -> Self {
        self.pressure = Some(pressure);
        self
    }

    /// Answers the kill requests of the node's housekeeping and publishes the active pods to it.
    pub fn with_pod_killer(mut self, end: PodKillerEnd) -> Self {
        self.killer = Some(end);
        self
    }

    /// Admits new pods against the node's allocatable, `maxPods`, labels and name, as kubelet does.
    pub fn with_admission(mut self, node: watch::Receiver<NodeInfo>) -> Self {
        self.node = Some(node);
        self
    }

    /// Admits pod sysctls against `sysctls` (the safe ones, and `allowedUnsafeSysctls`).
    pub fn with_sysctls(mut self, sysctls: SysctlAllowlist) -> Self {
        self.sysctls = sysctls;
        self
    }

    /// Reports each terminated pod on `tx`.
    pub fn report_terminated(mut self, tx: mpsc::UnboundedSender<Arc<Pod>>) -> Self {
        self.terminated = Some(tx);
        self
    }

    /// Sets `tx` once every source has reported and the pods they hold are in the pod store.
    pub fn report_sources_ready(mut self, tx: watch::Sender<bool>) -> Self {
        self.sources_ready = Some(tx);
        self
    }

    pub async fn run(
        mut self,
        mut sources: mpsc::Receiver<SourceUpdate>,
        mut pleg: mpsc::UnboundedReceiver<PlegEvent>,
    ) {
        loop {
            self.ctx.metrics.sync_loop.store_now();
            let kill_request = async {
                match self.killer.as_mut() {
                    Some(end) => end.requests.recv().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                Some(update) = sources.recv() => {
                    self.sources_pending.remove(update.source);
                    self.desired.insert(update.source, update.pods);
                    self.reconcile();
                    if let (true, Some(tx)) = (self.sources_pending.is_empty(), &self.sources_ready) {
                        tx.send_if_modified(|ready| !std::mem::replace(ready, true));
                    }
                }
                Some(request) = kill_request => self.kill(request),
                Some(event) = pleg.recv() => self.on_pleg(event),
                Some(done) = self.done_rx.recv() => match done {
                    Done::Worker(uid) => {
                        if let Some(pod) = self.workers.remove(&uid).and_then(|h| h.terminating) {
                            if self.preempted.remove(&uid) {
                                self.not_running.insert(uid.clone());
                                self.ctx.store.upsert_pod(&uid, pod.clone());
                                self.ctx.store.set_status(&uid, admission::preempted_status(&pod));
                            }
                            // The worker left the kill's final status in the store.
                            if self.killed.remove(&uid) {
                                self.not_running.insert(uid.clone());
                            }
                            if pod.metadata.deletion_timestamp.is_some() {
                                self.finished_deletions.insert(uid.clone());
                            }
                            if let Some(tx) = &self.terminated {
                                let _ = tx.send(pod);
                            }
                        }
                        for waiter in self.kill_waiters.remove(&uid).into_iter().flatten() {
                            let _ = waiter.send(());
                        }
                        // The pod may have come back while it was being terminated.
                        self.reconcile();
                    }
                    Done::Orphan(uid) => { self.orphans.remove(&uid); }
                },
                else => return,
            }
        }
    }

    fn desired_by_uid(&self) -> BTreeMap<String, Arc<Pod>> {
        self.desired.values().flatten().map(|p| (spec::uid(p).to_owned(), p.clone())).collect()
    }

    fn reconcile(&mut self) {
        let all = self.desired_by_uid();
        // A pod being deleted in the API is killed with the deletion's grace period, as kubelet does.
        let (deleting, desired): (BTreeMap<_, _>, BTreeMap<_, _>) =
            all.into_iter().partition(|(_, p)| p.metadata.deletion_timestamp.is_some());
        self.finished_deletions.retain(|uid| deleting.contains_key(uid));
        for (uid, pod) in &deleting {
            match self.workers.get_mut(uid) {
                Some(h) if h.terminating.is_none() => {
                    tracing::info!(pod = %spec::key(pod), uid, "pod deleted in the API; terminating");
                    h.terminating = Some(pod.clone());
                    let _ = h.input.send(WorkerInput::terminate(pod.clone()));
                }
                Some(_) => {}
                None if self.finished_deletions.contains(uid) => {}
                // Not running a worker (the agent restarted, or the pod was deleted before it started): a
                // terminating worker still kills whatever the runtime holds for it before the deletion is finished.
                None => {
                    self.spawn_worker(uid, pod.clone());
                    if let Some(h) = self.workers.get_mut(uid) {
                        h.terminating = Some(pod.clone());
                        let _ = h.input.send(WorkerInput::terminate(pod.clone()));
                    }
                }
            }
        }
        let gone: Vec<String> = self.not_running.iter().filter(|u| !desired.contains_key(*u)).cloned().collect();
        for uid in gone {
            self.not_running.remove(&uid);
            if !self.workers.contains_key(&uid) {
                self.ctx.store.remove(&uid);
            }
        }
        let mut new_pods = Vec::new();
        for (uid, pod) in &desired {
            match self.workers.get(uid) {
                Some(h) if h.terminating.is_some() => {} // restarts once termination is done
                Some(h) => {
                    let current = h.input.borrow().pod.clone();
                    if Arc::ptr_eq(&current, pod) {
                        continue;
                    }
                    // The status manager reads the API's status from the store; only a change the worker acts on
                    // wakes the worker (a status write coming back through the watch does not).
                    self.ctx.store.upsert_pod(uid, pod.clone());
                    if pods_differ_semantically(&current, pod)
                        || crate::pods::status::readiness_gate_conditions_changed(&current, pod)
                    {
                        let _ = h.input.send(WorkerInput::sync(pod.clone()));
                    }
                }
                None if self.not_running.contains(uid) => {}
                None => new_pods.push(pod.clone()),
            }
        }
        // kubelet admits new pods oldest first, each against the pods admitted before it.
        new_pods.sort_by(|a, b| {
            let created = |p: &Pod| p.metadata.creation_timestamp.as_ref().map(|t| t.0);
            created(a).cmp(&created(b)).then_with(|| spec::key(a).cmp(&spec::key(b)))
        });
        for pod in new_pods {
            self.add_pod(pod);
        }
        self.update_qos_cgroups(&desired);
        for (uid, h) in self.workers.iter_mut() {
            if h.terminating.is_none() && !desired.contains_key(uid) && !deleting.contains_key(uid) {
                let pod = h.input.borrow().pod.clone();
                h.terminating = Some(pod.clone());
                tracing::info!(pod = %spec::key(&pod), uid, "pod removed from its source; terminating");
                let _ = h.input.send(WorkerInput::terminate(pod));
            }
        }
        self.publish_active_pods();
    }

    fn publish_active_pods(&self) {
        let Some(end) = &self.killer else { return };
        let active = self.active_pods();
        end.active.send_if_modified(|published| {
            let same = published.len() == active.len() && published.iter().zip(&active).all(|(a, b)| Arc::ptr_eq(a, b));
            if !same {
                *published = active;
            }
            !same
        });
    }

    /// kubelet's `killPodNow` from the eviction manager or the node shutdown manager: the pod's worker terminates
    /// it with the request's grace period, and it ends Failed with the request's status, never run again. A pod
    /// already being terminated keeps its termination; the request is answered when it ends.
    fn kill(&mut self, request: KillPodRequest) {
        let KillPodRequest { uid, grace_period_override, status, done } = request;
        let Some(h) = self.workers.get_mut(&uid) else {
            let _ = done.send(());
            return;
        };
        self.kill_waiters.entry(uid.clone()).or_default().push(done);
        if h.terminating.is_some() {
            return;
        }
        let mut pod = Pod::clone(&h.input.borrow().pod);
        tracing::info!(pod = %spec::key(&pod), uid, reason = %status.reason, grace_period_override, "killing pod");
        if let Some(grace) = grace_period_override {
            pod.metadata.deletion_grace_period_seconds = Some(grace);
        }
        let pod = Arc::new(pod);
        h.terminating = Some(pod.clone());
        let _ = h.input.send(WorkerInput { pod, terminate: true, kill: Some(Arc::new(status)) });
        self.killed.insert(uid);
        self.publish_active_pods();
    }

    /// kubelet's QoS container manager: the burstable cgroup's CPU shares follow the Burstable pods' requests.
    fn update_qos_cgroups(&mut self, desired: &BTreeMap<String, Arc<Pod>>) {
        if let Some(cm) = self.container_manager.as_mut() {
            cm.update_qos_cgroups(desired.values().map(|p| spec::spec(p)));
        }
    }

    /// Removes pod cgroups of pods that no source wants and the runtime no longer holds.
    fn cleanup_orphaned_cgroups(&self, runtime_uids: &BTreeSet<String>) {
        if let Some(cm) = &self.container_manager {
            cm.cleanup_orphaned_cgroups(|uid| {
                self.workers.contains_key(uid) || runtime_uids.contains(uid) || self.orphans.contains(uid)
            });
        }
    }

    /// kubelet's `HandlePodAdditions` for one pod: a pod already terminal in the API is not run again, a pod that
    /// does not fit is rejected with its status set to Failed, any other gets a worker.
    fn add_pod(&mut self, pod: Arc<Pod>) {
        let uid = spec::uid(&pod).to_owned();
        let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
        if matches!(phase, Some("Succeeded" | "Failed")) {
            tracing::info!(pod = %spec::key(&pod), uid, "pod is terminal in the API; not running it");
            self.not_running.insert(uid.clone());
            self.ctx.store.upsert_pod(&uid, pod.clone());
            if let Some(status) = pod.status.clone() {
                self.ctx.store.set_status(&uid, status);
            }
            return;
        }
        // kubelet registers the eviction manager's admit handler first, then sysctls, then the resource predicates.
        let pressure = self.pressure.as_ref().map(|p| p.borrow().clone()).unwrap_or_default();
        if let Err(rejection) = crate::eviction::admit(&pod, &pressure) {
            tracing::warn!(pod = %spec::key(&pod), uid, reason = %rejection.reason, "{}", rejection.message);
            self.reject(&uid, pod, &rejection);
            return;
        }
        if let Err(rejection) = self.sysctls.admit(&pod) {
            tracing::warn!(pod = %spec::key(&pod), uid, reason = %rejection.reason, "{}", rejection.message);
            self.reject(&uid, pod, &rejection);
            return;
        }
        if let Some(node) = &self.node {
            let node = node.borrow().clone();
            let active = self.active_pods();
            let active: Vec<&Pod> = active.iter().map(|p| p.as_ref()).collect();
            match admission::admit(&pod, &active, &node) {
                Err(rejection) => {
                    tracing::warn!(pod = %spec::key(&pod), uid, reason = %rejection.reason, "{}", rejection.message);
                    self.reject(&uid, pod, &rejection);
                    return;
                }
                Ok(admitted) => {
                    for victim in admitted.preempt {
                        self.preempt(&victim, &pod);
                    }
                }
            }
        }
        let unsupported = unsupported::unsupported_fields(&pod);
        if !unsupported.is_empty() {
            let rejection = Rejection {
                reason: REASON_UNSUPPORTED_POD_SPEC.into(),
                message: format!("this node does not support these pod fields yet: {}", unsupported.join(", ")),
            };
            tracing::warn!(pod = %spec::key(&pod), uid, reason = %rejection.reason, "{}", rejection.message);
            self.reject(&uid, pod, &rejection);
            return;
        }
        self.spawn_worker(&uid, pod);
    }

    /// kubelet's `rejectPod`: a warning event, and the pod Failed with the reason, never run.
    fn reject(&mut self, uid: &str, pod: Arc<Pod>, rejection: &Rejection) {
        let events = &self.ctx.kuberuntime.events;
        events.record(&pod, None, EventType::Warning, rejection.reason.clone(), rejection.message.clone());
        self.not_running.insert(uid.to_owned());
        self.ctx.store.upsert_pod(uid, pod.clone());
        self.ctx.store.set_status(uid, rejection.status(&pod));
    }

    /// kubelet's `filterOutInactivePods` over its pod manager: the pods the sources still hold (those being deleted
    /// in the API too) that were admitted, unless their termination is over or they are terminal and not being
    /// terminated. A port or a request frees once the pod's containers are gone, or once its source drops it.
    fn active_pods(&self) -> Vec<Arc<Pod>> {
        let in_sources: BTreeSet<&str> = self.desired.values().flatten().map(|p| spec::uid(p)).collect();
        self.workers
            .iter()
            .filter(|(uid, h)| in_sources.contains(uid.as_str()) && (h.terminating.is_some() || !self.is_terminal(uid)))
            .map(|(_, h)| h.input.borrow().pod.clone())
            .collect()
    }

    /// kubelet's `CriticalPodAdmissionHandler` eviction of one pod for `critical`: a warning event, and the pod is
    /// killed; it ends Failed with reason `Preempting`.
    fn preempt(&mut self, uid: &str, critical: &Pod) {
        let Some(h) = self.workers.get_mut(uid) else { return };
        if h.terminating.is_some() {
            return;
        }
        let pod = h.input.borrow().pod.clone();
        tracing::info!(pod = %spec::key(&pod), uid, critical = %spec::key(critical), "preempting pod to free up resources");
        let message = admission::PREEMPTED_MESSAGE.to_owned();
        self.ctx.kuberuntime.events.record(&pod, None, EventType::Warning, admission::PREEMPTING, message);
        h.terminating = Some(pod.clone());
        let _ = h.input.send(WorkerInput::terminate(pod));
        self.preempted.insert(uid.to_owned());
    }

    fn is_terminal(&self, uid: &str) -> bool {
        self.ctx.store.status_phase(uid).is_some_and(|p| p == "Succeeded" || p == "Failed")
    }

    fn spawn_worker(&mut self, uid: &str, pod: Arc<Pod>) {
        tracing::info!(pod = %spec::key(&pod), uid, "pod added");
        self.ctx.store.upsert_pod(uid, pod.clone());
        let (tx, rx) = watch::channel(WorkerInput::sync(pod));
        // Probe results the planner acts on (liveness, startup) wake the worker.
        let wake = Arc::new(Notify::new());
        let ctx = self.ctx.clone();
        let done = self.done_tx.clone();
        let uid_owned = uid.to_owned();
        tokio::spawn(async move {
            worker::run_supervised(ctx, rx, wake).await;
            let _ = done.send(Done::Worker(uid_owned));
        });
        self.workers.insert(uid.to_owned(), WorkerHandle { input: tx, terminating: None });
    }

    fn on_pleg(&mut self, event: PlegEvent) {
        match event {
            PlegEvent::Relisted(uids) => {
                if !self.sources_pending.is_empty() {
                    return;
                }
                self.relists = self.relists.wrapping_add(1);
                if self.relists % CGROUP_CLEANUP_EVERY_RELISTS == 1 {
                    self.cleanup_orphaned_cgroups(&uids);
                    let active = self.workers.keys().chain(&uids).chain(&self.orphans).cloned().collect();
                    self.ctx.kuberuntime.volumes.cleanup_orphaned_pod_dirs(&active);
                }
                for uid in uids {
                    if self.workers.contains_key(&uid) || self.orphans.contains(&uid) {
                        continue;
                    }
                    tracing::info!(uid, "runtime holds a pod no source knows; killing it");
                    self.orphans.insert(uid.clone());
                    let ctx = self.ctx.clone();
                    let done = self.done_tx.clone();
                    tokio::spawn(async move {
                        ctx.kuberuntime.kill_orphaned_pod(uid.clone()).await;
                        let _ = done.send(Done::Orphan(uid));
                    });
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{Container, PodCondition, PodSpec, PodStatus};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    fn pod() -> Pod {
        let mut p = Pod {
            spec: Some(PodSpec {
                containers: vec![Container { name: "app".into(), ..Default::default() }],
                ..Default::default()
            }),
            ..Default::default()
        };
        p.metadata.resource_version = Some("1".into());
        p
    }

    #[test]
    fn status_and_bookkeeping_changes_do_not_reach_the_worker() {
        let old = pod();
        let mut new = old.clone();
        new.metadata.resource_version = Some("2".into());
        new.metadata.managed_fields = Some(vec![Default::default()]);
        new.status = Some(PodStatus {
            phase: Some("Running".into()),
            message: Some("create failed: container 3f1c…".into()),
            conditions: Some(vec![PodCondition {
                type_: "Ready".into(),
                status: "False".into(),
                ..Default::default()
            }]),
            ..Default::default()
        });
        assert!(!pods_differ_semantically(&old, &new));
    }

    #[test]
    fn spec_label_annotation_and_deletion_changes_do() {
        let old = pod();
        let mut spec_change = old.clone();
        spec_change.spec.as_mut().unwrap().containers[0].image = Some("busybox:2".into());
        let mut label = old.clone();
        label.metadata.labels = Some([("app".to_owned(), "web".to_owned())].into());
        let mut annotation = old.clone();
        annotation.metadata.annotations = Some([("a".to_owned(), "b".to_owned())].into());
        let mut deleted = old.clone();
        deleted.metadata.deletion_timestamp = Some(Time(jiff::Timestamp::UNIX_EPOCH));
        let mut grace = old.clone();
        grace.metadata.deletion_grace_period_seconds = Some(5);
        for (what, new) in [
            ("spec", spec_change),
            ("labels", label),
            ("annotations", annotation),
            ("deletion", deleted),
            ("grace", grace),
        ] {
            assert!(pods_differ_semantically(&old, &new), "{what} must reach the worker");
        }
    }
}
