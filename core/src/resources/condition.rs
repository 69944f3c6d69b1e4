//! Typed conditions shared by the three kinds, shaped and validated like `metav1.Condition` so
//! `kubectl wait --for=condition=...` and generic tooling read them as they read built-in ones.

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Condition types Charon writes, so the controller and tests agree on the spelling.
pub mod condition_type {
    /// The spec can be acted on; False names the field and the reason (SPEC §7).
    pub const VALID: &str = "Valid";
    /// A Backfill triggered every partition of its range and all of them finished.
    pub const COMPLETE: &str = "Complete";
}

/// A typed condition, shaped like `metav1.Condition` (same fields, same validation).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    /// Kind of condition in CamelCase, e.g. Valid.
    #[serde(rename = "type")]
    #[schemars(
        length(min = 1, max = 316),
        regex(
            pattern = r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])$"
        )
    )]
    pub type_: String,
    /// True, False or Unknown.
    pub status: ConditionStatus,
    /// The metadata.generation the condition was computed from; older than the object's
    /// generation means the condition is stale.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub observed_generation: Option<i64>,
    /// When the status last changed (not when the condition was last written).
    pub last_transition_time: DateTime<Utc>,
    /// CamelCase reason for the last transition, for programs.
    #[schemars(
        length(min = 1, max = 1024),
        regex(pattern = r"^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$")
    )]
    pub reason: String,
    /// What a person reads; for Valid=False it names the field and the reason. Default empty.
    #[serde(default)]
    #[schemars(length(max = 32768))]
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

impl ConditionStatus {
    /// `true` maps to True and `false` to False, the common case for a check.
    pub fn from_bool(holds: bool) -> Self {
        if holds {
            ConditionStatus::True
        } else {
            ConditionStatus::False
        }
    }
}

impl Condition {
    /// A condition that transitions at `now`; `set_condition` keeps the older transition time
    /// when the status did not change.
    pub fn new(
        type_: impl Into<String>,
        status: ConditionStatus,
        reason: impl Into<String>,
        message: impl Into<String>,
        observed_generation: Option<i64>,
        now: DateTime<Utc>,
    ) -> Self {
        Condition {
            type_: type_.into(),
            status,
            observed_generation,
            last_transition_time: now,
            reason: reason.into(),
            message: message.into(),
        }
    }
}

impl Condition {
    /// `Valid=True`: the spec can be acted on.
    pub fn valid(message: &str, observed_generation: Option<i64>, now: DateTime<Utc>) -> Self {
        Condition::new(
            condition_type::VALID,
            ConditionStatus::True,
            "Valid",
            message,
            observed_generation,
            now,
        )
    }

    /// `Valid=False` with reason `InvalidSpec`: `message` names the field and the reason.
    pub fn invalid(message: &str, observed_generation: Option<i64>, now: DateTime<Utc>) -> Self {
        Condition::new(
            condition_type::VALID,
            ConditionStatus::False,
            "InvalidSpec",
            message,
            observed_generation,
            now,
        )
    }
}

/// The condition of type `type_`, if present.
pub fn find_condition<'a>(conditions: &'a [Condition], type_: &str) -> Option<&'a Condition> {
    conditions.iter().find(|c| c.type_ == type_)
}

/// Inserts or replaces the condition of `condition.type_`, keeping the stored
/// `lastTransitionTime` when the status is unchanged (as `meta.SetStatusCondition` does), so a
/// controller can write the same condition on every reconcile without churning the object.
/// Returns whether anything changed.
pub fn set_condition(conditions: &mut Vec<Condition>, mut condition: Condition) -> bool {
    match conditions.iter_mut().find(|c| c.type_ == condition.type_) {
        Some(existing) => {
            if existing.status == condition.status {
                condition.last_transition_time = existing.last_transition_time;
            }
            let changed = *existing != condition;
            *existing = condition;
            changed
        }
        None => {
            conditions.push(condition);
            true
        }
    }
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;

    use super::*;

    fn at(hour: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2024, 1, 1, hour, 0, 0).unwrap()
    }

    #[test]
    fn an_unchanged_status_keeps_its_transition_time() {
        let mut conditions = Vec::new();
        let valid = |status, reason: &str, hour| {
            Condition::new("Valid", status, reason, "", Some(1), at(hour))
        };
        assert!(set_condition(
            &mut conditions,
            valid(ConditionStatus::True, "Valid", 1)
        ));
        assert!(!set_condition(
            &mut conditions,
            valid(ConditionStatus::True, "Valid", 2)
        ));
        assert_eq!(conditions[0].last_transition_time, at(1));
        assert!(set_condition(
            &mut conditions,
            valid(ConditionStatus::False, "InvalidSchedule", 3)
        ));
        assert_eq!(conditions.len(), 1);
        let valid = find_condition(&conditions, condition_type::VALID).unwrap();
        assert_eq!(valid.last_transition_time, at(3));
        assert_eq!(valid.status, ConditionStatus::False);
    }

    #[test]
    fn a_new_generation_with_the_same_status_is_a_change() {
        let mut conditions = vec![Condition::new(
            "Valid",
            ConditionStatus::True,
            "Valid",
            "",
            Some(1),
            at(1),
        )];
        let next = Condition::new("Valid", ConditionStatus::True, "Valid", "", Some(2), at(2));
        assert!(set_condition(&mut conditions, next));
        assert_eq!(conditions[0].observed_generation, Some(2));
        assert_eq!(conditions[0].last_transition_time, at(1));
    }

    #[test]
    fn status_from_bool() {
        assert_eq!(ConditionStatus::from_bool(true), ConditionStatus::True);
        assert_eq!(ConditionStatus::from_bool(false), ConditionStatus::False);
    }
}
