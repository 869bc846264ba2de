//! The Go kubelet from the control-plane kit as the behaviour reference: a node on its own containerd, both in a
//! private mount namespace with their own `/var/log/pods` and `/var/log/containers` (kubelet's log garbage collector
//! deletes what it does not know there, and other agents on this host use those paths), plus the normalised view of a
//! pod's status and events that the oracle tests compare between it and rkubelet.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use k8s_openapi::api::core::v1::{ContainerState, ContainerStatus, Event, Pod};
use serde_json::{json, Value};

use crate::containerd::Containerd;

/// Why the Go kubelet cannot run here, if it cannot: the kit or its kubelet binary is missing.
pub fn go_kubelet_missing(kit: Option<&Path>) -> Option<String> {
    let Some(kit) = kit else {
        return Some(format!("{} does not name the control-plane kit", crate::apiserver::K8S_KIT_ENV));
    };
    let bin = kit.join("bin/kubelet.zst");
    (!bin.exists() && !kit.join("bin/kubelet").exists())
        .then(|| format!("the kit has no Go kubelet binary ({})", bin.display()))
}

/// A non-loopback IPv4 address of this host (the API server refuses to reach kubelets on loopback): `K8S_NODE_IP`,
/// else the first global address not on a test bridge or veth.
pub fn node_ip() -> Result<String> {
    if let Some(ip) = std::env::var("K8S_NODE_IP").ok().filter(|v| !v.is_empty()) {
        return Ok(ip);
    }
    let out = Command::new("ip").args(["-4", "-o", "addr", "show", "scope", "global"]).output()?;
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let (Some(dev), Some(addr)) = (fields.get(1), fields.get(3)) else { continue };
        if ["rkt", "cni", "veth", "docker", "br-"].iter().any(|p| dev.starts_with(p)) {
            continue;
        }
        if let Some((ip, _)) = addr.split_once('/') {
            return Ok(ip.to_owned());
        }
    }
    bail!("no global IPv4 address on this host; set K8S_NODE_IP")
}

/// `K8S_KUBELET_PORT` when set, else a free port.
fn kubelet_port() -> Result<String> {
    match std::env::var("K8S_KUBELET_PORT").ok().filter(|v| !v.is_empty()) {
        Some(port) => Ok(port),
        None => Ok(crate::agent::free_port()?.to_string()),
    }
}

/// The Go kubelet as node `node`, with its containerd. Drops in order: kubelet, containerd, the namespace holder.
pub struct GoKubelet {
    kit: PathBuf,
    node: String,
    stopped: bool,
    containerd: Option<Containerd>,
    holder: Child,
    _logs: tempfile::TempDir,
}

impl GoKubelet {
    pub fn start(kit: &Path, name: &str, node: &str) -> Result<GoKubelet> {
        let logs = tempfile::Builder::new().prefix("rkubelet-oracle-logs-").tempdir()?;
        let mut holder = Command::new("unshare")
            .args(["--mount", "--propagation", "private", "sleep", "infinity"])
            .stdin(Stdio::null())
            .spawn()
            .context("unshare")?;
        let pid = holder.id();
        let own = std::fs::read_link("/proc/self/ns/mnt")?;
        let deadline = Instant::now() + Duration::from_secs(5);
        while std::fs::read_link(format!("/proc/{pid}/ns/mnt")).ok().is_none_or(|ns| ns == own) {
            if Instant::now() > deadline || holder.try_wait()?.is_some() {
                let _ = holder.kill();
                bail!("unshare --mount did not make a mount namespace");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let mut this = GoKubelet {
            kit: kit.to_owned(),
            node: node.to_owned(),
            stopped: true,
            containerd: None,
            holder,
            _logs: logs,
        };
        for d in ["pods", "containers"] {
            let private = this._logs.path().join(d);
            let shared = Path::new("/var/log").join(d);
            std::fs::create_dir_all(&private)?;
            std::fs::create_dir_all(&shared)?;
            let status = Command::new("nsenter")
                .args(["-t", &pid.to_string(), "-m", "--", "mount", "--bind"])
                .arg(&private)
                .arg(&shared)
                .status()?;
            ensure!(status.success(), "bind-mounting {} in the kubelet's mount namespace: {status}", shared.display());
        }
        this.containerd = Some(Containerd::builder(name).mount_namespace_of(pid).start()?);
        let socket = this.containerd.as_ref().map(|c| c.socket_path().display().to_string()).unwrap_or_default();
        this.stopped = false;
        let out = Command::new("nsenter")
            .args(["-t", &pid.to_string(), "-m", "--", "bash"])
            .arg(kit.join("kubelet.sh"))
            .args([node, &socket])
            // The node must not report disk pressure on a full shared disk: it would refuse the pods.
            .arg("--eviction-hard=memory.available<1Mi,nodefs.available<100Mi,imagefs.available<100Mi")
            .arg("--image-gc-high-threshold=100")
            .arg("--image-gc-low-threshold=99")
            .env("K8S_NODE_IP", node_ip()?)
            // kubelet.sh's default is the well-known 10250, which another node on this host may hold.
            .env("K8S_KUBELET_PORT", kubelet_port()?)
            .stdin(Stdio::null())
            .output()
            .context("running the kit's kubelet.sh")?;
        ensure!(
            out.status.success(),
            "kubelet.sh {node}: {}\n{}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(this)
    }

    pub fn node_name(&self) -> &str {
        &self.node
    }

    /// The kubelet's log (kept by the kit under `$K8S_HOME/run`).
    pub fn log_tail(&self, lines: usize) -> String {
        let home = std::env::var("K8S_HOME").unwrap_or_else(|_| "/var/lib/k8s-kit".to_owned());
        let text = std::fs::read_to_string(Path::new(&home).join(format!("run/kubelet-{}.log", self.node)));
        crate::agent::tail(&text.unwrap_or_default(), lines)
    }

    fn stop_kubelet(&mut self) {
        if !self.stopped {
            let _ = Command::new("bash").arg(self.kit.join("kubelet.sh")).args(["--stop", &self.node]).status();
            self.stopped = true;
        }
    }
}

impl Drop for GoKubelet {
    fn drop(&mut self) {
        self.stop_kubelet();
        // The kubelet exits within moments of SIGTERM; its containerd must outlive it so it does not log errors
        // about a runtime gone away, nothing more.
        std::thread::sleep(Duration::from_millis(500));
        drop(self.containerd.take());
        let _ = self.holder.kill();
        let _ = self.holder.wait();
    }
}

/// Rewrites what legitimately differs between two nodes running the same pod: the namespaces (one per node), the
/// pod UIDs, IPv4 addresses, container IDs (64 hex digits).
pub struct Normaliser {
    pub replace: Vec<(String, String)>,
}

impl Normaliser {
    pub fn text(&self, s: &str) -> String {
        let mut s = s.to_owned();
        for (from, to) in &self.replace {
            if !from.is_empty() {
                s = s.replace(from.as_str(), to);
            }
        }
        backoff_period(&hex_ids(&ipv4(&s)))
    }
}

/// `back-off 40s restarting …`: how far the back-off went depends on how long the scenario ran.
fn backoff_period(s: &str) -> String {
    match s.split_once("back-off ") {
        Some((head, tail)) if tail.contains(" restarting") => {
            let rest = tail.split_once(' ').map_or("", |(_, r)| r);
            format!("{head}back-off PERIOD {rest}")
        }
        _ => s.to_owned(),
    }
}

fn ipv4(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = String::with_capacity(s.len());
    let mut i = 0;
    while i < b.len() {
        if b[i].is_ascii_digit() && (i == 0 || !(b[i - 1].is_ascii_alphanumeric() || b[i - 1] == b'.')) {
            let mut j = i;
            let mut dots = 0;
            while j < b.len()
                && (b[j].is_ascii_digit() || (b[j] == b'.' && j + 1 < b.len() && b[j + 1].is_ascii_digit()))
            {
                dots += usize::from(b[j] == b'.');
                j += 1;
            }
            if dots == 3 {
                out.push_str("IP");
                i = j;
                continue;
            }
            out.push_str(&s[i..j]);
            i = j;
            continue;
        }
        let ch = s[i..].chars().next().unwrap_or(' ');
        out.push(ch);
        i += ch.len_utf8();
    }
    out
}

fn hex_ids(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut run = String::new();
    for ch in s.chars().chain(std::iter::once('\0')) {
        if ch.is_ascii_hexdigit() && !ch.is_ascii_uppercase() {
            run.push(ch);
            continue;
        }
        out.push_str(if run.len() == 64 { "ID" } else { &run });
        run.clear();
        if ch != '\0' {
            out.push(ch);
        }
    }
    out
}

fn state(n: &Normaliser, s: Option<&ContainerState>) -> Value {
    let Some(s) = s else { return Value::Null };
    if let Some(w) = &s.waiting {
        return json!({ "waiting": { "reason": w.reason, "message": w.message.as_deref().map(|m| n.text(m)) } });
    }
    if s.running.is_some() {
        return json!("running");
    }
    if let Some(t) = &s.terminated {
        return json!({ "terminated": {
            "reason": t.reason, "exitCode": t.exit_code, "signal": t.signal,
            "message": t.message.as_deref().map(|m| n.text(m)),
        }});
    }
    json!({})
}

fn container(n: &Normaliser, c: &ContainerStatus, looping: bool) -> Value {
    let restarts = if looping && c.restart_count > 0 { json!(">0") } else { json!(c.restart_count) };
    json!({
        "name": c.name,
        "state": state(n, c.state.as_ref()),
        "lastState": state(n, c.last_state.as_ref()),
        "ready": c.ready,
        "started": c.started,
        "restartCount": restarts,
    })
}

/// The parts of a pod's status a kubelet decides. `looping` scenarios restart on a back-off whose progress depends
/// on timing: their restart counts compare as "more than zero".
pub fn pod_view(n: &Normaliser, pod: &Pod, looping: bool) -> Value {
    let Some(s) = pod.status.as_ref() else { return Value::Null };
    let mut conditions: Vec<Value> = s
        .conditions
        .iter()
        .flatten()
        .map(|c| json!({ "type": c.type_, "status": c.status, "reason": c.reason, "message": c.message }))
        .collect();
    conditions.sort_by_key(|c| c["type"].to_string());
    let list = |l: &Option<Vec<ContainerStatus>>| {
        let mut v: Vec<Value> = l.iter().flatten().map(|c| container(n, c, looping)).collect();
        v.sort_by_key(|c| c["name"].to_string());
        v
    };
    json!({
        "phase": s.phase,
        "reason": s.reason,
        "message": s.message.as_deref().map(|m| n.text(m)),
        "conditions": conditions,
        "initContainerStatuses": list(&s.init_container_statuses),
        "containerStatuses": list(&s.container_statuses),
    })
}

/// The pod's events as `type reason: message` lines (counts only matter in being above zero).
pub fn event_view(n: &Normaliser, events: &[Event]) -> BTreeSet<String> {
    events
        .iter()
        // Whether a pod's image was pulled or already present depends on which pod of the node asked first.
        .filter(|e| e.count.unwrap_or(1) > 0 && e.reason.as_deref() != Some("Pulling"))
        .map(|e| {
            let reason = e.reason.as_deref().unwrap_or_default();
            let message = match reason {
                "Pulling" | "Pulled" => String::new(),
                _ => n.text(e.message.as_deref().unwrap_or_default()),
            };
            format!("{} {reason}: {message}", e.type_.as_deref().unwrap_or_default())
        })
        .collect()
}

/// A line diff of two pretty-printed JSON values, `-` for the reference and `+` for the other side.
pub fn diff(reference: &Value, other: &Value) -> String {
    let a = serde_json::to_string_pretty(reference).unwrap_or_default();
    let b = serde_json::to_string_pretty(other).unwrap_or_default();
    let (a, b): (Vec<&str>, Vec<&str>) = (a.lines().collect(), b.lines().collect());
    // Longest common subsequence, small inputs.
    let mut l = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for i in (0..a.len()).rev() {
        for j in (0..b.len()).rev() {
            l[i][j] = if a[i] == b[j] { l[i + 1][j + 1] + 1 } else { l[i + 1][j].max(l[i][j + 1]) };
        }
    }
    let (mut i, mut j, mut out) = (0, 0, String::new());
    while i < a.len() || j < b.len() {
        if i < a.len() && j < b.len() && a[i] == b[j] {
            out.push_str(&format!("  {}\n", a[i]));
            i += 1;
            j += 1;
        } else if j < b.len() && (i == a.len() || l[i][j + 1] >= l[i + 1][j]) {
            out.push_str(&format!("+ {}\n", b[j]));
            j += 1;
        } else {
            out.push_str(&format!("- {}\n", a[i]));
            i += 1;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalises_addresses_ids_and_names() {
        let n = Normaliser { replace: vec![("orc-go-1".into(), "NS".into())] };
        let id = "a".repeat(64);
        assert_eq!(
            n.text(&format!("Get \"http://10.88.0.5:8080/x\": {id} in orc-go-1 v1.2.3 1.2")),
            "Get \"http://IP:8080/x\": ID in NS v1.2.3 1.2"
        );
        assert_eq!(
            n.text("back-off 1m20s restarting failed container=app"),
            "back-off PERIOD restarting failed container=app"
        );
    }
}
