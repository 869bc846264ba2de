//! One agent joined to an API server (the real one named by `RKUBELET_E2E_KUBECONFIG`, else the in-repo double) on
//! a private containerd, with an admin client: the set-up every API-tier suite shares. [`ApiNode::builder`] adds
//! what a suite needs beyond that (more configuration, flags, a relay to cut, TLS bootstrap, its own cluster), so
//! each suite states only how its node differs.

use std::fmt::Debug;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Result};
use k8s_openapi::api::core::v1::{Event, Node, Pod};
use kube::api::{Api, ApiResource, DeleteParams, DynamicObject, ListParams, PostParams};

use crate::agent::{tail, Agent};
use crate::apiserver::Cluster;
use crate::containerd::Containerd;
use crate::images::ensure_images;
use crate::proxy::{kubeconfig_server_addr, CutProxy};

/// The namespace the suites' pods live in.
pub const NAMESPACE: &str = "default";
/// How often a wait looks again.
pub const POLL: Duration = Duration::from_millis(250);

/// Polls `get` until `check` holds, and returns that value; an error from `get` counts as "not yet". The error at
/// the deadline names `what` and the last value seen (its end, where an object's status is).
pub fn wait_for<T: Debug>(
    what: &str,
    timeout: Duration,
    mut get: impl FnMut() -> Result<T>,
    check: impl Fn(&T) -> bool,
) -> Result<T> {
    let deadline = Instant::now() + timeout;
    loop {
        let last = match get() {
            Ok(v) if check(&v) => return Ok(v),
            Ok(v) => format!("{v:?}"),
            Err(e) => format!("error: {e:#}"),
        };
        if Instant::now() > deadline {
            let skip = last.chars().count().saturating_sub(3000);
            let last: String = last.chars().skip(skip).collect();
            bail!("{what}: not within {timeout:?}; last seen: {last}");
        }
        std::thread::sleep(POLL);
    }
}

/// Waits until `cond` holds (an error from it counts as "not yet").
pub fn wait_until(what: &str, timeout: Duration, mut cond: impl FnMut() -> Result<bool>) -> Result<()> {
    wait_for(what, timeout, &mut cond, |held| *held).map(drop)
}

/// Finds the agent's kubeconfig for its node name (e.g. from a private control plane's own script).
type NodeKubeconfig = Box<dyn Fn(&str) -> Result<PathBuf>>;

/// How an [`ApiNode`] differs from the plain one; see [`ApiNode::builder`].
pub struct ApiNodeBuilder {
    name: String,
    config: String,
    args: Vec<String>,
    relay: bool,
    bootstrap: Option<PathBuf>,
    wait_healthy: bool,
    cluster: Option<Cluster>,
    node_kubeconfig: Option<NodeKubeconfig>,
}

impl ApiNodeBuilder {
    /// More `KubeletConfiguration` lines.
    pub fn config(mut self, lines: &str) -> Self {
        self.config.push_str(lines);
        self
    }

    /// More command-line flags.
    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }

    /// The agent reaches the API through a relay the test can cut ([`ApiNode::relay`]), to stage outages.
    pub fn relay(mut self) -> Self {
        self.relay = true;
        self
    }

    /// TLS bootstrap from this bootstrap kubeconfig: the agent writes its kubeconfig ([`ApiNode::kubeconfig`]) and
    /// client certificate (under [`ApiNode::cert_dir`]) itself.
    pub fn bootstrap(mut self, kubeconfig: PathBuf) -> Self {
        self.bootstrap = Some(kubeconfig);
        self
    }

    /// Starts the process without waiting for `/healthz` (an agent still waiting for its certificate is not healthy).
    pub fn no_wait(mut self) -> Self {
        self.wait_healthy = false;
        self
    }

    /// This cluster instead of the one the environment names.
    pub fn cluster(mut self, cluster: Cluster) -> Self {
        self.cluster = Some(cluster);
        self
    }

    /// The agent's kubeconfig from `f(node name)` instead of the cluster's node credentials.
    pub fn node_kubeconfig(mut self, f: impl Fn(&str) -> Result<PathBuf> + 'static) -> Self {
        self.node_kubeconfig = Some(Box::new(f));
        self
    }

    pub fn start(self) -> Result<ApiNode> {
        ensure_images()?;
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
        let cluster = match self.cluster {
            Some(c) => c,
            None => Cluster::from_env()?,
        };
        println!("API server: {}", if cluster.is_real() { "a real kube-apiserver" } else { "the in-repo double" });
        let dir = tempfile::Builder::new().prefix(&format!("rkubelet-{}-", self.name)).tempdir()?;
        let containerd = Containerd::start(&self.name)?;
        // The agent writes the pod network config into its containerd's CNI folder, so a pod CIDR from a real
        // cluster reaches the pods of this test instance only.
        let config = format!(
            "cniConfDir: {}\ncniBridgeName: {}\n{}",
            containerd.cni_conf_dir().display(),
            containerd.bridge(),
            self.config
        );
        let agent = Agent::new(&containerd, &config)?;
        let node = agent.node_name().to_owned();
        let admin = rt.block_on(cluster.admin_client())?;
        // Pods and a Node left by an earlier, interrupted run on a shared cluster would be synced and counted too.
        delete_node_and_its_pods(&rt, &admin, &node);
        let mut relay = None;
        let mut kubeconfig_args = Vec::new();
        let kubeconfig = match &self.bootstrap {
            Some(bootstrap) => {
                let kubeconfig = agent.dir().join("kubelet.kubeconfig");
                kubeconfig_args.extend([
                    "--bootstrap-kubeconfig".to_owned(),
                    bootstrap.display().to_string(),
                    "--cert-dir".to_owned(),
                    agent.dir().join("pki").display().to_string(),
                ]);
                kubeconfig
            }
            None => {
                let mut kubeconfig = match &self.node_kubeconfig {
                    Some(f) => f(&node)?,
                    None => cluster.node_kubeconfig(dir.path(), &node)?,
                };
                if self.relay {
                    let proxy = CutProxy::start(kubeconfig_server_addr(&kubeconfig)?)?;
                    kubeconfig = proxy.kubeconfig(&kubeconfig, &dir.path().join("agent.kubeconfig"))?;
                    relay = Some(proxy);
                }
                kubeconfig
            }
        };
        kubeconfig_args.extend(["--kubeconfig".to_owned(), kubeconfig.display().to_string()]);
        let mut agent = agent.with_args(kubeconfig_args.iter().cloned().chain(self.args));
        if self.wait_healthy {
            agent = agent.started()?;
        } else {
            agent.spawn_process()?;
        }
        Ok(ApiNode {
            agent,
            containerd,
            relay,
            cluster,
            admin,
            rt,
            config,
            kubeconfig,
            kubeconfig_args,
            created: Mutex::new(Vec::new()),
            _dir: dir,
        })
    }
}

/// Fields drop in order: the agent stops before its containerd, both before the relay and the API server; `Drop`
/// first removes the node's pods, the objects made with [`ApiNode::create_object`] and the Node from the API, also
/// when the test failed.
pub struct ApiNode {
    pub agent: Agent,
    pub containerd: Containerd,
    relay: Option<CutProxy>,
    cluster: Cluster,
    pub admin: kube::Client,
    pub rt: tokio::runtime::Runtime,
    config: String,
    kubeconfig: PathBuf,
    kubeconfig_args: Vec<String>,
    created: Mutex<Vec<(ApiResource, String)>>,
    _dir: tempfile::TempDir,
}

impl ApiNode {
    /// A node named after `name` (also its containerd's name), joined with its own node credentials.
    pub fn start(name: &str) -> Result<ApiNode> {
        Self::builder(name).start()
    }

    pub fn builder(name: &str) -> ApiNodeBuilder {
        ApiNodeBuilder {
            name: name.to_owned(),
            config: String::new(),
            args: Vec::new(),
            relay: false,
            bootstrap: None,
            wait_healthy: true,
            cluster: None,
            node_kubeconfig: None,
        }
    }

    pub fn cluster(&self) -> &Cluster {
        &self.cluster
    }

    pub fn node(&self) -> &str {
        self.agent.node_name()
    }

    /// The relay between the agent and the API server (built with [`ApiNodeBuilder::relay`]).
    pub fn relay(&self) -> Result<&CutProxy> {
        self.relay.as_ref().ok_or_else(|| anyhow!("this node was built without a relay"))
    }

    /// The agent's kubeconfig (written by the agent itself after a TLS bootstrap).
    pub fn kubeconfig(&self) -> &Path {
        &self.kubeconfig
    }

    /// Where a bootstrapped agent keeps its client certificate.
    pub fn cert_dir(&self) -> PathBuf {
        self.agent.dir().join("pki")
    }

    /// An admin kubeconfig for tools such as kubectl.
    pub fn admin_kubeconfig(&self) -> Result<PathBuf> {
        self.cluster.admin_kubeconfig(self._dir.path())
    }

    /// A fresh agent process on the same containerd and node name, with the same credentials and `args` in place of
    /// the first agent's flags, as a restart with a new command line is.
    pub fn restart_with(&mut self, args: &[&str]) -> Result<()> {
        self.agent.stop()?;
        let args = self.kubeconfig_args.iter().cloned().chain(args.iter().map(|a| a.to_string()));
        self.agent = Agent::new(&self.containerd, &self.config)?.with_args(args).started()?;
        Ok(())
    }

    pub fn block_on<F: Future>(&self, f: F) -> F::Output {
        self.rt.block_on(f)
    }

    pub fn pods(&self) -> Api<Pod> {
        Api::namespaced(self.admin.clone(), NAMESPACE)
    }

    pub fn create(&self, pod: serde_json::Value) -> Result<Pod> {
        let pod: Pod = serde_json::from_value(pod)?;
        self.create_pod(&pod)
    }

    pub fn create_pod(&self, pod: &Pod) -> Result<Pod> {
        Ok(self.rt.block_on(self.pods().create(&PostParams::default(), pod))?)
    }

    /// Creates a namespaced object (a ConfigMap, a Secret, a Service...) that is deleted again with the node.
    pub fn create_object<K>(&self, obj: serde_json::Value) -> Result<K>
    where
        K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
            + serde::de::DeserializeOwned
            + serde::Serialize
            + Clone
            + Debug,
    {
        let obj: K = serde_json::from_value(obj)?;
        let api: Api<K> = Api::namespaced(self.admin.clone(), NAMESPACE);
        let created = self.rt.block_on(api.create(&PostParams::default(), &obj))?;
        if let Ok(mut list) = self.created.lock() {
            list.push((ApiResource::erase::<K>(&()), created.meta().name.clone().unwrap_or_default()));
        }
        Ok(created)
    }

    /// The value of `get` once `check` holds; the error has the agent's log.
    pub fn wait<T, Fut>(
        &self,
        what: &str,
        timeout: Duration,
        get: impl Fn() -> Fut,
        check: impl Fn(&T) -> bool,
    ) -> Result<T>
    where
        Fut: Future<Output = Result<T, kube::Error>>,
        T: Debug,
    {
        self.with_log(wait_for(what, timeout, || Ok(self.rt.block_on(get())?), check))
    }

    /// The value of `get` once `check` holds; the error has the agent's log.
    pub fn wait_for<T: Debug>(
        &self,
        what: &str,
        timeout: Duration,
        get: impl FnMut() -> Result<T>,
        check: impl Fn(&T) -> bool,
    ) -> Result<T> {
        self.with_log(wait_for(what, timeout, get, check))
    }

    /// Waits until `cond` holds; the error has the agent's log.
    pub fn wait_until(&self, what: &str, timeout: Duration, cond: impl FnMut() -> Result<bool>) -> Result<()> {
        self.with_log(wait_until(what, timeout, cond))
    }

    fn with_log<T>(&self, r: Result<T>) -> Result<T> {
        r.map_err(|e| anyhow!("{e:#}\nagent log:\n{}", tail(&self.agent.log(), 40)))
    }

    /// The pod once `check` holds; an error with the agent's log when it is gone (after it was seen) or the time is
    /// up. A pod not there yet (a mirror pod the agent is still to create) is waited for.
    pub fn wait_pod(&self, name: &str, timeout: Duration, check: impl Fn(&Pod) -> bool) -> Result<Pod> {
        let deadline = Instant::now() + timeout;
        let mut seen = false;
        loop {
            let pod = self.rt.block_on(self.pods().get_opt(name))?;
            match &pod {
                Some(p) if check(p) => return Ok(p.clone()),
                Some(_) => seen = true,
                None if seen => bail!("pod {name} is gone\nagent log:\n{}", tail(&self.agent.log(), 60)),
                None => {}
            }
            if Instant::now() > deadline {
                bail!(
                    "pod {name}: not within {timeout:?}: {:?}\nagent log:\n{}",
                    pod.map(|p| p.status),
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

    /// The pod's event with exactly this message, within 30 s; an error listing the events seen otherwise.
    pub fn wait_event_message(&self, uid: &str, message: &str) -> Result<Event> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let mine = self.events(uid)?;
            if let Some(e) = mine.iter().find(|e| e.message.as_deref() == Some(message)) {
                return Ok(e.clone());
            }
            if Instant::now() > deadline {
                let seen: Vec<_> = mine.iter().map(|e| (e.reason.clone(), e.message.clone())).collect();
                bail!("no event {message:?}; the pod's events: {seen:?}\nagent log:\n{}", tail(&self.agent.log(), 40));
            }
            std::thread::sleep(POLL);
        }
    }
}

impl Drop for ApiNode {
    fn drop(&mut self) {
        delete_node_and_its_pods(&self.rt, &self.admin, self.agent.node_name());
        let created = self.created.get_mut().map(std::mem::take).unwrap_or_default();
        for (resource, name) in created {
            let api: Api<DynamicObject> = Api::namespaced_with(self.admin.clone(), NAMESPACE, &resource);
            let _ = self.rt.block_on(api.delete(&name, &DeleteParams::default().grace_period(0)));
        }
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
