//! What this machine and this run can test, as cfgs the test attributes read: a test that cannot run here is
//! `#[ignore]`d with its reason, so that the runner counts it as skipped instead of passing it without a check.
//!
//! * `not_root`: the build runs without root (containerd, mounts and network namespaces need it). The build runs as
//!   the user who runs the tests (`tests/run.sh`, `cargo nextest run`); a change of `USER`, `HOME` or `SUDO_UID`
//!   (`su`, `sudo`) reruns this script. The tests' own runtime check stays for a binary built as root and run as
//!   another user.
//! * `cgroup_v2`: `/sys/fs/cgroup` is a cgroup v2 hierarchy with the cpu and memory controllers.
//! * `real_api`: `RKUBELET_E2E_KUBECONFIG` names a real API server (tests that need the double's fault injection are
//!   skipped).
//! * `kit`: `tests/run.sh` started the kit's control plane (`RKUBELET_E2E_KUBECONFIG`, `RKUBELET_K8S_KIT`,
//!   `K8S_HOME` set); tests that need its node proxy or kubectl are skipped otherwise.
//! * `kit_dir`: the kit is on this machine (`RKUBELET_K8S_KIT`, else `../shared/k8s` beside the checkout).

use std::path::{Path, PathBuf};

const CFGS: [&str; 5] = ["not_root", "cgroup_v2", "real_api", "kit", "kit_dir"];

fn main() {
    for cfg in CFGS {
        println!("cargo::rustc-check-cfg=cfg({cfg})");
    }
    println!("cargo::rerun-if-changed=build.rs");
    for var in ["USER", "HOME", "SUDO_UID", "RKUBELET_E2E_KUBECONFIG", "RKUBELET_K8S_KIT", "K8S_HOME"] {
        println!("cargo::rerun-if-env-changed={var}");
    }
    if effective_uid() != Some(0) {
        println!("cargo::rustc-cfg=not_root");
    }
    if cgroup_v2() {
        println!("cargo::rustc-cfg=cgroup_v2");
    }
    let set = |var: &str| std::env::var_os(var).is_some_and(|v| !v.is_empty());
    if set("RKUBELET_E2E_KUBECONFIG") {
        println!("cargo::rustc-cfg=real_api");
        if set("RKUBELET_K8S_KIT") && set("K8S_HOME") {
            println!("cargo::rustc-cfg=kit");
        }
    }
    let kit_dir = match std::env::var_os("RKUBELET_K8S_KIT") {
        Some(p) if !p.is_empty() => PathBuf::from(p),
        _ => Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/k8s"),
    };
    if kit_dir.join("up.sh").exists() {
        println!("cargo::rustc-cfg=kit_dir");
    }
}

/// The effective uid from `/proc/self/status` (`Uid: real effective saved fs`).
fn effective_uid() -> Option<u32> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find_map(|l| l.strip_prefix("Uid:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// As `rkubelet::cm::cgroups::check_cgroup_v2`: the unified hierarchy with cpu and memory enabled.
fn cgroup_v2() -> bool {
    std::fs::read_to_string("/sys/fs/cgroup/cgroup.controllers")
        .is_ok_and(|c| c.split_whitespace().any(|x| x == "cpu") && c.split_whitespace().any(|x| x == "memory"))
}
