//! CNI spec types: network configuration, results, version handling.
//!
//! Results are held in the 1.x shape. Versions 0.3.0, 0.3.1 and 0.4.0 differ only by the `version`
//! field of each IP config ("4" or "6"), which [`CniResult::to_version`] adds or strips. 0.1.0 and
//! 0.2.0 (`ip4`/`ip6` results) are not supported: no runtime we target still emits them.

use std::net::IpAddr;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::{CniError, Result, ERR_INCOMPATIBLE_VERSION};

/// Versions this suite speaks, oldest first.
pub const SUPPORTED_VERSIONS: &[&str] = &["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"];
/// The newest version, used when a config gives none we can use (VERSION, errors).
pub const LATEST_VERSION: &str = "1.1.0";

/// A parsed `major.minor.patch`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Version(pub u32, pub u32, pub u32);

impl Version {
    pub fn parse(s: &str) -> Option<Version> {
        let mut it = s.split('.');
        let v = Version(it.next()?.parse().ok()?, it.next()?.parse().ok()?, it.next()?.parse().ok()?);
        if it.next().is_some() {
            return None;
        }
        Some(v)
    }
}

pub const V0_4_0: Version = Version(0, 4, 0);
pub const V1_0_0: Version = Version(1, 0, 0);
pub const V1_1_0: Version = Version(1, 1, 0);

/// Check that `v` is one we support; the error carries the spec's code 1.
pub fn check_version(v: &str) -> Result<Version> {
    match Version::parse(v) {
        Some(parsed) if SUPPORTED_VERSIONS.contains(&v) => Ok(parsed),
        _ => Err(CniError::with_details(
            ERR_INCOMPATIBLE_VERSION,
            format!("incompatible CNI versions: config is {v:?}, plugin supports {SUPPORTED_VERSIONS:?}"),
            "",
        )),
    }
}

/// The fields every plugin configuration has. Plugins parse their own struct for the rest.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct NetConf {
    #[serde(rename = "cniVersion", default)]
    pub cni_version: String,
    #[serde(default)]
    pub name: String,
    #[serde(rename = "type", default)]
    pub plugin_type: String,
    #[serde(default)]
    pub ipam: Option<IpamSection>,
    #[serde(rename = "prevResult", default)]
    pub prev_result: Option<Value>,
    #[serde(rename = "runtimeConfig", default)]
    pub runtime_config: Option<Value>,
    /// GC (1.1.0): the attachments the runtime still uses.
    #[serde(rename = "cni.dev/valid-attachments", default)]
    pub valid_attachments: Option<Vec<Attachment>>,
}

/// The `ipam` section: only `type` is common; the IPAM plugin parses the rest.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct IpamSection {
    #[serde(rename = "type", default)]
    pub ipam_type: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
pub struct Attachment {
    #[serde(rename = "containerID")]
    pub container_id: String,
    #[serde(default)]
    pub ifname: String,
}

/// A route as in results and in IPAM configuration.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
pub struct Route {
    pub dst: IpNet,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gw: Option<IpAddr>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub table: Option<u32>,
}

impl Route {
    pub fn new(dst: IpNet, gw: Option<IpAddr>) -> Route {
        Route { dst, gw, mtu: None, priority: None, table: None }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
pub struct Dns {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nameservers: Vec<String>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub domain: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub search: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub options: Vec<String>,
}

impl Dns {
    pub fn is_empty(&self) -> bool {
        self.nameservers.is_empty() && self.domain.is_empty() && self.search.is_empty() && self.options.is_empty()
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
pub struct Interface {
    pub name: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub mac: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
    /// The netns path for a container interface; empty for host interfaces.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub sandbox: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
pub struct IpConfig {
    /// Only in results before 1.0.0: "4" or "6".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// The address with the subnet's prefix length, e.g. "10.1.0.5/24".
    pub address: IpNet,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<IpAddr>,
    /// Index into `interfaces`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interface: Option<usize>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
pub struct CniResult {
    #[serde(rename = "cniVersion", default)]
    pub cni_version: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub interfaces: Vec<Interface>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ips: Vec<IpConfig>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<Route>,
    #[serde(default, skip_serializing_if = "Dns::is_empty")]
    pub dns: Dns,
}

impl CniResult {
    /// Parse a result (from a delegate or a `prevResult`) in any supported version.
    pub fn from_value(v: &Value) -> Result<CniResult> {
        if v.get("ip4").is_some() || v.get("ip6").is_some() {
            return Err(CniError::new(ERR_INCOMPATIBLE_VERSION, "results in the 0.1.0/0.2.0 format are not supported"));
        }
        CniResult::deserialize(v).map_err(|e| CniError::decode("failed to decode result", e))
    }

    pub fn from_slice(b: &[u8]) -> Result<CniResult> {
        let v: Value = serde_json::from_slice(b).map_err(|e| CniError::decode("failed to decode result", e))?;
        Self::from_value(&v)
    }

    /// Convert to the shape of `version` (which must be supported).
    pub fn to_version(&self, version: &str) -> CniResult {
        let mut r = self.clone();
        r.cni_version = version.to_string();
        let old = Version::parse(version).is_some_and(|v| v < V1_0_0);
        for ip in &mut r.ips {
            ip.version = old.then(|| if ip.address.addr().is_ipv4() { "4" } else { "6" }.to_string());
        }
        if Version::parse(version).is_some_and(|v| v < V1_1_0) {
            for i in &mut r.interfaces {
                i.mtu = None;
            }
            for rt in &mut r.routes {
                rt.mtu = None;
                rt.priority = None;
                rt.table = None;
            }
        }
        r
    }

    /// The IPs that belong to a container interface (one with a sandbox), or all IPs when the
    /// result names no interfaces.
    pub fn container_ips(&self) -> Vec<&IpConfig> {
        self.ips
            .iter()
            .filter(|ip| match ip.interface {
                Some(i) => self.interfaces.get(i).is_some_and(|itf| !itf.sandbox.is_empty()),
                None => true,
            })
            .collect()
    }
}

/// The answer to VERSION.
#[derive(Debug, Serialize, Deserialize)]
pub struct VersionInfo {
    #[serde(rename = "cniVersion")]
    pub cni_version: String,
    #[serde(rename = "supportedVersions")]
    pub supported_versions: Vec<String>,
}

/// `runtimeConfig.portMappings` entries (capability `portMappings`). containerd's go-cni marshals its untagged
/// struct with Go's field names (`HostPort`, ...), which the reference plugins read through Go's case-insensitive
/// JSON decoding; both spellings are accepted.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
pub struct PortMapping {
    #[serde(rename = "hostPort", alias = "HostPort")]
    pub host_port: u16,
    #[serde(rename = "containerPort", alias = "ContainerPort")]
    pub container_port: u16,
    #[serde(default = "default_protocol", alias = "Protocol")]
    pub protocol: String,
    #[serde(rename = "hostIP", alias = "HostIP", default, skip_serializing_if = "String::is_empty")]
    pub host_ip: String,
}

fn default_protocol() -> String {
    "tcp".to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_mappings_are_read_with_go_field_names_as_containerd_sends_them() {
        let m: Vec<PortMapping> = serde_json::from_str(
            r#"[{"HostPort":8080,"ContainerPort":80,"Protocol":"udp","HostIP":"127.0.0.1"},
                {"hostPort":9090,"containerPort":90}]"#,
        )
        .unwrap();
        assert_eq!(
            m,
            vec![
                PortMapping {
                    host_port: 8080,
                    container_port: 80,
                    protocol: "udp".into(),
                    host_ip: "127.0.0.1".into()
                },
                PortMapping { host_port: 9090, container_port: 90, protocol: "tcp".into(), host_ip: String::new() },
            ]
        );
    }

    #[test]
    fn version_conversion_adds_and_strips_ip_version() {
        let r = CniResult::from_slice(
            br#"{"cniVersion":"0.3.1","interfaces":[{"name":"eth0","sandbox":"/x"}],
                "ips":[{"version":"4","address":"10.1.0.5/24","gateway":"10.1.0.1","interface":0},
                       {"address":"fd00::5/64"}],
                "routes":[{"dst":"0.0.0.0/0"}],"dns":{}}"#,
        )
        .unwrap();
        let old = serde_json::to_value(r.to_version("0.4.0")).unwrap();
        assert_eq!(old["ips"][0]["version"], "4");
        assert_eq!(old["ips"][1]["version"], "6");
        assert!(old.get("dns").is_none());
        let new = serde_json::to_value(r.to_version("1.0.0")).unwrap();
        assert!(new["ips"][0].get("version").is_none());
        assert_eq!(new["cniVersion"], "1.0.0");
        assert_eq!(new["ips"][0]["address"], "10.1.0.5/24");
        assert_eq!(r.container_ips().len(), 2);
    }

    #[test]
    fn versions() {
        assert!(check_version("1.0.0").is_ok());
        assert!(check_version("0.3.1").is_ok());
        assert_eq!(check_version("0.2.0").unwrap_err().code, 1);
        assert_eq!(check_version("9.9.9").unwrap_err().code, 1);
        assert_eq!(check_version("").unwrap_err().code, 1);
    }
}
