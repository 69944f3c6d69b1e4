//! `Backfill`: a range of partitions to trigger with bounded concurrency (SPEC §5).

use chrono::{DateTime, Utc};
use k8s_openapi::api::core::v1::EnvVar;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::Condition;

/// Desired state of a Backfill: which partitions of which workflow to trigger ([start, end)),
/// how many at a time, and which of them to re-run.
#[derive(CustomResource, Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "charon.dev",
    version = "v1alpha1",
    kind = "Backfill",
    namespaced,
    derive = "PartialEq",
    doc = "A range [start, end) of partitions of one workflow to trigger (or re-run), at most spec.concurrency at a time. Its instances run even while the workflow is suspended.",
    status = "BackfillStatus",
    shortname = "cbf",
    category = "charon",
    printcolumn = r#"{"name":"Workflow","type":"string","jsonPath":".spec.workflow"}"#,
    printcolumn = r#"{"name":"Start","type":"string","jsonPath":".spec.start"}"#,
    printcolumn = r#"{"name":"End","type":"string","jsonPath":".spec.end"}"#,
    printcolumn = r#"{"name":"Concurrency","type":"integer","jsonPath":".spec.concurrency","priority":1}"#,
    printcolumn = r#"{"name":"Progress","type":"string","jsonPath":".status.progress"}"#,
    printcolumn = r#"{"name":"Active","type":"integer","jsonPath":".status.counts.active","priority":1}"#,
    printcolumn = r#"{"name":"State","type":"string","jsonPath":".status.state"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct BackfillSpec {
    /// Name of the Workflow in the same namespace.
    #[schemars(length(min = 1))]
    pub workflow: String,
    /// First partition (inclusive): an aligned instant or a parameter string, e.g.
    /// 2024-01-01T00 or 2024-01-01T00:00:00Z.
    #[schemars(length(min = 1))]
    pub start: String,
    /// End of the range (exclusive), in the same forms as start.
    #[schemars(length(min = 1))]
    pub end: String,
    /// Most of this backfill's instances active at once (the workflow's own concurrency limit
    /// applies too). Default 1.
    #[serde(default = "default_concurrency")]
    #[schemars(default = "default_concurrency", range(min = 1))]
    pub concurrency: u32,
    /// Trigger newest partitions first. Default false.
    #[serde(default)]
    pub reverse: bool,
    /// Which partitions to run: All (also re-run finished ones, as in Styx), Failed (only
    /// those that ended in Error) or Missing (only those with no instance). Default All.
    #[serde(default)]
    pub reprocess: Reprocess,
    /// Stop triggering further partitions. Unless gracefulHalt, active instances of this
    /// backfill are halted too. Default false.
    #[serde(default)]
    pub halted: bool,
    /// When halted, let active instances finish instead of halting them. Default false.
    #[serde(default)]
    pub graceful_halt: bool,
    /// Allow partitions that are not due yet. Default false: such a range is refused.
    #[serde(default)]
    pub allow_future: bool,
    /// Why this backfill exists, for people. Default none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Environment variables overlaying the workflow's env for this backfill's instances
    /// (the reserved CHARON_* variables still win). Default none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub env: Vec<EnvVar>,
    /// 0 to 100: the priority of this backfill's instances when they wait for a pool,
    /// instead of the workflow's spec.priority. Default: the workflow's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 100))]
    pub priority: Option<u32>,
}

fn default_concurrency() -> u32 {
    1
}

/// `spec.reprocess`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum Reprocess {
    /// Run every partition, re-opening finished instances.
    #[default]
    All,
    /// Run partitions with no instance and re-open those that ended in Error.
    Failed,
    /// Run only partitions with no instance.
    Missing,
}

/// `status.state`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum BackfillState {
    /// Not looked at yet.
    #[default]
    Pending,
    /// Triggering and waiting for partitions.
    Running,
    /// Every partition finished.
    Completed,
    /// Stopped by spec.halted.
    Halted,
    /// The spec cannot be run (see the Valid condition).
    Invalid,
}

/// Observed state of a Backfill, written by the controller: progress over its range.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BackfillStatus {
    /// The metadata.generation this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Valid (range, workflow) and Complete.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
    /// Where the backfill is.
    #[serde(default)]
    pub state: BackfillState,
    /// The aligned range as parameters, "start/end".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub range: Option<String>,
    /// Finished partitions of the total, e.g. "7/12".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress: Option<String>,
    /// The next partition to trigger (its parameter); unset once all were triggered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cursor: Option<String>,
    /// Partition counts.
    #[serde(default)]
    pub counts: BackfillCounts,
    /// Every partition of the range and what happened to it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub partitions: Vec<BackfillPartition>,
    /// When the first partition was triggered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<DateTime<Utc>>,
    /// When the last partition finished.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completed_at: Option<DateTime<Utc>>,
}

/// `status.counts`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BackfillCounts {
    /// Partitions in the range.
    #[serde(default)]
    pub total: u32,
    /// Partitions this backfill triggered.
    #[serde(default)]
    pub triggered: u32,
    /// Of those, currently active.
    #[serde(default)]
    pub active: u32,
    /// Of those, ended Done.
    #[serde(default)]
    pub done: u32,
    /// Of those, ended Error or Halted.
    #[serde(default)]
    pub failed: u32,
    /// Partitions not run: already active through another trigger, or excluded by reprocess.
    #[serde(default)]
    pub skipped: u32,
}

/// One entry of `status.partitions`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BackfillPartition {
    /// The partition's parameter.
    pub parameter: String,
    /// Pending (not triggered yet), Triggered (its instance runs), Done, Failed (ended Error
    /// or Halted) or Skipped (active through another trigger, or excluded by reprocess).
    #[schemars(extend("enum" = ["Pending", "Triggered", "Done", "Failed", "Skipped"]))]
    pub state: String,
    /// The instance that runs it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance: Option<String>,
    /// Why it was skipped or failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}
