//! What keeps the kubelet server's authentication cheap under abuse: a bounded, striped cache with expiring entries,
//! the keyed hash its token entries are stored under, and a token bucket capping the reviews sent to the API server.

use std::collections::hash_map::RandomState;
use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasher, Hash};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

/// The API server's token cache splits its lookups over 32 stripes (`newStripedCache(32, ...)` in
/// k8s.io/apiserver/pkg/authentication/token/cache/cached_token_authenticator.go), so that concurrent requests rarely
/// wait on one lock.
pub const STRIPES: usize = 32;

/// A map whose entries expire, holding at most `capacity` of them: when a stripe is full its oldest entry goes.
/// Entries are kept in insertion order beside the map, so neither expiry nor eviction walks the whole map under a
/// lock. The time is passed in so that tests run on a fake clock.
#[derive(Debug)]
pub struct BoundedCache<K, V> {
    stripes: Vec<Mutex<Stripe<K, V>>>,
    per_stripe: usize,
    hasher: RandomState,
}

#[derive(Debug)]
struct Stripe<K, V> {
    entries: HashMap<K, (V, Instant)>,
    /// Keys with the expiry they were inserted with, oldest first; one whose entry was replaced since is stale and
    /// skipped when it comes up.
    order: VecDeque<(K, Instant)>,
}

impl<K: Eq + Hash + Clone, V: Clone> Stripe<K, V> {
    fn is_current(&self, key: &K, expires: Instant) -> bool {
        self.entries.get(key).is_some_and(|(_, e)| *e == expires)
    }

    /// Drops the oldest entry (or a stale key in the order); false when there is nothing left.
    fn pop_oldest(&mut self) -> bool {
        let Some((key, expires)) = self.order.pop_front() else { return false };
        if self.is_current(&key, expires) {
            self.entries.remove(&key);
        }
        true
    }

    fn insert(&mut self, key: K, value: V, expires: Instant, now: Instant, capacity: usize) {
        // Expired and stale keys at the front first: only what is dropped is looked at.
        while let Some((k, at)) = self.order.front() {
            if self.is_current(k, *at) && *at > now {
                break;
            }
            self.pop_oldest();
        }
        if !self.entries.contains_key(&key) {
            while self.entries.len() >= capacity.max(1) && self.pop_oldest() {}
        }
        self.entries.insert(key.clone(), (value, expires));
        self.order.push_back((key, expires));
        // Entries with different lifetimes can leave stale keys behind a live one; an occasional pass over this one
        // stripe keeps the order at most twice the stripe's size.
        if self.order.len() > 2 * capacity.max(8) {
            let entries = &self.entries;
            self.order.retain(|(k, at)| entries.get(k).is_some_and(|(_, e)| e == at));
        }
    }
}

impl<K: Eq + Hash + Clone, V: Clone> BoundedCache<K, V> {
    /// A cache of at most `capacity` entries (rounded up to a multiple of [`STRIPES`]).
    pub fn new(capacity: usize) -> Self {
        let per_stripe = capacity.div_ceil(STRIPES).max(1);
        let stripes =
            (0..STRIPES).map(|_| Mutex::new(Stripe { entries: HashMap::new(), order: VecDeque::new() })).collect();
        Self { stripes, per_stripe, hasher: RandomState::new() }
    }

    fn stripe(&self, key: &K) -> std::sync::MutexGuard<'_, Stripe<K, V>> {
        let i = (self.hasher.hash_one(key) % STRIPES as u64) as usize;
        self.stripes[i].lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn get(&self, key: &K, now: Instant) -> Option<V> {
        self.stripe(key).entries.get(key).filter(|(_, expires)| *expires > now).map(|(v, _)| v.clone())
    }

    pub fn insert(&self, key: K, value: V, ttl: Duration, now: Instant) {
        let expires = now + ttl;
        self.stripe(&key).insert(key, value, expires, now, self.per_stripe);
    }

    /// Entries held, expired ones included until they are dropped.
    pub fn len(&self) -> usize {
        self.stripes.iter().map(|s| s.lock().unwrap_or_else(|e| e.into_inner()).entries.len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The key a token is cached under: HMAC-SHA256 of the token with a key drawn once per process, as the API server's
/// `keyFunc` does, so that the cache holds no token and an outsider cannot aim tokens at one stripe.
#[derive(Clone)]
pub struct TokenHasher {
    key: [u8; 32],
}

impl std::fmt::Debug for TokenHasher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenHasher")
    }
}

impl Default for TokenHasher {
    fn default() -> Self {
        Self { key: random_key() }
    }
}

impl TokenHasher {
    pub fn key(&self, token: &str) -> [u8; 32] {
        // HMAC (RFC 2104) over SHA-256, whose block is 64 bytes.
        let mut ipad = [0x36u8; 64];
        let mut opad = [0x5cu8; 64];
        for (i, k) in self.key.iter().enumerate() {
            ipad[i] ^= k;
            opad[i] ^= k;
        }
        let inner = Sha256::new().chain_update(ipad).chain_update(token.as_bytes()).finalize();
        Sha256::new().chain_update(opad).chain_update(inner).finalize().into()
    }
}

fn random_key() -> [u8; 32] {
    let mut key = [0u8; 32];
    // SAFETY: getrandom(2) writes at most `key.len()` bytes into the buffer it is given.
    let n = unsafe { libc::getrandom(key.as_mut_ptr().cast(), key.len(), 0) };
    if n != key.len() as isize {
        // std's hasher keys come from the OS's random source too; four of them make up the key.
        for (i, chunk) in key.chunks_mut(8).enumerate() {
            chunk.copy_from_slice(&RandomState::new().hash_one(i).to_le_bytes());
        }
    }
    key
}

/// A token bucket: `burst` calls at once, refilled at `rate` per second; a call finding it empty is refused, not
/// queued.
#[derive(Debug)]
pub struct TokenBucket {
    rate: f64,
    burst: f64,
    state: Mutex<(f64, Option<Instant>)>,
}

impl TokenBucket {
    pub fn new(rate: f64, burst: u32) -> Self {
        Self { rate, burst: f64::from(burst), state: Mutex::new((f64::from(burst), None)) }
    }

    pub fn try_take(&self, now: Instant) -> bool {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let (tokens, last) = &mut *state;
        if let Some(last) = *last {
            *tokens = (*tokens + now.saturating_duration_since(last).as_secs_f64() * self.rate).min(self.burst);
        }
        *last = Some(now);
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_expire_after_their_ttl() {
        let cache = BoundedCache::new(64);
        let t0 = Instant::now();
        cache.insert("a", true, Duration::from_secs(30), t0);
        assert_eq!(cache.get(&"a", t0 + Duration::from_secs(29)), Some(true));
        assert_eq!(cache.get(&"a", t0 + Duration::from_secs(30)), None);
        assert_eq!(cache.get(&"b", t0), None);
    }

    #[test]
    fn the_cache_never_holds_more_than_its_capacity_and_keeps_the_newest() {
        let cache = BoundedCache::new(STRIPES * 4);
        let t0 = Instant::now();
        for i in 0..10_000u32 {
            cache.insert(i, i, Duration::from_secs(120), t0 + Duration::from_millis(u64::from(i)));
            assert!(cache.len() <= STRIPES * 4, "{} entries after {i}", cache.len());
        }
        let now = t0 + Duration::from_secs(10);
        assert_eq!(cache.get(&9_999, now), Some(9_999), "the newest entry stays");
        assert_eq!(cache.get(&0, now), None, "the oldest went");
    }

    #[test]
    fn replaced_and_expired_entries_leave_no_growing_order() {
        let cache = BoundedCache::new(STRIPES);
        let t0 = Instant::now();
        // A long-lived entry ahead of many short-lived rewrites of another key in its stripe.
        cache.insert(1u32, 0u32, Duration::from_secs(3600), t0);
        for i in 0..10_000u32 {
            cache.insert(2u32, i, Duration::from_secs(1), t0 + Duration::from_millis(u64::from(i)));
        }
        let longest = cache.stripes.iter().map(|s| s.lock().unwrap().order.len()).max().unwrap();
        assert!(longest <= 16, "{longest}");
        assert_eq!(cache.get(&2, t0 + Duration::from_secs(10)), Some(9_999));
    }

    #[test]
    fn token_keys_depend_on_the_token_and_the_process_key() {
        let a = TokenHasher::default();
        let b = TokenHasher::default();
        assert_eq!(a.key("t"), a.key("t"));
        assert_ne!(a.key("t"), a.key("u"));
        assert_ne!(a.key("t"), b.key("t"), "each hasher draws its own key");
        // RFC 4231 test case 2 ("Jefe"), the key zero-padded to 32 bytes as HMAC pads it.
        let mut key = [0u8; 32];
        key[..4].copy_from_slice(b"Jefe");
        let known = TokenHasher { key }.key("what do ya want for nothing?");
        assert_eq!(hex::encode(known), "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843");
    }

    #[test]
    fn the_bucket_allows_its_burst_then_its_rate() {
        let bucket = TokenBucket::new(10.0, 5);
        let t0 = Instant::now();
        assert_eq!((0..20).filter(|_| bucket.try_take(t0)).count(), 5);
        let t1 = t0 + Duration::from_millis(500);
        assert_eq!((0..20).filter(|_| bucket.try_take(t1)).count(), 5, "half a second refills five");
        let t2 = t1 + Duration::from_secs(60);
        assert_eq!((0..20).filter(|_| bucket.try_take(t2)).count(), 5, "never more than the burst");
    }
}
