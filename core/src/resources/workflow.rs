//! `Workflow`: a schedule plus a container template (SPEC §1, §2, §8, §10).

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use k8s_openapi::api::core::v1::{
    EnvFromSource, EnvVar, LocalObjectReference, ResourceRequirements, Toleration,
};
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::pipeline::{ArraySpec, OutputStorage, Step};
use super::pool::PoolClaim;
use super::{Condition, preserve_unknown_object};

/// The body of an ISO-8601 duration with at least one component (`P7D`, `PT2H`, `P1DT2H`,
/// `PT1.5S`; a bare `P` or a trailing `T` is refused). RE2 syntax: Kubernetes evaluates
/// patterns with Go's regexp, so no lookaheads.
macro_rules! iso_duration_body {
    () => {
        r"P((\d+Y(\d+M)?(\d+W)?(\d+D)?|\d+M(\d+W)?(\d+D)?|\d+W(\d+D)?|\d+D)(T(\d+H(\d+M)?(\d+([.,]\d+)?S)?|\d+M(\d+([.,]\d+)?S)?|\d+([.,]\d+)?S))?|T(\d+H(\d+M)?(\d+([.,]\d+)?S)?|\d+M(\d+([.,]\d+)?S)?|\d+([.,]\d+)?S))"
    };
}

/// An unsigned ISO-8601 duration (`spec.runningTimeout`, `spec.history.ttl`).
pub(crate) const ISO_DURATION_PATTERN: &str = concat!("^", iso_duration_body!(), "$");

/// An ISO-8601 duration with an optional sign (`spec.offset`: `P1DT2H`, `-PT30M`).
pub(crate) const SIGNED_ISO_DURATION_PATTERN: &str = concat!("^[-+]?", iso_duration_body!(), "$");

/// Desired state of a Workflow: when partitions occur (schedule, timeZone, offset), what each
/// execution runs (template) and how failures are retried.
#[derive(CustomResource, Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "charon.dev",
    version = "v1alpha1",
    kind = "Workflow",
    namespaced,
    derive = "PartialEq",
    doc = "A periodic workflow: a schedule (cron or alias, time zone, offset) plus a container template. Every partition of the schedule becomes one WorkflowInstance that is retried until its container exits 0.",
    status = "WorkflowStatus",
    shortname = "cwf",
    category = "charon",
    printcolumn = r#"{"name":"Schedule","type":"string","jsonPath":".spec.schedule"}"#,
    printcolumn = r#"{"name":"Zone","type":"string","jsonPath":".spec.timeZone","priority":1}"#,
    printcolumn = r#"{"name":"Suspended","type":"boolean","jsonPath":".spec.suspend"}"#,
    printcolumn = r#"{"name":"Valid","type":"string","jsonPath":".status.conditions[?(@.type==\"Valid\")].status"}"#,
    printcolumn = r#"{"name":"Last","type":"string","jsonPath":".status.lastTriggered.parameter"}"#,
    printcolumn = r#"{"name":"Next","type":"string","jsonPath":".status.nextTrigger.parameter"}"#,
    // A string, not a date: kubectl prints a date column as an age, and `<invalid>` for a
    // time in the future, which the next trigger always is.
    printcolumn = r#"{"name":"Next At","type":"string","jsonPath":".status.nextTrigger.triggerAt"}"#,
    printcolumn = r#"{"name":"Active","type":"integer","jsonPath":".status.active"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct WorkflowSpec {
    /// When partitions occur: a 5-field cron expression (lists, ranges, steps, month and
    /// weekday names) or an alias (@hourly, @daily, @weekly, @monthly, @yearly; with or without
    /// @, singular or plural), read in timeZone.
    #[schemars(length(min = 1))]
    pub schedule: String,

    /// IANA time zone the schedule is read in, e.g. Europe/Stockholm. Parameters of non-UTC
    /// workflows are local dates, or local date-times with their UTC offset. Default UTC.
    #[serde(default = "default_time_zone")]
    #[schemars(default = "default_time_zone", length(min = 1))]
    pub time_zone: String,

    /// ISO-8601 duration, optionally signed (P1DT2H, -PT30M): partition i is triggered at
    /// i + offset. Default: one period for aliases (PT1H for @hourly, P1D for @daily, ...),
    /// PT0S for plain cron expressions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = SIGNED_ISO_DURATION_PATTERN))]
    pub offset: Option<String>,

    /// Stop triggering new partitions. Partitions that fall due while suspended are skipped,
    /// never caught up. Backfills still run. Default false.
    #[serde(default)]
    pub suspend: bool,

    /// What to do with partitions missed while the controller was down: All (every one,
    /// oldest first), Latest (only the newest), None (none). Default All.
    #[serde(default)]
    pub catch_up: CatchUpPolicy,

    /// Most instances of this workflow active at once; others wait in Queued, older
    /// partitions first. Unset: no limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub concurrency: Option<u32>,

    /// ISO-8601 duration an attempt may run before it is stopped and counted as failed; also
    /// set as the Job's activeDeadlineSeconds. Unset: no limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = ISO_DURATION_PATTERN))]
    pub running_timeout: Option<String>,

    /// Retry policy: what exit codes mean and the retry budget. Default: Styx's (maxCost 50,
    /// missingDependencyExitCode 20, fatalExitCodes [50], infrastructureAttempts 10).
    #[serde(default)]
    pub retry: RetryPolicySpec,

    /// How long finished instances are kept and how much history each keeps. Default: ttl P7D,
    /// limit 50.
    #[serde(default)]
    pub history: HistorySpec,

    /// Also inject the STYX_* environment variables of Styx, for migrated images. Default false.
    #[serde(default)]
    pub styx_compatible_env: bool,

    /// Workflows in the same namespace whose partitions must be Done before an instance of
    /// this one runs (SPEC §15). Until then the instance waits in Queued. At most 32.
    /// Default none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    pub depends_on: Vec<Dependency>,

    /// ISO-8601 duration from the trigger an instance may wait for its dependencies before it
    /// ends in Error (reason DependencyTimeout). Unset: it waits as long as it takes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = ISO_DURATION_PATTERN))]
    pub dependency_timeout: Option<String>,

    /// Pools whose slots each attempt holds (SPEC §13), e.g. [{name: gpu, slots: 2}]. An
    /// instance waits in Queued until every pool it names has the slots free. At most 8.
    /// Default none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 8))]
    pub pools: Vec<PoolClaim>,

    /// 0 to 100: when instances wait for the same pool, higher priority goes first. A
    /// Backfill's spec.priority overrides it for its instances. Default 50.
    #[serde(
        default = "default_priority",
        skip_serializing_if = "is_default_priority"
    )]
    #[schemars(default = "default_priority", range(min = 0, max = 100))]
    pub priority: u32,

    /// The container every execution runs (one Job per execution). Required.
    // Boxed: it is most of a workflow's inline size, and an operator caches every workflow.
    pub template: Box<WorkflowTemplate>,
}

/// One entry of `spec.dependsOn`: an upstream workflow and which of its partitions an
/// instance of this workflow needs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Dependency {
    /// Name of the upstream Workflow in the same namespace.
    #[schemars(length(min = 1, max = 253))]
    pub workflow: String,
    /// Which upstream partitions: Same (the same logical instant), Covering (the one whose
    /// period contains this logical instant), Within (every one inside this partition's
    /// period) or Previous (the one just before this logical instant). Default Same.
    #[serde(default)]
    pub partitions: PartitionMapping,
}

/// `spec.dependsOn[].partitions`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum PartitionMapping {
    /// The upstream partition with the same logical instant.
    #[default]
    Same,
    /// The upstream partition whose period contains this logical instant (hourly on daily).
    Covering,
    /// Every upstream partition inside this partition's period (daily on hourly: all 24).
    Within,
    /// The upstream partition just before this logical instant.
    Previous,
}

impl PartitionMapping {
    /// The name used in the spec.
    pub fn as_str(self) -> &'static str {
        match self {
            PartitionMapping::Same => "Same",
            PartitionMapping::Covering => "Covering",
            PartitionMapping::Within => "Within",
            PartitionMapping::Previous => "Previous",
        }
    }
}

/// `spec.priority` when unset.
pub const DEFAULT_PRIORITY: u32 = 50;

fn default_priority() -> u32 {
    DEFAULT_PRIORITY
}

fn is_default_priority(priority: &u32) -> bool {
    *priority == DEFAULT_PRIORITY
}

fn default_time_zone() -> String {
    "UTC".to_string()
}

/// `spec.catchUp`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum CatchUpPolicy {
    /// Trigger every missed partition, oldest first.
    #[default]
    All,
    /// Trigger only the newest missed partition.
    Latest,
    /// Trigger no missed partition.
    None,
}

/// `spec.retry`: Styx's exit-code semantics; the numbers are configurable.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RetryPolicySpec {
    /// Give up (state Error) once the accumulated retry cost reaches this. A missing-dependency
    /// exit costs 0.1, any other failure 1.0. Default 50.
    #[serde(default = "default_max_cost")]
    #[schemars(default = "default_max_cost", range(min = 0))]
    pub max_cost: f64,
    /// Exit code meaning "inputs not there yet": retried after 10 minutes at cost 0.1 (1-255).
    /// Default 20.
    #[serde(default = "default_missing_dependency_exit_code")]
    #[schemars(
        default = "default_missing_dependency_exit_code",
        range(min = 1, max = 255)
    )]
    pub missing_dependency_exit_code: i32,
    /// Exit codes that end the instance in Error at once (each 1-255). Default [50].
    #[serde(default = "default_fatal_exit_codes")]
    #[schemars(default = "default_fatal_exit_codes", inner(range(min = 1, max = 255)))]
    pub fatal_exit_codes: Vec<i32>,
    /// Infrastructure failures before the container ran (image pull back-off, eviction, lost
    /// node) are retried without cost at most this many times. Default 10.
    #[serde(default = "default_infrastructure_attempts")]
    #[schemars(default = "default_infrastructure_attempts")]
    pub infrastructure_attempts: u32,
    /// A pipeline's retry starts at the step that failed, with the stored output of the
    /// step before it, instead of from the first step. The outputs are then kept on a
    /// PersistentVolumeClaim of the run (spec.template.outputStorage). Default false.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub resume_from_failed_step: bool,
}

fn default_max_cost() -> f64 {
    50.0
}
fn default_missing_dependency_exit_code() -> i32 {
    20
}
fn default_fatal_exit_codes() -> Vec<i32> {
    vec![50]
}
fn default_infrastructure_attempts() -> u32 {
    10
}

impl Default for RetryPolicySpec {
    fn default() -> Self {
        RetryPolicySpec {
            max_cost: default_max_cost(),
            missing_dependency_exit_code: default_missing_dependency_exit_code(),
            fatal_exit_codes: default_fatal_exit_codes(),
            infrastructure_attempts: default_infrastructure_attempts(),
            resume_from_failed_step: false,
        }
    }
}

/// `spec.history`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HistorySpec {
    /// ISO-8601 duration after which finished instances (and their Jobs) are deleted. Default P7D.
    #[serde(default = "default_ttl")]
    #[schemars(default = "default_ttl", regex(pattern = ISO_DURATION_PATTERN))]
    pub ttl: String,
    /// Most entries kept in an instance's status.history; older ones are dropped. Default 50.
    #[serde(default = "default_history_limit")]
    #[schemars(default = "default_history_limit", range(min = 1, max = 1000))]
    pub limit: u32,
}

fn default_ttl() -> String {
    "P7D".to_string()
}
fn default_history_limit() -> u32 {
    50
}

impl Default for HistorySpec {
    fn default() -> Self {
        HistorySpec {
            ttl: default_ttl(),
            limit: default_history_limit(),
        }
    }
}

/// `spec.template`: what every execution runs.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct WorkflowTemplate {
    /// Container image of every execution, e.g. registry.example.com/report:1.4. Required
    /// unless spec.template.steps gives each step its own.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub image: String,
    /// Entrypoint; elements exactly "{}" are replaced by the parameter. Default: the image's
    /// ENTRYPOINT.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub command: Vec<String>,
    /// Arguments; elements exactly "{}" are replaced by the parameter ("--date={}" stays
    /// literal: use $(CHARON_PARAMETER) inside strings). Default: the image's CMD.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub args: Vec<String>,
    /// Environment variables of the container; a trigger's env and the reserved CHARON_*
    /// variables take precedence over these. Default none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub env: Vec<EnvVar>,
    /// Environment variables taken from ConfigMaps and Secrets. Default none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub env_from: Vec<EnvFromSource>,
    /// CPU and memory requests and limits of the container. Default: none (the namespace's
    /// LimitRange, if any).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
    /// When to pull the image: Always, IfNotPresent or Never. Default: Kubernetes' (Always for
    /// :latest or untagged images, IfNotPresent otherwise).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_pull_policy: Option<ImagePullPolicy>,
    /// Secrets in the workflow's namespace used to pull the image. Default none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub image_pull_secrets: Vec<LocalObjectReference>,
    /// Service account the pod runs as. Default: the namespace's default service account.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_account_name: Option<String>,
    /// Node labels the pod must be scheduled on. Default: any node.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub node_selector: BTreeMap<String, String>,
    /// Taints the pod tolerates. Default none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tolerations: Vec<Toleration>,
    /// A Secret mounted read-only into the container, e.g. credentials. Default none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<SecretMount>,
    /// Raw PodTemplateSpec fields (metadata and spec) merged onto the generated pod template as
    /// a JSON merge patch, for anything the template does not cover (affinity, volumes,
    /// sidecars, ...). Charon's labels, the main container's env and restartPolicy Never are
    /// restored afterwards. Not validated at apply time. Default none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "preserve_unknown_object")]
    pub pod_overrides: Option<serde_json::Value>,
    /// A pipeline instead of one container (SPEC §14): steps run in order in one execution,
    /// each fed the previous step's output on stdin; the first non-zero exit ends it. Not
    /// with image, command or args. Default none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 20))]
    pub steps: Vec<Step>,
    /// A job array: one task per value of start..=end by step, each with CHARON_TASK_ID, run
    /// as an Indexed Job in one execution that succeeds when every task exits 0. Needs
    /// command. Default none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub array: Option<ArraySpec>,
    /// Where a pipeline keeps its step outputs between attempts when
    /// spec.retry.resumeFromFailedStep is set. Default: 1Gi of the default StorageClass.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output_storage: Option<OutputStorage>,
    /// A Kueue LocalQueue in the workflow's namespace: each Job is created suspended with the
    /// label kueue.x-k8s.io/queue-name, and runs once Kueue admits (unsuspends) it. Default
    /// none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub queue_name: Option<String>,
}

/// When the kubelet pulls the image before starting an execution's container: Always (on
/// every start, so a moved tag is picked up), IfNotPresent (only when the node lacks the
/// image) or Never (the image must already be on the node). Unset: Kubernetes' default,
/// Always for :latest or untagged images and IfNotPresent otherwise.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum ImagePullPolicy {
    /// Pull on every start.
    Always,
    /// Pull when the node lacks the image.
    IfNotPresent,
    /// Never pull.
    Never,
}

/// `spec.template.secret`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretMount {
    /// Name of the Secret in the workflow's namespace.
    #[schemars(length(min = 1))]
    pub name: String,
    /// Absolute path (starting with /) the Secret's keys appear under as files.
    #[schemars(regex(pattern = r"^/"))]
    pub mount_path: String,
}

/// Observed state of a Workflow, written by the controller.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct WorkflowStatus {
    /// The metadata.generation this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Valid: whether the spec can be scheduled (False names the field and the reason).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
    /// The partition triggered last.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_triggered: Option<TriggeredPartition>,
    /// The partition triggered next, and when.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_trigger: Option<NextTrigger>,
    /// Instances of this workflow not finished yet: queued (for a slot or a retry) or
    /// running an attempt.
    #[serde(default)]
    pub active: u32,
    /// Every partition due at or before this instant has been triggered or deliberately
    /// skipped (suspend, catch-up policy).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trigger_cursor: Option<DateTime<Utc>>,
    /// The schedule, time zone and offset the cursor was computed with; a change makes the
    /// controller re-check partitions after lastTriggered so none is skipped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scheduled_with: Option<String>,
}

/// `status.lastTriggered`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TriggeredPartition {
    /// The partition's parameter.
    pub parameter: String,
    /// The partition's logical instant.
    pub logical_time: DateTime<Utc>,
    /// When it was triggered.
    pub at: DateTime<Utc>,
}

/// `status.nextTrigger`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NextTrigger {
    /// The partition's parameter.
    pub parameter: String,
    /// The partition's logical instant.
    pub logical_time: DateTime<Utc>,
    /// When it will be triggered (logical instant + offset).
    pub trigger_at: DateTime<Utc>,
}
