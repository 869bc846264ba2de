//! Container environment, as kubelet's `makeEnvironmentVariables` builds it: `envFrom` configMaps and secrets (with
//! their prefix), then `env` in order (literal values expanded with `$(VAR)`, downward-API field and resource
//! references, configMap and secret keys), then the service link variables of the pod's namespace. Also the
//! downward-API value extraction (`fieldRef`, `resourceFieldRef`) shared with the downwardAPI volume.
//!
//! Everything here is pure: the executor fetches the referenced objects and services first.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    ConfigMap, Container, ObjectFieldSelector, Pod, ResourceFieldSelector, Secret, Service,
};

use crate::pods::spec;
use crate::resources::quantity::{parse_milli, parse_value};

/// kubelet's `masterServices`: their variables go into every pod, whatever its namespace or `enableServiceLinks`.
const MASTER_SERVICES: &[&str] = &["kubernetes"];
const DEFAULT_NAMESPACE: &str = "default";

/// kubelet's event reason for `envFrom` keys that are not valid variable names.
pub const EVENT_INVALID_ENVIRONMENT_VARIABLE_NAMES: &str = "InvalidEnvironmentVariableNames";

/// What the API said about a referenced object.
#[derive(Debug, Clone, PartialEq)]
pub enum Lookup<T> {
    Found(T),
    NotFound,
    /// Any other failure, with its message.
    Failed(String),
}

/// The node's allocatable resources: limits a container does not set default to these in the downward API.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NodeAllocatable {
    pub cpu_milli: i128,
    pub memory_bytes: i128,
    pub ephemeral_storage_bytes: i128,
}

/// Everything the environment is built from besides the pod and the container.
#[derive(Debug, Default)]
pub struct EnvSources<'a> {
    pub node_name: &'a str,
    pub host_ips: &'a [String],
    pub pod_ips: &'a [String],
    pub allocatable: NodeAllocatable,
    /// ConfigMaps and Secrets of the pod's namespace by name; `None` when the agent has no API server.
    pub config_maps: Option<&'a BTreeMap<String, Lookup<ConfigMap>>>,
    pub secrets: Option<&'a BTreeMap<String, Lookup<Secret>>>,
    /// The service link variables (`service_env`).
    pub service_env: &'a [(String, String)],
}

/// The built environment, and the warnings kubelet gives as events while building it.
#[derive(Debug, Default, PartialEq)]
pub struct ContainerEnv {
    pub envs: Vec<(String, String)>,
    /// `InvalidEnvironmentVariableNames` event messages.
    pub invalid_names: Vec<String>,
}

/// The most `$(VAR)` expansion may produce for one container, counted over all its env values together, over its
/// command and args together, and for each subPathExpr or probe command. Expansion is one pass against values
/// already defined (kubelet's `third_party/forked/golang/expansion`), so it does not recurse, but each reference
/// copies a whole value: `B=$(A)$(A)`, `C=$(B)$(B)`, ... doubles per entry, and one entry of many references to a
/// large value multiplies it. kubelet has no cap (a 10 KB spec can ask it for gigabytes); here it is 16 MiB, over
/// ten times the API server's largest object (1.5 MiB, etcd's request limit) and eight times what the kernel lets
/// one execve carry in argv and envp together under the default 8 MiB stack (a quarter of it): no container that
/// could start at all is refused.
pub const MAX_EXPANDED_BYTES: usize = 16 << 20;

/// `$(VAR)` expansion would produce more than `MAX_EXPANDED_BYTES`: the container's `CreateContainerConfigError`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("expanding $(VAR) references in {what} exceeds the limit of {MAX_EXPANDED_BYTES} bytes per container")]
pub struct ExpansionTooLarge {
    /// What was being expanded: `env NAME`, `command and args`, `subPathExpr`.
    pub what: String,
}

/// What is left of `MAX_EXPANDED_BYTES` for one group of expansions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExpansionBudget {
    left: usize,
}

impl Default for ExpansionBudget {
    fn default() -> Self {
        ExpansionBudget { left: MAX_EXPANDED_BYTES }
    }
}

impl ExpansionBudget {
    /// A budget of `bytes` (tests use small ones).
    pub fn new(bytes: usize) -> Self {
        ExpansionBudget { left: bytes }
    }

    pub fn left(&self) -> usize {
        self.left
    }
}

/// Kubernetes' `$(VAR)` expansion (third_party/forked/golang/expansion) of each string of a list (a command, its
/// args), all within one budget: a defined `$(VAR)` is replaced, an undefined one is kept as written, `$$` is an
/// escaped `$`.
pub fn expand_all<S: AsRef<str>>(
    list: &[S],
    env: &[(String, String)],
    budget: &mut ExpansionBudget,
    what: &str,
) -> Result<Vec<String>, ExpansionTooLarge> {
    // Later definitions win, as in kubelet's `envVarsToMap`.
    let lookup: BTreeMap<&str, &str> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let before = *budget;
    let expanded: Result<Vec<String>, ExpansionTooLarge> = list
        .iter()
        .map(|s| {
            expand_with(s.as_ref(), |name| lookup.get(name).copied(), budget)
                .ok_or_else(|| ExpansionTooLarge { what: what.to_owned() })
        })
        .collect();
    if expanded.is_err() {
        *budget = before;
    }
    expanded
}

/// One pass over `input`, as Go's `expansion.Expand`: `None` once the output would outgrow the budget (which is then
/// left as it was); the budget shrinks by the output's length otherwise.
fn expand_with<'v>(
    input: &str,
    lookup: impl Fn(&str) -> Option<&'v str>,
    budget: &mut ExpansionBudget,
) -> Option<String> {
    let mut out = String::with_capacity(input.len().min(budget.left));
    let left = budget.left;
    let push = |out: &mut String, piece: &str| -> Option<()> {
        if out.len().checked_add(piece.len())? > left {
            return None;
        }
        out.push_str(piece);
        Some(())
    };
    let mut rest = input;
    while let Some(pos) = rest.find('$') {
        push(&mut out, &rest[..pos])?;
        let after = &rest[pos + 1..];
        if let Some(stripped) = after.strip_prefix('$') {
            push(&mut out, "$")?;
            rest = stripped;
        } else if let Some(body) = after.strip_prefix('(') {
            match body.find(')') {
                Some(end) => {
                    let name = &body[..end];
                    match lookup(name) {
                        Some(v) => push(&mut out, v)?,
                        None => {
                            push(&mut out, "$(")?;
                            push(&mut out, name)?;
                            push(&mut out, ")")?;
                        }
                    }
                    rest = &body[end + 1..];
                }
                None => {
                    push(&mut out, "$(")?;
                    rest = body;
                }
            }
        } else {
            push(&mut out, "$")?;
            rest = after;
        }
    }
    push(&mut out, rest)?;
    budget.left -= out.len();
    Some(out)
}

/// kubelet's `ExpandContainerVolumeMounts` for `subPathExpr`: every referenced variable must be defined and
/// non-empty.
pub fn expand_sub_path_expr(expr: &str, env: &[(String, String)]) -> Result<String, String> {
    let lookup: BTreeMap<&str, &str> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let missing = std::cell::RefCell::new(std::collections::BTreeSet::new());
    let mut budget = ExpansionBudget::default();
    let expanded = expand_with(
        expr,
        |name| match lookup.get(name) {
            Some(v) if !v.is_empty() => Some(*v),
            _ => {
                missing.borrow_mut().insert(name.to_owned());
                Some("")
            }
        },
        &mut budget,
    )
    .ok_or_else(|| ExpansionTooLarge { what: "subPathExpr".into() }.to_string())?;
    let missing = missing.into_inner();
    if missing.is_empty() {
        Ok(expanded)
    } else {
        Err(format!("missing value for {}", missing.into_iter().collect::<Vec<_>>().join(", ")))
    }
}

/// Go's `%q` of a string, as `fieldpath.FormatMap` writes label and annotation values.
fn go_quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{7}' => out.push_str("\\a"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            '\u{b}' => out.push_str("\\v"),
            c if (c as u32) < 0x20 || c as u32 == 0x7f => out.push_str(&format!("\\x{:02x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// `fieldpath.FormatMap`: `key="value"` lines in key order.
pub fn format_map(map: Option<&BTreeMap<String, String>>) -> String {
    map.into_iter().flatten().map(|(k, v)| format!("{k}={}", go_quote(v))).collect::<Vec<_>>().join("\n")
}

/// `fieldpath.ExtractFieldPathAsString` over the pod's metadata, as the downwardAPI volume resolves `fieldRef`.
pub fn pod_field_value(pod: &Pod, path: &str) -> Result<String, String> {
    let meta = &pod.metadata;
    let subscript = |prefix: &str| path.strip_prefix(prefix).and_then(|r| r.strip_suffix("']"));
    if let Some(key) = subscript("metadata.labels['") {
        return Ok(meta.labels.as_ref().and_then(|l| l.get(key)).cloned().unwrap_or_default());
    }
    if let Some(key) = subscript("metadata.annotations['") {
        return Ok(meta.annotations.as_ref().and_then(|l| l.get(key)).cloned().unwrap_or_default());
    }
    Ok(match path {
        "metadata.annotations" => format_map(meta.annotations.as_ref()),
        "metadata.labels" => format_map(meta.labels.as_ref()),
        "metadata.name" => spec::name(pod).to_owned(),
        "metadata.namespace" => spec::namespace(pod).to_owned(),
        "metadata.uid" => spec::uid(pod).to_owned(),
        other => return Err(format!("unsupported fieldPath: {other}")),
    })
}

/// kubelet's `podFieldSelectorRuntimeValue`: the env variable's `fieldRef`.
fn field_ref(pod: &Pod, f: &ObjectFieldSelector, src: &EnvSources<'_>) -> Result<String, String> {
    Ok(match f.field_path.as_str() {
        "spec.nodeName" => spec::spec(pod).node_name.clone().unwrap_or_else(|| src.node_name.to_owned()),
        "spec.serviceAccountName" => spec::spec(pod).service_account_name.clone().unwrap_or_default(),
        "status.hostIP" => src.host_ips.first().cloned().unwrap_or_default(),
        "status.hostIPs" => src.host_ips.join(","),
        "status.podIP" => src.pod_ips.first().cloned().unwrap_or_default(),
        "status.podIPs" => src.pod_ips.join(","),
        path => pod_field_value(pod, path)?,
    })
}

/// A container resource quantity from its spec, or the node's allocatable for an unset limit (kubelet's
/// `defaultPodLimitsForDownwardAPI`). Values are in milli-units.
fn container_resource_milli(container: &Container, name: &str, alloc: NodeAllocatable) -> Result<i128, String> {
    let (kind, resource) = name.split_once('.').ok_or_else(|| format!("unsupported container resource : {name}"))?;
    let resources = container.resources.as_ref();
    let set = match kind {
        "limits" => resources.and_then(|r| r.limits.as_ref()),
        "requests" => resources.and_then(|r| r.requests.as_ref()),
        _ => return Err(format!("unsupported container resource : {name}")),
    };
    let known = matches!(resource, "cpu" | "memory" | "ephemeral-storage") || resource.starts_with("hugepages-");
    if !known {
        return Err(format!("unsupported container resource : {name}"));
    }
    if let Some(q) = set.and_then(|m| m.get(resource)) {
        return parse_milli(&q.0).map_err(|e| e.to_string());
    }
    Ok(match (kind, resource) {
        ("limits", "cpu") => alloc.cpu_milli,
        ("limits", "memory") => alloc.memory_bytes * 1000,
        ("limits", "ephemeral-storage") => alloc.ephemeral_storage_bytes * 1000,
        _ => 0,
    })
}

/// `resource.ExtractContainerResourceValue`: the value divided by the divisor (default 1), rounded up.
pub fn container_resource_value(
    fs: &ResourceFieldSelector,
    container: &Container,
    alloc: NodeAllocatable,
) -> Result<String, String> {
    let milli = container_resource_milli(container, &fs.resource, alloc)?;
    let divisor = fs.divisor.as_ref().map(|d| d.0.as_str()).filter(|d| !d.is_empty() && *d != "0");
    let is_cpu = fs.resource.ends_with(".cpu");
    // CPU is divided in milli-units, everything else in whole units (`Quantity.Value()` rounds up).
    let (value, div) = if is_cpu {
        (milli, divisor.map(parse_milli).transpose().map_err(|e| e.to_string())?.unwrap_or(1000))
    } else {
        let value = if milli >= 0 { (milli + 999) / 1000 } else { milli / 1000 };
        (value, divisor.map(parse_value).transpose().map_err(|e| e.to_string())?.unwrap_or(1))
    };
    if div <= 0 {
        return Err(format!("invalid divisor for {}", fs.resource));
    }
    Ok(ceil_div(value, div).to_string())
}

fn ceil_div(a: i128, b: i128) -> i128 {
    let q = a / b;
    if a % b != 0 && (a > 0) == (b > 0) {
        q + 1
    } else {
        q
    }
}

/// `validation.IsEnvVarName`.
pub fn is_env_var_name(name: &str) -> bool {
    let mut chars = name.chars();
    let Some(first) = chars.next() else { return false };
    let ok_first = first.is_ascii_alphabetic() || matches!(first, '-' | '.' | '_');
    ok_first
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_'))
        && !name.starts_with("..")
        && name != "."
}

/// kubelet's `makeEnvVariableName` for service links.
fn service_var_name(name: &str) -> String {
    name.replace('-', "_").to_uppercase()
}

/// kubelet's `getServiceEnvVarMap` and `envvars.FromServices`: the Docker-link style variables of the services in
/// the pod's namespace (with `enableServiceLinks`) and of the `kubernetes` service in `default`.
pub fn service_env(services: &[Service], namespace: &str, enable_service_links: bool) -> Vec<(String, String)> {
    let mut by_name: BTreeMap<&str, &Service> = BTreeMap::new();
    for s in services {
        let Some(cluster_ip) = s.spec.as_ref().and_then(|s| s.cluster_ip.as_deref()) else { continue };
        if cluster_ip.is_empty() || cluster_ip == "None" {
            continue;
        }
        let name = s.metadata.name.as_deref().unwrap_or_default();
        let ns = s.metadata.namespace.as_deref().unwrap_or_default();
        if ns == DEFAULT_NAMESPACE && MASTER_SERVICES.contains(&name) {
            by_name.entry(name).or_insert(s);
        } else if ns == namespace && enable_service_links {
            by_name.insert(name, s);
        }
    }
    let mut out = Vec::new();
    for (name, s) in by_name {
        let Some(spec) = s.spec.as_ref() else { continue };
        let ip = spec.cluster_ip.clone().unwrap_or_default();
        let ports = spec.ports.as_deref().unwrap_or_default();
        let Some(first) = ports.first() else { continue };
        let prefix = service_var_name(name);
        out.push((format!("{prefix}_SERVICE_HOST"), ip.clone()));
        out.push((format!("{prefix}_SERVICE_PORT"), first.port.to_string()));
        for p in ports {
            if let Some(port_name) = p.name.as_deref().filter(|n| !n.is_empty()) {
                out.push((format!("{prefix}_SERVICE_PORT_{}", service_var_name(port_name)), p.port.to_string()));
            }
        }
        let host_port = |port: i32| if ip.contains(':') { format!("[{ip}]:{port}") } else { format!("{ip}:{port}") };
        for (i, p) in ports.iter().enumerate() {
            let protocol = p.protocol.clone().filter(|p| !p.is_empty()).unwrap_or_else(|| "TCP".into());
            let lower = protocol.to_lowercase();
            let url = format!("{lower}://{}", host_port(p.port));
            if i == 0 {
                out.push((format!("{prefix}_PORT"), url.clone()));
            }
            let port_prefix = format!("{prefix}_PORT_{}_{}", p.port, protocol.to_uppercase());
            out.push((port_prefix.clone(), url));
            out.push((format!("{port_prefix}_PROTO"), lower));
            out.push((format!("{port_prefix}_PORT"), p.port.to_string()));
            out.push((format!("{port_prefix}_ADDR"), ip.clone()));
        }
    }
    out
}

/// The ConfigMaps and Secrets the container's environment reads, by name.
pub fn referenced_objects(container: &Container) -> (Vec<String>, Vec<String>) {
    let mut config_maps = Vec::new();
    let mut secrets = Vec::new();
    for f in container.env_from.iter().flatten() {
        if let Some(r) = &f.config_map_ref {
            config_maps.push(r.name.clone());
        }
        if let Some(r) = &f.secret_ref {
            secrets.push(r.name.clone());
        }
    }
    for v in container.env.iter().flatten() {
        let Some(src) = &v.value_from else { continue };
        if let Some(r) = &src.config_map_key_ref {
            config_maps.push(r.name.clone());
        }
        if let Some(r) = &src.secret_key_ref {
            secrets.push(r.name.clone());
        }
    }
    config_maps.sort();
    config_maps.dedup();
    secrets.sort();
    secrets.dedup();
    (config_maps, secrets)
}

/// An object the environment needs: `Ok(None)` when it is missing and optional (the reference is skipped).
fn lookup<'a, T>(
    objects: Option<&'a BTreeMap<String, Lookup<T>>>,
    kind: &str,
    namespace: &str,
    name: &str,
    optional: bool,
) -> Result<Option<&'a T>, String> {
    let Some(objects) = objects else {
        return Err(format!("couldn't get {kind} {namespace}/{name}, no kubeClient defined"));
    };
    match objects.get(name) {
        Some(Lookup::Found(o)) => Ok(Some(o)),
        Some(Lookup::NotFound) if optional => Ok(None),
        Some(Lookup::NotFound) | None => Err(format!("{} {name:?} not found", kind.to_lowercase())),
        Some(Lookup::Failed(e)) => Err(e.clone()),
    }
}

/// An ordered map where a later definition replaces the value but keeps the first position.
#[derive(Default)]
struct OrderedEnv {
    order: Vec<String>,
    values: BTreeMap<String, String>,
}

impl OrderedEnv {
    fn set(&mut self, k: String, v: String) {
        if self.values.insert(k.clone(), v).is_none() {
            self.order.push(k);
        }
    }
}

/// kubelet's `makeEnvironmentVariables`. An error is the container's `CreateContainerConfigError` message.
pub fn container_envs(pod: &Pod, container: &Container, src: &EnvSources<'_>) -> Result<ContainerEnv, String> {
    let namespace = spec::namespace(pod);
    let mut env = OrderedEnv::default();
    let mut invalid_names = Vec::new();
    // envFrom first; `env` then overrides it.
    for from in container.env_from.iter().flatten() {
        let prefix = from.prefix.as_deref().unwrap_or_default();
        let (kind, name, data): (&str, &str, Vec<(String, String)>) = if let Some(r) = &from.config_map_ref {
            let optional = r.optional.unwrap_or(false);
            let Some(cm) = lookup(src.config_maps, "configMap", namespace, &r.name, optional)? else { continue };
            let data = cm.data.iter().flatten().map(|(k, v)| (k.clone(), v.clone())).collect();
            ("configMap", &r.name, data)
        } else if let Some(r) = &from.secret_ref {
            let optional = r.optional.unwrap_or(false);
            let Some(s) = lookup(src.secrets, "secret", namespace, &r.name, optional)? else { continue };
            let data =
                s.data.iter().flatten().map(|(k, v)| (k.clone(), String::from_utf8_lossy(&v.0).into_owned())).collect();
            ("secret", &r.name, data)
        } else {
            continue;
        };
        let mut invalid = Vec::new();
        for (k, v) in data {
            let k = format!("{prefix}{k}");
            if !is_env_var_name(&k) {
                invalid.push(k);
                continue;
            }
            env.set(k, v);
        }
        if !invalid.is_empty() {
            invalid.sort();
            invalid_names.push(format!(
                "Keys [{}] from the EnvFrom {kind} {namespace}/{name} were skipped since they are considered invalid environment variable names.",
                invalid.join(", ")
            ));
        }
    }
    let service: BTreeMap<&str, &str> = src.service_env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let mut budget = ExpansionBudget::default();
    for var in container.env.iter().flatten() {
        let literal = var.value.as_deref().unwrap_or_default();
        let value = if !literal.is_empty() {
            let lookup = |name: &str| env.values.get(name).map(String::as_str).or_else(|| service.get(name).copied());
            expand_with(literal, lookup, &mut budget)
                .ok_or_else(|| ExpansionTooLarge { what: format!("env {}", var.name) }.to_string())?
        } else if let Some(from) = &var.value_from {
            if let Some(f) = &from.field_ref {
                field_ref(pod, f, src)?
            } else if let Some(r) = &from.resource_field_ref {
                let target = match r.container_name.as_deref().filter(|n| !n.is_empty()) {
                    Some(n) => spec::spec(pod).containers.iter().find(|c| c.name == n).unwrap_or(container),
                    None => container,
                };
                container_resource_value(r, target, src.allocatable)?
            } else if let Some(r) = &from.config_map_key_ref {
                let optional = r.optional.unwrap_or(false);
                let Some(cm) = lookup(src.config_maps, "configMap", namespace, &r.name, optional)? else { continue };
                match cm.data.as_ref().and_then(|d| d.get(&r.key)) {
                    Some(v) => v.clone(),
                    None if optional => continue,
                    None => return Err(format!("couldn't find key {} in ConfigMap {namespace}/{}", r.key, r.name)),
                }
            } else if let Some(r) = &from.secret_key_ref {
                let optional = r.optional.unwrap_or(false);
                let Some(s) = lookup(src.secrets, "secret", namespace, &r.name, optional)? else { continue };
                match s.data.as_ref().and_then(|d| d.get(&r.key)) {
                    Some(v) => String::from_utf8_lossy(&v.0).into_owned(),
                    None if optional => continue,
                    None => return Err(format!("couldn't find key {} in Secret {namespace}/{}", r.key, r.name)),
                }
            } else {
                String::new()
            }
        } else {
            String::new()
        };
        env.set(var.name.clone(), value);
    }
    let mut envs: Vec<(String, String)> =
        env.order.iter().map(|k| (k.clone(), env.values.get(k).cloned().unwrap_or_default())).collect();
    // Service variables come last and never replace one the container defines.
    for (k, v) in src.service_env {
        if !env.values.contains_key(k) {
            envs.push((k.clone(), v.clone()));
        }
    }
    Ok(ContainerEnv { envs, invalid_names })
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{
        ConfigMapEnvSource, ConfigMapKeySelector, EnvFromSource, EnvVar, EnvVarSource, PodSpec, ResourceRequirements,
        SecretKeySelector, ServicePort, ServiceSpec,
    };
    use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
    use k8s_openapi::ByteString;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    fn pod() -> Pod {
        let mut pod = Pod::default();
        pod.metadata.name = Some("web-n1".into());
        pod.metadata.namespace = Some("prod".into());
        pod.metadata.uid = Some("u1".into());
        pod.metadata.labels = Some(BTreeMap::from([("app".into(), "web".into()), ("tier".into(), "a\"b".into())]));
        pod.spec = Some(PodSpec { service_account_name: Some("builder".into()), ..Default::default() });
        pod
    }

    fn var(name: &str, value: &str) -> EnvVar {
        EnvVar { name: name.into(), value: Some(value.into()), ..Default::default() }
    }

    fn from(name: &str, src: EnvVarSource) -> EnvVar {
        EnvVar { name: name.into(), value_from: Some(src), ..Default::default() }
    }

    fn field(p: &str) -> EnvVarSource {
        EnvVarSource {
            field_ref: Some(ObjectFieldSelector { field_path: p.into(), ..Default::default() }),
            ..Default::default()
        }
    }

    fn resource(r: &str, divisor: Option<&str>) -> EnvVarSource {
        EnvVarSource {
            resource_field_ref: Some(ResourceFieldSelector {
                resource: r.into(),
                divisor: divisor.map(|d| Quantity(d.into())),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn container(vars: Vec<EnvVar>) -> Container {
        Container { name: "app".into(), env: Some(vars), ..Default::default() }
    }

    fn expand(input: &str, env: &[(String, String)]) -> String {
        let mut budget = ExpansionBudget::default();
        expand_all(&[input], env, &mut budget, "test").unwrap().remove(0)
    }

    #[test]
    fn expansion_follows_kubernetes_rules() {
        let e = env(&[("A", "one"), ("B", "two")]);
        assert_eq!(expand("$(A)-$(B)", &e), "one-two");
        assert_eq!(expand("$(MISSING)", &e), "$(MISSING)");
        assert_eq!(expand("$$(A)", &e), "$(A)");
        assert_eq!(expand("$$$(A)", &e), "$one");
        assert_eq!(expand("cost $5", &e), "cost $5");
        assert_eq!(expand("$(A", &e), "$(A");
        assert_eq!(expand("end$", &e), "end$");
        assert_eq!(expand("$()", &e), "$()");
    }

    /// A doubling chain: `A0=x`, `A<n>=$(A<n-1>)$(A<n-1>)`. A few hundred bytes of spec.
    fn doubling_chain(levels: usize) -> Vec<EnvVar> {
        let mut vars = vec![var("A0", "x")];
        for i in 1..=levels {
            vars.push(var(&format!("A{i}"), &format!("$(A{})$(A{})", i - 1, i - 1)));
        }
        vars
    }

    #[test]
    fn an_exponential_env_chain_is_refused_once_past_the_cap() {
        // 2^26 bytes at the last level, 128 MiB over the chain: refused where the running total passes 16 MiB.
        let src = EnvSources::default();
        let err = container_envs(&pod(), &container(doubling_chain(26)), &src).map(|e| e.envs.len()).unwrap_err();
        assert_eq!(err, "expanding $(VAR) references in env A24 exceeds the limit of 16777216 bytes per container");
        // Up to the cap it expands as kubelet does.
        let got = container_envs(&pod(), &container(doubling_chain(23)), &src).unwrap().envs;
        assert_eq!(got.last().map(|(k, v)| (k.as_str(), v.len())), Some(("A23", 1 << 23)));
        // One entry referencing a large value many times is bounded the same way.
        let big = "y".repeat(1 << 20);
        let many = "$(BIG)".repeat(17);
        let vars = vec![var("BIG", &big), var("MANY", &many)];
        let err = container_envs(&pod(), &container(vars), &src).map(|e| e.envs.len()).unwrap_err();
        assert!(err.contains("env MANY exceeds the limit"), "{err}");
    }

    #[test]
    fn command_args_and_sub_paths_are_bounded_too() {
        let e = env(&[("BIG", &"z".repeat(1 << 20))]);
        let mut budget = ExpansionBudget::default();
        let args: Vec<String> = (0..9).map(|_| "$(BIG)$(BIG)".to_owned()).collect();
        let err = expand_all(&args, &e, &mut budget, "command and args").map(|v| v.len()).unwrap_err();
        assert_eq!(
            err.to_string(),
            "expanding $(VAR) references in command and args exceeds the limit of 16777216 bytes per container"
        );
        assert_eq!(budget, ExpansionBudget::default(), "a refused expansion takes nothing from the budget");
        let mut budget = ExpansionBudget::default();
        let got = expand_all(&args[..7], &e, &mut budget, "command and args").unwrap();
        assert_eq!(budget.left(), MAX_EXPANDED_BYTES - 14 * (1 << 20));
        assert_eq!(got.iter().map(String::len).sum::<usize>(), 14 << 20);
        let bomb = "$(BIG)".repeat(17);
        assert_eq!(
            expand_sub_path_expr(&bomb, &e),
            Err("expanding $(VAR) references in subPathExpr exceeds the limit of 16777216 bytes per container".into())
        );
    }

    #[test]
    fn sub_path_expressions_need_every_variable() {
        let e = env(&[("POD", "web"), ("EMPTY", "")]);
        assert_eq!(expand_sub_path_expr("logs/$(POD)", &e), Ok("logs/web".into()));
        assert_eq!(expand_sub_path_expr("$(EMPTY)/$(NOPE)", &e), Err("missing value for EMPTY, NOPE".into()));
    }

    #[test]
    fn field_refs_and_literals_expand_in_order() {
        let c = container(vec![
            from("POD", field("metadata.name")),
            from("IP", field("status.podIP")),
            from("IPS", field("status.podIPs")),
            from("HOST", field("status.hostIP")),
            from("SA", field("spec.serviceAccountName")),
            from("APP", field("metadata.labels['app']")),
            from("LABELS", field("metadata.labels")),
            var("GREETING", "hi from $(POD) at $(IP), $(LATER)"),
            var("LATER", "x"),
        ]);
        let src = EnvSources {
            node_name: "n1",
            host_ips: &["192.0.2.1".into()],
            pod_ips: &["10.1.0.4".into(), "fd00::4".into()],
            ..Default::default()
        };
        let got = container_envs(&pod(), &c, &src).unwrap();
        assert_eq!(
            got.envs,
            env(&[
                ("POD", "web-n1"),
                ("IP", "10.1.0.4"),
                ("IPS", "10.1.0.4,fd00::4"),
                ("HOST", "192.0.2.1"),
                ("SA", "builder"),
                ("APP", "web"),
                ("LABELS", "app=\"web\"\ntier=\"a\\\"b\""),
                ("GREETING", "hi from web-n1 at 10.1.0.4, $(LATER)"),
                ("LATER", "x"),
            ])
        );
        let bad = container(vec![from("X", field("spec.nope"))]);
        assert!(container_envs(&pod(), &bad, &src).unwrap_err().contains("spec.nope"));
    }

    #[test]
    fn resource_refs_divide_round_up_and_default_limits_to_allocatable() {
        let mut c = container(vec![
            from("CPU_LIMIT", resource("limits.cpu", None)),
            from("CPU_LIMIT_M", resource("limits.cpu", Some("1m"))),
            from("MEM_LIMIT", resource("limits.memory", None)),
            from("MEM_LIMIT_MI", resource("limits.memory", Some("1Mi"))),
            from("CPU_REQ", resource("requests.cpu", Some("1m"))),
            from("MEM_REQ", resource("requests.memory", None)),
            from("EPH", resource("limits.ephemeral-storage", Some("1Gi"))),
        ]);
        c.resources = Some(ResourceRequirements {
            requests: Some(BTreeMap::from([("cpu".into(), Quantity("250m".into()))])),
            limits: Some(BTreeMap::from([("cpu".into(), Quantity("1250m".into()))])),
            ..Default::default()
        });
        let src = EnvSources {
            allocatable: NodeAllocatable {
                cpu_milli: 2000,
                memory_bytes: 3 << 30,
                ephemeral_storage_bytes: (10 << 30) + 1,
            },
            ..Default::default()
        };
        let got = container_envs(&pod(), &c, &src).unwrap().envs;
        assert_eq!(
            got,
            env(&[
                ("CPU_LIMIT", "2"),
                ("CPU_LIMIT_M", "1250"),
                ("MEM_LIMIT", &(3u64 << 30).to_string()),
                ("MEM_LIMIT_MI", "3072"),
                ("CPU_REQ", "250"),
                ("MEM_REQ", "0"),
                ("EPH", "11"),
            ])
        );
    }

    #[test]
    fn config_map_and_secret_refs_honour_optional() {
        let cm = ConfigMap {
            data: Some(BTreeMap::from([
                ("color".into(), "blue".into()),
                ("bad key".into(), "x".into()),
                ("size".into(), "L".into()),
            ])),
            ..Default::default()
        };
        let secret = Secret {
            data: Some(BTreeMap::from([("password".into(), ByteString(b"hunter2".to_vec()))])),
            ..Default::default()
        };
        let config_maps = BTreeMap::from([("cfg".into(), Lookup::Found(cm)), ("gone".into(), Lookup::NotFound)]);
        let secrets = BTreeMap::from([("creds".into(), Lookup::Found(secret))]);
        let src = EnvSources { config_maps: Some(&config_maps), secrets: Some(&secrets), ..Default::default() };
        let cm_key = |name: &str, key: &str, optional: bool| EnvVarSource {
            config_map_key_ref: Some(ConfigMapKeySelector {
                name: name.into(),
                key: key.into(),
                optional: Some(optional),
            }),
            ..Default::default()
        };
        let mut c = container(vec![
            var("size", "S"),
            from("COLOR", cm_key("cfg", "color", false)),
            from("MISSING_OPTIONAL", cm_key("gone", "x", true)),
            from("NO_KEY_OPTIONAL", cm_key("cfg", "nope", true)),
            from(
                "PASSWORD",
                EnvVarSource {
                    secret_key_ref: Some(SecretKeySelector {
                        name: "creds".into(),
                        key: "password".into(),
                        optional: None,
                    }),
                    ..Default::default()
                },
            ),
        ]);
        c.env_from = Some(vec![EnvFromSource {
            config_map_ref: Some(ConfigMapEnvSource { name: "cfg".into(), optional: None }),
            prefix: Some("p_".into()),
            ..Default::default()
        }]);
        let got = container_envs(&pod(), &c, &src).unwrap();
        assert_eq!(
            got.envs,
            env(&[("p_color", "blue"), ("p_size", "L"), ("size", "S"), ("COLOR", "blue"), ("PASSWORD", "hunter2")])
        );
        assert_eq!(
            got.invalid_names,
            vec!["Keys [p_bad key] from the EnvFrom configMap prod/cfg were skipped since they are considered invalid environment variable names."]
        );
        let missing = container(vec![from("X", cm_key("gone", "x", false))]);
        assert_eq!(container_envs(&pod(), &missing, &src).unwrap_err(), "configmap \"gone\" not found");
        let no_key = container(vec![from("X", cm_key("cfg", "nope", false))]);
        assert_eq!(container_envs(&pod(), &no_key, &src).unwrap_err(), "couldn't find key nope in ConfigMap prod/cfg");
        let standalone = EnvSources::default();
        assert_eq!(
            container_envs(&pod(), &missing, &standalone).unwrap_err(),
            "couldn't get configMap prod/gone, no kubeClient defined"
        );
    }

    fn service(ns: &str, name: &str, ip: &str, ports: &[(Option<&str>, i32, &str)]) -> Service {
        let mut s = Service::default();
        s.metadata.name = Some(name.into());
        s.metadata.namespace = Some(ns.into());
        s.spec = Some(ServiceSpec {
            cluster_ip: Some(ip.into()),
            ports: Some(
                ports
                    .iter()
                    .map(|(n, p, proto)| ServicePort {
                        name: n.map(Into::into),
                        port: *p,
                        protocol: Some((*proto).into()),
                        ..Default::default()
                    })
                    .collect(),
            ),
            ..Default::default()
        });
        s
    }

    #[test]
    fn service_links_cover_the_namespace_and_the_master_service() {
        let services = vec![
            service("default", "kubernetes", "10.0.0.1", &[(Some("https"), 443, "TCP")]),
            service("prod", "redis-primary", "10.0.0.11", &[(None, 6379, "TCP"), (Some("metrics"), 9121, "UDP")]),
            service("prod", "headless", "None", &[(None, 80, "TCP")]),
            service("other", "db", "10.0.0.12", &[(None, 5432, "TCP")]),
        ];
        let got = service_env(&services, "prod", true);
        let expected = env(&[
            ("KUBERNETES_SERVICE_HOST", "10.0.0.1"),
            ("KUBERNETES_SERVICE_PORT", "443"),
            ("KUBERNETES_SERVICE_PORT_HTTPS", "443"),
            ("KUBERNETES_PORT", "tcp://10.0.0.1:443"),
            ("KUBERNETES_PORT_443_TCP", "tcp://10.0.0.1:443"),
            ("KUBERNETES_PORT_443_TCP_PROTO", "tcp"),
            ("KUBERNETES_PORT_443_TCP_PORT", "443"),
            ("KUBERNETES_PORT_443_TCP_ADDR", "10.0.0.1"),
            ("REDIS_PRIMARY_SERVICE_HOST", "10.0.0.11"),
            ("REDIS_PRIMARY_SERVICE_PORT", "6379"),
            ("REDIS_PRIMARY_SERVICE_PORT_METRICS", "9121"),
            ("REDIS_PRIMARY_PORT", "tcp://10.0.0.11:6379"),
            ("REDIS_PRIMARY_PORT_6379_TCP", "tcp://10.0.0.11:6379"),
            ("REDIS_PRIMARY_PORT_6379_TCP_PROTO", "tcp"),
            ("REDIS_PRIMARY_PORT_6379_TCP_PORT", "6379"),
            ("REDIS_PRIMARY_PORT_6379_TCP_ADDR", "10.0.0.11"),
            ("REDIS_PRIMARY_PORT_9121_UDP", "udp://10.0.0.11:9121"),
            ("REDIS_PRIMARY_PORT_9121_UDP_PROTO", "udp"),
            ("REDIS_PRIMARY_PORT_9121_UDP_PORT", "9121"),
            ("REDIS_PRIMARY_PORT_9121_UDP_ADDR", "10.0.0.11"),
        ]);
        assert_eq!(got, expected);
        let off = service_env(&services, "prod", false);
        assert!(off.iter().all(|(k, _)| k.starts_with("KUBERNETES_")), "{off:?}");
        assert_eq!(off.len(), 8);

        // Service variables expand in env values, and a container's own definition wins.
        let c = container(vec![var("URL", "http://$(REDIS_PRIMARY_SERVICE_HOST)"), var("KUBERNETES_PORT", "mine")]);
        let src = EnvSources { service_env: &got, ..Default::default() };
        let built = container_envs(&pod(), &c, &src).unwrap().envs;
        assert_eq!(built[0], ("URL".into(), "http://10.0.0.11".into()));
        assert_eq!(built.iter().filter(|(k, _)| k == "KUBERNETES_PORT").count(), 1);
        assert!(built.contains(&("KUBERNETES_PORT".into(), "mine".into())));
    }

    #[test]
    fn env_var_names() {
        for ok in ["A", "my.env-name", "MY_ENV.NAME", "_x", "-x"] {
            assert!(is_env_var_name(ok), "{ok}");
        }
        for bad in ["", "1A", "a b", ".", "..", "..a", "a=b"] {
            assert!(!is_env_var_name(bad), "{bad}");
        }
    }

    /// Go's `expansion.Expand` with `MappingFuncFor`, transcribed byte for byte: the reference for the properties.
    fn go_expand(input: &str, vars: &BTreeMap<String, String>) -> String {
        let b = input.as_bytes();
        let mapping = |name: &[u8]| {
            let name = String::from_utf8_lossy(name).into_owned();
            vars.get(&name).cloned().unwrap_or_else(|| format!("$({name})")).into_bytes()
        };
        let (mut buf, mut checkpoint, mut cursor) = (Vec::new(), 0, 0);
        while cursor < b.len() {
            if b[cursor] == b'$' && cursor + 1 < b.len() {
                buf.extend_from_slice(&b[checkpoint..cursor]);
                let rest = &b[cursor + 1..];
                let (read, advance) = match rest[0] {
                    b'$' => (vec![b'$'], 1),
                    b'(' => match rest[1..].iter().position(|&c| c == b')') {
                        Some(i) => (mapping(&rest[1..=i]), i + 2),
                        None => (b"$(".to_vec(), 1),
                    },
                    other => (vec![b'$', other], 1),
                };
                buf.extend_from_slice(&read);
                cursor += advance;
                checkpoint = cursor + 1;
            }
            cursor += 1;
        }
        buf.extend_from_slice(&b[checkpoint.min(b.len())..]);
        String::from_utf8(buf).unwrap()
    }

    mod props {
        use super::*;
        use proptest::prelude::*;

        /// Strings rich in the expansion syntax, plus any character now and then.
        fn syntax() -> impl Strategy<Value = String> {
            proptest::collection::vec(
                prop_oneof![
                    Just("$".to_owned()),
                    Just("(".to_owned()),
                    Just(")".to_owned()),
                    Just("$(".to_owned()),
                    "[A-C]{1,2}",
                    any::<char>().prop_map(String::from),
                ],
                0..24,
            )
            .prop_map(|parts| parts.concat())
        }

        fn vars() -> impl Strategy<Value = BTreeMap<String, String>> {
            proptest::collection::btree_map("[A-C]{1,2}", syntax(), 0..5)
        }

        proptest! {
            #[test]
            fn expansion_is_kubelets(input in syntax(), vars in vars()) {
                let env: Vec<(String, String)> = vars.clone().into_iter().collect();
                let mut budget = ExpansionBudget::default();
                let got = expand_all(&[&input], &env, &mut budget, "p").unwrap().remove(0);
                prop_assert_eq!(&got, &go_expand(&input, &vars));
                prop_assert_eq!(budget.left(), MAX_EXPANDED_BYTES - got.len());
            }

            #[test]
            fn escapes_and_unknown_references_stay_as_kubelet_leaves_them(name in "[A-Z_]{1,8}", text in "[^$()]{0,16}") {
                prop_assert_eq!(expand(&format!("$({name})"), &[]), format!("$({name})"));
                prop_assert_eq!(expand(&format!("$$({name})"), &env(&[(&name, "v")])), format!("$({name})"));
                prop_assert_eq!(expand(&format!("$$$({name})"), &env(&[(&name, "v")])), "$v");
                prop_assert_eq!(expand(&text, &env(&[(&name, "v")])), text.clone());
            }

            #[test]
            fn expansion_never_panics_and_stays_within_its_budget(
                input in any::<String>(),
                values in proptest::collection::vec(syntax(), 0..4),
                cap in 0usize..64,
            ) {
                let env: Vec<(String, String)> = values.into_iter().enumerate().map(|(i, v)| (format!("{i}"), v)).collect();
                let mut budget = ExpansionBudget::new(cap);
                match expand_all(&[&input, "$(0)$(1)$(2)$(3)"], &env, &mut budget, "p") {
                    Ok(out) => {
                        let len: usize = out.iter().map(String::len).sum();
                        prop_assert!(len <= cap);
                        prop_assert_eq!(budget.left(), cap - len);
                    }
                    Err(e) => {
                        prop_assert_eq!(e.what, "p");
                        prop_assert_eq!(budget.left(), cap, "a refused expansion keeps its budget");
                    }
                }
            }

            #[test]
            fn an_env_chain_of_any_shape_stays_bounded(
                refs in proptest::collection::vec(proptest::collection::vec(0usize..8, 0..40), 1..12),
                seed in "[a-z]{0,64}",
            ) {
                // Entry i refers to earlier entries only, any number of times: the worst is exponential.
                let mut vars = vec![var("V0", &seed)];
                for (i, r) in refs.iter().enumerate() {
                    let value: String = r.iter().map(|j| format!("$(V{})", j % (i + 1))).collect();
                    vars.push(var(&format!("V{}", i + 1), &value));
                }
                match container_envs(&pod(), &container(vars), &EnvSources::default()) {
                    Ok(built) => {
                        let total: usize = built.envs.iter().map(|(_, v)| v.len()).sum();
                        prop_assert!(total <= MAX_EXPANDED_BYTES);
                    }
                    Err(e) => prop_assert!(e.ends_with("exceeds the limit of 16777216 bytes per container"), "{}", e),
                }
            }
        }
    }
}
