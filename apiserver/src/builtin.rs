//! Defaults and checks the real server applies to built-in kinds when they are created:
//! the ones Pods and Jobs need to be usable by controllers (a Job's generated selector and
//! pod labels, container defaults) and the errors clients most often meet. Storage kinds
//! are checked in `storage.rs`.

use serde_json::{Value, json};

use crate::error::FieldError;
use crate::registry::ResourceType;

/// Defaults and validates a new Pod or Job, once its name and uid are set; other kinds pass
/// unchanged (the install-manifest kinds have their own module, which builds on this one's
/// pod spec checks).
pub fn prepare_create(t: &ResourceType, obj: &mut Value) -> Result<(), Vec<FieldError>> {
    match (t.group.as_str(), t.plural.as_str()) {
        ("batch", "jobs") => job(obj),
        ("", "pods") => {
            let spec = obj.get_mut("spec");
            let errors = match spec {
                Some(spec) => pod_spec(spec, "spec", false),
                None => vec![FieldError::required("spec.containers", String::new())],
            };
            if errors.is_empty() {
                obj["status"] = json!({"phase": "Pending"});
                Ok(())
            } else {
                Err(errors)
            }
        }
        ("", "persistentvolumeclaims") => errors_or_ok(crate::storage::prepare_claim(obj)),
        ("", "persistentvolumes") => errors_or_ok(crate::storage::prepare_volume(obj)),
        (crate::storage::STORAGE_GROUP, "storageclasses") => {
            errors_or_ok(crate::storage::prepare_class(obj))
        }
        _ => Ok(()),
    }
}

fn errors_or_ok(errors: Vec<FieldError>) -> Result<(), Vec<FieldError>> {
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors)
    }
}

fn job(obj: &mut Value) -> Result<(), Vec<FieldError>> {
    let name = obj["metadata"]["name"].clone();
    let uid = obj["metadata"]["uid"].clone();
    if !obj.get("spec").is_some_and(Value::is_object) {
        obj["spec"] = json!({});
    }
    let spec = &mut obj["spec"];
    // With a per-index limit the global one no longer bounds anything by default.
    let backoff_limit = if spec
        .get("backoffLimitPerIndex")
        .is_some_and(|v| !v.is_null())
    {
        json!(i32::MAX)
    } else {
        json!(6)
    };
    for (field, default) in [
        ("parallelism", json!(1)),
        ("completions", json!(1)),
        ("backoffLimit", backoff_limit),
        ("completionMode", json!("NonIndexed")),
        ("suspend", json!(false)),
        ("podReplacementPolicy", json!("TerminatingOrFailed")),
    ] {
        if spec.get(field).is_none() {
            spec[field] = default;
        }
    }
    let manual = spec.get("manualSelector") == Some(&Value::Bool(true));
    if !manual {
        // The real server generates a selector on the Job's uid and labels its pods with it.
        spec["selector"] = json!({"matchLabels": {"batch.kubernetes.io/controller-uid": uid}});
        if !spec.get("template").is_some_and(Value::is_object) {
            spec["template"] = json!({});
        }
        let template = &mut spec["template"];
        if !template.get("metadata").is_some_and(Value::is_object) {
            template["metadata"] = json!({});
        }
        let labels = &mut template["metadata"]["labels"];
        if !labels.is_object() {
            *labels = json!({});
        }
        labels["batch.kubernetes.io/controller-uid"] = uid.clone();
        labels["batch.kubernetes.io/job-name"] = name.clone();
        labels["controller-uid"] = uid;
        labels["job-name"] = name;
    }
    let mut errors = job_spec(spec);
    match spec.pointer_mut("/template/spec") {
        Some(pod) => errors.extend(pod_spec(pod, "spec.template.spec", true)),
        None => errors.push(FieldError::required(
            "spec.template.spec.containers",
            String::new(),
        )),
    }
    errors.extend(indexed_hostname(obj));
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors)
    }
}

/// An Indexed Job's parallelism is capped so `status.completedIndexes` stays bounded.
const MAX_PARALLELISM_FOR_INDEXED_JOB: i64 = 100_000;
/// Likewise for `status.failedIndexes`.
const MAX_FAILED_INDEXES_FOR_INDEXED_JOB: i64 = 100_000;
const COMPLETIONS_SOFT_LIMIT: i64 = 100_000;
const PARALLELISM_LIMIT_FOR_HIGH_COMPLETIONS: i64 = 10_000;
const MAX_FAILED_INDEXES_LIMIT_FOR_HIGH_COMPLETIONS: i64 = 10_000;

/// The counters and completion-mode rules of `validateJobSpec`, in its order and words.
fn job_spec(spec: &Value) -> Vec<FieldError> {
    let mut errors = Vec::new();
    let number = |field: &str| spec.get(field).filter(|v| !v.is_null());
    let int = |field: &str| number(field).and_then(Value::as_i64);
    for field in [
        "parallelism",
        "completions",
        "activeDeadlineSeconds",
        "backoffLimit",
        "ttlSecondsAfterFinished",
        "backoffLimitPerIndex",
        "maxFailedIndexes",
    ] {
        if let Some(n) = int(field).filter(|n| *n < 0) {
            errors.push(FieldError::invalid(
                format!("spec.{field}"),
                &json!(n),
                "must be greater than or equal to 0".to_string(),
            ));
        }
        if field == "maxFailedIndexes"
            && number(field).is_some()
            && number("backoffLimitPerIndex").is_none()
        {
            errors.push(FieldError::required(
                "spec.backoffLimitPerIndex",
                "when maxFailedIndexes is specified".to_string(),
            ));
        }
    }
    let mode = number("completionMode");
    let indexed = mode.is_some_and(|m| m == "Indexed");
    if let Some(mode) = mode {
        if !indexed && mode != "NonIndexed" {
            errors.push(FieldError::not_supported(
                "spec.completionMode",
                mode,
                &[json!("NonIndexed"), json!("Indexed")],
            ));
        }
        if indexed {
            let completions = int("completions");
            let parallelism = int("parallelism");
            let max_failed = int("maxFailedIndexes");
            if number("completions").is_none() {
                errors.push(FieldError::required(
                    "spec.completions",
                    "when completion mode is Indexed".to_string(),
                ));
            }
            if let Some(p) = parallelism.filter(|p| *p > MAX_PARALLELISM_FOR_INDEXED_JOB) {
                errors.push(FieldError::invalid(
                    "spec.parallelism",
                    &json!(p),
                    format!("must be less than or equal to {MAX_PARALLELISM_FOR_INDEXED_JOB} when completion mode is Indexed"),
                ));
            }
            if let (Some(c), Some(m)) = (completions, max_failed)
                && m > c
            {
                errors.push(FieldError::invalid(
                    "spec.maxFailedIndexes",
                    &json!(m),
                    "must be less than or equal to completions".to_string(),
                ));
            }
            if let Some(m) = max_failed.filter(|m| *m > MAX_FAILED_INDEXES_FOR_INDEXED_JOB) {
                errors.push(FieldError::invalid(
                    "spec.maxFailedIndexes",
                    &json!(m),
                    format!("must be less than or equal to {MAX_FAILED_INDEXES_FOR_INDEXED_JOB}"),
                ));
            }
            let high = completions.is_some_and(|c| c > COMPLETIONS_SOFT_LIMIT);
            if high && number("backoffLimitPerIndex").is_some() {
                let tail = format!(
                    "when completions are above {COMPLETIONS_SOFT_LIMIT} and used with backoff limit per index"
                );
                if number("maxFailedIndexes").is_none() {
                    errors.push(FieldError::required(
                        "spec.maxFailedIndexes",
                        format!(
                            "must be specified when completions is above {COMPLETIONS_SOFT_LIMIT}"
                        ),
                    ));
                }
                if let Some(p) = parallelism.filter(|p| *p > PARALLELISM_LIMIT_FOR_HIGH_COMPLETIONS)
                {
                    errors.push(FieldError::invalid(
                        "spec.parallelism",
                        &json!(p),
                        format!("must be less than or equal to {PARALLELISM_LIMIT_FOR_HIGH_COMPLETIONS} {tail}"),
                    ));
                }
                if let Some(m) =
                    max_failed.filter(|m| *m > MAX_FAILED_INDEXES_LIMIT_FOR_HIGH_COMPLETIONS)
                {
                    errors.push(FieldError::invalid(
                        "spec.maxFailedIndexes",
                        &json!(m),
                        format!("must be less than or equal to {MAX_FAILED_INDEXES_LIMIT_FOR_HIGH_COMPLETIONS} {tail}"),
                    ));
                }
            }
        }
    }
    if mode.is_none_or(|m| m == "NonIndexed") {
        for field in ["backoffLimitPerIndex", "maxFailedIndexes"] {
            if let Some(v) = number(field) {
                errors.push(FieldError::invalid(
                    format!("spec.{field}"),
                    v,
                    "requires indexed completion mode".to_string(),
                ));
            }
        }
    }
    errors
}

/// `ValidateJob`'s check that the hostname of an Indexed Job's last pod (`<name>-<index>`)
/// is a DNS label, since the controller could not create that pod otherwise.
fn indexed_hostname(obj: &Value) -> Vec<FieldError> {
    let spec = &obj["spec"];
    let completions = spec.get("completions").and_then(Value::as_i64);
    let (true, Some(c)) = (
        spec["completionMode"] == "Indexed",
        completions.filter(|c| *c > 0),
    ) else {
        return Vec::new();
    };
    let name = obj["metadata"]["name"].as_str().unwrap_or_default();
    let hostname = format!("{name}-{}", c - 1);
    if crate::validation::is_dns_label(&hostname) {
        return Vec::new();
    }
    vec![FieldError::invalid(
        "metadata.name",
        &json!(name),
        format!("will not able to create pod with invalid DNS label: {hostname}"),
    )]
}

/// Checks an update to a Job or PersistentVolumeClaim for fields that may not change, as
/// the real server's update validation does; other kinds pass.
pub fn validate_update(t: &ResourceType, old: &Value, new: &Value) -> Vec<FieldError> {
    match (t.group.as_str(), t.plural.as_str()) {
        ("batch", "jobs") => {
            let mut errors = Vec::new();
            // An update is defaulted like a create: no completionMode is NonIndexed.
            let non_indexed = json!("NonIndexed");
            for (field, default) in [
                ("completionMode", &non_indexed),
                ("backoffLimitPerIndex", &Value::Null),
            ] {
                let pointer = format!("/spec/{field}");
                let value = |v: &'_ Value| {
                    v.pointer(&pointer)
                        .filter(|x| !x.is_null())
                        .unwrap_or(default)
                        .clone()
                };
                let after = value(new);
                if value(old) != after {
                    errors.push(FieldError::invalid(
                        format!("spec.{field}"),
                        &after,
                        "field is immutable".to_string(),
                    ));
                }
            }
            errors
        }
        ("", "persistentvolumeclaims") => crate::storage::claim_update(old, new),
        _ => Vec::new(),
    }
}

/// Defaults and checks the pod spec at `path`; in a Job's template the restart policy must be
/// `OnFailure` or `Never`. The install-manifest kinds check their pod templates with it too.
pub(crate) fn pod_spec(spec: &mut Value, path: &str, in_job: bool) -> Vec<FieldError> {
    let mut errors = Vec::new();
    for (field, default) in [
        ("dnsPolicy", json!("ClusterFirst")),
        ("schedulerName", json!("default-scheduler")),
        ("terminationGracePeriodSeconds", json!(30)),
        ("securityContext", json!({})),
    ] {
        if spec.get(field).is_none() {
            spec[field] = default;
        }
    }
    if !in_job && spec.get("restartPolicy").is_none() {
        spec["restartPolicy"] = json!("Always");
    }
    if in_job {
        match spec.get("restartPolicy").and_then(Value::as_str) {
            Some("OnFailure" | "Never") => {}
            None => errors.push(FieldError::required(
                format!("{path}.restartPolicy"),
                "valid values: \"OnFailure\", \"Never\"".to_string(),
            )),
            Some(other) => errors.push(FieldError::not_supported(
                format!("{path}.restartPolicy"),
                &json!(other),
                &[json!("OnFailure"), json!("Never")],
            )),
        }
    }
    match spec.get_mut("containers").and_then(Value::as_array_mut) {
        Some(containers) if !containers.is_empty() => {
            for (i, c) in containers.iter_mut().enumerate() {
                container(c, &format!("{path}.containers[{i}]"), &mut errors);
            }
        }
        _ => errors.push(FieldError::required(
            format!("{path}.containers"),
            String::new(),
        )),
    }
    errors.extend(crate::validation::pod_volumes(spec, path));
    errors
}

fn container(c: &mut Value, path: &str, errors: &mut Vec<FieldError>) {
    let text = |c: &Value, k: &str| {
        c.get(k)
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string()
    };
    if text(c, "name").is_empty() {
        errors.push(FieldError::required(format!("{path}.name"), String::new()));
    }
    let image = text(c, "image");
    if image.is_empty() {
        errors.push(FieldError::required(format!("{path}.image"), String::new()));
    }
    if c.get("imagePullPolicy").is_none() {
        // `:latest` or no tag pulls always, as the real defaulting does.
        let tag = image
            .rsplit('/')
            .next()
            .and_then(|last| last.split_once(':'))
            .map(|(_, t)| t);
        let always = !image.contains('@') && matches!(tag, None | Some("latest"));
        c["imagePullPolicy"] = json!(if always { "Always" } else { "IfNotPresent" });
    }
    for (field, default) in [
        ("terminationMessagePath", json!("/dev/termination-log")),
        ("terminationMessagePolicy", json!("File")),
        ("resources", json!({})),
    ] {
        if c.get(field).is_none() {
            c[field] = default;
        }
    }
}
