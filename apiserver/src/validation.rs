//! Validation the real API server performs on every object: names, and CRD schemas.

use serde_json::Value;

use crate::error::ApiError;
use crate::registry::ResourceType;

const DNS1123_SUBDOMAIN: &str = "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')";
const DNS1123_LABEL: &str = "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')";

fn is_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
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
        if name.len() > 63 {
            return Err(invalid("must be no more than 63 characters".into()));
        }
        if !is_label(name) {
            return Err(invalid(DNS1123_LABEL.into()));
        }
        return Ok(());
    }
    if name.len() > 253 {
        return Err(invalid("must be no more than 253 characters".into()));
    }
    if !name.split('.').all(is_label) {
        return Err(invalid(DNS1123_SUBDOMAIN.into()));
    }
    if t.plural == "jobs" && t.group == "batch" && name.len() > 63 {
        // The Job controller labels pods with the Job's name.
        return Err(invalid("must be no more than 63 characters".into()));
    }
    Ok(())
}

/// Structural-schema checks on a CRD (the subset Charon's tests rely on).
pub fn validate_crd(crd: &Value) -> Result<(), Vec<(&'static str, String)>> {
    let mut causes = Vec::new();
    let versions = crd
        .pointer("/spec/versions")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    for (i, v) in versions.iter().enumerate() {
        match v.pointer("/schema/openAPIV3Schema") {
            None => causes.push((
                "spec.versions[].schema.openAPIV3Schema",
                format!("Required value: schemas are required (version {i})"),
            )),
            Some(schema) => {
                let mut problems = Vec::new();
                structural(".", schema, true, &mut problems);
                for p in problems {
                    causes.push(("spec.validation.openAPIV3Schema", p));
                }
            }
        }
    }
    if causes.is_empty() {
        Ok(())
    } else {
        Err(causes)
    }
}

fn structural(path: &str, node: &Value, root: bool, problems: &mut Vec<String>) {
    let preserve = node.get("x-kubernetes-preserve-unknown-fields") == Some(&Value::Bool(true));
    let int_or_string = node.get("x-kubernetes-int-or-string") == Some(&Value::Bool(true));
    if node.get("type").is_none() && !preserve && !int_or_string {
        problems.push(format!(
            "{}.type: Required value: must not be empty for specified object fields",
            path.trim_end_matches('.')
        ));
    }
    if root
        && node
            .get("type")
            .and_then(Value::as_str)
            .is_some_and(|t| t != "object")
    {
        problems.push("type: Invalid value: must be object at the root".to_string());
    }
    if let Some(props) = node.get("properties").and_then(Value::as_object) {
        for (name, child) in props {
            structural(
                &format!("{path}properties[{name}]."),
                child,
                false,
                problems,
            );
        }
    }
    if let Some(items) = node.get("items") {
        structural(&format!("{path}items."), items, false, problems);
    }
}
