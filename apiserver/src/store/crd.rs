//! CustomResourceDefinitions in the store: the kinds a stored CRD serves, its status, and
//! its schema applied to custom objects.

use serde_json::{Value, json};

use super::objects::Objects;
use crate::error::ApiError;
use crate::registry::{self, ResourceType};
use crate::schema::SchemaError;
use crate::time::now;

/// Serves a new CRD's kinds and gives it the status the real server does: its names
/// accepted and Established.
pub fn register(types: &mut Vec<ResourceType>, crd: &mut Value) -> Result<(), ApiError> {
    serve(types, crd)?;
    let names = crd.pointer("/spec/names").cloned().unwrap_or(json!({}));
    let time = now();
    crd["status"] = json!({
        "acceptedNames": names,
        "storedVersions": crd.pointer("/spec/versions").and_then(Value::as_array).into_iter().flatten()
            .filter(|v| v.get("storage").and_then(Value::as_bool) == Some(true))
            .filter_map(|v| v.get("name").cloned()).collect::<Vec<_>>(),
        "conditions": [
            {"type": "NamesAccepted", "status": "True", "reason": "NoConflicts", "message": "no conflicts found", "lastTransitionTime": time},
            {"type": "Established", "status": "True", "reason": "InitialNamesAccepted", "message": "the initial names have been accepted", "lastTransitionTime": time},
        ],
    });
    Ok(())
}

/// Serves the resource types a CRD declares, replacing what it served before.
pub fn serve(types: &mut Vec<ResourceType>, crd: &Value) -> Result<(), ApiError> {
    let served = registry::from_crd(crd).map_err(ApiError::bad_request)?;
    unserve(types, crd);
    types.extend(served);
    Ok(())
}

/// Stops serving a deleted CRD's types (the caller drops their objects, as the real server
/// does).
pub fn unserve(types: &mut Vec<ResourceType>, crd: &Value) {
    let group = crd
        .pointer("/spec/group")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let plural = crd
        .pointer("/spec/names/plural")
        .and_then(Value::as_str)
        .unwrap_or_default();
    types.retain(|t| !(t.group == group && t.plural == plural));
}

/// The entry of `spec.versions` of the CRD that serves `t`.
pub fn version_of<'a>(objects: &'a Objects, t: &ResourceType) -> Option<&'a Value> {
    const CRDS: &str = "apiextensions.k8s.io/customresourcedefinitions";
    if registry::is_builtin(t) {
        return None;
    }
    objects
        .range((CRDS.to_string(), String::new(), String::new())..)
        .take_while(|((k, _, _), _)| k == CRDS)
        .map(|(_, crd)| crd)
        .find(|crd| {
            crd.pointer("/spec/group").and_then(Value::as_str) == Some(t.group.as_str())
                && crd.pointer("/spec/names/plural").and_then(Value::as_str)
                    == Some(t.plural.as_str())
        })
        .and_then(|crd| {
            crd.pointer("/spec/versions")?
                .as_array()?
                .iter()
                .find(|v| v.get("name").and_then(Value::as_str) == Some(t.version.as_str()))
        })
}

/// Applies the CRD schema of `t` (if it is a custom resource) to `obj`: defaults, pruning and
/// validation, with errors as the real server words them.
pub fn apply_schema(
    objects: &Objects,
    t: &ResourceType,
    name: &str,
    obj: &mut Value,
    strict: bool,
) -> Result<(), ApiError> {
    // Borrowed from the stored CRD: the store is locked for the whole write anyway.
    let Some(schema) = version_of(objects, t).and_then(|v| v.pointer("/schema/openAPIV3Schema"))
    else {
        return Ok(());
    };
    match crate::schema::apply(obj, schema, strict) {
        Ok(()) => Ok(()),
        Err(SchemaError::Invalid(errors)) => Err(ApiError::invalid(t, name, errors)),
        Err(SchemaError::Unknown(paths)) => {
            let fields: Vec<String> = paths
                .iter()
                .map(|p| format!("unknown field \"{p}\""))
                .collect();
            Err(ApiError::bad_request(format!(
                "{kind} in version \"{version}\" cannot be handled as a {kind}: strict decoding error: {}",
                fields.join(", "),
                kind = t.kind,
                version = t.version,
            )))
        }
    }
}
