//! Probe cost benchmark: the CPU the agent (and the runtime, for exec probes) spends per 100 probes a second, for
//! exec probes (CRI ExecSync, `true`) and for httpGet probes (busybox httpd in the pod).
//!
//! ```text
//! cargo build --release -p rkubelet
//! RKUBELET_BIN=$PWD/target/release/rkubelet cargo bench -p rkubelet-tests --bench probes
//! ```
//!
//! Each kind runs in a pod of `RKUBELET_BENCH_PROBE_CONTAINERS` containers (default 20), each with a readiness probe
//! every second, so the pod does that many probes a second. Once every container is ready, the CPU time (user +
//! system, from /proc) of the agent, and of containerd with this instance's shims (whose reaped `runc exec`
//! children are counted in their `cutime`/`cstime`), is measured over `RKUBELET_BENCH_PROBE_WINDOW_S` seconds
//! (default 20) and scaled to 100 probes a second. Output lines start with `bench probes`; figures, not pass or fail.

use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use rkubelet_tests::agent::Agent;
use rkubelet_tests::containerd::{is_root, Containerd};
use rkubelet_tests::images::{ensure_images, BUSYBOX};
use serde_json::Value;

const PREFIX: &str = "bench probes";

fn env_num(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// Clock ticks of CPU (utime, stime, cutime, cstime) of a process.
fn cpu_ticks(pid: u32, with_children: bool) -> u64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { return 0 };
    // Fields after the command name (which may hold spaces) closing with ')'.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<u64> = rest.split_whitespace().map(|x| x.parse().unwrap_or(0)).collect();
    // rest[0] is the state (field 3); utime is field 14 → index 11.
    let own = f.get(11).copied().unwrap_or(0) + f.get(12).copied().unwrap_or(0);
    let children = if with_children { f.get(13).copied().unwrap_or(0) + f.get(14).copied().unwrap_or(0) } else { 0 };
    own + children
}

/// The shims serving this containerd (their command line names its socket).
fn shim_pids(socket: &Path) -> Vec<u32> {
    let socket = socket.display().to_string();
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()))
        .filter(|pid| {
            let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let cmd = String::from_utf8_lossy(&cmd);
            cmd.contains("containerd-shim") && cmd.contains(&socket)
        })
        .collect()
}

fn pod_yaml(name: &str, containers: u64, probe: &str, server: bool) -> String {
    let mut yaml = format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\nspec:\n  terminationGracePeriodSeconds: 1\n  containers:\n"
    );
    for i in 0..containers {
        let command = if server && i == 0 {
            r#"["sh", "-c", "mkdir -p /www; echo ok > /www/index.html; exec httpd -f -p 8080 -h /www"]"#
        } else {
            r#"["sleep", "3600"]"#
        };
        yaml.push_str(&format!(
            "  - name: c{i}\n    image: {BUSYBOX}\n    command: {command}\n    readinessProbe:\n      {probe}\n      periodSeconds: 1\n"
        ));
    }
    yaml
}

fn all_ready(p: &Value) -> bool {
    p["status"]["containerStatuses"].as_array().is_some_and(|s| !s.is_empty() && s.iter().all(|c| c["ready"] == true))
}

fn measure(agent: &Agent, containerd: &Containerd, kind: &str, yaml: &str, rate: u64, window: Duration) -> Result<()> {
    agent.write_manifest("bench.yaml", yaml)?;
    agent.wait_pod("bench", Duration::from_secs(180), all_ready)?;
    // Let start-up settle.
    std::thread::sleep(Duration::from_secs(3));
    let agent_pid = agent.pid().context("agent pid")?;
    let shims = shim_pids(containerd.socket_path());
    let runtime =
        |pids: &[u32]| cpu_ticks(containerd.pid(), true) + pids.iter().map(|p| cpu_ticks(*p, true)).sum::<u64>();
    let (a0, r0, t0) = (cpu_ticks(agent_pid, false), runtime(&shims), Instant::now());
    std::thread::sleep(window);
    let (a1, r1, secs) = (cpu_ticks(agent_pid, false), runtime(&shims), t0.elapsed().as_secs_f64());
    let hz = 100.0; // USER_HZ on Linux
    let per100 = |ticks: u64| (ticks as f64 / hz) / secs * 100.0 / rate as f64 * 100.0;
    println!(
        "{PREFIX}: {kind}: {rate} probes/s over {secs:.1} s: agent {:.2} % of a core per 100 probes/s; runtime \
         (containerd + shims) {:.2} % of a core per 100 probes/s",
        per100(a1 - a0),
        per100(r1 - r0)
    );
    agent.remove_manifest("bench.yaml")?;
    agent.wait_pod_gone("bench", Duration::from_secs(60))?;
    Ok(())
}

fn run() -> Result<()> {
    ensure_images()?;
    let containers = env_num("RKUBELET_BENCH_PROBE_CONTAINERS", 20);
    let window = Duration::from_secs(env_num("RKUBELET_BENCH_PROBE_WINDOW_S", 20));
    let containerd = Containerd::start("bench-probes")?;
    let agent = Agent::start(&containerd)?;
    ensure!(containers > 0, "RKUBELET_BENCH_PROBE_CONTAINERS must be positive");
    let exec = pod_yaml("bench", containers, r#"exec: {command: ["true"]}"#, false);
    measure(&agent, &containerd, "exec", &exec, containers, window)?;
    let http = pod_yaml("bench", containers, "httpGet: {path: /index.html, port: 8080}", true);
    measure(&agent, &containerd, "httpGet", &http, containers, window)?;
    Ok(())
}

fn main() -> ExitCode {
    if !std::env::args().any(|a| a == "--bench") {
        println!("{PREFIX}: not run (no --bench argument); use `cargo bench -p rkubelet-tests --bench probes`");
        return ExitCode::SUCCESS;
    }
    if !is_root() {
        println!("SKIPPED: {PREFIX}: needs root (containerd, mounts, network namespaces)");
        return ExitCode::SUCCESS;
    }
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{PREFIX}: {e:#}");
            ExitCode::FAILURE
        }
    }
}
