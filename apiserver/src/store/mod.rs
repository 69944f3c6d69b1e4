//! In-memory object storage with one monotonically increasing resourceVersion, optimistic
//! concurrency, generations, finalizers and a bounded event history for watches, plus an
//! index of dependents by owner uid so controllers never scan every object for them.

mod crd;
mod events;
mod objects;

use std::ops::Bound;
use std::sync::{Arc, Mutex};

use serde_json::{Map, Value, json};
use tokio::sync::broadcast;

use events::History;
pub use events::{Change, Event, Subscription};
use objects::{Key, Objects, object_key};
pub use objects::{owner_uids, type_key};

use crate::error::ApiError;
use crate::lock::lock;
use crate::registry::{self, ResourceType};
use crate::selector::Selector;
use crate::time::now;

struct Inner {
    rv: u64,
    types: Vec<ResourceType>,
    objects: Objects,
    history: History,
}

/// The server's state.
pub struct Store {
    inner: Mutex<Inner>,
    events: broadcast::Sender<Event>,
    /// Whether claims and volumes get their protection finalizers at create, as the
    /// `StorageObjectInUseProtection` admission plugin adds them: only while the storage
    /// controller that removes them runs.
    protect_storage: std::sync::atomic::AtomicBool,
}

/// A page of a list (see [`Store::page`]).
#[derive(Debug)]
pub struct Page {
    /// The page's objects, in (namespace, name) order.
    pub items: Vec<Arc<Value>>,
    /// Whether more objects match after the page.
    pub more: bool,
    /// How many more objects there are after the page, when that is known: only for lists
    /// without selectors, as the real server reports `remainingItemCount`.
    pub remaining: Option<usize>,
    /// The store's resourceVersion when the page was taken.
    pub rv: u64,
}

/// How a write is carried out.
#[derive(Clone, Debug, Default)]
pub struct Write {
    /// Refuse fields a CRD schema does not know (`fieldValidation=Strict`) instead of
    /// dropping them.
    pub strict: bool,
    /// Check and return the result without storing it (`dryRun=All`).
    pub dry_run: bool,
    /// The field manager of a create, update or patch, recorded in managedFields as an
    /// `Update`; `None` records nothing (server-side apply, and the embedded controllers).
    pub manager: Option<String>,
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

/// The first resourceVersion of a new store: the microseconds since the Unix epoch, so a
/// server started again (a restarted `charon dev`) never issues a version an earlier one did.
/// The history starts compacted there, as etcd's restore with `--bump-revision` and
/// `--mark-compacted` leaves it: clients resuming from an earlier server's version get
/// 410 Gone and relist, rather than waiting for a version the new server may issue only much
/// later, having missed everything before it. Far below 2^53, so clients that parse versions
/// as JSON numbers still read them exactly.
fn first_rv() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(1, |d| {
            u64::try_from(d.as_micros()).unwrap_or(u64::MAX >> 11)
        })
        .max(1)
}

impl Default for Store {
    fn default() -> Self {
        let (events, _) = broadcast::channel(4096);
        let rv = first_rv();
        let mut history = History::default();
        history.compact(rv);
        Store {
            inner: Mutex::new(Inner {
                rv,
                types: registry::builtins(),
                objects: Objects::default(),
                history,
            }),
            events,
            protect_storage: std::sync::atomic::AtomicBool::new(false),
        }
    }
}

fn name_of(obj: &Value) -> String {
    obj.pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string()
}

impl Store {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        lock(&self.inner)
    }

    /// Turns on the storage protection finalizers (see [`Store::protect_storage`]).
    pub fn protect_storage(&self) {
        self.protect_storage
            .store(true, std::sync::atomic::Ordering::Relaxed);
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
        crd::version_of(&self.lock().objects, t).cloned()
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
        inner.history.push(event.clone());
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
        self.lock().history.since(&type_key(t), namespace, rv)
    }

    /// Waits until the store has issued `rv`, for at most `timeout`, as the real server's
    /// watch cache waits to catch up with a version newer than its own; then 504 Timeout
    /// (`Too large resource version`), which tells clients to list afresh.
    pub async fn wait_for_rv(&self, rv: u64, timeout: std::time::Duration) -> Result<(), ApiError> {
        // Subscribe before reading the version so no write falls between the two.
        let mut changes = self.events.subscribe();
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let current = self.current_rv();
            if current >= rv {
                return Ok(());
            }
            match tokio::time::timeout_at(deadline, changes.recv()).await {
                Ok(Ok(_) | Err(broadcast::error::RecvError::Lagged(_))) => {}
                Ok(Err(broadcast::error::RecvError::Closed)) | Err(_) => {
                    return Err(ApiError::resource_version_too_large(rv, self.current_rv()));
                }
            }
        }
    }

    /// Forgets every event so far: clients resuming from an older version get 410 Gone.
    pub fn compact(&self) {
        let mut inner = self.lock();
        let rv = inner.rv;
        inner.history.compact(rv);
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
                    more: false,
                    remaining: Some(0),
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
        let range = inner.objects.range((start, Bound::Excluded(end)));
        let limit = limit.unwrap_or(usize::MAX);
        if labels.is_empty() && fields.is_empty() {
            // Everything in the range: the page, then a count of what is left.
            let mut all = range.map(|(_, v)| v);
            let items: Vec<Arc<Value>> = all.by_ref().take(limit).cloned().collect();
            let remaining = all.count();
            return Page {
                items,
                more: remaining > 0,
                remaining: Some(remaining),
                rv: inner.rv,
            };
        }
        // Matching selectors against every object of a large collection takes a while:
        // done outside the lock, on the objects as they were, so writes are not held up.
        let candidates: Vec<Arc<Value>> = range.map(|(_, v)| v.clone()).collect();
        let rv = inner.rv;
        drop(inner);
        let mut matching = candidates
            .into_iter()
            .filter(|v| labels.matches_labels(v) && fields.matches_fields(v));
        let items: Vec<Arc<Value>> = matching.by_ref().take(limit).collect();
        let more = matching.next().is_some();
        Page {
            items,
            more,
            remaining: None,
            rv,
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
        for ((tk, _, _), obj) in inner.objects.iter() {
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
        crate::metadata::validate(t, &name, &obj)?;
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
        crd::apply_schema(&inner.objects, t, &name, &mut obj, opts.strict)?;
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
        crate::storage::decodable(t, &obj)?;
        crate::builtin::prepare_create(t, &mut obj)
            .and_then(|()| crate::workloads::prepare_create(t, &mut obj))
            .map_err(|errors| ApiError::invalid(t, &name, errors))?;
        if t.group.is_empty()
            && matches!(
                t.plural.as_str(),
                "persistentvolumeclaims" | "persistentvolumes"
            )
        {
            let protect = self
                .protect_storage
                .load(std::sync::atomic::Ordering::Relaxed);
            if t.plural == "persistentvolumes" {
                crate::storage::admit_volume(&mut obj, protect);
            } else {
                let key = "storage.k8s.io/storageclasses".to_string();
                let classes: Vec<Arc<Value>> = inner
                    .objects
                    .range((key.clone(), String::new(), String::new())..)
                    .take_while(|((k, _, _), _)| *k == key)
                    .map(|(_, v)| v.clone())
                    .collect();
                crate::storage::admit_claim(&classes, &mut obj, protect);
            }
        }
        if t.plural == "secrets" && t.group.is_empty() && obj.get("type").is_none() {
            obj["type"] = json!("Opaque");
        }
        if t.plural == "namespaces" && t.group.is_empty() {
            obj["status"] = json!({"phase": "Active"});
        }
        if let Some(manager) = &opts.manager {
            crate::apply::record_update(None, &mut obj, manager, "", &t.api_version());
        }
        check_size(&obj)?;
        if opts.dry_run {
            if let Some(m) = obj.get_mut("metadata").and_then(Value::as_object_mut) {
                m.remove("resourceVersion");
            }
            return Ok(Arc::new(obj));
        }
        if t.plural == "customresourcedefinitions" {
            crd::register(&mut inner.types, &mut obj)?;
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
        crate::metadata::validate(t, name, &obj)?;
        if !status_only {
            crate::storage::decodable(t, &obj)?;
            let errors = crate::builtin::validate_update(t, &current, &obj);
            if !errors.is_empty() {
                return Err(ApiError::invalid(t, name, errors));
            }
            if t.group.is_empty() && t.plural == "persistentvolumeclaims" {
                let class = crate::storage::claim_class(&current).to_string();
                let class = inner
                    .objects
                    .get(&(
                        "storage.k8s.io/storageclasses".to_string(),
                        String::new(),
                        class,
                    ))
                    .cloned();
                crate::storage::admit_resize(t, name, &current, &obj, class.as_deref())?;
            }
        }
        crd::apply_schema(&inner.objects, t, name, &mut obj, opts.strict)?;
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
        if let Some(manager) = &opts.manager {
            // The object with its final metadata, lent to the bookkeeping and taken back.
            obj["metadata"] = Value::Object(std::mem::take(&mut meta));
            let subresource = if status_only { "status" } else { "" };
            crate::apply::record_update(
                Some(&current),
                &mut obj,
                manager,
                subresource,
                &t.api_version(),
            );
            if let Some(Value::Object(m)) = obj.get_mut("metadata").map(Value::take) {
                meta = m;
            }
        }
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
        check_size(&obj)?;
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
            crd::serve(&mut inner.types, &obj)?;
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
        for (field, shown) in [("uid", "UID"), ("resourceVersion", "ResourceVersion")] {
            if let Some(wanted) = preconditions.get(field).and_then(Value::as_str)
                && wanted != stored(field)
            {
                return Err(ApiError::precondition_failed(
                    t,
                    name,
                    format!(
                        "Precondition failed: {shown} in precondition: {wanted}, {shown} in object meta: {}",
                        stored(field)
                    ),
                ));
            }
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
            crd::unserve(&mut inner.types, &obj);
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

/// The largest object etcd stores (its default `--max-request-bytes`, 1.5 MiB), measured
/// here as JSON: a larger create or update fails as the real server's does.
pub const MAX_OBJECT_BYTES: usize = 1536 * 1024;

/// Refuses an object too large to store (413, etcd's message).
fn check_size(obj: &Value) -> Result<(), ApiError> {
    /// Counts bytes written, so the size costs no copy.
    struct Count(usize);
    impl std::io::Write for Count {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0 += buf.len();
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut count = Count(0);
    // Writing a Value into a counter cannot fail.
    let _ = serde_json::to_writer(&mut count, obj);
    if count.0 > MAX_OBJECT_BYTES {
        return Err(ApiError::too_large("etcdserver: request is too large"));
    }
    Ok(())
}

#[cfg(test)]
mod tests;
