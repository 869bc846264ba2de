//! Host-tier tests of probes: rkubelet on a real containerd running startup, readiness and liveness probes with
//! each handler (exec through CRI ExecSync, httpGet against busybox httpd, tcpSocket against nc).

use std::time::{Duration, Instant};

use anyhow::{ensure, Result};
use rkubelet_tests::agent::{condition, container_status, phase, Agent};
use rkubelet_tests::containerd::Containerd;
use rkubelet_tests::images::{ensure_images, BUSYBOX};
use rkubelet_tests::skip_unless_root;
use serde_json::Value;

fn setup(name: &str) -> Result<(Containerd, Agent)> {
    ensure_images()?;
    let containerd = Containerd::start(name)?;
    let agent = Agent::start(&containerd)?;
    Ok((containerd, agent))
}

/// A one-container busybox pod; `probes` is YAML indented for the container.
fn pod_yaml(name: &str, script: &str, probes: &str) -> String {
    format!(
        r#"apiVersion: v1
kind: Pod
metadata:
  name: {name}
spec:
  terminationGracePeriodSeconds: 2
  containers:
  - name: app
    image: {BUSYBOX}
    ports:
    - name: http
      containerPort: 8080
    command: ["sh", "-c", "trap 'exit 0' TERM; {script}"]
{probes}"#
    )
}

fn restarts(p: &Value) -> i64 {
    container_status(p, "app")["restartCount"].as_i64().unwrap_or(0)
}

fn ready(p: &Value) -> bool {
    container_status(p, "app")["ready"] == true
}

#[test]
#[cfg_attr(not_root, ignore = "needs root (containerd, mounts, network namespaces)")]
fn exec_startup_readiness_and_liveness_probes_gate_started_ready_and_restart() -> Result<()> {
    skip_unless_root!(Ok(()));
    let (_containerd, agent) = setup("probe-exec")?;
    let probes = r#"    startupProbe:
      exec: {command: ["cat", "/tmp/started"]}
      periodSeconds: 1
      failureThreshold: 30
    readinessProbe:
      exec: {command: ["cat", "/tmp/ready"]}
      periodSeconds: 1
    livenessProbe:
      exec: {command: ["cat", "/tmp/healthy"]}
      periodSeconds: 1
      failureThreshold: 2
"#;
    let script = "touch /tmp/healthy; sleep 3; touch /tmp/started; sleep 3; touch /tmp/ready; sleep 6; \
                  rm /tmp/healthy; sleep 600";
    agent.write_manifest("exec.yaml", &pod_yaml("exec", script, probes))?;
    let slow = r#"    livenessProbe:
      exec: {command: ["sleep", "10"]}
      timeoutSeconds: 1
      periodSeconds: 2
      failureThreshold: 1
"#;
    agent.write_manifest("slow.yaml", &pod_yaml("slow", "sleep 600", slow))?;
    let began = Instant::now();
    let pod = agent
        .wait_pod("exec", Duration::from_secs(60), |p| container_status(p, "app")["state"]["running"].is_object())?;
    assert_eq!(container_status(&pod, "app")["started"], false, "started before the startup probe passed");
    assert!(!ready(&pod), "ready before the readiness probe passed");
    assert_eq!(phase(&pod), "Running");
    assert_eq!(condition(&pod, "Ready")["reason"], "ContainersNotReady");

    let pod = agent.wait_pod("exec", Duration::from_secs(30), |p| container_status(p, "app")["started"] == true)?;
    assert!(!ready(&pod), "readiness has not passed yet: {}", container_status(&pod, "app"));
    let pod = agent.wait_pod("exec", Duration::from_secs(30), ready)?;
    let took = began.elapsed();
    ensure!(took >= Duration::from_secs(5), "ready after {took:?}, before /tmp/ready existed");
    assert_eq!(condition(&pod, "Ready")["status"], "True");
    assert_eq!(condition(&pod, "ContainersReady")["status"], "True");
    assert_eq!(restarts(&pod), 0);

    // /tmp/healthy goes at ~12 s; two failed liveness runs kill the container and it is restarted.
    let pod = agent.wait_pod("exec", Duration::from_secs(60), |p| restarts(p) >= 1)?;
    let last = &container_status(&pod, "app")["lastState"]["terminated"];
    assert!(last.is_object(), "{}", container_status(&pod, "app"));
    let log = agent.log();
    assert!(log.contains("Liveness probe failed: cat: can't open '/tmp/healthy': No such file or directory"), "{log}");
    assert!(log.contains("Container app failed liveness probe, will be restarted"), "{log}");
    assert!(log.contains("Readiness probe failed: cat: can't open '/tmp/ready'"), "{log}");
    // An exec probe that outlives its timeout fails.
    agent.wait_pod("slow", Duration::from_secs(30), |p| restarts(p) >= 1)?;
    let log = agent.log();
    assert!(log.contains("Liveness probe failed: command \"sleep 10\" timed out"), "{log}");
    Ok(())
}

#[test]
#[cfg_attr(not_root, ignore = "needs root (containerd, mounts, network namespaces)")]
fn http_and_tcp_probes_pass_against_httpd_and_nc_and_a_404_liveness_restarts() -> Result<()> {
    skip_unless_root!(Ok(()));
    let (_containerd, agent) = setup("probe-http")?;
    let serve = "mkdir -p /www; echo ok > /www/healthz; httpd -p 8080 -h /www; \
                 while true; do nc -l -p 9000 </dev/null; done & sleep 600";
    let good = r#"    readinessProbe:
      httpGet: {path: "/healthz?x=1", port: http, httpHeaders: [{name: X-Probe, value: "1"}]}
      periodSeconds: 1
    livenessProbe:
      tcpSocket: {port: 9000}
      periodSeconds: 1
      # nc listens again a moment after each connection: one refused probe in a busy moment is not a failure.
      failureThreshold: 3
"#;
    agent.write_manifest("good.yaml", &pod_yaml("good", serve, good))?;
    let bad = r#"    livenessProbe:
      httpGet: {path: /missing, port: 8080}
      periodSeconds: 1
      failureThreshold: 2
"#;
    agent.write_manifest("bad.yaml", &pod_yaml("bad", serve, bad))?;

    let pod = agent.wait_pod("good", Duration::from_secs(60), ready)?;
    assert_eq!(condition(&pod, "Ready")["status"], "True");
    let pod = agent.wait_pod("bad", Duration::from_secs(60), |p| restarts(p) >= 1)?;
    assert!(ready(&agent.pod("good")?.unwrap_or_default()), "the good pod stays ready");
    assert_eq!(restarts(&agent.pod("good")?.unwrap_or_default()), 0, "tcp liveness passes");
    assert!(container_status(&pod, "app")["lastState"]["terminated"].is_object());
    let log = agent.log();
    assert!(log.contains("Liveness probe failed: HTTP probe failed with statuscode: 404"), "{log}");
    Ok(())
}

#[test]
#[cfg_attr(not_root, ignore = "needs root (containerd, mounts, network namespaces)")]
fn grpc_probes_check_the_health_service_and_its_named_services() -> Result<()> {
    skip_unless_root!(Ok(()));
    let (_containerd, agent) = setup("probe-grpc")?;
    let image =
        rkubelet_tests::grpc_image::grpc_health_image(std::path::Path::new(env!("CARGO_BIN_EXE_grpc-health-server")))?;
    let pod = |name: &str, service: &str| {
        format!(
            r#"apiVersion: v1
kind: Pod
metadata:
  name: {name}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: app
    image: {image}
    args: ["9090", "db"]
    readinessProbe:
      grpc: {{port: 9090, service: "{service}"}}
      periodSeconds: 1
"#
        )
    };
    agent.write_manifest("serving.yaml", &pod("serving", "db"))?;
    agent.write_manifest("unknown.yaml", &pod("unknown", "cache"))?;
    let p = agent.wait_pod("serving", Duration::from_secs(60), ready)?;
    assert_eq!(condition(&p, "Ready")["status"], "True");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !agent.log().contains("Readiness probe failed: service unhealthy (responded with \"SERVICE_UNKNOWN\")") {
        ensure!(Instant::now() < deadline, "no failed grpc probe for the unknown service:\n{}", agent.log());
        std::thread::sleep(Duration::from_millis(200));
    }
    let p = agent.pod("unknown")?.unwrap_or_default();
    assert!(container_status(&p, "app")["state"]["running"].is_object(), "{p}");
    assert!(!ready(&p), "{p}");
    Ok(())
}
