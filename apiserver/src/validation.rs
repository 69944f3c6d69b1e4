//! Validation the real API server performs on every object: names, and CRD schemas.

use serde_json::Value;

use crate::error::{ApiError, FieldError};
use crate::registry::ResourceType;

const DNS1123_SUBDOMAIN: &str = "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')";
const DNS1123_LABEL: &str = "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')";

/// A DNS-1123 label's characters; length is checked apart, since subdomain parts may be
/// longer than 63 in the real server's regex.
fn is_label(s: &str) -> bool {
    !s.is_empty()
        && s.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
        && s.ends_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
}

/// Checks `metadata.name` the way the real server does for the kind.
pub fn validate_name(t: &ResourceType, name: &str) -> Result<(), ApiError> {
    let invalid = |msg: String| {
        ApiError::invalid_object(
            t,
            name,
            vec![("metadata.name", format!("Invalid value: \"{name}\": {msg}"))],
        )
    };
    let label_only = t.plural == "namespaces" && t.group.is_empty();
    if label_only {
        let mut causes = Vec::new();
        if name.len() > 63 {
            causes.push("must be no more than 63 characters");
        }
        if !is_label(name) {
            causes.push(DNS1123_LABEL);
        }
        return match causes.as_slice() {
            [] => Ok(()),
            _ => Err(ApiError::invalid_object(
                t,
                name,
                causes
                    .iter()
                    .map(|c| ("metadata.name", format!("Invalid value: \"{name}\": {c}")))
                    .collect(),
            )),
        };
    }
    if name.len() > 253 {
        return Err(invalid("must be no more than 253 characters".into()));
    }
    if !name.split('.').all(is_label) {
        return Err(invalid(DNS1123_SUBDOMAIN.into()));
    }
    if t.plural == "jobs" && t.group == "batch" && name.len() > 63 {
        // The real server copies the name into the pod template's `job-name` labels, whose
        // values stop at 63 characters, and reports it there.
        return Err(ApiError::invalid_object(
            t,
            name,
            vec![(
                "spec.template.labels",
                format!("Invalid value: \"{name}\": must be no more than 63 characters"),
            )],
        ));
    }
    Ok(())
}

/// The checks the real server makes on a CRD that matter to clients: its name, and that each
/// version's schema is structural (every field typed, the root an object). Single-schema CRDs
/// report under `spec.validation.openAPIV3Schema`, as the real server does after hoisting
/// identical per-version schemas.
pub fn validate_crd(crd: &Value) -> Result<(), Vec<FieldError>> {
    let mut errors = Vec::new();
    let text = |p: &str| crd.pointer(p).and_then(Value::as_str).unwrap_or_default();
    let (name, plural, group) = (
        text("/metadata/name"),
        text("/spec/names/plural"),
        text("/spec/group"),
    );
    if name != format!("{plural}.{group}") {
        errors.push(FieldError::invalid(
            "metadata.name",
            &Value::String(name.to_string()),
            "must be spec.names.plural+\".\"+spec.group".to_string(),
        ));
    }
    let versions = crd
        .pointer("/spec/versions")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let schemas: Vec<Option<&Value>> = versions
        .iter()
        .map(|v| v.pointer("/schema/openAPIV3Schema"))
        .collect();
    let hoisted = schemas.windows(2).all(|w| w[0] == w[1]);
    for (i, schema) in schemas.iter().enumerate() {
        if hoisted && i > 0 {
            break;
        }
        let prefix = if hoisted {
            "spec.validation.openAPIV3Schema".to_string()
        } else {
            format!("spec.versions[{i}].schema.openAPIV3Schema")
        };
        match schema {
            None => errors.push(FieldError::required(
                format!("spec.versions[{i}].schema.openAPIV3Schema"),
                "schemas are required".to_string(),
            )),
            Some(schema) => structural(&prefix, schema, Place::Root, &mut errors),
        }
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors)
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Place {
    Root,
    Field,
    Item,
}

fn structural(path: &str, node: &Value, place: Place, errors: &mut Vec<FieldError>) {
    let flag = |key: &str| node.get(key) == Some(&Value::Bool(true));
    let typed = node.get("type").and_then(Value::as_str);
    match (typed, place) {
        (None, Place::Root) => errors.push(FieldError::required(
            format!("{path}.type"),
            "must not be empty at the root".to_string(),
        )),
        (Some(t), Place::Root) if t != "object" => errors.push(FieldError::invalid(
            format!("{path}.type"),
            &Value::String(t.to_string()),
            "must be object at the root".to_string(),
        )),
        (None, _)
            if flag("x-kubernetes-preserve-unknown-fields")
                || flag("x-kubernetes-int-or-string") => {}
        (None, Place::Field) => errors.push(FieldError::required(
            format!("{path}.type"),
            "must not be empty for specified object fields".to_string(),
        )),
        (None, Place::Item) => errors.push(FieldError::required(
            format!("{path}.type"),
            "must not be empty for specified array items".to_string(),
        )),
        _ => {}
    }
    if let Some(props) = node.get("properties").and_then(Value::as_object) {
        for (name, child) in props {
            structural(
                &format!("{path}.properties[{name}]"),
                child,
                Place::Field,
                errors,
            );
        }
    }
    match node.get("items") {
        Some(items) => structural(&format!("{path}.items"), items, Place::Item, errors),
        None if typed == Some("array") => errors.push(FieldError::required(
            format!("{path}.items"),
            "must be specified".to_string(),
        )),
        None => {}
    }
    if let Some(child) = node.get("additionalProperties").filter(|a| a.is_object()) {
        structural(
            &format!("{path}.additionalProperties"),
            child,
            Place::Field,
            errors,
        );
    }
}
