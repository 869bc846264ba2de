//! The API pod source: a watch of the pods bound to this node (`spec.nodeName=<node>`) with bookmarks
//! (`allowWatchBookmarks`, so a resumed watch starts from a recent resourceVersion), relisting when the watch
//! expires (`410 Gone`), sent to the pod manager as the complete set (kubelet's `apiserver` config source). Mirror pods are not
//! pods to run: they are reported separately to the status manager.

use std::collections::BTreeMap;
use std::sync::Arc;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::api::Api;
use kube::runtime::watcher::{self, Event};
use kube::runtime::WatchStreamExt;
use tokio::sync::{mpsc, watch};

use crate::pods::source::{SourceUpdate, CONFIG_MIRROR_ANNOTATION, CONFIG_SOURCE_ANNOTATION};
use crate::pods::spec;

pub const API_SOURCE: &str = "api";

/// Mirror pods in the API, by `namespace/name`.
pub type MirrorPods = BTreeMap<String, Arc<Pod>>;

fn is_mirror(pod: &Pod) -> bool {
    pod.metadata.annotations.as_ref().is_some_and(|a| a.contains_key(CONFIG_MIRROR_ANNOTATION))
}

pub async fn run_api_source(
    client: kube::Client,
    node_name: String,
    updates: mpsc::Sender<SourceUpdate>,
    mirrors: watch::Sender<MirrorPods>,
) {
    let pods: Api<Pod> = Api::all(client);
    let config = watcher::Config::default().fields(&format!("spec.nodeName={node_name}")).any_semantic();
    let mut stream = watcher::watcher(pods, config).default_backoff().boxed();
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
            // The resourceVersion fell out of the server's watch window: the watcher relists, and the relist
            // (Init..InitDone) replaces the whole set, so pods added or deleted meanwhile are not missed.
            Err(watcher::Error::WatchError(s)) if s.code == 410 => {
                tracing::info!(reason = %s.reason, "pod watch expired (410 Gone); relisting");
                false
            }
            Err(e) => {
                // The stream backs off and relists by itself; pods keep running meanwhile.
                tracing::warn!(error = %e, "pod watch failed; retrying");
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
