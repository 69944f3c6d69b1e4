//! `Pool` and `Quota` (SPEC §13): slots shared by workflows across namespaces, and what one
//! namespace may run and queue at once.

use chrono::{DateTime, Utc};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::Condition;
use super::workflow::ISO_DURATION_PATTERN;

/// Desired state of a Pool: how many slots the attempts of the workflows naming it in
/// spec.pools may hold at once, and how fast past usage is forgotten for fair share.
#[derive(CustomResource, Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "charon.dev",
    version = "v1alpha1",
    kind = "Pool",
    derive = "PartialEq",
    doc = "Slots shared by the workflows that name this pool in spec.pools, in any namespace. Each attempt holds its slots from Prepare until it ends; queued instances are admitted by priority, then by the least decayed usage of their namespace (fair share), then oldest partition first.",
    status = "PoolStatus",
    shortname = "cpool",
    category = "charon",
    printcolumn = r#"{"name":"Slots","type":"integer","jsonPath":".spec.slots"}"#,
    printcolumn = r#"{"name":"Used","type":"integer","jsonPath":".status.used"}"#,
    printcolumn = r#"{"name":"Queued","type":"integer","jsonPath":".status.queued"}"#,
    printcolumn = r#"{"name":"Half-Life","type":"string","jsonPath":".spec.usageHalfLife","priority":1}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct PoolSpec {
    /// Slots the pool has. 0 admits nothing; lowering it below what is held admits nothing
    /// new until enough attempts end.
    #[schemars(range(min = 0))]
    pub slots: u32,
    /// ISO-8601 duration after which a namespace's past usage of the pool counts half, e.g.
    /// PT1H. Default PT1H.
    #[serde(default = "default_half_life")]
    #[schemars(default = "default_half_life", regex(pattern = ISO_DURATION_PATTERN))]
    pub usage_half_life: String,
}

fn default_half_life() -> String {
    "PT1H".to_string()
}

/// Observed state of a Pool, written by the controller.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PoolStatus {
    /// The metadata.generation this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Valid: whether the spec can be used (False names the field and the reason).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
    /// Slots held by attempts now.
    #[serde(default)]
    pub used: u32,
    /// Instances ready to run that wait for this pool.
    #[serde(default)]
    pub queued: u32,
    /// Per namespace: slots held and decayed usage (fair share).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["namespace"]))]
    pub namespaces: Vec<PoolNamespaceStatus>,
    /// When usage was last brought up to date; usage decays and accrues from here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage_updated_at: Option<DateTime<Utc>>,
}

/// One namespace's share of a pool.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PoolNamespaceStatus {
    /// The namespace.
    pub namespace: String,
    /// Slots its attempts hold now.
    #[serde(default)]
    pub used: u32,
    /// Instances of it waiting for the pool.
    #[serde(default)]
    pub queued: u32,
    /// Slot-seconds it used, halving every spec.usageHalfLife.
    #[serde(default)]
    pub usage: f64,
}

/// Desired state of a Quota: what one namespace's instances may run and queue at once. At
/// most one per namespace.
#[derive(CustomResource, Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "charon.dev",
    version = "v1alpha1",
    kind = "Quota",
    namespaced,
    derive = "PartialEq",
    doc = "Limits on one namespace's Charon instances: attempts running at once, instances queued (ad-hoc and backfill triggers beyond it are refused; natural triggers always queue) and the container requests of running attempts. At most one per namespace.",
    status = "QuotaStatus",
    shortname = "cquota",
    category = "charon",
    printcolumn = r#"{"name":"Max Active","type":"integer","jsonPath":".spec.maxActive"}"#,
    printcolumn = r#"{"name":"Active","type":"integer","jsonPath":".status.active"}"#,
    printcolumn = r#"{"name":"Max Queued","type":"integer","jsonPath":".spec.maxQueued"}"#,
    printcolumn = r#"{"name":"Queued","type":"integer","jsonPath":".status.queued"}"#,
    printcolumn = r#"{"name":"CPU","type":"string","jsonPath":".status.requests.cpu","priority":1}"#,
    printcolumn = r#"{"name":"Memory","type":"string","jsonPath":".status.requests.memory","priority":1}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct QuotaSpec {
    /// Most attempts of this namespace active (Prepare to end of attempt) at once. Unset: no
    /// limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub max_active: Option<u32>,
    /// Most instances of this namespace queued at once: an ad-hoc trigger or a backfill beyond
    /// it is refused; natural triggers still queue and status.excess counts them. Unset: no
    /// limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub max_queued: Option<u32>,
    /// Most CPU and memory requested by the containers of active attempts together. Unset:
    /// no limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requests: Option<QuotaRequests>,
}

/// `spec.requests` and `status.requests` of a Quota.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct QuotaRequests {
    /// CPU, e.g. 4 or 500m.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu: Option<Quantity>,
    /// Memory, e.g. 8Gi.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<Quantity>,
}

/// Observed state of a Quota, written by the controller.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct QuotaStatus {
    /// The metadata.generation this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Valid: whether this Quota is the namespace's one and its spec can be used.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
    /// Attempts active now.
    #[serde(default)]
    pub active: u32,
    /// Instances queued now.
    #[serde(default)]
    pub queued: u32,
    /// Queued instances beyond spec.maxQueued (natural triggers, which are never refused).
    #[serde(default)]
    pub excess: u32,
    /// Container requests of the active attempts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requests: Option<QuotaRequests>,
}

/// One entry of a Workflow's `spec.pools`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PoolClaim {
    /// Name of the Pool.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// Slots of it each attempt holds. Default 1.
    #[serde(default = "default_claim")]
    #[schemars(default = "default_claim", range(min = 1))]
    pub slots: u32,
}

fn default_claim() -> u32 {
    1
}
