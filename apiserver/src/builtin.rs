//! Defaults and checks the real server applies to built-in kinds when they are created:
//! the ones Pods and Jobs need to be usable by controllers (a Job's generated selector and
//! pod labels, container defaults) and the errors clients most often meet.

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
        _ => Ok(()),
    }
}

fn job(obj: &mut Value) -> Result<(), Vec<FieldError>> {
    let name = obj["metadata"]["name"].clone();
    let uid = obj["metadata"]["uid"].clone();
    if !obj.get("spec").is_some_and(Value::is_object) {
        obj["spec"] = json!({});
    }
    let spec = &mut obj["spec"];
    for (field, default) in [
        ("parallelism", json!(1)),
        ("completions", json!(1)),
        ("backoffLimit", json!(6)),
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
    let errors = match spec.pointer_mut("/template/spec") {
        Some(pod) => pod_spec(pod, "spec.template.spec", true),
        None => vec![FieldError::required(
            "spec.template.spec.containers",
            String::new(),
        )],
    };
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors)
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
