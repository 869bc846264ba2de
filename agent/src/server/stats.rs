//! The kubelet server's stats and metrics endpoints: `/stats/summary`, `/metrics/resource`, `/metrics/probes`,
//! `/runningpods/` and `/configz`.

use crate::kubetypes::duration::format_go_duration;
use axum::extract::{RawQuery, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::server::containers::query_pairs;
use crate::stats::summary::Summary;
use crate::stats::StatsProvider;
use crate::status::store::PodStore;

#[derive(Clone)]
pub struct StatsState {
    pub stats: StatsProvider,
    pub store: PodStore,
    /// kubelet's `/configz` body: the configuration in effect under `kubeletconfig`.
    pub configz: serde_json::Value,
}

fn json_response(value: &impl serde::Serialize) -> Response {
    match serde_json::to_string(value) {
        Ok(body) => ([(header::CONTENT_TYPE, "application/json")], body).into_response(),
        Err(e) => (axum::http::StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

/// kubelet's `only_cpu_and_memory=true`: the node and pods with their CPU and memory only.
pub fn only_cpu_and_memory(summary: Summary) -> Summary {
    let mut s = summary;
    s.node.network = None;
    s.node.fs = None;
    s.node.runtime = None;
    s.node.rlimit = None;
    s.node.io = None;
    for p in &mut s.pods {
        p.network = None;
        p.io = None;
        p.volume_stats.clear();
        p.ephemeral_storage = None;
        p.process_stats = None;
        for c in &mut p.containers {
            c.rootfs = None;
            c.logs = None;
            c.io = None;
        }
    }
    s
}

pub async fn summary(State(s): State<StatsState>, RawQuery(query): RawQuery) -> Response {
    let (summary, _) = s.stats.summary().await;
    let only = query_pairs(query.as_deref()).iter().any(|(k, v)| k == "only_cpu_and_memory" && v == "true");
    json_response(&if only { only_cpu_and_memory(summary) } else { summary })
}

pub async fn resource_metrics(State(s): State<StatsState>) -> Response {
    let (summary, failed) = s.stats.summary().await;
    let text = crate::stats::summary::resource_metrics(&summary, failed);
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], text).into_response()
}

/// kubelet's `/metrics/probes`: the prober's counters and durations.
pub async fn probe_metrics() -> Response {
    let text = crate::probes::metrics::PROBER_METRICS.render();
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], text).into_response()
}

/// kubelet's `/runningpods/`: pods with running containers, as the runtime sees them (name, namespace, uid and
/// each running container's name and image).
pub async fn running_pods(State(s): State<StatsState>) -> Response {
    let items: Vec<serde_json::Value> = s
        .store
        .list()
        .into_iter()
        .filter_map(|e| {
            let status = e.status.clone().or_else(|| e.pod.status.clone())?;
            let containers: Vec<serde_json::Value> = status
                .container_statuses
                .iter()
                .flatten()
                .chain(status.init_container_statuses.iter().flatten())
                .chain(status.ephemeral_container_statuses.iter().flatten())
                .filter(|c| c.state.as_ref().is_some_and(|st| st.running.is_some()))
                .map(|c| json!({"name": c.name, "image": c.image, "resources": {}}))
                .collect();
            (!containers.is_empty()).then(|| {
                json!({
                    "metadata": {
                        "name": e.pod.metadata.name,
                        "namespace": e.pod.metadata.namespace,
                        "uid": e.pod.metadata.uid,
                        "creationTimestamp": null,
                    },
                    "spec": {"containers": containers},
                    "status": {},
                })
            })
        })
        .collect();
    json_response(&json!({"kind": "PodList", "apiVersion": "v1", "metadata": {}, "items": items}))
}

pub async fn configz(State(s): State<StatsState>) -> Response {
    json_response(&json!({ "kubeletconfig": s.configz }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::summary::{ContainerStats, FsStats, IoStats, NodeStats, PodStats, VolumeStats};

    #[test]
    fn only_cpu_and_memory_drops_the_rest() {
        let s = Summary {
            node: NodeStats { fs: Some(FsStats::default()), ..Default::default() },
            pods: vec![PodStats {
                ephemeral_storage: Some(FsStats::default()),
                volume_stats: vec![VolumeStats::default()],
                io: Some(IoStats::default()),
                containers: vec![ContainerStats {
                    rootfs: Some(FsStats::default()),
                    io: Some(IoStats::default()),
                    ..Default::default()
                }],
                ..Default::default()
            }],
        };
        let s = only_cpu_and_memory(s);
        assert!(
            s.node.fs.is_none() && s.pods[0].ephemeral_storage.is_none() && s.pods[0].containers[0].rootfs.is_none()
        );
        assert!(s.pods[0].volume_stats.is_empty() && s.pods[0].io.is_none() && s.pods[0].containers[0].io.is_none());
    }
}

/// The configuration in effect, under kubelet's field names (the body of `/configz`).
pub fn configz_json(c: &crate::config::KubeletConfig) -> serde_json::Value {
    let mode = match c.auth.authorization_mode {
        crate::config::AuthorizationMode::AlwaysAllow => "AlwaysAllow",
        crate::config::AuthorizationMode::Webhook => "Webhook",
    };
    json!({
        "enableServer": c.enable_server,
        "staticPodPath": c.static_pod_path,
        "syncFrequency": format_go_duration(c.sync_frequency),
        "fileCheckFrequency": format_go_duration(c.file_check_frequency),
        "address": c.address.to_string(),
        "port": c.port,
        "readOnlyPort": c.read_only_port,
        "tlsCertFile": c.tls_cert_file,
        "tlsPrivateKeyFile": c.tls_private_key_file,
        "authentication": {
            "x509": {"clientCAFile": c.auth.client_ca_file},
            "webhook": {"enabled": c.auth.webhook_authentication, "cacheTTL": format_go_duration(c.auth.authentication_cache_ttl)},
            "anonymous": {"enabled": c.auth.anonymous},
        },
        "authorization": {
            "mode": mode,
            "webhook": {
                "cacheAuthorizedTTL": format_go_duration(c.auth.authorized_ttl),
                "cacheUnauthorizedTTL": format_go_duration(c.auth.unauthorized_ttl),
            },
        },
        "healthzPort": c.healthz_port,
        "healthzBindAddress": c.healthz_bind_address.to_string(),
        "clusterDomain": c.cluster_domain,
        "clusterDNS": c.cluster_dns.iter().map(|ip| ip.to_string()).collect::<Vec<_>>(),
        "podCIDR": c.pod_cidr,
        "resolvConf": c.resolv_conf,
        "cgroupsPerQOS": c.cgroups_per_qos,
        "cgroupDriver": format!("{:?}", c.cgroup_driver).to_lowercase(),
        "enforceNodeAllocatable": c.enforce_node_allocatable,
        "maxPods": c.max_pods,
        "serializeImagePulls": c.serialize_image_pulls,
        "containerRuntimeEndpoint": c.container_runtime_endpoint,
        "podLogsDir": c.pod_logs_dir,
        "containerLogMaxSize": c.container_log_max_size.to_string(),
        "containerLogMaxFiles": c.container_log_max_files,
        "volumeStatsAggPeriod": format_go_duration(c.volume_stats_agg_period.unwrap_or_default()),
        "registerWithTaints": c.register_with_taints,
        "logging": {"verbosity": c.verbosity},
    })
}

#[cfg(test)]
mod configz_tests {
    use super::*;

    #[test]
    fn durations_print_as_go_does() {
        let c = crate::config::KubeletConfig::resolve(None, &Default::default(), "n").unwrap();
        let v = configz_json(&c);
        assert_eq!(v["port"], 10250);
        assert_eq!(v["authorization"]["mode"], "AlwaysAllow");
        assert_eq!(v["syncFrequency"], "1m0s");
    }
}
