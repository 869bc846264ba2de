//! Node, pod and container statistics: the node from `/proc` and the filesystems, pods and containers from CRI
//! `ListContainerStats`/`ListPodSandboxStats`; they feed `/stats/summary` and `/metrics/resource`.

pub mod node;
pub mod summary;

use std::path::{Path, PathBuf};

use crate::runtime::Runtime;
use k8s_openapi::api::core::v1::Pod;

use summary::{ContainerInfo, FsCapacity, PodInfo, Summary};

/// The pods the agent runs, each with its latest status: the summary lists their running containers. The status
/// layer above gives them; stats only reads.
pub trait PodLister: Send + Sync {
    fn pods_with_status(&self) -> Vec<Pod>;
}

/// Gathers the summary on request, as kubelet's stats provider does.
#[derive(Clone)]
pub struct StatsProvider {
    pub node_name: String,
    pub runtime: Runtime,
    pub pods: std::sync::Arc<dyn PodLister>,
    pub root_dir: PathBuf,
    pub pod_logs_dir: PathBuf,
    pub node_cpu: std::sync::Arc<node::CpuRate>,
}

/// Bytes of the regular files under `dir` (a container's log files).
fn dir_bytes(dir: &Path) -> Option<u64> {
    let entries = std::fs::read_dir(dir).ok()?;
    Some(entries.flatten().filter_map(|e| e.metadata().ok()).filter(|m| m.is_file()).map(|m| m.len()).sum())
}

/// The running containers of the pods the agent runs, as the summary lists them.
fn pod_infos(pods: &dyn PodLister, pod_logs_dir: &Path) -> Vec<PodInfo> {
    pods.pods_with_status()
        .into_iter()
        .filter_map(|pod| {
            let status = pod.status?;
            let meta = &pod.metadata;
            let (name, namespace, uid) = (meta.name.clone()?, meta.namespace.clone()?, meta.uid.clone()?);
            let log_dir = pod_logs_dir.join(format!("{namespace}_{name}_{uid}"));
            let containers: Vec<ContainerInfo> = status
                .container_statuses
                .iter()
                .flatten()
                .chain(status.init_container_statuses.iter().flatten())
                .chain(status.ephemeral_container_statuses.iter().flatten())
                .filter_map(|c| {
                    let running = c.state.as_ref()?.running.as_ref()?;
                    let id = c.container_id.as_deref()?;
                    Some(ContainerInfo {
                        name: c.name.clone(),
                        id: id.split_once("://").map(|(_, id)| id).unwrap_or(id).to_owned(),
                        start_time: running.started_at.as_ref().map(|t| t.0.to_string()).unwrap_or_default(),
                        log_bytes: dir_bytes(&log_dir.join(&c.name)),
                    })
                })
                .collect();
            if containers.is_empty() {
                return None;
            }
            Some(PodInfo {
                name,
                namespace,
                uid,
                start_time: status.start_time.as_ref().map(|t| t.0.to_string()).unwrap_or_default(),
                containers,
            })
        })
        .collect()
}

impl StatsProvider {
    /// The summary, and whether gathering the container part failed (`scrape_error`).
    pub async fn summary(&self) -> (Summary, bool) {
        let now = jiff::Timestamp::now().to_string();
        let mut summary =
            Summary { node: node::node_stats(&self.node_name, &self.root_dir, &self.node_cpu), pods: vec![] };
        let (containers, sandboxes, image_fs) = tokio::join!(
            self.runtime.list_container_stats(),
            self.runtime.list_pod_sandbox_stats(),
            self.runtime.image_fs_info()
        );
        let image_fs = image_fs.ok().and_then(|fs| fs.into_iter().next());
        let image_capacity: Option<FsCapacity> =
            image_fs.as_ref().and_then(|f| node::statvfs(Path::new(&f.mountpoint)));
        if let Some(f) = &image_fs {
            let time = summary::time_of(f.timestamp_ns);
            let stats = summary::fs_stats(&time, f.used_bytes, f.inodes_used, image_capacity);
            summary.node.runtime =
                Some(summary::RuntimeStats { image_fs: Some(stats.clone()), container_fs: Some(stats) });
        }
        let failed = containers.is_err();
        if let Err(e) = &containers {
            tracing::warn!(error = %e, "container stats failed");
        }
        // Runtimes without pod sandbox stats: the pod figures are summed from its containers.
        let sandboxes = sandboxes.unwrap_or_default();
        let pods = pod_infos(self.pods.as_ref(), &self.pod_logs_dir);
        summary.pods = summary::pod_stats(&pods, &containers.unwrap_or_default(), &sandboxes, image_capacity, &now);
        (summary, failed)
    }
}
