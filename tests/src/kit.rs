//! The control-plane kit (`../shared/k8s`) as the benches drive it: where it is and how its scripts are run.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{ensure, Context, Result};

/// `RKUBELET_K8S_KIT`, else the kit beside the checkout.
pub fn kit_dir() -> PathBuf {
    match std::env::var_os("RKUBELET_K8S_KIT") {
        Some(p) if !p.is_empty() => PathBuf::from(p),
        _ => Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/k8s"),
    }
}

/// A numeric setting from the environment, or `default` when unset.
pub fn env_number(name: &str, default: usize) -> Result<usize> {
    match std::env::var(name) {
        Ok(v) => v.trim().parse().with_context(|| format!("{name}={v:?}: want a number")),
        Err(_) => Ok(default),
    }
}

/// Runs a kit script and returns the last line it printed (the scripts print their result last).
pub fn kit_script(kit: &Path, script: &str, args: &[&str]) -> Result<String> {
    let out =
        Command::new("bash").arg(kit.join(script)).args(args).output().with_context(|| format!("run {script}"))?;
    ensure!(
        out.status.success(),
        "{script} {args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    Ok(stdout.lines().last().unwrap_or_default().trim().to_owned())
}

/// The entry of a bench that needs root and the control plane kit: runs `run` with the kit's folder under
/// `cargo bench` (which passes `--bench`), and says why it did not run otherwise.
pub fn kit_bench_main(
    prefix: &str,
    name: &str,
    run: impl FnOnce(&Path) -> anyhow::Result<()>,
) -> std::process::ExitCode {
    if !std::env::args().any(|a| a == "--bench") {
        println!("{prefix}: not run (no --bench argument); use `cargo bench -p rkubelet-tests --bench {name}`");
        return std::process::ExitCode::SUCCESS;
    }
    if !crate::containerd::is_root() {
        println!("SKIPPED: {prefix}: needs root (containerd, the control plane kit)");
        return std::process::ExitCode::SUCCESS;
    }
    let kit = kit_dir();
    if !kit.join("up.sh").exists() {
        println!("SKIPPED: {prefix}: no control plane kit at {} (set RKUBELET_K8S_KIT)", kit.display());
        return std::process::ExitCode::SUCCESS;
    }
    match run(&kit) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{prefix}: harness failure: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// The resident memory of process `pid`, in MB (`VmRSS`).
pub fn rss_mb(pid: u32) -> Result<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kb: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .with_context(|| format!("no VmRSS in /proc/{pid}/status"))?;
    Ok(kb / 1024.0)
}

/// The pod the API-tier benches start by the dozen: one busybox container that ends at once on SIGTERM, bound to
/// `node`, labelled `bench=<label>` so a bench deletes its own.
/// The bench pod's one container: busybox that leaves on SIGTERM within a second (after its current `sleep 1`).
pub const BENCH_POD_COMMAND: [&str; 3] = ["sh", "-c", "trap 'exit 0' TERM; while true; do sleep 1; done"];
/// The bench pod's `terminationGracePeriodSeconds`.
pub const BENCH_POD_GRACE_SECONDS: i64 = 5;

pub fn bench_pod(
    name: &str,
    namespace: &str,
    node: &str,
    label: &str,
    sa_token: bool,
) -> Result<k8s_openapi::api::core::v1::Pod> {
    Ok(serde_json::from_value(serde_json::json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": { "name": name, "namespace": namespace, "labels": { "bench": label } },
        "spec": {
            "nodeName": node,
            "automountServiceAccountToken": sa_token,
            "terminationGracePeriodSeconds": BENCH_POD_GRACE_SECONDS,
            "tolerations": [{ "operator": "Exists" }],
            "containers": [{
                "name": "app", "image": crate::images::BUSYBOX,
                "command": BENCH_POD_COMMAND,
            }],
        }
    }))?)
}

/// A client of the kit's API server as its admin, from the kubeconfig `up.sh` wrote.
pub async fn admin_client(kubeconfig: &Path) -> Result<kube::Client> {
    let kc = kube::config::Kubeconfig::read_from(kubeconfig)?;
    let cfg = kube::Config::from_custom_kubeconfig(kc, &Default::default()).await?;
    Ok(kube::Client::try_from(cfg)?)
}
