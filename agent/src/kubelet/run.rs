//! Start-up, kubelet's `NewMainKubelet` and `Run`: the host's cgroups, the runtime, the API client, and every
//! long-running part of the agent wired together and supervised, feeding systemd's watchdog while all of them run.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::sync::{mpsc, watch, Mutex};

use crate::api::events::run_event_poster;
use crate::api::objects::PodObjects;
use crate::cm::cgroups::CGROUP_MOUNT;
use crate::cm::pod::{node_allocatable, CpuMemory};
use crate::config::KubeletConfig;
use crate::kubelet::manager::PodManager;
use crate::kubelet::source::api::run_api_source;
use crate::kubelet::source::run_file_source;
use crate::kubelet::worker::WorkerContext;
use crate::kuberuntime::KubeRuntime;
use crate::kubetypes::annotations::{API_SOURCE, FILE_SOURCE};
use crate::kubetypes::env::NodeAllocatable;
use crate::kubetypes::events::EventRecorder;
use crate::kubetypes::kill::PodKiller;
use crate::kubetypes::nodeinfo::{NodeInfo, Resources};
use crate::node;
use crate::node::registration::{run_node_lease, NodeRegistration};
use crate::node::status::go_arch;
use crate::pleg::{Pleg, PodCache};
use crate::pods::sysctl::SysctlAllowlist;
use crate::runtime::Runtime;
use crate::server::{self, PodWorkerMetrics, ServerState};
use crate::status::store::PodStore;
use crate::status::StatusManager;
use crate::volumes::VolumeManager;

/// What the command line gives beyond the configuration.
#[derive(Debug, Clone, Default)]
pub struct StartOptions {
    pub hostname_override: Option<String>,
    pub node_labels: BTreeMap<String, String>,
    pub node_ip: Option<String>,
    pub cert_dir: Option<PathBuf>,
    pub kubeconfig: Option<PathBuf>,
    pub bootstrap_kubeconfig: Option<PathBuf>,
    /// `--pod-infra-container-image`: kept by image garbage collection.
    pub pod_infra_container_image: Option<String>,
}

/// The agent's long-running tasks by name. None of them is meant to end while the agent runs.
#[derive(Default)]
pub struct Supervisor {
    tasks: tokio::task::JoinSet<()>,
    names: HashMap<tokio::task::Id, &'static str>,
}

impl Supervisor {
    pub fn spawn(&mut self, name: &'static str, task: impl std::future::Future<Output = ()> + Send + 'static) {
        let handle = self.tasks.spawn(task);
        self.names.insert(handle.id(), name);
    }

    /// Waits for the first task to end and says which and how; pending forever when there are none.
    pub async fn next_ended(&mut self) -> String {
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

/// Test knobs, read in debug builds only (kubelet has no setting for these periods): the image and container
/// garbage collectors' periods as Go durations, so that host tests need not wait five minutes.
pub const IMAGE_GC_PERIOD_ENV: &str = "RKUBELET_IMAGE_GC_PERIOD";
pub const CONTAINER_GC_PERIOD_ENV: &str = "RKUBELET_CONTAINER_GC_PERIOD";

fn gc_period(env: &str, default: Duration) -> Duration {
    if !cfg!(debug_assertions) {
        return default;
    }
    let Ok(text) = std::env::var(env) else { return default };
    match crate::kubetypes::duration::parse_go_duration(&text) {
        Ok(d) if !d.is_zero() => {
            tracing::warn!(env, period = ?d, "garbage collection period overridden for tests");
            d
        }
        _ => {
            tracing::warn!(env, value = %text, "not a positive Go duration; using the default period");
            default
        }
    }
}

/// Runs the agent until SIGTERM or Ctrl-C, or until one of its parts ends (an error then, so that systemd
/// restarts it). Pods keep running either way.
pub async fn run(config: KubeletConfig, opts: StartOptions) -> anyhow::Result<()> {
    std::fs::create_dir_all(&config.root_dir)
        .with_context(|| format!("create root dir {}", config.root_dir.display()))?;
    std::fs::create_dir_all(&config.pod_logs_dir)
        .with_context(|| format!("create pod logs dir {}", config.pod_logs_dir.display()))?;

    let capacity = CpuMemory { cpu_milli: node::cpu_capacity_milli(), memory_bytes: node::memory_capacity() };
    let allocatable = node_allocatable(capacity, &config.reservations(capacity.memory_bytes));
    let hostname = opts.hostname_override.clone().unwrap_or_else(node::hostname).to_lowercase();
    let extra_labels = opts.node_labels.clone();
    let cgroups = if config.cgroups_per_qos {
        Some(Arc::new(
            crate::cm::setup_pod_hierarchy(
                config.cgroup_driver,
                capacity,
                &config.reservations(capacity.memory_bytes),
                config.enforce_pods_allocatable(),
                config.pod_pids_limit,
            )
            .await?,
        ))
    } else {
        tracing::warn!(
            "cgroupsPerQOS is false: pods run without the kubepods cgroup hierarchy; limits apply per container only"
        );
        None
    };

    let (runtime, runtime_name, runtime_version) =
        Runtime::connect_with_retry(&config.container_runtime_endpoint).await;
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

    let host_ips: Vec<String> = match &opts.node_ip {
        Some(ips) => ips.split(',').map(|s| s.trim().to_owned()).filter(|s| !s.is_empty()).collect(),
        None => node::host_ips(),
    };
    // The kubelet server's socket is bound first: the node reports its real port in daemonEndpoints.
    let cert_dir = opts.cert_dir.clone().unwrap_or_else(|| config.root_dir.join("pki"));
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
    let pod_worker_metrics = Arc::new(PodWorkerMetrics::new(config.sync_frequency));
    let events = if opts.kubeconfig.is_some() { EventRecorder::new(events_tx) } else { EventRecorder::default() };
    let volumes = Arc::new(VolumeManager::new(
        &config.root_dir,
        NodeAllocatable {
            cpu_milli: allocatable.cpu_milli,
            memory_bytes: allocatable.memory_bytes,
            ephemeral_storage_bytes: node::host_info(&config.root_dir).ephemeral_storage_bytes,
        },
        events.clone(),
    ));
    let eviction_events = events.clone();
    let pod_cache = PodCache::new();
    let pleg = Pleg::new(runtime.clone(), pod_cache.clone()).evented(config.evented_pleg);
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
                && crate::cm::cgroups::check_cgroup_v2(std::path::Path::new(CGROUP_MOUNT)).is_ok(),
            events,
            volumes: volumes.clone(),
        },
        runtime_name,
        store: store.clone(),
        sync_frequency: config.sync_frequency,
        metrics: pod_worker_metrics.clone(),
        cache: pod_cache,
        refresher: pleg.refresher(),
    });

    // Every long-running part of the agent: if one ends, the agent exits non-zero so that systemd restarts it
    // whole, instead of reporting healthy with a part missing.
    let mut tasks = Supervisor::default();
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
    // The eviction manager's pressure conditions, for the node status and admission.
    let (eviction_pressure_tx, eviction_pressure_rx) = watch::channel(crate::eviction::NodePressure::default());
    // One measurement of the pods' volumes serves the summary API and the eviction manager.
    let volume_stats = Arc::new(crate::stats::volumes::VolumeStatsCache::new(config.volume_stats_agg_period));
    // Graceful node shutdown: the node reports not ready while it shuts down, and its status goes out at once.
    let (shutting_down_tx, shutting_down_rx) = watch::channel(false);
    let sync_node_status = Arc::new(tokio::sync::Notify::new());
    let with_api_server = opts.kubeconfig.is_some();
    let mut api_client = None;
    if let Some(kubeconfig) = &opts.kubeconfig {
        let bootstrap = opts.bootstrap_kubeconfig.as_deref();
        let client = if config.rotate_certificates {
            // One client for every part of the agent, switched to each new certificate as it comes.
            let (client, rotating) =
                crate::api::client::rotating_client(kubeconfig, bootstrap, &cert_dir, &config.node_name)
                    .await
                    .context("API client")?;
            tasks.spawn(
                "client certificate manager",
                crate::api::certificate::ClientCertificateManager {
                    client: client.clone(),
                    rotating,
                    cert_dir: cert_dir.clone(),
                    node_name: config.node_name.clone(),
                }
                .run(),
            );
            client
        } else {
            crate::api::client::client(kubeconfig, bootstrap, &cert_dir, &config.node_name)
                .await
                .context("API client")?
        };
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
                counts: Default::default(),
            }
            .run(),
        );
        let (pod_cidr_tx, pod_cidr_rx) = watch::channel(None);
        tasks.spawn(
            "pod CIDR follower",
            crate::node::cni::follow_pod_cidr(pod_cidr_rx, runtime.clone(), config.clone()),
        );
        let facts = crate::node::node_facts_fn(
            &config,
            hostname.clone(),
            runtime.clone(),
            runtime_version.clone(),
            pleg_health.clone(),
            (capacity, allocatable),
            host_ips.clone(),
            kubelet_port,
            eviction_pressure_rx.clone(),
            shutting_down_rx,
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
                pressure: Some(eviction_pressure_rx.clone()),
                sync_now: sync_node_status.clone(),
                update_frequency: config.node_status_update_frequency,
                report_frequency: config.node_status_report_frequency,
                provider_id: config.provider_id.clone(),
                register_node: config.register_node,
            }
            .run(),
        );
        tasks.spawn("event poster", run_event_poster(client.clone(), config.node_name.clone(), events_rx));
        tasks.spawn(
            "node lease",
            run_node_lease(client, config.node_name.clone(), config.node_lease_duration_seconds, api_reachable),
        );
    }
    drop(source_tx);
    let (sources_ready_tx, sources_ready_rx) = watch::channel(false);
    let gc_events = ctx.kuberuntime.events.clone();
    // The node's own housekeeping (eviction, node shutdown) stops pods and reads the active ones through this.
    let (pod_killer, pod_killer_end) = PodKiller::channel();
    tasks.spawn(
        "pod manager",
        PodManager::new(ctx, &sources)
            .report_terminated(terminated_tx)
            .report_sources_ready(sources_ready_tx)
            .with_admission(admission_rx)
            .with_sysctls(SysctlAllowlist::new(&config.allowed_unsafe_sysctls)?)
            .with_pod_killer(pod_killer_end)
            .with_eviction_admission(eviction_pressure_rx.clone())
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
                cert_dir.join(crate::api::serving::SERVING_CERT_FILE)
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
                || config.auth.authorization_mode == crate::config::AuthorizationMode::Webhook)
        {
            tracing::warn!("no API server (--kubeconfig): bearer tokens cannot be reviewed and Webhook authorization refuses every request");
        }
        let auth =
            Arc::new(server::auth::Authenticator::new(config.auth.clone(), config.node_name.clone(), api_client));
        let containers = server::containers::ContainerServerState { store: store.clone(), runtime: runtime.clone() };
        let stats_state = server::stats::StatsState {
            stats: crate::stats::StatsProvider {
                node_name: config.node_name.clone(),
                runtime: runtime.clone(),
                pods: Arc::new(store.clone()),
                root_dir: config.root_dir.clone(),
                pod_logs_dir: config.pod_logs_dir.clone(),
                node_cpu: Arc::default(),
                volume_stats: volume_stats.clone(),
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
    // kubelet's `StartGarbageCollection`: dead containers, sandboxes and pod log folders every minute, unused
    // images every five minutes; the eviction manager calls both on demand.
    let image_gc = Arc::new(
        crate::images::ImageGcManager::new(
            runtime.clone(),
            crate::images::ImageGcPolicy::new(
                config.image_gc_high_threshold_percent,
                config.image_gc_low_threshold_percent,
                config.image_minimum_gc_age,
            )?,
            gc_events.clone(),
        )
        .with_sandbox_image(opts.pod_infra_container_image.clone()),
    );
    let container_gc = Arc::new(crate::kuberuntime::gc::ContainerGc::new(
        runtime.clone(),
        crate::kuberuntime::gc::GcPolicy::default(),
        Arc::new(crate::kuberuntime::gc::PodStoreState { store: store.clone(), sources_ready: sources_ready_rx }),
        config.pod_logs_dir.clone(),
        gc_events,
    ));
    tasks.spawn(
        "image garbage collector",
        image_gc.clone().run(gc_period(IMAGE_GC_PERIOD_ENV, crate::images::IMAGE_GC_PERIOD)),
    );
    tasks.spawn(
        "container garbage collector",
        container_gc.clone().run(gc_period(CONTAINER_GC_PERIOD_ENV, crate::kuberuntime::gc::CONTAINER_GC_PERIOD)),
    );
    // kubelet's eviction manager: pressure conditions, node-level reclaim, one pod evicted per interval.
    {
        let kubepods = (config.cgroups_per_qos
            && crate::cm::cgroups::check_cgroup_v2(std::path::Path::new(CGROUP_MOUNT)).is_ok())
        .then(|| crate::eviction::manager::kubepods_cgroup(std::path::Path::new(CGROUP_MOUNT), config.cgroup_driver));
        let observer = crate::eviction::NodeObserver::new(
            crate::stats::StatsProvider {
                node_name: config.node_name.clone(),
                runtime: runtime.clone(),
                pods: Arc::new(store.clone()),
                root_dir: config.root_dir.clone(),
                pod_logs_dir: config.pod_logs_dir.clone(),
                node_cpu: Arc::default(),
                volume_stats: volume_stats.clone(),
            },
            kubepods,
        );
        let manager = crate::eviction::Manager::new(
            config.eviction.clone(),
            Arc::new(observer),
            pod_killer.clone(),
            eviction_events,
            eviction_pressure_tx,
        )
        .with_reclaim(Arc::new(GarbageCollectors { images: image_gc.clone(), containers: container_gc.clone() }))
        .with_node_events(config.node_name.clone());
        tasks.spawn("eviction manager", manager.run());
    }
    // kubelet's node shutdown manager: a logind delay inhibitor, pods stopped by priority when the node shuts down.
    if let Some(manager) = crate::nodeshutdown::ShutdownManager::new(
        &config,
        pod_killer.clone(),
        store.clone(),
        with_api_server,
        shutting_down_tx,
        with_api_server.then(|| sync_node_status.clone()),
    ) {
        tasks.spawn("node shutdown manager", manager.run());
    }
    tasks.spawn(
        "container log manager",
        crate::logs::run_log_rotation(
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

/// The eviction manager's node-level reclaim: kubelet's `containerGC.DeleteAllUnusedContainers` and
/// `imageGC.DeleteUnusedImages`.
struct GarbageCollectors {
    images: Arc<crate::images::ImageGcManager>,
    containers: Arc<crate::kuberuntime::gc::ContainerGc>,
}

impl crate::eviction::NodeReclaim for GarbageCollectors {
    fn delete_unused_containers(&self) -> futures::future::BoxFuture<'_, ()> {
        Box::pin(async move {
            if let Err(e) = self.containers.delete_all_unused_containers().await {
                tracing::warn!(error = %e, "eviction manager: failed to garbage collect dead containers");
            }
        })
    }

    fn delete_unused_images(&self) -> futures::future::BoxFuture<'_, u64> {
        Box::pin(async move {
            match self.images.delete_unused_images().await {
                Ok(freed) => freed,
                Err(e) => {
                    tracing::warn!(error = %e, "eviction manager: failed to garbage collect unused images");
                    0
                }
            }
        })
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
