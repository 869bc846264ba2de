//! kubelet's `SetVolumeOwnership` (`pkg/volume/volume_linux.go`): with `fsGroup`, every file of the volume gets the
//! group, group read (and write unless the volume is read-only) and directories the setgid bit, so that files created
//! later keep the group. `fsGroupChangePolicy: OnRootMismatch` skips the walk when the volume's root already fits.
//!
//! The walk runs on a tree a container can write to, so it never resolves a path: each entry is opened relative to
//! its parent's descriptor with `O_PATH | O_NOFOLLOW`, looked at through that descriptor, and changed through it. A
//! symlink planted in the volume gets its own group (kubelet's `Lchown`) and no mode; what it points at is never
//! reached, even when the container swaps a file for a symlink in the middle of the walk.

use std::ffi::{CStr, CString};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// kubelet's `rwMask`, `roMask` and `execMask`.
const RW_MASK: u32 = 0o660;
const RO_MASK: u32 = 0o440;
const EXEC_MASK: u32 = 0o110;
const SETGID: u32 = 0o2000;

/// `fsGroupChangePolicy: OnRootMismatch` (`v1.FSGroupChangeOnRootMismatch`).
pub const ON_ROOT_MISMATCH: &str = "OnRootMismatch";

/// After this long kubelet warns that the ownership change is slow (`SetVolumeOwnership`'s `time.AfterFunc`).
const SLOW_WARNING_AFTER: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum OwnershipError {
    #[error("invalid fsGroup {0}")]
    InvalidGroup(i64),
    #[error("failed to open {path:?} for the ownership change: {source}")]
    Open { path: PathBuf, source: std::io::Error },
    #[error("failed to read directory {path:?} for the ownership change: {source}")]
    ReadDir { path: PathBuf, source: std::io::Error },
    #[error("failed to stat {path:?} for the ownership change: {source}")]
    Stat { path: PathBuf, source: std::io::Error },
}

/// The new mode of one file (kubelet's `changeFilePermission`); `None` for symlinks: their mode means nothing and a
/// chmod would reach the file they point at.
pub fn new_mode(mode: u32, is_dir: bool, is_symlink: bool, readonly: bool) -> Option<u32> {
    if is_symlink {
        return None;
    }
    let mut mask = if readonly { RO_MASK } else { RW_MASK };
    if is_dir {
        mask |= SETGID | EXEC_MASK;
    }
    Some((mode & 0o7777) | mask)
}

/// kubelet's `requiresPermissionChange`, from the root's status: its group or mode (with setgid) is not yet what it
/// must be.
fn requires_permission_change(st: &libc::stat, fs_group: u32, readonly: bool) -> bool {
    if st.st_gid != fs_group || st.st_mode & libc::S_IFMT != libc::S_IFDIR {
        return true;
    }
    let want = if readonly { RO_MASK } else { RW_MASK } | EXEC_MASK;
    let perm = st.st_mode & 0o777;
    perm & want != want || st.st_mode & SETGID == 0
}

/// Applies the pod's `fsGroup` to the volume at `root`. Blocking: callers on the runtime run it in `spawn_blocking`.
/// As kubelet, a failed chown or chmod of one file is logged and the walk goes on; only a tree that cannot be read
/// ends it with an error.
pub fn set_volume_ownership(
    root: &Path,
    fs_group: i64,
    policy: Option<&str>,
    readonly: bool,
) -> Result<(), OwnershipError> {
    let gid = u32::try_from(fs_group).map_err(|_| OwnershipError::InvalidGroup(fs_group))?;
    let c_root = CString::new(root.as_os_str().as_bytes())
        .map_err(|e| OwnershipError::Open { path: root.to_owned(), source: std::io::Error::other(e) })?;
    // The volume's own folder is the node's, not the container's; only what is below it is walked without resolving.
    let root_fd =
        open_path(libc::AT_FDCWD, &c_root).map_err(|source| OwnershipError::Open { path: root.into(), source })?;
    let st = fstat(root_fd.as_raw_fd()).map_err(|source| OwnershipError::Stat { path: root.into(), source })?;
    if policy == Some(ON_ROOT_MISMATCH) && !requires_permission_change(&st, gid, readonly) {
        tracing::debug!(path = %root.display(), "Skipping permission and ownership change for volume");
        return Ok(());
    }
    let mut walk = Walk { gid, readonly, started: Instant::now(), warned: false, root };
    walk.visit(root_fd, &st, root.to_owned())
}

struct Walk<'a> {
    gid: u32,
    readonly: bool,
    started: Instant,
    warned: bool,
    root: &'a Path,
}

/// A directory being walked: its descriptor, its path (for messages only) and the names still to visit.
struct Frame {
    dir: OwnedFd,
    path: PathBuf,
    st: libc::stat,
    names: Vec<CString>,
}

impl Walk<'_> {
    /// kubelet's `walkDeep`: children first, the directory itself after them, so that an interrupted walk leaves a
    /// root that `OnRootMismatch` still sees as needing the change. Iterative: a deep tree costs heap, not stack.
    fn visit(&mut self, fd: OwnedFd, st: &libc::stat, path: PathBuf) -> Result<(), OwnershipError> {
        if !is_dir(st) {
            self.change(fd.as_raw_fd(), st, &path);
            return Ok(());
        }
        let mut stack = vec![self.open_dir(fd, *st, path)?];
        while let Some(top) = stack.last_mut() {
            let Some(name) = top.names.pop() else {
                if let Some(done) = stack.pop() {
                    self.change(done.dir.as_raw_fd(), &done.st, &done.path);
                }
                continue;
            };
            let path = top.path.join(std::ffi::OsStr::from_bytes(name.as_bytes()));
            let fd = match open_path(top.dir.as_raw_fd(), &name) {
                Ok(fd) => fd,
                // Gone since the directory was read: the container deleted it, nothing is left to change.
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) => continue,
                Err(source) => return Err(OwnershipError::Open { path, source }),
            };
            let st = fstat(fd.as_raw_fd()).map_err(|source| OwnershipError::Stat { path: path.clone(), source })?;
            if is_dir(&st) {
                let frame = self.open_dir(fd, st, path)?;
                stack.push(frame);
            } else {
                self.change(fd.as_raw_fd(), &st, &path);
            }
        }
        Ok(())
    }

    /// Reopens an `O_PATH` descriptor of a directory for reading (through `.`, so the same directory, whatever its
    /// name points at by now) and lists it.
    fn open_dir(&self, fd: OwnedFd, st: libc::stat, path: PathBuf) -> Result<Frame, OwnershipError> {
        let flags = libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC;
        // SAFETY: a valid descriptor and a NUL-terminated name.
        let raw = unsafe { libc::openat(fd.as_raw_fd(), c".".as_ptr(), flags) };
        if raw < 0 {
            return Err(OwnershipError::Open { path, source: std::io::Error::last_os_error() });
        }
        // SAFETY: `openat` returned a descriptor nobody else owns.
        let dir = unsafe { OwnedFd::from_raw_fd(raw) };
        let names =
            read_dir_names(dir.as_raw_fd()).map_err(|source| OwnershipError::ReadDir { path: path.clone(), source })?;
        Ok(Frame { dir, path, st, names })
    }

    /// kubelet's `changeFilePermission`, through the descriptor of the file itself.
    fn change(&mut self, fd: RawFd, st: &libc::stat, path: &Path) {
        if !self.warned && self.started.elapsed() >= SLOW_WARNING_AFTER {
            self.warned = true;
            // volume_linux.go's message.
            tracing::warn!(
                "Setting volume ownership for {} and fsGroup set. If the volume has a lot of files then setting volume ownership could be slow, see https://github.com/kubernetes/kubernetes/issues/69699",
                self.root.display()
            );
        }
        // With AT_EMPTY_PATH the call acts on the descriptor's own inode: for a symlink, the link (kubelet's Lchown).
        // SAFETY: a valid descriptor and an empty NUL-terminated path.
        let rc = unsafe {
            libc::fchownat(fd, c"".as_ptr(), u32::MAX, self.gid, libc::AT_EMPTY_PATH | libc::AT_SYMLINK_NOFOLLOW)
        };
        if rc != 0 {
            tracing::error!(path = %path.display(), error = %std::io::Error::last_os_error(), "Lchown failed");
        }
        let is_symlink = st.st_mode & libc::S_IFMT == libc::S_IFLNK;
        let Some(mode) = new_mode(st.st_mode, is_dir(st), is_symlink, self.readonly) else { return };
        if let Err(e) = chmod_fd(fd, mode) {
            tracing::error!(path = %path.display(), error = %e, "chmod failed");
        }
    }
}

fn is_dir(st: &libc::stat) -> bool {
    st.st_mode & libc::S_IFMT == libc::S_IFDIR
}

/// `openat(dir, name, O_PATH | O_NOFOLLOW)`: a handle on the entry itself, a symlink included, that opens nothing
/// (no FIFO blocks, no device sees an open).
fn open_path(dir: RawFd, name: &CStr) -> std::io::Result<OwnedFd> {
    // SAFETY: a NUL-terminated name; `dir` is a valid descriptor or AT_FDCWD.
    let raw = unsafe { libc::openat(dir, name.as_ptr(), libc::O_PATH | libc::O_NOFOLLOW | libc::O_CLOEXEC) };
    if raw < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `openat` returned a descriptor nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(raw) })
}

fn fstat(fd: RawFd) -> std::io::Result<libc::stat> {
    // SAFETY: a zeroed out-parameter of the right type.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: a valid descriptor and out-parameter.
    if unsafe { libc::fstat(fd, &mut st) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(st)
}

/// chmod of the inode behind `fd`. `fchmod` refuses `O_PATH` descriptors, and `fchmodat` has no working
/// `AT_SYMLINK_NOFOLLOW` before Linux 6.6; `/proc/self/fd/N` names exactly the inode `fd` holds (never a symlink:
/// those are not chmod-ed), so no name the container controls is resolved.
fn chmod_fd(fd: RawFd, mode: u32) -> std::io::Result<()> {
    // SAFETY: a valid descriptor.
    if unsafe { libc::fchmod(fd, mode) } == 0 {
        return Ok(());
    }
    let err = std::io::Error::last_os_error();
    if err.raw_os_error() != Some(libc::EBADF) {
        return Err(err);
    }
    let proc_path = CString::new(format!("/proc/self/fd/{fd}")).map_err(std::io::Error::other)?;
    // SAFETY: a NUL-terminated path.
    if unsafe { libc::chmod(proc_path.as_ptr(), mode) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// The names in the directory `fd` (not `.` and `..`), unsorted as kubelet's `readDirNames`.
fn read_dir_names(fd: RawFd) -> std::io::Result<Vec<CString>> {
    // `fdopendir` takes the descriptor it is given; hand it a copy.
    // SAFETY: a valid descriptor.
    let copy = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 0) };
    if copy < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `copy` is a directory descriptor we own; on success the stream owns it.
    let dir = unsafe { libc::fdopendir(copy) };
    if dir.is_null() {
        let err = std::io::Error::last_os_error();
        // SAFETY: `fdopendir` failed, so `copy` is still ours.
        unsafe { libc::close(copy) };
        return Err(err);
    }
    let mut names = Vec::new();
    let result = loop {
        // SAFETY: errno is thread-local; clearing it tells the end of the stream from an error.
        unsafe { *libc::__errno_location() = 0 };
        // SAFETY: a valid stream.
        let entry = unsafe { libc::readdir(dir) };
        if entry.is_null() {
            let err = std::io::Error::last_os_error();
            break if err.raw_os_error().unwrap_or(0) == 0 { Ok(()) } else { Err(err) };
        }
        // SAFETY: readdir returned an entry whose d_name is NUL-terminated and valid until the next call.
        let name = unsafe { CStr::from_ptr((*entry).d_name.as_ptr()) };
        if name.to_bytes() != b"." && name.to_bytes() != b".." {
            names.push(name.to_owned());
        }
    };
    // SAFETY: a valid stream, closed once; this also closes `copy`.
    unsafe { libc::closedir(dir) };
    result.map(|()| names)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{MetadataExt, PermissionsExt};

    fn mode(p: &Path) -> u32 {
        std::fs::symlink_metadata(p).unwrap().permissions().mode() & 0o7777
    }

    fn is_root() -> bool {
        // SAFETY: geteuid has no preconditions.
        unsafe { libc::geteuid() == 0 }
    }

    #[test]
    fn modes_follow_kubelet() {
        assert_eq!(new_mode(0o644, false, false, true), Some(0o644));
        assert_eq!(new_mode(0o400, false, false, true), Some(0o440));
        assert_eq!(new_mode(0o600, false, false, false), Some(0o660));
        assert_eq!(new_mode(0o755, true, false, false), Some(0o2775));
        assert_eq!(new_mode(0o4700, false, false, false), Some(0o4760), "setuid kept as kubelet's info.Mode()|mask");
        assert_eq!(new_mode(0o777, false, true, false), None);
    }

    #[test]
    fn on_root_mismatch_skips_a_root_that_already_fits() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("v");
        std::fs::create_dir(&root).unwrap();
        std::fs::write(root.join("f"), "x").unwrap();
        std::fs::set_permissions(root.join("f"), std::fs::Permissions::from_mode(0o600)).unwrap();
        let gid = std::fs::metadata(&root).unwrap().gid();
        std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o2770)).unwrap();
        set_volume_ownership(&root, gid.into(), Some(ON_ROOT_MISMATCH), false).unwrap();
        assert_eq!(mode(&root.join("f")), 0o600, "root fits: nothing walked");
        // A root without setgid does not fit: the whole tree is walked.
        std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o770)).unwrap();
        set_volume_ownership(&root, gid.into(), Some(ON_ROOT_MISMATCH), false).unwrap();
        assert_eq!(mode(&root.join("f")), 0o660);
        assert_eq!(mode(&root), 0o2770);
        std::fs::set_permissions(root.join("f"), std::fs::Permissions::from_mode(0o600)).unwrap();
        set_volume_ownership(&root, gid.into(), None, false).unwrap();
        assert_eq!(mode(&root.join("f")), 0o660, "no policy: always walked");
    }

    #[test]
    fn the_walk_reaches_every_level_and_changes_the_root_last() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("v");
        std::fs::create_dir_all(root.join("a/b/c")).unwrap();
        std::fs::write(root.join("a/b/c/f"), "x").unwrap();
        std::fs::write(root.join("top"), "x").unwrap();
        for p in ["a/b/c/f", "top"] {
            std::fs::set_permissions(root.join(p), std::fs::Permissions::from_mode(0o400)).unwrap();
        }
        for p in ["", "a", "a/b", "a/b/c"] {
            std::fs::set_permissions(root.join(p), std::fs::Permissions::from_mode(0o700)).unwrap();
        }
        let gid = std::fs::metadata(&root).unwrap().gid();
        set_volume_ownership(&root, gid.into(), None, true).unwrap();
        assert_eq!(mode(&root.join("a/b/c/f")), 0o440);
        assert_eq!(mode(&root.join("top")), 0o440);
        for p in ["", "a", "a/b", "a/b/c"] {
            assert_eq!(mode(&root.join(p)), 0o2750, "{p:?}");
        }
    }

    /// The fsGroup symlink attack: a link in the volume to a file outside it. kubelet changes the link's own group
    /// and never its target.
    #[test]
    fn a_symlink_in_the_volume_never_carries_the_change_outside() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("v");
        std::fs::create_dir(&root).unwrap();
        let outside = dir.path().join("host-secret");
        std::fs::write(&outside, "x").unwrap();
        std::fs::set_permissions(&outside, std::fs::Permissions::from_mode(0o600)).unwrap();
        let outside_dir = dir.path().join("host-dir");
        std::fs::create_dir(&outside_dir).unwrap();
        std::fs::set_permissions(&outside_dir, std::fs::Permissions::from_mode(0o700)).unwrap();
        std::os::unix::fs::symlink(&outside, root.join("link")).unwrap();
        std::os::unix::fs::symlink(&outside_dir, root.join("dirlink")).unwrap();
        let before = std::fs::metadata(&outside).unwrap();
        // As root the group really changes (to one nobody has); otherwise only the modes tell.
        let gid = if is_root() { 4242 } else { before.gid() };
        set_volume_ownership(&root, gid.into(), None, false).unwrap();
        let after = std::fs::metadata(&outside).unwrap();
        assert_eq!(after.mode() & 0o7777, 0o600, "the target's mode is untouched");
        assert_eq!((after.uid(), after.gid()), (before.uid(), before.gid()), "the target's owner is untouched");
        assert_eq!(mode(&outside_dir), 0o700, "a linked directory is not walked");
        assert_eq!(std::fs::metadata(&outside_dir).unwrap().gid(), before.gid());
        if is_root() {
            assert_eq!(std::fs::symlink_metadata(root.join("link")).unwrap().gid(), 4242, "the link's own group");
            assert_eq!(std::fs::metadata(&root).unwrap().gid(), 4242);
        } else {
            eprintln!("SKIPPED (in part): the group change needs root");
        }
    }

    /// `renameat2(RENAME_EXCHANGE)`: what a process in the pod can do to swap two names at once, a directory and a
    /// symlink included, with no moment where either name is missing.
    fn exchange(dir: &Path, a: &str, b: &str) {
        let (a, b) = (
            CString::new(dir.join(a).as_os_str().as_bytes()).unwrap(),
            CString::new(dir.join(b).as_os_str().as_bytes()).unwrap(),
        );
        // SAFETY: NUL-terminated paths.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_renameat2,
                libc::AT_FDCWD,
                a.as_ptr(),
                libc::AT_FDCWD,
                b.as_ptr(),
                2, /* RENAME_EXCHANGE */
            )
        };
        assert_eq!(rc, 0, "{}", std::io::Error::last_os_error());
    }

    /// The fsGroup symlink swap, in-process: while the walk runs, the pod swaps a file for a symlink to a file
    /// outside, and a directory of its own for a symlink to a directory outside holding files of the same names. A
    /// walk that looks at a name and then acts on the name again (or on a path through a swapped directory) reaches
    /// the outside files; one that acts through the descriptor it looked at never does.
    #[test]
    fn a_swap_race_in_the_volume_never_reaches_outside() {
        const FILES: usize = 32;
        let dir = tempfile::tempdir().unwrap();
        let (root, outside) = (dir.path().join("v"), dir.path().join("host"));
        std::fs::create_dir_all(root.join("d")).unwrap();
        std::fs::create_dir(&outside).unwrap();
        std::fs::set_permissions(&outside, std::fs::Permissions::from_mode(0o700)).unwrap();
        for i in 0..FILES {
            for parent in [&root.join("d"), &outside] {
                std::fs::write(parent.join(format!("f{i:02}")), "x").unwrap();
                std::fs::set_permissions(parent.join(format!("f{i:02}")), std::fs::Permissions::from_mode(0o600))
                    .unwrap();
            }
        }
        std::os::unix::fs::symlink(&outside, root.join("dl")).unwrap();
        std::os::unix::fs::symlink(outside.join("f00"), root.join("xl")).unwrap();
        std::fs::write(root.join("x"), "x").unwrap();
        let owner = std::fs::metadata(&outside).unwrap();
        let gid = if is_root() { 4242 } else { owner.gid() };
        let untouched = || {
            (0..FILES).map(|i| outside.join(format!("f{i:02}"))).chain([outside.clone()]).all(|p| {
                let m = std::fs::metadata(&p).unwrap();
                let want = if p == outside { 0o700 } else { 0o600 };
                m.mode() & 0o7777 == want && m.gid() == owner.gid()
            })
        };
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let swapper = {
            let (root, stop) = (root.clone(), stop.clone());
            std::thread::spawn(move || {
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    exchange(&root, "d", "dl");
                    exchange(&root, "x", "xl");
                }
            })
        };
        let mut walks = 0;
        while walks < 300 && untouched() {
            // A walk may fail on what vanished under it; what matters is what it changed.
            let _ = set_volume_ownership(&root, gid.into(), None, false);
            walks += 1;
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        swapper.join().unwrap();
        assert!(untouched(), "a file outside the volume was changed by walk {walks}");
    }

    #[test]
    fn a_special_file_is_changed_without_being_opened() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("v");
        std::fs::create_dir(&root).unwrap();
        let fifo = CString::new(root.join("fifo").as_os_str().as_bytes()).unwrap();
        // SAFETY: a NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) }, 0);
        let gid = std::fs::metadata(&root).unwrap().gid();
        // A FIFO opened for reading would block the walk until a writer comes.
        set_volume_ownership(&root, gid.into(), None, false).unwrap();
        assert_eq!(mode(&root.join("fifo")), 0o660);
    }

    #[test]
    fn a_bad_group_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let err = set_volume_ownership(dir.path(), -1, None, false).unwrap_err();
        assert_eq!(err.to_string(), "invalid fsGroup -1");
    }

    /// kubelet applies the ownership when a volume is set up, not on every sync: what the pod (or anyone) changed in
    /// the volume since stays changed through later syncs and a restart of the agent. An emptyDir is owned once
    /// (its readiness file says so); a downwardAPI volume again only when a new payload is written.
    #[tokio::test]
    async fn ownership_is_applied_once_when_the_volume_is_set_up() {
        use crate::kubetypes::env::NodeAllocatable;
        use crate::kubetypes::events::EventRecorder;
        use crate::volumes::VolumeManager;

        let dir = tempfile::tempdir().unwrap();
        let gid = if is_root() { 4242 } else { std::fs::metadata(dir.path()).unwrap().gid() };
        let pod: k8s_openapi::api::core::v1::Pod = serde_json::from_value(serde_json::json!({
            "metadata": { "name": "p", "namespace": "ns", "uid": "u1" },
            "spec": {
                "securityContext": { "fsGroup": gid },
                "containers": [{ "name": "app" }],
                "volumes": [
                    { "name": "scratch", "emptyDir": {} },
                    { "name": "info", "downwardAPI": { "items": [
                        { "path": "name", "fieldRef": { "fieldPath": "metadata.name" } },
                    ] } },
                ],
            },
        }))
        .unwrap();
        let new_manager = || VolumeManager::new(dir.path(), NodeAllocatable::default(), EventRecorder::default());
        let volumes = dir.path().join("pods/u1/volumes");
        let scratch = volumes.join("kubernetes.io~empty-dir/scratch");
        let info = volumes.join("kubernetes.io~downward-api/info");
        let vm = new_manager();
        assert!(vm.mount_pod(&pod).await.ready());
        assert_eq!(mode(&scratch), 0o2777);
        assert_eq!(mode(&info.join("..data/name")), 0o644);
        assert_eq!(std::fs::metadata(&scratch).unwrap().gid(), gid);

        // The pod writes a private file and takes the group off it; the node narrows its own file.
        let private = scratch.join("private");
        std::fs::write(&private, "x").unwrap();
        std::fs::set_permissions(&private, std::fs::Permissions::from_mode(0o600)).unwrap();
        if is_root() {
            std::os::unix::fs::chown(&private, None, Some(0)).unwrap();
        }
        std::fs::set_permissions(info.join("..data/name"), std::fs::Permissions::from_mode(0o600)).unwrap();
        let kept = |what: &str| {
            assert_eq!(mode(&private), 0o600, "{what}: the pod's file keeps its mode");
            if is_root() {
                assert_eq!(std::fs::metadata(&private).unwrap().gid(), 0, "{what}: and its group");
            }
            assert_eq!(mode(&info.join("..data/name")), 0o600, "{what}: an unchanged payload is not re-owned");
        };
        assert!(vm.mount_pod(&pod).await.ready());
        kept("a later sync");
        assert!(new_manager().mount_pod(&pod).await.ready());
        kept("an agent restart");
    }
}
