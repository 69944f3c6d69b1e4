//! Strategic merge patches for built-in kinds, without the Go types' schemas: lists of
//! objects are merged by a well-known key (`name`, `containerPort`, `mountPath`, `type`,
//! `uid`, `ip`) when every element has it, other lists are replaced, and kubectl's
//! directives (`$patch`, `$setElementOrder/…`, `$retainKeys`, `$deleteFromPrimitiveList/…`)
//! are understood rather than stored.

use serde_json::{Map, Value};

const MERGE_KEYS: &[&str] = &["name", "containerPort", "mountPath", "type", "uid", "ip"];

/// Applies `patch` to `target`.
pub fn merge(target: &mut Value, patch: &Value) {
    let Some(fields) = patch.as_object() else {
        *target = patch.clone();
        return;
    };
    if fields.get("$patch").and_then(Value::as_str) == Some("replace") {
        *target = Value::Object(without_directives(fields));
        return;
    }
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    let Some(object) = target.as_object_mut() else {
        return;
    };
    for (key, value) in fields {
        if let Some(list) = key.strip_prefix("$deleteFromPrimitiveList/") {
            if let (Some(Value::Array(items)), Some(gone)) =
                (object.get_mut(list), value.as_array())
            {
                items.retain(|item| !gone.contains(item));
            }
            continue;
        }
        if key.starts_with('$') {
            continue;
        }
        match value {
            Value::Null => {
                object.remove(key);
            }
            Value::Object(child)
                if child.get("$patch").and_then(Value::as_str) == Some("delete") =>
            {
                object.remove(key);
            }
            Value::Object(_) => merge(object.entry(key.clone()).or_insert(Value::Null), value),
            Value::Array(items) => {
                let merged = match (object.get_mut(key), merge_key(items)) {
                    (Some(Value::Array(current)), Some(merge_key)) => {
                        merge_list(current, items, merge_key);
                        true
                    }
                    _ => false,
                };
                if !merged {
                    let items = items
                        .iter()
                        .filter(|i| i.get("$patch").is_none())
                        .map(|i| match i.as_object() {
                            Some(fields) => Value::Object(without_directives(fields)),
                            None => i.clone(),
                        })
                        .collect();
                    object.insert(key.clone(), Value::Array(items));
                }
            }
            other => {
                object.insert(key.clone(), other.clone());
            }
        }
    }
}

fn without_directives(fields: &Map<String, Value>) -> Map<String, Value> {
    fields
        .iter()
        .filter(|(k, _)| !k.starts_with('$'))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

/// The key a list of objects merges by, if every element has one of the well-known keys.
fn merge_key(items: &[Value]) -> Option<&'static str> {
    if items.is_empty() || !items.iter().all(Value::is_object) {
        return None;
    }
    MERGE_KEYS
        .iter()
        .copied()
        .find(|key| items.iter().all(|i| i.get(*key).is_some()))
}

fn merge_list(current: &mut Vec<Value>, patch: &[Value], key: &str) {
    for item in patch {
        let id = item.get(key);
        let position = current.iter().position(|c| c.get(key) == id);
        let delete = item.get("$patch").and_then(Value::as_str) == Some("delete");
        match (position, delete) {
            (Some(i), true) => {
                current.remove(i);
            }
            (Some(i), false) => merge(&mut current[i], item),
            (None, false) => {
                let mut fresh = Value::Null;
                merge(&mut fresh, item);
                current.push(fresh);
            }
            (None, true) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn merges_containers_by_name_and_obeys_directives() {
        let mut pod = json!({"metadata": {"labels": {"a": "1", "b": "2"}, "finalizers": ["x", "y"]},
            "spec": {"containers": [
                {"name": "main", "image": "busybox:1", "command": ["sleep"]},
                {"name": "side", "image": "envoy"}]}});
        merge(
            &mut pod,
            &json!({"metadata": {"labels": {"b": null, "c": "3"}, "$deleteFromPrimitiveList/finalizers": ["x"]},
                "spec": {"$setElementOrder/containers": [{"name": "main"}, {"name": "side"}],
                    "containers": [{"name": "main", "image": "busybox:2"},
                        {"name": "side", "$patch": "delete"}, {"name": "new", "image": "x"}]}}),
        );
        assert_eq!(
            pod,
            json!({"metadata": {"labels": {"a": "1", "c": "3"}, "finalizers": ["y"]},
                "spec": {"containers": [
                    {"name": "main", "image": "busybox:2", "command": ["sleep"]},
                    {"name": "new", "image": "x"}]}})
        );
    }
}
