//! The probe handlers, kubelet's `prober.runProbe`: exec through CRI ExecSync, httpGet, tcpSocket and grpc
//! (grpc.health.v1), each giving an outcome and the output kubelet puts in its events.

use std::time::Duration;

use k8s_openapi::api::core::v1::{Container, HTTPHeader, Probe};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use tokio::net::TcpStream;

use crate::probes::http::{self, Url};
use crate::probes::state::Outcome;
use crate::pods::env;
use crate::pods::plan::go_duration;
use crate::runtime::Runtime;

/// What a probe runs against: the container instance and the pod IP its network handlers default to.
#[derive(Debug, Clone, Copy)]
pub struct Target<'a> {
    pub container: &'a Container,
    pub container_id: &'a str,
    pub pod_ip: &'a str,
}

/// A handler's outcome and output (the message of a failure, the body of a success).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeOutput {
    pub outcome: Outcome,
    pub output: String,
}

impl ProbeOutput {
    fn new(outcome: Outcome, output: impl Into<String>) -> Self {
        Self { outcome, output: output.into() }
    }
}

/// Runs the probe's handler once within `timeout`. A handler that cannot be run at all gives `Unknown` with the
/// error as output (kubelet's "probe errored").
pub async fn run(runtime: &Runtime, probe: &Probe, target: Target<'_>, timeout: Duration) -> ProbeOutput {
    if let Some(exec) = &probe.exec {
        let command = match static_command(exec.command.as_deref().unwrap_or_default(), target.container) {
            Ok(command) => command,
            Err(e) => return ProbeOutput::new(Outcome::Unknown, e),
        };
        return run_exec(runtime, target.container_id, &command, timeout).await;
    }
    if let Some(get) = &probe.http_get {
        let port = match resolve_port(&get.port, target.container) {
            Ok(p) => p,
            Err(e) => return ProbeOutput::new(Outcome::Unknown, e),
        };
        let url = Url {
            https: get.scheme.as_deref().is_some_and(|s| s.eq_ignore_ascii_case("HTTPS")),
            host: get.host.clone().filter(|h| !h.is_empty()).unwrap_or_else(|| target.pod_ip.to_owned()),
            port,
            path: http::normalize_path(get.path.as_deref().unwrap_or("")),
        };
        return run_http(&url, &headers(get.http_headers.as_deref()), timeout).await;
    }
    if let Some(tcp) = &probe.tcp_socket {
        let port = match resolve_port(&tcp.port, target.container) {
            Ok(p) => p,
            Err(e) => return ProbeOutput::new(Outcome::Unknown, e),
        };
        let host = tcp.host.clone().filter(|h| !h.is_empty()).unwrap_or_else(|| target.pod_ip.to_owned());
        return run_tcp(&host, port, timeout).await;
    }
    if let Some(grpc) = &probe.grpc {
        let Ok(port) = u16::try_from(grpc.port) else {
            return ProbeOutput::new(Outcome::Unknown, format!("invalid port number: {}", grpc.port));
        };
        return crate::probes::grpc::check(target.pod_ip, port, grpc.service.as_deref().unwrap_or(""), timeout).await;
    }
    ProbeOutput::new(Outcome::Unknown, "missing probe handler")
}

/// kubelet expands `$(VAR)` in an exec probe's command with the container's literal env values only (a variable
/// set from a source counts as empty, `ExpandContainerCommandOnlyStatic`), within one expansion budget.
pub fn static_command(command: &[String], container: &Container) -> Result<Vec<String>, String> {
    let envs: Vec<(String, String)> =
        container.env.iter().flatten().map(|e| (e.name.clone(), e.value.clone().unwrap_or_default())).collect();
    let mut budget = env::ExpansionBudget::default();
    env::expand_all(command, &envs, &mut budget, "the exec command").map_err(|e| e.to_string())
}

pub fn headers(list: Option<&[HTTPHeader]>) -> Vec<(String, String)> {
    list.unwrap_or_default().iter().map(|h| (h.name.clone(), h.value.clone())).collect()
}

/// kubelet's `ResolveContainerPort`: a number, or the name of one of the container's ports.
pub fn resolve_port(port: &IntOrString, container: &Container) -> Result<u16, String> {
    let number = match port {
        IntOrString::Int(n) => *n,
        IntOrString::String(name) => container
            .ports
            .iter()
            .flatten()
            .find(|p| p.name.as_deref() == Some(name.as_str()))
            .map(|p| p.container_port)
            .or_else(|| name.parse().ok())
            .ok_or_else(|| format!("couldn't find port: {name} in {}", container.name))?,
    };
    u16::try_from(number).ok().filter(|n| *n > 0).ok_or_else(|| format!("invalid port number: {number}"))
}

pub async fn run_exec(runtime: &Runtime, container_id: &str, command: &[String], timeout: Duration) -> ProbeOutput {
    match runtime.exec_sync(container_id, command, i64::try_from(timeout.as_secs()).unwrap_or(i64::MAX)).await {
        Ok(out) => {
            let mut text = out.stdout;
            text.extend_from_slice(&out.stderr);
            text.truncate(http::MAX_BODY);
            let text = String::from_utf8_lossy(&text).into_owned();
            if out.exit_code == 0 {
                ProbeOutput::new(Outcome::Success, text)
            } else {
                ProbeOutput::new(Outcome::Failure, text)
            }
        }
        // kubelet's ExecProbeTimeout: an exec that outlives its timeout fails the probe.
        Err(e) if e.is_deadline_exceeded() => {
            ProbeOutput::new(Outcome::Failure, format!("command {:?} timed out", command.join(" ")))
        }
        Err(e) => ProbeOutput::new(Outcome::Unknown, e.message()),
    }
}

/// kubelet's `DoHTTPProbe`: 2xx succeeds with the body as output, a redirect not followed is a warning, anything
/// else fails; a request that cannot be made (a refused header among them) fails with Go's error, a body that
/// cannot be read makes the probe error.
pub async fn run_http(url: &Url, headers: &[(String, String)], timeout: Duration) -> ProbeOutput {
    match http::get(url, headers, crate::probes::USER_AGENT, Some(timeout)).await {
        Err(e) => ProbeOutput::new(Outcome::Failure, e.to_string()),
        Ok(http::Response { body_error: Some(e), .. }) => ProbeOutput::new(Outcome::Unknown, e),
        Ok(r) if (200..300).contains(&r.status) => {
            ProbeOutput::new(Outcome::Success, String::from_utf8_lossy(&r.body).into_owned())
        }
        Ok(r) if (300..400).contains(&r.status) => ProbeOutput::new(
            Outcome::Warning,
            format!("Probe terminated redirects, Response body: {}", String::from_utf8_lossy(&r.body)),
        ),
        Ok(r) => ProbeOutput::new(Outcome::Failure, format!("HTTP probe failed with statuscode: {}", r.status)),
    }
}

/// kubelet's `DoTCPProbe`: success when a connection opens within the timeout.
pub async fn run_tcp(host: &str, port: u16, timeout: Duration) -> ProbeOutput {
    let addr = if host.contains(':') { format!("[{host}]:{port}") } else { format!("{host}:{port}") };
    match tokio::time::timeout(timeout, TcpStream::connect(&addr)).await {
        Ok(Ok(_)) => ProbeOutput::new(Outcome::Success, ""),
        Ok(Err(e)) => ProbeOutput::new(Outcome::Failure, format!("dial tcp {addr}: {}", http::go_dial_error(&e))),
        Err(_) => ProbeOutput::new(Outcome::Failure, format!("dial tcp {addr}: i/o timeout")),
    }
}

/// Go's rendering of a timeout in the gRPC handler's messages.
pub fn go_timeout(timeout: Duration) -> String {
    go_duration(timeout)
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{ContainerPort, EnvVar};

    fn container() -> Container {
        Container {
            name: "app".into(),
            ports: Some(vec![ContainerPort { name: Some("http".into()), container_port: 8080, ..Default::default() }]),
            env: Some(vec![EnvVar { name: "FILE".into(), value: Some("/tmp/ok".into()), ..Default::default() }]),
            ..Default::default()
        }
    }

    #[test]
    fn ports_by_number_or_container_port_name() {
        let c = container();
        assert_eq!(resolve_port(&IntOrString::Int(80), &c), Ok(80));
        assert_eq!(resolve_port(&IntOrString::String("http".into()), &c), Ok(8080));
        assert_eq!(
            resolve_port(&IntOrString::String("grpc".into()), &c),
            Err("couldn't find port: grpc in app".into())
        );
        assert!(resolve_port(&IntOrString::Int(0), &c).is_err());
    }

    #[test]
    fn exec_commands_expand_literal_env_only() {
        let cmd = vec!["cat".to_string(), "$(FILE)".into(), "$(OTHER)".into()];
        assert_eq!(static_command(&cmd, &container()), Ok(vec!["cat".into(), "/tmp/ok".into(), "$(OTHER)".into()]));
    }

    #[tokio::test]
    async fn tcp_success_and_refusal() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        assert_eq!(run_tcp("127.0.0.1", port, Duration::from_secs(1)).await.outcome, Outcome::Success);
        drop(l);
        let out = run_tcp("127.0.0.1", port, Duration::from_secs(1)).await;
        assert_eq!(out.outcome, Outcome::Failure);
        assert_eq!(out.output, format!("dial tcp 127.0.0.1:{port}: connect: connection refused"));
    }

    #[tokio::test]
    async fn http_status_classes() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                let mut buf = [0u8; 2048];
                let n = s.read(&mut buf).await.unwrap_or(0);
                let head = String::from_utf8_lossy(&buf[..n]).into_owned();
                let reply = if head.starts_with("GET /bad ") {
                    "HTTP/1.1 503 Unavailable\r\nContent-Length: 0\r\n\r\n"
                } else if head.starts_with("GET /away ") {
                    "HTTP/1.1 302 Found\r\nLocation: http://192.0.2.1/\r\nContent-Length: 4\r\n\r\ngone"
                } else {
                    "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
                };
                let _ = s.write_all(reply.as_bytes()).await;
            }
        });
        let url = |p: &str| Url { https: false, host: "127.0.0.1".into(), port, path: p.into() };
        let t = Duration::from_secs(2);
        assert_eq!(run_http(&url("/"), &[], t).await, ProbeOutput::new(Outcome::Success, "ok"));
        assert_eq!(
            run_http(&url("/bad"), &[], t).await,
            ProbeOutput::new(Outcome::Failure, "HTTP probe failed with statuscode: 503")
        );
        assert_eq!(
            run_http(&url("/away"), &[], t).await,
            ProbeOutput::new(Outcome::Warning, "Probe terminated redirects, Response body: gone")
        );
    }
}
