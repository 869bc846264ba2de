//! The Go kubelet as the oracle: on the kit's real control plane, the same pods bound to a Go kubelet node and to an
//! rkubelet node (each on its own containerd), and once both settle, the kubelet-decided parts of their statuses and
//! their events must be the same. Needs `RKUBELET_E2E_KUBECONFIG` and `RKUBELET_K8S_KIT` (tests/run.sh sets them).

use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Result};
use k8s_openapi::api::core::v1::{ConfigMap, ContainerStatus, Event, Namespace, Pod};
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use rkubelet_tests::agent::{tail, Agent};
use rkubelet_tests::apiserver::Cluster;
use rkubelet_tests::containerd::{print_skip, Containerd};
use rkubelet_tests::images::{ensure_images, BUSYBOX};
use rkubelet_tests::oracle::{diff, event_view, go_kubelet_missing, pod_view, GoKubelet, Normaliser};
use rkubelet_tests::skip_unless_root;
use serde_json::{json, Value};

type Settled = fn(&Pod, &[Event]) -> bool;

struct Scenario {
    name: &'static str,
    spec: Value,
    /// Restarts on a back-off for as long as it runs: restart counts compare as "more than zero".
    looping: bool,
    /// Deleted once running; only its events are compared, after it is gone.
    delete: bool,
    settled: Settled,
}

fn container<'a>(p: &'a Pod, name: &str) -> Option<&'a ContainerStatus> {
    let s = p.status.as_ref()?;
    s.container_statuses.iter().chain(s.init_container_statuses.iter()).flatten().find(|c| c.name == name)
}

fn running(p: &Pod, name: &str) -> bool {
    container(p, name).and_then(|c| c.state.as_ref()).is_some_and(|s| s.running.is_some())
}

fn terminated(p: &Pod, name: &str) -> bool {
    container(p, name).and_then(|c| c.state.as_ref()).is_some_and(|s| s.terminated.is_some())
}

fn waiting(p: &Pod, name: &str, reason: &str) -> bool {
    container(p, name)
        .and_then(|c| c.state.as_ref()?.waiting.as_ref())
        .is_some_and(|w| w.reason.as_deref() == Some(reason))
}

fn has_event(events: &[Event], reason: &str) -> bool {
    events.iter().any(|e| e.reason.as_deref() == Some(reason))
}

fn phase(p: &Pod) -> &str {
    p.status.as_ref().and_then(|s| s.phase.as_deref()).unwrap_or_default()
}

fn app(command: &str) -> Value {
    json!({ "name": "app", "image": BUSYBOX, "command": ["sh", "-c", command] })
}

/// Long log lines (the Go kubelet prints whole container specs) cut to a readable width.
fn clip_lines(log: &str) -> String {
    log.lines()
        .map(|l| match l.char_indices().nth(240) {
            Some((at, _)) => format!("{}…", &l[..at]),
            None => l.to_string(),
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn with(mut base: Value, extra: Value) -> Value {
    if let (Some(b), Value::Object(e)) = (base.as_object_mut(), extra) {
        b.extend(e);
    }
    base
}

fn data_volume() -> Value {
    json!([{ "name": "data", "emptyDir": {} }])
}

fn data_mount() -> Value {
    json!([{ "name": "data", "mountPath": "/data" }])
}

/// The first run of the container fails its liveness probe, the second passes it (`/data` outlives the restart).
fn liveness(first: &str, second: &str, probe: Value) -> Value {
    let script = format!("if [ -e /data/ran ]; then {second}; fi; touch /data/ran; {first}");
    json!({
        "volumes": data_volume(),
        "containers": [with(app(&script), json!({
            "volumeMounts": data_mount(),
            // The delay keeps the first probe of a run after the server in it listens, and the timeout keeps a slow
            // machine's probe from failing as a time-out: either would change the Unhealthy message on one side only.
            "livenessProbe": with(probe, json!({
                "periodSeconds": 1, "failureThreshold": 1, "initialDelaySeconds": 2, "timeoutSeconds": 10,
            })),
        }))],
    })
}

fn restarted_once_and_running(p: &Pod, _: &[Event]) -> bool {
    container(p, "app").is_some_and(|c| c.restart_count == 1 && c.ready) && running(p, "app")
}

fn scenarios() -> Vec<Scenario> {
    let not_ready = |p: &Pod, e: &[Event]| running(p, "app") && has_event(e, "Unhealthy");
    vec![
        Scenario {
            name: "readiness-exec",
            spec: json!({ "containers": [with(app("exec sleep 600"), json!({
                "readinessProbe": {
                    "exec": { "command": ["sh", "-c", "echo not ready; exit 1"] }, "periodSeconds": 1, "timeoutSeconds": 10,
                },
            }))]}),
            looping: false,
            delete: false,
            settled: not_ready,
        },
        Scenario {
            name: "readiness-http",
            spec: json!({ "containers": [with(app("exec httpd -f -p 8080 -h /tmp"), json!({
                "readinessProbe": {
                    "httpGet": { "path": "/ready", "port": 8080 }, "periodSeconds": 1, "timeoutSeconds": 10,
                    "initialDelaySeconds": 2,
                },
            }))]}),
            looping: false,
            delete: false,
            settled: not_ready,
        },
        Scenario {
            name: "liveness-exec",
            spec: liveness(
                "exec sleep 600",
                "touch /tmp/healthy",
                json!({ "exec": { "command": ["cat", "/tmp/healthy"] } }),
            ),
            looping: false,
            delete: false,
            settled: restarted_once_and_running,
        },
        Scenario {
            name: "liveness-http",
            spec: liveness(
                "exec httpd -f -p 8080 -h /tmp",
                "echo ok > /tmp/healthz",
                json!({ "httpGet": { "path": "/healthz", "port": 8080 } }),
            ),
            looping: false,
            delete: false,
            settled: restarted_once_and_running,
        },
        Scenario {
            name: "liveness-tcp",
            spec: liveness("exec sleep 600", "exec httpd -f -p 8080 -h /tmp", json!({ "tcpSocket": { "port": 8080 } })),
            looping: false,
            delete: false,
            settled: restarted_once_and_running,
        },
        Scenario {
            name: "startup-gating",
            spec: json!({ "containers": [with(app("sleep 3; touch /tmp/started; exec sleep 600"), json!({
                // As in liveness(): a loaded machine's exec past kubelet's 1 s default would read "timed out".
                "startupProbe": {
                    "exec": { "command": ["cat", "/tmp/started"] }, "periodSeconds": 1, "failureThreshold": 30,
                    "timeoutSeconds": 10,
                },
                "readinessProbe": { "exec": { "command": ["true"] }, "periodSeconds": 1, "timeoutSeconds": 10 },
            }))]}),
            looping: false,
            delete: false,
            settled: |p, _| container(p, "app").is_some_and(|c| c.started == Some(true) && c.ready),
        },
        Scenario {
            name: "poststart-failure",
            spec: json!({ "restartPolicy": "Never", "containers": [with(app("exec sleep 600"), json!({
                "lifecycle": { "postStart": { "exec": { "command": ["sh", "-c", "echo boom; exit 1"] } } },
            }))]}),
            looping: false,
            delete: false,
            settled: |p, _| terminated(p, "app") && phase(p) == "Failed",
        },
        Scenario {
            name: "prestop-delete",
            spec: json!({ "containers": [with(app("exec sleep 600"), json!({
                "lifecycle": { "preStop": { "exec": { "command": ["sh", "-c", "echo bye; exit 3"] } } },
            }))]}),
            looping: false,
            delete: true,
            settled: |p, _| running(p, "app"),
        },
        Scenario {
            name: "termination-message",
            spec: json!({ "restartPolicy": "Never", "containers": [
                with(app("echo -n bye > /dev/termination-log"), json!({
                    "name": "nonroot", "securityContext": { "runAsUser": 1000 },
                })),
                with(app("echo from logs; exit 1"), json!({
                    "name": "fallback", "terminationMessagePolicy": "FallbackToLogsOnError",
                })),
            ]}),
            looping: false,
            delete: false,
            settled: |p, _| terminated(p, "nonroot") && terminated(p, "fallback") && phase(p) == "Failed",
        },
        Scenario {
            name: "active-deadline",
            spec: json!({ "activeDeadlineSeconds": 5, "containers": [app("exec sleep 600")] }),
            looping: false,
            delete: false,
            settled: |p, _| phase(p) == "Failed" && terminated(p, "app"),
        },
        Scenario {
            name: "sidecar",
            spec: json!({
                "initContainers": [with(app("exec sleep 600"), json!({ "name": "sidecar", "restartPolicy": "Always" }))],
                "containers": [app("exec sleep 600")],
            }),
            looping: false,
            delete: false,
            settled: |p, _| running(p, "sidecar") && (running(p, "app") || waiting(p, "app", "PodInitializing")),
        },
        Scenario {
            name: "config-error",
            spec: json!({ "containers": [with(app("exec sleep 600"), json!({
                "env": [{ "name": "X", "valueFrom": { "configMapKeyRef": { "name": "cfg", "key": "missing" } } }],
            }))]}),
            looping: true,
            delete: false,
            settled: |p, e| waiting(p, "app", "CreateContainerConfigError") && has_event(e, "Failed"),
        },
        Scenario {
            name: "create-error",
            spec: json!({ "containers": [with(app("exec sleep 600"), json!({
                "securityContext": { "seccompProfile": { "type": "Localhost", "localhostProfile": "missing.json" } },
            }))]}),
            looping: true,
            delete: false,
            settled: |p, e| {
                (waiting(p, "app", "CreateContainerError") || waiting(p, "app", "RunContainerError"))
                    && has_event(e, "Failed")
            },
        },
        // kubelet's verifyRunAsNonRoot table (pkg/kubelet/kuberuntime/security_context_others.go). The test images
        // have no image with a non-numeric user, so that row is covered by unit tests only.
        non_root_refused("nonroot-pod-uid0", json!({ "runAsNonRoot": true, "runAsUser": 0 }), json!({})),
        non_root_refused("nonroot-ctr-uid0", json!({}), json!({ "runAsNonRoot": true, "runAsUser": 0 })),
        non_root_refused(
            "nonroot-ctr-over-pod",
            json!({ "runAsNonRoot": true, "runAsUser": 1000 }),
            json!({ "runAsUser": 0 }),
        ),
        non_root_refused("nonroot-image-root", json!({ "runAsNonRoot": true }), json!({})),
        Scenario {
            name: "nonroot-ctr-uid-wins",
            spec: json!({
                "restartPolicy": "Never",
                "securityContext": { "runAsNonRoot": true, "runAsUser": 0 },
                "containers": [with(app("id -u"), json!({ "securityContext": { "runAsUser": 1000 } }))],
            }),
            looping: false,
            delete: false,
            settled: |p, _| terminated(p, "app") && phase(p) == "Succeeded",
        },
        Scenario {
            name: "start-error-backoff",
            spec: json!({ "containers": [{ "name": "app", "image": BUSYBOX, "command": ["/no/such/binary"] }] }),
            looping: true,
            delete: false,
            settled: |p, e| waiting(p, "app", "CrashLoopBackOff") && has_event(e, "BackOff"),
        },
    ]
}

/// A container that `runAsNonRoot` must keep from starting: it would print its uid.
fn non_root_refused(name: &'static str, pod: Value, container: Value) -> Scenario {
    Scenario {
        name,
        spec: json!({
            "securityContext": pod,
            "containers": [with(app("id -u"), json!({ "securityContext": container }))],
        }),
        looping: true,
        delete: false,
        settled: |p, e| waiting(p, "app", "CreateContainerConfigError") && has_event(e, "Failed"),
    }
}

/// One node under comparison: its namespace, its root dir (named in some messages), the admin client.
struct Side {
    label: &'static str,
    node: String,
    namespace: String,
    root_dir: String,
}

impl Side {
    fn pods(&self, admin: &kube::Client) -> Api<Pod> {
        Api::namespaced(admin.clone(), &self.namespace)
    }
}

struct Oracle {
    rt: tokio::runtime::Runtime,
    admin: kube::Client,
}

impl Oracle {
    fn get(&self, side: &Side, name: &str) -> Result<Option<(Pod, Vec<Event>)>> {
        let Some(pod) = self.rt.block_on(side.pods(&self.admin).get_opt(name))? else { return Ok(None) };
        let events: Api<Event> = Api::namespaced(self.admin.clone(), &side.namespace);
        let list =
            self.rt.block_on(events.list(&ListParams::default().fields(&format!("involvedObject.name={name}"))))?;
        Ok(Some((pod, list.items)))
    }

    fn events(&self, side: &Side, name: &str) -> Result<Vec<Event>> {
        let events: Api<Event> = Api::namespaced(self.admin.clone(), &side.namespace);
        let fields = format!("involvedObject.name={name}");
        Ok(self.rt.block_on(events.list(&ListParams::default().fields(&fields)))?.items)
    }

    fn normaliser(&self, side: &Side, pod: &Pod) -> Normaliser {
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        Normaliser {
            replace: vec![
                (side.namespace.clone(), "NS".into()),
                (uid, "UID".into()),
                (side.root_dir.clone(), "ROOT".into()),
                (side.node.clone(), "NODE".into()),
            ],
        }
    }

    /// The view of pod `name` on `side` once `settled` holds and it stays the same for two seconds.
    fn settle(&self, side: &Side, s: &Scenario, deadline: Instant) -> Result<Value> {
        let mut last: Option<Value> = None;
        let mut stable_since = Instant::now();
        loop {
            let seen = self.get(side, s.name)?;
            if let Some((pod, events)) = &seen {
                if (s.settled)(pod, events) {
                    let n = self.normaliser(side, pod);
                    let view = json!({ "status": pod_view(&n, pod, s.looping), "events": event_view(&n, events) });
                    if last.as_ref() != Some(&view) {
                        last = Some(view);
                        stable_since = Instant::now();
                    } else if stable_since.elapsed() >= Duration::from_secs(2) {
                        return Ok(view);
                    }
                } else {
                    last = None;
                }
            }
            if Instant::now() > deadline {
                let status = seen.map(|(p, _)| serde_json::to_string_pretty(&p.status).unwrap_or_default());
                bail!("{} on {}: not settled in time; last status: {}", s.name, side.label, status.unwrap_or_default());
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    fn delete_and_wait_gone(&self, side: &Side, s: &Scenario, deadline: Instant) -> Result<Value> {
        self.settle(side, s, deadline)?;
        let pods = side.pods(&self.admin);
        let pod = self.rt.block_on(pods.get(s.name))?;
        self.rt.block_on(pods.delete(s.name, &DeleteParams::default()))?;
        while self.rt.block_on(pods.get_opt(s.name))?.is_some() {
            if Instant::now() > deadline {
                bail!("{} on {}: still there after its deletion", s.name, side.label);
            }
            std::thread::sleep(Duration::from_millis(250));
        }
        // The kubelet's last events are posted asynchronously.
        std::thread::sleep(Duration::from_secs(2));
        let n = self.normaliser(side, &pod);
        let events = self.events(side, s.name)?;
        Ok(json!({ "events": event_view(&n, &events) }))
    }
}

fn unique(prefix: &str) -> String {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.subsec_nanos());
    format!("{prefix}-{:x}", nanos.unwrap_or_default() & 0xffffff)
}

#[test]
#[cfg_attr(not_root, ignore = "needs root (containerd, mounts, network namespaces)")]
#[cfg_attr(
    all(not(kit), not(not_root)),
    ignore = "needs the kit's control plane and its Go kubelet (tests/run.sh starts them)"
)]
fn pod_statuses_and_events_match_the_go_kubelet() -> Result<()> {
    skip_unless_root!(Ok(()));
    let cluster = Cluster::from_env()?;
    if !cluster.is_real() {
        print_skip("oracle", &"needs the kit's real control plane (RKUBELET_E2E_KUBECONFIG)");
        return Ok(());
    }
    if let Some(why) = go_kubelet_missing(cluster.kit()) {
        print_skip("oracle", &why);
        return Ok(());
    }
    let kit = cluster.kit().map(ToOwned::to_owned).unwrap_or_default();
    ensure_images()?;
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    let admin = rt.block_on(cluster.admin_client())?;
    let oracle = Oracle { rt, admin };

    let dir = tempfile::Builder::new().prefix("rkubelet-oracle-").tempdir()?;
    let go_node = "oracle-go".to_owned();
    let go = GoKubelet::start(&kit, "oracle-go", &go_node)?;
    let containerd = Containerd::start("oracle-rk")?;
    let config =
        format!("cniConfDir: {}\ncniBridgeName: {}\n", containerd.cni_conf_dir().display(), containerd.bridge());
    let agent = Agent::new(&containerd, &config)?;
    let kubeconfig = cluster.node_kubeconfig(dir.path(), agent.node_name())?;
    let agent = agent.with_args(["--kubeconfig".to_owned(), kubeconfig.display().to_string()]).started()?;

    let home = std::env::var("K8S_HOME").unwrap_or_else(|_| "/var/lib/k8s-kit".to_owned());
    let reference = Side {
        label: "Go kubelet",
        node: go_node.clone(),
        namespace: unique("oracle-go"),
        root_dir: format!("{home}/kubelet/{go_node}/root"),
    };
    let ours = Side {
        label: "rkubelet",
        node: agent.node_name().to_owned(),
        namespace: unique("oracle-rk"),
        root_dir: agent.root_dir().display().to_string(),
    };
    let result = run(&oracle, &[&reference, &ours]);
    for side in [&reference, &ours] {
        let namespaces: Api<Namespace> = Api::all(oracle.admin.clone());
        let _ = oracle.rt.block_on(namespaces.delete(&side.namespace, &DeleteParams::default()));
    }
    if result.is_err() {
        eprintln!("--- Go kubelet log tail ---\n{}", clip_lines(&go.log_tail(12)));
        eprintln!("--- rkubelet log tail ---\n{}", clip_lines(&tail(&agent.log(), 12)));
        let kept = std::env::temp_dir().join(format!("{}.log", ours.namespace));
        if std::fs::copy(agent.log_path(), &kept).is_ok() {
            eprintln!("rkubelet's whole log: {}", kept.display());
        }
    }
    drop(agent);
    drop(containerd);
    drop(go);
    // Neither node stays behind to be scheduled to (the kit's conformance run wants a single node).
    for node in [&reference.node, &ours.node] {
        let nodes: Api<k8s_openapi::api::core::v1::Node> = Api::all(oracle.admin.clone());
        let _ = oracle.rt.block_on(nodes.delete(node, &DeleteParams::default()));
    }
    result
}

/// Pulls the image on both nodes first: a dozen pods pulling at once on a fresh node exceed kubelet's registry pull
/// rate limit (`registryPullQPS`), which would fail some of them by chance.
fn warm_up(oracle: &Oracle, sides: &[&Side; 2]) -> Result<()> {
    for side in sides {
        let pod: Pod = serde_json::from_value(json!({
            "metadata": { "name": "warm-up" },
            "spec": {
                "nodeName": side.node, "restartPolicy": "Never", "automountServiceAccountToken": false,
                "tolerations": [{ "operator": "Exists" }], "containers": [app("true")],
            }
        }))?;
        oracle.rt.block_on(side.pods(&oracle.admin).create(&PostParams::default(), &pod))?;
    }
    let deadline = Instant::now() + Duration::from_secs(90);
    for side in sides {
        while oracle.rt.block_on(side.pods(&oracle.admin).get("warm-up")).map(|p| phase(&p) != "Succeeded")? {
            if Instant::now() > deadline {
                bail!("the warm-up pod did not complete on {}", side.label);
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }
    Ok(())
}

fn run(oracle: &Oracle, sides: &[&Side; 2]) -> Result<()> {
    let scenarios = scenarios();
    for side in sides {
        let ns: Namespace = serde_json::from_value(json!({ "metadata": { "name": side.namespace } }))?;
        oracle.rt.block_on(Api::<Namespace>::all(oracle.admin.clone()).create(&PostParams::default(), &ns))?;
        let cm: ConfigMap =
            serde_json::from_value(json!({ "metadata": { "name": "cfg" }, "data": { "present": "1" } }))?;
        oracle
            .rt
            .block_on(Api::namespaced(oracle.admin.clone(), &side.namespace).create(&PostParams::default(), &cm))?;
        // The namespace's default service account comes from the controller-manager; pods are refused without it.
        let accounts: Api<k8s_openapi::api::core::v1::ServiceAccount> =
            Api::namespaced(oracle.admin.clone(), &side.namespace);
        let deadline = Instant::now() + Duration::from_secs(30);
        while oracle.rt.block_on(accounts.get_opt("default"))?.is_none() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    warm_up(oracle, sides)?;
    for s in &scenarios {
        for side in sides {
            let spec = with(
                s.spec.clone(),
                json!({
                    "nodeName": side.node,
                    "automountServiceAccountToken": false,
                    "terminationGracePeriodSeconds": 2,
                    "tolerations": [{ "operator": "Exists" }],
                }),
            );
            let pod: Pod = serde_json::from_value(json!({ "metadata": { "name": s.name }, "spec": spec }))?;
            let created = oracle.rt.block_on(side.pods(&oracle.admin).create(&PostParams::default(), &pod))?;
            let init = created.spec.as_ref().and_then(|p| p.init_containers.as_ref());
            if s.name == "sidecar"
                && side.label == sides[0].label
                && init.into_iter().flatten().all(|c| c.restart_policy.is_none())
            {
                // v1.28's SidecarContainers gate is alpha: an API server without it drops the field.
                print_skip(
                    "oracle sidecar",
                    &"the API server dropped the init container's restartPolicy (SidecarContainers off): \
                      compared as a plain init container",
                );
            }
        }
    }
    let deadline = Instant::now() + Duration::from_secs(150);
    // Each scenario on its own thread: the pods run side by side anyway, this only overlaps the waiting.
    let outcomes: Vec<(Result<Value>, Result<Value>)> = std::thread::scope(|scope| {
        let handles: Vec<_> = scenarios
            .iter()
            .map(|s| {
                scope.spawn(move || {
                    let view = |side: &Side| {
                        if s.delete {
                            oracle.delete_and_wait_gone(side, s, deadline)
                        } else {
                            oracle.settle(side, s, deadline)
                        }
                    };
                    (view(sides[0]), view(sides[1]))
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|_| (Err(anyhow!("panicked")), Err(anyhow!("panicked")))))
            .collect()
    });
    let mut table = String::new();
    let mut failures = Vec::new();
    for (s, outcome) in scenarios.iter().zip(outcomes) {
        match outcome {
            (Ok(reference), Ok(ours)) if reference == ours => table.push_str(&format!("{:<22} matched\n", s.name)),
            (Ok(reference), Ok(ours)) => {
                table.push_str(&format!("{:<22} DIFFERS\n", s.name));
                failures.push(format!("{} (- Go kubelet, + rkubelet):\n{}", s.name, diff(&reference, &ours)));
            }
            (reference, ours) => {
                table.push_str(&format!("{:<22} ERROR\n", s.name));
                let show = |r: Result<Value>| match r {
                    Ok(v) => serde_json::to_string_pretty(&v).unwrap_or_default(),
                    Err(e) => format!("{e:#}"),
                };
                failures.push(format!("{}:\nGo kubelet: {}\nrkubelet: {}", s.name, show(reference), show(ours)));
            }
        }
    }
    eprintln!("{table}");
    // The differences first: a runner that keeps only part of the output should keep these.
    for f in &failures {
        eprintln!("{f}");
    }
    if !failures.is_empty() {
        bail!("rkubelet differs from the Go kubelet:\n{}", failures.join("\n"));
    }
    Ok(())
}
