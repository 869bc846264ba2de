//! Admission as kubelet runs it for every pod, end to end: two pods asking for one host port, the second refused
//! with kubelet's reason and message, and the port free again once the first pod is gone, across an agent restart.
//! Static pods on the host tier; API pods through an API server (the real one named by
//! `RKUBELET_E2E_KUBECONFIG`, else the in-repo double).

use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use rkubelet_tests::agent::{free_port, phase, tail, Agent};
use rkubelet_tests::apiserver::Cluster;
use rkubelet_tests::containerd::Containerd;
use rkubelet_tests::images::{ensure_images, BUSYBOX};
use rkubelet_tests::skip_unless_root;
use serde_json::{json, Value};

const NAMESPACE: &str = "default";
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
        let dir = tempfile::Builder::new().prefix("rkubelet-admit-").tempdir()?;
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

    fn create(&self, pod: Value) -> Result<Pod> {
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

    fn wait_gone(&self, name: &str, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        while self.rt.block_on(self.pods().get_opt(name))?.is_some() {
            if Instant::now() > deadline {
                bail!("pod {name} still in the API after {timeout:?}\nagent log:\n{}", tail(&self.agent.log(), 40));
            }
            std::thread::sleep(Duration::from_millis(250));
        }
        Ok(())
    }

    fn host_port_pod(&self, name: &str, port: u16) -> Value {
        json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": { "name": name, "namespace": NAMESPACE },
            "spec": {
                "nodeName": self.agent.node_name(),
                "automountServiceAccountToken": false,
                "terminationGracePeriodSeconds": 1,
                "tolerations": [{ "operator": "Exists" }],
                "containers": [{ "name": "app", "image": BUSYBOX, "command": ["sleep", "600"],
                                 "ports": [{ "containerPort": 8080, "hostPort": port }] }],
            }
        })
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

fn pod_phase(p: &Pod) -> &str {
    p.status.as_ref().and_then(|s| s.phase.as_deref()).unwrap_or_default()
}

#[test]
fn an_api_pod_asking_for_a_taken_host_port_is_refused_until_the_first_is_gone() -> Result<()> {
    skip_unless_root!(Ok(()));
    let mut env = Env::new("admit-api-port")?;
    let port = free_port()?;
    let a = unique("hp-a");
    env.create(env.host_port_pod(&a, port))?;
    env.wait_pod(&a, START, |p| pod_phase(p) == "Running")?;

    // After a restart the port is still held by the pod that runs.
    env.agent.restart()?;
    let b = unique("hp-b");
    env.create(env.host_port_pod(&b, port))?;
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
    env.create(env.host_port_pod(&c, port))?;
    env.wait_pod(&c, START, |p| pod_phase(p) == "Running")?;
    Ok(())
}
