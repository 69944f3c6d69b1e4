//! Watches: `?watch=true` streams of events, resumable from a resourceVersion, with
//! bookmarks, streaming lists (`sendInitialEvents`), 410 Gone when the history has moved past
//! the version asked for, and the stream closed when the watcher falls behind.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::response::Response;
use futures::StreamExt;
use serde_json::{Value, json};
use tokio_stream::wrappers::BroadcastStream;

use super::response::json_body;
use crate::error::ApiError;
use crate::registry::ResourceType;
use crate::selector::Selector;
use crate::state::AppState;
use crate::store::{Event, type_key};

/// A line of a watch stream; `End` ends it.
enum Item {
    Line(Bytes),
    End,
}

/// How often an idle watch that asked for bookmarks gets one.
const BOOKMARK_EVERY: Duration = Duration::from_secs(1);

fn watch_line(kind: &str, object: &Value) -> Bytes {
    let mut line = json!({"type": kind, "object": object}).to_string();
    line.push('\n');
    Bytes::from(line)
}

/// Encodes one watch event; with a table format the object goes out as a one-row Table, as
/// `kubectl get -w` asks.
fn event_line(kind: &str, object: &Value, table: Option<&crate::table::Format>) -> Bytes {
    match table {
        Some(format) => watch_line(
            kind,
            &crate::table::render(std::iter::once(object), format, None, chrono::Utc::now()),
        ),
        None => watch_line(kind, object),
    }
}

/// Serves a watch of `t` in `namespace` ("" = all): the initial events (a backlog from
/// `resourceVersion`, or the current objects), then changes, and bookmarks when asked for,
/// until `timeoutSeconds`, a dropped watch, or the watcher falling behind.
pub fn watch(
    app: &Arc<AppState>,
    t: &ResourceType,
    namespace: &str,
    query: &HashMap<String, String>,
    labels: Selector,
    fields: Selector,
    table: Option<crate::table::Format>,
) -> Result<Response, ApiError> {
    let store = &app.store;
    if app.faults.take_expired_watch() {
        let line = watch_line("ERROR", &ApiError::gone(store.current_rv()).status());
        return Ok(json_body(Body::from(line)));
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
                    initial.push(event_line(e.kind, &e.object, table.as_ref()));
                }
                last_sent = events
                    .last()
                    .map_or(rv.max(last_sent), |e| e.rv.max(last_sent));
            }
            Err(gone) => {
                // The real server ends the stream after the error; the client relists.
                let line = watch_line("ERROR", &gone.status());
                return Ok(json_body(Body::from(line)));
            }
        },
        None => {
            let (items, rv) = store.list(t, namespace, &labels, &fields);
            for item in &items {
                initial.push(event_line("ADDED", item, table.as_ref()));
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
                let line = keep.then(|| Item::Line(event_line(e.kind, &e.object, table.as_ref())));
                seen_by_events.fetch_max(e.rv, Ordering::SeqCst);
                line
            }
            Ok(_) => None,
            // This watcher fell behind and lost events. The real server closes an
            // unresponsive watcher without an error; the client watches again from the last
            // version it got, which the history still holds, instead of relisting.
            Err(_) => Some(Item::End),
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
        // The stream ends at the first `End`.
        .scan((), |(), item| {
            futures::future::ready(match item {
                Item::Line(line) => Some(line),
                Item::End => None,
            })
        })
        .map(Ok::<Bytes, std::io::Error>)
        .take_until(tokio::time::sleep(timeout))
        .take_until(async move {
            let _ = dropped.changed().await;
        });
    Ok(json_body(Body::from_stream(stream)))
}
