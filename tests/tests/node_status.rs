//! Node status as kubelet reports it: reconciled against the Node read back from the API, so that the node is Ready
//! again soon after an API outage in which the node controller marked it `Unknown`; and its addresses replaced, not
//! merged, when the agent restarts with another `--node-ip`; and kubelet's node knobs (provider ID, status and lease
//! periods, `registerNode`).
//!
//! The outage test stops a real kube-apiserver: it runs a private control plane from the kit (`../shared/k8s`, or
//! `RKUBELET_K8S_KIT`) on its own ports and state folder, so that nobody else's cluster is disturbed.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{bail, ensure, Context, Result};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Node, NodeCondition, Pod};
use kube::api::{Api, DeleteParams, PostParams};
use rkubelet_tests::agent::tail;
use rkubelet_tests::api_node::ApiNode;
use rkubelet_tests::apiserver::Cluster;
use rkubelet_tests::images::BUSYBOX;
use rkubelet_tests::kit::kit_dir;
use rkubelet_tests::skip_unless_root;
use serde_json::json;

const START: Duration = Duration::from_secs(60);
/// The private control plane of the outage test: its own state folder and ports, away from the shared kit's.
const KIT_ENV: [(&str, &str); 5] = [
    ("K8S_HOME", "/var/lib/rkubelet-test/kit-outage"),
    ("K8S_APISERVER_PORT", "17443"),
    ("K8S_ETCD_PORT", "17379"),
    ("K8S_KCM_PORT", "17257"),
    ("K8S_SCHED_PORT", "17259"),
];
/// Longer than the controller-manager's node-monitor grace period (40 s), so the node controller acts.
const OUTAGE: Duration = Duration::from_secs(60);
/// How soon after the API server is back the node must be Ready and untainted again (and, when the node controller
/// did not mark it Unknown, have stayed so for two node-monitor periods).
const RECOVERY: Duration = Duration::from_secs(30);
/// The pod watch's longest back-off (30 s) plus a status write.
const POD_READY_AGAIN: Duration = Duration::from_secs(40);
/// The controller-manager's `--node-monitor-period` default.
const NODE_MONITOR_PERIOD: Duration = Duration::from_secs(5);
const UNREACHABLE_TAINT: &str = "node.kubernetes.io/unreachable";

/// Runs a kit script with the private control plane's environment; returns the last line it printed.
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
    stdout.lines().last().map(str::to_owned).context("no output")
}

/// The private control plane, stopped when dropped (also when the test fails).
struct PrivateControlPlane {
    admin_kubeconfig: PathBuf,
}

impl PrivateControlPlane {
    /// Starts it from an empty etcd, so nothing of an earlier run is left in it.
    fn up() -> Result<Self> {
        match kit("up.sh", &["--wipe"]) {
            Ok(admin) => Ok(Self { admin_kubeconfig: PathBuf::from(admin) }),
            Err(e) => {
                // Whatever did start is stopped again.
                let _ = kit("down.sh", &[]);
                Err(e)
            }
        }
    }

    fn home() -> PathBuf {
        PathBuf::from(KIT_ENV[0].1)
    }

    /// Stops kube-apiserver alone, as a crash or an outage would: TERM, then KILL after 15 s as the kit's `down.sh`
    /// does (its graceful shutdown can take longer).
    fn stop_apiserver(&self) -> Result<()> {
        let pid_file = Self::home().join("run/kube-apiserver.pid");
        let pid: i32 = std::fs::read_to_string(&pid_file)?.trim().parse().context("kube-apiserver pid")?;
        for (signal, wait) in [(libc::SIGTERM, Duration::from_secs(15)), (libc::SIGKILL, Duration::from_secs(10))] {
            // SAFETY: kill(2) on the pid the kit recorded for the API server it started.
            unsafe { libc::kill(pid, signal) };
            let deadline = Instant::now() + wait;
            while process_alive(pid) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(100));
            }
            if !process_alive(pid) {
                return Ok(());
            }
        }
        bail!("kube-apiserver (pid {pid}) still running after SIGKILL")
    }
}

/// True while `pid` runs; an exited process that nobody has reaped yet (a zombie) does not count.
fn process_alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| stat.rsplit_once(") ").map(|(_, rest)| !rest.starts_with('Z') && !rest.starts_with('X')))
        .unwrap_or(false)
}

impl Drop for PrivateControlPlane {
    fn drop(&mut self) {
        if let Err(e) = kit("down.sh", &[]) {
            eprintln!("stopping the private control plane: {e:#}");
        }
    }
}

fn ready(n: &Node) -> Option<&NodeCondition> {
    n.status.as_ref()?.conditions.as_ref()?.iter().find(|c| c.type_ == "Ready")
}

fn ready_status(n: &Node) -> &str {
    ready(n).map(|c| c.status.as_str()).unwrap_or_default()
}

fn has_unreachable_taint(n: &Node) -> bool {
    n.spec.as_ref().and_then(|s| s.taints.as_ref()).is_some_and(|ts| ts.iter().any(|t| t.key == UNREACHABLE_TAINT))
}

fn addresses(n: &Node) -> Vec<(String, String)> {
    n.status
        .as_ref()
        .and_then(|s| s.addresses.as_ref())
        .map(|a| a.iter().map(|a| (a.type_.clone(), a.address.clone())).collect())
        .unwrap_or_default()
}

fn container_id(p: &Pod) -> Option<String> {
    p.status.as_ref()?.container_statuses.as_ref()?.iter().find(|c| c.name == "app")?.container_id.clone()
}

fn pod_ready(p: &Pod) -> bool {
    let s = p.status.as_ref();
    s.and_then(|s| s.phase.as_deref()) == Some("Running")
        && s.and_then(|s| s.conditions.as_ref())
            .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

#[test]
#[cfg_attr(not_root, ignore = "needs root (containerd, mounts, network namespaces)")]
#[cfg_attr(
    all(not(kit_dir), not(not_root)),
    ignore = "needs the control-plane kit (../shared/k8s or RKUBELET_K8S_KIT)"
)]
fn node_is_ready_and_untainted_soon_after_an_api_outage_with_its_containers_unchanged() -> Result<()> {
    skip_unless_root!(Ok(()));
    if !kit_dir().join("up.sh").exists() {
        println!("SKIPPED: node_status outage test: no control-plane kit at {}", kit_dir().display());
        return Ok(());
    }
    let plane = PrivateControlPlane::up()?;
    let cluster = Cluster::Real { kubeconfig: plane.admin_kubeconfig.clone(), kit: None };
    // A node identity, so the Node authorizer and NodeRestriction apply as on a production cluster.
    let env = ApiNode::builder("node-outage")
        .cluster(cluster)
        .node_kubeconfig(|node| kit("node-kubeconfig.sh", &[node]).map(PathBuf::from))
        .args(["--node-ip", "192.0.2.2"])
        .start()?;
    let (rt, agent, node) = (&env.rt, &env.agent, env.node().to_owned());
    let nodes: Api<Node> = Api::all(env.admin.clone());
    let pods = env.pods();

    let get_node = || Ok(rt.block_on(nodes.get(&node))?);
    env.wait_for("node Ready", START, get_node, |n| ready_status(n) == "True")?;
    let pod: Pod = serde_json::from_value(json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": { "name": "outage", "namespace": "default" },
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
    let _ = rt.block_on(pods.delete("outage", &DeleteParams::default().grace_period(0)));
    env.wait_for("old pod gone", START, || Ok(rt.block_on(pods.get_opt("outage"))?), Option::is_none)?;
    rt.block_on(pods.create(&PostParams::default(), &pod))?;
    let get_pod = || Ok(rt.block_on(pods.get("outage"))?);
    let running = env.wait_for("pod Running and Ready", START, get_pod, pod_ready)?;
    let before = container_id(&running).context("container ID before the outage")?;
    // The node controller must know the node before the outage to miss its heartbeats: the controller-manager's
    // node controllers have synced once the range allocator gave the node its pod CIDR; one more node-monitor
    // period (5 s) and the lifecycle controller has recorded its health.
    let has_cidr = |n: &Node| n.spec.as_ref().and_then(|s| s.pod_cidr.as_ref()).is_some();
    env.wait_for("node pod CIDR assigned", START, get_node, has_cidr)?;
    std::thread::sleep(NODE_MONITOR_PERIOD);

    let outage_start = SystemTime::now();
    plane.stop_apiserver()?;
    std::thread::sleep(OUTAGE);
    kit("up.sh", &[])?;
    let back = Instant::now();

    // Read from the moment the API is back. The node controller marks the node Unknown (it has had no lease renewal
    // for longer than its grace period) unless its lease informer, reconnecting with its own back-off, sees the
    // agent's renewal first: which comes first is the controller's timing, not the agent's. Either way the node must
    // be Ready and untainted soon: after an Unknown the agent's status brings it back; without one the agent's
    // renewed Lease must keep it Ready for two node-monitor periods, so a late Unknown is not missed.
    let leases: Api<Lease> = Api::namespaced(env.admin.clone(), "kube-node-lease");
    let renewed_after_outage = || {
        rt.block_on(leases.get_opt(&node))
            .ok()
            .flatten()
            .and_then(|l| l.spec)
            .and_then(|s| s.renew_time)
            .is_some_and(|t| SystemTime::from(t.0) >= outage_start + OUTAGE - Duration::from_secs(1))
    };
    let mut seen_unknown = false;
    let mut ready_without_unknown_since: Option<Instant> = None;
    let recovered = loop {
        if let Ok(n) = rt.block_on(nodes.get(&node)) {
            seen_unknown |= ready_status(&n) == "Unknown";
            let ready_now = ready_status(&n) == "True" && !has_unreachable_taint(&n);
            if seen_unknown && ready_now {
                break n;
            }
            if !seen_unknown && ready_now && renewed_after_outage() {
                let since = *ready_without_unknown_since.get_or_insert_with(Instant::now);
                if since.elapsed() >= NODE_MONITOR_PERIOD * 2 {
                    println!("the node controller saw the renewed Lease before marking the node Unknown");
                    break n;
                }
            } else {
                ready_without_unknown_since = None;
            }
            if back.elapsed() > RECOVERY {
                bail!(
                    "node not Ready and untainted within {RECOVERY:?} of the API server's return (Unknown seen: \
                     {seen_unknown}); last: {:?}\nagent log:\n{}",
                    n.status,
                    tail(&agent.log(), 60)
                );
            }
        } else if back.elapsed() > RECOVERY {
            bail!("node unreadable {RECOVERY:?} after the API server's return");
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    println!("node Ready and untainted {:.1} s after the API server was back", back.elapsed().as_secs_f64());
    if seen_unknown {
        let transition =
            ready(&recovered).and_then(|c| c.last_transition_time.as_ref()).context("Ready transition time")?;
        ensure!(
            SystemTime::from(transition.0) >= outage_start - Duration::from_secs(1),
            "Ready=True after Unknown carries a transition time from before the outage: {transition:?}"
        );
    }
    let after = rt.block_on(pods.get("outage"))?;
    assert_eq!(container_id(&after).as_deref(), Some(before.as_str()), "the container was not restarted");
    // The node controller marked the pod not Ready along with the node; the status manager sets it back once the pod
    // watch, reconnecting with its back-off (at most 30 s between attempts), shows it the change.
    let ready_again = env.wait_for("pod Ready again", POD_READY_AGAIN, get_pod, pod_ready).inspect_err(|_| {
        let path = std::env::temp_dir().join("rkubelet-node-outage-agent.log");
        if std::fs::write(&path, agent.log()).is_ok() {
            eprintln!("full agent log: {}", path.display());
        }
    })?;
    println!("pod Ready again {:.1} s after the API server was back", back.elapsed().as_secs_f64());
    assert_eq!(container_id(&ready_again).as_deref(), Some(before.as_str()), "the container was not restarted");

    Ok(())
}

#[test]
#[cfg_attr(not_root, ignore = "needs root (containerd, mounts, network namespaces)")]
fn node_addresses_are_replaced_not_merged_across_restarts_with_another_node_ip() -> Result<()> {
    skip_unless_root!(Ok(()));
    // Each run is a fresh agent process on the same containerd and node name, as a restart with a new config is.
    let detected = rkubelet::node::host_ips();
    let runs: [(&[&str], Vec<String>); 4] = [
        (&["--node-ip", "192.0.2.2"], vec!["192.0.2.2".into()]),
        // Two InternalIPs: a merge by address type would fold them into one (or be refused as a duplicate).
        (&["--node-ip", "192.0.2.2,fd00::2"], vec!["192.0.2.2".into(), "fd00::2".into()]),
        (&["--node-ip", "fd00::2"], vec!["fd00::2".into()]),
        (&[], detected.clone()),
    ];
    let mut env = ApiNode::builder("node-addr").args(runs[0].0.iter().copied()).start()?;
    println!("node addresses against {}", if env.cluster().is_real() { "a real API server" } else { "the API double" });
    let nodes: Api<Node> = Api::all(env.admin.clone());
    for (i, (args, internal)) in runs.iter().enumerate() {
        if i > 0 {
            env.restart_with(args)?;
        }
        let mut want: Vec<(String, String)> = internal.iter().map(|ip| ("InternalIP".into(), ip.clone())).collect();
        want.push(("Hostname".into(), env.node().to_owned()));
        env.wait_for(
            &format!("addresses {want:?} with {args:?}"),
            START,
            || Ok(env.block_on(nodes.get(env.node()))?),
            |n| addresses(n) == want && ready_status(n) == "True",
        )?;
    }
    Ok(())
}

/// kubelet's node knobs as kubeadm, k3s and kind set them: `--provider-id` is the Node's `spec.providerID`;
/// `--node-status-update-frequency` set alone is the report period too, so the heartbeat moves every period with
/// nothing changed (with the 5 min default it would not move here); `nodeLeaseDurationSeconds` is the Lease's duration,
/// renewed every quarter of it; and with `--register-node=false` the agent creates no Node, and reports the status of
/// the one someone else creates.
#[test]
#[cfg_attr(not_root, ignore = "needs root (containerd, mounts, network namespaces)")]
fn provider_id_status_frequency_lease_duration_and_register_node_are_kubelets() -> Result<()> {
    skip_unless_root!(Ok(()));
    const PROVIDER_ID: &str = "rkt://tests/node-knobs";
    let mut env = ApiNode::builder("node-knobs")
        .config("nodeLeaseDurationSeconds: 8\n")
        .args([&format!("--provider-id={PROVIDER_ID}"), "--node-status-update-frequency=2s"])
        .start()?;
    println!("node knobs against {}", if env.cluster().is_real() { "a real API server" } else { "the API double" });
    let nodes: Api<Node> = Api::all(env.admin.clone());
    let leases: Api<Lease> = Api::namespaced(env.admin.clone(), "kube-node-lease");
    let node =
        env.wait_for("node Ready", START, || Ok(env.block_on(nodes.get(env.node()))?), |n| ready_status(n) == "True")?;
    let provider_id = node.spec.as_ref().and_then(|s| s.provider_id.as_deref());
    ensure!(provider_id == Some(PROVIDER_ID), "spec.providerID: {provider_id:?}");

    let (mut heartbeats, mut renewals) = (BTreeSet::new(), BTreeSet::new());
    let mut lease_duration = None;
    let deadline = Instant::now() + Duration::from_secs(9);
    while Instant::now() < deadline {
        let node = env.block_on(nodes.get(env.node()))?;
        if let Some(beat) = ready(&node).and_then(|c| c.last_heartbeat_time.as_ref()) {
            heartbeats.insert(beat.0.to_string());
        }
        if let Some(spec) = env.block_on(leases.get_opt(env.node()))?.and_then(|l| l.spec) {
            lease_duration = spec.lease_duration_seconds;
            renewals.extend(spec.renew_time.map(|t| t.0.to_string()));
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    // Every 2 s for 9 s is four or five; kubelet's defaults (5 min, 10 s) would give one or two.
    ensure!(heartbeats.len() >= 3, "Ready heartbeats seen in 9 s with a 2 s status frequency: {heartbeats:?}");
    ensure!(lease_duration == Some(8), "leaseDurationSeconds: {lease_duration:?}");
    ensure!(renewals.len() >= 3, "Lease renewals seen in 9 s with an 8 s lease (renewed every 2 s): {renewals:?}");

    // Someone else's Node to report on.
    env.restart_with(&["--register-node=false"])?;
    env.block_on(nodes.delete(env.node(), &DeleteParams::default()))?;
    std::thread::sleep(Duration::from_secs(8));
    ensure!(
        env.block_on(nodes.get_opt(env.node()))?.is_none(),
        "the agent created its Node with --register-node=false"
    );
    let created: Node = serde_json::from_value(json!({ "metadata": { "name": env.node() } }))?;
    env.block_on(nodes.create(&PostParams::default(), &created))?;
    env.wait_for(
        "the Node created by someone else Ready with our status",
        START,
        || Ok(env.block_on(nodes.get(env.node()))?),
        |n| ready_status(n) == "True" && n.status.as_ref().and_then(|s| s.node_info.as_ref()).is_some(),
    )?;
    Ok(())
}
