//! The checks the real API server makes on every object's metadata, whatever its kind:
//! label keys and values, annotation keys and their total size, and the same on the pod
//! template of workload kinds. Messages are the real server's.

use serde_json::{Map, Value};

use crate::error::ApiError;
use crate::registry::ResourceType;

const QUALIFIED_NAME: &str = "must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyName',  or 'my.name',  or '123-abc', regex used for validation is '([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]')";
const LABEL_VALUE: &str = "a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyValue',  or 'my_value',  or '12345', regex used for validation is '(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?')";
const DNS1123_SUBDOMAIN: &str = "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')";

/// Longest label value, and longest name part of a qualified name.
const MAX_LABEL: usize = 63;
/// Longest prefix of a qualified name (a DNS subdomain).
const MAX_PREFIX: usize = 253;
/// Most bytes all annotations of one object may take, keys and values together.
pub const MAX_ANNOTATIONS_BYTES: usize = 256 * 1024;

/// `[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?`
fn is_qualified_part(s: &str) -> bool {
    let alnum = |c: char| c.is_ascii_alphanumeric();
    !s.is_empty()
        && s.starts_with(alnum)
        && s.ends_with(alnum)
        && s.chars().all(|c| alnum(c) || matches!(c, '-' | '_' | '.'))
}

fn is_subdomain(s: &str) -> bool {
    s.split('.').all(|part| {
        !part.is_empty()
            && part.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
            && part.ends_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
            && part
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
    })
}

/// What is wrong with `key` as a qualified name (`[prefix/]name`), as the real server says.
fn qualified_name_errors(key: &str) -> Vec<String> {
    let mut errors = Vec::new();
    let parts: Vec<&str> = key.split('/').collect();
    let name = match parts.as_slice() {
        [name] => *name,
        [prefix, name] => {
            if prefix.is_empty() {
                errors.push("prefix part must be non-empty".to_string());
            } else {
                if prefix.len() > MAX_PREFIX {
                    errors.push(format!(
                        "prefix part must be no more than {MAX_PREFIX} characters"
                    ));
                }
                if !is_subdomain(prefix) {
                    errors.push(format!("prefix part {DNS1123_SUBDOMAIN}"));
                }
            }
            name
        }
        _ => {
            return vec![format!(
                "a qualified name {QUALIFIED_NAME} with an optional DNS subdomain prefix and '/' (e.g. 'example.com/MyName')"
            )];
        }
    };
    if name.is_empty() {
        errors.push("name part must be non-empty".to_string());
    } else {
        if name.len() > MAX_LABEL {
            errors.push(format!(
                "name part must be no more than {MAX_LABEL} characters"
            ));
        }
        if !is_qualified_part(name) {
            errors.push(format!("name part {QUALIFIED_NAME}"));
        }
    }
    errors
}

fn label_value_errors(value: &str) -> Vec<String> {
    let mut errors = Vec::new();
    if value.len() > MAX_LABEL {
        errors.push(format!("must be no more than {MAX_LABEL} characters"));
    }
    if !value.is_empty() && !is_qualified_part(value) {
        errors.push(LABEL_VALUE.to_string());
    }
    errors
}

/// Go's `%q` of a string, as the real server quotes values in messages.
fn quoted(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| format!("\"{s}\""))
}

/// The problems of one ObjectMeta at `path` (`metadata`, `spec.template.metadata`).
fn meta_errors(meta: &Map<String, Value>, path: &str, causes: &mut Vec<(String, String)>) {
    let field = |name: &str| format!("{path}.{name}");
    match meta.get("labels") {
        None | Some(Value::Null) => {}
        Some(Value::Object(labels)) => {
            for (key, value) in labels {
                for error in qualified_name_errors(key) {
                    causes.push((
                        field("labels"),
                        format!("Invalid value: {}: {error}", quoted(key)),
                    ));
                }
                let value = value.as_str().unwrap_or_default();
                for error in label_value_errors(value) {
                    causes.push((
                        field("labels"),
                        format!("Invalid value: {}: {error}", quoted(value)),
                    ));
                }
            }
        }
        Some(_) => {}
    }
    if let Some(Value::Object(annotations)) = meta.get("annotations") {
        let mut total = 0;
        for (key, value) in annotations {
            // The real server checks annotation keys lowercased.
            for error in qualified_name_errors(&key.to_lowercase()) {
                causes.push((
                    field("annotations"),
                    format!("Invalid value: {}: {error}", quoted(key)),
                ));
            }
            total += key.len() + value.as_str().map_or(0, str::len);
        }
        if total > MAX_ANNOTATIONS_BYTES {
            causes.push((
                field("annotations"),
                format!("Too long: may not be more than {MAX_ANNOTATIONS_BYTES} bytes"),
            ));
        }
    }
}

/// Checks the metadata of `obj` (and of its pod template, for the kinds that have one) as
/// the real server does on create and update: 422 naming each field.
pub fn validate(t: &ResourceType, name: &str, obj: &Value) -> Result<(), ApiError> {
    let mut causes = Vec::new();
    if let Some(meta) = obj.get("metadata").and_then(Value::as_object) {
        meta_errors(meta, "metadata", &mut causes);
    }
    let template = match (t.group.as_str(), t.plural.as_str()) {
        ("batch", "jobs")
        | ("apps", "deployments" | "replicasets" | "statefulsets" | "daemonsets") => {
            obj.pointer("/spec/template/metadata")
        }
        ("batch", "cronjobs") => obj.pointer("/spec/jobTemplate/spec/template/metadata"),
        ("", "podtemplates") => obj.pointer("/template/metadata"),
        _ => None,
    };
    if let Some(meta) = template.and_then(Value::as_object) {
        let path = if t.plural == "cronjobs" {
            "spec.jobTemplate.spec.template.metadata"
        } else if t.plural == "podtemplates" {
            "template.metadata"
        } else {
            "spec.template.metadata"
        };
        meta_errors(meta, path, &mut causes);
    }
    if causes.is_empty() {
        return Ok(());
    }
    Err(ApiError::invalid_object(
        t,
        name,
        causes
            .iter()
            .map(|(field, body)| (field.as_str(), body.clone()))
            .collect(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_keys_and_values_as_the_real_server_judges_them() {
        assert!(qualified_name_errors("app").is_empty());
        assert!(qualified_name_errors("charon.dev/instance").is_empty());
        assert!(qualified_name_errors("app.kubernetes.io/name").is_empty());
        assert_eq!(
            qualified_name_errors("a/b/c").len(),
            1,
            "two slashes are one error"
        );
        assert_eq!(
            qualified_name_errors(&"x".repeat(64)),
            ["name part must be no more than 63 characters"]
        );
        assert!(qualified_name_errors("Bad.Prefix/x")[0].starts_with("prefix part a lowercase"));
        assert_eq!(
            qualified_name_errors("/x"),
            ["prefix part must be non-empty"]
        );
        assert!(qualified_name_errors("-x")[0].starts_with("name part must consist of"));
        assert!(label_value_errors("").is_empty());
        assert!(label_value_errors("v1.2_3-x").is_empty());
        assert_eq!(
            label_value_errors(&"v".repeat(64)),
            ["must be no more than 63 characters"]
        );
        assert_eq!(label_value_errors("a b"), [LABEL_VALUE]);
    }

    #[test]
    fn annotations_are_bounded_in_total() {
        let meta = serde_json::json!({"annotations": {"a": "x".repeat(MAX_ANNOTATIONS_BYTES)}});
        let mut causes = Vec::new();
        let meta = meta.as_object().expect("an object literal");
        meta_errors(meta, "metadata", &mut causes);
        assert_eq!(
            causes,
            [(
                "metadata.annotations".to_string(),
                "Too long: may not be more than 262144 bytes".to_string()
            )]
        );
    }
}
