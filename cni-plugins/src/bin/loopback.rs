//! loopback plugin: brings `lo` up in the container's network namespace.

use cni_plugins::error::{CniError, Result};
use cni_plugins::netlink::{Handle, NlError};
use cni_plugins::netns;
use cni_plugins::skel::{self, CmdArgs, Plugin};
use cni_plugins::spec::{CniResult, Interface, IpConfig};
use netlink_packet_route::link::LinkFlags;

struct Loopback;

fn nl(what: &str) -> impl Fn(NlError) -> CniError + '_ {
    move |e| CniError::internal(format!("{what}: {e}"))
}

impl Plugin for Loopback {
    fn add(&self, args: &CmdArgs) -> Result<CniResult> {
        let path = args.netns.clone().unwrap_or_default();
        let ns = netns::open_required(&path)?;
        let addrs = netns::run_in(&ns, || {
            let mut h = Handle::new().map_err(nl("netlink"))?;
            let lo = h.link_by_name("lo").map_err(nl("get lo"))?.ok_or_else(|| CniError::internal("no lo in netns"))?;
            h.set_flags(lo.index, LinkFlags::Up, LinkFlags::Up).map_err(nl("set lo up"))?;
            h.addresses(lo.index).map_err(nl("list lo addresses"))
        })?;
        let ips = addrs
            .into_iter()
            .map(|a| IpConfig { version: None, address: a, gateway: None, interface: Some(0) })
            .collect();
        Ok(CniResult {
            interfaces: vec![Interface {
                name: "lo".into(),
                mac: "00:00:00:00:00:00".into(),
                mtu: None,
                sandbox: path.display().to_string(),
            }],
            ips,
            ..Default::default()
        })
    }

    fn del(&self, args: &CmdArgs) -> Result<()> {
        let Some(path) = &args.netns else { return Ok(()) };
        let Some(ns) = netns::open(path)? else { return Ok(()) };
        netns::run_in(&ns, || {
            let mut h = Handle::new().map_err(nl("netlink"))?;
            if let Some(lo) = h.link_by_name("lo").map_err(nl("get lo"))? {
                h.set_flags(lo.index, LinkFlags::empty(), LinkFlags::Up).map_err(nl("set lo down"))?;
            }
            Ok(())
        })
    }

    fn check(&self, args: &CmdArgs) -> Result<()> {
        let ns = netns::open_required(&args.netns.clone().unwrap_or_default())?;
        netns::run_in(&ns, || {
            let mut h = Handle::new().map_err(nl("netlink"))?;
            match h.link_by_name("lo").map_err(nl("get lo"))? {
                Some(lo) if lo.up => Ok(()),
                _ => Err(CniError::internal("lo is not up")),
            }
        })
    }
}

fn main() {
    skel::run(&Loopback)
}
