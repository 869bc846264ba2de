//! kubelet's `kuberuntime`: the executor of a pod's computed actions and the one caller of `runtime/` for pods.
//! It builds sandbox and container configs (DNS, ports, env, security settings), pulls images with the pull
//! policy and back-off, starts and kills containers with the grace period, and removes what a terminated pod
//! leaves in the runtime. It decides nothing: `pods::plan` does.

mod container;
pub mod dns;
mod env;
pub mod gc;
pub mod hooks;
pub mod hosts;
mod image;
mod kill;
pub mod lifecycle;
mod sandbox;
pub mod security;
pub mod termination;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use k8s_openapi::api::core::v1::{Container, Pod};
use tokio::sync::Mutex;
use tracing::Instrument;

pub use kill::grace_period;

use crate::cm::cgroups::{CgroupManager, CgroupName};
use crate::kubetypes::events::{self as ev, EventRecorder, EventType};
use crate::kubetypes::qos::pod_qos_class;
use crate::kubetypes::spec;
use crate::pods::plan::{PodActions, PodSyncResult};
use crate::runtime::{ObservedPod, Runtime};

/// What the executor needs of the node, fixed at start.
pub struct KubeRuntime {
    pub runtime: Runtime,
    pub node_name: String,
    pub host_ips: Vec<String>,
    pub pod_logs_dir: PathBuf,
    /// Where `Localhost` seccomp profiles are (kubelet's `<root-dir>/seccomp`).
    pub seccomp_profile_root: PathBuf,
    /// kubelet's `seccompDefault`: containers without a profile run with the runtime's default one.
    pub seccomp_default: bool,
    /// kubelet's `resolvConf`: the host's resolver settings for pods of the Default policy; empty to give them
    /// the node's loopback resolver.
    pub resolv_conf: PathBuf,
    pub cluster_dns: Vec<String>,
    pub cluster_domain: String,
    pub memory_capacity: i128,
    /// Held around each pull when `serializeImagePulls` is on.
    pub image_pull_lock: Option<Mutex<()>>,
    /// The pod cgroup hierarchy (`cgroupsPerQOS`); `None` runs pods without pod-level cgroups.
    pub cgroups: Option<Arc<CgroupManager>>,
    /// Set `memory.oom.group` on containers: the host has the unified cgroup v2 hierarchy and
    /// `singleProcessOOMKill` is off.
    pub oom_kill_whole_container: bool,
    pub events: EventRecorder,
    /// The pods' volumes, and the API objects their environment reads.
    pub volumes: Arc<crate::volumes::VolumeManager>,
}

/// The pod's cgroup, under its QoS class's parent.
pub fn pod_cgroup_name(pod: &Pod) -> CgroupName {
    CgroupName::pod(pod_qos_class(spec::spec(pod)), spec::uid(pod))
}

/// `<podLogsDir>/<namespace>_<name>_<uid>`, kubelet's layout that log collectors rely on.
pub fn pod_log_dir(root: &Path, pod: &Pod) -> PathBuf {
    root.join(format!("{}_{}_{}", spec::namespace(pod), spec::name(pod), spec::uid(pod)))
}

fn find_container(pod: &Pod, name: &str) -> Option<Container> {
    let spec_container =
        spec::init_containers(pod).iter().chain(spec::spec(pod).containers.iter()).find(|c| c.name == name);
    spec_container.cloned().or_else(|| crate::pods::ephemeral::find(pod, name))
}

impl KubeRuntime {
    /// kubelet's `SyncPod`: carries out the actions `plan` computed and reports what happened to each container;
    /// the worker moves its back-offs on from that report.
    pub async fn sync_pod(&self, pod: &Pod, observed: &ObservedPod, actions: &PodActions) -> PodSyncResult {
        let rt = &self.runtime;
        let mut result = PodSyncResult::default();
        if actions.kill_pod {
            result.changed |= self.kill_containers_and_sandboxes(pod, observed).await;
        }
        let pod_ip = self.hook_pod_ip(pod, observed);
        for kill in &actions.containers_to_kill {
            let message = format!("{}, will be restarted", kill.reason);
            self.kill_instance(pod, &kill.name, &kill.id, &pod_ip, message, kill.grace_period).await;
            result.changed = true;
        }
        for id in &actions.containers_to_remove {
            if let Err(e) = rt.remove_container(id).await {
                tracing::warn!(container_id = %id, error = %e, "remove dead container failed");
            }
        }
        for id in &actions.sandboxes_to_remove {
            if let Err(e) = rt.remove_pod_sandbox(id).await {
                tracing::warn!(sandbox_id = %id, error = %e, "remove old sandbox failed");
            }
        }
        if actions.containers_to_start.is_empty() {
            return result;
        }

        let mut sandbox = self.sandbox_spec(pod, actions.create_sandbox.unwrap_or(0));
        let (sandbox_id, pod_ips) = match (&actions.create_sandbox, &actions.sandbox_id) {
            (Some(attempt), _) => {
                sandbox.attempt = *attempt;
                result.changed = true;
                if let Some(cgroups) = &self.cgroups {
                    let name = pod_cgroup_name(pod);
                    if let Err(e) = cgroups.ensure(&name, &cgroups.pod_config(spec::spec(pod))).await {
                        tracing::error!(error = %e, "failed to ensure that the pod cgroup exists");
                        result.sandbox_error = Some(e.to_string());
                        return result;
                    }
                }
                match self.sandbox_names_and_dns(pod, &mut sandbox) {
                    Ok(warnings) => {
                        for (reason, message) in warnings {
                            self.events.record(pod, None, EventType::Warning, reason, message);
                        }
                    }
                    Err(e) => {
                        // kubelet's createPodSandbox: the config could not be generated; the worker tries again.
                        let message = format!("Failed to create pod sandbox: {e}");
                        self.events.record(pod, None, EventType::Warning, ev::FAILED_CREATE_POD_SANDBOX, message);
                        result.sandbox_error = Some(e);
                        return result;
                    }
                }
                if let Err(e) = std::fs::create_dir_all(&sandbox.log_directory) {
                    tracing::warn!(dir = %sandbox.log_directory, error = %e, "cannot create pod log directory");
                }
                match rt.run_pod_sandbox(&sandbox).await {
                    Ok(id) => {
                        tracing::info!(sandbox_id = %id, attempt, "pod sandbox started");
                        let ips = rt.pod_sandbox_ips(&id).await.unwrap_or_default();
                        (id, ips)
                    }
                    Err(e) => {
                        // Containers stay ContainerCreating; the worker tries again after its back-off.
                        let message = format!("Failed to create pod sandbox: {}", e.message());
                        self.events.record(pod, None, EventType::Warning, ev::FAILED_CREATE_POD_SANDBOX, message);
                        result.sandbox_error = Some(e.message());
                        return result;
                    }
                }
            }
            (None, Some(id)) => (id.clone(), observed.latest_sandbox().map(|s| s.ips.clone()).unwrap_or_default()),
            (None, None) => return result,
        };
        let pod_ips = crate::pods::status::pod_ips(pod, pod_ips, &self.host_ips);
        if let Some(s) = observed.latest_sandbox() {
            if actions.create_sandbox.is_none() {
                sandbox.attempt = s.attempt;
            }
        }

        // kubelet starts a pod's containers one after another, in spec order.
        for start in &actions.containers_to_start {
            let Some(container) = find_container(pod, &start.name) else { continue };
            let span = tracing::info_span!("container", container = %start.name);
            let outcome = self
                .start_container(pod, &container, start, &sandbox_id, &sandbox, &pod_ips, observed)
                .instrument(span)
                .await;
            // A start that failed before CreateContainer (the image, the container's config) left nothing in the
            // runtime to observe: the pod is not refreshed for it, so its status keeps the error until the next
            // attempt, as kubelet's does.
            let created_nothing = outcome.as_ref().err().is_some_and(|w| {
                [
                    crate::pods::plan::REASON_ERR_IMAGE_PULL,
                    crate::pods::plan::REASON_IMAGE_PULL_BACK_OFF,
                    crate::pods::plan::REASON_ERR_IMAGE_NEVER_PULL,
                    crate::pods::plan::REASON_CREATE_CONTAINER_CONFIG_ERROR,
                ]
                .contains(&w.reason.as_ref())
            });
            result.changed |= !created_nothing;
            match outcome {
                Ok(()) => {
                    result.containers.insert(start.name.clone(), None);
                }
                Err(waiting) => {
                    tracing::warn!(container = %start.name, reason = %waiting.reason, message = %waiting.message, "start container failed");
                    if waiting.reason == crate::pods::plan::REASON_ERR_IMAGE_PULL {
                        result.pulls_failed.insert(start.name.clone(), spec::image_of(&container).to_owned());
                    }
                    result.containers.insert(start.name.clone(), Some(waiting));
                    // An init container that cannot start blocks the rest, as in kubelet.
                    if start.init {
                        break;
                    }
                }
            }
        }
        result
    }
}
