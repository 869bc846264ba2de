//! The API objects pods read: ConfigMaps and Secrets (fetched by name, as the Node authorizer lets a node read only
//! those its pods reference), service-account tokens through the TokenRequest API, and a Service informer for the
//! service link variables.

use std::collections::HashMap;
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
/// of objects no running pod reads any more age out, and the cache follows the pods instead of growing with every
/// object ever read. Nothing is forgotten during an outage: forgetting happens on successful reads only.
pub const OBJECT_COPY_TTL: Duration = Duration::from_secs(10 * 60);

/// The copies kept, by object, with the time each was last read.
type ObjectCopies = HashMap<ObjectKey, (Instant, Lookup<ObjectCopy>)>;

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

    /// Remembers a successful read; serves the last one when the API failed.
    fn remember(
        &self,
        kind: &'static str,
        namespace: &str,
        name: &str,
        read: Lookup<ObjectCopy>,
    ) -> Lookup<ObjectCopy> {
        remember_in(
            &mut self.last_read.lock().unwrap_or_else(|e| e.into_inner()),
            kind,
            namespace,
            name,
            read,
            Instant::now(),
        )
    }

    pub async fn config_map(&self, namespace: &str, name: &str) -> Lookup<ConfigMap> {
        let read = lookup(Api::<ConfigMap>::namespaced(self.client.clone(), namespace).get(name).await);
        match self.remember("configmap", namespace, name, map_lookup(read, ObjectCopy::ConfigMap)) {
            Lookup::Found(ObjectCopy::ConfigMap(c)) => Lookup::Found(c),
            Lookup::Found(_) | Lookup::NotFound => Lookup::NotFound,
            Lookup::Failed(e) => Lookup::Failed(e),
        }
    }

    pub async fn secret(&self, namespace: &str, name: &str) -> Lookup<Secret> {
        let read = lookup(Api::<Secret>::namespaced(self.client.clone(), namespace).get(name).await);
        match self.remember("secret", namespace, name, map_lookup(read, ObjectCopy::Secret)) {
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
    kind: &'static str,
    namespace: &str,
    name: &str,
    read: Lookup<ObjectCopy>,
    now: Instant,
) -> Lookup<ObjectCopy> {
    let key = (kind, namespace.to_owned(), name.to_owned());
    match read {
        Lookup::Failed(e) => match cache.get(&key) {
            Some((_, known)) => {
                tracing::debug!(kind, namespace, name, error = %e, "API read failed; using the last copy");
                known.clone()
            }
            None => Lookup::Failed(e),
        },
        read => {
            cache.retain(|_, (at, _)| now.saturating_duration_since(*at) < OBJECT_COPY_TTL);
            if cache.capacity() > 4 * cache.len().max(16) {
                cache.shrink_to_fit();
            }
            cache.insert(key, (now, read.clone()));
            read
        }
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

    #[test]
    fn copies_no_read_asked_for_age_out_and_an_outage_keeps_them_all() {
        let mut cache = HashMap::new();
        let t0 = Instant::now();
        remember_in(&mut cache, "configmap", "ns", "old", config_map("old"), t0);
        remember_in(&mut cache, "configmap", "ns", "used", config_map("used"), t0);
        let later = t0 + OBJECT_COPY_TTL - Duration::from_secs(60);
        remember_in(&mut cache, "configmap", "ns", "used", config_map("used"), later);
        // An outage, long after both reads: the copies are served, none is forgotten.
        let outage = t0 + 3 * OBJECT_COPY_TTL;
        let failed = || Lookup::Failed("connection refused".to_owned());
        assert_eq!(remember_in(&mut cache, "configmap", "ns", "old", failed(), outage), config_map("old"));
        assert_eq!(cache.len(), 2);
        // The next successful read forgets what no read asked for within the TTL.
        let back = t0 + OBJECT_COPY_TTL + Duration::from_secs(1);
        remember_in(&mut cache, "configmap", "ns", "used", config_map("used"), back);
        let names: Vec<&str> = cache.keys().map(|(_, _, n)| n.as_str()).collect();
        assert_eq!(names, ["used"]);
    }
}
