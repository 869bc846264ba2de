//! The write paths (create, update, patch, delete, binding) with the strategies of the
//! real registry, plus the CSR approver and signer controllers.

use std::time::Duration;

use base64::Engine;
use serde_json::{json, Value};

use super::auth::{admit, UserInfo};
use super::kinds;
use super::patch::{self, PatchType};
use super::resources::{by_store, ResourceDef};
use super::server::Shared;
use super::status::{success_status, ApiError, ApiResult};
use super::store::{meta_str, EventType, Store};

pub(crate) struct Ctx<'a> {
    pub shared: &'a Shared,
    pub user: &'a UserInfo,
    pub dry_run: bool,
}

impl Ctx<'_> {
    fn commit(&self, store: &mut Store, def: &ResourceDef, ty: EventType, obj: Value, prev: Option<Value>) -> Value {
        if self.dry_run {
            return obj;
        }
        let out = store.commit(def, ty, obj, prev);
        self.shared.notify(store.rv);
        out
    }
}

fn meta(obj: &mut Value) -> &mut serde_json::Map<String, Value> {
    if !obj.get("metadata").is_some_and(Value::is_object) {
        obj["metadata"] = json!({});
    }
    obj["metadata"].as_object_mut().expect("object")
}

/// `dst.field = src.field` (removing it from `dst` when `src` has none).
fn copy_field(dst: &mut Value, src: &Value, field: &str) {
    match src.get(field) {
        Some(v) => dst[field] = v.clone(),
        None => {
            if let Some(m) = dst.as_object_mut() {
                m.remove(field);
            }
        }
    }
}

fn copy_meta(dst: &mut Value, src: &Value, field: &str) {
    let v = src.get("metadata").and_then(|m| m.get(field)).cloned();
    let m = meta(dst);
    match v {
        Some(v) => {
            m.insert(field.into(), v);
        }
        None => {
            m.remove(field);
        }
    }
}

fn conditions(obj: &Value) -> Vec<Value> {
    obj.pointer("/status/conditions").and_then(Value::as_array).cloned().unwrap_or_default()
}

fn cond_type(c: &Value) -> &str {
    c.get("type").and_then(Value::as_str).unwrap_or("")
}

fn has_finalizers(obj: &Value) -> bool {
    obj.pointer("/metadata/finalizers").and_then(Value::as_array).is_some_and(|f| !f.is_empty())
}

fn require_object(body: Value) -> ApiResult<Value> {
    if body.is_object() {
        Ok(body)
    } else {
        Err(ApiError::bad_request("the body of the request must be a JSON object"))
    }
}

pub(crate) fn create(
    ctx: &Ctx,
    store: &mut Store,
    def: &'static ResourceDef,
    url_ns: Option<&str>,
    body: Value,
) -> ApiResult<Value> {
    let mut obj = require_object(body)?;
    let ns = url_ns.unwrap_or("").to_string();
    {
        let m = meta(&mut obj);
        if def.namespaced {
            match m.get("namespace").and_then(Value::as_str) {
                Some(bns) if !bns.is_empty() && bns != ns => {
                    return Err(ApiError::bad_request(
                        "the namespace of the provided object does not match the namespace sent on the request",
                    ));
                }
                _ => {
                    m.insert("namespace".into(), json!(ns));
                }
            }
        } else {
            m.remove("namespace");
        }
        let name = m.get("name").and_then(Value::as_str).unwrap_or("").to_string();
        if name.is_empty() {
            match m.get("generateName").and_then(Value::as_str) {
                Some(g) if !g.is_empty() => {
                    let n = format!("{g}{}", kinds::name_suffix());
                    m.insert("name".into(), json!(n));
                }
                _ => {
                    return Err(ApiError::invalid(
                        def,
                        "",
                        vec![("metadata.name".into(), "Required value: name or generateName is required".into())],
                    ));
                }
            }
        }
        for f in [
            "deletionTimestamp",
            "deletionGracePeriodSeconds",
            "managedFields",
            "selfLink",
            "resourceVersion",
            "generation",
        ] {
            m.remove(f);
        }
        m.insert("uid".into(), json!(kinds::new_uid()));
        m.insert("creationTimestamp".into(), json!(kinds::now_rfc3339()));
    }
    let name = meta_str(&obj, "name").to_string();
    kinds::validate_name(def, &name)?;
    if def.namespaced {
        let nsdef = by_store("", "namespaces");
        if store.get(nsdef, "", &ns).is_none() {
            return Err(ApiError::namespace_not_found(&ns));
        }
    }
    match (def.group, def.plural) {
        ("", "pods") => {
            kinds::default_pod(&mut obj);
            kinds::mount_service_account_token(&mut obj);
            kinds::validate_pod(def, &name, &obj)?;
            meta(&mut obj).insert("generation".into(), json!(1));
            let qos = kinds::qos_class(&obj);
            obj["status"] = json!({ "phase": "Pending", "qosClass": qos });
        }
        ("", "namespaces") => kinds::default_namespace(&mut obj),
        ("", "secrets") => kinds::prepare_secret(&mut obj),
        ("", "services") => kinds::prepare_service(&mut obj, store.rv),
        ("certificates.k8s.io", "certificatesigningrequests") => kinds::prepare_csr(def, &name, &mut obj, ctx.user)?,
        _ => {}
    }
    admit(ctx.user, "create", def, None, &name, None, Some(&obj))?;
    if store.get(def, meta_str(&obj, "namespace"), &name).is_some() {
        return Err(ApiError::already_exists(def, &name));
    }
    let out = ctx.commit(store, def, EventType::Added, obj, None);
    if def.plural == "namespaces" && !ctx.dry_run {
        kinds::seed_namespace(store, &name, ctx.shared.pki.ca_pem());
    }
    if def.plural == "certificatesigningrequests" && !ctx.dry_run {
        process_csr(ctx.shared, store, &name);
    }
    Ok(out)
}

/// PUT. Returns the stored object and whether it was created.
pub(crate) fn update(
    ctx: &Ctx,
    store: &mut Store,
    def: &'static ResourceDef,
    ns: &str,
    name: &str,
    sub: Option<&str>,
    body: Value,
) -> ApiResult<(Value, bool)> {
    let body = require_object(body)?;
    let bns = meta_str(&body, "namespace");
    if def.namespaced && !bns.is_empty() && bns != ns {
        return Err(ApiError::bad_request(
            "the namespace of the provided object does not match the namespace sent on the request",
        ));
    }
    let Some(old) = store.get(def, ns, name).cloned() else {
        // events allow create-on-update
        if sub.is_none() && def.plural == "events" {
            let mut body = body;
            meta(&mut body).insert("name".into(), json!(name));
            return create(ctx, store, def, Some(ns), body).map(|o| (o, true));
        }
        return Err(ApiError::not_found(def, name));
    };
    update_existing(ctx, store, def, sub, old, body).map(|o| (o, false))
}

#[allow(clippy::too_many_arguments)]
pub(crate) fn patch(
    ctx: &Ctx,
    store: &mut Store,
    def: &'static ResourceDef,
    ns: &str,
    name: &str,
    sub: Option<&str>,
    ty: PatchType,
    patch_body: &Value,
) -> ApiResult<Value> {
    let Some(old) = store.get(def, ns, name).cloned() else {
        return Err(ApiError::not_found(def, name));
    };
    let external = kinds::to_external(def, &old);
    let patched = patch::apply(def.kind, ty, &external, patch_body)?;
    let internal = kinds::to_internal(def, &patched);
    update_existing(ctx, store, def, sub, old, internal)
}

fn update_existing(
    ctx: &Ctx,
    store: &mut Store,
    def: &'static ResourceDef,
    sub: Option<&str>,
    old: Value,
    new: Value,
) -> ApiResult<Value> {
    let name = meta_str(&old, "name").to_string();
    let bname = meta_str(&new, "name");
    if !bname.is_empty() && bname != name {
        return Err(ApiError::bad_request(format!(
            "the name of the object ({bname}) does not match the name on the URL ({name})"
        )));
    }
    let brv = meta_str(&new, "resourceVersion");
    if !brv.is_empty() && brv != meta_str(&old, "resourceVersion") {
        return Err(ApiError::stale(def, &name));
    }
    let buid = meta_str(&new, "uid");
    let ouid = meta_str(&old, "uid");
    if !buid.is_empty() && buid != ouid {
        return Err(ApiError::conflict(
            def,
            &name,
            &format!("Precondition failed: UID in precondition: {buid}, UID in object meta: {ouid}"),
        ));
    }

    let mut merged = new;
    match (def.group, def.plural, sub) {
        ("", "pods", None) => {
            copy_field(&mut merged, &old, "status");
            kinds::default_pod(&mut merged);
            kinds::validate_pod_spec_update(def, &name, &old, &merged)?;
        }
        ("", "pods", Some("status")) => {
            copy_field(&mut merged, &old, "spec");
            copy_meta(&mut merged, &old, "ownerReferences");
            if let Some(q) = old.pointer("/status/qosClass").cloned() {
                merged["status"]["qosClass"] = q;
            }
            let phase = |o: &Value| o.pointer("/status/phase").and_then(Value::as_str).unwrap_or("").to_string();
            let (op, np) = (phase(&old), phase(&merged));
            if (op == "Succeeded" || op == "Failed") && np != op {
                return Err(ApiError::invalid(
                    def,
                    &name,
                    vec![("status.phase".into(), format!("Forbidden: cannot transition from {op} to {np}"))],
                ));
            }
            let restart = old.pointer("/spec/restartPolicy").and_then(Value::as_str).unwrap_or("Always");
            let mut causes = Vec::new();
            for list in ["containerStatuses", "initContainerStatuses"] {
                causes.extend(container_state_transition(&old, &merged, list, restart));
            }
            if !causes.is_empty() {
                return Err(ApiError::invalid(def, &name, causes));
            }
        }
        ("", "nodes" | "namespaces", None) => copy_field(&mut merged, &old, "status"),
        ("", "nodes" | "namespaces", Some("status")) => copy_field(&mut merged, &old, "spec"),
        ("certificates.k8s.io", "certificatesigningrequests", None) => {
            copy_field(&mut merged, &old, "spec");
            copy_field(&mut merged, &old, "status");
        }
        ("certificates.k8s.io", "certificatesigningrequests", Some("status")) => {
            copy_field(&mut merged, &old, "spec");
            // Approved/Denied are only changed through /approval
            let mut conds: Vec<Value> =
                conditions(&merged).into_iter().filter(|c| !["Approved", "Denied"].contains(&cond_type(c))).collect();
            conds.extend(conditions(&old).into_iter().filter(|c| ["Approved", "Denied"].contains(&cond_type(c))));
            stamp_conditions(&mut conds);
            if merged.get("status").is_none() {
                merged["status"] = json!({});
            }
            merged["status"]["conditions"] = json!(conds);
        }
        ("certificates.k8s.io", "certificatesigningrequests", Some("approval")) => {
            let mut conds: Vec<Value> =
                conditions(&merged).into_iter().filter(|c| ["Approved", "Denied"].contains(&cond_type(c))).collect();
            let old_conds = conditions(&old);
            for t in ["Approved", "Denied"] {
                if old_conds.iter().any(|c| cond_type(c) == t) && !conds.iter().any(|c| cond_type(c) == t) {
                    return Err(ApiError::invalid(
                        def,
                        &name,
                        vec![(
                            "status.conditions".into(),
                            format!("Forbidden: updates may not remove a condition of type {t:?}"),
                        )],
                    ));
                }
            }
            let has = |t: &str| {
                conds.iter().any(|c| cond_type(c) == t && c.get("status").and_then(Value::as_str) == Some("True"))
            };
            if has("Approved") && has("Denied") {
                return Err(ApiError::invalid(
                    def,
                    &name,
                    vec![(
                        "status.conditions[1].type".into(),
                        "Invalid value: \"Denied\": Approved and Denied conditions are mutually exclusive".into(),
                    )],
                ));
            }
            conds.extend(old_conds.into_iter().filter(|c| !["Approved", "Denied"].contains(&cond_type(c))));
            stamp_conditions(&mut conds);
            let mut status = old.get("status").cloned().unwrap_or_else(|| json!({}));
            status["conditions"] = json!(conds);
            merged["status"] = status;
            copy_field(&mut merged, &old, "spec");
        }
        _ => {}
    }
    for f in [
        "uid",
        "creationTimestamp",
        "deletionTimestamp",
        "deletionGracePeriodSeconds",
        "generation",
        "name",
        "namespace",
    ] {
        copy_meta(&mut merged, &old, f);
    }
    {
        let m = meta(&mut merged);
        m.remove("managedFields");
        m.remove("selfLink");
    }
    if def.is("", "pods") && sub.is_none() && merged.get("spec") != old.get("spec") {
        let g = old.pointer("/metadata/generation").and_then(Value::as_i64).unwrap_or(1);
        meta(&mut merged).insert("generation".into(), json!(g + 1));
    }
    if old.pointer("/metadata/deletionTimestamp").is_some() {
        let added = merged
            .pointer("/metadata/finalizers")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .any(|f| !old.pointer("/metadata/finalizers").and_then(Value::as_array).is_some_and(|o| o.contains(f)));
        if added {
            return Err(ApiError::invalid(
                def,
                &name,
                vec![(
                    "metadata.finalizers".into(),
                    "Forbidden: no new finalizers can be added if the object is being deleted".into(),
                )],
            ));
        }
    }
    admit(ctx.user, "update", def, sub, &name, Some(&old), Some(&merged))?;

    // A no-op update is not written (no new resourceVersion, no watch event).
    let mut cmp = merged.clone();
    meta(&mut cmp).insert("resourceVersion".into(), old["metadata"]["resourceVersion"].clone());
    if cmp == old {
        return Ok(old);
    }
    let finished = merged.pointer("/metadata/deletionTimestamp").is_some()
        && !has_finalizers(&merged)
        && merged.pointer("/metadata/deletionGracePeriodSeconds").and_then(Value::as_i64).unwrap_or(0) == 0;
    let ty = if finished { EventType::Deleted } else { EventType::Modified };
    let out = ctx.commit(store, def, ty, merged, Some(old));
    if def.plural == "certificatesigningrequests" && !ctx.dry_run && ty == EventType::Modified {
        process_csr(ctx.shared, store, &name);
    }
    Ok(out)
}

/// `ValidateContainerStateTransition`: unless the pod restarts its containers, a terminated container (with
/// `OnFailure`: one that exited 0) may not be reported running or waiting again.
fn container_state_transition(old: &Value, new: &Value, list: &str, restart: &str) -> Vec<(String, String)> {
    if restart == "Always" {
        return Vec::new();
    }
    let statuses =
        |o: &Value| o.pointer(&format!("/status/{list}")).and_then(Value::as_array).cloned().unwrap_or_default();
    let news = statuses(new);
    let mut causes = Vec::new();
    for (i, o) in statuses(old).iter().enumerate() {
        let Some(term) = o.pointer("/state/terminated") else { continue };
        if restart == "OnFailure" && term.get("exitCode").and_then(Value::as_i64).unwrap_or(0) != 0 {
            continue;
        }
        let name = o.get("name");
        if news.iter().any(|n| n.get("name") == name && n.pointer("/state/terminated").is_none()) {
            causes.push((
                format!("status.{list}[{i}].state"),
                "Forbidden: may not be transitioned to non-terminated state".to_string(),
            ));
        }
    }
    causes
}

fn stamp_conditions(conds: &mut [Value]) {
    let now = kinds::now_rfc3339();
    for c in conds.iter_mut().filter_map(Value::as_object_mut) {
        for f in ["lastUpdateTime", "lastTransitionTime"] {
            if c.get(f).is_none_or(Value::is_null) {
                c.insert(f.into(), json!(now));
            }
        }
    }
}

#[derive(Debug, Default)]
pub(crate) struct DeleteOpts {
    pub grace_period: Option<i64>,
    pub uid: Option<String>,
    pub resource_version: Option<String>,
}

impl DeleteOpts {
    pub fn parse(body: &Value, query: &std::collections::HashMap<String, String>) -> ApiResult<Self> {
        let mut o = DeleteOpts {
            grace_period: body.get("gracePeriodSeconds").and_then(Value::as_i64),
            uid: body.pointer("/preconditions/uid").and_then(Value::as_str).map(str::to_string),
            resource_version: body
                .pointer("/preconditions/resourceVersion")
                .and_then(Value::as_str)
                .map(str::to_string),
        };
        if let Some(g) = query.get("gracePeriodSeconds") {
            o.grace_period =
                Some(g.parse().map_err(|_| ApiError::bad_request(format!("invalid gracePeriodSeconds {g:?}")))?);
        }
        Ok(o)
    }
}

/// DELETE. Returns the response body (the object for pods and namespaces, a `Status` otherwise).
pub(crate) fn delete(
    ctx: &Ctx,
    store: &mut Store,
    def: &'static ResourceDef,
    ns: &str,
    name: &str,
    opts: &DeleteOpts,
) -> ApiResult<Value> {
    let Some(old) = store.get(def, ns, name).cloned() else {
        return Err(ApiError::not_found(def, name));
    };
    if let Some(uid) = opts.uid.as_deref().filter(|u| !u.is_empty()) {
        let ouid = meta_str(&old, "uid");
        if uid != ouid {
            return Err(ApiError::conflict(
                def,
                name,
                &format!("Precondition failed: UID in precondition: {uid}, UID in object meta: {ouid}"),
            ));
        }
    }
    if let Some(rv) = opts.resource_version.as_deref().filter(|u| !u.is_empty()) {
        let orv = meta_str(&old, "resourceVersion");
        if rv != orv {
            return Err(ApiError::conflict(
                def,
                name,
                &format!(
                    "Precondition failed: ResourceVersion in precondition: {rv}, ResourceVersion in object meta: {orv}"
                ),
            ));
        }
    }
    admit(ctx.user, "delete", def, None, name, Some(&old), None)?;
    let ext = |o: Value| kinds::to_external(def, &o);

    if def.is("", "pods") {
        let mut grace = opts
            .grace_period
            .or_else(|| old.pointer("/spec/terminationGracePeriodSeconds").and_then(Value::as_i64))
            .unwrap_or(30);
        if grace < 0 {
            grace = 1;
        }
        let phase = old.pointer("/status/phase").and_then(Value::as_str).unwrap_or("");
        let unscheduled = old.pointer("/spec/nodeName").and_then(Value::as_str).is_none_or(str::is_empty);
        if unscheduled || phase == "Succeeded" || phase == "Failed" {
            grace = 0;
        }
        if grace > 0 {
            if let Some(existing) = old.pointer("/metadata/deletionGracePeriodSeconds").and_then(Value::as_i64) {
                if old.pointer("/metadata/deletionTimestamp").is_some() && grace >= existing {
                    return Ok(ext(old));
                }
            }
            let mut obj = old.clone();
            let m = meta(&mut obj);
            m.insert("deletionTimestamp".into(), json!(kinds::rfc3339_in(grace)));
            m.insert("deletionGracePeriodSeconds".into(), json!(grace));
            return Ok(ext(ctx.commit(store, def, EventType::Modified, obj, Some(old))));
        }
        if !has_finalizers(&old) {
            // A deletion without grace still goes through the graceful path upstream (BeforeDelete stamps
            // deletionTimestamp and a grace of 0, and that update is written), so watchers see MODIFIED, then DELETED.
            let mut obj = old.clone();
            let m = meta(&mut obj);
            m.insert("deletionTimestamp".into(), json!(kinds::now_rfc3339()));
            m.insert("deletionGracePeriodSeconds".into(), json!(0));
            let stamped = ctx.commit(store, def, EventType::Modified, obj, Some(old));
            return Ok(ext(ctx.commit(store, def, EventType::Deleted, stamped.clone(), Some(stamped))));
        }
    }
    if def.is("", "namespaces") && !ctx.dry_run {
        for d in
            super::resources::RESOURCES.iter().filter(|d| d.namespaced && d.codec == super::resources::Codec::Identity)
        {
            let victims: Vec<Value> = store.list(d, Some(name)).cloned().collect();
            for v in victims {
                ctx.commit(store, d, EventType::Deleted, v.clone(), Some(v));
            }
        }
    }
    if has_finalizers(&old) {
        let mut obj = old.clone();
        let m = meta(&mut obj);
        if !m.contains_key("deletionTimestamp") {
            m.insert("deletionTimestamp".into(), json!(kinds::now_rfc3339()));
        }
        m.insert("deletionGracePeriodSeconds".into(), json!(0));
        if obj == old {
            return Ok(ext(old));
        }
        return Ok(ext(ctx.commit(store, def, EventType::Modified, obj, Some(old))));
    }
    let uid = meta_str(&old, "uid").to_string();
    let out = ctx.commit(store, def, EventType::Deleted, old.clone(), Some(old));
    if def.is("", "pods") || def.is("", "namespaces") {
        Ok(ext(out))
    } else {
        Ok(success_status(def, name, &uid))
    }
}

/// POST serviceaccounts/<name>/token: a token for an existing service account, bound to the object named in
/// the request, expiring after `expirationSeconds` (default one hour). The token is not a signed JWT, only shaped
/// like one: nothing here verifies it.
pub(crate) fn token_request(store: &mut Store, ns: &str, name: &str, body: &Value) -> ApiResult<Value> {
    let sa = by_store("", "serviceaccounts");
    if store.get(sa, ns, name).is_none() {
        return Err(ApiError::not_found(sa, name));
    }
    let seconds = body.pointer("/spec/expirationSeconds").and_then(Value::as_i64).unwrap_or(3600);
    let claims = json!({
        "sub": format!("system:serviceaccount:{ns}:{name}"),
        "aud": body.pointer("/spec/audiences").cloned().unwrap_or(json!([])),
        "bound": body.pointer("/spec/boundObjectRef").cloned().unwrap_or(Value::Null),
        "jti": kinds::new_uid(),
    });
    let part = |v: &Value| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string());
    let token = format!("{}.{}.{}", part(&json!({ "alg": "none" })), part(&claims), part(&json!(kinds::new_uid())));
    let mut out = body.clone();
    out["apiVersion"] = json!("authentication.k8s.io/v1");
    out["kind"] = json!("TokenRequest");
    out["metadata"] = json!({ "name": name, "namespace": ns, "creationTimestamp": kinds::now_rfc3339() });
    out["spec"]["expirationSeconds"] = json!(seconds);
    out["status"] = json!({ "token": token, "expirationTimestamp": kinds::rfc3339_in(seconds) });
    Ok(out)
}

/// POST pods/<name>/binding: the only way to set `spec.nodeName` of an existing pod.
pub(crate) fn bind(ctx: &Ctx, store: &mut Store, ns: &str, name: &str, body: &Value) -> ApiResult<Value> {
    let def = by_store("", "pods");
    let Some(old) = store.get(def, ns, name).cloned() else {
        return Err(ApiError::not_found(def, name));
    };
    let bname = meta_str(body, "name");
    if !bname.is_empty() && bname != name {
        return Err(ApiError::bad_request(format!(
            "the name of the object ({bname}) does not match the name on the URL ({name})"
        )));
    }
    let target = body.pointer("/target/name").and_then(Value::as_str).unwrap_or("");
    let kind = body.pointer("/target/kind").and_then(Value::as_str).unwrap_or("");
    if target.is_empty() || !(kind.is_empty() || kind == "Node") {
        let bdef = &BINDING;
        return Err(ApiError::invalid(bdef, name, vec![("target.name".into(), "Required value".into())]));
    }
    let bdef = &BINDING;
    if old.pointer("/metadata/deletionTimestamp").is_some() {
        return Err(ApiError::conflict(
            bdef,
            name,
            &format!("pod {name} is being deleted, cannot be assigned to a host"),
        ));
    }
    if let Some(n) = old.pointer("/spec/nodeName").and_then(Value::as_str).filter(|n| !n.is_empty()) {
        return Err(ApiError::conflict(bdef, name, &format!("pod {name} is already assigned to node {n:?}")));
    }
    let mut pod = old.clone();
    pod["spec"]["nodeName"] = json!(target);
    let mut conds: Vec<Value> = conditions(&pod).into_iter().filter(|c| cond_type(c) != "PodScheduled").collect();
    conds.push(json!({"type": "PodScheduled", "status": "True", "lastProbeTime": null, "lastTransitionTime": kinds::now_rfc3339()}));
    pod["status"]["conditions"] = json!(conds);
    ctx.commit(store, def, EventType::Modified, pod, Some(old));
    Ok(json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "code": 201}))
}

/// Stand-in definition for `pods/binding` errors (`pods/binding "x"`).
static BINDING: ResourceDef = ResourceDef {
    group: "",
    version: "v1",
    plural: "pods/binding",
    singular: "binding",
    kind: "Binding",
    namespaced: true,
    short_names: &[],
    subresources: &[],
    store: "bindings",
    codec: super::resources::Codec::Identity,
};

pub(crate) const KUBELET_CLIENT_SIGNER: &str = "kubernetes.io/kube-apiserver-client-kubelet";
pub(crate) const KUBELET_SERVING_SIGNER: &str = "kubernetes.io/kubelet-serving";
pub(crate) const CLIENT_SIGNER: &str = "kubernetes.io/kube-apiserver-client";

fn csr_request_pem(csr: &Value) -> Option<Vec<u8>> {
    let b64 = csr.pointer("/spec/request").and_then(Value::as_str)?;
    base64::engine::general_purpose::STANDARD.decode(b64).ok()
}

fn csr_usages(csr: &Value) -> Vec<String> {
    csr.pointer("/spec/usages")
        .and_then(Value::as_array)
        .map(|u| u.iter().filter_map(Value::as_str).map(str::to_string).collect())
        .unwrap_or_default()
}

/// The checks of `ValidateKubeletClientCSR` / `ValidateKubeletServingCSR`.
fn validate_kubelet_csr(csr: &Value, serving: bool) -> Result<String, String> {
    let pem = csr_request_pem(csr).ok_or("unable to decode spec.request")?;
    let (cn, orgs) = super::pki::csr_subject(&pem)?;
    if orgs != ["system:nodes"] {
        return Err("subject organization is not system:nodes".into());
    }
    if !cn.starts_with("system:node:") {
        return Err("subject common name does not begin with system:node:".into());
    }
    let usages = csr_usages(csr);
    let (required, allowed): (&str, &[&str]) = if serving {
        ("server auth", &["digital signature", "key encipherment", "server auth"])
    } else {
        ("client auth", &["digital signature", "key encipherment", "client auth"])
    };
    if !usages.iter().any(|u| u == required) || usages.iter().any(|u| !allowed.contains(&u.as_str())) {
        return Err(format!("usages did not match {allowed:?}"));
    }
    Ok(cn)
}

fn condition(ty: &str, reason: &str, message: &str) -> Value {
    let now = kinds::now_rfc3339();
    json!({"type": ty, "status": "True", "reason": reason, "message": message, "lastUpdateTime": now, "lastTransitionTime": now})
}

/// The csrapproving and csrsigning controllers, run synchronously after each CSR write.
pub(crate) fn process_csr(shared: &Shared, store: &mut Store, name: &str) {
    let def = by_store("certificates.k8s.io", "certificatesigningrequests");
    let Some(mut csr) = store.get(def, "", name).cloned() else { return };
    let has = |csr: &Value, t: &str| conditions(csr).iter().any(|c| cond_type(c) == t);
    let signer = csr.pointer("/spec/signerName").and_then(Value::as_str).unwrap_or("").to_string();
    let requester = csr.pointer("/spec/username").and_then(Value::as_str).unwrap_or("").to_string();
    let groups: Vec<String> = csr
        .pointer("/spec/groups")
        .and_then(Value::as_array)
        .map(|g| g.iter().filter_map(Value::as_str).map(str::to_string).collect())
        .unwrap_or_default();
    let in_group = |g: &str| groups.iter().any(|x| x == g);

    if !has(&csr, "Approved") && !has(&csr, "Denied") && !has(&csr, "Failed") {
        let decision = match signer.as_str() {
            KUBELET_CLIENT_SIGNER if shared.auto_approve.load(std::sync::atomic::Ordering::SeqCst) => {
                match validate_kubelet_csr(&csr, false) {
                    Err(e) => Some(condition("Denied", "AutoDenied", &format!("kubelet client CSR rejected: {e}"))),
                    Ok(cn) => {
                        let allowed = in_group("system:masters")
                            || in_group("system:bootstrappers")
                            || (in_group("system:nodes") && requester == cn);
                        allowed.then(|| {
                            condition(
                                "Approved",
                                "AutoApproved",
                                "Auto approving kubelet client certificate after SubjectAccessReview.",
                            )
                        })
                    }
                }
            }
            KUBELET_SERVING_SIGNER if shared.auto_approve_serving.load(std::sync::atomic::Ordering::SeqCst) => {
                match validate_kubelet_csr(&csr, true) {
                    Err(e) => Some(condition("Denied", "AutoDenied", &format!("kubelet serving CSR rejected: {e}"))),
                    Ok(cn) => (requester == cn || in_group("system:masters"))
                        .then(|| condition("Approved", "AutoApproved", "Auto approving kubelet serving certificate.")),
                }
            }
            _ => None,
        };
        if let Some(c) = decision {
            let old = csr.clone();
            let mut conds = conditions(&csr);
            conds.push(c);
            csr["status"]["conditions"] = json!(conds);
            csr = store.commit(def, EventType::Modified, csr, Some(old));
            shared.notify(store.rv);
        }
    }

    let approved = has(&csr, "Approved") && !has(&csr, "Denied");
    let signed = csr.pointer("/status/certificate").and_then(Value::as_str).is_some_and(|c| !c.is_empty());
    if !approved || signed || has(&csr, "Failed") {
        return;
    }
    let valid = match signer.as_str() {
        KUBELET_CLIENT_SIGNER => validate_kubelet_csr(&csr, false).map(|_| ()),
        KUBELET_SERVING_SIGNER => validate_kubelet_csr(&csr, true).map(|_| ()),
        CLIENT_SIGNER => Ok(()),
        _ => return, // not a signer this control plane implements
    };
    let ttl = csr
        .pointer("/spec/expirationSeconds")
        .and_then(Value::as_u64)
        .map(|s| Duration::from_secs(s.max(600)))
        .unwrap_or(Duration::from_secs(365 * 24 * 3600));
    let result = valid.and_then(|_| {
        let pem = csr_request_pem(&csr).ok_or_else(|| "unable to decode spec.request".to_string())?;
        let pem = String::from_utf8(pem).map_err(|e| e.to_string())?;
        shared.pki.sign_csr(&pem, &csr_usages(&csr), ttl)
    });
    let old = csr.clone();
    match result {
        Ok(cert) => {
            csr["status"]["certificate"] = json!(base64::engine::general_purpose::STANDARD.encode(cert));
        }
        Err(e) => {
            let mut conds = conditions(&csr);
            conds.push(condition("Failed", "SignerValidationFailure", &e));
            csr["status"]["conditions"] = json!(conds);
        }
    }
    store.commit(def, EventType::Modified, csr, Some(old));
    shared.notify(store.rv);
}
