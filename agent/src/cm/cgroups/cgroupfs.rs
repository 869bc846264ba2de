//! The cgroupfs driver: the agent creates the cgroup folders and writes their files itself.

use std::path::Path;

use super::{io_err, CgroupError, CgroupName, WANTED_CONTROLLERS};
use crate::cm::convert::shares_to_weight;
use crate::cm::pod::ResourceConfig;

/// cgroup v2 file values for a resource config: (file, value) pairs.
pub fn cgroup_v2_files(cfg: &ResourceConfig) -> Vec<(&'static str, String)> {
    let mut files = Vec::new();
    if let Some(shares) = cfg.cpu_shares {
        files.push(("cpu.weight", shares_to_weight(shares).to_string()));
    }
    if let Some(period) = cfg.cpu_period_us {
        let quota = match cfg.cpu_quota_us {
            Some(q) if q > 0 => q.to_string(),
            _ => "max".into(),
        };
        files.push(("cpu.max", format!("{quota} {period}")));
    }
    if let Some(mem) = cfg.memory_limit_bytes {
        files.push(("memory.max", if mem > 0 { mem.to_string() } else { "max".into() }));
    }
    // runc's fs2 `setPids`: a positive limit, or -1 for none.
    if let Some(pids) = cfg.pids_limit.filter(|p| *p != 0) {
        files.push(("pids.max", if pids > 0 { pids.to_string() } else { "max".into() }));
    }
    files
}

/// Creates the cgroup folder (and its parents) with the controllers enabled down to it and writes the config.
pub fn ensure(mount: &Path, name: &CgroupName, cfg: &ResourceConfig) -> Result<(), CgroupError> {
    let mut dir = mount.to_owned();
    for part in &name.0 {
        enable_controllers(&dir);
        dir.push(part);
        match std::fs::create_dir(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(io_err(&dir, "create")(e)),
        }
    }
    enable_controllers(&dir);
    for (file, value) in cgroup_v2_files(cfg) {
        let path = dir.join(file);
        std::fs::write(&path, &value).map_err(io_err(&path, "write"))?;
    }
    Ok(())
}

fn enable_controllers(dir: &Path) {
    let available = std::fs::read_to_string(dir.join("cgroup.controllers")).unwrap_or_default();
    let enabled = std::fs::read_to_string(dir.join("cgroup.subtree_control")).unwrap_or_default();
    for c in WANTED_CONTROLLERS {
        if available.split_whitespace().any(|a| a == c) && !enabled.split_whitespace().any(|e| e == c) {
            if let Err(e) = std::fs::write(dir.join("cgroup.subtree_control"), format!("+{c}")) {
                tracing::debug!(dir = %dir.display(), controller = c, error = %e, "cannot enable controller");
            }
        }
    }
}

/// Removes a cgroup directory and its children, deepest first (cgroupfs directories are removed with rmdir).
pub fn remove_tree(path: &Path) -> Result<(), CgroupError> {
    if let Ok(entries) = std::fs::read_dir(path) {
        for entry in entries.flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                remove_tree(&entry.path())?;
            }
        }
    }
    match std::fs::remove_dir(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        // A plain folder in tests: remove its files too.
        Err(_) if !path.join("cgroup.procs").exists() => std::fs::remove_dir_all(path).map_err(io_err(path, "remove")),
        Err(e) => Err(io_err(path, "remove")(e)),
    }
}
