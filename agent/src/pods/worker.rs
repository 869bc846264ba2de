//! One pod worker per pod: observes the pod in the runtime, asks `plan` what to do, does it, and publishes the status
//! computed by `status`. Updates to the pod are coalesced: the worker always acts on the newest spec.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use k8s_openapi::api::core::v1::{Container, Pod, PodStatus};
use tokio::sync::{watch, Mutex, Notify};
use tracing::Instrument;

use super::backoff::Backoff;
use super::events::{self as ev, EventRecorder, EventType};
use super::plan::{self, BackoffState, ContainerStart, PodActions, Waiting};
use super::spec::{self, PullPolicy};
use super::status::{compute_pod_status, StatusInput};
use super::store::{PodStartRecord, PodStore};
use crate::resources::cgroups::{CgroupManager, CgroupName};
use crate::resources::convert::container_cgroup_values;
use crate::resources::pod::pod_resource_config;
use crate::resources::pod_qos_class;
use crate::runtime::{
    ContainerRunState, ContainerSpec, CriClock, DnsSettings, ObservedPod, PortMappingSpec, Runtime, RuntimeError,
    SandboxSpec, CRI_TIME,
};

/// How long to wait before retrying a sync that failed on a runtime error.
const SYNC_ERROR_RETRY: Duration = Duration::from_secs(1);
/// kubelet's limits on DNS search paths in a pod's resolv.conf (`validation.MaxDNSSearchPaths`).
const MAX_DNS_SEARCH_PATHS: usize = 32;
/// kubelet's `ndots` for ClusterFirst pods.
const CLUSTER_FIRST_NDOTS: &str = "ndots:5";

/// What every worker shares.
pub struct WorkerContext {
    pub runtime: Runtime,
    pub runtime_name: String,
    pub store: PodStore,
    pub node_name: String,
    pub host_ips: Vec<String>,
    pub pod_logs_dir: PathBuf,
    pub host_dns: DnsSettings,
    pub cluster_dns: Vec<String>,
    pub cluster_domain: String,
    pub memory_capacity: i128,
    pub sync_frequency: Duration,
    /// Held around each pull when `serializeImagePulls` is on.
    pub image_pull_lock: Option<Mutex<()>>,
    /// The pod cgroup hierarchy (`cgroupsPerQOS`); `None` runs pods without pod-level cgroups.
    pub cgroups: Option<Arc<CgroupManager>>,
    /// Set `memory.oom.group` on containers: the host has the unified cgroup v2 hierarchy and
    /// `singleProcessOOMKill` is off.
    pub oom_kill_whole_container: bool,
    pub events: EventRecorder,
}

/// The pod's cgroup, under its QoS class's parent.
pub fn pod_cgroup_name(pod: &Pod) -> CgroupName {
    CgroupName::pod(pod_qos_class(spec::spec(pod)), spec::uid(pod))
}

/// What the manager tells a worker: the newest spec, and whether the pod is to be terminated.
#[derive(Debug, Clone)]
pub struct WorkerInput {
    pub pod: Arc<Pod>,
    pub terminate: bool,
}

pub struct PodWorker {
    ctx: Arc<WorkerContext>,
    input: watch::Receiver<WorkerInput>,
    wake: Arc<Notify>,
    backoff: BackoffState,
    /// Errors of the last attempt to start each container, shown as its waiting reason until it starts.
    sync_errors: BTreeMap<String, Waiting>,
    first_seen: SystemTime,
    first_seen_instant: Instant,
    start_recorded: bool,
    last_status: Option<PodStatus>,
}

impl PodWorker {
    pub fn new(ctx: Arc<WorkerContext>, input: watch::Receiver<WorkerInput>, wake: Arc<Notify>) -> Self {
        Self {
            ctx,
            input,
            wake,
            backoff: BackoffState::default(),
            sync_errors: BTreeMap::new(),
            first_seen: SystemTime::now(),
            first_seen_instant: Instant::now(),
            start_recorded: false,
            last_status: None,
        }
    }

    /// Runs until the pod is terminated and cleaned up.
    pub async fn run(self) {
        let pod = self.input.borrow().pod.clone();
        let span = tracing::info_span!("pod", pod = %spec::key(&pod), uid = %spec::uid(&pod));
        CRI_TIME.scope(RefCell::new(CriClock::default()), self.run_inner()).instrument(span).await
    }

    async fn run_inner(mut self) {
        loop {
            let input = self.input.borrow_and_update().clone();
            if input.terminate {
                terminate_pod(&self.ctx, &input.pod).await;
                self.ctx.store.remove(spec::uid(&input.pod));
                return;
            }
            let next = match self.sync(&input.pod).await {
                Ok(next) => next,
                Err(e) => {
                    tracing::warn!(error = %e, "sync failed; retrying");
                    SYNC_ERROR_RETRY
                }
            };
            tokio::select! {
                changed = self.input.changed() => if changed.is_err() { return },
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep(next.min(self.ctx.sync_frequency)) => {}
            }
        }
    }

    async fn sync(&mut self, pod: &Arc<Pod>) -> Result<Duration, RuntimeError> {
        let uid = spec::uid(pod).to_owned();
        let observed = self.ctx.runtime.observe_pod(&uid).await?;
        let now = SystemTime::now();
        self.backoff.crash.gc(now);
        self.backoff.image_pull.gc(now);
        let actions = plan::compute_pod_actions(pod, &observed, &self.backoff, now);
        tracing::debug!(?actions, "computed pod actions");
        self.record_back_off_events(pod, &actions);
        let changed = self.execute(pod, &observed, &actions).await;

        let observed = if changed { self.ctx.runtime.observe_pod(&uid).await? } else { observed };
        let mut waiting = self.sync_errors.clone();
        waiting.extend(actions.waiting.clone());
        let status = compute_pod_status(&StatusInput {
            pod,
            observed: &observed,
            waiting: &waiting,
            previous: self.last_status.as_ref(),
            start_time: self.first_seen,
            host_ips: &self.ctx.host_ips,
            runtime_name: &self.ctx.runtime_name,
            now: SystemTime::now(),
        });
        self.record_start(pod, &observed);
        if self.last_status.as_ref() != Some(&status) {
            self.ctx.store.set_status(&uid, status.clone());
            self.last_status = Some(status);
        }
        Ok(actions.resync_after.unwrap_or(self.ctx.sync_frequency))
    }

    fn record_back_off_events(&self, pod: &Pod, actions: &PodActions) {
        for (name, waiting) in &actions.waiting {
            let init = spec::init_containers(pod).iter().any(|c| &c.name == name);
            let at = Some((name.as_str(), init));
            if waiting.reason == plan::REASON_CRASH_LOOP_BACK_OFF {
                let message = format!("Back-off restarting failed container {name} in pod {}", spec::format_pod(pod));
                self.ctx.events.record(pod, at, EventType::Warning, ev::BACK_OFF_START_CONTAINER, message);
            } else if waiting.reason == plan::REASON_IMAGE_PULL_BACK_OFF {
                self.ctx.events.record(pod, at, EventType::Normal, ev::BACK_OFF_PULL_IMAGE, waiting.message.clone());
                let message = format!("Error: {}", waiting.reason);
                self.ctx.events.record(pod, at, EventType::Warning, ev::FAILED_TO_PULL_IMAGE, message);
            }
        }
    }

    /// The first time every container runs, records how long it took and how much of it was spent in CRI calls.
    fn record_start(&mut self, pod: &Pod, observed: &ObservedPod) {
        if self.start_recorded {
            return;
        }
        let all_running = spec::spec(pod)
            .containers
            .iter()
            .all(|c| observed.latest_container(&c.name).is_some_and(|r| r.state == ContainerRunState::Running));
        if all_running {
            self.start_recorded = true;
            let record = PodStartRecord {
                total: self.first_seen_instant.elapsed(),
                cri: CRI_TIME.try_with(|c| c.borrow().total()).unwrap_or_default(),
            };
            tracing::info!(seconds = record.total.as_secs_f64(), cri_seconds = record.cri.as_secs_f64(), "pod started");
            self.ctx.store.record_start(spec::uid(pod), record);
        }
    }

    /// Carries out the plan. Returns whether anything in the runtime changed.
    async fn execute(&mut self, pod: &Pod, observed: &ObservedPod, actions: &PodActions) -> bool {
        let rt = &self.ctx.runtime;
        let mut changed = false;
        if actions.kill_pod {
            changed |= kill_containers_and_sandboxes(&self.ctx, pod, observed).await;
        }
        for kill in &actions.containers_to_kill {
            let message = format!("{}, will be restarted", kill.reason);
            self.ctx.events.record(pod, Some((&kill.name, false)), EventType::Normal, ev::KILLING_CONTAINER, message);
            if let Err(e) = rt.stop_container(&kill.id, grace_period(pod)).await {
                tracing::warn!(container = %kill.name, error = %e, "stop container failed");
            }
            changed = true;
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
            return changed;
        }

        let mut sandbox = self.sandbox_spec(pod, actions.create_sandbox.unwrap_or(0));
        let (sandbox_id, pod_ips) = match (&actions.create_sandbox, &actions.sandbox_id) {
            (Some(attempt), _) => {
                sandbox.attempt = *attempt;
                if let Some(cgroups) = &self.ctx.cgroups {
                    let name = pod_cgroup_name(pod);
                    if let Err(e) = cgroups.ensure(&name, &pod_resource_config(spec::spec(pod))).await {
                        tracing::error!(error = %e, "failed to ensure that the pod cgroup exists");
                        return true;
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
                        // Containers stay ContainerCreating; the next sync tries again.
                        let message = format!("Failed to create pod sandbox: {}", e.message());
                        self.ctx.events.record(pod, None, EventType::Warning, ev::FAILED_CREATE_POD_SANDBOX, message);
                        return true;
                    }
                }
            }
            (None, Some(id)) => (id.clone(), observed.latest_sandbox().map(|s| s.ips.clone()).unwrap_or_default()),
            (None, None) => return changed,
        };
        if let Some(s) = observed.latest_sandbox() {
            if actions.create_sandbox.is_none() {
                sandbox.attempt = s.attempt;
            }
        }

        // kubelet starts a pod's containers one after another, in spec order.
        for start in &actions.containers_to_start {
            let Some(container) = find_container(pod, &start.name) else { continue };
            let span = tracing::info_span!("container", container = %start.name);
            let result =
                self.start_container(pod, container, start, &sandbox_id, &sandbox, &pod_ips).instrument(span).await;
            changed = true;
            match result {
                Ok(()) => {
                    self.sync_errors.remove(&start.name);
                    if let Some(finished) = start.previous_finished_at {
                        self.backoff.crash.next(&start.backoff_key, finished);
                    }
                }
                Err(waiting) => {
                    tracing::warn!(container = %start.name, reason = %waiting.reason, message = %waiting.message, "start container failed");
                    self.sync_errors.insert(start.name.clone(), waiting);
                    // An init container that cannot start blocks the rest, as in kubelet.
                    if start.init {
                        break;
                    }
                }
            }
        }
        changed
    }

    async fn start_container(
        &mut self,
        pod: &Pod,
        container: &Container,
        start: &ContainerStart,
        sandbox_id: &str,
        sandbox: &SandboxSpec,
        pod_ips: &[String],
    ) -> Result<(), Waiting> {
        let image_ref = self.ensure_image(pod, container, start.init, sandbox).await?;
        let spec = self.container_spec(pod, container, start, image_ref, pod_ips)?;
        let log_dir = Path::new(&sandbox.log_directory).join(&container.name);
        if let Err(e) = std::fs::create_dir_all(&log_dir) {
            tracing::warn!(dir = %log_dir.display(), error = %e, "cannot create container log directory");
        }
        let rt = &self.ctx.runtime;
        let events = &self.ctx.events;
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
        Ok(())
    }

    /// Makes the image present per the container's pull policy, with kubelet's image pull back-off on failure.
    async fn ensure_image(
        &mut self,
        pod: &Pod,
        container: &Container,
        init: bool,
        sandbox: &SandboxSpec,
    ) -> Result<String, Waiting> {
        let image = spec::image_of(container);
        let rt = &self.ctx.runtime;
        let policy = spec::pull_policy(container);
        let at = Some((container.name.as_str(), init));
        if policy != PullPolicy::Always {
            match rt.image_ref(image).await {
                Ok(Some(id)) => {
                    let message = format!("Container image {image:?} already present on machine");
                    self.ctx.events.record(pod, at, EventType::Normal, ev::PULLED_IMAGE, message);
                    return Ok(id);
                }
                Ok(None) if policy == PullPolicy::Never => {
                    let message = format!("Container image {image:?} is not present with pull policy of Never");
                    self.ctx.events.record(
                        pod,
                        at,
                        EventType::Warning,
                        plan::REASON_ERR_IMAGE_NEVER_PULL,
                        message.clone(),
                    );
                    return Err(Waiting { reason: plan::REASON_ERR_IMAGE_NEVER_PULL.into(), message });
                }
                Ok(None) => {}
                Err(e) => tracing::warn!(image, error = %e, "image status failed; pulling"),
            }
        }
        self.ctx.events.record(pod, at, EventType::Normal, ev::PULLING_IMAGE, format!("Pulling image {image:?}"));
        let started = Instant::now();
        let result = match &self.ctx.image_pull_lock {
            Some(lock) => {
                let _serial = lock.lock().await;
                rt.pull_image(image, sandbox).await
            }
            None => rt.pull_image(image, sandbox).await,
        };
        match result {
            Ok(image_ref) => {
                let took = started.elapsed();
                let message =
                    format!("Successfully pulled image {image:?} in {took:.3?} ({took:.3?} including waiting)");
                self.ctx.events.record(pod, at, EventType::Normal, ev::PULLED_IMAGE, message);
                Ok(image_ref)
            }
            Err(e) => {
                self.backoff.image_pull.next(&plan::image_backoff_key(pod, image), SystemTime::now());
                let message = format!("Failed to pull image {image:?}: {}", e.message());
                self.ctx.events.record(pod, at, EventType::Warning, ev::FAILED_TO_PULL_IMAGE, message);
                let message = format!("Error: {}", plan::REASON_ERR_IMAGE_PULL);
                self.ctx.events.record(pod, at, EventType::Warning, ev::FAILED_TO_PULL_IMAGE, message);
                Err(Waiting { reason: plan::REASON_ERR_IMAGE_PULL.into(), message: e.message() })
            }
        }
    }

    fn sandbox_spec(&self, pod: &Pod, attempt: u32) -> SandboxSpec {
        let s = spec::spec(pod);
        let (name, namespace, uid) = (spec::name(pod), spec::namespace(pod), spec::uid(pod));
        let hostname = if spec::host_network(pod) {
            self.ctx.node_name.clone()
        } else {
            // kubelet truncates the pod name to a valid hostname (63 bytes, no trailing '-' or '.').
            let h = s.hostname.clone().unwrap_or_else(|| name.to_owned());
            h.chars().take(63).collect::<String>().trim_end_matches(['-', '.']).to_owned()
        };
        let port_mappings = s
            .containers
            .iter()
            .flat_map(|c| c.ports.iter().flatten())
            .filter(|p| p.host_port.unwrap_or(0) > 0)
            .map(|p| PortMappingSpec {
                protocol: p.protocol.clone().unwrap_or_else(|| "TCP".into()),
                container_port: p.container_port,
                host_port: p.host_port.unwrap_or(0),
                host_ip: p.host_ip.clone().unwrap_or_default(),
            })
            .collect();
        SandboxSpec {
            name: name.to_owned(),
            namespace: namespace.to_owned(),
            uid: uid.to_owned(),
            attempt,
            hostname,
            log_directory: pod_log_dir(&self.ctx.pod_logs_dir, pod).display().to_string(),
            dns: self.dns_for(pod),
            port_mappings,
            labels: pod.metadata.labels.clone().unwrap_or_default(),
            annotations: pod.metadata.annotations.clone().unwrap_or_default(),
            host_network: spec::host_network(pod),
            host_pid: s.host_pid.unwrap_or(false),
            host_ipc: s.host_ipc.unwrap_or(false),
            share_process_namespace: s.share_process_namespace.unwrap_or(false),
            cgroup_parent: self
                .ctx
                .cgroups
                .as_ref()
                .map(|c| c.cgroup_parent(&pod_cgroup_name(pod)))
                .unwrap_or_default(),
            sysctls: s
                .security_context
                .as_ref()
                .and_then(|sc| sc.sysctls.as_ref())
                .map(|l| l.iter().map(|x| (x.name.clone(), x.value.clone())).collect())
                .unwrap_or_default(),
        }
    }

    /// kubelet's DNS configurer: `Default` uses the host's resolv.conf; `ClusterFirst` uses clusterDNS when set and
    /// falls back to the host's otherwise (as kubelet does when it has no cluster DNS).
    fn dns_for(&self, pod: &Pod) -> DnsSettings {
        let s = spec::spec(pod);
        let policy = s.dns_policy.as_deref().unwrap_or("ClusterFirst");
        let cluster_first = match policy {
            "ClusterFirstWithHostNet" => true,
            "ClusterFirst" => !spec::host_network(pod),
            _ => false,
        };
        let mut dns = if policy == "None" {
            DnsSettings::default()
        } else if cluster_first && !self.ctx.cluster_dns.is_empty() {
            let d = &self.ctx.cluster_domain;
            let ns = spec::namespace(pod);
            let mut searches = vec![format!("{ns}.svc.{d}"), format!("svc.{d}"), d.clone()];
            searches.extend(self.ctx.host_dns.searches.iter().cloned());
            DnsSettings { servers: self.ctx.cluster_dns.clone(), searches, options: vec![CLUSTER_FIRST_NDOTS.into()] }
        } else {
            self.ctx.host_dns.clone()
        };
        if let Some(cfg) = &s.dns_config {
            dns.servers.extend(cfg.nameservers.iter().flatten().cloned());
            dns.searches.extend(cfg.searches.iter().flatten().cloned());
            for o in cfg.options.iter().flatten() {
                let opt = match &o.value {
                    Some(v) => format!("{}:{v}", o.name.clone().unwrap_or_default()),
                    None => o.name.clone().unwrap_or_default(),
                };
                dns.options.push(opt);
            }
        }
        dns.searches.dedup();
        dns.searches.truncate(MAX_DNS_SEARCH_PATHS);
        dns
    }

    fn container_spec(
        &self,
        pod: &Pod,
        container: &Container,
        start: &ContainerStart,
        image_ref: String,
        pod_ips: &[String],
    ) -> Result<ContainerSpec, Waiting> {
        let config_error =
            |message: String| Waiting { reason: plan::REASON_CREATE_CONTAINER_CONFIG_ERROR.into(), message };
        let envs = super::env::container_envs(pod, container, &self.ctx.node_name, &self.ctx.host_ips, pod_ips)
            .map_err(config_error)?;
        let expand = |list: &Option<Vec<String>>| -> Vec<String> {
            list.iter().flatten().map(|s| super::env::expand(s, &envs)).collect()
        };
        let qos = pod_qos_class(spec::spec(pod));
        let resources = container_cgroup_values(container, qos, self.ctx.memory_capacity)
            .map_err(|e| config_error(e.to_string()))?;
        let sc = container.security_context.as_ref();
        let pod_sc = spec::spec(pod).security_context.as_ref();
        let caps = sc.and_then(|s| s.capabilities.as_ref());
        Ok(ContainerSpec {
            name: container.name.clone(),
            restart_count: start.restart_count,
            spec_hash: spec::container_hash(container),
            termination_grace_period: grace_period(pod),
            image: spec::image_of(container).to_owned(),
            image_ref,
            command: expand(&container.command),
            args: expand(&container.args),
            working_dir: container.working_dir.clone().unwrap_or_default(),
            log_path: format!("{}/{}.log", container.name, start.restart_count),
            labels: BTreeMap::new(),
            annotations: BTreeMap::new(),
            resources,
            // kubelet on cgroup v2: an OOM kill takes the whole container down, not just the process that hit the
            // limit, unless `singleProcessOOMKill` is set.
            unified: if self.ctx.oom_kill_whole_container {
                BTreeMap::from([("memory.oom.group".to_owned(), "1".to_owned())])
            } else {
                BTreeMap::new()
            },
            stdin: container.stdin.unwrap_or(false),
            stdin_once: container.stdin_once.unwrap_or(false),
            tty: container.tty.unwrap_or(false),
            privileged: sc.and_then(|s| s.privileged).unwrap_or(false),
            run_as_user: sc.and_then(|s| s.run_as_user).or(pod_sc.and_then(|s| s.run_as_user)),
            run_as_group: sc.and_then(|s| s.run_as_group).or(pod_sc.and_then(|s| s.run_as_group)),
            readonly_rootfs: sc.and_then(|s| s.read_only_root_filesystem).unwrap_or(false),
            capabilities_add: caps.and_then(|c| c.add.clone()).unwrap_or_default(),
            capabilities_drop: caps.and_then(|c| c.drop.clone()).unwrap_or_default(),
            envs,
        })
    }
}

fn find_container<'a>(pod: &'a Pod, name: &str) -> Option<&'a Container> {
    spec::init_containers(pod).iter().chain(spec::spec(pod).containers.iter()).find(|c| c.name == name)
}

/// `<podLogsDir>/<namespace>_<name>_<uid>`, kubelet's layout that log collectors rely on.
pub fn pod_log_dir(root: &Path, pod: &Pod) -> PathBuf {
    root.join(format!("{}_{}_{}", spec::namespace(pod), spec::name(pod), spec::uid(pod)))
}

fn grace_period(pod: &Pod) -> i64 {
    spec::termination_grace_period(pod).max(spec::MINIMUM_GRACE_PERIOD_SECONDS)
}

/// Stops every running container (in parallel, each with the grace period) and every ready sandbox.
async fn kill_containers_and_sandboxes(ctx: &WorkerContext, pod: &Pod, observed: &ObservedPod) -> bool {
    let rt = &ctx.runtime;
    let grace = grace_period(pod);
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
    let stops = running.iter().map(|c| async move {
        let message = format!("Stopping container {}", c.name);
        ctx.events.record(pod, Some((&c.name, false)), EventType::Normal, ev::KILLING_CONTAINER, message);
        if let Err(e) = rt.stop_container(&c.id, grace).await {
            tracing::warn!(container = %c.name, error = %e, "stop container failed");
        }
    });
    futures::future::join_all(stops).await;
    for s in ready {
        if let Err(e) = rt.stop_pod_sandbox(&s.id).await {
            tracing::warn!(sandbox_id = %s.id, error = %e, "stop pod sandbox failed");
        }
    }
    true
}

/// Kills a pod that is gone from its source and removes all it left in the runtime, retrying until the runtime
/// confirms nothing is left.
async fn terminate_pod(ctx: &WorkerContext, pod: &Pod) {
    tracing::info!(grace_seconds = grace_period(pod), "terminating pod");
    let uid = spec::uid(pod);
    let mut retry = Backoff::new(Duration::from_secs(1), Duration::from_secs(30));
    loop {
        match remove_pod_from_runtime(ctx, pod, uid).await {
            Ok(()) => break,
            Err(e) => {
                retry.next("terminate", SystemTime::now());
                let wait = retry.get("terminate").unwrap_or(Duration::from_secs(1));
                tracing::warn!(error = %e, retry_in = ?wait, "terminating pod failed");
                tokio::time::sleep(wait).await;
            }
        }
    }
    if let Some(cgroups) = &ctx.cgroups {
        if let Some(name) = cgroups.pod_cgroups().get(uid) {
            if let Err(e) = cgroups.remove(name).await {
                tracing::warn!(error = %e, "cannot remove pod cgroup");
            }
        }
    }
    let log_dir = pod_log_dir(&ctx.pod_logs_dir, pod);
    if let Err(e) = std::fs::remove_dir_all(&log_dir) {
        if e.kind() != std::io::ErrorKind::NotFound {
            tracing::warn!(dir = %log_dir.display(), error = %e, "cannot remove pod log directory");
        }
    }
    tracing::info!("pod terminated");
}

async fn remove_pod_from_runtime(ctx: &WorkerContext, pod: &Pod, uid: &str) -> Result<(), RuntimeError> {
    let observed = ctx.runtime.observe_pod(uid).await?;
    kill_containers_and_sandboxes(ctx, pod, &observed).await;
    for s in &observed.sandboxes {
        ctx.runtime.remove_pod_sandbox(&s.id).await?;
    }
    // Containers whose sandbox is already gone.
    for c in &observed.containers {
        ctx.runtime.remove_container(&c.id).await?;
    }
    let left = ctx.runtime.observe_pod(uid).await?;
    if left.sandboxes.is_empty() && left.containers.is_empty() {
        Ok(())
    } else {
        Err(RuntimeError::Incomplete { op: "RemovePodSandbox", field: "removal of every sandbox and container" })
    }
}

/// Kills what the runtime holds for a pod UID no source knows (left over from a deleted pod while the agent was
/// down), with the grace period recorded on its containers.
pub async fn kill_orphaned_pod(ctx: Arc<WorkerContext>, uid: String) {
    let observed = match ctx.runtime.observe_pod(&uid).await {
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
    terminate_pod(&ctx, &pod).instrument(span).await;
}
