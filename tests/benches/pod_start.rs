//! Pod start benchmark: time from static pod manifests written to all their containers running, for 1 pod and for
//! 30 pods at once, split into the time rkubelet spends inside CRI calls and its own time.
//!
//! Run it as root with a release build of the agent:
//!
//! ```text
//! cargo build --release -p rkubelet
//! RKUBELET_BIN=$PWD/target/release/rkubelet cargo bench -p rkubelet-tests --bench pod_start
//! ```
//!
//! Each scenario (a number of pods) gets its own private containerd. Its first run is a warm-up in which the agent
//! pulls busybox and containerd the pause image (reported as "cold"); the measured runs that follow reuse that
//! containerd, so `PullImage` is skipped (`IfNotPresent`, image present) as in kubelet's figures with a local image.
//! Every run has a fresh agent; between runs all pods are removed (manifests deleted, `/pods` empty, nothing left in
//! the runtime).
//!
//! Per run: N manifests are written at T0, `/pods` is polled every 10 ms until every pod is Running with its
//! container running, then the agent's "pod started" log line gives its own per-pod figures (`seconds`, from the
//! agent first seeing the pod, and `cri_seconds`, the part of it spent inside CRI calls), `/metrics` the CRI calls.
//!
//! Environment:
//! * `RKUBELET_BENCH_RUNS`: measured runs per scenario (default 5), after the cold warm-up run.
//! * `RKUBELET_BENCH_PODS`: comma-separated pod counts, one scenario each (default `1,30`).
//! * `RKUBELET_BENCH_AGENT_LOG`: the agent's log filter, passed as `RUST_LOG` (default `info`, kubelet's usual
//!   verbosity; `debug` is what the test harness's `--v=3` gives). An explicit `RUST_LOG` wins.
//! * `RKUBELET_BENCH_KEEP_LOGS`: a folder to copy each run's agent log (and each scenario's containerd log) into.
//! * `RKUBELET_BENCH_CNI_BIN_DIR`: CNI plugin folder for containerd (default: the harness's, the reference plugins).
//! * `RKUBELET_BIN`: the agent binary; when unset, `target/release/rkubelet` if it exists, else the harness's lookup.
//!
//! Output: one line per run, then the tables, all on stdout and starting with `bench pod_start`: figures, not pass or
//! fail. Harness diagnostics go to stderr. The exit status is non-zero only when the harness itself fails (containerd
//! or the agent does not start, pods never run, removal leaves things behind). Without root it prints a `SKIPPED:`
//! line; without the `--bench` argument that `cargo bench` passes (as under `cargo test --all-targets`), nothing.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, ensure, Context, Result};
use rkubelet_tests::agent::{http_get, phase, runtime_objects, tail, Agent};
use rkubelet_tests::containerd::{is_root, Containerd};
use rkubelet_tests::images::{ensure_images, BUSYBOX};
use serde_json::Value;

const PREFIX: &str = "bench pod_start";
const POLL: Duration = Duration::from_millis(10);
const START_TIMEOUT: Duration = Duration::from_secs(180);
const REMOVE_TIMEOUT: Duration = Duration::from_secs(90);
/// Time a fresh agent is left alone before its idle RSS is read (its PLEG relists every second), plus a jitter of up
/// to `IDLE_JITTER_MS` so that T0 does not fall at the same phase of the agent's periodic loops in every run.
const IDLE_SETTLE: Duration = Duration::from_millis(1500);
const IDLE_JITTER_MS: u64 = 1000;
/// Window over which the agent's CPU use is measured once all pods run (nothing polls it meanwhile).
const RUNNING_CPU_WINDOW: Duration = Duration::from_secs(2);
/// `/pods` requests sent back to back to measure the agent's CPU cost of answering one.
const POLL_COST_SAMPLES: usize = 200;

/// Go kubelet v1.28 on this machine (same containerd, reference CNI plugins, local busybox): midpoints of the quoted
/// ranges, and what we aim for relative to them.
const KUBELET_1_POD_S: f64 = 1.2;
const KUBELET_30_PODS_S: f64 = 9.85;
const KUBELET_IDLE_RSS_MB: f64 = 83.0;
const AIM_TIME_RATIO: f64 = 0.5;
const AIM_RSS_RATIO: f64 = 0.2;
const AIM_OWN_SHARE: f64 = 0.05;

struct Settings {
    runs: usize,
    scenarios: Vec<usize>,
    keep_logs: Option<PathBuf>,
    cni_bin_dir: Option<PathBuf>,
}

/// What one run measured.
struct Run {
    /// Writing all N manifests (T0 to the last rename).
    write: Duration,
    /// T0 to the poll that saw the last pod running.
    all_running: Duration,
    /// Per pod: T0 to the first poll that saw it running.
    seen: Vec<f64>,
    /// Per pod, from `/metrics`: agent-measured start seconds and the CRI part of it (same order as `seen`).
    start: Vec<f64>,
    cri: Vec<f64>,
    rss_idle_kb: u64,
    rss_running_kb: u64,
    /// Agent CPU time (user + system) while idle before T0, as a share of one CPU.
    cpu_idle_share: f64,
    /// Agent CPU seconds from T0 to all running (includes answering the 10 ms `/pods` polls).
    cpu_start: f64,
    /// Agent CPU use over `RUNNING_CPU_WINDOW` once all pods run, as a share of one CPU.
    cpu_running_share: f64,
    /// Agent CPU seconds per `/pods` answer with all pods running.
    cpu_per_poll: f64,
    /// 1-minute load average at T0 (the machine may be shared).
    load1: f64,
    /// `kubelet_runtime_operations_*` after the run: operation -> (calls, seconds).
    ops: BTreeMap<String, (f64, f64)>,
    polls: usize,
    /// T0 as Unix time, to find it in the agent's log.
    t0_unix: f64,
}

impl Run {
    fn own_shares(&self) -> Vec<f64> {
        self.start.iter().zip(&self.cri).map(|(s, c)| if *s > 0.0 { (s - c) / s } else { 0.0 }).collect()
    }
    /// Sum of per-pod start times over the wall time to all running: ~N when the pods start concurrently, ~1 when
    /// they start one after another.
    fn concurrency(&self) -> f64 {
        self.start.iter().sum::<f64>() / self.all_running.as_secs_f64()
    }
    /// Sum of per-pod start times over the longest one: the same, on the agent's own clock only.
    fn overlap(&self) -> f64 {
        self.start.iter().sum::<f64>() / self.start.iter().copied().fold(0.0, f64::max)
    }
    /// Agent CPU seconds for the start itself: `cpu_start` less what answering the polls cost.
    fn cpu_start_net(&self) -> f64 {
        (self.cpu_start - self.polls as f64 * self.cpu_per_poll).max(0.0)
    }
    /// Per pod: seen by the poll minus the agent's start time, i.e. time outside the agent's clock (file watch and
    /// folder scan before the pod worker exists, status publication and poll granularity after).
    fn outside(&self) -> Vec<f64> {
        self.seen.iter().zip(&self.start).map(|(seen, start)| seen - start).collect()
    }
}

fn main() -> ExitCode {
    // `cargo bench` passes `--bench`; `cargo test --all-targets` runs bench targets without it.
    if !std::env::args().any(|a| a == "--bench") {
        println!("{PREFIX}: not run (no --bench argument); use `cargo bench -p rkubelet-tests --bench pod_start`");
        return ExitCode::SUCCESS;
    }
    if !is_root() {
        println!("SKIPPED: {PREFIX}: needs root (containerd, mounts, network namespaces)");
        return ExitCode::SUCCESS;
    }
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{PREFIX}: harness failure: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn settings() -> Result<Settings> {
    let runs = match std::env::var("RKUBELET_BENCH_RUNS") {
        Ok(v) => v.trim().parse().with_context(|| format!("RKUBELET_BENCH_RUNS={v:?}: want a number"))?,
        Err(_) => 5,
    };
    ensure!(runs >= 1, "RKUBELET_BENCH_RUNS must be at least 1");
    let scenarios = match std::env::var("RKUBELET_BENCH_PODS") {
        Ok(v) => v
            .split(',')
            .map(|s| s.trim().parse::<usize>().ok().filter(|n| *n >= 1))
            .collect::<Option<Vec<_>>>()
            .with_context(|| format!("RKUBELET_BENCH_PODS={v:?}: want pod counts like 1,30"))?,
        Err(_) => vec![1, 30],
    };
    let dir = |var: &str| std::env::var_os(var).filter(|v| !v.is_empty()).map(PathBuf::from);
    Ok(Settings {
        runs,
        scenarios,
        keep_logs: dir("RKUBELET_BENCH_KEEP_LOGS"),
        cni_bin_dir: dir("RKUBELET_BENCH_CNI_BIN_DIR"),
    })
}

fn run() -> Result<()> {
    let settings = settings()?;
    // Set before any thread exists: the Agent harness reads these when it spawns rkubelet, which inherits them.
    if std::env::var_os("RKUBELET_BIN").is_none() {
        let release = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/release/rkubelet");
        if release.exists() {
            std::env::set_var("RKUBELET_BIN", release);
        }
    }
    if std::env::var_os("RUST_LOG").is_none() {
        let level = std::env::var("RKUBELET_BENCH_AGENT_LOG").unwrap_or_else(|_| "info".into());
        std::env::set_var("RUST_LOG", format!("{level},h2=info,tower=info,hyper=info"));
    }
    let bin = rkubelet_tests::agent::rkubelet_bin()?;
    let bin = bin.canonicalize().unwrap_or(bin);
    let debug = bin.components().any(|c| c.as_os_str() == "debug");
    println!(
        "{PREFIX}: agent {} ({}), RUST_LOG={}, {} measured run(s) + 1 cold per scenario, pods {:?}",
        bin.display(),
        if debug { "DEBUG BUILD: figures not representative" } else { "release" },
        std::env::var("RUST_LOG").unwrap_or_default(),
        settings.runs,
        settings.scenarios
    );
    if let Some(dir) = &settings.keep_logs {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    ensure_images()?;

    let started = Instant::now();
    let mut results = Vec::new();
    for &n in &settings.scenarios {
        let (cold, measured) = scenario(n, &settings)?;
        results.push((n, cold, measured));
    }
    report(&results);
    println!("{PREFIX}: total benchmark time {:.0} s", started.elapsed().as_secs_f64());
    Ok(())
}

/// One private containerd; a cold warm-up run, then `settings.runs` measured runs.
fn scenario(n: usize, settings: &Settings) -> Result<(Run, Vec<Run>)> {
    let name = format!("bench-{n}-{}", std::process::id());
    let mut builder = Containerd::builder(&name);
    if let Some(dir) = &settings.cni_bin_dir {
        builder = builder.cni_bin_dir(dir);
    }
    let containerd = builder.start().with_context(|| format!("starting containerd {name}"))?;
    let mut runs = Vec::new();
    for i in 0..=settings.runs {
        let label = if i == 0 { "cold".to_owned() } else { format!("{i}/{}", settings.runs) };
        let run = one_run(&containerd, n, &label, settings)
            .with_context(|| format!("{n} pod(s), run {label}"))
            .inspect_err(|_| eprintln!("--- containerd log tail ---\n{}", containerd.log_tail()))?;
        println!(
            "{PREFIX} run pods={n} run={label} all_running={:.3}s write={:.1}ms pod_start_median={:.3}s \
             cri_median={:.3}s own_share_median={:.1}% concurrency={:.1} rss_idle={:.1}MB rss_running={:.1}MB \
             cpu_idle={:.1}% cpu_start={:.3}s cpu_running={:.1}% cpu_per_poll={:.2}ms \
             polls={} load1={:.1} t0_unix={:.6}",
            run.all_running.as_secs_f64(),
            run.write.as_secs_f64() * 1e3,
            median(&run.start),
            median(&run.cri),
            median(&run.own_shares()) * 100.0,
            run.concurrency(),
            mb(run.rss_idle_kb),
            mb(run.rss_running_kb),
            run.cpu_idle_share * 100.0,
            run.cpu_start,
            run.cpu_running_share * 100.0,
            run.cpu_per_poll * 1e3,
            run.polls,
            run.load1,
            run.t0_unix,
        );
        runs.push(run);
    }
    if let Some(dir) = &settings.keep_logs {
        let _ = std::fs::copy(containerd.log_path(), dir.join(format!("pods{n}-containerd.log")));
    }
    let cold = runs.remove(0);
    Ok((cold, runs))
}

fn manifest(name: &str) -> String {
    // `sleep & wait` so that the TERM trap runs at once: a shell runs traps only between foreground commands.
    format!(
        r#"apiVersion: v1
kind: Pod
metadata:
  name: {name}
  labels:
    app: pod-start-bench
spec:
  terminationGracePeriodSeconds: 2
  containers:
  - name: app
    image: {BUSYBOX}
    imagePullPolicy: IfNotPresent
    command: ["sh", "-c", "trap 'exit 0' TERM; sleep 3600 & wait"]
"#
    )
}

fn one_run(containerd: &Containerd, n: usize, label: &str, settings: &Settings) -> Result<Run> {
    let mut agent = Agent::start(containerd)?;
    let result = measure(containerd, &agent, n);
    if let Some(dir) = &settings.keep_logs {
        let file = format!("pods{n}-run{}.log", label.split('/').next().unwrap_or(label));
        let _ = std::fs::write(dir.join(file), agent.log());
    }
    if let Err(e) = &result {
        eprintln!("{PREFIX}: {e:#}\n--- rkubelet log tail ---\n{}", tail(&agent.log(), 60));
    }
    let run = result?;
    agent.stop()?;
    Ok(run)
}

fn measure(containerd: &Containerd, agent: &Agent, n: usize) -> Result<Run> {
    let pid = agent_pid(agent)?;
    let jitter =
        SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().subsec_nanos() as u64 % IDLE_JITTER_MS;
    let idle = IDLE_SETTLE + Duration::from_millis(jitter);
    let cpu_before_idle = cpu_seconds(pid)?;
    std::thread::sleep(idle);
    let cpu_at_t0 = cpu_seconds(pid)?;
    let cpu_idle_share = (cpu_at_t0 - cpu_before_idle) / idle.as_secs_f64();
    let rss_idle_kb = rss_kb(pid)?;

    let files: Vec<(String, String)> =
        (0..n).map(|i| (format!("bench-{i}.yaml"), manifest(&format!("bench-{i}")))).collect();
    let names: Vec<String> = (0..n).map(|i| format!("bench-{i}-{}", agent.node_name())).collect();

    let load1 = std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|l| l.split_whitespace().next().and_then(|v| v.parse().ok()))
        .unwrap_or(f64::NAN);
    let t0_unix = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_secs_f64();
    let t0 = Instant::now();
    for (file, text) in &files {
        agent.write_manifest(file, text)?;
    }
    let write = t0.elapsed();

    let mut seen: BTreeMap<String, Duration> = BTreeMap::new();
    let mut polls = 0;
    let all_running = loop {
        let tick = Instant::now();
        let pods = agent.pods()?;
        // The status was at the latest this old when the answer arrived.
        let at = t0.elapsed();
        polls += 1;
        for p in &pods {
            let name = p["metadata"]["name"].as_str().unwrap_or_default();
            if names.iter().any(|n| n == name) && all_containers_running(p) {
                seen.entry(name.to_owned()).or_insert(at);
            }
        }
        if seen.len() == n {
            break at;
        }
        if at > START_TIMEOUT {
            let not_running: Vec<_> = pods
                .iter()
                .filter(|p| !seen.contains_key(p["metadata"]["name"].as_str().unwrap_or_default()))
                .map(|p| serde_json::to_string(&p["status"]).unwrap_or_default())
                .take(3)
                .collect();
            bail!(
                "{} of {n} pods running after {START_TIMEOUT:?} ({} listed); some that are not:\n{}",
                seen.len(),
                pods.len(),
                not_running.join("\n")
            );
        }
        std::thread::sleep(POLL.saturating_sub(tick.elapsed()));
    };
    let cpu_start = cpu_seconds(pid)? - cpu_at_t0;
    let rss_running_kb = rss_kb(pid)?;

    let (status, body) = http_get(agent.port(), "/metrics")?;
    ensure!(status == 200, "GET /metrics: HTTP {status}: {body}");
    let metrics = parse_metrics(&body);
    // The agent's own per-pod figures are in its "pod started" log line (kubelet's /metrics has only the
    // histogram `kubelet_pod_start_duration_seconds`, no series per pod).
    let log = strip_ansi(&agent.log());
    let per_pod = |field: &str, name: &str| -> Result<f64> {
        let key = format!("pod=default/{name}");
        log.lines()
            .filter(|l| l.contains("pod started"))
            .find(|l| l.split([' ', '}', ':']).any(|w| w == key))
            .and_then(|l| l.split_whitespace().find_map(|w| w.strip_prefix(field)))
            .and_then(|v| v.parse().ok())
            .with_context(|| format!("the agent's log has no \"pod started\" {field} for default/{name}"))
    };
    let mut run = Run {
        write,
        all_running,
        seen: Vec::with_capacity(n),
        start: Vec::with_capacity(n),
        cri: Vec::with_capacity(n),
        rss_idle_kb,
        rss_running_kb,
        cpu_idle_share,
        cpu_start,
        cpu_running_share: 0.0,
        cpu_per_poll: 0.0,
        load1,
        ops: BTreeMap::new(),
        polls,
        t0_unix,
    };
    let cpu_before_window = cpu_seconds(pid)?;
    std::thread::sleep(RUNNING_CPU_WINDOW);
    run.cpu_running_share = (cpu_seconds(pid)? - cpu_before_window) / RUNNING_CPU_WINDOW.as_secs_f64();
    let (cpu_before_polls, polls_started) = (cpu_seconds(pid)?, Instant::now());
    for _ in 0..POLL_COST_SAMPLES {
        agent.pods()?;
    }
    let background = run.cpu_running_share * polls_started.elapsed().as_secs_f64();
    run.cpu_per_poll = ((cpu_seconds(pid)? - cpu_before_polls - background) / POLL_COST_SAMPLES as f64).max(0.0);
    for name in &names {
        run.seen.push(seen[name].as_secs_f64());
        run.start.push(per_pod("seconds=", name)?);
        run.cri.push(per_pod("cri_seconds=", name)?);
    }
    for m in &metrics {
        let Some(op) = m.labels.get("operation_type") else { continue };
        let entry = run.ops.entry(op.clone()).or_default();
        match m.name.as_str() {
            "kubelet_runtime_operations_total" => entry.0 = m.value,
            "kubelet_runtime_operations_duration_seconds_sum" => entry.1 = m.value,
            _ => {}
        }
    }

    remove_all(containerd, agent, &files)?;
    Ok(run)
}

fn all_containers_running(pod: &Value) -> bool {
    let want = pod["spec"]["containers"].as_array().map_or(0, Vec::len);
    let statuses = pod["status"]["containerStatuses"].as_array();
    phase(pod) == "Running"
        && want > 0
        && statuses.is_some_and(|s| s.len() == want && s.iter().all(|c| c["state"]["running"].is_object()))
}

/// Removes the manifests and waits until the agent lists no pods and the runtime holds nothing.
fn remove_all(containerd: &Containerd, agent: &Agent, files: &[(String, String)]) -> Result<()> {
    for (file, _) in files {
        agent.remove_manifest(file)?;
    }
    let deadline = Instant::now() + REMOVE_TIMEOUT;
    loop {
        let pods = agent.pods()?.len();
        let objects = if pods == 0 { Some(runtime_objects(&containerd.endpoint())?) } else { None };
        if objects.as_ref().is_some_and(|o| o.sandboxes.is_empty() && o.containers.is_empty()) {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!(
                "after removing the manifests: {pods} pod(s) still listed, runtime holds {} sandbox(es) and {} \
                 container(s) after {REMOVE_TIMEOUT:?}",
                objects.as_ref().map_or(0, |o| o.sandboxes.len()),
                objects.as_ref().map_or(0, |o| o.containers.len())
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The rkubelet process of `agent`: the one whose command line has `--config <its config file>` (the harness does
/// not expose its child's pid).
fn agent_pid(agent: &Agent) -> Result<u32> {
    let config = agent.manifest_dir().parent().context("agent dir")?.join("config.yaml");
    let config = config.to_string_lossy();
    for entry in std::fs::read_dir("/proc")?.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else { continue };
        let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else { continue };
        let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
        if args.windows(2).any(|w| w[0] == b"--config" && w[1] == config.as_bytes()) {
            return Ok(pid);
        }
    }
    bail!("no process with --config {config} in /proc")
}

/// User + system CPU seconds of a process (all its threads), from `/proc/<pid>/stat`.
fn cpu_seconds(pid: u32) -> Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the parenthesised command name: state is field 3, utime and stime are fields 14 and 15.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).context("malformed /proc/<pid>/stat")?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| fields.get(i).and_then(|f| f.parse::<u64>().ok()).context("malformed /proc/<pid>/stat");
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    Ok((ticks(11)? + ticks(12)?) as f64 / hz)
}

/// `VmRSS` of a process, in kB.
fn rss_kb(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .with_context(|| format!("no VmRSS in /proc/{pid}/status"))
}

struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// The samples of a Prometheus text exposition (label values without escapes, which is all the agent writes here).
fn parse_metrics(text: &str) -> Vec<Sample> {
    let mut out = Vec::new();
    for line in text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')) {
        let (series, value) = match line.rsplit_once(' ') {
            Some(x) => x,
            None => continue,
        };
        let Ok(value) = value.parse::<f64>() else { continue };
        let (name, labels) = match series.split_once('{') {
            Some((name, rest)) => (name, rest.strip_suffix('}').unwrap_or(rest)),
            None => (series, ""),
        };
        let mut map = BTreeMap::new();
        let mut rest = labels;
        while let Some((key, after)) = rest.split_once("=\"") {
            let Some((val, after)) = after.split_once('"') else { break };
            map.insert(key.trim_start_matches(',').trim().to_owned(), val.to_owned());
            rest = after;
        }
        out.push(Sample { name: name.to_owned(), labels: map, value });
    }
    out
}

fn median(values: &[f64]) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let mid = v.len() / 2;
    if v.len() % 2 == 1 {
        v[mid]
    } else {
        (v[mid - 1] + v[mid]) / 2.0
    }
}

fn mb(kb: u64) -> f64 {
    kb as f64 / 1024.0
}

/// Medians of one set of runs, as printed in the tables.
struct Row {
    all_running: f64,
    all_running_range: (f64, f64),
    seen: f64,
    start: f64,
    cri: f64,
    own: f64,
    own_share: f64,
    outside: f64,
    concurrency: f64,
    overlap: f64,
    rss_idle: f64,
    rss_running: f64,
    cpu_idle: f64,
    cpu_running: f64,
    cpu_start: f64,
    cpu_per_poll: f64,
    cpu_start_net: f64,
    load1: f64,
}

fn row(runs: &[Run]) -> Row {
    let per_run = |f: &dyn Fn(&Run) -> f64| median(&runs.iter().map(f).collect::<Vec<_>>());
    let all: Vec<f64> = runs.iter().map(|r| r.all_running.as_secs_f64()).collect();
    Row {
        all_running: median(&all),
        all_running_range: (all.iter().copied().fold(f64::INFINITY, f64::min), all.iter().copied().fold(0.0, f64::max)),
        seen: per_run(&|r| median(&r.seen)),
        start: per_run(&|r| median(&r.start)),
        cri: per_run(&|r| median(&r.cri)),
        own: per_run(&|r| median(&r.start.iter().zip(&r.cri).map(|(s, c)| s - c).collect::<Vec<_>>())),
        own_share: median(&runs.iter().flat_map(Run::own_shares).collect::<Vec<_>>()),
        outside: per_run(&|r| median(&r.outside())),
        concurrency: per_run(&Run::concurrency),
        overlap: per_run(&Run::overlap),
        rss_idle: per_run(&|r| mb(r.rss_idle_kb)),
        rss_running: per_run(&|r| mb(r.rss_running_kb)),
        cpu_idle: per_run(&|r| r.cpu_idle_share),
        cpu_running: per_run(&|r| r.cpu_running_share),
        cpu_start: per_run(&|r| r.cpu_start),
        cpu_per_poll: per_run(&|r| r.cpu_per_poll),
        cpu_start_net: per_run(&Run::cpu_start_net),
        load1: per_run(&|r| r.load1),
    }
}

fn scenario_label(n: usize, label: &str) -> String {
    format!("{n} pod{} {label}", if n == 1 { "" } else { "s" })
}

fn report(results: &[(usize, Run, Vec<Run>)]) {
    let rows: Vec<(usize, &str, usize, Row)> = results
        .iter()
        .flat_map(|(n, cold, measured)| {
            [(*n, "cold", 1, row(std::slice::from_ref(cold))), (*n, "warm", measured.len(), row(measured))]
        })
        .collect();
    let legend = |lines: &[&str]| lines.iter().for_each(|l| println!("{PREFIX}   {l}"));

    println!("{PREFIX}");
    println!("{PREFIX} TIMES: medians over runs; per-pod figures are medians over a run's pods first");
    legend(&[
        "all_running  T0 (manifests written) to the poll that saw all pods Running (wall clock, 10 ms polls)",
        "seen         T0 to the poll that first saw a pod Running (per pod)",
        "start, cri   agent-measured: pod worker created to all containers running; the part inside CRI calls",
        "own          start - cri; own% = own / start (median over all pods of all runs)",
        "outside      seen - start: file watch and folder scan before the worker exists, status and poll after",
        "conc         sum of per-pod start / all_running (N = fully concurrent, 1 = one after another)",
        "overlap      sum of per-pod start / longest per-pod start (the same on the agent's clock only)",
    ]);
    println!(
        "{PREFIX} {:<14} {:>4} {:>12} {:>15} {:>7} {:>7} {:>7} {:>7} {:>6} {:>7} {:>5} {:>7}",
        "scenario",
        "runs",
        "all_running",
        "(min-max)",
        "seen",
        "start",
        "cri",
        "own",
        "own%",
        "outside",
        "conc",
        "overlap"
    );
    for (n, label, runs, r) in &rows {
        let (conc, overlap) = if *n > 1 {
            (format!("{:.1}", r.concurrency), format!("{:.1}", r.overlap))
        } else {
            ("-".into(), "-".into())
        };
        println!(
            "{PREFIX} {:<14} {:>4} {:>11.3}s {:>15} {:>6.3}s {:>6.3}s {:>6.3}s {:>6.3}s {:>5.1}% {:>6.3}s {:>5} {:>7}",
            scenario_label(*n, label),
            runs,
            r.all_running,
            format!("({:.3}-{:.3})", r.all_running_range.0, r.all_running_range.1),
            r.seen,
            r.start,
            r.cri,
            r.own,
            r.own_share * 100.0,
            r.outside,
            conc,
            overlap,
        );
    }
    if rows.iter().any(|(_, label, _, r)| *label == "warm" && r.own < 0.0) {
        println!(
            "{PREFIX} note: own < 0 means the CRI time exceeds the start time; the agent counts the wall time with a \
             CRI call in flight, so this is measurement noise of under a millisecond per pod"
        );
    }

    println!("{PREFIX}");
    println!("{PREFIX} RESOURCES of the agent process (medians over runs)");
    legend(&[
        "rss_idle     VmRSS of a fresh agent before T0; rss_run: once all pods run",
        "cpu_idle     CPU use while idle before T0; cpu_run: over 2 s once all pods run, nothing polling (of one CPU)",
        "cpu_start    CPU seconds from T0 to all running, including answering the /pods polls",
        "per_poll     CPU per /pods answer (200 back to back, all pods running)",
        "cpu_net      cpu_start - polls x per_poll: the agent's CPU for starting the pods",
        "load1        1-minute load average at T0 (this machine may be shared with other work)",
    ]);
    println!(
        "{PREFIX} {:<14} {:>8} {:>8} {:>8} {:>7} {:>9} {:>8} {:>8} {:>6}",
        "scenario", "rss_idle", "rss_run", "cpu_idle", "cpu_run", "cpu_start", "per_poll", "cpu_net", "load1"
    );
    for (n, label, _, r) in &rows {
        println!(
            "{PREFIX} {:<14} {:>6.1}MB {:>6.1}MB {:>7.1}% {:>6.1}% {:>8.3}s {:>6.2}ms {:>7.3}s {:>6.1}",
            scenario_label(*n, label),
            r.rss_idle,
            r.rss_running,
            r.cpu_idle * 100.0,
            r.cpu_running * 100.0,
            r.cpu_start,
            r.cpu_per_poll * 1e3,
            r.cpu_start_net,
            r.load1,
        );
    }

    println!("{PREFIX}");
    println!("{PREFIX} CRI operations per warm run (mean): calls, total seconds, mean ms per call");
    for (n, _, measured) in results {
        let mut ops: BTreeMap<&str, (f64, f64)> = BTreeMap::new();
        for run in measured {
            for (op, (calls, secs)) in &run.ops {
                let e = ops.entry(op).or_default();
                e.0 += calls / measured.len() as f64;
                e.1 += secs / measured.len() as f64;
            }
        }
        let list: Vec<String> = ops
            .iter()
            .filter(|(_, (calls, _))| *calls > 0.0)
            .map(|(op, (calls, secs))| format!("{op} {calls:.0}x {secs:.3}s {:.1}ms", secs / calls * 1e3))
            .collect();
        println!("{PREFIX} ops pods={n}: {}", list.join(", "));
        if ops.get("PullImage").is_some_and(|(calls, _)| *calls > 0.0) {
            println!("{PREFIX} WARNING pods={n}: warm runs called PullImage; the image was expected to be cached");
        }
    }

    println!("{PREFIX}");
    println!("{PREFIX} AGAINST Go kubelet v1.28 on this machine (ours / kubelet, midpoints of its quoted ranges)");
    let compare = |what: &str, ours: f64, theirs: f64, unit: &str, aim: f64| {
        println!(
            "{PREFIX} vs kubelet {what:<28} {ours:>7.3}{unit} / {theirs:>6.2}{unit} = {:.2} (aim <= {aim:.2})",
            ours / theirs
        );
    };
    for (n, label, _, r) in &rows {
        match (n, *label) {
            (1, "warm") => compare("1 pod, manifest to Running", r.all_running, KUBELET_1_POD_S, "s", AIM_TIME_RATIO),
            (30, "warm") => {
                compare("30 pods, manifest to Running", r.all_running, KUBELET_30_PODS_S, "s", AIM_TIME_RATIO)
            }
            _ => {}
        }
    }
    let idle: Vec<f64> = results.iter().flat_map(|(_, _, m)| m.iter().map(|r| mb(r.rss_idle_kb))).collect();
    compare("idle RSS", median(&idle), KUBELET_IDLE_RSS_MB, "MB", AIM_RSS_RATIO);
    for (n, label, _, r) in &rows {
        if *label == "warm" {
            println!(
                "{PREFIX} agent's own share, {}: {:.1}% (aim < {:.0}%)",
                scenario_label(*n, label),
                r.own_share * 100.0,
                AIM_OWN_SHARE * 100.0
            );
        }
    }
}

/// The text without terminal colour sequences.
fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for d in chars.by_ref() {
                if d.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}
