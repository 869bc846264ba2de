//! The `rkubelet` binary: flags named as kubelet's, configuration, wiring, and the main loop that feeds systemd.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use tokio::sync::{mpsc, watch, Mutex};

use std::collections::{BTreeMap, HashMap};

use rkubelet::api::events::run_event_poster;
use rkubelet::api::objects::PodObjects;
use rkubelet::api::pods::{run_api_source, API_SOURCE};
use rkubelet::api::status::StatusManager;
use rkubelet::config::{FlagOverrides, KubeletConfig, KubeletConfigurationFile};
use rkubelet::kuberuntime::KubeRuntime;
use rkubelet::node;
use rkubelet::node::registration::{run_node_lease, FactsFn, NodeRegistration};
use rkubelet::node::status::{go_arch, NodeFacts, KUBELET_COMPAT_VERSION};
use rkubelet::pods::admission::{NodeInfo, Resources};
use rkubelet::pods::env::NodeAllocatable;
use rkubelet::pods::events::EventRecorder;
use rkubelet::pods::manager::PodManager;
use rkubelet::pods::source::{run_file_source, FILE_SOURCE};
use rkubelet::pods::store::PodStore;
use rkubelet::pods::sysctl::SysctlAllowlist;
use rkubelet::pods::worker::{PodWorkerMetrics, WorkerContext};
use rkubelet::resources::cgroups::{CgroupManager, CgroupName, CGROUP_MOUNT};
use rkubelet::resources::pod::{kubepods_config, node_allocatable, CpuMemory, ResourceConfig};
use rkubelet::resources::QosClass;
use rkubelet::runtime::{Pleg, Runtime};
use rkubelet::server::{self, ServerState};
use rkubelet::volumes::VolumeManager;

mod allocator;
mod profiling;

/// A kubelet-compatible node agent.
#[derive(Debug, Parser)]
#[command(name = "rkubelet", version)]
struct Flags {
    /// KubeletConfiguration file (kubelet.config.k8s.io/v1beta1). Flags override its fields.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Folder of static pod manifests (staticPodPath).
    #[arg(long)]
    pod_manifest_path: Option<String>,
    /// CRI endpoint of the container runtime [default: unix:///run/containerd/containerd.sock].
    #[arg(long)]
    container_runtime_endpoint: Option<String>,
    /// Folder for the agent's own files [default: /var/lib/rkubelet].
    #[arg(long)]
    root_dir: Option<String>,
    /// Node name to use instead of the hostname.
    #[arg(long)]
    hostname_override: Option<String>,
    /// Port of the read-only HTTP server (/healthz, /pods, /metrics); 0 disables it.
    #[arg(long)]
    read_only_port: Option<u16>,
    /// Address the kubelet and read-only servers listen on [default: 0.0.0.0].
    #[arg(long)]
    address: Option<String>,
    /// Port of the authenticated HTTPS kubelet server (logs, exec, port-forward, stats) [default: 10250].
    #[arg(long)]
    port: Option<u16>,
    /// Port of the healthz server on healthzBindAddress; 0 disables it [default: 10248].
    #[arg(long)]
    healthz_port: Option<u16>,
    /// Serving certificate of the kubelet server; without it a self-signed one is kept in --cert-dir.
    #[arg(long)]
    tls_cert_file: Option<String>,
    /// Key of --tls-cert-file.
    #[arg(long)]
    tls_private_key_file: Option<String>,
    /// CA bundle that verifies client certificates of callers of the kubelet server.
    #[arg(long)]
    client_ca_file: Option<String>,
    /// Allow anonymous requests to the kubelet server.
    #[arg(long)]
    anonymous_auth: Option<bool>,
    /// Authenticate bearer tokens through TokenReview.
    #[arg(long)]
    authentication_token_webhook: Option<bool>,
    /// AlwaysAllow or Webhook (SubjectAccessReview).
    #[arg(long)]
    authorization_mode: Option<String>,
    /// Pod CIDR of this node when running without an API server.
    #[arg(long)]
    pod_cidr: Option<String>,
    /// Resolver configuration pods of the Default DNS policy get (resolvConf); "" gives them the node's
    /// loopback resolver [default: /etc/resolv.conf].
    #[arg(long)]
    resolv_conf: Option<String>,
    /// kubeconfig for the API server; without it the agent runs standalone.
    #[arg(long)]
    kubeconfig: Option<PathBuf>,
    /// kubeconfig used to obtain a client certificate (TLS bootstrap) when --kubeconfig does not exist yet.
    #[arg(long)]
    bootstrap_kubeconfig: Option<PathBuf>,
    /// Folder of the client certificate obtained by TLS bootstrap [default: <root-dir>/pki].
    #[arg(long)]
    cert_dir: Option<PathBuf>,
    /// IP address(es) of the node, comma-separated; detected from the host's interfaces when not given.
    #[arg(long)]
    node_ip: Option<String>,
    /// Labels to add when registering the node: key=value,key=value.
    #[arg(long)]
    node_labels: Option<String>,
    /// Log verbosity, as kubelet's -v: 0-2 info, 3-4 debug, 5 and above trace. RUST_LOG overrides it.
    #[arg(short = 'v', long = "v")]
    v: Option<u32>,
}

/// The agent's long-running tasks by name. None of them is meant to end while the agent runs.
#[derive(Default)]
struct Supervisor {
    tasks: tokio::task::JoinSet<()>,
    names: HashMap<tokio::task::Id, &'static str>,
}

impl Supervisor {
    fn spawn(&mut self, name: &'static str, task: impl std::future::Future<Output = ()> + Send + 'static) {
        let handle = self.tasks.spawn(task);
        self.names.insert(handle.id(), name);
    }

    /// Waits for the first task to end and says which and how; pending forever when there are none.
    async fn next_ended(&mut self) -> String {
        match self.tasks.join_next_with_id().await {
            Some(Ok((id, ()))) => format!("{} ended", self.names.get(&id).unwrap_or(&"a task")),
            Some(Err(e)) => {
                let name = self.names.get(&e.id()).unwrap_or(&"a task");
                if e.is_panic() {
                    format!("{name} panicked")
                } else {
                    format!("{name} was cancelled")
                }
            }
            None => std::future::pending().await,
        }
    }
}

/// The watchdog is fed at half its interval, as systemd recommends.
const WATCHDOG_FRACTION: u32 = 2;
/// Retry bounds while the container runtime is not reachable at start.
const RUNTIME_CONNECT_RETRY_MAX: Duration = Duration::from_secs(30);

fn init_logging(verbosity: u32) {
    let level = match verbosity {
        0..=2 => "info",
        3..=4 => "debug",
        _ => "trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(format!("{level},h2=info,tower=info,hyper=info")));
    // Plain text in the journal and in log files, as kubelet writes; colours only on a terminal.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(ansi).init();
}

async fn connect_runtime(endpoint: &str) -> (Runtime, String, String) {
    let mut wait = Duration::from_secs(1);
    loop {
        let attempt = async {
            let rt = Runtime::connect(endpoint).await?;
            let (name, version) = rt.version().await?;
            Ok::<_, rkubelet::runtime::RuntimeError>((rt, name, version))
        };
        match attempt.await {
            Ok(r) => return r,
            Err(e) => {
                tracing::warn!(endpoint, error = %e, retry_in = ?wait, "container runtime not ready");
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(RUNTIME_CONNECT_RETRY_MAX);
            }
        }
    }
}

fn parse_labels(text: Option<&str>) -> anyhow::Result<BTreeMap<String, String>> {
    let mut labels = BTreeMap::new();
    for pair in text.unwrap_or_default().split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').with_context(|| format!("--node-labels: {pair:?} is not key=value"))?;
        labels.insert(k.trim().to_owned(), v.trim().to_owned());
    }
    Ok(labels)
}

/// Writes the CNI config and tells the runtime whenever the API assigns this node a pod CIDR.
async fn follow_pod_cidr(mut cidr: watch::Receiver<Option<String>>, runtime: Runtime, config: KubeletConfig) {
    while cidr.changed().await.is_ok() {
        let Some(value) = cidr.borrow_and_update().clone() else { continue };
        let cidrs: Vec<String> = value.split(',').map(|c| c.trim().to_owned()).collect();
        match node::cni::write_conflist(&config.cni_conf_dir, &cidrs, &config.cni_bridge_name) {
            Ok(true) => tracing::info!(pod_cidr = %value, "wrote pod network CNI config for the node's pod CIDR"),
            Ok(false) => {}
            Err(e) => tracing::error!(error = %e, "cannot write CNI config"),
        }
        if let Err(e) = runtime.update_pod_cidr(&value).await {
            tracing::warn!(error = %e, "UpdateRuntimeConfig failed");
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn node_facts_fn(
    config: &KubeletConfig,
    hostname: String,
    runtime: Runtime,
    runtime_version: String,
    pleg: rkubelet::runtime::PlegHealth,
    (capacity, allocatable): (CpuMemory, CpuMemory),
    host_ips: Vec<String>,
    kubelet_port: u16,
) -> FactsFn {
    let info = node::host_info(&config.root_dir);
    let base = NodeFacts {
        name: config.node_name.clone(),
        capacity,
        allocatable,
        ephemeral_storage_bytes: info.ephemeral_storage_bytes,
        max_pods: config.max_pods,
        addresses: host_ips,
        hostname,
        kernel_version: info.kernel_version,
        os_image: info.os_image,
        architecture: go_arch().into(),
        machine_id: info.machine_id,
        boot_id: info.boot_id,
        container_runtime_version: format!("containerd://{runtime_version}"),
        // Capped by the API server's version at registration.
        kubelet_version: node::status::kubelet_version(KUBELET_COMPAT_VERSION, None, env!("CARGO_PKG_VERSION")),
        kubelet_port,
        images: Vec::new(),
        not_ready_reason: None,
    };
    Arc::new(move || {
        let runtime = runtime.clone();
        let pleg = pleg.clone();
        let mut facts = base.clone();
        Box::pin(async move {
            // kubelet's readiness checks: runtime up, its network ready, PLEG relisting.
            facts.images = match runtime.list_images().await {
                Ok(images) => node::status::node_images(&images, node::status::NODE_STATUS_MAX_IMAGES),
                Err(e) => {
                    tracing::warn!(error = %e, "error getting image list");
                    Vec::new()
                }
            };
            facts.not_ready_reason = match runtime.status().await {
                Err(e) => Some(format!("container runtime is down: {e}")),
                Ok(s) if !s.runtime_ready => {
                    Some(format!("container runtime status check may not have completed yet: {}", s.message))
                }
                Ok(s) if !s.network_ready => Some(format!("container runtime network not ready: {}", s.message)),
                Ok(_) if !pleg.healthy() => Some("PLEG is not healthy".into()),
                Ok(_) => None,
            };
            facts
        })
    })
}

/// kubelet's container manager start-up: checks the host's cgroups and creates `kubepods` with the node allocatable
/// limits, and the `burstable` and `besteffort` QoS cgroups.
async fn setup_pod_hierarchy(
    config: &KubeletConfig,
    capacity: CpuMemory,
    allocatable: CpuMemory,
) -> anyhow::Result<CgroupManager> {
    let manager = CgroupManager::new(config.cgroup_driver, std::path::Path::new(CGROUP_MOUNT)).await.context(
        "cgroupsPerQOS needs pod-level cgroups; set cgroupsPerQOS: false in the config to run without pod-level enforcement",
    )?;
    let reservations = config.reservations(capacity.memory_bytes);
    let kubepods = kubepods_config(capacity, &reservations, config.enforce_pods_allocatable());
    manager.ensure(&CgroupName::kubepods(), &kubepods).await.context("create the kubepods cgroup")?;
    let minimum = ResourceConfig { cpu_shares: Some(rkubelet::resources::convert::MIN_SHARES), ..Default::default() };
    for qos in [QosClass::Burstable, QosClass::BestEffort] {
        manager
            .ensure(&CgroupName::qos(qos), &minimum)
            .await
            .with_context(|| format!("create the {} QoS cgroup", qos.as_str()))?;
    }
    tracing::info!(
        driver = ?config.cgroup_driver,
        kubepods = %manager.path(&CgroupName::kubepods()).display(),
        allocatable_cpu_milli = %allocatable.cpu_milli,
        allocatable_memory = %allocatable.memory_bytes,
        kubepods_memory_max = ?kubepods.memory_limit_bytes,
        "pod cgroup hierarchy ready"
    );
    Ok(manager)
}

async fn run(flags: Flags) -> anyhow::Result<()> {
    let file = match &flags.config {
        Some(path) => Some((path.as_path(), KubeletConfigurationFile::load(path)?)),
        None => None,
    };
    let overrides = FlagOverrides {
        pod_manifest_path: flags.pod_manifest_path.clone(),
        container_runtime_endpoint: flags.container_runtime_endpoint.clone(),
        root_dir: flags.root_dir.clone(),
        hostname_override: flags.hostname_override.clone(),
        read_only_port: flags.read_only_port,
        address: flags.address.clone(),
        pod_cidr: flags.pod_cidr.clone(),
        resolv_conf: flags.resolv_conf.clone(),
        verbosity: flags.v,
        port: flags.port,
        healthz_port: flags.healthz_port,
        tls_cert_file: flags.tls_cert_file.clone(),
        tls_private_key_file: flags.tls_private_key_file.clone(),
        client_ca_file: flags.client_ca_file.clone(),
        anonymous_auth: flags.anonymous_auth,
        authentication_token_webhook: flags.authentication_token_webhook,
        authorization_mode: flags.authorization_mode.clone(),
    };
    let config = KubeletConfig::resolve(file, &overrides, &node::hostname())?;
    init_logging(config.verbosity);
    if let Some(refusal) = server::auth::refuse_without_api_server(&config.auth, flags.kubeconfig.is_some()) {
        anyhow::bail!("{refusal} (set authorization.mode: AlwaysAllow, or give --kubeconfig)");
    }
    for w in &config.warnings {
        tracing::warn!("{w}");
    }
    tracing::info!(node = %config.node_name, endpoint = %config.container_runtime_endpoint, "starting rkubelet");

    std::fs::create_dir_all(&config.root_dir)
        .with_context(|| format!("create root dir {}", config.root_dir.display()))?;
    std::fs::create_dir_all(&config.pod_logs_dir)
        .with_context(|| format!("create pod logs dir {}", config.pod_logs_dir.display()))?;

    let capacity = CpuMemory { cpu_milli: node::cpu_capacity_milli(), memory_bytes: node::memory_capacity() };
    let allocatable = node_allocatable(capacity, &config.reservations(capacity.memory_bytes));
    let hostname = flags.hostname_override.clone().unwrap_or_else(node::hostname).to_lowercase();
    let extra_labels = parse_labels(flags.node_labels.as_deref())?;
    let cgroups = if config.cgroups_per_qos {
        Some(Arc::new(setup_pod_hierarchy(&config, capacity, allocatable).await?))
    } else {
        tracing::warn!(
            "cgroupsPerQOS is false: pods run without the kubepods cgroup hierarchy; limits apply per container only"
        );
        None
    };

    let (runtime, runtime_name, runtime_version) = connect_runtime(&config.container_runtime_endpoint).await;
    tracing::info!(runtime = %runtime_name, version = %runtime_version, "connected to container runtime");
    match runtime.status().await {
        Ok(s) if !s.runtime_ready || !s.network_ready => {
            tracing::warn!(runtime_ready = s.runtime_ready, network_ready = s.network_ready, message = %s.message, "container runtime not fully ready")
        }
        Ok(_) => {}
        Err(e) => tracing::warn!(error = %e, "runtime status failed"),
    }

    if let Some(cidr) = &config.pod_cidr {
        let cidrs: Vec<String> = cidr.split(',').map(|c| c.trim().to_owned()).collect();
        if node::cni::write_conflist(&config.cni_conf_dir, &cidrs, &config.cni_bridge_name)? {
            tracing::info!(dir = %config.cni_conf_dir.display(), pod_cidr = %cidr, "wrote pod network CNI config");
        }
        if let Err(e) = runtime.update_pod_cidr(cidr).await {
            tracing::warn!(error = %e, "UpdateRuntimeConfig failed");
        }
    }

    let host_ips: Vec<String> = match &flags.node_ip {
        Some(ips) => ips.split(',').map(|s| s.trim().to_owned()).filter(|s| !s.is_empty()).collect(),
        None => node::host_ips(),
    };
    // The kubelet server's socket is bound first: the node reports its real port in daemonEndpoints.
    let cert_dir = flags.cert_dir.clone().unwrap_or_else(|| config.root_dir.join("pki"));
    let kubelet_listener = if config.enable_server {
        let addr = SocketAddr::new(config.address, config.port);
        let listener = server::bind(addr).await.with_context(|| format!("kubelet server: listen on {addr}"))?;
        Some(listener)
    } else {
        None
    };
    let kubelet_port = match &kubelet_listener {
        Some(l) => l.local_addr().map(|a| a.port()).unwrap_or(config.port),
        None => 0,
    };
    let store = PodStore::default();
    let (events_tx, events_rx) = mpsc::unbounded_channel();
    let pod_worker_metrics = Arc::new(PodWorkerMetrics::default());
    let events = if flags.kubeconfig.is_some() { EventRecorder::new(events_tx) } else { EventRecorder::default() };
    let volumes = Arc::new(VolumeManager::new(
        &config.root_dir,
        NodeAllocatable {
            cpu_milli: allocatable.cpu_milli,
            memory_bytes: allocatable.memory_bytes,
            ephemeral_storage_bytes: node::host_info(&config.root_dir).ephemeral_storage_bytes,
        },
        events.clone(),
    ));
    let ctx = Arc::new(WorkerContext {
        kuberuntime: KubeRuntime {
            runtime: runtime.clone(),
            node_name: config.node_name.clone(),
            host_ips: host_ips.clone(),
            pod_logs_dir: config.pod_logs_dir.clone(),
            seccomp_profile_root: config.root_dir.join("seccomp"),
            seccomp_default: config.seccomp_default,
            resolv_conf: config.resolv_conf.clone(),
            cluster_dns: config.cluster_dns.iter().map(|ip| ip.to_string()).collect(),
            cluster_domain: config.cluster_domain.clone(),
            memory_capacity: capacity.memory_bytes,
            image_pull_lock: config.serialize_image_pulls.then(|| Mutex::new(())),
            cgroups,
            oom_kill_whole_container: !config.single_process_oom_kill
                && rkubelet::resources::cgroups::check_cgroup_v2(std::path::Path::new(CGROUP_MOUNT)).is_ok(),
            events,
            volumes: volumes.clone(),
        },
        runtime_name,
        store: store.clone(),
        sync_frequency: config.sync_frequency,
        metrics: pod_worker_metrics.clone(),
    });

    // Every long-running part of the agent: if one ends, the agent exits non-zero so that systemd restarts it
    // whole, instead of reporting healthy with a part missing.
    let mut tasks = Supervisor::default();
    let pleg = Pleg::new(runtime.clone());
    let pleg_health = pleg.health();
    let (pleg_tx, pleg_rx) = mpsc::unbounded_channel();
    tasks.spawn("PLEG", pleg.run(pleg_tx));

    let mut sources = Vec::new();
    let (source_tx, source_rx) = mpsc::channel(16);
    if let Some(dir) = &config.static_pod_path {
        sources.push(FILE_SOURCE);
        tracing::info!(dir = %dir.display(), "watching static pod manifests");
        tasks.spawn(
            "static pod source",
            run_file_source(dir.clone(), config.node_name.clone(), config.file_check_frequency, source_tx.clone()),
        );
    }
    let (terminated_tx, terminated_rx) = mpsc::unbounded_channel();
    let node_labels = node::status::node_labels(&hostname, go_arch(), &extra_labels);
    // Until the Node is read back from the API, admission uses the allocatable the node will report.
    let (admission_tx, admission_rx) = watch::channel(NodeInfo {
        name: config.node_name.clone(),
        labels: node_labels,
        allocatable: Resources {
            milli_cpu: allocatable.cpu_milli,
            memory: allocatable.memory_bytes,
            ephemeral_storage: node::host_info(&config.root_dir).ephemeral_storage_bytes,
            allowed_pods: config.max_pods.into(),
            ..Default::default()
        },
        taints: config.register_with_taints.clone(),
    });
    let mut api_client = None;
    if let Some(kubeconfig) = &flags.kubeconfig {
        let client = rkubelet::api::client::client(
            kubeconfig,
            flags.bootstrap_kubeconfig.as_deref(),
            &cert_dir,
            &config.node_name,
        )
        .await
        .context("API client")?;
        api_client = Some(client.clone());
        sources.push(API_SOURCE);
        let (objects, services_informer) = PodObjects::new(client.clone());
        volumes.set_objects(objects);
        tasks.spawn("service informer", services_informer);
        let (mirrors_tx, mirrors_rx) = watch::channel(Default::default());
        let api_reachable = Arc::new(tokio::sync::Notify::new());
        tasks.spawn(
            "API pod source",
            run_api_source(
                client.clone(),
                config.node_name.clone(),
                source_tx.clone(),
                mirrors_tx,
                api_reachable.clone(),
            ),
        );
        tasks.spawn(
            "status manager",
            StatusManager {
                client: client.clone(),
                node_name: config.node_name.clone(),
                store: store.clone(),
                mirrors: mirrors_rx,
                terminated: terminated_rx,
            }
            .run(),
        );
        let (pod_cidr_tx, pod_cidr_rx) = watch::channel(None);
        tasks.spawn("pod CIDR follower", follow_pod_cidr(pod_cidr_rx, runtime.clone(), config.clone()));
        let facts = node_facts_fn(
            &config,
            hostname.clone(),
            runtime.clone(),
            runtime_version.clone(),
            pleg_health.clone(),
            (capacity, allocatable),
            host_ips.clone(),
            kubelet_port,
        );
        tasks.spawn(
            "node status",
            NodeRegistration {
                client: client.clone(),
                node_name: config.node_name.clone(),
                labels: extra_labels,
                taints: config.register_with_taints.clone(),
                facts,
                pod_cidr: pod_cidr_tx,
                admission: admission_tx,
            }
            .run(),
        );
        tasks.spawn("event poster", run_event_poster(client.clone(), config.node_name.clone(), events_rx));
        tasks.spawn("node lease", run_node_lease(client, config.node_name.clone(), api_reachable));
    }
    drop(source_tx);
    tasks.spawn(
        "pod manager",
        PodManager::new(ctx, &sources)
            .report_terminated(terminated_tx)
            .with_admission(admission_rx)
            .with_sysctls(SysctlAllowlist::new(&config.allowed_unsafe_sysctls)?)
            .run(source_rx, pleg_rx),
    );

    let state = ServerState {
        store: store.clone(),
        runtime_metrics: runtime.metrics(),
        pod_workers: pod_worker_metrics,
        pleg: pleg_health.clone(),
    };
    if let Some(listener) = kubelet_listener {
        let certs = Arc::new(server::tls::ServingCerts::default());
        let cert_file = match (&api_client, config.server_tls_bootstrap) {
            (Some(client), true) => {
                tasks.spawn(
                    "serving certificate manager",
                    server::certificate::ServingCertificateManager {
                        client: client.clone(),
                        certs: certs.clone(),
                        node_name: config.node_name.clone(),
                        hostname: hostname.clone(),
                        ips: host_ips.clone(),
                        cert_dir: cert_dir.clone(),
                    }
                    .run(),
                );
                cert_dir.join(rkubelet::api::serving::SERVING_CERT_FILE)
            }
            _ => {
                let cert = server::tls::serving_cert(
                    config.tls_cert_file.as_deref(),
                    config.tls_private_key_file.as_deref(),
                    &cert_dir,
                    &hostname,
                    &host_ips,
                )
                .context("kubelet server certificate")?;
                let file = cert.cert_file.clone();
                certs.set(cert).context("kubelet server certificate")?;
                file
            }
        };
        let tls =
            server::tls::server_config(certs, config.auth.client_ca_file.as_deref()).context("kubelet server TLS")?;
        if api_client.is_none()
            && (config.auth.webhook_authentication
                || config.auth.authorization_mode == rkubelet::config::AuthorizationMode::Webhook)
        {
            tracing::warn!("no API server (--kubeconfig): bearer tokens cannot be reviewed and Webhook authorization refuses every request");
        }
        let auth =
            Arc::new(server::auth::Authenticator::new(config.auth.clone(), config.node_name.clone(), api_client));
        let containers = server::containers::ContainerServerState { store: store.clone(), runtime: runtime.clone() };
        let stats_state = server::stats::StatsState {
            stats: rkubelet::stats::StatsProvider {
                node_name: config.node_name.clone(),
                runtime: runtime.clone(),
                store: store.clone(),
                root_dir: config.root_dir.clone(),
                pod_logs_dir: config.pod_logs_dir.clone(),
                node_cpu: Arc::default(),
            },
            store: store.clone(),
            configz: server::stats::configz_json(&config),
        };
        let app = server::secure::with_auth(server::kubelet_router(state.clone(), containers, stats_state), auth);
        tracing::info!(addr = ?listener.local_addr().ok(), cert = %cert_file.display(), "kubelet server listening");
        tasks.spawn("kubelet server", async move {
            if let Err(e) = server::secure::serve_tls(listener, tls, app).await {
                tracing::error!(error = %e, "kubelet server stopped");
            }
        });
    }
    tasks.spawn(
        "container log manager",
        rkubelet::logs::run_log_rotation(
            runtime.clone(),
            u64::try_from(config.container_log_max_size).unwrap_or(u64::MAX),
            config.container_log_max_files as usize,
        ),
    );
    if config.healthz_port != 0 {
        let addr = SocketAddr::new(config.healthz_bind_address, config.healthz_port);
        tasks.spawn("healthz server", server::serve_healthz(addr, state.clone()));
    }
    if config.read_only_port != 0 {
        let addr = SocketAddr::new(config.address, config.read_only_port);
        let listener = server::bind(addr).await.with_context(|| format!("listen on {addr}"))?;
        tracing::info!(%addr, "read-only server listening");
        tasks.spawn("read-only server", async move {
            if let Err(e) = server::serve(listener, state).await {
                tracing::error!(error = %e, "read-only server stopped");
            }
        });
    }

    // READY=1 once /healthz answers ok, i.e. after the PLEG's first relist, so that `systemctl start` returning
    // means the agent is serving. A runtime that does not answer must not keep the unit activating forever.
    let ready_by = tokio::time::Instant::now() + Duration::from_secs(10);
    while !pleg_health.healthy() && tokio::time::Instant::now() < ready_by {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Ready]);
    let mut watchdog_usec = 0;
    let watchdog = sd_notify::watchdog_enabled(false, &mut watchdog_usec)
        .then(|| Duration::from_micros(watchdog_usec) / WATCHDOG_FRACTION);
    let mut feed = tokio::time::interval(watchdog.unwrap_or(Duration::from_secs(3600)));

    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    loop {
        tokio::select! {
            _ = feed.tick() => {
                // Starve the watchdog when the PLEG stops relisting, so systemd restarts a wedged agent. The first
                // relist may not have happened yet right after start.
                if watchdog.is_some() && pleg_health.healthy() {
                    let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Watchdog]);
                }
            }
            _ = tokio::signal::ctrl_c() => break,
            _ = term.recv() => break,
            ended = tasks.next_ended() => {
                let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Stopping]);
                anyhow::bail!("{ended}; exiting so that the service manager restarts the agent (pods keep running)");
            }
        }
    }
    // Pods keep running: a restarted agent picks them up again from the runtime.
    tracing::info!("shutting down; pods keep running");
    let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Stopping]);
    Ok(())
}

#[tokio::main]
async fn main() -> ExitCode {
    // Heap profile with `--features dhat-heap` (written at exit or on SIGUSR2); nothing otherwise.
    let _heap_profile = profiling::start();
    tokio::spawn(allocator::trim_periodically());
    let flags = Flags::parse();
    match run(flags).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("rkubelet: {e:#}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_supervisor_names_the_task_that_ended_or_panicked() {
        let mut tasks = Supervisor::default();
        tasks.spawn("forever", std::future::pending());
        tasks.spawn("short", async {});
        assert_eq!(tasks.next_ended().await, "short ended");
        tasks.spawn("broken", async { panic!("boom") });
        assert_eq!(tasks.next_ended().await, "broken panicked");
        let still_running = tokio::time::timeout(Duration::from_millis(50), tasks.next_ended()).await;
        assert!(still_running.is_err(), "the remaining task runs on");
    }
}
