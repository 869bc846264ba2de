//! Posts pod events to the API as kubelet's event broadcaster does (client-go `tools/record`): source `kubelet` on
//! this host; a bounded queue that drops events rather than holding up the pod workers; an event correlator that
//! aggregates similar events, counts repeats of the same event into one object (patched `count`/`lastTimestamp`) and
//! rate-limits each source and object with a token bucket; and client-go's retry rules: an event the server rejected is
//! never sent again, a 404 on the patch of an aggregated event (deleted or expired in the API) creates it anew, and
//! only transport failures are retried, a bounded number of times (429/503/504 are retried after the server's
//! Retry-After by kube's client itself, as by client-go's REST client).

use std::collections::hash_map::RandomState;
use std::collections::{HashMap, HashSet};
use std::hash::BuildHasher;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Event, EventSource, ObjectReference};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Api, Patch, PatchParams, PostParams};
use tokio::sync::mpsc;

use crate::kubetypes::events::{EventMessage, NodeEvent, PodEvent};

/// client-go's broadcaster queue (`maxQueuedEvents`): events beyond it are dropped.
pub const MAX_QUEUED_EVENTS: usize = 1000;
/// client-go tries to write one event this many times (`maxTriesPerEvent`) when the server cannot be reached.
pub const MAX_TRIES_PER_EVENT: u32 = 12;
/// Pause between those tries (`defaultSleepDuration`); the first one is randomised so that nodes do not retry in step.
pub const SLEEP_DURATION: Duration = Duration::from_secs(10);
/// Entries kept by each of the correlator's caches (`maxLruCacheEntries`).
pub const LRU_CACHE_ENTRIES: usize = 4096;
/// More distinct messages than this for one source, object, type and reason within the interval get aggregated
/// into one "(combined from similar events)" event (`defaultAggregateMaxEvents`).
pub const AGGREGATE_MAX_EVENTS: usize = 10;
/// `defaultAggregateIntervalInSeconds`.
pub const AGGREGATE_INTERVAL: Duration = Duration::from_secs(600);
/// A source may send this many events about one object at once (`defaultSpamBurst`)…
pub const SPAM_BURST: f64 = 25.0;
/// …then one more every 5 minutes (`defaultSpamQPS`).
pub const SPAM_QPS: f64 = 1.0 / 300.0;

/// The kubelet's event source component.
const COMPONENT: &str = "kubelet";
/// Where events about cluster-scoped objects go (client-go's `metav1.NamespaceDefault` in `makeEvent`).
const NODE_EVENT_NAMESPACE: &str = "default";

/// A least-recently-used map of at most `capacity` entries (groupcache's `lru.Cache` as client-go uses it). Each
/// entry also names the UID of the object its key is about, so that a pod's entries go with the pod: client-go's
/// caches keep them until 4096 newer ones push them out, which holds the memory of long-gone pods.
struct Lru<V> {
    capacity: usize,
    tick: u64,
    entries: HashMap<String, (u64, String, V)>,
}

impl<V> Lru<V> {
    fn new(capacity: usize) -> Self {
        Lru { capacity, tick: 0, entries: HashMap::new() }
    }

    fn get_mut(&mut self, key: &str) -> Option<&mut V> {
        self.tick += 1;
        let tick = self.tick;
        self.entries.get_mut(key).map(|(t, _, v)| {
            *t = tick;
            v
        })
    }

    fn insert(&mut self, key: String, uid: &str, value: V) {
        self.tick += 1;
        if !self.entries.contains_key(&key) && self.entries.len() >= self.capacity {
            // Full: forget the entry used longest ago. A linear scan, but only when the cache is full.
            if let Some(oldest) = self.entries.iter().min_by_key(|(_, (t, _, _))| *t).map(|(k, _)| k.clone()) {
                self.entries.remove(&oldest);
            }
        }
        self.entries.insert(key, (self.tick, uid.to_owned(), value));
    }

    /// Forgets every entry about the object `uid`, and gives the room back once the map is mostly empty.
    fn forget_object(&mut self, uid: &str) {
        self.entries.retain(|_, (_, owner, _)| owner != uid);
        if self.entries.capacity() > 4 * self.entries.len().max(16) {
            self.entries.shrink_to_fit();
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.entries.len()
    }
}

/// flowcontrol's token bucket: starts full with `burst` tokens, refills `qps` tokens a second.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    burst: f64,
    qps: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    pub fn new(burst: f64, qps: f64, now: Instant) -> Self {
        TokenBucket { burst, qps, tokens: burst, last: now }
    }

    /// Takes a token if one is available at `now`.
    pub fn try_accept(&mut self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.qps).min(self.burst);
        self.last = now.max(self.last);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

fn object_uid(e: &Event) -> &str {
    e.involved_object.uid.as_deref().unwrap_or_default()
}

fn source(e: &Event) -> (&str, &str) {
    let s = e.source.as_ref();
    (s.and_then(|s| s.component.as_deref()).unwrap_or_default(), s.and_then(|s| s.host.as_deref()).unwrap_or_default())
}

fn object_key(e: &Event) -> String {
    let (component, host) = source(e);
    let o = &e.involved_object;
    [
        component,
        host,
        o.kind.as_deref().unwrap_or_default(),
        o.namespace.as_deref().unwrap_or_default(),
        o.name.as_deref().unwrap_or_default(),
        o.uid.as_deref().unwrap_or_default(),
        o.api_version.as_deref().unwrap_or_default(),
    ]
    .join("")
}

/// client-go's `getSpamKey`: the source and the involved object.
pub fn spam_key(e: &Event) -> String {
    object_key(e)
}

/// client-go's `getEventKey`: source, object (with field path), type, reason and message.
pub fn event_key(e: &Event) -> String {
    let (component, host) = source(e);
    let o = &e.involved_object;
    [
        component,
        host,
        o.kind.as_deref().unwrap_or_default(),
        o.namespace.as_deref().unwrap_or_default(),
        o.name.as_deref().unwrap_or_default(),
        o.field_path.as_deref().unwrap_or_default(),
        o.uid.as_deref().unwrap_or_default(),
        o.api_version.as_deref().unwrap_or_default(),
        e.type_.as_deref().unwrap_or_default(),
        e.reason.as_deref().unwrap_or_default(),
        e.message.as_deref().unwrap_or_default(),
    ]
    .join("")
}

/// `EventAggregatorByReasonFunc`: (aggregate key without the message, the message).
fn aggregate_key(e: &Event) -> (String, String) {
    let key = [
        object_key(e).as_str(),
        e.type_.as_deref().unwrap_or_default(),
        e.reason.as_deref().unwrap_or_default(),
        e.reporting_component.as_deref().unwrap_or_default(),
        e.reporting_instance.as_deref().unwrap_or_default(),
    ]
    .join("");
    (key, e.message.clone().unwrap_or_default())
}

/// client-go's `EventSourceObjectSpamFilter`: a token bucket per source and object.
pub struct SpamFilter {
    burst: f64,
    qps: f64,
    buckets: Lru<TokenBucket>,
}

impl Default for SpamFilter {
    fn default() -> Self {
        Self::new(SPAM_BURST, SPAM_QPS)
    }
}

impl SpamFilter {
    pub fn new(burst: f64, qps: f64) -> Self {
        SpamFilter { burst, qps, buckets: Lru::new(LRU_CACHE_ENTRIES) }
    }

    /// True when the event must be dropped: its source has used up its budget for this object.
    pub fn filter(&mut self, e: &Event, now: Instant) -> bool {
        let key = spam_key(e);
        if let Some(bucket) = self.buckets.get_mut(&key) {
            return !bucket.try_accept(now);
        }
        let mut bucket = TokenBucket::new(self.burst, self.qps, now);
        let accepted = bucket.try_accept(now);
        self.buckets.insert(key, object_uid(e), bucket);
        !accepted
    }
}

struct AggregateRecord {
    messages: HashSet<String>,
    last: Instant,
}

struct EventLog {
    count: i32,
    first_timestamp: Option<Time>,
    name: String,
}

/// What the correlator decided for one event.
#[derive(Debug, Clone, PartialEq)]
pub struct Correlated {
    /// The event to write: a new one (`count` 1) or a repeat carrying the name, first timestamp and next count of
    /// the object already in the API.
    pub event: Event,
    /// For a repeat, the strategic merge patch of `count`, `lastTimestamp` and `message`.
    pub patch: Option<serde_json::Value>,
}

/// client-go's `EventCorrelator`: aggregation, then de-duplication into counts, then the spam filter.
pub struct EventCorrelator {
    spam: SpamFilter,
    aggregates: Lru<AggregateRecord>,
    logs: Lru<EventLog>,
}

impl Default for EventCorrelator {
    fn default() -> Self {
        Self::with_spam_filter(SpamFilter::default())
    }
}

impl EventCorrelator {
    pub fn with_spam_filter(spam: SpamFilter) -> Self {
        EventCorrelator { spam, aggregates: Lru::new(LRU_CACHE_ENTRIES), logs: Lru::new(LRU_CACHE_ENTRIES) }
    }

    /// `None` when the spam filter drops the event.
    pub fn correlate(&mut self, event: Event, now: Instant, now_time: jiff::Timestamp) -> Option<Correlated> {
        let (event, key) = self.aggregate(event, now, now_time);
        let observed = self.observe(event, key);
        if self.spam.filter(&observed.event, now) {
            return None;
        }
        Some(observed)
    }

    /// Remember what the server holds after a successful write, so that the next repeat patches that object.
    pub fn update_state(&mut self, written: &Event) {
        self.logs.insert(
            event_key(written),
            object_uid(written),
            EventLog {
                count: written.count.unwrap_or(1),
                first_timestamp: written.first_timestamp.clone(),
                name: written.metadata.name.clone().unwrap_or_default(),
            },
        );
    }

    fn aggregate(&mut self, event: Event, now: Instant, now_time: jiff::Timestamp) -> (Event, String) {
        let full_key = event_key(&event);
        let (agg_key, message) = aggregate_key(&event);
        let stale = self
            .aggregates
            .get_mut(&agg_key)
            .is_none_or(|r| now.saturating_duration_since(r.last) > AGGREGATE_INTERVAL);
        if stale {
            let record = AggregateRecord { messages: HashSet::new(), last: now };
            self.aggregates.insert(agg_key.clone(), object_uid(&event), record);
        }
        let Some(record) = self.aggregates.get_mut(&agg_key) else { return (event, full_key) };
        record.messages.insert(message);
        record.last = now;
        if record.messages.len() < AGGREGATE_MAX_EVENTS {
            return (event, full_key);
        }
        // Keep the set at its bound, as client-go pops one arbitrary message.
        if let Some(any) = record.messages.iter().next().cloned() {
            record.messages.remove(&any);
        }
        let mut combined = new_event_named(&event, now_time);
        combined.message = Some(format!("(combined from similar events): {}", event.message.unwrap_or_default()));
        combined.reporting_component = None;
        combined.reporting_instance = None;
        (combined, agg_key)
    }

    fn observe(&mut self, mut event: Event, key: String) -> Correlated {
        let mut patch = None;
        if let Some(last) = self.logs.get_mut(&key).filter(|l| l.count > 0) {
            event.metadata.name = Some(last.name.clone());
            event.first_timestamp = last.first_timestamp.clone();
            event.count = Some(last.count + 1);
            patch = Some(serde_json::json!({
                "count": last.count + 1,
                "lastTimestamp": event.last_timestamp,
                "message": event.message,
            }));
        }
        self.logs.insert(
            key,
            object_uid(&event),
            EventLog {
                count: event.count.unwrap_or(1),
                first_timestamp: event.first_timestamp.clone(),
                name: event.metadata.name.clone().unwrap_or_default(),
            },
        );
        Correlated { event, patch }
    }

    /// Forgets all that the caches keep about the object `uid` (a pod gone from the node).
    pub fn forget_object(&mut self, uid: &str) {
        self.spam.buckets.forget_object(uid);
        self.aggregates.forget_object(uid);
        self.logs.forget_object(uid);
    }

    /// Entries in the three caches.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.spam.buckets.len() + self.aggregates.len() + self.logs.len()
    }
}

/// What to do after a failed write, by client-go's `recordEvent` rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retry {
    /// The server answered with an error (`StatusError`): it would answer the same again, so the event is dropped.
    /// A 409 AlreadyExists means the event is there already. Throttling (429) and 503/504 never get here before
    /// kube's client has retried them after the server's Retry-After, as client-go's REST client does.
    Never,
    /// The server was not reached or did not answer: try again after the back-off.
    BackOff,
}

pub fn classify(e: &kube::Error) -> Retry {
    match e {
        kube::Error::Api(_) => Retry::Never,
        // Serialisation of our own request: it will fail the same way next time.
        kube::Error::SerdeError(_) | kube::Error::BuildRequest(_) => Retry::Never,
        _ => Retry::BackOff,
    }
}

/// The pause after the `tries`-th failed attempt: random in [0, SLEEP_DURATION) after the first, SLEEP_DURATION
/// after the others. `unit` is a random number in [0, 1).
pub fn back_off(tries: u32, unit: f64) -> Duration {
    if tries <= 1 {
        SLEEP_DURATION.mul_f64(unit.clamp(0.0, 1.0))
    } else {
        SLEEP_DURATION
    }
}

fn random_unit() -> f64 {
    let bits = RandomState::new().hash_one(Instant::now());
    (bits >> 11) as f64 / (1u64 << 53) as f64
}

/// Takes events off the recorders' channel into a queue of at most [`MAX_QUEUED_EVENTS`], then correlates and
/// writes them one at a time. The recorders never wait: when the writer falls behind (an API outage), new events
/// are dropped with a log line.
pub async fn run_event_poster(
    client: kube::Client,
    node_name: String,
    mut events: mpsc::UnboundedReceiver<EventMessage>,
) {
    let (queue, mut queued) = mpsc::channel::<EventMessage>(MAX_QUEUED_EVENTS);
    let intake = async move {
        let mut dropped: u64 = 0;
        while let Some(ev) = events.recv().await {
            if !offer(&queue, ev, &mut dropped) {
                return;
            }
        }
    };
    let writer = async move {
        let mut correlator = EventCorrelator::default();
        while let Some(message) = queued.recv().await {
            let now = jiff::Timestamp::now();
            let event = match message {
                EventMessage::Event(ev) => new_event(&ev, &node_name, now),
                EventMessage::Node(ev) => new_node_event(&ev, &node_name, now),
                EventMessage::PodGone(uid) => {
                    correlator.forget_object(&uid);
                    continue;
                }
            };
            let (object, reason) = (event.involved_object.name.clone(), event.reason.clone());
            let Some(correlated) = correlator.correlate(event, Instant::now(), now) else {
                tracing::debug!(object = ?object, reason = ?reason, "event dropped by the spam filter");
                continue;
            };
            write_event(&client, &mut correlator, correlated).await;
        }
    };
    tokio::join!(intake, writer);
}

/// Queues one event without waiting (client-go's `DropIfChannelFull`): a full queue drops it, logged at the first
/// drop and at each power of two after. False once the writer is gone.
fn offer(queue: &mpsc::Sender<EventMessage>, ev: EventMessage, dropped: &mut u64) -> bool {
    match queue.try_send(ev) {
        Ok(()) => {
            if *dropped > 0 {
                tracing::warn!(dropped = *dropped, "event queue has room again");
                *dropped = 0;
            }
            true
        }
        Err(mpsc::error::TrySendError::Full(message)) => {
            *dropped += 1;
            if dropped.is_power_of_two() {
                let (pod, reason) = match &message {
                    EventMessage::Event(ev) => (format!("{}/{}", ev.namespace, ev.name), ev.reason.to_string()),
                    EventMessage::Node(ev) => ("(node)".to_owned(), ev.reason.to_string()),
                    EventMessage::PodGone(uid) => (uid.clone(), "(pod gone)".to_owned()),
                };
                tracing::warn!(%pod, %reason, dropped = *dropped, "event queue full ({MAX_QUEUED_EVENTS}); dropping event");
            }
            true
        }
        Err(mpsc::error::TrySendError::Closed(_)) => false,
    }
}

/// One event through client-go's `recordToSink` loop.
async fn write_event(client: &kube::Client, correlator: &mut EventCorrelator, correlated: Correlated) {
    let Correlated { event, patch } = correlated;
    let namespace = event.metadata.namespace.clone().unwrap_or_default();
    let api: Api<Event> = Api::namespaced(client.clone(), &namespace);
    let pod = format!("{namespace}/{}", event.involved_object.name.as_deref().unwrap_or_default());
    let reason = event.reason.clone().unwrap_or_default();
    let mut tries = 0;
    loop {
        let result = send(&api, &event, patch.as_ref()).await;
        let err = match result {
            Ok(written) => {
                correlator.update_state(&written);
                return;
            }
            Err(e) => e,
        };
        match classify(&err) {
            Retry::Never => {
                if matches!(&err, kube::Error::Api(s) if s.code == 409) {
                    tracing::debug!(%pod, %reason, error = %err, "server rejected event (will not retry)");
                } else {
                    tracing::warn!(%pod, %reason, error = %err, "server rejected event (will not retry)");
                }
                return;
            }
            Retry::BackOff => {
                tries += 1;
                if tries >= MAX_TRIES_PER_EVENT {
                    tracing::warn!(%pod, %reason, error = %err, "unable to write event (retry limit exceeded)");
                    return;
                }
                tracing::info!(%pod, %reason, error = %err, "unable to write event (may retry after sleeping)");
                tokio::time::sleep(back_off(tries, random_unit())).await;
            }
        }
    }
}

/// A repeat is patched; one whose object is gone from the API (deleted, or expired by the server's event TTL) is
/// created again, as a new object carrying the count so far.
async fn send(api: &Api<Event>, event: &Event, patch: Option<&serde_json::Value>) -> Result<Event, kube::Error> {
    let name = event.metadata.name.clone().unwrap_or_default();
    if let Some(patch) = patch {
        match api.patch(&name, &PatchParams::default(), &Patch::Strategic(patch)).await {
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            other => return other,
        }
    }
    let mut fresh = event.clone();
    fresh.metadata.resource_version = None;
    api.create(&PostParams::default(), &fresh).await
}

fn new_event(ev: &PodEvent, node_name: &str, now: jiff::Timestamp) -> Event {
    let mut event = Event::default();
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
    event.reason = Some(ev.reason.to_string());
    event.message = Some(ev.message.clone());
    event.type_ = Some(ev.kind.as_str().to_owned());
    event.source = Some(EventSource { component: Some(COMPONENT.into()), host: Some(node_name.to_owned()) });
    event.reporting_component = Some(COMPONENT.into());
    event.reporting_instance = Some(node_name.to_owned());
    let mut event = new_event_named(&event, now);
    event.message = Some(ev.message.clone());
    event
}

/// An event about the node: client-go's recorder puts an object without a namespace (the node) in `default`, and
/// kubelet's `nodeRef` carries the node's name as its UID.
fn new_node_event(ev: &NodeEvent, node_name: &str, now: jiff::Timestamp) -> Event {
    let mut event = Event::default();
    event.metadata.namespace = Some(NODE_EVENT_NAMESPACE.into());
    event.involved_object = ObjectReference {
        kind: Some("Node".into()),
        name: Some(node_name.to_owned()),
        uid: Some(node_name.to_owned()),
        ..Default::default()
    };
    event.reason = Some(ev.reason.to_string());
    event.message = Some(ev.message.clone());
    event.type_ = Some(ev.kind.as_str().to_owned());
    event.source = Some(EventSource { component: Some(COMPONENT.into()), host: Some(node_name.to_owned()) });
    event.reporting_component = Some(COMPONENT.into());
    event.reporting_instance = Some(node_name.to_owned());
    new_event_named(&event, now)
}

/// A new event object about the same object: client-go names it `<object>.<unix nanos in hex>`, count 1.
fn new_event_named(template: &Event, now: jiff::Timestamp) -> Event {
    let mut event = template.clone();
    let object = template.involved_object.name.clone().unwrap_or_default();
    event.metadata.name = Some(format!("{object}.{:x}", now.as_nanosecond()));
    event.metadata.resource_version = None;
    event.count = Some(1);
    event.first_timestamp = Some(Time(now));
    event.last_timestamp = Some(Time(now));
    event.event_time = None;
    event
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kubetypes::events::EventType;

    fn pod_event(uid: &str, reason: &'static str, message: &str) -> PodEvent {
        PodEvent {
            namespace: "default".into(),
            name: format!("pod-{uid}"),
            uid: uid.into(),
            field_path: Some("spec.containers{app}".into()),
            kind: EventType::Warning,
            reason: reason.into(),
            message: message.into(),
        }
    }

    fn event(uid: &str, reason: &'static str, message: &str) -> Event {
        new_event(&pod_event(uid, reason, message), "node-1", jiff::Timestamp::now())
    }

    #[test]
    fn node_events_name_the_node_as_kubelets_node_ref_does() {
        let ev = NodeEvent {
            kind: EventType::Warning,
            reason: "ImageGCFailed".into(),
            message: "invalid capacity 0 on image filesystem".into(),
        };
        let e = new_node_event(&ev, "node-1", jiff::Timestamp::now());
        assert_eq!(e.metadata.namespace.as_deref(), Some("default"));
        let o = &e.involved_object;
        assert_eq!(
            (o.kind.as_deref(), o.name.as_deref(), o.uid.as_deref(), o.namespace.as_deref()),
            (Some("Node"), Some("node-1"), Some("node-1"), None)
        );
        assert_eq!((e.type_.as_deref(), e.reason.as_deref()), (Some("Warning"), Some("ImageGCFailed")));
        assert_eq!(e.message.as_deref(), Some("invalid capacity 0 on image filesystem"));
        assert!(e.metadata.name.as_deref().is_some_and(|n| n.starts_with("node-1.")));
        assert_eq!(e.count, Some(1));
    }

    #[test]
    fn spam_filter_allows_a_burst_of_25_per_object_then_one_every_5_minutes() {
        let t0 = Instant::now();
        let mut f = SpamFilter::default();
        let e = event("a", "BackOff", "m");
        for i in 0..25 {
            assert!(!f.filter(&e, t0), "event {i} of the burst was filtered");
        }
        assert!(f.filter(&e, t0), "the 26th event passed");
        // Another object has its own budget; so does the same object from another node.
        assert!(!f.filter(&event("b", "BackOff", "m"), t0));
        let mut other_host = e.clone();
        if let Some(s) = other_host.source.as_mut() {
            s.host = Some("node-2".into());
        }
        assert!(!f.filter(&other_host, t0));
        // The reason and message are not part of the key.
        assert!(f.filter(&event("a", "Started", "other"), t0));
        // One token every 300 s.
        assert!(f.filter(&e, t0 + Duration::from_secs(299)));
        assert!(!f.filter(&e, t0 + Duration::from_secs(301)));
        assert!(f.filter(&e, t0 + Duration::from_secs(302)));
        // The bucket refills up to the burst, not beyond.
        let later = t0 + Duration::from_secs(301 + 300 * 100);
        for i in 0..25 {
            assert!(!f.filter(&e, later), "event {i} after a long pause was filtered");
        }
        assert!(f.filter(&e, later));
    }

    #[test]
    fn spam_filter_forgets_the_least_recently_used_object_beyond_its_cache() {
        let t0 = Instant::now();
        let mut f = SpamFilter { burst: 1.0, qps: SPAM_QPS, buckets: Lru::new(3) };
        let (a, b, c, d) = (event("a", "R", "m"), event("b", "R", "m"), event("c", "R", "m"), event("d", "R", "m"));
        for e in [&a, &b, &c] {
            assert!(!f.filter(e, t0));
        }
        assert!(f.filter(&a, t0)); // a is now the most recently used
        assert!(!f.filter(&d, t0)); // evicts b
        assert_eq!(f.buckets.len(), 3);
        assert!(!f.filter(&b, t0), "b was forgotten, so it starts with a full bucket");
        assert!(f.filter(&a, t0), "a was kept");
    }

    #[test]
    fn repeats_are_counted_into_one_object_and_patched() {
        let t0 = Instant::now();
        let mut c = EventCorrelator::default();
        let first = c.correlate(event("a", "Started", "Started container app"), t0, jiff::Timestamp::now()).unwrap();
        assert_eq!(first.patch, None);
        assert_eq!(first.event.count, Some(1));
        let name = first.event.metadata.name.clone().unwrap();
        assert!(name.starts_with("pod-a."), "{name}");
        let second = c.correlate(event("a", "Started", "Started container app"), t0, jiff::Timestamp::now()).unwrap();
        assert_eq!(second.event.metadata.name.as_deref(), Some(name.as_str()));
        assert_eq!(second.event.count, Some(2));
        assert_eq!(second.event.first_timestamp, first.event.first_timestamp);
        let patch = second.patch.unwrap();
        assert_eq!(patch["count"], 2);
        assert_eq!(patch["message"], "Started container app");
        assert!(patch["lastTimestamp"].is_string());
        // Another message is another event.
        let other = c.correlate(event("a", "Started", "something else"), t0, jiff::Timestamp::now()).unwrap();
        assert_eq!(other.patch, None);
        assert_ne!(other.event.metadata.name.as_deref(), Some(name.as_str()));
    }

    #[test]
    fn ten_distinct_messages_for_one_reason_are_combined() {
        let t0 = Instant::now();
        let mut c = EventCorrelator::default();
        for i in 0..9 {
            let r = c.correlate(event("a", "Failed", &format!("error {i}")), t0, jiff::Timestamp::now()).unwrap();
            assert_eq!(r.event.message.as_deref(), Some(format!("error {i}").as_str()));
        }
        let tenth = c.correlate(event("a", "Failed", "error 9"), t0, jiff::Timestamp::now()).unwrap();
        assert_eq!(tenth.event.message.as_deref(), Some("(combined from similar events): error 9"));
        assert_eq!(tenth.patch, None);
        let eleventh = c.correlate(event("a", "Failed", "error 10"), t0, jiff::Timestamp::now()).unwrap();
        assert_eq!(eleventh.event.metadata.name, tenth.event.metadata.name);
        assert_eq!(eleventh.event.count, Some(2));
        assert_eq!(eleventh.patch.unwrap()["message"], "(combined from similar events): error 10");
        // Ten minutes later the aggregation starts over.
        let later = t0 + AGGREGATE_INTERVAL + Duration::from_secs(1);
        let r = c.correlate(event("a", "Failed", "error 11"), later, jiff::Timestamp::now()).unwrap();
        assert_eq!(r.event.message.as_deref(), Some("error 11"));
    }

    #[test]
    fn the_spam_filter_counts_repeats_too() {
        let t0 = Instant::now();
        let mut c = EventCorrelator::default();
        let passed = (0..40)
            .filter(|_| c.correlate(event("a", "BackOff", "Back-off"), t0, jiff::Timestamp::now()).is_some())
            .count();
        assert_eq!(passed, 25);
    }

    #[test]
    fn update_state_takes_the_servers_name_and_count() {
        let t0 = Instant::now();
        let mut c = EventCorrelator::default();
        let first = c.correlate(event("a", "Pulled", "m"), t0, jiff::Timestamp::now()).unwrap();
        let mut written = first.event.clone();
        written.metadata.name = Some("server-name".into());
        written.count = Some(7);
        c.update_state(&written);
        let next = c.correlate(event("a", "Pulled", "m"), t0, jiff::Timestamp::now()).unwrap();
        assert_eq!(next.event.metadata.name.as_deref(), Some("server-name"));
        assert_eq!(next.event.count, Some(8));
    }

    fn api_error(code: u16) -> kube::Error {
        let s = kube::core::Status::failure("no", "Reason").with_code(code);
        kube::Error::Api(Box::new(s))
    }

    #[test]
    fn rejections_are_not_retried_and_transport_errors_back_off() {
        for code in [400, 403, 404, 409, 410, 422, 429, 500, 503] {
            assert_eq!(classify(&api_error(code)), Retry::Never, "HTTP {code}");
        }
        let io = kube::Error::Service(Box::new(std::io::Error::other("connection refused")));
        assert_eq!(classify(&io), Retry::BackOff);
    }

    #[test]
    fn a_full_queue_drops_events_instead_of_waiting() {
        let (tx, mut rx) = mpsc::channel(MAX_QUEUED_EVENTS);
        let mut dropped = 0;
        for i in 0..MAX_QUEUED_EVENTS + 5 {
            assert!(offer(&tx, EventMessage::Event(pod_event(&i.to_string(), "Started", "m")), &mut dropped));
        }
        assert_eq!(dropped, 5);
        // The oldest events are kept, in order.
        assert_eq!(rx.try_recv(), Ok(EventMessage::Event(pod_event("0", "Started", "m"))));
        assert!(offer(&tx, EventMessage::Event(pod_event("late", "Started", "m")), &mut dropped));
        assert_eq!(dropped, 0, "room again resets the count");
        drop(rx);
        let late = EventMessage::Event(pod_event("x", "Started", "m"));
        assert!(!offer(&tx, late, &mut dropped), "a closed queue ends the intake");
    }

    #[test]
    fn the_caches_keep_nothing_of_a_pod_once_it_is_gone() {
        let mut c = EventCorrelator::default();
        let (t0, now) = (Instant::now(), jiff::Timestamp::now());
        for uid in ["gone", "stays"] {
            for (reason, message) in [("Pulled", "image present"), ("Created", "created"), ("Started", "started")] {
                let correlated = c.correlate(event(uid, reason, message), t0, now).expect("not filtered");
                c.update_state(&correlated.event);
            }
        }
        let both = c.len();
        c.forget_object("gone");
        assert_eq!(c.len(), both / 2, "the other pod's entries stay");
        c.forget_object("stays");
        assert_eq!(c.len(), 0, "nothing is left once both pods are gone");
        // A repeat after the pod was forgotten starts afresh instead of patching.
        let again = c.correlate(event("stays", "Started", "started"), t0, now).expect("not filtered");
        assert_eq!((again.event.count, again.patch), (Some(1), None));
    }

    #[test]
    fn the_maps_give_their_room_back_when_emptied() {
        let mut lru = Lru::new(LRU_CACHE_ENTRIES);
        for i in 0..LRU_CACHE_ENTRIES {
            lru.insert(i.to_string(), "gone", ());
        }
        let full = lru.entries.capacity();
        lru.forget_object("gone");
        assert_eq!(lru.len(), 0);
        assert!(lru.entries.capacity() < full / 4, "capacity {} of {full} kept", lru.entries.capacity());
    }

    #[test]
    fn back_off_randomises_the_first_pause_only() {
        assert_eq!(back_off(1, 0.0), Duration::ZERO);
        assert_eq!(back_off(1, 0.5), Duration::from_secs(5));
        assert!(back_off(1, 0.999_999) < SLEEP_DURATION);
        for tries in 2..MAX_TRIES_PER_EVENT {
            assert_eq!(back_off(tries, 0.1), SLEEP_DURATION);
        }
        let total: Duration = (1..MAX_TRIES_PER_EVENT).map(|t| back_off(t, 1.0)).sum();
        assert!(total <= SLEEP_DURATION * MAX_TRIES_PER_EVENT, "{total:?}");
        for _ in 0..100 {
            let u = random_unit();
            assert!((0.0..1.0).contains(&u), "{u}");
        }
    }
}
