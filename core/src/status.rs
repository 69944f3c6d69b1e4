//! An instance's stored status is the record of what ran. This maps it to and from the state
//! machine's view ([`Instance`]): the reconciler reads a status, steps the machine, and
//! writes back what [`after_step`] returns; a re-open keeps the finished run with
//! [`reopened`].

use chrono::{DateTime, Utc};

use crate::instance::{self, Instance, Transition};
use crate::resources::{
    HistoryEntry, InstanceState, RunRecord, Trigger, Workflow, WorkflowInstanceStatus,
};
use crate::retry::RetryCounters;

/// The state machine's view of a stored status.
pub fn to_machine(name: &str, status: &WorkflowInstanceStatus) -> Instance {
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
pub fn after_step(
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

/// The status of a finished instance re-opened as a new run by `trigger` (SPEC §3): the
/// finished run (which `finished_trigger` had started) moves to `status.runs`, the state is
/// `Queued`, tries and cost are reset, and the transition is in the history.
pub fn reopened(
    status: &WorkflowInstanceStatus,
    name: &str,
    finished_trigger: &Trigger,
    trigger: &Trigger,
    now: DateTime<Utc>,
    workflow: &Workflow,
) -> WorkflowInstanceStatus {
    let finished_run = RunRecord {
        trigger: finished_trigger.clone(),
        state: status.state,
        tries: status.tries,
        cost: status.cost,
        last_exit_code: status.last_exit_code,
        started_at: status.started_at,
        finished_at: status.finished_at,
    };
    let message = format!(
        "re-opened by {} trigger ({})",
        article(trigger.trigger_type.as_str()),
        trigger.id
    );
    let (reopened, transition) = instance::reopen(&to_machine(name, status), "Reopened", message);
    let mut before = status.clone();
    before.started_at = None;
    before.finished_at = None;
    before.snapshot = None;
    before.runs.push(finished_run);
    after_step(&before, &reopened, &[transition], now, workflow)
}

/// How long a finished instance is kept (`spec.history.ttl`, SPEC §4): seven days where the
/// workflow is gone or its TTL unreadable.
pub fn history_ttl(workflow: Option<&Workflow>) -> chrono::Duration {
    workflow
        .and_then(|w| crate::schedule::IsoDuration::parse(&w.spec.history.ttl).ok())
        .map(|d| d.approximate())
        .unwrap_or_else(|| chrono::Duration::days(7))
}

/// A noun with its indefinite article: "an adhoc", "a backfill".
fn article(noun: &str) -> String {
    let vowel = noun.starts_with(['a', 'e', 'i', 'o', 'u']);
    format!("{} {noun}", if vowel { "an" } else { "a" })
}
