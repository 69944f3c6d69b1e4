//! The REST surface: discovery, CRUD, patch, watch, and `/status`. Requests are routed by
//! the shape of their path rather than a fixed route table, because the served kinds change
//! as CRDs are registered.

mod discovery;
mod resource;
mod response;
mod watch;

use std::collections::HashMap;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use discovery::{group_list, resource_list};
use resource::{parse_rest, resource};
use response::json_response;

use crate::error::ApiError;
use crate::state::AppState;

/// The largest request body the real kube-apiserver reads (`MaxRequestBodyBytes`, 3 MiB:
/// twice etcd's object limit, since JSON is larger than the protobuf stored).
pub const MAX_REQUEST_BODY_BYTES: usize = 3 * 1024 * 1024;

/// The single entry point: routes by path shape rather than a fixed route table, because the
/// served kinds change as CRDs are registered.
pub async fn handle(
    State(app): State<Arc<AppState>>,
    method: Method,
    uri: Uri,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> Response {
    let user =
        match crate::auth::authenticate(&app.store, &app.tokens, app.token.as_deref(), &headers) {
            Ok(user) => user,
            Err(err) => return err.into_response(),
        };
    let (verb, attributes) = audit(&app, &method, &uri, &query, &headers);
    if !crate::auth::authorize(&app.store, &user, &attributes).0 {
        return crate::auth::forbidden(&user, &attributes).into_response();
    }
    let body = match body {
        Ok(body) => body,
        // Over MAX_REQUEST_BODY_BYTES (the only way reading a buffered body fails here).
        Err(rejection) if rejection.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE => {
            return ApiError::too_large(format!(
                "Request entity too large: limit is {MAX_REQUEST_BODY_BYTES}"
            ))
            .into_response();
        }
        Err(rejection) => return ApiError::bad_request(rejection.body_text()).into_response(),
    };
    if let Err(err) = app.faults.before(&verb, &attributes.resource).await {
        // 429 and 503 carry `Retry-After` (see `ApiError::into_response`).
        return err.into_response();
    }
    match route(&app, &user, &method, &uri, &query, &headers, &body).await {
        Ok(response) => response,
        Err(err) => err.into_response(),
    }
}

/// Whether the request carries `Authorization: Bearer <token>`, compared in time that does
/// not depend on where a guess goes wrong.
pub(crate) fn authenticated(headers: &HeaderMap, token: &str) -> bool {
    let Some(given) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
    else {
        return false;
    };
    let (given, token) = (given.trim().as_bytes(), token.as_bytes());
    given.len() == token.len()
        && given
            .iter()
            .zip(token)
            .fold(0u8, |diff, (a, b)| diff | (a ^ b))
            == 0
}

/// Records the request in the audit and returns its verb and what it asks, as RBAC names
/// them.
fn audit(
    app: &AppState,
    method: &Method,
    uri: &Uri,
    query: &HashMap<String, String>,
    headers: &HeaderMap,
) -> (String, crate::auth::Attributes) {
    let segments: Vec<&str> = uri.path().split('/').filter(|s| !s.is_empty()).collect();
    let (group, rest): (&str, &[&str]) = match segments.as_slice() {
        ["api", "v1", rest @ ..] if !rest.is_empty() => ("", rest),
        ["apis", group, _, rest @ ..] if !rest.is_empty() => (group, rest),
        _ => ("", &[]),
    };
    let parsed = parse_rest(rest);
    let named = parsed.is_some_and(|(_, _, name, _)| name.is_some());
    let verb = match *method {
        Method::GET | Method::HEAD if parsed.is_none() => "get",
        Method::GET | Method::HEAD
            if query.get("watch").is_some_and(|w| w == "true" || w == "1") =>
        {
            "watch"
        }
        Method::GET | Method::HEAD if named => "get",
        Method::GET | Method::HEAD => "list",
        Method::POST => "create",
        Method::PUT => "update",
        Method::PATCH => "patch",
        Method::DELETE if named || parsed.is_none() => "delete",
        Method::DELETE => "deletecollection",
        _ => "get",
    };
    let user_agent = headers
        .get(header::USER_AGENT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    let request = match parsed {
        Some((namespace, resource, _, sub)) => crate::faults::Request {
            user_agent,
            verb: verb.to_string(),
            api_group: group.to_string(),
            resource: resource.to_string(),
            subresource: sub.unwrap_or_default().to_string(),
            namespace: namespace.to_string(),
            path: String::new(),
            count: 0,
        },
        None => crate::faults::Request {
            user_agent,
            verb: verb.to_string(),
            api_group: String::new(),
            resource: String::new(),
            subresource: String::new(),
            namespace: String::new(),
            path: uri.path().to_string(),
            count: 0,
        },
    };
    let attributes = match parsed {
        Some((namespace, resource, name, sub)) => crate::auth::Attributes {
            verb: verb.to_string(),
            group: group.to_string(),
            resource: resource.to_string(),
            subresource: sub.unwrap_or_default().to_string(),
            namespace: namespace.to_string(),
            name: name.unwrap_or_default().to_string(),
            path: String::new(),
        },
        None => crate::auth::Attributes {
            verb: method.as_str().to_ascii_lowercase(),
            path: uri.path().to_string(),
            ..Default::default()
        },
    };
    app.audit.record(request);
    (verb.to_string(), attributes)
}

#[allow(clippy::too_many_arguments)]
async fn route(
    app: &Arc<AppState>,
    user: &crate::auth::User,
    method: &Method,
    uri: &Uri,
    query: &HashMap<String, String>,
    headers: &HeaderMap,
    body: &Bytes,
) -> Result<Response, ApiError> {
    let segments: Vec<&str> = uri.path().split('/').filter(|s| !s.is_empty()).collect();
    let store = &app.store;
    let review_body = || -> Result<serde_json::Value, ApiError> {
        let content_type = headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        if content_type.starts_with("application/vnd.kubernetes.protobuf") {
            return crate::protobuf::decode(body).map_err(ApiError::bad_request);
        }
        if body.is_empty() {
            return Ok(json!({}));
        }
        serde_json::from_slice(body)
            .map_err(|e| ApiError::bad_request(format!("invalid JSON body: {e}")))
    };
    let created = |v: serde_json::Value| Ok(json_response(StatusCode::CREATED, &v));
    let (tokens, admin) = (&app.tokens, app.token.as_deref());
    match (method, segments.as_slice()) {
        (
            &Method::POST,
            [
                "api",
                "v1",
                "namespaces",
                ns,
                "serviceaccounts",
                name,
                "token",
            ],
        ) => created(crate::auth::token_request(
            store,
            tokens,
            ns,
            name,
            &review_body()?,
        )?),
        (&Method::POST, ["apis", "authentication.k8s.io", "v1", "tokenreviews"]) => created(
            crate::auth::token_review(store, tokens, admin, &review_body()?)?,
        ),
        (&Method::POST, ["apis", "authentication.k8s.io", "v1", "selfsubjectreviews"]) => {
            created(crate::auth::self_subject_review(user))
        }
        (&Method::POST, ["apis", "authorization.k8s.io", "v1", "subjectaccessreviews"]) => {
            created(crate::auth::subject_access_review(store, &review_body()?)?)
        }
        (
            &Method::POST,
            [
                "apis",
                "authorization.k8s.io",
                "v1",
                "selfsubjectaccessreviews",
            ],
        ) => created(crate::auth::self_subject_access_review(
            store,
            user,
            &review_body()?,
        )?),
        _ => route_rest(app, method, uri, query, headers, body, &segments).await,
    }
}

async fn route_rest(
    app: &Arc<AppState>,
    method: &Method,
    uri: &Uri,
    query: &HashMap<String, String>,
    headers: &HeaderMap,
    body: &Bytes,
    segments: &[&str],
) -> Result<Response, ApiError> {
    let store = &app.store;
    match segments {
        ["version"] => Ok(json_response(
            StatusCode::OK,
            &json!({
                "major": "1", "minor": "33", "gitVersion": "v1.33.0", "gitCommit": "embedded",
                "gitTreeState": "clean", "buildDate": "2025-04-23T00:00:00Z", "goVersion": "go1.24",
                "compiler": "gc", "platform": "linux/amd64",
            }),
        )),
        ["openapi", "v3"] => Ok(json_response(StatusCode::OK, &crate::openapi::root(store))),
        ["openapi", "v3", "api", version] => crate::openapi::group_version(store, "", version)
            .map(|doc| json_response(StatusCode::OK, &doc))
            .ok_or_else(|| ApiError::no_route(uri.path())),
        ["openapi", "v3", "apis", group, version] => {
            crate::openapi::group_version(store, group, version)
                .map(|doc| json_response(StatusCode::OK, &doc))
                .ok_or_else(|| ApiError::no_route(uri.path()))
        }
        ["healthz"] | ["readyz"] | ["livez"] => Ok((StatusCode::OK, "ok").into_response()),
        ["api"] => Ok(json_response(
            StatusCode::OK,
            &json!({
                "kind": "APIVersions", "versions": ["v1"],
                "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": app.address}],
            }),
        )),
        ["api", "v1"] => Ok(json_response(
            StatusCode::OK,
            &resource_list(store, "", "v1"),
        )),
        ["apis"] => Ok(json_response(StatusCode::OK, &group_list(store))),
        ["apis", group] => {
            let list = group_list(store);
            let found = list["groups"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|g| g["name"] == *group)
                .cloned();
            let mut g = found.ok_or_else(|| ApiError::no_route(uri.path()))?;
            g["kind"] = json!("APIGroup");
            g["apiVersion"] = json!("v1");
            Ok(json_response(StatusCode::OK, &g))
        }
        ["apis", group, version] => {
            let list = resource_list(store, group, version);
            if list["resources"].as_array().is_none_or(|r| r.is_empty()) {
                return Err(ApiError::no_route(uri.path()));
            }
            Ok(json_response(StatusCode::OK, &list))
        }
        ["api", "v1", rest @ ..] => {
            resource(app, "", "v1", rest, method, query, headers, body, uri).await
        }
        ["apis", group, version, rest @ ..] => {
            resource(app, group, version, rest, method, query, headers, body, uri).await
        }
        _ => Err(ApiError::no_route(uri.path())),
    }
}
