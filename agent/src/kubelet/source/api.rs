//! The API pod source: a watch of the pods bound to this node (`spec.nodeName=<node>`) with bookmarks
//! (`allowWatchBookmarks`, so a resumed watch starts from a recent resourceVersion), relisting when the watch
//! expires (`410 Gone`), sent to the pod manager as the complete set (kubelet's `apiserver` config source). Mirror pods are not
//! pods to run: they are reported separately to the status manager.

use crate::kubetypes::annotations::API_SOURCE;
use crate::status::MirrorPods;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::api::Api;
use kube::runtime::watcher::{self, Event};
use tokio::sync::{mpsc, watch, Notify};

use crate::kubelet::source::SourceUpdate;
use crate::kubetypes::annotations::{CONFIG_MIRROR_ANNOTATION, CONFIG_SOURCE_ANNOTATION};
use crate::kubetypes::backoff::{jitter, random_unit};
use crate::kubetypes::spec;

fn is_mirror(pod: &Pod) -> bool {
    pod.metadata.annotations.as_ref().is_some_and(|a| a.contains_key(CONFIG_MIRROR_ANNOTATION))
}

/// client-go's reflector back-off between failed list/watch attempts (`NewExponentialBackoffManager(800ms, 30s,
/// 2m, 2.0, 1.0)`): doubling from 800 ms to 30 s, jittered, and starting over after 2 minutes without a failure.
const REFLECTOR_BACKOFF_INITIAL: Duration = Duration::from_millis(800);
const REFLECTOR_BACKOFF_MAX: Duration = Duration::from_secs(30);
const REFLECTOR_BACKOFF_RESET: Duration = Duration::from_secs(120);
const REFLECTOR_BACKOFF_JITTER: f64 = 1.0;

/// The watch's back-off state.
struct ReflectorBackoff {
    current: Duration,
    last_failure: Option<Instant>,
}

impl ReflectorBackoff {
    fn new() -> Self {
        Self { current: Duration::ZERO, last_failure: None }
    }

    /// The wait before the next attempt after a failure at `now`.
    fn next(&mut self, now: Instant, unit: f64) -> Duration {
        let fresh = self.last_failure.is_none_or(|t| now.duration_since(t) > REFLECTOR_BACKOFF_RESET);
        self.current = if fresh || self.current.is_zero() {
            REFLECTOR_BACKOFF_INITIAL
        } else {
            (self.current * 2).min(REFLECTOR_BACKOFF_MAX)
        };
        self.last_failure = Some(now);
        jitter(self.current, REFLECTOR_BACKOFF_JITTER, unit)
    }
}

/// `api_reachable` is notified when another client of the API (the Lease) succeeds again after failing: a watch
/// waiting out its back-off from an outage then retries at once instead of up to a minute later.
pub async fn run_api_source(
    client: kube::Client,
    node_name: String,
    updates: mpsc::Sender<SourceUpdate>,
    mirrors: watch::Sender<MirrorPods>,
    api_reachable: Arc<Notify>,
) {
    let pods: Api<Pod> = Api::all(client);
    let config = watcher::Config::default().fields(&format!("spec.nodeName={node_name}")).any_semantic();
    let mut stream = watcher::watcher(pods, config).boxed();
    let mut backoff = ReflectorBackoff::new();
    let mut current = PodSet::default();
    let mut initial: Option<PodSet> = None;
    while let Some(event) = stream.next().await {
        let changed = match event {
            Ok(Event::Init) => {
                initial = Some(PodSet::default());
                false
            }
            Ok(Event::InitApply(pod)) => {
                if let Some(buffer) = initial.as_mut() {
                    buffer.apply(pod, Some(&current));
                }
                false
            }
            Ok(Event::InitDone) => {
                current = initial.take().unwrap_or_default();
                true
            }
            Ok(Event::Apply(pod)) => {
                current.apply(pod, None);
                true
            }
            Ok(Event::Delete(pod)) => {
                current.remove(spec::uid(&pod));
                true
            }
            // The resourceVersion fell out of the server's watch window: the watcher relists at once (the server
            // answered, so there is nothing to back off from), and the relist (Init..InitDone) replaces the whole
            // set, so pods added or deleted meanwhile are not missed.
            Err(watcher::Error::WatchError(s)) if s.code == 410 => {
                tracing::info!(reason = %s.reason, "pod watch expired (410 Gone); relisting");
                false
            }
            Err(e) => {
                // Pods keep running meanwhile; the watcher relists on its next poll.
                let wait = backoff.next(Instant::now(), random_unit());
                tracing::warn!(error = %e, retry_in = ?wait, "pod watch failed; retrying");
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = api_reachable.notified() => tracing::info!("API server reachable again; relisting pods"),
                }
                false
            }
        };
        if !changed {
            continue;
        }
        // The mirror pods' receivers (the status manager) wake only when one of them changed.
        let mirror_pods = current.mirror_pods();
        mirrors.send_if_modified(|old| {
            let same = old.len() == mirror_pods.len()
                && old.iter().zip(&mirror_pods).all(|((k, a), (l, b))| k == l && Arc::ptr_eq(a, b));
            if !same {
                *old = mirror_pods;
            }
            !same
        });
        if updates.send(SourceUpdate { source: API_SOURCE, pods: current.to_run() }).await.is_err() {
            return;
        }
    }
}

/// The pods of the node as the watch has them, one `Arc` per UID: an event replaces one pod and the others keep
/// their `Arc`, so the pod manager tells what changed by pointer and the set is never copied pod by pod.
#[derive(Debug, Default)]
struct PodSet {
    pods: BTreeMap<String, Arc<Pod>>,
}

impl PodSet {
    /// Adds the pod, annotated with its source as pods to run are (a mirror pod as it is). A copy the same as the
    /// one in `previous` (an unchanged pod seen again by a relist) keeps that `Arc`.
    fn apply(&mut self, mut pod: Pod, previous: Option<&PodSet>) {
        // The field managers' bookkeeping is most of a pod object's size (the heap profile of a 30-pod churn: about
        // half the agent's peak) and nothing in the agent reads it: status writes are patches of the status alone,
        // and mirror pods are built from the static pod's own manifest.
        pod.metadata.managed_fields = None;
        if !is_mirror(&pod) {
            pod.metadata
                .annotations
                .get_or_insert_with(BTreeMap::new)
                .insert(CONFIG_SOURCE_ANNOTATION.into(), API_SOURCE.into());
        }
        let uid = spec::uid(&pod).to_owned();
        let kept = previous.and_then(|p| p.pods.get(&uid)).filter(|old| ***old == pod).cloned();
        self.pods.insert(uid, kept.unwrap_or_else(|| Arc::new(pod)));
    }

    fn remove(&mut self, uid: &str) {
        self.pods.remove(uid);
    }

    fn mirror_pods(&self) -> MirrorPods {
        self.pods.values().filter(|p| is_mirror(p)).map(|p| (spec::key(p), p.clone())).collect()
    }

    /// The pods to run: all but mirror pods.
    fn to_run(&self) -> Vec<Arc<Pod>> {
        self.pods.values().filter(|p| !is_mirror(p)).cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(uid: &str, rv: &str, mirror: bool) -> Pod {
        let mut pod = Pod::default();
        pod.metadata.name = Some(uid.to_owned());
        pod.metadata.namespace = Some("default".into());
        pod.metadata.uid = Some(uid.to_owned());
        pod.metadata.resource_version = Some(rv.to_owned());
        if mirror {
            pod.metadata.annotations = Some([(CONFIG_MIRROR_ANNOTATION.to_owned(), "h".to_owned())].into());
        }
        pod
    }

    #[test]
    fn pods_are_kept_without_their_managed_fields() {
        let mut p = pod("u1", "1", false);
        p.metadata.managed_fields = Some(vec![Default::default()]);
        let mut set = PodSet::default();
        set.apply(p, None);
        assert_eq!(set.to_run()[0].metadata.managed_fields, None);
    }

    #[test]
    fn an_event_replaces_one_pod_and_the_others_keep_their_arc() {
        let mut set = PodSet::default();
        for i in 0..30 {
            set.apply(pod(&format!("u{i}"), "1", false), None);
        }
        set.apply(pod("m", "1", true), None);
        let before = set.to_run();
        assert_eq!(before.len(), 30, "mirror pods are not pods to run");
        let annotated =
            |p: &Pod| p.metadata.annotations.as_ref().and_then(|a| a.get(CONFIG_SOURCE_ANNOTATION)).cloned();
        assert_eq!(annotated(&before[0]), Some(API_SOURCE.to_owned()));
        let mirrors = set.mirror_pods();
        assert_eq!(annotated(&mirrors["default/m"]), None, "a mirror pod is kept as the API has it");

        set.apply(pod("u7", "2", false), None);
        let after = set.to_run();
        let replaced: Vec<usize> = (0..30).filter(|&i| !Arc::ptr_eq(&before[i], &after[i])).collect();
        let u7 = before.iter().position(|p| spec::uid(p) == "u7").expect("u7 listed");
        assert_eq!(replaced, vec![u7]);
        assert!(Arc::ptr_eq(&mirrors["default/m"], &set.mirror_pods()["default/m"]));

        // A relist hands every pod over again: unchanged ones keep their Arc.
        let mut relisted = PodSet::default();
        for i in 0..30 {
            relisted.apply(pod(&format!("u{i}"), if i == 7 { "2" } else { "1" }, false), Some(&set));
        }
        assert!(relisted.to_run().iter().zip(&after).all(|(a, b)| Arc::ptr_eq(a, b)));
    }

    #[test]
    fn reflector_backoff_doubles_to_thirty_seconds_and_starts_over_after_two_quiet_minutes() {
        let mut b = ReflectorBackoff::new();
        let t0 = Instant::now();
        let waits: Vec<u64> = (0..8).map(|i| b.next(t0 + Duration::from_secs(i), 0.0).as_millis() as u64).collect();
        assert_eq!(waits, vec![800, 1600, 3200, 6400, 12800, 25600, 30000, 30000]);
        assert_eq!(b.next(t0 + Duration::from_secs(8), 0.5), Duration::from_secs(45), "jitter adds up to 100 %");
        assert_eq!(b.next(t0 + Duration::from_secs(200), 0.0), REFLECTOR_BACKOFF_INITIAL);
    }
}
