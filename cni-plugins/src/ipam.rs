//! host-local IPAM: configuration, the on-disk store and the allocator.
//!
//! The store is compatible with the reference plugin's: under `<dataDir>/<network>/` one file per
//! allocated IP, named by the IP and holding `<containerID>\r\n<ifname>`, a `last_reserved_ip.<N>`
//! file per range set, and a `lock` file that every ADD/DEL/GC holds (flock) while it reads and
//! writes, so concurrent calls (of ours or of the reference plugin) never hand out one address twice.

use std::collections::HashSet;
use std::fs::{File, OpenOptions};
use std::io::{ErrorKind, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use ipnet::IpNet;
use serde::Deserialize;

use crate::error::{CniError, Result};
use crate::spec::{Attachment, Dns, IpConfig, Route};

/// The reference plugin's default state directory.
pub const DEFAULT_DATA_DIR: &str = "/var/lib/cni/networks";
const LAST_IP_PREFIX: &str = "last_reserved_ip.";
const LINE_BREAK: &str = "\r\n";

#[derive(Debug, Clone, Deserialize)]
pub struct RangeConf {
    pub subnet: IpNet,
    #[serde(rename = "rangeStart", default)]
    pub range_start: Option<IpAddr>,
    #[serde(rename = "rangeEnd", default)]
    pub range_end: Option<IpAddr>,
    #[serde(default)]
    pub gateway: Option<IpAddr>,
}

/// The `ipam` section of a host-local configuration.
#[derive(Debug, Clone, Deserialize)]
pub struct IpamConf {
    #[serde(rename = "type", default)]
    pub ipam_type: String,
    #[serde(default)]
    pub ranges: Vec<Vec<RangeConf>>,
    /// Legacy single-range form: `subnet`, `rangeStart`, `rangeEnd`, `gateway` at the top level.
    #[serde(default)]
    pub subnet: Option<IpNet>,
    #[serde(rename = "rangeStart", default)]
    pub range_start: Option<IpAddr>,
    #[serde(rename = "rangeEnd", default)]
    pub range_end: Option<IpAddr>,
    #[serde(default)]
    pub gateway: Option<IpAddr>,
    #[serde(default)]
    pub routes: Vec<Route>,
    #[serde(rename = "dataDir", default)]
    pub data_dir: Option<PathBuf>,
    #[serde(rename = "resolvConf", default)]
    pub resolv_conf: Option<PathBuf>,
}

/// A validated range: every address from `start` to `end` inclusive may be handed out, except
/// the gateway.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Range {
    pub subnet: IpNet,
    pub start: IpAddr,
    pub end: IpAddr,
    pub gateway: Option<IpAddr>,
}

impl Range {
    pub fn contains(&self, ip: IpAddr) -> bool {
        ip.is_ipv4() == self.start.is_ipv4() && to_u128(ip) >= to_u128(self.start) && to_u128(ip) <= to_u128(self.end)
    }

    fn overlaps(&self, o: &Range) -> bool {
        self.start.is_ipv4() == o.start.is_ipv4()
            && to_u128(self.start) <= to_u128(o.end)
            && to_u128(o.start) <= to_u128(self.end)
    }

    /// Validate and fill defaults as the reference does: gateway defaults to the subnet's first
    /// address, the range to the whole subnet minus network (and, for IPv4, broadcast) address.
    pub fn from_conf(c: &RangeConf) -> Result<Range> {
        let subnet = c.subnet.trunc();
        let bits: u8 = if subnet.addr().is_ipv4() { 32 } else { 128 };
        if subnet.prefix_len() > bits - 2 {
            return Err(CniError::invalid_config(format!("network {subnet} too small to allocate from")));
        }
        let net = to_u128(subnet.network());
        let first = from_u128(net + 1, subnet.addr().is_ipv6());
        let last = {
            let b = to_u128(subnet.broadcast());
            from_u128(if subnet.addr().is_ipv4() { b - 1 } else { b }, subnet.addr().is_ipv6())
        };
        let inside = |ip: IpAddr, what: &str| -> Result<IpAddr> {
            if subnet.contains(&ip) {
                Ok(ip)
            } else {
                Err(CniError::invalid_config(format!("{what} {ip} not in network {subnet}")))
            }
        };
        let start = match c.range_start {
            Some(ip) => inside(ip, "rangeStart")?,
            None => first,
        };
        let end = match c.range_end {
            Some(ip) => inside(ip, "rangeEnd")?,
            None => last,
        };
        if to_u128(start) > to_u128(end) {
            return Err(CniError::invalid_config(format!("rangeStart {start} is after rangeEnd {end}")));
        }
        let gateway = match c.gateway {
            Some(gw) => Some(inside(gw, "gateway")?),
            None => Some(first),
        };
        Ok(Range { subnet, start, end, gateway })
    }
}

/// A validated host-local configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub range_sets: Vec<Vec<Range>>,
    pub routes: Vec<Route>,
    pub data_dir: PathBuf,
    pub resolv_conf: Option<PathBuf>,
}

impl Config {
    pub fn from_ipam(network: &str, ipam: &IpamConf) -> Result<Config> {
        if network.is_empty() || network.contains('/') || network.starts_with('.') || network.contains('\0') {
            return Err(CniError::invalid_config(format!("network name {network:?} cannot name a directory")));
        }
        let mut sets_conf = ipam.ranges.clone();
        if let Some(subnet) = ipam.subnet {
            sets_conf.insert(
                0,
                vec![RangeConf {
                    subnet,
                    range_start: ipam.range_start,
                    range_end: ipam.range_end,
                    gateway: ipam.gateway,
                }],
            );
        }
        if sets_conf.is_empty() {
            return Err(CniError::invalid_config("ipam: no IP ranges specified"));
        }
        let mut range_sets: Vec<Vec<Range>> = Vec::new();
        for set in &sets_conf {
            if set.is_empty() {
                return Err(CniError::invalid_config("ipam: empty range set"));
            }
            let ranges = set.iter().map(Range::from_conf).collect::<Result<Vec<_>>>()?;
            let v4 = ranges[0].start.is_ipv4();
            if ranges.iter().any(|r| r.start.is_ipv4() != v4) {
                return Err(CniError::invalid_config("ipam: a range set mixes IPv4 and IPv6"));
            }
            for (i, a) in ranges.iter().enumerate() {
                if ranges[..i].iter().any(|b| a.overlaps(b)) {
                    return Err(CniError::invalid_config(format!(
                        "ipam: range {}-{} overlaps another",
                        a.start, a.end
                    )));
                }
            }
            for other in &range_sets {
                if other.iter().any(|b| ranges.iter().any(|a| a.overlaps(b))) {
                    return Err(CniError::invalid_config("ipam: range sets overlap"));
                }
            }
            range_sets.push(ranges);
        }
        for r in &ipam.routes {
            if r.dst.prefix_len() > if r.dst.addr().is_ipv4() { 32 } else { 128 } {
                return Err(CniError::invalid_config(format!("ipam: invalid route {}", r.dst)));
            }
        }
        let data_dir = ipam.data_dir.clone().unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_DIR)).join(network);
        Ok(Config { range_sets, routes: ipam.routes.clone(), data_dir, resolv_conf: ipam.resolv_conf.clone() })
    }
}

pub fn to_u128(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(v4) => u32::from(v4) as u128,
        IpAddr::V6(v6) => u128::from(v6),
    }
}

pub fn from_u128(v: u128, v6: bool) -> IpAddr {
    if v6 {
        IpAddr::V6(Ipv6Addr::from(v))
    } else {
        IpAddr::V4(Ipv4Addr::from(v as u32))
    }
}

/// The on-disk store of one network, locked for as long as it lives.
pub struct Store {
    dir: PathBuf,
    _lock: File,
}

impl Store {
    /// Create the directory if needed and take the lock.
    pub fn open(dir: &Path) -> Result<Store> {
        std::fs::create_dir_all(dir).map_err(|e| CniError::io(format!("failed to create {}", dir.display()), e))?;
        let lock_path = dir.join("lock");
        let lock = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&lock_path)
            .map_err(|e| CniError::io(format!("failed to open {}", lock_path.display()), e))?;
        // SAFETY: flock on an fd we own; released when the file is closed.
        if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) } != 0 {
            return Err(CniError::io("failed to lock IPAM store", std::io::Error::last_os_error()));
        }
        Ok(Store { dir: dir.to_path_buf(), _lock: lock })
    }

    /// Every entry named by an IP, in whatever form the name spells it: its file and, when it can be read, its
    /// (container id, ifname).
    fn entries(&self) -> Result<Vec<Entry>> {
        let rd = std::fs::read_dir(&self.dir)
            .map_err(|e| CniError::io(format!("failed to read {}", self.dir.display()), e))?;
        let mut out = Vec::new();
        for ent in rd.flatten() {
            let name = ent.file_name();
            let Some(ip) = name.to_str().and_then(|n| n.parse::<IpAddr>().ok()) else { continue };
            let owner = std::fs::read_to_string(ent.path()).ok().map(|data| {
                let data = data.trim();
                match data.split_once(LINE_BREAK) {
                    Some((id, ifname)) => (id.trim().to_string(), ifname.trim().to_string()),
                    None => (data.to_string(), String::new()),
                }
            });
            out.push(Entry { ip, path: ent.path(), owner });
        }
        Ok(out)
    }

    /// Every allocation: (ip, container id, ifname). Files that are not named by an IP, or cannot be read, are
    /// skipped.
    pub fn allocations(&self) -> Result<Vec<(IpAddr, String, String)>> {
        Ok(self.entries()?.into_iter().filter_map(|e| e.owner.map(|(id, ifname)| (e.ip, id, ifname))).collect())
    }

    /// Every address an entry names, readable or not: none of them is handed out again.
    pub fn named(&self) -> Result<HashSet<IpAddr>> {
        Ok(self.entries()?.into_iter().map(|e| e.ip).collect())
    }

    fn ip_path(&self, ip: IpAddr) -> PathBuf {
        self.dir.join(ip.to_string())
    }

    /// Reserve `ip`; `Ok(false)` if it is taken.
    pub fn reserve(&self, ip: IpAddr, id: &str, ifname: &str, set_index: usize) -> Result<bool> {
        let path = self.ip_path(ip);
        let mut f = match OpenOptions::new().write(true).create_new(true).open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == ErrorKind::AlreadyExists => return Ok(false),
            Err(e) => return Err(CniError::io(format!("failed to create {}", path.display()), e)),
        };
        if let Err(e) = f.write_all(format!("{}{LINE_BREAK}{ifname}", id.trim()).as_bytes()) {
            let _ = std::fs::remove_file(&path);
            return Err(CniError::io(format!("failed to write {}", path.display()), e));
        }
        // An address whose marker cannot be written is not handed out, and not left reserved by no one either.
        let last = self.dir.join(format!("{LAST_IP_PREFIX}{set_index}"));
        if let Err(e) = std::fs::write(&last, ip.to_string()) {
            let _ = std::fs::remove_file(&path);
            return Err(CniError::io(format!("failed to write {}", last.display()), e));
        }
        Ok(true)
    }

    pub fn last_reserved(&self, set_index: usize) -> Option<IpAddr> {
        std::fs::read_to_string(self.dir.join(format!("{LAST_IP_PREFIX}{set_index}"))).ok()?.trim().parse().ok()
    }

    pub fn release(&self, ip: IpAddr) -> Result<()> {
        match std::fs::remove_file(self.ip_path(ip)) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
            Err(e) => Err(CniError::io(format!("failed to release {ip}"), e)),
        }
    }

    /// The entries held by (id, ifname); files from old versions that hold only the ID also match.
    fn held(&self, id: &str, ifname: &str) -> Result<Vec<Entry>> {
        let all = self.entries()?;
        let owned = |want_ifname: &str| -> Vec<Entry> {
            all.iter().filter(|e| e.owner.as_ref().is_some_and(|(i, f)| i == id && f == want_ifname)).cloned().collect()
        };
        let exact = owned(ifname);
        Ok(if exact.is_empty() { owned("") } else { exact })
    }

    /// The IPs held by (id, ifname); files from old versions that hold only the ID also match.
    pub fn find(&self, id: &str, ifname: &str) -> Result<Vec<IpAddr>> {
        Ok(self.held(id, ifname)?.into_iter().map(|e| e.ip).collect())
    }

    /// Releases what (id, ifname) holds, by the files' own names (as the reference's `ReleaseByID`): a file
    /// named in another spelling of its address goes too.
    pub fn release_by_id(&self, id: &str, ifname: &str) -> Result<Vec<IpAddr>> {
        let held = self.held(id, ifname)?;
        for e in &held {
            e.remove()?;
        }
        Ok(held.into_iter().map(|e| e.ip).collect())
    }
}

/// A file of the store named by an address.
#[derive(Debug, Clone)]
struct Entry {
    ip: IpAddr,
    path: PathBuf,
    owner: Option<(String, String)>,
}

impl Entry {
    fn remove(&self) -> Result<()> {
        match std::fs::remove_file(&self.path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
            Err(e) => Err(CniError::io(format!("failed to release {}", self.ip), e)),
        }
    }
}

/// Allocate one address per range set for (id, ifname).
pub fn allocate(cfg: &Config, id: &str, ifname: &str) -> Result<Vec<IpConfig>> {
    let store = Store::open(&cfg.data_dir)?;
    let held = store.find(id, ifname)?;
    let named = store.named()?;
    let mut out: Vec<IpConfig> = Vec::new();
    for (idx, set) in cfg.range_sets.iter().enumerate() {
        if let Some(ip) = held.iter().find(|ip| set.iter().any(|r| r.contains(**ip))) {
            for done in &out {
                let _ = store.release(done.address.addr());
            }
            return Err(CniError::internal(format!(
                "{ip} has been allocated to {id}, duplicate allocation is not allowed"
            )));
        }
        let free = match next_free(&store, set, idx, id, ifname, &named) {
            Ok(free) => free,
            Err(e) => {
                for done in &out {
                    let _ = store.release(done.address.addr());
                }
                return Err(e);
            }
        };
        match free {
            Some((ip, r)) => {
                let address = IpNet::new(ip, r.subnet.prefix_len()).map_err(|e| CniError::internal(e.to_string()))?;
                out.push(IpConfig { version: None, address, gateway: r.gateway, interface: None });
            }
            None => {
                for done in &out {
                    let _ = store.release(done.address.addr());
                }
                let desc: Vec<String> = set.iter().map(|r| format!("{}-{}", r.start, r.end)).collect();
                return Err(CniError::internal(format!("no IP addresses available in range set: {}", desc.join(","))));
            }
        }
    }
    Ok(out)
}

/// Round-robin: start after the last reserved IP of this set (or at the first range's start) and
/// walk every range of the set once, wrapping around.
fn next_free<'a>(
    store: &Store,
    set: &'a [Range],
    idx: usize,
    id: &str,
    ifname: &str,
    named: &HashSet<IpAddr>,
) -> Result<Option<(IpAddr, &'a Range)>> {
    let (mut ri, mut cur) = (0usize, to_u128(set[0].start));
    if let Some(last) = store.last_reserved(idx) {
        if let Some(pos) = set.iter().position(|r| r.contains(last)) {
            let l = to_u128(last);
            if l < to_u128(set[pos].end) {
                (ri, cur) = (pos, l + 1);
            } else {
                ri = (pos + 1) % set.len();
                cur = to_u128(set[ri].start);
            }
        }
    }
    let (start_ri, start_cur) = (ri, cur);
    loop {
        let r = &set[ri];
        let ip = from_u128(cur, r.start.is_ipv6());
        if Some(ip) != r.gateway && !named.contains(&ip) && store.reserve(ip, id, ifname, idx)? {
            return Ok(Some((ip, r)));
        }
        if cur < to_u128(r.end) {
            cur += 1;
        } else {
            ri = (ri + 1) % set.len();
            cur = to_u128(set[ri].start);
        }
        if ri == start_ri && cur == start_cur {
            return Ok(None);
        }
    }
}

/// Read nameserver/domain/search/options from a resolv.conf-style file.
pub fn parse_resolv_conf(path: &Path) -> Result<Dns> {
    let text =
        std::fs::read_to_string(path).map_err(|e| CniError::io(format!("failed to read {}", path.display()), e))?;
    let mut dns = Dns::default();
    for line in text.lines() {
        let mut f = line.split_whitespace();
        match f.next() {
            Some("nameserver") => dns.nameservers.extend(f.next().map(str::to_string)),
            Some("domain") => dns.domain = f.next().unwrap_or_default().to_string(),
            Some("search") => dns.search = f.map(str::to_string).collect(),
            Some("options") => dns.options = f.map(str::to_string).collect(),
            _ => {}
        }
    }
    Ok(dns)
}

/// GC: release every allocation whose (id, ifname) is not in `valid`.
pub fn gc(cfg: &Config, valid: &[Attachment]) -> Result<()> {
    if !cfg.data_dir.exists() {
        return Ok(());
    }
    let store = Store::open(&cfg.data_dir)?;
    for e in store.entries()? {
        let Some((id, ifname)) = &e.owner else { continue };
        let keep = valid.iter().any(|a| a.container_id == *id && (ifname.is_empty() || a.ifname == *ifname));
        if !keep {
            e.remove()?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(dir: &Path, json: &str) -> Config {
        let ipam: IpamConf = serde_json::from_str(json).unwrap();
        let mut c = Config::from_ipam("net", &ipam).unwrap();
        c.data_dir = dir.to_path_buf();
        c
    }

    fn tmpdir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("cni-ipam-test-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    #[test]
    fn defaults_and_round_robin() {
        let d = tmpdir("rr");
        let c = cfg(&d, r#"{"subnet":"10.98.0.0/29"}"#);
        let r = &c.range_sets[0][0];
        assert_eq!(r.start.to_string(), "10.98.0.1");
        assert_eq!(r.end.to_string(), "10.98.0.6");
        assert_eq!(r.gateway.unwrap().to_string(), "10.98.0.1");
        let a = allocate(&c, "a", "eth0").unwrap();
        assert_eq!(a[0].address.to_string(), "10.98.0.2/29");
        let b = allocate(&c, "b", "eth0").unwrap();
        assert_eq!(b[0].address.to_string(), "10.98.0.3/29");
        // Release a: the next allocation continues after the last reserved, not at .2.
        Store::open(&c.data_dir).unwrap().release_by_id("a", "eth0").unwrap();
        let x = allocate(&c, "x", "eth0").unwrap();
        assert_eq!(x[0].address.to_string(), "10.98.0.4/29");
        // Duplicate ADD is refused.
        assert!(allocate(&c, "x", "eth0").is_err());
        for id in ["c", "d", "e"] {
            allocate(&c, id, "eth0").unwrap();
        }
        // .5 .6 then wrap to .2; now full.
        assert!(allocate(&c, "f", "eth0").unwrap_err().msg.contains("no IP addresses available"));
        let content = std::fs::read_to_string(d.join("10.98.0.4")).unwrap();
        assert_eq!(content, "x\r\neth0");
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn a_marker_that_cannot_be_written_leaves_no_address_reserved() {
        let d = tmpdir("marker");
        let c = cfg(&d, r#"{"subnet":"10.98.0.0/29"}"#);
        std::fs::create_dir_all(d.join("last_reserved_ip.0")).unwrap();
        assert_eq!(allocate(&c, "a", "eth0").unwrap_err().code, crate::error::ERR_IO);
        assert!(!d.join("10.98.0.2").exists());
        std::fs::remove_dir_all(&d).unwrap();

        // The second range set fails: the first one's address goes back too.
        let d = tmpdir("marker2");
        let c = cfg(&d, r#"{"ranges":[[{"subnet":"10.98.0.0/29"}],[{"subnet":"fd98::/124"}]]}"#);
        std::fs::create_dir_all(d.join("last_reserved_ip.1")).unwrap();
        assert_eq!(allocate(&c, "a", "eth0").unwrap_err().code, crate::error::ERR_IO);
        assert!(!d.join("10.98.0.2").exists());
        assert!(!d.join("fd98::2").exists());
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn an_address_spelled_otherwise_is_neither_handed_out_again_nor_kept_by_del() {
        let d = tmpdir("spelling");
        let c = cfg(&d, r#"{"ranges":[[{"subnet":"fd98::/124"}]]}"#);
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join("fd98::0002"), "other\r\neth0").unwrap();
        std::fs::write(d.join("fd98:0::3"), "a\r\neth0").unwrap();
        // ::2 is held by "other", ::3 by "a" (which asks again: a duplicate).
        assert!(allocate(&c, "a", "eth0").unwrap_err().msg.contains("duplicate"));
        let b = allocate(&c, "b", "eth0").unwrap();
        assert_eq!(b[0].address.to_string(), "fd98::4/124");
        let store = Store::open(&d).unwrap();
        assert_eq!(store.release_by_id("a", "eth0").unwrap(), vec!["fd98::3".parse::<IpAddr>().unwrap()]);
        assert!(!d.join("fd98:0::3").exists());
        drop(store);
        gc(&c, &[]).unwrap();
        assert!(!d.join("fd98::0002").exists());
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn dual_stack_and_validation() {
        let d = tmpdir("ds");
        let c = cfg(
            &d,
            r#"{"ranges":[[{"subnet":"10.98.1.0/24","rangeStart":"10.98.1.10","rangeEnd":"10.98.1.20"}],[{"subnet":"fd98::/64"}]],
                "routes":[{"dst":"0.0.0.0/0"}]}"#,
        );
        let a = allocate(&c, "a", "eth0").unwrap();
        assert_eq!(a[0].address.to_string(), "10.98.1.10/24");
        assert_eq!(a[1].address.to_string(), "fd98::2/64");
        assert_eq!(a[1].gateway.unwrap().to_string(), "fd98::1");
        gc(&c, &[]).unwrap();
        assert!(Store::open(&c.data_dir).unwrap().allocations().unwrap().is_empty());
        std::fs::remove_dir_all(&d).unwrap();

        for bad in [
            r#"{"subnet":"10.0.0.0/31"}"#,
            r#"{"subnet":"10.0.0.0/24","rangeStart":"10.0.1.1"}"#,
            r#"{"ranges":[[{"subnet":"10.0.0.0/24"},{"subnet":"10.0.0.0/25"}]]}"#,
            r#"{"ranges":[[{"subnet":"10.0.0.0/24"},{"subnet":"fd00::/64"}]]}"#,
            r#"{}"#,
        ] {
            let ipam: IpamConf = serde_json::from_str(bad).unwrap();
            assert_eq!(Config::from_ipam("net", &ipam).unwrap_err().code, 7, "{bad}");
        }
        let ipam: IpamConf = serde_json::from_str(r#"{"subnet":"10.0.0.0/24"}"#).unwrap();
        assert!(Config::from_ipam("../etc", &ipam).is_err());
    }
}
