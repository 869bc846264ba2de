//! fsGroup: the node changes the group and mode of what is in a volume the pod can write to. A pod plants symlinks
//! to host paths there and swaps them with its own files and directories; nothing the node does for `fsGroup` may
//! reach the host through them, whatever triggers it (pod syncs, restarts of a crash-looping container, an agent
//! restart).

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use rkubelet_tests::agent::{container_log, container_status, tail, Agent};
use rkubelet_tests::containerd::Containerd;
use rkubelet_tests::images::{ensure_images, BUSYBOX};
use rkubelet_tests::{skip_unless, skip_unless_root};
use serde_json::json;

/// The pod's swapper (`fsgroup_swap.c`), built static so that it runs in the busybox image.
const SWAPPER_SOURCE: &str = include_str!("fsgroup_swap.c");
/// Host files the pod aims at, named as the files in its own directory.
const HOST_FILES: usize = 64;
const FS_GROUP: u32 = 2000;
/// How long the node is watched before and after its restart: several pod syncs (the harness's `syncFrequency` is
/// 10 s) and crash-loop restarts.
const WATCH_BEFORE_RESTART: Duration = Duration::from_secs(25);
const WATCH_AFTER_RESTART: Duration = Duration::from_secs(15);

fn gcc_available() -> bool {
    Command::new("gcc").arg("--version").output().is_ok_and(|o| o.status.success())
}

/// The host files' owner, group and mode, as the test made them.
fn host_state(host: &Path) -> Result<Vec<(PathBuf, u32, u32, u32)>> {
    let mut paths = vec![host.to_path_buf()];
    paths.extend((0..HOST_FILES).map(|i| host.join(format!("f{i:04}"))));
    paths
        .into_iter()
        .map(|p| {
            let m = std::fs::symlink_metadata(&p).with_context(|| p.display().to_string())?;
            Ok((p, m.uid(), m.gid(), m.mode() & 0o7777))
        })
        .collect()
}

/// Fails as soon as a host file differs from `want`; returns after `period`.
fn watch(host: &Path, want: &[(PathBuf, u32, u32, u32)], period: Duration, agent: &Agent, when: &str) -> Result<()> {
    let deadline = Instant::now() + period;
    while Instant::now() < deadline {
        let now = host_state(host)?;
        if let Some((before, after)) = want.iter().zip(&now).find(|(a, b)| a != b) {
            bail!(
                "{when}: a host file was changed through the pod's volume: {before:?} is now {after:?}\nagent log:\n{}",
                tail(&agent.log(), 30)
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(())
}

/// The fsGroup symlink swap: a pod (as uid 1000, `fsGroup: 2000`) swaps, in its emptyDir, a directory of its own for
/// a symlink to a host directory holding files of the same names, and a file for a symlink to a host file, without
/// pause. The host files (root:root 0600 in a 0700 folder) must keep owner, group and mode through pod syncs, the
/// restarts of the pod's crash-looping container and an agent restart.
#[test]
#[cfg_attr(not_root, ignore = "needs root (containerd, mounts, network namespaces)")]
fn fs_group_symlink_swap_never_changes_a_host_file() -> Result<()> {
    skip_unless_root!(Ok(()));
    skip_unless!(gcc_available(), "needs gcc to build the pod's swapper", Ok(()));
    ensure_images()?;
    let work = tempfile::Builder::new().prefix("adv-fsgroup-").tempdir()?;
    let bin = work.path().join("bin");
    std::fs::create_dir(&bin)?;
    std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755))?;
    let source = work.path().join("swap.c");
    std::fs::write(&source, SWAPPER_SOURCE)?;
    let built = Command::new("gcc")
        .args(["-O2", "-static", "-Wall", "-Werror", "-o"])
        .arg(bin.join("swap"))
        .arg(&source)
        .output()?;
    ensure!(built.status.success(), "gcc: {}", String::from_utf8_lossy(&built.stderr));

    let host = work.path().join("host");
    std::fs::create_dir(&host)?;
    for i in 0..HOST_FILES {
        let f = host.join(format!("f{i:04}"));
        std::fs::write(&f, "host secret\n")?;
        std::os::unix::fs::chown(&f, Some(0), Some(0))?;
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o600))?;
    }
    std::os::unix::fs::chown(&host, Some(0), Some(0))?;
    std::fs::set_permissions(&host, std::fs::Permissions::from_mode(0o700))?;
    let want = host_state(&host)?;

    let containerd = Containerd::start("adv-fsgroup")?;
    let mut agent = Agent::start(&containerd)?;
    let manifest = json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": { "name": "swap", "namespace": "default" },
        "spec": {
            "securityContext": { "fsGroup": FS_GROUP, "runAsUser": 1000, "runAsGroup": 1000 },
            "containers": [
                {
                    "name": "swapper", "image": BUSYBOX,
                    "command": ["/attack/swap", "/scratch", host.display().to_string(), HOST_FILES.to_string()],
                    "volumeMounts": [
                        { "name": "scratch", "mountPath": "/scratch" },
                        { "name": "attack", "mountPath": "/attack", "readOnly": true },
                    ],
                },
                // Each of its restarts is one more sync of the pod.
                { "name": "crash", "image": BUSYBOX, "command": ["sh", "-c", "exit 1"],
                  "volumeMounts": [{ "name": "scratch", "mountPath": "/scratch" }] },
            ],
            "volumes": [
                { "name": "scratch", "emptyDir": {} },
                { "name": "attack", "hostPath": { "path": bin.display().to_string(), "type": "Directory" } },
            ],
        }
    });
    agent.write_manifest("swap.json", &manifest.to_string())?;
    // The attack and the watch; whatever their outcome, the pod goes before the test returns (a swapper left
    // running would race the removal of the agent's folder).
    let mut uid = String::new();
    let attacked = (|| -> Result<()> {
        let pod = agent.wait_pod("swap", Duration::from_secs(60), |p| {
            container_status(p, "swapper")["state"]["running"].is_object()
        })?;
        let deadline = Instant::now() + Duration::from_secs(20);
        while !container_log(&agent, &pod, "swapper").contains("READY") {
            ensure!(
                Instant::now() < deadline,
                "the swapper did not start swapping: {}\n{}",
                container_log(&agent, &pod, "swapper"),
                tail(&agent.log(), 30)
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        uid = pod["metadata"]["uid"].as_str().unwrap_or_default().to_owned();
        let scratch = agent.root_dir().join("pods").join(&uid).join("volumes/kubernetes.io~empty-dir/scratch");
        let scratch_meta = std::fs::metadata(&scratch)?;
        ensure!(
            scratch_meta.gid() == FS_GROUP && scratch_meta.mode() & 0o7777 == 0o2777,
            "the emptyDir is owned as kubelet owns it: group {} mode {:o}",
            scratch_meta.gid(),
            scratch_meta.mode() & 0o7777
        );

        watch(&host, &want, WATCH_BEFORE_RESTART, &agent, "while the pod runs")?;
        let restarts = |agent: &Agent| -> Result<u64> {
            let p = agent.pod("swap")?.unwrap_or_default();
            Ok(container_status(&p, "crash")["restartCount"].as_u64().unwrap_or(0))
        };
        let before_restart = restarts(&agent)?;
        agent.restart()?;
        watch(&host, &want, WATCH_AFTER_RESTART, &agent, "after the agent's restart")?;
        let after = agent.pod("swap")?.unwrap_or_default();
        ensure!(
            container_status(&after, "swapper")["state"]["running"].is_object(),
            "the swapper ran throughout: {after}"
        );
        println!(
            "crash-looping container restarts: {before_restart} before the agent's restart, {} at the end",
            restarts(&agent)?
        );
        Ok(())
    })();
    let gone = agent.remove_manifest("swap.json").and_then(|()| agent.wait_pod_gone("swap", Duration::from_secs(60)));
    attacked?;
    gone?;
    let pod_dir = agent.root_dir().join("pods").join(&uid);
    let deadline = Instant::now() + Duration::from_secs(30);
    while pod_dir.exists() {
        ensure!(Instant::now() < deadline, "{} still there:\n{}", pod_dir.display(), tail(&agent.log(), 30));
        std::thread::sleep(Duration::from_millis(200));
    }
    ensure!(host_state(&host)? == want, "the host files after the pod's teardown");
    Ok(())
}
