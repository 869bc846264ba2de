//! kubelet's `SetVolumeOwnership`: with `fsGroup`, every file of the volume gets the group, group read (and write
//! unless the volume is read-only) and directories the setgid bit, so that files created later keep the group.
//! `fsGroupChangePolicy: OnRootMismatch` skips the walk when the volume's root already looks right.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

const RW_MASK: u32 = 0o660;
const RO_MASK: u32 = 0o440;
const EXEC_MASK: u32 = 0o110;
const SETGID: u32 = 0o2000;

/// `fsGroupChangePolicy: OnRootMismatch`.
pub const ON_ROOT_MISMATCH: &str = "OnRootMismatch";

/// kubelet's `requiresPermissionChange`: the root's group or mode (with setgid) is not yet what it must be.
fn requires_permission_change(root: &Path, fs_group: u32, readonly: bool) -> bool {
    let Ok(meta) = std::fs::metadata(root) else { return true };
    if meta.gid() != fs_group || !meta.is_dir() {
        return true;
    }
    let want = if readonly { RO_MASK } else { RW_MASK } | EXEC_MASK;
    let perm = meta.permissions().mode();
    perm & want != want || perm & SETGID == 0
}

/// The new mode of one file (kubelet's `changeFilePermission`); `None` for symlinks, whose mode means nothing.
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

/// Applies the pod's `fsGroup` to the volume at `root`.
pub fn set_volume_ownership(root: &Path, fs_group: i64, policy: Option<&str>, readonly: bool) -> std::io::Result<()> {
    let gid = u32::try_from(fs_group).map_err(|_| std::io::Error::other(format!("invalid fsGroup {fs_group}")))?;
    if policy == Some(ON_ROOT_MISMATCH) && !requires_permission_change(root, gid, readonly) {
        return Ok(());
    }
    let mut stack = vec![root.to_path_buf()];
    while let Some(path) = stack.pop() {
        let meta = std::fs::symlink_metadata(&path)?;
        if let Err(e) = std::os::unix::fs::lchown(&path, None, Some(gid)) {
            tracing::warn!(path = %path.display(), error = %e, "lchown failed");
        }
        let is_symlink = meta.file_type().is_symlink();
        if let Some(mode) = new_mode(meta.mode(), meta.is_dir(), is_symlink, readonly) {
            if let Err(e) = std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)) {
                tracing::warn!(path = %path.display(), error = %e, "chmod failed");
            }
        }
        if meta.is_dir() {
            for entry in std::fs::read_dir(&path)? {
                stack.push(entry?.path());
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_follow_kubelet() {
        assert_eq!(new_mode(0o644, false, false, true), Some(0o644));
        assert_eq!(new_mode(0o400, false, false, true), Some(0o440));
        assert_eq!(new_mode(0o600, false, false, false), Some(0o660));
        assert_eq!(new_mode(0o755, true, false, false), Some(0o2775));
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
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode(&root.join("f")), 0o600, "root fits: nothing walked");
        set_volume_ownership(&root, gid.into(), Some("Always"), false).unwrap();
        assert_eq!(mode(&root.join("f")), 0o660);
    }
}
