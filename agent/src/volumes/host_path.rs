//! kubelet's hostPath `type` checks (`checkType`), with its messages.

use std::fs::OpenOptions;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, OpenOptionsExt};
use std::path::Path;

/// What a hostPath is on the node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FileType {
    Directory,
    File,
    Socket,
    CharDevice,
    BlockDevice,
    Other,
}

fn file_type(path: &Path) -> Result<Option<FileType>, String> {
    match std::fs::metadata(path) {
        Ok(m) => {
            let t = m.file_type();
            Ok(Some(if t.is_dir() {
                FileType::Directory
            } else if t.is_file() {
                FileType::File
            } else if t.is_socket() {
                FileType::Socket
            } else if t.is_char_device() {
                FileType::CharDevice
            } else if t.is_block_device() {
                FileType::BlockDevice
            } else {
                FileType::Other
            }))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e.to_string()),
    }
}

fn expect(path: &Path, want: FileType, what: &str) -> Result<(), String> {
    match file_type(path)? {
        None => Err(format!("path {:?} does not exist", path.display().to_string())),
        Some(t) if t == want => Ok(()),
        Some(_) => Err(format!("path {:?} exists but is not a {what}", path.display().to_string())),
    }
}

/// Checks (and for the `OrCreate` types creates) the hostPath as its `type` asks.
pub fn check_type(path: &Path, path_type: &str) -> Result<(), String> {
    if path.components().any(|c| c == std::path::Component::ParentDir) {
        return Err(format!("invalid HostPath `{}`: must not contain '..'", path.display()));
    }
    match path_type {
        "" => Ok(()),
        "DirectoryOrCreate" => {
            if file_type(path)?.is_none() {
                return std::fs::DirBuilder::new().recursive(true).mode(0o755).create(path).map_err(|e| e.to_string());
            }
            expect(path, FileType::Directory, "directory")
        }
        "Directory" => expect(path, FileType::Directory, "directory"),
        "FileOrCreate" => {
            if file_type(path)?.is_none() {
                return OpenOptions::new()
                    .write(true)
                    .create(true)
                    .truncate(false)
                    .mode(0o644)
                    .open(path)
                    .map(drop)
                    .map_err(|e| e.to_string());
            }
            expect(path, FileType::File, "file")
        }
        "File" => expect(path, FileType::File, "file"),
        "Socket" => expect(path, FileType::Socket, "socket"),
        "CharDevice" => expect(path, FileType::CharDevice, "character device"),
        "BlockDevice" => expect(path, FileType::BlockDevice, "block device"),
        other => Err(format!("{other} is an invalid volume type")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_type_is_checked_with_kubelets_messages() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let file = d.join("f");
        std::fs::write(&file, "x").unwrap();
        let sock_path = d.join("s");
        let _sock = std::os::unix::net::UnixListener::bind(&sock_path).unwrap();
        let q = |p: &Path| format!("{:?}", p.display().to_string());

        assert_eq!(check_type(&d.join("nope"), ""), Ok(()), "no type, no check");
        assert_eq!(check_type(d, "Directory"), Ok(()));
        assert_eq!(check_type(&file, "Directory"), Err(format!("path {} exists but is not a directory", q(&file))));
        assert_eq!(
            check_type(&d.join("nope"), "Directory"),
            Err(format!("path {} does not exist", q(&d.join("nope"))))
        );
        assert_eq!(check_type(&file, "File"), Ok(()));
        assert_eq!(check_type(d, "File"), Err(format!("path {} exists but is not a file", q(d))));
        assert_eq!(check_type(&sock_path, "Socket"), Ok(()));
        assert_eq!(check_type(&file, "Socket"), Err(format!("path {} exists but is not a socket", q(&file))));
        assert_eq!(check_type(Path::new("/dev/null"), "CharDevice"), Ok(()));
        assert_eq!(
            check_type(&file, "CharDevice"),
            Err(format!("path {} exists but is not a character device", q(&file)))
        );
        assert_eq!(
            check_type(&file, "BlockDevice"),
            Err(format!("path {} exists but is not a block device", q(&file)))
        );
        assert_eq!(check_type(&file, "Fifo"), Err("Fifo is an invalid volume type".into()));

        let created = d.join("new/deep");
        assert_eq!(check_type(&created, "DirectoryOrCreate"), Ok(()));
        assert!(created.is_dir());
        assert_eq!(
            check_type(&file, "DirectoryOrCreate"),
            Err(format!("path {} exists but is not a directory", q(&file)))
        );
        let new_file = d.join("new/file");
        assert_eq!(check_type(&new_file, "FileOrCreate"), Ok(()));
        assert!(new_file.is_file());
        assert_eq!(check_type(d, "FileOrCreate"), Err(format!("path {} exists but is not a file", q(d))));
        assert!(check_type(Path::new("/tmp/../etc"), "Directory").unwrap_err().contains("must not contain '..'"));
    }
}
