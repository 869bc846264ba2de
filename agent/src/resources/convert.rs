//! Requests/limits to cgroup values, with kubelet's formulas (pkg/kubelet/cm/helpers_linux.go and
//! pkg/kubelet/qos/policy.go).

use k8s_openapi::api::core::v1::Container;

use crate::resources::qos::QosClass;
use crate::resources::quantity::{parse_milli, parse_value, QuantityError};

/// The CFS period kubelet uses for every quota (`QuotaPeriod`, 100 ms).
pub const CPU_PERIOD_US: i64 = 100_000;
/// Smallest quota kubelet writes (`MinQuotaPeriod`, 1 ms): the kernel rejects less.
pub const MIN_QUOTA_US: i64 = 1_000;
/// cpu.shares bounds (`MinShares`, `MaxShares`).
pub const MIN_SHARES: u64 = 2;
pub const MAX_SHARES: u64 = 262_144;
const SHARES_PER_CPU: i128 = 1024;
const MILLI_CPU_TO_CPU: i128 = 1000;

/// oom_score_adj per QoS class (pkg/kubelet/qos/policy.go).
pub const GUARANTEED_OOM_SCORE_ADJ: i64 = -997;
pub const BEST_EFFORT_OOM_SCORE_ADJ: i64 = 1000;

/// `MilliCPUToShares`: a request of 0 gets the minimum, not zero, so the container still gets some CPU.
pub fn milli_cpu_to_shares(milli_cpu: i128) -> u64 {
    if milli_cpu <= 0 {
        return MIN_SHARES;
    }
    let shares = (milli_cpu * SHARES_PER_CPU) / MILLI_CPU_TO_CPU;
    (shares.max(MIN_SHARES as i128) as u64).min(MAX_SHARES)
}

/// `MilliCPUToQuota`: 0 (no limit) stays 0; anything else is at least `MIN_QUOTA_US`.
pub fn milli_cpu_to_quota(milli_cpu: i128, period_us: i64) -> i64 {
    if milli_cpu <= 0 {
        return 0;
    }
    let quota = (milli_cpu * period_us as i128 / MILLI_CPU_TO_CPU) as i64;
    quota.max(MIN_QUOTA_US)
}

/// cgroup v2 `cpu.weight` from cpu.shares, the mapping runc and kubelet use: [2, 262144] -> [1, 10000].
pub fn shares_to_weight(shares: u64) -> u64 {
    if shares == 0 {
        return 0;
    }
    1 + ((shares.saturating_sub(2)) * 9999) / 262_142
}

/// `GetContainerOOMScoreAdjust` for a container of a pod of the given class.
pub fn oom_score_adj(qos: QosClass, memory_request: i128, memory_capacity: i128) -> i64 {
    match qos {
        QosClass::Guaranteed => GUARANTEED_OOM_SCORE_ADJ,
        QosClass::BestEffort => BEST_EFFORT_OOM_SCORE_ADJ,
        QosClass::Burstable => {
            if memory_capacity <= 0 {
                return BEST_EFFORT_OOM_SCORE_ADJ - 1;
            }
            let adj = 1000 - (1000 * memory_request) / memory_capacity;
            // A Burstable container must stay killable before any Guaranteed one, and after any BestEffort one.
            if adj < (1000 + GUARANTEED_OOM_SCORE_ADJ) as i128 {
                1000 + GUARANTEED_OOM_SCORE_ADJ
            } else if adj == BEST_EFFORT_OOM_SCORE_ADJ as i128 {
                (adj - 1) as i64
            } else {
                adj as i64
            }
        }
    }
}

/// The Linux resource values of one container.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ContainerCgroupValues {
    pub cpu_shares: u64,
    pub cpu_quota_us: i64,
    pub cpu_period_us: i64,
    pub memory_limit_bytes: i64,
    pub oom_score_adj: i64,
}

fn quantity<'a>(container: &'a Container, limits: bool, name: &str) -> Option<&'a str> {
    let res = container.resources.as_ref();
    let list = if limits { res.and_then(|r| r.limits.as_ref()) } else { res.and_then(|r| r.requests.as_ref()) };
    list.and_then(|l| l.get(name)).map(|q| q.0.as_str())
}

pub fn container_cgroup_values(
    container: &Container,
    qos: QosClass,
    memory_capacity: i128,
) -> Result<ContainerCgroupValues, QuantityError> {
    let cpu_request = quantity(container, false, "cpu").map(parse_milli).transpose()?;
    let cpu_limit = quantity(container, true, "cpu").map(parse_milli).transpose()?;
    let memory_request = quantity(container, false, "memory").map(parse_value).transpose()?.unwrap_or(0);
    let memory_limit = quantity(container, true, "memory").map(parse_value).transpose()?.unwrap_or(0);
    // kubelet: a container with a limit but no request gets the limit as its request (API defaulting).
    let cpu_for_shares = cpu_request.or(cpu_limit).unwrap_or(0);
    Ok(ContainerCgroupValues {
        cpu_shares: milli_cpu_to_shares(cpu_for_shares),
        cpu_quota_us: milli_cpu_to_quota(cpu_limit.unwrap_or(0), CPU_PERIOD_US),
        cpu_period_us: CPU_PERIOD_US,
        memory_limit_bytes: memory_limit.clamp(0, i64::MAX as i128) as i64,
        oom_score_adj: oom_score_adj(qos, memory_request, memory_capacity),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_follow_kubelet() {
        assert_eq!(milli_cpu_to_shares(0), 2);
        assert_eq!(milli_cpu_to_shares(1), 2); // 1*1024/1000 = 1 -> raised to MinShares
        assert_eq!(milli_cpu_to_shares(100), 102);
        assert_eq!(milli_cpu_to_shares(500), 512);
        assert_eq!(milli_cpu_to_shares(1000), 1024);
        assert_eq!(milli_cpu_to_shares(1_000_000), 262_144);
    }

    #[test]
    fn quota_follows_kubelet() {
        assert_eq!(milli_cpu_to_quota(0, CPU_PERIOD_US), 0);
        assert_eq!(milli_cpu_to_quota(5, CPU_PERIOD_US), 1000); // 500 us raised to the 1 ms minimum
        assert_eq!(milli_cpu_to_quota(250, CPU_PERIOD_US), 25_000);
        assert_eq!(milli_cpu_to_quota(2000, CPU_PERIOD_US), 200_000);
    }

    #[test]
    fn weight_from_shares() {
        assert_eq!(shares_to_weight(2), 1);
        assert_eq!(shares_to_weight(1024), 39); // 1 + 1022*9999/262142 = 39.98 -> 39
        assert_eq!(shares_to_weight(262_144), 10_000);
    }

    #[test]
    fn oom_score_adj_by_class() {
        let gib = 1i128 << 30;
        assert_eq!(oom_score_adj(QosClass::Guaranteed, gib, 8 * gib), -997);
        assert_eq!(oom_score_adj(QosClass::BestEffort, 0, 8 * gib), 1000);
        assert_eq!(oom_score_adj(QosClass::Burstable, 2 * gib, 8 * gib), 750);
        // Nearly all memory requested: clamped to 3.
        assert_eq!(oom_score_adj(QosClass::Burstable, 8 * gib, 8 * gib), 3);
        // No memory request: 1000 would equal BestEffort, so 999.
        assert_eq!(oom_score_adj(QosClass::Burstable, 0, 8 * gib), 999);
    }
}
