//! Authorization (system:masters, the Node authorizer's rules, the bootstrapper role) and
//! the NodeRestriction admission plugin.

use serde_json::Value;

use super::resources::ResourceDef;
use super::selectors::FieldSelector;
use super::status::{ApiError, ApiResult};
use super::store::{meta_str, Store};

pub(crate) const MIRROR_ANNOTATION: &str = "kubernetes.io/config.mirror";
pub(crate) const NODE_LEASE_NS: &str = "kube-node-lease";

#[derive(Debug, Clone)]
pub(crate) struct UserInfo {
    pub name: String,
    pub groups: Vec<String>,
}

impl UserInfo {
    pub fn new(name: &str, groups: &[&str]) -> Self {
        let mut groups: Vec<String> = groups.iter().map(|g| g.to_string()).collect();
        if name != "system:anonymous" && !groups.iter().any(|g| g == "system:authenticated") {
            groups.push("system:authenticated".into());
        }
        UserInfo { name: name.to_string(), groups }
    }

    pub fn anonymous() -> Self {
        UserInfo { name: "system:anonymous".into(), groups: vec!["system:unauthenticated".into()] }
    }

    pub fn in_group(&self, g: &str) -> bool {
        self.groups.iter().any(|x| x == g)
    }

    pub fn is_admin(&self) -> bool {
        self.in_group("system:masters")
    }

    /// `Some(node)` for a node identity (`system:node:<node>` in `system:nodes`).
    pub fn node_name(&self) -> Option<&str> {
        if !self.in_group("system:nodes") {
            return None;
        }
        self.name.strip_prefix("system:node:").filter(|n| !n.is_empty())
    }
}

/// The attributes of a resource request, as the authorizer sees them.
pub(crate) struct Attrs<'a> {
    pub verb: &'a str,
    pub def: &'static ResourceDef,
    pub sub: Option<&'a str>,
    pub namespace: Option<&'a str>,
    pub name: Option<&'a str>,
    pub fields: Option<&'a FieldSelector>,
}

fn forbidden(user: &UserInfo, a: &Attrs, why: Option<String>) -> ApiError {
    let resource = match a.sub {
        Some(s) => format!("{}/{}", a.def.plural, s),
        None => a.def.plural.to_string(),
    };
    let scope = match a.namespace {
        Some(ns) => format!("in the namespace \"{ns}\""),
        None => "at the cluster scope".to_string(),
    };
    let mut msg = format!(
        "User \"{}\" cannot {} resource \"{}\" in API group \"{}\" {}",
        user.name, a.verb, resource, a.def.group, scope
    );
    if let Some(w) = why {
        msg.push_str(": ");
        msg.push_str(&w);
    }
    ApiError::forbidden(a.def, a.name.unwrap_or(""), &msg)
}

/// Non-resource URLs: health and version are public, discovery needs authentication.
pub(crate) fn authorize_path(user: &UserInfo, path: &str) -> ApiResult<()> {
    let public = ["/version", "/healthz", "/livez", "/readyz"];
    if user.is_admin()
        || public.iter().any(|p| path == *p || path.starts_with(&format!("{p}/")))
        || user.in_group("system:authenticated")
    {
        return Ok(());
    }
    Err(ApiError::new(403, "Forbidden", format!("forbidden: User \"{}\" cannot get path \"{path}\"", user.name)))
}

pub(crate) fn authorize(user: &UserInfo, a: &Attrs, store: &Store) -> ApiResult<()> {
    if user.is_admin() {
        return Ok(());
    }
    let allowed: Result<(), Option<String>> = if let Some(node) = user.node_name() {
        node_rules(node, a, store)
    } else if user.in_group("system:bootstrappers") {
        let ok = a.def.is("certificates.k8s.io", "certificatesigningrequests")
            && a.sub.is_none()
            && ["create", "get", "list", "watch"].contains(&a.verb);
        if ok {
            Ok(())
        } else {
            Err(None)
        }
    } else {
        Err(None)
    };
    allowed.map_err(|why| forbidden(user, a, why))
}

/// The Node authorizer (with AuthorizeNodeWithSelectors): the rules of
/// `bootstrappolicy.NodeRules()` plus graph checks for pods and leases.
fn node_rules(node: &str, a: &Attrs, store: &Store) -> Result<(), Option<String>> {
    let verb = a.verb;
    let sub = a.sub.unwrap_or("");
    match (a.def.group, a.def.plural) {
        ("", "nodes") => match (sub, verb) {
            ("", "get" | "list" | "watch" | "create" | "update" | "patch" | "delete") => Ok(()),
            ("status", "get" | "update" | "patch") => Ok(()),
            _ => Err(None),
        },
        ("", "pods") => match (sub, verb) {
            ("", "get") => {
                let bound = store
                    .get(a.def, a.namespace.unwrap_or(""), a.name.unwrap_or(""))
                    .is_some_and(|p| p.pointer("/spec/nodeName").and_then(Value::as_str) == Some(node));
                if bound {
                    Ok(())
                } else {
                    Err(Some(format!("no relationship found between node '{node}' and this object")))
                }
            }
            ("", "list" | "watch") => {
                if a.fields.and_then(|f| f.requires("spec.nodeName")) == Some(node) {
                    Ok(())
                } else {
                    Err(Some(format!("node '{node}' can only list/watch pods with spec.nodeName field selector")))
                }
            }
            ("", "create" | "delete") => Ok(()),
            ("status", "get" | "update" | "patch") => Ok(()),
            _ => Err(None),
        },
        ("", "configmaps" | "secrets") => {
            let field = if a.def.plural == "secrets" { "secret" } else { "configMap" };
            let referenced = verb == "get"
                && pods_bound_to(store, node, a.namespace.unwrap_or(""))
                    .any(|p| pod_references(p, field, a.name.unwrap_or("")));
            if referenced {
                Ok(())
            } else {
                Err(Some(format!("no relationship found between node '{node}' and this object")))
            }
        }
        ("", "services") if ["get", "list", "watch"].contains(&verb) => Ok(()),
        ("", "serviceaccounts") if sub == "token" && verb == "create" => {
            let name = a.name.unwrap_or("");
            let used = pods_bound_to(store, node, a.namespace.unwrap_or(""))
                .any(|p| p.pointer("/spec/serviceAccountName").and_then(Value::as_str).unwrap_or("default") == name);
            if used {
                Ok(())
            } else {
                Err(Some(format!("no relationship found between node '{node}' and this object")))
            }
        }
        (_, "events") => match verb {
            "create" | "update" | "patch" => Ok(()),
            _ => Err(None),
        },
        ("coordination.k8s.io", "leases") => {
            if !["get", "create", "update", "patch", "delete"].contains(&verb) {
                return Err(None);
            }
            if a.namespace != Some(NODE_LEASE_NS) {
                return Err(Some(format!("can only access leases in the {NODE_LEASE_NS} namespace")));
            }
            if verb != "create" && a.name != Some(node) {
                return Err(Some("can only access node lease with the same name as the requesting node".into()));
            }
            Ok(())
        }
        ("certificates.k8s.io", "certificatesigningrequests") => match (sub, verb) {
            ("", "create" | "get" | "list" | "watch") => Ok(()),
            _ => Err(None),
        },
        _ => Err(None),
    }
}

/// The pods of `namespace` bound to `node`.
fn pods_bound_to<'a>(store: &'a Store, node: &'a str, namespace: &'a str) -> impl Iterator<Item = &'a Value> + 'a {
    let pods = super::resources::by_store("", "pods");
    store.list(pods, Some(namespace)).filter(move |p| p.pointer("/spec/nodeName").and_then(Value::as_str) == Some(node))
}

/// Whether the pod names the configMap or secret `name` in a volume, a projection or its containers' environment.
fn pod_references(pod: &Value, field: &str, name: &str) -> bool {
    let key = if field == "secret" { "secretName" } else { "name" };
    let volumes = pod.pointer("/spec/volumes").and_then(Value::as_array).into_iter().flatten();
    for v in volumes {
        if v.get(field).and_then(|s| s.get(key)).and_then(Value::as_str) == Some(name) {
            return true;
        }
        let sources = v.pointer("/projected/sources").and_then(Value::as_array).into_iter().flatten();
        if sources.into_iter().any(|s| s.get(field).and_then(|s| s.get("name")).and_then(Value::as_str) == Some(name)) {
            return true;
        }
    }
    let (env_ref, from_ref) =
        if field == "secret" { ("secretKeyRef", "secretRef") } else { ("configMapKeyRef", "configMapRef") };
    let containers = ["containers", "initContainers"]
        .into_iter()
        .flat_map(|l| pod.pointer(&format!("/spec/{l}")).and_then(Value::as_array).into_iter().flatten());
    for c in containers {
        let env = c.get("env").and_then(Value::as_array).into_iter().flatten();
        if env
            .into_iter()
            .any(|e| e.pointer(&format!("/valueFrom/{env_ref}/name")).and_then(Value::as_str) == Some(name))
        {
            return true;
        }
        let from = c.get("envFrom").and_then(Value::as_array).into_iter().flatten();
        if from.into_iter().any(|f| f.pointer(&format!("/{from_ref}/name")).and_then(Value::as_str) == Some(name)) {
            return true;
        }
    }
    false
}

fn labels_with_prefix(obj: Option<&Value>, prefix: &str) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = obj
        .and_then(|o| o.pointer("/metadata/labels"))
        .and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .filter(|(k, _)| k.starts_with(prefix))
                .map(|(k, v)| (k.clone(), v.as_str().unwrap_or("").to_string()))
                .collect()
        })
        .unwrap_or_default();
    out.sort();
    out
}

/// The NodeRestriction admission plugin. `op` is "create", "update" or "delete".
pub(crate) fn admit(
    user: &UserInfo,
    op: &str,
    def: &ResourceDef,
    sub: Option<&str>,
    name: &str,
    old: Option<&Value>,
    new: Option<&Value>,
) -> ApiResult<()> {
    let Some(node) = user.node_name() else {
        return Ok(());
    };
    let deny = |msg: String| Err(ApiError::forbidden(def, name, &msg));
    const RESTRICTED: &str = "node-restriction.kubernetes.io/";
    match (def.group, def.plural, sub) {
        ("", "nodes", _) => {
            if name != node {
                return deny(format!("node \"{node}\" is not allowed to modify node \"{name}\""));
            }
            match op {
                "create" => {
                    let bad = labels_with_prefix(new, RESTRICTED);
                    if !bad.is_empty() {
                        let keys: Vec<String> = bad.into_iter().map(|(k, _)| k).collect();
                        return deny(format!(
                            "node \"{node}\" is not allowed to set the following labels: {}",
                            keys.join(", ")
                        ));
                    }
                }
                "update" => {
                    let (o, n) = (labels_with_prefix(old, RESTRICTED), labels_with_prefix(new, RESTRICTED));
                    if o != n {
                        let mut keys: Vec<String> = o.iter().chain(n.iter()).map(|(k, _)| k.clone()).collect();
                        keys.sort();
                        keys.dedup();
                        return deny(format!("node \"{node}\" is not allowed to modify labels: {}", keys.join(", ")));
                    }
                    let taints = |v: Option<&Value>| v.and_then(|v| v.pointer("/spec/taints")).cloned();
                    if sub.is_none() && taints(old) != taints(new) {
                        return deny(format!("node \"{node}\" is not allowed to modify taints"));
                    }
                }
                _ => {}
            }
            Ok(())
        }
        ("", "pods", None) => match op {
            "create" => {
                let pod = new.expect("create has an object");
                let mirror = pod.pointer("/metadata/annotations").and_then(|a| a.get(MIRROR_ANNOTATION)).is_some();
                if !mirror {
                    return deny(format!(
                        "pod does not have \"{MIRROR_ANNOTATION}\" annotation, node \"{node}\" can only create mirror pods"
                    ));
                }
                if pod.pointer("/spec/nodeName").and_then(Value::as_str) != Some(node) {
                    return deny(format!("node \"{node}\" can only create pods with spec.nodeName set to itself"));
                }
                if let Some(refs) = pod.pointer("/metadata/ownerReferences").and_then(Value::as_array) {
                    let ok = refs.len() == 1
                        && refs[0].get("kind").and_then(Value::as_str) == Some("Node")
                        && refs[0].get("name").and_then(Value::as_str) == Some(node)
                        && refs[0].get("apiVersion").and_then(Value::as_str) == Some("v1");
                    if !refs.is_empty() && !ok {
                        return deny(format!(
                            "node \"{node}\" can only create pods with a single owner reference set to itself"
                        ));
                    }
                }
                if pod.pointer("/spec/serviceAccountName").and_then(Value::as_str).is_some_and(|s| !s.is_empty()) {
                    return deny(format!("node \"{node}\" can not create pods that reference a service account"));
                }
                for v in pod.pointer("/spec/volumes").and_then(Value::as_array).into_iter().flatten() {
                    for (field, what) in [
                        ("secret", "secrets"),
                        ("configMap", "configmaps"),
                        ("persistentVolumeClaim", "persistentvolumeclaims"),
                        ("projected", "projected volumes"),
                    ] {
                        if v.get(field).is_some() {
                            return deny(format!("node \"{node}\" can not create pods that reference {what}"));
                        }
                    }
                }
                Ok(())
            }
            "delete" => match old {
                Some(pod) if pod.pointer("/spec/nodeName").and_then(Value::as_str) != Some(node) => {
                    deny(format!("node \"{node}\" can only delete pods with spec.nodeName set to itself"))
                }
                _ => Ok(()),
            },
            _ => deny(format!("unexpected operation {op:?}, node \"{node}\" can only create and delete mirror pods")),
        },
        ("", "pods", Some("status")) => {
            if old.and_then(|p| p.pointer("/spec/nodeName")).and_then(Value::as_str) != Some(node) {
                return deny(format!(
                    "node \"{node}\" can only update pod status for pods with spec.nodeName set to itself"
                ));
            }
            Ok(())
        }
        ("coordination.k8s.io", "leases", _) => {
            let obj = new.or(old);
            let ns = obj.map(|o| meta_str(o, "namespace")).unwrap_or("");
            if name != node || ns != NODE_LEASE_NS {
                return deny("can only access node lease with the same name as the requesting node".into());
            }
            Ok(())
        }
        _ => Ok(()),
    }
}
