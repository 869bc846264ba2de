//! Property tests of host-local's on-disk state, which a previous run (of ours, of the reference plugin, or one that
//! died half-way) left behind and which may be corrupt: whatever the store directory holds, ADD gives an address of
//! the range that no file names, or a CNI error, never a panic; it overwrites nothing; DEL takes back exactly what
//! ADD gave; GC and lookups read anything.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::Path;

use cni_plugins::ipam::{self, Config, IpamConf, Store};
use cni_plugins::spec::Attachment;
use proptest::prelude::*;

#[derive(Debug, Clone)]
enum Entry {
    File(Vec<u8>),
    Dir,
    /// A symlink to nothing.
    Dangling,
}

fn name() -> impl Strategy<Value = String> {
    prop_oneof![
        (0u8..20).prop_map(|i| format!("10.98.0.{i}")),
        (0u8..20).prop_map(|i| format!("fd98::{i:x}")),
        Just("last_reserved_ip.0".to_string()),
        Just("last_reserved_ip.1".to_string()),
        Just("lock".to_string()),
        Just("010.98.0.3".to_string()),
        Just("::ffff:10.98.0.3".to_string()),
        "[a-z0-9.:_]{1,12}",
    ]
    .prop_filter("a file name", |n| n != "." && n != "..")
}

fn content() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        Just(b"c1\r\neth0".to_vec()),
        Just(b"c1".to_vec()),
        Just(b"c1\r\neth1".to_vec()),
        Just(b"other\r\neth0".to_vec()),
        Just(b" other \r\n eth0 \n".to_vec()),
        Just(b"\r\n".to_vec()),
        (0u8..20).prop_map(|i| format!("10.98.0.{i}").into_bytes()),
        (0u8..20).prop_map(|i| format!("fd98::{i:x}\n").into_bytes()),
        prop::collection::vec(any::<u8>(), 0..64),
    ]
}

fn entry() -> impl Strategy<Value = Entry> {
    prop_oneof![8 => content().prop_map(Entry::File), 1 => Just(Entry::Dir), 1 => Just(Entry::Dangling)]
}

fn config(dir: &Path, dual_stack: bool, split: bool) -> Config {
    let v4 = if split {
        r#"[{"subnet":"10.98.0.0/28","rangeStart":"10.98.0.9"},{"subnet":"10.98.1.0/30"}]"#
    } else {
        r#"[{"subnet":"10.98.0.0/28"}]"#
    };
    let ranges = if dual_stack { format!(r#"[{v4},[{{"subnet":"fd98::/124"}}]]"#) } else { format!("[{v4}]") };
    let ipam: IpamConf = serde_json::from_str(&format!(r#"{{"ranges":{ranges}}}"#)).unwrap();
    let mut c = Config::from_ipam("net", &ipam).unwrap();
    c.data_dir = dir.to_path_buf();
    c
}

/// The store directory's entries: name to content (`None` for what is not a regular file).
fn snapshot(dir: &Path) -> BTreeMap<String, Option<Vec<u8>>> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            let regular = e.file_type().unwrap().is_file();
            (e.file_name().to_string_lossy().into_owned(), regular.then(|| std::fs::read(e.path()).unwrap()))
        })
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

    #[test]
    fn any_store_gives_a_free_address_or_an_error(
        planted in prop::collection::btree_map(name(), entry(), 0..24),
        dual_stack in any::<bool>(),
        split in any::<bool>(),
    ) {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("net");
        std::fs::create_dir(&dir).unwrap();
        for (name, e) in &planted {
            let path = dir.join(name);
            match e {
                Entry::File(c) => std::fs::write(&path, c).unwrap(),
                Entry::Dir => std::fs::create_dir(&path).unwrap(),
                Entry::Dangling => std::os::unix::fs::symlink(tmp.path().join("nowhere"), &path).unwrap(),
            }
        }
        let cfg = config(&dir, dual_stack, split);
        let before = snapshot(&dir);
        // An entry names an address in any spelling ("fd98::0002" is fd98::2).
        let names = |ip: IpAddr, n: &str| n.parse::<IpAddr>().is_ok_and(|p| p == ip);
        let taken = |ip: IpAddr| before.keys().any(|n| names(ip, n));
        if matches!(planted.get("lock"), Some(Entry::Dir)) {
            // No lock, no store: an I/O error.
            let e = ipam::allocate(&cfg, "c1", "eth0").unwrap_err();
            prop_assert_eq!(e.code, cni_plugins::error::ERR_IO);
            prop_assert_eq!(snapshot(&dir), before);
            return Ok(());
        }

        match ipam::allocate(&cfg, "c1", "eth0") {
            Ok(ips) => {
                prop_assert_eq!(ips.len(), cfg.range_sets.len());
                for (ip, set) in ips.iter().zip(&cfg.range_sets) {
                    let a = ip.address.addr();
                    let range = set.iter().find(|r| r.contains(a));
                    prop_assert!(range.is_some(), "{} outside its range set", a);
                    prop_assert!(Some(a) != range.and_then(|r| r.gateway), "{} is the gateway", a);
                    prop_assert!(!taken(a), "{} was already named in the store", a);
                    prop_assert_eq!(std::fs::read(dir.join(a.to_string())).unwrap(), b"c1\r\neth0");
                }
                // Nothing else changed but the round-robin markers.
                let after = snapshot(&dir);
                for (name, was) in &before {
                    if !name.starts_with("last_reserved_ip.") {
                        prop_assert_eq!(after.get(name), Some(was), "{} changed", name);
                    }
                }
                // DEL takes back what ADD gave, and (as the reference's ReleaseByID) any other file naming this
                // attachment, nothing else.
                let released = Store::open(&dir).unwrap().release_by_id("c1", "eth0").unwrap();
                for ip in &ips {
                    prop_assert!(released.contains(&ip.address.addr()));
                    prop_assert!(!dir.join(ip.address.addr().to_string()).exists());
                }
                for ip in released.iter().filter(|ip| !ips.iter().any(|i| i.address.addr() == **ip)) {
                    let held = before.iter().any(|(n, c)| {
                        names(*ip, n) && c.as_ref().is_some_and(|c| String::from_utf8_lossy(c).contains("c1\r\neth0"))
                    });
                    prop_assert!(held, "{} released", ip);
                }
            }
            Err(e) if e.code == cni_plugins::error::ERR_IO => {
                // Only a store whose round-robin marker is not a file cannot be written.
                let broken = planted.iter().any(|(n, en)| n.starts_with("last_reserved_ip.") && !matches!(en, Entry::File(_)));
                prop_assert!(broken, "{}", e);
                let addresses = |m: BTreeMap<String, Option<Vec<u8>>>| -> BTreeMap<String, Option<Vec<u8>>> {
                    m.into_iter().filter(|(n, _)| n != "lock" && !n.starts_with("last_reserved_ip.")).collect()
                };
                prop_assert_eq!(addresses(snapshot(&dir)), addresses(before.clone()), "an address stayed reserved");
            }
            Err(e) => {
                prop_assert_eq!(e.code, cni_plugins::error::ERR_INTERNAL, "{}", e);
                if e.msg.contains("no IP addresses available") {
                    // Every address of some set is named by an entry (or is the gateway).
                    let full = cfg.range_sets.iter().any(|set| {
                        set.iter().all(|r| {
                            (ipam::to_u128(r.start)..=ipam::to_u128(r.end))
                                .map(|v| ipam::from_u128(v, r.start.is_ipv6()))
                                .all(|ip| Some(ip) == r.gateway || taken(ip))
                        })
                    });
                    prop_assert!(full, "{}", e);
                } else {
                    // A duplicate: a file in the range names this container.
                    prop_assert!(e.msg.contains("duplicate allocation"), "{}", e);
                    let named = planted.iter().any(|(n, en)| {
                        n.parse::<IpAddr>().is_ok_and(|ip| cfg.range_sets.iter().flatten().any(|r| r.contains(ip)))
                            && matches!(en, Entry::File(c) if String::from_utf8_lossy(c).contains("c1"))
                    });
                    prop_assert!(named, "{}", e);
                }
                // A failed ADD leaves no address behind.
                let after = snapshot(&dir);
                for name in after.keys() {
                    prop_assert!(before.contains_key(name) || name.starts_with("last_reserved_ip.") || name == "lock", "{} left", name);
                }
            }
        }

        // GC keeps the attachments still in use and reads anything else without failing.
        let keep = [Attachment { container_id: "other".into(), ifname: "eth0".into() }];
        prop_assert!(ipam::gc(&cfg, &keep).is_ok());
        let store = Store::open(&dir).unwrap();
        prop_assert!(store.find("c1", "eth0").unwrap().is_empty());
        for (ip, id, _) in store.allocations().unwrap() {
            prop_assert_eq!(&id, "other", "{} kept", ip);
        }
    }
}
