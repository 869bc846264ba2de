//! `/exec`, `/attach`, `/portForward` and `/run`, as kubelet v1.28 serves them: the runtime's streaming server does the
//! work (CRI `Exec`, `Attach`, `PortForward` return its URL) and the upgraded connection (SPDY or WebSocket, whatever
//! the caller asks for) is proxied to it both ways (kubelet's `proxyStream` with the `UpgradeAwareHandler`).

use axum::body::Body;
use axum::extract::{Path, RawQuery, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use http_body_util::Empty;
use hyper_util::rt::TokioIo;

use crate::server::containers::{find_pod, query_pairs, runtime_id, ContainerServerState};
use crate::runtime::streaming::StreamOptions;

/// The streams of an exec or attach request (kubelet's `remotecommand.NewOptions`): `input`, `output`, `error` and
/// `tty` set to `1`; stderr is dropped with a TTY, and at least one stream is required.
pub fn stream_options(query: &[(String, String)]) -> Result<StreamOptions, String> {
    let on = |names: &[&str]| {
        query.iter().rev().find(|(k, _)| names.contains(&k.as_str())).is_some_and(|(_, v)| v == "1" || v == "true")
    };
    let tty = on(&["tty"]);
    let o = StreamOptions {
        stdin: on(&["input", "stdin"]),
        stdout: on(&["output", "stdout"]),
        stderr: on(&["error", "stderr"]) && !tty,
        tty,
    };
    if !o.stdin && !o.stdout && !o.stderr {
        return Err("you must specify at least 1 of stdin, stdout, stderr".into());
    }
    Ok(o)
}

/// The `command` parameters, in order.
pub fn command(query: &[(String, String)]) -> Vec<String> {
    query.iter().filter(|(k, _)| k == "command").map(|(_, v)| v.clone()).collect()
}

/// The `port` parameters of a port-forward request (required only over WebSocket, where they cannot come later).
pub fn ports(query: &[(String, String)]) -> Result<Vec<i32>, String> {
    query
        .iter()
        .filter(|(k, _)| k == "port")
        .map(|(_, v)| match v.parse::<u16>() {
            Ok(p) if p > 0 => Ok(i32::from(p)),
            _ => Err(format!("unable to parse {v:?} as a port")),
        })
        .collect()
}

fn text(status: StatusCode, body: impl Into<String>) -> Response {
    (status, [(header::CONTENT_TYPE, "text/plain; charset=utf-8")], body.into()).into_response()
}

/// The running container's runtime ID, as kubelet's `findContainer` looks among running containers.
fn running_container(
    s: &ContainerServerState,
    namespace: &str,
    pod: &str,
    uid: Option<&str>,
    container: &str,
) -> Result<String, (StatusCode, String)> {
    let Some((p, status)) = find_pod(&s.store, namespace, pod) else {
        return Err((StatusCode::NOT_FOUND, "pod does not exist".into()));
    };
    if uid.is_some_and(|u| p.metadata.uid.as_deref() != Some(u)) {
        return Err((StatusCode::NOT_FOUND, "pod not found".into()));
    }
    let status = status.or_else(|| p.status.clone()).unwrap_or_default();
    status
        .container_statuses
        .iter()
        .flatten()
        .chain(status.init_container_statuses.iter().flatten())
        .chain(status.ephemeral_container_statuses.iter().flatten())
        .find(|c| c.name == container && c.state.as_ref().is_some_and(|st| st.running.is_some()))
        .and_then(|c| c.container_id.as_deref())
        .map(|id| runtime_id(id).to_owned())
        .ok_or_else(|| (StatusCode::NOT_FOUND, format!("container not found ({container:?})")))
}

type ExecPath = Path<(String, String, String)>;
type ExecUidPath = Path<(String, String, String, String)>;

pub async fn exec(
    State(s): State<ContainerServerState>,
    Path((ns, pod, c)): ExecPath,
    q: RawQuery,
    req: Request,
) -> Response {
    exec_or_attach(s, ns, pod, None, c, q, req, true).await
}

pub async fn exec_uid(
    State(s): State<ContainerServerState>,
    Path((ns, pod, uid, c)): ExecUidPath,
    q: RawQuery,
    req: Request,
) -> Response {
    exec_or_attach(s, ns, pod, Some(uid), c, q, req, true).await
}

pub async fn attach(
    State(s): State<ContainerServerState>,
    Path((ns, pod, c)): ExecPath,
    q: RawQuery,
    req: Request,
) -> Response {
    exec_or_attach(s, ns, pod, None, c, q, req, false).await
}

pub async fn attach_uid(
    State(s): State<ContainerServerState>,
    Path((ns, pod, uid, c)): ExecUidPath,
    q: RawQuery,
    req: Request,
) -> Response {
    exec_or_attach(s, ns, pod, Some(uid), c, q, req, false).await
}

#[allow(clippy::too_many_arguments)]
async fn exec_or_attach(
    s: ContainerServerState,
    namespace: String,
    pod: String,
    uid: Option<String>,
    container: String,
    RawQuery(query): RawQuery,
    req: Request,
    is_exec: bool,
) -> Response {
    let query = query_pairs(query.as_deref());
    let opts = match stream_options(&query) {
        Ok(o) => o,
        Err(e) => return text(StatusCode::BAD_REQUEST, e),
    };
    let id = match running_container(&s, &namespace, &pod, uid.as_deref(), &container) {
        Ok(id) => id,
        Err((status, msg)) => return text(status, msg),
    };
    let span =
        tracing::debug_span!("stream", pod = %format!("{namespace}/{pod}"), container = %container, exec = is_exec);
    let _enter = span.enter();
    let url = if is_exec {
        s.runtime.exec_url(&id, &command(&query), opts).await
    } else {
        s.runtime.attach_url(&id, opts).await
    };
    match url {
        Ok(url) => proxy_stream(req, &url).await,
        Err(e) => text(StatusCode::INTERNAL_SERVER_ERROR, e.message()),
    }
}

pub async fn port_forward(
    State(s): State<ContainerServerState>,
    Path((namespace, pod)): Path<(String, String)>,
    q: RawQuery,
    req: Request,
) -> Response {
    port_forward_to(s, namespace, pod, None, q, req).await
}

pub async fn port_forward_uid(
    State(s): State<ContainerServerState>,
    Path((namespace, pod, uid)): Path<(String, String, String)>,
    q: RawQuery,
    req: Request,
) -> Response {
    port_forward_to(s, namespace, pod, Some(uid), q, req).await
}

async fn port_forward_to(
    s: ContainerServerState,
    namespace: String,
    pod: String,
    uid: Option<String>,
    RawQuery(query): RawQuery,
    req: Request,
) -> Response {
    let ports = match ports(&query_pairs(query.as_deref())) {
        Ok(p) => p,
        Err(e) => return text(StatusCode::BAD_REQUEST, e),
    };
    let Some((p, _)) = find_pod(&s.store, &namespace, &pod) else {
        return text(StatusCode::NOT_FOUND, "pod does not exist");
    };
    let pod_uid = p.metadata.uid.clone().unwrap_or_default();
    if uid.is_some_and(|u| u != pod_uid) {
        return text(StatusCode::NOT_FOUND, "pod not found");
    }
    let sandbox = match s.runtime.list_pod_sandboxes(Some(&pod_uid)).await {
        Ok(list) => list.into_iter().find(|sb| sb.ready),
        Err(e) => return text(StatusCode::INTERNAL_SERVER_ERROR, e.message()),
    };
    let Some(sandbox) = sandbox else {
        return text(StatusCode::NOT_FOUND, format!("failed to find sandbox for pod {pod:?}"));
    };
    match s.runtime.port_forward_url(&sandbox.id, &ports).await {
        Ok(url) => proxy_stream(req, &url).await,
        Err(e) => text(StatusCode::INTERNAL_SERVER_ERROR, e.message()),
    }
}

/// `POST /run/{namespace}/{pod}/{container}?cmd=...`: runs the space-separated `cmd` and answers its output
/// (stdout then stderr), as kubelet's `getRun`.
pub async fn run(
    State(s): State<ContainerServerState>,
    Path((namespace, pod, container)): ExecPath,
    RawQuery(query): RawQuery,
) -> Response {
    run_in(s, namespace, pod, None, container, query).await
}

pub async fn run_uid(
    State(s): State<ContainerServerState>,
    Path((namespace, pod, uid, container)): ExecUidPath,
    RawQuery(query): RawQuery,
) -> Response {
    run_in(s, namespace, pod, Some(uid), container, query).await
}

async fn run_in(
    s: ContainerServerState,
    namespace: String,
    pod: String,
    uid: Option<String>,
    container: String,
    query: Option<String>,
) -> Response {
    let query = query_pairs(query.as_deref());
    let cmd: Vec<String> = query
        .iter()
        .rev()
        .find(|(k, _)| k == "cmd")
        .map(|(_, v)| v.split(' ').map(str::to_owned).collect())
        .unwrap_or_else(|| vec![String::new()]);
    let id = match running_container(&s, &namespace, &pod, uid.as_deref(), &container) {
        Ok(id) => id,
        Err((status, msg)) => return text(status, msg),
    };
    match s.runtime.exec_sync(&id, &cmd, 0).await {
        Ok(out) => {
            let mut data = out.stdout;
            data.extend_from_slice(&out.stderr);
            ([(header::CONTENT_TYPE, "application/json")], data).into_response()
        }
        Err(e) => text(StatusCode::INTERNAL_SERVER_ERROR, e.message()),
    }
}

/// `host:port` and the path of an `http://` streaming URL.
pub fn split_url(url: &str) -> Result<(String, String), String> {
    let rest = url.strip_prefix("http://").ok_or_else(|| format!("unsupported streaming URL {url:?}"))?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    if authority.is_empty() {
        return Err(format!("streaming URL {url:?} has no host"));
    }
    Ok((authority.to_owned(), path.to_owned()))
}

/// Headers a proxy does not pass on: the backend gets its own `Host`.
fn forwarded(name: &header::HeaderName) -> bool {
    name != header::HOST
}

/// kubelet's `proxyStream`: forwards the upgrade request to the streaming server and, on `101 Switching Protocols`,
/// answers the caller with the server's response and splices the two connections; any other answer is passed back
/// as it is.
pub async fn proxy_stream(mut req: Request, url: &str) -> Response {
    let is_upgrade = req
        .headers()
        .get(header::CONNECTION)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case("upgrade")))
        && req.headers().contains_key(header::UPGRADE);
    if !is_upgrade {
        return text(StatusCode::BAD_REQUEST, "Upgrade request required");
    }
    let (authority, path) = match split_url(url) {
        Ok(v) => v,
        Err(e) => return text(StatusCode::INTERNAL_SERVER_ERROR, e),
    };
    let backend = match tokio::net::TcpStream::connect(&authority).await {
        Ok(c) => c,
        Err(e) => return text(StatusCode::BAD_GATEWAY, format!("error dialing backend: {e}")),
    };
    let _ = backend.set_nodelay(true);
    let (mut sender, conn) = match hyper::client::conn::http1::handshake(TokioIo::new(backend)).await {
        Ok(v) => v,
        Err(e) => return text(StatusCode::BAD_GATEWAY, format!("error dialing backend: {e}")),
    };
    tokio::spawn(async move {
        if let Err(e) = conn.with_upgrades().await {
            tracing::debug!(error = %e, "streaming server connection ended with an error");
        }
    });
    let mut upstream = hyper::Request::builder().method(req.method().clone()).uri(path.as_str());
    for (name, value) in req.headers().iter().filter(|(n, _)| forwarded(n)) {
        upstream = upstream.header(name, value);
    }
    let Ok(host) = HeaderValue::from_str(&authority) else {
        return text(StatusCode::INTERNAL_SERVER_ERROR, "invalid streaming server address");
    };
    let upstream = match upstream.header(header::HOST, host).body(Empty::<axum::body::Bytes>::new()) {
        Ok(r) => r,
        Err(e) => return text(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    };
    let mut answer = match sender.send_request(upstream).await {
        Ok(r) => r,
        Err(e) => return text(StatusCode::BAD_GATEWAY, format!("error proxying to the streaming server: {e}")),
    };
    if answer.status() != StatusCode::SWITCHING_PROTOCOLS {
        let (parts, body) = answer.into_parts();
        return Response::from_parts(parts, Body::new(body));
    }
    let backend_upgrade = hyper::upgrade::on(&mut answer);
    let client_upgrade = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        let (client, backend) = match tokio::try_join!(client_upgrade, backend_upgrade) {
            Ok(v) => v,
            Err(e) => {
                tracing::debug!(error = %e, "upgrade of the streaming connection failed");
                return;
            }
        };
        let mut client = TokioIo::new(client);
        let mut backend = TokioIo::new(backend);
        if let Err(e) = tokio::io::copy_bidirectional(&mut client, &mut backend).await {
            tracing::debug!(error = %e, "streaming connection ended with an error");
        }
    });
    let mut response = Response::builder().status(StatusCode::SWITCHING_PROTOCOLS);
    for (name, value) in answer.headers() {
        response = response.header(name, value);
    }
    response.body(Body::empty()).unwrap_or_else(|e| text(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn stream_options_follow_remotecommand() {
        let o = stream_options(&q(&[("input", "1"), ("output", "1"), ("error", "1")])).unwrap();
        assert_eq!(o, StreamOptions { stdin: true, stdout: true, stderr: true, tty: false });
        let o = stream_options(&q(&[("output", "1"), ("error", "1"), ("tty", "1")])).unwrap();
        assert_eq!(o, StreamOptions { stdin: false, stdout: true, stderr: false, tty: true }, "no stderr with a TTY");
        assert_eq!(
            stream_options(&q(&[("command", "ls")])),
            Err("you must specify at least 1 of stdin, stdout, stderr".into())
        );
        assert_eq!(command(&q(&[("command", "sh"), ("output", "1"), ("command", "-c")])), vec!["sh", "-c"]);
    }

    #[test]
    fn ports_and_urls_are_checked() {
        assert_eq!(ports(&q(&[("port", "80"), ("port", "8080")])), Ok(vec![80, 8080]));
        assert!(ports(&q(&[("port", "0")])).is_err());
        assert!(ports(&q(&[("port", "70000")])).is_err());
        assert_eq!(split_url("http://127.0.0.1:35111/exec/AbC"), Ok(("127.0.0.1:35111".into(), "/exec/AbC".into())));
        assert!(split_url("https://127.0.0.1:1/x").is_err());
        assert!(split_url("http:///x").is_err());
    }
}
