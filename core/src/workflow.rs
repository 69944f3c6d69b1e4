//! The plan of one Workflow reconcile (SPEC §3, §7), as a pure function of the workflow, what
//! the controller knows of its instances, and the current time.
//!
//! The adapter creates the planned instances in order and writes the planned status. If
//! creating one fails, [`WorkflowPlan::status_after`] gives the status that records only what
//! was created, so the rest is planned again on the next pass and nothing is lost.

use chrono::{DateTime, Duration, Utc};

use crate::names;
use crate::resources::condition_type;
use crate::resources::{
    Condition, ConditionStatus, NextTrigger, TriggeredPartition, Workflow, WorkflowStatus,
    set_condition,
};
use crate::trigger::{Due, TriggerPolicy, plan_natural};
use crate::validate;

/// At most this many instances are created in one pass; the rest follow at once.
pub const MAX_BATCH: usize = 100;

/// A natural instance to create.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewInstance {
    /// Deterministic name (the exactly-once key).
    pub name: String,
    /// The parameter string.
    pub parameter: String,
    /// The partition's logical instant.
    pub logical: DateTime<Utc>,
    /// When the partition became due (for lateness metrics).
    pub trigger_at: DateTime<Utc>,
}

/// What a reconcile must do.
#[derive(Clone, Debug, PartialEq)]
pub struct WorkflowPlan {
    /// Instances to create, oldest first.
    pub create: Vec<NewInstance>,
    /// The status once every instance in `create` exists.
    pub status: WorkflowStatus,
    /// The status before this pass (to build partial statuses).
    previous: WorkflowStatus,
    /// `Some(message)` when the spec just became invalid: the adapter emits a Warning Event.
    pub became_invalid: Option<String>,
    /// Due partitions skipped by suspension or the catch-up policy.
    pub skipped: usize,
    /// When to reconcile again: the next trigger instant, or now when more is due.
    pub requeue_at: Option<DateTime<Utc>>,
}

impl WorkflowPlan {
    /// The status to write when only the first `created` instances of `create` exist.
    pub fn status_after(&self, created: usize) -> WorkflowStatus {
        if created >= self.create.len() {
            return self.status.clone();
        }
        let mut status = self.status.clone();
        match created.checked_sub(1).map(|i| &self.create[i]) {
            Some(last) => {
                status.trigger_cursor = Some(last.trigger_at);
                status.last_triggered = Some(TriggeredPartition {
                    parameter: last.parameter.clone(),
                    logical_time: last.logical,
                    at: self
                        .status
                        .last_triggered
                        .as_ref()
                        .map_or(last.trigger_at, |t| t.at),
                });
            }
            None => {
                status.trigger_cursor = self.previous.trigger_cursor;
                status.last_triggered = self.previous.last_triggered.clone();
                status.scheduled_with = self.previous.scheduled_with.clone();
            }
        }
        status
    }
}

/// What identifies a schedule: when it changes, SPEC §3's schedule-change rule applies.
pub fn schedule_key(workflow: &Workflow) -> String {
    let spec = &workflow.spec;
    format!(
        "{}|{}|{}",
        spec.schedule,
        spec.time_zone,
        spec.offset.as_deref().unwrap_or("")
    )
}

/// Plans one reconcile of `workflow` at `now` under the operator's `policy`; `active` is the number of its unfinished
/// instances.
pub fn plan(
    workflow: &Workflow,
    policy: validate::Policy,
    active: u32,
    now: DateTime<Utc>,
) -> WorkflowPlan {
    plan_with_cycle(workflow, policy, active, now, None)
}

/// The reason a `Valid=False` condition gives for a cycle in `spec.dependsOn`.
const CYCLE: &str = "the dependencies form a cycle";

/// Whether a `Valid` condition's message refuses its workflow for a cycle in
/// `spec.dependsOn` (such a workflow becomes valid again when another breaks the cycle).
pub fn refused_for_a_cycle(message: &str) -> bool {
    message.contains(&format!("spec.dependsOn: {CYCLE}"))
}

/// [`plan`] for a workflow whose `spec.dependsOn` closes `cycle` (found by
/// [`crate::dependency::cycle`] among the workflows of its namespace): such a workflow is
/// invalid, as a cycle would wait for ever.
pub fn plan_with_cycle(
    workflow: &Workflow,
    policy: validate::Policy,
    active: u32,
    now: DateTime<Utc>,
    cycle: Option<&[String]>,
) -> WorkflowPlan {
    let previous = workflow.status.clone().unwrap_or_default();
    let generation = workflow.metadata.generation;
    let mut status = previous.clone();
    status.observed_generation = generation;
    status.active = active;
    let was_invalid = crate::resources::find_condition(&previous.conditions, condition_type::VALID)
        .is_some_and(|c| c.status == ConditionStatus::False);

    let checked = validate::workflow(&workflow.spec, policy).and_then(|valid| match cycle {
        Some(cycle) => Err(vec![validate::FieldError {
            field: "spec.dependsOn".to_string(),
            reason: format!("{CYCLE} ({}), which would wait for ever", cycle.join(" → ")),
        }]),
        None => Ok(valid),
    });
    let valid = match checked {
        Ok(valid) => valid,
        Err(errors) => {
            let message = validate::message(&errors);
            let condition = Condition::invalid(&message, generation, now);
            let previous_message =
                crate::resources::find_condition(&previous.conditions, condition_type::VALID)
                    .map(|c| c.message.clone());
            set_condition(&mut status.conditions, condition);
            status.next_trigger = None;
            let became_invalid =
                (!was_invalid || previous_message.as_deref() != Some(&message)).then_some(message);
            return WorkflowPlan {
                create: Vec::new(),
                status,
                previous,
                became_invalid,
                skipped: 0,
                requeue_at: None,
            };
        }
    };
    set_condition(
        &mut status.conditions,
        Condition::valid("the spec is valid", generation, now),
    );

    let schedule = &valid.schedule;
    let key = schedule_key(workflow);
    let created = workflow
        .metadata
        .creation_timestamp
        .as_ref()
        .and_then(crate::observe::time)
        .unwrap_or(now);
    let cursor = previous.trigger_cursor.unwrap_or(created);
    let changed_after = match (&previous.scheduled_with, &previous.last_triggered) {
        (Some(before), Some(last)) if *before != key => Some(last.logical_time),
        _ => None,
    };
    let policy = TriggerPolicy {
        catch_up: workflow.spec.catch_up,
        suspended: workflow.spec.suspend,
    };
    let natural = plan_natural(schedule, policy, cursor, changed_after, now, MAX_BATCH);
    let name = workflow.metadata.name.clone().unwrap_or_default();
    let create: Vec<NewInstance> = natural
        .trigger
        .iter()
        .map(
            |Due {
                 logical,
                 trigger_at,
             }| {
                let parameter = schedule.parameter(*logical);
                NewInstance {
                    name: names::instance_name(&name, &parameter),
                    parameter,
                    logical: *logical,
                    trigger_at: *trigger_at,
                }
            },
        )
        .collect();
    if let Some(last) = create.last() {
        status.last_triggered = Some(TriggeredPartition {
            parameter: last.parameter.clone(),
            logical_time: last.logical,
            at: now,
        });
    }
    status.trigger_cursor = Some(natural.cursor);
    status.scheduled_with = Some(key);
    status.next_trigger = natural.next.map(|due| NextTrigger {
        parameter: schedule.parameter(due.logical),
        logical_time: due.logical,
        trigger_at: due.trigger_at,
    });
    let requeue_at = if natural.more {
        Some(now)
    } else {
        natural.next.map(|d| d.trigger_at)
    };
    WorkflowPlan {
        create,
        status,
        previous,
        became_invalid: None,
        skipped: natural.skipped.len(),
        requeue_at,
    }
}

/// How long to wait from `now` until `at` (zero if it passed).
pub fn until(at: DateTime<Utc>, now: DateTime<Utc>) -> Duration {
    (at - now).max(Duration::zero())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::{WorkflowSpec, WorkflowTemplate};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    fn utc(s: &str) -> DateTime<Utc> {
        s.parse().expect("test time")
    }

    fn workflow(schedule: &str, created: &str) -> Workflow {
        let spec: WorkflowSpec = serde_json::from_value(serde_json::json!({
            "schedule": schedule,
            "template": {"image": "busybox"},
        }))
        .expect("test spec");
        let mut wf = Workflow::new("hb", spec);
        wf.metadata.generation = Some(1);
        let created: DateTime<Utc> = utc(created);
        wf.metadata.creation_timestamp = Some(Time(
            k8s_openapi::jiff::Timestamp::from_second(created.timestamp()).expect("in range"),
        ));
        let _ = WorkflowTemplate::default();
        wf
    }

    #[test]
    fn first_partition_and_next_trigger() {
        let wf = workflow("@hourly", "2024-01-01T10:22:00Z");
        let p = plan(
            &wf,
            validate::Policy::default(),
            0,
            utc("2024-01-01T10:30:00Z"),
        );
        assert!(p.create.is_empty());
        let next = p.status.next_trigger.clone().expect("next");
        assert_eq!(next.parameter, "2024-01-01T10");
        assert_eq!(next.trigger_at, utc("2024-01-01T11:00:00Z"));
        assert_eq!(p.requeue_at, Some(utc("2024-01-01T11:00:00Z")));

        let mut wf = wf;
        wf.status = Some(p.status);
        let p = plan(
            &wf,
            validate::Policy::default(),
            0,
            utc("2024-01-01T11:00:00Z"),
        );
        assert_eq!(p.create.len(), 1);
        assert_eq!(p.create[0].name, "hb-2024-01-01t10");
        assert_eq!(p.create[0].parameter, "2024-01-01T10");
        assert_eq!(
            p.status
                .last_triggered
                .as_ref()
                .map(|t| t.parameter.as_str()),
            Some("2024-01-01T10")
        );
    }

    #[test]
    fn a_partial_creation_keeps_the_rest_for_later() {
        let mut wf = workflow("@hourly", "2024-01-01T00:10:00Z");
        wf.status = Some(
            plan(
                &wf,
                validate::Policy::default(),
                0,
                utc("2024-01-01T00:10:00Z"),
            )
            .status,
        );
        let p = plan(
            &wf,
            validate::Policy::default(),
            0,
            utc("2024-01-01T05:10:00Z"),
        );
        // The first partition is T00 (due 01:00, the first due after creation).
        assert_eq!(p.create.len(), 5);
        let partial = p.status_after(2);
        wf.status = Some(partial);
        let again = plan(
            &wf,
            validate::Policy::default(),
            0,
            utc("2024-01-01T05:10:00Z"),
        );
        let names: Vec<_> = again.create.iter().map(|c| c.parameter.as_str()).collect();
        assert_eq!(names, ["2024-01-01T02", "2024-01-01T03", "2024-01-01T04"]);
        wf.status = Some(p.status_after(0));
        assert_eq!(
            plan(
                &wf,
                validate::Policy::default(),
                0,
                utc("2024-01-01T05:10:00Z")
            )
            .create
            .len(),
            5
        );
    }

    #[test]
    fn invalid_specs_get_a_condition_and_no_instances_and_resume_when_fixed() {
        let mut wf = workflow("61 * * * *", "2024-01-01T00:00:00Z");
        let p = plan(
            &wf,
            validate::Policy::default(),
            0,
            utc("2024-01-01T03:00:00Z"),
        );
        assert!(p.create.is_empty());
        let valid = crate::resources::find_condition(&p.status.conditions, condition_type::VALID)
            .expect("condition");
        assert_eq!(valid.status, ConditionStatus::False);
        assert!(
            valid.message.starts_with("spec.schedule: "),
            "{}",
            valid.message
        );
        assert!(p.became_invalid.is_some());
        wf.status = Some(p.status);
        // The same problem again is not a new Warning.
        assert_eq!(
            plan(
                &wf,
                validate::Policy::default(),
                0,
                utc("2024-01-01T03:01:00Z")
            )
            .became_invalid,
            None
        );
        wf.spec.schedule = "@hourly".into();
        let p = plan(
            &wf,
            validate::Policy::default(),
            0,
            utc("2024-01-01T03:30:00Z"),
        );
        let params: Vec<_> = p.create.iter().map(|c| c.parameter.as_str()).collect();
        // Nothing due while invalid is lost (catch-up All).
        assert_eq!(params, ["2024-01-01T00", "2024-01-01T01", "2024-01-01T02"]);
    }

    #[test]
    fn a_schedule_change_triggers_what_the_new_schedule_makes_due() {
        let mut wf = workflow("@hourly", "2024-01-01T00:10:00Z");
        wf.status = Some(
            plan(
                &wf,
                validate::Policy::default(),
                0,
                utc("2024-01-01T00:10:00Z"),
            )
            .status,
        );
        let p = plan(
            &wf,
            validate::Policy::default(),
            0,
            utc("2024-01-01T02:00:00Z"),
        );
        assert_eq!(p.create.len(), 2);
        wf.status = Some(p.status);
        // With offset zero the partition T02 is due now, which the old schedule would have
        // triggered only at 03:00.
        wf.spec.offset = Some("PT0S".into());
        let p = plan(
            &wf,
            validate::Policy::default(),
            0,
            utc("2024-01-01T02:00:30Z"),
        );
        let params: Vec<_> = p.create.iter().map(|c| c.parameter.as_str()).collect();
        assert_eq!(params, ["2024-01-01T02"]);
    }
}
