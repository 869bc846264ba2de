//! Host-tier tests of the container lifecycle around starts and stops: back-off of failed starts, hooks,
//! termination messages and deadlines, on a real containerd.

use std::time::{Duration, Instant};

use anyhow::{ensure, Result};
use rkubelet_tests::agent::{container_log, container_status, running, wait_log, Agent};
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

fn waiting_reason(p: &Value) -> String {
    container_status(p, "app")["state"]["waiting"]["reason"].as_str().unwrap_or_default().to_owned()
}

#[test]
#[cfg_attr(not_root, ignore = "needs root (containerd, mounts, network namespaces)")]
fn failed_starts_wait_out_a_doubling_back_off_with_one_warning_per_attempt() -> Result<()> {
    skip_unless_root!(Ok(()));
    let (_containerd, agent) = setup("life-backoff")?;
    // StartContainer fails (the command does not exist): RunContainerError.
    let yaml = format!(
        r#"apiVersion: v1
kind: Pod
metadata:
  name: nostart
spec:
  containers:
  - name: app
    image: {BUSYBOX}
    command: ["/no/such/binary"]
"#
    );
    agent.write_manifest("nostart.yaml", &yaml)?;
    agent.wait_pod("nostart", Duration::from_secs(60), |p| {
        !waiting_reason(p).is_empty() && waiting_reason(p) != "ContainerCreating"
    })?;
    let attempts = |log: &str| log.matches("start container failed").count();
    let first = Instant::now();
    let before = attempts(&agent.log());
    ensure!(before >= 1, "no failed attempt logged:\n{}", agent.log());
    std::thread::sleep(Duration::from_secs(45));
    let log = agent.log();
    let made = attempts(&log) - before;
    println!("over {:?} after the first failure: {made} more attempts", first.elapsed());
    // 10 s then 20 s of back-off (each at least the worker's jittered 10-15 s): attempts near 10-15 s and 30-35 s.
    ensure!((1..=2).contains(&made), "{made} attempts in 45 s after the first, want 1-2 (10 s doubling back-off)");
    let warnings = log.lines().filter(|l| l.contains("Error: ") && l.contains("no/such/binary")).count();
    ensure!(warnings == made + before, "one warning per attempt: {warnings} warnings for {} attempts", made + before);
    Ok(())
}

/// A pod serving HTTP on 8080 with busybox httpd, which logs each request's path on stderr.
fn http_server_yaml(name: &str) -> String {
    format!(
        r#"apiVersion: v1
kind: Pod
metadata:
  name: {name}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: app
    image: {BUSYBOX}
    command: ["sh", "-c", "mkdir -p /www; echo ok > /www/index.html; exec httpd -f -vv -p 8080 -h /www"]
"#
    )
}

#[test]
#[cfg_attr(not_root, ignore = "needs root (containerd, mounts, network namespaces)")]
fn post_start_and_pre_stop_hooks_run_with_exec_http_to_another_host_and_sleep() -> Result<()> {
    skip_unless_root!(Ok(()));
    let (_containerd, agent) = setup("life-hooks")?;
    agent.write_manifest("server.yaml", &http_server_yaml("server"))?;
    let server = agent.wait_pod("server", Duration::from_secs(60), |p| running(p, "app"))?;
    let server_ip = server["status"]["podIP"].as_str().unwrap_or_default().to_owned();
    let yaml = format!(
        r#"apiVersion: v1
kind: Pod
metadata:
  name: hooked
spec:
  terminationGracePeriodSeconds: 10
  containers:
  - name: exec
    image: {BUSYBOX}
    command: ["sh", "-c", "trap 'exit 0' TERM; while [ ! -f /tmp/hook ]; do sleep 0.1; done; echo saw-$(cat /tmp/hook); while true; do sleep 1; done"]
    lifecycle:
      postStart:
        exec: {{command: ["sh", "-c", "echo post-start-ran > /tmp/hook"]}}
      preStop:
        httpGet: {{host: "{server_ip}", port: 8080, path: /pre-stop-from-exec}}
  - name: web
    image: {BUSYBOX}
    command: ["sh", "-c", "trap 'exit 0' TERM; while true; do sleep 1; done"]
    lifecycle:
      postStart:
        httpGet: {{host: "{server_ip}", port: 8080, path: /post-start-from-web}}
      preStop:
        sleep: {{seconds: 2}}
"#
    );
    agent.write_manifest("hooked.yaml", &yaml)?;
    let hooked = agent.wait_pod("hooked", Duration::from_secs(60), |p| running(p, "exec") && running(p, "web"))?;
    wait_log(&agent, &hooked, "exec", "saw-post-start-ran", Duration::from_secs(10))?;
    wait_log(&agent, &server, "app", "/post-start-from-web", Duration::from_secs(10))?;
    let log = container_log(&agent, &server, "app");
    assert!(!log.contains("/pre-stop-from-exec"), "preStop before the stop: {log}");

    let began = Instant::now();
    agent.remove_manifest("hooked.yaml")?;
    agent.wait_pod_gone("hooked", Duration::from_secs(30))?;
    let took = began.elapsed();
    wait_log(&agent, &server, "app", "/pre-stop-from-exec", Duration::from_secs(5))?;
    // The sleep hook holds the web container's stop for its 2 s.
    ensure!(took >= Duration::from_secs(2), "pod stopped in {took:?}, before the 2 s preStop sleep ended");
    let events = agent.log();
    assert!(!events.contains("FailedPreStopHook") && !events.contains("FailedPostStartHook"), "{events}");
    Ok(())
}

#[test]
#[cfg_attr(not_root, ignore = "needs root (containerd, mounts, network namespaces)")]
fn a_failed_post_start_hook_kills_the_container_and_pre_stop_time_comes_out_of_the_grace_period() -> Result<()> {
    skip_unless_root!(Ok(()));
    let (_containerd, agent) = setup("life-hookfail")?;
    let yaml = format!(
        r#"apiVersion: v1
kind: Pod
metadata:
  name: badhook
spec:
  containers:
  - name: app
    image: {BUSYBOX}
    command: ["sleep", "600"]
    lifecycle:
      postStart:
        exec: {{command: ["sh", "-c", "echo no >&2; exit 3"]}}
---
apiVersion: v1
kind: Pod
metadata:
  name: slowstop
spec:
  terminationGracePeriodSeconds: 4
  containers:
  - name: app
    image: {BUSYBOX}
    # Ignores SIGTERM: only SIGKILL at the end of the grace period stops it.
    command: ["sh", "-c", "trap '' TERM; while true; do sleep 1; done"]
    lifecycle:
      preStop:
        exec: {{command: ["sh", "-c", "sleep 100"]}}
"#
    );
    agent.write_manifest("hooks.yaml", &yaml)?;
    let pod = agent.wait_pod("badhook", Duration::from_secs(60), |p| {
        container_status(p, "app")["lastState"]["terminated"].is_object()
    })?;
    let log = agent.log();
    assert!(log.contains("PostStartHook failed"), "{log}");
    assert!(
        log.contains("Exec lifecycle hook ([sh -c echo no >&2; exit 3]) for Container \"app\" in Pod \"badhook-"),
        "{log}"
    );
    let state = &container_status(&pod, "app")["state"]["waiting"];
    ensure!(
        ["PostStartHookError", "CrashLoopBackOff"].contains(&state["reason"].as_str().unwrap_or_default()),
        "{pod}"
    );

    // slowstop: the 100 s preStop hook uses up the 4 s grace period, then StopContainer gets kubelet's 2 s minimum.
    agent.wait_pod("slowstop", Duration::from_secs(60), |p| running(p, "app"))?;
    std::thread::sleep(Duration::from_secs(1));
    let began = Instant::now();
    agent.remove_manifest("hooks.yaml")?;
    agent.wait_pod_gone("slowstop", Duration::from_secs(60))?;
    let took = began.elapsed();
    println!("stopping with a hanging preStop hook took {took:?}");
    ensure!(
        took >= Duration::from_secs(6) && took < Duration::from_secs(15),
        "stop took {took:?}, want 4 s of hook + 2 s of minimum grace"
    );
    Ok(())
}

#[test]
#[cfg_attr(not_root, ignore = "needs root (containerd, mounts, network namespaces)")]
fn a_pod_past_its_active_deadline_fails_with_deadline_exceeded_and_is_stopped() -> Result<()> {
    skip_unless_root!(Ok(()));
    let (containerd, agent) = setup("life-deadline")?;
    let yaml = format!(
        r#"apiVersion: v1
kind: Pod
metadata:
  name: deadline
spec:
  activeDeadlineSeconds: 5
  terminationGracePeriodSeconds: 2
  containers:
  - name: app
    image: {BUSYBOX}
    command: ["sh", "-c", "trap 'exit 0' TERM; while true; do sleep 1; done"]
"#
    );
    agent.write_manifest("deadline.yaml", &yaml)?;
    let began = Instant::now();
    agent.wait_pod("deadline", Duration::from_secs(60), |p| running(p, "app"))?;
    let pod = agent.wait_pod("deadline", Duration::from_secs(30), |p| {
        p["status"]["phase"] == "Failed" && container_status(p, "app")["state"]["terminated"].is_object()
    })?;
    let took = began.elapsed();
    ensure!(took >= Duration::from_secs(5), "failed after {took:?}, before its 5 s deadline");
    assert_eq!(pod["status"]["reason"], "DeadlineExceeded");
    assert_eq!(pod["status"]["message"], "Pod was active on the node longer than the specified deadline");
    assert_eq!(container_status(&pod, "app")["restartCount"], 0, "{pod}");
    let log = agent.log();
    assert!(log.contains("reason=\"DeadlineExceeded\"") || log.contains("reason=DeadlineExceeded"), "{log}");
    // Nothing is started again and the sandbox is stopped.
    std::thread::sleep(Duration::from_secs(3));
    let objects = rkubelet_tests::agent::runtime_objects(&containerd.endpoint())?;
    ensure!(objects.containers.len() == 1, "containers: {:?}", objects.containers);
    let pod = agent.pod("deadline")?.unwrap_or_default();
    assert_eq!(pod["status"]["phase"], "Failed");
    Ok(())
}

fn init_status<'a>(p: &'a Value, name: &str) -> &'a Value {
    p["status"]["initContainerStatuses"]
        .as_array()
        .and_then(|a| a.iter().find(|s| s["name"] == name))
        .unwrap_or(&Value::Null)
}

#[test]
#[cfg_attr(not_root, ignore = "needs root (containerd, mounts, network namespaces)")]
fn sidecars_start_before_the_next_init_container_restart_on_exit_and_stop_after_the_app() -> Result<()> {
    skip_unless_root!(Ok(()));
    let (_containerd, agent) = setup("life-sidecar")?;
    let yaml = format!(
        r#"apiVersion: v1
kind: Pod
metadata:
  name: withside
spec:
  restartPolicy: Never
  terminationGracePeriodSeconds: 2
  initContainers:
  - name: side
    image: {BUSYBOX}
    restartPolicy: Always
    # Exits after a few seconds each time: restarted although the pod's policy is Never.
    command: ["sh", "-c", "trap 'exit 0' TERM; echo side-up; sleep 4; exit 1"]
    readinessProbe:
      exec: {{command: ["true"]}}
      periodSeconds: 1
  - name: init
    image: {BUSYBOX}
    command: ["sh", "-c", "echo init-ran"]
  containers:
  - name: app
    image: {BUSYBOX}
    command: ["sh", "-c", "trap 'exit 0' TERM; sleep 20"]
"#
    );
    agent.write_manifest("withside.yaml", &yaml)?;
    let pod = agent.wait_pod("withside", Duration::from_secs(60), |p| running(p, "app"))?;
    assert_eq!(init_status(&pod, "init")["state"]["terminated"]["exitCode"], 0, "{pod}");
    // The sidecar was started before the regular init container ran.
    let side_started = init_status(&pod, "side")["lastState"]["terminated"]["startedAt"]
        .as_str()
        .or(init_status(&pod, "side")["state"]["running"]["startedAt"].as_str())
        .unwrap_or_default()
        .to_owned();
    let init_started = init_status(&pod, "init")["state"]["terminated"]["startedAt"].as_str().unwrap_or_default();
    ensure!(
        !side_started.is_empty() && side_started.as_str() <= init_started,
        "side {side_started} init {init_started}"
    );
    assert_eq!(rkubelet_tests::agent::condition(&pod, "Initialized")["status"], "True");

    // The sidecar exits after 4 s and is restarted while the app keeps running.
    let pod = agent.wait_pod("withside", Duration::from_secs(60), |p| {
        init_status(p, "side")["restartCount"].as_i64().unwrap_or(0) >= 1 && running(p, "app")
    })?;
    assert_eq!(pod["status"]["phase"], "Running");
    assert_eq!(container_status(&pod, "app")["restartCount"], 0);

    // The app completes at 20 s: the pod succeeds and the sidecar is stopped, not restarted.
    let pod = agent.wait_pod("withside", Duration::from_secs(60), |p| p["status"]["phase"] == "Succeeded")?;
    assert_eq!(container_status(&pod, "app")["state"]["terminated"]["exitCode"], 0);
    std::thread::sleep(Duration::from_secs(3));
    let pod = agent.pod("withside")?.unwrap_or_default();
    assert_eq!(pod["status"]["phase"], "Succeeded");
    assert!(!running(&pod, "app"));
    let side = init_status(&pod, "side");
    ensure!(side["state"]["running"].is_null(), "sidecar still running after the pod completed: {side}");
    Ok(())
}

#[test]
#[cfg_attr(not_root, ignore = "needs root (containerd, mounts, network namespaces)")]
fn termination_messages_come_from_the_file_as_any_user_or_from_the_log_on_error() -> Result<()> {
    skip_unless_root!(Ok(()));
    let (_containerd, agent) = setup("life-termmsg")?;
    let pod = |name: &str, extra: &str, script: &str| {
        format!(
            r#"apiVersion: v1
kind: Pod
metadata:
  name: {name}
spec:
  restartPolicy: Never
  containers:
  - name: app
    image: {BUSYBOX}
    command: ["sh", "-c", "{script}"]
{extra}"#
        )
    };
    let non_root = "    terminationMessagePath: /tmp/termination-message\n    securityContext: {runAsUser: 1000}\n";
    agent.write_manifest("file.yaml", &pod("file", non_root, "echo -n DONE > /tmp/termination-message"))?;
    let fallback = "    terminationMessagePolicy: FallbackToLogsOnError\n";
    agent.write_manifest("logs.yaml", &pod("logs", fallback, "echo first; echo -n failed-here; exit 1"))?;
    agent.write_manifest("ok.yaml", &pod("ok", fallback, "echo all-good"))?;
    let terminated = |p: &Value| container_status(p, "app")["state"]["terminated"].clone();
    let done = |p: &Value| terminated(p).is_object();
    let file = agent.wait_pod("file", Duration::from_secs(60), done)?;
    assert_eq!(terminated(&file)["exitCode"], 0, "{file}");
    assert_eq!(terminated(&file)["message"], "DONE", "{file}");
    let logs = agent.wait_pod("logs", Duration::from_secs(60), done)?;
    // The last line has no newline: containerd writes it as a partial line only.
    assert_eq!(terminated(&logs)["message"], "first\nfailed-here", "{logs}");
    let ok = agent.wait_pod("ok", Duration::from_secs(60), done)?;
    assert!(terminated(&ok)["message"].is_null(), "no fallback on success: {ok}");
    Ok(())
}
