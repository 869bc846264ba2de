//! Container logs: reading them in the CRI format (`cri`, for `/containerLogs`), and rotation, kubelet's `ContainerLogManager`: every 10 s each running container's CRI log is checked,
//! and one that reached `containerLogMaxSize` is renamed to `<log>.<YYYYMMDD-hhmmss>` and reopened by the runtime
//! (CRI `ReopenContainerLog`), keeping at most `containerLogMaxFiles` files per container. Rotated files but the
//! most recent are gzip-compressed to `<log>.<stamp>.gz`; readers (`/containerLogs`) never read them, as in kubelet.

pub mod cri;

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::runtime::{ContainerRunState, Runtime};

/// kubelet's `logMonitorPeriod`.
pub const LOG_MONITOR_PERIOD: Duration = Duration::from_secs(10);
/// kubelet's `timestampFormat` for rotated logs (Go `20060102-150405`).
const TIMESTAMP_FORMAT: &str = "%Y%m%d-%H%M%S";
const TMP_SUFFIX: &str = ".tmp";
const COMPRESS_SUFFIX: &str = ".gz";

/// What to do with one container's log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RotationPlan {
    /// Leftovers and the oldest rotated files beyond the limit.
    pub remove: Vec<PathBuf>,
    /// Rotated files kept but not yet compressed: each becomes `<file>.gz` before the log is rotated, so only the
    /// file rotated now stays plain.
    pub compress: Vec<PathBuf>,
    /// Where the current log goes.
    pub rotate_to: PathBuf,
}

/// kubelet's `rotateLog` decision for a log of `size` bytes with the rotated files `rotated` (`<log>.*`) beside it:
/// nothing below `max_size`; else temporary files go, the oldest rotated files go so that with the current log and
/// the one rotated now at most `max_files` remain, the remaining plain ones are compressed, and the log is renamed
/// with the time.
pub fn plan_rotation(
    log: &Path,
    size: u64,
    rotated: &[PathBuf],
    max_size: u64,
    max_files: usize,
    now: jiff::civil::DateTime,
) -> Option<RotationPlan> {
    if size < max_size {
        return None;
    }
    let mut remove: Vec<PathBuf> = Vec::new();
    let mut kept: Vec<PathBuf> = Vec::new();
    for r in rotated {
        let name = r.to_string_lossy();
        let compressed_twin = PathBuf::from(format!("{name}{COMPRESS_SUFFIX}"));
        if name.ends_with(TMP_SUFFIX) || rotated.contains(&compressed_twin) {
            remove.push(r.clone());
        } else {
            kept.push(r.clone());
        }
    }
    kept.sort();
    let max_rotated = max_files.saturating_sub(2);
    if kept.len() > max_rotated {
        let excess = kept.len() - max_rotated;
        remove.extend(kept.drain(..excess));
    }
    let compress = kept.into_iter().filter(|k| !k.to_string_lossy().ends_with(COMPRESS_SUFFIX)).collect();
    let stamp = now.strftime(TIMESTAMP_FORMAT).to_string();
    Some(RotationPlan { remove, compress, rotate_to: PathBuf::from(format!("{}.{stamp}", log.display())) })
}

/// kubelet's `compressLog`: gzip into `<log>.tmp`, rename to `<log>.gz`, then remove the plain file. A failure
/// leaves the plain file and no temporary one.
pub fn compress_log(log: &Path) -> std::io::Result<()> {
    let tmp = PathBuf::from(format!("{}{TMP_SUFFIX}", log.display()));
    let write = || -> std::io::Result<()> {
        let mut r = std::fs::File::open(log)?;
        let f = std::fs::File::create(&tmp)?;
        let mut w = flate2::write::GzEncoder::new(f, flate2::Compression::default());
        std::io::copy(&mut r, &mut w)?;
        w.finish()?.sync_all()?;
        std::fs::rename(&tmp, format!("{}{COMPRESS_SUFFIX}", log.display()))
    };
    if let Err(e) = write() {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    std::fs::remove_file(log)
}

fn rotated_files(log: &Path) -> Vec<PathBuf> {
    let (Some(dir), Some(name)) = (log.parent(), log.file_name()) else { return Vec::new() };
    let prefix = format!("{}.", name.to_string_lossy());
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .filter(|e| e.file_name().to_string_lossy().starts_with(&prefix))
                .map(|e| e.path())
                .collect()
        })
        .unwrap_or_default()
}

/// Checks the running containers' logs once and rotates those that are due.
pub async fn rotate_logs(runtime: &Runtime, max_size: u64, max_files: usize) {
    let containers = match runtime.list_containers(None).await {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(error = %e, "failed to list containers for log rotation");
            return;
        }
    };
    for c in containers.iter().filter(|c| c.state == ContainerRunState::Running) {
        let Ok((path, ContainerRunState::Running)) = runtime.container_log_path(&c.id).await else { continue };
        if path.is_empty() {
            continue;
        }
        let log = PathBuf::from(path);
        let Ok(meta) = std::fs::metadata(&log) else { continue };
        let now = jiff::Zoned::now().datetime();
        let Some(plan) = plan_rotation(&log, meta.len(), &rotated_files(&log), max_size, max_files, now) else {
            continue;
        };
        for r in &plan.remove {
            if let Err(e) = std::fs::remove_file(r) {
                tracing::warn!(path = %r.display(), error = %e, "failed to remove a rotated container log");
            }
        }
        // As kubelet: a file that cannot be compressed stops this rotation, to be tried again next period.
        if let Some(e) = plan.compress.iter().find_map(|r| compress_log(r).err().map(|e| (r, e))) {
            tracing::warn!(path = %e.0.display(), error = %e.1, "failed to compress a rotated container log");
            continue;
        }
        if let Err(e) = std::fs::rename(&log, &plan.rotate_to) {
            tracing::warn!(path = %log.display(), error = %e, "failed to rotate a container log");
            continue;
        }
        if let Err(e) = runtime.reopen_container_log(&c.id).await {
            // The runtime keeps writing to the renamed file: put it back, as kubelet does.
            tracing::warn!(container_id = %c.id, error = %e, "failed to reopen a rotated container log");
            let _ = std::fs::rename(&plan.rotate_to, &log);
            continue;
        }
        tracing::debug!(container_id = %c.id, rotated = %plan.rotate_to.display(), "rotated container log");
    }
}

/// The log manager's loop; never returns.
pub async fn run_log_rotation(runtime: Runtime, max_size: u64, max_files: usize) {
    let mut tick = tokio::time::interval(LOG_MONITOR_PERIOD);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        rotate_logs(&runtime, max_size, max_files).await;
    }
}

#[cfg(test)]
mod cri_format_props;

#[cfg(test)]
mod tests {
    use super::*;

    fn now() -> jiff::civil::DateTime {
        jiff::civil::date(2024, 3, 7).at(9, 5, 1, 0)
    }

    #[test]
    fn a_log_below_the_limit_stays() {
        assert_eq!(plan_rotation(Path::new("/l/0.log"), 99, &[], 100, 5, now()), None);
    }

    #[test]
    fn a_full_log_is_renamed_with_the_time_and_the_oldest_rotated_files_go() {
        let rotated: Vec<PathBuf> = [
            "0.log.20240101-000000",
            "0.log.20240102-000000",
            "0.log.20240103-000000",
            "0.log.20240104-000000",
            "0.log.20240105-000000.tmp",
        ]
        .iter()
        .map(|n| Path::new("/l").join(n))
        .collect();
        let plan = plan_rotation(Path::new("/l/0.log"), 100, &rotated, 100, 5, now()).unwrap();
        assert_eq!(plan.rotate_to, PathBuf::from("/l/0.log.20240307-090501"));
        // Three rotated files stay: with the current log and the one rotated now, five.
        assert_eq!(
            plan.remove,
            vec![PathBuf::from("/l/0.log.20240105-000000.tmp"), PathBuf::from("/l/0.log.20240101-000000")]
        );
        let plan = plan_rotation(Path::new("/l/0.log"), 100, &rotated[..1], 100, 2, now()).unwrap();
        assert_eq!(
            plan.remove,
            vec![PathBuf::from("/l/0.log.20240101-000000")],
            "max 2: only the current and the new one"
        );
    }

    #[test]
    fn an_uncompressed_copy_beside_its_compressed_twin_goes() {
        let rotated = vec![PathBuf::from("/l/0.log.20240101-000000"), PathBuf::from("/l/0.log.20240101-000000.gz")];
        let plan = plan_rotation(Path::new("/l/0.log"), 100, &rotated, 100, 5, now()).unwrap();
        assert_eq!(plan.remove, vec![PathBuf::from("/l/0.log.20240101-000000")]);
    }

    #[test]
    fn kept_rotated_files_are_compressed_before_the_log_is_rotated() {
        let rotated: Vec<PathBuf> = ["0.log.20240101-000000.gz", "0.log.20240102-000000.gz", "0.log.20240103-000000"]
            .iter()
            .map(|n| Path::new("/l").join(n))
            .collect();
        let plan = plan_rotation(Path::new("/l/0.log"), 100, &rotated, 100, 4, now()).unwrap();
        // Compressed files count against the limit like plain ones, oldest first.
        assert_eq!(plan.remove, vec![PathBuf::from("/l/0.log.20240101-000000.gz")]);
        assert_eq!(plan.compress, vec![PathBuf::from("/l/0.log.20240103-000000")]);
    }

    #[test]
    fn compressing_replaces_the_file_with_its_gzip() {
        use std::io::Read;
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("0.log.20240101-000000");
        std::fs::write(&log, "2024-01-01T00:00:00Z stdout F hello\n").unwrap();
        compress_log(&log).unwrap();
        assert!(!log.exists());
        let gz = std::fs::File::open(dir.path().join("0.log.20240101-000000.gz")).unwrap();
        let mut text = String::new();
        flate2::read::GzDecoder::new(gz).read_to_string(&mut text).unwrap();
        assert_eq!(text, "2024-01-01T00:00:00Z stdout F hello\n");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1, "no temporary file left");
        assert!(compress_log(&dir.path().join("missing")).is_err());
    }
}
