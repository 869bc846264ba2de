//! The sandbox config kubelet's `generatePodSandboxConfig` builds: hostname, log directory, DNS, port mappings,
//! namespaces, the pod cgroup as parent, sysctls and security settings.

use k8s_openapi::api::core::v1::Pod;

use crate::kuberuntime::dns::{self, DnsWarning, NodeDns};
use crate::kuberuntime::{pod_cgroup_name, pod_log_dir, security, KubeRuntime};
use crate::pods::{spec, sysctl};
use crate::runtime::{DnsSettings, ObservedPod, PortMappingSpec, SandboxSpec};

impl KubeRuntime {
    /// The sandbox config without its hostname and DNS, which only a new sandbox needs (see
    /// [`Self::sandbox_names_and_dns`]): what containers are created against and images pulled for.
    pub(super) fn sandbox_spec(&self, pod: &Pod, attempt: u32) -> SandboxSpec {
        let s = spec::spec(pod);
        let (name, namespace, uid) = (spec::name(pod), spec::namespace(pod), spec::uid(pod));
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
            hostname: String::new(),
            log_directory: pod_log_dir(&self.pod_logs_dir, pod).display().to_string(),
            dns: DnsSettings::default(),
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

    /// The hostname and DNS of a sandbox about to be created, with the DNS warnings kubelet posts as events then.
    /// Fails as kubelet's `generatePodSandboxConfig` does: a hostname or FQDN that cannot be used, an unreadable
    /// resolv.conf.
    pub(super) fn sandbox_names_and_dns(
        &self,
        pod: &Pod,
        sandbox: &mut SandboxSpec,
    ) -> Result<Vec<DnsWarning>, String> {
        // A pod on the host's network has no UTS namespace of its own: the runtime refuses a hostname for it.
        sandbox.hostname = if spec::host_network(pod) {
            String::new()
        } else {
            let (hostname, domain) = dns::hostname_and_domain(pod, &self.cluster_domain)?;
            dns::kernel_hostname(pod, &hostname, &domain)?
        };
        let (dns, warnings) = self.pod_dns(pod)?;
        sandbox.dns = dns;
        Ok(warnings)
    }

    /// The pod IP an httpGet hook without a host goes to: the sandbox's, or the node's for a host-network pod.
    pub(super) fn hook_pod_ip(&self, pod: &Pod, observed: &ObservedPod) -> String {
        let sandbox_ips = observed.latest_sandbox().map(|s| s.ips.clone()).unwrap_or_default();
        crate::pods::status::pod_ips(pod, sandbox_ips, &self.host_ips).into_iter().next().unwrap_or_default()
    }

    /// kubelet's `GetPodDNS`, reading the host's resolv.conf each time as kubelet does, so that a changed file
    /// reaches new sandboxes.
    fn pod_dns(&self, pod: &Pod) -> Result<(DnsSettings, Vec<DnsWarning>), String> {
        let resolv_conf_disabled = self.resolv_conf.as_os_str().is_empty();
        let host = if resolv_conf_disabled {
            DnsSettings::default()
        } else {
            let text = std::fs::read_to_string(&self.resolv_conf)
                .map_err(|e| format!("open {}: {e}", self.resolv_conf.display()))?;
            dns::parse_resolv_conf(&text)
        };
        let node = NodeDns {
            cluster_dns: self.cluster_dns.clone(),
            cluster_domain: self.cluster_domain.clone(),
            resolv_conf_disabled,
            node_ips: self.host_ips.clone(),
        };
        Ok(dns::pod_dns(pod, &node, &host))
    }
}
