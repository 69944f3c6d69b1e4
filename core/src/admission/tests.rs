use super::*;
use proptest::prelude::*;
use std::collections::BTreeSet;

fn at(hour: i64) -> DateTime<Utc> {
    DateTime::from_timestamp(1_700_000_000 + hour * 3600, 0).expect("in range")
}

fn claim(namespace: &str, workflow: &str, pools: &[(&str, u32)]) -> Claim {
    Claim {
        namespace: namespace.into(),
        workflow: workflow.into(),
        pools: pools
            .iter()
            .map(|(name, slots)| PoolClaim {
                name: (*name).into(),
                slots: *slots,
            })
            .collect(),
        cpu: 0,
        memory: 0,
    }
}

fn candidate(key: &str, priority: u32, hour: i64, pools: &[(&str, u32)]) -> Candidate {
    let (namespace, _) = key.split_once('/').expect("namespace/name");
    Candidate {
        key: key.into(),
        claim: claim(namespace, "wf", pools),
        priority,
        logical: at(hour),
        concurrency: None,
    }
}

fn pool(slots: u32) -> PoolState {
    PoolState {
        slots,
        usage: BTreeMap::new(),
        half_life: 3600.0,
    }
}

fn world(pools: &[(&str, u32)], holders: Vec<Claim>, queued: Vec<Candidate>) -> World {
    World {
        pools: pools
            .iter()
            .map(|(name, slots)| ((*name).to_string(), pool(*slots)))
            .collect(),
        quotas: BTreeMap::new(),
        holders,
        queued,
        focus: None,
    }
}

#[test]
fn priority_then_fair_share_then_older_partition() {
    let mut w = world(
        &[("gpu", 2)],
        vec![],
        vec![
            candidate("a/old", 50, 1, &[("gpu", 1)]),
            candidate("a/new", 50, 2, &[("gpu", 1)]),
            candidate("b/urgent", 80, 9, &[("gpu", 1)]),
            candidate("b/old", 50, 0, &[("gpu", 1)]),
        ],
    );
    w.pools.get_mut("gpu").unwrap().usage = [("a".to_string(), 10.0), ("b".to_string(), 500.0)]
        .into_iter()
        .collect();
    let d = decide(&w);
    // Once the pool is closed the rest of the line is left undecided, unless in focus.
    assert_eq!(d.undecided, 1);
    assert!(!d.waiting.contains_key("b/old"));
    w.focus = Some("b/old".into());
    let d = decide(&w);
    assert_eq!(d.undecided, 0);
    // Priority 80 first, then namespace a (less usage) although b's partition is older.
    assert_eq!(d.admitted, ["b/urgent", "a/old"]);
    assert_eq!(
        d.waiting["a/new"].message("a", "wf"),
        "waiting for 1 slot of pool gpu (2 of 2 used): 1st in line at priority 50"
    );
    assert_eq!(
        d.waiting["b/old"].message("b", "wf"),
        "waiting for 1 slot of pool gpu (2 of 2 used): 2nd in line at priority 50"
    );
    assert_eq!(d.used["gpu"], 2);
}

#[test]
fn equal_usage_alternates_between_namespaces() {
    let queued = (0..3)
        .flat_map(|i| {
            [
                candidate(&format!("a/{i}"), 50, i, &[("p", 1)]),
                candidate(&format!("b/{i}"), 50, i + 10, &[("p", 1)]),
            ]
        })
        .collect();
    let d = decide(&world(&[("p", 4)], vec![], queued));
    // Fewer slots held now breaks the tie, so neither namespace takes all four.
    assert_eq!(d.admitted, ["a/0", "b/0", "a/1", "b/1"]);
}

#[test]
fn an_instance_that_does_not_fit_is_not_passed_over() {
    let d = decide(&world(
        &[("p", 3)],
        vec![claim("x", "other", &[("p", 2)])],
        vec![
            candidate("a/big", 90, 0, &[("p", 2)]),
            candidate("b/small", 10, 0, &[("p", 1)]),
        ],
    ));
    assert!(d.admitted.is_empty(), "{d:?}");
    assert_eq!(d.undecided, 1, "left in line behind a/big");
}

#[test]
fn missing_pools_too_big_claims_and_other_limits_do_not_hold_the_line() {
    let mut w = world(
        &[("p", 2)],
        vec![],
        vec![
            candidate("a/nopool", 90, 0, &[("p", 1), ("missing", 1)]),
            candidate("a/huge", 90, 0, &[("p", 3)]),
            Candidate {
                concurrency: Some(0),
                ..candidate("a/limited", 90, 0, &[("p", 1)])
            },
            candidate("b/quota", 90, 0, &[("p", 1)]),
            candidate("c/fine", 10, 0, &[("p", 1)]),
        ],
    );
    w.quotas.insert(
        "b".into(),
        QuotaLimits {
            name: "limits".into(),
            max_active: Some(0),
            ..QuotaLimits::default()
        },
    );
    let d = decide(&w);
    assert_eq!(d.admitted, ["c/fine"]);
    let message = |key: &str| {
        let ns = key.split('/').next().unwrap();
        d.waiting[key].message(ns, "wf")
    };
    assert_eq!(
        message("a/nopool"),
        "waiting for pool missing, which does not exist (spec.pools names it; create the Pool to run)"
    );
    assert_eq!(
        message("a/huge"),
        "waiting for pool p: each attempt needs 3 slots and the pool has 2"
    );
    assert_eq!(
        message("a/limited"),
        "waiting for a slot of workflow wf (spec.concurrency: 0)"
    );
    assert_eq!(
        message("b/quota"),
        "waiting for Quota b/limits: 0 of 0 attempts active (spec.maxActive)"
    );
}

#[test]
fn a_pool_shrunk_below_its_use_admits_nothing() {
    let holders = (0..5).map(|_| claim("a", "wf", &[("p", 1)])).collect();
    let d = decide(&world(
        &[("p", 3)],
        holders,
        vec![candidate("b/x", 100, 0, &[("p", 1)])],
    ));
    assert!(d.admitted.is_empty());
    assert_eq!(d.used["p"], 5);
}

#[test]
fn quota_requests_are_summed() {
    let mut w = world(&[], vec![], vec![]);
    w.quotas.insert(
        "a".into(),
        QuotaLimits {
            name: "q".into(),
            cpu: quantity::milli("2"),
            memory: quantity::milli("1Gi"),
            ..QuotaLimits::default()
        },
    );
    let mut running = claim("a", "wf", &[]);
    running.cpu = 1500;
    w.holders.push(running);
    let mut small = candidate("a/small", 50, 1, &[]);
    small.claim.cpu = 500;
    let mut big = candidate("a/big", 50, 0, &[]);
    big.claim.cpu = 1000;
    w.queued = vec![big, small];
    let d = decide(&w);
    assert_eq!(d.admitted, ["a/small"]);
    assert_eq!(
        d.waiting["a/big"].message("a", "wf"),
        "waiting for Quota a/q: cpu requests 1500m of 2 in use and the attempt needs 1 (spec.requests.cpu)"
    );
}

#[test]
fn usage_halves_every_half_life_and_accrues_slot_seconds() {
    assert!((accrue(100.0, 0, 3600.0, 3600.0) - 50.0).abs() < 1e-9);
    // Held for a very short time: about held × elapsed.
    assert!((accrue(0.0, 2, 1.0, 3600.0) - 2.0).abs() < 1e-3);
    assert_eq!(accrue(100.0, 4, 10.0, 0.0), 0.0);
    assert_eq!(accrue(7.0, 4, 0.0, 60.0), 7.0);
    // Steady state: held × h / ln 2.
    let steady = (0..1000).fold(0.0, |u, _| accrue(u, 1, 60.0, 600.0));
    assert!((steady - 600.0 / std::f64::consts::LN_2).abs() < 1e-6);
    let held = [("a".to_string(), 1)].into_iter().collect();
    let usage = [("gone".to_string(), 1e-9)].into_iter().collect();
    let now = usage_at(&usage, &held, at(0), at(1), 3600.0);
    assert_eq!(now.keys().collect::<Vec<_>>(), ["a"]);
}

#[test]
fn max_queued_refuses_what_would_exceed_it() {
    assert_eq!(max_queued_refusal("a", "q", 3, 2, 1), None);
    assert_eq!(
        max_queued_refusal("a", "q", 3, 2, 2).as_deref(),
        Some(
            "refused by Quota a/q: 2 of 3 instances queued (spec.maxQueued), 2 more would exceed it"
        )
    );
    assert!(max_queued_refusal("a", "q", 0, 0, 1).is_some());
}

#[test]
fn ordinals() {
    let got: Vec<String> = [1, 2, 3, 4, 11, 12, 13, 21, 22, 101, 111]
        .into_iter()
        .map(ordinal)
        .collect();
    assert_eq!(
        got,
        [
            "1st", "2nd", "3rd", "4th", "11th", "12th", "13th", "21st", "22nd", "101st", "111th"
        ]
    );
}

fn arbitrary_world() -> impl Strategy<Value = World> {
    let pools = prop::collection::vec(0u32..6, 1..3);
    let holders = prop::collection::vec((0usize..3, 0usize..2, 1u32..3), 0..8);
    let queued = prop::collection::vec((0usize..3, 0usize..2, 1u32..3, 0u32..4, 0i64..5), 0..20);
    let quotas = prop::collection::vec(prop::option::of(0u32..4), 3);
    let usage = prop::collection::vec(0.0f64..100.0, 3);
    (pools, holders, queued, quotas, usage).prop_map(|(pools, holders, queued, quotas, usage)| {
        let ns = |i: usize| format!("ns{i}");
        let pool_name = |i: usize| format!("p{}", i % pools.len());
        World {
            pools: pools
                .iter()
                .enumerate()
                .map(|(i, slots)| {
                    let usage = usage.iter().enumerate().map(|(n, u)| (ns(n), *u)).collect();
                    (
                        format!("p{i}"),
                        PoolState {
                            slots: *slots,
                            usage,
                            half_life: 3600.0,
                        },
                    )
                })
                .collect(),
            quotas: quotas
                .iter()
                .enumerate()
                .filter_map(|(n, max)| {
                    max.map(|max| {
                        (
                            ns(n),
                            QuotaLimits {
                                name: "q".into(),
                                max_active: Some(max),
                                ..QuotaLimits::default()
                            },
                        )
                    })
                })
                .collect(),
            holders: holders
                .iter()
                .map(|(n, p, slots)| claim(&ns(*n), "wf", &[(&pool_name(*p), *slots)]))
                .collect(),
            queued: queued
                .iter()
                .enumerate()
                .map(|(i, (n, p, slots, priority, hour))| {
                    candidate(
                        &format!("{}/i{i}", ns(*n)),
                        priority * 25,
                        *hour,
                        &[(&pool_name(*p), *slots)],
                    )
                })
                .collect(),
            focus: None,
        }
    })
}

proptest! {
    #[test]
    fn never_over_slots_or_quota_and_never_passed_over(world in arbitrary_world()) {
        let d = decide(&world);
        let by_key: BTreeMap<&str, &Candidate> =
            world.queued.iter().map(|c| (c.key.as_str(), c)).collect();
        // Every candidate is decided exactly once.
        prop_assert_eq!(d.admitted.len() + d.waiting.len() + d.undecided, world.queued.len());
        // Those left undecided all wait for pools that were closed.
        let decided: BTreeSet<&str> = d.admitted.iter().chain(d.waiting.keys()).map(String::as_str).collect();
        for c in world.queued.iter().filter(|c| !decided.contains(c.key.as_str())) {
            prop_assert!(!c.claim.pools.is_empty());
        }
        for (name, pool) in &world.pools {
            let before: u32 = world.holders.iter()
                .flat_map(|h| &h.pools).filter(|p| &p.name == name).map(|p| p.slots).sum();
            let added: u32 = d.admitted.iter()
                .flat_map(|k| &by_key[k.as_str()].claim.pools)
                .filter(|p| &p.name == name).map(|p| p.slots).sum();
            if before >= pool.slots {
                prop_assert_eq!(added, 0, "pool {} over its slots admitted more", name);
            } else {
                prop_assert!(before + added <= pool.slots, "pool {} over its slots", name);
            }
        }
        for (namespace, quota) in &world.quotas {
            let max = quota.max_active.unwrap_or(u32::MAX) as usize;
            let before = world.holders.iter().filter(|h| &h.namespace == namespace).count();
            let added = d.admitted.iter().filter(|k| &by_key[k.as_str()].claim.namespace == namespace).count();
            prop_assert!(added == 0 || before + added <= max, "quota of {} exceeded", namespace);
        }
        for admitted in &d.admitted {
            let a = by_key[admitted.as_str()];
            for (key, wait) in &d.waiting {
                let w = by_key[key.as_str()];
                let shares = w.claim.pools.iter().any(|p| a.claim.pools.iter().any(|q| q.name == p.name));
                if wait.is_pool() && shares {
                    prop_assert!(w.priority <= a.priority,
                        "{} (priority {}) waits for a pool while {} (priority {}) was admitted",
                        key, w.priority, admitted, a.priority);
                }
            }
        }
    }

    #[test]
    fn equal_priority_namespaces_both_progress(slots in 1u32..4, rounds in 20usize..60) {
        // Two namespaces always have work queued; each round every attempt ends after one
        // time unit and usage accrues. Neither namespace is left without slots for long.
        let mut usage: BTreeMap<String, f64> = BTreeMap::new();
        let mut served: BTreeMap<String, usize> = BTreeMap::new();
        let mut since_served: BTreeMap<String, usize> = BTreeMap::new();
        for round in 0..rounds {
            let queued = ["a", "b"].iter().flat_map(|ns| {
                (0..3).map(move |i| candidate(&format!("{ns}/{round}-{i}"), 50, round as i64, &[("p", 1)]))
            }).collect();
            let mut w = world(&[("p", slots)], vec![], queued);
            w.pools.get_mut("p").unwrap().usage = usage.clone();
            let d = decide(&w);
            let mut held: BTreeMap<String, u32> = BTreeMap::new();
            for key in &d.admitted {
                let ns = key.split('/').next().unwrap().to_string();
                *held.entry(ns.clone()).or_default() += 1;
                *served.entry(ns).or_default() += 1;
            }
            for ns in ["a", "b"] {
                let gap = since_served.entry(ns.into()).or_default();
                *gap = if held.contains_key(ns) { 0 } else { *gap + 1 };
                prop_assert!(*gap <= 2, "namespace {} waited {} rounds", ns, gap);
            }
            usage = usage_at(&usage, &held, at(0), at(0) + chrono::Duration::seconds(60), 3600.0);
        }
        let (a, b) = (served["a"] as f64, served["b"] as f64);
        prop_assert!((a - b).abs() <= 1.0 + 0.1 * a.max(b), "a {} b {}", a, b);
    }
}
