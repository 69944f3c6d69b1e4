//! The Kubernetes adapters around the pure core: a Workflow reconciler (natural triggers), a
//! WorkflowInstance reconciler (the state machine, Jobs, retries) and a Backfill reconciler,
//! run by kube-runtime. This module only wires them: the watches, the caches and indexes,
//! and who wakes whom.
//!
//! Each reconcile follows one pipeline: read from the caches → validate and plan (pure, in
//! [`charon_core`]) → apply (create or delete children) → write status only when it changed,
//! with `observedGeneration`. Timing comes from kube-runtime's scheduler, one delay queue
//! across all objects: a workflow is requeued at its next trigger instant, an instance at its
//! retry time or timeout.
//!
//! - [`context`]: what the reconcilers share and the steps they have in common;
//! - [`memory`]: what the operator remembers between reconciles, forgotten with the instance;
//! - [`index`]: how objects find each other (a workflow's instances, a Job's pods);
//! - [`error`]: errors naming the call and the object, and what a failed call means.

mod archive;
mod context;
mod dependencies;
mod events;
pub mod index;
mod instance;
mod liveness;
mod memory;
mod metrics;
pub mod packed;
mod pools;
pub mod shards;
mod streams;
mod workflow;

pub mod backfill;
pub mod clock;
pub mod error;
pub mod leader;
pub mod triggers;

use std::sync::Arc;

use futures::StreamExt;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Pod;
use kube::runtime::controller::{Config, Controller};
use kube::runtime::reflector;
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client};
use tokio::sync::mpsc;

use charon_core::resources::{Backfill, Pool, Quota, Workflow, WorkflowInstance};

pub use clock::{Clock, ShiftedClock, SystemClock};
pub use context::Context;
pub use error::Error;
pub use events::{EventLevel, EventRecorder};
pub use instance::RETRY_NOW;
pub use metrics::Metrics;

use index::{NameIndex, instance_of, instance_of_job, job_of_pod, workflow_name, workflow_of};
use memory::{Memory, finished_flips};
use packed::Packed;
use streams::{
    FanOut, by_name, gained_stream, jumps_stream, relay_instances, requests_of, stream_of,
};

/// How the controllers run.
#[derive(Clone)]
pub struct Options {
    /// Only this namespace, or all.
    pub namespace: Option<String>,
    /// The time source.
    pub clock: Arc<dyn Clock>,
    /// Metrics to update.
    pub metrics: Arc<Metrics>,
    /// Name of this replica, for Events.
    pub identity: String,
    /// Which Events to write.
    pub events: EventLevel,
    /// What workflows may ask for beyond the defaults (`--allow-privileged-pods`).
    pub policy: charon_core::validate::Policy,
    /// Where attempts' logs are archived (`--log-store`); none keeps logs in pods only.
    pub log_store: Option<Arc<crate::logstore::LogStore>>,
    /// Where pipelines and arrays get `charon-launcher` from.
    pub launcher: LauncherConfig,
    /// The shards this replica acts on ([`shards::Shards::unsharded`]: everything).
    pub shards: Arc<shards::Shards>,
}

/// The image holding `charon-launcher` and its path there (`--launcher-image`,
/// `--launcher-command`): the operator's own image by default.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LauncherConfig {
    /// The image.
    pub image: String,
    /// The launcher's path in it.
    pub command: String,
}

impl Default for LauncherConfig {
    fn default() -> Self {
        let launcher = charon_core::pipeline::Launcher::DEFAULT;
        LauncherConfig {
            image: launcher.image.to_string(),
            command: launcher.command.to_string(),
        }
    }
}

fn api_for<K>(client: &Client, namespace: Option<&str>) -> Api<K>
where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>,
    K::DynamicType: Default,
{
    match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    }
}

/// Workflows reconciled at once: bounds the operator's connections and the load it puts on
/// the API server when thousands of workflows are due at the same instant.
const WORKFLOW_RECONCILES: u16 = 128;

/// Instances reconciled at once (see [`WORKFLOW_RECONCILES`]).
const INSTANCE_RECONCILES: u16 = 64;

/// How long changes to an instance and its Job and Pod are gathered before it is reconciled:
/// a pod that starts and ends within it costs one status write, not three.
const INSTANCE_DEBOUNCE: std::time::Duration = std::time::Duration::from_millis(500);

/// Instance changes buffered for each controller before the shared watch waits for it.
const INSTANCE_EVENTS_BUFFER: usize = 4096;

/// How long changes to a backfill's instances are gathered before it is reconciled.
const BACKFILL_DEBOUNCE: std::time::Duration = std::time::Duration::from_millis(500);

/// How long wake-ups of a pool are gathered before its status is brought up to date.
const POOL_DEBOUNCE: std::time::Duration = std::time::Duration::from_millis(500);

/// Trims a cached workflow or instance to what the operator reads.
///
/// The caches hold every workflow and instance: the operator never reads who manages which
/// field (often the larger part of an object), their labels or owners, or any annotation but
/// its own (`kubectl apply` keeps a copy of the whole manifest in one). Its writes to them are
/// status writes, which the API server takes the status of alone, and merge patches. (Jobs
/// and Pods keep even less: `charon_core::slim`.)
fn trim<K: kube::Resource>(object: &mut K) {
    let meta = object.meta_mut();
    meta.managed_fields = None;
    meta.labels = None;
    meta.owner_references = None;
    if let Some(annotations) = meta.annotations.as_mut() {
        // Charon's own are named in its API group: `charon.dev/...`.
        annotations.retain(|key, _| {
            key.strip_prefix(charon_core::resources::GROUP)
                .is_some_and(|rest| rest.starts_with('/'))
        });
        if annotations.is_empty() {
            meta.annotations = None;
        }
    }
}

/// Runs the Workflow, WorkflowInstance and Backfill controllers until `shutdown` resolves.
pub async fn run(
    client: Client,
    options: Options,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    let namespace = options.namespace.as_deref();
    let charon_children = watcher::Config::default().labels(charon_core::job::LABEL_INSTANCE);
    let events = EventRecorder::new(client.clone(), &options.identity, options.events);
    let archiver = options.log_store.clone().map(|store| {
        archive::Archiver::new(
            store,
            client.clone(),
            options.clock.clone(),
            events.clone(),
            options.metrics.clone(),
            options.shards.clone(),
        )
    });

    // Jobs and Pods are cached packed (`packed`); the watch hands them on whole to wake their
    // instances.
    let (jobs, mut jobs_writer) = reflector::store();
    let job_index = Arc::new(NameIndex::new(Packed::<Job>::owner));
    let index = job_index.clone();
    let dictionary = packed::Dictionary::default();
    let job_stream = watcher(api_for::<Job>(&client, namespace), charon_children.clone())
        .default_backoff()
        .modify(charon_core::slim::job)
        .inspect(move |event| {
            if let Ok(event) = event {
                packed::apply(
                    event,
                    instance_of_job,
                    &dictionary,
                    &index,
                    &mut jobs_writer,
                );
            }
        })
        .touched_objects();
    let (pods, mut pods_writer) = reflector::store();
    let pod_index = Arc::new(NameIndex::new(Packed::<Pod>::owner));
    let index = pod_index.clone();
    let dictionary = packed::Dictionary::default();
    let pod_archiver = archiver.clone();
    let pod_stream = watcher(api_for::<Pod>(&client, namespace), charon_children)
        .default_backoff()
        .modify(charon_core::slim::pod)
        .inspect(move |event| {
            if let Ok(event) = event {
                packed::apply(event, job_of_pod, &dictionary, &index, &mut pods_writer);
                if let Some(archiver) = &pod_archiver {
                    archiver.follow(event);
                }
            }
        })
        .touched_objects();

    let (wake, woken) = mpsc::unbounded_channel();

    // One watch of the instances feeds every controller, after its cache is updated: a
    // controller woken by an instance change then reads at least that change from
    // `Context::instances`. (With a watch each, a workflow or backfill could be woken by its
    // own watch, read an older cache, write a stale status and never be woken again.) The
    // objects are handed on as the cache holds them when the change is applied: a subscriber
    // handed only a name would look it up later and find nothing if the instance was deleted
    // meanwhile (kube-runtime's shared-store subscriber then waits for ever, which stalled
    // the instance controller when instances were deleted as soon as they finished).
    let (instances, instances_writer) = reflector::store();
    let (fan_out, [instance_events, workflow_events, backfill_events]) =
        FanOut::new(INSTANCE_EVENTS_BUFFER);
    // Deletions are not passed to subscribers; the workflow and backfill of a deleted
    // instance are told through these instead.
    let (workflow_wake, workflow_woken) = mpsc::unbounded_channel();
    let (backfill_wake, backfill_woken) = mpsc::unbounded_channel();
    let instance_index = Arc::new(NameIndex::new(workflow_name));
    let index = instance_index.clone();
    let memory = Arc::new(Memory::default());
    let forget = memory.clone();
    let cached = instances.clone();
    let instance_watch = watcher(
        api_for::<WorkflowInstance>(&client, namespace),
        watcher::Config::default(),
    )
    .default_backoff()
    .modify(trim)
    // The index learns of an instance before the cache does, so whoever the change wakes
    // finds it in both.
    .inspect(move |event| {
        if let Ok(event) = event {
            index.follow(event);
        }
    })
    .reflect(instances_writer);
    let wake_workflow = workflow_wake.clone();
    let forget_logs = archiver.clone();
    let instance_root = relay_instances(instance_watch, cached, fan_out, move |instance| {
        forget.forget(instance);
        if let Some(archiver) = &forget_logs {
            archiver.forget(instance);
        }
        if let Some(workflow) = workflow_of(instance) {
            let _ = workflow_wake.send(workflow);
        }
        if let Some(backfill) = backfill::backfill_of(instance) {
            let _ = backfill_wake.send(backfill);
        }
    });

    let backfill_controller = Controller::new(
        api_for::<Backfill>(&client, namespace),
        watcher::Config::default(),
    )
    .watches_shared_stream(backfill_events, |instance: Arc<WorkflowInstance>| {
        backfill::backfill_of(&instance)
    })
    .reconcile_on(stream_of(backfill_woken))
    .reconcile_all_on(gained_stream(&options.shards))
    // A backfill's status lists every partition: coalesce the many changes of its instances
    // into one reconcile (and one status write) per period.
    .with_config(Config::default().debounce(BACKFILL_DEBOUNCE));
    // Pools are cluster-scoped: their slots are shared by every namespace.
    let (pool_wake, pool_woken) = mpsc::unbounded_channel();
    // Only an operator watching every namespace uses them (it sees every holder).
    let pool_controller = namespace.is_none().then(|| {
        Controller::new(Api::<Pool>::all(client.clone()), watcher::Config::default())
            .reconcile_on(stream_of(pool_woken))
            .reconcile_all_on(gained_stream(&options.shards))
            .with_config(Config::default().debounce(POOL_DEBOUNCE))
    });
    // A Quota's status follows the attempts of its namespace as they start and end.
    let (quota_wake, quota_woken) = mpsc::unbounded_channel();
    let quota_controller = Controller::new(
        api_for::<Quota>(&client, namespace),
        watcher::Config::default(),
    )
    .reconcile_on(stream_of(quota_woken))
    .reconcile_all_on(gained_stream(&options.shards))
    .with_config(Config::default().debounce(POOL_DEBOUNCE));
    let (workflows, workflows_writer) = reflector::store();
    let workflow_stream = watcher(
        api_for::<Workflow>(&client, namespace),
        watcher::Config::default(),
    )
    .default_backoff()
    .modify(trim)
    .reflect(workflows_writer)
    .applied_objects();
    // Both controllers are woken by name alone (`requests_of`), their own objects included.
    let mut workflow_controller = Controller::for_stream(
        futures::stream::pending::<Result<Workflow, watcher::Error>>(),
        workflows,
    )
    .reconcile_on(requests_of(workflow_stream, |workflow: Workflow| {
        Some(by_name(&workflow))
    }))
    // An instance names its workflow in its spec (the cache drops owner references).
    // Requests by name alone: as related objects, each pending one would carry the
    // instance's type and version too, at a burst one per workflow.
    .reconcile_on(
        finished_flips(workflow_events, memory.clone())
            .filter_map(|instance| futures::future::ready(workflow_of(&instance))),
    )
    .reconcile_on(stream_of(workflow_woken))
    .reconcile_all_on(gained_stream(&options.shards))
    .with_config(Config::default().concurrency(WORKFLOW_RECONCILES));
    let mut instance_controller =
        Controller::for_shared_stream(futures::stream::pending(), instances)
            .reconcile_on(instance_events.map(|instance| by_name(&*instance)))
            .reconcile_on(requests_of(job_stream, |job: Job| {
                instance_of(&job.metadata)
            }))
            .reconcile_on(requests_of(pod_stream, |pod: Pod| {
                instance_of(&pod.metadata)
            }))
            .reconcile_on(stream_of(woken))
            .reconcile_all_on(gained_stream(&options.shards))
            .with_config(
                Config::default()
                    .concurrency(INSTANCE_RECONCILES)
                    .debounce(INSTANCE_DEBOUNCE),
            );
    if let Some(jumps) = options.clock.jumps() {
        workflow_controller = workflow_controller.reconcile_all_on(jumps_stream(jumps.clone()));
        instance_controller = instance_controller.reconcile_all_on(jumps_stream(jumps));
    }

    let context = Arc::new(Context {
        client: client.clone(),
        namespace: options.namespace.clone(),
        clock: options.clock.clone(),
        workflows: workflow_controller.store(),
        backfills: backfill_controller.store(),
        instances: instance_controller.store(),
        pools: pool_controller
            .as_ref()
            .map_or_else(|| reflector::store().0, |c| c.store()),
        quotas: quota_controller.store(),
        wake_pool: pool_wake,
        wake_quota: quota_wake,
        instance_index,
        jobs,
        job_index,
        pods,
        pod_index,
        events,
        metrics: options.metrics.clone(),
        wake,
        wake_workflow,
        memory,
        policy: options.policy,
        log_archive: archiver.is_some(),
        launcher: options.launcher.clone(),
        shards: options.shards.clone(),
    });
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    let workflows = workflow_controller
        .graceful_shutdown_on(stopped(stop_rx.clone()))
        .run(workflow::reconcile, workflow::error_policy, context.clone())
        .for_each(|_| async {});
    let instances = instance_controller
        .graceful_shutdown_on(stopped(stop_rx.clone()))
        .run(instance::reconcile, instance::error_policy, context.clone())
        .for_each(|_| async {});
    let backfills = backfill_controller
        .graceful_shutdown_on(stopped(stop_rx.clone()))
        .run(backfill::reconcile, backfill::error_policy, context.clone())
        .for_each(|_| async {});
    let pools = {
        let (stop, context) = (stopped(stop_rx.clone()), context.clone());
        async move {
            if let Some(controller) = pool_controller {
                controller
                    .graceful_shutdown_on(stop)
                    .run(pools::reconcile_pool, pools::pool_error_policy, context)
                    .for_each(|_| async {})
                    .await;
            }
        }
    };
    let quotas = quota_controller
        .graceful_shutdown_on(stopped(stop_rx.clone()))
        .run(
            pools::reconcile_quota,
            pools::quota_error_policy,
            context.clone(),
        )
        .for_each(|_| async {});
    let stop_rx_root = stop_rx.clone();
    let gauges = metrics::refresh_instance_gauges(context.clone(), stopped(stop_rx.clone()));
    let archiving = {
        let (namespace, instances) = (options.namespace.clone(), context.instances.clone());
        let stop = stopped(stop_rx.clone());
        let (pods, mut gained) = (context.pods.clone(), options.shards.gained());
        async move {
            if let Some(archiver) = archiver {
                // The held pods of a shard gained were offered when they were seen: offer
                // them again, this replica now archives them.
                let reoffer = async {
                    while gained.changed().await.is_ok() {
                        for pod in pods.state() {
                            archiver.offer(&pod.unpack());
                        }
                    }
                };
                tokio::select! {
                    () = archiver.clone().run(namespace, instances, stop) => {}
                    () = reoffer => {}
                }
            }
        }
    };
    let watchdog = liveness::watch(context.clone(), stopped(stop_rx));
    let signal = async move {
        shutdown.await;
        let _ = stop_tx.send(true);
    };
    // The shared instance watch runs until the controllers have stopped.
    let instance_root = async move {
        tokio::select! {
            () = instance_root => {}
            () = stopped(stop_rx_root) => {}
        }
    };
    tokio::join!(
        workflows,
        instances,
        backfills,
        pools,
        quotas,
        gauges,
        watchdog,
        archiving,
        signal,
        instance_root
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::runtime::reflector::ObjectRef;

    #[test]
    fn trimming_keeps_only_what_the_operator_reads() {
        let mut instance: WorkflowInstance = serde_json::from_value(serde_json::json!({
            "apiVersion": "charon.dev/v1alpha1", "kind": "WorkflowInstance",
            "metadata": {
                "name": "nightly-1", "namespace": "ns", "uid": "u-1", "resourceVersion": "9",
                "labels": {"charon.dev/workflow": "nightly"},
                "annotations": {
                    "charon.dev/retry-now": "true",
                    "kubectl.kubernetes.io/last-applied-configuration": "{}",
                },
                "ownerReferences": [{"apiVersion": "charon.dev/v1alpha1", "kind": "Workflow",
                    "name": "nightly", "uid": "w-1", "controller": true}],
                "managedFields": [{"manager": "kubectl", "operation": "Apply"}],
            },
            "spec": {"workflow": "nightly", "parameter": "2026-01-01T00", "logicalTime":
                "2026-01-01T00:00:00Z", "trigger": {"type": "natural", "id": "natural"}},
        }))
        .expect("an instance");
        trim(&mut instance);
        let meta = &instance.metadata;
        assert_eq!(meta.managed_fields, None);
        assert_eq!(meta.labels, None);
        assert_eq!(meta.owner_references, None);
        assert_eq!(
            meta.annotations
                .as_ref()
                .map(|a| a.keys().cloned().collect::<Vec<_>>()),
            Some(vec!["charon.dev/retry-now".to_string()]),
            "Charon's own annotations are kept, others dropped"
        );
        assert_eq!(meta.resource_version.as_deref(), Some("9"));
        assert_eq!(meta.uid.as_deref(), Some("u-1"));
        assert_eq!(
            workflow_of(&instance),
            Some(ObjectRef::new("nightly").within("ns"))
        );

        let mut foreign_only = instance.clone();
        foreign_only.metadata.annotations =
            Some([("example.com/x".to_string(), "1".to_string())].into());
        trim(&mut foreign_only);
        assert_eq!(foreign_only.metadata.annotations, None);
    }
}
