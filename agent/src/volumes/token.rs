//! kubelet's service-account token manager: tokens from the TokenRequest API, bound to the pod, cached per
//! (service account, audience, expiration, pod) and requested anew when 80 % of their lifetime has passed or they
//! are older than 24 hours.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use k8s_openapi::api::authentication::v1::{BoundObjectReference, TokenRequest, TokenRequestSpec};

/// kubelet's `maxTTL`: a token older than this is refreshed whatever its expiration.
const MAX_TTL: Duration = Duration::from_secs(24 * 3600);
/// kubelet's `maxJitter` on refresh times, so that pods' tokens do not all refresh at once.
const MAX_JITTER: Duration = Duration::from_secs(10);
/// The API's default `expirationSeconds` for a projected token.
pub const DEFAULT_EXPIRATION_SECONDS: i64 = 3600;

/// What identifies a token: kubelet's `keyFunc`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TokenKey {
    pub namespace: String,
    pub service_account: String,
    pub audiences: Vec<String>,
    pub expiration_seconds: i64,
    pub pod_name: String,
    pub pod_uid: String,
}

impl TokenKey {
    /// The TokenRequest for this key, bound to the pod.
    pub fn request(&self) -> TokenRequest {
        TokenRequest {
            spec: TokenRequestSpec {
                audiences: self.audiences.clone(),
                expiration_seconds: Some(self.expiration_seconds),
                bound_object_ref: Some(BoundObjectReference {
                    api_version: Some("v1".into()),
                    kind: Some("Pod".into()),
                    name: Some(self.pod_name.clone()),
                    uid: Some(self.pod_uid.clone()),
                }),
            },
            ..Default::default()
        }
    }
}

/// A token and when it was issued and expires.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CachedToken {
    pub token: String,
    pub issued: SystemTime,
    pub expires: SystemTime,
}

impl CachedToken {
    /// From the API's answer; `now` stands for the issue time when the answer does not say.
    pub fn from_response(tr: &TokenRequest, requested_seconds: i64, now: SystemTime) -> Option<Self> {
        let status = tr.status.as_ref()?;
        let expires = SystemTime::from(status.expiration_timestamp.0);
        let seconds = tr.spec.expiration_seconds.unwrap_or(requested_seconds).max(0) as u64;
        let issued = expires.checked_sub(Duration::from_secs(seconds)).unwrap_or(now);
        Some(Self { token: status.token.clone(), issued, expires })
    }
}

/// kubelet's `requiresRefresh`: older than 24 h, or within 20 % of the lifetime of its expiry (less a jitter of up
/// to 10 s, `jitter_unit` in [0, 1)).
pub fn requires_refresh(t: &CachedToken, now: SystemTime, jitter_unit: f64) -> bool {
    let jitter = Duration::from_secs((jitter_unit.clamp(0.0, 1.0) * MAX_JITTER.as_secs() as f64) as u64);
    if now > t.issued + MAX_TTL.saturating_sub(jitter) {
        return true;
    }
    let lifetime = t.expires.duration_since(t.issued).unwrap_or_default();
    let refresh_at = t.expires.checked_sub(lifetime / 5 + jitter).unwrap_or(t.issued);
    now > refresh_at
}

/// The cache of tokens the node holds for its pods.
#[derive(Debug, Default)]
pub struct TokenCache {
    tokens: Mutex<HashMap<TokenKey, CachedToken>>,
}

impl TokenCache {
    /// The cached token when it needs no refresh.
    pub fn fresh(&self, key: &TokenKey, now: SystemTime, jitter_unit: f64) -> Option<String> {
        let tokens = self.tokens.lock().unwrap_or_else(|e| e.into_inner());
        tokens.get(key).filter(|t| !requires_refresh(t, now, jitter_unit)).map(|t| t.token.clone())
    }

    /// A usable cached token (not expired) to fall back on when a refresh fails, as kubelet does.
    pub fn unexpired(&self, key: &TokenKey, now: SystemTime) -> Option<String> {
        let tokens = self.tokens.lock().unwrap_or_else(|e| e.into_inner());
        tokens.get(key).filter(|t| t.expires > now).map(|t| t.token.clone())
    }

    pub fn set(&self, key: TokenKey, token: CachedToken) {
        self.tokens.lock().unwrap_or_else(|e| e.into_inner()).insert(key, token);
    }

    /// kubelet's `DeleteServiceAccountToken`: forgets the tokens of a pod that is gone.
    pub fn forget_pod(&self, pod_uid: &str) {
        self.tokens.lock().unwrap_or_else(|e| e.into_inner()).retain(|k, _| k.pod_uid != pod_uid);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::authentication::v1::TokenRequestStatus;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    fn at(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000 + secs)
    }

    fn token(issued: u64, lifetime: u64) -> CachedToken {
        CachedToken { token: "t".into(), issued: at(issued), expires: at(issued + lifetime) }
    }

    #[test]
    fn refresh_at_eighty_percent_of_the_lifetime() {
        let t = token(0, 3600);
        assert!(!requires_refresh(&t, at(2879), 0.0));
        assert!(requires_refresh(&t, at(2881), 0.0));
        // The jitter brings the refresh up to 10 s earlier.
        assert!(requires_refresh(&t, at(2872), 0.99));
    }

    #[test]
    fn refresh_after_a_day_whatever_the_expiry() {
        let year = token(0, 365 * 24 * 3600);
        assert!(!requires_refresh(&year, at(23 * 3600), 0.0));
        assert!(requires_refresh(&year, at(24 * 3600 + 1), 0.0));
    }

    #[test]
    fn the_issue_time_comes_from_the_answer() {
        let tr = TokenRequest {
            spec: TokenRequestSpec { expiration_seconds: Some(600), ..Default::default() },
            status: Some(TokenRequestStatus {
                token: "jwt".into(),
                expiration_timestamp: Time(jiff::Timestamp::from_second(1_700_000_600).unwrap()),
            }),
            ..Default::default()
        };
        let t = CachedToken::from_response(&tr, 3600, at(5)).unwrap();
        assert_eq!(t, CachedToken { token: "jwt".into(), issued: at(0), expires: at(600) });
    }

    #[test]
    fn the_cache_serves_fresh_tokens_and_forgets_gone_pods() {
        let cache = TokenCache::default();
        let key = TokenKey {
            namespace: "ns".into(),
            service_account: "default".into(),
            audiences: vec![],
            expiration_seconds: 3600,
            pod_name: "p".into(),
            pod_uid: "u".into(),
        };
        cache.set(key.clone(), token(0, 3600));
        assert_eq!(cache.fresh(&key, at(10), 0.0).as_deref(), Some("t"));
        assert_eq!(cache.fresh(&key, at(3000), 0.0), None);
        assert_eq!(cache.unexpired(&key, at(3000)).as_deref(), Some("t"));
        let req = key.request();
        let bound = req.spec.bound_object_ref.unwrap();
        assert_eq!((bound.kind.as_deref(), bound.uid.as_deref()), (Some("Pod"), Some("u")));
        cache.forget_pod("u");
        assert_eq!(cache.unexpired(&key, at(10)), None);
    }
}
