//! An eviction signal on memory pressure stall information, beyond kubelet: `memory.available` only moves once the
//! working set has grown, while the kernel's memory PSI shows tasks already waiting on reclaim. Opt-in through the
//! agent's own configuration key (kubelet has none):
//!
//! ```yaml
//! evictionPressureStall:
//!   memory.some.avg10: "20"    # percent of the last 10 s in which some task stalled on memory
//!   memory.full.avg60: "5%"
//! ```
//!
//! Each key is `memory.<some|full>.<avg10|avg60|avg300>`, each value a percentage in (0, 100]. A threshold is met
//! when the node's figure (the root cgroup's `memory.pressure`, in the summary's `node.memory.psi`) is at or above
//! it. The manager treats a met threshold as it treats `memory.available` below its hard threshold: the node reports
//! `MemoryPressure`, and pods are ranked and evicted for memory, with no grace period.

use std::collections::BTreeMap;

use crate::stats::summary::{NodeStats, PsiData, PsiStats};

/// The configuration key.
pub const CONFIG_KEY: &str = "evictionPressureStall";

/// `some` (at least one task stalled) or `full` (every non-idle task stalled).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StallKind {
    Some,
    Full,
}

/// The kernel's averaging windows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StallWindow {
    Avg10,
    Avg60,
    Avg300,
}

/// One threshold: `memory.<kind>.<window>` at or above `percent`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PressureStallThreshold {
    pub kind: StallKind,
    pub window: StallWindow,
    pub percent: f64,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PressureStallConfigError {
    #[error("{CONFIG_KEY}: unknown signal {0:?} (expected memory.<some|full>.<avg10|avg60|avg300>)")]
    Signal(String),
    #[error("{CONFIG_KEY}: {signal}: {value:?} is not a percentage in (0, 100]")]
    Value { signal: String, value: String },
}

impl PressureStallThreshold {
    /// The signal's name as configured, e.g. `memory.some.avg10`.
    pub fn signal(&self) -> String {
        let kind = match self.kind {
            StallKind::Some => "some",
            StallKind::Full => "full",
        };
        let window = match self.window {
            StallWindow::Avg10 => "avg10",
            StallWindow::Avg60 => "avg60",
            StallWindow::Avg300 => "avg300",
        };
        format!("memory.{kind}.{window}")
    }

    /// The figure this threshold watches in a pressure reading.
    pub fn observe(&self, psi: &PsiStats) -> f64 {
        let data: &PsiData = match self.kind {
            StallKind::Some => &psi.some,
            StallKind::Full => &psi.full,
        };
        match self.window {
            StallWindow::Avg10 => data.avg10,
            StallWindow::Avg60 => data.avg60,
            StallWindow::Avg300 => data.avg300,
        }
    }
}

/// Reads the configuration map, in key order.
pub fn parse_thresholds(
    map: &BTreeMap<String, String>,
) -> Result<Vec<PressureStallThreshold>, PressureStallConfigError> {
    map.iter()
        .map(|(signal, value)| {
            let mut parts = signal.split('.');
            let (resource, kind, window) = (parts.next(), parts.next(), parts.next());
            let kind = match kind {
                Some("some") => StallKind::Some,
                Some("full") => StallKind::Full,
                _ => return Err(PressureStallConfigError::Signal(signal.clone())),
            };
            let window = match window {
                Some("avg10") => StallWindow::Avg10,
                Some("avg60") => StallWindow::Avg60,
                Some("avg300") => StallWindow::Avg300,
                _ => return Err(PressureStallConfigError::Signal(signal.clone())),
            };
            if resource != Some("memory") || parts.next().is_some() {
                return Err(PressureStallConfigError::Signal(signal.clone()));
            }
            let percent = value
                .trim()
                .strip_suffix('%')
                .unwrap_or(value.trim())
                .trim()
                .parse::<f64>()
                .ok()
                .filter(|p| p.is_finite() && *p > 0.0 && *p <= 100.0)
                .ok_or_else(|| PressureStallConfigError::Value { signal: signal.clone(), value: value.clone() })?;
            Ok(PressureStallThreshold { kind, window, percent })
        })
        .collect()
}

/// A threshold that holds, with the figure that met it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StallObserved {
    pub threshold: PressureStallThreshold,
    pub observed: f64,
}

impl StallObserved {
    /// For the node condition's and the eviction's messages, e.g. `memory.some.avg10 35.2% >= 20%`.
    pub fn describe(&self) -> String {
        format!("{} {}% >= {}%", self.threshold.signal(), self.observed, self.threshold.percent)
    }
}

/// The thresholds the node's memory pressure meets now. None when the summary has no memory PSI (cgroup v1, a
/// kernel without PSI): the signal then never fires, and `memory.available` alone guards the node.
pub fn thresholds_met(thresholds: &[PressureStallThreshold], node: &NodeStats) -> Vec<StallObserved> {
    let Some(psi) = node.memory.as_ref().and_then(|m| m.psi) else { return vec![] };
    thresholds
        .iter()
        .filter_map(|t| {
            let observed = t.observe(&psi);
            (observed >= t.percent).then_some(StallObserved { threshold: *t, observed })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::summary::MemoryStats;

    fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
    }

    #[test]
    fn thresholds_parse_from_the_configuration_map() {
        let t = parse_thresholds(&map(&[("memory.some.avg10", "20"), ("memory.full.avg300", " 5% ")])).unwrap();
        assert_eq!(
            t,
            [
                PressureStallThreshold { kind: StallKind::Full, window: StallWindow::Avg300, percent: 5.0 },
                PressureStallThreshold { kind: StallKind::Some, window: StallWindow::Avg10, percent: 20.0 },
            ]
        );
        assert_eq!(t[1].signal(), "memory.some.avg10");
        for bad in ["cpu.some.avg10", "memory.most.avg10", "memory.some.avg5", "memory.some", "memory.some.avg10.x", ""]
        {
            assert_eq!(
                parse_thresholds(&map(&[(bad, "10")])),
                Err(PressureStallConfigError::Signal(bad.into())),
                "{bad}"
            );
        }
        for bad in ["0", "-1", "101", "x", "NaN", "inf", ""] {
            assert!(matches!(
                parse_thresholds(&map(&[("memory.some.avg10", bad)])),
                Err(PressureStallConfigError::Value { .. })
            ));
        }
    }

    #[test]
    fn a_threshold_is_met_at_or_above_the_nodes_memory_pressure() {
        let t = parse_thresholds(&map(&[("memory.some.avg10", "20"), ("memory.full.avg60", "10")])).unwrap();
        let node = |some10: f64, full60: f64| NodeStats {
            memory: Some(MemoryStats {
                psi: Some(PsiStats {
                    some: PsiData { avg10: some10, ..Default::default() },
                    full: PsiData { avg60: full60, ..Default::default() },
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        assert!(thresholds_met(&t, &node(19.99, 9.0)).is_empty());
        let met = thresholds_met(&t, &node(20.0, 9.0));
        assert_eq!(met.len(), 1);
        assert_eq!(met[0].describe(), "memory.some.avg10 20% >= 20%");
        assert_eq!(thresholds_met(&t, &node(50.0, 12.5)).len(), 2);
        // No PSI (cgroup v1): never met.
        assert!(thresholds_met(&t, &NodeStats::default()).is_empty());
        assert!(thresholds_met(&[], &node(100.0, 100.0)).is_empty());
    }
}
