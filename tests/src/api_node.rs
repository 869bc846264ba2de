//! One agent joined to an API server (the real one named by `RKUBELET_E2E_KUBECONFIG`, else the in-repo double) on
//! a private containerd, with an admin client: the set-up the API-tier suites share.

use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use k8s_openapi::api::core::v1::{Event, Node, Pod};
use kube::api::{Api, DeleteParams, ListParams, PostParams};

use crate::agent::{tail, Agent};
use crate::apiserver::Cluster;
use crate::containerd::Containerd;
use crate::images::ensure_images;

/// The namespace the suites' pods live in.
pub const NAMESPACE: &str = "default";
/// How often a wait looks at the API again.
const POLL: Duration = Duration::from_millis(250);

/// Fields drop in order: the agent stops before its containerd, both before the API server; `Drop` first removes
/// the node's pods and Node from the API, also when the test failed.
pub struct ApiNode {
    pub agent: Agent,
    pub containerd: Containerd,
    cluster: Cluster,
    pub admin: kube::Client,
    pub rt: tokio::runtime::Runtime,
    _dir: tempfile::TempDir,
}

impl ApiNode {
    /// A node named after `name` (also its containerd's name), joined with its own node credentials.
    pub fn start(name: &str) -> Result<ApiNode> {
        ensure_images()?;
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
        let cluster = Cluster::from_env()?;
        if !cluster.is_real() {
            println!("API server: the in-repo double (RKUBELET_E2E_KUBECONFIG not set)");
        }
        let dir = tempfile::Builder::new().prefix(&format!("rkubelet-{name}-")).tempdir()?;
        let containerd = Containerd::start(name)?;
        let config =
            format!("cniConfDir: {}\ncniBridgeName: {}\n", containerd.cni_conf_dir().display(), containerd.bridge());
        let agent = Agent::new(&containerd, &config)?;
        let kubeconfig = cluster.node_kubeconfig(dir.path(), agent.node_name())?;
        let admin = rt.block_on(cluster.admin_client())?;
        // Pods and a Node left by an earlier, interrupted run on a shared cluster would be synced and counted too.
        delete_node_and_its_pods(&rt, &admin, agent.node_name());
        let agent = agent.with_args(["--kubeconfig".to_owned(), kubeconfig.display().to_string()]).started()?;
        Ok(ApiNode { agent, containerd, cluster, admin, rt, _dir: dir })
    }

    pub fn cluster(&self) -> &Cluster {
        &self.cluster
    }

    pub fn pods(&self) -> Api<Pod> {
        Api::namespaced(self.admin.clone(), NAMESPACE)
    }

    pub fn create(&self, pod: serde_json::Value) -> Result<Pod> {
        let pod: Pod = serde_json::from_value(pod)?;
        Ok(self.rt.block_on(self.pods().create(&PostParams::default(), &pod))?)
    }

    /// The pod once `check` holds; an error with the agent's log when it is gone or the time is up.
    pub fn wait_pod(&self, name: &str, timeout: Duration, check: impl Fn(&Pod) -> bool) -> Result<Pod> {
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
            std::thread::sleep(POLL);
        }
    }

    pub fn wait_gone(&self, name: &str, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        while self.rt.block_on(self.pods().get_opt(name))?.is_some() {
            if Instant::now() > deadline {
                bail!("pod {name} still in the API after {timeout:?}\nagent log:\n{}", tail(&self.agent.log(), 40));
            }
            std::thread::sleep(POLL);
        }
        Ok(())
    }

    /// The events whose object is the pod with `uid`.
    pub fn events(&self, uid: &str) -> Result<Vec<Event>> {
        let list =
            self.rt.block_on(Api::<Event>::namespaced(self.admin.clone(), NAMESPACE).list(&ListParams::default()))?;
        Ok(list.items.into_iter().filter(|e| e.involved_object.uid.as_deref() == Some(uid)).collect())
    }

    /// The pod's events once one with `reason` has been posted (events are written asynchronously), or after 20 s.
    pub fn wait_event(&self, uid: &str, reason: &str) -> Result<Vec<Event>> {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let events = self.events(uid)?;
            if events.iter().any(|e| e.reason.as_deref() == Some(reason)) || Instant::now() > deadline {
                return Ok(events);
            }
            std::thread::sleep(POLL);
        }
    }
}

impl Drop for ApiNode {
    fn drop(&mut self) {
        delete_node_and_its_pods(&self.rt, &self.admin, self.agent.node_name());
    }
}

/// Removes the node's pods (no grace) and its Node object.
pub fn delete_node_and_its_pods(rt: &tokio::runtime::Runtime, admin: &kube::Client, node: &str) {
    let pods: Api<Pod> = Api::namespaced(admin.clone(), NAMESPACE);
    if let Ok(list) = rt.block_on(pods.list(&ListParams::default().fields(&format!("spec.nodeName={node}")))) {
        for p in list.items {
            let name = p.metadata.name.unwrap_or_default();
            let _ = rt.block_on(pods.delete(&name, &DeleteParams::default().grace_period(0)));
        }
    }
    let _ = rt.block_on(Api::<Node>::all(admin.clone()).delete(node, &DeleteParams::default()));
}
