//! Pod sysctls, as kubelet admits and passes them (`pkg/kubelet/sysctl`): a sysctl is allowed when it is on the
//! safe list or matches the node's `allowedUnsafeSysctls`, and is known to be namespaced by the kernel; a pod that
//! asks for any other is rejected at admission with `SysctlForbidden`. Pure: names and patterns in, verdict out.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Pod;

use crate::pods::admission::Rejection;
use crate::pods::spec;

/// The admission reason of a pod with a sysctl the node does not allow (kubelet's `ForbiddenReason`).
pub const SYSCTL_FORBIDDEN: &str = "SysctlForbidden";

/// kubelet v1.28's safe sysctls: namespaced, and without effect on other pods of the node. (The three TCP
/// keepalive/fin timeout sysctls joined the list in v1.29.)
pub const SAFE_SYSCTLS: &[&str] = &[
    "kernel.shm_rmid_forced",
    "net.ipv4.ip_local_port_range",
    "net.ipv4.tcp_syncookies",
    "net.ipv4.ping_group_range",
    "net.ipv4.ip_unprivileged_port_start",
    "net.ipv4.ip_local_reserved_ports",
    "net.ipv4.tcp_keepalive_time",
];

/// `validation.SysctlMaxLength`.
const SYSCTL_MAX_LENGTH: usize = 253;

/// The kernel namespace a sysctl lives in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SysctlNamespace {
    Ipc,
    Net,
}

impl SysctlNamespace {
    fn as_str(self) -> &'static str {
        match self {
            SysctlNamespace::Ipc => "ipc",
            SysctlNamespace::Net => "net",
        }
    }
}

/// kubelet's `NamespacedBy`: the namespace a sysctl (or a sysctl prefix) belongs to, `None` when it is not known
/// to be namespaced.
pub fn namespaced_by(sysctl: &str) -> Option<SysctlNamespace> {
    if sysctl == "kernel.sem" {
        return Some(SysctlNamespace::Ipc);
    }
    const PREFIXES: [(&str, SysctlNamespace); 4] = [
        ("kernel.shm", SysctlNamespace::Ipc),
        ("kernel.msg", SysctlNamespace::Ipc),
        ("fs.mqueue.", SysctlNamespace::Ipc),
        ("net.", SysctlNamespace::Net),
    ];
    PREFIXES.iter().find(|(p, _)| sysctl.starts_with(p)).map(|(_, ns)| *ns)
}

/// kubelet's `ConvertSysctlVariableToDotsSeparator`: a name written with `/` as its separator
/// (`net/ipv4/conf/eno2.100/rp_filter`) is turned into the dotted form, where a `.` inside a segment becomes `/`
/// (`net.ipv4.conf.eno2/100.rp_filter`), as sysctl.d(5) reads it.
pub fn to_dots(name: &str) -> String {
    let first = name.find(['.', '/']);
    if first.map(|i| &name[i..i + 1]) != Some("/") {
        return name.to_owned();
    }
    name.chars()
        .map(|c| match c {
            '/' => '.',
            '.' => '/',
            c => c,
        })
        .collect()
}

/// `policyvalidation.IsValidSysctlPattern`: segments of `[a-z0-9]([-_a-z0-9]*[a-z0-9])?` separated by `.` or `/`,
/// optionally ending in `*`.
fn is_valid_pattern(pattern: &str) -> bool {
    if pattern.is_empty() || pattern.len() > SYSCTL_MAX_LENGTH {
        return false;
    }
    let body = pattern.strip_suffix('*').unwrap_or(pattern);
    // `net.*` and a bare `*` end with a separator (or nothing) before the star.
    let body = if pattern.ends_with('*') { body.strip_suffix(['.', '/']).unwrap_or(body) } else { body };
    if body.is_empty() {
        return pattern == "*";
    }
    let segment_ok = |seg: &str| {
        let b = seg.as_bytes();
        let edge = |c: u8| c.is_ascii_lowercase() || c.is_ascii_digit();
        !b.is_empty() && edge(b[0]) && edge(b[b.len() - 1]) && b.iter().all(|&c| edge(c) || c == b'-' || c == b'_')
    };
    body.split(['.', '/']).all(segment_ok)
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AllowlistError {
    #[error("sysctl {0:?} must have at most {SYSCTL_MAX_LENGTH} characters and match the sysctl pattern format")]
    InvalidPattern(String),
    #[error("the sysctls {0:?} are not known to be namespaced")]
    NotNamespaced(String),
}

/// kubelet's `patternAllowlist`: exact sysctls and prefixes (patterns ending in `*`), each with its namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SysctlAllowlist {
    sysctls: BTreeMap<String, SysctlNamespace>,
    prefixes: BTreeMap<String, SysctlNamespace>,
}

impl SysctlAllowlist {
    /// kubelet's `NewAllowlist(append(SafeSysctlAllowlist(), allowedUnsafeSysctls...))`.
    pub fn new<S: AsRef<str>>(allowed_unsafe: &[S]) -> Result<Self, AllowlistError> {
        let mut list = SysctlAllowlist { sysctls: BTreeMap::new(), prefixes: BTreeMap::new() };
        for pattern in SAFE_SYSCTLS.iter().copied().chain(allowed_unsafe.iter().map(AsRef::as_ref)) {
            if !is_valid_pattern(pattern) {
                return Err(AllowlistError::InvalidPattern(pattern.to_owned()));
            }
            let pattern = to_dots(pattern);
            match pattern.strip_suffix('*') {
                Some(prefix) => {
                    let ns = namespaced_by(prefix).ok_or_else(|| AllowlistError::NotNamespaced(pattern.clone()))?;
                    list.prefixes.insert(prefix.to_owned(), ns);
                }
                None => {
                    let ns = namespaced_by(&pattern).ok_or_else(|| AllowlistError::NotNamespaced(pattern.clone()))?;
                    list.sysctls.insert(pattern, ns);
                }
            }
        }
        Ok(list)
    }

    /// The safe sysctls only, kubelet's list without `allowedUnsafeSysctls`.
    pub fn safe() -> Self {
        let sysctls = SAFE_SYSCTLS.iter().map(|s| ((*s).to_owned(), namespaced_by(s).unwrap_or(SysctlNamespace::Net)));
        SysctlAllowlist { sysctls: sysctls.collect(), prefixes: BTreeMap::new() }
    }

    /// kubelet's `validateSysctl`: allowed, and not in a namespace the pod shares with the host.
    pub fn validate(&self, sysctl: &str, host_network: bool, host_ipc: bool) -> Result<(), String> {
        let sysctl = to_dots(sysctl);
        let ns = self
            .sysctls
            .get(&sysctl)
            .or_else(|| self.prefixes.iter().find(|(p, _)| sysctl.starts_with(p.as_str())).map(|(_, ns)| ns))
            .ok_or_else(|| format!("{sysctl:?} not allowlisted"))?;
        match ns {
            SysctlNamespace::Ipc if host_ipc => {
                Err(format!("{sysctl:?} not allowed with host {} enabled", ns.as_str()))
            }
            SysctlNamespace::Net if host_network => {
                Err(format!("{sysctl:?} not allowed with host {} enabled", ns.as_str()))
            }
            _ => Ok(()),
        }
    }

    /// kubelet's sysctl admit handler: the first forbidden sysctl of the pod rejects it.
    pub fn admit(&self, pod: &Pod) -> Result<(), Rejection> {
        let s = spec::spec(pod);
        let sysctls = s.security_context.as_ref().and_then(|sc| sc.sysctls.as_ref());
        for sysctl in sysctls.into_iter().flatten() {
            self.validate(&sysctl.name, s.host_network.unwrap_or(false), s.host_ipc.unwrap_or(false)).map_err(|e| {
                Rejection { reason: SYSCTL_FORBIDDEN.into(), message: format!("forbidden sysctl: {e}") }
            })?;
        }
        Ok(())
    }
}

/// The pod's sysctls as the sandbox gets them, names in the dotted form.
pub fn pod_sysctls(pod: &Pod) -> BTreeMap<String, String> {
    let sc = spec::spec(pod).security_context.as_ref();
    sc.and_then(|sc| sc.sysctls.as_ref()).into_iter().flatten().map(|s| (to_dots(&s.name), s.value.clone())).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{PodSecurityContext, PodSpec, Sysctl};

    fn pod(sysctls: &[(&str, &str)], host_network: bool, host_ipc: bool) -> Pod {
        Pod {
            spec: Some(PodSpec {
                host_network: Some(host_network),
                host_ipc: Some(host_ipc),
                security_context: Some(PodSecurityContext {
                    sysctls: Some(
                        sysctls.iter().map(|(n, v)| Sysctl { name: (*n).into(), value: (*v).into() }).collect(),
                    ),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn safe_sysctls_are_admitted_and_others_are_forbidden_with_kubelets_message() {
        let list = SysctlAllowlist::safe();
        assert_eq!(list, SysctlAllowlist::new::<&str>(&[]).unwrap());
        assert_eq!(
            list.admit(&pod(&[("kernel.shm_rmid_forced", "1"), ("net.ipv4.tcp_syncookies", "1")], false, false)),
            Ok(())
        );
        assert_eq!(
            list.admit(&pod(&[("kernel.shm_rmid_forced", "1"), ("kernel.msgmax", "10000")], false, false)),
            Err(Rejection {
                reason: SYSCTL_FORBIDDEN.into(),
                message: "forbidden sysctl: \"kernel.msgmax\" not allowlisted".into()
            })
        );
        // v1.29's additions are not safe in v1.28.
        assert!(list.validate("net.ipv4.tcp_fin_timeout", false, false).is_err());
        assert_eq!(list.admit(&pod(&[], false, false)), Ok(()));
    }

    #[test]
    fn namespaced_sysctls_are_refused_when_the_namespace_is_the_hosts() {
        let list = SysctlAllowlist::new(&["kernel.msg*", "net.core.somaxconn"]).unwrap();
        assert_eq!(list.validate("kernel.msgmax", false, false), Ok(()));
        assert_eq!(
            list.validate("kernel.msgmax", false, true),
            Err("\"kernel.msgmax\" not allowed with host ipc enabled".into())
        );
        assert_eq!(
            list.admit(&pod(&[("net.ipv4.ip_local_port_range", "1024 65535")], true, false)).unwrap_err().message,
            "forbidden sysctl: \"net.ipv4.ip_local_port_range\" not allowed with host net enabled"
        );
        assert_eq!(list.validate("net.core.somaxconn", false, true), Ok(()), "hostIPC leaves net alone");
        assert!(list.validate("net.core.netdev_max_backlog", false, false).is_err());
    }

    #[test]
    fn allowed_unsafe_sysctls_must_be_valid_namespaced_patterns() {
        assert!(SysctlAllowlist::new(&["net.*"]).is_ok());
        assert!(SysctlAllowlist::new(&["fs.mqueue.*", "kernel.sem"]).is_ok());
        assert_eq!(
            SysctlAllowlist::new(&["vm.swappiness"]),
            Err(AllowlistError::NotNamespaced("vm.swappiness".into()))
        );
        assert_eq!(SysctlAllowlist::new(&["kernel.*"]), Err(AllowlistError::NotNamespaced("kernel.*".into())));
        assert_eq!(SysctlAllowlist::new(&["Net.Core"]), Err(AllowlistError::InvalidPattern("Net.Core".into())));
        assert!(SysctlAllowlist::new(&["net..x"]).is_err());
        assert!(SysctlAllowlist::new(&["net.ipv4.conf.all.-x"]).is_err());
    }

    #[test]
    fn slash_separated_names_are_converted_as_sysctl_d_reads_them() {
        assert_eq!(to_dots("net/ipv4/conf/eno2.100/rp_filter"), "net.ipv4.conf.eno2/100.rp_filter");
        assert_eq!(to_dots("net.ipv4.conf.eno2/100.rp_filter"), "net.ipv4.conf.eno2/100.rp_filter");
        assert_eq!(to_dots("kernel.shm_rmid_forced"), "kernel.shm_rmid_forced");
        let list = SysctlAllowlist::new(&["net/ipv4/conf/*"]).unwrap();
        assert_eq!(list.validate("net/ipv4/conf/eno2.100/rp_filter", false, false), Ok(()));
        let p = pod(&[("net/ipv4/ip_local_port_range", "1024 65535")], false, false);
        assert_eq!(
            pod_sysctls(&p),
            BTreeMap::from([("net.ipv4.ip_local_port_range".to_owned(), "1024 65535".to_owned())])
        );
    }
}
