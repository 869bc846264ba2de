//! The node's pod network configuration: the CNI conflist containerd reads, written for this node's pod CIDR. The
//! agent never calls the plugins itself; containerd runs them per the CNI spec.

use std::path::{Path, PathBuf};

/// The network name and file the agent owns in the CNI config folder; "10-" sorts it before most others, as CRI
/// uses the first conflist it finds.
pub const NETWORK_NAME: &str = "rkubelet";
pub const CONFLIST_FILE: &str = "10-rkubelet.conflist";

#[derive(Debug, thiserror::Error)]
pub enum CniConfigError {
    #[error("pod CIDR {cidr:?}: {reason}")]
    PodCidr { cidr: String, reason: String },
    #[error("write CNI config {path}: {source}")]
    Write { path: PathBuf, source: std::io::Error },
}

fn check_cidr(cidr: &str) -> Result<(), CniConfigError> {
    let err = |reason: &str| CniConfigError::PodCidr { cidr: cidr.to_owned(), reason: reason.to_owned() };
    let (addr, len) = cidr.split_once('/').ok_or_else(|| err("want an address/prefix such as 10.88.0.0/16"))?;
    let addr: std::net::IpAddr = addr.parse().map_err(|_| err("not an IP address"))?;
    let len: u8 = len.parse().map_err(|_| err("prefix length is not a number"))?;
    let max = if addr.is_ipv4() { 30 } else { 126 };
    if len == 0 || len > max {
        return Err(err("prefix length leaves no room for pods"));
    }
    Ok(())
}

/// The conflist: our `bridge` (gateway on the bridge, masquerade off-subnet traffic, hairpin for pods reaching
/// themselves through a service) with `host-local` IPAM over the pod CIDRs, then `portmap` for `hostPort`.
pub fn conflist(pod_cidrs: &[String], bridge: &str) -> Result<String, CniConfigError> {
    for c in pod_cidrs {
        check_cidr(c)?;
    }
    let ranges: Vec<serde_json::Value> = pod_cidrs.iter().map(|c| serde_json::json!([{ "subnet": c }])).collect();
    let routes: Vec<serde_json::Value> = pod_cidrs
        .iter()
        .map(|c| serde_json::json!({ "dst": if c.contains(':') { "::/0" } else { "0.0.0.0/0" } }))
        .collect();
    let doc = serde_json::json!({
        "cniVersion": "1.0.0",
        "name": NETWORK_NAME,
        "plugins": [
            {
                "type": "bridge",
                "bridge": bridge,
                "isGateway": true,
                "ipMasq": true,
                "hairpinMode": true,
                "ipam": { "type": "host-local", "ranges": ranges, "routes": routes }
            },
            { "type": "portmap", "capabilities": { "portMappings": true } }
        ]
    });
    Ok(serde_json::to_string_pretty(&doc).unwrap_or_default())
}

/// Writes the conflist if it differs from what is there (atomically, so containerd never reads half a file).
/// Returns whether the file changed.
pub fn write_conflist(conf_dir: &Path, pod_cidrs: &[String], bridge: &str) -> Result<bool, CniConfigError> {
    let text = conflist(pod_cidrs, bridge)?;
    let path = conf_dir.join(CONFLIST_FILE);
    if std::fs::read_to_string(&path).is_ok_and(|old| old == text) {
        return Ok(false);
    }
    let write_err = |source| CniConfigError::Write { path: path.clone(), source };
    std::fs::create_dir_all(conf_dir).map_err(write_err)?;
    let tmp = conf_dir.join(format!(".{CONFLIST_FILE}.tmp"));
    std::fs::write(&tmp, &text).map_err(write_err)?;
    std::fs::rename(&tmp, &path).map_err(write_err)?;
    Ok(true)
}

/// Writes the CNI config and tells the runtime whenever the API assigns this node a pod CIDR.
pub async fn follow_pod_cidr(
    mut cidr: tokio::sync::watch::Receiver<Option<String>>,
    runtime: crate::runtime::Runtime,
    config: crate::config::KubeletConfig,
) {
    while cidr.changed().await.is_ok() {
        let Some(value) = cidr.borrow_and_update().clone() else { continue };
        let cidrs: Vec<String> = value.split(',').map(|c| c.trim().to_owned()).collect();
        match write_conflist(&config.cni_conf_dir, &cidrs, &config.cni_bridge_name) {
            Ok(true) => tracing::info!(pod_cidr = %value, "wrote pod network CNI config for the node's pod CIDR"),
            Ok(false) => {}
            Err(e) => tracing::error!(error = %e, "cannot write CNI config"),
        }
        if let Err(e) = runtime.update_pod_cidr(&value).await {
            tracing::warn!(error = %e, "UpdateRuntimeConfig failed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conflist_for_dual_stack_cidrs() {
        let text = conflist(&["10.88.0.0/16".into(), "fd00:88::/64".into()], "cni0").unwrap();
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["name"], "rkubelet");
        let bridge = &v["plugins"][0];
        assert_eq!(bridge["type"], "bridge");
        assert_eq!(bridge["bridge"], "cni0");
        assert_eq!(bridge["ipam"]["ranges"][0][0]["subnet"], "10.88.0.0/16");
        assert_eq!(bridge["ipam"]["ranges"][1][0]["subnet"], "fd00:88::/64");
        assert_eq!(bridge["ipam"]["routes"][1]["dst"], "::/0");
        assert_eq!(v["plugins"][1]["type"], "portmap");
    }

    #[test]
    fn bad_cidrs_are_clear_errors() {
        for bad in ["10.88.0.0", "10.88.0.0/33", "banana/16", "10.0.0.0/x", "10.0.0.0/31"] {
            let e = conflist(&[bad.into()], "cni0").unwrap_err();
            assert!(e.to_string().contains(bad), "{e}");
        }
    }

    #[test]
    fn written_only_when_changed() {
        let dir = tempfile::tempdir().unwrap();
        assert!(write_conflist(dir.path(), &["10.1.0.0/24".into()], "br1").unwrap());
        assert!(!write_conflist(dir.path(), &["10.1.0.0/24".into()], "br1").unwrap());
        assert!(write_conflist(dir.path(), &["10.2.0.0/24".into()], "br1").unwrap());
        assert!(std::fs::read_to_string(dir.path().join(CONFLIST_FILE)).unwrap().contains("10.2.0.0/24"));
    }
}
