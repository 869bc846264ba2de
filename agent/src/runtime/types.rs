//! The runtime's view of pods, in the agent's own types: `pods/` never sees CRI messages.

use std::collections::BTreeMap;
use std::time::SystemTime;

#[derive(Debug, Clone, PartialEq)]
pub struct SandboxRecord {
    pub id: String,
    pub pod_uid: String,
    pub namespace: String,
    pub name: String,
    pub attempt: u32,
    pub ready: bool,
    pub created_at: SystemTime,
    /// Pod IPs, primary first; only filled by a sandbox status call.
    pub ips: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ContainerRunState {
    Created,
    Running,
    Exited,
    Unknown,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ContainerRecord {
    pub id: String,
    pub sandbox_id: String,
    pub pod_uid: String,
    pub name: String,
    pub restart_count: u32,
    pub spec_hash: String,
    pub state: ContainerRunState,
    pub created_at: SystemTime,
    pub started_at: Option<SystemTime>,
    pub finished_at: Option<SystemTime>,
    pub exit_code: i32,
    pub reason: String,
    pub message: String,
    pub image: String,
    pub image_ref: String,
    pub termination_grace_period: Option<i64>,
}

/// A container as a runtime list shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct ContainerSummary {
    pub id: String,
    pub sandbox_id: String,
    pub pod_uid: String,
    pub state: ContainerRunState,
}

/// Everything the runtime holds for one pod UID, newest first.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ObservedPod {
    pub sandboxes: Vec<SandboxRecord>,
    pub containers: Vec<ContainerRecord>,
}

impl ObservedPod {
    pub fn latest_sandbox(&self) -> Option<&SandboxRecord> {
        self.sandboxes.first()
    }

    /// The newest instance of the named container, then the one before it.
    pub fn container_instances<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a ContainerRecord> + 'a {
        self.containers.iter().filter(move |c| c.name == name)
    }

    pub fn latest_container(&self, name: &str) -> Option<&ContainerRecord> {
        self.containers.iter().find(|c| c.name == name)
    }

    /// Orders sandboxes and containers newest first, the order every consumer assumes.
    pub fn sort(&mut self) {
        self.sandboxes.sort_by(|a, b| b.created_at.cmp(&a.created_at).then(b.attempt.cmp(&a.attempt)));
        self.containers.sort_by(|a, b| b.created_at.cmp(&a.created_at).then(b.restart_count.cmp(&a.restart_count)));
    }
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct DnsSettings {
    pub servers: Vec<String>,
    pub searches: Vec<String>,
    pub options: Vec<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct PortMappingSpec {
    pub protocol: String,
    pub container_port: i32,
    pub host_port: i32,
    pub host_ip: String,
}

/// What a pod sandbox is created with.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SandboxSpec {
    pub name: String,
    pub namespace: String,
    pub uid: String,
    pub attempt: u32,
    pub hostname: String,
    pub log_directory: String,
    pub dns: DnsSettings,
    pub port_mappings: Vec<PortMappingSpec>,
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
    pub host_network: bool,
    pub host_pid: bool,
    pub host_ipc: bool,
    pub share_process_namespace: bool,
    pub cgroup_parent: String,
    pub sysctls: BTreeMap<String, String>,
    pub security: SandboxSecurity,
}

/// SELinux labels passed through to the runtime as they are.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SeLinuxOptions {
    pub user: String,
    pub role: String,
    pub type_: String,
    pub level: String,
}

/// The sandbox's security settings, kubelet's `LinuxSandboxSecurityContext` (namespaces are on [`SandboxSpec`]).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SandboxSecurity {
    /// Any container of the pod is privileged.
    pub privileged: bool,
    pub run_as_user: Option<i64>,
    pub run_as_group: Option<i64>,
    pub supplemental_groups: Vec<i64>,
    pub selinux: Option<SeLinuxOptions>,
    pub seccomp: SeccompProfile,
}

/// A container's security settings, kubelet's `LinuxContainerSecurityContext` (namespaces come from the sandbox).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ContainerSecurity {
    pub privileged: bool,
    pub run_as_user: Option<i64>,
    pub run_as_group: Option<i64>,
    pub supplemental_groups: Vec<i64>,
    pub readonly_rootfs: bool,
    pub capabilities_add: Vec<String>,
    pub capabilities_drop: Vec<String>,
    /// `no_new_privs`: set when `allowPrivilegeEscalation` is false.
    pub no_new_privs: bool,
    pub seccomp: SeccompProfile,
    /// /proc and /sys paths hidden from the container, and those mounted read-only (`procMount`).
    pub masked_paths: Vec<String>,
    pub readonly_paths: Vec<String>,
    pub selinux: Option<SeLinuxOptions>,
}

/// What a container is created with.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ContainerSpec {
    pub name: String,
    pub restart_count: u32,
    /// Hash of the container's spec: a different hash on a running container means its spec changed.
    pub spec_hash: String,
    pub termination_grace_period: i64,
    pub image: String,
    pub image_ref: String,
    pub command: Vec<String>,
    pub args: Vec<String>,
    pub working_dir: String,
    pub envs: Vec<(String, String)>,
    /// Relative to the sandbox's log directory.
    pub log_path: String,
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
    pub resources: ContainerCgroupValues,
    /// cgroup v2 files set as they are (CRI `unified`), e.g. `memory.oom.group`.
    pub unified: BTreeMap<String, String>,
    pub stdin: bool,
    pub stdin_once: bool,
    pub tty: bool,
    pub security: ContainerSecurity,
    /// Volume mounts, kubelet's `makeMounts`.
    pub mounts: Vec<Mount>,
    /// The running container whose PID namespace this one joins: an ephemeral container's `targetContainerName`
    /// (`kubectl debug --target`), CRI namespace mode TARGET.
    pub pid_target_id: Option<String>,
}

/// A bind mount of a host path into a container (CRI `Mount`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Mount {
    pub container_path: String,
    pub host_path: String,
    pub readonly: bool,
    pub propagation: MountPropagation,
}

/// `volumeMounts[].mountPropagation`, kubelet's translation to CRI.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum MountPropagation {
    #[default]
    Private,
    HostToContainer,
    Bidirectional,
}

/// The seccomp profile a container runs with, kubelet's mapping of `securityContext.seccompProfile`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum SeccompProfile {
    /// kubelet's default while the `seccompDefault` setting is off.
    #[default]
    Unconfined,
    RuntimeDefault,
    /// An absolute path to a profile file under the node's seccomp profile root.
    Localhost(String),
}

/// The user an image runs as, from the runtime's ImageStatus.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ImageUser {
    pub uid: Option<i64>,
    pub username: String,
}

/// CRI `Status`: whether the runtime and its pod network are usable.
#[derive(Debug, Clone, PartialEq)]
pub struct RuntimeReadiness {
    pub runtime_ready: bool,
    pub network_ready: bool,
    pub message: String,
}

/// The Linux resource values of one container, as CRI's `LinuxContainerResources` carries them (computed by
/// `cm::convert`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ContainerCgroupValues {
    pub cpu_shares: u64,
    pub cpu_quota_us: i64,
    pub cpu_period_us: i64,
    pub memory_limit_bytes: i64,
    pub oom_score_adj: i64,
}
