//! Pod- and node-level resource values, as kubelet's container manager computes them: the pod cgroup's config
//! (`ResourceConfigForPod`), the QoS cgroups' CPU shares (`setCPUCgroupConfig`) and node allocatable.

use k8s_openapi::api::core::v1::{Container, PodSpec};

use crate::cm::convert::{milli_cpu_to_quota, milli_cpu_to_shares, CPU_PERIOD_US, MIN_SHARES};
use crate::kubetypes::qos::{pod_qos_class, QosClass};
use crate::kubetypes::quantity::{parse_milli, parse_value};

/// The cgroup parameters kubelet sets on one cgroup; `None` leaves the kernel's default.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ResourceConfig {
    pub cpu_shares: Option<u64>,
    pub cpu_quota_us: Option<i64>,
    pub cpu_period_us: Option<i64>,
    pub memory_limit_bytes: Option<i64>,
    /// `pids.max` (systemd's `TasksMax`); only pod cgroups get one, from `podPidsLimit`.
    pub pids_limit: Option<i64>,
}

/// cpu (milli) and memory (bytes) of a request or limit list.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CpuMemory {
    pub cpu_milli: i128,
    pub memory_bytes: i128,
}

impl std::ops::Add for CpuMemory {
    type Output = CpuMemory;

    fn add(self, other: CpuMemory) -> CpuMemory {
        CpuMemory { cpu_milli: self.cpu_milli + other.cpu_milli, memory_bytes: self.memory_bytes + other.memory_bytes }
    }
}

fn container_amounts(c: &Container, limits: bool) -> CpuMemory {
    let res = c.resources.as_ref();
    let list = if limits { res.and_then(|r| r.limits.as_ref()) } else { res.and_then(|r| r.requests.as_ref()) };
    let get = |name: &str, milli: bool| {
        list.and_then(|l| l.get(name))
            .and_then(|q| if milli { parse_milli(&q.0).ok() } else { parse_value(&q.0).ok() })
            .unwrap_or(0)
    };
    CpuMemory { cpu_milli: get("cpu", true), memory_bytes: get("memory", false) }
}

/// `resource.PodRequests` / `PodLimits`: app containers summed, then raised to the largest init container, since
/// init containers run one at a time before the app containers.
fn pod_amounts(spec: &PodSpec, limits: bool) -> CpuMemory {
    let mut total =
        spec.containers.iter().map(|c| container_amounts(c, limits)).fold(CpuMemory::default(), |a, b| a + b);
    for c in spec.init_containers.iter().flatten() {
        let a = container_amounts(c, limits);
        total.cpu_milli = total.cpu_milli.max(a.cpu_milli);
        total.memory_bytes = total.memory_bytes.max(a.memory_bytes);
    }
    total
}

pub fn pod_requests(spec: &PodSpec) -> CpuMemory {
    pod_amounts(spec, false)
}

pub fn pod_limits(spec: &PodSpec) -> CpuMemory {
    pod_amounts(spec, true)
}

/// `ResourceConfigForPod`: Guaranteed pods get shares, quota and memory limit; Burstable pods get shares, plus
/// quota or memory limit only when every container declares that limit; BestEffort pods get the minimum shares.
pub fn pod_resource_config(spec: &PodSpec) -> ResourceConfig {
    let requests = pod_requests(spec);
    let limits = pod_limits(spec);
    let all = || spec.init_containers.iter().flatten().chain(spec.containers.iter());
    let cpu_limits_declared = all().all(|c| container_amounts(c, true).cpu_milli > 0);
    let memory_limits_declared = all().all(|c| container_amounts(c, true).memory_bytes > 0);
    let shares = milli_cpu_to_shares(requests.cpu_milli);
    let quota = milli_cpu_to_quota(limits.cpu_milli, CPU_PERIOD_US);
    let memory = limits.memory_bytes.clamp(0, i64::MAX as i128) as i64;
    match pod_qos_class(spec) {
        QosClass::Guaranteed => ResourceConfig {
            cpu_shares: Some(shares),
            cpu_quota_us: Some(quota),
            cpu_period_us: Some(CPU_PERIOD_US),
            memory_limit_bytes: Some(memory),
            pids_limit: None,
        },
        QosClass::Burstable => ResourceConfig {
            cpu_shares: Some(shares),
            cpu_quota_us: cpu_limits_declared.then_some(quota),
            cpu_period_us: cpu_limits_declared.then_some(CPU_PERIOD_US),
            memory_limit_bytes: memory_limits_declared.then_some(memory),
            pids_limit: None,
        },
        QosClass::BestEffort => ResourceConfig { cpu_shares: Some(MIN_SHARES), ..Default::default() },
    }
}

/// The pod cgroup's config as kubelet's pod container manager creates it (`EnsureExists`): `ResourceConfigForPod`
/// plus `podPidsLimit` as the cgroup's `pids.max`, only when positive (-1, the default, leaves it unlimited).
pub fn pod_cgroup_config(spec: &PodSpec, pod_pids_limit: i64) -> ResourceConfig {
    ResourceConfig { pids_limit: (pod_pids_limit > 0).then_some(pod_pids_limit), ..pod_resource_config(spec) }
}

/// CPU shares of the `burstable` QoS cgroup: the summed cpu requests of the Burstable pods, so Burstable pods as a
/// group get their requested share against Guaranteed ones. `besteffort` always has the minimum.
pub fn burstable_cpu_shares<'a>(specs: impl Iterator<Item = &'a PodSpec>) -> u64 {
    let total: i128 =
        specs.filter(|s| pod_qos_class(s) == QosClass::Burstable).map(|s| pod_requests(s).cpu_milli).sum();
    milli_cpu_to_shares(total)
}

/// What the node reserves from its capacity (`systemReserved` + `kubeReserved`) and keeps back for hard eviction.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Reservations {
    pub system: CpuMemory,
    pub kube: CpuMemory,
    pub eviction_hard_memory_bytes: i128,
}

/// Allocatable as kubelet reports it: capacity − system reserved − kube reserved − hard eviction, floored at 0.
pub fn node_allocatable(capacity: CpuMemory, r: &Reservations) -> CpuMemory {
    CpuMemory {
        cpu_milli: (capacity.cpu_milli - r.system.cpu_milli - r.kube.cpu_milli).max(0),
        memory_bytes: (capacity.memory_bytes
            - r.system.memory_bytes
            - r.kube.memory_bytes
            - r.eviction_hard_memory_bytes)
            .max(0),
    }
}

/// The `kubepods` cgroup (`getCgroupConfig` over `getNodeAllocatableInternalAbsolute`): shares for the whole
/// capacity less reservations, and, with `enforceNodeAllocatable: [pods]`, a memory limit of capacity − system −
/// kube reserved. kubelet leaves the hard-eviction threshold out of this limit on purpose: the eviction manager
/// must get the chance to evict before the kernel OOM-kills inside `kubepods`.
pub fn kubepods_config(capacity: CpuMemory, r: &Reservations, enforce_pods: bool) -> ResourceConfig {
    let absolute = if enforce_pods {
        CpuMemory {
            cpu_milli: (capacity.cpu_milli - r.system.cpu_milli - r.kube.cpu_milli).max(0),
            memory_bytes: (capacity.memory_bytes - r.system.memory_bytes - r.kube.memory_bytes).max(0),
        }
    } else {
        capacity
    };
    ResourceConfig {
        cpu_shares: Some(milli_cpu_to_shares(absolute.cpu_milli)),
        memory_limit_bytes: enforce_pods.then_some(absolute.memory_bytes.clamp(0, i64::MAX as i128) as i64),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::ResourceRequirements;
    use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
    use std::collections::BTreeMap;

    fn list(pairs: &[(&str, &str)]) -> Option<BTreeMap<String, Quantity>> {
        (!pairs.is_empty()).then(|| pairs.iter().map(|(k, v)| (k.to_string(), Quantity(v.to_string()))).collect())
    }

    fn c(req: &[(&str, &str)], lim: &[(&str, &str)]) -> Container {
        Container {
            name: "c".into(),
            resources: Some(ResourceRequirements { requests: list(req), limits: list(lim), ..Default::default() }),
            ..Default::default()
        }
    }

    fn spec(init: Vec<Container>, containers: Vec<Container>) -> PodSpec {
        PodSpec { init_containers: (!init.is_empty()).then_some(init), containers, ..Default::default() }
    }

    const MI: i128 = 1 << 20;

    #[test]
    fn guaranteed_pod_gets_shares_quota_and_memory() {
        let g = || c(&[("cpu", "250m"), ("memory", "64Mi")], &[("cpu", "250m"), ("memory", "64Mi")]);
        let cfg = pod_resource_config(&spec(vec![], vec![g(), g()]));
        // 500m -> 512 shares, 50 ms of every 100 ms, 128 MiB.
        assert_eq!(
            cfg,
            ResourceConfig {
                cpu_shares: Some(512),
                cpu_quota_us: Some(50_000),
                cpu_period_us: Some(100_000),
                memory_limit_bytes: Some(128 << 20),
                pids_limit: None,
            }
        );
    }

    #[test]
    fn pod_pids_limit_applies_only_when_positive() {
        let be = spec(vec![], vec![c(&[], &[])]);
        assert_eq!(pod_cgroup_config(&be, 20).pids_limit, Some(20));
        assert_eq!(pod_cgroup_config(&be, 20).cpu_shares, Some(2), "the rest is ResourceConfigForPod's");
        assert_eq!(pod_cgroup_config(&be, -1).pids_limit, None);
        assert_eq!(pod_cgroup_config(&be, 0).pids_limit, None);
        assert_eq!(pod_resource_config(&be).pids_limit, None);
    }

    #[test]
    fn burstable_pod_gets_limits_only_when_every_container_declares_them() {
        let limited = c(&[("cpu", "100m"), ("memory", "32Mi")], &[("cpu", "200m"), ("memory", "64Mi")]);
        let cfg = pod_resource_config(&spec(vec![], vec![limited.clone()]));
        assert_eq!(cfg.cpu_shares, Some(102));
        assert_eq!(cfg.cpu_quota_us, Some(20_000));
        assert_eq!(cfg.memory_limit_bytes, Some(64 << 20));
        let unlimited = c(&[("cpu", "100m")], &[]);
        let cfg = pod_resource_config(&spec(vec![], vec![limited, unlimited]));
        assert_eq!(cfg.cpu_shares, Some(204));
        assert_eq!((cfg.cpu_quota_us, cfg.memory_limit_bytes), (None, None));
    }

    #[test]
    fn best_effort_pod_gets_minimum_shares() {
        let cfg = pod_resource_config(&spec(vec![], vec![c(&[], &[])]));
        assert_eq!(cfg, ResourceConfig { cpu_shares: Some(2), ..Default::default() });
    }

    #[test]
    fn init_containers_raise_the_pod_amounts() {
        let s =
            spec(vec![c(&[("cpu", "1")], &[("memory", "256Mi")])], vec![c(&[("cpu", "100m")], &[("memory", "64Mi")])]);
        assert_eq!(pod_requests(&s).cpu_milli, 1000);
        assert_eq!(pod_limits(&s).memory_bytes, 256 * MI);
    }

    #[test]
    fn burstable_qos_cgroup_shares_sum_burstable_requests() {
        let b1 = spec(vec![], vec![c(&[("cpu", "300m")], &[])]);
        let b2 = spec(vec![], vec![c(&[("cpu", "200m"), ("memory", "1Mi")], &[])]);
        let g = spec(vec![], vec![c(&[("cpu", "1"), ("memory", "1Mi")], &[("cpu", "1"), ("memory", "1Mi")])]);
        assert_eq!(burstable_cpu_shares([&b1, &b2, &g].into_iter()), 512);
        assert_eq!(burstable_cpu_shares(std::iter::empty()), 2);
    }

    #[test]
    fn allocatable_and_kubepods_limits() {
        let cap = CpuMemory { cpu_milli: 2000, memory_bytes: 2048 * MI };
        let r = Reservations {
            system: CpuMemory { cpu_milli: 100, memory_bytes: 100 * MI },
            kube: CpuMemory { cpu_milli: 100, memory_bytes: 156 * MI },
            eviction_hard_memory_bytes: 100 * MI,
        };
        assert_eq!(node_allocatable(cap, &r), CpuMemory { cpu_milli: 1800, memory_bytes: 1692 * MI });
        let k = kubepods_config(cap, &r, true);
        assert_eq!(k.cpu_shares, Some(1843)); // 1800m
        assert_eq!(k.memory_limit_bytes, Some((1792 * MI) as i64));
        let k = kubepods_config(cap, &r, false);
        assert_eq!((k.cpu_shares, k.memory_limit_bytes), (Some(2048), None));
    }
}
