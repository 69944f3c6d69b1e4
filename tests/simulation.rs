//! Simulated-time runs of the pure core: the trigger planner and the instance state machine
//! composed the way the controller composes them, with a fake cluster that runs each Job for a
//! while and reports an exit code. Days of schedule run in milliseconds.

use std::collections::BTreeMap;

use charon_core::instance::{self, Action, Instance, JobStatus, Observation, State};
use charon_core::names;
use charon_core::retry::{AttemptOutcome, RetryPolicy};
use charon_core::schedule::Schedule;
use charon_core::trigger::{TriggerPolicy, plan_natural};
use chrono::{DateTime, Duration, Utc};

fn utc(s: &str) -> DateTime<Utc> {
    s.parse().expect("test timestamp")
}

/// Decides each attempt's outcome from (parameter, try number).
type Script = Box<dyn Fn(&str, u32) -> AttemptOutcome>;

/// A Job in the fake cluster: when it started and how its attempt ends.
struct FakeJob {
    started: DateTime<Utc>,
    runs_for: Duration,
    outcome: AttemptOutcome,
}

struct World {
    schedule: Schedule,
    policy: RetryPolicy,
    concurrency: Option<usize>,
    instances: BTreeMap<String, (String, Instance)>, // name -> (parameter, state)
    jobs: BTreeMap<String, FakeJob>,
    jobs_created: usize,
    max_active: usize,
    script: Script,
}

impl World {
    fn new(schedule: Schedule, script: Script) -> World {
        World {
            schedule,
            policy: RetryPolicy::default(),
            concurrency: None,
            instances: BTreeMap::new(),
            jobs: BTreeMap::new(),
            jobs_created: 0,
            max_active: 0,
            script,
        }
    }

    fn job_status(&self, instance: &Instance, now: DateTime<Utc>) -> JobStatus {
        match instance.job.as_ref().and_then(|j| self.jobs.get(j)) {
            None => JobStatus::Missing,
            Some(job) if now >= job.started + job.runs_for => {
                JobStatus::Finished(job.outcome.clone())
            }
            Some(job) => JobStatus::Running(Some(job.started)),
        }
    }

    /// One reconcile of every instance at `now`, oldest partition first, until nothing moves.
    fn reconcile_instances(&mut self, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let mut wake: Option<DateTime<Utc>> = None;
        for _ in 0..4 {
            let names: Vec<String> = self.instances.keys().cloned().collect();
            for name in names {
                let (parameter, current) = self.instances[&name].clone();
                let active = self
                    .instances
                    .values()
                    .filter(|(_, i)| i.state.is_active())
                    .count();
                let slot = match self.concurrency {
                    Some(limit) if !current.state.is_active() && active >= limit => Err(format!(
                        "waiting for a slot: {active} of {limit} active (spec.concurrency)"
                    )),
                    _ => Ok(()),
                };
                let observation = Observation {
                    halted: false,
                    retry_now: false,
                    slot,
                    job: self.job_status(&current, now),
                    running_timeout: None,
                    suspended: false,
                    dependencies: Ok(()),
                    dependency_deadline: None,
                    kueue_queue: None,
                };
                let step =
                    instance::step(&current, &observation, &self.policy, now, &mut |n| n - 1);
                for action in &step.actions {
                    match action {
                        Action::CreateJob { name: job, .. } => {
                            if !self.jobs.contains_key(job) {
                                self.jobs_created += 1;
                                let outcome = (self.script)(&parameter, step.instance.tries);
                                self.jobs.insert(
                                    job.clone(),
                                    FakeJob {
                                        started: now,
                                        runs_for: Duration::minutes(5),
                                        outcome,
                                    },
                                );
                            }
                        }
                        Action::DeleteJob { name: job } => {
                            self.jobs.remove(job);
                        }
                        // Nothing in the simulation suspends an instance.
                        Action::SuspendJob { .. } => {}
                    }
                }
                if let Some(after) = step.requeue_after {
                    let at = now + after;
                    wake = Some(wake.map_or(at, |w| w.min(at)));
                }
                self.instances.insert(name, (parameter, step.instance));
                let active = self
                    .instances
                    .values()
                    .filter(|(_, i)| i.state.is_active())
                    .count();
                self.max_active = self.max_active.max(active);
            }
        }
        // Running Jobs finish 5 minutes after they start.
        for job in self.jobs.values() {
            let done = job.started + job.runs_for;
            if done > now {
                wake = Some(wake.map_or(done, |w| w.min(done)));
            }
        }
        wake
    }

    /// Runs the world from `start` to `end`, waking at trigger times, retry times and Job ends.
    fn run(&mut self, created: DateTime<Utc>, end: DateTime<Utc>) {
        let mut cursor = created;
        let mut now = created;
        while now < end {
            let plan = plan_natural(
                &self.schedule,
                TriggerPolicy::default(),
                cursor,
                None,
                now,
                1000,
            );
            for due in &plan.trigger {
                let parameter = self.schedule.parameter(due.logical);
                let name = names::instance_name("hb", &parameter);
                // Creating an existing instance is refused: exactly once per partition.
                self.instances.entry(name.clone()).or_insert_with(|| {
                    (
                        parameter,
                        Instance {
                            name,
                            ..Default::default()
                        },
                    )
                });
            }
            cursor = plan.cursor;
            let wake = self.reconcile_instances(now);
            let next_trigger = plan.next.map(|n| n.trigger_at);
            now = [wake, next_trigger, Some(end)]
                .into_iter()
                .flatten()
                .filter(|t| *t > now)
                .min()
                .unwrap_or(end);
        }
    }
}

#[test]
fn forty_eight_hours_of_an_hourly_workflow() {
    let schedule = Schedule::new("@hourly", None, None).expect("valid");
    let mut world = World::new(schedule, Box::new(|_, _| AttemptOutcome::Exited(0)));
    world.run(utc("2024-01-01T00:00:00Z"), utc("2024-01-03T00:30:00Z"));
    assert_eq!(world.instances.len(), 48);
    assert!(
        world
            .instances
            .values()
            .all(|(_, i)| i.state == State::Done && i.tries == 1)
    );
    assert_eq!(world.jobs_created, 48);
    let first = &world.instances["hb-2024-01-01t00"];
    assert_eq!(first.0, "2024-01-01T00");
    assert!(world.instances.contains_key("hb-2024-01-02t23"));
}

#[test]
fn retries_follow_the_exit_codes() {
    let schedule = Schedule::new("@daily", None, None).expect("valid");
    let script = |parameter: &str, attempt: u32| match (parameter, attempt) {
        ("2024-01-01", 1) => AttemptOutcome::Exited(20),
        ("2024-01-02", _) => AttemptOutcome::Exited(50),
        ("2024-01-03", 1 | 2) => AttemptOutcome::Exited(1),
        _ => AttemptOutcome::Exited(0),
    };
    let mut world = World::new(schedule, Box::new(script));
    world.run(utc("2024-01-01T00:00:00Z"), utc("2024-01-05T00:30:00Z"));
    let get = |p: &str| world.instances[&names::instance_name("hb", p)].1.clone();
    let missing_deps = get("2024-01-01");
    assert_eq!(
        (
            missing_deps.state,
            missing_deps.tries,
            missing_deps.counters.cost
        ),
        (State::Done, 2, 0.1)
    );
    let fatal = get("2024-01-02");
    assert_eq!((fatal.state, fatal.tries), (State::Error, 1));
    let flaky = get("2024-01-03");
    assert_eq!(
        (flaky.state, flaky.tries, flaky.counters.cost),
        (State::Done, 3, 2.0)
    );
    // Only the last Job of each instance is kept.
    assert_eq!(world.jobs.len(), world.instances.len());
}

#[test]
fn concurrency_is_never_exceeded_and_older_partitions_go_first() {
    let schedule = Schedule::new("*/1 * * * *", None, None).expect("valid");
    let mut world = World::new(schedule, Box::new(|_, _| AttemptOutcome::Exited(0)));
    world.concurrency = Some(2);
    world.run(utc("2024-01-01T00:00:00Z"), utc("2024-01-01T01:00:00Z"));
    assert_eq!(world.max_active, 2);
    // Jobs take 5 minutes and one is triggered each minute: a backlog forms and drains oldest
    // first, so every finished partition is older than every waiting one.
    let newest_done = world
        .instances
        .values()
        .filter(|(_, i)| i.state == State::Done)
        .map(|(p, _)| p.clone())
        .max()
        .expect("some finished");
    let oldest_waiting = world
        .instances
        .values()
        .filter(|(_, i)| i.state == State::Queued)
        .map(|(p, _)| p.clone())
        .min()
        .expect("some waiting");
    assert!(
        newest_done < oldest_waiting,
        "{newest_done} finished before {oldest_waiting}"
    );
    assert!(
        world
            .instances
            .values()
            .any(|(_, i)| i.state == State::Queued)
    );
}

/// One simulated day of a 4-slot pool contended by three namespaces, through the same pure
/// admission and usage decay the operator applies: teams a and b (priority 50) always have
/// work queued, a's attempts take 10 minutes and b's 25; team c (priority 80) submits a
/// 15-minute attempt every two hours. Fair share gives a and b slot-time within 10 % of each
/// other although b's attempts are 2.5 times longer, and c is admitted at the first slot
/// that frees after it queues, before any waiting a or b.
#[test]
fn a_day_of_fair_share_between_equal_priorities_with_a_higher_priority_first() {
    use charon_core::admission::{self, Candidate, Claim, PoolState, World};
    use charon_core::resources::PoolClaim;

    const SLOTS: u32 = 4;
    const HALF_LIFE: f64 = 3600.0;
    let start = utc("2024-03-01T00:00:00Z");
    let claim = |ns: &str| Claim {
        namespace: ns.into(),
        workflow: "work".into(),
        pools: vec![PoolClaim {
            name: "shared".into(),
            slots: 1,
        }],
        cpu: 0,
        memory: 0,
    };
    let length = |ns: &str| match ns {
        "a" => Duration::minutes(10),
        "b" => Duration::minutes(25),
        _ => Duration::minutes(15),
    };
    // Running: (namespace, ends at); queued: (key, namespace, priority, queued at).
    let mut running: Vec<(String, DateTime<Utc>)> = Vec::new();
    let mut queued: Vec<(String, String, u32, DateTime<Utc>)> = Vec::new();
    let mut usage: BTreeMap<String, f64> = BTreeMap::new();
    let mut slot_seconds: BTreeMap<String, i64> = BTreeMap::new();
    let mut serial = 0u64;
    let mut c_waits = Vec::new();
    let tick = Duration::minutes(1);
    let mut now = start;
    while now < start + Duration::days(1) {
        running.retain(|(_, end)| *end > now);
        for ns in ["a", "b"] {
            while queued.iter().filter(|q| q.1 == ns).count() < 8 {
                serial += 1;
                queued.push((format!("{ns}/{serial:06}"), ns.into(), 50, now));
            }
        }
        if (now - start).num_minutes() % 120 == 30 {
            serial += 1;
            queued.push((format!("c/{serial:06}"), "c".into(), 80, now));
        }
        let world = World {
            pools: [(
                "shared".to_string(),
                PoolState {
                    slots: SLOTS,
                    usage: usage.clone(),
                    half_life: HALF_LIFE,
                },
            )]
            .into(),
            quotas: BTreeMap::new(),
            holders: running.iter().map(|(ns, _)| claim(ns)).collect(),
            queued: queued
                .iter()
                .map(|(key, ns, priority, at)| Candidate {
                    key: key.clone(),
                    claim: claim(ns),
                    priority: *priority,
                    logical: *at,
                    concurrency: None,
                })
                .collect(),
            focus: None,
        };
        let decision = admission::decide(&world);
        assert!(running.len() + decision.admitted.len() <= SLOTS as usize);
        let c_waiting = queued.iter().any(|q| q.1 == "c" && !decision.admits(&q.0));
        let others_admitted = decision.admitted.iter().any(|k| !k.starts_with("c/"));
        assert!(
            !(c_waiting && others_admitted),
            "at {now} a lower priority was admitted while c waited"
        );
        for key in &decision.admitted {
            let (_, ns, _, at) = queued
                .iter()
                .find(|q| &q.0 == key)
                .expect("admitted from the queue")
                .clone();
            if ns == "c" {
                c_waits.push((now - at).num_minutes());
            }
            running.push((ns.clone(), now + length(&ns)));
            queued.retain(|q| &q.0 != key);
        }
        // The minute passes: usage accrues from what is held.
        let mut held: BTreeMap<String, u32> = BTreeMap::new();
        for (ns, end) in &running {
            let seconds = (*end - now).num_seconds().min(tick.num_seconds());
            *slot_seconds.entry(ns.clone()).or_default() += seconds;
            *held.entry(ns.clone()).or_default() += 1;
        }
        usage = admission::usage_at(&usage, &held, now, now + tick, HALF_LIFE);
        now += tick;
    }
    let (a, b) = (slot_seconds["a"] as f64, slot_seconds["b"] as f64);
    let c = slot_seconds["c"];
    println!(
        "slot-hours a {:.1} b {:.1} c {:.1}; c waited {c_waits:?} minutes",
        a / 3600.0,
        b / 3600.0,
        c as f64 / 3600.0
    );
    assert!(
        (a - b).abs() <= 0.1 * a.max(b),
        "a used {a} slot-seconds and b {b}: not within 10 %"
    );
    assert_eq!(c_waits.len(), 12, "c submitted 12 attempts");
    // Attempts are at most 25 minutes long, so a slot frees within 25 minutes.
    assert!(c_waits.iter().all(|w| *w <= 25), "{c_waits:?}");
    assert_eq!(c, 12 * 15 * 60);
}
