//! `metav1.Status` errors, shaped and worded like the real API server's.

use serde_json::{json, Value};

use super::resources::ResourceDef;

/// An API error, rendered as a `Status` object with the matching HTTP code.
#[derive(Debug, Clone)]
pub(crate) struct ApiError {
    pub code: u16,
    pub reason: &'static str,
    pub message: String,
    pub details: Option<Value>,
}

fn details(def: &ResourceDef, name: &str) -> Value {
    let mut d = json!({ "kind": def.plural });
    if !name.is_empty() {
        d["name"] = json!(name);
    }
    if !def.group.is_empty() {
        d["group"] = json!(def.group);
    }
    d
}

/// `pods "x"` / `leases.coordination.k8s.io "x"` / `pods` (no name).
fn qualified(def: &ResourceDef, name: &str) -> String {
    let q = def.qualified();
    if name.is_empty() {
        q
    } else {
        format!("{q} \"{name}\"")
    }
}

impl ApiError {
    pub fn new(code: u16, reason: &'static str, message: impl Into<String>) -> Self {
        ApiError { code, reason, message: message.into(), details: None }
    }

    pub fn not_found(def: &ResourceDef, name: &str) -> Self {
        ApiError {
            code: 404,
            reason: "NotFound",
            message: format!("{} not found", qualified(def, name)),
            details: Some(details(def, name)),
        }
    }

    pub fn namespace_not_found(ns: &str) -> Self {
        ApiError {
            code: 404,
            reason: "NotFound",
            message: format!("namespaces \"{ns}\" not found"),
            details: Some(json!({ "name": ns, "kind": "namespaces" })),
        }
    }

    pub fn already_exists(def: &ResourceDef, name: &str) -> Self {
        ApiError {
            code: 409,
            reason: "AlreadyExists",
            message: format!("{} already exists", qualified(def, name)),
            details: Some(details(def, name)),
        }
    }

    /// `Operation cannot be fulfilled on pods "x": <msg>`.
    pub fn conflict(def: &ResourceDef, name: &str, msg: &str) -> Self {
        ApiError {
            code: 409,
            reason: "Conflict",
            message: format!("Operation cannot be fulfilled on {}: {msg}", qualified(def, name)),
            details: Some(details(def, name)),
        }
    }

    pub fn stale(def: &ResourceDef, name: &str) -> Self {
        Self::conflict(
            def,
            name,
            "the object has been modified; please apply your changes to the latest version and try again",
        )
    }

    /// `pods "x" is forbidden: <msg>`.
    pub fn forbidden(def: &ResourceDef, name: &str, msg: &str) -> Self {
        ApiError {
            code: 403,
            reason: "Forbidden",
            message: format!("{} is forbidden: {msg}", qualified(def, name)),
            details: Some(details(def, name)),
        }
    }

    /// 422 with field causes: `Pod "x" is invalid: spec.containers: Required value`.
    pub fn invalid(def: &ResourceDef, name: &str, causes: Vec<(String, String)>) -> Self {
        let text: Vec<String> = causes.iter().map(|(f, m)| format!("{f}: {m}")).collect();
        let message = if text.len() == 1 {
            format!("{} \"{name}\" is invalid: {}", def.kind, text[0])
        } else {
            format!("{} \"{name}\" is invalid: [{}]", def.kind, text.join(", "))
        };
        let causes: Vec<Value> =
            causes.iter().map(|(f, m)| json!({ "reason": "FieldValueInvalid", "message": m, "field": f })).collect();
        let mut d = json!({ "name": name, "kind": def.kind, "causes": causes });
        if !def.group.is_empty() {
            d["group"] = json!(def.group);
        }
        ApiError { code: 422, reason: "Invalid", message, details: Some(d) }
    }

    pub fn bad_request(msg: impl Into<String>) -> Self {
        Self::new(400, "BadRequest", msg)
    }

    pub fn expired(msg: impl Into<String>) -> Self {
        Self::new(410, "Expired", msg)
    }

    pub fn unauthorized() -> Self {
        Self::new(401, "Unauthorized", "Unauthorized")
    }

    pub fn method_not_allowed(method: &str, what: &str) -> Self {
        Self::new(405, "MethodNotAllowed", format!("{method} is not supported on {what}"))
    }

    pub fn unsupported_media_type(ct: &str) -> Self {
        Self::new(
            415,
            "UnsupportedMediaType",
            format!(
                "the body of the request was in an unknown format ({ct}) - accepted media types include: \
                 application/json-patch+json, application/merge-patch+json, application/strategic-merge-patch+json"
            ),
        )
    }

    pub fn internal(msg: impl Into<String>) -> Self {
        Self::new(500, "InternalError", msg)
    }

    pub fn to_status(&self) -> Value {
        let mut s = json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        });
        if let Some(d) = &self.details {
            s["details"] = d.clone();
        }
        s
    }
}

/// A `Status` with `status: Success` (returned by deletes of most kinds).
pub(crate) fn success_status(def: &ResourceDef, name: &str, uid: &str) -> Value {
    let mut d = details(def, name);
    d["uid"] = json!(uid);
    json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Success",
        "details": d,
    })
}

pub(crate) type ApiResult<T> = Result<T, ApiError>;
