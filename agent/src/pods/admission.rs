//! Pod admission, as kubelet's predicate admit handler decides it (`pkg/kubelet/lifecycle/predicate.go` and the
//! scheduler's `AdmissionCheck`): a new pod is admitted against the pods already admitted, and a pod that does not
//! fit is rejected with phase `Failed` and the first failing predicate as its reason. Pure: node facts in, verdict out.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{NodeSelectorRequirement, NodeSelectorTerm, Pod, PodStatus};

use super::spec;
use crate::resources::pod::{pod_requests, CpuMemory};
use crate::resources::qos::pod_qos_class;

pub const OUT_OF_CPU: &str = "OutOfcpu";
pub const OUT_OF_MEMORY: &str = "OutOfmemory";
pub const OUT_OF_PODS: &str = "OutOfpods";
pub const NODE_AFFINITY: &str = "NodeAffinity";
pub const NODE_NAME: &str = "NodeName";
pub const POD_OS_SELECTOR_NODE_LABEL_DOES_NOT_MATCH: &str = "PodOSSelectorNodeLabelDoesNotMatch";
pub const POD_OS_NOT_SUPPORTED: &str = "PodOSNotSupported";
/// The OS label kubelet compares with its own OS (`kubernetes.io/os`).
const LABEL_OS: &str = "kubernetes.io/os";
/// The scheduler plugins' failure descriptions, which kubelet copies into the rejection message.
const NODE_AFFINITY_DESC: &str = "node(s) didn't match Pod's node affinity/selector";
const NODE_NAME_DESC: &str = "node(s) didn't match the requested node name";

/// What admission knows of the node: what kubelet reads from its Node object.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeInfo {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub allocatable: CpuMemory,
    pub max_pods: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    pub reason: &'static str,
    pub message: String,
}

impl Rejection {
    /// kubelet's `rejectPod` status: Failed, the reason, and the message prefixed as kubelet does.
    pub fn status(&self, pod: &Pod) -> PodStatus {
        PodStatus {
            phase: Some("Failed".into()),
            reason: Some(self.reason.to_owned()),
            message: Some(format!("Pod was rejected: {}", self.message)),
            qos_class: Some(pod_qos_class(spec::spec(pod)).as_str().to_owned()),
            ..Default::default()
        }
    }
}

fn insufficient(resource: &str, reason: &'static str, requested: i128, used: i128, capacity: i128) -> Rejection {
    Rejection {
        reason,
        message: format!(
            "Node didn't have enough resource: {resource}, requested: {requested}, used: {used}, capacity: {capacity}"
        ),
    }
}

fn predicate(name: &'static str, desc: &str) -> Rejection {
    Rejection { reason: name, message: format!("Predicate {name} failed: {desc}") }
}

/// Decides whether `pod` may run next to `admitted` (the pods already admitted and not terminated). Static pods
/// are critical to kubelet: it preempts other pods to make room for them rather than rejecting them, so the
/// resource checks do not apply to them here.
pub fn admit(pod: &Pod, admitted: &[&Pod], node: &NodeInfo, is_static: bool) -> Result<(), Rejection> {
    // kubelet checks the pod's OS before anything else. The node's own OS label is taken to be the agent's OS
    // whatever the Node says, as kubelet's status reconcile would put it back.
    let os = std::env::consts::OS;
    let labels = pod.metadata.labels.as_ref();
    if labels.and_then(|l| l.get(LABEL_OS)).is_some_and(|v| v != os) {
        return Err(Rejection {
            reason: POD_OS_SELECTOR_NODE_LABEL_DOES_NOT_MATCH,
            message: "Failed to admit pod as the `kubernetes.io/os` label doesn't match node label".into(),
        });
    }
    if spec::spec(pod).os.as_ref().is_some_and(|o| o.name != os) {
        return Err(Rejection {
            reason: POD_OS_NOT_SUPPORTED,
            message: "Failed to admit pod as the OS field doesn't match node OS".into(),
        });
    }
    // The scheduler's order: resources (pods, then cpu, then memory), node affinity, node name.
    if !is_static {
        let used_pods = admitted.len() as i128;
        if used_pods + 1 > node.max_pods as i128 {
            return Err(insufficient("pods", OUT_OF_PODS, 1, used_pods, node.max_pods as i128));
        }
        let request = pod_requests(spec::spec(pod));
        if request.cpu_milli != 0 || request.memory_bytes != 0 {
            let used = admitted.iter().map(|p| pod_requests(spec::spec(p))).fold(CpuMemory::default(), |a, b| a + b);
            if request.cpu_milli > 0 && request.cpu_milli > node.allocatable.cpu_milli - used.cpu_milli {
                return Err(insufficient(
                    "cpu",
                    OUT_OF_CPU,
                    request.cpu_milli,
                    used.cpu_milli,
                    node.allocatable.cpu_milli,
                ));
            }
            if request.memory_bytes > 0 && request.memory_bytes > node.allocatable.memory_bytes - used.memory_bytes {
                return Err(insufficient(
                    "memory",
                    OUT_OF_MEMORY,
                    request.memory_bytes,
                    used.memory_bytes,
                    node.allocatable.memory_bytes,
                ));
            }
        }
    }
    if !matches_node_selector_and_affinity(pod, node) {
        return Err(predicate(NODE_AFFINITY, NODE_AFFINITY_DESC));
    }
    if let Some(name) = spec::spec(pod).node_name.as_deref().filter(|n| !n.is_empty()) {
        if name != node.name {
            return Err(predicate(NODE_NAME, NODE_NAME_DESC));
        }
    }
    Ok(())
}

/// `nodeSelector` (every pair present) and `requiredDuringSchedulingIgnoredDuringExecution` (any term matches).
fn matches_node_selector_and_affinity(pod: &Pod, node: &NodeInfo) -> bool {
    let spec = spec::spec(pod);
    if let Some(selector) = &spec.node_selector {
        if !selector.iter().all(|(k, v)| node.labels.get(k) == Some(v)) {
            return false;
        }
    }
    let required = spec
        .affinity
        .as_ref()
        .and_then(|a| a.node_affinity.as_ref())
        .and_then(|na| na.required_during_scheduling_ignored_during_execution.as_ref());
    match required {
        // An empty term list matches no node, as in the scheduler.
        Some(selector) => selector.node_selector_terms.iter().any(|t| term_matches(t, node)),
        None => true,
    }
}

fn term_matches(term: &NodeSelectorTerm, node: &NodeInfo) -> bool {
    let exprs = term.match_expressions.as_deref().unwrap_or_default();
    let fields = term.match_fields.as_deref().unwrap_or_default();
    // A term with no requirements matches nothing.
    if exprs.is_empty() && fields.is_empty() {
        return false;
    }
    exprs.iter().all(|r| requirement_matches(r, node.labels.get(&r.key).map(String::as_str)))
        && fields.iter().all(|r| r.key == "metadata.name" && requirement_matches(r, Some(node.name.as_str())))
}

fn requirement_matches(r: &NodeSelectorRequirement, value: Option<&str>) -> bool {
    let values = r.values.as_deref().unwrap_or_default();
    let number = |s: &str| s.parse::<i64>().ok();
    match r.operator.as_str() {
        "In" => value.is_some_and(|v| values.iter().any(|x| x == v)),
        "NotIn" => value.is_none_or(|v| !values.iter().any(|x| x == v)),
        "Exists" => value.is_some(),
        "DoesNotExist" => value.is_none(),
        "Gt" | "Lt" => {
            let (Some(have), [bound]) = (value.and_then(number), values) else { return false };
            let Some(bound) = number(bound) else { return false };
            if r.operator == "Gt" {
                have > bound
            } else {
                have < bound
            }
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn node() -> NodeInfo {
        NodeInfo {
            name: "n1".into(),
            labels: [("kubernetes.io/hostname", "n1"), ("disk", "ssd"), ("gen", "5")]
                .into_iter()
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .collect(),
            allocatable: CpuMemory { cpu_milli: 1000, memory_bytes: 1 << 30 },
            max_pods: 3,
        }
    }

    fn pod(extra_spec: serde_json::Value, cpu: &str, memory: &str) -> Pod {
        let mut spec = json!({ "containers": [{ "name": "c", "image": "busybox" }] });
        if !cpu.is_empty() || !memory.is_empty() {
            let mut requests = serde_json::Map::new();
            if !cpu.is_empty() {
                requests.insert("cpu".into(), json!(cpu));
            }
            if !memory.is_empty() {
                requests.insert("memory".into(), json!(memory));
            }
            spec["containers"][0]["resources"] = json!({ "requests": requests });
        }
        if let (Some(s), Some(extra)) = (spec.as_object_mut(), extra_spec.as_object()) {
            s.extend(extra.clone());
        }
        serde_json::from_value(json!({ "metadata": { "name": "p", "uid": "u" }, "spec": spec })).unwrap()
    }

    #[test]
    fn fits_when_requests_leave_room() {
        let others = [pod(json!({}), "400m", "256Mi")];
        let refs: Vec<&Pod> = others.iter().collect();
        assert_eq!(admit(&pod(json!({}), "600m", "512Mi"), &refs, &node(), false), Ok(()));
    }

    #[test]
    fn out_of_cpu_reports_requested_used_and_capacity_in_milli() {
        let others = [pod(json!({}), "500m", "")];
        let refs: Vec<&Pod> = others.iter().collect();
        let r = admit(&pod(json!({}), "600m", ""), &refs, &node(), false).unwrap_err();
        assert_eq!(r.reason, "OutOfcpu");
        assert_eq!(r.message, "Node didn't have enough resource: cpu, requested: 600, used: 500, capacity: 1000");
    }

    #[test]
    fn out_of_memory_reports_bytes() {
        let r = admit(&pod(json!({}), "", "2Gi"), &[], &node(), false).unwrap_err();
        assert_eq!(r.reason, "OutOfmemory");
        assert_eq!(
            r.message,
            "Node didn't have enough resource: memory, requested: 2147483648, used: 0, capacity: 1073741824"
        );
    }

    #[test]
    fn out_of_pods_counts_admitted_pods_even_without_requests() {
        let others = [pod(json!({}), "", ""), pod(json!({}), "", ""), pod(json!({}), "", "")];
        let refs: Vec<&Pod> = others.iter().collect();
        let r = admit(&pod(json!({}), "", ""), &refs, &node(), false).unwrap_err();
        assert_eq!(r.reason, "OutOfpods");
        assert_eq!(r.message, "Node didn't have enough resource: pods, requested: 1, used: 3, capacity: 3");
        let s = r.status(&pod(json!({}), "", ""));
        assert_eq!(s.phase.as_deref(), Some("Failed"));
        assert_eq!(
            s.message.as_deref(),
            Some("Pod was rejected: Node didn't have enough resource: pods, requested: 1, used: 3, capacity: 3")
        );
        assert_eq!(s.qos_class.as_deref(), Some("BestEffort"));
    }

    #[test]
    fn static_pods_skip_resource_checks_but_not_affinity() {
        assert_eq!(admit(&pod(json!({}), "8", ""), &[], &node(), true), Ok(()));
        let p = pod(json!({ "nodeSelector": { "disk": "hdd" } }), "", "");
        assert_eq!(admit(&p, &[], &node(), true).unwrap_err().reason, "NodeAffinity");
    }

    #[test]
    fn node_selector_mismatch_is_node_affinity() {
        let ok = pod(json!({ "nodeSelector": { "disk": "ssd" } }), "", "");
        assert_eq!(admit(&ok, &[], &node(), false), Ok(()));
        let bad = pod(json!({ "nodeSelector": { "disk": "ssd", "zone": "a" } }), "", "");
        let r = admit(&bad, &[], &node(), false).unwrap_err();
        assert_eq!(r.reason, "NodeAffinity");
        assert_eq!(r.message, "Predicate NodeAffinity failed: node(s) didn't match Pod's node affinity/selector");
    }

    #[test]
    fn required_node_affinity_terms_are_ored_and_expressions_anded() {
        let affinity = |terms: serde_json::Value| {
            pod(
                json!({ "affinity": { "nodeAffinity": {
                    "requiredDuringSchedulingIgnoredDuringExecution": { "nodeSelectorTerms": terms } } } }),
                "",
                "",
            )
        };
        let n = node();
        let verdict = |terms| admit(&affinity(terms), &[], &n, false).map_err(|r| r.reason);
        assert_eq!(
            verdict(json!([
                { "matchExpressions": [{ "key": "disk", "operator": "In", "values": ["hdd"] }] },
                { "matchExpressions": [{ "key": "gen", "operator": "Gt", "values": ["4"] },
                                       { "key": "gpu", "operator": "DoesNotExist" }] }
            ])),
            Ok(())
        );
        assert_eq!(
            verdict(json!([{ "matchExpressions": [{ "key": "gen", "operator": "Lt", "values": ["5"] }] }])),
            Err("NodeAffinity")
        );
        assert_eq!(
            verdict(json!([{ "matchExpressions": [{ "key": "disk", "operator": "NotIn", "values": ["ssd"] }] }])),
            Err("NodeAffinity")
        );
        assert_eq!(
            verdict(json!([{ "matchFields": [{ "key": "metadata.name", "operator": "In", "values": ["n1"] }] }])),
            Ok(())
        );
        assert_eq!(verdict(json!([{}])), Err("NodeAffinity"));
        assert_eq!(verdict(json!([])), Err("NodeAffinity"));
    }

    #[test]
    fn a_pod_for_another_os_is_rejected_before_resources_by_field_and_by_label() {
        let mut p = pod(json!({"os": {"name": "windows"}}), "100", "1Gi");
        let r = admit(&p, &[], &node(), true).unwrap_err();
        assert_eq!(
            (r.reason, r.message.as_str()),
            ("PodOSNotSupported", "Failed to admit pod as the OS field doesn't match node OS")
        );
        if let Some(s) = p.spec.as_mut() {
            s.os = None;
        }
        p.metadata.labels = Some([("kubernetes.io/os".to_owned(), "windows".to_owned())].into());
        assert_eq!(admit(&p, &[], &node(), false).unwrap_err().reason, "PodOSSelectorNodeLabelDoesNotMatch");
        let linux = pod(json!({"os": {"name": "linux"}}), "1", "1Mi");
        assert_eq!(admit(&linux, &[], &node(), false), Ok(()));
    }

    #[test]
    fn bound_to_another_node_is_node_name() {
        let r = admit(&pod(json!({ "nodeName": "n2" }), "", ""), &[], &node(), false).unwrap_err();
        assert_eq!(r.reason, "NodeName");
        assert_eq!(r.message, "Predicate NodeName failed: node(s) didn't match the requested node name");
    }

    #[test]
    fn resources_are_checked_before_affinity() {
        let p = pod(json!({ "nodeSelector": { "disk": "hdd" } }), "2", "");
        assert_eq!(admit(&p, &[], &node(), false).unwrap_err().reason, "OutOfcpu");
    }
}
