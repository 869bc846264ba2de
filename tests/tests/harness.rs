//! Tests of the test harness itself: private containerd instances, the local registry and
//! the test images, and that dropping an instance leaves nothing behind.

use anyhow::{bail, ensure, Context, Result};
use rkubelet_tests::containerd::{mounts_under, Containerd};
use rkubelet_tests::images::{self, ensure_images, BUSYBOX, PAUSE};
use rkubelet_tests::skip_unless_root;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// GET `path` from the local registry with a hand-written HTTP/1.0 request.
fn registry_get(path: &str) -> Result<(u16, String)> {
    let addr = images::REGISTRY.parse()?;
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).context("connecting to the registry")?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {}\r\nAccept: application/json\r\n\r\n", images::REGISTRY)?;
    let mut resp = String::new();
    s.read_to_string(&mut resp)?;
    let (head, body) = resp.split_once("\r\n\r\n").context("malformed HTTP response")?;
    let status = head.split_whitespace().nth(1).and_then(|c| c.parse().ok()).context("no HTTP status")?;
    Ok((status, body.to_owned()))
}

fn tags(repo: &str) -> Result<Vec<String>> {
    let (status, body) = registry_get(&format!("/v2/{repo}/tags/list"))?;
    ensure!(status == 200, "GET /v2/{repo}/tags/list: HTTP {status}: {body}");
    let v: serde_json::Value = serde_json::from_str(&body)?;
    Ok(v["tags"].as_array().context("no tags")?.iter().filter_map(|t| t.as_str().map(str::to_owned)).collect())
}

/// A network namespace held only by an open file of this process: no `ip netns add`, which
/// bind-mounts the host's /run/netns over itself and leaves containerd unable to remove the
/// namespaces of pods already running. The namespace ends when the file is closed, also
/// when the test process dies.
struct PodNetns(std::fs::File);

impl PodNetns {
    fn new() -> Result<PodNetns> {
        let file = std::thread::spawn(|| -> std::io::Result<std::fs::File> {
            // SAFETY: unshare(CLONE_NEWNET) only moves this short-lived thread into a new
            // network namespace; no memory is involved.
            if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
                return Err(std::io::Error::last_os_error());
            }
            std::fs::File::open("/proc/thread-self/ns/net")
        })
        .join()
        .map_err(|_| anyhow::anyhow!("netns thread panicked"))?
        .context("creating a network namespace")?;
        Ok(PodNetns(file))
    }

    /// A path other processes (the CNI plugins) can open the namespace by.
    fn path(&self) -> PathBuf {
        use std::os::fd::AsRawFd;
        PathBuf::from(format!("/proc/{}/fd/{}", std::process::id(), self.0.as_raw_fd()))
    }
}

/// What must be gone once an instance is dropped.
struct Footprint {
    socket: PathBuf,
    dir: PathBuf,
    run_dir: PathBuf,
    config: PathBuf,
    bridge: String,
}

impl Footprint {
    fn of(c: &Containerd) -> Footprint {
        Footprint {
            socket: c.socket_path().to_owned(),
            dir: c.dir().to_owned(),
            run_dir: c.run_dir().to_owned(),
            config: c.config_path().to_owned(),
            bridge: c.bridge().to_owned(),
        }
    }

    fn assert_gone(&self) {
        let procs = processes_mentioning(&[&self.socket, &self.config]);
        assert!(procs.is_empty(), "processes left behind: {procs:?}");
        let mounts = mounts_under(&[self.dir.clone(), self.run_dir.clone()]);
        assert!(mounts.is_empty(), "mounts left behind: {mounts:?}");
        assert!(!self.dir.exists(), "{} left behind", self.dir.display());
        assert!(!self.run_dir.exists(), "{} left behind", self.run_dir.display());
        assert!(!Path::new("/sys/class/net").join(&self.bridge).exists(), "bridge {} left behind", self.bridge);
    }
}

/// (pid, cmdline) of processes with any of `needles` among their arguments.
fn processes_mentioning(needles: &[&Path]) -> Vec<(u32, String)> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(raw) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        let args: Vec<String> = raw.split(|b| *b == 0).map(|a| String::from_utf8_lossy(a).into_owned()).collect();
        if args.iter().any(|a| needles.iter().any(|n| Path::new(a) == *n)) {
            out.push((pid, args.join(" ")));
        }
    }
    out
}

#[test]
#[cfg_attr(not_root, ignore = "needs root (containerd, mounts, network namespaces)")]
fn two_instances_registry_and_pull() -> Result<()> {
    skip_unless_root!(Ok(()));
    let imgs = ensure_images()?;
    assert!(imgs.busybox_archive.is_file() && imgs.pause_archive.is_file());

    // The registry serves the images.
    let busybox_tags = tags("busybox")?;
    assert!(
        busybox_tags.iter().any(|t| t == "1.36") && busybox_tags.iter().any(|t| t == "latest"),
        "busybox tags: {busybox_tags:?}"
    );
    assert!(tags("pause")?.iter().any(|t| t == "3.9"));

    // Two instances at once.
    let (a, b) = std::thread::scope(|s| {
        let a = s.spawn(|| Containerd::start("harness-a"));
        let b = s.spawn(|| Containerd::start("harness-b"));
        (a.join().unwrap(), b.join().unwrap())
    });
    let (a, b) = (a?, b?);
    assert_ne!(a.socket_path(), b.socket_path());
    assert_ne!(a.subnet(), b.subnet());
    assert_ne!(a.bridge(), b.bridge());
    assert_ne!(a.network_name(), b.network_name());
    assert_eq!(a.endpoint(), "unix:///run/rkt-harness-a/containerd.sock".to_owned());
    for c in [&a, &b] {
        let v = c.ctr_run(&["version"])?;
        assert!(v.contains("Server:"), "{}: ctr version: {v}", c.name());
        let plugins = c.ctr_run(&["plugins", "ls"])?;
        assert!(
            plugins
                .lines()
                .any(|l| l.starts_with("io.containerd.grpc.v1") && l.contains(" cri ") && l.trim_end().ends_with("ok")),
            "{}: {plugins}",
            c.name()
        );
        let conflist = std::fs::read_to_string(c.cni_conf_dir().join("10-rkt.conflist"))?;
        assert!(conflist.contains(c.bridge()) && conflist.contains(&c.subnet()));
        let config = std::fs::read_to_string(c.config_path())?;
        assert!(config.contains("restrict_oom_score_adj = true"));
        assert!(config.contains(PAUSE));
    }

    // The registry path through the instance's hosts.toml.
    let out = a.ctr().args(["-n", "k8s.io", "images", "pull", "--plain-http", BUSYBOX]).output()?;
    assert!(out.status.success(), "ctr pull: {}", String::from_utf8_lossy(&out.stderr));
    let list = a.ctr_run(&["-n", "k8s.io", "images", "ls", "-q"])?;
    assert!(list.lines().any(|l| l == BUSYBOX), "images: {list}");
    // ... and b does not see a's images.
    let list_b = b.ctr_run(&["-n", "k8s.io", "images", "ls", "-q"])?;
    assert!(!list_b.contains(BUSYBOX), "images of b: {list_b}");
    // The docker-archive tars (for the VM tier) import under the registry names.
    for tar in [&imgs.busybox_archive, &imgs.pause_archive] {
        let tar = tar.to_str().context("archive path")?;
        b.ctr_run(&["-n", "k8s.io", "images", "import", tar])?;
    }
    let list_b = b.ctr_run(&["-n", "k8s.io", "images", "ls", "-q"])?;
    for name in [BUSYBOX, images::BUSYBOX_LATEST, PAUSE] {
        assert!(list_b.lines().any(|l| l == name), "{name} not imported: {list_b}");
    }

    let (fa, fb) = (Footprint::of(&a), Footprint::of(&b));
    drop(a);
    drop(b);
    fa.assert_gone();
    fb.assert_gone();
    Ok(())
}

#[test]
#[cfg_attr(not_root, ignore = "needs root (containerd, mounts, network namespaces)")]
fn running_containers_are_cleaned_up_on_drop() -> Result<()> {
    skip_unless_root!(Ok(()));
    ensure_images()?;
    let c = Containerd::start("harness-run")?;
    for image in [BUSYBOX, PAUSE] {
        c.ctr_run(&["-n", "k8s.io", "images", "pull", "--plain-http", image])?;
    }
    // A one-shot busybox container.
    let out = c
        .ctr()
        .args(["-n", "k8s.io", "run", "--rm", BUSYBOX, "harness-echo"])
        .args(["sh", "-c", "echo hello from $(cat /etc/hostname 2>/dev/null || hostname)"])
        .output()?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("hello from"),
        "ctr run: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // A pause container left running: Drop has to kill it, its shim and its mounts.
    c.ctr_run(&["-n", "k8s.io", "run", "-d", PAUSE, "harness-pause"])?;
    let tasks = c.ctr_run(&["-n", "k8s.io", "tasks", "ls"])?;
    assert!(tasks.lines().any(|l| l.starts_with("harness-pause") && l.contains("RUNNING")), "tasks: {tasks}");
    let pause_pid: u32 = tasks
        .lines()
        .find(|l| l.starts_with("harness-pause"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|p| p.parse().ok())
        .context("pause pid")?;
    // The task is RUNNING once runc started it; its init may still be exec'ing /pause for a moment.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    let mut cmd = std::fs::read(format!("/proc/{pause_pid}/cmdline"))?;
    while !cmd.starts_with(b"/pause") && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(50));
        cmd = std::fs::read(format!("/proc/{pause_pid}/cmdline"))?;
    }
    assert!(cmd.starts_with(b"/pause"), "pid {pause_pid} is not /pause: {}", String::from_utf8_lossy(&cmd));
    assert!(
        !mounts_under(&[c.run_dir().to_owned()]).is_empty(),
        "expected the pause rootfs to be mounted under {}",
        c.run_dir().display()
    );

    let f = Footprint::of(&c);
    drop(c);
    f.assert_gone();
    assert!(!Path::new(&format!("/proc/{pause_pid}")).exists(), "pause process {pause_pid} survived");
    Ok(())
}

#[test]
#[cfg_attr(not_root, ignore = "needs root (containerd, mounts, network namespaces)")]
fn cni_config_sets_up_the_instance_bridge() -> Result<()> {
    skip_unless_root!(Ok(()));
    let c = Containerd::start("harness-cni")?;
    let conflist: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(c.cni_conf_dir().join("10-rkt.conflist"))?)?;
    // Run the conflist's bridge plugin (with host-local) by hand in a netns of our own.
    let mut bridge_conf = conflist["plugins"][0].clone();
    bridge_conf["name"] = conflist["name"].clone();
    bridge_conf["cniVersion"] = conflist["cniVersion"].clone();
    let netns = PodNetns::new()?;
    let cni = |command: &str| -> Result<String> {
        let mut child = Command::new(c.cni_bin_dir().join("bridge"))
            .env("CNI_COMMAND", command)
            .env("CNI_CONTAINERID", "harness-cni-test")
            .env("CNI_NETNS", netns.path())
            .env("CNI_IFNAME", "eth0")
            .env("CNI_PATH", c.cni_bin_dir())
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()?;
        child.stdin.take().unwrap().write_all(bridge_conf.to_string().as_bytes())?;
        let out = child.wait_with_output()?;
        if !out.status.success() {
            bail!("bridge {command}: {}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    };
    let result = cni("ADD");
    let del = cni("DEL");
    drop(netns);
    let result: serde_json::Value = serde_json::from_str(&result?)?;
    del?;
    let ip = result["ips"][0]["address"].as_str().unwrap_or_default();
    let prefix = c.subnet().trim_end_matches("0/24").to_owned();
    assert!(ip.starts_with(&prefix), "pod IP {ip} not in {}", c.subnet());
    assert!(Path::new("/sys/class/net").join(c.bridge()).exists(), "bridge {} not created", c.bridge());
    let f = Footprint::of(&c);
    drop(c);
    f.assert_gone();
    Ok(())
}
