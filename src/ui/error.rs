//! The API's errors: `{"error": text, "field": path?}` with the status SPEC §12 names.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use crate::actions::ActionError;

/// An error answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UiError {
    /// 400, 401, 403, 404, 409, or 502/500 when the cluster failed.
    pub status: StatusCode,
    /// What went wrong.
    pub message: String,
    /// The request field at fault.
    pub field: Option<String>,
}

#[derive(Serialize)]
struct Body<'a> {
    error: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    field: Option<&'a str>,
}

impl UiError {
    fn new(status: StatusCode, message: impl Into<String>) -> Self {
        UiError {
            status,
            message: message.into(),
            field: None,
        }
    }

    /// 400 about `field`.
    pub fn bad(field: &str, reason: impl std::fmt::Display) -> Self {
        UiError {
            status: StatusCode::BAD_REQUEST,
            message: format!("{field}: {reason}"),
            field: Some(field.to_string()),
        }
    }

    /// 400 about the request as a whole.
    pub fn bad_request(message: impl Into<String>) -> Self {
        UiError::new(StatusCode::BAD_REQUEST, message)
    }

    /// 401.
    pub fn unauthenticated() -> Self {
        UiError::new(
            StatusCode::UNAUTHORIZED,
            "not authenticated: send a bearer token (Authorization: Bearer TOKEN), or open the URL with ?token=TOKEN",
        )
    }

    /// 403 naming the missing permission.
    pub fn forbidden(message: impl Into<String>) -> Self {
        UiError::new(StatusCode::FORBIDDEN, message)
    }

    /// 404.
    pub fn not_found(message: impl Into<String>) -> Self {
        UiError::new(StatusCode::NOT_FOUND, message)
    }

    /// The cluster failed while `doing`.
    pub fn upstream(doing: &str, error: kube::Error) -> Self {
        UiError::new(StatusCode::BAD_GATEWAY, format!("{doing}: {error}"))
    }
}

impl From<ActionError> for UiError {
    fn from(error: ActionError) -> Self {
        match error {
            ActionError::Invalid(message) => UiError::bad_request(message),
            ActionError::Field(e) => UiError {
                status: StatusCode::BAD_REQUEST,
                message: format!("{}: {}", e.field, e.reason),
                field: Some(e.field),
            },
            ActionError::NotFound(message) => UiError::not_found(message),
            ActionError::Conflict(message) => UiError::new(StatusCode::CONFLICT, message),
            ActionError::Forbidden(message) => UiError::forbidden(message),
            ActionError::Failed(message) => UiError::new(StatusCode::BAD_GATEWAY, message),
        }
    }
}

impl IntoResponse for UiError {
    fn into_response(self) -> Response {
        let body = Body {
            error: &self.message,
            field: self.field.as_deref(),
        };
        (self.status, Json(body)).into_response()
    }
}
