//! Pod events with kubelet's reasons (pkg/kubelet/events/event.go). Workers record them here; without an API server
//! they are only logged, with one they are posted by `api::events`.

use std::borrow::Cow;

use k8s_openapi::api::core::v1::Pod;
use tokio::sync::mpsc;

use crate::kubetypes::spec;

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
// The node's own events (pkg/kubelet/events/event.go).
pub const CONTAINER_GC_FAILED: &str = "ContainerGCFailed";
pub const IMAGE_GC_FAILED: &str = "ImageGCFailed";
pub const FREE_DISK_SPACE_FAILED: &str = "FreeDiskSpaceFailed";
pub const INVALID_DISK_CAPACITY: &str = "InvalidDiskCapacity";

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
    /// `spec.containers{name}`, `spec.initContainers{name}` or `spec.ephemeralContainers{name}` when the event is about a container.
    pub field_path: Option<String>,
    pub kind: EventType,
    pub reason: Cow<'static, str>,
    pub message: String,
}

/// An event about the node itself, kubelet's `nodeRef` as the involved object (kind Node, name and UID the node's
/// name): garbage collection, eviction, shutdown.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeEvent {
    pub kind: EventType,
    pub reason: Cow<'static, str>,
    pub message: String,
}

/// kubelet's `fieldPath` (pkg/kubelet/container/ref.go): where the named container is in the pod's spec, looked up in
/// containers, init containers, then ephemeral containers; `init` decides for a name the spec no longer has.
pub fn container_field_path(pod: &Pod, name: &str, init: bool) -> String {
    let s = spec::spec(pod);
    let list = if s.containers.iter().any(|c| c.name == name) {
        "containers"
    } else if s.init_containers.iter().flatten().any(|c| c.name == name) {
        "initContainers"
    } else if s.ephemeral_containers.iter().flatten().any(|c| c.name == name) {
        "ephemeralContainers"
    } else if init {
        "initContainers"
    } else {
        "containers"
    };
    format!("spec.{list}{{{name}}}")
}

/// What the recorders send to the event poster, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EventMessage {
    Event(PodEvent),
    Node(NodeEvent),
    /// The pod (by UID) is gone from the node: nothing more will be said about it, so the poster forgets what it
    /// keeps per pod.
    PodGone(String),
}

#[derive(Debug, Clone, Default)]
pub struct EventRecorder {
    tx: Option<mpsc::UnboundedSender<EventMessage>>,
}

impl EventRecorder {
    pub fn new(tx: mpsc::UnboundedSender<EventMessage>) -> Self {
        Self { tx: Some(tx) }
    }

    /// Tells the poster that the pod is gone (after its last event).
    pub fn pod_gone(&self, uid: &str) {
        if let Some(tx) = &self.tx {
            let _ = tx.send(EventMessage::PodGone(uid.to_owned()));
        }
    }

    /// An event about the node (kubelet's `recorder.Eventf(kl.nodeRef, ...)`).
    pub fn record_node(&self, kind: EventType, reason: impl Into<Cow<'static, str>>, message: String) {
        let reason = reason.into();
        match kind {
            EventType::Normal => tracing::info!(reason = %reason, "{message}"),
            EventType::Warning => tracing::warn!(reason = %reason, "{message}"),
        }
        if let Some(tx) = &self.tx {
            let _ = tx.send(EventMessage::Node(NodeEvent { kind, reason, message }));
        }
    }

    pub fn record(
        &self,
        pod: &Pod,
        container: Option<(&str, bool)>,
        kind: EventType,
        reason: impl Into<Cow<'static, str>>,
        message: String,
    ) {
        let reason = reason.into();
        let field_path = container.map(|(name, init)| container_field_path(pod, name, init));
        match kind {
            EventType::Normal => tracing::info!(reason = %reason, "{message}"),
            EventType::Warning => tracing::warn!(reason = %reason, "{message}"),
        }
        if let Some(tx) = &self.tx {
            let _ = tx.send(EventMessage::Event(PodEvent {
                namespace: spec::namespace(pod).to_owned(),
                name: spec::name(pod).to_owned(),
                uid: spec::uid(pod).to_owned(),
                field_path,
                kind,
                reason,
                message,
            }));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn field_paths_name_the_list_the_container_is_in() {
        let pod: Pod = serde_json::from_value(serde_json::json!({
            "spec": {
                "initContainers": [{"name": "setup"}],
                "containers": [{"name": "app"}],
                "ephemeralContainers": [{"name": "debugger"}],
            }
        }))
        .unwrap();
        assert_eq!(container_field_path(&pod, "app", false), "spec.containers{app}");
        assert_eq!(container_field_path(&pod, "setup", true), "spec.initContainers{setup}");
        assert_eq!(container_field_path(&pod, "debugger", false), "spec.ephemeralContainers{debugger}");
        assert_eq!(container_field_path(&pod, "gone", true), "spec.initContainers{gone}");
    }
}
