//! The steps around StartContainer and StopContainer, as kubelet's `kuberuntime` runs them: the postStart hook
//! after a start, the preStop hook before a stop (the handlers themselves are in `hooks`).

use std::time::Instant;

use k8s_openapi::api::core::v1::{Container, Pod};

use crate::kuberuntime::hooks::{self, HookTarget};
use crate::kuberuntime::KubeRuntime;
use crate::kubetypes::events::EventType;
use crate::pods::plan::Waiting;

/// kubelet's step after StartContainer: the postStart hook runs to its end; if it fails the container is killed
/// (`FailedPostStartHook`) and its start counts as failed with `PostStartHookError`.
pub async fn post_start(
    kr: &KubeRuntime,
    pod: &Pod,
    container: &Container,
    init: bool,
    container_id: &str,
    pod_ip: &str,
) -> Result<(), Waiting> {
    let Some(handler) = container.lifecycle.as_ref().and_then(|l| l.post_start.as_ref()) else { return Ok(()) };
    let target = HookTarget { pod, container, container_id, pod_ip };
    let Err(message) = hooks::run(&kr.runtime, &kr.events, handler, target).await else { return Ok(()) };
    tracing::warn!(%message, "postStart hook failed");
    let at = Some((container.name.as_str(), init));
    // kubelet keeps the hook's output out of the event, which anyone reading events may see.
    kr.events.record(pod, at, EventType::Warning, hooks::FAILED_POST_START_HOOK, "PostStartHook failed".into());
    kr.kill_container(pod, container, init, container_id, pod_ip, hooks::FAILED_POST_START_HOOK.into(), None).await;
    Err(Waiting { reason: hooks::REASON_POST_START_HOOK_ERROR.into(), message })
}

/// Runs the container's preStop hook for at most `grace` seconds and returns the grace period left for
/// StopContainer (kubelet's `executePreStopHook`).
pub async fn pre_stop(
    kr: &KubeRuntime,
    pod: &Pod,
    container: &Container,
    init: bool,
    container_id: &str,
    pod_ip: &str,
    grace: i64,
) -> i64 {
    let Some(handler) = container.lifecycle.as_ref().and_then(|l| l.pre_stop.as_ref()) else { return grace };
    if grace <= 0 {
        return grace;
    }
    let began = Instant::now();
    let target = HookTarget { pod, container, container_id, pod_ip };
    let limit = std::time::Duration::from_secs(u64::try_from(grace).unwrap_or(0));
    match tokio::time::timeout(limit, hooks::run(&kr.runtime, &kr.events, handler, target)).await {
        Ok(Ok(())) => {}
        Ok(Err(message)) => {
            tracing::warn!(%message, "preStop hook failed");
            let at = Some((container.name.as_str(), init));
            kr.events.record(pod, at, EventType::Warning, hooks::FAILED_PRE_STOP_HOOK, "PreStopHook failed".into());
        }
        Err(_) => tracing::info!(grace_seconds = grace, "preStop hook still running at the end of the grace period"),
    }
    hooks::grace_after_pre_stop(grace, began.elapsed())
}
