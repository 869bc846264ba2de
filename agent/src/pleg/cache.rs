//! The pod cache, kubelet's `kubecontainer.Cache` (`pkg/kubelet/container/cache.go`): per pod UID the latest
//! observation of the pod in the runtime (or the error of making it) with the time it was made, and a global
//! timestamp that a complete relist moves on. A pod worker asks for an entry newer than its last sync and waits until
//! there is one, so it never reads the runtime itself.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::oneshot;
use tokio::time::Instant;

use crate::runtime::ObservedPod;

/// One observation of a pod: what the runtime holds for it, or why it could not be read.
#[derive(Debug, Clone)]
pub struct PodCacheEntry {
    pub pod: Result<Arc<ObservedPod>, Arc<str>>,
    /// When the observation began: anything the runtime did before then is in it.
    pub modified: Instant,
    /// `false` for kubelet's `makeDefaultData`: the pod has no entry, but a relist newer than asked saw nothing of it.
    pub cached: bool,
}

impl PodCacheEntry {
    fn empty(at: Instant) -> Self {
        Self { pod: Ok(Arc::new(ObservedPod::default())), modified: at, cached: false }
    }
}

/// What a waiter is waiting for.
#[derive(Clone, Copy)]
enum Want {
    /// kubelet's `GetNewerThan`: the entry, or the global timestamp, newer than this.
    NewerThan(Option<Instant>),
    /// The pod's own entry differs from the one last seen (modified at this time; `None`: no entry).
    Changed(Option<Instant>),
}

struct Waiter {
    want: Want,
    tx: oneshot::Sender<PodCacheEntry>,
}

#[derive(Default)]
struct Inner {
    pods: HashMap<String, PodCacheEntry>,
    /// The time the last complete relist began (kubelet's `cache.timestamp`).
    timestamp: Option<Instant>,
    waiters: HashMap<String, Vec<Waiter>>,
}

impl Inner {
    /// kubelet's `getIfNewerThan`.
    fn newer_than(&self, uid: &str, min: Option<Instant>) -> Option<PodCacheEntry> {
        let after = |t: Instant| min.is_none_or(|m| t > m);
        let global = self.timestamp.filter(|t| after(*t));
        match self.pods.get(uid) {
            Some(e) if after(e.modified) || global.is_some() => Some(e.clone()),
            Some(_) => None,
            None => global.map(PodCacheEntry::empty),
        }
    }

    fn changed(&self, uid: &str, seen: Option<Instant>) -> Option<PodCacheEntry> {
        match (self.pods.get(uid), seen) {
            (Some(e), Some(s)) if e.modified == s => None,
            (Some(e), _) => Some(e.clone()),
            (None, None) => None,
            (None, Some(_)) => Some(PodCacheEntry::empty(self.timestamp.unwrap_or_else(Instant::now))),
        }
    }

    fn answer(&self, uid: &str, want: &Want) -> Option<PodCacheEntry> {
        match *want {
            Want::NewerThan(min) => self.newer_than(uid, min),
            Want::Changed(seen) => self.changed(uid, seen),
        }
    }

    /// kubelet's `notify`: hands their entry to the waiters of `uid` that it satisfies.
    fn notify(&mut self, uid: &str) {
        let Some(waiters) = self.waiters.remove(uid) else { return };
        let mut left = Vec::new();
        for w in waiters {
            if w.tx.is_closed() {
                continue;
            }
            match self.answer(uid, &w.want) {
                Some(entry) => {
                    let _ = w.tx.send(entry);
                }
                None => left.push(w),
            }
        }
        if !left.is_empty() {
            self.waiters.insert(uid.to_owned(), left);
        }
    }
}

/// The pod cache; clones share it.
#[derive(Clone, Default)]
pub struct PodCache {
    inner: Arc<Mutex<Inner>>,
}

impl PodCache {
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // The lock is never held across a panic point that could leave the maps half-written.
        self.inner.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The pod's entry, if the cache has one.
    pub fn get(&self, uid: &str) -> Option<PodCacheEntry> {
        self.lock().pods.get(uid).cloned()
    }

    /// kubelet's `Set`: an observation of the pod that began at `at`. An observation older than the entry's is
    /// dropped, so a slow relist never overwrites what a one-pod refresh saw later.
    pub fn set(&self, uid: &str, pod: Result<ObservedPod, String>, at: Instant) {
        let mut inner = self.lock();
        if inner.pods.get(uid).is_some_and(|e| e.modified > at) {
            return;
        }
        let pod = pod.map(Arc::new).map_err(Arc::from);
        inner.pods.insert(uid.to_owned(), PodCacheEntry { pod, modified: at, cached: true });
        inner.notify(uid);
    }

    /// kubelet's `Delete`: the runtime holds nothing of the pod any more.
    pub fn delete(&self, uid: &str) {
        let mut inner = self.lock();
        if inner.pods.remove(uid).is_some() {
            inner.notify(uid);
        }
    }

    /// kubelet's `UpdateTime`: a relist that began at `at` is complete, so every pod without a newer entry is as
    /// cached.
    pub fn update_time(&self, at: Instant) {
        let mut inner = self.lock();
        inner.timestamp = Some(at);
        let uids: Vec<String> = inner.waiters.keys().cloned().collect();
        for uid in uids {
            inner.notify(&uid);
        }
    }

    /// The UIDs of the pods with an entry.
    pub fn uids(&self) -> Vec<String> {
        self.lock().pods.keys().cloned().collect()
    }

    /// kubelet's `GetNewerThan`: the pod's entry once it, or the global timestamp, is newer than `min` (`None`:
    /// any). Without an entry but with a newer global timestamp, an empty pod: the runtime holds nothing of it.
    pub async fn get_newer_than(&self, uid: &str, min: Option<Instant>) -> PodCacheEntry {
        self.wait(uid, Want::NewerThan(min)).await
    }

    /// Waits until the pod's own entry is not the one modified at `seen` (`None`: there was none): a relist or a
    /// refresh saw the pod change, or it is gone from the runtime. A relist that saw nothing new does not wake it.
    pub async fn changed(&self, uid: &str, seen: Option<Instant>) -> PodCacheEntry {
        self.wait(uid, Want::Changed(seen)).await
    }

    async fn wait(&self, uid: &str, want: Want) -> PodCacheEntry {
        loop {
            let rx = {
                let mut inner = self.lock();
                if let Some(entry) = inner.answer(uid, &want) {
                    return entry;
                }
                let (tx, rx) = oneshot::channel();
                inner.waiters.entry(uid.to_owned()).or_default().push(Waiter { want, tx });
                rx
            };
            if let Ok(entry) = rx.await {
                return entry;
            }
        }
    }

    #[cfg(test)]
    fn waiters(&self) -> usize {
        self.lock().waiters.values().map(Vec::len).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn observed(sandbox: &str) -> ObservedPod {
        ObservedPod {
            sandboxes: vec![crate::runtime::SandboxRecord {
                id: sandbox.into(),
                pod_uid: "u".into(),
                namespace: "ns".into(),
                name: "p".into(),
                attempt: 0,
                ready: true,
                created_at: std::time::SystemTime::UNIX_EPOCH,
                ips: vec![],
            }],
            containers: vec![],
        }
    }

    fn sandbox_of(e: &PodCacheEntry) -> Option<String> {
        e.pod.as_ref().ok().and_then(|p| p.latest_sandbox().map(|s| s.id.clone()))
    }

    #[tokio::test(start_paused = true)]
    async fn a_newer_entry_is_returned_at_once() {
        let cache = PodCache::new();
        let t0 = Instant::now();
        tokio::time::advance(Duration::from_millis(1)).await;
        cache.set("u", Ok(observed("s1")), Instant::now());
        let e = cache.get_newer_than("u", Some(t0)).await;
        assert_eq!(sandbox_of(&e).as_deref(), Some("s1"));
        assert!(e.cached);
        let e = cache.get_newer_than("u", None).await;
        assert_eq!(sandbox_of(&e).as_deref(), Some("s1"), "no last sync: any entry will do");
    }

    #[tokio::test(start_paused = true)]
    async fn an_older_entry_waits_for_a_set() {
        let cache = PodCache::new();
        cache.set("u", Ok(observed("old")), Instant::now());
        tokio::time::advance(Duration::from_millis(1)).await;
        let last_sync = Instant::now();
        let c = cache.clone();
        let waiting = tokio::spawn(async move { c.get_newer_than("u", Some(last_sync)).await });
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished(), "the entry is older than the last sync");
        assert_eq!(cache.waiters(), 1);
        cache.set("other", Ok(observed("x")), Instant::now() + Duration::from_millis(1));
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished(), "another pod's entry wakes nothing");
        tokio::time::advance(Duration::from_millis(1)).await;
        cache.set("u", Ok(observed("new")), Instant::now());
        let e = waiting.await.unwrap();
        assert_eq!(sandbox_of(&e).as_deref(), Some("new"));
        assert_eq!(cache.waiters(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_newer_global_timestamp_answers_with_the_entry_or_an_empty_pod() {
        let cache = PodCache::new();
        cache.set("u", Ok(observed("s1")), Instant::now());
        tokio::time::advance(Duration::from_millis(1)).await;
        let last_sync = Instant::now();
        let (c1, c2) = (cache.clone(), cache.clone());
        let known = tokio::spawn(async move { c1.get_newer_than("u", Some(last_sync)).await });
        let unknown = tokio::spawn(async move { c2.get_newer_than("new-pod", Some(last_sync)).await });
        tokio::task::yield_now().await;
        assert!(!known.is_finished() && !unknown.is_finished());
        cache.update_time(last_sync);
        tokio::task::yield_now().await;
        assert!(!known.is_finished(), "a relist that began at the last sync is not newer than it");
        tokio::time::advance(Duration::from_millis(1)).await;
        cache.update_time(Instant::now());
        let e = known.await.unwrap();
        assert_eq!(sandbox_of(&e).as_deref(), Some("s1"), "unchanged since the relist: the cached entry");
        let e = unknown.await.unwrap();
        assert!(!e.cached);
        assert_eq!(e.pod.unwrap().as_ref(), &ObservedPod::default(), "nothing in the runtime");
    }

    #[tokio::test(start_paused = true)]
    async fn an_error_entry_is_returned_as_such() {
        let cache = PodCache::new();
        cache.set("u", Err("rpc error: unavailable".into()), Instant::now());
        let e = cache.get_newer_than("u", None).await;
        assert_eq!(e.pod.unwrap_err().as_ref(), "rpc error: unavailable");
    }

    #[tokio::test(start_paused = true)]
    async fn deleted_entries_are_gone_and_wake_who_waits_for_a_change() {
        let cache = PodCache::new();
        let at = Instant::now();
        cache.set("u", Ok(observed("s1")), at);
        let c = cache.clone();
        let change = tokio::spawn(async move { c.changed("u", Some(at)).await });
        tokio::task::yield_now().await;
        assert!(!change.is_finished());
        cache.delete("u");
        assert!(cache.get("u").is_none());
        assert!(cache.uids().is_empty());
        let e = change.await.unwrap();
        assert!(!e.cached, "gone from the runtime");
    }

    #[tokio::test(start_paused = true)]
    async fn a_relist_that_saw_nothing_new_is_no_change() {
        let cache = PodCache::new();
        let at = Instant::now();
        cache.set("u", Ok(observed("s1")), at);
        let c = cache.clone();
        let change = tokio::spawn(async move { c.changed("u", Some(at)).await });
        tokio::time::advance(Duration::from_millis(5)).await;
        cache.update_time(Instant::now());
        tokio::task::yield_now().await;
        assert!(!change.is_finished());
        cache.set("u", Ok(observed("s2")), Instant::now());
        assert_eq!(sandbox_of(&change.await.unwrap()).as_deref(), Some("s2"));
    }

    #[tokio::test(start_paused = true)]
    async fn an_older_observation_does_not_overwrite_a_newer_one() {
        let cache = PodCache::new();
        let older = Instant::now();
        tokio::time::advance(Duration::from_millis(5)).await;
        cache.set("u", Ok(observed("refresh")), Instant::now());
        cache.set("u", Ok(observed("slow relist")), older);
        assert_eq!(sandbox_of(&cache.get("u").unwrap()).as_deref(), Some("refresh"));
    }

    #[tokio::test(start_paused = true)]
    async fn a_cancelled_waiter_is_dropped_at_the_next_notification() {
        let cache = PodCache::new();
        let c = cache.clone();
        let t = Instant::now();
        let w = tokio::spawn(async move { c.get_newer_than("u", Some(t)).await });
        tokio::task::yield_now().await;
        w.abort();
        let _ = w.await;
        tokio::time::advance(Duration::from_millis(1)).await;
        cache.set("x", Ok(observed("s")), Instant::now());
        cache.update_time(Instant::now());
        assert_eq!(cache.waiters(), 0);
    }
}
