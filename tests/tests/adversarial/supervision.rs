//! No panic stops a pod's lifecycle: a pod worker or probe worker that panics is started again, so deletion and
//! probing go on. The panics are injected with the agent's debug-build fault hook (`RKUBELET_INJECT_PANIC`, see
//! `pods/worker.rs`), which fires once per site and pod; the variable is set in this test's process (nextest runs
//! each test in a process of its own) and names only this test's pod.

use std::time::{Duration, Instant};

use anyhow::{ensure, Result};
use rkubelet_tests::agent::{condition, running, tail, Agent};
use rkubelet_tests::containerd::Containerd;
use rkubelet_tests::images::{ensure_images, BUSYBOX};
use rkubelet_tests::skip_unless_root;

/// An agent whose `site` panics once for the static pod made from manifest pod `pod`.
fn agent_injecting(containerd: &Containerd, site: &str, pod: &str) -> Result<Agent> {
    let agent = Agent::new(containerd, "")?;
    let target = format!("{site}:default/{pod}-{}", agent.node_name());
    std::env::set_var("RKUBELET_INJECT_PANIC", &target);
    agent.started()
}

/// The pod worker panics as the pod's termination begins (where the chunk-bomb preStop hook used to panic it); a
/// new worker takes over after a second and the pod is gone within its 5 s grace period. Before: the worker's
/// task ended with the panic and the pod stayed, its container running, until the agent restarted.
#[test]
#[cfg_attr(not_root, ignore = "needs root (containerd, mounts, network namespaces)")]
fn a_pod_worker_panic_does_not_stop_the_deletion() -> Result<()> {
    skip_unless_root!(Ok(()));
    ensure_images()?;
    let containerd = Containerd::start("adv-sup-pod")?;
    let mut agent = agent_injecting(&containerd, "pod-worker-terminate", "victim")?;
    let yaml = super::http::victim_manifest("");
    agent.write_manifest("victim.yaml", &yaml)?;
    agent.wait_pod("victim", Duration::from_secs(60), |p| running(p, "app"))?;
    let began = Instant::now();
    agent.remove_manifest("victim.yaml")?;
    let gone = agent.wait_pod_gone("victim", Duration::from_secs(5 + 2));
    let took = began.elapsed();
    println!("deleting the pod whose worker panicked took {took:?}");
    gone?;
    let log = agent.log();
    ensure!(
        log.contains("Pod worker panicked (injected panic at pod-worker-terminate:default/victim-"),
        "no WorkerPanicked event:\n{}",
        tail(&log, 40)
    );
    ensure!(agent.is_running(), "the agent died");
    Ok(())
}

/// The readiness probe's worker panics before its first run; a new worker takes over and the container becomes
/// ready. Before: the worker's task ended with the panic, no probe ran again, the container never became ready.
#[test]
#[cfg_attr(not_root, ignore = "needs root (containerd, mounts, network namespaces)")]
fn a_probe_worker_panic_is_followed_by_a_new_worker() -> Result<()> {
    skip_unless_root!(Ok(()));
    ensure_images()?;
    let containerd = Containerd::start("adv-sup-probe")?;
    let mut agent = agent_injecting(&containerd, "probe", "probed")?;
    let yaml = format!(
        r#"apiVersion: v1
kind: Pod
metadata:
  name: probed
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: app
    image: {BUSYBOX}
    command: ["sh", "-c", "mkdir -p /www; echo ok > /www/index.html; exec httpd -f -p 8080 -h /www"]
    readinessProbe:
      httpGet: {{port: 8080, path: /index.html}}
      periodSeconds: 1
"#
    );
    agent.write_manifest("probed.yaml", &yaml)?;
    agent.wait_pod("probed", Duration::from_secs(60), |p| condition(p, "Ready")["status"] == "True")?;
    let log = agent.log();
    ensure!(
        log.contains("Readiness probe worker panicked (injected panic at probe:default/probed-"),
        "no WorkerPanicked event:\n{}",
        tail(&log, 40)
    );
    ensure!(agent.is_running(), "the agent died");
    Ok(())
}
