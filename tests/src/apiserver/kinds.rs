//! Per-kind strategies: defaulting, validation, wire conversion (events.k8s.io/v1).

use serde_json::{json, Map, Value};

use super::auth::{UserInfo, MIRROR_ANNOTATION};
use super::resources::{Codec, ResourceDef};
use super::status::{ApiError, ApiResult};
use super::store::{EventType, Store};

pub(crate) fn now_rfc3339() -> String {
    jiff::Timestamp::now().strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
}

pub(crate) fn rfc3339_in(secs: i64) -> String {
    let t = jiff::Timestamp::from_second(jiff::Timestamp::now().as_second() + secs).unwrap_or(jiff::Timestamp::now());
    t.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
}

pub(crate) fn new_uid() -> String {
    uuid::Uuid::new_v4().to_string()
}

/// The random suffix `generateName` gets upstream (5 chars of a consonant/digit alphabet).
pub(crate) fn name_suffix() -> String {
    const ALPHA: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    uuid::Uuid::new_v4().as_bytes()[..5].iter().map(|b| ALPHA[*b as usize % ALPHA.len()] as char).collect()
}

fn is_dns_subdomain(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|l| {
            !l.is_empty()
                && l.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        })
}

fn is_dns_label(s: &str) -> bool {
    s.len() <= 63 && !s.contains('.') && is_dns_subdomain(s)
}

pub(crate) fn validate_name(def: &ResourceDef, name: &str) -> ApiResult<()> {
    let ok = if def.plural == "namespaces" { is_dns_label(name) } else { is_dns_subdomain(name) };
    if ok {
        return Ok(());
    }
    let what = if def.plural == "namespaces" {
        "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character"
    } else {
        "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character"
    };
    Err(ApiError::invalid(def, name, vec![("metadata.name".into(), format!("Invalid value: {name:?}: {what}"))]))
}

fn obj_mut<'a>(v: &'a mut Value, key: &str) -> &'a mut Map<String, Value> {
    if !v.get(key).is_some_and(Value::is_object) {
        v[key] = json!({});
    }
    v[key].as_object_mut().expect("object")
}

fn set_default(m: &mut Map<String, Value>, key: &str, val: Value) {
    if m.get(key).is_none_or(Value::is_null) {
        m.insert(key.to_string(), val);
    }
}

pub(crate) fn is_mirror_pod(pod: &Value) -> bool {
    pod.pointer("/metadata/annotations").and_then(|a| a.get(MIRROR_ANNOTATION)).is_some()
}

fn default_probe(p: &mut Value) {
    if let Some(m) = p.as_object_mut() {
        set_default(m, "timeoutSeconds", json!(1));
        set_default(m, "periodSeconds", json!(10));
        set_default(m, "successThreshold", json!(1));
        set_default(m, "failureThreshold", json!(3));
        if let Some(h) = m.get_mut("httpGet").and_then(Value::as_object_mut) {
            set_default(h, "scheme", json!("HTTP"));
            set_default(h, "path", json!("/"));
        }
    }
}

fn default_container(c: &mut Value, host_network: bool) {
    let Some(m) = c.as_object_mut() else { return };
    let image = m.get("image").and_then(Value::as_str).unwrap_or("").to_string();
    let last = image.rsplit('/').next().unwrap_or("");
    let policy = if image.contains('@') {
        "IfNotPresent"
    } else {
        match last.split_once(':') {
            Some((_, "latest")) | None => "Always",
            Some(_) => "IfNotPresent",
        }
    };
    set_default(m, "imagePullPolicy", json!(policy));
    set_default(m, "terminationMessagePath", json!("/dev/termination-log"));
    set_default(m, "terminationMessagePolicy", json!("File"));
    set_default(m, "resources", json!({}));
    if let Some(r) = m.get_mut("resources").and_then(Value::as_object_mut) {
        // requests default to limits
        if let Some(limits) = r.get("limits").and_then(Value::as_object).cloned() {
            let req = r.entry("requests").or_insert_with(|| json!({}));
            if let Some(req) = req.as_object_mut() {
                for (k, v) in limits {
                    req.entry(k).or_insert(v);
                }
            }
        }
    }
    if let Some(ports) = m.get_mut("ports").and_then(Value::as_array_mut) {
        for p in ports.iter_mut().filter_map(Value::as_object_mut) {
            set_default(p, "protocol", json!("TCP"));
            if host_network {
                if let Some(cp) = p.get("containerPort").cloned() {
                    set_default(p, "hostPort", cp);
                }
            }
        }
    }
    for probe in ["livenessProbe", "readinessProbe", "startupProbe"] {
        if let Some(p) = m.get_mut(probe) {
            default_probe(p);
        }
    }
}

/// API defaulting plus the defaults of the admission plugins a stock cluster runs
/// (ServiceAccount's `serviceAccountName`, Priority, DefaultTolerationSeconds).
pub(crate) fn default_pod(pod: &mut Value) {
    let mirror = is_mirror_pod(pod);
    let spec = obj_mut(pod, "spec");
    set_default(spec, "restartPolicy", json!("Always"));
    set_default(spec, "dnsPolicy", json!("ClusterFirst"));
    set_default(spec, "schedulerName", json!("default-scheduler"));
    set_default(spec, "terminationGracePeriodSeconds", json!(30));
    set_default(spec, "securityContext", json!({}));
    set_default(spec, "enableServiceLinks", json!(true));
    set_default(spec, "preemptionPolicy", json!("PreemptLowerPriority"));
    set_default(spec, "priority", json!(0));
    if !mirror {
        set_default(spec, "serviceAccountName", json!("default"));
        let sa = spec["serviceAccountName"].clone();
        set_default(spec, "serviceAccount", sa);
    }
    let host_network = spec.get("hostNetwork").and_then(Value::as_bool).unwrap_or(false);
    for list in ["containers", "initContainers", "ephemeralContainers"] {
        if let Some(cs) = spec.get_mut(list).and_then(Value::as_array_mut) {
            for c in cs.iter_mut() {
                default_container(c, host_network);
            }
        }
    }
    if let Some(vols) = spec.get_mut("volumes").and_then(Value::as_array_mut) {
        for v in vols.iter_mut().filter_map(Value::as_object_mut) {
            if let Some(h) = v.get_mut("hostPath").and_then(Value::as_object_mut) {
                set_default(h, "type", json!(""));
            }
            for src in ["secret", "configMap", "projected", "downwardAPI"] {
                if let Some(s) = v.get_mut(src).and_then(Value::as_object_mut) {
                    set_default(s, "defaultMode", json!(420));
                }
            }
        }
    }
    let tolerations = spec.entry("tolerations").or_insert_with(|| json!([]));
    if let Some(ts) = tolerations.as_array_mut() {
        for key in ["node.kubernetes.io/not-ready", "node.kubernetes.io/unreachable"] {
            let has = ts.iter().any(|t| {
                t.get("key").and_then(Value::as_str) == Some(key)
                    && t.get("effect").and_then(Value::as_str).is_none_or(|e| e == "NoExecute" || e.is_empty())
            });
            if !has {
                ts.push(json!({"key": key, "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300}));
            }
        }
    }
}

/// What the controllers put into every namespace: the `default` ServiceAccount and the `kube-root-ca.crt`
/// ConfigMap with the cluster CA.
pub(crate) fn seed_namespace(store: &mut Store, ns: &str, ca_pem: &str) {
    let sa = super::resources::by_store("", "serviceaccounts");
    let cm = super::resources::by_store("", "configmaps");
    let meta =
        |name: &str| json!({ "name": name, "namespace": ns, "uid": new_uid(), "creationTimestamp": now_rfc3339() });
    if store.get(sa, ns, "default").is_none() {
        let obj = json!({ "apiVersion": "v1", "kind": "ServiceAccount", "metadata": meta("default") });
        store.commit(sa, EventType::Added, obj, None);
    }
    if store.get(cm, ns, "kube-root-ca.crt").is_none() {
        let obj = json!({ "apiVersion": "v1", "kind": "ConfigMap", "metadata": meta("kube-root-ca.crt"),
            "data": { "ca.crt": ca_pem } });
        store.commit(cm, EventType::Added, obj, None);
    }
}

/// Secret creation: `stringData` is merged into `data` (base64) and dropped, `type` defaults to `Opaque`.
pub(crate) fn prepare_secret(secret: &mut Value) {
    use base64::Engine;
    if let Some(Value::Object(strings)) = secret.as_object_mut().and_then(|m| m.remove("stringData")) {
        let data = obj_mut(secret, "data");
        for (k, v) in strings {
            let text = v.as_str().unwrap_or_default().to_owned();
            data.insert(k, json!(base64::engine::general_purpose::STANDARD.encode(text)));
        }
    }
    if let Some(m) = secret.as_object_mut() {
        m.entry("type").or_insert(json!("Opaque"));
    }
}

/// Service creation: a ClusterIP from 10.96.0.0/12 unless given (or `None`), ports default to TCP.
pub(crate) fn prepare_service(svc: &mut Value, rv: u64) {
    let spec = obj_mut(svc, "spec");
    if spec.get("clusterIP").is_none_or(|ip| ip.as_str().is_none_or(str::is_empty)) {
        spec.insert("clusterIP".into(), json!(format!("10.96.{}.{}", (rv / 250) % 250, rv % 250 + 2)));
    }
    set_default(spec, "type", json!("ClusterIP"));
    for p in spec.get_mut("ports").and_then(Value::as_array_mut).into_iter().flatten() {
        if let Some(m) = p.as_object_mut() {
            set_default(m, "protocol", json!("TCP"));
        }
    }
}

/// Where the ServiceAccount admission mounts the token volume (`DefaultAPITokenMountPath`).
pub(crate) const SERVICE_ACCOUNT_TOKEN_MOUNT_PATH: &str = "/var/run/secrets/kubernetes.io/serviceaccount";

/// The ServiceAccount admission plugin on pod creation: unless the pod opts out (`automountServiceAccountToken:
/// false`) or is a mirror pod, a projected `kube-api-access-<5 random>` volume (bound token, cluster CA, namespace)
/// mounted read-only in every container and init container that has nothing at the mount path yet.
pub(crate) fn mount_service_account_token(pod: &mut Value) {
    if is_mirror_pod(pod) || pod.pointer("/spec/automountServiceAccountToken") == Some(&json!(false)) {
        return;
    }
    // utilrand.String's alphabet: no vowels, no confusable characters.
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let suffix: String =
        uuid::Uuid::new_v4().as_bytes()[..5].iter().map(|b| ALPHABET[*b as usize % ALPHABET.len()] as char).collect();
    let name = format!("kube-api-access-{suffix}");
    let spec = obj_mut(pod, "spec");
    if !spec.get("volumes").is_some_and(Value::is_array) {
        spec.remove("volumes");
    }
    let volumes = spec.entry("volumes").or_insert_with(|| json!([]));
    if let Some(vs) = volumes.as_array_mut() {
        vs.push(json!({
            "name": name,
            "projected": {
                "defaultMode": 420,
                "sources": [
                    { "serviceAccountToken": { "expirationSeconds": 3607, "path": "token" } },
                    { "configMap": { "name": "kube-root-ca.crt", "items": [{ "key": "ca.crt", "path": "ca.crt" }] } },
                    { "downwardAPI": { "items": [{ "path": "namespace",
                        "fieldRef": { "apiVersion": "v1", "fieldPath": "metadata.namespace" } }] } },
                ],
            },
        }));
    }
    for list in ["containers", "initContainers"] {
        for c in spec.get_mut(list).and_then(Value::as_array_mut).into_iter().flatten() {
            if !c.get("volumeMounts").is_some_and(Value::is_array) {
                c["volumeMounts"] = json!([]);
            }
            let Some(list) = c["volumeMounts"].as_array_mut() else { continue };
            if list.iter().any(|m| m.get("mountPath").and_then(Value::as_str) == Some(SERVICE_ACCOUNT_TOKEN_MOUNT_PATH))
            {
                continue;
            }
            list.push(json!({ "name": name, "readOnly": true, "mountPath": SERVICE_ACCOUNT_TOKEN_MOUNT_PATH }));
        }
    }
}

/// QoS class as `qos.GetPodQOS` computes it (cpu and memory only).
pub(crate) fn qos_class(pod: &Value) -> &'static str {
    let mut any = false;
    let mut guaranteed = true;
    for list in ["containers", "initContainers"] {
        for c in pod.pointer(&format!("/spec/{list}")).and_then(Value::as_array).into_iter().flatten() {
            let req = c.pointer("/resources/requests");
            let lim = c.pointer("/resources/limits");
            for res in ["cpu", "memory"] {
                let r = req.and_then(|r| r.get(res));
                let l = lim.and_then(|l| l.get(res));
                if r.is_some() || l.is_some() {
                    any = true;
                }
                if l.is_none() || r.is_some_and(|r| Some(r) != l) {
                    guaranteed = false;
                }
            }
        }
    }
    if !any {
        "BestEffort"
    } else if guaranteed {
        "Guaranteed"
    } else {
        "Burstable"
    }
}

pub(crate) fn validate_pod(def: &ResourceDef, name: &str, pod: &Value) -> ApiResult<()> {
    let mut causes = Vec::new();
    match pod.pointer("/spec/containers").and_then(Value::as_array) {
        Some(cs) if !cs.is_empty() => {
            for (i, c) in cs.iter().enumerate() {
                if c.get("name").and_then(Value::as_str).is_none_or(str::is_empty) {
                    causes.push((format!("spec.containers[{i}].name"), "Required value".into()));
                }
                if c.get("image").and_then(Value::as_str).is_none_or(str::is_empty) {
                    causes.push((format!("spec.containers[{i}].image"), "Required value".into()));
                }
            }
        }
        _ => causes.push(("spec.containers".into(), "Required value".into())),
    }
    if causes.is_empty() {
        Ok(())
    } else {
        Err(ApiError::invalid(def, name, causes))
    }
}

/// ValidatePodUpdate: only container images, activeDeadlineSeconds, tolerations (additions),
/// terminationGracePeriodSeconds and scheduling gates (removal) may change.
pub(crate) fn validate_pod_spec_update(def: &ResourceDef, name: &str, old: &Value, new: &Value) -> ApiResult<()> {
    let strip = |spec: &Value| -> Value {
        let mut s = spec.clone();
        if let Some(m) = s.as_object_mut() {
            for f in ["activeDeadlineSeconds", "tolerations", "terminationGracePeriodSeconds", "schedulingGates"] {
                m.remove(f);
            }
            for list in ["containers", "initContainers"] {
                if let Some(cs) = m.get_mut(list).and_then(Value::as_array_mut) {
                    for c in cs.iter_mut().filter_map(Value::as_object_mut) {
                        c.remove("image");
                    }
                }
            }
        }
        s
    };
    let (o, n) = (old.get("spec").unwrap_or(&Value::Null), new.get("spec").unwrap_or(&Value::Null));
    if strip(o) != strip(n) {
        let mut msg = "Forbidden: pod updates may not change fields other than `spec.containers[*].image`,\
`spec.initContainers[*].image`,`spec.activeDeadlineSeconds`,`spec.tolerations` (only additions to existing tolerations),\
`spec.terminationGracePeriodSeconds` (allow it to be set to 1 if it was previously negative)"
            .to_string();
        if o.get("nodeName") != n.get("nodeName") {
            msg.push_str("; spec.nodeName can only be set through the pods/binding subresource");
        }
        return Err(ApiError::invalid(def, name, vec![("spec".into(), msg)]));
    }
    Ok(())
}

pub(crate) fn default_namespace(ns: &mut Value) {
    let name = ns.pointer("/metadata/name").and_then(Value::as_str).unwrap_or("").to_string();
    let labels = obj_mut(obj_mut_value(ns, "metadata"), "labels");
    labels.insert("kubernetes.io/metadata.name".into(), json!(name));
    let spec = obj_mut(ns, "spec");
    set_default(spec, "finalizers", json!(["kubernetes"]));
    ns["status"] = json!({"phase": "Active"});
}

fn obj_mut_value<'a>(v: &'a mut Value, key: &str) -> &'a mut Value {
    if !v.get(key).is_some_and(Value::is_object) {
        v[key] = json!({});
    }
    &mut v[key]
}

/// CSR create: spec.username/groups/uid come from the requester, status starts empty.
pub(crate) fn prepare_csr(def: &ResourceDef, name: &str, csr: &mut Value, user: &UserInfo) -> ApiResult<()> {
    let spec = obj_mut(csr, "spec");
    spec.insert("username".into(), json!(user.name));
    spec.insert("groups".into(), json!(user.groups));
    spec.remove("uid");
    spec.remove("extra");
    let mut causes = Vec::new();
    match spec.get("request").and_then(Value::as_str) {
        None => causes.push(("spec.request".into(), "Required value".into())),
        Some(b64) => {
            use base64::Engine;
            match base64::engine::general_purpose::STANDARD.decode(b64) {
                Ok(pem) => {
                    if let Err(e) = super::pki::csr_subject(&pem) {
                        causes.push(("spec.request".into(), format!("Invalid value: \"<csr>\": {e}")));
                    }
                }
                Err(e) => causes.push(("spec.request".into(), format!("Invalid value: illegal base64: {e}"))),
            }
        }
    }
    if spec.get("signerName").and_then(Value::as_str).is_none_or(str::is_empty) {
        causes.push(("spec.signerName".into(), "Required value".into()));
    }
    if spec.get("usages").and_then(Value::as_array).is_none_or(Vec::is_empty) {
        causes.push(("spec.usages".into(), "Required value".into()));
    }
    if let Some(e) = spec.get("expirationSeconds").and_then(Value::as_i64) {
        if e < 600 {
            causes.push((
                "spec.expirationSeconds".into(),
                format!("Invalid value: {e}: may not specify a duration less than 600 seconds (10 minutes)"),
            ));
        }
    }
    if !causes.is_empty() {
        return Err(ApiError::invalid(def, name, causes));
    }
    csr["status"] = json!({});
    Ok(())
}

const EVENT_RENAMES: &[(&str, &str)] = &[
    ("involvedObject", "regarding"),
    ("message", "note"),
    ("source", "deprecatedSource"),
    ("firstTimestamp", "deprecatedFirstTimestamp"),
    ("lastTimestamp", "deprecatedLastTimestamp"),
    ("count", "deprecatedCount"),
    ("reportingComponent", "reportingController"),
];

/// Stored (internal) form → wire form of `def`.
pub(crate) fn to_external(def: &ResourceDef, obj: &Value) -> Value {
    let mut out = obj.clone();
    if def.codec == Codec::EventsV1 {
        if let Some(m) = out.as_object_mut() {
            for (core, v1) in EVENT_RENAMES {
                if let Some(v) = m.remove(*core) {
                    m.insert(v1.to_string(), v);
                }
            }
        }
    }
    out["apiVersion"] = json!(def.api_version());
    out["kind"] = json!(def.kind);
    out
}

/// Wire form of `def` → stored (internal, core/v1 for events) form.
pub(crate) fn to_internal(def: &ResourceDef, obj: &Value) -> Value {
    let mut out = obj.clone();
    if def.codec == Codec::EventsV1 {
        if let Some(m) = out.as_object_mut() {
            for (core, v1) in EVENT_RENAMES {
                if let Some(v) = m.remove(*v1) {
                    m.insert(core.to_string(), v);
                }
            }
        }
        out["apiVersion"] = json!("v1");
    } else {
        out["apiVersion"] = json!(def.api_version());
    }
    out["kind"] = json!(def.kind);
    out
}
