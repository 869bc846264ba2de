//! `rkubelet join` against the kit's real control plane made joinable as `kubeadm init` makes a cluster
//! (`kubeadm-join-command.sh`: kube-system/kubelet-config and its RBAC, cluster-info signed for a bootstrap token, the
//! CA hash computed with openssl): the join writes the bootstrap kubeconfig, the CA, the cluster's
//! KubeletConfiguration and the unit's environment file, and an agent started from exactly those files registers a
//! Node that becomes Ready; a wrong CA hash, an unknown token id, a wrong secret, an unreachable server and malformed
//! arguments are each refused with one line and no file written.
//!
//! The kit is `tests/run.sh`'s control plane when it holds one (`RKUBELET_E2E_KUBECONFIG`, `K8S_HOME`), else a
//! private one under /var/lib/rkubelet-test with its own ports, stopped again at the end.

use std::fs::File;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use rkubelet_tests::agent::{cgroup_v2_available, free_port, rkubelet_bin, tail};
use rkubelet_tests::containerd::Containerd;
use rkubelet_tests::kit::kit_dir;
use rkubelet_tests::oracle::node_ip;
use rkubelet_tests::skip_unless_root;

/// A control plane of the kit: the test run's, or one of this test's own.
struct Kit {
    dir: PathBuf,
    home: PathBuf,
    port: u16,
    admin: PathBuf,
    /// Set for a private control plane: it is stopped on drop, and the lock held until then.
    private: Option<File>,
    ports: [u16; 4],
}

const PRIVATE_HOME: &str = "/var/lib/rkubelet-test/join-command-kit";
/// apiserver, etcd (and +1), controller-manager, scheduler: sets tests/run.sh and kubeadm-join.sh do not take; the
/// first one free is used.
const PRIVATE_PORT_SETS: [[u16; 4]; 3] =
    [[38443, 38379, 38257, 38259], [39443, 39379, 39257, 39259], [37443, 37379, 37257, 37259]];

fn port_free(port: u16) -> bool {
    std::net::TcpListener::bind(("127.0.0.1", port)).is_ok()
}

impl Kit {
    fn acquire() -> Result<Kit> {
        let dir = kit_dir();
        let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        if let (Some(admin), Some(home), Some(port)) =
            (env("RKUBELET_E2E_KUBECONFIG"), env("K8S_HOME"), env("K8S_APISERVER_PORT"))
        {
            let port = port.parse()?;
            return Ok(Kit { dir, home: home.into(), port, admin: admin.into(), private: None, ports: [port; 4] });
        }
        let home = PathBuf::from(PRIVATE_HOME);
        std::fs::create_dir_all(&home)?;
        let lock = File::create(format!("{PRIVATE_HOME}.lock"))?;
        // SAFETY: flock on a descriptor this function owns.
        if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            bail!("another join test holds {PRIVATE_HOME}");
        }
        let ports = PRIVATE_PORT_SETS
            .into_iter()
            .find(|set| set.iter().chain(&[set[1] + 1]).all(|p| port_free(*p)))
            .context("no free port set for a private control plane")?;
        let mut kit = Kit { dir, home, port: ports[0], admin: PathBuf::new(), private: Some(lock), ports };
        let out = kit.script("up.sh", &["--wipe"])?;
        kit.admin = PathBuf::from(out.lines().last().unwrap_or_default().trim());
        Ok(kit)
    }

    fn command(&self, script: &str) -> Command {
        let mut c = Command::new("bash");
        c.arg(self.dir.join(script)).env("K8S_HOME", &self.home).env("K8S_APISERVER_PORT", self.port.to_string());
        if self.private.is_some() {
            c.env("K8S_ETCD_PORT", self.ports[1].to_string())
                .env("K8S_KCM_PORT", self.ports[2].to_string())
                .env("K8S_SCHED_PORT", self.ports[3].to_string());
        }
        c
    }

    /// Runs a kit script; its stdout.
    fn script(&self, script: &str, args: &[&str]) -> Result<String> {
        let out = self.command(script).args(args).stdin(Stdio::null()).output()?;
        ensure!(
            out.status.success(),
            "{script} {args:?}: {}\n{}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    fn kubectl(&self, args: &[&str]) -> Result<String> {
        let out =
            Command::new(self.home.join("bin/kubectl")).arg("--kubeconfig").arg(&self.admin).args(args).output()?;
        ensure!(out.status.success(), "kubectl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

impl Drop for Kit {
    fn drop(&mut self) {
        if self.private.is_some() {
            let _ = self.command("down.sh").stdout(Stdio::null()).stderr(Stdio::null()).status();
        }
    }
}

fn join(args: &[&str]) -> Result<Output> {
    Ok(Command::new(rkubelet_bin()?).arg("join").args(args).stdin(Stdio::null()).output()?)
}

/// Every file under `dir`, relative.
fn files_under(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p.strip_prefix(dir).unwrap_or(&p).display().to_string());
            }
        }
    }
    out.sort();
    out
}

/// `rkubelet join` with `args` fails: exit 1, the last line of stderr (after discovery's retry lines) is the one
/// error line and contains `want`, nothing was written under `root`. Returns how long it took.
fn refused(root: &Path, args: &[&str], want: &str) -> Result<Duration> {
    let t = Instant::now();
    let out = join(args)?;
    let took = t.elapsed();
    let stderr = String::from_utf8_lossy(&out.stderr);
    let last = stderr.lines().last().unwrap_or_default();
    ensure!(out.status.code() == Some(1), "join {args:?}: exit {:?}, want 1; stderr:\n{stderr}", out.status.code());
    ensure!(last.starts_with("error: ") && last.contains(want), "join {args:?}: last line {last:?}, want {want:?}");
    ensure!(files_under(root).is_empty(), "join {args:?} wrote {:?}", files_under(root));
    println!("refused in {took:.1?}: {last}");
    Ok(took)
}

/// A mount namespace whose /var/log/pods and /etc/cni/net.d are private folders (the agent's pod logs and the CNI
/// config it writes for its pod CIDR stay with this test), held by a `sleep` until dropped.
struct MountNamespace(Child);

impl MountNamespace {
    fn new() -> Result<MountNamespace> {
        let holder = Command::new("unshare")
            .args(["--mount", "--propagation", "private", "sleep", "infinity"])
            .stdin(Stdio::null())
            .spawn()
            .context("unshare")?;
        let ns = MountNamespace(holder);
        let own = std::fs::read_link("/proc/self/ns/mnt")?;
        let deadline = Instant::now() + Duration::from_secs(5);
        while std::fs::read_link(format!("/proc/{}/ns/mnt", ns.pid())).ok().is_none_or(|n| n == own) {
            ensure!(Instant::now() < deadline, "unshare --mount made no mount namespace");
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(ns)
    }

    fn pid(&self) -> u32 {
        self.0.id()
    }

    fn bind(&self, from: &Path, to: &Path) -> Result<()> {
        std::fs::create_dir_all(from)?;
        std::fs::create_dir_all(to)?;
        let status = Command::new("nsenter")
            .args(["-t", &self.pid().to_string(), "-m", "--", "mount", "--bind"])
            .arg(from)
            .arg(to)
            .status()?;
        ensure!(status.success(), "mount --bind {} {}: {status}", from.display(), to.display());
        Ok(())
    }
}

impl Drop for MountNamespace {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The agent process; stopped with SIGTERM (then SIGKILL) on drop.
struct AgentProcess(Child);

impl Drop for AgentProcess {
    fn drop(&mut self) {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.0.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
#[cfg_attr(not_root, ignore = "needs root (containerd, mounts, network namespaces)")]
#[cfg_attr(
    all(not(kit_dir), not(not_root)),
    ignore = "needs the control-plane kit (../shared/k8s or RKUBELET_K8S_KIT)"
)]
fn rkubelet_join_discovers_with_the_token_and_pin_and_its_files_make_a_ready_node() -> Result<()> {
    skip_unless_root!(Ok(()));
    let kit = Kit::acquire()?;
    let work = tempfile::Builder::new().prefix("rkubelet-join-").tempdir()?;

    // The cluster as `kubeadm init` leaves it, with the KubeletConfiguration every joining node receives.
    let config_in = work.path().join("kubelet-config.yaml");
    std::fs::write(
        &config_in,
        format!(
            "apiVersion: kubelet.config.k8s.io/v1beta1\nkind: KubeletConfiguration\ncgroupDriver: cgroupfs\n{}\
             evictionHard: {{memory.available: 100Mi, nodefs.available: 100Mi, nodefs.inodesFree: 1%, imagefs.available: 100Mi}}\n",
            if cgroup_v2_available() { "" } else { "cgroupsPerQOS: false\n" }
        ),
    )?;
    // kubeadm's upload-config annotates the control-plane Node, which the kit's control plane (no kubelet) lacks: it
    // would retry for two minutes before giving up harmlessly. A labelled, unschedulable stand-in, there only
    // meanwhile, lets it finish at once (as tests/scripts/kubeadm-join.sh does).
    let stand_in = work.path().join("stand-in.yaml");
    std::fs::write(
        &stand_in,
        "apiVersion: v1\nkind: Node\nmetadata: {name: kit-control-plane, labels: {kubernetes.io/hostname: kit-control-plane}}\n\
         spec: {unschedulable: true}\n",
    )?;
    let had_stand_in = kit.kubectl(&["get", "node", "kit-control-plane", "--ignore-not-found", "-o", "name"])?;
    kit.kubectl(&["apply", "-f", &stand_in.display().to_string()])?;
    let command = kit.script("kubeadm-join-command.sh", &[&config_in.display().to_string()]);
    if had_stand_in.trim().is_empty() {
        let _ = kit.kubectl(&["delete", "node", "kit-control-plane", "--ignore-not-found"]);
    }
    let command = command?;
    let command = command.lines().last().unwrap_or_default().to_owned();
    let word_after = |flag: &str| {
        let words: Vec<&str> = command.split_whitespace().collect();
        words.iter().position(|w| *w == flag).and_then(|i| words.get(i + 1)).map(|w| w.to_string())
    };
    let (Some(token), Some(hash)) = (word_after("--token"), word_after("--discovery-token-ca-cert-hash")) else {
        bail!("no token and hash in the join command {command:?}");
    };
    let (id, secret) = token.split_once('.').context("token")?;
    let server = format!("https://127.0.0.1:{}", kit.port);
    println!("join command of the cluster: {command}");

    // Refusals: each one line, non-zero, nothing written.
    let root = work.path().join("root");
    std::fs::create_dir_all(&root)?;
    let root_s = root.display().to_string();
    let base = |token: &str, hash: &str| -> Vec<String> {
        [&server, "--token", token, "--discovery-token-ca-cert-hash", hash, "--root", &root_s, "--no-start"]
            .iter()
            .map(|s| s.to_string())
            .chain(["--discovery-timeout".to_owned(), "2s".to_owned()])
            .collect()
    };
    let run = |args: Vec<String>, want: &str| {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        refused(&root, &args, want)
    };
    let other_hash = format!("sha256:{}", "ab".repeat(32));
    run(base(&token, &other_hash), "cluster CA found in cluster-info ConfigMap is invalid: none of the public keys")?;
    run(
        base(&format!("zz{}.{secret}", &id[2..]), &hash),
        &format!(
            "token id \"zz{}\" is invalid for this cluster or it has expired. Use \"kubeadm token create\" on the \
             control-plane node to create a new valid token",
            &id[2..]
        ),
    )?;
    let wrong_secret = format!("{id}.{}", secret.chars().rev().collect::<String>());
    run(
        base(&wrong_secret, &hash),
        "failed to verify JWS signature of received cluster info object, can't trust this API Server",
    )?;
    let closed = free_port()?;
    let mut unreachable = base(&token, &hash);
    unreachable[0] = format!("https://127.0.0.1:{closed}");
    let took = run(unreachable, "Connection refused")?;
    ensure!(took < Duration::from_secs(15), "an unreachable server took {took:?} with --discovery-timeout 2s");
    run(base("abcdef", &hash), "the bootstrap token \"abcdef\" was not of the form")?;
    run(
        base(&token, "sha256:abcd"),
        "invalid discovery token CA certificate hash: invalid hash \"sha256:abcd\", expected a 32 byte SHA-256 hash",
    )?;

    // The join.
    let out =
        join(&[&server, "--token", &token, "--discovery-token-ca-cert-hash", &hash, "--root", &root_s, "--no-start"])?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    ensure!(out.status.success(), "join: {}\n{stdout}\n{}", out.status, String::from_utf8_lossy(&out.stderr));
    println!("{stdout}");
    ensure!(
        stdout.contains("TLS certificate validates against pinned roots"),
        "no verified second fetch in:\n{stdout}"
    );
    let bootstrap = root.join("etc/kubernetes/bootstrap-kubelet.conf");
    let config = root.join("etc/rkubelet/config.yaml");
    let ca = root.join("etc/kubernetes/pki/ca.crt");
    let env_file = root.join("etc/default/rkubelet");
    let written = files_under(&root);
    ensure!(
        written
            == [
                "etc/default/rkubelet",
                "etc/kubernetes/bootstrap-kubelet.conf",
                "etc/kubernetes/pki/ca.crt",
                "etc/rkubelet/config.yaml"
            ],
        "written: {written:?}"
    );
    let kit_ca = std::fs::read(kit.home.join("pki/ca.crt"))?;
    ensure!(std::fs::read(&ca)? == kit_ca, "the CA written is not the cluster's");
    ensure!(std::fs::metadata(&bootstrap)?.permissions().mode() & 0o777 == 0o600, "bootstrap kubeconfig not 0600");
    let kc: serde_yaml::Value = serde_yaml::from_str(&std::fs::read_to_string(&bootstrap)?)?;
    ensure!(kc["users"][0]["user"]["token"].as_str() == Some(token.as_str()), "token: {kc:?}");
    ensure!(kc["clusters"][0]["cluster"]["server"].as_str() == Some(server.as_str()), "server: {kc:?}");
    let kc_ca = kc["clusters"][0]["cluster"]["certificate-authority-data"].as_str().unwrap_or_default();
    let decoded =
        Command::new("base64").arg("-d").stdin(Stdio::piped()).stdout(Stdio::piped()).spawn().and_then(|mut c| {
            use std::io::Write;
            c.stdin.take().map(|mut i| i.write_all(kc_ca.as_bytes())).transpose()?;
            c.wait_with_output()
        })?;
    ensure!(decoded.stdout == kit_ca, "the bootstrap kubeconfig's CA is not the cluster's");
    let cluster_config =
        kit.kubectl(&["-n", "kube-system", "get", "configmap", "kubelet-config", "-o", "jsonpath={.data.kubelet}"])?;
    ensure!(std::fs::read_to_string(&config)? == cluster_config, "config.yaml is not kube-system/kubelet-config");
    ensure!(cluster_config.contains("cgroupDriver: cgroupfs"), "kubelet-config: {cluster_config}");
    let env = std::fs::read_to_string(&env_file)?;
    ensure!(
        env.lines().any(|l| l
            == "RKUBELET_KUBECONFIG_ARGS=\"--bootstrap-kubeconfig=/etc/kubernetes/bootstrap-kubelet.conf --kubeconfig=/etc/kubernetes/kubelet.conf\""),
        "env file:\n{env}"
    );

    // The agent from those files: TLS bootstrap with the token, a Node that becomes Ready.
    let node = format!("rkubelet-join-{}", std::process::id());
    std::fs::create_dir_all(work.path().join("manifests"))?;
    let ns = MountNamespace::new()?;
    ns.bind(&work.path().join("pod-logs"), Path::new("/var/log/pods"))?;
    let containerd = Containerd::builder("join").mount_namespace_of(ns.pid()).start()?;
    ns.bind(containerd.cni_conf_dir(), Path::new("/etc/cni/net.d"))?;
    let log_path = work.path().join("rkubelet.log");
    let log = File::create(&log_path)?;
    let agent = AgentProcess(
        Command::new("nsenter")
            .args(["-t", &ns.pid().to_string(), "-m", "--"])
            .arg(rkubelet_bin()?)
            .arg(format!("--config={}", config.display()))
            .arg(format!("--bootstrap-kubeconfig={}", bootstrap.display()))
            .arg(format!("--kubeconfig={}", root.join("etc/kubernetes/kubelet.conf").display()))
            // What differs on a test host: paths inside the written files are as seen from --root, and ports and
            // the runtime are this test's own.
            .arg(format!("--client-ca-file={}", ca.display()))
            .arg(format!("--cert-dir={}", work.path().join("pki").display()))
            .arg(format!("--root-dir={}", work.path().join("agent-root").display()))
            .arg(format!("--pod-manifest-path={}", work.path().join("manifests").display()))
            .arg(format!("--container-runtime-endpoint={}", containerd.endpoint()))
            .arg(format!("--hostname-override={node}"))
            .arg(format!("--node-ip={}", node_ip()?))
            .arg(format!("--port={}", free_port()?))
            .args(["--healthz-port=0", "--read-only-port=0", "--v=2"])
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()?,
    );
    let started = Instant::now();
    let deadline = started + Duration::from_secs(120);
    let ready = loop {
        let status = kit
            .kubectl(&["get", "node", &node, "-o", r#"jsonpath={.status.conditions[?(@.type=="Ready")].status}"#])
            .unwrap_or_default();
        if status == "True" {
            break true;
        }
        if Instant::now() > deadline {
            break false;
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    println!("node {node} Ready {:.1?} after the agent started", started.elapsed());
    let wide = kit.kubectl(&["get", "node", &node, "-o", "wide"]).unwrap_or_default();
    println!("{wide}");
    let agent_log = std::fs::read_to_string(&log_path).unwrap_or_default();
    drop(agent);
    drop(containerd);
    drop(ns);
    let _ = kit.kubectl(&["delete", "node", &node, "--ignore-not-found"]);
    ensure!(ready, "node {node} not Ready in 120 s; agent log:\n{}", tail(&agent_log, 40));
    ensure!(root.join("etc/kubernetes/kubelet.conf").exists(), "the agent wrote no kubeconfig after TLS bootstrap");

    // A node that has its kubeconfig is refused, as kubeadm's preflight refuses it.
    let again =
        join(&[&server, "--token", &token, "--discovery-token-ca-cert-hash", &hash, "--root", &root_s, "--no-start"])?;
    let stderr = String::from_utf8_lossy(&again.stderr);
    ensure!(
        again.status.code() == Some(1)
            && stderr.trim_end().ends_with("this node has joined a cluster; remove it to join anew"),
        "a second join: {}: {stderr}",
        again.status
    );

    // A token outside kubeadm's default-node-token group may not read kube-system/kubelet-config: the packaged
    // default configuration is written instead. The bootstrap signer signs cluster-info for it in a moment, which
    // discovery waits for.
    let id2 = format!("{}{}", if id.starts_with('j') { 'k' } else { 'j' }, &id[1..]);
    let token2 = format!("{id2}.{secret}");
    kit.kubectl(&["-n", "kube-system", "delete", "secret", &format!("bootstrap-token-{id2}"), "--ignore-not-found"])?;
    kit.kubectl(&[
        "-n",
        "kube-system",
        "create",
        "secret",
        "generic",
        &format!("bootstrap-token-{id2}"),
        "--type=bootstrap.kubernetes.io/token",
        &format!("--from-literal=token-id={id2}"),
        &format!("--from-literal=token-secret={secret}"),
        "--from-literal=usage-bootstrap-authentication=true",
        "--from-literal=usage-bootstrap-signing=true",
    ])?;
    let root2 = work.path().join("root2");
    let root2_s = root2.display().to_string();
    let out = join(&[
        &server,
        "--token",
        &token2,
        "--discovery-token-ca-cert-hash",
        &hash,
        "--root",
        &root2_s,
        "--no-start",
        "--discovery-timeout=60s",
    ])?;
    let _ = kit.kubectl(&["-n", "kube-system", "delete", "secret", &format!("bootstrap-token-{id2}")]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    ensure!(
        out.status.success(),
        "join with {token2}: {}\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    ensure!(stdout.contains("(HTTP 403)"), "no 403 for kubelet-config in:\n{stdout}");
    let packaged = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../systemd/config.yaml"))?;
    ensure!(std::fs::read_to_string(root2.join("etc/rkubelet/config.yaml"))? == packaged, "not the packaged config");
    Ok(())
}
