//! What the Job controller, garbage collector and simulated kubelet share: object helpers,
//! read-modify-write with retries, random name suffixes, and an Event recorder.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use serde_json::{Value, json};

use crate::error::ApiError;
use crate::lock::lock;
use crate::registry::ResourceType;
use crate::store::{Store, Write};
pub use crate::time::{now, parse_time};

/// The built-in type `group/v1/plural`; built-ins are always served.
pub fn builtin(store: &Store, group: &str, plural: &str) -> Option<ResourceType> {
    store.find_type(group, "v1", plural)
}

/// Tasks a controller carries out between two yields to the runtime.
const YIELD_EVERY: usize = 64;

/// Yields to the runtime every [`YIELD_EVERY`] tasks of a pass (call with each task's
/// index): a long pass (after a rescan, or after falling behind the events) must not hold a
/// worker thread, or a shutdown's abort, until it ends.
pub async fn pace(task: usize) {
    if task > 0 && task.is_multiple_of(YIELD_EVERY) {
        tokio::task::yield_now().await;
    }
}

/// A string at `pointer`, or "".
pub fn text<'a>(v: &'a Value, pointer: &str) -> &'a str {
    v.pointer(pointer)
        .and_then(Value::as_str)
        .unwrap_or_default()
}

/// Five characters from the alphabet Kubernetes uses for generated names (no vowels, no
/// look-alike digits), as in `<job>-x7k2p`.
pub fn random_suffix() -> String {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    uuid::Uuid::new_v4()
        .as_bytes()
        .iter()
        .take(5)
        .map(|b| char::from(ALPHABET[usize::from(*b) % ALPHABET.len()]))
        .collect()
}

/// Whether a finalizer list contains `name`.
pub fn has_finalizer(obj: &Value, name: &str) -> bool {
    obj.pointer("/metadata/finalizers")
        .and_then(Value::as_array)
        .is_some_and(|f| f.iter().any(|x| x == name))
}

/// Reads, changes and writes an object, retrying on conflicts. `change` returns false to
/// leave it as it is. `Ok(None)` when it does not exist (any more).
pub fn modify(
    store: &Store,
    t: &ResourceType,
    namespace: &str,
    name: &str,
    status_only: bool,
    mut change: impl FnMut(&mut Value) -> bool,
) -> Result<Option<Value>, ApiError> {
    for _ in 0..20 {
        let mut obj = match store.get(t, namespace, name) {
            Ok(obj) => obj,
            Err(err) if err.code == 404 => return Ok(None),
            Err(err) => return Err(err),
        };
        if !change(&mut obj) {
            return Ok(Some(obj));
        }
        match store.update(t, namespace, name, obj, status_only, Write::default()) {
            Ok(written) => return Ok(Some(Arc::unwrap_or_clone(written))),
            Err(err) if err.code == 409 => continue,
            Err(err) if err.code == 404 => return Ok(None),
            Err(err) => return Err(err),
        }
    }
    Err(ApiError::conflict(t, name))
}

/// Writes `status` through `/status` to the object `namespace/name` unless it has it already,
/// and only while the stored object is the one with `uid` (one re-created under the same
/// name is not this one's to write). The object as stored after; `Ok(None)` when it is gone.
pub fn write_status(
    store: &Store,
    t: &ResourceType,
    namespace: &str,
    name: &str,
    uid: &str,
    status: &Value,
) -> Result<Option<Value>, ApiError> {
    modify(store, t, namespace, name, true, |obj| {
        if text(obj, "/metadata/uid") != uid || obj.get("status") == Some(status) {
            return false;
        }
        obj["status"] = status.clone();
        true
    })
}

/// Removes `finalizer` from an object; gone objects are fine.
pub fn remove_finalizer(
    store: &Store,
    t: &ResourceType,
    namespace: &str,
    name: &str,
    finalizer: &str,
) {
    let result = modify(store, t, namespace, name, false, |obj| {
        let Some(list) = obj
            .pointer_mut("/metadata/finalizers")
            .and_then(Value::as_array_mut)
        else {
            return false;
        };
        let before = list.len();
        list.retain(|f| f != finalizer);
        list.len() != before
    });
    if let Err(err) = result {
        tracing::debug!(%err, name, finalizer, "removing a finalizer");
    }
}

/// The reference an Event or an ownerReference makes to `obj`.
pub fn reference(obj: &Value) -> Value {
    json!({
        "apiVersion": obj.get("apiVersion").cloned().unwrap_or(Value::Null),
        "kind": obj.get("kind").cloned().unwrap_or(Value::Null),
        "name": text(obj, "/metadata/name"),
        "namespace": text(obj, "/metadata/namespace"),
        "uid": text(obj, "/metadata/uid"),
        "resourceVersion": text(obj, "/metadata/resourceVersion"),
    })
}

/// Writes core/v1 Events the way client-go's recorder does, so `kubectl describe` lists
/// them: repeats of the same event bump `count` and `lastTimestamp` rather than adding rows.
pub struct Recorder {
    component: &'static str,
    host: Option<String>,
    seen: Mutex<HashMap<String, String>>,
}

impl Recorder {
    /// A recorder for `component` (e.g. `job-controller`, `kubelet`) on `host`, if any.
    pub fn new(component: &'static str, host: Option<String>) -> Self {
        Recorder {
            component,
            host,
            seen: Mutex::new(HashMap::new()),
        }
    }

    /// Records an event about `obj`; `field_path` names a container (`spec.containers{x}`).
    /// Failures (e.g. a namespace being deleted) are only logged: events are best effort.
    pub fn record(
        &self,
        store: &Store,
        obj: &Value,
        field_path: Option<&str>,
        type_: &str,
        reason: &str,
        message: &str,
    ) {
        let Some(events) = builtin(store, "", "events") else {
            return;
        };
        let namespace = match text(obj, "/metadata/namespace") {
            "" => "default",
            ns => ns,
        }
        .to_string();
        let mut involved = reference(obj);
        if let Some(path) = field_path {
            involved["fieldPath"] = json!(path);
        }
        let key = format!(
            "{}|{}|{}|{}|{}|{}",
            text(obj, "/metadata/uid"),
            field_path.unwrap_or_default(),
            type_,
            reason,
            message,
            namespace
        );
        let time = now();
        let existing = lock(&self.seen).get(&key).cloned();
        if let Some(name) = existing {
            let bumped = modify(store, &events, &namespace, &name, false, |ev| {
                let count = ev.get("count").and_then(Value::as_i64).unwrap_or(1);
                ev["count"] = json!(count + 1);
                ev["lastTimestamp"] = json!(time);
                true
            });
            if matches!(bumped, Ok(Some(_))) {
                return;
            }
        }
        let name = format!(
            "{}.{:x}",
            text(obj, "/metadata/name"),
            chrono::Utc::now().timestamp_nanos_opt().unwrap_or_default()
        );
        let mut source = json!({"component": self.component});
        if let Some(host) = &self.host {
            source["host"] = json!(host);
        }
        let event = json!({
            "metadata": {"name": name, "namespace": namespace},
            "involvedObject": involved,
            "reason": reason,
            "message": message,
            "source": source,
            "firstTimestamp": time,
            "lastTimestamp": time,
            "count": 1,
            "type": type_,
            "eventTime": null,
            "reportingComponent": self.component,
            "reportingInstance": self.host.clone().unwrap_or_default(),
        });
        match store.create(&events, &namespace, event, Write::default()) {
            Ok(_) => {
                let mut seen = lock(&self.seen);
                if seen.len() > 10_000 {
                    seen.clear();
                }
                seen.insert(key, name);
            }
            Err(err) => tracing::debug!(%err, reason, "recording an event"),
        }
    }
}
