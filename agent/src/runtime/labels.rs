//! Labels and annotations put on CRI sandboxes and containers. The keys are kubelet's (pkg/kubelet/types/labels.go and
//! pkg/kubelet/kuberuntime/labels.go), so tools that read a kubelet node (crictl, log shippers) read ours the same way,
//! and they carry everything the agent needs to rebuild its view from the runtime after a restart.

pub const POD_NAME: &str = "io.kubernetes.pod.name";
pub const POD_NAMESPACE: &str = "io.kubernetes.pod.namespace";
pub const POD_UID: &str = "io.kubernetes.pod.uid";
pub const CONTAINER_NAME: &str = "io.kubernetes.container.name";
/// kubelet keeps these two as annotations; they are labels here too so they can be filtered on.
pub const CONTAINER_HASH: &str = "io.kubernetes.container.hash";
pub const CONTAINER_RESTART_COUNT: &str = "io.kubernetes.container.restartCount";
pub const POD_TERMINATION_GRACE_PERIOD: &str = "io.kubernetes.pod.terminationGracePeriod";
pub const CONTAINER_TERMINATION_MESSAGE_PATH: &str = "io.kubernetes.container.terminationMessagePath";
/// Marks what this agent created, so it never touches sandboxes another CRI client made in the same runtime.
pub const MANAGED_BY: &str = "io.rkubelet.managed";
