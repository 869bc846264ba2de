//! Two-way strategic merge patches, as apimachinery's `strategicpatch.CreateTwoWayMergePatch` builds them for the
//! status kubelet writes (`podutil.PatchPodStatus`, `nodeutil.PatchNodeStatus`): maps are diffed field by field (a
//! removed field becomes `null`), lists with a patch merge key are diffed element by element (changed or added
//! elements, `$patch: delete` for removed ones, `$setElementOrder/<list>` with the new order), and every other list
//! is replaced whole when it changed.

use serde_json::{Map, Value};

/// The `$patch` directive key and the prefix of the parallel order list.
pub const DIRECTIVE: &str = "$patch";
pub const SET_ELEMENT_ORDER: &str = "$setElementOrder/";

/// The patch merge key of the list at a path (field names from the object's root), or `None` for lists that are
/// replaced whole (no `patchStrategy:"merge"` on the Go field).
pub type MergeKeys = fn(&[&str]) -> Option<&'static str>;

/// Patch merge keys of the Pod fields kubelet writes (k8s.io/api/core/v1 `patchMergeKey` tags). Container statuses
/// carry no patch strategy: they are replaced whole when any of them changed.
pub fn pod_merge_keys(path: &[&str]) -> Option<&'static str> {
    match path {
        ["status", "conditions"] => Some("type"),
        ["status", "podIPs"] | ["status", "hostIPs"] => Some("ip"),
        ["status", "resourceClaimStatuses"] => Some("name"),
        _ => None,
    }
}

/// Patch merge keys of the Node status fields.
pub fn node_merge_keys(path: &[&str]) -> Option<&'static str> {
    match path {
        ["status", "conditions"] | ["status", "addresses"] => Some("type"),
        ["status", "volumesAttached"] => Some("name"),
        _ => None,
    }
}

/// Go's `omitempty` drops empty strings, lists and maps, and a decoded zero struct comes back as `{}`: neither
/// side of a diff may see a difference the server cannot store.
pub fn normalize(v: &Value) -> Option<Value> {
    match v {
        Value::Null => None,
        Value::String(s) if s.is_empty() => None,
        Value::Array(a) if a.is_empty() => None,
        // An element keeps its place in its list even when nothing is left of it.
        Value::Array(a) => Some(Value::Array(
            a.iter()
                .map(|e| {
                    normalize(e).unwrap_or_else(|| if e.is_object() { Value::Object(Map::new()) } else { Value::Null })
                })
                .collect(),
        )),
        Value::Object(m) => {
            let out: Map<String, Value> = m.iter().filter_map(|(k, v)| normalize(v).map(|v| (k.clone(), v))).collect();
            (!out.is_empty()).then_some(Value::Object(out))
        }
        other => Some(other.clone()),
    }
}

/// The patch that turns `original` into `modified`; empty when they are equal.
pub fn two_way(original: &Map<String, Value>, modified: &Map<String, Value>, keys: MergeKeys) -> Map<String, Value> {
    let mut path = Vec::new();
    diff_maps(original, modified, keys, &mut path)
}

fn diff_maps(
    original: &Map<String, Value>,
    modified: &Map<String, Value>,
    keys: MergeKeys,
    path: &mut Vec<String>,
) -> Map<String, Value> {
    let mut patch = Map::new();
    for (key, m) in modified {
        let Some(o) = original.get(key) else {
            patch.insert(key.clone(), m.clone());
            continue;
        };
        path.push(key.clone());
        match (o, m) {
            (Value::Object(om), Value::Object(mm)) => {
                let sub = diff_maps(om, mm, keys, path);
                if !sub.is_empty() {
                    patch.insert(key.clone(), Value::Object(sub));
                }
            }
            (Value::Array(ol), Value::Array(ml)) => match keys(&path.iter().map(String::as_str).collect::<Vec<_>>()) {
                Some(merge_key) => diff_merging_list(key, ol, ml, merge_key, keys, path, &mut patch),
                None => {
                    if ol != ml {
                        patch.insert(key.clone(), m.clone());
                    }
                }
            },
            _ => {
                if o != m {
                    patch.insert(key.clone(), m.clone());
                }
            }
        }
        path.pop();
    }
    for key in original.keys() {
        if !modified.contains_key(key) {
            patch.insert(key.clone(), Value::Null);
        }
    }
    patch
}

fn key_string(v: &Value, merge_key: &str) -> String {
    match v.get(merge_key) {
        Some(Value::String(s)) => s.clone(),
        Some(other) => other.to_string(),
        None => String::new(),
    }
}

/// A list with a patch merge key: changed elements carry only their changed fields plus the key, added ones come
/// whole, removed ones as `{key, $patch: delete}` at the end; `$setElementOrder/<list>` lists the keys in the new
/// order whenever anything changed or the order did.
fn diff_merging_list(
    field: &str,
    original: &[Value],
    modified: &[Value],
    merge_key: &str,
    keys: MergeKeys,
    path: &mut Vec<String>,
    patch: &mut Map<String, Value>,
) {
    let empty = Map::new();
    // The n-th element with a key pairs with the n-th element with that key on the other side, as apimachinery's
    // walk over both lists sorted by key pairs them.
    let nth = |list: &'_ [Value], key: &str, n: usize| {
        list.iter().filter(|e| key_string(e, merge_key) == key).nth(n).cloned()
    };
    let occurrence = |list: &[Value], i: usize| {
        let key = key_string(&list[i], merge_key);
        let n = list[..i].iter().filter(|e| key_string(e, merge_key) == key).count();
        (key, n)
    };
    let mut changes = Vec::new();
    for (i, m) in modified.iter().enumerate() {
        let (k, n) = occurrence(modified, i);
        let mm = m.as_object().unwrap_or(&empty);
        match nth(original, &k, n) {
            Some(o) => {
                let mut sub = diff_maps(o.as_object().unwrap_or(&empty), mm, keys, path);
                if !sub.is_empty() {
                    sub.insert(merge_key.to_owned(), m.get(merge_key).cloned().unwrap_or(Value::Null));
                    changes.push(Value::Object(sub));
                }
            }
            None => changes.push(m.clone()),
        }
    }
    let mut deletions = Vec::new();
    for (i, o) in original.iter().enumerate() {
        let (k, n) = occurrence(original, i);
        if nth(modified, &k, n).is_none() {
            let mut d = Map::new();
            d.insert(merge_key.to_owned(), o.get(merge_key).cloned().unwrap_or(Value::Null));
            d.insert(DIRECTIVE.to_owned(), Value::String("delete".into()));
            deletions.push(Value::Object(d));
        }
    }
    changes.extend(deletions);
    let common_original: Vec<String> = original
        .iter()
        .map(|o| key_string(o, merge_key))
        .filter(|k| modified.iter().any(|m| key_string(m, merge_key) == *k))
        .collect();
    let common_modified: Vec<String> = modified
        .iter()
        .map(|m| key_string(m, merge_key))
        .filter(|k| original.iter().any(|o| key_string(o, merge_key) == *k))
        .collect();
    let order_same = common_original == common_modified;
    if changes.is_empty() && order_same {
        return;
    }
    if !changes.is_empty() {
        patch.insert(field.to_owned(), Value::Array(changes));
    }
    let order = modified
        .iter()
        .map(|m| {
            let mut e = Map::new();
            e.insert(merge_key.to_owned(), m.get(merge_key).cloned().unwrap_or(Value::Null));
            Value::Object(e)
        })
        .collect();
    patch.insert(format!("{SET_ELEMENT_ORDER}{field}"), Value::Array(order));
}

/// A list patch that replaces the list on the server with exactly `items` (the `$patch: replace` list directive).
pub fn replace_list(items: Vec<Value>) -> Value {
    let mut items = items;
    let mut directive = Map::new();
    directive.insert(DIRECTIVE.to_owned(), Value::String("replace".into()));
    items.push(Value::Object(directive));
    Value::Array(items)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn obj(v: Value) -> Map<String, Value> {
        v.as_object().cloned().unwrap_or_default()
    }

    fn pod_patch(old: Value, new: Value) -> Value {
        Value::Object(two_way(&obj(old), &obj(new), pod_merge_keys))
    }

    #[test]
    fn equal_objects_give_an_empty_patch() {
        let s = json!({"status": {"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]}});
        assert_eq!(pod_patch(s.clone(), s), json!({}));
    }

    #[test]
    fn removed_fields_become_null_and_changed_scalars_are_set() {
        let p = pod_patch(
            json!({"status": {"phase": "Pending", "message": "waiting", "podIP": "10.0.0.2"}}),
            json!({"status": {"phase": "Running", "podIP": "10.0.0.2"}}),
        );
        assert_eq!(p, json!({"status": {"phase": "Running", "message": null}}));
    }

    #[test]
    fn a_changed_condition_is_a_by_type_entry_with_the_element_order() {
        let p = pod_patch(
            json!({"status": {"conditions": [
                {"type": "Ready", "status": "False", "reason": "ContainersNotReady"},
                {"type": "PodScheduled", "status": "True"},
            ]}}),
            json!({"status": {"conditions": [
                {"type": "Ready", "status": "True"},
                {"type": "PodScheduled", "status": "True"},
            ]}}),
        );
        assert_eq!(
            p,
            json!({"status": {
                "conditions": [{"type": "Ready", "status": "True", "reason": null}],
                "$setElementOrder/conditions": [{"type": "Ready"}, {"type": "PodScheduled"}],
            }})
        );
    }

    #[test]
    fn removed_keyed_elements_get_a_delete_directive_and_added_ones_come_whole() {
        let p = pod_patch(
            json!({"status": {"podIPs": [{"ip": "10.0.0.2"}]}}),
            json!({"status": {"podIPs": [{"ip": "10.0.0.3"}]}}),
        );
        assert_eq!(
            p,
            json!({"status": {
                "podIPs": [{"ip": "10.0.0.3"}, {"ip": "10.0.0.2", "$patch": "delete"}],
                "$setElementOrder/podIPs": [{"ip": "10.0.0.3"}],
            }})
        );
    }

    #[test]
    fn lists_without_a_merge_key_are_replaced_whole() {
        let old = json!({"status": {"containerStatuses": [
            {"name": "a", "ready": false}, {"name": "b", "ready": true},
        ]}});
        let new = json!({"status": {"containerStatuses": [
            {"name": "a", "ready": true}, {"name": "b", "ready": true},
        ]}});
        assert_eq!(pod_patch(old, new.clone()), new);
    }

    #[test]
    fn a_reordered_merging_list_sends_only_the_order() {
        let p = pod_patch(
            json!({"status": {"conditions": [{"type": "A", "status": "True"}, {"type": "B", "status": "True"}]}}),
            json!({"status": {"conditions": [{"type": "B", "status": "True"}, {"type": "A", "status": "True"}]}}),
        );
        assert_eq!(p, json!({"status": {"$setElementOrder/conditions": [{"type": "B"}, {"type": "A"}]}}));
    }

    #[test]
    fn elements_sharing_a_key_pair_up_in_order() {
        let old = json!({"status": {"addresses": [
            {"type": "InternalIP", "address": "192.0.2.2"}, {"type": "InternalIP", "address": "fd00::2"},
        ]}});
        let p = two_way(&obj(old.clone()), &obj(old), node_merge_keys);
        assert!(p.is_empty(), "{p:?}");
    }

    #[test]
    fn normalize_drops_what_go_omits() {
        let v = json!({"a": "", "b": [], "c": {}, "d": {"e": null}, "f": false, "g": 0, "h": [{"x": ""}]});
        assert_eq!(normalize(&v), Some(json!({"f": false, "g": 0, "h": [{}]})));
    }

    #[test]
    fn replace_list_appends_the_directive() {
        assert_eq!(
            replace_list(vec![json!({"type": "InternalIP", "address": "192.0.2.2"})]),
            json!([{"type": "InternalIP", "address": "192.0.2.2"}, {"$patch": "replace"}])
        );
    }
}
