//! The kubelet server's container endpoints: `/containerLogs`, and the streaming ones (`/exec`, `/attach`,
//! `/portForward`) and `/run`.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, RawQuery, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use k8s_openapi::api::core::v1::{ContainerStatus, Pod, PodStatus};

use crate::server::logs::{self, ContainerState, LogOptions};
use crate::pods::store::PodStore;
use crate::runtime::{ContainerRunState, Runtime};

#[derive(Clone)]
pub struct ContainerServerState {
    pub store: PodStore,
    pub runtime: Runtime,
}

/// The query as (key, value) pairs, percent-decoded; repeated keys (`command`) keep their order.
pub fn query_pairs(raw: Option<&str>) -> Vec<(String, String)> {
    let Some(raw) = raw else { return Vec::new() };
    raw.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect()
}

fn percent_decode(s: &str) -> String {
    let hex = |b: u8| (b as char).to_digit(16).map(|d| d as u8);
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => match (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                (Some(h), Some(l)) => {
                    out.push(h << 4 | l);
                    i += 2;
                }
                _ => out.push(b'%'),
            },
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The pod the API server names, as kubelet's `GetPodByName` finds it (a static pod under its mirror's name).
pub fn find_pod(store: &PodStore, namespace: &str, name: &str) -> Option<(Arc<Pod>, Option<PodStatus>)> {
    store
        .list()
        .into_iter()
        .filter(|e| {
            e.pod.metadata.namespace.as_deref() == Some(namespace) && e.pod.metadata.name.as_deref() == Some(name)
        })
        .map(|e| (e.pod, e.status))
        .next()
}

/// Whether the pod's spec has a container of that name (app, init or ephemeral).
pub fn has_container(pod: &Pod, name: &str) -> bool {
    let Some(spec) = pod.spec.as_ref() else { return false };
    spec.containers.iter().any(|c| c.name == name)
        || spec.init_containers.iter().flatten().any(|c| c.name == name)
        || spec.ephemeral_containers.iter().flatten().any(|c| c.name == name)
}

fn container_status<'a>(status: &'a PodStatus, name: &str) -> Option<&'a ContainerStatus> {
    status
        .container_statuses
        .iter()
        .flatten()
        .chain(status.init_container_statuses.iter().flatten())
        .chain(status.ephemeral_container_statuses.iter().flatten())
        .find(|c| c.name == name)
}

/// The runtime's container ID inside a status's `containerd://<id>`.
pub fn runtime_id(container_id: &str) -> &str {
    container_id.split_once("://").map(|(_, id)| id).unwrap_or(container_id)
}

/// kubelet's `validateContainerLogStatus`: the container whose logs to read, or why there are none.
pub fn log_container_id(pod_name: &str, status: &PodStatus, container: &str, previous: bool) -> Result<String, String> {
    let Some(cs) = container_status(status, container) else {
        return Err(format!("container {container:?} in pod {pod_name:?} is not available"));
    };
    let state = cs.state.clone().unwrap_or_default();
    let last = cs.last_state.as_ref().and_then(|s| s.terminated.as_ref());
    let last_id = last.and_then(|t| t.container_id.clone()).filter(|id| !id.is_empty());
    let terminated_err = || format!("container {container:?} in pod {pod_name:?} is terminated");
    if previous {
        return last_id
            .ok_or_else(|| format!("previous terminated container {container:?} in pod {pod_name:?} not found"));
    }
    if state.running.is_some() {
        return cs.container_id.clone().filter(|id| !id.is_empty()).ok_or_else(terminated_err);
    }
    if let Some(t) = &state.terminated {
        return match t.container_id.clone().filter(|id| !id.is_empty()) {
            Some(id) => Ok(id),
            None => last_id.ok_or_else(terminated_err),
        };
    }
    if last.is_some() {
        return last_id.ok_or_else(terminated_err);
    }
    if let Some(w) = &state.waiting {
        let reason = w.reason.clone().unwrap_or_default();
        return Err(match reason.as_str() {
            "ErrImagePull" => {
                format!("container {container:?} in pod {pod_name:?} is waiting to start: image can't be pulled")
            }
            "ImagePullBackOff" => format!(
                "container {container:?} in pod {pod_name:?} is waiting to start: trying and failing to pull image"
            ),
            _ => format!("container {container:?} in pod {pod_name:?} is waiting to start: {reason}"),
        });
    }
    Err(format!("container {container:?} in pod {pod_name:?} is waiting to start - no logs yet"))
}

fn text(status: StatusCode, body: impl Into<String>) -> Response {
    (status, [(header::CONTENT_TYPE, "text/plain; charset=utf-8")], body.into()).into_response()
}

struct CriContainer {
    runtime: Runtime,
    id: String,
}

impl ContainerState for CriContainer {
    fn running(&self) -> futures::future::BoxFuture<'_, bool> {
        Box::pin(async move {
            matches!(self.runtime.container_log_path(&self.id).await, Ok((_, ContainerRunState::Running)))
        })
    }
}

/// `GET /containerLogs/{namespace}/{pod}/{container}` (kubelet's `getContainerLogs`).
pub async fn container_logs(
    State(s): State<ContainerServerState>,
    Path((namespace, pod_name, container)): Path<(String, String, String)>,
    RawQuery(query): RawQuery,
) -> Response {
    let opts = match logs::log_options(&query_pairs(query.as_deref()), jiff::Timestamp::now()) {
        Ok(o) => o,
        Err(e) => return text(StatusCode::from_u16(e.status).unwrap_or(StatusCode::BAD_REQUEST), e.message),
    };
    let Some((pod, status)) = find_pod(&s.store, &namespace, &pod_name) else {
        return text(StatusCode::NOT_FOUND, format!("pod {pod_name:?} does not exist"));
    };
    if !has_container(&pod, &container) {
        return text(StatusCode::NOT_FOUND, format!("container {container:?} not found in pod {pod_name:?}"));
    }
    // The status the agent computed; the API's copy right after a restart, before the first sync.
    let status = status.or_else(|| pod.status.clone()).unwrap_or_default();
    let id = match log_container_id(&pod_name, &status, &container, opts.previous) {
        Ok(id) => runtime_id(&id).to_owned(),
        Err(e) => return text(StatusCode::BAD_REQUEST, e),
    };
    let _span = tracing::debug_span!("containerLogs", pod = %format!("{namespace}/{pod_name}"), container = %container);
    stream_logs(s.runtime.clone(), id, opts).await
}

async fn stream_logs(runtime: Runtime, id: String, opts: LogOptions) -> Response {
    let path = match runtime.container_log_path(&id).await {
        Ok((p, _)) if !p.is_empty() => std::path::PathBuf::from(p),
        Ok(_) => return text(StatusCode::BAD_REQUEST, format!("container {id:?} has no log file")),
        Err(e) => return text(StatusCode::BAD_REQUEST, e.message()),
    };
    if let Err(e) = tokio::fs::metadata(&path).await {
        return text(
            StatusCode::BAD_REQUEST,
            format!("failed to try resolving symlinks in path {:?}: {e}", path.display()),
        );
    }
    let (tx, rx) = tokio::sync::mpsc::channel(8);
    let state = Box::new(CriContainer { runtime, id });
    tokio::spawn(async move {
        if let Err(e) = logs::read_logs(path.clone(), opts, state, tx.clone()).await {
            tracing::warn!(path = %path.display(), error = %e, "reading container log failed");
            let _ = tx.send(Err(e)).await;
        }
    });
    let body = Body::from_stream(tokio_stream::wrappers::ReceiverStream::new(rx));
    ([(header::CONTENT_TYPE, "text/plain")], body).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{
        ContainerState as State, ContainerStateRunning, ContainerStateTerminated, ContainerStateWaiting,
    };

    fn status(state: State, last: Option<State>, id: &str) -> PodStatus {
        PodStatus {
            container_statuses: Some(vec![ContainerStatus {
                name: "app".into(),
                state: Some(state),
                last_state: last,
                container_id: (!id.is_empty()).then(|| id.to_owned()),
                ..Default::default()
            }]),
            ..Default::default()
        }
    }

    fn terminated(id: &str) -> State {
        State {
            terminated: Some(ContainerStateTerminated { container_id: Some(id.into()), ..Default::default() }),
            ..Default::default()
        }
    }

    #[test]
    fn the_container_to_read_follows_kubelets_rules() {
        let running = State { running: Some(ContainerStateRunning::default()), ..Default::default() };
        let s = status(running.clone(), Some(terminated("containerd://old")), "containerd://new");
        assert_eq!(log_container_id("p", &s, "app", false), Ok("containerd://new".into()));
        assert_eq!(log_container_id("p", &s, "app", true), Ok("containerd://old".into()));
        let fresh = status(running, None, "containerd://new");
        assert_eq!(
            log_container_id("p", &fresh, "app", true),
            Err(r#"previous terminated container "app" in pod "p" not found"#.into())
        );
        let waiting = |reason: &str| State {
            waiting: Some(ContainerStateWaiting { reason: Some(reason.into()), ..Default::default() }),
            ..Default::default()
        };
        // Crash-looping: the last run's logs.
        let crash = status(waiting("CrashLoopBackOff"), Some(terminated("containerd://old")), "");
        assert_eq!(log_container_id("p", &crash, "app", false), Ok("containerd://old".into()));
        assert_eq!(
            log_container_id("p", &status(waiting("ContainerCreating"), None, ""), "app", false),
            Err(r#"container "app" in pod "p" is waiting to start: ContainerCreating"#.into())
        );
        assert_eq!(
            log_container_id("p", &status(waiting("ErrImagePull"), None, ""), "app", false),
            Err(r#"container "app" in pod "p" is waiting to start: image can't be pulled"#.into())
        );
        assert_eq!(
            log_container_id("p", &PodStatus::default(), "app", false),
            Err(r#"container "app" in pod "p" is not available"#.into())
        );
        assert_eq!(runtime_id("containerd://abc"), "abc");
    }

    #[test]
    fn queries_decode_repeated_and_escaped_values() {
        let q = query_pairs(Some("command=sh&command=-c&command=echo%20hi%3B+exit+3&stdout=1"));
        assert_eq!(
            q,
            vec![
                ("command".into(), "sh".into()),
                ("command".into(), "-c".into()),
                ("command".into(), "echo hi; exit 3".into()),
                ("stdout".into(), "1".into()),
            ]
        );
        assert_eq!(query_pairs(Some("a=%zz&b")), vec![("a".into(), "%zz".into()), ("b".into(), String::new())]);
        assert!(query_pairs(None).is_empty());
    }
}
