//! An rkubelet process for a test: its own manifest folder, root dir, pod log dir and read-only port, pointed at a
//! private [`Containerd`](crate::containerd::Containerd). The binary is `$RKUBELET_BIN`, else the workspace's
//! `target/debug/rkubelet` (build it first: `cargo build -p rkubelet`).

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::Value;

use crate::containerd::Containerd;

pub fn rkubelet_bin() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("RKUBELET_BIN") {
        return Ok(PathBuf::from(p));
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().context("workspace root")?;
    let target = std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|| root.join("target"));
    for profile in ["debug", "release"] {
        let p = target.join(profile).join("rkubelet");
        if p.exists() {
            return Ok(p);
        }
    }
    bail!("rkubelet binary not found under {}: run `cargo build -p rkubelet` or set RKUBELET_BIN", target.display())
}

/// True when `/sys/fs/cgroup` is a cgroup v2 hierarchy with the cpu and memory controllers (the VM tier); false on
/// hosts with the v1 or hybrid layout, where the agent must run with `cgroupsPerQOS: false`.
pub fn cgroup_v2_available() -> bool {
    rkubelet::cm::cgroups::check_cgroup_v2(Path::new("/sys/fs/cgroup")).is_ok()
}

/// A TCP port free on 127.0.0.1 at the time of asking.
pub fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// GET with a hand-written HTTP/1.0 request: (status, body).
pub fn http_get(port: u16, path: &str) -> Result<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")?;
    let mut resp = String::new();
    s.read_to_string(&mut resp)?;
    let (head, body) = resp.split_once("\r\n\r\n").context("malformed HTTP response")?;
    let status = head.split_whitespace().nth(1).and_then(|c| c.parse().ok()).context("no HTTP status")?;
    Ok((status, body.to_owned()))
}

pub struct Agent {
    child: Option<Child>,
    dir: tempfile::TempDir,
    endpoint: String,
    port: u16,
    server_port: u16,
    node_name: String,
    extra_config: String,
    extra_args: Vec<String>,
}

impl Agent {
    /// Starts rkubelet on `containerd` with an empty manifest folder and waits for `/healthz`.
    pub fn start(containerd: &Containerd) -> Result<Agent> {
        Self::start_with(containerd, "")
    }

    /// As [`Agent::start`], with more `KubeletConfiguration` lines appended to the generated config.
    pub fn start_with(containerd: &Containerd, extra_config: &str) -> Result<Agent> {
        let mut agent = Self::new(containerd, extra_config)?;
        agent.spawn()?;
        Ok(agent)
    }

    /// An agent set up but not started (see [`Agent::spawn_process`]).
    pub fn new(containerd: &Containerd, extra_config: &str) -> Result<Agent> {
        let dir = tempfile::Builder::new().prefix("rkubelet-agent-").tempdir()?;
        std::fs::create_dir_all(dir.path().join("manifests"))?;
        let agent = Agent {
            child: None,
            endpoint: containerd.endpoint(),
            port: free_port()?,
            server_port: free_port()?,
            node_name: format!("node-{}", containerd.name()),
            extra_config: extra_config.to_owned(),
            extra_args: Vec::new(),
            dir,
        };
        Ok(agent)
    }

    /// More command-line flags for the next start (e.g. `--kubeconfig`).
    pub fn with_args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.extra_args.extend(args.into_iter().map(Into::into));
        self
    }

    /// Starts the process and waits for `/healthz`.
    pub fn started(mut self) -> Result<Agent> {
        self.spawn()?;
        Ok(self)
    }

    pub fn node_name(&self) -> &str {
        &self.node_name
    }
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
    pub fn root_dir(&self) -> PathBuf {
        self.dir.path().join("root")
    }
    pub fn port(&self) -> u16 {
        self.port
    }
    /// The port of the authenticated HTTPS kubelet server (logs, exec, port-forward).
    pub fn server_port(&self) -> u16 {
        self.server_port
    }
    pub fn manifest_dir(&self) -> PathBuf {
        self.dir.path().join("manifests")
    }
    pub fn pod_logs_dir(&self) -> PathBuf {
        self.dir.path().join("pod-logs")
    }
    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("rkubelet.log")
    }
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    fn spawn(&mut self) -> Result<()> {
        self.spawn_process()?;
        self.wait_healthy()
    }

    /// Starts the process without waiting for it to become healthy.
    pub fn spawn_process(&mut self) -> Result<()> {
        let config = self.dir.path().join("config.yaml");
        // Without cgroup v2 the agent refuses pod-level enforcement unless told to run without it.
        let cgroups = if self.extra_config.contains("cgroupsPerQOS") || cgroup_v2_available() {
            ""
        } else {
            "cgroupsPerQOS: false\n"
        };
        // kubelet's default disk thresholds (10% / 15% free) are above what a shared test host may have (a few GiB
        // free on a large disk is under 1%): the tests keep its memory threshold and set the disk ones to a small
        // absolute figure, as the Go kubelet oracle does.
        let eviction = if self.extra_config.contains("evictionHard") {
            ""
        } else {
            "evictionHard: {memory.available: 100Mi, nodefs.available: 100Mi, nodefs.inodesFree: 1%, imagefs.available: 100Mi}\n"
        };
        // Likewise image GC (85 % used by default): on a fuller disk it would remove the images between a test's pods
        // and add pulls and events the test does not expect. The GC tests set their own thresholds.
        let image_gc = if self.extra_config.contains("imageGCHighThresholdPercent") {
            ""
        } else {
            "imageGCHighThresholdPercent: 100\nimageGCLowThresholdPercent: 99\n"
        };
        std::fs::write(
            &config,
            format!(
                "apiVersion: kubelet.config.k8s.io/v1beta1\nkind: KubeletConfiguration\nstaticPodPath: {}\n\
                 containerRuntimeEndpoint: {}\npodLogsDir: {}\nreadOnlyPort: {}\nport: {}\nhealthzPort: 0\n\
                 syncFrequency: 10s\n{}{}{}{}",
                self.manifest_dir().display(),
                self.endpoint,
                self.pod_logs_dir().display(),
                self.port,
                self.server_port,
                cgroups,
                eviction,
                image_gc,
                self.extra_config,
            ),
        )?;
        let log = std::fs::OpenOptions::new().create(true).append(true).open(self.log_path())?;
        let child = Command::new(rkubelet_bin()?)
            .arg("--config")
            .arg(&config)
            .arg("--root-dir")
            .arg(self.dir.path().join("root"))
            .arg("--hostname-override")
            .arg(&self.node_name)
            .arg("--v=3")
            .args(&self.extra_args)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("spawn rkubelet")?;
        self.child = Some(child);
        Ok(())
    }

    /// Waits for the process to exit on its own (for start-up failures); returns its exit code.
    pub fn wait_exit(&mut self, timeout: Duration) -> Result<Option<i32>> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(c) = self.child.as_mut() {
                if let Some(status) = c.try_wait()? {
                    self.child = None;
                    return Ok(status.code());
                }
            }
            if Instant::now() > deadline {
                bail!("rkubelet still running after {timeout:?}:\n{}", tail(&self.log(), 20));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits up to 20 s for `/healthz` to answer `ok` (after [`Agent::spawn_process`]).
    pub fn wait_healthy(&mut self) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok((200, body)) = http_get(self.port, "/healthz") {
                if body == "ok" {
                    return Ok(());
                }
            }
            if let Some(c) = self.child.as_mut() {
                if let Some(status) = c.try_wait()? {
                    bail!("rkubelet exited with {status} during start:\n{}", self.log());
                }
            }
            if Instant::now() > deadline {
                bail!("rkubelet not healthy after 20 s:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Stops the process with SIGTERM (as systemd does) and waits for it; pods stay in the runtime.
    pub fn stop(&mut self) -> Result<()> {
        if let Some(mut child) = self.child.take() {
            // SAFETY: plain kill(2) on our own child's pid.
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
            let deadline = Instant::now() + Duration::from_secs(10);
            while child.try_wait()?.is_none() {
                if Instant::now() > deadline {
                    child.kill()?;
                    bail!("rkubelet did not exit within 10 s of SIGTERM");
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        Ok(())
    }

    pub fn restart(&mut self) -> Result<()> {
        self.stop()?;
        self.spawn()
    }

    /// The process id while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// True while the process has not exited.
    pub fn is_running(&mut self) -> bool {
        self.child.as_mut().is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    pub fn write_manifest(&self, file: &str, text: &str) -> Result<()> {
        // Write then rename, so the agent never reads half a file.
        let tmp = self.dir.path().join(format!(".{file}.tmp"));
        std::fs::write(&tmp, text)?;
        std::fs::rename(&tmp, self.manifest_dir().join(file))?;
        Ok(())
    }

    pub fn remove_manifest(&self, file: &str) -> Result<()> {
        std::fs::remove_file(self.manifest_dir().join(file))?;
        Ok(())
    }

    /// The `/pods` list.
    pub fn pods(&self) -> Result<Vec<Value>> {
        let (status, body) = http_get(self.port, "/pods")?;
        if status != 200 {
            bail!("GET /pods: HTTP {status}: {body}");
        }
        let v: Value = serde_json::from_str(&body)?;
        Ok(v["items"].as_array().cloned().unwrap_or_default())
    }

    /// The static pod made from manifest pod `name` (named `<name>-<node>`).
    pub fn pod(&self, name: &str) -> Result<Option<Value>> {
        let full = format!("{name}-{}", self.node_name);
        Ok(self.pods()?.into_iter().find(|p| p["metadata"]["name"] == full.as_str()))
    }

    /// The pod named exactly `name` (an API pod) in `/pods`.
    pub fn pod_named(&self, name: &str) -> Result<Option<Value>> {
        Ok(self.pods()?.into_iter().find(|p| p["metadata"]["name"] == name))
    }

    /// Polls pod `name` until `check` returns true; returns the pod then, or fails with the last one seen.
    pub fn wait_pod(&self, name: &str, timeout: Duration, check: impl Fn(&Value) -> bool) -> Result<Value> {
        let deadline = Instant::now() + timeout;
        let mut last = None;
        loop {
            if let Some(p) = self.pod(name)? {
                if check(&p) {
                    return Ok(p);
                }
                last = Some(p);
            }
            if Instant::now() > deadline {
                bail!(
                    "pod {name}: condition not met within {timeout:?}; last seen:\n{}\nagent log tail:\n{}",
                    serde_json::to_string_pretty(&last).unwrap_or_default(),
                    tail(&self.log(), 40)
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Polls until pod `name` is no longer listed.
    pub fn wait_pod_gone(&self, name: &str, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        while self.pod(name)?.is_some() {
            if Instant::now() > deadline {
                bail!("pod {name} still listed after {timeout:?}\n{}", tail(&self.log(), 40));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(())
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("--- rkubelet log tail ---\n{}", tail(&self.log(), 80));
        }
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        // A stopped agent leaves its pods running, and with them the tmpfs volumes it mounted under its root dir;
        // the test's folder goes now, so they go with it.
        crate::containerd::unmount_under(&[self.dir.path().to_path_buf()]);
    }
}

pub fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Accessors for the parts of a pod JSON the tests read.
pub fn phase(pod: &Value) -> &str {
    pod["status"]["phase"].as_str().unwrap_or_default()
}

pub fn container_status<'a>(pod: &'a Value, name: &str) -> &'a Value {
    static NULL: Value = Value::Null;
    pod["status"]["containerStatuses"].as_array().and_then(|a| a.iter().find(|c| c["name"] == name)).unwrap_or(&NULL)
}

/// Everything the container's instances wrote to their CRI log files so far (a static or API pod as JSON).
pub fn container_log(agent: &Agent, pod: &Value, container: &str) -> String {
    let dir = agent
        .pod_logs_dir()
        .join(format!(
            "default_{}_{}",
            pod["metadata"]["name"].as_str().unwrap_or_default(),
            pod["metadata"]["uid"].as_str().unwrap_or_default()
        ))
        .join(container);
    let mut text = String::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        text.push_str(&std::fs::read_to_string(entry.path()).unwrap_or_default());
    }
    text
}

/// The container's log once it holds `needle`.
pub fn wait_log(agent: &Agent, pod: &Value, container: &str, needle: &str, timeout: Duration) -> Result<String> {
    let deadline = Instant::now() + timeout;
    loop {
        let log = container_log(agent, pod, container);
        if log.contains(needle) {
            return Ok(log);
        }
        if Instant::now() >= deadline {
            bail!("{container} log has no {needle:?} within {timeout:?}:\n{log}");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Whether the container is running now.
pub fn running(pod: &Value, container: &str) -> bool {
    container_status(pod, container)["state"]["running"].is_object()
}

pub fn condition<'a>(pod: &'a Value, kind: &str) -> &'a Value {
    static NULL: Value = Value::Null;
    pod["status"]["conditions"].as_array().and_then(|a| a.iter().find(|c| c["type"] == kind)).unwrap_or(&NULL)
}

/// What the runtime holds that rkubelet created, read over CRI.
pub struct RuntimeObjects {
    pub sandboxes: Vec<String>,
    pub containers: Vec<rkubelet::runtime::ContainerSummary>,
}

pub fn runtime_objects(endpoint: &str) -> Result<RuntimeObjects> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    rt.block_on(async {
        let cri = rkubelet::runtime::Runtime::connect(endpoint).await?;
        let sandboxes = cri.list_pod_sandboxes(None).await?.into_iter().map(|s| s.id).collect();
        let containers = cri.list_containers(None).await?;
        Ok::<_, anyhow::Error>(RuntimeObjects { sandboxes, containers })
    })
}

/// Full CRI status of one container.
pub fn cri_container(endpoint: &str, id: &str) -> Result<rkubelet::runtime::ContainerRecord> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    rt.block_on(async {
        let cri = rkubelet::runtime::Runtime::connect(endpoint).await?;
        Ok(cri.container_status(id).await?)
    })
}
