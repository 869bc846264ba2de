//! Pod events with kubelet's reasons (pkg/kubelet/events/event.go). Workers record them here; without an API server
//! they are only logged, with one they are posted by `api::events`.

use k8s_openapi::api::core::v1::Pod;
use tokio::sync::mpsc;

use super::spec;

pub const PULLING_IMAGE: &str = "Pulling";
pub const PULLED_IMAGE: &str = "Pulled";
pub const FAILED_TO_PULL_IMAGE: &str = "Failed";
pub const BACK_OFF_PULL_IMAGE: &str = "BackOff";
pub const CREATED_CONTAINER: &str = "Created";
pub const STARTED_CONTAINER: &str = "Started";
pub const FAILED_TO_CREATE_CONTAINER: &str = "Failed";
pub const FAILED_TO_START_CONTAINER: &str = "Failed";
pub const KILLING_CONTAINER: &str = "Killing";
pub const BACK_OFF_START_CONTAINER: &str = "BackOff";
pub const FAILED_CREATE_POD_SANDBOX: &str = "FailedCreatePodSandBox";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventType {
    Normal,
    Warning,
}

impl EventType {
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::Normal => "Normal",
            EventType::Warning => "Warning",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodEvent {
    pub namespace: String,
    pub name: String,
    pub uid: String,
    /// `spec.containers{name}` or `spec.initContainers{name}` when the event is about a container.
    pub field_path: Option<String>,
    pub kind: EventType,
    pub reason: &'static str,
    pub message: String,
}

#[derive(Debug, Clone, Default)]
pub struct EventRecorder {
    tx: Option<mpsc::UnboundedSender<PodEvent>>,
}

impl EventRecorder {
    pub fn new(tx: mpsc::UnboundedSender<PodEvent>) -> Self {
        Self { tx: Some(tx) }
    }

    pub fn record(
        &self,
        pod: &Pod,
        container: Option<(&str, bool)>,
        kind: EventType,
        reason: &'static str,
        message: String,
    ) {
        let field_path = container
            .map(|(name, init)| format!("spec.{}{{{name}}}", if init { "initContainers" } else { "containers" }));
        match kind {
            EventType::Normal => tracing::info!(reason, "{message}"),
            EventType::Warning => tracing::warn!(reason, "{message}"),
        }
        if let Some(tx) = &self.tx {
            let _ = tx.send(PodEvent {
                namespace: spec::namespace(pod).to_owned(),
                name: spec::name(pod).to_owned(),
                uid: spec::uid(pod).to_owned(),
                field_path,
                kind,
                reason,
                message,
            });
        }
    }
}
