//! Requests for resources: get, list, create, update, patch (JSON merge, JSON patch,
//! strategic merge, server-side apply), delete and deletecollection, and `/status`.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::http::{HeaderMap, Method, StatusCode, Uri, header};
use axum::response::Response;
use serde_json::{Value, json};

use super::response::{json_body, json_response, list_response};
use super::watch::watch;
use crate::error::ApiError;
use crate::registry::ResourceType;
use crate::selector::Selector;
use crate::state::AppState;
use crate::store::{Page, Store, Write};

/// `namespaces/{ns}/{plural}[/{name}[/{sub}]]` or `{plural}[/{name}[/{sub}]]`.
pub fn parse_rest<'a>(
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

/// The `labelSelector` and `fieldSelector` of a list, watch or deletecollection (empty ones
/// match everything).
fn selectors(query: &HashMap<String, String>) -> Result<(Selector, Selector), ApiError> {
    let parse = |key: &str| {
        Selector::parse(query.get(key).map(String::as_str).unwrap_or(""))
            .map_err(ApiError::bad_request)
    };
    Ok((parse("labelSelector")?, parse("fieldSelector")?))
}

/// Serves a request under a resource path: CRUD, patch, server-side apply, delete and
/// deletecollection, `/status`, `pods/log`, lists (as Tables when asked) and watches.
#[allow(clippy::too_many_arguments)]
pub async fn resource(
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
    let user_agent = headers
        .get(header::USER_AGENT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let opts = Write {
        strict,
        dry_run,
        manager: Some(crate::apply::manager_of(
            query.get("fieldManager").map(String::as_str),
            user_agent,
        )),
    };
    let preconditions = delete_options
        .get("preconditions")
        .cloned()
        .unwrap_or(Value::Null);
    let accept = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let as_table = crate::table::wanted(accept);
    let format = if as_table {
        crate::table::Format {
            columns: store.printer_columns(&t),
            include: crate::table::Include::from_query(query)?,
        }
    } else {
        crate::table::Format::default()
    };
    let table = |items: &[Arc<Value>], rv: Option<u64>| {
        crate::table::render(items.iter().map(|v| &**v), &format, rv, chrono::Utc::now())
    };
    if *method == Method::GET {
        let watching = query.get("watch").is_some_and(|w| w == "true" || w == "1");
        let send_initial = query.get("sendInitialEvents").is_some_and(|v| v == "true");
        // A plain watch from a version not yet issued is accepted and waits for it, as the
        // real server's; reads and streaming lists must be at least that fresh.
        if (!watching || send_initial)
            && let Err(too_new) = wait_until_fresh(store, query).await
        {
            if watching {
                // Past admission, the real server reports it as the stream's only event.
                let status = json!({"type": "ERROR", "object": too_new.status()});
                return Ok(json_body(axum::body::Body::from(format!("{status}\n"))));
            }
            return Err(too_new);
        }
    }
    match (method.clone(), name) {
        (Method::GET, Some(name)) if as_table => {
            ok(&table(&[store.get_shared(&t, namespace, name)?], None))
        }
        (Method::GET, Some(name)) => ok(store.get_shared(&t, namespace, name)?.as_ref()),
        (Method::GET, None) => {
            let (labels, fields) = selectors(query)?;
            if query.get("watch").is_some_and(|w| w == "true" || w == "1") {
                let table = as_table.then(|| format.clone());
                return watch(app, &t, namespace, query, labels, fields, table);
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
                match store.delete_with(&t, &ns, &n, &Value::Null, opts.clone(), &deletion) {
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
    // The applier's entry is made by `apply` below, not recorded as an update.
    let opts = Write {
        manager: None,
        ..opts
    };
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

/// How long the real server's watch cache waits to catch up with a requested version
/// (`blockTimeout`) before answering `Too large resource version`.
const FRESHNESS_WAIT: Duration = Duration::from_secs(3);

/// Waits until the store has reached the request's `resourceVersion` (other than "0", which
/// accepts any), up to [`FRESHNESS_WAIT`].
async fn wait_until_fresh(store: &Store, query: &HashMap<String, String>) -> Result<(), ApiError> {
    match query
        .get("resourceVersion")
        .and_then(|v| v.parse::<u64>().ok())
    {
        Some(rv) if rv > 0 => store.wait_for_rv(rv, FRESHNESS_WAIT).await,
        _ => Ok(()),
    }
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
            && page.more
            && let Some(last) = page.items.last()
        {
            let text = |p: &str| last.pointer(p).and_then(Value::as_str).unwrap_or_default();
            let (ns, name) = (text("/metadata/namespace"), text("/metadata/name"));
            metadata["continue"] = json!(format!("{rv}/{ns}/{name}"));
            // Unknown (and omitted) when the list has a selector, as from the real server.
            if let Some(remaining) = page.remaining {
                metadata["remainingItemCount"] = json!(remaining);
            }
        }
        metadata
    }
}
