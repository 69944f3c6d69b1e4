//! Creating and re-opening instances on request (SPEC §3): ad-hoc triggers (from the CLI or
//! the `charon.dev/trigger` annotation) and backfills share these, so a partition is
//! triggered the same way whoever asks.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use k8s_openapi::api::core::v1::EnvVar;
use kube::api::{ObjectMeta, PostParams};
use kube::{Api, Client, Resource, ResourceExt};
use thiserror::Error;

use super::instance::{to_machine, to_status};
use crate::instance as machine;
use crate::job::LABEL_WORKFLOW;
use crate::names;
use crate::resources::{
    RunRecord, Trigger, TriggerType, Workflow, WorkflowInstance, WorkflowInstanceSpec,
};
use crate::trigger::{AdhocDecision, adhoc_id, plan_adhoc};

/// Why a trigger did not happen.
#[derive(Debug, Error)]
pub enum TriggerError {
    /// The request is not acceptable (future partition, already active, invalid workflow…).
    #[error("{0}")]
    Refused(String),
    /// The API server failed.
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
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
    let mut instance = api.get(name).await?;
    let status = instance.status.clone().unwrap_or_default();
    if !status.state.is_terminal() {
        return Err(TriggerError::Refused(format!(
            "instance {name} is {} again; not re-opened",
            status.state.as_str()
        )));
    }
    let finished_run = RunRecord {
        trigger: instance.spec.trigger.clone(),
        state: status.state,
        tries: status.tries,
        cost: status.cost,
        last_exit_code: status.last_exit_code,
        started_at: status.started_at,
        finished_at: status.finished_at,
    };
    let message = format!(
        "re-opened by a {} trigger ({})",
        trigger.trigger_type.as_str(),
        trigger.id
    );
    instance.spec.trigger = trigger;
    instance.spec.env = env;
    instance.spec.halted = false;
    let instance = api.replace(name, &PostParams::default(), &instance).await?;
    let (reopened, transition) = machine::reopen(&to_machine(name, &status), "Reopened", message);
    let mut before = status.clone();
    before.started_at = None;
    before.finished_at = None;
    before.snapshot = None;
    before.runs.push(finished_run);
    let mut new_status = to_status(&before, &reopened, &[transition], now, workflow);
    new_status.observed_generation = instance.metadata.generation;
    let mut updated = instance.clone();
    updated.status = Some(new_status);
    Ok(api
        .replace_status(name, &PostParams::default(), &updated)
        .await?)
}

/// An ad-hoc trigger of the partition named by `text` (parsed leniently, SPEC §3).
pub async fn adhoc(
    client: &Client,
    workflow: &Workflow,
    text: &str,
    env: Vec<EnvVar>,
    allow_future: bool,
    now: DateTime<Utc>,
) -> Result<Triggered, TriggerError> {
    let valid = crate::validate::workflow(&workflow.spec).map_err(|errors| {
        TriggerError::Refused(format!(
            "workflow {} is invalid: {}",
            workflow.name_any(),
            crate::validate::message(&errors)
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
    let existing = api.get_opt(&instance_name).await?;
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
                Err(kube::Error::Api(e)) if e.code == 409 => Err(TriggerError::Refused(format!(
                    "partition {parameter} was triggered by someone else just now"
                ))),
                Err(err) => Err(err.into()),
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
