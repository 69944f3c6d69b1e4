//! The garbage collector and the namespace controller.
//!
//! Deletes follow ownerReferences as the real server's do: `Background` removes the owner
//! now and its dependents soon after; `Foreground` keeps the owner (with the
//! `foregroundDeletion` finalizer and a deletionTimestamp) until the dependents that block
//! its deletion are gone; `Orphan` (with the `orphan` finalizer) strips the references to it
//! from its dependents. Objects whose owners no longer exist (by uid) are collected.
//! Deleting a namespace turns it `Terminating`; its contents are deleted, then it goes.
//!
//! It works from change events. It only looks at everything stored when it starts, when it
//! fell behind the event stream, and every few minutes as a safety net: with thousands of
//! objects stored, such a pass is the costliest thing it does.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;

use crate::controllers::{builtin, has_finalizer, modify, pace, remove_finalizer, text};
use crate::error::ApiError;
use crate::registry::ResourceType;
use crate::selector::Selector;
use crate::state::AppState;
use crate::store::{Change, Deletion, Store, Write, type_key};

const FOREGROUND: &str = "foregroundDeletion";
const ORPHAN: &str = "orphan";
/// How often everything is looked at again although no event was missed.
const RESCAN: Duration = Duration::from_secs(300);

/// DeleteOptions' `propagationPolicy`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Propagation {
    /// Delete the owner now, dependents in the background.
    Background,
    /// Delete blocking dependents first, then the owner.
    Foreground,
    /// Keep dependents, dropping their references to the owner.
    Orphan,
}

impl Propagation {
    /// Reads DeleteOptions (`propagationPolicy`, or the older `orphanDependents`) or the
    /// query parameter of the same name; `Ok(None)` when none is given.
    pub fn from_options(options: &Value, query: Option<&str>) -> Result<Option<Self>, ApiError> {
        let named = options
            .get("propagationPolicy")
            .and_then(Value::as_str)
            .or(query);
        match named {
            Some("Background") => Ok(Some(Propagation::Background)),
            Some("Foreground") => Ok(Some(Propagation::Foreground)),
            Some("Orphan") => Ok(Some(Propagation::Orphan)),
            Some(other) => Err(ApiError::unsupported_propagation(other)),
            None => Ok(
                match options.get("orphanDependents").and_then(Value::as_bool) {
                    Some(true) => Some(Propagation::Orphan),
                    Some(false) => Some(Propagation::Background),
                    None => None,
                },
            ),
        }
    }

    /// What the real server does without a policy: batch/v1 Jobs orphan their pods (for
    /// backwards compatibility), everything else deletes in the background.
    pub fn default_for(t: &ResourceType) -> Self {
        if t.group == "batch" && t.plural == "jobs" {
            Propagation::Orphan
        } else {
            Propagation::Background
        }
    }
}

/// How deleting `obj` proceeds given the policy and the running loops: finalizers for the
/// garbage collector, a grace period for a running pod, Terminating for a namespace.
pub fn deletion(
    state: &AppState,
    t: &ResourceType,
    obj: &Value,
    policy: Propagation,
    grace: Option<i64>,
) -> Deletion {
    let mut d = Deletion::default();
    if state.features.controllers {
        if t.group.is_empty() && t.plural == "namespaces" {
            d.terminate_namespace = true;
            return d;
        }
        match policy {
            Propagation::Foreground => d.add_finalizers.push(FOREGROUND),
            Propagation::Orphan => d.add_finalizers.push(ORPHAN),
            Propagation::Background => {}
        }
    }
    if state.features.kubelet && t.group.is_empty() && t.plural == "pods" {
        let scheduled = !text(obj, "/spec/nodeName").is_empty();
        let finished = matches!(text(obj, "/status/phase"), "Succeeded" | "Failed");
        if scheduled && !finished {
            let grace = grace
                .or_else(|| {
                    obj.pointer("/spec/terminationGracePeriodSeconds")
                        .and_then(Value::as_i64)
                })
                .unwrap_or(30);
            // A zero grace period (a forced delete) removes the object at once.
            if grace > 0 {
                d.grace_seconds = Some(grace);
            }
        }
    }
    d
}

/// Deletes an object the way an API client's delete with `policy` would.
pub fn delete_object(
    state: &AppState,
    t: &ResourceType,
    namespace: &str,
    name: &str,
    policy: Propagation,
) -> Result<Arc<Value>, ApiError> {
    let obj = state.store.get_shared(t, namespace, name)?;
    let d = deletion(state, t, &obj, policy, None);
    let uid = serde_json::json!({"uid": text(&obj, "/metadata/uid")});
    state
        .store
        .delete_with(t, namespace, name, &uid, Write::default(), &d)
}

type Key = (String, String, String);

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Task {
    /// Check whether an object's owners still exist.
    Dependent(Key),
    /// Finish a foreground or orphan delete of an owner.
    Finalize(Key),
    /// Empty a terminating namespace.
    Namespace(String),
}

/// The owners of each object that has any, by uid: to tell when they change.
type Owners = HashMap<Key, Vec<String>>;

fn owner_uids(obj: &Value) -> Vec<String> {
    crate::store::owner_uids(obj)
        .into_iter()
        .map(String::from)
        .collect()
}

/// Records `key`'s owners (forgetting it if it has none).
fn set_owners(owners_of: &mut Owners, key: &Key, owners: Vec<String>) {
    if owners.is_empty() {
        owners_of.remove(key);
    } else {
        owners_of.insert(key.clone(), owners);
    }
}

fn key_of(type_key: &str, obj: &Value) -> Key {
    (
        type_key.to_string(),
        text(obj, "/metadata/namespace").to_string(),
        text(obj, "/metadata/name").to_string(),
    )
}

fn type_for(store: &Store, key: &str) -> Option<ResourceType> {
    store.type_by_key(key)
}

/// The type an ownerReference names.
fn type_of_ref(store: &Store, r: &Value) -> Option<ResourceType> {
    let api_version = text(r, "/apiVersion");
    let (group, version) = api_version.rsplit_once('/').unwrap_or(("", api_version));
    store.type_of_kind(group, version, text(r, "/kind"))
}

fn deleting(obj: &Value) -> bool {
    obj.pointer("/metadata/deletionTimestamp").is_some()
}

struct Gc {
    state: Arc<AppState>,
    owners_of: Owners,
    tasks: BTreeSet<Task>,
}

/// Runs the garbage collector and namespace controller until the task is aborted.
pub async fn run(state: Arc<AppState>) {
    let mut events = state.store.changes();
    let mut gc = Gc {
        state,
        owners_of: Owners::new(),
        tasks: BTreeSet::new(),
    };
    gc.scan();
    let mut resync = tokio::time::interval(RESCAN);
    resync.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    resync.tick().await;
    loop {
        for (i, task) in std::mem::take(&mut gc.tasks).into_iter().enumerate() {
            pace(i).await;
            gc.process(task);
        }
        tokio::select! {
            open = events.next_batch(|change| match change {
                Change::Event(e) => gc.observe(&e),
                Change::Missed => gc.scan(),
            }) => if !open { return },
            _ = resync.tick() => gc.scan(),
        }
    }
}

impl Gc {
    /// Rebuilds the owners from the store and queues whatever may need work, reading the
    /// objects in place rather than copying them out.
    fn scan(&mut self) {
        let mut owners_of = Owners::new();
        let tasks = &mut self.tasks;
        self.state.store.visit(|tk, obj| {
            let owners = owner_uids(obj);
            if owners.is_empty() && !deleting(obj) {
                // Most objects: nothing to index or queue, and no key to build under the
                // store's lock.
                return;
            }
            let key = key_of(tk, obj);
            if !owners.is_empty() {
                tasks.insert(Task::Dependent(key.clone()));
            }
            set_owners(&mut owners_of, &key, owners);
            if deleting(obj) {
                if tk == "/namespaces" {
                    tasks.insert(Task::Namespace(key.2.clone()));
                } else if has_finalizer(obj, FOREGROUND) || has_finalizer(obj, ORPHAN) {
                    tasks.insert(Task::Finalize(key));
                }
            }
        });
        self.owners_of = owners_of;
    }

    fn observe(&mut self, e: &crate::store::Event) {
        let key = key_of(&e.type_key, &e.object);
        if e.kind == "DELETED" {
            self.owners_of.remove(&key);
            let uid = text(&e.object, "/metadata/uid");
            for dep in self.state.store.dependent_keys(uid) {
                self.tasks.insert(Task::Dependent(dep));
            }
            // An owner waiting in foreground deletion may be free now.
            for r in e
                .object
                .pointer("/metadata/ownerReferences")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                if let Some(t) = type_of_ref(&self.state.store, r) {
                    let ns = if t.namespaced {
                        key.1.clone()
                    } else {
                        String::new()
                    };
                    self.tasks.insert(Task::Finalize((
                        type_key(&t),
                        ns,
                        text(r, "/name").to_string(),
                    )));
                }
            }
            if !key.1.is_empty() && self.state.store.namespace_terminating(&key.1) {
                self.tasks.insert(Task::Namespace(key.1.clone()));
            }
            return;
        }
        let owners = owner_uids(&e.object);
        let changed = self.owners_of.get(&key).map(Vec::as_slice) != Some(owners.as_slice());
        if !owners.is_empty() && (changed || e.kind == "ADDED") {
            self.tasks.insert(Task::Dependent(key.clone()));
        }
        set_owners(&mut self.owners_of, &key, owners);
        if deleting(&e.object) {
            if e.type_key == "/namespaces" {
                self.tasks.insert(Task::Namespace(key.2.clone()));
            } else if has_finalizer(&e.object, FOREGROUND) || has_finalizer(&e.object, ORPHAN) {
                self.tasks.insert(Task::Finalize(key));
            }
        }
    }

    fn process(&mut self, task: Task) {
        match task {
            Task::Dependent(key) => self.check_dependent(&key),
            Task::Finalize(key) => self.finalize(&key),
            Task::Namespace(name) => self.empty_namespace(&name),
        }
    }

    /// Whether the owner a reference names exists with that uid.
    fn owner_exists(&self, namespace: &str, r: &Value) -> bool {
        let store = &self.state.store;
        let Some(t) = type_of_ref(store, r) else {
            return false;
        };
        store
            .get(&t, namespace, text(r, "/name"))
            .is_ok_and(|o| text(&o, "/metadata/uid") == text(r, "/uid"))
    }

    /// The type and the stored object of `key`, while both exist.
    fn lookup(&self, key: &Key) -> Option<(ResourceType, Value)> {
        let store = &self.state.store;
        let t = type_for(store, &key.0)?;
        let obj = store.get(&t, &key.1, &key.2).ok()?;
        Some((t, obj))
    }

    fn check_dependent(&mut self, key: &Key) {
        let store = &self.state.store;
        let Some((t, obj)) = self.lookup(key) else {
            return;
        };
        if deleting(&obj) {
            return;
        }
        let refs: Vec<Value> = obj
            .pointer("/metadata/ownerReferences")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        if refs.is_empty() {
            return;
        }
        let missing: Vec<String> = refs
            .iter()
            .filter(|r| !self.owner_exists(&key.1, r))
            .map(|r| text(r, "/uid").to_string())
            .collect();
        if missing.is_empty() {
            return;
        }
        if missing.len() == refs.len() {
            if let Err(err) =
                delete_object(&self.state, &t, &key.1, &key.2, Propagation::Background)
            {
                tracing::debug!(%err, name = key.2, "collecting an object whose owners are gone");
            }
            return;
        }
        let _ = modify(store, &t, &key.1, &key.2, false, |o| {
            let Some(list) = o
                .pointer_mut("/metadata/ownerReferences")
                .and_then(Value::as_array_mut)
            else {
                return false;
            };
            list.retain(|r| !missing.iter().any(|m| m == text(r, "/uid")));
            true
        });
    }

    /// Current dependents of the owner `uid`, from the store's index (each re-read, and
    /// checked, as it may change in between).
    fn dependents(&self, uid: &str) -> Vec<(ResourceType, Value)> {
        let store = &self.state.store;
        let mut out = Vec::new();
        for key in store.dependent_keys(uid) {
            let Some(t) = type_for(store, &key.0) else {
                continue;
            };
            if let Ok(obj) = store.get(&t, &key.1, &key.2)
                && owner_uids(&obj).iter().any(|u| u == uid)
            {
                out.push((t, obj));
            }
        }
        out
    }

    fn finalize(&mut self, key: &Key) {
        let store = &self.state.store;
        let Some((t, owner)) = self.lookup(key) else {
            return;
        };
        if !deleting(&owner) {
            return;
        }
        let uid = text(&owner, "/metadata/uid").to_string();
        if has_finalizer(&owner, ORPHAN) {
            for (dt, dep) in self.dependents(&uid) {
                let _ = modify(
                    store,
                    &dt,
                    text(&dep, "/metadata/namespace"),
                    text(&dep, "/metadata/name"),
                    false,
                    |o| {
                        let Some(list) = o
                            .pointer_mut("/metadata/ownerReferences")
                            .and_then(Value::as_array_mut)
                        else {
                            return false;
                        };
                        list.retain(|r| text(r, "/uid") != uid);
                        if list.is_empty()
                            && let Some(m) = o.get_mut("metadata").and_then(Value::as_object_mut)
                        {
                            m.remove("ownerReferences");
                        }
                        true
                    },
                );
            }
            remove_finalizer(store, &t, &key.1, &key.2, ORPHAN);
            return;
        }
        if has_finalizer(&owner, FOREGROUND) {
            let mut blocking = 0;
            for (dt, dep) in self.dependents(&uid) {
                let blocks = dep
                    .pointer("/metadata/ownerReferences")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .any(|r| {
                        text(r, "/uid") == uid
                            && r.get("blockOwnerDeletion").and_then(Value::as_bool) == Some(true)
                    });
                if blocks {
                    blocking += 1;
                }
                if !deleting(&dep) {
                    let ns = text(&dep, "/metadata/namespace");
                    let name = text(&dep, "/metadata/name");
                    if let Err(err) =
                        delete_object(&self.state, &dt, ns, name, Propagation::Foreground)
                    {
                        tracing::debug!(%err, name, "deleting a dependent in the foreground");
                    }
                }
            }
            if blocking == 0 {
                remove_finalizer(store, &t, &key.1, &key.2, FOREGROUND);
            }
        }
    }

    fn empty_namespace(&mut self, name: &str) {
        let store = &self.state.store;
        let Some(namespaces) = builtin(store, "", "namespaces") else {
            return;
        };
        let Ok(ns) = store.get(&namespaces, "", name) else {
            return;
        };
        if !deleting(&ns) {
            return;
        }
        let everything = Selector::default();
        let mut left = 0;
        let mut seen = HashSet::new();
        for t in store.types().into_iter().filter(|t| t.namespaced) {
            if !seen.insert(type_key(&t)) {
                continue;
            }
            let (objects, _) = store.list(&t, name, &everything, &everything);
            for obj in objects {
                left += 1;
                if !deleting(&obj) {
                    let _ = delete_object(
                        &self.state,
                        &t,
                        name,
                        text(&obj, "/metadata/name"),
                        Propagation::Background,
                    );
                }
            }
        }
        if left == 0 {
            let _ = store.delete(&namespaces, "", name, &Value::Null, Write::default());
        }
    }
}
