//! The kubelet's HTTP servers: the read-only server (kubelet's `readOnlyPort`: `/healthz`, `/pods` and `/metrics`),
//! the healthz server (`healthzBindAddress:healthzPort`), and the authenticated HTTPS kubelet server on
//! `address:port` with the container endpoints on top of the read-only ones.

pub mod auth;
pub mod cache;
pub mod cadvisor;
pub mod certificate;
pub mod connection;
pub mod containers;
pub mod metrics;

#[cfg(test)]
mod proptests;
pub mod secure;
pub mod stats;
pub mod streaming;
pub mod tls;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{Path, RawQuery, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;

use crate::pleg::PlegHealth;
use crate::runtime::RuntimeMetrics;
use crate::status::store::PodStore;

pub use metrics::PodWorkerMetrics;

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
        .route("/healthz/{check}", get(healthz_check))
        .route("/pods", get(pods))
        .route("/pods/", get(pods))
        .route("/metrics", get(kubelet_metrics))
        .with_state(state)
}

/// The healthz server's routes: only `/healthz` and its checks.
pub fn healthz_router(state: ServerState) -> Router {
    Router::new().route("/healthz", get(healthz)).route("/healthz/{check}", get(healthz_check)).with_state(state)
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
        .route("/metrics/cadvisor", get(cadvisor::cadvisor_metrics))
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

/// kubelet's `/healthz`: `ping`, `log` and `syncloop`.
async fn healthz(State(s): State<ServerState>, RawQuery(query): RawQuery) -> Response {
    metrics::healthz(&s, query.as_deref())
}

async fn healthz_check(State(s): State<ServerState>, Path(check): Path<String>) -> Response {
    metrics::healthz_check(&s, &check)
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

/// kubelet's `/metrics`.
async fn kubelet_metrics(State(s): State<ServerState>) -> Response {
    metrics::exposition(&metrics::kubelet_registry(&s))
}
