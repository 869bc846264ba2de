//! Container logs as kubelet serves them (pkg/kubelet/kuberuntime/logs): the CRI log format
//! `<RFC3339Nano> <stdout|stderr> <P|F>[:tags] <content>`, `PodLogOptions` from the query, and a reader that applies
//! tail, since, timestamps and byte limits and follows the file (across rotation) while the container runs.

use std::path::{Path, PathBuf};
use std::time::Duration;

use axum::body::Bytes;
use tokio::io::{AsyncBufReadExt, AsyncSeekExt, BufReader};
use tokio::sync::mpsc;

/// kubelet's `tail.blockSize`: the file is searched backwards for the tail in blocks of this size.
const TAIL_BLOCK_SIZE: u64 = 1024;
/// How often a follower looks for new lines or a rotated file at the end of the log.
const FOLLOW_POLL: Duration = Duration::from_millis(100);
/// kubelet's `logForceCheckPeriod`: at the end of the log, whether the container still runs is checked this often.
pub const LOG_FORCE_CHECK_PERIOD: Duration = Duration::from_secs(1);
/// Output is sent in chunks of about this size, flushed whenever the reader waits.
const CHUNK: usize = 32 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
}

/// One line of a CRI log file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogLine<'a> {
    /// The timestamp as written (RFC 3339 with nanoseconds, as kubelet prints it back).
    pub timestamp: &'a str,
    pub time: jiff::Timestamp,
    pub stream: Stream,
    /// The content, with its newline for a full line; without one for a partial line (`P`), which the next line
    /// continues.
    pub content: &'a [u8],
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("timestamp is not found")]
    NoTimestamp,
    #[error("unexpected timestamp format: {0}")]
    Timestamp(String),
    #[error("stream type is not found")]
    NoStream,
    #[error("unexpected stream type {0:?}")]
    StreamType(String),
    #[error("log tag is not found")]
    NoTag,
}

/// kubelet's `parseCRILog`, for a line read with its trailing newline.
pub fn parse_cri_line(line: &[u8]) -> Result<LogLine<'_>, ParseError> {
    let split = |b: &[u8]| b.iter().position(|&c| c == b' ');
    let idx = split(line).ok_or(ParseError::NoTimestamp)?;
    let timestamp = std::str::from_utf8(&line[..idx]).map_err(|e| ParseError::Timestamp(e.to_string()))?;
    let time: jiff::Timestamp = timestamp.parse().map_err(|e: jiff::Error| ParseError::Timestamp(e.to_string()))?;
    let rest = &line[idx + 1..];
    let idx = split(rest).ok_or(ParseError::NoStream)?;
    let stream = match &rest[..idx] {
        b"stdout" => Stream::Stdout,
        b"stderr" => Stream::Stderr,
        other => return Err(ParseError::StreamType(String::from_utf8_lossy(other).into_owned())),
    };
    let rest = &rest[idx + 1..];
    let idx = split(rest).ok_or(ParseError::NoTag)?;
    // Tags are `:`-separated for forward compatibility; the first says partial or full.
    let partial = rest[..idx].split(|&c| c == b':').next() == Some(b"P");
    let mut content = &rest[idx + 1..];
    if partial && content.last() == Some(&b'\n') {
        content = &content[..content.len() - 1];
    }
    Ok(LogLine { timestamp, time, stream, content })
}

/// kubelet's `PodLogOptions` as the log reader uses them.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LogOptions {
    pub previous: bool,
    pub follow: bool,
    pub timestamps: bool,
    /// Lines older than this are skipped.
    pub since: Option<jiff::Timestamp>,
    /// The last N lines of the file.
    pub tail_lines: Option<u64>,
    pub limit_bytes: Option<u64>,
}

/// Why a query is refused, with kubelet's status and body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueryError {
    pub status: u16,
    pub message: &'static str,
}

const UNDECODABLE: QueryError = QueryError { status: 400, message: r#"{"message": "Unable to decode query."}"# };
const INVALID: QueryError = QueryError { status: 422, message: r#"{"message": "Invalid request."}"# };

/// Go's `strconv.ParseBool`, which the query parameter codec uses.
fn parse_bool(v: &str) -> Option<bool> {
    match v {
        "1" | "t" | "T" | "TRUE" | "true" | "True" => Some(true),
        "0" | "f" | "F" | "FALSE" | "false" | "False" => Some(false),
        _ => None,
    }
}

/// The query of `/containerLogs` decoded and validated as kubelet does (`tail` is the old name of `tailLines`,
/// `tail=all` means no tail; `sinceSeconds` and `sinceTime` exclude each other).
pub fn log_options(query: &[(String, String)], now: jiff::Timestamp) -> Result<LogOptions, QueryError> {
    let get = |k: &str| query.iter().rev().find(|(key, _)| key == k).map(|(_, v)| v.as_str());
    let boolean = |k: &str| match get(k) {
        None => Ok(false),
        Some(v) => parse_bool(v).ok_or(UNDECODABLE),
    };
    let int = |k: &str| match get(k) {
        None => Ok(None),
        Some(v) => v.parse::<i64>().map(Some).map_err(|_| UNDECODABLE),
    };
    let tail_lines = match get("tail") {
        Some("all") => None,
        Some(t) => Some(t.parse::<i64>().map_err(|_| UNDECODABLE)?),
        None => int("tailLines")?,
    };
    let since_seconds = int("sinceSeconds")?;
    let since_time = match get("sinceTime") {
        None => None,
        Some(t) => Some(t.parse::<jiff::Timestamp>().map_err(|_| UNDECODABLE)?),
    };
    let limit_bytes = int("limitBytes")?;
    if tail_lines.is_some_and(|t| t < 0)
        || limit_bytes.is_some_and(|b| b < 1)
        || since_seconds.is_some_and(|s| s < 1)
        || (since_seconds.is_some() && since_time.is_some())
    {
        return Err(INVALID);
    }
    let since = match (since_seconds, since_time) {
        (Some(s), _) => now.checked_sub(jiff::SignedDuration::from_secs(s)).ok(),
        (None, t) => t,
    };
    Ok(LogOptions {
        previous: boolean("previous")?,
        follow: boolean("follow")?,
        timestamps: boolean("timestamps")?,
        since,
        tail_lines: tail_lines.map(|t| t as u64),
        limit_bytes: limit_bytes.map(|b| b as u64),
    })
}

/// kubelet's `FindTailLineStartIndex`: the offset of the start of the last `n` lines; an unterminated last line is
/// not counted (and still printed).
pub async fn tail_start<R>(f: &mut R, n: u64) -> std::io::Result<u64>
where
    R: tokio::io::AsyncRead + tokio::io::AsyncSeek + Unpin,
{
    use tokio::io::AsyncReadExt;
    let size = f.seek(std::io::SeekFrom::End(0)).await?;
    let mut count = 0u64;
    let mut left = size;
    let mut block = Vec::new();
    let mut right = size;
    while right > 0 && count <= n {
        left = right.saturating_sub(TAIL_BLOCK_SIZE);
        block = vec![0; (right - left) as usize];
        f.seek(std::io::SeekFrom::Start(left)).await?;
        f.read_exact(&mut block).await?;
        count += block.iter().filter(|&&c| c == b'\n').count() as u64;
        right = left;
    }
    let mut start = left;
    let mut rest = &block[..];
    while count > n {
        let Some(i) = rest.iter().position(|&c| c == b'\n') else { break };
        rest = &rest[i + 1..];
        start += (i + 1) as u64;
        count -= 1;
    }
    Ok(start)
}

/// Turns parsed lines into output: since, timestamps, and the byte limit (kubelet's `logWriter`).
#[derive(Debug)]
pub struct LogWriter {
    opts: LogOptions,
    remaining: Option<u64>,
    /// The previous line ended with a newline: the next one gets the timestamp prefix.
    at_line_start: bool,
}

impl LogWriter {
    pub fn new(opts: LogOptions) -> Self {
        Self { remaining: opts.limit_bytes, opts, at_line_start: true }
    }

    /// Appends what one log line contributes to `out`; false once the byte limit is reached.
    pub fn write(&mut self, line: &LogLine<'_>, out: &mut Vec<u8>) -> bool {
        if self.opts.since.is_some_and(|since| line.time < since) {
            return true;
        }
        let start = out.len();
        if self.opts.timestamps && self.at_line_start {
            // kubelet prints `RFC3339NanoFixed` (`pkg/kubelet/types/constants.go`): nine fraction digits, where the
            // runtime wrote Go's `RFC3339Nano` with its trailing zeros dropped. In UTC: containerd writes UTC.
            let fixed = line.time.strftime("%Y-%m-%dT%H:%M:%S%.9fZ ").to_string();
            out.extend_from_slice(fixed.as_bytes());
        }
        out.extend_from_slice(line.content);
        self.at_line_start = line.content.last().is_none_or(|&c| c == b'\n');
        if let Some(remaining) = self.remaining.as_mut() {
            let written = (out.len() - start) as u64;
            if written >= *remaining {
                out.truncate(start + *remaining as usize);
                *remaining = 0;
                return false;
            }
            *remaining -= written;
        }
        true
    }
}

/// The container behind a followed log: whether it still runs decides when a follow ends.
pub trait ContainerState: Send + Sync {
    fn running(&self) -> futures::future::BoxFuture<'_, bool>;
}

fn inode(path: &Path) -> Option<u64> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).ok().map(|m| m.ino())
}

/// kubelet's `ReadLogs`: sends the selected output of the log at `path` in chunks until the end of the file or,
/// when following, until the container stops or the receiver goes away.
pub async fn read_logs(
    path: PathBuf,
    opts: LogOptions,
    container: Box<dyn ContainerState>,
    tx: mpsc::Sender<Result<Bytes, std::io::Error>>,
) -> std::io::Result<()> {
    use std::os::unix::fs::MetadataExt;
    let mut file = tokio::fs::File::open(&path).await?;
    let mut ino = file.metadata().await?.ino();
    if let Some(n) = opts.tail_lines {
        let start = tail_start(&mut file, n).await?;
        file.seek(std::io::SeekFrom::Start(start)).await?;
    }
    let follow = opts.follow;
    // kubelet's `limitedNum`: with tailLines and no follow, at most that many parsed lines are written, which leaves
    // out an unterminated last line after a full tail.
    let mut tail_left = opts.tail_lines.filter(|_| !follow);
    let mut writer = LogWriter::new(opts);
    let mut reader = BufReader::with_capacity(64 * 1024, file);
    let mut line = Vec::new();
    let mut out = Vec::with_capacity(CHUNK);
    // The first end of the file checks at once: following a container that already stopped ends right away.
    let mut last_check: Option<tokio::time::Instant> = None;
    let mut stopping = false;
    loop {
        let n = reader.read_until(b'\n', &mut line).await?;
        if n > 0 && line.last() == Some(&b'\n') {
            match parse_cri_line(&line) {
                Ok(l) => {
                    tail_left = tail_left.map(|n| n.saturating_sub(1));
                    if !writer.write(&l, &mut out) {
                        let _ = tx.send(Ok(Bytes::from(std::mem::take(&mut out)))).await;
                        return Ok(());
                    }
                }
                Err(e) => {
                    tracing::debug!(path = %path.display(), error = %e, "skipping a log line that does not parse")
                }
            }
            line.clear();
            if out.len() >= CHUNK
                && tx.send(Ok(Bytes::from(std::mem::replace(&mut out, Vec::with_capacity(CHUNK))))).await.is_err()
            {
                return Ok(());
            }
            continue;
        }
        // The end of the file. Following, an unterminated line stays in `line` and is completed by the next read;
        // otherwise it is the last thing written, as kubelet's `ReadLogs` writes an "Incomplete line".
        if !line.is_empty() && !follow && tail_left != Some(0) {
            match parse_cri_line(&line) {
                Ok(l) => {
                    writer.write(&l, &mut out);
                }
                Err(e) => {
                    tracing::debug!(path = %path.display(), error = %e, "skipping a log line that does not parse")
                }
            }
            line.clear();
        }
        if !out.is_empty()
            && tx.send(Ok(Bytes::from(std::mem::replace(&mut out, Vec::with_capacity(CHUNK))))).await.is_err()
        {
            return Ok(());
        }
        if !follow || stopping {
            return Ok(());
        }
        // The runtime reopened the log under the same path after a rotation: the old file is read to its end
        // (above), then the new one from its start.
        if inode(&path).is_some_and(|now| now != ino) {
            let file = tokio::fs::File::open(&path).await?;
            ino = file.metadata().await?.ino();
            reader = BufReader::with_capacity(64 * 1024, file);
            line.clear();
            continue;
        }
        if last_check.is_none_or(|t| t.elapsed() >= LOG_FORCE_CHECK_PERIOD) {
            last_check = Some(tokio::time::Instant::now());
            if !container.running().await {
                // One last read for what the container wrote before it stopped.
                stopping = true;
                continue;
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(FOLLOW_POLL) => {}
            _ = tx.closed() => return Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(s: &str) -> jiff::Timestamp {
        s.parse().unwrap()
    }

    #[test]
    fn cri_lines_parse_with_full_and_partial_tags() {
        let l = parse_cri_line(b"2016-10-06T00:17:09.669794202Z stdout F hello world\n").unwrap();
        assert_eq!(l.timestamp, "2016-10-06T00:17:09.669794202Z");
        assert_eq!(l.stream, Stream::Stdout);
        assert_eq!(l.content, b"hello world\n");
        let p = parse_cri_line(b"2016-10-06T00:17:09.669794203Z stderr P:extra part\n").unwrap();
        assert_eq!((p.stream, p.content), (Stream::Stderr, &b"part"[..]));
        let empty = parse_cri_line(b"2016-10-06T00:17:09.669794202Z stdout F \n").unwrap();
        assert_eq!(empty.content, b"\n");
        assert_eq!(parse_cri_line(b"nospace\n"), Err(ParseError::NoTimestamp));
        assert!(matches!(parse_cri_line(b"yesterday stdout F x\n"), Err(ParseError::Timestamp(_))));
        assert_eq!(parse_cri_line(b"2016-10-06T00:17:09Z stdlog F x\n"), Err(ParseError::StreamType("stdlog".into())));
        assert_eq!(parse_cri_line(b"2016-10-06T00:17:09Z stdout F\n"), Err(ParseError::NoTag));
        let offset = parse_cri_line(b"2016-10-06T02:17:09.5+02:00 stdout F x\n").unwrap();
        assert_eq!(offset.time, ts("2016-10-06T00:17:09.5Z"));
    }

    #[test]
    fn options_decode_and_validate_as_kubelet() {
        let q = |pairs: &[(&str, &str)]| -> Vec<(String, String)> {
            pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
        };
        let now = ts("2024-01-01T00:01:00Z");
        let o =
            log_options(&q(&[("follow", "true"), ("tailLines", "5"), ("timestamps", "1"), ("limitBytes", "10")]), now)
                .unwrap();
        assert!(o.follow && o.timestamps && !o.previous);
        assert_eq!((o.tail_lines, o.limit_bytes), (Some(5), Some(10)));
        assert_eq!(log_options(&q(&[("tail", "3")]), now).unwrap().tail_lines, Some(3));
        assert_eq!(log_options(&q(&[("tail", "all"), ("tailLines", "3")]), now).unwrap().tail_lines, None);
        assert_eq!(log_options(&q(&[("sinceSeconds", "60")]), now).unwrap().since, Some(ts("2024-01-01T00:00:00Z")));
        assert_eq!(
            log_options(&q(&[("sinceTime", "2023-12-31T23:00:00Z")]), now).unwrap().since,
            Some(ts("2023-12-31T23:00:00Z"))
        );
        assert_eq!(log_options(&q(&[("previous", "yes")]), now), Err(UNDECODABLE));
        assert_eq!(log_options(&q(&[("tailLines", "x")]), now), Err(UNDECODABLE));
        assert_eq!(log_options(&q(&[("tailLines", "-1")]), now), Err(INVALID));
        assert_eq!(log_options(&q(&[("limitBytes", "0")]), now), Err(INVALID));
        assert_eq!(log_options(&q(&[("sinceSeconds", "0")]), now), Err(INVALID));
        assert_eq!(log_options(&q(&[("sinceSeconds", "5"), ("sinceTime", "2023-12-31T23:00:00Z")]), now), Err(INVALID));
    }

    async fn tail_of(text: &str, n: u64) -> String {
        let mut c = std::io::Cursor::new(text.as_bytes().to_vec());
        let start = tail_start(&mut c, n).await.unwrap() as usize;
        text[start..].to_owned()
    }

    #[tokio::test]
    async fn tail_finds_the_last_lines_and_ignores_an_unterminated_one() {
        assert_eq!(tail_of("a\nb\nc\n", 1).await, "c\n");
        assert_eq!(tail_of("a\nb\nc\n", 2).await, "b\nc\n");
        assert_eq!(tail_of("a\nb\nc\n", 10).await, "a\nb\nc\n");
        assert_eq!(tail_of("a\nb\nc\n", 0).await, "");
        assert_eq!(tail_of("a\nb\nc", 1).await, "b\nc");
        assert_eq!(tail_of("", 3).await, "");
        // Across blocks.
        let long: String = (0..500).map(|i| format!("line {i:04}\n")).collect();
        assert_eq!(tail_of(&long, 3).await, "line 0497\nline 0498\nline 0499\n");
        assert_eq!(tail_of(&long, 200).await.lines().count(), 200);
    }

    fn render(lines: &[&str], opts: LogOptions) -> String {
        let mut w = LogWriter::new(opts);
        let mut out = Vec::new();
        for l in lines {
            if !w.write(&parse_cri_line(l.as_bytes()).unwrap(), &mut out) {
                break;
            }
        }
        String::from_utf8(out).unwrap()
    }

    const LOG: [&str; 4] = [
        "2024-01-01T00:00:01.5Z stdout F one\n",
        "2024-01-01T00:00:02Z stderr P tw\n",
        "2024-01-01T00:00:03Z stderr F o\n",
        "2024-01-01T00:00:04Z stdout F three\n",
    ];

    #[test]
    fn partial_lines_are_joined_and_timestamped_once() {
        assert_eq!(render(&LOG, LogOptions::default()), "one\ntwo\nthree\n");
        let opts = LogOptions { timestamps: true, ..Default::default() };
        assert_eq!(
            render(&LOG, opts),
            "2024-01-01T00:00:01.500000000Z one\n2024-01-01T00:00:02.000000000Z two\n\
             2024-01-01T00:00:04.000000000Z three\n"
        );
    }

    #[test]
    fn since_and_limit_bytes_select_output() {
        let opts = LogOptions { since: Some(ts("2024-01-01T00:00:03Z")), ..Default::default() };
        assert_eq!(render(&LOG, opts), "o\nthree\n");
        let opts = LogOptions { limit_bytes: Some(6), ..Default::default() };
        assert_eq!(render(&LOG, opts), "one\ntw");
        let opts = LogOptions { limit_bytes: Some(4), ..Default::default() };
        assert_eq!(render(&LOG, opts), "one\n");
    }

    struct Stops(std::sync::atomic::AtomicBool);
    impl ContainerState for std::sync::Arc<Stops> {
        fn running(&self) -> futures::future::BoxFuture<'_, bool> {
            Box::pin(async { !self.0.load(std::sync::atomic::Ordering::SeqCst) })
        }
    }

    async fn collect(mut rx: mpsc::Receiver<Result<Bytes, std::io::Error>>) -> String {
        let mut s = Vec::new();
        while let Some(Ok(b)) = rx.recv().await {
            s.extend_from_slice(&b);
        }
        String::from_utf8(s).unwrap()
    }

    #[tokio::test]
    async fn follow_reads_new_lines_across_a_rotation_until_the_container_stops() {
        use std::io::Write;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("0.log");
        std::fs::write(&path, LOG[0]).unwrap();
        let stopped = std::sync::Arc::new(Stops(false.into()));
        let (tx, rx) = mpsc::channel(16);
        let opts = LogOptions { follow: true, ..Default::default() };
        let reader = tokio::spawn(read_logs(path.clone(), opts, Box::new(stopped.clone()), tx));
        let output = tokio::spawn(collect(rx));
        tokio::time::sleep(Duration::from_millis(300)).await;
        // Half a line first: nothing is printed until it is complete.
        let mut f = std::fs::OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(b"2024-01-01T00:00:02Z stdout F tw").unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
        f.write_all(b"o\n").unwrap();
        // Rotation: the file is renamed and the runtime starts a new one at the same path.
        std::fs::rename(&path, dir.path().join("0.log.20240101-000003")).unwrap();
        std::fs::write(&path, LOG[3]).unwrap();
        tokio::time::sleep(Duration::from_millis(500)).await;
        stopped.0.store(true, std::sync::atomic::Ordering::SeqCst);
        tokio::time::timeout(Duration::from_secs(5), reader).await.unwrap().unwrap().unwrap();
        assert_eq!(output.await.unwrap(), "one\ntwo\nthree\n");
    }

    #[tokio::test]
    async fn following_a_stopped_container_ends_at_the_end_of_its_log() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("0.log");
        std::fs::write(&path, LOG.concat()).unwrap();
        let (tx, rx) = mpsc::channel(16);
        let opts = LogOptions { follow: true, ..Default::default() };
        let stopped = Box::new(std::sync::Arc::new(Stops(true.into())));
        let read = tokio::time::timeout(Duration::from_millis(500), read_logs(path, opts, stopped, tx));
        read.await.expect("no wait for a stopped container").unwrap();
        assert_eq!(collect(rx).await, "one\ntwo\nthree\n");
    }

    #[tokio::test]
    async fn without_follow_the_tail_of_the_file_is_read_once() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("0.log");
        std::fs::write(&path, LOG.concat()).unwrap();
        let (tx, rx) = mpsc::channel(16);
        let opts = LogOptions { tail_lines: Some(2), ..Default::default() };
        read_logs(path, opts, Box::new(std::sync::Arc::new(Stops(false.into()))), tx).await.unwrap();
        assert_eq!(collect(rx).await, "o\nthree\n");
    }
}
