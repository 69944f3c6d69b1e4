//! The Backfill reconciler (SPEC §5): resolves the range, plans with
//! [`charon_core::backfill::plan`], creates, re-opens or halts instances, and writes progress.
//! Instances it triggered wake it when they change, so it needs no polling.
//!
//! One reconcile: [`resolve`] (validate the workflow and range) → [`known_instances`] (read)
//! → plan (pure) → [`apply`] → [`progress`] → status.

use std::collections::HashMap;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use kube::api::{Patch, PatchParams, PostParams};
use kube::runtime::controller::Action;
use kube::runtime::reflector::ObjectRef;
use kube::{Api, ResourceExt};

use super::context::{Context, Opening};
use super::error::{ApiErrorExt, ApiFailure, Error, call, incomplete};
use super::events::Severity;
use super::triggers::{TriggerError, new_instance, reopen};
use charon_core::backfill::{
    BackfillAction, BackfillPlan, Existing, partition_state, plan, resolve_range,
};
use charon_core::resources::{
    Backfill, BackfillPartition, BackfillState, BackfillStatus, Condition, InstanceState, Trigger,
    TriggerType, Workflow, WorkflowInstance, condition_type, set_condition,
};
use charon_core::schedule::Schedule;

/// How often a running backfill is looked at without being woken.
const RESYNC: std::time::Duration = std::time::Duration::from_secs(60);

/// How soon a backfill whose workflow is missing (it may appear) is looked at again.
const INVALID_RETRY: std::time::Duration = std::time::Duration::from_secs(30);

/// How soon a backfill that found the cache behind is looked at again.
const LOOK_AGAIN: std::time::Duration = std::time::Duration::from_millis(200);

/// One reconcile of a Backfill.
pub async fn reconcile(backfill: Arc<Backfill>, ctx: Arc<Context>) -> Result<Action, Error> {
    ctx.clone()
        .guarded(backfill.clone(), reconcile_backfill(backfill, ctx))
        .await
}

async fn reconcile_backfill(backfill: Arc<Backfill>, ctx: Arc<Context>) -> Result<Action, Error> {
    let (namespace, name) = match ctx.open(&*backfill)? {
        Opening::Ready { namespace, name } => (namespace, name),
        Opening::Deleting | Opening::Stale => return Ok(Action::await_change()),
    };
    let now = ctx.clock.now();
    let previous = backfill.status.clone().unwrap_or_default();
    let mut status = previous.clone();
    status.observed_generation = backfill.metadata.generation;
    let generation = backfill.metadata.generation;

    let workflow = ctx
        .workflows
        .get(&ObjectRef::new(&backfill.spec.workflow).within(&namespace));
    let (schedule, partitions) = match resolve(
        &backfill,
        workflow.as_deref(),
        &namespace,
        &previous,
        ctx.policy,
        now,
    ) {
        Ok(ok) => ok,
        Err(message) => {
            let was =
                charon_core::resources::find_condition(&previous.conditions, condition_type::VALID)
                    .map(|c| c.message.clone());
            status.state = BackfillState::Invalid;
            set_condition(
                &mut status.conditions,
                Condition::invalid(&message, generation, now),
            );
            if was.as_deref() != Some(&message) {
                ctx.events
                    .record(&*backfill, Severity::Warning, "InvalidSpec", &message)
                    .await;
            }
            ctx.write_status(&*backfill, status).await?;
            // A missing workflow may appear: look again later.
            return Ok(Action::requeue(INVALID_RETRY));
        }
    };
    let Some(workflow) = workflow else {
        return Ok(Action::await_change());
    };
    set_condition(
        &mut status.conditions,
        Condition::valid("the range is valid", generation, now),
    );

    let known = known_instances(&ctx, &namespace, &name, &previous).await?;
    let lookup = |instance: &str| -> Option<Existing> {
        match known.get(instance) {
            Some(found) => found.clone(),
            None => ctx
                .instances
                .get(&ObjectRef::new(instance).within(&namespace))
                .map(|i| existing(&i)),
        }
    };
    let planned = plan(
        &name,
        &backfill.spec.workflow,
        &backfill.spec,
        &schedule,
        &partitions,
        &previous.partitions,
        &lookup,
    );
    let Some(applied) = apply(&ctx, &backfill, &workflow, &namespace, &planned, now).await? else {
        return Ok(Action::requeue(LOOK_AGAIN));
    };
    progress(
        &ctx,
        &backfill,
        &mut status,
        &planned,
        applied.rows,
        (&schedule, &partitions),
        now,
    )
    .await;
    let running = status.state == BackfillState::Running;
    ctx.write_status(&*backfill, status).await?;
    Ok(if applied.look_again {
        Action::requeue(LOOK_AGAIN)
    } else if running {
        // Instance changes wake a running backfill; this only bounds how long a lost one
        // could leave its status behind.
        Action::requeue(RESYNC)
    } else {
        Action::await_change()
    })
}

/// The backfill's schedule and partitions, or why it cannot run (naming the field).
fn resolve(
    backfill: &Backfill,
    workflow: Option<&Workflow>,
    namespace: &str,
    previous: &BackfillStatus,
    policy: charon_core::validate::Policy,
    now: DateTime<Utc>,
) -> Result<(Schedule, Vec<DateTime<Utc>>), String> {
    let Some(workflow) = workflow else {
        return Err(format!(
            "spec.workflow: workflow {:?} not found in namespace {namespace}",
            backfill.spec.workflow
        ));
    };
    let valid = charon_core::validate::workflow(&workflow.spec, policy).map_err(|errors| {
        format!(
            "spec.workflow: workflow {} is invalid: {}",
            backfill.spec.workflow,
            charon_core::validate::message(&errors)
        )
    })?;
    // The range is checked once, when the backfill starts; a backfill already running keeps
    // going as time passes.
    let check_now = match previous.started_at {
        Some(started) if previous.state != BackfillState::Invalid => started,
        _ => now,
    };
    resolve_range(&valid.schedule, &backfill.spec, check_now)
        .map(|partitions| (valid.schedule, partitions))
        .map_err(|e| e.to_string())
}

/// What exists of the partitions on record, from the cache; instances this backfill
/// triggered are read fresh when the cache does not (yet) show them as ours, since a stale
/// view would misreport them. (A partition not triggered yet that the cache misses is
/// created; AlreadyExists then says the cache was behind, in [`apply`].)
async fn known_instances(
    ctx: &Context,
    namespace: &str,
    name: &str,
    previous: &BackfillStatus,
) -> Result<HashMap<String, Option<Existing>>, Error> {
    let instances: Api<WorkflowInstance> = ctx.api(namespace);
    let mut known = HashMap::new();
    for row in &previous.partitions {
        let Some(instance) = row.instance.as_deref() else {
            continue;
        };
        let cached = ctx
            .instances
            .get(&ObjectRef::new(instance).within(namespace));
        let triggered = row.state == partition_state::TRIGGERED;
        let fresh = match cached {
            Some(i) if !triggered || is_ours(&i, name) => Some((*i).clone()),
            None if !triggered => None,
            _ => instances.get_opt(instance).await.map_err(call(
                "get",
                "WorkflowInstance",
                namespace,
                instance,
            ))?,
        };
        known.insert(instance.to_string(), fresh.as_ref().map(existing));
    }
    Ok(known)
}

/// Whether the backfill `name` triggered this instance's current run.
fn is_ours(instance: &WorkflowInstance, name: &str) -> bool {
    instance.spec.trigger.trigger_type == TriggerType::Backfill && instance.spec.trigger.id == name
}

/// What applying the plan left: the partition rows, and whether the cache was behind.
struct Applied {
    rows: Vec<BackfillPartition>,
    look_again: bool,
}

/// Creates, re-opens and halts instances as planned. `None`: a re-open conflicted; plan
/// again from the newer object.
async fn apply(
    ctx: &Context,
    backfill: &Backfill,
    workflow: &Workflow,
    namespace: &str,
    planned: &BackfillPlan,
    now: DateTime<Utc>,
) -> Result<Option<Applied>, Error> {
    let name = backfill.name_any();
    let instances: Api<WorkflowInstance> = ctx.api(namespace);
    let trigger = Trigger {
        trigger_type: TriggerType::Backfill,
        id: name.clone(),
    };
    let mut applied = Applied {
        rows: planned.partitions.clone(),
        look_again: false,
    };
    // The namespace's Quota may allow only so many queued instances (SPEC §13): the rest of
    // this backfill's partitions wait for room, their rows saying why.
    let mut room = super::pools::queue_room(ctx, namespace);
    for action in &planned.actions {
        if let (
            BackfillAction::Create { instance, .. } | BackfillAction::Reopen { instance },
            Some((left, message)),
        ) = (action, room.as_mut())
        {
            if *left == 0 {
                mark(
                    &mut applied.rows,
                    instance,
                    partition_state::PENDING,
                    Some(message.as_str()),
                );
                applied.look_again = true;
                continue;
            }
            *left -= 1;
        }
        match action {
            BackfillAction::Create {
                logical,
                parameter,
                instance,
            } => {
                let object = new_instance(
                    workflow,
                    *logical,
                    parameter,
                    trigger.clone(),
                    backfill.spec.env.clone(),
                )
                .ok_or_else(|| {
                    incomplete("Workflow", namespace, &workflow.name_any(), "metadata.uid")
                })?;
                match instances.create(&PostParams::default(), &object).await {
                    Ok(_) => ctx.memory.pace.wrote(),
                    Err(e) if e.failure() == ApiFailure::Conflict => {
                        // The cache did not show it. Created by an earlier pass of this
                        // backfill: triggered, as planned. Triggered otherwise (or finished,
                        // to be re-processed or not): decided on the next pass, from a view
                        // that shows it; never run twice.
                        let fresh = instances.get_opt(instance).await.map_err(call(
                            "get",
                            "WorkflowInstance",
                            namespace,
                            instance,
                        ))?;
                        if !fresh.as_ref().is_some_and(|i| is_ours(i, &name)) {
                            mark(&mut applied.rows, instance, partition_state::PENDING, None);
                            applied.look_again = true;
                        }
                    }
                    Err(e) => {
                        return Err(call("create", "WorkflowInstance", namespace, instance)(e));
                    }
                }
            }
            BackfillAction::Reopen { instance } => {
                let env = backfill.spec.env.clone();
                match reopen(&ctx.client, workflow, instance, trigger.clone(), env, now).await {
                    Ok(_) => {}
                    Err(TriggerError::Refused(reason)) => mark(
                        &mut applied.rows,
                        instance,
                        partition_state::SKIPPED,
                        Some(&reason),
                    ),
                    Err(TriggerError::Api(e)) if e.is_conflict() => return Ok(None),
                    Err(TriggerError::Api(e)) => return Err(e),
                }
            }
            BackfillAction::Halt { instance } => {
                let patch = serde_json::json!({"spec": {"halted": true}});
                match instances
                    .patch(instance, &PatchParams::default(), &Patch::Merge(&patch))
                    .await
                {
                    Ok(_) => {}
                    Err(e) if e.failure() == ApiFailure::NotFound => {}
                    Err(e) => {
                        return Err(call("patch", "WorkflowInstance", namespace, instance)(e));
                    }
                }
            }
        }
    }
    Ok(Some(applied))
}

/// Writes the plan's progress into `status`: rows, counts, cursor, state, range, and the
/// completion (with its Event).
async fn progress(
    ctx: &Context,
    backfill: &Backfill,
    status: &mut BackfillStatus,
    planned: &BackfillPlan,
    rows: Vec<BackfillPartition>,
    (schedule, partitions): (&Schedule, &[DateTime<Utc>]),
    now: DateTime<Utc>,
) {
    let created = planned
        .actions
        .iter()
        .filter(|a| !matches!(a, BackfillAction::Halt { .. }))
        .count();
    status.partitions = rows;
    let skipped = status
        .partitions
        .iter()
        .filter(|r| r.state == partition_state::SKIPPED)
        .count() as u32;
    status.counts = planned.counts.clone();
    status.counts.skipped = skipped;
    status.cursor = planned.cursor.clone();
    status.state = planned.state;
    status.range = Some(format!(
        "{}/{}",
        schedule.parameter(*partitions.iter().min().unwrap_or(&now)),
        schedule.parameter(*partitions.iter().max().unwrap_or(&now))
    ));
    let finished = status.counts.done + status.counts.failed + status.counts.skipped;
    status.progress = Some(format!("{finished}/{}", status.counts.total));
    if status.started_at.is_none() {
        status.started_at = Some(now);
    }
    if status.state == BackfillState::Completed && status.completed_at.is_none() {
        status.completed_at = Some(now);
        let c = &status.counts;
        ctx.events
            .record(
                backfill,
                Severity::Normal,
                "Completed",
                &format!(
                    "{} partitions: {} done, {} failed, {} skipped",
                    c.total, c.done, c.failed, c.skipped
                ),
            )
            .await;
    }
    if created > 0 {
        tracing::info!(triggered = created, "backfill triggered partitions");
    }
}

fn existing(instance: &WorkflowInstance) -> Existing {
    let state = if charon_core::status::reopen_pending(instance) {
        // Re-opened, and about to run: not the finished run its status still shows.
        InstanceState::Queued
    } else {
        instance
            .status
            .as_ref()
            .map(|s| s.state)
            .unwrap_or_default()
    };
    Existing {
        state,
        trigger_type: instance.spec.trigger.trigger_type,
        trigger_id: instance.spec.trigger.id.clone(),
    }
}

/// Sets the state (and the reason, if any) of the partition of `instance`.
fn mark(rows: &mut [BackfillPartition], instance: &str, state: &str, reason: Option<&str>) {
    if let Some(row) = rows
        .iter_mut()
        .find(|r| r.instance.as_deref() == Some(instance))
    {
        row.state = state.to_string();
        row.reason = reason.map(str::to_string);
    }
}

/// The backfill an instance was triggered by, if any (to wake it when the instance changes).
pub fn backfill_of(instance: &WorkflowInstance) -> Option<ObjectRef<Backfill>> {
    if instance.spec.trigger.trigger_type != TriggerType::Backfill {
        return None;
    }
    Some(ObjectRef::new(&instance.spec.trigger.id).within(instance.metadata.namespace.as_deref()?))
}

/// Failed reconciles are retried after a delay.
pub fn error_policy(backfill: Arc<Backfill>, error: &Error, ctx: Arc<Context>) -> Action {
    ctx.requeue_after_error(
        &*backfill,
        error,
        Some(LOOK_AGAIN),
        std::time::Duration::from_secs(5),
    )
}
