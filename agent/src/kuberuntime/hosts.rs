//! The kubelet-managed `/etc/hosts` (`kubelet_pods.go: makeHostsMount`): written to `<pod-dir>/etc-hosts` before
//! each container starts and bind-mounted over the container's `/etc/hosts`, unless the container mounts something
//! there itself or the pod has no IP yet. The content is decided purely here; writing it is separate.

use std::io;
use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1::{Container, HostAlias, Pod};

use crate::kuberuntime::{dns, KubeRuntime};
use crate::pods::spec;
use crate::runtime::{Mount, MountPropagation};

/// Where containers see it.
pub const ETC_HOSTS_PATH: &str = "/etc/hosts";
/// The file's name in the pod directory (kubelet's `getEtcHostsPath`).
pub const ETC_HOSTS_FILE: &str = "etc-hosts";
const MANAGED_HOSTS_HEADER: &str = "# Kubernetes-managed hosts file.\n";
const MANAGED_HOSTS_HEADER_WITH_HOST_NETWORK: &str = "# Kubernetes-managed hosts file (host network).\n";
/// kubelet writes the file world-readable, so that containers running as any user can resolve names.
const HOSTS_FILE_MODE: u32 = 0o644;

/// kubelet's `makeMounts` rule: mount the managed file when the pod has an IP and the container does not mount
/// anything on `/etc/hosts` itself.
pub fn should_mount(container: &Container, pod_ips: &[String]) -> bool {
    !pod_ips.is_empty() && !container.volume_mounts.iter().flatten().any(|m| m.mount_path == ETC_HOSTS_PATH)
}

/// `hostsEntriesFromHostAliases`: one line per alias IP, its names tab-separated, under their own header.
fn host_alias_entries(aliases: &[HostAlias]) -> String {
    if aliases.is_empty() {
        return String::new();
    }
    let mut out = String::from("\n# Entries added by HostAliases.\n");
    for alias in aliases {
        let ip = &alias.ip;
        out.push_str(&format!("{ip}\t{}\n", alias.hostnames.iter().flatten().cloned().collect::<Vec<_>>().join("\t")));
    }
    out
}

/// kubelet's `managedHostsFileContent`: localhost entries, each pod IP with the FQDN (when the pod has a domain)
/// and the hostname, then the pod's host aliases.
pub fn managed_hosts_content(pod_ips: &[String], hostname: &str, domain: &str, aliases: &[HostAlias]) -> String {
    let mut out = String::from(MANAGED_HOSTS_HEADER);
    out.push_str("127.0.0.1\tlocalhost\n");
    out.push_str("::1\tlocalhost ip6-localhost ip6-loopback\n");
    out.push_str("fe00::0\tip6-localnet\n");
    out.push_str("fe00::0\tip6-mcastprefix\n");
    out.push_str("fe00::1\tip6-allnodes\n");
    out.push_str("fe00::2\tip6-allrouters\n");
    for ip in pod_ips {
        if domain.is_empty() {
            out.push_str(&format!("{ip}\t{hostname}\n"));
        } else {
            out.push_str(&format!("{ip}\t{hostname}.{domain}\t{hostname}\n"));
        }
    }
    out.push_str(&host_alias_entries(aliases));
    out
}

/// kubelet's `nodeHostsFileContent`: a host-network pod sees the node's own hosts file, plus its host aliases.
pub fn node_hosts_content(node_hosts: &str, aliases: &[HostAlias]) -> String {
    format!("{MANAGED_HOSTS_HEADER_WITH_HOST_NETWORK}{node_hosts}{}", host_alias_entries(aliases))
}

/// The file's content for the pod: the node's hosts file (read from `node_hosts_file`) for a host-network pod,
/// the managed one otherwise.
pub fn hosts_content(
    pod: &Pod,
    pod_ips: &[String],
    hostname: &str,
    domain: &str,
    node_hosts_file: &Path,
) -> io::Result<String> {
    let aliases = spec::spec(pod).host_aliases.as_deref().unwrap_or_default();
    if spec::host_network(pod) {
        Ok(node_hosts_content(&std::fs::read_to_string(node_hosts_file)?, aliases))
    } else {
        Ok(managed_hosts_content(pod_ips, hostname, domain, aliases))
    }
}

/// kubelet's `ensureHostsFile`: (re)writes `<pod_dir>/etc-hosts` and returns its path, to be mounted read-write
/// on `/etc/hosts`. Written to a temporary file and renamed, so a container starting meanwhile never sees half.
pub fn ensure_hosts_file(pod_dir: &Path, content: &str) -> io::Result<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(pod_dir)?;
    let path = pod_dir.join(ETC_HOSTS_FILE);
    let tmp = pod_dir.join(format!(".{ETC_HOSTS_FILE}.tmp"));
    std::fs::write(&tmp, content)?;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(HOSTS_FILE_MODE))?;
    // A bind mount follows the inode, not the name: rewriting in place keeps running containers' view current,
    // as kubelet's WriteFile does, so only the first write goes through the rename.
    if path.exists() {
        std::fs::remove_file(&tmp)?;
        std::fs::write(&path, content)?;
    } else {
        std::fs::rename(&tmp, &path)?;
    }
    Ok(path)
}

impl KubeRuntime {
    /// kubelet's `makeHostsMount` for one container: writes the pod's hosts file and mounts it read-write on
    /// `/etc/hosts`, or nothing when the container does not get it (it mounts `/etc/hosts` itself, or the pod has
    /// no IP).
    pub(super) fn etc_hosts_mount(
        &self,
        pod: &Pod,
        container: &Container,
        pod_ips: &[String],
    ) -> Result<Option<Mount>, String> {
        if !should_mount(container, pod_ips) {
            return Ok(None);
        }
        let (hostname, domain) = dns::hostname_and_domain(pod, &self.cluster_domain)?;
        let content = hosts_content(pod, pod_ips, &hostname, &domain, Path::new(ETC_HOSTS_PATH))
            .map_err(|e| format!("read the node's {ETC_HOSTS_PATH}: {e}"))?;
        let pod_dir = self.volumes.pod_dir(spec::uid(pod));
        let path = ensure_hosts_file(&pod_dir, &content)
            .map_err(|e| format!("write {}: {e}", pod_dir.join(ETC_HOSTS_FILE).display()))?;
        Ok(Some(Mount {
            container_path: ETC_HOSTS_PATH.to_owned(),
            host_path: path.display().to_string(),
            readonly: false,
            propagation: MountPropagation::Private,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{PodSpec, VolumeMount};

    fn alias(ip: &str, names: &[&str]) -> HostAlias {
        HostAlias { ip: ip.into(), hostnames: Some(names.iter().map(|n| (*n).to_owned()).collect()) }
    }

    #[test]
    fn managed_file_has_kubelets_header_localhost_lines_pod_ips_and_aliases() {
        let ips = vec!["10.88.0.5".to_owned(), "fd00::5".to_owned()];
        let text = managed_hosts_content(&ips, "web", "", &[]);
        assert_eq!(
            text,
            "# Kubernetes-managed hosts file.\n127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n\
             fe00::0\tip6-localnet\nfe00::0\tip6-mcastprefix\nfe00::1\tip6-allnodes\nfe00::2\tip6-allrouters\n\
             10.88.0.5\tweb\nfd00::5\tweb\n"
        );
        let text = managed_hosts_content(
            &ips[..1],
            "db-0",
            "db.team.svc.cluster.local",
            &[alias("123.45.67.89", &["foo", "bar"]), alias("10.0.0.1", &["baz"])],
        );
        assert!(text.contains("\n10.88.0.5\tdb-0.db.team.svc.cluster.local\tdb-0\n"), "{text}");
        assert!(
            text.ends_with("\n\n# Entries added by HostAliases.\n123.45.67.89\tfoo\tbar\n10.0.0.1\tbaz\n"),
            "{text}"
        );
    }

    #[test]
    fn host_network_pods_get_the_nodes_file_under_its_own_header() {
        let text = node_hosts_content("127.0.0.1 localhost\n192.0.2.10 node-a\n", &[alias("10.0.0.1", &["x"])]);
        assert_eq!(
            text,
            "# Kubernetes-managed hosts file (host network).\n127.0.0.1 localhost\n192.0.2.10 node-a\n\n\
             # Entries added by HostAliases.\n10.0.0.1\tx\n"
        );
        let dir = tempfile::tempdir().unwrap();
        let node_file = dir.path().join("hosts");
        std::fs::write(&node_file, "127.0.0.1 localhost\n").unwrap();
        let pod = Pod { spec: Some(PodSpec { host_network: Some(true), ..Default::default() }), ..Default::default() };
        let text = hosts_content(&pod, &["192.0.2.10".into()], "ignored", "", &node_file).unwrap();
        assert_eq!(text, "# Kubernetes-managed hosts file (host network).\n127.0.0.1 localhost\n");
        assert!(hosts_content(&pod, &[], "h", "", &dir.path().join("missing")).is_err());
    }

    #[test]
    fn a_container_mounting_etc_hosts_itself_or_a_pod_without_ip_gets_no_managed_file() {
        let ips = vec!["10.88.0.5".to_owned()];
        let plain = Container { name: "a".into(), ..Default::default() };
        assert!(should_mount(&plain, &ips));
        assert!(!should_mount(&plain, &[]));
        let own = Container {
            name: "b".into(),
            volume_mounts: Some(vec![VolumeMount {
                name: "h".into(),
                mount_path: "/etc/hosts".into(),
                ..Default::default()
            }]),
            ..Default::default()
        };
        assert!(!should_mount(&own, &ips));
    }

    #[test]
    fn the_file_is_written_world_readable_and_rewritten_in_place() {
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        let dir = tempfile::tempdir().unwrap();
        let pod_dir = dir.path().join("pods").join("uid-1");
        let path = ensure_hosts_file(&pod_dir, "one\n").unwrap();
        assert_eq!(path, pod_dir.join("etc-hosts"));
        let meta = std::fs::metadata(&path).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o644);
        ensure_hosts_file(&pod_dir, "two\n").unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "two\n");
        assert_eq!(std::fs::metadata(&path).unwrap().ino(), meta.ino(), "same inode, so mounts see the update");
    }
}
