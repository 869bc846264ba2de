//! The agent as a drop-in kubelet on a kubeadm-made cluster: the kit's real `kubeadm join` v1.28.7, with `kubelet`
//! on the PATH being rkubelet, started as kubeadm's systemd drop-in starts the kubelet. The join itself (preflight's
//! `kubelet --version`, the flags kubeadm writes, TLS bootstrap) and the node it leaves (Ready, a pod running,
//! `kubectl logs` and `exec` through :10250 with kubeadm's client CA), then kube-proxy deployed as kubeadm deploys it
//! and a ClusterIP Service reached from a pod and from the host, are checked by `tests/scripts/kubeadm-join.sh`, which
//! runs it all in a private mount namespace with a private control plane and containerd.

use std::path::Path;
use std::process::Command;

use anyhow::{ensure, Context, Result};
use rkubelet_tests::agent::{free_port, rkubelet_bin};
use rkubelet_tests::containerd::default_cni_bin_dir;
use rkubelet_tests::kit::kit_dir;
use rkubelet_tests::skip_unless_root;

#[test]
#[cfg_attr(not_root, ignore = "needs root (containerd, mounts, network namespaces)")]
#[cfg_attr(
    all(not(kit_dir), not(not_root)),
    ignore = "needs the control-plane kit with kubeadm (../shared/k8s or RKUBELET_K8S_KIT)"
)]
fn kubeadm_join_makes_a_ready_node_that_serves_logs_and_exec_and_runs_kube_proxy_for_services() -> Result<()> {
    skip_unless_root!(Ok(()));
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/kubeadm-join.sh");
    let out = Command::new("bash")
        .arg(&script)
        .env("RKUBELET_BIN", rkubelet_bin()?)
        .env("RKUBELET_CNI_BIN_DIR", default_cni_bin_dir())
        .env("RKUBELET_K8S_KIT", kit_dir())
        // The node's :10250 on a port no other test's node holds.
        .env("RKUBELET_JOIN_PORT", free_port()?.to_string())
        .env_remove("K8S_HOME")
        .output()
        .with_context(|| format!("run {}", script.display()))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(
        out.status.success() && stdout.lines().last() == Some("kubeadm-join: ok"),
        "kubeadm join with rkubelet failed ({}):\n{stderr}\n{stdout}",
        out.status
    );
    for step in [
        "kubelet --version: Kubernetes v1.28.7-rkubelet.",
        "kubeadm join finished",
        "Ready",
        "kubectl exec: exec 42",
        "kube-proxy DaemonSet pod",
        "from pod client, http://",
        "from the host, http://",
    ] {
        ensure!(stderr.contains(step), "missing step {step:?} in:\n{stderr}");
    }
    Ok(())
}
