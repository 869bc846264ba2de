//! Host-tier tests: a pod's hostname, resolv.conf and kubelet-managed /etc/hosts on a real containerd, read from
//! inside the container.

use std::time::Duration;

use anyhow::{Context, Result};
use rkubelet_tests::agent::{phase, Agent};
use rkubelet_tests::containerd::Containerd;
use rkubelet_tests::images::{ensure_images, BUSYBOX};
use rkubelet_tests::skip_unless_root;

const START: Duration = Duration::from_secs(60);

fn setup(name: &str, extra_config: &str) -> Result<(Containerd, Agent)> {
    ensure_images()?;
    let containerd = Containerd::start(name)?;
    let agent = Agent::start_with(&containerd, extra_config)?;
    Ok((containerd, agent))
}

/// A run-once busybox pod with `pod_fields` (YAML indented for `spec:`) printing what `script` prints.
fn pod_yaml(name: &str, pod_fields: &str, script: &str) -> String {
    let fields: String = pod_fields.lines().map(|l| format!("  {l}\n")).collect();
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\n  namespace: team\nspec:\n  restartPolicy: Never\n  \
         terminationGracePeriodSeconds: 1\n{fields}  containers:\n  - name: app\n    image: {BUSYBOX}\n    \
         command: [\"sh\", \"-c\", {script:?}]\n"
    )
}

/// Runs the pod to completion and returns what its container printed.
fn run_to_completion(agent: &Agent, name: &str, yaml: &str) -> Result<(String, serde_json::Value)> {
    agent.write_manifest(&format!("{name}.yaml"), yaml)?;
    let pod = agent.wait_pod(name, START, |p| phase(p) == "Succeeded" || phase(p) == "Failed")?;
    let uid = pod["metadata"]["uid"].as_str().context("uid")?;
    let full = format!("{name}-{}", agent.node_name());
    let log = agent.pod_logs_dir().join(format!("team_{full}_{uid}")).join("app").join("0.log");
    let text = std::fs::read_to_string(&log).with_context(|| format!("read {}", log.display()))?;
    let output = text.lines().filter_map(|l| l.splitn(4, ' ').nth(3)).collect::<Vec<_>>().join("\n");
    anyhow::ensure!(phase(&pod) == "Succeeded", "pod {name} failed: {pod}\noutput:\n{output}");
    Ok((output, pod))
}

fn resolv_lines(output: &str) -> Vec<&str> {
    output
        .lines()
        .filter(|l| l.starts_with("nameserver") || l.starts_with("search") || l.starts_with("options"))
        .collect()
}

#[test]
#[cfg_attr(not_root, ignore = "needs root (containerd, mounts, network namespaces)")]
fn cluster_first_none_and_default_policies_shape_resolv_conf_as_kubelet_does() -> Result<()> {
    skip_unless_root!(Ok(()));
    let dir = tempfile::tempdir()?;
    let resolv = dir.path().join("resolv.conf");
    std::fs::write(&resolv, "nameserver 192.0.2.53\nsearch corp.example\noptions edns0\n")?;
    let config = format!("clusterDNS: [10.96.0.10]\nclusterDomain: cluster.test\nresolvConf: {}\n", resolv.display());
    let (_containerd, agent) = setup("dns-policy", &config)?;

    let (output, _) =
        run_to_completion(&agent, "cluster-first", &pod_yaml("cluster-first", "", "cat /etc/resolv.conf"))?;
    assert_eq!(
        resolv_lines(&output),
        vec![
            "search team.svc.cluster.test svc.cluster.test cluster.test corp.example",
            "nameserver 10.96.0.10",
            "options ndots:5",
        ],
        "{output}"
    );

    let none = "dnsPolicy: None\ndnsConfig:\n  nameservers: [1.1.1.1]\n  searches: [my.example]\n  options:\n  \
                - name: ndots\n    value: \"2\"\n  - name: edns0";
    let (output, _) = run_to_completion(&agent, "none", &pod_yaml("none", none, "cat /etc/resolv.conf"))?;
    assert_eq!(
        resolv_lines(&output),
        vec!["search my.example", "nameserver 1.1.1.1", "options ndots:2 edns0"],
        "{output}"
    );

    let (output, _) =
        run_to_completion(&agent, "default", &pod_yaml("default", "dnsPolicy: Default", "cat /etc/resolv.conf"))?;
    assert_eq!(
        resolv_lines(&output),
        vec!["search corp.example", "nameserver 192.0.2.53", "options edns0"],
        "{output}"
    );
    Ok(())
}

#[test]
#[cfg_attr(not_root, ignore = "needs root (containerd, mounts, network namespaces)")]
fn hostname_subdomain_and_fqdn_reach_the_container() -> Result<()> {
    skip_unless_root!(Ok(()));
    let (containerd, agent) = setup("dns-names", "clusterDomain: cluster.test\n")?;
    let named = "hostname: db-0\nsubdomain: db";
    let (output, _) = run_to_completion(&agent, "named", &pod_yaml("named", named, "hostname"))?;
    assert_eq!(output.trim(), "db-0");
    let fqdn = "hostname: db-0\nsubdomain: db\nsetHostnameAsFQDN: true";
    let (output, _) = run_to_completion(&agent, "fqdn", &pod_yaml("fqdn", fqdn, "hostname"))?;
    assert_eq!(output.trim(), "db-0.db.team.svc.cluster.test");

    // An FQDN over 64 bytes cannot be the kernel's hostname: no sandbox is created and the pod stays pending.
    let long = format!("hostname: {}\nsubdomain: db\nsetHostnameAsFQDN: true", "h".repeat(40));
    let before = rkubelet_tests::agent::runtime_objects(&containerd.endpoint())?.sandboxes;
    agent.write_manifest("long.yaml", &pod_yaml("long", &long, "hostname"))?;
    let message =
        "FQDN hhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhh.db.team.svc.cluster.test is too long (64 characters is the \
                   max, 65 characters requested)";
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !agent.log().contains(message) {
        anyhow::ensure!(std::time::Instant::now() < deadline, "no FQDN error in the log:\n{}", agent.log());
        std::thread::sleep(Duration::from_millis(200));
    }
    let pod = agent.pod("long")?.context("pod")?;
    assert_eq!(phase(&pod), "Pending", "{pod}");
    let sandboxes = rkubelet_tests::agent::runtime_objects(&containerd.endpoint())?.sandboxes;
    assert_eq!(sandboxes, before, "no sandbox for the pod");
    Ok(())
}

#[test]
#[cfg_attr(not_root, ignore = "needs root (containerd, mounts, network namespaces)")]
fn etc_hosts_is_kubelet_managed_with_the_pod_ip_fqdn_and_host_aliases() -> Result<()> {
    skip_unless_root!(Ok(()));
    let (_containerd, agent) = setup("dns-hosts", "clusterDomain: cluster.test\n")?;
    let fields =
        "hostname: db-0\nsubdomain: db\nhostAliases:\n- ip: 123.45.67.89\n  hostnames: [foo.remote, bar.remote]";
    agent.write_manifest("hosts.yaml", &pod_yaml("hosts", fields, "cat /etc/hosts; echo END; exec sleep 600"))?;
    let pod = agent.wait_pod("hosts", START, |p| p["status"]["podIP"].is_string() && phase(p) == "Running")?;
    let (ip, uid) = (pod["status"]["podIP"].as_str().unwrap_or(""), pod["metadata"]["uid"].as_str().unwrap_or(""));
    let log = agent.pod_logs_dir().join(format!("team_hosts-{}_{uid}", agent.node_name())).join("app").join("0.log");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let output = loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().filter_map(|l| l.splitn(4, ' ').nth(3)).collect();
        if lines.last() == Some(&"END") {
            break lines[..lines.len() - 1].join("\n");
        }
        anyhow::ensure!(std::time::Instant::now() < deadline, "no END in {}: {text}", log.display());
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(
        output,
        format!(
            "# Kubernetes-managed hosts file.\n127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n\
             fe00::0\tip6-localnet\nfe00::0\tip6-mcastprefix\nfe00::1\tip6-allnodes\nfe00::2\tip6-allrouters\n\
             {ip}\tdb-0.db.team.svc.cluster.test\tdb-0\n\n# Entries added by HostAliases.\n\
             123.45.67.89\tfoo.remote\tbar.remote"
        )
    );
    assert!(agent.root_dir().join("pods").join(uid).join("etc-hosts").is_file(), "written under the pod dir");
    agent.remove_manifest("hosts.yaml")?;

    // A pod on the host's network sees the node's file under its own header, and its aliases.
    let fields = "hostNetwork: true\nhostAliases:\n- ip: 10.1.2.3\n  hostnames: [alias.remote]";
    let (output, _) = run_to_completion(&agent, "hostnet", &pod_yaml("hostnet", fields, "cat /etc/hosts"))?;
    let node_hosts = std::fs::read_to_string("/etc/hosts")?;
    assert_eq!(
        format!("{output}\n"),
        format!(
            "# Kubernetes-managed hosts file (host network).\n{node_hosts}\n# Entries added by HostAliases.\n\
             10.1.2.3\talias.remote\n"
        )
    );
    Ok(())
}
