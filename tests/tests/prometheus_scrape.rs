//! A real Prometheus (Debian's `prometheus`, run as a child with its own storage and port) scrapes the agent's
//! kubelet server on :10250 over HTTPS with a bearer token, as cluster monitoring scrapes kubelets: `/metrics`,
//! `/metrics/cadvisor` and `/metrics/resource`, with `authorization.credentials_file` holding a token the agent has
//! reviewed (TokenReview against the API-server double; anonymous access off, so a scrape without the token fails).
//! The test then asks Prometheus PromQL questions about the node's pods. With the kit, a second test does the same
//! with a ServiceAccount token that the real API server reviews and authorises through RBAC.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use k8s_openapi::api::authentication::v1::TokenRequest;
use k8s_openapi::api::core::v1::ServiceAccount;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};
use kube::api::{Api, DeleteParams, PostParams};
use rkubelet_tests::agent::{free_port, http_get, running, tail, Agent};
use rkubelet_tests::api_node::{ApiNode, NAMESPACE};
use rkubelet_tests::apiserver::{ApiServer, Cluster};
use rkubelet_tests::containerd::{print_skip, Containerd};
use rkubelet_tests::images::{ensure_images, BUSYBOX};
use rkubelet_tests::skip_unless_root;
use serde_json::{json, Value};

const PROMETHEUS: &str = "/usr/bin/prometheus";
const TOKEN: &str = "prometheus-scrape-token-0123456789";
const PODS: [&str; 2] = ["busy-a", "busy-b"];

/// The Prometheus child, killed and reaped on drop.
struct Prometheus {
    child: Child,
    port: u16,
    dir: tempfile::TempDir,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Prometheus {
    /// Scrape jobs `(name, path, bearer token)` against the kubelet server on `kubelet_port`.
    fn start(kubelet_port: u16, jobs: &[(&str, &str, Option<&str>)]) -> Result<Prometheus> {
        let dir = tempfile::Builder::new().prefix("rkubelet-prometheus-").tempdir()?;
        let mut config = String::from("global:\n  scrape_interval: 2s\n  scrape_timeout: 2s\nscrape_configs:\n");
        for (name, path, token) in jobs {
            let auth = match token {
                Some(token) => {
                    let file = dir.path().join(format!("{name}.token"));
                    std::fs::write(&file, token)?;
                    format!("    authorization:\n      credentials_file: {}\n", file.display())
                }
                None => String::new(),
            };
            config.push_str(&format!(
                "  - job_name: {name}\n    metrics_path: {path}\n    scheme: https\n    tls_config:\n      \
                 insecure_skip_verify: true\n{auth}    static_configs:\n      - targets: ['127.0.0.1:{kubelet_port}']\n"
            ));
        }
        let config_file = dir.path().join("prometheus.yml");
        std::fs::write(&config_file, config)?;
        let port = free_port()?;
        let log = std::fs::File::create(dir.path().join("prometheus.log"))?;
        let child = Command::new(PROMETHEUS)
            .arg(format!("--config.file={}", config_file.display()))
            .arg(format!("--storage.tsdb.path={}", dir.path().join("data").display()))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("spawn prometheus")?;
        Ok(Prometheus { child, port, dir })
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("prometheus.log")).unwrap_or_default()
    }

    /// An instant query: the result vector's (labels, value) pairs.
    fn query(&self, promql: &str) -> Result<Vec<(Value, f64)>> {
        let (status, body) = http_get(self.port, &format!("/api/v1/query?query={}", encode(promql)))?;
        ensure!(status == 200, "query {promql}: HTTP {status}: {body}");
        let v: Value = serde_json::from_str(&body)?;
        ensure!(v["status"] == "success", "query {promql}: {body}");
        let result = v["data"]["result"].as_array().cloned().unwrap_or_default();
        Ok(result
            .into_iter()
            .map(|r| {
                let value = r["value"][1].as_str().and_then(|s| s.parse().ok()).unwrap_or(f64::NAN);
                (r["metric"].clone(), value)
            })
            .collect())
    }

    /// Polls `promql` until `check` accepts its result; returns that result.
    fn wait(
        &self,
        promql: &str,
        timeout: Duration,
        check: impl Fn(&[(Value, f64)]) -> bool,
    ) -> Result<Vec<(Value, f64)>> {
        let deadline = Instant::now() + timeout;
        let mut last = Err(anyhow::anyhow!("not asked yet"));
        while Instant::now() < deadline {
            last = self.query(promql);
            if let Ok(r) = &last {
                if check(r) {
                    return Ok(r.clone());
                }
            }
            std::thread::sleep(Duration::from_millis(500));
        }
        bail!(
            "{promql}: not as expected within {timeout:?}; last answer: {last:?}\nprometheus log:\n{}",
            tail(&self.log(), 20)
        )
    }
}

/// Percent-encoding of a query parameter.
fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn busy_pod(name: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}}}\nspec:\n  containers:\n  - name: app\n    image: {BUSYBOX}\n    \
         command: [sh, -c, 'while true; do i=0; while [ $i -lt 3000 ]; do i=$((i+1)); done; sleep 0.2; done']\n"
    )
}

#[test]
#[cfg_attr(not_root, ignore = "needs root (containerd, mounts, network namespaces)")]
fn prometheus_scrapes_the_kubelet_server_with_a_bearer_token_and_answers_per_pod() -> Result<()> {
    skip_unless_root!(Ok(()));
    if !Path::new(PROMETHEUS).exists() {
        print_skip("prometheus scrape", &"no /usr/bin/prometheus (tests/scripts/install-deps.sh installs it)");
        return Ok(());
    }
    ensure_images()?;
    let api = ApiServer::start()?;
    api.add_token(TOKEN, "prometheus", &["monitoring"]);
    let containerd = Containerd::start("prom-scrape")?;
    let dir = tempfile::Builder::new().prefix("rkubelet-prom-scrape-").tempdir()?;
    let config = "address: 127.0.0.1\nauthentication: {anonymous: {enabled: false}, webhook: {enabled: true}}\n\
                  authorization: {mode: AlwaysAllow}\n";
    let agent = Agent::new(&containerd, config)?;
    let kubeconfig = api.node_kubeconfig(dir.path(), agent.node_name())?;
    let agent = agent.with_args(["--kubeconfig".to_owned(), kubeconfig.display().to_string()]).started()?;
    for name in PODS {
        agent.write_manifest(&format!("{name}.yaml"), &busy_pod(name))?;
    }
    for name in PODS {
        agent.wait_pod(name, Duration::from_secs(90), |p| running(p, "app"))?;
    }
    let full = |name: &str| format!("{name}-{}", agent.node_name());

    let prometheus = Prometheus::start(
        agent.server_port(),
        &[
            ("kubelet", "/metrics", Some(TOKEN)),
            ("cadvisor", "/metrics/cadvisor", Some(TOKEN)),
            ("resource", "/metrics/resource", Some(TOKEN)),
            ("anonymous", "/metrics", None),
        ],
    )?;
    let scrape = Duration::from_secs(60);
    for job in ["kubelet", "cadvisor", "resource"] {
        prometheus.wait(&format!("up{{job=\"{job}\"}}"), scrape, |r| r.len() == 1 && r[0].1 == 1.0)?;
    }
    // Without the token the kubelet server answers 401: the scrape fails.
    prometheus.wait("up{job=\"anonymous\"}", scrape, |r| r.len() == 1 && r[0].1 == 0.0)?;

    // cAdvisor's series: one working set per pod's container, with kubelet's labels.
    for name in PODS {
        let q =
            format!("container_memory_working_set_bytes{{job=\"cadvisor\",pod=\"{}\",container=\"app\"}}", full(name));
        let r = prometheus.wait(&q, scrape, |r| r.len() == 1)?;
        let labels = &r[0].0;
        ensure!(r[0].1 > 0.0, "{q}: {r:?}");
        ensure!(labels["namespace"] == "default", "{q}: namespace: {labels}");
        let image = labels["image"].as_str().unwrap_or_default();
        ensure!(image.contains("busybox"), "{q}: image: {labels}");
        // The cgroup is found on the unified hierarchy only; Prometheus drops the label when it is empty.
        let id = labels.get("id").and_then(Value::as_str).unwrap_or("/kubepods");
        ensure!(id.starts_with("/kubepods"), "{q}: id: {labels}");
        ensure!(labels["name"].as_str().is_some_and(|n| n.len() == 64), "{q}: the container ID as name: {labels}");
    }
    // A rate over the cumulative CPU counter answers for each pod.
    let cpu = prometheus.wait(
        "sum by (pod) (rate(container_cpu_usage_seconds_total{job=\"cadvisor\",container!=\"\"}[1m]))",
        scrape,
        |r| PODS.iter().all(|n| r.iter().any(|(l, v)| l["pod"] == full(n).as_str() && *v > 0.0)),
    )?;
    eprintln!("CPU rate per pod: {:?}", cpu.iter().map(|(l, v)| (l["pod"].clone(), *v)).collect::<Vec<_>>());

    // kubelet's own families, with their types kept through Prometheus.
    prometheus.wait("kubelet_running_pods", scrape, |r| r.len() == 1 && r[0].1 >= PODS.len() as f64)?;
    prometheus.wait("kubelet_pod_start_duration_seconds_count", scrape, |r| r.len() == 1 && r[0].1 >= 2.0)?;
    let quantile = prometheus.wait(
        "histogram_quantile(0.9, sum by (le, operation_type) (kubelet_runtime_operations_duration_seconds_bucket{operation_type=\"run_podsandbox\"}))",
        scrape,
        |r| r.len() == 1 && r[0].1.is_finite(),
    )?;
    eprintln!("run_podsandbox p90: {:?}", quantile[0].1);
    prometheus.wait("kubelet_running_containers{container_state=\"running\"}", scrape, |r| {
        r.len() == 1 && r[0].1 >= PODS.len() as f64
    })?;
    // metrics-server's series on /metrics/resource.
    for name in PODS {
        let q = format!("container_cpu_usage_seconds_total{{job=\"resource\",pod=\"{}\"}}", full(name));
        prometheus.wait(&q, scrape, |r| r.len() == 1)?;
    }
    drop(prometheus);
    for name in PODS {
        agent.remove_manifest(&format!("{name}.yaml"))?;
    }
    for name in PODS {
        agent.wait_pod_gone(name, Duration::from_secs(60))?;
    }
    Ok(())
}

/// Prometheus as cluster monitoring deploys it: its ServiceAccount's token, reviewed by the real API server
/// (TokenReview) and authorised by it (SubjectAccessReview on `nodes/metrics`, granted by a ClusterRole), with the
/// agent's webhook authentication and authorisation as kubeadm configures them. A token of an account without the
/// role is authenticated and then refused (403), so its scrape fails. Needs the kit: the API-server double answers
/// no SubjectAccessReview.
#[test]
#[cfg_attr(not_root, ignore = "needs root (containerd, mounts, network namespaces)")]
fn prometheus_with_a_service_account_token_is_reviewed_and_authorised_by_the_api_server() -> Result<()> {
    skip_unless_root!(Ok(()));
    if !Path::new(PROMETHEUS).exists() {
        print_skip("prometheus scrape (RBAC)", &"no /usr/bin/prometheus (tests/scripts/install-deps.sh installs it)");
        return Ok(());
    }
    let cluster = Cluster::from_env()?;
    if !cluster.is_real() {
        print_skip("prometheus scrape (RBAC)", &"no kit: the API-server double answers no SubjectAccessReview");
        return Ok(());
    }
    let env = ApiNode::builder("prom-rbac")
        .cluster(cluster)
        .config(
            "address: 127.0.0.1\nauthentication: {anonymous: {enabled: false}, webhook: {enabled: true}}\n\
             authorization: {mode: Webhook}\n",
        )
        .start()?;
    let scraper = format!("prom-scraper-{}", env.node());
    let outsider = format!("prom-outsider-{}", env.node());
    let rbac = ClusterRbac { admin: env.admin.clone(), name: scraper.clone() };
    let roles: Api<ClusterRole> = Api::all(env.admin.clone());
    let bindings: Api<ClusterRoleBinding> = Api::all(env.admin.clone());
    rbac.remove(&env.rt);
    // What Prometheus's own Helm chart and kube-prometheus grant for the node targets.
    let role: ClusterRole = serde_json::from_value(json!({
        "metadata": { "name": scraper },
        "rules": [{ "apiGroups": [""], "resources": ["nodes/metrics", "nodes/stats"], "verbs": ["get"] }],
    }))?;
    env.block_on(roles.create(&PostParams::default(), &role))?;
    let binding: ClusterRoleBinding = serde_json::from_value(json!({
        "metadata": { "name": scraper },
        "roleRef": { "apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": scraper },
        "subjects": [{ "kind": "ServiceAccount", "name": scraper, "namespace": NAMESPACE }],
    }))?;
    env.block_on(bindings.create(&PostParams::default(), &binding))?;
    let mut tokens = Vec::new();
    for account in [&scraper, &outsider] {
        env.create_object::<ServiceAccount>(json!({ "metadata": { "name": account } }))?;
        tokens.push(service_account_token(&env, account)?);
    }
    let pod = env.create(json!({
        "metadata": { "name": "busy" },
        "spec": {
            "nodeName": env.node(),
            "containers": [{ "name": "app", "image": BUSYBOX, "command": ["sleep", "3600"] }],
        },
    }))?;
    env.wait_pod("busy", Duration::from_secs(90), |p| {
        let statuses = p.status.as_ref().and_then(|s| s.container_statuses.as_ref());
        statuses.is_some_and(|c| c.iter().any(|c| c.state.as_ref().is_some_and(|s| s.running.is_some())))
    })?;
    let namespace = pod.metadata.namespace.clone().unwrap_or_default();

    let prometheus = Prometheus::start(
        env.agent.server_port(),
        &[
            ("kubelet", "/metrics", Some(&tokens[0])),
            ("cadvisor", "/metrics/cadvisor", Some(&tokens[0])),
            ("outsider", "/metrics", Some(&tokens[1])),
        ],
    )?;
    let scrape = Duration::from_secs(60);
    for job in ["kubelet", "cadvisor"] {
        prometheus.wait(&format!("up{{job=\"{job}\"}}"), scrape, |r| r.len() == 1 && r[0].1 == 1.0)?;
    }
    prometheus.wait("up{job=\"outsider\"}", scrape, |r| r.len() == 1 && r[0].1 == 0.0)?;
    let q = format!("container_memory_working_set_bytes{{job=\"cadvisor\",namespace=\"{namespace}\",pod=\"busy\",container=\"app\"}}");
    prometheus.wait(&q, scrape, |r| r.len() == 1 && r[0].1 > 0.0)?;
    // Why the outsider's scrape fails: the kubelet server's answer to its token.
    let answer = curl_status(env.agent.server_port(), &tokens[1])?;
    ensure!(answer == "403", "the outsider's token: HTTP {answer}, want 403 (authenticated, not authorised)");
    let answer = curl_status(env.agent.server_port(), "not-a-token")?;
    ensure!(answer == "401", "a made-up token: HTTP {answer}, want 401");
    drop(prometheus);
    drop(rbac);
    Ok(())
}

/// The cluster-scoped RBAC objects of the test, removed on drop too.
struct ClusterRbac {
    admin: kube::Client,
    name: String,
}

impl ClusterRbac {
    fn remove(&self, rt: &tokio::runtime::Runtime) {
        let roles: Api<ClusterRole> = Api::all(self.admin.clone());
        let bindings: Api<ClusterRoleBinding> = Api::all(self.admin.clone());
        let _ = rt.block_on(bindings.delete(&self.name, &DeleteParams::default()));
        let _ = rt.block_on(roles.delete(&self.name, &DeleteParams::default()));
    }
}

impl Drop for ClusterRbac {
    fn drop(&mut self) {
        if let Ok(rt) = tokio::runtime::Builder::new_current_thread().enable_all().build() {
            self.remove(&rt);
        }
    }
}

/// A bound token of `account` from the TokenRequest API, as a projected token volume would hold it.
fn service_account_token(env: &ApiNode, account: &str) -> Result<String> {
    let accounts: Api<ServiceAccount> = Api::namespaced(env.admin.clone(), NAMESPACE);
    let request: TokenRequest =
        serde_json::from_value(json!({ "spec": { "audiences": [], "expirationSeconds": 3600 } }))?;
    let answer: TokenRequest =
        env.block_on(accounts.create_subresource("token", account, &PostParams::default(), &request))?;
    answer.status.map(|s| s.token).context("TokenRequest without a token")
}

/// The HTTP status of GET /metrics on the kubelet server with this bearer token.
fn curl_status(port: u16, token: &str) -> Result<String> {
    let out = Command::new("curl")
        .args(["-sk", "-o", "/dev/null", "-w", "%{http_code}", "-H"])
        .arg(format!("Authorization: Bearer {token}"))
        .arg(format!("https://127.0.0.1:{port}/metrics"))
        .output()
        .context("run curl")?;
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}
