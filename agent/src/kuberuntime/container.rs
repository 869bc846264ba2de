//! Container start: config from the spec (env, command expansion, resources, security settings), then CRI
//! CreateContainer and StartContainer, with kubelet's events and waiting reasons on failure.

use std::collections::BTreeMap;
use std::path::Path;

use k8s_openapi::api::core::v1::{Container, Pod};

use crate::kuberuntime::{grace_period, security, KubeRuntime};
use crate::pods::events::{self as ev, EventType};
use crate::pods::plan::{self, BackoffState, ContainerStart, Waiting};
use crate::pods::{env, spec};
use crate::resources::convert::container_cgroup_values;
use crate::resources::pod_qos_class;
use crate::runtime::{ContainerSpec, Mount, ObservedPod, RuntimeError, SandboxSpec};

impl KubeRuntime {
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn start_container(
        &self,
        pod: &Pod,
        container: &Container,
        start: &ContainerStart,
        sandbox_id: &str,
        sandbox: &SandboxSpec,
        pod_ips: &[String],
        observed: &ObservedPod,
        backoff: &mut BackoffState,
    ) -> Result<(), Waiting> {
        let image_ref = self.ensure_image(pod, container, start.init, sandbox, backoff).await?;
        // kubelet resolves the target after the pull, as the container is created.
        let pid_target_id = crate::pods::ephemeral::target_id(pod, &container.name, observed)
            .map_err(|m| self.config_error(pod, container, start, m))?;
        let image_user = || async {
            self.runtime.image_user(&image_ref).await.map(Option::unwrap_or_default).map_err(|e| e.message())
        };
        let non_root = security::check_run_as_non_root(pod, container, image_user).await;
        non_root.map_err(|m| self.config_error(pod, container, start, m))?;
        let envs = self.make_environment(pod, container, pod_ips).await;
        let envs = envs.map_err(|m| self.config_error(pod, container, start, m))?;
        let mounts = self.volumes.container_mounts(pod, container, &envs).await;
        let mut mounts = mounts.map_err(|m| self.config_error(pod, container, start, m))?;
        let pod_dir = self.volumes.pod_dir(spec::uid(pod));
        let message_file = crate::lifecycle::termination::mount(&pod_dir, container, start.restart_count);
        mounts.extend(message_file.map_err(|m| self.config_error(pod, container, start, m))?);
        let hosts = self.etc_hosts_mount(pod, container, pod_ips);
        mounts.extend(hosts.map_err(|m| self.config_error(pod, container, start, m))?);
        let mut spec = self.container_spec(pod, container, start, image_ref, envs, mounts)?;
        spec.pid_target_id = pid_target_id;
        let log_dir = Path::new(&sandbox.log_directory).join(&container.name);
        if let Err(e) = std::fs::create_dir_all(&log_dir) {
            tracing::warn!(dir = %log_dir.display(), error = %e, "cannot create container log directory");
        }
        let rt = &self.runtime;
        let events = &self.events;
        let at = Some((container.name.as_str(), start.init));
        // kubelet reports a failed create or start as a `Failed` event, and the container as waiting with a reason.
        let failed = |event: &'static str, reason: &str, e: RuntimeError| {
            let message = e.message();
            events.record(pod, at, EventType::Warning, event, format!("Error: {message}"));
            Waiting { reason: reason.into(), message }
        };
        let id = rt
            .create_container(sandbox_id, &spec, sandbox)
            .await
            .map_err(|e| failed(ev::FAILED_TO_CREATE_CONTAINER, plan::REASON_CREATE_CONTAINER_ERROR, e))?;
        let created = format!("Created container {}", container.name);
        events.record(pod, at, EventType::Normal, ev::CREATED_CONTAINER, created);
        rt.start_container(&id)
            .await
            .map_err(|e| failed(ev::FAILED_TO_START_CONTAINER, plan::REASON_RUN_CONTAINER_ERROR, e))?;
        events.record(
            pod,
            at,
            EventType::Normal,
            ev::STARTED_CONTAINER,
            format!("Started container {}", container.name),
        );
        tracing::info!(container_id = %id, restart_count = start.restart_count, "container started");
        let pod_ip = pod_ips.first().map_or("", String::as_str);
        crate::lifecycle::post_start(self, pod, container, start.init, &id, pod_ip).await
    }

    fn container_spec(
        &self,
        pod: &Pod,
        container: &Container,
        start: &ContainerStart,
        image_ref: String,
        envs: Vec<(String, String)>,
        mounts: Vec<Mount>,
    ) -> Result<ContainerSpec, Waiting> {
        let config_error = |message: String| {
            let at = Some((container.name.as_str(), start.init));
            self.events.record(
                pod,
                at,
                EventType::Warning,
                ev::FAILED_TO_CREATE_CONTAINER,
                format!("Error: {message}"),
            );
            Waiting { reason: plan::REASON_CREATE_CONTAINER_CONFIG_ERROR.into(), message }
        };
        // Command and args share one expansion budget (kubelet's `ExpandContainerCommandAndArgs`, bounded).
        let mut budget = env::ExpansionBudget::default();
        let mut expand = |list: &Option<Vec<String>>| {
            env::expand_all(list.as_deref().unwrap_or_default(), &envs, &mut budget, "command and args")
                .map_err(|e| config_error(e.to_string()))
        };
        let qos = pod_qos_class(spec::spec(pod));
        let resources =
            container_cgroup_values(container, qos, self.memory_capacity).map_err(|e| config_error(e.to_string()))?;
        Ok(ContainerSpec {
            name: container.name.clone(),
            restart_count: start.restart_count,
            spec_hash: spec::container_hash(container),
            termination_grace_period: grace_period(pod),
            image: spec::image_of(container).to_owned(),
            image_ref,
            command: expand(&container.command)?,
            args: expand(&container.args)?,
            working_dir: container.working_dir.clone().unwrap_or_default(),
            log_path: format!("{}/{}.log", container.name, start.restart_count),
            labels: BTreeMap::new(),
            annotations: BTreeMap::new(),
            resources,
            // kubelet on cgroup v2: an OOM kill takes the whole container down, not just the process that hit the
            // limit, unless `singleProcessOOMKill` is set.
            unified: if self.oom_kill_whole_container {
                BTreeMap::from([("memory.oom.group".to_owned(), "1".to_owned())])
            } else {
                BTreeMap::new()
            },
            stdin: container.stdin.unwrap_or(false),
            stdin_once: container.stdin_once.unwrap_or(false),
            tty: container.tty.unwrap_or(false),
            security: security::container_security(pod, container, &self.seccomp_profile_root, self.seccomp_default)
                .map_err(config_error)?,
            envs,
            mounts,
            pid_target_id: None,
        })
    }

    /// kubelet's `CreateContainerConfigError`: a `Failed` event and the waiting reason.
    fn config_error(&self, pod: &Pod, container: &Container, start: &ContainerStart, message: String) -> Waiting {
        let at = Some((container.name.as_str(), start.init));
        self.events.record(pod, at, EventType::Warning, ev::FAILED_TO_CREATE_CONTAINER, format!("Error: {message}"));
        Waiting { reason: plan::REASON_CREATE_CONTAINER_CONFIG_ERROR.into(), message }
    }
}
