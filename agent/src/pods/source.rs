//! Pod sources. The file source turns the static pod folder (`staticPodPath`) into pods the way kubelet's file source
//! does: one pod per v1 Pod document, named `<name>-<nodeName>`, with a UID derived from its content, the node and the
//! file; every scan yields the complete set, so a removed or broken file drops its pods.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use md5::{Digest, Md5};
use notify::Watcher;
use tokio::sync::mpsc;

use super::spec;

pub const FILE_SOURCE: &str = "file";
/// Annotations kubelet puts on pods from files (pkg/kubelet/types/pod_update.go).
pub const CONFIG_HASH_ANNOTATION: &str = "kubernetes.io/config.hash";
pub const CONFIG_SOURCE_ANNOTATION: &str = "kubernetes.io/config.source";
pub const CONFIG_MIRROR_ANNOTATION: &str = "kubernetes.io/config.mirror";
/// Editors write files in several steps; wait this long after the last change before rescanning.
const SETTLE: Duration = Duration::from_millis(100);

/// The complete current set of pods from one source.
#[derive(Debug, Clone)]
pub struct SourceUpdate {
    pub source: &'static str,
    pub pods: Vec<Arc<Pod>>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("static pod manifest {path}{doc}: {reason}", doc = doc_suffix(*.document))]
pub struct ManifestError {
    pub path: PathBuf,
    /// Index of the YAML document within a multi-document file.
    pub document: Option<usize>,
    pub reason: String,
}

fn doc_suffix(doc: Option<usize>) -> String {
    doc.map(|d| format!(" (document {})", d + 1)).unwrap_or_default()
}

fn is_manifest_file(path: &Path) -> bool {
    let hidden = path.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with('.'));
    let ext = path.extension().and_then(|e| e.to_str()).unwrap_or_default();
    !hidden && matches!(ext, "yaml" | "yml" | "json")
}

/// Decodes the documents of one manifest file into pods, with kubelet's static pod defaulting applied.
pub fn pods_from_file(path: &Path, text: &str, node_name: &str) -> Vec<Result<Pod, ManifestError>> {
    let err = |document: Option<usize>, reason: String| ManifestError { path: path.to_owned(), document, reason };
    let is_json = path.extension().is_some_and(|e| e == "json");
    let documents: Vec<Result<serde_json::Value, String>> = if is_json {
        vec![serde_json::from_str(text).map_err(|e| e.to_string())]
    } else {
        let mut docs = Vec::new();
        for d in serde_yaml::Deserializer::from_str(text) {
            let doc = serde::Deserialize::deserialize(d)
                .map_err(|e: serde_yaml::Error| e.to_string())
                .and_then(|v: serde_yaml::Value| serde_json::to_value(v).map_err(|e| e.to_string()));
            // After a syntax error the YAML stream cannot be resynchronised (and serde_yaml would repeat the error
            // forever): the rest of the file is lost with it.
            let failed = doc.is_err();
            docs.push(doc);
            if failed {
                break;
            }
        }
        docs
    };
    let multi = documents.len() > 1;
    documents
        .into_iter()
        .enumerate()
        .filter(|(_, d)| !matches!(d, Ok(serde_json::Value::Null)))
        .map(|(i, doc)| {
            let index = multi.then_some(i);
            let value = doc.map_err(|reason| err(index, format!("decode: {reason}")))?;
            pod_from_value(path, value, node_name).map_err(|reason| err(index, reason))
        })
        .collect()
}

fn pod_from_value(path: &Path, value: serde_json::Value, node_name: &str) -> Result<Pod, String> {
    let api_version = value.get("apiVersion").and_then(|v| v.as_str()).unwrap_or_default();
    let kind = value.get("kind").and_then(|v| v.as_str()).unwrap_or_default();
    if api_version != "v1" || kind != "Pod" {
        return Err(format!("want apiVersion v1, kind Pod; found apiVersion {api_version:?}, kind {kind:?}"));
    }
    let mut pod: Pod = serde_json::from_value(value).map_err(|e| format!("decode Pod: {e}"))?;
    spec::validate(&pod)?;

    // kubelet hashes the decoded pod before defaulting, then the node and the file, so the same manifest on the
    // same node always yields the same UID: a restarted agent finds its pods' containers again by that UID.
    if pod.metadata.uid.as_deref().unwrap_or_default().is_empty() {
        let mut hasher = Md5::new();
        hasher.update(serde_json::to_vec(&pod).unwrap_or_default());
        hasher.update(format!("host:{node_name}"));
        hasher.update(format!("file:{}", path.display()));
        pod.metadata.uid = Some(hex::encode(hasher.finalize()));
    }
    let name = format!("{}-{}", spec::name(&pod), node_name);
    pod.metadata.name = Some(name);
    pod.metadata.namespace = Some(spec::namespace(&pod).to_owned());
    let uid = spec::uid(&pod).to_owned();
    let annotations = pod.metadata.annotations.get_or_insert_with(BTreeMap::new);
    annotations.insert(CONFIG_HASH_ANNOTATION.into(), uid);
    annotations.insert(CONFIG_SOURCE_ANNOTATION.into(), FILE_SOURCE.into());
    if let Some(s) = pod.spec.as_mut() {
        s.node_name = Some(node_name.to_owned());
        spec::apply_api_defaults(s);
    }
    Ok(pod)
}

/// Reads every manifest in the folder. Pods with a name already taken by an earlier file are rejected, as kubelet
/// rejects duplicate static pods.
pub fn scan_dir(dir: &Path, node_name: &str) -> (Vec<Pod>, Vec<ManifestError>) {
    let mut pods: Vec<Pod> = Vec::new();
    let mut errors = Vec::new();
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return (pods, errors),
        Err(e) => {
            errors.push(ManifestError { path: dir.to_owned(), document: None, reason: format!("read folder: {e}") });
            return (pods, errors);
        }
    };
    let mut files: Vec<PathBuf> =
        entries.filter_map(|e| e.ok().map(|e| e.path())).filter(|p| is_manifest_file(p)).collect();
    files.sort();
    for path in files {
        if !path.is_file() {
            continue;
        }
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) => {
                errors.push(ManifestError { path, document: None, reason: format!("read: {e}") });
                continue;
            }
        };
        for result in pods_from_file(&path, &text, node_name) {
            match result {
                Ok(pod) => {
                    if pods.iter().any(|p| spec::key(p) == spec::key(&pod)) {
                        errors.push(ManifestError {
                            path: path.clone(),
                            document: None,
                            reason: format!("pod {} is already defined by another manifest", spec::key(&pod)),
                        });
                    } else {
                        pods.push(pod);
                    }
                }
                Err(e) => errors.push(e),
            }
        }
    }
    (pods, errors)
}

/// Watches the static pod folder and sends the full pod set whenever it changes: inotify for prompt updates, plus a
/// rescan every `file_check_frequency` in case an event was missed (or the folder did not exist yet).
pub async fn run_file_source(
    dir: PathBuf,
    node_name: String,
    file_check_frequency: Duration,
    updates: mpsc::Sender<SourceUpdate>,
) {
    let (events_tx, mut events) = mpsc::unbounded_channel::<()>();
    let mut watcher: Option<notify::RecommendedWatcher> = None;
    let mut last_sent: Option<Vec<String>> = None;
    let mut reported: BTreeMap<String, String> = BTreeMap::new();
    let mut tick = tokio::time::interval(file_check_frequency.max(Duration::from_secs(1)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        if watcher.is_none() && dir.is_dir() {
            let tx = events_tx.clone();
            match notify::recommended_watcher(move |_res: notify::Result<notify::Event>| {
                let _ = tx.send(());
            }) {
                Ok(mut w) => match w.watch(&dir, notify::RecursiveMode::NonRecursive) {
                    Ok(()) => watcher = Some(w),
                    Err(e) => {
                        tracing::warn!(dir = %dir.display(), error = %e, "cannot watch static pod folder; polling")
                    }
                },
                Err(e) => tracing::warn!(error = %e, "cannot create file watcher; polling"),
            }
        }

        let (pods, errors) = {
            let dir = dir.clone();
            let node = node_name.clone();
            tokio::task::spawn_blocking(move || scan_dir(&dir, &node)).await.unwrap_or_default()
        };
        // Log each broken file once per distinct problem, not on every rescan.
        let mut now_reported = BTreeMap::new();
        for e in errors {
            let key = format!("{}#{:?}", e.path.display(), e.document);
            if reported.get(&key) != Some(&e.reason) {
                tracing::error!(path = %e.path.display(), "{e}");
            }
            now_reported.insert(key, e.reason);
        }
        reported = now_reported;
        let fingerprint: Vec<String> = pods.iter().map(|p| spec::uid(p).to_owned()).collect();
        if last_sent.as_ref() != Some(&fingerprint) {
            tracing::info!(dir = %dir.display(), pods = pods.len(), "static pod set changed");
            let update = SourceUpdate { source: FILE_SOURCE, pods: pods.into_iter().map(Arc::new).collect() };
            if updates.send(update).await.is_err() {
                return;
            }
            last_sent = Some(fingerprint);
        }

        tokio::select! {
            Some(()) = events.recv() => {
                tokio::time::sleep(SETTLE).await;
                while events.try_recv().is_ok() {}
            }
            _ = tick.tick() => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const POD: &str = "apiVersion: v1\nkind: Pod\nmetadata:\n  name: web\nspec:\n  containers:\n  - name: app\n    image: 127.0.0.1:5000/busybox:1.36\n";

    #[test]
    fn static_pod_naming_and_defaults() {
        let pods = pods_from_file(Path::new("/etc/manifests/web.yaml"), POD, "node-1");
        let pod = pods.into_iter().next().unwrap().unwrap();
        assert_eq!(spec::name(&pod), "web-node-1");
        assert_eq!(spec::namespace(&pod), "default");
        assert_eq!(spec::uid(&pod).len(), 32);
        let s = pod.spec.as_ref().unwrap();
        assert_eq!(s.node_name.as_deref(), Some("node-1"));
        assert_eq!(s.restart_policy.as_deref(), Some("Always"));
        assert_eq!(s.termination_grace_period_seconds, Some(30));
        assert_eq!(s.containers[0].image_pull_policy.as_deref(), Some("IfNotPresent"));
        let ann = pod.metadata.annotations.as_ref().unwrap();
        assert_eq!(ann.get(CONFIG_HASH_ANNOTATION).map(String::as_str), Some(spec::uid(&pod)));
        assert_eq!(ann.get(CONFIG_SOURCE_ANNOTATION).map(String::as_str), Some("file"));
    }

    #[test]
    fn uid_depends_on_content_node_and_file() {
        let uid = |text: &str, node: &str, file: &str| {
            spec::uid(&pods_from_file(Path::new(file), text, node).remove(0).unwrap()).to_owned()
        };
        let base = uid(POD, "n1", "/m/web.yaml");
        assert_eq!(base, uid(POD, "n1", "/m/web.yaml"));
        assert_ne!(base, uid(&POD.replace("1.36", "1.37"), "n1", "/m/web.yaml"));
        assert_ne!(base, uid(POD, "n2", "/m/web.yaml"));
        assert_ne!(base, uid(POD, "n1", "/m/other.yaml"));
    }

    #[test]
    fn multi_document_yaml_and_errors_per_document() {
        let text = format!("{POD}---\n{}---\napiVersion: v1\nkind: Service\n", POD.replace("web", "api"));
        let results = pods_from_file(Path::new("/m/all.yaml"), &text, "n");
        assert_eq!(results.len(), 3);
        assert!(results[0].is_ok() && results[1].is_ok());
        let err = results[2].as_ref().unwrap_err();
        assert_eq!(err.document, Some(2));
        assert!(err.to_string().contains("/m/all.yaml (document 3)"), "{err}");
        assert!(err.to_string().contains("Service"), "{err}");
    }

    #[test]
    fn malformed_and_invalid_manifests_name_the_problem() {
        let bad_yaml = pods_from_file(Path::new("/m/bad.yaml"), "apiVersion: v1\nkind: Pod\nmetadata: [", "n");
        assert!(bad_yaml[0].as_ref().unwrap_err().reason.starts_with("decode"));
        let bad_qty =
            POD.replace("    image:", "    resources:\n      limits:\n        memory: 12 bananas\n    image:");
        let e = pods_from_file(Path::new("/m/q.yaml"), &bad_qty, "n").remove(0).unwrap_err();
        assert!(e.reason.contains("resources.limits.memory") && e.reason.contains("12 bananas"), "{e}");
        let json = pods_from_file(Path::new("/m/p.json"), "{\"apiVersion\": \"v1\", \"kind\": \"Pod\",", "n");
        assert!(json[0].is_err());
    }

    #[test]
    fn scan_dir_skips_broken_files_and_duplicates() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a.yaml"), POD).unwrap();
        std::fs::write(dir.path().join("b.yml"), POD.replace("web", "api")).unwrap();
        std::fs::write(dir.path().join("c.yaml"), "not: [valid").unwrap();
        std::fs::write(dir.path().join("d.yaml"), POD).unwrap(); // same pod name as a.yaml
        std::fs::write(dir.path().join("notes.txt"), "ignored").unwrap();
        std::fs::write(dir.path().join(".hidden.yaml"), POD.replace("web", "hid")).unwrap();
        let (pods, errors) = scan_dir(dir.path(), "n");
        let names: Vec<&str> = pods.iter().map(spec::name).collect();
        assert_eq!(names, vec!["web-n", "api-n"]);
        assert_eq!(errors.len(), 2, "{errors:?}");
        assert!(errors.iter().any(|e| e.path.ends_with("c.yaml")));
        assert!(errors.iter().any(|e| e.path.ends_with("d.yaml") && e.reason.contains("already defined")));
    }
}
