//! The node figures, rkubelet side by side with the Go kubelet v1.28.7 of the kit, on one control plane: each agent
//! in turn the only node, on its own private containerd (same images, same CNI plugins), through the same rounds.
//!
//! ```text
//! cargo build --release -p rkubelet -p cni-plugins
//! RKUBELET_BIN=$PWD/target/release/rkubelet RKUBELET_CNI_BIN_DIR=$PWD/target/release \
//!   cargo bench -p rkubelet-tests --bench node_figures
//! ```
//!
//! Per agent, after a warm-up pod (it pulls the images), `RKUBELET_BENCH_ROUNDS` (default 3) rounds of:
//! - 1 pod created → Running and Ready, then deleted;
//! - `RKUBELET_BENCH_PODS` (default 30) pods created at once → all Running and Ready;
//! - those pods deleted → gone.
//!
//! Every time is taken from a watch on the pods opened before the create, at the moment this process receives the
//! event (the API's own timestamps have a resolution of one second). Then the agent's RSS (VmRSS from /proc) and
//! its CPU time while idle: joined, no pods, over `RKUBELET_BENCH_IDLE_SECS` (default 40) seconds, with the context
//! switches of all its threads in that time (each one is a wake-up).
//!
//! The control plane is a private instance of the kit (`RKUBELET_K8S_KIT`, default `../shared/k8s`):
//! `K8S_HOME=/var/lib/rkubelet-test/bench-kit` and ports 56443 (API server), 52379 (etcd), 50257, 50259 unless the
//! `K8S_*` variables say otherwise; it is started empty (`up.sh --wipe`) and stopped at the end. `$K8S_HOME.lock`
//! (flock, as `tests/run.sh` takes it) keeps two runs from sharing it: the bench waits for it.
//!
//! Then the runtime's own share (`RKUBELET_BENCH_RUNTIME_ALONE`, default 1): the same pods straight through CRI on
//! a private containerd with the same CNI plugins, no agent and no API server: RunPodSandbox, CreateContainer and
//! StartContainer for each pod, all pods at once; on delete StopContainer with the pod's grace period and
//! StopPodSandbox. What an agent adds to a figure is its time minus this one. For idle CPU the floor is kubelet's
//! relist by itself: ListPodSandbox and ListContainers every second through the agent's CRI client, on a thread of
//! its own, for the same idle window.
//!
//! Output on stdout, lines starting with `bench node_figures`: one line per round, then the table
//! `| figure | kubelet | rkubelet | rkubelet/kubelet |` with the range over the rounds and the ratio of the medians,
//! then the runtime alone (the relist alone for idle CPU) and each agent's figure above it, with their ratio.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, DeleteParams, ListParams, PostParams, WatchEvent, WatchParams};
use rkubelet::runtime::{ContainerSpec, Runtime, SandboxSpec};
use rkubelet_tests::agent::{tail, Agent};
use rkubelet_tests::containerd::Containerd;
use rkubelet_tests::images::ensure_images;
use rkubelet_tests::kit::{self as kit, env_number, kit_bench_main, kit_script, rss_mb};
use rkubelet_tests::oracle::GoKubelet;

const PREFIX: &str = "bench node_figures";
const NAMESPACE: &str = "default";
const LABEL: &str = "bench=node-figures";
const POD_TIMEOUT: Duration = Duration::from_secs(180);
const NODE_READY_TIMEOUT: Duration = Duration::from_secs(90);
/// Before the idle window: the last deletions' status writes, the runtime's garbage collection and the agent's
/// own clean-up have settled.
const SETTLE: Duration = Duration::from_secs(10);

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Kubelet,
    Rkubelet,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Kubelet => "kubelet",
            Kind::Rkubelet => "rkubelet",
        }
    }
}

/// One agent's figures.
#[derive(Default)]
struct Figures {
    one_pod: Vec<f64>,
    many_ready: Vec<f64>,
    many_gone: Vec<f64>,
    rss_mb: f64,
    idle_cpu_pct: f64,
    idle_wakeups_per_s: f64,
}

fn main() -> ExitCode {
    kit_bench_main(PREFIX, "node_figures", run)
}

/// The private kit's home and ports, set in this process's environment for the kit scripts (before any thread).
fn private_kit_env() -> PathBuf {
    for (name, default) in [
        ("K8S_HOME", "/var/lib/rkubelet-test/bench-kit"),
        ("K8S_APISERVER_PORT", "56443"),
        ("K8S_ETCD_PORT", "52379"),
        ("K8S_KCM_PORT", "50257"),
        ("K8S_SCHED_PORT", "50259"),
    ] {
        if std::env::var_os(name).is_none_or(|v| v.is_empty()) {
            std::env::set_var(name, default);
        }
    }
    PathBuf::from(std::env::var_os("K8S_HOME").unwrap_or_default())
}

/// Holds `$K8S_HOME.lock` (flock) for as long as it lives; waits while another run holds it.
struct KitLock(#[allow(dead_code)] File);

impl KitLock {
    fn take(home: &Path) -> Result<KitLock> {
        let path = PathBuf::from(format!("{}.lock", home.display()));
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        let file = File::create(&path).with_context(|| format!("open {}", path.display()))?;
        let mut said = false;
        loop {
            // SAFETY: flock(2) on a descriptor this function owns.
            if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
                return Ok(KitLock(file));
            }
            if !said {
                println!("{PREFIX}: {} is held by another run; waiting", path.display());
                said = true;
            }
            std::thread::sleep(Duration::from_secs(5));
        }
    }
}

/// Stops the private control plane on drop.
struct KitUp<'a>(&'a Path);

impl Drop for KitUp<'_> {
    fn drop(&mut self) {
        let _ = kit_script(self.0, "down.sh", &[]);
    }
}

fn run(kit: &Path) -> Result<()> {
    let home = private_kit_env();
    let pods = env_number("RKUBELET_BENCH_PODS", 30)?.max(1);
    let rounds = env_number("RKUBELET_BENCH_ROUNDS", 3)?.max(1);
    let idle = Duration::from_secs(env_number("RKUBELET_BENCH_IDLE_SECS", 40)? as u64);
    ensure_images()?;
    let _lock = KitLock::take(&home)?;
    wait_for_other_control_planes()?;
    let admin_kubeconfig = kit_script(kit, "up.sh", &["--wipe"])?;
    let _up = KitUp(kit);
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    let admin = rt.block_on(kit::admin_client(admin_kubeconfig.as_ref()))?;
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!(
        "{PREFIX}: {rounds} rounds per agent of 1 pod and {pods} pods, idle {} s; load {}; K8S_HOME={}",
        idle.as_secs(),
        load.split(' ').next().unwrap_or("?"),
        home.display()
    );
    let agents = std::env::var("RKUBELET_BENCH_AGENTS").unwrap_or_else(|_| "kubelet,rkubelet".into());
    let mut results = Vec::new();
    for kind in [Kind::Kubelet, Kind::Rkubelet] {
        if agents.split(',').any(|a| a.trim() == kind.name()) {
            let figures = measure(kind, kit, &rt, &admin, pods, rounds, idle)?;
            results.push((kind, figures));
        }
    }
    let alone = if env_number("RKUBELET_BENCH_RUNTIME_ALONE", 1)? != 0 {
        Some(measure_runtime_alone(&rt, pods, rounds, idle)?)
    } else {
        None
    };
    print_table(&results, alone.as_ref(), pods);
    Ok(())
}

/// One pod straight through CRI: its sandbox and its one container.
struct BarePod {
    sandbox_id: String,
    container_id: String,
}

async fn bare_pod_start(runtime: &Runtime, logs: &Path, image_ref: &str, name: String) -> Result<BarePod> {
    let uid = format!("runtime-alone-{name}");
    let log_directory = logs.join(&uid);
    std::fs::create_dir_all(&log_directory)?;
    let sandbox = SandboxSpec {
        name: name.clone(),
        namespace: NAMESPACE.into(),
        uid,
        hostname: name,
        log_directory: log_directory.display().to_string(),
        ..Default::default()
    };
    let sandbox_id = runtime.run_pod_sandbox(&sandbox).await?;
    match bare_container_start(runtime, &sandbox_id, &sandbox, image_ref).await {
        Ok(container_id) => Ok(BarePod { sandbox_id, container_id }),
        Err(e) => {
            // Not left to the containerd's removal: the sandbox holds a network namespace and an address.
            let _ = runtime.stop_pod_sandbox(&sandbox_id).await;
            let _ = runtime.remove_pod_sandbox(&sandbox_id).await;
            Err(e)
        }
    }
}

async fn bare_container_start(
    runtime: &Runtime,
    sandbox_id: &str,
    sandbox: &SandboxSpec,
    image_ref: &str,
) -> Result<String> {
    let container = ContainerSpec {
        name: "app".into(),
        termination_grace_period: kit::BENCH_POD_GRACE_SECONDS,
        image: rkubelet_tests::images::BUSYBOX.into(),
        image_ref: image_ref.into(),
        command: kit::BENCH_POD_COMMAND.iter().map(|s| s.to_string()).collect(),
        log_path: "app/0.log".into(),
        ..Default::default()
    };
    let container_id = runtime.create_container(sandbox_id, &container, sandbox).await?;
    runtime.start_container(&container_id).await?;
    Ok(container_id)
}

async fn bare_pod_stop(runtime: &Runtime, pod: &BarePod) -> Result<()> {
    runtime.stop_container(&pod.container_id, kit::BENCH_POD_GRACE_SECONDS).await?;
    runtime.stop_pod_sandbox(&pod.sandbox_id).await?;
    Ok(())
}

/// `count` pods started at once, then stopped at once; the sandboxes are removed after the clock stops (an agent
/// removes them later too, in its garbage collection).
async fn bare_round(runtime: &Runtime, logs: &Path, image_ref: &str, tag: &str, count: usize) -> Result<(f64, f64)> {
    let t0 = Instant::now();
    let started = futures::future::join_all(
        (0..count).map(|i| bare_pod_start(runtime, logs, image_ref, format!("fig-cri-{tag}-{i}"))),
    )
    .await;
    let ready = t0.elapsed().as_secs_f64();
    let mut pods = Vec::new();
    let mut first_error = None;
    for result in started {
        match result {
            Ok(pod) => pods.push(pod),
            Err(e) => first_error = first_error.or(Some(e)),
        }
    }
    let t1 = Instant::now();
    let stopped = futures::future::join_all(pods.iter().map(|p| bare_pod_stop(runtime, p))).await;
    let gone = t1.elapsed().as_secs_f64();
    for pod in &pods {
        runtime.remove_pod_sandbox(&pod.sandbox_id).await?;
    }
    if let Some(e) = first_error {
        return Err(e.context(format!("starting {count} pods through CRI")));
    }
    stopped.into_iter().collect::<Result<Vec<_>>>()?;
    Ok((ready, gone))
}

fn measure_runtime_alone(rt: &tokio::runtime::Runtime, pods: usize, rounds: usize, idle: Duration) -> Result<Figures> {
    let containerd = Containerd::start("bench-fig-cri")?;
    let logs = tempfile::tempdir()?;
    let mut figures = Figures::default();
    rt.block_on(async {
        let runtime = Runtime::connect(&containerd.endpoint()).await?;
        let image_ref = runtime.pull_image(rkubelet_tests::images::BUSYBOX, &SandboxSpec::default()).await?;
        bare_round(&runtime, logs.path(), &image_ref, "warm", 1).await?;
        for round in 1..=rounds {
            let (one, _) = bare_round(&runtime, logs.path(), &image_ref, &format!("one{round}"), 1).await?;
            let (ready, gone) = bare_round(&runtime, logs.path(), &image_ref, &format!("many{round}"), pods).await?;
            println!(
                "{PREFIX}: runtime alone round {round}: 1 pod started {one:.2} s; {pods} pods all started {ready:.2} s, stopped {gone:.2} s"
            );
            figures.one_pod.push(one);
            figures.many_ready.push(ready);
            figures.many_gone.push(gone);
        }
        anyhow::Ok(())
    })?;
    let (cpu_pct, wakeups_per_s) = relist_alone(&containerd.endpoint(), idle)?;
    println!(
        "{PREFIX}: runtime alone: kubelet's relist by itself (ListPodSandbox and ListContainers every second, 0 pods), idle {} s: CPU {cpu_pct:.3} %, {wakeups_per_s:.1} context switches/s",
        idle.as_secs()
    );
    figures.idle_cpu_pct = cpu_pct;
    figures.idle_wakeups_per_s = wakeups_per_s;
    Ok(figures)
}

/// The thread name of the relist-alone runtime: its threads' CPU time is read by that name.
const RELIST_THREAD: &str = "relist-alone";

/// The least an idle node agent can spend on kubelet's generic PLEG: the relist's two CRI calls every second
/// (`RELIST_PERIOD`), through the agent's own CRI client, on a runtime of its own and nothing else.
/// `RKUBELET_BENCH_RELIST_WORKERS` (default 0): 0 runs it on one thread (tokio's current-thread runtime), N on a
/// multi-thread runtime of N workers, as the agent's. Returns its CPU share in % and its context switches per second.
fn relist_alone(endpoint: &str, idle: Duration) -> Result<(f64, f64)> {
    let workers = env_number("RKUBELET_BENCH_RELIST_WORKERS", 0)?;
    let endpoint = endpoint.to_owned();
    let thread = std::thread::Builder::new().name(RELIST_THREAD.into()).spawn(move || -> Result<(f64, f64)> {
        let rt = if workers == 0 {
            tokio::runtime::Builder::new_current_thread().enable_all().build()?
        } else {
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(workers as usize)
                .thread_name(RELIST_THREAD)
                .enable_all()
                .build()?
        };
        rt.block_on(async {
            let runtime = Runtime::connect(&endpoint).await?;
            let relist = || async {
                let (sandboxes, containers) =
                    tokio::join!(runtime.list_pod_sandboxes(None), runtime.list_containers(None));
                sandboxes?;
                containers?;
                anyhow::Ok(())
            };
            // The connection's set-up is not part of the idle cost.
            relist().await?;
            let mut tick = tokio::time::interval(rkubelet::pleg::RELIST_PERIOD);
            tick.tick().await;
            let (ns0, switches0, t0) =
                (threads_cpu_ns(RELIST_THREAD)?, threads_switches(RELIST_THREAD)?, Instant::now());
            while t0.elapsed() < idle {
                tick.tick().await;
                relist().await?;
            }
            let (ns1, switches1) = (threads_cpu_ns(RELIST_THREAD)?, threads_switches(RELIST_THREAD)?);
            let elapsed = t0.elapsed().as_secs_f64();
            Ok((
                ns1.saturating_sub(ns0) as f64 / 1e9 / elapsed * 100.0,
                switches1.saturating_sub(switches0) as f64 / elapsed,
            ))
        })
    })?;
    thread.join().map_err(|_| anyhow::anyhow!("the relist-alone thread panicked"))?
}

/// This process's threads named `name`, as /proc sees them.
fn threads_named(name: &str) -> Result<Vec<PathBuf>> {
    Ok(tasks_in("/proc/self/task")?
        .into_iter()
        .filter(|task| std::fs::read_to_string(task.join("comm")).is_ok_and(|comm| comm.trim() == name))
        .collect())
}

fn threads_cpu_ns(name: &str) -> Result<u64> {
    Ok(tasks_cpu_ns(&threads_named(name)?))
}

fn threads_switches(name: &str) -> Result<u64> {
    Ok(tasks_switches(&threads_named(name)?))
}

/// Another control plane on this host (another test run's kit) takes CPU from the agents measured here: wait up to
/// `RKUBELET_BENCH_WAIT_SECS` (default 900) for it to go, then measure anyway and say so.
fn wait_for_other_control_planes() -> Result<()> {
    let wait = Duration::from_secs(env_number("RKUBELET_BENCH_WAIT_SECS", 900)? as u64);
    let deadline = Instant::now() + wait;
    let mut said = false;
    loop {
        let out = std::process::Command::new("pgrep").args(["-f", "kube-apiserver"]).output()?;
        let count = String::from_utf8_lossy(&out.stdout).lines().count();
        if count == 0 {
            return Ok(());
        }
        if Instant::now() >= deadline {
            println!("{PREFIX}: note: {count} other kube-apiserver process(es) still run: the figures share the CPU");
            return Ok(());
        }
        if !said {
            println!(
                "{PREFIX}: another control plane runs on this host; waiting up to {} s for it to stop",
                wait.as_secs()
            );
            said = true;
        }
        std::thread::sleep(Duration::from_secs(5));
    }
}

fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

fn range(v: &[f64], unit: &str, digits: usize) -> String {
    let lo = v.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    if v.len() <= 1 || (hi - lo).abs() < 10f64.powi(-(digits as i32)) {
        format!("{lo:.digits$} {unit}")
    } else {
        format!("{lo:.digits$}–{hi:.digits$} {unit} (median {:.digits$})", median(v))
    }
}

fn print_table(results: &[(Kind, Figures)], alone: Option<&Figures>, pods: usize) {
    let [(_, go), (_, ours)] = results else { return };
    type Row = (String, fn(&Figures) -> Vec<f64>, &'static str, usize);
    let rows: [Row; 6] = [
        ("1 pod created → Running and Ready".into(), |f| f.one_pod.clone(), "s", 2),
        (format!("{pods} pods created at once → all Running and Ready"), |f| f.many_ready.clone(), "s", 2),
        (format!("delete {pods} pods → gone"), |f| f.many_gone.clone(), "s", 2),
        ("agent RSS after those rounds".into(), |f| vec![f.rss_mb], "MB", 1),
        ("agent idle CPU, joined, 0 pods".into(), |f| vec![f.idle_cpu_pct], "%", 3),
        ("agent idle wake-ups (context switches)".into(), |f| vec![f.idle_wakeups_per_s], "/s", 1),
    ];
    println!("{PREFIX}: | figure | kubelet | rkubelet | rkubelet/kubelet |");
    println!("{PREFIX}: |---|---|---|---|");
    for (name, get, unit, digits) in rows {
        let (g, o) = (get(go), get(ours));
        println!(
            "{PREFIX}: | {name} | {} | {} | {:.2}× |",
            range(&g, unit, digits),
            range(&o, unit, digits),
            median(&o) / median(&g)
        );
    }
    let Some(alone) = alone else { return };
    println!(
        "{PREFIX}: runtime alone (containerd through CRI, no agent, no API server) and each agent's figure above it:"
    );
    println!("{PREFIX}: | figure | runtime alone | kubelet above it | rkubelet above it | rkubelet/kubelet |");
    println!("{PREFIX}: |---|---|---|---|---|");
    let floor_rows: [Row; 4] = [
        ("1 pod created → Running and Ready".into(), |f| f.one_pod.clone(), "s", 2),
        (format!("{pods} pods created at once → all Running and Ready"), |f| f.many_ready.clone(), "s", 2),
        (format!("delete {pods} pods → gone"), |f| f.many_gone.clone(), "s", 2),
        ("agent idle CPU, joined, 0 pods (floor: the relist alone)".into(), |f| vec![f.idle_cpu_pct], "%", 3),
    ];
    for (name, get, unit, digits) in floor_rows {
        let floor = median(&get(alone));
        let (g, o) = (median(&get(go)) - floor, median(&get(ours)) - floor);
        println!(
            "{PREFIX}: | {name} | {} | {g:.digits$} {unit} | {o:.digits$} {unit} | {:.2}× |",
            range(&get(alone), unit, digits),
            o / g
        );
    }
}

/// An agent of `kind` as a node of the kit on a private containerd; stopped and removed on drop.
enum NodeUnderTest {
    Rkubelet {
        agent: Agent,
        // Dropped after the agent: the agent must be gone before its runtime.
        _containerd: Containerd,
    },
    Kubelet(GoKubelet),
}

impl NodeUnderTest {
    fn start(kind: Kind, kit: &Path, node: &str) -> Result<Self> {
        let name = format!("bench-fig-{}", kind.name());
        match kind {
            Kind::Rkubelet => {
                let containerd = Containerd::start(&name)?;
                let config = format!(
                    "cniConfDir: {}\ncniBridgeName: {}\n",
                    containerd.cni_conf_dir().display(),
                    containerd.bridge()
                );
                let agent = Agent::new(&containerd, &config)?;
                ensure!(agent.node_name() == node, "the harness named the node {}", agent.node_name());
                let kubeconfig = kit_script(kit, "node-kubeconfig.sh", &[node])?;
                // kubelet's usual verbosity; the harness's default is debug.
                std::env::set_var("RUST_LOG", "info");
                let agent = agent.with_args(["--kubeconfig".to_owned(), kubeconfig]).started()?;
                Ok(NodeUnderTest::Rkubelet { agent, _containerd: containerd })
            }
            Kind::Kubelet => Ok(NodeUnderTest::Kubelet(GoKubelet::start(kit, &name, node)?)),
        }
    }

    fn pid(&self) -> Result<u32> {
        match self {
            NodeUnderTest::Rkubelet { agent, .. } => agent.pid().context("rkubelet is not running"),
            NodeUnderTest::Kubelet(k) => {
                let home = std::env::var("K8S_HOME").unwrap_or_default();
                let file = Path::new(&home).join(format!("run/kubelet-{}.pid", k.node_name()));
                let text = std::fs::read_to_string(&file).with_context(|| format!("read {}", file.display()))?;
                Ok(text.trim().parse()?)
            }
        }
    }

    fn log_tail(&self) -> String {
        match self {
            NodeUnderTest::Rkubelet { agent, .. } => tail(&agent.log(), 30),
            NodeUnderTest::Kubelet(k) => k.log_tail(30),
        }
    }
}

impl Drop for NodeUnderTest {
    fn drop(&mut self) {
        if let NodeUnderTest::Rkubelet { agent, .. } = self {
            let _ = agent.stop();
        }
    }
}

fn node_name(kind: Kind) -> String {
    // The harness names an rkubelet node after its containerd.
    format!("node-bench-fig-{}", kind.name())
}

/// The process's user + system CPU time in clock ticks (all its threads).
fn cpu_ticks(pid: u32) -> Result<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // The command name may hold spaces: the fields start after its closing parenthesis.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).context("malformed /proc/PID/stat")?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of stat(5); `rest` starts at field 3.
    let utime: u64 = fields.get(11).context("no utime")?.parse()?;
    let stime: u64 = fields.get(12).context("no stime")?.parse()?;
    Ok(utime + stime)
}

/// The CPU time of the process's live threads in nanoseconds (schedstat): clock ticks are too coarse for the
/// aim (0.02 % of 40 s is 8 ms, less than one tick); a thread that exits in the window takes its time with it.
fn cpu_ns(pid: u32) -> Result<u64> {
    Ok(tasks_cpu_ns(&tasks_in(&format!("/proc/{pid}/task"))?))
}

/// Voluntary and involuntary context switches of all the process's threads.
fn context_switches(pid: u32) -> Result<u64> {
    Ok(tasks_switches(&tasks_in(&format!("/proc/{pid}/task"))?))
}

/// The threads listed in a `/proc/.../task` directory.
fn tasks_in(dir: &str) -> Result<Vec<PathBuf>> {
    std::fs::read_dir(dir)?.map(|task| Ok(task?.path())).collect()
}

/// The summed schedstat run time of these threads; a thread that exited since it was listed counts nothing.
fn tasks_cpu_ns(tasks: &[PathBuf]) -> u64 {
    tasks
        .iter()
        .filter_map(|task| std::fs::read_to_string(task.join("schedstat")).ok())
        .filter_map(|stat| stat.split_whitespace().next().and_then(|v| v.parse::<u64>().ok()))
        .sum()
}

/// The summed voluntary and involuntary context switches of these threads.
fn tasks_switches(tasks: &[PathBuf]) -> u64 {
    tasks
        .iter()
        .filter_map(|task| std::fs::read_to_string(task.join("status")).ok())
        .flat_map(|status| {
            status
                .lines()
                .filter_map(|line| {
                    line.strip_prefix("voluntary_ctxt_switches:")
                        .or_else(|| line.strip_prefix("nonvoluntary_ctxt_switches:"))
                })
                .filter_map(|v| v.trim().parse::<u64>().ok())
                .collect::<Vec<_>>()
        })
        .sum()
}

/// With `RKUBELET_DHAT_FILE` set (and the agent built with `--features dhat-heap`), asks the agent for its heap
/// profile now that the pods are gone (SIGUSR2) and waits until the file is written.
fn heap_profile(pid: u32) -> Result<()> {
    let Some(file) = std::env::var_os("RKUBELET_DHAT_FILE").map(PathBuf::from) else { return Ok(()) };
    let _ = std::fs::remove_file(&file);
    // SAFETY: kill(2) on the agent this bench started.
    unsafe { libc::kill(pid as i32, libc::SIGUSR2) };
    let deadline = Instant::now() + Duration::from_secs(300);
    let mut last = None;
    loop {
        std::thread::sleep(Duration::from_secs(2));
        let size = std::fs::metadata(&file).map(|m| m.len()).ok();
        if size.is_some() && size == last {
            println!(
                "{PREFIX}: rkubelet heap profile after the rounds: {} ({} bytes)",
                file.display(),
                size.unwrap_or(0)
            );
            return Ok(());
        }
        ensure!(
            Instant::now() < deadline,
            "no heap profile at {} (is the agent built with dhat-heap?)",
            file.display()
        );
        last = size;
    }
}

fn bench_pod(name: &str, node: &str, sa_token: bool) -> Result<Pod> {
    kit::bench_pod(name, NAMESPACE, node, "node-figures", sa_token)
}

fn running_and_ready(pod: &Pod) -> bool {
    let Some(status) = pod.status.as_ref() else { return false };
    status.phase.as_deref() == Some("Running")
        && status.conditions.iter().flatten().any(|c| c.type_ == "Ready" && c.status == "True")
}

/// Creates `names` at once and waits, on a watch opened before, until all are Running and Ready; then deletes them
/// all at once and waits until the watch says each is gone. Returns both durations.
async fn create_and_delete(api: &Api<Pod>, node: &NodeUnderTest, specs: &[Pod]) -> Result<(Duration, Duration)> {
    let names: HashSet<String> = specs.iter().filter_map(|p| p.metadata.name.clone()).collect();
    let list = api.list(&ListParams::default().labels(LABEL)).await?;
    let rv = list.metadata.resource_version.unwrap_or_default();
    let mut events = api.watch(&WatchParams::default().labels(LABEL).timeout(290), &rv).await?.boxed();
    let post = PostParams::default();
    let t0 = Instant::now();
    futures::future::try_join_all(specs.iter().map(|p| api.create(&post, p))).await?;
    let mut ready: HashMap<String, Duration> = HashMap::new();
    while ready.len() < names.len() {
        let event = tokio::time::timeout_at((t0 + POD_TIMEOUT).into(), events.try_next()).await;
        let pod = match event {
            Err(_) => bail!(
                "{} of {} pods Running and Ready after {POD_TIMEOUT:?}:\n{}",
                ready.len(),
                names.len(),
                node.log_tail()
            ),
            Ok(Ok(None)) => bail!("the watch ended"),
            Ok(Err(e)) => return Err(e.into()),
            Ok(Ok(Some(WatchEvent::Added(p) | WatchEvent::Modified(p)))) => p,
            Ok(Ok(Some(WatchEvent::Error(e)))) => bail!("watch error: {e:?}"),
            Ok(Ok(Some(_))) => continue,
        };
        let name = pod.metadata.name.clone().unwrap_or_default();
        if names.contains(&name) && running_and_ready(&pod) {
            ready.entry(name).or_insert_with(|| t0.elapsed());
        }
    }
    let all_ready = ready.values().copied().max().unwrap_or_default();
    let t1 = Instant::now();
    let delete = DeleteParams::default();
    futures::future::try_join_all(names.iter().map(|n| api.delete(n, &delete))).await?;
    let mut gone = HashSet::new();
    while gone.len() < names.len() {
        let event = tokio::time::timeout_at((t1 + POD_TIMEOUT).into(), events.try_next()).await;
        match event {
            Err(_) => bail!("{} of {} pods gone after {POD_TIMEOUT:?}:\n{}", gone.len(), names.len(), node.log_tail()),
            Ok(Ok(None)) => bail!("the watch ended"),
            Ok(Err(e)) => return Err(e.into()),
            Ok(Ok(Some(WatchEvent::Deleted(p)))) => {
                if let Some(name) = p.metadata.name.filter(|n| names.contains(n)) {
                    gone.insert(name);
                }
            }
            Ok(Ok(Some(WatchEvent::Error(e)))) => bail!("watch error: {e:?}"),
            Ok(Ok(Some(_))) => {}
        }
    }
    Ok((all_ready, t1.elapsed()))
}

#[allow(clippy::too_many_arguments)]
fn measure(
    kind: Kind,
    kit: &Path,
    rt: &tokio::runtime::Runtime,
    admin: &kube::Client,
    pods: usize,
    rounds: usize,
    idle: Duration,
) -> Result<Figures> {
    let api: Api<Pod> = Api::namespaced(admin.clone(), NAMESPACE);
    let nodes: Api<Node> = Api::all(admin.clone());
    let sa_token = env_number("RKUBELET_BENCH_SA_TOKEN", 0)? != 0;
    let name = node_name(kind);
    let _ = rt.block_on(nodes.delete(&name, &DeleteParams::default()));
    let node = NodeUnderTest::start(kind, kit, &name)?;
    let deadline = Instant::now() + NODE_READY_TIMEOUT;
    loop {
        let ready = rt.block_on(nodes.get_opt(&name))?.is_some_and(|n| {
            let conditions = n.status.and_then(|s| s.conditions).unwrap_or_default();
            conditions.iter().any(|c| c.type_ == "Ready" && c.status == "True")
        });
        if ready {
            break;
        }
        ensure!(Instant::now() < deadline, "{} node {name} not Ready:\n{}", kind.name(), node.log_tail());
        std::thread::sleep(Duration::from_millis(100));
    }
    let pid = node.pid()?;
    let specs = |tag: &str, count: usize| -> Result<Vec<Pod>> {
        (0..count).map(|i| bench_pod(&format!("fig-{}-{tag}-{i}", kind.name()), &name, sa_token)).collect()
    };
    let (warm, _) = rt.block_on(create_and_delete(&api, &node, &specs("warm", 1)?))?;
    println!(
        "{PREFIX}: {} warm-up (pulls the images): 1 pod Running and Ready in {:.2} s",
        kind.name(),
        warm.as_secs_f64()
    );
    let mut figures = Figures::default();
    for round in 1..=rounds {
        let (one, _) = rt.block_on(create_and_delete(&api, &node, &specs(&format!("one{round}"), 1)?))?;
        let (ready, gone) = rt.block_on(create_and_delete(&api, &node, &specs(&format!("many{round}"), pods)?))?;
        let rss = rss_mb(pid)?;
        println!(
            "{PREFIX}: {} round {round}: 1 pod Running and Ready {:.2} s; {pods} pods all Running and Ready {:.2} s, gone {:.2} s after the delete; RSS {rss:.1} MB",
            kind.name(),
            one.as_secs_f64(),
            ready.as_secs_f64(),
            gone.as_secs_f64()
        );
        figures.one_pod.push(one.as_secs_f64());
        figures.many_ready.push(ready.as_secs_f64());
        figures.many_gone.push(gone.as_secs_f64());
    }
    std::thread::sleep(SETTLE);
    figures.rss_mb = rss_mb(pid)?;
    if kind == Kind::Rkubelet {
        heap_profile(pid)?;
    }
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    let (ticks0, ns0, switches0, t0) = (cpu_ticks(pid)?, cpu_ns(pid)?, context_switches(pid)?, Instant::now());
    std::thread::sleep(idle);
    let (ticks1, ns1, switches1) = (cpu_ticks(pid)?, cpu_ns(pid)?, context_switches(pid)?);
    let elapsed = t0.elapsed().as_secs_f64();
    // The larger of the two: schedstat misses threads that exited in the window, ticks round down.
    let by_ticks = ticks1.saturating_sub(ticks0) as f64 / hz;
    let by_ns = ns1.saturating_sub(ns0) as f64 / 1e9;
    figures.idle_cpu_pct = by_ticks.max(by_ns) / elapsed * 100.0;
    figures.idle_wakeups_per_s = (switches1 - switches0) as f64 / elapsed;
    println!(
        "{PREFIX}: {} after the rounds: RSS {:.1} MB; idle {:.0} s: CPU {:.3} % ({:.1} ms by schedstat, {:.0} ms by ticks), {:.1} context switches/s",
        kind.name(),
        figures.rss_mb,
        elapsed,
        figures.idle_cpu_pct,
        by_ns * 1e3,
        by_ticks * 1e3,
        figures.idle_wakeups_per_s
    );
    drop(node);
    let _ = rt.block_on(nodes.delete(&name, &DeleteParams::default()));
    Ok(figures)
}
