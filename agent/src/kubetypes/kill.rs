//! kubelet's `KillPodFunc` and `ActivePodsFunc`: how the node's own housekeeping (the eviction manager, graceful
//! node shutdown) stops a pod and learns which pods run, without reaching into the pod manager.
//!
//! The pod manager owns the receiving end: it terminates the pod through its worker (preStop hooks and grace
//! period included), then gives it the terminal status the request carries, and answers once the pod's containers
//! are gone.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use tokio::sync::{mpsc, oneshot, watch};

/// The status a pod the node stopped on its own ends with (kubelet's `PodStatusFunc` of `KillPodOptions`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TerminalStatus {
    /// `Evicted` (eviction), `Terminated` (node shutdown).
    pub reason: String,
    pub message: String,
    /// The `DisruptionTarget` condition's reason and message (`PodDisruptionConditions`, on in v1.28), if any.
    pub disruption: Option<(String, String)>,
}

/// One pod to stop.
#[derive(Debug)]
pub struct KillPodRequest {
    pub uid: String,
    /// Replaces the pod's `terminationGracePeriodSeconds` (kubelet's `PodTerminationGracePeriodSecondsOverride`).
    pub grace_period_override: Option<i64>,
    pub status: TerminalStatus,
    /// Answered once the pod's containers are gone and its terminal status is in the pod store.
    pub done: oneshot::Sender<()>,
}

/// The handle the node's housekeeping holds.
#[derive(Clone)]
pub struct PodKiller {
    requests: mpsc::UnboundedSender<KillPodRequest>,
    active: watch::Receiver<Vec<Arc<Pod>>>,
}

/// The pod manager's end: kill requests, and where it publishes the active pods.
pub struct PodKillerEnd {
    pub requests: mpsc::UnboundedReceiver<KillPodRequest>,
    pub active: watch::Sender<Vec<Arc<Pod>>>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum KillError {
    #[error("the pod manager is gone")]
    PodManagerGone,
    #[error("pod {uid} was not stopped within {timeout:?}")]
    Timeout { uid: String, timeout: Duration },
}

impl PodKiller {
    pub fn channel() -> (PodKiller, PodKillerEnd) {
        let (requests_tx, requests_rx) = mpsc::unbounded_channel();
        let (active_tx, active_rx) = watch::channel(Vec::new());
        (
            PodKiller { requests: requests_tx, active: active_rx },
            PodKillerEnd { requests: requests_rx, active: active_tx },
        )
    }

    /// kubelet's `GetActivePods`: admitted pods that are neither terminal nor done terminating.
    pub fn active_pods(&self) -> Vec<Arc<Pod>> {
        self.active.borrow().clone()
    }

    /// Stops the pod and waits until its containers are gone, at most `timeout` (kubelet's `killPodNow` waits for
    /// the grace period and a margin). A pod that is not running answers at once.
    pub async fn kill_pod(
        &self,
        uid: &str,
        grace_period_override: Option<i64>,
        status: TerminalStatus,
        timeout: Duration,
    ) -> Result<(), KillError> {
        let (done, wait) = oneshot::channel();
        let request = KillPodRequest { uid: uid.to_owned(), grace_period_override, status, done };
        self.requests.send(request).map_err(|_| KillError::PodManagerGone)?;
        match tokio::time::timeout(timeout, wait).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(KillError::PodManagerGone),
            Err(_) => Err(KillError::Timeout { uid: uid.to_owned(), timeout }),
        }
    }
}
