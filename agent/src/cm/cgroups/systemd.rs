//! The systemd driver: each cgroup is a slice (`kubepods-burstable-pod<uid>.slice`) that systemd creates over its
//! D-Bus API, as runc's systemd driver expects.

use super::{CgroupError, CgroupName};
use crate::cm::convert::shares_to_weight;
use crate::cm::pod::ResourceConfig;

/// systemd's quota is per second, in steps of 10 ms; runc's systemd driver rounds up the same way, so the values
/// we set agree with what runc would set for the same limit.
pub fn systemd_cpu_quota_per_sec_usec(quota_us: i64, period_us: i64) -> u64 {
    if quota_us <= 0 || period_us <= 0 {
        return u64::MAX;
    }
    let per_sec = (quota_us as u64 * 1_000_000) / period_us as u64;
    per_sec.div_ceil(10_000) * 10_000
}

/// Starts the cgroup as a transient slice with the config, or sets the config of the running slice.
pub async fn ensure_slice(
    conn: Option<&zbus::Connection>,
    name: &CgroupName,
    cfg: &ResourceConfig,
) -> Result<(), CgroupError> {
    use zbus::zvariant::Value;
    let unit = name.to_systemd_slice();
    let mut props: Vec<(&str, Value<'_>)> = vec![
        ("Description", Value::from(format!("rkubelet {}", name.to_cgroupfs()))),
        ("DefaultDependencies", Value::from(false)),
        ("CPUAccounting", Value::from(true)),
        ("MemoryAccounting", Value::from(true)),
        ("TasksAccounting", Value::from(true)),
    ];
    if let Some(shares) = cfg.cpu_shares {
        props.push(("CPUWeight", Value::from(shares_to_weight(shares))));
    }
    if let (Some(period), quota) = (cfg.cpu_period_us, cfg.cpu_quota_us) {
        props.push(("CPUQuotaPeriodUSec", Value::from(period as u64)));
        props.push(("CPUQuotaPerSecUSec", Value::from(systemd_cpu_quota_per_sec_usec(quota.unwrap_or(0), period))));
    }
    if let Some(mem) = cfg.memory_limit_bytes {
        props.push(("MemoryMax", Value::from(if mem > 0 { mem as u64 } else { u64::MAX })));
    }
    // runc's systemd driver: `TasksMax` for a positive limit, infinity for -1.
    if let Some(pids) = cfg.pids_limit.filter(|p| *p > 0 || *p == -1) {
        props.push(("TasksMax", Value::from(if pids > 0 { pids as u64 } else { u64::MAX })));
    }
    let manager = manager(conn, &unit).await?;
    let aux: Vec<(&str, Vec<(&str, Value<'_>)>)> = Vec::new();
    let started: Result<zbus::zvariant::OwnedObjectPath, zbus::Error> =
        manager.call("StartTransientUnit", &(unit.as_str(), "replace", &props, &aux)).await;
    match started {
        Ok(_) => Ok(()),
        Err(zbus::Error::MethodError(err, _, _)) if err.as_str() == "org.freedesktop.systemd1.UnitExists" => {
            // Only resource-control properties can change on a live unit (systemd refuses the others, e.g.
            // DefaultDependencies); runtime-only, as the slice disappears with the node's next boot anyway.
            props.retain(|(k, _)| !matches!(*k, "Description" | "DefaultDependencies"));
            let set: Result<(), zbus::Error> = manager.call("SetUnitProperties", &(unit.as_str(), true, &props)).await;
            set.map_err(|e| CgroupError::Systemd { unit: unit.clone(), message: format!("set properties: {e}") })
        }
        Err(e) => Err(CgroupError::Systemd { unit, message: format!("start transient slice: {e}") }),
    }
}

/// Stops the pod's slice; a slice already gone is success.
pub async fn stop_slice(conn: Option<&zbus::Connection>, name: &CgroupName) -> Result<(), CgroupError> {
    let unit = name.to_systemd_slice();
    let manager = manager(conn, &unit).await?;
    let stopped: Result<zbus::zvariant::OwnedObjectPath, zbus::Error> =
        manager.call("StopUnit", &(unit.as_str(), "replace")).await;
    match stopped {
        Ok(_) => Ok(()),
        Err(zbus::Error::MethodError(err, _, _)) if err.as_str() == "org.freedesktop.systemd1.NoSuchUnit" => Ok(()),
        Err(e) => Err(CgroupError::Systemd { unit, message: format!("stop slice: {e}") }),
    }
}

async fn manager<'a>(conn: Option<&'a zbus::Connection>, unit: &str) -> Result<zbus::Proxy<'a>, CgroupError> {
    let conn =
        conn.ok_or_else(|| CgroupError::Systemd { unit: unit.to_owned(), message: "no system bus connection".into() })?;
    zbus::Proxy::new(conn, "org.freedesktop.systemd1", "/org/freedesktop/systemd1", "org.freedesktop.systemd1.Manager")
        .await
        .map_err(|e| CgroupError::Systemd { unit: unit.to_owned(), message: e.to_string() })
}
