//! kubelet's eviction helpers (pkg/kubelet/eviction/helpers.go): observations from the summary, which thresholds
//! are met, node conditions with their transition period, the pod rankings and the eviction message.

use std::cmp::Ordering;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Pod;

use crate::eviction::threshold::{Format, NodeConditionType, Quantity, Resource, Signal, Threshold};
use crate::kubetypes::quantity::parse_value;
use crate::kubetypes::spec;
use crate::stats::summary::{FsStats, MemoryStats, PodStats, Summary};

/// `nodeLowMessageFmt`, `thresholdMetMessageFmt`, `containerMessageFmt`, `nodeConditionMessageFmt` (helpers.go).
pub fn node_low_message(resource: Resource) -> String {
    format!("The node was low on resource: {}. ", resource.as_str())
}

/// One signal's figures (`signalObservation`); `time` is when the stats were taken.
#[derive(Debug, Clone, PartialEq)]
pub struct SignalObservation {
    pub available: Quantity,
    pub capacity: Quantity,
    pub time: Option<jiff::Timestamp>,
}

pub type Observations = BTreeMap<Signal, SignalObservation>;

fn observe(available: i128, capacity: i128, format: Format, time: &str) -> SignalObservation {
    SignalObservation {
        available: Quantity::new(available, format),
        capacity: Quantity::new(capacity, format),
        time: time.parse().ok(),
    }
}

fn memory_observation(m: &MemoryStats) -> Option<SignalObservation> {
    let (available, working_set) = (m.available_bytes?, m.working_set_bytes?);
    Some(observe(available.into(), i128::from(available) + i128::from(working_set), Format::BinarySi, &m.time))
}

/// `makeSignalObservations`; the `pods` system container's memory (the `kubepods` cgroup) is given apart, since
/// the summary here has no system containers.
pub fn make_signal_observations(summary: &Summary, allocatable: Option<&MemoryStats>) -> Observations {
    let mut out = Observations::new();
    if let Some(o) = summary.node.memory.as_ref().and_then(memory_observation) {
        out.insert(Signal::MemoryAvailable, o);
    }
    if let Some(o) = allocatable.and_then(memory_observation) {
        out.insert(Signal::AllocatableMemoryAvailable, o);
    }
    let fs_observations = |fs: &FsStats, bytes: Signal, inodes: Signal, out: &mut Observations| {
        if let (Some(a), Some(c)) = (fs.available_bytes, fs.capacity_bytes) {
            out.insert(bytes, observe(a.into(), c.into(), Format::BinarySi, &fs.time));
        }
        if let (Some(a), Some(c)) = (fs.inodes_free, fs.inodes) {
            out.insert(inodes, observe(a.into(), c.into(), Format::DecimalSi, &fs.time));
        }
    };
    if let Some(fs) = &summary.node.fs {
        fs_observations(fs, Signal::NodeFsAvailable, Signal::NodeFsInodesFree, &mut out);
    }
    if let Some(fs) = summary.node.runtime.as_ref().and_then(|r| r.image_fs.as_ref()) {
        // kubelet only looks at imagefs inodes when its bytes are known.
        if fs.available_bytes.is_some() && fs.capacity_bytes.is_some() {
            fs_observations(fs, Signal::ImageFsAvailable, Signal::ImageFsInodesFree, &mut out);
        }
    }
    if let Some(r) = &summary.node.rlimit {
        if let (Some(max), Some(cur)) = (r.maxpid, r.curproc) {
            out.insert(Signal::PidAvailable, observe((max - cur).into(), max.into(), Format::DecimalSi, &r.time));
        }
    }
    out
}

/// `thresholdsMet`: with `enforce_min_reclaim`, a threshold stays met until its minimum reclaim is also freed.
pub fn thresholds_met(
    thresholds: &[Threshold],
    observations: &Observations,
    enforce_min_reclaim: bool,
) -> Vec<Threshold> {
    thresholds
        .iter()
        .filter(|t| {
            let Some(observed) = observations.get(&t.signal) else {
                tracing::info!(signal = %t.signal, "eviction manager: no observation found for eviction signal");
                return false;
            };
            let mut quantity = t.value.quantity(observed.capacity.value).value;
            if let (true, Some(min)) = (enforce_min_reclaim, t.min_reclaim) {
                quantity += min.quantity(observed.capacity.value).value;
            }
            quantity > observed.available.value
        })
        .copied()
        .collect()
}

/// `mergeThresholds`.
pub fn merge_thresholds(mut a: Vec<Threshold>, b: Vec<Threshold>) -> Vec<Threshold> {
    for t in b {
        if !a.iter().any(|x| x.same(&t)) {
            a.push(t);
        }
    }
    a
}

/// `thresholdsFirstObservedAt`.
pub fn thresholds_first_observed_at(
    thresholds: &[Threshold],
    last: &[(Threshold, Instant)],
    now: Instant,
) -> Vec<(Threshold, Instant)> {
    thresholds.iter().map(|t| (*t, last.iter().find(|(l, _)| l.same(t)).map(|(_, at)| *at).unwrap_or(now))).collect()
}

/// `thresholdsMetGracePeriod`.
pub fn thresholds_met_grace_period(observed_at: &[(Threshold, Instant)], now: Instant) -> Vec<Threshold> {
    observed_at
        .iter()
        .filter(|(t, at)| {
            let met = now.saturating_duration_since(*at) >= t.grace_period;
            if !met {
                tracing::debug!(signal = %t.signal, grace_period = ?t.grace_period, "eviction manager: eviction criteria not yet met");
            }
            met
        })
        .map(|(t, _)| *t)
        .collect()
}

/// `nodeConditions`.
pub fn node_conditions(thresholds: &[Threshold]) -> Vec<NodeConditionType> {
    let mut out = Vec::new();
    for t in thresholds {
        let c = t.signal.node_condition();
        if !out.contains(&c) {
            out.push(c);
        }
    }
    out
}

/// `nodeConditionsLastObservedAt`.
pub fn node_conditions_last_observed_at(
    conditions: &[NodeConditionType],
    last: &BTreeMap<NodeConditionType, Instant>,
    now: Instant,
) -> BTreeMap<NodeConditionType, Instant> {
    let mut out = last.clone();
    for c in conditions {
        out.insert(*c, now);
    }
    out
}

/// `nodeConditionsObservedSince`: a condition holds while it was observed within the transition period.
pub fn node_conditions_observed_since(
    observed_at: &BTreeMap<NodeConditionType, Instant>,
    period: Duration,
    now: Instant,
) -> Vec<NodeConditionType> {
    observed_at.iter().filter(|(_, at)| now.saturating_duration_since(**at) < period).map(|(c, _)| *c).collect()
}

/// `thresholdsUpdatedStats`: only act on a threshold whose stats are newer than at the last synchronize.
pub fn thresholds_updated_stats(
    thresholds: &[Threshold],
    observations: &Observations,
    last: &Observations,
) -> Vec<Threshold> {
    thresholds
        .iter()
        .filter(|t| {
            let Some(observed) = observations.get(&t.signal) else { return false };
            match (last.get(&t.signal), observed.time) {
                (None, _) | (_, None) => true,
                (Some(l), Some(now)) => l.time.is_none_or(|l| now > l),
            }
        })
        .copied()
        .collect()
}

/// `byEvictionPriority`: memory first, signals without a resource last (every signal here has one).
pub fn sort_by_eviction_priority(thresholds: &mut [Threshold]) {
    thresholds.sort_by_key(|t| !t.signal.is_memory());
}

// ---- pod usage (statsFunc) ----

/// The pods' stats by UID (`cachedStatsFunc`).
pub struct StatsByUid<'a>(BTreeMap<&'a str, &'a PodStats>);

impl<'a> StatsByUid<'a> {
    pub fn new(pods: &'a [PodStats]) -> Self {
        StatsByUid(pods.iter().map(|p| (p.pod_ref.uid.as_str(), p)).collect())
    }

    pub fn get(&self, pod: &Pod) -> Option<&'a PodStats> {
        self.0.get(spec::uid(pod)).copied()
    }
}

/// `GetResourceRequestQuantity`: the sum over app containers, at least the largest init container, plus overhead.
pub fn pod_request(pod: &Pod, resource: &str) -> i128 {
    let s = spec::spec(pod);
    let of = |c: &k8s_openapi::api::core::v1::Container| {
        c.resources
            .as_ref()
            .and_then(|r| r.requests.as_ref())
            .and_then(|r| r.get(resource))
            .and_then(|q| parse_value(&q.0).ok())
            .unwrap_or(0)
    };
    let sum: i128 = s.containers.iter().map(of).sum();
    let init = s.init_containers.iter().flatten().map(of).max().unwrap_or(0);
    let overhead = s.overhead.as_ref().and_then(|o| o.get(resource)).and_then(|q| parse_value(&q.0).ok()).unwrap_or(0);
    sum.max(init) + overhead
}

/// Which filesystem usage counts towards a disk signal (`fsStatsType`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FsStatsToMeasure {
    pub root: bool,
    pub logs: bool,
    pub local_volumes: bool,
}

/// `podDiskUsage` for bytes or inodes: containers' writable layers and logs, and the pod's local volumes (what the
/// pod's ephemeral storage holds beyond its containers).
pub fn pod_disk_usage(stats: &PodStats, measure: FsStatsToMeasure, resource: Resource) -> i128 {
    let used = |fs: Option<&FsStats>| -> i128 {
        fs.and_then(|f| if resource == Resource::Inodes { f.inodes_used } else { f.used_bytes }).map_or(0, i128::from)
    };
    let (mut root, mut logs) = (0, 0);
    for c in &stats.containers {
        root += used(c.rootfs.as_ref());
        logs += used(c.logs.as_ref());
    }
    let volumes = (used(stats.ephemeral_storage.as_ref()) - root - logs).max(0);
    [(measure.root, root), (measure.logs, logs), (measure.local_volumes, volumes)]
        .iter()
        .filter(|(on, _)| *on)
        .map(|(_, v)| v)
        .sum()
}

fn memory_usage(stats: &PodStats) -> i128 {
    stats.memory.as_ref().and_then(|m| m.working_set_bytes).map_or(0, i128::from)
}

fn process_usage(stats: &PodStats) -> i128 {
    stats.process_stats.as_ref().and_then(|p| p.process_count).map_or(0, i128::from)
}

/// `cmpBool`: true first.
fn cmp_bool(a: bool, b: bool) -> Ordering {
    b.cmp(&a)
}

/// `priority`: lower priority first.
fn by_priority(a: &Pod, b: &Pod) -> Ordering {
    spec::spec(a).priority.unwrap_or(0).cmp(&spec::spec(b).priority.unwrap_or(0))
}

/// Pods without stats go first (`prioritize evicting the pod for which no stats were found`), then `f`.
fn with_stats(stats: &StatsByUid<'_>, a: &Pod, b: &Pod, f: impl Fn(&PodStats, &PodStats) -> Ordering) -> Ordering {
    match (stats.get(a), stats.get(b)) {
        (Some(sa), Some(sb)) => f(sa, sb),
        (sa, sb) => cmp_bool(sa.is_none(), sb.is_none()),
    }
}

/// `rankMemoryPressure`: usage above requests first, then lower priority, then larger usage above requests.
pub fn rank_memory_pressure(pods: &mut [std::sync::Arc<Pod>], stats: &StatsByUid<'_>) {
    pods.sort_by(|a, b| {
        let exceeds = with_stats(stats, a, b, |sa, sb| {
            cmp_bool(memory_usage(sa) > pod_request(a, "memory"), memory_usage(sb) > pod_request(b, "memory"))
        });
        exceeds.then_with(|| by_priority(a, b)).then_with(|| {
            with_stats(stats, a, b, |sa, sb| {
                (memory_usage(sb) - pod_request(b, "memory")).cmp(&(memory_usage(sa) - pod_request(a, "memory")))
            })
        })
    });
}

/// `rankPIDPressure`: lower priority first, then more processes.
pub fn rank_pid_pressure(pods: &mut [std::sync::Arc<Pod>], stats: &StatsByUid<'_>) {
    pods.sort_by(|a, b| {
        by_priority(a, b).then_with(|| with_stats(stats, a, b, |sa, sb| process_usage(sb).cmp(&process_usage(sa))))
    });
}

/// `rankDiskPressureFunc`: usage above the ephemeral-storage request first, then lower priority, then larger usage
/// above the request.
pub fn rank_disk_pressure(
    pods: &mut [std::sync::Arc<Pod>],
    stats: &StatsByUid<'_>,
    measure: FsStatsToMeasure,
    resource: Resource,
) {
    // kubelet compares inode usage with the request for "inodes", which pods never have.
    let request_of = |p: &Pod| if resource == Resource::Inodes { 0 } else { pod_request(p, "ephemeral-storage") };
    pods.sort_by(|a, b| {
        let exceeds = with_stats(stats, a, b, |sa, sb| {
            cmp_bool(
                pod_disk_usage(sa, measure, resource) > request_of(a),
                pod_disk_usage(sb, measure, resource) > request_of(b),
            )
        });
        exceeds.then_with(|| by_priority(a, b)).then_with(|| {
            with_stats(stats, a, b, |sa, sb| {
                let ua = pod_disk_usage(sa, measure, resource) - pod_request(a, "ephemeral-storage");
                let ub = pod_disk_usage(sb, measure, resource) - pod_request(b, "ephemeral-storage");
                ub.cmp(&ua)
            })
        })
    });
}

/// `buildSignalToRankFunc`: with a dedicated imagefs, nodefs counts logs and volumes, imagefs the writable layers.
pub fn rank_for_signal(
    signal: Signal,
    dedicated_image_fs: bool,
    pods: &mut [std::sync::Arc<Pod>],
    stats: &StatsByUid<'_>,
) {
    let all = FsStatsToMeasure { root: true, logs: true, local_volumes: true };
    let node_fs = if dedicated_image_fs { FsStatsToMeasure { root: false, ..all } } else { all };
    let image_fs =
        if dedicated_image_fs { FsStatsToMeasure { root: true, logs: false, local_volumes: false } } else { all };
    match signal {
        Signal::MemoryAvailable | Signal::AllocatableMemoryAvailable => rank_memory_pressure(pods, stats),
        Signal::PidAvailable => rank_pid_pressure(pods, stats),
        Signal::NodeFsAvailable => rank_disk_pressure(pods, stats, node_fs, Resource::EphemeralStorage),
        Signal::NodeFsInodesFree => rank_disk_pressure(pods, stats, node_fs, Resource::Inodes),
        Signal::ImageFsAvailable => rank_disk_pressure(pods, stats, image_fs, Resource::EphemeralStorage),
        Signal::ImageFsInodesFree => rank_disk_pressure(pods, stats, image_fs, Resource::Inodes),
    }
}

/// `getThresholdMetInfo`: the first met threshold of the resource, as a quantity, and what is available.
fn threshold_met_info(
    resource: Resource,
    thresholds: &[Threshold],
    observations: &Observations,
) -> Option<(Quantity, Quantity)> {
    thresholds.iter().filter(|t| t.signal.resource() == resource).find_map(|t| {
        let o = observations.get(&t.signal)?;
        Some((t.value.quantity(o.capacity.value), o.available))
    })
}

/// `evictionMessage`: the starved resource, the threshold and what was available, and each container using more
/// than it requested.
pub fn eviction_message(
    resource: Resource,
    pod: &Pod,
    stats: &StatsByUid<'_>,
    thresholds: &[Threshold],
    observations: &Observations,
) -> String {
    let mut message = node_low_message(resource);
    if let Some((quantity, available)) = threshold_met_info(resource, thresholds, observations) {
        message += &format!("Threshold quantity: {quantity}, available: {available}. ");
    }
    let Some(pod_stats) = stats.get(pod) else { return message };
    for cs in &pod_stats.containers {
        for c in spec::spec(pod).containers.iter().filter(|c| c.name == cs.name) {
            let request_text = c
                .resources
                .as_ref()
                .and_then(|r| r.requests.as_ref())
                .and_then(|r| r.get(resource.as_str()))
                .map(|q| q.0.clone());
            let request = request_text.as_deref().and_then(|t| parse_value(t).ok()).unwrap_or(0);
            let usage = match resource {
                Resource::EphemeralStorage => {
                    match (cs.rootfs.as_ref().and_then(|f| f.used_bytes), cs.logs.as_ref().and_then(|f| f.used_bytes)) {
                        (Some(r), Some(l)) => Some(i128::from(r) + i128::from(l)),
                        _ => None,
                    }
                }
                Resource::Memory => cs.memory.as_ref().and_then(|m| m.working_set_bytes).map(i128::from),
                _ => None,
            };
            if let Some(usage) = usage.filter(|u| *u > request) {
                message += &format!(
                    "Container {} was using {}, request is {}, has larger consumption of {}. ",
                    c.name,
                    Quantity::new(usage, Format::BinarySi),
                    request_text.unwrap_or_else(|| "0".into()),
                    resource.as_str()
                );
            }
        }
    }
    message
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::eviction::threshold::ThresholdValue;
    use crate::stats::summary::{ContainerStats, PodReference, ProcessStats};
    use serde_json::json;
    use std::sync::Arc;

    pub fn pod(name: &str, priority: i32, requests: &[(&str, &str)]) -> Arc<Pod> {
        let req: BTreeMap<&str, &str> = requests.iter().copied().collect();
        Arc::new(
            serde_json::from_value(json!({
                "metadata": {"name": name, "namespace": "default", "uid": format!("uid-{name}")},
                "spec": {"priority": priority, "containers": [{"name": "app", "resources": {"requests": req}}]}
            }))
            .unwrap(),
        )
    }

    fn memory_stats(name: &str, working_set: u64) -> PodStats {
        PodStats {
            pod_ref: PodReference { name: name.into(), namespace: "default".into(), uid: format!("uid-{name}") },
            memory: Some(MemoryStats { working_set_bytes: Some(working_set), ..Default::default() }),
            containers: vec![ContainerStats {
                name: "app".into(),
                memory: Some(MemoryStats { working_set_bytes: Some(working_set), ..Default::default() }),
                ..Default::default()
            }],
            ..Default::default()
        }
    }

    fn names(pods: &[Arc<Pod>]) -> Vec<&str> {
        pods.iter().map(|p| spec::name(p)).collect()
    }

    const MI: u64 = 1 << 20;
    const GI: u64 = 1 << 30;

    /// TestOrderedByExceedsRequestMemory: a pod above its request goes before one below, whatever the priority.
    #[test]
    fn memory_ranking_puts_pods_above_their_requests_first() {
        let below = pod("below-requests", -1, &[("memory", "200Mi")]);
        let exceeds = pod("exceeds-requests", 1, &[("memory", "100Mi")]);
        let stats = vec![memory_stats("below-requests", 19 * MI), memory_stats("exceeds-requests", 101 * MI)];
        let by = StatsByUid::new(&stats);
        let mut pods = vec![below, exceeds];
        rank_memory_pressure(&mut pods, &by);
        assert_eq!(names(&pods), vec!["exceeds-requests", "below-requests"]);
    }

    /// TestOrderedbyPriority and TestOrderedByMemory: among pods alike in exceeding, lower priority, then larger
    /// usage above the request; pods without stats first.
    #[test]
    fn memory_ranking_then_orders_by_priority_then_usage_above_request() {
        let low = pod("low-priority", 1, &[]);
        let high_big = pod("high-priority-big", 2, &[]);
        let high_small = pod("high-priority-small", 2, &[]);
        let requested = pod("high-priority-requested", 2, &[("memory", "500Mi")]);
        let no_stats = pod("no-stats", 10, &[]);
        let stats = vec![
            memory_stats("low-priority", MI),
            memory_stats("high-priority-big", 800 * MI),
            memory_stats("high-priority-small", 300 * MI),
            memory_stats("high-priority-requested", 900 * MI),
        ];
        let by = StatsByUid::new(&stats);
        let mut pods = vec![high_small, requested, low, high_big, no_stats];
        rank_memory_pressure(&mut pods, &by);
        assert_eq!(
            names(&pods),
            vec!["no-stats", "low-priority", "high-priority-big", "high-priority-requested", "high-priority-small"]
        );
    }

    #[test]
    fn pid_ranking_is_priority_then_processes() {
        let mk = |name: &str, prio, procs| {
            let mut s = memory_stats(name, 0);
            s.process_stats = Some(ProcessStats { process_count: Some(procs) });
            (pod(name, prio, &[]), s)
        };
        let (a, sa) = mk("few", 0, 2);
        let (b, sb) = mk("many", 0, 50);
        let (c, sc) = mk("many-high", 5, 500);
        let stats = vec![sa, sb, sc];
        let by = StatsByUid::new(&stats);
        let mut pods = vec![c, a, b];
        rank_pid_pressure(&mut pods, &by);
        assert_eq!(names(&pods), vec!["many", "few", "many-high"]);
    }

    #[test]
    fn disk_ranking_counts_layers_logs_and_volumes_against_the_request() {
        let mk = |name: &str, rootfs: u64, logs: u64, total: u64| PodStats {
            pod_ref: PodReference { uid: format!("uid-{name}"), ..Default::default() },
            containers: vec![ContainerStats {
                name: "app".into(),
                rootfs: Some(FsStats { used_bytes: Some(rootfs), ..Default::default() }),
                logs: Some(FsStats { used_bytes: Some(logs), ..Default::default() }),
                ..Default::default()
            }],
            ephemeral_storage: Some(FsStats { used_bytes: Some(total), ..Default::default() }),
            ..Default::default()
        };
        let writer = pod("writer", 0, &[("ephemeral-storage", "1Gi")]);
        let volume = pod("volume-user", 0, &[]);
        let idle = pod("idle", 0, &[]);
        let stats =
            vec![mk("writer", 600 * MI, 0, 600 * MI), mk("volume-user", MI, MI, 300 * MI), mk("idle", MI, 0, MI)];
        let by = StatsByUid::new(&stats);
        let mut pods = vec![writer.clone(), idle.clone(), volume.clone()];
        rank_for_signal(Signal::NodeFsAvailable, false, &mut pods, &by);
        assert_eq!(names(&pods), vec!["volume-user", "idle", "writer"], "the writer is within its request");
        let measure = FsStatsToMeasure { root: false, logs: true, local_volumes: true };
        assert_eq!(pod_disk_usage(&stats[1], measure, Resource::EphemeralStorage), i128::from(299 * MI));
    }

    fn nodefs(available: u64, time: Option<i64>) -> Observations {
        let mut obs = Observations::new();
        obs.insert(
            Signal::NodeFsAvailable,
            SignalObservation {
                available: Quantity::new(available.into(), Format::BinarySi),
                capacity: Quantity::new(100 << 30, Format::BinarySi),
                time: time.and_then(|s| jiff::Timestamp::from_second(s).ok()),
            },
        );
        obs
    }

    /// TestMinReclaim's intent: once met, a threshold stays met until the minimum reclaim is freed as well.
    #[test]
    fn a_met_threshold_holds_until_its_minimum_reclaim_is_freed() {
        let gi = |n: i128| Quantity::new(n << 30, Format::BinarySi);
        let t = Threshold {
            signal: Signal::NodeFsAvailable,
            value: ThresholdValue::Quantity(gi(10)),
            grace_period: Duration::ZERO,
            min_reclaim: Some(ThresholdValue::Quantity(gi(5))),
        };
        assert_eq!(thresholds_met(&[t], &nodefs(9 * GI, None), false), vec![t]);
        assert!(thresholds_met(&[t], &nodefs(12 * GI, None), false).is_empty(), "above the threshold itself");
        assert_eq!(thresholds_met(&[t], &nodefs(12 * GI, None), true), vec![t], "not above threshold + min reclaim");
        assert!(thresholds_met(&[t], &nodefs(16 * GI, None), true).is_empty());
    }

    /// thresholdsUpdatedStats: no action on stats no newer than at the last round.
    #[test]
    fn thresholds_are_acted_on_only_with_fresh_stats() {
        let t = Threshold {
            signal: Signal::NodeFsAvailable,
            value: ThresholdValue::Percentage(0.1),
            grace_period: Duration::ZERO,
            min_reclaim: None,
        };
        let last = nodefs(GI, Some(1_700_000_000));
        assert!(thresholds_updated_stats(&[t], &nodefs(GI, Some(1_700_000_000)), &last).is_empty());
        assert_eq!(thresholds_updated_stats(&[t], &nodefs(GI, Some(1_700_000_010)), &last), vec![t]);
        assert_eq!(thresholds_updated_stats(&[t], &nodefs(GI, None), &last), vec![t], "no time: act");
        assert_eq!(thresholds_updated_stats(&[t], &nodefs(GI, Some(1)), &Observations::new()), vec![t]);
    }

    #[test]
    fn the_message_names_threshold_available_and_containers_over_their_requests() {
        let p = pod("app", 0, &[("memory", "100Mi")]);
        let stats = vec![memory_stats("app", 200 * MI)];
        let by = StatsByUid::new(&stats);
        let t = Threshold {
            signal: Signal::MemoryAvailable,
            value: ThresholdValue::Quantity(Quantity::new(100 << 20, Format::BinarySi)),
            grace_period: Duration::ZERO,
            min_reclaim: None,
        };
        let mut obs = Observations::new();
        obs.insert(
            Signal::MemoryAvailable,
            SignalObservation {
                available: Quantity::new(90 << 20, Format::BinarySi),
                capacity: Quantity::new(1 << 30, Format::BinarySi),
                time: None,
            },
        );
        assert_eq!(
            eviction_message(Resource::Memory, &p, &by, &[t], &obs),
            "The node was low on resource: memory. Threshold quantity: 100Mi, available: 90Mi. Container app was \
             using 200Mi, request is 100Mi, has larger consumption of memory. "
        );
        let none = StatsByUid::new(&[]);
        assert_eq!(
            eviction_message(Resource::Memory, &p, &none, &[t], &obs),
            "The node was low on resource: memory. Threshold quantity: 100Mi, available: 90Mi. "
        );
    }
}
