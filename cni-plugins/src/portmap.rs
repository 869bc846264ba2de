//! The portmap plugin (chained after bridge): hostPort -> pod port DNAT from
//! `runtimeConfig.portMappings`, with SNAT for traffic from the host itself (127.0.0.1) and for
//! hairpin traffic (a pod reaching itself through its host port).
//!
//! Chains follow the reference plugin: `CNI-HOSTPORT-DNAT` (entered from PREROUTING and OUTPUT for
//! local destinations) jumps to a per-container `CNI-DN-<hash>` chain; `CNI-HOSTPORT-SETMARK`
//! marks connections that need masquerading and `CNI-HOSTPORT-MASQ` (from POSTROUTING) does it.

use std::net::IpAddr;

use serde::Deserialize;
use serde_json::Value;

use crate::error::{CniError, Result};
use crate::iptables::{self, Table};
use crate::skel::{CmdArgs, Plugin};
use crate::spec::{CniResult, PortMapping};
use crate::sysctl;

pub const DNAT_CHAIN: &str = "CNI-HOSTPORT-DNAT";
pub const SETMARK_CHAIN: &str = "CNI-HOSTPORT-SETMARK";
pub const MASQ_CHAIN: &str = "CNI-HOSTPORT-MASQ";
/// The reference default: bit 13 (0x2000), the same bit kube-proxy uses for masquerade.
pub const DEFAULT_MASQ_BIT: u32 = 13;
/// iptables' multiport match takes at most 15 ports.
const MULTIPORT_MAX: usize = 15;

#[derive(Debug, Default, Deserialize)]
struct RuntimeConfig {
    #[serde(rename = "portMappings", default)]
    port_mappings: Vec<PortMapping>,
}

#[derive(Debug, Deserialize)]
pub struct PortmapConf {
    #[serde(rename = "runtimeConfig", default)]
    runtime_config: Option<RuntimeConfig>,
    #[serde(default)]
    snat: Option<bool>,
    #[serde(rename = "markMasqBit", default)]
    mark_masq_bit: Option<u32>,
    #[serde(rename = "externalSetMarkChain", default)]
    external_set_mark_chain: Option<String>,
    #[serde(rename = "conditionsV4", default)]
    conditions_v4: Option<Value>,
    #[serde(rename = "conditionsV6", default)]
    conditions_v6: Option<Value>,
}

pub struct Settings {
    pub mappings: Vec<PortMapping>,
    pub snat: bool,
    pub mark: u32,
}

impl PortmapConf {
    pub fn load(args: &CmdArgs) -> Result<Settings> {
        let c: PortmapConf = args.parse_conf()?;
        if let Some(v) = &c.external_set_mark_chain {
            return Err(CniError::unsupported_field("externalSetMarkChain", v));
        }
        for (k, v) in [("conditionsV4", &c.conditions_v4), ("conditionsV6", &c.conditions_v6)] {
            if let Some(v) = v.as_ref().filter(|v| !v.is_null()) {
                return Err(CniError::unsupported_field(k, v));
            }
        }
        let bit = c.mark_masq_bit.unwrap_or(DEFAULT_MASQ_BIT);
        if bit > 31 {
            return Err(CniError::invalid_config(format!("markMasqBit {bit} must be between 0 and 31")));
        }
        let mappings = c.runtime_config.unwrap_or_default().port_mappings;
        for m in &mappings {
            if m.host_port == 0 || m.container_port == 0 {
                return Err(CniError::invalid_config(format!("invalid port mapping {m:?}: ports must be 1-65535")));
            }
            if !matches!(m.protocol.to_ascii_lowercase().as_str(), "tcp" | "udp" | "sctp") {
                return Err(CniError::invalid_config(format!("invalid protocol {:?} in port mapping", m.protocol)));
            }
            if !m.host_ip.is_empty() && m.host_ip.parse::<IpAddr>().is_err() {
                return Err(CniError::invalid_config(format!("invalid hostIP {:?} in port mapping", m.host_ip)));
            }
        }
        Ok(Settings { mappings, snat: c.snat.unwrap_or(true), mark: 1u32 << bit })
    }
}

fn host_cidr(ip: IpAddr) -> String {
    format!("{ip}/{}", if ip.is_ipv4() { 32 } else { 128 })
}

/// The restore lines that install `s.mappings` for `pod_ip`, given the current table `t`.
pub fn rules(t: &Table, chain: &str, comment: &str, s: &Settings, pod_ip: IpAddr) -> Vec<String> {
    let v6 = pod_ip.is_ipv6();
    let mut decl = Vec::new();
    let mut rules = Vec::new();
    if !t.chains.contains(DNAT_CHAIN) {
        decl.push(format!(":{DNAT_CHAIN} - [0:0]"));
    }
    for hook in ["PREROUTING", "OUTPUT"] {
        if !t.has_jump(hook, DNAT_CHAIN) {
            rules.push(format!("-I {hook} -m addrtype --dst-type LOCAL -j {DNAT_CHAIN}"));
        }
    }
    if s.snat {
        if !t.chains.contains(SETMARK_CHAIN) {
            decl.push(format!(":{SETMARK_CHAIN} - [0:0]"));
            rules.push(format!(
                "-A {SETMARK_CHAIN} -m comment --comment \"CNI portfwd masquerade mark\" -j MARK --set-xmark {:#x}/{:#x}",
                s.mark, s.mark
            ));
        }
        if !t.chains.contains(MASQ_CHAIN) {
            decl.push(format!(":{MASQ_CHAIN} - [0:0]"));
            rules.push(format!(
                "-A {MASQ_CHAIN} -m comment --comment \"CNI portfwd requiring masquerade\" -m mark --mark {:#x}/{:#x} -j MASQUERADE",
                s.mark, s.mark
            ));
        }
        if !t.has_jump("POSTROUTING", MASQ_CHAIN) {
            // First in POSTROUTING: a bridge's ipMasq chain ACCEPTs pod-subnet traffic, which
            // would end the nat traversal before the hairpin/localhost masquerade.
            rules.push(format!(
                "-I POSTROUTING -m comment --comment \"CNI portfwd requiring masquerade\" -j {MASQ_CHAIN}"
            ));
        }
    }
    // The per-container chain: emptied (or created) and refilled.
    if t.chains.contains(chain) {
        rules.extend(t.rules_jumping_to(chain).iter().map(|r| format!("-D{}", r.strip_prefix("-A").unwrap_or(r))));
        rules.push(format!("-F {chain}"));
    } else {
        decl.push(format!(":{chain} - [0:0]"));
    }
    let mut protos: Vec<String> = Vec::new();
    for m in &s.mappings {
        let proto = m.protocol.to_ascii_lowercase();
        let host_ip: Option<IpAddr> = m.host_ip.parse().ok().filter(|ip: &IpAddr| !ip.is_unspecified());
        if host_ip.is_some_and(|ip| ip.is_ipv6() != v6) {
            continue; // a mapping for the other family
        }
        if !protos.contains(&proto) {
            protos.push(proto.clone());
        }
        let dst = host_ip.map(|ip| format!("-d {} ", host_cidr(ip))).unwrap_or_default();
        let hp = m.host_port;
        if s.snat {
            rules.push(format!("-A {chain} -s {} {dst}-p {proto} --dport {hp} -j {SETMARK_CHAIN}", host_cidr(pod_ip)));
            if !v6 {
                rules.push(format!("-A {chain} -s 127.0.0.1/32 {dst}-p {proto} --dport {hp} -j {SETMARK_CHAIN}"));
            }
        }
        let to = if v6 { format!("[{pod_ip}]:{}", m.container_port) } else { format!("{pod_ip}:{}", m.container_port) };
        rules.push(format!("-A {chain} {dst}-p {proto} --dport {hp} -j DNAT --to-destination {to}"));
    }
    for proto in &protos {
        let mut ports: Vec<u16> =
            s.mappings.iter().filter(|m| m.protocol.eq_ignore_ascii_case(proto)).map(|m| m.host_port).collect();
        ports.sort_unstable();
        ports.dedup();
        for chunk in ports.chunks(MULTIPORT_MAX) {
            let list: Vec<String> = chunk.iter().map(|p| p.to_string()).collect();
            rules.push(format!(
                "-A {DNAT_CHAIN} -p {proto} -m comment --comment \"{comment}\" -m multiport --destination-ports {} -j {chain}",
                list.join(",")
            ));
        }
    }
    decl.extend(rules);
    decl
}

/// The first IP of each family among the container's addresses.
fn pod_ips(prev: &CniResult) -> Vec<IpAddr> {
    let mut out: Vec<IpAddr> = Vec::new();
    for ip in prev.container_ips() {
        let a = ip.address.addr();
        if !out.iter().any(|o| o.is_ipv6() == a.is_ipv6()) {
            out.push(a);
        }
    }
    out
}

pub struct Portmap;

impl Plugin for Portmap {
    fn add(&self, args: &CmdArgs) -> Result<CniResult> {
        let s = PortmapConf::load(args)?;
        let prev = args
            .prev_result()?
            .ok_or_else(|| CniError::invalid_config("portmap must be called as a chained plugin (no prevResult)"))?;
        if s.mappings.is_empty() {
            return Ok(prev);
        }
        let chain = iptables::chain_name("DN-", &args.conf.name, &args.container_id);
        let comment = iptables::comment(&args.conf.name, &args.container_id);
        for pod_ip in pod_ips(&prev) {
            let v6 = pod_ip.is_ipv6();
            if v6 && !iptables::available(true) {
                continue;
            }
            if s.snat && !v6 {
                // Host-originated traffic to 127.0.0.1 is routed out the bridge after DNAT; the
                // kernel drops it as martian unless route_localnet is set on that interface.
                if let Some(itf) = prev.interfaces.iter().find(|i| i.sandbox.is_empty()) {
                    if crate::skel::validate_ifname(&itf.name).is_ok() {
                        sysctl::set_path(&format!("/proc/sys/net/ipv4/conf/{}/route_localnet", itf.name), "1")?;
                    }
                }
            }
            let _lock = iptables::Lock::acquire()?;
            let t = iptables::save_nat(v6)?;
            iptables::restore_nat(v6, &rules(&t, &chain, &comment, &s, pod_ip))?;
        }
        Ok(prev)
    }

    fn del(&self, args: &CmdArgs) -> Result<()> {
        let _ = PortmapConf::load(args)?;
        let chain = iptables::chain_name("DN-", &args.conf.name, &args.container_id);
        let families: Vec<bool> = match args.prev_result().ok().flatten() {
            Some(prev) if !pod_ips(&prev).is_empty() => pod_ips(&prev).iter().map(|ip| ip.is_ipv6()).collect(),
            _ => vec![false, true],
        };
        for v6 in families {
            if iptables::available(v6) {
                iptables::teardown_chain(v6, &chain)?;
            }
        }
        Ok(())
    }

    fn check(&self, args: &CmdArgs) -> Result<()> {
        let s = PortmapConf::load(args)?;
        let prev =
            args.prev_result()?.ok_or_else(|| CniError::invalid_config("portmap: CHECK requires a prevResult"))?;
        if s.mappings.is_empty() {
            return Ok(());
        }
        let chain = iptables::chain_name("DN-", &args.conf.name, &args.container_id);
        for pod_ip in pod_ips(&prev) {
            if pod_ip.is_ipv6() && !iptables::available(true) {
                continue;
            }
            let t = iptables::save_nat(pod_ip.is_ipv6())?;
            if !t.chains.contains(&chain) || !t.has_jump(DNAT_CHAIN, &chain) {
                return Err(CniError::internal(format!("portmap: chain {chain} for {pod_ip} is missing")));
            }
        }
        Ok(())
    }
}
