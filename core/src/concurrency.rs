//! Per-workflow concurrency (SPEC §6): which queued instances may take a slot, oldest
//! partition first, and the message the others show while they wait.

use chrono::{DateTime, Utc};

/// A queued instance that is ready to run (its retry delay has passed).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Candidate<'a> {
    /// The partition's logical instant: older partitions go first.
    pub logical: DateTime<Utc>,
    /// The instance's name (tie-breaker, so the order is total and stable).
    pub name: &'a str,
}

/// Decides which of `ready` may start now given `active` instances holding slots and the
/// workflow's `limit` (`None`: unlimited). Returns the admitted names, oldest first, and the
/// waiting message for the rest.
pub fn admit<'a>(
    mut ready: Vec<Candidate<'a>>,
    active: usize,
    limit: Option<u32>,
    workflow: &str,
) -> (Vec<&'a str>, Option<String>) {
    ready.sort_by(|a, b| a.logical.cmp(&b.logical).then(a.name.cmp(b.name)));
    let Some(limit) = limit.map(|l| l as usize) else {
        return (ready.iter().map(|c| c.name).collect(), None);
    };
    let free = limit.saturating_sub(active);
    let admitted: Vec<&str> = ready.iter().take(free).map(|c| c.name).collect();
    let waiting = (ready.len() > admitted.len()).then(|| {
        format!(
            "waiting for a slot: {} of {limit} instances of workflow {workflow} active (spec.concurrency: {limit})",
            active + admitted.len()
        )
    });
    (admitted, waiting)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(logical: &str, name: &'static str) -> Candidate<'static> {
        Candidate {
            logical: logical.parse().unwrap(),
            name,
        }
    }

    #[test]
    fn oldest_first_within_the_limit() {
        let ready = vec![
            c("2024-01-01T03:00:00Z", "c"),
            c("2024-01-01T01:00:00Z", "a"),
            c("2024-01-01T02:00:00Z", "b"),
        ];
        let (admitted, waiting) = admit(ready.clone(), 1, Some(3), "hb");
        assert_eq!(admitted, ["a", "b"]);
        assert_eq!(
            waiting.as_deref(),
            Some(
                "waiting for a slot: 3 of 3 instances of workflow hb active (spec.concurrency: 3)"
            )
        );
        let (all, none) = admit(ready.clone(), 10, None, "hb");
        assert_eq!((all, none), (vec!["a", "b", "c"], None));
        let (nothing, _) = admit(ready, 4, Some(3), "hb");
        assert!(nothing.is_empty());
    }
}
