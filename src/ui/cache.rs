//! The UI's own caches: one watch each of Workflows, WorkflowInstances, Backfills and the
//! Events about instances, so a page view or an API call reads memory and never lists
//! against the API server.

use std::sync::Arc;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Event;
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, Resource};

use crate::controller::index::{NameIndex, workflow_name};
use charon_core::resources::{Backfill, Pool, Workflow, WorkflowInstance};

/// What the UI reads.
#[derive(Clone)]
pub struct Cache {
    /// Cached Workflows.
    pub workflows: Store<Workflow>,
    /// Cached WorkflowInstances.
    pub instances: Store<WorkflowInstance>,
    /// Instances by workflow.
    pub by_workflow: Arc<NameIndex<WorkflowInstance>>,
    /// Cached Backfills.
    pub backfills: Store<Backfill>,
    /// Cached Events about WorkflowInstances.
    pub events: Store<Event>,
    /// Cached Pools (cluster-scoped; empty where they cannot be read).
    pub pools: Store<Pool>,
}

fn api<K>(client: &Client, namespace: Option<&str>) -> Api<K>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope>,
    K::DynamicType: Default,
{
    match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    }
}

/// Drops what the UI never reads (managedFields), so the caches stay small.
fn trim<K: Resource>(object: &mut K) {
    object.meta_mut().managed_fields = None;
}

impl Cache {
    /// Starts the watches (of `namespace`, or all namespaces) on `client`; the returned
    /// future drives them and never ends.
    pub fn start(
        client: &Client,
        namespace: Option<&str>,
    ) -> (
        Cache,
        impl std::future::Future<Output = ()> + Send + 'static + use<>,
    ) {
        let (workflows, workflows_writer) = reflector::store();
        let (instances, instances_writer) = reflector::store();
        let (backfills, backfills_writer) = reflector::store();
        let (events, events_writer) = reflector::store();
        let (pools, pools_writer) = reflector::store();
        let by_workflow = Arc::new(NameIndex::new(workflow_name));
        let index = by_workflow.clone();
        let config = watcher::Config::default;
        let workflow_watch = watcher(api::<Workflow>(client, namespace), config())
            .default_backoff()
            .modify(trim)
            .reflect(workflows_writer)
            .for_each(|_| async {});
        let instance_watch = watcher(api::<WorkflowInstance>(client, namespace), config())
            .default_backoff()
            .modify(trim)
            .inspect(move |event| {
                if let Ok(event) = event {
                    index.follow(event);
                }
            })
            .reflect(instances_writer)
            .for_each(|_| async {});
        let backfill_watch = watcher(api::<Backfill>(client, namespace), config())
            .default_backoff()
            .modify(trim)
            .reflect(backfills_writer)
            .for_each(|_| async {});
        let event_watch = watcher(
            api::<Event>(client, namespace),
            config().fields("involvedObject.kind=WorkflowInstance"),
        )
        .default_backoff()
        .modify(trim)
        .reflect(events_writer)
        .for_each(|_| async {});
        // Pools are cluster-scoped: a user who may not read them sees none, and the UI does
        // not wait for them.
        let pool_watch = watcher(Api::<Pool>::all(client.clone()), config())
            .default_backoff()
            .modify(trim)
            .reflect(pools_writer)
            .for_each(|_| async {});
        let run = async move {
            tokio::join!(
                workflow_watch,
                instance_watch,
                backfill_watch,
                event_watch,
                pool_watch
            );
        };
        (
            Cache {
                workflows,
                instances,
                by_workflow,
                backfills,
                events,
                pools,
            },
            run,
        )
    }

    /// A cache holding exactly these objects and watching nothing: for benchmarks and tests
    /// of what the UI computes from its caches.
    pub fn holding(
        workflows: Vec<Workflow>,
        instances: Vec<WorkflowInstance>,
        backfills: Vec<Backfill>,
    ) -> Cache {
        fn fill<K>(objects: Vec<K>, index: Option<&NameIndex<K>>) -> Store<K>
        where
            K: Resource + Clone + std::fmt::Debug + Send + Sync + 'static,
            K::DynamicType: Default + Eq + std::hash::Hash + Clone,
        {
            let (store, mut writer) = reflector::store();
            for object in objects {
                let event = watcher::Event::Apply(object);
                if let Some(index) = index {
                    index.follow(&event);
                }
                writer.apply_watcher_event(&event);
            }
            store
        }
        let by_workflow = Arc::new(NameIndex::new(workflow_name));
        Cache {
            workflows: fill(workflows, None),
            instances: fill(instances, Some(&by_workflow)),
            by_workflow,
            backfills: fill(backfills, None),
            events: fill(Vec::new(), None),
            pools: fill(Vec::new(), None),
        }
    }

    /// Waits until every cache has been filled once.
    pub async fn ready(&self) {
        let _ = tokio::join!(
            self.workflows.wait_until_ready(),
            self.instances.wait_until_ready(),
            self.backfills.wait_until_ready(),
            self.events.wait_until_ready()
        );
    }

    /// The workflow `namespace/name`.
    pub fn workflow(&self, namespace: &str, name: &str) -> Option<Arc<Workflow>> {
        self.workflows.get(&ObjectRef::new(name).within(namespace))
    }

    /// The instance `namespace/name`.
    pub fn instance(&self, namespace: &str, name: &str) -> Option<Arc<WorkflowInstance>> {
        self.instances.get(&ObjectRef::new(name).within(namespace))
    }

    /// The backfill `namespace/name`.
    pub fn backfill(&self, namespace: &str, name: &str) -> Option<Arc<Backfill>> {
        self.backfills.get(&ObjectRef::new(name).within(namespace))
    }

    /// The instances of workflow `namespace/name`.
    pub fn instances_of(&self, namespace: &str, workflow: &str) -> Vec<Arc<WorkflowInstance>> {
        self.by_workflow
            .lookup(&self.instances, namespace, workflow)
    }

    /// Workflows of `namespace` (or all), by namespace and name.
    pub fn workflows_in(&self, namespace: Option<&str>) -> Vec<Arc<Workflow>> {
        let mut list: Vec<Arc<Workflow>> = self
            .workflows
            .state()
            .into_iter()
            .filter(|w| namespace.is_none_or(|ns| w.metadata.namespace.as_deref() == Some(ns)))
            .collect();
        list.sort_by(|a, b| {
            (&a.metadata.namespace, &a.metadata.name)
                .cmp(&(&b.metadata.namespace, &b.metadata.name))
        });
        list
    }

    /// Backfills of `namespace`.
    pub fn backfills_in(&self, namespace: &str) -> Vec<Arc<Backfill>> {
        self.backfills
            .state()
            .into_iter()
            .filter(|b| b.metadata.namespace.as_deref() == Some(namespace))
            .collect()
    }

    /// Events of `namespace`.
    pub fn events_in(&self, namespace: &str) -> Vec<Arc<Event>> {
        self.events
            .state()
            .into_iter()
            .filter(|e| e.metadata.namespace.as_deref() == Some(namespace))
            .collect()
    }
}
