//! The kubelet server's filters: authentication (verified client certificate, bearer token through TokenReview,
//! anonymous when allowed) and authorisation (AlwaysAllow, or SubjectAccessReview on `nodes/<subresource>`), with
//! kubelet's path-to-subresource mapping and its cache lifetimes.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::OnceCell;

use crate::server::cache::{BoundedCache, TokenBucket, TokenHasher};
use crate::api::auth::{review_access, review_token, NodeAttributes, UserInfo};
use crate::config::{AuthorizationMode, ServerAuth};

/// The user and group of requests without credentials when anonymous requests are allowed.
pub const ANONYMOUS_USER: &str = "system:anonymous";
pub const UNAUTHENTICATED_GROUP: &str = "system:unauthenticated";
/// Added to every authenticated user (the API server's `AuthenticatedGroupAdder`).
pub const AUTHENTICATED_GROUP: &str = "system:authenticated";
/// The API server's token cache is sized for 32k tokens ("5k nodes and 10k namespaces ... a 32k entry cache is
/// therefore a 2x safety margin", k8s.io/apiserver/pkg/authentication/token/cache/cached_token_authenticator.go);
/// the authorisation decisions get the same bound.
pub const CACHE_SIZE: usize = 32 << 10;
/// A shared token lookup gives up after this long (`sharedLookupTimeout`, same file).
const SHARED_LOOKUP_TIMEOUT: Duration = Duration::from_secs(30);
/// TokenReviews sent per second and at once. kubelet sends its reviews through its API client, which client-go
/// limits to `kubeAPIQPS`/`kubeAPIBurst` (defaults 50 and 100, pkg/kubelet/apis/config/v1beta1/defaults.go;
/// cmd/kubelet/app/server.go sets them on the client `BuildAuth` is given). Here the reviews get a bucket of their
/// own with those figures, so that a flood of new tokens cannot starve the node's other calls, and a request over
/// the cap is refused at once instead of queueing behind the flood.
pub const TOKEN_REVIEW_QPS: f64 = 50.0;
pub const TOKEN_REVIEW_BURST: u32 = 100;

/// kubelet's `BuildAuthz` error when Webhook authorisation has no API server to ask.
pub const NO_CLIENT_FOR_WEBHOOK_AUTHORIZATION: &str = "no client provided, cannot use webhook authorization";

/// Whether the agent must refuse to start: Webhook authorisation set explicitly without an API server, as kubelet
/// refuses. The mode defaulted from a config file (a standalone node) only warns: the server then refuses every
/// request instead.
pub fn refuse_without_api_server(auth: &ServerAuth, has_api_server: bool) -> Option<&'static str> {
    (!has_api_server && auth.authorization_mode == AuthorizationMode::Webhook && auth.authorization_mode_set)
        .then_some(NO_CLIENT_FOR_WEBHOOK_AUTHORIZATION)
}

/// kubelet's `isSubpath`: `path` itself or anything below it.
fn is_subpath(request: &str, path: &str) -> bool {
    let path = path.trim_end_matches('/');
    request == path || (request.starts_with(path) && request.as_bytes().get(path.len()) == Some(&b'/'))
}

/// kubelet's `GetRequestAttributes`: the node subresource a path is authorised as; anything not listed is `proxy`.
pub fn subresource_for_path(path: &str) -> &'static str {
    if is_subpath(path, "/stats/") {
        "stats"
    } else if is_subpath(path, "/metrics") {
        "metrics"
    } else if is_subpath(path, "/logs/") {
        "log"
    } else if is_subpath(path, "/spec/") {
        "spec"
    } else {
        "proxy"
    }
}

/// The API verb of an HTTP method, as kubelet maps it (other methods get no verb).
pub fn verb_for_method(method: &str) -> &'static str {
    match method {
        "POST" => "create",
        "GET" => "get",
        "PUT" => "update",
        "PATCH" => "patch",
        "DELETE" => "delete",
        _ => "",
    }
}

/// What the request brought to prove who it is.
#[derive(Debug, Clone, PartialEq)]
pub enum Credentials {
    /// A client certificate the TLS layer verified against the client CA.
    Certificate(UserInfo),
    Bearer(String),
    None,
}

/// Why a request is refused.
#[derive(Debug, Clone, PartialEq)]
pub enum Refusal {
    /// 401.
    Unauthorized,
    /// 403 with kubelet's message.
    Forbidden(String),
    /// 500: the authoriser could not decide.
    AuthorizationError(String),
    /// 429: the token could not be reviewed now, the cap on TokenReviews being reached. Not 401: the token may well
    /// be valid, and 429 with `Retry-After` tells the caller to come back, as the API server's own overload answer.
    TooManyRequests,
}

/// The outcome of one token lookup, shared by every request that waited on it.
#[derive(Debug, Clone)]
enum Lookup {
    Reviewed(Option<UserInfo>),
    Throttled,
    Failed,
}

pub struct Authenticator {
    pub config: ServerAuth,
    pub node_name: String,
    /// `None` without an API server: tokens cannot be reviewed and Webhook authorisation cannot decide.
    pub client: Option<kube::Client>,
    /// Reviewed tokens by their keyed hash, accepted and rejected alike (kubelet caches both for `cacheTTL`).
    tokens: BoundedCache<[u8; 32], Option<UserInfo>>,
    hasher: TokenHasher,
    /// Lookups under way, by token key: concurrent requests with one token wait for one review.
    in_flight: Mutex<HashMap<[u8; 32], Arc<OnceCell<Lookup>>>>,
    reviews: TokenBucket,
    decisions: BoundedCache<(UserInfo, NodeAttributes), bool>,
}

fn with_authenticated_group(mut user: UserInfo) -> UserInfo {
    if !user.groups.iter().any(|g| g == AUTHENTICATED_GROUP) {
        user.groups.push(AUTHENTICATED_GROUP.into());
    }
    user
}

/// The bearer token of an `Authorization` header, if it carries one.
pub fn bearer_token(header: Option<&str>) -> Option<String> {
    let value = header?.trim();
    let (scheme, token) = value.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then(|| token.to_owned())
}

impl Authenticator {
    pub fn new(config: ServerAuth, node_name: String, client: Option<kube::Client>) -> Self {
        Self::with_review_rate(config, node_name, client, TOKEN_REVIEW_QPS, TOKEN_REVIEW_BURST)
    }

    /// As [`Authenticator::new`], with another cap on TokenReviews.
    pub fn with_review_rate(
        config: ServerAuth,
        node_name: String,
        client: Option<kube::Client>,
        qps: f64,
        burst: u32,
    ) -> Self {
        Self {
            config,
            node_name,
            client,
            tokens: BoundedCache::new(CACHE_SIZE),
            hasher: TokenHasher::default(),
            in_flight: Mutex::default(),
            reviews: TokenBucket::new(qps, burst),
            decisions: BoundedCache::new(CACHE_SIZE),
        }
    }

    /// The request's user; `Unauthorized` (401) without one, `TooManyRequests` (429) when its token could not be
    /// reviewed for the cap on reviews.
    pub async fn authenticate(&self, credentials: &Credentials) -> Result<UserInfo, Refusal> {
        let found = match credentials {
            Credentials::Certificate(user) => Some(with_authenticated_group(user.clone())),
            Credentials::Bearer(token) if self.config.webhook_authentication => match self.review_token(token).await {
                Lookup::Reviewed(user) => user.map(with_authenticated_group),
                Lookup::Failed => None,
                Lookup::Throttled => return Err(Refusal::TooManyRequests),
            },
            _ => None,
        };
        // A request no authenticator accepted is anonymous when that is allowed (the union falls through to it).
        found
            .or_else(|| {
                self.config.anonymous.then(|| UserInfo {
                    name: ANONYMOUS_USER.into(),
                    groups: vec![UNAUTHENTICATED_GROUP.into()],
                    ..Default::default()
                })
            })
            .ok_or(Refusal::Unauthorized)
    }

    /// The API server's cached token authenticator: the cache by keyed hash, else one review per token however many
    /// requests bring it at once (its `singleflight` group), within the cap on reviews. Failed reviews are not
    /// cached (kubelet's `cache.New(tokenAuth, false, ...)`: `cacheErrs` off).
    async fn review_token(&self, token: &str) -> Lookup {
        let key = self.hasher.key(token);
        if let Some(cached) = self.tokens.get(&key, Instant::now()) {
            return Lookup::Reviewed(cached);
        }
        let Some(client) = self.client.as_ref() else { return Lookup::Reviewed(None) };
        let cell = self.in_flight.lock().unwrap_or_else(|e| e.into_inner()).entry(key).or_default().clone();
        let lookup = cell
            .get_or_init(|| async {
                // Another lookup of this token may have finished between the cache miss and here.
                if let Some(cached) = self.tokens.get(&key, Instant::now()) {
                    return Lookup::Reviewed(cached);
                }
                if !self.reviews.try_take(Instant::now()) {
                    tracing::debug!("token review refused: over the cap on reviews per second");
                    return Lookup::Throttled;
                }
                match tokio::time::timeout(SHARED_LOOKUP_TIMEOUT, review_token(client, token)).await {
                    Ok(Ok(user)) => {
                        let ttl = self.config.authentication_cache_ttl;
                        if !ttl.is_zero() {
                            self.tokens.insert(key, user.clone(), ttl, Instant::now());
                        }
                        Lookup::Reviewed(user)
                    }
                    Ok(Err(e)) => {
                        tracing::warn!(error = %e, "token review failed");
                        Lookup::Failed
                    }
                    Err(_) => {
                        tracing::warn!("token review timed out after {SHARED_LOOKUP_TIMEOUT:?}");
                        Lookup::Failed
                    }
                }
            })
            .await
            .clone();
        let mut in_flight = self.in_flight.lock().unwrap_or_else(|e| e.into_inner());
        if in_flight.get(&key).is_some_and(|c| Arc::ptr_eq(c, &cell)) {
            in_flight.remove(&key);
        }
        lookup
    }

    /// Whether `user` may do what `method` on `path` means to the node.
    pub async fn authorize(&self, user: &UserInfo, method: &str, path: &str) -> Result<(), Refusal> {
        let attrs = NodeAttributes {
            verb: verb_for_method(method).into(),
            subresource: subresource_for_path(path).into(),
            node_name: self.node_name.clone(),
        };
        let forbidden = || {
            format!(
                "Forbidden (user={}, verb={}, resource=nodes, subresource={})",
                user.name, attrs.verb, attrs.subresource
            )
        };
        match self.config.authorization_mode {
            AuthorizationMode::AlwaysAllow => Ok(()),
            AuthorizationMode::Webhook => {
                let now = Instant::now();
                let key = (user.clone(), attrs.clone());
                let allowed = match self.decisions.get(&key, now) {
                    Some(allowed) => allowed,
                    None => {
                        let error = || {
                            format!(
                                "Authorization error (user={}, verb={}, resource=nodes, subresource={})",
                                user.name, attrs.verb, attrs.subresource
                            )
                        };
                        let client = self.client.as_ref().ok_or_else(|| Refusal::AuthorizationError(error()))?;
                        let allowed = review_access(client, user, &attrs).await.map_err(|e| {
                            tracing::warn!(error = %e, user = %user.name, "subject access review failed");
                            Refusal::AuthorizationError(error())
                        })?;
                        let ttl = if allowed { self.config.authorized_ttl } else { self.config.unauthorized_ttl };
                        self.decisions.insert(key, allowed, ttl, now);
                        allowed
                    }
                };
                if allowed {
                    Ok(())
                } else {
                    Err(Refusal::Forbidden(forbidden()))
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_map_to_kubelets_subresources() {
        for (path, sub) in [
            ("/stats/summary", "stats"),
            ("/stats", "stats"),
            ("/statsx", "proxy"),
            ("/metrics", "metrics"),
            ("/metrics/resource", "metrics"),
            ("/metrics/probes", "metrics"),
            ("/logs/", "log"),
            ("/logs/syslog", "log"),
            ("/spec/", "spec"),
            ("/pods", "proxy"),
            ("/containerLogs/ns/pod/c", "proxy"),
            ("/exec/ns/pod/c", "proxy"),
            ("/portForward/ns/pod", "proxy"),
            ("/healthz", "proxy"),
            ("/configz", "proxy"),
        ] {
            assert_eq!(subresource_for_path(path), sub, "{path}");
        }
        assert_eq!(verb_for_method("GET"), "get");
        assert_eq!(verb_for_method("POST"), "create");
        assert_eq!(verb_for_method("PUT"), "update");
        assert_eq!(verb_for_method("PATCH"), "patch");
        assert_eq!(verb_for_method("DELETE"), "delete");
    }

    #[test]
    fn bearer_tokens_are_read_from_the_authorization_header() {
        assert_eq!(bearer_token(Some("Bearer abc")), Some("abc".into()));
        assert_eq!(bearer_token(Some("bearer  abc ")), Some("abc".into()));
        assert_eq!(bearer_token(Some("Basic abc")), None);
        assert_eq!(bearer_token(Some("Bearer ")), None);
        assert_eq!(bearer_token(None), None);
    }

    fn config(anonymous: bool, mode: AuthorizationMode) -> ServerAuth {
        ServerAuth {
            client_ca_file: None,
            webhook_authentication: true,
            authentication_cache_ttl: Duration::from_secs(120),
            anonymous,
            authorization_mode: mode,
            authorization_mode_set: true,
            authorized_ttl: Duration::from_secs(300),
            unauthorized_ttl: Duration::from_secs(30),
        }
    }

    #[tokio::test]
    async fn no_credentials_is_unauthenticated_unless_anonymous_is_allowed() {
        let strict = Authenticator::new(config(false, AuthorizationMode::Webhook), "n".into(), None);
        assert_eq!(strict.authenticate(&Credentials::None).await, Err(Refusal::Unauthorized));
        // A token that cannot be reviewed authenticates no one.
        assert_eq!(strict.authenticate(&Credentials::Bearer("t".into())).await, Err(Refusal::Unauthorized));
        let open = Authenticator::new(config(true, AuthorizationMode::AlwaysAllow), "n".into(), None);
        let anon = open.authenticate(&Credentials::None).await.unwrap();
        assert_eq!((anon.name.as_str(), anon.groups.clone()), (ANONYMOUS_USER, vec![UNAUTHENTICATED_GROUP.into()]));
        assert_eq!(open.authorize(&anon, "GET", "/pods").await, Ok(()));
        let cert = UserInfo {
            name: "kube-apiserver-kubelet-client".into(),
            groups: vec!["system:masters".into()],
            ..Default::default()
        };
        let user = strict.authenticate(&Credentials::Certificate(cert)).await.unwrap();
        assert_eq!(user.groups, vec!["system:masters".to_string(), AUTHENTICATED_GROUP.into()]);
    }

    #[tokio::test]
    async fn webhook_mode_without_an_api_server_cannot_decide() {
        let a = Authenticator::new(config(false, AuthorizationMode::Webhook), "n".into(), None);
        let user = UserInfo { name: "u".into(), ..Default::default() };
        let r = a.authorize(&user, "GET", "/stats/summary").await;
        assert_eq!(
            r,
            Err(Refusal::AuthorizationError(
                "Authorization error (user=u, verb=get, resource=nodes, subresource=stats)".into()
            ))
        );
    }

    #[test]
    fn webhook_authorization_set_without_an_api_server_refuses_to_start() {
        let webhook = config(false, AuthorizationMode::Webhook);
        assert_eq!(refuse_without_api_server(&webhook, false), Some(NO_CLIENT_FOR_WEBHOOK_AUTHORIZATION));
        assert_eq!(refuse_without_api_server(&webhook, true), None);
        assert_eq!(refuse_without_api_server(&config(false, AuthorizationMode::AlwaysAllow), false), None);
        let defaulted = ServerAuth { authorization_mode_set: false, ..webhook };
        assert_eq!(refuse_without_api_server(&defaulted, false), None, "a standalone node's file defaults start");
    }

    /// An API server answering TokenReviews after `delay`: `good` is user `u`, anything else unauthenticated.
    fn reviewing_client(delay: Duration) -> (kube::Client, Arc<std::sync::atomic::AtomicUsize>) {
        use http_body_util::BodyExt;
        let calls = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counted = calls.clone();
        let service = tower::service_fn(move |req: axum::http::Request<kube::client::Body>| {
            let calls = counted.clone();
            async move {
                calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let body = req.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
                let review: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
                let good = review.pointer("/spec/token").and_then(|t| t.as_str()) == Some("good");
                tokio::time::sleep(delay).await;
                let status = if good {
                    serde_json::json!({"authenticated": true, "user": {"username": "u", "groups": ["g"]}})
                } else {
                    serde_json::json!({"authenticated": false})
                };
                let answer = serde_json::json!({
                    "apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview", "spec": {}, "status": status
                });
                let response = axum::http::Response::builder()
                    .header("content-type", "application/json")
                    .body(kube::client::Body::from(answer.to_string().into_bytes()))
                    .unwrap();
                Ok::<_, std::convert::Infallible>(response)
            }
        });
        (kube::Client::new(service, "default"), calls)
    }

    #[tokio::test]
    async fn concurrent_lookups_of_one_token_make_one_review_and_are_cached() {
        let (client, calls) = reviewing_client(Duration::from_millis(200));
        let a = Arc::new(Authenticator::new(config(false, AuthorizationMode::AlwaysAllow), "n".into(), Some(client)));
        let lookups: Vec<_> = (0..50)
            .map(|_| {
                let a = a.clone();
                tokio::spawn(async move { a.authenticate(&Credentials::Bearer("good".into())).await })
            })
            .collect();
        for l in lookups {
            let user = l.await.unwrap().unwrap();
            assert_eq!((user.name.as_str(), user.groups.len()), ("u", 2));
        }
        assert_eq!(calls.load(std::sync::atomic::Ordering::SeqCst), 1);
        assert!(a.authenticate(&Credentials::Bearer("good".into())).await.is_ok());
        assert_eq!(a.authenticate(&Credentials::Bearer("bad".into())).await, Err(Refusal::Unauthorized));
        assert_eq!(a.authenticate(&Credentials::Bearer("bad".into())).await, Err(Refusal::Unauthorized));
        assert_eq!(calls.load(std::sync::atomic::Ordering::SeqCst), 2, "a rejected token is cached too");
        assert!(a.in_flight.lock().unwrap().is_empty(), "finished lookups leave nothing behind");
    }

    #[tokio::test]
    async fn new_tokens_beyond_the_review_cap_get_429_and_cached_ones_still_pass() {
        let (client, calls) = reviewing_client(Duration::ZERO);
        let a = Authenticator::with_review_rate(
            config(false, AuthorizationMode::AlwaysAllow),
            "n".into(),
            Some(client),
            1.0,
            10,
        );
        assert!(a.authenticate(&Credentials::Bearer("good".into())).await.is_ok());
        let mut refused = 0;
        for i in 0..200 {
            match a.authenticate(&Credentials::Bearer(format!("bogus-{i}"))).await {
                Err(Refusal::TooManyRequests) => refused += 1,
                Err(Refusal::Unauthorized) => {}
                other => panic!("{other:?}"),
            }
        }
        let reviews = calls.load(std::sync::atomic::Ordering::SeqCst);
        assert!(reviews <= 12, "{reviews} reviews for 200 new tokens with a burst of 10");
        assert!(refused >= 188, "{refused}");
        assert!(a.authenticate(&Credentials::Bearer("good".into())).await.is_ok(), "the cached token still works");
        assert!(a.tokens.len() <= 12);
    }
}
