//! What a pod's volumes hold on the node, as kubelet measures it for the Summary API: `du` over each volume folder
//! (`pkg/volume/util/fs/fs.go: DiskUsage`, through `MetricsDu`), cached and refreshed every `volumeStatsAggPeriod`
//! off the async runtime (`pkg/kubelet/server/stats/volume_stat_calculator.go`).
//!
//! The folders are the pod's to fill, so the walk trusts nothing in them: it never follows a symlink (the entries
//! are `fstatat(AT_SYMLINK_NOFOLLOW)`ed and folders opened `O_NOFOLLOW` relative to their parent, so a folder
//! swapped for a link mid-walk is not entered), counts an inode with several links once, stays on the volume's
//! filesystem, and stops at a depth and an entry count, so a pod cannot make the agent walk forever.

use std::collections::{BTreeMap, HashSet};
use std::ffi::{CStr, CString};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Volume;

use crate::stats::summary::{DiskUsage, VolumeInfo, VolumeMeasure};

/// Folders deeper than this are not entered: each level holds one open descriptor while the walk is below it.
pub const DU_MAX_DEPTH: usize = 128;
/// Entries counted at most per volume; beyond it the figures are a lower bound and the walk says so.
pub const DU_MAX_ENTRIES: u64 = 1 << 20;
/// kubelet's `volumeStatsAggPeriod` default (`pkg/kubelet/apis/config/v1beta1/defaults.go`).
pub const DEFAULT_VOLUME_STATS_AGG_PERIOD: Duration = Duration::from_secs(60);
/// `du` counts `st_blocks` in 512-byte units (`fs.go`: `int64(s.Blocks) * int64(512)`).
const BLOCK_SIZE: u64 = 512;

/// The figures of one walk.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Walked {
    pub usage: DiskUsage,
    /// The depth or entry cap was reached: the figures are a lower bound.
    pub truncated: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum DuError {
    #[error("du {path}: {source}")]
    Open { path: PathBuf, source: std::io::Error },
}

/// An open directory stream, closed on drop.
struct Dir(std::ptr::NonNull<libc::DIR>);

impl Dir {
    /// Opens `name` under the directory `parent` without following a symlink at the last component.
    fn open_at(parent: libc::c_int, name: &CStr) -> std::io::Result<Dir> {
        // SAFETY: `name` is NUL-terminated; the flags refuse anything but a directory reached without a symlink.
        let fd = unsafe {
            libc::openat(parent, name.as_ptr(), libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC)
        };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: `fd` is an open directory descriptor that the stream takes over.
        match std::ptr::NonNull::new(unsafe { libc::fdopendir(fd) }) {
            Some(d) => Ok(Dir(d)),
            None => {
                let e = std::io::Error::last_os_error();
                // SAFETY: fdopendir failed, so the descriptor is still ours to close.
                unsafe { libc::close(fd) };
                Err(e)
            }
        }
    }

    fn fd(&self) -> libc::c_int {
        // SAFETY: the stream is open.
        unsafe { libc::dirfd(self.0.as_ptr()) }
    }

    /// The next entry's name, `.` and `..` left out; `None` at the end (or on a read error, which ends this folder).
    fn next_name(&mut self) -> Option<CString> {
        loop {
            // SAFETY: the stream is open; the entry is copied out before the next call.
            let entry = unsafe { libc::readdir(self.0.as_ptr()) };
            if entry.is_null() {
                return None;
            }
            // SAFETY: readdir returned a valid entry whose d_name is NUL-terminated.
            let name = unsafe { CStr::from_ptr((*entry).d_name.as_ptr()) };
            if name.to_bytes() != b"." && name.to_bytes() != b".." {
                return Some(name.to_owned());
            }
        }
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        // SAFETY: the stream is open and closed once.
        unsafe { libc::closedir(self.0.as_ptr()) };
    }
}

fn lstat_at(parent: libc::c_int, name: &CStr) -> Option<libc::stat> {
    // SAFETY: a zeroed stat is a valid buffer; `name` is NUL-terminated.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::fstatat(parent, name.as_ptr(), &mut st, libc::AT_SYMLINK_NOFOLLOW) };
    (rc == 0).then_some(st)
}

fn fstat(fd: libc::c_int) -> Option<libc::stat> {
    // SAFETY: a zeroed stat is a valid buffer for an open descriptor.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    (unsafe { libc::fstat(fd, &mut st) } == 0).then_some(st)
}

/// kubelet's `fs.DiskUsage` without quotas: bytes (`st_blocks` × 512) and inodes under `path`, the folder itself
/// included, each multiply-linked inode once, nothing on another filesystem.
pub fn disk_usage(path: &Path) -> Result<Walked, DuError> {
    disk_usage_bounded(path, DU_MAX_DEPTH, DU_MAX_ENTRIES)
}

pub fn disk_usage_bounded(path: &Path, max_depth: usize, max_entries: u64) -> Result<Walked, DuError> {
    let err = |source| DuError::Open { path: path.to_owned(), source };
    let c_path = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| err(std::io::Error::from(std::io::ErrorKind::InvalidInput)))?;
    let top = Dir::open_at(libc::AT_FDCWD, &c_path).map_err(err)?;
    let top_stat = fstat(top.fd()).ok_or_else(|| err(std::io::Error::last_os_error()))?;
    let mut out = Walked::default();
    let mut seen: HashSet<(u64, u64)> = HashSet::new();
    let mut count = |st: &libc::stat, out: &mut Walked| {
        #[allow(clippy::unnecessary_cast)]
        if st.st_nlink as u64 > 1 && !seen.insert((st.st_dev as u64, st.st_ino as u64)) {
            return;
        }
        out.usage.bytes = out.usage.bytes.saturating_add((st.st_blocks as u64).saturating_mul(BLOCK_SIZE));
        out.usage.inodes += 1;
    };
    count(&top_stat, &mut out);
    let mut entries: u64 = 1;
    let mut stack = vec![top];
    while let Some(dir) = stack.last_mut() {
        let Some(name) = dir.next_name() else {
            stack.pop();
            continue;
        };
        entries += 1;
        if entries > max_entries {
            out.truncated = true;
            break;
        }
        let parent = dir.fd();
        let Some(st) = lstat_at(parent, &name) else { continue };
        if st.st_dev != top_stat.st_dev {
            continue;
        }
        count(&st, &mut out);
        if st.st_mode & libc::S_IFMT == libc::S_IFDIR {
            if stack.len() >= max_depth {
                out.truncated = true;
                continue;
            }
            // A folder replaced by a symlink since the stat is refused by O_NOFOLLOW and left out.
            if let Ok(child) = Dir::open_at(parent, &name) {
                stack.push(child);
            }
        }
    }
    Ok(out)
}

/// A volume plugin's folder name under `<root-dir>/pods/<uid>/volumes/`, for the kinds the node sets up itself and
/// kubelet measures with `MetricsDu` (`empty_dir.go`, `configmap.go`, `secret.go`, `downwardapi.go`, `projected.go`).
pub fn plugin_dir(v: &Volume) -> Option<&'static str> {
    if v.empty_dir.is_some() {
        Some("kubernetes.io~empty-dir")
    } else if v.config_map.is_some() {
        Some("kubernetes.io~configmap")
    } else if v.secret.is_some() {
        Some("kubernetes.io~secret")
    } else if v.downward_api.is_some() {
        Some("kubernetes.io~downward-api")
    } else if v.projected.is_some() {
        Some("kubernetes.io~projected")
    } else {
        None
    }
}

/// `util.IsLocalEphemeralVolume` (`pkg/volume/util/util.go`): the volumes a pod's `ephemeral-storage` counts — a
/// disk-backed emptyDir and a configMap (gitRepo is not supported here).
pub fn is_local_ephemeral(v: &Volume) -> bool {
    v.empty_dir.as_ref().is_some_and(|e| e.medium.as_deref().unwrap_or_default().is_empty()) || v.config_map.is_some()
}

/// One measurable volume of a pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolumeDir {
    pub name: String,
    pub local_ephemeral: bool,
    pub path: PathBuf,
}

/// The pod's measurable volumes, in spec order.
pub fn volume_dirs(root_dir: &Path, uid: &str, volumes: &[Volume]) -> Vec<VolumeDir> {
    let base = root_dir.join("pods").join(uid).join("volumes");
    volumes
        .iter()
        .filter_map(|v| {
            let plugin = plugin_dir(v)?;
            Some(VolumeDir {
                name: v.name.clone(),
                local_ephemeral: is_local_ephemeral(v),
                path: base.join(plugin).join(&v.name),
            })
        })
        .collect()
}

#[derive(Debug, Clone)]
struct Cached {
    at: Instant,
    measure: VolumeMeasure,
}

/// The latest figures of every pod volume, refreshed in the background once they are older than the period; the
/// summary never waits for a walk, as kubelet's summary reads its calculators' latest results.
#[derive(Debug)]
pub struct VolumeStatsCache {
    period: Option<Duration>,
    latest: Mutex<BTreeMap<(String, String), Cached>>,
    measuring: Arc<AtomicBool>,
}

impl Default for VolumeStatsCache {
    fn default() -> Self {
        Self::new(Some(DEFAULT_VOLUME_STATS_AGG_PERIOD))
    }
}

impl VolumeStatsCache {
    /// `period` `None` (kubelet: a zero or negative `volumeStatsAggPeriod`) turns volume figures off.
    pub fn new(period: Option<Duration>) -> Self {
        Self { period: period.filter(|p| !p.is_zero()), latest: Mutex::default(), measuring: Arc::default() }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<(String, String), Cached>> {
        self.latest.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The pods' volumes with their latest figures. Starts one background walk over the volumes whose figures are
    /// missing or older than the period, unless one runs; forgets the volumes of pods no longer listed.
    pub fn volumes(self: &Arc<Self>, pods: &[(String, Vec<VolumeDir>)]) -> Vec<Vec<VolumeInfo>> {
        let Some(period) = self.period else {
            return pods.iter().map(|(_, dirs)| dirs.iter().map(|d| info(d, None)).collect()).collect();
        };
        let now = Instant::now();
        let mut stale: Vec<(String, VolumeDir)> = Vec::new();
        let out = {
            let mut latest = self.lock();
            let wanted: HashSet<(&str, &str)> =
                pods.iter().flat_map(|(uid, dirs)| dirs.iter().map(move |d| (uid.as_str(), d.name.as_str()))).collect();
            latest.retain(|(uid, name), _| wanted.contains(&(uid.as_str(), name.as_str())));
            pods.iter()
                .map(|(uid, dirs)| {
                    dirs.iter()
                        .map(|d| {
                            let cached = latest.get(&(uid.clone(), d.name.clone()));
                            if cached.is_none_or(|c| now.duration_since(c.at) >= period) {
                                stale.push((uid.clone(), d.clone()));
                            }
                            info(d, cached.map(|c| c.measure.clone()))
                        })
                        .collect()
                })
                .collect()
        };
        if !stale.is_empty() && !self.measuring.swap(true, Ordering::AcqRel) {
            let this = Arc::clone(self);
            match tokio::runtime::Handle::try_current() {
                Ok(handle) => {
                    handle.spawn_blocking(move || this.measure(stale));
                }
                Err(_) => self.measuring.store(false, Ordering::Release),
            }
        }
        out
    }

    /// Walks the given volumes one after the other and stores their figures.
    fn measure(&self, volumes: Vec<(String, VolumeDir)>) {
        /// Lets the next summary start a walk however this one ends.
        struct Done<'a>(&'a AtomicBool);
        impl Drop for Done<'_> {
            fn drop(&mut self) {
                self.0.store(false, Ordering::Release);
            }
        }
        let _done = Done(&self.measuring);
        for (uid, dir) in volumes {
            let time = jiff::Timestamp::now().to_string();
            match disk_usage(&dir.path) {
                Ok(walked) => {
                    if walked.truncated {
                        tracing::warn!(pod_uid = %uid, volume = %dir.name, entries = DU_MAX_ENTRIES, depth = DU_MAX_DEPTH, "volume too large to measure whole: its figures are a lower bound");
                    }
                    let measure =
                        VolumeMeasure { time, usage: walked.usage, capacity: crate::stats::node::statvfs(&dir.path) };
                    self.lock().insert((uid, dir.name), Cached { at: Instant::now(), measure });
                }
                // Not set up yet, or gone: kubelet leaves such a volume out ("Failed to calculate volume metrics").
                Err(e) => tracing::debug!(pod_uid = %uid, volume = %dir.name, error = %e, "volume not measured"),
            }
        }
    }
}

fn info(d: &VolumeDir, measured: Option<VolumeMeasure>) -> VolumeInfo {
    VolumeInfo { name: d.name.clone(), local_ephemeral: d.local_ephemeral, measured }
}

/// kubelet's `MetricsDu` of a single file (a log file, the pod's `etc-hosts`): its blocks and one inode.
pub fn file_usage(path: &Path) -> Option<DiskUsage> {
    let m = std::fs::symlink_metadata(path).ok()?;
    use std::os::unix::fs::MetadataExt;
    Some(DiskUsage { bytes: m.blocks() * BLOCK_SIZE, inodes: 1 })
}

/// kubelet's `fileMetricsByDir`: the regular files directly under `dir` (a container's or a pod's log folder), each
/// measured as `du` does; `None` when the folder cannot be read.
pub fn files_usage(dir: &Path) -> Option<DiskUsage> {
    let entries = std::fs::read_dir(dir).ok()?;
    let mut total = DiskUsage::default();
    for e in entries.flatten() {
        if e.file_type().is_ok_and(|t| t.is_dir()) {
            continue;
        }
        if let Some(u) = file_usage(&e.path()) {
            total.bytes += u.bytes;
            total.inodes += u.inodes;
        }
    }
    Some(total)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    fn blocks(p: &Path) -> u64 {
        std::fs::symlink_metadata(p).unwrap().blocks() * 512
    }

    #[test]
    fn du_counts_blocks_and_inodes_once_and_never_follows_links() {
        let tmp = tempfile::tempdir().unwrap();
        let vol = tmp.path().join("vol");
        std::fs::create_dir_all(vol.join("a/b")).unwrap();
        std::fs::write(vol.join("a/b/data"), vec![7u8; 100_000]).unwrap();
        std::fs::hard_link(vol.join("a/b/data"), vol.join("hard")).unwrap();
        // Outside the volume, and big: a link to it must not count its content.
        let outside = tmp.path().join("outside");
        std::fs::create_dir(&outside).unwrap();
        std::fs::write(outside.join("big"), vec![1u8; 1_000_000]).unwrap();
        std::os::unix::fs::symlink(&outside, vol.join("link")).unwrap();
        // A loop of links neither hangs the walk nor counts twice.
        std::os::unix::fs::symlink(&vol, vol.join("a/loop")).unwrap();
        let w = disk_usage(&vol).unwrap();
        let expected = blocks(&vol)
            + blocks(&vol.join("a"))
            + blocks(&vol.join("a/b"))
            + blocks(&vol.join("a/b/data"))
            + blocks(&vol.join("link"))
            + blocks(&vol.join("a/loop"));
        assert_eq!(w.usage.bytes, expected);
        assert!(w.usage.bytes >= 100_000 && w.usage.bytes < 1_000_000, "{w:?}");
        // vol, a, b, data (hard is the same inode), link, loop.
        assert_eq!(w.usage.inodes, 6);
        assert!(!w.truncated);
    }

    #[test]
    fn du_stops_at_its_depth_and_entry_caps() {
        let tmp = tempfile::tempdir().unwrap();
        let mut deep = tmp.path().join("vol");
        for _ in 0..10 {
            deep = deep.join("d");
        }
        std::fs::create_dir_all(&deep).unwrap();
        let w = disk_usage_bounded(&tmp.path().join("vol"), 3, 1000).unwrap();
        assert!(w.truncated);
        assert_eq!(w.usage.inodes, 4, "vol and three levels: {w:?}");
        let wide = tmp.path().join("wide");
        std::fs::create_dir(&wide).unwrap();
        for i in 0..50 {
            std::fs::write(wide.join(i.to_string()), b"x").unwrap();
        }
        let w = disk_usage_bounded(&wide, 10, 20).unwrap();
        assert!(w.truncated);
        assert_eq!(w.usage.inodes, 20);
        assert!(disk_usage(&tmp.path().join("missing")).is_err());
        // A symlink as the volume itself is refused, not followed.
        std::os::unix::fs::symlink(&wide, tmp.path().join("vlink")).unwrap();
        assert!(disk_usage(&tmp.path().join("vlink")).is_err());
    }

    #[test]
    fn volume_folders_and_which_count_as_ephemeral_storage() {
        let vols: Vec<Volume> = serde_json::from_value(serde_json::json!([
            {"name": "scratch", "emptyDir": {"sizeLimit": "1Mi"}},
            {"name": "mem", "emptyDir": {"medium": "Memory"}},
            {"name": "cm", "configMap": {"name": "c"}},
            {"name": "sec", "secret": {"secretName": "s"}},
            {"name": "host", "hostPath": {"path": "/tmp"}},
        ]))
        .unwrap();
        let dirs = volume_dirs(Path::new("/var/lib/kubelet"), "u1", &vols);
        let names: Vec<(&str, bool)> = dirs.iter().map(|d| (d.name.as_str(), d.local_ephemeral)).collect();
        assert_eq!(names, [("scratch", true), ("mem", false), ("cm", true), ("sec", false)]);
        assert_eq!(dirs[0].path, Path::new("/var/lib/kubelet/pods/u1/volumes/kubernetes.io~empty-dir/scratch"));
    }

    #[tokio::test]
    async fn the_cache_measures_in_the_background_and_forgets_gone_pods() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = VolumeDir { name: "v".into(), local_ephemeral: true, path: tmp.path().to_owned() };
        std::fs::write(tmp.path().join("f"), vec![0u8; 8192]).unwrap();
        let cache = Arc::new(VolumeStatsCache::new(Some(Duration::from_secs(3600))));
        let pods = vec![("u1".to_string(), vec![dir.clone()])];
        let first = cache.volumes(&pods);
        assert!(first[0][0].measured.is_none(), "the first summary does not wait for the walk");
        let deadline = Instant::now() + Duration::from_secs(10);
        let measured = loop {
            if let Some(m) = cache.volumes(&pods)[0][0].measured.clone() {
                break m;
            }
            assert!(Instant::now() < deadline, "never measured");
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        assert!(measured.usage.bytes >= 8192 && measured.usage.inodes == 2, "{measured:?}");
        assert!(measured.capacity.is_some());
        cache.volumes(&[]);
        assert!(cache.lock().is_empty());
        let off = Arc::new(VolumeStatsCache::new(None));
        assert!(off.volumes(&pods)[0][0].measured.is_none());
    }
}
