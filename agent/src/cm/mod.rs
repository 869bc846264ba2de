//! The container manager, kubelet's `pkg/kubelet/cm`: the kubepods cgroup hierarchy and its drivers (`cgroups`), the
//! pod- and node-level resource values (`pod`), and the one conversion from requests and limits to Linux cgroup
//! values (`convert`), used for the CRI `LinuxContainerResources` and the pod cgroups alike so the two never disagree.

pub mod cgroups;
pub mod convert;
pub mod pod;

pub use convert::CPU_PERIOD_US;

use anyhow::Context;

use crate::cm::cgroups::{CgroupDriver, CgroupManager, CgroupName, CGROUP_MOUNT};
use crate::cm::pod::{kubepods_config, node_allocatable, CpuMemory, Reservations, ResourceConfig};
use crate::kubetypes::qos::QosClass;

/// kubelet's container manager start-up: checks the host's cgroups and creates `kubepods` with the node allocatable
/// limits, and the `burstable` and `besteffort` QoS cgroups.
pub async fn setup_pod_hierarchy(
    driver: CgroupDriver,
    capacity: CpuMemory,
    reservations: &Reservations,
    enforce_pods_allocatable: bool,
    pod_pids_limit: i64,
) -> anyhow::Result<CgroupManager> {
    let allocatable = node_allocatable(capacity, reservations);
    let manager = CgroupManager::new(driver, std::path::Path::new(CGROUP_MOUNT)).await.context(
        "cgroupsPerQOS needs pod-level cgroups; set cgroupsPerQOS: false in the config to run without pod-level enforcement",
    )?;
    let manager = manager.with_pod_pids_limit(pod_pids_limit);
    let kubepods = kubepods_config(capacity, reservations, enforce_pods_allocatable);
    manager.ensure(&CgroupName::kubepods(), &kubepods).await.context("create the kubepods cgroup")?;
    let minimum = ResourceConfig { cpu_shares: Some(crate::cm::convert::MIN_SHARES), ..Default::default() };
    for qos in [QosClass::Burstable, QosClass::BestEffort] {
        manager
            .ensure(&CgroupName::qos(qos), &minimum)
            .await
            .with_context(|| format!("create the {} QoS cgroup", qos.as_str()))?;
    }
    tracing::info!(
        driver = ?driver,
        kubepods = %manager.path(&CgroupName::kubepods()).display(),
        allocatable_cpu_milli = %allocatable.cpu_milli,
        allocatable_memory = %allocatable.memory_bytes,
        kubepods_memory_max = ?kubepods.memory_limit_bytes,
        pod_pids_limit,
        "pod cgroup hierarchy ready"
    );
    Ok(manager)
}

/// kubelet's container manager once the hierarchy is up: the QoS cgroups follow the pods admitted, and pod cgroups
/// that no pod owns any more are removed (housekeeping).
pub struct ContainerManager {
    cgroups: std::sync::Arc<CgroupManager>,
    /// Last CPU shares written to the burstable QoS cgroup.
    burstable_shares: Option<u64>,
}

impl ContainerManager {
    pub fn new(cgroups: std::sync::Arc<CgroupManager>) -> Self {
        Self { cgroups, burstable_shares: None }
    }

    /// kubelet's QoS container manager: the burstable cgroup's CPU shares follow the Burstable pods' requests.
    pub fn update_qos_cgroups<'a>(&mut self, specs: impl Iterator<Item = &'a k8s_openapi::api::core::v1::PodSpec>) {
        let shares = crate::cm::pod::burstable_cpu_shares(specs);
        if self.burstable_shares == Some(shares) {
            return;
        }
        self.burstable_shares = Some(shares);
        let cgroups = self.cgroups.clone();
        tokio::spawn(async move {
            let cfg = ResourceConfig { cpu_shares: Some(shares), ..Default::default() };
            if let Err(e) = cgroups.ensure(&CgroupName::qos(QosClass::Burstable), &cfg).await {
                tracing::warn!(error = %e, "cannot update the burstable QoS cgroup");
            }
        });
    }

    /// Removes the pod cgroups of pods for which `owned` says no.
    pub fn cleanup_orphaned_cgroups(&self, owned: impl Fn(&str) -> bool) {
        let orphaned: Vec<CgroupName> =
            self.cgroups.pod_cgroups().into_iter().filter(|(uid, _)| !owned(uid)).map(|(_, name)| name).collect();
        if orphaned.is_empty() {
            return;
        }
        let cgroups = self.cgroups.clone();
        tokio::spawn(async move {
            for name in orphaned {
                tracing::info!(cgroup = %name.to_cgroupfs(), "removing orphaned pod cgroup");
                if let Err(e) = cgroups.remove(&name).await {
                    tracing::warn!(error = %e, "cannot remove orphaned pod cgroup");
                }
            }
        });
    }
}
