//! Per-key exponential back-off with explicit times, kubelet's `flowcontrol.Backoff`: used for restarting crashed
//! containers (keyed by pod, container and spec hash) and for image pulls (keyed by pod and image).

use std::collections::HashMap;
use std::time::{Duration, SystemTime};

/// kubelet's container restart back-off: 10 s doubling to 300 s (`backOffPeriod`, `MaxContainerBackOff`).
pub const INITIAL_BACKOFF: Duration = Duration::from_secs(10);
pub const MAX_BACKOFF: Duration = Duration::from_secs(300);

#[derive(Debug, Clone, Copy, PartialEq)]
struct Entry {
    backoff: Duration,
    last_update: SystemTime,
}

#[derive(Debug, Clone)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    entries: HashMap<String, Entry>,
}

impl Default for Backoff {
    fn default() -> Self {
        Self::new(INITIAL_BACKOFF, MAX_BACKOFF)
    }
}

fn since(later: SystemTime, earlier: SystemTime) -> Duration {
    later.duration_since(earlier).unwrap_or_default()
}

impl Backoff {
    pub fn new(initial: Duration, max: Duration) -> Self {
        Self { initial, max, entries: HashMap::new() }
    }

    /// An entry not updated for twice the maximum is forgotten: a container that ran fine for 10 minutes starts over
    /// at the initial back-off.
    fn expired(&self, entry: &Entry, at: SystemTime) -> bool {
        since(at, entry.last_update) > self.max * 2
    }

    /// Records a failure at `event_time`, doubling the back-off (or starting it).
    pub fn next(&mut self, key: &str, event_time: SystemTime) {
        let backoff = match self.entries.get(key) {
            Some(e) if !self.expired(e, event_time) => (e.backoff * 2).min(self.max),
            _ => self.initial,
        };
        self.entries.insert(key.to_owned(), Entry { backoff, last_update: event_time });
    }

    pub fn get(&self, key: &str) -> Option<Duration> {
        self.entries.get(key).map(|e| e.backoff)
    }

    /// `IsInBackOffSince`: how long is left of the back-off counted from `event_time` (a container's finish), if any.
    pub fn remaining_since(&self, key: &str, event_time: SystemTime, now: SystemTime) -> Option<Duration> {
        let e = self.entries.get(key)?;
        if self.expired(e, now) {
            return None;
        }
        e.backoff.checked_sub(since(now, event_time)).filter(|d| !d.is_zero())
    }

    /// `IsInBackOffSinceUpdate`: how long is left of the back-off counted from the last recorded failure.
    pub fn remaining_since_update(&self, key: &str, now: SystemTime) -> Option<Duration> {
        let e = self.entries.get(key)?;
        if self.expired(e, now) {
            return None;
        }
        e.backoff.checked_sub(since(now, e.last_update)).filter(|d| !d.is_zero())
    }

    /// Forgets a key: the thing it counted failures of has succeeded.
    pub fn forget(&mut self, key: &str) {
        self.entries.remove(key);
    }

    /// Forgets keys whose back-off ended long ago (kubelet's periodic `GC`).
    pub fn gc(&mut self, now: SystemTime) {
        let max = self.max;
        self.entries.retain(|_, e| since(now, e.last_update) <= max * 2);
    }
}

/// Records a failed attempt to create or start a container in the start back-off; image pull failures have their
/// own back-off and are not counted twice.
pub fn record_start_failure(
    backoff: &mut crate::pods::plan::BackoffState,
    start: &crate::pods::plan::ContainerStart,
    waiting: &crate::pods::plan::Waiting,
) {
    use crate::pods::plan::{REASON_ERR_IMAGE_PULL, REASON_IMAGE_PULL_BACK_OFF};
    if waiting.reason != REASON_ERR_IMAGE_PULL && waiting.reason != REASON_IMAGE_PULL_BACK_OFF {
        backoff.start.next(&start.backoff_key, SystemTime::now());
    }
}

/// apimachinery's `wait.Jitter`: `d` plus up to `max_factor` times `d`, scaled by `unit` in [0, 1).
pub fn jitter(d: Duration, max_factor: f64, unit: f64) -> Duration {
    d + d.mul_f64(max_factor * unit.clamp(0.0, 1.0))
}

/// A random number in [0, 1) for jitter; the standard library's per-instance random hash keys are enough here.
pub fn random_unit() -> f64 {
    use std::hash::{BuildHasher, Hasher};
    let bits = std::collections::hash_map::RandomState::new().build_hasher().finish();
    (bits >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000 + secs)
    }

    #[test]
    fn doubles_from_ten_seconds_to_five_minutes() {
        let mut b = Backoff::default();
        let mut seen = vec![];
        for i in 0..8 {
            b.next("k", t(i * 20));
            seen.push(b.get("k").unwrap().as_secs());
        }
        assert_eq!(seen, vec![10, 20, 40, 80, 160, 300, 300, 300]);
    }

    #[test]
    fn in_back_off_until_the_period_after_the_event_has_passed() {
        let mut b = Backoff::default();
        assert_eq!(b.remaining_since("k", t(0), t(0)), None, "no entry: not in back-off");
        b.next("k", t(0));
        // Finished again at t=1: 10 s of back-off count from that finish.
        assert_eq!(b.remaining_since("k", t(1), t(5)), Some(Duration::from_secs(6)));
        assert_eq!(b.remaining_since("k", t(1), t(11)), None);
    }

    #[test]
    fn resets_after_running_twice_the_maximum() {
        let mut b = Backoff::default();
        b.next("k", t(0));
        b.next("k", t(30));
        assert_eq!(b.get("k"), Some(Duration::from_secs(20)));
        // Ten minutes and more since the last failure: start over.
        b.next("k", t(30 + 601));
        assert_eq!(b.get("k"), Some(Duration::from_secs(10)));
    }

    #[test]
    fn jitter_stays_within_its_factor_and_random_units_vary() {
        let d = Duration::from_secs(10);
        assert_eq!(jitter(d, 0.5, 0.0), d);
        assert_eq!(jitter(d, 0.5, 0.5), Duration::from_millis(12_500));
        assert!(jitter(d, 0.5, 0.999) < Duration::from_secs(15));
        let units: Vec<f64> = (0..16).map(|_| random_unit()).collect();
        assert!(units.iter().all(|u| (0.0..1.0).contains(u)));
        assert!(units.windows(2).any(|w| w[0] != w[1]), "jitter must not be constant");
    }

    #[test]
    fn since_update_counts_from_the_last_failure() {
        let mut b = Backoff::default();
        b.next("img", t(100));
        assert_eq!(b.remaining_since_update("img", t(104)), Some(Duration::from_secs(6)));
        assert_eq!(b.remaining_since_update("img", t(110)), None);
        b.gc(t(100 + 601));
        assert_eq!(b.get("img"), None);
    }
}
