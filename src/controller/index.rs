//! How Charon's objects find each other: a workflow's instances, a Job's pods, the instance a
//! Job or Pod belongs to. Lookups by owner go through [`NameIndex`], kept from a watch
//! stream, so a reconcile never scans every object in a cache.

use std::collections::hash_map::Entry;
use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, RwLock};

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::runtime::reflector::{Lookup, ObjectRef, Store};
use kube::runtime::watcher;

use super::Context;
use super::memory::{read, write};
use charon_core::job::LABEL_INSTANCE;
use charon_core::resources::{Workflow, WorkflowInstance};

/// Object names grouped by (namespace, owner name). `key` says which owner an object belongs
/// to (none: not indexed).
pub struct NameIndex<K> {
    key: fn(&K) -> Option<&str>,
    by_owner: RwLock<HashMap<(String, String), Names>>,
}

/// The names under one owner. Most owners have one (a run's Job, a Job's pod): a set for
/// each would cost a B-tree node, some 300 bytes, per cached object.
enum Names {
    One(String),
    Many(BTreeSet<String>),
}

impl Names {
    fn insert(&mut self, name: String) {
        match self {
            Names::One(one) if *one == name => {}
            Names::One(one) => {
                *self = Names::Many(BTreeSet::from([std::mem::take(one), name]));
            }
            Names::Many(names) => {
                names.insert(name);
            }
        }
    }

    /// Removes `name`; whether none are left.
    fn remove(&mut self, name: &str) -> bool {
        match self {
            Names::One(one) => one == name,
            Names::Many(names) => {
                names.remove(name);
                names.is_empty()
            }
        }
    }

    fn iter(&self) -> Box<dyn Iterator<Item = &String> + '_> {
        match self {
            Names::One(one) => Box::new(std::iter::once(one)),
            Names::Many(names) => Box::new(names.iter()),
        }
    }
}

impl<K: Lookup> NameIndex<K> {
    /// An empty index grouping objects by `key`.
    pub fn new(key: fn(&K) -> Option<&str>) -> Self {
        NameIndex {
            key,
            by_owner: RwLock::default(),
        }
    }

    fn key_of(&self, object: &K) -> Option<(String, String)> {
        Some((
            object.namespace()?.into_owned(),
            (self.key)(object)?.to_string(),
        ))
    }

    /// Follows a watch event (applied before the cache sees it, so whoever the change wakes
    /// finds the object in both).
    pub fn follow(&self, event: &watcher::Event<K>) {
        match event {
            watcher::Event::Apply(object) | watcher::Event::InitApply(object) => {
                self.insert(object);
            }
            watcher::Event::Delete(object) => self.remove(object),
            _ => {}
        }
    }

    fn insert(&self, object: &K) {
        if let (Some(key), Some(name)) = (self.key_of(object), object.name()) {
            let name = name.into_owned();
            match write(&self.by_owner).entry(key) {
                Entry::Occupied(mut names) => names.get_mut().insert(name),
                Entry::Vacant(names) => {
                    names.insert(Names::One(name));
                }
            }
        }
    }

    fn remove(&self, object: &K) {
        let (Some(key), Some(name)) = (self.key_of(object), object.name()) else {
            return;
        };
        let mut index = write(&self.by_owner);
        if let Some(names) = index.get_mut(&key)
            && names.remove(&name)
        {
            index.remove(&key);
        }
    }

    /// The cached objects of one owner. The index may name objects deleted meanwhile (a
    /// relist does not report deletions) or names reused by another owner's object, so each
    /// is looked up in the cache and checked there.
    pub fn lookup(&self, store: &Store<K>, namespace: &str, owner: &str) -> Vec<Arc<K>>
    where
        K: Clone + 'static,
        K::DynamicType: Default + Eq + std::hash::Hash + Clone,
    {
        let index = read(&self.by_owner);
        let Some(names) = index.get(&(namespace.to_string(), owner.to_string())) else {
            return Vec::new();
        };
        names
            .iter()
            .filter_map(|name| store.get(&ObjectRef::new(name).within(namespace)))
            .filter(|object| (self.key)(object) == Some(owner))
            .collect()
    }
}

/// The label the Job controller puts on a Job's pods.
const JOB_NAME_LABEL: &str = "job-name";

/// The Job a pod belongs to, by its label.
pub fn job_of_pod(pod: &Pod) -> Option<&str> {
    pod.metadata
        .labels
        .as_ref()?
        .get(JOB_NAME_LABEL)
        .map(String::as_str)
}

/// The label selector of a Job's pods, for reading them from the API server.
pub fn pods_of_job(job: &str) -> String {
    format!("{JOB_NAME_LABEL}={job}")
}

/// The instance a Job belongs to, by the label Charon puts on it.
pub fn instance_of_job(job: &k8s_openapi::api::batch::v1::Job) -> Option<&str> {
    job.metadata
        .labels
        .as_ref()?
        .get(LABEL_INSTANCE)
        .map(String::as_str)
}

/// The execution number a Job runs, by the label Charon puts on it.
pub fn execution_of_job(job: &k8s_openapi::api::batch::v1::Job) -> Option<u32> {
    job.metadata
        .labels
        .as_ref()?
        .get(charon_core::job::LABEL_EXECUTION)?
        .parse()
        .ok()
}

/// The name of the workflow an instance belongs to.
pub fn workflow_name(instance: &WorkflowInstance) -> Option<&str> {
    Some(instance.spec.workflow.as_str())
}

/// The workflow that owns an instance.
pub fn workflow_of(instance: &WorkflowInstance) -> Option<ObjectRef<Workflow>> {
    let namespace = instance.metadata.namespace.as_deref()?;
    Some(ObjectRef::new(&instance.spec.workflow).within(namespace))
}

/// The instance a Job or Pod belongs to, from the label Charon puts on both.
pub fn instance_of(meta: &ObjectMeta) -> Option<ObjectRef<WorkflowInstance>> {
    let name = meta.labels.as_ref()?.get(LABEL_INSTANCE)?;
    let namespace = meta.namespace.as_deref()?;
    Some(ObjectRef::new(name).within(namespace))
}

/// The instances of one workflow in the cache.
pub fn instances_of(ctx: &Context, namespace: &str, workflow: &str) -> Vec<Arc<WorkflowInstance>> {
    ctx.instance_index
        .lookup(&ctx.instances, namespace, workflow)
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::runtime::reflector;

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
            index.follow(&event);
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
}
