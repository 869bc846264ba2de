//! Probes and pod lifecycle seen through an API server (the real one named by `RKUBELET_E2E_KUBECONFIG`, else the
//! in-repo double): readiness gates set by another client, and the conditions the agent does not own left alone.

use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use k8s_openapi::api::core::v1::{Node, Pod, PodCondition};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use rkubelet_tests::agent::{tail, Agent};
use rkubelet_tests::apiserver::Cluster;
use rkubelet_tests::containerd::Containerd;
use rkubelet_tests::images::{ensure_images, BUSYBOX};
use rkubelet_tests::skip_unless_root;
use serde_json::json;

const NAMESPACE: &str = "default";

/// An agent joined to the API on a private containerd, with an admin client. Fields drop in order: the agent stops
/// before its containerd, both before the API server.
struct Env {
    agent: Agent,
    _containerd: Containerd,
    _cluster: Cluster,
    admin: kube::Client,
    rt: tokio::runtime::Runtime,
    _dir: tempfile::TempDir,
}

impl Env {
    fn new(name: &str) -> Result<Env> {
        ensure_images()?;
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
        let cluster = Cluster::from_env()?;
        let dir = tempfile::Builder::new().prefix("rkubelet-life-").tempdir()?;
        let containerd = Containerd::start(name)?;
        let config =
            format!("cniConfDir: {}\ncniBridgeName: {}\n", containerd.cni_conf_dir().display(), containerd.bridge());
        let agent = Agent::new(&containerd, &config)?;
        let kubeconfig = cluster.node_kubeconfig(dir.path(), agent.node_name())?;
        let admin = rt.block_on(cluster.admin_client())?;
        delete_node_and_its_pods(&rt, &admin, agent.node_name());
        let agent = agent.with_args(["--kubeconfig".to_owned(), kubeconfig.display().to_string()]).started()?;
        Ok(Env { agent, _containerd: containerd, _cluster: cluster, admin, rt, _dir: dir })
    }

    fn pods(&self) -> Api<Pod> {
        Api::namespaced(self.admin.clone(), NAMESPACE)
    }

    fn create(&self, pod: serde_json::Value) -> Result<Pod> {
        let pod: Pod = serde_json::from_value(pod)?;
        Ok(self.rt.block_on(self.pods().create(&PostParams::default(), &pod))?)
    }

    fn wait_pod(&self, name: &str, timeout: Duration, check: impl Fn(&Pod) -> bool) -> Result<Pod> {
        let deadline = Instant::now() + timeout;
        loop {
            let Some(pod) = self.rt.block_on(self.pods().get_opt(name))? else {
                bail!("pod {name} is gone\nagent log:\n{}", tail(&self.agent.log(), 60));
            };
            if check(&pod) {
                return Ok(pod);
            }
            if Instant::now() > deadline {
                bail!(
                    "pod {name}: not within {timeout:?}: {:?}\nagent log:\n{}",
                    pod.status,
                    tail(&self.agent.log(), 40)
                );
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        delete_node_and_its_pods(&self.rt, &self.admin, self.agent.node_name());
    }
}

fn delete_node_and_its_pods(rt: &tokio::runtime::Runtime, admin: &kube::Client, node: &str) {
    let pods: Api<Pod> = Api::namespaced(admin.clone(), NAMESPACE);
    if let Ok(list) = rt.block_on(pods.list(&ListParams::default().fields(&format!("spec.nodeName={node}")))) {
        for p in list.items {
            let name = p.metadata.name.unwrap_or_default();
            let _ = rt.block_on(pods.delete(&name, &DeleteParams::default().grace_period(0)));
        }
    }
    let _ = rt.block_on(Api::<Node>::all(admin.clone()).delete(node, &DeleteParams::default()));
}

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
fn readiness_gates_hold_ready_until_another_client_sets_their_condition() -> Result<()> {
    skip_unless_root!(Ok(()));
    let env = Env::new("life-gates")?;
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
    let pod = env.wait_pod(&name, Duration::from_secs(20), |p| is(p, "Ready", "True"))?;
    assert!(is(&pod, "example.com/lb-ready", "True"));
    // Later writes of the agent keep the foreign conditions as they are.
    std::thread::sleep(Duration::from_secs(2));
    let pod = env.rt.block_on(env.pods().get(&name))?;
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
fn a_pod_whose_readiness_probe_fails_while_it_terminates_is_reported_not_ready_before_it_is_gone() -> Result<()> {
    skip_unless_root!(Ok(()));
    let env = Env::new("life-termready")?;
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
