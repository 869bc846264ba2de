//! The status manager seen through an API server (the real one named by `RKUBELET_E2E_KUBECONFIG`, else the in-repo
//! double): a readiness probe's result reaches the pod's status in the API without a sync of the pod, as kubelet's
//! `SetContainerReadiness` does.

use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use k8s_openapi::api::core::v1::Pod;
use rkubelet_tests::agent::http_get;
use rkubelet_tests::api_node::{ApiNode, NAMESPACE};
use rkubelet_tests::images::BUSYBOX;
use rkubelet_tests::skip_unless_root;
use serde_json::json;

/// How long the flips are watched.
const OBSERVATION: Duration = Duration::from_secs(30);
/// The harness's `syncFrequency`: the worker's own resync comes at most this often.
const SYNC_FREQUENCY: Duration = Duration::from_secs(10);

/// One counter from the agent's `/metrics`.
fn metric(env: &ApiNode, line_prefix: &str) -> Result<f64> {
    let (code, body) = http_get(env.agent.port(), "/metrics")?;
    ensure!(code == 200, "/metrics answered {code}");
    let line = body.lines().find(|l| l.starts_with(line_prefix)).with_context(|| format!("no {line_prefix}"))?;
    Ok(line.rsplit(' ').next().unwrap_or_default().parse()?)
}

fn ready(p: &Pod) -> Option<String> {
    let conditions = p.status.as_ref()?.conditions.as_ref()?;
    conditions.iter().find(|c| c.type_ == "Ready").map(|c| c.status.clone())
}

#[test]
#[cfg_attr(not_root, ignore = "needs root (containerd, mounts, network namespaces)")]
fn readiness_flips_reach_the_api_without_syncing_the_pod() -> Result<()> {
    skip_unless_root!(Ok(()));
    let env = ApiNode::start("status-ready")?;
    let name = "flipping";
    env.create(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": { "name": name, "namespace": NAMESPACE },
        "spec": {
            "nodeName": env.agent.node_name(),
            "automountServiceAccountToken": false,
            "terminationGracePeriodSeconds": 1,
            "tolerations": [{ "operator": "Exists" }],
            "containers": [{
                "name": "app",
                "image": BUSYBOX,
                // Ready for 4 s, then not for 4 s, and so on.
                "command": ["sh", "-c",
                    "trap 'exit 0' TERM; while true; do touch /tmp/ready; sleep 4; rm -f /tmp/ready; sleep 4; done"],
                "readinessProbe": {
                    "exec": { "command": ["test", "-e", "/tmp/ready"] },
                    "periodSeconds": 1, "successThreshold": 1, "failureThreshold": 1,
                },
            }],
        }
    }))?;
    env.wait_pod(name, Duration::from_secs(60), |p| ready(p).as_deref() == Some("True"))?;
    let syncs_before = metric(&env, "kubelet_pod_worker_duration_seconds_count")?;
    let mut last = Some("True".to_owned());
    let mut flips = 0;
    let began = Instant::now();
    while began.elapsed() < OBSERVATION {
        let pod = env.rt.block_on(env.pods().get(name))?;
        let now = ready(&pod);
        if now != last {
            flips += 1;
            last = now;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let syncs = metric(&env, "kubelet_pod_worker_duration_seconds_count")? - syncs_before;
    println!("over {OBSERVATION:?}: {flips} Ready flips in the API, {syncs} pod syncs");
    ensure!(flips >= 5, "the probe's flips did not reach the API: {flips} in {OBSERVATION:?}");
    // Only the worker's own resyncs remain: at most one per sync period (and one at the window's edge).
    let resyncs = (OBSERVATION.as_secs() / SYNC_FREQUENCY.as_secs() + 1) as f64;
    ensure!(
        syncs <= resyncs && syncs < flips as f64,
        "{syncs} pod syncs for {flips} readiness flips: a readiness result woke the pod worker"
    );
    Ok(())
}
