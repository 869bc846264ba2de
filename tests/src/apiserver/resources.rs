//! The served resource types, their discovery documents, field-selector labels and
//! strategic-merge-patch list strategies.

use serde_json::{json, Value};

/// How objects of a resource are stored and converted on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Codec {
    /// Stored as served.
    Identity,
    /// `events.k8s.io/v1` `Event`: stored as `core/v1` `Event`, converted on read/write.
    EventsV1,
}

#[derive(Debug)]
pub(crate) struct ResourceDef {
    pub group: &'static str,
    pub version: &'static str,
    pub plural: &'static str,
    pub singular: &'static str,
    pub kind: &'static str,
    pub namespaced: bool,
    pub short_names: &'static [&'static str],
    pub subresources: &'static [&'static str],
    /// Storage key shared by resources that are one type in etcd (both `events`).
    pub store: &'static str,
    pub codec: Codec,
}

const VERBS: &[&str] = &["create", "delete", "get", "list", "patch", "update", "watch"];

pub(crate) static RESOURCES: &[ResourceDef] = &[
    ResourceDef {
        group: "",
        version: "v1",
        plural: "namespaces",
        singular: "namespace",
        kind: "Namespace",
        namespaced: false,
        short_names: &["ns"],
        subresources: &["status"],
        store: "namespaces",
        codec: Codec::Identity,
    },
    ResourceDef {
        group: "",
        version: "v1",
        plural: "nodes",
        singular: "node",
        kind: "Node",
        namespaced: false,
        short_names: &["no"],
        subresources: &["status"],
        store: "nodes",
        codec: Codec::Identity,
    },
    ResourceDef {
        group: "",
        version: "v1",
        plural: "pods",
        singular: "pod",
        kind: "Pod",
        namespaced: true,
        short_names: &["po"],
        subresources: &["status", "binding"],
        store: "pods",
        codec: Codec::Identity,
    },
    ResourceDef {
        group: "",
        version: "v1",
        plural: "events",
        singular: "event",
        kind: "Event",
        namespaced: true,
        short_names: &["ev"],
        subresources: &[],
        store: "events",
        codec: Codec::Identity,
    },
    ResourceDef {
        group: "events.k8s.io",
        version: "v1",
        plural: "events",
        singular: "event",
        kind: "Event",
        namespaced: true,
        short_names: &["ev"],
        subresources: &[],
        store: "events",
        codec: Codec::EventsV1,
    },
    ResourceDef {
        group: "",
        version: "v1",
        plural: "configmaps",
        singular: "configmap",
        kind: "ConfigMap",
        namespaced: true,
        short_names: &["cm"],
        subresources: &[],
        store: "configmaps",
        codec: Codec::Identity,
    },
    ResourceDef {
        group: "",
        version: "v1",
        plural: "secrets",
        singular: "secret",
        kind: "Secret",
        namespaced: true,
        short_names: &[],
        subresources: &[],
        store: "secrets",
        codec: Codec::Identity,
    },
    ResourceDef {
        group: "",
        version: "v1",
        plural: "services",
        singular: "service",
        kind: "Service",
        namespaced: true,
        short_names: &["svc"],
        subresources: &["status"],
        store: "services",
        codec: Codec::Identity,
    },
    ResourceDef {
        group: "",
        version: "v1",
        plural: "serviceaccounts",
        singular: "serviceaccount",
        kind: "ServiceAccount",
        namespaced: true,
        short_names: &["sa"],
        subresources: &["token"],
        store: "serviceaccounts",
        codec: Codec::Identity,
    },
    ResourceDef {
        group: "coordination.k8s.io",
        version: "v1",
        plural: "leases",
        singular: "lease",
        kind: "Lease",
        namespaced: true,
        short_names: &[],
        subresources: &[],
        store: "leases",
        codec: Codec::Identity,
    },
    ResourceDef {
        group: "certificates.k8s.io",
        version: "v1",
        plural: "certificatesigningrequests",
        singular: "certificatesigningrequest",
        kind: "CertificateSigningRequest",
        namespaced: false,
        short_names: &["csr"],
        subresources: &["approval", "status"],
        store: "certificatesigningrequests",
        codec: Codec::Identity,
    },
];

impl ResourceDef {
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.to_string()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    /// `pods` or `leases.coordination.k8s.io`, as used in error messages.
    pub fn qualified(&self) -> String {
        if self.group.is_empty() {
            self.plural.to_string()
        } else {
            format!("{}.{}", self.plural, self.group)
        }
    }

    pub fn is(&self, group: &str, plural: &str) -> bool {
        self.group == group && self.plural == plural
    }

    /// Field labels accepted in `fieldSelector` (others are rejected with 400, as upstream).
    pub fn field_labels(&self) -> &'static [&'static str] {
        match (self.group, self.plural) {
            ("", "pods") => &[
                "metadata.name",
                "metadata.namespace",
                "spec.nodeName",
                "spec.restartPolicy",
                "spec.schedulerName",
                "spec.serviceAccountName",
                "spec.hostNetwork",
                "status.phase",
                "status.podIP",
                "status.nominatedNodeName",
            ],
            ("", "nodes") => &["metadata.name", "spec.unschedulable"],
            ("", "namespaces") => &["metadata.name", "status.phase"],
            (_, "events") => &[
                "metadata.name",
                "metadata.namespace",
                "involvedObject.kind",
                "involvedObject.namespace",
                "involvedObject.name",
                "involvedObject.uid",
                "involvedObject.apiVersion",
                "involvedObject.resourceVersion",
                "involvedObject.fieldPath",
                "regarding.kind",
                "regarding.namespace",
                "regarding.name",
                "regarding.uid",
                "regarding.apiVersion",
                "regarding.resourceVersion",
                "regarding.fieldPath",
                "reason",
                "reportingComponent",
                "reportingController",
                "source",
                "type",
            ],
            (_, "certificatesigningrequests") => &["metadata.name", "spec.signerName"],
            _ => &["metadata.name", "metadata.namespace"],
        }
    }

    /// The value of a field label on a stored (internal-form) object.
    pub fn field_value(&self, obj: &Value, label: &str) -> String {
        let path: String = match label {
            // events.k8s.io labels map onto the stored core/v1 fields
            l if l.starts_with("regarding.") => format!("involvedObject.{}", &l["regarding.".len()..]),
            "reportingController" => "reportingComponent".into(),
            "source" => "source.component".into(),
            l => l.to_string(),
        };
        let mut cur = obj;
        for part in path.split('.') {
            match cur.get(part) {
                Some(v) => cur = v,
                None => {
                    return match label {
                        "spec.hostNetwork" | "spec.unschedulable" => "false".into(),
                        _ => String::new(),
                    };
                }
            }
        }
        match cur {
            Value::String(s) => s.clone(),
            Value::Bool(b) => b.to_string(),
            Value::Number(n) => n.to_string(),
            Value::Null => String::new(),
            other => other.to_string(),
        }
    }
}

pub(crate) fn find(group: &str, version: &str, plural: &str) -> Option<&'static ResourceDef> {
    RESOURCES.iter().find(|r| r.group == group && r.version == version && r.plural == plural)
}

pub(crate) fn by_store(group: &str, plural: &str) -> &'static ResourceDef {
    RESOURCES.iter().find(|r| r.is(group, plural)).expect("known resource")
}

fn groups() -> Vec<&'static str> {
    let mut g: Vec<&str> = RESOURCES.iter().map(|r| r.group).filter(|g| !g.is_empty()).collect();
    g.sort();
    g.dedup();
    g
}

pub(crate) fn api_versions(server_addr: &str) -> Value {
    json!({
        "kind": "APIVersions",
        "versions": ["v1"],
        "serverAddressByClientCIDRs": [{ "clientCIDR": "0.0.0.0/0", "serverAddress": server_addr }],
    })
}

fn group_doc(group: &str) -> Value {
    let gv = json!({ "groupVersion": format!("{group}/v1"), "version": "v1" });
    json!({
        "name": group,
        "versions": [gv.clone()],
        "preferredVersion": gv,
    })
}

pub(crate) fn api_group_list() -> Value {
    let groups: Vec<Value> = groups().into_iter().map(group_doc).collect();
    json!({ "kind": "APIGroupList", "apiVersion": "v1", "groups": groups })
}

pub(crate) fn api_group(group: &str) -> Option<Value> {
    if !groups().contains(&group) {
        return None;
    }
    let mut doc = group_doc(group);
    doc["kind"] = json!("APIGroup");
    doc["apiVersion"] = json!("v1");
    Some(doc)
}

pub(crate) fn api_resource_list(group: &str, version: &str) -> Option<Value> {
    let defs: Vec<&ResourceDef> = RESOURCES.iter().filter(|r| r.group == group && r.version == version).collect();
    if defs.is_empty() {
        return None;
    }
    let mut resources = Vec::new();
    for d in defs {
        let mut r = json!({
            "name": d.plural,
            "singularName": d.singular,
            "namespaced": d.namespaced,
            "kind": d.kind,
            "verbs": VERBS,
        });
        if !d.short_names.is_empty() {
            r["shortNames"] = json!(d.short_names);
        }
        resources.push(r);
        for sub in d.subresources {
            let (kind, verbs, group): (&str, &[&str], Option<&str>) = match *sub {
                "binding" => ("Binding", &["create"], None),
                _ => (d.kind, &["get", "patch", "update"], None),
            };
            let mut s = json!({
                "name": format!("{}/{}", d.plural, sub),
                "singularName": "",
                "namespaced": d.namespaced,
                "kind": kind,
                "verbs": verbs,
            });
            if let Some(g) = group {
                s["group"] = json!(g);
            }
            resources.push(s);
        }
    }
    let gv = if group.is_empty() { version.to_string() } else { format!("{group}/{version}") };
    Some(json!({
        "kind": "APIResourceList",
        "apiVersion": "v1",
        "groupVersion": gv,
        "resources": resources,
    }))
}

/// How a strategic merge patch treats a list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ListStrategy {
    /// The patch's list replaces the original (no `patchStrategy`, or `+listType=atomic`).
    Replace,
    /// `patchStrategy:"merge"` with `patchMergeKey`.
    MergeByKey(&'static str),
    /// `patchStrategy:"merge"` on a list of scalars (set union).
    MergePrimitive,
}

/// The `patchStrategy`/`patchMergeKey` of a list field, by its path of field names (list
/// indices left out), as declared in k8s.io/api for the served kinds.
pub(crate) fn list_strategy(kind: &str, path: &[String]) -> ListStrategy {
    use ListStrategy::*;
    let p: Vec<&str> = path.iter().map(String::as_str).collect();
    const CONTAINERS: &[&str] = &["containers", "initContainers", "ephemeralContainers"];
    match (kind, p.as_slice()) {
        (_, ["metadata", "finalizers"]) => MergePrimitive,
        (_, ["metadata", "ownerReferences"]) => MergeByKey("uid"),
        ("Pod", ["spec", c]) if CONTAINERS.contains(c) => MergeByKey("name"),
        ("Pod", ["spec", c, "ports"]) if CONTAINERS.contains(c) => MergeByKey("containerPort"),
        ("Pod", ["spec", c, "env"]) if CONTAINERS.contains(c) => MergeByKey("name"),
        ("Pod", ["spec", c, "volumeMounts"]) if CONTAINERS.contains(c) => MergeByKey("mountPath"),
        ("Pod", ["spec", c, "volumeDevices"]) if CONTAINERS.contains(c) => MergeByKey("devicePath"),
        ("Pod", ["spec", "volumes"]) => MergeByKey("name"),
        ("Pod", ["spec", "imagePullSecrets"]) => MergeByKey("name"),
        ("Pod", ["spec", "hostAliases"]) => MergeByKey("ip"),
        ("Pod", ["spec", "topologySpreadConstraints"]) => MergeByKey("topologyKey"),
        ("Pod", ["spec", "resourceClaims"]) => MergeByKey("name"),
        ("Pod", ["spec", "schedulingGates"]) => MergeByKey("name"),
        ("Pod", ["status", "conditions"]) => MergeByKey("type"),
        ("Pod", ["status", "podIPs"]) => MergeByKey("ip"),
        ("Pod", ["status", "hostIPs"]) => MergeByKey("ip"),
        ("Pod", ["status", "resourceClaimStatuses"]) => MergeByKey("name"),
        ("Node", ["spec", "podCIDRs"]) => MergePrimitive,
        ("Node", ["status", "conditions"]) => MergeByKey("type"),
        ("Node", ["status", "addresses"]) => MergeByKey("type"),
        ("Namespace", ["status", "conditions"]) => MergeByKey("type"),
        _ => Replace,
    }
}
