//! The Workflow reconciler: plans natural triggers ([`charon_core::workflow::plan`]), creates the
//! instances (their deterministic names make a second trigger of a partition fail with
//! AlreadyExists), writes the status and asks to be woken at the next trigger instant.

use std::collections::HashSet;
use std::sync::Arc;

use kube::api::{Patch, PatchParams, PostParams};
use kube::runtime::controller::Action;
use kube::runtime::reflector::ObjectRef;
use kube::{Resource, ResourceExt};

use super::context::{Context, Opening, STALE_RETRY};
use super::dependencies;
use super::error::{ApiErrorExt, ApiFailure, Error, call, incomplete};
use super::events::Severity;
use super::index::instances_of;
use super::triggers::{self, TriggerError};
use charon_core::resources::{Trigger, TriggerType, Workflow, WorkflowInstance};
use charon_core::workflow::{WorkflowPlan, plan_with_cycle, until};

/// How long after creating instances a workflow may hold back its status write: until the
/// instances finish, so one write records both the trigger and the end of a short run, and
/// a burst of triggers is not slowed by status writes. Longer while the controller is busy
/// (see [`super::memory::pace`]).
const STATUS_AFTER_TRIGGER: std::time::Duration = std::time::Duration::from_secs(10);

/// How soon to retry after a conflict (someone else wrote the object since we read it).
const CONFLICT_RETRY: std::time::Duration = std::time::Duration::from_millis(200);

/// One reconcile of a Workflow.
pub async fn reconcile(workflow: Arc<Workflow>, ctx: Arc<Context>) -> Result<Action, Error> {
    ctx.clone()
        .guarded(workflow.clone(), reconcile_workflow(workflow, ctx))
        .await
}

async fn reconcile_workflow(workflow: Arc<Workflow>, ctx: Arc<Context>) -> Result<Action, Error> {
    let (namespace, name) = match ctx.open(&*workflow)? {
        Opening::Ready { namespace, name } => (namespace, name),
        Opening::Deleting => {
            ctx.memory.held.release(&workflow);
            if let Some(namespace) = workflow.namespace() {
                ctx.memory
                    .dependents
                    .forget(&namespace, &workflow.name_any());
            }
            return Ok(Action::await_change());
        }
        Opening::Stale => return Ok(Action::requeue(STALE_RETRY)),
    };
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
    let cycle = dependencies::cycle(&ctx, &namespace, &workflow);
    let upstream = workflow.spec.depends_on.iter().map(|d| d.workflow.as_str());
    if ctx.memory.dependents.learn(&namespace, &name, upstream) {
        dependencies::wake_refused(&ctx, &namespace, &name);
    }
    let plan = plan_with_cycle(
        &workflow,
        ctx.policy,
        count(&unfinished),
        now,
        cycle.as_deref(),
    );
    if let Some(message) = &plan.became_invalid {
        ctx.events
            .record(&*workflow, Severity::Warning, "InvalidSpec", message)
            .await;
        // The other workflows on the cycle are refused too.
        for member in cycle.iter().flatten().filter(|m| **m != name) {
            let _ = ctx
                .wake_workflow
                .send(ObjectRef::new(member).within(&namespace));
        }
    }
    let (created, failure) =
        create_instances(&ctx, &workflow, &namespace, &plan, &mut unfinished).await?;
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
        && let Some(left) = ctx.memory.held.left(
            &workflow,
            ctx.memory.pace.progress_within(STATUS_AFTER_TRIGGER),
        )
    {
        let next_trigger = plan
            .requeue_at
            .map(|at| until(at, now).to_std().unwrap_or_default());
        return Ok(Action::requeue(next_trigger.map_or(left, |t| t.min(left))));
    }
    let mut status = plan.status_after(created);
    // Instances this pass created count even before the cache shows them.
    status.active = count(&unfinished);
    ctx.write_status(&*workflow, status).await?;
    ctx.memory.held.release(&workflow);
    if let Some(err) = failure {
        return Err(err);
    }
    Ok(match plan.requeue_at {
        Some(at) => Action::requeue(until(at, now).to_std().unwrap_or_default()),
        None => Action::await_change(),
    })
}

/// Creates the planned instances in order, adding them to `unfinished`. Returns how many
/// of the plan exist now, and the failure that stopped the rest (they are planned again).
async fn create_instances(
    ctx: &Context,
    workflow: &Workflow,
    namespace: &str,
    plan: &WorkflowPlan,
    unfinished: &mut HashSet<String>,
) -> Result<(usize, Option<Error>), Error> {
    let instances = ctx.api::<WorkflowInstance>(namespace);
    // Marks this reconcile as part of a burst from its first create on: a pass that only finds
    // the instances an earlier pass created (its status still held back) holds nothing back.
    let mut burst = None;
    let mut created = 0;
    for new in &plan.create {
        let natural = Trigger {
            trigger_type: TriggerType::Natural,
            id: "natural".to_string(),
        };
        let instance =
            triggers::new_instance(workflow, new.logical, &new.parameter, natural, Vec::new())
                .ok_or_else(|| {
                    incomplete("Workflow", namespace, &workflow.name_any(), "metadata.uid")
                })?;
        let instance_name = instance.name_any();
        if ctx
            .instances
            .get(&ObjectRef::new(&instance_name).within(namespace))
            .is_some()
        {
            // Created by the pass that deferred this status write.
            created += 1;
            continue;
        }
        if ctx.memory.held.has_created(workflow, &instance_name) {
            // The same, not in the cache yet (so not finished either).
            unfinished.insert(instance_name);
            created += 1;
            continue;
        }
        burst.get_or_insert_with(|| ctx.memory.burst.enter());
        match instances.create(&PostParams::default(), &instance).await {
            Ok(_) => {
                ctx.memory.pace.wrote();
                ctx.memory.held.created(workflow, &instance_name);
                unfinished.insert(instance_name);
                let late = ctx.clock.now() - new.trigger_at;
                ctx.metrics
                    .lateness(late.num_milliseconds() as f64 / 1000.0);
                tracing::info!(parameter = %new.parameter, "triggered");
                created += 1;
            }
            // Already triggered (by an earlier pass, or by hand): exactly once holds.
            Err(e) if e.failure() == ApiFailure::Conflict => created += 1,
            Err(e) => {
                let error = call("create", "WorkflowInstance", namespace, &instance_name)(e);
                return Ok((created, Some(error)));
            }
        }
    }
    Ok((created, None))
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
        match triggers::adhoc(
            &ctx.client,
            workflow,
            ctx.policy,
            text,
            Vec::new(),
            false,
            now,
        )
        .await
        {
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
            Err(TriggerError::Refused(reason)) => {
                let message = format!("{TRIGGER_ANNOTATION}: {text:?} refused: {reason}");
                ctx.events
                    .record(workflow, Severity::Warning, "TriggerRefused", &message)
                    .await;
            }
            Err(TriggerError::Api(err)) => return Err(err),
        }
    }
    if let Some(value) = &backfill {
        match charon_core::backfill::parse_annotation(value) {
            Ok((start, end, concurrency)) => {
                let backfill = annotation_backfill(workflow, &start, &end, concurrency)?;
                let bf_name = backfill.name_any();
                let api = ctx.api::<charon_core::resources::Backfill>(namespace);
                // Refuse a range the Backfill would refuse, so the Event says so instead of
                // "created" (the Backfill itself only checks its range when it reconciles).
                let range = charon_core::validate::workflow(&workflow.spec, ctx.policy)
                    .map_err(|e| {
                        format!(
                            "the workflow's spec is invalid: {}",
                            charon_core::validate::message(&e)
                        )
                    })
                    .and_then(|valid| {
                        charon_core::backfill::resolve_range(&valid.schedule, &backfill.spec, now)
                            .map_err(|e| e.to_string())
                    });
                match range {
                    Err(reason) => {
                        let message = format!("{BACKFILL_ANNOTATION}: {value:?} refused: {reason}");
                        ctx.events
                            .record(workflow, Severity::Warning, "BackfillRefused", &message)
                            .await;
                    }
                    Ok(_) => match api.create(&PostParams::default(), &backfill).await {
                        Ok(_) => {
                            let message = format!(
                                "{BACKFILL_ANNOTATION}: created Backfill {bf_name} for [{start}, {end}) with concurrency {concurrency}"
                            );
                            ctx.events
                                .record(workflow, Severity::Normal, "BackfillCreated", &message)
                                .await;
                        }
                        Err(e)
                            if matches!(
                                e.failure(),
                                ApiFailure::Conflict | ApiFailure::Refused
                            ) =>
                        {
                            let message = format!(
                                "{BACKFILL_ANNOTATION}: {value:?} refused: {}",
                                e.server_message().unwrap_or_default()
                            );
                            ctx.events
                                .record(workflow, Severity::Warning, "BackfillRefused", &message)
                                .await;
                        }
                        Err(e) => return Err(call("create", "Backfill", namespace, &bf_name)(e)),
                    },
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
    let name = workflow.name_any();
    let patched = ctx
        .api::<Workflow>(namespace)
        .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .map_err(call("patch", "Workflow", namespace, &name))?;
    ctx.memory.writes.wrote(&patched.metadata);
    Ok(true)
}

fn annotation_backfill(
    workflow: &Workflow,
    start: &str,
    end: &str,
    concurrency: u32,
) -> Result<charon_core::resources::Backfill, Error> {
    let name = charon_core::backfill::default_name(&workflow.name_any(), start, end);
    let spec: charon_core::resources::BackfillSpec = serde_json::from_value(serde_json::json!({
        "workflow": workflow.name_any(),
        "start": start,
        "end": end,
        "concurrency": concurrency,
        "description": format!("from the {BACKFILL_ANNOTATION} annotation"),
    }))
    .map_err(|source| Error::Json {
        what: format!("the Backfill of workflow {}", workflow.name_any()),
        source,
    })?;
    let mut backfill = charon_core::resources::Backfill::new(&name, spec);
    backfill.metadata.namespace = workflow.namespace();
    backfill.metadata.owner_references = workflow.controller_owner_ref(&()).map(|o| vec![o]);
    Ok(backfill)
}

/// Failed reconciles are retried with a delay; conflicts soon, other errors later.
pub fn error_policy(workflow: Arc<Workflow>, error: &Error, ctx: Arc<Context>) -> Action {
    ctx.requeue_after_error(
        &*workflow,
        error,
        Some(CONFLICT_RETRY),
        std::time::Duration::from_secs(5),
    )
}
