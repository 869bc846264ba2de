//! A pod's own HTTP server against the agent's httpGet probes and hooks: a chunked body announcing a chunk of
//! 2^64-1 bytes (the chunk bomb), and CR/LF in a probe's header or path meant to smuggle a header or a request.
//! The pod-side server is busybox `nc -ll -e`: it logs every line it receives on stderr (`req: …`), so the
//! container's log is what reached the server, and answers with the pod's `RESPONSE` (printf escapes).

use std::time::{Duration, Instant};

use anyhow::{ensure, Result};
use rkubelet_tests::agent::{condition, container_log, container_status, running, wait_log, Agent};
use rkubelet_tests::containerd::Containerd;
use rkubelet_tests::images::{ensure_images, BUSYBOX};
use rkubelet_tests::skip_unless_root;

/// A chunked 200 whose one chunk is 2^64-1 bytes long; the connection ends a second later.
pub const CHUNK_BOMB: &str = r"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nffffffffffffffff\r\n";
const OK: &str = r"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok";

pub fn setup(name: &str) -> Result<(Containerd, Agent)> {
    ensure_images()?;
    let containerd = Containerd::start(name)?;
    let agent = Agent::start(&containerd)?;
    Ok((containerd, agent))
}

/// A container `name` serving `response` on :8080 to every connection, logging what it receives; `extra` is more
/// of the container's YAML (probes), indented as its fields.
pub fn server_container(name: &str, response: &str, extra: &str) -> String {
    format!(
        r#"  - name: {name}
    image: {BUSYBOX}
    env:
    - name: RESPONSE
      value: '{response}'
    command:
    - sh
    - -c
    - |
      cat > /tmp/handler <<'EOF'
      #!/bin/sh
      CR=$(printf '\r')
      while IFS= read -r line; do
        echo "req: $line" >&2
        case "$line" in "$CR"|"") break;; esac
      done
      printf "$RESPONSE"
      timeout 1 cat | sed 's/^/req: /' >&2
      echo "req-end" >&2
      EOF
      chmod +x /tmp/handler
      exec nc -ll -p 8080 -e /tmp/handler
{extra}"#
    )
}

/// Polls the agent's log until `needle` appears `count` times.
pub fn wait_agent_log(agent: &Agent, needle: &str, count: usize, timeout: Duration) -> Result<String> {
    let deadline = Instant::now() + timeout;
    loop {
        let log = agent.log();
        let seen = log.matches(needle).count();
        if seen >= count {
            return Ok(log);
        }
        ensure!(
            Instant::now() < deadline,
            "{needle:?} {seen} times in the agent's log within {timeout:?}, want {count}:\n{}",
            rkubelet_tests::agent::tail(&log, 40)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The chunk bomb as a preStop httpGet hook: the pod is still deleted within its grace period and the agent
/// stays up. kubelet's hook only needs a response head: the body is discarded and an error reading it ignored
/// (`discardHTTPRespBody`, pkg/kubelet/lifecycle/handlers.go), so the hook counts as done, without a
/// `FailedPreStopHook` event. Before: the agent's own chunked parser overflowed on the size and the pod worker
/// died with the panic; the pod stayed Terminating with its container running.
#[test]
#[cfg_attr(not_root, ignore = "needs root (containerd, mounts, network namespaces)")]
fn a_chunk_bomb_pre_stop_hook_does_not_stop_the_deletion() -> Result<()> {
    skip_unless_root!(Ok(()));
    let (_containerd, mut agent) = setup("adv-http-hook")?;
    let server = format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: bomb\nspec:\n  containers:\n{}",
        server_container("server", CHUNK_BOMB, "")
    );
    agent.write_manifest("bomb.yaml", &server)?;
    let server = agent.wait_pod("bomb", Duration::from_secs(60), |p| running(p, "server"))?;
    let server_ip = server["status"]["podIP"].as_str().unwrap_or_default().to_owned();
    let victim = victim_manifest(&format!(
        "    lifecycle:\n      preStop:\n        httpGet: {{host: \"{server_ip}\", port: 8080, path: /pre-stop-bomb}}\n"
    ));
    agent.write_manifest("victim.yaml", &victim)?;
    agent.wait_pod("victim", Duration::from_secs(60), |p| running(p, "app"))?;

    let began = Instant::now();
    agent.remove_manifest("victim.yaml")?;
    let gone = agent.wait_pod_gone("victim", Duration::from_secs(5 + 5));
    let took = began.elapsed();
    println!("deleting the pod with a chunk-bomb preStop hook took {took:?}");
    wait_log(&agent, &server, "server", "req: GET /pre-stop-bomb HTTP/1.1", Duration::from_secs(5))?;
    gone?;
    ensure!(agent.is_running(), "the agent died:\n{}", rkubelet_tests::agent::tail(&agent.log(), 40));
    let log = agent.log();
    ensure!(!log.contains("panicked"), "{}", rkubelet_tests::agent::tail(&log, 40));
    ensure!(
        !log.contains("FailedPreStopHook"),
        "kubelet ignores the hook's body: {}",
        rkubelet_tests::agent::tail(&log, 40)
    );
    Ok(())
}

/// The chunk bomb as readiness and liveness httpGet probes: every run errors (kubelet's `ReadAtMost` fails on the
/// body), the probe workers keep probing (the `Unhealthy` "probe errored" events repeat), the container stays not
/// ready and is not restarted (an errored probe's result is thrown away), and the agent stays up. Before: the
/// first probe's parse panicked its worker; no probe ran again.
#[test]
#[cfg_attr(not_root, ignore = "needs root (containerd, mounts, network namespaces)")]
fn chunk_bomb_probes_keep_probing() -> Result<()> {
    skip_unless_root!(Ok(()));
    let (_containerd, mut agent) = setup("adv-http-probe")?;
    let probes = "    readinessProbe:\n      httpGet: {port: 8080, path: /ready}\n      periodSeconds: 1\n      \
                  timeoutSeconds: 3\n    livenessProbe:\n      httpGet: {port: 8080, path: /live}\n      \
                  periodSeconds: 1\n      timeoutSeconds: 3\n";
    let yaml = format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: bombprobe\nspec:\n  terminationGracePeriodSeconds: 1\n  \
         containers:\n{}",
        server_container("server", CHUNK_BOMB, probes)
    );
    agent.write_manifest("bombprobe.yaml", &yaml)?;
    let pod = agent.wait_pod("bombprobe", Duration::from_secs(60), |p| running(p, "server"))?;
    // Go's chunked reader and hyper's both take the 16-digit size and then meet the end of the stream.
    wait_agent_log(&agent, "Readiness probe errored: unexpected EOF", 4, Duration::from_secs(30))?;
    wait_agent_log(&agent, "Liveness probe errored: unexpected EOF", 4, Duration::from_secs(30))?;
    let log = wait_log(&agent, &pod, "server", "req: GET /live HTTP/1.1", Duration::from_secs(5))?;
    ensure!(log.contains("req: GET /ready HTTP/1.1"), "{log}");
    let pod = agent.pod("bombprobe")?.unwrap_or_default();
    ensure!(condition(&pod, "Ready")["status"] == "False", "{pod:#}");
    ensure!(container_status(&pod, "server")["restartCount"] == 0, "an errored probe restarts nothing: {pod:#}");
    ensure!(agent.is_running(), "the agent died");
    ensure!(!agent.log().contains("panicked"), "{}", rkubelet_tests::agent::tail(&agent.log(), 40));
    Ok(())
}

/// CR/LF in a probe's header value and in its path. The header is refused before anything is sent, as Go's
/// transport does (`net/http: invalid header field value for "X-Evil"`): the probe fails with that error and the
/// server sees no request for it. The path goes as Go's `url.URL` escapes it (`%0D%0A`), as one request target.
/// In neither case does the server ever receive the smuggled header or a second request. Before: both were
/// written raw, and the server received `X-Smuggled` lines.
#[test]
#[cfg_attr(not_root, ignore = "needs root (containerd, mounts, network namespaces)")]
fn crlf_in_probe_headers_and_paths_smuggles_nothing() -> Result<()> {
    skip_unless_root!(Ok(()));
    let (_containerd, agent) = setup("adv-http-crlf")?;
    let header_probe = "    readinessProbe:\n      httpGet:\n        port: 8080\n        path: /by-header\n        \
                        httpHeaders:\n        - name: X-Evil\n          value: \"a\\r\\nX-Smuggled: header\"\n      \
                        periodSeconds: 1\n";
    let path_probe = "    readinessProbe:\n      httpGet:\n        port: 8080\n        \
                      path: \"/by-path\\r\\nX-Smuggled: path\\r\\n\\r\\nGET /second HTTP/1.1\"\n      \
                      periodSeconds: 1\n";
    let yaml = format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: crlf\nspec:\n  terminationGracePeriodSeconds: 1\n  \
         containers:\n{}  - name: path\n    image: {BUSYBOX}\n    command: [\"sleep\", \"600\"]\n{path_probe}",
        server_container("server", OK, header_probe)
    );
    agent.write_manifest("crlf.yaml", &yaml)?;
    let pod = agent.wait_pod("crlf", Duration::from_secs(60), |p| running(p, "server") && running(p, "path"))?;
    let ip = pod["status"]["podIP"].as_str().unwrap_or_default().to_owned();
    let refused = format!(
        "Readiness probe failed: Get \"http://{ip}:8080/by-header\": net/http: invalid header field value for \
         \"X-Evil\""
    );
    // The path probe's requests arrive; a few more probe periods for anything smuggled with them to arrive too.
    wait_log(&agent, &pod, "server", "req: GET /by-path", Duration::from_secs(30))?;
    std::thread::sleep(Duration::from_secs(3));
    let log = container_log(&agent, &pod, "server");
    // The escaped request target holds the text; what must never arrive is a line of its own.
    ensure!(!log.contains("req: X-Smuggled"), "a smuggled header reached the server:\n{log}");
    ensure!(!log.contains("req: GET /second"), "a smuggled request reached the server:\n{log}");
    ensure!(!log.contains("by-header"), "a refused probe reached the server:\n{log}");
    let escaped = "req: GET /by-path%0D%0AX-Smuggled:%20path%0D%0A%0D%0AGET%20/second%20HTTP/1.1 HTTP/1.1";
    ensure!(log.contains(escaped), "want {escaped:?} in:\n{log}");
    let agent_log = wait_agent_log(&agent, "invalid header field value for", 3, Duration::from_secs(30))?;
    ensure!(agent_log.contains(&refused), "want {refused:?} in:\n{}", rkubelet_tests::agent::tail(&agent_log, 40));
    let pod = agent.pod("crlf")?.unwrap_or_default();
    ensure!(container_status(&pod, "server")["ready"] == false, "{pod:#}");
    ensure!(container_status(&pod, "path")["ready"] == true, "the escaped path is one valid request: {pod:#}");
    Ok(())
}

/// A static pod `victim` (grace period 5 s) whose container stops at SIGTERM; `app_extra` is appended to its
/// container (a hook, probes), indented as a container field.
pub fn victim_manifest(app_extra: &str) -> String {
    format!(
        r#"apiVersion: v1
kind: Pod
metadata:
  name: victim
spec:
  terminationGracePeriodSeconds: 5
  containers:
  - name: app
    image: {BUSYBOX}
    command: ["sh", "-c", "trap 'exit 0' TERM; while true; do sleep 0.2; done"]
{app_extra}"#
    )
}
