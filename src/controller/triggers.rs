//! Creating and re-opening instances on request (SPEC §3): ad-hoc triggers (from the CLI or
//! the `charon.dev/trigger` annotation) and backfills share these, so a partition is
//! triggered the same way whoever asks.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use k8s_openapi::api::core::v1::EnvVar;
use kube::api::{ObjectMeta, PostParams};
use kube::{Api, Client, Resource, ResourceExt};

use super::error::{ApiErrorExt, ApiFailure, Error, call};

use charon_core::job::LABEL_WORKFLOW;
use charon_core::names;
use charon_core::resources::{
    Trigger, TriggerType, Workflow, WorkflowInstance, WorkflowInstanceSpec,
};
use charon_core::trigger::{AdhocDecision, adhoc_id, plan_adhoc};

/// Why a trigger did not happen.
#[derive(Debug, thiserror::Error)]
pub enum TriggerError {
    /// The request is not acceptable (future partition, already active, invalid workflow…).
    #[error("{0}")]
    Refused(String),
    /// The API server failed.
    #[error(transparent)]
    Api(#[from] Error),
}

/// What a trigger did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Triggered {
    /// The instance's name.
    pub instance: String,
    /// The partition's parameter.
    pub parameter: String,
    /// Whether a finished instance was re-opened (rather than created).
    pub reopened: bool,
    /// The trigger id.
    pub trigger_id: String,
}

/// A new instance of `workflow`'s partition `logical`, owned by the workflow.
pub fn new_instance(
    workflow: &Workflow,
    logical: DateTime<Utc>,
    parameter: &str,
    trigger: Trigger,
    env: Vec<EnvVar>,
) -> Option<WorkflowInstance> {
    let name = workflow.name_any();
    let owner = workflow.controller_owner_ref(&())?;
    Some(WorkflowInstance {
        metadata: ObjectMeta {
            name: Some(names::instance_name(&name, parameter)),
            namespace: workflow.namespace(),
            labels: Some(BTreeMap::from([(
                LABEL_WORKFLOW.to_string(),
                names::label_value(&name),
            )])),
            owner_references: Some(vec![owner]),
            ..Default::default()
        },
        spec: WorkflowInstanceSpec {
            workflow: name,
            parameter: parameter.to_string(),
            logical_time: logical,
            trigger,
            halted: false,
            suspended: false,
            env,
        },
        status: None,
    })
}

/// Re-opens the finished instance `name` as a new run with `trigger` (SPEC §3): the finished
/// run goes to `status.runs`, state `Queued`, tries and cost reset. Both writes carry the
/// resourceVersion read, so a concurrent change makes this fail rather than run twice.
pub async fn reopen(
    client: &Client,
    workflow: &Workflow,
    name: &str,
    trigger: Trigger,
    env: Vec<EnvVar>,
    now: DateTime<Utc>,
) -> Result<WorkflowInstance, TriggerError> {
    let namespace = workflow.namespace().unwrap_or_default();
    let api: Api<WorkflowInstance> = Api::namespaced(client.clone(), &namespace);
    let mut instance =
        api.get(name)
            .await
            .map_err(call("get", "WorkflowInstance", &namespace, name))?;
    let status = instance.status.clone().unwrap_or_default();
    if !status.state.is_terminal() {
        return Err(TriggerError::Refused(format!(
            "instance {name} is {} again; not re-opened",
            status.state.as_str()
        )));
    }
    let finished_trigger = instance.spec.trigger.clone();
    instance.spec.trigger = trigger.clone();
    instance.spec.env = env;
    instance.spec.halted = false;
    let instance = api
        .replace(name, &PostParams::default(), &instance)
        .await
        .map_err(call("replace", "WorkflowInstance", &namespace, name))?;
    let mut new_status =
        charon_core::status::reopened(&status, name, &finished_trigger, &trigger, now, workflow);
    new_status.observed_generation = instance.metadata.generation;
    let mut updated = instance.clone();
    updated.status = Some(new_status);
    Ok(api
        .replace_status(name, &PostParams::default(), &updated)
        .await
        .map_err(call("replace status", "WorkflowInstance", &namespace, name))?)
}

/// An ad-hoc trigger of the partition named by `text` (parsed leniently, SPEC §3).
pub async fn adhoc(
    client: &Client,
    workflow: &Workflow,
    policy: charon_core::validate::Policy,
    text: &str,
    env: Vec<EnvVar>,
    allow_future: bool,
    now: DateTime<Utc>,
) -> Result<Triggered, TriggerError> {
    let valid = charon_core::validate::workflow(&workflow.spec, policy).map_err(|errors| {
        TriggerError::Refused(format!(
            "workflow {} is invalid: {}",
            workflow.name_any(),
            charon_core::validate::message(&errors)
        ))
    })?;
    let schedule = &valid.schedule;
    let namespace = workflow.namespace().unwrap_or_default();
    let api: Api<WorkflowInstance> = Api::namespaced(client.clone(), &namespace);
    // Look the partition's instance up first; the decision itself is pure.
    let logical = schedule
        .parse_parameter(text)
        .map_err(|e| TriggerError::Refused(e.to_string()))?;
    let parameter = schedule.parameter(logical);
    let instance_name = names::instance_name(&workflow.name_any(), &parameter);
    let existing = api.get_opt(&instance_name).await.map_err(call(
        "get",
        "WorkflowInstance",
        &namespace,
        &instance_name,
    ))?;
    let lookup = |p: &str| {
        existing
            .as_ref()
            .filter(|_| p == parameter)
            .map(|i| (i.name_any(), i.status.clone().unwrap_or_default().state))
    };
    let decision =
        plan_adhoc(schedule, text, allow_future, now, &lookup).map_err(TriggerError::Refused)?;
    let id = adhoc_id(now, &mut |n| rand::random_range(0..n.max(1)));
    let trigger = Trigger {
        trigger_type: TriggerType::Adhoc,
        id: id.clone(),
    };
    match decision {
        AdhocDecision::Create { logical, parameter } => {
            let instance = new_instance(workflow, logical, &parameter, trigger, env)
                .ok_or_else(|| TriggerError::Refused("workflow has no uid".into()))?;
            match api.create(&PostParams::default(), &instance).await {
                Ok(created) => Ok(Triggered {
                    instance: created.name_any(),
                    parameter,
                    reopened: false,
                    trigger_id: id,
                }),
                Err(e) if e.failure() == ApiFailure::Conflict => Err(TriggerError::Refused(
                    format!("partition {parameter} was triggered by someone else just now"),
                )),
                Err(e) => {
                    Err(call("create", "WorkflowInstance", &namespace, &instance_name)(e).into())
                }
            }
        }
        AdhocDecision::Reopen { parameter, .. } => {
            let instance = reopen(client, workflow, &instance_name, trigger, env, now).await?;
            Ok(Triggered {
                instance: instance.name_any(),
                parameter,
                reopened: true,
                trigger_id: id,
            })
        }
    }
}
