//! The CRI client: RuntimeService and ImageService over the runtime's Unix socket, translated to the agent's types.
//! Every call is timed; the totals feed `/metrics` and the pod start figures.

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use cri::image_service_client::ImageServiceClient;
use cri::runtime_service_client::RuntimeServiceClient;
use cri_proto::runtime::v1 as cri;
use hyper_util::rt::TokioIo;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use tonic::transport::{Channel, Endpoint, Uri};

use crate::runtime::labels;
use crate::runtime::types::*;

/// kubelet's `runtimeRequestTimeout` default.
pub const RUNTIME_REQUEST_TIMEOUT: Duration = Duration::from_secs(120);
/// kubelet raises the gRPC message limit to 16 MiB so large container lists still decode.
const MAX_MESSAGE_SIZE: usize = 16 * 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("container runtime endpoint {endpoint:?}: {reason}")]
    Endpoint { endpoint: String, reason: String },
    #[error("connect to container runtime at {endpoint}: {source}")]
    Connect { endpoint: String, source: tonic::transport::Error },
    #[error("CRI {op}: {status}")]
    Call { op: &'static str, status: Box<tonic::Status> },
    #[error("CRI {op}: timed out after {0:?}", RUNTIME_REQUEST_TIMEOUT)]
    Timeout { op: &'static str },
    #[error("CRI {op}: response has no {field}")]
    Incomplete { op: &'static str, field: &'static str },
}

impl RuntimeError {
    /// The gRPC message, without the wrapper: what kubelet shows in a container's waiting message.
    pub fn message(&self) -> String {
        match self {
            RuntimeError::Call { status, .. } => status.message().to_owned(),
            other => other.to_string(),
        }
    }

    /// The runtime ended the call at its deadline (an exec that outlived its timeout).
    pub fn is_deadline_exceeded(&self) -> bool {
        matches!(self, RuntimeError::Timeout { .. })
            || matches!(self, RuntimeError::Call { status, .. } if status.code() == tonic::Code::DeadlineExceeded
                // containerd reports an exec that outlived its timeout as "timeout 1s exceeded: context deadline
                // exceeded" under an unknown code.
                || status.message().contains("deadline exceeded"))
    }

    pub fn is_not_found(&self) -> bool {
        matches!(self, RuntimeError::Call { status, .. } if status.code() == tonic::Code::NotFound)
    }
}

/// Retry bounds while the container runtime is not reachable at start.
const RUNTIME_CONNECT_RETRY_MAX: Duration = Duration::from_secs(30);

/// kubelet's `kubelet_runtime_operations_duration_seconds` buckets, `ExponentialBuckets(.005, 2.5, 14)`
/// (pkg/kubelet/metrics/metrics.go).
pub const RUNTIME_OPERATION_BUCKETS: (f64, f64, u16) = (0.005, 2.5, 14);

/// One series per operation, labelled as kubelet's instrumented runtime labels it.
pub type OperationLabels = [(&'static str, &'static str); 1];

fn runtime_operation_histogram() -> Histogram {
    let (start, factor, count) = RUNTIME_OPERATION_BUCKETS;
    Histogram::new(exponential_buckets(start, factor, count))
}

/// kubelet's runtime operation metrics (`instrumented_services.go`): every call counted and timed, the failed ones
/// counted again as errors.
#[derive(Debug)]
pub struct RuntimeMetrics {
    pub operations: Family<OperationLabels, Counter>,
    pub errors: Family<OperationLabels, Counter>,
    pub durations: Family<OperationLabels, Histogram, fn() -> Histogram>,
}

impl Default for RuntimeMetrics {
    fn default() -> Self {
        Self {
            operations: Family::default(),
            errors: Family::default(),
            durations: Family::new_with_constructor(runtime_operation_histogram),
        }
    }
}

/// kubelet's `operation` label of a CRI call (the constants of `pkg/kubelet/kuberuntime/instrumented_services.go`).
pub fn operation_type(op: &'static str) -> &'static str {
    match op {
        "Version" => "version",
        "Status" => "status",
        "UpdateRuntimeConfig" => "update_runtime_config",
        "RunPodSandbox" => "run_podsandbox",
        "StopPodSandbox" => "stop_podsandbox",
        "RemovePodSandbox" => "remove_podsandbox",
        "PodSandboxStatus" => "podsandbox_status",
        "ListPodSandbox" => "list_podsandbox",
        "PodSandboxStats" => "podsandbox_stats",
        "ListPodSandboxStats" => "list_podsandbox_stats",
        "CreateContainer" => "create_container",
        "StartContainer" => "start_container",
        "StopContainer" => "stop_container",
        "RemoveContainer" => "remove_container",
        "ListContainers" => "list_containers",
        "ContainerStatus" => "container_status",
        "UpdateContainerResources" => "update_container",
        "ReopenContainerLog" => "reopen_container_log",
        "ContainerStats" => "container_stats",
        "ListContainerStats" => "list_container_stats",
        "ExecSync" => "exec_sync",
        "Exec" => "exec",
        "Attach" => "attach",
        "PortForward" => "port_forward",
        "ListImages" => "list_images",
        "ImageStatus" => "image_status",
        "PullImage" => "pull_image",
        "RemoveImage" => "remove_image",
        "ImageFsInfo" => "image_fs_info",
        other => other,
    }
}

impl RuntimeMetrics {
    pub fn record(&self, op: &'static str, elapsed: Duration, ok: bool) {
        let labels = [("operation_type", operation_type(op))];
        self.operations.get_or_create(&labels).inc();
        self.durations.get_or_create(&labels).observe(elapsed.as_secs_f64());
        if !ok {
            self.errors.get_or_create(&labels).inc();
        }
    }
}

tokio::task_local! {
    /// Time the current task spent waiting on CRI calls; a pod worker runs its start-up inside this scope to split
    /// its start time into runtime time and its own.
    pub static CRI_TIME: RefCell<CriClock>;
}

/// Wall-clock time during which at least one CRI call of a task was in flight. Calls a task runs concurrently
/// (e.g. listing sandboxes and containers together) overlap, so their durations are not simply added.
#[derive(Debug, Default)]
pub struct CriClock {
    in_flight: u32,
    busy_since: Option<Instant>,
    total: Duration,
}

impl CriClock {
    fn enter(&mut self) {
        if self.in_flight == 0 {
            self.busy_since = Some(Instant::now());
        }
        self.in_flight += 1;
    }

    fn leave(&mut self) {
        self.in_flight = self.in_flight.saturating_sub(1);
        if self.in_flight == 0 {
            if let Some(since) = self.busy_since.take() {
                self.total += since.elapsed();
            }
        }
    }

    /// The busy time so far, including a call in flight.
    pub fn total(&self) -> Duration {
        self.total + self.busy_since.map(|s| s.elapsed()).unwrap_or_default()
    }
}

/// One CRI call on the task's [`CriClock`]; leaving on drop keeps the clock right when a call is cancelled.
struct CriCall;

impl CriCall {
    fn enter() -> CriCall {
        let _ = CRI_TIME.try_with(|c| c.borrow_mut().enter());
        CriCall
    }
}

impl Drop for CriCall {
    fn drop(&mut self) {
        let _ = CRI_TIME.try_with(|c| c.borrow_mut().leave());
    }
}

#[derive(Clone)]
pub struct Runtime {
    pub(super) runtime: RuntimeServiceClient<Channel>,
    pub(super) images: ImageServiceClient<Channel>,
    metrics: Arc<RuntimeMetrics>,
}

pub(super) fn nanos_to_time(nanos: i64) -> SystemTime {
    if nanos <= 0 {
        UNIX_EPOCH
    } else {
        UNIX_EPOCH + Duration::from_nanos(nanos as u64)
    }
}

fn optional_time(nanos: i64) -> Option<SystemTime> {
    (nanos > 0).then(|| nanos_to_time(nanos))
}

pub(super) fn label(labels: &HashMap<String, String>, key: &str) -> String {
    labels.get(key).cloned().unwrap_or_default()
}

impl Runtime {
    /// Connects to `unix:///path` (or a bare path). The channel reconnects by itself if the runtime restarts.
    pub async fn connect(endpoint: &str) -> Result<Self, RuntimeError> {
        let path = match endpoint.strip_prefix("unix://") {
            Some(p) => p.to_owned(),
            None if endpoint.starts_with('/') => endpoint.to_owned(),
            None => {
                return Err(RuntimeError::Endpoint {
                    endpoint: endpoint.to_owned(),
                    reason: "only unix:// endpoints are supported".into(),
                })
            }
        };
        // The URI is required by tonic but unused: the connector below always dials the socket.
        let channel = Endpoint::from_static("http://[::1]:50051")
            .connect_with_connector(tower::service_fn(move |_: Uri| {
                let path = path.clone();
                async move { Ok::<_, std::io::Error>(TokioIo::new(tokio::net::UnixStream::connect(path).await?)) }
            }))
            .await
            .map_err(|source| RuntimeError::Connect { endpoint: endpoint.to_owned(), source })?;
        Ok(Self {
            runtime: RuntimeServiceClient::new(channel.clone())
                .max_decoding_message_size(MAX_MESSAGE_SIZE)
                .max_encoding_message_size(MAX_MESSAGE_SIZE),
            images: ImageServiceClient::new(channel)
                .max_decoding_message_size(MAX_MESSAGE_SIZE)
                .max_encoding_message_size(MAX_MESSAGE_SIZE),
            metrics: Arc::default(),
        })
    }

    pub fn metrics(&self) -> Arc<RuntimeMetrics> {
        self.metrics.clone()
    }

    pub(super) async fn call<T, F>(
        &self,
        op: &'static str,
        timeout: Option<Duration>,
        fut: F,
    ) -> Result<T, RuntimeError>
    where
        F: std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        let start = Instant::now();
        let in_flight = CriCall::enter();
        let result = match timeout {
            Some(t) => match tokio::time::timeout(t, fut).await {
                Ok(r) => r.map_err(|status| RuntimeError::Call { op, status: Box::new(status) }),
                Err(_) => Err(RuntimeError::Timeout { op }),
            },
            None => fut.await.map_err(|status| RuntimeError::Call { op, status: Box::new(status) }),
        };
        let elapsed = start.elapsed();
        self.metrics.record(op, elapsed, result.is_ok());
        drop(in_flight);
        result.map(tonic::Response::into_inner)
    }

    /// Runtime name and version (`containerd`, `1.6.20`).
    pub async fn version(&self) -> Result<(String, String), RuntimeError> {
        let mut c = self.runtime.clone();
        let v = self
            .call("Version", Some(RUNTIME_REQUEST_TIMEOUT), c.version(cri::VersionRequest { version: "v1".into() }))
            .await?;
        Ok((v.runtime_name, v.runtime_version))
    }

    /// Tells the runtime this node's pod CIDR (CRI `UpdateRuntimeConfig`), as kubelet does once it knows it.
    pub async fn update_pod_cidr(&self, pod_cidr: &str) -> Result<(), RuntimeError> {
        let mut c = self.runtime.clone();
        let req = cri::UpdateRuntimeConfigRequest {
            runtime_config: Some(cri::RuntimeConfig {
                network_config: Some(cri::NetworkConfig { pod_cidr: pod_cidr.to_owned() }),
            }),
        };
        self.call("UpdateRuntimeConfig", Some(RUNTIME_REQUEST_TIMEOUT), c.update_runtime_config(req)).await.map(|_| ())
    }

    pub async fn status(&self) -> Result<RuntimeReadiness, RuntimeError> {
        let mut c = self.runtime.clone();
        let s =
            self.call("Status", Some(RUNTIME_REQUEST_TIMEOUT), c.status(cri::StatusRequest { verbose: false })).await?;
        let conditions = s.status.map(|s| s.conditions).unwrap_or_default();
        let cond = |t: &str| conditions.iter().find(|c| c.r#type == t);
        let messages: Vec<String> = conditions
            .iter()
            .filter(|c| !c.status)
            .map(|c| format!("{}: {} {}", c.r#type, c.reason, c.message).trim().to_owned())
            .collect();
        Ok(RuntimeReadiness {
            runtime_ready: cond("RuntimeReady").is_some_and(|c| c.status),
            network_ready: cond("NetworkReady").is_some_and(|c| c.status),
            message: messages.join("; "),
        })
    }

    /// kubelet's `GetContainerEvents`: the runtime's stream of container lifecycle events, as the UID of the pod each
    /// one concerns (events of pods this agent did not create are left out). The stream ends with the error that
    /// broke it; a runtime without the call (containerd before 1.7) answers `Unimplemented` at once.
    pub async fn container_events(
        &self,
    ) -> Result<futures::stream::BoxStream<'static, Result<String, RuntimeError>>, RuntimeError> {
        use futures::StreamExt;
        let mut c = self.runtime.clone();
        let stream = self.call("GetContainerEvents", None, c.get_container_events(cri::GetEventsRequest {})).await?;
        Ok(stream
            .filter_map(|event| async move {
                match event {
                    Err(status) => Some(Err(RuntimeError::Call { op: "GetContainerEvents", status: Box::new(status) })),
                    Ok(event) => event_pod_uid(&event).map(Ok),
                }
            })
            .boxed())
    }

    /// Sandboxes this agent created, optionally for one pod UID, newest first.
    pub async fn list_pod_sandboxes(&self, pod_uid: Option<&str>) -> Result<Vec<SandboxRecord>, RuntimeError> {
        let mut selector = HashMap::from([(labels::MANAGED_BY.to_owned(), "true".to_owned())]);
        if let Some(uid) = pod_uid {
            selector.insert(labels::POD_UID.to_owned(), uid.to_owned());
        }
        let filter = cri::PodSandboxFilter { label_selector: selector, ..Default::default() };
        let mut c = self.runtime.clone();
        let resp = self
            .call(
                "ListPodSandbox",
                Some(RUNTIME_REQUEST_TIMEOUT),
                c.list_pod_sandbox(cri::ListPodSandboxRequest { filter: Some(filter) }),
            )
            .await?;
        let mut out: Vec<SandboxRecord> = resp
            .items
            .into_iter()
            .map(|s| {
                let meta = s.metadata.unwrap_or_default();
                SandboxRecord {
                    pod_uid: label(&s.labels, labels::POD_UID),
                    namespace: meta.namespace,
                    name: meta.name,
                    attempt: meta.attempt,
                    ready: s.state == cri::PodSandboxState::SandboxReady as i32,
                    created_at: nanos_to_time(s.created_at),
                    ips: Vec::new(),
                    id: s.id,
                }
            })
            .collect();
        out.sort_by_key(|s| std::cmp::Reverse(s.created_at));
        Ok(out)
    }

    /// The pod IPs of a sandbox.
    pub async fn pod_sandbox_ips(&self, sandbox_id: &str) -> Result<Vec<String>, RuntimeError> {
        let mut c = self.runtime.clone();
        let resp = self
            .call(
                "PodSandboxStatus",
                Some(RUNTIME_REQUEST_TIMEOUT),
                c.pod_sandbox_status(cri::PodSandboxStatusRequest {
                    pod_sandbox_id: sandbox_id.into(),
                    verbose: false,
                }),
            )
            .await?;
        let network = resp.status.and_then(|s| s.network);
        Ok(network
            .map(|n| {
                std::iter::once(n.ip)
                    .chain(n.additional_ips.into_iter().map(|p| p.ip))
                    .filter(|ip| !ip.is_empty())
                    .collect()
            })
            .unwrap_or_default())
    }

    /// Containers this agent created (id, pod UID, state), optionally for one pod UID.
    pub async fn list_containers(&self, pod_uid: Option<&str>) -> Result<Vec<ContainerSummary>, RuntimeError> {
        let mut selector = HashMap::from([(labels::MANAGED_BY.to_owned(), "true".to_owned())]);
        if let Some(uid) = pod_uid {
            selector.insert(labels::POD_UID.to_owned(), uid.to_owned());
        }
        let filter = cri::ContainerFilter { label_selector: selector, ..Default::default() };
        let mut c = self.runtime.clone();
        let resp = self
            .call(
                "ListContainers",
                Some(RUNTIME_REQUEST_TIMEOUT),
                c.list_containers(cri::ListContainersRequest { filter: Some(filter) }),
            )
            .await?;
        Ok(resp
            .containers
            .into_iter()
            .map(|c| ContainerSummary {
                pod_uid: label(&c.labels, labels::POD_UID),
                state: container_state(c.state),
                sandbox_id: c.pod_sandbox_id,
                id: c.id,
            })
            .collect())
    }

    pub async fn container_status(&self, container_id: &str) -> Result<ContainerRecord, RuntimeError> {
        let mut c = self.runtime.clone();
        let resp = self
            .call(
                "ContainerStatus",
                Some(RUNTIME_REQUEST_TIMEOUT),
                c.container_status(cri::ContainerStatusRequest { container_id: container_id.into(), verbose: false }),
            )
            .await?;
        let s = resp.status.ok_or(RuntimeError::Incomplete { op: "ContainerStatus", field: "status" })?;
        let meta = s.metadata.unwrap_or_default();
        let restart_count = label(&s.labels, labels::CONTAINER_RESTART_COUNT).parse().unwrap_or(meta.attempt);
        Ok(ContainerRecord {
            sandbox_id: String::new(),
            pod_uid: label(&s.labels, labels::POD_UID),
            name: meta.name,
            restart_count,
            spec_hash: label(&s.labels, labels::CONTAINER_HASH),
            state: container_state(s.state),
            created_at: nanos_to_time(s.created_at),
            started_at: optional_time(s.started_at),
            finished_at: optional_time(s.finished_at),
            exit_code: s.exit_code,
            reason: s.reason,
            message: s.message,
            image: s.image.map(|i| i.image).unwrap_or_default(),
            image_ref: s.image_ref,
            termination_grace_period: s
                .annotations
                .get(labels::POD_TERMINATION_GRACE_PERIOD)
                .and_then(|v| v.parse().ok()),
            id: s.id,
        })
    }

    /// Everything the runtime holds for one pod: its sandboxes (the newest with its IPs) and the full status of every
    /// container.
    /// Connects to the runtime at `endpoint`, retrying with a doubling wait while it is not reachable (at start-up the
    /// runtime may come up after the agent); returns the client, the runtime's name and its version.
    pub async fn connect_with_retry(endpoint: &str) -> (Runtime, String, String) {
        let mut wait = Duration::from_secs(1);
        loop {
            let attempt = async {
                let rt = Runtime::connect(endpoint).await?;
                let (name, version) = rt.version().await?;
                Ok::<_, RuntimeError>((rt, name, version))
            };
            match attempt.await {
                Ok(r) => return r,
                Err(e) => {
                    tracing::warn!(endpoint, error = %e, retry_in = ?wait, "container runtime not ready");
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(RUNTIME_CONNECT_RETRY_MAX);
                }
            }
        }
    }

    pub async fn observe_pod(&self, pod_uid: &str) -> Result<ObservedPod, RuntimeError> {
        let (sandboxes, containers) =
            tokio::join!(self.list_pod_sandboxes(Some(pod_uid)), self.list_containers(Some(pod_uid)));
        let mut sandboxes = sandboxes?;
        let containers = containers?;
        if let Some(latest) = sandboxes.first_mut() {
            if latest.ready {
                match self.pod_sandbox_ips(&latest.id).await {
                    Ok(ips) => latest.ips = ips,
                    Err(e) if e.is_not_found() => latest.ready = false,
                    Err(e) => return Err(e),
                }
            }
        }
        let statuses = futures::future::join_all(containers.iter().map(|c| self.container_status(&c.id))).await;
        let mut observed = ObservedPod { sandboxes, containers: Vec::with_capacity(statuses.len()) };
        for (summary, status) in containers.iter().zip(statuses) {
            match status {
                Ok(mut c) => {
                    c.sandbox_id = summary.sandbox_id.clone();
                    observed.containers.push(c)
                }
                // Removed between the list and the status call: it is gone, which is what the next sync sees anyway.
                Err(e) if e.is_not_found() => {}
                Err(e) => return Err(e),
            }
        }
        observed.sort();
        Ok(observed)
    }

    pub async fn run_pod_sandbox(&self, spec: &SandboxSpec) -> Result<String, RuntimeError> {
        let mut c = self.runtime.clone();
        let resp = self
            .call(
                "RunPodSandbox",
                // Sandbox creation includes network setup; kubelet gives it the full request timeout.
                Some(RUNTIME_REQUEST_TIMEOUT),
                c.run_pod_sandbox(cri::RunPodSandboxRequest {
                    config: Some(sandbox_config(spec)),
                    runtime_handler: String::new(),
                }),
            )
            .await?;
        Ok(resp.pod_sandbox_id)
    }

    pub async fn stop_pod_sandbox(&self, sandbox_id: &str) -> Result<(), RuntimeError> {
        let mut c = self.runtime.clone();
        let r = self
            .call(
                "StopPodSandbox",
                Some(RUNTIME_REQUEST_TIMEOUT),
                c.stop_pod_sandbox(cri::StopPodSandboxRequest { pod_sandbox_id: sandbox_id.into() }),
            )
            .await;
        ignore_not_found(r.map(|_| ()))
    }

    pub async fn remove_pod_sandbox(&self, sandbox_id: &str) -> Result<(), RuntimeError> {
        let mut c = self.runtime.clone();
        let r = self
            .call(
                "RemovePodSandbox",
                Some(RUNTIME_REQUEST_TIMEOUT),
                c.remove_pod_sandbox(cri::RemovePodSandboxRequest { pod_sandbox_id: sandbox_id.into() }),
            )
            .await;
        ignore_not_found(r.map(|_| ()))
    }

    pub async fn create_container(
        &self,
        sandbox_id: &str,
        spec: &ContainerSpec,
        sandbox: &SandboxSpec,
    ) -> Result<String, RuntimeError> {
        let mut c = self.runtime.clone();
        let resp = self
            .call(
                "CreateContainer",
                Some(RUNTIME_REQUEST_TIMEOUT),
                c.create_container(cri::CreateContainerRequest {
                    pod_sandbox_id: sandbox_id.into(),
                    config: Some(container_config(spec, sandbox)),
                    sandbox_config: Some(sandbox_config(sandbox)),
                }),
            )
            .await?;
        Ok(resp.container_id)
    }

    pub async fn start_container(&self, container_id: &str) -> Result<(), RuntimeError> {
        let mut c = self.runtime.clone();
        self.call(
            "StartContainer",
            Some(RUNTIME_REQUEST_TIMEOUT),
            c.start_container(cri::StartContainerRequest { container_id: container_id.into() }),
        )
        .await
        .map(|_| ())
    }

    /// Stops a container, giving it `grace_seconds` between SIGTERM and SIGKILL. Already gone is success.
    pub async fn stop_container(&self, container_id: &str, grace_seconds: i64) -> Result<(), RuntimeError> {
        let mut c = self.runtime.clone();
        let timeout = RUNTIME_REQUEST_TIMEOUT + Duration::from_secs(grace_seconds.max(0) as u64);
        let r = self
            .call(
                "StopContainer",
                Some(timeout),
                c.stop_container(cri::StopContainerRequest {
                    container_id: container_id.into(),
                    timeout: grace_seconds,
                }),
            )
            .await;
        ignore_not_found(r.map(|_| ()))
    }

    pub async fn remove_container(&self, container_id: &str) -> Result<(), RuntimeError> {
        let mut c = self.runtime.clone();
        let r = self
            .call(
                "RemoveContainer",
                Some(RUNTIME_REQUEST_TIMEOUT),
                c.remove_container(cri::RemoveContainerRequest { container_id: container_id.into() }),
            )
            .await;
        ignore_not_found(r.map(|_| ()))
    }

    /// The image's ID if it is present on the node.
    pub async fn image_ref(&self, image: &str) -> Result<Option<String>, RuntimeError> {
        Ok(self.image_status(image).await?.map(|i| i.id).filter(|id| !id.is_empty()))
    }

    async fn image_status(&self, image: &str) -> Result<Option<cri::Image>, RuntimeError> {
        let mut c = self.images.clone();
        let resp = self
            .call(
                "ImageStatus",
                Some(RUNTIME_REQUEST_TIMEOUT),
                c.image_status(cri::ImageStatusRequest { image: Some(image_spec(image)), verbose: false }),
            )
            .await?;
        Ok(resp.image)
    }

    /// The user the image runs as (kubelet's `getImageUser`); `None` when the image is not present.
    pub async fn image_user(&self, image: &str) -> Result<Option<ImageUser>, RuntimeError> {
        Ok(self.image_status(image).await?.map(|i| ImageUser { uid: i.uid.map(|u| u.value), username: i.username }))
    }

    /// Pulls an image and returns its reference. No timeout: kubelet bounds pulls by progress, not duration, and a
    /// large image on a slow registry may legitimately take long.
    pub async fn pull_image(&self, image: &str, sandbox: &SandboxSpec) -> Result<String, RuntimeError> {
        let mut c = self.images.clone();
        let resp = self
            .call(
                "PullImage",
                None,
                c.pull_image(cri::PullImageRequest {
                    image: Some(image_spec(image)),
                    auth: None,
                    sandbox_config: Some(sandbox_config(sandbox)),
                }),
            )
            .await?;
        Ok(resp.image_ref)
    }
}

fn ignore_not_found(r: Result<(), RuntimeError>) -> Result<(), RuntimeError> {
    match r {
        Err(e) if e.is_not_found() => Ok(()),
        other => other,
    }
}

pub(super) fn container_state(state: i32) -> ContainerRunState {
    match cri::ContainerState::try_from(state) {
        Ok(cri::ContainerState::ContainerCreated) => ContainerRunState::Created,
        Ok(cri::ContainerState::ContainerRunning) => ContainerRunState::Running,
        Ok(cri::ContainerState::ContainerExited) => ContainerRunState::Exited,
        _ => ContainerRunState::Unknown,
    }
}

pub(super) fn image_spec(image: &str) -> cri::ImageSpec {
    cri::ImageSpec { image: image.into(), ..Default::default() }
}

fn to_map(m: &BTreeMap<String, String>) -> HashMap<String, String> {
    m.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
}

fn namespace_options(spec: &SandboxSpec) -> cri::NamespaceOption {
    let pod_or_node = |host: bool| if host { cri::NamespaceMode::Node } else { cri::NamespaceMode::Pod } as i32;
    cri::NamespaceOption {
        network: pod_or_node(spec.host_network),
        pid: if spec.host_pid {
            cri::NamespaceMode::Node as i32
        } else if spec.share_process_namespace {
            cri::NamespaceMode::Pod as i32
        } else {
            cri::NamespaceMode::Container as i32
        },
        ipc: pod_or_node(spec.host_ipc),
        ..Default::default()
    }
}

/// kubelet's `generateLinuxContainerConfig`: a container with a namespace target joins its PID namespace, unless the
/// pod already shares one (shareProcessNamespace, hostPID).
fn container_namespace_options(sandbox: &SandboxSpec, pid_target_id: Option<&str>) -> cri::NamespaceOption {
    let mut options = namespace_options(sandbox);
    if let Some(target) = pid_target_id {
        if options.pid == cri::NamespaceMode::Container as i32 {
            options.pid = cri::NamespaceMode::Target as i32;
            options.target_id = target.to_owned();
        }
    }
    options
}

fn security_profile(profile: &SeccompProfile) -> cri::SecurityProfile {
    use cri::security_profile::ProfileType;
    match profile {
        SeccompProfile::Unconfined => {
            cri::SecurityProfile { profile_type: ProfileType::Unconfined as i32, localhost_ref: String::new() }
        }
        SeccompProfile::RuntimeDefault => {
            cri::SecurityProfile { profile_type: ProfileType::RuntimeDefault as i32, localhost_ref: String::new() }
        }
        SeccompProfile::Localhost(path) => {
            cri::SecurityProfile { profile_type: ProfileType::Localhost as i32, localhost_ref: path.clone() }
        }
    }
}

fn selinux_option(o: &SeLinuxOptions) -> cri::SeLinuxOption {
    cri::SeLinuxOption { user: o.user.clone(), role: o.role.clone(), r#type: o.type_.clone(), level: o.level.clone() }
}

fn sandbox_config(spec: &SandboxSpec) -> cri::PodSandboxConfig {
    let mut sandbox_labels = spec.labels.clone();
    sandbox_labels.insert(labels::POD_NAME.into(), spec.name.clone());
    sandbox_labels.insert(labels::POD_NAMESPACE.into(), spec.namespace.clone());
    sandbox_labels.insert(labels::POD_UID.into(), spec.uid.clone());
    sandbox_labels.insert(labels::MANAGED_BY.into(), "true".into());
    cri::PodSandboxConfig {
        metadata: Some(cri::PodSandboxMetadata {
            name: spec.name.clone(),
            uid: spec.uid.clone(),
            namespace: spec.namespace.clone(),
            attempt: spec.attempt,
        }),
        hostname: spec.hostname.clone(),
        log_directory: spec.log_directory.clone(),
        dns_config: Some(cri::DnsConfig {
            servers: spec.dns.servers.clone(),
            searches: spec.dns.searches.clone(),
            options: spec.dns.options.clone(),
        }),
        port_mappings: spec
            .port_mappings
            .iter()
            .map(|p| cri::PortMapping {
                protocol: match p.protocol.as_str() {
                    "UDP" => cri::Protocol::Udp,
                    "SCTP" => cri::Protocol::Sctp,
                    _ => cri::Protocol::Tcp,
                } as i32,
                container_port: p.container_port,
                host_port: p.host_port,
                host_ip: p.host_ip.clone(),
            })
            .collect(),
        labels: to_map(&sandbox_labels),
        annotations: to_map(&spec.annotations),
        linux: Some(cri::LinuxPodSandboxConfig {
            cgroup_parent: spec.cgroup_parent.clone(),
            security_context: Some(cri::LinuxSandboxSecurityContext {
                namespace_options: Some(namespace_options(spec)),
                selinux_options: spec.security.selinux.as_ref().map(selinux_option),
                run_as_user: spec.security.run_as_user.map(|value| cri::Int64Value { value }),
                run_as_group: spec.security.run_as_group.map(|value| cri::Int64Value { value }),
                supplemental_groups: spec.security.supplemental_groups.clone(),
                privileged: spec.security.privileged,
                seccomp: Some(security_profile(&spec.security.seccomp)),
                ..Default::default()
            }),
            sysctls: to_map(&spec.sysctls),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn mount(m: &Mount) -> cri::Mount {
    let propagation = match m.propagation {
        MountPropagation::Private => cri::MountPropagation::PropagationPrivate,
        MountPropagation::HostToContainer => cri::MountPropagation::PropagationHostToContainer,
        MountPropagation::Bidirectional => cri::MountPropagation::PropagationBidirectional,
    };
    cri::Mount {
        container_path: m.container_path.clone(),
        host_path: m.host_path.clone(),
        readonly: m.readonly,
        propagation: propagation as i32,
        ..Default::default()
    }
}

fn container_config(spec: &ContainerSpec, sandbox: &SandboxSpec) -> cri::ContainerConfig {
    let mut container_labels = spec.labels.clone();
    container_labels.insert(labels::POD_NAME.into(), sandbox.name.clone());
    container_labels.insert(labels::POD_NAMESPACE.into(), sandbox.namespace.clone());
    container_labels.insert(labels::POD_UID.into(), sandbox.uid.clone());
    container_labels.insert(labels::CONTAINER_NAME.into(), spec.name.clone());
    container_labels.insert(labels::CONTAINER_RESTART_COUNT.into(), spec.restart_count.to_string());
    container_labels.insert(labels::CONTAINER_HASH.into(), spec.spec_hash.clone());
    container_labels.insert(labels::MANAGED_BY.into(), "true".into());
    let mut annotations = spec.annotations.clone();
    annotations.insert(labels::CONTAINER_HASH.into(), spec.spec_hash.clone());
    annotations.insert(labels::CONTAINER_RESTART_COUNT.into(), spec.restart_count.to_string());
    annotations.insert(labels::POD_TERMINATION_GRACE_PERIOD.into(), spec.termination_grace_period.to_string());
    let r = &spec.resources;
    let sc = &spec.security;
    cri::ContainerConfig {
        metadata: Some(cri::ContainerMetadata { name: spec.name.clone(), attempt: spec.restart_count }),
        image: Some(cri::ImageSpec {
            image: spec.image_ref.clone(),
            user_specified_image: spec.image.clone(),
            ..Default::default()
        }),
        command: spec.command.clone(),
        args: spec.args.clone(),
        working_dir: spec.working_dir.clone(),
        envs: spec.envs.iter().map(|(k, v)| cri::KeyValue { key: k.clone(), value: v.clone() }).collect(),
        mounts: spec.mounts.iter().map(mount).collect(),
        labels: to_map(&container_labels),
        annotations: to_map(&annotations),
        log_path: spec.log_path.clone(),
        stdin: spec.stdin,
        stdin_once: spec.stdin_once,
        tty: spec.tty,
        linux: Some(cri::LinuxContainerConfig {
            resources: Some(cri::LinuxContainerResources {
                cpu_period: r.cpu_period_us,
                cpu_quota: r.cpu_quota_us,
                cpu_shares: r.cpu_shares as i64,
                memory_limit_in_bytes: r.memory_limit_bytes,
                oom_score_adj: r.oom_score_adj,
                unified: spec.unified.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
                ..Default::default()
            }),
            security_context: Some(cri::LinuxContainerSecurityContext {
                capabilities: Some(cri::Capability {
                    add_capabilities: sc.capabilities_add.clone(),
                    drop_capabilities: sc.capabilities_drop.clone(),
                    ..Default::default()
                }),
                privileged: sc.privileged,
                namespace_options: Some(container_namespace_options(sandbox, spec.pid_target_id.as_deref())),
                selinux_options: sc.selinux.as_ref().map(selinux_option),
                run_as_user: sc.run_as_user.map(|value| cri::Int64Value { value }),
                run_as_group: sc.run_as_group.map(|value| cri::Int64Value { value }),
                readonly_rootfs: sc.readonly_rootfs,
                supplemental_groups: sc.supplemental_groups.clone(),
                no_new_privs: sc.no_new_privs,
                masked_paths: sc.masked_paths.clone(),
                readonly_paths: sc.readonly_paths.clone(),
                seccomp: Some(security_profile(&sc.seccomp)),
                ..Default::default()
            }),
        }),
        ..Default::default()
    }
}

/// The UID of the pod a container event concerns, if this agent created it.
fn event_pod_uid(event: &cri::ContainerEventResponse) -> Option<String> {
    let sandbox = event.pod_sandbox_status.as_ref()?;
    if label(&sandbox.labels, labels::MANAGED_BY) != "true" {
        return None;
    }
    let uid = label(&sandbox.labels, labels::POD_UID);
    (!uid.is_empty()).then_some(uid)
}

#[cfg(test)]
mod cri_clock_tests {
    use super::*;

    #[test]
    fn overlapping_calls_count_once_and_sequential_calls_add_up() {
        let mut clock = CriClock::default();
        let wall = Instant::now();
        clock.enter();
        clock.enter();
        std::thread::sleep(Duration::from_millis(30));
        clock.leave();
        std::thread::sleep(Duration::from_millis(30));
        clock.leave();
        let wall = wall.elapsed();
        let overlapped = clock.total();
        // Summing the two calls would give at least wall + 30 ms; the clock counts the time they overlap once.
        assert!(overlapped >= Duration::from_millis(60) && overlapped <= wall, "{overlapped:?} vs wall {wall:?}");
        std::thread::sleep(Duration::from_millis(10));
        assert_eq!(clock.total(), overlapped, "idle time is not CRI time");
        clock.enter();
        std::thread::sleep(Duration::from_millis(20));
        clock.leave();
        assert!(clock.total() >= overlapped + Duration::from_millis(20));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pid_target_joins_the_targets_namespace_unless_the_pod_shares_one() {
        let sandbox = SandboxSpec::default();
        let o = container_namespace_options(&sandbox, Some("abc"));
        assert_eq!((o.pid, o.target_id.as_str()), (cri::NamespaceMode::Target as i32, "abc"));
        assert_eq!(container_namespace_options(&sandbox, None).pid, cri::NamespaceMode::Container as i32);
        let shared = SandboxSpec { share_process_namespace: true, ..Default::default() };
        let o = container_namespace_options(&shared, Some("abc"));
        assert_eq!((o.pid, o.target_id.as_str()), (cri::NamespaceMode::Pod as i32, ""));
    }

    #[test]
    fn a_container_event_names_its_pod_only_for_sandboxes_this_agent_created() {
        let event = |labels: &[(&str, &str)]| cri::ContainerEventResponse {
            pod_sandbox_status: Some(cri::PodSandboxStatus {
                labels: labels.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect(),
                ..Default::default()
            }),
            ..Default::default()
        };
        let ours = event(&[(labels::MANAGED_BY, "true"), (labels::POD_UID, "uid-1")]);
        assert_eq!(event_pod_uid(&ours).as_deref(), Some("uid-1"));
        assert_eq!(event_pod_uid(&event(&[(labels::POD_UID, "uid-2")])), None, "another agent's pod");
        assert_eq!(event_pod_uid(&event(&[(labels::MANAGED_BY, "true")])), None);
        assert_eq!(event_pod_uid(&cri::ContainerEventResponse::default()), None);
    }
}
