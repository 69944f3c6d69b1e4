//! Sharding workflows across operator replicas: which shard a workflow belongs to, how many
//! shards each live replica should hold, and what a replica does with each shard's Lease in
//! one round. Pure: the controller reads the Leases, asks [`plan`], and writes.
//!
//! A replica acts on a workflow (its status, its instances, its backfills, their Jobs) only
//! while it holds the Lease of the workflow's shard, so every workflow has a single writer.

use chrono::{DateTime, Duration, Utc};

/// The shard of the workflow `namespace/name` among `shards` (at least 1).
///
/// FNV-1a over `namespace/name`: stable across versions, platforms and restarts, since a
/// shard's workflows must not move when a replica is upgraded.
pub fn of(namespace: &str, workflow: &str, shards: u32) -> u32 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in namespace
        .bytes()
        .chain(std::iter::once(b'/'))
        .chain(workflow.bytes())
    {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    // The remainder is below `shards`, a u32.
    u32::try_from(hash % u64::from(shards.max(1))).unwrap_or(0)
}

/// How many shards each replica holds when `members` replicas are live: the shards divided
/// evenly, rounded up so every shard has a holder.
pub fn fair_share(shards: u32, members: usize) -> u32 {
    let members = u32::try_from(members.max(1)).unwrap_or(u32::MAX);
    shards.div_ceil(members)
}

/// One shard Lease as a round reads it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LeaseView {
    /// Who holds it; None when released (or never taken).
    pub holder: Option<String>,
    /// When its holder last renewed it.
    pub renewed: Option<DateTime<Utc>>,
    /// How long it is valid after a renewal.
    pub duration: Duration,
}

impl LeaseView {
    /// Whether anyone may take it: nobody holds it, or its holder has not renewed it for a
    /// whole duration.
    pub fn is_free(&self, now: DateTime<Utc>) -> bool {
        self.holder.as_deref().is_none_or(str::is_empty)
            || self.renewed.is_none_or(|r| r + self.duration < now)
    }

    fn held_by(&self, identity: &str) -> bool {
        self.holder.as_deref() == Some(identity)
    }
}

/// What a replica does with one shard's Lease in a round.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// Keep it: renew.
    Renew(u32),
    /// Take it: it is free and this replica holds fewer than its share.
    Acquire(u32),
    /// Give it up: this replica holds more than its share, so a newer replica may take it.
    Release(u32),
}

/// This round's steps for the replica `identity`, given every shard's Lease (`leases[i]` is
/// shard i's; None when it does not exist yet) and how many replicas are live.
///
/// A replica renews what it holds up to its fair share and releases the rest (its highest
/// shards), then takes free shards until it holds its share. Free shards are tried from a
/// place that depends on the identity, so replicas starting together mostly try different
/// ones. Writes are conditional on the version read, so two replicas never both win one.
pub fn plan(
    identity: &str,
    leases: &[Option<LeaseView>],
    members: usize,
    now: DateTime<Utc>,
) -> Vec<Step> {
    let shards = u32::try_from(leases.len()).unwrap_or(u32::MAX);
    let share = fair_share(shards, members);
    let held: Vec<u32> = (0..shards)
        .filter(|&i| {
            leases[i as usize]
                .as_ref()
                .is_some_and(|l| l.held_by(identity))
        })
        .collect();
    let keep = held.len().min(share as usize);
    let mut steps: Vec<Step> = held[..keep].iter().map(|&i| Step::Renew(i)).collect();
    steps.extend(held[keep..].iter().map(|&i| Step::Release(i)));
    let start = of("", identity, shards.max(1));
    let wanted = (share as usize).saturating_sub(keep);
    steps.extend(
        (0..shards)
            .map(|k| (start + k) % shards.max(1))
            .filter(|&i| {
                leases[i as usize]
                    .as_ref()
                    .is_none_or(|l| !l.held_by(identity) && l.is_free(now))
            })
            .take(wanted)
            .map(Step::Acquire),
    );
    steps
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn at(seconds: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000 + seconds, 0).expect("a valid instant")
    }

    fn held(by: &str, renewed: i64) -> Option<LeaseView> {
        Some(LeaseView {
            holder: Some(by.to_string()),
            renewed: Some(at(renewed)),
            duration: Duration::seconds(15),
        })
    }

    #[test]
    fn shards_are_stable_and_spread() {
        // Fixed values: a workflow's shard must never change between versions.
        assert_eq!(of("default", "nightly", 16), of("default", "nightly", 16));
        assert_eq!(of("a", "b", 1), 0);
        assert_eq!(of("default", "w1", 1_000_003), 365_590);
        // The namespace counts: the same name elsewhere is another workflow.
        let moved = (0..100)
            .filter(|i| of("x", &format!("w{i}"), 64) != of("y", &format!("w{i}"), 64))
            .count();
        assert!(moved > 90, "{moved}");
        // 10,000 workflows over 8 shards: each gets within 10% of its even part.
        let mut counts = [0u32; 8];
        for i in 0..10_000 {
            counts[of("default", &format!("w{i:05}"), 8) as usize] += 1;
        }
        for count in counts {
            assert!((1_125..=1_375).contains(&count), "{counts:?}");
        }
    }

    #[test]
    fn fair_shares() {
        for (shards, members, share) in [(6, 1, 6), (6, 2, 3), (6, 3, 2), (6, 4, 2), (6, 7, 1)] {
            assert_eq!(fair_share(shards, members), share, "{shards} {members}");
        }
        assert_eq!(fair_share(6, 0), 6);
    }

    #[test]
    fn a_lone_replica_takes_every_shard() {
        let steps = plan("a", &[None, None, None], 1, at(0));
        let mut taken: Vec<Step> = steps.clone();
        taken.sort_by_key(|s| match s {
            Step::Acquire(i) | Step::Renew(i) | Step::Release(i) => *i,
        });
        assert_eq!(
            taken,
            [Step::Acquire(0), Step::Acquire(1), Step::Acquire(2)]
        );
    }

    #[test]
    fn a_new_replica_gets_shards_once_the_old_one_releases_its_extras() {
        let leases = vec![held("a", 0), held("a", 0), held("a", 0), held("a", 0)];
        // a sees two members: it keeps two and releases two.
        assert_eq!(
            plan("a", &leases, 2, at(1)),
            [
                Step::Renew(0),
                Step::Renew(1),
                Step::Release(2),
                Step::Release(3)
            ]
        );
        // b takes nothing that a still holds.
        assert_eq!(plan("b", &leases, 2, at(1)), []);
        let released = vec![
            held("a", 1),
            held("a", 1),
            Some(LeaseView::default()),
            Some(LeaseView::default()),
        ];
        let mut steps = plan("b", &released, 2, at(2));
        steps.sort_by_key(|s| format!("{s:?}"));
        assert_eq!(steps, [Step::Acquire(2), Step::Acquire(3)]);
    }

    #[test]
    fn shards_of_a_dead_replica_are_taken_once_their_lease_expires() {
        let leases = vec![held("a", 0), held("dead", 0), held("b", 0)];
        // Within the dead replica's lease nobody takes its shard.
        assert_eq!(plan("a", &leases, 2, at(10)), [Step::Renew(0)]);
        let leases = vec![held("a", 16), held("dead", 0), held("b", 16)];
        assert_eq!(
            plan("a", &leases, 2, at(16)),
            [Step::Renew(0), Step::Acquire(1)]
        );
    }

    proptest! {
        /// However the Leases stand, a round never takes a shard someone else validly holds,
        /// never holds more than its share afterwards, and names each shard at most once.
        #[test]
        fn rounds_respect_other_holders(
            holders in proptest::collection::vec((0usize..4, 0i64..40), 1..12),
            members in 1usize..5,
        ) {
            let now = at(30);
            let leases: Vec<Option<LeaseView>> = holders
                .iter()
                .map(|&(who, renewed)| match who {
                    0 => None,
                    1 => held("me", renewed - 10),
                    w => held(&format!("other{w}"), renewed - 10),
                })
                .collect();
            let steps = plan("me", &leases, members, now);
            let share = fair_share(leases.len() as u32, members) as usize;
            let mut named = std::collections::HashSet::new();
            let mut kept = 0;
            for step in &steps {
                let (Step::Acquire(i) | Step::Renew(i) | Step::Release(i)) = *step;
                prop_assert!(named.insert(i));
                let lease = leases[i as usize].as_ref();
                match step {
                    Step::Acquire(_) => {
                        prop_assert!(lease.is_none_or(|l| l.is_free(now)));
                        kept += 1;
                    }
                    Step::Renew(_) => {
                        prop_assert_eq!(lease.and_then(|l| l.holder.as_deref()), Some("me"));
                        kept += 1;
                    }
                    Step::Release(_) => {
                        prop_assert_eq!(lease.and_then(|l| l.holder.as_deref()), Some("me"));
                    }
                }
            }
            prop_assert!(kept <= share);
        }
    }
}
