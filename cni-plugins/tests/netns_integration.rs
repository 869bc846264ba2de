//! Host-tier tests (root): every scenario runs in throw-away network namespaces. A "host"
//! namespace stands in for the node (bridge, iptables, sysctls live there, never in the real host
//! namespace) and one namespace per pod. Namespaces and IPAM directories are removed by Drop guards.
//! Without root the tests print `SKIPPED: needs root` and pass.

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use cni_plugins::netlink::Handle;
use serde_json::{json, Value};

const BRIDGE: &str = env!("CARGO_BIN_EXE_bridge");
const HOST_LOCAL: &str = env!("CARGO_BIN_EXE_host-local");
const LOOPBACK: &str = env!("CARGO_BIN_EXE_loopback");
const PORTMAP: &str = env!("CARGO_BIN_EXE_portmap");

static COUNTER: AtomicU32 = AtomicU32::new(0);

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

macro_rules! require_root {
    () => {
        if !is_root() {
            eprintln!("SKIPPED: needs root");
            return;
        }
    };
}

/// A network namespace held only by an open file of this process, gone when it is dropped
/// (or when the test process dies). No `ip netns add`: that bind-mounts the host's /run/netns
/// over itself, after which containerd cannot remove the namespaces of pods already running.
struct Netns {
    file: std::fs::File,
}

impl Netns {
    fn new() -> Netns {
        let file = std::thread::spawn(|| {
            // SAFETY: unshare(CLONE_NEWNET) only moves this short-lived thread into a new
            // network namespace; no memory is involved.
            if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
                return Err(std::io::Error::last_os_error());
            }
            std::fs::File::open("/proc/thread-self/ns/net")
        })
        .join()
        .expect("netns thread")
        .expect("unshare a network namespace");
        Netns { file }
    }
    /// The path other processes (plugins, nsenter) open the namespace by.
    fn path(&self) -> PathBuf {
        PathBuf::from(format!("/proc/{}/fd/{}", std::process::id(), self.file.as_raw_fd()))
    }
    /// Run `f` on a thread inside this namespace.
    fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        cni_plugins::netns::run_in(&self.file, || Ok(f())).expect("run in netns")
    }
    /// `nsenter --net=PATH cmd`: a command in this namespace.
    fn command(&self, program: &str) -> Command {
        let mut c = Command::new("nsenter");
        c.arg(format!("--net={}", self.path().display())).arg("--").arg(program);
        c
    }
    fn sh(&self, args: &[&str]) -> String {
        let out = self.command(args[0]).args(&args[1..]).output().expect("nsenter");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

/// A temporary IPAM data directory, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> TempDir {
        let p = std::env::temp_dir().join(format!(
            "cnt-ipam-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::SeqCst)
        ));
        TempDir(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

struct Out {
    code: i32,
    json: Value,
}

impl Out {
    fn err_code(&self) -> u64 {
        self.json["code"].as_u64().unwrap_or(0)
    }
}

/// Run a plugin, inside `host` when given, with the CNI environment.
fn cni(bin: &str, host: Option<&Netns>, cmd: &str, id: &str, netns: Option<&Path>, conf: &Value) -> Out {
    let bin_dir = Path::new(BRIDGE).parent().expect("bin dir");
    let mut c = match host {
        Some(h) => h.command(bin),
        None => Command::new(bin),
    };
    c.env("CNI_COMMAND", cmd)
        .env("CNI_CONTAINERID", id)
        .env("CNI_IFNAME", "eth0")
        .env("CNI_PATH", bin_dir)
        .env("CNI_ARGS", "IgnoreUnknown=1;K8S_POD_NAME=test")
        .env("CNI_NETNS", netns.map(|p| p.display().to_string()).unwrap_or_default())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped());
    let mut child = c.spawn().expect("spawn plugin");
    child.stdin.take().expect("stdin").write_all(conf.to_string().as_bytes()).expect("write conf");
    let out = child.wait_with_output().expect("wait plugin");
    let json = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    Out { code: out.status.code().unwrap_or(-1), json }
}

fn bridge_conf(net: u32, data_dir: &Path, masq: bool) -> Value {
    json!({
        "cniVersion": "1.0.0",
        "name": format!("cntnet{net}"),
        "type": "bridge",
        "bridge": format!("cnt{net}"),
        "isGateway": true,
        "isDefaultGateway": true,
        "ipMasq": masq,
        "hairpinMode": true,
        "ipam": {
            "type": "host-local",
            "dataDir": data_dir,
            "ranges": [[{"subnet": format!("10.98.{net}.0/24")}]],
            "routes": [{"dst": "0.0.0.0/0"}]
        }
    })
}

fn pod_ip(res: &Value) -> IpAddr {
    let a = res["ips"][0]["address"].as_str().expect("address");
    a.split('/').next().and_then(|s| s.parse().ok()).expect("ip")
}

/// Listen on `addr` inside `ns`; accept and echo one byte per connection in the background.
fn listen_in(ns: &Netns, addr: SocketAddr) -> TcpListener {
    let l = ns.run(|| TcpListener::bind(addr)).expect("bind");
    let l2 = l.try_clone().expect("clone listener");
    std::thread::spawn(move || {
        for mut s in l2.incoming().flatten() {
            let mut b = [0u8; 1];
            if s.read_exact(&mut b).is_ok() {
                let _ = s.write_all(&b);
            }
        }
    });
    l
}

/// Connect from inside `ns` and exchange one byte.
fn reach(ns: &Netns, addr: SocketAddr) -> bool {
    ns.run(|| {
        let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_secs(2)) else { return false };
        let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
        let mut b = [0u8; 1];
        s.write_all(b"x").is_ok() && s.read_exact(&mut b).is_ok() && &b == b"x"
    })
}

fn link_exists(ns: &Netns, name: &str) -> bool {
    let name = name.to_string();
    ns.run(move || Handle::new().ok().and_then(|mut h| h.link_by_name(&name).ok().flatten()).is_some())
}

#[test]
fn two_pods_reach_each_other_gateway_and_host_then_del_cleans_up() {
    require_root!();
    let host = Netns::new();
    let (a, b) = (Netns::new(), Netns::new());
    let dir = TempDir::new();
    let conf = bridge_conf(11, &dir.0, true);
    let ra = cni(BRIDGE, Some(&host), "ADD", "pod-a", Some(&a.path()), &conf);
    assert_eq!(ra.code, 0, "{}", ra.json);
    let rb = cni(BRIDGE, Some(&host), "ADD", "pod-b", Some(&b.path()), &conf);
    assert_eq!(rb.code, 0, "{}", rb.json);
    let (ipa, ipb) = (pod_ip(&ra.json), pod_ip(&rb.json));
    assert_ne!(ipa, ipb);
    assert_eq!(ra.json["ips"][0]["gateway"], "10.98.11.1");
    assert_eq!(ra.json["interfaces"][2]["sandbox"], a.path().display().to_string());
    assert!(ra.json["ips"][0].get("version").is_none(), "1.0.0 results carry no IP version");

    let _lb = listen_in(&b, SocketAddr::new(ipb, 8080));
    let _la = listen_in(&a, SocketAddr::new(ipa, 8080));
    let gw: IpAddr = "10.98.11.1".parse().unwrap();
    let _lh = listen_in(&host, SocketAddr::new(gw, 8081));
    assert!(reach(&a, SocketAddr::new(ipb, 8080)), "pod a -> pod b");
    assert!(reach(&b, SocketAddr::new(ipa, 8080)), "pod b -> pod a");
    assert!(reach(&a, SocketAddr::new(gw, 8081)), "pod a -> gateway");
    assert!(reach(&host, SocketAddr::new(ipa, 8080)), "host -> pod a");

    let chain = cni_plugins::iptables::chain_name("", "cntnet11", "pod-a");
    assert!(host.sh(&["iptables-save", "-t", "nat"]).contains(&chain));
    let veth = cni_plugins::bridge::host_veth_name("pod-a", "eth0");
    assert!(link_exists(&host, &veth));
    let ip_file = dir.0.join("cntnet11").join(ipa.to_string());
    assert_eq!(std::fs::read_to_string(&ip_file).unwrap(), "pod-a\r\neth0");

    let d = cni(BRIDGE, Some(&host), "DEL", "pod-a", Some(&a.path()), &conf);
    assert_eq!(d.code, 0, "{}", d.json);
    assert!(!link_exists(&host, &veth), "host veth removed");
    assert!(!link_exists(&a, "eth0"), "pod interface removed");
    assert!(!ip_file.exists(), "IP file removed");
    assert!(!host.sh(&["iptables-save", "-t", "nat"]).contains(&chain), "masquerade chain removed");
    // Pod b is untouched.
    assert!(reach(&host, SocketAddr::new(ipb, 8080)));

    // DEL is idempotent: again, and with the netns gone, and without CNI_NETNS.
    assert_eq!(cni(BRIDGE, Some(&host), "DEL", "pod-a", Some(&a.path()), &conf).code, 0);
    drop(a);
    assert_eq!(cni(BRIDGE, Some(&host), "DEL", "pod-a", Some(Path::new("/var/run/netns/cnt-gone")), &conf).code, 0);
    assert_eq!(cni(BRIDGE, Some(&host), "DEL", "pod-a", None, &conf).code, 0);
    assert_eq!(cni(BRIDGE, Some(&host), "DEL", "pod-b", Some(&b.path()), &conf).code, 0);
}

#[test]
fn second_add_for_same_container_fails_and_keeps_the_first() {
    require_root!();
    let host = Netns::new();
    let a = Netns::new();
    let dir = TempDir::new();
    let conf = bridge_conf(12, &dir.0, true);
    let first = cni(BRIDGE, Some(&host), "ADD", "pod-a", Some(&a.path()), &conf);
    assert_eq!(first.code, 0, "{}", first.json);
    let second = cni(BRIDGE, Some(&host), "ADD", "pod-a", Some(&a.path()), &conf);
    assert_ne!(second.code, 0);
    assert!(second.json["code"].as_u64().is_some() && second.json["msg"].is_string(), "{}", second.json);
    // The first attachment is intact: IP file, veth, address; a single allocation exists.
    let ip = pod_ip(&first.json);
    assert!(dir.0.join("cntnet12").join(ip.to_string()).exists());
    let files = std::fs::read_dir(dir.0.join("cntnet12"))
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("10."))
        .count();
    assert_eq!(files, 1);
    assert!(a.sh(&["ip", "-o", "addr", "show", "dev", "eth0"]).contains(&ip.to_string()));
    // After DEL, ADD works again.
    assert_eq!(cni(BRIDGE, Some(&host), "DEL", "pod-a", Some(&a.path()), &conf).code, 0);
    let again = cni(BRIDGE, Some(&host), "ADD", "pod-a", Some(&a.path()), &conf);
    assert_eq!(again.code, 0, "{}", again.json);
    assert_eq!(cni(BRIDGE, Some(&host), "DEL", "pod-a", Some(&a.path()), &conf).code, 0);
}

#[test]
fn fifty_concurrent_adds_get_distinct_ips() {
    require_root!();
    let host = Netns::new();
    let dir = TempDir::new();
    let conf = bridge_conf(13, &dir.0, false);
    let pods: Vec<Netns> = (0..50).map(|_| Netns::new()).collect();
    let results: Vec<Out> = std::thread::scope(|s| {
        let hs: Vec<_> = pods
            .iter()
            .enumerate()
            .map(|(i, p)| {
                let (host, conf) = (&host, &conf);
                s.spawn(move || cni(BRIDGE, Some(host), "ADD", &format!("pod-{i}"), Some(&p.path()), conf))
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let mut ips: Vec<IpAddr> = results
        .iter()
        .map(|r| {
            assert_eq!(r.code, 0, "{}", r.json);
            pod_ip(&r.json)
        })
        .collect();
    ips.sort();
    ips.dedup();
    assert_eq!(ips.len(), 50, "50 distinct IPs");
    std::thread::scope(|s| {
        for (i, p) in pods.iter().enumerate() {
            let (host, conf) = (&host, &conf);
            s.spawn(move || {
                assert_eq!(cni(BRIDGE, Some(host), "DEL", &format!("pod-{i}"), Some(&p.path()), conf).code, 0)
            });
        }
    });
    let left = std::fs::read_dir(dir.0.join("cntnet13"))
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("10."))
        .count();
    assert_eq!(left, 0);
}

#[test]
fn check_reports_a_deleted_veth() {
    require_root!();
    let host = Netns::new();
    let a = Netns::new();
    let dir = TempDir::new();
    let mut conf = bridge_conf(14, &dir.0, false);
    let add = cni(BRIDGE, Some(&host), "ADD", "pod-a", Some(&a.path()), &conf);
    assert_eq!(add.code, 0, "{}", add.json);
    conf["prevResult"] = add.json.clone();
    let ok = cni(BRIDGE, Some(&host), "CHECK", "pod-a", Some(&a.path()), &conf);
    assert_eq!(ok.code, 0, "{}", ok.json);
    let veth = cni_plugins::bridge::host_veth_name("pod-a", "eth0");
    host.sh(&["ip", "link", "del", &veth]);
    let bad = cni(BRIDGE, Some(&host), "CHECK", "pod-a", Some(&a.path()), &conf);
    assert_ne!(bad.code, 0);
    assert!(bad.json["msg"].as_str().unwrap_or("").contains("eth0"), "{}", bad.json);
    assert_eq!(cni(BRIDGE, Some(&host), "DEL", "pod-a", Some(&a.path()), &conf).code, 0);
}

#[test]
fn host_port_reaches_the_pod_and_del_removes_it() {
    require_root!();
    let host = Netns::new();
    let (a, b) = (Netns::new(), Netns::new());
    let dir = TempDir::new();
    let conf = bridge_conf(15, &dir.0, true);
    // A fresh namespace has lo down, and so no 127.0.0.0/8 local route.
    host.sh(&["ip", "link", "set", "lo", "up"]);
    let ra = cni(BRIDGE, Some(&host), "ADD", "pod-a", Some(&a.path()), &conf);
    assert_eq!(ra.code, 0, "{}", ra.json);
    let rb = cni(BRIDGE, Some(&host), "ADD", "pod-b", Some(&b.path()), &conf);
    assert_eq!(rb.code, 0, "{}", rb.json);
    let pm = json!({
        "cniVersion": "1.0.0", "name": "cntnet15", "type": "portmap",
        "capabilities": {"portMappings": true},
        "runtimeConfig": {"portMappings": [{"hostPort": 18080, "containerPort": 80, "protocol": "tcp"}]},
        "prevResult": ra.json
    });
    let p = cni(PORTMAP, Some(&host), "ADD", "pod-a", Some(&a.path()), &pm);
    assert_eq!(p.code, 0, "{}", p.json);
    assert_eq!(p.json["ips"], ra.json["ips"], "portmap passes prevResult through");
    assert_eq!(cni(PORTMAP, Some(&host), "CHECK", "pod-a", Some(&a.path()), &pm).code, 0);

    let ipa = pod_ip(&ra.json);
    let _l = listen_in(&a, SocketAddr::new(ipa, 80));
    let gw: IpAddr = "10.98.15.1".parse().unwrap();
    assert!(reach(&host, SocketAddr::new(gw, 18080)), "host -> hostIP:hostPort");
    assert!(reach(&host, "127.0.0.1:18080".parse().unwrap()), "host -> localhost:hostPort");
    assert!(reach(&b, SocketAddr::new(gw, 18080)), "other pod -> hostIP:hostPort");
    assert!(reach(&a, SocketAddr::new(gw, 18080)), "hairpin: pod -> its own hostPort");

    let d = cni(PORTMAP, Some(&host), "DEL", "pod-a", Some(&a.path()), &pm);
    assert_eq!(d.code, 0, "{}", d.json);
    let chain = cni_plugins::iptables::chain_name("DN-", "cntnet15", "pod-a");
    assert!(!host.sh(&["iptables-save", "-t", "nat"]).contains(&chain));
    assert!(!reach(&host, SocketAddr::new(gw, 18080)), "rule removed");
    assert_eq!(cni(PORTMAP, Some(&host), "DEL", "pod-a", Some(&a.path()), &pm).code, 0, "idempotent");
    for (id, ns) in [("pod-a", &a), ("pod-b", &b)] {
        assert_eq!(cni(BRIDGE, Some(&host), "DEL", id, Some(&ns.path()), &conf).code, 0);
    }
}

#[test]
fn loopback_brings_lo_up() {
    require_root!();
    let a = Netns::new();
    let conf = json!({"cniVersion": "1.0.0", "name": "lo", "type": "loopback"});
    let r = cni(LOOPBACK, None, "ADD", "pod-a", Some(&a.path()), &conf);
    assert_eq!(r.code, 0, "{}", r.json);
    assert_eq!(r.json["interfaces"][0]["name"], "lo");
    assert!(a.sh(&["ip", "-o", "link", "show", "lo"]).contains("UP"));
    assert_eq!(cni(LOOPBACK, None, "CHECK", "pod-a", Some(&a.path()), &conf).code, 0);
    assert_eq!(cni(LOOPBACK, None, "DEL", "pod-a", Some(&a.path()), &conf).code, 0);
    assert_eq!(cni(LOOPBACK, None, "DEL", "pod-a", Some(Path::new("/var/run/netns/cnt-gone")), &conf).code, 0);
}

// The error tests need no root: every one fails before any namespace is touched.
#[test]
fn error_codes_follow_the_spec() {
    let dir = TempDir::new();
    let ns = Some(Path::new("/var/run/netns/cnt-does-not-exist"));
    let good = bridge_conf(16, &dir.0, false);

    let malformed = cni_raw(BRIDGE, "ADD", b"{\"cniVersion\": \"1.0.0\", ");
    assert_eq!((malformed.code, malformed.err_code()), (1, 6), "malformed config: decode failure");

    let mut no_ipam = good.clone();
    no_ipam.as_object_mut().unwrap().remove("ipam");
    assert_eq!(cni(BRIDGE, None, "ADD", "x", ns, &no_ipam).err_code(), 7, "bridge without ipam");
    assert_eq!(cni(HOST_LOCAL, None, "ADD", "x", ns, &no_ipam).err_code(), 7, "host-local without ipam");

    let mut old = good.clone();
    old["cniVersion"] = json!("0.2.0");
    assert_eq!(cni(BRIDGE, None, "ADD", "x", ns, &old).err_code(), 1, "unsupported cniVersion");
    old["cniVersion"] = json!("2.0.0");
    assert_eq!(cni(HOST_LOCAL, None, "ADD", "x", ns, &old).err_code(), 1);

    let mut vlan = good.clone();
    vlan["vlan"] = json!(100);
    let v = cni(BRIDGE, None, "ADD", "x", ns, &vlan);
    assert_eq!(v.err_code(), 2, "unsupported field");
    assert!(v.json["msg"].as_str().unwrap().contains("vlan"));

    assert_eq!(cni(BRIDGE, None, "ADD", "bad/id", ns, &good).err_code(), 4, "invalid container ID");
    assert_eq!(cni(BRIDGE, None, "ADD", "x", ns, &good).err_code(), 3, "netns does not exist");

    let mut check_old = good.clone();
    check_old["cniVersion"] = json!("0.3.1");
    assert_eq!(cni(BRIDGE, None, "CHECK", "x", ns, &check_old).err_code(), 1, "CHECK needs 0.4.0+");

    let pm = json!({"cniVersion": "1.0.0", "name": "n", "type": "portmap", "runtimeConfig": {"portMappings": [{"hostPort": 1, "containerPort": 2}]}});
    assert_eq!(cni(PORTMAP, None, "ADD", "x", ns, &pm).err_code(), 7, "portmap without prevResult");

    let ver = cni(BRIDGE, None, "VERSION", "", None, &json!({"cniVersion": "0.4.0"}));
    assert_eq!(ver.code, 0);
    assert_eq!(ver.json["cniVersion"], "0.4.0");
    assert!(ver.json["supportedVersions"].as_array().unwrap().contains(&json!("1.0.0")));
    // Error documents carry the config's version.
    let e = cni(BRIDGE, None, "ADD", "x", ns, &vlan);
    assert_eq!(e.json["cniVersion"], "1.0.0");
}

fn cni_raw(bin: &str, cmd: &str, stdin: &[u8]) -> Out {
    let mut child = Command::new(bin)
        .env("CNI_COMMAND", cmd)
        .env("CNI_CONTAINERID", "x")
        .env("CNI_IFNAME", "eth0")
        .env("CNI_NETNS", "/var/run/netns/none")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn");
    child.stdin.take().expect("stdin").write_all(stdin).expect("write");
    let out = child.wait_with_output().expect("wait");
    Out { code: out.status.code().unwrap_or(-1), json: serde_json::from_slice(&out.stdout).unwrap_or(Value::Null) }
}

#[test]
fn host_local_direct_and_dual_stack_old_version() {
    // host-local alone needs no namespace; a 0.4.0 config gets "version" on each IP.
    let dir = TempDir::new();
    let conf = json!({
        "cniVersion": "0.4.0", "name": "cnthl", "type": "host-local",
        "ipam": {"type": "host-local", "dataDir": dir.0, "ranges": [[{"subnet": "10.98.17.0/24"}], [{"subnet": "fd98:17::/64"}]]}
    });
    let r = cni(HOST_LOCAL, None, "ADD", "c1", Some(Path::new("/x")), &conf);
    assert_eq!(r.code, 0, "{}", r.json);
    assert_eq!(r.json["ips"][0]["version"], "4");
    assert_eq!(r.json["ips"][1]["version"], "6");
    assert_eq!(r.json["ips"][1]["address"], "fd98:17::2/64");
    assert_eq!(cni(HOST_LOCAL, None, "CHECK", "c1", Some(Path::new("/x")), &conf).code, 0);
    assert_eq!(cni(HOST_LOCAL, None, "DEL", "c1", None, &conf).code, 0);
    assert_ne!(cni(HOST_LOCAL, None, "CHECK", "c1", Some(Path::new("/x")), &conf).code, 0);
    assert_eq!(cni(HOST_LOCAL, None, "DEL", "c1", None, &conf).code, 0, "DEL of a released allocation succeeds");
}
