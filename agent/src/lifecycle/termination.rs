//! Termination messages, as kubelet gives them: a file created in the pod folder (writable by any user) is
//! bind-mounted at `terminationMessagePath`; when the container has exited, the end of that file (at most 4 KiB)
//! becomes `state.terminated.message`, or with `FallbackToLogsOnError` and a failed container whose file is empty,
//! the last 80 lines (at most 2 KiB) of its log.

use std::collections::HashMap;
use std::fs::{self, File};
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1::{Container, Pod};

use crate::pods::spec;
use crate::runtime::{ContainerRecord, ContainerRunState, Mount, ObservedPod};

/// The API's default `terminationMessagePath`.
pub const DEFAULT_TERMINATION_MESSAGE_PATH: &str = "/dev/termination-log";
pub const POLICY_FALLBACK_TO_LOGS_ON_ERROR: &str = "FallbackToLogsOnError";
/// kubelet's `MaxContainerTerminationMessageLength`, `...LogLength` and `...LogLines`.
pub const MAX_MESSAGE_LENGTH: u64 = 4 * 1024;
pub const MAX_LOG_LENGTH: usize = 2048;
pub const MAX_LOG_LINES: usize = 80;
/// How much of the end of a log file is read to find its last lines.
const LOG_TAIL_READ: u64 = 256 * 1024;
/// containerd's reason for a container whose process could not be started: it has no log to fall back to.
const REASON_CONTAINER_CANNOT_RUN: &str = "ContainerCannotRun";

/// The container's `terminationMessagePath`, the API default when unset; `None` when set empty.
pub fn message_path(container: &Container) -> Option<&str> {
    match container.termination_message_path.as_deref() {
        None => Some(DEFAULT_TERMINATION_MESSAGE_PATH),
        Some("") => None,
        Some(p) => Some(p),
    }
}

/// Where the host side of an instance's termination message lives: `<pod-dir>/containers/<name>/<restart>`.
pub fn host_file(pod_dir: &Path, container: &str, restart_count: u32) -> PathBuf {
    pod_dir.join("containers").join(container).join(format!("termination-log-{restart_count}"))
}

/// Creates the empty message file of a new instance, writable by whatever user the container runs as. Returns
/// the (host, container) paths of the bind mount, or `None` when the container has no message path.
pub fn prepare(pod_dir: &Path, container: &Container, restart_count: u32) -> std::io::Result<Option<(String, String)>> {
    let Some(path) = message_path(container) else { return Ok(None) };
    let file = host_file(pod_dir, &container.name, restart_count);
    if let Some(dir) = file.parent() {
        fs::create_dir_all(dir)?;
    }
    File::create(&file)?;
    // Explicitly, past the umask: a container running as any user must be able to write its message.
    fs::set_permissions(&file, fs::Permissions::from_mode(0o666))?;
    Ok(Some((file.display().to_string(), path.to_owned())))
}

/// The bind mount of a new instance's message file (created here), kubelet's part of `makeMounts` for
/// `terminationMessagePath`; the error is the container's `CreateContainerConfigError` message.
pub fn mount(pod_dir: &Path, container: &Container, restart_count: u32) -> Result<Option<Mount>, String> {
    let prepared = prepare(pod_dir, container, restart_count)
        .map_err(|e| format!("failed to create the termination message file of container {:?}: {e}", container.name))?;
    Ok(prepared.map(|(host_path, container_path)| Mount {
        container_path,
        host_path,
        readonly: false,
        ..Default::default()
    }))
}

/// The last `max` bytes of a file (kubelet's `tail.ReadAtMost`).
fn read_at_most(path: &Path, max: u64) -> std::io::Result<Vec<u8>> {
    let mut f = File::open(path)?;
    let len = f.metadata()?.len();
    if len > max {
        f.seek(SeekFrom::Start(len - max))?;
    }
    let mut data = Vec::new();
    f.take(max).read_to_end(&mut data)?;
    Ok(data)
}

/// The last `lines` log lines of a CRI log file (`<time> <stream> <P|F> <content>`, partial lines joined), at most
/// `max_bytes` from their end, as kubelet's `readLastStringFromContainerLogs` gives them.
pub fn last_log_lines(path: &Path, lines: usize, max_bytes: usize) -> String {
    let Ok(data) = read_at_most(path, LOG_TAIL_READ) else { return String::new() };
    let text = String::from_utf8_lossy(&data);
    let mut logical: Vec<String> = Vec::new();
    let mut partial = String::new();
    for line in text.lines() {
        let mut parts = line.splitn(4, ' ');
        let (Some(_time), Some(_stream), Some(tag)) = (parts.next(), parts.next(), parts.next()) else { continue };
        let content = parts.next().unwrap_or("");
        partial.push_str(content);
        if tag != "P" {
            partial.push('\n');
            logical.push(std::mem::take(&mut partial));
        }
    }
    // A last line without its newline (`echo -n`) is only ever written as partial.
    if !partial.is_empty() {
        logical.push(partial);
    }
    let start = logical.len().saturating_sub(lines);
    let joined: String = logical[start..].concat();
    let bytes = joined.as_bytes();
    let cut = bytes.len().saturating_sub(max_bytes);
    String::from_utf8_lossy(&bytes[cut..]).into_owned()
}

/// kubelet's termination message of an exited instance: the message file, else (`FallbackToLogsOnError`, failed,
/// file empty or missing) the log's end.
pub fn message(container: &Container, record: &ContainerRecord, pod_dir: &Path, log_file: &Path) -> String {
    let fallback = container.termination_message_policy.as_deref() == Some(POLICY_FALLBACK_TO_LOGS_ON_ERROR)
        && record.exit_code != 0
        && record.reason != REASON_CONTAINER_CANNOT_RUN;
    let (text, check_logs) = match message_path(container) {
        None => (String::new(), fallback),
        Some(_) => {
            let file = host_file(pod_dir, &container.name, record.restart_count);
            match read_at_most(&file, MAX_MESSAGE_LENGTH) {
                Ok(data) => {
                    let empty = data.is_empty();
                    (String::from_utf8_lossy(&data).into_owned(), fallback && empty)
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => (String::new(), fallback),
                Err(e) => (format!("Error on reading termination log {}: {e}", file.display()), false),
            }
        }
    };
    if check_logs {
        last_log_lines(log_file, MAX_LOG_LINES, MAX_LOG_LENGTH)
    } else {
        text
    }
}

/// Adds the termination messages of the pod's exited instances to their records (after the runtime's own message,
/// as kubelet joins them with ": "). A message found is kept: an exited container's does not change.
pub fn fill_messages(
    pod: &Pod,
    observed: &mut ObservedPod,
    pod_dir: &Path,
    pod_log_dir: &Path,
    cache: &mut HashMap<String, String>,
) {
    let containers: Vec<&Container> =
        spec::init_containers(pod).iter().chain(spec::spec(pod).containers.iter()).collect();
    cache.retain(|id, _| observed.containers.iter().any(|c| &c.id == id));
    for record in observed.containers.iter_mut().filter(|c| c.state == ContainerRunState::Exited) {
        let Some(container) = containers.iter().find(|c| c.name == record.name) else { continue };
        let text = match cache.get(&record.id) {
            Some(text) => text.clone(),
            None => {
                let log = pod_log_dir.join(&record.name).join(format!("{}.log", record.restart_count));
                let text = message(container, record, pod_dir, &log);
                // An empty message is read again next time: the runtime may not have flushed the log yet.
                if !text.is_empty() {
                    cache.insert(record.id.clone(), text.clone());
                }
                text
            }
        };
        if !text.is_empty() {
            record.message = if record.message.is_empty() { text } else { format!("{}: {text}", record.message) };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn record(exit_code: i32) -> ContainerRecord {
        ContainerRecord {
            id: "c1".into(),
            sandbox_id: "sb1".into(),
            pod_uid: "uid-1".into(),
            name: "app".into(),
            restart_count: 0,
            spec_hash: String::new(),
            state: ContainerRunState::Exited,
            created_at: std::time::SystemTime::UNIX_EPOCH,
            started_at: None,
            finished_at: None,
            exit_code,
            reason: String::new(),
            message: String::new(),
            image: String::new(),
            image_ref: String::new(),
            termination_grace_period: None,
        }
    }

    fn container(policy: Option<&str>) -> Container {
        Container { name: "app".into(), termination_message_policy: policy.map(str::to_owned), ..Default::default() }
    }

    fn write_log(path: &Path, lines: &[(&str, &str)]) {
        let mut f = File::create(path).unwrap();
        for (tag, content) in lines {
            writeln!(f, "2026-11-30T06:00:00.000000000Z stdout {tag} {content}").unwrap();
        }
    }

    #[test]
    fn the_file_is_created_writable_by_anyone_and_read_from_its_end() {
        let dir = tempfile::tempdir().unwrap();
        let c = container(None);
        let (host, path) = prepare(dir.path(), &c, 0).unwrap().unwrap();
        assert_eq!(path, "/dev/termination-log");
        let mode = fs::metadata(&host).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o666);
        fs::write(&host, "x".repeat(5000) + "the end").unwrap();
        let m = message(&c, &record(0), dir.path(), &dir.path().join("none.log"));
        assert_eq!(m.len(), 4096);
        assert!(m.ends_with("the end"));
        let empty_path = Container { termination_message_path: Some(String::new()), ..c };
        assert_eq!(prepare(dir.path(), &empty_path, 1).unwrap(), None);
    }

    #[test]
    fn fallback_to_logs_only_on_error_with_an_empty_file() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("0.log");
        let lines: Vec<String> = (0..100).map(|i| format!("line {i}")).collect();
        let mut entries: Vec<(&str, &str)> = lines.iter().map(|l| ("F", l.as_str())).collect();
        entries.push(("P", "part-"));
        entries.push(("F", "joined"));
        entries.push(("P", "no-newline"));
        write_log(&log, &entries);
        let c = container(Some("FallbackToLogsOnError"));
        prepare(dir.path(), &c, 0).unwrap();
        // Exit 0: no fallback.
        assert_eq!(message(&c, &record(0), dir.path(), &log), "");
        let m = message(&c, &record(1), dir.path(), &log);
        assert!(m.ends_with("line 99\npart-joined\nno-newline"), "{m:?}");
        // The last 80 lines: "line 22" onwards.
        assert!(m.starts_with("line 22\n"), "{m:?}");
        // The policy File never reads the log.
        assert_eq!(message(&container(None), &record(1), dir.path(), &log), "");
        // A message written by the application wins over the log.
        fs::write(host_file(dir.path(), "app", 0), "bye").unwrap();
        assert_eq!(message(&c, &record(1), dir.path(), &log), "bye");
    }

    #[test]
    fn at_most_2048_bytes_of_log() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("0.log");
        let long = "y".repeat(100);
        let entries: Vec<(&str, &str)> = (0..50).map(|_| ("F", long.as_str())).collect();
        write_log(&log, &entries);
        assert_eq!(last_log_lines(&log, 80, 2048).len(), 2048);
    }
}
