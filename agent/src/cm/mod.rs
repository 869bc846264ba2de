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
) -> anyhow::Result<CgroupManager> {
    let allocatable = node_allocatable(capacity, reservations);
    let manager = CgroupManager::new(driver, std::path::Path::new(CGROUP_MOUNT)).await.context(
        "cgroupsPerQOS needs pod-level cgroups; set cgroupsPerQOS: false in the config to run without pod-level enforcement",
    )?;
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
        "pod cgroup hierarchy ready"
    );
    Ok(manager)
}
