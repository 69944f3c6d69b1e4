//! What the real server does to a custom object with its CRD's `openAPIV3Schema`: apply
//! defaults, prune unknown fields (or refuse them under `fieldValidation=Strict`) and validate
//! the rest, reporting problems in the same words so clients print the same errors.
//!
//! Covered: `type` (with `nullable`, `x-kubernetes-int-or-string`), `properties`,
//! `additionalProperties`, `x-kubernetes-preserve-unknown-fields`, `items`, `required`, `enum`,
//! `pattern`, `minLength`/`maxLength`, `minimum`/`maximum` (and exclusive), `minItems`/`maxItems`,
//! `format: date-time` and `default`. Not covered: `allOf`/`anyOf`/`oneOf`/`not`, CEL rules.

use serde_json::{Map, Value};

use crate::error::FieldError;
use crate::lock::lock;

/// Compiled schema patterns: a CRD has a handful, and compiling one costs far more than
/// the rest of validating an object.
static PATTERNS: std::sync::LazyLock<
    std::sync::Mutex<std::collections::HashMap<String, Option<regex::Regex>>>,
> = std::sync::LazyLock::new(Default::default);

/// The regex for `pattern`, compiled once (`None` when it does not parse).
fn compiled(pattern: &str) -> Option<regex::Regex> {
    let mut patterns = lock(&PATTERNS);
    if let Some(re) = patterns.get(pattern) {
        return re.clone();
    }
    // Patterns come from stored CRDs, so the cache stays small; bound it all the same.
    if patterns.len() > 1024 {
        patterns.clear();
    }
    let re = regex::Regex::new(pattern).ok();
    patterns.insert(pattern.to_string(), re.clone());
    re
}

/// The outcome of [`apply`] when the object cannot be stored.
#[derive(Debug, PartialEq)]
pub enum SchemaError {
    /// Unknown fields under `fieldValidation=Strict` (paths like `spec.extra`): 400 BadRequest.
    Unknown(Vec<String>),
    /// Schema violations: 422 Invalid.
    Invalid(Vec<FieldError>),
}

/// Defaults, prunes and validates `obj` (a whole custom object) against `schema`.
/// `apiVersion`, `kind` and `metadata` are the server's business and left alone.
pub fn apply(obj: &mut Value, schema: &Value, strict: bool) -> Result<(), SchemaError> {
    let mut walk = Walk::default();
    if let Some(fields) = obj.as_object_mut() {
        walk.object(fields, schema, "", true);
    }
    if strict && !walk.unknown.is_empty() {
        return Err(SchemaError::Unknown(walk.unknown));
    }
    if walk.errors.is_empty() {
        Ok(())
    } else {
        Err(SchemaError::Invalid(walk.errors))
    }
}

#[derive(Default)]
struct Walk {
    unknown: Vec<String>,
    errors: Vec<FieldError>,
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

/// The JSON-schema type name of a value, as the real server's messages name them.
fn type_name(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_i64() || n.is_u64() => "integer",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

fn flag(schema: &Value, key: &str) -> bool {
    schema.get(key).and_then(Value::as_bool) == Some(true)
}

/// A number as Go's `%v` prints it (`1`, `1.5`).
fn go_number(n: f64) -> String {
    if n.fract() == 0.0 && n.abs() < 1e15 {
        format!("{}", n as i64)
    } else {
        format!("{n}")
    }
}

impl Walk {
    fn object(&mut self, fields: &mut Map<String, Value>, schema: &Value, path: &str, root: bool) {
        let properties = schema.get("properties").and_then(Value::as_object);
        // Defaults fill in missing properties before anything is checked.
        if let Some(properties) = properties {
            for (key, child) in properties {
                if let Some(default) = child.get("default")
                    && !fields.contains_key(key)
                {
                    fields.insert(key.clone(), default.clone());
                }
            }
        }
        let additional = schema.get("additionalProperties");
        let preserve = flag(schema, "x-kubernetes-preserve-unknown-fields");
        let keys: Vec<String> = fields.keys().cloned().collect();
        for key in keys {
            if root && matches!(key.as_str(), "apiVersion" | "kind" | "metadata") {
                continue;
            }
            let child_path = join(path, &key);
            if let Some(child) = properties.and_then(|p| p.get(&key)) {
                if let Some(value) = fields.get_mut(&key) {
                    self.value(value, child, &child_path);
                }
            } else if let Some(child) = additional.filter(|a| a.is_object()) {
                if let Some(value) = fields.get_mut(&key) {
                    self.value(value, child, &child_path);
                }
            } else if !(preserve || additional == Some(&Value::Bool(true))) {
                fields.remove(&key);
                self.unknown.push(child_path);
            }
        }
        for required in schema
            .get("required")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
        {
            if !fields.contains_key(required) {
                self.errors
                    .push(FieldError::required(join(path, required), String::new()));
            }
        }
    }

    fn value(&mut self, value: &mut Value, schema: &Value, path: &str) {
        if value.is_null() && flag(schema, "nullable") {
            return;
        }
        let wanted = schema.get("type").and_then(Value::as_str);
        let actual = type_name(value);
        let type_ok = if flag(schema, "x-kubernetes-int-or-string") {
            matches!(actual, "integer" | "string")
        } else {
            match wanted {
                None => true,
                Some("number") => matches!(actual, "integer" | "number"),
                Some(t) => t == actual,
            }
        };
        if !type_ok {
            let wanted = wanted.unwrap_or("integer-or-string");
            self.errors.push(FieldError::type_invalid(
                path,
                &Value::String(actual.into()),
                format!("{path} in body must be of type {wanted}: \"{actual}\""),
            ));
            return;
        }
        if let Some(options) = schema.get("enum").and_then(Value::as_array)
            && !options.contains(value)
        {
            self.errors
                .push(FieldError::not_supported(path, value, options));
        }
        match value {
            Value::Object(fields) => self.object(fields, schema, path, false),
            Value::Array(items) => {
                let count = items.len() as u64;
                if let Some(min) = schema.get("minItems").and_then(Value::as_u64)
                    && count < min
                {
                    self.invalid(
                        path,
                        &Value::from(count),
                        format!("{path} in body should have at least {min} items"),
                    );
                }
                if let Some(max) = schema.get("maxItems").and_then(Value::as_u64)
                    && count > max
                {
                    self.errors.push(FieldError::too_many(path, count, max));
                }
                if let Some(item_schema) = schema.get("items") {
                    for (i, item) in items.iter_mut().enumerate() {
                        self.value(item, item_schema, &format!("{path}[{i}]"));
                    }
                }
            }
            Value::String(text) => self.string(text, schema, path),
            Value::Number(n) => {
                let Some(x) = n.as_f64() else { return };
                let shown = Value::Number(n.clone());
                if let Some(min) = schema.get("minimum").and_then(Value::as_f64) {
                    let exclusive = flag(schema, "exclusiveMinimum");
                    if x < min || (exclusive && x == min) {
                        let rel = if exclusive {
                            "greater than"
                        } else {
                            "greater than or equal to"
                        };
                        let min = go_number(min);
                        self.invalid(
                            path,
                            &shown,
                            format!("{path} in body should be {rel} {min}"),
                        );
                    }
                }
                if let Some(max) = schema.get("maximum").and_then(Value::as_f64) {
                    let exclusive = flag(schema, "exclusiveMaximum");
                    if x > max || (exclusive && x == max) {
                        let rel = if exclusive {
                            "less than"
                        } else {
                            "less than or equal to"
                        };
                        let max = go_number(max);
                        self.invalid(
                            path,
                            &shown,
                            format!("{path} in body should be {rel} {max}"),
                        );
                    }
                }
            }
            _ => {}
        }
    }

    fn string(&mut self, text: &str, schema: &Value, path: &str) {
        let shown = Value::String(text.to_string());
        let length = text.chars().count() as u64;
        if let Some(max) = schema.get("maxLength").and_then(Value::as_u64)
            && length > max
        {
            self.errors.push(FieldError::too_long(path, &shown, max));
        }
        if let Some(min) = schema.get("minLength").and_then(Value::as_u64)
            && length < min
        {
            self.invalid(
                path,
                &shown,
                format!("{path} in body should be at least {min} chars long"),
            );
        }
        if let Some(pattern) = schema.get("pattern").and_then(Value::as_str) {
            // An unparsable pattern is refused when the CRD is stored; here it never matches.
            let matches = compiled(pattern).is_some_and(|re| re.is_match(text));
            if !matches {
                self.invalid(
                    path,
                    &shown,
                    format!("{path} in body should match '{pattern}'"),
                );
            }
        }
        if schema.get("format").and_then(Value::as_str) == Some("date-time")
            && chrono::DateTime::parse_from_rfc3339(text).is_err()
        {
            self.errors.push(FieldError::type_invalid(
                path,
                &shown,
                format!("{path} in body must be of type date-time: \"{text}\""),
            ));
        }
    }

    fn invalid(&mut self, path: &str, value: &Value, detail: String) {
        self.errors.push(FieldError::invalid(path, value, detail));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn schema() -> Value {
        json!({"type": "object", "properties": {
            "spec": {"type": "object", "required": ["size"], "properties": {
                "size": {"type": "integer", "minimum": 1, "maximum": 10},
                "color": {"type": "string", "enum": ["red", "blue"], "default": "red"},
                "label": {"type": "string", "pattern": "^[a-z]+$", "minLength": 2},
                "at": {"type": "string", "format": "date-time"},
                "tags": {"type": "array", "items": {"type": "string"}},
                "free": {"type": "object", "x-kubernetes-preserve-unknown-fields": true},
                "env": {"type": "object", "additionalProperties": {"type": "string"}},
            }},
        }})
    }

    fn messages(err: SchemaError) -> Vec<String> {
        match err {
            SchemaError::Invalid(errors) => errors.iter().map(ToString::to_string).collect(),
            SchemaError::Unknown(paths) => paths,
        }
    }

    #[test]
    fn defaults_prunes_and_keeps_preserved_fields() {
        let mut obj = json!({"apiVersion": "x/v1", "kind": "X", "metadata": {"name": "a"},
            "spec": {"size": 2, "extra": 1, "free": {"any": [1]}, "env": {"A": "b"}}, "junk": true});
        apply(&mut obj, &schema(), false).unwrap();
        assert_eq!(
            obj,
            json!({"apiVersion": "x/v1", "kind": "X", "metadata": {"name": "a"},
            "spec": {"size": 2, "color": "red", "free": {"any": [1]}, "env": {"A": "b"}}})
        );
        let mut obj = json!({"spec": {"size": 2, "extra": 1, "tags": ["a"]}, "junk": true});
        assert_eq!(
            apply(&mut obj, &schema(), true),
            Err(SchemaError::Unknown(vec![
                "junk".into(),
                "spec.extra".into()
            ]))
        );
    }

    #[test]
    fn reports_violations_like_the_real_server() {
        let mut obj = json!({"spec": {"size": "3"}});
        assert_eq!(
            messages(apply(&mut obj, &schema(), false).unwrap_err()),
            [
                "spec.size: Invalid value: \"string\": spec.size in body must be of type integer: \"string\""
            ]
        );
        let mut obj = json!({"spec": {"color": "green", "label": "A", "at": "yesterday",
            "tags": [1]}});
        assert_eq!(
            messages(apply(&mut obj, &schema(), false).unwrap_err()),
            [
                "spec.at: Invalid value: \"yesterday\": spec.at in body must be of type date-time: \"yesterday\"",
                "spec.color: Unsupported value: \"green\": supported values: \"red\", \"blue\"",
                "spec.label: Invalid value: \"A\": spec.label in body should be at least 2 chars long",
                "spec.label: Invalid value: \"A\": spec.label in body should match '^[a-z]+$'",
                "spec.tags[0]: Invalid value: \"integer\": spec.tags[0] in body must be of type string: \"integer\"",
                "spec.size: Required value",
            ]
        );
        let mut obj = json!({"spec": {"size": 0}});
        assert_eq!(
            messages(apply(&mut obj, &schema(), false).unwrap_err()),
            ["spec.size: Invalid value: 0: spec.size in body should be greater than or equal to 1"]
        );
        let mut obj = json!({"spec": {"size": 11}});
        assert_eq!(
            messages(apply(&mut obj, &schema(), false).unwrap_err()),
            ["spec.size: Invalid value: 11: spec.size in body should be less than or equal to 10"]
        );
    }
}
