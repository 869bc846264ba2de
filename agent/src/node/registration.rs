//! The node's presence in the cluster: registration of the Node object, its status updates, and the Lease heartbeat
//! in `kube-node-lease`, with kubelet's intervals.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use futures::StreamExt;
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::api::core::v1::{Node, Taint};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, OwnerReference};
use kube::api::{Api, GetParams, Patch, PatchParams, PostParams};
use kube::runtime::{watcher, WatchStreamExt};
use tokio::sync::watch;

use crate::kubetypes::nodeinfo::{NodeInfo, Resources};

use crate::node::status::{
    initial_node, kubelet_version, node_status_has_changed, node_status_patch, set_node_status, NodeFacts,
    KUBELET_COMPAT_VERSION, LABEL_ARCH, LABEL_HOSTNAME, LABEL_OS,
};

/// kubelet's `nodeStatusUpdateRetry`: attempts per status update before waiting for the next period.
pub const NODE_STATUS_UPDATE_RETRY: usize = 5;
/// A change to the Node by someone else (the node controller marking it `Unknown`) is answered this soon at most.
const NODE_WATCH_MIN_INTERVAL: Duration = Duration::from_secs(1);
/// kubelet's `nodeLeaseRenewIntervalFraction`: the Lease is renewed every quarter of its duration.
const NODE_LEASE_RENEW_INTERVAL_FRACTION: f64 = 0.25;
pub const NODE_LEASE_NAMESPACE: &str = "kube-node-lease";
/// Retry bounds for registration and failed lease renewals (kubelet: 200 ms doubling up to 7 s).
const RETRY_INITIAL: Duration = Duration::from_millis(200);
const RETRY_MAX: Duration = Duration::from_secs(7);

/// Provides fresh node facts (capacity, readiness of the runtime) each time the status is computed.
pub type FactsFn = Arc<dyn Fn() -> futures::future::BoxFuture<'static, NodeFacts> + Send + Sync>;

pub struct NodeRegistration {
    pub client: kube::Client,
    pub node_name: String,
    pub labels: BTreeMap<String, String>,
    pub taints: Vec<Taint>,
    pub facts: FactsFn,
    /// The node's `spec.podCIDR(s)` as the API assigns it.
    pub pod_cidr: watch::Sender<Option<String>>,
    /// The node as pod admission sees it: its labels follow the Node object, including labels set by others.
    pub admission: watch::Sender<NodeInfo>,
    /// The eviction manager's pressure conditions: a change is written at once rather than at the next period.
    pub pressure: Option<watch::Receiver<crate::eviction::NodePressure>>,
    /// kubelet's `syncNodeStatus` from elsewhere (the node shutting down): the status is updated at once.
    pub sync_now: Arc<tokio::sync::Notify>,
    /// kubelet's `nodeStatusUpdateFrequency`: how often the status is computed and compared with the Node.
    pub update_frequency: Duration,
    /// kubelet's `nodeStatusReportFrequency`: the status is sent at least this often even when unchanged.
    pub report_frequency: Duration,
    /// kubelet's `providerID`, set in the spec of the Node the agent creates.
    pub provider_id: Option<String>,
    /// kubelet's `registerNode`: when false the Node is someone else's to create, and the agent waits for it.
    pub register_node: bool,
}

/// Resolves when the pressure conditions change; never without a receiver or once its sender is gone.
async fn pressure_changed(rx: &mut Option<watch::Receiver<crate::eviction::NodePressure>>) -> Option<()> {
    let Some(r) = rx else { return std::future::pending().await };
    if r.changed().await.is_ok() {
        return Some(());
    }
    *rx = None;
    std::future::pending().await
}

fn is_status(e: &kube::Error, code: u16) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == code)
}

/// When the status was last sent, for `nodeStatusReportFrequency`.
#[derive(Debug, Default)]
struct Reported(Option<Instant>);

impl NodeRegistration {
    /// Registers the node, then keeps its status current. Never returns.
    pub async fn run(self) {
        let nodes: Api<Node> = Api::all(self.client.clone());
        let mut retry = RETRY_INITIAL;
        let mut reported = Reported::default();
        // The Node as the API has it: a change by someone else (the node controller setting `Ready=Unknown` after
        // an outage) is compared with our status at once instead of at the next period.
        let config = watcher::Config::default().fields(&format!("metadata.name={}", self.node_name));
        let mut node_events = watcher::watcher(nodes.clone(), config).default_backoff().applied_objects().boxed();
        let mut pressure = self.pressure.clone();
        loop {
            let server = self.client.apiserver_version().await.ok();
            let node = match self.register(&nodes, server.as_ref()).await {
                Ok(node) => node,
                Err(e) => {
                    tracing::warn!(node = %self.node_name, error = %e, retry_in = ?retry, "unable to register node with API server");
                    tokio::time::sleep(retry).await;
                    retry = (retry * 2).min(RETRY_MAX);
                    continue;
                }
            };
            retry = RETRY_INITIAL;
            if self.register_node {
                tracing::info!(node = %self.node_name, "successfully registered node");
            } else {
                tracing::info!(node = %self.node_name, "found the node (registerNode is false)");
            }
            self.publish_node(&node);
            // Status loop, first right after registration as kubelet's `syncNodeStatus` runs; left only when the
            // Node object is gone and must be registered again.
            loop {
                match self.update_node_status(&nodes, server.as_ref(), &mut reported).await {
                    Ok(node) => self.publish_node(&node),
                    Err(e) if is_status(&e, 404) => {
                        tracing::warn!(node = %self.node_name, "node object was deleted; registering again");
                        break;
                    }
                    Err(e) => {
                        tracing::warn!(node = %self.node_name, error = %e, "error updating node status, will retry")
                    }
                }
                let updated = tokio::time::Instant::now();
                let mut next = updated + self.update_frequency;
                loop {
                    tokio::select! {
                        _ = tokio::time::sleep_until(next) => break,
                        Some(()) = pressure_changed(&mut pressure) => {
                            tracing::info!(node = %self.node_name, "node pressure conditions changed; updating node status");
                            break;
                        }
                        _ = self.sync_now.notified() => break,
                        Some(event) = node_events.next() => {
                            let Ok(seen) = event else { continue };
                            let facts = self.facts(server.as_ref()).await;
                            let status = set_node_status(seen.status.as_ref(), &facts, SystemTime::now());
                            if node_status_has_changed(seen.status.as_ref(), &status) {
                                tracing::info!(node = %self.node_name, "node status in the API differs from ours; updating");
                                next = next.min(updated + NODE_WATCH_MIN_INTERVAL);
                            }
                        }
                    }
                }
            }
        }
    }

    /// The node's facts, with the version capped by the API server's.
    async fn facts(&self, server: Option<&k8s_openapi::apimachinery::pkg::version::Info>) -> NodeFacts {
        let mut facts = (self.facts)().await;
        facts.kubelet_version = kubelet_version(KUBELET_COMPAT_VERSION, server, env!("CARGO_PKG_VERSION"));
        facts
    }

    /// kubelet's `updateNodeStatus`: up to `nodeStatusUpdateRetry` attempts, the first read from the API server's
    /// cache.
    async fn update_node_status(
        &self,
        nodes: &Api<Node>,
        server: Option<&k8s_openapi::apimachinery::pkg::version::Info>,
        reported: &mut Reported,
    ) -> Result<Node, kube::Error> {
        let mut attempt = 0;
        loop {
            match self.try_update_node_status(nodes, server, attempt == 0, reported).await {
                Ok(node) => return Ok(node),
                Err(e) if is_status(&e, 404) || attempt + 1 >= NODE_STATUS_UPDATE_RETRY => return Err(e),
                Err(e) => tracing::debug!(node = %self.node_name, error = %e, attempt, "error updating node status"),
            }
            attempt += 1;
        }
    }

    /// kubelet's `tryUpdateNodeStatus`: reads the Node back, computes our status on top of it, and patches it when
    /// the two differ or the report is due.
    async fn try_update_node_status(
        &self,
        nodes: &Api<Node>,
        server: Option<&k8s_openapi::apimachinery::pkg::version::Info>,
        from_cache: bool,
        reported: &mut Reported,
    ) -> Result<Node, kube::Error> {
        let params = if from_cache { GetParams::any() } else { GetParams::default() };
        let original = nodes.get_with(&self.node_name, &params).await?;
        let facts = self.facts(server).await;
        let status = set_node_status(original.status.as_ref(), &facts, SystemTime::now());
        let due = reported.0.is_none_or(|at| at.elapsed() >= self.report_frequency);
        if !due && !node_status_has_changed(original.status.as_ref(), &status) {
            return Ok(original);
        }
        // A report that is due goes out even when the heartbeat did not move (the same second as the last one).
        let patch = node_status_patch(original.status.as_ref(), &status).unwrap_or_else(|| serde_json::json!({}));
        tracing::debug!(node = %self.node_name, %patch, "patching node status");
        let updated = nodes.patch_status(&self.node_name, &PatchParams::default(), &Patch::Strategic(&patch)).await?;
        reported.0 = Some(Instant::now());
        Ok(updated)
    }

    fn publish_node(&self, node: &Node) {
        self.publish_pod_cidr(node);
        // Admission reads the Node as the API has it: labels, taints and allocatable others set included.
        let taints = node.spec.as_ref().and_then(|s| s.taints.clone()).unwrap_or_default();
        let allocatable = node.status.as_ref().and_then(|s| s.allocatable.as_ref()).map(Resources::from_list);
        self.admission.send_if_modified(|n| {
            let mut changed = false;
            if let Some(labels) = node.metadata.labels.as_ref().filter(|l| **l != n.labels) {
                n.labels = labels.clone();
                changed = true;
            }
            if n.taints != taints {
                n.taints = taints;
                changed = true;
            }
            if let Some(a) = allocatable.filter(|a| *a != n.allocatable) {
                n.allocatable = a;
                changed = true;
            }
            changed
        });
    }

    fn publish_pod_cidr(&self, node: &Node) {
        let spec = node.spec.as_ref();
        let cidrs = spec
            .and_then(|s| s.pod_cidrs.clone())
            .filter(|c| !c.is_empty())
            .map(|c| c.join(","))
            .or_else(|| spec.and_then(|s| s.pod_cidr.clone()))
            .filter(|c| !c.is_empty());
        self.pod_cidr.send_if_modified(|current| {
            if *current != cidrs && cidrs.is_some() {
                *current = cidrs.clone();
                true
            } else {
                false
            }
        });
    }

    /// Creates the Node, or reconciles an existing one (kubelet's `tryRegisterWithAPIServer`): the default labels
    /// are brought up to date; everything else on an existing node (labels others set, taints, spec) is kept.
    async fn register(
        &self,
        nodes: &Api<Node>,
        server: Option<&k8s_openapi::apimachinery::pkg::version::Info>,
    ) -> Result<Node, kube::Error> {
        if !self.register_node {
            // kubelet without registerNode only updates the status of a Node that exists.
            return nodes.get(&self.node_name).await;
        }
        let facts = self.facts(server).await;
        let mut node = initial_node(&facts, &self.labels, &self.taints, SystemTime::now());
        if let (Some(spec), Some(id)) = (node.spec.as_mut(), self.provider_id.as_ref()) {
            spec.provider_id = Some(id.clone());
        }
        match nodes.create(&PostParams::default(), &node).await {
            // Where the create dropped the status, the status update that follows registration sends it.
            Ok(created) => Ok(created),
            Err(e) if is_status(&e, 409) => {
                let existing = nodes.get(&self.node_name).await?;
                let have = existing.metadata.labels.clone().unwrap_or_default();
                let want = node.metadata.labels.clone().unwrap_or_default();
                let stale: BTreeMap<&String, &String> = want
                    .iter()
                    .filter(|(k, v)| {
                        [LABEL_HOSTNAME, LABEL_OS, LABEL_ARCH, "beta.kubernetes.io/os", "beta.kubernetes.io/arch"]
                            .contains(&k.as_str())
                            || self.labels.contains_key(*k) && have.get(*k) != Some(v)
                    })
                    .filter(|(k, v)| have.get(*k) != Some(v))
                    .collect();
                if stale.is_empty() {
                    return Ok(existing);
                }
                let patch = serde_json::json!({ "metadata": { "labels": stale } });
                nodes.patch(&self.node_name, &PatchParams::default(), &Patch::Strategic(&patch)).await
            }
            Err(e) => Err(e),
        }
    }
}

/// Renews the node's Lease every quarter of its duration; the Lease is owned by the Node, so it goes when the Node is
/// deleted. `api_reachable` is told when a renewal succeeds after a failed one, so that the pod
/// watch stops waiting out its back-off from an outage.
pub async fn run_node_lease(
    client: kube::Client,
    node_name: String,
    lease_duration_seconds: i32,
    api_reachable: Arc<tokio::sync::Notify>,
) {
    let renew_interval =
        Duration::from_secs_f64(f64::from(lease_duration_seconds.max(1)) * NODE_LEASE_RENEW_INTERVAL_FRACTION);
    let leases: Api<Lease> = Api::namespaced(client.clone(), NODE_LEASE_NAMESPACE);
    let nodes: Api<Node> = Api::all(client);
    let mut retry = RETRY_INITIAL;
    loop {
        match renew_lease(&leases, &nodes, &node_name, lease_duration_seconds).await {
            Ok(()) => {
                if retry != RETRY_INITIAL {
                    api_reachable.notify_waiters();
                }
                retry = RETRY_INITIAL;
                tokio::time::sleep(renew_interval).await;
            }
            Err(e) => {
                tracing::warn!(node = %node_name, error = %e, retry_in = ?retry, "failed to renew node lease");
                tokio::time::sleep(retry).await;
                retry = (retry * 2).min(RETRY_MAX);
            }
        }
    }
}

async fn renew_lease(
    leases: &Api<Lease>,
    nodes: &Api<Node>,
    node_name: &str,
    lease_duration_seconds: i32,
) -> Result<(), kube::Error> {
    let now = jiff::Timestamp::now();
    match leases.get_opt(node_name).await? {
        Some(mut lease) => {
            let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
            spec.renew_time = Some(MicroTime(now));
            spec.holder_identity = Some(node_name.to_owned());
            spec.lease_duration_seconds = Some(lease_duration_seconds);
            // A replace carries the resourceVersion we read: a concurrent change is a 409 and we retry.
            leases.replace(node_name, &PostParams::default(), &lease).await?;
        }
        None => {
            let node = nodes.get(node_name).await?;
            let mut lease = Lease::default();
            lease.metadata.name = Some(node_name.to_owned());
            lease.metadata.namespace = Some(NODE_LEASE_NAMESPACE.to_owned());
            lease.metadata.owner_references = Some(vec![OwnerReference {
                api_version: "v1".into(),
                kind: "Node".into(),
                name: node_name.to_owned(),
                uid: node.metadata.uid.unwrap_or_default(),
                ..Default::default()
            }]);
            lease.spec = Some(LeaseSpec {
                holder_identity: Some(node_name.to_owned()),
                lease_duration_seconds: Some(lease_duration_seconds),
                renew_time: Some(MicroTime(now)),
                ..Default::default()
            });
            leases.create(&PostParams::default(), &lease).await?;
        }
    }
    Ok(())
}
