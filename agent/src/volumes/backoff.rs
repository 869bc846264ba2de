//! kubelet's back-off of failed volume operations: `nestedpendingoperations` keeps one
//! `goroutinemap/exponentialbackoff` per (volume, pod) operation, so a volume whose set-up failed is tried again after
//! 500 ms, then 1 s, 2 s, ... up to 2 min 2 s, independently of the pod's other volumes and of the pod worker's own
//! back-off; a success forgets it.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// `initialDurationBeforeRetry` (`pkg/util/goroutinemap/exponentialbackoff/exponential_backoff.go`).
pub const INITIAL_DURATION_BEFORE_RETRY: Duration = Duration::from_millis(500);
/// `maxDurationBeforeRetry` (same file): slightly off 2 minutes so that timeouts due to it are recognisable.
pub const MAX_DURATION_BEFORE_RETRY: Duration = Duration::from_secs(2 * 60 + 2);

/// kubelet's `ExponentialBackoff` of one operation.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ExponentialBackoff {
    last_error_time: Option<Instant>,
    duration_before_retry: Duration,
}

impl ExponentialBackoff {
    /// `SafeToRetry`: `Err(wait)` while `now` is within the back-off, with how long until a retry is permitted.
    pub fn safe_to_retry(&self, now: Instant) -> Result<(), Duration> {
        let Some(last) = self.last_error_time else { return Ok(()) };
        let since = now.saturating_duration_since(last);
        // Go refuses while `time.Since(lastErrorTime) <= durationBeforeRetry`: the retry is permitted only after it.
        if since <= self.duration_before_retry {
            return Err(self.duration_before_retry - since + Duration::from_millis(1));
        }
        Ok(())
    }

    /// `Update`: an attempt failed at `now`; returns the new `durationBeforeRetry`.
    pub fn update(&mut self, now: Instant) -> Duration {
        self.duration_before_retry = if self.duration_before_retry.is_zero() {
            INITIAL_DURATION_BEFORE_RETRY
        } else {
            (self.duration_before_retry * 2).min(MAX_DURATION_BEFORE_RETRY)
        };
        self.last_error_time = Some(now);
        self.duration_before_retry
    }
}

/// The back-offs of the volume set-ups that failed, by pod UID and volume name.
#[derive(Debug, Default)]
pub struct VolumeBackOffs {
    ops: Mutex<HashMap<(String, String), ExponentialBackoff>>,
}

impl VolumeBackOffs {
    fn ops(&self) -> std::sync::MutexGuard<'_, HashMap<(String, String), ExponentialBackoff>> {
        self.ops.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether the volume's set-up may run at `now`; `Err(wait)` until it may.
    pub fn safe_to_retry(&self, uid: &str, volume: &str, now: Instant) -> Result<(), Duration> {
        self.ops().get(&(uid.to_owned(), volume.to_owned())).map_or(Ok(()), |b| b.safe_to_retry(now))
    }

    /// The volume's set-up failed at `now`: returns how long until it is tried again.
    pub fn failed(&self, uid: &str, volume: &str, now: Instant) -> Duration {
        self.ops().entry((uid.to_owned(), volume.to_owned())).or_default().update(now)
    }

    /// The volume's set-up succeeded: the next failure starts from the initial duration again.
    pub fn succeeded(&self, uid: &str, volume: &str) {
        self.ops().remove(&(uid.to_owned(), volume.to_owned()));
    }

    /// The pod's volumes are torn down.
    pub fn forget_pod(&self, uid: &str) {
        self.ops().retain(|(u, _), _| u != uid);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn a_failed_operation_waits_500ms_then_doubles_up_to_2m2s() {
        let t0 = Instant::now();
        let mut b = ExponentialBackoff::default();
        assert_eq!(b.safe_to_retry(t0), Ok(()), "nothing failed yet");
        let durations: Vec<u64> = (0..12).map(|_| b.update(t0).as_millis() as u64).collect();
        assert_eq!(
            durations,
            [500, 1000, 2000, 4000, 8000, 16_000, 32_000, 64_000, 122_000, 122_000, 122_000, 122_000]
        );
    }

    #[test]
    fn a_retry_is_permitted_only_after_the_duration_has_passed() {
        let t0 = Instant::now();
        let mut b = ExponentialBackoff::default();
        b.update(t0);
        assert_eq!(b.safe_to_retry(t0), Err(501 * MS));
        assert_eq!(b.safe_to_retry(t0 + 200 * MS), Err(301 * MS));
        assert!(b.safe_to_retry(t0 + 500 * MS).is_err(), "Go refuses at exactly durationBeforeRetry");
        assert_eq!(b.safe_to_retry(t0 + 501 * MS), Ok(()));
        // The second failure, at 0.6 s, waits 1 s from then.
        let t1 = t0 + 600 * MS;
        b.update(t1);
        assert!(b.safe_to_retry(t1 + 999 * MS).is_err());
        assert_eq!(b.safe_to_retry(t1 + 1001 * MS), Ok(()));
    }

    #[test]
    fn volumes_back_off_independently_and_a_success_starts_afresh() {
        let t0 = Instant::now();
        let ops = VolumeBackOffs::default();
        assert_eq!(ops.failed("u1", "token", t0), 500 * MS);
        assert_eq!(ops.failed("u1", "token", t0), 1000 * MS);
        assert!(ops.safe_to_retry("u1", "token", t0 + 600 * MS).is_err());
        assert_eq!(ops.safe_to_retry("u1", "config", t0), Ok(()), "another volume of the pod");
        assert_eq!(ops.safe_to_retry("u2", "token", t0), Ok(()), "the same volume of another pod");
        ops.succeeded("u1", "token");
        assert_eq!(ops.safe_to_retry("u1", "token", t0), Ok(()));
        assert_eq!(ops.failed("u1", "token", t0), 500 * MS, "a success resets the back-off");
        ops.failed("u2", "token", t0);
        ops.forget_pod("u1");
        assert_eq!(ops.safe_to_retry("u1", "token", t0), Ok(()));
        assert!(ops.safe_to_retry("u2", "token", t0).is_err(), "only the torn-down pod is forgotten");
    }
}
