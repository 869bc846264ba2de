//! Object storage with one global resourceVersion counter and a bounded per-resource
//! history of changes for watches.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;

use serde_json::{json, Value};

use super::resources::ResourceDef;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum EventType {
    Added,
    Modified,
    Deleted,
}

/// One committed write, as remembered for watches.
#[derive(Debug)]
pub(crate) struct Change {
    pub rv: u64,
    pub ty: EventType,
    /// The object after the write (for deletes: the deleted object, carrying the delete's RV).
    pub object: Value,
    /// The object before the write (`None` for creates).
    pub prev: Option<Value>,
}

#[derive(Debug, Default)]
struct History {
    changes: VecDeque<Arc<Change>>,
    /// Highest RV of a change dropped from the window: watches from an older RV get 410.
    evicted_rv: u64,
}

type Key = (String, String);

#[derive(Debug)]
pub(crate) struct Store {
    pub rv: u64,
    objects: HashMap<&'static str, BTreeMap<Key, Value>>,
    history: HashMap<&'static str, History>,
    history_limit: usize,
}

pub(crate) fn meta_str<'a>(obj: &'a Value, field: &str) -> &'a str {
    obj.get("metadata").and_then(|m| m.get(field)).and_then(Value::as_str).unwrap_or("")
}

fn key_of(obj: &Value) -> Key {
    (meta_str(obj, "namespace").to_string(), meta_str(obj, "name").to_string())
}

impl Store {
    pub fn new(history_limit: usize) -> Self {
        Store { rv: 1, objects: HashMap::new(), history: HashMap::new(), history_limit: history_limit.max(1) }
    }

    pub fn set_history_limit(&mut self, limit: usize) {
        self.history_limit = limit.max(1);
        for h in self.history.values_mut() {
            while h.changes.len() > self.history_limit {
                let c = h.changes.pop_front().expect("non-empty");
                h.evicted_rv = c.rv;
            }
        }
    }

    pub fn get(&self, def: &ResourceDef, ns: &str, name: &str) -> Option<&Value> {
        self.objects.get(def.store)?.get(&(ns.to_string(), name.to_string()))
    }

    /// Objects of a resource, optionally within one namespace, in (namespace, name) order.
    pub fn list<'a>(&'a self, def: &ResourceDef, ns: Option<&'a str>) -> impl Iterator<Item = &'a Value> + 'a {
        self.objects
            .get(def.store)
            .into_iter()
            .flat_map(|m| m.iter())
            .filter(move |((ons, _), _)| ns.is_none_or(|n| n == ons))
            .map(|(_, v)| v)
    }

    /// Commit a write: bump the global RV, stamp it on the object, store (or remove, for
    /// `Deleted`) and remember the change. Returns the object as stored.
    pub fn commit(&mut self, def: &ResourceDef, ty: EventType, mut obj: Value, prev: Option<Value>) -> Value {
        self.rv += 1;
        let rv = self.rv;
        if obj.get("metadata").is_none() {
            obj["metadata"] = json!({});
        }
        obj["metadata"]["resourceVersion"] = json!(rv.to_string());
        let key = key_of(&obj);
        let objects = self.objects.entry(def.store).or_default();
        match ty {
            EventType::Deleted => {
                objects.remove(&key);
            }
            _ => {
                objects.insert(key, obj.clone());
            }
        }
        let h = self.history.entry(def.store).or_default();
        h.changes.push_back(Arc::new(Change { rv, ty, object: obj.clone(), prev }));
        while h.changes.len() > self.history_limit {
            let c = h.changes.pop_front().expect("non-empty");
            h.evicted_rv = c.rv;
        }
        obj
    }

    /// Changes of a resource after `rv`; `Err(oldest)` if some were already evicted.
    pub fn changes_since(&self, def: &ResourceDef, rv: u64) -> Result<Vec<Arc<Change>>, u64> {
        let Some(h) = self.history.get(def.store) else {
            return Ok(Vec::new());
        };
        if rv < h.evicted_rv {
            return Err(h.evicted_rv);
        }
        Ok(h.changes.iter().filter(|c| c.rv > rv).cloned().collect())
    }
}
