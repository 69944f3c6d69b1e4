//! The REST surface: discovery, CRUD, patch, watch, and `/status`.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
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
use crate::state::AppState;
use crate::store::{Event, Page, Store, Write, type_key};

fn json_response(code: StatusCode, value: &Value) -> Response {
    json_text_response(code, value.to_string())
}

fn json_text_response(code: StatusCode, body: String) -> Response {
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
fn list_response(
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
    let verb = audit(&app, &method, &uri, &query, &headers);
    if let Err(err) = app.faults.before(&verb).await {
        let retry = err.code == 429 || err.code == 503;
        let mut response = err.into_response();
        if retry {
            response.headers_mut().insert(
                header::RETRY_AFTER,
                axum::http::HeaderValue::from_static("1"),
            );
        }
        return response;
    }
    match route(&app, &method, &uri, &query, &headers, &body).await {
        Ok(response) => response,
        Err(err) => err.into_response(),
    }
}

/// Records the request in the audit and returns its verb as RBAC names it.
fn audit(
    app: &AppState,
    method: &Method,
    uri: &Uri,
    query: &HashMap<String, String>,
    headers: &HeaderMap,
) -> String {
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
    app.audit.record(request);
    verb.to_string()
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

/// The `labelSelector` and `fieldSelector` of a list, watch or deletecollection (empty ones
/// match everything).
fn selectors(query: &HashMap<String, String>) -> Result<(Selector, Selector), ApiError> {
    let parse = |key: &str| {
        Selector::parse(query.get(key).map(String::as_str).unwrap_or(""))
            .map_err(ApiError::bad_request)
    };
    Ok((parse("labelSelector")?, parse("fieldSelector")?))
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
    if let (Some("log"), Some(name), true) = (sub, name, t.group.is_empty() && t.plural == "pods") {
        if *method != Method::GET {
            return Err(ApiError::method_not_allowed(method.as_str()));
        }
        return crate::logs::pod_log(&app.store, &app.logs, &t, namespace, name, query);
    }
    let status_only = match sub {
        None => false,
        Some("status") if t.status_subresource => true,
        Some(_) => return Err(ApiError::no_route(uri.path())),
    };
    let parse_body = || -> Result<Value, ApiError> {
        let content_type = headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        if content_type.starts_with("application/vnd.kubernetes.protobuf") {
            // Typed clients (`kubectl create namespace`, `kubectl create configmap`) send
            // protobuf; a few simple kinds are understood.
            return crate::protobuf::decode(body).map_err(ApiError::bad_request);
        }
        if content_type.contains("protobuf") || content_type.contains("cbor") {
            return Err(ApiError::unsupported_media_type(&[
                "application/json",
                "application/merge-patch+json",
                "application/json-patch+json",
                "application/strategic-merge-patch+json",
                "application/apply-patch+yaml",
            ]));
        }
        serde_json::from_slice(body)
            .map_err(|e| ApiError::bad_request(format!("invalid JSON body: {e}")))
    };
    let ok = |v: &Value| Ok(json_response(StatusCode::OK, v));
    // kubectl asks for Strict by default (`--validate=strict`); the server's own default drops
    // unknown fields.
    let strict = query.get("fieldValidation").is_some_and(|v| v == "Strict");
    // DeleteOptions may come as a JSON body; typed clients' protobuf ones are ignored.
    let delete_options: Value = if *method == Method::DELETE {
        serde_json::from_slice(body).unwrap_or(Value::Null)
    } else {
        Value::Null
    };
    let dry_run = query.get("dryRun").is_some_and(|v| v == "All")
        || delete_options
            .get("dryRun")
            .and_then(Value::as_array)
            .is_some_and(|d| d.iter().any(|v| v == "All"));
    let opts = Write { strict, dry_run };
    let preconditions = delete_options
        .get("preconditions")
        .cloned()
        .unwrap_or(Value::Null);
    let accept = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let as_table = crate::table::wanted(accept);
    let table = |items: &[Arc<Value>], rv: Option<u64>| {
        crate::table::render(
            items.iter().map(|v| &**v),
            &store.printer_columns(&t),
            rv,
            chrono::Utc::now(),
        )
    };
    match (method.clone(), name) {
        (Method::GET, Some(name)) if as_table => {
            ok(&table(&[store.get_shared(&t, namespace, name)?], None))
        }
        (Method::GET, Some(name)) => ok(store.get_shared(&t, namespace, name)?.as_ref()),
        (Method::GET, None) => {
            let (labels, fields) = selectors(query)?;
            if query.get("watch").is_some_and(|w| w == "true" || w == "1") {
                let columns = as_table.then(|| store.printer_columns(&t));
                return watch(app, &t, namespace, query, labels, fields, columns);
            }
            let paging = Paging::from_query(query)?;
            let after = paging
                .after
                .as_ref()
                .map(|(ns, name)| (ns.as_str(), name.as_str()));
            let page = store.page(&t, namespace, &labels, &fields, after, paging.limit);
            let metadata = paging.metadata(&page);
            if as_table {
                let mut table = table(&page.items, Some(page.rv));
                table["metadata"] = metadata;
                return ok(&table);
            }
            list_response(&t, metadata, &page.items)
        }
        (Method::POST, None) => {
            let created = store.create(&t, namespace, parse_body()?, opts)?;
            Ok(json_response(StatusCode::CREATED, &created))
        }
        (Method::PUT, Some(name)) => ok(store
            .update(&t, namespace, name, parse_body()?, status_only, opts)?
            .as_ref()),
        (Method::PATCH, Some(name)) => {
            let content_type = headers
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default();
            let patch = parse_body()?;
            if content_type.starts_with("application/apply-patch") {
                return server_side_apply(
                    store,
                    &t,
                    namespace,
                    name,
                    sub.unwrap_or_default(),
                    patch,
                    query,
                    opts,
                );
            }
            let mut patched = store.get(&t, namespace, name)?;
            if content_type.starts_with("application/json-patch+json") {
                let ops: json_patch::Patch = serde_json::from_value(patch.clone())
                    .map_err(|e| ApiError::bad_request(format!("invalid JSON patch: {e}")))?;
                json_patch::patch(&mut patched, &ops)
                    .map_err(|e| ApiError::patch_failed(e.to_string()))?;
            } else if content_type.starts_with("application/strategic-merge-patch+json") {
                if !crate::registry::is_builtin(&t) {
                    // As the real server: custom resources have no Go types to merge by.
                    return Err(ApiError::unsupported_media_type(&[
                        "application/json-patch+json",
                        "application/merge-patch+json",
                        "application/apply-patch+yaml",
                    ]));
                }
                crate::strategic::merge(&mut patched, &patch);
            } else {
                json_patch::merge(&mut patched, &patch);
            }
            if let Some(meta) = patched.get_mut("metadata").and_then(Value::as_object_mut) {
                // A patch that does not name a version never conflicts.
                if patch.pointer("/metadata/resourceVersion").is_none() {
                    meta.remove("resourceVersion");
                }
            }
            ok(store
                .update(&t, namespace, name, patched, status_only, opts)?
                .as_ref())
        }
        (Method::DELETE, Some(name)) => {
            let named = query.get("propagationPolicy").map(String::as_str);
            let chosen = crate::gc::Propagation::from_options(&delete_options, named)?;
            let policy = chosen.unwrap_or_else(|| crate::gc::Propagation::default_for(&t));
            let grace = delete_options
                .get("gracePeriodSeconds")
                .and_then(Value::as_i64)
                .or_else(|| query.get("gracePeriodSeconds").and_then(|g| g.parse().ok()));
            let current = store.get_shared(&t, namespace, name)?;
            let deletion = crate::gc::deletion(app, &t, &current, policy, grace);
            let deleted =
                store.delete_with(&t, namespace, name, &preconditions, opts, &deletion)?;
            let mut response = json_response(StatusCode::OK, &deleted);
            if chosen.is_none() && policy == crate::gc::Propagation::Orphan {
                // As the real server warns when a Job's pods are kept by default.
                response.headers_mut().insert(
                    "warning",
                    axum::http::HeaderValue::from_static(
                        "299 - \"child pods are preserved by default when jobs are deleted; set propagationPolicy=Background to remove them or set propagationPolicy=Orphan to suppress this warning\"",
                    ),
                );
            }
            Ok(response)
        }
        (Method::DELETE, None) => {
            let (labels, fields) = selectors(query)?;
            let (items, rv) = store.list(&t, namespace, &labels, &fields);
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
                let named = query.get("propagationPolicy").map(String::as_str);
                let policy = crate::gc::Propagation::from_options(&delete_options, named)?
                    .unwrap_or_else(|| crate::gc::Propagation::default_for(&t));
                let deletion = crate::gc::deletion(app, &t, &item, policy, None);
                match store.delete_with(&t, &ns, &n, &Value::Null, opts, &deletion) {
                    Ok(gone) => deleted.push(gone),
                    // Deleted meanwhile (e.g. with its namespace): nothing left to do.
                    Err(err) if err.code == 404 => {}
                    Err(err) => return Err(err),
                }
            }
            list_response(&t, json!({"resourceVersion": rv.to_string()}), &deleted)
        }
        (m, _) => Err(ApiError::method_not_allowed(m.as_str())),
    }
}

/// Server-side apply (see [`crate::apply`]); creates the object when it does not exist.
#[allow(clippy::too_many_arguments)]
fn server_side_apply(
    store: &Store,
    t: &ResourceType,
    namespace: &str,
    name: &str,
    subresource: &str,
    config: Value,
    query: &HashMap<String, String>,
    opts: Write,
) -> Result<Response, ApiError> {
    let Some(manager) = query.get("fieldManager").filter(|m| !m.is_empty()) else {
        return Err(ApiError::field_manager_required());
    };
    let force = query.get("force").is_some_and(|f| f == "true");
    let (current, exists) = match store.get(t, namespace, name) {
        Ok(current) => (current, true),
        Err(err) if err.code == 404 && subresource.is_empty() => (
            json!({"apiVersion": t.api_version(), "kind": t.kind,
                "metadata": {"name": name, "namespace": namespace}}),
            false,
        ),
        Err(err) => return Err(err),
    };
    let mut applied = crate::apply::apply(
        &current,
        &config,
        manager,
        subresource,
        &t.api_version(),
        force,
    )
    .map_err(|conflicts| {
        ApiError::apply_conflict(
            crate::apply::conflict_message(&conflicts),
            conflicts
                .iter()
                .map(|c| (c.manager.as_str(), c.field.as_str())),
        )
    })?;
    if !exists {
        let created = store.create(t, namespace, applied, opts)?;
        return Ok(json_response(StatusCode::CREATED, &created));
    }
    if config.pointer("/metadata/resourceVersion").is_none()
        && let Some(meta) = applied.get_mut("metadata").and_then(Value::as_object_mut)
    {
        meta.remove("resourceVersion");
    }
    let updated = store.update(t, namespace, name, applied, subresource == "status", opts)?;
    Ok(json_response(StatusCode::OK, &updated))
}

/// `limit` and `continue` of a list request, applied to a list sorted by namespace and name.
/// The continue token carries the first page's resourceVersion and names the last object
/// returned. Later pages show the objects as they are now rather than as of the first page,
/// but every page reports the first page's resourceVersion: a client that watches from it
/// after the last page is replayed whatever changed while it paged (at worst twice), and
/// misses nothing.
struct Paging {
    /// The first page's resourceVersion, from the continue token.
    rv: Option<u64>,
    /// The (namespace, name) of the last object already returned.
    after: Option<(String, String)>,
    /// At most this many objects per page.
    limit: Option<usize>,
}

impl Paging {
    fn from_query(query: &HashMap<String, String>) -> Result<Paging, ApiError> {
        let limit = query
            .get("limit")
            .and_then(|l| l.parse::<usize>().ok())
            .filter(|l| *l > 0);
        let Some(token) = query.get("continue").filter(|c| !c.is_empty()) else {
            return Ok(Paging {
                rv: None,
                after: None,
                limit,
            });
        };
        let mut parts = token.splitn(3, '/');
        let (Some(first), Some(ns), Some(name)) = (parts.next(), parts.next(), parts.next()) else {
            return Err(ApiError::bad_request("invalid continue token"));
        };
        let rv = first
            .parse()
            .map_err(|_| ApiError::bad_request("invalid continue token"))?;
        Ok(Paging {
            rv: Some(rv),
            after: Some((ns.to_string(), name.to_string())),
            limit,
        })
    }

    /// The list metadata of `page`: its resourceVersion, and a continue token and the count
    /// left when more objects follow.
    fn metadata(&self, page: &Page) -> Value {
        let rv = self.rv.unwrap_or(page.rv);
        let mut metadata = json!({"resourceVersion": rv.to_string()});
        if self.limit.is_some()
            && page.remaining > 0
            && let Some(last) = page.items.last()
        {
            let text = |p: &str| last.pointer(p).and_then(Value::as_str).unwrap_or_default();
            let (ns, name) = (text("/metadata/namespace"), text("/metadata/name"));
            metadata["continue"] = json!(format!("{rv}/{ns}/{name}"));
            metadata["remainingItemCount"] = json!(page.remaining);
        }
        metadata
    }
}

/// A line of a watch stream; `Last` ends it.
enum Item {
    Line(Bytes),
    Last(Bytes),
}

/// How often an idle watch that asked for bookmarks gets one.
const BOOKMARK_EVERY: Duration = Duration::from_secs(1);

fn watch_line(kind: &str, object: &Value) -> Bytes {
    let mut line = json!({"type": kind, "object": object}).to_string();
    line.push('\n');
    Bytes::from(line)
}

/// Encodes one watch event; with `columns` the object goes out as a one-row Table, as
/// `kubectl get -w` asks.
fn event_line(kind: &str, object: &Value, columns: Option<&[Value]>) -> Bytes {
    match columns {
        Some(columns) => watch_line(
            kind,
            &crate::table::render(std::iter::once(object), columns, None, chrono::Utc::now()),
        ),
        None => watch_line(kind, object),
    }
}

fn watch(
    app: &Arc<AppState>,
    t: &ResourceType,
    namespace: &str,
    query: &HashMap<String, String>,
    labels: Selector,
    fields: Selector,
    columns: Option<Vec<Value>>,
) -> Result<Response, ApiError> {
    let store = &app.store;
    if app.faults.take_expired_watch() {
        let line = watch_line("ERROR", &ApiError::gone(store.current_rv()).status());
        return Ok(Response::builder()
            .status(StatusCode::OK)
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(line))
            .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response()));
    }
    let mut dropped = app.faults.drop_watches.subscribe();
    dropped.mark_unchanged();
    // Subscribe before reading the backlog so nothing falls between the two.
    let live = store.subscribe();
    // `sendInitialEvents=true` (streaming lists) starts with the current state whatever the
    // version, and marks its end with a bookmark.
    let send_initial = query.get("sendInitialEvents").is_some_and(|v| v == "true");
    let from: Option<u64> = query
        .get("resourceVersion")
        .filter(|v| !v.is_empty() && *v != "0" && !send_initial)
        .and_then(|v| v.parse().ok());
    let mut initial: Vec<Bytes> = Vec::new();
    let mut last_sent = store.current_rv();
    match from {
        Some(rv) => match store.events_since(t, namespace, rv) {
            Ok(events) => {
                for e in events.iter().filter(|e| {
                    labels.matches_labels(&e.object) && fields.matches_fields(&e.object)
                }) {
                    initial.push(event_line(e.kind, &e.object, columns.as_deref()));
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
                initial.push(event_line("ADDED", item, columns.as_deref()));
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
    // The version every event up to which this watch has looked at: what bookmarks carry, so a
    // client resuming from one misses nothing still in flight.
    let seen = Arc::new(AtomicU64::new(last_sent));
    let seen_by_events = seen.clone();
    let events = BroadcastStream::new(live).filter_map(move |e: Result<Event, _>| {
        let item = match e {
            Ok(e) if e.rv > last_sent => {
                let keep = e.type_key == key
                    && (namespace.is_empty() || e.namespace == namespace)
                    && labels.matches_labels(&e.object)
                    && fields.matches_fields(&e.object);
                let line =
                    keep.then(|| Item::Line(event_line(e.kind, &e.object, columns.as_deref())));
                seen_by_events.fetch_max(e.rv, Ordering::SeqCst);
                line
            }
            Ok(_) => None,
            // This watcher fell behind and lost events: tell it to relist, and stop.
            Err(_) => Some(Item::Last(watch_line(
                "ERROR",
                &ApiError::gone(last_sent).status(),
            ))),
        };
        futures::future::ready(item)
    });
    let bookmark = move |rv: u64, initial_end: bool| {
        let mut object = json!({"kind": kind, "apiVersion": api_version,
            "metadata": {"resourceVersion": rv.to_string()}});
        if initial_end {
            object["metadata"]["annotations"] = json!({"k8s.io/initial-events-end": "true"});
        }
        watch_line("BOOKMARK", &object)
    };
    let initial_end = (send_initial && bookmarks).then(|| Item::Line(bookmark(last_sent, true)));
    let ticker = tokio_stream::wrappers::IntervalStream::new(tokio::time::interval_at(
        tokio::time::Instant::now() + BOOKMARK_EVERY,
        BOOKMARK_EVERY,
    ))
    .filter(move |_| futures::future::ready(bookmarks))
    .map(move |_| Item::Line(bookmark(seen.load(Ordering::SeqCst), false)));
    let stream = futures::stream::iter(initial.into_iter().map(Item::Line))
        .chain(futures::stream::iter(initial_end))
        .chain(futures::stream::select(events, ticker))
        .scan(false, |ended, item| {
            futures::future::ready(match item {
                _ if *ended => None,
                Item::Line(line) => Some(line),
                Item::Last(line) => {
                    *ended = true;
                    Some(line)
                }
            })
        })
        .map(Ok::<Bytes, std::io::Error>)
        .take_until(tokio::time::sleep(timeout))
        .take_until(async move {
            let _ = dropped.changed().await;
        });
    Ok(Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from_stream(stream))
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response()))
}
