//! Workflows holding back their status write after a trigger (see the workflow reconciler):
//! since when, and which instances they created meanwhile.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::{Key, key, lock};
use charon_core::resources::Workflow;

/// The held-back status writes, one per workflow.
#[derive(Default)]
pub struct Held(Mutex<HashMap<Key<Workflow>, Hold>>);

/// One workflow's held-back status write.
struct Hold {
    /// The workflow's uid: a workflow created again under the name holds nothing.
    uid: String,
    since: Instant,
    /// Instances created while holding. Until the status (the trigger cursor) is written,
    /// every pass plans them again; this answers for those the cache does not show yet, so
    /// they are not created a second time only to get AlreadyExists.
    created: HashSet<String>,
}

impl Held {
    /// Runs `f` on the workflow's hold, if any; a hold left by an earlier workflow of the same
    /// name is dropped first. What `f` leaves in the option is kept.
    fn with<T>(&self, workflow: &Workflow, f: impl FnOnce(&mut Option<Hold>) -> T) -> T {
        let key = key(workflow);
        let uid = workflow.metadata.uid.as_deref().unwrap_or_default();
        let mut held = lock(&self.0);
        let mut hold = held.remove(&key).filter(|h| h.uid == uid);
        let out = f(&mut hold);
        if let Some(hold) = hold {
            held.insert(key, hold);
        }
        out
    }

    /// Records an instance created after a trigger, and starts holding unless already
    /// holding (the first trigger's time bounds the hold).
    pub fn created(&self, workflow: &Workflow, instance: &str) {
        let uid = workflow.metadata.uid.clone().unwrap_or_default();
        self.with(workflow, |hold| {
            hold.get_or_insert_with(|| Hold {
                uid,
                since: Instant::now(),
                created: HashSet::new(),
            })
            .created
            .insert(instance.to_string());
        });
    }

    /// Whether this workflow created the instance while holding.
    pub fn has_created(&self, workflow: &Workflow, instance: &str) -> bool {
        self.with(workflow, |hold| {
            hold.as_ref().is_some_and(|h| h.created.contains(instance))
        })
    }

    /// How much longer the hold may last, if it is held and `limit` has not passed.
    pub fn left(&self, workflow: &Workflow, limit: Duration) -> Option<Duration> {
        self.with(workflow, |hold| {
            limit
                .checked_sub(hold.as_ref()?.since.elapsed())
                .filter(|d| !d.is_zero())
        })
    }

    /// Stops holding: the status is written (or the workflow is going).
    pub fn release(&self, workflow: &Workflow) {
        self.with(workflow, |hold| *hold = None);
    }
}

#[cfg(test)]
mod tests {
    use super::super::fixtures::workflow;
    use super::*;

    #[test]
    fn a_held_status_remembers_what_was_created_for_that_workflow_only() {
        let (first, again) = (workflow("u1"), workflow("u2"));
        let held = Held::default();
        let limit = Duration::from_secs(10);
        assert_eq!(held.left(&first, limit), None, "nothing held yet");
        held.created(&first, "w-1");
        held.created(&first, "w-2");
        assert!(held.has_created(&first, "w-1") && held.has_created(&first, "w-2"));
        assert!(!held.has_created(&first, "w-3"));
        assert!(held.left(&first, limit).is_some_and(|left| left <= limit));
        assert_eq!(held.left(&first, Duration::ZERO), None, "limit passed");
        // The same name, created again: the old hold is not its own.
        assert!(!held.has_created(&again, "w-1"));
        assert_eq!(held.left(&again, limit), None);
        assert!(!held.has_created(&first, "w-1"), "forgotten");
        held.created(&again, "w-1");
        held.release(&again);
        assert!(!held.has_created(&again, "w-1"));
        assert_eq!(held.left(&again, limit), None);
    }
}
