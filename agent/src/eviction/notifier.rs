//! kubelet's memory threshold notifier (`pkg/kubelet/eviction/memory_threshold_notifier.go` and
//! `threshold_notifier_linux.go`): on cgroup v1 the kernel signals an eventfd when a memory cgroup's usage crosses a
//! threshold registered through `cgroup.event_control`, so the eviction manager learns of a crossing between two
//! rounds without reading anything. cgroup v2 has no such notification; there the manager reads the memory signals
//! once a second instead.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use tokio::io::unix::AsyncFd;

use crate::eviction::threshold::{Signal, Threshold};
use crate::stats::summary::MemoryStats;

/// The root of the cgroup v1 memory hierarchy, kubelet's cgroup for `memory.available`.
pub const CGROUP_V1_MEMORY_ROOT: &str = "/sys/fs/cgroup/memory";
/// `memoryUsageAttribute`.
const MEMORY_USAGE_ATTRIBUTE: &str = "memory.usage_in_bytes";

/// One registration: the eventfd becomes readable each time the cgroup's usage crosses `threshold` either way.
/// Dropping it closes the eventfd, which makes the kernel drop the registration.
#[derive(Debug)]
pub struct CgroupNotifier {
    event: AsyncFd<OwnedFd>,
    // The kernel holds its own reference once registered; kept so the pair lives and dies together.
    _usage: File,
    threshold: u64,
}

impl CgroupNotifier {
    /// kubelet's `NewCgroupNotifier(path, "memory.usage_in_bytes", threshold)`; needs a tokio runtime.
    pub fn new(cgroup: &Path, threshold: u64) -> io::Result<Self> {
        let usage = File::open(cgroup.join(MEMORY_USAGE_ATTRIBUTE))?;
        // SAFETY: eventfd takes no pointers; the descriptor is owned at once below.
        let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` is a fresh descriptor nothing else owns.
        let event = unsafe { OwnedFd::from_raw_fd(fd) };
        let mut control = OpenOptions::new().write(true).open(cgroup.join("cgroup.event_control"))?;
        control.write_all(format!("{} {} {threshold}", event.as_raw_fd(), usage.as_raw_fd()).as_bytes())?;
        // SAFETY: the OwnedFd moves into the AsyncFd, so the descriptor stays open and the same for its lifetime.
        let event = unsafe { AsyncFd::register_with_interest(event, tokio::io::Interest::READABLE) }?;
        Ok(CgroupNotifier { event, _usage: usage, threshold })
    }

    /// The usage, in bytes, whose crossing this notifier reports.
    pub fn threshold(&self) -> u64 {
        self.threshold
    }

    /// Resolves at the next crossing (or at once for one not yet read).
    pub async fn crossed(&self) -> io::Result<()> {
        loop {
            let mut ready = self.event.readable().await?;
            let read = ready.try_io(|fd| {
                let mut count = [0u8; 8];
                // SAFETY: reads at most 8 bytes into an 8-byte buffer from a descriptor we own.
                let n = unsafe { libc::read(fd.as_raw_fd(), count.as_mut_ptr().cast(), count.len()) };
                if n < 0 {
                    Err(io::Error::last_os_error())
                } else {
                    Ok(())
                }
            });
            match read {
                Ok(result) => return result,
                Err(_would_block) => continue,
            }
        }
    }
}

/// `memoryThresholdNotifier.UpdateThreshold`, from the node's memory in the round's summary: the usage at which
/// the working set (usage minus inactive file pages) leaves `threshold`'s worth of the capacity available, i.e.
/// capacity - threshold + inactive_file, where capacity = available + working set and inactive_file = usage -
/// working set. `None` when the summary lacks a figure or that is not a positive usage.
pub fn usage_threshold(threshold: &Threshold, node: &MemoryStats) -> Option<u64> {
    let (available, working_set, usage) = (node.available_bytes?, node.working_set_bytes?, node.usage_bytes?);
    let capacity = i128::from(available) + i128::from(working_set);
    let inactive_file = i128::from(usage) - i128::from(working_set);
    let quantity = threshold.value.quantity(capacity).value;
    u64::try_from(capacity - quantity + inactive_file).ok().filter(|u| *u > 0)
}

/// Where notifications come from: the cgroup v1 memory root when the host has one that takes registrations.
#[derive(Debug, Clone)]
pub struct MemoryNotifiers {
    root: PathBuf,
}

impl MemoryNotifiers {
    /// The host's cgroup v1 memory root, when it takes threshold registrations (none on a cgroup v2 host).
    pub fn detect() -> Option<Self> {
        Self::at(Path::new(CGROUP_V1_MEMORY_ROOT))
    }

    pub fn at(root: &Path) -> Option<Self> {
        (root.join("cgroup.event_control").exists() && root.join(MEMORY_USAGE_ATTRIBUTE).exists())
            .then(|| MemoryNotifiers { root: root.to_path_buf() })
    }

    /// One notifier per `memory.available` threshold, set from the node's memory of the last round.
    /// `allocatableMemory.available` is the `kubepods` cgroup's, which exists on cgroup v2 only: there is nothing
    /// to register for it here. `None` when a registration fails, so that the caller reads the signals instead.
    pub fn register(&self, thresholds: &[Threshold], node: &MemoryStats) -> Option<Vec<CgroupNotifier>> {
        let mut notifiers = Vec::new();
        for t in thresholds.iter().filter(|t| t.signal == Signal::MemoryAvailable) {
            let Some(usage) = usage_threshold(t, node) else { continue };
            match CgroupNotifier::new(&self.root, usage) {
                Ok(n) => notifiers.push(n),
                Err(e) => {
                    tracing::warn!(error = %e, "eviction manager: memory threshold notifier could not be registered");
                    return None;
                }
            }
        }
        Some(notifiers)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::eviction::threshold::{Format, Quantity, ThresholdValue};

    fn hard(signal: Signal, value: ThresholdValue) -> Threshold {
        Threshold { signal, value, grace_period: std::time::Duration::ZERO, min_reclaim: None }
    }

    #[test]
    fn the_usage_threshold_is_capacity_minus_the_threshold_plus_inactive_file() {
        let gi = 1u64 << 30;
        let mi = 1u64 << 20;
        // 8 GiB in all: a working set of 3 GiB, 512 MiB of inactive file pages on top.
        let node = MemoryStats {
            available_bytes: Some(5 * gi),
            working_set_bytes: Some(3 * gi),
            usage_bytes: Some(3 * gi + 512 * mi),
            ..Default::default()
        };
        let t =
            hard(Signal::MemoryAvailable, ThresholdValue::Quantity(Quantity::new(100 * mi as i128, Format::BinarySi)));
        assert_eq!(usage_threshold(&t, &node), Some(8 * gi - 100 * mi + 512 * mi));
        let t = hard(Signal::MemoryAvailable, ThresholdValue::Percentage(0.25));
        assert_eq!(usage_threshold(&t, &node), Some(6 * gi + 512 * mi));
        // A summary without the usage gives nothing to watch, nor does a threshold above the capacity.
        assert_eq!(usage_threshold(&t, &MemoryStats { usage_bytes: None, ..node.clone() }), None);
        let t =
            hard(Signal::MemoryAvailable, ThresholdValue::Quantity(Quantity::new(16 * gi as i128, Format::BinarySi)));
        assert_eq!(usage_threshold(&t, &node), None);
    }

    #[test]
    fn a_folder_without_event_control_takes_no_registrations() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(MEMORY_USAGE_ATTRIBUTE), "1\n").unwrap();
        assert!(MemoryNotifiers::at(dir.path()).is_none());
    }
}
