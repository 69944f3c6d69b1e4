//! Server-side tables (`Accept: application/json;as=Table;g=meta.k8s.io;v=v1`): the Name
//! column plus a CRD's additionalPrinterColumns or a built-in kind's usual columns, dates
//! shown as ages, as `kubectl get` expects.

use serde_json::{Value, json};

/// What each row carries besides its cells (`?includeObject=`, meta.k8s.io TableOptions):
/// `kubectl get --sort-by` and custom columns read the whole object from the rows.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Include {
    /// No object.
    None,
    /// The object's metadata, as a PartialObjectMetadata (the default).
    #[default]
    Metadata,
    /// The whole object.
    Object,
}

impl Include {
    /// Reads `includeObject` from the query; an unknown value is refused as the real server
    /// refuses it.
    pub fn from_query(
        query: &std::collections::HashMap<String, String>,
    ) -> Result<Include, crate::error::ApiError> {
        match query.get("includeObject").map(String::as_str) {
            None | Some("") | Some("Metadata") => Ok(Include::Metadata),
            Some("None") => Ok(Include::None),
            Some("Object") => Ok(Include::Object),
            Some(other) => Err(crate::error::ApiError::bad_request(format!(
                "includeObject: Unsupported value: \"{other}\": supported values: \"Metadata\", \"None\", \"Object\""
            ))),
        }
    }
}

/// How a Table is rendered: the columns, and what each row carries.
#[derive(Clone, Debug, Default)]
pub struct Format {
    /// Printer-column specs (a CRD's additionalPrinterColumns, or a built-in kind's).
    pub columns: Vec<Value>,
    /// What each row carries.
    pub include: Include,
}

/// Whether the client asked for a Table.
pub fn wanted(accept: &str) -> bool {
    accept
        .split(',')
        .any(|part| part.contains("as=Table") && part.contains("g=meta.k8s.io"))
}

/// Renders `items` with the format's columns (empty gives Name and Age). A Name column comes
/// first unless the columns place it themselves (`"format": "name"`, as events do).
pub fn render<'a>(
    items: impl IntoIterator<Item = &'a Value>,
    format: &Format,
    list_rv: Option<u64>,
    now: chrono::DateTime<chrono::Utc>,
) -> Value {
    let mut columns: Vec<Value> = format.columns.clone();
    if columns.is_empty() {
        columns.push(
            json!({"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"}),
        );
    }
    let name_placed = columns.iter().any(|c| c["format"] == "name");
    let mut definitions = Vec::new();
    if !name_placed {
        definitions.push(json!({
            "name": "Name", "type": "string", "format": "name", "priority": 0,
            "description": "Name must be unique within a namespace.",
        }));
    }
    for c in &columns {
        definitions.push(json!({
            "name": c["name"], "type": c["type"], "format": c.get("format").cloned().unwrap_or(json!("")),
            "priority": c.get("priority").cloned().unwrap_or(json!(0)),
            "description": c.get("description").cloned().unwrap_or_else(|| json!(format!(
                "Custom resource definition column (in JSONPath format): {}",
                c["jsonPath"].as_str().unwrap_or_default()
            ))),
        }));
    }
    let rows: Vec<Value> = items
        .into_iter()
        .map(|item| {
            let mut cells = Vec::new();
            if !name_placed {
                cells.push(item.pointer("/metadata/name").cloned().unwrap_or(Value::Null));
            }
            for c in &columns {
                let value = match c.get("compute").and_then(Value::as_str) {
                    Some(what) => computed(what, item, now),
                    None => jsonpath(item, c["jsonPath"].as_str().unwrap_or_default()),
                };
                cells.push(cell(c["type"].as_str().unwrap_or("string"), value, now));
            }
            let mut row = json!({"cells": cells});
            match format.include {
                Include::None => {}
                Include::Metadata => {
                    row["object"] = json!({"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": item["metadata"]});
                }
                Include::Object => row["object"] = item.clone(),
            }
            row
        })
        .collect();
    let mut metadata = json!({});
    if let Some(rv) = list_rv {
        metadata["resourceVersion"] = json!(rv.to_string());
    }
    json!({"kind": "Table", "apiVersion": "meta.k8s.io/v1", "metadata": metadata, "columnDefinitions": definitions, "rows": rows})
}

/// The columns the real server shows for a built-in kind (without `-o wide` ones), as
/// printer-column specs; `compute` names cells that are not a plain JSONPath.
pub fn builtin_columns(group: &str, plural: &str) -> Vec<Value> {
    let age = json!({"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"});
    let mut columns = match (group, plural) {
        ("", "namespaces") => {
            vec![json!({"name": "Status", "type": "string", "jsonPath": ".status.phase"})]
        }
        ("", "configmaps") => vec![json!({"name": "Data", "type": "integer", "compute": "data"})],
        ("", "secrets") => vec![
            json!({"name": "Type", "type": "string", "jsonPath": ".type"}),
            json!({"name": "Data", "type": "integer", "compute": "data"}),
        ],
        ("", "serviceaccounts") => {
            vec![json!({"name": "Secrets", "type": "integer", "compute": "secrets"})]
        }
        ("", "pods") => vec![
            json!({"name": "Ready", "type": "string", "compute": "ready"}),
            json!({"name": "Status", "type": "string", "compute": "podStatus"}),
            json!({"name": "Restarts", "type": "string", "compute": "restarts"}),
        ],
        ("batch", "jobs") => vec![
            json!({"name": "Status", "type": "string", "compute": "jobStatus"}),
            json!({"name": "Completions", "type": "string", "compute": "completions"}),
            json!({"name": "Duration", "type": "string", "compute": "duration"}),
        ],
        // As the real server prints core/v1 Events: no leading Name (it comes last, wide).
        ("", "events") => {
            return vec![
                json!({"name": "Last Seen", "type": "string", "compute": "lastSeen",
                    "description": "Time when this Event was last observed."}),
                json!({"name": "Type", "type": "string", "jsonPath": ".type",
                    "description": "Type of this event (Normal, Warning), new types could be added in the future"}),
                json!({"name": "Reason", "type": "string", "jsonPath": ".reason",
                    "description": "This should be a short, machine understandable string that gives the reason for the transition into the object's current status."}),
                json!({"name": "Object", "type": "string", "compute": "involvedObject",
                    "description": "The object that this event is about."}),
                json!({"name": "Subobject", "type": "string", "priority": 1, "compute": "subobject",
                    "description": "If referring to a piece of an object instead of an entire object, this string should contain a valid JSON/Go field access statement."}),
                json!({"name": "Source", "type": "string", "priority": 1, "compute": "eventSource",
                    "description": "The component reporting this event. Should be a short machine understandable string."}),
                json!({"name": "Message", "type": "string", "jsonPath": ".message",
                    "description": "A human-readable description of the status of this operation."}),
                json!({"name": "First Seen", "type": "string", "priority": 1, "compute": "firstSeen",
                    "description": "The time at which the event was first recorded. (Time of server receipt is in TypeMeta.)"}),
                json!({"name": "Count", "type": "string", "priority": 1, "compute": "eventCount",
                    "description": "The number of times this event has occurred."}),
                json!({"name": "Name", "type": "string", "format": "name", "priority": 1, "jsonPath": ".metadata.name",
                    "description": "Name must be unique within a namespace."}),
            ];
        }
        // As `kubectl get pvc` / `pv` / `sc` print them in 1.33, VolumeMode with `-o wide`.
        ("", "persistentvolumeclaims") => {
            return vec![
                json!({"name": "Status", "type": "string", "compute": "storagePhase"}),
                json!({"name": "Volume", "type": "string", "jsonPath": ".spec.volumeName"}),
                json!({"name": "Capacity", "type": "string", "compute": "claimCapacity"}),
                json!({"name": "Access Modes", "type": "string", "compute": "claimAccessModes"}),
                json!({"name": "StorageClass", "type": "string", "compute": "claimClass",
                    "description": "StorageClass of the pvc"}),
                json!({"name": "VolumeAttributesClass", "type": "string", "compute": "attributesClass",
                    "description": "VolumeAttributesClass of the pvc"}),
                age,
                json!({"name": "VolumeMode", "type": "string", "priority": 1, "compute": "volumeMode"}),
            ];
        }
        ("", "persistentvolumes") => {
            return vec![
                json!({"name": "Capacity", "type": "string", "jsonPath": ".spec.capacity.storage"}),
                json!({"name": "Access Modes", "type": "string", "compute": "volumeAccessModes"}),
                json!({"name": "Reclaim Policy", "type": "string", "jsonPath": ".spec.persistentVolumeReclaimPolicy"}),
                json!({"name": "Status", "type": "string", "compute": "storagePhase"}),
                json!({"name": "Claim", "type": "string", "compute": "volumeClaim"}),
                json!({"name": "StorageClass", "type": "string", "compute": "volumeClass",
                    "description": "StorageClass of the pv"}),
                json!({"name": "VolumeAttributesClass", "type": "string", "compute": "attributesClass",
                    "description": "VolumeAttributesClass of the pv"}),
                json!({"name": "Reason", "type": "string", "compute": "volumeReason"}),
                age,
                json!({"name": "VolumeMode", "type": "string", "priority": 1, "compute": "volumeMode"}),
            ];
        }
        ("storage.k8s.io", "storageclasses") => {
            return vec![
                json!({"name": "Name", "type": "string", "format": "name", "compute": "className",
                    "description": "Name must be unique within a namespace."}),
                json!({"name": "Provisioner", "type": "string", "jsonPath": ".provisioner"}),
                json!({"name": "ReclaimPolicy", "type": "string", "compute": "reclaimPolicy"}),
                json!({"name": "VolumeBindingMode", "type": "string", "compute": "bindingMode"}),
                json!({"name": "AllowVolumeExpansion", "type": "string", "compute": "expansion"}),
                age,
            ];
        }
        ("coordination.k8s.io", "leases") => {
            vec![json!({"name": "Holder", "type": "string", "jsonPath": ".spec.holderIdentity"})]
        }
        ("apiextensions.k8s.io", "customresourcedefinitions") => {
            return vec![
                json!({"name": "Created At", "type": "string", "jsonPath": ".metadata.creationTimestamp"}),
            ];
        }
        _ => Vec::new(),
    };
    columns.push(age);
    columns
}

fn computed(what: &str, item: &Value, now: chrono::DateTime<chrono::Utc>) -> Option<Value> {
    let count = |p: &str| match item.pointer(p) {
        Some(Value::Object(m)) => m.len(),
        Some(Value::Array(a)) => a.len(),
        _ => 0,
    };
    let int = |p: &str| item.pointer(p).and_then(Value::as_i64).unwrap_or(0);
    let statuses: Vec<&Value> = item
        .pointer("/status/containerStatuses")
        .and_then(Value::as_array)
        .map(|a| a.iter().collect())
        .unwrap_or_default();
    let condition = |kind: &str| {
        item.pointer("/status/conditions")
            .and_then(Value::as_array)
            .is_some_and(|cs| {
                cs.iter()
                    .any(|c| c["type"] == kind && c["status"] == "True")
            })
    };
    let time = |p: &str| {
        item.pointer(p)
            .and_then(Value::as_str)
            .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
            .map(|t| t.with_timezone(&chrono::Utc))
    };
    Some(match what {
        "data" => json!(count("/data") + count("/binaryData")),
        "secrets" => json!(count("/secrets")),
        "ready" => {
            let ready = statuses.iter().filter(|s| s["ready"] == true).count();
            json!(format!("{ready}/{}", count("/spec/containers")))
        }
        "podStatus" if item.pointer("/metadata/deletionTimestamp").is_some() => {
            json!("Terminating")
        }
        "podStatus" => item
            .pointer("/status/reason")
            .or_else(|| item.pointer("/status/phase"))
            .cloned()
            .unwrap_or(json!("Pending")),
        "restarts" => {
            let restarts: i64 = statuses
                .iter()
                .filter_map(|s| s["restartCount"].as_i64())
                .sum();
            json!(restarts.to_string())
        }
        "jobStatus" => json!(if condition("Complete") {
            "Complete"
        } else if condition("Failed") {
            "Failed"
        } else if item.pointer("/spec/suspend") == Some(&Value::Bool(true)) {
            "Suspended"
        } else {
            "Running"
        }),
        "completions" => {
            let wanted = item
                .pointer("/spec/completions")
                .and_then(Value::as_i64)
                .unwrap_or(1);
            json!(format!("{}/{wanted}", int("/status/succeeded")))
        }
        "lastSeen" => {
            let seen = time("/lastTimestamp")
                .or_else(|| time("/eventTime"))
                .or_else(|| time("/metadata/creationTimestamp"))?;
            json!(human_duration(now.signed_duration_since(seen)))
        }
        "firstSeen" => {
            let seen = time("/firstTimestamp")
                .or_else(|| time("/eventTime"))
                .or_else(|| time("/metadata/creationTimestamp"))?;
            json!(human_duration(now.signed_duration_since(seen)))
        }
        "involvedObject" => json!(format!(
            "{}/{}",
            item.pointer("/involvedObject/kind")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_lowercase(),
            item.pointer("/involvedObject/name")
                .and_then(Value::as_str)
                .unwrap_or_default()
        )),
        "eventSource" => {
            let text = |p: &str| {
                item.pointer(p)
                    .and_then(Value::as_str)
                    .filter(|s| !s.is_empty())
            };
            let (first, second) = match text("/source/component") {
                Some(component) => (Some(component), text("/source/host")),
                None => (text("/reportingComponent"), text("/reportingInstance")),
            };
            json!(match (first, second) {
                (Some(a), Some(b)) => format!("{a}, {b}"),
                (Some(a), None) => a.to_string(),
                (None, _) => String::new(),
            })
        }
        "subobject" => item
            .pointer("/involvedObject/fieldPath")
            .cloned()
            .unwrap_or(json!("")),
        "eventCount" => json!(
            item.pointer("/series/count")
                .or_else(|| item.pointer("/count"))
                .and_then(Value::as_i64)
                .unwrap_or(1)
                .to_string()
        ),
        "storagePhase" if item.pointer("/metadata/deletionTimestamp").is_some() => {
            json!("Terminating")
        }
        "storagePhase" => item.pointer("/status/phase").cloned().unwrap_or(json!("")),
        "claimCapacity" => json!(if bound_claim(item) {
            item.pointer("/status/capacity/storage")
                .and_then(Value::as_str)
                .unwrap_or("0")
        } else {
            ""
        }),
        "claimAccessModes" => json!(if bound_claim(item) {
            access_modes(item.pointer("/status/accessModes"))
        } else {
            String::new()
        }),
        "volumeAccessModes" => json!(access_modes(item.pointer("/spec/accessModes"))),
        "claimClass" => json!(crate::storage::claim_class(item)),
        "volumeClass" => json!(
            item.pointer("/metadata/annotations/volume.beta.kubernetes.io~1storage-class")
                .or_else(|| item.pointer("/spec/storageClassName"))
                .and_then(Value::as_str)
                .unwrap_or_default()
        ),
        "attributesClass" => json!(
            item.pointer("/spec/volumeAttributesClassName")
                .and_then(Value::as_str)
                .unwrap_or("<unset>")
        ),
        "volumeMode" => json!(
            item.pointer("/spec/volumeMode")
                .and_then(Value::as_str)
                .unwrap_or("<unset>")
        ),
        "volumeClaim" => match item.pointer("/spec/claimRef") {
            Some(r) if r.is_object() => json!(format!(
                "{}/{}",
                r["namespace"].as_str().unwrap_or_default(),
                r["name"].as_str().unwrap_or_default()
            )),
            _ => json!(""),
        },
        "volumeReason" => item.pointer("/status/reason").cloned().unwrap_or(json!("")),
        "className" => {
            let name = item
                .pointer("/metadata/name")
                .and_then(Value::as_str)
                .unwrap_or_default();
            let default = [
                "storageclass.kubernetes.io/is-default-class",
                "storageclass.beta.kubernetes.io/is-default-class",
            ]
            .iter()
            .any(|a| {
                item.pointer("/metadata/annotations")
                    .and_then(|m| m.get(*a))
                    .and_then(Value::as_str)
                    == Some("true")
            });
            json!(if default {
                format!("{name} (default)")
            } else {
                name.to_string()
            })
        }
        "reclaimPolicy" => item
            .get("reclaimPolicy")
            .cloned()
            .unwrap_or(json!("Delete")),
        "bindingMode" => item
            .get("volumeBindingMode")
            .cloned()
            .unwrap_or(json!("Immediate")),
        "expansion" => json!(item.get("allowVolumeExpansion") == Some(&Value::Bool(true))),
        "duration" => {
            let start = time("/status/startTime")?;
            let end = time("/status/completionTime").unwrap_or(now);
            json!(human_duration(end.signed_duration_since(start)))
        }
        _ => return None,
    })
}

/// Whether a claim names its volume (the printer shows capacity and modes only then).
fn bound_claim(item: &Value) -> bool {
    item.pointer("/spec/volumeName")
        .and_then(Value::as_str)
        .is_some_and(|v| !v.is_empty())
}

/// Access modes as kubectl abbreviates them, in its fixed order, each once.
fn access_modes(modes: Option<&Value>) -> String {
    let modes: Vec<&str> = modes
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    [
        ("ReadWriteOnce", "RWO"),
        ("ReadOnlyMany", "ROX"),
        ("ReadWriteMany", "RWX"),
        ("ReadWriteOncePod", "RWOP"),
    ]
    .iter()
    .filter(|(mode, _)| modes.contains(mode))
    .map(|(_, short)| *short)
    .collect::<Vec<_>>()
    .join(",")
}

fn cell(kind: &str, value: Option<Value>, now: chrono::DateTime<chrono::Utc>) -> Value {
    let Some(value) = value else {
        return Value::Null;
    };
    match (kind, &value) {
        ("date", Value::String(text)) => match chrono::DateTime::parse_from_rfc3339(text) {
            Ok(t) => json!(human_duration(now.signed_duration_since(t))),
            Err(_) => json!("<invalid>"),
        },
        ("string", Value::String(_)) => value,
        ("string", other) => json!(other.to_string()),
        _ => value,
    }
}

/// Ages as kubectl prints them (`45s`, `5m10s`, `3h`, `2d4h`, `2y`).
pub fn human_duration(d: chrono::Duration) -> String {
    let seconds = d.num_seconds();
    if seconds < -1 {
        return "<invalid>".into();
    }
    if seconds < 0 {
        return "0s".into();
    }
    if seconds < 120 {
        return format!("{seconds}s");
    }
    let minutes = seconds / 60;
    if minutes < 10 {
        let s = seconds % 60;
        return if s == 0 {
            format!("{minutes}m")
        } else {
            format!("{minutes}m{s}s")
        };
    }
    if minutes < 180 {
        return format!("{minutes}m");
    }
    let hours = minutes / 60;
    if hours < 8 {
        let m = minutes % 60;
        return if m == 0 {
            format!("{hours}h")
        } else {
            format!("{hours}h{m}m")
        };
    }
    if hours < 48 {
        return format!("{hours}h");
    }
    if hours < 24 * 8 {
        let h = hours % 24;
        return if h == 0 {
            format!("{}d", hours / 24)
        } else {
            format!("{}d{h}h", hours / 24)
        };
    }
    if hours < 24 * 365 * 2 {
        return format!("{}d", hours / 24);
    }
    if hours < 24 * 365 * 8 {
        let days = (hours / 24) % 365;
        return if days == 0 {
            format!("{}y", hours / 24 / 365)
        } else {
            format!("{}y{days}d", hours / 24 / 365)
        };
    }
    format!("{}y", hours / 24 / 365)
}

/// The subset of JSONPath printer columns use: `.a.b`, `.a[0]`, `.a[?(@.k=="v")].b`. Walks
/// by reference and copies only the value found.
pub fn jsonpath(obj: &Value, path: &str) -> Option<Value> {
    let mut current = obj;
    let mut rest = path
        .trim()
        .trim_start_matches('{')
        .trim_end_matches('}')
        .trim_start_matches('$');
    while !rest.is_empty() {
        if let Some(after) = rest.strip_prefix('.') {
            let end = after.find(['.', '[']).unwrap_or(after.len());
            let key = &after[..end];
            current = current.get(key)?;
            rest = &after[end..];
        } else if let Some(after) = rest.strip_prefix('[') {
            let end = after.find(']')?;
            let inner = &after[..end];
            rest = &after[end + 1..];
            if let Some(filter) = inner.strip_prefix("?(@.").and_then(|f| f.strip_suffix(')')) {
                let (key, want) = filter.split_once("==")?;
                let want = want.trim().trim_matches(|c| c == '"' || c == '\'');
                current = current
                    .as_array()?
                    .iter()
                    .find(|e| e.get(key.trim()).and_then(Value::as_str) == Some(want))?;
            } else {
                let index: usize = inner.trim().parse().ok()?;
                current = current.as_array()?.get(index)?;
            }
        } else {
            return None;
        }
    }
    Some(current.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_carry_what_include_object_asks_for() {
        let item = json!({"kind": "Gizmo", "apiVersion": "demo.test/v1",
            "metadata": {"name": "g", "creationTimestamp": "2026-01-01T00:00:00Z"},
            "spec": {"size": 3}});
        let now = chrono::Utc::now();
        let query = |value: &str| {
            std::collections::HashMap::from([("includeObject".to_string(), value.to_string())])
        };
        let row = |include: Include| {
            let format = Format {
                columns: Vec::new(),
                include,
            };
            render([&item], &format, None, now)["rows"][0].clone()
        };
        assert_eq!(row(Include::Object)["object"], item);
        assert_eq!(
            row(Include::Metadata)["object"]["kind"],
            "PartialObjectMetadata"
        );
        assert!(row(Include::None).get("object").is_none());
        assert_eq!(
            Include::from_query(&query("Object")).ok(),
            Some(Include::Object)
        );
        assert_eq!(
            Include::from_query(&Default::default()).ok(),
            Some(Include::Metadata)
        );
        let refused = Include::from_query(&query("All")).err().map(|e| e.message);
        assert!(refused.is_some_and(|m| m.contains("Unsupported value: \"All\"")));
    }

    #[test]
    fn events_have_the_real_servers_columns() {
        let event = json!({"metadata": {"name": "e1", "creationTimestamp": "2026-01-01T00:00:00Z"},
            "involvedObject": {"kind": "Pod", "name": "p"}, "type": "Warning", "reason": "Failed",
            "message": "boom", "count": 4, "source": {"component": "kubelet", "host": "node-1"},
            "lastTimestamp": "2026-01-01T00:00:00Z"});
        let format = Format {
            columns: builtin_columns("", "events"),
            include: Include::None,
        };
        let now = chrono::DateTime::parse_from_rfc3339("2026-01-01T00:05:00Z")
            .map(|t| t.with_timezone(&chrono::Utc))
            .ok()
            .unwrap_or_default();
        let table = render([&event], &format, None, now);
        let names: Vec<&str> = table["columnDefinitions"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|c| c["name"].as_str())
            .collect();
        assert_eq!(
            names,
            [
                "Last Seen",
                "Type",
                "Reason",
                "Object",
                "Subobject",
                "Source",
                "Message",
                "First Seen",
                "Count",
                "Name"
            ]
        );
        assert_eq!(
            table["rows"][0]["cells"],
            json!([
                "5m",
                "Warning",
                "Failed",
                "pod/p",
                "",
                "kubelet, node-1",
                "boom",
                "5m",
                "4",
                "e1"
            ])
        );
    }

    #[test]
    fn paths_and_ages() {
        let obj = json!({"spec": {"schedule": "@hourly", "list": [1, 2]},
            "status": {"conditions": [{"type": "Other", "status": "False"}, {"type": "Valid", "status": "True"}]}});
        assert_eq!(jsonpath(&obj, ".spec.schedule"), Some(json!("@hourly")));
        assert_eq!(jsonpath(&obj, ".spec.list[1]"), Some(json!(2)));
        assert_eq!(
            jsonpath(&obj, ".status.conditions[?(@.type==\"Valid\")].status"),
            Some(json!("True"))
        );
        assert_eq!(jsonpath(&obj, ".status.missing"), None);
        let d = chrono::Duration::seconds;
        assert_eq!(human_duration(d(45)), "45s");
        assert_eq!(human_duration(d(310)), "5m10s");
        assert_eq!(human_duration(d(3 * 3600)), "3h");
        assert_eq!(human_duration(d(52 * 3600)), "2d4h");
        assert_eq!(human_duration(d(-5)), "<invalid>");
    }
}
