//! What a pod author puts in the security context and the env to get more than the node grants: root despite
//! `runAsNonRoot`, and a `$(VAR)` bomb aimed at the agent's memory.

use std::time::Duration;

use anyhow::{ensure, Context, Result};
use rkubelet_tests::agent::{container_status, runtime_objects, Agent};
use rkubelet_tests::containerd::Containerd;
use rkubelet_tests::images::{ensure_images, BUSYBOX};
use rkubelet_tests::skip_unless_root;
use serde_json::Value;

const START: Duration = Duration::from_secs(60);

fn waiting(pod: &Value, reason: &str) -> bool {
    container_status(pod, "app")["state"]["waiting"]["reason"] == reason
}

fn message(pod: &Value) -> String {
    container_status(pod, "app")["state"]["waiting"]["message"].as_str().unwrap_or_default().to_owned()
}

/// A run-once pod whose container prints its uid; `pod_sc` and `container_sc` are flow-style YAML maps.
fn id_pod(name: &str, pod_sc: &str, container_sc: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\nspec:\n  restartPolicy: Never\n  \
         terminationGracePeriodSeconds: 1\n  securityContext: {pod_sc}\n  containers:\n  - name: app\n    \
         image: {BUSYBOX}\n    command: [\"sh\", \"-c\", \"id -u\"]\n    securityContext: {container_sc}\n"
    )
}

/// Everything the runtime has for the pod with this UID: a container would mean the check came too late.
fn containers_of(containerd: &Containerd, uid: &str) -> Result<usize> {
    let objects = runtime_objects(&containerd.endpoint())?;
    Ok(objects.containers.iter().filter(|c| c.pod_uid == uid).count())
}

#[test]
#[cfg_attr(not_root, ignore = "needs root (containerd, mounts, network namespaces)")]
fn run_as_non_root_with_uid_0_never_starts_the_container() -> Result<()> {
    skip_unless_root!(Ok(()));
    ensure_images()?;
    let containerd = Containerd::start("adv-nonroot")?;
    let agent = Agent::start(&containerd)?;
    let cases = [
        ("pod-uid0", "{runAsNonRoot: true, runAsUser: 0}", "{}"),
        ("ctr-uid0", "{}", "{runAsNonRoot: true, runAsUser: 0}"),
        // The container's uid 0 wins over the pod's non-root uid; the pod's policy still applies to it.
        ("ctr-over-pod", "{runAsNonRoot: true, runAsUser: 1000}", "{runAsUser: 0}"),
    ];
    for (name, pod_sc, container_sc) in cases {
        agent.write_manifest(&format!("{name}.yaml"), &id_pod(name, pod_sc, container_sc))?;
    }
    for (name, _, _) in cases {
        let pod = agent.wait_pod(name, START, |p| {
            waiting(p, "CreateContainerConfigError") || container_status(p, "app")["state"]["terminated"].is_object()
        })?;
        let uid = pod["metadata"]["uid"].as_str().context("uid")?;
        let full = format!("{name}-{}", agent.node_name());
        // kubelet's verifyRunAsNonRoot (pkg/kubelet/kuberuntime/security_context_others.go), word for word.
        let want =
            format!("container's runAsUser breaks non-root policy (pod: \"{full}_default({uid})\", container: app)");
        ensure!(
            waiting(&pod, "CreateContainerConfigError") && message(&pod) == want,
            "{name}: the container must be refused with kubelet's message {want:?}; status: {}",
            container_status(&pod, "app")
        );
        ensure!(pod["status"]["phase"] == "Pending", "{name}: {}", pod["status"]);
    }
    // Retries (the sync loop meets the pod again) refuse it again; nothing ever reaches the runtime.
    std::thread::sleep(Duration::from_secs(3));
    for (name, _, _) in cases {
        let pod = agent.pod(name)?.context("pod gone")?;
        ensure!(waiting(&pod, "CreateContainerConfigError"), "{name}: {}", container_status(&pod, "app"));
        let uid = pod["metadata"]["uid"].as_str().context("uid")?;
        ensure!(containers_of(&containerd, uid)? == 0, "{name}: a container was created for a root uid");
        let log = agent.pod_logs_dir().join(format!("default_{name}-{}_{uid}/app/0.log", agent.node_name()));
        ensure!(!log.exists(), "{name}: the container ran: {:?}", std::fs::read_to_string(&log));
    }
    Ok(())
}

/// The agent's peak resident memory, from `/proc/<pid>/status`.
fn peak_rss_kib(agent: &Agent) -> Result<u64> {
    let pid = agent.pid().context("agent not running")?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).context("VmHWM")?;
    Ok(line.split_whitespace().nth(1).context("VmHWM value")?.parse()?)
}

/// `A0=x`, `A<n>=$(A<n-1>)$(A<n-1>)`: a spec of a few KiB whose last variable is 2^levels bytes.
fn bomb_pod(name: &str, levels: usize) -> String {
    let mut env = String::from("    - {name: A0, value: x}\n");
    for i in 1..=levels {
        env.push_str(&format!("    - {{name: A{i}, value: \"$(A{p})$(A{p})\"}}\n", p = i - 1));
    }
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\nspec:\n  restartPolicy: Never\n  containers:\n  \
         - name: app\n    image: {BUSYBOX}\n    command: [\"sh\", \"-c\", \"echo started\"]\n    env:\n{env}"
    )
}

fn sleeper(name: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\nspec:\n  terminationGracePeriodSeconds: 1\n  \
         containers:\n  - name: app\n    image: {BUSYBOX}\n    command: [\"sleep\", \"3600\"]\n"
    )
}

fn running(pod: &Value) -> bool {
    container_status(pod, "app")["state"]["running"].is_object()
}

/// Levels of the doubling chain: 2^30 bytes (a gibibyte) in its last variable, 2 GiB over the chain, from a
/// 2 KiB manifest.
const BOMB_LEVELS: usize = 30;

#[test]
#[cfg_attr(not_root, ignore = "needs root (containerd, mounts, network namespaces)")]
fn a_var_expansion_bomb_is_a_config_error_and_the_agent_serves_its_other_pods() -> Result<()> {
    skip_unless_root!(Ok(()));
    ensure_images()?;
    let containerd = Containerd::start("adv-varbomb")?;
    let mut agent = Agent::start(&containerd)?;
    agent.write_manifest("neighbour.yaml", &sleeper("neighbour"))?;
    let before = agent.wait_pod("neighbour", START, running)?;

    let manifest = bomb_pod("bomb", BOMB_LEVELS);
    ensure!(manifest.len() < 4096, "the bomb is a small spec: {} bytes", manifest.len());
    agent.write_manifest("bomb.yaml", &manifest)?;
    let pod = agent.wait_pod("bomb", START, |p| waiting(p, "CreateContainerConfigError") || running(p))?;
    let want = "expanding $(VAR) references in env A24 exceeds the limit of 16777216 bytes per container";
    ensure!(
        waiting(&pod, "CreateContainerConfigError") && message(&pod) == want,
        "the bomb must be refused with {want:?}; status: {}",
        container_status(&pod, "app")
    );
    // Let the sync loop meet it again (as after a restart of the agent), then check everything else still works.
    std::thread::sleep(Duration::from_secs(3));
    ensure!(agent.is_running(), "the agent died:\n{}", rkubelet_tests::agent::tail(&agent.log(), 30));
    let pod = agent.pod("bomb")?.context("bomb pod gone")?;
    ensure!(waiting(&pod, "CreateContainerConfigError"), "{}", container_status(&pod, "app"));
    let uid = pod["metadata"]["uid"].as_str().context("uid")?;
    ensure!(containers_of(&containerd, uid)? == 0, "a container was created from the bomb");

    let neighbour = agent.pod("neighbour")?.context("neighbour gone")?;
    ensure!(
        running(&neighbour)
            && container_status(&neighbour, "app")["containerID"] == container_status(&before, "app")["containerID"],
        "the neighbour must keep running, untouched: {}",
        container_status(&neighbour, "app")
    );
    agent.write_manifest("after.yaml", &sleeper("after"))?;
    agent.wait_pod("after", START, running).context("a pod added after the bomb must start")?;
    // The refusal happens before anything large is built: the agent never held more than a few times the cap.
    let peak = peak_rss_kib(&agent)?;
    eprintln!("agent peak RSS: {} MiB", peak / 1024);
    ensure!(peak < 256 * 1024, "agent peak RSS {} MiB", peak / 1024);
    Ok(())
}
