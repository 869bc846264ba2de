//! Pod networking end to end: rkubelet writes the CNI config for its pod CIDR, containerd runs our CNI plugins, the
//! pod gets an IP from that CIDR and the host reaches it.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use rkubelet_tests::agent::{container_status, phase, Agent};
use rkubelet_tests::containerd::{built_cni_plugins_dir, Containerd};
use rkubelet_tests::images::{ensure_images, BUSYBOX};
use rkubelet_tests::{skip_unless, skip_unless_root};

fn http_get_pod(ip: &str, port: u16) -> Result<String> {
    let addr = format!("{ip}:{port}").parse()?;
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(s, "GET / HTTP/1.0\r\n\r\n")?;
    let mut body = String::new();
    s.read_to_string(&mut body)?;
    Ok(body)
}

#[test]
#[cfg_attr(not_root, ignore = "needs root (containerd, mounts, network namespaces)")]
fn pod_gets_an_ip_from_our_plugins_on_the_agents_cni_config_and_the_host_reaches_it() -> Result<()> {
    skip_unless_root!(Ok(()));
    let ours = built_cni_plugins_dir();
    skip_unless!(ours.is_some(), "our CNI plugins are not built (cargo build -p cni-plugins)", Ok(()));
    ensure_images()?;
    let containerd =
        Containerd::builder("net-agent").cni_bin_dir(ours.context("plugins")?).without_cni_config().start()?;
    let agent = Agent::start_with(
        &containerd,
        &format!(
            "podCIDR: {}\ncniConfDir: {}\ncniBridgeName: {}\n",
            containerd.subnet(),
            containerd.cni_conf_dir().display(),
            containerd.bridge()
        ),
    )?;
    let conflist = std::fs::read_to_string(containerd.cni_conf_dir().join("10-rkubelet.conflist"))?;
    assert!(conflist.contains(&containerd.subnet()), "{conflist}");

    agent.write_manifest(
        "web.yaml",
        &format!(
            r#"apiVersion: v1
kind: Pod
metadata:
  name: web
spec:
  terminationGracePeriodSeconds: 2
  containers:
  - name: app
    image: {BUSYBOX}
    command: ["sh", "-c", "mkdir -p /www && echo served-by-$(hostname) > /www/index.html && exec httpd -f -p 8080 -h /www"]
    ports:
    - containerPort: 8080
"#
        ),
    )?;
    let pod = agent.wait_pod("web", Duration::from_secs(60), |p| {
        phase(p) == "Running" && container_status(p, "app")["ready"] == true
    })?;
    let ip = pod["status"]["podIP"].as_str().context("no pod IP")?.to_owned();
    let prefix = containerd.subnet().rsplit_once('.').map(|(p, _)| format!("{p}.")).unwrap_or_default();
    assert!(ip.starts_with(&prefix), "pod IP {ip} not in {}", containerd.subnet());

    // httpd may need a moment after the container starts.
    let deadline = Instant::now() + Duration::from_secs(15);
    let body = loop {
        match http_get_pod(&ip, 8080) {
            Ok(b) if b.contains("served-by-") => break b,
            other => ensure!(Instant::now() < deadline, "host cannot reach pod {ip}:8080: {other:?}"),
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(body.contains(&format!("served-by-web-{}", agent.node_name())), "{body}");

    // Removing the pod runs CNI DEL: the address is released from host-local's store.
    agent.remove_manifest("web.yaml")?;
    agent.wait_pod_gone("web", Duration::from_secs(30))?;
    let store = std::path::Path::new("/var/lib/cni/networks/rkubelet").join(&ip);
    let deadline = Instant::now() + Duration::from_secs(10);
    while store.exists() {
        ensure!(Instant::now() < deadline, "{} still allocated after the pod was removed", store.display());
        std::thread::sleep(Duration::from_millis(200));
    }
    Ok(())
}
