//! kubelet's eviction manager end to end, on disk: `evictionHard: nodefs.available` is set 1 GiB below what the
//! root dir's filesystem has free, then the test takes 2 GiB with a file. The Node reports `DiskPressure` with
//! kubelet's reason (and the node lifecycle controller taints it, on a real control plane), the running pods are
//! evicted one per monitoring interval in kubelet's order with kubelet's status, message, `DisruptionTarget`
//! condition and `Evicted` event, a static pod (critical) is left alone, new pods are refused as kubelet refuses
//! them (once the pod manager calls the admit handler); with the file gone the condition is False again after the
//! transition period.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use k8s_openapi::api::core::v1::{Node, NodeCondition, Pod};
use kube::api::Api;
use rkubelet_tests::api_node::ApiNode;
use rkubelet_tests::images::BUSYBOX;
use rkubelet_tests::skip_unless_root;
use serde_json::json;

const START: Duration = Duration::from_secs(90);
/// kubelet's eviction monitoring interval.
const INTERVAL: Duration = Duration::from_secs(10);
const DISK_PRESSURE_TAINT: &str = "node.kubernetes.io/disk-pressure";
/// How far below the free space the threshold is, and how much the test then takes: other users of the host may
/// write or free a little meanwhile.
const MARGIN_MIB: u64 = 1024;
const FILL_MIB: u64 = 2 * 1024;
/// The transition period the test sets (kubelet's default is 5 min).
const TRANSITION: Duration = Duration::from_secs(10);

fn unique(prefix: &str) -> String {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.subsec_nanos());
    format!("{prefix}-{:x}", nanos.unwrap_or_default() & 0xffffff)
}

fn phase(p: &Pod) -> &str {
    p.status.as_ref().and_then(|s| s.phase.as_deref()).unwrap_or_default()
}

/// A pod that writes `mib` MiB into its container's writable layer, then sleeps.
fn writer(node: &str, name: &str, mib: u32, request: Option<&str>) -> serde_json::Value {
    let resources = match request {
        Some(r) => json!({"requests": {"ephemeral-storage": r}}),
        None => json!({}),
    };
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name},
        "spec": {
            "nodeName": node,
            "terminationGracePeriodSeconds": 30,
            "containers": [{
                "name": "app", "image": BUSYBOX, "resources": resources,
                "command": ["sh", "-c", format!("dd if=/dev/zero of=/fill bs=1M count={mib} && sleep 3600")],
            }],
        },
    })
}

fn condition(node: &Node, kind: &str) -> Option<NodeCondition> {
    node.status.as_ref()?.conditions.as_ref()?.iter().find(|c| c.type_ == kind).cloned()
}

fn get_node(env: &ApiNode) -> Result<Node> {
    Ok(env.block_on(Api::<Node>::all(env.admin.clone()).get(env.node()))?)
}

/// Bytes free to unprivileged users on the filesystem holding `path` (statvfs `f_bavail`, as kubelet reads it).
fn free_bytes(path: &std::path::Path) -> Result<u64> {
    Ok(rkubelet::stats::node::statvfs(path).context("statvfs")?.available_bytes)
}

/// A file holding `mib` MiB of the filesystem, removed when dropped (also when the test fails).
struct Fill(std::path::PathBuf);

impl Fill {
    fn new(path: std::path::PathBuf, mib: u64) -> Result<Fill> {
        use std::os::fd::AsRawFd;
        let f = std::fs::File::create(&path)?;
        let fill = Fill(path);
        // SAFETY: a valid open file descriptor; fallocate only allocates blocks to it.
        let rc = unsafe { libc::fallocate(f.as_raw_fd(), 0, 0, (mib << 20) as libc::off_t) };
        ensure!(rc == 0, "fallocate: {}", std::io::Error::last_os_error());
        Ok(fill)
    }
}

impl Drop for Fill {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// A node whose `nodefs.available` threshold is `MARGIN_MIB` below the free space; returns the threshold in MiB.
fn node_near_the_threshold(name: &str) -> Result<(ApiNode, u64)> {
    let threshold_mib = (free_bytes(&std::env::temp_dir())? >> 20).saturating_sub(MARGIN_MIB);
    let env = ApiNode::builder(name)
        .config(&format!(
            "evictionHard: {{memory.available: 100Mi, nodefs.available: {threshold_mib}Mi}}\n\
             evictionPressureTransitionPeriod: {}s\n",
            TRANSITION.as_secs()
        ))
        .start()?;
    Ok((env, threshold_mib))
}

/// Takes the space and waits for the Node's `DiskPressure`.
fn press(env: &ApiNode) -> Result<(Fill, Node)> {
    let fill = Fill::new(env.agent.dir().join("fill"), FILL_MIB)?;
    let filled = Instant::now();
    let n = env.wait_for(
        "DiskPressure True",
        Duration::from_secs(30),
        || get_node(env),
        |n| condition(n, "DiskPressure").is_some_and(|c| c.status == "True"),
    )?;
    println!("DiskPressure True {:?} after the disk filled", filled.elapsed());
    Ok((fill, n))
}

fn static_writer(env: &ApiNode) -> Result<String> {
    env.agent.write_manifest(
        "static.yaml",
        &format!(
            "apiVersion: v1\nkind: Pod\nmetadata:\n  name: static-writer\n  namespace: default\nspec:\n  containers:\n  \
             - name: app\n    image: {BUSYBOX}\n    command: [sh, -c, 'dd if=/dev/zero of=/fill bs=1M count=96 && sleep 3600']\n"
        ),
    )?;
    Ok(format!("static-writer-{}", env.node()))
}

#[test]
#[cfg_attr(not_root, ignore = "needs root (containerd, mounts, network namespaces)")]
fn disk_pressure_evicts_pods_one_per_interval_in_kubelets_order() -> Result<()> {
    skip_unless_root!(Ok(()));
    let (env, threshold_mib) = node_near_the_threshold("evict-disk")?;
    let node = env.node().to_owned();
    let (big, small, requested) = (unique("big"), unique("small"), unique("requested"));
    env.create(writer(&node, &big, 48, None))?;
    env.create(writer(&node, &small, 8, None))?;
    // Within its request: kubelet evicts it last.
    env.create(writer(&node, &requested, 24, Some("1Gi")))?;
    // A static pod is critical: never evicted.
    let mirror = static_writer(&env)?;
    for name in [&big, &small, &requested, &mirror] {
        env.wait_pod(name, START, |p| phase(p) == "Running")?;
    }
    let n = get_node(&env)?;
    let c = condition(&n, "DiskPressure").context("DiskPressure")?;
    assert_eq!((c.status.as_str(), c.reason.as_deref()), ("False", Some("KubeletHasNoDiskPressure")));
    std::thread::sleep(Duration::from_secs(2));

    let (fill, n) = press(&env)?;
    let c = condition(&n, "DiskPressure").context("DiskPressure")?;
    assert_eq!(c.reason.as_deref(), Some("KubeletHasDiskPressure"));
    assert_eq!(c.message.as_deref(), Some("kubelet has disk pressure"));
    let m = condition(&n, "MemoryPressure").context("MemoryPressure")?;
    assert_eq!((m.status.as_str(), m.reason.as_deref()), ("False", Some("KubeletHasSufficientMemory")));

    // One pod per interval, in kubelet's order: above its request and largest first, the one within its request
    // last.
    let mut evicted_at: BTreeMap<String, Instant> = BTreeMap::new();
    let deadline = Instant::now() + Duration::from_secs(120);
    while evicted_at.len() < 3 && Instant::now() < deadline {
        for name in [&big, &small, &requested] {
            if evicted_at.contains_key(name.as_str()) {
                continue;
            }
            let p = env.block_on(env.pods().get(name))?;
            if phase(&p) == "Failed" {
                evicted_at.insert(name.clone(), Instant::now());
            }
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    let mut order: Vec<(&String, &Instant)> = evicted_at.iter().collect();
    order.sort_by_key(|(_, at)| **at);
    let order_names: Vec<&str> = order.iter().map(|(n, _)| n.as_str()).collect();
    ensure!(
        order_names == [big.as_str(), small.as_str(), requested.as_str()],
        "eviction order {order_names:?}, want big, small, requested\nagent log:\n{}",
        rkubelet_tests::agent::tail(&env.agent.log(), 60)
    );
    for pair in order.windows(2) {
        let gap = pair[1].1.duration_since(*pair[0].1);
        println!("{} evicted {gap:?} after {}", pair[1].0, pair[0].0);
        assert!(gap >= INTERVAL / 2, "at most one pod per interval: {gap:?} between {} and {}", pair[0].0, pair[1].0);
    }

    let prefix = format!(
        "The node was low on resource: ephemeral-storage. Threshold quantity: {}, available: ",
        threshold_text(threshold_mib)
    );
    for name in [&big, &small, &requested] {
        let p = env.block_on(env.pods().get(name))?;
        let s = p.status.clone().unwrap_or_default();
        assert_eq!(s.reason.as_deref(), Some("Evicted"), "{name}: {s:?}");
        let message = s.message.clone().unwrap_or_default();
        assert!(message.starts_with(&prefix), "{name}: {message}");
        let dt = s
            .conditions
            .iter()
            .flatten()
            .find(|c| c.type_ == "DisruptionTarget")
            .with_context(|| format!("{name}: no DisruptionTarget condition: {s:?}"))?;
        assert_eq!(
            (dt.status.as_str(), dt.reason.as_deref(), dt.message.as_deref()),
            ("True", Some("TerminationByKubelet"), Some(message.as_str())),
            "{name}"
        );
        let uid = p.metadata.uid.clone().unwrap_or_default();
        let event = env.wait_event_message(&uid, &message)?;
        assert_eq!((event.reason.as_deref(), event.type_.as_deref()), (Some("Evicted"), Some("Warning")));
    }
    let big_message = env.block_on(env.pods().get(&big))?.status.and_then(|s| s.message).unwrap_or_default();
    assert!(
        big_message.contains("Container app was using ")
            && big_message.ends_with("request is 0, has larger consumption of ephemeral-storage. "),
        "{big_message}"
    );
    let m = env.block_on(env.pods().get(&mirror))?;
    assert_eq!(phase(&m), "Running", "the static pod is not evicted");

    if env.cluster().is_real() {
        // The node lifecycle controller taints the node from the condition.
        env.wait_for(
            "the disk-pressure taint",
            Duration::from_secs(60),
            || get_node(&env),
            |n| {
                n.spec
                    .as_ref()
                    .and_then(|s| s.taints.as_ref())
                    .is_some_and(|t| t.iter().any(|t| t.key == DISK_PRESSURE_TAINT && t.effect == "NoSchedule"))
            },
        )?;
    }

    // The space back, the condition goes once the transition period has passed without the threshold met.
    drop(fill);
    let freed = Instant::now();
    let n = env.wait_for(
        "DiskPressure False",
        Duration::from_secs(60),
        || get_node(&env),
        |n| condition(n, "DiskPressure").is_some_and(|c| c.status == "False"),
    )?;
    println!("DiskPressure False {:?} after the space came back", freed.elapsed());
    let c = condition(&n, "DiskPressure").context("DiskPressure")?;
    assert_eq!(c.reason.as_deref(), Some("KubeletHasNoDiskPressure"));
    assert_eq!(c.message.as_deref(), Some("kubelet has no disk pressure"));
    Ok(())
}

/// The threshold as kubelet prints a binary quantity.
#[test]
#[cfg_attr(not_root, ignore = "needs root (containerd, mounts, network namespaces)")]
fn under_disk_pressure_new_pods_are_refused_but_static_pods_admitted() -> Result<()> {
    skip_unless_root!(Ok(()));
    let (env, _) = node_near_the_threshold("evict-admit")?;
    let _fill = press(&env)?;
    let late = unique("late");
    env.create(writer(env.node(), &late, 1, None))?;
    let refused = env.wait_pod(&late, Duration::from_secs(30), |p| phase(p) == "Failed")?;
    let s = refused.status.unwrap_or_default();
    assert_eq!(s.reason.as_deref(), Some("Evicted"));
    assert_eq!(s.message.as_deref(), Some("Pod was rejected: The node had condition: [DiskPressure]. "));
    let mirror = static_writer(&env)?;
    env.wait_pod(&mirror, START, |p| phase(p) == "Running")?;
    Ok(())
}

fn threshold_text(mib: u64) -> String {
    use rkubelet::eviction::threshold::{Format, Quantity};
    Quantity::new(i128::from(mib) << 20, Format::BinarySi).to_string()
}

/// kubelet's `pid.available`: the smaller of `kernel.pid_max` and `kernel.threads-max`, less the tasks
/// `/proc/loadavg` counts.
fn pids_available() -> Result<i64> {
    let read = |p: &str| -> Result<i64> { Ok(std::fs::read_to_string(p)?.trim().parse()?) };
    let max = read("/proc/sys/kernel/pid_max")?.min(read("/proc/sys/kernel/threads-max")?);
    let loadavg = std::fs::read_to_string("/proc/loadavg")?;
    let tasks: i64 = loadavg
        .split_whitespace()
        .nth(3)
        .and_then(|f| f.split_once('/'))
        .and_then(|(_, n)| n.parse().ok())
        .context("/proc/loadavg")?;
    Ok(max - tasks)
}

/// Idle threads holding `n` task slots until dropped.
struct Tasks(Vec<std::thread::JoinHandle<()>>, std::sync::Arc<std::sync::atomic::AtomicBool>);

impl Tasks {
    fn new(n: usize) -> Result<Tasks> {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let mut handles = Vec::new();
        for _ in 0..n {
            let stop = stop.clone();
            handles.push(std::thread::Builder::new().stack_size(64 << 10).spawn(move || {
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    std::thread::park_timeout(Duration::from_millis(200));
                }
            })?);
        }
        Ok(Tasks(handles, stop))
    }
}

impl Drop for Tasks {
    fn drop(&mut self) {
        self.1.store(true, std::sync::atomic::Ordering::Relaxed);
        for h in self.0.drain(..) {
            h.thread().unpark();
            let _ = h.join();
        }
    }
}

#[test]
#[cfg_attr(not_root, ignore = "needs root (containerd, mounts, network namespaces)")]
fn pid_pressure_is_reported_and_pods_are_evicted_for_pids() -> Result<()> {
    skip_unless_root!(Ok(()));
    const MARGIN: i64 = 500;
    const HELD: usize = 1500;
    let threshold = pids_available()? - MARGIN;
    let env = ApiNode::builder("evict-pid")
        .config(&format!(
            "evictionHard: {{memory.available: 100Mi, nodefs.available: 1%, pid.available: \"{threshold}\"}}\n\
             evictionPressureTransitionPeriod: {}s\n",
            TRANSITION.as_secs()
        ))
        .start()?;
    let (a, b) = (unique("pids-a"), unique("pids-b"));
    for name in [&a, &b] {
        env.create(writer(env.node(), name, 1, None))?;
        env.wait_pod(name, START, |p| phase(p) == "Running")?;
    }
    let n = get_node(&env)?;
    let c = condition(&n, "PIDPressure").context("PIDPressure")?;
    assert_eq!((c.status.as_str(), c.reason.as_deref()), ("False", Some("KubeletHasSufficientPID")));

    let tasks = Tasks::new(HELD)?;
    let n = env.wait_for(
        "PIDPressure True",
        Duration::from_secs(30),
        || get_node(&env),
        |n| condition(n, "PIDPressure").is_some_and(|c| c.status == "True"),
    )?;
    let c = condition(&n, "PIDPressure").context("PIDPressure")?;
    assert_eq!(c.reason.as_deref(), Some("KubeletHasInsufficientPID"));
    assert_eq!(c.message.as_deref(), Some("kubelet has insufficient PID available"));

    let prefix = {
        use rkubelet::eviction::threshold::{Format, Quantity};
        format!(
            "The node was low on resource: pids. Threshold quantity: {}, available: ",
            Quantity::new(i128::from(threshold), Format::DecimalSi)
        )
    };
    for name in [&a, &b] {
        let p = env.wait_pod(name, Duration::from_secs(60), |p| phase(p) == "Failed")?;
        let s = p.status.unwrap_or_default();
        assert_eq!(s.reason.as_deref(), Some("Evicted"), "{name}");
        let message = s.message.unwrap_or_default();
        assert!(message.starts_with(&prefix), "{name}: {message}");
        assert!(
            s.conditions.iter().flatten().any(|c| c.type_ == "DisruptionTarget"
                && c.reason.as_deref() == Some("TerminationByKubelet")
                && c.message.as_deref() == Some(message.as_str())),
            "{name}: DisruptionTarget"
        );
    }

    drop(tasks);
    env.wait_for(
        "PIDPressure False",
        Duration::from_secs(60),
        || get_node(&env),
        |n| condition(n, "PIDPressure").is_some_and(|c| c.status == "False"),
    )?;
    Ok(())
}

/// kubelet's memcg threshold notification, on this kernel: a cgroup v1 memory cgroup takes a threshold 16 MiB above
/// its usage; nothing is signalled while its usage stays put, and the eventfd fires once a process in it takes
/// 64 MiB. The eviction manager waits on this between rounds instead of reading the node's memory.
#[test]
#[cfg_attr(not_root, ignore = "needs root (containerd, mounts, network namespaces)")]
fn a_cgroup_v1_memory_threshold_crossing_wakes_the_notifier() -> Result<()> {
    use rkubelet::eviction::notifier::{CgroupNotifier, MemoryNotifiers, CGROUP_V1_MEMORY_ROOT};
    skip_unless_root!(Ok(()));
    let root = std::path::Path::new(CGROUP_V1_MEMORY_ROOT);
    rkubelet_tests::skip_unless!(
        MemoryNotifiers::at(root).is_some(),
        "no cgroup v1 memory hierarchy: cgroup v2 has no threshold notification (the VM tier runs the read instead)",
        Ok(())
    );
    struct Cgroup(std::path::PathBuf);
    impl Drop for Cgroup {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir(&self.0);
        }
    }
    let cgroup = Cgroup(root.join(unique("rkt-notifier")));
    std::fs::create_dir(&cgroup.0)?;
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    rt.block_on(async {
        let usage: u64 = std::fs::read_to_string(cgroup.0.join("memory.usage_in_bytes"))?.trim().parse()?;
        let notifier = CgroupNotifier::new(&cgroup.0, usage + (16 << 20))?;
        let quiet = tokio::time::timeout(Duration::from_millis(500), notifier.crossed()).await;
        ensure!(quiet.is_err(), "signalled with nothing in the cgroup: {quiet:?}");
        let taker = format!(
            "echo $$ > {}/cgroup.procs && exec dd if=/dev/zero of=/dev/null bs=64M count=1 2>/dev/null",
            cgroup.0.display()
        );
        let mut child = tokio::process::Command::new("sh").args(["-c", &taker]).spawn()?;
        let crossed = tokio::time::timeout(Duration::from_secs(10), notifier.crossed()).await;
        let status = child.wait().await?;
        ensure!(status.success(), "the process taking memory failed: {status}");
        crossed.context("no notification within 10 s of the cgroup taking 64 MiB")??;
        Ok(())
    })
}
