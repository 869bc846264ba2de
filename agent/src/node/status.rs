//! The Node object and its status, computed purely from facts about the node, as kubelet's `setNodeStatus`
//! functions compute them (pkg/kubelet/nodestatus/setters.go).

use std::collections::BTreeMap;
use std::time::SystemTime;

use k8s_openapi::api::core::v1::{
    ContainerImage, DaemonEndpoint, Node, NodeAddress, NodeCondition, NodeDaemonEndpoints, NodeSpec, NodeStatus,
    NodeSystemInfo, Taint,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::version::Info;
use serde_json::{Map, Value};

use crate::api::strategic;
use crate::cm::pod::CpuMemory;
use crate::kubetypes::quantity::parse_milli;
use crate::pods::status::to_time;

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
    /// The images on the node, largest first, as `status.images` lists them.
    pub images: Vec<ContainerImage>,
    /// The port the kubelet server listens on, for `daemonEndpoints` (the API server's proxy to logs, exec...).
    pub kubelet_port: u16,
    /// Why the node is not ready (runtime down, network not ready), or `None` when it is.
    pub not_ready_reason: Option<String>,
    /// The pressure conditions the eviction manager holds true.
    pub pressure: crate::eviction::NodePressure,
}

/// kubelet's `nodeStatusMaxImages` default and `MaxNamesPerImageInNodeStatus`.
pub const NODE_STATUS_MAX_IMAGES: usize = 50;
pub const MAX_NAMES_PER_IMAGE: usize = 5;

/// kubelet's images setter: largest first, at most `max` images, each named by its digests then its tags (at most
/// five names).
pub fn node_images(images: &[crate::runtime::stats::ImageRecord], max: usize) -> Vec<ContainerImage> {
    let mut sorted: Vec<&crate::runtime::stats::ImageRecord> = images.iter().collect();
    sorted.sort_by_key(|i| std::cmp::Reverse(i.size_bytes));
    sorted
        .into_iter()
        .take(max)
        .map(|i| {
            let mut names: Vec<String> = i.repo_digests.iter().chain(i.repo_tags.iter()).cloned().collect();
            names.truncate(MAX_NAMES_PER_IMAGE);
            ContainerImage { names: Some(names), size_bytes: Some(i.size_bytes as i64) }
        })
        .collect()
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
    let memory = if facts.pressure.memory() {
        condition(MEMORY_PRESSURE, true, "KubeletHasInsufficientMemory", "kubelet has insufficient memory available")
    } else {
        condition(MEMORY_PRESSURE, false, "KubeletHasSufficientMemory", "kubelet has sufficient memory available")
    };
    let disk = if facts.pressure.disk() {
        condition(DISK_PRESSURE, true, "KubeletHasDiskPressure", "kubelet has disk pressure")
    } else {
        condition(DISK_PRESSURE, false, "KubeletHasNoDiskPressure", "kubelet has no disk pressure")
    };
    let pid = if facts.pressure.pid() {
        condition(PID_PRESSURE, true, "KubeletHasInsufficientPID", "kubelet has insufficient PID available")
    } else {
        condition(PID_PRESSURE, false, "KubeletHasSufficientPID", "kubelet has sufficient PID available")
    };
    let mut conditions = vec![memory, disk, pid, ready];
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
        images: (!facts.images.is_empty()).then(|| facts.images.clone()),
        daemon_endpoints: Some(NodeDaemonEndpoints {
            kubelet_endpoint: Some(DaemonEndpoint { port: i32::from(facts.kubelet_port) }),
        }),
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

/// The status to report, computed on top of the one the API holds, as kubelet's `setNodeStatus` updates the Node it
/// read back: our conditions replace theirs by type (keeping the transition time while the status is unchanged),
/// conditions and capacity others set stay, addresses and nodeInfo are ours.
pub fn set_node_status(api: Option<&NodeStatus>, facts: &NodeFacts, now: SystemTime) -> NodeStatus {
    let ours = node_status(facts, api, now);
    let mut status = api.cloned().unwrap_or_default();
    let mut conditions = status.conditions.take().unwrap_or_default();
    for c in ours.conditions.into_iter().flatten() {
        match conditions.iter_mut().find(|have| have.type_ == c.type_) {
            Some(have) => *have = c,
            None => conditions.push(c),
        }
    }
    status.conditions = Some(conditions);
    // Extended resources others advertise stay in capacity and are allocatable whole; allocatable keeps nothing
    // that capacity no longer has (kubelet's MachineInfo setter).
    let mut capacity = status.capacity.take().unwrap_or_default();
    capacity.extend(ours.capacity.into_iter().flatten());
    let mut allocatable: BTreeMap<String, Quantity> = capacity.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    allocatable.extend(ours.allocatable.into_iter().flatten());
    status.capacity = Some(capacity);
    status.allocatable = Some(allocatable);
    status.addresses = ours.addresses;
    status.daemon_endpoints = ours.daemon_endpoints;
    status.images = ours.images;
    status.node_info = ours.node_info;
    status
}

/// Quantities compared by value: the server may print `4Gi` for our `4194304Ki`.
fn same_resources(a: &Option<BTreeMap<String, Quantity>>, b: &Option<BTreeMap<String, Quantity>>) -> bool {
    let values = |m: &Option<BTreeMap<String, Quantity>>| -> BTreeMap<String, Option<i128>> {
        m.iter().flatten().map(|(k, q)| (k.clone(), parse_milli(&q.0).ok())).collect()
    };
    values(a) == values(b)
}

/// kubelet's `nodeStatusHasChanged`: true when the statuses differ in anything but the conditions' heartbeat times
/// (conditions compared regardless of their order).
pub fn node_status_has_changed(original: Option<&NodeStatus>, status: &NodeStatus) -> bool {
    let Some(original) = original else { return true };
    let conditions = |s: &NodeStatus| {
        let mut cs = s.conditions.clone().unwrap_or_default();
        for c in &mut cs {
            c.last_heartbeat_time = None;
        }
        cs.sort_by(|a, b| a.type_.cmp(&b.type_));
        cs
    };
    if conditions(original) != conditions(status) {
        return true;
    }
    if !same_resources(&original.capacity, &status.capacity)
        || !same_resources(&original.allocatable, &status.allocatable)
    {
        return true;
    }
    let rest = |s: &NodeStatus| {
        let mut s = s.clone();
        s.conditions = None;
        s.capacity = None;
        s.allocatable = None;
        serde_json::to_value(&s).ok().and_then(|v| strategic::normalize(&v))
    };
    rest(original) != rest(status)
}

/// The status patch kubelet's `nodeutil.PatchNodeStatus` sends: a two-way strategic merge patch from the status the
/// API holds, conditions merged by type, except that changed addresses go whole under `$patch: replace`. Their
/// patch merge key is the address type, so a merge would fold several InternalIPs of a dual-stack node into one.
/// `None` when there is nothing to change.
pub fn node_status_patch(original: Option<&NodeStatus>, status: &NodeStatus) -> Option<Value> {
    let json = |s: Option<&NodeStatus>| -> Map<String, Value> {
        s.and_then(|s| serde_json::to_value(s).ok())
            .and_then(|v| strategic::normalize(&v))
            .and_then(|v| v.as_object().cloned())
            .unwrap_or_default()
    };
    let mut old = json(original);
    let mut new = json(Some(status));
    // Left out of the diff (by type, several InternalIPs would pair up wrongly); sent whole below when changed.
    let old_addresses = old.remove("addresses");
    let new_addresses = new.remove("addresses");
    let addresses_changed = old_addresses != new_addresses;
    let wrap = |m: Map<String, Value>| {
        let mut w = Map::new();
        w.insert("status".to_owned(), Value::Object(m));
        w
    };
    let mut patch = strategic::two_way(&wrap(old), &wrap(new), strategic::node_merge_keys);
    if addresses_changed {
        let items = new_addresses.and_then(|a| a.as_array().cloned()).unwrap_or_default();
        let status = patch.entry("status").or_insert_with(|| Value::Object(Map::new()));
        if let Some(m) = status.as_object_mut() {
            m.insert("addresses".into(), strategic::replace_list(items));
        }
    }
    (!patch.is_empty()).then_some(Value::Object(patch))
}

/// `major.minor.patch` of a Kubernetes version string (`v1.28.7`, `1.34.0`, `v1.28.7+k3s1`).
fn semver_core(text: &str) -> Option<(u64, u64, u64)> {
    let core = text.trim().trim_start_matches('v');
    let core = core.split(['-', '+']).next()?;
    let mut parts = core.split('.').map(|p| p.parse::<u64>().ok());
    Some((parts.next()??, parts.next()??, parts.next().flatten().unwrap_or(0)))
}

/// The Kubernetes minor version whose kubelet behaviour this agent follows, reported in nodeInfo when the API
/// server is not older.
pub const KUBELET_COMPAT_VERSION: &str = "1.34.0";

/// The `kubeletVersion` to report: the Kubernetes version whose kubelet behaviour we follow (`compat`), lowered to
/// the API server's own version when that is older, so the node never claims to be newer than its control plane
/// (the version skew policy forbids kubelets newer than the API server). The `-rkubelet.<build>` suffix is a semver
/// pre-release, which orders below the plain version it follows.
pub fn kubelet_version(compat: &str, server: Option<&Info>, build: &str) -> String {
    let ours = semver_core(compat).unwrap_or((0, 0, 0));
    let theirs = server.and_then(|i| {
        semver_core(&i.git_version).or_else(|| {
            let minor = i.minor.trim_end_matches('+');
            Some((i.major.parse().ok()?, minor.parse().ok()?, 0))
        })
    });
    let (major, minor, patch) = match theirs {
        Some(v) if v < ours => v,
        _ => ours,
    };
    format!("v{major}.{minor}.{patch}-rkubelet.{build}")
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
            kubelet_port: 10250,
            images: vec![],
            not_ready_reason: None,
            pressure: Default::default(),
        }
    }

    #[test]
    fn pressure_conditions_follow_the_eviction_manager_with_kubelets_reasons() {
        use crate::eviction::{NodeConditionType, NodePressure};
        let calm = node_status(&facts(), None, t(0));
        let mut f = facts();
        f.pressure = NodePressure::new(vec![
            NodeConditionType::DiskPressure,
            NodeConditionType::MemoryPressure,
            NodeConditionType::PidPressure,
        ]);
        let pressed = node_status(&f, Some(&calm), t(10));
        let want = [
            ("MemoryPressure", "KubeletHasInsufficientMemory", "kubelet has insufficient memory available"),
            ("DiskPressure", "KubeletHasDiskPressure", "kubelet has disk pressure"),
            ("PIDPressure", "KubeletHasInsufficientPID", "kubelet has insufficient PID available"),
        ];
        for (kind, reason, message) in want {
            let c = cond(&pressed, kind);
            assert_eq!(
                (c.status.as_str(), c.reason.as_deref(), c.message.as_deref()),
                ("True", Some(reason), Some(message))
            );
            assert_eq!(c.last_transition_time, to_time(t(10)), "{kind} changed at 10");
        }
        assert!(node_status_has_changed(Some(&calm), &pressed));
        let calm_again = node_status(&facts(), Some(&pressed), t(20));
        let c = cond(&calm_again, "DiskPressure");
        assert_eq!((c.status.as_str(), c.reason.as_deref()), ("False", Some("KubeletHasNoDiskPressure")));
        assert_eq!(c.last_transition_time, to_time(t(20)));
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
        assert_eq!(s.daemon_endpoints.unwrap().kubelet_endpoint.unwrap().port, 10250);
    }

    #[test]
    fn images_are_listed_largest_first_with_digests_then_tags_up_to_kubelets_limits() {
        use crate::runtime::stats::ImageRecord;
        let image = |size: u64, tags: usize| ImageRecord {
            id: format!("sha256:{size}"),
            repo_tags: (0..tags).map(|i| format!("r/img:{i}")).collect(),
            repo_digests: vec![format!("r/img@sha256:{size}")],
            size_bytes: size,
            pinned: false,
        };
        let images: Vec<ImageRecord> = (1..=60).map(|s| image(s * 1000, 1)).chain([image(7, 9)]).collect();
        let listed = node_images(&images, NODE_STATUS_MAX_IMAGES);
        assert_eq!(listed.len(), 50);
        assert_eq!(listed[0].size_bytes, Some(60_000));
        assert_eq!(listed[0].names.as_deref(), Some(&["r/img@sha256:60000".to_string(), "r/img:0".to_string()][..]));
        assert_eq!(node_images(&[image(7, 9)], 50)[0].names.as_ref().map(Vec::len), Some(5));
        let mut f = facts();
        f.images = listed.clone();
        let s = node_status(&f, None, t(0));
        assert_eq!(s.images.as_ref().map(Vec::len), Some(50));
        let patch = node_status_patch(Some(&node_status(&facts(), None, t(0))), &set_node_status(None, &f, t(0)));
        assert!(patch.is_some_and(|p| p["status"]["images"].is_array()));
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
        assert!(node_status_has_changed(Some(&ok), &down));
        let again = node_status(&facts(), Some(&ok), t(20));
        assert!(!node_status_has_changed(Some(&ok), &again), "only heartbeats moved");
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

    #[test]
    fn changed_addresses_are_replaced_whole_and_conditions_merged_by_type() {
        let mut f = facts();
        f.addresses = vec!["192.0.2.2".into()];
        let old = node_status(&f, None, t(0));
        f.addresses = vec!["192.0.2.2".into(), "fd00::2".into()];
        let new = set_node_status(Some(&old), &f, t(10));
        let patch = node_status_patch(Some(&old), &new).expect("a patch");
        assert_eq!(
            patch["status"]["addresses"],
            serde_json::json!([
                {"type": "InternalIP", "address": "192.0.2.2"},
                {"type": "InternalIP", "address": "fd00::2"},
                {"type": "Hostname", "address": "node-1"},
                {"$patch": "replace"},
            ])
        );
        // Only heartbeats moved in the conditions: each goes by type, with its heartbeat alone.
        let conditions = patch["status"]["conditions"].as_array().expect("conditions");
        assert_eq!(conditions.len(), 4);
        assert!(conditions.iter().all(|c| c.as_object().unwrap().len() == 2 && c.get("lastHeartbeatTime").is_some()));
        assert!(patch["status"].get("$setElementOrder/addresses").is_none());
        // From two InternalIPs to one: the list goes whole again, with no by-type pairing of the two.
        f.addresses = vec!["fd00::2".into()];
        let one = set_node_status(Some(&new), &f, t(20));
        let patch = node_status_patch(Some(&new), &one).expect("a patch");
        assert_eq!(
            patch["status"]["addresses"],
            serde_json::json!([
                {"type": "InternalIP", "address": "fd00::2"},
                {"type": "Hostname", "address": "node-1"},
                {"$patch": "replace"},
            ])
        );
        assert!(patch["status"].get("$setElementOrder/addresses").is_none(), "{patch}");
    }

    #[test]
    fn the_node_controller_marking_the_node_unknown_is_a_change_to_write() {
        let ours = node_status(&facts(), None, t(0));
        let mut api = ours.clone();
        for c in api.conditions.iter_mut().flatten() {
            c.status = "Unknown".into();
            c.reason = Some("NodeStatusUnknown".into());
            c.message = Some("Kubelet stopped posting node status.".into());
        }
        api.conditions.get_or_insert_with(Vec::new).push(NodeCondition {
            type_: "NetworkUnavailable".into(),
            status: "False".into(),
            ..Default::default()
        });
        let new = set_node_status(Some(&api), &facts(), t(60));
        assert!(node_status_has_changed(Some(&api), &new));
        let ready = cond(&new, "Ready");
        assert_eq!((ready.status.as_str(), ready.last_transition_time.clone()), ("True", to_time(t(60))));
        assert_eq!(cond(&new, "NetworkUnavailable").status, "False", "conditions others own stay");
        let patch = node_status_patch(Some(&api), &new).expect("a patch");
        assert!(patch["status"].get("addresses").is_none(), "unchanged addresses are not sent: {patch}");
        let sent: Vec<&str> =
            patch["status"]["conditions"].as_array().unwrap().iter().map(|c| c["type"].as_str().unwrap()).collect();
        assert!(sent.contains(&"Ready") && !sent.contains(&"NetworkUnavailable"), "{sent:?}");
        // Read back after the write: nothing differs but heartbeats.
        let again = set_node_status(Some(&new), &facts(), t(70));
        assert!(!node_status_has_changed(Some(&new), &again));
    }

    #[test]
    fn quantities_compare_by_value() {
        let ours = node_status(&facts(), None, t(0));
        let mut api = ours.clone();
        api.capacity.as_mut().unwrap().insert("memory".into(), Quantity("4Gi".into()));
        api.capacity.as_mut().unwrap().insert("example.com/dongle".into(), Quantity("2".into()));
        let new = set_node_status(Some(&api), &facts(), t(0));
        assert_eq!(new.allocatable.as_ref().unwrap()["example.com/dongle"], Quantity("2".into()));
        let mut api_with_allocatable = api.clone();
        api_with_allocatable.allocatable = new.allocatable.clone();
        assert!(!node_status_has_changed(Some(&api_with_allocatable), &new));
    }

    #[test]
    fn kubelet_version_never_claims_to_be_newer_than_the_api_server() {
        let info = |git: &str, major: &str, minor: &str| Info {
            git_version: git.into(),
            major: major.into(),
            minor: minor.into(),
            ..Default::default()
        };
        assert_eq!(kubelet_version("1.34.0", Some(&info("v1.28.7", "1", "28")), "0.1.0"), "v1.28.7-rkubelet.0.1.0");
        assert_eq!(
            kubelet_version("v1.34.0", Some(&info("v1.35.2+k3s1", "1", "35")), "0.1.0"),
            "v1.34.0-rkubelet.0.1.0"
        );
        assert_eq!(kubelet_version("1.34.0", Some(&info("", "1", "29+")), "0.1.0"), "v1.29.0-rkubelet.0.1.0");
        assert_eq!(kubelet_version("1.34.0", None, "0.1.0"), "v1.34.0-rkubelet.0.1.0");
    }
}
