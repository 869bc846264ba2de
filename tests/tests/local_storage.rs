//! Local ephemeral storage on the real node: pods that write past their `ephemeral-storage` limits (to their
//! writable layers) and past an emptyDir `sizeLimit` show the right figures in `/stats/summary` (the container's
//! `rootfs`, the pod's `volume` and `ephemeral-storage`), and kubelet's decisions taken from that summary name
//! exactly those pods with kubelet's messages. The last test waits for the eviction manager to act on them.

use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use k8s_openapi::api::core::v1::Pod;
use rkubelet::eviction::local_storage::{local_storage_evictions, LocalStorageSignal};
use rkubelet::stats::summary::{PodStats, Summary};
use rkubelet_tests::api_node::{ApiNode, NAMESPACE};
use rkubelet_tests::images::BUSYBOX;
use rkubelet_tests::skip_unless_root;
use serde_json::json;

const MI: u64 = 1 << 20;

/// The summary over the kubelet server (anonymous and AlwaysAllow on this node).
fn summary(node: &ApiNode) -> Result<Summary> {
    let url = format!("https://127.0.0.1:{}/stats/summary", node.agent.server_port());
    let out = Command::new("curl").args(["-sfk", "--max-time", "10"]).arg(&url).stderr(Stdio::inherit()).output()?;
    ensure!(out.status.success(), "curl {url}: {}", out.status);
    serde_json::from_slice(&out.stdout).context("the summary")
}

fn pod_stats<'a>(s: &'a Summary, name: &str) -> Option<&'a PodStats> {
    s.pods.iter().find(|p| p.pod_ref.name == name)
}

/// A container that writes `mib` MiB to `path`, syncs, and sleeps.
fn writer(name: &str, path: &str, mib: u64, limit: Option<&str>) -> serde_json::Value {
    let script = format!("dd if=/dev/zero of={path} bs=1048576 count={mib} && sync && echo DONE; exec sleep 3600");
    let mut c = json!({"name": name, "image": BUSYBOX, "command": ["sh", "-c", script]});
    if let Some(l) = limit {
        c["resources"] = json!({"limits": {"ephemeral-storage": l}});
    }
    c
}

/// The node and its pods: one over a container's limit, one over the pod's (its containers' limits summed), one
/// with an emptyDir over its `sizeLimit`, and one within every limit.
/// The pods on a new node; with `isolation` false the eviction manager leaves them running (kubelet's
/// `localStorageCapacityIsolation`), so their figures can be read at leisure.
fn start(name: &str, isolation: bool) -> Result<ApiNode> {
    let node = ApiNode::builder(name)
        .config(&format!(
            "volumeStatsAggPeriod: 1s\nauthentication: {{anonymous: {{enabled: true}}, webhook: {{enabled: false}}}}\n\
             authorization: {{mode: AlwaysAllow}}\nlocalStorageCapacityIsolation: {isolation}\n",
        ))
        .start()?;
    let pod = |name: &str, mut spec: serde_json::Value| {
        spec["nodeName"] = json!(node.node());
        spec["tolerations"] = json!([{"operator": "Exists"}]);
        spec["terminationGracePeriodSeconds"] = json!(1);
        spec["restartPolicy"] = json!("Never");
        json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": NAMESPACE}, "spec": spec})
    };
    node.create(pod(
        "ctr-limit",
        json!({"containers": [writer("big", "/big", 8, Some("4Mi")), writer("small", "/small", 1, Some("100Mi"))]}),
    ))?;
    node.create(pod(
        "pod-limit",
        json!({"containers": [writer("a", "/a", 5, Some("3Mi")), writer("b", "/b", 2, Some("3Mi"))]}),
    ))?;
    node.create(pod(
        "emptydir-limit",
        json!({"containers": [{
                   "name": "app", "image": BUSYBOX,
                   // A hard link, a link to the host's root and a link loop must not count twice or lead out.
                   "command": ["sh", "-c", "dd if=/dev/zero of=/scratch/fill bs=1048576 count=4 && ln /scratch/fill /scratch/again \
                                && ln -s / /scratch/root && ln -s /scratch /scratch/loop && sync && echo DONE; exec sleep 3600"],
                   "volumeMounts": [{"name": "scratch", "mountPath": "/scratch"}]}],
               "volumes": [{"name": "scratch", "emptyDir": {"sizeLimit": "1Mi"}}]}),
    ))?;
    node.create(pod("quiet", json!({"containers": [writer("app", "/x", 1, Some("50Mi"))]})))?;
    Ok(node)
}

fn used(fs: Option<&rkubelet::stats::summary::FsStats>) -> u64 {
    fs.and_then(|f| f.used_bytes).unwrap_or(0)
}

/// The summary once every pod's writes show in it.
fn wait_for_figures(node: &ApiNode) -> Result<Summary> {
    node.wait_for(
        "the pods' writes in /stats/summary",
        Duration::from_secs(120),
        || summary(node),
        |s| {
            let rootfs = |pod: &str, c: &str| {
                pod_stats(s, pod)
                    .and_then(|p| p.containers.iter().find(|x| x.name == c))
                    .map(|c| used(c.rootfs.as_ref()))
            };
            let volume = pod_stats(s, "emptydir-limit")
                .and_then(|p| p.volume_stats.iter().find(|v| v.name == "scratch"))
                .map(|v| used(Some(&v.fs)));
            rootfs("ctr-limit", "big") >= Some(8 * MI)
                && rootfs("pod-limit", "a") >= Some(5 * MI)
                && rootfs("pod-limit", "b") >= Some(2 * MI)
                && rootfs("quiet", "app") >= Some(MI)
                && volume >= Some(4 * MI)
        },
    )
}

#[test]
#[cfg_attr(not_root, ignore = "needs root (containerd, mounts, network namespaces)")]
fn writes_past_local_storage_limits_show_in_the_summary_and_decide_kubelets_evictions() -> Result<()> {
    skip_unless_root!(Ok(()));
    let node = start("locstor", false)?;
    let s = wait_for_figures(&node)?;
    for p in &s.pods {
        let parts: Vec<String> =
            p.containers.iter().map(|c| format!("{} rootfs {}", c.name, used(c.rootfs.as_ref()))).collect();
        let volumes: Vec<String> = p.volume_stats.iter().map(|v| format!("{} {}", v.name, used(Some(&v.fs)))).collect();
        println!(
            "{}: ephemeral-storage {} ({parts:?}, volumes {volumes:?})",
            p.pod_ref.name,
            used(p.ephemeral_storage.as_ref())
        );
    }

    // The emptyDir: its own figures, on the root dir's filesystem, and counted in the pod's ephemeral storage.
    let ed = pod_stats(&s, "emptydir-limit").context("emptydir-limit in the summary")?;
    let scratch = ed.volume_stats.iter().find(|v| v.name == "scratch").context("the scratch volume")?;
    // The folder, the file (its two names one inode) and the two links: 4 MiB and a few blocks, nothing else.
    ensure!(scratch.fs.inodes_used == Some(4), "{scratch:?}");
    ensure!(used(Some(&scratch.fs)) < 4 * MI + 64 * 1024, "counted once, not followed: {scratch:?}");
    ensure!(scratch.fs.capacity_bytes > Some(0) && scratch.fs.available_bytes.is_some(), "{scratch:?}");
    let eph = ed.ephemeral_storage.as_ref().context("ephemeral-storage")?;
    ensure!(used(Some(eph)) >= used(Some(&scratch.fs)) + used(ed.containers[0].rootfs.as_ref()), "{ed:?}");
    ensure!(
        eph.capacity_bytes == s.node.fs.as_ref().and_then(|f| f.capacity_bytes),
        "the root dir's filesystem: {eph:?}"
    );

    // A pod's ephemeral storage is at least its containers' writable layers and logs.
    for name in ["ctr-limit", "pod-limit", "quiet"] {
        let p = pod_stats(&s, name).context(name.to_owned())?;
        let parts: u64 = p.containers.iter().map(|c| used(c.rootfs.as_ref()) + used(c.logs.as_ref())).sum();
        ensure!(used(p.ephemeral_storage.as_ref()) >= parts, "{name}: {p:?}");
    }

    // kubelet's decisions on this summary: each offending pod once, with kubelet's message; the quiet one is kept.
    let pods: Vec<Arc<Pod>> =
        node.block_on(node.pods().list(&Default::default()))?.items.into_iter().map(Arc::new).collect();
    // kubelet compares the devices; the summary's sizes tell the same for this test's private containerd.
    let dedicated = s.node.runtime.as_ref().and_then(|r| r.image_fs.as_ref()).and_then(|f| f.capacity_bytes)
        != s.node.fs.as_ref().and_then(|f| f.capacity_bytes);
    let mut decided: Vec<(String, LocalStorageSignal, String)> = local_storage_evictions(&pods, &s, dedicated)
        .into_iter()
        .map(|e| (e.pod.metadata.name.clone().unwrap_or_default(), e.signal, e.message))
        .collect();
    decided.sort_by(|a, b| a.0.cmp(&b.0));
    let mut expected = vec![
        (
            "emptydir-limit".to_owned(),
            LocalStorageSignal::EmptyDirFsLimit,
            "Usage of EmptyDir volume \"scratch\" exceeds the limit \"1Mi\". ".to_owned(),
        ),
        (
            "pod-limit".to_owned(),
            LocalStorageSignal::EphemeralPodFsLimit,
            "Pod ephemeral local storage usage exceeds the total limit of containers 6Mi. ".to_owned(),
        ),
    ];
    if !dedicated {
        expected.insert(
            0,
            (
                "ctr-limit".to_owned(),
                LocalStorageSignal::EphemeralContainerFsLimit,
                "Container big exceeded its local ephemeral storage limit \"4Mi\". ".to_owned(),
            ),
        );
    }
    ensure!(decided == expected, "decided {decided:#?}\nexpected {expected:#?}");
    Ok(())
}

#[test]
#[cfg_attr(not_root, ignore = "needs root (containerd, mounts, network namespaces)")]
fn pods_past_their_local_storage_limits_are_evicted_with_kubelets_messages() -> Result<()> {
    skip_unless_root!(Ok(()));
    let node = start("locstor-evict", true)?;
    for (name, message) in [
        ("ctr-limit", "Container big exceeded its local ephemeral storage limit \"4Mi\". "),
        ("pod-limit", "Pod ephemeral local storage usage exceeds the total limit of containers 6Mi. "),
        ("emptydir-limit", "Usage of EmptyDir volume \"scratch\" exceeds the limit \"1Mi\". "),
    ] {
        let pod = node.wait_pod(name, Duration::from_secs(120), |p| {
            p.status.as_ref().is_some_and(|s| s.phase.as_deref() == Some("Failed"))
        })?;
        let status = pod.status.clone().unwrap_or_default();
        ensure!(status.reason.as_deref() == Some("Evicted"), "{name}: {status:?}");
        ensure!(status.message.as_deref() == Some(message), "{name}: {status:?}");
        // As kubelet's: the pod's containers are stopped, not removed, so its status says how each one ended.
        let containers = status.container_statuses.clone().unwrap_or_default();
        ensure!(
            !containers.is_empty()
                && containers.iter().all(|c| c.state.as_ref().is_some_and(|s| s.terminated.is_some())),
            "{name}: every container terminated: {containers:?}"
        );
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        let event = node.wait_event_message(&uid, message)?;
        ensure!(event.reason.as_deref() == Some("Evicted") && event.type_.as_deref() == Some("Warning"), "{event:?}");
    }
    let quiet = node.wait_pod("quiet", Duration::from_secs(10), |p| {
        p.status.as_ref().is_some_and(|s| s.phase.as_deref() == Some("Running"))
    })?;
    ensure!(quiet.status.and_then(|s| s.reason).is_none(), "the pod within its limits is left alone");
    Ok(())
}
