//! Sharding across replicas (`charon operator --shards N`): each replica acts only on the
//! workflows of the shards whose Lease it holds (`<lease-name>-shard-<i>`), with their
//! instances and backfills, and every live replica keeps a member Lease
//! (`<lease-name>-member-<identity>`) so the others know how many share the shards. What to
//! do with each Lease is planned in [`charon_core::shard::plan`]; this module reads and writes
//! them, one round per retry period, as client-go's leader election does for one Lease.
//!
//! A single writer per workflow at every instant: a replica stops acting on a shard before
//! its Lease can expire in others' eyes (a renewal must be answered within the duration of
//! the last one), and gives a shard up only once no reconcile of it is running.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use charon_core::shard::{self, LeaseView, Step};
use chrono::{DateTime, Utc};
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use kube::api::{DeleteParams, ListParams, ObjectMeta, PostParams};
use kube::{Api, Client, ResourceExt};
use tokio::time::Instant;

use super::Metrics;
use super::leader::{self, LeaseConfig, micro};

/// Label on every Lease of one sharded operator, valued with its Lease name.
const LABEL_SHARDS: &str = "charon.dev/shards";
/// Label saying whether a Lease is a shard's or a member's.
const LABEL_ROLE: &str = "charon.dev/lease-role";

/// Which shards this replica acts on now, and the reconciles of each under way.
pub struct Shards {
    owned: Vec<AtomicBool>,
    busy: Vec<AtomicUsize>,
    /// Bumped whenever a shard is gained: its objects are reconciled at once.
    gained: tokio::sync::watch::Sender<u64>,
}

impl Shards {
    /// One shard, always held: an operator that is not sharded acts on everything.
    pub fn unsharded() -> Arc<Shards> {
        let shards = Shards::new(1);
        shards.owned[0].store(true, Ordering::SeqCst);
        shards
    }

    /// `count` shards, none held until their Leases are taken.
    pub fn new(count: u32) -> Arc<Shards> {
        let count = count.max(1) as usize;
        Arc::new(Shards {
            owned: (0..count).map(|_| AtomicBool::new(false)).collect(),
            busy: (0..count).map(|_| AtomicUsize::new(0)).collect(),
            gained: tokio::sync::watch::Sender::new(0),
        })
    }

    fn count(&self) -> u32 {
        u32::try_from(self.owned.len()).unwrap_or(u32::MAX)
    }

    fn shard_of(&self, namespace: &str, workflow: &str) -> usize {
        shard::of(namespace, workflow, self.count()) as usize
    }

    /// Whether this replica acts on the workflow `namespace/workflow` now.
    pub fn owns(&self, namespace: &str, workflow: &str) -> bool {
        self.owned[self.shard_of(namespace, workflow)].load(Ordering::SeqCst)
    }

    /// Starts acting on the workflow `namespace/workflow` (a reconcile of it or of one of
    /// its objects): None when its shard is not held. The shard is not given up while the
    /// guard lives.
    pub fn enter(self: &Arc<Self>, namespace: &str, workflow: &str) -> Option<ShardGuard> {
        let shard = self.shard_of(namespace, workflow);
        // Counted busy before looking, so a release that sees it idle has seen it unowned.
        self.busy[shard].fetch_add(1, Ordering::SeqCst);
        let guard = ShardGuard {
            shards: self.clone(),
            shard,
        };
        self.owned[shard].load(Ordering::SeqCst).then_some(guard)
    }

    /// Changes whenever a shard is gained.
    pub fn gained(&self) -> tokio::sync::watch::Receiver<u64> {
        self.gained.subscribe()
    }

    fn take(&self, shard: usize) {
        if !self.owned[shard].swap(true, Ordering::SeqCst) {
            tracing::info!(shard, "acting on shard");
            self.gained.send_modify(|n| *n += 1);
        }
    }

    fn leave(&self, shard: usize) {
        if self.owned[shard].swap(false, Ordering::SeqCst) {
            tracing::info!(shard, "no longer acting on shard");
        }
    }

    fn idle(&self, shard: usize) -> bool {
        self.busy[shard].load(Ordering::SeqCst) == 0
    }

    fn held(&self) -> usize {
        self.owned
            .iter()
            .filter(|o| o.load(Ordering::SeqCst))
            .count()
    }
}

/// A reconcile under way in a shard.
pub struct ShardGuard {
    shards: Arc<Shards>,
    shard: usize,
}

impl Drop for ShardGuard {
    fn drop(&mut self) {
        self.shards.busy[self.shard].fetch_sub(1, Ordering::SeqCst);
    }
}

/// A Lease name from an identity: lower case, with anything but letters, digits, `-` and
/// `.` as `-`, at most 200 characters.
fn name_part(identity: &str) -> String {
    let part: String = identity
        .chars()
        .map(|c| {
            let c = c.to_ascii_lowercase();
            if c.is_ascii_alphanumeric() || c == '-' || c == '.' {
                c
            } else {
                '-'
            }
        })
        .take(200)
        .collect();
    part.trim_matches(|c: char| !c.is_ascii_alphanumeric())
        .to_string()
}

fn view(lease: &Lease) -> LeaseView {
    let spec = lease.spec.clone().unwrap_or_default();
    LeaseView {
        holder: spec.holder_identity.filter(|h| !h.is_empty()),
        renewed: spec.renew_time.as_ref().and_then(leader::chrono),
        duration: chrono::Duration::seconds(i64::from(spec.lease_duration_seconds.unwrap_or(1))),
    }
}

/// The sharding loop of one replica.
struct Round {
    api: Api<Lease>,
    config: LeaseConfig,
    shards: Arc<Shards>,
    member: String,
    /// When each held shard's last successful renewal was sent.
    renewed: BTreeMap<usize, Instant>,
}

impl Round {
    fn lease_name(&self, shard: u32) -> String {
        format!("{}-shard-{shard}", self.config.name)
    }

    fn seconds(&self) -> i32 {
        i32::try_from(self.config.duration.as_secs().max(1)).unwrap_or(i32::MAX)
    }

    fn fresh(&self, name: &str, role: &str) -> Lease {
        Lease {
            metadata: ObjectMeta {
                name: Some(name.to_string()),
                namespace: Some(self.config.namespace.clone()),
                labels: Some(
                    [
                        (LABEL_SHARDS.to_string(), self.config.name.clone()),
                        (LABEL_ROLE.to_string(), role.to_string()),
                    ]
                    .into(),
                ),
                ..Default::default()
            },
            spec: Some(LeaseSpec {
                lease_transitions: Some(0),
                ..Default::default()
            }),
        }
    }

    /// Writes `lease` held by this replica (renewed now), creating it when it has no version
    /// yet; whether the write won.
    async fn hold(&self, mut lease: Lease, now: DateTime<Utc>) -> Result<bool, kube::Error> {
        let seconds = self.seconds();
        let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
        if spec.holder_identity.as_deref() != Some(self.config.identity.as_str()) {
            spec.holder_identity = Some(self.config.identity.clone());
            spec.acquire_time = Some(micro(now));
            spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
        }
        spec.renew_time = Some(micro(now));
        spec.lease_duration_seconds = Some(seconds);
        let written = if lease.metadata.resource_version.is_none() {
            self.api.create(&PostParams::default(), &lease).await
        } else {
            self.api
                .replace(&lease.name_any(), &PostParams::default(), &lease)
                .await
        };
        match written {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(status)) if status.code == 409 => Ok(false),
            Err(err) => Err(err),
        }
    }

    /// Gives `lease` up; whether it was.
    async fn give_up(&self, mut lease: Lease) -> bool {
        let Some(spec) = lease.spec.as_mut() else {
            return false;
        };
        spec.holder_identity = None;
        spec.lease_duration_seconds = Some(1);
        spec.renew_time = Some(micro(Utc::now()));
        self.api
            .replace(&lease.name_any(), &PostParams::default(), &lease)
            .await
            .is_ok()
    }

    /// One round: renew the member Lease, read every Lease, and act on the plan.
    async fn round(&mut self) -> Result<(), kube::Error> {
        let started = Instant::now();
        let now = Utc::now();
        let selector = format!("{LABEL_SHARDS}={}", self.config.name);
        let leases = self
            .api
            .list(&ListParams::default().labels(&selector))
            .await?
            .items;
        let member = leases
            .iter()
            .find(|l| l.name_any() == self.member)
            .cloned()
            .unwrap_or_else(|| self.fresh(&self.member, "member"));
        self.hold(member, now).await?;
        let live_members = leases
            .iter()
            .filter(|l| l.labels().get(LABEL_ROLE).map(String::as_str) == Some("member"))
            .filter(|l| l.name_any() != self.member && !view(l).is_free(now))
            .count()
            + 1;
        let mut by_shard: Vec<Option<Lease>> = vec![None; self.shards.count() as usize];
        for lease in leases {
            let name = lease.name_any();
            let index = name
                .strip_prefix(&format!("{}-shard-", self.config.name))
                .and_then(|i| i.parse::<usize>().ok());
            if let Some(slot) = index.and_then(|i| by_shard.get_mut(i)) {
                *slot = Some(lease);
            }
        }
        let views: Vec<Option<LeaseView>> = by_shard.iter().map(|l| l.as_ref().map(view)).collect();
        let steps = shard::plan(&self.config.identity, &views, live_members, now);
        // Writes answered after the renewed Lease could have expired prove nothing.
        let answer_by = started
            + self
                .config
                .duration
                .saturating_sub(self.config.retry_period);
        for step in steps {
            let (Step::Renew(i) | Step::Acquire(i) | Step::Release(i)) = step;
            let index = i as usize;
            let lease = by_shard[index]
                .clone()
                .unwrap_or_else(|| self.fresh(&self.lease_name(i), "shard"));
            if let Step::Release(_) = step {
                self.shards.leave(index);
                if self.shards.idle(index) {
                    self.renewed.remove(&index);
                    if self.give_up(lease).await {
                        tracing::info!(shard = i, "released shard lease for another replica");
                    }
                    continue;
                }
                // A reconcile of it is still running: keep the Lease until it ends.
            }
            match tokio::time::timeout_at(answer_by, self.hold(lease, now)).await {
                Ok(Ok(true)) => {
                    self.renewed.insert(index, started);
                    if !matches!(step, Step::Release(_)) {
                        self.shards.take(index);
                    }
                }
                Ok(Ok(false)) => {
                    // Someone else wrote it since it was read: not ours (any more).
                    self.shards.leave(index);
                    self.renewed.remove(&index);
                }
                Ok(Err(err)) => tracing::warn!(%err, shard = i, "writing a shard lease"),
                Err(_) => tracing::warn!(shard = i, "writing a shard lease: no answer in time"),
            }
        }
        Ok(())
    }

    /// Stops acting on every shard whose Lease could expire in others' eyes before the next
    /// round renews it.
    fn expire(&mut self) {
        let (duration, retry) = (self.config.duration, self.config.retry_period);
        self.renewed.retain(|&index, renewed| {
            let keep = renewed.elapsed() + retry < duration;
            if !keep {
                tracing::warn!(shard = index, "shard lease not renewed in time");
                self.shards.leave(index);
            }
            keep
        });
    }

    /// Gives every shard up once its reconciles have ended (or `grace` has passed), within
    /// `within` more, and removes the member Lease, so the other replicas take over at once.
    async fn release_all(&mut self, grace: Duration, within: Duration) {
        for index in 0..self.shards.count() as usize {
            self.shards.leave(index);
        }
        let deadline = Instant::now() + grace;
        while (0..self.shards.count() as usize).any(|i| !self.shards.idle(i))
            && Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let releasing = async {
            for &index in self.renewed.keys() {
                let shard = u32::try_from(index).unwrap_or(u32::MAX);
                if let Ok(lease) = self.api.get(&self.lease_name(shard)).await
                    && view(&lease).holder.as_deref() == Some(self.config.identity.as_str())
                {
                    self.give_up(lease).await;
                }
            }
            let _ = self
                .api
                .delete(&self.member, &DeleteParams::default())
                .await;
        };
        if tokio::time::timeout(within, releasing).await.is_err() {
            tracing::warn!("could not release the shard leases in time: they expire by themselves");
        }
        self.renewed.clear();
    }
}

/// Takes, renews and hands over shard Leases for `shards` until `stop` resolves, then gives
/// them up within `release` once reconciles under way have ended (waiting at most `grace`).
pub async fn run(
    client: Client,
    config: LeaseConfig,
    shards: Arc<Shards>,
    metrics: Arc<Metrics>,
    stop: impl std::future::Future<Output = ()>,
    (grace, release): (Duration, Duration),
) {
    let member = format!("{}-member-{}", config.name, name_part(&config.identity));
    let mut round = Round {
        api: Api::namespaced(client, &config.namespace),
        config,
        shards,
        member,
        renewed: BTreeMap::new(),
    };
    tracing::info!(
        shards = round.shards.count(),
        identity = %round.config.identity,
        "sharding: taking a fair share of the shard leases"
    );
    let rounds = async {
        loop {
            let deadline = Instant::now() + round.config.retry_period;
            match tokio::time::timeout(round.config.duration, round.round()).await {
                Ok(Ok(())) => {}
                Ok(Err(err)) => tracing::warn!(%err, "sharding round"),
                Err(_) => tracing::warn!("sharding round: no answer in time"),
            }
            round.expire();
            metrics.set_shards_held(round.shards.held());
            tokio::time::sleep_until(deadline).await;
            round.expire();
        }
    };
    tokio::select! {
        () = rounds => {}
        () = stop => {}
    }
    round.release_all(grace, release).await;
    metrics.set_shards_held(0);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identities_become_lease_names() {
        assert_eq!(name_part("charon-7d9f-abc"), "charon-7d9f-abc");
        assert_eq!(name_part("Replica_A:1"), "replica-a-1");
        assert_eq!(name_part("-x-"), "x");
    }

    #[test]
    fn a_shard_is_entered_only_while_held_and_counts_its_reconciles() {
        let shards = Shards::new(4);
        let (namespace, workflow) = ("default", "nightly");
        let shard = shards.shard_of(namespace, workflow);
        assert!(shards.enter(namespace, workflow).is_none());
        assert!(shards.idle(shard));
        shards.take(shard);
        let guard = shards.enter(namespace, workflow).expect("held");
        assert!(!shards.idle(shard));
        shards.leave(shard);
        assert!(shards.enter(namespace, workflow).is_none());
        assert!(!shards.idle(shard), "a reconcile is still under way");
        drop(guard);
        assert!(shards.idle(shard));
        assert!(Shards::unsharded().owns(namespace, workflow));
    }
}
