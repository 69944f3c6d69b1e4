//! What the controllers share, and the steps every reconcile has in common: its opening
//! (deleted? is the cache behind our own write?), a status write only when it changed, and
//! the guard around it (a `tracing` span naming the object, duration metrics, a caught panic).

use std::fmt::Debug;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt;
use k8s_openapi::NamespaceResourceScope;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Pod;
use kube::api::PostParams;
use kube::runtime::controller::Action;
use kube::runtime::reflector::Store;
use kube::{Api, Client, Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::mpsc;
use tracing::Instrument;

use super::clock::Clock;
use super::error::{Error, call, incomplete};
use super::events::{EventRecorder, Severity};
use super::index::NameIndex;
use super::memory::Memory;
use super::metrics::Metrics;
use super::packed::Packed;
use super::shards::Shards;
use charon_core::resources::{Backfill, Pool, Quota, Workflow, WorkflowInstance};

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
    /// Cached Backfills (an instance's trigger must name one of its workflow).
    pub backfills: Store<Backfill>,
    /// Cached WorkflowInstances.
    pub instances: Store<WorkflowInstance>,
    /// Cached Pools (cluster-scoped).
    pub pools: Store<Pool>,
    /// Cached Quotas.
    pub quotas: Store<Quota>,
    /// Which cached instances belong to which workflow.
    pub instance_index: Arc<NameIndex<WorkflowInstance>>,
    /// Cached Jobs created by Charon, packed.
    pub jobs: Store<Packed<Job>>,
    /// Jobs by the instance they belong to.
    pub job_index: Arc<NameIndex<Packed<Job>>>,
    /// Cached Pods of those Jobs, packed.
    pub pods: Store<Packed<Pod>>,
    /// Pods by the Job they belong to.
    pub pod_index: Arc<NameIndex<Packed<Pod>>>,
    /// Event writer.
    pub events: EventRecorder,
    /// Prometheus metrics.
    pub metrics: Arc<Metrics>,
    /// Asks the instance controller to look at instances again (a slot was freed).
    pub wake: mpsc::UnboundedSender<kube::runtime::reflector::ObjectRef<WorkflowInstance>>,
    /// Asks the pool controller to bring a pool's status up to date.
    pub wake_pool: mpsc::UnboundedSender<kube::runtime::reflector::ObjectRef<Pool>>,
    /// Asks the quota controller to bring a Quota's status up to date.
    pub wake_quota: mpsc::UnboundedSender<kube::runtime::reflector::ObjectRef<Quota>>,
    /// Asks the workflow controller to reconcile a workflow.
    pub wake_workflow: mpsc::UnboundedSender<kube::runtime::reflector::ObjectRef<Workflow>>,
    /// What the controllers remember between reconciles.
    pub memory: Arc<Memory>,
    /// What workflows may ask for beyond the defaults (`--allow-privileged-pods`).
    pub policy: charon_core::validate::Policy,
    /// A log store archives attempts' logs: pods are rendered held for it.
    pub log_archive: bool,
    /// Where pipelines and arrays get `charon-launcher` from.
    pub launcher: super::LauncherConfig,
    /// The shards this replica acts on (all of them unless `--shards` is set).
    pub shards: Arc<Shards>,
}

impl Context {
    /// The API of `K` in `namespace`.
    pub fn api<K>(&self, namespace: &str) -> Api<K>
    where
        K: Resource<Scope = NamespaceResourceScope>,
        K::DynamicType: Default,
    {
        Api::namespaced(self.client.clone(), namespace)
    }

    /// How a reconcile of `object` starts: with its namespace and name, unless it is being
    /// deleted or (for kinds whose writes are tracked) the cache is behind our last write.
    pub fn open<K: Charon>(&self, object: &K) -> Result<Opening, Error> {
        if object.meta().deletion_timestamp.is_some() {
            return Ok(Opening::Deleting);
        }
        let name = object.name_any();
        let namespace = object
            .namespace()
            .ok_or_else(|| incomplete(K::KIND, "", &name, "metadata.namespace"))?;
        if K::TRACK_WRITES && self.memory.writes.stale(object.meta()) {
            return Ok(Opening::Stale);
        }
        Ok(Opening::Ready { namespace, name })
    }

    /// Writes `status` to `object`'s status subresource, guarded by the resourceVersion it
    /// was read with (a conflict means the plan may be stale: the reconcile runs again).
    pub async fn replace_status<K: Charon>(
        &self,
        object: &K,
        status: K::Status,
    ) -> Result<K, Error> {
        let (namespace, name) = (object.namespace().unwrap_or_default(), object.name_any());
        let mut updated = object.clone();
        updated.set_status(status);
        let stored = self
            .api::<K>(&namespace)
            .replace_status(&name, &PostParams::default(), &updated)
            .await
            .map_err(call("replace status", K::KIND, &namespace, &name))?;
        if K::TRACK_WRITES {
            self.memory.writes.wrote(stored.meta());
        }
        Ok(stored)
    }

    /// [`Context::replace_status`], only when `status` differs from the stored one.
    pub async fn write_status<K: Charon>(
        &self,
        object: &K,
        status: K::Status,
    ) -> Result<(), Error> {
        if object.status() != Some(&status) {
            self.replace_status(object, status).await?;
        }
        Ok(())
    }

    /// Runs one reconcile of `object` inside a span naming it, timed, with a panic caught
    /// and reported (a metric, a Warning Event on the object, an error to retry later)
    /// instead of taking the operator and every other workflow down.
    pub async fn guarded<K, F>(
        self: Arc<Self>,
        object: Arc<K>,
        reconcile: F,
    ) -> Result<Action, Error>
    where
        K: Charon + Sharded,
        F: Future<Output = Result<Action, Error>>,
    {
        let namespace = object.namespace().unwrap_or_default();
        // Another replica acts on this workflow's shard; its gaining replica reconciles
        // everything of the shard when it takes it over.
        let Some(_shard) = self.shards.enter(&namespace, &object.workflow_name()) else {
            tracing::debug!(kind = K::KIND, %namespace, name = object.name_any(), "another replica's shard");
            object.seen_elsewhere(&self);
            return Ok(Action::await_change());
        };
        let span = tracing::info_span!(
            "reconcile",
            kind = K::KIND,
            namespace = namespace,
            name = object.name_any(),
        );
        let _timer = self.metrics.reconcile(K::CONTROLLER);
        let outcome = AssertUnwindSafe(reconcile)
            .catch_unwind()
            .instrument(span.clone())
            .await;
        self.metrics
            .liveness()
            .progressed(self.namespace.as_deref().unwrap_or_default(), K::CONTROLLER);
        match outcome {
            Ok(result) => {
                tracing::debug!(parent: &span, ?result, "reconciled");
                result
            }
            Err(panic) => {
                let message = panic_message(&*panic);
                self.metrics.panic(K::CONTROLLER);
                tracing::error!(parent: &span, %message, "reconcile panicked");
                let text = format!("reconcile panicked (a bug in Charon): {message}");
                self.events
                    .record(&*object, Severity::Warning, "ReconcilePanicked", &text)
                    .await;
                Err(Error::Panicked(message))
            }
        }
    }

    /// What to do after a failed reconcile: a conflict is tried again soon (someone wrote
    /// the object since it was read), anything else after `delay` or the delay the server
    /// asked for (429 `Retry-After`) if that is longer, counted and logged.
    pub fn requeue_after_error<K: Charon>(
        &self,
        object: &K,
        error: &Error,
        conflict: Option<Duration>,
        delay: Duration,
    ) -> Action {
        if let Some(soon) = conflict.filter(|_| error.is_conflict()) {
            return Action::requeue(soon);
        }
        self.metrics.error(K::CONTROLLER, error.kind());
        tracing::warn!(
            kind = K::KIND,
            namespace = object.namespace().unwrap_or_default(),
            name = object.name_any(),
            error_kind = error.kind(),
            %error,
            "reconcile failed"
        );
        Action::requeue(error.retry_after().map_or(delay, |asked| asked.max(delay)))
    }
}

/// How a reconcile starts (see [`Context::open`]).
pub enum Opening {
    /// Go ahead with the object in `namespace` named `name`.
    Ready {
        /// The object's namespace.
        namespace: String,
        /// The object's name.
        name: String,
    },
    /// The object is being deleted: its children go with it.
    Deleting,
    /// Our last write to it is not in the cache yet; its watch event will wake us.
    Stale,
}

/// How soon a reconcile that found the cache behind its own write looks again.
pub const STALE_RETRY: Duration = Duration::from_secs(1);

/// Charon's resources, as the reconcilers handle them alike.
pub trait Charon:
    Resource<DynamicType = (), Scope = NamespaceResourceScope>
    + Clone
    + Debug
    + Serialize
    + DeserializeOwned
    + Send
    + Sync
    + 'static
{
    /// The status type.
    type Status: PartialEq + Clone + Send + Sync;
    /// The kind, for messages.
    const KIND: &'static str;
    /// The controller's name, for metrics.
    const CONTROLLER: &'static str;
    /// Whether this controller's writes to the kind are remembered until the cache shows
    /// them (see [`super::memory::Writes`]).
    const TRACK_WRITES: bool;
    /// The stored status.
    fn status(&self) -> Option<&Self::Status>;
    /// Replaces the status.
    fn set_status(&mut self, status: Self::Status);
}

macro_rules! charon_resource {
    ($kind:ty, $status:ty, $controller:literal, $track:literal) => {
        impl Charon for $kind {
            type Status = $status;
            const KIND: &'static str = stringify!($kind);
            const CONTROLLER: &'static str = $controller;
            const TRACK_WRITES: bool = $track;
            fn status(&self) -> Option<&Self::Status> {
                self.status.as_ref()
            }
            fn set_status(&mut self, status: Self::Status) {
                self.status = Some(status);
            }
        }
    };
}

charon_resource!(
    Workflow,
    charon_core::resources::WorkflowStatus,
    "workflow",
    true
);
charon_resource!(
    WorkflowInstance,
    charon_core::resources::WorkflowInstanceStatus,
    "instance",
    true
);
charon_resource!(
    Backfill,
    charon_core::resources::BackfillStatus,
    "backfill",
    false
);
charon_resource!(Quota, charon_core::resources::QuotaStatus, "quota", false);

/// Which workflow an object acts for: its shard is that workflow's (see [`Shards`]), so one
/// replica writes a workflow, its instances, its backfills and their Jobs.
pub trait Sharded {
    /// The workflow's name ("" for a Quota, which stands for its whole namespace).
    fn workflow_name(&self) -> String;
    /// What a replica that does not act on the object still does with it: only what keeps
    /// its own objects up to date, never a write.
    fn seen_elsewhere(&self, _ctx: &Context) {}
}

impl Sharded for Workflow {
    fn workflow_name(&self) -> String {
        self.name_any()
    }

    /// Its dependencies, so an upstream partition finishing here wakes it there.
    fn seen_elsewhere(&self, ctx: &Context) {
        if let Some(namespace) = self.namespace() {
            let upstream = self.spec.depends_on.iter().map(|d| d.workflow.as_str());
            ctx.memory
                .dependents
                .learn(&namespace, &self.name_any(), upstream);
        }
    }
}

impl Sharded for WorkflowInstance {
    fn workflow_name(&self) -> String {
        self.spec.workflow.clone()
    }

    /// A Done upstream partition wakes the instances here that wait for it.
    fn seen_elsewhere(&self, ctx: &Context) {
        let done = self
            .status
            .as_ref()
            .is_some_and(|s| s.state == charon_core::instance::State::Done);
        if let (true, Some(namespace)) = (done, self.namespace()) {
            super::dependencies::wake_dependents(ctx, &namespace, &self.spec.workflow);
        }
    }
}

impl Sharded for Backfill {
    fn workflow_name(&self) -> String {
        self.spec.workflow.clone()
    }
}

impl Sharded for Quota {
    fn workflow_name(&self) -> String {
        String::new()
    }
}

/// The text of a caught panic.
fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panics_text_is_kept() {
        let caught = std::panic::catch_unwind(|| panic!("days out of bounds")).unwrap_err();
        assert_eq!(panic_message(&*caught), "days out of bounds");
        let formatted = std::panic::catch_unwind(|| panic!("{} of {}", 1, 2)).unwrap_err();
        assert_eq!(panic_message(&*formatted), "1 of 2");
    }
}
