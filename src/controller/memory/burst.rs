//! Gives triggering priority over starting instances: while workflows are creating
//! instances (thousands may come due at one instant), new instances wait to be started, so
//! the API server and the machine serve the triggers first. The wait is bounded, so a steady
//! stream of triggers cannot hold instances back for long.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::lock;

/// Reconciles creating instances now, and since when there have been any.
#[derive(Default)]
pub struct TriggerBurst {
    creating: Mutex<(usize, Option<Instant>)>,
}

/// The longest a burst of triggers holds back new instances.
const BURST_HOLD: Duration = Duration::from_secs(5);

impl TriggerBurst {
    /// Marks a reconcile that creates instances, until the guard is dropped.
    pub fn enter(self: &Arc<Self>) -> BurstGuard {
        let mut creating = lock(&self.creating);
        creating.0 += 1;
        creating.1.get_or_insert_with(Instant::now);
        BurstGuard(self.clone())
    }

    /// Whether new instances should wait.
    pub fn holds(&self) -> bool {
        let creating = lock(&self.creating);
        creating.0 > 0 && creating.1.is_some_and(|since| since.elapsed() < BURST_HOLD)
    }
}

/// Held while a reconcile creates instances (see [`TriggerBurst`]).
pub struct BurstGuard(Arc<TriggerBurst>);

impl Drop for BurstGuard {
    fn drop(&mut self) {
        let mut creating = lock(&self.0.creating);
        creating.0 = creating.0.saturating_sub(1);
        if creating.0 == 0 {
            creating.1 = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_instances_wait_while_any_workflow_is_creating() {
        let burst = Arc::new(TriggerBurst::default());
        assert!(!burst.holds());
        let first = burst.enter();
        let second = burst.enter();
        assert!(burst.holds());
        drop(first);
        assert!(burst.holds(), "one workflow is still creating");
        drop(second);
        assert!(!burst.holds());
    }
}
