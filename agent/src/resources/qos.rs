//! QoS class, computed as kubelet's `GetPodQOS` does.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Container, PodSpec};

use crate::resources::quantity::parse_milli;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QosClass {
    Guaranteed,
    Burstable,
    BestEffort,
}

impl QosClass {
    pub fn as_str(self) -> &'static str {
        match self {
            QosClass::Guaranteed => "Guaranteed",
            QosClass::Burstable => "Burstable",
            QosClass::BestEffort => "BestEffort",
        }
    }
}

/// Only cpu and memory count towards the QoS class.
const QOS_RESOURCES: [&str; 2] = ["cpu", "memory"];

/// Positive cpu/memory quantities of one list (requests or limits); unparsable ones count as absent, since the
/// manifest validation has already rejected them.
fn positive(
    list: Option<&BTreeMap<String, k8s_openapi::apimachinery::pkg::api::resource::Quantity>>,
) -> BTreeMap<&'static str, i128> {
    let mut out = BTreeMap::new();
    for name in QOS_RESOURCES {
        if let Some(q) = list.and_then(|l| l.get(name)) {
            if let Ok(v) = parse_milli(&q.0) {
                if v > 0 {
                    out.insert(name, v);
                }
            }
        }
    }
    out
}

pub fn pod_qos_class(spec: &PodSpec) -> QosClass {
    let mut requests: BTreeMap<&str, i128> = BTreeMap::new();
    let mut limits: BTreeMap<&str, i128> = BTreeMap::new();
    let mut guaranteed = true;
    let all: Vec<&Container> = spec.init_containers.iter().flatten().chain(spec.containers.iter()).collect();
    for c in all {
        let res = c.resources.as_ref();
        for (k, v) in positive(res.and_then(|r| r.requests.as_ref())) {
            *requests.entry(k).or_default() += v;
        }
        let container_limits = positive(res.and_then(|r| r.limits.as_ref()));
        if container_limits.len() != QOS_RESOURCES.len() {
            guaranteed = false;
        }
        for (k, v) in container_limits {
            *limits.entry(k).or_default() += v;
        }
    }
    if requests.is_empty() && limits.is_empty() {
        return QosClass::BestEffort;
    }
    if guaranteed && requests.iter().all(|(k, v)| limits.get(k) == Some(v)) && requests.len() == limits.len() {
        return QosClass::Guaranteed;
    }
    QosClass::Burstable
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::ResourceRequirements;
    use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

    fn res(pairs: &[(&str, &str)]) -> Option<BTreeMap<String, Quantity>> {
        if pairs.is_empty() {
            return None;
        }
        Some(pairs.iter().map(|(k, v)| (k.to_string(), Quantity(v.to_string()))).collect())
    }

    fn container(requests: &[(&str, &str)], limits: &[(&str, &str)]) -> Container {
        Container {
            name: "c".into(),
            resources: Some(ResourceRequirements {
                requests: res(requests),
                limits: res(limits),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn spec(init: Vec<Container>, containers: Vec<Container>) -> PodSpec {
        PodSpec { init_containers: if init.is_empty() { None } else { Some(init) }, containers, ..Default::default() }
    }

    #[test]
    fn best_effort_without_any_cpu_or_memory() {
        assert_eq!(pod_qos_class(&spec(vec![], vec![container(&[], &[])])), QosClass::BestEffort);
        // Other resources do not count.
        let c = container(&[("ephemeral-storage", "1Gi")], &[("ephemeral-storage", "1Gi")]);
        assert_eq!(pod_qos_class(&spec(vec![], vec![c])), QosClass::BestEffort);
    }

    #[test]
    fn guaranteed_when_every_container_limits_equal_requests() {
        let g = || container(&[("cpu", "500m"), ("memory", "64Mi")], &[("cpu", "0.5"), ("memory", "64Mi")]);
        assert_eq!(pod_qos_class(&spec(vec![g()], vec![g(), g()])), QosClass::Guaranteed);
    }

    #[test]
    fn burstable_cases() {
        let g = container(&[("cpu", "500m"), ("memory", "64Mi")], &[("cpu", "500m"), ("memory", "64Mi")]);
        let only_cpu_limit = container(&[("cpu", "500m")], &[("cpu", "500m")]);
        assert_eq!(pod_qos_class(&spec(vec![], vec![g.clone(), only_cpu_limit])), QosClass::Burstable);
        let lower_request = container(&[("cpu", "100m"), ("memory", "64Mi")], &[("cpu", "500m"), ("memory", "64Mi")]);
        assert_eq!(pod_qos_class(&spec(vec![], vec![lower_request])), QosClass::Burstable);
        // An init container without limits makes an otherwise Guaranteed pod Burstable.
        let init = container(&[("memory", "10Mi")], &[]);
        assert_eq!(pod_qos_class(&spec(vec![init], vec![g])), QosClass::Burstable);
    }
}
