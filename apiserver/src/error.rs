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

    /// 410 for a watch from a compacted resourceVersion.
    pub fn gone(rv: u64) -> Self {
        ApiError {
            code: 410,
            reason: "Expired",
            message: format!("too old resource version: {rv}"),
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

    /// 422 with field causes: `Kind.group "name" is invalid: field: reason`.
    pub fn invalid_object(t: &ResourceType, name: &str, causes: Vec<(&str, String)>) -> Self {
        let qualified = if t.group.is_empty() {
            t.kind.clone()
        } else {
            format!("{}.{}", t.kind, t.group)
        };
        let text: Vec<String> = causes.iter().map(|(f, m)| format!("{f}: {m}")).collect();
        let message = match text.as_slice() {
            [one] => format!("{qualified} \"{name}\" is invalid: {one}"),
            many => format!("{qualified} \"{name}\" is invalid: [{}]", many.join(", ")),
        };
        let causes: Vec<Value> = causes
            .iter()
            .map(|(f, m)| json!({"reason": "FieldValueInvalid", "message": m, "field": f}))
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
