//! Pool admission decisions remembered while they still hold (SPEC §13). Deciding looks at
//! every instance that wants the same pools, so thousands of waiting instances each deciding
//! afresh on every look would cost the square of the queue. A decision that an instance waits
//! for a full pool stays true until capacity is given back: an attempt ends, an instance leaves
//! the queue without running (halted, deleted), a pool gets more slots or a Quota changes.
//! Each of those bumps the epoch, and a decision from an older epoch is never used. What a
//! remembered decision admits still fits while only its own admissions happened since: an
//! admission under another decision (which may share pools) drops the others, and a pool whose
//! slots change at all ends them all.

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
    cached: Mutex<HashMap<String, (u64, Arc<Decision>)>>,
    slots: Mutex<HashMap<String, u32>>,
}

impl Decisions {
    /// The current epoch: read it before gathering what a decision is made from.
    pub fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::SeqCst)
    }

    /// Capacity was given back: no remembered decision holds any more.
    pub fn capacity_changed(&self) {
        self.epoch.fetch_add(1, Ordering::SeqCst);
        lock(&self.cached).clear();
    }

    /// The decision for `seed` if it was made in the current epoch.
    pub fn get(&self, seed: &str) -> Option<Arc<Decision>> {
        let epoch = self.epoch();
        lock(&self.cached)
            .get(seed)
            .filter(|(at, _)| *at == epoch)
            .map(|(_, d)| d.clone())
    }

    /// Remembers a decision made from what was read in `epoch`.
    pub fn put(&self, seed: String, epoch: u64, decision: Arc<Decision>) {
        if epoch == self.epoch() {
            lock(&self.cached).insert(seed, (epoch, decision));
        }
    }

    /// An instance was admitted by a decision about `seed`: decisions about other seeds
    /// (which may share its pools) no longer hold.
    pub fn admitted_under(&self, seed: &str) {
        lock(&self.cached).retain(|key, _| key == seed);
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
        let epoch = decisions.epoch();
        decisions.put("p".into(), epoch, Arc::new(Decision::default()));
        assert!(decisions.get("p").is_some());
        decisions.capacity_changed();
        assert!(decisions.get("p").is_none());
        // Made from an older read: not remembered.
        decisions.put("p".into(), epoch, Arc::new(Decision::default()));
        assert!(decisions.get("p").is_none());
        decisions.pool_slots("p", 2);
        let epoch = decisions.epoch();
        decisions.pool_slots("p", 2);
        assert_eq!(decisions.epoch(), epoch, "the same slots change nothing");
        decisions.pool_slots("p", 1);
        assert_ne!(decisions.epoch(), epoch, "fewer slots must be respected");
        let epoch = decisions.epoch();
        decisions.put("a".into(), epoch, Arc::new(Decision::default()));
        decisions.put("b".into(), epoch, Arc::new(Decision::default()));
        decisions.admitted_under("a");
        assert!(decisions.get("a").is_some() && decisions.get("b").is_none());
    }
}
