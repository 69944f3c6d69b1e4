//! Whether each instance was last seen finished, so a workflow is woken only when one of its
//! instances appears or finishes (or is re-opened): all a workflow's status shows of them.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use futures::StreamExt;

use super::{Key, key, lock};
use charon_core::resources::WorkflowInstance;

/// Finished or not, per instance, as last seen.
#[derive(Default)]
pub struct FinishedSeen(Mutex<HashMap<Key<WorkflowInstance>, bool>>);

impl FinishedSeen {
    /// Whether the instance is new, or finished since it was last seen (or the reverse).
    pub fn flipped(&self, instance: &WorkflowInstance) -> bool {
        let finished = instance
            .status
            .as_ref()
            .is_some_and(|s| s.state.is_terminal());
        lock(&self.0).insert(key(instance), finished) != Some(finished)
    }

    /// Forgets an instance that was deleted.
    pub fn forget(&self, instance: &WorkflowInstance) {
        lock(&self.0).remove(&key(instance));
    }
}

/// The instances whose finished-or-not changed (or that are new), so other changes do not
/// wake the workflow.
pub fn finished_flips(
    instances: impl futures::Stream<Item = Arc<WorkflowInstance>> + Send + 'static,
    memory: Arc<super::Memory>,
) -> impl futures::Stream<Item = Arc<WorkflowInstance>> + Send + 'static {
    instances.filter(move |instance| futures::future::ready(memory.finished.flipped(instance)))
}

#[cfg(test)]
mod tests {
    use super::super::fixtures;
    use super::*;
    use charon_core::resources::{InstanceState, WorkflowInstanceStatus};

    #[test]
    fn a_workflow_is_woken_when_an_instance_appears_or_finishes() {
        let seen = FinishedSeen::default();
        let mut instance = fixtures::instance("u1");
        assert!(seen.flipped(&instance), "new");
        assert!(!seen.flipped(&instance), "unchanged");
        instance.status = Some(WorkflowInstanceStatus {
            state: InstanceState::Done,
            ..Default::default()
        });
        assert!(seen.flipped(&instance), "finished");
        assert!(!seen.flipped(&instance));
        seen.forget(&instance);
        assert!(seen.flipped(&instance), "seen anew after being forgotten");
    }
}
