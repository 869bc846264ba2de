//! The container manager, kubelet's `pkg/kubelet/cm`: the kubepods cgroup hierarchy and its drivers (`cgroups`), the
//! pod- and node-level resource values (`pod`), and the one conversion from requests and limits to Linux cgroup
//! values (`convert`), used for the CRI `LinuxContainerResources` and the pod cgroups alike so the two never disagree.

pub mod cgroups;
pub mod convert;
pub mod pod;

pub use convert::CPU_PERIOD_US;
