//! Watch streams: initial state, resume from a resourceVersion, selector transitions,
//! bookmarks, timeouts, 410 Gone.

use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use serde_json::{json, Value};
use tokio::sync::mpsc;

use super::kinds::to_external;
use super::resources::ResourceDef;
use super::selectors::Selection;
use super::server::Shared;
use super::status::{ApiError, ApiResult};
use super::store::{Change, EventType};

pub(crate) struct WatchRequest {
    pub def: &'static ResourceDef,
    pub sel: Selection,
    pub resource_version: Option<String>,
    pub bookmarks: bool,
    pub send_initial_events: bool,
    pub timeout: Option<Duration>,
}

fn line(ty: &str, object: Value) -> Bytes {
    let mut v = serde_json::to_vec(&json!({ "type": ty, "object": object })).expect("serializable");
    v.push(b'\n');
    Bytes::from(v)
}

fn expired_line(rv: u64, oldest: u64) -> Bytes {
    let e = ApiError::expired(format!("too old resource version: {rv} ({oldest})"));
    line("ERROR", e.to_status())
}

fn bookmark(def: &ResourceDef, rv: u64, initial_end: bool) -> Bytes {
    let mut meta = json!({ "resourceVersion": rv.to_string() });
    if initial_end {
        meta["annotations"] = json!({ "k8s.io/initial-events-end": "true" });
    }
    line("BOOKMARK", json!({ "kind": def.kind, "apiVersion": def.api_version(), "metadata": meta }))
}

/// What a watcher with selection `sel` sees of a change (the cacher's rules: an object
/// entering the selection is ADDED, one leaving it is DELETED with its previous state).
fn transform(def: &ResourceDef, sel: &Selection, ch: &Change) -> Option<Bytes> {
    let cur = sel.matches(def, &ch.object);
    let prev = ch.prev.as_ref().is_some_and(|p| sel.matches(def, p));
    let (ty, obj) = match ch.ty {
        EventType::Added => (cur.then_some("ADDED")?, ch.object.clone()),
        EventType::Deleted => ((cur || prev).then_some("DELETED")?, ch.object.clone()),
        EventType::Modified => match (prev, cur) {
            (true, true) => ("MODIFIED", ch.object.clone()),
            (false, true) => ("ADDED", ch.object.clone()),
            (true, false) => {
                let mut p = ch.prev.clone().expect("prev");
                p["metadata"]["resourceVersion"] = json!(ch.rv.to_string());
                ("DELETED", p)
            }
            (false, false) => return None,
        },
    };
    Some(line(ty, to_external(def, &obj)))
}

/// Validate the request and start streaming; the stream ends on timeout, when the
/// client goes away, or when the connection is killed (pause).
pub(crate) fn start(shared: Arc<Shared>, w: WatchRequest) -> ApiResult<Body> {
    let (tx, rx) = mpsc::channel::<Bytes>(256);
    let mut initial: Vec<Bytes> = Vec::new();
    let mut last: u64;
    let mut changed = shared.changed.subscribe();
    {
        let store = shared.lock_store();
        match w.resource_version.as_deref().filter(|rv| !rv.is_empty() && *rv != "0") {
            Some(rv) if !w.send_initial_events => {
                let n: u64 =
                    rv.parse().map_err(|_| ApiError::bad_request(format!("invalid resource version {rv:?}")))?;
                last = n;
                if let Err(oldest) = store.changes_since(w.def, n) {
                    initial.push(expired_line(n, oldest));
                    last = u64::MAX;
                }
            }
            _ => {
                for obj in store.list(w.def, w.sel.namespace.as_deref()) {
                    if w.sel.matches(w.def, obj) {
                        initial.push(line("ADDED", to_external(w.def, obj)));
                    }
                }
                last = store.rv;
                if w.send_initial_events && w.bookmarks {
                    initial.push(bookmark(w.def, last, true));
                }
            }
        }
    }
    let bookmark_every = *shared.bookmark_interval.lock().unwrap_or_else(|e| e.into_inner());
    tokio::spawn(async move {
        for b in initial {
            if tx.send(b).await.is_err() {
                return;
            }
        }
        if last == u64::MAX {
            return; // expired
        }
        let deadline = w.timeout.map(|t| tokio::time::Instant::now() + t);
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + bookmark_every, bookmark_every);
        let mut send_bookmark = false;
        loop {
            let (out, expired): (Vec<Bytes>, bool) = {
                let store = shared.lock_store();
                match store.changes_since(w.def, last) {
                    Ok(changes) => {
                        last = store.rv;
                        let mut out: Vec<Bytes> = changes.iter().filter_map(|c| transform(w.def, &w.sel, c)).collect();
                        if send_bookmark {
                            out.push(bookmark(w.def, last, false));
                        }
                        (out, false)
                    }
                    Err(oldest) => (vec![expired_line(last, oldest)], true),
                }
            };
            send_bookmark = false;
            for b in out {
                if tx.send(b).await.is_err() {
                    return;
                }
            }
            if expired {
                return;
            }
            let sleep = async {
                match deadline {
                    Some(d) => tokio::time::sleep_until(d).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                r = changed.changed() => if r.is_err() { return },
                _ = tick.tick(), if w.bookmarks => send_bookmark = true,
                _ = sleep => return,
                _ = tx.closed() => return,
            }
        }
    });
    let stream = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|b| (Ok::<_, std::convert::Infallible>(b), rx))
    });
    Ok(Body::from_stream(stream))
}
