//! PATCH bodies: JSON patch (RFC 6902), JSON merge patch (RFC 7386) and strategic merge
//! patch (the subset of directives clients generate; list strategies from
//! [`super::resources::list_strategy`]).

use serde_json::{Map, Value};

use super::resources::{list_strategy, ListStrategy};
use super::status::{ApiError, ApiResult};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PatchType {
    Json,
    Merge,
    Strategic,
}

impl PatchType {
    pub fn from_content_type(ct: &str) -> ApiResult<Self> {
        let base = ct.split(';').next().unwrap_or("").trim();
        match base {
            "application/json-patch+json" => Ok(PatchType::Json),
            "application/merge-patch+json" => Ok(PatchType::Merge),
            "application/strategic-merge-patch+json" => Ok(PatchType::Strategic),
            other => Err(ApiError::unsupported_media_type(other)),
        }
    }
}

pub(crate) fn apply(kind: &str, ty: PatchType, original: &Value, patch: &Value) -> ApiResult<Value> {
    let mut doc = original.clone();
    match ty {
        PatchType::Json => {
            let p: json_patch::Patch = serde_json::from_value(patch.clone())
                .map_err(|e| ApiError::bad_request(format!("error decoding patch: {e}")))?;
            json_patch::patch(&mut doc, &p).map_err(|e| ApiError::new(422, "Invalid", format!("{e}")))?;
            Ok(doc)
        }
        PatchType::Merge => {
            if !patch.is_object() {
                return Err(ApiError::bad_request("json: cannot unmarshal patch into an object"));
            }
            json_patch::merge(&mut doc, patch);
            Ok(doc)
        }
        PatchType::Strategic => {
            let Value::Object(p) = patch else {
                return Err(ApiError::bad_request("json: cannot unmarshal patch into an object"));
            };
            let Value::Object(o) = original else {
                return Err(ApiError::internal("stored object is not a JSON object"));
            };
            let mut path = Vec::new();
            match merge_map(kind, o, p, &mut path).map_err(ApiError::bad_request)? {
                Some(m) => Ok(Value::Object(m)),
                None => Ok(Value::Object(Map::new())),
            }
        }
    }
}

const DIRECTIVE: &str = "$patch";
const ORDER: &str = "$setElementOrder/";
const DELETE_PRIMITIVE: &str = "$deleteFromPrimitiveList/";
const RETAIN: &str = "$retainKeys";

/// Strategic merge of two maps; `None` means the map is deleted (`$patch: delete`).
fn merge_map(
    kind: &str,
    original: &Map<String, Value>,
    patch: &Map<String, Value>,
    path: &mut Vec<String>,
) -> Result<Option<Map<String, Value>>, String> {
    match patch.get(DIRECTIVE).and_then(Value::as_str) {
        Some("delete") => return Ok(None),
        Some("replace") => {
            let mut m = patch.clone();
            m.remove(DIRECTIVE);
            return Ok(Some(m));
        }
        Some("merge") | None => {}
        Some(other) => return Err(format!("unknown patch type: {other}")),
    }
    let mut out = original.clone();
    let mut orders: Vec<(String, Vec<Value>)> = Vec::new();
    for (key, pv) in patch {
        if key == DIRECTIVE {
            continue;
        }
        if let Some(field) = key.strip_prefix(ORDER) {
            orders.push((field.to_string(), pv.as_array().cloned().unwrap_or_default()));
            continue;
        }
        if let Some(field) = key.strip_prefix(DELETE_PRIMITIVE) {
            if let (Some(Value::Array(list)), Some(del)) = (out.get_mut(field), pv.as_array()) {
                list.retain(|v| !del.contains(v));
            }
            continue;
        }
        if key == RETAIN {
            continue;
        }
        if pv.is_null() {
            out.remove(key);
            continue;
        }
        path.push(key.clone());
        let merged = match (out.get(key), pv) {
            (Some(Value::Object(ov)), Value::Object(pm)) => merge_map(kind, ov, pm, path)?.map(Value::Object),
            (_, Value::Object(pm)) => merge_map(kind, &Map::new(), pm, path)?.map(Value::Object),
            (ov, Value::Array(pl)) => {
                let empty = Vec::new();
                let ol = ov.and_then(Value::as_array).unwrap_or(&empty);
                Some(Value::Array(merge_list(kind, ol, pl, path)?))
            }
            (_, v) => Some(v.clone()),
        };
        path.pop();
        match merged {
            Some(v) => {
                out.insert(key.clone(), v);
            }
            None => {
                out.remove(key);
            }
        }
    }
    if let Some(Value::Array(keep)) = patch.get(RETAIN) {
        let keep: Vec<&str> = keep.iter().filter_map(Value::as_str).collect();
        out.retain(|k, _| keep.contains(&k.as_str()));
    }
    for (field, order) in orders {
        path.push(field.clone());
        let strategy = list_strategy(kind, path);
        path.pop();
        if let Some(Value::Array(list)) = out.get_mut(&field) {
            reorder(list, &order, strategy);
        }
    }
    Ok(Some(out))
}

fn merge_list(kind: &str, original: &[Value], patch: &[Value], path: &mut Vec<String>) -> Result<Vec<Value>, String> {
    let replace_directive = patch.iter().any(|v| {
        v.get(DIRECTIVE).and_then(Value::as_str) == Some("replace") && v.as_object().is_some_and(|m| m.len() == 1)
    });
    if replace_directive {
        return Ok(patch
            .iter()
            .filter(|v| !(v.get(DIRECTIVE).is_some() && v.as_object().is_some_and(|m| m.len() == 1)))
            .cloned()
            .collect());
    }
    match list_strategy(kind, path) {
        ListStrategy::Replace => Ok(patch.to_vec()),
        ListStrategy::MergePrimitive => {
            let mut out = original.to_vec();
            for v in patch {
                if !out.contains(v) {
                    out.push(v.clone());
                }
            }
            Ok(out)
        }
        ListStrategy::MergeByKey(mk) => {
            let mut out = original.to_vec();
            for item in patch {
                let Some(pm) = item.as_object() else {
                    return Err(format!("list items of {} must be objects", path.join(".")));
                };
                let Some(key) = pm.get(mk) else {
                    return Err(format!("map: {pm:?} does not contain declared merge key: {mk}"));
                };
                let pos = out.iter().position(|o| o.get(mk) == Some(key));
                if pm.get(DIRECTIVE).and_then(Value::as_str) == Some("delete") {
                    out.retain(|o| o.get(mk) != Some(key));
                    continue;
                }
                match pos {
                    Some(i) => {
                        let merged = match &out[i] {
                            Value::Object(om) => merge_map(kind, om, pm, path)?,
                            _ => Some(pm.clone()),
                        };
                        match merged {
                            Some(m) => out[i] = Value::Object(m),
                            None => {
                                out.remove(i);
                            }
                        }
                    }
                    None => {
                        if let Some(m) = merge_map(kind, &Map::new(), pm, path)? {
                            out.push(Value::Object(m));
                        }
                    }
                }
            }
            Ok(out)
        }
    }
}

/// `$setElementOrder`: items named in `order` come first, in that order; the rest keep
/// their relative order after them.
fn reorder(list: &mut Vec<Value>, order: &[Value], strategy: ListStrategy) {
    let key_of = |v: &Value| -> Option<Value> {
        match strategy {
            ListStrategy::MergeByKey(k) => v.get(k).cloned(),
            _ => Some(v.clone()),
        }
    };
    let wanted: Vec<Value> = order
        .iter()
        .map(|o| match strategy {
            ListStrategy::MergeByKey(k) => o.get(k).cloned().unwrap_or(Value::Null),
            _ => o.clone(),
        })
        .collect();
    let mut items: Vec<Value> = std::mem::take(list);
    let mut sorted = Vec::with_capacity(items.len());
    for w in &wanted {
        if let Some(i) = items.iter().position(|v| key_of(v).as_ref() == Some(w)) {
            sorted.push(items.remove(i));
        }
    }
    sorted.extend(items);
    *list = sorted;
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn strategic_merges_conditions_by_type_and_replaces_container_statuses() {
        let orig = json!({"status": {
            "conditions": [{"type": "Ready", "status": "False"}, {"type": "PodScheduled", "status": "True"}],
            "containerStatuses": [{"name": "a", "ready": false}, {"name": "b", "ready": false}],
        }});
        let patch = json!({"status": {
            "$setElementOrder/conditions": [{"type": "PodScheduled"}, {"type": "Ready"}],
            "conditions": [{"type": "Ready", "status": "True"}],
            "containerStatuses": [{"name": "a", "ready": true}],
        }});
        let out = apply("Pod", PatchType::Strategic, &orig, &patch).unwrap();
        assert_eq!(
            out["status"]["conditions"],
            json!([{"type": "PodScheduled", "status": "True"}, {"type": "Ready", "status": "True"}])
        );
        assert_eq!(out["status"]["containerStatuses"], json!([{"name": "a", "ready": true}]));
    }

    #[test]
    fn strategic_delete_directive_and_null() {
        let orig = json!({"metadata": {"labels": {"a": "1", "b": "2"}, "finalizers": ["x"]},
            "status": {"addresses": [{"type": "InternalIP", "address": "10.0.0.1"}, {"type": "Hostname", "address": "h"}]}});
        let patch = json!({"metadata": {"labels": {"a": null}, "finalizers": ["y"]},
            "status": {"addresses": [{"type": "Hostname", "$patch": "delete"}]}});
        let out = apply("Node", PatchType::Strategic, &orig, &patch).unwrap();
        assert_eq!(out["metadata"]["labels"], json!({"b": "2"}));
        assert_eq!(out["metadata"]["finalizers"], json!(["x", "y"]));
        assert_eq!(out["status"]["addresses"], json!([{"type": "InternalIP", "address": "10.0.0.1"}]));
    }
}
