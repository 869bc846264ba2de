//! HTTP request handling: authentication, URL → resource request, verbs, responses.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use hyper::body::Incoming;
use hyper::{header, Method, Request, Response};
use serde_json::{json, Value};

use super::auth::{authorize, authorize_path, Attrs, UserInfo};
use super::kinds::{to_external, to_internal};
use super::patch::PatchType;
use super::registry::{self, Ctx, DeleteOpts};
use super::resources::{self, ResourceDef};
use super::selectors::{FieldSelector, LabelSelector, Selection};
use super::server::Shared;
use super::status::{ApiError, ApiResult};
use super::watch::{self, WatchRequest};
use super::RequestRecord;

enum Reply {
    Json(u16, Value),
    Text(u16, &'static str),
    Stream(Body),
}

impl From<ApiError> for Reply {
    fn from(e: ApiError) -> Self {
        Reply::Json(e.code, e.to_status())
    }
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                match std::str::from_utf8(&bytes[i + 1..i + 3]).ok().and_then(|h| u8::from_str_radix(h, 16).ok()) {
                    Some(b) => {
                        out.push(b);
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn parse_query(q: Option<&str>) -> HashMap<String, String> {
    q.unwrap_or("")
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| match p.split_once('=') {
            Some((k, v)) => (percent_decode(k), percent_decode(v)),
            None => (percent_decode(p), String::new()),
        })
        .collect()
}

fn truthy(v: Option<&String>) -> bool {
    matches!(v.map(String::as_str), Some("1" | "true" | "True"))
}

fn authenticate(shared: &Shared, cert_user: Option<UserInfo>, headers: &hyper::HeaderMap) -> ApiResult<UserInfo> {
    if let Some(u) = cert_user {
        return Ok(u);
    }
    if let Some(h) = headers.get(header::AUTHORIZATION) {
        let h = h.to_str().unwrap_or("");
        let Some(token) = h.strip_prefix("Bearer ").map(str::trim) else {
            return Err(ApiError::unauthorized());
        };
        let tokens = shared.tokens.lock().unwrap_or_else(|e| e.into_inner());
        return tokens.get(token).cloned().ok_or_else(ApiError::unauthorized);
    }
    Ok(UserInfo::anonymous())
}

pub(crate) async fn handle(shared: Arc<Shared>, cert_user: Option<UserInfo>, req: Request<Incoming>) -> Response<Body> {
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let path_q = req.uri().path_and_query().map(|p| p.to_string()).unwrap_or_else(|| path.clone());
    let query = parse_query(req.uri().query());
    let headers = req.headers().clone();
    let user = authenticate(&shared, cert_user, &headers);
    let body = axum::body::to_bytes(Body::new(req.into_body()), 32 << 20).await;
    let (user_name, reply, body_text) = match (user, body) {
        (Err(e), _) => (String::new(), Reply::from(e), String::new()),
        (Ok(u), Err(e)) => {
            (u.name.clone(), Reply::from(ApiError::bad_request(format!("reading body: {e}"))), String::new())
        }
        (Ok(u), Ok(b)) => {
            let text = String::from_utf8_lossy(&b).into_owned();
            let reply = match take_fault(&shared, &u.name, method.as_str(), &path) {
                Some(e) => Reply::from(e),
                None => route(&shared, &u, &method, &path, &query, &headers, &b),
            };
            (u.name.clone(), reply, text)
        }
    };
    let (status, resp) = match reply {
        Reply::Json(code, v) => {
            let mut b = Response::builder().status(code).header(header::CONTENT_TYPE, "application/json");
            // As upstream's error writer: a Status asking the client to come back later says so in the header too.
            if let Some(secs) = v.pointer("/details/retryAfterSeconds").and_then(Value::as_u64).filter(|s| *s > 0) {
                b = b.header(header::RETRY_AFTER, secs.to_string());
            }
            (code, b.body(Body::from(serde_json::to_vec(&v).expect("serializable"))).expect("response"))
        }
        Reply::Text(code, t) => (
            code,
            Response::builder()
                .status(code)
                .header(header::CONTENT_TYPE, "text/plain; charset=utf-8")
                .body(Body::from(t))
                .expect("response"),
        ),
        Reply::Stream(body) => (
            200,
            Response::builder()
                .status(200)
                .header(header::CONTENT_TYPE, "application/json")
                .header(header::CACHE_CONTROL, "no-cache, private")
                .body(body)
                .expect("response"),
        ),
    };
    shared.requests.lock().unwrap_or_else(|e| e.into_inner()).push(RequestRecord {
        method: method.to_string(),
        path: path_q,
        user: user_name,
        status,
        body: body_text,
    });
    resp
}

/// The first armed fault matching this request, used up by one.
fn take_fault(shared: &Shared, user: &str, method: &str, path: &str) -> Option<ApiError> {
    let mut faults = shared.faults.lock().unwrap_or_else(|e| e.into_inner());
    let fault = faults.iter_mut().find(|f| {
        f.times > 0
            && f.method == method
            && path.ends_with(&f.path_suffix)
            && f.user.as_deref().is_none_or(|u| u == user)
    })?;
    fault.times -= 1;
    let mut e = ApiError::new(fault.code, fault.reason, fault.message.clone());
    if fault.retry_after_seconds > 0 {
        e.details = Some(json!({ "retryAfterSeconds": fault.retry_after_seconds }));
    }
    Some(e)
}

fn version() -> Value {
    json!({
        "major": "1",
        "minor": "34",
        "emulationMajor": "1",
        "emulationMinor": "34",
        "minCompatibilityMajor": "1",
        "minCompatibilityMinor": "33",
        "gitVersion": "v1.34.0",
        "gitCommit": "rkubelet-apiserver-double",
        "gitTreeState": "clean",
        "buildDate": "2025-08-27T00:00:00Z",
        "goVersion": "go1.24.6",
        "compiler": "gc",
        "platform": "linux/amd64",
    })
}

fn route(
    shared: &Arc<Shared>,
    user: &UserInfo,
    method: &Method,
    path: &str,
    query: &HashMap<String, String>,
    headers: &hyper::HeaderMap,
    body: &[u8],
) -> Reply {
    let segs: Vec<&str> = path.trim_matches('/').split('/').filter(|s| !s.is_empty()).collect();
    let non_resource = |doc: Option<Value>| -> Reply {
        if let Err(e) = authorize_path(user, path) {
            return e.into();
        }
        if method != Method::GET {
            return ApiError::method_not_allowed(method.as_str(), path).into();
        }
        match doc {
            Some(d) => Reply::Json(200, d),
            None => Reply::Text(404, "404 page not found\n"),
        }
    };
    match segs.as_slice() {
        ["version"] => non_resource(Some(version())),
        ["healthz" | "livez" | "readyz", ..] => {
            if let Err(e) = authorize_path(user, path) {
                return e.into();
            }
            Reply::Text(200, "ok")
        }
        ["api"] => non_resource(Some(resources::api_versions(&shared.addr.to_string()))),
        ["apis"] => non_resource(Some(resources::api_group_list())),
        ["api", "v1"] => non_resource(resources::api_resource_list("", "v1")),
        ["apis", g] => non_resource(resources::api_group(g)),
        ["apis", g, v] => non_resource(resources::api_resource_list(g, v)),
        ["apis", "authentication.k8s.io", "v1", "tokenreviews"] if method == Method::POST => token_review(shared, body),
        ["api", "v1", rest @ ..] => resource(shared, user, method, "", "v1", rest, query, headers, body),
        ["apis", g, v, rest @ ..] => resource(shared, user, method, g, v, rest, query, headers, body),
        _ => non_resource(None),
    }
}

/// POST tokenreviews: whether `spec.token` is one of the registered tokens, and whose (as the API server answers a
/// kubelet's webhook authenticator).
fn token_review(shared: &Shared, body: &[u8]) -> Reply {
    let review = match parse_json(body) {
        Ok(v) => v,
        Err(e) => return e.into(),
    };
    let token = review.pointer("/spec/token").and_then(Value::as_str).unwrap_or("");
    let found = shared.tokens.lock().unwrap_or_else(|e| e.into_inner()).get(token).cloned();
    let status = match found {
        Some(u) => json!({ "authenticated": true, "user": { "username": u.name, "groups": u.groups } }),
        None => json!({ "authenticated": false, "error": "invalid bearer token" }),
    };
    let mut out = review;
    out["apiVersion"] = json!("authentication.k8s.io/v1");
    out["kind"] = json!("TokenReview");
    out["status"] = status;
    Reply::Json(201, out)
}

struct Target<'a> {
    def: &'static ResourceDef,
    ns: Option<&'a str>,
    name: Option<&'a str>,
    sub: Option<&'a str>,
}

fn parse_target<'a>(group: &str, version: &str, rest: &[&'a str]) -> Option<Target<'a>> {
    let find = |plural: &str| resources::find(group, version, plural);
    let t = match rest {
        ["namespaces", ns, plural, tail @ ..]
            if !(group.is_empty() && tail.is_empty() && ["status", "finalize"].contains(plural)) =>
        {
            let def = find(plural)?;
            if !def.namespaced {
                return None;
            }
            match tail {
                [] => Target { def, ns: Some(*ns), name: None, sub: None },
                [name] => Target { def, ns: Some(*ns), name: Some(*name), sub: None },
                [name, sub] => Target { def, ns: Some(*ns), name: Some(*name), sub: Some(*sub) },
                _ => return None,
            }
        }
        [plural] => Target { def: find(plural)?, ns: None, name: None, sub: None },
        [plural, name] => {
            let def = find(plural)?;
            if def.namespaced {
                return None;
            }
            Target { def, ns: None, name: Some(*name), sub: None }
        }
        [plural, name, sub] => {
            let def = find(plural)?;
            if def.namespaced {
                return None;
            }
            Target { def, ns: None, name: Some(*name), sub: Some(*sub) }
        }
        _ => return None,
    };
    if let Some(s) = t.sub {
        if !t.def.subresources.contains(&s) {
            return None;
        }
    }
    Some(t)
}

#[allow(clippy::too_many_arguments)]
fn resource(
    shared: &Arc<Shared>,
    user: &UserInfo,
    method: &Method,
    group: &str,
    version: &str,
    rest: &[&str],
    query: &HashMap<String, String>,
    headers: &hyper::HeaderMap,
    body: &[u8],
) -> Reply {
    let Some(t) = parse_target(group, version, rest) else {
        return Reply::Text(404, "404 page not found\n");
    };
    match serve_resource(shared, user, method, &t, query, headers, body) {
        Ok(r) => r,
        Err(e) => e.into(),
    }
}

fn parse_json(body: &[u8]) -> ApiResult<Value> {
    serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("couldn't get version/kind; json parse error: {e}")))
}

fn check_json_content_type(headers: &hyper::HeaderMap) -> ApiResult<()> {
    let ct = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("application/json");
    let base = ct.split(';').next().unwrap_or("").trim();
    if base == "application/json" || base.is_empty() || base == "*/*" {
        Ok(())
    } else {
        Err(ApiError::new(
            415,
            "UnsupportedMediaType",
            format!("the body of the request was in an unknown format - accepted media types include: application/json (got {ct})"),
        ))
    }
}

fn check_kind(def: &ResourceDef, obj: &Value, kind: &str, api_version: &str) -> ApiResult<()> {
    let k = obj.get("kind").and_then(Value::as_str).unwrap_or("");
    let av = obj.get("apiVersion").and_then(Value::as_str).unwrap_or("");
    if (!k.is_empty() && k != kind) || (!av.is_empty() && av != api_version) {
        return Err(ApiError::bad_request(format!(
            "the API version in the data ({av}) does not match the expected API version ({api_version}) or kind ({k}) is not {kind} for {}",
            def.qualified()
        )));
    }
    Ok(())
}

fn serve_resource(
    shared: &Arc<Shared>,
    user: &UserInfo,
    method: &Method,
    t: &Target,
    query: &HashMap<String, String>,
    headers: &hyper::HeaderMap,
    body: &[u8],
) -> ApiResult<Reply> {
    let def = t.def;
    let is_watch = truthy(query.get("watch"));
    let verb = match (method, t.name, t.sub) {
        (&Method::GET, Some(_), _) => "get",
        (&Method::GET, None, _) if is_watch => "watch",
        (&Method::GET, None, _) => "list",
        (&Method::POST, None, None) => "create",
        (&Method::POST, Some(_), Some("binding" | "token")) => "create",
        (&Method::PUT, Some(_), _) => "update",
        (&Method::PATCH, Some(_), _) => "patch",
        (&Method::DELETE, Some(_), None) => "delete",
        (&Method::DELETE, None, None) => {
            return Err(ApiError::method_not_allowed("deletecollection", &def.qualified()));
        }
        _ => return Err(ApiError::method_not_allowed(method.as_str(), &def.qualified())),
    };
    // Namespaced resources need a namespace except for cross-namespace list/watch.
    if def.namespaced && t.ns.is_none() && !matches!(verb, "list" | "watch") {
        return Err(ApiError::method_not_allowed(method.as_str(), &def.qualified()));
    }
    if t.sub == Some("binding") && verb != "create" {
        return Err(ApiError::method_not_allowed(method.as_str(), "pods/binding"));
    }
    let sel = if matches!(verb, "list" | "watch") {
        Some(Selection {
            namespace: t.ns.map(str::to_string),
            labels: LabelSelector::parse(query.get("labelSelector").map(String::as_str).unwrap_or(""))?,
            fields: FieldSelector::parse(query.get("fieldSelector").map(String::as_str).unwrap_or(""), def)?,
        })
    } else {
        None
    };
    let ns = t.ns.unwrap_or("");
    let name = t.name.unwrap_or("");
    let dry_run = query.get("dryRun").is_some_and(|v| v == "All");
    let ctx = Ctx { shared, user, dry_run };

    let mut store = shared.lock_store();
    authorize(
        user,
        &Attrs { verb, def, sub: t.sub, namespace: t.ns, name: t.name, fields: sel.as_ref().map(|s| &s.fields) },
        &store,
    )?;
    match verb {
        "get" => {
            let obj = store.get(def, ns, name).ok_or_else(|| ApiError::not_found(def, name))?;
            Ok(Reply::Json(200, to_external(def, obj)))
        }
        "list" => {
            let sel = sel.expect("selection");
            let items: Vec<Value> = store
                .list(def, t.ns)
                .filter(|o| sel.matches(def, o))
                .map(|o| {
                    let mut e = to_external(def, o);
                    if let Some(m) = e.as_object_mut() {
                        m.remove("kind");
                        m.remove("apiVersion");
                    }
                    e
                })
                .collect();
            Ok(Reply::Json(
                200,
                json!({
                    "kind": format!("{}List", def.kind),
                    "apiVersion": def.api_version(),
                    "metadata": { "resourceVersion": store.rv.to_string() },
                    "items": items,
                }),
            ))
        }
        "watch" => {
            drop(store);
            let timeout = match query.get("timeoutSeconds") {
                Some(s) => Some(Duration::from_secs(
                    s.parse().map_err(|_| ApiError::bad_request(format!("invalid timeoutSeconds {s:?}")))?,
                )),
                None => None,
            };
            let body = watch::start(
                shared.clone(),
                WatchRequest {
                    def,
                    sel: sel.expect("selection"),
                    resource_version: query.get("resourceVersion").cloned(),
                    bookmarks: truthy(query.get("allowWatchBookmarks")),
                    send_initial_events: truthy(query.get("sendInitialEvents")),
                    timeout,
                },
            )?;
            Ok(Reply::Stream(body))
        }
        "create" if t.sub == Some("binding") => {
            check_json_content_type(headers)?;
            let b = parse_json(body)?;
            let k = b.get("kind").and_then(Value::as_str).unwrap_or("Binding");
            if k != "Binding" {
                return Err(ApiError::bad_request(format!("expected kind Binding, got {k}")));
            }
            let out = registry::bind(&ctx, &mut store, ns, name, &b)?;
            Ok(Reply::Json(201, out))
        }
        "create" if t.sub == Some("token") => {
            check_json_content_type(headers)?;
            let b = parse_json(body)?;
            let out = registry::token_request(&mut store, ns, name, &b)?;
            Ok(Reply::Json(201, out))
        }
        "create" => {
            check_json_content_type(headers)?;
            let b = parse_json(body)?;
            check_kind(def, &b, def.kind, &def.api_version())?;
            let obj = registry::create(&ctx, &mut store, def, t.ns, to_internal(def, &b))?;
            Ok(Reply::Json(201, to_external(def, &obj)))
        }
        "update" => {
            check_json_content_type(headers)?;
            let b = parse_json(body)?;
            check_kind(def, &b, def.kind, &def.api_version())?;
            let (obj, created) = registry::update(&ctx, &mut store, def, ns, name, t.sub, to_internal(def, &b))?;
            Ok(Reply::Json(if created { 201 } else { 200 }, to_external(def, &obj)))
        }
        "patch" => {
            let ct = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
            let ty = PatchType::from_content_type(ct)?;
            let p = parse_json(body)?;
            let obj = registry::patch(&ctx, &mut store, def, ns, name, t.sub, ty, &p)?;
            Ok(Reply::Json(200, to_external(def, &obj)))
        }
        "delete" => {
            let b = if body.iter().all(u8::is_ascii_whitespace) { json!({}) } else { parse_json(body)? };
            let opts = DeleteOpts::parse(&b, query)?;
            let out = registry::delete(&ctx, &mut store, def, ns, name, &opts)?;
            Ok(Reply::Json(200, out))
        }
        _ => Err(ApiError::method_not_allowed(method.as_str(), &def.qualified())),
    }
}
