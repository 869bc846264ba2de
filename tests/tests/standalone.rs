//! Host-tier tests: rkubelet running static pods on a real containerd (private instance), pulling from the local
//! registry, with pod networking from the instance's CNI config.

use std::time::{Duration, SystemTime};

use anyhow::{ensure, Context, Result};
use rkubelet_tests::agent::{condition, container_status, phase, runtime_objects, Agent};
use rkubelet_tests::containerd::Containerd;
use rkubelet_tests::images::{ensure_images, BUSYBOX};
use rkubelet_tests::skip_unless_root;
use serde_json::Value;

fn setup(name: &str) -> Result<(Containerd, Agent)> {
    ensure_images()?;
    let containerd = Containerd::start(name)?;
    let agent = Agent::start(&containerd)?;
    Ok((containerd, agent))
}

/// A busybox pod manifest; `script` runs under `sh -c`. A short grace period keeps removal quick, and `trap` makes
/// the shell exit on SIGTERM as a real workload would.
fn pod_yaml(name: &str, policy: &str, script: &str) -> String {
    format!(
        r#"apiVersion: v1
kind: Pod
metadata:
  name: {name}
  labels:
    app: {name}
spec:
  restartPolicy: {policy}
  terminationGracePeriodSeconds: 3
  containers:
  - name: app
    image: {BUSYBOX}
    command: ["sh", "-c"]
    args:
    - |
      trap 'exit 0' TERM
      {script}
"#
    )
}

const LONG_RUNNING: &str = "echo hello-from-$(POD_NAME); while true; do sleep 1; done";

fn with_env(yaml: String) -> String {
    yaml.replace(
        "  - name: app\n",
        "  - name: app\n    env:\n    - name: POD_NAME\n      valueFrom:\n        fieldRef:\n          fieldPath: metadata.name\n",
    )
}

fn running_and_ready(p: &Value) -> bool {
    phase(p) == "Running" && container_status(p, "app")["ready"] == true
}

fn terminated(p: &Value) -> &Value {
    &container_status(p, "app")["state"]["terminated"]
}

const START: Duration = Duration::from_secs(60);

#[test]
#[cfg_attr(not_root, ignore = "needs root (containerd, mounts, network namespaces)")]
fn busybox_pod_runs_logs_its_output_and_is_removed_without_a_trace() -> Result<()> {
    skip_unless_root!(Ok(()));
    let (containerd, agent) = setup("std-basic")?;
    agent.write_manifest("web.yaml", &with_env(pod_yaml("web", "Always", LONG_RUNNING)))?;
    let pod = agent.wait_pod("web", START, running_and_ready)?;

    // Status as kubelet reports it.
    let uid = pod["metadata"]["uid"].as_str().context("uid")?.to_owned();
    assert_eq!(pod["metadata"]["namespace"], "default");
    assert_eq!(pod["spec"]["nodeName"], agent.node_name());
    assert_eq!(pod["status"]["qosClass"], "BestEffort");
    assert_eq!(condition(&pod, "Ready")["status"], "True");
    // Behind an alpha feature gate in kubelet 1.28: not reported.
    assert!(condition(&pod, "PodReadyToStartContainers").is_null());
    assert!(pod["status"]["startTime"].is_string());
    let pod_ip = pod["status"]["podIP"].as_str().context("podIP")?;
    let prefix = containerd.subnet().rsplit_once('.').map(|(p, _)| p.to_owned()).unwrap_or_default();
    assert!(pod_ip.starts_with(&prefix), "pod IP {pod_ip} outside the CNI subnet {}", containerd.subnet());
    let app = container_status(&pod, "app");
    assert!(app["containerID"].as_str().unwrap_or_default().starts_with("containerd://"), "{app}");
    assert!(!app["imageID"].as_str().unwrap_or_default().is_empty(), "{app}");
    assert_eq!(app["restartCount"], 0);

    // The CRI log file, at kubelet's path, holds the container's output with the expanded env var.
    let pod_name = format!("web-{}", agent.node_name());
    let log = agent.pod_logs_dir().join(format!("default_{pod_name}_{uid}")).join("app").join("0.log");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let expected = format!("hello-from-{pod_name}");
    loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if text.contains(&expected) {
            // CRI log format: <RFC3339Nano> stdout F <line>
            assert!(text.lines().any(|l| l.contains(" stdout F ") && l.ends_with(&expected)), "{text}");
            break;
        }
        ensure!(std::time::Instant::now() < deadline, "{} does not contain {expected:?}: {text:?}", log.display());
        std::thread::sleep(Duration::from_millis(100));
    }

    // Removing the manifest kills the pod and leaves nothing in the runtime.
    let objects = runtime_objects(&containerd.endpoint())?;
    assert_eq!((objects.sandboxes.len(), objects.containers.len()), (1, 1));
    agent.remove_manifest("web.yaml")?;
    agent.wait_pod_gone("web", Duration::from_secs(30))?;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let o = runtime_objects(&containerd.endpoint())?;
        if o.sandboxes.is_empty() && o.containers.is_empty() {
            break;
        }
        ensure!(
            std::time::Instant::now() < deadline,
            "left in the runtime: sandboxes {:?}, containers {:?}",
            o.sandboxes,
            o.containers
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(!log.exists(), "pod log dir should be removed with the pod");
    Ok(())
}

#[test]
#[cfg_attr(not_root, ignore = "needs root (containerd, mounts, network namespaces)")]
fn with_the_evented_pleg_gate_container_exits_are_still_seen_from_events_or_the_relist_it_falls_back_to() -> Result<()>
{
    skip_unless_root!(Ok(()));
    ensure_images()?;
    let containerd = Containerd::start("std-evented")?;
    let agent = Agent::new(&containerd, "featureGates:\n  EventedPLEG: true\n")?.started()?;
    agent.write_manifest("exits.yaml", &pod_yaml("exits", "Always", "sleep 1; exit 3"))?;
    // The container's exits are only seen through the PLEG: from the runtime's events, or from the one-second
    // relist the agent falls back to on a runtime without them (containerd before 1.7, as Debian 12's 1.6).
    agent.wait_pod("exits", START, |p| container_status(p, "app")["restartCount"].as_i64() >= Some(1))?;
    let log = agent.log();
    let events = log.contains("EventedPLEG: container events from the runtime drive the pod cache");
    let fell_back = log.contains("EventedPLEG: no container events from the runtime; falling back to relisting");
    ensure!(events != fell_back, "exactly one of the two PLEG modes is in the agent's log:\n{log}");
    let out = std::process::Command::new("containerd").arg("--version").output()?;
    // `containerd github.com/containerd/containerd 1.6.20~ds1 1.6.20~ds1-1+b1`
    let version = String::from_utf8_lossy(&out.stdout).split_whitespace().nth(2).unwrap_or_default().to_owned();
    println!("containerd {version}: {}", if events { "container events" } else { "fell back to relisting" });
    ensure!(
        !fell_back || version.starts_with("1.6") || version.starts_with("1.5"),
        "containerd {version} has GetContainerEvents, yet the agent fell back"
    );
    Ok(())
}

#[test]
#[cfg_attr(not_root, ignore = "needs root (containerd, mounts, network namespaces)")]
fn crashing_container_is_restarted_with_growing_back_off() -> Result<()> {
    skip_unless_root!(Ok(()));
    let (containerd, agent) = setup("std-crash")?;
    agent.write_manifest("crash.yaml", &pod_yaml("crash", "Always", "sleep 0.2; exit 3"))?;

    // Second restart happens only after the 10 s back-off; meanwhile the status shows CrashLoopBackOff.
    let pod = agent.wait_pod("crash", Duration::from_secs(60), |p| {
        let s = container_status(p, "app");
        s["restartCount"].as_i64().unwrap_or(0) >= 1 && s["state"]["waiting"]["reason"] == "CrashLoopBackOff"
    })?;
    let s = container_status(&pod, "app");
    assert_eq!(s["lastState"]["terminated"]["exitCode"], 3, "{s}");
    assert_eq!(s["lastState"]["terminated"]["reason"], "Error", "{s}");
    let msg = s["state"]["waiting"]["message"].as_str().unwrap_or_default();
    assert!(msg.starts_with("back-off 10s restarting failed container=app pod=crash-"), "{msg}");
    assert_eq!(phase(&pod), "Running", "a crash-looping Always pod stays in phase Running");
    assert_eq!(condition(&pod, "Ready")["reason"], "ContainersNotReady");

    let pod = agent.wait_pod("crash", Duration::from_secs(60), |p| {
        container_status(p, "app")["restartCount"].as_i64().unwrap_or(0) >= 3
    })?;
    // From CRI: the gap between an instance's finish and the next start grows (0 s, then >= 10 s, then >= 20 s).
    let containers = runtime_objects(&containerd.endpoint())?.containers;
    let mut records: Vec<_> = containers
        .iter()
        .map(|c| rkubelet_tests::agent::cri_container(&containerd.endpoint(), &c.id))
        .collect::<Result<_>>()?;
    records.sort_by_key(|r| r.restart_count);
    // Only the newest dead instance is kept besides the running one (kubelet's MaxPerPodContainer=1).
    ensure!(records.len() <= 2, "dead containers not garbage-collected: {} kept", records.len());
    let latest = records.last().context("no container")?;
    ensure!(latest.restart_count >= 3, "restart count {}", latest.restart_count);
    let prev = records.iter().rev().nth(1).context("no previous instance")?;
    let gap = latest
        .started_at
        .unwrap_or(SystemTime::UNIX_EPOCH)
        .duration_since(prev.finished_at.unwrap_or(SystemTime::UNIX_EPOCH))?;
    ensure!(
        gap >= Duration::from_secs(19),
        "back-off before restart {} was {gap:?}, want >= 20 s",
        latest.restart_count
    );
    assert_eq!(container_status(&pod, "app")["lastState"]["terminated"]["exitCode"], 3);
    Ok(())
}

#[test]
#[cfg_attr(not_root, ignore = "needs root (containerd, mounts, network namespaces)")]
fn restart_policies_on_failure_and_never_behave_as_kubelet() -> Result<()> {
    skip_unless_root!(Ok(()));
    let (_containerd, agent) = setup("std-policy")?;
    agent.write_manifest("ok.yaml", &pod_yaml("onfailure-ok", "OnFailure", "exit 0"))?;
    agent.write_manifest("bad.yaml", &pod_yaml("onfailure-bad", "OnFailure", "sleep 0.5; exit 4"))?;
    agent.write_manifest("never.yaml", &pod_yaml("never-bad", "Never", "exit 7"))?;
    agent.write_manifest("never-ok.yaml", &pod_yaml("never-ok", "Never", "exit 0"))?;

    let ok = agent.wait_pod("onfailure-ok", START, |p| phase(p) == "Succeeded")?;
    assert_eq!(terminated(&ok)["exitCode"], 0);
    assert_eq!(terminated(&ok)["reason"], "Completed");
    assert_eq!(container_status(&ok, "app")["restartCount"], 0);
    assert_eq!(condition(&ok, "Ready")["reason"], "PodCompleted");

    let never = agent.wait_pod("never-bad", START, |p| phase(p) == "Failed")?;
    assert_eq!(terminated(&never)["exitCode"], 7);
    assert_eq!(terminated(&never)["reason"], "Error");
    assert_eq!(container_status(&never, "app")["restartCount"], 0);

    let never_ok = agent.wait_pod("never-ok", START, |p| phase(p) == "Succeeded")?;
    assert_eq!(terminated(&never_ok)["exitCode"], 0);

    let bad = agent
        .wait_pod("onfailure-bad", START, |p| container_status(p, "app")["restartCount"].as_i64().unwrap_or(0) >= 1)?;
    assert_eq!(phase(&bad), "Running", "OnFailure with a failing container keeps restarting");

    // Finished pods stay finished: nothing restarts them over the next seconds.
    std::thread::sleep(Duration::from_secs(3));
    let ok = agent.pod("onfailure-ok")?.context("pod gone")?;
    assert_eq!((phase(&ok), container_status(&ok, "app")["restartCount"].as_i64()), ("Succeeded", Some(0)));
    let never = agent.pod("never-bad")?.context("pod gone")?;
    assert_eq!((phase(&never), container_status(&never, "app")["restartCount"].as_i64()), ("Failed", Some(0)));
    Ok(())
}

#[test]
#[cfg_attr(not_root, ignore = "needs root (containerd, mounts, network namespaces)")]
fn agent_restart_leaves_running_containers_untouched() -> Result<()> {
    skip_unless_root!(Ok(()));
    let (containerd, mut agent) = setup("std-restart")?;
    agent.write_manifest("keep.yaml", &pod_yaml("keep", "Always", LONG_RUNNING))?;
    let before = agent.wait_pod("keep", START, running_and_ready)?;
    let id_before = container_status(&before, "app")["containerID"].clone();
    let sandboxes_before = runtime_objects(&containerd.endpoint())?.sandboxes;

    agent.stop()?;
    // With the agent down, the container keeps running.
    let containers = runtime_objects(&containerd.endpoint())?.containers;
    let id = containers.first().context("container gone while the agent was down")?.id.clone();
    let record = rkubelet_tests::agent::cri_container(&containerd.endpoint(), &id)?;
    assert_eq!(record.state, rkubelet::runtime::ContainerRunState::Running);

    agent.restart()?;
    let after = agent.wait_pod("keep", START, running_and_ready)?;
    assert_eq!(container_status(&after, "app")["containerID"], id_before, "container was replaced");
    assert_eq!(container_status(&after, "app")["restartCount"], 0);
    assert_eq!(before["metadata"]["uid"], after["metadata"]["uid"]);
    // A few relists later nothing has been restarted or recreated.
    std::thread::sleep(Duration::from_secs(3));
    let after_objects = runtime_objects(&containerd.endpoint())?;
    assert_eq!(sandboxes_before, after_objects.sandboxes);
    assert_eq!(after_objects.containers.len(), 1);
    Ok(())
}

#[test]
#[cfg_attr(not_root, ignore = "needs root (containerd, mounts, network namespaces)")]
fn unknown_image_reports_err_image_pull_then_back_off_and_other_pods_run() -> Result<()> {
    skip_unless_root!(Ok(()));
    let (_containerd, mut agent) = setup("std-image")?;
    let missing = pod_yaml("missing", "Always", "true").replace(BUSYBOX, "127.0.0.1:5000/does-not-exist:1.0");
    agent.write_manifest("missing.yaml", &missing)?;
    agent.write_manifest("fine.yaml", &pod_yaml("fine", "Always", LONG_RUNNING))?;

    let waiting_reason =
        |p: &Value| container_status(p, "app")["state"]["waiting"]["reason"].as_str().unwrap_or_default().to_owned();
    let p = agent.wait_pod("missing", START, |p| waiting_reason(p) == "ErrImagePull")?;
    let msg = container_status(&p, "app")["state"]["waiting"]["message"].as_str().unwrap_or_default().to_owned();
    assert!(msg.contains("does-not-exist"), "{msg}");
    agent.wait_pod("missing", Duration::from_secs(20), |p| waiting_reason(p) == "ImagePullBackOff")?;
    let p = agent.pod("missing")?.context("pod gone")?;
    assert_eq!(phase(&p), "Pending");
    assert_eq!(
        container_status(&p, "app")["state"]["waiting"]["message"],
        "Back-off pulling image \"127.0.0.1:5000/does-not-exist:1.0\""
    );

    agent.wait_pod("fine", START, running_and_ready)?;
    assert!(agent.is_running(), "the agent must survive a bad image");
    Ok(())
}

#[test]
#[cfg_attr(not_root, ignore = "needs root (containerd, mounts, network namespaces)")]
fn malformed_manifest_is_reported_and_others_run_and_edits_replace_the_pod() -> Result<()> {
    skip_unless_root!(Ok(()));
    let (containerd, agent) = setup("std-files")?;
    agent.write_manifest("broken.yaml", "apiVersion: v1\nkind: Pod\nmetadata: [oops\n")?;
    agent.write_manifest(
        "quantity.yaml",
        &pod_yaml("qty", "Always", "true")
            .replace("  - name: app\n", "  - name: app\n    resources:\n      limits:\n        memory: lots\n"),
    )?;
    agent.write_manifest(
        "multi.yaml",
        &format!("{}---\n{}", pod_yaml("one", "Always", LONG_RUNNING), pod_yaml("two", "Always", LONG_RUNNING)),
    )?;
    let one = agent.wait_pod("one", START, running_and_ready)?;
    agent.wait_pod("two", START, running_and_ready)?;

    let log = agent.log();
    assert!(log.contains("broken.yaml"), "the broken file is named in the log");
    assert!(
        log.contains("quantity.yaml") && log.contains("invalid quantity \\\"lots\\\"")
            || log.contains("invalid quantity \"lots\""),
        "{}",
        rkubelet_tests::agent::tail(&log, 20)
    );
    assert!(agent.pod("qty")?.is_none());

    // Editing a manifest replaces its pod: new UID, old containers gone.
    let edited = format!(
        "{}---\n{}",
        pod_yaml("one", "Always", &format!("echo v2; {LONG_RUNNING}")),
        pod_yaml("two", "Always", LONG_RUNNING)
    );
    agent.write_manifest("multi.yaml", &edited)?;
    let new_one = agent.wait_pod("one", Duration::from_secs(30), |p| {
        p["metadata"]["uid"] != one["metadata"]["uid"] && running_and_ready(p)
    })?;
    assert_ne!(container_status(&new_one, "app")["containerID"], container_status(&one, "app")["containerID"]);
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let sandboxes = runtime_objects(&containerd.endpoint())?.sandboxes;
        if sandboxes.len() == 2 {
            break;
        }
        ensure!(std::time::Instant::now() < deadline, "old pod's sandbox not removed: {sandboxes:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
    Ok(())
}

#[test]
#[cfg_attr(not_root, ignore = "needs root (containerd, mounts, network namespaces)")]
fn read_only_server_answers_healthz_and_pod_list() -> Result<()> {
    skip_unless_root!(Ok(()));
    let (_containerd, agent) = setup("std-server")?;
    let (status, body) = rkubelet_tests::agent::http_get(agent.port(), "/healthz")?;
    assert_eq!((status, body.as_str()), (200, "ok"));
    let (status, body) = rkubelet_tests::agent::http_get(agent.port(), "/pods")?;
    assert_eq!(status, 200);
    let list: Value = serde_json::from_str(&body)?;
    assert_eq!(list["kind"], "PodList");
    assert_eq!(list["apiVersion"], "v1");
    assert_eq!(list["items"], Value::Array(vec![]));
    Ok(())
}

#[test]
#[cfg_attr(not_root, ignore = "needs root (containerd, mounts, network namespaces)")]
fn webhook_authorization_set_without_an_api_server_refuses_to_start() -> Result<()> {
    skip_unless_root!(Ok(()));
    let containerd = Containerd::start("std-authz")?;
    let mut agent = Agent::new(&containerd, "authorization: {mode: Webhook}\n")?;
    agent.spawn_process()?;
    let code = agent.wait_exit(Duration::from_secs(20))?;
    assert_eq!(code, Some(1), "{}", agent.log());
    let log = agent.log();
    assert!(log.contains("no client provided, cannot use webhook authorization"), "{log}");
    Ok(())
}

#[test]
#[cfg_attr(not_root, ignore = "needs root (containerd, mounts, network namespaces)")]
#[cfg_attr(
    all(cgroup_v2, not(not_root)),
    ignore = "this host has cgroup v2 controllers; the refusal is checked on hosts without them"
)]
fn without_cgroup_v2_the_agent_refuses_pod_level_enforcement_unless_told_to_run_without_it() -> Result<()> {
    skip_unless_root!(Ok(()));
    rkubelet_tests::skip_unless!(
        !rkubelet_tests::agent::cgroup_v2_available(),
        "this host has cgroup v2 controllers; the refusal is checked on hosts without them",
        Ok(())
    );
    ensure_images()?;
    let containerd = Containerd::start("std-cgroups")?;
    let mut agent = Agent::new(&containerd, "cgroupsPerQOS: true\n")?;
    agent.spawn_process()?;
    let code = agent.wait_exit(Duration::from_secs(20))?;
    assert_eq!(code, Some(1), "{}", agent.log());
    let log = agent.log();
    assert!(log.contains("cgroup v2 with the cpu and memory controllers is not available at /sys/fs/cgroup"), "{log}");
    assert!(log.contains("set cgroupsPerQOS: false"), "{log}");
    Ok(())
}

#[test]
#[cfg_attr(
    not(cgroup_v2),
    ignore = "no cgroup v2 controllers on this host: pod cgroup values (cpu.weight, cpu.max, memory.max) are checked by tests/vm"
)]
#[cfg_attr(all(cgroup_v2, not_root), ignore = "needs root (containerd, mounts, network namespaces)")]
fn pod_cgroup_values_are_checked_in_the_vm_tier() -> Result<()> {
    // The host tier cannot see pod cgroups on a v1/hybrid host; say so rather than pass silently.
    rkubelet_tests::skip_unless!(
        rkubelet_tests::agent::cgroup_v2_available(),
        "no cgroup v2 controllers on this host: pod cgroup values (cpu.weight, cpu.max, memory.max) are checked by tests/vm",
        Ok(())
    );
    skip_unless_root!(Ok(()));
    ensure_images()?;
    let containerd = Containerd::start("std-cg-v2")?;
    let agent = Agent::start_with(&containerd, "cgroupsPerQOS: true\ncgroupDriver: cgroupfs\n")?;
    agent.write_manifest(
        "g.yaml",
        &pod_yaml("g", "Always", LONG_RUNNING).replace(
            "  - name: app\n",
            "  - name: app\n    resources:\n      limits:\n        cpu: 200m\n        memory: 64Mi\n",
        ),
    )?;
    let pod = agent.wait_pod("g", START, running_and_ready)?;
    assert_eq!(pod["status"]["qosClass"], "Guaranteed");
    let uid = pod["metadata"]["uid"].as_str().context("uid")?;
    let dir = std::path::Path::new("/sys/fs/cgroup/kubepods").join(format!("pod{uid}"));
    assert_eq!(std::fs::read_to_string(dir.join("cpu.max"))?.trim(), "20000 100000");
    assert_eq!(std::fs::read_to_string(dir.join("memory.max"))?.trim(), "67108864");
    Ok(())
}
