//! The kubelet server on :10250 through a real kube-apiserver: `kubectl logs` (tail, previous, follow, timestamps)
//! reaching a pod on rkubelet through the API server's node proxy, which authenticates with its kubelet client
//! certificate, and the server's own answers to callers without credentials (401) or without rights (403).
//! Needs the kit's control plane (`RKUBELET_E2E_KUBECONFIG`, `RKUBELET_K8S_KIT` and `K8S_HOME`, as tests/run.sh sets
//! them): the in-process double does not proxy to nodes.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, ListParams, PostParams};
use rkubelet_tests::agent::{tail, Agent};
use rkubelet_tests::api_node::{ApiNode, NAMESPACE};
use rkubelet_tests::apiserver::Cluster;
use rkubelet_tests::containerd::{print_skip, Containerd};
use rkubelet_tests::images::{ensure_images, BUSYBOX};
use rkubelet_tests::skip_unless_root;
use serde_json::json;

const START: Duration = Duration::from_secs(90);

/// A node on the kit's cluster as kubeadm sets kubelets up: webhook authentication and authorisation, client
/// certificates checked against the cluster CA, a non-loopback node IP (the API server refuses to proxy to
/// loopback); and kubectl with the admin kubeconfig.
struct Env {
    node: ApiNode,
    kubectl: PathBuf,
    node_ip: String,
    admin_kubeconfig: PathBuf,
    pki: PathBuf,
}

impl std::ops::Deref for Env {
    type Target = ApiNode;
    fn deref(&self) -> &ApiNode {
        &self.node
    }
}

fn node_ip() -> Option<String> {
    let out = Command::new("ip").args(["-4", "-o", "addr", "show", "scope", "global"]).output().ok()?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.lines().filter_map(|l| l.split_whitespace().nth(3)).map(|a| a.split('/').next().unwrap_or(a).to_owned()).next()
}

impl Env {
    /// `None` (after printing why) when there is no real control plane from the kit.
    fn new(name: &str) -> Result<Option<Env>> {
        Self::with_config(name, "")
    }

    /// As [`Env::new`], with more `KubeletConfiguration` lines.
    fn with_config(name: &str, extra: &str) -> Result<Option<Env>> {
        let cluster = Cluster::from_env()?;
        let k8s_home = std::env::var_os("K8S_HOME").map(PathBuf::from);
        let (Some(_kit), Some(home), Some(ip)) = (cluster.kit(), k8s_home, node_ip()) else {
            print_skip(
                "kubelet server through the API server",
                &"needs the kit's control plane (RKUBELET_K8S_KIT, K8S_HOME) and a global IPv4 address",
            );
            return Ok(None);
        };
        let pki = home.join("pki");
        let config = format!(
            "authentication: {{anonymous: {{enabled: false}}, webhook: {{enabled: true}}, \
             x509: {{clientCAFile: {}}}}}\nauthorization: {{mode: Webhook}}\n{extra}",
            pki.join("ca.crt").display()
        );
        let node = ApiNode::builder(name).cluster(cluster).config(&config).args(["--node-ip", &ip]).start()?;
        let admin_kubeconfig = node.admin_kubeconfig()?;
        Ok(Some(Env { node, kubectl: home.join("bin/kubectl"), node_ip: ip, admin_kubeconfig, pki }))
    }

    fn kubectl(&self, args: &[&str]) -> Result<(bool, String, String)> {
        let out = Command::new(&self.kubectl)
            .arg("--kubeconfig")
            .arg(&self.admin_kubeconfig)
            .args(["-n", NAMESPACE])
            .args(args)
            .output()
            .context("run kubectl")?;
        Ok((
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        ))
    }

    fn logs(&self, args: &[&str]) -> Result<String> {
        let mut all = vec!["logs"];
        all.extend_from_slice(args);
        let (ok, out, err) = self.kubectl(&all)?;
        ensure!(ok, "kubectl {all:?} failed: {err}\nagent log:\n{}", tail(&self.agent.log(), 30));
        Ok(out)
    }

    fn create_pod(&self, name: &str, policy: &str, script: &str) -> Result<()> {
        let pod: Pod = serde_json::from_value(json!({
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": { "name": name, "namespace": NAMESPACE },
            "spec": {
                "nodeName": self.agent.node_name(),
                "automountServiceAccountToken": false,
                "restartPolicy": policy,
                "terminationGracePeriodSeconds": 1,
                "tolerations": [{ "operator": "Exists" }],
                "containers": [{ "name": "app", "image": BUSYBOX, "command": ["sh", "-c", script] }],
            }
        }))?;
        self.rt.block_on(self.pods().create(&PostParams::default(), &pod))?;
        Ok(())
    }

    fn wait_pod(&self, name: &str, what: &str, check: impl Fn(&Pod) -> bool) -> Result<Pod> {
        self.node.wait_pod(name, START, check).with_context(|| format!("pod {name}: {what}"))
    }

    /// `curl` against the agent's kubelet server directly: (HTTP status, body).
    fn curl(&self, path: &str, extra: &[&str]) -> Result<(u16, String)> {
        let url = format!("https://127.0.0.1:{}{path}", self.agent.server_port());
        let out = Command::new("curl")
            .args(["-sk", "--max-time", "10", "-w", "\n%{http_code}"])
            .args(extra)
            .arg(&url)
            .stderr(Stdio::inherit())
            .output()
            .context("run curl")?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, code) = text.rsplit_once('\n').context("curl printed no status")?;
        Ok((code.trim().parse().context("HTTP status")?, body.to_owned()))
    }
}

/// `GET path` on the API server as a WebSocket with the `binary.k8s.io` protocol, as the conformance spec reads logs:
/// the payloads of the binary frames until the server closes.
fn websocket_read(env: &Env, path: &str) -> Result<Vec<u8>> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
    use std::io::{Read, Write};
    let kc = kube::config::Kubeconfig::read_from(&env.admin_kubeconfig)?;
    let server =
        kc.clusters.first().and_then(|c| c.cluster.as_ref()).and_then(|c| c.server.clone()).context("server")?;
    let authority = server.trim_start_matches("https://").trim_end_matches('/').to_owned();
    let mut roots = rustls::RootCertStore::empty();
    roots.add(CertificateDer::from_pem_file(env.pki.join("ca.crt"))?)?;
    let chain = vec![CertificateDer::from_pem_file(env.pki.join("admin.crt"))?];
    let key = PrivateKeyDer::from_pem_file(env.pki.join("admin.key"))?;
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)?;
    let conn =
        rustls::ClientConnection::new(std::sync::Arc::new(config), ServerName::try_from("127.0.0.1")?.to_owned())?;
    let tcp = std::net::TcpStream::connect(&authority)?;
    tcp.set_read_timeout(Some(Duration::from_secs(20)))?;
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    write!(
        tls,
        "GET {path} HTTP/1.1\r\nHost: {authority}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\
         Sec-WebSocket-Protocol: binary.k8s.io\r\nOrigin: http://localhost\r\n\r\n"
    )?;
    let mut data = Vec::new();
    let mut buf = [0u8; 16384];
    loop {
        match tls.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => data.extend_from_slice(&buf[..n]),
            // The server closes without TLS close_notify once the stream ends.
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => break,
            Err(e) => return Err(e.into()),
        }
    }
    let head_end = data.windows(4).position(|w| w == b"\r\n\r\n").context("no HTTP response")?;
    ensure!(data.starts_with(b"HTTP/1.1 101"), "{}", String::from_utf8_lossy(&data[..head_end]));
    let mut frames = &data[head_end + 4..];
    let mut payload = Vec::new();
    while frames.len() >= 2 {
        let (op, mut len, mut at) = (frames[0] & 0x0f, u64::from(frames[1] & 0x7f), 2usize);
        if len == 126 {
            len = u64::from(u16::from_be_bytes([frames[2], frames[3]]));
            at = 4;
        } else if len == 127 {
            len = u64::from_be_bytes(frames[2..10].try_into()?);
            at = 10;
        }
        let end = at + len as usize;
        ensure!(frames.len() >= end, "truncated frame");
        if op == 2 {
            payload.extend_from_slice(&frames[at..end]);
        }
        frames = &frames[end..];
    }
    Ok(payload)
}

fn restart_count(p: &Pod) -> i32 {
    p.status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref())
        .and_then(|cs| cs.first())
        .map(|c| c.restart_count)
        .unwrap_or_default()
}

fn running(p: &Pod) -> bool {
    p.status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref())
        .and_then(|cs| cs.first())
        .and_then(|c| c.state.as_ref())
        .is_some_and(|s| s.running.is_some())
}

#[test]
#[cfg_attr(not_root, ignore = "needs root (containerd, mounts, network namespaces)")]
#[cfg_attr(
    all(not(kit), not(not_root)),
    ignore = "needs the kit's control plane: the API double does not proxy to nodes (tests/run.sh starts it)"
)]
fn kubectl_logs_reads_current_previous_tail_and_follow_through_the_api_server() -> Result<()> {
    skip_unless_root!(Ok(()));
    let Some(env) = Env::new("srv-logs")? else { return Ok(()) };
    // Each run prints its own id, five lines and one to stderr, then exits after a while and is restarted.
    env.create_pod(
        "logs",
        "Always",
        // stdout and stderr reach the log file through separate pipes: the pause keeps their order.
        "echo run $(cat /proc/sys/kernel/random/uuid); for i in 1 2 3 4 5; do echo line $i; done; sleep 1; echo oops >&2; sleep 15; exit 1",
    )?;
    env.wait_pod("logs", "restarted and running again", |p| restart_count(p) >= 1 && running(p))?;

    let deadline = Instant::now() + Duration::from_secs(10);
    let current = loop {
        let current = env.logs(&["logs"])?;
        if current.contains("oops") || Instant::now() > deadline {
            break current;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let lines: Vec<&str> = current.lines().collect();
    ensure!(lines.len() == 7, "current run's log: {current:?}");
    ensure!(
        lines[0].starts_with("run ") && lines[1..] == ["line 1", "line 2", "line 3", "line 4", "line 5", "oops"],
        "{current:?}"
    );
    let previous = env.logs(&["logs", "--previous"])?;
    ensure!(previous.lines().count() == 7 && previous.ends_with("line 5\noops\n"), "previous: {previous:?}");
    ensure!(
        previous.lines().next() != current.lines().next(),
        "--previous shows the earlier run: {previous:?} vs {current:?}"
    );

    ensure!(env.logs(&["logs", "--tail=2"])? == "line 5\noops\n");
    ensure!(env.logs(&["logs", "--limit-bytes=9"])?.starts_with("run "), "limit-bytes");
    ensure!(env.logs(&["logs", "--limit-bytes=9"])?.len() == 9, "limit-bytes cuts at the byte");
    let stamped = env.logs(&["logs", "--tail=1", "--timestamps"])?;
    let (stamp, rest) = stamped.split_once(' ').context("timestamp prefix")?;
    ensure!(rest == "oops\n", "{stamped:?}");
    ensure!(stamp.parse::<jiff::Timestamp>().is_ok(), "RFC 3339 timestamp: {stamp:?}");

    // Follow: the stream stays open until the container exits, and then ends by itself.
    env.wait_pod("logs", "running", running)?;
    let started = Instant::now();
    let followed = env.logs(&["logs", "-f"])?;
    ensure!(followed.contains("line 5\noops\n"), "{followed:?}");
    ensure!(started.elapsed() < Duration::from_secs(30), "follow ended {:?} after the start", started.elapsed());

    // A container that never restarted has no previous logs: kubelet's message comes back through kubectl.
    env.create_pod("fresh", "Always", "echo hello; while true; do sleep 1; done")?;
    env.wait_pod("fresh", "running", running)?;
    let (ok, _, err) = env.kubectl(&["logs", "fresh", "--previous"])?;
    ensure!(!ok && err.contains(r#"previous terminated container "app" in pod "fresh" not found"#), "{err}");
    ensure!(env.logs(&["fresh"])? == "hello\n");
    // Over a WebSocket, as the conformance spec reads them: the API server reads them from us over HTTP/2.
    let ws = websocket_read(&env, &format!("/api/v1/namespaces/{NAMESPACE}/pods/fresh/log?container=app"))?;
    ensure!(ws == b"hello\n", "websocket logs: {:?}", String::from_utf8_lossy(&ws));
    Ok(())
}

#[test]
#[cfg_attr(not_root, ignore = "needs root (containerd, mounts, network namespaces)")]
#[cfg_attr(
    all(not(kit), not(not_root)),
    ignore = "needs the kit's control plane: the API double does not proxy to nodes (tests/run.sh starts it)"
)]
fn the_kubelet_server_answers_401_without_credentials_and_403_without_rights() -> Result<()> {
    skip_unless_root!(Ok(()));
    let Some(env) = Env::new("srv-auth")? else { return Ok(()) };
    let (code, body) = env.curl("/pods", &[])?;
    ensure!((code, body.trim()) == (401, "Unauthorized"), "no credentials: {code} {body}");

    // A service account's token: TokenReview knows it, SubjectAccessReview gives it no node rights.
    let (ok, token, err) = env.kubectl(&["create", "token", "default"])?;
    ensure!(ok, "kubectl create token: {err}");
    let bearer = format!("Authorization: Bearer {}", token.trim());
    let (code, body) = env.curl("/pods", &["-H", &bearer])?;
    ensure!(code == 403, "token without rights: {code} {body}");
    ensure!(
        body.trim()
            == "Forbidden (user=system:serviceaccount:default:default, verb=get, resource=nodes, subresource=proxy)",
        "{body}"
    );
    let (code, body) = env.curl("/stats/summary", &["-H", &bearer])?;
    ensure!(code == 403 && body.contains("subresource=stats"), "{code} {body}");
    let (code, body) = env.curl("/pods", &["-H", "Authorization: Bearer not-a-token"])?;
    ensure!(code == 401, "an invalid token: {code} {body}");

    // The cluster admin's client certificate (system:masters), verified against the client CA.
    let cert = env.pki.join("admin.crt").display().to_string();
    let key = env.pki.join("admin.key").display().to_string();
    let (code, body) = env.curl("/pods", &["--cert", &cert, "--key", &key])?;
    ensure!(code == 200 && body.contains("\"PodList\""), "admin certificate: {code} {body}");

    // The node tells the API server where its kubelet server listens.
    let node = env.rt.block_on(Api::<Node>::all(env.admin.clone()).get(env.agent.node_name()))?;
    let port = node.status.and_then(|s| s.daemon_endpoints).and_then(|d| d.kubelet_endpoint).map(|e| e.port);
    ensure!(port == Some(i32::from(env.agent.server_port())), "daemonEndpoints: {port:?}");
    Ok(())
}

#[test]
#[cfg_attr(not_root, ignore = "needs root (containerd, mounts, network namespaces)")]
#[cfg_attr(
    all(not(kit), not(not_root)),
    ignore = "needs the kit's control plane: the API double does not proxy to nodes (tests/run.sh starts it)"
)]
fn kubectl_exec_carries_stdin_output_and_exit_codes_and_port_forward_reaches_the_pod() -> Result<()> {
    skip_unless_root!(Ok(()));
    let Some(env) = Env::new("srv-exec")? else { return Ok(()) };
    env.create_pod(
        "web",
        "Always",
        "mkdir -p /tmp/www && echo hello-from-pod > /tmp/www/index.html && exec httpd -f -p 8080 -h /tmp/www",
    )?;
    env.wait_pod("web", "running", running)?;

    // Output on both streams and the command's exit code, through SPDY to the runtime's streaming server.
    let out = Command::new(&env.kubectl)
        .arg("--kubeconfig")
        .arg(&env.admin_kubeconfig)
        .args(["-n", NAMESPACE, "exec", "web", "--", "sh", "-c", "echo out; echo err >&2; exit 3"])
        .output()?;
    ensure!(out.status.code() == Some(3), "exit code: {:?} {}", out.status, String::from_utf8_lossy(&out.stderr));
    ensure!(out.stdout == b"out\n", "stdout: {:?}", String::from_utf8_lossy(&out.stdout));
    ensure!(
        String::from_utf8_lossy(&out.stderr).contains("err\n"),
        "stderr: {:?}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Standard input reaches the command and its end closes it.
    let mut child = Command::new(&env.kubectl)
        .arg("--kubeconfig")
        .arg(&env.admin_kubeconfig)
        .args(["-n", NAMESPACE, "exec", "-i", "web", "--", "sh", "-c", "cat; echo done"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().context("stdin")?;
        stdin.write_all(b"line one\nline two\n")?;
    }
    let out = child.wait_with_output()?;
    ensure!(out.status.success(), "exec -i: {}", String::from_utf8_lossy(&out.stderr));
    ensure!(out.stdout == b"line one\nline two\ndone\n", "{:?}", String::from_utf8_lossy(&out.stdout));

    // Port-forward: a local port that reaches the pod's port 8080.
    let mut pf = Command::new(&env.kubectl)
        .arg("--kubeconfig")
        .arg(&env.admin_kubeconfig)
        .args(["-n", NAMESPACE, "port-forward", "pod/web", ":8080"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let result = (|| -> Result<()> {
        use std::io::BufRead;
        let stdout = pf.stdout.take().context("stdout")?;
        let mut reader = std::io::BufReader::new(stdout);
        let mut first = String::new();
        reader.read_line(&mut first)?;
        // kubectl prints a line per connection: its stdout must stay open.
        std::thread::spawn(move || std::io::copy(&mut reader, &mut std::io::sink()));
        // "Forwarding from 127.0.0.1:PORT -> 8080"
        let port = first
            .split_whitespace()
            .nth(2)
            .and_then(|a| a.rsplit(':').next())
            .and_then(|p| p.parse::<u16>().ok())
            .with_context(|| format!("port-forward said {first:?}"))?;
        for _ in 0..3 {
            let out = Command::new("curl")
                .args(["-s", "--max-time", "10"])
                .arg(format!("http://127.0.0.1:{port}/"))
                .output()?;
            ensure!(
                out.stdout == b"hello-from-pod\n",
                "through the forward: {:?}",
                String::from_utf8_lossy(&out.stdout)
            );
        }
        Ok(())
    })();
    let _ = pf.kill();
    let pf_out = pf.wait_with_output()?;
    result.with_context(|| {
        format!(
            "kubectl port-forward said: {}\nagent log:\n{}",
            String::from_utf8_lossy(&pf_out.stderr),
            tail(&env.agent.log(), 30)
        )
    })
}

#[test]
#[cfg_attr(not_root, ignore = "needs root (containerd, mounts, network namespaces)")]
#[cfg_attr(
    all(not(kit), not(not_root)),
    ignore = "needs the kit's control plane: the API double does not proxy to nodes (tests/run.sh starts it)"
)]
fn stats_summary_and_resource_metrics_reach_the_api_server_through_the_node_proxy() -> Result<()> {
    skip_unless_root!(Ok(()));
    let Some(env) = Env::new("srv-stats")? else { return Ok(()) };
    env.create_pod("stats", "Always", "echo some output; while true; do sleep 1; done")?;
    env.wait_pod("stats", "running", running)?;
    let node = env.agent.node_name().to_owned();
    let raw = |path: &str| -> Result<String> {
        let (ok, out, err) = env.kubectl(&["get", "--raw", &format!("/api/v1/nodes/{node}/proxy{path}")])?;
        ensure!(ok, "get --raw {path}: {err}");
        Ok(out)
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    let summary: serde_json::Value = loop {
        let s: serde_json::Value = serde_json::from_str(&raw("/stats/summary")?)?;
        let pod = s["pods"].as_array().and_then(|ps| ps.iter().find(|p| p["podRef"]["name"] == "stats")).cloned();
        if pod.is_some_and(|p| p["containers"][0]["cpu"]["usageCoreNanoSeconds"].is_u64()) {
            break s;
        }
        ensure!(Instant::now() < deadline, "no container stats for the pod: {s}");
        std::thread::sleep(Duration::from_secs(1));
    };
    ensure!(summary["node"]["nodeName"] == node.as_str(), "{summary}");
    ensure!(summary["node"]["cpu"]["usageCoreNanoSeconds"].as_u64() > Some(0), "{summary}");
    ensure!(summary["node"]["memory"]["workingSetBytes"].as_u64() > Some(0), "{summary}");
    ensure!(summary["node"]["fs"]["capacityBytes"].as_u64() > Some(0), "{summary}");
    let pod =
        summary["pods"].as_array().and_then(|ps| ps.iter().find(|p| p["podRef"]["name"] == "stats")).context("pod")?;
    let app = &pod["containers"][0];
    ensure!(app["name"] == "app" && app["memory"]["workingSetBytes"].as_u64() > Some(0), "{pod}");
    ensure!(app["logs"]["usedBytes"].as_u64() > Some(0), "the log file's size: {pod}");
    ensure!(app["rootfs"]["usedBytes"].is_u64(), "{pod}");
    ensure!(pod["cpu"]["usageCoreNanoSeconds"].is_u64() && pod["memory"]["workingSetBytes"].is_u64(), "{pod}");
    ensure!(pod["ephemeral-storage"]["usedBytes"].is_u64(), "{pod}");

    let metrics = raw("/metrics/resource")?;
    let line =
        format!("container_cpu_usage_seconds_total{{container=\"app\",namespace=\"{NAMESPACE}\",pod=\"stats\"}} ");
    ensure!(metrics.contains(&line), "{metrics}");
    ensure!(metrics.contains("node_memory_working_set_bytes "), "{metrics}");
    ensure!(metrics.contains("pod_memory_working_set_bytes{namespace=\"default\",pod=\"stats\"} "), "{metrics}");
    ensure!(metrics.contains("scrape_error 0\n"), "{metrics}");
    ensure!(raw("/metrics/probes")?.contains("# TYPE prober_probe_total counter"));
    let configz: serde_json::Value = serde_json::from_str(&raw("/configz")?)?;
    ensure!(configz["kubeletconfig"]["authorization"]["mode"] == "Webhook", "{configz}");
    let running: serde_json::Value = serde_json::from_str(&raw("/runningpods/")?)?;
    ensure!(running["items"][0]["metadata"]["name"] == "stats", "{running}");

    // The pulled image shows in the node's status.images (by tag and digest, with its size) within a status period.
    let nodes: Api<Node> = Api::all(env.admin.clone());
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let n = env.rt.block_on(nodes.get(&node))?;
        let images = n.status.and_then(|s| s.images).unwrap_or_default();
        let busybox = images.iter().find(|i| i.names.iter().flatten().any(|n| n == BUSYBOX));
        if let Some(i) = busybox {
            ensure!(i.size_bytes > Some(0), "{i:?}");
            ensure!(i.names.iter().flatten().any(|n| n.contains("@sha256:")), "{i:?}");
            break;
        }
        ensure!(Instant::now() < deadline, "no {BUSYBOX} in status.images: {images:?}");
        std::thread::sleep(Duration::from_secs(1));
    }
    Ok(())
}

#[test]
#[cfg_attr(not_root, ignore = "needs root (containerd, mounts, network namespaces)")]
#[cfg_attr(
    all(not(kit), not(not_root)),
    ignore = "needs the kit's control plane: the API double does not proxy to nodes (tests/run.sh starts it)"
)]
fn probe_metrics_count_results_and_durations_through_the_node_proxy() -> Result<()> {
    skip_unless_root!(Ok(()));
    let Some(env) = Env::new("srv-probes")? else { return Ok(()) };
    let pod: Pod = serde_json::from_value(json!({
        "metadata": { "name": "probed", "namespace": NAMESPACE },
        "spec": {
            "nodeName": env.agent.node_name(),
            "automountServiceAccountToken": false,
            "terminationGracePeriodSeconds": 1,
            "tolerations": [{ "operator": "Exists" }],
            "containers": [{
                "name": "app",
                "image": BUSYBOX,
                "command": ["sh", "-c", "while true; do sleep 1; done"],
                "readinessProbe": { "exec": { "command": ["true"] }, "periodSeconds": 1 },
                "livenessProbe": { "exec": { "command": ["false"] }, "periodSeconds": 1, "failureThreshold": 1000 },
            }],
        }
    }))?;
    let pod = env.rt.block_on(env.pods().create(&PostParams::default(), &pod))?;
    let uid = pod.metadata.uid.context("uid")?;
    env.wait_pod("probed", "running", running)?;
    let node = env.agent.node_name().to_owned();
    let labels = format!("container=\"app\",namespace=\"{NAMESPACE}\",pod=\"probed\",pod_uid=\"{uid}\"");
    let count = |text: &str, series: &str| -> u64 {
        text.lines().find_map(|l| l.strip_prefix(series)).and_then(|v| v.trim().parse().ok()).unwrap_or(0)
    };
    let readiness_ok = format!("prober_probe_total{{{labels},probe_type=\"Readiness\",result=\"successful\"}} ");
    let liveness_failed = format!("prober_probe_total{{{labels},probe_type=\"Liveness\",result=\"failed\"}} ");
    let durations =
        format!("prober_probe_duration_seconds_count{{container=\"app\",namespace=\"{NAMESPACE}\",pod=\"probed\",probe_type=\"Readiness\"}} ");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (ok, text, err) = env.kubectl(&["get", "--raw", &format!("/api/v1/nodes/{node}/proxy/metrics/probes")])?;
        ensure!(ok, "get --raw /metrics/probes: {err}");
        if count(&text, &readiness_ok) >= 2 && count(&text, &liveness_failed) >= 2 {
            ensure!(count(&text, &durations) >= 2, "readiness durations observed: {text}");
            ensure!(text.contains("# TYPE prober_probe_duration_seconds histogram"), "{text}");
            ensure!(text.contains("le=\"+Inf\""), "{text}");
            break;
        }
        ensure!(Instant::now() < deadline, "probe counters within 30 s: {text}");
        std::thread::sleep(Duration::from_secs(1));
    }
    Ok(())
}

/// The log directory of the static pod's container `app`.
fn container_log_dir(agent: &Agent) -> Option<PathBuf> {
    let pods = std::fs::read_dir(agent.pod_logs_dir()).ok()?;
    pods.flatten().map(|e| e.path().join("app")).find(|p| p.is_dir())
}

#[test]
#[cfg_attr(not_root, ignore = "needs root (containerd, mounts, network namespaces)")]
fn container_logs_are_rotated_at_the_size_limit_and_the_runtime_keeps_writing() -> Result<()> {
    skip_unless_root!(Ok(()));
    ensure_images()?;
    let containerd = Containerd::start("srv-rotate")?;
    let agent = Agent::start_with(
        &containerd,
        "containerLogMaxSize: 2Ki\ncontainerLogMaxFiles: 3\n\
         authentication: {anonymous: {enabled: true}, webhook: {enabled: false}}\nauthorization: {mode: AlwaysAllow}\n",
    )?;
    agent.write_manifest(
        "chatty.yaml",
        &format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: chatty, namespace: default}}\nspec:\n  containers:\n  - name: app\n    \
             image: {BUSYBOX}\n    command: [sh, -c, 'i=0; while true; do i=$((i+1)); echo line $i 0123456789012345678901234567890123456789; sleep 0.05; done']\n"
        ),
    )?;
    // Two monitor periods: one rotation, then at the next the first rotated file is compressed before the log is
    // rotated again, within the limit on the number of files (compressed ones count).
    let deadline = Instant::now() + Duration::from_secs(60);
    let (dir, rotated) = loop {
        if let Some(dir) = container_log_dir(&agent) {
            let names: Vec<String> =
                std::fs::read_dir(&dir)?.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect();
            let rotated: Vec<String> = names.iter().filter(|n| n.starts_with("0.log.")).cloned().collect();
            if rotated.iter().any(|n| n.ends_with(".gz")) {
                ensure!(names.len() <= 3, "at most containerLogMaxFiles files: {names:?}");
                break (dir, rotated);
            }
        }
        ensure!(Instant::now() < deadline, "no compressed rotated log within 60 s:\n{}", tail(&agent.log(), 30));
        std::thread::sleep(Duration::from_millis(500));
    };
    for r in &rotated {
        let stamp = r.trim_start_matches("0.log.").trim_end_matches(".gz");
        ensure!(stamp.len() == 15 && stamp.as_bytes()[8] == b'-', "rotated name {r}");
    }
    // All but the most recent rotated file are compressed, and hold CRI lines.
    let mut plain: Vec<&String> = rotated.iter().filter(|r| !r.ends_with(".gz")).collect();
    let gz: Vec<&String> = rotated.iter().filter(|r| r.ends_with(".gz")).collect();
    ensure!(plain.len() == 1, "only the newest rotated file stays plain: {rotated:?}");
    ensure!(gz.iter().all(|g| g.as_str() < plain[0].as_str()), "the compressed files are the older ones: {rotated:?}");
    let unzipped = Command::new("gzip").arg("-dc").arg(dir.join(gz[0])).output()?;
    ensure!(unzipped.status.success(), "gzip -dc {}", gz[0]);
    let text = String::from_utf8_lossy(&unzipped.stdout);
    ensure!(text.lines().next().is_some_and(|l| l.contains(" stdout F line ")), "{text:?}");
    plain.sort();
    let rotated: Vec<String> = plain.into_iter().cloned().collect();
    // The runtime reopened the log: the current file keeps growing with later lines than the rotated ones.
    let last_number = |text: &str| -> Option<u64> { text.lines().last()?.split_whitespace().nth(4)?.parse().ok() };
    let mut newest_rotated = rotated.clone();
    newest_rotated.sort();
    let old = std::fs::read_to_string(dir.join(newest_rotated.last().context("rotated")?))?;
    std::thread::sleep(Duration::from_secs(1));
    let current = std::fs::read_to_string(dir.join("0.log"))?;
    ensure!(
        last_number(&current) > last_number(&old),
        "current {:?} vs rotated {:?}",
        last_number(&current),
        last_number(&old)
    );

    // Anonymous callers are allowed here: /containerLogs serves the current file through the kubelet server.
    let out = Command::new("curl")
        .args(["-sk", "--max-time", "10"])
        .arg(format!(
            "https://127.0.0.1:{}/containerLogs/default/chatty-{}/app?tailLines=2",
            agent.server_port(),
            agent.node_name()
        ))
        .output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    ensure!(text.lines().count() == 2 && text.starts_with("line "), "{text:?}");
    Ok(())
}

#[test]
#[cfg_attr(not_root, ignore = "needs root (containerd, mounts, network namespaces)")]
#[cfg_attr(
    all(not(kit), not(not_root)),
    ignore = "needs the kit's control plane: the API double does not proxy to nodes (tests/run.sh starts it)"
)]
fn kubectl_debug_adds_an_ephemeral_container_that_runs_and_is_reported() -> Result<()> {
    skip_unless_root!(Ok(()));
    let Some(env) = Env::new("srv-debug")? else { return Ok(()) };
    env.create_pod("target", "Always", "while true; do sleep 1; done")?;
    env.wait_pod("target", "running", running)?;
    let (ok, _, err) = env.kubectl(&[
        "debug",
        "target",
        "--image",
        BUSYBOX,
        "-c",
        "debugger",
        "--",
        "sh",
        "-c",
        "echo debugging; while true; do sleep 1; done",
    ])?;
    ensure!(ok, "kubectl debug: {err}");
    let pod = env.wait_pod("target", "ephemeral container running", |p| {
        p.status
            .as_ref()
            .and_then(|s| s.ephemeral_container_statuses.as_ref())
            .and_then(|cs| cs.iter().find(|c| c.name == "debugger"))
            .and_then(|c| c.state.as_ref())
            .is_some_and(|s| s.running.is_some())
    })?;
    let status = pod.status.context("status")?;
    let debugger =
        status.ephemeral_container_statuses.iter().flatten().find(|c| c.name == "debugger").context("status")?;
    ensure!(!debugger.ready && debugger.container_id.as_deref().is_some_and(|id| id.starts_with("containerd://")));
    ensure!(running(&Pod { status: Some(status.clone()), ..Default::default() }), "the app container keeps running");
    ensure!(env.logs(&["target", "-c", "debugger"])? == "debugging\n");
    let (ok, out, err) = env.kubectl(&["exec", "target", "-c", "debugger", "--", "echo", "marco"])?;
    ensure!(ok && out == "marco\n", "exec in the ephemeral container: {out:?} {err}");
    Ok(())
}

#[test]
#[cfg_attr(not_root, ignore = "needs root (containerd, mounts, network namespaces)")]
#[cfg_attr(
    all(not(kit), not(not_root)),
    ignore = "needs the kit's control plane: the API double does not proxy to nodes (tests/run.sh starts it)"
)]
fn kubectl_debug_target_shares_the_target_containers_processes_and_events_name_the_ephemeral_container() -> Result<()> {
    skip_unless_root!(Ok(()));
    let Some(env) = Env::new("srv-debug-target")? else { return Ok(()) };
    env.create_pod("shared", "Always", "exec sleep 3601")?;
    env.wait_pod("shared", "running", running)?;
    let (ok, _, err) = env.kubectl(&[
        "debug",
        "shared",
        "--image",
        BUSYBOX,
        "-c",
        "debugger",
        "--target",
        "app",
        "--",
        "sh",
        "-c",
        "ps -o pid,args; while true; do sleep 1; done",
    ])?;
    ensure!(ok, "kubectl debug: {err}");
    let pod = env.wait_pod("shared", "ephemeral container running", |p| {
        p.status
            .as_ref()
            .and_then(|s| s.ephemeral_container_statuses.as_ref())
            .and_then(|cs| cs.iter().find(|c| c.name == "debugger"))
            .and_then(|c| c.state.as_ref())
            .is_some_and(|s| s.running.is_some())
    })?;
    // In the target's PID namespace the target's process is PID 1, and the debugger sees it.
    let deadline = Instant::now() + Duration::from_secs(20);
    let ps = loop {
        let ps = env.logs(&["shared", "-c", "debugger"])?;
        if ps.lines().count() > 2 || Instant::now() > deadline {
            break ps;
        }
        std::thread::sleep(Duration::from_millis(300));
    };
    ensure!(
        ps.lines().any(|l| l.split_whitespace().collect::<Vec<_>>() == ["1", "sleep", "3601"]),
        "the target's process in the debugger's ps: {ps:?}"
    );

    // kubelet's event field path for an ephemeral container (this pod's events: earlier runs' may remain).
    let uid = pod.metadata.uid.context("uid")?;
    let events: Api<k8s_openapi::api::core::v1::Event> = Api::namespaced(env.admin.clone(), NAMESPACE);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let list = env.rt.block_on(events.list(&ListParams::default().fields(&format!("involvedObject.uid={uid}"))))?;
        let paths: Vec<(String, String)> = list
            .items
            .iter()
            .map(|e| (e.reason.clone().unwrap_or_default(), e.involved_object.field_path.clone().unwrap_or_default()))
            .collect();
        if paths.iter().any(|(r, f)| r == "Started" && f == "spec.ephemeralContainers{debugger}") {
            ensure!(
                !paths.iter().any(|(_, f)| f == "spec.containers{debugger}"),
                "no event names the debugger as a regular container: {paths:?}"
            );
            break;
        }
        ensure!(Instant::now() < deadline, "no Started event for spec.ephemeralContainers{{debugger}}: {paths:?}");
        std::thread::sleep(Duration::from_millis(500));
    }
    Ok(())
}

#[test]
#[cfg_attr(not_root, ignore = "needs root (containerd, mounts, network namespaces)")]
#[cfg_attr(
    all(not(kit), not(not_root)),
    ignore = "needs the kit's control plane: the API double does not proxy to nodes (tests/run.sh starts it)"
)]
fn kubectl_attach_reaches_the_running_containers_stdin_and_stdout() -> Result<()> {
    skip_unless_root!(Ok(()));
    let Some(env) = Env::new("srv-attach")? else { return Ok(()) };
    let pod: Pod = serde_json::from_value(json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": { "name": "echo", "namespace": NAMESPACE },
        "spec": {
            "nodeName": env.agent.node_name(),
            "automountServiceAccountToken": false,
            "terminationGracePeriodSeconds": 1,
            "tolerations": [{ "operator": "Exists" }],
            "containers": [{ "name": "app", "image": BUSYBOX, "command": ["cat"], "stdin": true }],
        }
    }))?;
    env.rt.block_on(env.pods().create(&PostParams::default(), &pod))?;
    env.wait_pod("echo", "running", running)?;
    let mut child = Command::new(&env.kubectl)
        .arg("--kubeconfig")
        .arg(&env.admin_kubeconfig)
        .args(["-n", NAMESPACE, "attach", "-i", "echo", "-c", "app"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()?;
    let stdout = child.stdout.take().context("stdout")?;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    let result = (|| -> Result<()> {
        use std::io::Write;
        let mut stdin = child.stdin.take().context("stdin")?;
        // The attach may take a moment to be established: repeat until the echo comes back.
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            stdin.write_all(b"ping\n")?;
            stdin.flush()?;
            if let Ok(line) = rx.recv_timeout(Duration::from_secs(1)) {
                ensure!(line == "ping", "{line:?}");
                return Ok(());
            }
            ensure!(Instant::now() < deadline, "no echo through kubectl attach");
        }
    })();
    let _ = child.kill();
    let _ = child.wait();
    result.with_context(|| format!("agent log:\n{}", tail(&env.agent.log(), 20)))
}

#[test]
#[cfg_attr(not_root, ignore = "needs root (containerd, mounts, network namespaces)")]
#[cfg_attr(
    all(not(kit), not(not_root)),
    ignore = "needs the kit's control plane: the API double does not proxy to nodes (tests/run.sh starts it)"
)]
fn with_server_tls_bootstrap_the_serving_certificate_comes_from_an_approved_csr() -> Result<()> {
    skip_unless_root!(Ok(()));
    let Some(env) = Env::with_config("srv-tlsboot", "serverTLSBootstrap: true\n")? else { return Ok(()) };
    let user = format!("system:node:{}", env.agent.node_name());
    // The CSR waits for approval, as kubelet-serving CSRs are not approved automatically.
    let deadline = Instant::now() + Duration::from_secs(30);
    let csr = loop {
        let (ok, out, err) = env.kubectl(&[
            "get",
            "csr",
            "-o",
            "jsonpath={range .items[*]}{.metadata.name} {.spec.signerName} {.spec.username}{\"\\n\"}{end}",
        ])?;
        ensure!(ok, "{err}");
        let found = out.lines().find(|l| l.ends_with(&format!(" kubernetes.io/kubelet-serving {user}")));
        if let Some(line) = found {
            break line.split_whitespace().next().unwrap_or_default().to_owned();
        }
        ensure!(Instant::now() < deadline, "no kubelet-serving CSR from {user}: {out}");
        std::thread::sleep(Duration::from_millis(300));
    };
    let (ok, _, err) = env.kubectl(&["certificate", "approve", &csr])?;
    ensure!(ok, "approve: {err}");
    // Once issued, the server presents a certificate from the cluster CA for the node's IP.
    let ca = env.pki.join("ca.crt").display().to_string();
    let cert = env.pki.join("admin.crt").display().to_string();
    let key = env.pki.join("admin.key").display().to_string();
    let url = format!("https://{}:{}/pods", env.node_ip, env.agent.server_port());
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let out = Command::new("curl")
            .args(["-s", "--max-time", "5", "-o", "/dev/null", "-w", "%{http_code}", "--cacert", &ca])
            .args(["--cert", &cert, "--key", &key, &url])
            .output()?;
        if out.stdout == b"200" {
            break;
        }
        ensure!(
            Instant::now() < deadline,
            "no verified TLS to {url}: {:?}\n{}",
            String::from_utf8_lossy(&out.stdout),
            tail(&env.agent.log(), 20)
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    ensure!(
        env.agent.root_dir().join("pki/kubelet-server-current.pem").exists(),
        "the certificate is kept for restarts"
    );
    Ok(())
}
