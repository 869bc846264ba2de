//! The pod sync loop as kubelet runs it, seen through an API server (the real one named by
//! `RKUBELET_E2E_KUBECONFIG`, else the in-repo double): a pod whose container cannot be created is retried with
//! kubelet's back-off and its status writes do not wake its worker again; pod fields the node does not support yet
//! are refused with a reason instead of ignored.

use std::process::Command;
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use futures::TryStreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{WatchEvent, WatchParams};
use rkubelet_tests::agent::{http_get, runtime_objects, Agent};
use rkubelet_tests::api_node::{ApiNode, NAMESPACE};
use rkubelet_tests::containerd::Containerd;
use rkubelet_tests::images::{ensure_images, BUSYBOX, REGISTRY};
use rkubelet_tests::skip_unless_root;
use serde_json::json;

/// How long the sync loop is watched, as the issue that asked for this test measured it.
const OBSERVATION: Duration = Duration::from_secs(30);
/// How much later than its timeout a server may end a watch on a busy machine.
const WATCH_END_SLACK: Duration = Duration::from_secs(15);

/// One counter from the agent's `/metrics`.
fn metric(env: &ApiNode, line_prefix: &str) -> Result<f64> {
    let (code, body) = http_get(env.agent.port(), "/metrics")?;
    ensure!(code == 200, "/metrics answered {code}");
    let line = body.lines().find(|l| l.starts_with(line_prefix)).with_context(|| format!("no {line_prefix}"))?;
    Ok(line.rsplit(' ').next().unwrap_or_default().parse()?)
}

fn unique(prefix: &str) -> String {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.subsec_nanos());
    format!("{prefix}-{:x}", nanos.unwrap_or_default() & 0xffffff)
}

fn waiting_reason(p: &Pod) -> Option<&str> {
    let c = p.status.as_ref()?.container_statuses.as_ref()?.first()?;
    c.state.as_ref()?.waiting.as_ref()?.reason.as_deref()
}

/// A busybox image without command or entrypoint, pushed to the local registry. containerd's CreateContainer fails
/// for it with "failed to generate container <fresh id> spec: no command specified": every attempt's error message
/// differs, the case in which a status write that woke the worker made it spin.
fn image_without_command() -> Result<String> {
    let image = format!("{REGISTRY}/busybox-no-command:1");
    let dir = tempfile::tempdir()?;
    let layout = format!("{}/layout:img", dir.path().display());
    let run = |cmd: &mut Command| -> Result<()> {
        let out = cmd.output().with_context(|| format!("{cmd:?}"))?;
        ensure!(out.status.success(), "{cmd:?}: {}", String::from_utf8_lossy(&out.stderr));
        Ok(())
    };
    run(Command::new("skopeo")
        .args(["copy", "-q", "--src-tls-verify=false"])
        .arg(format!("docker://{BUSYBOX}"))
        .arg(format!("oci:{layout}")))?;
    run(Command::new("umoci").args(["config", "--image", &layout, "--clear=config.cmd", "--clear=config.entrypoint"]))?;
    run(Command::new("skopeo")
        .args(["copy", "-q", "--dest-tls-verify=false"])
        .arg(format!("oci:{layout}"))
        .arg(format!("docker://{image}")))?;
    Ok(image)
}

#[test]
#[cfg_attr(not_root, ignore = "needs root (containerd, mounts, network namespaces)")]
fn a_container_that_cannot_be_created_is_retried_with_back_off_and_its_status_writes_do_not_wake_the_worker(
) -> Result<()> {
    skip_unless_root!(Ok(()));
    let image = image_without_command()?;
    let env = ApiNode::start("sync-backoff")?;
    let name = unique("no-command");
    let created = env.create(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": { "name": name, "namespace": NAMESPACE },
        "spec": {
            "nodeName": env.agent.node_name(),
            "automountServiceAccountToken": false,
            "tolerations": [{ "operator": "Exists" }],
            "containers": [{ "name": "app", "image": image }],
        }
    }))?;
    let uid = created.metadata.uid.clone().unwrap_or_default();
    let pod = env.wait_pod(&name, Duration::from_secs(60), |p| waiting_reason(p) == Some("CreateContainerError"))?;

    // Every write to the pod's status shows up as a MODIFIED watch event.
    let rv = pod.metadata.resource_version.clone().unwrap_or_default();
    let syncs_before = metric(&env, "kubelet_pod_worker_duration_seconds_count")?;
    let creates_before = metric(&env, "kubelet_runtime_operations_total{operation_type=\"create_container\"}")?;
    let params = WatchParams::default().fields(&format!("metadata.name={name}")).timeout(OBSERVATION.as_secs() as u32);
    let pods = env.pods();
    let writes = env.rt.block_on(async {
        let stream = pods.watch(&params, &rv).await?;
        // The server ends the watch after OBSERVATION; the local limit only guards against a watch that hangs.
        let counted = tokio::time::timeout(
            OBSERVATION + WATCH_END_SLACK,
            stream.try_fold(0u32, |n, ev| async move { Ok(n + u32::from(matches!(ev, WatchEvent::Modified(_)))) }),
        )
        .await;
        Ok::<_, anyhow::Error>(match counted {
            Ok(r) => r?,
            Err(_) => bail!("the watch did not end within {WATCH_END_SLACK:?} of its {OBSERVATION:?} timeout"),
        })
    });
    let syncs = metric(&env, "kubelet_pod_worker_duration_seconds_count")? - syncs_before;
    let creates =
        metric(&env, "kubelet_runtime_operations_total{operation_type=\"create_container\"}")? - creates_before;
    let writes = writes?;
    println!("over {OBSERVATION:?}: {syncs} syncs, {creates} CreateContainer attempts, {writes} pods/status writes");
    // kubelet requeues a failed sync after 10 s with up to 50 % jitter: two or three attempts in 30 s.
    ensure!((1.0..=4.0).contains(&creates), "CreateContainer attempts in {OBSERVATION:?}: {creates} (expected 2-3)");
    ensure!(syncs <= 5.0, "pod syncs in {OBSERVATION:?}: {syncs}; the worker is woken by its own status writes");
    ensure!(writes <= 4, "pods/status writes in {OBSERVATION:?}: {writes} (one per attempt at most)");
    let pod = env.rt.block_on(env.pods().get(&name))?;
    ensure!(waiting_reason(&pod) == Some("CreateContainerError"), "still waiting with the reason: {:?}", pod.status);
    let message = pod
        .status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref())
        .and_then(|c| c[0].state.as_ref())
        .and_then(|s| s.waiting.as_ref())
        .and_then(|w| w.message.clone())
        .unwrap_or_default();
    ensure!(message.contains("no command specified"), "the runtime's error is the message: {message:?}");
    let failed = env.wait_event(&uid, "Failed")?.into_iter().filter(|e| e.reason.as_deref() == Some("Failed")).count();
    ensure!(failed >= 1, "a Failed event per attempt");
    Ok(())
}

#[test]
#[cfg_attr(not_root, ignore = "needs root (containerd, mounts, network namespaces)")]
fn unsupported_pod_fields_are_refused_with_a_reason_and_the_service_account_volume_is_mounted() -> Result<()> {
    skip_unless_root!(Ok(()));
    let env = ApiNode::start("sync-unsupported")?;
    let node = env.agent.node_name().to_owned();
    let refused = unique("nfs");
    let created = env.create(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": { "name": refused, "namespace": NAMESPACE },
        "spec": {
            "nodeName": node,
            "automountServiceAccountToken": false,
            "tolerations": [{ "operator": "Exists" }],
            "volumes": [{ "name": "scratch", "nfs": { "server": "192.0.2.1", "path": "/exports" } }],
            "containers": [{
                "name": "app", "image": BUSYBOX, "command": ["sleep", "3600"],
                "volumeMounts": [{ "name": "scratch", "mountPath": "/scratch" }],
            }],
        }
    }))?;
    let pod = env.wait_pod(&refused, Duration::from_secs(60), |p| {
        p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Failed")
    })?;
    let status = pod.status.unwrap_or_default();
    ensure!(status.reason.as_deref() == Some("UnsupportedPodSpec"), "reason: {:?}", status.reason);
    let message = status.message.unwrap_or_default();
    let field = "spec.volumes[0].nfs (\"scratch\")";
    ensure!(message.contains(field), "the message names {field}: {message:?}");
    let uid = created.metadata.uid.unwrap_or_default();
    let events = env.wait_event(&uid, "UnsupportedPodSpec")?;
    ensure!(events.iter().any(|e| e.reason.as_deref() == Some("UnsupportedPodSpec")), "a warning event: {events:?}");
    let objects = runtime_objects(&env.containerd.endpoint())?;
    ensure!(objects.sandboxes.is_empty(), "a refused pod gets no sandbox: {:?}", objects.sandboxes);

    // The token volume the API injects (the double as the ServiceAccount admission does); the readiness probe is run and makes the pod Ready.
    let runs = unique("token-volume");
    let spec = json!({
        "nodeName": node,
        "tolerations": [{ "operator": "Exists" }],
        "containers": [{
            "name": "app", "image": BUSYBOX, "command": ["sleep", "3600"],
            "readinessProbe": { "exec": { "command": ["true"] }, "periodSeconds": 1 },
        }],
    });
    let created = env.create(json!({
        "apiVersion": "v1", "kind": "Pod", "metadata": { "name": runs, "namespace": NAMESPACE }, "spec": spec,
    }))?;
    let uid = created.metadata.uid.unwrap_or_default();
    ensure!(
        created
            .spec
            .as_ref()
            .and_then(|s| s.volumes.as_ref())
            .is_some_and(|v| v.iter().any(|v| v.name.starts_with("kube-api-access-"))),
        "the pod carries a service-account token volume"
    );
    // The readiness probe runs and passes: the pod becomes Ready.
    env.wait_pod(&runs, Duration::from_secs(60), |p| {
        p.status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
    })?;
    let volume =
        created.spec.iter().flat_map(|s| s.volumes.iter().flatten()).find(|v| v.name.starts_with("kube-api-access-"));
    let volume = volume.map(|v| v.name.clone()).unwrap_or_default();
    let dir = env.agent.root_dir().join("pods").join(&uid).join("volumes/kubernetes.io~projected").join(volume);
    let read = |f: &str| std::fs::read_to_string(dir.join(f)).with_context(|| format!("{}/{f}", dir.display()));
    ensure!(read("namespace")? == NAMESPACE, "namespace file");
    ensure!(read("ca.crt")?.contains("BEGIN CERTIFICATE"), "the cluster CA");
    ensure!(read("token")?.split('.').count() == 3, "a JWT from the TokenRequest API");
    Ok(())
}

#[test]
#[cfg_attr(not_root, ignore = "needs root (containerd, mounts, network namespaces)")]
fn a_static_pod_with_an_unsupported_field_is_refused_and_reported() -> Result<()> {
    skip_unless_root!(Ok(()));
    ensure_images()?;
    let containerd = Containerd::start("sync-static-unsupported")?;
    let agent = Agent::start(&containerd)?;
    agent.write_manifest(
        "hooked.yaml",
        &format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: hooked, namespace: default}}\nspec:\n  containers:\n  - name: app\n    image: {BUSYBOX}\n    command: [sleep, '3600']\n  runtimeClassName: gvisor\n"
        ),
    )?;
    let pod = agent.wait_pod("hooked", Duration::from_secs(30), |p| p["status"]["phase"] == "Failed")?;
    ensure!(pod["status"]["reason"] == "UnsupportedPodSpec", "{pod}");
    let message = pod["status"]["message"].as_str().unwrap_or_default();
    ensure!(message.contains("spec.runtimeClassName"), "{message}");
    ensure!(runtime_objects(&containerd.endpoint())?.sandboxes.is_empty(), "nothing ran");
    Ok(())
}

#[test]
#[cfg_attr(not_root, ignore = "needs root (containerd, mounts, network namespaces)")]
fn a_pod_for_another_os_is_rejected_as_kubelet_does() -> Result<()> {
    skip_unless_root!(Ok(()));
    ensure_images()?;
    let containerd = Containerd::start("sync-static-os")?;
    let agent = Agent::start(&containerd)?;
    let manifest = |name: &str, extra: &str| {
        format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: default{extra}}}\nspec:\n  containers:\n  - name: app\n    image: {BUSYBOX}\n    command: [sleep, '3600']\n"
        )
    };
    agent.write_manifest(
        "by-field.yaml",
        &manifest("by-field", "").replace("spec:\n", "spec:\n  os: {name: windows}\n"),
    )?;
    agent.write_manifest("by-label.yaml", &manifest("by-label", ", labels: {kubernetes.io/os: windows}"))?;
    for (name, reason, message) in [
        (
            "by-field",
            "PodOSNotSupported",
            "Pod was rejected: Failed to admit pod as the OS field doesn't match node OS",
        ),
        (
            "by-label",
            "PodOSSelectorNodeLabelDoesNotMatch",
            "Pod was rejected: Failed to admit pod as the `kubernetes.io/os` label doesn't match node label",
        ),
    ] {
        let pod = agent.wait_pod(name, Duration::from_secs(30), |p| p["status"]["phase"] == "Failed")?;
        ensure!(pod["status"]["reason"] == reason, "{name}: {pod}");
        ensure!(pod["status"]["message"] == message, "{name}: {pod}");
    }
    ensure!(runtime_objects(&containerd.endpoint())?.sandboxes.is_empty(), "nothing ran");
    Ok(())
}
