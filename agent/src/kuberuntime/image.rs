//! kubelet's image puller: the pull policy, serialized pulls, and the image pull back-off on failure.

use std::time::{Instant, SystemTime};

use k8s_openapi::api::core::v1::{Container, Pod};

use crate::kuberuntime::KubeRuntime;
use crate::pods::events::{self as ev, EventType};
use crate::pods::plan::{self, BackoffState, Waiting};
use crate::pods::spec::{self, PullPolicy};
use crate::runtime::SandboxSpec;

impl KubeRuntime {
    /// Makes the image present per the container's pull policy; returns the image reference to create from.
    pub(super) async fn ensure_image(
        &self,
        pod: &Pod,
        container: &Container,
        init: bool,
        sandbox: &SandboxSpec,
        backoff: &mut BackoffState,
    ) -> Result<String, Waiting> {
        let image = spec::image_of(container);
        let rt = &self.runtime;
        let policy = spec::pull_policy(container);
        let at = Some((container.name.as_str(), init));
        if policy != PullPolicy::Always {
            match rt.image_ref(image).await {
                Ok(Some(id)) => {
                    let message = format!("Container image {image:?} already present on machine");
                    self.events.record(pod, at, EventType::Normal, ev::PULLED_IMAGE, message);
                    return Ok(id);
                }
                Ok(None) if policy == PullPolicy::Never => {
                    let message = format!("Container image {image:?} is not present with pull policy of Never");
                    let reason = plan::REASON_ERR_IMAGE_NEVER_PULL;
                    self.events.record(pod, at, EventType::Warning, reason, message.clone());
                    return Err(Waiting { reason: reason.into(), message });
                }
                Ok(None) => {}
                Err(e) => tracing::warn!(image, error = %e, "image status failed; pulling"),
            }
        }
        self.events.record(pod, at, EventType::Normal, ev::PULLING_IMAGE, format!("Pulling image {image:?}"));
        let started = Instant::now();
        let result = match &self.image_pull_lock {
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
                self.events.record(pod, at, EventType::Normal, ev::PULLED_IMAGE, message);
                Ok(image_ref)
            }
            Err(e) => {
                backoff.image_pull.next(&plan::image_backoff_key(pod, image), SystemTime::now());
                let message = format!("Failed to pull image {image:?}: {}", e.message());
                self.events.record(pod, at, EventType::Warning, ev::FAILED_TO_PULL_IMAGE, message);
                let message = format!("Error: {}", plan::REASON_ERR_IMAGE_PULL);
                self.events.record(pod, at, EventType::Warning, ev::FAILED_TO_PULL_IMAGE, message);
                Err(Waiting { reason: plan::REASON_ERR_IMAGE_PULL.into(), message: e.message() })
            }
        }
    }
}
