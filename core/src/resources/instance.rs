//! `WorkflowInstance`: one partition of one workflow; its status is the state machine of
//! SPEC §4 and the record of what already ran.

use chrono::{DateTime, Utc};
use k8s_openapi::api::core::v1::EnvVar;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::Condition;
use super::pipeline::{ArraySpec, ArrayStatus, Step, StepStatus};

/// Which partition of which workflow this instance runs, and what asked for it. Created by the
/// controller (natural triggers), a person (ad-hoc) or a Backfill; the name is derived from the
/// workflow and the parameter, so a partition is never triggered twice at once.
#[derive(CustomResource, Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "charon.dev",
    version = "v1alpha1",
    kind = "WorkflowInstance",
    namespaced,
    derive = "PartialEq",
    doc = "One partition of one workflow: the unit that must eventually succeed. Its status is the instance state machine and the record of every attempt.",
    status = "WorkflowInstanceStatus",
    shortname = "cwfi",
    category = "charon",
    printcolumn = r#"{"name":"Workflow","type":"string","jsonPath":".spec.workflow"}"#,
    printcolumn = r#"{"name":"Parameter","type":"string","jsonPath":".spec.parameter"}"#,
    printcolumn = r#"{"name":"Trigger","type":"string","jsonPath":".spec.trigger.type"}"#,
    printcolumn = r#"{"name":"State","type":"string","jsonPath":".status.state"}"#,
    printcolumn = r#"{"name":"Tries","type":"integer","jsonPath":".status.tries"}"#,
    printcolumn = r#"{"name":"Cost","type":"number","jsonPath":".status.cost","priority":1}"#,
    printcolumn = r#"{"name":"Job","type":"string","jsonPath":".status.job","priority":1}"#,
    printcolumn = r#"{"name":"Message","type":"string","jsonPath":".status.message","priority":1}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct WorkflowInstanceSpec {
    /// Name of the Workflow in the same namespace.
    #[schemars(length(min = 1))]
    pub workflow: String,
    /// The partition as text, exactly as the container sees it in CHARON_PARAMETER.
    #[schemars(length(min = 1))]
    pub parameter: String,
    /// The partition's logical instant (RFC 3339, UTC).
    pub logical_time: DateTime<Utc>,
    /// What asked for this run.
    pub trigger: Trigger,
    /// Set to true to stop retrying, delete the running Job and end in Halted. Default false.
    #[serde(default)]
    pub halted: bool,
    /// Set to true to suspend the running execution (its Job is suspended and its pods
    /// stopped; state Suspended) or keep a queued instance from starting; set back to false
    /// to resume the same execution at no cost. Default false.
    #[serde(default)]
    pub suspended: bool,
    /// Environment variables of the trigger, overlaying the workflow's env for this instance
    /// only (the reserved CHARON_* variables still win). Default none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub env: Vec<EnvVar>,
}

/// `spec.trigger`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Trigger {
    /// natural (the schedule), adhoc (a person asked) or backfill (a Backfill asked).
    #[serde(rename = "type")]
    pub trigger_type: TriggerType,
    /// natural, adhoc-<unix ms>-<5 random digits>, or the Backfill's name.
    #[schemars(length(min = 1))]
    pub id: String,
}

/// `spec.trigger.type`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum TriggerType {
    /// The schedule.
    Natural,
    /// A person asked.
    Adhoc,
    /// A Backfill asked.
    Backfill,
}

impl TriggerType {
    /// The value used in labels and CHARON_TRIGGER_TYPE.
    pub fn as_str(self) -> &'static str {
        match self {
            TriggerType::Natural => "natural",
            TriggerType::Adhoc => "adhoc",
            TriggerType::Backfill => "backfill",
        }
    }
}

/// `status.state`, the states of SPEC §4.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
pub enum InstanceState {
    /// Waiting for its retry delay or a concurrency slot.
    #[default]
    Queued,
    /// Snapshotting what the execution will run.
    Prepare,
    /// Creating the execution's Job.
    Submitting,
    /// The Job exists; the container has not started.
    Submitted,
    /// The container runs.
    Running,
    /// The execution is suspended (spec.suspended): its Job is suspended and its pods are
    /// stopped until it is resumed.
    Suspended,
    /// The container exited; deciding whether to retry.
    Terminated,
    /// The attempt broke without an exit code; deciding whether to retry.
    Failed,
    /// Terminal: exit code 0.
    Done,
    /// Terminal: gave up.
    Error,
    /// Terminal: a person stopped it.
    Halted,
}

impl InstanceState {
    /// Every state, in lifecycle order.
    pub const ALL: [InstanceState; 11] = [
        InstanceState::Queued,
        InstanceState::Prepare,
        InstanceState::Submitting,
        InstanceState::Submitted,
        InstanceState::Running,
        InstanceState::Suspended,
        InstanceState::Terminated,
        InstanceState::Failed,
        InstanceState::Done,
        InstanceState::Error,
        InstanceState::Halted,
    ];

    /// Whether the instance is finished.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            InstanceState::Done | InstanceState::Error | InstanceState::Halted
        )
    }

    /// Whether the instance holds a concurrency slot (it has or is about to have a Job; a
    /// suspended execution keeps its slot, so resuming it never waits).
    pub fn is_active(self) -> bool {
        matches!(
            self,
            InstanceState::Prepare
                | InstanceState::Submitting
                | InstanceState::Submitted
                | InstanceState::Running
                | InstanceState::Suspended
        )
    }

    /// The name used in `status.state`.
    pub fn as_str(self) -> &'static str {
        match self {
            InstanceState::Queued => "Queued",
            InstanceState::Prepare => "Prepare",
            InstanceState::Submitting => "Submitting",
            InstanceState::Submitted => "Submitted",
            InstanceState::Running => "Running",
            InstanceState::Suspended => "Suspended",
            InstanceState::Terminated => "Terminated",
            InstanceState::Failed => "Failed",
            InstanceState::Done => "Done",
            InstanceState::Error => "Error",
            InstanceState::Halted => "Halted",
        }
    }
}

/// Observed state of an instance, written by the controller: where it is in the lifecycle and
/// the record of what ran. Queued until the controller records otherwise.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(transform = default_status)]
pub struct WorkflowInstanceStatus {
    /// The metadata.generation this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Typed conditions (for example Valid=False when the workflow cannot be run).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
    /// Where the instance is in its lifecycle.
    #[serde(default)]
    pub state: InstanceState,
    /// Executions started in the current run.
    #[serde(default)]
    pub tries: u32,
    /// Accumulated retry cost of the current run.
    #[serde(default)]
    pub cost: f64,
    /// Failures in a row in the current run.
    #[serde(default)]
    pub consecutive_failures: u32,
    /// Infrastructure failures (retried without cost) in the current run.
    #[serde(default)]
    pub infrastructure_failures: u32,
    /// Exit code of the last attempt that had one; null before any exit.
    #[serde(default)]
    pub last_exit_code: Option<i32>,
    /// Earliest time of the next attempt while Queued after a failure; null when no retry
    /// delay applies.
    #[serde(default)]
    pub next_attempt_at: Option<DateTime<Utc>>,
    /// The current or last Job (kept so `kubectl logs job/<name>` works).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job: Option<String>,
    /// Number of the latest execution, counted across runs so Job names never repeat.
    #[serde(default)]
    pub execution: u32,
    /// What a person reads about the current state.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
    /// Why a Queued instance waits, when it does (CamelCase): WaitingForDependencies,
    /// WaitingForSlot or Suspended. Null when it does not wait.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// When the current execution was suspended, while it is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub suspended_at: Option<DateTime<Utc>>,
    /// When the current attempt's container started running (moved forward by the time it
    /// spent suspended, so runningTimeout counts running time only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub running_since: Option<DateTime<Utc>>,
    /// When the current run started (first attempt prepared).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<DateTime<Utc>>,
    /// When the current run finished.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<DateTime<Utc>>,
    /// What the current execution runs, snapshotted from the workflow in Prepare.
    // Boxed: set only for pipelines and arrays, it would otherwise be a third of every
    // cached instance's inline size.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot: Option<Box<ExecutionSnapshot>>,
    /// State transitions, oldest first, bounded by the workflow's spec.history.limit.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub history: Vec<HistoryEntry>,
    /// Earlier runs of this partition, kept when an ad-hoc or backfill trigger re-opens it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub runs: Vec<RunRecord>,
    /// Every attempt of the current and earlier runs, oldest first (SPEC §11), bounded by
    /// the workflow's spec.history.limit: the run history that outlives the Jobs.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub attempts: Vec<AttemptRecord>,
    /// The trigger of the run this status describes. A finished instance whose spec names
    /// another trigger has been re-opened, and the controller starts that run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trigger: Option<Trigger>,
    /// The steps of the current attempt of a pipeline (SPEC §14), in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub steps: Vec<StepStatus>,
    /// Steps of the current attempt that exited 0 (or whose stored output a resumed retry
    /// reused).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub steps_completed: Option<u32>,
    /// The task ids of a job array that succeeded and failed in the current run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub array: Option<ArrayStatus>,
}

/// Gives the status schema a default, the status of an instance nothing has happened to yet
/// (state Queued). The API server drops the status of a create, and the controller records
/// an attempt up to 5 s after its Job exists, so without a default `kubectl get cwfi` shows
/// no state for a new instance; a default costs no write, as the API server applies it
/// whenever it reads the object.
fn default_status(schema: &mut schemars::Schema) {
    // Serialising a struct of plain fields cannot fail.
    if let Ok(default) = serde_json::to_value(WorkflowInstanceStatus::default()) {
        schema.insert("default".to_string(), default);
    }
}

/// `status.snapshot`: what the current execution runs, taken from the workflow in Prepare so a
/// retry picks up the latest spec while a running attempt keeps what it started with.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ExecutionSnapshot {
    /// Image of the execution.
    pub image: String,
    /// Command after `{}` substitution.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub command: Vec<String>,
    /// Arguments after `{}` substitution.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub args: Vec<String>,
    /// The workflow's env (spec.template.env) at Prepare. The trigger's env (spec.env) and the
    /// reserved CHARON_* variables are added on top when the Job is rendered.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub env: Vec<EnvVar>,
    /// The workflow generation the snapshot was taken from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workflow_generation: Option<i64>,
    /// A pipeline's steps, commands and args after `{}` substitution.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub steps: Vec<Step>,
    /// The step this execution starts at, when a retry resumes a pipeline after the steps
    /// before it (their outputs are reused).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resume_from: Option<String>,
    /// A job array's range.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub array: Option<ArraySpec>,
    /// The positions (0-based) of the array tasks this execution runs, when it runs only
    /// some (a retry runs the tasks that failed), in the Job's index list format ("1,3-5").
    /// Empty: every task.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub tasks: String,
}

/// One entry of `status.history`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HistoryEntry {
    /// When the transition happened.
    pub at: DateTime<Utc>,
    /// State before.
    pub from: InstanceState,
    /// State after.
    pub to: InstanceState,
    /// CamelCase reason, as in the Event.
    pub reason: String,
    /// What a person reads.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
}

/// One entry of `status.attempts`: one execution, from its Job's creation to its end.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AttemptRecord {
    /// The execution number (the suffix of its Job's name).
    pub execution: u32,
    /// Its Job.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub job: String,
    /// When its Job was created.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<DateTime<Utc>>,
    /// When it ended; unset while it runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<DateTime<Utc>>,
    /// Its main container's exit code, when it had one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    /// How it ended: Succeeded, Failed, TimedOut or Halted; unset while it runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outcome: Option<AttemptOutcomeKind>,
    /// Why the instance went on as it did (Succeeded, a retry reason, the reason it gave up).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub reason: String,
    /// Whether its log is in the log store.
    #[serde(default)]
    pub archived: bool,
}

/// `status.attempts[].outcome`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum AttemptOutcomeKind {
    /// Exited 0.
    Succeeded,
    /// Exited otherwise, or broke without an exit code.
    Failed,
    /// Ran past the running timeout.
    TimedOut,
    /// Stopped by a person.
    Halted,
}

/// One entry of `status.runs`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RunRecord {
    /// What triggered that run.
    pub trigger: Trigger,
    /// How it ended.
    pub state: InstanceState,
    /// Executions it started.
    pub tries: u32,
    /// Retry cost it accumulated.
    pub cost: f64,
    /// Exit code of its last attempt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_exit_code: Option<i32>,
    /// When it started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<DateTime<Utc>>,
    /// When it finished.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<DateTime<Utc>>,
}
