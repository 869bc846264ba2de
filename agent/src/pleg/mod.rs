//! The pod lifecycle event generator, kubelet's generic PLEG (`pkg/kubelet/pleg/generic.go`): relists the runtime
//! every second and, for the pods whose sandboxes or containers changed since the last relist, observes them in
//! full and puts the observation in the pod cache. Pods unchanged cost no status call. A pod worker that just acted
//! on its pod asks for that one pod to be observed at once, so a container it started shows as running without
//! waiting for the next relist.
//!
//! With the `EventedPLEG` feature gate (kubelet's `pkg/kubelet/pleg/evented.go`) the runtime's `GetContainerEvents`
//! stream drives the cache instead: each event has its pod observed at once, the relist runs every 5 minutes as a
//! safety net, and the cache's global time moves on every 5 seconds. A runtime whose stream fails 5 times (one
//! without the call, such as containerd before 1.7, fails at once) gets the one-second relist back for good, as
//! kubelet falls back to its generic PLEG.

pub mod cache;

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use tokio::sync::mpsc;
use tokio::time::Instant;

pub use cache::{PodCache, PodCacheEntry};

use crate::runtime::{ContainerRunState, ContainerSummary, ObservedPod, Runtime, SandboxRecord};

/// kubelet's `genericPlegRelistPeriod`.
pub const RELIST_PERIOD: Duration = Duration::from_secs(1);
/// kubelet's `genericPlegRelistThreshold`: a PLEG that has not relisted for this long makes the node unhealthy.
pub const RELIST_THRESHOLD: Duration = Duration::from_secs(180);
/// kubelet's `eventedPlegRelistPeriod`: with the event stream the relist is only a safety net.
pub const EVENTED_RELIST_PERIOD: Duration = Duration::from_secs(300);
/// kubelet's `eventedPlegRelistThreshold`.
pub const EVENTED_RELIST_THRESHOLD: Duration = Duration::from_secs(600);
/// kubelet's `eventedPlegMaxStreamRetries`: failed attempts at the event stream before falling back to relisting.
pub const EVENTED_MAX_STREAM_RETRIES: u32 = 5;
/// kubelet's `globalCacheUpdatePeriod`: how often the evented PLEG moves the cache's global time on, so a pod
/// worker waiting for an entry newer than its last sync is not held until the next relist.
pub const GLOBAL_CACHE_UPDATE_PERIOD: Duration = Duration::from_secs(5);

/// The runtime's container events, as the UIDs of the pods they concern; the stream ends with the error that broke
/// it, or just ends.
pub type ContainerEvents = futures::stream::BoxStream<'static, Result<String, String>>;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PlegEvent {
    /// A relist finished; these pod UIDs have sandboxes or containers in the runtime.
    Relisted(BTreeSet<String>),
}

/// What a relist sees of one pod: (id, state) of every sandbox and container.
type PodFingerprint = BTreeSet<(String, &'static str)>;

/// What the PLEG reads of the runtime: the two list calls of a relist, and the status calls of one pod.
pub trait PodObserver: Send + Sync + 'static {
    fn list(&self) -> impl Future<Output = Result<(Vec<SandboxRecord>, Vec<ContainerSummary>), String>> + Send;
    fn observe_pod(&self, uid: &str) -> impl Future<Output = Result<ObservedPod, String>> + Send;
    /// `GetContainerEvents`.
    fn container_events(&self) -> impl Future<Output = Result<ContainerEvents, String>> + Send;
}

impl PodObserver for Runtime {
    async fn list(&self) -> Result<(Vec<SandboxRecord>, Vec<ContainerSummary>), String> {
        let (sandboxes, containers) = tokio::join!(self.list_pod_sandboxes(None), self.list_containers(None));
        Ok((sandboxes.map_err(|e| e.to_string())?, containers.map_err(|e| e.to_string())?))
    }

    async fn observe_pod(&self, uid: &str) -> Result<ObservedPod, String> {
        Runtime::observe_pod(self, uid).await.map_err(|e| e.to_string())
    }

    async fn container_events(&self) -> Result<ContainerEvents, String> {
        use futures::StreamExt;
        let events = Runtime::container_events(self).await.map_err(|e| e.to_string())?;
        Ok(events.map(|e| e.map_err(|e| e.to_string())).boxed())
    }
}

#[derive(Clone, Default)]
pub struct PlegHealth {
    last_relist_unix_ms: Arc<AtomicU64>,
    /// The relist threshold in force (0: `RELIST_THRESHOLD`); longer while the event stream drives the cache.
    threshold_ms: Arc<AtomicU64>,
    pub metrics: Arc<PlegMetrics>,
}

/// Prometheus' `DefBuckets`, which kubelet's PLEG histograms use (pkg/kubelet/metrics/metrics.go).
pub const DEF_BUCKETS: [f64; 11] = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

/// What kubelet's generic PLEG reports of each relist (`kubelet_pleg_relist_duration_seconds`,
/// `kubelet_pleg_relist_interval_seconds`) and of what it saw (`kubelet_running_pods`,
/// `kubelet_running_containers`, set in `updateRunningPodAndContainerMetrics`).
#[derive(Debug)]
pub struct PlegMetrics {
    pub relist_duration: Histogram,
    pub relist_interval: Histogram,
    pub running_pods: Gauge,
    pub running_containers: Family<[(&'static str, &'static str); 1], Gauge>,
}

impl Default for PlegMetrics {
    fn default() -> Self {
        Self {
            relist_duration: Histogram::new(DEF_BUCKETS),
            relist_interval: Histogram::new(DEF_BUCKETS),
            running_pods: Gauge::default(),
            running_containers: Family::default(),
        }
    }
}

impl PlegMetrics {
    /// kubelet's `updateRunningPodAndContainerMetrics`: pods with a ready sandbox, containers by state. A state no
    /// container is in any more goes to 0 rather than keeping its last count.
    fn update_running(&self, sandboxes: &[SandboxRecord], containers: &[ContainerSummary]) {
        let running: BTreeSet<&str> = sandboxes.iter().filter(|s| s.ready).map(|s| s.pod_uid.as_str()).collect();
        self.running_pods.set(running.len().try_into().unwrap_or(i64::MAX));
        let mut by_state: BTreeMap<&'static str, i64> = BTreeMap::new();
        for c in containers {
            *by_state.entry(state_name(c.state)).or_default() += 1;
        }
        for state in ["created", "running", "exited", "unknown"] {
            let labels = [("container_state", state)];
            match by_state.get(state) {
                Some(n) => {
                    self.running_containers.get_or_create(&labels).set(*n);
                }
                None => {
                    if let Some(g) = self.running_containers.get(&labels) {
                        g.set(0);
                    }
                }
            }
        }
    }
}

impl PlegHealth {
    fn mark(&self) {
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_millis() as u64;
        self.last_relist_unix_ms.store(now, Ordering::Relaxed);
    }

    /// When the last relist succeeded, in seconds since the epoch (kubelet's `kubelet_pleg_last_seen_seconds`).
    pub fn last_seen_seconds(&self) -> Option<f64> {
        let last = self.last_relist_unix_ms.load(Ordering::Relaxed);
        (last != 0).then(|| last as f64 / 1e3)
    }

    /// True while relists keep succeeding within the relist threshold (`RELIST_THRESHOLD`, or
    /// `EVENTED_RELIST_THRESHOLD` while the event stream drives the cache).
    pub fn healthy(&self) -> bool {
        let last = self.last_relist_unix_ms.load(Ordering::Relaxed);
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_millis() as u64;
        last != 0 && now.saturating_sub(last) < self.threshold().as_millis() as u64
    }

    pub fn threshold(&self) -> Duration {
        match self.threshold_ms.load(Ordering::Relaxed) {
            0 => RELIST_THRESHOLD,
            ms => Duration::from_millis(ms),
        }
    }

    fn set_threshold(&self, threshold: Duration) {
        self.threshold_ms.store(threshold.as_millis().try_into().unwrap_or(u64::MAX), Ordering::Relaxed);
    }
}

/// Asks the PLEG to observe one pod now.
#[derive(Clone)]
pub struct PodRefresher {
    tx: mpsc::UnboundedSender<String>,
}

impl PodRefresher {
    pub fn refresh(&self, uid: &str) {
        // A PLEG that is gone ends the agent; the worker then waits for nothing that matters.
        let _ = self.tx.send(uid.to_owned());
    }

    /// A refresher and the receiving end of its requests, for tests of what asks.
    pub fn channel() -> (Self, mpsc::UnboundedReceiver<String>) {
        let (tx, rx) = mpsc::unbounded_channel();
        (Self { tx }, rx)
    }
}

pub struct Pleg<R: PodObserver = Runtime> {
    runtime: Arc<R>,
    cache: PodCache,
    health: PlegHealth,
    previous: BTreeMap<String, PodFingerprint>,
    /// When the last successful relist began (kubelet's `relistTime`).
    last_relist: Option<Instant>,
    refresh_tx: mpsc::UnboundedSender<String>,
    refresh_rx: mpsc::UnboundedReceiver<String>,
    /// The `EventedPLEG` feature gate.
    evented: bool,
}

impl<R: PodObserver> Pleg<R> {
    pub fn new(runtime: R, cache: PodCache) -> Self {
        let (refresh_tx, refresh_rx) = mpsc::unbounded_channel();
        Self {
            runtime: Arc::new(runtime),
            cache,
            health: PlegHealth::default(),
            previous: BTreeMap::new(),
            last_relist: None,
            refresh_tx,
            refresh_rx,
            evented: false,
        }
    }

    /// With the `EventedPLEG` feature gate: the runtime's container events drive the cache where it has them.
    pub fn evented(mut self, evented: bool) -> Self {
        self.evented = evented;
        self
    }

    pub fn health(&self) -> PlegHealth {
        self.health.clone()
    }

    pub fn refresher(&self) -> PodRefresher {
        PodRefresher { tx: self.refresh_tx.clone() }
    }

    pub async fn run(mut self, events: mpsc::UnboundedSender<PlegEvent>) {
        let mut evented = self.evented;
        let mut stream: Option<ContainerEvents> = None;
        // As kubelet's `numAttempts`: every failed attempt or broken stream counts, and the count never resets.
        let mut failed_attempts = 0;
        let mut tick = relist_ticker(if evented { EVENTED_RELIST_PERIOD } else { RELIST_PERIOD });
        let mut global_time = relist_ticker(GLOBAL_CACHE_UPDATE_PERIOD);
        if evented {
            self.health.set_threshold(EVENTED_RELIST_THRESHOLD);
        } else {
            tracing::info!("the PLEG relists every {RELIST_PERIOD:?} (EventedPLEG off)");
        }
        loop {
            if evented && stream.is_none() {
                if failed_attempts >= EVENTED_MAX_STREAM_RETRIES {
                    tracing::warn!(
                        failed_attempts,
                        "EventedPLEG: no container events from the runtime; falling back to relisting every \
                         {RELIST_PERIOD:?}"
                    );
                    evented = false;
                    self.health.set_threshold(RELIST_THRESHOLD);
                    tick = relist_ticker(RELIST_PERIOD);
                } else {
                    match self.runtime.container_events().await {
                        Ok(s) => {
                            tracing::info!(
                                "EventedPLEG: container events from the runtime drive the pod cache; relisting \
                                 every {EVENTED_RELIST_PERIOD:?}"
                            );
                            stream = Some(s);
                        }
                        Err(e) => {
                            failed_attempts += 1;
                            tracing::info!(error = %e, "EventedPLEG: failed to get container events, retrying");
                            // kubelet forces a relist after each failed attempt.
                            if !self.relist_and_report(&events).await {
                                return;
                            }
                            continue;
                        }
                    }
                }
            }
            tokio::select! {
                biased;
                Some(uid) = self.refresh_rx.recv() => {
                    let mut uids = BTreeSet::from([uid]);
                    while let Ok(uid) = self.refresh_rx.try_recv() {
                        uids.insert(uid);
                    }
                    self.refresh(uids).await;
                }
                event = next_event(&mut stream) => match event {
                    Some(Ok(uid)) => self.refresh(BTreeSet::from([uid])).await,
                    broken => {
                        failed_attempts += 1;
                        let error = broken.and_then(Result::err).unwrap_or_else(|| "the stream ended".into());
                        tracing::info!(%error, "EventedPLEG: container events broke off, retrying");
                        stream = None;
                        if !self.relist_and_report(&events).await {
                            return;
                        }
                    }
                },
                _ = global_time.tick(), if evented => self.cache.update_time(Instant::now()),
                _ = tick.tick() => {
                    if !self.relist_and_report(&events).await {
                        return;
                    }
                }
            }
        }
    }

    /// A relist, its health mark and its event. False once nobody listens any more.
    async fn relist_and_report(&mut self, events: &mpsc::UnboundedSender<PlegEvent>) -> bool {
        match self.relist().await {
            Ok(uids) => {
                self.health.mark();
                events.send(PlegEvent::Relisted(uids)).is_ok()
            }
            Err(e) => {
                tracing::warn!(error = %e, "PLEG relist failed");
                true
            }
        }
    }

    /// kubelet's `Relist`: lists everything, observes the pods that changed, deletes the entries of pods gone, and
    /// moves the cache's global timestamp on. Returns the UIDs the runtime holds.
    async fn relist(&mut self) -> Result<BTreeSet<String>, String> {
        let at = Instant::now();
        let result = self.relist_at(at).await;
        self.health.metrics.relist_duration.observe(at.elapsed().as_secs_f64());
        result
    }

    async fn relist_at(&mut self, at: Instant) -> Result<BTreeSet<String>, String> {
        if let Some(last) = self.last_relist {
            self.health.metrics.relist_interval.observe(at.duration_since(last).as_secs_f64());
        }
        let (sandboxes, containers) = self.runtime.list().await?;
        self.last_relist = Some(at);
        self.health.metrics.update_running(&sandboxes, &containers);
        let current = fingerprints(&sandboxes, &containers);
        let changed = diff(&self.previous, &current);
        let (gone, changed): (Vec<String>, Vec<String>) =
            changed.into_iter().partition(|uid| !current.contains_key(uid));
        for uid in &gone {
            self.cache.delete(uid);
        }
        let uids: BTreeSet<String> = current.keys().cloned().collect();
        self.previous = current;
        for (uid, ok) in self.observe(changed, at).await {
            if !ok {
                // kubelet's `podsToReinspect`: the next relist observes it again.
                self.previous.remove(&uid);
            }
        }
        self.cache.update_time(at);
        Ok(uids)
    }

    /// Observes the given pods now, as a worker that acted on them asked.
    async fn refresh(&mut self, uids: BTreeSet<String>) {
        let at = Instant::now();
        let runtime = self.runtime.clone();
        let observed = futures::future::join_all(uids.into_iter().map(|uid| {
            let runtime = runtime.clone();
            async move {
                let pod = runtime.observe_pod(&uid).await;
                (uid, pod)
            }
        }))
        .await;
        for (uid, pod) in observed {
            match &pod {
                // What the next relist compares with: a pod with nothing left has an empty fingerprint, so that
                // relist sees it gone and deletes its entry.
                Ok(p) => {
                    self.previous.insert(uid.clone(), fingerprint_of(p));
                }
                Err(e) => tracing::warn!(uid, error = %e, "observing pod failed"),
            }
            self.cache.set(&uid, pod, at);
        }
    }

    async fn observe(&self, uids: Vec<String>, at: Instant) -> Vec<(String, bool)> {
        let observed = futures::future::join_all(uids.into_iter().map(|uid| {
            let runtime = self.runtime.clone();
            async move {
                let pod = runtime.observe_pod(&uid).await;
                (uid, pod)
            }
        }))
        .await;
        observed
            .into_iter()
            .map(|(uid, pod)| {
                let ok = pod.is_ok();
                if let Err(e) = &pod {
                    tracing::warn!(uid, error = %e, "observing pod failed");
                }
                self.cache.set(&uid, pod, at);
                (uid, ok)
            })
            .collect()
    }
}

fn relist_ticker(period: Duration) -> tokio::time::Interval {
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick
}

/// The next event of the stream; with no stream, never.
async fn next_event(stream: &mut Option<ContainerEvents>) -> Option<Result<String, String>> {
    use futures::StreamExt;
    match stream {
        Some(s) => s.next().await,
        None => std::future::pending().await,
    }
}

fn state_name(state: ContainerRunState) -> &'static str {
    match state {
        ContainerRunState::Created => "created",
        ContainerRunState::Running => "running",
        ContainerRunState::Exited => "exited",
        ContainerRunState::Unknown => "unknown",
    }
}

fn sandbox_state(ready: bool) -> &'static str {
    if ready {
        "ready"
    } else {
        "notready"
    }
}

fn fingerprints(sandboxes: &[SandboxRecord], containers: &[ContainerSummary]) -> BTreeMap<String, PodFingerprint> {
    let mut current: BTreeMap<String, PodFingerprint> = BTreeMap::new();
    for s in sandboxes {
        current.entry(s.pod_uid.clone()).or_default().insert((s.id.clone(), sandbox_state(s.ready)));
    }
    for c in containers {
        current.entry(c.pod_uid.clone()).or_default().insert((c.id.clone(), state_name(c.state)));
    }
    current
}

fn fingerprint_of(pod: &ObservedPod) -> PodFingerprint {
    let sandboxes = pod.sandboxes.iter().map(|s| (s.id.clone(), sandbox_state(s.ready)));
    sandboxes.chain(pod.containers.iter().map(|c| (c.id.clone(), state_name(c.state)))).collect()
}

/// Pod UIDs whose fingerprint differs between two relists, including pods that appeared or vanished.
fn diff(previous: &BTreeMap<String, PodFingerprint>, current: &BTreeMap<String, PodFingerprint>) -> Vec<String> {
    let uids: BTreeSet<&String> = previous.keys().chain(current.keys()).collect();
    uids.into_iter().filter(|uid| previous.get(*uid) != current.get(*uid)).cloned().collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    fn fp(entries: &[(&str, &'static str)]) -> PodFingerprint {
        entries.iter().map(|(a, b)| (a.to_string(), *b)).collect()
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

    /// A runtime of lists set by the test, counting the list and status calls. Its container events come from
    /// `events` while the test has put a receiver there; without one it answers as a runtime without the call.
    #[derive(Default)]
    struct FakeRuntime {
        state: Mutex<(Vec<SandboxRecord>, Vec<ContainerSummary>)>,
        observed: Mutex<Vec<String>>,
        fail: Mutex<BTreeSet<String>>,
        lists: std::sync::atomic::AtomicU32,
        events: Mutex<Option<mpsc::UnboundedReceiver<Result<String, String>>>>,
        event_attempts: std::sync::atomic::AtomicU32,
    }

    impl PodObserver for Arc<FakeRuntime> {
        async fn list(&self) -> Result<(Vec<SandboxRecord>, Vec<ContainerSummary>), String> {
            self.lists.fetch_add(1, Ordering::Relaxed);
            Ok(self.state.lock().unwrap().clone())
        }

        async fn container_events(&self) -> Result<ContainerEvents, String> {
            use futures::StreamExt;
            self.event_attempts.fetch_add(1, Ordering::Relaxed);
            let Some(rx) = self.events.lock().unwrap().take() else {
                return Err("rpc error: code = Unimplemented desc = unknown method GetContainerEvents".into());
            };
            Ok(futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|e| (e, rx)) }).boxed())
        }

        async fn observe_pod(&self, uid: &str) -> Result<ObservedPod, String> {
            self.observed.lock().unwrap().push(uid.to_owned());
            if self.fail.lock().unwrap().contains(uid) {
                return Err("rpc error: unavailable".into());
            }
            let (sandboxes, containers) = self.state.lock().unwrap().clone();
            let sandboxes = sandboxes.into_iter().filter(|s| s.pod_uid == uid).collect();
            let containers = containers
                .into_iter()
                .filter(|c| c.pod_uid == uid)
                .map(|c| crate::runtime::ContainerRecord {
                    id: c.id,
                    sandbox_id: c.sandbox_id,
                    pod_uid: c.pod_uid,
                    name: "app".into(),
                    restart_count: 0,
                    spec_hash: String::new(),
                    state: c.state,
                    created_at: SystemTime::UNIX_EPOCH,
                    started_at: None,
                    finished_at: None,
                    exit_code: 0,
                    reason: String::new(),
                    message: String::new(),
                    image: String::new(),
                    image_ref: String::new(),
                    termination_grace_period: None,
                })
                .collect();
            Ok(ObservedPod { sandboxes, containers })
        }
    }

    fn sandbox(uid: &str, id: &str) -> SandboxRecord {
        SandboxRecord {
            id: id.into(),
            pod_uid: uid.into(),
            namespace: "ns".into(),
            name: uid.into(),
            attempt: 0,
            ready: true,
            created_at: SystemTime::UNIX_EPOCH,
            ips: vec![],
        }
    }

    fn container(uid: &str, id: &str, state: ContainerRunState) -> ContainerSummary {
        ContainerSummary { id: id.into(), sandbox_id: format!("s-{uid}"), pod_uid: uid.into(), state }
    }

    fn take_observed(rt: &FakeRuntime) -> Vec<String> {
        let mut v = std::mem::take(&mut *rt.observed.lock().unwrap());
        v.sort();
        v
    }

    #[tokio::test(start_paused = true)]
    async fn a_relist_observes_only_the_pods_that_changed_and_drops_the_pods_gone() {
        let rt = Arc::new(FakeRuntime::default());
        *rt.state.lock().unwrap() = (
            vec![sandbox("a", "s-a"), sandbox("b", "s-b")],
            vec![container("a", "c-a", ContainerRunState::Running), container("b", "c-b", ContainerRunState::Running)],
        );
        let cache = PodCache::new();
        let mut pleg = Pleg::new(rt.clone(), cache.clone());
        let uids = pleg.relist().await.unwrap();
        assert_eq!(uids, BTreeSet::from(["a".to_string(), "b".to_string()]));
        assert_eq!(take_observed(&rt), ["a", "b"], "the first relist observes every pod");
        assert!(cache.get("a").is_some() && cache.get("b").is_some());

        tokio::time::advance(RELIST_PERIOD).await;
        pleg.relist().await.unwrap();
        assert!(take_observed(&rt).is_empty(), "nothing changed: no status call");

        // b's container exits; a's pod goes entirely.
        *rt.state.lock().unwrap() = (vec![sandbox("b", "s-b")], vec![container("b", "c-b", ContainerRunState::Exited)]);
        let before = Instant::now();
        tokio::time::advance(RELIST_PERIOD).await;
        let uids = pleg.relist().await.unwrap();
        assert_eq!(uids, BTreeSet::from(["b".to_string()]));
        assert_eq!(take_observed(&rt), ["b"], "only the pod that changed is observed");
        assert!(cache.get("a").is_none(), "the entry of a pod gone from the runtime is deleted");
        let b = cache.get_newer_than("b", Some(before)).await;
        assert_eq!(b.pod.unwrap().containers[0].state, ContainerRunState::Exited);
        assert!(cache.uids() == ["b"]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_pod_that_could_not_be_observed_is_observed_again_at_the_next_relist() {
        let rt = Arc::new(FakeRuntime::default());
        *rt.state.lock().unwrap() = (vec![sandbox("a", "s-a")], vec![]);
        rt.fail.lock().unwrap().insert("a".into());
        let cache = PodCache::new();
        let mut pleg = Pleg::new(rt.clone(), cache.clone());
        pleg.relist().await.unwrap();
        assert!(cache.get("a").unwrap().pod.is_err(), "the error is the pod's entry");
        rt.fail.lock().unwrap().clear();
        tokio::time::advance(RELIST_PERIOD).await;
        pleg.relist().await.unwrap();
        assert_eq!(take_observed(&rt), ["a", "a"]);
        assert!(cache.get("a").unwrap().pod.is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn a_refresh_observes_one_pod_at_once_and_the_next_relist_does_not_again() {
        let rt = Arc::new(FakeRuntime::default());
        let cache = PodCache::new();
        let mut pleg = Pleg::new(rt.clone(), cache.clone());
        pleg.relist().await.unwrap();
        let synced = Instant::now();
        tokio::time::advance(Duration::from_millis(10)).await;
        *rt.state.lock().unwrap() =
            (vec![sandbox("a", "s-a")], vec![container("a", "c-a", ContainerRunState::Running)]);
        pleg.refresh(BTreeSet::from(["a".to_string()])).await;
        assert_eq!(take_observed(&rt), ["a"]);
        let e = cache.get_newer_than("a", Some(synced)).await;
        assert_eq!(e.pod.unwrap().containers[0].state, ContainerRunState::Running);
        tokio::time::advance(RELIST_PERIOD).await;
        pleg.relist().await.unwrap();
        assert!(take_observed(&rt).is_empty(), "the refresh's view is the relist's previous one");

        // A refresh of a pod the runtime holds nothing of leaves an entry the next relist deletes.
        pleg.refresh(BTreeSet::from(["ghost".to_string()])).await;
        assert!(cache.get("ghost").is_some());
        tokio::time::advance(RELIST_PERIOD).await;
        pleg.relist().await.unwrap();
        assert!(cache.get("ghost").is_none());
    }

    fn lists(rt: &FakeRuntime) -> u32 {
        rt.lists.load(Ordering::Relaxed)
    }

    /// Lets the spawned PLEG run what is ready at the paused clock's current time.
    async fn settle() {
        for _ in 0..20 {
            tokio::task::yield_now().await;
        }
    }

    #[tokio::test(start_paused = true)]
    async fn with_evented_pleg_a_container_event_has_its_pod_observed_at_once_and_the_relist_waits_five_minutes() {
        let rt = Arc::new(FakeRuntime::default());
        let (event_tx, event_rx) = mpsc::unbounded_channel();
        *rt.events.lock().unwrap() = Some(event_rx);
        let cache = PodCache::new();
        let pleg = Pleg::new(rt.clone(), cache.clone()).evented(true);
        let health = pleg.health();
        let (events, _relisted) = mpsc::unbounded_channel();
        let task = tokio::spawn(pleg.run(events));
        settle().await;
        assert_eq!(lists(&rt), 1, "one relist at the start");
        assert_eq!(health.threshold(), EVENTED_RELIST_THRESHOLD);

        let before = Instant::now();
        tokio::time::advance(Duration::from_millis(10)).await;
        *rt.state.lock().unwrap() =
            (vec![sandbox("a", "s-a")], vec![container("a", "c-a", ContainerRunState::Running)]);
        event_tx.send(Ok("a".to_owned())).unwrap();
        settle().await;
        assert_eq!(take_observed(&rt), ["a"], "the event's pod is observed at once");
        let e = cache.get_newer_than("a", Some(before)).await;
        assert_eq!(e.pod.unwrap().containers[0].state, ContainerRunState::Running);

        // No relist for minutes: the events drive the cache. Its global time still moves on every 5 s.
        let waiting_since = Instant::now();
        tokio::time::advance(Duration::from_secs(60)).await;
        settle().await;
        assert_eq!(lists(&rt), 1, "no relist within the evented relist period");
        let unchanged = tokio::time::timeout(Duration::ZERO, cache.get_newer_than("b", Some(waiting_since))).await;
        assert!(unchanged.is_ok(), "a worker waiting for a newer entry is not held until the next relist");
        tokio::time::advance(EVENTED_RELIST_PERIOD).await;
        settle().await;
        assert_eq!(lists(&rt), 2, "the safety-net relist");
        assert_eq!(rt.event_attempts.load(Ordering::Relaxed), 1);
        task.abort();
    }

    #[tokio::test(start_paused = true)]
    async fn a_runtime_without_container_events_falls_back_to_relisting_every_second() {
        let rt = Arc::new(FakeRuntime::default());
        let pleg = Pleg::new(rt.clone(), PodCache::new()).evented(true);
        let health = pleg.health();
        let (events, _relisted) = mpsc::unbounded_channel();
        let task = tokio::spawn(pleg.run(events));
        settle().await;
        assert_eq!(rt.event_attempts.load(Ordering::Relaxed), EVENTED_MAX_STREAM_RETRIES, "kubelet's retries");
        assert_eq!(health.threshold(), RELIST_THRESHOLD);
        let after_attempts = lists(&rt);
        assert!(after_attempts >= EVENTED_MAX_STREAM_RETRIES, "a relist after each failed attempt: {after_attempts}");
        for _ in 0..3 {
            tokio::time::advance(RELIST_PERIOD).await;
            settle().await;
        }
        assert!(lists(&rt) >= after_attempts + 3, "relisting every second: {} lists", lists(&rt));
        assert_eq!(rt.event_attempts.load(Ordering::Relaxed), EVENTED_MAX_STREAM_RETRIES, "no more attempts");
        task.abort();
    }

    #[tokio::test(start_paused = true)]
    async fn a_broken_event_stream_is_opened_again_after_a_relist() {
        let rt = Arc::new(FakeRuntime::default());
        let (event_tx, event_rx) = mpsc::unbounded_channel();
        *rt.events.lock().unwrap() = Some(event_rx);
        let pleg = Pleg::new(rt.clone(), PodCache::new()).evented(true);
        let (events, _relisted) = mpsc::unbounded_channel();
        let task = tokio::spawn(pleg.run(events));
        settle().await;
        let (event_tx2, event_rx2) = mpsc::unbounded_channel();
        *rt.events.lock().unwrap() = Some(event_rx2);
        event_tx.send(Err("rpc error: code = Unavailable".to_owned())).unwrap();
        settle().await;
        assert_eq!(rt.event_attempts.load(Ordering::Relaxed), 2, "the stream is opened again");
        assert_eq!(lists(&rt), 2, "with a relist for what the broken stream may have missed");
        tokio::time::advance(Duration::from_millis(10)).await;
        event_tx2.send(Ok("a".to_owned())).unwrap();
        settle().await;
        assert_eq!(take_observed(&rt), ["a"]);
        task.abort();
    }

    #[tokio::test(start_paused = true)]
    async fn without_the_feature_gate_no_event_stream_is_asked_for() {
        let rt = Arc::new(FakeRuntime::default());
        let pleg = Pleg::new(rt.clone(), PodCache::new());
        let health = pleg.health();
        let (events, _relisted) = mpsc::unbounded_channel();
        let task = tokio::spawn(pleg.run(events));
        settle().await;
        tokio::time::advance(RELIST_PERIOD).await;
        settle().await;
        assert_eq!((rt.event_attempts.load(Ordering::Relaxed), lists(&rt)), (0, 2));
        assert_eq!(health.threshold(), RELIST_THRESHOLD);
        task.abort();
    }
}
