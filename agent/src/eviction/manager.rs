//! kubelet's eviction manager loop (`managerImpl.synchronize` in pkg/kubelet/eviction/eviction_manager.go).
//!
//! Every `housekeeping` interval (10 s) it observes the signals, decides the node conditions with the pressure
//! transition period, reclaims node-level resources for disk signals, and otherwise evicts at most one pod, ranked
//! as kubelet ranks them. Between two rounds a memory threshold crossed starts a round at once: on cgroup v1 the
//! kernel says so through kubelet's memcg threshold notification (nothing is read while idle); on cgroup v2, which
//! has no such notification, the memory signals are read once a second.

use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use k8s_openapi::api::core::v1::Pod;
use tokio::sync::watch;

use crate::eviction::helpers::{
    eviction_message, make_signal_observations, merge_thresholds, node_conditions, node_conditions_last_observed_at,
    node_conditions_observed_since, node_low_message, rank_for_signal, sort_by_eviction_priority,
    thresholds_first_observed_at, thresholds_met, thresholds_met_grace_period, thresholds_updated_stats, Observations,
    StatsByUid,
};
use crate::eviction::local_storage::local_storage_evictions;
use crate::eviction::psi::{PressureStallThreshold, StallObserved};
use crate::eviction::threshold::{NodeConditionType, Resource, Signal, Threshold, DEFAULT_PRESSURE_TRANSITION_PERIOD};
use crate::eviction::{is_critical, NodePressure, NodeReclaim, POD_REASON_TERMINATION_BY_KUBELET, REASON};
use crate::kubetypes::events::{EventRecorder, EventType};
use crate::kubetypes::kill::{PodKiller, TerminalStatus};
use crate::kubetypes::spec;
use crate::stats::summary::{MemoryStats, Summary};

/// kubelet's `evictionMonitoringPeriod` (pkg/kubelet/kubelet.go).
pub const MONITORING_INTERVAL: Duration = Duration::from_secs(10);
/// How often the memory signals are read between two rounds.
pub const MEMORY_POLL_INTERVAL: Duration = Duration::from_secs(1);
/// `killPodNow`'s least wait for a pod to stop (pkg/kubelet/pod_workers.go).
const KILL_MIN_TIMEOUT_SECONDS: i64 = 10;

/// The manager's settings (kubelet's eviction `Config`).
#[derive(Debug, Clone, PartialEq)]
pub struct EvictionConfig {
    pub thresholds: Vec<Threshold>,
    /// `evictionMaxPodGracePeriod`: the grace period of pods evicted for a soft threshold.
    pub max_pod_grace_period_seconds: i64,
    /// `evictionPressureTransitionPeriod`.
    pub pressure_transition_period: Duration,
    /// `localStorageCapacityIsolation`: pods over their `ephemeral-storage` limits or emptyDir `sizeLimit` are
    /// evicted.
    pub local_storage_capacity_isolation: bool,
    /// `evictionPressureStall` (beyond kubelet): memory PSI thresholds that act as a hard `memory.available`.
    pub pressure_stall: Vec<PressureStallThreshold>,
}

impl Default for EvictionConfig {
    fn default() -> Self {
        EvictionConfig {
            thresholds: Vec::new(),
            max_pod_grace_period_seconds: 0,
            pressure_transition_period: DEFAULT_PRESSURE_TRANSITION_PERIOD,
            local_storage_capacity_isolation: true,
            pressure_stall: Vec::new(),
        }
    }
}

/// One look at the node.
#[derive(Debug, Clone, Default)]
pub struct Observed {
    pub summary: Summary,
    /// The `kubepods` cgroup's memory (kubelet's `pods` system container).
    pub allocatable_memory: Option<MemoryStats>,
    /// The image filesystem is another device than the root dir's (`HasDedicatedImageFs`).
    pub dedicated_image_fs: bool,
}

/// Where the signals come from; tests give fakes.
pub trait Observer: Send + Sync {
    /// The summary and the rest of the signals; `None` when they cannot be read this round.
    fn observe(&self) -> BoxFuture<'_, Option<Observed>>;
    /// The memory signals alone, cheaply, for the watch between rounds.
    fn memory(&self) -> Observations;
    /// kubelet's threshold notifiers: a future that resolves to true when the kernel reports one of `thresholds`
    /// crossed (false when the notification itself failed), registered anew each round from the round's node
    /// memory as kubelet's `UpdateThreshold` does from its summary. `None` where the host cannot notify: the manager
    /// then reads [`Observer::memory`] every [`MEMORY_POLL_INTERVAL`].
    fn memory_crossing(&self, _thresholds: &[Threshold], _node: &MemoryStats) -> Option<BoxFuture<'static, bool>> {
        None
    }
}

/// The real node: the summary of the stats provider, the `kubepods` cgroup (cgroup v2), and the image filesystem's
/// device compared with the root dir's.
pub struct NodeObserver {
    pub stats: crate::stats::StatsProvider,
    /// The `kubepods` cgroup folder on cgroup v2, when pods have one.
    pub kubepods: Option<PathBuf>,
    pub dedicated_image_fs: OnceLock<bool>,
    /// The cgroup v1 memory root that takes threshold registrations; `None` on cgroup v2.
    pub notifiers: Option<crate::eviction::notifier::MemoryNotifiers>,
}

/// The `kubepods` cgroup folder under a cgroup v2 mount for the driver (the pods' part of allocatable memory).
pub fn kubepods_cgroup(mount: &std::path::Path, driver: crate::cm::cgroups::CgroupDriver) -> PathBuf {
    let name = crate::cm::cgroups::CgroupName::kubepods();
    match driver {
        crate::cm::cgroups::CgroupDriver::Cgroupfs => mount.join(name.0.join("/")),
        crate::cm::cgroups::CgroupDriver::Systemd => mount.join(name.to_systemd_path()),
    }
}

impl NodeObserver {
    pub fn new(stats: crate::stats::StatsProvider, kubepods: Option<PathBuf>) -> Self {
        NodeObserver {
            stats,
            kubepods,
            dedicated_image_fs: OnceLock::new(),
            notifiers: crate::eviction::notifier::MemoryNotifiers::detect(),
        }
    }

    fn allocatable_memory(&self) -> Option<MemoryStats> {
        let dir = self.kubepods.as_ref()?;
        let read = |f: &str| std::fs::read_to_string(dir.join(f)).ok();
        let time = jiff::Timestamp::now().to_string();
        crate::stats::node::cgroup_v2_memory(
            &read("memory.current")?,
            &read("memory.stat")?,
            &read("memory.max")?,
            &time,
        )
    }

    async fn dedicated_image_fs(&self) -> bool {
        if let Some(d) = self.dedicated_image_fs.get() {
            return *d;
        }
        use std::os::unix::fs::MetadataExt;
        let Ok(fs) = self.stats.runtime.image_fs_info().await else { return false };
        let Some(mountpoint) = fs.into_iter().next().map(|f| f.mountpoint).filter(|m| !m.is_empty()) else {
            return false;
        };
        match (std::fs::metadata(&self.stats.root_dir), std::fs::metadata(&mountpoint)) {
            (Ok(root), Ok(image)) => *self.dedicated_image_fs.get_or_init(|| root.dev() != image.dev()),
            _ => false,
        }
    }
}

impl Observer for NodeObserver {
    fn observe(&self) -> BoxFuture<'_, Option<Observed>> {
        Box::pin(async move {
            let dedicated_image_fs = self.dedicated_image_fs().await;
            let (summary, _) = self.stats.summary().await;
            Some(Observed { summary, allocatable_memory: self.allocatable_memory(), dedicated_image_fs })
        })
    }

    fn memory(&self) -> Observations {
        let time = jiff::Timestamp::now().to_string();
        let summary = Summary {
            node: crate::stats::summary::NodeStats {
                memory: crate::stats::node::node_working_set_now(&time),
                ..Default::default()
            },
            pods: vec![],
        };
        make_signal_observations(&summary, self.allocatable_memory().as_ref())
    }

    fn memory_crossing(&self, thresholds: &[Threshold], node: &MemoryStats) -> Option<BoxFuture<'static, bool>> {
        let notifiers = self.notifiers.as_ref()?.register(thresholds, node)?;
        for n in &notifiers {
            tracing::debug!(usage = n.threshold(), "eviction manager: setting notifier to capacity");
        }
        Some(Box::pin(async move {
            if notifiers.is_empty() {
                return std::future::pending().await;
            }
            let crossings = notifiers.iter().map(|n| Box::pin(n.crossed()));
            match futures::future::select_all(crossings).await {
                (Ok(()), _, _) => true,
                (Err(e), _, _) => {
                    tracing::warn!(error = %e, "eviction manager: memory threshold notifier failed");
                    false
                }
            }
        }))
    }
}

/// What the manager remembers between rounds.
#[derive(Debug, Default)]
struct State {
    thresholds_first_observed_at: Vec<(Threshold, Instant)>,
    node_conditions_last_observed_at: std::collections::BTreeMap<NodeConditionType, Instant>,
    thresholds_met: Vec<Threshold>,
    last_observations: Observations,
    /// The last round's node memory, which the threshold notifiers are set from.
    node_memory: Option<MemoryStats>,
}

pub struct Manager {
    pub config: EvictionConfig,
    pub observer: Arc<dyn Observer>,
    pub killer: PodKiller,
    pub reclaim: Option<Arc<dyn NodeReclaim>>,
    pub events: EventRecorder,
    /// Published for the node status and admission.
    pub pressure: watch::Sender<NodePressure>,
    pub monitoring_interval: Duration,
    /// The node's name for its condition events (`Node <name> status is now: ...`); none: no such events.
    pub node_name: Option<String>,
    /// The pressure last reported in node events; `None` before the first round.
    reported: Option<NodePressure>,
    state: State,
}

/// The node events kubelet's status setters record when a pressure condition is set or changes (setters.go):
/// the condition, then the reason when it is true and when it is false.
const CONDITION_EVENTS: [(NodeConditionType, &str, &str); 3] = [
    (NodeConditionType::MemoryPressure, "NodeHasInsufficientMemory", "NodeHasSufficientMemory"),
    (NodeConditionType::DiskPressure, "NodeHasDiskPressure", "NodeHasNoDiskPressure"),
    (NodeConditionType::PidPressure, "NodeHasInsufficientPID", "NodeHasSufficientPID"),
];
/// `eviction_manager.go`: the node event of a round that must reclaim a resource.
pub const EVENT_EVICTION_THRESHOLD_MET: &str = "EvictionThresholdMet";

impl Manager {
    pub fn new(
        config: EvictionConfig,
        observer: Arc<dyn Observer>,
        killer: PodKiller,
        events: EventRecorder,
        pressure: watch::Sender<NodePressure>,
    ) -> Self {
        Manager {
            config,
            observer,
            killer,
            reclaim: None,
            events,
            pressure,
            monitoring_interval: MONITORING_INTERVAL,
            node_name: None,
            reported: None,
            state: State::default(),
        }
    }

    /// Records the node's pressure condition events as kubelet does, naming the node.
    pub fn with_node_events(mut self, node_name: String) -> Self {
        self.node_name = Some(node_name);
        self
    }

    /// kubelet's `recordEventFunc(v1.EventTypeNormal, "NodeHas...")`: each pressure condition once when first set,
    /// then on each change.
    fn record_condition_events(&mut self, pressure: &NodePressure) {
        let Some(node) = &self.node_name else { return };
        for (condition, when_true, when_false) in CONDITION_EVENTS {
            let now = pressure.has(condition);
            if self.reported.as_ref().is_some_and(|r| r.has(condition) == now) {
                continue;
            }
            let reason = if now { when_true } else { when_false };
            self.events.record_node(EventType::Normal, reason, format!("Node {node} status is now: {reason}"));
        }
        self.reported = Some(pressure.clone());
    }

    pub fn with_reclaim(mut self, reclaim: Arc<dyn NodeReclaim>) -> Self {
        self.reclaim = Some(reclaim);
        self
    }

    /// Runs the rounds forever (kubelet's `Start`).
    pub async fn run(mut self) {
        if self.config.thresholds.is_empty() {
            tracing::info!("eviction manager: no thresholds configured");
        }
        let memory_thresholds: Vec<Threshold> =
            self.config.thresholds.iter().filter(|t| t.signal.is_memory()).copied().collect();
        let mut memory_was_met = false;
        loop {
            if let Some(pod) = self.synchronize(Instant::now()).await {
                tracing::info!(pod = %spec::format_pod(&pod), "eviction manager: pods evicted, waiting for pod to be cleaned up");
            }
            // At most one pod per interval: the next round sees what the last eviction freed.
            let next = tokio::time::Instant::now() + self.monitoring_interval;
            let crossing = match &self.state.node_memory {
                Some(node) if !memory_thresholds.is_empty() => self.observer.memory_crossing(&memory_thresholds, node),
                _ => None,
            };
            if let Some(crossing) = crossing {
                tokio::select! {
                    _ = tokio::time::sleep_until(next) => {}
                    crossed = crossing => {
                        if crossed {
                            tracing::info!("eviction manager: memory threshold crossed, synchronizing at once");
                        } else {
                            // A notifier that fails would fail again at once: wait out the round.
                            tokio::time::sleep_until(next).await;
                        }
                    }
                }
                continue;
            }
            loop {
                let poll = tokio::time::Instant::now() + MEMORY_POLL_INTERVAL;
                if memory_thresholds.is_empty() || poll >= next {
                    tokio::time::sleep_until(next).await;
                    break;
                }
                tokio::time::sleep_until(poll).await;
                let observations = self.observer.memory();
                // A signal this node cannot observe is the round's to report, not the watch's every second.
                let watched: Vec<Threshold> =
                    memory_thresholds.iter().filter(|t| observations.contains_key(&t.signal)).copied().collect();
                let met = !thresholds_met(&watched, &observations, false).is_empty();
                let crossed = met && !memory_was_met;
                memory_was_met = met;
                if crossed {
                    tracing::info!("eviction manager: memory threshold crossed, synchronizing at once");
                    break;
                }
            }
        }
    }

    /// One round (`synchronize`); returns the pod it evicted.
    pub async fn synchronize(&mut self, now: Instant) -> Option<Arc<Pod>> {
        if self.config.thresholds.is_empty()
            && self.config.pressure_stall.is_empty()
            && !self.config.local_storage_capacity_isolation
        {
            return None;
        }
        tracing::debug!("eviction manager: synchronize housekeeping");
        let active_pods = self.killer.active_pods();
        let Some(observed) = self.observer.observe().await else {
            tracing::error!("eviction manager: failed to get summary stats");
            return None;
        };
        let observations = make_signal_observations(&observed.summary, observed.allocatable_memory.as_ref());
        tracing::trace!(?observations, "eviction manager: observations");
        self.state.node_memory = observed.summary.node.memory.clone();

        let mut thresholds = thresholds_met(&self.config.thresholds, &observations, false);
        if !self.state.thresholds_met.is_empty() {
            let not_yet_resolved = thresholds_met(&self.state.thresholds_met, &observations, true);
            thresholds = merge_thresholds(thresholds, not_yet_resolved);
        }
        let first_observed_at =
            thresholds_first_observed_at(&thresholds, &self.state.thresholds_first_observed_at, now);
        let stalls = crate::eviction::psi::thresholds_met(&self.config.pressure_stall, &observed.summary.node);
        let mut conditions = node_conditions(&thresholds);
        if !stalls.is_empty() && !conditions.contains(&NodeConditionType::MemoryPressure) {
            conditions.push(NodeConditionType::MemoryPressure);
        }
        if !conditions.is_empty() {
            tracing::debug!(?conditions, "eviction manager: node conditions - observed");
        }
        let last_observed_at =
            node_conditions_last_observed_at(&conditions, &self.state.node_conditions_last_observed_at, now);
        let conditions = node_conditions_observed_since(&last_observed_at, self.config.pressure_transition_period, now);
        let thresholds = thresholds_met_grace_period(&first_observed_at, now);

        self.state.thresholds_first_observed_at = first_observed_at;
        self.state.node_conditions_last_observed_at = last_observed_at;
        self.state.thresholds_met = thresholds.clone();
        let pressure = NodePressure::new(conditions);
        self.record_condition_events(&pressure);
        self.pressure.send_if_modified(|p| {
            if *p == pressure {
                return false;
            }
            tracing::info!(conditions = ?pressure.conditions, "eviction manager: node conditions changed");
            *p = pressure.clone();
            true
        });
        let mut thresholds = thresholds_updated_stats(&thresholds, &observations, &self.state.last_observations);
        self.state.last_observations = observations.clone();

        // kubelet: "evict pods if there is a resource usage violation from local volume temporary storage"; an
        // eviction there skips the threshold evictions of this round.
        if self.config.local_storage_capacity_isolation {
            if let Some(pod) = self.local_storage_eviction(&active_pods, &observed).await {
                return Some(pod);
            }
        }
        if thresholds.is_empty() && !stalls.is_empty() {
            return self.evict_for_memory_stall(active_pods, &observed, &observations, &stalls).await;
        }
        if thresholds.is_empty() {
            tracing::debug!("eviction manager: no resources are starved");
            return None;
        }
        sort_by_eviction_priority(&mut thresholds);
        let to_reclaim = thresholds[0];
        let resource = to_reclaim.signal.resource();
        tracing::info!(resource_name = resource.as_str(), "eviction manager: attempting to reclaim");
        if self.node_name.is_some() {
            let message = format!("Attempting to reclaim {}", resource.as_str());
            self.events.record_node(EventType::Warning, EVENT_EVICTION_THRESHOLD_MET, message);
        }

        if self.reclaim_node_level_resources(to_reclaim, resource).await {
            tracing::info!(
                resource_name = resource.as_str(),
                "eviction manager: able to reduce resource pressure without evicting pods."
            );
            return None;
        }
        tracing::info!(resource_name = resource.as_str(), "eviction manager: must evict pod(s) to reclaim");
        if active_pods.is_empty() {
            tracing::error!("eviction manager: eviction thresholds have been met, but no pods are active to evict");
            return None;
        }
        let mut pods = active_pods;
        let stats = StatsByUid::new(&observed.summary.pods);
        rank_for_signal(to_reclaim.signal, observed.dedicated_image_fs, &mut pods, &stats);
        let ranked: Vec<String> = pods.iter().map(|p| spec::format_pod(p)).collect();
        tracing::info!(pods = ?ranked, "eviction manager: pods ranked for eviction");

        // At most one pod each round.
        for pod in pods {
            let grace = if to_reclaim.is_hard() { 0 } else { self.config.max_pod_grace_period_seconds };
            let message = eviction_message(resource, &pod, &stats, &thresholds, &observations);
            if self.evict_pod(&pod, grace, message).await {
                return Some(pod);
            }
        }
        tracing::info!("eviction manager: unable to evict any pods from the node");
        None
    }

    /// `localStorageEviction`: every pod over an emptyDir `sizeLimit`, its containers' `ephemeral-storage` limits or
    /// a container's own is evicted at once, without a `DisruptionTarget` condition (kubelet passes none here);
    /// returns the first evicted.
    async fn local_storage_eviction(&self, active_pods: &[Arc<Pod>], observed: &Observed) -> Option<Arc<Pod>> {
        let mut first = None;
        for eviction in local_storage_evictions(active_pods, &observed.summary, observed.dedicated_image_fs) {
            tracing::info!(pod = %spec::format_pod(&eviction.pod), signal = eviction.signal.as_str(), "eviction manager: local storage limit exceeded");
            let status = eviction.terminal_status();
            if self.evict_pod_with(&eviction.pod, 0, status).await && first.is_none() {
                first = Some(eviction.pod);
            }
        }
        first
    }

    /// The memory PSI signal met while no kubelet threshold is: one pod is evicted as for a hard
    /// `memory.available`, ranked for memory, its message naming the stall instead of a threshold quantity.
    async fn evict_for_memory_stall(
        &self,
        mut pods: Vec<Arc<Pod>>,
        observed: &Observed,
        observations: &Observations,
        stalls: &[StallObserved],
    ) -> Option<Arc<Pod>> {
        let stall: Vec<String> = stalls.iter().map(StallObserved::describe).collect();
        tracing::info!(stall = ?stall, "eviction manager: memory pressure stall, must evict pod(s) to reclaim");
        let stats = StatsByUid::new(&observed.summary.pods);
        rank_for_signal(Signal::MemoryAvailable, observed.dedicated_image_fs, &mut pods, &stats);
        for pod in pods {
            let message = eviction_message(Resource::Memory, &pod, &stats, &[], observations);
            let prefix = node_low_message(Resource::Memory);
            let rest = message.strip_prefix(prefix.as_str()).unwrap_or(&message);
            let message = format!("{prefix}Memory pressure stall: {}. {rest}", stall.join(", "));
            if self.evict_pod(&pod, 0, message).await {
                return Some(pod);
            }
        }
        tracing::info!("eviction manager: unable to evict any pods from the node");
        None
    }

    /// `reclaimNodeLevelResources`: for disk signals, dead containers then unused images; true when the thresholds
    /// (with their minimum reclaim) are no longer met afterwards.
    async fn reclaim_node_level_resources(&self, threshold: Threshold, resource: Resource) -> bool {
        let Some(reclaim) = &self.reclaim else { return false };
        if !matches!(resource, Resource::EphemeralStorage | Resource::Inodes) {
            return false;
        }
        reclaim.delete_unused_containers().await;
        let freed = reclaim.delete_unused_images().await;
        tracing::info!(signal = %threshold.signal, freed_bytes = freed, "eviction manager: node-level reclaim done");
        let Some(observed) = self.observer.observe().await else {
            tracing::error!("eviction manager: failed to get summary stats after resource reclaim");
            return false;
        };
        let observations = make_signal_observations(&observed.summary, observed.allocatable_memory.as_ref());
        thresholds_met(&self.config.thresholds, &observations, true).is_empty()
    }

    /// `evictPod`: critical pods are never evicted; the others get an `Evicted` event, then are stopped with the
    /// grace period given and end `Failed`/`Evicted` with the `DisruptionTarget` condition. True when tried.
    async fn evict_pod(&self, pod: &Arc<Pod>, grace_period_override: i64, message: String) -> bool {
        let status = TerminalStatus {
            reason: REASON.into(),
            message: message.clone(),
            disruption: Some((POD_REASON_TERMINATION_BY_KUBELET.into(), message)),
        };
        self.evict_pod_with(pod, grace_period_override, status).await
    }

    /// `evictPod` with the status the pod ends with.
    async fn evict_pod_with(&self, pod: &Arc<Pod>, grace_period_override: i64, status: TerminalStatus) -> bool {
        if is_critical(pod) {
            tracing::error!(pod = %spec::format_pod(pod), "eviction manager: cannot evict a critical pod");
            return false;
        }
        let message = status.message.clone();
        self.events.record(pod, None, EventType::Warning, REASON, message.clone());
        tracing::info!(pod = %spec::format_pod(pod), pod_uid = spec::uid(pod), %message, "evicting pod");
        let timeout_seconds =
            (grace_period_override + grace_period_override / 2).max(KILL_MIN_TIMEOUT_SECONDS).unsigned_abs();
        match self
            .killer
            .kill_pod(spec::uid(pod), Some(grace_period_override), status, Duration::from_secs(timeout_seconds))
            .await
        {
            Ok(()) => tracing::info!(pod = %spec::format_pod(pod), "eviction manager: pod is evicted successfully"),
            Err(e) => {
                tracing::error!(pod = %spec::format_pod(pod), error = %e, "eviction manager: pod failed to evict")
            }
        }
        true
    }
}

#[cfg(test)]
mod tests;
