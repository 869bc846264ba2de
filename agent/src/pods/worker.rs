//! One pod worker per pod, kubelet's pod worker loop: observe the pod in the runtime, ask `plan` what to do, hand the
//! actions to `kuberuntime`, publish the status `status` computes, and wait for the next reason to sync. Updates to
//! the pod are coalesced: the worker always acts on the newest spec. A failed sync is retried after kubelet's
//! jittered back-off; a deletion cancels a sync in progress.

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use futures::FutureExt;
use k8s_openapi::api::core::v1::{Pod, PodStatus};
use tokio::sync::{watch, Notify};
use tracing::Instrument;

use crate::pods::backoff::{jitter, random_unit};
use crate::pods::events::{self as ev, EventType};
use crate::pods::plan::{self, BackoffState, PlanInput, PodActions, Waiting};
use crate::pods::spec;
use crate::pods::status::{compute_pod_status, StatusInput};
use crate::pods::store::{PodStartRecord, PodStore};
use crate::kuberuntime::{KubeRuntime, PodSyncResult};
use crate::lifecycle::{deadline, termination};
use crate::probes::Prober;
use crate::runtime::{ContainerRunState, CriClock, ObservedPod, RuntimeError, CRI_TIME};

/// kubelet's `backOffPeriod`: a pod whose sync failed is synced again after this long (jittered), unless something
/// about it changes first.
pub const WORKER_BACK_OFF_PERIOD: Duration = Duration::from_secs(10);
/// kubelet's `workerBackOffPeriodJitterFactor` and `workerResyncIntervalJitterFactor`.
const WORKER_BACK_OFF_JITTER_FACTOR: f64 = 0.5;
const WORKER_RESYNC_JITTER_FACTOR: f64 = 0.5;
/// kubelet's `podAttachAndMountTimeout` (`pkg/kubelet/volumemanager/volume_manager.go`): how long a sync waits for
/// the pod's volumes before it fails and the pod worker's back-off applies.
pub const POD_ATTACH_AND_MOUNT_TIMEOUT: Duration = Duration::from_secs(2 * 60 + 3);

/// The event of a worker that panicked and was started again. kubelet has no such event: its goroutines end in
/// `runtime.HandleCrash`, which re-panics, so a panic there ends the whole kubelet (and systemd starts it again).
/// Here one pod's worker is restarted instead, and this reason, ours, says so on the pod.
pub const WORKER_PANICKED: &str = "WorkerPanicked";
/// A worker that panicked is started again after this long, doubling up to [`PANIC_BACK_OFF_MAX`] while it keeps
/// panicking: a deterministic panic costs a log line and an event per period, not a spinning core.
pub const PANIC_BACK_OFF_INITIAL: Duration = Duration::from_secs(1);
pub const PANIC_BACK_OFF_MAX: Duration = Duration::from_secs(60);

/// The back-off of a supervised worker that panicked: doubling, and back to its start after a worker that ran a
/// whole maximum period.
#[derive(Debug, Clone, Copy)]
pub struct PanicBackOff {
    next: Duration,
}

impl Default for PanicBackOff {
    fn default() -> Self {
        Self { next: PANIC_BACK_OFF_INITIAL }
    }
}

impl PanicBackOff {
    /// How long to wait before the next start, after a worker that ran for `ran`.
    pub fn after(&mut self, ran: Duration) -> Duration {
        if ran >= PANIC_BACK_OFF_MAX {
            self.next = PANIC_BACK_OFF_INITIAL;
        }
        let wait = self.next;
        self.next = (self.next * 2).min(PANIC_BACK_OFF_MAX);
        wait
    }
}

/// The text of a panic's payload.
pub fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "(no message)".to_owned())
}

/// The environment variable of [`inject_panic`], read in debug builds only.
pub const INJECT_PANIC_ENV: &str = "RKUBELET_INJECT_PANIC";

/// Fault injection for the supervision tests: in a debug build, `RKUBELET_INJECT_PANIC=<site>:<namespace>/<name>`
/// (comma-separated; sites `pod-worker-terminate` and `probe`) makes that pod's worker panic once at that site. It
/// is an environment variable of the agent's process, which pod authors do not set, and a release build does not
/// read it at all: the test harness runs the debug build, so no feature or build of its own is needed.
#[cfg(debug_assertions)]
pub fn inject_panic(site: &str, pod: &Pod) {
    static FIRED: std::sync::Mutex<std::collections::BTreeSet<String>> =
        std::sync::Mutex::new(std::collections::BTreeSet::new());
    let Ok(wanted) = std::env::var(INJECT_PANIC_ENV) else { return };
    let here = format!("{site}:{}", spec::key(pod));
    if wanted.split(',').any(|w| w == here) && FIRED.lock().is_ok_and(|mut f| f.insert(here.clone())) {
        panic!("injected panic at {here}");
    }
}

#[cfg(not(debug_assertions))]
pub fn inject_panic(_site: &str, _pod: &Pod) {}

/// Runs a pod's worker until the pod is terminated, starting a new one when it panics: the panic is logged with the
/// pod and recorded as a warning event on it, and after a back-off a worker built from the manager's newest input
/// and the runtime's state takes over, so a pod being deleted is still stopped and its deletion finished.
pub async fn run_supervised(ctx: Arc<WorkerContext>, input: watch::Receiver<WorkerInput>, wake: Arc<Notify>) {
    let mut back_off = PanicBackOff::default();
    loop {
        let began = Instant::now();
        let worker = PodWorker::new(ctx.clone(), input.clone(), wake.clone());
        // Nothing of the worker that panicked is used again: its state goes with it, and the new worker rebuilds
        // its own from the manager's input and the runtime.
        let Err(payload) = AssertUnwindSafe(worker.run()).catch_unwind().await else { return };
        let pod = input.borrow().pod.clone();
        let wait = back_off.after(began.elapsed());
        let panic = panic_message(payload.as_ref());
        tracing::error!(pod = %spec::key(&pod), uid = %spec::uid(&pod), panic, restart_in = ?wait, "pod worker panicked");
        let message = format!("Pod worker panicked ({panic}); restarting it in {}", plan::go_duration(wait));
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
}

/// Counts of pod syncs, for `/metrics` (kubelet's `kubelet_pod_worker_duration_seconds`).
#[derive(Debug, Default)]
pub struct PodWorkerMetrics {
    syncs: AtomicU64,
    failed_syncs: AtomicU64,
    sync_micros: AtomicU64,
}

impl PodWorkerMetrics {
    fn record(&self, took: Duration, failed: bool) {
        self.syncs.fetch_add(1, Ordering::Relaxed);
        if failed {
            self.failed_syncs.fetch_add(1, Ordering::Relaxed);
        }
        self.sync_micros.fetch_add(took.as_micros().try_into().unwrap_or(u64::MAX), Ordering::Relaxed);
    }

    /// Syncs done, syncs that failed, and the time spent in them.
    pub fn snapshot(&self) -> (u64, u64, Duration) {
        (
            self.syncs.load(Ordering::Relaxed),
            self.failed_syncs.load(Ordering::Relaxed),
            Duration::from_micros(self.sync_micros.load(Ordering::Relaxed)),
        )
    }
}

/// What the manager tells a worker: the newest spec, and whether the pod is to be terminated.
#[derive(Debug, Clone)]
pub struct WorkerInput {
    pub pod: Arc<Pod>,
    pub terminate: bool,
}

/// When to sync next, decided by one sync.
struct SyncOutcome {
    /// A back-off ends then.
    resync_after: Option<Duration>,
    failed: bool,
}

pub struct PodWorker {
    ctx: Arc<WorkerContext>,
    input: watch::Receiver<WorkerInput>,
    wake: Arc<Notify>,
    backoff: BackoffState,
    /// The probe workers of this pod's containers and their latest results.
    prober: Prober,
    /// Errors of the last attempt to start each container, shown as its waiting reason until it starts.
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
}

impl PodWorker {
    pub fn new(ctx: Arc<WorkerContext>, input: watch::Receiver<WorkerInput>, wake: Arc<Notify>) -> Self {
        // The status the API already has is the previous status: after an agent restart `startTime` and the
        // conditions' transition times keep their values, as kubelet seeds its status cache from the API.
        let known = input.borrow().pod.status.clone().filter(|s| s.phase.is_some());
        let start_time = known
            .as_ref()
            .and_then(|s| s.start_time.as_ref())
            .map(|t| SystemTime::from(t.0))
            .unwrap_or_else(SystemTime::now);
        let prober = Prober::new(ctx.kuberuntime.runtime.clone(), ctx.kuberuntime.events.clone(), wake.clone());
        Self {
            input,
            wake,
            backoff: BackoffState::default(),
            prober,
            sync_errors: BTreeMap::new(),
            start_time,
            first_seen_instant: Instant::now(),
            start_recorded: false,
            last_status: known,
            published: false,
            volumes_torn_down: false,
            volumes_waiting_since: None,
            deadline_exceeded: false,
            termination_messages: HashMap::new(),
            ctx,
        }
    }

    /// Runs until the pod is terminated and cleaned up.
    pub async fn run(self) {
        let pod = self.input.borrow().pod.clone();
        let span = tracing::info_span!("pod", pod = %spec::key(&pod), uid = %spec::uid(&pod));
        CRI_TIME.scope(RefCell::new(CriClock::default()), self.run_inner()).instrument(span).await
    }

    async fn run_inner(mut self) {
        let mut deletion = self.input.clone();
        loop {
            let input = self.input.borrow_and_update().clone();
            if input.terminate {
                inject_panic("pod-worker-terminate", &input.pod);
                // Probes go on while the containers stop within their grace period: a readiness probe that fails
                // then makes the pod not ready before it is gone, as in kubelet.
                self.prober.set_terminating();
                let ctx = self.ctx.clone();
                let terminate = ctx.kuberuntime.terminate_pod(&input.pod);
                tokio::pin!(terminate);
                loop {
                    tokio::select! {
                        () = &mut terminate => break,
                        _ = self.wake.notified() => self.publish_terminating_status(&input.pod).await,
                    }
                }
                self.prober.stop();
                self.ctx.store.remove(spec::uid(&input.pod));
                return;
            }
            let outcome = tokio::select! {
                r = self.sync(&input.pod) => Some(r),
                () = terminate_requested(&mut deletion) => None,
            };
            let next = match outcome {
                None => {
                    tracing::info!("sync cancelled: the pod is being terminated");
                    continue;
                }
                Some(Ok(SyncOutcome { failed: true, resync_after })) => {
                    let back_off = jitter(WORKER_BACK_OFF_PERIOD, WORKER_BACK_OFF_JITTER_FACTOR, random_unit());
                    resync_after.map_or(back_off, |r| r.max(back_off))
                }
                Some(Ok(SyncOutcome { failed: false, resync_after })) => resync_after
                    .unwrap_or_else(|| jitter(self.ctx.sync_frequency, WORKER_RESYNC_JITTER_FACTOR, random_unit())),
                Some(Err(e)) => {
                    let back_off = jitter(WORKER_BACK_OFF_PERIOD, WORKER_BACK_OFF_JITTER_FACTOR, random_unit());
                    tracing::warn!(error = %e, retry_in = ?back_off, "error syncing pod, skipping");
                    back_off
                }
            };
            tokio::select! {
                changed = self.input.changed() => if changed.is_err() { return },
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep(next) => {}
            }
        }
    }

    async fn sync(&mut self, pod: &Arc<Pod>) -> Result<SyncOutcome, RuntimeError> {
        let began = Instant::now();
        let outcome = self.sync_once(pod).await;
        let failed = !matches!(outcome, Ok(SyncOutcome { failed: false, .. }));
        self.ctx.metrics.record(began.elapsed(), failed);
        outcome
    }

    async fn sync_once(&mut self, pod: &Arc<Pod>) -> Result<SyncOutcome, RuntimeError> {
        let uid = spec::uid(pod).to_owned();
        let kuberuntime = &self.ctx.kuberuntime;
        let observed = kuberuntime.runtime.observe_pod(&uid).await?;
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
        let (actions, result) = if self.deadline_exceeded {
            // A pod failed for its deadline is terminal: everything is stopped and nothing starts again.
            let changed = kuberuntime.kill_containers_and_sandboxes(pod, &observed).await;
            (PodActions::default(), PodSyncResult { changed, ..Default::default() })
        } else {
            let mut actions = plan::compute_pod_actions(&PlanInput {
                pod,
                observed: &observed,
                backoff: &self.backoff,
                probes: &probes,
                volumes_ready,
                now,
            });
            crate::pods::ephemeral::add_ephemeral_starts(pod, &observed, &mut actions);
            tracing::debug!(?actions, "computed pod actions");
            self.record_back_off_events(pod, &actions);
            let result = kuberuntime.sync_pod(pod, &observed, &actions, &mut self.backoff).await;
            (actions, result)
        };
        for (name, outcome) in &result.containers {
            match outcome {
                None => self.sync_errors.remove(name),
                Some(waiting) => self.sync_errors.insert(name.clone(), waiting.clone()),
            };
        }

        let mut observed = if result.changed { kuberuntime.runtime.observe_pod(&uid).await? } else { observed };
        fill_termination_messages(&self.ctx, pod, &mut observed, &mut self.termination_messages);
        // Containers started just now get their probe workers.
        self.prober.sync(pod, &observed, &kuberuntime.host_ips);
        let probes = self.prober.results();
        let mut waiting = self.sync_errors.clone();
        waiting.extend(actions.waiting.clone());
        let mut status = compute_pod_status(&StatusInput {
            pod,
            observed: &observed,
            waiting: &waiting,
            previous: self.last_status.as_ref(),
            start_time: self.start_time,
            host_ips: &kuberuntime.host_ips,
            runtime_name: &self.ctx.runtime_name,
            probes: &probes,
            now: SystemTime::now(),
        });
        status.ephemeral_container_statuses =
            crate::pods::ephemeral::ephemeral_container_statuses(pod, &observed, &waiting, &self.ctx.runtime_name);
        if self.deadline_exceeded {
            deadline::fail(&mut status);
        }
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
        Ok(SyncOutcome { resync_after, failed: result.failed() || volumes_timed_out })
    }

    /// The status of a pod whose containers are being stopped, with the latest probe results; nothing is started.
    async fn publish_terminating_status(&mut self, pod: &Arc<Pod>) {
        let uid = spec::uid(pod);
        let Ok(mut observed) = self.ctx.kuberuntime.runtime.observe_pod(uid).await else { return };
        fill_termination_messages(&self.ctx, pod, &mut observed, &mut self.termination_messages);
        let probes = self.prober.results();
        let mut status = compute_pod_status(&StatusInput {
            pod,
            observed: &observed,
            waiting: &self.sync_errors,
            previous: self.last_status.as_ref(),
            start_time: self.start_time,
            host_ips: &self.ctx.kuberuntime.host_ips,
            runtime_name: &self.ctx.runtime_name,
            probes: &probes,
            now: SystemTime::now(),
        });
        if self.deadline_exceeded {
            deadline::fail(&mut status);
        }
        if self.last_status.as_ref() != Some(&status) {
            self.ctx.store.set_status(uid, status.clone());
            self.last_status = Some(status);
        }
    }

    fn record_back_off_events(&self, pod: &Pod, actions: &PodActions) {
        let events = &self.ctx.kuberuntime.events;
        for (name, waiting) in &actions.waiting {
            let init = spec::init_containers(pod).iter().any(|c| &c.name == name);
            let at = Some((name.as_str(), init));
            if waiting.reason == plan::REASON_CRASH_LOOP_BACK_OFF {
                let message = format!("Back-off restarting failed container {name} in pod {}", spec::format_pod(pod));
                events.record(pod, at, EventType::Warning, ev::BACK_OFF_START_CONTAINER, message);
            } else if waiting.reason == plan::REASON_IMAGE_PULL_BACK_OFF {
                events.record(pod, at, EventType::Normal, ev::BACK_OFF_PULL_IMAGE, waiting.message.clone());
                let message = format!("Error: {}", waiting.reason);
                events.record(pod, at, EventType::Warning, ev::FAILED_TO_PULL_IMAGE, message);
            }
        }
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
            self.ctx.store.record_start(spec::uid(pod), record);
        }
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

    #[test]
    fn a_panicking_worker_waits_longer_each_time_and_starts_afresh_after_a_long_run() {
        let mut b = PanicBackOff::default();
        let short = Duration::from_millis(10);
        let waits: Vec<u64> = (0..8).map(|_| b.after(short).as_secs()).collect();
        assert_eq!(waits, [1, 2, 4, 8, 16, 32, 60, 60]);
        assert_eq!(b.after(PANIC_BACK_OFF_MAX), PANIC_BACK_OFF_INITIAL);
    }

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

    #[test]
    fn panic_payloads_read_as_text() {
        let caught = std::panic::catch_unwind(|| panic!("boom {}", 1)).unwrap_err();
        assert_eq!(panic_message(caught.as_ref()), "boom 1");
        let caught = std::panic::catch_unwind(|| std::panic::panic_any(7)).unwrap_err();
        assert_eq!(panic_message(caught.as_ref()), "(no message)");
    }
}
