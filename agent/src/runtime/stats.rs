//! CRI statistics and images for the kubelet server and the node status: `ListContainerStats`,
//! `ListPodSandboxStats`, `ImageFsInfo` and `ListImages`, in the agent's own types.

use std::collections::HashMap;

use cri_proto::runtime::v1 as cri;

use crate::runtime::client::{Runtime, RuntimeError, RUNTIME_REQUEST_TIMEOUT};
use crate::runtime::labels;

#[derive(Debug, Clone, Default, PartialEq)]
pub struct CpuSample {
    pub timestamp_ns: i64,
    pub usage_core_nano_seconds: Option<u64>,
    pub usage_nano_cores: Option<u64>,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct MemorySample {
    pub timestamp_ns: i64,
    pub working_set_bytes: Option<u64>,
    pub available_bytes: Option<u64>,
    pub usage_bytes: Option<u64>,
    pub rss_bytes: Option<u64>,
    pub page_faults: Option<u64>,
    pub major_page_faults: Option<u64>,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct FsSample {
    pub timestamp_ns: i64,
    pub mountpoint: String,
    pub used_bytes: Option<u64>,
    pub inodes_used: Option<u64>,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct InterfaceSample {
    pub name: String,
    pub rx_bytes: Option<u64>,
    pub rx_errors: Option<u64>,
    pub tx_bytes: Option<u64>,
    pub tx_errors: Option<u64>,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct NetworkSample {
    pub timestamp_ns: i64,
    pub default_interface: Option<InterfaceSample>,
    pub interfaces: Vec<InterfaceSample>,
}

/// One container's statistics.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ContainerStatsRecord {
    pub id: String,
    pub name: String,
    pub pod_uid: String,
    pub pod_name: String,
    pub pod_namespace: String,
    pub cpu: Option<CpuSample>,
    pub memory: Option<MemorySample>,
    pub writable_layer: Option<FsSample>,
}

/// One pod sandbox's statistics (the pod as a whole: its cgroup and its network namespace).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PodSandboxStatsRecord {
    pub id: String,
    pub pod_uid: String,
    pub name: String,
    pub namespace: String,
    pub cpu: Option<CpuSample>,
    pub memory: Option<MemorySample>,
    pub network: Option<NetworkSample>,
    pub process_count: Option<u64>,
}

/// An image the runtime holds, as the node status lists it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ImageRecord {
    pub id: String,
    pub repo_tags: Vec<String>,
    pub repo_digests: Vec<String>,
    pub size_bytes: u64,
    /// The runtime asks that the image never be removed (CRI `pinned`, e.g. its sandbox image); image GC skips it.
    pub pinned: bool,
}

fn value(v: Option<cri::UInt64Value>) -> Option<u64> {
    v.map(|v| v.value)
}

fn cpu(c: Option<cri::CpuUsage>) -> Option<CpuSample> {
    c.map(|c| CpuSample {
        timestamp_ns: c.timestamp,
        usage_core_nano_seconds: value(c.usage_core_nano_seconds),
        usage_nano_cores: value(c.usage_nano_cores),
    })
}

fn memory(m: Option<cri::MemoryUsage>) -> Option<MemorySample> {
    m.map(|m| MemorySample {
        timestamp_ns: m.timestamp,
        working_set_bytes: value(m.working_set_bytes),
        available_bytes: value(m.available_bytes),
        usage_bytes: value(m.usage_bytes),
        rss_bytes: value(m.rss_bytes),
        page_faults: value(m.page_faults),
        major_page_faults: value(m.major_page_faults),
    })
}

fn fs(f: cri::FilesystemUsage) -> FsSample {
    FsSample {
        timestamp_ns: f.timestamp,
        mountpoint: f.fs_id.map(|i| i.mountpoint).unwrap_or_default(),
        used_bytes: value(f.used_bytes),
        inodes_used: value(f.inodes_used),
    }
}

fn interface(i: cri::NetworkInterfaceUsage) -> InterfaceSample {
    InterfaceSample {
        name: i.name,
        rx_bytes: value(i.rx_bytes),
        rx_errors: value(i.rx_errors),
        tx_bytes: value(i.tx_bytes),
        tx_errors: value(i.tx_errors),
    }
}

fn label(labels: &HashMap<String, String>, key: &str) -> String {
    labels.get(key).cloned().unwrap_or_default()
}

fn container_stats(s: cri::ContainerStats) -> ContainerStatsRecord {
    let attrs = s.attributes.unwrap_or_default();
    ContainerStatsRecord {
        name: attrs.metadata.map(|m| m.name).unwrap_or_default(),
        pod_uid: label(&attrs.labels, labels::POD_UID),
        pod_name: label(&attrs.labels, labels::POD_NAME),
        pod_namespace: label(&attrs.labels, labels::POD_NAMESPACE),
        id: attrs.id,
        cpu: cpu(s.cpu),
        memory: memory(s.memory),
        writable_layer: s.writable_layer.map(fs),
    }
}

impl Runtime {
    /// Statistics of every container this agent created.
    pub async fn list_container_stats(&self) -> Result<Vec<ContainerStatsRecord>, RuntimeError> {
        let mut c = self.runtime.clone();
        let filter = cri::ContainerStatsFilter {
            label_selector: HashMap::from([(labels::MANAGED_BY.to_owned(), "true".to_owned())]),
            ..Default::default()
        };
        let resp = self
            .call(
                "ListContainerStats",
                Some(RUNTIME_REQUEST_TIMEOUT),
                c.list_container_stats(cri::ListContainerStatsRequest { filter: Some(filter) }),
            )
            .await?;
        Ok(resp.stats.into_iter().map(container_stats).collect())
    }

    /// Statistics of every pod sandbox this agent created (CRI `ListPodSandboxStats`).
    pub async fn list_pod_sandbox_stats(&self) -> Result<Vec<PodSandboxStatsRecord>, RuntimeError> {
        let mut c = self.runtime.clone();
        let filter = cri::PodSandboxStatsFilter {
            label_selector: HashMap::from([(labels::MANAGED_BY.to_owned(), "true".to_owned())]),
            ..Default::default()
        };
        let resp = self
            .call(
                "ListPodSandboxStats",
                Some(RUNTIME_REQUEST_TIMEOUT),
                c.list_pod_sandbox_stats(cri::ListPodSandboxStatsRequest { filter: Some(filter) }),
            )
            .await?;
        Ok(resp
            .stats
            .into_iter()
            .map(|s| {
                let attrs = s.attributes.unwrap_or_default();
                let meta = attrs.metadata.unwrap_or_default();
                let linux = s.linux.unwrap_or_default();
                PodSandboxStatsRecord {
                    id: attrs.id,
                    pod_uid: if meta.uid.is_empty() { label(&attrs.labels, labels::POD_UID) } else { meta.uid },
                    name: meta.name,
                    namespace: meta.namespace,
                    cpu: cpu(linux.cpu),
                    memory: memory(linux.memory),
                    network: linux.network.map(|n| NetworkSample {
                        timestamp_ns: n.timestamp,
                        default_interface: n.default_interface.map(interface),
                        interfaces: n.interfaces.into_iter().map(interface).collect(),
                    }),
                    process_count: linux.process.and_then(|p| value(p.process_count)),
                }
            })
            .collect())
    }

    /// The filesystems holding images (CRI `ImageFsInfo`).
    pub async fn image_fs_info(&self) -> Result<Vec<FsSample>, RuntimeError> {
        let mut c = self.images.clone();
        let resp = self
            .call("ImageFsInfo", Some(RUNTIME_REQUEST_TIMEOUT), c.image_fs_info(cri::ImageFsInfoRequest {}))
            .await?;
        Ok(resp.image_filesystems.into_iter().map(fs).collect())
    }

    /// Every image the runtime holds (CRI `ListImages`).
    pub async fn list_images(&self) -> Result<Vec<ImageRecord>, RuntimeError> {
        let mut c = self.images.clone();
        let resp = self
            .call("ListImages", Some(RUNTIME_REQUEST_TIMEOUT), c.list_images(cri::ListImagesRequest { filter: None }))
            .await?;
        Ok(resp
            .images
            .into_iter()
            .map(|i| ImageRecord {
                id: i.id,
                repo_tags: i.repo_tags,
                repo_digests: i.repo_digests,
                size_bytes: i.size,
                pinned: i.pinned,
            })
            .collect())
    }
}
