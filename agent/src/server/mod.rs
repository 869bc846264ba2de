//! The kubelet's HTTP servers: the read-only server (kubelet's `readOnlyPort`: `/healthz`, `/pods` and `/metrics`),
//! the healthz server (`healthzBindAddress:healthzPort`), and the authenticated HTTPS kubelet server on
//! `address:port` with the container endpoints on top of the read-only ones.

pub mod auth;
pub mod cache;
pub mod certificate;
pub mod connection;
pub mod containers;

#[cfg(test)]
mod proptests;
pub mod secure;
pub mod stats;
pub mod streaming;
pub mod tls;

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;

use crate::kubetypes::spec;
use crate::pleg::PlegHealth;
use crate::runtime::RuntimeMetrics;
use crate::status::store::PodStore;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Counts of pod syncs, for `/metrics` (kubelet's `kubelet_pod_worker_duration_seconds`).
#[derive(Debug, Default)]
pub struct PodWorkerMetrics {
    syncs: AtomicU64,
    failed_syncs: AtomicU64,
    sync_micros: AtomicU64,
}

impl PodWorkerMetrics {
    pub fn record(&self, took: Duration, failed: bool) {
        self.syncs.fetch_add(1, Ordering::Relaxed);
        if failed {
            self.failed_syncs.fetch_add(1, Ordering::Relaxed);
        }
        self.sync_micros.fetch_add(took.as_micros().try_into().unwrap_or(u64::MAX), Ordering::Relaxed);
    }

    /// Syncs done, syncs that failed, and the time spent in them.
    pub fn snapshot(&self) -> (u64, u64, Duration) {
        (
            self.syncs.load(Ordering::Relaxed),
            self.failed_syncs.load(Ordering::Relaxed),
            Duration::from_micros(self.sync_micros.load(Ordering::Relaxed)),
        )
    }
}

#[derive(Clone)]
pub struct ServerState {
    pub store: PodStore,
    pub runtime_metrics: Arc<RuntimeMetrics>,
    pub pod_workers: Arc<PodWorkerMetrics>,
    pub pleg: PlegHealth,
}

pub fn router(state: ServerState) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/pods", get(pods))
        .route("/pods/", get(pods))
        .route("/metrics", get(metrics))
        .with_state(state)
}

/// The healthz server's routes: only `/healthz`.
pub fn healthz_router(state: ServerState) -> Router {
    Router::new().route("/healthz", get(healthz)).with_state(state)
}

/// The kubelet server's routes, before the auth filter.
pub fn kubelet_router(
    state: ServerState,
    containers: containers::ContainerServerState,
    stats_state: stats::StatsState,
) -> Router {
    let stats_routes = Router::new()
        .route("/stats/summary", get(stats::summary))
        .route("/metrics/resource", get(stats::resource_metrics))
        .route("/metrics/probes", get(stats::probe_metrics))
        .route("/runningpods/", get(stats::running_pods))
        .route("/configz", get(stats::configz))
        .with_state(stats_state);
    let container_routes = Router::new()
        .route("/containerLogs/{namespace}/{pod}/{container}", get(containers::container_logs))
        .route("/exec/{namespace}/{pod}/{container}", get(streaming::exec).post(streaming::exec))
        .route("/exec/{namespace}/{pod}/{uid}/{container}", get(streaming::exec_uid).post(streaming::exec_uid))
        .route("/attach/{namespace}/{pod}/{container}", get(streaming::attach).post(streaming::attach))
        .route("/attach/{namespace}/{pod}/{uid}/{container}", get(streaming::attach_uid).post(streaming::attach_uid))
        .route("/portForward/{namespace}/{pod}", get(streaming::port_forward).post(streaming::port_forward))
        .route(
            "/portForward/{namespace}/{pod}/{uid}",
            get(streaming::port_forward_uid).post(streaming::port_forward_uid),
        )
        .route("/run/{namespace}/{pod}/{container}", post(streaming::run))
        .route("/run/{namespace}/{pod}/{uid}/{container}", post(streaming::run_uid))
        .with_state(containers);
    router(state).merge(container_routes).merge(stats_routes)
}

/// kubelet retries a healthz server that cannot listen every 5 s rather than failing.
const HEALTHZ_RETRY: std::time::Duration = std::time::Duration::from_secs(5);

/// Serves `/healthz` on `addr`, retrying while the address cannot be bound, as kubelet does. Never returns.
pub async fn serve_healthz(addr: SocketAddr, state: ServerState) {
    loop {
        match bind(addr).await {
            Ok(listener) => {
                tracing::info!(%addr, "healthz server listening");
                if let Err(e) = axum::serve(listener, healthz_router(state.clone())).await {
                    tracing::error!(%addr, error = %e, "healthz server stopped");
                }
            }
            Err(e) => tracing::error!(%addr, error = %e, "failed to start healthz server"),
        }
        tokio::time::sleep(HEALTHZ_RETRY).await;
    }
}

pub async fn bind(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr).await
}

pub async fn serve(listener: tokio::net::TcpListener, state: ServerState) -> std::io::Result<()> {
    axum::serve(listener, router(state)).await
}

/// kubelet's healthz answers `ok` while its sync loop and PLEG are healthy.
async fn healthz(State(s): State<ServerState>) -> Response {
    if s.pleg.healthy() {
        (StatusCode::OK, "ok").into_response()
    } else {
        (StatusCode::INTERNAL_SERVER_ERROR, "[-]pleg failed: PLEG is not healthy").into_response()
    }
}

async fn pods(State(s): State<ServerState>) -> Response {
    let list = serde_json::json!({
        "kind": "PodList",
        "apiVersion": "v1",
        "metadata": {},
        "items": s.store.pods_with_status(),
    });
    ([(header::CONTENT_TYPE, "application/json")], list.to_string()).into_response()
}

fn escape_label(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

async fn metrics(State(s): State<ServerState>) -> Response {
    let mut out = String::new();
    let ops = s.runtime_metrics.snapshot();
    out.push_str(
        "# HELP kubelet_runtime_operations_total Cumulative number of runtime operations by operation type.\n",
    );
    out.push_str("# TYPE kubelet_runtime_operations_total counter\n");
    for (op, st) in &ops {
        let _ = writeln!(out, "kubelet_runtime_operations_total{{operation_type=\"{op}\"}} {}", st.calls);
    }
    out.push_str("# TYPE kubelet_runtime_operations_errors_total counter\n");
    for (op, st) in &ops {
        let _ = writeln!(out, "kubelet_runtime_operations_errors_total{{operation_type=\"{op}\"}} {}", st.errors);
    }
    out.push_str("# TYPE kubelet_runtime_operations_duration_seconds_sum counter\n");
    for (op, st) in &ops {
        let _ = writeln!(
            out,
            "kubelet_runtime_operations_duration_seconds_sum{{operation_type=\"{op}\"}} {:.6}",
            st.total.as_secs_f64()
        );
    }
    let (syncs, failed, took) = s.pod_workers.snapshot();
    out.push_str("# HELP kubelet_pod_worker_duration_seconds Duration in seconds to sync a single pod.\n");
    out.push_str("# TYPE kubelet_pod_worker_duration_seconds summary\n");
    let _ =
        writeln!(out, "kubelet_pod_worker_duration_seconds_sum{{operation_type=\"sync\"}} {:.6}", took.as_secs_f64());
    let _ = writeln!(out, "kubelet_pod_worker_duration_seconds_count{{operation_type=\"sync\"}} {syncs}");
    out.push_str(
        "# HELP rkubelet_pod_worker_failed_syncs_total Pod syncs that ended with an error and were requeued.\n",
    );
    out.push_str("# TYPE rkubelet_pod_worker_failed_syncs_total counter\n");
    let _ = writeln!(out, "rkubelet_pod_worker_failed_syncs_total {failed}");
    out.push_str(
        "# HELP rkubelet_pod_start_seconds Time from the agent first seeing a pod to all its containers running.\n",
    );
    out.push_str("# TYPE rkubelet_pod_start_seconds gauge\n");
    let entries = s.store.list();
    for e in entries.iter() {
        if let Some(r) = e.start {
            let _ = writeln!(
                out,
                "rkubelet_pod_start_seconds{{pod=\"{}\"}} {:.6}",
                escape_label(&spec::key(&e.pod)),
                r.total.as_secs_f64()
            );
        }
    }
    out.push_str("# HELP rkubelet_pod_start_cri_seconds Part of the pod start time spent inside CRI calls.\n");
    out.push_str("# TYPE rkubelet_pod_start_cri_seconds gauge\n");
    for e in entries.iter() {
        if let Some(r) = e.start {
            let _ = writeln!(
                out,
                "rkubelet_pod_start_cri_seconds{{pod=\"{}\"}} {:.6}",
                escape_label(&spec::key(&e.pod)),
                r.cri.as_secs_f64()
            );
        }
    }
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], out).into_response()
}
