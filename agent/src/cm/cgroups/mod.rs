//! The pod cgroup hierarchy on cgroup v2, kubelet's layout: `kubepods` (node allocatable), `kubepods/burstable`,
//! `kubepods/besteffort`, and one `pod<uid>` cgroup per pod under its QoS parent (Guaranteed pods directly under
//! `kubepods`). Two drivers, matching containerd's runc setting: `cgroupfs` writes the files itself; `systemd` makes
//! each cgroup a slice (`kubepods-burstable-pod<uid>.slice`) through systemd's D-Bus API, as runc's systemd driver
//! expects.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::str::FromStr;

mod cgroupfs;
mod systemd;

pub use cgroupfs::cgroup_v2_files;
pub use systemd::systemd_cpu_quota_per_sec_usec;

use crate::cm::pod::ResourceConfig;
use crate::kubetypes::qos::QosClass;

pub const CGROUP_MOUNT: &str = "/sys/fs/cgroup";
/// `CGROUP2_SUPER_MAGIC` from linux/magic.h.
const CGROUP2_SUPER_MAGIC: i64 = 0x6367_7270;
/// Controllers the pod hierarchy needs; the rest are enabled when available.
const REQUIRED_CONTROLLERS: [&str; 2] = ["cpu", "memory"];
pub(super) const WANTED_CONTROLLERS: [&str; 5] = ["cpu", "memory", "pids", "cpuset", "io"];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CgroupDriver {
    Cgroupfs,
    Systemd,
}

impl FromStr for CgroupDriver {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "cgroupfs" => Ok(CgroupDriver::Cgroupfs),
            "systemd" => Ok(CgroupDriver::Systemd),
            other => Err(format!("cgroupDriver {other:?}: must be cgroupfs or systemd")),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error("cgroup v2 with the cpu and memory controllers is not available at {mount}: {reason}")]
    Unavailable { mount: PathBuf, reason: String },
    #[error("cgroup {path}: {op}: {source}")]
    Io { path: PathBuf, op: &'static str, source: std::io::Error },
    #[error("systemd unit {unit}: {message}")]
    Systemd { unit: String, message: String },
}

/// A cgroup by its components, kubelet's `CgroupName`: `["kubepods", "burstable", "pod<uid>"]`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct CgroupName(pub Vec<String>);

impl CgroupName {
    pub fn kubepods() -> Self {
        CgroupName(vec!["kubepods".into()])
    }

    pub fn qos(qos: QosClass) -> Self {
        match qos {
            QosClass::Guaranteed => Self::kubepods(),
            QosClass::Burstable => CgroupName(vec!["kubepods".into(), "burstable".into()]),
            QosClass::BestEffort => CgroupName(vec!["kubepods".into(), "besteffort".into()]),
        }
    }

    pub fn pod(qos: QosClass, uid: &str) -> Self {
        let mut n = Self::qos(qos).0;
        n.push(format!("pod{uid}"));
        CgroupName(n)
    }

    /// cgroupfs form: `/kubepods/burstable/pod<uid>`.
    pub fn to_cgroupfs(&self) -> String {
        format!("/{}", self.0.join("/"))
    }

    /// systemd slice of this cgroup: `kubepods-burstable-pod<uid>.slice`, with `-` in components (the pod UID)
    /// escaped to `_`, since `-` separates the slice hierarchy.
    pub fn to_systemd_slice(&self) -> String {
        let parts: Vec<String> = self.0.iter().map(|p| p.replace('-', "_")).collect();
        format!("{}.slice", parts.join("-"))
    }

    /// Path of the slice below the mount: `kubepods.slice/kubepods-burstable.slice/...`.
    pub fn to_systemd_path(&self) -> PathBuf {
        let mut path = PathBuf::new();
        for i in 1..=self.0.len() {
            path.push(CgroupName(self.0[..i].to_vec()).to_systemd_slice());
        }
        path
    }

    /// The pod UID when this names a pod cgroup.
    pub fn pod_uid(&self) -> Option<&str> {
        self.0.last().and_then(|l| l.strip_prefix("pod"))
    }
}

/// Checks that `mount` is a cgroup v2 hierarchy with the cpu and memory controllers.
pub fn check_cgroup_v2(mount: &Path) -> Result<(), CgroupError> {
    let unavailable = |reason: String| CgroupError::Unavailable { mount: mount.to_owned(), reason };
    let c_path = std::ffi::CString::new(mount.as_os_str().as_encoded_bytes())
        .map_err(|_| unavailable("path contains NUL".into()))?;
    // SAFETY: statfs writes into the zeroed struct we pass; the path is a valid C string.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statfs(c_path.as_ptr(), &mut st) } != 0 {
        return Err(unavailable(std::io::Error::last_os_error().to_string()));
    }
    #[allow(clippy::unnecessary_cast)]
    if st.f_type as i64 != CGROUP2_SUPER_MAGIC {
        return Err(unavailable("it is not a cgroup2 mount (cgroup v1 or hybrid layout)".into()));
    }
    let controllers = std::fs::read_to_string(mount.join("cgroup.controllers")).unwrap_or_default();
    let have: Vec<&str> = controllers.split_whitespace().collect();
    let missing: Vec<&str> = REQUIRED_CONTROLLERS.iter().copied().filter(|c| !have.contains(c)).collect();
    if !missing.is_empty() {
        return Err(unavailable(format!("controllers missing: {}", missing.join(", "))));
    }
    Ok(())
}

pub struct CgroupManager {
    driver: CgroupDriver,
    mount: PathBuf,
    systemd: Option<zbus::Connection>,
    /// kubelet's `podPidsLimit`, which its pod container manager applies to every pod cgroup it creates.
    pod_pids_limit: i64,
}

pub(super) fn io_err<'a>(path: &'a Path, op: &'static str) -> impl FnOnce(std::io::Error) -> CgroupError + 'a {
    move |source| CgroupError::Io { path: path.to_owned(), op, source }
}

impl CgroupManager {
    /// Checks the host and, for the systemd driver, connects to systemd over D-Bus.
    pub async fn new(driver: CgroupDriver, mount: &Path) -> Result<Self, CgroupError> {
        check_cgroup_v2(mount)?;
        let systemd = match driver {
            CgroupDriver::Cgroupfs => None,
            CgroupDriver::Systemd => Some(zbus::Connection::system().await.map_err(|e| CgroupError::Systemd {
                unit: "-".into(),
                message: format!("connect to the system bus: {e}"),
            })?),
        };
        Ok(Self { driver, mount: mount.to_owned(), systemd, pod_pids_limit: -1 })
    }

    /// For tests: a cgroupfs manager over any folder, with no checks.
    pub fn cgroupfs_at(mount: &Path) -> Self {
        Self { driver: CgroupDriver::Cgroupfs, mount: mount.to_owned(), systemd: None, pod_pids_limit: -1 }
    }

    /// Pod cgroups get this `pids.max` from now on (-1: unlimited).
    pub fn with_pod_pids_limit(mut self, limit: i64) -> Self {
        self.pod_pids_limit = limit;
        self
    }

    /// The config a pod's cgroup is created with.
    pub fn pod_config(&self, spec: &k8s_openapi::api::core::v1::PodSpec) -> ResourceConfig {
        crate::cm::pod::pod_cgroup_config(spec, self.pod_pids_limit)
    }

    pub fn driver(&self) -> CgroupDriver {
        self.driver
    }

    /// The value for CRI `cgroup_parent`.
    pub fn cgroup_parent(&self, name: &CgroupName) -> String {
        match self.driver {
            CgroupDriver::Cgroupfs => name.to_cgroupfs(),
            CgroupDriver::Systemd => name.to_systemd_slice(),
        }
    }

    pub fn path(&self, name: &CgroupName) -> PathBuf {
        match self.driver {
            CgroupDriver::Cgroupfs => self.mount.join(name.0.join("/")),
            CgroupDriver::Systemd => self.mount.join(name.to_systemd_path()),
        }
    }

    /// Creates the cgroup (and its parents) if needed and applies the config.
    pub async fn ensure(&self, name: &CgroupName, cfg: &ResourceConfig) -> Result<(), CgroupError> {
        match self.driver {
            CgroupDriver::Cgroupfs => cgroupfs::ensure(&self.mount, name, cfg),
            CgroupDriver::Systemd => systemd::ensure_slice(self.systemd.as_ref(), name, cfg).await,
        }
    }

    /// Kills whatever still runs in a pod cgroup and removes it. A cgroup already gone is success.
    pub async fn remove(&self, name: &CgroupName) -> Result<(), CgroupError> {
        let path = self.path(name);
        if !path.exists() {
            return Ok(());
        }
        // cgroup.kill (Linux 5.14) ends every process below, as kubelet's pod cgroup cleanup does with signals.
        let _ = std::fs::write(path.join("cgroup.kill"), "1");
        match self.driver {
            CgroupDriver::Cgroupfs => cgroupfs::remove_tree(&path),
            CgroupDriver::Systemd => systemd::stop_slice(self.systemd.as_ref(), name).await,
        }
    }

    /// Pod cgroups that exist under the QoS cgroups, by pod UID.
    pub fn pod_cgroups(&self) -> BTreeMap<String, CgroupName> {
        let mut found = BTreeMap::new();
        for qos in [QosClass::Guaranteed, QosClass::Burstable, QosClass::BestEffort] {
            let parent = CgroupName::qos(qos);
            let Ok(entries) = std::fs::read_dir(self.path(&parent)) else { continue };
            for entry in entries.flatten() {
                let file = entry.file_name();
                let file = file.to_string_lossy();
                let uid = match self.driver {
                    CgroupDriver::Cgroupfs => file.strip_prefix("pod").map(str::to_owned),
                    CgroupDriver::Systemd => file
                        .strip_prefix(&format!("{}-pod", parent.to_systemd_slice().trim_end_matches(".slice")))
                        .and_then(|r| r.strip_suffix(".slice"))
                        .map(|u| u.replace('_', "-")),
                };
                if let Some(uid) = uid.filter(|u| !u.is_empty()) {
                    found.insert(uid.clone(), CgroupName::pod(qos, &uid));
                }
            }
        }
        found
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_per_driver() {
        let n = CgroupName::pod(QosClass::Burstable, "1b4e-28ba");
        assert_eq!(n.to_cgroupfs(), "/kubepods/burstable/pod1b4e-28ba");
        assert_eq!(n.to_systemd_slice(), "kubepods-burstable-pod1b4e_28ba.slice");
        assert_eq!(
            n.to_systemd_path(),
            PathBuf::from("kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod1b4e_28ba.slice")
        );
        let g = CgroupName::pod(QosClass::Guaranteed, "u1");
        assert_eq!(g.to_cgroupfs(), "/kubepods/podu1");
        assert_eq!(g.to_systemd_slice(), "kubepods-podu1.slice");
        assert_eq!(g.pod_uid(), Some("u1"));
    }

    #[test]
    fn v2_file_values() {
        let cfg = ResourceConfig {
            cpu_shares: Some(1024),
            cpu_quota_us: Some(20_000),
            cpu_period_us: Some(100_000),
            memory_limit_bytes: Some(64 << 20),
            pids_limit: Some(20),
        };
        assert_eq!(
            cgroup_v2_files(&cfg),
            vec![
                ("cpu.weight", "39".to_string()),
                ("cpu.max", "20000 100000".into()),
                ("memory.max", "67108864".into()),
                ("pids.max", "20".into())
            ]
        );
        let be = ResourceConfig { cpu_shares: Some(2), ..Default::default() };
        assert_eq!(cgroup_v2_files(&be), vec![("cpu.weight", "1".to_string())]);
        let unlimited = ResourceConfig { pids_limit: Some(-1), ..Default::default() };
        assert_eq!(cgroup_v2_files(&unlimited), vec![("pids.max", "max".to_string())]);
    }

    #[test]
    fn systemd_quota_rounds_up_to_ten_milliseconds() {
        assert_eq!(systemd_cpu_quota_per_sec_usec(20_000, 100_000), 200_000);
        assert_eq!(systemd_cpu_quota_per_sec_usec(1_000, 100_000), 10_000);
        assert_eq!(systemd_cpu_quota_per_sec_usec(1_500, 100_000), 20_000);
        assert_eq!(systemd_cpu_quota_per_sec_usec(0, 100_000), u64::MAX);
    }

    #[tokio::test]
    async fn cgroupfs_writer_on_a_fixture_tree() {
        let root = tempfile::tempdir().unwrap();
        std::fs::write(root.path().join("cgroup.controllers"), "cpuset cpu io memory pids").unwrap();
        std::fs::write(root.path().join("cgroup.subtree_control"), "").unwrap();
        let m = CgroupManager::cgroupfs_at(root.path()).with_pod_pids_limit(20);
        let pod = CgroupName::pod(QosClass::Burstable, "abc");
        let cfg = ResourceConfig { cpu_shares: Some(102), memory_limit_bytes: Some(1 << 20), ..Default::default() };
        m.ensure(&pod, &cfg).await.unwrap();
        let dir = root.path().join("kubepods/burstable/podabc");
        assert_eq!(std::fs::read_to_string(dir.join("cpu.weight")).unwrap(), "4");
        assert_eq!(std::fs::read_to_string(dir.join("memory.max")).unwrap(), "1048576");
        assert!(!dir.join("pids.max").exists(), "no pids.max unless asked for");
        let be = CgroupName::pod(QosClass::BestEffort, "def");
        let spec = k8s_openapi::api::core::v1::PodSpec {
            containers: vec![k8s_openapi::api::core::v1::Container { name: "c".into(), ..Default::default() }],
            ..Default::default()
        };
        m.ensure(&be, &m.pod_config(&spec)).await.unwrap();
        let be_dir = root.path().join("kubepods/besteffort/poddef");
        assert_eq!(std::fs::read_to_string(be_dir.join("pids.max")).unwrap(), "20", "podPidsLimit");
        m.remove(&be).await.unwrap();
        assert!(!dir.join("cpu.max").exists(), "no quota without a period");
        assert_eq!(m.cgroup_parent(&pod), "/kubepods/burstable/podabc");
        assert_eq!(m.pod_cgroups().into_keys().collect::<Vec<_>>(), vec!["abc".to_string()]);
        m.remove(&pod).await.unwrap();
        assert!(!dir.exists());
        assert!(m.pod_cgroups().is_empty());
    }

    #[test]
    fn this_hosts_cgroups_are_reported_clearly() {
        // Whatever the host has, the answer is either Ok or an error that names the mount and the reason.
        if let Err(e) = check_cgroup_v2(Path::new("/nonexistent-cgroup-mount")) {
            assert!(e.to_string().contains("/nonexistent-cgroup-mount"), "{e}");
        } else {
            panic!("a missing mount cannot be cgroup v2");
        }
    }
}
