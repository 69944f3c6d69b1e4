//! The REST surface: discovery, CRUD, patch, watch, and `/status`.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Query, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use serde_json::{Value, json};
use tokio_stream::wrappers::BroadcastStream;

use crate::error::ApiError;
use crate::registry::ResourceType;
use crate::selector::Selector;
use crate::store::{Event, Store, type_key};

/// Shared state of the HTTP handlers.
pub struct AppState {
    /// The objects.
    pub store: Store,
    /// Address clients reach the server at.
    pub address: String,
}

fn json_response(code: StatusCode, value: &Value) -> Response {
    (
        code,
        [(header::CONTENT_TYPE, "application/json")],
        value.to_string(),
    )
        .into_response()
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let code = StatusCode::from_u16(self.code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        json_response(code, &self.status())
    }
}

/// The single entry point: routes by path shape rather than a fixed route table, because the
/// served kinds change as CRDs are registered.
pub async fn handle(
    State(app): State<Arc<AppState>>,
    method: Method,
    uri: Uri,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    match route(&app, &method, &uri, &query, &headers, &body).await {
        Ok(response) => response,
        Err(err) => err.into_response(),
    }
}

async fn route(
    app: &Arc<AppState>,
    method: &Method,
    uri: &Uri,
    query: &HashMap<String, String>,
    headers: &HeaderMap,
    body: &Bytes,
) -> Result<Response, ApiError> {
    let segments: Vec<&str> = uri.path().split('/').filter(|s| !s.is_empty()).collect();
    let store = &app.store;
    match segments.as_slice() {
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

fn resource_list(store: &Store, group: &str, version: &str) -> Value {
    let mut resources = Vec::new();
    for t in store
        .types()
        .iter()
        .filter(|t| t.group == group && t.version == version)
    {
        resources.push(t.discovery());
        if t.status_subresource {
            resources.push(json!({
                "name": format!("{}/status", t.plural), "singularName": "", "namespaced": t.namespaced,
                "kind": t.kind, "verbs": ["get", "patch", "update"],
            }));
        }
    }
    let group_version = if group.is_empty() {
        version.to_string()
    } else {
        format!("{group}/{version}")
    };
    json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": group_version, "resources": resources})
}

fn group_list(store: &Store) -> Value {
    let mut groups: Vec<(String, Vec<String>)> = Vec::new();
    for t in store.types().iter().filter(|t| !t.group.is_empty()) {
        match groups.iter_mut().find(|(g, _)| *g == t.group) {
            Some((_, versions)) if !versions.contains(&t.version) => {
                versions.push(t.version.clone())
            }
            Some(_) => {}
            None => groups.push((t.group.clone(), vec![t.version.clone()])),
        }
    }
    let groups: Vec<Value> = groups
        .into_iter()
        .map(|(name, versions)| {
            let entries: Vec<Value> = versions
                .iter()
                .map(|v| json!({"groupVersion": format!("{name}/{v}"), "version": v}))
                .collect();
            json!({"name": name, "versions": entries, "preferredVersion": entries[0]})
        })
        .collect();
    json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})
}

/// `namespaces/{ns}/{plural}[/{name}[/{sub}]]` or `{plural}[/{name}[/{sub}]]`.
fn parse_rest<'a>(
    rest: &[&'a str],
) -> Option<(&'a str, &'a str, Option<&'a str>, Option<&'a str>)> {
    match rest {
        ["namespaces", ns, plural, tail @ ..] if !matches!(*plural, "status" | "finalize") => {
            Some((ns, plural, tail.first().copied(), tail.get(1).copied()))
        }
        [plural, tail @ ..] => Some(("", plural, tail.first().copied(), tail.get(1).copied())),
        [] => None,
    }
}

#[allow(clippy::too_many_arguments)]
async fn resource(
    app: &Arc<AppState>,
    group: &str,
    version: &str,
    rest: &[&str],
    method: &Method,
    query: &HashMap<String, String>,
    headers: &HeaderMap,
    body: &Bytes,
    uri: &Uri,
) -> Result<Response, ApiError> {
    let store = &app.store;
    let (namespace, plural, name, sub) =
        parse_rest(rest).ok_or_else(|| ApiError::no_route(uri.path()))?;
    let t = store
        .find_type(group, version, plural)
        .ok_or_else(|| ApiError::no_route(uri.path()))?;
    let namespace = if t.namespaced { namespace } else { "" };
    let status_only = match sub {
        None => false,
        Some("status") if t.status_subresource => true,
        Some(_) => return Err(ApiError::no_route(uri.path())),
    };
    let parse_body = || -> Result<Value, ApiError> {
        serde_json::from_slice(body)
            .map_err(|e| ApiError::bad_request(format!("invalid JSON body: {e}")))
    };
    let ok = |v: &Value| Ok(json_response(StatusCode::OK, v));
    let accept = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let as_table = crate::table::wanted(accept)
        && !query.get("watch").is_some_and(|w| w == "true" || w == "1");
    let table = |items: &[Value], rv: Option<u64>| {
        crate::table::render(items, &store.printer_columns(&t), rv, chrono::Utc::now())
    };
    match (method.clone(), name) {
        (Method::GET, Some(name)) if as_table => {
            ok(&table(&[store.get(&t, namespace, name)?], None))
        }
        (Method::GET, Some(name)) => ok(&store.get(&t, namespace, name)?),
        (Method::GET, None) => {
            let labels =
                Selector::parse(query.get("labelSelector").map(String::as_str).unwrap_or(""))
                    .map_err(ApiError::bad_request)?;
            let fields =
                Selector::parse(query.get("fieldSelector").map(String::as_str).unwrap_or(""))
                    .map_err(ApiError::bad_request)?;
            if query.get("watch").is_some_and(|w| w == "true" || w == "1") {
                return watch(app, &t, namespace, query, labels, fields);
            }
            let (items, rv) = store.list(&t, namespace, &labels, &fields);
            if as_table {
                return ok(&table(&items, Some(rv)));
            }
            ok(&json!({
                "kind": format!("{}List", t.kind), "apiVersion": t.api_version(),
                "metadata": {"resourceVersion": rv.to_string()}, "items": items,
            }))
        }
        (Method::POST, None) => {
            let created = store.create(&t, namespace, parse_body()?)?;
            Ok(json_response(StatusCode::CREATED, &created))
        }
        (Method::PUT, Some(name)) => {
            ok(&store.update(&t, namespace, name, parse_body()?, status_only)?)
        }
        (Method::PATCH, Some(name)) => {
            let content_type = headers
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default();
            let patch = parse_body()?;
            let current = match store.get(&t, namespace, name) {
                Ok(current) => current,
                Err(err) if content_type.starts_with("application/apply-patch") => {
                    // Server-side apply creates what does not exist.
                    let _ = err;
                    let created = store.create(&t, namespace, patch)?;
                    return Ok(json_response(StatusCode::CREATED, &created));
                }
                Err(err) => return Err(err),
            };
            let mut patched = current.clone();
            if content_type.starts_with("application/json-patch+json") {
                let ops: json_patch::Patch = serde_json::from_value(patch.clone())
                    .map_err(|e| ApiError::bad_request(format!("invalid JSON patch: {e}")))?;
                json_patch::patch(&mut patched, &ops).map_err(|e| ApiError {
                    code: 422,
                    reason: "Invalid",
                    message: e.to_string(),
                    details: None,
                })?;
            } else {
                // Merge patch; strategic merge and apply patches fall back to merge semantics
                // (lists are replaced, not merged by key).
                json_patch::merge(&mut patched, &patch);
            }
            if let Some(meta) = patched.get_mut("metadata").and_then(Value::as_object_mut) {
                // A patch that does not name a version never conflicts.
                if patch.pointer("/metadata/resourceVersion").is_none() {
                    meta.remove("resourceVersion");
                }
            }
            ok(&store.update(&t, namespace, name, patched, status_only)?)
        }
        (Method::DELETE, Some(name)) => ok(&store.delete(&t, namespace, name)?),
        (Method::DELETE, None) => {
            let labels =
                Selector::parse(query.get("labelSelector").map(String::as_str).unwrap_or(""))
                    .map_err(ApiError::bad_request)?;
            let (items, rv) = store.list(&t, namespace, &labels, &Selector::default());
            let mut deleted = Vec::new();
            for item in items {
                let n = item
                    .pointer("/metadata/name")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_string();
                let ns = item
                    .pointer("/metadata/namespace")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_string();
                deleted.push(store.delete(&t, &ns, &n)?);
            }
            ok(
                &json!({"kind": format!("{}List", t.kind), "apiVersion": t.api_version(),
                "metadata": {"resourceVersion": rv.to_string()}, "items": deleted}),
            )
        }
        (m, _) => Err(ApiError::method_not_allowed(m.as_str())),
    }
}

/// How often an idle watch that asked for bookmarks gets one.
const BOOKMARK_EVERY: Duration = Duration::from_secs(1);

fn watch_line(kind: &str, object: &Value) -> Bytes {
    let mut line = json!({"type": kind, "object": object}).to_string();
    line.push('\n');
    Bytes::from(line)
}

fn watch(
    app: &Arc<AppState>,
    t: &ResourceType,
    namespace: &str,
    query: &HashMap<String, String>,
    labels: Selector,
    fields: Selector,
) -> Result<Response, ApiError> {
    let store = &app.store;
    // Subscribe before reading the backlog so nothing falls between the two.
    let live = store.subscribe();
    let from: Option<u64> = query
        .get("resourceVersion")
        .filter(|v| !v.is_empty() && *v != "0")
        .and_then(|v| v.parse().ok());
    let mut initial: Vec<Bytes> = Vec::new();
    let mut last_sent = store.current_rv();
    match from {
        Some(rv) => match store.events_since(t, namespace, rv) {
            Ok(events) => {
                for e in events.iter().filter(|e| {
                    labels.matches_labels(&e.object) && fields.matches_fields(&e.object)
                }) {
                    initial.push(watch_line(e.kind, &e.object));
                }
                last_sent = events
                    .last()
                    .map_or(rv.max(last_sent), |e| e.rv.max(last_sent));
            }
            Err(gone) => {
                // The real server ends the stream after the error; the client relists.
                let line = watch_line("ERROR", &gone.status());
                return Ok(Response::builder()
                    .status(StatusCode::OK)
                    .header(header::CONTENT_TYPE, "application/json")
                    .body(Body::from(line))
                    .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response()));
            }
        },
        None => {
            let (items, rv) = store.list(t, namespace, &labels, &fields);
            for item in &items {
                initial.push(watch_line("ADDED", item));
            }
            last_sent = rv;
        }
    }
    let bookmarks = query
        .get("allowWatchBookmarks")
        .is_some_and(|v| v == "true");
    let timeout = query
        .get("timeoutSeconds")
        .and_then(|v| v.parse::<u64>().ok())
        .map_or(Duration::from_secs(1800), Duration::from_secs);
    let key = type_key(t);
    let namespace = namespace.to_string();
    let api_version = t.api_version();
    let kind = t.kind.clone();
    let app = app.clone();
    let events = BroadcastStream::new(live).filter_map(move |e: Result<Event, _>| {
        let keep = match &e {
            Ok(e) => {
                e.rv > last_sent
                    && e.type_key == key
                    && (namespace.is_empty() || e.namespace == namespace)
                    && labels.matches_labels(&e.object)
                    && fields.matches_fields(&e.object)
            }
            // A lagging watcher lost events: end the stream so it relists.
            Err(_) => false,
        };
        let line = e
            .ok()
            .filter(|_| keep)
            .map(|e| Ok::<Bytes, std::io::Error>(watch_line(e.kind, &e.object)));
        futures::future::ready(line)
    });
    let ticker = tokio_stream::wrappers::IntervalStream::new(tokio::time::interval_at(
        tokio::time::Instant::now() + BOOKMARK_EVERY,
        BOOKMARK_EVERY,
    ))
        .filter(move |_| futures::future::ready(bookmarks))
        .map(move |_| {
            let rv = app.store.current_rv();
            Ok(watch_line("BOOKMARK", &json!({"kind": kind, "apiVersion": api_version,
                "metadata": {"resourceVersion": rv.to_string(), "annotations": {"k8s.io/initial-events-end": "true"}}})))
        });
    let stream = futures::stream::iter(initial.into_iter().map(Ok))
        .chain(futures::stream::select(events, ticker))
        .take_until(tokio::time::sleep(timeout));
    Ok(Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from_stream(stream))
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response()))
}
