//! Pipelines and job arrays (SPEC §14): `spec.template.steps` runs containers in order with
//! each step's output as the next one's input (Dray), `spec.template.array` runs one task per
//! value of `start:end:step` (Go-Docker's job arrays).

use chrono::{DateTime, Utc};
use k8s_openapi::api::core::v1::EnvVar;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// One step of `spec.template.steps`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Step {
    /// The step's name, a DNS label unique in the pipeline: its container's name, so
    /// `kubectl logs POD -c NAME` and `charon logs --step NAME` show its output.
    #[schemars(length(min = 1, max = 63))]
    pub name: String,
    /// Container image of the step. Required.
    #[schemars(length(min = 1))]
    pub image: String,
    /// The step's command (required: the launcher runs it, and cannot read the image's
    /// ENTRYPOINT). Elements exactly "{}" are replaced by the parameter.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub command: Vec<String>,
    /// Arguments; elements exactly "{}" are replaced by the parameter.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub args: Vec<String>,
    /// Environment of this step, on top of spec.template.env. Default none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub env: Vec<EnvVar>,
    /// What becomes the next step's standard input: "stdout" (the default), "stderr", or an
    /// absolute path the step writes. Ignored on the last step.
    #[serde(default = "default_output")]
    #[schemars(default = "default_output")]
    pub output: String,
}

fn default_output() -> String {
    "stdout".to_string()
}

/// `spec.template.array`: one task per value of `start..=end` by `step`, run as an Indexed
/// Job in one execution.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ArraySpec {
    /// The first task id.
    pub start: i64,
    /// The last task id, inclusive when `start + k * step` reaches it.
    pub end: i64,
    /// Distance between task ids (≥ 1). Default 1.
    #[serde(default = "default_array_step")]
    #[schemars(default = "default_array_step", range(min = 1))]
    pub step: i64,
    /// Tasks running at once. Default: all of them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub parallelism: Option<i32>,
}

fn default_array_step() -> i64 {
    1
}

/// The most tasks an array may have: Kubernetes' limit on the completions of an Indexed Job
/// with a per-index backoff limit.
pub const MAX_ARRAY_TASKS: i64 = 100_000;

impl ArraySpec {
    /// How many tasks the array has (0 when `end < start` or `step < 1`).
    pub fn count(&self) -> i64 {
        if self.step < 1 || self.end < self.start {
            return 0;
        }
        let span = i128::from(self.end) - i128::from(self.start);
        i64::try_from(span / i128::from(self.step) + 1).unwrap_or(i64::MAX)
    }

    /// The id of the task at `position` (0-based).
    pub fn id(&self, position: i64) -> i64 {
        self.start
            .saturating_add(position.saturating_mul(self.step))
    }

    /// The position of task `id`, if it is one of the array's.
    pub fn position(&self, id: i64) -> Option<i64> {
        let offset = id.checked_sub(self.start)?;
        (self.step >= 1 && offset >= 0 && offset % self.step == 0)
            .then_some(offset / self.step)
            .filter(|p| *p < self.count())
    }

    /// The id of the last task.
    pub fn last(&self) -> i64 {
        self.id(self.count().saturating_sub(1))
    }
}

/// `spec.template.outputStorage`: the PersistentVolumeClaim a resumable pipeline's run keeps
/// its step outputs on, so a retry in a new pod finds them.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct OutputStorage {
    /// Size of the claim, a Kubernetes quantity. Default 1Gi.
    #[serde(default = "default_storage_size")]
    #[schemars(default = "default_storage_size")]
    pub size: String,
    /// StorageClass of the claim. Default: the cluster's default class.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage_class_name: Option<String>,
}

/// The claim size when `outputStorage` does not say.
pub fn default_storage_size() -> String {
    "1Gi".to_string()
}

impl Default for OutputStorage {
    fn default() -> Self {
        OutputStorage {
            size: default_storage_size(),
            storage_class_name: None,
        }
    }
}

/// Where a step of the current attempt is.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum StepState {
    /// Not started yet.
    #[default]
    Waiting,
    /// Its container runs.
    Running,
    /// It exited 0.
    Succeeded,
    /// It exited non-zero (or could not start): the execution ends with its exit code.
    Failed,
    /// Not run in this attempt: an earlier step failed, or the attempt ended first.
    Skipped,
    /// Not run in this attempt: a retry resumed after it, from its stored output.
    Reused,
}

/// One entry of `status.steps`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct StepStatus {
    /// The step's name.
    pub name: String,
    /// Where it is.
    pub state: StepState,
    /// Its exit code, once it exited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    /// When its container started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<DateTime<Utc>>,
    /// When its container ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<DateTime<Utc>>,
}

/// `status.array`: the task ids that succeeded and failed in the current run.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ArrayStatus {
    /// Ids of the tasks that exited 0 in this run (in any attempt), ascending.
    #[serde(default)]
    pub succeeded: Vec<i64>,
    /// Ids of the tasks whose latest try failed, ascending.
    #[serde(default)]
    pub failed: Vec<i64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn array_arithmetic() {
        let a = ArraySpec {
            start: 0,
            end: 9,
            step: 3,
            parallelism: None,
        };
        assert_eq!(a.count(), 4);
        assert_eq!((0..4).map(|p| a.id(p)).collect::<Vec<_>>(), [0, 3, 6, 9]);
        assert_eq!(a.last(), 9);
        assert_eq!(a.position(6), Some(2));
        assert_eq!(a.position(7), None);
        assert_eq!(a.position(12), None);
        assert_eq!(a.position(-3), None);
        let b = ArraySpec {
            start: 5,
            end: 11,
            step: 4,
            parallelism: Some(1),
        };
        assert_eq!(b.count(), 2);
        assert_eq!(b.last(), 9);
        let empty = ArraySpec {
            start: 3,
            end: 2,
            step: 1,
            parallelism: None,
        };
        assert_eq!(empty.count(), 0);
    }
}
