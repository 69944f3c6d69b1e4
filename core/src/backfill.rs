//! Backfill planning (SPEC §5) as a pure function: resolve the range, then decide per
//! reconcile which partitions to trigger, skip, re-open or halt, never exceeding the
//! backfill's concurrency.

use chrono::{DateTime, Utc};

use crate::names;
use crate::partition::rfc3339;
use crate::resources::{
    BackfillCounts, BackfillPartition, BackfillSpec, BackfillState, InstanceState, Reprocess,
    TriggerType,
};
use crate::schedule::Schedule;
use crate::validate::FieldError;

/// State names of `status.partitions[].state`.
pub mod partition_state {
    /// Not triggered yet.
    pub const PENDING: &str = "Pending";
    /// Triggered by this backfill; its instance has not finished.
    pub const TRIGGERED: &str = "Triggered";
    /// Its instance ended Done.
    pub const DONE: &str = "Done";
    /// Its instance ended Error or Halted.
    pub const FAILED: &str = "Failed";
    /// Not run by this backfill (already active elsewhere, or excluded by reprocess).
    pub const SKIPPED: &str = "Skipped";
}
use partition_state::*;

fn field(field: &str, reason: impl Into<String>) -> FieldError {
    FieldError {
        field: field.to_string(),
        reason: reason.into(),
    }
}

/// The name of a Backfill created without one (by the CLI or the `charon.dev/backfill`
/// annotation): the workflow and the range, within Kubernetes' name limits.
pub fn default_name(workflow: &str, start: &str, end: &str) -> String {
    names::instance_name(workflow, &format!("backfill-{start}-{end}"))
}

/// The most partitions one backfill may cover: its status lists every partition, and an
/// object must stay well under the API server's size limit (about 1.5 MB in etcd).
pub const MAX_PARTITIONS: usize = 10_000;

/// Resolves `spec.start`/`spec.end` to aligned instants and checks the range (SPEC §5):
/// both must be partitions (parameter strings accepted), start before end, and the range must
/// not reach partitions that are not due yet unless `allowFuture`.
pub fn resolve_range(
    schedule: &Schedule,
    spec: &BackfillSpec,
    now: DateTime<Utc>,
) -> Result<Vec<DateTime<Utc>>, FieldError> {
    let aligned = |name: &str, text: &str| -> Result<DateTime<Utc>, FieldError> {
        let t = schedule
            .parse_instant(text)
            .map_err(|e| field(name, e.to_string()))?;
        if schedule.is_aligned(t) {
            return Ok(t);
        }
        let around: Vec<String> = [schedule.previous_before(t), schedule.next_after(t)]
            .into_iter()
            .flatten()
            .map(|p| schedule.parameter(p))
            .collect();
        Err(field(
            name,
            format!(
                "{text:?} is not a partition of the schedule (nearest: {})",
                around.join(", ")
            ),
        ))
    };
    let start = aligned("spec.start", &spec.start)?;
    let end = aligned("spec.end", &spec.end)?;
    if end <= start {
        return Err(field(
            "spec.end",
            format!("{:?} must be after spec.start {:?}", spec.end, spec.start),
        ));
    }
    let partitions: Vec<DateTime<Utc>> = schedule
        .range(start, end, spec.reverse)
        .take(MAX_PARTITIONS + 1)
        .collect();
    if partitions.len() > MAX_PARTITIONS {
        return Err(field(
            "spec.end",
            format!(
                "the range holds more than {MAX_PARTITIONS} partitions; split it into several backfills"
            ),
        ));
    }
    if !spec.allow_future {
        let not_due = partitions
            .iter()
            .filter(|p| schedule.trigger_at(**p).is_none_or(|at| at > now))
            .min();
        if let Some(p) = not_due {
            let due = schedule.trigger_at(*p).map(rfc3339).unwrap_or_default();
            return Err(field(
                "spec.end",
                format!(
                    "partition {} is not due until {due}; end the range earlier or set spec.allowFuture",
                    schedule.parameter(*p)
                ),
            ));
        }
    }
    Ok(partitions)
}

/// What the controller knows about an existing instance of a partition.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Existing {
    /// Its state.
    pub state: InstanceState,
    /// Its current trigger.
    pub trigger_type: TriggerType,
    /// Its current trigger's id (a backfill's name for backfill triggers).
    pub trigger_id: String,
}

/// Something the adapter must do for the backfill.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BackfillAction {
    /// Create the instance of this partition with trigger `backfill`.
    Create {
        /// The partition's logical instant.
        logical: DateTime<Utc>,
        /// Its parameter.
        parameter: String,
        /// The instance's name.
        instance: String,
    },
    /// Re-open this finished instance as a new run triggered by the backfill.
    Reopen {
        /// The instance's name.
        instance: String,
    },
    /// Halt this active instance (non-graceful halt).
    Halt {
        /// The instance's name.
        instance: String,
    },
}

/// The outcome of one reconcile of a backfill.
#[derive(Clone, Debug, PartialEq)]
pub struct BackfillPlan {
    /// What to do, in order.
    pub actions: Vec<BackfillAction>,
    /// The new per-partition list.
    pub partitions: Vec<BackfillPartition>,
    /// The new counts.
    pub counts: BackfillCounts,
    /// The next partition to trigger.
    pub cursor: Option<String>,
    /// The backfill's state.
    pub state: BackfillState,
}

/// Plans one reconcile. `partitions` is the resolved range in trigger order; `previous` is the
/// stored `status.partitions` (empty on the first reconcile); `existing(instance name)` looks
/// up the instance of a partition.
pub fn plan(
    name: &str,
    workflow: &str,
    spec: &BackfillSpec,
    schedule: &Schedule,
    partitions: &[DateTime<Utc>],
    previous: &[BackfillPartition],
    existing: &dyn Fn(&str) -> Option<Existing>,
) -> BackfillPlan {
    let mut actions = Vec::new();
    let mut rows: Vec<BackfillPartition> = partitions
        .iter()
        .map(|p| {
            let parameter = schedule.parameter(*p);
            previous
                .iter()
                .find(|row| row.parameter == parameter)
                .cloned()
                .unwrap_or_else(|| BackfillPartition {
                    parameter: parameter.clone(),
                    state: PENDING.to_string(),
                    instance: Some(names::instance_name(workflow, &parameter)),
                    reason: None,
                })
        })
        .collect();

    // Follow what this backfill triggered.
    let ours = |e: &Existing| e.trigger_type == TriggerType::Backfill && e.trigger_id == name;
    let mut active = 0u32;
    for row in rows.iter_mut().filter(|r| r.state == TRIGGERED) {
        let instance = row.instance.clone().unwrap_or_default();
        match existing(&instance) {
            Some(e) if ours(&e) && e.state == InstanceState::Done => row.state = DONE.into(),
            Some(e) if ours(&e) && e.state.is_terminal() => {
                row.state = FAILED.into();
                row.reason = Some(format!("instance ended {}", e.state.as_str()));
            }
            Some(e) if ours(&e) => {
                active += 1;
                if spec.halted && !spec.graceful_halt {
                    actions.push(BackfillAction::Halt { instance });
                }
            }
            Some(e) => {
                row.state = SKIPPED.into();
                row.reason = Some(format!(
                    "taken over by a {} trigger",
                    e.trigger_type.as_str()
                ));
            }
            None => {
                row.state = FAILED.into();
                row.reason = Some("instance was deleted".into());
            }
        }
    }

    // Trigger more, in order, while slots are free.
    if !spec.halted {
        for (row, logical) in rows.iter_mut().zip(partitions) {
            if active >= spec.concurrency {
                break;
            }
            if row.state != PENDING {
                continue;
            }
            let instance = row.instance.clone().unwrap_or_default();
            match existing(&instance) {
                // Triggered by this backfill already (its status write was lost, say): follow
                // it rather than report it as someone else's.
                Some(e) if ours(&e) => {
                    if e.state == InstanceState::Done {
                        row.state = DONE.into();
                    } else if e.state.is_terminal() {
                        row.state = FAILED.into();
                        row.reason = Some(format!("instance ended {}", e.state.as_str()));
                    } else {
                        row.state = TRIGGERED.into();
                        active += 1;
                    }
                }
                None => {
                    actions.push(BackfillAction::Create {
                        logical: *logical,
                        parameter: row.parameter.clone(),
                        instance,
                    });
                    row.state = TRIGGERED.into();
                    active += 1;
                }
                Some(e) if !e.state.is_terminal() => {
                    row.state = SKIPPED.into();
                    row.reason = Some(format!(
                        "already active through a {} trigger",
                        e.trigger_type.as_str()
                    ));
                }
                Some(e) => {
                    let rerun = match spec.reprocess {
                        Reprocess::All => true,
                        Reprocess::Failed => e.state != InstanceState::Done,
                        Reprocess::Missing => false,
                    };
                    if rerun {
                        actions.push(BackfillAction::Reopen { instance });
                        row.state = TRIGGERED.into();
                        active += 1;
                    } else {
                        row.state = SKIPPED.into();
                        row.reason = Some(format!(
                            "already {} (reprocess: {:?})",
                            e.state.as_str(),
                            spec.reprocess
                        ));
                    }
                }
            }
        }
    }

    let count = |state: &str| rows.iter().filter(|r| r.state == state).count() as u32;
    let (done, failed, skipped, pending) =
        (count(DONE), count(FAILED), count(SKIPPED), count(PENDING));
    let counts = BackfillCounts {
        total: rows.len() as u32,
        triggered: count(TRIGGERED) + done + failed,
        active,
        done,
        failed,
        skipped,
    };
    let cursor = rows
        .iter()
        .find(|r| r.state == PENDING)
        .map(|r| r.parameter.clone());
    let state = if pending == 0 && active == 0 {
        BackfillState::Completed
    } else if spec.halted {
        BackfillState::Halted
    } else {
        BackfillState::Running
    };
    BackfillPlan {
        actions,
        partitions: rows,
        counts,
        cursor,
        state,
    }
}

/// Parses the `charon.dev/backfill` annotation: `<start>/<end>[/<concurrency>]`.
pub fn parse_annotation(value: &str) -> Result<(String, String, u32), String> {
    let parts: Vec<&str> = value.trim().split('/').map(str::trim).collect();
    let concurrency = match parts.as_slice() {
        [_, _] => 1,
        [_, _, c] => c
            .parse::<u32>()
            .ok()
            .filter(|c| *c >= 1)
            .ok_or_else(|| format!("concurrency {c:?} must be a whole number of at least 1"))?,
        _ => {
            return Err(format!(
                "{value:?} must be <start>/<end> or <start>/<end>/<concurrency>"
            ));
        }
    };
    if parts[0].is_empty() || parts[1].is_empty() {
        return Err(format!("{value:?} must name a start and an end"));
    }
    Ok((parts[0].to_string(), parts[1].to_string(), concurrency))
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;
    use std::collections::BTreeMap;

    use super::*;

    fn utc(s: &str) -> DateTime<Utc> {
        s.parse().unwrap()
    }

    fn spec(start: &str, end: &str, concurrency: u32) -> BackfillSpec {
        serde_json::from_value(serde_json::json!({
            "workflow": "hb", "start": start, "end": end, "concurrency": concurrency,
        }))
        .unwrap()
    }

    fn hourly() -> Schedule {
        Schedule::new("@hourly", None, None).unwrap()
    }

    #[test]
    fn range_resolution() {
        let s = hourly();
        let now = utc("2024-06-01T00:00:00Z");
        let range = resolve_range(&s, &spec("2024-01-01T00", "2024-01-01T12", 3), now).unwrap();
        assert_eq!(range.len(), 12);
        let err =
            resolve_range(&s, &spec("2024-01-01T00:30", "2024-01-01T12", 3), now).unwrap_err();
        assert_eq!(err.field, "spec.start");
        assert!(
            err.reason.contains("nearest: 2024-01-01T00, 2024-01-01T01"),
            "{}",
            err.reason
        );
        let err = resolve_range(&s, &spec("2024-01-01T12", "2024-01-01T00", 3), now).unwrap_err();
        assert_eq!(err.field, "spec.end");
        let err = resolve_range(&s, &spec("2024-05-31T20", "2024-06-01T02", 1), now).unwrap_err();
        assert!(
            err.reason
                .contains("partition 2024-06-01T00 is not due until 2024-06-01T01:00:00Z"),
            "{}",
            err.reason
        );
        let mut future = spec("2024-05-31T20", "2024-06-01T02", 1);
        future.allow_future = true;
        assert_eq!(resolve_range(&s, &future, now).unwrap().len(), 6);
        let mut reverse = spec("2024-01-01T00", "2024-01-01T03", 1);
        reverse.reverse = true;
        let params: Vec<String> = resolve_range(&s, &reverse, now)
            .unwrap()
            .into_iter()
            .map(|p| s.parameter(p))
            .collect();
        assert_eq!(params, ["2024-01-01T02", "2024-01-01T01", "2024-01-01T00"]);
    }

    /// Runs a backfill against a fake world where every created instance finishes on the
    /// reconcile after it was created; returns the maximum active and the order of creation.
    #[test]
    fn a_hundred_partitions_never_exceed_concurrency() {
        let s = hourly();
        let backfill = spec("2024-01-01T00", "2024-01-05T04", 5);
        let partitions = resolve_range(&s, &backfill, utc("2024-06-01T00:00:00Z")).unwrap();
        assert_eq!(partitions.len(), 100);
        let world: RefCell<BTreeMap<String, Existing>> = RefCell::new(BTreeMap::new());
        let mut rows = Vec::new();
        let mut created = Vec::new();
        let mut max_active = 0;
        for _ in 0..200 {
            // Everything active finishes before the next reconcile.
            for e in world.borrow_mut().values_mut() {
                e.state = InstanceState::Done;
            }
            let lookup = |name: &str| world.borrow().get(name).cloned();
            let plan = plan("bf", "hb", &backfill, &s, &partitions, &rows, &lookup);
            for action in &plan.actions {
                if let BackfillAction::Create {
                    instance,
                    parameter,
                    ..
                } = action
                {
                    created.push(parameter.clone());
                    world.borrow_mut().insert(
                        instance.clone(),
                        Existing {
                            state: InstanceState::Running,
                            trigger_type: TriggerType::Backfill,
                            trigger_id: "bf".into(),
                        },
                    );
                }
            }
            let active = world
                .borrow()
                .values()
                .filter(|e| !e.state.is_terminal())
                .count();
            max_active = max_active.max(active);
            rows = plan.partitions;
            if plan.state == BackfillState::Completed {
                assert_eq!(plan.counts.done, 100);
                assert_eq!(plan.counts.triggered, 100);
                break;
            }
        }
        assert_eq!(max_active, 5);
        assert_eq!(created.len(), 100);
        let mut sorted = created.clone();
        sorted.sort();
        assert_eq!(created, sorted, "oldest first");
    }

    #[test]
    fn reprocess_modes_and_conflicts() {
        let s = hourly();
        let partitions: Vec<_> = s
            .range(
                utc("2024-01-01T00:00:00Z"),
                utc("2024-01-01T04:00:00Z"),
                false,
            )
            .collect();
        let existing = |name: &str| -> Option<Existing> {
            let (state, trigger_type) = match name {
                "hb-2024-01-01t00" => (InstanceState::Done, TriggerType::Natural),
                "hb-2024-01-01t01" => (InstanceState::Error, TriggerType::Natural),
                "hb-2024-01-01t02" => (InstanceState::Running, TriggerType::Adhoc),
                _ => return None,
            };
            Some(Existing {
                state,
                trigger_type,
                trigger_id: "x".into(),
            })
        };
        let run = |reprocess: Reprocess| {
            let mut b = spec("2024-01-01T00", "2024-01-01T04", 10);
            b.reprocess = reprocess;
            plan("bf", "hb", &b, &s, &partitions, &[], &existing)
        };
        let all = run(Reprocess::All);
        assert_eq!(
            all.actions,
            [
                BackfillAction::Reopen {
                    instance: "hb-2024-01-01t00".into()
                },
                BackfillAction::Reopen {
                    instance: "hb-2024-01-01t01".into()
                },
                BackfillAction::Create {
                    logical: utc("2024-01-01T03:00:00Z"),
                    parameter: "2024-01-01T03".into(),
                    instance: "hb-2024-01-01t03".into()
                },
            ]
        );
        assert_eq!(all.partitions[2].state, SKIPPED);
        assert_eq!(
            all.partitions[2].reason.as_deref(),
            Some("already active through a adhoc trigger")
        );
        assert_eq!(all.counts.skipped, 1);
        let failed = run(Reprocess::Failed);
        assert_eq!(failed.actions.len(), 2);
        assert!(failed.actions.contains(&BackfillAction::Reopen {
            instance: "hb-2024-01-01t01".into()
        }));
        let missing = run(Reprocess::Missing);
        assert_eq!(missing.actions.len(), 1);
        assert_eq!(missing.counts.skipped, 3);
    }

    #[test]
    fn halting_gracefully_or_not() {
        let s = hourly();
        let partitions: Vec<_> = s
            .range(
                utc("2024-01-01T00:00:00Z"),
                utc("2024-01-01T04:00:00Z"),
                false,
            )
            .collect();
        let running = |_: &str| {
            Some(Existing {
                state: InstanceState::Running,
                trigger_type: TriggerType::Backfill,
                trigger_id: "bf".into(),
            })
        };
        let first = plan(
            "bf",
            "hb",
            &spec("2024-01-01T00", "2024-01-01T04", 2),
            &s,
            &partitions,
            &[],
            &|_| None,
        );
        let mut halted = spec("2024-01-01T00", "2024-01-01T04", 2);
        halted.halted = true;
        let hard = plan(
            "bf",
            "hb",
            &halted,
            &s,
            &partitions,
            &first.partitions,
            &running,
        );
        assert_eq!(
            hard.actions,
            [
                BackfillAction::Halt {
                    instance: "hb-2024-01-01t00".into()
                },
                BackfillAction::Halt {
                    instance: "hb-2024-01-01t01".into()
                },
            ]
        );
        assert_eq!(hard.state, BackfillState::Halted);
        halted.graceful_halt = true;
        let soft = plan(
            "bf",
            "hb",
            &halted,
            &s,
            &partitions,
            &first.partitions,
            &running,
        );
        assert!(soft.actions.is_empty());
        assert_eq!(soft.cursor.as_deref(), Some("2024-01-01T02"));
    }

    #[test]
    fn annotation_shorthand() {
        assert_eq!(
            parse_annotation("2024-01-01T00/2024-01-01T12/3"),
            Ok(("2024-01-01T00".into(), "2024-01-01T12".into(), 3))
        );
        assert_eq!(
            parse_annotation(" 2024-01-01 / 2024-01-08 "),
            Ok(("2024-01-01".into(), "2024-01-08".into(), 1))
        );
        assert!(
            parse_annotation("2024-01-01T00")
                .unwrap_err()
                .contains("<start>/<end>")
        );
        assert!(
            parse_annotation("a/b/0")
                .unwrap_err()
                .contains("at least 1")
        );
        assert!(parse_annotation("/b").is_err());
    }
}
