//! What the HTTP API answers and the pages show, computed from cached objects and the time:
//! pure functions, so the JSON and the HTML agree and both are tested without a server.

use std::collections::BTreeMap;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use k8s_openapi::api::core::v1::Event;
use kube::ResourceExt;
use serde::Serialize;

use charon_core::partition::Partition;
use charon_core::resources::{
    AttemptRecord, Backfill, BackfillPartition, ConditionStatus, HistoryEntry, InstanceState, Pool,
    RunRecord, StepStatus, TriggeredPartition, Workflow, WorkflowInstance, condition_type,
    find_condition,
};
use charon_core::validate::{self, Policy};

/// How many partitions a workflow's summary shows as its recent health.
pub const RECENT: usize = 10;
/// How many upcoming triggers a workflow's detail lists.
pub const UPCOMING: usize = 10;
/// Partitions per page unless `limit` says otherwise.
pub const DEFAULT_LIMIT: usize = 100;
/// The most partitions one page may ask for.
pub const MAX_LIMIT: usize = 1000;

/// One partition's state, for the recent-health strip.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Recent {
    /// The partition's parameter.
    pub parameter: String,
    /// Its instance's state.
    pub state: InstanceState,
    /// The instance.
    pub instance: String,
}

/// A workflow in the list (`GET …/workflows`).
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct WorkflowItem {
    /// Its namespace.
    pub namespace: String,
    /// Its name.
    pub name: String,
    /// `spec.schedule`.
    pub schedule: String,
    /// `spec.timeZone`.
    pub time_zone: String,
    /// `spec.suspend`.
    pub suspended: bool,
    /// Whether the spec is valid (the operator's `Valid` condition, else the pure check).
    pub valid: bool,
    /// Why not, or the Valid condition's message.
    pub message: String,
    /// When the next natural trigger fires.
    pub next_trigger: Option<DateTime<Utc>>,
    /// The last partition triggered.
    pub last_triggered: Option<TriggeredPartition>,
    /// Active instances.
    pub active: u32,
    /// The newest partitions first.
    pub recent: Vec<Recent>,
}

/// A workflow with its spec and next triggers (`GET …/workflows/{wf}`).
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct WorkflowDetail {
    /// The summary.
    #[serde(flatten)]
    pub item: WorkflowItem,
    /// The spec as stored.
    pub spec: serde_json::Value,
    /// The next triggers, as `charon preview` lists them.
    pub upcoming: Vec<Partition>,
    /// Counts of its instances by state.
    pub states: BTreeMap<String, usize>,
    /// Its backfills, newest first.
    pub backfills: Vec<BackfillItem>,
    /// Its `spec.priority`.
    pub priority: u32,
    /// The pools it names (SPEC §13), with their use.
    pub pools: Vec<PoolView>,
    /// Its instances waiting for a slot (of a pool, a Quota or its own concurrency), oldest
    /// partition first, with why.
    pub waiting: Vec<WaitingItem>,
}

/// A pool as the UI shows it (SPEC §13).
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PoolView {
    /// The Pool's name.
    pub name: String,
    /// Whether it exists (a workflow may name a pool before it is created).
    pub exists: bool,
    /// `spec.slots`.
    pub slots: u32,
    /// Slots held now.
    pub used: u32,
    /// Instances waiting for it.
    pub queued: u32,
    /// Slots each attempt of the workflow holds (0 where no workflow is in view).
    pub claim: u32,
    /// Per namespace: slots held, waiting instances and decayed usage.
    pub namespaces: Vec<charon_core::resources::PoolNamespaceStatus>,
}

/// An instance waiting for a slot.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct WaitingItem {
    /// The instance.
    pub instance: String,
    /// Its parameter.
    pub parameter: String,
    /// What it waits for and its place in line.
    pub message: String,
}

/// How many waiting instances a workflow's page lists.
pub const WAITING_SHOWN: usize = 20;

/// The view of pool `name` (`pool` if it exists) for a workflow claiming `claim` slots of it.
pub fn pool_view(name: &str, pool: Option<&Pool>, claim: u32) -> PoolView {
    let status = pool.and_then(|p| p.status.clone()).unwrap_or_default();
    PoolView {
        name: name.to_string(),
        exists: pool.is_some(),
        slots: pool.map_or(0, |p| p.spec.slots),
        used: status.used,
        queued: status.queued,
        claim,
        namespaces: status.namespaces,
    }
}

/// One partition in the paged list (`GET …/partitions`).
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PartitionItem {
    /// The parameter.
    pub parameter: String,
    /// Its logical instant.
    pub logical_time: DateTime<Utc>,
    /// Its instance.
    pub instance: String,
    /// The instance's state.
    pub state: InstanceState,
    /// Attempts of the current run.
    pub tries: u32,
    /// What triggered the current run.
    pub trigger_type: charon_core::resources::TriggerType,
    /// The current run's attempts: their outcomes, oldest first.
    pub attempts: Vec<AttemptCell>,
}

/// One attempt in the partition grid.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AttemptCell {
    /// The execution number.
    pub execution: u32,
    /// `Succeeded`, `Failed`, `TimedOut`, `Halted`, or `Running` while it has none.
    pub outcome: String,
    /// The exit code, when known.
    pub exit_code: Option<i32>,
}

/// A page of partitions.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct PartitionPage {
    /// This page, newest first.
    pub items: Vec<PartitionItem>,
    /// The token of the next page, if there is one.
    #[serde(rename = "continue", skip_serializing_if = "Option::is_none")]
    pub next: Option<String>,
    /// Partitions matching the filter in all pages.
    pub total: usize,
}

/// A request field at fault and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BadParameter {
    /// The query parameter.
    pub field: &'static str,
    /// Why it was refused.
    pub reason: String,
}

/// The query of a partitions page, parsed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PageQuery {
    /// Most items.
    pub limit: usize,
    /// Items strictly older than this (logical instant, milliseconds), from `continue`.
    pub before: Option<i64>,
    /// Only this state.
    pub state: Option<InstanceState>,
}

impl PageQuery {
    /// Parses `limit`, `continue` and `state` as the API takes them.
    pub fn parse(
        limit: Option<&str>,
        token: Option<&str>,
        state: Option<&str>,
    ) -> Result<Self, BadParameter> {
        let limit = match limit.filter(|l| !l.is_empty()) {
            None => DEFAULT_LIMIT,
            Some(text) => match text.parse::<usize>() {
                Ok(n) if (1..=MAX_LIMIT).contains(&n) => n,
                _ => {
                    return Err(BadParameter {
                        field: "limit",
                        reason: format!(
                            "must be a whole number from 1 to {MAX_LIMIT}, got {text:?}"
                        ),
                    });
                }
            },
        };
        let before = match token.filter(|t| !t.is_empty()) {
            None => None,
            Some(text) => Some(decode_token(text).ok_or_else(|| BadParameter {
                field: "continue",
                reason: "not a token this API returned".into(),
            })?),
        };
        let state = match state.filter(|s| !s.is_empty()) {
            None => None,
            Some(text) => Some(parse_state(text).ok_or_else(|| BadParameter {
                field: "state",
                reason: format!(
                    "unknown state {text:?}; one of {}",
                    InstanceState::ALL.map(InstanceState::as_str).join(", ")
                ),
            })?),
        };
        Ok(PageQuery {
            limit,
            before,
            state,
        })
    }
}

/// An instance state by its name (`Done`, case-insensitive).
pub fn parse_state(text: &str) -> Option<InstanceState> {
    InstanceState::ALL
        .into_iter()
        .find(|s| s.as_str().eq_ignore_ascii_case(text))
}

fn encode_token(millis: i64) -> String {
    format!("t{millis}")
}

fn decode_token(text: &str) -> Option<i64> {
    text.strip_prefix('t')?.parse().ok()
}

use crate::controller::clock::chrono_of;

fn state_of(instance: &WorkflowInstance) -> InstanceState {
    instance
        .status
        .as_ref()
        .map(|s| s.state)
        .unwrap_or_default()
}

/// Whether `workflow` is valid, and the message to show: the operator's `Valid` condition
/// when it has judged this generation, else the pure check (the same one it runs).
fn validity(workflow: &Workflow) -> (bool, String) {
    let status = workflow.status.as_ref();
    let current = status.and_then(|s| s.observed_generation) == workflow.metadata.generation;
    if current
        && let Some(valid) =
            status.and_then(|s| find_condition(&s.conditions, condition_type::VALID))
    {
        return (valid.status == ConditionStatus::True, valid.message.clone());
    }
    match validate::workflow(&workflow.spec, Policy::PERMISSIVE) {
        Ok(_) => (true, String::new()),
        Err(errors) => (false, validate::message(&errors)),
    }
}

/// The summary of `workflow` given its cached instances.
pub fn workflow_item(workflow: &Workflow, instances: &[Arc<WorkflowInstance>]) -> WorkflowItem {
    let (valid, message) = validity(workflow);
    let status = workflow.status.clone().unwrap_or_default();
    let mut newest: Vec<&Arc<WorkflowInstance>> = instances.iter().collect();
    let take = RECENT.min(newest.len());
    if take > 0 {
        // Only the newest few are needed: partial selection, then sort those.
        newest.select_nth_unstable_by(take - 1, |a, b| {
            b.spec.logical_time.cmp(&a.spec.logical_time)
        });
        newest.truncate(take);
        newest.sort_by_key(|i| std::cmp::Reverse(i.spec.logical_time));
    }
    let active = instances
        .iter()
        .filter(|i| !state_of(i).is_terminal())
        .count() as u32;
    WorkflowItem {
        namespace: workflow.namespace().unwrap_or_default(),
        name: workflow.name_any(),
        schedule: workflow.spec.schedule.clone(),
        time_zone: workflow.spec.time_zone.clone(),
        suspended: workflow.spec.suspend,
        valid,
        message,
        next_trigger: status
            .next_trigger
            .as_ref()
            .map(|n| n.trigger_at)
            .filter(|_| !workflow.spec.suspend && valid),
        last_triggered: status.last_triggered,
        active: status.active.max(active),
        recent: newest
            .into_iter()
            .map(|i| Recent {
                parameter: i.spec.parameter.clone(),
                state: state_of(i),
                instance: i.name_any(),
            })
            .collect(),
    }
}

/// The detail of `workflow`: its summary, spec, next triggers after `now`, counts by state and
/// backfills.
pub fn workflow_detail(
    workflow: &Workflow,
    instances: &[Arc<WorkflowInstance>],
    backfills: &[Arc<Backfill>],
    pools: &[Arc<Pool>],
    now: DateTime<Utc>,
) -> WorkflowDetail {
    let item = workflow_item(workflow, instances);
    let upcoming = match validate::workflow(&workflow.spec, Policy::PERMISSIVE) {
        Ok(valid) => {
            let schedule = valid.schedule;
            let first = schedule.first_due_after(now);
            std::iter::successors(first, |p| schedule.next_after(*p))
                .filter_map(|p| schedule.partition(p))
                .take(UPCOMING)
                .collect()
        }
        Err(_) => Vec::new(),
    };
    let mut states = BTreeMap::new();
    for i in instances {
        *states.entry(state_of(i).as_str().to_string()).or_insert(0) += 1;
    }
    let mut backfills: Vec<BackfillItem> = backfills
        .iter()
        .filter(|b| b.spec.workflow == item.name)
        .map(|b| backfill_item(b, now))
        .collect();
    backfills.sort_by(|a, b| b.created.cmp(&a.created).then(a.name.cmp(&b.name)));
    let pools = workflow
        .spec
        .pools
        .iter()
        .map(|claim| {
            let pool = pools
                .iter()
                .find(|p| p.metadata.name.as_deref() == Some(claim.name.as_str()));
            pool_view(&claim.name, pool.map(|p| &**p), claim.slots)
        })
        .collect();
    let mut waiting: Vec<&Arc<WorkflowInstance>> = instances
        .iter()
        .filter(|i| {
            i.status.as_ref().is_some_and(|s| {
                s.state == InstanceState::Queued
                    && s.reason.as_deref() == Some(charon_core::instance::waiting::SLOT)
            })
        })
        .collect();
    waiting.sort_by_key(|i| i.spec.logical_time);
    let waiting = waiting
        .into_iter()
        .take(WAITING_SHOWN)
        .map(|i| WaitingItem {
            instance: i.metadata.name.clone().unwrap_or_default(),
            parameter: i.spec.parameter.clone(),
            message: i
                .status
                .as_ref()
                .map(|s| s.message.clone())
                .unwrap_or_default(),
        })
        .collect();
    WorkflowDetail {
        item,
        spec: serde_json::to_value(&workflow.spec).unwrap_or_default(),
        upcoming,
        states,
        backfills,
        priority: workflow.spec.priority,
        pools,
        waiting,
    }
}

/// The attempts of `instance`'s current run, with the one under way (recorded in
/// `status.attempts` only when it ends) last.
pub fn attempts(instance: &WorkflowInstance) -> Vec<AttemptRecord> {
    let Some(status) = instance.status.as_ref() else {
        return Vec::new();
    };
    let mut attempts = status.attempts.clone();
    let running = matches!(
        status.state,
        InstanceState::Submitting | InstanceState::Submitted | InstanceState::Running
    );
    if running
        && let Some(job) = status.job.clone()
        && !attempts.iter().any(|a| a.execution == status.execution)
    {
        attempts.push(AttemptRecord {
            execution: status.execution,
            job,
            started_at: status.running_since.or(status.started_at),
            finished_at: None,
            exit_code: None,
            outcome: None,
            reason: String::new(),
            archived: false,
        });
    }
    attempts
}

fn attempt_cells(instance: &WorkflowInstance) -> Vec<AttemptCell> {
    attempts(instance)
        .iter()
        .map(|a| AttemptCell {
            execution: a.execution,
            outcome: match a.outcome {
                Some(o) => format!("{o:?}"),
                None => "Running".into(),
            },
            exit_code: a.exit_code,
        })
        .collect()
}

/// One page of `instances` (one workflow's), newest partition first, filtered by the query's
/// state and starting after its `continue` token.
pub fn partitions(instances: &[Arc<WorkflowInstance>], query: &PageQuery) -> PartitionPage {
    let mut matching: Vec<&Arc<WorkflowInstance>> = instances
        .iter()
        .filter(|i| query.state.is_none_or(|s| state_of(i) == s))
        .collect();
    let total = matching.len();
    matching.retain(|i| {
        query
            .before
            .is_none_or(|t| i.spec.logical_time.timestamp_millis() < t)
    });
    let more = matching.len() > query.limit;
    if more {
        // The page is the `limit` newest: select them without sorting the rest.
        matching.select_nth_unstable_by(query.limit - 1, |a, b| {
            b.spec.logical_time.cmp(&a.spec.logical_time)
        });
        matching.truncate(query.limit);
    }
    matching.sort_by_key(|i| std::cmp::Reverse(i.spec.logical_time));
    let next = more
        .then(|| {
            matching
                .last()
                .map(|i| encode_token(i.spec.logical_time.timestamp_millis()))
        })
        .flatten();
    PartitionPage {
        items: matching
            .into_iter()
            .map(|i| {
                let status = i.status.clone().unwrap_or_default();
                PartitionItem {
                    parameter: i.spec.parameter.clone(),
                    logical_time: i.spec.logical_time,
                    instance: i.name_any(),
                    state: status.state,
                    tries: status.tries,
                    trigger_type: i.spec.trigger.trigger_type,
                    attempts: attempt_cells(i),
                }
            })
            .collect(),
        next,
        total,
    }
}

/// One Kubernetes Event about an instance.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct EventItem {
    /// `Normal` or `Warning`.
    #[serde(rename = "type")]
    pub kind: String,
    /// The reason.
    pub reason: String,
    /// The message.
    pub message: String,
    /// How many times it happened.
    pub count: i32,
    /// When it last happened.
    pub last: Option<DateTime<Utc>>,
}

/// The events of `events` about the object with `uid`, oldest first.
pub fn events_of(events: &[Arc<Event>], uid: &str) -> Vec<EventItem> {
    let mut items: Vec<EventItem> = events
        .iter()
        .filter(|e| e.involved_object.uid.as_deref() == Some(uid))
        .map(|e| EventItem {
            kind: e.type_.clone().unwrap_or_default(),
            reason: e.reason.clone().unwrap_or_default(),
            message: e.message.clone().unwrap_or_default(),
            count: e.count.unwrap_or(1),
            last: e
                .last_timestamp
                .as_ref()
                .map(|t| t.0)
                .or_else(|| e.event_time.as_ref().map(|t| t.0))
                .or_else(|| e.metadata.creation_timestamp.as_ref().map(|t| t.0))
                .and_then(chrono_of),
        })
        .collect();
    items.sort_by_key(|e| e.last);
    items
}

/// An instance (`GET …/instances/{name}`).
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct InstanceView {
    /// Its namespace.
    pub namespace: String,
    /// Its name.
    pub name: String,
    /// Its workflow.
    pub workflow: String,
    /// Its partition.
    pub parameter: String,
    /// The partition's logical instant.
    pub logical_time: DateTime<Utc>,
    /// Its state.
    pub state: InstanceState,
    /// Attempts of the current run.
    pub tries: u32,
    /// Cost spent.
    pub cost: f64,
    /// What it is doing or waiting for.
    pub message: String,
    /// `spec.halted`.
    pub halted: bool,
    /// `spec.suspended`.
    pub suspended: bool,
    /// What triggered the current run.
    pub trigger_type: charon_core::resources::TriggerType,
    /// Its state transitions, oldest first.
    pub history: Vec<HistoryEntry>,
    /// Its attempts, oldest first.
    pub attempts: Vec<AttemptRecord>,
    /// Earlier runs.
    pub runs: Vec<RunRecord>,
    /// A pipeline's steps.
    pub steps: Vec<StepStatus>,
    /// Its Events, oldest first.
    pub events: Vec<EventItem>,
}

/// The view of `instance` with its `events`, at `now`.
pub fn instance_view(
    instance: &WorkflowInstance,
    events: &[Arc<Event>],
    now: DateTime<Utc>,
) -> InstanceView {
    let status = instance.status.clone().unwrap_or_default();
    InstanceView {
        namespace: instance.namespace().unwrap_or_default(),
        name: instance.name_any(),
        workflow: instance.spec.workflow.clone(),
        parameter: instance.spec.parameter.clone(),
        logical_time: instance.spec.logical_time,
        state: status.state,
        tries: status.tries,
        cost: status.cost,
        message: crate::user::current_message(&status, now),
        halted: instance.spec.halted,
        suspended: instance.spec.suspended,
        trigger_type: instance.spec.trigger.trigger_type,
        events: events_of(events, instance.metadata.uid.as_deref().unwrap_or_default()),
        attempts: attempts(instance),
        history: status.history,
        runs: status.runs,
        steps: status.steps,
    }
}

/// A backfill in a list.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct BackfillItem {
    /// Its name.
    pub name: String,
    /// Its workflow.
    pub workflow: String,
    /// `spec.start`.
    pub start: String,
    /// `spec.end`.
    pub end: String,
    /// `spec.concurrency`.
    pub concurrency: u32,
    /// `spec.halted`.
    pub halted: bool,
    /// `status.state`.
    pub state: String,
    /// Partitions in all.
    pub total: u32,
    /// Partitions finished (done, failed or skipped).
    pub finished: u32,
    /// Partitions done.
    pub done: u32,
    /// Partitions failed.
    pub failed: u32,
    /// Partitions active.
    pub active: u32,
    /// Percent finished.
    pub percent: u32,
    /// When it should finish, at the pace so far (running backfills only).
    pub eta: Option<DateTime<Utc>>,
    /// When it was created.
    pub created: Option<DateTime<Utc>>,
    /// Why it is not valid, if it is not.
    pub message: String,
}

/// A backfill with its partitions (`GET …/backfills/{name}`).
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct BackfillView {
    /// The summary.
    #[serde(flatten)]
    pub item: BackfillItem,
    /// Every partition with its state.
    pub partitions: Vec<BackfillPartition>,
}

/// The summary of `backfill` at `now`.
pub fn backfill_item(backfill: &Backfill, now: DateTime<Utc>) -> BackfillItem {
    let status = backfill.status.clone().unwrap_or_default();
    let c = &status.counts;
    let finished = c.done + c.failed + c.skipped;
    let running = status.state == charon_core::resources::BackfillState::Running;
    let eta = match status.started_at {
        Some(start) if running && finished > 0 && finished < c.total => {
            let elapsed = (now - start).num_milliseconds().max(1) as f64;
            let remaining = (c.total - finished) as f64 * elapsed / finished as f64;
            Some(now + chrono::Duration::milliseconds(remaining as i64))
        }
        _ => None,
    };
    let message = find_condition(&status.conditions, condition_type::VALID)
        .filter(|v| v.status == ConditionStatus::False)
        .map(|v| v.message.clone())
        .unwrap_or_default();
    BackfillItem {
        name: backfill.name_any(),
        workflow: backfill.spec.workflow.clone(),
        start: backfill.spec.start.clone(),
        end: backfill.spec.end.clone(),
        concurrency: backfill.spec.concurrency,
        halted: backfill.spec.halted,
        state: format!("{:?}", status.state),
        total: c.total,
        finished,
        done: c.done,
        failed: c.failed,
        active: c.active,
        percent: (finished * 100).checked_div(c.total).unwrap_or(0),
        eta,
        created: backfill
            .metadata
            .creation_timestamp
            .as_ref()
            .and_then(|t| chrono_of(t.0)),
        message,
    }
}

/// The view of `backfill` at `now`.
pub fn backfill_view(backfill: &Backfill, now: DateTime<Utc>) -> BackfillView {
    BackfillView {
        item: backfill_item(backfill, now),
        partitions: backfill
            .status
            .as_ref()
            .map(|s| s.partitions.clone())
            .unwrap_or_default(),
    }
}

/// `in 12m`, `3h ago`: how far `at` is from `now`, in the largest unit that fits.
pub fn relative(at: DateTime<Utc>, now: DateTime<Utc>) -> String {
    let delta = at - now;
    let seconds = delta.num_seconds();
    let magnitude = seconds.unsigned_abs();
    let text = match magnitude {
        0..=59 => format!("{magnitude}s"),
        60..=3599 => format!("{}m", magnitude / 60),
        3600..=86_399 => format!("{}h{}", magnitude / 3600, minutes_part(magnitude)),
        _ => format!("{}d", magnitude / 86_400),
    };
    if seconds >= 0 {
        format!("in {text}")
    } else {
        format!("{text} ago")
    }
}

fn minutes_part(seconds: u64) -> String {
    match (seconds % 3600) / 60 {
        0 => String::new(),
        m => format!("{m}m"),
    }
}

#[cfg(test)]
mod tests;
