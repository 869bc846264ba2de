//! The Node object and its status, computed purely from facts about the node, as kubelet's `setNodeStatus`
//! functions compute them (pkg/kubelet/nodestatus/setters.go).

use std::collections::BTreeMap;
use std::time::SystemTime;

use k8s_openapi::api::core::v1::{Node, NodeAddress, NodeCondition, NodeSpec, NodeStatus, NodeSystemInfo, Taint};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

use crate::pods::status::to_time;
use crate::resources::pod::CpuMemory;

/// Labels kubelet always sets on its Node (`kubernetes.io/hostname`, os, arch).
pub const LABEL_HOSTNAME: &str = "kubernetes.io/hostname";
pub const LABEL_OS: &str = "kubernetes.io/os";
pub const LABEL_ARCH: &str = "kubernetes.io/arch";

/// Condition types, reasons and messages (pkg/kubelet/nodestatus/setters.go).
pub const NODE_READY: &str = "Ready";
pub const MEMORY_PRESSURE: &str = "MemoryPressure";
pub const DISK_PRESSURE: &str = "DiskPressure";
pub const PID_PRESSURE: &str = "PIDPressure";

/// What the node knows about itself when it builds its status.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeFacts {
    pub name: String,
    pub capacity: CpuMemory,
    pub allocatable: CpuMemory,
    pub ephemeral_storage_bytes: i128,
    pub max_pods: u32,
    pub addresses: Vec<String>,
    pub hostname: String,
    pub kernel_version: String,
    pub os_image: String,
    pub architecture: String,
    pub machine_id: String,
    pub boot_id: String,
    pub container_runtime_version: String,
    pub kubelet_version: String,
    /// Why the node is not ready (runtime down, network not ready), or `None` when it is.
    pub not_ready_reason: Option<String>,
}

/// Go's `runtime.GOARCH` names for the node label and nodeInfo.
pub fn go_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        "powerpc64" => "ppc64le",
        other => other,
    }
}

fn quantity_cpu(milli: i128) -> Quantity {
    if milli % 1000 == 0 {
        Quantity((milli / 1000).to_string())
    } else {
        Quantity(format!("{milli}m"))
    }
}

/// Memory as kubelet prints it: in Ki when it divides evenly, else bytes.
fn quantity_bytes(bytes: i128) -> Quantity {
    if bytes % 1024 == 0 {
        Quantity(format!("{}Ki", bytes / 1024))
    } else {
        Quantity(bytes.to_string())
    }
}

fn resources(r: CpuMemory, facts: &NodeFacts) -> BTreeMap<String, Quantity> {
    BTreeMap::from([
        ("cpu".to_string(), quantity_cpu(r.cpu_milli)),
        ("memory".to_string(), quantity_bytes(r.memory_bytes)),
        ("pods".to_string(), Quantity(facts.max_pods.to_string())),
        ("ephemeral-storage".to_string(), quantity_bytes(facts.ephemeral_storage_bytes)),
    ])
}

fn condition(kind: &str, status: bool, reason: &str, message: &str) -> NodeCondition {
    NodeCondition {
        type_: kind.into(),
        status: if status { "True" } else { "False" }.into(),
        reason: Some(reason.into()),
        message: Some(message.into()),
        ..Default::default()
    }
}

/// The node's status. Conditions keep their transition time from `previous` while their status is unchanged; the
/// heartbeat is `now`.
pub fn node_status(facts: &NodeFacts, previous: Option<&NodeStatus>, now: SystemTime) -> NodeStatus {
    let ready = match &facts.not_ready_reason {
        None => condition(NODE_READY, true, "KubeletReady", "kubelet is posting ready status"),
        Some(why) => condition(NODE_READY, false, "KubeletNotReady", why),
    };
    let mut conditions = vec![
        condition(MEMORY_PRESSURE, false, "KubeletHasSufficientMemory", "kubelet has sufficient memory available"),
        condition(DISK_PRESSURE, false, "KubeletHasNoDiskPressure", "kubelet has no disk pressure"),
        condition(PID_PRESSURE, false, "KubeletHasSufficientPID", "kubelet has sufficient PID available"),
        ready,
    ];
    let now_t = to_time(now);
    for c in &mut conditions {
        let prev = previous.and_then(|p| p.conditions.as_ref()).and_then(|cs| cs.iter().find(|p| p.type_ == c.type_));
        c.last_heartbeat_time = now_t.clone();
        c.last_transition_time = match prev {
            Some(p) if p.status == c.status => p.last_transition_time.clone().or(now_t.clone()),
            _ => now_t.clone(),
        };
    }
    let mut addresses: Vec<NodeAddress> =
        facts.addresses.iter().map(|a| NodeAddress { type_: "InternalIP".into(), address: a.clone() }).collect();
    addresses.push(NodeAddress { type_: "Hostname".into(), address: facts.hostname.clone() });
    NodeStatus {
        capacity: Some(resources(facts.capacity, facts)),
        allocatable: Some(resources(facts.allocatable, facts)),
        conditions: Some(conditions),
        addresses: Some(addresses),
        node_info: Some(NodeSystemInfo {
            architecture: facts.architecture.clone(),
            boot_id: facts.boot_id.clone(),
            container_runtime_version: facts.container_runtime_version.clone(),
            kernel_version: facts.kernel_version.clone(),
            kube_proxy_version: String::new(),
            kubelet_version: facts.kubelet_version.clone(),
            machine_id: facts.machine_id.clone(),
            operating_system: "linux".into(),
            os_image: facts.os_image.clone(),
            system_uuid: facts.machine_id.clone(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// kubelet's default node labels plus `--node-labels`.
pub fn node_labels(hostname: &str, architecture: &str, extra: &BTreeMap<String, String>) -> BTreeMap<String, String> {
    let mut labels = BTreeMap::from([
        (LABEL_HOSTNAME.to_string(), hostname.to_owned()),
        (LABEL_OS.to_string(), "linux".to_string()),
        (LABEL_ARCH.to_string(), architecture.to_owned()),
        ("beta.kubernetes.io/os".to_string(), "linux".to_string()),
        ("beta.kubernetes.io/arch".to_string(), architecture.to_owned()),
    ]);
    labels.extend(extra.clone());
    labels
}

/// The Node to register: kubelet's default labels plus `--node-labels`, and `registerWithTaints`.
pub fn initial_node(
    facts: &NodeFacts,
    extra_labels: &BTreeMap<String, String>,
    taints: &[Taint],
    now: SystemTime,
) -> Node {
    let labels = node_labels(&facts.hostname, &facts.architecture, extra_labels);
    let mut node = Node::default();
    node.metadata.name = Some(facts.name.clone());
    node.metadata.labels = Some(labels);
    node.metadata.annotations = Some(BTreeMap::from([(
        "volumes.kubernetes.io/controller-managed-attach-detach".to_string(),
        "true".to_string(),
    )]));
    node.spec = Some(NodeSpec { taints: (!taints.is_empty()).then(|| taints.to_vec()), ..Default::default() });
    node.status = Some(node_status(facts, None, now));
    node
}

/// True when two statuses differ in anything but heartbeat times: only then is an early status update needed.
pub fn status_changed(a: &NodeStatus, b: &NodeStatus) -> bool {
    let strip = |s: &NodeStatus| {
        let mut s = s.clone();
        for c in s.conditions.iter_mut().flatten() {
            c.last_heartbeat_time = None;
        }
        s
    };
    strip(a) != strip(b)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    fn facts() -> NodeFacts {
        NodeFacts {
            name: "node-1".into(),
            capacity: CpuMemory { cpu_milli: 2000, memory_bytes: 4 << 30 },
            allocatable: CpuMemory { cpu_milli: 1900, memory_bytes: (4 << 30) - (100 << 20) },
            ephemeral_storage_bytes: 10 << 30,
            max_pods: 110,
            addresses: vec!["192.0.2.10".into()],
            hostname: "node-1".into(),
            kernel_version: "6.1.0".into(),
            os_image: "Debian GNU/Linux 12 (bookworm)".into(),
            architecture: "amd64".into(),
            machine_id: "m".into(),
            boot_id: "b".into(),
            container_runtime_version: "containerd://1.6.20".into(),
            kubelet_version: "v1.34.0-rkubelet".into(),
            not_ready_reason: None,
        }
    }

    fn t(s: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(1_700_000_000 + s)
    }

    fn cond<'a>(s: &'a NodeStatus, kind: &str) -> &'a NodeCondition {
        s.conditions.as_ref().unwrap().iter().find(|c| c.type_ == kind).unwrap()
    }

    #[test]
    fn capacity_allocatable_and_ready() {
        let s = node_status(&facts(), None, t(0));
        let cap = s.capacity.as_ref().unwrap();
        assert_eq!(cap["cpu"], Quantity("2".into()));
        assert_eq!(cap["memory"], Quantity("4194304Ki".into()));
        assert_eq!(cap["pods"], Quantity("110".into()));
        let alloc = s.allocatable.as_ref().unwrap();
        assert_eq!(alloc["cpu"], Quantity("1900m".into()));
        assert_eq!(alloc["memory"], Quantity("4091904Ki".into()));
        let ready = cond(&s, "Ready");
        assert_eq!((ready.status.as_str(), ready.reason.as_deref()), ("True", Some("KubeletReady")));
        assert_eq!(cond(&s, "MemoryPressure").reason.as_deref(), Some("KubeletHasSufficientMemory"));
        assert_eq!(cond(&s, "DiskPressure").reason.as_deref(), Some("KubeletHasNoDiskPressure"));
        assert_eq!(cond(&s, "PIDPressure").reason.as_deref(), Some("KubeletHasSufficientPID"));
        let addrs = s.addresses.as_ref().unwrap();
        assert_eq!(addrs[0].type_, "InternalIP");
        assert_eq!(addrs[1].type_, "Hostname");
        assert_eq!(s.node_info.as_ref().unwrap().container_runtime_version, "containerd://1.6.20");
    }

    #[test]
    fn runtime_down_makes_the_node_not_ready_and_transitions_are_tracked() {
        let ok = node_status(&facts(), None, t(0));
        let mut f = facts();
        f.not_ready_reason = Some("container runtime is down".into());
        let down = node_status(&f, Some(&ok), t(10));
        let ready = cond(&down, "Ready");
        assert_eq!((ready.status.as_str(), ready.reason.as_deref()), ("False", Some("KubeletNotReady")));
        assert_eq!(ready.message.as_deref(), Some("container runtime is down"));
        assert_eq!(ready.last_transition_time, to_time(t(10)));
        assert_eq!(cond(&down, "DiskPressure").last_transition_time, to_time(t(0)), "unchanged keeps its time");
        assert!(status_changed(&ok, &down));
        let again = node_status(&facts(), Some(&ok), t(20));
        assert!(!status_changed(&ok, &again), "only heartbeats moved");
    }

    #[test]
    fn initial_node_has_kubelet_labels() {
        let extra = BTreeMap::from([("role".to_string(), "edge".to_string())]);
        let taint = Taint { key: "dedicated".into(), effect: "NoSchedule".into(), ..Default::default() };
        let n = initial_node(&facts(), &extra, &[taint], t(0));
        let labels = n.metadata.labels.unwrap();
        assert_eq!(labels["kubernetes.io/hostname"], "node-1");
        assert_eq!(labels["kubernetes.io/os"], "linux");
        assert_eq!(labels["kubernetes.io/arch"], "amd64");
        assert_eq!(labels["role"], "edge");
        assert_eq!(n.spec.unwrap().taints.unwrap()[0].key, "dedicated");
    }
}
