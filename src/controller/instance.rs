//! The WorkflowInstance reconciler: observes the current Job, runs one step of the state
//! machine ([`crate::instance::step`]), applies its actions and writes the status.
//!
//! Job creation is exactly-once because the Job's name comes from the instance and the
//! execution number: whoever plans an execution plans the same name, and the API server
//! refuses a second Job under it (the existing one is adopted once it is shown to be this
//! instance's). A new attempt's Job is therefore created *before* the attempt is written,
//! once a read has shown that the stored instance is the one the attempt was planned from,
//! and the attempt is recorded when it finishes or [`RECORD_WITHIN`] after its Job was
//! created (longer while the controller is busy, see [`super::pace`]), whichever comes
//! first: a short attempt costs one status write, not three.
//! Everything else is written first and acted on after: a halt is on record before its Job
//! is deleted.

use std::sync::Arc;

use chrono::{DateTime, Duration, Utc};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams, PropagationPolicy};
use kube::runtime::controller::Action;
use kube::runtime::reflector::ObjectRef;
use kube::{Api, ResourceExt};

use super::events::Severity;
use super::{Context, Error, instances_of};
use crate::concurrency::{self, Candidate};
use crate::instance::{self as machine, Instance, JobStatus, Observation, State, Step, Transition};
use crate::job::{self, Execution};
use crate::resources::{
    HistoryEntry, InstanceState, Workflow, WorkflowInstance, WorkflowInstanceStatus,
};
use crate::retry::{AttemptOutcome, RetryCounters, RetryPolicy};
use crate::schedule::IsoDuration;

/// Annotation asking to skip the remaining retry delay (SPEC §4).
pub const RETRY_NOW: &str = "charon.dev/retry-now";

/// How often an active instance is looked at even without events: a safety net only (Job
/// and Pod events wake it), bounding how long a lost watch event can delay a transition.
const RESYNC: std::time::Duration = std::time::Duration::from_secs(60);

/// How long a started attempt may go unrecorded while it has not finished: a short run is
/// recorded once, finished; a longer one is on record (Submitted or Running) within this time.
const RECORD_WITHIN: std::time::Duration = std::time::Duration::from_secs(5);

/// How soon a new instance held back by a burst of triggers is looked at again.
const BURST_RETRY: std::time::Duration = std::time::Duration::from_millis(250);

/// One reconcile of a WorkflowInstance.
pub async fn reconcile(
    instance: Arc<WorkflowInstance>,
    ctx: Arc<Context>,
) -> Result<Action, Error> {
    let _timer = ctx.metrics.reconcile("instance");
    if instance.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let namespace = instance
        .namespace()
        .ok_or(Error::Incomplete("metadata.namespace"))?;
    let name = instance.name_any();
    if ctx.writes.stale(&instance.metadata) {
        // Our last status write is not in the cache yet; its watch event will wake us.
        return Ok(Action::requeue(std::time::Duration::from_secs(1)));
    }
    if instance.status.is_none() && ctx.burst.holds() {
        // Triggers first: start this one once the workflows have created theirs.
        return Ok(Action::requeue(BURST_RETRY));
    }
    let now = ctx.clock.now();
    let stored_status = instance.status.clone().unwrap_or_default();
    // An attempt started by an earlier pass and not on record yet continues from what is owed.
    let owed = if stored_status.state.is_terminal() {
        None
    } else {
        ctx.unrecorded.owed(&instance)
    };
    let status = owed
        .as_ref()
        .map_or_else(|| stored_status.clone(), |o| o.status.clone());
    let workflow = ctx
        .workflows
        .get(&ObjectRef::new(&instance.spec.workflow).within(&namespace));

    if status.state.is_terminal() {
        return expire(&ctx, &instance, &namespace, workflow.as_deref(), now).await;
    }
    let Some(workflow) = workflow else {
        // Not in the cache yet, or being deleted (its instances go with it).
        return Ok(Action::requeue(std::time::Duration::from_secs(2)));
    };

    let policy = retry_policy(&workflow);
    let running_timeout = job::running_timeout(&workflow);
    let job_status = observe(&ctx, &namespace, &status, now).await?;
    let retry_now = instance.annotations().contains_key(RETRY_NOW);
    let current = to_machine(&name, &status);

    // Concurrency admission is decided and recorded under one lock, so two instances of a
    // workflow reconciled at once cannot both take its last slot.
    let limit = workflow.spec.concurrency;
    let mut ledger = match (limit, status.state) {
        (Some(_), State::Queued) => Some(ctx.ledger.lock().await),
        _ => None,
    };
    let slot = match (&ledger, limit) {
        (Some(ledger), Some(limit)) => admission(
            &ctx,
            ledger,
            &instance,
            &namespace,
            &workflow.name_any(),
            limit,
            now,
        ),
        _ => Ok(()),
    };
    let observation = Observation {
        halted: instance.spec.halted,
        retry_now,
        slot,
        job: job_status,
        running_timeout,
    };
    let mut step = machine::step(&current, &observation, &policy, now, &mut random_below);
    let mut new_status = to_status(&status, &step.instance, &step.transitions, now, &workflow);
    new_status.observed_generation = instance.metadata.generation;
    let created_execution = step.actions.iter().find_map(|a| match a {
        machine::Action::CreateJob { execution, .. } if *execution > status.execution => {
            Some(*execution)
        }
        _ => None,
    });
    let mut since = owed.as_ref().map(|o| o.since);
    let mut invalid = None;
    if created_execution.is_some() {
        // Prepare snapshots what this execution runs from the current workflow spec.
        new_status.snapshot = Some(job::snapshot(
            &workflow.spec.template,
            &instance.spec.parameter,
            workflow.metadata.generation,
        ));
        if owed.is_none() {
            // This plan came from the cache. A cache that is behind (a later attempt already
            // ran, its Job deleted) would start an attempt again, so a new attempt's Job is
            // only created from the stored object as it is now.
            let fresh = ctx
                .api::<WorkflowInstance>(&namespace)
                .get_opt(&name)
                .await?;
            let current = fresh.is_some_and(|fresh| {
                fresh.metadata.resource_version == instance.metadata.resource_version
            });
            if !current {
                return Ok(Action::requeue(std::time::Duration::from_millis(200)));
            }
        }
        // The new attempt's Job first; the attempt is recorded once it is observed.
        for action in &step.actions {
            if let machine::Action::CreateJob { name: job_name, .. } = action {
                match create_job(&ctx, &instance, &new_status, &workflow, job_name).await? {
                    Ok(()) => since = Some(now),
                    Err(message) => invalid = Some(message),
                }
            }
        }
    }
    // Every state this controller decides for a workflow with a limit goes in the ledger,
    // which admission trusts over the cache.
    if limit.is_some() {
        let instance_ref = ObjectRef::from_obj(&*instance);
        match ledger.as_mut() {
            Some(ledger) => {
                ledger.insert(instance_ref, step.instance.state);
            }
            None => {
                ctx.ledger
                    .lock()
                    .await
                    .insert(instance_ref, step.instance.state);
            }
        }
    }
    drop(ledger);

    if let Some(message) = invalid {
        // The API server refused the Job: an invalid Job is an immediate Error (SPEC §4).
        let observation = Observation {
            job: JobStatus::Finished(AttemptOutcome::Invalid(message)),
            slot: Ok(()),
            ..observation
        };
        let again = machine::step(
            &step.instance,
            &observation,
            &policy,
            now,
            &mut random_below,
        );
        new_status = to_status(
            &new_status,
            &again.instance,
            &again.transitions,
            now,
            &workflow,
        );
        if limit.is_some() {
            ctx.ledger
                .lock()
                .await
                .insert(ObjectRef::from_obj(&*instance), again.instance.state);
        }
        let mut transitions = std::mem::take(&mut step.transitions);
        transitions.extend(again.transitions.iter().cloned());
        step = Step {
            transitions,
            ..again
        };
    }

    // A started attempt that has not finished is written once it does, or after
    // RECORD_WITHIN (longer while the controller is busy); anything else is written now.
    let unfinished = matches!(
        new_status.state,
        State::Submitting | State::Submitted | State::Running
    );
    let record_by = since
        .filter(|_| unfinished)
        .map(|at| {
            // (Seconds always fit; failing that, it is written now.)
            let within =
                Duration::from_std(ctx.pace.progress_within(RECORD_WITHIN)).unwrap_or_default();
            (at, at + within)
        })
        .filter(|(_, by)| now < *by);
    let mut stored = (*instance).clone();
    if let Some((since, _)) = record_by {
        ctx.unrecorded.owe(&instance, new_status.clone(), since);
    } else if new_status != stored_status {
        stored = match write_status(&ctx, &instance, &namespace, &new_status).await {
            Ok(stored) => stored,
            Err(Error::Kube(kube::Error::Api(e))) if e.code == 409 => {
                // Our view was stale; the next reconcile sees the newer object.
                return Ok(Action::requeue(std::time::Duration::from_millis(100)));
            }
            Err(err) => return Err(err),
        };
        ctx.unrecorded.settle(&instance);
        // A write while an attempt is under way only shows progress; the others start or
        // end runs.
        if !unfinished {
            ctx.pace.wrote();
        }
    }

    // Apply the remaining actions, now that the status records them.
    for action in &step.actions {
        match action {
            machine::Action::CreateJob { execution, .. }
                if created_execution == Some(*execution) => {}
            machine::Action::CreateJob { name: job_name, .. } => {
                // The current attempt's Job is gone: create it under its name again.
                if let Err(message) =
                    create_job(&ctx, &stored, &new_status, &workflow, job_name).await?
                {
                    tracing::warn!(instance = %name, job = %job_name, %message, "Job refused");
                }
            }
            machine::Action::DeleteJob { name: job_name } => {
                delete_job(&ctx, &namespace, job_name).await?;
            }
        }
    }
    if owed.is_none() && current.state == State::Queued && step.instance.state == State::Halted {
        // A restarted controller may have lost the record of the next attempt's Job (created
        // just before it stopped): make sure it does not run on unrecorded.
        let next = crate::names::job_name(&name, current.execution + 1);
        delete_job(&ctx, &namespace, &next).await?;
    }
    let transitions = std::mem::take(&mut step.transitions);

    for t in &transitions {
        let severity = match t.to {
            State::Failed | State::Error => Severity::Warning,
            State::Terminated
                if stored.status.as_ref().and_then(|s| s.last_exit_code) != Some(0) =>
            {
                Severity::Warning
            }
            _ => Severity::Normal,
        };
        ctx.events
            .record(&stored, severity, &t.reason, &t.message)
            .await;
        tracing::info!(instance = %name, from = %t.from.as_str(), to = %t.to.as_str(), reason = %t.reason, "{}", t.message);
    }
    if retry_now && step.instance.state != State::Queued {
        let patch = serde_json::json!({"metadata": {"annotations": {RETRY_NOW: null}}});
        let patched = ctx
            .api::<WorkflowInstance>(&namespace)
            .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
            .await?;
        ctx.writes.wrote(&patched.metadata);
    }
    let freed = current.state.is_active() && !step.instance.state.is_active();
    if freed && limit.is_some() {
        wake_waiting(&ctx, &namespace, &instance.spec.workflow, &name);
    }
    if step.instance.state.is_terminal() {
        // Arrange the history TTL.
        return expire(&ctx, &stored, &namespace, Some(&workflow), now).await;
    }
    if let Some((_, by)) = record_by {
        // Job and Pod events wake it sooner.
        return Ok(Action::requeue((by - now).to_std().unwrap_or_default()));
    }
    Ok(match step.requeue_after {
        Some(after) => Action::requeue(after.to_std().unwrap_or_default().min(RESYNC)),
        None => Action::requeue(RESYNC),
    })
}

/// The Styx retry policy with the workflow's numbers.
fn retry_policy(workflow: &Workflow) -> RetryPolicy {
    let retry = &workflow.spec.retry;
    RetryPolicy {
        max_cost: retry.max_cost,
        missing_dependency_exit_code: retry.missing_dependency_exit_code,
        fatal_exit_codes: retry.fatal_exit_codes.clone(),
        infrastructure_attempts: retry.infrastructure_attempts,
    }
}

/// What the current execution's Job says. The cache may lag behind a Job just created or
/// deleted, so a miss is confirmed with the API server before it counts as "missing".
async fn observe(
    ctx: &Context,
    namespace: &str,
    status: &WorkflowInstanceStatus,
    now: DateTime<Utc>,
) -> Result<JobStatus, Error> {
    let Some(job_name) = status.job.as_deref() else {
        return Ok(JobStatus::Missing);
    };
    if matches!(status.state, State::Queued | State::Prepare) {
        // The recorded Job is an earlier attempt's; it says nothing about the next one.
        return Ok(JobStatus::Missing);
    }
    // An attempt that has not moved for a whole resync period is read from the API server
    // rather than the cache, so a watch that silently fell behind cannot hold it up.
    let quiet = status
        .history
        .last()
        .is_some_and(|h| now - h.at >= Duration::from_std(RESYNC).unwrap_or_default());
    let cached = if quiet {
        None
    } else {
        ctx.jobs.get(&ObjectRef::new(job_name).within(namespace))
    };
    let job: Option<Job> = match cached {
        Some(job) => Some((*job).clone()),
        None => ctx.api::<Job>(namespace).get_opt(job_name).await?,
    };
    let pods: Vec<Pod> = if quiet {
        ctx.api::<Pod>(namespace)
            .list(&kube::api::ListParams::default().labels(&format!("job-name={job_name}")))
            .await?
            .items
    } else {
        ctx.pod_index
            .lookup(&ctx.pods, namespace, job_name)
            .iter()
            .map(|p| (**p).clone())
            .collect()
    };
    let observed = crate::observe::job_status(job.as_ref(), &pods);
    if matches!(observed, JobStatus::Finished(AttemptOutcome::NoExitCode(_))) {
        // The Job's verdict can reach the cache before its pod's final status does: read the
        // pods fresh before concluding that the attempt left no exit code.
        let fresh = ctx
            .api::<Pod>(namespace)
            .list(&kube::api::ListParams::default().labels(&format!("job-name={job_name}")))
            .await?
            .items;
        return Ok(crate::observe::job_status(job.as_ref(), &fresh));
    }
    Ok(observed)
}

pub(super) fn to_machine(name: &str, status: &WorkflowInstanceStatus) -> Instance {
    Instance {
        name: name.to_string(),
        state: status.state,
        tries: status.tries,
        execution: status.execution,
        counters: RetryCounters {
            cost: status.cost,
            consecutive_failures: status.consecutive_failures,
            infrastructure_failures: status.infrastructure_failures,
        },
        next_attempt_at: status.next_attempt_at,
        job: status.job.clone(),
        last_exit_code: status.last_exit_code,
        running_since: status.running_since,
        message: status.message.clone(),
    }
}

/// The status after a step: the machine's fields, the transitions in the bounded history,
/// and the start and finish times of the run.
pub(super) fn to_status(
    before: &WorkflowInstanceStatus,
    after: &Instance,
    transitions: &[Transition],
    now: DateTime<Utc>,
    workflow: &Workflow,
) -> WorkflowInstanceStatus {
    let mut status = before.clone();
    status.state = after.state;
    status.tries = after.tries;
    status.execution = after.execution;
    status.cost = (after.counters.cost * 1000.0).round() / 1000.0;
    status.consecutive_failures = after.counters.consecutive_failures;
    status.infrastructure_failures = after.counters.infrastructure_failures;
    status.next_attempt_at = after.next_attempt_at;
    status.job = after.job.clone();
    status.last_exit_code = after.last_exit_code;
    status.running_since = after.running_since;
    status.message = after.message.clone();
    for t in transitions {
        if t.to == InstanceState::Prepare && status.started_at.is_none() {
            status.started_at = Some(now);
        }
        if t.to.is_terminal() {
            status.finished_at = Some(now);
        }
        status.history.push(HistoryEntry {
            at: now,
            from: t.from,
            to: t.to,
            reason: t.reason.clone(),
            message: t.message.clone(),
        });
    }
    let limit = workflow.spec.history.limit.max(1) as usize;
    if status.history.len() > limit {
        let excess = status.history.len() - limit;
        status.history.drain(..excess);
    }
    status
}

async fn write_status(
    ctx: &Context,
    instance: &WorkflowInstance,
    namespace: &str,
    status: &WorkflowInstanceStatus,
) -> Result<WorkflowInstance, Error> {
    let mut updated = instance.clone();
    updated.status = Some(status.clone());
    let stored = ctx
        .api::<WorkflowInstance>(namespace)
        .replace_status(&instance.name_any(), &PostParams::default(), &updated)
        .await?;
    ctx.writes.wrote(&stored.metadata);
    Ok(stored)
}

/// Whether this queued instance may take a slot of its workflow (SPEC §6): states come from
/// the ledger of what this controller wrote, falling back to the cache.
fn admission(
    ctx: &Context,
    ledger: &std::collections::HashMap<ObjectRef<WorkflowInstance>, InstanceState>,
    instance: &WorkflowInstance,
    namespace: &str,
    workflow: &str,
    limit: u32,
    now: DateTime<Utc>,
) -> Result<(), String> {
    let me = instance.name_any();
    let siblings = instances_of(ctx, namespace, workflow);
    let mut active = 0;
    let mut ready: Vec<(DateTime<Utc>, String)> = Vec::new();
    for sibling in &siblings {
        let sibling_name = sibling.name_any();
        if sibling_name == me {
            continue;
        }
        let status = sibling.status.clone().unwrap_or_default();
        let state = ledger
            .get(&ObjectRef::from_obj(&**sibling))
            .copied()
            .unwrap_or(status.state);
        if state.is_active() {
            active += 1;
        } else if state == State::Queued
            && !sibling.spec.halted
            && status.next_attempt_at.is_none_or(|at| at <= now)
        {
            ready.push((sibling.spec.logical_time, sibling_name));
        }
    }
    ready.push((instance.spec.logical_time, me.clone()));
    let candidates: Vec<Candidate<'_>> = ready
        .iter()
        .map(|(logical, name)| Candidate {
            logical: *logical,
            name,
        })
        .collect();
    let (admitted, waiting) = concurrency::admit(candidates, active, Some(limit), workflow);
    if admitted.contains(&me.as_str()) {
        Ok(())
    } else {
        Err(waiting.unwrap_or_else(|| {
            format!("waiting for a slot of workflow {workflow} (spec.concurrency: {limit})")
        }))
    }
}

/// Asks the controller to look at the queued instances of a workflow again.
fn wake_waiting(ctx: &Context, namespace: &str, workflow: &str, except: &str) {
    for sibling in instances_of(ctx, namespace, workflow) {
        let queued = sibling
            .status
            .as_ref()
            .is_none_or(|s| s.state == State::Queued);
        if queued && sibling.name_any() != except {
            let _ = ctx.wake.send(ObjectRef::from_obj(&*sibling));
        }
    }
}

/// Creates the Job of the current execution from the recorded snapshot. `Ok(Err(message))`
/// means the API server refused it as invalid.
async fn create_job(
    ctx: &Context,
    instance: &WorkflowInstance,
    status: &WorkflowInstanceStatus,
    workflow: &Workflow,
    job_name: &str,
) -> Result<Result<(), String>, Error> {
    let namespace = instance
        .namespace()
        .ok_or(Error::Incomplete("metadata.namespace"))?;
    let snapshot = status.snapshot.clone().unwrap_or_else(|| {
        job::snapshot(
            &workflow.spec.template,
            &instance.spec.parameter,
            workflow.metadata.generation,
        )
    });
    let uid = instance.uid().ok_or(Error::Incomplete("metadata.uid"))?;
    let name = instance.name_any();
    let execution = Execution::of(
        workflow,
        instance,
        (&namespace, &name, &uid),
        status.execution,
        status.tries.saturating_sub(1),
    );
    let rendered = match job::render(&workflow.spec.template, &snapshot, &execution) {
        Ok(job) => job,
        Err(err) => return Ok(Err(err.to_string())),
    };
    debug_assert_eq!(rendered.metadata.name.as_deref(), Some(job_name));
    match ctx
        .api::<Job>(&namespace)
        .create(&PostParams::default(), &rendered)
        .await
    {
        Ok(_) => {
            ctx.pace.wrote();
            Ok(Ok(()))
        }
        // Created by an earlier pass (perhaps by a controller that stopped before recording
        // it): the same execution, so it is adopted, as long as it is this instance's.
        Err(kube::Error::Api(e)) if e.code == 409 => {
            let existing = ctx.api::<Job>(&namespace).get_opt(job_name).await?;
            let ours = existing.is_some_and(|job| {
                job.owner_references()
                    .iter()
                    .any(|owner| owner.uid == uid && owner.controller == Some(true))
            });
            if ours {
                Ok(Ok(()))
            } else {
                Err(Error::ForeignJob(job_name.to_string()))
            }
        }
        Err(kube::Error::Api(e)) if e.code == 422 || e.code == 400 => Ok(Err(e.message)),
        Err(err) => Err(err.into()),
    }
}

/// Deletes a Job with background propagation, so its pods go too.
async fn delete_job(ctx: &Context, namespace: &str, name: &str) -> Result<(), Error> {
    let params = DeleteParams {
        propagation_policy: Some(PropagationPolicy::Background),
        ..Default::default()
    };
    match ctx.api::<Job>(namespace).delete(name, &params).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
        Err(err) => Err(err.into()),
    }
}

/// A finished instance is deleted once `spec.history.ttl` has passed since it finished.
async fn expire(
    ctx: &Context,
    instance: &WorkflowInstance,
    namespace: &str,
    workflow: Option<&Workflow>,
    now: DateTime<Utc>,
) -> Result<Action, Error> {
    let ttl = workflow
        .and_then(|w| IsoDuration::parse(&w.spec.history.ttl).ok())
        .map(|d| d.approximate())
        .unwrap_or_else(|| Duration::days(7));
    let Some(finished) = instance.status.as_ref().and_then(|s| s.finished_at) else {
        return Ok(Action::await_change());
    };
    let expires = finished + ttl;
    if expires > now {
        let wait = (expires - now).to_std().unwrap_or_default();
        return Ok(Action::requeue(
            wait.min(std::time::Duration::from_secs(3600)),
        ));
    }
    let params = DeleteParams {
        propagation_policy: Some(PropagationPolicy::Background),
        ..Default::default()
    };
    let api: Api<WorkflowInstance> = ctx.api(namespace);
    match api.delete(&instance.name_any(), &params).await {
        Ok(_) => {
            tracing::info!(instance = %instance.name_any(), "history TTL passed: deleted");
            ctx.ledger
                .lock()
                .await
                .remove(&ObjectRef::from_obj(instance));
            Ok(Action::await_change())
        }
        Err(kube::Error::Api(e)) if e.code == 404 => Ok(Action::await_change()),
        Err(err) => Err(err.into()),
    }
}

fn random_below(n: u32) -> u32 {
    if n == 0 { 0 } else { rand::random_range(0..n) }
}

/// Failed reconciles are retried after a delay.
pub fn error_policy(instance: Arc<WorkflowInstance>, error: &Error, ctx: Arc<Context>) -> Action {
    ctx.metrics.error("instance");
    tracing::warn!(instance = %instance.name_any(), %error, "reconcile failed");
    Action::requeue(std::time::Duration::from_secs(2))
}
