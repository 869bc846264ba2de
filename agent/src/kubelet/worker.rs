//! One pod worker per pod, kubelet's pod worker loop: wait for the pod cache to hold the pod as it is after the last
//! sync, ask `plan` what to do, hand the actions to `kuberuntime`, publish the status `status` computes, and wait for
//! the next reason to sync. Updates to the pod are coalesced: the worker always acts on the newest spec. A failed sync
//! is retried after kubelet's jittered back-off; a deletion cancels a sync in progress.

use crate::kubetypes::crash::{inject_panic, panic_message, PanicBackOff, WORKER_PANICKED};
use crate::server::PodWorkerMetrics;
use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use futures::future::BoxFuture;
use futures::FutureExt;
use k8s_openapi::api::core::v1::{Pod, PodStatus};
use tokio::sync::{watch, Notify};
use tracing::Instrument;

use crate::kuberuntime::{termination, KubeRuntime};
use crate::kubetypes::backoff::{jitter, random_unit};
use crate::kubetypes::events::EventType;
use crate::kubetypes::kill::TerminalStatus;
use crate::kubetypes::spec;
use crate::pleg::{PodCache, PodCacheEntry, PodRefresher};
use crate::pods::deadline;
use crate::pods::plan::{self, BackoffState, PlanInput, Waiting};
use crate::pods::status::{apply_terminal_status, compute_pod_status, StatusInput};
use crate::probes::Prober;
use crate::runtime::{ContainerRunState, CriClock, ObservedPod, CRI_TIME};
use crate::status::store::{PodStartRecord, PodStore};

/// kubelet's `backOffPeriod`: a pod whose sync failed is synced again after this long (jittered), unless something
/// about it changes first.
pub const WORKER_BACK_OFF_PERIOD: Duration = Duration::from_secs(10);
/// kubelet's `workerBackOffPeriodJitterFactor` and `workerResyncIntervalJitterFactor`.
const WORKER_BACK_OFF_JITTER_FACTOR: f64 = 0.5;
const WORKER_RESYNC_JITTER_FACTOR: f64 = 0.5;
/// How long a killed pod's final status waits for the runtime to be read again after its containers stopped.
const FINAL_STATUS_WAIT: Duration = Duration::from_secs(2);
/// kubelet's `podAttachAndMountTimeout` (`pkg/kubelet/volumemanager/volume_manager.go`): how long a sync waits for
/// the pod's volumes before it fails and the pod worker's back-off applies.
pub const POD_ATTACH_AND_MOUNT_TIMEOUT: Duration = Duration::from_secs(2 * 60 + 3);

/// Runs a pod's worker until the pod is terminated, starting a new one when it panics: the panic is logged with the
/// pod and recorded as a warning event on it, and after a back-off a worker built from the manager's newest input
/// and the pod cache takes over, so a pod being deleted is still stopped and its deletion finished.
pub async fn run_supervised(ctx: Arc<WorkerContext>, input: watch::Receiver<WorkerInput>, wake: Arc<Notify>) {
    let mut back_off = PanicBackOff::default();
    loop {
        let began = Instant::now();
        let pod = input.borrow().pod.clone();
        let span = tracing::info_span!("pod", pod = %spec::key(&pod), uid = %spec::uid(&pod));
        let syncer = Syncer::new(ctx.clone(), &input, wake.clone());
        let worker = PodWorker {
            syncer,
            input: input.clone(),
            wake: wake.clone(),
            cache: ctx.cache.clone(),
            refresher: ctx.refresher.clone(),
            sync_frequency: ctx.sync_frequency,
        };
        // Nothing of the worker that panicked is used again: its state goes with it, and the new worker rebuilds
        // its own from the manager's input and the pod cache.
        let run = CRI_TIME.scope(RefCell::new(CriClock::default()), worker.run()).instrument(span);
        let Err(payload) = AssertUnwindSafe(run).catch_unwind().await else { return };
        let pod = input.borrow().pod.clone();
        let wait = back_off.after(began.elapsed());
        let panic = panic_message(payload.as_ref());
        tracing::error!(pod = %spec::key(&pod), uid = %spec::uid(&pod), panic, restart_in = ?wait, "pod worker panicked");
        let message = format!(
            "Pod worker panicked ({panic}); restarting it in {}",
            crate::kubetypes::duration::format_go_duration(wait)
        );
        ctx.kuberuntime.events.record(&pod, None, EventType::Warning, WORKER_PANICKED, message);
        tokio::time::sleep(wait).await;
    }
}

/// What every worker shares.
pub struct WorkerContext {
    pub kuberuntime: KubeRuntime,
    pub runtime_name: String,
    pub store: PodStore,
    pub sync_frequency: Duration,
    pub metrics: Arc<PodWorkerMetrics>,
    /// What the PLEG saw of each pod; the workers read the runtime only through it.
    pub cache: PodCache,
    /// Asks the PLEG to observe a pod now, after its worker acted on it.
    pub refresher: PodRefresher,
}

/// What the manager tells a worker: the newest spec, and whether the pod is to be terminated.
#[derive(Debug, Clone)]
pub struct WorkerInput {
    pub pod: Arc<Pod>,
    pub terminate: bool,
    /// The node stops the pod on its own (eviction, node shutdown): the status it ends with.
    pub kill: Option<Arc<TerminalStatus>>,
}

impl WorkerInput {
    pub fn sync(pod: Arc<Pod>) -> Self {
        Self { pod, terminate: false, kill: None }
    }

    pub fn terminate(pod: Arc<Pod>) -> Self {
        Self { pod, terminate: true, kill: None }
    }
}

/// What one sync did and when to sync next.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SyncOutcome {
    /// A back-off ends then.
    pub resync_after: Option<Duration>,
    pub failed: bool,
    /// Something in the runtime was started or stopped: the PLEG is asked to observe the pod again.
    pub acted: bool,
}

/// kubelet's `podSyncer`: what a pod worker drives. The loop around it ([`PodWorker`]) owns the waiting, coalescing,
/// cancelling and retrying; this does one step on the pod as the cache shows it.
pub trait PodSyncer: Send {
    /// kubelet's `SyncPod`: plan on the cached pod, act, publish the status.
    fn sync_pod(
        &mut self,
        pod: &Arc<Pod>,
        cached: &PodCacheEntry,
    ) -> impl std::future::Future<Output = Result<SyncOutcome, String>> + Send;
    /// kubelet's `SyncTerminatingPod`: stops everything the runtime holds for the pod. The future owns what it
    /// needs, so the status can be published while it runs.
    fn terminate_pod(&mut self, pod: &Arc<Pod>) -> BoxFuture<'static, ()>;
    /// The status of a pod being terminated, from the cached pod.
    fn terminating_status(
        &mut self,
        pod: &Arc<Pod>,
        cached: &PodCacheEntry,
    ) -> impl std::future::Future<Output = ()> + Send;
    /// kubelet's `SyncTerminatedPod`: the pod's containers are gone.
    fn terminated(&mut self, pod: &Arc<Pod>);
    /// kubelet's `PodStatusFunc` of a kill by the node: the status the terminating pod ends with.
    fn set_terminal_status(&mut self, _status: Arc<TerminalStatus>) {}
}

/// kubelet's pod worker loop (`podWorkerLoop`): before each sync it waits for a cache entry newer than the start of
/// its last sync, so every decision is made on what the runtime held after the previous actions.
pub struct PodWorker<S: PodSyncer> {
    pub syncer: S,
    pub input: watch::Receiver<WorkerInput>,
    /// Woken by the probes: a liveness or startup result to act on.
    pub wake: Arc<Notify>,
    pub cache: PodCache,
    pub refresher: PodRefresher,
    pub sync_frequency: Duration,
}

impl<S: PodSyncer> PodWorker<S> {
    pub async fn run(mut self) {
        let mut deletion = self.input.clone();
        // kubelet's `lastSyncTime`: when the last sync ended. The next one plans on what the runtime held after it,
        // never on a relist that began while it was acting.
        let mut last_sync: Option<tokio::time::Instant> = None;
        // The cache entry the last sync used (`None`: none), so that only a change of it wakes the worker.
        let mut seen: Option<tokio::time::Instant> = None;
        loop {
            let input = self.input.borrow_and_update().clone();
            let uid = spec::uid(&input.pod).to_owned();
            if input.terminate {
                if let Some(status) = &input.kill {
                    self.syncer.set_terminal_status(status.clone());
                }
                self.terminate(&input.pod, &uid, seen, input.kill.is_some()).await;
                return;
            }
            let sync = async {
                let cached = self.cache.get_newer_than(&uid, last_sync).await;
                let used = cached.cached.then_some(cached.modified);
                (self.syncer.sync_pod(&input.pod, &cached).await, used)
            };
            let outcome = tokio::select! {
                r = sync => Some(r),
                () = terminate_requested(&mut deletion) => None,
            };
            let next = match outcome {
                None => {
                    tracing::info!("sync cancelled: the pod is being terminated");
                    continue;
                }
                Some((outcome, used)) => {
                    last_sync = Some(tokio::time::Instant::now());
                    seen = used;
                    if outcome.as_ref().is_ok_and(|o| o.acted) {
                        self.refresher.refresh(&uid);
                    }
                    next_sync_in(outcome, self.sync_frequency)
                }
            };
            tokio::select! {
                changed = self.input.changed() => if changed.is_err() { return },
                _ = self.wake.notified() => {
                    // A probe result: the runtime is read again now rather than at the next relist.
                    self.refresher.refresh(&uid);
                }
                _ = self.cache.changed(&uid, seen) => {}
                _ = tokio::time::sleep(next) => {}
            }
        }
    }

    async fn terminate(&mut self, pod: &Arc<Pod>, uid: &str, mut seen: Option<tokio::time::Instant>, killed: bool) {
        if killed {
            // kubelet's `syncTerminatingPod` applies the kill's status function and sets the status before it stops
            // anything: the node's own view (`/pods`) shows the DisruptionTarget condition at once, also while a
            // preStop hook holds the pod; the API gets it with the terminal phase (`status::merge_status`).
            if let Some(cached) = self.cache.get(uid) {
                self.syncer.terminating_status(pod, &cached).await;
            }
        }
        let terminate = self.syncer.terminate_pod(pod);
        tokio::pin!(terminate);
        loop {
            tokio::select! {
                () = &mut terminate => break,
                cached = self.cache.changed(uid, seen) => {
                    seen = cached.cached.then_some(cached.modified);
                    self.syncer.terminating_status(pod, &cached).await;
                }
                _ = self.wake.notified() => {
                    let Some(cached) = self.cache.get(uid) else { continue };
                    self.syncer.terminating_status(pod, &cached).await;
                }
            }
        }
        if killed {
            // A pod the node stopped stays in its source: its final status shows its containers terminated, so it
            // is computed once more from what the runtime holds after the kill.
            let ended = tokio::time::Instant::now();
            self.refresher.refresh(uid);
            let newer = tokio::time::timeout(FINAL_STATUS_WAIT, self.cache.get_newer_than(uid, Some(ended))).await;
            if let Ok(cached) = newer {
                self.syncer.terminating_status(pod, &cached).await;
            }
        }
        self.syncer.terminated(pod);
    }
}

/// How long to wait before the next sync when nothing wakes the worker first: the jittered back-off after a failure,
/// a back-off's end, or the jittered resync period.
fn next_sync_in(outcome: Result<SyncOutcome, String>, sync_frequency: Duration) -> Duration {
    let back_off = || jitter(WORKER_BACK_OFF_PERIOD, WORKER_BACK_OFF_JITTER_FACTOR, random_unit());
    match outcome {
        Ok(SyncOutcome { failed: true, resync_after, .. }) => resync_after.map_or_else(back_off, |r| r.max(back_off())),
        Ok(SyncOutcome { failed: false, resync_after, .. }) => {
            resync_after.unwrap_or_else(|| jitter(sync_frequency, WORKER_RESYNC_JITTER_FACTOR, random_unit()))
        }
        Err(e) => {
            let back_off = back_off();
            tracing::warn!(error = %e, retry_in = ?back_off, "error syncing pod, skipping");
            back_off
        }
    }
}

/// The syncer of a pod on the node: kubelet's `SyncPod` family over `plan`, `kuberuntime` and `status`.
pub struct Syncer {
    ctx: Arc<WorkerContext>,
    backoff: BackoffState,
    /// The probe workers of this pod's containers and their latest results.
    prober: Prober,
    /// kubelet's `reasonCache`: why each container did not start in the last sync (its error, or the back-off that
    /// held it), shown as its waiting reason by the next status, as kubelet's `generateAPIPodStatus` reads it
    /// before `SyncPod` acts; a start that works clears it.
    sync_errors: BTreeMap<String, Waiting>,
    start_time: SystemTime,
    first_seen_instant: Instant,
    start_recorded: bool,
    /// The status last computed, or the API's before the first sync; `published` once it went to the store.
    last_status: Option<PodStatus>,
    published: bool,
    /// The pod was active longer than `activeDeadlineSeconds`: failed, and its containers stay stopped.
    deadline_exceeded: bool,
    /// Termination messages of exited instances, by container ID: read once, as they do not change.
    termination_messages: HashMap<String, String>,
    /// The volumes of the finished pod are torn down.
    volumes_torn_down: bool,
    /// Since when the syncs wait for volumes not set up yet (kubelet's `WaitForAttachAndMount`).
    volumes_waiting_since: Option<Instant>,
    /// The node stops this pod on its own: the status it ends with.
    terminal_status: Option<Arc<TerminalStatus>>,
}

impl Syncer {
    pub fn new(ctx: Arc<WorkerContext>, input: &watch::Receiver<WorkerInput>, wake: Arc<Notify>) -> Self {
        // The status the API already has is the previous status: after an agent restart `startTime` and the
        // conditions' transition times keep their values, as kubelet seeds its status cache from the API.
        let known = input.borrow().pod.status.clone().filter(|s| s.phase.is_some());
        let start_time = known
            .as_ref()
            .and_then(|s| s.start_time.as_ref())
            .map(|t| SystemTime::from(t.0))
            .unwrap_or_else(SystemTime::now);
        let prober =
            Prober::new(ctx.kuberuntime.runtime.clone(), ctx.kuberuntime.events.clone(), wake, ctx.store.clone());
        Self {
            ctx,
            backoff: BackoffState::default(),
            prober,
            sync_errors: BTreeMap::new(),
            start_time,
            first_seen_instant: Instant::now(),
            start_recorded: false,
            last_status: known,
            published: false,
            deadline_exceeded: false,
            termination_messages: HashMap::new(),
            volumes_torn_down: false,
            volumes_waiting_since: None,
            terminal_status: None,
        }
    }

    async fn sync_once(&mut self, pod: &Arc<Pod>, cached: &PodCacheEntry) -> Result<SyncOutcome, String> {
        let uid = spec::uid(pod).to_owned();
        let observed = cached.pod.clone().map_err(|e| e.to_string())?;
        let kuberuntime = &self.ctx.kuberuntime;
        let now = SystemTime::now();
        self.backoff.crash.gc(now);
        self.backoff.image_pull.gc(now);
        self.backoff.start.gc(now);
        self.prober.sync(pod, &observed, &kuberuntime.host_ips);
        let probes = self.prober.results();
        let deadline_left = deadline::remaining(pod, self.start_time, now);
        if deadline_left == Some(Duration::ZERO) && !self.deadline_exceeded {
            tracing::info!("pod is past its active deadline");
            self.deadline_exceeded = true;
            let message = deadline::MESSAGE_DEADLINE_EXCEEDED.to_owned();
            kuberuntime.events.record(pod, None, EventType::Normal, deadline::REASON_DEADLINE_EXCEEDED, message);
        }
        // A pod that has finished starts nothing, so its volumes are not set up again (kubelet stops syncing it).
        let terminal = self.deadline_exceeded
            || self
                .last_status
                .as_ref()
                .and_then(|s| s.phase.as_deref())
                .is_some_and(|p| p == "Succeeded" || p == "Failed");
        let volumes = if terminal { Default::default() } else { kuberuntime.volumes.mount_pod(pod).await };
        let volumes_ready = volumes.ready();
        let volumes_timed_out = wait_for_volumes(&mut self.volumes_waiting_since, &volumes, Instant::now());
        let actions = plan::compute_pod_actions(&PlanInput {
            pod,
            observed: &observed,
            backoff: &self.backoff,
            probes: &probes,
            volumes_ready,
            deadline_exceeded: self.deadline_exceeded,
            now,
        });
        tracing::debug!(?actions, "computed pod actions");
        for event in plan::back_off_events(pod, &actions) {
            let at = event.container.as_ref().map(|(name, init)| (name.as_str(), *init));
            kuberuntime.events.record(pod, at, event.type_, event.reason, event.message);
        }
        let result = kuberuntime.sync_pod(pod, &observed, &actions).await;
        crate::pods::plan::record_sync_result(&mut self.backoff, pod, &actions, &result, SystemTime::now());

        // kubelet's `SyncPod` computes the status from the cached pod it planned on and the reasons the previous
        // sync left; what this sync did shows at the next one, which the PLEG's refresh of the pod wakes.
        let mut observed = ObservedPod::clone(&observed);
        fill_termination_messages(&self.ctx, pod, &mut observed, &mut self.termination_messages);
        let status = compute_pod_status(&StatusInput {
            pod,
            observed: &observed,
            waiting: &self.sync_errors,
            previous: self.last_status.as_ref(),
            start_time: self.start_time,
            host_ips: &kuberuntime.host_ips,
            runtime_name: &self.ctx.runtime_name,
            probes: &probes,
            deadline_exceeded: self.deadline_exceeded,
            now: SystemTime::now(),
        });
        // kubelet's `reasonCache.Update` after `SyncPod`: the next status shows why each container did not start
        // in this sync (its error, or the back-off that held it), until a start works.
        for (name, outcome) in &result.containers {
            match outcome {
                None => self.sync_errors.remove(name),
                Some(waiting) => self.sync_errors.insert(name.clone(), waiting.clone()),
            };
        }
        self.sync_errors.extend(actions.waiting.clone());
        self.record_start(pod, &observed);
        if !self.published || self.last_status.as_ref() != Some(&status) {
            self.ctx.store.set_status(&uid, status.clone());
            self.last_status = Some(status);
            self.published = true;
        }
        // kubelet tears a finished pod's volumes down once nothing of it runs: memory-backed ones hold node memory.
        let finished = self
            .last_status
            .as_ref()
            .and_then(|s| s.phase.as_deref())
            .is_some_and(|p| p == "Succeeded" || p == "Failed");
        if finished
            && !self.volumes_torn_down
            && !result.changed
            && observed.containers.iter().all(|c| c.state != ContainerRunState::Running)
        {
            self.ctx.kuberuntime.volumes.unmount_volumes(&uid);
            self.volumes_torn_down = true;
        }
        // Sync again when the deadline passes.
        // Sync again when a volume's retry is due: its set-up is retried then, not after the worker's back-off.
        let resync_after = [actions.resync_after, deadline_left.filter(|d| !d.is_zero()), volumes.retry_in]
            .into_iter()
            .flatten()
            .min();
        Ok(SyncOutcome { resync_after, failed: result.failed() || volumes_timed_out, acted: result.changed })
    }

    /// The first time every container runs, records how long it took and how much of it was spent in CRI calls.
    fn record_start(&mut self, pod: &Pod, observed: &ObservedPod) {
        if self.start_recorded {
            return;
        }
        let all_running = spec::spec(pod)
            .containers
            .iter()
            .all(|c| observed.latest_container(&c.name).is_some_and(|r| r.state == ContainerRunState::Running));
        if all_running {
            self.start_recorded = true;
            let record = PodStartRecord {
                total: self.first_seen_instant.elapsed(),
                cri: CRI_TIME.try_with(|c| c.borrow().total()).unwrap_or_default(),
            };
            tracing::info!(seconds = record.total.as_secs_f64(), cri_seconds = record.cri.as_secs_f64(), "pod started");
            self.ctx.metrics.observe_pod_start(record.total);
            self.ctx.store.record_start(spec::uid(pod), record);
        }
    }
}

impl PodSyncer for Syncer {
    async fn sync_pod(&mut self, pod: &Arc<Pod>, cached: &PodCacheEntry) -> Result<SyncOutcome, String> {
        let began = Instant::now();
        let outcome = self.sync_once(pod, cached).await;
        let failed = !matches!(outcome, Ok(SyncOutcome { failed: false, .. }));
        self.ctx.metrics.record(began.elapsed(), failed);
        outcome
    }

    fn terminate_pod(&mut self, pod: &Arc<Pod>) -> BoxFuture<'static, ()> {
        inject_panic("pod-worker-terminate", pod);
        // Probes go on while the containers stop within their grace period: a readiness probe that fails then
        // makes the pod not ready before it is gone, as in kubelet.
        self.prober.set_terminating();
        let ctx = self.ctx.clone();
        let pod = pod.clone();
        // A pod the node kills keeps its stopped containers, as kubelet's do, until it is gone from its source.
        let killed = self.terminal_status.is_some();
        async move {
            if killed {
                ctx.kuberuntime.kill_pod(&pod).await
            } else {
                ctx.kuberuntime.terminate_pod(&pod).await
            }
        }
        .boxed()
    }

    /// The status of a pod whose containers are being stopped, with the latest probe results; nothing is started.
    async fn terminating_status(&mut self, pod: &Arc<Pod>, cached: &PodCacheEntry) {
        let uid = spec::uid(pod);
        let Ok(observed) = &cached.pod else { return };
        let mut observed = ObservedPod::clone(observed);
        fill_termination_messages(&self.ctx, pod, &mut observed, &mut self.termination_messages);
        let probes = self.prober.results();
        let status = compute_pod_status(&StatusInput {
            pod,
            observed: &observed,
            waiting: &self.sync_errors,
            previous: self.last_status.as_ref(),
            start_time: self.start_time,
            host_ips: &self.ctx.kuberuntime.host_ips,
            runtime_name: &self.ctx.runtime_name,
            probes: &probes,
            deadline_exceeded: self.deadline_exceeded,
            now: SystemTime::now(),
        });
        let mut status = status;
        if let Some(kill) = &self.terminal_status {
            apply_terminal_status(&mut status, kill, self.last_status.as_ref(), false, SystemTime::now());
        }
        if self.last_status.as_ref() != Some(&status) {
            self.ctx.store.set_status(uid, status.clone());
            self.last_status = Some(status);
        }
    }

    fn terminated(&mut self, pod: &Arc<Pod>) {
        self.prober.stop();
        let uid = spec::uid(pod);
        match (&self.terminal_status, self.last_status.take()) {
            // The pod stays in its source, Failed with the kill's reason; the pod manager keeps it from running again.
            (Some(kill), status) => {
                let mut status = status.unwrap_or_default();
                apply_terminal_status(&mut status, kill, None, true, SystemTime::now());
                self.ctx.store.set_status(uid, status);
            }
            _ => self.ctx.store.remove(uid),
        }
    }

    fn set_terminal_status(&mut self, status: Arc<TerminalStatus>) {
        self.terminal_status = Some(status);
    }
}

/// kubelet's `WaitForAttachAndMount` across syncs: a pod whose volumes are not all set up waits for their retries
/// (each sync is a retry) up to `podAttachAndMountTimeout`; only then does the sync fail, and the worker's back-off
/// applies before the next wait begins. Returns whether the wait timed out now.
fn wait_for_volumes(waiting_since: &mut Option<Instant>, volumes: &crate::volumes::PodVolumes, now: Instant) -> bool {
    if volumes.ready() {
        *waiting_since = None;
        return false;
    }
    let since = *waiting_since.get_or_insert(now);
    if now.saturating_duration_since(since) < POD_ATTACH_AND_MOUNT_TIMEOUT {
        return false;
    }
    *waiting_since = None;
    // kubelet 1.28's message; the poll's timeout is `context deadline exceeded`, which `wait.Interrupted` takes
    // for an interruption, so kubelet posts no event for it, only logs the failed sync.
    let error = format!(
        "unmounted volumes=[{}], unattached volumes=[], failed to process volumes=[]: context deadline exceeded",
        volumes.unmounted.join(" ")
    );
    tracing::error!(error, "Unable to attach or mount volumes for pod; skipping pod");
    true
}

/// Exited instances get their termination messages (the file the container wrote, or its log's end).
fn fill_termination_messages(
    ctx: &WorkerContext,
    pod: &Pod,
    observed: &mut ObservedPod,
    cache: &mut HashMap<String, String>,
) {
    let pod_dir = ctx.kuberuntime.volumes.pod_dir(spec::uid(pod));
    let log_dir = crate::kuberuntime::pod_log_dir(&ctx.kuberuntime.pod_logs_dir, pod);
    termination::fill_messages(pod, observed, &pod_dir, &log_dir, cache);
}

/// Resolves once the manager asks for the pod's termination; never when the manager is gone.
async fn terminate_requested(input: &mut watch::Receiver<WorkerInput>) {
    loop {
        if input.changed().await.is_err() {
            return std::future::pending().await;
        }
        if input.borrow_and_update().terminate {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::Ordering;

    #[test]
    fn a_sync_waits_for_volumes_until_kubelets_attach_and_mount_timeout() {
        let t0 = Instant::now();
        let pending = crate::volumes::PodVolumes { unmounted: vec!["cfg".into()], retry_in: None };
        let mut since = None;
        assert!(!wait_for_volumes(&mut since, &pending, t0), "the wait begins");
        assert_eq!(since, Some(t0));
        assert!(!wait_for_volumes(&mut since, &pending, t0 + Duration::from_secs(122)), "retries go on");
        assert!(wait_for_volumes(&mut since, &pending, t0 + POD_ATTACH_AND_MOUNT_TIMEOUT), "2 min 3 s: the sync fails");
        assert_eq!(since, None, "the next sync, after the worker's back-off, waits anew");
        assert!(!wait_for_volumes(&mut since, &pending, t0 + Duration::from_secs(200)));
        assert!(!wait_for_volumes(&mut since, &Default::default(), t0 + Duration::from_secs(201)));
        assert_eq!(since, None, "all volumes set up");
    }

    /// A syncer that records what it was asked and answers as the test says.
    #[derive(Clone, Default)]
    struct FakeSyncer {
        log: Arc<std::sync::Mutex<Vec<String>>>,
        /// Outcomes of the next syncs, in order; a no-op success once empty.
        outcomes: Arc<std::sync::Mutex<std::collections::VecDeque<SyncOutcome>>>,
        /// While set, a sync waits for a permit before it answers.
        gate: Option<Arc<tokio::sync::Semaphore>>,
        /// Set when a sync in progress was dropped before it answered.
        cancelled: Arc<std::sync::atomic::AtomicBool>,
    }

    impl FakeSyncer {
        fn log(&self) -> Vec<String> {
            self.log.lock().unwrap().clone()
        }
        fn push(&self, entry: String) {
            self.log.lock().unwrap().push(entry);
        }
    }

    struct DropGuard(Arc<std::sync::atomic::AtomicBool>, bool);
    impl Drop for DropGuard {
        fn drop(&mut self) {
            if !self.1 {
                self.0.store(true, Ordering::SeqCst);
            }
        }
    }

    fn image_of(pod: &Pod) -> String {
        spec::spec(pod).containers[0].image.clone().unwrap_or_default()
    }

    fn sandbox_of(cached: &PodCacheEntry) -> String {
        let pod = cached.pod.as_ref().ok();
        pod.and_then(|p| p.latest_sandbox().map(|s| s.id.clone())).unwrap_or_else(|| "-".into())
    }

    impl PodSyncer for FakeSyncer {
        async fn sync_pod(&mut self, pod: &Arc<Pod>, cached: &PodCacheEntry) -> Result<SyncOutcome, String> {
            self.push(format!("sync {} {}", image_of(pod), sandbox_of(cached)));
            let mut guard = DropGuard(self.cancelled.clone(), false);
            if let Some(gate) = &self.gate {
                gate.acquire().await.map_err(|e| e.to_string())?.forget();
            }
            guard.1 = true;
            Ok(self.outcomes.lock().unwrap().pop_front().unwrap_or_default())
        }

        fn terminate_pod(&mut self, pod: &Arc<Pod>) -> BoxFuture<'static, ()> {
            self.push(format!("terminate {}", image_of(pod)));
            async {}.boxed()
        }

        async fn terminating_status(&mut self, _pod: &Arc<Pod>, cached: &PodCacheEntry) {
            self.push(format!("terminating status {}", sandbox_of(cached)));
        }

        fn terminated(&mut self, _pod: &Arc<Pod>) {
            self.push("terminated".into());
        }

        fn set_terminal_status(&mut self, status: Arc<TerminalStatus>) {
            self.push(format!("ends {}", status.reason));
        }
    }

    fn test_pod(image: &str) -> Arc<Pod> {
        let mut pod = Pod {
            spec: Some(k8s_openapi::api::core::v1::PodSpec {
                containers: vec![k8s_openapi::api::core::v1::Container {
                    name: "app".into(),
                    image: Some(image.into()),
                    ..Default::default()
                }],
                ..Default::default()
            }),
            ..Default::default()
        };
        pod.metadata.uid = Some("uid-1".into());
        Arc::new(pod)
    }

    fn observed(sandbox: &str) -> ObservedPod {
        ObservedPod {
            sandboxes: vec![crate::runtime::SandboxRecord {
                id: sandbox.into(),
                pod_uid: "uid-1".into(),
                namespace: String::new(),
                name: String::new(),
                attempt: 0,
                ready: true,
                created_at: SystemTime::UNIX_EPOCH,
                ips: vec![],
            }],
            containers: vec![],
        }
    }

    struct Harness {
        syncer: FakeSyncer,
        input: watch::Sender<WorkerInput>,
        cache: PodCache,
        refreshes: tokio::sync::mpsc::UnboundedReceiver<String>,
        worker: tokio::task::JoinHandle<()>,
    }

    fn start(syncer: FakeSyncer, cache: PodCache) -> Harness {
        let (input, rx) = watch::channel(WorkerInput::sync(test_pod("v1")));
        let (refresher, refreshes) = PodRefresher::channel();
        let worker = PodWorker {
            syncer: syncer.clone(),
            input: rx,
            wake: Arc::new(Notify::new()),
            cache: cache.clone(),
            refresher,
            sync_frequency: Duration::from_secs(60),
        };
        Harness { syncer, input, cache, refreshes, worker: tokio::spawn(worker.run()) }
    }

    /// Lets every task run until all of them wait (time is paused: nothing else moves it).
    async fn settle() {
        for _ in 0..20 {
            tokio::task::yield_now().await;
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_sync_waits_for_a_cache_entry_newer_than_the_last_sync() {
        let cache = PodCache::new();
        cache.set("uid-1", Ok(observed("s0")), tokio::time::Instant::now());
        let syncer = FakeSyncer::default();
        syncer.outcomes.lock().unwrap().push_back(SyncOutcome { acted: true, ..Default::default() });
        let mut h = start(syncer, cache);
        settle().await;
        assert_eq!(h.syncer.log(), ["sync v1 s0"], "the first sync takes what the cache has");
        assert_eq!(h.refreshes.try_recv().ok().as_deref(), Some("uid-1"), "it acted: the PLEG observes the pod");

        // An update wakes the worker, but the cache still holds what the first sync planned on.
        h.input.send_modify(|i| i.pod = test_pod("v2"));
        settle().await;
        assert_eq!(h.syncer.log().len(), 1, "no sync on a cache entry older than the last sync");
        tokio::time::advance(Duration::from_millis(3)).await;
        h.cache.set("uid-1", Ok(observed("s1")), tokio::time::Instant::now());
        settle().await;
        assert_eq!(h.syncer.log(), ["sync v1 s0", "sync v2 s1"]);
        h.worker.abort();
    }

    #[tokio::test(start_paused = true)]
    async fn a_relist_newer_than_the_last_sync_lets_a_sync_go_on_the_entry_it_has() {
        let cache = PodCache::new();
        cache.update_time(tokio::time::Instant::now());
        let h = start(FakeSyncer::default(), cache);
        settle().await;
        assert_eq!(h.syncer.log(), ["sync v1 -"], "nothing in the runtime yet: an empty pod");
        h.input.send_modify(|i| i.pod = test_pod("v2"));
        settle().await;
        assert_eq!(h.syncer.log().len(), 1);
        tokio::time::advance(Duration::from_secs(1)).await;
        h.cache.update_time(tokio::time::Instant::now());
        settle().await;
        assert_eq!(h.syncer.log(), ["sync v1 -", "sync v2 -"]);
        h.worker.abort();
    }

    #[tokio::test(start_paused = true)]
    async fn a_relist_that_began_while_the_sync_acted_is_not_newer_than_it() {
        let cache = PodCache::new();
        cache.update_time(tokio::time::Instant::now());
        let gate = Arc::new(tokio::sync::Semaphore::new(0));
        let syncer = FakeSyncer { gate: Some(gate.clone()), ..Default::default() };
        syncer.outcomes.lock().unwrap().push_back(SyncOutcome { acted: true, ..Default::default() });
        let h = start(syncer, cache);
        settle().await;
        // The sync is acting (starting a container) when a relist lists the runtime: it cannot show what it started.
        tokio::time::advance(Duration::from_millis(5)).await;
        h.cache.update_time(tokio::time::Instant::now());
        tokio::time::advance(Duration::from_millis(5)).await;
        gate.add_permits(10);
        settle().await;
        h.input.send_modify(|i| i.pod = test_pod("v2"));
        settle().await;
        assert_eq!(h.syncer.log(), ["sync v1 -"], "no second start planned on a view from before the first");
        tokio::time::advance(Duration::from_millis(5)).await;
        h.cache.set("uid-1", Ok(observed("s1")), tokio::time::Instant::now());
        settle().await;
        assert_eq!(h.syncer.log(), ["sync v1 -", "sync v2 s1"]);
        h.worker.abort();
    }

    #[tokio::test(start_paused = true)]
    async fn updates_during_a_sync_are_coalesced_into_one_sync_on_the_newest() {
        let cache = PodCache::new();
        cache.update_time(tokio::time::Instant::now());
        let gate = Arc::new(tokio::sync::Semaphore::new(0));
        let syncer = FakeSyncer { gate: Some(gate.clone()), ..Default::default() };
        let h = start(syncer, cache);
        settle().await;
        for image in ["v2", "v3", "v4"] {
            h.input.send_modify(|i| i.pod = test_pod(image));
        }
        gate.add_permits(10);
        settle().await;
        tokio::time::advance(Duration::from_millis(5)).await;
        h.cache.update_time(tokio::time::Instant::now());
        settle().await;
        assert_eq!(h.syncer.log(), ["sync v1 -", "sync v4 -"], "one sync, on the newest spec");
        h.worker.abort();
    }

    #[tokio::test(start_paused = true)]
    async fn a_terminate_request_cancels_a_sync_in_flight() {
        let cache = PodCache::new();
        cache.set("uid-1", Ok(observed("s0")), tokio::time::Instant::now());
        let gate = Arc::new(tokio::sync::Semaphore::new(0));
        let syncer = FakeSyncer { gate: Some(gate), ..Default::default() };
        let h = start(syncer, cache);
        settle().await;
        assert_eq!(h.syncer.log(), ["sync v1 s0"]);
        h.input.send_modify(|i| {
            i.pod = test_pod("v2");
            i.terminate = true;
        });
        tokio::time::timeout(Duration::from_secs(1), h.worker).await.expect("the worker ends").unwrap();
        assert!(h.syncer.cancelled.load(Ordering::SeqCst), "the sync in flight was dropped");
        let log = h.syncer.log();
        assert_eq!(log[..2], ["sync v1 s0", "terminate v2"], "terminated with the newest spec");
        assert_eq!(log.last().map(String::as_str), Some("terminated"));
        assert!(log.iter().all(|l| !l.starts_with("sync v2")), "no sync after the terminate request: {log:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_pod_being_terminated_publishes_its_status_from_the_cache() {
        let cache = PodCache::new();
        let (input, rx) = watch::channel(WorkerInput::terminate(test_pod("v1")));
        let (refresher, _refreshes) = PodRefresher::channel();
        struct SlowTerminate(FakeSyncer, Arc<Notify>);
        impl PodSyncer for SlowTerminate {
            async fn sync_pod(&mut self, p: &Arc<Pod>, c: &PodCacheEntry) -> Result<SyncOutcome, String> {
                self.0.sync_pod(p, c).await
            }
            fn terminate_pod(&mut self, pod: &Arc<Pod>) -> BoxFuture<'static, ()> {
                drop(self.0.terminate_pod(pod));
                let done = self.1.clone();
                async move { done.notified().await }.boxed()
            }
            async fn terminating_status(&mut self, p: &Arc<Pod>, c: &PodCacheEntry) {
                self.0.terminating_status(p, c).await
            }
            fn terminated(&mut self, p: &Arc<Pod>) {
                self.0.terminated(p)
            }
        }
        let fake = FakeSyncer::default();
        let done = Arc::new(Notify::new());
        let worker = PodWorker {
            syncer: SlowTerminate(fake.clone(), done.clone()),
            input: rx,
            wake: Arc::new(Notify::new()),
            cache: cache.clone(),
            refresher,
            sync_frequency: Duration::from_secs(60),
        };
        let worker = tokio::spawn(worker.run());
        settle().await;
        cache.set("uid-1", Ok(observed("s-stopping")), tokio::time::Instant::now());
        settle().await;
        done.notify_one();
        worker.await.unwrap();
        drop(input);
        assert_eq!(fake.log(), ["terminate v1", "terminating status s-stopping", "terminated"]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_pod_the_node_kills_ends_with_its_status_computed_after_the_runtime_is_read_again() {
        let cache = PodCache::new();
        cache.set("uid-1", Ok(observed("s-running")), tokio::time::Instant::now());
        let syncer = FakeSyncer::default();
        let mut h = start(syncer, cache.clone());
        settle().await;
        let kill = TerminalStatus { reason: "Evicted".into(), message: "low on memory".into(), disruption: None };
        h.input.send_modify(|i| {
            i.terminate = true;
            i.kill = Some(Arc::new(kill));
        });
        settle().await;
        let refresh = tokio::time::timeout(Duration::from_secs(1), h.refreshes.recv()).await;
        assert_eq!(refresh.ok().flatten().as_deref(), Some("uid-1"), "the runtime is read again after the kill");
        tokio::time::advance(Duration::from_millis(1)).await;
        cache.set("uid-1", Ok(observed("s-stopped")), tokio::time::Instant::now());
        tokio::time::timeout(Duration::from_secs(1), h.worker).await.expect("the worker ends").unwrap();
        let log = h.syncer.log();
        assert_eq!(
            log[1..],
            [
                "ends Evicted",
                "terminating status s-running",
                "terminate v1",
                "terminating status s-stopped",
                "terminated"
            ],
            "the kill's status is set before anything stops, the final one computed from the runtime after the kill: \
             {log:?}"
        );
    }

    /// The PLEG's relist every second, moving the cache's global timestamp on.
    fn relists(cache: PodCache) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            loop {
                cache.update_time(tokio::time::Instant::now());
                tokio::time::sleep(crate::pleg::RELIST_PERIOD).await;
            }
        })
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_sync_is_retried_after_the_jittered_back_off() {
        let cache = PodCache::new();
        let relist = relists(cache.clone());
        let syncer = FakeSyncer::default();
        syncer.outcomes.lock().unwrap().push_back(SyncOutcome { failed: true, ..Default::default() });
        let h = start(syncer, cache);
        settle().await;
        assert_eq!(h.syncer.log().len(), 1);
        tokio::time::sleep(WORKER_BACK_OFF_PERIOD - Duration::from_millis(10)).await;
        assert_eq!(h.syncer.log().len(), 1, "not before the back-off period");
        tokio::time::sleep(WORKER_BACK_OFF_PERIOD.mul_f64(WORKER_BACK_OFF_JITTER_FACTOR) + Duration::from_secs(1))
            .await;
        assert_eq!(h.syncer.log().len(), 2, "retried within the jittered back-off (and the next relist)");
        relist.abort();
        h.worker.abort();
    }

    #[tokio::test(start_paused = true)]
    async fn a_sync_that_did_nothing_asks_for_no_refresh_and_the_worker_rests() {
        let cache = PodCache::new();
        cache.set("uid-1", Ok(observed("s0")), tokio::time::Instant::now());
        let relist = relists(cache.clone());
        let mut h = start(FakeSyncer::default(), cache);
        tokio::time::sleep(Duration::from_secs(30)).await;
        assert_eq!(h.syncer.log(), ["sync v1 s0"], "relists that saw nothing new wake nothing");
        assert!(h.refreshes.try_recv().is_err(), "no refresh after a sync that did nothing");
        // A change the PLEG saw wakes it.
        h.cache.set("uid-1", Ok(observed("s1")), tokio::time::Instant::now());
        settle().await;
        assert_eq!(h.syncer.log(), ["sync v1 s0", "sync v1 s1"]);
        relist.abort();
        h.worker.abort();
    }
}
