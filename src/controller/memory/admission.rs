//! The concurrency ledger (SPEC §6): the states this controller decided for the instances of
//! workflows with a limit, fresher than the cache. Admission counts from it, so two instances
//! of one workflow reconciled at once cannot both take its last slot.
//!
//! Each workflow has a ledger of its own, locked only while a decision is computed and
//! recorded (no network call is made under it): instances of other workflows are never held
//! up. The decision is recorded as a [`Reservation`], which puts the instance's earlier state
//! back unless the reconcile goes ahead and [`Reservation::keep`]s it (a stale cache or a
//! failed call returns early: the slot must not stay taken by an attempt that never started).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use kube::runtime::reflector::ObjectRef;

use super::lock;
use charon_core::resources::{InstanceState, Workflow, WorkflowInstance};

/// One workflow's ledger: instance name → the state decided for it.
pub type Entries = HashMap<String, InstanceState>;

/// One workflow's ledger, and whether it was taken out of the map (emptied and forgotten):
/// whoever finds it retired after locking it looks the workflow up again.
#[derive(Default)]
struct Ledger {
    entries: Entries,
    retired: bool,
}

/// The ledgers of every workflow with a concurrency limit.
#[derive(Default)]
pub struct Admission(Mutex<HashMap<ObjectRef<Workflow>, Arc<Mutex<Ledger>>>>);

/// The ledger shared by every instance under pools or a Quota (SPEC §13): admission there
/// looks across workflows and namespaces, so its decisions are made one at a time. Its
/// entries are keyed by [`shared_key`].
fn shared() -> ObjectRef<Workflow> {
    ObjectRef::new("")
}

/// An instance's key in the shared ledger: `namespace/name`.
pub fn shared_key(namespace: &str, name: &str) -> String {
    format!("{namespace}/{name}")
}

fn shared_key_of(instance: &WorkflowInstance) -> String {
    shared_key(
        instance.metadata.namespace.as_deref().unwrap_or_default(),
        instance.metadata.name.as_deref().unwrap_or_default(),
    )
}

fn workflow_of(instance: &WorkflowInstance) -> ObjectRef<Workflow> {
    let workflow = ObjectRef::new(&instance.spec.workflow);
    match instance.metadata.namespace.as_deref() {
        Some(namespace) => workflow.within(namespace),
        None => workflow,
    }
}

impl Admission {
    /// Runs `f` on one workflow's entries under that workflow's lock alone. (The map is
    /// locked only to find the ledger; a ledger retired meanwhile is looked up again.)
    fn with_entries<T>(
        &self,
        workflow: &ObjectRef<Workflow>,
        f: impl FnOnce(&mut Entries) -> T,
    ) -> T {
        loop {
            let ledger = lock(&self.0).entry(workflow.clone()).or_default().clone();
            let mut ledger = lock(&ledger);
            if !ledger.retired {
                return f(&mut ledger.entries);
            }
        }
    }

    /// Runs `decide` on the entries of `instance`'s workflow, under its lock, and records
    /// the state it returns for the instance as a reservation.
    pub fn decide<T>(
        &self,
        instance: &WorkflowInstance,
        decide: impl FnOnce(&Entries) -> (T, InstanceState),
    ) -> (T, Reservation<'_>) {
        let name = instance.metadata.name.clone().unwrap_or_default();
        self.decide_in(workflow_of(instance), name, decide)
    }

    /// [`Admission::decide`] in the shared ledger.
    pub fn decide_shared<T>(
        &self,
        instance: &WorkflowInstance,
        decide: impl FnOnce(&Entries) -> (T, InstanceState),
    ) -> (T, Reservation<'_>) {
        self.decide_in(shared(), shared_key_of(instance), decide)
    }

    /// Reads the shared ledger under its lock.
    pub fn with_shared<T>(&self, f: impl FnOnce(&Entries) -> T) -> T {
        let ledger = lock(&self.0).get(&shared()).cloned();
        match ledger {
            Some(ledger) => f(&lock(&ledger).entries),
            None => f(&Entries::new()),
        }
    }

    fn decide_in<T>(
        &self,
        workflow: ObjectRef<Workflow>,
        name: String,
        decide: impl FnOnce(&Entries) -> (T, InstanceState),
    ) -> (T, Reservation<'_>) {
        let (out, before) = self.with_entries(&workflow, |entries| {
            let (out, state) = decide(entries);
            (out, entries.insert(name.clone(), state))
        });
        let reservation = Reservation {
            admission: self,
            workflow,
            name,
            before: Some(before),
        };
        (out, reservation)
    }

    /// A reservation for `instance` that records states without deciding anything: kept
    /// on the first [`Reservation::record`].
    pub fn reservation(&self, instance: &WorkflowInstance) -> Reservation<'_> {
        Reservation {
            admission: self,
            workflow: workflow_of(instance),
            name: instance.metadata.name.clone().unwrap_or_default(),
            before: None,
        }
    }

    /// [`Admission::reservation`] in the shared ledger.
    pub fn shared_reservation(&self, instance: &WorkflowInstance) -> Reservation<'_> {
        Reservation {
            admission: self,
            workflow: shared(),
            name: shared_key_of(instance),
            before: None,
        }
    }

    /// Forgets an instance that was deleted, and its workflow's ledger once it is empty.
    pub fn forget(&self, instance: &WorkflowInstance) {
        let name = instance.metadata.name.as_deref().unwrap_or_default();
        self.remove(&workflow_of(instance), name);
        self.remove(&shared(), &shared_key_of(instance));
    }

    /// Removes an instance's entry, and retires the workflow's ledger once it is empty.
    fn remove(&self, workflow: &ObjectRef<Workflow>, name: &str) {
        let mut ledgers = lock(&self.0);
        if let Some(ledger) = ledgers.get(workflow).cloned() {
            let mut ledger = lock(&ledger);
            ledger.entries.remove(name);
            if ledger.entries.is_empty() {
                ledger.retired = true;
                ledgers.remove(workflow);
            }
        }
    }

    /// Whether no state is remembered for any instance.
    pub fn is_empty(&self) -> bool {
        lock(&self.0).is_empty()
    }
}

/// A state recorded for an instance, put back as it was when dropped unless kept.
pub struct Reservation<'a> {
    admission: &'a Admission,
    workflow: ObjectRef<Workflow>,
    name: String,
    /// The entry before the reservation, to put back; `None` once kept.
    before: Option<Option<InstanceState>>,
}

impl Reservation<'_> {
    /// Records a later state for the instance, and keeps the reservation.
    pub fn record(mut self, state: InstanceState) {
        self.admission.with_entries(&self.workflow, |entries| {
            entries.insert(self.name.clone(), state)
        });
        self.before = None;
    }

    /// Keeps what was reserved.
    pub fn keep(mut self) {
        self.before = None;
    }
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        match self.before.take() {
            None => {}
            Some(Some(state)) => {
                self.admission.with_entries(&self.workflow, |entries| {
                    entries.insert(self.name.clone(), state)
                });
            }
            Some(None) => self.admission.remove(&self.workflow, &self.name),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::fixtures;
    use super::*;

    fn named(name: &str, workflow: &str) -> WorkflowInstance {
        let mut instance = fixtures::instance("u");
        instance.metadata.name = Some(name.into());
        instance.spec.workflow = workflow.into();
        instance
    }

    fn active(admission: &Admission, instance: &WorkflowInstance) -> usize {
        let (count, reservation) = admission.decide(instance, |ledger| {
            let count = ledger.values().filter(|s| s.is_active()).count();
            (count, InstanceState::Queued)
        });
        drop(reservation);
        count
    }

    #[test]
    fn a_reservation_is_put_back_unless_kept() {
        let admission = Admission::default();
        let (a, b) = (named("w-a", "w"), named("w-b", "w"));
        let ((), dropped) = admission.decide(&a, |_| ((), InstanceState::Prepare));
        assert_eq!(active(&admission, &b), 1, "reserved while held");
        drop(dropped);
        assert_eq!(active(&admission, &b), 0, "put back");
        let ((), kept) = admission.decide(&a, |_| ((), InstanceState::Prepare));
        kept.keep();
        assert_eq!(active(&admission, &b), 1, "kept");
        admission.reservation(&a).record(InstanceState::Done);
        assert_eq!(active(&admission, &b), 0, "recorded");
    }

    #[test]
    fn each_workflow_has_its_own_ledger_and_forgetting_empties_it() {
        let admission = Admission::default();
        let (a, other) = (named("w-a", "w"), named("v-a", "v"));
        admission.reservation(&a).record(InstanceState::Running);
        assert_eq!(active(&admission, &other), 0, "another workflow's slots");
        assert_eq!(active(&admission, &named("w-b", "w")), 1);
        admission.forget(&named("w-b", "w"));
        admission.forget(&a);
        assert!(admission.is_empty());
    }
}
