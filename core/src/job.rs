//! What every execution sees (SPEC §8): the Job of one attempt, rendered from the workflow's
//! template and the instance as a pure function.
//!
//! Jobs are immutable snapshots: one Job per execution, named `<instance>-<execution>`, owned by
//! the instance so deleting the instance deletes its Jobs.

use std::collections::BTreeMap;

use chrono::{DateTime, Duration, Utc};
use k8s_openapi::api::batch::v1::{Job, JobSpec};
use k8s_openapi::api::core::v1::{
    Container, EmptyDirVolumeSource, EnvVar, PersistentVolumeClaim, PersistentVolumeClaimSpec,
    PersistentVolumeClaimVolumeSource, PodSpec, PodTemplateSpec, SecretVolumeSource, Volume,
    VolumeMount, VolumeResourceRequirements,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use thiserror::Error;

use crate::archive;
use crate::names;
use crate::partition::{rfc3339, substitute};
use crate::pipeline::{self, Launcher};
use crate::resources::{
    ExecutionSnapshot, Step, TriggerType, Workflow, WorkflowInstance, WorkflowTemplate,
};
use crate::schedule::IsoDuration;

/// Label carrying the workflow's name.
pub const LABEL_WORKFLOW: &str = "charon.dev/workflow";
/// Kueue's label naming the LocalQueue a Job is submitted to (`spec.template.queueName`).
pub const KUEUE_QUEUE_LABEL: &str = "kueue.x-k8s.io/queue-name";
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
    /// Where pipelines and arrays get their launcher from.
    pub launcher: Launcher<'a>,
    /// `spec.retry.resumeFromFailedStep`: a pipeline keeps its step outputs on the run's
    /// PersistentVolumeClaim.
    pub resumable: bool,
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
            launcher: Launcher::DEFAULT,
            resumable: workflow.spec.retry.resume_from_failed_step,
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
        launcher: Launcher::DEFAULT,
        resumable: false,
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
        steps: template
            .steps
            .iter()
            .map(|step| Step {
                command: substitute(&step.command, parameter),
                args: substitute(&step.args, parameter),
                ..step.clone()
            })
            .collect(),
        resume_from: None,
        array: template.array.clone(),
        tasks: String::new(),
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
    let mut set = |var: EnvVar| set_var(&mut env, var);
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

/// Renders the Job of one execution: one container, a pipeline's steps (see
/// [`pipeline`]) or an array's Indexed Job.
pub fn render(
    template: &WorkflowTemplate,
    snapshot: &ExecutionSnapshot,
    execution: &Execution<'_>,
) -> Result<Job, RenderError> {
    let labels = labels(execution);
    let env = environment(template, snapshot, execution);
    let mut mounts: Vec<VolumeMount> = Vec::new();
    let mut volumes: Vec<Volume> = Vec::new();
    if let Some(s) = &template.secret {
        mounts.push(VolumeMount {
            name: SECRET_VOLUME.to_string(),
            mount_path: s.mount_path.clone(),
            read_only: Some(true),
            ..Default::default()
        });
        volumes.push(Volume {
            name: SECRET_VOLUME.to_string(),
            secret: Some(SecretVolumeSource {
                secret_name: Some(s.name.clone()),
                ..Default::default()
            }),
            ..Default::default()
        });
    }
    let launched = !snapshot.steps.is_empty() || snapshot.array.is_some();
    let launcher_mount = VolumeMount {
        name: pipeline::VOLUME.to_string(),
        mount_path: pipeline::MOUNT.to_string(),
        ..Default::default()
    };
    if launched {
        volumes.push(Volume {
            name: pipeline::VOLUME.to_string(),
            empty_dir: Some(EmptyDirVolumeSource::default()),
            ..Default::default()
        });
        mounts.push(launcher_mount.clone());
    }
    let resumable = execution.resumable && !snapshot.steps.is_empty();
    if resumable {
        volumes.push(Volume {
            name: pipeline::OUTPUTS_VOLUME.to_string(),
            persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                claim_name: pipeline::outputs_claim(execution.instance),
                read_only: None,
            }),
            ..Default::default()
        });
        mounts.push(VolumeMount {
            name: pipeline::OUTPUTS_VOLUME.to_string(),
            mount_path: pipeline::OUTPUTS.to_string(),
            ..Default::default()
        });
    }
    let container =
        |name: &str, image: &str, argv: (Vec<String>, Vec<String>), env: Vec<EnvVar>| Container {
            name: name.to_string(),
            image: Some(image.to_string()),
            command: (!argv.0.is_empty()).then_some(argv.0),
            args: (!argv.1.is_empty()).then_some(argv.1),
            env: Some(env),
            env_from: (!template.env_from.is_empty()).then(|| template.env_from.clone()),
            resources: template.resources.clone(),
            image_pull_policy: template.image_pull_policy.map(|p| format!("{p:?}")),
            volume_mounts: (!mounts.is_empty()).then(|| mounts.clone()),
            ..Default::default()
        };
    let mut init_containers: Vec<Container> = Vec::new();
    let mut containers: Vec<Container> = Vec::new();
    let mut annotations: BTreeMap<String, String> = BTreeMap::new();
    if launched {
        init_containers.push(Container {
            name: pipeline::INSTALL_CONTAINER.to_string(),
            image: Some(execution.launcher.image.to_string()),
            command: Some(vec![
                execution.launcher.command.to_string(),
                "install".to_string(),
                pipeline::LAUNCHER.to_string(),
            ]),
            volume_mounts: Some(vec![launcher_mount]),
            // The workload's own resources: a namespace whose quota or LimitRange requires
            // them of every container admits the pod, and init containers add nothing to
            // the pod's effective request beyond the largest container's.
            resources: template.resources.clone(),
            ..Default::default()
        });
    }
    if !snapshot.steps.is_empty() {
        let names: Vec<&str> = snapshot.steps.iter().map(|s| s.name.as_str()).collect();
        let first = pipeline::first_step(snapshot);
        for (i, step) in snapshot.steps.iter().enumerate().skip(first) {
            let argv: Vec<String> = step.command.iter().chain(&step.args).cloned().collect();
            let command = pipeline::step_argv(&names, i, &step.output, &argv);
            let c = container(
                &step.name,
                &step.image,
                (command, Vec::new()),
                step_environment(template, step, snapshot, execution),
            );
            if i + 1 == names.len() {
                containers.push(c);
            } else {
                init_containers.push(c);
            }
        }
        annotations.insert(
            pipeline::ANNOTATION_STEPS.to_string(),
            names[first..].join(","),
        );
        annotations.insert(
            DEFAULT_CONTAINER.to_string(),
            names[names.len() - 1].to_string(),
        );
    } else if let Some(array) = &snapshot.array {
        let mut command = vec![
            pipeline::LAUNCHER.to_string(),
            "run".to_string(),
            "--".to_string(),
        ];
        command.extend(snapshot.command.iter().chain(&snapshot.args).cloned());
        let mut env = env.clone();
        let mut task = vec![
            ("CHARON_TASK_FIRST", array.start.to_string()),
            ("CHARON_TASK_LAST", array.last().to_string()),
            ("CHARON_TASK_STEP", array.step.to_string()),
            ("CHARON_TASK_COUNT", array.count().to_string()),
        ];
        if !snapshot.tasks.is_empty() {
            task.push(("CHARON_TASK_INDEXES", snapshot.tasks.clone()));
        }
        for (name, value) in task {
            set_env(&mut env, name, value);
        }
        containers.push(container(
            MAIN_CONTAINER,
            &snapshot.image,
            (command, Vec::new()),
            env,
        ));
        annotations.insert(DEFAULT_CONTAINER.to_string(), MAIN_CONTAINER.to_string());
    } else {
        containers.push(container(
            MAIN_CONTAINER,
            &snapshot.image,
            (snapshot.command.clone(), snapshot.args.clone()),
            env.clone(),
        ));
    }
    let restored: Vec<(String, Vec<EnvVar>)> = containers
        .iter()
        // The launcher's installer (first) has no env to restore.
        .chain(init_containers.iter().skip(1))
        .map(|c| (c.name.clone(), c.env.clone().unwrap_or_default()))
        .collect();
    let pod = PodTemplateSpec {
        metadata: Some(ObjectMeta {
            labels: Some(labels.clone()),
            annotations: (!annotations.is_empty()).then_some(annotations),
            ..Default::default()
        }),
        spec: Some(PodSpec {
            restart_policy: Some("Never".to_string()),
            init_containers: (!init_containers.is_empty()).then_some(init_containers),
            containers,
            service_account_name: template.service_account_name.clone(),
            image_pull_secrets: (!template.image_pull_secrets.is_empty())
                .then(|| template.image_pull_secrets.clone()),
            node_selector: (!template.node_selector.is_empty())
                .then(|| template.node_selector.clone()),
            tolerations: (!template.tolerations.is_empty()).then(|| template.tolerations.clone()),
            volumes: (!volumes.is_empty()).then_some(volumes),
            ..Default::default()
        }),
    };
    let mut pod = match &template.pod_overrides {
        Some(overrides) => apply_overrides(pod, overrides, &labels, &restored)?,
        None => pod,
    };
    if execution.log_archive {
        hold_for_archive(&mut pod, execution);
    }
    let mut spec = JobSpec {
        backoff_limit: Some(0),
        active_deadline_seconds: execution.running_timeout_seconds,
        template: pod,
        ..Default::default()
    };
    if let Some(array) = &snapshot.array {
        let tasks =
            i32::try_from(pipeline::positions(array, &snapshot.tasks).len()).unwrap_or(i32::MAX);
        spec.completion_mode = Some("Indexed".to_string());
        spec.completions = Some(tasks);
        spec.parallelism = Some(array.parallelism.unwrap_or(tasks).min(tasks).max(1));
        // Every task may fail once without stopping the others; retries are Charon's.
        spec.backoff_limit_per_index = Some(0);
        spec.backoff_limit = Some(i32::MAX);
    }
    let mut labels = labels;
    if let Some(queue) = &template.queue_name {
        // Kueue admits the Job by unsuspending it.
        labels.insert(KUEUE_QUEUE_LABEL.to_string(), queue.clone());
        spec.suspend = Some(true);
    }
    Ok(Job {
        metadata: ObjectMeta {
            name: Some(names::job_name(execution.instance, execution.execution)),
            namespace: Some(execution.namespace.to_string()),
            labels: Some(labels),
            owner_references: Some(vec![owner(execution)]),
            ..Default::default()
        },
        spec: Some(spec),
        status: None,
    })
}

/// The instance as the controlling owner of what an execution creates, so the garbage
/// collector deletes it with the instance.
fn owner(execution: &Execution<'_>) -> OwnerReference {
    OwnerReference {
        api_version: format!("{}/{}", crate::resources::GROUP, crate::resources::VERSION),
        kind: "WorkflowInstance".to_string(),
        name: execution.instance.to_string(),
        uid: execution.instance_uid.to_string(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    }
}

/// The PersistentVolumeClaim a resumable pipeline's run keeps its step outputs on
/// ([`pipeline::outputs_claim`]): one `ReadWriteOnce` claim per run, sized and classed by
/// `spec.template.outputStorage`, owned by the instance.
pub fn outputs_claim(
    template: &WorkflowTemplate,
    execution: &Execution<'_>,
) -> PersistentVolumeClaim {
    let storage = template.output_storage.clone().unwrap_or_default();
    PersistentVolumeClaim {
        metadata: ObjectMeta {
            name: Some(pipeline::outputs_claim(execution.instance)),
            namespace: Some(execution.namespace.to_string()),
            labels: Some(BTreeMap::from([
                (
                    LABEL_WORKFLOW.to_string(),
                    names::label_value(execution.workflow),
                ),
                (
                    LABEL_INSTANCE.to_string(),
                    names::label_value(execution.instance),
                ),
            ])),
            owner_references: Some(vec![owner(execution)]),
            ..Default::default()
        },
        spec: Some(PersistentVolumeClaimSpec {
            access_modes: Some(vec!["ReadWriteOnce".to_string()]),
            resources: Some(VolumeResourceRequirements {
                requests: Some(BTreeMap::from([(
                    "storage".to_string(),
                    Quantity(storage.size),
                )])),
                ..Default::default()
            }),
            storage_class_name: storage.storage_class_name,
            ..Default::default()
        }),
        status: None,
    }
}

/// The annotation `kubectl logs` picks a pod's container by when none is named.
pub const DEFAULT_CONTAINER: &str = "kubectl.kubernetes.io/default-container";

/// Sets `var` in `env`, replacing an earlier definition of its name in place.
fn set_var(env: &mut Vec<EnvVar>, var: EnvVar) {
    match env.iter_mut().find(|e| e.name == var.name) {
        Some(existing) => *existing = var,
        None => env.push(var),
    }
}

/// Sets `name` to `value` in `env` (see [`set_var`]).
fn set_env(env: &mut Vec<EnvVar>, name: &str, value: String) {
    set_var(
        env,
        EnvVar {
            name: name.to_string(),
            value: Some(value),
            value_from: None,
        },
    );
}

/// A step's env: the workflow env with the step's on top, then the trigger's and the
/// reserved variables as for any execution, with `CHARON_IMAGE` and `CHARON_ARGS` the step's
/// and `CHARON_STEP` its name.
fn step_environment(
    template: &WorkflowTemplate,
    step: &Step,
    snapshot: &ExecutionSnapshot,
    execution: &Execution<'_>,
) -> Vec<EnvVar> {
    let mut env = snapshot.env.clone();
    for var in &step.env {
        set_var(&mut env, var.clone());
    }
    let of_step = ExecutionSnapshot {
        image: step.image.clone(),
        args: step.args.clone(),
        env,
        ..ExecutionSnapshot::default()
    };
    let mut env = environment(template, &of_step, execution);
    set_env(&mut env, "CHARON_STEP", step.name.clone());
    env
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
/// relies on: its labels, its containers' env and `restartPolicy: Never`.
fn apply_overrides(
    pod: PodTemplateSpec,
    overrides: &serde_json::Value,
    labels: &BTreeMap<String, String>,
    envs: &[(String, Vec<EnvVar>)],
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
    for (name, env) in envs {
        let ours = spec
            .containers
            .iter_mut()
            .chain(spec.init_containers.iter_mut().flatten())
            .find(|c| c.name == *name)
            .ok_or_else(|| RenderError::PodOverrides(format!("removes the {name:?} container")))?;
        ours.env = Some(env.clone());
    }
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
            launcher: Launcher::DEFAULT,
            resumable: false,
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

    fn pipeline() -> WorkflowTemplate {
        let step = |name: &str, output: &str| Step {
            name: name.into(),
            image: format!("registry.example.com/{name}:1"),
            command: vec!["run-{}".into(), "{}".into()],
            args: vec!["--x".into()],
            env: vec![EnvVar {
                name: "MODE".into(),
                value: Some(format!("step-{name}")),
                value_from: None,
            }],
            output: output.into(),
        };
        WorkflowTemplate {
            image: String::new(),
            command: vec![],
            args: vec![],
            steps: vec![
                step("words", "stdout"),
                step("upper", "/tmp/out"),
                step("reverse", "stdout"),
            ],
            ..template()
        }
    }

    #[test]
    fn a_pipeline_is_one_pod_with_the_steps_in_order_behind_the_launcher() {
        let template = pipeline();
        let snapshot = snapshot(&template, "2024-10-27T02+01:00", Some(3));
        let job = render(&template, &snapshot, &execution(&[])).unwrap();
        let spec = job.spec.unwrap();
        assert_eq!(spec.backoff_limit, Some(0));
        let pod = spec.template.spec.unwrap();
        let init = pod.init_containers.unwrap();
        let names: Vec<&str> = init.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, [pipeline::INSTALL_CONTAINER, "words", "upper"]);
        assert_eq!(pod.containers.len(), 1);
        assert_eq!(pod.containers[0].name, "reverse");
        assert_eq!(
            init[0].command.as_deref().unwrap(),
            ["/charon-launcher", "install", pipeline::LAUNCHER]
        );
        assert_eq!(init[0].image.as_deref(), Some(Launcher::DEFAULT.image));
        let upper = &init[2];
        assert_eq!(upper.image.as_deref(), Some("registry.example.com/upper:1"));
        assert_eq!(
            upper.command.as_deref().unwrap(),
            [
                pipeline::LAUNCHER,
                "run",
                "--input",
                "/charon/outputs/words",
                "--output",
                "/tmp/out",
                "--save",
                "/charon/outputs/upper",
                "--",
                "run-{}",
                "2024-10-27T02+01:00",
                "--x"
            ]
        );
        assert_eq!(upper.args, None);
        let env = env_map(upper.env.as_ref().unwrap());
        // The step's env over the workflow's, the reserved names over both.
        assert_eq!(env["MODE"], "step-upper");
        assert_eq!(env["OUTPUT"], "s3://bucket/reports");
        assert_eq!(env["CHARON_STEP"], "upper");
        assert_eq!(env["CHARON_IMAGE"], "registry.example.com/upper:1");
        assert_eq!(env["CHARON_PARAMETER"], "2024-10-27T02+01:00");
        // Every step sees the shared volume and the secret.
        let mounts: Vec<&str> = upper
            .volume_mounts
            .as_ref()
            .unwrap()
            .iter()
            .map(|m| m.mount_path.as_str())
            .collect();
        assert_eq!(mounts, ["/etc/report", pipeline::MOUNT]);
        let volumes = pod.volumes.unwrap();
        assert!(
            volumes
                .iter()
                .any(|v| v.name == pipeline::VOLUME && v.empty_dir.is_some())
        );
        assert!(!volumes.iter().any(|v| v.persistent_volume_claim.is_some()));
        let annotations = spec.template.metadata.unwrap().annotations.unwrap();
        assert_eq!(
            annotations[pipeline::ANNOTATION_STEPS],
            "words,upper,reverse"
        );
        assert_eq!(annotations[DEFAULT_CONTAINER], "reverse");
    }

    #[test]
    fn a_resumed_pipeline_starts_at_its_step_and_reads_the_claim() {
        let template = pipeline();
        let mut snapshot = snapshot(&template, "p", None);
        snapshot.resume_from = Some("upper".into());
        let mut execution = execution(&[]);
        execution.resumable = true;
        let job = render(&template, &snapshot, &execution).unwrap();
        let owners = job.metadata.owner_references.clone();
        let spec = job.spec.unwrap();
        let pod = spec.template.spec.unwrap();
        let names: Vec<String> = pod
            .init_containers
            .unwrap()
            .iter()
            .map(|c| c.name.clone())
            .collect();
        assert_eq!(names, [pipeline::INSTALL_CONTAINER, "upper"]);
        let claim = pod
            .volumes
            .unwrap()
            .into_iter()
            .find_map(|v| v.persistent_volume_claim)
            .unwrap();
        assert_eq!(
            claim.claim_name,
            "hourly-report-2024-10-27t02-01-00-outputs"
        );
        // The claim is the one the pod mounts, owned like the Job by the instance.
        let object = outputs_claim(&template, &execution);
        assert_eq!(object.metadata.name.as_ref(), Some(&claim.claim_name));
        assert_eq!(object.metadata.owner_references, owners);
        let claim_spec = object.spec.unwrap();
        assert_eq!(claim_spec.access_modes.unwrap(), ["ReadWriteOnce"]);
        assert_eq!(
            claim_spec.resources.unwrap().requests.unwrap()["storage"],
            Quantity("1Gi".into())
        );
        assert_eq!(claim_spec.storage_class_name, None);
        let annotations = spec.template.metadata.unwrap().annotations.unwrap();
        assert_eq!(annotations[pipeline::ANNOTATION_STEPS], "upper,reverse");
    }

    #[test]
    fn an_array_is_an_indexed_job_whose_retry_runs_only_some_positions() {
        let mut template = template();
        template.array = Some(crate::resources::ArraySpec {
            start: 0,
            end: 9,
            step: 3,
            parallelism: Some(2),
        });
        let mut snapshot = snapshot(&template, "p", None);
        let job = render(&template, &snapshot, &execution(&[])).unwrap();
        let spec = job.spec.unwrap();
        assert_eq!(spec.completion_mode.as_deref(), Some("Indexed"));
        assert_eq!(spec.completions, Some(4));
        assert_eq!(spec.parallelism, Some(2));
        assert_eq!(spec.backoff_limit_per_index, Some(0));
        let pod = spec.template.spec.unwrap();
        let main = &pod.containers[0];
        assert_eq!(main.name, MAIN_CONTAINER);
        assert_eq!(
            main.command.as_deref().unwrap()[..4],
            [pipeline::LAUNCHER, "run", "--", "report"]
        );
        let env = env_map(main.env.as_ref().unwrap());
        assert_eq!(env["CHARON_TASK_FIRST"], "0");
        assert_eq!(env["CHARON_TASK_LAST"], "9");
        assert_eq!(env["CHARON_TASK_STEP"], "3");
        assert_eq!(env["CHARON_TASK_COUNT"], "4");
        assert!(!env.contains_key("CHARON_TASK_INDEXES"));
        snapshot.tasks = "1,3".into();
        let retry = render(&template, &snapshot, &execution(&[])).unwrap();
        let spec = retry.spec.unwrap();
        assert_eq!(spec.completions, Some(2));
        let env = env_map(
            spec.template.spec.unwrap().containers[0]
                .env
                .as_ref()
                .unwrap(),
        );
        assert_eq!(env["CHARON_TASK_INDEXES"], "1,3");
        assert_eq!(env["CHARON_TASK_COUNT"], "4");
    }
}
