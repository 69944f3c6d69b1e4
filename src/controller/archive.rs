//! The log archiver (SPEC §11): copies each finished attempt's log from its pod into the log
//! store, marks the attempt `archived` in the instance's status, then lets the pod go by
//! removing [`FINALIZER`]. It runs beside the controllers and never blocks them: a store
//! that is down or slow delays only the removal of finished pods, never a run.
//!
//! Pods are offered as the pod watch sees them (an operator that restarts relists them, so an
//! archive interrupted by a crash is done again, to the same key). Each pod is archived by
//! one task at a time, at most [`ARCHIVES_AT_ONCE`] at once; a failure is retried with a
//! growing delay until [`archive::GIVE_UP_AFTER`] has passed since the container ended.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kube::api::{LogParams, Patch, PatchParams};
use kube::runtime::reflector::Store;
use kube::runtime::watcher;
use kube::{Api, Client, ResourceExt};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::compat::FuturesAsyncReadCompatExt;

use super::clock::Clock;
use super::error::{ApiErrorExt, ApiFailure, Error, call};
use super::events::{EventRecorder, Severity};
use super::memory::lock;
use super::metrics::Metrics;
use crate::logstore::{LogStore, LogStoreError};
use charon_core::archive::{self, ANNOTATION_INSTANCE, ANNOTATION_LOG_KEY, FINALIZER, Readiness};
use charon_core::job::LABEL_EXECUTION;
use charon_core::observe;
use charon_core::resources::WorkflowInstance;

/// Logs copied at once: each holds one upload part in memory.
pub const ARCHIVES_AT_ONCE: usize = 4;

/// First delay before an archive that failed is tried again; doubled up to [`RETRY_MAX`].
const RETRY_FIRST: Duration = Duration::from_secs(1);
const RETRY_MAX: Duration = Duration::from_secs(30);

/// How often logs of instances that are gone (deleted while the operator was down) are
/// looked for and deleted.
const SWEEP_EVERY: Duration = Duration::from_secs(3600);

/// Why one try of an archive did not finish.
#[derive(Debug, thiserror::Error)]
enum ArchiveError {
    #[error(transparent)]
    Api(#[from] Error),
    #[error(transparent)]
    Store(#[from] LogStoreError),
    #[error("{0}")]
    NotYet(String),
}

/// Copies finished attempts' logs into the log store.
pub struct Archiver {
    store: Arc<LogStore>,
    client: Client,
    clock: Arc<dyn Clock>,
    events: EventRecorder,
    metrics: Arc<Metrics>,
    /// Only the pods of workflows whose shard this replica holds are archived here.
    shards: Arc<super::shards::Shards>,
    /// Uids of the pods being archived (or waiting to be tried again).
    active: Mutex<HashSet<String>>,
    permits: Semaphore,
    tasks: Mutex<JoinSet<()>>,
}

impl Archiver {
    /// An archiver into `store`.
    pub fn new(
        store: Arc<LogStore>,
        client: Client,
        clock: Arc<dyn Clock>,
        events: EventRecorder,
        metrics: Arc<Metrics>,
        shards: Arc<super::shards::Shards>,
    ) -> Arc<Archiver> {
        Arc::new(Archiver {
            store,
            client,
            clock,
            events,
            metrics,
            shards,
            active: Mutex::default(),
            permits: Semaphore::new(ARCHIVES_AT_ONCE),
            tasks: Mutex::new(JoinSet::new()),
        })
    }

    /// Looks at a pod the watch reports.
    pub fn follow(self: &Arc<Self>, event: &watcher::Event<Pod>) {
        if let watcher::Event::Apply(pod) | watcher::Event::InitApply(pod) = event {
            self.offer(pod);
        }
    }

    /// Starts archiving `pod` if it is held for its log, its log is complete, and no task
    /// has it already.
    pub fn offer(self: &Arc<Self>, pod: &Pod) {
        if !held(pod) || archive::readiness(pod) == Readiness::Running {
            return;
        }
        let namespace = pod.namespace().unwrap_or_default();
        let workflow = pod
            .labels()
            .get(charon_core::job::LABEL_WORKFLOW)
            .cloned()
            .unwrap_or_default();
        if !self.shards.owns(&namespace, &workflow) {
            return;
        }
        let Some(uid) = pod.uid() else { return };
        if !lock(&self.active).insert(uid.clone()) {
            return;
        }
        let this = self.clone();
        let name = pod.name_any();
        lock(&self.tasks).spawn(async move {
            this.archive_until_done(&namespace, &name).await;
            lock(&this.active).remove(&uid);
        });
        // Reap the tasks that ended, so the set holds only running ones.
        let mut tasks = lock(&self.tasks);
        while tasks.try_join_next().is_some() {}
    }

    /// Deletes the logs of an instance that was deleted (SPEC §11: logs go with their
    /// instance).
    pub fn forget(self: &Arc<Self>, instance: &WorkflowInstance) {
        let (Some(namespace), Some(uid)) = (instance.namespace(), instance.uid()) else {
            return;
        };
        let store = self.store.clone();
        lock(&self.tasks).spawn(async move {
            let prefix = archive::instance_prefix(&namespace, &uid);
            match store.delete_prefix(&prefix).await {
                Ok(0) => {}
                Ok(n) => {
                    tracing::info!(%prefix, logs = n, "deleted the logs of a deleted instance")
                }
                Err(err) => tracing::warn!(%err, "could not delete the logs of a deleted instance"),
            }
        });
    }

    /// Runs the periodic sweep until `stop`, then stops every archive task (those not done
    /// are done again by the next operator, from the pods' finalizers).
    pub async fn run(
        self: Arc<Self>,
        namespace: Option<String>,
        instances: Store<WorkflowInstance>,
        stop: impl std::future::Future<Output = ()>,
    ) {
        if let Err(err) = self.store.check().await {
            tracing::error!(%err, "the log store cannot be reached; archives are retried until it can");
        }
        let sweeps = async {
            if instances.wait_until_ready().await.is_err() {
                return;
            }
            loop {
                self.sweep(namespace.as_deref(), &instances).await;
                tokio::time::sleep(SWEEP_EVERY).await;
            }
        };
        tokio::select! {
            () = sweeps => {}
            () = stop => {}
        }
        lock(&self.tasks).abort_all();
    }

    /// Deletes the logs of instances that no longer exist (deleted while no operator ran).
    async fn sweep(&self, namespace: Option<&str>, instances: &Store<WorkflowInstance>) {
        let owners = match self.store.owners(namespace).await {
            Ok(owners) => owners,
            Err(err) => {
                tracing::warn!(%err, "could not list the log store for logs of deleted instances");
                return;
            }
        };
        let live: HashSet<String> = instances.state().iter().filter_map(|i| i.uid()).collect();
        for (ns, uid) in owners {
            if live.contains(&uid) {
                continue;
            }
            let prefix = archive::instance_prefix(&ns, &uid);
            if let Err(err) = self.store.delete_prefix(&prefix).await {
                tracing::warn!(%err, "could not delete the logs of a deleted instance");
            }
        }
    }

    async fn archive_until_done(&self, namespace: &str, name: &str) {
        let mut delay = RETRY_FIRST;
        // Set once the log is in the store: a later try only records it and releases the pod.
        let mut uploaded = false;
        loop {
            let result = {
                // The semaphore is never closed, so acquiring only waits.
                let Ok(_permit) = self.permits.acquire().await else {
                    return;
                };
                self.try_archive(namespace, name, &mut uploaded).await
            };
            match result {
                Ok(()) => return,
                // The instance records an attempt shortly after its Job exists; a pod that
                // ended in between waits for that, which is no failure.
                Err((ArchiveError::NotYet(why), false)) => {
                    tracing::debug!(pod = %format!("{namespace}/{name}"), %why, "archive waits");
                }
                Err((err, give_up)) => {
                    self.metrics.log_archive_failed();
                    if give_up {
                        tracing::warn!(pod = %format!("{namespace}/{name}"), %err, "giving up archiving a log");
                        if let Err(err) = self.let_go(namespace, name, &err.to_string()).await {
                            tracing::warn!(%err, "could not release a pod held for its log");
                        } else {
                            return;
                        }
                    } else {
                        tracing::info!(pod = %format!("{namespace}/{name}"), %err, retry_in = ?delay, "archiving a log failed");
                    }
                }
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(RETRY_MAX);
        }
    }

    /// One try: read the pod afresh, copy its log, record it, release the pod. The error
    /// says whether to give up.
    async fn try_archive(
        &self,
        namespace: &str,
        name: &str,
        uploaded: &mut bool,
    ) -> Result<(), (ArchiveError, bool)> {
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), namespace);
        let fresh = pods
            .get_opt(name)
            .await
            .map_err(|e| (call("get", "Pod", namespace, name)(e).into(), false))?;
        let Some(pod) = fresh.filter(held) else {
            return Ok(());
        };
        let ended = match archive::readiness(&pod) {
            Readiness::Running => return Ok(()),
            Readiness::Nothing(why) => {
                self.note_unarchived(&pod, &why).await;
                return self.release(&pod).await.map_err(|e| (e.into(), false));
            }
            Readiness::Complete { ended } => ended,
        };
        let give_up = archive::give_up(
            ended,
            pod.metadata
                .creation_timestamp
                .as_ref()
                .and_then(observe::time),
            self.clock.now(),
        );
        let Some(key) = pod.annotations().get(ANNOTATION_LOG_KEY).cloned() else {
            self.note_unarchived(&pod, "the pod names no log key").await;
            return self.release(&pod).await.map_err(|e| (e.into(), false));
        };
        if !*uploaded {
            self.copy(&pods, &pod, &key)
                .await
                .map_err(|e| (e, give_up))?;
            *uploaded = true;
        }
        self.record(&pod).await.map_err(|e| (e, give_up))?;
        self.release(&pod).await.map_err(|e| (e.into(), give_up))
    }

    /// Streams the pod's logs into the store: its main container's under `key`, or each
    /// step's and each array task's under its own key ([`archive::pod_logs`]).
    async fn copy(&self, pods: &Api<Pod>, pod: &Pod, key: &str) -> Result<(), ArchiveError> {
        for (container, key) in archive::pod_logs(pod, key) {
            self.copy_container(pods, pod, &container, &key).await?;
        }
        Ok(())
    }

    /// Streams one container's log into the store under `key`.
    async fn copy_container(
        &self,
        pods: &Api<Pod>,
        pod: &Pod,
        container: &str,
        key: &str,
    ) -> Result<(), ArchiveError> {
        let (namespace, name) = (pod.namespace().unwrap_or_default(), pod.name_any());
        let params = LogParams {
            container: Some(container.to_string()),
            ..Default::default()
        };
        let started = std::time::Instant::now();
        let stream = pods.log_stream(&name, &params).await.map_err(call(
            "get log of",
            "Pod",
            &namespace,
            &name,
        ))?;
        let bytes = self.store.put(key, stream.compat()).await?;
        self.metrics.log_archived(bytes, started.elapsed());
        tracing::debug!(%key, bytes, "archived a log");
        Ok(())
    }

    /// Marks the pod's attempt archived in its instance's `status.attempts`, with a
    /// JSON patch that first tests it is the same attempt.
    async fn record(&self, pod: &Pod) -> Result<(), ArchiveError> {
        // Deleted (its logs go with it), or a later instance of the same name.
        let Some((instance, execution)) = self.instance_of(pod).await? else {
            return Ok(());
        };
        let namespace = instance.namespace().unwrap_or_default();
        let instance_name = instance.name_any();
        let api: Api<WorkflowInstance> = Api::namespaced(self.client.clone(), &namespace);
        let attempts = instance
            .status
            .as_ref()
            .map(|s| s.attempts.as_slice())
            .unwrap_or_default();
        let Some(index) = attempts.iter().position(|a| a.execution == execution) else {
            let oldest = attempts.first().map(|a| a.execution);
            if oldest.is_some_and(|o| o > execution) {
                return Ok(()); // Trimmed from the bounded history.
            }
            return Err(ArchiveError::NotYet(format!(
                "attempt {execution} of {namespace}/{instance_name} is not on record yet"
            )));
        };
        if attempts[index].archived {
            return Ok(());
        }
        let patch = json_patch(serde_json::json!([
            {"op": "test", "path": format!("/status/attempts/{index}/execution"), "value": execution},
            {"op": "replace", "path": format!("/status/attempts/{index}/archived"), "value": true},
        ]))?;
        api.patch_status(
            &instance_name,
            &PatchParams::default(),
            &Patch::Json::<()>(patch),
        )
        .await
        .map_err(call(
            "patch status",
            "WorkflowInstance",
            &namespace,
            &instance_name,
        ))?;
        Ok(())
    }

    /// Removes [`FINALIZER`] from the pod (a JSON patch testing it is still where it was).
    async fn release(&self, pod: &Pod) -> Result<(), Error> {
        let (namespace, name) = (pod.namespace().unwrap_or_default(), pod.name_any());
        let Some(index) = pod.finalizers().iter().position(|f| f == FINALIZER) else {
            return Ok(());
        };
        let patch = json_patch(serde_json::json!([
            {"op": "test", "path": format!("/metadata/finalizers/{index}"), "value": FINALIZER},
            {"op": "remove", "path": format!("/metadata/finalizers/{index}")},
        ]))?;
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), &namespace);
        match pods
            .patch(&name, &PatchParams::default(), &Patch::Json::<()>(patch))
            .await
        {
            Ok(_) => Ok(()),
            Err(e) if e.failure() == ApiFailure::NotFound => Ok(()),
            Err(e) => Err(call("patch", "Pod", &namespace, &name)(e)),
        }
    }

    /// Lets a pod go without its log, after too long; says so on the instance.
    async fn let_go(&self, namespace: &str, name: &str, why: &str) -> Result<(), Error> {
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), namespace);
        let Some(pod) = pods
            .get_opt(name)
            .await
            .map_err(call("get", "Pod", namespace, name))?
        else {
            return Ok(());
        };
        self.note_unarchived(&pod, &format!("archiving failed for too long: {why}"))
            .await;
        self.release(&pod).await
    }

    /// The instance a held pod ran an attempt of, read fresh, with the execution number;
    /// `None` when it is gone (or replaced by a later instance of the same name).
    async fn instance_of(&self, pod: &Pod) -> Result<Option<(WorkflowInstance, u32)>, Error> {
        let namespace = pod.namespace().unwrap_or_default();
        let (Some(name), Some(execution)) = (
            pod.annotations().get(ANNOTATION_INSTANCE),
            pod.labels()
                .get(LABEL_EXECUTION)
                .and_then(|e| e.parse::<u32>().ok()),
        ) else {
            return Ok(None);
        };
        let uid = pod
            .annotations()
            .get(ANNOTATION_LOG_KEY)
            .and_then(|k| archive::key_owner(k))
            .map(|(_, uid)| uid.to_string());
        let api: Api<WorkflowInstance> = Api::namespaced(self.client.clone(), &namespace);
        let found =
            api.get_opt(name)
                .await
                .map_err(call("get", "WorkflowInstance", &namespace, name))?;
        Ok(found
            .filter(|instance| instance.uid() == uid)
            .map(|instance| (instance, execution)))
    }

    async fn note_unarchived(&self, pod: &Pod, why: &str) {
        let Ok(Some((object, execution))) = self.instance_of(pod).await else {
            return;
        };
        self.events
            .record(
                &object,
                Severity::Warning,
                "LogNotArchived",
                &format!("the log of attempt {execution} was not archived: {why}"),
            )
            .await;
    }
}

/// A JSON patch (RFC 6902) from its operations.
fn json_patch(operations: serde_json::Value) -> Result<json_patch::Patch, Error> {
    serde_json::from_value(operations).map_err(|source| Error::Json {
        what: "a JSON patch".to_string(),
        source,
    })
}

/// Whether a pod is held for its log.
fn held(pod: &Pod) -> bool {
    pod.finalizers().iter().any(|f| f == FINALIZER)
}
