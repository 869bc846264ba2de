//! Probes and pod lifecycle seen through an API server (the real one named by `RKUBELET_E2E_KUBECONFIG`, else the
//! in-repo double): readiness gates set by another client, and the conditions the agent does not own left alone.

use std::time::{Duration, Instant};

use anyhow::Result;
use k8s_openapi::api::core::v1::{Pod, PodCondition};
use kube::api::{DeleteParams, Patch, PatchParams};
use rkubelet_tests::api_node::{ApiNode, NAMESPACE};
use rkubelet_tests::images::BUSYBOX;
use rkubelet_tests::skip_unless_root;
use serde_json::json;

fn unique(prefix: &str) -> String {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.subsec_nanos());
    format!("{prefix}-{:x}", nanos.unwrap_or_default() & 0xffffff)
}

fn condition<'a>(p: &'a Pod, kind: &str) -> Option<&'a PodCondition> {
    p.status.as_ref()?.conditions.as_ref()?.iter().find(|c| c.type_ == kind)
}

fn is(p: &Pod, kind: &str, status: &str) -> bool {
    condition(p, kind).is_some_and(|c| c.status == status)
}

#[test]
#[cfg_attr(not_root, ignore = "needs root (containerd, mounts, network namespaces)")]
fn readiness_gates_hold_ready_until_another_client_sets_their_condition() -> Result<()> {
    skip_unless_root!(Ok(()));
    let env = ApiNode::start("life-gates")?;
    let name = unique("gated");
    env.create(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": { "name": name, "namespace": NAMESPACE },
        "spec": {
            "nodeName": env.agent.node_name(),
            "automountServiceAccountToken": false,
            "terminationGracePeriodSeconds": 1,
            "tolerations": [{ "operator": "Exists" }],
            "readinessGates": [{ "conditionType": "example.com/lb-ready" }],
            "containers": [{ "name": "app", "image": BUSYBOX, "command": ["sleep", "600"] }],
        }
    }))?;
    let pod = env.wait_pod(&name, Duration::from_secs(60), |p| is(p, "ContainersReady", "True"))?;
    let ready = condition(&pod, "Ready").cloned().unwrap_or_default();
    assert_eq!(ready.status, "False");
    assert_eq!(ready.reason.as_deref(), Some("ReadinessGatesNotReady"));
    assert_eq!(
        ready.message.as_deref(),
        Some("corresponding condition of pod readiness gate \"example.com/lb-ready\" does not exist.")
    );

    // Another controller sets the gate's condition (and one of its own) through the status subresource.
    let patch = json!({ "status": { "conditions": [
        { "type": "example.com/lb-ready", "status": "True" },
        { "type": "example.com/other", "status": "False", "reason": "Theirs" },
    ]}});
    env.rt.block_on(env.pods().patch_status(&name, &PatchParams::default(), &Patch::Strategic(&patch)))?;
    // Only the agent sets Ready: the pod with Ready=True is its write after the patch, which keeps the foreign
    // conditions as they are.
    let pod = env.wait_pod(&name, Duration::from_secs(20), |p| is(p, "Ready", "True"))?;
    assert!(is(&pod, "example.com/lb-ready", "True"));
    assert_eq!(condition(&pod, "example.com/other").and_then(|c| c.reason.as_deref()), Some("Theirs"));
    assert!(is(&pod, "example.com/lb-ready", "True"));

    // Taken back: not ready again.
    let patch = json!({ "status": { "conditions": [{ "type": "example.com/lb-ready", "status": "False" }] }});
    env.rt.block_on(env.pods().patch_status(&name, &PatchParams::default(), &Patch::Strategic(&patch)))?;
    let pod = env.wait_pod(&name, Duration::from_secs(20), |p| is(p, "Ready", "False"))?;
    assert_eq!(
        condition(&pod, "Ready").and_then(|c| c.message.as_deref()),
        Some("the status of pod readiness gate \"example.com/lb-ready\" is not \"True\", but False")
    );
    Ok(())
}

#[test]
#[cfg_attr(not_root, ignore = "needs root (containerd, mounts, network namespaces)")]
fn a_pod_whose_readiness_probe_fails_while_it_terminates_is_reported_not_ready_before_it_is_gone() -> Result<()> {
    skip_unless_root!(Ok(()));
    let env = ApiNode::start("life-termready")?;
    let name = unique("termready");
    // On SIGTERM the container stops being ready and takes 20 s to exit.
    let script = "_term() { rm -f /tmp/ready; sleep 20; exit 0; }; trap _term TERM; touch /tmp/ready; \
                  while true; do sleep 1; done";
    env.create(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": { "name": name, "namespace": NAMESPACE },
        "spec": {
            "nodeName": env.agent.node_name(),
            "automountServiceAccountToken": false,
            "terminationGracePeriodSeconds": 30,
            "tolerations": [{ "operator": "Exists" }],
            "containers": [{
                "name": "app", "image": BUSYBOX, "command": ["sh", "-c", script],
                "readinessProbe": { "exec": { "command": ["cat", "/tmp/ready"] }, "periodSeconds": 1, "failureThreshold": 1 },
            }],
        }
    }))?;
    env.wait_pod(&name, Duration::from_secs(60), |p| is(p, "Ready", "True"))?;
    env.rt.block_on(env.pods().delete(&name, &DeleteParams::default()))?;
    let began = Instant::now();
    let pod = env.wait_pod(&name, Duration::from_secs(15), |p| is(p, "Ready", "False"))?;
    assert!(pod.metadata.deletion_timestamp.is_some());
    let took = began.elapsed();
    assert!(took < Duration::from_secs(15), "not ready {took:?} after the deletion");
    Ok(())
}
