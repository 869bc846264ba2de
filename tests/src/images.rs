//! Test images and the local registry.
//!
//! `tests/scripts/build-images.sh` builds two OCI images (a static busybox and our own
//! `pause`, see `tests/images/pause/pause.c`), pushes them to a registry on
//! 127.0.0.1:5000 that it starts if none answers, and writes `docker-archive` tars of
//! both into the cache dir. [`ensure_images`] runs it once per test process.

use anyhow::{bail, Context, Result};
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Instant;

/// The local registry the images are pushed to (plain HTTP).
pub const REGISTRY: &str = "127.0.0.1:5000";
/// Static busybox; `Cmd ["sh"]`, `PATH=/bin:/usr/bin:/sbin:/usr/sbin`.
pub const BUSYBOX: &str = "127.0.0.1:5000/busybox:1.36";
/// The same image as [`BUSYBOX`].
pub const BUSYBOX_LATEST: &str = "127.0.0.1:5000/busybox:latest";
/// Sandbox image: only `/pause` (reaps children, exits 0 on SIGTERM/SIGINT).
pub const PAUSE: &str = "127.0.0.1:5000/pause:3.9";

/// Where the harness keeps its state: `$RKUBELET_TEST_STATE`, else `/var/lib/rkubelet-test`.
pub fn state_dir() -> PathBuf {
    std::env::var_os("RKUBELET_TEST_STATE")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/lib/rkubelet-test"))
}

/// The image cache: `$RKUBELET_TEST_IMAGE_DIR`, else `<state_dir>/images`.
pub fn image_cache_dir() -> PathBuf {
    std::env::var_os("RKUBELET_TEST_IMAGE_DIR")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| state_dir().join("images"))
}

/// `tests/scripts` of this crate.
pub fn scripts_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts")
}

/// What [`ensure_images`] produced.
#[derive(Debug, Clone)]
pub struct Images {
    /// The cache dir (see [`image_cache_dir`]).
    pub cache_dir: PathBuf,
    /// OCI layout of busybox (tags `1.36`, `latest`).
    pub busybox_oci: PathBuf,
    /// OCI layout of pause (tag `3.9`).
    pub pause_oci: PathBuf,
    /// `docker-archive` of busybox, named [`BUSYBOX`] and [`BUSYBOX_LATEST`] (for `ctr image import`).
    pub busybox_archive: PathBuf,
    /// `docker-archive` of pause, named [`PAUSE`].
    pub pause_archive: PathBuf,
    /// The static pause binary.
    pub pause_binary: PathBuf,
    /// What build-images.sh printed.
    pub build_log: String,
}

static IMAGES: OnceLock<Result<Images, String>> = OnceLock::new();

/// Builds the test images if needed and makes sure the registry on 127.0.0.1:5000 serves
/// them. Runs `build-images.sh` at most once per process (later calls return the first
/// result); concurrent test processes are serialised by a lock file in the state dir.
/// Needs write access to the state dir (root, for the default one).
pub fn ensure_images() -> Result<&'static Images> {
    IMAGES
        .get_or_init(|| build().map_err(|e| format!("{e:#}")))
        .as_ref()
        .map_err(|e| anyhow::anyhow!("ensure_images: {e}"))
}

fn build() -> Result<Images> {
    let state = state_dir();
    fs::create_dir_all(&state).with_context(|| format!("creating {}", state.display()))?;
    // The script takes its own lock (build-images.lock); this one is a different file so
    // the two never deadlock.
    let _lock = FileLock::lock(&state.join("ensure-images.lock"))?;
    let script = scripts_dir().join("build-images.sh");
    let started = Instant::now();
    let out = Command::new("bash").arg(&script).output().with_context(|| format!("running {}", script.display()))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        bail!("{} failed ({}):\n{stdout}{stderr}", script.display(), out.status);
    }
    let build_log = format!("{stdout}{stderr}");
    eprintln!("ensure_images: build-images.sh took {:?}\n{build_log}", started.elapsed());
    let cache = image_cache_dir();
    let images = Images {
        busybox_oci: cache.join("oci/busybox"),
        pause_oci: cache.join("oci/pause"),
        busybox_archive: cache.join("busybox.tar"),
        pause_archive: cache.join("pause.tar"),
        pause_binary: cache.join("pause"),
        cache_dir: cache,
        build_log,
    };
    for p in [&images.busybox_archive, &images.pause_archive] {
        if !p.is_file() {
            bail!("build-images.sh succeeded but {} is missing", p.display());
        }
    }
    Ok(images)
}

/// An exclusive `flock(2)` on a file, released on drop (and by the kernel when the
/// process dies). The fd is close-on-exec, so children never inherit the lock.
/// `flock` locks belong to the open file description: two `FileLock`s on one path
/// exclude each other even within a process.
#[derive(Debug)]
pub struct FileLock {
    _file: File,
    path: PathBuf,
}

impl FileLock {
    /// Blocks until the lock is held. Creates the file and its parent dirs.
    pub fn lock(path: &Path) -> Result<FileLock> {
        let file = Self::open(path)?;
        loop {
            // SAFETY: flock on an fd we own.
            if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) } == 0 {
                return Ok(FileLock { _file: file, path: path.to_owned() });
            }
            let err = io::Error::last_os_error();
            if err.kind() != io::ErrorKind::Interrupted {
                return Err(err).with_context(|| format!("flock {}", path.display()));
            }
        }
    }

    /// Takes the lock if it is free; `Ok(None)` if someone holds it.
    pub fn try_lock(path: &Path) -> Result<Option<FileLock>> {
        let file = Self::open(path)?;
        // SAFETY: flock on an fd we own.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
            return Ok(Some(FileLock { _file: file, path: path.to_owned() }));
        }
        let err = io::Error::last_os_error();
        if err.raw_os_error() == Some(libc::EWOULDBLOCK) {
            Ok(None)
        } else {
            Err(err).with_context(|| format!("flock {}", path.display()))
        }
    }

    /// The lock file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn open(path: &Path) -> Result<File> {
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
        }
        OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .with_context(|| format!("opening {}", path.display()))
    }
}
