//! API errors as `metav1.Status` bodies shaped like the real server's, so clients print the
//! same messages.

use serde_json::{Value, json};

use crate::registry::ResourceType;

/// An error response.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
#[error("{code} {reason}: {message}")]
pub struct ApiError {
    /// HTTP status code.
    pub code: u16,
    /// Machine-readable reason (NotFound, AlreadyExists, Conflict, Invalid, …).
    pub reason: &'static str,
    /// The message clients print.
    pub message: String,
    /// `details` of the Status.
    pub details: Option<Value>,
}

fn details(t: &ResourceType, name: &str) -> Value {
    json!({"name": name, "group": t.group, "kind": t.plural})
}

impl ApiError {
    /// 404 for a missing object.
    pub fn not_found(t: &ResourceType, name: &str) -> Self {
        ApiError {
            code: 404,
            reason: "NotFound",
            message: format!("{} \"{name}\" not found", t.group_resource()),
            details: Some(details(t, name)),
        }
    }

    /// 404 for a path nothing is served at.
    pub fn no_route(path: &str) -> Self {
        ApiError {
            code: 404,
            reason: "NotFound",
            message: format!("the server could not find the requested resource ({path})"),
            details: None,
        }
    }

    /// 404 for creating into a missing namespace.
    pub fn namespace_not_found(namespace: &str) -> Self {
        ApiError {
            code: 404,
            reason: "NotFound",
            message: format!("namespaces \"{namespace}\" not found"),
            details: Some(json!({"name": namespace, "kind": "namespaces"})),
        }
    }

    /// 409 for creating an existing object.
    pub fn already_exists(t: &ResourceType, name: &str) -> Self {
        ApiError {
            code: 409,
            reason: "AlreadyExists",
            message: format!("{} \"{name}\" already exists", t.group_resource()),
            details: Some(details(t, name)),
        }
    }

    /// 409 for a stale resourceVersion.
    pub fn conflict(t: &ResourceType, name: &str) -> Self {
        ApiError {
            code: 409,
            reason: "Conflict",
            message: format!(
                "Operation cannot be fulfilled on {} \"{name}\": the object has been modified; please apply your changes to the latest version and try again",
                t.group_resource()
            ),
            details: Some(details(t, name)),
        }
    }

    /// 409 for a delete whose preconditions do not hold.
    pub fn precondition_failed(t: &ResourceType, name: &str, detail: String) -> Self {
        ApiError {
            code: 409,
            reason: "Conflict",
            message: format!(
                "Operation cannot be fulfilled on {} \"{name}\": {detail}",
                t.group_resource()
            ),
            details: Some(details(t, name)),
        }
    }

    /// 410 for a watch from a compacted resourceVersion.
    pub fn gone(rv: u64) -> Self {
        ApiError {
            code: 410,
            reason: "Expired",
            message: format!("too old resource version: {rv}"),
            details: None,
        }
    }

    /// 504 for a read at a resourceVersion the server has not reached, worded as the real
    /// server's (`storage.NewTooLargeResourceVersionError`): clients such as client-go's
    /// reflector recognise the `ResourceVersionTooLarge` cause and list afresh.
    pub fn resource_version_too_large(requested: u64, current: u64) -> Self {
        ApiError {
            code: 504,
            reason: "Timeout",
            message: format!(
                "Timeout: Too large resource version: {requested}, current: {current}"
            ),
            details: Some(json!({
                "causes": [{"reason": "ResourceVersionTooLarge", "message": "Too large resource version"}],
                "retryAfterSeconds": 1,
            })),
        }
    }

    /// 401 for a request without the server's bearer token, worded as the real server's.
    pub fn unauthorized() -> Self {
        ApiError {
            code: 401,
            reason: "Unauthorized",
            message: "Unauthorized".into(),
            details: None,
        }
    }

    /// 400 for a malformed request.
    pub fn bad_request(message: impl Into<String>) -> Self {
        ApiError {
            code: 400,
            reason: "BadRequest",
            message: message.into(),
            details: None,
        }
    }

    /// 415 for a body in a format the server does not read (protobuf, CBOR).
    pub fn unsupported_media_type(accepted: &[&str]) -> Self {
        ApiError {
            code: 415,
            reason: "UnsupportedMediaType",
            message: format!(
                "the body of the request was in an unknown format - accepted media types include: {}",
                accepted.join(", ")
            ),
            details: None,
        }
    }

    /// 405 for a verb the path does not support.
    pub fn method_not_allowed(verb: &str) -> Self {
        ApiError {
            code: 405,
            reason: "MethodNotAllowed",
            message: format!(
                "the server does not allow this method on the requested resource ({verb})"
            ),
            details: None,
        }
    }

    /// 403 from an admission plugin: `<resource> "<name>" is forbidden: <message>`.
    pub fn forbidden(t: &ResourceType, name: &str, message: &str) -> Self {
        ApiError {
            code: 403,
            reason: "Forbidden",
            message: format!("{} \"{name}\" is forbidden: {message}", t.group_resource()),
            details: Some(details(t, name)),
        }
    }

    /// 400 for a body that does not decode into the kind, as the real server's decoder
    /// words it (`<Kind> in version "v1" cannot be handled as a <Kind>: <why>`).
    pub fn undecodable(t: &ResourceType, why: &str) -> Self {
        ApiError::bad_request(format!(
            "{kind} in version \"{}\" cannot be handled as a {kind}: {why}",
            t.version,
            kind = t.kind
        ))
    }

    /// 403 for creating into a namespace being deleted, worded as the real server does.
    pub fn namespace_terminating(t: &ResourceType, name: &str, namespace: &str) -> Self {
        let message = format!(
            "unable to create new content in namespace {namespace} because it is being terminated"
        );
        ApiError {
            code: 403,
            reason: "Forbidden",
            message: format!("{} \"{name}\" is forbidden: {message}", t.group_resource()),
            details: Some(
                json!({"name": name, "group": t.group, "kind": t.plural, "causes": [
                    {"reason": "NamespaceTerminating", "message": message, "field": "metadata.namespace"}
                ]}),
            ),
        }
    }

    /// 409 for a server-side apply that would take fields another manager owns; `conflicts`
    /// are (manager, field) pairs and `message` lists them as the real server does.
    pub fn apply_conflict<'a>(
        message: String,
        conflicts: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> Self {
        let causes: Vec<Value> = conflicts
            .into_iter()
            .map(|(manager, field)| {
                json!({
                    "reason": "FieldManagerConflict",
                    "message": format!("conflict with \"{manager}\""),
                    "field": field,
                })
            })
            .collect();
        ApiError {
            code: 409,
            reason: "Conflict",
            message,
            details: Some(json!({ "causes": causes })),
        }
    }

    /// 422 for a server-side apply without `fieldManager`.
    pub fn field_manager_required() -> Self {
        ApiError {
            code: 422,
            reason: "Invalid",
            message: "PatchOptions.meta.k8s.io \"\" is invalid: fieldManager: Required value: is required for apply patch".into(),
            details: Some(json!({"group": "meta.k8s.io", "kind": "PatchOptions", "causes": [
                {"reason": "FieldValueRequired", "message": "Required value: is required for apply patch", "field": "fieldManager"}]})),
        }
    }

    /// 422 for a DeleteOptions `propagationPolicy` that is not one of the known ones.
    pub fn unsupported_propagation(policy: &str) -> Self {
        ApiError {
            code: 422,
            reason: "Invalid",
            message: format!(
                "DeleteOptions.meta.k8s.io \"\" is invalid: propagationPolicy: Unsupported value: \"{policy}\": supported values: \"Foreground\", \"Background\", \"Orphan\", \"nil\""
            ),
            details: None,
        }
    }

    /// 422 for a JSON patch that does not apply to the object (a failed `test`, a missing
    /// path), with the patch library's message.
    pub fn patch_failed(message: impl Into<String>) -> Self {
        ApiError {
            code: 422,
            reason: "Invalid",
            message: message.into(),
            details: None,
        }
    }

    /// 413 for a request body over the server's limit, or an object too large to store, with
    /// the real server's message (`Request entity too large: limit is 3145728`, or etcd's
    /// `etcdserver: request is too large`).
    pub fn too_large(message: impl Into<String>) -> Self {
        ApiError {
            code: 413,
            reason: "RequestEntityTooLarge",
            message: message.into(),
            details: None,
        }
    }

    /// 500 for a failure of the server itself.
    pub fn internal(message: impl Into<String>) -> Self {
        ApiError {
            code: 500,
            reason: "InternalError",
            message: message.into(),
            details: None,
        }
    }

    /// The Status the real server sends with `code`, for an injected fault: 429 and 503 ask
    /// clients to retry after a second, anything else is an internal error.
    pub fn injected(code: u16) -> Self {
        match code {
            429 => ApiError {
                code,
                reason: "TooManyRequests",
                message: "Too many requests, please try again later.".into(),
                details: Some(json!({"retryAfterSeconds": 1})),
            },
            503 => ApiError {
                code,
                reason: "ServiceUnavailable",
                message: "the server is currently unable to handle the request".into(),
                details: Some(json!({"retryAfterSeconds": 1})),
            },
            _ => ApiError {
                code,
                reason: "InternalError",
                message: "Internal error occurred: injected fault".into(),
                details: Some(json!({"causes": [{"message": "injected fault"}]})),
            },
        }
    }

    /// 422 with field causes, each given as `(field, body)` where the body starts the way
    /// the real server's does (`Required value`, `Invalid value: …`, `Unsupported value: …`).
    pub fn invalid_object(t: &ResourceType, name: &str, causes: Vec<(&str, String)>) -> Self {
        let errors = causes
            .into_iter()
            .map(|(field, body)| {
                let reason = if body.starts_with("Required value") {
                    "FieldValueRequired"
                } else if body.starts_with("Unsupported value") {
                    "FieldValueNotSupported"
                } else if body.starts_with("Forbidden") {
                    "FieldValueForbidden"
                } else {
                    "FieldValueInvalid"
                };
                FieldError {
                    field: field.to_string(),
                    reason,
                    body,
                }
            })
            .collect();
        Self::invalid(t, name, errors)
    }

    /// 422 Invalid: `Kind.group "name" is invalid: field: body` (several as `[a, b]`).
    pub fn invalid(t: &ResourceType, name: &str, errors: Vec<FieldError>) -> Self {
        let qualified = if t.group.is_empty() {
            t.kind.clone()
        } else {
            format!("{}.{}", t.kind, t.group)
        };
        let text: Vec<String> = errors.iter().map(ToString::to_string).collect();
        let message = match text.as_slice() {
            [one] => format!("{qualified} \"{name}\" is invalid: {one}"),
            many => format!("{qualified} \"{name}\" is invalid: [{}]", many.join(", ")),
        };
        let causes: Vec<Value> = errors
            .iter()
            .map(|e| json!({"reason": e.reason, "message": e.body, "field": e.field}))
            .collect();
        ApiError {
            code: 422,
            reason: "Invalid",
            message,
            details: Some(
                json!({"name": name, "group": t.group, "kind": t.kind, "causes": causes}),
            ),
        }
    }

    /// The `metav1.Status` body.
    pub fn status(&self) -> Value {
        let mut status = json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        });
        if let Some(d) = &self.details {
            status["details"] = d.clone();
        }
        status
    }
}

/// One field's problem, as the real server's `field.Error`: its string form is
/// `field: body`, and `body` is the message of the Status cause.
#[derive(Clone, Debug, PartialEq)]
pub struct FieldError {
    /// Dotted path, e.g. `spec.items[0].name`.
    pub field: String,
    /// Cause type, e.g. `FieldValueInvalid`.
    pub reason: &'static str,
    /// `Invalid value: "x": detail` and the like.
    pub body: String,
}

impl std::fmt::Display for FieldError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.field, self.body)
    }
}

/// A value the way the real server quotes it in messages: strings quoted, scalars bare.
fn shown(value: &Value) -> String {
    match value {
        Value::String(_) | Value::Number(_) | Value::Bool(_) | Value::Null => value.to_string(),
        other => other.to_string(),
    }
}

impl FieldError {
    /// A cause worded by the caller, for the few messages the constructors below do not
    /// cover (`Duplicate value`, a label map printed as Go does).
    pub fn new(field: impl Into<String>, reason: &'static str, body: String) -> Self {
        FieldError {
            field: field.into(),
            reason,
            body,
        }
    }

    /// `Required value[: detail]`.
    pub fn required(field: impl Into<String>, detail: String) -> Self {
        let body = if detail.is_empty() {
            "Required value".to_string()
        } else {
            format!("Required value: {detail}")
        };
        Self::new(field, "FieldValueRequired", body)
    }

    /// `Invalid value: <value>: detail`.
    pub fn invalid(field: impl Into<String>, value: &Value, detail: String) -> Self {
        let body = format!("Invalid value: {}: {detail}", shown(value));
        Self::new(field, "FieldValueInvalid", body)
    }

    /// A value of the wrong type; printed like [`FieldError::invalid`].
    pub fn type_invalid(field: impl Into<String>, value: &Value, detail: String) -> Self {
        let body = format!("Invalid value: {}: {detail}", shown(value));
        Self::new(field, "FieldValueTypeInvalid", body)
    }

    /// `Unsupported value: <value>: supported values: "a", "b"`.
    pub fn not_supported(field: impl Into<String>, value: &Value, options: &[Value]) -> Self {
        let options: Vec<String> = options
            .iter()
            .map(|o| match o {
                Value::String(s) => Value::String(s.clone()).to_string(),
                other => Value::String(other.to_string()).to_string(),
            })
            .collect();
        let body = format!(
            "Unsupported value: {}: supported values: {}",
            shown(value),
            options.join(", ")
        );
        Self::new(field, "FieldValueNotSupported", body)
    }

    /// `Too long: may not be more than N bytes`.
    pub fn too_long(field: impl Into<String>, _value: &Value, max: u64) -> Self {
        let body = format!("Too long: may not be more than {max} bytes");
        Self::new(field, "FieldValueTooLong", body)
    }

    /// `Too many: N: must have at most M items`.
    pub fn too_many(field: impl Into<String>, count: u64, max: u64) -> Self {
        let body = format!("Too many: {count}: must have at most {max} items");
        Self::new(field, "FieldValueTooMany", body)
    }
}
