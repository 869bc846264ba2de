//! The sandbox config kubelet's `generatePodSandboxConfig` builds: hostname, log directory, DNS, port mappings,
//! namespaces, the pod cgroup as parent, sysctls.

use k8s_openapi::api::core::v1::Pod;

use super::{pod_cgroup_name, pod_log_dir, security, KubeRuntime};
use crate::pods::{spec, sysctl};
use crate::runtime::{DnsSettings, PortMappingSpec, SandboxSpec};

/// kubelet's limits on DNS search paths in a pod's resolv.conf (`validation.MaxDNSSearchPaths`).
const MAX_DNS_SEARCH_PATHS: usize = 32;
/// kubelet's `ndots` for ClusterFirst pods.
const CLUSTER_FIRST_NDOTS: &str = "ndots:5";

impl KubeRuntime {
    pub(super) fn sandbox_spec(&self, pod: &Pod, attempt: u32) -> SandboxSpec {
        let s = spec::spec(pod);
        let (name, namespace, uid) = (spec::name(pod), spec::namespace(pod), spec::uid(pod));
        // A pod on the host's network has no UTS namespace of its own: the runtime refuses a hostname for it.
        let hostname = if spec::host_network(pod) {
            String::new()
        } else {
            // kubelet truncates the pod name to a valid hostname (63 bytes, no trailing '-' or '.').
            let h = s.hostname.clone().unwrap_or_else(|| name.to_owned());
            h.chars().take(63).collect::<String>().trim_end_matches(['-', '.']).to_owned()
        };
        let port_mappings = s
            .containers
            .iter()
            .flat_map(|c| c.ports.iter().flatten())
            .filter(|p| p.host_port.unwrap_or(0) > 0)
            .map(|p| PortMappingSpec {
                protocol: p.protocol.clone().unwrap_or_else(|| "TCP".into()),
                container_port: p.container_port,
                host_port: p.host_port.unwrap_or(0),
                host_ip: p.host_ip.clone().unwrap_or_default(),
            })
            .collect();
        SandboxSpec {
            name: name.to_owned(),
            namespace: namespace.to_owned(),
            uid: uid.to_owned(),
            attempt,
            hostname,
            log_directory: pod_log_dir(&self.pod_logs_dir, pod).display().to_string(),
            dns: self.dns_for(pod),
            port_mappings,
            labels: pod.metadata.labels.clone().unwrap_or_default(),
            annotations: pod.metadata.annotations.clone().unwrap_or_default(),
            host_network: spec::host_network(pod),
            host_pid: s.host_pid.unwrap_or(false),
            host_ipc: s.host_ipc.unwrap_or(false),
            share_process_namespace: s.share_process_namespace.unwrap_or(false),
            cgroup_parent: self.cgroups.as_ref().map(|c| c.cgroup_parent(&pod_cgroup_name(pod))).unwrap_or_default(),
            sysctls: sysctl::pod_sysctls(pod),
            security: security::sandbox_security(pod),
        }
    }

    /// kubelet's DNS configurer: `Default` uses the host's resolv.conf; `ClusterFirst` uses clusterDNS when set and
    /// falls back to the host's otherwise (as kubelet does when it has no cluster DNS).
    fn dns_for(&self, pod: &Pod) -> DnsSettings {
        let s = spec::spec(pod);
        let policy = s.dns_policy.as_deref().unwrap_or("ClusterFirst");
        let cluster_first = match policy {
            "ClusterFirstWithHostNet" => true,
            "ClusterFirst" => !spec::host_network(pod),
            _ => false,
        };
        let mut dns = if policy == "None" {
            DnsSettings::default()
        } else if cluster_first && !self.cluster_dns.is_empty() {
            let d = &self.cluster_domain;
            let ns = spec::namespace(pod);
            let mut searches = vec![format!("{ns}.svc.{d}"), format!("svc.{d}"), d.clone()];
            searches.extend(self.host_dns.searches.iter().cloned());
            DnsSettings { servers: self.cluster_dns.clone(), searches, options: vec![CLUSTER_FIRST_NDOTS.into()] }
        } else {
            self.host_dns.clone()
        };
        if let Some(cfg) = &s.dns_config {
            dns.servers.extend(cfg.nameservers.iter().flatten().cloned());
            dns.searches.extend(cfg.searches.iter().flatten().cloned());
            for o in cfg.options.iter().flatten() {
                let opt = match &o.value {
                    Some(v) => format!("{}:{v}", o.name.clone().unwrap_or_default()),
                    None => o.name.clone().unwrap_or_default(),
                };
                dns.options.push(opt);
            }
        }
        dns.searches.dedup();
        dns.searches.truncate(MAX_DNS_SEARCH_PATHS);
        dns
    }
}
