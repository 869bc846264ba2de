//! Netfilter rules through the `iptables-save`/`iptables-restore` binaries (whatever backend the
//! host's alternatives select: nf_tables or legacy). One restore per change keeps a call to a
//! single exec and makes the change atomic; a file lock serialises our read-modify-write cycles.

use std::collections::HashSet;
use std::fs::File;
use std::io::Write;
use std::net::IpAddr;
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use sha2::{Digest, Sha512};

use crate::error::{CniError, Result};

/// Chain names are limited to 28 characters by the kernel's xtables (XT_EXTENSION_MAXNAMELEN 29).
const MAX_CHAIN_LEN: usize = 28;
/// The lock shared by our plugins around save + restore.
const LOCK_PATH: &str = "/run/rkubelet-cni-iptables.lock";
/// Where to look for the binaries when PATH (containerd may pass a minimal one) lacks them.
const SBIN_DIRS: &[&str] = &["/usr/sbin", "/sbin", "/usr/bin", "/bin"];

/// `CNI-<prefix><sha512(name + id) in hex>`, cut to 28 characters: the scheme of the reference
/// plugins, so one network+container maps to one chain.
pub fn chain_name(prefix: &str, network: &str, container_id: &str) -> String {
    let digest = Sha512::digest(format!("{network}{container_id}").as_bytes());
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    let mut s = format!("CNI-{prefix}{hex}");
    s.truncate(MAX_CHAIN_LEN);
    s
}

/// A rule comment naming the network and container, restricted to characters that need no
/// escaping inside a quoted iptables-restore argument.
pub fn comment(network: &str, container_id: &str) -> String {
    let clean = |s: &str| -> String {
        s.chars().filter(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-' | ':' | '/')).collect()
    };
    let mut c = format!("name: {} id: {}", clean(network), clean(container_id));
    c.truncate(200);
    c
}

fn find_binary(name: &str) -> PathBuf {
    let path = std::env::var("PATH").unwrap_or_default();
    for dir in path.split(':').filter(|d| !d.is_empty()).chain(SBIN_DIRS.iter().copied()) {
        let p = PathBuf::from(dir).join(name);
        if p.is_file() {
            return p;
        }
    }
    PathBuf::from(name)
}

fn tool(v6: bool, what: &str) -> PathBuf {
    find_binary(&format!("{}-{what}", if v6 { "ip6tables" } else { "iptables" }))
}

/// An exclusive lock held until dropped.
pub struct Lock(File);

impl Lock {
    pub fn acquire() -> Result<Lock> {
        let f = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(LOCK_PATH)
            .map_err(|e| CniError::io(format!("failed to open {LOCK_PATH}"), e))?;
        // SAFETY: flock on an fd we own.
        if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) } != 0 {
            return Err(CniError::io("failed to lock iptables", std::io::Error::last_os_error()));
        }
        Ok(Lock(f))
    }
}

impl Drop for Lock {
    fn drop(&mut self) {
        // SAFETY: as above; closing the file would release it too.
        unsafe { libc::flock(self.0.as_raw_fd(), libc::LOCK_UN) };
    }
}

/// The nat table as `iptables-save` prints it.
#[derive(Debug, Default)]
pub struct Table {
    pub chains: HashSet<String>,
    /// Rules as printed, e.g. `-A POSTROUTING -s 10.1.0.5/32 -j CNI-xyz`.
    pub rules: Vec<String>,
}

impl Table {
    pub fn parse(text: &str) -> Table {
        let mut t = Table::default();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix(':') {
                if let Some(name) = rest.split_whitespace().next() {
                    t.chains.insert(name.to_string());
                }
            } else if line.starts_with("-A ") {
                t.rules.push(line.to_string());
            }
        }
        t
    }

    /// Rules (in any chain) that jump or go to `target`.
    pub fn rules_jumping_to(&self, target: &str) -> Vec<&str> {
        self.rules
            .iter()
            .filter(|r| {
                let toks: Vec<&str> = r.split_whitespace().collect();
                toks.windows(2).any(|w| (w[0] == "-j" || w[0] == "-g") && w[1] == target)
            })
            .map(|s| s.as_str())
            .collect()
    }

    /// Whether `chain` has a rule jumping to `target`.
    pub fn has_jump(&self, chain: &str, target: &str) -> bool {
        let prefix = format!("-A {chain} ");
        self.rules_jumping_to(target).iter().any(|r| r.starts_with(&prefix))
    }
}

/// Read the nat table.
pub fn save_nat(v6: bool) -> Result<Table> {
    let bin = tool(v6, "save");
    let out = Command::new(&bin)
        .args(["-t", "nat"])
        .stdin(Stdio::null())
        .output()
        .map_err(|e| CniError::io(format!("failed to run {}", bin.display()), e))?;
    if !out.status.success() {
        return Err(CniError::internal(format!(
            "{} -t nat failed: {}",
            bin.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(Table::parse(&String::from_utf8_lossy(&out.stdout)))
}

/// Apply `lines` (without the `*nat`/`COMMIT` framing) to the nat table in one transaction.
pub fn restore_nat(v6: bool, lines: &[String]) -> Result<()> {
    if lines.is_empty() {
        return Ok(());
    }
    let mut input = String::from("*nat\n");
    for l in lines {
        input.push_str(l);
        input.push('\n');
    }
    input.push_str("COMMIT\n");
    let bin = tool(v6, "restore");
    let mut child = Command::new(&bin)
        .args(["--noflush", "-w"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| CniError::io(format!("failed to run {}", bin.display()), e))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(input.as_bytes()).map_err(|e| CniError::io("failed to write iptables-restore input", e))?;
    }
    let out = child.wait_with_output().map_err(|e| CniError::io("failed to wait for iptables-restore", e))?;
    if !out.status.success() {
        return Err(CniError::with_details(
            crate::error::ERR_INTERNAL,
            format!("{} failed: {}", bin.display(), String::from_utf8_lossy(&out.stderr).trim()),
            input,
        ));
    }
    Ok(())
}

fn host_prefix(ip: IpAddr) -> u8 {
    if ip.is_ipv4() {
        32
    } else {
        128
    }
}

/// Lines that remove every jump to `chain` and then the chain itself.
pub fn remove_chain_lines(t: &Table, chain: &str) -> Vec<String> {
    let mut lines: Vec<String> =
        t.rules_jumping_to(chain).iter().map(|r| format!("-D{}", r.strip_prefix("-A").unwrap_or(r))).collect();
    if t.chains.contains(chain) {
        lines.push(format!("-F {chain}"));
        lines.push(format!("-X {chain}"));
    }
    lines
}

/// Masquerade traffic from `pod_ip` leaving `subnet` (the bridge plugin's `ipMasq`), in `chain`.
pub fn setup_masquerade(pod_ip: IpAddr, subnet: ipnet::IpNet, chain: &str, comment: &str) -> Result<()> {
    let v6 = pod_ip.is_ipv6();
    let multicast = if v6 { "ff00::/8" } else { "224.0.0.0/4" };
    let lines = vec![
        format!(":{chain} - [0:0]"),
        format!("-A {chain} -d {} -m comment --comment \"{comment}\" -j ACCEPT", subnet.trunc()),
        format!("-A {chain} ! -d {multicast} -m comment --comment \"{comment}\" -j MASQUERADE"),
        format!("-A POSTROUTING -s {pod_ip}/{} -m comment --comment \"{comment}\" -j {chain}", host_prefix(pod_ip)),
    ];
    let _lock = Lock::acquire()?;
    restore_nat(v6, &lines)
}

/// Remove a per-container chain and the rules jumping to it; absent rules are not an error.
pub fn teardown_chain(v6: bool, chain: &str) -> Result<()> {
    let _lock = Lock::acquire()?;
    let t = save_nat(v6)?;
    restore_nat(v6, &remove_chain_lines(&t, chain))
}

/// Undo [`setup_masquerade`] for the pod's addresses with one restore of the exact rules; when
/// that fails (a rule is already gone, or was written differently) fall back to reading the table.
pub fn teardown_masquerade(v6: bool, pod_ips: &[IpAddr], chain: &str, comment: &str) -> Result<()> {
    let mut lines: Vec<String> = pod_ips
        .iter()
        .filter(|ip| ip.is_ipv6() == v6)
        .map(|ip| format!("-D POSTROUTING -s {ip}/{} -m comment --comment \"{comment}\" -j {chain}", host_prefix(*ip)))
        .collect();
    if !lines.is_empty() {
        lines.push(format!("-F {chain}"));
        lines.push(format!("-X {chain}"));
        let _lock = Lock::acquire()?;
        if restore_nat(v6, &lines).is_ok() {
            return Ok(());
        }
    }
    teardown_chain(v6, chain)
}

/// Whether the binaries for this family exist at all (a host without ip6tables skips v6 cleanup).
pub fn available(v6: bool) -> bool {
    tool(v6, "restore").is_absolute()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chain_names_are_stable_and_short() {
        let c = chain_name("", "net", "abc");
        assert_eq!(c.len(), 28);
        assert!(c.starts_with("CNI-"));
        assert_eq!(c, chain_name("", "net", "abc"));
        assert_ne!(c, chain_name("", "net", "abd"));
        assert!(chain_name("DN-", "net", "abc").starts_with("CNI-DN-"));
    }

    #[test]
    fn removal_lines() {
        let t = Table::parse(
            "*nat\n:POSTROUTING ACCEPT [0:0]\n:CNI-x - [0:0]\n-A POSTROUTING -s 10.0.0.2/32 -m comment --comment \"a b\" -j CNI-x\n-A CNI-x -d 10.0.0.0/24 -j ACCEPT\n-A POSTROUTING -j CNI-xy\nCOMMIT\n",
        );
        let l = remove_chain_lines(&t, "CNI-x");
        assert_eq!(l.len(), 3);
        assert!(l[0].starts_with("-D POSTROUTING -s 10.0.0.2/32"));
        assert_eq!(l[2], "-X CNI-x");
        assert!(remove_chain_lines(&t, "CNI-none").is_empty());
        assert!(comment("n\"et", "id").contains("name: net id: id"));
    }
}
