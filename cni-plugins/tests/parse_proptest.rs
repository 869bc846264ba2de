//! Property tests: no configuration, result or environment makes the parsing and rule-building
//! code panic. Inputs are arbitrary bytes and JSON documents built from the field names and value
//! shapes the plugins look at, so most inputs get deep into the parsers. Nothing here touches the
//! system: plugin verbs that would act are not called.

use std::collections::HashMap;

use cni_plugins::bridge::BridgeConf;
use cni_plugins::ipam::{Config, IpamConf};
use cni_plugins::iptables::Table;
use cni_plugins::portmap::{self, PortmapConf};
use cni_plugins::skel::{self, CmdArgs, Plugin};
use cni_plugins::spec::CniResult;
use proptest::prelude::*;
use serde_json::{Map, Value};

const KEYS: &[&str] = &[
    "cniVersion",
    "name",
    "type",
    "ipam",
    "ranges",
    "subnet",
    "rangeStart",
    "rangeEnd",
    "gateway",
    "routes",
    "dst",
    "gw",
    "dataDir",
    "prevResult",
    "ips",
    "address",
    "interface",
    "interfaces",
    "sandbox",
    "mac",
    "version",
    "runtimeConfig",
    "portMappings",
    "hostPort",
    "containerPort",
    "protocol",
    "hostIP",
    "bridge",
    "isGateway",
    "isDefaultGateway",
    "ipMasq",
    "mtu",
    "vlan",
    "vlanTrunk",
    "snat",
    "markMasqBit",
    "dns",
    "nameservers",
    "cni.dev/valid-attachments",
    "containerID",
    "ifname",
    "externalSetMarkChain",
    "conditionsV4",
];
const STRINGS: &[&str] = &[
    "",
    "1.0.0",
    "1.1.0",
    "0.4.0",
    "0.3.1",
    "0.2.0",
    "9.9.9",
    "1.0",
    "bridge",
    "host-local",
    "tcp",
    "udp",
    "sctp",
    "10.98.0.0/24",
    "10.98.0.1",
    "10.98.0.0/31",
    "10.98.0.0/0",
    "0.0.0.0/0",
    "fd98::/64",
    "fd98::1",
    "::/0",
    "::",
    "::/128",
    "10.0.0.300",
    "10.0.0.0/33",
    "x",
    "../x",
    "a/b",
    "eth0",
    "0.0.0.0",
    "255.255.255.255/32",
    "fe80::1%eth0",
];

fn leaf() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        (0u32..70000).prop_map(Value::from),
        any::<f64>().prop_map(Value::from),
        prop::sample::select(STRINGS).prop_map(Value::from),
        ".{0,12}".prop_map(Value::from),
    ]
}

fn json() -> impl Strategy<Value = Value> {
    leaf().prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::vec((prop::sample::select(KEYS), inner), 0..8).prop_map(|kv| {
                Value::Object(kv.into_iter().map(|(k, v)| (k.to_string(), v)).collect::<Map<_, _>>())
            }),
        ]
    })
}

/// A top-level config object: mostly well-formed keys, so parsing goes past the first check.
fn config() -> impl Strategy<Value = Value> {
    (
        prop::sample::select(&["1.0.0", "0.4.0", "0.3.1", "1.1.0", "7"][..]),
        prop::collection::vec((prop::sample::select(KEYS), json()), 0..10),
    )
        .prop_map(|(v, kv)| {
            let mut m = Map::new();
            m.insert("cniVersion".into(), Value::from(v));
            m.insert("name".into(), Value::from("net"));
            for (k, val) in kv {
                m.insert(k.to_string(), val);
            }
            Value::Object(m)
        })
}

struct Nop;
impl Plugin for Nop {
    fn add(&self, a: &CmdArgs) -> cni_plugins::Result<CniResult> {
        Ok(a.prev_result()?.unwrap_or_default())
    }
    fn del(&self, _: &CmdArgs) -> cni_plugins::Result<()> {
        Ok(())
    }
    fn check(&self, _: &CmdArgs) -> cni_plugins::Result<()> {
        Ok(())
    }
}

fn env(cmd: &'static str) -> impl Fn(&str) -> Option<String> {
    let m: HashMap<&str, &str> =
        [("CNI_COMMAND", cmd), ("CNI_CONTAINERID", "c1"), ("CNI_NETNS", "/nonexistent"), ("CNI_IFNAME", "eth0")].into();
    move |k: &str| m.get(k).map(|s| s.to_string())
}

/// Everything that parses configuration, for one document.
fn exercise(stdin: &[u8]) {
    for cmd in ["ADD", "DEL", "CHECK", "VERSION", "GC", "STATUS"] {
        let out = skel::dispatch(&Nop, &env(cmd), stdin);
        // Whatever happens, stdout is JSON (or empty on success).
        if !out.stdout.is_empty() {
            assert!(serde_json::from_str::<Value>(&out.stdout).is_ok(), "{}", out.stdout);
        }
    }
    let Ok(args) = skel::parse(&env("ADD"), stdin) else { return };
    let _ = BridgeConf::load(&args);
    if let Ok(s) = PortmapConf::load(&args) {
        if let Ok(Some(prev)) = args.prev_result() {
            for ip in prev.container_ips() {
                let _ = portmap::rules(&Table::default(), "CNI-DN-x", "c", &s, ip.address.addr());
            }
        }
    }
    if let Some(ipam) = args.raw.get("ipam") {
        if let Ok(ipam) = serde_json::from_value::<IpamConf>(ipam.clone()) {
            let _ = Config::from_ipam(&args.conf.name, &ipam);
        }
    }
    if let Ok(Some(r)) = args.prev_result() {
        for v in ["0.3.0", "0.4.0", "1.0.0", "1.1.0"] {
            assert!(serde_json::to_string(&r.to_version(v)).is_ok());
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
        exercise(&bytes);
        let _ = CniResult::from_slice(&bytes);
        let _ = Table::parse(&String::from_utf8_lossy(&bytes));
        let _ = skel::parse_cni_args(&String::from_utf8_lossy(&bytes));
    }

    #[test]
    fn arbitrary_json_never_panics(v in json()) {
        exercise(v.to_string().as_bytes());
        let _ = CniResult::from_value(&v);
    }

    #[test]
    fn config_shaped_json_never_panics(v in config()) {
        exercise(v.to_string().as_bytes());
    }

    #[test]
    fn result_shaped_json_never_panics(ips in prop::collection::vec((prop::sample::select(STRINGS), prop::sample::select(STRINGS), any::<Option<usize>>()), 0..4)) {
        let ips: Vec<Value> = ips.into_iter().map(|(a, g, i)| serde_json::json!({"address": a, "gateway": g, "interface": i})).collect();
        let doc = serde_json::json!({"cniVersion": "1.0.0", "interfaces": [{"name": "eth0", "sandbox": "/x"}], "ips": ips});
        if let Ok(r) = CniResult::from_value(&doc) {
            let _ = r.container_ips();
            let _ = r.to_version("0.3.1");
        }
    }
}

// Results: what a plugin prints and a later plugin reads back as `prevResult`.

use std::net::IpAddr;

use cni_plugins::ipam::from_u128;
use cni_plugins::spec::{Dns, Interface, IpConfig, Route, SUPPORTED_VERSIONS};
use ipnet::IpNet;

fn ip() -> impl Strategy<Value = IpAddr> {
    (prop_oneof![any::<u128>(), 0u128..300, Just(u128::MAX)], any::<bool>()).prop_map(|(v, v6)| from_u128(v, v6))
}

fn net() -> impl Strategy<Value = IpNet> {
    (ip(), 0u8..=128).prop_map(|(a, p)| IpNet::new(a, if a.is_ipv4() { p % 33 } else { p }).unwrap())
}

fn result() -> impl Strategy<Value = CniResult> {
    let interface =
        ("[a-z0-9]{1,8}", "([0-9a-f]{2}:){5}[0-9a-f]{2}|", any::<Option<u32>>(), "(/var/run/netns/[a-z]{1,4})?")
            .prop_map(|(name, mac, mtu, sandbox)| Interface { name, mac, mtu, sandbox });
    let ipc = (net(), prop::option::of(ip()), prop::option::of(0usize..4))
        .prop_map(|(address, gateway, interface)| IpConfig { version: None, address, gateway, interface });
    let route = (net(), prop::option::of(ip()), any::<Option<u32>>(), any::<Option<u32>>(), any::<Option<u32>>())
        .prop_map(|(dst, gw, mtu, priority, table)| Route { dst, gw, mtu, priority, table });
    let dns = (
        prop::collection::vec("[0-9.]{1,15}", 0..3),
        "[a-z.]{0,10}",
        prop::collection::vec("[a-z.]{1,10}", 0..3),
        prop::collection::vec("[a-z:0-9]{1,10}", 0..3),
    )
        .prop_map(|(nameservers, domain, search, options)| Dns { nameservers, domain, search, options });
    (prop::collection::vec(interface, 0..4), prop::collection::vec(ipc, 0..4), prop::collection::vec(route, 0..4), dns)
        .prop_map(|(interfaces, ips, routes, dns)| CniResult {
            cni_version: "1.1.0".into(),
            interfaces,
            ips,
            routes,
            dns,
        })
}

/// The keys the spec defines for each object of a result (SPEC.md, "Success"), for the version given.
fn check_shape(v: &Value, version: &str) -> Result<(), TestCaseError> {
    let keys = |o: &Value, allowed: &[&str], what: &str| -> Result<(), TestCaseError> {
        for k in o.as_object().map(|m| m.keys().collect::<Vec<_>>()).unwrap_or_default() {
            prop_assert!(allowed.contains(&k.as_str()), "{} has {:?} in {}", what, k, version);
        }
        Ok(())
    };
    let old = version.starts_with("0.");
    let pre_1_1 = version != "1.1.0";
    keys(v, &["cniVersion", "interfaces", "ips", "routes", "dns"], "result")?;
    prop_assert_eq!(v["cniVersion"].as_str(), Some(version));
    for i in v["interfaces"].as_array().into_iter().flatten() {
        keys(i, if pre_1_1 { &["name", "mac", "sandbox"] } else { &["name", "mac", "mtu", "sandbox"] }, "interface")?;
    }
    for ip in v["ips"].as_array().into_iter().flatten() {
        keys(
            ip,
            if old { &["version", "address", "gateway", "interface"] } else { &["address", "gateway", "interface"] },
            "ip",
        )?;
        let a: IpNet =
            ip["address"].as_str().unwrap_or_default().parse().map_err(|e| TestCaseError::fail(format!("{e}")))?;
        if old {
            prop_assert_eq!(ip["version"].as_str(), Some(if a.addr().is_ipv4() { "4" } else { "6" }));
        }
    }
    for r in v["routes"].as_array().into_iter().flatten() {
        keys(
            r,
            if pre_1_1 { &["dst", "gw"] } else { &["dst", "gw", "mtu", "advmss", "priority", "table", "scope"] },
            "route",
        )?;
    }
    keys(&v["dns"], &["nameservers", "domain", "search", "options"], "dns")?;
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1000, ..ProptestConfig::default() })]

    #[test]
    fn results_round_trip_in_every_version(r in result()) {
        for &v in SUPPORTED_VERSIONS {
            let shaped = r.to_version(v);
            let text = serde_json::to_string(&shaped).unwrap();
            check_shape(&serde_json::from_str(&text).unwrap(), v)?;
            let back = CniResult::from_slice(text.as_bytes()).unwrap();
            prop_assert_eq!(&back, &shaped);
            // Read back and printed in the newest version: nothing but what the older version lacks is lost.
            let mut want = r.to_version("1.1.0");
            if v != "1.1.0" {
                want.interfaces.iter_mut().for_each(|i| i.mtu = None);
                want.routes.iter_mut().for_each(|r| (r.mtu, r.priority, r.table) = (None, None, None));
            }
            prop_assert_eq!(back.to_version("1.1.0"), want);
        }
    }
}
