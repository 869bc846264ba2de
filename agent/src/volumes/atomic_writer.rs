//! kubelet's `AtomicWriter`: the files of a configMap, secret, downwardAPI or projected volume are written into a
//! fresh timestamped directory, then published at once by renaming a `..data` symlink onto it. The user-visible
//! names are symlinks through `..data`, so a reader sees either the old set of files or the new one, never a mix.

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::io::Write;
use std::os::unix::fs::{symlink, OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

/// The symlink to the current payload directory.
pub const DATA_DIR_NAME: &str = "..data";
const NEW_DATA_DIR_NAME: &str = "..data_tmp";
/// Go's `MkdirTemp` pattern kubelet uses for payload directories.
const TS_FORMAT: &str = "..%Y_%m_%d_%H_%M_%S.";

/// One file of a volume: its content and mode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileProjection {
    pub data: Vec<u8>,
    pub mode: u32,
}

/// A volume's files by path relative to the volume.
pub type Payload = BTreeMap<String, FileProjection>;

/// kubelet's `validatePath`: relative, no `..` element, not starting with `..`, at most 4096 bytes.
pub fn validate_path(path: &str) -> Result<(), String> {
    if path.len() > 4096 {
        return Err(format!("invalid path: must be less than or equal to 4096 characters: {path}"));
    }
    if path.is_empty() {
        return Err("invalid path: must not be empty".into());
    }
    if Path::new(path).is_absolute() {
        return Err(format!("invalid path: must be relative path: {path}"));
    }
    if Path::new(path).components().any(|c| c == Component::ParentDir) || path.split('/').any(|e| e == "..") {
        return Err(format!("invalid path: must not contain '..': {path}"));
    }
    if path.starts_with("..") {
        return Err(format!("invalid path: must not start with '..': {path}"));
    }
    Ok(())
}

/// The top-level names the payload makes visible in the volume.
fn visible_names(payload: &Payload) -> BTreeSet<String> {
    payload.keys().filter_map(|p| p.split('/').find(|e| !e.is_empty())).map(str::to_owned).collect()
}

/// The files under `dir`, relative to it.
fn read_tree(dir: &Path) -> io::Result<Payload> {
    let mut out = Payload::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d)? {
            let entry = entry?;
            let path = entry.path();
            let meta = std::fs::symlink_metadata(&path)?;
            if meta.is_dir() {
                stack.push(path);
            } else if meta.is_file() {
                let rel = path.strip_prefix(dir).map_err(io::Error::other)?.to_string_lossy().into_owned();
                out.insert(
                    rel,
                    FileProjection { data: std::fs::read(&path)?, mode: meta.permissions().mode() & 0o7777 },
                );
            }
        }
    }
    Ok(out)
}

/// kubelet's `shouldWritePayload` and `pathsToRemove`: the same paths with the same bytes. Modes are not compared:
/// the ownership change widens them after writing (0400 becomes 0440 with `fsGroup`), and comparing them would
/// rewrite and re-own the volume on every sync.
fn same_files(existing: &Payload, payload: &Payload) -> bool {
    existing.len() == payload.len()
        && existing.iter().zip(payload).all(|((p1, f1), (p2, f2))| p1 == p2 && f1.data == f2.data)
}

/// Writes `payload` into `target` atomically. Returns whether anything changed.
pub fn write(target: &Path, payload: &Payload) -> io::Result<bool> {
    write_with_perms(target, payload, || Ok(()))
}

/// [`write`] with kubelet's `setPerms` hook: when the payload changed, `set_perms` runs once the new files are
/// written and before they are published (step 7 of kubelet's `AtomicWriter.Write`), so a reader never sees them
/// without their ownership. An unchanged payload writes nothing and does not call it.
pub fn write_with_perms(
    target: &Path,
    payload: &Payload,
    set_perms: impl FnOnce() -> io::Result<()>,
) -> io::Result<bool> {
    for path in payload.keys() {
        validate_path(path).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    }
    std::fs::create_dir_all(target)?;
    let data_link = target.join(DATA_DIR_NAME);
    let old_ts = std::fs::read_link(&data_link).ok().filter(|p| target.join(p).is_dir());
    let old_visible: BTreeSet<String> = match &old_ts {
        Some(old) => {
            let existing = read_tree(&target.join(old))?;
            if same_files(&existing, payload) {
                return Ok(false);
            }
            visible_names(&existing)
        }
        None => BTreeSet::new(),
    };

    let ts_dir = new_ts_dir(target)?;
    let result = write_payload(&ts_dir, payload).and_then(|()| set_perms());
    if let Err(e) = result {
        let _ = std::fs::remove_dir_all(&ts_dir);
        return Err(e);
    }
    let ts_name = ts_dir.file_name().map(PathBuf::from).unwrap_or_default();

    let new_visible = visible_names(payload);
    for name in &new_visible {
        let link = target.join(name);
        if std::fs::symlink_metadata(&link).is_err() {
            symlink(Path::new(DATA_DIR_NAME).join(name), &link)?;
        }
    }
    let tmp_link = target.join(NEW_DATA_DIR_NAME);
    let _ = std::fs::remove_file(&tmp_link);
    symlink(&ts_name, &tmp_link)?;
    std::fs::rename(&tmp_link, &data_link)?;

    for gone in old_visible.difference(&new_visible) {
        let link = target.join(gone);
        if let Err(e) = std::fs::remove_file(&link) {
            if e.kind() != io::ErrorKind::NotFound {
                return Err(e);
            }
        }
    }
    if let Some(old) = old_ts {
        std::fs::remove_dir_all(target.join(old))?;
    }
    Ok(true)
}

fn new_ts_dir(target: &Path) -> io::Result<PathBuf> {
    let stamp = jiff::Timestamp::now().strftime(TS_FORMAT).to_string();
    for attempt in 0u32..100 {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or_default();
        let dir = target.join(format!("{stamp}{}", nanos.wrapping_add(attempt)));
        match std::fs::create_dir(&dir) {
            Ok(()) => {
                std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755))?;
                return Ok(dir);
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e),
        }
    }
    Err(io::Error::other("cannot create a payload directory"))
}

fn write_payload(dir: &Path, payload: &Payload) -> io::Result<()> {
    for (path, file) in payload {
        let full = dir.join(path);
        if let Some(parent) = full.parent() {
            std::fs::create_dir_all(parent)?;
        }
        create_file(&full, file.mode)?.write_all(&file.data)?;
    }
    Ok(())
}

/// A new file with its final mode from the moment it exists: `open(O_CREAT | O_EXCL)` with `mode` (which the umask
/// can only narrow) and an `fchmod` to `mode` before any byte is written. kubelet's `writePayloadToDir` writes with
/// the umask's mode and chmods after, which leaves a secret readable by all for a moment under a lax umask.
fn create_file(path: &Path, mode: u32) -> io::Result<std::fs::File> {
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode & 0o7777)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)?;
    file.set_permissions(std::fs::Permissions::from_mode(mode & 0o7777))?;
    Ok(file)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn payload(files: &[(&str, &str, u32)]) -> Payload {
        files
            .iter()
            .map(|(p, d, m)| (p.to_string(), FileProjection { data: d.as_bytes().to_vec(), mode: *m }))
            .collect()
    }

    #[test]
    fn paths_must_stay_inside_the_volume() {
        assert!(validate_path("a/b").is_ok());
        assert!(validate_path("..a").unwrap_err().contains("must not start with '..'"));
        assert!(validate_path("a/../b").unwrap_err().contains("must not contain '..'"));
        assert!(validate_path("/etc/passwd").unwrap_err().contains("must be relative"));
    }

    #[test]
    fn writes_publish_through_the_data_link_and_remove_what_is_gone() {
        let dir = tempfile::tempdir().unwrap();
        let t = dir.path();
        assert!(write(t, &payload(&[("a", "1", 0o644), ("sub/b", "2", 0o400)])).unwrap());
        assert_eq!(std::fs::read_to_string(t.join("a")).unwrap(), "1");
        assert_eq!(std::fs::read_to_string(t.join("sub/b")).unwrap(), "2");
        assert_eq!(std::fs::read_link(t.join("a")).unwrap(), Path::new("..data/a"));
        let first = std::fs::read_link(t.join(DATA_DIR_NAME)).unwrap();
        assert!(first.to_string_lossy().starts_with("..20"), "{first:?}");
        let mode = std::fs::metadata(t.join("sub/b")).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o400);

        assert!(!write(t, &payload(&[("a", "1", 0o644), ("sub/b", "2", 0o400)])).unwrap(), "same payload");
        assert_eq!(std::fs::read_link(t.join(DATA_DIR_NAME)).unwrap(), first);

        assert!(write(t, &payload(&[("a", "3", 0o644)])).unwrap());
        assert_eq!(std::fs::read_to_string(t.join("a")).unwrap(), "3");
        assert!(std::fs::symlink_metadata(t.join("sub")).is_err(), "gone from the payload, gone from the volume");
        assert!(!t.join(&first).exists(), "the old payload directory is removed");
        let entries: Vec<String> =
            std::fs::read_dir(t).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
        assert_eq!(entries.len(), 3, "a, ..data and one payload directory: {entries:?}");
    }

    fn fd_mode(f: &std::fs::File) -> u32 {
        use std::os::unix::fs::MetadataExt;
        f.metadata().unwrap().mode() & 0o7777
    }

    /// A secret's file is never readable beyond its final mode, not even between its creation and its chmod: the
    /// descriptor the writer gets back, before a byte is written, already has the final mode, whatever the umask.
    /// (Asserted on the creation step the writer uses; the state between open and fchmod cannot be observed from a
    /// test, but the mode given to open is the final one, which the umask can only narrow.)
    #[test]
    fn files_are_created_with_their_final_mode() {
        let dir = tempfile::tempdir().unwrap();
        for (name, m) in [("secret", 0o400), ("group", 0o440), ("wide", 0o666), ("exec", 0o755)] {
            let f = create_file(&dir.path().join(name), m).unwrap();
            assert_eq!(fd_mode(&f), m, "{name}: the mode right after creation, before any data");
        }
        let again = create_file(&dir.path().join("secret"), 0o400).unwrap_err();
        assert_eq!(again.kind(), io::ErrorKind::AlreadyExists, "never opens a file someone else made");
        let target = dir.path().join("elsewhere");
        symlink(&target, dir.path().join("planted")).unwrap();
        assert!(create_file(&dir.path().join("planted"), 0o400).is_err());
        assert!(!target.exists(), "a planted link is not written through");
    }

    #[test]
    fn set_perms_runs_before_publishing_and_only_for_a_new_payload() {
        let dir = tempfile::tempdir().unwrap();
        let t = dir.path();
        let files = payload(&[("key", "v1", 0o400)]);
        let mut calls = 0;
        assert!(write_with_perms(t, &files, || {
            calls += 1;
            assert!(std::fs::symlink_metadata(t.join(DATA_DIR_NAME)).is_err(), "not yet published");
            Ok(())
        })
        .unwrap());
        assert_eq!(calls, 1);
        // What the ownership change does to the files (0400 with fsGroup becomes 0440) is no change of payload.
        std::fs::set_permissions(t.join("..data/key"), std::fs::Permissions::from_mode(0o440)).unwrap();
        assert!(!write_with_perms(t, &files, || {
            calls += 1;
            Ok(())
        })
        .unwrap());
        assert_eq!(calls, 1, "an unchanged payload is not re-owned");
        let err = write_with_perms(t, &payload(&[("key", "v2", 0o400)]), || Err(io::Error::other("no"))).unwrap_err();
        assert_eq!(err.to_string(), "no");
        assert_eq!(
            std::fs::read_to_string(t.join("key")).unwrap(),
            "v1",
            "a failed ownership change publishes nothing"
        );
    }
}
