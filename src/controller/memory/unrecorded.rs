//! Attempts whose Job exists but whose start is not on record yet: the status this controller
//! owes each instance's status subresource. Recording an attempt when it finishes (or after a
//! few seconds) rather than before the Job saves up to two status writes per attempt. It is
//! safe to lose: the Job's name comes from the execution number, so a restarted controller
//! plans the same name again and finds the Job instead of creating a second one.

use std::collections::HashMap;
use std::sync::Mutex;

use chrono::{DateTime, Utc};

use super::{Key, key, lock};
use charon_core::resources::{WorkflowInstance, WorkflowInstanceStatus};

/// The statuses owed, one per instance.
#[derive(Default)]
pub struct Unrecorded(Mutex<HashMap<Key<WorkflowInstance>, Owed>>);

/// A status not yet written.
#[derive(Clone, Debug, PartialEq)]
pub struct Owed {
    /// The instance's uid: an instance deleted and created again under the name owes nothing.
    pub uid: String,
    /// The status to write (boxed: the map holds one entry per attempt starting in a burst,
    /// and its table would otherwise reserve a whole status for every spare slot).
    pub status: Box<WorkflowInstanceStatus>,
    /// When the Job was created, by the controller's clock.
    pub since: DateTime<Utc>,
    /// Until when the attempt may go unrecorded, fixed when the Job was created: an attempt
    /// started in a burst is held back for the whole burst's allowance even once the
    /// operator is no longer busy, so each run of the burst still costs one status write.
    pub by: DateTime<Utc>,
}

impl Unrecorded {
    /// What is owed to this instance, as long as its stored status has not moved past it.
    pub fn owed(&self, instance: &WorkflowInstance) -> Option<Owed> {
        let key = key(instance);
        let mut owed = lock(&self.0);
        let entry = owed.get(&key)?;
        let applies = instance.metadata.uid.as_deref() == Some(entry.uid.as_str())
            && instance.status.as_ref().is_none_or(|stored| {
                stored.execution < entry.status.execution && !stored.state.is_terminal()
            });
        if applies {
            Some(entry.clone())
        } else {
            owed.remove(&key);
            None
        }
    }

    /// Records the status owed to an instance.
    pub fn owe(
        &self,
        instance: &WorkflowInstance,
        status: WorkflowInstanceStatus,
        (since, by): (DateTime<Utc>, DateTime<Utc>),
    ) {
        if let Some(uid) = instance.metadata.uid.clone() {
            lock(&self.0).insert(
                key(instance),
                Owed {
                    uid,
                    status: Box::new(status),
                    since,
                    by,
                },
            );
        }
    }

    /// Forgets what was owed: written, or the instance is gone.
    pub fn settle(&self, instance: &WorkflowInstance) {
        lock(&self.0).remove(&key(instance));
    }
}

#[cfg(test)]
mod tests {
    use super::super::fixtures;
    use super::*;
    use charon_core::resources::InstanceState;

    #[test]
    fn an_owed_status_holds_until_the_stored_one_catches_up() {
        let mut instance = fixtures::instance("u1");
        let unrecorded = Unrecorded::default();
        assert_eq!(unrecorded.owed(&instance), None);
        let started = WorkflowInstanceStatus {
            state: InstanceState::Submitting,
            execution: 1,
            ..Default::default()
        };
        let at = DateTime::<Utc>::UNIX_EPOCH;
        unrecorded.owe(&instance, started.clone(), (at, at));
        let owed = unrecorded.owed(&instance).expect("owed");
        assert_eq!((*owed.status, owed.since), (started.clone(), at));

        // An instance created again under the name owes nothing.
        let again = fixtures::instance("u2");
        assert_eq!(unrecorded.owed(&again), None);
        unrecorded.owe(&instance, started.clone(), (at, at));

        // Still queued on record: the owed status stands.
        instance.status = Some(WorkflowInstanceStatus::default());
        assert!(unrecorded.owed(&instance).is_some());
        // Recorded (by us or another replica): forgotten.
        instance.status = Some(started.clone());
        assert_eq!(unrecorded.owed(&instance), None);
        assert_eq!(unrecorded.owed(&again), None, "and stays forgotten");

        unrecorded.owe(&instance, started, (at, at));
        unrecorded.settle(&instance);
        instance.status = None;
        assert_eq!(unrecorded.owed(&instance), None, "settled");
    }
}
