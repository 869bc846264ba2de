//! kubelet's `/metrics` (its legacy registry: the families of `pkg/kubelet/metrics/metrics.go` and the volume stats
//! collector of `pkg/kubelet/metrics/collectors/volume_stats.go`) and the health checks of `/healthz`, in the
//! Prometheus text format written by `prometheus-client`.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::prometheus_text::{self, CONTENT_TYPE};
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use crate::pleg::DEF_BUCKETS;
use crate::runtime::client::OperationLabels;
use crate::server::ServerState;

/// The labels of one series, in the order written (Go's client sorts them by name).
pub type Labels = Vec<(&'static str, String)>;

/// A family written with kubelet's exact name and help (the registry's own `register` adds a full stop to every
/// help text); an empty one is left out, as Go's registry leaves out families without series.
#[derive(Debug)]
struct Exact<M> {
    name: &'static str,
    help: &'static str,
    metric: M,
}

impl<M: EncodeMetric + fmt::Debug + Send + Sync + 'static> Collector for Exact<M> {
    fn encode(&self, mut encoder: DescriptorEncoder) -> fmt::Result {
        if self.metric.is_empty() {
            return Ok(());
        }
        let m = encoder.encode_descriptor(self.name, self.help, None, self.metric.metric_type())?;
        self.metric.encode(m)
    }
}

/// Registers `metric` under kubelet's `name` and `help`. A counter's name is given without `_total`, which the
/// encoder appends.
pub fn register<M: EncodeMetric + fmt::Debug + Send + Sync + 'static>(
    registry: &mut Registry,
    name: &'static str,
    help: &'static str,
    metric: M,
) {
    registry.register_collector(Box::new(Exact { name, help, metric }));
}

/// A family whose values are read at scrape time (Go's const metrics), each series with its labels.
#[derive(Debug)]
pub struct ConstFamily {
    pub name: &'static str,
    pub help: &'static str,
    pub kind: MetricType,
    pub samples: Vec<(Labels, f64)>,
}

impl ConstFamily {
    pub fn gauge(name: &'static str, help: &'static str) -> Self {
        Self { name, help, kind: MetricType::Gauge, samples: vec![] }
    }

    /// A counter; `name` is without `_total`.
    pub fn counter(name: &'static str, help: &'static str) -> Self {
        Self { name, help, kind: MetricType::Counter, samples: vec![] }
    }

    pub fn push(&mut self, labels: Labels, value: f64) {
        self.samples.push((labels, value));
    }
}

impl Collector for ConstFamily {
    fn encode(&self, mut encoder: DescriptorEncoder) -> fmt::Result {
        if self.samples.is_empty() {
            return Ok(());
        }
        let mut m = encoder.encode_descriptor(self.name, self.help, None, self.kind)?;
        for (labels, value) in &self.samples {
            let series = m.encode_family(labels)?;
            match self.kind {
                MetricType::Counter => ConstCounter::new(*value).encode(series)?,
                _ => ConstGauge::new(*value).encode(series)?,
            }
        }
        Ok(())
    }
}

/// The registry in the Prometheus text format (version 0.0.4), as kubelet's handlers answer.
pub fn exposition(registry: &Registry) -> Response {
    let mut body = String::new();
    match prometheus_text::encode(&mut body, registry) {
        Ok(()) => ([(header::CONTENT_TYPE, CONTENT_TYPE)], body).into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

/// kubelet's `kubelet_pod_worker_duration_seconds` label for the syncs of a pod worker. The workers here do not
/// tell a create from an update, so every sync is `sync`.
const SYNC_OPERATION: &str = "sync";

/// What the pod workers report: each sync's duration, the failed ones, each pod's start, and the sync loop's
/// heartbeat for `/healthz`.
#[derive(Debug)]
pub struct PodWorkerMetrics {
    pub durations: Family<OperationLabels, Histogram, fn() -> Histogram>,
    pub failed_syncs: Counter,
    pub pod_start: Histogram,
    pub sync_loop: SyncLoopMonitor,
}

fn def_histogram() -> Histogram {
    Histogram::new(DEF_BUCKETS)
}

impl Default for PodWorkerMetrics {
    fn default() -> Self {
        Self::new(Duration::from_secs(60))
    }
}

impl PodWorkerMetrics {
    /// `resync_interval` is kubelet's `syncFrequency`: the sync loop's health check allows twice that.
    pub fn new(resync_interval: Duration) -> Self {
        Self {
            durations: Family::new_with_constructor(def_histogram),
            failed_syncs: Counter::default(),
            pod_start: def_histogram(),
            sync_loop: SyncLoopMonitor::new(resync_interval),
        }
    }

    pub fn record(&self, took: Duration, failed: bool) {
        self.durations.get_or_create(&[("operation_type", SYNC_OPERATION)]).observe(took.as_secs_f64());
        if failed {
            self.failed_syncs.inc();
        }
    }

    /// kubelet's `PodStartDuration`: from first seeing the pod to all its containers running.
    pub fn observe_pod_start(&self, took: Duration) {
        self.pod_start.observe(took.as_secs_f64());
    }
}

/// kubelet's `syncLoopMonitor`: when the pod manager's loop last began an iteration.
#[derive(Debug)]
pub struct SyncLoopMonitor {
    entered_unix_ms: AtomicU64,
    resync_interval: Duration,
}

/// The least time the sync loop may go without an iteration before `/healthz` fails (`syncLoopHealthCheck`,
/// pkg/kubelet/server/server.go).
const SYNC_LOOP_MIN_DURATION: Duration = Duration::from_secs(5 * 60);

fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).unwrap_or_default().as_millis().try_into().unwrap_or(u64::MAX)
}

impl SyncLoopMonitor {
    pub fn new(resync_interval: Duration) -> Self {
        Self { entered_unix_ms: AtomicU64::new(0), resync_interval }
    }

    /// The loop begins an iteration now.
    pub fn store_now(&self) {
        self.entered_unix_ms.store(unix_ms(SystemTime::now()), Ordering::Relaxed);
    }

    /// kubelet's `syncLoopHealthCheck` at `now`: fails once the loop has not begun an iteration for twice the
    /// resync interval (at least five minutes); a loop that never began is not failed.
    pub fn check_at(&self, now: SystemTime) -> Result<(), &'static str> {
        let entered = self.entered_unix_ms.load(Ordering::Relaxed);
        let allowed = (self.resync_interval * 2).max(SYNC_LOOP_MIN_DURATION);
        let allowed_ms: u64 = allowed.as_millis().try_into().unwrap_or(u64::MAX);
        if entered != 0 && unix_ms(now) > entered.saturating_add(allowed_ms) {
            Err("sync Loop took longer than expected")
        } else {
            Ok(())
        }
    }

    /// Sets when the last iteration began (tests).
    pub fn set_entered(&self, at: SystemTime) {
        self.entered_unix_ms.store(unix_ms(at), Ordering::Relaxed);
    }
}

/// `[ALPHA]` is how component-base prefixes the help of an alpha metric.
mod help {
    pub const POD_START: &str =
        "[ALPHA] Duration in seconds from kubelet seeing a pod for the first time to the pod starting to run";
    pub const POD_WORKER: &str =
        "[ALPHA] Duration in seconds to sync a single pod. Broken down by operation type: create, update, or sync";
    pub const PLEG_RELIST_DURATION: &str = "[ALPHA] Duration in seconds for relisting pods in PLEG.";
    pub const PLEG_RELIST_INTERVAL: &str = "[ALPHA] Interval in seconds between relisting in PLEG.";
    pub const PLEG_LAST_SEEN: &str = "[ALPHA] Timestamp in seconds when PLEG was last seen active.";
    pub const RUNNING_PODS: &str = "[ALPHA] Number of pods that have a running pod sandbox";
    pub const RUNNING_CONTAINERS: &str = "[ALPHA] Number of containers currently running";
    pub const RUNTIME_OPERATIONS: &str = "[ALPHA] Cumulative number of runtime operations by operation type.";
    pub const RUNTIME_OPERATIONS_DURATION: &str =
        "[ALPHA] Duration in seconds of runtime operations. Broken down by operation type.";
    pub const RUNTIME_OPERATIONS_ERRORS: &str =
        "[ALPHA] Cumulative number of runtime operation errors by operation type.";
    pub const FAILED_SYNCS: &str = "Pod syncs that ended with an error and were requeued.";
}

/// The volume stats families of kubelet's `volumeStatsCollector` (name, help). kubelet writes them only for volumes
/// backed by a PersistentVolumeClaim, labelled `namespace` and `persistentvolumeclaim`; this node mounts no PVC
/// volumes (emptyDir, configMap, secret, downwardAPI, projected and hostPath only), so the families have no series.
pub const VOLUME_STATS: [(&str, &str); 6] = [
    ("kubelet_volume_stats_available_bytes", "[ALPHA] Number of available bytes in the volume"),
    ("kubelet_volume_stats_capacity_bytes", "[ALPHA] Capacity in bytes of the volume"),
    ("kubelet_volume_stats_inodes", "[ALPHA] Maximum number of inodes in the volume"),
    ("kubelet_volume_stats_inodes_free", "[ALPHA] Number of free inodes in the volume"),
    ("kubelet_volume_stats_inodes_used", "[ALPHA] Number of used inodes in the volume"),
    ("kubelet_volume_stats_used_bytes", "[ALPHA] Number of used bytes in the volume"),
];

/// kubelet's `/metrics` registry, sorted by name as Go's registry writes it.
pub fn kubelet_registry(s: &ServerState) -> Registry {
    let mut r = Registry::default();
    let pleg = &s.pleg.metrics;
    let mut last_seen = ConstFamily::gauge("kubelet_pleg_last_seen_seconds", help::PLEG_LAST_SEEN);
    if let Some(t) = s.pleg.last_seen_seconds() {
        last_seen.push(vec![], t.trunc());
    }
    r.register_collector(Box::new(last_seen));
    register(&mut r, "kubelet_pleg_relist_duration_seconds", help::PLEG_RELIST_DURATION, pleg.relist_duration.clone());
    register(&mut r, "kubelet_pleg_relist_interval_seconds", help::PLEG_RELIST_INTERVAL, pleg.relist_interval.clone());
    register(&mut r, "kubelet_pod_start_duration_seconds", help::POD_START, s.pod_workers.pod_start.clone());
    register(&mut r, "kubelet_pod_worker_duration_seconds", help::POD_WORKER, s.pod_workers.durations.clone());
    register(&mut r, "kubelet_running_containers", help::RUNNING_CONTAINERS, pleg.running_containers.clone());
    register(&mut r, "kubelet_running_pods", help::RUNNING_PODS, pleg.running_pods.clone());
    let rt = &s.runtime_metrics;
    register(
        &mut r,
        "kubelet_runtime_operations_duration_seconds",
        help::RUNTIME_OPERATIONS_DURATION,
        rt.durations.clone(),
    );
    register(&mut r, "kubelet_runtime_operations_errors", help::RUNTIME_OPERATIONS_ERRORS, rt.errors.clone());
    register(&mut r, "kubelet_runtime_operations", help::RUNTIME_OPERATIONS, rt.operations.clone());
    for (name, help) in VOLUME_STATS {
        register(&mut r, name, help, Family::<[(&'static str, String); 2], Gauge>::default());
    }
    register(&mut r, "rkubelet_pod_worker_failed_syncs", help::FAILED_SYNCS, s.pod_workers.failed_syncs.clone());
    r
}

/// One health check of `/healthz` (k8s.io/apiserver/pkg/server/healthz).
type Check = (&'static str, fn(&ServerState) -> Result<(), &'static str>);

/// kubelet's checks: `ping` and `log` always pass here (the log writer does not block), `syncloop` is
/// `syncLoopHealthCheck`.
const CHECKS: [Check; 3] =
    [("ping", |_| Ok(())), ("log", |_| Ok(())), ("syncloop", |s| s.pod_workers.sync_loop.check_at(SystemTime::now()))];

fn text(status: StatusCode, body: String) -> Response {
    (status, [(header::CONTENT_TYPE, "text/plain; charset=utf-8"), (header::X_CONTENT_TYPE_OPTIONS, "nosniff")], body)
        .into_response()
}

/// `/healthz`: `ok`, or with `verbose` each check's line; on a failure every check's line and 500, the reason
/// withheld (`handleRootHealth`). `exclude=<name>` skips a check.
pub fn healthz(s: &ServerState, query: Option<&str>) -> Response {
    let pairs = crate::server::containers::query_pairs(query);
    let verbose = pairs.iter().any(|(k, _)| k == "verbose");
    let mut excluded: Vec<String> = pairs.iter().filter(|(k, _)| k == "exclude").map(|(_, v)| v.clone()).collect();
    let mut out = String::new();
    let mut failed = false;
    for (name, check) in CHECKS {
        if let Some(i) = excluded.iter().position(|e| e == name) {
            excluded.remove(i);
            out.push_str(&format!("[+]{name} excluded: ok\n"));
            continue;
        }
        match check(s) {
            Ok(()) => out.push_str(&format!("[+]{name} ok\n")),
            Err(reason) => {
                tracing::info!(check = name, "healthz check failed: {reason}");
                out.push_str(&format!("[-]{name} failed: reason withheld\n"));
                failed = true;
            }
        }
    }
    if !excluded.is_empty() {
        let quoted: Vec<String> = excluded.iter().map(|e| format!("{e:?}")).collect();
        out.push_str(&format!("warn: some health checks cannot be excluded: no matches for {}\n", quoted.join(",")));
    }
    if failed {
        // Go's `http.Error` ends the message with a newline.
        return text(StatusCode::INTERNAL_SERVER_ERROR, format!("{out}healthz check failed\n"));
    }
    if verbose {
        text(StatusCode::OK, format!("{out}healthz check passed\n"))
    } else {
        text(StatusCode::OK, "ok".into())
    }
}

/// `/healthz/<name>`: one check (`adaptCheckToHandler`), with its reason.
pub fn healthz_check(s: &ServerState, name: &str) -> Response {
    match CHECKS.iter().find(|(n, _)| *n == name) {
        Some((_, check)) => match check(s) {
            Ok(()) => text(StatusCode::OK, "ok".into()),
            Err(reason) => text(StatusCode::INTERNAL_SERVER_ERROR, format!("internal server error: {reason}\n")),
        },
        None => text(StatusCode::NOT_FOUND, "404 page not found\n".into()),
    }
}

/// A reader of the text format for the tests: each family's type, and each sample's name, labels and value.
#[cfg(test)]
pub(crate) mod parse {
    use std::collections::BTreeMap;

    #[derive(Debug, Clone, PartialEq)]
    pub struct Sample {
        pub name: String,
        pub labels: BTreeMap<String, String>,
        pub value: f64,
    }

    #[derive(Debug, Default)]
    pub struct Exposition {
        pub types: BTreeMap<String, String>,
        pub helps: BTreeMap<String, String>,
        pub samples: Vec<Sample>,
    }

    impl Exposition {
        pub fn series(&self, name: &str) -> Vec<&Sample> {
            self.samples.iter().filter(|s| s.name == name).collect()
        }
    }

    fn labels(text: &str) -> BTreeMap<String, String> {
        let mut out = BTreeMap::new();
        let mut rest = text;
        while let Some((key, after)) = rest.split_once("=\"") {
            let mut value = String::new();
            let mut chars = after.char_indices();
            let mut end = after.len();
            while let Some((i, c)) = chars.next() {
                match c {
                    '\\' => {
                        if let Some((_, n)) = chars.next() {
                            value.push(if n == 'n' { '\n' } else { n });
                        }
                    }
                    '"' => {
                        end = i + 1;
                        break;
                    }
                    c => value.push(c),
                }
            }
            out.insert(key.trim_start_matches(',').to_owned(), value);
            rest = &after[end..];
        }
        out
    }

    pub fn parse(text: &str) -> Exposition {
        let mut e = Exposition::default();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, kind) = rest.split_once(' ').unwrap_or((rest, ""));
                e.types.insert(name.to_owned(), kind.to_owned());
            } else if let Some(rest) = line.strip_prefix("# HELP ") {
                let (name, help) = rest.split_once(' ').unwrap_or((rest, ""));
                e.helps.insert(name.to_owned(), help.to_owned());
            } else if !line.is_empty() {
                let (series, value) = line.rsplit_once(' ').unwrap_or((line, ""));
                let (name, labels) = match series.split_once('{') {
                    Some((n, l)) => (n, labels(l.trim_end_matches('}'))),
                    None => (series, BTreeMap::new()),
                };
                let value = match value {
                    "+Inf" => f64::INFINITY,
                    v => v.parse().unwrap_or(f64::NAN),
                };
                e.samples.push(Sample { name: name.to_owned(), labels, value });
            }
        }
        e
    }
}

#[cfg(test)]
mod tests {
    use super::parse::parse;
    use super::*;
    use std::sync::Arc;

    fn state() -> ServerState {
        ServerState {
            store: Default::default(),
            runtime_metrics: Arc::default(),
            pod_workers: Arc::new(PodWorkerMetrics::new(Duration::from_secs(10))),
            pleg: Default::default(),
        }
    }

    async fn body(r: Response) -> (StatusCode, String) {
        let status = r.status();
        let bytes = axum::body::to_bytes(r.into_body(), usize::MAX).await.unwrap_or_default();
        (status, String::from_utf8_lossy(&bytes).into_owned())
    }

    /// The families of kubelet's `/metrics` come out with kubelet's names, types, labels and buckets.
    #[tokio::test]
    async fn kubelet_metrics_have_kubelets_names_types_and_buckets() {
        let s = state();
        s.runtime_metrics.record("RunPodSandbox", Duration::from_millis(300), true);
        s.runtime_metrics.record("ListPodSandbox", Duration::from_millis(2), false);
        s.pod_workers.record(Duration::from_millis(40), false);
        s.pod_workers.record(Duration::from_millis(40), true);
        s.pod_workers.observe_pod_start(Duration::from_secs(3));
        s.pleg.metrics.relist_duration.observe(0.01);
        s.pleg.metrics.running_pods.set(2);
        s.pleg.metrics.running_containers.get_or_create(&[("container_state", "running")]).set(3);
        let (status, text) = body(exposition(&kubelet_registry(&s))).await;
        assert_eq!(status, StatusCode::OK);
        let e = parse(&text);
        for (name, kind) in [
            ("kubelet_runtime_operations_total", "counter"),
            ("kubelet_runtime_operations_errors_total", "counter"),
            ("kubelet_runtime_operations_duration_seconds", "histogram"),
            ("kubelet_pod_worker_duration_seconds", "histogram"),
            ("kubelet_pod_start_duration_seconds", "histogram"),
            ("kubelet_pleg_relist_duration_seconds", "histogram"),
            ("kubelet_pleg_relist_interval_seconds", "histogram"),
            ("kubelet_running_pods", "gauge"),
            ("kubelet_running_containers", "gauge"),
        ] {
            assert_eq!(e.types.get(name).map(String::as_str), Some(kind), "{name} in\n{text}");
            assert!(e.helps.get(name).is_some_and(|h| h.starts_with("[ALPHA] ")), "{name} help in\n{text}");
        }
        assert!(!text.contains("rkubelet_pod_start_seconds"), "the per-pod gauge is gone:\n{text}");
        let ops = e.series("kubelet_runtime_operations_total");
        let op = |s: &&parse::Sample| s.labels.get("operation_type").cloned().unwrap_or_default();
        let mut names: Vec<String> = ops.iter().map(op).collect();
        names.sort();
        assert_eq!(names, ["list_podsandbox", "run_podsandbox"]);
        let errors = e.series("kubelet_runtime_operations_errors_total");
        assert_eq!(errors.len(), 1);
        assert_eq!((op(&errors[0]), errors[0].value), ("list_podsandbox".to_owned(), 1.0));
        // ExponentialBuckets(.005, 2.5, 14), then +Inf.
        let les: Vec<f64> = e
            .series("kubelet_runtime_operations_duration_seconds_bucket")
            .iter()
            .filter(|s| op(s) == "run_podsandbox")
            .map(|s| s.labels["le"].parse::<f64>().unwrap_or(f64::NAN))
            .collect();
        assert_eq!(les.len(), 15, "{les:?}");
        assert!((les[0] - 0.005).abs() < 1e-12 && (les[13] - 0.005 * 2.5f64.powi(13)).abs() < 1e-6, "{les:?}");
        let worker = e.series("kubelet_pod_worker_duration_seconds_count");
        assert_eq!(worker.len(), 1);
        assert_eq!((worker[0].labels["operation_type"].as_str(), worker[0].value), ("sync", 2.0));
        let start: Vec<&str> = e
            .series("kubelet_pod_start_duration_seconds_bucket")
            .iter()
            .map(|s| s.labels["le"].as_str())
            .collect::<Vec<_>>();
        assert_eq!(start.len(), DEF_BUCKETS.len() + 1);
        assert_eq!(e.series("kubelet_pod_start_duration_seconds_count")[0].value, 1.0);
        assert_eq!(e.series("kubelet_running_pods")[0].value, 2.0);
        let running = e.series("kubelet_running_containers");
        assert_eq!((running[0].labels["container_state"].as_str(), running[0].value), ("running", 3.0));
        assert_eq!(e.series("rkubelet_pod_worker_failed_syncs_total")[0].value, 1.0);
    }

    /// `/healthz` has kubelet's checks and answers as the API server library does.
    #[tokio::test]
    async fn healthz_lists_ping_log_and_syncloop() {
        let s = state();
        assert_eq!(body(healthz(&s, None)).await, (StatusCode::OK, "ok".into()));
        let verbose = body(healthz(&s, Some("verbose"))).await;
        assert_eq!(verbose, (StatusCode::OK, "[+]ping ok\n[+]log ok\n[+]syncloop ok\nhealthz check passed\n".into()));
        assert_eq!(body(healthz_check(&s, "ping")).await, (StatusCode::OK, "ok".into()));
        assert_eq!(body(healthz_check(&s, "nope")).await.0, StatusCode::NOT_FOUND);

        // A sync loop that last began an iteration more than five minutes ago (twice a 10 s resync is less).
        s.pod_workers.sync_loop.store_now();
        assert_eq!(body(healthz(&s, None)).await, (StatusCode::OK, "ok".into()));
        s.pod_workers.sync_loop.set_entered(SystemTime::now() - Duration::from_secs(301));
        let failed = body(healthz(&s, None)).await;
        assert_eq!(
            failed,
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                "[+]ping ok\n[+]log ok\n[-]syncloop failed: reason withheld\nhealthz check failed\n".into()
            )
        );
        assert_eq!(
            body(healthz_check(&s, "syncloop")).await,
            (StatusCode::INTERNAL_SERVER_ERROR, "internal server error: sync Loop took longer than expected\n".into())
        );
        let excluded = body(healthz(&s, Some("verbose&exclude=syncloop"))).await;
        assert_eq!(
            excluded,
            (StatusCode::OK, "[+]ping ok\n[+]log ok\n[+]syncloop excluded: ok\nhealthz check passed\n".into())
        );
    }

    #[test]
    fn the_sync_loop_may_take_twice_the_resync_interval_when_that_is_longer() {
        let m = SyncLoopMonitor::new(Duration::from_secs(600));
        let now = SystemTime::now();
        m.set_entered(now - Duration::from_secs(1100));
        assert!(m.check_at(now).is_ok());
        m.set_entered(now - Duration::from_secs(1300));
        assert!(m.check_at(now).is_err());
    }
}
