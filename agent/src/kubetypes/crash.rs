//! A long-running task of one pod (its worker, a probe) that panics is started again after a back-off instead of
//! taking the agent down, and says so on the pod; fault injection lets the tests make it panic.

use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;

/// The event of a worker that panicked and was started again. kubelet has no such event: its goroutines end in
/// `runtime.HandleCrash`, which re-panics, so a panic there ends the whole kubelet (and systemd starts it again).
/// Here one pod's worker is restarted instead, and this reason, ours, says so on the pod.
pub const WORKER_PANICKED: &str = "WorkerPanicked";
/// A worker that panicked is started again after this long, doubling up to [`PANIC_BACK_OFF_MAX`] while it keeps
/// panicking: a deterministic panic costs a log line and an event per period, not a spinning core.
pub const PANIC_BACK_OFF_INITIAL: Duration = Duration::from_secs(1);
pub const PANIC_BACK_OFF_MAX: Duration = Duration::from_secs(60);

/// The back-off of a supervised worker that panicked: doubling, and back to its start after a worker that ran a
/// whole maximum period.
#[derive(Debug, Clone, Copy)]
pub struct PanicBackOff {
    next: Duration,
}

impl Default for PanicBackOff {
    fn default() -> Self {
        Self { next: PANIC_BACK_OFF_INITIAL }
    }
}

impl PanicBackOff {
    /// How long to wait before the next start, after a worker that ran for `ran`.
    pub fn after(&mut self, ran: Duration) -> Duration {
        if ran >= PANIC_BACK_OFF_MAX {
            self.next = PANIC_BACK_OFF_INITIAL;
        }
        let wait = self.next;
        self.next = (self.next * 2).min(PANIC_BACK_OFF_MAX);
        wait
    }
}

/// The text of a panic's payload.
pub fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "(no message)".to_owned())
}

/// The environment variable of [`inject_panic`], read in debug builds only.
pub const INJECT_PANIC_ENV: &str = "RKUBELET_INJECT_PANIC";

/// Fault injection for the supervision tests: in a debug build, `RKUBELET_INJECT_PANIC=<site>:<namespace>/<name>`
/// (comma-separated; sites `pod-worker-terminate` and `probe`) makes that pod's worker panic once at that site. It
/// is an environment variable of the agent's process, which pod authors do not set, and a release build does not
/// read it at all: the test harness runs the debug build, so no feature or build of its own is needed.
#[cfg(debug_assertions)]
pub fn inject_panic(site: &str, pod: &Pod) {
    static FIRED: std::sync::Mutex<std::collections::BTreeSet<String>> =
        std::sync::Mutex::new(std::collections::BTreeSet::new());
    let Ok(wanted) = std::env::var(INJECT_PANIC_ENV) else { return };
    let here = format!("{site}:{}", crate::kubetypes::spec::key(pod));
    if wanted.split(',').any(|w| w == here) && FIRED.lock().is_ok_and(|mut f| f.insert(here.clone())) {
        panic!("injected panic at {here}");
    }
}

#[cfg(not(debug_assertions))]
pub fn inject_panic(_site: &str, _pod: &Pod) {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panicking_worker_waits_longer_each_time_and_starts_afresh_after_a_long_run() {
        let mut b = PanicBackOff::default();
        let short = Duration::from_millis(10);
        let waits: Vec<u64> = (0..8).map(|_| b.after(short).as_secs()).collect();
        assert_eq!(waits, [1, 2, 4, 8, 16, 32, 60, 60]);
        assert_eq!(b.after(PANIC_BACK_OFF_MAX), PANIC_BACK_OFF_INITIAL);
    }

    #[test]
    fn panic_payloads_read_as_text() {
        let caught = std::panic::catch_unwind(|| panic!("boom {}", 1)).unwrap_err();
        assert_eq!(panic_message(caught.as_ref()), "boom 1");
        let caught = std::panic::catch_unwind(|| std::panic::panic_any(7)).unwrap_err();
        assert_eq!(panic_message(caught.as_ref()), "(no message)");
    }
}
