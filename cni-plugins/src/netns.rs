//! Running code inside a network namespace.
//!
//! `setns(CLONE_NEWNET)` changes the namespace of the calling thread only, so the work runs on a
//! dedicated thread that enters the namespace, does its job and exits. No other code of the plugin
//! ever runs in the pod's namespace, and the main thread never leaves the host's.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::Path;

use crate::error::{CniError, Result, ERR_UNKNOWN_CONTAINER};

/// Open a namespace file (e.g. `/var/run/netns/x`, `/proc/<pid>/ns/net`).
/// `Ok(None)` when it does not exist (DEL treats that as nothing to do).
pub fn open(path: &Path) -> Result<Option<File>> {
    match File::open(path) {
        Ok(f) => Ok(Some(f)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(CniError::io(format!("failed to open netns {}", path.display()), e)),
    }
}

/// Open a namespace that must exist (ADD, CHECK): a missing one is "container unknown".
pub fn open_required(path: &Path) -> Result<File> {
    open(path)?.ok_or_else(|| {
        CniError::new(ERR_UNKNOWN_CONTAINER, format!("network namespace {} does not exist", path.display()))
    })
}

/// Run `f` on a new thread that has joined the network namespace `ns`.
pub fn run_in<T, F>(ns: &File, f: F) -> Result<T>
where
    T: Send,
    F: FnOnce() -> Result<T> + Send,
{
    let fd = ns.as_raw_fd();
    std::thread::scope(|s| {
        let handle = s.spawn(move || {
            // SAFETY: setns on a file descriptor we own for the duration of the scope; it only
            // affects this thread, which exits when `f` returns.
            let rc = unsafe { libc::setns(fd, libc::CLONE_NEWNET) };
            if rc != 0 {
                return Err(CniError::io("failed to enter network namespace", std::io::Error::last_os_error()));
            }
            f()
        });
        handle.join().unwrap_or_else(|_| Err(CniError::internal("namespace worker thread panicked")))
    })
}
