//! Pod sources. The file source turns the static pod folder (`staticPodPath`) into pods the way kubelet's file source
//! does: one pod per v1 Pod document, named `<name>-<nodeName>`, with a UID derived from its content, the node and the
//! file; every scan yields the complete set, so a removed or broken file drops its pods.

pub mod api;

use crate::kubetypes::annotations::{CONFIG_HASH_ANNOTATION, CONFIG_SOURCE_ANNOTATION, FILE_SOURCE};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use md5::{Digest, Md5};
use notify::Watcher;
use tokio::sync::mpsc;

use crate::kubetypes::spec;

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

    // A UID the manifest gives is kept, as kubelet keeps it (`applyDefaults`, pkg/kubelet/config/common.go), but
    // only if it is safe as the name of the pod's directories: kubelet joins it into paths unchecked.
    if let Some(uid) = pod.metadata.uid.as_deref().filter(|u| !u.is_empty()) {
        validate_uid(uid)?;
    }
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

/// The longest UID a manifest may give: well above a UUID (36 characters, what the API server assigns) or the 32 hex
/// digits of a derived one, far below a file name's 255 bytes.
pub const MAX_STATIC_POD_UID_LEN: usize = 128;

/// A manifest's own `metadata.uid` names the pod's directories (`<root-dir>/pods/<uid>`, its log directory): letters,
/// digits, `-`, `_` and `.` only, not `.` or `..`, so that it can never climb out of them or name another path.
pub fn validate_uid(uid: &str) -> Result<(), String> {
    let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.');
    if uid.len() > MAX_STATIC_POD_UID_LEN || !uid.chars().all(allowed) || uid == "." || uid == ".." {
        return Err(format!(
            "metadata.uid {uid:?}: must be at most {MAX_STATIC_POD_UID_LEN} letters, digits, '-', '_' or '.', \
             and not \".\" or \"..\" (it names the pod's directories)"
        ));
    }
    Ok(())
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

/// Sends `()` on `changes` whenever the folder's content changes. Only changes count: inotify also reports opening
/// and reading the folder (notify's `Access` events), and the rescan that follows a change reads the folder, which
/// would otherwise start the next rescan, ten times a second for as long as the agent runs.
fn watch_folder(dir: &Path, changes: mpsc::UnboundedSender<()>) -> notify::Result<notify::RecommendedWatcher> {
    let mut watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
        if res.is_ok_and(|e| !matches!(e.kind, notify::EventKind::Access(_))) {
            let _ = changes.send(());
        }
    })?;
    watcher.watch(dir, notify::RecursiveMode::NonRecursive)?;
    Ok(watcher)
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
            match watch_folder(&dir, events_tx.clone()) {
                Ok(w) => watcher = Some(w),
                Err(e) => tracing::warn!(dir = %dir.display(), error = %e, "cannot watch static pod folder; polling"),
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

    #[tokio::test]
    async fn reading_the_folder_is_not_a_change_but_writing_a_file_is() {
        let dir = tempfile::tempdir().unwrap();
        let (tx, mut changes) = mpsc::unbounded_channel();
        let _watcher = watch_folder(dir.path(), tx).unwrap();
        // What each rescan does: open and list the folder, read its files.
        std::fs::write(dir.path().join("web.yaml"), POD).unwrap();
        tokio::time::timeout(Duration::from_secs(5), changes.recv()).await.expect("a new file is a change");
        tokio::time::sleep(Duration::from_millis(200)).await;
        while changes.try_recv().is_ok() {}
        let _ = scan_dir(dir.path(), "node-1");
        let quiet = tokio::time::timeout(Duration::from_millis(500), changes.recv()).await;
        assert!(quiet.is_err(), "a rescan woke the source again");
        std::fs::remove_file(dir.path().join("web.yaml")).unwrap();
        tokio::time::timeout(Duration::from_secs(5), changes.recv()).await.expect("a removed file is a change");
    }

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

    #[test]
    fn a_given_uid_is_kept_only_when_it_is_safe_as_a_directory_name() {
        let with_uid = |uid: &str| POD.replace("  name: web\n", &format!("  name: web\n  uid: {uid:?}\n"));
        let parse = |uid: &str| pods_from_file(Path::new("/m/web.yaml"), &with_uid(uid), "n").remove(0);
        let uuid = "0f5b9c8e-3a1d-4c2b-9e7f-1a2b3c4d5e6f";
        let pod = parse(uuid).unwrap();
        assert_eq!(spec::uid(&pod), uuid, "kept as kubelet keeps it");
        assert_eq!(pod.metadata.annotations.as_ref().unwrap().get(CONFIG_HASH_ANNOTATION).unwrap(), uuid);
        for bad in ["../../etc", "a/b", "/etc", "..", ".", "x\u{0}y", "sp ace", "ü", &"a".repeat(129)] {
            let err = parse(bad).unwrap_err();
            assert!(err.reason.starts_with(&format!("metadata.uid {bad:?}: must be at most 128 letters")), "{err}");
            assert!(err.to_string().starts_with("static pod manifest /m/web.yaml: metadata.uid"), "{err}");
        }
        assert!(parse(&"a".repeat(128)).is_ok());
        assert!(parse("...").is_ok() && parse("web_1.v2").is_ok());
        // An empty one is derived, as kubelet does.
        assert_eq!(spec::uid(&parse("").unwrap()).len(), 32);
    }

    #[test]
    fn non_utf8_and_alias_bombs_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("bin.yaml"), [0xff, 0xfe, 0x00, 0x80]).unwrap();
        let (pods, errors) = scan_dir(dir.path(), "n");
        assert!(pods.is_empty());
        assert!(errors[0].reason.starts_with("read: "), "{errors:?}");
        // Nine levels of nine aliases: a billion strings if expanded.
        let mut bomb = String::from("a: &a [x,x,x,x,x,x,x,x,x]\n");
        for (prev, name) in
            ["a", "b", "c", "d", "e", "f", "g", "h"].iter().zip(["b", "c", "d", "e", "f", "g", "h", "i"])
        {
            bomb.push_str(&format!(
                "{name}: &{name} [*{prev},*{prev},*{prev},*{prev},*{prev},*{prev},*{prev},*{prev},*{prev}]\n"
            ));
        }
        let err = pods_from_file(Path::new("/m/bomb.yaml"), &bomb, "n").remove(0).unwrap_err();
        assert!(err.reason.starts_with("decode"), "{err}");
    }

    mod props {
        use super::*;
        use proptest::prelude::*;

        fn check(results: Vec<Result<Pod, ManifestError>>) -> Result<(), TestCaseError> {
            for r in results {
                match r {
                    Ok(pod) => {
                        prop_assert!(validate_uid(spec::uid(&pod)).is_ok() && !spec::uid(&pod).is_empty());
                    }
                    Err(e) => prop_assert!(!e.reason.is_empty()),
                }
            }
            Ok(())
        }

        /// Manifest-like YAML: the keys and values a pod has, in arbitrary shapes.
        fn yamlish() -> impl Strategy<Value = String> {
            let token = prop_oneof![
                Just("apiVersion: v1\n".to_owned()),
                Just("kind: Pod\n".to_owned()),
                Just("metadata:\n  name: web\n".to_owned()),
                Just("spec:\n  containers:\n  - name: app\n    image: busybox\n".to_owned()),
                "  uid: [ -~]{0,12}\n",
                "[ -~]{0,16}\n",
                Just("---\n".to_owned()),
                Just("&a [*a]\n".to_owned()),
            ];
            proptest::collection::vec(token, 0..10).prop_map(|t| t.concat())
        }

        proptest! {
            #[test]
            fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512), json in any::<bool>()) {
                let text = String::from_utf8_lossy(&bytes);
                let path = if json { "/m/x.json" } else { "/m/x.yaml" };
                check(pods_from_file(Path::new(path), &text, "n"))?;
            }

            #[test]
            fn manifest_shaped_input_gives_pods_with_safe_uids_or_clear_errors(text in yamlish()) {
                check(pods_from_file(Path::new("/m/x.yaml"), &text, "n"))?;
            }

            #[test]
            fn any_given_uid_is_safe_or_refused(uid in any::<String>()) {
                let text = POD.replace("  name: web\n", &format!("  name: web\n  uid: {}\n", serde_json::json!(uid)));
                for pod in pods_from_file(Path::new("/m/x.yaml"), &text, "n").into_iter().flatten() {
                    let got = spec::uid(&pod);
                    prop_assert!(got == uid || uid.is_empty());
                    prop_assert!(!got.contains('/') && got != ".." && got != ".");
                }
            }
        }
    }
}
