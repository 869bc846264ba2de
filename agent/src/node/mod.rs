//! Facts about this node read from the host: name, addresses, memory, DNS. (Registration with an API server and the
//! node status built from these facts live here too once the agent joins a cluster.)

pub mod cni;
pub mod registration;
pub mod status;

use std::net::IpAddr;
use std::sync::Arc;

use crate::cm::pod::CpuMemory;
use crate::config::KubeletConfig;
use crate::node::registration::FactsFn;
use crate::node::status::{go_arch, NodeFacts, KUBELET_COMPAT_VERSION};
use crate::runtime::Runtime;

pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname").map(|s| s.trim().to_owned()).unwrap_or_default()
}

/// Static facts about the host for the Node's `nodeInfo` and capacity.
#[derive(Debug, Clone, Default)]
pub struct HostInfo {
    pub kernel_version: String,
    pub os_image: String,
    pub machine_id: String,
    pub boot_id: String,
    pub ephemeral_storage_bytes: i128,
}

fn read_trimmed(path: &str) -> String {
    std::fs::read_to_string(path).map(|s| s.trim().to_owned()).unwrap_or_default()
}

/// kubelet reads these through cadvisor: kernel release, os-release's PRETTY_NAME, machine and boot IDs, and the
/// size of the filesystem holding the root dir as ephemeral-storage capacity.
pub fn host_info(root_dir: &std::path::Path) -> HostInfo {
    let os_release = std::fs::read_to_string("/etc/os-release").unwrap_or_default();
    let os_image = os_release
        .lines()
        .find_map(|l| l.strip_prefix("PRETTY_NAME="))
        .map(|v| v.trim_matches('"').to_owned())
        .unwrap_or_else(|| "Linux".into());
    let mut storage = 0i128;
    if let Ok(c_path) = std::ffi::CString::new(root_dir.as_os_str().as_encoded_bytes()) {
        // SAFETY: statvfs writes into the zeroed struct; the path is a valid C string.
        let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
        if unsafe { libc::statvfs(c_path.as_ptr(), &mut st) } == 0 {
            storage = i128::from(st.f_blocks) * i128::from(st.f_frsize);
        }
    }
    HostInfo {
        kernel_version: read_trimmed("/proc/sys/kernel/osrelease"),
        os_image,
        machine_id: read_trimmed("/etc/machine-id"),
        boot_id: read_trimmed("/proc/sys/kernel/random/boot_id"),
        ephemeral_storage_bytes: storage,
    }
}

/// Online CPUs, in millicores (kubelet's cpu capacity).
pub fn cpu_capacity_milli() -> i128 {
    // SAFETY: sysconf has no preconditions.
    let n = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) };
    i128::from(n.max(1) as i64) * 1000
}

/// `MemTotal` in bytes.
pub fn memory_capacity() -> i128 {
    let text = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    parse_meminfo_total(&text)
}

fn parse_meminfo_total(text: &str) -> i128 {
    text.lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse::<i128>().ok())
        .map(|kib| kib * 1024)
        .unwrap_or(0)
}

/// Addresses of interfaces that are up, IPv4 first, skipping loopback and link-local: kubelet's choice of node IP
/// when none is configured.
pub fn host_ips() -> Vec<String> {
    let mut v4 = Vec::new();
    let mut v6 = Vec::new();
    let mut addrs: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills a linked list we only read, then free with freeifaddrs.
    if unsafe { libc::getifaddrs(&mut addrs) } != 0 {
        return Vec::new();
    }
    let mut cur = addrs;
    while !cur.is_null() {
        // SAFETY: `cur` is a node of the list getifaddrs returned and has not been freed.
        let ifa = unsafe { &*cur };
        cur = ifa.ifa_next;
        if ifa.ifa_addr.is_null() || ifa.ifa_flags & (libc::IFF_UP as u32) == 0 {
            continue;
        }
        // SAFETY: ifa_addr is non-null and its family tells which sockaddr type it points to.
        let ip: Option<IpAddr> = unsafe {
            match i32::from((*ifa.ifa_addr).sa_family) {
                libc::AF_INET => {
                    let sa = &*(ifa.ifa_addr as *const libc::sockaddr_in);
                    Some(IpAddr::from(u32::from_be(sa.sin_addr.s_addr).to_be_bytes()))
                }
                libc::AF_INET6 => {
                    let sa = &*(ifa.ifa_addr as *const libc::sockaddr_in6);
                    Some(IpAddr::from(sa.sin6_addr.s6_addr))
                }
                _ => None,
            }
        };
        match ip {
            Some(IpAddr::V4(a)) if !a.is_loopback() && !a.is_link_local() => v4.push(a.to_string()),
            Some(IpAddr::V6(a)) if !a.is_loopback() && (a.segments()[0] & 0xffc0) != 0xfe80 => v6.push(a.to_string()),
            _ => {}
        }
    }
    // SAFETY: `addrs` came from a successful getifaddrs.
    unsafe { libc::freeifaddrs(addrs) };
    v4.dedup();
    v6.dedup();
    v4.into_iter().take(1).chain(v6.into_iter().take(1)).collect()
}

/// kubelet's Ready condition joins its errors as `errors.NewAggregate` prints them: one alone, several in brackets.
fn aggregate(errors: &[String]) -> Option<String> {
    match errors {
        [] => None,
        [one] => Some(one.clone()),
        many => Some(format!("[{}]", many.join(", "))),
    }
}

/// The facts the node status reports, with kubelet's readiness checks (runtime up, its network ready, PLEG
/// relisting, the node not shutting down) taken at each update.
#[allow(clippy::too_many_arguments)]
pub fn node_facts_fn(
    config: &KubeletConfig,
    hostname: String,
    runtime: Runtime,
    runtime_version: String,
    pleg: crate::pleg::PlegHealth,
    (capacity, allocatable): (CpuMemory, CpuMemory),
    host_ips: Vec<String>,
    kubelet_port: u16,
    pressure: tokio::sync::watch::Receiver<crate::eviction::NodePressure>,
    shutting_down: tokio::sync::watch::Receiver<bool>,
) -> FactsFn {
    let info = host_info(&config.root_dir);
    let base = NodeFacts {
        name: config.node_name.clone(),
        capacity,
        allocatable,
        ephemeral_storage_bytes: info.ephemeral_storage_bytes,
        max_pods: config.max_pods,
        addresses: host_ips,
        hostname,
        kernel_version: info.kernel_version,
        os_image: info.os_image,
        architecture: go_arch().into(),
        machine_id: info.machine_id,
        boot_id: info.boot_id,
        container_runtime_version: format!("containerd://{runtime_version}"),
        // Capped by the API server's version at registration.
        kubelet_version: crate::node::status::kubelet_version(KUBELET_COMPAT_VERSION, None, env!("CARGO_PKG_VERSION")),
        kubelet_port,
        images: Vec::new(),
        not_ready_reason: None,
        pressure: Default::default(),
    };
    Arc::new(move || {
        let runtime = runtime.clone();
        let pleg = pleg.clone();
        let shutting_down = *shutting_down.borrow();
        let mut facts = base.clone();
        facts.pressure = pressure.borrow().clone();
        Box::pin(async move {
            // kubelet's readiness checks: runtime up, its network ready, PLEG relisting.
            facts.images = match runtime.list_images().await {
                Ok(images) => crate::node::status::node_images(&images, crate::node::status::NODE_STATUS_MAX_IMAGES),
                Err(e) => {
                    tracing::warn!(error = %e, "error getting image list");
                    Vec::new()
                }
            };
            let runtime_error = match runtime.status().await {
                Err(e) => Some(format!("container runtime is down: {e}")),
                Ok(s) if !s.runtime_ready => {
                    Some(format!("container runtime status check may not have completed yet: {}", s.message))
                }
                Ok(s) if !s.network_ready => Some(format!("container runtime network not ready: {}", s.message)),
                Ok(_) if !pleg.healthy() => Some("PLEG is not healthy".into()),
                Ok(_) => None,
            };
            // The graceful node shutdown manager's `ShutdownStatus` (nodeshutdown::NODE_SHUTTING_DOWN).
            let shutdown_error = shutting_down.then(|| "node is shutting down".to_owned());
            facts.not_ready_reason = aggregate(&runtime_error.into_iter().chain(shutdown_error).collect::<Vec<_>>());
            facts
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_errors_are_joined_as_kubelets_aggregate() {
        assert_eq!(aggregate(&[]), None);
        assert_eq!(aggregate(&["node is shutting down".into()]).as_deref(), Some("node is shutting down"));
        assert_eq!(
            aggregate(&["PLEG is not healthy".into(), "node is shutting down".into()]).as_deref(),
            Some("[PLEG is not healthy, node is shutting down]")
        );
    }

    #[test]
    fn meminfo() {
        assert_eq!(parse_meminfo_total("MemTotal:       16384 kB\nMemFree: 1 kB\n"), 16384 * 1024);
        assert_eq!(parse_meminfo_total("garbage"), 0);
    }
}
