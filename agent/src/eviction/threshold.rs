//! Eviction signals and thresholds: kubelet's `evictionapi` types (pkg/kubelet/eviction/api/types.go) and the
//! parsing of `evictionHard`, `evictionSoft`, `evictionSoftGracePeriod` and `evictionMinimumReclaim`
//! (`ParseThresholdConfig` in pkg/kubelet/eviction/helpers.go), with its messages.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use crate::kubetypes::duration::parse_go_duration;
use crate::kubetypes::quantity::parse_value;

/// kubelet's `DefaultEvictionHard` (pkg/kubelet/eviction/defaults_linux.go), used when the file has no
/// `evictionHard` at all (cmd/kubelet/app/server.go `loadConfigFile`).
pub const DEFAULT_EVICTION_HARD: [(&str, &str); 4] = [
    ("memory.available", "100Mi"),
    ("nodefs.available", "10%"),
    ("nodefs.inodesFree", "5%"),
    ("imagefs.available", "15%"),
];
/// kubelet's `evictionPressureTransitionPeriod` default (pkg/kubelet/apis/config/v1beta1/defaults.go).
pub const DEFAULT_PRESSURE_TRANSITION_PERIOD: Duration = Duration::from_secs(300);
/// `types.NodeAllocatableEnforcementKey`: with it, a hard `memory.available` also guards the `kubepods` cgroup.
const NODE_ALLOCATABLE_ENFORCEMENT_KEY: &str = "pods";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Signal {
    MemoryAvailable,
    AllocatableMemoryAvailable,
    NodeFsAvailable,
    NodeFsInodesFree,
    ImageFsAvailable,
    ImageFsInodesFree,
    PidAvailable,
}

/// The resource a signal measures (`signalToResource`); `inodes` and `pids` are kubelet's internal names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Resource {
    Memory,
    EphemeralStorage,
    Inodes,
    Pids,
}

impl Resource {
    pub fn as_str(self) -> &'static str {
        match self {
            Resource::Memory => "memory",
            Resource::EphemeralStorage => "ephemeral-storage",
            Resource::Inodes => "inodes",
            Resource::Pids => "pids",
        }
    }
}

/// The node conditions a threshold turns on (`signalToNodeCondition`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum NodeConditionType {
    MemoryPressure,
    DiskPressure,
    PidPressure,
}

impl NodeConditionType {
    pub fn as_str(self) -> &'static str {
        match self {
            NodeConditionType::MemoryPressure => "MemoryPressure",
            NodeConditionType::DiskPressure => "DiskPressure",
            NodeConditionType::PidPressure => "PIDPressure",
        }
    }
}

impl Signal {
    pub const ALL: [Signal; 7] = [
        Signal::MemoryAvailable,
        Signal::AllocatableMemoryAvailable,
        Signal::NodeFsAvailable,
        Signal::NodeFsInodesFree,
        Signal::ImageFsAvailable,
        Signal::ImageFsInodesFree,
        Signal::PidAvailable,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Signal::MemoryAvailable => "memory.available",
            Signal::AllocatableMemoryAvailable => "allocatableMemory.available",
            Signal::NodeFsAvailable => "nodefs.available",
            Signal::NodeFsInodesFree => "nodefs.inodesFree",
            Signal::ImageFsAvailable => "imagefs.available",
            Signal::ImageFsInodesFree => "imagefs.inodesFree",
            Signal::PidAvailable => "pid.available",
        }
    }

    pub fn parse(text: &str) -> Option<Signal> {
        Signal::ALL.into_iter().find(|s| s.as_str() == text)
    }

    pub fn resource(self) -> Resource {
        match self {
            Signal::MemoryAvailable | Signal::AllocatableMemoryAvailable => Resource::Memory,
            Signal::NodeFsAvailable | Signal::ImageFsAvailable => Resource::EphemeralStorage,
            Signal::NodeFsInodesFree | Signal::ImageFsInodesFree => Resource::Inodes,
            Signal::PidAvailable => Resource::Pids,
        }
    }

    pub fn node_condition(self) -> NodeConditionType {
        match self {
            Signal::MemoryAvailable | Signal::AllocatableMemoryAvailable => NodeConditionType::MemoryPressure,
            Signal::PidAvailable => NodeConditionType::PidPressure,
            _ => NodeConditionType::DiskPressure,
        }
    }

    /// Bytes are printed in binary units, counts in decimal ones, as kubelet builds its observations.
    pub fn format(self) -> Format {
        match self.resource() {
            Resource::Memory | Resource::EphemeralStorage => Format::BinarySi,
            Resource::Inodes | Resource::Pids => Format::DecimalSi,
        }
    }

    pub fn is_memory(self) -> bool {
        matches!(self, Signal::MemoryAvailable | Signal::AllocatableMemoryAvailable)
    }
}

impl fmt::Display for Signal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A quantity's printing format (`resource.BinarySI` / `DecimalSI`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Format {
    BinarySi,
    DecimalSi,
}

/// A whole quantity printed as `resource.Quantity.String()` prints it: the largest suffix that keeps it exact.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Quantity {
    pub value: i128,
    pub format: Format,
}

impl Quantity {
    pub fn new(value: i128, format: Format) -> Self {
        Quantity { value, format }
    }
}

impl fmt::Display for Quantity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let v = self.value;
        // `CanonicalizeBytes`: small binary values print as plain decimals.
        let binary = self.format == Format::BinarySi && !(-1024 < v && v < 1024);
        let (base, suffixes): (i128, [&str; 7]) = if binary {
            (1024, ["", "Ki", "Mi", "Gi", "Ti", "Pi", "Ei"])
        } else {
            (1000, ["", "k", "M", "G", "T", "P", "E"])
        };
        if v == 0 {
            return f.write_str("0");
        }
        let (mut n, mut i) = (v, 0);
        while i < 6 && n % base == 0 {
            n /= base;
            i += 1;
        }
        write!(f, "{n}{}", suffixes[i])
    }
}

/// kubelet's `ThresholdValue`: a quantity, or a fraction of the capacity.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ThresholdValue {
    Quantity(Quantity),
    /// A fraction in 0..=1, kept as Go's float32.
    Percentage(f32),
}

impl ThresholdValue {
    /// `GetThresholdQuantity`: a percentage becomes a binary quantity of the capacity, truncated.
    pub fn quantity(&self, capacity: i128) -> Quantity {
        match *self {
            ThresholdValue::Quantity(q) => q,
            ThresholdValue::Percentage(p) => Quantity::new((capacity as f64 * f64::from(p)) as i128, Format::BinarySi),
        }
    }
}

impl fmt::Display for ThresholdValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ThresholdValue::Quantity(q) => q.fmt(f),
            ThresholdValue::Percentage(p) => write!(f, "{}%", p * 100.0),
        }
    }
}

/// kubelet's `Threshold` (the operator is always `LessThan`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Threshold {
    pub signal: Signal,
    pub value: ThresholdValue,
    /// Zero for a hard threshold.
    pub grace_period: Duration,
    pub min_reclaim: Option<ThresholdValue>,
}

impl Threshold {
    /// `isHardEvictionThreshold`.
    pub fn is_hard(&self) -> bool {
        self.grace_period.is_zero()
    }

    /// `hasThreshold`'s identity: signal, grace period and value (min-reclaim aside).
    pub fn same(&self, other: &Threshold) -> bool {
        self.signal == other.signal && self.grace_period == other.grace_period && self.value == other.value
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ThresholdError {
    /// `unsupportedEvictionSignal`.
    #[error("{field}: unsupported eviction signal {signal}")]
    UnsupportedSignal { field: &'static str, signal: String },
    #[error("{field}: eviction percentage threshold {signal} must be >= 0%: {value}")]
    NegativePercentage { field: &'static str, signal: Signal, value: String },
    #[error("{field}: eviction percentage threshold {signal} must be <= 100%: {value}")]
    PercentageOver100 { field: &'static str, signal: Signal, value: String },
    #[error("{field}: eviction threshold {signal} must be positive: {value}")]
    NotPositive { field: &'static str, signal: Signal, value: String },
    #[error("{field}: {signal}: {reason}")]
    Value { field: &'static str, signal: Signal, reason: String },
    #[error("{field}: invalid eviction grace period specified: {value}, must be a positive value")]
    NegativeGracePeriod { field: &'static str, value: String },
    #[error("{field}: eviction percentage minimum reclaim {signal} must be positive: {value}")]
    MinReclaimNotPositive { field: &'static str, signal: Signal, value: String },
    #[error("{field}: negative eviction minimum reclaim specified for {signal}")]
    NegativeMinReclaim { field: &'static str, signal: Signal },
    #[error("grace period must be specified for the soft eviction threshold {0}")]
    MissingGracePeriod(Signal),
}

fn signal_of(field: &'static str, text: &str) -> Result<Signal, ThresholdError> {
    Signal::parse(text).ok_or_else(|| ThresholdError::UnsupportedSignal { field, signal: text.to_owned() })
}

/// `parsePercentage`: `"10%"` → 0.1, as a float32.
fn parse_percentage(field: &'static str, signal: Signal, text: &str) -> Result<f32, ThresholdError> {
    let number = text.trim_end_matches('%');
    let value: f64 = number.parse().map_err(|_| ThresholdError::Value {
        field,
        signal,
        reason: format!("strconv.ParseFloat: parsing {number:?}: invalid syntax"),
    })?;
    if !value.is_finite() {
        return Err(ThresholdError::Value { field, signal, reason: format!("invalid percentage {text:?}") });
    }
    Ok(value as f32 / 100.0)
}

/// A quantity with the format its suffix gives (`Ki`… binary; none, `k`, `M`…, exponents decimal).
fn parse_quantity(field: &'static str, signal: Signal, text: &str) -> Result<Quantity, ThresholdError> {
    let value = parse_value(text).map_err(|e| ThresholdError::Value { field, signal, reason: e.to_string() })?;
    let format = if text.ends_with('i') { Format::BinarySi } else { Format::DecimalSi };
    Ok(Quantity::new(value, format))
}

/// `parseThresholdStatement`; `None` for `0%` and `100%`, which kubelet ignores.
fn parse_statement(field: &'static str, signal: Signal, value: &str) -> Result<Option<Threshold>, ThresholdError> {
    let value_of = |v: ThresholdValue| Threshold { signal, value: v, grace_period: Duration::ZERO, min_reclaim: None };
    if value.ends_with('%') {
        if value == "0%" || value == "100%" {
            return Ok(None);
        }
        let p = parse_percentage(field, signal, value)?;
        if p < 0.0 {
            return Err(ThresholdError::NegativePercentage { field, signal, value: value.into() });
        }
        if p > 1.0 {
            return Err(ThresholdError::PercentageOver100 { field, signal, value: value.into() });
        }
        return Ok(Some(value_of(ThresholdValue::Percentage(p))));
    }
    let q = parse_quantity(field, signal, value)?;
    if q.value <= 0 {
        return Err(ThresholdError::NotPositive { field, signal, value: q.to_string() });
    }
    Ok(Some(value_of(ThresholdValue::Quantity(q))))
}

fn parse_statements(
    field: &'static str,
    statements: &BTreeMap<String, String>,
) -> Result<Vec<Threshold>, ThresholdError> {
    let mut out = Vec::new();
    for (signal, value) in statements {
        let signal = signal_of(field, signal)?;
        if let Some(t) = parse_statement(field, signal, value)? {
            out.push(t);
        }
    }
    Ok(out)
}

/// The eviction settings of the configuration file, as given.
#[derive(Debug, Clone, Default)]
pub struct ThresholdSettings<'a> {
    /// `None`: the key is absent and kubelet's defaults apply; an empty map turns hard eviction off.
    pub hard: Option<&'a BTreeMap<String, String>>,
    pub soft: Option<&'a BTreeMap<String, String>>,
    pub soft_grace_period: Option<&'a BTreeMap<String, String>>,
    pub minimum_reclaim: Option<&'a BTreeMap<String, String>>,
    pub enforce_node_allocatable: &'a [String],
}

/// kubelet's `ParseThresholdConfig`: hard thresholds, then soft ones with their grace periods, minimum reclaims,
/// and with `pods` enforced a copy of the hard `memory.available` for `allocatableMemory.available`.
pub fn parse_threshold_config(s: &ThresholdSettings<'_>) -> Result<Vec<Threshold>, ThresholdError> {
    let defaults: BTreeMap<String, String> =
        DEFAULT_EVICTION_HARD.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    let empty = BTreeMap::new();
    let mut results = parse_statements("evictionHard", s.hard.unwrap_or(&defaults))?;
    let mut soft = parse_statements("evictionSoft", s.soft.unwrap_or(&empty))?;
    let mut grace = BTreeMap::new();
    for (signal, value) in s.soft_grace_period.unwrap_or(&empty) {
        let field = "evictionSoftGracePeriod";
        let signal = signal_of(field, signal)?;
        if value.starts_with('-') {
            return Err(ThresholdError::NegativeGracePeriod { field, value: value.clone() });
        }
        let d = parse_go_duration(value).map_err(|reason| ThresholdError::Value { field, signal, reason })?;
        grace.insert(signal, d);
    }
    let mut min_reclaims = BTreeMap::new();
    for (signal, value) in s.minimum_reclaim.unwrap_or(&empty) {
        let field = "evictionMinimumReclaim";
        let signal = signal_of(field, signal)?;
        let v = if value.ends_with('%') {
            let p = parse_percentage(field, signal, value)?;
            if p <= 0.0 {
                return Err(ThresholdError::MinReclaimNotPositive { field, signal, value: value.clone() });
            }
            ThresholdValue::Percentage(p)
        } else {
            let q = parse_quantity(field, signal, value)?;
            if q.value < 0 {
                return Err(ThresholdError::NegativeMinReclaim { field, signal });
            }
            ThresholdValue::Quantity(q)
        };
        min_reclaims.insert(signal, v);
    }
    for t in &mut soft {
        t.grace_period = *grace.get(&t.signal).ok_or(ThresholdError::MissingGracePeriod(t.signal))?;
    }
    results.append(&mut soft);
    for t in &mut results {
        t.min_reclaim = min_reclaims.get(&t.signal).copied();
    }
    if s.enforce_node_allocatable.iter().any(|k| k == NODE_ALLOCATABLE_ENFORCEMENT_KEY) {
        let extra: Vec<Threshold> = results
            .iter()
            .filter(|t| t.signal == Signal::MemoryAvailable && t.is_hard())
            .map(|t| Threshold { signal: Signal::AllocatableMemoryAvailable, ..*t })
            .collect();
        results.extend(extra);
    }
    Ok(results)
}

/// The hard `memory.available` threshold in bytes of `capacity`, which node allocatable subtracts; none is zero.
pub fn hard_memory_bytes(thresholds: &[Threshold], capacity: i128) -> i128 {
    thresholds
        .iter()
        .find(|t| t.signal == Signal::MemoryAvailable && t.is_hard())
        .map(|t| t.value.quantity(capacity).value)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn quantities_print_as_go_canonical_strings() {
        let b = |v| Quantity::new(v, Format::BinarySi).to_string();
        let d = |v| Quantity::new(v, Format::DecimalSi).to_string();
        assert_eq!(b(100 << 20), "100Mi");
        assert_eq!(b(90 << 20), "90Mi");
        assert_eq!(b(1 << 30), "1Gi");
        assert_eq!(b(1536 << 20), "1536Mi");
        assert_eq!(b(94371841), "94371841");
        assert_eq!(b(1000), "1k", "below 1024 a binary quantity prints as a decimal one");
        assert_eq!(b(1023), "1023");
        assert_eq!(b(0), "0");
        assert_eq!(d(5000), "5k");
        assert_eq!(d(12345), "12345");
        assert_eq!(d(2_000_000), "2M");
    }

    #[test]
    fn absent_eviction_hard_brings_kubelets_defaults() {
        let t = parse_threshold_config(&ThresholdSettings::default()).unwrap();
        let got: Vec<(Signal, ThresholdValue)> = t.iter().map(|t| (t.signal, t.value)).collect();
        assert_eq!(
            got,
            vec![
                (Signal::ImageFsAvailable, ThresholdValue::Percentage(0.15)),
                (Signal::MemoryAvailable, ThresholdValue::Quantity(Quantity::new(100 << 20, Format::BinarySi))),
                (Signal::NodeFsAvailable, ThresholdValue::Percentage(0.1)),
                (Signal::NodeFsInodesFree, ThresholdValue::Percentage(0.05)),
            ]
        );
        assert!(t.iter().all(|t| t.is_hard()));
        // An empty map turns hard eviction off, as in kubelet.
        let empty = BTreeMap::new();
        assert!(parse_threshold_config(&ThresholdSettings { hard: Some(&empty), ..Default::default() })
            .unwrap()
            .is_empty());
    }

    #[test]
    fn soft_thresholds_need_grace_periods_and_take_min_reclaims() {
        let hard = map(&[("memory.available", "150Mi"), ("nodefs.available", "0%")]);
        let soft = map(&[("memory.available", "300Mi"), ("pid.available", "10%")]);
        let grace = map(&[("memory.available", "30s"), ("pid.available", "1m")]);
        let min = map(&[("memory.available", "0"), ("pid.available", "5%")]);
        let pods = vec!["pods".to_string()];
        let t = parse_threshold_config(&ThresholdSettings {
            hard: Some(&hard),
            soft: Some(&soft),
            soft_grace_period: Some(&grace),
            minimum_reclaim: Some(&min),
            enforce_node_allocatable: &pods,
        })
        .unwrap();
        assert_eq!(t.len(), 4, "0% is ignored, allocatable copies the hard memory threshold: {t:?}");
        assert_eq!(t[0].signal, Signal::MemoryAvailable);
        assert!(t[0].is_hard());
        assert_eq!(t[1].signal, Signal::MemoryAvailable);
        assert_eq!(t[1].grace_period, Duration::from_secs(30));
        assert_eq!(t[2].signal, Signal::PidAvailable);
        assert_eq!(t[2].min_reclaim, Some(ThresholdValue::Percentage(0.05)));
        assert_eq!(t[3].signal, Signal::AllocatableMemoryAvailable);
        assert_eq!(t[3].value.quantity(0).to_string(), "150Mi");
        assert_eq!(hard_memory_bytes(&t, 1 << 30), 150 << 20);

        let e = parse_threshold_config(&ThresholdSettings { soft: Some(&soft), ..Default::default() }).unwrap_err();
        assert_eq!(e.to_string(), "grace period must be specified for the soft eviction threshold memory.available");
    }

    #[test]
    fn bad_input_is_a_clear_error() {
        let cases = [
            (("memory.free", "1Gi"), "evictionHard: unsupported eviction signal memory.free"),
            (
                ("memory.available", "150%"),
                "evictionHard: eviction percentage threshold memory.available must be <= 100%: 150%",
            ),
            (
                ("memory.available", "-5%"),
                "evictionHard: eviction percentage threshold memory.available must be >= 0%: -5%",
            ),
            (("nodefs.available", "0"), "evictionHard: eviction threshold nodefs.available must be positive: 0"),
            (("nodefs.available", "lots"), "evictionHard: nodefs.available: invalid quantity \"lots\""),
            (("nodefs.available", "x%"), "evictionHard: nodefs.available: strconv.ParseFloat"),
        ];
        for ((k, v), want) in cases {
            let m = map(&[(k, v)]);
            let e = parse_threshold_config(&ThresholdSettings { hard: Some(&m), ..Default::default() }).unwrap_err();
            assert!(e.to_string().starts_with(want), "{k}={v}: {e}");
        }
        let soft = map(&[("memory.available", "1Gi")]);
        let grace = map(&[("memory.available", "-1s")]);
        let e = parse_threshold_config(&ThresholdSettings {
            soft: Some(&soft),
            soft_grace_period: Some(&grace),
            ..Default::default()
        })
        .unwrap_err();
        assert!(e.to_string().contains("invalid eviction grace period specified: -1s"), "{e}");
        let min = map(&[("memory.available", "0%")]);
        let e = parse_threshold_config(&ThresholdSettings { minimum_reclaim: Some(&min), ..Default::default() })
            .unwrap_err();
        assert!(e.to_string().contains("minimum reclaim memory.available must be positive"), "{e}");
    }

    #[test]
    fn percentages_resolve_against_the_capacity_truncated() {
        assert_eq!(ThresholdValue::Percentage(0.1).quantity(1000).value, 100);
        assert_eq!(
            ThresholdValue::Percentage(0.05).quantity(1 << 30).to_string(),
            "53687092",
            "float32 5% is a little above 0.05"
        );
    }
}
