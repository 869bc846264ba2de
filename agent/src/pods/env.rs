//! Container environment, as kubelet's `makeEnvironmentVariables` builds it: literal values and downward-API field
//! references, each expanded with `$(VAR)` against the variables defined before it.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Container, Pod};

use super::spec;

/// Kubernetes' `$(VAR)` expansion (third_party/forked/golang/expansion): a defined `$(VAR)` is replaced, an
/// undefined one is kept as written, `$$` is an escaped `$`.
pub fn expand(input: &str, env: &[(String, String)]) -> String {
    let lookup: BTreeMap<&str, &str> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    expand_with(input, &lookup)
}

fn expand_with(input: &str, lookup: &BTreeMap<&str, &str>) -> String {
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
                    match lookup.get(name) {
                        Some(v) => out.push_str(v),
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

/// Resolves a downward-API `fieldRef` path for this pod.
fn field_ref(
    pod: &Pod,
    path: &str,
    node_name: &str,
    host_ips: &[String],
    pod_ips: &[String],
) -> Result<String, String> {
    let meta = &pod.metadata;
    let subscript = |prefix: &str| path.strip_prefix(prefix).and_then(|r| r.strip_suffix("']"));
    if let Some(key) = subscript("metadata.labels['") {
        return Ok(meta.labels.as_ref().and_then(|l| l.get(key)).cloned().unwrap_or_default());
    }
    if let Some(key) = subscript("metadata.annotations['") {
        return Ok(meta.annotations.as_ref().and_then(|l| l.get(key)).cloned().unwrap_or_default());
    }
    Ok(match path {
        "metadata.name" => spec::name(pod).to_owned(),
        "metadata.namespace" => spec::namespace(pod).to_owned(),
        "metadata.uid" => spec::uid(pod).to_owned(),
        "spec.nodeName" => node_name.to_owned(),
        "spec.serviceAccountName" => spec::spec(pod).service_account_name.clone().unwrap_or_default(),
        "status.hostIP" => host_ips.first().cloned().unwrap_or_default(),
        "status.hostIPs" => host_ips.join(","),
        "status.podIP" => pod_ips.first().cloned().unwrap_or_default(),
        "status.podIPs" => pod_ips.join(","),
        other => return Err(format!("unsupported fieldRef fieldPath {other:?}")),
    })
}

pub fn container_envs(
    pod: &Pod,
    container: &Container,
    node_name: &str,
    host_ips: &[String],
    pod_ips: &[String],
) -> Result<Vec<(String, String)>, String> {
    if let Some(from) = container.env_from.as_ref().filter(|f| !f.is_empty()) {
        let what = if from.iter().any(|f| f.secret_ref.is_some()) { "Secret" } else { "ConfigMap" };
        return Err(format!(
            "envFrom a {what} needs an API server; this pod runs standalone (container {:?})",
            container.name
        ));
    }
    let mut env: Vec<(String, String)> = Vec::new();
    for var in container.env.iter().flatten() {
        let value = match &var.value_from {
            None => {
                let defined: BTreeMap<&str, &str> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
                expand_with(var.value.as_deref().unwrap_or_default(), &defined)
            }
            Some(src) => {
                if let Some(f) = &src.field_ref {
                    field_ref(pod, &f.field_path, node_name, host_ips, pod_ips)
                        .map_err(|e| format!("env {:?}: {e}", var.name))?
                } else if src.secret_key_ref.is_some() || src.config_map_key_ref.is_some() {
                    return Err(format!(
                        "env {:?}: secretKeyRef/configMapKeyRef need an API server; this pod runs standalone",
                        var.name
                    ));
                } else {
                    return Err(format!("env {:?}: resourceFieldRef is not supported", var.name));
                }
            }
        };
        // A later definition of the same name wins, as in kubelet.
        env.retain(|(k, _)| k != &var.name);
        env.push((var.name.clone(), value));
    }
    Ok(env)
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{EnvVar, EnvVarSource, ObjectFieldSelector, PodSpec};

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn expansion_follows_kubernetes_rules() {
        let e = env(&[("A", "one"), ("B", "two")]);
        assert_eq!(expand("$(A)-$(B)", &e), "one-two");
        assert_eq!(expand("$(MISSING)", &e), "$(MISSING)");
        assert_eq!(expand("$$(A)", &e), "$(A)");
        assert_eq!(expand("cost $5", &e), "cost $5");
        assert_eq!(expand("$(A", &e), "$(A");
    }

    #[test]
    fn literal_and_field_ref_values() {
        let mut pod = Pod::default();
        pod.metadata.name = Some("web-n1".into());
        pod.metadata.namespace = Some("prod".into());
        pod.metadata.uid = Some("u1".into());
        pod.spec = Some(PodSpec::default());
        let field = |p: &str| EnvVarSource {
            field_ref: Some(ObjectFieldSelector { field_path: p.into(), ..Default::default() }),
            ..Default::default()
        };
        let c = Container {
            name: "app".into(),
            env: Some(vec![
                EnvVar { name: "POD".into(), value_from: Some(field("metadata.name")), ..Default::default() },
                EnvVar { name: "IP".into(), value_from: Some(field("status.podIP")), ..Default::default() },
                EnvVar { name: "GREETING".into(), value: Some("hi from $(POD) at $(IP)".into()), ..Default::default() },
            ]),
            ..Default::default()
        };
        let got = container_envs(&pod, &c, "n1", &["192.0.2.1".into()], &["10.1.0.4".into()]).unwrap();
        assert_eq!(got, env(&[("POD", "web-n1"), ("IP", "10.1.0.4"), ("GREETING", "hi from web-n1 at 10.1.0.4")]));
        let bad = Container {
            name: "app".into(),
            env: Some(vec![EnvVar { name: "X".into(), value_from: Some(field("spec.nope")), ..Default::default() }]),
            ..Default::default()
        };
        assert!(container_envs(&pod, &bad, "n1", &[], &[]).unwrap_err().contains("spec.nope"));
    }
}
