//! Stopping pods: containers with the grace period (CRI StopContainer's timeout: SIGTERM, then SIGKILL), then the
//! sandboxes, then removal of everything the runtime holds for the pod, its cgroup and its log folder.

use std::time::{Duration, SystemTime};

use k8s_openapi::api::core::v1::{Container, Pod};
use tracing::Instrument;

use crate::kuberuntime::{pod_log_dir, KubeRuntime};
use crate::kubetypes::backoff::Backoff;
use crate::kubetypes::events::{self as ev, EventType};
use crate::kubetypes::spec;
use crate::runtime::{ContainerRunState, ObservedPod, RuntimeError};

/// Retry bounds for removing a terminated pod from the runtime.
const TERMINATE_RETRY_INITIAL: Duration = Duration::from_secs(1);
const TERMINATE_RETRY_MAX: Duration = Duration::from_secs(30);

/// The grace period to stop the pod's containers with, never below kubelet's minimum.
pub fn grace_period(pod: &Pod) -> i64 {
    spec::termination_grace_period(pod).max(spec::MINIMUM_GRACE_PERIOD_SECONDS)
}

impl KubeRuntime {
    /// Stops every running container (in parallel, each with the grace period) and every ready sandbox. Returns
    /// whether there was anything to stop.
    pub async fn kill_containers_and_sandboxes(&self, pod: &Pod, observed: &ObservedPod) -> bool {
        let rt = &self.runtime;
        let running: Vec<_> = observed
            .containers
            .iter()
            .filter(|c| {
                matches!(c.state, ContainerRunState::Running | ContainerRunState::Created | ContainerRunState::Unknown)
            })
            .collect();
        let ready: Vec<_> = observed.sandboxes.iter().filter(|s| s.ready).collect();
        if running.is_empty() && ready.is_empty() {
            return false;
        }
        let pod_ip = self.hook_pod_ip(pod, observed);
        // App containers first, then the init containers still running (sidecars), so that sidecars serve the
        // app containers until those have stopped.
        let is_init = |name: &str| spec::init_containers(pod).iter().any(|c| c.name == name);
        for init_round in [false, true] {
            let stops = running.iter().filter(|c| is_init(&c.name) == init_round).map(|c| {
                let message = format!("Stopping container {}", c.name);
                self.kill_instance(pod, &c.name, &c.id, &pod_ip, message, None)
            });
            futures::future::join_all(stops).await;
        }
        for s in ready {
            if let Err(e) = rt.stop_pod_sandbox(&s.id).await {
                tracing::warn!(sandbox_id = %s.id, error = %e, "stop pod sandbox failed");
            }
        }
        true
    }

    /// kubelet's `killContainer` for a container instance by name: the `Killing` event, the preStop hook out of
    /// the grace period (the pod's, or `grace_override`), then StopContainer with what is left (at least 2 s).
    pub async fn kill_instance(
        &self,
        pod: &Pod,
        name: &str,
        id: &str,
        pod_ip: &str,
        message: String,
        grace_override: Option<i64>,
    ) {
        match crate::kuberuntime::find_container(pod, name) {
            Some(container) => {
                let init = spec::init_containers(pod).iter().any(|c| c.name == name);
                self.kill_container(pod, &container, init, id, pod_ip, message, grace_override).await;
            }
            // A container the spec no longer names (an orphan's): no hook to run.
            None => {
                self.events.record(pod, Some((name, false)), EventType::Normal, ev::KILLING_CONTAINER, message);
                let grace = grace_override.unwrap_or_else(|| grace_period(pod));
                if let Err(e) = self.runtime.stop_container(id, grace).await {
                    tracing::warn!(container = %name, error = %e, "stop container failed");
                }
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    pub async fn kill_container(
        &self,
        pod: &Pod,
        container: &Container,
        init: bool,
        id: &str,
        pod_ip: &str,
        message: String,
        grace_override: Option<i64>,
    ) {
        let at = Some((container.name.as_str(), init));
        self.events.record(pod, at, EventType::Normal, ev::KILLING_CONTAINER, message);
        let grace = grace_override.unwrap_or_else(|| spec::termination_grace_period(pod));
        let grace = crate::kuberuntime::lifecycle::pre_stop(self, pod, container, init, id, pod_ip, grace).await;
        let grace = grace.max(spec::MINIMUM_GRACE_PERIOD_SECONDS);
        tracing::info!(container = %container.name, container_id = %id, grace_seconds = grace, "stopping container");
        if let Err(e) = self.runtime.stop_container(id, grace).await {
            tracing::warn!(container = %container.name, error = %e, "stop container failed");
        }
    }

    /// Kills a pod that is gone from its source and removes all it left in the runtime, retrying until the runtime
    /// confirms nothing is left; then its cgroup and log folder.
    pub async fn terminate_pod(&self, pod: &Pod) {
        self.terminate(pod, true).await;
    }

    /// Kills a pod the node stops on its own (eviction, node shutdown) while it stays in its source: its containers
    /// and sandboxes are stopped but kept, as kubelet keeps them, so its final status shows how each container
    /// ended and `kubectl logs` still reads them; container garbage collection removes them once the pod is gone.
    pub async fn kill_pod(&self, pod: &Pod) {
        self.terminate(pod, false).await;
    }

    async fn terminate(&self, pod: &Pod, remove: bool) {
        tracing::info!(grace_seconds = grace_period(pod), remove, "terminating pod");
        let uid = spec::uid(pod);
        let mut retry = Backoff::new(TERMINATE_RETRY_INITIAL, TERMINATE_RETRY_MAX);
        loop {
            let done = if remove {
                self.remove_pod_from_runtime(pod, uid).await
            } else {
                self.stop_pod_in_runtime(pod, uid).await
            };
            match done {
                Ok(()) => break,
                Err(e) => {
                    retry.next("terminate", SystemTime::now());
                    let wait = retry.get("terminate").unwrap_or(TERMINATE_RETRY_INITIAL);
                    tracing::warn!(error = %e, retry_in = ?wait, "terminating pod failed");
                    tokio::time::sleep(wait).await;
                }
            }
        }
        if let Some(cgroups) = &self.cgroups {
            if let Some(name) = cgroups.pod_cgroups().get(uid) {
                if let Err(e) = cgroups.remove(name).await {
                    tracing::warn!(error = %e, "cannot remove pod cgroup");
                }
            }
        }
        if remove {
            let log_dir = pod_log_dir(&self.pod_logs_dir, pod);
            if let Err(e) = std::fs::remove_dir_all(&log_dir) {
                if e.kind() != std::io::ErrorKind::NotFound {
                    tracing::warn!(dir = %log_dir.display(), error = %e, "cannot remove pod log directory");
                }
            }
        }
        self.volumes.unmount_pod(uid);
        tracing::info!("pod terminated");
    }

    async fn stop_pod_in_runtime(&self, pod: &Pod, uid: &str) -> Result<(), RuntimeError> {
        let observed = self.runtime.observe_pod(uid).await?;
        self.kill_containers_and_sandboxes(pod, &observed).await;
        let left = self.runtime.observe_pod(uid).await?;
        let running =
            left.containers.iter().any(|c| matches!(c.state, ContainerRunState::Running | ContainerRunState::Unknown));
        if running || left.sandboxes.iter().any(|s| s.ready) {
            Err(RuntimeError::Incomplete { op: "StopPodSandbox", field: "stop of every sandbox and container" })
        } else {
            Ok(())
        }
    }

    async fn remove_pod_from_runtime(&self, pod: &Pod, uid: &str) -> Result<(), RuntimeError> {
        let observed = self.runtime.observe_pod(uid).await?;
        self.kill_containers_and_sandboxes(pod, &observed).await;
        for s in &observed.sandboxes {
            self.runtime.remove_pod_sandbox(&s.id).await?;
        }
        // Containers whose sandbox is already gone.
        for c in &observed.containers {
            self.runtime.remove_container(&c.id).await?;
        }
        let left = self.runtime.observe_pod(uid).await?;
        if left.sandboxes.is_empty() && left.containers.is_empty() {
            Ok(())
        } else {
            Err(RuntimeError::Incomplete { op: "RemovePodSandbox", field: "removal of every sandbox and container" })
        }
    }

    /// Kills what the runtime holds for a pod UID no source knows (left over from a deleted pod while the agent was
    /// down), with the grace period recorded on its containers.
    pub async fn kill_orphaned_pod(&self, uid: String) {
        let observed = match self.runtime.observe_pod(&uid).await {
            Ok(o) => o,
            Err(e) => {
                tracing::warn!(uid, error = %e, "cannot observe orphaned pod");
                return;
            }
        };
        let mut pod = Pod::default();
        pod.metadata.uid = Some(uid.clone());
        if let Some(s) = observed.latest_sandbox() {
            pod.metadata.name = Some(s.name.clone());
            pod.metadata.namespace = Some(s.namespace.clone());
        }
        let grace = observed.containers.iter().filter_map(|c| c.termination_grace_period).max();
        pod.metadata.deletion_grace_period_seconds = grace;
        let span = tracing::info_span!("orphan", pod = %spec::key(&pod), uid = %uid);
        self.terminate_pod(&pod).instrument(span).await;
    }
}
