//! The kubelet server's filters: authentication (verified client certificate, bearer token through TokenReview,
//! anonymous when allowed) and authorisation (AlwaysAllow, or SubjectAccessReview on `nodes/<subresource>`), with
//! kubelet's path-to-subresource mapping and its cache lifetimes.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::api::auth::{review_access, review_token, NodeAttributes, UserInfo};
use crate::config::{AuthorizationMode, ServerAuth};

/// The user and group of requests without credentials when anonymous requests are allowed.
pub const ANONYMOUS_USER: &str = "system:anonymous";
pub const UNAUTHENTICATED_GROUP: &str = "system:unauthenticated";
/// Added to every authenticated user (the API server's `AuthenticatedGroupAdder`).
pub const AUTHENTICATED_GROUP: &str = "system:authenticated";
/// Caches are pruned of expired entries once they hold this many.
const CACHE_PRUNE_AT: usize = 4096;

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

/// A map whose entries expire; the time is passed in so that tests run on a fake clock.
#[derive(Debug)]
pub struct TtlCache<K, V> {
    entries: Mutex<HashMap<K, (V, Instant)>>,
}

impl<K, V> Default for TtlCache<K, V> {
    fn default() -> Self {
        Self { entries: Mutex::new(HashMap::new()) }
    }
}

impl<K: Eq + Hash + Clone, V: Clone> TtlCache<K, V> {
    pub fn get(&self, key: &K, now: Instant) -> Option<V> {
        let entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        entries.get(key).filter(|(_, expires)| *expires > now).map(|(v, _)| v.clone())
    }

    pub fn insert(&self, key: K, value: V, ttl: Duration, now: Instant) {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        if entries.len() >= CACHE_PRUNE_AT {
            entries.retain(|_, (_, expires)| *expires > now);
        }
        entries.insert(key, (value, now + ttl));
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
}

pub struct Authenticator {
    pub config: ServerAuth,
    pub node_name: String,
    /// `None` without an API server: tokens cannot be reviewed and Webhook authorisation cannot decide.
    pub client: Option<kube::Client>,
    tokens: TtlCache<String, Option<UserInfo>>,
    decisions: TtlCache<(UserInfo, NodeAttributes), bool>,
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
        Self { config, node_name, client, tokens: TtlCache::default(), decisions: TtlCache::default() }
    }

    /// The request's user, or `None` (401).
    pub async fn authenticate(&self, credentials: &Credentials) -> Option<UserInfo> {
        let found = match credentials {
            Credentials::Certificate(user) => Some(with_authenticated_group(user.clone())),
            Credentials::Bearer(token) if self.config.webhook_authentication => {
                self.review_token(token).await.map(with_authenticated_group)
            }
            _ => None,
        };
        // A request no authenticator accepted is anonymous when that is allowed (the union falls through to it).
        found.or_else(|| {
            self.config.anonymous.then(|| UserInfo {
                name: ANONYMOUS_USER.into(),
                groups: vec![UNAUTHENTICATED_GROUP.into()],
                ..Default::default()
            })
        })
    }

    async fn review_token(&self, token: &str) -> Option<UserInfo> {
        let now = Instant::now();
        if let Some(cached) = self.tokens.get(&token.to_owned(), now) {
            return cached;
        }
        let client = self.client.as_ref()?;
        match review_token(client, token).await {
            Ok(user) => {
                self.tokens.insert(token.to_owned(), user.clone(), self.config.authentication_cache_ttl, now);
                user
            }
            Err(e) => {
                tracing::warn!(error = %e, "token review failed");
                None
            }
        }
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
    fn cache_entries_expire_after_their_ttl() {
        let cache = TtlCache::default();
        let t0 = Instant::now();
        cache.insert("a", true, Duration::from_secs(30), t0);
        assert_eq!(cache.get(&"a", t0 + Duration::from_secs(29)), Some(true));
        assert_eq!(cache.get(&"a", t0 + Duration::from_secs(30)), None);
        assert_eq!(cache.get(&"b", t0), None);
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
        assert_eq!(strict.authenticate(&Credentials::None).await, None);
        // A token that cannot be reviewed authenticates no one.
        assert_eq!(strict.authenticate(&Credentials::Bearer("t".into())).await, None);
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
}
