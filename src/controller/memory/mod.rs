//! What the operator remembers between reconciles, beside the caches: its own recent writes,
//! attempts not yet on record, held-back workflow status, the trigger burst, how busy it is,
//! which instances were last seen finished, and the concurrency ledger.
//!
//! All of it is an optimisation or a guard against a stale cache, never the record: status
//! is. Losing it (a restart) costs at most a few extra writes or an AlreadyExists. Two rules
//! hold for every mechanism here:
//!
//! - **Deleted instances are forgotten**: [`Memory::forget`] is called for every instance
//!   the watch reports deleted, and each mechanism drops what it kept about it.
//! - **A poisoned lock is recovered** ([`lock`], [`read`], [`write`]): each critical section
//!   is a single map update that cannot be left half done, so the data behind a lock whose
//!   holder panicked is still consistent, and one panicking reconcile must not stop the
//!   others from scheduling.

mod admission;
mod burst;
mod decisions;
mod dependents;
mod finished;
mod held;
pub mod pace;
mod unrecorded;
mod writes;

use std::sync::{Arc, Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};

use charon_core::resources::WorkflowInstance;

pub use admission::{Admission, Entries, Reservation, shared_key};
pub use burst::TriggerBurst;
pub use decisions::Decisions;
pub use dependents::Dependents;
pub use finished::{FinishedSeen, finished_flips};
pub use held::Held;
pub use pace::Pace;
pub use unrecorded::{Owed, Unrecorded};
pub use writes::Writes;

/// Everything remembered between reconciles (see the module documentation).
#[derive(Default)]
pub struct Memory {
    /// This controller's last write to each object, until the cache shows it.
    pub writes: Writes,
    /// Attempts started but not yet recorded.
    pub unrecorded: Unrecorded,
    /// Workflows holding back their status write after a trigger.
    pub held: Held,
    /// Whether workflows are busy creating instances.
    pub burst: Arc<TriggerBurst>,
    /// How busy the controller is starting and ending runs.
    pub pace: Pace,
    /// Whether each instance was last seen finished.
    pub finished: FinishedSeen,
    /// States decided for instances of workflows with a concurrency limit.
    pub admission: Admission,
    /// Which workflows depend on which.
    pub dependents: Dependents,
    /// Pool admission decisions, while they hold.
    pub decisions: Decisions,
}

impl Memory {
    /// Lets go of everything remembered about an instance that was deleted.
    pub fn forget(&self, instance: &WorkflowInstance) {
        self.writes.forget(&instance.metadata);
        self.unrecorded.settle(instance);
        self.finished.forget(instance);
        self.admission.forget(instance);
        // A deleted instance gives back what it held, or its place in line.
        self.decisions.capacity_changed();
    }
}

/// The key an object is remembered under: its namespace and name, as one string
/// (`namespace/name`; neither may hold a `/`). The maps here hold one entry per instance
/// in a burst: an `ObjectRef` would take six times the room inline and two strings more, and
/// `ObjectRef::from_obj` would copy the resource version and uid as well.
pub struct Key<K>(Box<str>, std::marker::PhantomData<fn() -> K>);

// By hand: derived, each would ask the same of `K`, which a key holds none of.
impl<K> PartialEq for Key<K> {
    fn eq(&self, other: &Self) -> bool {
        self.0 == other.0
    }
}

impl<K> Eq for Key<K> {}

impl<K> std::hash::Hash for Key<K> {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.0.hash(state);
    }
}

impl<K> std::fmt::Debug for Key<K> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// The key of `object` (see [`Key`]).
pub fn key<K: kube::Resource<DynamicType = ()>>(object: &K) -> Key<K> {
    let meta = object.meta();
    let name = meta.name.as_deref().unwrap_or_default();
    let joined = match meta.namespace.as_deref() {
        Some(namespace) => format!("{namespace}/{name}"),
        None => name.to_string(),
    };
    Key(joined.into_boxed_str(), std::marker::PhantomData)
}

/// Locks `mutex`, recovering it if a holder panicked (see the module documentation).
pub fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Read-locks `lock`, recovering it if a holder panicked.
pub fn read<T>(lock: &RwLock<T>) -> RwLockReadGuard<'_, T> {
    lock.read()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Write-locks `lock`, recovering it if a holder panicked.
pub fn write<T>(lock: &RwLock<T>) -> RwLockWriteGuard<'_, T> {
    lock.write()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[cfg(test)]
pub(crate) mod fixtures {
    use charon_core::resources::{Workflow, WorkflowInstance};

    /// An instance `w-1` of workflow `w` in namespace `ns` as stored, with `uid` and no
    /// status.
    pub fn instance(uid: &str) -> WorkflowInstance {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "w-1", "namespace": "ns", "uid": uid},
            "spec": {"workflow": "w", "parameter": "p", "logicalTime": "2024-01-01T00:00:00Z",
                "trigger": {"type": "natural", "id": "natural"}},
        }))
        .expect("an instance")
    }

    /// Workflow `w` in namespace `ns` with `uid`.
    pub fn workflow(uid: &str) -> Workflow {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "w", "namespace": "ns", "uid": uid},
            "spec": {"schedule": "@hourly", "template": {"image": "busybox"}},
        }))
        .expect("a workflow")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use charon_core::resources::{InstanceState, WorkflowInstanceStatus};

    #[test]
    fn keys_tell_namespaces_and_names_apart_and_ignore_versions() {
        let a = fixtures::instance("u1");
        let mut same = fixtures::instance("u2");
        same.metadata.resource_version = Some("9".into());
        assert_eq!(
            key(&a),
            key(&same),
            "uid and version are not part of the key"
        );
        let mut elsewhere = a.clone();
        elsewhere.metadata.namespace = Some("other".into());
        assert_ne!(key(&a), key(&elsewhere));
        let mut renamed = a.clone();
        renamed.metadata.name = Some("w-2".into());
        assert_ne!(key(&a), key(&renamed));
        assert_eq!(format!("{:?}", key(&a)), "ns/w-1");
    }

    #[test]
    fn a_deleted_instance_is_forgotten_by_every_mechanism() {
        let memory = Memory::default();
        let mut instance = fixtures::instance("u1");
        instance.metadata.resource_version = Some("5".into());
        memory.writes.wrote(&instance.metadata);
        memory.unrecorded.owe(
            &instance,
            WorkflowInstanceStatus {
                state: InstanceState::Submitting,
                execution: 1,
                ..Default::default()
            },
            (chrono::DateTime::UNIX_EPOCH, chrono::DateTime::UNIX_EPOCH),
        );
        assert!(memory.finished.flipped(&instance));
        memory
            .admission
            .reservation(&instance)
            .record(InstanceState::Running);

        memory.forget(&instance);

        let mut older = instance.clone();
        older.metadata.resource_version = Some("4".into());
        assert!(!memory.writes.stale(&older.metadata), "writes");
        assert_eq!(memory.unrecorded.owed(&instance), None, "unrecorded");
        assert!(memory.finished.flipped(&instance), "finished: seen anew");
        assert!(memory.admission.is_empty(), "admission ledger");
    }

    #[test]
    fn a_poisoned_lock_is_recovered() {
        let mutex = std::sync::Arc::new(Mutex::new(1));
        let poisoner = mutex.clone();
        let _ = std::thread::spawn(move || {
            let _guard = poisoner.lock();
            panic!("a reconcile panicked");
        })
        .join();
        assert!(mutex.is_poisoned());
        *lock(&mutex) += 1;
        assert_eq!(*lock(&mutex), 2);
    }
}
