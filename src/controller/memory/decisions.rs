//! Pool admission decisions remembered while they still hold (SPEC §13). Deciding looks at
//! every instance that wants the same pools, so thousands of waiting instances each deciding
//! afresh on every look would cost the square of the queue. A decision that an instance waits
//! for a full pool stays true until capacity is given back: an attempt ends, an instance leaves
//! the queue without running (halted, deleted), a pool gets more slots or a Quota changes.
//! Each of those bumps the epoch, and a decision from an older epoch is never used. What a
//! remembered decision admits still fits while only its own admissions happened since: an
//! admission under another decision (which may share pools) drops the others, and a pool whose
//! slots change at all ends them all. A decision is remembered only if no instance was admitted
//! while it was being made: one made before an admission it did not see would admit into the
//! slot that admission took.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use charon_core::admission::Decision;

use super::lock;

/// The remembered decisions, by the seed they were made from.
#[derive(Default)]
pub struct Decisions {
    epoch: AtomicU64,
    /// Bumped by every admission: a decision being made meanwhile is not remembered.
    admissions: AtomicU64,
    cached: Mutex<HashMap<String, (u64, Arc<Decision>)>>,
    slots: Mutex<HashMap<String, u32>>,
}

/// When a decision was made from: the epoch and the admissions so far.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Stamp {
    epoch: u64,
    admissions: u64,
}

impl Decisions {
    fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::SeqCst)
    }

    /// The current stamp: read it before gathering what a decision is made from.
    pub fn stamp(&self) -> Stamp {
        Stamp {
            epoch: self.epoch(),
            admissions: self.admissions.load(Ordering::SeqCst),
        }
    }

    /// Capacity was given back: no remembered decision holds any more.
    pub fn capacity_changed(&self) {
        let mut cached = lock(&self.cached);
        self.epoch.fetch_add(1, Ordering::SeqCst);
        cached.clear();
    }

    /// The decision for `seed` if it was made in the current epoch.
    pub fn get(&self, seed: &str) -> Option<Arc<Decision>> {
        let epoch = self.epoch();
        lock(&self.cached)
            .get(seed)
            .filter(|(at, _)| *at == epoch)
            .map(|(_, d)| d.clone())
    }

    /// Remembers a decision made from what was read at `stamp`, unless capacity was given
    /// back or an instance was admitted since.
    pub fn put(&self, seed: String, stamp: Stamp, decision: Arc<Decision>) {
        let mut cached = lock(&self.cached);
        if stamp == self.stamp() {
            cached.insert(seed, (stamp.epoch, decision));
        }
    }

    /// An instance was admitted by a decision about `seed`: decisions about other seeds
    /// (which may share its pools) no longer hold, nor does one being made.
    pub fn admitted_under(&self, seed: &str) {
        let mut cached = lock(&self.cached);
        self.admissions.fetch_add(1, Ordering::SeqCst);
        cached.retain(|key, _| key == seed);
    }

    /// Notes a pool's slots; any change (more to give, fewer to respect) ends every
    /// remembered decision.
    pub fn pool_slots(&self, pool: &str, slots: u32) {
        let before = lock(&self.slots).insert(pool.to_string(), slots);
        if before != Some(slots) {
            self.capacity_changed();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_decision_holds_until_capacity_is_given_back() {
        let decisions = Decisions::default();
        let stamp = decisions.stamp();
        decisions.put("p".into(), stamp, Arc::new(Decision::default()));
        assert!(decisions.get("p").is_some());
        decisions.capacity_changed();
        assert!(decisions.get("p").is_none());
        // Made from an older read: not remembered.
        decisions.put("p".into(), stamp, Arc::new(Decision::default()));
        assert!(decisions.get("p").is_none());
        decisions.pool_slots("p", 2);
        let epoch = decisions.epoch();
        decisions.pool_slots("p", 2);
        assert_eq!(decisions.epoch(), epoch, "the same slots change nothing");
        decisions.pool_slots("p", 1);
        assert_ne!(decisions.epoch(), epoch, "fewer slots must be respected");
        let stamp = decisions.stamp();
        decisions.put("a".into(), stamp, Arc::new(Decision::default()));
        decisions.put("b".into(), stamp, Arc::new(Decision::default()));
        decisions.admitted_under("a");
        assert!(decisions.get("a").is_some() && decisions.get("b").is_none());
    }

    #[test]
    fn a_decision_made_while_an_instance_was_admitted_is_not_remembered() {
        let decisions = Decisions::default();
        // Gathered before an admission under another seed (or the same one) it did not see.
        let stamp = decisions.stamp();
        decisions.admitted_under("other");
        decisions.put("p".into(), stamp, Arc::new(Decision::default()));
        assert!(
            decisions.get("p").is_none(),
            "it could admit into the slot taken"
        );
        let stamp = decisions.stamp();
        decisions.put("p".into(), stamp, Arc::new(Decision::default()));
        assert!(decisions.get("p").is_some(), "made after it: remembered");
    }
}
