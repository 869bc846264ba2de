//! A small synchronous rtnetlink client on netlink-sys + netlink-packet-route.
//!
//! A plugin process lives for one call, so there is no async runtime: one socket, one request at a
//! time, replies read until the ACK (or DONE for dumps). A socket stays bound to the network
//! namespace it was created in, so create the handle on the thread that is in the namespace.

use std::io;
use std::net::IpAddr;
use std::os::fd::RawFd;

use ipnet::IpNet;
use netlink_packet_core::{
    NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL, NLM_F_MULTIPART,
    NLM_F_REQUEST,
};
use netlink_packet_route::address::{AddressAttribute, AddressFlags, AddressMessage};
use netlink_packet_route::link::{
    InfoBridgePort, InfoData, InfoKind, InfoPortData, InfoPortKind, InfoVeth, LinkAttribute, LinkFlags, LinkInfo,
    LinkMessage,
};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteProtocol, RouteScope, RouteType,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use netlink_sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};

/// Errors from the kernel keep their errno so callers can treat EEXIST/ENODEV as they need.
#[derive(Debug, thiserror::Error)]
pub enum NlError {
    #[error("netlink: {0}")]
    Io(#[from] io::Error),
    #[error("netlink: {0}")]
    Kernel(io::Error),
    #[error("netlink: cannot decode reply: {0}")]
    Decode(String),
}

impl NlError {
    pub fn errno(&self) -> Option<i32> {
        match self {
            NlError::Kernel(e) | NlError::Io(e) => e.raw_os_error(),
            NlError::Decode(_) => None,
        }
    }
    pub fn is_exists(&self) -> bool {
        self.errno() == Some(libc::EEXIST)
    }
    pub fn is_not_found(&self) -> bool {
        matches!(self.errno(), Some(libc::ENODEV) | Some(libc::ENOENT) | Some(libc::ESRCH))
    }
}

pub type NlResult<T> = std::result::Result<T, NlError>;

/// What we need to know about a link.
#[derive(Debug, Clone, Default)]
pub struct Link {
    pub index: u32,
    pub name: String,
    pub mac: String,
    pub mtu: u32,
    pub up: bool,
    pub kind: Option<String>,
    /// The bridge (or other controller) this link is a port of.
    pub controller: Option<u32>,
    /// For a veth: the peer's ifindex (in the peer's namespace).
    pub peer_index: Option<u32>,
}

pub struct Handle {
    sock: Socket,
    seq: u32,
    buf: Vec<u8>,
}

/// Kernel replies for a link dump can be large; 64 KiB fits any single datagram we ask for.
const RECV_BUF: usize = 64 * 1024;

impl Handle {
    pub fn new() -> NlResult<Handle> {
        let mut sock = Socket::new(NETLINK_ROUTE)?;
        sock.bind_auto()?;
        sock.connect(&SocketAddr::new(0, 0))?;
        Ok(Handle { sock, seq: 0, buf: Vec::with_capacity(RECV_BUF) })
    }

    /// Send one request and collect the replies until ACK/DONE.
    pub fn request(&mut self, msg: RouteNetlinkMessage, flags: u16) -> NlResult<Vec<RouteNetlinkMessage>> {
        self.seq = self.seq.wrapping_add(1);
        let mut hdr = NetlinkHeader::default();
        hdr.flags = NLM_F_REQUEST | flags;
        hdr.sequence_number = self.seq;
        let mut nl = NetlinkMessage::new(hdr, NetlinkPayload::from(msg));
        nl.finalize();
        let mut out = vec![0u8; nl.buffer_len()];
        nl.serialize(&mut out);
        self.sock.send(&out, 0)?;

        let dump = flags & NLM_F_DUMP == NLM_F_DUMP;
        let acked = flags & NLM_F_ACK != 0;
        let mut replies = Vec::new();
        loop {
            self.buf.clear();
            let n = self.sock.recv(&mut self.buf, 0)?;
            let n = n.min(self.buf.len());
            let mut off = 0;
            while off < n {
                let bytes = &self.buf[off..n];
                let msg = NetlinkMessage::<RouteNetlinkMessage>::deserialize(bytes)
                    .map_err(|e| NlError::Decode(e.to_string()))?;
                let len = msg.header.length as usize;
                if len == 0 {
                    return Err(NlError::Decode("zero-length netlink message".into()));
                }
                off += (len + 3) & !3;
                if msg.header.sequence_number != self.seq {
                    continue;
                }
                let multi = msg.header.flags & NLM_F_MULTIPART != 0;
                match msg.payload {
                    NetlinkPayload::Error(e) => {
                        return match e.code {
                            None => Ok(replies),
                            Some(code) => Err(NlError::Kernel(io::Error::from_raw_os_error(-code.get()))),
                        };
                    }
                    NetlinkPayload::Done(_) => return Ok(replies),
                    NetlinkPayload::InnerMessage(m) => {
                        replies.push(m);
                        if !dump && !multi && !acked {
                            return Ok(replies);
                        }
                    }
                    _ => {}
                }
            }
        }
    }

    fn ack(&mut self, msg: RouteNetlinkMessage, flags: u16) -> NlResult<()> {
        self.request(msg, flags | NLM_F_ACK).map(|_| ())
    }

    /// Look a link up by name; `Ok(None)` when it does not exist.
    pub fn link_by_name(&mut self, name: &str) -> NlResult<Option<Link>> {
        let mut m = LinkMessage::default();
        m.attributes.push(LinkAttribute::IfName(name.to_string()));
        self.get_link(m)
    }

    pub fn link_by_index(&mut self, index: u32) -> NlResult<Option<Link>> {
        let mut m = LinkMessage::default();
        m.header.index = index;
        self.get_link(m)
    }

    fn get_link(&mut self, m: LinkMessage) -> NlResult<Option<Link>> {
        match self.request(RouteNetlinkMessage::GetLink(m), 0) {
            Ok(replies) => Ok(replies.into_iter().find_map(|r| match r {
                RouteNetlinkMessage::NewLink(l) => Some(link_from_msg(&l)),
                _ => None,
            })),
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Create a bridge, up, with an optional MTU and promiscuous mode.
    pub fn create_bridge(&mut self, name: &str, mtu: Option<u32>, promisc: bool) -> NlResult<()> {
        let mut m = LinkMessage::default();
        m.header.flags = LinkFlags::Up | if promisc { LinkFlags::Promisc } else { LinkFlags::empty() };
        m.header.change_mask = m.header.flags;
        m.attributes.push(LinkAttribute::IfName(name.to_string()));
        if let Some(mtu) = mtu {
            m.attributes.push(LinkAttribute::Mtu(mtu));
        }
        m.attributes.push(LinkAttribute::LinkInfo(vec![LinkInfo::Kind(InfoKind::Bridge)]));
        self.ack(RouteNetlinkMessage::NewLink(m), NLM_F_CREATE | NLM_F_EXCL)
    }

    /// Set flags (e.g. up, promisc) on a link.
    pub fn set_flags(&mut self, index: u32, flags: LinkFlags, mask: LinkFlags) -> NlResult<()> {
        let mut m = LinkMessage::default();
        m.header.index = index;
        m.header.flags = flags;
        m.header.change_mask = mask;
        self.ack(RouteNetlinkMessage::SetLink(m), 0)
    }

    /// Create a veth pair in one request: the host end `host_name`, up, a port of `controller`;
    /// the peer created directly in the namespace `peer_netns_fd` as `peer_name` (down).
    pub fn create_veth(
        &mut self,
        host_name: &str,
        peer_name: &str,
        peer_netns_fd: RawFd,
        mtu: Option<u32>,
        controller: Option<u32>,
    ) -> NlResult<()> {
        // The peer cannot be brought up here: veth_open() fails with ENOTCONN until the pair is
        // linked, which happens after the peer is configured. The caller sets it up in its netns.
        let mut peer = LinkMessage::default();
        peer.attributes.push(LinkAttribute::IfName(peer_name.to_string()));
        peer.attributes.push(LinkAttribute::NetNsFd(peer_netns_fd));
        let mut m = LinkMessage::default();
        m.header.flags = LinkFlags::Up;
        m.header.change_mask = LinkFlags::Up;
        m.attributes.push(LinkAttribute::IfName(host_name.to_string()));
        if let Some(mtu) = mtu {
            m.attributes.push(LinkAttribute::Mtu(mtu));
            peer.attributes.push(LinkAttribute::Mtu(mtu));
        }
        if let Some(c) = controller {
            m.attributes.push(LinkAttribute::Controller(c));
        }
        m.attributes.push(LinkAttribute::LinkInfo(vec![
            LinkInfo::Kind(InfoKind::Veth),
            LinkInfo::Data(InfoData::Veth(InfoVeth::Peer(peer))),
        ]));
        self.ack(RouteNetlinkMessage::NewLink(m), NLM_F_CREATE | NLM_F_EXCL)
    }

    /// Turn on hairpin mode on a bridge port (`bridge link set dev X hairpin on`).
    pub fn set_hairpin(&mut self, index: u32, on: bool) -> NlResult<()> {
        let mut m = LinkMessage::default();
        m.header.index = index;
        m.attributes.push(LinkAttribute::LinkInfo(vec![
            LinkInfo::PortKind(InfoPortKind::Bridge),
            LinkInfo::PortData(InfoPortData::BridgePort(vec![InfoBridgePort::HairpinMode(on)])),
        ]));
        self.ack(RouteNetlinkMessage::NewLink(m), 0)
    }

    pub fn del_link(&mut self, index: u32) -> NlResult<()> {
        let mut m = LinkMessage::default();
        m.header.index = index;
        self.ack(RouteNetlinkMessage::DelLink(m), 0)
    }

    /// Add an address; IPv6 addresses skip duplicate address detection unless `dad`.
    pub fn add_address(&mut self, index: u32, addr: IpNet, dad: bool) -> NlResult<()> {
        let mut m = AddressMessage::default();
        m.header.family = family(addr.addr());
        m.header.prefix_len = addr.prefix_len();
        m.header.index = index;
        m.attributes.push(AddressAttribute::Local(addr.addr()));
        m.attributes.push(AddressAttribute::Address(addr.addr()));
        if let IpNet::V4(n) = addr {
            if n.prefix_len() < 31 {
                m.attributes.push(AddressAttribute::Broadcast(n.broadcast()));
            }
        } else if !dad {
            m.attributes.push(AddressAttribute::Flags(AddressFlags::Nodad));
        }
        self.ack(RouteNetlinkMessage::NewAddress(m), NLM_F_CREATE | NLM_F_EXCL)
    }

    pub fn del_address(&mut self, index: u32, addr: IpNet) -> NlResult<()> {
        let mut m = AddressMessage::default();
        m.header.family = family(addr.addr());
        m.header.prefix_len = addr.prefix_len();
        m.header.index = index;
        m.attributes.push(AddressAttribute::Local(addr.addr()));
        m.attributes.push(AddressAttribute::Address(addr.addr()));
        self.ack(RouteNetlinkMessage::DelAddress(m), 0)
    }

    /// The global addresses on a link.
    pub fn addresses(&mut self, index: u32) -> NlResult<Vec<IpNet>> {
        let m = AddressMessage::default();
        let replies = self.request(RouteNetlinkMessage::GetAddress(m), NLM_F_DUMP)?;
        let mut out = Vec::new();
        for r in replies {
            if let RouteNetlinkMessage::NewAddress(a) = r {
                if a.header.index != index {
                    continue;
                }
                let ip = a
                    .attributes
                    .iter()
                    .find_map(|x| match x {
                        AddressAttribute::Local(ip) => Some(*ip),
                        _ => None,
                    })
                    .or_else(|| {
                        a.attributes.iter().find_map(|x| match x {
                            AddressAttribute::Address(ip) => Some(*ip),
                            _ => None,
                        })
                    });
                if let Some(ip) = ip {
                    if let Ok(n) = IpNet::new(ip, a.header.prefix_len) {
                        if !is_link_local(ip) {
                            out.push(n);
                        }
                    }
                }
            }
        }
        Ok(out)
    }

    /// Add a route through `index`, via `gw` if given.
    pub fn add_route(&mut self, index: u32, dst: IpNet, gw: Option<IpAddr>, metric: Option<u32>) -> NlResult<()> {
        let mut m = RouteMessage::default();
        m.header.address_family = family(dst.addr());
        m.header.destination_prefix_length = dst.prefix_len();
        m.header.table = RouteHeader::RT_TABLE_MAIN;
        m.header.protocol = RouteProtocol::Boot;
        m.header.kind = RouteType::Unicast;
        m.header.scope = if gw.is_some() { RouteScope::Universe } else { RouteScope::Link };
        if dst.prefix_len() > 0 {
            m.attributes.push(RouteAttribute::Destination(RouteAddress::from(dst.network())));
        }
        if let Some(gw) = gw {
            m.attributes.push(RouteAttribute::Gateway(RouteAddress::from(gw)));
        }
        m.attributes.push(RouteAttribute::Oif(index));
        if let Some(p) = metric {
            m.attributes.push(RouteAttribute::Priority(p));
        }
        self.ack(RouteNetlinkMessage::NewRoute(m), NLM_F_CREATE | NLM_F_EXCL)
    }

    /// Routes of the main table whose output interface is `index`: (dst, gw).
    pub fn routes(&mut self, index: u32, v6: bool) -> NlResult<Vec<(IpNet, Option<IpAddr>)>> {
        let mut m = RouteMessage::default();
        m.header.address_family = if v6 { AddressFamily::Inet6 } else { AddressFamily::Inet };
        let replies = self.request(RouteNetlinkMessage::GetRoute(m), NLM_F_DUMP)?;
        let mut out = Vec::new();
        for r in replies {
            let RouteNetlinkMessage::NewRoute(r) = r else { continue };
            if r.header.table != 254 {
                continue;
            }
            let mut oif = None;
            let mut dst = None;
            let mut gw = None;
            for a in &r.attributes {
                match a {
                    RouteAttribute::Oif(i) => oif = Some(*i),
                    RouteAttribute::Destination(d) => dst = route_ip(d),
                    RouteAttribute::Gateway(g) => gw = route_ip(g),
                    _ => {}
                }
            }
            if oif != Some(index) {
                continue;
            }
            let any: IpAddr = if v6 { IpAddr::from([0u16; 8]) } else { IpAddr::from([0u8; 4]) };
            if let Ok(net) = IpNet::new(dst.unwrap_or(any), r.header.destination_prefix_length) {
                out.push((net, gw));
            }
        }
        Ok(out)
    }
}

fn route_ip(a: &RouteAddress) -> Option<IpAddr> {
    match a {
        RouteAddress::Inet(v4) => Some(IpAddr::V4(*v4)),
        RouteAddress::Inet6(v6) => Some(IpAddr::V6(*v6)),
        _ => None,
    }
}

fn is_link_local(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_link_local(),
        IpAddr::V6(v6) => (v6.segments()[0] & 0xffc0) == 0xfe80,
    }
}

fn family(ip: IpAddr) -> AddressFamily {
    if ip.is_ipv4() {
        AddressFamily::Inet
    } else {
        AddressFamily::Inet6
    }
}

fn link_from_msg(l: &LinkMessage) -> Link {
    let mut link = Link { index: l.header.index, up: l.header.flags.contains(LinkFlags::Up), ..Default::default() };
    for a in &l.attributes {
        match a {
            LinkAttribute::IfName(n) => link.name = n.clone(),
            LinkAttribute::Address(mac) => link.mac = format_mac(mac),
            LinkAttribute::Mtu(m) => link.mtu = *m,
            LinkAttribute::Controller(c) => link.controller = Some(*c),
            LinkAttribute::Link(p) => link.peer_index = Some(*p),
            LinkAttribute::LinkInfo(infos) => {
                for i in infos {
                    if let LinkInfo::Kind(k) = i {
                        link.kind = Some(k.to_string());
                    }
                }
            }
            _ => {}
        }
    }
    link
}

pub fn format_mac(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect::<Vec<_>>().join(":")
}
