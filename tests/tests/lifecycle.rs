//! Host-tier tests of the container lifecycle around starts and stops: back-off of failed starts, hooks,
//! termination messages and deadlines, on a real containerd.

use std::time::{Duration, Instant};

use anyhow::{ensure, Result};
use rkubelet_tests::agent::{container_status, Agent};
use rkubelet_tests::containerd::Containerd;
use rkubelet_tests::images::{ensure_images, BUSYBOX};
use rkubelet_tests::skip_unless_root;
use serde_json::Value;

fn setup(name: &str) -> Result<(Containerd, Agent)> {
    ensure_images()?;
    let containerd = Containerd::start(name)?;
    let agent = Agent::start(&containerd)?;
    Ok((containerd, agent))
}

fn waiting_reason(p: &Value) -> String {
    container_status(p, "app")["state"]["waiting"]["reason"].as_str().unwrap_or_default().to_owned()
}

#[test]
fn failed_starts_wait_out_a_doubling_back_off_with_one_warning_per_attempt() -> Result<()> {
    skip_unless_root!(Ok(()));
    let (_containerd, agent) = setup("life-backoff")?;
    // StartContainer fails (the command does not exist): RunContainerError.
    let yaml = format!(
        r#"apiVersion: v1
kind: Pod
metadata:
  name: nostart
spec:
  containers:
  - name: app
    image: {BUSYBOX}
    command: ["/no/such/binary"]
"#
    );
    agent.write_manifest("nostart.yaml", &yaml)?;
    agent.wait_pod("nostart", Duration::from_secs(60), |p| {
        !waiting_reason(p).is_empty() && waiting_reason(p) != "ContainerCreating"
    })?;
    let attempts = |log: &str| log.matches("start container failed").count();
    let first = Instant::now();
    let before = attempts(&agent.log());
    ensure!(before >= 1, "no failed attempt logged:\n{}", agent.log());
    std::thread::sleep(Duration::from_secs(45));
    let log = agent.log();
    let made = attempts(&log) - before;
    println!("over {:?} after the first failure: {made} more attempts", first.elapsed());
    // 10 s then 20 s of back-off (each at least the worker's jittered 10-15 s): attempts near 10-15 s and 30-35 s.
    ensure!((1..=2).contains(&made), "{made} attempts in 45 s after the first, want 1-2 (10 s doubling back-off)");
    let warnings = log.lines().filter(|l| l.contains("Error: ") && l.contains("no/such/binary")).count();
    ensure!(warnings == made + before, "one warning per attempt: {warnings} warnings for {} attempts", made + before);
    Ok(())
}
