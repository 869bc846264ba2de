//! Volumes and container environments as the workload sees them: each pod prints what it finds inside its
//! container, and the test reads that from the container's log on the node. Static pods cover emptyDir (disk and
//! tmpfs), hostPath types, downwardAPI, subPathExpr, readOnly, field and resource env and `$(VAR)` expansion, and the
//! teardown of a pod removed while the agent was down; a real API server covers configMap, secret, projected
//! service-account token, envFrom, service links, fsGroup, a missing configMap (`FailedMount`, the pod waits) and a
//! configMap update reaching the mounted file.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Result};
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret, Service};
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use rkubelet_tests::agent::{tail, Agent};
use rkubelet_tests::api_node::{ApiNode, NAMESPACE};
use rkubelet_tests::containerd::Containerd;
use rkubelet_tests::images::{ensure_images, BUSYBOX};
use rkubelet_tests::skip_unless_root;
use serde_json::{json, Value};

/// The lines a container wrote to stdout, from its CRI log file (`<time> <stream> <tag> <line>`).
fn container_output(logs_dir: &Path, namespace: &str, pod: &str, uid: &str, container: &str) -> String {
    let file = logs_dir.join(format!("{namespace}_{pod}_{uid}")).join(container).join("0.log");
    let text = std::fs::read_to_string(file).unwrap_or_default();
    text.lines().filter_map(|l| l.splitn(4, ' ').nth(3)).collect::<Vec<_>>().join("\n")
}

/// Waits until the container's output has a line starting with `marker`.
fn wait_output(
    logs_dir: &Path,
    pod: (&str, &str),
    container: &str,
    marker: &str,
    timeout: Duration,
    agent: &Agent,
) -> Result<String> {
    let deadline = Instant::now() + timeout;
    loop {
        let out = container_output(logs_dir, NAMESPACE, pod.0, pod.1, container);
        if out.lines().any(|l| l.starts_with(marker)) {
            return Ok(out);
        }
        if Instant::now() > deadline {
            bail!(
                "no {marker:?} from {}/{container} within {timeout:?}; output:\n{out}\nagent log:\n{}",
                pod.0,
                tail(&agent.log(), 40)
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The value of `key=` in the output (the last such line).
fn value<'a>(out: &'a str, key: &str) -> &'a str {
    let prefix = format!("{key}=");
    out.lines().rev().find_map(|l| l.strip_prefix(prefix.as_str())).unwrap_or("<missing>")
}

/// Mount points under `dir` on the host.
fn mounts_under(dir: &Path) -> Vec<String> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let dir = dir.display().to_string();
    info.lines().filter_map(|l| l.split(' ').nth(4)).filter(|p| p.starts_with(&dir)).map(str::to_owned).collect()
}

#[test]
#[cfg_attr(not_root, ignore = "needs root (containerd, mounts, network namespaces)")]
fn static_pod_volumes_and_env_are_seen_inside_the_container_and_torn_down_after_a_restart() -> Result<()> {
    skip_unless_root!(Ok(()));
    ensure_images()?;
    let containerd = Containerd::start("vol-static")?;
    let mut agent = Agent::start(&containerd)?;
    let host = tempfile::Builder::new().prefix("rkubelet-hostpath-").tempdir()?;
    let created_dir = host.path().join("created/deep");
    let host_file = host.path().join("file.txt");
    std::fs::write(&host_file, "from-the-host")?;
    let script = r#"
echo "labels=$(tr '\n' ' ' < /podinfo/labels)"
echo "name=$(cat /podinfo/name)"
echo "podinfo-mem=$(cat /podinfo/mem)"
echo "env=$POD_NAME|$MEM_MI|$CPU_M|$GREETING"
echo "args=$0"
echo "mem-mount=$(grep ' /mem ' /proc/mounts | cut -d' ' -f1,3,4)"
echo per-pod > /per-pod/x
echo "hostfile=$(cat /hostfile)"
echo from-pod > /hostdir/written
touch /hostdir-ro/x 2>/dev/null && echo ro=writable || echo ro=readonly
touch /podinfo/x 2>/dev/null && echo podinfo=writable || echo podinfo=readonly
echo "scratch-mode=$(stat -c %a /scratch)"
echo DONE
exec sleep 3600
"#;
    let manifest = json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": { "name": "vols", "namespace": NAMESPACE,
            "labels": { "app": "vols", "tier": "a b" } },
        "spec": {
            "containers": [{
                "name": "app", "image": BUSYBOX,
                "command": ["sh", "-c", script, "$(POD_NAME)-arg"],
                "env": [
                    { "name": "POD_NAME", "valueFrom": { "fieldRef": { "fieldPath": "metadata.name" } } },
                    { "name": "MEM_MI", "valueFrom": { "resourceFieldRef": { "resource": "limits.memory", "divisor": "1Mi" } } },
                    { "name": "CPU_M", "valueFrom": { "resourceFieldRef": { "resource": "requests.cpu", "divisor": "1m" } } },
                    { "name": "GREETING", "value": "hello $(POD_NAME) $$(POD_NAME)" },
                ],
                "resources": { "limits": { "memory": "64Mi", "cpu": "200m" }, "requests": { "memory": "64Mi", "cpu": "100m" } },
                "volumeMounts": [
                    { "name": "scratch", "mountPath": "/scratch" },
                    { "name": "scratch", "mountPath": "/per-pod", "subPathExpr": "$(POD_NAME)" },
                    { "name": "mem", "mountPath": "/mem" },
                    { "name": "podinfo", "mountPath": "/podinfo" },
                    { "name": "hostdir", "mountPath": "/hostdir" },
                    { "name": "hostdir", "mountPath": "/hostdir-ro", "readOnly": true },
                    { "name": "hostfile", "mountPath": "/hostfile" },
                ],
            }],
            "volumes": [
                { "name": "scratch", "emptyDir": {} },
                { "name": "mem", "emptyDir": { "medium": "Memory", "sizeLimit": "16Mi" } },
                { "name": "podinfo", "downwardAPI": { "items": [
                    { "path": "labels", "fieldRef": { "fieldPath": "metadata.labels" } },
                    { "path": "name", "fieldRef": { "fieldPath": "metadata.name" } },
                    { "path": "mem", "resourceFieldRef": { "containerName": "app", "resource": "limits.memory", "divisor": "1Mi" } },
                ] } },
                { "name": "hostdir", "hostPath": { "path": created_dir, "type": "DirectoryOrCreate" } },
                { "name": "hostfile", "hostPath": { "path": host_file, "type": "File" } },
            ],
        }
    });
    agent.write_manifest("vols.json", &manifest.to_string())?;
    // A hostPath whose type does not match: the pod waits, with kubelet's message.
    let bad = json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": { "name": "badhp", "namespace": NAMESPACE },
        "spec": {
            "containers": [{ "name": "app", "image": BUSYBOX, "command": ["sleep", "3600"],
                "volumeMounts": [{ "name": "bad", "mountPath": "/bad" }] }],
            "volumes": [{ "name": "bad", "hostPath": { "path": host_file, "type": "Directory" } }],
        }
    });
    agent.write_manifest("badhp.json", &bad.to_string())?;

    let pod = agent.wait_pod("vols", Duration::from_secs(60), |p| p["status"]["phase"] == "Running")?;
    let name = pod["metadata"]["name"].as_str().unwrap_or_default().to_owned();
    let uid = pod["metadata"]["uid"].as_str().unwrap_or_default().to_owned();
    let out = wait_output(&agent.pod_logs_dir(), (&name, &uid), "app", "DONE", Duration::from_secs(30), &agent)?;
    ensure!(value(&out, "labels") == "app=\"vols\" tier=\"a b\"", "{out}");
    ensure!(value(&out, "name") == name, "{out}");
    ensure!(value(&out, "podinfo-mem") == "64", "{out}");
    ensure!(value(&out, "env") == format!("{name}|64|100|hello {name} $(POD_NAME)"), "{out}");
    ensure!(value(&out, "args") == format!("{name}-arg"), "{out}");
    ensure!(value(&out, "mem-mount").starts_with("tmpfs tmpfs"), "{out}");
    ensure!(value(&out, "mem-mount").contains("size=16384k"), "sizeLimit: {out}");
    ensure!(value(&out, "hostfile") == "from-the-host", "{out}");
    ensure!(value(&out, "ro") == "readonly" && value(&out, "podinfo") == "readonly", "{out}");
    ensure!(value(&out, "scratch-mode") == "777", "{out}");
    ensure!(std::fs::read_to_string(created_dir.join("written"))? == "from-pod\n", "hostPath DirectoryOrCreate");
    let pod_dir = agent.root_dir().join("pods").join(&uid);
    let scratch = pod_dir.join("volumes/kubernetes.io~empty-dir/scratch");
    ensure!(std::fs::read_to_string(scratch.join(&name).join("x"))? == "per-pod\n", "subPathExpr");
    ensure!(!mounts_under(&pod_dir).is_empty(), "the memory emptyDir is a mount");

    let badhp = agent.wait_pod("badhp", Duration::from_secs(20), |p| {
        p["status"]["containerStatuses"][0]["state"]["waiting"]["reason"] == "ContainerCreating"
    })?;
    ensure!(badhp["status"]["phase"] == "Pending", "{badhp}");
    let expected = format!(
        "MountVolume.SetUp failed for volume \"bad\" : path {:?} exists but is not a directory",
        host_file.display().to_string()
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    while !agent.log().contains(&expected) {
        ensure!(Instant::now() < deadline, "no {expected:?} in the agent log:\n{}", tail(&agent.log(), 30));
        std::thread::sleep(Duration::from_millis(200));
    }

    // Removed while the agent is down: the restarted agent kills the pod and tears its volumes down.
    agent.stop()?;
    agent.remove_manifest("vols.json")?;
    agent.remove_manifest("badhp.json")?;
    agent.restart()?;
    agent.wait_pod_gone("vols", Duration::from_secs(60))?;
    let deadline = Instant::now() + Duration::from_secs(60);
    while pod_dir.exists() {
        ensure!(Instant::now() < deadline, "{} still there:\n{}", pod_dir.display(), tail(&agent.log(), 30));
        std::thread::sleep(Duration::from_millis(200));
    }
    ensure!(mounts_under(&pod_dir).is_empty(), "mounts left: {:?}", mounts_under(&pod_dir));
    ensure!(created_dir.join("written").exists(), "a hostPath is never removed");
    Ok(())
}

fn unique(prefix: &str) -> String {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.subsec_nanos());
    format!("{prefix}-{:x}", nanos.unwrap_or_default() & 0xffffff)
}

fn volume_dir(agent: &Agent, uid: &str, plugin: &str, name: &str) -> PathBuf {
    agent.root_dir().join("pods").join(uid).join("volumes").join(plugin).join(name)
}

#[test]
#[cfg_attr(not_root, ignore = "needs root (containerd, mounts, network namespaces)")]
fn config_map_secret_and_token_volumes_and_env_come_from_the_api_and_updates_reach_the_files() -> Result<()> {
    skip_unless_root!(Ok(()));
    let env = ApiNode::start("vol-api")?;
    let node = env.agent.node_name().to_owned();
    let cm_name = unique("cfg");
    let secret_name = unique("creds");
    let late_name = unique("late");
    let svc_name = unique("volsvc");
    let svc_var = svc_name.replace('-', "_").to_uppercase();

    // The Service comes first: the agent's Service informer, whose arrival nothing outside the agent can observe, has
    // it long before the pod that reads its link variables is built (the waiting pod below runs in between).
    let _: Service = env
        .create_object(json!({ "apiVersion": "v1", "kind": "Service", "metadata": { "name": svc_name },
        "spec": { "ports": [{ "name": "http", "port": 8080 }] } }))?;

    // A configMap that does not exist yet: FailedMount with kubelet's message, the pod waits, and runs once it exists.
    let waiting = unique("waits");
    let pod: Pod = env.create_object(json!({
        "apiVersion": "v1", "kind": "Pod", "metadata": { "name": waiting },
        "spec": { "nodeName": node, "tolerations": [{ "operator": "Exists" }],
            "containers": [{ "name": "app", "image": BUSYBOX, "command": ["sh", "-c", "cat /late/k; echo; exec sleep 3600"],
                "volumeMounts": [{ "name": "late", "mountPath": "/late" }] }],
            "volumes": [{ "name": "late", "configMap": { "name": late_name } }] }
    }))?;
    let uid = pod.metadata.uid.clone().unwrap_or_default();
    let message = format!("MountVolume.SetUp failed for volume \"late\" : configmap {late_name:?} not found");
    let event = env.wait_event_message(&uid, &message)?;
    ensure!(event.reason.as_deref() == Some("FailedMount") && event.type_.as_deref() == Some("Warning"), "{event:?}");
    let pending = env.wait_pod(&waiting, Duration::from_secs(5), |_| true)?;
    ensure!(pending.status.and_then(|s| s.phase).as_deref() == Some("Pending"), "the pod waits for its volume");
    let _: ConfigMap = env.create_object(json!({ "apiVersion": "v1", "kind": "ConfigMap", "metadata": { "name": late_name }, "data": { "k": "late-value" } }))?;
    env.wait_pod(&waiting, Duration::from_secs(60), |p| {
        p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running")
    })?;
    let out = wait_output(
        &env.agent.pod_logs_dir(),
        (&waiting, &uid),
        "app",
        "late-value",
        Duration::from_secs(20),
        &env.agent,
    )?;
    ensure!(out.contains("late-value"), "{out}");

    let _: ConfigMap = env
        .create_object(json!({ "apiVersion": "v1", "kind": "ConfigMap", "metadata": { "name": cm_name },
        "data": { "one": "value-1", "color": "blue", "1bad": "x" } }))?;
    let _: Secret = env
        .create_object(json!({ "apiVersion": "v1", "kind": "Secret", "metadata": { "name": secret_name },
        "stringData": { "password": "hunter2" } }))?;

    let script = r#"
echo "cfg=$(cat /cfg/one)"
echo "cfg-perm=$(stat -L -c '%g %a' /cfg/one)"
echo "secret=$(cat /secret/password)"
echo "secret-perm=$(stat -L -c '%a' /secret/password)"
echo "scratch-perm=$(stat -c '%g %a' /scratch)"
echo "sa-namespace=$(cat /var/run/secrets/kubernetes.io/serviceaccount/namespace)"
echo "sa-token-parts=$(awk -F. '{print NF}' /var/run/secrets/kubernetes.io/serviceaccount/token)"
echo "sa-ca=$(head -1 /var/run/secrets/kubernetes.io/serviceaccount/ca.crt)"
echo "env=$CM_color|$PASSWORD|${OPTIONAL-unset}|$SVC_HOST_SET|$KUBERNETES_SERVICE_PORT"
echo "svc-port=$SVC_PORT"
echo DONE
while true; do echo "loop=$(cat /cfg/one)"; sleep 1; done
"#;
    let name = unique("vols");
    let pod: Pod = env.create_object(json!({
        "apiVersion": "v1", "kind": "Pod", "metadata": { "name": name },
        "spec": {
            "nodeName": node, "tolerations": [{ "operator": "Exists" }],
            "securityContext": { "fsGroup": 2000 },
            "containers": [{
                "name": "app", "image": BUSYBOX, "command": ["sh", "-c", script],
                "envFrom": [
                    { "prefix": "CM_", "configMapRef": { "name": cm_name } },
                    { "configMapRef": { "name": cm_name } },
                ],
                "env": [
                    { "name": "PASSWORD", "valueFrom": { "secretKeyRef": { "name": secret_name, "key": "password" } } },
                    { "name": "OPTIONAL", "valueFrom": { "configMapKeyRef": { "name": unique("absent"), "key": "x", "optional": true } } },
                    { "name": "SVC_HOST_SET", "value": "$(" },
                    { "name": "SVC_PORT", "value": format!("$({svc_var}_SERVICE_PORT_HTTP)") },
                ],
                "volumeMounts": [
                    { "name": "cfg", "mountPath": "/cfg" },
                    { "name": "secret", "mountPath": "/secret" },
                    { "name": "scratch", "mountPath": "/scratch" },
                ],
            }],
            "volumes": [
                { "name": "cfg", "configMap": { "name": cm_name, "items": [{ "key": "one", "path": "one", "mode": 0o400 }] } },
                { "name": "secret", "secret": { "secretName": secret_name, "defaultMode": 0o400 } },
                { "name": "scratch", "emptyDir": {} },
            ],
        }
    }))?;
    let uid = pod.metadata.uid.clone().unwrap_or_default();
    env.wait_pod(&name, Duration::from_secs(60), |p| {
        p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running")
    })?;
    let logs = env.agent.pod_logs_dir();
    let out = wait_output(&logs, (&name, &uid), "app", "DONE", Duration::from_secs(30), &env.agent)?;
    ensure!(value(&out, "cfg") == "value-1", "{out}");
    ensure!(value(&out, "cfg-perm") == "2000 440", "fsGroup on the configMap file: {out}");
    ensure!(value(&out, "secret") == "hunter2", "{out}");
    ensure!(value(&out, "secret-perm") == "440", "{out}");
    ensure!(value(&out, "scratch-perm") == "2000 2777", "fsGroup on the emptyDir: {out}");
    ensure!(value(&out, "sa-namespace") == NAMESPACE, "{out}");
    ensure!(value(&out, "sa-token-parts") == "3", "{out}");
    ensure!(value(&out, "sa-ca") == "-----BEGIN CERTIFICATE-----", "{out}");
    ensure!(value(&out, "env") == "blue|hunter2|unset|$(|443", "{out}");
    ensure!(value(&out, "svc-port") == "8080", "service link variables: {out}");
    let event = env.wait_event_message(&uid, &format!(
        "Keys [1bad] from the EnvFrom configMap {NAMESPACE}/{cm_name} were skipped since they are considered invalid environment variable names."
    ))?;
    ensure!(event.reason.as_deref() == Some("InvalidEnvironmentVariableNames"), "{event:?}");
    let cfg_dir = volume_dir(&env.agent, &uid, "kubernetes.io~configmap", "cfg");
    let data_before = std::fs::read_link(cfg_dir.join("..data"))?;

    // An update reaches the mounted file within the sync period, through a new payload directory.
    let cms: Api<ConfigMap> = Api::namespaced(env.admin.clone(), NAMESPACE);
    let patch = json!({ "data": { "one": "value-2" } });
    env.rt.block_on(cms.patch(&cm_name, &PatchParams::default(), &Patch::Merge(&patch)))?;
    let out = wait_output(&logs, (&name, &uid), "app", "loop=value-2", Duration::from_secs(60), &env.agent)?;
    ensure!(out.contains("loop=value-2"), "{out}");
    let data_after = std::fs::read_link(cfg_dir.join("..data"))?;
    ensure!(data_before != data_after, "the ..data link moved: {data_before:?}");
    ensure!(!cfg_dir.join(&data_before).exists(), "the old payload is removed");

    // Deleting the pod tears its volumes down.
    let pods: Api<Pod> = Api::namespaced(env.admin.clone(), NAMESPACE);
    env.rt.block_on(pods.delete(&name, &DeleteParams::default().grace_period(1)))?;
    let pod_dir = env.agent.root_dir().join("pods").join(&uid);
    let deadline = Instant::now() + Duration::from_secs(60);
    while pod_dir.exists() {
        ensure!(Instant::now() < deadline, "{} still there:\n{}", pod_dir.display(), tail(&env.agent.log(), 30));
        std::thread::sleep(Duration::from_millis(250));
    }
    ensure!(mounts_under(&pod_dir).is_empty(), "mounts left: {:?}", mounts_under(&pod_dir));
    Ok(())
}

#[test]
#[cfg_attr(not_root, ignore = "needs root (containerd, mounts, network namespaces)")]
fn volumes_set_up_before_an_api_outage_keep_working_through_it() -> Result<()> {
    skip_unless_root!(Ok(()));
    // The agent reaches the API through a relay the test cuts.
    let env = ApiNode::builder("vol-outage").relay().start()?;
    let node = env.agent.node_name().to_owned();
    let cm_name = unique("outage-cfg");
    let _: ConfigMap = env
        .create_object(json!({ "apiVersion": "v1", "kind": "ConfigMap", "metadata": { "name": cm_name },
        "data": { "k": "v" } }))?;
    // Crashes every two seconds: its restarts go on only if its volumes are still ready during the outage.
    let name = unique("crasher");
    let _: Pod = env.create_object(json!({
        "apiVersion": "v1", "kind": "Pod", "metadata": { "name": name },
        "spec": { "nodeName": node, "tolerations": [{ "operator": "Exists" }],
            "containers": [{ "name": "app", "image": BUSYBOX, "command": ["sh", "-c", "cat /cfg/k; sleep 2; exit 1"],
                "volumeMounts": [{ "name": "cfg", "mountPath": "/cfg" }] }],
            "volumes": [{ "name": "cfg", "configMap": { "name": cm_name } }] }
    }))?;
    let restarts = |p: &Value| p["status"]["containerStatuses"][0]["restartCount"].as_i64().unwrap_or(0);
    // The agent's own view (its read-only /pods), which the outage does not cut off; null until it has the pod.
    let local = |env: &ApiNode| -> Result<Value> { Ok(env.agent.pod_named(&name)?.unwrap_or_default()) };
    let deadline = Instant::now() + Duration::from_secs(60);
    while restarts(&local(&env)?) < 1 {
        ensure!(Instant::now() < deadline, "no restart:\n{}", tail(&env.agent.log(), 30));
        std::thread::sleep(Duration::from_millis(200));
    }
    let before = restarts(&local(&env)?);
    // Only the outage counts: a TokenRequest for a pod created a moment ago can answer NotFound, and is then retried
    // after the volume back-off (kubelet's behaviour), each attempt a FailedMount before the cut.
    let failed_before = env.agent.log().matches("MountVolume.SetUp failed").count();
    env.relay()?.cut();
    let deadline = Instant::now() + Duration::from_secs(45);
    let mut now = before;
    while now <= before && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(500));
        now = restarts(&local(&env)?);
    }
    env.relay()?.restore();
    ensure!(now > before, "no restart during the outage ({before} before):\n{}", tail(&env.agent.log(), 40));
    let failed_mounts = env.agent.log().matches("MountVolume.SetUp failed").count().saturating_sub(failed_before);
    ensure!(failed_mounts == 0, "{failed_mounts} FailedMount during the outage:\n{}", tail(&env.agent.log(), 40));
    Ok(())
}

#[test]
#[cfg_attr(not_root, ignore = "needs root (containerd, mounts, network namespaces)")]
fn a_finished_pods_volumes_are_torn_down_while_the_pod_stays() -> Result<()> {
    skip_unless_root!(Ok(()));
    ensure_images()?;
    let containerd = Containerd::start("vol-finished")?;
    let agent = Agent::start(&containerd)?;
    let manifest = json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": { "name": "once", "namespace": NAMESPACE },
        "spec": {
            "restartPolicy": "Never",
            "containers": [{ "name": "app", "image": BUSYBOX, "command": ["sh", "-c", "echo hi > /mem/x; cat /mem/x"],
                "volumeMounts": [{ "name": "mem", "mountPath": "/mem" }] }],
            "volumes": [{ "name": "mem", "emptyDir": { "medium": "Memory" } }],
        }
    });
    agent.write_manifest("once.json", &manifest.to_string())?;
    let pod = agent.wait_pod("once", Duration::from_secs(60), |p| p["status"]["phase"] == "Succeeded")?;
    let uid = pod["metadata"]["uid"].as_str().unwrap_or_default().to_owned();
    let pod_dir = agent.root_dir().join("pods").join(&uid);
    let deadline = Instant::now() + Duration::from_secs(30);
    while pod_dir.join("volumes").exists() {
        ensure!(Instant::now() < deadline, "volumes of the finished pod still there:\n{}", tail(&agent.log(), 30));
        std::thread::sleep(Duration::from_millis(200));
    }
    ensure!(mounts_under(&pod_dir).is_empty(), "mounts left: {:?}", mounts_under(&pod_dir));
    // Three more seconds in which nothing may happen: a set-up again after the teardown has no event to wait for.
    std::thread::sleep(Duration::from_secs(3));
    ensure!(!pod_dir.join("volumes").exists(), "set up again after the pod finished");
    let pod = agent.pod_named(pod["metadata"]["name"].as_str().unwrap_or_default())?;
    ensure!(pod.is_some_and(|p| p["status"]["phase"] == "Succeeded"), "the pod itself stays");
    Ok(())
}
