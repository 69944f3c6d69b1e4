//! The Workflow reconciler: plans natural triggers ([`crate::workflow::plan`]), creates the
//! instances (their deterministic names make a second trigger of a partition fail with
//! AlreadyExists), writes the status and asks to be woken at the next trigger instant.

use std::collections::HashSet;
use std::sync::Arc;

use kube::api::PostParams;
use kube::runtime::controller::Action;
use kube::runtime::reflector::ObjectRef;
use kube::{Resource, ResourceExt};

use super::events::Severity;
use super::{Context, Error, instances_of};
use crate::resources::{Trigger, TriggerType, Workflow, WorkflowInstance, WorkflowStatus};
use crate::workflow::{plan, until};

/// How long after creating instances a workflow may hold back its status write: until the
/// instances finish, so one write records both the trigger and the end of a short run, and
/// a burst of triggers is not slowed by status writes. Longer while the controller is busy
/// (see [`super::pace`]).
const STATUS_AFTER_TRIGGER: std::time::Duration = std::time::Duration::from_secs(10);

/// How soon to retry after a conflict (someone else wrote the object since we read it).
const CONFLICT_RETRY: std::time::Duration = std::time::Duration::from_millis(200);

/// One reconcile of a Workflow.
pub async fn reconcile(workflow: Arc<Workflow>, ctx: Arc<Context>) -> Result<Action, Error> {
    let _timer = ctx.metrics.reconcile("workflow");
    if workflow.metadata.deletion_timestamp.is_some() {
        ctx.status_held.release(&workflow);
        return Ok(Action::await_change());
    }
    let namespace = workflow
        .namespace()
        .ok_or(Error::Incomplete("metadata.namespace"))?;
    let name = workflow.name_any();
    if ctx.writes.stale(&workflow.metadata) {
        // Our last status write is not in the cache yet; its watch event will wake us.
        return Ok(Action::requeue(std::time::Duration::from_secs(1)));
    }
    let now = ctx.clock.now();
    if handle_annotations(&ctx, &workflow, &namespace, now).await? {
        // The annotations were consumed (a metadata write): plan from the new version.
        return Ok(Action::requeue(std::time::Duration::ZERO));
    }
    let mut unfinished: HashSet<String> = instances_of(&ctx, &namespace, &name)
        .iter()
        .filter(|i| !i.status.as_ref().is_some_and(|s| s.state.is_terminal()))
        .map(|i| i.name_any())
        .collect();
    let plan = plan(&workflow, count(&unfinished), now);
    if let Some(message) = &plan.became_invalid {
        ctx.events
            .record(&*workflow, Severity::Warning, "InvalidSpec", message)
            .await;
    }

    let instances = ctx.api::<WorkflowInstance>(&namespace);
    // Marks this reconcile as part of a burst from its first create on: a pass that only finds
    // the instances an earlier pass created (its status still held back) holds nothing back.
    let mut burst = None;
    let mut created = 0;
    let mut failure = None;
    for new in &plan.create {
        let natural = Trigger {
            trigger_type: TriggerType::Natural,
            id: "natural".to_string(),
        };
        let instance = super::triggers::new_instance(
            &workflow,
            new.logical,
            &new.parameter,
            natural,
            Vec::new(),
        )
        .ok_or(Error::Incomplete("metadata.uid"))?;
        let instance_name = instance.name_any();
        if ctx
            .instances
            .get(&ObjectRef::new(&instance_name).within(&namespace))
            .is_some()
        {
            // Created by the pass that deferred this status write.
            created += 1;
            continue;
        }
        if ctx.status_held.has_created(&workflow, &instance_name) {
            // The same, not in the cache yet (so not finished either).
            unfinished.insert(instance_name);
            created += 1;
            continue;
        }
        burst.get_or_insert_with(|| ctx.burst.enter());
        match instances.create(&PostParams::default(), &instance).await {
            Ok(_) => {
                ctx.pace.wrote();
                ctx.status_held.created(&workflow, &instance_name);
                unfinished.insert(instance_name);
                let late = ctx.clock.now() - new.trigger_at;
                ctx.metrics
                    .lateness(late.num_milliseconds() as f64 / 1000.0);
                tracing::info!(workflow = %name, parameter = %new.parameter, "triggered");
                created += 1;
            }
            // Already triggered (by an earlier pass, or by hand): exactly once holds.
            Err(kube::Error::Api(e)) if e.code == 409 => created += 1,
            Err(err) => {
                failure = Some(err);
                break;
            }
        }
    }
    // The status (cursor, lastTriggered, active) of a trigger is written once its instances
    // have finished, or STATUS_AFTER_TRIGGER after it (longer while the controller is busy);
    // names make a pass in between find the instances instead of creating them again. A spec
    // change is answered at once.
    let spec_seen = workflow
        .status
        .as_ref()
        .is_some_and(|s| s.observed_generation == workflow.metadata.generation);
    if failure.is_none()
        && spec_seen
        && !unfinished.is_empty()
        && let Some(left) = ctx
            .status_held
            .left(&workflow, ctx.pace.progress_within(STATUS_AFTER_TRIGGER))
    {
        let next_trigger = plan
            .requeue_at
            .map(|at| until(at, now).to_std().unwrap_or_default());
        return Ok(Action::requeue(next_trigger.map_or(left, |t| t.min(left))));
    }
    let mut status = plan.status_after(created);
    // Instances this pass created count even before the cache shows them.
    status.active = count(&unfinished);
    write_status(&ctx, &workflow, &namespace, status).await?;
    ctx.status_held.release(&workflow);
    if let Some(err) = failure {
        return Err(err.into());
    }
    Ok(match plan.requeue_at {
        Some(at) => Action::requeue(until(at, now).to_std().unwrap_or_default()),
        None => Action::await_change(),
    })
}

fn count(names: &HashSet<String>) -> u32 {
    u32::try_from(names.len()).unwrap_or(u32::MAX)
}

/// Annotation asking for an ad-hoc trigger of one partition (SPEC §5).
pub const TRIGGER_ANNOTATION: &str = "charon.dev/trigger";
/// Annotation asking for a backfill: `<start>/<end>[/<concurrency>]` (SPEC §5).
pub const BACKFILL_ANNOTATION: &str = "charon.dev/backfill";

/// Acts on the shorthand annotations, records an Event saying what happened, and removes
/// them. Returns whether there were any.
async fn handle_annotations(
    ctx: &Context,
    workflow: &Workflow,
    namespace: &str,
    now: chrono::DateTime<chrono::Utc>,
) -> Result<bool, Error> {
    let annotations = workflow.annotations();
    let trigger = annotations.get(TRIGGER_ANNOTATION).cloned();
    let backfill = annotations.get(BACKFILL_ANNOTATION).cloned();
    if trigger.is_none() && backfill.is_none() {
        return Ok(false);
    }
    if let Some(text) = &trigger {
        match super::triggers::adhoc(&ctx.client, workflow, text, Vec::new(), false, now).await {
            Ok(t) => {
                let verb = if t.reopened { "re-opened" } else { "created" };
                let message = format!(
                    "{TRIGGER_ANNOTATION}: triggered partition {} ({verb} instance {}, trigger {})",
                    t.parameter, t.instance, t.trigger_id
                );
                ctx.events
                    .record(workflow, Severity::Normal, "AdhocTrigger", &message)
                    .await;
            }
            Err(super::triggers::TriggerError::Refused(reason)) => {
                let message = format!("{TRIGGER_ANNOTATION}: {text:?} refused: {reason}");
                ctx.events
                    .record(workflow, Severity::Warning, "TriggerRefused", &message)
                    .await;
            }
            Err(super::triggers::TriggerError::Kube(err)) => return Err(err.into()),
        }
    }
    if let Some(value) = &backfill {
        match crate::backfill::parse_annotation(value) {
            Ok((start, end, concurrency)) => {
                let backfill = annotation_backfill(workflow, &start, &end, concurrency)?;
                let bf_name = backfill.name_any();
                let api = ctx.api::<crate::resources::Backfill>(namespace);
                match api.create(&PostParams::default(), &backfill).await {
                    Ok(_) => {
                        let message = format!(
                            "{BACKFILL_ANNOTATION}: created Backfill {bf_name} for [{start}, {end}) with concurrency {concurrency}"
                        );
                        ctx.events
                            .record(workflow, Severity::Normal, "BackfillCreated", &message)
                            .await;
                    }
                    Err(kube::Error::Api(e)) if e.code == 409 || e.code == 422 => {
                        let message =
                            format!("{BACKFILL_ANNOTATION}: {value:?} refused: {}", e.message);
                        ctx.events
                            .record(workflow, Severity::Warning, "BackfillRefused", &message)
                            .await;
                    }
                    Err(err) => return Err(err.into()),
                }
            }
            Err(reason) => {
                let message = format!("{BACKFILL_ANNOTATION}: {reason}");
                ctx.events
                    .record(workflow, Severity::Warning, "BackfillRefused", &message)
                    .await;
            }
        }
    }
    let patch = serde_json::json!({"metadata": {"annotations": {
        TRIGGER_ANNOTATION: null,
        BACKFILL_ANNOTATION: null,
    }}});
    let patched = ctx
        .api::<Workflow>(namespace)
        .patch(
            &workflow.name_any(),
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(&patch),
        )
        .await?;
    ctx.writes.wrote(&patched.metadata);
    Ok(true)
}

fn annotation_backfill(
    workflow: &Workflow,
    start: &str,
    end: &str,
    concurrency: u32,
) -> Result<crate::resources::Backfill, Error> {
    let name = crate::backfill::default_name(&workflow.name_any(), start, end);
    let spec: crate::resources::BackfillSpec = serde_json::from_value(serde_json::json!({
        "workflow": workflow.name_any(),
        "start": start,
        "end": end,
        "concurrency": concurrency,
        "description": format!("from the {BACKFILL_ANNOTATION} annotation"),
    }))?;
    let mut backfill = crate::resources::Backfill::new(&name, spec);
    backfill.metadata.namespace = workflow.namespace();
    backfill.metadata.owner_references = workflow.controller_owner_ref(&()).map(|o| vec![o]);
    Ok(backfill)
}

/// Writes the status when it differs from the stored one, guarded by the resourceVersion the
/// plan was made from (a conflict means the plan may be stale: the reconcile runs again).
async fn write_status(
    ctx: &Context,
    workflow: &Workflow,
    namespace: &str,
    status: WorkflowStatus,
) -> Result<(), Error> {
    if workflow.status.as_ref() == Some(&status) {
        return Ok(());
    }
    let mut updated = workflow.clone();
    updated.status = Some(status);
    let api = ctx.api::<Workflow>(namespace);
    let stored = api
        .replace_status(&workflow.name_any(), &PostParams::default(), &updated)
        .await?;
    ctx.writes.wrote(&stored.metadata);
    Ok(())
}

/// Failed reconciles are retried with a delay; conflicts soon, other errors later.
pub fn error_policy(workflow: Arc<Workflow>, error: &Error, ctx: Arc<Context>) -> Action {
    if let Error::Kube(kube::Error::Api(e)) = error
        && e.code == 409
    {
        return Action::requeue(CONFLICT_RETRY);
    }
    ctx.metrics.error("workflow");
    tracing::warn!(workflow = %workflow.name_any(), %error, "reconcile failed");
    Action::requeue(std::time::Duration::from_secs(5))
}
