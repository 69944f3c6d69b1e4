//! Admission to pools and quotas (SPEC §13): given what live attempts hold and which
//! instances wait, who may start now and, for the others, what each waits for and its place
//! in line. Pure: the adapter gathers the inputs from its caches and applies the decision.
//!
//! Order among the instances that want a pool: higher priority first; at equal priority the
//! namespace with the least decayed usage of the pool, counting each slot it holds now as one
//! half-life of use (fair share); then the older partition. An instance that does not fit closes every
//! pool it names for the rest of the decision, so nobody after it in line takes the slots it
//! waits for (it is never passed over). Instances that wait for something else (their
//! workflow's concurrency, their namespace's Quota, a pool that does not exist) step aside
//! without holding anybody up.
//!
//! Usage is slot-seconds decaying with the pool's half-life ([`accrue`]); what is held is
//! always recomputed from the live instances, never counted up and down, so a lost event or
//! a restart cannot leak a slot.

use std::cmp::Ordering;
use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Utc};

use crate::quantity;
use crate::resources::PoolClaim;

/// A pool as admission sees it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PoolState {
    /// `spec.slots`.
    pub slots: u32,
    /// Decayed usage (slot-seconds) per namespace, brought up to now.
    pub usage: BTreeMap<String, f64>,
    /// `spec.usageHalfLife` in seconds: what one slot held now counts for in the fair-share
    /// order, beside the decayed usage.
    pub half_life: f64,
}

/// A namespace's Quota as admission sees it (quantities in thousandths).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct QuotaLimits {
    /// The Quota's name, for messages.
    pub name: String,
    /// `spec.maxActive`.
    pub max_active: Option<u32>,
    /// `spec.requests.cpu`, in millicores.
    pub cpu: Option<i128>,
    /// `spec.requests.memory`, in thousandths of a byte.
    pub memory: Option<i128>,
}

/// What one attempt asks for: the same whether it holds it already or waits for it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Claim {
    /// The instance's namespace.
    pub namespace: String,
    /// Its workflow.
    pub workflow: String,
    /// The pools it names (`spec.pools`).
    pub pools: Vec<PoolClaim>,
    /// Its containers' CPU requests, in millicores.
    pub cpu: i128,
    /// Its containers' memory requests, in thousandths of a byte.
    pub memory: i128,
}

/// An instance that waits to start an attempt.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Candidate {
    /// Unique key (`namespace/name`): what the decision names.
    pub key: String,
    /// What its attempt would hold.
    pub claim: Claim,
    /// 0–100 (the backfill's, else the workflow's).
    pub priority: u32,
    /// The partition's logical instant: older partitions first.
    pub logical: DateTime<Utc>,
    /// The workflow's `spec.concurrency`.
    pub concurrency: Option<u32>,
}

/// Everything admission looks at.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct World {
    /// Pools by name (a pool missing here does not exist).
    pub pools: BTreeMap<String, PoolState>,
    /// Quotas by namespace.
    pub quotas: BTreeMap<String, QuotaLimits>,
    /// What live attempts hold.
    pub holders: Vec<Claim>,
    /// Instances waiting to start.
    pub queued: Vec<Candidate>,
    /// A candidate to decide even once the rest of the line would be left undecided (the
    /// instance being reconciled).
    pub focus: Option<String>,
}

/// Why a candidate was not admitted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Wait {
    /// A pool it names does not exist (yet).
    NoPool { pool: String },
    /// It needs more slots of a pool than the pool has at all.
    TooBig {
        pool: String,
        slots: u32,
        needs: u32,
    },
    /// The slots of a pool are taken (or held for someone before it in line).
    Pool {
        pool: String,
        used: u32,
        slots: u32,
        needs: u32,
        /// 1-based place among those waiting for this pool.
        place: usize,
        priority: u32,
    },
    /// The workflow's own concurrency limit.
    Concurrency { limit: u32 },
    /// The namespace's Quota: `spec.maxActive`.
    MaxActive {
        quota: String,
        active: u32,
        limit: u32,
    },
    /// The namespace's Quota: `spec.requests.<resource>`.
    Requests {
        quota: String,
        resource: &'static str,
        used: i128,
        limit: i128,
        needs: i128,
    },
}

impl Wait {
    /// The message a waiting instance shows.
    pub fn message(&self, namespace: &str, workflow: &str) -> String {
        match self {
            Wait::NoPool { pool } => format!(
                "waiting for pool {pool}, which does not exist (spec.pools names it; create the Pool to run)"
            ),
            Wait::TooBig { pool, slots, needs } => format!(
                "waiting for pool {pool}: each attempt needs {needs} slots and the pool has {slots}"
            ),
            Wait::Pool {
                pool,
                used,
                slots,
                needs,
                place,
                priority,
            } => format!(
                "waiting for {needs} {} of pool {pool} ({used} of {slots} used): {} in line at priority {priority}",
                if *needs == 1 { "slot" } else { "slots" },
                ordinal(*place)
            ),
            Wait::Concurrency { limit } => {
                format!("waiting for a slot of workflow {workflow} (spec.concurrency: {limit})")
            }
            Wait::MaxActive {
                quota,
                active,
                limit,
            } => format!(
                "waiting for Quota {namespace}/{quota}: {active} of {limit} attempts active (spec.maxActive)"
            ),
            Wait::Requests {
                quota,
                resource,
                used,
                limit,
                needs,
            } => {
                let binary = *resource == "memory";
                format!(
                    "waiting for Quota {namespace}/{quota}: {resource} requests {} of {} in use and the attempt needs {} (spec.requests.{resource})",
                    quantity::show(*used, binary),
                    quantity::show(*limit, binary),
                    quantity::show(*needs, binary)
                )
            }
        }
    }

    /// Whether the wait is for a pool's slots (it then holds the line).
    pub fn is_pool(&self) -> bool {
        matches!(self, Wait::Pool { .. })
    }
}

fn ordinal(n: usize) -> String {
    let suffix = match (n % 10, n % 100) {
        (_, 11..=13) => "th",
        (1, _) => "st",
        (2, _) => "nd",
        (3, _) => "rd",
        _ => "th",
    };
    format!("{n}{suffix}")
}

/// Who may start now and why the others wait.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Decision {
    /// Admitted keys, in the order they were admitted.
    pub admitted: Vec<String>,
    /// Every other candidate: why it waits.
    pub waiting: BTreeMap<String, Wait>,
    /// Per pool: slots held after the admissions.
    pub used: BTreeMap<String, u32>,
    /// Candidates left in line once every pool was closed (each waits for a closed pool;
    /// they are in neither list).
    pub undecided: usize,
}

impl Decision {
    /// Whether `key` was admitted.
    pub fn admits(&self, key: &str) -> bool {
        self.admitted.iter().any(|k| k == key)
    }
}

/// Running totals while a decision is made.
#[derive(Default)]
struct Tally {
    pool: BTreeMap<String, u32>,
    /// Pool → namespace → slots held (nested, so lookups borrow their keys).
    pool_namespace: BTreeMap<String, BTreeMap<String, u32>>,
    active: BTreeMap<String, u32>,
    cpu: BTreeMap<String, i128>,
    memory: BTreeMap<String, i128>,
    /// Namespace → workflow → attempts active.
    workflow: BTreeMap<String, BTreeMap<String, u32>>,
}

/// `map[outer][inner]`, or 0.
fn nested(map: &BTreeMap<String, BTreeMap<String, u32>>, outer: &str, inner: &str) -> u32 {
    map.get(outer)
        .and_then(|m| m.get(inner))
        .copied()
        .unwrap_or(0)
}

/// Adds `by` to `map[key]` without allocating when the key is there.
fn bump<V: std::ops::AddAssign + Default>(map: &mut BTreeMap<String, V>, key: &str, by: V) {
    match map.get_mut(key) {
        Some(v) => *v += by,
        None => {
            map.insert(key.to_string(), by);
        }
    }
}

impl Tally {
    fn hold(&mut self, claim: &Claim) {
        let ns = claim.namespace.as_str();
        for p in &claim.pools {
            bump(&mut self.pool, &p.name, p.slots);
            if !self.pool_namespace.contains_key(&p.name) {
                self.pool_namespace.insert(p.name.clone(), BTreeMap::new());
            }
            if let Some(by_ns) = self.pool_namespace.get_mut(&p.name) {
                bump(by_ns, ns, p.slots);
            }
        }
        bump(&mut self.active, ns, 1);
        bump(&mut self.cpu, ns, claim.cpu);
        bump(&mut self.memory, ns, claim.memory);
        if !self.workflow.contains_key(ns) {
            self.workflow.insert(ns.to_string(), BTreeMap::new());
        }
        if let Some(by_wf) = self.workflow.get_mut(ns) {
            bump(by_wf, &claim.workflow, 1);
        }
    }
}

/// A candidate's fair-share standing, summed over the pools it names: its namespace's decayed
/// usage plus the slots it holds now, each counted as one half-life of use (so a namespace
/// whose attempts are long is charged for them while they run, not only once they have run),
/// then the slots held alone.
fn standing(world: &World, tally: &Tally, c: &Candidate) -> (f64, u32) {
    let mut share = 0.0;
    let mut held = 0;
    for p in &c.claim.pools {
        let holds = nested(&tally.pool_namespace, &p.name, &c.claim.namespace);
        if let Some(pool) = world.pools.get(&p.name) {
            share += pool.usage.get(&c.claim.namespace).copied().unwrap_or(0.0)
                + f64::from(holds) * pool.half_life;
        }
        held += holds;
    }
    (share, held)
}

/// Decides who starts now (see the module docs for the order).
pub fn decide(world: &World) -> Decision {
    let mut tally = Tally::default();
    for holder in &world.holders {
        tally.hold(holder);
    }
    // Each namespace's line, best first; the next admitted is the best of the heads.
    let mut lines: BTreeMap<&str, Vec<&Candidate>> = BTreeMap::new();
    for c in &world.queued {
        lines.entry(c.claim.namespace.as_str()).or_default().push(c);
    }
    for line in lines.values_mut() {
        line.sort_by(|a, b| {
            b.priority
                .cmp(&a.priority)
                .then(a.logical.cmp(&b.logical))
                .then(a.key.cmp(&b.key))
        });
        line.reverse(); // popped from the back
    }
    let mut poolless = world
        .queued
        .iter()
        .filter(|c| c.claim.pools.is_empty())
        .count();
    let mut closed: BTreeSet<&str> = BTreeSet::new();
    let mut in_line: BTreeMap<&str, usize> = BTreeMap::new();
    let mut decision = Decision::default();
    loop {
        let mut best: Option<(&str, &Candidate, (f64, u32))> = None;
        for (namespace, line) in &lines {
            let Some(head) = line.last() else { continue };
            let standing = standing(world, &tally, head);
            let better = match &best {
                None => true,
                Some((_, b, bs)) => {
                    let order = b
                        .priority
                        .cmp(&head.priority)
                        .then(standing.0.total_cmp(&bs.0))
                        .then(standing.1.cmp(&bs.1))
                        .then(head.logical.cmp(&b.logical))
                        .then(head.key.cmp(&b.key));
                    order == Ordering::Less
                }
            };
            if better {
                best = Some((namespace, head, standing));
            }
        }
        let Some((namespace, c, _)) = best else { break };
        lines.get_mut(namespace).and_then(|line| line.pop());
        if c.claim.pools.is_empty() {
            poolless -= 1;
        }
        match blocked(world, &tally, &closed, &mut in_line, c) {
            None => {
                tally.hold(&c.claim);
                decision.admitted.push(c.key.clone());
            }
            Some(wait) => {
                if wait.is_pool() {
                    for p in &c.claim.pools {
                        if let Some((name, _)) = world.pools.get_key_value(&p.name) {
                            closed.insert(name.as_str());
                        }
                    }
                }
                decision.waiting.insert(c.key.clone(), wait);
            }
        }
        // Every pool closed and nobody left who needs none: the rest of the line waits.
        let focus_decided = world.focus.as_ref().is_none_or(|k| {
            decision.waiting.contains_key(k) || decision.admitted.iter().any(|a| a == k)
        });
        if poolless == 0
            && focus_decided
            && !world.pools.is_empty()
            && closed.len() == world.pools.len()
        {
            decision.undecided = lines.values().map(Vec::len).sum();
            break;
        }
    }
    decision.used = world
        .pools
        .keys()
        .map(|name| (name.clone(), tally.pool.get(name).copied().unwrap_or(0)))
        .collect();
    decision
}

/// Why `c` cannot start now, if it cannot.
fn blocked<'w>(
    world: &'w World,
    tally: &Tally,
    closed: &BTreeSet<&str>,
    in_line: &mut BTreeMap<&'w str, usize>,
    c: &Candidate,
) -> Option<Wait> {
    let namespace = &c.claim.namespace;
    for p in &c.claim.pools {
        match world.pools.get(&p.name) {
            None => {
                return Some(Wait::NoPool {
                    pool: p.name.clone(),
                });
            }
            // A pool with no slots is paused: its instances wait in line.
            Some(pool) if p.slots > pool.slots && pool.slots > 0 => {
                return Some(Wait::TooBig {
                    pool: p.name.clone(),
                    slots: pool.slots,
                    needs: p.slots,
                });
            }
            Some(_) => {}
        }
    }
    if let Some(limit) = c.concurrency {
        let active = nested(&tally.workflow, namespace, &c.claim.workflow);
        if active >= limit {
            return Some(Wait::Concurrency { limit });
        }
    }
    if let Some(quota) = world.quotas.get(namespace) {
        let active = tally.active.get(namespace).copied().unwrap_or(0);
        if let Some(limit) = quota.max_active
            && active >= limit
        {
            return Some(Wait::MaxActive {
                quota: quota.name.clone(),
                active,
                limit,
            });
        }
        for (resource, limit, used, needs) in [
            ("cpu", quota.cpu, &tally.cpu, c.claim.cpu),
            ("memory", quota.memory, &tally.memory, c.claim.memory),
        ] {
            let used = used.get(namespace).copied().unwrap_or(0);
            // An attempt asking for more than the whole quota still runs alone, so it is not
            // stuck for ever.
            if let Some(limit) = limit
                && used + needs > limit
                && used > 0
            {
                return Some(Wait::Requests {
                    quota: quota.name.clone(),
                    resource,
                    used,
                    limit,
                    needs,
                });
            }
        }
    }
    let mut wait = None;
    for p in &c.claim.pools {
        let Some((name, pool)) = world.pools.get_key_value(&p.name) else {
            continue;
        };
        let used = tally.pool.get(&p.name).copied().unwrap_or(0);
        let free = pool.slots.saturating_sub(used);
        if closed.contains(name.as_str()) || free < p.slots {
            let place = in_line.entry(name.as_str()).or_default();
            *place += 1;
            if wait.is_none() {
                wait = Some(Wait::Pool {
                    pool: p.name.clone(),
                    used,
                    slots: pool.slots,
                    needs: p.slots,
                    place: *place,
                    priority: c.priority,
                });
            }
        }
    }
    wait
}

/// Why an ad-hoc trigger or a backfill adding `adding` queued instances to a namespace that
/// has `queued` is refused by its Quota `quota` allowing `max` (`spec.maxQueued`).
pub fn max_queued_refusal(
    namespace: &str,
    quota: &str,
    max: u32,
    queued: u32,
    adding: u32,
) -> Option<String> {
    (queued.saturating_add(adding) > max).then(|| {
        format!(
            "refused by Quota {namespace}/{quota}: {queued} of {max} instances queued (spec.maxQueued), {adding} more would exceed it"
        )
    })
}

/// A namespace's decayed usage after `elapsed` seconds during which it held `held` slots:
/// the old usage halves every `half_life` seconds, and each slot-second held adds one,
/// decaying from when it was used. A half-life of 0 forgets everything at once.
pub fn accrue(usage: f64, held: u32, elapsed: f64, half_life: f64) -> f64 {
    if elapsed <= 0.0 {
        return usage;
    }
    if half_life <= 0.0 {
        return 0.0;
    }
    let keep = 0.5f64.powf(elapsed / half_life);
    // ∫₀ᵉ held·½^((e−t)/h) dt = held·h/ln2·(1 − ½^(e/h))
    usage * keep + f64::from(held) * half_life / std::f64::consts::LN_2 * (1.0 - keep)
}

/// The usage of every namespace of a pool brought from `since` to `now`, given what each
/// holds (assumed held throughout; the controller brings usage up to date often).
pub fn usage_at(
    usage: &BTreeMap<String, f64>,
    held: &BTreeMap<String, u32>,
    since: DateTime<Utc>,
    now: DateTime<Utc>,
    half_life: f64,
) -> BTreeMap<String, f64> {
    let elapsed = (now - since).num_milliseconds().max(0) as f64 / 1000.0;
    let namespaces: BTreeSet<&String> = usage.keys().chain(held.keys()).collect();
    namespaces
        .into_iter()
        .map(|ns| {
            let before = usage.get(ns).copied().unwrap_or(0.0);
            let held = held.get(ns).copied().unwrap_or(0);
            (ns.clone(), accrue(before, held, elapsed, half_life))
        })
        .filter(|(ns, u)| *u > 1e-3 || held.get(ns).is_some_and(|h| *h > 0))
        .collect()
}

#[cfg(test)]
mod tests;
