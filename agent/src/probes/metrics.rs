//! kubelet's prober metrics, served on `/metrics/probes`: `prober_probe_total` counts probe runs by result and
//! `prober_probe_duration_seconds` observes how long successful runs took. Workers report each run here; the series
//! of a probe go away when its worker does, as in kubelet. A run that errored (the probe could not be run) is thrown
//! away uncounted, as kubelet's worker does; kubelet's `unknown` result comes only from a result its prober never
//! returns, so only `successful` and `failed` appear.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::{LazyLock, Mutex};
use std::time::Duration;

use crate::probes::state::Outcome;
use crate::probes::ProbeKind;

/// Prometheus' default buckets, which kubelet's duration histogram uses.
const BUCKETS: [f64; 11] = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

/// The pod a probe belongs to, as the metrics label it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct ProbeTarget {
    pub namespace: String,
    pub pod: String,
    pub pod_uid: String,
    pub container: String,
    pub kind: ProbeKind,
}

#[derive(Debug, Clone, Default, PartialEq)]
struct Series {
    successful: u64,
    failed: u64,
    /// Per bucket of [`BUCKETS`], not cumulative.
    buckets: [u64; BUCKETS.len()],
    count: u64,
    sum: f64,
}

/// The prober's metrics: a sink the probe workers report to.
#[derive(Debug, Default)]
pub struct ProberMetrics {
    series: Mutex<BTreeMap<ProbeTarget, Series>>,
}

/// The process's prober metrics, like kubelet's registered `ProberResults` and `ProberDuration`.
pub static PROBER_METRICS: LazyLock<ProberMetrics> = LazyLock::new(ProberMetrics::default);

/// kubelet's `probeType.String()`.
fn probe_type(kind: ProbeKind) -> &'static str {
    kind.title()
}

impl ProberMetrics {
    /// One probe run: kubelet counts a warning as a success and observes the duration of successful runs only.
    pub fn observe(&self, target: &ProbeTarget, outcome: Outcome, took: Duration) {
        if outcome == Outcome::Unknown {
            return;
        }
        let Ok(mut all) = self.series.lock() else { return };
        let s = all.entry(target.clone()).or_default();
        if outcome == Outcome::Failure {
            s.failed += 1;
            return;
        }
        s.successful += 1;
        let secs = took.as_secs_f64();
        if let Some(i) = BUCKETS.iter().position(|b| secs <= *b) {
            s.buckets[i] += 1;
        }
        s.count += 1;
        s.sum += secs;
    }

    /// Drops the series of a probe whose worker stopped.
    pub fn forget(&self, target: &ProbeTarget) {
        if let Ok(mut all) = self.series.lock() {
            all.remove(target);
        }
    }

    /// The Prometheus text exposition of both families.
    pub fn render(&self) -> String {
        let all = self.series.lock().map(|s| s.clone()).unwrap_or_default();
        let mut out = String::from(
            "# HELP prober_probe_duration_seconds [ALPHA] Duration in seconds for a probe response.\n\
             # TYPE prober_probe_duration_seconds histogram\n",
        );
        for (t, s) in all.iter().filter(|(_, s)| s.count > 0) {
            let labels = format!(
                "container=\"{}\",namespace=\"{}\",pod=\"{}\",probe_type=\"{}\"",
                t.container,
                t.namespace,
                t.pod,
                probe_type(t.kind)
            );
            let mut cumulative = 0;
            for (b, n) in BUCKETS.iter().zip(s.buckets) {
                cumulative += n;
                let _ = writeln!(out, "prober_probe_duration_seconds_bucket{{{labels},le=\"{b}\"}} {cumulative}");
            }
            let _ = writeln!(out, "prober_probe_duration_seconds_bucket{{{labels},le=\"+Inf\"}} {}", s.count);
            let _ = writeln!(out, "prober_probe_duration_seconds_sum{{{labels}}} {}", s.sum);
            let _ = writeln!(out, "prober_probe_duration_seconds_count{{{labels}}} {}", s.count);
        }
        out.push_str(
            "# HELP prober_probe_total [ALPHA] Cumulative number of a liveness, readiness or startup probe for a \
             container by result.\n# TYPE prober_probe_total counter\n",
        );
        for (t, s) in &all {
            for (result, n) in [("failed", s.failed), ("successful", s.successful)] {
                if n == 0 {
                    continue;
                }
                let _ = writeln!(
                    out,
                    "prober_probe_total{{container=\"{}\",namespace=\"{}\",pod=\"{}\",pod_uid=\"{}\",probe_type=\"{}\",result=\"{result}\"}} {n}",
                    t.container,
                    t.namespace,
                    t.pod,
                    t.pod_uid,
                    probe_type(t.kind)
                );
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(kind: ProbeKind) -> ProbeTarget {
        ProbeTarget { namespace: "ns".into(), pod: "p".into(), pod_uid: "u".into(), container: "app".into(), kind }
    }

    #[test]
    fn runs_are_counted_by_result_and_successful_durations_observed() {
        let m = ProberMetrics::default();
        let r = target(ProbeKind::Readiness);
        m.observe(&r, Outcome::Success, Duration::from_millis(20));
        m.observe(&r, Outcome::Warning, Duration::from_millis(300));
        m.observe(&r, Outcome::Failure, Duration::from_millis(1));
        m.observe(&target(ProbeKind::Liveness), Outcome::Failure, Duration::from_millis(1));
        // A run that could not be made is not counted.
        m.observe(&target(ProbeKind::Startup), Outcome::Unknown, Duration::from_millis(1));
        let text = m.render();
        let labels = "container=\"app\",namespace=\"ns\",pod=\"p\",pod_uid=\"u\"";
        assert!(
            text.contains(&format!(
                "prober_probe_total{{{labels},probe_type=\"Readiness\",result=\"successful\"}} 2\n"
            )),
            "{text}"
        );
        assert!(
            text.contains(&format!("prober_probe_total{{{labels},probe_type=\"Readiness\",result=\"failed\"}} 1\n")),
            "{text}"
        );
        assert!(
            text.contains(&format!("prober_probe_total{{{labels},probe_type=\"Liveness\",result=\"failed\"}} 1\n")),
            "{text}"
        );
        let d = "container=\"app\",namespace=\"ns\",pod=\"p\",probe_type=\"Readiness\"";
        assert!(text.contains(&format!("prober_probe_duration_seconds_bucket{{{d},le=\"0.025\"}} 1\n")), "{text}");
        assert!(text.contains(&format!("prober_probe_duration_seconds_bucket{{{d},le=\"0.5\"}} 2\n")), "{text}");
        assert!(text.contains(&format!("prober_probe_duration_seconds_count{{{d}}} 2\n")), "{text}");
        // The liveness probe only failed: no duration series.
        assert!(!text.contains(
            "prober_probe_duration_seconds_count{container=\"app\",namespace=\"ns\",pod=\"p\",probe_type=\"Liveness\"}"
        ));
        assert!(!text.contains("Startup"), "{text}");
        m.forget(&r);
        assert!(!m.render().contains("Readiness"));
    }
}
