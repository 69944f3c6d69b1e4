//! Pools and Quotas (SPEC §13): the inputs of [`charon_core::admission`] gathered from the
//! caches, the decision applied to the instance being reconciled, waiting instances woken
//! when slots free, and the Pool and Quota statuses.
//!
//! What an attempt holds is derived every time from the instances' states (the shared
//! ledger's, fresher than the cache, else the stored ones), never counted up and down. An
//! instance still `Queued` whose next Job exists (an attempt not recorded yet, or created by
//! an operator that stopped before recording it) holds its slots too, and is admitted at
//! once: that Job runs whatever the queue says, so it must be counted. Once that Job has
//! ended, admission still counts it until its instance records the end (so no instance's
//! history shows more attempts at once than the slots), but the Pool and Quota statuses do
//! not: a restarted operator would otherwise report it beside the attempt its predecessor
//! admitted in its place.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use chrono::{DateTime, Utc};
use kube::api::{Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::reflector::ObjectRef;
use kube::{Api, ResourceExt};

use super::context::Context;
use super::error::{Error, call};
use super::index::instances_of;
use super::memory::{Entries, shared_key};
use charon_core::admission::{self, Candidate, Claim, Decision, PoolState, QuotaLimits, World};
use charon_core::instance::waiting;
use charon_core::quantity;
use charon_core::resources::{
    ConditionStatus, InstanceState, Pool, PoolNamespaceStatus, PoolStatus, Quota, QuotaRequests,
    QuotaStatus, TriggerType, Workflow, WorkflowInstance, WorkflowInstanceStatus, condition_type,
    set_condition,
};
use charon_core::schedule::IsoDuration;

/// How often pool and quota statuses are brought up to date without being asked.
const REFRESH: std::time::Duration = std::time::Duration::from_secs(5);

/// How stale a pool's stored usage may get while nothing else about it changes.
const USAGE_WRITE_EVERY: chrono::Duration = chrono::Duration::seconds(30);

/// When a Pool or Quota whose caches were not listed yet is looked at again.
const NOT_SYNCED_RETRY: std::time::Duration = std::time::Duration::from_secs(1);

/// How long a reconcile waits for the caches admission reads to finish their first list.
const SYNC_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// Whether the caches admission counts from have been listed once: before that, a running
/// Job or an active instance could be missing from the count (just after a restart), and
/// nothing may be admitted.
pub async fn synced(ctx: &Context) -> bool {
    tokio::time::timeout(SYNC_WAIT, listed(ctx))
        .await
        .unwrap_or(false)
}

/// [`synced`] without waiting.
fn synced_now(ctx: &Context) -> bool {
    use futures::FutureExt;
    listed(ctx).now_or_never().unwrap_or(false)
}

async fn listed(ctx: &Context) -> bool {
    ctx.jobs.wait_until_ready().await.is_ok()
        && ctx.instances.wait_until_ready().await.is_ok()
        && ctx.workflows.wait_until_ready().await.is_ok()
        && (ctx.namespace.is_some() || ctx.pools.wait_until_ready().await.is_ok())
        && ctx.quotas.wait_until_ready().await.is_ok()
}

/// The waiting message while [`synced`] is not.
pub const NOT_SYNCED: &str =
    "waiting for the operator's caches of Jobs, instances, Pools and Quotas to sync";

/// Whether admission of `workflow`'s instances goes through pools or a Quota.
pub fn governed(ctx: &Context, namespace: &str, workflow: &Workflow) -> bool {
    !workflow.spec.pools.is_empty() || quota_of(ctx, namespace).is_some()
}

/// The Quota of a namespace: the oldest if there are several (the others are marked
/// `Valid=False`).
pub fn quota_of(ctx: &Context, namespace: &str) -> Option<Arc<Quota>> {
    ctx.quotas
        .state()
        .into_iter()
        .filter(|q| q.namespace().as_deref() == Some(namespace))
        .min_by(|a, b| {
            a.metadata
                .creation_timestamp
                .cmp(&b.metadata.creation_timestamp)
                .then(a.name_any().cmp(&b.name_any()))
        })
}

/// A pool's half-life in seconds (an unreadable one counts as the default hour; the Pool is
/// marked `Valid=False`).
fn half_life(pool: &Pool) -> Result<f64, String> {
    IsoDuration::parse(&pool.spec.usage_half_life)
        .ok()
        .and_then(|d| d.approximate())
        .map(|d| d.num_milliseconds() as f64 / 1000.0)
        .filter(|s| *s >= 0.0)
        .ok_or_else(|| {
            format!(
                "spec.usageHalfLife: {:?} is not an ISO-8601 duration",
                pool.spec.usage_half_life
            )
        })
}

/// Where a decision starts: the pools, namespaces and workflows it must look at; everything
/// they share a pool or a Quota with is added.
#[derive(Default)]
struct Seed {
    pools: BTreeSet<String>,
    namespaces: BTreeSet<String>,
}

/// The admission world around a seed, and the instance behind each candidate.
struct Gathered {
    world: World,
    /// Candidate key → (namespace, name).
    names: BTreeMap<String, (String, String)>,
    /// Candidate key → since when it is ready to run.
    ready_since: BTreeMap<String, DateTime<Utc>>,
    /// Which of `world.holders` hold for an attempt whose Job has ended although the
    /// instance does not record it yet: admission counts them until it does, the statuses
    /// do not.
    ended: BTreeSet<usize>,
}

impl Gathered {
    /// The holders whose attempts still run: what the Pool and Quota statuses report.
    fn running(&self) -> impl Iterator<Item = &Claim> {
        self.world
            .holders
            .iter()
            .enumerate()
            .filter(|(i, _)| !self.ended.contains(i))
            .map(|(_, claim)| claim)
    }
}

fn claim_of(namespace: &str, workflow: &Workflow) -> Claim {
    let requests = workflow
        .spec
        .template
        .resources
        .as_ref()
        .and_then(|r| r.requests.as_ref());
    let amount = |name: &str| {
        requests
            .and_then(|r| r.get(name))
            .and_then(|q| quantity::milli(&q.0))
            .unwrap_or(0)
    };
    // An array runs up to `parallelism` pods of the template at once.
    let pods = workflow.spec.template.array.as_ref().map_or(1, |a| {
        i128::from(a.parallelism.unwrap_or(a.count() as i32).max(1))
    });
    Claim {
        namespace: namespace.to_string(),
        workflow: workflow.name_any(),
        pools: workflow.spec.pools.clone(),
        cpu: amount("cpu") * pods,
        memory: amount("memory") * pods,
    }
}

fn limits_of(quota: &Quota) -> QuotaLimits {
    let requests = quota.spec.requests.as_ref();
    QuotaLimits {
        name: quota.name_any(),
        max_active: quota.spec.max_active,
        cpu: requests
            .and_then(|r| r.cpu.as_ref())
            .and_then(|q| quantity::milli(&q.0)),
        memory: requests
            .and_then(|r| r.memory.as_ref())
            .and_then(|q| quantity::milli(&q.0)),
    }
}

/// Gathers what admission needs around `seed`, skipping the instance keyed `except` (the
/// caller adds it).
fn gather(
    ctx: &Context,
    entries: &Entries,
    mut seed: Seed,
    except: Option<&str>,
    now: DateTime<Utc>,
) -> Gathered {
    let mut quotas: BTreeMap<String, Arc<Quota>> = seed
        .namespaces
        .iter()
        .filter_map(|ns| quota_of(ctx, ns).map(|q| (ns.clone(), q)))
        .collect();
    // Namespaces without a Quota constrain nothing beyond their pools.
    seed.namespaces.retain(|ns| quotas.contains_key(ns));
    let all = ctx.workflows.state();
    let mut chosen: BTreeMap<(String, String), Arc<Workflow>> = BTreeMap::new();
    loop {
        let before = (chosen.len(), seed.pools.len(), seed.namespaces.len());
        for workflow in &all {
            let namespace = workflow.namespace().unwrap_or_default();
            let in_pool = workflow
                .spec
                .pools
                .iter()
                .any(|p| seed.pools.contains(&p.name));
            if !(in_pool || seed.namespaces.contains(&namespace)) {
                continue;
            }
            let key = (namespace.clone(), workflow.name_any());
            if chosen.contains_key(&key) {
                continue;
            }
            seed.pools
                .extend(workflow.spec.pools.iter().map(|p| p.name.clone()));
            if !quotas.contains_key(&namespace)
                && let Some(quota) = quota_of(ctx, &namespace)
            {
                quotas.insert(namespace.clone(), quota);
                seed.namespaces.insert(namespace.clone());
            }
            chosen.insert(key, workflow.clone());
        }
        if before == (chosen.len(), seed.pools.len(), seed.namespaces.len()) {
            break;
        }
    }

    let mut gathered = Gathered {
        world: World::default(),
        names: BTreeMap::new(),
        ready_since: BTreeMap::new(),
        ended: BTreeSet::new(),
    };
    let no_status = WorkflowInstanceStatus::default();
    for ((namespace, _), workflow) in &chosen {
        let claim = claim_of(namespace, workflow);
        for instance in instances_of(ctx, namespace, &workflow.name_any()) {
            let name = instance.name_any();
            let key = shared_key(namespace, &name);
            if except == Some(key.as_str()) {
                continue;
            }
            let status = instance.status.as_ref().unwrap_or(&no_status);
            let state = entries.get(&key).copied().unwrap_or(status.state);
            let unrecorded = unrecorded_job(ctx, namespace, &name, status.execution);
            if state.is_active() || (state == InstanceState::Queued && unrecorded.is_some()) {
                // An attempt whose Job has ended is counted until it is recorded: the slot
                // it frees is given away once its instance's history says it ended.
                if unrecorded.is_some_and(|job| job.ended()) {
                    gathered.ended.insert(gathered.world.holders.len());
                }
                gathered.world.holders.push(claim.clone());
            } else if state == InstanceState::Queued
                && !instance.spec.halted
                && !instance.spec.suspended
                && status.reason.as_deref() != Some(waiting::DEPENDENCIES)
                && status.next_attempt_at.is_none_or(|at| at <= now)
            {
                gathered.ready_since.insert(
                    key.clone(),
                    status
                        .history
                        .last()
                        .map(|h| h.at)
                        .or(created(&instance))
                        .unwrap_or(now),
                );
                gathered.world.queued.push(Candidate {
                    key: key.clone(),
                    claim: claim.clone(),
                    priority: priority_of(ctx, &instance, workflow),
                    logical: instance.spec.logical_time,
                    concurrency: workflow.spec.concurrency,
                });
                gathered.names.insert(key, (namespace.clone(), name));
            }
        }
    }
    gathered.world.pools = pool_states(ctx, &seed.pools, now);
    gathered.world.quotas = quotas
        .iter()
        .map(|(ns, q)| (ns.clone(), limits_of(q)))
        .collect();
    gathered
}

/// When an instance was created, as chrono time.
fn created(instance: &WorkflowInstance) -> Option<DateTime<Utc>> {
    super::clock::chrono_of(instance.metadata.creation_timestamp.as_ref()?.0)
}

/// The latest Job of an instance beyond the execution its status records, if any (an
/// attempt not recorded yet, or created by an operator that stopped before recording it):
/// while it runs it holds its slots.
fn unrecorded_job(
    ctx: &Context,
    namespace: &str,
    name: &str,
    execution: u32,
) -> Option<Arc<super::packed::Packed<k8s_openapi::api::batch::v1::Job>>> {
    let mut latest = None;
    for next in execution.saturating_add(1)..u32::MAX {
        let job_name = charon_core::names::job_name(name, next);
        match ctx.jobs.get(&ObjectRef::new(&job_name).within(namespace)) {
            Some(job) => latest = Some(job),
            None => break,
        }
    }
    latest
}

/// Whether the Job of an instance's next execution exists: it runs whatever the queue says,
/// so the instance is admitted at once (and adopts it).
fn runs_unrecorded(ctx: &Context, namespace: &str, name: &str, execution: u32) -> bool {
    unrecorded_job(ctx, namespace, name, execution).is_some()
}

/// An instance's priority: its backfill's `spec.priority` if it has one, else its workflow's.
fn priority_of(ctx: &Context, instance: &WorkflowInstance, workflow: &Workflow) -> u32 {
    let trigger = &instance.spec.trigger;
    if trigger.trigger_type == TriggerType::Backfill {
        let namespace = instance.namespace().unwrap_or_default();
        if let Some(priority) = ctx
            .backfills
            .get(&ObjectRef::new(&trigger.id).within(&namespace))
            .and_then(|b| b.spec.priority)
        {
            return priority.min(100);
        }
    }
    workflow.spec.priority.min(100)
}

/// The pools admission sees: slots and usage brought up to `now`.
fn pool_states(
    ctx: &Context,
    names: &BTreeSet<String>,
    now: DateTime<Utc>,
) -> BTreeMap<String, PoolState> {
    names
        .iter()
        .filter_map(|name| {
            let pool = ctx.pools.get(&ObjectRef::new(name))?;
            Some((
                name.clone(),
                PoolState {
                    slots: pool.spec.slots,
                    usage: usage_now(&pool, now),
                    half_life: half_life(&pool).unwrap_or(3600.0),
                },
            ))
        })
        .collect()
}

fn held_by_namespace<'a>(
    holders: impl Iterator<Item = &'a Claim>,
    pool: &str,
) -> BTreeMap<String, u32> {
    let mut held = BTreeMap::new();
    for holder in holders {
        for p in holder.pools.iter().filter(|p| p.name == pool) {
            *held.entry(holder.namespace.clone()).or_default() += p.slots;
        }
    }
    held
}

/// A pool's stored usage brought from when it was written to `now`.
fn usage_now(pool: &Pool, now: DateTime<Utc>) -> BTreeMap<String, f64> {
    let status = pool.status.clone().unwrap_or_default();
    let stored: BTreeMap<String, f64> = status
        .namespaces
        .iter()
        .map(|n| (n.namespace.clone(), n.usage))
        .collect();
    let since = status.usage_updated_at.unwrap_or(now);
    let half_life = half_life(pool).unwrap_or(3600.0);
    // What was held since the last write is what that write recorded (the status is written
    // whenever holdings change); the current holders hold from now on.
    let recorded: BTreeMap<String, u32> = status
        .namespaces
        .iter()
        .map(|n| (n.namespace.clone(), n.used))
        .collect();
    admission::usage_at(&stored, &recorded, since, now, half_life)
}

/// Whether the queued `instance` of `workflow` may start now: `Err` is the message it
/// waits with. Decided under the shared ledger's lock, from its `entries`.
pub fn admit(
    ctx: &Context,
    entries: &Entries,
    instance: &WorkflowInstance,
    namespace: &str,
    workflow: &Workflow,
    now: DateTime<Utc>,
) -> Result<(), String> {
    let name = instance.name_any();
    let status = instance.status.clone().unwrap_or_default();
    if runs_unrecorded(ctx, namespace, &name, status.execution) {
        return Ok(());
    }
    if let (Some(watched), false) = (&ctx.namespace, workflow.spec.pools.is_empty()) {
        return Err(format!(
            "waiting for pools: spec.pools needs an operator watching every namespace (pools are shared across namespaces; this one watches {watched} only)"
        ));
    }
    let key = shared_key(namespace, &name);
    let seed = Seed::of(ctx, namespace, workflow);
    let seed_key = seed.key();
    let decisions = &ctx.memory.decisions;
    let admitted = |ctx: &Context| {
        // Decisions about other seeds may share these pools: they no longer hold.
        ctx.memory.decisions.admitted_under(&seed_key);
        let ready = status
            .history
            .last()
            .map(|h| h.at)
            .or(created(instance))
            .unwrap_or(now);
        let waited = (now - ready).num_milliseconds() as f64 / 1000.0;
        for pool in &workflow.spec.pools {
            ctx.metrics.pool_wait(&pool.name, waited);
        }
        Ok(())
    };
    if let Some(decided) = decisions.get(&seed_key) {
        // Nothing was given back and nobody was admitted elsewhere since: what it admitted
        // still fits, and who it left waiting still waits.
        if decided.admits(&key) {
            return admitted(ctx);
        }
        if let Some(wait) = still_waiting(ctx, &decided, &key, instance, workflow) {
            return Err(wait.message(namespace, &workflow.name_any()));
        }
    }
    let stamp = decisions.stamp();
    let mut gathered = gather(ctx, entries, seed, Some(&key), now);
    gathered.world.queued.push(Candidate {
        key: key.clone(),
        claim: claim_of(namespace, workflow),
        priority: priority_of(ctx, instance, workflow),
        logical: instance.spec.logical_time,
        concurrency: workflow.spec.concurrency,
    });
    gathered.world.focus = Some(key.clone());
    let decision = Arc::new(admission::decide(&gathered.world));
    decisions.put(seed_key.clone(), stamp, decision.clone());
    // Usage moves with time, so this decision may admit others than the one that woke this
    // instance: wake them, or their slots would stay free until the next look.
    for admitted in decision.admitted.iter().filter(|k| **k != key) {
        if let Some((ns, name)) = gathered.names.get(admitted) {
            let _ = ctx.wake.send(ObjectRef::new(name).within(ns));
        }
    }
    if decision.admits(&key) {
        admitted(ctx)
    } else {
        Err(decision
            .waiting
            .get(&key)
            .map(|w| w.message(namespace, &workflow.name_any()))
            .unwrap_or_else(|| "waiting for admission".to_string()))
    }
}

impl Seed {
    /// Where the decision about an instance of `workflow` in `namespace` starts: its pools,
    /// and its namespace if that has a Quota (else instances of every namespace sharing the
    /// pools share one decision).
    fn of(ctx: &Context, namespace: &str, workflow: &Workflow) -> Seed {
        let namespaces = if quota_of(ctx, namespace).is_some() {
            [namespace.to_string()].into()
        } else {
            BTreeSet::new()
        };
        Seed {
            pools: workflow.spec.pools.iter().map(|p| p.name.clone()).collect(),
            namespaces,
        }
    }

    /// What remembered decisions are filed under.
    fn key(&self) -> String {
        let pools: Vec<&str> = self.pools.iter().map(String::as_str).collect();
        let namespaces: Vec<&str> = self.namespaces.iter().map(String::as_str).collect();
        format!("{}|{}", pools.join(","), namespaces.join(","))
    }
}

/// Whether a decision made in the current epoch (nothing given back since) still says the
/// instance keyed `key` waits for a full pool: what it waits with. A newcomer not in that
/// decision waits too if a pool it names had no room for it then.
fn still_waiting(
    ctx: &Context,
    decided: &Decision,
    key: &str,
    instance: &WorkflowInstance,
    workflow: &Workflow,
) -> Option<admission::Wait> {
    if let Some(wait) = decided.waiting.get(key) {
        return wait.is_pool().then(|| wait.clone());
    }
    if decided.admits(key) {
        return None;
    }
    workflow.spec.pools.iter().find_map(|claim| {
        let pool = ctx.pools.get(&ObjectRef::new(&claim.name))?;
        let used = decided.used.get(&claim.name).copied()?;
        let slots = pool.spec.slots;
        (used + claim.slots > slots).then(|| {
            let ahead = decided
                .waiting
                .values()
                .filter(|w| matches!(w, admission::Wait::Pool { pool, .. } if *pool == claim.name))
                .count();
            admission::Wait::Pool {
                pool: claim.name.clone(),
                used,
                slots,
                needs: claim.slots,
                place: ahead + 1,
                priority: priority_of(ctx, instance, workflow),
            }
        })
    })
}

/// Wakes the instances a decision around `seed` admits, and returns it.
fn wake_admitted(ctx: &Context, seed: Seed, now: DateTime<Utc>) -> (Gathered, Arc<Decision>) {
    let seed_key = seed.key();
    let stamp = ctx.memory.decisions.stamp();
    let (gathered, decision) = ctx.memory.admission.with_shared(|entries| {
        let gathered = gather(ctx, entries, seed, None, now);
        let decision = admission::decide(&gathered.world);
        (gathered, decision)
    });
    let decision = Arc::new(decision);
    ctx.memory.decisions.put(seed_key, stamp, decision.clone());
    for key in &decision.admitted {
        if let Some((namespace, name)) = gathered.names.get(key) {
            let _ = ctx.wake.send(ObjectRef::new(name).within(namespace));
        }
    }
    (gathered, decision)
}

/// Wakes the waiting instances that may take what an instance of `workflow` just freed.
pub fn wake(ctx: &Context, namespace: &str, workflow: &Workflow) {
    let seed = Seed::of(ctx, namespace, workflow);
    // Before the caches are listed a decision would miss holders (see [`synced`]); the
    // pools' own reconciles wake the waiting once they are.
    if synced_now(ctx) {
        wake_admitted(ctx, seed, ctx.clock.now());
    }
    for pool in &workflow.spec.pools {
        let _ = ctx.wake_pool.send(ObjectRef::new(&pool.name));
    }
}

/// Sets the `Valid` condition.
fn valid(
    conditions: &mut Vec<charon_core::resources::Condition>,
    status: ConditionStatus,
    reason: &str,
    message: &str,
    generation: Option<i64>,
    now: DateTime<Utc>,
) {
    set_condition(
        conditions,
        charon_core::resources::Condition {
            type_: condition_type::VALID.to_string(),
            status,
            observed_generation: generation,
            last_transition_time: now,
            reason: reason.to_string(),
            message: message.to_string(),
        },
    );
}

/// One reconcile of a Pool: wake whom it admits, and write its status.
pub async fn reconcile_pool(pool: Arc<Pool>, ctx: Arc<Context>) -> Result<Action, Error> {
    let name = pool.name_any();
    // A Pool is cluster-scoped: its shard is that of a workflow named like it in no namespace.
    let Some(_shard) = ctx.shards.enter("", &name) else {
        return Ok(Action::await_change());
    };
    let _timer = ctx.metrics.reconcile("pool");
    // A decision made before the caches are listed misses holders (a Job its predecessor
    // created but did not record), and what it admits would be taken on trust; so would
    // the usage this status reports.
    if !synced(&ctx).await {
        return Ok(Action::requeue(NOT_SYNCED_RETRY));
    }
    let now = ctx.clock.now();
    ctx.memory.decisions.pool_slots(&name, pool.spec.slots);
    let seed = Seed {
        pools: [name.clone()].into(),
        namespaces: BTreeSet::new(),
    };
    let (gathered, decision) = wake_admitted(&ctx, seed, now);
    let held = held_by_namespace(gathered.running(), &name);
    let mut queued: BTreeMap<String, u32> = BTreeMap::new();
    for candidate in &gathered.world.queued {
        if candidate.claim.pools.iter().any(|p| p.name == name) && !decision.admits(&candidate.key)
        {
            *queued.entry(candidate.claim.namespace.clone()).or_default() += 1;
        }
    }
    let before = pool.status.clone().unwrap_or_default();
    let usage = usage_now(&pool, now);
    let namespaces: BTreeSet<&String> = usage
        .keys()
        .chain(held.keys())
        .chain(queued.keys())
        .collect();
    let mut status = PoolStatus {
        observed_generation: pool.metadata.generation,
        conditions: before.conditions.clone(),
        used: held.values().sum(),
        queued: queued.values().sum(),
        namespaces: namespaces
            .into_iter()
            .map(|ns| PoolNamespaceStatus {
                namespace: ns.clone(),
                used: held.get(ns).copied().unwrap_or(0),
                queued: queued.get(ns).copied().unwrap_or(0),
                usage: usage.get(ns).map_or(0.0, |u| (u * 1000.0).round() / 1000.0),
            })
            .collect(),
        usage_updated_at: Some(now),
    };
    let (is_valid, reason, message) = match half_life(&pool) {
        Ok(_) => (ConditionStatus::True, "Valid", String::new()),
        Err(message) => (ConditionStatus::False, "InvalidSpec", message),
    };
    valid(
        &mut status.conditions,
        is_valid,
        reason,
        &message,
        pool.metadata.generation,
        now,
    );
    ctx.metrics
        .pool(&name, pool.spec.slots, status.used, status.queued);
    let counts = |s: &PoolStatus| {
        (
            s.observed_generation,
            s.conditions.clone(),
            s.used,
            s.queued,
            s.namespaces
                .iter()
                .map(|n| (n.namespace.clone(), n.used, n.queued))
                .collect::<Vec<_>>(),
        )
    };
    let stale = before
        .usage_updated_at
        .is_none_or(|at| now - at >= USAGE_WRITE_EVERY);
    if counts(&status) != counts(&before) || stale {
        let patch = serde_json::json!({"status": status});
        Api::<Pool>::all(ctx.client.clone())
            .patch_status(&name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .map_err(call("patch status", "Pool", "", &name))?;
    }
    Ok(Action::requeue(REFRESH))
}

/// What to do after a failed Pool reconcile.
pub fn pool_error_policy(pool: Arc<Pool>, error: &Error, ctx: Arc<Context>) -> Action {
    ctx.metrics.error("pool", error.kind());
    tracing::warn!(pool = %pool.name_any(), %error, "pool reconcile failed");
    Action::requeue(REFRESH)
}

/// One reconcile of a Quota: wake whom it admits, and write its status.
pub async fn reconcile_quota(quota: Arc<Quota>, ctx: Arc<Context>) -> Result<Action, Error> {
    ctx.clone()
        .guarded(quota.clone(), reconcile_quota_inner(quota, ctx))
        .await
}

async fn reconcile_quota_inner(quota: Arc<Quota>, ctx: Arc<Context>) -> Result<Action, Error> {
    // As for a Pool (see [`reconcile_pool`]).
    if !synced(&ctx).await {
        return Ok(Action::requeue(NOT_SYNCED_RETRY));
    }
    let namespace = quota.namespace().unwrap_or_default();
    let now = ctx.clock.now();
    let chosen = quota_of(&ctx, &namespace);
    let mut status = quota.status.clone().unwrap_or_default();
    if status.observed_generation != quota.metadata.generation {
        // New limits may let waiting instances in.
        ctx.memory.decisions.capacity_changed();
    }
    status.observed_generation = quota.metadata.generation;
    let in_force = chosen
        .as_ref()
        .is_some_and(|q| q.name_any() == quota.name_any());
    if in_force {
        let seed = Seed {
            pools: BTreeSet::new(),
            namespaces: [namespace.clone()].into(),
        };
        let (gathered, decision) = wake_admitted(&ctx, seed, now);
        let mine = |c: &&Claim| c.namespace == namespace;
        let holders: Vec<&Claim> = gathered.running().filter(mine).collect();
        let queued = gathered
            .world
            .queued
            .iter()
            .filter(|c| c.claim.namespace == namespace && !decision.admits(&c.key))
            .count() as u32;
        status.active = holders.len() as u32;
        status.queued = queued;
        status.excess = quota
            .spec
            .max_queued
            .map_or(0, |max| queued.saturating_sub(max));
        let cpu: i128 = holders.iter().map(|c| c.cpu).sum();
        let memory: i128 = holders.iter().map(|c| c.memory).sum();
        status.requests = Some(QuotaRequests {
            cpu: Some(k8s_openapi::apimachinery::pkg::api::resource::Quantity(
                quantity::show(cpu, false),
            )),
            memory: Some(k8s_openapi::apimachinery::pkg::api::resource::Quantity(
                quantity::show(memory, true),
            )),
        });
        valid(
            &mut status.conditions,
            ConditionStatus::True,
            "Valid",
            "",
            quota.metadata.generation,
            now,
        );
    } else {
        let other = chosen.map(|q| q.name_any()).unwrap_or_default();
        status = QuotaStatus {
            conditions: status.conditions,
            observed_generation: status.observed_generation,
            ..QuotaStatus::default()
        };
        valid(
            &mut status.conditions,
            ConditionStatus::False,
            "DuplicateQuota",
            &format!(
                "namespace {namespace} already has Quota {other}: at most one Quota per namespace is used"
            ),
            quota.metadata.generation,
            now,
        );
    }
    ctx.write_status(&*quota, status).await?;
    Ok(Action::requeue(REFRESH))
}

/// What to do after a failed Quota reconcile.
pub fn quota_error_policy(quota: Arc<Quota>, error: &Error, ctx: Arc<Context>) -> Action {
    ctx.requeue_after_error(&*quota, error, None, REFRESH)
}

/// How many more instances the namespace's Quota lets wait in Queued, and the message of a
/// refusal once none may; `None` without a `spec.maxQueued`.
pub fn queue_room(ctx: &Context, namespace: &str) -> Option<(u32, String)> {
    let quota = quota_of(ctx, namespace)?;
    let max = quota.spec.max_queued?;
    let queued = ctx
        .instances
        .state()
        .iter()
        .filter(|i| i.namespace().as_deref() == Some(namespace))
        .filter(|i| {
            i.status
                .as_ref()
                .is_none_or(|s| s.state == InstanceState::Queued)
        })
        .count() as u32;
    let message = format!(
        "waiting for room in Quota {namespace}/{}: {queued} of {max} instances queued (spec.maxQueued)",
        quota.name_any()
    );
    Some((max.saturating_sub(queued), message))
}
