//! A pod's names and resolver settings, as kubelet's DNS configurer (`pkg/kubelet/network/dns/dns.go`) and
//! `GeneratePodHostNameAndDomain` compute them. Pure: the pod, the node's settings and the host's resolv.conf
//! text in; names, resolver settings and the warnings kubelet posts as events out.

use k8s_openapi::api::core::v1::Pod;

use crate::kubetypes::spec;
use crate::runtime::DnsSettings;

/// `validation.MaxDNSNameservers`.
pub const MAX_DNS_NAMESERVERS: usize = 3;
/// `validation.MaxDNSSearchPathsExpanded`.
pub const MAX_DNS_SEARCH_PATHS: usize = 32;
/// `validation.MaxDNSSearchListCharsExpanded`.
pub const MAX_DNS_SEARCH_LIST_CHARS: usize = 2048;
/// A search path longer than a DNS subdomain makes some resolvers (glibc 2.28) abort, so kubelet drops it.
const DNS1123_SUBDOMAIN_MAX_LENGTH: usize = 253;
/// kubelet's `defaultDNSOptions` for cluster-first pods.
const CLUSTER_FIRST_OPTIONS: &[&str] = &["ndots:5"];
/// The kernel's nodename holds 64 bytes with its terminating NUL; kubelet caps a hostname at 63.
const HOSTNAME_MAX_LEN: usize = 63;
/// A FQDN used as the hostname (`setHostnameAsFQDN`) must fit the 64-byte nodename field.
const FQDN_MAX_LEN: usize = 64;

/// The event reasons kubelet posts while forming a pod's DNS settings.
pub const EVENT_DNS_CONFIG_FORMING: &str = "DNSConfigForming";
pub const EVENT_MISSING_CLUSTER_DNS: &str = "MissingClusterDNS";

/// What the node contributes to pod DNS: `clusterDNS`, `clusterDomain`, and whether `resolvConf` is set.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeDns {
    pub cluster_dns: Vec<String>,
    pub cluster_domain: String,
    /// `resolvConf: ""`: pods of the Default policy get the node's loopback resolver instead of the host's.
    pub resolv_conf_disabled: bool,
    /// The node's IPs, for the loopback resolver's address family.
    pub node_ips: Vec<String>,
}

/// A warning event for the pod: (reason, message).
pub type DnsWarning = (&'static str, String);

fn is_dns1123_label(s: &str) -> bool {
    let b = s.as_bytes();
    let edge = |c: u8| c.is_ascii_lowercase() || c.is_ascii_digit();
    !b.is_empty() && b.len() <= 63 && edge(b[0]) && edge(b[b.len() - 1]) && b.iter().all(|&c| edge(c) || c == b'-')
}

/// kubelet's `GeneratePodHostNameAndDomain`: the pod's hostname (its `hostname`, else its name, cut to 63
/// characters) and its domain (`<subdomain>.<namespace>.svc.<clusterDomain>` when `subdomain` is set).
pub fn hostname_and_domain(pod: &Pod, cluster_domain: &str) -> Result<(String, String), String> {
    let s = spec::spec(pod);
    let mut hostname = spec::name(pod).to_owned();
    if let Some(h) = s.hostname.as_deref().filter(|h| !h.is_empty()) {
        if !is_dns1123_label(h) {
            return Err(format!("pod Hostname {h:?} is not a valid DNS label"));
        }
        hostname = h.to_owned();
    }
    if hostname.len() > HOSTNAME_MAX_LEN {
        let truncated = hostname[..HOSTNAME_MAX_LEN].trim_end_matches(['-', '.']);
        if truncated.is_empty() {
            return Err(format!("hostname for pod {:?} was invalid: {hostname:?}", spec::name(pod)));
        }
        tracing::warn!(hostname, truncated, "hostname for pod was too long, truncated it");
        hostname = truncated.to_owned();
    }
    let domain = match s.subdomain.as_deref().filter(|d| !d.is_empty()) {
        Some(sub) if !is_dns1123_label(sub) => return Err(format!("pod Subdomain {sub:?} is not a valid DNS label")),
        Some(sub) => format!("{sub}.{}.svc.{cluster_domain}", spec::namespace(pod)),
        None => String::new(),
    };
    Ok((hostname, domain))
}

/// kubelet's `GetNodenameForKernel`: the hostname the sandbox gets, the FQDN when `setHostnameAsFQDN` is set
/// and the pod has a domain.
pub fn kernel_hostname(pod: &Pod, hostname: &str, domain: &str) -> Result<String, String> {
    if domain.is_empty() || spec::spec(pod).set_hostname_as_fqdn != Some(true) {
        return Ok(hostname.to_owned());
    }
    let fqdn = format!("{hostname}.{domain}");
    if fqdn.len() > FQDN_MAX_LEN {
        return Err(format!(
            "failed to construct FQDN from pod hostname and cluster domain, FQDN {fqdn} is too long ({FQDN_MAX_LEN} \
             characters is the max, {} characters requested)",
            fqdn.len()
        ));
    }
    Ok(fqdn)
}

/// kubelet's `parseResolvConf`: nameservers, the last search line (without trailing dots, `.` dropped) and the
/// options, later options of the same name replacing earlier ones.
pub fn parse_resolv_conf(text: &str) -> DnsSettings {
    let mut dns = DnsSettings::default();
    for line in text.lines() {
        if line.starts_with(['#', ';']) {
            continue;
        }
        let mut fields = line.split_whitespace();
        match fields.next() {
            Some("nameserver") => dns.servers.extend(fields.next().map(str::to_owned)),
            Some("search") => {
                dns.searches = fields.filter(|s| *s != ".").map(|s| s.trim_end_matches('.').to_owned()).collect()
            }
            Some("options") => dns.options = merge_options(&dns.options, fields.map(option_pair)),
            _ => {}
        }
    }
    dns
}

fn option_pair(option: &str) -> (String, Option<String>) {
    match option.split_once(':') {
        Some((name, value)) => (name.to_owned(), Some(value.to_owned())),
        None => (option.to_owned(), None),
    }
}

/// kubelet's `mergeDNSOptions`: later options of the same name replace earlier ones. Kubelet's order is a Go
/// map's; here it is first appearance, so that the file is stable.
fn merge_options(existing: &[String], more: impl Iterator<Item = (String, Option<String>)>) -> Vec<String> {
    let mut merged: Vec<(String, Option<String>)> = existing.iter().map(|o| option_pair(o)).collect();
    for (name, value) in more {
        match merged.iter_mut().find(|(n, _)| *n == name) {
            Some(slot) => slot.1 = value,
            None => merged.push((name, value)),
        }
    }
    merged
        .into_iter()
        .map(|(name, value)| match value.filter(|v| !v.is_empty()) {
            Some(v) => format!("{name}:{v}"),
            None => name,
        })
        .collect()
}

fn omit_duplicates(list: Vec<String>) -> Vec<String> {
    let mut seen = std::collections::BTreeSet::new();
    list.into_iter().filter(|s| seen.insert(s.clone())).collect()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PodDnsType {
    Cluster,
    Host,
    None,
}

/// kubelet's `getPodDNSType`: ClusterFirst on the host's network means Default.
fn pod_dns_type(pod: &Pod) -> PodDnsType {
    match spec::spec(pod).dns_policy.as_deref().unwrap_or("ClusterFirst") {
        "None" => PodDnsType::None,
        "ClusterFirstWithHostNet" => PodDnsType::Cluster,
        "ClusterFirst" if !spec::host_network(pod) => PodDnsType::Cluster,
        "ClusterFirst" | "Default" => PodDnsType::Host,
        // The API server rejects any other policy; kubelet falls back to ClusterFirst.
        _ => PodDnsType::Cluster,
    }
}

/// kubelet's `GetPodDNS`: the policy's base settings (the cluster's DNS with the cluster's search domains, the
/// host's resolv.conf, or nothing), the pod's `dnsConfig` merged in, cut to the resolver's limits.
pub fn pod_dns(pod: &Pod, node: &NodeDns, host: &DnsSettings) -> (DnsSettings, Vec<DnsWarning>) {
    let mut warnings = Vec::new();
    let mut dns = host.clone();
    let mut kind = pod_dns_type(pod);
    if kind == PodDnsType::Cluster && node.cluster_dns.is_empty() {
        let message = "kubelet does not have ClusterDNS IP configured and cannot create Pod using \"ClusterFirst\" \
                       policy. Falling back to \"Default\" policy.";
        warnings.push((EVENT_MISSING_CLUSTER_DNS, format!("pod: {:?}. {message}", spec::format_pod(pod))));
        kind = PodDnsType::Host;
    }
    match kind {
        PodDnsType::None => dns = DnsSettings::default(),
        PodDnsType::Cluster => {
            dns.servers = node.cluster_dns.clone();
            if !node.cluster_domain.is_empty() {
                let d = &node.cluster_domain;
                let mut searches = vec![format!("{}.svc.{d}", spec::namespace(pod)), format!("svc.{d}"), d.clone()];
                searches.append(&mut dns.searches);
                dns.searches = omit_duplicates(searches);
            }
            dns.options = CLUSTER_FIRST_OPTIONS.iter().map(|o| (*o).to_owned()).collect();
        }
        PodDnsType::Host if node.resolv_conf_disabled => {
            // Without a resolv.conf, lookups go to the node's own resolver, of the node's address family.
            let loopback = |ip: &String| if ip.contains(':') { "::1" } else { "127.0.0.1" }.to_owned();
            dns.servers.extend(node.node_ips.iter().map(loopback));
            if dns.servers.is_empty() {
                dns.servers.push("127.0.0.1".into());
            }
            dns.searches = vec![".".into()];
        }
        PodDnsType::Host => {}
    }
    if let Some(cfg) = &spec::spec(pod).dns_config {
        dns.servers.extend(cfg.nameservers.iter().flatten().cloned());
        dns.servers = omit_duplicates(std::mem::take(&mut dns.servers));
        dns.searches.extend(cfg.searches.iter().flatten().cloned());
        dns.searches = omit_duplicates(std::mem::take(&mut dns.searches));
        let options = cfg.options.iter().flatten().map(|o| (o.name.clone().unwrap_or_default(), o.value.clone()));
        dns.options = merge_options(&dns.options, options);
    }
    fit_limits(&mut dns, &mut warnings);
    (dns, warnings)
}

/// kubelet's `formDNSConfigFitsLimits`: at most 3 nameservers; at most 32 search paths, none longer than a DNS
/// subdomain, 2048 characters in all.
fn fit_limits(dns: &mut DnsSettings, warnings: &mut Vec<DnsWarning>) {
    if dns.servers.len() > MAX_DNS_NAMESERVERS {
        dns.servers.truncate(MAX_DNS_NAMESERVERS);
        warnings.push((
            EVENT_DNS_CONFIG_FORMING,
            format!(
                "Nameserver limits were exceeded, some nameservers have been omitted, the applied nameserver line \
                 is: {}",
                dns.servers.join(" ")
            ),
        ));
    }
    let mut exceeded = false;
    if dns.searches.len() > MAX_DNS_SEARCH_PATHS {
        dns.searches.truncate(MAX_DNS_SEARCH_PATHS);
        exceeded = true;
    }
    let before = dns.searches.len();
    dns.searches.retain(|s| s.len() <= DNS1123_SUBDOMAIN_MAX_LENGTH);
    exceeded |= dns.searches.len() != before;
    while dns.searches.join(" ").len() > MAX_DNS_SEARCH_LIST_CHARS {
        dns.searches.pop();
        exceeded = true;
    }
    if exceeded {
        warnings.push((
            EVENT_DNS_CONFIG_FORMING,
            format!(
                "Search Line limits were exceeded, some search paths have been omitted, the applied search line is: {}",
                dns.searches.join(" ")
            ),
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{PodDNSConfig, PodDNSConfigOption, PodSpec};

    fn pod(f: impl FnOnce(&mut PodSpec)) -> Pod {
        let mut spec = PodSpec::default();
        f(&mut spec);
        let mut p = Pod { spec: Some(spec), ..Default::default() };
        p.metadata.name = Some("web".into());
        p.metadata.namespace = Some("team".into());
        p.metadata.uid = Some("u1".into());
        p
    }

    fn node() -> NodeDns {
        NodeDns {
            cluster_dns: vec!["10.96.0.10".into()],
            cluster_domain: "cluster.local".into(),
            resolv_conf_disabled: false,
            node_ips: vec!["192.0.2.10".into()],
        }
    }

    fn host() -> DnsSettings {
        parse_resolv_conf("nameserver 192.0.2.53\nsearch corp.example. .\noptions ndots:2 edns0\n")
    }

    #[test]
    fn resolv_conf_is_parsed_as_kubelet_does() {
        let d = parse_resolv_conf(
            "# c\nnameserver 192.0.2.53\n; c\nnameserver 2001:db8::53\nsearch a.example b.example\nsearch c.example. .\n\
             options ndots:2 edns0\noptions ndots:3\n",
        );
        assert_eq!(d.servers, vec!["192.0.2.53", "2001:db8::53"]);
        assert_eq!(d.searches, vec!["c.example"], "the last search line wins, trailing dots dropped");
        assert_eq!(d.options, vec!["ndots:3", "edns0"]);
    }

    #[test]
    fn cluster_first_uses_the_cluster_dns_and_search_domains_then_the_hosts() {
        let (d, warnings) = pod_dns(&pod(|_| {}), &node(), &host());
        assert_eq!(d.servers, vec!["10.96.0.10"]);
        assert_eq!(d.searches, vec!["team.svc.cluster.local", "svc.cluster.local", "cluster.local", "corp.example"]);
        assert_eq!(d.options, vec!["ndots:5"]);
        assert!(warnings.is_empty());
        // On the host's network ClusterFirst means Default, unless ClusterFirstWithHostNet.
        let (d, _) = pod_dns(&pod(|s| s.host_network = Some(true)), &node(), &host());
        assert_eq!(d, host());
        let (d, _) = pod_dns(
            &pod(|s| {
                s.host_network = Some(true);
                s.dns_policy = Some("ClusterFirstWithHostNet".into())
            }),
            &node(),
            &host(),
        );
        assert_eq!(d.servers, vec!["10.96.0.10"]);
    }

    #[test]
    fn cluster_first_without_cluster_dns_falls_back_to_default_with_a_warning() {
        let mut n = node();
        n.cluster_dns.clear();
        let (d, warnings) = pod_dns(&pod(|_| {}), &n, &host());
        assert_eq!(d, host());
        assert_eq!(warnings.len(), 1);
        assert_eq!(warnings[0].0, EVENT_MISSING_CLUSTER_DNS);
        assert!(
            warnings[0].1.starts_with("pod: \"web_team(u1)\". kubelet does not have ClusterDNS IP"),
            "{warnings:?}"
        );
    }

    #[test]
    fn default_policy_uses_the_host_or_the_loopback_resolver_without_resolv_conf() {
        let p = pod(|s| s.dns_policy = Some("Default".into()));
        assert_eq!(pod_dns(&p, &node(), &host()).0, host());
        let mut n = node();
        n.resolv_conf_disabled = true;
        n.node_ips = vec!["192.0.2.10".into(), "2001:db8::10".into()];
        let (d, _) = pod_dns(&p, &n, &DnsSettings::default());
        assert_eq!(d.servers, vec!["127.0.0.1", "::1"]);
        assert_eq!(d.searches, vec!["."]);
    }

    #[test]
    fn none_takes_only_the_pods_dns_config_and_options_merge_by_name() {
        let config = PodDNSConfig {
            nameservers: Some(vec!["1.1.1.1".into(), "1.1.1.1".into()]),
            searches: Some(vec!["my.example".into()]),
            options: Some(vec![
                PodDNSConfigOption { name: Some("ndots".into()), value: Some("2".into()) },
                PodDNSConfigOption { name: Some("edns0".into()), value: None },
            ]),
        };
        let p = pod(|s| {
            s.dns_policy = Some("None".into());
            s.dns_config = Some(config.clone());
        });
        let (d, _) = pod_dns(&p, &node(), &host());
        assert_eq!(d.servers, vec!["1.1.1.1"]);
        assert_eq!(d.searches, vec!["my.example"]);
        assert_eq!(d.options, vec!["ndots:2", "edns0"]);
        // Merged into ClusterFirst: the pod's ndots replaces the cluster's.
        let p = pod(|s| s.dns_config = Some(config));
        let (d, _) = pod_dns(&p, &node(), &host());
        assert_eq!(d.servers, vec!["10.96.0.10", "1.1.1.1"]);
        assert_eq!(d.searches.last().map(String::as_str), Some("my.example"));
        assert_eq!(d.options, vec!["ndots:2", "edns0"]);
    }

    #[test]
    fn limits_cut_nameservers_and_search_paths_with_a_warning() {
        let p = pod(|s| {
            s.dns_policy = Some("None".into());
            s.dns_config = Some(PodDNSConfig {
                nameservers: Some((1..=5).map(|i| format!("192.0.2.{i}")).collect()),
                searches: Some((0..40).map(|i| format!("{}{i}.example", "d".repeat(60))).collect()),
                options: None,
            });
        });
        let (d, warnings) = pod_dns(&p, &node(), &host());
        assert_eq!(d.servers.len(), MAX_DNS_NAMESERVERS);
        assert!(d.searches.len() <= MAX_DNS_SEARCH_PATHS && d.searches.join(" ").len() <= MAX_DNS_SEARCH_LIST_CHARS);
        // 32 paths of 69-70 characters take 2261 with their spaces; three are cut from the end to fit 2048.
        assert_eq!(d.searches.len(), 29);
        assert_eq!(warnings.len(), 2);
        assert!(warnings[0].1.starts_with("Nameserver limits were exceeded"));
        assert!(warnings[1].1.starts_with("Search Line limits were exceeded"));
        let long = pod(|s| {
            s.dns_policy = Some("None".into());
            s.dns_config =
                Some(PodDNSConfig { searches: Some(vec!["a".repeat(254), "ok.example".into()]), ..Default::default() });
        });
        assert_eq!(pod_dns(&long, &node(), &host()).0.searches, vec!["ok.example"]);
    }

    #[test]
    fn hostname_subdomain_and_fqdn() {
        let p = pod(|_| {});
        assert_eq!(hostname_and_domain(&p, "cluster.local"), Ok(("web".into(), String::new())));
        let p = pod(|s| {
            s.hostname = Some("db-0".into());
            s.subdomain = Some("db".into());
        });
        let (h, d) = hostname_and_domain(&p, "cluster.local").unwrap();
        assert_eq!((h.as_str(), d.as_str()), ("db-0", "db.team.svc.cluster.local"));
        assert_eq!(kernel_hostname(&p, &h, &d), Ok("db-0".into()));
        let mut fqdn = p.clone();
        fqdn.spec.as_mut().unwrap().set_hostname_as_fqdn = Some(true);
        assert_eq!(kernel_hostname(&fqdn, &h, &d), Ok("db-0.db.team.svc.cluster.local".into()));
        let long = "h".repeat(40);
        let err = kernel_hostname(&fqdn, &long, &d).unwrap_err();
        assert!(err.contains("is too long (64 characters is the max, 66 characters requested)"), "{err}");
        // A long pod name is cut to 63 characters without a trailing '-' or '.'.
        let mut p = pod(|_| {});
        p.metadata.name = Some(format!("{}-{}", "a".repeat(62), "b".repeat(10)));
        assert_eq!(hostname_and_domain(&p, "cluster.local").unwrap().0, "a".repeat(62));
        let bad = pod(|s| s.hostname = Some("Not_A_Label".into()));
        assert!(hostname_and_domain(&bad, "cluster.local").is_err());
    }
}
