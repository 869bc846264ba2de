//! The kubelet server through a real API server, rkubelet side by side with the Go kubelet: `kubectl logs` of a
//! container that wrote 10 MB, and `kubectl exec` round trips per second (each one a kubectl process, an SPDY
//! upgrade through the kube-apiserver to the node, CRI Exec and the runtime's streaming server). Both agents run one
//! after the other, each on its own private containerd, as nodes of the kit's control plane (`K8S_HOME` and the
//! `K8S_*_PORT` variables choose which; its `up.sh` is run first and starts only what is not running).
//!
//! ```text
//! cargo build --release -p rkubelet
//! RKUBELET_BIN=$PWD/target/release/rkubelet cargo bench -p rkubelet-tests --bench logs_exec
//! ```
//!
//! The Go kubelet v1.28 keeps its logs in the hard-coded `/var/log/pods` and removes the folders of pods it does not
//! know, so the bench runs in a private mount namespace with its own `/var/log/pods` (it re-executes itself under
//! `unshare --mount`). `RKUBELET_BENCH_LOG_READS` (default 5) and `RKUBELET_BENCH_EXECS` (default 20) set the counts.
//! Output on stdout, lines starting with `bench logs_exec`, the ratio rkubelet / kubelet last.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, DeleteParams, PostParams};
use rkubelet_tests::agent::{tail, Agent};
use rkubelet_tests::containerd::{unmount_under, Containerd};
use rkubelet_tests::images::{ensure_images, BUSYBOX};
use rkubelet_tests::kit::{self as kit, env_number, kit_bench_main, kit_script};
use serde_json::json;

const PREFIX: &str = "bench logs_exec";
const NAMESPACE: &str = "default";
const LOG_BYTES: usize = 10 * 1024 * 1024;
/// The 10 MB of output take about 16 MB in the CRI log format: above both agents' default rotation size (10Mi),
/// which would leave the reads an empty new file.
const CONTAINER_LOG_MAX_SIZE: &str = "100Mi";
const READY_TIMEOUT: Duration = Duration::from_secs(120);
/// Set in the re-executed bench: it already runs in its own mount namespace.
const PRIVATE_NS_ENV: &str = "RKUBELET_BENCH_PRIVATE_MOUNTS";

#[derive(Clone, Copy, PartialEq, Eq)]
enum AgentKind {
    Rkubelet,
    Kubelet,
}

impl AgentKind {
    fn name(self) -> &'static str {
        match self {
            AgentKind::Rkubelet => "rkubelet",
            AgentKind::Kubelet => "kubelet",
        }
    }
}

struct Figures {
    logs: Duration,
    execs_per_second: f64,
}

fn main() -> ExitCode {
    kit_bench_main(PREFIX, "logs_exec", |kit| {
        if std::env::var_os(PRIVATE_NS_ENV).is_none() {
            reexec_private()
        } else {
            run(kit)
        }
    })
}

/// Runs this bench again in a private mount namespace whose `/var/log/pods` is an empty folder of its own.
fn reexec_private() -> Result<()> {
    let logs = tempfile::Builder::new().prefix("rkubelet-bench-var-log-pods-").tempdir()?;
    let exe = std::env::current_exe()?;
    let args: Vec<String> = std::env::args().skip(1).collect();
    let script =
        format!("mkdir -p /var/log/pods && mount --bind {} /var/log/pods && exec \"$0\" \"$@\"", logs.path().display());
    let status = Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-c", &script])
        .arg(exe)
        .args(args)
        .env(PRIVATE_NS_ENV, "1")
        .status()
        .context("run unshare")?;
    ensure!(status.success(), "the bench in its mount namespace failed: {status}");
    Ok(())
}

fn node_ip() -> Result<String> {
    let out = Command::new("ip").args(["-4", "-o", "addr", "show", "scope", "global"]).output()?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.lines()
        .filter_map(|l| l.split_whitespace().nth(3))
        .map(|a| a.split('/').next().unwrap_or(a).to_owned())
        .next()
        .context("no global IPv4 address for the node (the API server does not proxy to loopback)")
}

fn k8s_home() -> PathBuf {
    std::env::var_os("K8S_HOME").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("/var/lib/k8s-kit"))
}

fn run(kit: &Path) -> Result<()> {
    let reads = env_number("RKUBELET_BENCH_LOG_READS", 5)?.max(1);
    let execs = env_number("RKUBELET_BENCH_EXECS", 20)?.max(1);
    ensure_images()?;
    let admin_kubeconfig = PathBuf::from(kit_script(kit, "up.sh", &[])?);
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    let admin = rt.block_on(kit::admin_client(admin_kubeconfig.as_ref()))?;
    let ip = node_ip()?;
    println!("{PREFIX}: kubectl logs of {} MB ({reads} reads), {execs} kubectl exec round trips", LOG_BYTES >> 20);
    let mut results = Vec::new();
    for kind in [AgentKind::Rkubelet, AgentKind::Kubelet] {
        let figures = measure(kind, kit, &rt, &admin, &admin_kubeconfig, &ip, reads, execs)?;
        println!(
            "{PREFIX}: | {} | kubectl logs 10 MB: {:.3} s (median) | kubectl exec: {:.1} round trips/s |",
            kind.name(),
            figures.logs.as_secs_f64(),
            figures.execs_per_second
        );
        results.push(figures);
    }
    if let [ours, theirs] = results.as_slice() {
        println!(
            "{PREFIX}: ratio rkubelet/kubelet: logs time {:.2}x, exec round trips/s {:.2}x",
            ours.logs.as_secs_f64() / theirs.logs.as_secs_f64(),
            ours.execs_per_second / theirs.execs_per_second
        );
    }
    Ok(())
}

/// An agent of `kind` as a node of the kit on a private containerd; stopped on drop.
struct NodeUnderTest {
    kind: AgentKind,
    kit: PathBuf,
    node: String,
    agent: Option<Agent>,
    _dir: tempfile::TempDir,
    _containerd: Containerd,
}

impl NodeUnderTest {
    fn start(kind: AgentKind, kit: &Path, ip: &str) -> Result<Self> {
        let containerd = Containerd::start(&format!("bench-srv-{}", kind.name()))?;
        let dir = tempfile::Builder::new().prefix("rkubelet-bench-srv-").tempdir()?;
        let pki = k8s_home().join("pki");
        let mut this = NodeUnderTest {
            kind,
            kit: kit.to_owned(),
            node: String::new(),
            agent: None,
            _dir: dir,
            _containerd: containerd,
        };
        match kind {
            AgentKind::Rkubelet => {
                // As kubelet.sh configures kubelet: webhook authentication and authorisation, the cluster CA.
                let config = format!(
                    "cniConfDir: {}\ncniBridgeName: {}\nauthentication: {{anonymous: {{enabled: false}}, \
                     webhook: {{enabled: true}}, x509: {{clientCAFile: {}}}}}\nauthorization: {{mode: Webhook}}\n\
                     containerLogMaxSize: {CONTAINER_LOG_MAX_SIZE}\n",
                    this._containerd.cni_conf_dir().display(),
                    this._containerd.bridge(),
                    pki.join("ca.crt").display()
                );
                let agent = Agent::new(&this._containerd, &config)?;
                this.node = agent.node_name().to_owned();
                let kubeconfig = kit_script(kit, "node-kubeconfig.sh", &[&this.node])?;
                std::env::set_var("RUST_LOG", "info");
                let args = ["--kubeconfig".to_owned(), kubeconfig, "--node-ip".to_owned(), ip.to_owned()];
                this.agent = Some(agent.with_args(args).started()?);
            }
            AgentKind::Kubelet => {
                this.node = format!("node-bench-srv-{}", kind.name());
                let port = rkubelet_tests::agent::free_port()?;
                let out = Command::new("bash")
                    .arg(kit.join("kubelet.sh"))
                    .args([&this.node, &this._containerd.socket_path().display().to_string()])
                    .arg(format!("--container-log-max-size={CONTAINER_LOG_MAX_SIZE}"))
                    .env("K8S_KUBELET_DIR", this._dir.path().join("kubelet"))
                    .env("K8S_KUBELET_PORT", port.to_string())
                    .env("K8S_NODE_IP", ip)
                    .output()
                    .context("run kubelet.sh")?;
                ensure!(out.status.success(), "kubelet.sh failed: {}", String::from_utf8_lossy(&out.stderr));
            }
        }
        Ok(this)
    }

    fn log_tail(&self) -> String {
        match &self.agent {
            Some(a) => tail(&a.log(), 30),
            None => format!("(kubelet log in the kit's run folder: kubelet-{}.log)", self.node),
        }
    }
}

impl Drop for NodeUnderTest {
    fn drop(&mut self) {
        if let Some(mut agent) = self.agent.take() {
            let _ = agent.stop();
        }
        if self.kind == AgentKind::Kubelet {
            let _ = Command::new("bash").arg(self.kit.join("kubelet.sh")).args(["--stop", &self.node]).output();
            // kubelet bind-mounts its root dir onto itself (and its pods' volumes below it); the mounts outlive it.
            unmount_under(&[self._dir.path().to_owned()]);
        }
    }
}

fn kubectl(kubeconfig: &Path, args: &[&str]) -> Command {
    let mut c = Command::new(k8s_home().join("bin/kubectl"));
    c.arg("--kubeconfig").arg(kubeconfig).args(["-n", NAMESPACE]).args(args);
    c
}

#[allow(clippy::too_many_arguments)]
fn measure(
    kind: AgentKind,
    kit: &Path,
    rt: &tokio::runtime::Runtime,
    admin: &kube::Client,
    admin_kubeconfig: &Path,
    ip: &str,
    reads: usize,
    execs: usize,
) -> Result<Figures> {
    let pods: Api<Pod> = Api::namespaced(admin.clone(), NAMESPACE);
    let nodes: Api<Node> = Api::all(admin.clone());
    let name = format!("bench-srv-{}", kind.name());
    let _ = rt.block_on(pods.delete(&name, &DeleteParams::default().grace_period(0)));
    let node = NodeUnderTest::start(kind, kit, ip)?;
    // 10 MB of 64-byte lines on stdout, then the container waits.
    let pod: Pod = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": { "name": name, "namespace": NAMESPACE },
        "spec": {
            "nodeName": node.node,
            "automountServiceAccountToken": false,
            "terminationGracePeriodSeconds": 0,
            "tolerations": [{ "operator": "Exists" }],
            "containers": [{
                "name": "app", "image": BUSYBOX,
                "command": ["sh", "-c", format!("yes 012345678901234567890123456789012345678901234567890123456789012 | head -c {LOG_BYTES}; sleep 100000")],
            }],
        }
    }))?;
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        let ready = rt.block_on(nodes.get_opt(&node.node))?.is_some_and(|n| {
            n.status
                .and_then(|s| s.conditions)
                .unwrap_or_default()
                .iter()
                .any(|c| c.type_ == "Ready" && c.status == "True")
        });
        if ready {
            break;
        }
        ensure!(Instant::now() < deadline, "{} node not Ready:\n{}", kind.name(), node.log_tail());
        std::thread::sleep(Duration::from_millis(200));
    }
    rt.block_on(pods.create(&PostParams::default(), &pod))?;
    // Ready once the whole log is written: a full read returns every byte.
    loop {
        let out = kubectl(admin_kubeconfig, &["logs", &name]).output()?;
        if out.stdout.len() >= LOG_BYTES {
            ensure!(out.stdout.len() == LOG_BYTES, "{} bytes of logs", out.stdout.len());
            break;
        }
        if Instant::now() > deadline {
            bail!("{}: the pod's log did not reach {LOG_BYTES} bytes:\n{}", kind.name(), node.log_tail());
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    let mut times = Vec::new();
    for _ in 0..reads {
        let t0 = Instant::now();
        let out = kubectl(admin_kubeconfig, &["logs", &name]).stderr(Stdio::null()).output()?;
        times.push(t0.elapsed());
        ensure!(out.stdout.len() == LOG_BYTES, "{} bytes of logs", out.stdout.len());
    }
    times.sort();
    let t0 = Instant::now();
    for _ in 0..execs {
        let out = kubectl(admin_kubeconfig, &["exec", &name, "--", "true"]).output()?;
        ensure!(out.status.success(), "kubectl exec: {}", String::from_utf8_lossy(&out.stderr));
    }
    let execs_per_second = execs as f64 / t0.elapsed().as_secs_f64();
    let _ = rt.block_on(pods.delete(&name, &DeleteParams::default().grace_period(0)));
    let _ = rt.block_on(nodes.delete(&node.node, &DeleteParams::default()));
    Ok(Figures { logs: times[times.len() / 2], execs_per_second })
}
