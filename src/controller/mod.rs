//! The Kubernetes adapters around the pure core: a Workflow reconciler (natural triggers) and
//! a WorkflowInstance reconciler (the state machine, Jobs, retries), run by kube-runtime.
//!
//! Each reconcile follows one pipeline: read from the caches → validate and plan (pure, in
//! [`crate::workflow`] and [`crate::instance`]) → apply (create or delete children) → write
//! status only when it changed, with `observedGeneration`. Timing comes from kube-runtime's
//! scheduler, one delay queue across all objects: a workflow is requeued at its next trigger
//! instant, an instance at its retry time or timeout.

mod events;
mod instance;
mod metrics;
mod pace;
mod workflow;

pub mod backfill;
pub mod triggers;

pub mod leader;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

use chrono::{DateTime, Duration, Utc};
use futures::StreamExt;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::runtime::controller::Controller;
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client};
use thiserror::Error;
use tokio::sync::{Mutex, mpsc};

use crate::resources::{InstanceState, Workflow, WorkflowInstance, WorkflowInstanceStatus};

pub use events::{EventLevel, EventRecorder};
pub use instance::RETRY_NOW;
pub use metrics::Metrics;

/// Errors of one reconcile. All of them are transient (the object is requeued with a delay);
/// problems with what a user wrote are reported in status and Events, not as errors.
#[derive(Debug, Error)]
pub enum Error {
    /// A call to the API server failed.
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    /// An object could not be (de)serialised.
    #[error("serialisation: {0}")]
    Json(#[from] serde_json::Error),
    /// The object lacks something every stored object has.
    #[error("object without {0}")]
    Incomplete(&'static str),
    /// A Job with the name this attempt needs exists but is not this instance's (left by an
    /// earlier instance of the same name, on its way out): wait for it to go.
    #[error("Job {0} exists but belongs to another object; waiting for it to be deleted")]
    ForeignJob(String),
}

/// Where the controllers get the time from: the system clock, or in tests a clock that can
/// be moved forward so days of schedule pass in seconds.
pub trait Clock: Send + Sync {
    /// The current time.
    fn now(&self) -> DateTime<Utc>;

    /// Changes whenever the clock jumps, so the controllers look at everything again (as
    /// they would have had the time passed); `None` for clocks that only move forward evenly.
    fn jumps(&self) -> Option<tokio::sync::watch::Receiver<u64>> {
        None
    }
}

/// The system clock.
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> DateTime<Utc> {
        Utc::now()
    }
}

/// The system clock shifted by an adjustable amount.
#[derive(Debug)]
pub struct ShiftedClock {
    offset_ms: AtomicI64,
    jumps: tokio::sync::watch::Sender<u64>,
}

impl Default for ShiftedClock {
    fn default() -> Self {
        ShiftedClock {
            offset_ms: AtomicI64::new(0),
            jumps: tokio::sync::watch::Sender::new(0),
        }
    }
}

impl ShiftedClock {
    /// Moves the clock forward by `by`.
    pub fn advance(&self, by: Duration) {
        self.offset_ms
            .fetch_add(by.num_milliseconds(), Ordering::SeqCst);
        self.jumps.send_modify(|n| *n += 1);
    }
}

impl Clock for ShiftedClock {
    fn now(&self) -> DateTime<Utc> {
        Utc::now() + Duration::milliseconds(self.offset_ms.load(Ordering::SeqCst))
    }

    fn jumps(&self) -> Option<tokio::sync::watch::Receiver<u64>> {
        Some(self.jumps.subscribe())
    }
}

/// What the controllers share.
pub struct Context {
    /// The API client.
    pub client: Client,
    /// The namespace watched, or `None` for all.
    pub namespace: Option<String>,
    /// The time source.
    pub clock: Arc<dyn Clock>,
    /// Cached Workflows.
    pub workflows: Store<Workflow>,
    /// Cached WorkflowInstances.
    pub instances: Store<WorkflowInstance>,
    /// Which cached instances belong to which workflow.
    pub instance_index: Arc<NameIndex<WorkflowInstance>>,
    /// Pods by the Job they belong to.
    pub pod_index: Arc<NameIndex<Pod>>,
    /// Whether workflows are busy creating instances.
    pub burst: Arc<TriggerBurst>,
    /// Cached Jobs created by Charon.
    pub jobs: Store<Job>,
    /// Cached Pods of those Jobs.
    pub pods: Store<Pod>,
    /// Event writer.
    pub events: EventRecorder,
    /// Prometheus metrics.
    pub metrics: Arc<Metrics>,
    /// States this controller wrote, fresher than the cache: concurrency admission counts
    /// from it so two instances reconciled at once cannot both take the last slot.
    pub ledger: Mutex<HashMap<ObjectRef<WorkflowInstance>, InstanceState>>,
    /// Asks the instance controller to look at instances again (a slot was freed).
    pub wake: mpsc::UnboundedSender<ObjectRef<WorkflowInstance>>,
    /// The resourceVersion of this controller's last write to each object, until the cache
    /// has caught up with it (see [`Writes`]).
    pub writes: Writes,
    /// Attempts started but not yet recorded (see [`Unrecorded`]).
    pub unrecorded: Arc<Unrecorded>,
    /// Workflows holding back their status write after a trigger.
    pub status_held: Held,
    /// How busy the controller is starting and ending runs (see [`pace`]).
    pub pace: pace::Pace,
}

/// The workflows holding back their status write after a trigger (see the workflow
/// reconciler): since when, and which instances they created meanwhile.
#[derive(Default)]
pub struct Held(std::sync::Mutex<HashMap<ObjectRef<Workflow>, Hold>>);

/// One workflow's held-back status write.
struct Hold {
    /// The workflow's uid: a workflow created again under the name holds nothing.
    uid: String,
    since: std::time::Instant,
    /// Instances created while holding. Until the status (the trigger cursor) is written,
    /// every pass plans them again; this answers for those the cache does not show yet, so
    /// they are not created a second time only to get AlreadyExists.
    created: std::collections::HashSet<String>,
}

impl Hold {
    fn new(uid: String) -> Self {
        Hold {
            uid,
            since: std::time::Instant::now(),
            created: Default::default(),
        }
    }
}

impl Held {
    /// Runs `f` on the workflow's hold, if any; a hold left by an earlier workflow of the same
    /// name is dropped first. What `f` leaves in the option is kept.
    fn with<T>(&self, workflow: &Workflow, f: impl FnOnce(&mut Option<Hold>) -> T) -> T {
        let key = ObjectRef::from_obj(workflow);
        let uid = workflow.metadata.uid.as_deref().unwrap_or_default();
        let mut held = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let mut hold = held.remove(&key).filter(|h| h.uid == uid);
        let out = f(&mut hold);
        if let Some(hold) = hold {
            held.insert(key, hold);
        }
        out
    }

    /// Records an instance created after a trigger, and starts holding unless already
    /// holding (the first trigger's time bounds the hold).
    pub fn created(&self, workflow: &Workflow, instance: &str) {
        let uid = workflow.metadata.uid.clone().unwrap_or_default();
        self.with(workflow, |hold| {
            hold.get_or_insert_with(|| Hold::new(uid))
                .created
                .insert(instance.to_string());
        });
    }

    /// Whether this workflow created the instance while holding.
    pub fn has_created(&self, workflow: &Workflow, instance: &str) -> bool {
        self.with(workflow, |hold| {
            hold.as_ref().is_some_and(|h| h.created.contains(instance))
        })
    }

    /// How much longer the hold may last, if it is held and `limit` has not passed.
    pub fn left(
        &self,
        workflow: &Workflow,
        limit: std::time::Duration,
    ) -> Option<std::time::Duration> {
        self.with(workflow, |hold| {
            limit
                .checked_sub(hold.as_ref()?.since.elapsed())
                .filter(|d| !d.is_zero())
        })
    }

    /// Stops holding: the status is written (or the workflow is going).
    pub fn release(&self, workflow: &Workflow) {
        self.with(workflow, |hold| *hold = None);
    }
}

/// Gives triggering priority over starting instances: while workflows are creating
/// instances (thousands may come due at one instant), new instances wait to be started, so
/// the API server and the machine serve the triggers first. The wait is bounded, so a steady
/// stream of triggers cannot hold instances back for long.
#[derive(Default)]
pub struct TriggerBurst {
    /// Reconciles creating instances now, and since when there have been any.
    creating: std::sync::Mutex<(usize, Option<std::time::Instant>)>,
}

/// The longest a burst of triggers holds back new instances.
const BURST_HOLD: std::time::Duration = std::time::Duration::from_secs(5);

impl TriggerBurst {
    /// Marks a reconcile that creates instances, until the guard is dropped.
    fn enter(self: &Arc<Self>) -> BurstGuard {
        if let Ok(mut creating) = self.creating.lock() {
            creating.0 += 1;
            creating.1.get_or_insert_with(std::time::Instant::now);
        }
        BurstGuard(self.clone())
    }

    /// Whether new instances should wait.
    fn holds(&self) -> bool {
        self.creating.lock().is_ok_and(|creating| {
            creating.0 > 0 && creating.1.is_some_and(|since| since.elapsed() < BURST_HOLD)
        })
    }
}

/// Held while a reconcile creates instances (see [`TriggerBurst`]).
struct BurstGuard(Arc<TriggerBurst>);

impl Drop for BurstGuard {
    fn drop(&mut self) {
        if let Ok(mut creating) = self.0.creating.lock() {
            creating.0 = creating.0.saturating_sub(1);
            if creating.0 == 0 {
                creating.1 = None;
            }
        }
    }
}

/// Object names grouped by (namespace, owner name), kept from a watch stream, so a reconcile
/// finds a workflow's instances or a Job's pods without scanning every object in a cache.
/// `key` says which owner an object belongs to (none: not indexed).
pub struct NameIndex<K> {
    key: fn(&K) -> Option<&str>,
    by_owner: std::sync::RwLock<HashMap<(String, String), std::collections::BTreeSet<String>>>,
}

impl<K: kube::Resource> NameIndex<K> {
    /// An empty index grouping objects by `key`.
    pub fn new(key: fn(&K) -> Option<&str>) -> Self {
        NameIndex {
            key,
            by_owner: std::sync::RwLock::default(),
        }
    }

    fn key_of(&self, object: &K) -> Option<(String, String)> {
        Some((
            object.meta().namespace.clone()?,
            (self.key)(object)?.to_string(),
        ))
    }

    /// Follows a watch event (applied before the cache sees it, so whoever the change wakes
    /// finds the object in both).
    fn follow(&self, event: &Result<watcher::Event<K>, watcher::Error>) {
        match event {
            Ok(watcher::Event::Apply(object) | watcher::Event::InitApply(object)) => {
                self.insert(object);
            }
            Ok(watcher::Event::Delete(object)) => self.remove(object),
            _ => {}
        }
    }

    fn insert(&self, object: &K) {
        if let (Some(key), Some(name), Ok(mut index)) = (
            self.key_of(object),
            object.meta().name.clone(),
            self.by_owner.write(),
        ) {
            index.entry(key).or_default().insert(name);
        }
    }

    fn remove(&self, object: &K) {
        if let (Some(key), Some(name), Ok(mut index)) = (
            self.key_of(object),
            object.meta().name.as_deref(),
            self.by_owner.write(),
        ) && let Some(names) = index.get_mut(&key)
        {
            names.remove(name);
            if names.is_empty() {
                index.remove(&key);
            }
        }
    }

    /// The cached objects of one owner. The index may name objects deleted meanwhile (a
    /// relist does not report deletions) or names reused by another owner's object, so each
    /// is looked up in the cache and checked there.
    pub fn lookup(&self, store: &Store<K>, namespace: &str, owner: &str) -> Vec<Arc<K>>
    where
        K: Clone,
        K::DynamicType: Default + Eq + std::hash::Hash + Clone,
    {
        let Ok(index) = self.by_owner.read() else {
            return Vec::new();
        };
        index
            .get(&(namespace.to_string(), owner.to_string()))
            .into_iter()
            .flatten()
            .filter_map(|name| store.get(&ObjectRef::new(name).within(namespace)))
            .filter(|object| (self.key)(object) == Some(owner))
            .collect()
    }
}

/// The label the Job controller puts on a Job's pods.
const JOB_NAME_LABEL: &str = "job-name";

/// The Job a pod belongs to, by its label.
fn job_of_pod(pod: &Pod) -> Option<&str> {
    pod.metadata
        .labels
        .as_ref()?
        .get(JOB_NAME_LABEL)
        .map(String::as_str)
}

/// The workflow an instance belongs to.
fn workflow_name(instance: &WorkflowInstance) -> Option<&str> {
    Some(instance.spec.workflow.as_str())
}

/// Remembers this controller's own recent writes so a reconcile does not act on a cache that
/// has not seen them yet: it would plan from stale state and its write would only conflict.
#[derive(Default)]
pub struct Writes {
    pending: std::sync::Mutex<HashMap<String, (String, std::time::Instant)>>,
}

/// How long to wait for the cache to show a write before trusting it anyway: under a burst of
/// thousands of instances the watch can be seconds behind, and acting on the older view only
/// ends in a conflict.
const WRITE_VISIBLE_WITHIN: std::time::Duration = std::time::Duration::from_secs(30);

impl Writes {
    /// Records that the object with this metadata (as the write returned it) is ours.
    pub fn wrote(&self, meta: &ObjectMeta) {
        let (uid, resource_version) = (meta.uid.as_deref(), meta.resource_version.as_deref());
        if let (Some(uid), Some(rv), Ok(mut pending)) = (uid, resource_version, self.pending.lock())
        {
            pending.insert(uid.to_string(), (rv.to_string(), std::time::Instant::now()));
        }
    }

    /// Whether the cached object with this metadata may be behind our last write to it.
    pub fn stale(&self, meta: &ObjectMeta) -> bool {
        let (uid, resource_version) = (meta.uid.as_deref(), meta.resource_version.as_deref());
        let (Some(uid), Ok(mut pending)) = (uid, self.pending.lock()) else {
            return false;
        };
        match pending.get(uid) {
            Some((rv, _)) if resource_version.is_some_and(|cached| caught_up(cached, rv)) => {
                pending.remove(uid);
                false
            }
            Some((_, at)) if at.elapsed() < WRITE_VISIBLE_WITHIN => true,
            Some(_) => {
                pending.remove(uid);
                false
            }
            None => false,
        }
    }
}

/// Attempts whose Job exists but whose start is not on record yet: the status this controller
/// owes each instance's status subresource. Recording an attempt when it finishes (or after a
/// few seconds) rather than before the Job saves up to two status writes per attempt. It is
/// safe to lose: the Job's name comes from the execution number, so a restarted controller
/// plans the same name again and finds the Job instead of creating a second one.
#[derive(Default)]
pub struct Unrecorded(std::sync::Mutex<HashMap<ObjectRef<WorkflowInstance>, Owed>>);

/// A status not yet written.
#[derive(Clone, Debug, PartialEq)]
pub struct Owed {
    /// The instance's uid: an instance deleted and created again under the name owes nothing.
    pub uid: String,
    /// The status to write.
    pub status: WorkflowInstanceStatus,
    /// When the Job was created, by the controller's clock.
    pub since: DateTime<Utc>,
}

impl Unrecorded {
    /// What is owed to this instance, as long as its stored status has not moved past it.
    pub fn owed(&self, instance: &WorkflowInstance) -> Option<Owed> {
        let key = ObjectRef::from_obj(instance);
        let mut owed = self.0.lock().ok()?;
        let entry = owed.get(&key)?;
        let applies = instance.metadata.uid.as_deref() == Some(entry.uid.as_str())
            && instance.status.as_ref().is_none_or(|stored| {
                stored.execution < entry.status.execution && !stored.state.is_terminal()
            });
        if applies {
            Some(entry.clone())
        } else {
            owed.remove(&key);
            None
        }
    }

    /// Records the status owed to an instance.
    pub fn owe(
        &self,
        instance: &WorkflowInstance,
        status: WorkflowInstanceStatus,
        since: DateTime<Utc>,
    ) {
        if let (Some(uid), Ok(mut owed)) = (instance.metadata.uid.clone(), self.0.lock()) {
            owed.insert(ObjectRef::from_obj(instance), Owed { uid, status, since });
        }
    }

    /// Forgets what was owed: written, or the instance is gone.
    pub fn settle(&self, instance: &WorkflowInstance) {
        if let Ok(mut owed) = self.0.lock() {
            owed.remove(&ObjectRef::from_obj(instance));
        }
    }
}

/// Whether a cached resourceVersion shows the write that returned `written`: the same
/// version, or (where versions are numbers, as etcd's revisions are) a later one, written by
/// someone else after us. Versions that are not numbers are only compared for equality.
fn caught_up(cached: &str, written: &str) -> bool {
    match (cached.parse::<u64>(), written.parse::<u64>()) {
        (Ok(cached), Ok(written)) => cached >= written,
        _ => cached == written,
    }
}

impl Context {
    fn api<K>(&self, namespace: &str) -> Api<K>
    where
        K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>,
        K::DynamicType: Default,
    {
        Api::namespaced(self.client.clone(), namespace)
    }
}

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

/// Runs the Workflow, WorkflowInstance and Backfill controllers until `shutdown` resolves.
pub async fn run(
    client: Client,
    options: Options,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    let namespace = options.namespace.as_deref();
    let workflows_api: Api<Workflow> = api_for(&client, namespace);
    let instances_api: Api<WorkflowInstance> = api_for(&client, namespace);
    let jobs_api: Api<Job> = api_for(&client, namespace);
    let pods_api: Api<Pod> = api_for(&client, namespace);
    let charon_children = watcher::Config::default().labels(crate::job::LABEL_INSTANCE);

    let (jobs, jobs_writer) = reflector::store();
    let job_stream = reflector::reflector(jobs_writer, watcher(jobs_api, charon_children.clone()))
        .default_backoff()
        .touched_objects();
    let (pods, pods_writer) = reflector::store();
    let pod_index = Arc::new(NameIndex::new(job_of_pod));
    let index = pod_index.clone();
    let pod_stream = watcher(pods_api, charon_children)
        .default_backoff()
        .inspect(move |event| index.follow(event))
        .reflect(pods_writer)
        .touched_objects();

    let (wake, woken) = mpsc::unbounded_channel();
    let woken = tokio_stream_from(woken);

    // One watch of the instances feeds every controller, after its cache is updated: a
    // controller woken by an instance change then reads at least that change from
    // `Context::instances`. (With a watch each, a workflow or backfill could be woken by its
    // own watch, read an older cache, write a stale status and never be woken again.)
    let (instances, instances_writer) = reflector::store_shared(INSTANCE_EVENTS_BUFFER);
    let subscribe = || {
        instances_writer
            .subscribe()
            // A writer made by `store_shared` always hands out subscribers.
            .expect("a shared store")
    };
    let (instance_events, workflow_events, backfill_events) =
        (subscribe(), subscribe(), subscribe());
    // Deletions are not passed to subscribers; the workflow and backfill of a deleted
    // instance are told through these instead.
    let (workflow_wake, workflow_woken) = mpsc::unbounded_channel();
    let (backfill_wake, backfill_woken) = mpsc::unbounded_channel();
    let instance_index = Arc::new(NameIndex::new(workflow_name));
    let index = instance_index.clone();
    let finished_seen = Arc::new(FinishedSeen::default());
    let forget_finished = finished_seen.clone();
    let unrecorded = Arc::new(Unrecorded::default());
    let forget_unrecorded = unrecorded.clone();
    let instance_root = watcher(instances_api, watcher::Config::default())
        .default_backoff()
        // The index learns of an instance before the cache does, so whoever the change
        // wakes finds it in both.
        .inspect(move |event| index.follow(event))
        .reflect_shared(instances_writer)
        .for_each(move |event| {
            match event {
                Ok(watcher::Event::Delete(instance)) => {
                    forget_finished.forget(&instance);
                    forget_unrecorded.settle(&instance);
                    if let Some(workflow) = workflow_of(&instance) {
                        let _ = workflow_wake.send(workflow);
                    }
                    if let Some(backfill) = backfill::backfill_of(&instance) {
                        let _ = backfill_wake.send(backfill);
                    }
                }
                Ok(watcher::Event::Init) => tracing::info!("listing WorkflowInstances"),
                Ok(watcher::Event::InitDone) => tracing::info!("listed WorkflowInstances"),
                Ok(_) => {}
                Err(error) => tracing::warn!(%error, "watching WorkflowInstances"),
            }
            futures::future::ready(())
        });

    let backfill_controller = Controller::new(
        api_for::<crate::resources::Backfill>(&client, namespace),
        watcher::Config::default(),
    )
    .watches_shared_stream(backfill_events, |instance: Arc<WorkflowInstance>| {
        backfill::backfill_of(&instance)
    })
    .reconcile_on(tokio_stream_from(backfill_woken))
    // A backfill's status lists every partition: coalesce the many changes of its instances
    // into one reconcile (and one status write) per period.
    .with_config(kube::runtime::controller::Config::default().debounce(BACKFILL_DEBOUNCE));
    let mut workflow_controller = Controller::new(workflows_api, watcher::Config::default())
        .owns_shared_stream(finished_flips(workflow_events, finished_seen))
        .reconcile_on(tokio_stream_from(workflow_woken))
        .with_config(kube::runtime::controller::Config::default().concurrency(WORKFLOW_RECONCILES));
    let mut instance_controller = Controller::for_shared_stream(instance_events, instances)
        .watches_stream(job_stream, |job: Job| instance_of(&job.metadata))
        .watches_stream(pod_stream, |pod: Pod| instance_of(&pod.metadata))
        .reconcile_on(woken)
        .with_config(
            kube::runtime::controller::Config::default()
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
        instances: instance_controller.store(),
        instance_index,
        pod_index,
        burst: Arc::new(TriggerBurst::default()),
        jobs,
        pods,
        events: EventRecorder::new(client, &options.identity, options.events),
        metrics: options.metrics.clone(),
        ledger: Mutex::new(HashMap::new()),
        writes: Writes::default(),
        unrecorded,
        status_held: Held::default(),
        pace: pace::Pace::default(),
        wake,
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
    let stop_rx_root = stop_rx.clone();
    let gauges = metrics::refresh_instance_gauges(context.clone(), stopped(stop_rx));
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
        gauges,
        signal,
        instance_root
    );
}

fn tokio_stream_from<T: Send + 'static>(
    mut rx: mpsc::UnboundedReceiver<T>,
) -> impl futures::Stream<Item = T> + Send + 'static {
    futures::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

fn jumps_stream(
    jumps: tokio::sync::watch::Receiver<u64>,
) -> impl futures::Stream<Item = ()> + Send + 'static {
    futures::stream::unfold(jumps, |mut jumps| async move {
        jumps.changed().await.ok().map(|()| ((), jumps))
    })
}

/// The instance a Job or Pod belongs to, from the label Charon puts on both.
fn instance_of(
    meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
) -> Option<ObjectRef<WorkflowInstance>> {
    let name = meta.labels.as_ref()?.get(crate::job::LABEL_INSTANCE)?;
    let namespace = meta.namespace.as_deref()?;
    Some(ObjectRef::new(name).within(namespace))
}

/// Whether each instance was last seen finished, to tell when that changes.
#[derive(Default)]
struct FinishedSeen(std::sync::Mutex<HashMap<ObjectRef<WorkflowInstance>, bool>>);

impl FinishedSeen {
    /// Whether the instance is new, or finished since it was last seen (or the reverse).
    fn flipped(&self, instance: &WorkflowInstance) -> bool {
        let finished = instance
            .status
            .as_ref()
            .is_some_and(|s| s.state.is_terminal());
        self.0.lock().is_ok_and(|mut seen| {
            seen.insert(ObjectRef::from_obj(instance), finished) != Some(finished)
        })
    }

    fn forget(&self, instance: &WorkflowInstance) {
        if let Ok(mut seen) = self.0.lock() {
            seen.remove(&ObjectRef::from_obj(instance));
        }
    }
}

/// The instances whose finished-or-not changed (or that are new): all a workflow's status
/// shows of them, so other changes do not wake the workflow.
fn finished_flips(
    instances: impl futures::Stream<Item = Arc<WorkflowInstance>> + Send + 'static,
    seen: Arc<FinishedSeen>,
) -> impl futures::Stream<Item = Arc<WorkflowInstance>> + Send + 'static {
    instances.filter(move |instance| futures::future::ready(seen.flipped(instance)))
}

/// The workflow that owns an instance.
fn workflow_of(instance: &WorkflowInstance) -> Option<ObjectRef<Workflow>> {
    let namespace = instance.metadata.namespace.as_deref()?;
    Some(ObjectRef::new(&instance.spec.workflow).within(namespace))
}

/// The instances of one workflow in the cache.
fn instances_of(ctx: &Context, namespace: &str, workflow: &str) -> Vec<Arc<WorkflowInstance>> {
    ctx.instance_index
        .lookup(&ctx.instances, namespace, workflow)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(uid: &str, resource_version: &str) -> ObjectMeta {
        ObjectMeta {
            uid: Some(uid.into()),
            resource_version: Some(resource_version.into()),
            ..Default::default()
        }
    }

    /// An instance of workflow `w` as stored, with uid `uid` and no status.
    fn instance(uid: &str) -> WorkflowInstance {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "w-1", "namespace": "ns", "uid": uid},
            "spec": {"workflow": "w", "parameter": "p", "logicalTime": "2024-01-01T00:00:00Z",
                "trigger": {"type": "natural", "id": "natural"}},
        }))
        .expect("an instance")
    }

    fn pod(namespace: &str, name: &str, job: &str) -> Pod {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": name, "namespace": namespace, "labels": {JOB_NAME_LABEL: job}},
        }))
        .expect("a pod")
    }

    #[test]
    fn the_name_index_finds_an_owners_objects_as_the_cache_has_them() {
        let index = NameIndex::new(job_of_pod);
        let mut writer = reflector::store::Writer::<Pod>::default();
        let store = writer.as_reader();
        let seen = |event: watcher::Event<Pod>, writer: &mut reflector::store::Writer<Pod>| {
            index.follow(&Ok(event.clone()));
            writer.apply_watcher_event(&event);
        };
        for p in [
            pod("ns", "a-1", "a"),
            pod("ns", "a-2", "a"),
            pod("ns", "b-1", "b"),
            pod("other", "a-3", "a"),
        ] {
            seen(watcher::Event::Apply(p), &mut writer);
        }
        let names = |job: &str| {
            let mut names: Vec<String> = index
                .lookup(&store, "ns", job)
                .iter()
                .filter_map(|p| p.metadata.name.clone())
                .collect();
            names.sort();
            names
        };
        assert_eq!(
            names("a"),
            ["a-1", "a-2"],
            "other namespaces and Jobs left out"
        );
        assert_eq!(names("b"), ["b-1"]);
        seen(watcher::Event::Delete(pod("ns", "a-1", "a")), &mut writer);
        assert_eq!(names("a"), ["a-2"]);
        // A relist reports no deletions: the cache may hold the name for another Job while
        // the index still lists it under the old one.
        writer.apply_watcher_event(&watcher::Event::Apply(pod("ns", "a-2", "c")));
        index.insert(&pod("ns", "a-2", "c"));
        assert!(names("a").is_empty(), "checked against the cache");
        assert_eq!(names("c"), ["a-2"]);
        assert!(names("missing").is_empty());
    }

    #[test]
    fn a_held_status_remembers_what_was_created_for_that_workflow_only() {
        let workflow = |uid: &str| -> Workflow {
            serde_json::from_value(serde_json::json!({
                "metadata": {"name": "w", "namespace": "ns", "uid": uid},
                "spec": {"schedule": "@hourly", "template": {"image": "busybox"}},
            }))
            .expect("a workflow")
        };
        let (first, again) = (workflow("u1"), workflow("u2"));
        let held = Held::default();
        let limit = std::time::Duration::from_secs(10);
        assert_eq!(held.left(&first, limit), None, "nothing held yet");
        held.created(&first, "w-1");
        held.created(&first, "w-2");
        assert!(held.has_created(&first, "w-1") && held.has_created(&first, "w-2"));
        assert!(!held.has_created(&first, "w-3"));
        assert!(held.left(&first, limit).is_some_and(|left| left <= limit));
        assert_eq!(
            held.left(&first, std::time::Duration::ZERO),
            None,
            "limit passed"
        );
        // The same name, created again: the old hold is not its own.
        assert!(!held.has_created(&again, "w-1"));
        assert_eq!(held.left(&again, limit), None);
        assert!(!held.has_created(&first, "w-1"), "forgotten");
        held.created(&again, "w-1");
        held.release(&again);
        assert!(!held.has_created(&again, "w-1"));
        assert_eq!(held.left(&again, limit), None);
    }

    #[test]
    fn new_instances_wait_while_any_workflow_is_creating() {
        let burst = Arc::new(TriggerBurst::default());
        assert!(!burst.holds());
        let first = burst.enter();
        let second = burst.enter();
        assert!(burst.holds());
        drop(first);
        assert!(burst.holds(), "one workflow is still creating");
        drop(second);
        assert!(!burst.holds());
    }

    #[test]
    fn a_workflow_is_woken_when_an_instance_appears_or_finishes() {
        let seen = FinishedSeen::default();
        let mut instance = instance("u1");
        assert!(seen.flipped(&instance), "new");
        assert!(!seen.flipped(&instance), "unchanged");
        instance.status = Some(crate::resources::WorkflowInstanceStatus {
            state: InstanceState::Done,
            ..Default::default()
        });
        assert!(seen.flipped(&instance), "finished");
        assert!(!seen.flipped(&instance));
        seen.forget(&instance);
        assert!(seen.flipped(&instance), "seen anew after being forgotten");
    }

    #[test]
    fn an_owed_status_holds_until_the_stored_one_catches_up() {
        let mut instance = instance("u1");
        let unrecorded = Unrecorded::default();
        assert_eq!(unrecorded.owed(&instance), None);
        let started = WorkflowInstanceStatus {
            state: InstanceState::Submitting,
            execution: 1,
            ..Default::default()
        };
        let at = DateTime::<Utc>::UNIX_EPOCH;
        unrecorded.owe(&instance, started.clone(), at);
        let owed = unrecorded.owed(&instance).expect("owed");
        assert_eq!((owed.status, owed.since), (started.clone(), at));

        // An instance created again under the name owes nothing.
        let again = self::instance("u2");
        assert_eq!(unrecorded.owed(&again), None);
        unrecorded.owe(&instance, started.clone(), at);

        // Still queued on record: the owed status stands.
        instance.status = Some(WorkflowInstanceStatus::default());
        assert!(unrecorded.owed(&instance).is_some());
        // Recorded (by us or another replica): forgotten.
        instance.status = Some(started.clone());
        assert_eq!(unrecorded.owed(&instance), None);
        assert_eq!(unrecorded.owed(&again), None, "and stays forgotten");

        unrecorded.owe(&instance, started, at);
        unrecorded.settle(&instance);
        instance.status = None;
        assert_eq!(unrecorded.owed(&instance), None, "settled");
    }

    #[test]
    fn a_write_is_awaited_until_the_cache_shows_it_or_a_later_version() {
        let writes = Writes::default();
        writes.wrote(&meta("u", "10"));
        assert!(writes.stale(&meta("u", "9")));
        // Someone wrote after us: the cache is past our write, which is then forgotten.
        assert!(!writes.stale(&meta("u", "12")));
        assert!(!writes.stale(&meta("u", "9")));
        // Versions that are not numbers are compared for equality only.
        writes.wrote(&meta("v", "abc"));
        assert!(writes.stale(&meta("v", "abd")));
        assert!(!writes.stale(&meta("v", "abc")));
        assert!(!writes.stale(&meta("never-written", "1")));
    }
}
