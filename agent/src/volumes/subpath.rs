//! subPath mounts as kubelet makes them since CVE-2021-25741 (`pkg/volume/util/subpath/subpath_linux.go`): the
//! container controls every directory and symlink inside its volume and may swap them at any moment, so no path
//! inside the volume is ever resolved twice. Missing directories are created by `mkdirat` on directory fds opened
//! without following symlinks; the subPath is opened the same way, component by component from the volume's root,
//! and the runtime gets a bind mount of that open fd (`/proc/<pid>/fd/<n>`) under
//! `<pod-dir>/volume-subpaths/<volume>/<container>/<index>`, a path only the node controls.
//!
//! As kubelet, symlinks that stay inside the volume are followed once (the path is resolved, checked to be within
//! the volume, and the resolved path then walked with `O_NOFOLLOW`); one that leads out of it is an error, and a
//! symlink that appears during the walk is an error too.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Component, Path, PathBuf};

/// kubelet's `containerSubPathDirectoryName`: the place for subpath mounts in the pod's folder.
pub const CONTAINER_SUB_PATH_DIRECTORY_NAME: &str = "volume-subpaths";
/// `os.MkdirAll(bindParent, 0750)` and `os.Mkdir(bindPathTarget, 0750)` in kubelet's `prepareSubpathTarget`.
const BIND_DIR_MODE: u32 = 0o750;
/// `ioutil.WriteFile(bindPathTarget, []byte{}, 0640)` in `prepareSubpathTarget`.
const BIND_FILE_MODE: u32 = 0o640;
/// kubelet's `nofollowFlags` (`O_RDONLY | O_NOFOLLOW`) for the directories `doSafeMakeDir` creates.
const NOFOLLOW_FLAGS: libc::c_int = libc::O_RDONLY | libc::O_NOFOLLOW | libc::O_CLOEXEC;
/// kubelet's `openFDFlags` (`O_NOFOLLOW | O_PATH`): an fd of whatever is there, a symlink included, without
/// opening it (a FIFO planted by the container cannot block the walk).
const OPEN_FD_FLAGS: libc::c_int = libc::O_NOFOLLOW | libc::O_PATH | libc::O_CLOEXEC;

/// Why a subPath could not be made; the detail kubelet logs (the container is told less, see `makeMounts`).
#[derive(Debug, thiserror::Error)]
pub enum SubPathError {
    #[error("path {path} is outside of allowed base {base}")]
    OutsideBase { path: String, base: String },
    #[error("subpath {path:?} not within volume path {base:?}")]
    NotWithinVolume { path: String, base: String },
    #[error("error resolving symlinks in {path:?}: {source}")]
    Resolve { path: String, source: io::Error },
    #[error("unexpected symlink found {0}")]
    UnexpectedSymlink(String),
    #[error("error opening subpath {path}: {source}")]
    OpenSubPath { path: String, source: Box<SubPathError> },
    #[error("{op} {path}: {source}")]
    Io { op: &'static str, path: String, source: io::Error },
    #[error("bind mount {target} does not hold the opened subpath {path}")]
    Verify { target: String, path: String },
}

fn io_err(op: &'static str, path: &Path, source: io::Error) -> SubPathError {
    SubPathError::Io { op, path: path.display().to_string(), source }
}

/// One `volumeMount` with a subPath, as kubelet's `subpath.Subpath`.
#[derive(Debug, Clone)]
pub struct SubPath {
    /// The index of the `volumeMount` in the container's list.
    pub volume_mount_index: usize,
    /// The volume's host path joined with the subPath.
    pub path: PathBuf,
    /// The volume's name in the pod spec.
    pub volume_name: String,
    /// The volume's host path.
    pub volume_path: PathBuf,
    /// `<root-dir>/pods/<uid>`.
    pub pod_dir: PathBuf,
    pub container_name: String,
}

fn c_path(p: &Path) -> io::Result<CString> {
    CString::new(p.as_os_str().as_bytes()).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))
}

fn open(path: &Path, flags: libc::c_int) -> io::Result<OwnedFd> {
    let c = c_path(path)?;
    // SAFETY: a valid C string; the fd returned is owned by nobody else.
    let fd = unsafe { libc::open(c.as_ptr(), flags) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just opened and is not owned elsewhere.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn openat(dir: &OwnedFd, name: &str, flags: libc::c_int) -> io::Result<OwnedFd> {
    let c = CString::new(name).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: a valid fd and C string; a relative name, so the lookup starts at `dir`.
    let fd = unsafe { libc::openat(dir.as_raw_fd(), c.as_ptr(), flags) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just opened and is not owned elsewhere.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn fstat(fd: &OwnedFd) -> io::Result<libc::stat> {
    // SAFETY: an all-zero `stat` is a valid out-parameter.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: a valid fd and out-parameter.
    if unsafe { libc::fstat(fd.as_raw_fd(), &mut st) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(st)
}

fn is_dir_mode(mode: libc::mode_t) -> bool {
    mode & libc::S_IFMT == libc::S_IFDIR
}

/// The subPath's components: empty ones and `.` dropped as `filepath.Join` cleans them; `..` and absolute paths
/// are refused by the caller (`makeMounts`) and here again, so that the walk can never climb.
fn components(sub_path: &Path) -> Result<Vec<String>, SubPathError> {
    let mut out = Vec::new();
    for c in sub_path.components() {
        match c {
            Component::Normal(s) => out.push(s.to_string_lossy().into_owned()),
            Component::CurDir => {}
            Component::RootDir | Component::Prefix(_) | Component::ParentDir => {
                return Err(SubPathError::OutsideBase { path: sub_path.display().to_string(), base: ".".into() })
            }
        }
    }
    Ok(out)
}

fn canonicalize(p: &Path) -> Result<PathBuf, SubPathError> {
    std::fs::canonicalize(p).map_err(|source| SubPathError::Resolve { path: p.display().to_string(), source })
}

/// kubelet's `doSafeOpen`: opens `pathname` (whose symlinks are already resolved) from `base` one component at a
/// time with `O_NOFOLLOW | O_PATH`; a symlink met on the way is an error, so nothing swapped in after the
/// resolution is followed.
pub fn safe_open(pathname: &Path, base: &Path) -> Result<OwnedFd, SubPathError> {
    let outside =
        || SubPathError::OutsideBase { path: pathname.display().to_string(), base: base.display().to_string() };
    let rel = pathname.strip_prefix(base).map_err(|_| outside())?;
    let segments = components(rel).map_err(|_| outside())?;
    // The base itself is the node's (the volume's folder) and must not be a symlink.
    let mut parent = open(base, NOFOLLOW_FLAGS).map_err(|e| io_err("cannot open directory", base, e))?;
    let mut current = base.to_path_buf();
    for seg in &segments {
        current.push(seg);
        // Triggers an automount on the way, as kubelet does; the answer does not matter.
        if let Ok(c) = CString::new(format!("{seg}/")) {
            // SAFETY: an all-zero `stat` is a valid out-parameter.
            let mut st: libc::stat = unsafe { std::mem::zeroed() };
            // SAFETY: a valid fd, C string and out-parameter.
            unsafe { libc::fstatat(parent.as_raw_fd(), c.as_ptr(), &mut st, libc::AT_SYMLINK_NOFOLLOW) };
        }
        let child = openat(&parent, seg, OPEN_FD_FLAGS).map_err(|e| io_err("cannot open", &current, e))?;
        let st = fstat(&child).map_err(|e| io_err("error running fstat on", &current, e))?;
        if st.st_mode & libc::S_IFMT == libc::S_IFLNK {
            return Err(SubPathError::UnexpectedSymlink(current.display().to_string()));
        }
        parent = child;
    }
    Ok(parent)
}

/// kubelet's `SafeMakeDir`/`doSafeMakeDir`: creates the missing directories of `sub_path` inside `base` with
/// `perm` (the volume's mode, kept whatever the umask). The existing part may hold symlinks that stay inside the
/// volume; each new directory is made with `mkdirat` on the fd of its parent, which was opened without following
/// symlinks, so none is ever created outside the volume.
pub fn safe_make_dir(sub_path: &Path, base: &Path, perm: u32) -> Result<(), SubPathError> {
    let real_base = canonicalize(base)?;
    let segments = components(sub_path)?;
    let pathname = segments.iter().fold(real_base.clone(), |p, s| p.join(s));
    // kubelet's quick check: a directory that is there already (wherever it leads; the bind mount checks that).
    match std::fs::metadata(&pathname) {
        Ok(m) if m.is_dir() => return Ok(()),
        Ok(_) => {
            return Err(io_err("mkdir", &pathname, io::Error::from_raw_os_error(libc::ENOTDIR)));
        }
        Err(_) => {}
    }
    let (existing, to_create) = find_existing_prefix(&real_base, &segments)?;
    let full_existing = canonicalize(&existing)?;
    if !full_existing.starts_with(&real_base) {
        return Err(SubPathError::OutsideBase {
            path: full_existing.display().to_string(),
            base: real_base.display().to_string(),
        });
    }
    let mut parent = safe_open(&full_existing, &real_base).map_err(|e| SubPathError::Io {
        op: "cannot open directory",
        path: existing.display().to_string(),
        source: io::Error::other(e.to_string()),
    })?;
    let mut current = full_existing;
    for dir in to_create {
        current.push(dir);
        let c = CString::new(dir.as_str())
            .map_err(|_| io_err("cannot create directory", &current, io::ErrorKind::InvalidInput.into()))?;
        // SAFETY: a valid fd and a single-component name: created in the directory the fd holds.
        if unsafe { libc::mkdirat(parent.as_raw_fd(), c.as_ptr(), perm & 0o7777) } != 0 {
            return Err(io_err("cannot create directory", &current, io::Error::last_os_error()));
        }
        // The container may have replaced the new directory by now: never by a symlink we would follow
        // (`O_NOFOLLOW`); by a file, which then fails the next `mkdirat` or gets mounted, both harmless.
        let child = openat(&parent, dir, NOFOLLOW_FLAGS).map_err(|e| io_err("cannot open", &current, e))?;
        // `mkdirat` was subject to the umask: the directory the container gets must have the volume's mode.
        // SAFETY: a valid fd.
        if unsafe { libc::fchmod(child.as_raw_fd(), perm & 0o7777) } != 0 {
            return Err(io_err("chmod", &current, io::Error::last_os_error()));
        }
        parent = child;
    }
    Ok(())
}

/// kubelet's `findExistingPrefix`: the longest existing prefix (symlinks followed, only to find where it ends)
/// and the directories still to create.
fn find_existing_prefix<'a>(base: &Path, segments: &'a [String]) -> Result<(PathBuf, &'a [String]), SubPathError> {
    let mut fd = open(base, libc::O_RDONLY | libc::O_CLOEXEC).map_err(|e| io_err("error opening", base, e))?;
    let mut current = base.to_path_buf();
    for (i, seg) in segments.iter().enumerate() {
        match openat(&fd, seg, libc::O_PATH | libc::O_CLOEXEC) {
            Ok(child) => fd = child,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok((current, &segments[i..])),
            Err(e) => return Err(io_err("error opening directory", &current.join(seg), e)),
        }
        current.push(seg);
    }
    Ok((current, &[]))
}

/// kubelet's `getSubpathBindTarget`: `<pod-dir>/volume-subpaths/<volume>/<container>/<index>` (the container
/// name is a DNS label and the volume name validated, so both are single safe path components).
pub fn bind_target(s: &SubPath) -> PathBuf {
    s.pod_dir
        .join(CONTAINER_SUB_PATH_DIRECTORY_NAME)
        .join(&s.volume_name)
        .join(&s.container_name)
        .join(s.volume_mount_index.to_string())
}

/// kubelet's `doBindSubPath`: resolves the subPath once, checks it is within the volume, opens it without
/// following symlinks and bind-mounts the open fd onto the subPath's target, which it returns. The fd pins what
/// was checked: swapping a directory for a symlink afterwards changes nothing the runtime mounts.
pub fn bind_sub_path(s: &SubPath) -> Result<PathBuf, SubPathError> {
    let (fd, path) = open_sub_path(s)?;
    let st = fstat(&fd).map_err(|e| io_err("stat", &path, e))?;
    let target = bind_target(s);
    // kubelet's `prepareSubpathTarget`: a mount already there is kept when it holds the same file.
    if is_mount_point(&target) {
        if same_file(&target, &st) {
            tracing::debug!(target = %target.display(), "subpath already mounted");
            return Ok(target);
        }
        unmount(&target).map_err(|e| io_err("error unmounting", &target, e))?;
    }
    let result = mount_fd(&fd, &st, &path, &target);
    if result.is_err() {
        if let Err(e) = clean_sub_path(s) {
            tracing::error!(target = %target.display(), error = %e, "failed to clean subpath");
        }
    }
    result.map(|()| target)
}

/// kubelet's symlink evaluation and `safeOpenSubPath`: the fd of the subPath and its resolved path.
fn open_sub_path(s: &SubPath) -> Result<(OwnedFd, PathBuf), SubPathError> {
    let volume_path = canonicalize(&s.volume_path)?;
    let path = canonicalize(&s.path)?;
    tracing::debug!(subpath = %s.path.display(), resolved = %path.display(), "binding subpath");
    // kubelet's `safeOpenSubPath`.
    if !path.starts_with(&volume_path) {
        return Err(SubPathError::NotWithinVolume {
            path: path.display().to_string(),
            base: volume_path.display().to_string(),
        });
    }
    let fd = safe_open(&path, &volume_path)
        .map_err(|e| SubPathError::OpenSubPath { path: path.display().to_string(), source: Box::new(e) })?;
    Ok((fd, path))
}

fn mount_fd(fd: &OwnedFd, st: &libc::stat, path: &Path, target: &Path) -> Result<(), SubPathError> {
    if let Some(parent) = target.parent() {
        create_dirs(parent).map_err(|e| io_err("error creating directory", parent, e))?;
    }
    if is_dir_mode(st.st_mode) {
        // A target left as a file by an earlier subPath that was a file (nothing is mounted on it).
        if std::fs::symlink_metadata(target).is_ok_and(|m| !m.is_dir()) {
            let _ = std::fs::remove_file(target);
        }
        match std::fs::DirBuilder::new().mode(BIND_DIR_MODE).create(target) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(io_err("error creating directory", target, e)),
        }
    } else {
        // A file is enough for every other kind (file, device, socket, ...): the bind mount changes its type.
        if std::fs::symlink_metadata(target).is_ok_and(|m| m.is_dir()) {
            let _ = std::fs::remove_dir(target);
        }
        std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(BIND_FILE_MODE)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(target)
            .map_err(|e| io_err("error creating file", target, e))?;
    }
    // The kernel resolves the fd's magic link to the very object opened, whatever its path is now.
    let source = PathBuf::from(format!("/proc/{}/fd/{}", std::process::id(), fd.as_raw_fd()));
    let (src, dst) = (c_path(&source), c_path(target));
    let (Ok(src), Ok(dst)) = (src, dst) else {
        return Err(io_err("error mounting", path, io::ErrorKind::InvalidInput.into()));
    };
    // SAFETY: valid C strings; a bind mount takes no filesystem type or data.
    let rc = unsafe { libc::mount(src.as_ptr(), dst.as_ptr(), std::ptr::null(), libc::MS_BIND, std::ptr::null()) };
    if rc != 0 {
        return Err(io_err("error mounting", path, io::Error::last_os_error()));
    }
    // What is mounted is what was opened and checked.
    if !same_file(target, st) {
        return Err(SubPathError::Verify { target: target.display().to_string(), path: path.display().to_string() });
    }
    tracing::debug!(subpath = %path.display(), target = %target.display(), "bound subpath");
    Ok(())
}

/// `os.MkdirAll(dir, 0750)`.
fn create_dirs(dir: &Path) -> io::Result<()> {
    std::fs::DirBuilder::new().recursive(true).mode(BIND_DIR_MODE).create(dir)
}

fn same_file(path: &Path, st: &libc::stat) -> bool {
    std::fs::metadata(path).is_ok_and(|m| m.dev() == st.st_dev && m.ino() == st.st_ino)
}

/// Whether `path` is a mount point, from `/proc/self/mountinfo` (a bind mount within one filesystem keeps its
/// device number, so comparing with the parent's would not tell).
fn is_mount_point(path: &Path) -> bool {
    let Ok(real) = std::fs::canonicalize(path) else { return false };
    mount_points().contains(&real)
}

fn mount_points() -> Vec<PathBuf> {
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else { return Vec::new() };
    info.lines().filter_map(|l| l.split(' ').nth(4)).map(|p| PathBuf::from(crate::volumes::unescape_mountinfo(p))).collect()
}

/// Unmounts `path`, detaching it lazily only when it is busy.
fn unmount(path: &Path) -> io::Result<()> {
    let c = c_path(path)?;
    // SAFETY: a valid C string.
    if unsafe { libc::umount2(c.as_ptr(), libc::UMOUNT_NOFOLLOW) } == 0 {
        return Ok(());
    }
    let e = io::Error::last_os_error();
    if e.raw_os_error() != Some(libc::EBUSY) {
        return Err(e);
    }
    // SAFETY: a valid C string.
    if unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH | libc::UMOUNT_NOFOLLOW) } == 0 {
        return Ok(());
    }
    Err(io::Error::last_os_error())
}

/// kubelet's `CleanupMountPoint` for one subpath target: unmounted (every mount stacked on it) and removed.
fn cleanup_mount_point(path: &Path) -> io::Result<()> {
    while is_mount_point(path) {
        unmount(path)?;
    }
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => std::fs::remove_dir(path),
        Ok(_) => std::fs::remove_file(path),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

/// kubelet's `cleanSubPath`: the target of one failed subPath, and its folders when they are left empty.
fn clean_sub_path(s: &SubPath) -> Result<(), SubPathError> {
    let target = bind_target(s);
    cleanup_mount_point(&target).map_err(|e| io_err("error cleaning subpath mount", &target, e))?;
    let stop = s.pod_dir.join(CONTAINER_SUB_PATH_DIRECTORY_NAME);
    let mut dir = target.parent();
    while let Some(d) = dir.filter(|d| d.starts_with(&stop)) {
        if std::fs::remove_dir(d).is_err() {
            break;
        }
        dir = d.parent();
    }
    Ok(())
}

/// kubelet's `CleanSubPaths` for every volume of the pod: unmounts and removes every subpath target under
/// `<pod-dir>/volume-subpaths`, then the folder itself.
pub fn clean_sub_paths(pod_dir: &Path) -> Result<(), SubPathError> {
    let root = pod_dir.join(CONTAINER_SUB_PATH_DIRECTORY_NAME);
    let volumes = match std::fs::read_dir(&root) {
        Ok(v) => v,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io_err("error reading", &root, e)),
    };
    for volume in volumes.flatten() {
        clean_volume_sub_paths(&volume.path())?;
    }
    match std::fs::remove_dir(&root) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io_err("error deleting", &root, e)),
    }
}

/// kubelet's `doCleanSubPaths` for one `volume-subpaths/<volume>` folder.
fn clean_volume_sub_paths(dir: &Path) -> Result<(), SubPathError> {
    let entries = std::fs::read_dir(dir).map_err(|e| io_err("error reading", dir, e))?;
    for c in entries.flatten() {
        let cdir = c.path();
        if !c.file_type().is_ok_and(|t| t.is_dir()) {
            continue;
        }
        let targets = std::fs::read_dir(&cdir).map_err(|e| io_err("error reading", &cdir, e))?;
        for t in targets.flatten() {
            let p = t.path();
            cleanup_mount_point(&p).map_err(|e| io_err("error cleaning subpath mount", &p, e))?;
        }
        std::fs::remove_dir(&cdir).map_err(|e| io_err("error deleting", &cdir, e))?;
    }
    std::fs::remove_dir(dir).map_err(|e| io_err("error deleting", dir, e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{symlink, PermissionsExt};
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;

    fn is_root() -> bool {
        // SAFETY: no arguments, no side effects.
        unsafe { libc::geteuid() == 0 }
    }

    struct Fixture {
        _dir: tempfile::TempDir,
        pod_dir: PathBuf,
        vol: PathBuf,
        outside: PathBuf,
    }

    fn fixture() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().canonicalize().unwrap();
        let pod_dir = root.join("pods/u1");
        let vol = pod_dir.join("volumes/kubernetes.io~empty-dir/scratch");
        std::fs::create_dir_all(&vol).unwrap();
        let outside = root.join("host");
        std::fs::create_dir(&outside).unwrap();
        std::fs::write(outside.join("marker"), "host").unwrap();
        Fixture { _dir: dir, pod_dir, vol, outside }
    }

    fn sub(f: &Fixture, sub_path: &str, index: usize) -> SubPath {
        SubPath {
            volume_mount_index: index,
            path: f.vol.join(sub_path),
            volume_name: "scratch".into(),
            volume_path: f.vol.clone(),
            pod_dir: f.pod_dir.clone(),
            container_name: "app".into(),
        }
    }

    fn mode(p: &Path) -> u32 {
        std::fs::metadata(p).unwrap().permissions().mode() & 0o7777
    }

    #[test]
    fn missing_directories_get_the_volumes_mode_whatever_the_umask() {
        let f = fixture();
        safe_make_dir(Path::new("a/./b//c"), &f.vol, 0o2777).unwrap();
        for d in ["a", "a/b", "a/b/c"] {
            assert_eq!(mode(&f.vol.join(d)), 0o2777, "{d}");
        }
        // There already: nothing changes.
        std::fs::set_permissions(f.vol.join("a"), std::fs::Permissions::from_mode(0o700)).unwrap();
        safe_make_dir(Path::new("a/b"), &f.vol, 0o777).unwrap();
        assert_eq!(mode(&f.vol.join("a")), 0o700);
        std::fs::write(f.vol.join("file"), "").unwrap();
        assert!(safe_make_dir(Path::new("file"), &f.vol, 0o777).is_err(), "a file is not a directory");
    }

    #[test]
    fn a_planted_symlink_out_of_the_volume_creates_nothing_outside() {
        let f = fixture();
        symlink(&f.outside, f.vol.join("esc")).unwrap();
        let e = safe_make_dir(Path::new("esc/probe"), &f.vol, 0o777).unwrap_err();
        assert!(matches!(e, SubPathError::OutsideBase { .. }), "{e}");
        assert!(!f.outside.join("probe").exists());
        // Deeper: still nothing.
        assert!(safe_make_dir(Path::new("esc/a/b"), &f.vol, 0o777).is_err());
        assert!(!f.outside.join("a").exists());
        // The directory itself, which exists: not mounted, not opened.
        let e = bind_sub_path(&sub(&f, "esc", 0)).unwrap_err();
        assert_eq!(
            e.to_string(),
            format!(
                "subpath {:?} not within volume path {:?}",
                f.outside.display().to_string(),
                f.vol.display().to_string()
            )
        );
        assert!(!f.pod_dir.join(CONTAINER_SUB_PATH_DIRECTORY_NAME).exists(), "no bind target left");
        // An absolute symlink is resolved on the node, where it leads out too.
        symlink("/", f.vol.join("abs")).unwrap();
        assert!(bind_sub_path(&sub(&f, "abs/etc", 0)).is_err());
    }

    #[test]
    fn dot_dot_and_absolute_sub_paths_never_leave_the_volume() {
        let f = fixture();
        assert!(safe_make_dir(Path::new("../host/x"), &f.vol, 0o777).is_err());
        assert!(safe_make_dir(Path::new("/tmp/x"), &f.vol, 0o777).is_err());
        assert!(!f.outside.join("x").exists());
        assert!(safe_open(&f.outside, &f.vol).is_err());
        assert!(safe_open(&f.vol.join("a/../../../host"), &f.vol).is_err());
    }

    #[test]
    fn symlinks_inside_the_volume_are_followed_once_as_kubelet_does() {
        let f = fixture();
        std::fs::create_dir(f.vol.join("real")).unwrap();
        symlink("real", f.vol.join("link")).unwrap();
        safe_make_dir(Path::new("link/new"), &f.vol, 0o755).unwrap();
        assert!(f.vol.join("real/new").is_dir(), "created where the inside symlink leads");
        let (fd, path) = open_sub_path(&sub(&f, "link/new", 0)).unwrap();
        assert_eq!(path, f.vol.join("real/new"));
        let want = std::fs::metadata(f.vol.join("real/new")).unwrap();
        let got = fstat(&fd).unwrap();
        assert_eq!((got.st_dev, got.st_ino), (want.dev(), want.ino()));
        // A symlink met while walking a resolved path is refused, even as the last component.
        let e = safe_open(&f.vol.join("link"), &f.vol).unwrap_err();
        assert!(matches!(e, SubPathError::UnexpectedSymlink(_)), "{e}");
        // A symlink as the final component of the subPath, to a file inside: the file.
        std::fs::write(f.vol.join("real/file"), "x").unwrap();
        symlink("real/file", f.vol.join("flink")).unwrap();
        let (_, path) = open_sub_path(&sub(&f, "flink", 0)).unwrap();
        assert_eq!(path, f.vol.join("real/file"));
    }

    #[test]
    fn file_sub_paths_are_bind_mounted_onto_a_file_and_cleaned() {
        if !is_root() {
            return;
        }
        let f = fixture();
        std::fs::write(f.vol.join("conf"), "inside").unwrap();
        std::fs::create_dir(f.vol.join("d")).unwrap();
        let file_target = bind_sub_path(&sub(&f, "conf", 0)).unwrap();
        assert_eq!(file_target, f.pod_dir.join("volume-subpaths/scratch/app/0"));
        assert!(file_target.is_file());
        assert_eq!(std::fs::read_to_string(&file_target).unwrap(), "inside");
        let dir_target = bind_sub_path(&sub(&f, "d", 1)).unwrap();
        assert!(is_mount_point(&dir_target) && is_mount_point(&file_target));
        // Again (a restarted container): the same mount, not a second one.
        bind_sub_path(&sub(&f, "d", 1)).unwrap();
        let count = mount_points().iter().filter(|m| **m == dir_target).count();
        assert_eq!(count, 1);
        clean_sub_paths(&f.pod_dir).unwrap();
        assert!(!f.pod_dir.join(CONTAINER_SUB_PATH_DIRECTORY_NAME).exists());
        assert!(!mount_points().iter().any(|m| m.starts_with(&f.pod_dir)));
        assert_eq!(std::fs::read_to_string(f.vol.join("conf")).unwrap(), "inside", "the volume's files stay");
    }

    /// A thread flips `d` between a directory and a symlink to a host directory holding a marker; whatever the
    /// timing, the subPath opened (and, as root, the bind mount made) is never the host directory.
    #[test]
    fn a_directory_swapped_for_a_symlink_never_yields_the_host_directory() {
        let f = fixture();
        let stop = Arc::new(AtomicBool::new(false));
        let flipper = {
            let (d, other) = (f.vol.join("d"), f.vol.join("other"));
            std::fs::create_dir(&d).unwrap();
            symlink(&f.outside, &other).unwrap();
            let (d, other, stop) = (c_path(&d).unwrap(), c_path(&other).unwrap(), stop.clone());
            std::thread::spawn(move || {
                let mut flips = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    // SAFETY: valid C strings; `d` is always there, a directory or the symlink.
                    let rc = unsafe {
                        libc::renameat2(
                            libc::AT_FDCWD,
                            d.as_ptr(),
                            libc::AT_FDCWD,
                            other.as_ptr(),
                            libc::RENAME_EXCHANGE,
                        )
                    };
                    assert_eq!(rc, 0, "{}", io::Error::last_os_error());
                    flips += 1;
                    // Uneven pauses: the swap lands anywhere in the walk, and some walks see a steady directory.
                    std::thread::sleep(std::time::Duration::from_micros(flips % 5 * 40));
                }
                flips
            })
        };
        let host = std::fs::metadata(&f.outside).unwrap();
        let (mut opened, mut mounted) = (0, 0);
        for i in 0..2000 {
            if let Ok((fd, _)) = open_sub_path(&sub(&f, "d", 0)) {
                let st = fstat(&fd).unwrap();
                assert!((st.st_dev, st.st_ino) != (host.dev(), host.ino()), "the host directory was opened");
                opened += 1;
            }
            if is_root() && i < 300 {
                if let Ok(target) = bind_sub_path(&sub(&f, "d", 0)) {
                    assert!(!target.join("marker").exists(), "the host directory was mounted");
                    mounted += 1;
                }
                clean_sub_paths(&f.pod_dir).unwrap();
            }
        }
        stop.store(true, Ordering::Relaxed);
        let flips = flipper.join().unwrap();
        assert!(flips > 100 && opened > 0, "flips {flips}, opened {opened}");
        assert!(!is_root() || mounted > 0, "no mount made it in 300 attempts");
        assert!(!mount_points().iter().any(|m| m.starts_with(&f.pod_dir)));
    }
}
