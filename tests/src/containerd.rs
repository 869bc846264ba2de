//! Private, disposable containerd instances with the CRI plugin.
//!
//! Each [`Containerd`] has its own root (a fresh dir under `<state_dir>/instances`), its
//! own state dir and socket (`/run/rkt-<name>/containerd.sock`), its own registry config
//! (`hosts.toml` for 127.0.0.1:5000), and its own CNI network: a bridge + host-local +
//! portmap conflist with a bridge name, network name and `10.99.<n>.0/24` subnet that no
//! other running instance has (`n` is held with a lock file). The sandbox image is
//! [`crate::images::PAUSE`] and `restrict_oom_score_adj = true` (root here lacks
//! `CAP_SYS_RESOURCE`).
//!
//! Dropping it tears everything down: tasks and containers in every namespace, containerd
//! itself (SIGTERM, SIGKILL after 5 s), leftover shims and their children, runc state,
//! mounts under its root and state dirs, the pods' network namespaces, its bridge, its
//! portmap iptables rules, its CNI result cache, and its dirs. Instances left behind by
//! a test process that died are cleaned up by the next [`Containerd::start`].
//!
//! Set `RKUBELET_TEST_KEEP=1` to leave instances running after the test for debugging
//! (the next `Containerd::start`, in any process, sweeps them away).
//!
//! Call [`crate::images::ensure_images`] first in tests that pull images or run pods: the
//! sandbox image comes from the local registry.

use crate::images::{self, FileLock};
use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Where Debian's `containernetworking-plugins` puts the reference CNI plugins.
pub const REFERENCE_CNI_BIN_DIR: &str = "/usr/lib/cni";

/// The CNI plugins instances use: `$RKUBELET_CNI_BIN_DIR`, else our own plugins as built in the workspace's
/// `target/debug` (`cargo build -p cni-plugins`), else the reference plugins.
pub fn default_cni_bin_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("RKUBELET_CNI_BIN_DIR") {
        return PathBuf::from(dir);
    }
    if let Some(ours) = built_cni_plugins_dir() {
        return ours;
    }
    PathBuf::from(REFERENCE_CNI_BIN_DIR)
}

/// The workspace's build output holding our `bridge`, `host-local`, `loopback` and `portmap`, if built.
pub fn built_cni_plugins_dir() -> Option<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent()?;
    let target = std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|| root.join("target"));
    let dir = target.join("debug");
    ["bridge", "host-local", "loopback", "portmap"].iter().all(|p| dir.join(p).is_file()).then_some(dir)
}
/// How long [`ContainerdBuilder::start`] waits for containerd and its CRI plugin by default.
pub const DEFAULT_START_TIMEOUT: Duration = Duration::from_secs(15);
/// Longest accepted instance name (it goes into a Unix socket path).
pub const MAX_NAME_LEN: usize = 32;

/// Host-wide lock files and instance records (not under the state dir, so that stale
/// instances are found whatever `RKUBELET_TEST_STATE` was).
const RUN_BASE: &str = "/run/rkubelet-test";
const CTR_TIMEOUT: &str = "20s";

/// True when running as (effective) root.
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// Prints `SKIPPED: <test>: <reason>` straight to stderr, past libtest's output capture,
/// so that skips show up in `cargo test` output. Used by [`skip_unless!`](crate::skip_unless).
pub fn print_skip(test: &str, reason: &dyn fmt::Display) {
    let line = format!("SKIPPED: {test}: {reason}");
    let _ = writeln!(std::io::stderr(), "{line}");
    // Test runners hide a passing test's output; tests/run.sh lists these after the run so no skip goes unseen.
    if let Some(path) = std::env::var_os("RKUBELET_SKIP_LOG") {
        if let Ok(mut f) = fs::OpenOptions::new().create(true).append(true).open(path) {
            let _ = writeln!(f, "{line}");
        }
    }
}

#[doc(hidden)]
pub fn __fn_path<T>(_: T) -> &'static str {
    let name = std::any::type_name::<T>();
    name.strip_suffix("::__rkt_here").unwrap_or(name)
}

/// `skip_unless!(cond, reason)`: if `cond` is false, prints `SKIPPED: <test path>: <reason>`
/// (visible despite output capture) and returns from the test. For tests returning a
/// value, pass it: `skip_unless!(cond, "why", Ok(()))`.
#[macro_export]
macro_rules! skip_unless {
    ($cond:expr, $reason:expr) => {
        $crate::skip_unless!($cond, $reason, ())
    };
    ($cond:expr, $reason:expr, $ret:expr) => {
        if !$cond {
            fn __rkt_here() {}
            $crate::containerd::print_skip($crate::containerd::__fn_path(__rkt_here), &$reason);
            return $ret;
        }
    };
}

/// `skip_unless_root!()` (or `skip_unless_root!(Ok(()))` in a test returning `Result`):
/// skips the test with `SKIPPED: <test>: needs root` unless running as root.
#[macro_export]
macro_rules! skip_unless_root {
    () => {
        $crate::skip_unless!($crate::containerd::is_root(), "needs root (containerd, mounts, network namespaces)")
    };
    ($ret:expr) => {
        $crate::skip_unless!($crate::containerd::is_root(), "needs root (containerd, mounts, network namespaces)", $ret)
    };
}

/// Options for a [`Containerd`]; see [`Containerd::builder`].
#[derive(Debug, Clone)]
pub struct ContainerdBuilder {
    name: String,
    cni_bin_dir: PathBuf,
    sandbox_image: String,
    write_cni_config: bool,
    start_timeout: Duration,
    log_level: String,
    mount_namespace_of: Option<u32>,
}

impl ContainerdBuilder {
    /// Where the CNI plugins are (default [`default_cni_bin_dir`]).
    pub fn cni_bin_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.cni_bin_dir = dir.into();
        self
    }

    /// The CRI `sandbox_image` (default [`images::PAUSE`]).
    pub fn sandbox_image(mut self, image: impl Into<String>) -> Self {
        self.sandbox_image = image.into();
        self
    }

    /// Start without a CNI config in `conf_dir` (CRI then reports `NetworkReady=false`
    /// until [`Containerd::write_cni_config`] is called).
    pub fn without_cni_config(mut self) -> Self {
        self.write_cni_config = false;
        self
    }

    /// How long to wait for containerd and its CRI plugin (default 15 s).
    pub fn start_timeout(mut self, timeout: Duration) -> Self {
        self.start_timeout = timeout;
        self
    }

    /// Run containerd in the mount namespace of process `pid` (through `nsenter`): an agent that owns host-wide
    /// paths (the Go kubelet's `/var/log/pods`) then sees and cleans only its own bind-mounted copies.
    pub fn mount_namespace_of(mut self, pid: u32) -> Self {
        self.mount_namespace_of = Some(pid);
        self
    }

    /// containerd's `[debug] level` (default `info`).
    pub fn log_level(mut self, level: impl Into<String>) -> Self {
        self.log_level = level.into();
        self
    }

    /// Starts the instance and waits until its CRI plugin is up.
    pub fn start(self) -> Result<Containerd> {
        Containerd::start_with(self)
    }
}

/// What teardown needs; also written to `/run/rkubelet-test/names/<name>.json` so that a
/// later process can clean up after one that died.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Record {
    name: String,
    owner_pid: u32,
    dir: PathBuf,
    run_dir: PathBuf,
    socket: PathBuf,
    config: PathBuf,
    containerd_pid: Option<u32>,
    bridge: String,
    network: String,
}

/// A running private containerd. See the [module docs](self).
pub struct Containerd {
    rec: Record,
    cni_conf_dir: PathBuf,
    cni_bin_dir: PathBuf,
    log_path: PathBuf,
    subnet_index: u8,
    child: Option<Child>,
    torn_down: bool,
    _subnet_lock: FileLock,
    _name_lock: FileLock,
}

impl fmt::Debug for Containerd {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Containerd")
            .field("name", &self.rec.name)
            .field("socket", &self.rec.socket)
            .field("dir", &self.rec.dir)
            .field("pid", &self.rec.containerd_pid)
            .field("bridge", &self.rec.bridge)
            .field("subnet", &self.subnet())
            .finish()
    }
}

impl Containerd {
    /// Starts an instance with default options. `name` (1..=32 of `[A-Za-z0-9_.-]`)
    /// names its socket `/run/rkt-<name>/containerd.sock`; an instance of the same name
    /// running in another thread or process is waited for (up to 60 s).
    pub fn start(name: &str) -> Result<Containerd> {
        Self::builder(name).start()
    }

    /// Options for an instance; finish with [`ContainerdBuilder::start`].
    pub fn builder(name: &str) -> ContainerdBuilder {
        ContainerdBuilder {
            name: name.to_owned(),
            cni_bin_dir: default_cni_bin_dir(),
            sandbox_image: images::PAUSE.to_owned(),
            write_cni_config: true,
            start_timeout: DEFAULT_START_TIMEOUT,
            log_level: "info".to_owned(),
            mount_namespace_of: None,
        }
    }

    fn start_with(opts: ContainerdBuilder) -> Result<Containerd> {
        let name = opts.name.as_str();
        validate_name(name)?;
        if !is_root() {
            bail!("Containerd::start({name}) needs root");
        }
        let run_base = Path::new(RUN_BASE);
        let name_lock = wait_for_name_lock(name, Duration::from_secs(60))?;
        // Whatever dead test processes left behind (including an earlier `name`).
        sweep_stale(Some((name, &name_lock)));

        let (subnet_index, subnet_lock) = allocate_subnet(name)?;
        let hash = fnv1a(name.as_bytes());
        let bridge = format!("rkt{subnet_index:02x}{:06x}", hash & 0xff_ffff);
        let network = format!("rkt-{name}-{subnet_index}");

        let instances = images::state_dir().join("instances");
        fs::create_dir_all(&instances).with_context(|| format!("creating {}", instances.display()))?;
        let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
        let dir = instances.join(format!("{name}-{}-{nanos:x}", std::process::id()));
        let run_dir = PathBuf::from(format!("/run/rkt-{name}"));
        let rec = Record {
            name: name.to_owned(),
            owner_pid: std::process::id(),
            socket: run_dir.join("containerd.sock"),
            config: dir.join("config.toml"),
            dir,
            run_dir,
            containerd_pid: None,
            bridge,
            network,
        };
        let record_path = run_base.join("names").join(format!("{name}.json"));
        write_record(&record_path, &rec)?;

        let mut this = Containerd {
            cni_conf_dir: rec.dir.join("cni/net.d"),
            cni_bin_dir: opts.cni_bin_dir.clone(),
            log_path: rec.dir.join("containerd.log"),
            rec,
            subnet_index,
            child: None,
            torn_down: false,
            _subnet_lock: subnet_lock,
            _name_lock: name_lock,
        };
        // From here on, Drop cleans up whatever part of the start happened.
        this.setup_and_spawn(&opts)?;
        write_record(&record_path, &this.rec)?;
        this.wait_ready(opts.start_timeout)?;
        Ok(this)
    }

    fn setup_and_spawn(&mut self, opts: &ContainerdBuilder) -> Result<()> {
        let dir = &self.rec.dir;
        for d in [dir.join("root"), dir.join("opt"), self.cni_conf_dir.clone()] {
            fs::create_dir_all(&d).with_context(|| format!("creating {}", d.display()))?;
        }
        if self.rec.run_dir.exists() {
            // Left by an instance nobody recorded (or a crashed setup): nothing can be
            // mounted there any more after sweep_stale; start clean.
            unmount_under(std::slice::from_ref(&self.rec.run_dir));
            fs::remove_dir_all(&self.rec.run_dir).ok();
        }
        if Path::new("/sys/class/net").join(&self.rec.bridge).exists() {
            // Same subnet index and name as ours: a leftover of an earlier run of this test.
            run_quiet(Command::new("ip").args(["link", "del", &self.rec.bridge]));
        }
        let hosts_dir = dir.join("certs.d").join(images::REGISTRY);
        fs::create_dir_all(&hosts_dir)?;
        fs::write(
            hosts_dir.join("hosts.toml"),
            format!(
                "server = \"http://{r}\"\n[host.\"http://{r}\"]\n  capabilities = [\"pull\", \"resolve\"]\n  skip_verify = true\n",
                r = images::REGISTRY
            ),
        )?;
        fs::write(&self.rec.config, self.config_toml(opts))
            .with_context(|| format!("writing {}", self.rec.config.display()))?;
        if opts.write_cni_config {
            self.write_cni_config()?;
        }

        let log = fs::File::create(&self.log_path).with_context(|| format!("creating {}", self.log_path.display()))?;
        let mut command = match opts.mount_namespace_of {
            Some(pid) => {
                let mut c = Command::new("nsenter");
                c.arg("-t").arg(pid.to_string()).args(["-m", "--", "containerd"]);
                c
            }
            None => Command::new("containerd"),
        };
        let child = command
            .arg("--config")
            .arg(&self.rec.config)
            .env("PATH", path_with_sbin())
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("spawning containerd (is it installed? tests/scripts/install-deps.sh)")?;
        self.rec.containerd_pid = Some(child.id());
        self.child = Some(child);
        Ok(())
    }

    fn config_toml(&self, opts: &ContainerdBuilder) -> String {
        let q = toml_str;
        let d = &self.rec.dir;
        format!(
            r#"# written by rkubelet-tests (tests/src/containerd.rs)
version = 2
root = {root}
state = {state}
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper"]

[grpc]
  address = {sock}

[debug]
  level = {level}

[plugins."io.containerd.internal.v1.opt"]
  path = {opt}

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = {sandbox}
  restrict_oom_score_adj = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = {cni_bin}
    conf_dir = {cni_conf}
  [plugins."io.containerd.grpc.v1.cri".registry]
    config_path = {certs}
"#,
            root = q(&d.join("root")),
            state = q(&self.rec.run_dir),
            sock = q(&self.rec.socket),
            level = q(Path::new(&opts.log_level)),
            opt = q(&d.join("opt")),
            sandbox = q(Path::new(&opts.sandbox_image)),
            cni_bin = q(&self.cni_bin_dir),
            cni_conf = q(&self.cni_conf_dir),
            certs = q(&d.join("certs.d")),
        )
    }

    /// (Re)writes `<cni_conf_dir>/10-rkt.conflist`: the reference `bridge` (this
    /// instance's bridge, gateway `.1`, no masquerading, hairpin on) with `host-local`
    /// IPAM over [`subnet`](Self::subnet) (its data dir inside the instance dir), then
    /// `portmap`. CRI picks it up without a restart. Returns the file's path.
    pub fn write_cni_config(&self) -> Result<PathBuf> {
        let conf = serde_json::json!({
            "cniVersion": "1.0.0",
            "name": self.rec.network,
            "plugins": [
                {
                    "type": "bridge",
                    "bridge": self.rec.bridge,
                    "isGateway": true,
                    "ipMasq": false,
                    "hairpinMode": true,
                    "ipam": {
                        "type": "host-local",
                        "ranges": [[{ "subnet": self.subnet(), "gateway": self.gateway() }]],
                        "routes": [{ "dst": "0.0.0.0/0" }],
                        "dataDir": self.rec.dir.join("cni/ipam"),
                    }
                },
                { "type": "portmap", "capabilities": { "portMappings": true } }
            ]
        });
        fs::create_dir_all(&self.cni_conf_dir)?;
        let path = self.cni_conf_dir.join("10-rkt.conflist");
        let tmp = self.cni_conf_dir.join(".10-rkt.conflist.tmp");
        fs::write(&tmp, serde_json::to_string_pretty(&conf)? + "\n")?;
        fs::rename(&tmp, &path)?;
        Ok(path)
    }

    fn wait_ready(&mut self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        let mut last = String::from("socket not created yet");
        loop {
            if let Some(child) = self.child.as_mut() {
                if let Some(status) = child.try_wait()? {
                    self.child = None;
                    bail!(
                        "containerd {} exited during startup ({status}); log {}:\n{}",
                        self.rec.name,
                        self.log_path.display(),
                        self.log_tail()
                    );
                }
            }
            if self.rec.socket.exists() {
                match self.cri_status() {
                    Ok(status) if status == "ok" => return Ok(()),
                    Ok(status) if status == "error" || status == "skip" => bail!(
                        "containerd {}: CRI plugin status {status}; log {}:\n{}",
                        self.rec.name,
                        self.log_path.display(),
                        self.log_tail()
                    ),
                    Ok(status) => last = format!("CRI plugin status {status:?}"),
                    Err(e) => last = format!("{e:#}"),
                }
            }
            if Instant::now() >= deadline {
                bail!(
                    "containerd {} not ready after {timeout:?} ({last}); log {}:\n{}",
                    self.rec.name,
                    self.log_path.display(),
                    self.log_tail()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `ctr version` must work, then the status column of `io.containerd.grpc.v1 cri`
    /// in `ctr plugins ls` ("" while it is not listed).
    fn cri_status(&self) -> Result<String> {
        self.ctr_run(&["version"])?;
        let plugins = self.ctr_run(&["plugins", "ls"])?;
        Ok(plugins
            .lines()
            .map(|l| l.split_whitespace().collect::<Vec<_>>())
            .find(|f| f.len() >= 3 && f[0] == "io.containerd.grpc.v1" && f[1] == "cri")
            .map(|f| f[f.len() - 1].to_owned())
            .unwrap_or_default())
    }

    /// The instance name given to [`start`](Self::start).
    pub fn name(&self) -> &str {
        &self.rec.name
    }

    /// The CRI endpoint, `unix:///run/rkt-<name>/containerd.sock`.
    pub fn endpoint(&self) -> String {
        format!("unix://{}", self.rec.socket.display())
    }

    /// `/run/rkt-<name>/containerd.sock`.
    pub fn socket_path(&self) -> &Path {
        &self.rec.socket
    }

    /// The instance dir: config, log, containerd root (`root/`), CNI config and IPAM data.
    pub fn dir(&self) -> &Path {
        &self.rec.dir
    }

    /// containerd's state dir, `/run/rkt-<name>`.
    pub fn run_dir(&self) -> &Path {
        &self.rec.run_dir
    }

    /// containerd's config file.
    pub fn config_path(&self) -> &Path {
        &self.rec.config
    }

    /// containerd's stdout/stderr.
    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// The last 60 lines of containerd's log.
    pub fn log_tail(&self) -> String {
        match fs::read(&self.log_path) {
            Ok(bytes) => {
                let text = String::from_utf8_lossy(&bytes);
                let lines: Vec<&str> = text.lines().collect();
                lines[lines.len().saturating_sub(60)..].join("\n")
            }
            Err(e) => format!("(cannot read {}: {e})", self.log_path.display()),
        }
    }

    /// The CRI plugin's CNI `conf_dir` (inside the instance dir).
    pub fn cni_conf_dir(&self) -> &Path {
        &self.cni_conf_dir
    }

    /// The CRI plugin's CNI `bin_dir`.
    pub fn cni_bin_dir(&self) -> &Path {
        &self.cni_bin_dir
    }

    /// This instance's pod subnet, `10.99.<n>.0/24`.
    pub fn subnet(&self) -> String {
        format!("10.99.{}.0/24", self.subnet_index)
    }

    /// The bridge's address in [`subnet`](Self::subnet), `10.99.<n>.1`.
    pub fn gateway(&self) -> String {
        format!("10.99.{}.1", self.subnet_index)
    }

    /// The bridge the CNI config creates, `rkt<n:02x><hash6>`.
    pub fn bridge(&self) -> &str {
        &self.rec.bridge
    }

    /// The CNI network name, `rkt-<name>-<n>`.
    pub fn network_name(&self) -> &str {
        &self.rec.network
    }

    /// containerd's pid.
    pub fn pid(&self) -> u32 {
        self.rec.containerd_pid.unwrap_or(0)
    }

    /// A `ctr --address <socket>` command to add arguments to.
    pub fn ctr(&self) -> Command {
        ctr_cmd(&self.rec.socket)
    }

    /// Runs `ctr --address <socket> <args>`; its stdout, or an error with its stderr.
    pub fn ctr_run(&self, args: &[&str]) -> Result<String> {
        ctr_output(&self.rec.socket, args)
    }

    /// Stops and cleans up now (what `Drop` does), returning what could not be cleaned.
    pub fn stop(mut self) -> Vec<String> {
        self.teardown()
    }

    fn teardown(&mut self) -> Vec<String> {
        if self.torn_down {
            return Vec::new();
        }
        self.torn_down = true;
        let warnings = teardown(&self.rec, self.child.take());
        let record_path = Path::new(RUN_BASE).join("names").join(format!("{}.json", self.rec.name));
        if warnings.is_empty() {
            fs::remove_file(record_path).ok();
        }
        warnings
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        if self.torn_down {
            return;
        }
        if std::env::var_os("RKUBELET_TEST_KEEP").is_some_and(|v| v == "1") {
            eprintln!(
                "RKUBELET_TEST_KEEP=1: leaving containerd {} running (socket {}, dir {})",
                self.rec.name,
                self.rec.socket.display(),
                self.rec.dir.display()
            );
            if let Some(child) = self.child.take() {
                std::mem::forget(child);
            }
            return;
        }
        if std::thread::panicking() {
            eprintln!(
                "--- containerd {} log tail ({}) ---\n{}\n---",
                self.rec.name,
                self.log_path.display(),
                self.log_tail()
            );
        }
        for w in self.teardown() {
            eprintln!("containerd {} teardown: {w}", self.rec.name);
        }
    }
}

// ---------------------------------------------------------------------------------------
// start helpers

fn validate_name(name: &str) -> Result<()> {
    if name.is_empty()
        || name.len() > MAX_NAME_LEN
        || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
        || name.starts_with('.')
    {
        bail!("invalid containerd instance name {name:?}: use 1..={MAX_NAME_LEN} of [A-Za-z0-9_.-]");
    }
    Ok(())
}

fn wait_for_name_lock(name: &str, timeout: Duration) -> Result<FileLock> {
    let path = Path::new(RUN_BASE).join("names").join(format!("{name}.lock"));
    let deadline = Instant::now() + timeout;
    let mut warned = false;
    loop {
        if let Some(lock) = FileLock::try_lock(&path)? {
            return Ok(lock);
        }
        if Instant::now() >= deadline {
            bail!("containerd instance name {name:?} stays in use by another test ({timeout:?}); use unique names");
        }
        if !warned {
            eprintln!("containerd instance name {name:?} in use; waiting");
            warned = true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Picks `n` in 1..=254, starting from a hash of `name`, whose lock file is free and for
/// which no route to 10.99.n.0/24 exists, and holds its lock.
fn allocate_subnet(name: &str) -> Result<(u8, FileLock)> {
    let start = (fnv1a(name.as_bytes()) % 254) as usize;
    let routes = fs::read_to_string("/proc/net/route").unwrap_or_default();
    for i in 0..254 {
        let n = ((start + i) % 254 + 1) as u8;
        let path = Path::new(RUN_BASE).join("subnets").join(format!("{n}.lock"));
        if let Some(lock) = FileLock::try_lock(&path)? {
            // /proc/net/route: destination as little-endian hex, 10.99.n.0 -> 00nn630A.
            let dest = format!("00{n:02X}630A");
            let routed = routes.lines().skip(1).any(|l| l.split_whitespace().nth(1) == Some(dest.as_str()));
            if !routed {
                return Ok((n, lock));
            }
        }
    }
    bail!("no free 10.99.<n>.0/24 subnet left for containerd instance {name:?}")
}

fn write_record(path: &Path, rec: &Record) -> Result<()> {
    if let Some(p) = path.parent() {
        fs::create_dir_all(p)?;
    }
    let tmp = path.with_extension("json.tmp");
    fs::write(&tmp, serde_json::to_vec_pretty(rec)?)?;
    fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))
}

/// Cleans up instances whose owning process is gone: every recorded instance whose name
/// lock is free, and instance dirs of dead processes. `held` is a name whose lock the
/// caller already holds (so its record is stale too).
fn sweep_stale(held: Option<(&str, &FileLock)>) {
    let names_dir = Path::new(RUN_BASE).join("names");
    if let Ok(entries) = fs::read_dir(&names_dir) {
        for entry in entries.flatten() {
            let path = entry.path();
            if path.extension().is_none_or(|e| e != "json") {
                continue;
            }
            let Some(name) = path.file_stem().and_then(|s| s.to_str()).map(str::to_owned) else {
                continue;
            };
            let _lock = match held {
                Some((h, _)) if h == name => None,
                _ => match FileLock::try_lock(&names_dir.join(format!("{name}.lock"))) {
                    Ok(Some(l)) => Some(l),
                    _ => continue, // a live instance
                },
            };
            let Ok(rec) = fs::read(&path)
                .map_err(anyhow::Error::from)
                .and_then(|b| serde_json::from_slice::<Record>(&b).map_err(Into::into))
            else {
                fs::remove_file(&path).ok();
                continue;
            };
            eprintln!(
                "containerd harness: cleaning up stale instance {name} (dir {}, pid {:?})",
                rec.dir.display(),
                rec.containerd_pid
            );
            let warnings = teardown(&rec, None);
            for w in &warnings {
                eprintln!("stale instance {name}: {w}");
            }
            if warnings.is_empty() {
                fs::remove_file(&path).ok();
            }
        }
    }
    // Instance dirs of dead processes that lost their record.
    let instances = images::state_dir().join("instances");
    if let Ok(entries) = fs::read_dir(&instances) {
        for entry in entries.flatten() {
            let dir = entry.path();
            let fname = entry.file_name().to_string_lossy().into_owned();
            let mut parts = fname.rsplitn(3, '-');
            let (_nanos, pid) = (parts.next(), parts.next());
            let Some(pid) = pid.and_then(|p| p.parse::<u32>().ok()) else {
                continue;
            };
            if pid == std::process::id() || Path::new(&format!("/proc/{pid}")).exists() {
                continue;
            }
            unmount_under(std::slice::from_ref(&dir));
            if mounts_under(std::slice::from_ref(&dir)).is_empty() {
                fs::remove_dir_all(&dir).ok();
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// teardown

fn teardown(rec: &Record, mut child: Option<Child>) -> Vec<String> {
    let mut warnings = Vec::new();
    let mut netns: BTreeSet<PathBuf> = BTreeSet::new();
    let mut containers: Vec<(String, String)> = Vec::new();

    // (A dead containerd would make every ctr call wait for its connect timeout.)
    let alive = match child.as_mut() {
        Some(c) => matches!(c.try_wait(), Ok(None)),
        None => rec.containerd_pid.is_some_and(|p| is_our_containerd(p, rec)),
    };
    // 1. Tasks and containers, through containerd while it is up.
    if alive && rec.socket.exists() {
        if let Err(e) = remove_containers(rec, &mut netns, &mut containers) {
            warnings.push(format!("removing containers: {e:#}"));
        }
    }
    // 2. containerd itself.
    if let Err(e) = stop_containerd(rec, child) {
        warnings.push(format!("stopping containerd: {e:#}"));
    }
    // 3. Shims (they outlive containerd) and the container processes under them.
    let procs = processes();
    let shims: Vec<u32> = procs
        .iter()
        .filter(|p| {
            p.args.first().is_some_and(|a| a.contains("containerd-shim"))
                && p.args.iter().any(|a| Path::new(a) == rec.socket)
        })
        .map(|p| p.pid)
        .collect();
    if !shims.is_empty() {
        let mut victims = descendants(&procs, &shims);
        victims.extend(&shims);
        kill_and_wait(&victims, libc::SIGKILL, Duration::from_secs(3));
    }
    // 4. runc state of containers that were not deleted properly.
    for (ns, id) in &containers {
        let root = format!("/run/containerd/runc/{ns}");
        if Path::new(&root).join(id).exists() {
            run_quiet(Command::new("runc").args(["--root", &root, "delete", "--force", id]));
        }
    }
    // 5. Mounts under the root and state dirs, then the pods' network namespaces.
    let prefixes = [rec.dir.clone(), rec.run_dir.clone()];
    unmount_under(&prefixes);
    for ns in &netns {
        unmount_under(std::slice::from_ref(ns));
        if let Err(e) = fs::remove_file(ns) {
            if e.kind() != std::io::ErrorKind::NotFound {
                warnings.push(format!("removing {}: {e}", ns.display()));
            }
        }
    }
    // 6. Network: the bridge, portmap rules, libcni's result cache.
    if Path::new("/sys/class/net").join(&rec.bridge).exists() {
        let out = Command::new("ip").args(["link", "del", &rec.bridge]).output();
        match out {
            Ok(o) if o.status.success() => {}
            Ok(o) => {
                warnings.push(format!("ip link del {}: {}", rec.bridge, String::from_utf8_lossy(&o.stderr).trim()))
            }
            Err(e) => warnings.push(format!("ip link del {}: {e}", rec.bridge)),
        }
    }
    remove_iptables_rules(&rec.network);
    if let Ok(entries) = fs::read_dir("/var/lib/cni/results") {
        let prefix = format!("{}-", rec.network);
        for e in entries.flatten() {
            if e.file_name().to_string_lossy().starts_with(&prefix) {
                fs::remove_file(e.path()).ok();
            }
        }
    }
    // 7. The dirs, unless something is still mounted in them.
    let left = mounts_under(&prefixes);
    if left.is_empty() {
        for d in &prefixes {
            if let Err(e) = fs::remove_dir_all(d) {
                if e.kind() != std::io::ErrorKind::NotFound {
                    warnings.push(format!("removing {}: {e}", d.display()));
                }
            }
        }
    } else {
        warnings.push(format!(
            "still mounted, not removing {} / {}: {left:?}",
            rec.dir.display(),
            rec.run_dir.display()
        ));
    }
    warnings
}

fn remove_containers(
    rec: &Record,
    netns: &mut BTreeSet<PathBuf>,
    containers: &mut Vec<(String, String)>,
) -> Result<()> {
    let namespaces = ctr_output(&rec.socket, &["namespaces", "ls", "-q"])?;
    for ns in namespaces.lines().map(str::trim).filter(|l| !l.is_empty()) {
        let ids: Vec<String> = ctr_output(&rec.socket, &["-n", ns, "containers", "ls", "-q"])?
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(str::to_owned)
            .collect();
        if ids.is_empty() {
            continue;
        }
        for id in &ids {
            containers.push((ns.to_owned(), id.clone()));
            if let Ok(info) = ctr_output(&rec.socket, &["-n", ns, "containers", "info", id]) {
                netns.extend(netns_paths(&info).into_iter().map(|p| canonical_parent(&p)));
            }
        }
        let tasks: Vec<String> = ctr_output(&rec.socket, &["-n", ns, "tasks", "ls", "-q"])
            .unwrap_or_default()
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(str::to_owned)
            .collect();
        if !tasks.is_empty() {
            let mut args = vec!["-n", ns, "tasks", "delete", "--force"];
            args.extend(tasks.iter().map(String::as_str));
            // Errors (e.g. a task that exited meanwhile) are dealt with below.
            let _ = ctr_output(&rec.socket, &args);
        }
        let mut args = vec!["-n", ns, "containers", "delete"];
        args.extend(ids.iter().map(String::as_str));
        let _ = ctr_output(&rec.socket, &args);
    }
    Ok(())
}

/// Network namespace paths in the spec of `ctr containers info` output.
fn netns_paths(info: &str) -> Vec<PathBuf> {
    let Ok(v) = serde_json::from_str::<serde_json::Value>(info) else {
        return Vec::new();
    };
    let Some(nss) = v.pointer("/Spec/linux/namespaces").and_then(|n| n.as_array()) else {
        return Vec::new();
    };
    nss.iter()
        .filter(|n| n.get("type").and_then(|t| t.as_str()) == Some("network"))
        .filter_map(|n| n.get("path").and_then(|p| p.as_str()))
        .filter(|p| p.starts_with("/var/run/netns/") || p.starts_with("/run/netns/"))
        .map(PathBuf::from)
        .collect()
}

/// `p` with its parent dir canonicalised (/var/run/netns/x -> /run/netns/x), as mount
/// points appear in /proc/self/mountinfo.
fn canonical_parent(p: &Path) -> PathBuf {
    match (p.parent().map(fs::canonicalize), p.file_name()) {
        (Some(Ok(parent)), Some(name)) => parent.join(name),
        _ => p.to_owned(),
    }
}

fn is_our_containerd(pid: u32, rec: &Record) -> bool {
    let args = cmdline(pid);
    args.first().is_some_and(|a| a.ends_with("containerd"))
        && args.iter().any(|a| Path::new(a) == rec.config)
        && !is_zombie(pid)
}

fn stop_containerd(rec: &Record, child: Option<Child>) -> Result<()> {
    if let Some(mut child) = child {
        let pid = child.id() as libc::pid_t;
        // SAFETY: signalling our own, not yet reaped, child.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if child.try_wait()?.is_some() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        child.kill().ok();
        child.wait()?;
        return Ok(());
    }
    let Some(pid) = rec.containerd_pid else {
        return Ok(());
    };
    if is_our_containerd(pid, rec) {
        kill_and_wait(&[pid], libc::SIGTERM, Duration::from_secs(5));
        if is_our_containerd(pid, rec) {
            kill_and_wait(&[pid], libc::SIGKILL, Duration::from_secs(2));
        }
        if is_our_containerd(pid, rec) {
            bail!("containerd pid {pid} does not die");
        }
    }
    Ok(())
}

/// Removes nat rules whose comment names `network` (the reference portmap's `dnat name: "<network>"`; our
/// plugins' `name: <network> id: <container>`, portmap's and the bridge's masquerade alike) and the per-container
/// chains they jump to.
fn remove_iptables_rules(network: &str) {
    let Ok(out) = Command::new("iptables").args(["-w", "-t", "nat", "-S"]).env("PATH", path_with_sbin()).output()
    else {
        return;
    };
    let text = String::from_utf8_lossy(&out.stdout);
    let quoted = format!("\\\"{network}\\\"");
    let ours = format!("name: {network} id: ");
    let mut chains = BTreeSet::new();
    for line in text.lines() {
        let Some(rule) = line.strip_prefix("-A ") else {
            continue;
        };
        if !rule.contains(&quoted) && !rule.contains(&ours) {
            continue;
        }
        if let Some(target) = rule.split(" -j ").nth(1).and_then(|t| t.split(' ').next()) {
            if target.starts_with("CNI-") && !target.starts_with("CNI-HOSTPORT-") {
                chains.insert(target.to_owned());
            }
        }
        // iptables -S quotes like a shell would; let sh split it back.
        run_quiet(Command::new("sh").arg("-c").arg(format!("iptables -w -t nat -D {rule}")));
    }
    for chain in chains {
        run_quiet(Command::new("iptables").args(["-w", "-t", "nat", "-F", &chain]));
        run_quiet(Command::new("iptables").args(["-w", "-t", "nat", "-X", &chain]));
    }
}

// ---------------------------------------------------------------------------------------
// mounts

fn decode_mountinfo_path(s: &str) -> PathBuf {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 3 < b.len() && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c)) {
            out.push((b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    use std::os::unix::ffi::OsStringExt;
    PathBuf::from(std::ffi::OsString::from_vec(out))
}

/// Mount points at or below any of `prefixes`, innermost (latest) first.
pub fn mounts_under(prefixes: &[PathBuf]) -> Vec<PathBuf> {
    let info = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut found: Vec<PathBuf> = info
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(decode_mountinfo_path)
        .filter(|m| prefixes.iter().any(|p| m.starts_with(p)))
        .collect();
    found.reverse();
    found
}

/// Unmounts (lazily if busy) everything at or below `prefixes`.
pub fn unmount_under(prefixes: &[PathBuf]) {
    for _ in 0..5 {
        let mounts = mounts_under(prefixes);
        if mounts.is_empty() {
            return;
        }
        for m in mounts {
            use std::os::unix::ffi::OsStrExt;
            let Ok(c) = std::ffi::CString::new(m.as_os_str().as_bytes()) else {
                continue;
            };
            // SAFETY: a valid NUL-terminated path.
            if unsafe { libc::umount2(c.as_ptr(), 0) } != 0 {
                // SAFETY: as above.
                unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// processes

struct Proc {
    pid: u32,
    ppid: u32,
    args: Vec<String>,
}

fn cmdline(pid: u32) -> Vec<String> {
    fs::read(format!("/proc/{pid}/cmdline"))
        .map(|b| {
            b.split(|c| *c == 0).filter(|a| !a.is_empty()).map(|a| String::from_utf8_lossy(a).into_owned()).collect()
        })
        .unwrap_or_default()
}

/// (state, ppid) from /proc/<pid>/stat.
fn stat(pid: u32) -> Option<(char, u32)> {
    let s = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &s[s.rfind(')')? + 2..];
    let mut f = rest.split(' ');
    let state = f.next()?.chars().next()?;
    let ppid = f.next()?.parse().ok()?;
    Some((state, ppid))
}

fn is_zombie(pid: u32) -> bool {
    matches!(stat(pid), Some(('Z', _)) | Some(('X', _)))
}

fn processes() -> Vec<Proc> {
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|pid| {
            let (_, ppid) = stat(pid)?;
            Some(Proc { pid, ppid, args: cmdline(pid) })
        })
        .collect()
}

fn descendants(procs: &[Proc], roots: &[u32]) -> Vec<u32> {
    let mut children: HashMap<u32, Vec<u32>> = HashMap::new();
    for p in procs {
        children.entry(p.ppid).or_default().push(p.pid);
    }
    let mut out = Vec::new();
    let mut stack: Vec<u32> = roots.to_vec();
    while let Some(p) = stack.pop() {
        for &c in children.get(&p).map(Vec::as_slice).unwrap_or(&[]) {
            out.push(c);
            stack.push(c);
        }
    }
    out
}

fn kill_and_wait(pids: &[u32], sig: libc::c_int, timeout: Duration) {
    for &pid in pids {
        // SAFETY: plain kill(2).
        unsafe { libc::kill(pid as libc::pid_t, sig) };
    }
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if pids.iter().all(|&p| !Path::new(&format!("/proc/{p}")).exists() || is_zombie(p)) {
            return;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
}

// ---------------------------------------------------------------------------------------
// small helpers

fn ctr_cmd(socket: &Path) -> Command {
    let mut c = Command::new("ctr");
    c.arg("--address")
        .arg(socket)
        .args(["--connect-timeout", "5s", "--timeout", CTR_TIMEOUT])
        .env_remove("CONTAINERD_NAMESPACE")
        .env("PATH", path_with_sbin())
        .stdin(Stdio::null());
    c
}

fn ctr_output(socket: &Path, args: &[&str]) -> Result<String> {
    let out: Output = ctr_cmd(socket).args(args).output().context("running ctr (is containerd installed?)")?;
    if !out.status.success() {
        bail!("ctr {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn run_quiet(cmd: &mut Command) {
    let _ = cmd.env("PATH", path_with_sbin()).stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null()).status();
}

/// `$PATH` plus the sbin dirs (runc, iptables and ip live there on Debian).
fn path_with_sbin() -> String {
    let mut path = std::env::var("PATH").unwrap_or_default();
    for d in ["/usr/local/sbin", "/usr/local/bin", "/usr/sbin", "/usr/bin", "/sbin", "/bin"] {
        if !path.split(':').any(|p| p == d) {
            if !path.is_empty() {
                path.push(':');
            }
            path.push_str(d);
        }
    }
    path
}

/// A TOML basic string.
fn toml_str(p: &Path) -> String {
    let s = p.to_string_lossy();
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(validate_name("a").is_ok());
        assert!(validate_name("harness-a_1.x").is_ok());
        assert!(validate_name("").is_err());
        assert!(validate_name("a/b").is_err());
        assert!(validate_name(".a").is_err());
        assert!(validate_name(&"x".repeat(MAX_NAME_LEN + 1)).is_err());
    }

    #[test]
    fn mountinfo_escapes() {
        assert_eq!(decode_mountinfo_path("/run/a\\040b\\134c"), PathBuf::from("/run/a b\\c"));
    }

    #[test]
    fn netns_from_info() {
        let info =
            r#"{"Spec":{"linux":{"namespaces":[{"type":"pid"},{"type":"network","path":"/var/run/netns/cni-1234"}]}}}"#;
        assert_eq!(netns_paths(info), vec![PathBuf::from("/var/run/netns/cni-1234")]);
        assert!(netns_paths("not json").is_empty());
    }

    #[test]
    fn toml_escaping() {
        assert_eq!(toml_str(Path::new("/a\"b")), "\"/a\\\"b\"");
    }
}
