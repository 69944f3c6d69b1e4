//! Chaos: `charon operator` as a separate process, killed with SIGKILL at random moments and
//! started again, while the API server fails a share of requests, cuts and expires watches,
//! and natural, short-lived (`history.ttl: PT0S`), ad-hoc and backfill (first run and
//! reprocess) partitions come due. Every execution appends its workflow, parameter and
//! execution id to one file; once the faults stop the test asserts that no execution ran
//! twice, no partition was missed or ran twice, every partition has one instance, backfill
//! counts add up and no Job outlived its instance or its attempt.
//!
//! The seed of the kill schedule is printed; `CHAOS_SEED=N` replays one.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::{Duration as StdDuration, Instant};

use charon_core::resources::{Backfill, BackfillState, InstanceState, WorkflowInstance};
use chrono::{DateTime, Duration, DurationRound, Utc};
use common::process::{Operator, kubeconfig};
use common::{Cluster, NS};
use k8s_openapi::api::batch::v1::Job;
use kube::api::{ListParams, PostParams};
use kube::{Api, ResourceExt};
use serde_json::json;

/// How long the operator is killed and faults are injected, at least: longer if need be, up
/// to `CHAOS_AT_MOST`, so that the reprocess run of the backfill (created once the first run
/// completed, which takes about 100 s of a restarted operator's time on 2 cores) runs
/// under the faults for `RERUN_UNDER_CHAOS` too.
const CHAOS: StdDuration = StdDuration::from_secs(130);
const CHAOS_AT_MOST: StdDuration = StdDuration::from_secs(260);
const RERUN_UNDER_CHAOS: StdDuration = StdDuration::from_secs(20);

/// How long everything may take to finish once the faults stop.
const SETTLE: StdDuration = StdDuration::from_secs(150);

/// Workflows triggered every minute; the first `SHORT_LIVED` delete their instances as soon
/// as they finish.
const EVERY_MINUTE: usize = 6;
const SHORT_LIVED: usize = 3;

/// Partitions of each backfill run (hourly): 5 days.
const BACKFILL_START: &str = "2026-10-01T00";
const BACKFILL_END: &str = "2026-10-06T00";
const BACKFILL_PARTITIONS: usize = 120;

/// Ad-hoc triggers of one workflow, one per past hour.
const ADHOC: usize = 10;

/// A small deterministic generator for the kill schedule (splitmix64).
struct Dice(u64);

impl Dice {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A duration in [low, high) milliseconds.
    fn millis(&mut self, low: u64, high: u64) -> StdDuration {
        StdDuration::from_millis(low + self.next() % (high - low))
    }
}

/// A workflow whose executions append one line to `record` and run for a moment.
fn recording(schedule: &str, record: &Path, ttl: Option<&str>) -> serde_json::Value {
    let line = format!(
        "echo \"$CHARON_WORKFLOW $CHARON_PARAMETER $CHARON_EXECUTION_ID\" >> {}; sleep 0.4",
        record.display()
    );
    let mut spec = json!({
        "schedule": schedule,
        "template": {"image": "busybox", "command": ["sh", "-c", line]},
    });
    if let Some(ttl) = ttl {
        spec["history"] = json!({"ttl": ttl});
    }
    spec
}

/// What the executions recorded: per workflow, per parameter, the execution ids in order.
type Record = BTreeMap<String, BTreeMap<String, Vec<String>>>;

fn read_record(path: &Path) -> Record {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let mut record = Record::new();
    for line in text.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let [workflow, parameter, execution] = fields[..] else {
            panic!("a torn line in the record: {line:?}");
        };
        record
            .entry(workflow.into())
            .or_default()
            .entry(parameter.into())
            .or_default()
            .push(execution.into());
    }
    record
}

/// Retries a call of the test itself through the injected faults.
async fn through_faults<T, F, Fut>(what: &str, mut call: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, kube::Error>>,
{
    let deadline = Instant::now() + StdDuration::from_secs(60);
    loop {
        match call().await {
            Ok(value) => return value,
            Err(error) if Instant::now() < deadline => {
                eprintln!("{what}: {error}; again");
                tokio::time::sleep(StdDuration::from_millis(200)).await;
            }
            Err(error) => panic!("{what}: {error}"),
        }
    }
}

fn backfill(name: &str, workflow: &str) -> Backfill {
    serde_json::from_value(json!({
        "apiVersion": "charon.dev/v1alpha1", "kind": "Backfill",
        "metadata": {"name": name, "namespace": NS},
        "spec": {"workflow": workflow, "start": BACKFILL_START, "end": BACKFILL_END,
            "concurrency": 20, "reprocess": "All"},
    }))
    .expect("a Backfill")
}

/// Creates a Backfill through the faults (a create whose answer was lost finds it made).
async fn create_backfill(backfills: &Api<Backfill>, backfill: &Backfill) {
    through_faults("create backfill", || async {
        match backfills.create(&PostParams::default(), backfill).await {
            Err(kube::Error::Api(e)) if e.code == 409 => Ok(()),
            other => other.map(|_| ()),
        }
    })
    .await;
}

async fn backfill_state(backfills: &Api<Backfill>, name: &str) -> Option<Backfill> {
    backfills.get(name).await.ok()
}

/// The faults of the chaos period: a share of every kind of request fails.
fn inject_faults(server: &charon_apiserver::RunningServer) {
    server.set_error_rate("*", 0.03, 500);
    server.set_error_rate("create", 0.05, 429);
    server.set_error_rate("update", 0.05, 500);
    server.set_error_rate("delete", 0.2, 500);
    server.set_error_rate("list", 0.1, 503);
    server.set_error_rate("watch", 0.1, 503);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkills_and_api_faults_neither_duplicate_nor_lose_runs() {
    let seed = std::env::var("CHAOS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| Utc::now().timestamp_micros() as u64);
    println!("chaos seed {seed} (CHAOS_SEED={seed} replays it)");
    let mut dice = Dice(seed);

    let cluster = Cluster::without_operator().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let kubeconfig = kubeconfig(&cluster, &dir);
    let record = dir.path().join("executions");
    let server = cluster.server.as_ref().expect("server runs");
    let backfills: Api<Backfill> = Api::namespaced(cluster.client.clone(), NS);

    // Not within two seconds of a minute: whether a partition at the creation instant is
    // due would depend on sub-second timing.
    while !(2..58).contains(&(Utc::now().timestamp() % 60)) {
        tokio::time::sleep(StdDuration::from_millis(200)).await;
    }
    let created = Utc::now();
    for i in 0..EVERY_MINUTE {
        let ttl = (i < SHORT_LIVED).then_some("PT0S");
        cluster
            .apply_workflow(&format!("minute-{i}"), recording("* * * * *", &record, ttl))
            .await;
    }
    for name in ["history", "adhoc"] {
        cluster
            .apply_workflow(name, recording("@hourly", &record, None))
            .await;
    }

    let mut operator = Operator::start(&kubeconfig, "chaos", &[]);
    inject_faults(server);
    create_backfill(&backfills, &backfill("first-run", "history")).await;

    let started = Instant::now();
    let mut kills = 0;
    let mut adhoc_sent = 0;
    let mut rerun_created: Option<Instant> = None;
    let mut next_watch_fault = started + dice.millis(5_000, 15_000);
    let rerun_under_chaos =
        |created: Option<Instant>| created.is_some_and(|at| at.elapsed() >= RERUN_UNDER_CHAOS);
    while started.elapsed() < CHAOS
        || (!rerun_under_chaos(rerun_created) && started.elapsed() < CHAOS_AT_MOST)
    {
        tokio::time::sleep(dice.millis(800, 5_000)).await;
        operator.child.kill().expect("SIGKILL");
        let _ = operator.child.wait();
        kills += 1;
        operator = Operator::start(&kubeconfig, "chaos", &[]);

        if Instant::now() >= next_watch_fault {
            server.drop_watches();
            server.expire_next_watches(2);
            next_watch_fault = Instant::now() + dice.millis(5_000, 15_000);
        }
        // Ad-hoc triggers, with the CLI as a user runs it (without faults: a trigger whose
        // answer was lost and that was sent again would rightly run twice).
        if adhoc_sent < ADHOC {
            server.clear_faults();
            let parameter = format!("2026-11-01T{adhoc_sent:02}");
            let out = std::process::Command::new(env!("CARGO_BIN_EXE_charon"))
                .arg("--kubeconfig")
                .arg(&kubeconfig)
                .args(["trigger", "adhoc", &parameter])
                .output()
                .expect("charon trigger runs");
            inject_faults(server);
            assert!(
                out.status.success(),
                "charon trigger adhoc {parameter}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            adhoc_sent += 1;
        }
        // The reprocess run of the same range, once the first run is complete.
        if rerun_created.is_none()
            && backfill_state(&backfills, "first-run")
                .await
                .and_then(|b| b.status)
                .is_some_and(|s| s.state == BackfillState::Completed)
        {
            println!("the first backfill completed in {:?}", started.elapsed());
            create_backfill(&backfills, &backfill("rerun", "history")).await;
            rerun_created = Some(Instant::now());
        }
    }
    server.clear_faults();
    let chaos_ended = Utc::now();
    println!("{kills} SIGKILLs in {:?}", started.elapsed());
    if rerun_created.is_none() {
        let status = backfill_state(&backfills, "first-run")
            .await
            .and_then(|b| b.status);
        panic!(
            "the first backfill did not complete during the chaos period ({kills} SIGKILLs); its status: {}",
            status.map_or_else(String::new, |s| {
                json!({"state": s.state, "progress": s.progress,
                "cursor": s.cursor, "counts": s.counts})
                .to_string()
            })
        );
    }

    // Every minute due from the workflows' creation to the end of the chaos period.
    let first_minute = (created + Duration::minutes(1))
        .duration_trunc(Duration::minutes(1))
        .expect("minute");
    let last_minute = chaos_ended
        .duration_trunc(Duration::minutes(1))
        .expect("minute");
    let minutes: Vec<String> = std::iter::successors(Some(first_minute), |m| {
        Some(*m + Duration::minutes(1)).filter(|next| *next <= last_minute)
    })
    .map(|m: DateTime<Utc>| m.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
    .collect();
    assert!(minutes.len() >= 2, "minutes due: {minutes:?}");
    let adhoc: Vec<String> = (0..ADHOC).map(|h| format!("2026-11-01T{h:02}")).collect();

    let settled = Instant::now() + SETTLE;
    let report = loop {
        let outcome = check(&cluster, &backfills, &record, &minutes, &adhoc).await;
        match outcome {
            Ok(report) => break report,
            Err(problem) if Instant::now() >= settled => panic!(
                "not settled {SETTLE:?} after the chaos (seed {seed}): {problem}\noperator log:\n{}",
                operator.log()
            ),
            Err(_) => tokio::time::sleep(StdDuration::from_millis(500)).await,
        }
    };
    println!("{report}");
    drop(operator);
    cluster.stop().await;
}

/// Ok once every partition ran exactly as often as it should and nothing is left over;
/// Err with what is still missing or wrong (a duplicate never heals: the caller reports
/// the last problem when it gives up).
async fn check(
    cluster: &Cluster,
    backfills: &Api<Backfill>,
    record_path: &Path,
    minutes: &[String],
    adhoc: &[String],
) -> Result<String, String> {
    let record = read_record(record_path);
    let mut executions = BTreeSet::new();
    for (workflow, partitions) in &record {
        for (parameter, ids) in partitions {
            for id in ids {
                if !executions.insert(id.clone()) {
                    return Err(format!("execution {id} ({workflow} {parameter}) ran twice"));
                }
            }
        }
    }
    let runs = |workflow: &str, parameter: &str| -> usize {
        record
            .get(workflow)
            .and_then(|p| p.get(parameter))
            .map_or(0, Vec::len)
    };
    // Natural partitions: each minute once, for short-lived instances too.
    for i in 0..EVERY_MINUTE {
        let workflow = format!("minute-{i}");
        for minute in minutes {
            let n = runs(&workflow, minute);
            if n != 1 {
                return Err(format!("{workflow} {minute} ran {n} times"));
            }
        }
    }
    // Ad-hoc: each once.
    for parameter in adhoc {
        let n = runs("adhoc", parameter);
        if n != 1 {
            return Err(format!("adhoc {parameter} ran {n} times"));
        }
    }
    // Backfill: each partition twice (the first run and the reprocess), never more.
    // (An hourly partition that comes due meanwhile is natural, not the backfill's.)
    let history: BTreeMap<String, Vec<String>> = record
        .get("history")
        .into_iter()
        .flatten()
        .filter(|(parameter, _)| (BACKFILL_START..BACKFILL_END).contains(&parameter.as_str()))
        .map(|(parameter, ids)| (parameter.clone(), ids.clone()))
        .collect();
    if history.len() != BACKFILL_PARTITIONS {
        return Err(format!(
            "history: {} of {BACKFILL_PARTITIONS} partitions ran",
            history.len()
        ));
    }
    if let Some((parameter, ids)) = history.iter().find(|(_, ids)| ids.len() != 2) {
        return Err(format!("history {parameter} ran {} times", ids.len()));
    }
    for name in ["first-run", "rerun"] {
        let status = backfill_state(backfills, name)
            .await
            .and_then(|b| b.status)
            .unwrap_or_default();
        let c = &status.counts;
        let total = BACKFILL_PARTITIONS as u32;
        if status.state != BackfillState::Completed
            || (c.total, c.triggered, c.done, c.failed, c.skipped, c.active)
                != (total, total, total, 0, 0, 0)
        {
            return Err(format!("backfill {name}: {:?} counts {c:?}", status.state));
        }
    }

    // One instance per partition, each Done; none of the short-lived ones left.
    let instances: Api<WorkflowInstance> = Api::namespaced(cluster.client.clone(), NS);
    let instances = instances
        .list(&ListParams::default())
        .await
        .map_err(|e| e.to_string())?
        .items;
    let mut partitions = BTreeSet::new();
    for instance in &instances {
        let key = (
            instance.spec.workflow.clone(),
            instance.spec.parameter.clone(),
        );
        if !partitions.insert(key.clone()) {
            return Err(format!("two instances of {key:?}"));
        }
        let state = common::state(instance);
        if state != InstanceState::Done {
            return Err(format!("{} is {state:?}", instance.name_any()));
        }
    }
    for i in 0..SHORT_LIVED {
        let workflow = format!("minute-{i}");
        if let Some(left) = instances.iter().find(|i| i.spec.workflow == workflow) {
            return Err(format!("{} outlived its history.ttl", left.name_any()));
        }
    }
    // Jobs: only the last attempt's Job of each existing instance is kept.
    let jobs: Api<Job> = Api::namespaced(cluster.client.clone(), NS);
    let jobs = jobs
        .list(&ListParams::default())
        .await
        .map_err(|e| e.to_string())?
        .items;
    let names: BTreeSet<String> = instances.iter().map(|i| i.name_any()).collect();
    let mut per_instance: BTreeMap<String, usize> = BTreeMap::new();
    for job in &jobs {
        let instance = job
            .labels()
            .get("charon.dev/instance")
            .cloned()
            .unwrap_or_default();
        let owner = job
            .owner_references()
            .iter()
            .find(|o| o.kind == "WorkflowInstance")
            .map(|o| o.name.clone())
            .unwrap_or_default();
        if !names.contains(&owner) {
            return Err(format!(
                "Job {} (instance {instance}) outlived its instance",
                job.name_any()
            ));
        }
        *per_instance.entry(owner).or_default() += 1;
    }
    if let Some((instance, n)) = per_instance.iter().find(|(_, n)| **n > 1) {
        return Err(format!("{instance} kept {n} Jobs"));
    }
    Ok(format!(
        "{} executions: {} natural minutes x {EVERY_MINUTE} workflows, {} ad-hoc, {} backfill; {} instances, {} Jobs",
        executions.len(),
        minutes.len(),
        adhoc.len(),
        2 * BACKFILL_PARTITIONS,
        instances.len(),
        jobs.len()
    ))
}

/// Slots of the two contended pools; `alpha` is shrunk to [`ALPHA_SHRUNK`] midway.
const ALPHA_SLOTS: u32 = 3;
const ALPHA_SHRUNK: u32 = 1;
const BETA_SLOTS: u32 = 2;

/// How long the pools are contended under kills before the faults stop.
const POOL_CHAOS: StdDuration = StdDuration::from_secs(50);

/// How long after the shrink a process may still start on an admission made before it (a
/// pod's process starts a moment after its attempt is admitted).
const SHRINK_GRACE: Duration = Duration::seconds(2);

/// One execution as its process recorded it: pools, when it started and ended (ms).
#[derive(Debug)]
struct Run {
    namespace: String,
    instance: String,
    execution: String,
    pools: Vec<String>,
    start: i64,
    end: Option<i64>,
}

/// The executions in the record; an execution id started more than once is listed each time
/// (the caller decides whether that may happen: a deleted instance may be created again).
fn read_runs(path: &Path) -> Vec<Run> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let mut runs: BTreeMap<String, Vec<Run>> = BTreeMap::new();
    for line in text.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let [what, namespace, instance, execution, pools, at] = fields[..] else {
            panic!("a torn line in the record: {line:?}");
        };
        let at: i64 = at.parse::<i64>().expect("a time in ns") / 1_000_000;
        let key = format!("{namespace}/{execution}");
        match what {
            "start" => runs.entry(key).or_default().push(Run {
                namespace: namespace.into(),
                instance: instance.into(),
                execution: execution.into(),
                pools: pools.split(',').map(str::to_string).collect(),
                start: at,
                end: None,
            }),
            "end" => {
                if let Some(run) = runs.get_mut(&key).and_then(|r| r.last_mut()) {
                    run.end = Some(at);
                }
            }
            other => panic!("a line that is neither start nor end: {other}"),
        }
    }
    runs.into_values().flatten().collect()
}

/// Deletes an instance whose attempt runs (its Job is active; a short attempt is on record
/// only once it ends), if there is one; records it in `deleted`.
async fn delete_running(client: &kube::Client, deleted: &mut BTreeSet<String>) -> bool {
    use kube::api::DeleteParams;
    let Ok(jobs) = Api::<Job>::all(client.clone())
        .list(&ListParams::default())
        .await
    else {
        return false;
    };
    let victim = jobs.items.iter().find_map(|job| {
        let status = job.status.as_ref()?;
        let running = status.active.unwrap_or(0) > 0 && status.completion_time.is_none();
        let instance = job.labels().get(charon_core::job::LABEL_INSTANCE)?;
        let ns = job.namespace().unwrap_or_default();
        (running && !deleted.contains(&format!("{ns}/{instance}"))).then(|| (ns, instance.clone()))
    });
    let Some((ns, name)) = victim else {
        return false;
    };
    match Api::<WorkflowInstance>::namespaced(client.clone(), &ns)
        .delete(&name, &DeleteParams::background())
        .await
    {
        Ok(_) => {
            deleted.insert(format!("{ns}/{name}"));
            true
        }
        Err(kube::Error::Api(e)) if e.code == 404 => false,
        Err(e) => panic!("delete {ns}/{name}: {e}"),
    }
}

/// The unfinished instances of the workflows on `pool` and the Jobs of each, one per line,
/// to show who a pool that reports more than its slots counted.
async fn holders_of(client: &kube::Client, pool: &str) -> String {
    let workflows = Api::<charon_core::resources::Workflow>::all(client.clone())
        .list(&ListParams::default())
        .await
        .expect("workflows")
        .items;
    let on_pool: BTreeSet<(String, String)> = workflows
        .iter()
        .filter(|w| w.spec.pools.iter().any(|p| p.name == pool))
        .map(|w| (w.namespace().unwrap_or_default(), w.name_any()))
        .collect();
    let jobs = Api::<Job>::all(client.clone())
        .list(&ListParams::default())
        .await
        .expect("jobs")
        .items;
    let mut lines = Vec::new();
    for instance in Api::<WorkflowInstance>::all(client.clone())
        .list(&ListParams::default())
        .await
        .expect("instances")
        .items
    {
        let namespace = instance.namespace().unwrap_or_default();
        let status = instance.status.clone().unwrap_or_default();
        if !on_pool.contains(&(namespace.clone(), instance.spec.workflow.clone()))
            || status.state.is_terminal()
        {
            continue;
        }
        let name = instance.name_any();
        let own: Vec<String> = jobs
            .iter()
            .filter(|j| j.namespace().as_deref() == Some(&namespace))
            .filter(|j| j.labels().get(charon_core::job::LABEL_INSTANCE) == Some(&name))
            .map(|j| {
                let s = j.status.clone().unwrap_or_default();
                format!(
                    "{} (active {:?}, succeeded {:?}, failed {:?})",
                    j.name_any(),
                    s.active,
                    s.succeeded,
                    s.failed
                )
            })
            .collect();
        lines.push(format!(
            "{namespace}/{name}: {:?} execution {} reason {:?} at rv {:?}; jobs {own:?}",
            status.state, status.execution, status.reason, instance.metadata.resource_version
        ));
    }
    lines.join("\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn contended_pools_never_leak_or_over_admit_under_sigkills() {
    use charon_core::resources::Pool;
    use k8s_openapi::api::core::v1::Namespace;
    use kube::api::{Patch, PatchParams};

    let seed = std::env::var("CHAOS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| Utc::now().timestamp_micros() as u64);
    println!("pool chaos seed {seed} (CHAOS_SEED={seed} replays it)");
    let mut dice = Dice(seed);
    let cluster = Cluster::without_operator().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let kubeconfig = kubeconfig(&cluster, &dir);
    let record = dir.path().join("runs");
    let server = cluster.server.as_ref().expect("server runs");
    let client = cluster.client.clone();
    let pools: Api<Pool> = Api::all(client.clone());
    let apply = PatchParams::apply("chaos").force();
    for (name, slots) in [("alpha", ALPHA_SLOTS), ("beta", BETA_SLOTS)] {
        let pool = json!({"apiVersion": "charon.dev/v1alpha1", "kind": "Pool",
            "metadata": {"name": name}, "spec": {"slots": slots}});
        pools
            .patch(name, &apply, &Patch::Apply(&pool))
            .await
            .expect("pool applied");
    }
    let namespaces = ["chaos-1", "chaos-2", "chaos-3"];
    let mut workflows: Vec<(&str, &str, Vec<&str>)> = Vec::new();
    for ns in namespaces {
        let namespace: Namespace =
            serde_json::from_value(json!({"metadata": {"name": ns}})).expect("namespace");
        Api::<Namespace>::all(client.clone())
            .create(&PostParams::default(), &namespace)
            .await
            .expect("namespace created");
        workflows.push((ns, "on-alpha", vec!["alpha"]));
        workflows.push((ns, "on-beta", vec!["beta"]));
    }
    workflows.push(("chaos-3", "on-both", vec!["alpha", "beta"]));
    for (ns, name, pools) in &workflows {
        let tag = pools.join(",");
        let line = |what: &str| {
            format!(
                "echo \"{what} $CHARON_NAMESPACE $CHARON_INSTANCE $CHARON_EXECUTION_ID {tag} $(date +%s%N)\" >> {}",
                record.display()
            )
        };
        let script = format!("{}; sleep 1; {}", line("start"), line("end"));
        let spec = json!({
            "schedule": "@hourly", "suspend": true,
            "pools": pools.iter().map(|p| json!({"name": p})).collect::<Vec<_>>(),
            "priority": if *name == "on-both" { 70 } else { 50 },
            "template": {"image": "busybox", "command": ["sh", "-c", script]},
        });
        let workflow = json!({"apiVersion": "charon.dev/v1alpha1", "kind": "Workflow",
            "metadata": {"name": name, "namespace": ns}, "spec": spec});
        Api::<charon_core::resources::Workflow>::namespaced(client.clone(), ns)
            .patch(name, &apply, &Patch::Apply(&workflow))
            .await
            .expect("workflow applied");
        let backfill = json!({"apiVersion": "charon.dev/v1alpha1", "kind": "Backfill",
            "metadata": {"name": format!("{name}-range"), "namespace": ns},
            "spec": {"workflow": name, "start": "2026-10-01T00", "end": "2026-10-01T08", "concurrency": 8}});
        Api::<Backfill>::namespaced(client.clone(), ns)
            .patch(&format!("{name}-range"), &apply, &Patch::Apply(&backfill))
            .await
            .expect("backfill applied");
    }
    let expected = workflows.len() * 8;

    let mut operator = Operator::start(&kubeconfig, "pool-chaos", &[]);
    // One running instance is deleted before the faults start, more may be later.
    let mut deleted: BTreeSet<String> = BTreeSet::new();
    let first = Instant::now();
    while !delete_running(&client, &mut deleted).await {
        assert!(
            first.elapsed() < StdDuration::from_secs(60),
            "no attempt ran within a minute\noperator log:\n{}",
            operator.log()
        );
        tokio::time::sleep(StdDuration::from_millis(100)).await;
    }
    inject_faults(server);
    let started = Instant::now();
    let mut kills = 0;
    let mut shrunk_at: Option<DateTime<Utc>> = None;
    let all: Api<WorkflowInstance> = Api::all(client.clone());
    while started.elapsed() < POOL_CHAOS {
        tokio::time::sleep(dice.millis(800, 4_000)).await;
        operator.child.kill().expect("SIGKILL");
        let _ = operator.child.wait();
        kills += 1;
        operator = Operator::start(&kubeconfig, "pool-chaos", &[]);
        server.clear_faults();
        // What the pools report never exceeds their slots.
        for pool in pools
            .list(&ListParams::default())
            .await
            .expect("pools")
            .items
        {
            let used = pool.status.as_ref().map_or(0, |s| s.used);
            let slots = if pool.metadata.name.as_deref() == Some("alpha") {
                ALPHA_SLOTS
            } else {
                BETA_SLOTS
            };
            if used > slots {
                let name = pool.name_any();
                panic!(
                    "pool {name} reports {used} of {slots} used (seed {seed}); status {:?}\n\
                     its unfinished instances and Jobs:\n{}\noperator log:\n{}",
                    pool.status,
                    holders_of(&client, &name).await,
                    operator.log()
                );
            }
        }
        if deleted.len() < 2 && !dice.next().is_multiple_of(3) {
            delete_running(&client, &mut deleted).await;
        }
        // Shrink alpha below its use halfway through.
        if shrunk_at.is_none() && started.elapsed() > POOL_CHAOS / 2 {
            pools
                .patch(
                    "alpha",
                    &PatchParams::default(),
                    &Patch::Merge(&json!({"spec": {"slots": ALPHA_SHRUNK}})),
                )
                .await
                .expect("alpha shrunk");
            shrunk_at = Some(Utc::now());
        }
        inject_faults(server);
    }
    server.clear_faults();
    println!("{kills} SIGKILLs in {:?}", started.elapsed());
    let shrunk_at = shrunk_at.expect("alpha was shrunk").timestamp_millis();

    // Every instance not deleted finishes.
    let settled = Instant::now() + StdDuration::from_secs(150);
    loop {
        let instances = all
            .list(&ListParams::default())
            .await
            .expect("instances")
            .items;
        let live: Vec<&WorkflowInstance> = instances
            .iter()
            .filter(|i| {
                !deleted.contains(&format!(
                    "{}/{}",
                    i.namespace().unwrap_or_default(),
                    i.name_any()
                ))
            })
            .collect();
        let done = live
            .iter()
            .filter(|i| {
                i.status
                    .as_ref()
                    .is_some_and(|s| s.state == InstanceState::Done)
            })
            .count();
        if live.len() + deleted.len() >= expected && done == live.len() {
            break;
        }
        if Instant::now() >= settled {
            panic!(
                "not settled (seed {seed}): {done} of {} done\non alpha:\n{}\non beta:\n{}\n\
                 operator log:\n{}",
                live.len(),
                holders_of(&client, "alpha").await,
                holders_of(&client, "beta").await,
                operator.log()
            );
        }
        tokio::time::sleep(StdDuration::from_millis(500)).await;
    }

    // At every instant, the processes running on a pool fit its slots.
    let runs: Vec<Run> = read_runs(&record)
        .into_iter()
        .filter(|r| !deleted.contains(&format!("{}/{}", r.namespace, r.instance)))
        .collect();
    let mut executions = BTreeSet::new();
    for run in &runs {
        assert!(run.end.is_some(), "{run:?} never ended");
        assert!(
            executions.insert((run.namespace.clone(), run.execution.clone())),
            "execution {}/{} ran twice (seed {seed})",
            run.namespace,
            run.execution
        );
    }
    for (pool, slots) in [("alpha", ALPHA_SLOTS), ("beta", BETA_SLOTS)] {
        let on: Vec<&Run> = runs
            .iter()
            .filter(|r| r.pools.iter().any(|p| p == pool))
            .collect();
        for run in &on {
            let others = on
                .iter()
                .filter(|o| !std::ptr::eq(**o, *run))
                .filter(|o| o.start <= run.start && o.end.is_some_and(|e| e > run.start))
                .count() as u32;
            let limit =
                if pool == "alpha" && run.start > shrunk_at + SHRINK_GRACE.num_milliseconds() {
                    ALPHA_SHRUNK
                } else {
                    slots
                };
            assert!(
                others < limit,
                "seed {seed}: {} started on {pool} with {others} others running (slots {limit})",
                run.instance
            );
        }
    }
    // Nothing stays held once everything finished.
    let drained = Instant::now() + StdDuration::from_secs(30);
    loop {
        let final_pools = pools
            .list(&ListParams::default())
            .await
            .expect("pools")
            .items;
        if final_pools.iter().all(|p| {
            p.status
                .as_ref()
                .is_some_and(|s| s.used == 0 && s.queued == 0)
        }) {
            break;
        }
        assert!(
            Instant::now() < drained,
            "pools still hold slots: {final_pools:?}"
        );
        tokio::time::sleep(StdDuration::from_millis(500)).await;
    }
    println!(
        "{} executions on two pools, {} instances deleted while running, alpha shrunk {ALPHA_SLOTS} → {ALPHA_SHRUNK}",
        runs.len(),
        deleted.len()
    );
    assert!(
        !deleted.is_empty(),
        "no running instance was deleted (seed {seed})"
    );
    drop(operator);
    cluster.stop().await;
}
