//! The WorkflowInstance reconciler: observes the current Job, runs one step of the state
//! machine ([`charon_core::instance::step`]), applies its actions and writes the status.
//!
//! Job creation is exactly-once because the Job's name comes from the instance and the
//! execution number: whoever plans an execution plans the same name, and the API server
//! refuses a second Job under it (the existing one is adopted once it is shown to be this
//! instance's). A new attempt's Job is therefore created *before* the attempt is written,
//! once a read has shown that the stored instance is the one the attempt was planned from,
//! and the attempt is recorded when it finishes or [`RECORD_WITHIN`] after its Job was
//! created (longer when it was created while the controller was busy, see
//! [`super::memory::pace`]), whichever comes first: a short attempt costs one status write,
//! not three. An adopted Job is looked at again at once: it may have finished already.
//! Everything else is written first and acted on after: a halt is on record before its Job
//! is deleted.
//!
//! One reconcile: [`read`] → [`plan`] (observe, admit, step) → [`start_attempt`] →
//! [`record`] → [`act`] → [`next_look`].

use std::sync::Arc;

use chrono::{DateTime, Duration, Utc};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod};
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams, PropagationPolicy};
use kube::runtime::controller::Action;
use kube::runtime::reflector::ObjectRef;
use kube::{Api, ResourceExt};

use super::context::{Context, Opening, STALE_RETRY};
use super::dependencies;
use super::error::{ApiErrorExt, ApiFailure, Error, call, incomplete};
use super::events::Severity;
use super::index::{execution_of_job, instances_of, pods_of_job};
use super::memory::{Owed, Reservation};
use super::pools;
use charon_core::concurrency::{self, Candidate};
use charon_core::instance::{self as machine, Instance, JobStatus, Observation, State, Step};
use charon_core::job::{self, Execution};
use charon_core::pipeline;
use charon_core::resources::{
    Backfill, TriggerType, Workflow, WorkflowInstance, WorkflowInstanceStatus,
};
use charon_core::retry::{AttemptOutcome, RetryPolicy};
use charon_core::status;

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

/// How soon an instance whose workflow is not in the cache is looked at again.
const NO_WORKFLOW_RETRY: std::time::Duration = std::time::Duration::from_secs(2);

/// How soon an attempt planned from a cache that was behind is planned again.
const BEHIND_RETRY: std::time::Duration = std::time::Duration::from_millis(200);

/// How soon an instance past its history TTL whose trigger is not on record yet looks again.
const UNRECORDED_TRIGGER_RETRY: std::time::Duration = std::time::Duration::from_secs(1);

/// How soon an attempt whose Job was adopted looks at that Job.
const ADOPTED_RETRY: std::time::Duration = std::time::Duration::from_millis(100);

/// How soon a status write that conflicted is tried again from the newer object.
const CONFLICT_RETRY: std::time::Duration = std::time::Duration::from_millis(100);

/// One reconcile of a WorkflowInstance.
pub async fn reconcile(
    instance: Arc<WorkflowInstance>,
    ctx: Arc<Context>,
) -> Result<Action, Error> {
    ctx.clone()
        .guarded(instance.clone(), reconcile_instance(instance, ctx))
        .await
}

async fn reconcile_instance(
    instance: Arc<WorkflowInstance>,
    ctx: Arc<Context>,
) -> Result<Action, Error> {
    let (namespace, name) = match ctx.open(&*instance)? {
        Opening::Ready { namespace, name } => (namespace, name),
        Opening::Deleting => return Ok(Action::await_change()),
        Opening::Stale => return Ok(Action::requeue(STALE_RETRY)),
    };
    // Never reconciled: no status, or the schema's default one (the API server fills in
    // `status: {state: Queued}` on read).
    let untouched = instance
        .status
        .as_ref()
        .is_none_or(|s| *s == WorkflowInstanceStatus::default());
    if untouched && ctx.memory.burst.holds() {
        // Triggers first: start this one once the workflows have created theirs.
        return Ok(Action::requeue(BURST_RETRY));
    }
    let now = ctx.clock.now();
    let read = read(&ctx, &instance, namespace, name);
    if status::reopen_pending(&instance) {
        return finish_reopen(&ctx, &instance, &read, now).await;
    }
    if read.status.state.is_terminal() {
        if read.status.state == State::Done {
            dependencies::wake_dependents(&ctx, &read.namespace, &instance.spec.workflow);
        }
        sweep_jobs(&ctx, &read).await?;
        return expire(
            &ctx,
            &instance,
            &read.namespace,
            read.workflow.as_deref(),
            now,
        )
        .await;
    }
    let workflow = match read.workflow.clone() {
        Some(workflow) => Some(workflow),
        // Not in the cache yet, or gone: ask the API server which.
        None => ctx
            .api::<Workflow>(&read.namespace)
            .get_opt(&instance.spec.workflow)
            .await
            .map_err(call(
                "get",
                "Workflow",
                &read.namespace,
                &instance.spec.workflow,
            ))?
            .map(Arc::new),
    };
    if let Err(reason) = check(&ctx, &instance, &read, workflow.as_deref()).await? {
        return refuse_instance(&ctx, &instance, &read, &reason, now).await;
    }
    let Some(workflow) = read.workflow.clone() else {
        // Exists but not in the cache yet, or being deleted (its instances go with it).
        return Ok(Action::requeue(NO_WORKFLOW_RETRY));
    };

    let mut planned = plan(&ctx, &instance, &read, &workflow, now).await?;
    let started = match start_attempt(&ctx, &instance, &read, &workflow, &mut planned, now).await? {
        Some(started) => started,
        None => return Ok(Action::requeue(BEHIND_RETRY)),
    };
    if let Some(message) = started.refused {
        refuse_attempt(&ctx, &instance, &workflow, &mut planned, message, now);
    }
    let Some(recorded) = record(&ctx, &instance, &read, &planned, started.since, now).await? else {
        return Ok(Action::requeue(CONFLICT_RETRY));
    };
    act(
        &ctx,
        &instance,
        &read,
        &workflow,
        &mut planned,
        &recorded.stored,
    )
    .await?;
    sweep_jobs(&ctx, &read).await?;
    next_look(
        &ctx,
        &recorded,
        &planned,
        &read.namespace,
        &workflow,
        started.adopted,
        now,
    )
    .await
}

/// Whether Charon could have created `instance` ([`charon_core::validate::instance`]): the
/// outer error is the API server's, the inner one why the instance is refused.
async fn check(
    ctx: &Context,
    instance: &WorkflowInstance,
    read: &Read,
    workflow: Option<&Workflow>,
) -> Result<Result<(), String>, Error> {
    let backfill = if instance.spec.trigger.trigger_type == TriggerType::Backfill {
        let id = &instance.spec.trigger.id;
        match ctx
            .backfills
            .get(&ObjectRef::new(id).within(&read.namespace))
        {
            Some(cached) => Some(cached),
            None => ctx
                .api::<Backfill>(&read.namespace)
                .get_opt(id)
                .await
                .map_err(call("get", "Backfill", &read.namespace, id))?
                .map(Arc::new),
        }
    } else {
        None
    };
    Ok(charon_core::validate::instance(
        instance,
        workflow,
        backfill.as_deref(),
    ))
}

/// Marks an instance Charon could not have created `Valid=False` with `reason` (SPEC §7),
/// once, with a Warning Event; it is not run, and looked at again only when it changes.
async fn refuse_instance(
    ctx: &Context,
    instance: &WorkflowInstance,
    read: &Read,
    reason: &str,
    now: DateTime<Utc>,
) -> Result<Action, Error> {
    let mut status = read.stored_status.clone();
    let already = charon_core::resources::find_condition(
        &status.conditions,
        charon_core::resources::condition_type::VALID,
    )
    .is_some_and(|c| {
        c.status == charon_core::resources::ConditionStatus::False && c.message == reason
    });
    if already {
        return Ok(Action::await_change());
    }
    charon_core::resources::set_condition(
        &mut status.conditions,
        charon_core::resources::Condition::invalid(reason, instance.metadata.generation, now),
    );
    status.message = format!("not run: {reason}");
    status.observed_generation = instance.metadata.generation;
    match ctx.replace_status(instance, status).await {
        Ok(_) => {}
        Err(error) if error.is_conflict() => return Ok(Action::requeue(CONFLICT_RETRY)),
        Err(error) => return Err(error),
    }
    ctx.events
        .record(instance, Severity::Warning, "InvalidInstance", reason)
        .await;
    Ok(Action::await_change())
}

/// What a reconcile starts from: the status on record, or the status owed by an attempt an
/// earlier pass started and has not recorded yet, and the workflow.
struct Read {
    namespace: String,
    name: String,
    /// The status on record.
    stored_status: WorkflowInstanceStatus,
    /// The status owed, if any.
    owed: Option<Owed>,
    /// The status to plan from: the owed one, else the stored one.
    status: WorkflowInstanceStatus,
    workflow: Option<Arc<Workflow>>,
}

fn read(ctx: &Context, instance: &WorkflowInstance, namespace: String, name: String) -> Read {
    let stored_status = instance.status.clone().unwrap_or_default();
    let owed = if stored_status.state.is_terminal() {
        None
    } else {
        ctx.memory.unrecorded.owed(instance)
    };
    let status = owed
        .as_ref()
        .map_or_else(|| stored_status.clone(), |o| (*o.status).clone());
    let workflow = ctx
        .workflows
        .get(&ObjectRef::new(&instance.spec.workflow).within(&namespace));
    Read {
        namespace,
        name,
        stored_status,
        owed,
        status,
        workflow,
    }
}

/// Writes the status of a re-open whose status write failed (see
/// [`status::reopen_pending`]): the finished run is kept, the new one starts.
async fn finish_reopen(
    ctx: &Context,
    instance: &WorkflowInstance,
    read: &Read,
    now: DateTime<Utc>,
) -> Result<Action, Error> {
    let Some(workflow) = read.workflow.as_deref() else {
        return Ok(Action::requeue(NO_WORKFLOW_RETRY));
    };
    let finished_trigger = read
        .stored_status
        .trigger
        .clone()
        .unwrap_or_else(|| instance.spec.trigger.clone());
    let mut reopened = status::reopened(
        &read.stored_status,
        &read.name,
        &finished_trigger,
        &instance.spec.trigger,
        now,
        workflow,
    );
    reopened.observed_generation = instance.metadata.generation;
    match ctx.replace_status(instance, reopened).await {
        Ok(_) => Ok(Action::requeue(std::time::Duration::ZERO)),
        Err(error) if error.is_conflict() => Ok(Action::requeue(CONFLICT_RETRY)),
        Err(error) => Err(error),
    }
}

/// The machine's step and the status it leads to.
struct Planned<'a> {
    /// The instance before the step.
    current: Instance,
    observation: Observation,
    policy: RetryPolicy,
    step: Step,
    new_status: WorkflowInstanceStatus,
    /// The execution whose Job this step creates as a new attempt, if any.
    created_execution: Option<u32>,
    /// The state decided for a workflow with a concurrency limit, until it is kept.
    reservation: Option<Reservation<'a>>,
}

/// Observes the current Job, decides admission (for a workflow with a concurrency limit:
/// decided and reserved under that workflow's lock, so two of its instances reconciled at
/// once cannot both take its last slot) and steps the machine.
async fn plan<'a>(
    ctx: &'a Context,
    instance: &WorkflowInstance,
    read: &Read,
    workflow: &Workflow,
    now: DateTime<Utc>,
) -> Result<Planned<'a>, Error> {
    let policy = RetryPolicy::of(&workflow.spec.retry);
    let current = status::to_machine(&read.name, &read.status);
    let queued = read.status.state == State::Queued;
    let dependencies = if queued {
        dependencies::check(ctx, &read.namespace, instance, workflow)
    } else {
        dependencies::Dependencies::NONE
    };
    let observed = observe(ctx, &read.namespace, &read.status, now).await?;
    let observation = Observation {
        halted: instance.spec.halted,
        retry_now: instance.annotations().contains_key(RETRY_NOW),
        slot: Ok(()),
        job: observed.status.clone(),
        running_timeout: job::running_timeout(workflow),
        suspended: instance.spec.suspended,
        dependencies: dependencies.met,
        dependency_deadline: dependencies.deadline,
        kueue_queue: observed
            .job
            .as_ref()
            .and_then(|j| j.labels().get(job::KUEUE_QUEUE_LABEL).cloned()),
    };
    // An instance that waits for its dependencies or is suspended takes no part in admission.
    let may_start = observation.dependencies.is_ok() && !observation.suspended;
    let step_with = |slot: Result<(), String>| {
        let observation = Observation {
            slot,
            ..observation.clone()
        };
        let step = machine::step(&current, &observation, &policy, now, &mut random_below);
        (observation, step)
    };
    let governed = pools::governed(ctx, &read.namespace, workflow);
    let synced = !(governed && queued && may_start) || pools::synced(ctx).await;
    let ((observation, step), reservation) = match workflow.spec.concurrency {
        _ if governed && queued && may_start && !synced => (
            step_with(Err(pools::NOT_SYNCED.to_string())),
            Some(ctx.memory.admission.shared_reservation(instance)),
        ),
        // Pools and Quotas look across workflows and namespaces (SPEC §13); the workflow's
        // own limit is part of that decision.
        _ if governed && queued && may_start => {
            let (planned, reservation) = ctx.memory.admission.decide_shared(instance, |ledger| {
                let slot = pools::admit(ctx, ledger, instance, &read.namespace, workflow, now);
                let planned = step_with(slot);
                let state = planned.1.instance.state;
                (planned, state)
            });
            (planned, Some(reservation))
        }
        _ if governed => (
            step_with(Ok(())),
            Some(ctx.memory.admission.shared_reservation(instance)),
        ),
        Some(limit) if queued && may_start => {
            let (planned, reservation) = ctx.memory.admission.decide(instance, |ledger| {
                let slot = admission(ctx, ledger, instance, &read.namespace, workflow, limit, now);
                let planned = step_with(slot);
                let state = planned.1.instance.state;
                (planned, state)
            });
            (planned, Some(reservation))
        }
        Some(_) => (
            step_with(Ok(())),
            Some(ctx.memory.admission.reservation(instance)),
        ),
        None => (step_with(Ok(())), None),
    };
    let mut new_status = status::after_step(
        &read.status,
        &step.instance,
        &step.transitions,
        now,
        workflow,
    );
    new_status.observed_generation = instance.metadata.generation;
    new_status.trigger = Some(instance.spec.trigger.clone());
    progress(&mut new_status, &read.status, &observed);
    let created_execution = step.actions.iter().find_map(|a| match a {
        machine::Action::CreateJob { execution, .. } if *execution > read.status.execution => {
            Some(*execution)
        }
        _ => None,
    });
    Ok(Planned {
        current,
        observation,
        policy,
        step,
        new_status,
        created_execution,
        reservation,
    })
}

/// `status.steps` and `status.array` as the current attempt's Job and pods show them (SPEC
/// §14), kept from `before` while there is nothing to observe.
fn progress(
    status: &mut WorkflowInstanceStatus,
    before: &WorkflowInstanceStatus,
    observed: &Observed,
) {
    let Some(snapshot) = before.snapshot.as_ref() else {
        return;
    };
    if matches!(observed.status, JobStatus::Missing) {
        return;
    }
    let finished = matches!(observed.status, JobStatus::Finished(_));
    if !snapshot.steps.is_empty() {
        let steps = pipeline::step_statuses(snapshot, &observed.pods, finished);
        if observed.pods.is_empty() && !finished {
            return;
        }
        status.steps_completed = Some(pipeline::steps_completed(&steps));
        status.steps = steps;
    }
    if snapshot.array.is_some() {
        status.array =
            pipeline::array_status(snapshot, observed.job.as_ref(), before.array.as_ref());
    }
}

/// A new attempt's start: since when its Job exists, or the API server's refusal of it.
struct Started {
    since: Option<DateTime<Utc>>,
    refused: Option<String>,
    /// The Job was there already (see [`JobCreation::Adopted`]).
    adopted: bool,
}

/// Creates a new attempt's Job, before the attempt is recorded, once the stored instance is
/// shown to be the one the attempt was planned from. `None`: the cache was behind, plan
/// again.
async fn start_attempt(
    ctx: &Context,
    instance: &WorkflowInstance,
    read: &Read,
    workflow: &Workflow,
    planned: &mut Planned<'_>,
    now: DateTime<Utc>,
) -> Result<Option<Started>, Error> {
    let mut started = Started {
        since: read.owed.as_ref().map(|o| o.since),
        refused: None,
        adopted: false,
    };
    if planned.created_execution.is_some() {
        // Prepare snapshots what this execution runs from the current workflow spec; a retry
        // of an array runs the tasks left, of a resumable pipeline from the failed step.
        let mut snapshot = job::snapshot(
            &workflow.spec.template,
            &instance.spec.parameter,
            workflow.metadata.generation,
        );
        if read.status.tries > 0 {
            pipeline::plan_retry(
                &mut snapshot,
                &read.status,
                workflow.spec.retry.resume_from_failed_step,
            );
        } else {
            planned.new_status.array = None;
        }
        planned.new_status.steps = pipeline::initial_steps(&snapshot);
        planned.new_status.steps_completed = (!snapshot.steps.is_empty())
            .then(|| pipeline::steps_completed(&planned.new_status.steps));
        planned.new_status.snapshot = Some(Box::new(snapshot));
        if read.owed.is_none() && !is_current(ctx, instance, read).await? {
            // A cache that is behind (a later attempt already ran, its Job deleted) would
            // start an attempt again. (The reservation is put back when dropped.)
            return Ok(None);
        }
        for action in &planned.step.actions {
            if let machine::Action::CreateJob { name: job_name, .. } = action {
                match create_job(ctx, instance, &planned.new_status, workflow, job_name).await? {
                    JobCreation::Refused(message) => started.refused = Some(message),
                    created => {
                        started.since = Some(now);
                        started.adopted = matches!(created, JobCreation::Adopted);
                    }
                }
            }
        }
    }
    if let Some(reservation) = planned.reservation.take() {
        reservation.record(planned.step.instance.state);
    }
    Ok(Some(started))
}

/// Whether the stored instance is still the version the plan was made from (the plan came
/// from the cache).
async fn is_current(
    ctx: &Context,
    instance: &WorkflowInstance,
    read: &Read,
) -> Result<bool, Error> {
    let fresh = ctx
        .api::<WorkflowInstance>(&read.namespace)
        .get_opt(&read.name)
        .await
        .map_err(call("get", "WorkflowInstance", &read.namespace, &read.name))?;
    Ok(fresh
        .is_some_and(|fresh| fresh.metadata.resource_version == instance.metadata.resource_version))
}

/// The API server refused the new attempt's Job: an invalid Job is an immediate Error
/// (SPEC §4), stepped on top of the planned step.
fn refuse_attempt(
    ctx: &Context,
    instance: &WorkflowInstance,
    workflow: &Workflow,
    planned: &mut Planned<'_>,
    message: String,
    now: DateTime<Utc>,
) {
    let observation = Observation {
        job: JobStatus::Finished(AttemptOutcome::Invalid(message)),
        slot: Ok(()),
        ..planned.observation.clone()
    };
    let again = machine::step(
        &planned.step.instance,
        &observation,
        &planned.policy,
        now,
        &mut random_below,
    );
    planned.new_status = status::after_step(
        &planned.new_status,
        &again.instance,
        &again.transitions,
        now,
        workflow,
    );
    if pools::governed(
        ctx,
        instance.namespace().as_deref().unwrap_or_default(),
        workflow,
    ) {
        ctx.memory
            .admission
            .shared_reservation(instance)
            .record(again.instance.state);
    } else if workflow.spec.concurrency.is_some() {
        ctx.memory
            .admission
            .reservation(instance)
            .record(again.instance.state);
    }
    let mut transitions = std::mem::take(&mut planned.step.transitions);
    transitions.extend(again.transitions.iter().cloned());
    planned.step = Step {
        transitions,
        ..again
    };
}

/// What recording the step left.
struct Recorded {
    /// The instance as stored after the write (or as read, if nothing was written).
    stored: WorkflowInstance,
    /// For an attempt left unrecorded: since when its Job exists, and until when it may go
    /// unrecorded.
    record_by: Option<(DateTime<Utc>, DateTime<Utc>)>,
}

/// Writes the new status, or, for a started attempt that has not finished, owes it until
/// it finishes or [`RECORD_WITHIN`] has passed (longer when the controller was busy as the
/// Job was created). `None`: the write conflicted; the next reconcile sees the newer object.
async fn record(
    ctx: &Context,
    instance: &WorkflowInstance,
    read: &Read,
    planned: &Planned<'_>,
    since: Option<DateTime<Utc>>,
    now: DateTime<Utc>,
) -> Result<Option<Recorded>, Error> {
    let unfinished = is_unfinished(&planned.new_status);
    let record_by = since
        .filter(|_| unfinished)
        .map(|at| {
            let by = record_deadline(at, read.owed.as_ref(), || {
                // (Seconds always fit; failing that, it is written now.)
                Duration::from_std(ctx.memory.pace.progress_within(RECORD_WITHIN))
                    .unwrap_or_default()
            });
            (at, by)
        })
        .filter(|(_, by)| now < *by);
    let mut stored = instance.clone();
    if let Some(owed_for) = record_by {
        ctx.memory
            .unrecorded
            .owe(instance, planned.new_status.clone(), owed_for);
    } else if planned.new_status != read.stored_status {
        stored = match ctx
            .replace_status(instance, planned.new_status.clone())
            .await
        {
            Ok(stored) => stored,
            Err(error) if error.is_conflict() => return Ok(None),
            Err(error) => return Err(error),
        };
        ctx.memory.unrecorded.settle(instance);
        // A write while an attempt is under way only shows progress; the others start or
        // end runs.
        if !unfinished {
            ctx.memory.pace.wrote();
        }
    }
    Ok(Some(Recorded { stored, record_by }))
}

/// Until when an attempt whose Job exists since `since` may go unrecorded: the allowance
/// given when the Job was created (see `Owed::by`), else `within` after `since`.
fn record_deadline(
    since: DateTime<Utc>,
    owed: Option<&Owed>,
    within: impl FnOnce() -> Duration,
) -> DateTime<Utc> {
    match owed.filter(|o| o.since == since) {
        Some(owed) => owed.by,
        None => since + within(),
    }
}

fn is_unfinished(status: &WorkflowInstanceStatus) -> bool {
    matches!(
        status.state,
        State::Submitting | State::Submitted | State::Running
    )
}

/// Applies the rest of the step, now that the status records it: Jobs created again or
/// deleted, Events, the retry-now annotation consumed, waiting siblings woken.
async fn act(
    ctx: &Context,
    instance: &WorkflowInstance,
    read: &Read,
    workflow: &Workflow,
    planned: &mut Planned<'_>,
    stored: &WorkflowInstance,
) -> Result<(), Error> {
    let (namespace, name) = (read.namespace.as_str(), read.name.as_str());
    let step = &planned.step;
    for action in &step.actions {
        match action {
            machine::Action::CreateJob { execution, .. }
                if planned.created_execution == Some(*execution) => {}
            machine::Action::CreateJob { name: job_name, .. } => {
                // The current attempt's Job is gone: create it under its name again.
                if let JobCreation::Refused(message) =
                    create_job(ctx, stored, &planned.new_status, workflow, job_name).await?
                {
                    tracing::warn!(job = %job_name, %message, "Job refused");
                }
            }
            machine::Action::DeleteJob { name: job_name } => {
                delete_job(ctx, namespace, job_name).await?;
            }
            machine::Action::SuspendJob {
                name: job_name,
                suspend,
            } => {
                suspend_job(ctx, namespace, job_name, *suspend).await?;
            }
        }
    }
    let (current, after) = (&planned.current, step.instance.state);
    if read.owed.is_none() && current.state == State::Queued && after == State::Halted {
        // A restarted controller may have lost the record of the next attempt's Job (created
        // just before it stopped): make sure it does not run on unrecorded.
        let next = charon_core::names::job_name(name, current.execution + 1);
        delete_job(ctx, namespace, &next).await?;
    }
    for t in std::mem::take(&mut planned.step.transitions) {
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
            .record(stored, severity, &t.reason, &t.message)
            .await;
        tracing::info!(from = %t.from.as_str(), to = %t.to.as_str(), reason = %t.reason, "{}", t.message);
    }
    if planned.observation.retry_now && after != State::Queued {
        let patch = serde_json::json!({"metadata": {"annotations": {RETRY_NOW: null}}});
        let patched = ctx
            .api::<WorkflowInstance>(namespace)
            .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .map_err(call("patch", "WorkflowInstance", namespace, name))?;
        ctx.memory.writes.wrote(&patched.metadata);
    }
    if let Some((step, code)) = pipeline::failed_step(&planned.new_status.steps)
        && pipeline::failed_step(&read.status.steps).is_none()
    {
        let code = code.map_or_else(|| "no exit code".to_string(), |c| format!("exit code {c}"));
        let message = format!("step {step} failed ({code}); the steps after it did not run");
        ctx.events
            .record(stored, Severity::Warning, "StepFailed", &message)
            .await;
    }
    if after.is_terminal()
        && !current.state.is_terminal()
        && workflow.spec.retry.resume_from_failed_step
        && !workflow.spec.template.steps.is_empty()
    {
        delete_outputs_claim(ctx, namespace, name).await?;
    }
    let freed = current.state.is_active() && !after.is_active();
    let left_queue = current.state == State::Queued && after.is_terminal();
    if (freed || left_queue) && pools::governed(ctx, namespace, workflow) {
        ctx.memory.decisions.capacity_changed();
    }
    let took = !current.state.is_active() && after.is_active();
    if took {
        // The pool's status records who holds what, from which its usage accrues.
        for pool in &workflow.spec.pools {
            let _ = ctx.wake_pool.send(ObjectRef::new(&pool.name));
        }
    }
    if took || freed || left_queue {
        // The namespace's Quota reports its active attempts, their requests and its queue.
        if let Some(quota) = pools::quota_of(ctx, namespace) {
            let _ = ctx.wake_quota.send(ObjectRef::from_obj(&*quota));
        }
    }
    if freed && pools::governed(ctx, namespace, workflow) {
        pools::wake(ctx, namespace, workflow);
    } else if freed && workflow.spec.concurrency.is_some() {
        wake_waiting(ctx, namespace, &instance.spec.workflow, name);
    }
    Ok(())
}

/// When to look at the instance again: its history TTL once finished, when an unrecorded
/// attempt is due to be recorded (at once if its Job was `adopted`), else when the machine
/// asked (at most [`RESYNC`]).
async fn next_look(
    ctx: &Context,
    recorded: &Recorded,
    planned: &Planned<'_>,
    namespace: &str,
    workflow: &Workflow,
    adopted: bool,
    now: DateTime<Utc>,
) -> Result<Action, Error> {
    if planned.step.instance.state.is_terminal() {
        return expire(ctx, &recorded.stored, namespace, Some(workflow), now).await;
    }
    if let Some((_, by)) = recorded.record_by {
        if adopted {
            // An adopted Job may have finished before this controller started watching: no
            // event of it is to come, and until its end is observed the attempt holds its
            // slots. The next pass plans from the attempt just owed and observes the Job.
            return Ok(Action::requeue(ADOPTED_RETRY));
        }
        // Job and Pod events wake it sooner.
        return Ok(Action::requeue((by - now).to_std().unwrap_or_default()));
    }
    Ok(match planned.step.requeue_after {
        Some(after) => Action::requeue(after.to_std().unwrap_or_default().min(RESYNC)),
        None => Action::requeue(RESYNC),
    })
}

/// What the current execution's Job and pods say.
struct Observed {
    status: JobStatus,
    job: Option<Job>,
    pods: Vec<Pod>,
}

impl Observed {
    const MISSING: Observed = Observed {
        status: JobStatus::Missing,
        job: None,
        pods: Vec::new(),
    };
}

/// What the current execution's Job says. The cache may lag behind a Job just created or
/// deleted, so a miss is confirmed with the API server before it counts as "missing".
async fn observe(
    ctx: &Context,
    namespace: &str,
    status: &WorkflowInstanceStatus,
    now: DateTime<Utc>,
) -> Result<Observed, Error> {
    let Some(job_name) = status.job.as_deref() else {
        return Ok(Observed::MISSING);
    };
    if matches!(status.state, State::Queued | State::Prepare) {
        // The recorded Job is an earlier attempt's; it says nothing about the next one.
        return Ok(Observed::MISSING);
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
        Some(job) => Some(job.unpack()),
        None => ctx
            .api::<Job>(namespace)
            .get_opt(job_name)
            .await
            .map_err(call("get", "Job", namespace, job_name))?,
    };
    // Pods come from the cache even for a quiet attempt: the Job read afresh gives the
    // verdict, and a verdict its cached pods cannot explain (no exit code) reads them afresh
    // below. A list by label walks every pod of the namespace (in the real API server too),
    // far too dear to run for each of thousands of attempts waiting in a burst.
    let pods: Vec<Pod> = ctx
        .pod_index
        .lookup(&ctx.pods, namespace, job_name)
        .iter()
        .map(|p| p.unpack())
        .collect();
    let observed = charon_core::observe::job_status(job.as_ref(), &pods);
    // The Job's verdict can reach the cache before its pods' final statuses do: read the pods
    // fresh before concluding that the attempt left no exit code, or which step failed.
    let pipeline_ended = matches!(observed, JobStatus::Finished(_))
        && pods.iter().any(|p| pipeline::pod_steps(p).is_some());
    if matches!(observed, JobStatus::Finished(AttemptOutcome::NoExitCode(_))) || pipeline_ended {
        let fresh = list_pods(ctx, namespace, job_name).await?;
        return Ok(Observed {
            status: charon_core::observe::job_status(job.as_ref(), &fresh),
            job,
            pods: fresh,
        });
    }
    Ok(Observed {
        status: observed,
        job,
        pods,
    })
}

/// A Job's pods, read from the API server.
async fn list_pods(ctx: &Context, namespace: &str, job: &str) -> Result<Vec<Pod>, Error> {
    Ok(ctx
        .api::<Pod>(namespace)
        .list(&ListParams::default().labels(&pods_of_job(job)))
        .await
        .map_err(call("list", "Pod", namespace, ""))?
        .items)
}

/// Whether this queued instance may take a slot of its workflow (SPEC §6): states come from
/// the ledger of what this controller decided, falling back to the cache.
fn admission(
    ctx: &Context,
    ledger: &super::memory::Entries,
    instance: &WorkflowInstance,
    namespace: &str,
    workflow: &Workflow,
    limit: u32,
    now: DateTime<Utc>,
) -> Result<(), String> {
    let workflow = workflow.name_any();
    let me = instance.name_any();
    let mut active = 0;
    let mut ready: Vec<(DateTime<Utc>, String)> = Vec::new();
    for sibling in &instances_of(ctx, namespace, &workflow) {
        let sibling_name = sibling.name_any();
        if sibling_name == me {
            continue;
        }
        let status = sibling.status.clone().unwrap_or_default();
        let state = ledger.get(&sibling_name).copied().unwrap_or(status.state);
        if state.is_active() {
            active += 1;
        } else if state == State::Queued
            && !sibling.spec.halted
            && !sibling.spec.suspended
            && status.reason.as_deref() != Some(machine::waiting::DEPENDENCIES)
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
    let (admitted, waiting) = concurrency::admit(candidates, active, Some(limit), &workflow);
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

/// What became of a Job create.
enum JobCreation {
    /// The Job was created now.
    Created,
    /// The Job was created by an earlier pass (perhaps by a controller that stopped before
    /// recording it) and is adopted: it may have run, even finished, already.
    Adopted,
    /// The API server refused it for good (or it could not be rendered): the message.
    Refused(String),
}

/// Creates the Job of the current execution from the recorded snapshot.
async fn create_job(
    ctx: &Context,
    instance: &WorkflowInstance,
    status: &WorkflowInstanceStatus,
    workflow: &Workflow,
    job_name: &str,
) -> Result<JobCreation, Error> {
    let name = instance.name_any();
    let namespace = instance
        .namespace()
        .ok_or_else(|| incomplete("WorkflowInstance", "", &name, "metadata.namespace"))?;
    let snapshot = status.snapshot.clone().unwrap_or_else(|| {
        Box::new(job::snapshot(
            &workflow.spec.template,
            &instance.spec.parameter,
            workflow.metadata.generation,
        ))
    });
    let uid = instance
        .uid()
        .ok_or_else(|| incomplete("WorkflowInstance", &namespace, &name, "metadata.uid"))?;
    let mut execution = Execution::of(
        workflow,
        instance,
        (&namespace, &name, &uid),
        status.execution,
        status.tries.saturating_sub(1),
    );
    execution.log_archive = ctx.log_archive;
    execution.launcher = pipeline::Launcher {
        image: &ctx.launcher.image,
        command: &ctx.launcher.command,
    };
    let rendered = match job::render(&workflow.spec.template, &snapshot, &execution) {
        Ok(job) => job,
        Err(err) => return Ok(JobCreation::Refused(err.to_string())),
    };
    if execution.resumable
        && !snapshot.steps.is_empty()
        && let Some(refused) = ensure_outputs_claim(ctx, workflow, &execution).await?
    {
        return Ok(JobCreation::Refused(refused));
    }
    debug_assert_eq!(rendered.metadata.name.as_deref(), Some(job_name));
    let jobs = ctx.api::<Job>(&namespace);
    match jobs.create(&PostParams::default(), &rendered).await {
        Ok(_) => {
            ctx.memory.pace.wrote();
            Ok(JobCreation::Created)
        }
        // Created by an earlier pass (perhaps by a controller that stopped before recording
        // it): the same execution, so it is adopted, as long as it is this instance's.
        Err(e) if e.failure() == ApiFailure::Conflict => {
            let existing = jobs
                .get_opt(job_name)
                .await
                .map_err(call("get", "Job", &namespace, job_name))?;
            let ours = existing.is_some_and(|job| {
                job.owner_references()
                    .iter()
                    .any(|owner| owner.uid == uid && owner.controller == Some(true))
            });
            if ours {
                Ok(JobCreation::Adopted)
            } else {
                Err(Error::ForeignJob {
                    job: format!("{namespace}/{job_name}"),
                })
            }
        }
        // Refused for good (invalid, too large): an immediate Error (SPEC §7).
        Err(e) if e.failure() == ApiFailure::Refused => Ok(JobCreation::Refused(
            e.server_message().unwrap_or_default().to_string(),
        )),
        Err(e) => Err(call("create", "Job", &namespace, job_name)(e)),
    }
}

/// Creates the PersistentVolumeClaim a resumable pipeline's run keeps its step outputs on
/// ([`job::outputs_claim`]) unless it exists. `Some`: the API server refused it for good,
/// with its message.
async fn ensure_outputs_claim(
    ctx: &Context,
    workflow: &Workflow,
    execution: &Execution<'_>,
) -> Result<Option<String>, Error> {
    let claim = job::outputs_claim(&workflow.spec.template, execution);
    let name = pipeline::outputs_claim(execution.instance);
    let namespace = execution.namespace;
    let api = ctx.api::<PersistentVolumeClaim>(namespace);
    match api.create(&PostParams::default(), &claim).await {
        Ok(_) => Ok(None),
        Err(e) if e.failure() == ApiFailure::Conflict => Ok(None),
        Err(e) if e.failure() == ApiFailure::Refused => Ok(Some(format!(
            "PersistentVolumeClaim {name} for spec.retry.resumeFromFailedStep: {}",
            e.server_message().unwrap_or_default()
        ))),
        Err(e) => Err(call("create", "PersistentVolumeClaim", namespace, &name)(e)),
    }
}

/// Deletes a finished run's outputs claim, if it has one: its outputs are no longer needed.
async fn delete_outputs_claim(ctx: &Context, namespace: &str, instance: &str) -> Result<(), Error> {
    let name = pipeline::outputs_claim(instance);
    match ctx
        .api::<PersistentVolumeClaim>(namespace)
        .delete(&name, &DeleteParams::default())
        .await
    {
        Ok(_) => Ok(()),
        Err(e) if e.failure() == ApiFailure::NotFound => Ok(()),
        Err(e) => Err(call("delete", "PersistentVolumeClaim", namespace, &name)(e)),
    }
}

/// Deletes the Jobs of earlier attempts that are still there: the step that replaced an
/// attempt deletes its Job once, and a delete that failed (a 500, a timeout) is not planned
/// again, so every reconcile makes sure (an index lookup; a call only for a Job left over).
/// Only executions before the current one go: a later one may be an attempt this replica
/// has not recorded yet, which it adopts rather than deletes.
async fn sweep_jobs(ctx: &Context, read: &Read) -> Result<(), Error> {
    let current = read.status.execution;
    let leftovers: Vec<String> = ctx
        .job_index
        .lookup(&ctx.jobs, &read.namespace, &read.name)
        .iter()
        .map(|job| job.unpack())
        .filter(|job| job.metadata.deletion_timestamp.is_none())
        .filter(|job| execution_of_job(job).is_some_and(|e| e < current))
        .filter_map(|job| job.metadata.name.clone())
        .collect();
    for job in leftovers {
        delete_job(ctx, &read.namespace, &job).await?;
    }
    Ok(())
}

/// Sets a Job's `spec.suspend`. Suspending also raises its `backoffLimit` past the pods it
/// has lost so far: Kubernetes counts a pod stopped by a suspension as failed, and every
/// attempt's Job allows no failure of its own (retries are Charon's), so without the raise
/// the suspension would fail the Job.
async fn suspend_job(
    ctx: &Context,
    namespace: &str,
    name: &str,
    suspend: bool,
) -> Result<(), Error> {
    let api = ctx.api::<Job>(namespace);
    let Some(job) = api
        .get_opt(name)
        .await
        .map_err(call("get", "Job", namespace, name))?
    else {
        return Ok(());
    };
    let spec = job.spec.as_ref();
    if spec.and_then(|s| s.suspend).unwrap_or(false) == suspend {
        return Ok(());
    }
    let patch = if suspend {
        let failed = job.status.as_ref().and_then(|s| s.failed).unwrap_or(0);
        let limit = spec.and_then(|s| s.backoff_limit).unwrap_or(0);
        serde_json::json!({"spec": {"suspend": true, "backoffLimit": limit.max(failed + 1)}})
    } else {
        serde_json::json!({"spec": {"suspend": false}})
    };
    match api
        .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
    {
        Ok(_) => Ok(()),
        Err(e) if e.failure() == ApiFailure::NotFound => Ok(()),
        Err(e) => Err(call("patch", "Job", namespace, name)(e)),
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
        Err(e) if e.failure() == ApiFailure::NotFound => Ok(()),
        Err(e) => Err(call("delete", "Job", namespace, name)(e)),
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
    let ttl = status::history_ttl(workflow);
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
    if !trigger_recorded(ctx, instance, namespace, workflow).await? {
        // Deleting it now could let its partition run again after a restart.
        return Ok(Action::requeue(UNRECORDED_TRIGGER_RETRY));
    }
    let params = DeleteParams {
        propagation_policy: Some(PropagationPolicy::Background),
        ..Default::default()
    };
    let name = instance.name_any();
    let api: Api<WorkflowInstance> = ctx.api(namespace);
    match api.delete(&name, &params).await {
        Ok(_) => {
            tracing::info!("history TTL passed: deleted");
            ctx.memory.forget(instance);
            Ok(Action::await_change())
        }
        Err(e) if e.failure() == ApiFailure::NotFound => Ok(Action::await_change()),
        Err(e) => Err(call("delete", "WorkflowInstance", namespace, &name)(e)),
    }
}

/// Whether the trigger of the instance's run is on record (see
/// [`status::trigger_recorded`]); a backfill's status is read fresh.
async fn trigger_recorded(
    ctx: &Context,
    instance: &WorkflowInstance,
    namespace: &str,
    workflow: Option<&Workflow>,
) -> Result<bool, Error> {
    let trigger = &instance.spec.trigger;
    let backfill = match trigger.trigger_type {
        TriggerType::Backfill => ctx
            .api::<Backfill>(namespace)
            .get_opt(&trigger.id)
            .await
            .map_err(call("get", "Backfill", namespace, &trigger.id))?,
        _ => None,
    };
    Ok(status::trigger_recorded(
        instance,
        workflow,
        backfill.as_ref(),
    ))
}

fn random_below(n: u32) -> u32 {
    if n == 0 { 0 } else { rand::random_range(0..n) }
}

/// Failed reconciles are retried after a delay.
pub fn error_policy(instance: Arc<WorkflowInstance>, error: &Error, ctx: Arc<Context>) -> Action {
    ctx.requeue_after_error(&*instance, error, None, std::time::Duration::from_secs(2))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn owed(since: DateTime<Utc>, by: DateTime<Utc>) -> Owed {
        Owed {
            uid: "u".into(),
            status: Box::default(),
            since,
            by,
        }
    }

    #[test]
    fn an_attempt_keeps_the_allowance_its_job_was_created_with() {
        let created = DateTime::<Utc>::UNIX_EPOCH;
        let quiet = || Duration::seconds(5);
        // A Job created in a burst was owed for ten minutes: once the burst is over (the
        // allowance now would be 5 s), it still is, so its end is written with its start.
        let burst = owed(created, created + Duration::minutes(10));
        assert_eq!(
            record_deadline(created, Some(&burst), quiet),
            created + Duration::minutes(10)
        );
        // A new attempt (another Job) gets the allowance of now.
        let later = created + Duration::minutes(1);
        assert_eq!(
            record_deadline(later, Some(&burst), quiet),
            later + Duration::seconds(5)
        );
        assert_eq!(
            record_deadline(created, None, || Duration::minutes(10)),
            created + Duration::minutes(10)
        );
    }
}
