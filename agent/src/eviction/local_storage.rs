//! kubelet's local ephemeral storage eviction (`pkg/kubelet/eviction/eviction_manager.go: localStorageEviction`),
//! decided purely from the active pods and the summary: for each pod, first an emptyDir over its `sizeLimit`, then
//! the pod over the sum of its containers' `ephemeral-storage` limits, then a container over its own limit. The
//! first that holds evicts the pod; the others are not looked at.
//!
//! The manager runs this on each housekeeping tick before the threshold signals (kubelet does when
//! `LocalStorageCapacityIsolation` is on, the default) and, when it returns any pod, evicts those and skips the
//! threshold evictions of that tick.

use std::sync::Arc;

use k8s_openapi::api::core::v1::{Container, Pod};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

use crate::kubetypes::kill::TerminalStatus;
use crate::kubetypes::quantity::parse_milli;
use crate::stats::summary::{FsStats, PodStats, Summary};

/// kubelet's eviction `Reason` (`eviction/types.go`).
pub const REASON_EVICTED: &str = "Evicted";
/// kubelet's `resource.ephemeral-storage`.
const RESOURCE_EPHEMERAL_STORAGE: &str = "ephemeral-storage";
/// `eviction/helpers.go`: the messages, each with its trailing space.
const EMPTY_DIR_MESSAGE: &str = "Usage of EmptyDir volume {volume} exceeds the limit {limit}. ";
const POD_EPHEMERAL_STORAGE_MESSAGE: &str =
    "Pod ephemeral local storage usage exceeds the total limit of containers {limit}. ";
const CONTAINER_EPHEMERAL_STORAGE_MESSAGE: &str =
    "Container {container} exceeded its local ephemeral storage limit {limit}. ";

/// Which limit a pod went over: kubelet's signal names for its `evictions_total` metric (`eviction_manager.go`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LocalStorageSignal {
    /// `emptydirfs.limit`
    EmptyDirFsLimit,
    /// `ephemeralpodfs.limit`
    EphemeralPodFsLimit,
    /// `ephemeralcontainerfs.limit`
    EphemeralContainerFsLimit,
}

impl LocalStorageSignal {
    pub fn as_str(self) -> &'static str {
        match self {
            LocalStorageSignal::EmptyDirFsLimit => "emptydirfs.limit",
            LocalStorageSignal::EphemeralPodFsLimit => "ephemeralpodfs.limit",
            LocalStorageSignal::EphemeralContainerFsLimit => "ephemeralcontainerfs.limit",
        }
    }
}

/// One pod to evict for its local storage.
#[derive(Debug, Clone)]
pub struct LocalStorageEviction {
    pub pod: Arc<Pod>,
    pub signal: LocalStorageSignal,
    /// kubelet's message: the `Evicted` event's and the pod status's.
    pub message: String,
}

impl LocalStorageEviction {
    pub fn uid(&self) -> &str {
        self.pod.metadata.uid.as_deref().unwrap_or_default()
    }

    /// kubelet's `evictPod(pod, 0, message, nil, nil)`: no grace period.
    pub const GRACE_PERIOD_OVERRIDE: i64 = 0;

    /// The status the killed pod ends with: `Failed`, reason `Evicted`, this message, and no `DisruptionTarget`
    /// condition (kubelet passes none for local storage evictions in v1.28).
    pub fn terminal_status(&self) -> TerminalStatus {
        TerminalStatus { reason: REASON_EVICTED.into(), message: self.message.clone(), disruption: None }
    }
}

/// The pods of `pods` to evict for their local storage, in the order given, with kubelet's messages.
///
/// `dedicated_image_fs` is kubelet's `HasDedicatedImageFs` (the image filesystem is another device than the root
/// dir's, see [`crate::stats::dedicated_image_fs`]): then a container's writable layer is not charged to its limit.
/// A pod without figures in `summary` is skipped. Critical pods are returned like any other: the manager's
/// `evictPod` refuses them ("cannot evict a critical pod"), as kubelet's does, and nothing more happens to them.
pub fn local_storage_evictions(
    pods: &[Arc<Pod>],
    summary: &Summary,
    dedicated_image_fs: bool,
) -> Vec<LocalStorageEviction> {
    pods.iter()
        .filter_map(|pod| {
            let uid = pod.metadata.uid.as_deref()?;
            let stats = summary.pods.iter().find(|p| p.pod_ref.uid == uid)?;
            let (signal, message) = empty_dir_limit(stats, pod)
                .map(|m| (LocalStorageSignal::EmptyDirFsLimit, m))
                .or_else(|| {
                    pod_ephemeral_storage_limit(stats, pod).map(|m| (LocalStorageSignal::EphemeralPodFsLimit, m))
                })
                .or_else(|| {
                    container_ephemeral_storage_limit(stats, pod, dedicated_image_fs)
                        .map(|m| (LocalStorageSignal::EphemeralContainerFsLimit, m))
                })?;
            Some(LocalStorageEviction { pod: Arc::clone(pod), signal, message })
        })
        .collect()
}

/// Go's `%q` for the names and quantities these messages quote (printable text: quotes and backslashes escaped).
fn go_quote(s: &str) -> String {
    format!("{s:?}")
}

/// `emptyDirLimitEviction`: the first emptyDir, in spec order, whose measured use is above a positive `sizeLimit`.
fn empty_dir_limit(stats: &PodStats, pod: &Pod) -> Option<String> {
    let volumes = pod.spec.as_ref()?.volumes.as_deref().unwrap_or_default();
    volumes.iter().find_map(|v| {
        let size = GoQuantity::parse(v.empty_dir.as_ref()?.size_limit.as_ref()?)?;
        let used = stats.volume_stats.iter().find(|s| s.name == v.name)?.fs.used_bytes?;
        (size.milli > 0 && i128::from(used) * 1000 > size.milli).then(|| {
            EMPTY_DIR_MESSAGE.replace("{volume}", &go_quote(&v.name)).replace("{limit}", &go_quote(&size.to_string()))
        })
    })
}

/// `podEphemeralStorageLimitEviction`: the pod's `ephemeral-storage` use above `PodLimits` of that resource (any
/// container naming it makes the pod limited: the others add nothing).
fn pod_ephemeral_storage_limit(stats: &PodStats, pod: &Pod) -> Option<String> {
    let limit = pod_ephemeral_storage_limits(pod)?;
    let used = stats.ephemeral_storage.as_ref().and_then(|e| e.used_bytes).unwrap_or(0);
    (i128::from(used) * 1000 > limit.milli)
        .then(|| POD_EPHEMERAL_STORAGE_MESSAGE.replace("{limit}", &limit.to_string()))
}

fn disk_usage(fs: Option<&FsStats>) -> u64 {
    fs.and_then(|f| f.used_bytes).unwrap_or(0)
}

/// `containerEphemeralStorageLimitEviction`: a running container whose logs (and writable layer, unless images
/// live on their own filesystem) are above its non-zero limit.
fn container_ephemeral_storage_limit(stats: &PodStats, pod: &Pod, dedicated_image_fs: bool) -> Option<String> {
    let containers = &pod.spec.as_ref()?.containers;
    stats.containers.iter().find_map(|c| {
        let limit =
            containers.iter().find(|s| s.name == c.name).and_then(ephemeral_limit).filter(|l| l.value() != 0)?;
        let mut used = disk_usage(c.logs.as_ref());
        if !dedicated_image_fs {
            used = used.saturating_add(disk_usage(c.rootfs.as_ref()));
        }
        (i128::from(used) * 1000 > limit.milli).then(|| {
            CONTAINER_EPHEMERAL_STORAGE_MESSAGE
                .replace("{container}", &c.name)
                .replace("{limit}", &go_quote(&limit.to_string()))
        })
    })
}

fn ephemeral_limit(c: &Container) -> Option<GoQuantity> {
    c.resources.as_ref()?.limits.as_ref()?.get(RESOURCE_EPHEMERAL_STORAGE).and_then(GoQuantity::parse)
}

/// `resourcehelper.PodLimits` for `ephemeral-storage`: the containers' limits summed, at least each init
/// container's (restartable init containers count with the containers and with the init containers after them),
/// plus the pod overhead when the result is non-zero. `None` when no container names the resource.
pub fn pod_ephemeral_storage_limits(pod: &Pod) -> Option<GoQuantity> {
    let spec = pod.spec.as_ref()?;
    let add = |total: &mut Option<GoQuantity>, q: Option<GoQuantity>| {
        if let Some(q) = q {
            *total = Some(match total.take() {
                // Go's `Quantity.Add` keeps the receiver's format.
                Some(t) => GoQuantity { milli: t.milli + q.milli, format: t.format },
                None => q,
            });
        }
    };
    let max = |total: &mut Option<GoQuantity>, q: Option<GoQuantity>| {
        if let Some(q) = q {
            if total.is_none_or(|t| q.milli > t.milli) {
                *total = Some(q);
            }
        }
    };
    let mut limits = None;
    for c in &spec.containers {
        add(&mut limits, ephemeral_limit(c));
    }
    let mut restartable = None;
    let mut init = None;
    for c in spec.init_containers.iter().flatten() {
        let own = ephemeral_limit(c);
        let effective = if c.restart_policy.as_deref() == Some("Always") {
            add(&mut limits, own);
            add(&mut restartable, own);
            restartable
        } else {
            let mut tmp = own;
            add(&mut tmp, restartable);
            tmp
        };
        max(&mut init, effective);
    }
    max(&mut limits, init);
    if let (Some(l), Some(overhead)) = (
        limits.as_mut(),
        spec.overhead.as_ref().and_then(|o| o.get(RESOURCE_EPHEMERAL_STORAGE)).and_then(GoQuantity::parse),
    ) {
        if l.milli != 0 {
            l.milli += overhead.milli;
        }
    }
    limits
}

/// apimachinery's quantity formats (`resource.Format`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QuantityFormat {
    DecimalSi,
    BinarySi,
    DecimalExponent,
}

/// A quantity as the messages need it: its value in thousandths and the format its canonical text is written in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GoQuantity {
    pub milli: i128,
    pub format: QuantityFormat,
}

impl GoQuantity {
    pub fn parse(q: &Quantity) -> Option<GoQuantity> {
        let text = q.0.trim();
        let milli = parse_milli(text).ok()?;
        let suffix = text.trim_start_matches(['+', '-']).trim_start_matches(|c: char| c.is_ascii_digit() || c == '.');
        let format = if suffix.ends_with('i') {
            QuantityFormat::BinarySi
        } else if suffix.len() > 1 && suffix.starts_with(['e', 'E']) {
            QuantityFormat::DecimalExponent
        } else {
            QuantityFormat::DecimalSi
        };
        Some(GoQuantity { milli, format })
    }

    /// `Quantity.Value()`: whole units rounded away from zero.
    pub fn value(&self) -> i128 {
        let units = (self.milli.abs() + 999) / 1000;
        if self.milli < 0 {
            -units
        } else {
            units
        }
    }
}

/// `Quantity.String()`: apimachinery's `CanonicalizeBytes` — binary suffixes only for whole values of at least
/// 1024 (in magnitude), else the decimal mantissa with an exponent that is a multiple of three.
impl std::fmt::Display for GoQuantity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.milli == 0 {
            return f.write_str("0");
        }
        let mut format = self.format;
        if format == QuantityFormat::BinarySi && (self.milli.abs() < 1024 * 1000 || self.milli % 1000 != 0) {
            format = QuantityFormat::DecimalSi;
        }
        if format == QuantityFormat::BinarySi {
            let mut v = self.milli / 1000;
            let mut e = 0;
            while e < 6 && v % 1024 == 0 {
                v /= 1024;
                e += 1;
            }
            return write!(f, "{v}{}", ["", "Ki", "Mi", "Gi", "Ti", "Pi", "Ei"][e]);
        }
        let (mut mantissa, mut exponent) = (self.milli, -3i32);
        while mantissa % 10 == 0 {
            mantissa /= 10;
            exponent += 1;
        }
        match exponent.rem_euclid(3) {
            1 => {
                mantissa *= 10;
                exponent -= 1;
            }
            2 => {
                mantissa *= 100;
                exponent -= 2;
            }
            _ => {}
        }
        let suffix = match (format, exponent) {
            (_, 0) => String::new(),
            (QuantityFormat::DecimalExponent, e) => format!("e{e}"),
            (_, -9) => "n".into(),
            (_, -6) => "u".into(),
            (_, -3) => "m".into(),
            (_, 3) => "k".into(),
            (_, 6) => "M".into(),
            (_, 9) => "G".into(),
            (_, 12) => "T".into(),
            (_, 15) => "P".into(),
            (_, 18) => "E".into(),
            (_, e) => format!("e{e}"),
        };
        write!(f, "{mantissa}{suffix}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::summary::{ContainerStats, PodReference, VolumeStats};
    use serde_json::json;

    fn q(s: &str) -> String {
        GoQuantity::parse(&Quantity(s.into())).unwrap().to_string()
    }

    #[test]
    fn quantities_print_as_go_prints_them() {
        for (input, canonical) in [
            ("1Mi", "1Mi"),
            ("1024Ki", "1Mi"),
            ("1536Ki", "1536Ki"),
            ("1.5Gi", "1536Mi"),
            ("100", "100"),
            ("1000", "1k"),
            ("1500", "1500"),
            ("500M", "500M"),
            ("2000M", "2G"),
            ("1e3", "1e3"),
            ("10e3", "10e3"),
            ("512Ki", "512Ki"),
            ("100Ki", "100Ki"),
            ("1023", "1023"),
            ("0.5Ki", "512"),
            ("0", "0"),
            ("1.5", "1500m"),
        ] {
            assert_eq!(q(input), canonical, "{input}");
        }
    }

    fn pod(uid: &str, spec: serde_json::Value) -> Arc<Pod> {
        Arc::new(
            serde_json::from_value(
                json!({"metadata": {"name": uid, "namespace": "default", "uid": uid}, "spec": spec}),
            )
            .unwrap(),
        )
    }

    fn container(name: &str, limit: Option<&str>) -> serde_json::Value {
        match limit {
            Some(l) => json!({"name": name, "image": "i", "resources": {"limits": {"ephemeral-storage": l}}}),
            None => json!({"name": name, "image": "i"}),
        }
    }

    fn used(bytes: u64) -> FsStats {
        FsStats { used_bytes: Some(bytes), ..Default::default() }
    }

    fn stats(uid: &str, containers: &[(&str, u64, u64)], volumes: &[(&str, u64)], total: u64) -> PodStats {
        PodStats {
            pod_ref: PodReference { name: uid.into(), namespace: "default".into(), uid: uid.into() },
            containers: containers
                .iter()
                .map(|(n, rootfs, logs)| ContainerStats {
                    name: (*n).into(),
                    rootfs: Some(used(*rootfs)),
                    logs: Some(used(*logs)),
                    ..Default::default()
                })
                .collect(),
            volume_stats: volumes.iter().map(|(n, b)| VolumeStats { fs: used(*b), name: (*n).into() }).collect(),
            ephemeral_storage: Some(used(total)),
            ..Default::default()
        }
    }

    fn decide(pods: &[Arc<Pod>], stats: Vec<PodStats>, dedicated: bool) -> Vec<(String, LocalStorageSignal, String)> {
        let summary = Summary { pods: stats, ..Default::default() };
        local_storage_evictions(pods, &summary, dedicated)
            .into_iter()
            .map(|e| (e.uid().to_owned(), e.signal, e.message))
            .collect()
    }

    const MI: u64 = 1 << 20;

    #[test]
    fn an_empty_dir_over_its_size_limit_comes_first() {
        // Over the emptyDir limit and over the container limit: the emptyDir decides the message.
        let p = pod(
            "a",
            json!({"containers": [container("app", Some("1Mi"))], "volumes": [
                {"name": "small", "emptyDir": {"sizeLimit": "1Mi"}},
                {"name": "big", "emptyDir": {"sizeLimit": "100Mi"}},
                {"name": "none", "emptyDir": {}},
            ]}),
        );
        let out = decide(
            std::slice::from_ref(&p),
            vec![stats("a", &[("app", 2 * MI, 0)], &[("small", MI + 1), ("big", 1)], 3 * MI)],
            false,
        );
        assert_eq!(
            out,
            [(
                "a".into(),
                LocalStorageSignal::EmptyDirFsLimit,
                "Usage of EmptyDir volume \"small\" exceeds the limit \"1Mi\". ".into()
            )]
        );
        // At the limit exactly is not over it; a volume without a limit never is.
        let out = decide(&[p], vec![stats("a", &[("app", 0, 0)], &[("small", MI), ("none", 100 * MI)], MI)], false);
        assert!(out.is_empty(), "{out:?}");
    }

    #[test]
    fn the_pod_limit_is_the_sum_of_the_containers_that_name_one() {
        let p = pod(
            "b",
            json!({"containers": [container("a", Some("1Mi")), container("b", Some("1Mi")), container("c", None)]}),
        );
        let out = decide(
            std::slice::from_ref(&p),
            vec![stats("b", &[("a", 0, 0), ("b", 0, 0), ("c", 0, 0)], &[], 2 * MI + 1)],
            false,
        );
        assert_eq!(
            out,
            [(
                "b".into(),
                LocalStorageSignal::EphemeralPodFsLimit,
                "Pod ephemeral local storage usage exceeds the total limit of containers 2Mi. ".into()
            )]
        );
        assert!(decide(&[p], vec![stats("b", &[], &[], 2 * MI)], false).is_empty());
        // No container names the resource: the pod has no limit, whatever it uses.
        let unlimited = pod("u", json!({"containers": [container("a", None)]}));
        assert!(decide(&[unlimited], vec![stats("u", &[("a", 9 * MI, 0)], &[], 90 * MI)], false).is_empty());
    }

    #[test]
    fn init_containers_and_overhead_shape_the_pod_limit() {
        let p = pod(
            "c",
            json!({
                "containers": [container("app", Some("1Mi"))],
                "initContainers": [container("setup", Some("5Mi")), {
                    "name": "sidecar", "image": "i", "restartPolicy": "Always",
                    "resources": {"limits": {"ephemeral-storage": "2Mi"}}
                }],
                "overhead": {"ephemeral-storage": "1Mi"},
            }),
        );
        // Containers 1Mi + sidecar 2Mi = 3Mi; init max(5Mi, 2Mi) = 5Mi; max 5Mi; overhead 1Mi: 6Mi.
        assert_eq!(pod_ephemeral_storage_limits(&p).map(|l| l.to_string()).as_deref(), Some("6Mi"));
        let p = pod("d", json!({"containers": [container("a", Some("500M")), container("b", Some("1Gi"))]}));
        // The first container's format wins, as Go's Add keeps the receiver's.
        assert_eq!(pod_ephemeral_storage_limits(&p).map(|l| l.to_string()).as_deref(), Some("1573741824"));
    }

    #[test]
    fn a_container_over_its_own_limit_counts_logs_and_the_writable_layer() {
        let p = pod("e", json!({"containers": [container("app", Some("10Mi")), container("other", Some("0"))]}));
        // The pod total stays under the pod's limit (10Mi); the container's rootfs + logs are over its own.
        let s = || stats("e", &[("other", 50 * MI, 0), ("app", 9 * MI, 2 * MI)], &[], 10 * MI);
        // A limit of 0 counts for the pod (PodLimits finds it) but never for the container.
        assert_eq!(
            decide(std::slice::from_ref(&p), vec![s()], false),
            [(
                "e".into(),
                LocalStorageSignal::EphemeralContainerFsLimit,
                "Container app exceeded its local ephemeral storage limit \"10Mi\". ".into()
            )]
        );
        // With a dedicated image filesystem only the logs count.
        assert!(decide(&[p], vec![s()], true).is_empty());
    }

    #[test]
    fn pods_without_figures_are_skipped_and_every_pod_is_decided() {
        let a = pod("a", json!({"containers": [container("app", Some("1Mi"))]}));
        let b = pod("b", json!({"containers": [container("app", Some("1Mi"))]}));
        let c = pod("c", json!({"containers": [container("app", Some("1Mi"))]}));
        let out = decide(
            &[a, b, c],
            vec![stats("c", &[("app", 2 * MI, 0)], &[], 2 * MI), stats("a", &[("app", 2 * MI, 0)], &[], 2 * MI)],
            false,
        );
        let uids: Vec<&str> = out.iter().map(|(u, _, _)| u.as_str()).collect();
        assert_eq!(uids, ["a", "c"]);
    }

    #[test]
    fn the_evicted_status_has_no_disruption_condition() {
        let e = LocalStorageEviction {
            pod: pod("a", json!({"containers": []})),
            signal: LocalStorageSignal::EmptyDirFsLimit,
            message: "m".into(),
        };
        assert_eq!(
            e.terminal_status(),
            TerminalStatus { reason: "Evicted".into(), message: "m".into(), disruption: None }
        );
        assert_eq!(LocalStorageEviction::GRACE_PERIOD_OVERRIDE, 0);
        assert_eq!(e.signal.as_str(), "emptydirfs.limit");
    }
}
