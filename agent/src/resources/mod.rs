//! Requests and limits: QoS class and the one conversion from Kubernetes resources to Linux cgroup values, used for
//! the CRI `LinuxContainerResources` (and, later, pod-level cgroups) so the two can never disagree.

pub mod cgroups;
pub mod convert;
pub mod pod;
pub mod qos;
pub mod quantity;

pub use convert::{ContainerCgroupValues, CPU_PERIOD_US};
pub use qos::{pod_qos_class, QosClass};
