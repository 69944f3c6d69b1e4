//! `spec.dependsOn` in the controller (SPEC §15): whether an instance's upstream partitions
//! are `Done`, read from the instance cache by their derived names; waking the instances
//! that wait when an upstream instance finishes; cycles among a namespace's workflows.

use chrono::{DateTime, Utc};
use kube::ResourceExt;
use kube::runtime::reflector::ObjectRef;

use super::context::Context;
use super::index::instances_of;
use charon_core::dependency;
use charon_core::instance::{State, waiting};
use charon_core::resources::{Workflow, WorkflowInstance, condition_type, find_condition};
use charon_core::schedule::Schedule;
use charon_core::validate::{self, Policy};

/// What an instance's dependencies say: whether the upstream partitions it needs are all
/// `Done` (`Err` is the message it shows while it waits; a workflow without
/// `spec.dependsOn` needs nothing), and when a wait ends in Error.
pub struct Dependencies {
    /// The verdict.
    pub met: Result<(), String>,
    /// `spec.dependencyTimeout` after the trigger of the current run (the instance's
    /// creation, or the re-open of a finished one).
    pub deadline: Option<DateTime<Utc>>,
}

impl Dependencies {
    /// Nothing to wait for.
    pub const NONE: Dependencies = Dependencies {
        met: Ok(()),
        deadline: None,
    };
}

/// [`Dependencies`] of a queued `instance` of `workflow`, from the caches.
pub fn check(
    ctx: &Context,
    namespace: &str,
    instance: &WorkflowInstance,
    workflow: &Workflow,
) -> Dependencies {
    if workflow.spec.depends_on.is_empty() {
        return Dependencies::NONE;
    }
    // An invalid workflow is reported on the workflow; its instances wait for the fix.
    let Ok(valid) = validate::workflow(&workflow.spec, Policy::PERMISSIVE) else {
        return Dependencies::NONE;
    };
    Dependencies {
        met: met(ctx, namespace, instance, workflow, &valid.schedule),
        deadline: valid
            .dependency_timeout
            .and_then(|timeout| triggered(instance)?.checked_add_signed(timeout)),
    }
}

fn met(
    ctx: &Context,
    namespace: &str,
    instance: &WorkflowInstance,
    workflow: &Workflow,
    downstream: &Schedule,
) -> Result<(), String> {
    let mut needed = Vec::new();
    for dependency in &workflow.spec.depends_on {
        let upstream = ctx
            .workflows
            .get(&ObjectRef::new(&dependency.workflow).within(namespace));
        let Some(upstream) = upstream else {
            return Err(format!(
                "waiting for dependencies: upstream workflow {} does not exist in namespace {namespace}",
                dependency.workflow
            ));
        };
        let Ok(upstream_valid) = validate::workflow(&upstream.spec, Policy::PERMISSIVE) else {
            return Err(format!(
                "waiting for dependencies: upstream workflow {} has an invalid spec",
                dependency.workflow
            ));
        };
        let needs = dependency::needs(
            downstream,
            &dependency.workflow,
            &upstream_valid.schedule,
            dependency.partitions,
            instance.spec.logical_time,
        )
        .map_err(|why| format!("waiting for dependencies: {why}"))?;
        for need in needs {
            let state = ctx
                .instances
                .get(&ObjectRef::new(&need.instance).within(namespace))
                .map(|i| i.status.clone().unwrap_or_default().state);
            needed.push((need, state));
        }
    }
    dependency::verdict(&needed)
}

/// When the current run was triggered: the re-open of a finished instance, else its creation.
fn triggered(instance: &WorkflowInstance) -> Option<DateTime<Utc>> {
    let reopened = instance
        .status
        .as_ref()
        .and_then(|s| s.history.iter().rev().find(|h| h.reason == "Reopened"))
        .map(|h| h.at);
    let created = instance.metadata.creation_timestamp.as_ref();
    reopened.or_else(|| created.and_then(charon_core::observe::time))
}

/// Wakes the instances waiting for dependencies in the workflows that depend on `workflow`
/// (one of whose instances just reached `Done`).
pub fn wake_dependents(ctx: &Context, namespace: &str, workflow: &str) {
    for downstream in ctx.memory.dependents.of(namespace, workflow) {
        for instance in instances_of(ctx, namespace, &downstream) {
            let waiting = instance.status.as_ref().is_none_or(|s| {
                s.state == State::Queued && s.reason.as_deref() != Some(waiting::SLOT)
            });
            if waiting {
                let _ = ctx.wake.send(ObjectRef::from_obj(&*instance));
            }
        }
    }
}

/// A cycle of `spec.dependsOn` through `workflow`, among the workflows of its namespace as
/// the cache holds them (`workflow` itself as given).
pub fn cycle(ctx: &Context, namespace: &str, workflow: &Workflow) -> Option<Vec<String>> {
    if workflow.spec.depends_on.is_empty() {
        return None;
    }
    let name = workflow.name_any();
    let upstream_of = |of: &str| -> Vec<String> {
        let names = |w: &Workflow| {
            w.spec
                .depends_on
                .iter()
                .map(|d| d.workflow.clone())
                .collect()
        };
        if of == name {
            return names(workflow);
        }
        ctx.workflows
            .get(&ObjectRef::new(of).within(namespace))
            .map(|w| names(&w))
            .unwrap_or_default()
    };
    dependency::cycle(&name, upstream_of)
}

/// After `workflow`'s dependencies changed: wakes the other workflows of the namespace that
/// are refused for a cycle, so that those the change freed become valid again.
pub fn wake_refused(ctx: &Context, namespace: &str, workflow: &str) {
    for other in ctx.workflows.state() {
        if other.namespace().as_deref() != Some(namespace) || other.name_any() == workflow {
            continue;
        }
        let refused = other.status.as_ref().is_some_and(|s| {
            find_condition(&s.conditions, condition_type::VALID)
                .is_some_and(|c| charon_core::workflow::refused_for_a_cycle(&c.message))
        });
        if refused {
            let _ = ctx.wake_workflow.send(ObjectRef::from_obj(&*other));
        }
    }
}
