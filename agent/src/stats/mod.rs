//! Node, pod and container statistics: the node from `/proc` and the filesystems, pods and containers from CRI
//! `ListContainerStats`/`ListPodSandboxStats`; they feed `/stats/summary` and `/metrics/resource`.

pub mod node;
pub mod psi;
pub mod summary;
pub mod volumes;

use std::path::{Path, PathBuf};

use crate::runtime::Runtime;
use k8s_openapi::api::core::v1::Pod;

use summary::{ContainerInfo, FsCapacity, PodFilesystems, PodInfo, Summary};
use volumes::{VolumeDir, VolumeStatsCache};

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
    /// The pods' volume figures, walked in the background every `volumeStatsAggPeriod`.
    pub volume_stats: std::sync::Arc<VolumeStatsCache>,
}

/// kubelet's `HasDedicatedImageFs`: the runtime's image filesystem is another device than the root dir's (then the
/// eviction manager does not charge writable layers to the nodefs signals and container limits).
pub fn dedicated_image_fs(root_dir: &Path, image_fs_mountpoint: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (std::fs::metadata(root_dir), std::fs::metadata(image_fs_mountpoint)) {
        (Ok(a), Ok(b)) => a.dev() != b.dev(),
        _ => false,
    }
}

/// kubelet's `etc-hosts` file of a pod (`kubelet_pods.go: getEtcHostsPath`).
const ETC_HOSTS_FILE: &str = "etc-hosts";

/// The running containers of the pods the agent runs, as the summary lists them, with the folders of their
/// measurable volumes.
fn pod_infos(
    pods: &dyn PodLister,
    root_dir: &Path,
    pod_logs_dir: &Path,
    psi: Option<&psi::PsiSource>,
) -> Vec<(PodInfo, Vec<VolumeDir>)> {
    pods.pods_with_status()
        .into_iter()
        .filter_map(|pod| {
            let volumes = pod.spec.as_ref().and_then(|s| s.volumes.as_deref()).unwrap_or_default();
            let status = pod.status?;
            let meta = &pod.metadata;
            let (name, namespace, uid) = (meta.name.clone()?, meta.namespace.clone()?, meta.uid.clone()?);
            let log_dir = pod_logs_dir.join(format!("{namespace}_{name}_{uid}"));
            let pod_cgroup = psi.and_then(|p| p.pod_cgroup(&uid));
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
                        logs: volumes::files_usage(&log_dir.join(&c.name)),
                        psi: pod_cgroup
                            .as_deref()
                            .and_then(|p| psi::container_cgroup(p, id.split_once("://").map_or(id, |(_, id)| id)))
                            .map(|c| psi::cgroup_psi(&c))
                            .unwrap_or_default(),
                    })
                })
                .collect();
            if containers.is_empty() {
                return None;
            }
            let dirs = volumes::volume_dirs(root_dir, &uid, volumes);
            let pod_dir = root_dir.join("pods").join(&uid);
            let info = PodInfo {
                start_time: status.start_time.as_ref().map(|t| t.0.to_string()).unwrap_or_default(),
                containers,
                pod_logs: volumes::files_usage(&log_dir),
                etc_hosts: volumes::file_usage(&pod_dir.join(ETC_HOSTS_FILE)),
                psi: pod_cgroup.as_deref().map(psi::cgroup_psi).unwrap_or_default(),
                name,
                namespace,
                uid,
                volumes: vec![],
            };
            Some((info, dirs))
        })
        .collect()
}

impl StatsProvider {
    /// The summary, and whether gathering the container part failed (`scrape_error`).
    pub async fn summary(&self) -> (Summary, bool) {
        let now = jiff::Timestamp::now().to_string();
        let mut summary =
            Summary { node: node::node_stats(&self.node_name, &self.root_dir, &self.node_cpu), pods: vec![] };
        let psi = psi::PsiSource::host();
        if let Some(source) = &psi {
            let n = &mut summary.node;
            source.node().attach(&mut n.cpu, &mut n.memory, &mut n.io, &now);
        }
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
        let (mut pods, dirs): (Vec<PodInfo>, Vec<Vec<VolumeDir>>) =
            pod_infos(self.pods.as_ref(), &self.root_dir, &self.pod_logs_dir, psi.as_ref()).into_iter().unzip();
        let keyed: Vec<(String, Vec<VolumeDir>)> = pods.iter().map(|p| p.uid.clone()).zip(dirs).collect();
        for (pod, volumes) in pods.iter_mut().zip(self.volume_stats.volumes(&keyed)) {
            pod.volumes = volumes;
        }
        let fs = PodFilesystems { image_fs: image_capacity, root_fs: node::statvfs(&self.root_dir) };
        summary.pods = summary::pod_stats(&pods, &containers.unwrap_or_default(), &sandboxes, fs, &now);
        (summary, failed)
    }
}
