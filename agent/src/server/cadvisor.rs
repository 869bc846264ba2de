//! kubelet's `/metrics/cadvisor`: the series of cAdvisor's Prometheus collector that container dashboards read
//! (`vendor/github.com/google/cadvisor/metrics/prometheus.go`, `prometheus_machine.go`), labelled as kubelet's
//! `containerPrometheusLabelsFunc` labels them (`container`, `id`, `image`, `name`, `namespace`, `pod`).
//!
//! There is no cAdvisor here: the figures are the summary's (CRI container and sandbox stats, cgroup reads), the
//! labels come from the pod store, the runtime's sandboxes and the cgroup tree. Per pod it writes what cAdvisor
//! writes for a containerd node:
//! - each running container: `container` its name, `name` its ID, `id` its cgroup, `image` its image;
//! - the pod cgroup (`container=""`, `image=""`, `name=""`, `id` the pod's cgroup): CPU, memory, start time;
//! - the sandbox (`container=""`, `name` the sandbox ID, `id` its cgroup): the pod's network, per `interface`.
//!
//! Left out: the per-sample timestamps cAdvisor attaches (the text encoder has none; Prometheus stamps the scrape
//! instead), cAdvisor's other families (per-CPU usage, CFS throttling, disk I/O, page faults, the `container_spec_*`
//! and the system slices' cgroups), and `id` on hosts without the unified hierarchy (the cgroups are looked up there
//! only: the label is empty). `container_fs_usage_bytes`' `device` is the device of the root dir's filesystem.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::SystemTime;

use axum::extract::State;
use axum::response::Response;
use prometheus_client::registry::Registry;

use crate::server::metrics::{exposition, ConstFamily, Labels};
use crate::server::stats::StatsState;
use crate::stats::psi::{self, CGROUP_MOUNT};
use crate::stats::summary::{ContainerStats, PodStats, Summary};

/// What the labels of one pod's series are made of.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PodLabels {
    /// The pod's cgroup name (`/kubepods/...`), or empty.
    pub cgroup: String,
    /// Per container name: its ID, image and cgroup name.
    pub containers: BTreeMap<String, ContainerLabels>,
    /// The ready sandbox's ID and cgroup name.
    pub sandbox: Option<(String, String)>,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct ContainerLabels {
    pub id: String,
    pub image: String,
    pub cgroup: String,
}

/// cAdvisor's machine figures and its base labels.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Machine {
    pub cpu_cores: u64,
    pub memory_bytes: u64,
    pub machine_id: String,
    pub system_uuid: String,
    pub boot_id: String,
}

fn read_trimmed(path: &str) -> String {
    std::fs::read_to_string(path).map(|s| s.trim().to_owned()).unwrap_or_default()
}

impl Machine {
    /// Read from the host as cAdvisor's `machine.Info` reads it.
    pub fn host() -> Self {
        let memory_bytes = std::fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|m| {
                m.lines().find_map(|l| {
                    let kib = l.strip_prefix("MemTotal:")?.trim().strip_suffix("kB")?.trim().parse::<u64>().ok()?;
                    Some(kib * 1024)
                })
            })
            .unwrap_or_default();
        Self {
            cpu_cores: std::thread::available_parallelism().map(|n| n.get() as u64).unwrap_or(0),
            memory_bytes,
            machine_id: read_trimmed("/etc/machine-id"),
            system_uuid: read_trimmed("/sys/class/dmi/id/product_uuid"),
            boot_id: read_trimmed("/proc/sys/kernel/random/boot_id"),
        }
    }
}

/// A cgroup's name as cAdvisor gives it in `id`: its path under the unified hierarchy's mount.
fn cgroup_name(path: &Path) -> String {
    match path.strip_prefix(CGROUP_MOUNT) {
        Ok(rel) => format!("/{}", rel.display()),
        Err(_) => String::new(),
    }
}

fn strip_runtime(id: &str) -> &str {
    id.split_once("://").map_or(id, |(_, id)| id)
}

/// The labels of the pods' series: container IDs and images from the pod store, the ready sandbox of each pod,
/// cgroup names from the host's tree.
async fn pod_labels(s: &StatsState) -> BTreeMap<String, PodLabels> {
    let cgroups = psi::PsiSource::host();
    let sandboxes = s.stats.runtime.list_pod_sandboxes(None).await.unwrap_or_default();
    let mut out: BTreeMap<String, PodLabels> = BTreeMap::new();
    for pod in s.store.pods_with_status() {
        let Some(uid) = pod.metadata.uid.clone() else { continue };
        let pod_cgroup = cgroups.as_ref().and_then(|c| c.pod_cgroup(&uid));
        let entry = out.entry(uid.clone()).or_default();
        entry.cgroup = pod_cgroup.as_deref().map(cgroup_name).unwrap_or_default();
        let statuses = pod.status.iter().flat_map(|st| {
            st.container_statuses
                .iter()
                .flatten()
                .chain(st.init_container_statuses.iter().flatten())
                .chain(st.ephemeral_container_statuses.iter().flatten())
        });
        for c in statuses {
            let Some(id) = c.container_id.as_deref().map(strip_runtime) else { continue };
            let cgroup = pod_cgroup
                .as_deref()
                .and_then(|p| psi::container_cgroup(p, id))
                .map(|p| cgroup_name(&p))
                .unwrap_or_default();
            entry
                .containers
                .insert(c.name.clone(), ContainerLabels { id: id.to_owned(), image: c.image.clone(), cgroup });
        }
        if let Some(sb) = sandboxes.iter().filter(|sb| sb.pod_uid == uid && sb.ready).max_by_key(|sb| sb.created_at) {
            let cgroup = pod_cgroup
                .as_deref()
                .and_then(|p| psi::container_cgroup(p, &sb.id))
                .map(|p| cgroup_name(&p))
                .unwrap_or_default();
            entry.sandbox = Some((sb.id.clone(), cgroup));
        }
    }
    out
}

/// kubelet's `containerPrometheusLabelsFunc` labels, sorted by name as Go's client writes them.
fn base(container: &str, id: &str, image: &str, name: &str, p: &PodStats) -> Labels {
    vec![
        ("container", container.to_owned()),
        ("id", id.to_owned()),
        ("image", image.to_owned()),
        ("name", name.to_owned()),
        ("namespace", p.pod_ref.namespace.clone()),
        ("pod", p.pod_ref.name.clone()),
    ]
}

/// `base` with one more label put in its sorted place.
fn with(mut labels: Labels, key: &'static str, value: &str) -> Labels {
    let at = labels.iter().position(|(k, _)| *k > key).unwrap_or(labels.len());
    labels.insert(at, (key, value.to_owned()));
    labels
}

fn seconds(time: &str) -> Option<f64> {
    time.parse::<jiff::Timestamp>().ok().map(|t| t.as_millisecond() as f64 / 1e3)
}

/// The families of one scrape, in cAdvisor's help and types.
struct Families {
    cpu: ConstFamily,
    fs_usage: ConstFamily,
    last_seen: ConstFamily,
    rss: ConstFamily,
    usage: ConstFamily,
    working_set: ConstFamily,
    rx: ConstFamily,
    tx: ConstFamily,
    start: ConstFamily,
}

impl Families {
    fn new() -> Self {
        Self {
            cpu: ConstFamily::counter("container_cpu_usage_seconds", "Cumulative cpu time consumed in seconds."),
            fs_usage: ConstFamily::gauge(
                "container_fs_usage_bytes",
                "Number of bytes that are consumed by the container on this filesystem.",
            ),
            last_seen: ConstFamily::gauge("container_last_seen", "Last time a container was seen by the exporter"),
            rss: ConstFamily::gauge("container_memory_rss", "Size of RSS in bytes."),
            usage: ConstFamily::gauge(
                "container_memory_usage_bytes",
                "Current memory usage in bytes, including all memory regardless of when it was accessed",
            ),
            working_set: ConstFamily::gauge("container_memory_working_set_bytes", "Current working set in bytes."),
            rx: ConstFamily::counter("container_network_receive_bytes", "Cumulative count of bytes received"),
            tx: ConstFamily::counter("container_network_transmit_bytes", "Cumulative count of bytes transmitted"),
            start: ConstFamily::gauge(
                "container_start_time_seconds",
                "Start time of the container since unix epoch in seconds.",
            ),
        }
    }

    /// CPU and memory of a container or a pod cgroup.
    fn usage(&mut self, labels: &Labels, cpu: Option<u64>, memory: Option<&crate::stats::summary::MemoryStats>) {
        if let Some(ns) = cpu {
            // kubelet turns off cAdvisor's per-CPU figures: the one series is `cpu="total"`.
            self.cpu.push(with(labels.clone(), "cpu", "total"), ns as f64 / 1e9);
        }
        if let Some(m) = memory {
            if let Some(v) = m.rss_bytes {
                self.rss.push(labels.clone(), v as f64);
            }
            if let Some(v) = m.usage_bytes {
                self.usage.push(labels.clone(), v as f64);
            }
            if let Some(v) = m.working_set_bytes {
                self.working_set.push(labels.clone(), v as f64);
            }
        }
    }

    fn container(&mut self, p: &PodStats, c: &ContainerStats, l: Option<&ContainerLabels>, device: &str, now: f64) {
        let l = l.cloned().unwrap_or_default();
        let labels = base(&c.name, &l.cgroup, &l.image, &l.id, p);
        self.last_seen.push(labels.clone(), now);
        self.usage(&labels, c.cpu.as_ref().and_then(|c| c.usage_core_nano_seconds), c.memory.as_ref());
        if let Some(used) = c.rootfs.as_ref().and_then(|f| f.used_bytes) {
            self.fs_usage.push(with(labels.clone(), "device", device), used as f64);
        }
        if let Some(t) = seconds(&c.start_time) {
            self.start.push(labels, t);
        }
    }

    fn pod(&mut self, p: &PodStats, l: &PodLabels, now: f64) {
        let labels = base("", &l.cgroup, "", "", p);
        self.last_seen.push(labels.clone(), now);
        self.usage(&labels, p.cpu.as_ref().and_then(|c| c.usage_core_nano_seconds), p.memory.as_ref());
        if let Some(t) = seconds(&p.start_time) {
            self.start.push(labels, t);
        }
        // The pod's network is its sandbox's: cAdvisor reads it from the sandbox container's namespace.
        if let (Some((sandbox, cgroup)), Some(net)) = (&l.sandbox, &p.network) {
            let labels = base("", cgroup, "", sandbox, p);
            self.last_seen.push(labels.clone(), now);
            for i in &net.interfaces {
                let labels = with(labels.clone(), "interface", &i.name);
                if let Some(v) = i.rx_bytes {
                    self.rx.push(labels.clone(), v as f64);
                }
                if let Some(v) = i.tx_bytes {
                    self.tx.push(labels, v as f64);
                }
            }
        }
    }
}

/// The `/metrics/cadvisor` registry of one scrape.
pub fn cadvisor_registry(
    summary: &Summary,
    labels: &BTreeMap<String, PodLabels>,
    machine: &Machine,
    device: &str,
    scrape_error: bool,
    now: SystemTime,
) -> Registry {
    let now = now.duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs() as f64).unwrap_or_default();
    let mut f = Families::new();
    let none = PodLabels::default();
    for p in &summary.pods {
        let l = labels.get(&p.pod_ref.uid).unwrap_or(&none);
        f.pod(p, l, now);
        for c in &p.containers {
            f.container(p, c, l.containers.get(&c.name), device, now);
        }
    }
    let mut r = Registry::default();
    let mut scrape = ConstFamily::gauge(
        "container_scrape_error",
        "1 if there was an error while getting container metrics, 0 otherwise",
    );
    scrape.push(vec![], if scrape_error { 1.0 } else { 0.0 });
    // Sorted by name, as Go's registry writes them.
    for family in [f.cpu, f.fs_usage, f.last_seen, f.rss, f.usage, f.working_set, f.rx, f.tx, scrape, f.start] {
        r.register_collector(Box::new(family));
    }
    let machine_labels: Labels = vec![
        ("boot_id", machine.boot_id.clone()),
        ("machine_id", machine.machine_id.clone()),
        ("system_uuid", machine.system_uuid.clone()),
    ];
    let mut cores = ConstFamily::gauge("machine_cpu_cores", "Number of logical CPU cores.");
    cores.push(machine_labels.clone(), machine.cpu_cores as f64);
    let mut memory = ConstFamily::gauge("machine_memory_bytes", "Amount of memory installed on the machine.");
    memory.push(machine_labels, machine.memory_bytes as f64);
    r.register_collector(Box::new(cores));
    r.register_collector(Box::new(memory));
    r
}

/// The device of the filesystem holding `path`, as `/proc/self/mountinfo` names it (cAdvisor's `device`).
fn device_of(path: &Path) -> String {
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else { return String::new() };
    let mut best: Option<(usize, String)> = None;
    for line in info.lines() {
        let fields: Vec<&str> = line.split(' ').collect();
        let (Some(mount), Some(sep)) = (fields.get(4), fields.iter().position(|f| *f == "-")) else { continue };
        let Some(source) = fields.get(sep + 2) else { continue };
        if path.starts_with(mount) && best.as_ref().is_none_or(|(len, _)| mount.len() >= *len) {
            best = Some((mount.len(), (*source).to_owned()));
        }
    }
    best.map(|(_, d)| d).unwrap_or_default()
}

pub async fn cadvisor_metrics(State(s): State<StatsState>) -> Response {
    let ((summary, failed), labels) = tokio::join!(s.stats.summary(), pod_labels(&s));
    let device = device_of(&s.stats.root_dir);
    exposition(&cadvisor_registry(&summary, &labels, &Machine::host(), &device, failed, SystemTime::now()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::server::metrics::parse::parse;
    use crate::stats::summary::{CpuStats, FsStats, InterfaceStats, MemoryStats, NetworkStats, PodReference};

    fn memory(ws: u64) -> Option<MemoryStats> {
        Some(MemoryStats {
            working_set_bytes: Some(ws),
            rss_bytes: Some(ws / 2),
            usage_bytes: Some(ws * 2),
            ..Default::default()
        })
    }

    fn cpu(ns: u64) -> Option<CpuStats> {
        Some(CpuStats { usage_core_nano_seconds: Some(ns), ..Default::default() })
    }

    /// cAdvisor's names, types and labels for a pod's container, its pod cgroup and its sandbox's network.
    #[test]
    fn series_are_labelled_as_kubelets_cadvisor_endpoint_labels_them() {
        let pod = PodStats {
            pod_ref: PodReference { name: "web".into(), namespace: "default".into(), uid: "u1".into() },
            start_time: "2023-11-14T22:13:20Z".into(),
            cpu: cpu(3_000_000_000),
            memory: memory(4096),
            network: Some(NetworkStats {
                interfaces: vec![InterfaceStats {
                    name: "eth0".into(),
                    rx_bytes: Some(100),
                    tx_bytes: Some(200),
                    ..Default::default()
                }],
                ..Default::default()
            }),
            containers: vec![ContainerStats {
                name: "app".into(),
                start_time: "2023-11-14T22:13:21Z".into(),
                cpu: cpu(2_500_000_000),
                memory: memory(1024),
                rootfs: Some(FsStats { used_bytes: Some(8192), ..Default::default() }),
                ..Default::default()
            }],
            ..Default::default()
        };
        let labels = BTreeMap::from([(
            "u1".to_owned(),
            PodLabels {
                cgroup: "/kubepods.slice/kubepods-pod_u1.slice".into(),
                containers: BTreeMap::from([(
                    "app".to_owned(),
                    ContainerLabels {
                        id: "c0ffee".into(),
                        image: "busybox:1".into(),
                        cgroup: "/kubepods.slice/kubepods-pod_u1.slice/cri-containerd-c0ffee.scope".into(),
                    },
                )]),
                sandbox: Some((
                    "5a9d".into(),
                    "/kubepods.slice/kubepods-pod_u1.slice/cri-containerd-5a9d.scope".into(),
                )),
            },
        )]);
        let machine = Machine { cpu_cores: 2, memory_bytes: 1 << 30, machine_id: "m".into(), ..Default::default() };
        let summary = Summary { pods: vec![pod], ..Default::default() };
        let registry = cadvisor_registry(&summary, &labels, &machine, "/dev/vda1", false, SystemTime::now());
        let mut text = String::new();
        prometheus_client::encoding::prometheus_text::encode(&mut text, &registry).unwrap_or_default();
        let e = parse(&text);
        for (name, kind) in [
            ("container_cpu_usage_seconds_total", "counter"),
            ("container_memory_working_set_bytes", "gauge"),
            ("container_memory_rss", "gauge"),
            ("container_memory_usage_bytes", "gauge"),
            ("container_network_receive_bytes_total", "counter"),
            ("container_network_transmit_bytes_total", "counter"),
            ("container_fs_usage_bytes", "gauge"),
            ("container_start_time_seconds", "gauge"),
            ("container_last_seen", "gauge"),
            ("machine_cpu_cores", "gauge"),
            ("machine_memory_bytes", "gauge"),
        ] {
            assert_eq!(e.types.get(name).map(String::as_str), Some(kind), "{name} in\n{text}");
        }
        assert_eq!(e.helps["container_memory_working_set_bytes"], "Current working set in bytes.");
        let keys = |s: &crate::server::metrics::parse::Sample| s.labels.keys().cloned().collect::<Vec<_>>();
        let ws = e.series("container_memory_working_set_bytes");
        assert_eq!(ws.len(), 2, "{text}");
        let app = ws.iter().find(|s| s.labels["container"] == "app").copied();
        let app = app.unwrap_or_else(|| panic!("no app series in\n{text}"));
        assert_eq!(keys(app), ["container", "id", "image", "name", "namespace", "pod"]);
        assert_eq!(
            (app.labels["id"].as_str(), app.labels["image"].as_str(), app.labels["name"].as_str(), app.value),
            ("/kubepods.slice/kubepods-pod_u1.slice/cri-containerd-c0ffee.scope", "busybox:1", "c0ffee", 1024.0)
        );
        let pod = ws.iter().find(|s| s.labels["container"].is_empty()).copied();
        let pod = pod.unwrap_or_else(|| panic!("no pod series in\n{text}"));
        assert_eq!(
            (pod.labels["id"].as_str(), pod.labels["name"].as_str(), pod.labels["pod"].as_str(), pod.value),
            ("/kubepods.slice/kubepods-pod_u1.slice", "", "web", 4096.0)
        );
        let cpu = e.series("container_cpu_usage_seconds_total");
        assert!(cpu.iter().all(|s| s.labels["cpu"] == "total"), "{text}");
        assert!(cpu.iter().any(|s| s.labels["container"] == "app" && s.value == 2.5), "{text}");
        let rx = e.series("container_network_receive_bytes_total");
        assert_eq!(rx.len(), 1, "{text}");
        assert_eq!(
            (rx[0].labels["interface"].as_str(), rx[0].labels["name"].as_str(), rx[0].labels["container"].as_str()),
            ("eth0", "5a9d", "")
        );
        assert_eq!(rx[0].value, 100.0);
        let fs = e.series("container_fs_usage_bytes");
        assert_eq!((fs[0].labels["device"].as_str(), fs[0].value), ("/dev/vda1", 8192.0));
        let start = e.series("container_start_time_seconds");
        assert!(start.iter().any(|s| s.labels["container"] == "app" && s.value == 1_700_000_001.0), "{text}");
        let cores = e.series("machine_cpu_cores");
        assert_eq!(keys(cores[0]), ["boot_id", "machine_id", "system_uuid"]);
        assert_eq!(cores[0].value, 2.0);
        assert_eq!(e.series("container_scrape_error")[0].value, 0.0);
    }
}
