//! What a user can ask of Charon: trigger a partition, create, halt or edit a backfill, halt,
//! retry, suspend or resume an instance, suspend or resume a workflow. The CLI and the web UI
//! both call these, so a request is checked and carried out the same way whoever asks, and
//! refusals carry the same words.

use chrono::{DateTime, Utc};
use k8s_openapi::api::core::v1::EnvVar;
use kube::api::{Patch, PatchParams, PostParams};
use kube::{Api, Client};

use crate::controller::error::{ApiErrorExt, ApiFailure};
use crate::controller::triggers;
use charon_core::resources::{Backfill, BackfillSpec, Quota, Workflow, WorkflowInstance};
use charon_core::validate::FieldError;

/// Why a request was not carried out, in the classes the HTTP API answers with.
#[derive(Debug, thiserror::Error)]
pub enum ActionError {
    /// The request is wrong (400).
    #[error("{0}")]
    Invalid(String),
    /// A field of the object the request makes is wrong (400).
    #[error("{}: {}", .0.field, .0.reason)]
    Field(FieldError),
    /// What the request names does not exist (404).
    #[error("{0}")]
    NotFound(String),
    /// The object's state does not allow it, or the name is taken (409).
    #[error("{0}")]
    Conflict(String),
    /// The caller may not do it (403); the text names the permission.
    #[error("{0}")]
    Forbidden(String),
    /// The API server failed or could not be reached (the message names the call).
    #[error("{0}")]
    Failed(String),
}

impl ActionError {
    /// Classifies an API error about `kind` `name` in `namespace`.
    pub fn from_api(kind: &str, name: &str, namespace: &str, error: kube::Error) -> Self {
        let message = error.server_message().unwrap_or_default().to_string();
        match error.failure() {
            ApiFailure::NotFound => ActionError::NotFound(format!(
                "{kind} {name:?} not found in namespace {namespace}"
            )),
            ApiFailure::Conflict => ActionError::Conflict(message),
            ApiFailure::Forbidden => ActionError::Forbidden(message),
            ApiFailure::Refused => ActionError::Invalid(message),
            _ => ActionError::Failed(format!("{kind} {namespace}/{name}: {error}")),
        }
    }
}

impl From<FieldError> for ActionError {
    fn from(error: FieldError) -> Self {
        ActionError::Field(error)
    }
}

/// The API of `K` in `namespace`.
fn api<K>(client: &Client, namespace: &str) -> Api<K>
where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>,
    K::DynamicType: Default,
{
    Api::namespaced(client.clone(), namespace)
}

async fn get<K>(client: &Client, kind: &str, namespace: &str, name: &str) -> Result<K, ActionError>
where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
    K::DynamicType: Default,
{
    api::<K>(client, namespace)
        .get(name)
        .await
        .map_err(|e| ActionError::from_api(kind, name, namespace, e))
}

async fn merge<K>(
    client: &Client,
    kind: &str,
    namespace: &str,
    name: &str,
    patch: serde_json::Value,
) -> Result<K, ActionError>
where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
    K::DynamicType: Default,
{
    api::<K>(client, namespace)
        .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .map_err(|e| ActionError::from_api(kind, name, namespace, e))
}

/// Refuses `adding` more queued instances in `namespace` beyond its Quota's
/// `spec.maxQueued` (SPEC §13); the message names the Quota. Without the Quota kind
/// installed there is nothing to enforce.
async fn check_queue_room(
    client: &Client,
    namespace: &str,
    adding: u32,
) -> Result<(), ActionError> {
    let quotas = match api::<Quota>(client, namespace)
        .list(&Default::default())
        .await
    {
        Ok(list) => list.items,
        Err(e) if e.failure() == ApiFailure::NotFound => return Ok(()),
        Err(e) => return Err(ActionError::from_api("quota", "", namespace, e)),
    };
    // The namespace's Quota is its oldest one.
    let Some(quota) = quotas.into_iter().min_by(|a, b| {
        a.metadata
            .creation_timestamp
            .cmp(&b.metadata.creation_timestamp)
            .then(a.metadata.name.cmp(&b.metadata.name))
    }) else {
        return Ok(());
    };
    let Some(max) = quota.spec.max_queued else {
        return Ok(());
    };
    let instances = api::<WorkflowInstance>(client, namespace)
        .list(&Default::default())
        .await
        .map_err(|e| ActionError::from_api("workflowinstance", "", namespace, e))?;
    let queued = instances
        .items
        .iter()
        .filter(|i| {
            i.status
                .as_ref()
                .is_none_or(|s| s.state == charon_core::resources::InstanceState::Queued)
        })
        .count() as u32;
    let name = quota.metadata.name.as_deref().unwrap_or_default();
    match charon_core::admission::max_queued_refusal(namespace, name, max, queued, adding) {
        Some(message) => Err(ActionError::Conflict(message)),
        None => Ok(()),
    }
}

/// Triggers the partition named by `parameter` (parsed leniently) of `workflow` now, or
/// re-opens it if it finished (SPEC §3).
pub async fn trigger(
    client: &Client,
    namespace: &str,
    workflow: &str,
    parameter: &str,
    env: Vec<EnvVar>,
    allow_future: bool,
    now: DateTime<Utc>,
) -> Result<triggers::Triggered, ActionError> {
    let wf: Workflow = get(client, "workflow", namespace, workflow).await?;
    check_queue_room(client, namespace, 1).await?;
    triggers::adhoc(
        client,
        &wf,
        // The operator enforces its own pod policy on what runs.
        charon_core::validate::Policy::PERMISSIVE,
        parameter,
        env,
        allow_future,
        now,
    )
    .await
    .map_err(|e| match e {
        triggers::TriggerError::Refused(reason) => ActionError::Invalid(reason),
        triggers::TriggerError::Api(err) => match err.failure() {
            Some(ApiFailure::Forbidden) => ActionError::Forbidden(err.to_string()),
            Some(ApiFailure::Conflict) => ActionError::Conflict(err.to_string()),
            Some(ApiFailure::NotFound) => ActionError::NotFound(err.to_string()),
            _ => ActionError::Failed(err.to_string()),
        },
    })
}

/// A backfill to create: its spec and, optionally, its name (default
/// [`charon_core::backfill::default_name`]).
#[derive(Clone, Debug)]
pub struct NewBackfill {
    /// The Backfill's spec.
    pub spec: BackfillSpec,
    /// Its name.
    pub name: Option<String>,
}

/// A backfill as it would be (or was) created, with the partitions it covers.
#[derive(Clone, Debug)]
pub struct PlannedBackfill {
    /// The Backfill object (as stored, unless a dry run).
    pub backfill: Backfill,
    /// The partitions' parameters, in the order they run.
    pub partitions: Vec<String>,
}

/// Checks a backfill as the controller would (the workflow valid, the range aligned and
/// bounded), then creates it owned by its workflow unless `dry_run`.
pub async fn create_backfill(
    client: &Client,
    namespace: &str,
    request: NewBackfill,
    now: DateTime<Utc>,
    dry_run: bool,
) -> Result<PlannedBackfill, ActionError> {
    let spec = request.spec;
    if spec.concurrency == 0 {
        return Err(ActionError::Field(FieldError {
            field: "spec.concurrency".into(),
            reason: "must be at least 1".into(),
        }));
    }
    let workflow = spec.workflow.clone();
    let wf: Workflow = get(client, "workflow", namespace, &workflow).await?;
    let valid =
        charon_core::validate::workflow(&wf.spec, charon_core::validate::Policy::PERMISSIVE)
            .map_err(|e| {
                ActionError::Invalid(format!(
                    "workflow {workflow} is invalid: {}",
                    charon_core::validate::message(&e)
                ))
            })?;
    // Refuse what the controller would refuse, before creating anything.
    let mut partitions = charon_core::backfill::resolve_range(&valid.schedule, &spec, now)?;
    if spec.reverse {
        partitions.reverse();
    }
    let partitions: Vec<String> = partitions
        .into_iter()
        .map(|t| valid.schedule.parameter(t))
        .collect();
    let name = request
        .name
        .unwrap_or_else(|| charon_core::backfill::default_name(&workflow, &spec.start, &spec.end));
    let mut backfill = Backfill::new(&name, spec);
    backfill.metadata.namespace = Some(namespace.to_string());
    backfill.metadata.owner_references =
        kube::Resource::controller_owner_ref(&wf, &()).map(|o| vec![o]);
    if dry_run {
        return Ok(PlannedBackfill {
            backfill,
            partitions,
        });
    }
    let adding = u32::try_from(partitions.len())
        .unwrap_or(u32::MAX)
        .min(backfill.spec.concurrency);
    check_queue_room(client, namespace, adding).await?;
    let created = api::<Backfill>(client, namespace)
        .create(&PostParams::default(), &backfill)
        .await
        .map_err(|e| match e.failure() {
            ApiFailure::Conflict => ActionError::Conflict(format!(
                "backfill {name:?} already exists; choose another name"
            )),
            _ => ActionError::from_api("backfill", &name, namespace, e),
        })?;
    Ok(PlannedBackfill {
        backfill: created,
        partitions,
    })
}

/// Halts an unfinished instance (`spec.halted`).
pub async fn halt(client: &Client, namespace: &str, name: &str) -> Result<(), ActionError> {
    let current: WorkflowInstance = get(client, "workflowinstance", namespace, name).await?;
    let state = current.status.map(|s| s.state).unwrap_or_default();
    if state.is_terminal() {
        return Err(ActionError::Conflict(format!(
            "instance {name} is {} already; halting stops an unfinished instance",
            state.as_str()
        )));
    }
    let patch = serde_json::json!({"spec": {"halted": true}});
    merge::<WorkflowInstance>(client, "workflowinstance", namespace, name, patch).await?;
    Ok(())
}

/// Asks an unfinished instance waiting for its next attempt to start it now.
pub async fn retry(
    client: &Client,
    namespace: &str,
    name: &str,
    now: DateTime<Utc>,
) -> Result<(), ActionError> {
    let current: WorkflowInstance = get(client, "workflowinstance", namespace, name).await?;
    let state = current.status.map(|s| s.state).unwrap_or_default();
    if state.is_terminal() {
        return Err(ActionError::Conflict(format!(
            "instance {name} is {}; to run it again use `charon trigger {} {}`",
            state.as_str(),
            current.spec.workflow,
            current.spec.parameter
        )));
    }
    let patch = serde_json::json!({"metadata": {"annotations": {
        crate::controller::RETRY_NOW: now.to_rfc3339()
    }}});
    merge::<WorkflowInstance>(client, "workflowinstance", namespace, name, patch).await?;
    Ok(())
}

/// Sets an instance's `spec.suspended` (SPEC §15); a finished instance cannot be suspended.
/// Returns whether it changed.
pub async fn suspend_instance(
    client: &Client,
    namespace: &str,
    name: &str,
    suspend: bool,
) -> Result<(WorkflowInstance, bool), ActionError> {
    let instance: WorkflowInstance = get(client, "workflowinstance", namespace, name).await?;
    let state = instance
        .status
        .as_ref()
        .map(|s| s.state)
        .unwrap_or_default();
    if suspend && state.is_terminal() {
        return Err(ActionError::Conflict(format!(
            "workflowinstance/{name} is {} already; only a queued or running instance can be suspended",
            state.as_str()
        )));
    }
    if instance.spec.suspended == suspend {
        return Ok((instance, false));
    }
    let patch = serde_json::json!({"spec": {"suspended": suspend}});
    let patched = merge(client, "workflowinstance", namespace, name, patch).await?;
    Ok((patched, true))
}

/// Sets a workflow's `spec.suspend`. Returns whether it changed.
pub async fn suspend_workflow(
    client: &Client,
    namespace: &str,
    name: &str,
    suspend: bool,
) -> Result<(Workflow, bool), ActionError> {
    let workflow: Workflow = get(client, "workflow", namespace, name).await?;
    if workflow.spec.suspend == suspend {
        return Ok((workflow, false));
    }
    let patch = serde_json::json!({"spec": {"suspend": suspend}});
    let patched = merge(client, "workflow", namespace, name, patch).await?;
    Ok((patched, true))
}

/// Halts a backfill; `graceful` lets its active instances finish.
pub async fn halt_backfill(
    client: &Client,
    namespace: &str,
    name: &str,
    graceful: bool,
) -> Result<Backfill, ActionError> {
    let patch = serde_json::json!({"spec": {"halted": true, "gracefulHalt": graceful}});
    merge(client, "backfill", namespace, name, patch).await
}

/// Sets a backfill's `spec.concurrency` (at least 1).
pub async fn set_backfill_concurrency(
    client: &Client,
    namespace: &str,
    name: &str,
    concurrency: u32,
) -> Result<Backfill, ActionError> {
    if concurrency == 0 {
        return Err(ActionError::Field(FieldError {
            field: "spec.concurrency".into(),
            reason: "must be at least 1".into(),
        }));
    }
    let patch = serde_json::json!({"spec": {"concurrency": concurrency}});
    merge(client, "backfill", namespace, name, patch).await
}
