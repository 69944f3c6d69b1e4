//! Natural-trigger planning (SPEC §3): which partitions a workflow must trigger now.
//!
//! The workflow's status keeps a *cursor*: every partition whose trigger time is at or before
//! it has been triggered or deliberately skipped. Planning works in trigger-time space, which
//! is what makes schedule, offset and time-zone changes safe: partitions that trigger after the
//! change are never skipped, and re-triggering one that already ran is refused by its
//! deterministic instance name (AlreadyExists).

use chrono::{DateTime, Duration, Utc};

use crate::schedule::Schedule;

/// `spec.catchUp`: what to do with partitions that became due while nobody was triggering
/// them (the resource's enum: one definition for both).
pub use crate::resources::CatchUpPolicy as CatchUp;

/// How late a trigger may be and still count as on time under [`CatchUp::None`].
pub const ON_TIME_TOLERANCE: Duration = Duration::minutes(1);

/// One partition to trigger.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Due {
    /// The partition's logical instant.
    pub logical: DateTime<Utc>,
    /// When it was due.
    pub trigger_at: DateTime<Utc>,
}

/// The outcome of planning one reconcile.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NaturalPlan {
    /// Partitions to trigger now, oldest first.
    pub trigger: Vec<Due>,
    /// Due partitions deliberately not triggered (suspended, or catch-up policy).
    pub skipped: Vec<Due>,
    /// The cursor once every partition in `trigger` has been created. If creating one fails,
    /// the adapter must store the `trigger_at` of the last one created instead.
    pub cursor: DateTime<Utc>,
    /// The next partition that will become due, and when.
    pub next: Option<Due>,
    /// More partitions are due than one pass triggers: run again at once.
    pub more: bool,
}

/// The spec fields that decide whether and how partitions are triggered.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TriggerPolicy {
    /// `spec.catchUp`.
    pub catch_up: CatchUp,
    /// `spec.suspend`.
    pub suspended: bool,
}

/// Plans natural triggers at `now`. `cursor` is the stored cursor, or the workflow's creation
/// time for a new workflow (the first partition is the first one due after creation).
///
/// `changed_after` is set when the schedule, offset or time zone changed since the last
/// trigger: it is the logical instant of the last partition triggered under the old schedule.
/// Partitions after it that the new schedule makes due earlier than the cursor are then
/// triggered too (subject to catch-up), so a change never skips a partition that had not run;
/// partitions that already ran keep their instance name and are refused as AlreadyExists.
/// At most `max_batch` partitions are triggered in one pass.
pub fn plan_natural(
    schedule: &Schedule,
    policy: TriggerPolicy,
    cursor: DateTime<Utc>,
    changed_after: Option<DateTime<Utc>>,
    now: DateTime<Utc>,
    max_batch: usize,
) -> NaturalPlan {
    let TriggerPolicy {
        catch_up,
        suspended,
    } = policy;
    let cursor = changed_after
        .and_then(|last| schedule.next_after(last))
        .and_then(|first_new| schedule.trigger_at(first_new))
        .map_or(cursor, |t| cursor.min(t - Duration::nanoseconds(1)));
    let mut due = Vec::new();
    let mut more = false;
    let mut partition = schedule.first_due_after(cursor);
    while let Some(logical) = partition {
        let Some(trigger_at) = schedule.trigger_at(logical) else {
            break;
        };
        if trigger_at > now {
            break;
        }
        // `All` triggers in batches; the other policies only need the newest due partition,
        // but must still walk past the older ones (bounded by how long the controller was away).
        if catch_up == CatchUp::All && !suspended && due.len() == max_batch {
            more = true;
            break;
        }
        due.push(Due {
            logical,
            trigger_at,
        });
        partition = schedule.next_after(logical);
    }

    let last_due = due.last().map(|d| d.trigger_at);
    let (trigger, skipped) = if suspended {
        (Vec::new(), due)
    } else {
        match catch_up {
            CatchUp::All => (due, Vec::new()),
            CatchUp::Latest => {
                let latest = due.pop();
                (latest.into_iter().collect(), due)
            }
            CatchUp::None => match due.last() {
                Some(latest) if now - latest.trigger_at <= ON_TIME_TOLERANCE => {
                    let on_time = due.split_off(due.len() - 1);
                    (on_time, due)
                }
                _ => (Vec::new(), due),
            },
        }
    };
    let cursor = if more {
        // Resume right after the last partition of this batch.
        trigger.last().map_or(cursor, |d| d.trigger_at)
    } else {
        // Only what was walked moves the cursor: a pass with nothing due leaves it (and so
        // the stored status) unchanged.
        last_due.map_or(cursor, |t| t.max(cursor))
    };
    let next = if more {
        None
    } else {
        schedule.first_due_after(cursor).and_then(|logical| {
            schedule.trigger_at(logical).map(|trigger_at| Due {
                logical,
                trigger_at,
            })
        })
    };
    // With skipped partitions, `trigger` may be shorter than what was due; with a truncated
    // `All` batch the caller runs again immediately.
    NaturalPlan {
        trigger,
        skipped,
        cursor,
        next,
        more,
    }
}

/// What an ad-hoc trigger of a partition does (SPEC §3).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AdhocDecision {
    /// No instance exists: create it.
    Create {
        /// The aligned partition.
        logical: DateTime<Utc>,
        /// Its parameter, re-rendered in the workflow's zone.
        parameter: String,
    },
    /// The instance finished: re-open it as a new run.
    Reopen {
        /// The aligned partition.
        logical: DateTime<Utc>,
        /// Its parameter.
        parameter: String,
    },
}

/// Decides an ad-hoc trigger of `text` at `now`: the parameter is parsed leniently and moved
/// back to its partition; a partition not yet due is refused unless `allow_future`; an active
/// one is refused with how to retry it instead. `existing(parameter)` is the state of the
/// partition's instance, if it has one.
pub fn plan_adhoc(
    schedule: &Schedule,
    text: &str,
    allow_future: bool,
    now: DateTime<Utc>,
    existing: &dyn Fn(&str) -> Option<(String, crate::resources::InstanceState)>,
) -> Result<AdhocDecision, String> {
    let logical = schedule.parse_parameter(text).map_err(|e| e.to_string())?;
    let parameter = schedule.parameter(logical);
    let due = schedule
        .trigger_at(logical)
        .ok_or_else(|| format!("partition {parameter} has no trigger time"))?;
    if due > now && !allow_future {
        return Err(format!(
            "partition {parameter} is not due until {}; pass --allow-future to run it early",
            crate::partition::rfc3339(due)
        ));
    }
    match existing(&parameter) {
        None => Ok(AdhocDecision::Create { logical, parameter }),
        Some((_, state)) if state.is_terminal() => Ok(AdhocDecision::Reopen { logical, parameter }),
        Some((instance, state)) => Err(format!(
            "partition {parameter} is already active (instance {instance} is {}); to skip its retry delay run `charon retry {instance}`",
            state.as_str()
        )),
    }
}

/// A new ad-hoc trigger id: `adhoc-<unix ms>-<5 random digits>`.
pub fn adhoc_id(now: DateTime<Utc>, random_below: &mut dyn FnMut(u32) -> u32) -> String {
    format!(
        "adhoc-{}-{:05}",
        now.timestamp_millis(),
        random_below(100_000)
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn adhoc_triggers() {
        use crate::resources::InstanceState;
        let s = hourly();
        let now = utc("2024-01-03T00:00:00Z");
        let none = |_: &str| None;
        assert_eq!(
            plan_adhoc(&s, "2024-01-02T05:30", false, now, &none),
            Ok(AdhocDecision::Create {
                logical: utc("2024-01-02T05:00:00Z"),
                parameter: "2024-01-02T05".into()
            })
        );
        let future = plan_adhoc(&s, "2024-01-03T00", false, now, &none).unwrap_err();
        assert_eq!(
            future,
            "partition 2024-01-03T00 is not due until 2024-01-03T01:00:00Z; pass --allow-future to run it early"
        );
        assert!(plan_adhoc(&s, "2024-01-03T00", true, now, &none).is_ok());
        let running = |_: &str| Some(("hb-2024-01-02t05".to_string(), InstanceState::Running));
        let active = plan_adhoc(&s, "2024-01-02T05", false, now, &running).unwrap_err();
        assert!(
            active.contains("already active") && active.contains("charon retry hb-2024-01-02t05"),
            "{active}"
        );
        let done = |_: &str| Some(("hb-2024-01-02t05".to_string(), InstanceState::Done));
        assert!(matches!(
            plan_adhoc(&s, "2024-01-02T05", false, now, &done),
            Ok(AdhocDecision::Reopen { .. })
        ));
        assert!(
            plan_adhoc(&s, "tomorrow", false, now, &none)
                .unwrap_err()
                .contains("cannot parse")
        );
        assert_eq!(
            adhoc_id(utc("2024-01-03T00:00:00Z"), &mut |_| 42),
            "adhoc-1704240000000-00042"
        );
    }

    use super::*;

    fn utc(s: &str) -> DateTime<Utc> {
        s.parse().unwrap()
    }

    fn policy(catch_up: CatchUp, suspended: bool) -> TriggerPolicy {
        TriggerPolicy {
            catch_up,
            suspended,
        }
    }

    fn hourly() -> Schedule {
        Schedule::new("@hourly", None, None).unwrap()
    }

    fn params(s: &Schedule, due: &[Due]) -> Vec<String> {
        due.iter().map(|d| s.parameter(d.logical)).collect()
    }

    #[test]
    fn a_new_workflow_starts_with_the_first_partition_due_after_creation() {
        let s = hourly();
        let created = utc("2024-05-01T10:22:00Z");
        let plan = plan_natural(&s, policy(CatchUp::All, false), created, None, created, 100);
        assert!(plan.trigger.is_empty());
        let next = plan.next.unwrap();
        assert_eq!(s.parameter(next.logical), "2024-05-01T10");
        assert_eq!(next.trigger_at, utc("2024-05-01T11:00:00Z"));
        let at_eleven = plan_natural(
            &s,
            policy(CatchUp::All, false),
            plan.cursor,
            None,
            next.trigger_at,
            100,
        );
        assert_eq!(params(&s, &at_eleven.trigger), ["2024-05-01T10"]);
        assert_eq!(at_eleven.cursor, next.trigger_at);
        assert_eq!(
            s.parameter(at_eleven.next.unwrap().logical),
            "2024-05-01T11"
        );
    }

    #[test]
    fn catch_up_policies() {
        let s = hourly();
        let cursor = utc("2024-05-01T11:00:00Z"); // …T10 was triggered at 11:00
        let now = utc("2024-05-01T16:00:30Z"); // down for five hours
        let all = plan_natural(&s, policy(CatchUp::All, false), cursor, None, now, 100);
        assert_eq!(
            params(&s, &all.trigger),
            [
                "2024-05-01T11",
                "2024-05-01T12",
                "2024-05-01T13",
                "2024-05-01T14",
                "2024-05-01T15"
            ]
        );
        let latest = plan_natural(&s, policy(CatchUp::Latest, false), cursor, None, now, 100);
        assert_eq!(params(&s, &latest.trigger), ["2024-05-01T15"]);
        assert_eq!(latest.skipped.len(), 4);
        let none = plan_natural(&s, policy(CatchUp::None, false), cursor, None, now, 100);
        assert_eq!(
            params(&s, &none.trigger),
            ["2024-05-01T15"],
            "30s late is on time"
        );
        let none_late = plan_natural(
            &s,
            policy(CatchUp::None, false),
            cursor,
            None,
            utc("2024-05-01T16:05:00Z"),
            100,
        );
        assert!(none_late.trigger.is_empty());
        assert_eq!(none_late.skipped.len(), 5);
        for plan in [&all, &latest, &none, &none_late] {
            assert_eq!(s.parameter(plan.next.unwrap().logical), "2024-05-01T16");
        }
    }

    #[test]
    fn suspended_periods_are_skipped_not_caught_up() {
        let s = hourly();
        let plan = plan_natural(
            &s,
            policy(CatchUp::All, true),
            utc("2024-05-01T11:00:00Z"),
            None,
            utc("2024-05-01T14:00:00Z"),
            100,
        );
        assert!(plan.trigger.is_empty());
        assert_eq!(plan.skipped.len(), 3);
        let resumed = plan_natural(
            &s,
            policy(CatchUp::All, false),
            plan.cursor,
            None,
            utc("2024-05-01T15:00:00Z"),
            100,
        );
        assert_eq!(params(&s, &resumed.trigger), ["2024-05-01T14"]);
    }

    #[test]
    fn batches_resume_where_they_stopped() {
        let s = hourly();
        let mut cursor = utc("2024-05-01T00:00:00Z");
        let now = utc("2024-05-02T00:00:00Z");
        let mut triggered = Vec::new();
        loop {
            let plan = plan_natural(&s, policy(CatchUp::All, false), cursor, None, now, 5);
            triggered.extend(params(&s, &plan.trigger));
            cursor = plan.cursor;
            if !plan.more {
                break;
            }
        }
        assert_eq!(triggered.len(), 24);
        assert_eq!(triggered.first().unwrap(), "2024-05-01T00");
        assert_eq!(triggered.last().unwrap(), "2024-05-01T23");
    }

    #[test]
    fn schedule_changes_never_skip_what_triggers_after_the_change() {
        // Hourly until 10:30, then daily: partition 2024-05-01 (due 2024-05-02T00:00) still runs.
        let changed_at = utc("2024-05-01T10:30:00Z");
        let daily = Schedule::new("@daily", None, None).unwrap();
        let plan = plan_natural(
            &daily,
            policy(CatchUp::All, false),
            changed_at,
            None,
            utc("2024-05-02T00:00:00Z"),
            100,
        );
        assert_eq!(params(&daily, &plan.trigger), ["2024-05-01"]);
        // Offset shortened from PT3H to PT1H at 12:30 (…T09 ran at 12:00): …T10 and …T11 are now
        // due in the past and are caught up rather than skipped.
        let shorter = Schedule::new("@hourly", None, Some("PT1H")).unwrap();
        let ran_last = utc("2024-05-01T09:00:00Z");
        let policy = TriggerPolicy::default();
        let cursor = utc("2024-05-01T12:00:00Z");
        let now = utc("2024-05-01T12:30:00Z");
        let plan = plan_natural(&shorter, policy, cursor, Some(ran_last), now, 100);
        assert_eq!(
            params(&shorter, &plan.trigger),
            ["2024-05-01T10", "2024-05-01T11"]
        );
        // Without the change marker those two would be lost: that is what the marker is for.
        let unmarked = plan_natural(&shorter, policy, cursor, None, now, 100);
        assert!(unmarked.trigger.is_empty());
        // Offset lengthened from PT1H to PT3H at 11:30 (…T10 ran at 11:00): nothing is due until
        // …T09's new trigger time (already ran: refused by name) and …T11 at 14:00.
        let longer = Schedule::new("@hourly", None, Some("PT3H")).unwrap();
        let plan = plan_natural(
            &longer,
            policy,
            utc("2024-05-01T11:30:00Z"),
            Some(utc("2024-05-01T10:00:00Z")),
            utc("2024-05-01T11:45:00Z"),
            100,
        );
        assert!(plan.trigger.is_empty());
        assert_eq!(
            longer.parameter(plan.next.unwrap().logical),
            "2024-05-01T09"
        );
    }

    #[test]
    fn a_simulated_year_triggers_every_partition_exactly_once() {
        let s = Schedule::new("@hourly", Some("Europe/Stockholm"), None).unwrap();
        let start = utc("2024-01-01T00:00:00Z");
        let mut cursor = start;
        let mut now = start;
        let mut seen = std::collections::BTreeSet::new();
        let end = utc("2025-01-01T00:00:00Z");
        while now < end {
            let plan = plan_natural(&s, policy(CatchUp::All, false), cursor, None, now, 1000);
            for d in &plan.trigger {
                assert!(seen.insert(d.logical), "{} twice", d.logical);
            }
            cursor = plan.cursor;
            // Wake at the next trigger, a little late, as a timer queue would.
            now = plan
                .next
                .map_or(end, |n| n.trigger_at + Duration::milliseconds(7));
        }
        // Every UTC hour of 2024 is one partition (Stockholm's offsets are whole hours), less the
        // last, which is due exactly at the end.
        assert_eq!(seen.len(), 8784 - 1);
    }
}
