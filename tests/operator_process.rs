//! `charon operator` as a process, the way a Deployment runs it: two replicas hand the Lease
//! over on SIGTERM and on SIGKILL, a stop is bounded whatever the API server does, and
//! `--api-qps` spreads a burst of writes. The real binary runs against the embedded cluster
//! of this process through a kubeconfig.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::process::{Operator, kubeconfig};
use common::{Cluster, NS};
use k8s_openapi::api::coordination::v1::Lease;
use kube::Api;
use serde_json::json;

/// Short Lease settings: valid 4 s, renewed (and tried by a standby) every second.
const LEASE_SECONDS: &str = "4";

async fn holder(cluster: &Cluster) -> Result<String, String> {
    let leases: Api<Lease> = Api::namespaced(cluster.client.clone(), NS);
    let lease = leases
        .get("charon-operator")
        .await
        .map_err(|e| e.to_string())?;
    Ok(lease
        .spec
        .and_then(|s| s.holder_identity)
        .unwrap_or_default())
}

/// Polls until `identity` holds the Lease; how long that took.
async fn leads(cluster: &Cluster, identity: &str, timeout: Duration) -> Duration {
    let started = Instant::now();
    let deadline = started + timeout;
    loop {
        let seen = holder(cluster).await;
        if seen.as_deref() == Ok(identity) {
            return started.elapsed();
        }
        assert!(
            Instant::now() < deadline,
            "{identity} does not lead after {timeout:?}; holder: {seen:?}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Replica a leading and replica b standing by.
async fn leader_and_standby(kubeconfig: &Path, cluster: &Cluster) -> (Operator, Operator) {
    let elect = ["--leader-elect", "--lease-duration-seconds", LEASE_SECONDS];
    let a = Operator::start(kubeconfig, "replica-a", &elect);
    leads(cluster, "replica-a", Duration::from_secs(30)).await;
    a.logged("leading", Duration::from_secs(10)).await;
    let b = Operator::start(kubeconfig, "replica-b", &elect);
    b.logged("waiting for the leader lease", Duration::from_secs(30))
        .await;
    (a, b)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_of_the_leader_hands_the_lease_to_the_standby_at_once() {
    let cluster = Cluster::without_operator().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let kubeconfig = kubeconfig(&cluster, &dir);
    let (mut a, b) = leader_and_standby(&kubeconfig, &cluster).await;

    a.terminate();
    let handed_over = leads(&cluster, "replica-b", Duration::from_secs(10)).await;
    // Without a release the standby would wait for the Lease to expire (4 s).
    assert!(
        handed_over < Duration::from_secs(2),
        "the standby led {handed_over:?} after SIGTERM of the leader"
    );
    let status = a
        .exited(Duration::from_secs(10))
        .await
        .expect("the old leader exits");
    assert!(status.success(), "{status}: {}", a.log());
    assert!(a.log().contains("released the leader lease"), "{}", a.log());
    b.logged("leading", Duration::from_secs(5)).await;
    drop(b);
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_of_the_leader_hands_the_lease_over_once_it_expires() {
    let cluster = Cluster::without_operator().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let kubeconfig = kubeconfig(&cluster, &dir);
    let (mut a, b) = leader_and_standby(&kubeconfig, &cluster).await;

    a.child.kill().expect("SIGKILL");
    let handed_over = leads(&cluster, "replica-b", Duration::from_secs(20)).await;
    // The Lease was renewed at most a retry period (1 s) before the kill: the standby may
    // take it from 3 s on, and tries every second after its 4 s.
    assert!(
        handed_over >= Duration::from_millis(2500),
        "the standby took a live Lease after {handed_over:?}"
    );
    assert!(
        handed_over <= Duration::from_secs(4 + 1 + 2),
        "the standby led {handed_over:?} after SIGKILL of the leader"
    );
    drop(b);
    cluster.stop().await;
}

/// Starts an operator, gets reconciles under way, stops the server answering, and checks that
/// SIGTERM still ends the process within its shutdown bound.
async fn stop_is_bounded_while_the_server_hangs(extra: &[&str]) {
    let cluster = Cluster::without_operator().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let kubeconfig = kubeconfig(&cluster, &dir);
    let mut args = vec!["--shutdown-timeout-seconds", "3"];
    args.extend_from_slice(extra);
    let mut operator = Operator::start(&kubeconfig, "lonely", &args);
    operator
        .logged("connected to the API server", Duration::from_secs(30))
        .await;
    if extra.contains(&"--leader-elect") {
        leads(&cluster, "lonely", Duration::from_secs(30)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    // New workflows: their reconciles write status, into a server that no longer answers.
    for i in 0..20 {
        cluster
            .apply_workflow(
                &format!("w{i}"),
                json!({"schedule": "@hourly", "template": {"image": "busybox", "command": ["true"]}}),
            )
            .await;
    }
    let server = cluster.server.as_ref().expect("server runs");
    server.pause();
    tokio::time::sleep(Duration::from_millis(500)).await;

    let stopping = Instant::now();
    operator.terminate();
    let exited = operator.exited(Duration::from_secs(30)).await;
    let took = stopping.elapsed();
    server.resume();
    let status =
        exited.unwrap_or_else(|| panic!("still running 30 s after SIGTERM:\n{}", operator.log()));
    assert!(
        took < Duration::from_secs(3 + 2),
        "exited {took:?} after SIGTERM, bound 3 s:\n{}",
        operator.log()
    );
    // A leader may also find its Lease lost on the way out, and say so in its exit code.
    if !extra.contains(&"--leader-elect") {
        assert!(status.success(), "{status}: {}", operator.log());
    }
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_ends_an_operator_whose_api_server_does_not_answer_within_its_bound() {
    stop_is_bounded_while_the_server_hangs(&[]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_ends_a_leader_whose_api_server_does_not_answer_within_its_bound() {
    stop_is_bounded_while_the_server_hangs(&["--leader-elect", "--lease-duration-seconds", "4"])
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_qps_spreads_a_burst_of_writes() {
    let cluster = Cluster::without_operator().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let kubeconfig = kubeconfig(&cluster, &dir);
    let (qps, burst, workflows) = (5.0, 5.0, 30usize);
    let operator = Operator::start(
        &kubeconfig,
        "polite",
        &["--api-qps", "5", "--api-burst", "5"],
    );
    operator
        .logged("connected to the API server", Duration::from_secs(30))
        .await;
    // Its lists and watches are made; the bucket fills again (5 tokens in a second).
    tokio::time::sleep(Duration::from_secs(2)).await;
    let server = cluster.server.as_ref().expect("server runs");
    let by_operator = |requests: &[charon_apiserver::Request]| -> u64 {
        requests
            .iter()
            .filter(|r| r.user_agent == charon::operator::OPERATOR_AGENT)
            .map(|r| r.count)
            .sum()
    };

    let started = Instant::now();
    let mut samples = vec![(Duration::ZERO, by_operator(&server.requests()))];
    for i in 0..workflows {
        cluster
            .apply_workflow(
                &format!("w{i:02}"),
                json!({"schedule": "@hourly", "template": {"image": "busybox", "command": ["true"]}}),
            )
            .await;
    }
    // Every workflow gets its status (one write each at least), sampling the operator's
    // request count on the way.
    let deadline = started + Duration::from_secs(90);
    let planned = loop {
        samples.push((started.elapsed(), by_operator(&server.requests())));
        let planned = cluster
            .workflows()
            .list(&Default::default())
            .await
            .expect("list workflows")
            .items
            .iter()
            .filter(|w| w.status.as_ref().is_some_and(|s| s.next_trigger.is_some()))
            .count();
        if planned == workflows {
            break started.elapsed();
        }
        assert!(
            Instant::now() < deadline,
            "{planned} of {workflows} workflows planned after 90 s:\n{}",
            operator.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    // 30 writes with 5 at once and 5 a second take at least 5 s; unlimited, well under one.
    let least = (workflows as f64 - burst) / qps;
    assert!(
        planned.as_secs_f64() >= least * 0.9,
        "{workflows} workflows planned in {planned:?}, the limit allows no less than {least} s"
    );
    // No stretch of the run saw more than the burst plus the rate.
    for (i, (t0, n0)) in samples.iter().enumerate() {
        for (t1, n1) in &samples[i + 1..] {
            let allowed = burst + qps * (*t1 - *t0 + Duration::from_millis(200)).as_secs_f64();
            assert!(
                (n1 - n0) as f64 <= allowed + 1.0,
                "{} requests between {t0:?} and {t1:?}, at most {allowed:.0} allowed",
                n1 - n0
            );
        }
    }
    drop(operator);
    cluster.stop().await;
}
