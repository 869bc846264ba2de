//! Host-tier tests: the security context, sysctls and host namespaces of static pods on a real containerd, read
//! from inside the container.

use std::time::Duration;

use anyhow::{Context, Result};
use rkubelet_tests::agent::{container_status, phase, Agent};
use rkubelet_tests::containerd::Containerd;
use rkubelet_tests::images::{ensure_images, BUSYBOX};
use rkubelet_tests::skip_unless_root;
use serde_json::Value;

const START: Duration = Duration::from_secs(60);

fn setup(name: &str, extra_config: &str) -> Result<(Containerd, Agent)> {
    ensure_images()?;
    let containerd = Containerd::start(name)?;
    let agent = Agent::start_with(&containerd, extra_config)?;
    Ok((containerd, agent))
}

/// A run-once busybox pod; `pod_fields` and `container_fields` are YAML lines indented for `spec:` and the
/// container.
fn pod_yaml(name: &str, pod_fields: &str, container_fields: &str, script: &str) -> String {
    let indent = |text: &str, n: usize| text.lines().map(|l| format!("{}{l}\n", " ".repeat(n))).collect::<String>();
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\nspec:\n  restartPolicy: Never\n  \
         terminationGracePeriodSeconds: 1\n{}  containers:\n  - name: app\n    image: {BUSYBOX}\n    command: [\"sh\", \"-c\", {script:?}]\n{}",
        indent(pod_fields, 2),
        indent(container_fields, 4),
    )
}

/// Runs the pod to completion and returns what its container printed.
fn run_to_completion(agent: &Agent, name: &str, yaml: &str) -> Result<String> {
    agent.write_manifest(&format!("{name}.yaml"), yaml)?;
    let pod = agent.wait_pod(name, START, |p| phase(p) == "Succeeded" || phase(p) == "Failed")?;
    let uid = pod["metadata"]["uid"].as_str().context("uid")?;
    let full = format!("{name}-{}", agent.node_name());
    let log = agent.pod_logs_dir().join(format!("default_{full}_{uid}")).join("app").join("0.log");
    let text = std::fs::read_to_string(&log).with_context(|| format!("read {}", log.display()))?;
    // CRI log lines: <time> <stream> <tag> <text>
    let output = text.lines().filter_map(|l| l.splitn(4, ' ').nth(3)).collect::<Vec<_>>().join("\n");
    anyhow::ensure!(phase(&pod) == "Succeeded", "pod {name} failed: {pod}\noutput:\n{output}");
    Ok(output)
}

fn line_of<'a>(output: &'a str, prefix: &str) -> &'a str {
    output.lines().find(|l| l.starts_with(prefix)).unwrap_or("")
}

#[test]
#[cfg_attr(not_root, ignore = "needs root (containerd, mounts, network namespaces)")]
fn users_groups_capabilities_and_a_read_only_root_reach_the_container() -> Result<()> {
    skip_unless_root!(Ok(()));
    let (_containerd, agent) = setup("sec-ctx", "")?;
    let script = "id; grep -E '^(CapEff|CapBnd|NoNewPrivs)' /proc/self/status; \
                  touch /probe 2>/dev/null && echo rootfs=writable || echo rootfs=read-only; \
                  [ -n \"$(head -c 1 /proc/timer_list 2>/dev/null)\" ] && echo proc=unmasked || echo proc=masked";
    let output = run_to_completion(
        &agent,
        "restricted",
        &pod_yaml(
            "restricted",
            "securityContext:\n  runAsUser: 1000\n  runAsGroup: 3000\n  fsGroup: 2000\n  supplementalGroups: [4000]",
            "securityContext:\n  readOnlyRootFilesystem: true\n  allowPrivilegeEscalation: false\n  \
             capabilities:\n    drop: [ALL]\n    add: [NET_BIND_SERVICE]",
            script,
        ),
    )?;
    let id = line_of(&output, "uid=");
    assert!(id.starts_with("uid=1000 gid=3000 groups="), "{output}");
    for group in ["2000", "3000", "4000"] {
        assert!(id.contains(group), "group {group} missing: {id}");
    }
    // NET_BIND_SERVICE is bit 10 and the only one left (bounding set: a non-root process has no effective ones).
    assert_eq!(line_of(&output, "CapBnd:").split_whitespace().nth(1), Some("0000000000000400"), "{output}");
    assert_eq!(line_of(&output, "NoNewPrivs:").split_whitespace().nth(1), Some("1"), "{output}");
    assert!(output.contains("rootfs=read-only"), "{output}");

    // Defaults: root, the runtime's capability set, privilege escalation allowed, writable root, /proc masked.
    let output = run_to_completion(&agent, "defaults", &pod_yaml("defaults", "", "", script))?;
    assert!(line_of(&output, "uid=").starts_with("uid=0(root) gid=0(root)"), "{output}");
    assert_eq!(line_of(&output, "NoNewPrivs:").split_whitespace().nth(1), Some("0"), "{output}");
    assert!(output.contains("rootfs=writable") && output.contains("proc=masked"), "{output}");

    // A privileged container has every capability and an unmasked /proc.
    let output = run_to_completion(
        &agent,
        "privileged",
        &pod_yaml("privileged", "", "securityContext:\n  privileged: true", script),
    )?;
    let caps = line_of(&output, "CapEff:").split_whitespace().nth(1).unwrap_or("");
    let caps = u64::from_str_radix(caps, 16).unwrap_or(0);
    assert!(caps.count_ones() >= 38, "privileged CapEff {caps:x}: {output}");
    assert!(output.contains("proc=unmasked"), "{output}");
    Ok(())
}

#[test]
#[cfg_attr(not_root, ignore = "needs root (containerd, mounts, network namespaces)")]
fn run_as_non_root_against_a_root_image_is_a_config_error_with_kubelets_message() -> Result<()> {
    skip_unless_root!(Ok(()));
    let (_containerd, agent) = setup("sec-nonroot", "")?;
    let yaml = pod_yaml("nonroot", "securityContext:\n  runAsNonRoot: true", "", "echo should not run");
    agent.write_manifest("nonroot.yaml", &yaml)?;
    let waiting_reason = |p: &Value| container_status(p, "app")["state"]["waiting"]["reason"].clone();
    let pod = agent.wait_pod("nonroot", START, |p| waiting_reason(p) == "CreateContainerConfigError")?;
    let message = container_status(&pod, "app")["state"]["waiting"]["message"].as_str().unwrap_or("").to_owned();
    let full = format!("nonroot-{}", agent.node_name());
    assert!(
        message.starts_with("container has runAsNonRoot and image will run as root (pod: \"")
            && message.contains(&full)
            && message.ends_with(", container: app)"),
        "{message}"
    );

    // With a non-root runAsUser the same image runs.
    let yaml = pod_yaml("nonroot-uid", "securityContext:\n  runAsNonRoot: true\n  runAsUser: 65534", "", "id -u");
    let output = run_to_completion(&agent, "nonroot-uid", &yaml)?;
    assert_eq!(output.trim(), "65534");
    Ok(())
}

#[test]
#[cfg_attr(not_root, ignore = "needs root (containerd, mounts, network namespaces)")]
fn safe_and_allowed_sysctls_are_set_and_others_are_forbidden_at_admission() -> Result<()> {
    skip_unless_root!(Ok(()));
    let (_containerd, agent) = setup("sec-sysctl", "allowedUnsafeSysctls:\n- kernel.msg*\n")?;
    let script = "cat /proc/sys/kernel/shm_rmid_forced /proc/sys/net/ipv4/ip_local_port_range /proc/sys/kernel/msgmax";
    let sysctls = "securityContext:\n  sysctls:\n  - name: kernel.shm_rmid_forced\n    value: \"1\"\n  \
                   - name: net/ipv4/ip_local_port_range\n    value: \"1024 65000\"\n  \
                   - name: kernel.msgmax\n    value: \"10000\"";
    let output = run_to_completion(&agent, "sysctls", &pod_yaml("sysctls", sysctls, "", script))?;
    let values: Vec<String> = output.lines().map(|l| l.split_whitespace().collect::<Vec<_>>().join(" ")).collect();
    assert_eq!(values, vec!["1", "1024 65000", "10000"], "{output}");

    let forbidden = "securityContext:\n  sysctls:\n  - name: net.core.somaxconn\n    value: \"1024\"";
    agent.write_manifest("forbidden.yaml", &pod_yaml("forbidden", forbidden, "", "true"))?;
    let pod = agent.wait_pod("forbidden", START, |p| phase(p) == "Failed")?;
    assert_eq!(pod["status"]["reason"], "SysctlForbidden", "{pod}");
    assert_eq!(
        pod["status"]["message"], "Pod was rejected: forbidden sysctl: \"net.core.somaxconn\" not allowlisted",
        "{pod}"
    );
    Ok(())
}

#[test]
#[cfg_attr(not_root, ignore = "needs root (containerd, mounts, network namespaces)")]
fn host_network_pid_and_ipc_pods_start_and_have_the_nodes_ip() -> Result<()> {
    skip_unless_root!(Ok(()));
    let (_containerd, agent) = setup("sec-hostns", "")?;
    let host_net = std::fs::read_link("/proc/self/ns/net")?.display().to_string();
    let host_pid = std::fs::read_link("/proc/self/ns/pid")?.display().to_string();
    let host_ipc = std::fs::read_link("/proc/self/ns/ipc")?.display().to_string();
    let script = "for ns in net pid ipc; do readlink /proc/self/ns/$ns; done; hostname";
    let output = run_to_completion(
        &agent,
        "hostns",
        &pod_yaml("hostns", "hostNetwork: true\nhostPID: true\nhostIPC: true", "", script),
    )?;
    let lines: Vec<&str> = output.lines().collect();
    assert_eq!(&lines[..3], &[host_net.as_str(), host_pid.as_str(), host_ipc.as_str()], "{output}");
    let host_name = std::fs::read_to_string("/proc/sys/kernel/hostname")?;
    assert_eq!(lines.get(3).copied(), Some(host_name.trim()), "{output}");

    let pod = agent.pod("hostns")?.context("pod")?;
    let (pod_ip, host_ip) = (&pod["status"]["podIP"], &pod["status"]["hostIP"]);
    assert!(pod_ip.is_string() && pod_ip == host_ip, "podIP {pod_ip} hostIP {host_ip}");
    assert_eq!(pod["status"]["podIPs"][0]["ip"], *host_ip);

    // A pod of its own gets namespaces of its own.
    let output = run_to_completion(&agent, "podns", &pod_yaml("podns", "", "", script))?;
    let lines: Vec<&str> = output.lines().collect();
    assert!(lines[0] != host_net && lines[1] != host_pid && lines[2] != host_ipc, "{output}");
    assert_eq!(lines.get(3).copied(), Some(format!("podns-{}", agent.node_name()).as_str()), "{output}");
    Ok(())
}

#[test]
#[cfg_attr(not_root, ignore = "needs root (containerd, mounts, network namespaces)")]
fn a_host_network_pods_http_hook_without_host_goes_to_the_nodes_ip() -> Result<()> {
    skip_unless_root!(Ok(()));
    let (_containerd, agent) = setup("sec-hostnet-hook", "")?;
    let port = rkubelet_tests::agent::free_port()?;
    let server = format!("mkdir -p /www; echo ok > /www/index.html; exec httpd -f -vv -p {port} -h /www");
    agent.write_manifest("server.yaml", &pod_yaml("server", "hostNetwork: true", "", &server))?;
    let running = |p: &Value| phase(p) == "Running";
    let server_pod = agent.wait_pod("server", START, running)?;
    let hook = format!("lifecycle:\n  preStop:\n    httpGet: {{port: {port}, path: /pre-stop-on-host-network}}");
    let app = "trap 'exit 0' TERM; while true; do sleep 1; done";
    agent.write_manifest("hooked.yaml", &pod_yaml("hooked", "hostNetwork: true", &hook, app))?;
    agent.wait_pod("hooked", START, running)?;
    agent.remove_manifest("hooked.yaml")?;
    agent.wait_pod_gone("hooked", Duration::from_secs(30))?;

    let uid = server_pod["metadata"]["uid"].as_str().context("uid")?;
    let log =
        agent.pod_logs_dir().join(format!("default_server-{}_{uid}", agent.node_name())).join("app").join("0.log");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if text.contains("/pre-stop-on-host-network") {
            break;
        }
        anyhow::ensure!(
            std::time::Instant::now() < deadline,
            "the hook never reached the server: {text}\n{}",
            agent.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(!agent.log().contains("FailedPreStopHook"), "{}", agent.log());
    agent.remove_manifest("server.yaml")?;
    Ok(())
}
