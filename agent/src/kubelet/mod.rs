//! The top of the agent, kubelet's `pkg/kubelet`: the pod sources (the API watch and the static pod folder), the pod
//! manager that admits pods and keeps the desired set, and one pod worker per pod that drives it to its spec.

pub mod admission;
pub mod manager;
pub mod run;
pub mod source;
pub mod unsupported;
pub mod worker;
