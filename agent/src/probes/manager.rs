//! The probe workers of one pod, kubelet's prober manager: one task per running container instance and probe,
//! started when the instance is first seen running and stopped when it is no longer. Workers publish results into
//! the pod's [`ProbeResults`] and wake the pod worker when one changes.

use std::collections::HashMap;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use futures::FutureExt;
use k8s_openapi::api::core::v1::{Container, Pod, Probe};
use tokio::sync::{watch, Notify};
use tokio::task::JoinHandle;
use tracing::Instrument;

use crate::probes::handlers::{self, Target};
use crate::probes::metrics::{ProbeTarget, PROBER_METRICS};
use crate::probes::state::{Outcome, ProbeParams, ProbeState};
use crate::probes::{ProbeKind, ProbeResult, ProbeResults};
use crate::pods::events::{EventRecorder, EventType};
use crate::pods::plan::go_duration;
use crate::pods::spec;
use crate::pods::worker::{inject_panic, panic_message, PanicBackOff, WORKER_PANICKED};
use crate::runtime::{ContainerRunState, ObservedPod, Runtime};

/// Event reasons of probes (pkg/kubelet/events).
pub const CONTAINER_UNHEALTHY: &str = "Unhealthy";
pub const CONTAINER_PROBE_WARNING: &str = "ProbeWarning";

struct Worker {
    container_id: String,
    task: JoinHandle<()>,
}

impl Drop for Worker {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The probe workers of one pod and the results they publish.
pub struct Prober {
    runtime: Runtime,
    events: EventRecorder,
    results: Arc<Mutex<ProbeResults>>,
    wake: Arc<Notify>,
    workers: HashMap<(String, ProbeKind), Worker>,
    /// Per container instance: whether its startup probe has passed (true at once without one).
    started: HashMap<String, Arc<watch::Sender<bool>>>,
    /// The pod is being terminated: liveness and startup probes stop, readiness goes on.
    terminating: Arc<AtomicBool>,
    /// The pod last synced, whose probes' metrics go when the workers stop.
    pod: Option<Arc<Pod>>,
}

/// The labels of a probe's metrics.
fn metrics_target(pod: &Pod, container: String, kind: ProbeKind) -> ProbeTarget {
    ProbeTarget {
        namespace: spec::namespace(pod).to_owned(),
        pod: spec::name(pod).to_owned(),
        pod_uid: spec::uid(pod).to_owned(),
        container,
        kind,
    }
}

/// The probes of a container by kind.
pub fn probe_of(container: &Container, kind: ProbeKind) -> Option<&Probe> {
    match kind {
        ProbeKind::Startup => container.startup_probe.as_ref(),
        ProbeKind::Liveness => container.liveness_probe.as_ref(),
        ProbeKind::Readiness => container.readiness_probe.as_ref(),
    }
}

/// The containers that are probed: app containers, and init containers that keep running (sidecars).
pub fn probed_containers(pod: &Pod) -> impl Iterator<Item = (&Container, bool)> {
    let sidecars =
        spec::init_containers(pod).iter().filter(|c| c.restart_policy.as_deref() == Some("Always")).map(|c| (c, true));
    sidecars.chain(spec::spec(pod).containers.iter().map(|c| (c, false)))
}

impl Prober {
    pub fn new(runtime: Runtime, events: EventRecorder, wake: Arc<Notify>) -> Self {
        Self {
            runtime,
            events,
            results: Arc::default(),
            wake,
            workers: HashMap::new(),
            started: HashMap::new(),
            terminating: Arc::default(),
            pod: None,
        }
    }

    /// The latest results, for one sync.
    pub fn results(&self) -> ProbeResults {
        self.results.lock().map(|r| r.clone()).unwrap_or_default()
    }

    /// Starts workers for container instances newly running and stops those of instances no longer running.
    pub fn sync(&mut self, pod: &Arc<Pod>, observed: &ObservedPod, host_ips: &[String]) {
        self.pod = Some(pod.clone());
        let pod_ip = observed
            .latest_sandbox()
            .filter(|s| s.ready)
            .and_then(|s| s.ips.first().cloned())
            .or_else(|| host_ips.first().cloned())
            .unwrap_or_default();
        let mut keep = Vec::new();
        for (container, init) in probed_containers(pod) {
            let Some(running) =
                observed.latest_container(&container.name).filter(|c| c.state == ContainerRunState::Running)
            else {
                continue;
            };
            let started = self
                .started
                .entry(running.id.clone())
                .or_insert_with(|| Arc::new(watch::channel(container.startup_probe.is_none()).0))
                .clone();
            for kind in [ProbeKind::Startup, ProbeKind::Liveness, ProbeKind::Readiness] {
                let Some(probe) = probe_of(container, kind) else { continue };
                let key = (container.name.clone(), kind);
                keep.push(key.clone());
                if self.workers.get(&key).is_some_and(|w| w.container_id == running.id) {
                    continue;
                }
                let params = ProbeParams::of(kind, probe);
                if let Some(initial) = ProbeState::initial(kind) {
                    if let Ok(mut r) = self.results.lock() {
                        r.set(&running.id, kind, initial);
                    }
                }
                let job = ProbeJob {
                    runtime: self.runtime.clone(),
                    events: self.events.clone(),
                    results: self.results.clone(),
                    wake: self.wake.clone(),
                    pod: pod.clone(),
                    container: container.clone(),
                    init,
                    container_id: running.id.clone(),
                    started_at: running.started_at.unwrap_or(running.created_at),
                    pod_ip: pod_ip.clone(),
                    kind,
                    probe: probe.clone(),
                    params,
                    started: started.clone(),
                    terminating: self.terminating.clone(),
                };
                let span = tracing::info_span!("probe", container = %container.name, kind = kind.as_str());
                let task = tokio::spawn(job.run_supervised().instrument(span));
                self.workers.insert(key, Worker { container_id: running.id.clone(), task });
            }
        }
        let gone: Vec<(String, ProbeKind)> = self.workers.keys().filter(|k| !keep.contains(k)).cloned().collect();
        for (container, kind) in gone {
            self.workers.remove(&(container.clone(), kind));
            PROBER_METRICS.forget(&metrics_target(pod, container, kind));
        }
        let live: Vec<&str> = self.workers.values().map(|w| w.container_id.as_str()).collect();
        self.started.retain(|id, _| live.contains(&id.as_str()));
        if let Ok(mut r) = self.results.lock() {
            r.retain_containers(|id| observed.containers.iter().any(|c| c.id == id));
        }
    }

    /// The pod's containers are being stopped: from now on only readiness is probed (kubelet does not restart
    /// what it is stopping).
    pub fn set_terminating(&self) {
        self.terminating.store(true, Ordering::Relaxed);
    }

    /// Stops every worker (the pod is gone).
    pub fn stop(&mut self) {
        for ((container, kind), _) in self.workers.drain() {
            if let Some(pod) = &self.pod {
                PROBER_METRICS.forget(&metrics_target(pod, container, kind));
            }
        }
        self.started.clear();
    }
}

/// The earliest first probe of a container after it is seen running (kubelet's PLEG relist period).
const FIRST_PROBE_DELAY: Duration = Duration::from_secs(1);

#[derive(Clone)]
struct ProbeJob {
    runtime: Runtime,
    events: EventRecorder,
    results: Arc<Mutex<ProbeResults>>,
    wake: Arc<Notify>,
    pod: Arc<Pod>,
    container: Container,
    init: bool,
    container_id: String,
    started_at: SystemTime,
    pod_ip: String,
    kind: ProbeKind,
    probe: Probe,
    params: ProbeParams,
    started: Arc<watch::Sender<bool>>,
    terminating: Arc<AtomicBool>,
}

impl ProbeJob {
    /// Runs the probe worker; a panic in it is logged with the pod, recorded as a warning event on the container,
    /// and a new worker (with fresh thresholds, as for a new container instance) takes over after a back-off.
    async fn run_supervised(self) {
        let mut back_off = PanicBackOff::default();
        loop {
            let began = std::time::Instant::now();
            // The worker's state (its thresholds and ticker) goes with it; the job it was given is not changed.
            let Err(payload) = AssertUnwindSafe(self.clone().run()).catch_unwind().await else { return };
            let wait = back_off.after(began.elapsed());
            let panic = panic_message(payload.as_ref());
            tracing::error!(
                pod = %spec::key(&self.pod),
                container = %self.container.name,
                probe = self.kind.as_str(),
                panic,
                restart_in = ?wait,
                "probe worker panicked"
            );
            let message = format!(
                "{} probe worker panicked ({panic}); restarting it in {}",
                self.kind.title(),
                go_duration(wait)
            );
            let at = Some((self.container.name.as_str(), self.init));
            self.events.record(&self.pod, at, EventType::Warning, WORKER_PANICKED, message);
            tokio::time::sleep(wait).await;
        }
    }

    async fn run(self) {
        let mut state = ProbeState::new(self.kind, self.params);
        // kubelet's prober sees a new container through the status manager, a PLEG relist (1 s) after it started,
        // and probes it on the next tick of its worker: never in the instant the process was exec'd.
        let first = tokio::time::Instant::now() + self.params.period.min(FIRST_PROBE_DELAY);
        let mut ticker = tokio::time::interval_at(first, self.params.period);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut started_rx = self.started.subscribe();
        loop {
            tokio::select! {
                _ = ticker.tick() => {}
                // Once the startup probe passes, the other probes run at once (kubelet's manual trigger).
                Ok(()) = started_rx.changed(), if self.kind != ProbeKind::Startup => {}
            }
            let started = *started_rx.borrow_and_update();
            let deleting = self.pod.metadata.deletion_timestamp.is_some() || self.terminating.load(Ordering::Relaxed);
            if !state.should_probe(self.started_at, SystemTime::now(), started, deleting) {
                continue;
            }
            inject_panic("probe", &self.pod);
            let target = Target { container: &self.container, container_id: &self.container_id, pod_ip: &self.pod_ip };
            let began = Instant::now();
            let out = handlers::run(&self.runtime, &self.probe, target, self.params.timeout).await;
            let labels = metrics_target(&self.pod, self.container.name.clone(), self.kind);
            PROBER_METRICS.observe(&labels, out.outcome, began.elapsed());
            self.record_event(out.outcome, &out.output);
            tracing::debug!(outcome = ?out.outcome, output = %out.output, "probe ran");
            if let Some(result) = state.record(out.outcome) {
                tracing::info!(?result, "probe result changed");
                if let Ok(mut r) = self.results.lock() {
                    r.set(&self.container_id, self.kind, result);
                }
                if self.kind == ProbeKind::Startup && result == ProbeResult::Success {
                    self.started.send_replace(true);
                }
                self.wake.notify_one();
            }
        }
    }

    /// kubelet's prober events: every failed run is `Unhealthy`, a redirect not followed a `ProbeWarning`.
    fn record_event(&self, outcome: Outcome, output: &str) {
        let at = Some((self.container.name.as_str(), self.init));
        let kind = self.kind.title();
        let (reason, message) = match outcome {
            Outcome::Success => return,
            Outcome::Warning => (CONTAINER_PROBE_WARNING, format!("{kind} probe warning: {output}")),
            Outcome::Failure => (CONTAINER_UNHEALTHY, format!("{kind} probe failed: {output}")),
            Outcome::Unknown => (CONTAINER_UNHEALTHY, format!("{kind} probe errored: {output}")),
        };
        self.events.record(&self.pod, at, EventType::Warning, reason, message);
    }
}
