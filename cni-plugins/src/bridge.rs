//! The bridge plugin: a Linux bridge on the host, one veth pair per container, addresses and
//! routes from the delegated IPAM plugin, optional gateway address and masquerading.

use std::net::IpAddr;
use std::os::fd::AsRawFd;

use ipnet::IpNet;
use netlink_packet_route::link::LinkFlags;
use serde::Deserialize;
use serde_json::Value;
use sha2::{Digest, Sha512};

use crate::delegate;
use crate::error::{CniError, Result};
use crate::iptables;
use crate::netlink::{Handle, Link, NlError};
use crate::netns;
use crate::skel::{CmdArgs, Plugin};
use crate::spec::{CniResult, Interface, Route};
use crate::sysctl;

/// The reference plugin's default bridge name.
pub const DEFAULT_BRIDGE: &str = "cni0";

#[derive(Debug, Deserialize)]
pub struct BridgeConf {
    #[serde(default = "default_bridge")]
    pub bridge: String,
    #[serde(rename = "isGateway", default)]
    pub is_gateway: bool,
    #[serde(rename = "isDefaultGateway", default)]
    pub is_default_gateway: bool,
    #[serde(rename = "forceAddress", default)]
    pub force_address: bool,
    #[serde(rename = "ipMasq", default)]
    pub ip_masq: bool,
    #[serde(default)]
    pub mtu: Option<u32>,
    #[serde(rename = "hairpinMode", default)]
    pub hairpin_mode: bool,
    #[serde(rename = "promiscMode", default)]
    pub promisc_mode: bool,
    #[serde(rename = "enabledad", default)]
    pub enable_dad: bool,
    // Reference fields we do not implement: refused with "unsupported field" rather than ignored.
    #[serde(default)]
    pub vlan: Option<u32>,
    #[serde(rename = "vlanTrunk", default)]
    pub vlan_trunk: Option<Value>,
    #[serde(default)]
    pub macspoofchk: Option<bool>,
}

fn default_bridge() -> String {
    DEFAULT_BRIDGE.to_string()
}

impl BridgeConf {
    pub fn load(args: &CmdArgs) -> Result<BridgeConf> {
        let mut c: BridgeConf = args.parse_conf()?;
        if let Some(v) = c.vlan.filter(|v| *v != 0) {
            return Err(CniError::unsupported_field("vlan", v));
        }
        if let Some(v) = c.vlan_trunk.as_ref().filter(|v| !v.is_null() && v.as_array().is_none_or(|a| !a.is_empty())) {
            return Err(CniError::unsupported_field("vlanTrunk", v));
        }
        if c.macspoofchk == Some(true) {
            return Err(CniError::unsupported_field("macspoofchk", true));
        }
        crate::skel::validate_ifname(&c.bridge)
            .map_err(|_| CniError::invalid_config(format!("invalid bridge name {:?}", c.bridge)))?;
        if c.is_default_gateway {
            c.is_gateway = true;
        }
        if c.mtu == Some(0) {
            c.mtu = None;
        }
        Ok(c)
    }
}

fn ipam_type(args: &CmdArgs) -> Result<String> {
    match &args.conf.ipam {
        Some(i) if !i.ipam_type.is_empty() => Ok(i.ipam_type.clone()),
        _ => Err(CniError::invalid_config("bridge: an \"ipam\" section with a \"type\" is required")),
    }
}

fn nl(what: impl std::fmt::Display) -> impl Fn(NlError) -> CniError {
    move |e| CniError::internal(format!("{what}: {e}"))
}

/// The host end's name, derived from the attachment so DEL finds it even without the netns.
pub fn host_veth_name(container_id: &str, ifname: &str) -> String {
    let d = Sha512::digest(format!("{container_id}/{ifname}").as_bytes());
    format!("veth{:02x}{:02x}{:02x}{:02x}", d[0], d[1], d[2], d[3])
}

/// The first host address of the subnet: the gateway when IPAM names none. The delegate's result is input: an
/// address at the very end of the address space (`ffff:…:ffff/128`) has no next address.
fn default_gateway(addr: IpNet) -> Result<IpAddr> {
    let net = crate::ipam::to_u128(addr.network());
    let max = if addr.addr().is_ipv6() { u128::MAX } else { u128::from(u32::MAX) };
    match net.checked_add(1).filter(|gw| *gw <= max) {
        Some(gw) => Ok(crate::ipam::from_u128(gw, addr.addr().is_ipv6())),
        None => Err(CniError::invalid_config(format!("no gateway address follows the network of {addr}"))),
    }
}

fn ensure_bridge(h: &mut Handle, c: &BridgeConf) -> Result<Link> {
    let what = format!("bridge {}", c.bridge);
    let link = match h.link_by_name(&c.bridge).map_err(nl(&what))? {
        Some(l) => l,
        None => {
            match h.create_bridge(&c.bridge, c.mtu, c.promisc_mode) {
                Ok(()) => {}
                Err(e) if e.is_exists() => {} // created concurrently by another ADD
                Err(e) => return Err(nl(format!("create {what}"))(e)),
            }
            h.link_by_name(&c.bridge)
                .map_err(nl(&what))?
                .ok_or_else(|| CniError::internal(format!("{what} vanished after creation")))?
        }
    };
    if link.kind.as_deref() != Some("bridge") {
        return Err(CniError::invalid_config(format!("{} already exists but is not a bridge", c.bridge)));
    }
    let mut want = LinkFlags::Up;
    if c.promisc_mode {
        want |= LinkFlags::Promisc;
    }
    if !link.up || c.promisc_mode {
        h.set_flags(link.index, want, want).map_err(nl(format!("set {what} up")))?;
    }
    Ok(link)
}

/// Put the gateway address on the bridge. An IPv4 address of the same subnet that differs is an
/// error, or is replaced with `forceAddress` (as the reference plugin does).
fn ensure_gateway_addr(h: &mut Handle, br: &Link, gw: IpNet, force: bool) -> Result<()> {
    let existing = h.addresses(br.index).map_err(nl("list bridge addresses"))?;
    if existing.iter().any(|a| a.addr() == gw.addr() && a.prefix_len() == gw.prefix_len()) {
        return Ok(());
    }
    if gw.addr().is_ipv4() {
        for a in existing.iter().filter(|a| a.addr().is_ipv4()) {
            if a.contains(&gw.addr()) || gw.contains(&a.addr()) {
                if !force {
                    return Err(CniError::internal(format!(
                        "{} already has an IP address different from {gw}",
                        br.name
                    )));
                }
                h.del_address(br.index, *a).map_err(nl(format!("remove {a} from {}", br.name)))?;
            }
        }
    }
    match h.add_address(br.index, gw, false) {
        Ok(()) => Ok(()),
        Err(e) if e.is_exists() => Ok(()),
        Err(e) => Err(nl(format!("add {gw} to {}", br.name))(e)),
    }
}

/// Inside the pod's namespace: addresses and routes on the container interface. Returns its MAC.
fn configure_pod(ifname: &str, res: &CniResult, dad: bool) -> Result<String> {
    let mut h = Handle::new().map_err(nl("netlink"))?;
    let link = h
        .link_by_name(ifname)
        .map_err(nl(ifname))?
        .ok_or_else(|| CniError::internal(format!("{ifname} missing in the container")))?;
    h.set_flags(link.index, LinkFlags::Up, LinkFlags::Up).map_err(nl(format!("set {ifname} up")))?;
    for ip in &res.ips {
        match h.add_address(link.index, ip.address, dad) {
            Ok(()) => {}
            Err(e) if e.is_exists() => {}
            Err(e) => return Err(nl(format!("add {} to {ifname}", ip.address))(e)),
        }
    }
    for r in &res.routes {
        let gw = r.gw.or_else(|| {
            res.ips.iter().find(|i| i.address.addr().is_ipv4() == r.dst.addr().is_ipv4()).and_then(|i| i.gateway)
        });
        match h.add_route(link.index, r.dst, gw, r.priority) {
            Ok(()) => {}
            Err(e) if e.is_exists() => {}
            Err(e) => return Err(nl(format!("add route {} via {gw:?}", r.dst))(e)),
        }
    }
    Ok(link.mac)
}

pub struct Bridge;

impl Bridge {
    /// Everything after the veth exists; on error the caller removes the veth.
    fn add_after_veth(&self, args: &CmdArgs, c: &BridgeConf, ipam: &str, ns: &std::fs::File) -> Result<CniResult> {
        let mut res = delegate::add(args, ipam)?;
        let outcome = self.configure(args, c, ns, &mut res);
        if outcome.is_err() {
            let _ = delegate::exec(args, ipam, "DEL");
            if c.ip_masq {
                for v6 in [false, true] {
                    if res.ips.iter().any(|i| i.address.addr().is_ipv6() == v6) {
                        let _ = iptables::teardown_chain(
                            v6,
                            &iptables::chain_name("", &args.conf.name, &args.container_id),
                        );
                    }
                }
            }
        }
        outcome.map(|()| res)
    }

    fn configure(&self, args: &CmdArgs, c: &BridgeConf, ns: &std::fs::File, res: &mut CniResult) -> Result<()> {
        if res.ips.is_empty() {
            return Err(CniError::internal("IPAM plugin returned missing IP config"));
        }
        for ip in &mut res.ips {
            ip.interface = Some(2);
            if c.is_gateway && ip.gateway.is_none() {
                ip.gateway = Some(default_gateway(ip.address)?);
            }
        }
        if c.is_default_gateway {
            for v6 in [false, true] {
                let Some(gw) = res.ips.iter().find(|i| i.address.addr().is_ipv6() == v6).and_then(|i| i.gateway) else {
                    continue;
                };
                let dst: IpNet =
                    if v6 { "::/0" } else { "0.0.0.0/0" }.parse().map_err(|_| CniError::internal("default route"))?;
                match res.routes.iter().find(|r| r.dst == dst) {
                    Some(r) if r.gw.is_some_and(|g| g != gw) => {
                        return Err(CniError::invalid_config(format!(
                            "isDefaultGateway ineffective because IPAM sets default route via {:?}",
                            r.gw
                        )))
                    }
                    Some(_) => {}
                    None => res.routes.push(Route::new(dst, Some(gw))),
                }
            }
        }

        let ifname = args.ifname.clone();
        let dad = c.enable_dad;
        let snapshot = res.clone();
        let pod_mac = netns::run_in(ns, move || configure_pod(&ifname, &snapshot, dad))?;

        let mut h = Handle::new().map_err(nl("netlink"))?;
        let br = h
            .link_by_name(&c.bridge)
            .map_err(nl("bridge"))?
            .ok_or_else(|| CniError::internal(format!("bridge {} vanished", c.bridge)))?;
        if c.is_gateway {
            let mut done_v4 = false;
            let mut done_v6 = false;
            for ip in &res.ips {
                let Some(gw) = ip.gateway else { continue };
                let gw_net = IpNet::new(gw, ip.address.prefix_len()).map_err(|e| CniError::internal(e.to_string()))?;
                ensure_gateway_addr(&mut h, &br, gw_net, c.force_address)?;
                if gw.is_ipv4() && !done_v4 {
                    sysctl::set("net.ipv4.ip_forward", "1")?;
                    done_v4 = true;
                } else if gw.is_ipv6() && !done_v6 {
                    sysctl::set("net.ipv6.conf.all.forwarding", "1")?;
                    done_v6 = true;
                }
            }
        }
        if c.ip_masq {
            let chain = iptables::chain_name("", &args.conf.name, &args.container_id);
            let comment = iptables::comment(&args.conf.name, &args.container_id);
            for ip in &res.ips {
                iptables::setup_masquerade(ip.address.addr(), ip.address.trunc(), &chain, &comment)?;
            }
        }
        let host_name = host_veth_name(&args.container_id, &args.ifname);
        let host = h.link_by_name(&host_name).map_err(nl(&host_name))?.unwrap_or_default();
        // Re-read the bridge: its MAC follows its ports until one is set explicitly.
        let br = h.link_by_index(br.index).map_err(nl("bridge"))?.unwrap_or(br);
        res.interfaces = vec![
            Interface { name: br.name.clone(), mac: br.mac.clone(), mtu: Some(br.mtu), sandbox: String::new() },
            Interface { name: host_name, mac: host.mac, mtu: Some(host.mtu), sandbox: String::new() },
            Interface {
                name: args.ifname.clone(),
                mac: pod_mac,
                mtu: Some(host.mtu),
                sandbox: args.netns.as_ref().map(|p| p.display().to_string()).unwrap_or_default(),
            },
        ];
        Ok(())
    }
}

impl Plugin for Bridge {
    fn add(&self, args: &CmdArgs) -> Result<CniResult> {
        let c = BridgeConf::load(args)?;
        let ipam = ipam_type(args)?;
        let ns = netns::open_required(args.netns.as_deref().unwrap_or(std::path::Path::new("")))?;
        let mut h = Handle::new().map_err(nl("netlink"))?;
        let br = ensure_bridge(&mut h, &c)?;

        let host_name = host_veth_name(&args.container_id, &args.ifname);
        match h.create_veth(&host_name, &args.ifname, ns.as_raw_fd(), c.mtu, Some(br.index)) {
            Ok(()) => {}
            Err(e) if e.is_exists() => {
                return Err(CniError::internal(format!(
                    "container {} already has {} (host end {host_name}): ADD again without DEL?",
                    args.container_id, args.ifname
                )))
            }
            Err(e) => return Err(nl(format!("create veth {host_name}/{}", args.ifname))(e)),
        }
        let result = (|| {
            let host = h
                .link_by_name(&host_name)
                .map_err(nl(&host_name))?
                .ok_or_else(|| CniError::internal(format!("{host_name} vanished")))?;
            if c.hairpin_mode {
                h.set_hairpin(host.index, true).map_err(nl(format!("hairpin on {host_name}")))?;
            }
            self.add_after_veth(args, &c, &ipam, &ns)
        })();
        if result.is_err() {
            if let Ok(Some(host)) = h.link_by_name(&host_name) {
                let _ = h.del_link(host.index);
            }
        }
        result
    }

    fn del(&self, args: &CmdArgs) -> Result<()> {
        let c = BridgeConf::load(args)?;
        let ipam = ipam_type(args)?;
        delegate::exec(args, &ipam, "DEL")?;

        // The pod's addresses (read before deleting), to remove exactly the rules ADD wrote.
        let mut pod_ips: Option<Vec<IpAddr>> = None;
        let ns = match &args.netns {
            Some(p) => netns::open(p)?,
            None => None,
        };
        if let Some(ns) = ns {
            let ifname = args.ifname.clone();
            pod_ips = netns::run_in(&ns, move || {
                let mut h = Handle::new().map_err(nl("netlink"))?;
                let Some(link) = h.link_by_name(&ifname).map_err(nl(&ifname))? else { return Ok(None) };
                let ips: Vec<IpAddr> =
                    h.addresses(link.index).map_err(nl("addresses"))?.iter().map(|a| a.addr()).collect();
                match h.del_link(link.index) {
                    Ok(()) => Ok(Some(ips)),
                    Err(e) if e.is_not_found() => Ok(Some(ips)),
                    Err(e) => Err(nl(format!("delete {ifname}"))(e)),
                }
            })?;
        }
        // The netns may be gone while the host end survives (it normally goes with the netns).
        let mut h = Handle::new().map_err(nl("netlink"))?;
        let host_name = host_veth_name(&args.container_id, &args.ifname);
        if let Some(host) = h.link_by_name(&host_name).map_err(nl(&host_name))? {
            match h.del_link(host.index) {
                Ok(()) => {}
                Err(e) if e.is_not_found() => {}
                Err(e) => return Err(nl(format!("delete {host_name}"))(e)),
            }
        }
        if c.ip_masq {
            let chain = iptables::chain_name("", &args.conf.name, &args.container_id);
            let comment = iptables::comment(&args.conf.name, &args.container_id);
            for v6 in [false, true] {
                match &pod_ips {
                    Some(ips) if !ips.is_empty() => {
                        if ips.iter().any(|ip| ip.is_ipv6() == v6) {
                            iptables::teardown_masquerade(v6, ips, &chain, &comment)?;
                        }
                    }
                    // No interface to learn from: read the tables.
                    _ => {
                        if !v6 || iptables::available(true) {
                            iptables::teardown_chain(v6, &chain)?;
                        }
                    }
                }
            }
        }
        Ok(())
    }

    fn check(&self, args: &CmdArgs) -> Result<()> {
        let c = BridgeConf::load(args)?;
        let ipam = ipam_type(args)?;
        let prev =
            args.prev_result()?.ok_or_else(|| CniError::invalid_config("bridge: CHECK requires a prevResult"))?;
        delegate::exec(args, &ipam, "CHECK")?;
        let ns = netns::open_required(args.netns.as_deref().unwrap_or(std::path::Path::new("")))?;
        let want = prev.interfaces.iter().position(|i| i.name == args.ifname && !i.sandbox.is_empty());
        let want_mac = want.map(|i| prev.interfaces[i].mac.clone()).unwrap_or_default();
        let want_ips: Vec<IpNet> =
            prev.ips.iter().filter(|ip| want.is_none() || ip.interface == want).map(|ip| ip.address).collect();
        let ifname = args.ifname.clone();
        let peer = netns::run_in(&ns, move || {
            let mut h = Handle::new().map_err(nl("netlink"))?;
            let link = h
                .link_by_name(&ifname)
                .map_err(nl(&ifname))?
                .ok_or_else(|| CniError::internal(format!("interface {ifname} not found in the container")))?;
            if !want_mac.is_empty() && !link.mac.eq_ignore_ascii_case(&want_mac) {
                return Err(CniError::internal(format!("{ifname} has MAC {}, expected {want_mac}", link.mac)));
            }
            let have = h.addresses(link.index).map_err(nl("addresses"))?;
            for ip in &want_ips {
                if !have.contains(ip) {
                    return Err(CniError::internal(format!("{ifname} lacks address {ip}")));
                }
            }
            Ok(link.peer_index)
        })?;
        let mut h = Handle::new().map_err(nl("netlink"))?;
        let host_name = host_veth_name(&args.container_id, &args.ifname);
        let host = h
            .link_by_name(&host_name)
            .map_err(nl(&host_name))?
            .ok_or_else(|| CniError::internal(format!("host veth {host_name} not found")))?;
        if peer.is_some_and(|p| p != host.index) {
            return Err(CniError::internal(format!("{} is not paired with {host_name}", args.ifname)));
        }
        let br = h
            .link_by_name(&c.bridge)
            .map_err(nl("bridge"))?
            .ok_or_else(|| CniError::internal(format!("bridge {} not found", c.bridge)))?;
        if host.controller != Some(br.index) {
            return Err(CniError::internal(format!("{host_name} is not a port of {}", c.bridge)));
        }
        Ok(())
    }

    fn status(&self, args: &CmdArgs) -> Result<()> {
        delegate::exec(args, &ipam_type(args)?, "STATUS").map(|_| ())
    }

    fn gc(&self, args: &CmdArgs) -> Result<()> {
        delegate::exec(args, &ipam_type(args)?, "GC").map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn the_last_address_of_the_space_has_no_default_gateway() {
        let err = default_gateway("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff/128".parse().unwrap()).unwrap_err();
        assert_eq!(err.code, crate::error::ERR_INVALID_NETCONF);
        assert!(default_gateway("255.255.255.255/32".parse().unwrap()).is_err());
        assert_eq!(default_gateway("10.1.2.3/24".parse().unwrap()).unwrap().to_string(), "10.1.2.1");
    }

    fn edge_u128() -> impl Strategy<Value = u128> {
        prop_oneof![any::<u128>(), Just(u128::MAX), Just(u128::MAX - 1), Just(0), Just(u128::from(u32::MAX))]
    }

    proptest! {
        #[test]
        fn a_default_gateway_is_the_address_after_the_network(
            bits in edge_u128(),
            v6 in any::<bool>(),
            prefix in prop_oneof![0u8..=128, Just(32), Just(128)],
        ) {
            let addr = crate::ipam::from_u128(bits, v6);
            let Ok(net) = IpNet::new(addr, prefix) else { return Ok(()) };
            if let Ok(gw) = default_gateway(net) {
                prop_assert_eq!(gw.is_ipv6(), v6);
                prop_assert_eq!(crate::ipam::to_u128(gw), crate::ipam::to_u128(net.network()) + 1);
            }
        }
    }
}
