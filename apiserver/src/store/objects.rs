//! The stored objects, by key, with the index of dependents by owner uid.

use std::collections::{BTreeMap, BTreeSet, HashMap, btree_map};
use std::ops::RangeBounds;
use std::sync::Arc;

use serde_json::Value;

use crate::registry::ResourceType;

/// `group/plural`, the key of a type in the store.
pub fn type_key(t: &ResourceType) -> String {
    format!("{}/{}", t.group, t.plural)
}

/// Where an object of `t` lives: cluster-scoped objects ignore the namespace.
pub fn object_key(t: &ResourceType, namespace: &str, name: &str) -> Key {
    let namespace = if t.namespaced { namespace } else { "" };
    (type_key(t), namespace.to_string(), name.to_string())
}

/// Where an object is stored: (type key, namespace, name).
pub type Key = (String, String, String);

/// The uids an object's ownerReferences name (empty ones left out).
pub fn owner_uids(obj: &Value) -> Vec<&str> {
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
pub struct Objects {
    by_key: BTreeMap<Key, Arc<Value>>,
    /// The keys of each owner's dependents, by owner uid.
    pub(super) dependents: HashMap<String, BTreeSet<Key>>,
}

impl Objects {
    /// Every object with its key, in key order.
    pub fn iter(&self) -> btree_map::Iter<'_, Key, Arc<Value>> {
        self.by_key.iter()
    }

    /// The object at `key`.
    pub fn get(&self, key: &Key) -> Option<&Arc<Value>> {
        self.by_key.get(key)
    }

    /// Whether an object is at `key`.
    pub fn contains_key(&self, key: &Key) -> bool {
        self.by_key.contains_key(key)
    }

    /// The objects whose keys are in `range`, in key order.
    pub fn range<R: RangeBounds<Key>>(&self, range: R) -> btree_map::Range<'_, Key, Arc<Value>> {
        self.by_key.range(range)
    }

    /// Every key, in order.
    pub fn keys(&self) -> btree_map::Keys<'_, Key, Arc<Value>> {
        self.by_key.keys()
    }

    /// Stores `obj` at `key`, re-indexing its owners when they changed; the object it replaces.
    pub fn insert(&mut self, key: Key, obj: Arc<Value>) -> Option<Arc<Value>> {
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

    /// Removes the object at `key` and its index entries.
    pub fn remove(&mut self, key: &Key) -> Option<Arc<Value>> {
        let old = self.by_key.remove(key)?;
        unindex(&mut self.dependents, key, &old);
        Some(old)
    }

    /// Removes every object for which `keep` is false.
    pub fn retain(&mut self, mut keep: impl FnMut(&Key, &Value) -> bool) {
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
