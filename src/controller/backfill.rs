//! The Backfill reconciler (SPEC §5): resolves the range, plans with
//! [`crate::backfill::plan`], creates, re-opens or halts instances, and writes progress.
//! Instances it triggered wake it when they change, so it needs no polling.

use std::collections::HashMap;
use std::sync::Arc;

use kube::api::{Patch, PatchParams, PostParams};
use kube::runtime::controller::Action;
use kube::runtime::reflector::ObjectRef;
use kube::{Api, ResourceExt};

use super::events::Severity;
use super::triggers::{TriggerError, new_instance, reopen};
use super::{Context, Error};
use crate::backfill::{BackfillAction, Existing, partition_state, plan, resolve_range};
use crate::resources::{
    Backfill, BackfillState, BackfillStatus, Condition, ConditionStatus, Trigger, TriggerType,
    WorkflowInstance, set_condition,
};

/// How often a running backfill is looked at without being woken.
const RESYNC: std::time::Duration = std::time::Duration::from_secs(60);

/// One reconcile of a Backfill.
pub async fn reconcile(backfill: Arc<Backfill>, ctx: Arc<Context>) -> Result<Action, Error> {
    let _timer = ctx.metrics.reconcile("backfill");
    if backfill.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let namespace = backfill
        .namespace()
        .ok_or(Error::Incomplete("metadata.namespace"))?;
    let name = backfill.name_any();
    let now = ctx.clock.now();
    let previous = backfill.status.clone().unwrap_or_default();
    let mut status = previous.clone();
    status.observed_generation = backfill.metadata.generation;
    let generation = backfill.metadata.generation;

    let workflow = ctx
        .workflows
        .get(&ObjectRef::new(&backfill.spec.workflow).within(&namespace));
    let resolved = match &workflow {
        None => Err(format!(
            "spec.workflow: workflow {:?} not found in namespace {namespace}",
            backfill.spec.workflow
        )),
        Some(workflow) => match crate::validate::workflow(&workflow.spec) {
            Err(errors) => Err(format!(
                "spec.workflow: workflow {} is invalid: {}",
                backfill.spec.workflow,
                crate::validate::message(&errors)
            )),
            Ok(valid) => {
                // The range is checked once, when the backfill starts; a backfill already
                // running keeps going as time passes.
                let check_now =
                    if previous.started_at.is_some() && previous.state != BackfillState::Invalid {
                        previous.started_at.unwrap_or(now)
                    } else {
                        now
                    };
                resolve_range(&valid.schedule, &backfill.spec, check_now)
                    .map(|partitions| (valid.schedule, partitions))
                    .map_err(|e| e.to_string())
            }
        },
    };
    let (schedule, partitions) = match resolved {
        Ok(ok) => ok,
        Err(message) => {
            let was = crate::resources::find_condition(&previous.conditions, "Valid")
                .map(|c| c.message.clone());
            status.state = BackfillState::Invalid;
            set_condition(
                &mut status.conditions,
                Condition::new(
                    "Valid",
                    ConditionStatus::False,
                    "InvalidSpec",
                    message.clone(),
                    generation,
                    now,
                ),
            );
            if was.as_deref() != Some(&message) {
                ctx.events
                    .record(&*backfill, Severity::Warning, "InvalidSpec", &message)
                    .await;
            }
            write_status(&ctx, &backfill, &namespace, status).await?;
            // A missing workflow may appear: look again later.
            return Ok(Action::requeue(std::time::Duration::from_secs(30)));
        }
    };
    let Some(workflow) = workflow else {
        return Ok(Action::await_change());
    };
    set_condition(
        &mut status.conditions,
        Condition::new(
            "Valid",
            ConditionStatus::True,
            "Valid",
            "the range is valid",
            generation,
            now,
        ),
    );

    // What exists, from the cache; instances this backfill triggered are read fresh when the
    // cache does not (yet) show them as ours, since a stale view would misreport them. (A
    // partition not triggered yet that the cache misses is created; AlreadyExists then says
    // the cache was behind, below.)
    let instances: Api<WorkflowInstance> = ctx.api(&namespace);
    let ours = |i: &WorkflowInstance| {
        i.spec.trigger.trigger_type == TriggerType::Backfill && i.spec.trigger.id == name
    };
    let mut known: HashMap<String, Option<Existing>> = HashMap::new();
    for row in &previous.partitions {
        let Some(instance) = row.instance.as_deref() else {
            continue;
        };
        let cached = ctx
            .instances
            .get(&ObjectRef::new(instance).within(&namespace));
        let triggered = row.state == partition_state::TRIGGERED;
        let fresh = match cached {
            Some(i) if !triggered || ours(&i) => Some((*i).clone()),
            None if !triggered => None,
            _ => instances.get_opt(instance).await?,
        };
        known.insert(instance.to_string(), fresh.as_ref().map(existing));
    }
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

    let trigger = Trigger {
        trigger_type: TriggerType::Backfill,
        id: name.clone(),
    };
    let mut rows = planned.partitions.clone();
    let mut look_again = false;
    for action in &planned.actions {
        match action {
            BackfillAction::Create {
                logical,
                parameter,
                instance,
            } => {
                let Some(object) = new_instance(
                    &workflow,
                    *logical,
                    parameter,
                    trigger.clone(),
                    backfill.spec.env.clone(),
                ) else {
                    return Err(Error::Incomplete("workflow metadata.uid"));
                };
                match instances.create(&PostParams::default(), &object).await {
                    Ok(_) => ctx.pace.wrote(),
                    Err(kube::Error::Api(e)) if e.code == 409 => {
                        // The cache did not show it. Created by an earlier pass of this
                        // backfill: triggered, as planned. Triggered otherwise (or finished,
                        // to be re-processed or not): decided on the next pass, from a view
                        // that shows it; never run twice.
                        let fresh = instances.get_opt(instance).await?;
                        if !fresh.as_ref().is_some_and(ours) {
                            mark(&mut rows, instance, partition_state::PENDING, None);
                            look_again = true;
                        }
                    }
                    Err(err) => return Err(err.into()),
                }
            }
            BackfillAction::Reopen { instance } => {
                match reopen(
                    &ctx.client,
                    &workflow,
                    instance,
                    trigger.clone(),
                    backfill.spec.env.clone(),
                    now,
                )
                .await
                {
                    Ok(_) => {}
                    Err(TriggerError::Refused(reason)) => {
                        mark(&mut rows, instance, partition_state::SKIPPED, Some(&reason))
                    }
                    Err(TriggerError::Kube(kube::Error::Api(e))) if e.code == 409 => {
                        return Ok(Action::requeue(std::time::Duration::from_millis(200)));
                    }
                    Err(TriggerError::Kube(err)) => return Err(err.into()),
                }
            }
            BackfillAction::Halt { instance } => {
                let patch = serde_json::json!({"spec": {"halted": true}});
                match instances
                    .patch(instance, &PatchParams::default(), &Patch::Merge(&patch))
                    .await
                {
                    Ok(_) => {}
                    Err(kube::Error::Api(e)) if e.code == 404 => {}
                    Err(err) => return Err(err.into()),
                }
            }
        }
    }
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
                &*backfill,
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
        tracing::info!(backfill = %name, triggered = created, "backfill triggered partitions");
    }
    let running = status.state == BackfillState::Running;
    write_status(&ctx, &backfill, &namespace, status).await?;
    Ok(if look_again {
        Action::requeue(std::time::Duration::from_millis(200))
    } else if running {
        // Instance changes wake a running backfill; this only bounds how long a lost one
        // could leave its status behind.
        Action::requeue(RESYNC)
    } else {
        Action::await_change()
    })
}

fn existing(instance: &WorkflowInstance) -> Existing {
    Existing {
        state: instance
            .status
            .as_ref()
            .map(|s| s.state)
            .unwrap_or_default(),
        trigger_type: instance.spec.trigger.trigger_type,
        trigger_id: instance.spec.trigger.id.clone(),
    }
}

/// Sets the state (and the reason, if any) of the partition of `instance`.
fn mark(
    rows: &mut [crate::resources::BackfillPartition],
    instance: &str,
    state: &str,
    reason: Option<&str>,
) {
    if let Some(row) = rows
        .iter_mut()
        .find(|r| r.instance.as_deref() == Some(instance))
    {
        row.state = state.to_string();
        row.reason = reason.map(str::to_string);
    }
}

async fn write_status(
    ctx: &Context,
    backfill: &Backfill,
    namespace: &str,
    status: BackfillStatus,
) -> Result<(), Error> {
    if backfill.status.as_ref() == Some(&status) {
        return Ok(());
    }
    let mut updated = backfill.clone();
    updated.status = Some(status);
    ctx.api::<Backfill>(namespace)
        .replace_status(&backfill.name_any(), &PostParams::default(), &updated)
        .await?;
    Ok(())
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
    if let Error::Kube(kube::Error::Api(e)) = error
        && e.code == 409
    {
        return Action::requeue(std::time::Duration::from_millis(200));
    }
    ctx.metrics.error("backfill");
    tracing::warn!(backfill = %backfill.name_any(), %error, "reconcile failed");
    Action::requeue(std::time::Duration::from_secs(5))
}
