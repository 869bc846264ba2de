//! One probe worker's decisions, kubelet's `worker.doProbe` without the I/O: when to probe, and which result a run
//! of outcomes publishes once it crosses the success or failure threshold.

use std::time::{Duration, SystemTime};

use k8s_openapi::api::core::v1::Probe;

use crate::probes::{ProbeKind, ProbeResult};

/// kubelet's (API) defaults for a probe's fields.
pub const DEFAULT_PERIOD_SECONDS: i32 = 10;
pub const DEFAULT_TIMEOUT_SECONDS: i32 = 1;
pub const DEFAULT_SUCCESS_THRESHOLD: i32 = 1;
pub const DEFAULT_FAILURE_THRESHOLD: i32 = 3;

/// A probe's timing and thresholds with the API defaults applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProbeParams {
    pub initial_delay: Duration,
    pub period: Duration,
    pub timeout: Duration,
    pub success_threshold: u32,
    pub failure_threshold: u32,
}

fn secs(v: Option<i32>, default: i32, min: i32) -> u64 {
    let v = v.filter(|v| *v > 0).unwrap_or(default).max(min);
    u64::try_from(v).unwrap_or(0)
}

impl ProbeParams {
    pub fn of(kind: ProbeKind, probe: &Probe) -> Self {
        // Validation holds liveness and startup to a success threshold of 1; a file-based pod is not validated.
        let success = match kind {
            ProbeKind::Readiness => secs(probe.success_threshold, DEFAULT_SUCCESS_THRESHOLD, 1),
            ProbeKind::Liveness | ProbeKind::Startup => 1,
        };
        Self {
            initial_delay: Duration::from_secs(
                probe.initial_delay_seconds.filter(|d| *d > 0).map_or(0, |d| u64::try_from(d).unwrap_or(0)),
            ),
            period: Duration::from_secs(secs(probe.period_seconds, DEFAULT_PERIOD_SECONDS, 1)),
            timeout: Duration::from_secs(secs(probe.timeout_seconds, DEFAULT_TIMEOUT_SECONDS, 1)),
            success_threshold: u32::try_from(success).unwrap_or(1),
            failure_threshold: u32::try_from(secs(probe.failure_threshold, DEFAULT_FAILURE_THRESHOLD, 1)).unwrap_or(3),
        }
    }
}

/// What one run of a probe handler gave, kubelet's `probe.Result`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Success,
    /// Succeeded with something to say (a redirect to another host): counts as success.
    Warning,
    Failure,
    /// The probe could not be run; the outcome is thrown away.
    Unknown,
}

/// The state of one probe of one container instance.
#[derive(Debug, Clone)]
pub struct ProbeState {
    pub kind: ProbeKind,
    pub params: ProbeParams,
    last: Option<ProbeResult>,
    run: u32,
    /// A failed liveness or startup probe stops probing until the container is replaced.
    on_hold: bool,
    published: Option<ProbeResult>,
}

impl ProbeState {
    pub fn new(kind: ProbeKind, params: ProbeParams) -> Self {
        Self { kind, params, last: None, run: 0, on_hold: false, published: Self::initial(kind) }
    }

    /// kubelet's initial value of each probe's result: a readiness probe fails until it passes, liveness passes
    /// until it fails, and startup has no result until it has been decided.
    pub fn initial(kind: ProbeKind) -> Option<ProbeResult> {
        match kind {
            ProbeKind::Readiness => Some(ProbeResult::Failure),
            ProbeKind::Liveness => Some(ProbeResult::Success),
            ProbeKind::Startup => None,
        }
    }

    pub fn published(&self) -> Option<ProbeResult> {
        self.published
    }

    /// Whether to run the probe now: not during the initial delay (whole seconds since the container started, as
    /// kubelet counts them), liveness and readiness only once the container has started (its startup probe
    /// passed), startup only until then, and nothing while on hold. Liveness and startup are not probed while the
    /// pod is being deleted.
    pub fn should_probe(&self, started_at: SystemTime, now: SystemTime, started: bool, deleting: bool) -> bool {
        if self.on_hold {
            return false;
        }
        let running_for = now.duration_since(started_at).unwrap_or_default().as_secs();
        if running_for < self.params.initial_delay.as_secs() {
            return false;
        }
        match self.kind {
            ProbeKind::Startup => !started && !deleting,
            ProbeKind::Liveness => started && !deleting,
            ProbeKind::Readiness => started,
        }
    }

    /// Records one outcome; returns the new result when the published one changes (or is first decided).
    pub fn record(&mut self, outcome: Outcome) -> Option<ProbeResult> {
        let result = match outcome {
            Outcome::Success | Outcome::Warning => ProbeResult::Success,
            Outcome::Failure => ProbeResult::Failure,
            Outcome::Unknown => return None,
        };
        if self.last == Some(result) {
            self.run = self.run.saturating_add(1);
        } else {
            self.last = Some(result);
            self.run = 1;
        }
        let threshold = match result {
            ProbeResult::Success => self.params.success_threshold,
            ProbeResult::Failure => self.params.failure_threshold,
        };
        if self.run < threshold {
            return None;
        }
        if result == ProbeResult::Failure && matches!(self.kind, ProbeKind::Liveness | ProbeKind::Startup) {
            self.on_hold = true;
            self.run = 0;
        }
        let changed = self.published != Some(result);
        self.published = Some(result);
        changed.then_some(result)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000 + secs)
    }

    fn probe(delay: i32, success: i32, failure: i32) -> Probe {
        Probe {
            initial_delay_seconds: Some(delay),
            success_threshold: Some(success),
            failure_threshold: Some(failure),
            ..Default::default()
        }
    }

    #[test]
    fn defaults_are_kubelets() {
        let p = ProbeParams::of(ProbeKind::Readiness, &Probe::default());
        assert_eq!(
            p,
            ProbeParams {
                initial_delay: Duration::ZERO,
                period: Duration::from_secs(10),
                timeout: Duration::from_secs(1),
                success_threshold: 1,
                failure_threshold: 3,
            }
        );
        // Liveness is held to one success whatever the spec says.
        assert_eq!(ProbeParams::of(ProbeKind::Liveness, &probe(0, 5, 2)).success_threshold, 1);
        assert_eq!(ProbeParams::of(ProbeKind::Readiness, &probe(0, 5, 2)).success_threshold, 5);
    }

    #[test]
    fn initial_values_and_thresholds() {
        let mut r = ProbeState::new(ProbeKind::Readiness, ProbeParams::of(ProbeKind::Readiness, &probe(0, 2, 3)));
        assert_eq!(r.published(), Some(ProbeResult::Failure), "readiness starts failed");
        assert_eq!(r.record(Outcome::Success), None, "one success is below the threshold of 2");
        assert_eq!(r.record(Outcome::Success), Some(ProbeResult::Success));
        assert_eq!(r.record(Outcome::Success), None, "unchanged");
        assert_eq!(r.record(Outcome::Failure), None);
        assert_eq!(r.record(Outcome::Unknown), None, "an errored probe is thrown away and breaks no run");
        assert_eq!(r.record(Outcome::Failure), None);
        assert_eq!(r.record(Outcome::Failure), Some(ProbeResult::Failure));
        // Readiness keeps probing after a failure and comes back.
        assert!(r.should_probe(t(0), t(100), true, false));
        assert_eq!(r.record(Outcome::Warning), None);
        assert_eq!(r.record(Outcome::Success), Some(ProbeResult::Success));
    }

    #[test]
    fn a_failing_liveness_probe_publishes_once_at_the_threshold_then_holds() {
        let mut l = ProbeState::new(ProbeKind::Liveness, ProbeParams::of(ProbeKind::Liveness, &probe(0, 1, 3)));
        assert_eq!(l.published(), Some(ProbeResult::Success));
        assert_eq!(l.record(Outcome::Failure), None);
        assert_eq!(l.record(Outcome::Success), None, "a success breaks the run of failures");
        assert_eq!(l.record(Outcome::Failure), None);
        assert_eq!(l.record(Outcome::Failure), None);
        assert_eq!(l.record(Outcome::Failure), Some(ProbeResult::Failure));
        assert!(!l.should_probe(t(0), t(100), true, false), "on hold until the container is replaced");
    }

    #[test]
    fn initial_delay_and_startup_gate_the_other_probes() {
        let s = ProbeState::new(ProbeKind::Startup, ProbeParams::of(ProbeKind::Startup, &probe(5, 1, 3)));
        assert_eq!(s.published(), None);
        assert!(!s.should_probe(t(0), t(4), false, false), "4.x s is within a 5 s delay");
        assert!(s.should_probe(t(0), t(5), false, false));
        assert!(!s.should_probe(t(0), t(5), true, false), "startup stops once started");
        assert!(!s.should_probe(t(0), t(5), false, true), "no startup probe while the pod is deleted");
        let l = ProbeState::new(ProbeKind::Liveness, ProbeParams::of(ProbeKind::Liveness, &probe(0, 1, 3)));
        assert!(!l.should_probe(t(0), t(30), false, false), "liveness waits for the startup probe");
        assert!(l.should_probe(t(0), t(30), true, false));
        assert!(!l.should_probe(t(0), t(30), true, true), "no liveness while the pod is deleted");
        let r = ProbeState::new(ProbeKind::Readiness, ProbeParams::of(ProbeKind::Readiness, &probe(0, 1, 3)));
        assert!(r.should_probe(t(0), t(30), true, true), "readiness goes on during deletion");
    }

    #[test]
    fn startup_failure_at_the_threshold_and_success_at_once() {
        let mut s = ProbeState::new(ProbeKind::Startup, ProbeParams::of(ProbeKind::Startup, &probe(0, 1, 2)));
        assert_eq!(s.record(Outcome::Success), Some(ProbeResult::Success));
        let mut s = ProbeState::new(ProbeKind::Startup, ProbeParams::of(ProbeKind::Startup, &probe(0, 1, 2)));
        assert_eq!(s.record(Outcome::Failure), None);
        assert_eq!(s.record(Outcome::Failure), Some(ProbeResult::Failure));
    }
}
