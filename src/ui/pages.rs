//! The HTML pages: server-rendered from the same views the JSON API answers with, each with a
//! live region that htmx polls and the server answers with 304 while nothing changed.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use askama::Template;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Redirect, Response};
use chrono::{DateTime, Utc};

use super::Ui;
use super::auth::{COOKIE_NAME, Permission};
use super::error::UiError;
use super::model::{self, relative};
use charon_core::resources::InstanceState;

type Params = Query<HashMap<String, String>>;

/// How often the live regions poll, in seconds.
const POLL_SECONDS: u32 = 2;

/// A time as the pages show it: UTC, to the second.
fn at(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%d %H:%M:%SZ").to_string()
}

/// The CSS class of a state (its name in lower case); the name is always shown as text too.
fn class(state: InstanceState) -> String {
    state.as_str().to_ascii_lowercase()
}

fn encode(text: &str) -> String {
    url::form_urlencoded::byte_serialize(text.as_bytes()).collect()
}

fn etag_of(html: &str) -> String {
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    html.hash(&mut hasher);
    format!("\"{:016x}\"", hasher.finish())
}

/// The live region around `inner`: polled at `url`, and carrying its own ETag so the poll
/// asks for a change only.
fn live(url: &str, inner: &str) -> (String, String) {
    let etag = etag_of(inner);
    let headers = format!("{{\"If-None-Match\": {}}}", serde_json::json!(etag));
    let html = format!(
        "<div id=\"live\" hx-get=\"{}\" hx-trigger=\"every {POLL_SECONDS}s, refresh\" hx-swap=\"outerHTML\" hx-headers='{}'>{inner}</div>",
        askama::filters::escape(url, askama::filters::Html)
            .map(|e| e.to_string())
            .unwrap_or_default(),
        headers.replace('\'', "&#39;")
    );
    (etag, html)
}

/// A page, or only its live region when htmx polls (304 when unchanged).
/// What a page holds around its live region: forms and the log viewer, which polling must
/// not replace while someone types in them.
struct Frame {
    title: String,
    nav: Vec<Crumb>,
    before: String,
    after: String,
}

fn respond(headers: &HeaderMap, frame: Frame, url: &str, inner: String) -> Response {
    let (etag, region) = live(url, &inner);
    if headers.contains_key("hx-request") {
        let unchanged = headers
            .get(header::IF_NONE_MATCH)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v == etag);
        if unchanged {
            return StatusCode::NOT_MODIFIED.into_response();
        }
        let mut response = Html(region).into_response();
        if let Ok(value) = HeaderValue::from_str(&etag) {
            response.headers_mut().insert(header::ETAG, value);
        }
        return response;
    }
    let page = Layout {
        title: frame.title,
        nav: frame.nav,
        before: frame.before,
        live: region,
        after: frame.after,
    };
    match page.render() {
        Ok(html) => Html(html).into_response(),
        Err(e) => UiError::bad_request(format!("rendering the page: {e}")).into_response(),
    }
}

/// A link in the breadcrumb.
struct Crumb {
    href: String,
    text: String,
}

#[derive(Template)]
#[template(path = "ui/layout.html")]
struct Layout {
    title: String,
    nav: Vec<Crumb>,
    before: String,
    live: String,
    after: String,
}

#[derive(Template)]
#[template(path = "ui/error.html")]
struct ErrorPage {
    status: u16,
    message: String,
    local: bool,
}

/// An error as a page (the API answers JSON instead).
fn error_page(ui: &Ui, error: UiError) -> Response {
    let page = ErrorPage {
        status: error.status.as_u16(),
        message: error.message.clone(),
        local: ui.authority.local(),
    };
    let html = page.render().unwrap_or(error.message);
    (error.status, Html(html)).into_response()
}

/// Opening a URL with `?token=T` keeps the token in a cookie and drops it from the address,
/// so it is neither bookmarked nor sent on in Referer headers.
async fn login(
    ui: &Ui,
    params: &HashMap<String, String>,
    path: &str,
) -> Result<Option<Response>, UiError> {
    let Some(token) = params.get("token") else {
        return Ok(None);
    };
    ui.authority.authenticate_token(token).await?;
    let mut rest: Vec<String> = params
        .iter()
        .filter(|(k, _)| k.as_str() != "token")
        .map(|(k, v)| format!("{}={}", encode(k), encode(v)))
        .collect();
    rest.sort();
    let target = if rest.is_empty() {
        path.to_string()
    } else {
        format!("{path}?{}", rest.join("&"))
    };
    let mut response = Redirect::to(&target).into_response();
    let cookie = format!("{COOKIE_NAME}={token}; Path=/; HttpOnly; SameSite=Strict");
    if let Ok(value) = HeaderValue::from_str(&cookie) {
        response.headers_mut().insert(header::SET_COOKIE, value);
    }
    Ok(Some(response))
}

struct RecentCell {
    class: String,
    letter: String,
    title: String,
    href: String,
}

struct WorkflowRow {
    namespace: String,
    name: String,
    href: String,
    schedule: String,
    status: String,
    status_class: String,
    next: String,
    next_in: String,
    last: String,
    active: u32,
    recent: Vec<RecentCell>,
}

#[derive(Template)]
#[template(path = "ui/workflows_live.html")]
struct WorkflowsLive {
    rows: Vec<WorkflowRow>,
    total: usize,
}

#[derive(Template)]
#[template(path = "ui/workflows_filters.html")]
struct WorkflowsFilters {
    namespaces: Vec<(String, bool)>,
    health: Vec<(&'static str, bool)>,
}

/// The health filter of the workflows page.
const HEALTH: [&str; 5] = ["all", "failing", "running", "suspended", "invalid"];

fn health_matches(item: &model::WorkflowItem, health: &str) -> bool {
    match health {
        "failing" => item
            .recent
            .first()
            .is_some_and(|r| r.state == InstanceState::Error),
        "running" => item.active > 0,
        "suspended" => item.suspended,
        "invalid" => !item.valid,
        _ => true,
    }
}

fn workflow_row(item: &model::WorkflowItem, now: DateTime<Utc>) -> WorkflowRow {
    let (status, status_class) = if !item.valid {
        ("Invalid", "invalid")
    } else if item.suspended {
        ("Suspended", "suspended")
    } else {
        ("Active", "active")
    };
    let href = format!(
        "/namespaces/{}/workflows/{}",
        encode(&item.namespace),
        encode(&item.name)
    );
    WorkflowRow {
        namespace: item.namespace.clone(),
        name: item.name.clone(),
        schedule: format!("{} ({})", item.schedule, item.time_zone),
        status: if item.valid {
            status.to_string()
        } else {
            format!("{status}: {}", item.message)
        },
        status_class: status_class.to_string(),
        next: item.next_trigger.map(at).unwrap_or_else(|| "—".into()),
        next_in: item
            .next_trigger
            .map(|t| relative(t, now))
            .unwrap_or_default(),
        last: item
            .last_triggered
            .as_ref()
            .map(|l| l.parameter.clone())
            .unwrap_or_else(|| "—".into()),
        active: item.active,
        recent: item
            .recent
            .iter()
            .rev()
            .map(|r| RecentCell {
                class: class(r.state),
                letter: r.state.as_str().chars().take(1).collect(),
                title: format!("{}: {}", r.parameter, r.state.as_str()),
                href: format!(
                    "/namespaces/{}/instances/{}",
                    encode(&item.namespace),
                    encode(&r.instance)
                ),
            })
            .collect(),
        href,
    }
}

/// `GET /`: the workflows, filtered by namespace and health.
pub async fn workflows(
    State(ui): State<Arc<Ui>>,
    Query(params): Params,
    headers: HeaderMap,
) -> Response {
    match workflows_page(&ui, &params, &headers).await {
        Ok(r) => r,
        Err(e) => error_page(&ui, e),
    }
}

async fn workflows_page(
    ui: &Ui,
    params: &HashMap<String, String>,
    headers: &HeaderMap,
) -> Result<Response, UiError> {
    if let Some(r) = login(ui, params, "/").await? {
        return Ok(r);
    }
    let principal = ui.authority.authenticate(headers).await?;
    let visible = ui.visible(&principal).await;
    let namespace = params.get("namespace").filter(|n| !n.is_empty()).cloned();
    let health = params
        .get("health")
        .map(String::as_str)
        .filter(|h| HEALTH.contains(h))
        .unwrap_or("all");
    let all = ui.workflow_items(None, visible.as_ref());
    let mut namespaces: Vec<String> = all.iter().map(|w| w.namespace.clone()).collect();
    namespaces.dedup();
    let now = Utc::now();
    let rows: Vec<WorkflowRow> = all
        .iter()
        .filter(|w| namespace.as_deref().is_none_or(|ns| w.namespace == ns))
        .filter(|w| health_matches(w, health))
        .map(|w| workflow_row(w, now))
        .collect();
    let mut query = Vec::new();
    if let Some(ns) = &namespace {
        query.push(format!("namespace={}", encode(ns)));
    }
    if health != "all" {
        query.push(format!("health={health}"));
    }
    let url = format!("/?{}", query.join("&"));
    let inner = WorkflowsLive {
        total: all.len(),
        rows,
    }
    .render()
    .map_err(|e| UiError::bad_request(e.to_string()))?;
    let filters = WorkflowsFilters {
        namespaces: namespaces
            .into_iter()
            .map(|ns| {
                let selected = namespace.as_deref() == Some(ns.as_str());
                (ns, selected)
            })
            .collect(),
        health: HEALTH.iter().map(|h| (*h, *h == health)).collect(),
    }
    .render()
    .map_err(|e| UiError::bad_request(e.to_string()))?;
    // The filters come first on the page: the live region follows them.
    let frame = Frame {
        title: "Workflows".into(),
        nav: Vec::new(),
        before: filters,
        after: String::new(),
    };
    Ok(respond(headers, frame, &url, inner))
}

struct PartitionRow {
    parameter: String,
    href: String,
    state: String,
    class: String,
    tries: u32,
    trigger: String,
    attempts: Vec<AttemptCellView>,
}

struct AttemptCellView {
    class: String,
    text: String,
    title: String,
}

struct BackfillRow {
    name: String,
    href: String,
    range: String,
    state: String,
    percent: u32,
    progress: String,
}

#[derive(Template)]
#[template(path = "ui/workflow_live.html")]
struct WorkflowLive {
    row: WorkflowRow,
    message: String,
    states: Vec<(String, usize)>,
    upcoming: Vec<(String, String, String)>,
    partitions: Vec<PartitionRow>,
    total: usize,
    filter: String,
    newer: Option<String>,
    older: Option<String>,
    backfills: Vec<BackfillRow>,
    priority: u32,
    pools: Vec<model::PoolView>,
    waiting: Vec<(String, String, String)>,
}

#[derive(Template)]
#[template(path = "ui/workflow_actions.html")]
struct WorkflowActions {
    namespace: String,
    name: String,
    suspended: bool,
    states: Vec<(&'static str, bool)>,
    suggested: String,
    start: String,
    end: String,
}

fn partition_row(namespace: &str, p: &model::PartitionItem) -> PartitionRow {
    PartitionRow {
        parameter: p.parameter.clone(),
        href: format!(
            "/namespaces/{}/instances/{}",
            encode(namespace),
            encode(&p.instance)
        ),
        state: p.state.as_str().to_string(),
        class: class(p.state),
        tries: p.tries,
        trigger: format!("{:?}", p.trigger_type),
        attempts: p
            .attempts
            .iter()
            .map(|a| {
                let exit = a
                    .exit_code
                    .map(|c| c.to_string())
                    .unwrap_or_else(|| "–".into());
                AttemptCellView {
                    class: a.outcome.to_ascii_lowercase(),
                    text: format!("#{} {}", a.execution, exit),
                    title: format!("attempt {}: {}, exit {exit}", a.execution, a.outcome),
                }
            })
            .collect(),
    }
}

fn backfill_row(namespace: &str, b: &model::BackfillItem) -> BackfillRow {
    BackfillRow {
        href: format!(
            "/namespaces/{}/backfills/{}",
            encode(namespace),
            encode(&b.name)
        ),
        name: b.name.clone(),
        range: format!("{} → {}", b.start, b.end),
        state: b.state.clone(),
        percent: b.percent,
        progress: format!("{}/{} finished, {} active", b.finished, b.total, b.active),
    }
}

/// `GET /namespaces/{ns}/workflows/{wf}`.
pub async fn workflow(
    State(ui): State<Arc<Ui>>,
    Path((ns, name)): Path<(String, String)>,
    Query(params): Params,
    headers: HeaderMap,
) -> Response {
    match workflow_page(&ui, &ns, &name, &params, &headers).await {
        Ok(r) => r,
        Err(e) => error_page(&ui, e),
    }
}

async fn workflow_page(
    ui: &Ui,
    ns: &str,
    name: &str,
    params: &HashMap<String, String>,
    headers: &HeaderMap,
) -> Result<Response, UiError> {
    let path = format!("/namespaces/{}/workflows/{}", encode(ns), encode(name));
    if let Some(r) = login(ui, params, &path).await? {
        return Ok(r);
    }
    ui.check(headers, Permission::new("get", "workflows", ns))
        .await?;
    let detail = ui.workflow_detail(ns, name)?;
    let mut page_params = params.clone();
    page_params
        .entry("limit".into())
        .or_insert_with(|| "50".into());
    let page = ui.partition_page(ns, name, &page_params)?;
    let filter = params.get("state").cloned().unwrap_or_default();
    let now = Utc::now();
    let with = |extra: Option<(&str, &str)>| {
        let mut q = Vec::new();
        if !filter.is_empty() {
            q.push(format!("state={}", encode(&filter)));
        }
        if let Some((k, v)) = extra {
            q.push(format!("{k}={}", encode(v)));
        }
        format!("{path}?{}", q.join("&"))
    };
    let continued = params.get("continue").filter(|c| !c.is_empty());
    let url = match continued {
        Some(c) => with(Some(("continue", c))),
        None => with(None),
    };
    let suggested = detail
        .item
        .last_triggered
        .as_ref()
        .map(|l| l.parameter.clone())
        .unwrap_or_default();
    let (start, end) = match (detail.upcoming.first(), detail.item.last_triggered.as_ref()) {
        (_, Some(last)) => (String::new(), last.parameter.clone()),
        (Some(next), None) => (String::new(), next.parameter.clone()),
        _ => (String::new(), String::new()),
    };
    let inner = WorkflowLive {
        row: workflow_row(&detail.item, now),
        message: detail.item.message.clone(),
        states: detail.states.iter().map(|(k, v)| (k.clone(), *v)).collect(),
        upcoming: detail
            .upcoming
            .iter()
            .map(|p| {
                (
                    p.parameter.clone(),
                    at(p.trigger_at),
                    relative(p.trigger_at, now),
                )
            })
            .collect(),
        partitions: page.items.iter().map(|p| partition_row(ns, p)).collect(),
        total: page.total,
        filter: filter.clone(),
        newer: continued.map(|_| with(None)),
        older: page.next.as_deref().map(|c| with(Some(("continue", c)))),
        backfills: detail
            .backfills
            .iter()
            .map(|b| backfill_row(ns, b))
            .collect(),
        priority: detail.priority,
        pools: detail.pools.clone(),
        waiting: detail
            .waiting
            .iter()
            .map(|w| {
                (
                    w.parameter.clone(),
                    format!(
                        "/namespaces/{}/instances/{}",
                        encode(ns),
                        encode(&w.instance)
                    ),
                    w.message.clone(),
                )
            })
            .collect(),
    }
    .render()
    .map_err(|e| UiError::bad_request(e.to_string()))?;
    let actions = WorkflowActions {
        namespace: ns.to_string(),
        name: name.to_string(),
        suspended: detail.item.suspended,
        states: InstanceState::ALL
            .iter()
            .map(|s| (s.as_str(), s.as_str() == filter))
            .collect(),
        suggested,
        start,
        end,
    }
    .render()
    .map_err(|e| UiError::bad_request(e.to_string()))?;
    let frame = Frame {
        title: format!("Workflow {name}"),
        nav: vec![Crumb {
            href: format!("/?namespace={}", encode(ns)),
            text: ns.to_string(),
        }],
        before: String::new(),
        after: actions,
    };
    Ok(respond(headers, frame, &url, inner))
}

struct HistoryRow {
    at: String,
    from: String,
    to: String,
    to_class: String,
    reason: String,
    message: String,
}

struct AttemptRow {
    execution: u32,
    job: String,
    started: String,
    finished: String,
    exit: String,
    outcome: String,
    class: String,
    reason: String,
}

struct EventRow {
    kind: String,
    reason: String,
    message: String,
    count: i32,
    last: String,
}

#[derive(Template)]
#[template(path = "ui/instance_live.html")]
struct InstanceLive {
    view: model::InstanceView,
    state: String,
    class: String,
    workflow_href: String,
    history: Vec<HistoryRow>,
    attempts: Vec<AttemptRow>,
    events: Vec<EventRow>,
    steps: Vec<(String, String, String)>,
}

#[derive(Template)]
#[template(path = "ui/instance_actions.html")]
struct InstanceActions {
    namespace: String,
    name: String,
    terminal: bool,
    suspended: bool,
}

#[derive(Template)]
#[template(path = "ui/instance_log.html")]
struct InstanceLog {
    attempts: Vec<u32>,
    log_url: String,
}

/// `GET /namespaces/{ns}/instances/{name}`.
pub async fn instance(
    State(ui): State<Arc<Ui>>,
    Path((ns, name)): Path<(String, String)>,
    Query(params): Params,
    headers: HeaderMap,
) -> Response {
    match instance_page(&ui, &ns, &name, &params, &headers).await {
        Ok(r) => r,
        Err(e) => error_page(&ui, e),
    }
}

async fn instance_page(
    ui: &Ui,
    ns: &str,
    name: &str,
    params: &HashMap<String, String>,
    headers: &HeaderMap,
) -> Result<Response, UiError> {
    let path = format!("/namespaces/{}/instances/{}", encode(ns), encode(name));
    if let Some(r) = login(ui, params, &path).await? {
        return Ok(r);
    }
    ui.check(headers, Permission::new("get", "workflowinstances", ns))
        .await?;
    let view = ui.instance_view(ns, name)?;
    let dash = |t: Option<DateTime<Utc>>| t.map(at).unwrap_or_else(|| "—".into());
    let inner = InstanceLive {
        state: view.state.as_str().to_string(),
        class: class(view.state),
        workflow_href: format!(
            "/namespaces/{}/workflows/{}",
            encode(ns),
            encode(&view.workflow)
        ),
        history: view
            .history
            .iter()
            .map(|h| HistoryRow {
                at: at(h.at),
                from: h.from.as_str().to_string(),
                to: h.to.as_str().to_string(),
                to_class: class(h.to),
                reason: h.reason.clone(),
                message: h.message.clone(),
            })
            .collect(),
        attempts: view
            .attempts
            .iter()
            .map(|a| {
                let outcome = a
                    .outcome
                    .map(|o| format!("{o:?}"))
                    .unwrap_or_else(|| "Running".into());
                AttemptRow {
                    execution: a.execution,
                    job: a.job.clone(),
                    started: dash(a.started_at),
                    finished: dash(a.finished_at),
                    exit: a
                        .exit_code
                        .map(|c| c.to_string())
                        .unwrap_or_else(|| "—".into()),
                    class: outcome.to_ascii_lowercase(),
                    outcome,
                    reason: a.reason.clone(),
                }
            })
            .collect(),
        events: view
            .events
            .iter()
            .map(|e| EventRow {
                kind: e.kind.clone(),
                reason: e.reason.clone(),
                message: e.message.clone(),
                count: e.count,
                last: dash(e.last),
            })
            .collect(),
        steps: view
            .steps
            .iter()
            .map(|s| {
                (
                    s.name.clone(),
                    format!("{:?}", s.state),
                    s.exit_code
                        .map(|c| c.to_string())
                        .unwrap_or_else(|| "—".into()),
                )
            })
            .collect(),
        view: view.clone(),
    }
    .render()
    .map_err(|e| UiError::bad_request(e.to_string()))?;
    let actions = InstanceActions {
        namespace: ns.to_string(),
        name: name.to_string(),
        terminal: view.state.is_terminal(),
        suspended: view.suspended,
    }
    .render()
    .map_err(|e| UiError::bad_request(e.to_string()))?;
    let log = InstanceLog {
        attempts: view.attempts.iter().map(|a| a.execution).collect(),
        log_url: format!(
            "/api/v1/namespaces/{}/instances/{}/log",
            encode(ns),
            encode(name)
        ),
    }
    .render()
    .map_err(|e| UiError::bad_request(e.to_string()))?;
    let nav = vec![
        Crumb {
            href: format!("/?namespace={}", encode(ns)),
            text: ns.to_string(),
        },
        Crumb {
            href: format!(
                "/namespaces/{}/workflows/{}",
                encode(ns),
                encode(&view.workflow)
            ),
            text: view.workflow.clone(),
        },
    ];
    let frame = Frame {
        title: format!("Instance {name}"),
        nav,
        before: actions,
        after: log,
    };
    Ok(respond(headers, frame, &path, inner))
}

#[derive(Template)]
#[template(path = "ui/backfill_live.html")]
struct BackfillLive {
    item: model::BackfillItem,
    eta: String,
    partitions: Vec<(String, String, String, Option<String>, String)>,
}

#[derive(Template)]
#[template(path = "ui/backfill_actions.html")]
struct BackfillActions {
    namespace: String,
    name: String,
    halted: bool,
    concurrency: u32,
}

/// `GET /namespaces/{ns}/backfills/{name}`.
pub async fn backfill(
    State(ui): State<Arc<Ui>>,
    Path((ns, name)): Path<(String, String)>,
    Query(params): Params,
    headers: HeaderMap,
) -> Response {
    match backfill_page(&ui, &ns, &name, &params, &headers).await {
        Ok(r) => r,
        Err(e) => error_page(&ui, e),
    }
}

async fn backfill_page(
    ui: &Ui,
    ns: &str,
    name: &str,
    params: &HashMap<String, String>,
    headers: &HeaderMap,
) -> Result<Response, UiError> {
    let path = format!("/namespaces/{}/backfills/{}", encode(ns), encode(name));
    if let Some(r) = login(ui, params, &path).await? {
        return Ok(r);
    }
    ui.check(headers, Permission::new("get", "backfills", ns))
        .await?;
    let view = ui.backfill_view(ns, name)?;
    let now = Utc::now();
    let eta = match view.item.eta {
        Some(t) => format!("{} ({})", at(t), relative(t, now)),
        None => "—".into(),
    };
    let inner = BackfillLive {
        eta,
        partitions: view
            .partitions
            .iter()
            .map(|p| {
                (
                    p.parameter.clone(),
                    p.state.clone(),
                    p.state.to_ascii_lowercase(),
                    p.instance
                        .as_ref()
                        .map(|i| format!("/namespaces/{}/instances/{}", encode(ns), encode(i))),
                    p.reason.clone().unwrap_or_default(),
                )
            })
            .collect(),
        item: view.item.clone(),
    }
    .render()
    .map_err(|e| UiError::bad_request(e.to_string()))?;
    let actions = BackfillActions {
        namespace: ns.to_string(),
        name: name.to_string(),
        halted: view.item.halted,
        concurrency: view.item.concurrency,
    }
    .render()
    .map_err(|e| UiError::bad_request(e.to_string()))?;
    let nav = vec![
        Crumb {
            href: format!("/?namespace={}", encode(ns)),
            text: ns.to_string(),
        },
        Crumb {
            href: format!(
                "/namespaces/{}/workflows/{}",
                encode(ns),
                encode(&view.item.workflow)
            ),
            text: view.item.workflow.clone(),
        },
    ];
    let frame = Frame {
        title: format!("Backfill {name}"),
        nav,
        before: actions,
        after: String::new(),
    };
    Ok(respond(headers, frame, &path, inner))
}
