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

use super::spec;
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

/// Kubernetes' `$(VAR)` expansion (third_party/forked/golang/expansion): a defined `$(VAR)` is replaced, an
/// undefined one is kept as written, `$$` is an escaped `$`.
pub fn expand(input: &str, env: &[(String, String)]) -> String {
    let lookup: BTreeMap<&str, &str> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    expand_with(input, |name| lookup.get(name).map(|v| (*v).to_owned()))
}

fn expand_with(input: &str, lookup: impl Fn(&str) -> Option<String>) -> String {
    let mut out = String::with_capacity(input.len());
    let mut rest = input;
    while let Some(pos) = rest.find('$') {
        out.push_str(&rest[..pos]);
        let after = &rest[pos + 1..];
        if let Some(stripped) = after.strip_prefix('$') {
            out.push('$');
            rest = stripped;
        } else if let Some(body) = after.strip_prefix('(') {
            match body.find(')') {
                Some(end) => {
                    let name = &body[..end];
                    match lookup(name) {
                        Some(v) => out.push_str(&v),
                        None => {
                            out.push_str("$(");
                            out.push_str(name);
                            out.push(')');
                        }
                    }
                    rest = &body[end + 1..];
                }
                None => {
                    out.push_str("$(");
                    rest = body;
                }
            }
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

/// kubelet's `ExpandContainerVolumeMounts` for `subPathExpr`: every referenced variable must be defined and
/// non-empty.
pub fn expand_sub_path_expr(expr: &str, env: &[(String, String)]) -> Result<String, String> {
    let lookup: BTreeMap<&str, &str> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let missing = std::cell::RefCell::new(std::collections::BTreeSet::new());
    let expanded = expand_with(expr, |name| match lookup.get(name) {
        Some(v) if !v.is_empty() => Some((*v).to_owned()),
        _ => {
            missing.borrow_mut().insert(name.to_owned());
            Some(String::new())
        }
    });
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
    for var in container.env.iter().flatten() {
        let literal = var.value.as_deref().unwrap_or_default();
        let value = if !literal.is_empty() {
            expand_with(literal, |name| {
                env.values.get(name).cloned().or_else(|| service.get(name).map(|v| (*v).to_owned()))
            })
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
}
