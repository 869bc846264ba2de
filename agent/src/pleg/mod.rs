//! The pod lifecycle event generator, kubelet's generic PLEG (`pkg/kubelet/pleg/generic.go`): relists the runtime
//! every second and, for the pods whose sandboxes or containers changed since the last relist, observes them in
//! full and puts the observation in the pod cache. Pods unchanged cost no status call. A pod worker that just acted
//! on its pod asks for that one pod to be observed at once (kubelet's evented PLEG updates the cache per pod the same
//! way), so a container it started shows as running without waiting for the next relist.

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
}

impl PodObserver for Runtime {
    async fn list(&self) -> Result<(Vec<SandboxRecord>, Vec<ContainerSummary>), String> {
        let (sandboxes, containers) = tokio::join!(self.list_pod_sandboxes(None), self.list_containers(None));
        Ok((sandboxes.map_err(|e| e.to_string())?, containers.map_err(|e| e.to_string())?))
    }

    async fn observe_pod(&self, uid: &str) -> Result<ObservedPod, String> {
        Runtime::observe_pod(self, uid).await.map_err(|e| e.to_string())
    }
}

#[derive(Clone, Default)]
pub struct PlegHealth {
    last_relist_unix_ms: Arc<AtomicU64>,
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

    /// True while relists keep succeeding within `RELIST_THRESHOLD`.
    pub fn healthy(&self) -> bool {
        let last = self.last_relist_unix_ms.load(Ordering::Relaxed);
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_millis() as u64;
        last != 0 && now.saturating_sub(last) < RELIST_THRESHOLD.as_millis() as u64
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
        }
    }

    pub fn health(&self) -> PlegHealth {
        self.health.clone()
    }

    pub fn refresher(&self) -> PodRefresher {
        PodRefresher { tx: self.refresh_tx.clone() }
    }

    pub async fn run(mut self, events: mpsc::UnboundedSender<PlegEvent>) {
        tracing::info!("no CRI container events on this runtime path: the PLEG relists every {RELIST_PERIOD:?}");
        let mut tick = tokio::time::interval(RELIST_PERIOD);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                biased;
                Some(uid) = self.refresh_rx.recv() => {
                    let mut uids = BTreeSet::from([uid]);
                    while let Ok(uid) = self.refresh_rx.try_recv() {
                        uids.insert(uid);
                    }
                    self.refresh(uids).await;
                }
                _ = tick.tick() => match self.relist().await {
                    Ok(uids) => {
                        self.health.mark();
                        if events.send(PlegEvent::Relisted(uids)).is_err() {
                            return;
                        }
                    }
                    Err(e) => tracing::warn!(error = %e, "PLEG relist failed"),
                },
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

    /// A runtime of lists set by the test, counting the status calls.
    #[derive(Default)]
    struct FakeRuntime {
        state: Mutex<(Vec<SandboxRecord>, Vec<ContainerSummary>)>,
        observed: Mutex<Vec<String>>,
        fail: Mutex<BTreeSet<String>>,
    }

    impl PodObserver for Arc<FakeRuntime> {
        async fn list(&self) -> Result<(Vec<SandboxRecord>, Vec<ContainerSummary>), String> {
            Ok(self.state.lock().unwrap().clone())
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
}
