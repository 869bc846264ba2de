//! kubelet's Summary API (`/stats/summary`, stats/v1alpha1) built purely from samples, and the resource metrics
//! (`/metrics/resource`) metrics-server reads, derived from the same summary as kubelet's collector does.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

use crate::runtime::stats::{ContainerStatsRecord, CpuSample, MemorySample, NetworkSample, PodSandboxStatsRecord};

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
#[serde(rename_all = "camelCase")]
pub struct CpuStats {
    pub time: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usage_nano_cores: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usage_core_nano_seconds: Option<u64>,
    /// CPU pressure (kubelet 1.33's `psi`), on cgroup v2 only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub psi: Option<PsiStats>,
}

/// kubelet 1.33's `PSIData` (`k8s.io/kubelet/pkg/apis/stats/v1alpha1`): the kernel's cumulative stall time
/// (`total`, in microseconds as the kernel writes it, which kubelet passes on unchanged) and the percentages of time
/// stalled over 10 s, 60 s and 300 s.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct PsiData {
    pub total: u64,
    pub avg10: f64,
    pub avg60: f64,
    pub avg300: f64,
}

/// kubelet 1.33's `PSIStats`: `full` (every non-idle task stalled) and `some` (at least one).
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct PsiStats {
    pub full: PsiData,
    pub some: PsiData,
}

/// kubelet 1.33's `IOStats`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct IoStats {
    pub time: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub psi: Option<PsiStats>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
#[serde(rename_all = "camelCase")]
pub struct MemoryStats {
    pub time: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub available_bytes: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usage_bytes: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub working_set_bytes: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rss_bytes: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub page_faults: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub major_page_faults: Option<u64>,
    /// Memory pressure (kubelet 1.33's `psi`), on cgroup v2 only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub psi: Option<PsiStats>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
#[serde(rename_all = "camelCase")]
pub struct InterfaceStats {
    pub name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rx_bytes: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rx_errors: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tx_bytes: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tx_errors: Option<u64>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
#[serde(rename_all = "camelCase")]
pub struct NetworkStats {
    pub time: String,
    /// The default interface's figures, inline as kubelet's `InterfaceStats` embedding.
    #[serde(flatten)]
    pub default: InterfaceStats,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub interfaces: Vec<InterfaceStats>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
#[serde(rename_all = "camelCase")]
pub struct FsStats {
    pub time: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub available_bytes: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub capacity_bytes: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub used_bytes: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub inodes_free: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub inodes: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub inodes_used: Option<u64>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
#[serde(rename_all = "camelCase")]
pub struct RuntimeStats {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub image_fs: Option<FsStats>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub container_fs: Option<FsStats>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
#[serde(rename_all = "camelCase")]
pub struct RlimitStats {
    pub time: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub maxpid: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub curproc: Option<i64>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
#[serde(rename_all = "camelCase")]
pub struct NodeStats {
    pub node_name: String,
    pub start_time: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpu: Option<CpuStats>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memory: Option<MemoryStats>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub io: Option<IoStats>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub network: Option<NetworkStats>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fs: Option<FsStats>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub runtime: Option<RuntimeStats>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rlimit: Option<RlimitStats>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct PodReference {
    pub name: String,
    pub namespace: String,
    pub uid: String,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
#[serde(rename_all = "camelCase")]
pub struct ContainerStats {
    pub name: String,
    pub start_time: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpu: Option<CpuStats>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memory: Option<MemoryStats>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub io: Option<IoStats>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rootfs: Option<FsStats>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub logs: Option<FsStats>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct ProcessStats {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub process_count: Option<u64>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
#[serde(rename_all = "camelCase")]
pub struct PodStats {
    pub pod_ref: PodReference,
    pub start_time: String,
    pub containers: Vec<ContainerStats>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpu: Option<CpuStats>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memory: Option<MemoryStats>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub io: Option<IoStats>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub network: Option<NetworkStats>,
    /// kubelet's `volume`: the figures of each volume it can measure.
    #[serde(rename = "volume", skip_serializing_if = "Vec::is_empty")]
    pub volume_stats: Vec<VolumeStats>,
    #[serde(rename = "ephemeral-storage", skip_serializing_if = "Option::is_none")]
    pub ephemeral_storage: Option<FsStats>,
    #[serde(rename = "process_stats", skip_serializing_if = "Option::is_none")]
    pub process_stats: Option<ProcessStats>,
}

/// kubelet's `VolumeStats`: the filesystem figures inline, then the volume's name.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct VolumeStats {
    #[serde(flatten)]
    pub fs: FsStats,
    pub name: String,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct Summary {
    pub node: NodeStats,
    pub pods: Vec<PodStats>,
}

/// A filesystem's size, from statvfs.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct FsCapacity {
    pub capacity_bytes: u64,
    pub available_bytes: u64,
    pub inodes: u64,
    pub inodes_free: u64,
}

/// What `du` finds: bytes (blocks × 512) and inodes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DiskUsage {
    pub bytes: u64,
    pub inodes: u64,
}

/// A running container of a pod the agent runs, with what stats cannot tell.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ContainerInfo {
    pub name: String,
    pub id: String,
    pub start_time: String,
    /// Its log files (kubelet's `getPodContainerLogStats`).
    pub logs: Option<DiskUsage>,
    /// Its cgroup's pressure, on cgroup v2.
    pub psi: CgroupPsi,
}

/// A cgroup's `cpu.pressure`, `memory.pressure` and `io.pressure`, each absent where the kernel gives none.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct CgroupPsi {
    pub cpu: Option<PsiStats>,
    pub memory: Option<PsiStats>,
    pub io: Option<PsiStats>,
}

impl CgroupPsi {
    /// Puts the pressures on the CPU, memory and IO figures, creating a figure (at `time`) that only carries one.
    pub fn attach(
        &self,
        cpu: &mut Option<CpuStats>,
        memory: &mut Option<MemoryStats>,
        io: &mut Option<IoStats>,
        time: &str,
    ) {
        if let Some(p) = self.cpu {
            cpu.get_or_insert_with(|| CpuStats { time: time.to_owned(), ..Default::default() }).psi = Some(p);
        }
        if let Some(p) = self.memory {
            memory.get_or_insert_with(|| MemoryStats { time: time.to_owned(), ..Default::default() }).psi = Some(p);
        }
        if let Some(p) = self.io {
            io.get_or_insert_with(|| IoStats { time: time.to_owned(), psi: None }).psi = Some(p);
        }
    }
}

/// A volume's figures from its latest walk.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct VolumeMeasure {
    pub time: String,
    pub usage: DiskUsage,
    /// The filesystem the volume lives on.
    pub capacity: Option<FsCapacity>,
}

/// A measurable volume of a pod: its figures, once walked.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct VolumeInfo {
    pub name: String,
    /// Counted in the pod's `ephemeral-storage` (`util.IsLocalEphemeralVolume`).
    pub local_ephemeral: bool,
    pub measured: Option<VolumeMeasure>,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct PodInfo {
    pub name: String,
    pub namespace: String,
    pub uid: String,
    pub start_time: String,
    pub containers: Vec<ContainerInfo>,
    pub volumes: Vec<VolumeInfo>,
    /// Files directly in the pod's log folder (kubelet's `getPodLogStats`).
    pub pod_logs: Option<DiskUsage>,
    /// The kubelet-managed `etc-hosts` file (kubelet's `getPodEtcHostsStats`).
    pub etc_hosts: Option<DiskUsage>,
    /// The pod cgroup's pressure, on cgroup v2.
    pub psi: CgroupPsi,
}

/// RFC 3339 time of a CRI timestamp in nanoseconds.
pub fn time_of(ns: i64) -> String {
    jiff::Timestamp::from_nanosecond(i128::from(ns)).map(|t| t.to_string()).unwrap_or_default()
}

pub fn cpu_stats(c: &CpuSample) -> CpuStats {
    CpuStats {
        time: time_of(c.timestamp_ns),
        usage_nano_cores: c.usage_nano_cores,
        usage_core_nano_seconds: c.usage_core_nano_seconds,
        psi: None,
    }
}

pub fn memory_stats(m: &MemorySample) -> MemoryStats {
    MemoryStats {
        time: time_of(m.timestamp_ns),
        available_bytes: m.available_bytes,
        usage_bytes: m.usage_bytes,
        working_set_bytes: m.working_set_bytes,
        rss_bytes: m.rss_bytes,
        page_faults: m.page_faults,
        major_page_faults: m.major_page_faults,
        psi: None,
    }
}

pub fn network_stats(n: &NetworkSample) -> NetworkStats {
    let iface = |i: &crate::runtime::stats::InterfaceSample| InterfaceStats {
        name: i.name.clone(),
        rx_bytes: i.rx_bytes,
        rx_errors: i.rx_errors,
        tx_bytes: i.tx_bytes,
        tx_errors: i.tx_errors,
    };
    NetworkStats {
        time: time_of(n.timestamp_ns),
        default: n.default_interface.as_ref().map(iface).unwrap_or_default(),
        interfaces: n.interfaces.iter().map(iface).collect(),
    }
}

pub fn fs_stats(time: &str, used: Option<u64>, inodes_used: Option<u64>, cap: Option<FsCapacity>) -> FsStats {
    FsStats {
        time: time.to_owned(),
        available_bytes: cap.map(|c| c.available_bytes),
        capacity_bytes: cap.map(|c| c.capacity_bytes),
        used_bytes: used,
        inodes_free: cap.map(|c| c.inodes_free),
        inodes: cap.map(|c| c.inodes),
        inodes_used,
    }
}

fn add(a: Option<u64>, b: Option<u64>) -> Option<u64> {
    match (a, b) {
        (None, None) => None,
        (a, b) => Some(a.unwrap_or(0) + b.unwrap_or(0)),
    }
}

/// The filesystems the pods' figures live on: the container runtime's (writable layers) and the root dir's
/// (logs, volumes, the pod's `ephemeral-storage`, as kubelet's `rootFsInfo`).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct PodFilesystems {
    pub image_fs: Option<FsCapacity>,
    pub root_fs: Option<FsCapacity>,
}

/// kubelet's `addUsage`: a missing figure leaves the other as it is.
fn add_usage(total: &mut Option<u64>, more: Option<u64>) {
    *total = add(*total, more);
}

fn later(a: &mut String, b: &str) {
    // RFC 3339 in UTC with the same precision sorts as text; an unparsable time never wins.
    if ms(b).is_some() && (ms(a).is_none() || ms(b) > ms(a)) {
        *a = b.to_owned();
    }
}

/// A volume's `VolumeStats`: every figure set, as kubelet's `parsePodVolumeStats` sets them.
fn volume_stats(name: &str, m: &VolumeMeasure) -> VolumeStats {
    let cap = m.capacity.unwrap_or_default();
    VolumeStats {
        fs: FsStats {
            time: m.time.clone(),
            available_bytes: Some(cap.available_bytes),
            capacity_bytes: Some(cap.capacity_bytes),
            used_bytes: Some(m.usage.bytes),
            inodes_free: Some(cap.inodes_free),
            inodes: Some(cap.inodes),
            inodes_used: Some(m.usage.inodes),
        },
        name: name.to_owned(),
    }
}

/// kubelet's `calcEphemeralStorage` (`pkg/kubelet/stats/helper.go`): the root filesystem's size, and the sum of the
/// containers' writable layers and logs, the pod's local ephemeral volumes, its pod-level log files and its
/// `etc-hosts`, at the latest of their times.
fn ephemeral_storage(pod: &PodInfo, containers: &[ContainerStats], root_fs: Option<FsCapacity>, now: &str) -> FsStats {
    let mut out = fs_stats(now, None, None, root_fs);
    for c in containers {
        if let Some(rootfs) = &c.rootfs {
            later(&mut out.time, &rootfs.time);
            add_usage(&mut out.inodes_used, rootfs.inodes_used);
            add_usage(&mut out.used_bytes, rootfs.used_bytes);
        }
        if let Some(logs) = &c.logs {
            add_usage(&mut out.used_bytes, logs.used_bytes);
            add_usage(&mut out.inodes_used, logs.inodes_used);
            later(&mut out.time, &logs.time);
        }
    }
    for v in pod.volumes.iter().filter(|v| v.local_ephemeral) {
        if let Some(m) = &v.measured {
            add_usage(&mut out.used_bytes, Some(m.usage.bytes));
            add_usage(&mut out.inodes_used, Some(m.usage.inodes));
            later(&mut out.time, &m.time);
        }
    }
    for u in [pod.pod_logs, pod.etc_hosts].into_iter().flatten() {
        add_usage(&mut out.used_bytes, Some(u.bytes));
        add_usage(&mut out.inodes_used, Some(u.inodes));
    }
    out
}

/// The pods' part of the summary: containers from `ListContainerStats`, the pod's cgroup and network from
/// `ListPodSandboxStats` (summed from its containers when the runtime has no sandbox stats), the measured volumes,
/// and ephemeral storage as kubelet's `calcEphemeralStorage` counts it.
pub fn pod_stats(
    pods: &[PodInfo],
    containers: &[ContainerStatsRecord],
    sandboxes: &[PodSandboxStatsRecord],
    fs: PodFilesystems,
    now: &str,
) -> Vec<PodStats> {
    let by_id: BTreeMap<&str, &ContainerStatsRecord> = containers.iter().map(|c| (c.id.as_str(), c)).collect();
    pods.iter()
        .map(|pod| {
            let mut out = PodStats {
                pod_ref: PodReference {
                    name: pod.name.clone(),
                    namespace: pod.namespace.clone(),
                    uid: pod.uid.clone(),
                },
                start_time: pod.start_time.clone(),
                ..Default::default()
            };
            for c in &pod.containers {
                let stats = by_id.get(c.id.as_str());
                let rootfs = stats.and_then(|s| s.writable_layer.as_ref());
                let rootfs_time = rootfs.map(|f| time_of(f.timestamp_ns)).unwrap_or_else(|| now.to_owned());
                out.containers.push(ContainerStats {
                    name: c.name.clone(),
                    start_time: c.start_time.clone(),
                    cpu: stats.and_then(|s| s.cpu.as_ref()).map(cpu_stats),
                    memory: stats.and_then(|s| s.memory.as_ref()).map(memory_stats),
                    rootfs: rootfs.map(|f| fs_stats(&rootfs_time, f.used_bytes, f.inodes_used, fs.image_fs)),
                    logs: c.logs.map(|u| fs_stats(now, Some(u.bytes), Some(u.inodes), fs.root_fs)),
                    ..Default::default()
                });
                if let Some(last) = out.containers.last_mut() {
                    c.psi.attach(&mut last.cpu, &mut last.memory, &mut last.io, now);
                }
            }
            out.volume_stats =
                pod.volumes.iter().filter_map(|v| v.measured.as_ref().map(|m| volume_stats(&v.name, m))).collect();
            match sandboxes.iter().find(|s| s.pod_uid == pod.uid) {
                Some(s) => {
                    out.cpu = s.cpu.as_ref().map(cpu_stats);
                    out.memory = s.memory.as_ref().map(memory_stats);
                    out.network = s.network.as_ref().map(network_stats);
                    out.process_stats = s.process_count.map(|n| ProcessStats { process_count: Some(n) });
                }
                None => {
                    let cpus: Vec<&CpuStats> = out.containers.iter().filter_map(|c| c.cpu.as_ref()).collect();
                    if !cpus.is_empty() {
                        out.cpu = Some(CpuStats {
                            time: cpus.iter().map(|c| c.time.clone()).max().unwrap_or_default(),
                            usage_nano_cores: cpus.iter().fold(None, |a, c| add(a, c.usage_nano_cores)),
                            usage_core_nano_seconds: cpus.iter().fold(None, |a, c| add(a, c.usage_core_nano_seconds)),
                            psi: None,
                        });
                    }
                    let mems: Vec<&MemoryStats> = out.containers.iter().filter_map(|c| c.memory.as_ref()).collect();
                    if !mems.is_empty() {
                        out.memory = Some(MemoryStats {
                            time: mems.iter().map(|m| m.time.clone()).max().unwrap_or_default(),
                            usage_bytes: mems.iter().fold(None, |a, m| add(a, m.usage_bytes)),
                            working_set_bytes: mems.iter().fold(None, |a, m| add(a, m.working_set_bytes)),
                            rss_bytes: mems.iter().fold(None, |a, m| add(a, m.rss_bytes)),
                            ..Default::default()
                        });
                    }
                }
            }
            pod.psi.attach(&mut out.cpu, &mut out.memory, &mut out.io, now);
            out.ephemeral_storage = Some(ephemeral_storage(pod, &out.containers, fs.root_fs, now));
            out
        })
        .collect()
}

fn ms(time: &str) -> Option<i64> {
    time.parse::<jiff::Timestamp>().ok().map(|t| t.as_millisecond())
}

fn escape(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

/// kubelet's resource metrics (`/metrics/resource`) in the Prometheus text format, with the sample times from the
/// summary as metrics-server expects them.
pub fn resource_metrics(summary: &Summary, scrape_error: bool) -> String {
    let mut out = String::new();
    let family = |out: &mut String, name: &str, help: &str, kind: &str| {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
    };
    let sample = |out: &mut String, name: &str, labels: &str, value: f64, time: &str| {
        let _ = match ms(time) {
            Some(t) => writeln!(out, "{name}{labels} {value} {t}"),
            None => writeln!(out, "{name}{labels} {value}"),
        };
    };
    let containers: Vec<(&PodStats, &ContainerStats)> =
        summary.pods.iter().flat_map(|p| p.containers.iter().map(move |c| (p, c))).collect();
    let labels = |p: &PodStats, c: Option<&ContainerStats>| match c {
        Some(c) => format!(
            "{{container=\"{}\",namespace=\"{}\",pod=\"{}\"}}",
            escape(&c.name),
            escape(&p.pod_ref.namespace),
            escape(&p.pod_ref.name)
        ),
        None => format!("{{namespace=\"{}\",pod=\"{}\"}}", escape(&p.pod_ref.namespace), escape(&p.pod_ref.name)),
    };

    family(
        &mut out,
        "container_cpu_usage_seconds_total",
        "[STABLE] Cumulative cpu time consumed by the container in core-seconds",
        "counter",
    );
    for (p, c) in &containers {
        if let Some(cpu) = c.cpu.as_ref().filter(|c| c.usage_core_nano_seconds.is_some()) {
            let v = cpu.usage_core_nano_seconds.unwrap_or(0) as f64 / 1e9;
            sample(&mut out, "container_cpu_usage_seconds_total", &labels(p, Some(c)), v, &cpu.time);
        }
    }
    family(
        &mut out,
        "container_memory_working_set_bytes",
        "[STABLE] Current working set of the container in bytes",
        "gauge",
    );
    for (p, c) in &containers {
        if let Some(m) = c.memory.as_ref().filter(|m| m.working_set_bytes.is_some()) {
            let v = m.working_set_bytes.unwrap_or(0) as f64;
            sample(&mut out, "container_memory_working_set_bytes", &labels(p, Some(c)), v, &m.time);
        }
    }
    family(
        &mut out,
        "container_start_time_seconds",
        "[STABLE] Start time of the container since unix epoch in seconds",
        "gauge",
    );
    for (p, c) in &containers {
        if let Some(t) = ms(&c.start_time) {
            let time = c.cpu.as_ref().map(|c| c.time.clone()).unwrap_or_default();
            sample(&mut out, "container_start_time_seconds", &labels(p, Some(c)), t as f64 / 1e3, &time);
        }
    }
    family(
        &mut out,
        "node_cpu_usage_seconds_total",
        "[STABLE] Cumulative cpu time consumed by the node in core-seconds",
        "counter",
    );
    if let Some(cpu) = summary.node.cpu.as_ref().filter(|c| c.usage_core_nano_seconds.is_some()) {
        sample(
            &mut out,
            "node_cpu_usage_seconds_total",
            "",
            cpu.usage_core_nano_seconds.unwrap_or(0) as f64 / 1e9,
            &cpu.time,
        );
    }
    family(&mut out, "node_memory_working_set_bytes", "[STABLE] Current working set of the node in bytes", "gauge");
    if let Some(m) = summary.node.memory.as_ref().filter(|m| m.working_set_bytes.is_some()) {
        sample(&mut out, "node_memory_working_set_bytes", "", m.working_set_bytes.unwrap_or(0) as f64, &m.time);
    }
    family(
        &mut out,
        "pod_cpu_usage_seconds_total",
        "[STABLE] Cumulative cpu time consumed by the pod in core-seconds",
        "counter",
    );
    for p in &summary.pods {
        if let Some(cpu) = p.cpu.as_ref().filter(|c| c.usage_core_nano_seconds.is_some()) {
            let v = cpu.usage_core_nano_seconds.unwrap_or(0) as f64 / 1e9;
            sample(&mut out, "pod_cpu_usage_seconds_total", &labels(p, None), v, &cpu.time);
        }
    }
    family(&mut out, "pod_memory_working_set_bytes", "[STABLE] Current working set of the pod in bytes", "gauge");
    for p in &summary.pods {
        if let Some(m) = p.memory.as_ref().filter(|m| m.working_set_bytes.is_some()) {
            sample(
                &mut out,
                "pod_memory_working_set_bytes",
                &labels(p, None),
                m.working_set_bytes.unwrap_or(0) as f64,
                &m.time,
            );
        }
    }
    // cadvisor's PSI counters (kubelet 1.33 exports them on /metrics/cadvisor; this agent has no cadvisor and puts
    // them here): `stalled` is `full`, `waiting` is `some`, the kernel's microseconds in seconds. A container's
    // series carry its labels, a pod's an empty `container` (cadvisor's pod cgroup), the node's none (the root).
    for (resource, what, pick) in [
        ("cpu", "CPU", (|c, _, _| c) as fn(Option<PsiStats>, Option<PsiStats>, Option<PsiStats>) -> Option<PsiStats>),
        ("memory", "memory", |_, m, _| m),
        ("io", "IO", |_, _, i| i),
    ] {
        for (kind, help, full) in [
            (
                "stalled",
                format!("Total time duration no tasks in the container could make progress due to {what} congestion."),
                true,
            ),
            (
                "waiting",
                format!("Total time duration tasks in the container have waited due to {what} congestion."),
                false,
            ),
        ] {
            let name = format!("container_pressure_{resource}_{kind}_seconds_total");
            let value = |p: Option<PsiStats>| p.map(|p| if full { p.full.total } else { p.some.total } as f64 / 1e6);
            let psi_of = |cpu: &Option<CpuStats>, mem: &Option<MemoryStats>, io: &Option<IoStats>| {
                pick(
                    cpu.as_ref().and_then(|c| c.psi),
                    mem.as_ref().and_then(|m| m.psi),
                    io.as_ref().and_then(|i| i.psi),
                )
            };
            family(&mut out, &name, &help, "counter");
            for (p, c) in &containers {
                if let Some(v) = value(psi_of(&c.cpu, &c.memory, &c.io)) {
                    let _ = writeln!(out, "{name}{} {v}", labels(p, Some(c)));
                }
            }
            for p in &summary.pods {
                if let Some(v) = value(psi_of(&p.cpu, &p.memory, &p.io)) {
                    let labels = format!(
                        "{{container=\"\",namespace=\"{}\",pod=\"{}\"}}",
                        escape(&p.pod_ref.namespace),
                        escape(&p.pod_ref.name)
                    );
                    let _ = writeln!(out, "{name}{labels} {v}");
                }
            }
            let n = &summary.node;
            if let Some(v) = value(psi_of(&n.cpu, &n.memory, &n.io)) {
                let _ = writeln!(out, "{name} {v}");
            }
        }
    }
    family(
        &mut out,
        "scrape_error",
        "[ALPHA] 1 if there was an error while getting container metrics, 0 otherwise",
        "gauge",
    );
    let _ = writeln!(out, "scrape_error {}", u8::from(scrape_error));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::stats::FsSample;
    use serde_json::json;

    const T: i64 = 1_700_000_000_000_000_000;

    fn container(id: &str, name: &str, cpu_ns: u64, ws: u64) -> ContainerStatsRecord {
        ContainerStatsRecord {
            id: id.into(),
            name: name.into(),
            pod_uid: "u1".into(),
            cpu: Some(CpuSample {
                timestamp_ns: T,
                usage_core_nano_seconds: Some(cpu_ns),
                usage_nano_cores: Some(5_000_000),
            }),
            memory: Some(MemorySample {
                timestamp_ns: T,
                working_set_bytes: Some(ws),
                usage_bytes: Some(ws * 2),
                ..Default::default()
            }),
            writable_layer: Some(FsSample {
                timestamp_ns: T,
                mountpoint: "/var/lib".into(),
                used_bytes: Some(4096),
                inodes_used: Some(3),
            }),
            ..Default::default()
        }
    }

    fn pod() -> PodInfo {
        PodInfo {
            name: "web".into(),
            namespace: "default".into(),
            uid: "u1".into(),
            start_time: "2023-11-14T22:00:00Z".into(),
            containers: vec![
                ContainerInfo {
                    name: "app".into(),
                    id: "c1".into(),
                    start_time: "2023-11-14T22:13:21Z".into(),
                    logs: Some(DiskUsage { bytes: 100, inodes: 1 }),
                    ..Default::default()
                },
                ContainerInfo {
                    name: "side".into(),
                    id: "c2".into(),
                    start_time: "2023-11-14T22:13:22Z".into(),
                    logs: None,
                    ..Default::default()
                },
            ],
            ..Default::default()
        }
    }

    #[test]
    fn pods_sum_their_containers_without_sandbox_stats_and_count_ephemeral_storage() {
        let stats = [
            container("c1", "app", 2_000_000_000, 1000),
            container("c2", "side", 500_000_000, 24),
            container("old", "app", 9, 9),
        ];
        let cap = FsCapacity { capacity_bytes: 10_000, available_bytes: 6000, inodes: 100, inodes_free: 90 };
        let fs = PodFilesystems { image_fs: Some(cap), root_fs: Some(cap) };
        let pods = pod_stats(&[pod()], &stats, &[], fs, "2023-11-14T22:13:20Z");
        let p = &pods[0];
        assert_eq!(p.containers.len(), 2, "only the running containers of the pod");
        assert_eq!(p.cpu.as_ref().unwrap().usage_core_nano_seconds, Some(2_500_000_000));
        assert_eq!(p.cpu.as_ref().unwrap().usage_nano_cores, Some(10_000_000));
        assert_eq!(p.memory.as_ref().unwrap().working_set_bytes, Some(1024));
        let eph = p.ephemeral_storage.as_ref().unwrap();
        assert_eq!(
            (eph.used_bytes, eph.inodes_used, eph.capacity_bytes),
            (Some(4096 + 100 + 4096), Some(3 + 1 + 3), Some(10_000))
        );
        let json = serde_json::to_value(p).unwrap();
        assert_eq!(json["podRef"]["name"], "web");
        assert_eq!(json["containers"][0]["rootfs"]["usedBytes"], 4096);
        assert_eq!(json["containers"][0]["logs"]["usedBytes"], 100);
        assert_eq!(json["containers"][0]["cpu"]["usageNanoCores"], 5_000_000);
        assert!(json.get("ephemeral-storage").is_some());
        assert_eq!(json["cpu"]["time"], "2023-11-14T22:13:20Z");
    }

    #[test]
    fn ephemeral_storage_counts_local_volumes_logs_and_etc_hosts_on_the_root_filesystem() {
        let stats = [container("c1", "app", 1, 1), container("c2", "side", 1, 1)];
        let image = FsCapacity { capacity_bytes: 50_000, available_bytes: 1, inodes: 5, inodes_free: 1 };
        let root = FsCapacity { capacity_bytes: 90_000, available_bytes: 80_000, inodes: 900, inodes_free: 800 };
        let measure = |bytes, time: &str| VolumeMeasure {
            time: time.into(),
            usage: DiskUsage { bytes, inodes: 2 },
            capacity: Some(root),
        };
        let mut p = pod();
        p.volumes = vec![
            VolumeInfo {
                name: "scratch".into(),
                local_ephemeral: true,
                measured: Some(measure(2 << 20, "2023-11-14T22:14:00Z")),
            },
            VolumeInfo {
                name: "mem".into(),
                local_ephemeral: false,
                measured: Some(measure(1 << 20, "2023-11-14T22:13:00Z")),
            },
            VolumeInfo { name: "later".into(), local_ephemeral: true, measured: None },
        ];
        p.etc_hosts = Some(DiskUsage { bytes: 4096, inodes: 1 });
        p.pod_logs = Some(DiskUsage { bytes: 8192, inodes: 2 });
        let fs = PodFilesystems { image_fs: Some(image), root_fs: Some(root) };
        let out = &pod_stats(&[p], &stats, &[], fs, "2023-11-14T22:13:20Z")[0];
        let eph = out.ephemeral_storage.as_ref().unwrap();
        // Two writable layers, one log file, the disk-backed emptyDir, the pod's log files and etc-hosts.
        assert_eq!(eph.used_bytes, Some(4096 * 2 + 100 + (2 << 20) + 8192 + 4096));
        assert_eq!(eph.inodes_used, Some(3 * 2 + 1 + 2 + 2 + 1));
        assert_eq!((eph.capacity_bytes, eph.available_bytes), (Some(90_000), Some(80_000)), "the root filesystem");
        assert_eq!(eph.time, "2023-11-14T22:14:00Z", "the latest of its parts");
        let json = serde_json::to_value(out).unwrap();
        let vols = json["volume"].as_array().unwrap();
        assert_eq!(vols.len(), 2, "measured volumes only: {vols:?}");
        assert_eq!(vols[0]["name"], "scratch");
        assert_eq!(vols[0]["usedBytes"], 2 << 20);
        assert_eq!(vols[0]["inodesUsed"], 2);
        assert_eq!(vols[0]["capacityBytes"], 90_000);
        assert_eq!(vols[1]["name"], "mem");
        assert_eq!(json["containers"][0]["logs"]["capacityBytes"], 90_000);
        assert_eq!(json["containers"][0]["rootfs"]["capacityBytes"], 50_000);
    }

    #[test]
    fn psi_takes_kubelet_1_33s_shape_and_is_exported_as_cadvisors_counters() {
        let data = |total| PsiData { total, avg10: 1.5, avg60: 0.25, avg300: 0.0 };
        let psi = |t| Some(PsiStats { some: data(t), full: data(t / 2) });
        let stats = [container("c1", "app", 1, 1)];
        let mut p = pod();
        p.containers.truncate(1);
        p.containers[0].psi = CgroupPsi { cpu: psi(2_000_000), memory: psi(4_000_000), io: psi(6_000_000) };
        p.psi = CgroupPsi { cpu: None, memory: psi(8_000_000), io: None };
        let mut node = NodeStats { node_name: "n".into(), ..Default::default() };
        CgroupPsi { cpu: psi(10_000_000), memory: None, io: psi(12_000_000) }.attach(
            &mut node.cpu,
            &mut node.memory,
            &mut node.io,
            "t",
        );
        let summary = Summary { node, pods: pod_stats(&[p], &stats, &[], PodFilesystems::default(), &time_of(T)) };
        let json = serde_json::to_value(&summary).unwrap();
        let c = &json["pods"][0]["containers"][0];
        assert_eq!(c["cpu"]["psi"]["some"], json!({"total": 2_000_000, "avg10": 1.5, "avg60": 0.25, "avg300": 0.0}));
        assert_eq!(c["cpu"]["psi"]["full"]["total"], 1_000_000);
        assert_eq!(c["cpu"]["usageCoreNanoSeconds"], 1, "the CRI figures stay");
        assert_eq!(c["memory"]["psi"]["some"]["total"], 4_000_000);
        assert_eq!(c["io"]["psi"]["full"]["total"], 3_000_000);
        let pod = &json["pods"][0];
        assert_eq!(pod["memory"]["psi"]["some"]["total"], 8_000_000);
        assert!(pod["cpu"].get("psi").is_none() && pod.get("io").is_none(), "absent, not zero: {pod}");
        assert_eq!(
            json["node"]["io"],
            json!({"time": "t", "psi": {"full": {"total": 6_000_000, "avg10": 1.5, "avg60": 0.25, "avg300": 0.0}, "some": {"total": 12_000_000, "avg10": 1.5, "avg60": 0.25, "avg300": 0.0}}})
        );
        assert!(json["node"].get("memory").is_none());
        let back: Summary = serde_json::from_value(json).unwrap();
        assert_eq!(back, summary, "the summary reads back as it was written");

        let text = resource_metrics(&summary, false);
        for line in [
            "# TYPE container_pressure_cpu_stalled_seconds_total counter\n",
            "# HELP container_pressure_memory_waiting_seconds_total Total time duration tasks in the container have waited due to memory congestion.\n",
            "container_pressure_cpu_waiting_seconds_total{container=\"app\",namespace=\"default\",pod=\"web\"} 2\n",
            "container_pressure_cpu_stalled_seconds_total{container=\"app\",namespace=\"default\",pod=\"web\"} 1\n",
            "container_pressure_memory_waiting_seconds_total{container=\"\",namespace=\"default\",pod=\"web\"} 8\n",
            "container_pressure_io_stalled_seconds_total{container=\"app\",namespace=\"default\",pod=\"web\"} 3\n",
            "container_pressure_cpu_waiting_seconds_total 10\n",
            "container_pressure_io_waiting_seconds_total 12\n",
        ] {
            assert!(text.contains(line), "{line} in {text}");
        }
        assert!(!text.contains("container_pressure_memory_waiting_seconds_total 0"), "no node memory PSI: {text}");
    }

    #[test]
    fn sandbox_stats_give_the_pod_its_cgroup_and_network() {
        let sandbox = PodSandboxStatsRecord {
            pod_uid: "u1".into(),
            cpu: Some(CpuSample { timestamp_ns: T, usage_core_nano_seconds: Some(7), usage_nano_cores: Some(1) }),
            network: Some(NetworkSample {
                timestamp_ns: T,
                default_interface: Some(crate::runtime::stats::InterfaceSample {
                    name: "eth0".into(),
                    rx_bytes: Some(10),
                    ..Default::default()
                }),
                interfaces: vec![],
            }),
            process_count: Some(3),
            ..Default::default()
        };
        let pods = pod_stats(&[pod()], &[], &[sandbox], PodFilesystems::default(), "now");
        let json = serde_json::to_value(&pods[0]).unwrap();
        assert_eq!(json["cpu"]["usageCoreNanoSeconds"], 7);
        assert_eq!(json["network"]["name"], "eth0");
        assert_eq!(json["network"]["rxBytes"], 10);
        assert_eq!(json["process_stats"]["process_count"], 3);
    }

    #[test]
    fn resource_metrics_are_what_metrics_server_reads() {
        let stats = [container("c1", "app", 2_000_000_000, 1000), container("c2", "side", 500_000_000, 24)];
        let summary = Summary {
            node: NodeStats {
                node_name: "n".into(),
                cpu: Some(CpuStats {
                    time: time_of(T),
                    usage_core_nano_seconds: Some(3_000_000_000),
                    usage_nano_cores: None,
                    psi: None,
                }),
                memory: Some(MemoryStats { time: time_of(T), working_set_bytes: Some(5 << 20), ..Default::default() }),
                ..Default::default()
            },
            pods: pod_stats(&[pod()], &stats, &[], PodFilesystems::default(), &time_of(T)),
        };
        let text = resource_metrics(&summary, false);
        assert!(text.contains("# TYPE container_cpu_usage_seconds_total counter\n"), "{text}");
        assert!(text.contains("container_cpu_usage_seconds_total{container=\"app\",namespace=\"default\",pod=\"web\"} 2 1700000000000\n"), "{text}");
        assert!(text.contains("container_memory_working_set_bytes{container=\"side\",namespace=\"default\",pod=\"web\"} 24 1700000000000\n"), "{text}");
        assert!(text.contains("container_start_time_seconds{container=\"app\",namespace=\"default\",pod=\"web\"} 1700000001 1700000000000\n"), "{text}");
        assert!(text.contains("node_cpu_usage_seconds_total 3 1700000000000\n"), "{text}");
        assert!(text.contains("node_memory_working_set_bytes 5242880 1700000000000\n"), "{text}");
        assert!(
            text.contains("pod_cpu_usage_seconds_total{namespace=\"default\",pod=\"web\"} 2.5 1700000000000\n"),
            "{text}"
        );
        assert!(
            text.contains("pod_memory_working_set_bytes{namespace=\"default\",pod=\"web\"} 1024 1700000000000\n"),
            "{text}"
        );
        assert!(text.ends_with("scrape_error 0\n"), "{text}");
    }
}
