//! Lifecycle hooks, kubelet's `lifecycle.handlerRunner`: postStart and preStop handlers with exec (CRI ExecSync),
//! httpGet (host defaults to the pod IP; any response counts as done) and sleep, with kubelet's error messages.

use std::time::Duration;

use k8s_openapi::api::core::v1::{Container, LifecycleHandler, Pod};

use crate::kubetypes::events::{EventRecorder, EventType};
use crate::kubetypes::spec;
use crate::probes::handlers::{headers, resolve_port};
use crate::probes::http::{self, Url};
use crate::runtime::Runtime;

/// The User-Agent of kubelet's lifecycle HTTP hooks.
pub const USER_AGENT: &str = "kube-lifecycle/1.28";
/// The warning of an HTTPS hook retried over HTTP (pkg/kubelet/lifecycle/handlers.go).
pub const LIFECYCLE_HTTP_FALLBACK: &str = "LifecycleHTTPFallback";
/// Events of failed hooks (pkg/kubelet/events).
pub const FAILED_POST_START_HOOK: &str = "FailedPostStartHook";
pub const FAILED_PRE_STOP_HOOK: &str = "FailedPreStopHook";
/// The container's waiting reason after a failed postStart hook (`ErrPostStartHook`).
pub const REASON_POST_START_HOOK_ERROR: &str = "PostStartHookError";

/// Where a hook runs.
#[derive(Debug, Clone, Copy)]
pub struct HookTarget<'a> {
    pub pod: &'a Pod,
    pub container: &'a Container,
    pub container_id: &'a str,
    pub pod_ip: &'a str,
}

/// Go's `%v` of a string slice: `[sh -c exit 1]`.
fn go_slice(items: &[String]) -> String {
    format!("[{}]", items.join(" "))
}

/// The GET of an httpGet hook, kubelet's `runHTTPHandler`: an HTTPS hook whose server answers in plain HTTP is
/// retried over HTTP without its `Authorization` header; `Ok(Some(_))` is the message of the warning event a
/// successful retry gets. When the retry fails too, the error is the HTTPS request's, as in kubelet.
pub async fn http_hook(url: &Url, headers: &[(String, String)]) -> Result<Option<String>, http::GetError> {
    let Err(e) = http::get(url, headers, USER_AGENT, None).await else { return Ok(None) };
    if !(url.https && e.message == http::HTTP_RESPONSE_TO_HTTPS) {
        return Err(e);
    }
    tracing::info!(host = %url.host_port(), "HTTPS request to lifecycle hook got HTTP response, retrying with HTTP");
    let url = Url { https: false, ..url.clone() };
    let headers: Vec<(String, String)> =
        headers.iter().filter(|(k, _)| !k.eq_ignore_ascii_case("Authorization")).cloned().collect();
    match http::get(&url, &headers, USER_AGENT, None).await {
        Ok(_) => Ok(Some(format!(
            "request to HTTPS lifecycle hook {} got HTTP response, retry with HTTP succeeded",
            url.host_port()
        ))),
        Err(_) => Err(e),
    }
}

/// Runs a hook to its end (the caller bounds it in time). `Err` is kubelet's message for the failure.
pub async fn run(
    runtime: &Runtime,
    events: &EventRecorder,
    handler: &LifecycleHandler,
    target: HookTarget<'_>,
) -> Result<(), String> {
    let HookTarget { pod, container, container_id, pod_ip } = target;
    if let Some(exec) = &handler.exec {
        // kubelet runs a hook's command as written: no `$(VAR)` expansion (pkg/kubelet/lifecycle/handlers.go).
        let command = exec.command.clone().unwrap_or_default();
        let failure = |error: String, output: &str| {
            format!(
                "Exec lifecycle hook ({}) for Container {:?} in Pod {:?} failed - error: {error}, message: {output:?}",
                go_slice(exec.command.as_deref().unwrap_or_default()),
                container.name,
                spec::format_pod(pod)
            )
        };
        return match runtime.exec_sync(container_id, &command, 0).await {
            Ok(out) if out.exit_code == 0 => Ok(()),
            Ok(out) => {
                let mut output = out.stdout.clone();
                output.extend_from_slice(&out.stderr);
                let error = format!(
                    "command '{}' exited with {}: {}",
                    command.join(" "),
                    out.exit_code,
                    String::from_utf8_lossy(&out.stderr)
                );
                Err(failure(error, &String::from_utf8_lossy(&output)))
            }
            Err(e) => Err(failure(e.message(), "")),
        };
    }
    if let Some(get) = &handler.http_get {
        let path = get.path.clone().unwrap_or_default();
        let failure = |error: String| {
            format!(
                "HTTP lifecycle hook ({path}) for Container {:?} in Pod {:?} failed - error: {error}",
                container.name,
                spec::format_pod(pod)
            )
        };
        let port = resolve_port(&get.port, container).map_err(failure)?;
        let url = Url {
            https: get.scheme.as_deref().is_some_and(|s| s.eq_ignore_ascii_case("HTTPS")),
            host: get.host.clone().filter(|h| !h.is_empty()).unwrap_or_else(|| pod_ip.to_owned()),
            port,
            path: http::normalize_path(&path),
        };
        // kubelet's hook client (`insecureContainerLifecycleHTTPClient`) is the prober's: no certificate check, the
        // same redirect checker. A hook's request has no timeout of its own: the caller's bound (the grace period)
        // applies. Any response counts as done, and an error reading its body is ignored (`discardHTTPRespBody`).
        let hdrs = headers(get.http_headers.as_deref());
        return match http_hook(&url, &hdrs).await {
            Ok(None) => Ok(()),
            Ok(Some(fallback)) => {
                events.record(pod, None, EventType::Warning, LIFECYCLE_HTTP_FALLBACK, fallback);
                Ok(())
            }
            Err(e) => Err(failure(e.to_string())),
        };
    }
    if let Some(sleep) = &handler.sleep {
        tokio::time::sleep(Duration::from_secs(u64::try_from(sleep.seconds).unwrap_or(0))).await;
        return Ok(());
    }
    Err(format!(
        "Cannot run handler: unknown handler for Container {:?} in Pod {:?}",
        container.name,
        spec::format_pod(pod)
    ))
}

/// How much of the grace period is left after a preStop hook that took `elapsed`, never below kubelet's minimum
/// (`minimumGracePeriodInSeconds`): the container always gets a short window after SIGTERM.
pub fn grace_after_pre_stop(grace: i64, elapsed: Duration) -> i64 {
    let used = i64::try_from(elapsed.as_secs()).unwrap_or(i64::MAX);
    grace.saturating_sub(used).max(spec::MINIMUM_GRACE_PERIOD_SECONDS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pre_stop_time_comes_out_of_the_grace_period_down_to_two_seconds() {
        assert_eq!(grace_after_pre_stop(30, Duration::from_millis(10_900)), 20, "whole seconds, as kubelet counts");
        assert_eq!(grace_after_pre_stop(30, Duration::from_secs(29)), 2);
        assert_eq!(grace_after_pre_stop(5, Duration::from_secs(60)), 2);
        assert_eq!(grace_after_pre_stop(0, Duration::ZERO), 2);
    }

    /// A hook whose scheme says HTTPS against a plain HTTP server: retried over HTTP, without `Authorization`.
    #[tokio::test]
    async fn https_hooks_fall_back_to_http_as_kubelet_does() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                let mut buf = [0u8; 4096];
                let n = s.read(&mut buf).await.unwrap_or(0);
                let _ = tx.send(String::from_utf8_lossy(&buf[..n]).into_owned());
                let _ = s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n").await;
            }
        });
        let url = Url { https: true, host: "127.0.0.1".into(), port, path: "/hook".into() };
        let headers = vec![("Authorization".to_string(), "Bearer secret".to_string())];
        let fallback = http_hook(&url, &headers).await.unwrap();
        let want =
            format!("request to HTTPS lifecycle hook 127.0.0.1:{port} got HTTP response, retry with HTTP succeeded");
        assert_eq!(fallback, Some(want));
        let _client_hello = rx.recv().await.unwrap();
        let retry = rx.recv().await.unwrap();
        assert!(retry.starts_with("GET /hook HTTP/1.1\r\n"), "{retry}");
        assert!(retry.contains("User-Agent: kube-lifecycle/1.28") && !retry.contains("secret"), "{retry}");
    }

    #[test]
    fn slices_print_as_go_does() {
        assert_eq!(go_slice(&["sh".into(), "-c".into(), "exit 1".into()]), "[sh -c exit 1]");
    }
}
