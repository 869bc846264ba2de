//! Property tests of the CRI log line format (`<RFC3339Nano> <stdout|stderr> <P|F>[:tags] <content>`) as the
//! agent reads it for `/containerLogs` (`server::logs`) and checked against kubelet's `parseCRILog`, `ReadLogs`
//! and `tail.FindTailLineStartIndex` (pkg/kubelet/kuberuntime/logs/logs.go, pkg/util/tail/tail.go).

use proptest::prelude::*;

use crate::logs::cri::{parse_cri_line, read_logs, tail_start, ContainerState, LogOptions, LogWriter, Stream};

/// A timestamp as containerd writes it (Go's `time.RFC3339Nano`: trailing zeros of the fraction dropped), in UTC
/// or at an offset.
fn rfc3339nano(secs: i64, nanos: i32, offset_minutes: Option<i32>) -> String {
    let ts = jiff::Timestamp::new(secs, nanos).unwrap();
    let offset = jiff::tz::Offset::from_seconds(offset_minutes.unwrap_or(0) * 60).unwrap();
    let mut s = offset.to_datetime(ts).strftime("%Y-%m-%dT%H:%M:%S").to_string();
    if nanos != 0 {
        s.push('.');
        s.push_str(format!("{nanos:09}").trim_end_matches('0'));
    }
    match offset_minutes {
        None => s.push('Z'),
        Some(m) => s.push_str(&format!("{}{:02}:{:02}", if m < 0 { '-' } else { '+' }, m.abs() / 60, m.abs() % 60)),
    }
    s
}

fn timestamp() -> impl Strategy<Value = (String, jiff::Timestamp)> {
    let offset = prop_oneof![Just(None), (-14 * 60..=14 * 60).prop_map(Some)];
    (0i64..4_000_000_000, prop_oneof![Just(0i32), 0i32..1_000_000_000], offset).prop_map(|(secs, nanos, offset)| {
        (rfc3339nano(secs, nanos, offset), jiff::Timestamp::new(secs, nanos).unwrap())
    })
}

/// Content: anything but a newline, with spaces, carriage returns and invalid UTF-8 common.
fn content() -> impl Strategy<Value = Vec<u8>> {
    let byte = prop_oneof![
        Just(b' '),
        Just(b'\r'),
        Just(0xffu8),
        b'a'..=b'z',
        any::<u8>().prop_filter("no newline", |b| *b != b'\n'),
    ];
    prop::collection::vec(byte, 0..40)
}

fn tag() -> impl Strategy<Value = (String, bool)> {
    (prop::sample::select(&["P", "F"][..]), prop::sample::select(&["", ":x", ":P", ":a:b"][..]))
        .prop_map(|(t, extra)| (format!("{t}{extra}"), t == "P"))
}

fn stream() -> impl Strategy<Value = Stream> {
    prop_oneof![Just(Stream::Stdout), Just(Stream::Stderr)]
}

fn stream_name(s: Stream) -> &'static str {
    match s {
        Stream::Stdout => "stdout",
        Stream::Stderr => "stderr",
    }
}

fn line(ts: &str, stream: Stream, tag: &str, content: &[u8]) -> Vec<u8> {
    [format!("{ts} {} {tag} ", stream_name(stream)).as_bytes(), content, b"\n"].concat()
}

/// kubelet's `FindTailLineStartIndex` on a slice, from the front: the start of the last `n` complete lines.
fn tail_model(data: &[u8], n: u64) -> u64 {
    let ends: Vec<usize> = data.iter().enumerate().filter(|(_, &c)| c == b'\n').map(|(i, _)| i + 1).collect();
    match ends.len().checked_sub(n as usize + 1) {
        Some(i) => ends[i] as u64,
        None => 0,
    }
}

fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(f)
}

struct Exited;
impl ContainerState for Exited {
    fn running(&self) -> futures::future::BoxFuture<'_, bool> {
        Box::pin(async { false })
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1000, ..ProptestConfig::default() })]

    #[test]
    fn any_bytes_parse_or_fail_without_panic(
        bytes in prop::collection::vec(any::<u8>(), 0..200),
        prefix in prop::sample::select(&["", "2024-01-01T00:00:00Z ", "2024-01-01T00:00:00Z stdout ", "2024-01-01T00:00:00Z stderr P"][..]),
        newline in any::<bool>(),
    ) {
        let mut l = [prefix.as_bytes(), &bytes].concat();
        if newline {
            l.push(b'\n');
        }
        if let Ok(parsed) = parse_cri_line(&l) {
            // The content is the line's end, less the newline of a partial line.
            prop_assert!(l.starts_with(parsed.timestamp.as_bytes()));
            let stripped = l.strip_suffix(b"\n").unwrap_or(&l);
            prop_assert!(l.ends_with(parsed.content) || stripped.ends_with(parsed.content));
        }
    }

    #[test]
    fn valid_lines_round_trip(
        (ts, time) in timestamp(),
        stream in stream(),
        (tag, partial) in tag(),
        content in content(),
    ) {
        let l = line(&ts, stream, &tag, &content);
        let parsed = parse_cri_line(&l).map_err(|e| TestCaseError::fail(format!("{e}: {:?}", String::from_utf8_lossy(&l))))?;
        prop_assert_eq!(parsed.timestamp, ts.as_str());
        prop_assert_eq!(parsed.time, time);
        prop_assert_eq!(parsed.stream, stream);
        let mut want = content.clone();
        if !partial {
            want.push(b'\n');
        }
        prop_assert_eq!(parsed.content, &want[..]);
    }

    #[test]
    fn a_partial_chain_is_one_line_timestamped_at_its_start(
        pieces in prop::collection::vec((timestamp(), content()), 1..6),
        stream in stream(),
        timestamps in any::<bool>(),
    ) {
        let lines: Vec<Vec<u8>> = pieces
            .iter()
            .enumerate()
            .map(|(i, ((ts, _), c))| line(ts, stream, if i + 1 == pieces.len() { "F" } else { "P" }, c))
            .collect();
        let mut w = LogWriter::new(LogOptions { timestamps, ..Default::default() });
        let mut out = Vec::new();
        for l in &lines {
            prop_assert!(w.write(&parse_cri_line(l).unwrap(), &mut out));
        }
        // kubelet's `isNewLine`: the next line gets the timestamp after a line that ends with a newline or is
        // empty, so an empty partial line is followed by a timestamp again.
        let mut want = Vec::new();
        let mut new_line = true;
        for ((_, time), c) in &pieces {
            if timestamps && new_line {
                let fixed = format!("{}.{:09}Z ", time.strftime("%Y-%m-%dT%H:%M:%S"), time.subsec_nanosecond());
                want.extend_from_slice(fixed.as_bytes());
            }
            want.extend_from_slice(c);
            new_line = c.is_empty();
        }
        want.push(b'\n');
        prop_assert_eq!(out, want);
    }
}

// These build a runtime per case.
proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    #[test]
    fn the_tail_starts_where_kubelet_starts_it(
        data in prop::collection::vec(prop_oneof![Just(b'\n'), any::<u8>()], 0..3000),
        n in 0u64..40,
    ) {
        let start = block_on(tail_start(&mut std::io::Cursor::new(data.clone()), n)).unwrap();
        prop_assert_eq!(start, tail_model(&data, n));
    }
}

/// One line of a log file: a valid line (UTC timestamp, partial or not) or one that does not parse.
#[derive(Debug, Clone)]
enum Rec {
    Line { ts: String, time: jiff::Timestamp, partial: bool, content: Vec<u8> },
    Garbage(Vec<u8>),
}

fn rec() -> impl Strategy<Value = Rec> {
    let valid = ((0i64..4_000_000_000, 0i32..1_000_000_000), any::<bool>(), content()).prop_map(
        |((secs, nanos), partial, content)| Rec::Line {
            ts: rfc3339nano(secs, nanos, None),
            time: jiff::Timestamp::new(secs, nanos).unwrap(),
            partial,
            content,
        },
    );
    let garbage = content().prop_map(|c| Rec::Garbage([b"x".as_slice(), &c].concat()));
    prop_oneof![4 => valid, 1 => garbage]
}

fn file(recs: &[Rec], last_terminated: bool) -> Vec<u8> {
    let mut out = Vec::new();
    for (i, r) in recs.iter().enumerate() {
        let mut l = match r {
            Rec::Line { ts, partial, content, .. } => {
                line(ts, Stream::Stdout, if *partial { "P" } else { "F" }, content)
            }
            Rec::Garbage(g) => [g.as_slice(), b"\n"].concat(),
        };
        if i + 1 == recs.len() && !last_terminated {
            l.pop();
        }
        out.extend_from_slice(&l);
    }
    out
}

/// kubelet's `ReadLogs` without `follow`: from the tail's start, every line including an unterminated last one,
/// at most `tail` written lines, the timestamp as `RFC3339NanoFixed` before each output line, cut at `limit` bytes.
fn read_logs_model(recs: &[Rec], last_terminated: bool, tail: Option<u64>, limit: Option<u64>, ts: bool) -> Vec<u8> {
    let terminated = if last_terminated { recs.len() } else { recs.len().saturating_sub(1) };
    let skip = tail.map_or(0, |n| terminated.saturating_sub(n as usize));
    let mut left = tail;
    let mut remain = limit.unwrap_or(u64::MAX);
    let mut new_line = true;
    let mut out = Vec::new();
    for (i, r) in recs.iter().enumerate().skip(skip) {
        if left == Some(0) {
            break;
        }
        let Rec::Line { time, partial, content, .. } = r else { continue };
        let mut msg = Vec::new();
        if ts && new_line {
            let fixed = format!("{}.{:09}Z ", time.strftime("%Y-%m-%dT%H:%M:%S"), time.subsec_nanosecond());
            msg.extend_from_slice(fixed.as_bytes());
        }
        msg.extend_from_slice(content);
        if i < terminated && !partial {
            msg.push(b'\n');
        }
        // kubelet's `isNewLine` looks at the line's own text, not the prefix: after an empty one, a new prefix.
        let text = &msg[msg.len() - content.len() - usize::from(i < terminated && !partial)..];
        new_line = text.last().is_none_or(|&c| c == b'\n');
        let n = (msg.len() as u64).min(remain);
        out.extend_from_slice(&msg[..n as usize]);
        remain -= n;
        if remain == 0 {
            break;
        }
        left = left.map(|l| l - 1);
    }
    out
}

proptest! {
    #[test]
    fn read_logs_writes_what_kubelet_writes(
        recs in prop::collection::vec(rec(), 0..12),
        last_terminated in any::<bool>(),
        tail in prop::option::of(0u64..14),
        limit in prop::option::of(1u64..300),
        timestamps in any::<bool>(),
    ) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("0.log");
        std::fs::write(&path, file(&recs, last_terminated)).unwrap();
        let opts = LogOptions { tail_lines: tail, limit_bytes: limit, timestamps, ..Default::default() };
        let (tx, mut rx) = tokio::sync::mpsc::channel(1024);
        block_on(read_logs(path, opts, Box::new(Exited), tx)).unwrap();
        let mut got = Vec::new();
        while let Ok(Ok(chunk)) = rx.try_recv() {
            got.extend_from_slice(&chunk);
        }
        prop_assert_eq!(got, read_logs_model(&recs, last_terminated, tail, limit, timestamps));
    }
}
