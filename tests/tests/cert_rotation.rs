//! Staying joined: with `rotateCertificates: true` the node renews its client certificate before it expires, as
//! kubelet's certificate manager does, and every API client of the agent moves to the new certificate without a
//! restart. The node joins a private control plane from the kit (`../shared/k8s`, or `RKUBELET_K8S_KIT`; own state
//! folder and ports) through TLS bootstrap, and the test watches at least two rotations: `kubelet-client-current.pem`
//! pointed at a new `kubelet-client-<time>.pem` each time, with a new serial and a later `notBefore`, both renewals
//! filed by the node itself (CSR user `system:node:<name>`) and approved; the Node Ready and its Lease renewed
//! throughout, also after the first certificate has expired (so the agent must be using a later one); and a pod
//! created after the second rotation running and reporting its status.
//!
//! Why the signer issues 3-minute certificates (`K8S_SIGNING_DURATION=3m`): the controller-manager's signer backdates
//! `notBefore` by 5 minutes and, for certificates shorter than 8 hours, does not take that back from `notAfter`
//! (`pkg/controller/certificates/signer/signer.go` `Backdate: 5 * time.Minute, Short: 8 * time.Hour`, applied by
//! `authority/policies.go`), so a certificate issued at `t` lives from `t - 5m` to `t + d`, and kubelet's deadline at
//! 70–90 % of that lifetime falls at `t + 0.7d - 1.5m` to `t + 0.9d - 0.5m`. With the 10 minutes a rotation
//! comes 5.5 to 8.5 minutes after the last (two take up to 17 minutes); with 3 minutes it comes 36 to 132 s after,
//! and the first certificate expires 3 minutes after the bootstrap. Below 2m40s the deadline could fall before the
//! issue itself and the node would rotate without pause.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{ensure, Context, Result};
use k8s_openapi::api::certificates::v1::CertificateSigningRequest;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, ListParams};
use rkubelet_tests::agent::tail;
use rkubelet_tests::api_node::ApiNode;
use rkubelet_tests::apiserver::Cluster;
use rkubelet_tests::images::{FileLock, BUSYBOX};
use rkubelet_tests::kit::kit_dir;
use rkubelet_tests::skip_unless_root;
use serde_json::json;

const KIT_HOME: &str = "/var/lib/rkubelet-test/kit-rotation";
/// The private control plane: its own state folder and ports (not the shared kit's, nor the join or outage tests'),
/// and short-lived certificates.
const KIT_ENV: [(&str, &str); 6] = [
    ("K8S_HOME", KIT_HOME),
    ("K8S_APISERVER_PORT", "46443"),
    ("K8S_ETCD_PORT", "42379"),
    ("K8S_KCM_PORT", "41257"),
    ("K8S_SCHED_PORT", "41259"),
    ("K8S_SIGNING_DURATION", "3m"),
];
const SIGNING_DURATION: Duration = Duration::from_secs(180);
/// The signer's backdating of `notBefore` (see the module comment).
const BACKDATE: Duration = Duration::from_secs(300);
const START: Duration = Duration::from_secs(60);
/// Two rotations after the bootstrap: each deadline at most 0.9 × 8m − 5m = 132 s after the last issue, plus the
/// CSR round trips.
const TWO_ROTATIONS: Duration = Duration::from_secs(300);
/// kubelet renews its Lease every 10 s (a quarter of the 40 s lease duration); a longer silence is a failed renewal.
const LEASE_GAP: Duration = Duration::from_secs(25);
/// How long after the first certificate's expiry the node must still renew its lease.
const AFTER_EXPIRY: Duration = Duration::from_secs(15);
const POLL: Duration = Duration::from_secs(1);
const KUBELET_CLIENT_SIGNER: &str = "kubernetes.io/kube-apiserver-client-kubelet";

/// Runs a kit script with the private control plane's environment; returns the last line it printed (empty when
/// it printed none).
fn kit(script: &str, args: &[&str]) -> Result<String> {
    let path = kit_dir().join(script);
    let out = Command::new("bash")
        .arg(&path)
        .args(args)
        .envs(KIT_ENV)
        .output()
        .with_context(|| format!("run {}", path.display()))?;
    ensure!(
        out.status.success(),
        "{} {args:?} failed ({}):\n{}{}",
        path.display(),
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    Ok(stdout.lines().last().unwrap_or_default().to_owned())
}

/// A path a kit script printed last.
fn kit_path(script: &str) -> Result<PathBuf> {
    let line = kit(script, &[])?;
    ensure!(!line.is_empty(), "{script} printed no path");
    Ok(PathBuf::from(line))
}

/// The private control plane, stopped and its folder removed when dropped (also when the test fails); one test run
/// at a time holds it.
struct PrivateControlPlane {
    admin_kubeconfig: PathBuf,
    _lock: FileLock,
}

impl PrivateControlPlane {
    fn up() -> Result<Self> {
        let lock = FileLock::lock(Path::new(&format!("{KIT_HOME}.lock")))?;
        // From an empty etcd, so nothing of an earlier run is left in it.
        match kit("up.sh", &["--wipe"]).and_then(|admin| {
            ensure!(!admin.is_empty(), "up.sh printed no admin kubeconfig");
            Ok(PathBuf::from(admin))
        }) {
            Ok(admin_kubeconfig) => Ok(Self { admin_kubeconfig, _lock: lock }),
            Err(e) => {
                let _ = kit("down.sh", &[]);
                Err(e)
            }
        }
    }
}

impl Drop for PrivateControlPlane {
    fn drop(&mut self) {
        match kit("down.sh", &[]) {
            Ok(_) => {
                if let Err(e) = std::fs::remove_dir_all(KIT_HOME) {
                    eprintln!("removing {KIT_HOME}: {e}");
                }
            }
            Err(e) => eprintln!("stopping the private control plane: {e:#}"),
        }
    }
}

/// One client pair the node used: the file `kubelet-client-current.pem` pointed at, and its certificate.
#[derive(Debug, Clone, PartialEq)]
struct PairSeen {
    target: PathBuf,
    serial: String,
    not_before: SystemTime,
    not_after: SystemTime,
    seen_at: SystemTime,
}

fn current_pair(cert_dir: &Path) -> Result<PairSeen> {
    let link = cert_dir.join("kubelet-client-current.pem");
    // A plain file (no rotation) counts as its own target.
    let target = std::fs::read_link(&link).unwrap_or_else(|_| link.clone());
    let pem = std::fs::read(&link).with_context(|| format!("read {}", link.display()))?;
    let (_, block) = x509_parser::pem::parse_x509_pem(&pem).map_err(|e| anyhow::anyhow!("{}: {e}", link.display()))?;
    let cert = block.parse_x509().map_err(|e| anyhow::anyhow!("{}: {e}", link.display()))?;
    let at = |t: i64| SystemTime::UNIX_EPOCH + Duration::from_secs(t.max(0) as u64);
    Ok(PairSeen {
        target,
        serial: cert.raw_serial_as_string(),
        not_before: at(cert.validity().not_before.timestamp()),
        not_after: at(cert.validity().not_after.timestamp()),
        seen_at: SystemTime::now(),
    })
}

fn ready(n: &Node) -> bool {
    n.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

fn pod_ready(p: &Pod) -> bool {
    let s = p.status.as_ref();
    s.and_then(|s| s.phase.as_deref()) == Some("Running")
        && s.and_then(|s| s.conditions.as_ref())
            .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

fn serial_of_pem(pem: &[u8]) -> Option<String> {
    let (_, block) = x509_parser::pem::parse_x509_pem(pem).ok()?;
    Some(block.parse_x509().ok()?.raw_serial_as_string())
}

fn secs_since(t0: SystemTime, t: SystemTime) -> f64 {
    t.duration_since(t0).map(|d| d.as_secs_f64()).unwrap_or_else(|e| -e.duration().as_secs_f64())
}

#[test]
#[cfg_attr(not_root, ignore = "needs root (containerd, mounts, network namespaces)")]
#[cfg_attr(
    all(not(kit_dir), not(not_root)),
    ignore = "needs the control-plane kit (../shared/k8s or RKUBELET_K8S_KIT)"
)]
fn the_client_certificate_rotates_twice_and_the_node_stays_ready_on_the_new_one() -> Result<()> {
    skip_unless_root!(Ok(()));
    if !kit_dir().join("up.sh").exists() {
        println!("SKIPPED: cert_rotation: no control-plane kit at {}", kit_dir().display());
        return Ok(());
    }
    let plane = PrivateControlPlane::up()?;
    let bootstrap = kit_path("bootstrap-kubeconfig.sh")?;
    let cluster = Cluster::Real { kubeconfig: plane.admin_kubeconfig.clone(), kit: None };
    let env = ApiNode::builder("rotation")
        .cluster(cluster)
        .bootstrap(bootstrap)
        .config("rotateCertificates: true\n")
        .start()?;
    let (rt, agent, node) = (&env.rt, &env.agent, env.node().to_owned());
    let nodes: Api<Node> = Api::all(env.admin.clone());
    let leases: Api<Lease> = Api::namespaced(env.admin.clone(), "kube-node-lease");
    let csrs: Api<CertificateSigningRequest> = Api::all(env.admin.clone());
    let cert_dir = env.cert_dir();
    let fail = |msg: String| -> anyhow::Error { anyhow::anyhow!("{msg}\nagent log:\n{}", tail(&agent.log(), 80)) };

    env.wait_for("node Ready", START, || Ok(rt.block_on(nodes.get(&node))?), ready)?;
    let first = current_pair(&cert_dir)?;
    let t0 = first.not_before + BACKDATE;
    println!(
        "bootstrap certificate {} valid {:.0} s (issued ~{:.0} s ago)",
        first.serial,
        first.not_after.duration_since(first.not_before).unwrap_or_default().as_secs_f64(),
        secs_since(t0, SystemTime::now())
    );
    ensure!(
        first.not_after.duration_since(first.not_before).unwrap_or_default() == SIGNING_DURATION + BACKDATE,
        "the control plane does not sign {SIGNING_DURATION:?} certificates: {first:?}"
    );

    // Watch the pair, the Node and its Lease every second until two rotations have happened and the first
    // certificate has been expired for a while.
    let mut pairs = vec![first.clone()];
    let mut last_renew: Option<SystemTime> = None;
    let mut last_renew_change = Instant::now();
    let mut max_gap = Duration::ZERO;
    let watch_start = Instant::now();
    loop {
        let n = rt.block_on(nodes.get(&node))?;
        if !ready(&n) {
            return Err(fail(format!(
                "node not Ready {:.0} s after the bootstrap ({} rotation(s) so far): {:?}",
                secs_since(t0, SystemTime::now()),
                pairs.len() - 1,
                n.status.and_then(|s| s.conditions)
            )));
        }
        let renew = rt
            .block_on(leases.get_opt(&node))?
            .and_then(|l| l.spec)
            .and_then(|s| s.renew_time)
            .map(|t| SystemTime::from(t.0));
        if renew != last_renew {
            max_gap = max_gap.max(last_renew_change.elapsed());
            last_renew = renew;
            last_renew_change = Instant::now();
        } else if last_renew_change.elapsed() > LEASE_GAP {
            return Err(fail(format!(
                "the Lease was not renewed for {:?} ({:.0} s after the bootstrap, {} rotation(s), first certificate \
                 expired {:.0} s ago)",
                last_renew_change.elapsed(),
                secs_since(t0, SystemTime::now()),
                pairs.len() - 1,
                secs_since(first.not_after, SystemTime::now())
            )));
        }
        let now = current_pair(&cert_dir)?;
        let last = pairs.last().cloned().context("pairs")?;
        if now.target != last.target || now.serial != last.serial {
            println!(
                "rotation {}: {} -> {} at {:.0} s after the bootstrap ({:.0} % of the previous lifetime)",
                pairs.len(),
                last.target.display(),
                now.target.display(),
                secs_since(t0, now.seen_at),
                100.0 * secs_since(last.not_before, now.seen_at)
                    / last.not_after.duration_since(last.not_before).unwrap_or_default().as_secs_f64()
            );
            ensure!(now.target != last.target, "a new certificate in the same file: {last:?} -> {now:?}");
            ensure!(now.serial != last.serial, "the same certificate in a new file: {last:?} -> {now:?}");
            ensure!(now.not_before > last.not_before, "the new certificate is not newer: {last:?} -> {now:?}");
            pairs.push(now);
        }
        let renewed_after = |t: SystemTime| last_renew.is_some_and(|r| r > t);
        if pairs.len() >= 3 && renewed_after(pairs[2].seen_at) && renewed_after(first.not_after + AFTER_EXPIRY) {
            break;
        }
        if watch_start.elapsed() > TWO_ROTATIONS && pairs.len() < 3 {
            return Err(fail(format!(
                "{} rotation(s) within {TWO_ROTATIONS:?} of the bootstrap; pairs seen: {pairs:#?}",
                pairs.len() - 1
            )));
        }
        std::thread::sleep(POLL);
    }
    println!(
        "two rotations; node Ready throughout; Lease renewed every {:.0} s at most, last {:.0} s after the first \
         certificate expired",
        max_gap.as_secs_f64(),
        last_renew.map(|r| secs_since(first.not_after, r)).unwrap_or_default()
    );
    for (a, b) in pairs.iter().zip(pairs.iter().skip(1)) {
        ensure!(a.target != b.target && a.serial != b.serial && b.not_before > a.not_before, "{a:?} -> {b:?}");
    }

    // Both renewals were filed by the node with its current certificate (not the bootstrap token) and approved,
    // and they are the certificates the node switched to.
    let list = rt.block_on(csrs.list(&ListParams::default()))?;
    let user = format!("system:node:{node}");
    let renewals: Vec<&CertificateSigningRequest> = list
        .items
        .iter()
        .filter(|c| c.spec.signer_name == KUBELET_CLIENT_SIGNER && c.spec.username.as_deref() == Some(user.as_str()))
        .collect();
    let approved = |c: &CertificateSigningRequest| {
        c.status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Approved" && c.status == "True"))
    };
    let issued: Vec<String> = renewals
        .iter()
        .filter(|c| approved(c))
        .filter_map(|c| c.status.as_ref()?.certificate.as_ref())
        .filter_map(|pem| serial_of_pem(&pem.0))
        .collect();
    ensure!(issued.len() >= 2, "{} approved renewal CSR(s) by {user}: {renewals:#?}", issued.len());
    for p in &pairs[1..] {
        ensure!(issued.contains(&p.serial), "certificate {} is from no renewal CSR of {user}: {issued:?}", p.serial);
    }
    println!("{} renewal CSRs by {user}, all approved", renewals.len());

    // A pod created now runs, and its status reaches the API with the current certificate.
    let created = Instant::now();
    env.create(json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": { "name": "after-rotation", "namespace": "default" },
        "spec": {
            "nodeName": node,
            "terminationGracePeriodSeconds": 1,
            "tolerations": [{ "operator": "Exists" }],
            "containers": [{
                "name": "app",
                "image": BUSYBOX,
                "command": ["sh", "-c", "trap 'exit 0' TERM; while true; do sleep 1; done"],
            }],
        }
    }))?;
    let pods = env.pods();
    env.wait_for("pod Running and Ready", START, || Ok(rt.block_on(pods.get("after-rotation"))?), pod_ready)?;
    println!(
        "pod Running and Ready {:.1} s after its creation, {:.0} s after the bootstrap certificate expired",
        created.elapsed().as_secs_f64(),
        secs_since(first.not_after, SystemTime::now())
    );
    ensure!(ready(&rt.block_on(nodes.get(&node))?), "node not Ready at the end");
    // No request of the agent was refused across the swaps (a write sent with an expired or dropped certificate would
    // be), and each swap restarted the agent's connections.
    let log = agent.log();
    let refused: Vec<&str> = log.lines().filter(|l| l.contains("Unauthorized")).collect();
    ensure!(refused.is_empty(), "requests refused around the rotations:\n{}", refused.join("\n"));
    let swaps = log.matches("Certificate rotation detected").count();
    ensure!(swaps >= 2, "{swaps} client switch(es) logged for {} rotations", pairs.len() - 1);
    drop(env);
    drop(plane);
    Ok(())
}
