//! Response bodies: JSON objects, `{Kind}List`s written straight from the store's shared
//! objects, and API errors as `metav1.Status`.

use std::sync::Arc;

use axum::body::Body;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::Value;

use crate::error::ApiError;
use crate::registry::ResourceType;

/// `value` as a JSON response.
pub fn json_response(code: StatusCode, value: &Value) -> Response {
    json_text_response(code, value.to_string())
}

/// JSON text as a response.
pub fn json_text_response(code: StatusCode, body: String) -> Response {
    (code, [(header::CONTENT_TYPE, "application/json")], body).into_response()
}

/// A list response, written straight from the store's shared objects rather than from a
/// copy of them; fields in the order a JSON object of them prints in.
#[derive(serde::Serialize)]
struct ListBody<'a> {
    #[serde(rename = "apiVersion")]
    api_version: String,
    items: Shared<'a>,
    kind: String,
    metadata: Value,
}

/// A `{Kind}List` of `items`.
pub fn list_response(
    t: &ResourceType,
    metadata: Value,
    items: &[Arc<Value>],
) -> Result<Response, ApiError> {
    let body = ListBody {
        api_version: t.api_version(),
        items: Shared(items),
        kind: format!("{}List", t.kind),
        metadata,
    };
    let text = serde_json::to_string(&body)
        .map_err(|e| ApiError::internal(format!("encoding the list: {e}")))?;
    Ok(json_text_response(StatusCode::OK, text))
}

/// Shared objects serialised as a JSON array.
struct Shared<'a>(&'a [Arc<Value>]);

impl serde::Serialize for Shared<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(self.0.iter().map(|v| &**v))
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let code = StatusCode::from_u16(self.code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        // As the real server, a Status asking for a retry says so in `Retry-After` too.
        let retry = self
            .details
            .as_ref()
            .and_then(|d| d.get("retryAfterSeconds"))
            .and_then(Value::as_u64)
            .filter(|s| *s > 0);
        let mut response = json_response(code, &self.status());
        if let Some(seconds) = retry
            && let Ok(value) = header::HeaderValue::from_str(&seconds.to_string())
        {
            response.headers_mut().insert(header::RETRY_AFTER, value);
        }
        response
    }
}

/// A JSON response whose body is `body` (a stream, for watches).
pub fn json_body(body: Body) -> Response {
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "application/json")
        .body(body)
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}
