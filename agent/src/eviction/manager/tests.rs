use std::collections::BTreeMap;
use std::sync::Mutex;

use serde_json::json;
use tokio::sync::mpsc;

use super::*;
use crate::eviction::threshold::{parse_threshold_config, ThresholdSettings};
use crate::kubetypes::events::EventMessage;
use crate::kubetypes::kill::PodKillerEnd;
use crate::stats::summary::{ContainerStats, FsStats, NodeStats, PodReference, PodStats};

const GI: u64 = 1 << 30;
const MI: u64 = 1 << 20;

struct FakeObserver {
    observed: Mutex<Observed>,
    /// Each observation is a second later than the last, as fresh stats are.
    clock: Mutex<i64>,
    /// Set: the host notifies memory threshold crossings (cgroup v1), and this stands for the kernel.
    kernel: Mutex<Option<Arc<tokio::sync::Notify>>>,
    memory_reads: std::sync::atomic::AtomicUsize,
}

impl FakeObserver {
    fn new() -> Arc<Self> {
        Arc::new(FakeObserver {
            observed: Mutex::new(Observed::default()),
            clock: Mutex::new(1_700_000_000),
            kernel: Mutex::new(None),
            memory_reads: Default::default(),
        })
    }

    fn set_nodefs_available(&self, available: u64) {
        let mut o = self.observed.lock().unwrap();
        o.summary.node.fs = Some(FsStats {
            available_bytes: Some(available),
            capacity_bytes: Some(100 * GI),
            inodes_free: Some(1_000_000),
            inodes: Some(1_000_000),
            ..Default::default()
        });
    }

    fn set_memory_available(&self, available: u64) {
        let mut o = self.observed.lock().unwrap();
        o.summary.node.memory = Some(MemoryStats {
            available_bytes: Some(available),
            working_set_bytes: Some(4 * GI - available),
            ..Default::default()
        });
    }

    fn set_pods(&self, pods: Vec<PodStats>) {
        self.observed.lock().unwrap().summary.pods = pods;
    }
}

impl Observer for FakeObserver {
    fn observe(&self) -> BoxFuture<'_, Option<Observed>> {
        let mut clock = self.clock.lock().unwrap();
        *clock += 1;
        let time = jiff::Timestamp::from_second(*clock).unwrap().to_string();
        let mut o = self.observed.lock().unwrap().clone();
        o.summary.node = NodeStats {
            fs: o.summary.node.fs.map(|f| FsStats { time: time.clone(), ..f }),
            memory: o.summary.node.memory.map(|m| MemoryStats { time: time.clone(), ..m }),
            ..o.summary.node
        };
        Box::pin(async move { Some(o) })
    }

    fn memory(&self) -> Observations {
        self.memory_reads.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        make_signal_observations(&self.observed.lock().unwrap().summary, None)
    }

    fn memory_crossing(&self, _thresholds: &[Threshold], _node: &MemoryStats) -> Option<BoxFuture<'static, bool>> {
        let kernel = self.kernel.lock().unwrap().clone()?;
        Some(Box::pin(async move {
            kernel.notified().await;
            true
        }))
    }
}

fn pod(name: &str, priority: i32, requests: serde_json::Value, annotations: serde_json::Value) -> Arc<Pod> {
    Arc::new(
        serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": "default", "uid": format!("uid-{name}"), "annotations": annotations},
            "spec": {"priority": priority, "terminationGracePeriodSeconds": 30,
                     "containers": [{"name": "app", "resources": {"requests": requests}}]}
        }))
        .unwrap(),
    )
}

fn disk_stats(name: &str, used: u64) -> PodStats {
    PodStats {
        pod_ref: PodReference { name: name.into(), namespace: "default".into(), uid: format!("uid-{name}") },
        containers: vec![ContainerStats {
            name: "app".into(),
            rootfs: Some(FsStats { used_bytes: Some(used), ..Default::default() }),
            logs: Some(FsStats { used_bytes: Some(0), ..Default::default() }),
            ..Default::default()
        }],
        ephemeral_storage: Some(FsStats { used_bytes: Some(used), ..Default::default() }),
        ..Default::default()
    }
}

/// What the pod manager was asked to do.
type Kills = Arc<Mutex<Vec<(String, Option<i64>, TerminalStatus)>>>;

/// Answers kill requests at once, as the pod manager does once the pod is down, and drops the pod from the active
/// list.
fn answer_kills(end: PodKillerEnd) -> Kills {
    let kills: Kills = Arc::default();
    let seen = kills.clone();
    let PodKillerEnd { mut requests, active } = end;
    tokio::spawn(async move {
        while let Some(r) = requests.recv().await {
            seen.lock().unwrap().push((r.uid.clone(), r.grace_period_override, r.status));
            active.send_modify(|pods| pods.retain(|p| spec::uid(p) != r.uid));
            let _ = r.done.send(());
        }
    });
    kills
}

struct Harness {
    manager: Manager,
    observer: Arc<FakeObserver>,
    kills: Kills,
    events: mpsc::UnboundedReceiver<EventMessage>,
    pressure: watch::Receiver<NodePressure>,
}

fn harness(hard: &[(&str, &str)], pods: Vec<Arc<Pod>>) -> Harness {
    let hard: BTreeMap<String, String> = hard.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    let thresholds = parse_threshold_config(&ThresholdSettings { hard: Some(&hard), ..Default::default() }).unwrap();
    harness_with(EvictionConfig { thresholds, ..Default::default() }, pods)
}

fn harness_with(config: EvictionConfig, pods: Vec<Arc<Pod>>) -> Harness {
    let observer = FakeObserver::new();
    observer.set_nodefs_available(50 * GI);
    observer.set_memory_available(2 * GI);
    let (killer, end) = PodKiller::channel();
    let _ = end.active.send(pods);
    let kills = answer_kills(end);
    let (events_tx, events) = mpsc::unbounded_channel();
    let (pressure_tx, pressure) = watch::channel(NodePressure::default());
    let manager = Manager::new(config, observer.clone(), killer, EventRecorder::new(events_tx), pressure_tx);
    Harness { manager, observer, kills, events, pressure }
}

fn evicted_names(kills: &Kills) -> Vec<String> {
    kills.lock().unwrap().iter().map(|(uid, ..)| uid.trim_start_matches("uid-").to_owned()).collect()
}

#[tokio::test]
async fn disk_pressure_sets_the_condition_and_it_holds_for_the_transition_period() {
    let mut h = harness(&[("nodefs.available", "10Gi")], vec![]);
    let t0 = Instant::now();
    assert_eq!(h.manager.synchronize(t0).await, None);
    assert!(h.pressure.borrow().conditions.is_empty());
    h.observer.set_nodefs_available(5 * GI);
    h.manager.synchronize(t0 + Duration::from_secs(10)).await;
    assert_eq!(h.pressure.borrow().conditions, vec![NodeConditionType::DiskPressure]);
    // The pressure is gone, but the condition stays for the 5 minutes kubelet waits before clearing it.
    h.observer.set_nodefs_available(50 * GI);
    h.manager.synchronize(t0 + Duration::from_secs(20)).await;
    assert!(h.pressure.borrow().disk(), "still within the transition period");
    h.manager.synchronize(t0 + Duration::from_secs(10 + 299)).await;
    assert!(h.pressure.borrow().disk());
    h.manager.synchronize(t0 + Duration::from_secs(10 + 300)).await;
    assert!(!h.pressure.borrow().disk(), "cleared once the transition period passed");
}

#[tokio::test]
async fn one_pod_is_evicted_per_round_in_kubelets_order_with_its_status_and_event() {
    let big = pod("big", 0, json!({}), json!({}));
    let small = pod("small", 0, json!({}), json!({}));
    let within = pod("within-request", 0, json!({"ephemeral-storage": "10Gi"}), json!({}));
    let mut h = harness(&[("nodefs.available", "10Gi")], vec![within.clone(), small.clone(), big.clone()]);
    h.observer.set_pods(vec![disk_stats("big", 3 * GI), disk_stats("small", MI), disk_stats("within-request", 5 * GI)]);
    h.observer.set_nodefs_available(5 * GI);
    let t0 = Instant::now();
    let evicted = h.manager.synchronize(t0).await.expect("a pod is evicted");
    assert_eq!(spec::name(&evicted), "big");
    assert_eq!(evicted_names(&h.kills), vec!["big"], "exactly one pod per round");
    let (_, grace, status) = h.kills.lock().unwrap()[0].clone();
    assert_eq!(grace, Some(0), "a hard threshold evicts without grace period");
    let message = "The node was low on resource: ephemeral-storage. Threshold quantity: 10Gi, available: 5Gi. \
                   Container app was using 3Gi, request is 0, has larger consumption of ephemeral-storage. ";
    assert_eq!(status.reason, "Evicted");
    assert_eq!(status.message, message);
    assert_eq!(status.disruption, Some(("TerminationByKubelet".to_string(), message.to_string())));
    match h.events.try_recv() {
        Ok(EventMessage::Event(e)) => {
            assert_eq!(
                (e.name.as_str(), &*e.reason, e.kind, e.message.as_str()),
                ("big", "Evicted", EventType::Warning, message)
            );
        }
        other => panic!("no Evicted event: {other:?}"),
    }
    h.manager.synchronize(t0 + Duration::from_secs(10)).await;
    h.manager.synchronize(t0 + Duration::from_secs(20)).await;
    assert_eq!(evicted_names(&h.kills), vec!["big", "small", "within-request"], "above requests first");
}

#[tokio::test]
async fn critical_and_static_pods_are_passed_over() {
    let static_pod = pod("static", 0, json!({}), json!({"kubernetes.io/config.source": "file"}));
    let critical = pod("critical", 2_000_000_000, json!({}), json!({}));
    let normal = pod("normal", 0, json!({}), json!({}));
    let mut h = harness(&[("nodefs.available", "10Gi")], vec![static_pod, critical, normal]);
    h.observer.set_pods(vec![disk_stats("static", 9 * GI), disk_stats("critical", 8 * GI), disk_stats("normal", MI)]);
    h.observer.set_nodefs_available(GI);
    let evicted = h.manager.synchronize(Instant::now()).await.expect("the normal pod goes");
    assert_eq!(spec::name(&evicted), "normal");
    assert_eq!(evicted_names(&h.kills), vec!["normal"]);
}

#[tokio::test]
async fn memory_pressure_ranks_by_usage_above_requests_and_soft_thresholds_wait_their_grace_period() {
    let hard = BTreeMap::from([("memory.available".to_string(), "100Mi".to_string())]);
    let soft = BTreeMap::from([("memory.available".to_string(), "1Gi".to_string())]);
    let grace = BTreeMap::from([("memory.available".to_string(), "30s".to_string())]);
    let thresholds = parse_threshold_config(&ThresholdSettings {
        hard: Some(&hard),
        soft: Some(&soft),
        soft_grace_period: Some(&grace),
        ..Default::default()
    })
    .unwrap();
    let config = EvictionConfig { thresholds, max_pod_grace_period_seconds: 7, ..Default::default() };
    let requested = pod("requested", 0, json!({"memory": "1Gi"}), json!({}));
    let hog = pod("hog", 10, json!({"memory": "100Mi"}), json!({}));
    let mut h = harness_with(config, vec![requested, hog]);
    let mem = |name: &str, ws: u64| PodStats {
        pod_ref: PodReference { uid: format!("uid-{name}"), ..Default::default() },
        memory: Some(MemoryStats { working_set_bytes: Some(ws), ..Default::default() }),
        containers: vec![ContainerStats {
            name: "app".into(),
            memory: Some(MemoryStats { working_set_bytes: Some(ws), ..Default::default() }),
            ..Default::default()
        }],
        ..Default::default()
    };
    h.observer.set_pods(vec![mem("requested", 900 * MI), mem("hog", 200 * MI)]);
    h.observer.set_memory_available(512 * MI);
    let t0 = Instant::now();
    assert_eq!(h.manager.synchronize(t0).await, None, "the soft threshold waits for its grace period");
    assert!(h.pressure.borrow().memory(), "the condition does not wait");
    let evicted = h.manager.synchronize(t0 + Duration::from_secs(30)).await.expect("evicted after 30 s");
    assert_eq!(spec::name(&evicted), "hog", "above its request, despite the higher priority");
    let (_, grace, status) = h.kills.lock().unwrap()[0].clone();
    assert_eq!(grace, Some(7), "evictionMaxPodGracePeriod for a soft threshold");
    assert_eq!(
        status.message,
        "The node was low on resource: memory. Threshold quantity: 1Gi, available: 512Mi. Container app was using \
         200Mi, request is 100Mi, has larger consumption of memory. "
    );
}

struct FreeingReclaim {
    observer: Arc<FakeObserver>,
    calls: Mutex<Vec<&'static str>>,
}

impl NodeReclaim for FreeingReclaim {
    fn delete_unused_containers(&self) -> BoxFuture<'_, ()> {
        self.calls.lock().unwrap().push("containers");
        Box::pin(async {})
    }

    fn delete_unused_images(&self) -> BoxFuture<'_, u64> {
        self.calls.lock().unwrap().push("images");
        self.observer.set_nodefs_available(20 * GI);
        Box::pin(async { 15 * GI })
    }
}

#[tokio::test]
async fn node_level_reclaim_comes_first_and_spares_the_pods_when_it_frees_enough() {
    let p = pod("p", 0, json!({}), json!({}));
    let h = harness(&[("nodefs.available", "10Gi")], vec![p]);
    let reclaim = Arc::new(FreeingReclaim { observer: h.observer.clone(), calls: Mutex::default() });
    let mut manager = h.manager.with_reclaim(reclaim.clone());
    h.observer.set_pods(vec![disk_stats("p", GI)]);
    h.observer.set_nodefs_available(5 * GI);
    assert_eq!(manager.synchronize(Instant::now()).await, None);
    assert_eq!(*reclaim.calls.lock().unwrap(), vec!["containers", "images"]);
    assert!(h.kills.lock().unwrap().is_empty(), "no pod evicted");
}

#[tokio::test]
async fn memory_pressure_reclaims_nothing_at_node_level() {
    let p = pod("p", 0, json!({}), json!({}));
    let h = harness(&[("memory.available", "1Gi")], vec![p]);
    let reclaim = Arc::new(FreeingReclaim { observer: h.observer.clone(), calls: Mutex::default() });
    let mut manager = h.manager.with_reclaim(reclaim.clone());
    h.observer.set_memory_available(100 * MI);
    assert!(manager.synchronize(Instant::now()).await.is_some());
    assert!(reclaim.calls.lock().unwrap().is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_memory_threshold_crossed_between_rounds_starts_a_round_at_once() {
    let p = pod("p", 0, json!({}), json!({}));
    let h = harness(&[("memory.available", "1Gi")], vec![p]);
    let observer = h.observer.clone();
    let kills = h.kills.clone();
    let task = tokio::spawn(h.manager.run());
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(kills.lock().unwrap().is_empty());
    observer.set_memory_available(100 * MI);
    // Well before the 10 s round.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
    assert_eq!(evicted_names(&kills), vec!["p"]);
    task.abort();
}

#[tokio::test(start_paused = true)]
async fn where_the_kernel_notifies_a_crossing_starts_a_round_at_once_and_nothing_is_polled() {
    let p = pod("p", 0, json!({}), json!({}));
    let h = harness(&[("memory.available", "1Gi")], vec![p]);
    let kernel = Arc::new(tokio::sync::Notify::new());
    *h.observer.kernel.lock().unwrap() = Some(kernel.clone());
    let observer = h.observer.clone();
    let kills = h.kills.clone();
    let task = tokio::spawn(h.manager.run());
    tokio::time::sleep(Duration::from_secs(2)).await;
    observer.set_memory_available(100 * MI);
    // No read between rounds: without the kernel's word the crossing waits for the 10 s round.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(kills.lock().unwrap().is_empty());
    assert_eq!(observer.memory_reads.load(std::sync::atomic::Ordering::Relaxed), 0);
    kernel.notify_one();
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
    assert_eq!(evicted_names(&kills), vec!["p"]);
    task.abort();
}

#[tokio::test]
async fn a_pod_over_its_ephemeral_storage_limit_is_evicted_without_a_disruption_condition_before_thresholds() {
    let limited: Arc<Pod> = Arc::new(
        serde_json::from_value(json!({
            "metadata": {"name": "limited", "namespace": "default", "uid": "uid-limited"},
            "spec": {"containers": [{"name": "app", "resources": {"limits": {"ephemeral-storage": "4Mi"}}}]}
        }))
        .unwrap(),
    );
    let big = pod("big", 0, json!({}), json!({}));
    let mut h = harness(&[("nodefs.available", "10Gi")], vec![big.clone(), limited.clone()]);
    h.observer.set_pods(vec![disk_stats("big", 3 * GI), disk_stats("limited", 8 * MI)]);
    // Under disk pressure too: the local storage eviction takes the round, not the ranking by usage.
    h.observer.set_nodefs_available(5 * GI);
    let evicted = h.manager.synchronize(Instant::now()).await.expect("a pod is evicted");
    assert_eq!(spec::name(&evicted), "limited");
    assert_eq!(evicted_names(&h.kills), vec!["limited"]);
    let (_, grace, status) = h.kills.lock().unwrap()[0].clone();
    assert_eq!(grace, Some(0));
    assert_eq!(status.reason, "Evicted");
    // A single container's limit is also the pod's, which kubelet checks first.
    assert_eq!(status.message, "Pod ephemeral local storage usage exceeds the total limit of containers 4Mi. ");
    assert_eq!(status.disruption, None, "kubelet sets no DisruptionTarget for local storage evictions");

    // With localStorageCapacityIsolation off the limit is not enforced.
    let config = EvictionConfig { local_storage_capacity_isolation: false, ..Default::default() };
    let mut h = harness_with(config, vec![limited]);
    h.observer.set_pods(vec![disk_stats("limited", 8 * MI)]);
    assert_eq!(h.manager.synchronize(Instant::now()).await, None);
    assert!(evicted_names(&h.kills).is_empty());
}

#[tokio::test]
async fn memory_stall_above_its_threshold_reports_memory_pressure_and_evicts_for_memory() {
    use crate::eviction::psi::parse_thresholds;
    use crate::stats::summary::{PsiData, PsiStats};
    let stall: BTreeMap<String, String> = [("memory.some.avg10".to_string(), "20".to_string())].into();
    let config = EvictionConfig {
        thresholds: parse_threshold_config(&ThresholdSettings {
            hard: Some(&[("memory.available".to_string(), "100Mi".to_string())].into()),
            ..Default::default()
        })
        .unwrap(),
        pressure_stall: parse_thresholds(&stall).unwrap(),
        ..Default::default()
    };
    let hog = pod("hog", 0, json!({}), json!({}));
    let mut h = harness_with(config, vec![hog]);
    let mut stats = disk_stats("hog", MI);
    stats.containers[0].memory = Some(MemoryStats { working_set_bytes: Some(512 * MI), ..Default::default() });
    h.observer.set_pods(vec![stats]);
    let t0 = Instant::now();
    // Plenty of memory available and no stall: nothing.
    assert_eq!(h.manager.synchronize(t0).await, None);
    assert!(h.pressure.borrow().conditions.is_empty());
    let set_stall = |avg10: f64| {
        let mut o = h.observer.observed.lock().unwrap();
        if let Some(m) = o.summary.node.memory.as_mut() {
            m.psi = Some(PsiStats { some: PsiData { avg10, ..Default::default() }, ..Default::default() });
        }
    };
    set_stall(19.5);
    assert_eq!(h.manager.synchronize(t0 + Duration::from_secs(10)).await, None, "below the stall threshold");
    set_stall(35.0);
    let evicted = h.manager.synchronize(t0 + Duration::from_secs(20)).await.expect("evicted on the stall");
    assert_eq!(spec::name(&evicted), "hog");
    assert_eq!(h.pressure.borrow().conditions, vec![NodeConditionType::MemoryPressure]);
    let (_, grace, status) = h.kills.lock().unwrap()[0].clone();
    assert_eq!(grace, Some(0));
    assert_eq!(
        status.message,
        "The node was low on resource: memory. Memory pressure stall: memory.some.avg10 35% >= 20%. \
         Container app was using 512Mi, request is 0, has larger consumption of memory. "
    );
    assert!(status.disruption.is_some());
}

#[tokio::test]
async fn the_node_gets_kubelets_condition_events_once_then_on_each_change_and_eviction_threshold_met() {
    let mut h = harness(&[("nodefs.available", "10Gi")], vec![]);
    h.manager = Manager { node_name: Some("node-1".into()), ..h.manager };
    let node_events = |h: &mut Harness| {
        let mut out = Vec::new();
        while let Ok(m) = h.events.try_recv() {
            if let EventMessage::Node(e) = m {
                out.push(format!("{:?} {} {}", e.kind, e.reason, e.message));
            }
        }
        out
    };
    let t0 = Instant::now();
    h.manager.synchronize(t0).await;
    assert_eq!(
        node_events(&mut h),
        [
            "Normal NodeHasSufficientMemory Node node-1 status is now: NodeHasSufficientMemory",
            "Normal NodeHasNoDiskPressure Node node-1 status is now: NodeHasNoDiskPressure",
            "Normal NodeHasSufficientPID Node node-1 status is now: NodeHasSufficientPID",
        ]
    );
    h.manager.synchronize(t0 + Duration::from_secs(10)).await;
    assert!(node_events(&mut h).is_empty(), "nothing changed, nothing recorded");
    h.observer.set_nodefs_available(5 * GI);
    h.manager.synchronize(t0 + Duration::from_secs(20)).await;
    assert_eq!(
        node_events(&mut h),
        [
            "Normal NodeHasDiskPressure Node node-1 status is now: NodeHasDiskPressure",
            "Warning EvictionThresholdMet Attempting to reclaim ephemeral-storage",
        ]
    );
}
