//! Pressure stall information (kernel `Documentation/accounting/psi.rst`) for the node, each pod and container, in
//! the shape kubelet 1.33 adds to the Summary API. Read from cgroup v2 only (the pod and container cgroups'
//! `cpu.pressure`, `memory.pressure`, `io.pressure`; the node's from the root cgroup, or `/proc/pressure` where
//! the root has none): on cgroup v1 kubelet has no PSI, and the figures are left out rather than zero.

use std::path::{Path, PathBuf};

use crate::stats::summary::{CgroupPsi, PsiData, PsiStats};

/// Where the unified hierarchy is mounted.
pub const CGROUP_MOUNT: &str = "/sys/fs/cgroup";
const PROC_PRESSURE: &str = "/proc/pressure";
/// The three resources, with their cgroup file and `/proc/pressure` names.
const CPU: &str = "cpu";
const MEMORY: &str = "memory";
const IO: &str = "io";

/// One line's figures: `avg10=0.12 avg60=0.00 avg300=0.00 total=12345`. Keys in any order and unknown keys are
/// accepted; a missing or malformed figure, or an average that is not a finite non-negative number, rejects the
/// line.
fn parse_line(fields: &str) -> Option<PsiData> {
    let (mut avg10, mut avg60, mut avg300, mut total) = (None, None, None, None);
    for kv in fields.split_ascii_whitespace() {
        let (k, v) = kv.split_once('=')?;
        let avg = || v.parse::<f64>().ok().filter(|a| a.is_finite() && *a >= 0.0);
        match k {
            "avg10" => avg10 = Some(avg()?),
            "avg60" => avg60 = Some(avg()?),
            "avg300" => avg300 = Some(avg()?),
            "total" => total = Some(v.parse::<u64>().ok()?),
            _ => {}
        }
    }
    Some(PsiData { total: total?, avg10: avg10?, avg60: avg60?, avg300: avg300? })
}

/// Parses a pressure file. `some` is required; `full` is zero where the kernel writes none (the CPU of kernels
/// before 5.13), as kubelet reports it. `None` for anything else.
pub fn parse_pressure(text: &str) -> Option<PsiStats> {
    let mut some = None;
    let mut full = None;
    for line in text.lines() {
        let line = line.trim();
        if let Some(rest) = line.strip_prefix("some ") {
            some = Some(parse_line(rest)?);
        } else if let Some(rest) = line.strip_prefix("full ") {
            full = Some(parse_line(rest)?);
        }
    }
    Some(PsiStats { some: some?, full: full.unwrap_or_default() })
}

fn read_pressure(path: &Path) -> Option<PsiStats> {
    parse_pressure(&std::fs::read_to_string(path).ok()?)
}

/// The pressures of the cgroup folder `dir`.
pub fn cgroup_psi(dir: &Path) -> CgroupPsi {
    let file = |r: &str| read_pressure(&dir.join(format!("{r}.pressure")));
    CgroupPsi { cpu: file(CPU), memory: file(MEMORY), io: file(IO) }
}

/// Where PSI is read from: the unified hierarchy's mount, when the host has one there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PsiSource {
    mount: PathBuf,
    proc_pressure: PathBuf,
}

impl PsiSource {
    /// The host's: `Some` on cgroup v2 (the unified hierarchy at `/sys/fs/cgroup`), `None` on v1 or hybrid hosts.
    pub fn host() -> Option<PsiSource> {
        Self::at(Path::new(CGROUP_MOUNT), Path::new(PROC_PRESSURE))
    }

    /// For tests: a hierarchy and a `/proc/pressure` anywhere.
    pub fn at(mount: &Path, proc_pressure: &Path) -> Option<PsiSource> {
        mount
            .join("cgroup.controllers")
            .exists()
            .then(|| PsiSource { mount: mount.to_owned(), proc_pressure: proc_pressure.to_owned() })
    }

    /// The node's: the root cgroup's files, else `/proc/pressure` (the same figures, system-wide).
    pub fn node(&self) -> CgroupPsi {
        let root = cgroup_psi(&self.mount);
        let proc = |r: &str| read_pressure(&self.proc_pressure.join(r));
        CgroupPsi {
            cpu: root.cpu.or_else(|| proc(CPU)),
            memory: root.memory.or_else(|| proc(MEMORY)),
            io: root.io.or_else(|| proc(IO)),
        }
    }

    /// The pod's cgroup, under either driver's naming (`kubepods/burstable/pod<uid>`,
    /// `kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod<uid_>.slice`, and the Guaranteed ones
    /// directly under kubepods). `None` for a pod without one (`cgroupsPerQOS: false`) or a UID that is not a
    /// plain name.
    pub fn pod_cgroup(&self, uid: &str) -> Option<PathBuf> {
        if uid.is_empty() || !uid.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') {
            return None;
        }
        let systemd_uid = uid.replace('-', "_");
        let candidates = [
            format!("kubepods/pod{uid}"),
            format!("kubepods/burstable/pod{uid}"),
            format!("kubepods/besteffort/pod{uid}"),
            format!("kubepods.slice/kubepods-pod{systemd_uid}.slice"),
            format!("kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{systemd_uid}.slice"),
            format!("kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{systemd_uid}.slice"),
        ];
        candidates.iter().map(|c| self.mount.join(c)).find(|p| p.is_dir())
    }
}

/// A container's cgroup inside its pod's: the child folder named after the container ID (cgroupfs: `<id>`,
/// systemd: `cri-containerd-<id>.scope`).
pub fn container_cgroup(pod_cgroup: &Path, container_id: &str) -> Option<PathBuf> {
    // A short or odd ID could match a sibling's folder: CRI IDs are long hex strings.
    if container_id.len() < 12 || !container_id.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    std::fs::read_dir(pod_cgroup)
        .ok()?
        .flatten()
        .find(|e| e.file_type().is_ok_and(|t| t.is_dir()) && e.file_name().to_string_lossy().contains(container_id))
        .map(|e| e.path())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const CPU_TEXT: &str =
        "some avg10=1.50 avg60=0.25 avg300=0.00 total=123456\nfull avg10=0.00 avg60=0.00 avg300=0.00 total=42\n";

    #[test]
    fn pressure_files_parse_as_the_kernel_writes_them() {
        let p = parse_pressure(CPU_TEXT).unwrap();
        assert_eq!(p.some, PsiData { total: 123456, avg10: 1.5, avg60: 0.25, avg300: 0.0 });
        assert_eq!(p.full.total, 42);
        // Kernels before 5.13 write no `full` line for CPU.
        let only_some = parse_pressure("some avg10=0.00 avg60=0.00 avg300=0.00 total=7\n").unwrap();
        assert_eq!((only_some.some.total, only_some.full), (7, PsiData::default()));
        for bad in [
            "",
            "full avg10=0.00 avg60=0.00 avg300=0.00 total=1\n",
            "some avg10=x avg60=0.00 avg300=0.00 total=1\n",
            "some avg10=NaN avg60=0.00 avg300=0.00 total=1\n",
            "some avg10=inf avg60=0.00 avg300=0.00 total=1\n",
            "some avg10=-1 avg60=0.00 avg300=0.00 total=1\n",
            "some avg10=0.00 avg60=0.00 avg300=0.00\n",
            "some avg10=0.00 avg60=0.00 avg300=0.00 total=-1\n",
            "some garbage\n",
        ] {
            assert_eq!(parse_pressure(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn node_pod_and_container_cgroups_are_found_under_either_driver() {
        let tmp = tempfile::tempdir().unwrap();
        let mount = tmp.path().join("cg");
        let proc = tmp.path().join("proc");
        std::fs::create_dir_all(&mount).unwrap();
        std::fs::create_dir_all(&proc).unwrap();
        assert_eq!(PsiSource::at(&mount, &proc), None, "no unified hierarchy: no PSI");
        std::fs::write(mount.join("cgroup.controllers"), "cpu memory io\n").unwrap();
        let src = PsiSource::at(&mount, &proc).unwrap();
        // The root has memory.pressure; cpu comes from /proc/pressure; io nowhere.
        std::fs::write(mount.join("memory.pressure"), CPU_TEXT).unwrap();
        std::fs::write(proc.join("cpu"), "some avg10=0.00 avg60=0.00 avg300=0.00 total=9\n").unwrap();
        let node = src.node();
        assert_eq!(
            (node.memory.map(|p| p.some.total), node.cpu.map(|p| p.some.total), node.io),
            (Some(123456), Some(9), None)
        );

        let uid = "1b4e-28ba";
        let id = "0123456789abcdef0123456789abcdef";
        let systemd = mount.join("kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod1b4e_28ba.slice");
        std::fs::create_dir_all(systemd.join(format!("cri-containerd-{id}.scope"))).unwrap();
        assert_eq!(src.pod_cgroup(uid), Some(systemd.clone()));
        assert_eq!(container_cgroup(&systemd, id), Some(systemd.join(format!("cri-containerd-{id}.scope"))));
        let cgroupfs = mount.join("kubepods/besteffort/podabc");
        std::fs::create_dir_all(cgroupfs.join(id)).unwrap();
        std::fs::write(cgroupfs.join(id).join("io.pressure"), CPU_TEXT).unwrap();
        assert_eq!(src.pod_cgroup("abc"), Some(cgroupfs.clone()));
        let c = cgroup_psi(&container_cgroup(&cgroupfs, id).unwrap());
        assert_eq!((c.cpu, c.memory, c.io.map(|p| p.full.total)), (None, None, Some(42)));
        assert_eq!(src.pod_cgroup("../kubepods"), None);
        assert_eq!(src.pod_cgroup("missing"), None);
        assert_eq!(container_cgroup(&cgroupfs, "0123"), None);
    }

    proptest! {
        #[test]
        fn any_pressure_text_parses_or_is_refused_without_panicking(text in ".{0,300}") {
            if let Some(p) = parse_pressure(&text) {
                prop_assert!(p.some.avg10.is_finite() && p.full.avg300.is_finite());
            }
        }

        #[test]
        fn well_formed_lines_round_trip(total in any::<u64>(), a in 0u32..10_000, b in 0u32..10_000) {
            let text = format!("some avg10={}.{:02} avg60=0.00 avg300=0.00 total={total}\nfull avg10=0.00 avg60={}.00 avg300=0.00 total=1\n", a / 100, a % 100, b);
            let p = parse_pressure(&text).unwrap();
            prop_assert_eq!(p.some.total, total);
            prop_assert!((p.some.avg10 - f64::from(a) / 100.0).abs() < 1e-9);
            prop_assert_eq!(p.full.avg60, f64::from(b));
        }
    }
}
