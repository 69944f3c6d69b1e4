//! The custom resources of `charon.dev/v1alpha1` (SPEC §1): Workflow, WorkflowInstance and
//! Backfill. Their doc comments become `kubectl explain` text; `charon crds` renders them.

mod backfill;
mod condition;
mod instance;
mod pipeline;
mod pool;
mod workflow;

pub use self::backfill::{
    Backfill, BackfillCounts, BackfillPartition, BackfillSpec, BackfillState, BackfillStatus,
    Reprocess,
};
pub use self::condition::{
    Condition, ConditionStatus, condition_type, find_condition, set_condition,
};
pub use self::instance::{
    AttemptOutcomeKind, AttemptRecord, ExecutionSnapshot, HistoryEntry, InstanceState, RunRecord,
    Trigger, TriggerType, WorkflowInstance, WorkflowInstanceSpec, WorkflowInstanceStatus,
};
pub use self::pipeline::{
    ArraySpec, ArrayStatus, MAX_ARRAY_TASKS, OutputStorage, Step, StepState, StepStatus,
    default_storage_size,
};
pub use self::pool::{
    Pool, PoolClaim, PoolNamespaceStatus, PoolSpec, PoolStatus, Quota, QuotaRequests, QuotaSpec,
    QuotaStatus,
};
pub use self::workflow::{
    CatchUpPolicy, DEFAULT_PRIORITY, Dependency, HistorySpec, ImagePullPolicy, NextTrigger,
    PartitionMapping, RetryPolicySpec, SecretMount, TriggeredPartition, Workflow, WorkflowSpec,
    WorkflowStatus, WorkflowTemplate,
};

/// The API group of every Charon resource.
pub const GROUP: &str = "charon.dev";
/// The served version.
pub const VERSION: &str = "v1alpha1";

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
