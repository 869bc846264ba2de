//! Admission as kubelet runs it for every pod, end to end: two pods asking for one host port, the second refused
//! with kubelet's reason and message, and the port free again once the first pod is gone, across an agent restart.
//! Static pods on the host tier; API pods through an API server (the real one named by
//! `RKUBELET_E2E_KUBECONFIG`, else the in-repo double).

use std::time::Duration;

use anyhow::Result;
use k8s_openapi::api::core::v1::Pod;
use kube::api::DeleteParams;
use rkubelet_tests::agent::{free_port, phase, Agent};
use rkubelet_tests::api_node::{ApiNode, NAMESPACE};
use rkubelet_tests::containerd::Containerd;
use rkubelet_tests::images::{ensure_images, BUSYBOX};
use rkubelet_tests::skip_unless_root;
use serde_json::{json, Value};

const START: Duration = Duration::from_secs(90);
/// kubelet's status for a pod refused by the scheduler's NodePorts check (`predicate.go`).
const REJECTED_REASON: &str = "NodePorts";
const REJECTED_MESSAGE: &str = "Pod was rejected: Predicate NodePorts failed";

fn host_port_manifest(name: &str, port: u16) -> String {
    format!(
        r#"apiVersion: v1
kind: Pod
metadata:
  name: {name}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: app
    image: {BUSYBOX}
    command: ["sleep", "600"]
    ports:
    - containerPort: 8080
      hostPort: {port}
"#
    )
}

#[test]
#[cfg_attr(not_root, ignore = "needs root (containerd, mounts, network namespaces)")]
fn a_static_pod_asking_for_a_taken_host_port_is_refused_until_the_first_is_gone() -> Result<()> {
    skip_unless_root!(Ok(()));
    ensure_images()?;
    let containerd = Containerd::start("admit-static-port")?;
    let mut agent = Agent::start(&containerd)?;
    let port = free_port()?;
    agent.write_manifest("hp-a.yaml", &host_port_manifest("hp-a", port))?;
    agent.wait_pod("hp-a", START, |p| phase(p) == "Running")?;

    // After a restart the port is still held: the agent admits again what its sources hold, oldest first.
    agent.restart()?;
    agent.wait_pod("hp-a", START, |p| phase(p) == "Running")?;
    agent.write_manifest("hp-b.yaml", &host_port_manifest("hp-b", port))?;
    let b = agent.wait_pod("hp-b", Duration::from_secs(30), |p| phase(p) == "Failed")?;
    assert_eq!(b["status"]["reason"], REJECTED_REASON, "{b}");
    assert_eq!(b["status"]["message"], REJECTED_MESSAGE, "{b}");

    // The first pod goes; a new pod asking for the port is admitted.
    agent.remove_manifest("hp-a.yaml")?;
    agent.wait_pod_gone("hp-a", Duration::from_secs(60))?;
    agent.write_manifest("hp-c.yaml", &host_port_manifest("hp-c", port))?;
    agent.wait_pod("hp-c", START, |p| phase(p) == "Running")?;
    // The refused pod stays refused, as in kubelet.
    let b = agent.wait_pod("hp-b", Duration::from_secs(1), |_| true)?;
    assert_eq!(b["status"]["phase"], "Failed");
    for m in ["hp-b.yaml", "hp-c.yaml"] {
        agent.remove_manifest(m)?;
    }
    agent.wait_pod_gone("hp-c", Duration::from_secs(60))?;
    Ok(())
}

/// An API pod on `node` asking for host port `port`.
fn host_port_pod(node: &str, name: &str, port: u16) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": { "name": name, "namespace": NAMESPACE },
        "spec": {
            "nodeName": node,
            "automountServiceAccountToken": false,
            "terminationGracePeriodSeconds": 1,
            "tolerations": [{ "operator": "Exists" }],
            "containers": [{ "name": "app", "image": BUSYBOX, "command": ["sleep", "600"],
                             "ports": [{ "containerPort": 8080, "hostPort": port }] }],
        }
    })
}

fn unique(prefix: &str) -> String {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.subsec_nanos());
    format!("{prefix}-{:x}", nanos.unwrap_or_default() & 0xffffff)
}

fn pod_phase(p: &Pod) -> &str {
    p.status.as_ref().and_then(|s| s.phase.as_deref()).unwrap_or_default()
}

#[test]
#[cfg_attr(not_root, ignore = "needs root (containerd, mounts, network namespaces)")]
fn an_api_pod_asking_for_a_taken_host_port_is_refused_until_the_first_is_gone() -> Result<()> {
    skip_unless_root!(Ok(()));
    let mut env = ApiNode::start("admit-api-port")?;
    let port = free_port()?;
    let a = unique("hp-a");
    env.create(host_port_pod(env.agent.node_name(), &a, port))?;
    env.wait_pod(&a, START, |p| pod_phase(p) == "Running")?;

    // After a restart the port is still held by the pod that runs.
    env.agent.restart()?;
    let b = unique("hp-b");
    env.create(host_port_pod(env.agent.node_name(), &b, port))?;
    let refused = env.wait_pod(&b, Duration::from_secs(60), |p| pod_phase(p) == "Failed")?;
    let s = refused.status.unwrap_or_default();
    assert_eq!(s.reason.as_deref(), Some(REJECTED_REASON));
    assert_eq!(s.message.as_deref(), Some(REJECTED_MESSAGE));
    let a_now = env.wait_pod(&a, Duration::from_secs(1), |_| true)?;
    assert_eq!(pod_phase(&a_now), "Running", "the pod holding the port keeps running");

    // Deleted, the first pod releases the port once it is gone; a new pod asking for it is admitted.
    env.rt.block_on(env.pods().delete(&a, &DeleteParams::default()))?;
    env.wait_gone(&a, Duration::from_secs(60))?;
    let c = unique("hp-c");
    env.create(host_port_pod(env.agent.node_name(), &c, port))?;
    env.wait_pod(&c, START, |p| pod_phase(p) == "Running")?;
    Ok(())
}
