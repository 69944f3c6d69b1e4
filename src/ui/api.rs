//! The JSON API under `/api/v1` (SPEC §12): reads from the UI's caches, actions through
//! [`crate::actions`], each authorised as kubectl would need.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use chrono::Utc;
use k8s_openapi::api::core::v1::EnvVar;
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::json;

use super::Ui;
use super::auth::{Permission, Principal};
use super::error::UiError;
use super::model;
use crate::actions;
use charon_core::resources::{BackfillSpec, Reprocess};

type Params = Query<HashMap<String, String>>;

/// Parses a JSON body; only `application/json` is taken, so a cross-site form cannot post
/// with a browser's cookie.
fn body<T: DeserializeOwned>(headers: &HeaderMap, bytes: &Bytes) -> Result<T, UiError> {
    let json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if !json {
        return Err(UiError::bad_request(
            "the body must be JSON, sent with Content-Type: application/json",
        ));
    }
    let text = if bytes.is_empty() { &b"{}"[..] } else { bytes };
    serde_json::from_slice(text).map_err(|e| {
        let message = e.to_string();
        // serde names the field in "unknown field `x`" and "missing field `x`".
        match message.split('`').nth(1) {
            Some(field) if message.contains("field") => UiError::bad(field, &message),
            _ => UiError::bad_request(format!("the body is not valid: {message}")),
        }
    })
}

impl Ui {
    async fn principal(&self, headers: &HeaderMap) -> Result<Principal, UiError> {
        self.authority.authenticate(headers).await
    }

    /// Authenticates and authorises one request.
    pub(super) async fn check(
        &self,
        headers: &HeaderMap,
        permission: Permission,
    ) -> Result<Principal, UiError> {
        let principal = self.principal(headers).await?;
        self.authority.authorize(&principal, permission).await?;
        Ok(principal)
    }

    /// The namespaces `principal` may list workflows in: `None` for all.
    pub(super) async fn visible(
        &self,
        principal: &Principal,
    ) -> Option<std::collections::BTreeSet<String>> {
        if self
            .authority
            .may(principal, Permission::new("list", "workflows", ""))
            .await
        {
            return None;
        }
        let namespaces: std::collections::BTreeSet<String> = self
            .cache
            .workflows
            .state()
            .iter()
            .filter_map(|w| w.metadata.namespace.clone())
            .collect();
        let mut visible = std::collections::BTreeSet::new();
        for ns in namespaces {
            if self
                .authority
                .may(principal, Permission::new("list", "workflows", &ns))
                .await
            {
                visible.insert(ns);
            }
        }
        Some(visible)
    }

    /// The workflows a principal may see, in `namespace` or all.
    pub(super) fn workflow_items(
        &self,
        namespace: Option<&str>,
        visible: Option<&std::collections::BTreeSet<String>>,
    ) -> Vec<model::WorkflowItem> {
        self.cache
            .workflows_in(namespace)
            .iter()
            .filter(|w| {
                visible.is_none_or(|v| v.contains(w.metadata.namespace.as_deref().unwrap_or("")))
            })
            .map(|w| {
                let ns = w.metadata.namespace.as_deref().unwrap_or_default();
                let name = w.metadata.name.as_deref().unwrap_or_default();
                model::workflow_item(w, &self.cache.instances_of(ns, name))
            })
            .collect()
    }

    pub(super) fn workflow_detail(
        &self,
        namespace: &str,
        name: &str,
    ) -> Result<model::WorkflowDetail, UiError> {
        let workflow = self.cache.workflow(namespace, name).ok_or_else(|| {
            UiError::not_found(format!(
                "workflow {name:?} not found in namespace {namespace}"
            ))
        })?;
        Ok(model::workflow_detail(
            &workflow,
            &self.cache.instances_of(namespace, name),
            &self.cache.backfills_in(namespace),
            &self.cache.pools.state(),
            Utc::now(),
        ))
    }

    pub(super) fn partition_page(
        &self,
        namespace: &str,
        name: &str,
        params: &HashMap<String, String>,
    ) -> Result<model::PartitionPage, UiError> {
        if self.cache.workflow(namespace, name).is_none() {
            return Err(UiError::not_found(format!(
                "workflow {name:?} not found in namespace {namespace}"
            )));
        }
        let get = |k: &str| params.get(k).map(String::as_str);
        let query = model::PageQuery::parse(get("limit"), get("continue"), get("state"))
            .map_err(|e| UiError::bad(e.field, e.reason))?;
        Ok(model::partitions(
            &self.cache.instances_of(namespace, name),
            &query,
        ))
    }

    pub(super) fn instance_view(
        &self,
        namespace: &str,
        name: &str,
    ) -> Result<model::InstanceView, UiError> {
        let instance = self.cache.instance(namespace, name).ok_or_else(|| {
            UiError::not_found(format!(
                "workflowinstance {name:?} not found in namespace {namespace}"
            ))
        })?;
        Ok(model::instance_view(
            &instance,
            &self.cache.events_in(namespace),
            Utc::now(),
        ))
    }

    pub(super) fn backfill_view(
        &self,
        namespace: &str,
        name: &str,
    ) -> Result<model::BackfillView, UiError> {
        let backfill = self.cache.backfill(namespace, name).ok_or_else(|| {
            UiError::not_found(format!(
                "backfill {name:?} not found in namespace {namespace}"
            ))
        })?;
        Ok(model::backfill_view(&backfill, Utc::now()))
    }
}

/// `GET /api/v1/workflows`: every namespace the caller may list.
pub async fn all_workflows(
    State(ui): State<Arc<Ui>>,
    headers: HeaderMap,
) -> Result<Response, UiError> {
    let principal = ui.principal(&headers).await?;
    let visible = ui.visible(&principal).await;
    let items = ui.workflow_items(None, visible.as_ref());
    Ok(Json(json!({ "items": items })).into_response())
}

/// `GET /api/v1/pools`: every Pool with its use (SPEC §13).
pub async fn pools(State(ui): State<Arc<Ui>>, headers: HeaderMap) -> Result<Response, UiError> {
    ui.check(&headers, Permission::new("list", "pools", ""))
        .await?;
    let mut pools: Vec<model::PoolView> = ui
        .cache
        .pools
        .state()
        .iter()
        .map(|p| model::pool_view(p.metadata.name.as_deref().unwrap_or_default(), Some(p), 0))
        .collect();
    pools.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(Json(json!({ "items": pools })).into_response())
}

/// `GET …/workflows`.
pub async fn workflows(
    State(ui): State<Arc<Ui>>,
    Path(ns): Path<String>,
    headers: HeaderMap,
) -> Result<Response, UiError> {
    ui.check(&headers, Permission::new("list", "workflows", &ns))
        .await?;
    Ok(Json(json!({ "items": ui.workflow_items(Some(&ns), None) })).into_response())
}

/// `GET …/workflows/{wf}`.
pub async fn workflow(
    State(ui): State<Arc<Ui>>,
    Path((ns, name)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Response, UiError> {
    ui.check(&headers, Permission::new("get", "workflows", &ns))
        .await?;
    Ok(Json(ui.workflow_detail(&ns, &name)?).into_response())
}

/// `GET …/workflows/{wf}/partitions?limit=N&continue=T&state=S`.
pub async fn partitions(
    State(ui): State<Arc<Ui>>,
    Path((ns, name)): Path<(String, String)>,
    Query(params): Params,
    headers: HeaderMap,
) -> Result<Response, UiError> {
    ui.check(&headers, Permission::new("list", "workflowinstances", &ns))
        .await?;
    Ok(Json(ui.partition_page(&ns, &name, &params)?).into_response())
}

/// `GET …/instances/{name}`.
pub async fn instance(
    State(ui): State<Arc<Ui>>,
    Path((ns, name)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Response, UiError> {
    ui.check(&headers, Permission::new("get", "workflowinstances", &ns))
        .await?;
    Ok(Json(ui.instance_view(&ns, &name)?).into_response())
}

/// Most log lines one poll returns.
const LOG_LINES: usize = 5000;

/// `GET …/instances/{name}/log?attempt=N&cursor=C`: the lines after `cursor` of attempt `N`
/// (default the newest), whether the log is complete (the attempt ended and every line was
/// returned), which attempt it is, and whether the instance has finished (no attempt follows).
pub async fn log(
    State(ui): State<Arc<Ui>>,
    Path((ns, name)): Path<(String, String)>,
    Query(params): Params,
    headers: HeaderMap,
) -> Result<Response, UiError> {
    ui.check(
        &headers,
        Permission::new("get", "pods", &ns).subresource("log"),
    )
    .await?;
    let instance = ui.cache.instance(&ns, &name).ok_or_else(|| {
        UiError::not_found(format!(
            "workflowinstance {name:?} not found in namespace {ns}"
        ))
    })?;
    let number = |key: &str| -> Result<Option<u64>, UiError> {
        params
            .get(key)
            .filter(|v| !v.is_empty())
            .map(|v| {
                v.parse::<u64>()
                    .map_err(|_| UiError::bad(key, format!("must be a whole number, got {v:?}")))
            })
            .transpose()
    };
    let cursor = number("cursor")?.unwrap_or(0) as usize;
    let mut attempts = model::attempts(&instance);
    let finished = instance
        .status
        .as_ref()
        .is_some_and(|s| s.state.is_terminal());
    let recorded = attempts.iter().map(|a| a.execution).max().unwrap_or(0);
    // (Not while a retry delay runs: no attempt can be starting then.)
    let may_start = instance
        .status
        .as_ref()
        .and_then(|s| s.next_attempt_at)
        .is_none_or(|at| at <= Utc::now());
    if !finished && may_start && attempts.iter().all(|a| a.outcome.is_some()) {
        // An attempt under way is recorded up to a few seconds after its Job is created: its
        // Job, found by its labels, already has its log.
        if let Ok((job, execution)) = crate::user::newest_job(&ui.client, &instance).await
            && execution > recorded
        {
            attempts.push(charon_core::resources::AttemptRecord {
                execution,
                job,
                ..Default::default()
            });
        }
    }
    let attempt = match number("attempt")? {
        Some(n) => attempts
            .iter()
            .find(|a| u64::from(a.execution) == n)
            .ok_or_else(|| UiError::not_found(format!("instance {name} has no attempt {n}")))?,
        None => match attempts.iter().max_by_key(|a| a.execution) {
            Some(a) => a,
            None => {
                return Ok(Json(json!({
                    "lines": [], "cursor": 0, "complete": false, "attempt": null, "finished": finished,
                }))
                .into_response());
            }
        },
    };
    let ended = attempt.outcome.is_some();
    // A container not started yet has no log: poll again.
    let text = attempt_text(&ui, instance.clone(), attempt.clone()).await;
    let lines: Vec<&str> = text.lines().skip(cursor).take(LOG_LINES).collect();
    let next = cursor + lines.len();
    let complete = ended && next >= text.lines().count();
    Ok(Json(json!({
        "lines": lines,
        "cursor": next,
        "complete": complete,
        "attempt": attempt.execution,
        // No attempt comes after this one: the instance has finished.
        "finished": finished,
    }))
    .into_response())
}

/// The attempt's log text, or none yet. The log readers write to a `dyn Write`, which is not
/// `Send`: they run on a blocking thread of their own.
async fn attempt_text(
    ui: &Arc<Ui>,
    instance: Arc<charon_core::resources::WorkflowInstance>,
    attempt: charon_core::resources::AttemptRecord,
) -> String {
    let (client, store) = (ui.client.clone(), ui.store.clone());
    let handle = tokio::runtime::Handle::current();
    tokio::task::spawn_blocking(move || {
        handle.block_on(crate::user::attempt_text(
            &client,
            &instance,
            &attempt,
            store.as_deref(),
        ))
    })
    .await
    .ok()
    .and_then(Result::ok)
    .unwrap_or_default()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct TriggerRequest {
    parameter: String,
    #[serde(default)]
    env: BTreeMap<String, String>,
    #[serde(default)]
    allow_future: bool,
}

/// `POST …/workflows/{wf}/trigger` → 201 `{instance}`.
pub async fn trigger(
    State(ui): State<Arc<Ui>>,
    Path((ns, name)): Path<(String, String)>,
    headers: HeaderMap,
    bytes: Bytes,
) -> Result<Response, UiError> {
    ui.check(
        &headers,
        Permission::new("create", "workflowinstances", &ns),
    )
    .await?;
    let request: TriggerRequest = body(&headers, &bytes)?;
    if request.parameter.trim().is_empty() {
        return Err(UiError::bad("parameter", "must not be empty"));
    }
    let mut env = Vec::new();
    for (key, value) in request.env {
        if key.is_empty() || key.contains('=') {
            return Err(UiError::bad(
                &format!("env.{key}"),
                "a variable name must be non-empty and have no '='",
            ));
        }
        env.push(EnvVar {
            name: key,
            value: Some(value),
            value_from: None,
        });
    }
    let triggered = actions::trigger(
        &ui.client,
        &ns,
        &name,
        &request.parameter,
        env,
        request.allow_future,
        Utc::now(),
    )
    .await?;
    Ok((
        StatusCode::CREATED,
        Json(json!({
            "instance": triggered.instance,
            "parameter": triggered.parameter,
            "reopened": triggered.reopened,
        })),
    )
        .into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct BackfillRequest {
    workflow: String,
    start: String,
    end: String,
    #[serde(default = "one")]
    concurrency: u32,
    #[serde(default)]
    reverse: bool,
    #[serde(default)]
    reprocess: Reprocess,
    #[serde(default)]
    allow_future: bool,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    description: Option<String>,
}

fn one() -> u32 {
    1
}

/// `POST …/backfills` → 201 `{name}`; with `?dryRun=true`, 200 and the partitions it would
/// cover, creating nothing.
pub async fn create_backfill(
    State(ui): State<Arc<Ui>>,
    Path(ns): Path<String>,
    Query(params): Params,
    headers: HeaderMap,
    bytes: Bytes,
) -> Result<Response, UiError> {
    ui.check(&headers, Permission::new("create", "backfills", &ns))
        .await?;
    let request: BackfillRequest = body(&headers, &bytes)?;
    let dry_run = params
        .get("dryRun")
        .is_some_and(|v| v == "true" || v == "All");
    let planned = actions::create_backfill(
        &ui.client,
        &ns,
        actions::NewBackfill {
            spec: BackfillSpec {
                workflow: request.workflow,
                start: request.start,
                end: request.end,
                concurrency: request.concurrency,
                reverse: request.reverse,
                reprocess: request.reprocess,
                halted: false,
                graceful_halt: false,
                allow_future: request.allow_future,
                description: request.description,
                priority: None,
                env: Vec::new(),
            },
            name: request.name,
        },
        Utc::now(),
        dry_run,
    )
    .await
    .map_err(|e| match e {
        // The request's fields are the spec's, without the `spec.` prefix.
        actions::ActionError::Field(f) => {
            UiError::bad(f.field.trim_start_matches("spec."), f.reason)
        }
        e => e.into(),
    })?;
    let name = planned.backfill.metadata.name.clone().unwrap_or_default();
    let count = planned.partitions.len();
    if dry_run {
        return Ok(Json(json!({
            "name": name,
            "count": count,
            "partitions": planned.partitions,
        }))
        .into_response());
    }
    Ok((
        StatusCode::CREATED,
        Json(json!({ "name": name, "count": count })),
    )
        .into_response())
}

/// `GET …/backfills`.
pub async fn backfills(
    State(ui): State<Arc<Ui>>,
    Path(ns): Path<String>,
    headers: HeaderMap,
) -> Result<Response, UiError> {
    ui.check(&headers, Permission::new("list", "backfills", &ns))
        .await?;
    let now = Utc::now();
    let mut items: Vec<model::BackfillItem> = ui
        .cache
        .backfills_in(&ns)
        .iter()
        .map(|b| model::backfill_item(b, now))
        .collect();
    items.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(Json(json!({ "items": items })).into_response())
}

/// `GET …/backfills/{name}`.
pub async fn backfill(
    State(ui): State<Arc<Ui>>,
    Path((ns, name)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Response, UiError> {
    ui.check(&headers, Permission::new("get", "backfills", &ns))
        .await?;
    Ok(Json(ui.backfill_view(&ns, &name)?).into_response())
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct HaltRequest {
    #[serde(default)]
    graceful: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ConcurrencyRequest {
    concurrency: u32,
}

/// `POST …/backfills/{name}/{halt|concurrency}`.
pub async fn backfill_action(
    State(ui): State<Arc<Ui>>,
    Path((ns, name, action)): Path<(String, String, String)>,
    headers: HeaderMap,
    bytes: Bytes,
) -> Result<Response, UiError> {
    ui.check(&headers, Permission::new("patch", "backfills", &ns))
        .await?;
    let patched = match action.as_str() {
        "halt" => {
            let request: HaltRequest = body(&headers, &bytes)?;
            actions::halt_backfill(&ui.client, &ns, &name, request.graceful).await?
        }
        "concurrency" => {
            let request: ConcurrencyRequest = body(&headers, &bytes)?;
            actions::set_backfill_concurrency(&ui.client, &ns, &name, request.concurrency)
                .await
                .map_err(|e| match e {
                    actions::ActionError::Field(f) => UiError::bad("concurrency", f.reason),
                    e => e.into(),
                })?
        }
        other => return Err(UiError::not_found(format!("no backfill action {other:?}"))),
    };
    Ok(Json(json!({
        "name": name,
        "halted": patched.spec.halted,
        "concurrency": patched.spec.concurrency,
    }))
    .into_response())
}

/// `POST …/instances/{name}/{halt|retry|suspend|resume}`.
pub async fn instance_action(
    State(ui): State<Arc<Ui>>,
    Path((ns, name, action)): Path<(String, String, String)>,
    headers: HeaderMap,
) -> Result<Response, UiError> {
    ui.check(&headers, Permission::new("patch", "workflowinstances", &ns))
        .await?;
    match action.as_str() {
        "halt" => actions::halt(&ui.client, &ns, &name).await?,
        "retry" => actions::retry(&ui.client, &ns, &name, Utc::now()).await?,
        "suspend" | "resume" => {
            actions::suspend_instance(&ui.client, &ns, &name, action == "suspend").await?;
        }
        other => return Err(UiError::not_found(format!("no instance action {other:?}"))),
    }
    Ok(Json(json!({ "instance": name, "action": action })).into_response())
}

/// `POST …/workflows/{wf}/{suspend|resume}`.
pub async fn workflow_action(
    State(ui): State<Arc<Ui>>,
    Path((ns, name, action)): Path<(String, String, String)>,
    headers: HeaderMap,
    bytes: Bytes,
) -> Result<Response, UiError> {
    if action == "trigger" {
        return trigger(State(ui), Path((ns, name)), headers, bytes).await;
    }
    let suspend = match action.as_str() {
        "suspend" => true,
        "resume" => false,
        other => return Err(UiError::not_found(format!("no workflow action {other:?}"))),
    };
    ui.check(&headers, Permission::new("patch", "workflows", &ns))
        .await?;
    let (workflow, changed) = actions::suspend_workflow(&ui.client, &ns, &name, suspend).await?;
    Ok(Json(json!({
        "name": name,
        "suspended": workflow.spec.suspend,
        "changed": changed,
    }))
    .into_response())
}
