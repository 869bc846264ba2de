//! Facts derived from a pod spec the way kubelet derives them: names, defaults, image pull policy, the container hash.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Container, Pod, PodSpec};

use crate::kubetypes::quantity::parse_milli;

/// API defaults kubelet applies (through the scheme's defaulting) to pods it reads from files.
pub const DEFAULT_TERMINATION_GRACE_PERIOD_SECONDS: i64 = 30;
/// kubelet never gives a container less than this between SIGTERM and SIGKILL (`minimumGracePeriodInSeconds`).
pub const MINIMUM_GRACE_PERIOD_SECONDS: i64 = 2;
pub const DEFAULT_TERMINATION_MESSAGE_PATH: &str = "/dev/termination-log";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RestartPolicy {
    Always,
    OnFailure,
    Never,
}

pub fn restart_policy(spec: &PodSpec) -> RestartPolicy {
    match spec.restart_policy.as_deref() {
        Some("OnFailure") => RestartPolicy::OnFailure,
        Some("Never") => RestartPolicy::Never,
        _ => RestartPolicy::Always,
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PullPolicy {
    Always,
    IfNotPresent,
    Never,
}

/// True when the reference has no tag or the tag `latest` (and no digest): kubelet then defaults to `Always`.
pub fn image_is_latest(image: &str) -> bool {
    if image.contains('@') {
        return false;
    }
    let last = image.rsplit('/').next().unwrap_or(image);
    match last.split_once(':') {
        None => true,
        Some((_, tag)) => tag == "latest",
    }
}

pub fn default_pull_policy(image: &str) -> &'static str {
    if image_is_latest(image) {
        "Always"
    } else {
        "IfNotPresent"
    }
}

pub fn pull_policy(container: &Container) -> PullPolicy {
    match container.image_pull_policy.as_deref().unwrap_or_else(|| default_pull_policy(image_of(container))) {
        "Always" => PullPolicy::Always,
        "Never" => PullPolicy::Never,
        _ => PullPolicy::IfNotPresent,
    }
}

pub fn image_of(container: &Container) -> &str {
    container.image.as_deref().unwrap_or_default()
}

pub fn uid(pod: &Pod) -> &str {
    pod.metadata.uid.as_deref().unwrap_or_default()
}

pub fn name(pod: &Pod) -> &str {
    pod.metadata.name.as_deref().unwrap_or_default()
}

pub fn namespace(pod: &Pod) -> &str {
    pod.metadata.namespace.as_deref().unwrap_or("default")
}

/// `namespace/name`, the key spans and logs use.
pub fn key(pod: &Pod) -> String {
    format!("{}/{}", namespace(pod), name(pod))
}

/// kubelet's `format.Pod`: `name_namespace(uid)`, used in its event and back-off messages.
pub fn format_pod(pod: &Pod) -> String {
    format!("{}_{}({})", name(pod), namespace(pod), uid(pod))
}

pub fn spec(pod: &Pod) -> &PodSpec {
    static EMPTY: std::sync::OnceLock<PodSpec> = std::sync::OnceLock::new();
    pod.spec.as_ref().unwrap_or_else(|| EMPTY.get_or_init(PodSpec::default))
}

pub fn init_containers(pod: &Pod) -> &[Container] {
    spec(pod).init_containers.as_deref().unwrap_or_default()
}

pub fn host_network(pod: &Pod) -> bool {
    spec(pod).host_network.unwrap_or(false)
}

/// The grace period for killing this pod's containers: the deletion's if one was requested, else the spec's.
pub fn termination_grace_period(pod: &Pod) -> i64 {
    pod.metadata
        .deletion_grace_period_seconds
        .or(spec(pod).termination_grace_period_seconds)
        .unwrap_or(DEFAULT_TERMINATION_GRACE_PERIOD_SECONDS)
}

/// A stable hash of the container's spec; a running container whose hash differs from its spec's is restarted.
/// Serialization of the typed struct is deterministic (fixed field order, sorted maps), so the hash survives restarts.
pub fn container_hash(container: &Container) -> String {
    let text = serde_json::to_string(container).unwrap_or_default();
    format!("{:08x}", fnv1a32(text.as_bytes()))
}

fn fnv1a32(bytes: &[u8]) -> u32 {
    let mut hash: u32 = 0x811c_9dc5;
    for b in bytes {
        hash ^= u32::from(*b);
        hash = hash.wrapping_mul(0x0100_0193);
    }
    hash
}

/// Applies the API defaults kubelet applies to a pod decoded from a file (SetObjectDefaults_Pod), for the fields
/// the agent acts on.
pub fn apply_api_defaults(spec: &mut PodSpec) {
    spec.restart_policy.get_or_insert_with(|| "Always".into());
    spec.termination_grace_period_seconds.get_or_insert(DEFAULT_TERMINATION_GRACE_PERIOD_SECONDS);
    spec.dns_policy.get_or_insert_with(|| "ClusterFirst".into());
    spec.scheduler_name.get_or_insert_with(|| "default-scheduler".into());
    spec.enable_service_links.get_or_insert(true);
    let containers = spec.init_containers.iter_mut().flatten().chain(spec.containers.iter_mut());
    for c in containers {
        if c.image_pull_policy.is_none() {
            c.image_pull_policy = Some(default_pull_policy(image_of(c)).into());
        }
        c.termination_message_path.get_or_insert_with(|| DEFAULT_TERMINATION_MESSAGE_PATH.into());
        c.termination_message_policy.get_or_insert_with(|| "File".into());
        for p in c.ports.iter_mut().flatten() {
            p.protocol.get_or_insert_with(|| "TCP".into());
        }
        // Requests default to limits where only the limit is given.
        if let Some(res) = c.resources.as_mut() {
            if let Some(limits) = res.limits.clone() {
                let requests = res.requests.get_or_insert_with(BTreeMap::new);
                for (k, v) in limits {
                    requests.entry(k).or_insert(v);
                }
            }
        }
    }
}

fn is_dns1123_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

fn is_dns1123_subdomain(s: &str) -> bool {
    !s.is_empty() && s.len() <= 253 && s.split('.').all(is_dns1123_label)
}

/// The checks kubelet's static pod validation would fail on, for what the agent uses. Returns the first problem
/// as a sentence naming the field.
pub fn validate(pod: &Pod) -> Result<(), String> {
    let name = name(pod);
    if !is_dns1123_subdomain(name) {
        return Err(format!("metadata.name {name:?}: must be a lowercase RFC 1123 subdomain"));
    }
    let namespace = namespace(pod);
    if !is_dns1123_label(namespace) {
        return Err(format!("metadata.namespace {namespace:?}: must be a lowercase RFC 1123 label"));
    }
    let Some(spec) = pod.spec.as_ref() else { return Err("spec: required".into()) };
    if spec.containers.is_empty() {
        return Err("spec.containers: at least one container is required".into());
    }
    match spec.restart_policy.as_deref() {
        None | Some("Always" | "OnFailure" | "Never") => {}
        Some(other) => return Err(format!("spec.restartPolicy {other:?}: must be Always, OnFailure or Never")),
    }
    let mut seen = std::collections::BTreeSet::new();
    let all = spec
        .init_containers
        .iter()
        .flatten()
        .map(|c| ("spec.initContainers", c))
        .chain(spec.containers.iter().map(|c| ("spec.containers", c)));
    for (field, c) in all {
        if !is_dns1123_label(&c.name) {
            return Err(format!("{field}[{}].name: must be a lowercase RFC 1123 label", c.name));
        }
        if !seen.insert(c.name.clone()) {
            return Err(format!("{field}[{}].name: duplicate container name", c.name));
        }
        if image_of(c).trim().is_empty() {
            return Err(format!("{field}[{}].image: required", c.name));
        }
        match c.image_pull_policy.as_deref() {
            None | Some("Always" | "IfNotPresent" | "Never") => {}
            Some(other) => {
                return Err(format!(
                    "{field}[{}].imagePullPolicy {other:?}: must be Always, IfNotPresent or Never",
                    c.name
                ))
            }
        }
        if let Some(res) = &c.resources {
            for (kind, list) in [("limits", &res.limits), ("requests", &res.requests)] {
                for (r, q) in list.iter().flatten() {
                    parse_milli(&q.0).map_err(|e| format!("{field}[{}].resources.{kind}.{r}: {e}", c.name))?;
                }
            }
            for (r, limit) in res.limits.iter().flatten() {
                if let Some(request) = res.requests.as_ref().and_then(|q| q.get(r)) {
                    let (l, q) = (parse_milli(&limit.0).unwrap_or(0), parse_milli(&request.0).unwrap_or(0));
                    if q > l {
                        return Err(format!(
                            "{field}[{}].resources.requests.{r}: {} must be less than or equal to the limit {}",
                            c.name, request.0, limit.0
                        ));
                    }
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latest_detection() {
        assert!(image_is_latest("busybox"));
        assert!(image_is_latest("busybox:latest"));
        assert!(image_is_latest("127.0.0.1:5000/busybox"));
        assert!(!image_is_latest("127.0.0.1:5000/busybox:1.36"));
        assert!(!image_is_latest("busybox@sha256:abcd"));
        assert_eq!(default_pull_policy("127.0.0.1:5000/busybox"), "Always");
        assert_eq!(default_pull_policy("127.0.0.1:5000/busybox:1.36"), "IfNotPresent");
    }

    #[test]
    fn container_hash_is_stable_and_spec_sensitive() {
        let a = Container { name: "a".into(), image: Some("x:1".into()), ..Default::default() };
        let mut b = a.clone();
        assert_eq!(container_hash(&a), container_hash(&b));
        b.image = Some("x:2".into());
        assert_ne!(container_hash(&a), container_hash(&b));
    }

    #[test]
    fn validation_names_the_field() {
        let mut pod = Pod::default();
        pod.metadata.name = Some("web".into());
        pod.spec = Some(PodSpec { containers: vec![], ..Default::default() });
        assert!(validate(&pod).unwrap_err().contains("spec.containers"));
        let c = Container { name: "App".into(), image: Some("x".into()), ..Default::default() };
        pod.spec = Some(PodSpec { containers: vec![c], ..Default::default() });
        assert!(validate(&pod).unwrap_err().contains("spec.containers[App].name"));
    }
}
