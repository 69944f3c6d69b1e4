//! What every execution sees (SPEC §8): the Job of one attempt, rendered from the workflow's
//! template and the instance as a pure function.
//!
//! Jobs are immutable snapshots: one Job per execution, named `<instance>-<execution>`, owned by
//! the instance so deleting the instance deletes its Jobs.

use std::collections::BTreeMap;

use chrono::{DateTime, Duration, Utc};
use k8s_openapi::api::batch::v1::{Job, JobSpec};
use k8s_openapi::api::core::v1::{
    Container, EnvVar, PodSpec, PodTemplateSpec, SecretVolumeSource, Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use thiserror::Error;

use crate::archive;
use crate::names;
use crate::partition::{rfc3339, substitute};
use crate::resources::{
    ExecutionSnapshot, TriggerType, Workflow, WorkflowInstance, WorkflowTemplate,
};
use crate::schedule::IsoDuration;

/// Label carrying the workflow's name.
pub const LABEL_WORKFLOW: &str = "charon.dev/workflow";
/// Label carrying the instance's name.
pub const LABEL_INSTANCE: &str = "charon.dev/instance";
/// Label carrying the execution number.
pub const LABEL_EXECUTION: &str = "charon.dev/execution";
/// Label carrying the trigger type.
pub const LABEL_TRIGGER_TYPE: &str = "charon.dev/trigger-type";
/// Name of the container that runs the workload.
pub const MAIN_CONTAINER: &str = "main";
/// Name of the volume holding `spec.template.secret`.
pub const SECRET_VOLUME: &str = "charon-secret";

/// Everything about one execution that is not in the workflow template.
#[derive(Clone, Debug, PartialEq)]
pub struct Execution<'a> {
    /// Namespace of the workflow and instance.
    pub namespace: &'a str,
    /// The workflow's name.
    pub workflow: &'a str,
    /// The instance's name.
    pub instance: &'a str,
    /// The instance's uid, for the ownerReference.
    pub instance_uid: &'a str,
    /// The partition's parameter.
    pub parameter: &'a str,
    /// The partition's logical instant.
    pub logical_time: DateTime<Utc>,
    /// What triggered the run.
    pub trigger_type: TriggerType,
    /// The trigger's id.
    pub trigger_id: &'a str,
    /// The execution number (1-based, across runs).
    pub execution: u32,
    /// Attempts of this run before this one (0 on the first).
    pub tries_before: u32,
    /// Env of the trigger, overlaying the workflow's.
    pub trigger_env: &'a [EnvVar],
    /// `spec.runningTimeout` in seconds.
    pub running_timeout_seconds: Option<i64>,
    /// `spec.styxCompatibleEnv`.
    pub styx_compatible_env: bool,
    /// A log store keeps this execution's log: its pod is held by
    /// [`archive::FINALIZER`](crate::archive::FINALIZER) until the log is archived.
    pub log_archive: bool,
}

impl<'a> Execution<'a> {
    /// Execution `execution` of a stored instance, whose namespace, name and uid are passed
    /// in as the object has them, with `tries_before` earlier attempts in its run and the
    /// workflow's settings: what the controller renders every attempt's Job from.
    pub fn of(
        workflow: &Workflow,
        instance: &'a WorkflowInstance,
        (namespace, name, uid): (&'a str, &'a str, &'a str),
        execution: u32,
        tries_before: u32,
    ) -> Execution<'a> {
        Execution {
            namespace,
            workflow: &instance.spec.workflow,
            instance: name,
            instance_uid: uid,
            parameter: &instance.spec.parameter,
            logical_time: instance.spec.logical_time,
            trigger_type: instance.spec.trigger.trigger_type,
            trigger_id: &instance.spec.trigger.id,
            execution,
            tries_before,
            trigger_env: &instance.spec.env,
            running_timeout_seconds: running_timeout(workflow)
                .map(|d| d.num_seconds())
                .filter(|s| *s > 0),
            styx_compatible_env: workflow.spec.styx_compatible_env,
            log_archive: false,
        }
    }
}

/// `spec.runningTimeout`, when set to a positive duration: enforced by the controller and
/// given to the Job as its deadline.
pub fn running_timeout(workflow: &Workflow) -> Option<Duration> {
    workflow
        .spec
        .running_timeout
        .as_deref()
        .and_then(|t| IsoDuration::parse(t).ok())
        .filter(|d| d.check_range().is_ok())
        .and_then(|d| d.approximate())
        .filter(|d| *d > Duration::zero())
}

/// The pod template a workflow's Jobs get, rendered for a placeholder execution: how
/// validation finds `podOverrides` that break it before any instance runs.
pub fn pod_template(template: &WorkflowTemplate) -> Result<PodTemplateSpec, RenderError> {
    let execution = Execution {
        namespace: "validation",
        workflow: "validation",
        instance: "validation",
        instance_uid: "",
        parameter: "",
        logical_time: DateTime::<Utc>::UNIX_EPOCH,
        trigger_type: TriggerType::Natural,
        trigger_id: "natural",
        execution: 1,
        tries_before: 0,
        trigger_env: &[],
        running_timeout_seconds: None,
        styx_compatible_env: false,
        log_archive: false,
    };
    let job = render(template, &snapshot(template, "", None), &execution)?;
    Ok(job.spec.map(|s| s.template).unwrap_or_default())
}

/// Why a Job could not be rendered; permanent until the workflow changes.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum RenderError {
    /// `spec.template.podOverrides` does not fit a pod template.
    #[error("spec.template.podOverrides: {0}")]
    PodOverrides(String),
}

impl RenderError {
    /// The reason without the field name.
    pub fn reason(&self) -> &str {
        match self {
            RenderError::PodOverrides(reason) => reason,
        }
    }
}

/// The snapshot Prepare takes: image, `{}`-substituted command and args, and the workflow env.
pub fn snapshot(
    template: &WorkflowTemplate,
    parameter: &str,
    generation: Option<i64>,
) -> ExecutionSnapshot {
    ExecutionSnapshot {
        image: template.image.clone(),
        command: substitute(&template.command, parameter),
        args: substitute(&template.args, parameter),
        env: template.env.clone(),
        workflow_generation: generation,
    }
}

/// The container env in increasing precedence: workflow env, trigger env, reserved names.
/// A later definition of a name replaces an earlier one in place.
pub fn environment(
    template: &WorkflowTemplate,
    snapshot: &ExecutionSnapshot,
    execution: &Execution<'_>,
) -> Vec<EnvVar> {
    let mut env: Vec<EnvVar> = Vec::new();
    let mut set = |var: EnvVar| match env.iter_mut().find(|e| e.name == var.name) {
        Some(existing) => *existing = var,
        None => env.push(var),
    };
    for var in snapshot.env.iter().chain(execution.trigger_env) {
        set(var.clone());
    }
    let job = names::job_name(execution.instance, execution.execution);
    let args = snapshot.args.join(" ");
    let tries = execution.tries_before.to_string();
    let logical = rfc3339(execution.logical_time);
    let mut reserved: Vec<(&str, &str)> = vec![
        ("CHARON_WORKFLOW", execution.workflow),
        ("CHARON_NAMESPACE", execution.namespace),
        ("CHARON_INSTANCE", execution.instance),
        ("CHARON_PARAMETER", execution.parameter),
        ("CHARON_LOGICAL_TIME", &logical),
        ("CHARON_TRIGGER_TYPE", execution.trigger_type.as_str()),
        ("CHARON_TRIGGER_ID", execution.trigger_id),
        ("CHARON_EXECUTION_ID", &job),
        ("CHARON_EXECUTION_TRIES", &tries),
        ("CHARON_IMAGE", &snapshot.image),
        ("CHARON_ARGS", &args),
    ];
    let service_account = template.service_account_name.clone().unwrap_or_default();
    if execution.styx_compatible_env {
        reserved.extend([
            ("STYX_COMPONENT_ID", execution.namespace),
            ("STYX_WORKFLOW_ID", execution.workflow),
            ("STYX_PARAMETER", execution.parameter),
            ("STYX_SERVICE_ACCOUNT", service_account.as_str()),
            ("STYX_DOCKER_ARGS", &args),
            ("STYX_DOCKER_IMAGE", &snapshot.image),
            ("STYX_TRIGGER_ID", execution.trigger_id),
            ("STYX_TRIGGER_TYPE", execution.trigger_type.as_str()),
            ("STYX_EXECUTION_ID", &job),
            ("STYX_EXECUTION_COUNTER", &tries),
        ]);
    }
    for (name, value) in reserved {
        set(EnvVar {
            name: name.to_string(),
            value: Some(value.to_string()),
            value_from: None,
        });
    }
    env
}

/// The labels every Job and pod of an execution carries.
pub fn labels(execution: &Execution<'_>) -> BTreeMap<String, String> {
    BTreeMap::from([
        (
            LABEL_WORKFLOW.to_string(),
            names::label_value(execution.workflow),
        ),
        (
            LABEL_INSTANCE.to_string(),
            names::label_value(execution.instance),
        ),
        (LABEL_EXECUTION.to_string(), execution.execution.to_string()),
        (
            LABEL_TRIGGER_TYPE.to_string(),
            execution.trigger_type.as_str().to_string(),
        ),
    ])
}

/// Renders the Job of one execution.
pub fn render(
    template: &WorkflowTemplate,
    snapshot: &ExecutionSnapshot,
    execution: &Execution<'_>,
) -> Result<Job, RenderError> {
    let labels = labels(execution);
    let env = environment(template, snapshot, execution);
    let container = Container {
        name: MAIN_CONTAINER.to_string(),
        image: Some(snapshot.image.clone()),
        command: (!snapshot.command.is_empty()).then(|| snapshot.command.clone()),
        args: (!snapshot.args.is_empty()).then(|| snapshot.args.clone()),
        env: Some(env.clone()),
        env_from: (!template.env_from.is_empty()).then(|| template.env_from.clone()),
        resources: template.resources.clone(),
        image_pull_policy: template.image_pull_policy.map(|p| format!("{p:?}")),
        volume_mounts: template.secret.as_ref().map(|s| {
            vec![VolumeMount {
                name: SECRET_VOLUME.to_string(),
                mount_path: s.mount_path.clone(),
                read_only: Some(true),
                ..Default::default()
            }]
        }),
        ..Default::default()
    };
    let pod = PodTemplateSpec {
        metadata: Some(ObjectMeta {
            labels: Some(labels.clone()),
            ..Default::default()
        }),
        spec: Some(PodSpec {
            restart_policy: Some("Never".to_string()),
            containers: vec![container],
            service_account_name: template.service_account_name.clone(),
            image_pull_secrets: (!template.image_pull_secrets.is_empty())
                .then(|| template.image_pull_secrets.clone()),
            node_selector: (!template.node_selector.is_empty())
                .then(|| template.node_selector.clone()),
            tolerations: (!template.tolerations.is_empty()).then(|| template.tolerations.clone()),
            volumes: template.secret.as_ref().map(|s| {
                vec![Volume {
                    name: SECRET_VOLUME.to_string(),
                    secret: Some(SecretVolumeSource {
                        secret_name: Some(s.name.clone()),
                        ..Default::default()
                    }),
                    ..Default::default()
                }]
            }),
            ..Default::default()
        }),
    };
    let mut pod = match &template.pod_overrides {
        Some(overrides) => apply_overrides(pod, overrides, &labels, &env)?,
        None => pod,
    };
    if execution.log_archive {
        hold_for_archive(&mut pod, execution);
    }
    Ok(Job {
        metadata: ObjectMeta {
            name: Some(names::job_name(execution.instance, execution.execution)),
            namespace: Some(execution.namespace.to_string()),
            labels: Some(labels),
            owner_references: Some(vec![OwnerReference {
                api_version: format!("{}/{}", crate::resources::GROUP, crate::resources::VERSION),
                kind: "WorkflowInstance".to_string(),
                name: execution.instance.to_string(),
                uid: execution.instance_uid.to_string(),
                controller: Some(true),
                block_owner_deletion: Some(true),
            }]),
            ..Default::default()
        },
        spec: Some(JobSpec {
            backoff_limit: Some(0),
            active_deadline_seconds: execution.running_timeout_seconds,
            template: pod,
            ..Default::default()
        }),
        status: None,
    })
}

/// Marks the pod for log archiving (after `podOverrides`, which cannot remove it): the
/// finalizer that holds it, its log's store key and its instance's full name.
fn hold_for_archive(pod: &mut PodTemplateSpec, execution: &Execution<'_>) {
    let metadata = pod.metadata.get_or_insert_with(Default::default);
    let finalizers = metadata.finalizers.get_or_insert_with(Vec::new);
    if !finalizers.iter().any(|f| f == archive::FINALIZER) {
        finalizers.push(archive::FINALIZER.to_string());
    }
    let annotations = metadata.annotations.get_or_insert_with(Default::default);
    annotations.insert(
        archive::ANNOTATION_LOG_KEY.to_string(),
        archive::log_key(
            execution.namespace,
            execution.instance_uid,
            execution.execution,
            None,
        ),
    );
    annotations.insert(
        archive::ANNOTATION_INSTANCE.to_string(),
        execution.instance.to_string(),
    );
}

/// Merges `podOverrides` onto the pod template (JSON merge patch), then restores what Charon
/// relies on: its labels, the main container's env and `restartPolicy: Never`.
fn apply_overrides(
    pod: PodTemplateSpec,
    overrides: &serde_json::Value,
    labels: &BTreeMap<String, String>,
    env: &[EnvVar],
) -> Result<PodTemplateSpec, RenderError> {
    if !overrides.is_object() {
        return Err(RenderError::PodOverrides("must be an object".to_string()));
    }
    let mut value = serde_json::to_value(&pod)
        .map_err(|e| RenderError::PodOverrides(format!("cannot render the pod template: {e}")))?;
    json_patch::merge(&mut value, overrides);
    let mut merged: PodTemplateSpec = serde_json::from_value(value)
        .map_err(|e| RenderError::PodOverrides(format!("does not fit a pod template: {e}")))?;
    let metadata = merged.metadata.get_or_insert_with(Default::default);
    metadata
        .labels
        .get_or_insert_with(Default::default)
        .extend(labels.clone());
    let spec = merged
        .spec
        .as_mut()
        .ok_or_else(|| RenderError::PodOverrides("removes the pod spec".to_string()))?;
    spec.restart_policy = Some("Never".to_string());
    let main = spec
        .containers
        .iter_mut()
        .find(|c| c.name == MAIN_CONTAINER)
        .ok_or_else(|| {
            RenderError::PodOverrides(format!("removes the {MAIN_CONTAINER:?} container"))
        })?;
    main.env = Some(env.to_vec());
    Ok(merged)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::SecretMount;

    fn template() -> WorkflowTemplate {
        WorkflowTemplate {
            image: "registry.example.com/report:1.4".into(),
            command: vec!["report".into()],
            args: vec!["--hour".into(), "{}".into(), "--date={}".into()],
            env: vec![
                EnvVar {
                    name: "OUTPUT".into(),
                    value: Some("s3://bucket/reports".into()),
                    value_from: None,
                },
                EnvVar {
                    name: "CHARON_PARAMETER".into(),
                    value: Some("spoofed".into()),
                    value_from: None,
                },
                EnvVar {
                    name: "MODE".into(),
                    value: Some("workflow".into()),
                    value_from: None,
                },
            ],
            secret: Some(SecretMount {
                name: "report-credentials".into(),
                mount_path: "/etc/report".into(),
            }),
            service_account_name: Some("report".into()),
            ..Default::default()
        }
    }

    fn execution<'a>(trigger_env: &'a [EnvVar]) -> Execution<'a> {
        Execution {
            namespace: "data",
            workflow: "hourly-report",
            instance: "hourly-report-2024-10-27t02-01-00",
            instance_uid: "uid-1",
            parameter: "2024-10-27T02+01:00",
            logical_time: "2024-10-27T01:00:00Z".parse().unwrap(),
            trigger_type: TriggerType::Adhoc,
            trigger_id: "adhoc-1730000000000-12345",
            execution: 2,
            tries_before: 1,
            trigger_env,
            running_timeout_seconds: Some(7200),
            styx_compatible_env: false,
            log_archive: false,
        }
    }

    fn env_map(env: &[EnvVar]) -> BTreeMap<String, String> {
        env.iter()
            .map(|e| (e.name.clone(), e.value.clone().unwrap_or_default()))
            .collect()
    }

    #[test]
    fn a_running_timeout_outside_the_supported_range_never_panics() {
        let mut workflow: Workflow = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "w", "namespace": "ns"},
            "spec": {"schedule": "@hourly", "template": {"image": "busybox"},
                "runningTimeout": "P300000000Y"},
        }))
        .unwrap();
        assert_eq!(running_timeout(&workflow), None);
        workflow.spec.running_timeout = Some("PT2H".into());
        assert_eq!(running_timeout(&workflow), Some(Duration::hours(2)));
    }

    #[test]
    fn env_precedence_and_reserved_names() {
        let trigger_env = [EnvVar {
            name: "MODE".into(),
            value: Some("adhoc".into()),
            value_from: None,
        }];
        let t = template();
        let snap = snapshot(&t, "2024-10-27T02+01:00", Some(3));
        assert_eq!(snap.args, ["--hour", "2024-10-27T02+01:00", "--date={}"]);
        let env = env_map(&environment(&t, &snap, &execution(&trigger_env)));
        assert_eq!(env["OUTPUT"], "s3://bucket/reports");
        assert_eq!(env["MODE"], "adhoc", "trigger env overlays workflow env");
        assert_eq!(
            env["CHARON_PARAMETER"], "2024-10-27T02+01:00",
            "reserved names win"
        );
        assert_eq!(env["CHARON_WORKFLOW"], "hourly-report");
        assert_eq!(env["CHARON_NAMESPACE"], "data");
        assert_eq!(env["CHARON_INSTANCE"], "hourly-report-2024-10-27t02-01-00");
        assert_eq!(env["CHARON_LOGICAL_TIME"], "2024-10-27T01:00:00Z");
        assert_eq!(env["CHARON_TRIGGER_TYPE"], "adhoc");
        assert_eq!(env["CHARON_TRIGGER_ID"], "adhoc-1730000000000-12345");
        assert_eq!(
            env["CHARON_EXECUTION_ID"],
            "hourly-report-2024-10-27t02-01-00-2"
        );
        assert_eq!(env["CHARON_EXECUTION_TRIES"], "1");
        assert_eq!(env["CHARON_IMAGE"], "registry.example.com/report:1.4");
        assert_eq!(env["CHARON_ARGS"], "--hour 2024-10-27T02+01:00 --date={}");
        assert!(!env.contains_key("STYX_PARAMETER"));
    }

    #[test]
    fn styx_names_when_asked() {
        let mut e = execution(&[]);
        e.styx_compatible_env = true;
        let t = template();
        let env = env_map(&environment(&t, &snapshot(&t, e.parameter, None), &e));
        assert_eq!(env["STYX_PARAMETER"], "2024-10-27T02+01:00");
        assert_eq!(env["STYX_WORKFLOW_ID"], "hourly-report");
        assert_eq!(env["STYX_DOCKER_IMAGE"], "registry.example.com/report:1.4");
        assert_eq!(env["STYX_SERVICE_ACCOUNT"], "report");
        assert_eq!(env["STYX_EXECUTION_COUNTER"], "1");
    }

    #[test]
    fn job_shape() {
        let t = template();
        let e = execution(&[]);
        let job = render(&t, &snapshot(&t, e.parameter, None), &e).unwrap();
        assert_eq!(
            job.metadata.name.as_deref(),
            Some("hourly-report-2024-10-27t02-01-00-2")
        );
        let labels = job.metadata.labels.clone().unwrap();
        assert_eq!(labels[LABEL_WORKFLOW], "hourly-report");
        assert_eq!(labels[LABEL_EXECUTION], "2");
        assert_eq!(labels[LABEL_TRIGGER_TYPE], "adhoc");
        let owner = &job.metadata.owner_references.as_ref().unwrap()[0];
        assert_eq!(
            (owner.kind.as_str(), owner.controller),
            ("WorkflowInstance", Some(true))
        );
        let spec = job.spec.unwrap();
        assert_eq!(spec.backoff_limit, Some(0));
        assert_eq!(spec.active_deadline_seconds, Some(7200));
        let pod = spec.template.spec.unwrap();
        assert_eq!(pod.restart_policy.as_deref(), Some("Never"));
        assert_eq!(pod.service_account_name.as_deref(), Some("report"));
        let volume = &pod.volumes.unwrap()[0];
        assert_eq!(
            volume.secret.as_ref().unwrap().secret_name.as_deref(),
            Some("report-credentials")
        );
        let mount = &pod.containers[0].volume_mounts.as_ref().unwrap()[0];
        assert_eq!(
            (mount.mount_path.as_str(), mount.read_only),
            ("/etc/report", Some(true))
        );
        assert_eq!(spec.template.metadata.unwrap().labels.unwrap(), labels);
    }

    #[test]
    fn pod_overrides_merge_but_cannot_break_charon() {
        let mut t = template();
        t.pod_overrides = Some(serde_json::json!({
            "metadata": {"labels": {"team": "data", "charon.dev/workflow": "spoofed"}},
            "spec": {"restartPolicy": "Always", "priorityClassName": "batch", "hostNetwork": true},
        }));
        let e = execution(&[]);
        let job = render(&t, &snapshot(&t, e.parameter, None), &e).unwrap();
        let pod = job.spec.unwrap().template;
        let labels = pod.metadata.unwrap().labels.unwrap();
        assert_eq!(labels["team"], "data");
        assert_eq!(labels[LABEL_WORKFLOW], "hourly-report");
        let spec = pod.spec.unwrap();
        assert_eq!(spec.priority_class_name.as_deref(), Some("batch"));
        assert_eq!(spec.host_network, Some(true));
        assert_eq!(spec.restart_policy.as_deref(), Some("Never"));

        t.pod_overrides = Some(serde_json::json!({"spec": {"containers": "nope"}}));
        let err = render(&t, &snapshot(&t, e.parameter, None), &e).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("spec.template.podOverrides: does not fit a pod template"),
            "{err}"
        );
    }

    #[test]
    fn with_a_log_store_the_pod_is_held_until_archived_even_through_overrides() {
        let mut t = template();
        let plain = render(&t, &snapshot(&t, "p", None), &execution(&[])).unwrap();
        let meta = plain.spec.unwrap().template.metadata.unwrap();
        assert_eq!(meta.finalizers, None, "no store, no finalizer");
        assert_eq!(meta.annotations, None);

        t.pod_overrides = Some(serde_json::json!({
            "metadata": {"finalizers": [], "annotations": {"charon.dev/log-key": "x", "team": "d"}}
        }));
        let mut held = execution(&[]);
        held.log_archive = true;
        let job = render(&t, &snapshot(&t, "p", None), &held).unwrap();
        let meta = job.spec.unwrap().template.metadata.unwrap();
        assert_eq!(meta.finalizers, Some(vec![archive::FINALIZER.to_string()]));
        let annotations = meta.annotations.unwrap();
        assert_eq!(annotations[archive::ANNOTATION_LOG_KEY], "data/uid-1/2.log");
        assert_eq!(
            annotations[archive::ANNOTATION_INSTANCE],
            "hourly-report-2024-10-27t02-01-00"
        );
        assert_eq!(annotations["team"], "d", "the user's annotations stay");
    }
}
