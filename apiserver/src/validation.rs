//! Validation the real API server performs on every object: names, and CRD schemas.

use serde_json::Value;

use crate::error::{ApiError, FieldError};
use crate::registry::ResourceType;

pub const DNS1123_SUBDOMAIN: &str = "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')";
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

/// `IsDNS1123Subdomain`: dot-separated labels, at most 253 characters.
pub fn is_dns_subdomain(s: &str) -> bool {
    s.len() <= 253 && s.split('.').all(is_label)
}

/// `IsDNS1123Label`: a label's characters, at most 63 of them.
pub fn is_dns_label(s: &str) -> bool {
    s.len() <= 63 && is_label(s)
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

/// The real server's checks of a pod spec's volumes and of its containers' volume mounts
/// (`ValidateVolumes`, `validateVolumeMounts`): volume names are DNS-1123 labels, unique;
/// the files a secret, configMap or downwardAPI source writes (`items[].path`, also under
/// `projected`) and a mount's `subPath` stay inside the volume. `path` is the pod spec's.
pub fn pod_volumes(spec: &Value, path: &str) -> Vec<FieldError> {
    let mut errors = Vec::new();
    let mut names = std::collections::HashSet::new();
    let volumes = spec.get("volumes").and_then(Value::as_array);
    for (i, volume) in volumes.into_iter().flatten().enumerate() {
        let at = format!("{path}.volumes[{i}]");
        let name = volume
            .get("name")
            .and_then(Value::as_str)
            .unwrap_or_default();
        if name.is_empty() {
            errors.push(FieldError::required(format!("{at}.name"), String::new()));
        } else {
            let shown = Value::String(name.to_string());
            if name.len() > 63 {
                errors.push(FieldError::invalid(
                    format!("{at}.name"),
                    &shown,
                    "must be no more than 63 characters".into(),
                ));
            }
            if !is_label(name) {
                errors.push(FieldError::invalid(
                    format!("{at}.name"),
                    &shown,
                    DNS1123_LABEL.into(),
                ));
            }
            if !names.insert(name) {
                errors.push(FieldError::new(
                    format!("{at}.name"),
                    "FieldValueDuplicate",
                    format!("Duplicate value: {shown}"),
                ));
            }
        }
        if let Some(claim) = volume.get("persistentVolumeClaim")
            && claim
                .get("claimName")
                .and_then(Value::as_str)
                .is_none_or(str::is_empty)
        {
            errors.push(FieldError::required(
                format!("{at}.persistentVolumeClaim.claimName"),
                String::new(),
            ));
        }
        for source in ["secret", "configMap", "downwardAPI"] {
            if let Some(items) = volume
                .get(source)
                .and_then(|s| s.get("items"))
                .and_then(Value::as_array)
            {
                item_paths(items, &format!("{at}.{source}.items"), &mut errors);
            }
        }
        let sources = volume
            .pointer("/projected/sources")
            .and_then(Value::as_array);
        for (j, projected) in sources.into_iter().flatten().enumerate() {
            for source in ["secret", "configMap", "downwardAPI"] {
                if let Some(items) = projected
                    .get(source)
                    .and_then(|s| s.get("items"))
                    .and_then(Value::as_array)
                {
                    let at = format!("{at}.projected.sources[{j}].{source}.items");
                    item_paths(items, &at, &mut errors);
                }
            }
        }
    }
    for kind in ["initContainers", "containers"] {
        let containers = spec.get(kind).and_then(Value::as_array);
        for (i, container) in containers.into_iter().flatten().enumerate() {
            let mounts = container.get("volumeMounts").and_then(Value::as_array);
            for (j, mount) in mounts.into_iter().flatten().enumerate() {
                let at = format!("{path}.{kind}[{i}].volumeMounts[{j}]");
                let text = |k: &str| mount.get(k).and_then(Value::as_str).unwrap_or_default();
                let name = text("name");
                if name.is_empty() {
                    errors.push(FieldError::required(format!("{at}.name"), String::new()));
                } else if !names.contains(name) {
                    errors.push(FieldError::new(
                        format!("{at}.name"),
                        "FieldValueNotFound",
                        format!("Not found: {}", Value::String(name.to_string())),
                    ));
                }
                if text("mountPath").is_empty() {
                    errors.push(FieldError::required(
                        format!("{at}.mountPath"),
                        String::new(),
                    ));
                }
                let sub = text("subPath");
                if !sub.is_empty() {
                    descending_path(sub, &format!("{at}.subPath"), &mut errors);
                }
            }
        }
    }
    errors
}

/// The `path` of each of a volume source's `items` (`validateKeyToPath`): required, relative,
/// without `..` elements, and not starting with `..`.
fn item_paths(items: &[Value], at: &str, errors: &mut Vec<FieldError>) {
    for (k, item) in items.iter().enumerate() {
        let field = format!("{at}[{k}].path");
        let path = item.get("path").and_then(Value::as_str).unwrap_or_default();
        if path.is_empty() {
            errors.push(FieldError::required(field.clone(), String::new()));
        }
        descending_path(path, &field, errors);
        if path.starts_with("..") && !path.starts_with("../") {
            errors.push(FieldError::invalid(
                field,
                &Value::String(path.to_string()),
                "must not start with '..'".into(),
            ));
        }
    }
}

/// `validateLocalDescendingPath`: relative, and no `..` element (one error however many).
fn descending_path(path: &str, field: &str, errors: &mut Vec<FieldError>) {
    let shown = Value::String(path.to_string());
    if path.starts_with('/') {
        errors.push(FieldError::invalid(
            field,
            &shown,
            "must be a relative path".into(),
        ));
    }
    // Go's filepath.ToSlash leaves backslashes alone on Linux: only `/` separates.
    if path.split('/').any(|part| part == "..") {
        errors.push(FieldError::invalid(
            field,
            &shown,
            "must not contain '..'".into(),
        ));
    }
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
