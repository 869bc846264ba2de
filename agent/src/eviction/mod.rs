//! kubelet's eviction manager (pkg/kubelet/eviction): it watches memory, disk and PID signals against the
//! configured thresholds, reports `MemoryPressure`/`DiskPressure`/`PIDPressure`, reclaims node-level resources,
//! then evicts pods one at a time in kubelet's order, and refuses new pods under pressure.

pub mod helpers;
pub mod local_storage;
pub mod manager;
pub mod notifier;
pub mod psi;
pub mod threshold;

use k8s_openapi::api::core::v1::Pod;

use crate::kubetypes::admission::Rejection;
use crate::kubetypes::annotations::{API_SOURCE, CONFIG_MIRROR_ANNOTATION, CONFIG_SOURCE_ANNOTATION};
use crate::kubetypes::qos::{pod_qos_class, QosClass};
use crate::kubetypes::spec;

pub use manager::{EvictionConfig, Manager, NodeObserver, Observed, Observer};
pub use threshold::NodeConditionType;

/// `Reason` (helpers.go): the status reason and event reason of an evicted or refused pod.
pub const REASON: &str = "Evicted";
/// `v1.PodReasonTerminationByKubelet`: the `DisruptionTarget` condition's reason.
pub const POD_REASON_TERMINATION_BY_KUBELET: &str = "TerminationByKubelet";
/// `v1.TaintNodeMemoryPressure`.
pub const TAINT_NODE_MEMORY_PRESSURE: &str = "node.kubernetes.io/memory-pressure";
/// `scheduling.SystemCriticalPriority`.
const SYSTEM_CRITICAL_PRIORITY: i32 = 2_000_000_000;

/// The pressure conditions the manager holds true, in a fixed order (memory, disk, PID).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodePressure {
    pub conditions: Vec<NodeConditionType>,
}

impl NodePressure {
    pub fn new(mut conditions: Vec<NodeConditionType>) -> Self {
        conditions.sort();
        conditions.dedup();
        NodePressure { conditions }
    }

    pub fn has(&self, c: NodeConditionType) -> bool {
        self.conditions.contains(&c)
    }

    pub fn memory(&self) -> bool {
        self.has(NodeConditionType::MemoryPressure)
    }

    pub fn disk(&self) -> bool {
        self.has(NodeConditionType::DiskPressure)
    }

    pub fn pid(&self) -> bool {
        self.has(NodeConditionType::PidPressure)
    }
}

/// Node-level reclaim before evicting pods (kubelet's `ContainerGC.DeleteAllUnusedContainers` and
/// `ImageGC.DeleteUnusedImages`): dead containers first, then unused images.
pub trait NodeReclaim: Send + Sync {
    fn delete_unused_containers(&self) -> futures::future::BoxFuture<'_, ()>;
    /// Returns the bytes freed.
    fn delete_unused_images(&self) -> futures::future::BoxFuture<'_, u64>;
}

/// `types.IsCriticalPod`: static, mirror, or at `system-cluster-critical` priority or above.
pub fn is_critical(pod: &Pod) -> bool {
    let annotation = |k: &str| pod.metadata.annotations.as_ref().and_then(|a| a.get(k));
    annotation(CONFIG_SOURCE_ANNOTATION).is_some_and(|s| s != API_SOURCE)
        || annotation(CONFIG_MIRROR_ANNOTATION).is_some()
        || spec::spec(pod).priority.is_some_and(|p| p >= SYSTEM_CRITICAL_PRIORITY)
}

/// `corev1helpers.TolerationsTolerateTaint` for the `NoSchedule` memory-pressure taint.
fn tolerates_memory_pressure(pod: &Pod) -> bool {
    spec::spec(pod).tolerations.iter().flatten().any(|t| {
        let effect = t.effect.as_deref().unwrap_or_default();
        if !effect.is_empty() && effect != "NoSchedule" {
            return false;
        }
        let key = t.key.as_deref().unwrap_or_default();
        match t.operator.as_deref().unwrap_or_default() {
            "Exists" => key.is_empty() || key == TAINT_NODE_MEMORY_PRESSURE,
            "" | "Equal" => key == TAINT_NODE_MEMORY_PRESSURE && t.value.as_deref().unwrap_or_default().is_empty(),
            _ => false,
        }
    })
}

/// The eviction manager's `Admit` (eviction_manager.go): under memory pressure alone, BestEffort pods that do not
/// tolerate the memory-pressure taint are refused; under any other pressure every pod is; critical pods always
/// pass. `nodeConditionMessageFmt` prints the conditions as Go prints a slice.
pub fn admit(pod: &Pod, pressure: &NodePressure) -> Result<(), Rejection> {
    if pressure.conditions.is_empty() || is_critical(pod) {
        return Ok(());
    }
    if pressure.conditions == [NodeConditionType::MemoryPressure]
        && (pod_qos_class(spec::spec(pod)) != QosClass::BestEffort || tolerates_memory_pressure(pod))
    {
        return Ok(());
    }
    let names: Vec<&str> = pressure.conditions.iter().map(|c| c.as_str()).collect();
    tracing::info!(pod = %spec::format_pod(pod), node_condition = ?names, "failed to admit pod to node");
    Err(Rejection { reason: REASON.into(), message: format!("The node had condition: [{}]. ", names.join(" ")) })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(v: serde_json::Value) -> Pod {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn admission_under_memory_pressure_refuses_only_best_effort_pods_without_the_toleration() {
        let memory = NodePressure::new(vec![NodeConditionType::MemoryPressure]);
        let best_effort = pod(json!({"metadata": {"name": "be"}, "spec": {"containers": [{"name": "c"}]}}));
        let burstable = pod(json!({"metadata": {"name": "bu"}, "spec": {"containers": [
            {"name": "c", "resources": {"requests": {"memory": "10Mi"}}}]}}));
        let tolerating = pod(json!({"metadata": {"name": "t"}, "spec": {"containers": [{"name": "c"}],
            "tolerations": [{"key": TAINT_NODE_MEMORY_PRESSURE, "operator": "Exists", "effect": "NoSchedule"}]}}));
        let tolerating_disk = pod(json!({"metadata": {"name": "t"}, "spec": {"containers": [{"name": "c"}],
            "tolerations": [{"key": "node.kubernetes.io/disk-pressure", "operator": "Exists"}]}}));
        let critical =
            pod(json!({"metadata": {"name": "k"}, "spec": {"priority": 2_000_001_000, "containers": [{"name": "c"}]}}));
        let err = admit(&best_effort, &memory).unwrap_err();
        assert_eq!((&*err.reason, err.message.as_str()), ("Evicted", "The node had condition: [MemoryPressure]. "));
        assert!(admit(&burstable, &memory).is_ok());
        assert!(admit(&tolerating, &memory).is_ok());
        assert!(admit(&tolerating_disk, &memory).is_err());
        assert!(admit(&critical, &memory).is_ok());
        assert!(admit(&best_effort, &NodePressure::default()).is_ok());
    }

    #[test]
    fn admission_under_disk_pressure_refuses_every_non_critical_pod() {
        let disk = NodePressure::new(vec![NodeConditionType::DiskPressure, NodeConditionType::MemoryPressure]);
        let burstable = pod(json!({"metadata": {"name": "bu"}, "spec": {"containers": [
            {"name": "c", "resources": {"requests": {"memory": "10Mi"}}}]}}));
        let err = admit(&burstable, &disk).unwrap_err();
        assert_eq!(err.message, "The node had condition: [MemoryPressure DiskPressure]. ");
        let static_pod = pod(json!({"metadata": {"name": "s", "annotations": {CONFIG_SOURCE_ANNOTATION: "file"}},
            "spec": {"containers": [{"name": "c"}]}}));
        assert!(admit(&static_pod, &disk).is_ok(), "static pods are critical");
        let mirror = pod(
            json!({"metadata": {"name": "m", "annotations": {CONFIG_MIRROR_ANNOTATION: "x", CONFIG_SOURCE_ANNOTATION: "api"}},
            "spec": {"containers": [{"name": "c"}]}}),
        );
        assert!(admit(&mirror, &disk).is_ok());
    }
}
