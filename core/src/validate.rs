//! Validation of a Workflow's spec beyond what the OpenAPI schema can express (SPEC §7).
//!
//! Pure: the controller turns the result into the `Valid` condition and a Warning Event; an
//! invalid workflow gets no instances until it is fixed.

use chrono::Duration;
use thiserror::Error;

use crate::resources::WorkflowSpec;
use crate::schedule::{IsoDuration, Schedule};

/// One problem with one field, e.g. `spec.schedule: expected 5 fields, got 6`.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
#[error("{field}: {reason}")]
pub struct FieldError {
    /// JSON path of the field, as `kubectl explain` names it.
    pub field: String,
    /// Why its value was refused.
    pub reason: String,
}

fn error(field: &str, reason: impl Into<String>) -> FieldError {
    FieldError {
        field: field.to_string(),
        reason: reason.into(),
    }
}

/// A workflow spec that passed validation, with its parsed parts.
#[derive(Clone, Debug, PartialEq)]
pub struct ValidWorkflow {
    /// The schedule (cron, zone, offset).
    pub schedule: Schedule,
    /// `spec.runningTimeout`, if set.
    pub running_timeout: Option<Duration>,
    /// `spec.history.ttl`.
    pub history_ttl: Duration,
}

/// Validates a workflow spec, collecting every problem rather than stopping at the first.
pub fn workflow(spec: &WorkflowSpec) -> Result<ValidWorkflow, Vec<FieldError>> {
    let mut errors = Vec::new();
    let schedule = Schedule::new(
        &spec.schedule,
        Some(&spec.time_zone),
        spec.offset.as_deref(),
    )
    .map_err(|e| {
        let field = match e {
            crate::schedule::ScheduleError::Schedule(_) => "spec.schedule",
            crate::schedule::ScheduleError::TimeZone(_) => "spec.timeZone",
            crate::schedule::ScheduleError::Offset(_) => "spec.offset",
        };
        errors.push(error(field, e.reason()));
    })
    .ok();
    if let Some(schedule) = &schedule
        && let Err(reason) = schedule.offset().check_range()
    {
        errors.push(error("spec.offset", reason));
    }
    let running_timeout = match spec.running_timeout.as_deref().map(IsoDuration::parse) {
        None => None,
        Some(Ok(d)) if d.is_negative() || d.is_zero() => {
            errors.push(error("spec.runningTimeout", "must be a positive duration"));
            None
        }
        Some(Ok(d)) => in_range("spec.runningTimeout", &d, &mut errors),
        Some(Err(reason)) => {
            errors.push(error("spec.runningTimeout", reason));
            None
        }
    };
    let history_ttl = match IsoDuration::parse(&spec.history.ttl) {
        Ok(d) if d.is_negative() => {
            errors.push(error("spec.history.ttl", "must not be negative"));
            Duration::zero()
        }
        Ok(d) => in_range("spec.history.ttl", &d, &mut errors).unwrap_or_else(Duration::zero),
        Err(reason) => {
            errors.push(error("spec.history.ttl", reason));
            Duration::zero()
        }
    };
    if !spec.retry.max_cost.is_finite() || spec.retry.max_cost < 0.0 {
        errors.push(error("spec.retry.maxCost", "must be a non-negative number"));
    }
    if spec.retry.missing_dependency_exit_code == 0 {
        errors.push(error(
            "spec.retry.missingDependencyExitCode",
            "0 means success and cannot mean missing dependencies",
        ));
    }
    if spec.retry.fatal_exit_codes.contains(&0) {
        errors.push(error(
            "spec.retry.fatalExitCodes",
            "0 means success and cannot be fatal",
        ));
    }
    let template = &spec.template;
    if template.image.trim().is_empty() {
        errors.push(error("spec.template.image", "must not be empty"));
    } else if template.image.chars().any(char::is_whitespace) {
        errors.push(error(
            "spec.template.image",
            format!("{:?} is not an image reference", template.image),
        ));
    }
    if let Some(secret) = &template.secret {
        if secret.name.trim().is_empty() {
            errors.push(error("spec.template.secret.name", "must not be empty"));
        }
        if !secret.mount_path.starts_with('/') {
            errors.push(error(
                "spec.template.secret.mountPath",
                format!("{:?} must be an absolute path", secret.mount_path),
            ));
        }
    }
    for (i, var) in template.env.iter().enumerate() {
        if var.name.is_empty() {
            errors.push(error(
                &format!("spec.template.env[{i}].name"),
                "must not be empty",
            ));
        }
    }
    if let Some(overrides) = &template.pod_overrides
        && !overrides.is_object()
    {
        errors.push(error("spec.template.podOverrides", "must be an object"));
    }
    match (schedule, errors.is_empty()) {
        (Some(schedule), true) => Ok(ValidWorkflow {
            schedule,
            running_timeout,
            history_ttl,
        }),
        _ => Err(errors),
    }
}

/// `d` as elapsed time when it keeps within the supported range (SPEC §2), else an error
/// naming `field`.
fn in_range(field: &str, d: &IsoDuration, errors: &mut Vec<FieldError>) -> Option<Duration> {
    match d.check_range().map(|()| d.approximate()) {
        Ok(Some(elapsed)) => Some(elapsed),
        Ok(None) => {
            errors.push(error(field, format!("{d} is outside the supported range")));
            None
        }
        Err(reason) => {
            errors.push(error(field, reason));
            None
        }
    }
}

/// One line for the `Valid` condition's message: every problem, separated by `; `.
pub fn message(errors: &[FieldError]) -> String {
    errors
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::{SecretMount, WorkflowTemplate};

    fn spec(schedule: &str) -> WorkflowSpec {
        serde_json::from_value(serde_json::json!({
            "schedule": schedule,
            "template": {"image": "busybox"},
        }))
        .unwrap()
    }

    #[test]
    fn a_valid_spec_parses_its_parts() {
        let mut s = spec("@hourly");
        s.running_timeout = Some("PT2H".into());
        let valid = workflow(&s).unwrap();
        assert_eq!(valid.running_timeout, Some(Duration::hours(2)));
        assert_eq!(valid.history_ttl, Duration::days(7));
    }

    #[test]
    fn errors_name_the_field_and_the_reason() {
        for (mutate, want) in [
            (
                Box::new(|s: &mut WorkflowSpec| s.schedule = "0 * * * * *".into())
                    as Box<dyn Fn(&mut WorkflowSpec)>,
                "spec.schedule: expected 5 fields, got 6",
            ),
            (
                Box::new(|s| s.schedule = "61 * * * *".into()),
                "spec.schedule: minute field \"61\"",
            ),
            (
                Box::new(|s| s.time_zone = "Mars/Base".into()),
                "spec.timeZone: unknown time zone \"Mars/Base\"",
            ),
            (
                Box::new(|s| s.offset = Some("1h".into())),
                "spec.offset: \"1h\" is not an ISO-8601 duration",
            ),
            (
                Box::new(|s| s.running_timeout = Some("-PT1H".into())),
                "spec.runningTimeout: must be a positive duration",
            ),
            (
                Box::new(|s| s.running_timeout = Some("P300000000Y".into())),
                "spec.runningTimeout: P300000000Y is outside the supported range",
            ),
            (
                Box::new(|s| s.history.ttl = "P300000000Y".into()),
                "spec.history.ttl: P300000000Y is outside the supported range",
            ),
            (
                Box::new(|s| s.offset = Some("P1000000Y".into())),
                "spec.offset: P1000000Y is outside the supported range",
            ),
            (
                Box::new(|s| s.offset = Some("-P300000000Y".into())),
                "spec.offset: -P300000000Y is outside the supported range",
            ),
            (
                Box::new(|s| s.history.ttl = "forever".into()),
                "spec.history.ttl: ",
            ),
            (
                Box::new(|s| s.retry.fatal_exit_codes = vec![0]),
                "spec.retry.fatalExitCodes: 0 means success",
            ),
            (
                Box::new(|s| {
                    s.template = WorkflowTemplate {
                        image: " ".into(),
                        ..Default::default()
                    }
                }),
                "spec.template.image: must not be empty",
            ),
            (
                Box::new(|s| {
                    s.template.secret = Some(SecretMount {
                        name: "x".into(),
                        mount_path: "etc".into(),
                    })
                }),
                "spec.template.secret.mountPath: \"etc\" must be an absolute path",
            ),
            (
                Box::new(|s| s.template.pod_overrides = Some(serde_json::json!([1]))),
                "spec.template.podOverrides: must be an object",
            ),
        ] {
            let mut s = spec("@hourly");
            mutate(&mut s);
            let errors = workflow(&s).unwrap_err();
            let text = message(&errors);
            assert!(text.starts_with(want), "got {text:?}, want {want:?}");
        }
    }

    #[test]
    fn every_problem_is_reported() {
        let mut s = spec("* * *");
        s.time_zone = "Nowhere".into();
        let errors = workflow(&s).unwrap_err();
        // The zone is only checked once the schedule parses; fixing one reveals the next.
        assert_eq!(errors.len(), 1);
        s.schedule = "@daily".into();
        s.retry.missing_dependency_exit_code = 0;
        let errors = workflow(&s).unwrap_err();
        let fields: Vec<&str> = errors.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(
            fields,
            ["spec.timeZone", "spec.retry.missingDependencyExitCode"]
        );
    }
}
