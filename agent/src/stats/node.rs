//! The node's own figures, read from `/proc` and statvfs as cadvisor reads them for the root container.

use std::path::Path;
use std::sync::Mutex;

use crate::stats::summary::{
    fs_stats, CpuStats, FsCapacity, InterfaceStats, MemoryStats, NetworkStats, NodeStats, RlimitStats,
};

/// Go's USER_HZ for `/proc/stat`.
const USER_HZ: u64 = 100;
/// kubelet's name of the default network interface.
const DEFAULT_INTERFACE: &str = "eth0";

/// Busy CPU time of the node from the first line of `/proc/stat`, in nanoseconds (all but idle and iowait).
pub fn cpu_busy_ns(proc_stat: &str) -> Option<u64> {
    let line = proc_stat.lines().find(|l| l.starts_with("cpu "))?;
    let fields: Vec<u64> = line.split_whitespace().skip(1).filter_map(|v| v.parse().ok()).collect();
    if fields.len() < 4 {
        return None;
    }
    let total: u64 = fields.iter().take(8).sum();
    let idle = fields[3] + fields.get(4).copied().unwrap_or(0);
    Some((total - idle) * (1_000_000_000 / USER_HZ))
}

/// The node's usage rate between two reads (kubelet reports `usageNanoCores` from consecutive samples).
#[derive(Debug, Default)]
pub struct CpuRate {
    last: Mutex<Option<(i64, u64)>>,
}

impl CpuRate {
    /// Records a sample (time, cumulative ns) and returns the rate since the previous one.
    pub fn sample(&self, at_ns: i64, usage_ns: u64) -> Option<u64> {
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        let rate = match *last {
            Some((t, u)) if at_ns > t && usage_ns >= u => {
                Some(((usage_ns - u) as u128 * 1_000_000_000 / (at_ns - t) as u128) as u64)
            }
            _ => None,
        };
        *last = Some((at_ns, usage_ns));
        rate
    }
}

fn meminfo_kib(text: &str, key: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix(key).and_then(|r| r.strip_prefix(':')))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse::<u64>().ok())
        .map(|kib| kib * 1024)
}

/// Memory of the node as cadvisor computes it for the root: usage = total - free, working set = usage minus
/// inactive file pages, available = total - working set.
pub fn memory(meminfo: &str, vmstat: &str, time: &str) -> Option<MemoryStats> {
    let total = meminfo_kib(meminfo, "MemTotal")?;
    let free = meminfo_kib(meminfo, "MemFree")?;
    let usage = total.saturating_sub(free);
    let inactive_file = meminfo_kib(meminfo, "Inactive(file)").unwrap_or(0);
    let working_set = usage.saturating_sub(inactive_file);
    let anon = meminfo_kib(meminfo, "Active(anon)").unwrap_or(0) + meminfo_kib(meminfo, "Inactive(anon)").unwrap_or(0);
    let vm = |k: &str| {
        vmstat
            .lines()
            .find_map(|l| l.strip_prefix(k).and_then(|r| r.strip_prefix(' ')).and_then(|v| v.trim().parse().ok()))
    };
    Some(MemoryStats {
        time: time.to_owned(),
        available_bytes: Some(total.saturating_sub(working_set)),
        usage_bytes: Some(usage),
        working_set_bytes: Some(working_set),
        rss_bytes: Some(anon),
        page_faults: vm("pgfault"),
        major_page_faults: vm("pgmajfault"),
        ..Default::default()
    })
}

/// Interfaces of `/proc/net/dev` but loopback and the pods' veth ends; the default is `eth0` or the first.
pub fn network(net_dev: &str, time: &str) -> Option<NetworkStats> {
    let interfaces: Vec<InterfaceStats> = net_dev
        .lines()
        .skip(2)
        .filter_map(|l| {
            let (name, rest) = l.split_once(':')?;
            let name = name.trim();
            if name == "lo" || name.starts_with("veth") {
                return None;
            }
            let v: Vec<u64> = rest.split_whitespace().filter_map(|x| x.parse().ok()).collect();
            (v.len() >= 11).then(|| InterfaceStats {
                name: name.to_owned(),
                rx_bytes: Some(v[0]),
                rx_errors: Some(v[2]),
                tx_bytes: Some(v[8]),
                tx_errors: Some(v[10]),
            })
        })
        .collect();
    let default = interfaces.iter().find(|i| i.name == DEFAULT_INTERFACE).or(interfaces.first())?.clone();
    Some(NetworkStats { time: time.to_owned(), default, interfaces })
}

/// Size of the filesystem holding `path`.
pub fn statvfs(path: &Path) -> Option<FsCapacity> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
    let mut s: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is a valid NUL-terminated path and `s` a writable statvfs.
    if unsafe { libc::statvfs(c.as_ptr(), &mut s) } != 0 {
        return None;
    }
    let frsize = s.f_frsize as u64;
    Some(FsCapacity {
        capacity_bytes: s.f_blocks as u64 * frsize,
        available_bytes: s.f_bavail as u64 * frsize,
        inodes: s.f_files as u64,
        inodes_free: s.f_ffree as u64,
    })
}

/// The root memory cgroup's usage and inactive file pages, as cadvisor reads the root container: on cgroup v1
/// `memory.usage_in_bytes` and `total_inactive_file` of the memory hierarchy's root; on cgroup v2, whose root has no
/// `memory.current`, runc's `rootStatsFromMeminfo` (usage = MemTotal - MemFree) and `inactive_file` of the root
/// `memory.stat`. `None` when neither layout is readable.
pub fn root_cgroup_memory(
    meminfo: &str,
    v1_usage_in_bytes: Option<&str>,
    v1_memory_stat: Option<&str>,
    v2_memory_stat: Option<&str>,
) -> Option<(u64, u64)> {
    let stat = |text: &str, key: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(key).and_then(|r| r.strip_prefix(' ')).and_then(|v| v.trim().parse().ok()))
    };
    if let (Some(usage), Some(stat_text)) = (v1_usage_in_bytes, v1_memory_stat) {
        let usage: u64 = usage.trim().parse().ok()?;
        return Some((usage, stat(stat_text, "total_inactive_file").unwrap_or(0)));
    }
    let stat_text = v2_memory_stat?;
    let total = meminfo_kib(meminfo, "MemTotal")?;
    let free = meminfo_kib(meminfo, "MemFree")?;
    Some((total.saturating_sub(free), stat(stat_text, "inactive_file").unwrap_or(0)))
}

/// The node's memory with the working set of the root cgroup (kubelet's `memory.available` is capacity minus it).
fn node_memory(read: &dyn Fn(&str) -> Option<String>, time: &str) -> Option<MemoryStats> {
    let meminfo = read("/proc/meminfo").unwrap_or_default();
    let mut m = memory(&meminfo, &read("/proc/vmstat").unwrap_or_default(), time)?;
    let root = root_cgroup_memory(
        &meminfo,
        read("/sys/fs/cgroup/memory/memory.usage_in_bytes").as_deref(),
        read("/sys/fs/cgroup/memory/memory.stat").as_deref(),
        read("/sys/fs/cgroup/memory.stat").as_deref(),
    );
    if let (Some((usage, inactive)), Some(total)) = (root, meminfo_kib(&meminfo, "MemTotal")) {
        let working_set = usage.saturating_sub(inactive);
        m.usage_bytes = Some(usage);
        m.working_set_bytes = Some(working_set);
        m.available_bytes = Some(total.saturating_sub(working_set));
    }
    Some(m)
}

/// The node's memory now, as the summary reports it.
pub fn node_memory_now(time: &str) -> Option<MemoryStats> {
    node_memory(&|p: &str| std::fs::read_to_string(p).ok(), time)
}

/// The node's working set and availability alone, for the eviction manager's watch between rounds: the page
/// fault counters of `/proc/vmstat` are the summary's, not a signal's.
pub fn node_working_set_now(time: &str) -> Option<MemoryStats> {
    node_memory(&|p: &str| if p == "/proc/vmstat" { None } else { std::fs::read_to_string(p).ok() }, time)
}

/// A cgroup v2 cgroup's memory as cadvisor reports it (the `kubepods` cgroup for `allocatableMemory.available`):
/// working set = `memory.current` - `inactive_file`; available only when `memory.max` limits it.
pub fn cgroup_v2_memory(current: &str, memory_stat: &str, max: &str, time: &str) -> Option<MemoryStats> {
    let usage: u64 = current.trim().parse().ok()?;
    let inactive: u64 = memory_stat
        .lines()
        .find_map(|l| l.strip_prefix("inactive_file ").and_then(|v| v.trim().parse().ok()))
        .unwrap_or(0);
    let working_set = usage.saturating_sub(inactive);
    let limit: Option<u64> = max.trim().parse().ok();
    Some(MemoryStats {
        time: time.to_owned(),
        available_bytes: limit.map(|l| l.saturating_sub(working_set)),
        usage_bytes: Some(usage),
        working_set_bytes: Some(working_set),
        ..Default::default()
    })
}

/// kubelet's `pidlimit.Stats`: the smaller of `kernel.pid_max` and `kernel.threads-max`, and the number of tasks
/// from the fourth field of `/proc/loadavg` (`2/3518`: sysinfo(2) truncates above 65538).
pub fn rlimit(pid_max: Option<&str>, threads_max: Option<&str>, loadavg: Option<&str>, time: &str) -> RlimitStats {
    let maxpid = [pid_max, threads_max].into_iter().flatten().filter_map(|t| t.trim().parse::<i64>().ok()).min();
    let curproc = loadavg
        .and_then(|l| l.split_whitespace().nth(3))
        .and_then(|f| f.split_once('/'))
        .and_then(|(_, n)| n.parse().ok());
    RlimitStats { time: time.to_owned(), maxpid, curproc }
}

/// The node's part of the summary.
pub fn node_stats(node_name: &str, root_dir: &Path, rate: &CpuRate) -> NodeStats {
    let now = jiff::Timestamp::now();
    let time = now.to_string();
    let read_opt = |p: &str| std::fs::read_to_string(p).ok();
    let read = |p: &str| read_opt(p).unwrap_or_default();
    let cpu = cpu_busy_ns(&read("/proc/stat")).map(|busy| CpuStats {
        time: time.clone(),
        usage_nano_cores: rate.sample(now.as_nanosecond() as i64, busy),
        usage_core_nano_seconds: Some(busy),
        ..Default::default()
    });
    let fs = statvfs(root_dir).map(|c| {
        let used = c.capacity_bytes.saturating_sub(c.available_bytes);
        fs_stats(&time, Some(used), Some(c.inodes.saturating_sub(c.inodes_free)), Some(c))
    });
    let boot = read("/proc/stat")
        .lines()
        .find_map(|l| l.strip_prefix("btime ").and_then(|v| v.trim().parse::<i64>().ok()))
        .and_then(|s| jiff::Timestamp::from_second(s).ok())
        .map(|t| t.to_string())
        .unwrap_or_default();
    NodeStats {
        node_name: node_name.to_owned(),
        start_time: boot,
        cpu,
        memory: node_memory(&read_opt, &time),
        io: None,
        network: network(&read("/proc/net/dev"), &time),
        fs,
        runtime: None,
        rlimit: Some(rlimit(
            read_opt("/proc/sys/kernel/pid_max").as_deref(),
            read_opt("/proc/sys/kernel/threads-max").as_deref(),
            read_opt("/proc/loadavg").as_deref(),
            &time,
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_stat_busy_time_leaves_out_idle_and_iowait() {
        let text = "cpu  100 5 50 1000 20 1 2 3 0 0\ncpu0 1 2 3 4\nbtime 1700000000\n";
        assert_eq!(cpu_busy_ns(text), Some((100 + 5 + 50 + 1 + 2 + 3) * 10_000_000));
        assert_eq!(cpu_busy_ns("nothing"), None);
    }

    #[test]
    fn the_cpu_rate_comes_from_consecutive_samples() {
        let r = CpuRate::default();
        assert_eq!(r.sample(1_000_000_000, 500), None);
        // Half a core over one second.
        assert_eq!(r.sample(2_000_000_000, 500 + 500_000_000), Some(500_000_000));
    }

    #[test]
    fn memory_and_network_read_like_cadvisor() {
        let meminfo =
            "MemTotal: 1000 kB\nMemFree: 200 kB\nInactive(file): 300 kB\nActive(anon): 50 kB\nInactive(anon): 25 kB\n";
        let m = memory(meminfo, "pgfault 7\npgmajfault 1\n", "t").unwrap();
        assert_eq!(m.usage_bytes, Some(800 * 1024));
        assert_eq!(m.working_set_bytes, Some(500 * 1024));
        assert_eq!(m.available_bytes, Some(500 * 1024));
        assert_eq!((m.rss_bytes, m.page_faults, m.major_page_faults), (Some(75 * 1024), Some(7), Some(1)));
        let dev = "Inter-|   Receive\n face |bytes\n    lo: 9 9 0 0 0 0 0 0 9 9 0 0 0 0 0 0\n  ens3: 100 1 2 0 0 0 0 0 200 2 3 0 0 0 0 0\nveth1: 5 5 0 0 0 0 0 0 5 5 0 0 0 0 0 0\n";
        let n = network(dev, "t").unwrap();
        assert_eq!(n.interfaces.len(), 1);
        assert_eq!(
            (n.default.name.as_str(), n.default.rx_bytes, n.default.rx_errors, n.default.tx_bytes, n.default.tx_errors),
            ("ens3", Some(100), Some(2), Some(200), Some(3))
        );
    }

    #[test]
    fn the_root_working_set_comes_from_the_root_memory_cgroup() {
        let meminfo = "MemTotal: 1000 kB\nMemFree: 200 kB\nInactive(file): 300 kB\n";
        // cgroup v1: the root memory cgroup's usage and total_inactive_file.
        let v1 =
            root_cgroup_memory(meminfo, Some("700000\n"), Some("inactive_file 1\ntotal_inactive_file 100000\n"), None);
        assert_eq!(v1, Some((700_000, 100_000)));
        // cgroup v2: MemTotal - MemFree as runc emulates the root's memory.current, inactive_file of memory.stat.
        let v2 = root_cgroup_memory(meminfo, None, None, Some("anon 5\ninactive_file 51200\n"));
        assert_eq!(v2, Some((800 * 1024, 51200)));
        assert_eq!(root_cgroup_memory(meminfo, None, None, None), None);
        let pods = cgroup_v2_memory("5000\n", "inactive_file 1000\n", "9000\n", "t").unwrap();
        assert_eq!((pods.working_set_bytes, pods.available_bytes), (Some(4000), Some(5000)));
        let unlimited = cgroup_v2_memory("5000\n", "", "max\n", "t").unwrap();
        assert_eq!(unlimited.available_bytes, None, "no limit, no allocatable observation");
    }

    #[test]
    fn rlimit_takes_the_smaller_task_limit_and_the_loadavg_task_count() {
        let r = rlimit(Some("4194304\n"), Some("63432\n"), Some("1.36 3.49 4.53 2/3518 3715089\n"), "t");
        assert_eq!((r.maxpid, r.curproc), (Some(63432), Some(3518)));
        let r = rlimit(Some("32768\n"), None, Some("garbage"), "t");
        assert_eq!((r.maxpid, r.curproc), (Some(32768), None));
    }
}
