//! Field ownership, as the real server keeps it in `metadata.managedFields` (FieldsV1):
//! appliers own what they apply (operation `Apply`); creates, updates and patches make their
//! field manager the owner of the fields they set or change (operation `Update`, taking them
//! from whoever owned them). Fields an applier stops applying are removed, and applying a
//! different value to a field another manager owns is a conflict unless forced.
//!
//! Simplifications: lists are atomic (replaced whole, never merged by key), and the embedded
//! controllers' own writes (Job status, pod status) record no manager.

use std::collections::BTreeSet;

use serde_json::{Map, Value, json};

/// A field path such as `["spec", "size"]`.
type Path = Vec<String>;

/// Object fields the server owns; never part of an applier's set.
fn server_owned(path: &[String]) -> bool {
    match path {
        [top] => matches!(top.as_str(), "apiVersion" | "kind"),
        [meta, field, ..] if meta == "metadata" => !matches!(
            field.as_str(),
            "labels" | "annotations" | "finalizers" | "ownerReferences"
        ),
        _ => false,
    }
}

/// The leaves of `value` (scalars and lists; empty objects own nothing), with their paths.
fn leaves(value: &Value, prefix: &mut Path, out: &mut BTreeSet<Path>) {
    match value {
        Value::Object(fields) => {
            for (key, child) in fields {
                prefix.push(key.clone());
                leaves(child, prefix, out);
                prefix.pop();
            }
        }
        _ if !prefix.is_empty() && !server_owned(prefix) => {
            out.insert(prefix.clone());
        }
        _ => {}
    }
}

/// FieldsV1 (`{"f:spec": {"f:size": {}}}`) from a set of paths.
fn to_fields_v1(paths: &BTreeSet<Path>) -> Value {
    let mut root = Map::new();
    for path in paths {
        let mut node = &mut root;
        for key in path {
            node = node
                .entry(format!("f:{key}"))
                .or_insert_with(|| json!({}))
                .as_object_mut()
                .expect("FieldsV1 nodes are objects");
        }
    }
    Value::Object(root)
}

/// The paths in a FieldsV1 value.
fn from_fields_v1(value: &Value, prefix: &mut Path, out: &mut BTreeSet<Path>) {
    let Some(fields) = value.as_object() else {
        return;
    };
    let mut leaf = true;
    for (key, child) in fields {
        if let Some(name) = key.strip_prefix("f:") {
            leaf = false;
            prefix.push(name.to_string());
            from_fields_v1(child, prefix, out);
            prefix.pop();
        }
    }
    if leaf && !prefix.is_empty() {
        out.insert(prefix.clone());
    }
}

fn get<'a>(obj: &'a Value, path: &[String]) -> Option<&'a Value> {
    path.iter().try_fold(obj, |node, key| node.get(key))
}

fn set(obj: &mut Value, path: &[String], value: Value) {
    let Some((last, parents)) = path.split_last() else {
        return;
    };
    let mut node = obj;
    for key in parents {
        if !node.get(key).is_some_and(Value::is_object) {
            node[key.as_str()] = json!({});
        }
        node = &mut node[key.as_str()];
    }
    node[last.as_str()] = value;
}

fn remove(obj: &mut Value, path: &[String]) {
    let Some((last, parents)) = path.split_last() else {
        return;
    };
    let mut node = obj;
    for key in parents {
        match node.get_mut(key) {
            Some(child) => node = child,
            None => return,
        }
    }
    if let Some(fields) = node.as_object_mut() {
        fields.remove(last);
    }
}

/// Whether one path is the other or lies under it.
fn overlaps(a: &[String], b: &[String]) -> bool {
    a.starts_with(b) || b.starts_with(a)
}

/// `.spec.size`, as conflicts name fields.
fn dotted(path: &[String]) -> String {
    path.iter().map(|k| format!(".{k}")).collect()
}

/// A field another applier owns with a different value.
#[derive(Debug, PartialEq)]
pub struct Conflict {
    /// The other applier.
    pub manager: String,
    /// `.spec.size`.
    pub field: String,
}

/// One managedFields entry, parsed.
struct Entry {
    raw: Value,
    manager: String,
    operation: String,
    subresource: String,
    paths: BTreeSet<Path>,
}

fn entries(obj: &Value) -> Vec<Entry> {
    obj.pointer("/metadata/managedFields")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .map(|raw| {
            let text = |k: &str| {
                raw.get(k)
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_string()
            };
            let mut paths = BTreeSet::new();
            if let Some(fields) = raw.get("fieldsV1") {
                from_fields_v1(fields, &mut Vec::new(), &mut paths);
            }
            Entry {
                raw: raw.clone(),
                manager: text("manager"),
                operation: text("operation"),
                subresource: text("subresource"),
                paths,
            }
        })
        .collect()
}

/// Applies `config` for `manager` to `current` (the stored object, or an empty one when
/// creating) and returns the new object, with its managedFields updated.
pub fn apply(
    current: &Value,
    config: &Value,
    manager: &str,
    subresource: &str,
    api_version: &str,
    force: bool,
) -> Result<Value, Vec<Conflict>> {
    let mut wanted = BTreeSet::new();
    leaves(config, &mut Vec::new(), &mut wanted);
    if subresource == "status" {
        wanted.retain(|p| p.first().is_some_and(|k| k == "status"));
    }
    let mut entries = entries(current);
    let mine =
        |e: &Entry| e.manager == manager && e.operation == "Apply" && e.subresource == subresource;
    let previous: BTreeSet<Path> = entries
        .iter()
        .filter(|e| mine(e))
        .flat_map(|e| e.paths.iter().cloned())
        .collect();
    let mut conflicts = Vec::new();
    for entry in entries.iter_mut().filter(|e| !mine(e)) {
        let taken: Vec<Path> = entry
            .paths
            .iter()
            .filter(|owned| {
                wanted
                    .iter()
                    .any(|w| overlaps(w, owned) && get(current, owned) != get(config, owned))
            })
            .cloned()
            .collect();
        for path in taken {
            if force {
                entry.paths.remove(&path);
            } else {
                conflicts.push(Conflict {
                    manager: entry.manager.clone(),
                    field: dotted(&path),
                });
            }
        }
    }
    if !conflicts.is_empty() {
        return Err(conflicts);
    }
    let mut result = current.clone();
    let others: Vec<&Path> = entries
        .iter()
        .filter(|e| !mine(e))
        .flat_map(|e| e.paths.iter())
        .collect();
    for dropped in previous.difference(&wanted) {
        if !others.iter().any(|o| overlaps(o, dropped)) {
            remove(&mut result, dropped);
        }
    }
    for path in &wanted {
        if let Some(value) = get(config, path) {
            set(&mut result, path, value.clone());
        }
    }
    let taken_any = entries.iter().any(|e| {
        !mine(e)
            && e.raw
                .get("fieldsV1")
                .is_some_and(|f| *f != to_fields_v1(&e.paths))
    });
    if result == *current && previous == wanted && !taken_any && entries.iter().any(&mine) {
        // Nothing changes: keep the entry's time too, so the write is a no-op and watchers
        // see no event (controllers applying status on every pass rely on this).
        return Ok(result);
    }
    let mut managed: Vec<Value> = entries
        .iter()
        .filter(|e| !mine(e) && !e.paths.is_empty())
        .map(|e| {
            let mut raw = e.raw.clone();
            raw["fieldsV1"] = to_fields_v1(&e.paths);
            raw
        })
        .collect();
    let mut entry = json!({
        "manager": manager, "operation": "Apply", "apiVersion": api_version,
        "time": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        "fieldsType": "FieldsV1", "fieldsV1": to_fields_v1(&wanted),
    });
    if !subresource.is_empty() {
        entry["subresource"] = json!(subresource);
    }
    managed.push(entry);
    result["metadata"]["managedFields"] = Value::Array(managed);
    Ok(result)
}

/// The field manager of a write that names none: the User-Agent up to its first `/`, as the
/// real server takes it (`kubectl/v1.33.0 (linux/amd64) …` → `kubectl`).
pub fn manager_of(field_manager: Option<&str>, user_agent: &str) -> String {
    match field_manager.filter(|m| !m.is_empty()) {
        Some(manager) => manager.to_string(),
        None => user_agent.split('/').next().unwrap_or_default().to_string(),
    }
}

/// Records a create, update or patch by `manager` in the managedFields of `new` (the object
/// about to be stored; `current` is the stored one, `None` on create): the fields it set or
/// changed become the manager's (operation `Update`) and leave their earlier owners, and
/// fields no longer in the object leave every manager. The managedFields a client sent are
/// not taken as they are. A write that changes no field keeps them as stored.
pub fn record_update(
    current: Option<&Value>,
    new: &mut Value,
    manager: &str,
    subresource: &str,
    api_version: &str,
) {
    let empty = json!({});
    let before = current.unwrap_or(&empty);
    let mut present = BTreeSet::new();
    leaves(new, &mut Vec::new(), &mut present);
    let changed: BTreeSet<Path> = present
        .iter()
        .filter(|p| get(before, p) != get(new, p))
        .filter(|p| subresource != "status" || p.first().is_some_and(|k| k == "status"))
        .cloned()
        .collect();
    let mut entries = entries(before);
    let mut pruned = false;
    for entry in &mut entries {
        let kept = entry.paths.len();
        entry.paths.retain(|owned| {
            get(new, owned).is_some() && !changed.iter().any(|c| overlaps(c, owned))
        });
        pruned |= entry.paths.len() != kept;
    }
    let stored = before.pointer("/metadata/managedFields").cloned();
    if changed.is_empty() && !pruned {
        match stored {
            Some(managed) => new["metadata"]["managedFields"] = managed,
            None => {
                if let Some(meta) = new.get_mut("metadata").and_then(Value::as_object_mut) {
                    meta.remove("managedFields");
                }
            }
        }
        return;
    }
    let mine =
        |e: &Entry| e.manager == manager && e.operation == "Update" && e.subresource == subresource;
    let mut owned: BTreeSet<Path> = entries
        .iter()
        .filter(|e| mine(e))
        .flat_map(|e| e.paths.iter().cloned())
        .collect();
    owned.extend(changed.iter().cloned());
    let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let mut managed: Vec<Value> = Vec::new();
    let mut placed = false;
    for entry in &entries {
        if mine(entry) {
            // The manager's entry keeps its place, with the new time.
            placed = true;
            managed.push(update_entry(
                manager,
                subresource,
                api_version,
                &now,
                &owned,
            ));
        } else if !entry.paths.is_empty() {
            let mut raw = entry.raw.clone();
            raw["fieldsV1"] = to_fields_v1(&entry.paths);
            managed.push(raw);
        }
    }
    if !placed && !owned.is_empty() {
        managed.push(update_entry(
            manager,
            subresource,
            api_version,
            &now,
            &owned,
        ));
    }
    new["metadata"]["managedFields"] = Value::Array(managed);
}

fn update_entry(
    manager: &str,
    subresource: &str,
    api_version: &str,
    time: &str,
    paths: &BTreeSet<Path>,
) -> Value {
    let mut entry = json!({
        "manager": manager, "operation": "Update", "apiVersion": api_version, "time": time,
        "fieldsType": "FieldsV1", "fieldsV1": to_fields_v1(paths),
    });
    if !subresource.is_empty() {
        entry["subresource"] = json!(subresource);
    }
    entry
}

/// The real server's message for apply conflicts.
pub fn conflict_message(conflicts: &[Conflict]) -> String {
    if let [one] = conflicts {
        return format!(
            "Apply failed with 1 conflict: conflict with \"{}\": {}",
            one.manager, one.field
        );
    }
    let managers: BTreeSet<&str> = conflicts.iter().map(|c| c.manager.as_str()).collect();
    let mut lines = Vec::new();
    for manager in managers {
        lines.push(format!("conflicts with \"{manager}\":"));
        for c in conflicts.iter().filter(|c| c.manager == manager) {
            lines.push(format!("- {}", c.field));
        }
    }
    format!(
        "Apply failed with {} conflicts: {}",
        conflicts.len(),
        lines.join("\n")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn updates_own_what_they_change_and_appliers_conflict_with_them() {
        let mut created = json!({"metadata": {"name": "a"}, "spec": {"a": 1, "b": 2}});
        record_update(None, &mut created, "kubectl-create", "", "v1");
        assert_eq!(
            created["metadata"]["managedFields"][0]["operation"],
            "Update"
        );
        assert_eq!(
            created["metadata"]["managedFields"][0]["fieldsV1"],
            json!({"f:spec": {"f:a": {}, "f:b": {}}})
        );
        // A patch of one field takes it from the creator.
        let mut patched = created.clone();
        patched["spec"]["b"] = json!(3);
        record_update(Some(&created), &mut patched, "kubectl-patch", "", "v1");
        let managers: Vec<(&str, Value)> = patched["metadata"]["managedFields"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|e| {
                (
                    e["manager"].as_str().unwrap_or_default(),
                    e["fieldsV1"].clone(),
                )
            })
            .collect();
        assert_eq!(
            managers,
            [
                ("kubectl-create", json!({"f:spec": {"f:a": {}}})),
                ("kubectl-patch", json!({"f:spec": {"f:b": {}}}))
            ]
        );
        // An update that changes nothing keeps managedFields as stored, time included.
        let mut same = patched.clone();
        same["metadata"]["managedFields"] = json!([]);
        record_update(Some(&patched), &mut same, "other", "", "v1");
        assert_eq!(same, patched);
        // Applying another value over the patcher's field conflicts; the same value does not.
        let err = apply(
            &patched,
            &json!({"spec": {"b": 4}}),
            "kubectl",
            "",
            "v1",
            false,
        )
        .unwrap_err();
        assert_eq!(
            conflict_message(&err),
            "Apply failed with 1 conflict: conflict with \"kubectl-patch\": .spec.b"
        );
        assert!(
            apply(
                &patched,
                &json!({"spec": {"b": 3}}),
                "kubectl",
                "",
                "v1",
                false
            )
            .is_ok()
        );
        assert_eq!(
            manager_of(None, "kubectl/v1.33.0 (linux/amd64) kubernetes/abc"),
            "kubectl"
        );
        assert_eq!(manager_of(Some("charon"), "kubectl/v1"), "charon");
    }

    #[test]
    fn appliers_own_fields_and_conflict() {
        let empty = json!({"metadata": {"name": "a"}});
        let first = apply(
            &empty,
            &json!({"metadata": {"name": "a", "labels": {"x": "1"}}, "spec": {"a": 1, "b": [1, 2]}}),
            "one",
            "",
            "v1",
            false,
        )
        .unwrap();
        assert_eq!(first["spec"], json!({"a": 1, "b": [1, 2]}));
        assert_eq!(
            first["metadata"]["managedFields"][0]["fieldsV1"],
            json!({"f:metadata": {"f:labels": {"f:x": {}}}, "f:spec": {"f:a": {}, "f:b": {}}})
        );
        // Dropping a field removes it; a second applier may share equal values.
        let second = apply(&first, &json!({"spec": {"a": 1}}), "one", "", "v1", false).unwrap();
        assert_eq!(second["spec"], json!({"a": 1}));
        let shared = apply(
            &second,
            &json!({"spec": {"a": 1, "c": true}}),
            "two",
            "",
            "v1",
            false,
        )
        .unwrap();
        assert_eq!(shared["spec"], json!({"a": 1, "c": true}));
        let err = apply(&shared, &json!({"spec": {"a": 2}}), "two", "", "v1", false).unwrap_err();
        assert_eq!(
            conflict_message(&err),
            "Apply failed with 1 conflict: conflict with \"one\": .spec.a"
        );
        let forced = apply(&shared, &json!({"spec": {"a": 2}}), "two", "", "v1", true).unwrap();
        assert_eq!(forced["spec"], json!({"a": 2}));
        // "one" lost .spec.a, so it no longer removes or conflicts over it.
        let again = apply(&forced, &json!({"spec": {}}), "one", "", "v1", false).unwrap();
        assert_eq!(again["spec"], json!({"a": 2}));
    }
}
