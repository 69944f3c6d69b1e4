//! An instance's stored status is the record of what ran. This maps it to and from the state
//! machine's view ([`Instance`]): the reconciler reads a status, steps the machine, and
//! writes back what [`after_step`] returns; a re-open keeps the finished run with
//! [`reopened`].

use chrono::{DateTime, Utc};

use crate::backfill::partition_state;
use crate::instance::{self, Instance, Transition};
use crate::resources::{
    AttemptOutcomeKind, AttemptRecord, Backfill, HistoryEntry, InstanceState, RunRecord, Trigger,
    TriggerType, Workflow, WorkflowInstance, WorkflowInstanceStatus,
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
        reason: status.reason.clone(),
        suspended_at: status.suspended_at,
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
    status.reason = after.reason.clone();
    status.suspended_at = after.suspended_at;
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
        record_attempt(&mut status.attempts, t, after, now);
    }
    let limit = workflow.spec.history.limit.max(1) as usize;
    if status.history.len() > limit {
        let excess = status.history.len() - limit;
        status.history.drain(..excess);
    }
    if status.attempts.len() > limit {
        let excess = status.attempts.len() - limit;
        status.attempts.drain(..excess);
    }
    status
}

/// Whether an attempt is under way in `state`.
fn attempt_active(state: InstanceState) -> bool {
    matches!(
        state,
        InstanceState::Submitting
            | InstanceState::Submitted
            | InstanceState::Running
            | InstanceState::Suspended
    )
}

/// Keeps `status.attempts` up with one transition: an attempt begins when its Job is to be
/// created, ends when it leaves the running states (with its exit code and how it ended),
/// and takes the reason of what the instance did next.
fn record_attempt(
    attempts: &mut Vec<AttemptRecord>,
    t: &Transition,
    after: &Instance,
    now: DateTime<Utc>,
) {
    if t.to == InstanceState::Submitting {
        attempts.push(AttemptRecord {
            execution: after.execution,
            job: after.job.clone().unwrap_or_default(),
            started_at: Some(now),
            ..AttemptRecord::default()
        });
        return;
    }
    let Some(last) = attempts.last_mut() else {
        return;
    };
    if attempt_active(t.from) && !attempt_active(t.to) && last.finished_at.is_none() {
        last.finished_at = Some(now);
        last.outcome = Some(match (t.to, t.reason.as_str()) {
            (InstanceState::Halted, _) => AttemptOutcomeKind::Halted,
            (InstanceState::Failed, "TimedOut") => AttemptOutcomeKind::TimedOut,
            (InstanceState::Terminated, _) if after.last_exit_code == Some(0) => {
                AttemptOutcomeKind::Succeeded
            }
            _ => AttemptOutcomeKind::Failed,
        });
        if t.to == InstanceState::Terminated {
            last.exit_code = after.last_exit_code;
        }
        last.reason = t.reason.clone();
    } else if matches!(t.from, InstanceState::Terminated | InstanceState::Failed) {
        // What the judged attempt led to: done, a retry, or giving up.
        last.reason = t.reason.clone();
    }
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
    before.steps.clear();
    before.steps_completed = None;
    before.array = None;
    before.runs.push(finished_run);
    before.trigger = Some(trigger.clone());
    after_step(&before, &reopened, &[transition], now, workflow)
}

/// Whether a finished instance was re-opened (its spec names a new trigger) but its status
/// does not show the new run yet: re-opening writes the spec, then the status, and the
/// second write may have failed. The controller then writes the status [`reopened`] gives.
pub fn reopen_pending(instance: &WorkflowInstance) -> bool {
    instance.status.as_ref().is_some_and(|status| {
        status.state.is_terminal()
            && status
                .trigger
                .as_ref()
                .is_some_and(|run| *run != instance.spec.trigger)
    })
}

/// How long a finished instance is kept (`spec.history.ttl`, SPEC §4): seven days where the
/// workflow is gone or its TTL unreadable.
pub fn history_ttl(workflow: Option<&Workflow>) -> chrono::Duration {
    workflow
        .and_then(|w| crate::schedule::IsoDuration::parse(&w.spec.history.ttl).ok())
        .filter(|d| d.check_range().is_ok())
        .and_then(|d| d.approximate())
        .unwrap_or_else(|| chrono::Duration::days(7))
}

/// Whether the trigger of an instance's current run is on record where that trigger is
/// planned from, so that deleting the instance (its history TTL passed) cannot make the
/// partition run again (SPEC §3: exactly once):
///
/// - a natural trigger, once the workflow's stored trigger cursor has passed the partition's
///   trigger instant (until then a restarted operator would plan it again, and with the
///   instance gone its name would no longer refuse the second run);
/// - a backfill trigger, once the backfill's stored status has recorded the partition's
///   outcome (until then it would count it failed, "instance was deleted");
/// - an ad-hoc trigger at once: nothing plans it again.
///
/// A workflow or backfill that no longer exists triggers nothing more. `backfill` is the
/// instance's backfill as stored, when its trigger is one.
pub fn trigger_recorded(
    instance: &WorkflowInstance,
    workflow: Option<&Workflow>,
    backfill: Option<&Backfill>,
) -> bool {
    match instance.spec.trigger.trigger_type {
        TriggerType::Adhoc => true,
        TriggerType::Natural => {
            let Some(workflow) = workflow else {
                return true;
            };
            let cursor = workflow.status.as_ref().and_then(|s| s.trigger_cursor);
            let trigger_at =
                crate::validate::workflow(&workflow.spec, crate::validate::Policy::PERMISSIVE)
                    .ok()
                    .and_then(|valid| valid.schedule.trigger_at(instance.spec.logical_time));
            matches!((cursor, trigger_at), (Some(cursor), Some(at)) if at <= cursor)
        }
        TriggerType::Backfill => {
            let Some(backfill) = backfill else {
                return true;
            };
            let name = instance.metadata.name.as_deref();
            let rows = backfill.status.as_ref().map(|s| s.partitions.as_slice());
            match rows
                .unwrap_or_default()
                .iter()
                .find(|r| r.instance.as_deref() == name)
            {
                // Not one of its partitions: it will not trigger this one.
                None => true,
                Some(row) => ![partition_state::PENDING, partition_state::TRIGGERED]
                    .contains(&row.state.as_str()),
            }
        }
    }
}

/// A noun with its indefinite article: "an adhoc", "a backfill".
fn article(noun: &str) -> String {
    let vowel = noun.starts_with(['a', 'e', 'i', 'o', 'u']);
    format!("{} {noun}", if vowel { "an" } else { "a" })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::{BackfillPartition, BackfillStatus, WorkflowStatus};
    use chrono::TimeZone;

    /// Steps `status` through the machine with `job` observed at `at`.
    fn stepped(
        status: &WorkflowInstanceStatus,
        job: crate::instance::JobStatus,
        halted: bool,
        at: &str,
    ) -> WorkflowInstanceStatus {
        let now: DateTime<Utc> = at.parse().expect("a time");
        let observation = crate::instance::Observation {
            halted,
            retry_now: true,
            slot: Ok(()),
            job,
            running_timeout: None,
            suspended: false,
            dependencies: Ok(()),
            dependency_deadline: None,
            kueue_queue: None,
        };
        let step = crate::instance::step(
            &to_machine("w-2024-01-01t05", status),
            &observation,
            &crate::retry::RetryPolicy::default(),
            now,
            &mut |_| 0,
        );
        after_step(
            status,
            &step.instance,
            &step.transitions,
            now,
            &workflow(None),
        )
    }

    #[test]
    fn every_attempt_is_on_record_with_how_it_ended() {
        use crate::instance::JobStatus::{Finished, Missing, Running};
        use crate::retry::AttemptOutcome::Exited;
        let mut status = WorkflowInstanceStatus::default();
        status = stepped(&status, Missing, false, "2024-01-01T06:00:00Z");
        assert_eq!(status.attempts.len(), 1, "begun with its Job");
        assert_eq!(status.attempts[0].finished_at, None);
        status = stepped(&status, Finished(Exited(1)), false, "2024-01-01T06:01:00Z");
        // Retried at once (retry-now), and then it succeeds.
        status = stepped(&status, Missing, false, "2024-01-01T06:02:00Z");
        status = stepped(&status, Running(None), false, "2024-01-01T06:02:30Z");
        status = stepped(&status, Finished(Exited(0)), false, "2024-01-01T06:03:00Z");
        let summary: Vec<_> = status
            .attempts
            .iter()
            .map(|a| {
                (
                    a.execution,
                    a.job.as_str(),
                    a.exit_code,
                    a.outcome,
                    a.reason.as_str(),
                )
            })
            .collect();
        assert_eq!(
            summary,
            [
                (
                    1,
                    "w-2024-01-01t05-1",
                    Some(1),
                    Some(AttemptOutcomeKind::Failed),
                    "Failed"
                ),
                (
                    2,
                    "w-2024-01-01t05-2",
                    Some(0),
                    Some(AttemptOutcomeKind::Succeeded),
                    "Succeeded"
                ),
            ]
        );
        assert_eq!(
            status.attempts[1].finished_at,
            Some("2024-01-01T06:03:00Z".parse().expect("a time"))
        );

        // A halted attempt ends Halted, without an exit code.
        let mut halted = stepped(
            &WorkflowInstanceStatus::default(),
            Missing,
            false,
            "2024-01-01T06:00:00Z",
        );
        halted = stepped(&halted, Running(None), true, "2024-01-01T06:00:10Z");
        let last = halted.attempts.last().expect("an attempt");
        assert_eq!(
            (last.outcome, last.exit_code, last.reason.as_str()),
            (Some(AttemptOutcomeKind::Halted), None, "Halted")
        );
    }

    fn instance(trigger: &str) -> WorkflowInstance {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "w-2024-01-01t05", "namespace": "ns", "uid": "u"},
            "spec": {"workflow": "w", "parameter": "2024-01-01T05",
                "logicalTime": "2024-01-01T05:00:00Z",
                "trigger": {"type": trigger, "id": if trigger == "backfill" { "bf" } else { trigger }}},
        }))
        .expect("an instance")
    }

    fn workflow(cursor: Option<&str>) -> Workflow {
        let mut workflow: Workflow = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "w", "namespace": "ns", "uid": "wu"},
            "spec": {"schedule": "@hourly", "template": {"image": "busybox"}},
        }))
        .expect("a workflow");
        workflow.status = Some(WorkflowStatus {
            trigger_cursor: cursor.map(|c| c.parse().expect("a time")),
            ..Default::default()
        });
        workflow
    }

    fn backfill(state: Option<&str>) -> Backfill {
        let mut backfill: Backfill = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "bf", "namespace": "ns"},
            "spec": {"workflow": "w", "start": "2024-01-01T00", "end": "2024-01-02T00"},
        }))
        .expect("a backfill");
        backfill.status = Some(BackfillStatus {
            partitions: state
                .map(|state| BackfillPartition {
                    parameter: "2024-01-01T05".into(),
                    state: state.into(),
                    instance: Some("w-2024-01-01t05".into()),
                    reason: None,
                })
                .into_iter()
                .collect(),
            ..Default::default()
        });
        backfill
    }

    #[test]
    fn a_ttl_outside_the_supported_range_never_panics() {
        let mut w = workflow(None);
        w.spec.history.ttl = "P300000000Y".into();
        assert_eq!(history_ttl(Some(&w)), chrono::Duration::days(7));
        w.spec.history.ttl = "P1D".into();
        assert_eq!(history_ttl(Some(&w)), chrono::Duration::days(1));
    }

    #[test]
    fn an_instance_may_go_only_once_its_trigger_is_on_record() {
        let natural = instance("natural");
        // Partition 05:00 of an @hourly workflow (offset PT1H) triggers at 06:00.
        assert_eq!(
            crate::validate::workflow(&workflow(None).spec, crate::validate::Policy::PERMISSIVE)
                .expect("valid")
                .schedule
                .trigger_at(Utc.with_ymd_and_hms(2024, 1, 1, 5, 0, 0).unwrap()),
            Some(Utc.with_ymd_and_hms(2024, 1, 1, 6, 0, 0).unwrap())
        );
        let cases = [
            (None, false, "no cursor yet"),
            (
                Some("2024-01-01T05:59:59Z"),
                false,
                "cursor short of the trigger",
            ),
            (Some("2024-01-01T06:00:00Z"), true, "cursor at the trigger"),
            (Some("2024-01-01T09:00:00Z"), true, "cursor past it"),
        ];
        for (cursor, recorded, why) in cases {
            assert_eq!(
                trigger_recorded(&natural, Some(&workflow(cursor)), None),
                recorded,
                "{why}"
            );
        }
        assert!(trigger_recorded(&natural, None, None), "workflow gone");

        let by_backfill = instance("backfill");
        for (state, recorded) in [
            (Some(partition_state::PENDING), false),
            (Some(partition_state::TRIGGERED), false),
            (Some(partition_state::DONE), true),
            (Some(partition_state::FAILED), true),
            (Some(partition_state::SKIPPED), true),
            (None, true),
        ] {
            assert_eq!(
                trigger_recorded(&by_backfill, None, Some(&backfill(state))),
                recorded,
                "{state:?}"
            );
        }
        assert!(trigger_recorded(&by_backfill, None, None), "backfill gone");
        assert!(trigger_recorded(
            &instance("adhoc"),
            Some(&workflow(None)),
            None
        ));
    }
}
