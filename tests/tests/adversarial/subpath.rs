//! subPath (CVE-2017-1002101, CVE-2021-25741): the pod owns every symlink and directory in its volume and can change
//! them at any time. A symlink planted out of the volume must create nothing on the host and fail the container as
//! kubelet does (`CreateContainerConfigError`); a directory swapped for a symlink between the node's check and the
//! runtime's mount must never give the container a host directory; the bind mounts under `volume-subpaths` go with
//! the pod, also when it was removed while the agent was down.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use k8s_openapi::api::core::v1::Pod;
use rkubelet::kubetypes::env::NodeAllocatable;
use rkubelet::kubetypes::events::EventRecorder;
use rkubelet::volumes::VolumeManager;
use rkubelet_tests::agent::{container_status, tail, Agent};
use rkubelet_tests::containerd::Containerd;
use rkubelet_tests::images::{ensure_images, BUSYBOX};
use rkubelet_tests::skip_unless_root;
use serde_json::{json, Value};

const NAMESPACE: &str = "default";

/// Mount points at or under `dir` on the host.
fn mounts_under(dir: &Path) -> Vec<String> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let dir = dir.display().to_string();
    info.lines().filter_map(|l| l.split(' ').nth(4)).filter(|p| p.starts_with(&dir)).map(str::to_owned).collect()
}

/// Every line the pod's containers wrote, from all their CRI log files (one per start).
fn all_output(logs_dir: &Path, pod: &Value) -> String {
    let name = pod["metadata"]["name"].as_str().unwrap_or_default();
    let uid = pod["metadata"]["uid"].as_str().unwrap_or_default();
    let dir = logs_dir.join(format!("{NAMESPACE}_{name}_{uid}"));
    let mut out = String::new();
    for c in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        for f in std::fs::read_dir(c.path()).into_iter().flatten().flatten() {
            out.push_str(&std::fs::read_to_string(f.path()).unwrap_or_default());
        }
    }
    out
}

fn uid_of(pod: &Value) -> String {
    pod["metadata"]["uid"].as_str().unwrap_or_default().to_owned()
}

/// A host directory the pod aims its symlinks at, holding a marker file.
fn host_target() -> Result<tempfile::TempDir> {
    let dir = tempfile::Builder::new().prefix("rkubelet-subpath-host-").tempdir()?;
    std::fs::write(dir.path().join("marker"), "host")?;
    Ok(dir)
}

#[test]
#[cfg_attr(not_root, ignore = "needs root (containerd, mounts, network namespaces)")]
fn a_symlink_planted_out_of_the_volume_creates_nothing_on_the_host() -> Result<()> {
    skip_unless_root!(Ok(()));
    ensure_images()?;
    let host = host_target()?;
    let containerd = Containerd::start("adv-subpath-plant")?;
    let agent = Agent::start(&containerd)?;
    let manifest = json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": { "name": "plant", "namespace": NAMESPACE },
        "spec": {
            "initContainers": [{ "name": "plant", "image": BUSYBOX,
                "command": ["ln", "-s", host.path(), "/scratch/esc"],
                "volumeMounts": [{ "name": "scratch", "mountPath": "/scratch" }] }],
            "containers": [{ "name": "app", "image": BUSYBOX, "command": ["sleep", "3600"],
                "volumeMounts": [{ "name": "scratch", "mountPath": "/probe", "subPath": "esc/probe" }] }],
            "volumes": [{ "name": "scratch", "emptyDir": {} }],
        }
    });
    agent.write_manifest("plant.json", &manifest.to_string())?;
    let pod = agent.wait_pod("plant", Duration::from_secs(90), |p| {
        container_status(p, "app")["state"]["waiting"]["reason"] == "CreateContainerConfigError"
    })?;
    let entries: Vec<_> = std::fs::read_dir(host.path())?.flatten().map(|e| e.file_name()).collect();
    ensure!(entries == ["marker"], "the host directory was written through the planted symlink: {entries:?}");
    // pkg/kubelet/kubelet_pods.go makeMounts: the container is not told where the symlink led.
    let waiting = &container_status(&pod, "app")["state"]["waiting"];
    ensure!(
        waiting["message"] == "failed to create subPath directory for volumeMount \"scratch\" of container \"app\"",
        "{waiting}"
    );
    let pod_dir = agent.root_dir().join("pods").join(uid_of(&pod));
    ensure!(mounts_under(&pod_dir.join("volume-subpaths")).is_empty(), "a failed subPath leaves no mount");
    Ok(())
}

/// Swaps the names `a` and `b` atomically (`renameat2(RENAME_EXCHANGE)`).
fn exchange(a: &CString, b: &CString) -> std::io::Result<()> {
    // SAFETY: valid C strings.
    let rc = unsafe { libc::renameat2(libc::AT_FDCWD, a.as_ptr(), libc::AT_FDCWD, b.as_ptr(), libc::RENAME_EXCHANGE) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

fn c_path(p: &Path) -> Result<CString> {
    Ok(CString::new(p.as_os_str().as_bytes())?)
}

/// What the runtime does with a CRI mount's host path: a bind mount, following symlinks.
fn runtime_bind(source: &Path, target: &Path) -> Result<()> {
    let (s, t) = (c_path(source)?, c_path(target)?);
    // SAFETY: valid C strings; a bind mount takes no type or data.
    let rc = unsafe { libc::mount(s.as_ptr(), t.as_ptr(), std::ptr::null(), libc::MS_BIND, std::ptr::null()) };
    if rc != 0 {
        bail!("bind {} on {}: {}", source.display(), target.display(), std::io::Error::last_os_error());
    }
    Ok(())
}

fn runtime_unbind(target: &Path) -> Result<()> {
    let t = c_path(target)?;
    // SAFETY: a valid C string.
    if unsafe { libc::umount2(t.as_ptr(), 0) } != 0 {
        bail!("unmount {}: {}", target.display(), std::io::Error::last_os_error());
    }
    Ok(())
}

/// The swap race at the speed of the node's own code: 300 subPath mounts prepared by the volume manager (kubelet's
/// `makeMounts`) while a thread swaps the subPath's directory with a symlink to a host directory, each mounted
/// afterwards as the runtime mounts it. A pod-level run (below) is bounded by crash back-off to a few dozen starts
/// a minute; here every attempt takes milliseconds.
#[test]
#[cfg_attr(not_root, ignore = "needs root (containerd, mounts, network namespaces)")]
fn a_directory_swapped_for_a_symlink_never_mounts_the_host_directory_in_300_attempts() -> Result<()> {
    skip_unless_root!(Ok(()));
    const ATTEMPTS: usize = 300;
    let host = host_target()?;
    let root = tempfile::Builder::new().prefix("rkubelet-subpath-race-").tempdir()?;
    let vm = VolumeManager::new(root.path(), NodeAllocatable::default(), EventRecorder::default());
    let pod: Pod = serde_json::from_value(json!({
        "metadata": { "name": "race", "namespace": NAMESPACE, "uid": "race-uid" },
        "spec": {
            "containers": [{ "name": "app", "image": BUSYBOX,
                "volumeMounts": [{ "name": "scratch", "mountPath": "/m", "subPath": "d" }] }],
            "volumes": [{ "name": "scratch", "emptyDir": {} }],
        }
    }))?;
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    ensure!(rt.block_on(vm.mount_pod(&pod)).ready(), "emptyDir set up");
    let vol = root.path().join("pods/race-uid/volumes/kubernetes.io~empty-dir/scratch");
    std::fs::create_dir(vol.join("d"))?;
    std::os::unix::fs::symlink(host.path(), vol.join("other"))?;
    let stop = Arc::new(AtomicBool::new(false));
    let flipper = {
        let (d, other, stop) = (c_path(&vol.join("d"))?, c_path(&vol.join("other"))?, stop.clone());
        std::thread::spawn(move || -> std::io::Result<u64> {
            let mut flips = 0u64;
            while !stop.load(Ordering::Relaxed) {
                exchange(&d, &other)?;
                flips += 1;
                // Uneven pauses, so that the swap falls anywhere between the check and the mount.
                std::thread::sleep(Duration::from_micros(flips % 7 * 50));
            }
            Ok(flips)
        })
    };
    let target = root.path().join("container-rootfs-m");
    std::fs::create_dir(&target)?;
    let mut container = pod.spec.as_ref().map(|s| s.containers[0].clone()).context("container")?;
    let (mut mounted, mut refused, mut saw_host) = (0, 0, 0);
    let result = (|| -> Result<()> {
        for i in 0..ATTEMPTS {
            // A new container name each time: a fresh bind target, as for a new container.
            container.name = format!("app{i}");
            match rt.block_on(vm.container_mounts(&pod, &container, &[])) {
                Ok(mounts) => {
                    // The runtime mounts later (CreateContainer, then runc's init): up to a millisecond here,
                    // far less than on a node.
                    std::thread::sleep(Duration::from_micros(i as u64 % 10 * 100));
                    runtime_bind(Path::new(&mounts[0].host_path), &target)?;
                    let seen = target.join("marker").exists();
                    runtime_unbind(&target)?;
                    mounted += 1;
                    if seen {
                        saw_host += 1;
                    }
                }
                Err(_) => refused += 1,
            }
        }
        Ok(())
    })();
    stop.store(true, Ordering::Relaxed);
    let flips = flipper.join().map_err(|_| anyhow::anyhow!("flipper panicked"))??;
    vm.unmount_pod("race-uid");
    result?;
    eprintln!("{ATTEMPTS} attempts: {mounted} mounted, {refused} refused, {flips} swaps, host seen {saw_host} times");
    ensure!(saw_host == 0, "the host directory was mounted {saw_host} times out of {mounted} mounts");
    ensure!(mounted >= 20 && refused >= 1, "the race was not exercised: {mounted} mounted, {refused} refused");
    ensure!(mounts_under(root.path()).is_empty(), "mounts left: {:?}", mounts_under(root.path()));
    Ok(())
}

/// The same race with real containers: a container swaps `d` between a directory (the same one throughout: a
/// deleted one could not be mounted at all) and a symlink to a host directory at random intervals of up to 20 ms,
/// far shorter than a container start, while ten crash-looping containers mount `subPath: d` and report whether
/// they see the host's marker.
#[test]
#[cfg_attr(not_root, ignore = "needs root (containerd, mounts, network namespaces)")]
fn a_sidecar_swapping_a_subpath_for_a_symlink_never_shows_a_host_file() -> Result<()> {
    skip_unless_root!(Ok(()));
    ensure_images()?;
    const CHECKERS: usize = 10;
    // Crash back-off (10 s, 20 s, 40 s ...) bounds the starts; the refused attempts count too, each one a walk
    // of the subPath while it was being swapped.
    const MIN_ATTEMPTS: usize = 40;
    const MIN_STARTS: usize = 5;
    let host = host_target()?;
    let containerd = Containerd::start("adv-subpath-race")?;
    let agent = Agent::start(&containerd)?;
    let flip = format!(
        "mkdir /s/d; ln -s {} /s/link; while :; do usleep $((RANDOM % 20000)); mv -T /s/d /s/dir; \
         mv -T /s/link /s/d; usleep $((RANDOM % 20000)); mv -T /s/d /s/link; mv -T /s/dir /s/d; done",
        host.path().display()
    );
    let mut containers = vec![json!({ "name": "flipper", "image": BUSYBOX, "command": ["sh", "-c", flip],
        "volumeMounts": [{ "name": "scratch", "mountPath": "/s" }] })];
    for i in 0..CHECKERS {
        containers.push(json!({ "name": format!("check{i}"), "image": BUSYBOX,
            "command": ["sh", "-c", "if [ -e /m/marker ]; then echo SAW-HOST-FILE; fi; echo checked; exit 1"],
            "volumeMounts": [{ "name": "scratch", "mountPath": "/m", "subPath": "d" }] }));
    }
    let manifest = json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": { "name": "race", "namespace": NAMESPACE },
        "spec": { "restartPolicy": "Always", "containers": containers,
            "volumes": [{ "name": "scratch", "emptyDir": {} }] }
    });
    agent.write_manifest("race.json", &manifest.to_string())?;
    let deadline = Instant::now() + Duration::from_secs(150);
    let (pod, starts, refused) = loop {
        let pod = agent.wait_pod("race", Duration::from_secs(60), |_| true)?;
        let out = all_output(&agent.pod_logs_dir(), &pod);
        ensure!(!out.contains("SAW-HOST-FILE"), "a container saw the host's file:\n{out}");
        let starts = out.matches("checked").count();
        let refused = agent.log().matches("Error: failed to prepare subPath").count();
        if (starts >= MIN_STARTS && starts + refused >= MIN_ATTEMPTS) || Instant::now() > deadline {
            break (pod, starts, refused);
        }
        std::thread::sleep(Duration::from_secs(1));
    };
    eprintln!("{starts} checker starts with the subPath mounted, {refused} refused; none saw the host file");
    ensure!(
        starts >= MIN_STARTS && starts + refused >= MIN_ATTEMPTS,
        "only {starts} starts and {refused} refused attempts:\n{}",
        tail(&agent.log(), 40)
    );
    let entries: Vec<_> = std::fs::read_dir(host.path())?.flatten().map(|e| e.file_name()).collect();
    ensure!(entries == ["marker"], "the host directory was written: {entries:?}");
    agent.remove_manifest("race.json")?;
    agent.wait_pod_gone("race", Duration::from_secs(90))?;
    let pod_dir = agent.root_dir().join("pods").join(uid_of(&pod));
    wait_gone(&agent, &pod_dir)?;
    Ok(())
}

/// Waits until the pod's folder is gone, and checks no mount is left under it.
fn wait_gone(agent: &Agent, pod_dir: &Path) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    while pod_dir.exists() {
        ensure!(Instant::now() < deadline, "{} still there:\n{}", pod_dir.display(), tail(&agent.log(), 30));
        std::thread::sleep(Duration::from_millis(200));
    }
    ensure!(mounts_under(pod_dir).is_empty(), "mounts left: {:?}", mounts_under(pod_dir));
    Ok(())
}

fn subpath_pod(name: &str) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": { "name": name, "namespace": NAMESPACE },
        "spec": {
            "initContainers": [{ "name": "init", "image": BUSYBOX, "command": ["sh", "-c", "echo x > /s/file"],
                "volumeMounts": [{ "name": "scratch", "mountPath": "/s" }] }],
            "containers": [{ "name": "app", "image": BUSYBOX, "command": ["sleep", "3600"],
                "volumeMounts": [
                    { "name": "scratch", "mountPath": "/a", "subPath": "a/b" },
                    { "name": "scratch", "mountPath": "/f", "subPath": "file" },
                    { "name": "mem", "mountPath": "/m", "subPath": "m" },
                ] }],
            "volumes": [{ "name": "scratch", "emptyDir": {} }, { "name": "mem", "emptyDir": { "medium": "Memory" } }],
        }
    })
}

/// The subPath mounts of a running pod, as the runtime got them: bind mounts under `volume-subpaths`.
fn wait_sub_path_mounts(agent: &Agent, name: &str) -> Result<PathBuf> {
    let pod = agent.wait_pod(name, Duration::from_secs(90), |p| p["status"]["phase"] == "Running")?;
    let pod_dir = agent.root_dir().join("pods").join(uid_of(&pod));
    let subpaths = pod_dir.join("volume-subpaths");
    let mut found = mounts_under(&subpaths);
    found.sort();
    let want: Vec<String> = ["mem/app/2", "scratch/app/0", "scratch/app/1"]
        .iter()
        .map(|p| subpaths.join(p).display().to_string())
        .collect();
    ensure!(found == want, "subPath bind mounts {found:?}, want {want:?}");
    Ok(pod_dir)
}

#[test]
#[cfg_attr(not_root, ignore = "needs root (containerd, mounts, network namespaces)")]
fn subpath_bind_mounts_go_with_the_pod_also_when_it_went_while_the_agent_was_down() -> Result<()> {
    skip_unless_root!(Ok(()));
    ensure_images()?;
    let containerd = Containerd::start("adv-subpath-clean")?;
    let mut agent = Agent::start(&containerd)?;
    agent.write_manifest("sp1.json", &subpath_pod("sp1").to_string())?;
    let pod_dir = wait_sub_path_mounts(&agent, "sp1")?;
    agent.remove_manifest("sp1.json")?;
    agent.wait_pod_gone("sp1", Duration::from_secs(90))?;
    wait_gone(&agent, &pod_dir)?;

    agent.write_manifest("sp2.json", &subpath_pod("sp2").to_string())?;
    let pod_dir = wait_sub_path_mounts(&agent, "sp2")?;
    agent.stop()?;
    agent.remove_manifest("sp2.json")?;
    agent.restart()?;
    agent.wait_pod_gone("sp2", Duration::from_secs(90))?;
    wait_gone(&agent, &pod_dir)?;
    Ok(())
}
