//! Host-tier tests of kubelet's garbage collection on a real containerd: dead containers of a crash-looping pod,
//! what a deleted pod leaves behind, and unused images. The collectors' periods (1 min and 5 min in kubelet, which
//! has no setting for them) are shortened with the agent's debug-build test knobs `RKUBELET_CONTAINER_GC_PERIOD`
//! and `RKUBELET_IMAGE_GC_PERIOD`, inherited from this process.

use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use rkubelet::runtime::gc::ContainerListing;
use rkubelet::runtime::stats::ImageRecord;
use rkubelet::runtime::{ContainerRunState, Runtime};
use rkubelet_tests::agent::{container_status, phase, Agent};
use rkubelet_tests::containerd::Containerd;
use rkubelet_tests::images::{ensure_images, BUSYBOX, PAUSE, REGISTRY};
use rkubelet_tests::skip_unless_root;
use serde_json::Value;

/// The collectors' period in these tests.
const GC_PERIOD: &str = "2s";
const GC_PERIOD_DURATION: Duration = Duration::from_secs(2);

fn set_gc_periods() {
    // Every test of this binary sets the same values, so tests running in parallel agree.
    std::env::set_var("RKUBELET_CONTAINER_GC_PERIOD", GC_PERIOD);
    std::env::set_var("RKUBELET_IMAGE_GC_PERIOD", GC_PERIOD);
}

fn setup(name: &str, extra_config: &str) -> Result<(Containerd, Agent)> {
    ensure_images()?;
    set_gc_periods();
    let containerd = Containerd::start(name)?;
    let agent = Agent::start_with(&containerd, extra_config)?;
    Ok((containerd, agent))
}

fn cri<T>(endpoint: &str, f: impl AsyncFnOnce(Runtime) -> Result<T>) -> Result<T> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    rt.block_on(async {
        let cri = Runtime::connect(endpoint).await?;
        f(cri).await
    })
}

fn containers(endpoint: &str) -> Result<Vec<ContainerListing>> {
    cri(endpoint, async |c| Ok(c.list_all_containers().await?))
}

fn images(endpoint: &str) -> Result<Vec<ImageRecord>> {
    cri(endpoint, async |c| Ok(c.list_images().await?))
}

fn has_image(images: &[ImageRecord], name: &str) -> bool {
    images.iter().any(|i| i.repo_tags.iter().any(|t| t == name))
}

fn pod_yaml(name: &str, policy: &str, image: &str, script: &str) -> String {
    format!(
        r#"apiVersion: v1
kind: Pod
metadata:
  name: {name}
spec:
  restartPolicy: {policy}
  terminationGracePeriodSeconds: 2
  containers:
  - name: app
    image: {image}
    command: ["sh", "-c", "trap 'exit 0' TERM; {script}"]
"#
    )
}

fn uid(pod: &Value) -> String {
    pod["metadata"]["uid"].as_str().unwrap_or_default().to_owned()
}

fn restart_count(p: &Value) -> i64 {
    container_status(p, "app")["restartCount"].as_i64().unwrap_or(0)
}

fn wait_until(what: &str, timeout: Duration, mut check: impl FnMut() -> Result<bool>) -> Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        if check()? {
            return Ok(());
        }
        ensure!(Instant::now() < deadline, "{what}: not within {timeout:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
#[cfg_attr(not_root, ignore = "needs root (containerd, mounts, network namespaces)")]
fn a_crash_looping_container_keeps_only_its_newest_dead_instance() -> Result<()> {
    skip_unless_root!(Ok(()));
    let (containerd, agent) = setup("gc-crash", "")?;
    agent.write_manifest("crash.yaml", &pod_yaml("crash", "Always", BUSYBOX, "exit 3"))?;

    // Three instances have run and died (t = 0, 0+, 10 s); the next start waits a 20 s back-off, in which the
    // collector runs several times.
    let pod = agent.wait_pod("crash", Duration::from_secs(60), |p| restart_count(p) >= 2)?;
    let pod_uid = uid(&pod);
    let app_instances = || -> Result<Vec<ContainerListing>> {
        Ok(containers(&containerd.endpoint())?
            .into_iter()
            .filter(|c| c.pod_uid == pod_uid && c.name == "app")
            .collect())
    };
    wait_until("the third instance exited", Duration::from_secs(10), || {
        Ok(app_instances()?.iter().all(|c| c.state != ContainerRunState::Running))
    })?;
    std::thread::sleep(3 * GC_PERIOD_DURATION);
    let app = app_instances()?;
    ensure!(app.iter().all(|c| c.state != ContainerRunState::Running), "restarted before the check: {app:#?}");
    ensure!(
        app.len() == 1,
        "kubelet's MaxPerPodContainer 1 keeps the newest dead instance only; the runtime holds {}: {app:#?}",
        app.len()
    );
    let pod = agent.pod("crash")?.context("pod gone")?;
    // `kubectl logs --previous` reads the kept instance: the newest.
    let kept = rkubelet_tests::agent::cri_container(&containerd.endpoint(), &app[0].id)?;
    ensure!(
        kept.restart_count as i64 == restart_count(&pod),
        "kept instance {} of {}",
        kept.restart_count,
        restart_count(&pod)
    );

    // Restarts go on with the count intact although the older instances are gone.
    let pod = agent.wait_pod("crash", Duration::from_secs(60), |p| restart_count(p) >= 3)?;
    assert_eq!(container_status(&pod, "app")["lastState"]["terminated"]["exitCode"], 3);
    Ok(())
}

#[test]
#[cfg_attr(not_root, ignore = "needs root (containerd, mounts, network namespaces)")]
fn a_deleted_pod_leaves_nothing_and_log_folders_of_pods_that_are_gone_are_removed() -> Result<()> {
    skip_unless_root!(Ok(()));
    let (containerd, mut agent) = setup("gc-deleted", "")?;
    let endpoint = containerd.endpoint();
    agent.write_manifest("keep.yaml", &pod_yaml("keep", "Always", BUSYBOX, "while true; do sleep 1; done"))?;
    agent.write_manifest("gone.yaml", &pod_yaml("gone", "Always", BUSYBOX, "while true; do sleep 1; done"))?;
    let running = |p: &Value| phase(p) == "Running" && container_status(p, "app")["ready"] == true;
    let keep = agent.wait_pod("keep", Duration::from_secs(60), running)?;
    let gone = agent.wait_pod("gone", Duration::from_secs(60), running)?;
    let log_dir = |p: &Value| {
        let m = &p["metadata"];
        agent.pod_logs_dir().join(format!(
            "{}_{}_{}",
            m["namespace"].as_str().unwrap_or_default(),
            m["name"].as_str().unwrap_or_default(),
            uid(p)
        ))
    };
    let (keep_logs, gone_logs) = (log_dir(&keep), log_dir(&gone));
    ensure!(keep_logs.is_dir() && gone_logs.is_dir(), "pod log folders: {keep_logs:?} {gone_logs:?}");

    // The pod is deleted while the agent is down, and the runtime loses what it held for it (an operator's
    // `crictl rmp`, a runtime reset): nothing in the runtime says the pod existed, only its log folder.
    agent.stop()?;
    agent.remove_manifest("gone.yaml")?;
    let gone_uid = uid(&gone);
    cri(&endpoint, async |c| {
        for s in c.list_pod_sandboxes(Some(&gone_uid)).await? {
            c.stop_pod_sandbox(&s.id).await?;
            c.remove_pod_sandbox(&s.id).await?;
        }
        Ok(())
    })?;
    // A folder of a pod this node never ran any more (left from an earlier life of the node).
    let stale = agent.pod_logs_dir().join("default_stale_6c1d2f0e-0000-4000-8000-000000000001");
    std::fs::create_dir_all(stale.join("app"))?;
    std::fs::write(stale.join("app/0.log"), "2026-01-01T00:00:00Z stdout F old\n")?;
    agent.restart()?;

    wait_until("log folders of pods that are gone removed", Duration::from_secs(30), || {
        Ok(!gone_logs.exists() && !stale.exists())
    })?;
    // The running pod keeps its folder, its sandbox and its container through many collections.
    std::thread::sleep(3 * GC_PERIOD_DURATION);
    ensure!(keep_logs.is_dir(), "the running pod's log folder was removed");
    let keep_uid = uid(&keep);
    let keep_containers: Vec<_> = containers(&endpoint)?.into_iter().filter(|c| c.pod_uid == keep_uid).collect();
    ensure!(keep_containers.len() == 1, "running pod's containers: {keep_containers:#?}");
    let log = std::fs::read_dir(keep_logs.join("app"))?.count();
    ensure!(log >= 1, "the running pod's container log is gone");

    // A pod deleted while the agent runs: its sandbox, containers and log folder all go.
    agent.remove_manifest("keep.yaml")?;
    agent.wait_pod_gone("keep", Duration::from_secs(30))?;
    wait_until("the deleted pod's sandbox, containers and log folder removed", Duration::from_secs(30), || {
        let sandboxes = cri(&endpoint, async |c| Ok(c.list_pod_sandboxes(Some(&keep_uid)).await?))?;
        let left = containers(&endpoint)?.into_iter().filter(|c| c.pod_uid == keep_uid).count();
        Ok(sandboxes.is_empty() && left == 0 && !keep_logs.exists())
    })?;
    Ok(())
}

/// A busybox image of its own ID (another environment in its config), pushed to the local registry: removing it
/// by ID cannot touch [`BUSYBOX`].
fn image_of_its_own() -> Result<String> {
    let image = format!("{REGISTRY}/busybox-gc:1");
    let dir = tempfile::tempdir()?;
    let layout = format!("{}/layout:img", dir.path().display());
    let run = |cmd: &mut Command| -> Result<()> {
        let out = cmd.output().with_context(|| format!("{cmd:?}"))?;
        ensure!(out.status.success(), "{cmd:?}: {}", String::from_utf8_lossy(&out.stderr));
        Ok(())
    };
    run(Command::new("skopeo")
        .args(["copy", "-q", "--src-tls-verify=false"])
        .arg(format!("docker://{BUSYBOX}"))
        .arg(format!("oci:{layout}")))?;
    run(Command::new("umoci").args(["config", "--image", &layout, "--config.env=IMAGE_GC_TEST=1"]))?;
    run(Command::new("skopeo")
        .args(["copy", "-q", "--dest-tls-verify=false"])
        .arg(format!("oci:{layout}"))
        .arg(format!("docker://{image}")))?;
    Ok(image)
}

#[test]
#[cfg_attr(not_root, ignore = "needs root (containerd, mounts, network namespaces)")]
fn unused_images_are_removed_above_the_high_threshold_but_not_those_in_use_nor_the_sandbox_image() -> Result<()> {
    skip_unless_root!(Ok(()));
    ensure_images()?;
    let image = image_of_its_own()?;
    // Any usage of the image filesystem is above 1%: every collection frees what it may, down to 0%.
    let (containerd, agent) =
        setup("gc-images", "imageGCHighThresholdPercent: 1\nimageGCLowThresholdPercent: 0\nimageMinimumGCAge: 5s\n")?;
    let endpoint = containerd.endpoint();
    agent.write_manifest("keep.yaml", &pod_yaml("keep", "Always", BUSYBOX, "while true; do sleep 1; done"))?;
    agent.write_manifest("done.yaml", &pod_yaml("done", "Never", &image, "exit 0"))?;
    agent.wait_pod("keep", Duration::from_secs(60), |p| phase(p) == "Running")?;
    agent.wait_pod("done", Duration::from_secs(60), |p| phase(p) == "Succeeded")?;

    // The finished pod's exited container still uses its image: kubelet counts containers running or not.
    std::thread::sleep(Duration::from_secs(5) + 2 * GC_PERIOD_DURATION);
    ensure!(has_image(&images(&endpoint)?, &image), "an image an exited container uses was removed");

    // Once the pod is gone nothing uses the image, and it goes; the running pod's image and the sandbox image stay.
    agent.remove_manifest("done.yaml")?;
    agent.wait_pod_gone("done", Duration::from_secs(30))?;
    wait_until("the unused image removed", Duration::from_secs(30), || Ok(!has_image(&images(&endpoint)?, &image)))?;
    std::thread::sleep(2 * GC_PERIOD_DURATION);
    let left = images(&endpoint)?;
    ensure!(has_image(&left, BUSYBOX), "the running pod's image was removed: {left:#?}");
    ensure!(has_image(&left, PAUSE), "the sandbox image was removed: {left:#?}");
    agent.wait_pod("keep", Duration::from_secs(5), |p| phase(p) == "Running")?;

    // What is left cannot bring usage below 0%: kubelet's FreeDiskSpaceFailed warning says how much it could free.
    let log = agent.log();
    ensure!(
        log.contains("FreeDiskSpaceFailed")
            && log.contains("Failed to garbage collect required amount of images. Attempted to free"),
        "no FreeDiskSpaceFailed warning in the agent's log"
    );
    Ok(())
}

#[test]
#[cfg_attr(not_root, ignore = "needs root (containerd, mounts, network namespaces)")]
fn a_node_that_cannot_free_enough_image_space_says_so_in_its_events() -> Result<()> {
    skip_unless_root!(Ok(()));
    set_gc_periods();
    // Nothing but the sandbox image can be on this node's containerd, and it is never removed: no collection can
    // bring usage down to 0%.
    let env = rkubelet_tests::api_node::ApiNode::builder("gc-events")
        .config("imageGCHighThresholdPercent: 1\nimageGCLowThresholdPercent: 0\n")
        .start()?;
    let node = env.node().to_owned();
    let prefix = "Failed to garbage collect required amount of images. Attempted to free ";
    env.wait_until("FreeDiskSpaceFailed and ImageGCFailed on the node", Duration::from_secs(60), || {
        let events = env.events(&node)?;
        let with = |reason: &str| {
            events.iter().any(|e| {
                e.reason.as_deref() == Some(reason)
                    && e.type_.as_deref() == Some("Warning")
                    && e.involved_object.kind.as_deref() == Some("Node")
                    && e.involved_object.name.as_deref() == Some(node.as_str())
                    && e.message
                        .as_deref()
                        .is_some_and(|m| m.starts_with(prefix) && m.ends_with(" bytes eligible to free."))
            })
        };
        // The first failure is only logged (stats may not be ready yet); the second in a row is ImageGCFailed.
        Ok(with("FreeDiskSpaceFailed") && with("ImageGCFailed"))
    })?;
    Ok(())
}
