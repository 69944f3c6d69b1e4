//! The custom resources of `charon.dev/v1alpha1` (SPEC §1): Workflow, WorkflowInstance and
//! Backfill. Their doc comments become `kubectl explain` text; `charon crds` renders them.

mod backfill;
mod instance;
mod workflow;

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

pub use self::backfill::{
    Backfill, BackfillCounts, BackfillPartition, BackfillSpec, BackfillState, BackfillStatus,
    Reprocess,
};
pub use self::instance::{
    ExecutionSnapshot, HistoryEntry, InstanceState, RunRecord, Trigger, TriggerType,
    WorkflowInstance, WorkflowInstanceSpec, WorkflowInstanceStatus,
};
pub use self::workflow::{
    CatchUpPolicy, HistorySpec, ImagePullPolicy, NextTrigger, RetryPolicySpec, SecretMount,
    TriggeredPartition, Workflow, WorkflowSpec, WorkflowStatus, WorkflowTemplate,
};

/// The API group of every Charon resource.
pub const GROUP: &str = "charon.dev";
/// The served version.
pub const VERSION: &str = "v1alpha1";

/// A typed condition, shaped like `metav1.Condition`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    /// Kind of condition, e.g. Valid.
    #[serde(rename = "type")]
    #[schemars(length(min = 1))]
    pub type_: String,
    /// True, False or Unknown.
    pub status: ConditionStatus,
    /// The metadata.generation the condition was computed from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// When the status last changed.
    pub last_transition_time: DateTime<Utc>,
    /// CamelCase reason for the last transition.
    #[schemars(length(min = 1))]
    pub reason: String,
    /// What a person reads; for Valid=False it names the field and the reason.
    #[serde(default)]
    pub message: String,
}

/// `Condition.status`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum ConditionStatus {
    /// The condition holds.
    True,
    /// The condition does not hold.
    False,
    /// Not known yet.
    Unknown,
}

/// Schema of a free-form object: `podOverrides` is merged onto a PodTemplateSpec and must
/// not embed its schema (it is huge and would pin a Kubernetes version).
pub(crate) fn preserve_unknown_object(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "object",
        "x-kubernetes-preserve-unknown-fields": true,
    })
}

#[cfg(test)]
mod tests;
