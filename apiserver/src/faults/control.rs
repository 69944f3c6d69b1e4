//! A small HTTP API over the fault injection, on an address of its own, so faults can be
//! switched from outside the process (`charon dev --faults-address`), e.g. by a test driving
//! the real binaries. JSON bodies; every change answers with the settings now in force (as
//! `GET /faults` does); bad input gets 400 with a `message` naming the field.
//!
//! | route | body | effect |
//! | --- | --- | --- |
//! | `GET /faults` | | the current settings |
//! | `PUT /faults/errors/{verb}` | `{"rate": 0.2, "code": 500}` | fail that share of `verb` (or `*`) requests; `code` 500 (default), 429 or 503; rate 0 stops it |
//! | `PUT /faults/latency` | `{"millis": 100}` | delay every request |
//! | `POST /faults/drop-watches` | | end every open watch |
//! | `POST /faults/expire-watches` | `{"count": 3}` | the next `count` watches get 410 Gone |
//! | `POST /faults/pause`, `POST /faults/resume` | | hold requests, release them |
//! | `DELETE /faults` | | turn every fault off |

use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use serde_json::{Value, json};

use crate::state::AppState;

/// The verbs an error rate may be set for: RBAC's, and `*` for all.
const VERBS: [&str; 9] = [
    "get",
    "list",
    "watch",
    "create",
    "update",
    "patch",
    "delete",
    "deletecollection",
    "*",
];

/// The longest latency accepted: a minute already times most clients out.
const MAX_LATENCY_MILLIS: u64 = 60_000;

/// The control API's routes, over the server's state.
pub fn router(app: Arc<AppState>) -> axum::Router {
    axum::Router::new()
        .route("/faults", get(current).delete(clear))
        .route("/faults/errors/{verb}", put(errors))
        .route("/faults/latency", put(latency))
        .route("/faults/drop-watches", post(drop_watches))
        .route("/faults/expire-watches", post(expire_watches))
        .route("/faults/pause", post(pause))
        .route("/faults/resume", post(resume))
        .fallback(|| async { reply(StatusCode::NOT_FOUND, json!({"message": "no such route"})) })
        .layer(axum::middleware::from_fn_with_state(app.clone(), authorize))
        .with_state(app)
}

fn reply(code: StatusCode, body: Value) -> Response {
    (
        code,
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

fn bad_request(message: String) -> Response {
    reply(StatusCode::BAD_REQUEST, json!({"message": message}))
}

fn settings(app: &AppState) -> Response {
    reply(StatusCode::OK, app.faults.snapshot())
}

/// The API server's token, when it has one, guards its faults too: pausing the server is as
/// much a way in as any request.
async fn authorize(
    State(app): State<Arc<AppState>>,
    headers: HeaderMap,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    if let Some(token) = &app.token
        && !crate::http::authenticated(&headers, token)
    {
        return crate::error::ApiError::unauthorized().into_response();
    }
    next.run(request).await
}

/// The body as a JSON object, or the message of the 400 to answer.
fn object(body: &Bytes) -> Result<serde_json::Map<String, Value>, String> {
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(fields)) => Ok(fields),
        Ok(_) => Err("the body must be a JSON object".into()),
        Err(e) => Err(format!("invalid JSON body: {e}")),
    }
}

async fn current(State(app): State<Arc<AppState>>) -> Response {
    settings(&app)
}

async fn clear(State(app): State<Arc<AppState>>) -> Response {
    app.faults.clear();
    settings(&app)
}

async fn errors(
    State(app): State<Arc<AppState>>,
    Path(verb): Path<String>,
    body: Bytes,
) -> Response {
    if !VERBS.contains(&verb.as_str()) {
        return bad_request(format!(
            "verb: unknown verb {verb:?}, expected one of {}",
            VERBS.join(", ")
        ));
    }
    let fields = match object(&body) {
        Ok(fields) => fields,
        Err(message) => return bad_request(message),
    };
    let rate = match fields.get("rate").map(Value::as_f64) {
        Some(Some(rate)) if (0.0..=1.0).contains(&rate) => rate,
        Some(_) => return bad_request("rate: must be a number from 0 to 1".into()),
        None => return bad_request("rate: required".into()),
    };
    let code = match fields.get("code").map(Value::as_u64) {
        None => 500,
        Some(Some(code @ (429 | 500 | 503))) => code,
        Some(_) => return bad_request("code: must be 500, 429 or 503".into()),
    };
    // Matched against 429, 500 and 503 above.
    let code = u16::try_from(code).unwrap_or(500);
    app.faults.set_error_rate(&verb, rate, code);
    settings(&app)
}

async fn latency(State(app): State<Arc<AppState>>, body: Bytes) -> Response {
    let fields = match object(&body) {
        Ok(fields) => fields,
        Err(message) => return bad_request(message),
    };
    match fields.get("millis").map(Value::as_u64) {
        Some(Some(millis)) if millis <= MAX_LATENCY_MILLIS => {
            app.faults.set_latency(Duration::from_millis(millis));
            settings(&app)
        }
        Some(_) => bad_request(format!(
            "millis: must be a whole number from 0 to {MAX_LATENCY_MILLIS}"
        )),
        None => bad_request("millis: required".into()),
    }
}

async fn drop_watches(State(app): State<Arc<AppState>>) -> Response {
    app.faults.drop_watches();
    settings(&app)
}

async fn expire_watches(State(app): State<Arc<AppState>>, body: Bytes) -> Response {
    let fields = match object(&body) {
        Ok(fields) => fields,
        Err(message) => return bad_request(message),
    };
    let count = fields
        .get("count")
        .map(|c| c.as_u64().and_then(|c| u32::try_from(c).ok()));
    match count {
        Some(Some(count)) => {
            app.faults.expire_watches(count);
            settings(&app)
        }
        Some(None) => bad_request("count: must be a whole number from 0 to 4294967295".into()),
        None => bad_request("count: required".into()),
    }
}

async fn pause(State(app): State<Arc<AppState>>) -> Response {
    app.faults.set_paused(true);
    settings(&app)
}

async fn resume(State(app): State<Arc<AppState>>) -> Response {
    app.faults.set_paused(false);
    settings(&app)
}
