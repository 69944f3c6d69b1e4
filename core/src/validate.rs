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
    /// `spec.dependencyTimeout`, if set.
    pub dependency_timeout: Option<Duration>,
}

/// What the operator allows beyond the defaults (SPEC §7), passed in so validation stays pure.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Policy {
    /// `--allow-privileged-pods`: `podOverrides` may ask for privileged containers, host
    /// namespaces, `hostPath` volumes and `nodeName` (for clusters relying on Pod Security
    /// Admission alone).
    pub allow_privileged_pods: bool,
}

impl Policy {
    /// Everything allowed: for readers that only need the schedule (the operator still
    /// enforces its own policy on what runs).
    pub const PERMISSIVE: Policy = Policy {
        allow_privileged_pods: true,
    };
}

/// Validates a workflow spec under `policy`, collecting every problem rather than stopping at
/// the first.
pub fn workflow(spec: &WorkflowSpec, policy: Policy) -> Result<ValidWorkflow, Vec<FieldError>> {
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
    let running_timeout = positive(
        "spec.runningTimeout",
        spec.running_timeout.as_deref(),
        &mut errors,
    );
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
    let dependency_timeout = positive(
        "spec.dependencyTimeout",
        spec.dependency_timeout.as_deref(),
        &mut errors,
    );
    let mut upstream = std::collections::BTreeSet::new();
    for (i, dependency) in spec.depends_on.iter().enumerate() {
        let field = format!("spec.dependsOn[{i}].workflow");
        if let Err(reason) = object_name(&dependency.workflow) {
            errors.push(error(&field, reason));
        } else if !upstream.insert(dependency.workflow.as_str()) {
            errors.push(error(
                &field,
                format!("workflow {:?} is named twice", dependency.workflow),
            ));
        }
    }
    let mut pools = std::collections::BTreeSet::new();
    for (i, pool) in spec.pools.iter().enumerate() {
        let field = format!("spec.pools[{i}].name");
        if let Err(reason) = object_name(&pool.name) {
            errors.push(error(&field, reason));
        } else if !pools.insert(pool.name.as_str()) {
            errors.push(error(
                &field,
                format!("pool {:?} is named twice", pool.name),
            ));
        }
        if pool.slots == 0 {
            errors.push(error(
                &format!("spec.pools[{i}].slots"),
                "must be at least 1",
            ));
        }
    }
    if spec.priority > 100 {
        errors.push(error("spec.priority", "must be between 0 and 100"));
    }
    let template = &spec.template;
    if let Some(queue) = &template.queue_name
        && (queue.is_empty() || queue.len() > 63 || crate::names::label_value(queue) != *queue)
    {
        errors.push(error(
            "spec.template.queueName",
            format!("{queue:?} is not a valid label value (the name of a Kueue LocalQueue)"),
        ));
    }
    if template.steps.is_empty() {
        image("spec.template.image", &template.image, &mut errors);
    } else {
        errors.extend(steps(spec));
    }
    if let Some(array) = &template.array {
        errors.extend(array_spec(array, template));
    }
    if spec.retry.resume_from_failed_step && template.steps.is_empty() {
        errors.push(error(
            "spec.retry.resumeFromFailedStep",
            "needs spec.template.steps: only a pipeline has steps to resume from",
        ));
    }
    if let Some(storage) = &template.output_storage {
        if !is_quantity(&storage.size) {
            errors.push(error(
                "spec.template.outputStorage.size",
                format!(
                    "{:?} is not a quantity (for example 1Gi or 500Mi)",
                    storage.size
                ),
            ));
        }
        // "" is Kubernetes' "no class"; any other name must be one the API server takes.
        if let Some(class) = storage
            .storage_class_name
            .as_deref()
            .filter(|c| !c.is_empty())
            && let Err(reason) = object_name(class)
        {
            errors.push(error(
                "spec.template.outputStorage.storageClassName",
                reason,
            ));
        }
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
    container_fields(
        "spec.template",
        (&template.env, &template.command, &template.args),
        &mut errors,
    );
    if let Some(overrides) = &template.pod_overrides {
        if overrides.is_object() {
            errors.extend(pod_overrides(template, overrides, policy));
        } else {
            errors.push(error("spec.template.podOverrides", "must be an object"));
        }
    }
    match (schedule, errors.is_empty()) {
        (Some(schedule), true) => Ok(ValidWorkflow {
            schedule,
            running_timeout,
            history_ttl,
            dependency_timeout,
        }),
        _ => Err(errors),
    }
}

/// An image reference: not empty, no whitespace.
fn image(field: &str, image: &str, errors: &mut Vec<FieldError>) {
    if image.trim().is_empty() {
        errors.push(error(field, "must not be empty"));
    } else if image.chars().any(char::is_whitespace) {
        errors.push(error(field, format!("{image:?} is not an image reference")));
    }
}

/// Checks `spec.template.steps` (SPEC §14): what a pipeline may and must say.
fn steps(spec: &WorkflowSpec) -> Vec<FieldError> {
    let template = &spec.template;
    let mut errors = Vec::new();
    const SINGLE: &str = "not allowed with spec.template.steps: each step names its own";
    if !template.image.is_empty() {
        errors.push(error("spec.template.image", SINGLE));
    }
    if !template.command.is_empty() {
        errors.push(error("spec.template.command", SINGLE));
    }
    if !template.args.is_empty() {
        errors.push(error("spec.template.args", SINGLE));
    }
    if template.array.is_some() {
        errors.push(error(
            "spec.template.array",
            "cannot be combined with spec.template.steps",
        ));
    }
    let mut names = std::collections::BTreeSet::new();
    for (i, step) in template.steps.iter().enumerate() {
        let field = |name: &str| format!("spec.template.steps[{i}].{name}");
        if !crate::names::is_dns_label(&step.name) {
            errors.push(error(
                &field("name"),
                format!(
                    "{:?} is not a valid step name: a lowercase RFC 1123 label of at most 63 characters",
                    step.name
                ),
            ));
        } else if step.name == crate::pipeline::INSTALL_CONTAINER {
            errors.push(error(
                &field("name"),
                format!("{:?} is reserved for the launcher", step.name),
            ));
        } else if !names.insert(step.name.as_str()) {
            errors.push(error(
                &field("name"),
                format!("step {:?} is named twice", step.name),
            ));
        }
        image(&field("image"), &step.image, &mut errors);
        if step.command.is_empty() {
            errors.push(error(
                &field("command"),
                "required: the launcher runs the step's command and cannot read the image's entrypoint",
            ));
        }
        container_fields(
            &format!("spec.template.steps[{i}]"),
            (&step.env, &step.command, &step.args),
            &mut errors,
        );
        let output = step.output.as_str();
        let path_ok = output.starts_with('/') && !has_nul(output) && output.len() > 1;
        if !matches!(output, "stdout" | "stderr") && !path_ok {
            errors.push(error(
                &field("output"),
                format!("{output:?} must be stdout, stderr or an absolute path"),
            ));
        }
    }
    errors
}

/// Checks what a container is given at `base` (the template, or one step): env names the
/// API server accepts, and no NUL byte in env values, command or args.
fn container_fields(
    base: &str,
    (env, command, args): (&[k8s_openapi::api::core::v1::EnvVar], &[String], &[String]),
    errors: &mut Vec<FieldError>,
) {
    for (i, var) in env.iter().enumerate() {
        if let Err(reason) = env_name(&var.name) {
            errors.push(error(&format!("{base}.env[{i}].name"), reason));
        }
        if var.value.as_deref().is_some_and(has_nul) {
            errors.push(error(&format!("{base}.env[{i}].value"), NUL_REASON));
        }
    }
    for (name, list) in [("command", command), ("args", args)] {
        for (i, arg) in list.iter().enumerate() {
            if has_nul(arg) {
                errors.push(error(&format!("{base}.{name}[{i}]"), NUL_REASON));
            }
        }
    }
}

/// Checks `spec.template.array`.
fn array_spec(
    array: &crate::resources::ArraySpec,
    template: &crate::resources::WorkflowTemplate,
) -> Vec<FieldError> {
    let mut errors = Vec::new();
    if array.step < 1 {
        errors.push(error("spec.template.array.step", "must be at least 1"));
    } else if array.end < array.start {
        errors.push(error(
            "spec.template.array.end",
            format!("must be at least start ({})", array.start),
        ));
    } else if array.count() > crate::resources::MAX_ARRAY_TASKS {
        errors.push(error(
            "spec.template.array",
            format!(
                "{} tasks is more than the {} an array may have",
                array.count(),
                crate::resources::MAX_ARRAY_TASKS
            ),
        ));
    }
    if array.parallelism.is_some_and(|p| p < 1) {
        errors.push(error(
            "spec.template.array.parallelism",
            "must be at least 1",
        ));
    }
    if template.steps.is_empty() && template.command.is_empty() {
        errors.push(error(
            "spec.template.command",
            "required with spec.template.array: the launcher runs it for each task and cannot read the image's entrypoint",
        ));
    }
    errors
}

/// Whether `text` is a Kubernetes quantity in the forms a storage size takes (`1Gi`, `500M`,
/// `1.5Gi`, `1e9`).
fn is_quantity(text: &str) -> bool {
    let digits_end = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, suffix) = text.split_at(digits_end);
    let number_ok = !number.is_empty()
        && number.chars().filter(|c| *c == '.').count() <= 1
        && number.chars().any(|c| c.is_ascii_digit());
    let suffix_ok = matches!(
        suffix,
        "" | "Ki" | "Mi" | "Gi" | "Ti" | "Pi" | "Ei" | "k" | "M" | "G" | "T" | "P" | "E" | "m"
    ) || (suffix.starts_with(['e', 'E']) && suffix[1..].parse::<u32>().is_ok());
    number_ok && suffix_ok
}

/// The API server's rule for object names (DNS-1123 subdomain), with its message.
fn object_name(name: &str) -> Result<(), String> {
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    if name.is_empty() {
        Err("must not be empty".to_string())
    } else if name.len() > 253 {
        Err(format!(
            "must be no more than 253 characters (got {})",
            name.len()
        ))
    } else if !name.split('.').all(label_ok) {
        Err(format!(
            "{name:?} is not a valid object name: a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character"
        ))
    } else {
        Ok(())
    }
}

/// An optional positive ISO-8601 duration field.
fn positive(field: &str, text: Option<&str>, errors: &mut Vec<FieldError>) -> Option<Duration> {
    match text.map(IsoDuration::parse) {
        None => None,
        Some(Ok(d)) if d.is_negative() || d.is_zero() => {
            errors.push(error(field, "must be a positive duration"));
            None
        }
        Some(Ok(d)) => in_range(field, &d, errors),
        Some(Err(reason)) => {
            errors.push(error(field, reason));
            None
        }
    }
}

const NUL_REASON: &str = "must not contain a NUL byte";

fn has_nul(text: &str) -> bool {
    text.contains('\0')
}

/// The API server's rule for env var names: `[-._a-zA-Z][-._a-zA-Z0-9]*`.
pub fn env_name(name: &str) -> Result<(), String> {
    let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_');
    match name.chars().next() {
        None => Err("must not be empty".to_string()),
        Some(first) if first.is_ascii_digit() || !allowed(first) || !name.chars().all(allowed) => {
            Err(format!(
                "{name:?} is not a valid environment variable name: it must match [-._a-zA-Z][-._a-zA-Z0-9]*"
            ))
        }
        Some(_) => Ok(()),
    }
}

/// Checks `podOverrides` (a pod template merged onto Charon's): it must keep the `main`
/// container, and unless `policy` allows it, must not grant what lets a pod escape its
/// container (privilege, host namespaces, host paths, a chosen node).
fn pod_overrides(
    template: &crate::resources::WorkflowTemplate,
    overrides: &serde_json::Value,
    policy: Policy,
) -> Vec<FieldError> {
    let mut errors = Vec::new();
    if let Err(e) = crate::job::pod_template(template) {
        errors.push(error("spec.template.podOverrides", e.reason()));
    }
    if policy.allow_privileged_pods {
        return errors;
    }
    const REFUSED: &str =
        "refused by default; the operator allows it only with --allow-privileged-pods";
    let base = "spec.template.podOverrides.spec";
    let Some(spec) = overrides.get("spec") else {
        return errors;
    };
    for key in ["hostNetwork", "hostPID", "hostIPC"] {
        if spec.get(key) == Some(&serde_json::Value::Bool(true)) {
            errors.push(error(&format!("{base}.{key}"), REFUSED));
        }
    }
    if spec
        .get("nodeName")
        .is_some_and(|n| !n.is_null() && n.as_str() != Some(""))
    {
        errors.push(error(&format!("{base}.nodeName"), REFUSED));
    }
    let items = |key: &str| {
        spec.get(key)
            .and_then(serde_json::Value::as_array)
            .cloned()
            .unwrap_or_default()
    };
    for (i, volume) in items("volumes").iter().enumerate() {
        if volume.get("hostPath").is_some_and(|h| !h.is_null()) {
            errors.push(error(&format!("{base}.volumes[{i}].hostPath"), REFUSED));
        }
    }
    for key in ["containers", "initContainers", "ephemeralContainers"] {
        for (i, container) in items(key).iter().enumerate() {
            let Some(context) = container.get("securityContext") else {
                continue;
            };
            let field = format!("{base}.{key}[{i}].securityContext");
            for flag in ["privileged", "allowPrivilegeEscalation"] {
                if context.get(flag) == Some(&serde_json::Value::Bool(true)) {
                    errors.push(error(&format!("{field}.{flag}"), REFUSED));
                }
            }
            let added = context
                .get("capabilities")
                .and_then(|c| c.get("add"))
                .and_then(serde_json::Value::as_array);
            if added.is_some_and(|a| !a.is_empty()) {
                errors.push(error(&format!("{field}.capabilities.add"), REFUSED));
            }
        }
    }
    errors
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

/// Checks that Charon could have created `instance` (SPEC §7): its workflow exists, its name
/// is the one derived from workflow and parameter, its parameter is an aligned partition of
/// the workflow (as triggers record it: the partition re-rendered, with its logical time), and
/// a backfill trigger names an existing Backfill of that workflow. `workflow` and `backfill`
/// are what the instance's namespace holds under the names it gives. The error says why.
pub fn instance(
    instance: &crate::resources::WorkflowInstance,
    workflow: Option<&crate::resources::Workflow>,
    backfill: Option<&crate::resources::Backfill>,
) -> Result<(), String> {
    let spec = &instance.spec;
    let Some(workflow) = workflow else {
        return Err(format!(
            "spec.workflow: workflow {:?} does not exist in this namespace",
            spec.workflow
        ));
    };
    let expected = crate::names::instance_name(&spec.workflow, &spec.parameter);
    let name = instance.metadata.name.as_deref().unwrap_or_default();
    if name != expected {
        return Err(format!(
            "metadata.name: {name:?} is not the name derived from workflow {:?} and parameter {:?} ({expected:?})",
            spec.workflow, spec.parameter
        ));
    }
    // The partition check needs the schedule; a workflow whose spec is invalid is reported on
    // the workflow, and its instances wait for the fix.
    if let Ok(valid) = self::workflow(&workflow.spec, Policy::PERMISSIVE) {
        let schedule = &valid.schedule;
        let aligned = schedule
            .parse_parameter(&spec.parameter)
            .is_ok_and(|logical| {
                logical == spec.logical_time && schedule.parameter(logical) == spec.parameter
            });
        if !aligned {
            return Err(format!(
                "spec.parameter: {:?} at {} is not an aligned partition of workflow {:?}",
                spec.parameter,
                crate::partition::rfc3339(spec.logical_time),
                spec.workflow
            ));
        }
    }
    if spec.trigger.trigger_type == crate::resources::TriggerType::Backfill {
        match backfill {
            None => {
                return Err(format!(
                    "spec.trigger.id: backfill {:?} does not exist in this namespace",
                    spec.trigger.id
                ));
            }
            Some(b) if b.spec.workflow != spec.workflow => {
                return Err(format!(
                    "spec.trigger.id: backfill {:?} covers workflow {:?}, not {:?}",
                    spec.trigger.id, b.spec.workflow, spec.workflow
                ));
            }
            Some(_) => {}
        }
    }
    Ok(())
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

    fn dependency(workflow: &str) -> crate::resources::Dependency {
        crate::resources::Dependency {
            workflow: workflow.to_string(),
            partitions: crate::resources::PartitionMapping::Same,
        }
    }

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
        let valid = workflow(&s, Policy::default()).unwrap();
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
                    *s.template = WorkflowTemplate {
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
            (
                Box::new(|s| s.dependency_timeout = Some("PT0S".into())),
                "spec.dependencyTimeout: must be a positive duration",
            ),
            (
                Box::new(|s| s.dependency_timeout = Some("P300000000Y".into())),
                "spec.dependencyTimeout: P300000000Y is outside the supported range",
            ),
            (
                Box::new(|s| s.depends_on = vec![dependency("")]),
                "spec.dependsOn[0].workflow: must not be empty",
            ),
            (
                Box::new(|s| s.depends_on = vec![dependency("Ingest_é")]),
                "spec.dependsOn[0].workflow: \"Ingest_é\" is not a valid object name",
            ),
            (
                Box::new(|s| s.depends_on = vec![dependency(&"a".repeat(1 << 20))]),
                "spec.dependsOn[0].workflow: must be no more than 253 characters (got 1048576)",
            ),
            (
                Box::new(|s| s.depends_on = vec![dependency("ingest"), dependency("ingest")]),
                "spec.dependsOn[1].workflow: workflow \"ingest\" is named twice",
            ),
        ] {
            let mut s = spec("@hourly");
            mutate(&mut s);
            let errors = workflow(&s, Policy::default()).unwrap_err();
            let text = message(&errors);
            assert!(text.starts_with(want), "got {text:?}, want {want:?}");
        }
    }

    #[test]
    fn env_names_nul_bytes_and_the_main_container() {
        let mut s = spec("@hourly");
        s.template.env = serde_json::from_value(serde_json::json!([
            {"name": "A=B", "value": "x"},
            {"name": "1ST", "value": "x"},
            {"name": "ok.name-1_", "value": "a\0b"},
        ]))
        .unwrap();
        s.template.args = vec!["fine".into(), "bad\0".into()];
        s.template.command = vec!["\0".into()];
        s.template.pod_overrides = Some(serde_json::json!({
            "spec": {"containers": [{"name": "other", "image": "busybox"}]}
        }));
        let text = message(&workflow(&s, Policy::default()).unwrap_err());
        for want in [
            "spec.template.env[0].name: \"A=B\" is not a valid environment variable name",
            "spec.template.env[1].name: \"1ST\" is not a valid",
            "spec.template.env[2].value: must not contain a NUL byte",
            "spec.template.command[0]: must not contain a NUL byte",
            "spec.template.args[1]: must not contain a NUL byte",
            "spec.template.podOverrides: removes the \"main\" container",
        ] {
            assert!(text.contains(want), "{want:?} missing from {text:?}");
        }
        assert!(!text.contains("env[2].name"), "{text}");
        assert!(!text.contains("args[0]"), "{text}");
        // Overriding the main container itself is fine.
        let mut s = spec("@hourly");
        s.template.pod_overrides = Some(serde_json::json!({
            "spec": {"containers": [{"name": "main", "image": "busybox"}]}
        }));
        assert!(workflow(&s, Policy::default()).is_ok());
    }

    #[test]
    fn privileged_pod_overrides_are_refused_unless_allowed() {
        let mut s = spec("@hourly");
        s.template.pod_overrides = Some(serde_json::json!({"spec": {
            "hostNetwork": true, "hostPID": true, "hostIPC": true, "nodeName": "node-1",
            "volumes": [{"name": "ok", "emptyDir": {}}, {"name": "root", "hostPath": {"path": "/"}}],
            "containers": [{"name": "main", "securityContext": {
                "privileged": true, "allowPrivilegeEscalation": true,
                "capabilities": {"add": ["SYS_ADMIN"]}}}],
            "initContainers": [{"name": "init", "image": "busybox",
                "securityContext": {"privileged": true}}],
        }}));
        let errors = workflow(&s, Policy::default()).unwrap_err();
        let fields: Vec<&str> = errors.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(
            fields,
            [
                "spec.template.podOverrides.spec.hostNetwork",
                "spec.template.podOverrides.spec.hostPID",
                "spec.template.podOverrides.spec.hostIPC",
                "spec.template.podOverrides.spec.nodeName",
                "spec.template.podOverrides.spec.volumes[1].hostPath",
                "spec.template.podOverrides.spec.containers[0].securityContext.privileged",
                "spec.template.podOverrides.spec.containers[0].securityContext.allowPrivilegeEscalation",
                "spec.template.podOverrides.spec.containers[0].securityContext.capabilities.add",
                "spec.template.podOverrides.spec.initContainers[0].securityContext.privileged",
            ]
        );
        assert!(errors[0].reason.contains("--allow-privileged-pods"));
        let allowed = Policy {
            allow_privileged_pods: true,
        };
        assert!(workflow(&s, allowed).is_ok());
        // Safe settings stay allowed by default.
        s.template.pod_overrides = Some(serde_json::json!({"spec": {
            "hostNetwork": false, "priorityClassName": "batch",
            "containers": [{"name": "main", "securityContext": {
                "privileged": false, "allowPrivilegeEscalation": false,
                "capabilities": {"drop": ["ALL"], "add": []}}}],
        }}));
        assert!(workflow(&s, Policy::default()).is_ok());
    }

    #[test]
    fn hand_made_instances_are_refused_with_the_reason() {
        use crate::resources::{Backfill, Workflow, WorkflowInstance};
        let workflow: Workflow = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "w", "namespace": "ns"},
            "spec": {"schedule": "@hourly", "template": {"image": "busybox"}},
        }))
        .unwrap();
        let backfill = |of: &str| -> Backfill {
            serde_json::from_value(serde_json::json!({
                "metadata": {"name": "bf", "namespace": "ns"},
                "spec": {"workflow": of, "start": "2024-01-01T00", "end": "2024-01-02T00"},
            }))
            .unwrap()
        };
        let instance = |name: &str, parameter: &str, logical: &str, trigger: &str| {
            let instance: WorkflowInstance = serde_json::from_value(serde_json::json!({
                "metadata": {"name": name, "namespace": "ns"},
                "spec": {"workflow": "w", "parameter": parameter, "logicalTime": logical,
                    "trigger": {"type": trigger, "id": if trigger == "backfill" { "bf" } else { trigger }}},
            }))
            .unwrap();
            instance
        };
        let good = instance(
            "w-2024-01-01t05",
            "2024-01-01T05",
            "2024-01-01T05:00:00Z",
            "natural",
        );
        assert_eq!(self::instance(&good, Some(&workflow), None), Ok(()));
        let bf = backfill("w");
        let by_backfill = instance(
            "w-2024-01-01t05",
            "2024-01-01T05",
            "2024-01-01T05:00:00Z",
            "backfill",
        );
        assert_eq!(
            self::instance(&by_backfill, Some(&workflow), Some(&bf)),
            Ok(())
        );
        for (i, bf, want) in [
            (&good, None, "spec.workflow: workflow \"w\" does not exist"),
            (
                &instance("evil", "2024-01-01T05", "2024-01-01T05:00:00Z", "natural"),
                Some(&workflow),
                "metadata.name: \"evil\" is not the name derived",
            ),
            (
                &instance(
                    "w-2024-01-01t05-30",
                    "2024-01-01T05:30",
                    "2024-01-01T05:30:00Z",
                    "adhoc",
                ),
                Some(&workflow),
                "spec.parameter: \"2024-01-01T05:30\"",
            ),
            (
                &instance(
                    "w-2024-01-01t05",
                    "2024-01-01T05",
                    "2024-01-01T06:00:00Z",
                    "natural",
                ),
                Some(&workflow),
                "spec.parameter: \"2024-01-01T05\" at 2024-01-01T06:00:00Z is not an aligned",
            ),
            (
                &instance("w-garbage", "garbage", "2024-01-01T05:00:00Z", "natural"),
                Some(&workflow),
                "spec.parameter: \"garbage\"",
            ),
        ] {
            let err = self::instance(i, bf, None).unwrap_err();
            assert!(err.starts_with(want), "got {err:?}, want {want:?}");
        }
        let err = self::instance(&by_backfill, Some(&workflow), None).unwrap_err();
        assert!(
            err.starts_with("spec.trigger.id: backfill \"bf\" does not exist"),
            "{err}"
        );
        let other = backfill("x");
        let err = self::instance(&by_backfill, Some(&workflow), Some(&other)).unwrap_err();
        assert!(err.contains("covers workflow \"x\""), "{err}");
    }

    #[test]
    fn every_problem_is_reported() {
        let mut s = spec("* * *");
        s.time_zone = "Nowhere".into();
        let errors = workflow(&s, Policy::default()).unwrap_err();
        // The zone is only checked once the schedule parses; fixing one reveals the next.
        assert_eq!(errors.len(), 1);
        s.schedule = "@daily".into();
        s.retry.missing_dependency_exit_code = 0;
        let errors = workflow(&s, Policy::default()).unwrap_err();
        let fields: Vec<&str> = errors.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(
            fields,
            ["spec.timeZone", "spec.retry.missingDependencyExitCode"]
        );
    }

    fn pipeline_spec(template: serde_json::Value) -> WorkflowSpec {
        serde_json::from_value(serde_json::json!({"schedule": "@hourly", "template": template}))
            .unwrap()
    }

    fn messages(spec: &WorkflowSpec) -> Vec<String> {
        match workflow(spec, Policy::default()) {
            Ok(_) => vec![],
            Err(errors) => errors.iter().map(ToString::to_string).collect(),
        }
    }

    #[test]
    fn pipelines_and_arrays_name_the_field_and_the_reason() {
        let ok = pipeline_spec(serde_json::json!({"steps": [
            {"name": "words", "image": "busybox", "command": ["sh", "-c", "echo a"]},
            {"name": "upper", "image": "busybox", "command": ["tr", "a-z", "A-Z"], "output": "/tmp/x"},
        ]}));
        assert_eq!(messages(&ok), Vec::<String>::new());
        let mut resumable = ok.clone();
        resumable.retry.resume_from_failed_step = true;
        assert_eq!(messages(&resumable), Vec::<String>::new());
        for (template, want) in [
            (
                serde_json::json!({"image": "busybox", "steps": [
                    {"name": "a", "image": "busybox", "command": ["true"]}]}),
                "spec.template.image: not allowed with spec.template.steps",
            ),
            (
                serde_json::json!({"steps": [{"name": "a", "image": "busybox", "command": ["true"]}],
                    "command": ["x"]}),
                "spec.template.command: not allowed with spec.template.steps",
            ),
            (
                serde_json::json!({}),
                "spec.template.image: must not be empty",
            ),
            (
                serde_json::json!({"steps": [{"name": "Bad_Name", "image": "busybox", "command": ["true"]}]}),
                "spec.template.steps[0].name: \"Bad_Name\" is not a valid step name",
            ),
            (
                serde_json::json!({"steps": [
                    {"name": "a", "image": "busybox", "command": ["true"]},
                    {"name": "a", "image": "busybox", "command": ["true"]}]}),
                "spec.template.steps[1].name: step \"a\" is named twice",
            ),
            (
                serde_json::json!({"steps": [{"name": "charon-launcher", "image": "busybox", "command": ["true"]}]}),
                "spec.template.steps[0].name: \"charon-launcher\" is reserved",
            ),
            (
                serde_json::json!({"steps": [{"name": "a", "image": "busybox"}]}),
                "spec.template.steps[0].command: required",
            ),
            (
                serde_json::json!({"steps": [{"name": "a", "image": "busybox", "command": ["true"],
                    "env": [{"name": "1ST", "value": "x"}]}]}),
                "spec.template.steps[0].env[0].name: \"1ST\" is not a valid",
            ),
            (
                serde_json::json!({"steps": [{"name": "a", "image": "busybox", "command": ["true"],
                    "args": ["ok", "bad\u{0}"]}]}),
                "spec.template.steps[0].args[1]: must not contain a NUL byte",
            ),
            (
                serde_json::json!({"steps": [{"name": "a", "image": "", "command": ["true"]}]}),
                "spec.template.steps[0].image: must not be empty",
            ),
            (
                serde_json::json!({"steps": [{"name": "a", "image": "busybox", "command": ["true"], "output": "out.txt"}]}),
                "spec.template.steps[0].output: \"out.txt\" must be stdout, stderr or an absolute path",
            ),
            (
                serde_json::json!({"steps": [{"name": "a", "image": "busybox", "command": ["true"]}],
                    "array": {"start": 0, "end": 3}}),
                "spec.template.array: cannot be combined with spec.template.steps",
            ),
            (
                serde_json::json!({"image": "busybox", "command": ["true"], "array": {"start": 5, "end": 3}}),
                "spec.template.array.end: must be at least start (5)",
            ),
            (
                serde_json::json!({"image": "busybox", "command": ["true"], "array": {"start": 0, "end": 3, "step": 0}}),
                "spec.template.array.step: must be at least 1",
            ),
            (
                serde_json::json!({"image": "busybox", "command": ["true"], "array": {"start": 0, "end": 100000}}),
                "spec.template.array: 100001 tasks is more than the 100000",
            ),
            (
                serde_json::json!({"image": "busybox", "array": {"start": 0, "end": 3}}),
                "spec.template.command: required with spec.template.array",
            ),
            (
                serde_json::json!({"image": "busybox", "command": ["true"], "array": {"start": i64::MIN, "end": i64::MAX}}),
                "spec.template.array: 9223372036854775807 tasks is more than",
            ),
            (
                serde_json::json!({"steps": [{"name": "a", "image": "busybox", "command": ["true"]}],
                    "outputStorage": {"size": "lots"}}),
                "spec.template.outputStorage.size: \"lots\" is not a quantity",
            ),
            (
                serde_json::json!({"steps": [{"name": "a", "image": "busybox", "command": ["true"]}],
                    "outputStorage": {"storageClassName": "Fast SSD"}}),
                "spec.template.outputStorage.storageClassName: \"Fast SSD\" is not a valid object name",
            ),
        ] {
            let got = messages(&pipeline_spec(template.clone()));
            assert!(
                got.iter().any(|m| m.starts_with(want)),
                "{template}: want {want:?}, got {got:?}"
            );
        }
        let mut single = spec("@hourly");
        single.retry.resume_from_failed_step = true;
        assert!(
            messages(&single)[0]
                .starts_with("spec.retry.resumeFromFailedStep: needs spec.template.steps")
        );
    }
}
