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

use crate::kubetypes::spec;
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

/// The last `lines` log lines of a CRI log file, at most `max_bytes` from their end, as kubelet's
/// `readLastStringFromContainerLogs` gives them (`ReadLogs` with `TailLines` into a circular buffer).
pub fn last_log_lines(path: &Path, lines: usize, max_bytes: usize) -> String {
    String::from_utf8_lossy(&log_tail_within(path, lines, max_bytes, LOG_TAIL_READ)).into_owned()
}

/// [`last_log_lines`], in bytes, reading at most the last `window` bytes of the file. kubelet reads back as far as the
/// lines go; this bound keeps the read small. A window that starts inside a line has lost that line's header, so
/// the fragment is dropped: containerd splits lines at 16 KiB, so in the default 256 KiB window this loses nothing
/// of the 2 KiB kept.
fn log_tail_within(path: &Path, lines: usize, max_bytes: usize, window: u64) -> Vec<u8> {
    // One byte more than the window: whether the byte before it ends a line.
    let Ok(data) = read_at_most(path, window.saturating_add(1)) else { return Vec::new() };
    let whole = data.len() as u64 <= window;
    let data = if whole {
        &data[..]
    } else {
        match data.iter().position(|&c| c == b'\n') {
            Some(i) => &data[i + 1..],
            None => &[][..],
        }
    };
    tail_log_content(data, lines, max_bytes)
}

/// What kubelet's `ReadLogs` writes for the last `lines` lines of `data` (`tail.FindTailLineStartIndex`: lines
/// as written, `P` and `F` alike, an unterminated last one not counted), keeping the last `max_bytes`. Lines that
/// do not parse are skipped and not counted; a partial line's content has no newline, so a chain of `P` lines
/// and its `F` line make one line of output.
fn tail_log_content(data: &[u8], lines: usize, max_bytes: usize) -> Vec<u8> {
    let start = data.iter().enumerate().rev().filter(|(_, &c)| c == b'\n').nth(lines).map_or(0, |(i, _)| i + 1);
    let mut out = Vec::new();
    let mut left = lines;
    for line in data[start..].split_inclusive(|&c| c == b'\n') {
        if left == 0 {
            break;
        }
        let Ok(parsed) = crate::logs::cri::parse_cri_line(line) else { continue };
        out.extend_from_slice(parsed.content);
        left -= 1;
    }
    let cut = out.len().saturating_sub(max_bytes);
    out.split_off(cut)
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
        // The last 80 lines as written, a partial line counting as one (kubelet's `FindTailLineStartIndex`):
        // "line 23" onwards.
        assert!(m.starts_with("line 23\n"), "{m:?}");
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

    #[test]
    fn log_lines_keep_a_carriage_return_and_skip_a_tag_without_content_field() {
        // kubelet's `parseCRILog` keeps every byte of the content up to the newline, and a line whose tag is not
        // followed by a space has no content field: it does not parse and is skipped.
        let data =
            b"2024-01-01T00:00:00Z stdout F dos\r\n2024-01-01T00:00:01Z stdout F\n2024-01-01T00:00:02Z stderr F x\n";
        assert_eq!(tail_log_content(data, 80, 2048), b"dos\r\nx\n");
    }

    #[test]
    fn partial_lines_count_as_lines_of_the_tail() {
        let data =
            b"2024-01-01T00:00:00Z stdout F a\n2024-01-01T00:00:00Z stdout P b\n2024-01-01T00:00:00Z stdout F c\n";
        assert_eq!(tail_log_content(data, 2, 2048), b"bc\n");
        assert_eq!(tail_log_content(data, 1, 2048), b"c\n");
    }

    #[test]
    fn invalid_utf8_counts_as_the_bytes_written() {
        // The circular buffer keeps bytes; only the message is made valid UTF-8, after the cut.
        let data = b"2024-01-01T00:00:00Z stdout F \xff\xfeab\n";
        assert_eq!(tail_log_content(data, 80, 3), b"ab\n");
        assert_eq!(tail_log_content(data, 80, 4), b"\xfeab\n");
    }

    #[test]
    fn a_window_starting_inside_a_line_drops_that_line() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("0.log");
        fs::write(
            &log,
            "2024-01-01T00:00:00Z stdout F 2024-01-01T00:00:00Z stdout P hidden\n2024-01-01T00:00:01Z stdout F end\n",
        )
        .unwrap();
        // The window starts at the timestamp inside the first line's content: that is not a line of the log.
        assert_eq!(log_tail_within(&log, 80, 2048, 71), b"end\n");
        // A window starting right at a line is read whole.
        assert_eq!(log_tail_within(&log, 80, 2048, 34), b"end\n");
        assert_eq!(log_tail_within(&log, 80, 2048, 1 << 20), b"2024-01-01T00:00:00Z stdout P hidden\nend\n");
    }

    mod props {
        use super::super::*;
        use proptest::prelude::*;

        /// One line of a CRI log as the runtime writes it, or one that does not parse.
        #[derive(Debug, Clone)]
        enum Rec {
            Line { header: String, partial: bool, content: Vec<u8> },
            Garbage(Vec<u8>),
        }

        impl Rec {
            fn bytes(&self) -> Vec<u8> {
                match self {
                    Rec::Line { header, content, .. } => [header.as_bytes(), b" ", content].concat(),
                    Rec::Garbage(b) => b.clone(),
                }
            }
        }

        const TIMESTAMPS: &[&str] = &[
            "2026-11-30T06:00:00.000000000Z",
            "2016-10-06T00:17:09.5Z",
            "2016-10-06T02:17:09.669794202+02:00",
            "2024-01-01T00:00:00Z",
        ];
        const TAGS: &[(&str, bool)] = &[("F", false), ("P", true), ("P:x", true), ("F:y", false)];

        /// Content bytes: anything but a newline, with spaces, carriage returns and invalid UTF-8 common.
        fn content() -> impl Strategy<Value = Vec<u8>> {
            let byte = prop_oneof![
                Just(b' '),
                Just(b'\r'),
                Just(0xffu8),
                Just(0xe2u8),
                b'a'..=b'z',
                any::<u8>().prop_filter("no newline", |b| *b != b'\n'),
            ];
            prop::collection::vec(byte, 0..24)
        }

        fn rec() -> impl Strategy<Value = Rec> {
            let line = (prop::sample::select(TIMESTAMPS), any::<bool>(), prop::sample::select(TAGS), content())
                .prop_map(|(ts, err, (tag, partial), content)| Rec::Line {
                    header: format!("{ts} {} {tag}", if err { "stderr" } else { "stdout" }),
                    partial,
                    content,
                });
            let garbage = prop_oneof![
                Just(b"".to_vec()),
                Just(b"nospace".to_vec()),
                Just(b"yesterday stdout F x".to_vec()),
                Just(b"2024-01-01T00:00:00Z stdlog F x".to_vec()),
                Just(b"2024-01-01T00:00:00Z stdout F".to_vec()),
                Just(b"2024-01-01T00:00:00Z stdout".to_vec()),
                // A first field that is no timestamp.
                content().prop_map(|c| [b"x".as_slice(), &c].concat()),
            ]
            .prop_map(Rec::Garbage);
            prop_oneof![4 => line, 1 => garbage]
        }

        fn file(recs: &[Rec], last_terminated: bool) -> Vec<u8> {
            let mut out = Vec::new();
            for (i, r) in recs.iter().enumerate() {
                out.extend_from_slice(&r.bytes());
                if i + 1 < recs.len() || last_terminated {
                    out.push(b'\n');
                }
            }
            out
        }

        /// kubelet's `ReadLogs` with `TailLines` into a circular buffer, from the lines as generated: the last
        /// `lines` newline-terminated lines and an unterminated last one, up to `lines` that parse; a full line's
        /// content ends with its newline, a partial one's does not.
        fn model(recs: &[Rec], last_terminated: bool, lines: usize, max: usize) -> Vec<u8> {
            let terminated = if last_terminated { recs.len() } else { recs.len().saturating_sub(1) };
            let mut out = Vec::new();
            let mut left = lines;
            for (i, r) in recs.iter().enumerate().skip(terminated.saturating_sub(lines)) {
                if left == 0 {
                    break;
                }
                if let Rec::Line { partial, content, .. } = r {
                    out.extend_from_slice(content);
                    if i < terminated && !partial {
                        out.push(b'\n');
                    }
                    left -= 1;
                }
            }
            out[out.len().saturating_sub(max)..].to_vec()
        }

        /// Where kubelet's tail starts in `file(recs, ..)`.
        fn tail_offset(recs: &[Rec], last_terminated: bool, lines: usize) -> usize {
            let terminated = if last_terminated { recs.len() } else { recs.len().saturating_sub(1) };
            recs[..terminated.saturating_sub(lines)].iter().map(|r| r.bytes().len() + 1).sum()
        }

        proptest! {
            #![proptest_config(ProptestConfig { cases: 1000, ..ProptestConfig::default() })]

            #[test]
            fn the_tail_is_what_kubelet_reads(
                recs in prop::collection::vec(rec(), 0..16),
                last_terminated in any::<bool>(),
                lines in 0usize..12,
                max in 0usize..160,
            ) {
                let data = file(&recs, last_terminated);
                prop_assert_eq!(tail_log_content(&data, lines, max), model(&recs, last_terminated, lines, max));
            }

            #[test]
            fn a_partial_chain_is_one_line(
                pieces in prop::collection::vec(content(), 1..6),
                stream in prop::sample::select(&["stdout", "stderr"][..]),
            ) {
                let mut data = Vec::new();
                for (i, p) in pieces.iter().enumerate() {
                    let tag = if i + 1 == pieces.len() { "F" } else { "P" };
                    data.extend_from_slice(format!("2024-01-01T00:00:00.{i}Z {stream} {tag} ").as_bytes());
                    data.extend_from_slice(p);
                    data.push(b'\n');
                }
                let mut want = pieces.concat();
                want.push(b'\n');
                prop_assert_eq!(tail_log_content(&data, MAX_LOG_LINES, usize::MAX), want);
            }

        }

        // These write a file per case.
        proptest! {
            #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

            #[test]
            fn a_window_holding_the_tail_reads_as_the_whole_file(
                recs in prop::collection::vec(rec(), 0..16),
                last_terminated in any::<bool>(),
                lines in 0usize..12,
                max in 0usize..160,
                near_the_tail in any::<bool>(),
                delta in -2i64..=2,
                anywhere in 0u64..600,
            ) {
                let data = file(&recs, last_terminated);
                let dir = tempfile::tempdir().unwrap();
                let log = dir.path().join("0.log");
                fs::write(&log, &data).unwrap();
                let tail_len = (data.len() - tail_offset(&recs, last_terminated, lines)) as i64;
                let window = if near_the_tail { (tail_len + delta).max(0) as u64 } else { anywhere };
                let got = log_tail_within(&log, lines, max, window);
                prop_assert!(got.len() <= max);
                if window as i64 >= tail_len {
                    prop_assert_eq!(got, tail_log_content(&data, lines, max));
                }
            }

            #[test]
            fn arbitrary_bytes_never_panic(
                data in prop::collection::vec(any::<u8>(), 0..2048),
                lines in 0usize..100,
                max in 0usize..4096,
                window in 0u64..4096,
            ) {
                prop_assert!(tail_log_content(&data, lines, max).len() <= max);
                let dir = tempfile::tempdir().unwrap();
                let log = dir.path().join("0.log");
                fs::write(&log, &data).unwrap();
                prop_assert!(log_tail_within(&log, lines, max, window).len() <= max);
            }
        }
    }
}
