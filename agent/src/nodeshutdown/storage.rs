//! The shutdown's start and end times in `<root-dir>/graceful_node_shutdown_state`, kubelet's `localStorage`
//! (storage.go): JSON `{"startTime": ..., "endTime": ...}`, written atomically, so that the next boot can tell how
//! the last graceful shutdown went.

use std::io::Write;
use std::path::Path;

/// Go's zero `time.Time`, as `encoding/json` writes it.
const GO_ZERO_TIME: &str = "0001-01-01T00:00:00Z";

pub fn state_json(start: jiff::Timestamp, end: Option<jiff::Timestamp>) -> String {
    let end = end.map(|t| t.to_string()).unwrap_or_else(|| GO_ZERO_TIME.to_owned());
    serde_json::json!({ "startTime": start.to_string(), "endTime": end }).to_string()
}

/// `atomicWrite`: a temporary file in the same folder, synced, then renamed over the state file.
pub fn store(path: &Path, data: &str) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp = dir.join(format!(".tmp-{name}"));
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(data.as_bytes())?;
    f.sync_all()?;
    drop(f);
    std::fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_is_kubelets_json_and_replaced_whole() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("graceful_node_shutdown_state");
        let start: jiff::Timestamp = "2026-12-07T06:00:00Z".parse().unwrap();
        store(&path, &state_json(start, None)).unwrap();
        let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        assert_eq!(v, serde_json::json!({"startTime": "2026-12-07T06:00:00Z", "endTime": "0001-01-01T00:00:00Z"}));
        let end: jiff::Timestamp = "2026-12-07T06:00:20.5Z".parse().unwrap();
        store(&path, &state_json(start, Some(end))).unwrap();
        let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        assert_eq!(v["endTime"], "2026-12-07T06:00:20.5Z");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1, "no temporary file left");
    }
}
