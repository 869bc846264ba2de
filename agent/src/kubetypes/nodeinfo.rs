//! The node as admission sees it: what kubelet reads from its Node object, and resource amounts as the scheduler's
//! `framework.Resource` holds them.

use crate::kubetypes::quantity::parse_milli;
use k8s_openapi::api::core::v1::Taint;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use std::collections::BTreeMap;

pub const RESOURCE_CPU: &str = "cpu";
pub const RESOURCE_MEMORY: &str = "memory";
pub const RESOURCE_PODS: &str = "pods";
pub const RESOURCE_EPHEMERAL_STORAGE: &str = "ephemeral-storage";

/// Resource amounts as the scheduler's `framework.Resource` holds them: cpu in millicores, everything else in whole
/// units (bytes), and the scalar resources (extended, hugepages, `kubernetes.io/`-prefixed, attachable volumes).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Resources {
    pub milli_cpu: i128,
    pub memory: i128,
    pub ephemeral_storage: i128,
    pub allowed_pods: i128,
    pub scalar: BTreeMap<String, i128>,
}

impl Resources {
    /// `framework.NewResource`: a resource list (the Node's `status.allocatable`) as amounts.
    pub fn from_list(list: &BTreeMap<String, Quantity>) -> Self {
        let milli: BTreeMap<String, i128> =
            list.iter().filter_map(|(k, q)| parse_milli(&q.0).ok().map(|v| (k.clone(), v))).collect();
        Self::from_milli(&milli, true)
    }

    pub fn from_milli(list: &BTreeMap<String, i128>, with_pods: bool) -> Self {
        let mut r = Resources::default();
        for (name, &milli) in list {
            let value = value_of_milli(milli);
            match name.as_str() {
                RESOURCE_CPU => r.milli_cpu += milli,
                RESOURCE_MEMORY => r.memory += value,
                RESOURCE_EPHEMERAL_STORAGE => r.ephemeral_storage += value,
                RESOURCE_PODS if with_pods => r.allowed_pods += value,
                n if is_scalar_resource_name(n) => *r.scalar.entry(name.clone()).or_default() += value,
                _ => {}
            }
        }
        r
    }

    pub fn add(&mut self, other: &Resources) {
        self.milli_cpu += other.milli_cpu;
        self.memory += other.memory;
        self.ephemeral_storage += other.ephemeral_storage;
        for (k, v) in &other.scalar {
            *self.scalar.entry(k.clone()).or_default() += v;
        }
    }
}

/// `resource.Quantity.Value()`: whole units, rounded up.
pub fn value_of_milli(milli: i128) -> i128 {
    if milli >= 0 {
        (milli + 999) / 1000
    } else {
        milli / 1000
    }
}

/// What admission knows of the node: what kubelet reads from its Node object.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct NodeInfo {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    /// The Node's `status.allocatable`; `allowed_pods` is `maxPods`.
    pub allocatable: Resources,
    /// The Node's `spec.taints`.
    pub taints: Vec<Taint>,
}

/// `v1helper.IsExtendedResourceName`: outside `kubernetes.io/`, with a domain, and valid as a quota name.
pub fn is_extended_resource_name(name: &str) -> bool {
    !is_native_resource(name) && !name.starts_with("requests.") && is_qualified_name(&format!("requests.{name}"))
}

fn is_native_resource(name: &str) -> bool {
    !name.contains('/') || name.contains("kubernetes.io/")
}

/// `schedutil.IsScalarResourceName`.
pub fn is_scalar_resource_name(name: &str) -> bool {
    is_extended_resource_name(name)
        || name.starts_with("hugepages-")
        || name.contains("kubernetes.io/")
        || name.starts_with("attachable-volumes-")
}

/// apimachinery's `IsQualifiedName`: an optional DNS-subdomain prefix and a name of at most 63 characters.
fn is_qualified_name(value: &str) -> bool {
    let (prefix, name) = match value.split_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, value),
    };
    let name_ok = !name.is_empty()
        && name.len() <= 63
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name.ends_with(|c: char| c.is_ascii_alphanumeric())
        && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    let prefix_ok = prefix.is_none_or(|p| {
        !p.is_empty()
            && p.len() <= 253
            && p.split('.').all(|l| {
                !l.is_empty()
                    && l.len() <= 63
                    && l.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
                    && l.ends_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
                    && l.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
            })
    });
    name_ok && prefix_ok
}
