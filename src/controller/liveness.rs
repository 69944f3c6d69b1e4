//! Whether the controllers are making progress, for an honest `/healthz`: a controller whose
//! event stream has stopped while work is due (an unfinished instance, a workflow past its
//! next trigger) is stalled, and a restart is the cure. A quiet operator with nothing due is
//! healthy however long it has been idle.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use kube::ResourceExt;

use super::context::Context;
use super::memory::lock;

/// How long a controller may go without finishing a reconcile while work is due. The
/// instance controller looks at every unfinished instance at least once a minute, and a
/// workflow is reconciled at its trigger instant, so this is several of those periods.
pub const STALL_AFTER: Duration = Duration::from_secs(180);

/// Progress of each controller, by (namespace scope, controller).
#[derive(Default)]
pub struct Liveness {
    controllers: Mutex<HashMap<(String, &'static str), Progress>>,
}

#[derive(Clone, Copy, Debug)]
struct Progress {
    /// When a reconcile last finished.
    last_reconcile: Option<Instant>,
    /// Since when work has been due without a break.
    due_since: Option<Instant>,
}

impl Liveness {
    /// Records a finished reconcile of `controller` watching `scope` (a namespace, or "" for
    /// all).
    pub fn progressed(&self, scope: &str, controller: &'static str) {
        self.progressed_at(scope, controller, Instant::now());
    }

    /// Records whether `controller` has work due now.
    pub fn due(&self, scope: &str, controller: &'static str, due: bool) {
        self.due_at(scope, controller, due, Instant::now());
    }

    /// `Err` naming each stalled controller, for `/healthz`.
    pub fn check(&self) -> Result<(), String> {
        self.check_at(Instant::now())
    }

    fn progressed_at(&self, scope: &str, controller: &'static str, at: Instant) {
        let mut controllers = lock(&self.controllers);
        let progress = controllers
            .entry((scope.to_string(), controller))
            .or_insert(Progress {
                last_reconcile: None,
                due_since: None,
            });
        progress.last_reconcile = Some(at);
    }

    fn due_at(&self, scope: &str, controller: &'static str, due: bool, at: Instant) {
        let mut controllers = lock(&self.controllers);
        let progress = controllers
            .entry((scope.to_string(), controller))
            .or_insert(Progress {
                last_reconcile: None,
                due_since: None,
            });
        progress.due_since = match (due, progress.due_since) {
            (false, _) => None,
            (true, Some(since)) => Some(since),
            (true, None) => Some(at),
        };
    }

    fn check_at(&self, now: Instant) -> Result<(), String> {
        let controllers = lock(&self.controllers);
        let mut stalled: Vec<String> = controllers
            .iter()
            .filter(|(_, p)| {
                let Some(due_since) = p.due_since else {
                    return false;
                };
                // Work has been due for a while, and nothing finished in that time.
                let quiet_since = p.last_reconcile.map_or(due_since, |r| r.max(due_since));
                now.saturating_duration_since(quiet_since) >= STALL_AFTER
            })
            .map(|((scope, controller), _)| {
                let scope = if scope.is_empty() {
                    "all namespaces"
                } else {
                    scope
                };
                format!(
                    "the {controller} controller ({scope}) has finished no reconcile for {}s while work is due",
                    STALL_AFTER.as_secs()
                )
            })
            .collect();
        stalled.sort();
        if stalled.is_empty() {
            Ok(())
        } else {
            Err(stalled.join("; "))
        }
    }
}

/// How often the watchdog looks for due work.
const WATCH_EVERY: Duration = Duration::from_secs(10);

/// How long past its trigger instant a workflow counts as due work (a workflow is
/// reconciled at its trigger instant; a burst of thousands takes a while).
const TRIGGER_GRACE: chrono::Duration = chrono::Duration::seconds(60);

/// Tells the liveness what work is due, from the caches, every few seconds until `stop`.
pub async fn watch(context: std::sync::Arc<Context>, stop: impl std::future::Future<Output = ()>) {
    let scope = context.namespace.clone().unwrap_or_default();
    let liveness = context.metrics.liveness();
    let watching = async {
        loop {
            tokio::time::sleep(WATCH_EVERY).await;
            // Only what this replica acts on is its work (with `--shards`, some of it).
            let mine = |namespace: Option<String>, workflow: &str| {
                context
                    .shards
                    .owns(&namespace.unwrap_or_default(), workflow)
            };
            let unfinished = context.instances.state().iter().any(|i| {
                i.metadata.deletion_timestamp.is_none()
                    && !i.status.as_ref().is_some_and(|s| s.state.is_terminal())
                    && mine(i.namespace(), &i.spec.workflow)
            });
            liveness.due(&scope, "instance", unfinished);
            let now = context.clock.now();
            let overdue = context.workflows.state().iter().any(|w| {
                !w.spec.suspend
                    && mine(w.namespace(), &w.name_any())
                    && w.status
                        .as_ref()
                        .and_then(|s| s.next_trigger.as_ref())
                        .is_some_and(|next| next.trigger_at + TRIGGER_GRACE < now)
            });
            liveness.due(&scope, "workflow", overdue);
        }
    };
    tokio::select! {
        () = watching => {}
        () = stop => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_controller_is_stalled_only_while_work_is_due_and_nothing_finishes() {
        let liveness = Liveness::default();
        let t0 = Instant::now();
        let later = |s: u64| t0 + Duration::from_secs(s);
        // Idle for ever with nothing due: healthy.
        liveness.due_at("", "instance", false, t0);
        assert_eq!(liveness.check_at(later(3600)), Ok(()));
        // Work due and reconciles finishing: healthy.
        liveness.due_at("", "instance", true, later(10));
        liveness.progressed_at("", "instance", later(100));
        assert_eq!(liveness.check_at(later(200)), Ok(()));
        // Work still due, nothing finished for STALL_AFTER: stalled, named.
        let stalled = liveness.check_at(later(100) + STALL_AFTER).unwrap_err();
        assert!(
            stalled.contains("instance controller (all namespaces)"),
            "{stalled}"
        );
        // Progress again: healthy.
        liveness.progressed_at("", "instance", later(400));
        assert_eq!(liveness.check_at(later(401)), Ok(()));
        liveness.due_at("", "instance", false, later(402));
        // Work that became due only now is given its time, even after a long idle spell.
        liveness.due_at("ns", "workflow", true, later(5000));
        assert_eq!(liveness.check_at(later(5001)), Ok(()));
        assert!(liveness.check_at(later(5000) + STALL_AFTER).is_err());
        liveness.due_at("ns", "workflow", false, later(5300));
        assert_eq!(liveness.check_at(later(9000)), Ok(()));
    }
}
