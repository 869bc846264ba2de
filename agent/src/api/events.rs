//! Posts pod events to the API as kubelet's event recorder does: source `kubelet` on this host, and repeats of the
//! same event aggregated into one object whose `count` and `lastTimestamp` are patched, so a crash loop does not
//! flood the API.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Event, EventSource, ObjectReference};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, Time};
use kube::api::{Api, Patch, PatchParams, PostParams};
use tokio::sync::mpsc;

use crate::pods::events::PodEvent;

/// client-go's event correlator forgets an aggregation key after this long without a repeat.
const AGGREGATION_WINDOW: Duration = Duration::from_secs(600);
/// client-go's broadcaster tries a failed event write this many times before dropping it.
const MAX_TRIES: u32 = 12;
const RETRY_DELAY: Duration = Duration::from_secs(1);

struct Seen {
    event_name: String,
    namespace: String,
    count: i32,
    last_seen: Instant,
}

pub async fn run_event_poster(client: kube::Client, node_name: String, mut events: mpsc::UnboundedReceiver<PodEvent>) {
    let mut seen: HashMap<(String, &'static str, String, Option<String>), Seen> = HashMap::new();
    while let Some(ev) = events.recv().await {
        seen.retain(|_, s| s.last_seen.elapsed() < AGGREGATION_WINDOW);
        let key = (ev.uid.clone(), ev.reason, ev.message.clone(), ev.field_path.clone());
        let now = jiff::Timestamp::now();
        let api: Api<Event> = Api::namespaced(client.clone(), &ev.namespace);
        let mut tries = 0;
        loop {
            tries += 1;
            let result = match seen.get_mut(&key) {
                Some(s) => {
                    let count = s.count + 1;
                    let patch = serde_json::json!({ "count": count, "lastTimestamp": Time(now) });
                    let r = Api::<Event>::namespaced(client.clone(), &s.namespace)
                        .patch(&s.event_name, &PatchParams::default(), &Patch::Merge(&patch))
                        .await;
                    if r.is_ok() {
                        s.count = count;
                        s.last_seen = Instant::now();
                    }
                    r.map(|_| ())
                }
                None => {
                    let event = new_event(&ev, &node_name, now);
                    let name = event.metadata.name.clone().unwrap_or_default();
                    let r = api.create(&PostParams::default(), &event).await;
                    if r.is_ok() {
                        seen.insert(
                            key.clone(),
                            Seen {
                                event_name: name,
                                namespace: ev.namespace.clone(),
                                count: 1,
                                last_seen: Instant::now(),
                            },
                        );
                    }
                    r.map(|_| ())
                }
            };
            match result {
                Ok(()) => break,
                // The aggregated event was removed (TTL): start a new one.
                Err(kube::Error::Api(s)) if s.code == 404 => {
                    seen.remove(&key);
                }
                Err(e) if tries >= MAX_TRIES => {
                    tracing::warn!(reason = ev.reason, error = %e, "dropping event after {MAX_TRIES} tries");
                    break;
                }
                Err(_) => tokio::time::sleep(RETRY_DELAY).await,
            }
        }
    }
}

fn new_event(ev: &PodEvent, node_name: &str, now: jiff::Timestamp) -> Event {
    // client-go names events <object>.<unix nanos in hex>.
    let nanos = now.as_nanosecond();
    let mut event = Event::default();
    event.metadata.name = Some(format!("{}.{:x}", ev.name, nanos));
    event.metadata.namespace = Some(ev.namespace.clone());
    event.involved_object = ObjectReference {
        api_version: Some("v1".into()),
        kind: Some("Pod".into()),
        name: Some(ev.name.clone()),
        namespace: Some(ev.namespace.clone()),
        uid: Some(ev.uid.clone()),
        field_path: ev.field_path.clone(),
        ..Default::default()
    };
    event.reason = Some(ev.reason.to_owned());
    event.message = Some(ev.message.clone());
    event.type_ = Some(ev.kind.as_str().to_owned());
    event.count = Some(1);
    event.first_timestamp = Some(Time(now));
    event.last_timestamp = Some(Time(now));
    event.event_time = None::<MicroTime>;
    event.source = Some(EventSource { component: Some("kubelet".into()), host: Some(node_name.to_owned()) });
    event.reporting_component = Some("kubelet".into());
    event.reporting_instance = Some(node_name.to_owned());
    event
}
