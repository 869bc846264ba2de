//! The API objects pods read: ConfigMaps and Secrets (fetched by name, as the Node authorizer lets a node read only
//! those its pods reference), service-account tokens through the TokenRequest API, and a Service informer for the
//! service link variables.

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::authentication::v1::TokenRequest;
use k8s_openapi::api::core::v1::{ConfigMap, Secret, Service, ServiceAccount};
use kube::api::{Api, PostParams};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{watcher, WatchStreamExt};

use crate::kubetypes::env::Lookup;

/// The node's reader of the objects its pods use.
#[derive(Clone)]
pub struct PodObjects {
    client: kube::Client,
    services: Store<Service>,
    services_synced: Arc<AtomicBool>,
    /// The last copy read of each object and when, served while the API cannot be reached (as kubelet's object
    /// caches keep serving what they have), so that an outage does not fail volumes that were set up already.
    last_read: Arc<Mutex<ObjectCopies>>,
}

/// A copy no read has asked for in this long is forgotten at the next successful read. A pod that still uses an
/// object reads it again at every sync of its volumes (kubelet's `syncFrequency`, 1 min by default), so only copies
/// of objects no running pod reads any more age out. Nothing is forgotten by age during an outage: that happens on
/// successful reads only.
pub const OBJECT_COPY_TTL: Duration = Duration::from_secs(10 * 60);

/// The copies kept, by object.
type ObjectCopies = HashMap<ObjectKey, KeptCopy>;

/// One object's last copy, when it was read, and the pods that read it. As kubelet's secret and configmap managers
/// register each pod's objects and drop an object with the last pod that used it (`UnregisterPod`), a copy goes
/// when the last pod that read it is gone, so the cache shrinks back when pods go instead of holding every object
/// a burst of pods read until its copies age out.
#[derive(Debug)]
struct KeptCopy {
    read_at: Instant,
    copy: Lookup<ObjectCopy>,
    pods: BTreeSet<String>,
}

/// Kind, namespace and name.
type ObjectKey = (&'static str, String, String);

/// A copy of an object kept for API outages.
#[derive(Debug, Clone, PartialEq)]
enum ObjectCopy {
    ConfigMap(ConfigMap),
    Secret(Secret),
}

fn map_lookup<T, U>(l: Lookup<T>, f: impl FnOnce(T) -> U) -> Lookup<U> {
    match l {
        Lookup::Found(o) => Lookup::Found(f(o)),
        Lookup::NotFound => Lookup::NotFound,
        Lookup::Failed(e) => Lookup::Failed(e),
    }
}

fn lookup<T>(r: Result<T, kube::Error>) -> Lookup<T> {
    match r {
        Ok(o) => Lookup::Found(o),
        Err(kube::Error::Api(s)) if s.code == 404 => Lookup::NotFound,
        Err(e) => Lookup::Failed(e.to_string()),
    }
}

impl PodObjects {
    /// The reader, and the Service informer to run for as long as the agent runs.
    pub fn new(client: kube::Client) -> (Self, impl std::future::Future<Output = ()> + Send + 'static) {
        let (reader, writer) = reflector::store();
        let services_synced = Arc::new(AtomicBool::new(false));
        let synced = services_synced.clone();
        let api: Api<Service> = Api::all(client.clone());
        let informer = async move {
            let stream = reflector::reflector(writer, watcher::watcher(api, watcher::Config::default().any_semantic()))
                .default_backoff();
            stream
                .for_each(|event| {
                    match event {
                        Ok(watcher::Event::InitDone) => synced.store(true, Ordering::Relaxed),
                        Err(e) => tracing::warn!(error = %e, "service watch failed; retrying"),
                        Ok(_) => {}
                    }
                    futures::future::ready(())
                })
                .await;
        };
        (Self { client, services: reader, services_synced, last_read: Default::default() }, informer)
    }

    /// Remembers a successful read for the pod; serves the last one when the API failed.
    fn remember(&self, key: ObjectKey, pod_uid: &str, read: Lookup<ObjectCopy>) -> Lookup<ObjectCopy> {
        remember_in(&mut self.copies(), key, pod_uid, read, Instant::now())
    }

    fn copies(&self) -> std::sync::MutexGuard<'_, ObjectCopies> {
        self.last_read.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The pod is gone: the copies only it read are dropped.
    pub fn release_pod(&self, pod_uid: &str) {
        release_in(&mut self.copies(), pod_uid);
    }

    /// The ConfigMap, read for the pod `pod_uid`.
    pub async fn config_map(&self, pod_uid: &str, namespace: &str, name: &str) -> Lookup<ConfigMap> {
        let read = lookup(Api::<ConfigMap>::namespaced(self.client.clone(), namespace).get(name).await);
        let key = ("configmap", namespace.to_owned(), name.to_owned());
        match self.remember(key, pod_uid, map_lookup(read, ObjectCopy::ConfigMap)) {
            Lookup::Found(ObjectCopy::ConfigMap(c)) => Lookup::Found(c),
            Lookup::Found(_) | Lookup::NotFound => Lookup::NotFound,
            Lookup::Failed(e) => Lookup::Failed(e),
        }
    }

    /// The Secret, read for the pod `pod_uid`.
    pub async fn secret(&self, pod_uid: &str, namespace: &str, name: &str) -> Lookup<Secret> {
        let read = lookup(Api::<Secret>::namespaced(self.client.clone(), namespace).get(name).await);
        let key = ("secret", namespace.to_owned(), name.to_owned());
        match self.remember(key, pod_uid, map_lookup(read, ObjectCopy::Secret)) {
            Lookup::Found(ObjectCopy::Secret(s)) => Lookup::Found(s),
            Lookup::Found(_) | Lookup::NotFound => Lookup::NotFound,
            Lookup::Failed(e) => Lookup::Failed(e),
        }
    }

    /// `POST serviceaccounts/<name>/token`.
    pub async fn request_token(
        &self,
        namespace: &str,
        service_account: &str,
        request: &TokenRequest,
    ) -> Result<TokenRequest, String> {
        Api::<ServiceAccount>::namespaced(self.client.clone(), namespace)
            .create_token_request(service_account, &PostParams::default(), request)
            .await
            .map_err(|e| format!("failed to fetch token: {e}"))
    }

    /// All services, once the informer listed them at least once; `None` before.
    pub fn services(&self) -> Option<Vec<Service>> {
        if !self.services_synced.load(Ordering::Relaxed) {
            return None;
        }
        Some(self.services.state().iter().map(|s| (**s).clone()).collect())
    }
}

/// [`PodObjects::remember`] on the cache itself, at `now`.
fn remember_in(
    cache: &mut ObjectCopies,
    key: ObjectKey,
    pod_uid: &str,
    read: Lookup<ObjectCopy>,
    now: Instant,
) -> Lookup<ObjectCopy> {
    match read {
        Lookup::Failed(e) => match cache.get_mut(&key) {
            Some(kept) => {
                tracing::debug!(kind = key.0, namespace = key.1, name = key.2, error = %e, "API read failed; using the last copy");
                kept.pods.insert(pod_uid.to_owned());
                kept.copy.clone()
            }
            None => Lookup::Failed(e),
        },
        read => {
            cache.retain(|_, kept| now.saturating_duration_since(kept.read_at) < OBJECT_COPY_TTL);
            shrink(cache);
            let kept = cache.entry(key).or_insert_with(|| KeptCopy {
                read_at: now,
                copy: Lookup::NotFound,
                pods: BTreeSet::new(),
            });
            kept.read_at = now;
            kept.copy = read.clone();
            kept.pods.insert(pod_uid.to_owned());
            read
        }
    }
}

/// [`PodObjects::release_pod`] on the cache itself.
fn release_in(cache: &mut ObjectCopies, pod_uid: &str) {
    cache.retain(|_, kept| {
        kept.pods.remove(pod_uid);
        !kept.pods.is_empty()
    });
    shrink(cache);
}

/// A map emptied by a burst keeps its table: give most of it back.
fn shrink(cache: &mut ObjectCopies) {
    if cache.capacity() > 4 * cache.len().max(16) {
        cache.shrink_to_fit();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config_map(name: &str) -> Lookup<ObjectCopy> {
        let mut c = ConfigMap::default();
        c.metadata.name = Some(name.to_owned());
        Lookup::Found(ObjectCopy::ConfigMap(c))
    }

    fn key(name: &str) -> ObjectKey {
        ("configmap", "ns".to_owned(), name.to_owned())
    }

    #[test]
    fn copies_no_read_asked_for_age_out_and_an_outage_keeps_them_all() {
        let mut cache = HashMap::new();
        let t0 = Instant::now();
        remember_in(&mut cache, key("old"), "pod-a", config_map("old"), t0);
        remember_in(&mut cache, key("used"), "pod-a", config_map("used"), t0);
        let later = t0 + OBJECT_COPY_TTL - Duration::from_secs(60);
        remember_in(&mut cache, key("used"), "pod-a", config_map("used"), later);
        // An outage, long after both reads: the copies are served, none is forgotten.
        let outage = t0 + 3 * OBJECT_COPY_TTL;
        let failed = || Lookup::Failed("connection refused".to_owned());
        assert_eq!(remember_in(&mut cache, key("old"), "pod-a", failed(), outage), config_map("old"));
        assert_eq!(cache.len(), 2);
        // The next successful read forgets what no read asked for within the TTL.
        let back = t0 + OBJECT_COPY_TTL + Duration::from_secs(1);
        remember_in(&mut cache, key("used"), "pod-a", config_map("used"), back);
        let names: Vec<&str> = cache.keys().map(|(_, _, n)| n.as_str()).collect();
        assert_eq!(names, ["used"]);
    }

    #[test]
    fn a_copy_goes_with_the_last_pod_that_read_it_and_the_table_shrinks_back() {
        let mut cache = HashMap::new();
        let t0 = Instant::now();
        remember_in(&mut cache, key("shared"), "pod-a", config_map("shared"), t0);
        remember_in(&mut cache, key("shared"), "pod-b", config_map("shared"), t0);
        remember_in(&mut cache, key("own"), "pod-a", config_map("own"), t0);
        release_in(&mut cache, "pod-a");
        let names: Vec<&str> = cache.keys().map(|(_, _, n)| n.as_str()).collect();
        assert_eq!(names, ["shared"], "pod-b still reads it");
        // An outage: a pod that still runs is served its copy, and the copy is kept for it.
        let failed = Lookup::Failed("connection refused".to_owned());
        assert_eq!(remember_in(&mut cache, key("shared"), "pod-c", failed, t0), config_map("shared"));
        release_in(&mut cache, "pod-b");
        assert_eq!(cache.len(), 1, "pod-c was served it during the outage");
        release_in(&mut cache, "pod-c");
        assert!(cache.is_empty());

        // A burst of pods, each with its own objects: once they are gone, nothing of them is kept.
        for i in 0..1000 {
            remember_in(&mut cache, key(&format!("cm-{i}")), &format!("pod-{i}"), config_map("x"), t0);
        }
        for i in 0..1000 {
            release_in(&mut cache, &format!("pod-{i}"));
        }
        assert!(cache.is_empty() && cache.capacity() < 100, "capacity {}", cache.capacity());
    }
}
