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
    let mut current: BTreeMap<String, Pod> = BTreeMap::new();
    let mut initial: Option<BTreeMap<String, Pod>> = None;
    while let Some(event) = stream.next().await {
        let changed = match event {
            Ok(Event::Init) => {
                initial = Some(BTreeMap::new());
                false
            }
            Ok(Event::InitApply(pod)) => {
                if let Some(buffer) = initial.as_mut() {
                    buffer.insert(spec::uid(&pod).to_owned(), pod);
                }
                false
            }
            Ok(Event::InitDone) => {
                current = initial.take().unwrap_or_default();
                true
            }
            Ok(Event::Apply(pod)) => {
                current.insert(spec::uid(&pod).to_owned(), pod);
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
        let mut to_run = Vec::new();
        let mut mirror_pods = MirrorPods::new();
        for pod in current.values() {
            if is_mirror(pod) {
                mirror_pods.insert(spec::key(pod), Arc::new(pod.clone()));
                continue;
            }
            let mut pod = pod.clone();
            pod.metadata
                .annotations
                .get_or_insert_with(BTreeMap::new)
                .insert(CONFIG_SOURCE_ANNOTATION.into(), API_SOURCE.into());
            to_run.push(Arc::new(pod));
        }
        mirrors.send_replace(mirror_pods);
        if updates.send(SourceUpdate { source: API_SOURCE, pods: to_run }).await.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
