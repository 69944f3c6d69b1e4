//! In-memory object storage with one monotonically increasing resourceVersion, optimistic
//! concurrency, generations, finalizers and a bounded event history for watches, plus an
//! index of dependents by owner uid so controllers never scan every object for them.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque, btree_map};
use std::ops::{Bound, RangeBounds};
use std::sync::{Arc, Mutex};

use serde_json::{Map, Value, json};
use tokio::sync::broadcast;
use tokio::sync::broadcast::error::{RecvError, TryRecvError};

use crate::error::ApiError;
use crate::registry::{self, ResourceType};
use crate::schema::SchemaError;
use crate::selector::Selector;

/// Watch events kept for clients that resume from a resourceVersion; older ones are compacted
/// and such clients get 410 Gone.
const HISTORY: usize = 10_000;

/// A change to one object.
#[derive(Clone, Debug)]
pub struct Event {
    /// The resourceVersion of the change.
    pub rv: u64,
    /// `group/plural` of the object.
    pub type_key: String,
    /// Its namespace ("" when cluster-scoped).
    pub namespace: String,
    /// ADDED, MODIFIED or DELETED.
    pub kind: &'static str,
    /// The object after the change (before it, for DELETED), shared by the history and
    /// every subscriber rather than copied for each.
    pub object: Arc<Value>,
}

/// What a [`Subscription`] hands its subscriber.
#[derive(Debug)]
pub enum Change {
    /// The next change, in order.
    Event(Event),
    /// Changes were lost while the subscriber was behind: it must rebuild its view from the
    /// store, as whatever it missed is there.
    Missed,
}

/// A controller's subscription to the store's changes, which catches up by itself when the
/// controller falls behind the broadcast channel.
pub struct Subscription {
    events: broadcast::Receiver<Event>,
}

impl From<broadcast::Receiver<Event>> for Subscription {
    fn from(events: broadcast::Receiver<Event>) -> Self {
        Subscription { events }
    }
}

impl Subscription {
    /// Waits for the next change, then hands `handle` it and every change already queued
    /// behind it, so a burst is worked through in one go. A subscriber that fell behind and
    /// lost changes is moved on to the newest (what is still queued is older than the store,
    /// and a receiver that fell behind once would otherwise stay a full channel behind,
    /// catching up each time) and gets [`Change::Missed`]. False once the store is gone.
    ///
    /// Cancel safe, for `select!`: it only waits before the first change, and hands out
    /// everything it takes.
    pub async fn next_batch(&mut self, mut handle: impl FnMut(Change)) -> bool {
        let mut next = self.events.recv().await;
        loop {
            match next {
                Ok(e) => handle(Change::Event(e)),
                Err(RecvError::Lagged(_)) => {
                    self.events = self.events.resubscribe();
                    handle(Change::Missed);
                }
                Err(RecvError::Closed) => return false,
            }
            next = match self.events.try_recv() {
                Ok(e) => Ok(e),
                Err(TryRecvError::Lagged(n)) => Err(RecvError::Lagged(n)),
                Err(TryRecvError::Closed) => return false,
                Err(TryRecvError::Empty) => return true,
            };
        }
    }
}

type Key = (String, String, String); // (type key, namespace, name)

/// The uids an object's ownerReferences name (empty ones left out).
pub(crate) fn owner_uids(obj: &Value) -> Vec<&str> {
    obj.get("metadata")
        .and_then(|m| m.get("ownerReferences"))
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|r| r.get("uid").and_then(Value::as_str))
        .filter(|u| !u.is_empty())
        .collect()
}

/// The stored objects by key, with the keys of each owner's dependents (by owner uid) kept
/// in step on every write, so finding an owner's dependents costs what they number rather
/// than what the store holds. Objects are shared with the watch history and with readers:
/// handing one out costs a reference count, not a copy, and a write stores a new object.
#[derive(Default)]
struct Objects {
    by_key: BTreeMap<Key, Arc<Value>>,
    dependents: HashMap<String, BTreeSet<Key>>,
}

impl Objects {
    fn get(&self, key: &Key) -> Option<&Arc<Value>> {
        self.by_key.get(key)
    }

    fn contains_key(&self, key: &Key) -> bool {
        self.by_key.contains_key(key)
    }

    fn range<R: RangeBounds<Key>>(&self, range: R) -> btree_map::Range<'_, Key, Arc<Value>> {
        self.by_key.range(range)
    }

    fn keys(&self) -> btree_map::Keys<'_, Key, Arc<Value>> {
        self.by_key.keys()
    }

    fn insert(&mut self, key: Key, obj: Arc<Value>) -> Option<Arc<Value>> {
        let old = self.by_key.get(&key);
        let unchanged = old.is_some_and(|old| owner_uids(old) == owner_uids(&obj));
        if !unchanged {
            if let Some(old) = old {
                unindex(&mut self.dependents, &key, old);
            }
            for uid in owner_uids(&obj) {
                self.dependents
                    .entry(uid.to_string())
                    .or_default()
                    .insert(key.clone());
            }
        }
        self.by_key.insert(key, obj)
    }

    fn remove(&mut self, key: &Key) -> Option<Arc<Value>> {
        let old = self.by_key.remove(key)?;
        unindex(&mut self.dependents, key, &old);
        Some(old)
    }

    fn retain(&mut self, mut keep: impl FnMut(&Key, &Value) -> bool) {
        let gone: Vec<Key> = self
            .by_key
            .iter()
            .filter(|(k, v)| !keep(k, v))
            .map(|(k, _)| k.clone())
            .collect();
        for key in gone {
            self.remove(&key);
        }
    }
}

/// Drops `key` (holding `obj`) from the dependents of its owners.
fn unindex(dependents: &mut HashMap<String, BTreeSet<Key>>, key: &Key, obj: &Value) {
    for uid in owner_uids(obj) {
        if let Some(keys) = dependents.get_mut(uid) {
            keys.remove(key);
            if keys.is_empty() {
                dependents.remove(uid);
            }
        }
    }
}

struct Inner {
    rv: u64,
    types: Vec<ResourceType>,
    objects: Objects,
    history: VecDeque<Event>,
    /// Events up to and including this version were dropped from `history`.
    compacted: u64,
}

/// The server's state.
pub struct Store {
    inner: Mutex<Inner>,
    events: broadcast::Sender<Event>,
}

/// A page of a list (see [`Store::page`]).
#[derive(Debug)]
pub struct Page {
    /// The page's objects, in (namespace, name) order.
    pub items: Vec<Arc<Value>>,
    /// How many more objects match after the page.
    pub remaining: usize,
    /// The store's resourceVersion when the page was taken.
    pub rv: u64,
}

/// How a write is carried out.
#[derive(Clone, Copy, Debug, Default)]
pub struct Write {
    /// Refuse fields a CRD schema does not know (`fieldValidation=Strict`) instead of
    /// dropping them.
    pub strict: bool,
    /// Check and return the result without storing it (`dryRun=All`).
    pub dry_run: bool,
}

/// What a delete does besides removing the object, decided by the HTTP layer from
/// DeleteOptions and by the controllers (the garbage collector's `deletion` knows how).
#[derive(Clone, Debug, Default)]
pub struct Deletion {
    /// Finalizers to add with a deletionTimestamp instead of removing the object now
    /// (`foregroundDeletion`, `orphan`): the garbage collector finishes the delete.
    pub add_finalizers: Vec<&'static str>,
    /// A graceful delete: the object only gets a deletionTimestamp and
    /// deletionGracePeriodSeconds, and whoever runs it (the kubelet) deletes it again with 0.
    pub grace_seconds: Option<i64>,
    /// A namespace only turns Terminating; the namespace controller empties and removes it.
    pub terminate_namespace: bool,
}

/// `group/plural`, the key of a type in the store.
pub fn type_key(t: &ResourceType) -> String {
    format!("{}/{}", t.group, t.plural)
}

impl Default for Store {
    fn default() -> Self {
        let (events, _) = broadcast::channel(4096);
        Store {
            inner: Mutex::new(Inner {
                rv: 1,
                types: registry::builtins(),
                objects: Objects::default(),
                history: VecDeque::new(),
                compacted: 0,
            }),
            events,
        }
    }
}

/// Where an object of `t` lives: cluster-scoped objects ignore the namespace.
fn object_key(t: &ResourceType, namespace: &str, name: &str) -> Key {
    let namespace = if t.namespaced { namespace } else { "" };
    (type_key(t), namespace.to_string(), name.to_string())
}

fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

fn name_of(obj: &Value) -> String {
    obj.pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string()
}

impl Store {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves plain data behind; keep serving.
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Subscribes to changes from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.events.subscribe()
    }

    /// Subscribes a controller to changes from now on (see [`Subscription`]).
    pub fn changes(&self) -> Subscription {
        Subscription::from(self.events.subscribe())
    }

    /// Every served type.
    pub fn types(&self) -> Vec<ResourceType> {
        self.lock().types.clone()
    }

    /// The type served at `group/version/plural`.
    pub fn find_type(&self, group: &str, version: &str, plural: &str) -> Option<ResourceType> {
        self.lock()
            .types
            .iter()
            .find(|t| t.group == group && t.version == version && t.plural == plural)
            .cloned()
    }

    /// The additionalPrinterColumns a CRD declares for `t`, or a built-in kind's own columns.
    pub fn printer_columns(&self, t: &ResourceType) -> Vec<Value> {
        if registry::is_builtin(t) {
            return crate::table::builtin_columns(&t.group, &t.plural);
        }
        self.crd_version(t)
            .and_then(|v| {
                v.get("additionalPrinterColumns")
                    .and_then(Value::as_array)
                    .cloned()
            })
            .unwrap_or_default()
    }

    /// The openAPIV3Schema a CRD declares for `t`, if `t` is a custom resource.
    pub fn crd_schema(&self, t: &ResourceType) -> Option<Value> {
        self.crd_version(t)?
            .pointer("/schema/openAPIV3Schema")
            .cloned()
    }

    /// The entry of `spec.versions` of the CRD that serves `t`.
    fn crd_version(&self, t: &ResourceType) -> Option<Value> {
        crd_version_in(&self.lock(), t).cloned()
    }

    /// The current resourceVersion.
    pub fn current_rv(&self) -> u64 {
        self.lock().rv
    }

    fn record(
        &self,
        inner: &mut Inner,
        t: &ResourceType,
        namespace: &str,
        kind: &'static str,
        object: Arc<Value>,
    ) {
        self.record_key(inner, type_key(t), namespace, kind, object);
    }

    fn record_key(
        &self,
        inner: &mut Inner,
        type_key: String,
        namespace: &str,
        kind: &'static str,
        object: Arc<Value>,
    ) {
        let event = Event {
            rv: inner.rv,
            type_key,
            namespace: namespace.to_string(),
            kind,
            object,
        };
        inner.history.push_back(event.clone());
        while inner.history.len() > HISTORY {
            if let Some(old) = inner.history.pop_front() {
                inner.compacted = old.rv;
            }
        }
        // Nobody listening is fine.
        let _ = self.events.send(event);
    }

    /// Events for `t` in `namespace` ("" = all) after `rv`; `Err` when compacted (410 Gone).
    pub fn events_since(
        &self,
        t: &ResourceType,
        namespace: &str,
        rv: u64,
    ) -> Result<Vec<Event>, ApiError> {
        let inner = self.lock();
        if rv < inner.compacted {
            return Err(ApiError::gone(rv));
        }
        let key = type_key(t);
        Ok(inner
            .history
            .iter()
            .filter(|e| {
                e.rv > rv && e.type_key == key && (namespace.is_empty() || e.namespace == namespace)
            })
            .cloned()
            .collect())
    }

    /// Forgets every event so far: clients resuming from an older version get 410 Gone.
    pub fn compact(&self) {
        let mut inner = self.lock();
        inner.compacted = inner.rv;
        inner.history.clear();
    }

    /// One object, as a copy the caller may change.
    pub fn get(&self, t: &ResourceType, namespace: &str, name: &str) -> Result<Value, ApiError> {
        self.get_shared(t, namespace, name)
            .map(Arc::unwrap_or_clone)
    }

    /// One object, shared rather than copied: for reading it only.
    pub fn get_shared(
        &self,
        t: &ResourceType,
        namespace: &str,
        name: &str,
    ) -> Result<Arc<Value>, ApiError> {
        self.lock()
            .objects
            .get(&object_key(t, namespace, name))
            .cloned()
            .ok_or_else(|| ApiError::not_found(t, name))
    }

    /// Objects of `t` in `namespace` ("" = all) matching the selectors, and the list's version.
    pub fn list(
        &self,
        t: &ResourceType,
        namespace: &str,
        labels: &Selector,
        fields: &Selector,
    ) -> (Vec<Arc<Value>>, u64) {
        let page = self.page(t, namespace, labels, fields, None, None);
        (page.items, page.rv)
    }

    /// One page of [`Store::list`]: the matching objects whose (namespace, name) comes after
    /// `after`, at most `limit` of them. Walks the type's keys from `after` on and shares only
    /// the page's objects, so a page costs what it returns plus a count of what is left,
    /// rather than a copy of the whole collection.
    pub fn page(
        &self,
        t: &ResourceType,
        namespace: &str,
        labels: &Selector,
        fields: &Selector,
        after: Option<(&str, &str)>,
        limit: Option<usize>,
    ) -> Page {
        let inner = self.lock();
        let key = type_key(t);
        // Keys sort by type, then namespace: scan only this type's (or namespace's) range,
        // from the later of its start and the position after `after`. No string sorts
        // between `s` and `s + "\0"`, so that bounds everything beginning with `s`.
        let start = match after {
            // Past the end of the namespace listed: nothing is left (and the range would
            // start after its end).
            Some((ns, _)) if !namespace.is_empty() && ns > namespace => {
                return Page {
                    items: Vec::new(),
                    remaining: 0,
                    rv: inner.rv,
                };
            }
            Some((ns, name)) if (ns, name) >= (namespace, "") => {
                Bound::Excluded((key.clone(), ns.to_string(), name.to_string()))
            }
            _ => Bound::Included((key.clone(), namespace.to_string(), String::new())),
        };
        let end = if namespace.is_empty() {
            (format!("{key}\0"), String::new(), String::new())
        } else {
            (key, format!("{namespace}\0"), String::new())
        };
        let mut matching = inner
            .objects
            .range((start, Bound::Excluded(end)))
            .map(|(_, v)| v)
            .filter(|v| labels.matches_labels(v) && fields.matches_fields(v));
        let items: Vec<Arc<Value>> = matching
            .by_ref()
            .take(limit.unwrap_or(usize::MAX))
            .cloned()
            .collect();
        let remaining = matching.count();
        Page {
            items,
            remaining,
            rv: inner.rv,
        }
    }

    /// The objects of `t` in `namespace` (all namespaces when empty) for which `keep` holds.
    /// `keep` sees every one of them in place (under the store's lock, so it must not use the
    /// store) and only those kept are cloned.
    pub fn select(
        &self,
        t: &ResourceType,
        namespace: &str,
        mut keep: impl FnMut(&Value) -> bool,
    ) -> Vec<Value> {
        let inner = self.lock();
        let key = type_key(t);
        let start = (key.clone(), namespace.to_string(), String::new());
        inner
            .objects
            .range(start..)
            .take_while(|((k, ns, _), _)| *k == key && (namespace.is_empty() || ns == namespace))
            .filter(|(_, v)| keep(v))
            .map(|(_, v)| Value::clone(v))
            .collect()
    }

    /// The objects of `t` in `namespace` (all namespaces when empty) whose ownerReferences
    /// name the uid `owner` and for which `keep` holds, in key order. Found through the owner
    /// index, so the cost follows the number of dependents rather than of stored objects,
    /// and only those are cloned.
    pub fn dependents(
        &self,
        t: &ResourceType,
        namespace: &str,
        owner: &str,
        keep: impl Fn(&Value) -> bool,
    ) -> Vec<Value> {
        let inner = self.lock();
        let Some(keys) = inner.objects.dependents.get(owner) else {
            return Vec::new();
        };
        let key = type_key(t);
        keys.iter()
            .filter(|(k, ns, _)| *k == key && (namespace.is_empty() || ns == namespace))
            .filter_map(|k| inner.objects.get(k))
            .filter(|v| keep(v))
            .map(|v| Value::clone(v))
            .collect()
    }

    /// The keys (type key, namespace, name) of the objects of any type whose
    /// ownerReferences name the owner with uid `owner`.
    pub fn dependent_keys(&self, owner: &str) -> Vec<(String, String, String)> {
        self.lock()
            .objects
            .dependents
            .get(owner)
            .map(|keys| keys.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// Calls `visit` with the type key and value of every object of a served type, under the
    /// store's lock (so `visit` must not use the store), without cloning them: for
    /// rebuilding a controller's view of everything.
    pub fn visit(&self, mut visit: impl FnMut(&str, &Value)) {
        let inner = self.lock();
        let served: std::collections::HashSet<String> = inner.types.iter().map(type_key).collect();
        for ((tk, _, _), obj) in inner.objects.by_key.iter() {
            if served.contains(tk) {
                visit(tk, obj);
            }
        }
    }

    /// The served type whose key (`group/plural`) is `key`.
    pub fn type_by_key(&self, key: &str) -> Option<ResourceType> {
        // Groups are DNS names: the first slash ends the group.
        let (group, plural) = key.split_once('/')?;
        self.lock()
            .types
            .iter()
            .find(|t| t.group == group && t.plural == plural)
            .cloned()
    }

    /// The first served type of `group` and `kind`, preferring `version`: what an
    /// ownerReference names.
    pub fn type_of_kind(&self, group: &str, version: &str, kind: &str) -> Option<ResourceType> {
        let inner = self.lock();
        inner
            .types
            .iter()
            .find(|t| t.group == group && t.version == version && t.kind == kind)
            .or_else(|| {
                inner
                    .types
                    .iter()
                    .find(|t| t.group == group && t.kind == kind)
            })
            .cloned()
    }

    /// The (namespace, name) of every object of `t`.
    pub fn names(&self, t: &ResourceType) -> Vec<(String, String)> {
        let inner = self.lock();
        let key = type_key(t);
        let start = (key.clone(), String::new(), String::new());
        inner
            .objects
            .range(start..)
            .take_while(|((k, _, _), _)| *k == key)
            .map(|((_, ns, name), _)| (ns.clone(), name.clone()))
            .collect()
    }

    /// Creates an object; returns it as stored, shared with the store.
    pub fn create(
        &self,
        t: &ResourceType,
        namespace: &str,
        mut obj: Value,
        opts: Write,
    ) -> Result<Arc<Value>, ApiError> {
        let mut inner = self.lock();
        let mut name = name_of(&obj);
        if name.is_empty() {
            let prefix = obj
                .pointer("/metadata/generateName")
                .and_then(Value::as_str)
                .unwrap_or_default();
            if prefix.is_empty() {
                return Err(ApiError::invalid_object(
                    t,
                    "",
                    vec![(
                        "metadata.name",
                        "Required value: name or generateName is required".to_string(),
                    )],
                ));
            }
            let suffix: String = uuid::Uuid::new_v4()
                .simple()
                .to_string()
                .chars()
                .take(5)
                .collect();
            name = format!("{prefix}{suffix}");
        }
        crate::validation::validate_name(t, &name)?;
        if t.namespaced {
            let ns_type = inner
                .types
                .iter()
                .find(|x| x.plural == "namespaces" && x.group.is_empty())
                .cloned();
            if let Some(ns_type) = ns_type
                && !inner.objects.contains_key(&(
                    type_key(&ns_type),
                    String::new(),
                    namespace.to_string(),
                ))
            {
                return Err(ApiError::namespace_not_found(namespace));
            }
            let terminating = inner
                .objects
                .get(&(
                    "/namespaces".to_string(),
                    String::new(),
                    namespace.to_string(),
                ))
                .is_some_and(|ns| ns.pointer("/metadata/deletionTimestamp").is_some());
            if terminating {
                return Err(ApiError::namespace_terminating(t, &name, namespace));
            }
        }
        let key = object_key(t, namespace, &name);
        if inner.objects.contains_key(&key) {
            return Err(ApiError::already_exists(t, &name));
        }
        if t.group == "apiextensions.k8s.io" && t.plural == "customresourcedefinitions" {
            crate::validation::validate_crd(&obj)
                .map_err(|causes| ApiError::invalid(t, &name, causes))?;
        }
        if t.status_subresource
            && let Some(fields) = obj.as_object_mut()
        {
            // Status is written through /status only.
            fields.remove("status");
        }
        apply_schema(&inner, t, &name, &mut obj, opts.strict)?;
        if !opts.dry_run {
            inner.rv += 1;
        }
        let rv = inner.rv;
        let meta = obj
            .as_object_mut()
            .ok_or_else(|| ApiError::bad_request("object must be a JSON object"))?;
        meta.insert("apiVersion".into(), json!(t.api_version()));
        meta.insert("kind".into(), json!(t.kind));
        let m = meta.entry("metadata").or_insert_with(|| json!({}));
        let m = m
            .as_object_mut()
            .ok_or_else(|| ApiError::bad_request("metadata must be an object"))?;
        m.insert("name".into(), json!(name));
        if t.namespaced {
            m.insert("namespace".into(), json!(namespace));
        } else {
            m.remove("namespace");
        }
        m.insert("uid".into(), json!(uuid::Uuid::new_v4().to_string()));
        m.insert("resourceVersion".into(), json!(rv.to_string()));
        m.insert("creationTimestamp".into(), json!(now()));
        m.insert("generation".into(), json!(1));
        m.remove("deletionTimestamp");
        crate::builtin::prepare_create(t, &mut obj)
            .and_then(|()| crate::workloads::prepare_create(t, &mut obj))
            .map_err(|errors| ApiError::invalid(t, &name, errors))?;
        if t.plural == "secrets" && t.group.is_empty() && obj.get("type").is_none() {
            obj["type"] = json!("Opaque");
        }
        if t.plural == "namespaces" && t.group.is_empty() {
            obj["status"] = json!({"phase": "Active"});
        }
        if opts.dry_run {
            if let Some(m) = obj.get_mut("metadata").and_then(Value::as_object_mut) {
                m.remove("resourceVersion");
            }
            return Ok(Arc::new(obj));
        }
        if t.plural == "customresourcedefinitions" {
            self.register_crd(&mut inner, &mut obj)?;
        }
        Ok(self.write(&mut inner, t, key, "ADDED", obj))
    }

    /// Stores `obj` at `key` and records the change, the store, the history and the caller
    /// sharing one copy.
    fn write(
        &self,
        inner: &mut Inner,
        t: &ResourceType,
        key: Key,
        kind: &'static str,
        obj: Value,
    ) -> Arc<Value> {
        let shared = Arc::new(obj);
        let namespace = key.1.clone();
        inner.objects.insert(key, shared.clone());
        self.record(inner, t, &namespace, kind, shared.clone());
        shared
    }

    fn register_crd(&self, inner: &mut Inner, crd: &mut Value) -> Result<(), ApiError> {
        serve_crd(inner, crd)?;
        let names = crd.pointer("/spec/names").cloned().unwrap_or(json!({}));
        let time = now();
        crd["status"] = json!({
            "acceptedNames": names,
            "storedVersions": crd.pointer("/spec/versions").and_then(Value::as_array).into_iter().flatten()
                .filter(|v| v.get("storage").and_then(Value::as_bool) == Some(true))
                .filter_map(|v| v.get("name").cloned()).collect::<Vec<_>>(),
            "conditions": [
                {"type": "NamesAccepted", "status": "True", "reason": "NoConflicts", "message": "no conflicts found", "lastTransitionTime": time},
                {"type": "Established", "status": "True", "reason": "InitialNamesAccepted", "message": "the initial names have been accepted", "lastTransitionTime": time},
            ],
        });
        Ok(())
    }

    /// Replaces an object (or only its status when `status_only`). A resourceVersion in the
    /// new object must match the stored one. Returns the object as stored, shared with the
    /// store.
    pub fn update(
        &self,
        t: &ResourceType,
        namespace: &str,
        name: &str,
        mut obj: Value,
        status_only: bool,
        opts: Write,
    ) -> Result<Arc<Value>, ApiError> {
        let mut inner = self.lock();
        let key = object_key(t, namespace, name);
        let current = inner
            .objects
            .get(&key)
            .cloned()
            .ok_or_else(|| ApiError::not_found(t, name))?;
        if let Some(rv) = obj
            .pointer("/metadata/resourceVersion")
            .and_then(Value::as_str)
            && !rv.is_empty()
            && Some(rv)
                != current
                    .pointer("/metadata/resourceVersion")
                    .and_then(Value::as_str)
        {
            return Err(ApiError::conflict(t, name));
        }
        if !obj.is_object() {
            return Err(ApiError::bad_request("object must be a JSON object"));
        }
        if t.status_subresource {
            if status_only {
                let status = obj.get("status").cloned();
                let managed = obj.pointer("/metadata/managedFields").cloned();
                obj = Value::clone(&current);
                if let Some(managed) = managed {
                    obj["metadata"]["managedFields"] = managed;
                }
                match status {
                    Some(s) => obj["status"] = s,
                    None => {
                        if let Some(o) = obj.as_object_mut() {
                            o.remove("status");
                        }
                    }
                }
            } else {
                match current.get("status") {
                    Some(s) => obj["status"] = s.clone(),
                    None => {
                        if let Some(o) = obj.as_object_mut() {
                            o.remove("status");
                        }
                    }
                }
            }
        }
        apply_schema(&inner, t, name, &mut obj, opts.strict)?;
        let is_crd = t.group == "apiextensions.k8s.io" && t.plural == "customresourcedefinitions";
        if is_crd && !status_only {
            crate::validation::validate_crd(&obj)
                .map_err(|causes| ApiError::invalid(t, name, causes))?;
        }
        // Server-owned metadata survives any client write.
        let mut meta: Map<String, Value> = obj
            .get("metadata")
            .and_then(Value::as_object)
            .cloned()
            .unwrap_or_default();
        for field in [
            "uid",
            "creationTimestamp",
            "namespace",
            "name",
            "deletionTimestamp",
            "deletionGracePeriodSeconds",
            "generation",
        ] {
            match current.pointer(&format!("/metadata/{field}")) {
                Some(v) => meta.insert(field.into(), v.clone()),
                None => meta.remove(field),
            };
        }
        let spec_changed = if t.status_subresource {
            obj.get("spec") != current.get("spec")
        } else {
            !same_but_metadata(&obj, &current)
        };
        if spec_changed && !status_only {
            let generation = current
                .pointer("/metadata/generation")
                .and_then(Value::as_i64)
                .unwrap_or(1);
            meta.insert("generation".into(), json!(generation + 1));
        }
        obj["apiVersion"] = json!(t.api_version());
        obj["kind"] = json!(t.kind);
        // The write changes nothing if, with the current resourceVersion, its metadata and
        // everything else equal the stored object's.
        let unchanged = same_but_metadata(&obj, &current)
            && current.get("metadata").is_some_and(|stored| {
                let mut candidate = meta.clone();
                candidate.insert(
                    "resourceVersion".into(),
                    current["metadata"]["resourceVersion"].clone(),
                );
                stored.as_object() == Some(&candidate)
            });
        if unchanged {
            // A no-op write does not bump the resourceVersion, like the real server.
            return Ok(current);
        }
        if opts.dry_run {
            obj["metadata"] = Value::Object(meta);
            obj["metadata"]["resourceVersion"] = current["metadata"]["resourceVersion"].clone();
            return Ok(Arc::new(obj));
        }
        inner.rv += 1;
        meta.insert("resourceVersion".into(), json!(inner.rv.to_string()));
        obj["metadata"] = Value::Object(meta);
        // An object being deleted goes once its last finalizer is removed.
        let finalizers_empty = obj
            .pointer("/metadata/finalizers")
            .and_then(Value::as_array)
            .is_none_or(|f| f.is_empty());
        // A graceful delete in progress (grace left) is finished by its final delete instead.
        let grace_left = obj
            .pointer("/metadata/deletionGracePeriodSeconds")
            .and_then(Value::as_i64)
            .is_some_and(|g| g > 0);
        if obj.pointer("/metadata/deletionTimestamp").is_some() && finalizers_empty && !grace_left {
            inner.objects.remove(&key);
            let gone = Arc::new(obj);
            self.record(&mut inner, t, &key.1, "DELETED", gone.clone());
            return Ok(gone);
        }
        if is_crd && !status_only {
            serve_crd(&mut inner, &obj)?;
        }
        Ok(self.write(&mut inner, t, key, "MODIFIED", obj))
    }

    /// Deletes an object; with finalizers it only gets a deletionTimestamp. `preconditions`
    /// (`uid`, `resourceVersion` of DeleteOptions) must match the stored object.
    pub fn delete(
        &self,
        t: &ResourceType,
        namespace: &str,
        name: &str,
        preconditions: &Value,
        opts: Write,
    ) -> Result<Arc<Value>, ApiError> {
        self.delete_with(
            t,
            namespace,
            name,
            preconditions,
            opts,
            &Deletion::default(),
        )
    }

    /// [`Store::delete`] with the extra behaviour of `deletion` (graceful pods, foreground and
    /// orphan propagation, terminating namespaces).
    pub fn delete_with(
        &self,
        t: &ResourceType,
        namespace: &str,
        name: &str,
        preconditions: &Value,
        opts: Write,
        deletion: &Deletion,
    ) -> Result<Arc<Value>, ApiError> {
        let mut inner = self.lock();
        let key = object_key(t, namespace, name);
        let mut obj = inner
            .objects
            .get(&key)
            .map(|v| Value::clone(v))
            .ok_or_else(|| ApiError::not_found(t, name))?;
        let stored = |field: &str| {
            obj.pointer(&format!("/metadata/{field}"))
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string()
        };
        if let Some(uid) = preconditions.get("uid").and_then(Value::as_str)
            && uid != stored("uid")
        {
            return Err(ApiError::precondition_failed(
                t,
                name,
                format!(
                    "Precondition failed: UID in precondition: {uid}, UID in object meta: {}",
                    stored("uid")
                ),
            ));
        }
        if let Some(rv) = preconditions.get("resourceVersion").and_then(Value::as_str)
            && rv != stored("resourceVersion")
        {
            return Err(ApiError::precondition_failed(
                t,
                name,
                format!(
                    "Precondition failed: ResourceVersion in precondition: {rv}, ResourceVersion in object meta: {}",
                    stored("resourceVersion")
                ),
            ));
        }
        if opts.dry_run {
            return Ok(Arc::new(obj));
        }
        let deferred = !deletion.add_finalizers.is_empty()
            || deletion.grace_seconds.is_some_and(|g| g > 0)
            || deletion.terminate_namespace;
        if deferred {
            return Ok(self.mark_deleting(&mut inner, t, key, obj, deletion));
        }
        if obj.pointer("/metadata/deletionTimestamp").is_some()
            && let Some(m) = obj.get_mut("metadata").and_then(Value::as_object_mut)
        {
            // The final delete of a graceful one: once finalizers are gone it goes.
            m.insert("deletionGracePeriodSeconds".into(), json!(0));
        }
        let has_finalizers = obj
            .pointer("/metadata/finalizers")
            .and_then(Value::as_array)
            .is_some_and(|f| !f.is_empty());
        inner.rv += 1;
        obj["metadata"]["resourceVersion"] = json!(inner.rv.to_string());
        if has_finalizers {
            let grace_changed = obj.pointer("/metadata/deletionGracePeriodSeconds")
                != inner
                    .objects
                    .get(&key)
                    .and_then(|o| o.pointer("/metadata/deletionGracePeriodSeconds"));
            if obj.pointer("/metadata/deletionTimestamp").is_none() || grace_changed {
                if obj.pointer("/metadata/deletionTimestamp").is_none() {
                    obj["metadata"]["deletionTimestamp"] = json!(now());
                }
                return Ok(self.write(&mut inner, t, key, "MODIFIED", obj));
            }
            return Ok(Arc::new(obj));
        }
        inner.objects.remove(&key);
        if t.group.is_empty() && t.plural == "namespaces" {
            // What lived in the namespace goes with it.
            let contents: Vec<Key> = inner
                .objects
                .keys()
                .filter(|(_, ns, _)| ns == name)
                .cloned()
                .collect();
            for k in contents {
                if let Some(gone) = inner.objects.remove(&k) {
                    inner.rv += 1;
                    let mut gone = Arc::unwrap_or_clone(gone);
                    gone["metadata"]["resourceVersion"] = json!(inner.rv.to_string());
                    self.record_key(&mut inner, k.0.clone(), &k.1, "DELETED", Arc::new(gone));
                }
            }
            obj["metadata"]["resourceVersion"] = json!(inner.rv.to_string());
        }
        if t.group == "apiextensions.k8s.io" && t.plural == "customresourcedefinitions" {
            // Its custom objects go with it (without watch events, unlike the real server).
            unserve_crd(&mut inner, &obj);
            let prefix = format!(
                "{}/{}",
                obj.pointer("/spec/group")
                    .and_then(Value::as_str)
                    .unwrap_or_default(),
                obj.pointer("/spec/names/plural")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
            );
            inner.objects.retain(|(k, _, _), _| *k != prefix);
        }
        let gone = Arc::new(obj);
        self.record(&mut inner, t, &key.1, "DELETED", gone.clone());
        Ok(gone)
    }
}

impl Store {
    /// Gives `obj` a deletionTimestamp (and the finalizers, grace period or Terminating phase
    /// `deletion` asks for) and keeps it; a repeated request only shortens the grace period.
    fn mark_deleting(
        &self,
        inner: &mut Inner,
        t: &ResourceType,
        key: Key,
        mut obj: Value,
        deletion: &Deletion,
    ) -> Arc<Value> {
        let Some(meta) = obj.get_mut("metadata").and_then(Value::as_object_mut) else {
            return Arc::new(obj);
        };
        let already = meta.contains_key("deletionTimestamp");
        if !already {
            meta.insert("deletionTimestamp".into(), json!(now()));
        }
        let grace = deletion.grace_seconds.unwrap_or(0);
        let current_grace = meta
            .get("deletionGracePeriodSeconds")
            .and_then(Value::as_i64);
        if current_grace.is_none_or(|g| grace < g) {
            meta.insert("deletionGracePeriodSeconds".into(), json!(grace));
        }
        if !deletion.add_finalizers.is_empty() {
            let finalizers = meta.entry("finalizers").or_insert_with(|| json!([]));
            if let Some(list) = finalizers.as_array_mut() {
                for f in &deletion.add_finalizers {
                    if !list.iter().any(|x| x == f) {
                        list.push(json!(f));
                    }
                }
            }
        }
        if deletion.terminate_namespace {
            obj["spec"]["finalizers"] = json!(["kubernetes"]);
            obj["status"]["phase"] = json!("Terminating");
        }
        // `obj` is a copy of the stored object: compare with that rather than keep another.
        if let Some(stored) = inner.objects.get(&key)
            && **stored == obj
        {
            return stored.clone();
        }
        inner.rv += 1;
        obj["metadata"]["resourceVersion"] = json!(inner.rv.to_string());
        self.write(inner, t, key, "MODIFIED", obj)
    }

    /// Whether `namespace` exists and is being deleted, so nothing new may be created in it.
    pub fn namespace_terminating(&self, namespace: &str) -> bool {
        let inner = self.lock();
        inner
            .objects
            .get(&(
                "/namespaces".to_string(),
                String::new(),
                namespace.to_string(),
            ))
            .is_some_and(|ns| ns.pointer("/metadata/deletionTimestamp").is_some())
    }
}

/// Serves the resource types a CRD declares, replacing what it served before.
fn serve_crd(inner: &mut Inner, crd: &Value) -> Result<(), ApiError> {
    let served = registry::from_crd(crd).map_err(ApiError::bad_request)?;
    unserve_crd(inner, crd);
    inner.types.extend(served);
    Ok(())
}

/// Stops serving a deleted CRD's types and drops their objects, as the real server does.
fn unserve_crd(inner: &mut Inner, crd: &Value) {
    let group = crd
        .pointer("/spec/group")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let plural = crd
        .pointer("/spec/names/plural")
        .and_then(Value::as_str)
        .unwrap_or_default();
    inner
        .types
        .retain(|t| !(t.group == group && t.plural == plural));
}

/// The entry of `spec.versions` of the CRD that serves `t`.
fn crd_version_in<'a>(inner: &'a Inner, t: &ResourceType) -> Option<&'a Value> {
    const CRDS: &str = "apiextensions.k8s.io/customresourcedefinitions";
    if registry::is_builtin(t) {
        return None;
    }
    inner
        .objects
        .range((CRDS.to_string(), String::new(), String::new())..)
        .take_while(|((k, _, _), _)| k == CRDS)
        .map(|(_, crd)| crd)
        .find(|crd| {
            crd.pointer("/spec/group").and_then(Value::as_str) == Some(t.group.as_str())
                && crd.pointer("/spec/names/plural").and_then(Value::as_str)
                    == Some(t.plural.as_str())
        })
        .and_then(|crd| {
            crd.pointer("/spec/versions")?
                .as_array()?
                .iter()
                .find(|v| v.get("name").and_then(Value::as_str) == Some(t.version.as_str()))
        })
}

/// Applies the CRD schema of `t` (if it is a custom resource) to `obj`: defaults, pruning and
/// validation, with errors as the real server words them.
fn apply_schema(
    inner: &Inner,
    t: &ResourceType,
    name: &str,
    obj: &mut Value,
    strict: bool,
) -> Result<(), ApiError> {
    // Borrowed from the stored CRD: the store is locked for the whole write anyway.
    let Some(schema) = crd_version_in(inner, t).and_then(|v| v.pointer("/schema/openAPIV3Schema"))
    else {
        return Ok(());
    };
    match crate::schema::apply(obj, schema, strict) {
        Ok(()) => Ok(()),
        Err(SchemaError::Invalid(errors)) => Err(ApiError::invalid(t, name, errors)),
        Err(SchemaError::Unknown(paths)) => {
            let fields: Vec<String> = paths
                .iter()
                .map(|p| format!("unknown field \"{p}\""))
                .collect();
            Err(ApiError::bad_request(format!(
                "{kind} in version \"{version}\" cannot be handled as a {kind}: strict decoding error: {}",
                fields.join(", "),
                kind = t.kind,
                version = t.version,
            )))
        }
    }
}

/// Whether `a` and `b` agree in everything but metadata (without a status subresource, any
/// change there is a new generation), compared in place rather than on stripped copies.
fn same_but_metadata(a: &Value, b: &Value) -> bool {
    match (a.as_object(), b.as_object()) {
        (Some(a), Some(b)) => {
            let rest = |m: &'_ Map<String, Value>| m.keys().filter(|k| *k != "metadata").count();
            rest(a) == rest(b)
                && a.iter()
                    .filter(|(k, _)| *k != "metadata")
                    .all(|(k, v)| b.get(k) == Some(v))
        }
        _ => a == b,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pods(store: &Store) -> ResourceType {
        store
            .find_type("", "v1", "pods")
            .unwrap_or_else(|| unreachable!("pods are built in"))
    }

    fn pod(name: &str, owners: &[&str]) -> Value {
        let refs: Vec<Value> = owners
            .iter()
            .map(|u| json!({"apiVersion": "batch/v1", "kind": "Job", "name": "j", "uid": u}))
            .collect();
        json!({"metadata": {"name": name, "ownerReferences": refs},
            "spec": {"containers": [{"name": "c", "image": "i"}]}})
    }

    fn names(objects: &[Value]) -> Vec<&str> {
        objects
            .iter()
            .map(|o| o["metadata"]["name"].as_str().unwrap_or_default())
            .collect()
    }

    /// A store holding the namespaces `names`.
    fn with_namespaces(names: &[&str]) -> Result<Store, ApiError> {
        let store = Store::default();
        let namespaces = store
            .find_type("", "v1", "namespaces")
            .unwrap_or_else(|| unreachable!("namespaces are built in"));
        for name in names {
            store.create(
                &namespaces,
                "",
                json!({"metadata": {"name": name}}),
                Write::default(),
            )?;
        }
        Ok(store)
    }

    #[test]
    fn pages_walk_the_keys_after_the_continue_point() -> Result<(), ApiError> {
        let store = with_namespaces(&["a", "b", "c"])?;
        let t = pods(&store);
        for (ns, name) in [
            ("a", "p1"),
            ("a", "p2"),
            ("b", "p1"),
            ("b", "p3"),
            ("c", "p2"),
        ] {
            store.create(&t, ns, pod(name, &[]), Write::default())?;
        }
        let everything = Selector::default();
        let page = |ns, labels: &Selector, after, limit| {
            let page = store.page(&t, ns, labels, &everything, after, limit);
            let names: Vec<String> = page
                .items
                .iter()
                .map(|o| format!("{}/{}", o["metadata"]["namespace"], o["metadata"]["name"]))
                .map(|n| n.replace('"', ""))
                .collect();
            (names, page.remaining)
        };
        assert_eq!(
            page("", &everything, None, Some(2)),
            (vec!["a/p1".into(), "a/p2".into()], 3)
        );
        assert_eq!(
            page("", &everything, Some(("a", "p2")), Some(2)),
            (vec!["b/p1".into(), "b/p3".into()], 1)
        );
        assert_eq!(
            page("", &everything, Some(("b", "p3")), Some(2)),
            (vec!["c/p2".into()], 0)
        );
        // A continue point that is not stored still resumes after where it would sort.
        assert_eq!(
            page("", &everything, Some(("b", "p2")), None),
            (vec!["b/p3".into(), "c/p2".into()], 0)
        );
        // In one namespace, a continue point before it starts at its beginning.
        assert_eq!(
            page("b", &everything, Some(("a", "zz")), Some(1)),
            (vec!["b/p1".into()], 1)
        );
        assert_eq!(
            page("b", &everything, Some(("c", "")), Some(1)),
            (vec![], 0)
        );
        // Selectors count only what matches towards the page and what remains.
        let p1 = Selector::parse("metadata.name=p1").map_err(ApiError::bad_request)?;
        let page_fields = store.page(&t, "", &everything, &p1, None, Some(1));
        assert_eq!((page_fields.items.len(), page_fields.remaining), (1, 1));
        assert_eq!(page("", &p1, None, None), (vec![], 0));
        Ok(())
    }

    #[test]
    fn writes_without_changes_keep_the_version() -> Result<(), ApiError> {
        let store = with_namespaces(&["a"])?;
        let t = pods(&store);
        let created = store.create(&t, "a", pod("p", &[]), Write::default())?;
        let same = store.update(
            &t,
            "a",
            "p",
            Value::clone(&created),
            false,
            Write::default(),
        )?;
        assert_eq!(same, created);
        let mut labelled = Value::clone(&created);
        labelled["metadata"]["labels"] = json!({"x": "y"});
        let relabelled = store.update(&t, "a", "p", labelled, false, Write::default())?;
        assert_ne!(
            relabelled["metadata"]["resourceVersion"],
            created["metadata"]["resourceVersion"]
        );
        assert_eq!(relabelled["metadata"]["generation"], 1);
        let mut changed = Value::clone(&relabelled);
        changed["spec"]["nodeName"] = json!("n");
        let changed = store.update(&t, "a", "p", changed, false, Write::default())?;
        assert_eq!(changed["metadata"]["generation"], 2);

        // Without a status subresource, anything but metadata is the spec.
        let maps = store
            .find_type("", "v1", "configmaps")
            .unwrap_or_else(|| unreachable!("configmaps are built in"));
        let cm = store.create(
            &maps,
            "a",
            json!({"metadata": {"name": "c"}, "data": {"k": "v"}}),
            Write::default(),
        )?;
        assert_eq!(
            store.update(&maps, "a", "c", Value::clone(&cm), false, Write::default())?,
            cm
        );
        let mut labelled = Value::clone(&cm);
        labelled["metadata"]["labels"] = json!({"x": "y"});
        let labelled = store.update(&maps, "a", "c", labelled, false, Write::default())?;
        assert_eq!(labelled["metadata"]["generation"], 1);
        let mut more = Value::clone(&labelled);
        more["binaryData"] = json!({});
        let more = store.update(&maps, "a", "c", more, false, Write::default())?;
        assert_eq!(more["metadata"]["generation"], 2);
        Ok(())
    }

    #[test]
    fn the_owner_index_follows_every_write() -> Result<(), ApiError> {
        let store = with_namespaces(&["a", "b"])?;
        let t = pods(&store);
        let all = |_: &Value| true;
        store.create(&t, "a", pod("p2", &["u1"]), Write::default())?;
        store.create(&t, "a", pod("p1", &["u1", "u2"]), Write::default())?;
        store.create(&t, "b", pod("p3", &["u1"]), Write::default())?;
        store.create(&t, "a", pod("p4", &[]), Write::default())?;
        // Key order, filtered by namespace.
        assert_eq!(
            names(&store.dependents(&t, "", "u1", all)),
            ["p1", "p2", "p3"]
        );
        assert_eq!(names(&store.dependents(&t, "a", "u1", all)), ["p1", "p2"]);
        assert_eq!(names(&store.dependents(&t, "a", "u2", all)), ["p1"]);
        assert!(store.dependents(&t, "a", "u3", all).is_empty());

        // An update that changes the owners moves the object in the index.
        store.update(&t, "a", "p2", pod("p2", &["u3"]), false, Write::default())?;
        assert_eq!(names(&store.dependents(&t, "a", "u1", all)), ["p1"]);
        assert_eq!(names(&store.dependents(&t, "a", "u3", all)), ["p2"]);

        // Deletes leave it, whether of the object or of its namespace.
        store.delete(&t, "a", "p1", &Value::Null, Write::default())?;
        assert!(store.dependents(&t, "a", "u2", all).is_empty());
        let namespaces = store
            .find_type("", "v1", "namespaces")
            .unwrap_or_else(|| unreachable!("namespaces are built in"));
        store.delete(&namespaces, "", "b", &Value::Null, Write::default())?;
        assert!(store.dependents(&t, "", "u1", all).is_empty());
        assert!(store.lock().objects.dependents.keys().all(|u| u == "u3"));
        Ok(())
    }
}
