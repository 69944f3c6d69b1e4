//! Sharding across replicas: three `charon operator --shards 6` processes share hundreds of
//! workflows due every minute, each taking a fair share of the shard Leases. One is killed
//! with SIGKILL right after a minute's triggers; its shards move to the two live replicas
//! within their Lease, and every partition of every workflow runs exactly once (executions
//! append their workflow, partition and execution id to one file), none lost.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::{Duration as StdDuration, Instant};

use chrono::{DateTime, Duration, DurationRound, Utc};
use common::process::{Operator, kubeconfig};
use common::{Cluster, NS};
use k8s_openapi::api::coordination::v1::Lease;
use kube::api::ListParams;
use kube::{Api, ResourceExt};
use serde_json::json;

const WORKFLOWS: usize = 240;
const SHARDS: u32 = 6;
/// Valid 4 s without renewal, renewed every second.
const LEASE_SECONDS: &str = "4";

/// Who holds each shard Lease (by shard), as the server has them.
async fn holders(cluster: &Cluster) -> BTreeMap<u32, String> {
    let leases: Api<Lease> = Api::namespaced(cluster.client.clone(), NS);
    let list = leases
        .list(&ListParams::default().labels("charon.dev/lease-role=shard"))
        .await
        .expect("list leases");
    list.items
        .iter()
        .filter_map(|l| {
            let shard = l
                .name_any()
                .strip_prefix("charon-operator-shard-")?
                .parse()
                .ok()?;
            let holder = l.spec.as_ref()?.holder_identity.clone()?;
            Some((shard, holder))
        })
        .collect()
}

/// Waits until every shard is held, by `replicas` only, each holding its fair share.
async fn balanced(cluster: &Cluster, replicas: &[&str], timeout: StdDuration) -> StdDuration {
    let started = Instant::now();
    loop {
        let held = holders(cluster).await;
        let mut per_replica: BTreeMap<&str, u32> = BTreeMap::new();
        for holder in held.values() {
            *per_replica.entry(holder.as_str()).or_default() += 1;
        }
        let share = SHARDS.div_ceil(replicas.len() as u32);
        let fair = held.len() == SHARDS as usize
            && per_replica.keys().all(|r| replicas.contains(r))
            && per_replica.values().all(|&n| n <= share);
        if fair {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < timeout,
            "shards not balanced over {replicas:?} after {timeout:?}: {held:?}"
        );
        tokio::time::sleep(StdDuration::from_millis(100)).await;
    }
}

/// Executions recorded: (workflow, partition) → execution ids.
fn read_record(path: &Path) -> BTreeMap<(String, String), Vec<String>> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let mut record: BTreeMap<(String, String), Vec<String>> = BTreeMap::new();
    for line in text.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let [workflow, parameter, execution] = fields[..] else {
            panic!("a torn line in the record: {line:?}");
        };
        record
            .entry((workflow.into(), parameter.into()))
            .or_default()
            .push(execution.into());
    }
    record
}

fn minute_text(m: DateTime<Utc>) -> String {
    m.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_share_the_workflows_and_a_killed_ones_shards_move() {
    let cluster = Cluster::without_operator().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let kubeconfig = kubeconfig(&cluster, &dir);
    let record = dir.path().join("executions");

    // Not close to a minute boundary: whether the minute of the creation instant is due
    // would depend on sub-second timing.
    while !(2..40).contains(&(Utc::now().timestamp() % 60)) {
        tokio::time::sleep(StdDuration::from_millis(200)).await;
    }
    let created = Utc::now();
    let line = format!(
        "echo \"$CHARON_WORKFLOW $CHARON_PARAMETER $CHARON_EXECUTION_ID\" >> {}",
        record.display()
    );
    for i in 0..WORKFLOWS {
        cluster
            .apply_workflow(
                &format!("s{i:03}"),
                json!({"schedule": "* * * * *",
                    "template": {"image": "busybox", "command": ["sh", "-c", line]}}),
            )
            .await;
    }

    let args = ["--shards", "6", "--lease-duration-seconds", LEASE_SECONDS];
    let mut replicas: Vec<Operator> = ["replica-a", "replica-b", "replica-c"]
        .iter()
        .map(|identity| Operator::start(&kubeconfig, identity, &args))
        .collect();
    balanced(
        &cluster,
        &["replica-a", "replica-b", "replica-c"],
        StdDuration::from_secs(30),
    )
    .await;
    let before = holders(&cluster).await;
    println!("shards: {before:?}");

    // The first minute due after the creation, then kill one replica right after it.
    let first = (created + Duration::minutes(1))
        .duration_trunc(Duration::minutes(1))
        .expect("minute");
    while Utc::now() < first + Duration::seconds(2) {
        tokio::time::sleep(StdDuration::from_millis(100)).await;
    }
    let victim = replicas.remove(0);
    let mut victim = victim;
    victim.child.kill().expect("SIGKILL");
    let _ = victim.child.wait();
    let killed_at = Instant::now();
    let moved_in = balanced(
        &cluster,
        &["replica-b", "replica-c"],
        StdDuration::from_secs(30),
    )
    .await;
    println!(
        "replica-a killed; its shards moved in {:?}",
        killed_at.elapsed()
    );
    // Its Leases expire 4 s after their last renewal (at most a second before the kill);
    // a live replica looks every second (the margin is for a busy machine).
    assert!(
        moved_in < StdDuration::from_secs(15),
        "the killed replica's shards took {moved_in:?} to move"
    );

    // The next minute is run by the two live replicas.
    let second = first + Duration::minutes(1);
    let minutes = [minute_text(first), minute_text(second)];
    let settle = Instant::now() + StdDuration::from_secs(150);
    loop {
        let now_past_second = Utc::now() > second + Duration::seconds(1);
        let runs = read_record(&record);
        let executions: Vec<&String> = runs.values().flatten().collect();
        let distinct: BTreeSet<&String> = executions.iter().copied().collect();
        assert_eq!(distinct.len(), executions.len(), "an execution ran twice");
        let mut problems = Vec::new();
        for ((workflow, parameter), ids) in &runs {
            assert!(
                ids.len() <= 1,
                "{workflow} {parameter} ran {} times",
                ids.len()
            );
        }
        for i in 0..WORKFLOWS {
            for minute in &minutes {
                let key = (format!("s{i:03}"), minute.clone());
                if !runs.contains_key(&key) {
                    problems.push(format!("{} {} has not run", key.0, key.1));
                }
            }
        }
        if now_past_second && problems.is_empty() {
            break;
        }
        assert!(
            Instant::now() < settle,
            "{} partitions missing, e.g. {:?}\nreplica-b log:\n{}",
            problems.len(),
            problems.first(),
            replicas[0].log()
        );
        tokio::time::sleep(StdDuration::from_millis(500)).await;
    }
    // Each replica left acted: both hold shards and wrote nothing the other owned (every
    // partition ran once, checked above).
    let after = holders(&cluster).await;
    let live: BTreeSet<&str> = after.values().map(String::as_str).collect();
    assert_eq!(live, BTreeSet::from(["replica-b", "replica-c"]));
    for replica in &replicas {
        assert!(
            replica.log().contains("acting on shard"),
            "{}",
            replica.log()
        );
    }
    drop(replicas);
    cluster.stop().await;
}
