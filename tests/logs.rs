//! Logs that outlive pods (SPEC §11): every attempt's log archived into the log store when
//! it ends, read back by `charon logs` after its Jobs are gone and after an operator restart,
//! from a real S3-protocol server (`s3s-fs`, a separate process checking signatures) and from
//! a `file://` store; the store down, missing or refusing the credentials never affects a run.

mod common;

use std::sync::Arc;
use std::time::Duration as StdDuration;

use bytes::Bytes;
use charon::logstore::LogStore;
use charon_core::resources::{AttemptRecord, InstanceState, WorkflowInstance};
use common::cli::Cli;
use common::s3::{BUCKET, S3Server};
use common::{Cluster, LONG, NS, state, suspended_hourly};
use futures::TryStreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams};
use kube::{Api, ResourceExt};
use serde_json::json;

/// A suspended workflow (only the test's triggers run it) whose attempts print their number
/// and fail until the third.
async fn flaky(cluster: &Cluster, name: &str) {
    cluster
        .apply_suspended_hourly(
            name,
            "echo \"attempt $CHARON_EXECUTION_TRIES of $CHARON_PARAMETER\"; [ \"$CHARON_EXECUTION_TRIES\" -ge 2 ] || exit 1",
        )
        .await;
}

/// The cluster with an operator archiving into `s3://BUCKET/<prefix>` on `server`, a CLI
/// that reads that store, and the store itself.
async fn on_s3(server: &S3Server, prefix: &str) -> (Cluster, Cli, Arc<LogStore>) {
    let settings = server.settings();
    let url = format!("s3://{BUCKET}/{prefix}");
    let store = Arc::new(S3Server::store(&url, &settings));
    let mut cluster = Cluster::without_operator().await;
    cluster.log_store = Some(store.clone());
    cluster.start_operator();
    let mut env = settings;
    env.push(("CHARON_LOG_STORE".into(), url));
    let cli = Cli::new(&cluster).with_env(&env);
    (cluster, cli, store)
}

/// Runs `instance` to the end, skipping each retry's delay as `charon retry` does.
async fn until_finished(cluster: &Cluster, instance: &str) -> WorkflowInstance {
    cluster
        .eventually("the instance to finish", LONG, || async {
            let current = cluster.instance(instance).await?;
            let status = current.status.clone().unwrap_or_default();
            if status.state.is_terminal() {
                return Ok(current);
            }
            let asked = current
                .annotations()
                .contains_key(charon::controller::RETRY_NOW);
            if status.state == InstanceState::Queued && status.tries > 0 && !asked {
                let patch = json!({"metadata": {"annotations": {
                    charon::controller::RETRY_NOW: chrono::Utc::now().to_rfc3339()}}});
                cluster
                    .instances()
                    .patch(instance, &PatchParams::default(), &Patch::Merge(&patch))
                    .await
                    .map_err(|e| e.to_string())?;
            }
            Err(format!("{:?} after {} tries", status.state, status.tries))
        })
        .await
}

/// Waits until every attempt of `instance` is archived, and returns them.
async fn all_archived(cluster: &Cluster, instance: &str, attempts: usize) -> Vec<AttemptRecord> {
    cluster
        .eventually("every attempt to be archived", LONG, || async {
            let current = cluster.instance(instance).await?;
            let list = current.status.unwrap_or_default().attempts;
            if list.len() == attempts && list.iter().all(|a| a.archived) {
                Ok(list)
            } else {
                Err(format!("{list:?}"))
            }
        })
        .await
}

fn pods(cluster: &Cluster) -> Api<Pod> {
    Api::namespaced(cluster.client.clone(), NS)
}

/// The pods of `instance` still stored (held ones included).
async fn pods_of(cluster: &Cluster, instance: &str) -> Vec<Pod> {
    pods(cluster)
        .list(&ListParams::default().labels(&format!("charon.dev/instance={instance}")))
        .await
        .expect("pods")
        .items
}

/// Waits until no pod of `instance` is stored any more (held ones included).
async fn no_pods_left(cluster: &Cluster, instance: &str, what: &str) {
    cluster
        .eventually(what, LONG, || async {
            let left = pods_of(cluster, instance).await.len();
            if left == 0 {
                Ok(())
            } else {
                Err(format!("{left} pods"))
            }
        })
        .await;
}

/// Deletes every Job of `instance` and waits for their pods to be gone.
async fn delete_jobs_and_pods(cluster: &Cluster, instance: &str) {
    for job in cluster.jobs_of(instance).await {
        cluster
            .jobs()
            .delete(&job.name_any(), &DeleteParams::background())
            .await
            .expect("delete job");
    }
    cluster
        .eventually("the pods to be gone", LONG, || async {
            let left = pods_of(cluster, instance).await.len();
            if left == 0 && cluster.jobs_of(instance).await.is_empty() {
                Ok(())
            } else {
                Err(format!("{left} pods"))
            }
        })
        .await;
}

/// What `charon logs --all` prints for `attempts`, whose logs are `lines`.
fn expected_all(attempts: &[AttemptRecord], lines: &[String]) -> String {
    attempts
        .iter()
        .zip(lines)
        .map(|(a, line)| {
            format!(
                "== attempt {} (exit {}, reason {}) ==\n{line}\n",
                a.execution,
                a.exit_code.expect("an exit code"),
                a.reason
            )
        })
        .collect()
}

async fn read(store: &LogStore, key: &str) -> Option<Vec<u8>> {
    let stream = store.get(key).await.expect("get")?;
    let chunks: Vec<Bytes> = stream.try_collect().await.expect("read");
    Some(chunks.concat())
}

/// The S3 backend against the real server: a large log goes up in parts and comes back
/// whole, keys list and delete, and a missing bucket or wrong credentials are errors that
/// name the store.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_s3_store_uploads_lists_reads_back_and_names_its_errors() {
    let dir = tempfile::tempdir().expect("dir");
    let server = S3Server::start(dir.path()).await;
    let settings = server.settings();
    let url = format!("s3://{BUCKET}/prod");
    let store = S3Server::store(&url, &settings);
    store.check().await.expect("the bucket is reachable");

    // 12 MiB: three parts of a multipart upload.
    let log: Vec<u8> = (0..12 * 1024 * 1024 / 32)
        .flat_map(|i| format!("line {i:>26}\n").into_bytes())
        .collect();
    let written = store
        .put("ns/uid-1/1.log", log.as_slice())
        .await
        .expect("upload");
    assert_eq!(written, log.len() as u64);
    store
        .put("ns/uid-1/2.log", &b"second\n"[..])
        .await
        .expect("upload");
    store
        .put("ns/uid-2/1.log", &b"other\n"[..])
        .await
        .expect("upload");
    assert!(read(&store, "ns/uid-1/1.log").await.expect("there") == log);
    assert_eq!(
        read(&store, "ns/uid-1/2.log").await.expect("there"),
        b"second\n"
    );
    assert_eq!(read(&store, "ns/uid-1/3.log").await, None);
    // Under the URL's prefix on the server, as `<bucket>/prod/<key>`.
    assert!(
        dir.path()
            .join("s3")
            .join(BUCKET)
            .join("prod/ns/uid-1/2.log")
            .is_file()
    );
    let mut keys = store.keys("ns/uid-1/").await.expect("list");
    keys.sort();
    assert_eq!(keys, ["ns/uid-1/1.log", "ns/uid-1/2.log"]);
    assert_eq!(store.owners(Some("ns")).await.expect("owners").len(), 2);
    assert_eq!(store.delete_prefix("ns/uid-1/").await.expect("delete"), 2);
    assert_eq!(read(&store, "ns/uid-1/2.log").await, None);

    let missing = S3Server::store("s3://no-such-bucket/logs", &settings);
    let err = missing.check().await.expect_err("no bucket").to_string();
    assert!(
        err.starts_with("log store s3://no-such-bucket/logs: list"),
        "{err}"
    );
    assert!(err.contains("NoSuchBucket"), "{err}");

    let mut wrong = settings.clone();
    wrong.retain(|(k, _)| k != "AWS_SECRET_ACCESS_KEY");
    wrong.push(("AWS_SECRET_ACCESS_KEY".into(), "not-the-secret".into()));
    let refused = S3Server::store(&url, &wrong);
    let err = refused.check().await.expect_err("wrong secret").to_string();
    assert!(err.starts_with(&format!("log store {url}: list")), "{err}");
    assert!(
        err.contains("SignatureDoesNotMatch") || err.contains("403"),
        "{err}"
    );
}

/// The scenario on S3: two failed attempts and a success, each log archived as it
/// ended; all three read back by `charon logs --all` once every Job and pod is gone and again
/// after the operator restarted; deleting the instance deletes its logs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_attempts_logs_outlive_their_jobs_and_an_operator_restart_on_s3() {
    let dir = tempfile::tempdir().expect("dir");
    let server = S3Server::start(dir.path()).await;
    let (mut cluster, cli, store) = on_s3(&server, "charon").await;
    flaky(&cluster, "flaky").await;
    let (ok, _, err) = cli
        .run(&["-n", NS, "trigger", "flaky", "2024-01-01T00"])
        .await;
    assert!(ok, "{err}");
    let name = "flaky-2024-01-01t00";
    let done = until_finished(&cluster, name).await;
    assert_eq!(state(&done), InstanceState::Done);
    let attempts = all_archived(&cluster, name, 3).await;
    assert_eq!(
        attempts.iter().map(|a| a.exit_code).collect::<Vec<_>>(),
        [Some(1), Some(1), Some(0)]
    );
    let lines: Vec<String> = (0..3)
        .map(|n| format!("attempt {n} of 2024-01-01T00"))
        .collect();
    // The objects are where SPEC §11 says: namespace, instance uid, execution.
    let uid = done.uid().expect("uid");
    for (n, line) in (1..=3).zip(&lines) {
        let key = charon_core::archive::log_key(NS, &uid, n, None);
        assert_eq!(
            read(&store, &key).await.expect("archived"),
            format!("{line}\n").into_bytes()
        );
    }
    // Earlier attempts' pods were held only until archived; the last Job stays.
    cluster
        .eventually("the earlier attempts' pods to go", LONG, || async {
            let left = pods_of(&cluster, name).await;
            let held = left
                .iter()
                .filter(|p| {
                    p.finalizers()
                        .iter()
                        .any(|f| f == charon_core::archive::FINALIZER)
                })
                .count();
            if left.len() == 1 && held == 0 {
                Ok(())
            } else {
                Err(format!("{} pods, {held} held", left.len()))
            }
        })
        .await;

    delete_jobs_and_pods(&cluster, name).await;
    let expected = expected_all(&attempts, &lines);
    let (ok, out, err) = cli.run(&["-n", NS, "logs", "--all", name]).await;
    assert!(ok, "{err}");
    assert_eq!(out, expected);

    cluster.kill_operator().await;
    cluster.start_operator();
    let (ok, out, err) = cli.run(&["-n", NS, "logs", "--all", name]).await;
    assert!(ok, "{err}");
    assert_eq!(out, expected, "after the operator restarted");
    let (ok, out, err) = cli.run(&["-n", NS, "logs", "--attempt", "2", name]).await;
    assert!(ok, "{err}");
    assert_eq!(out, format!("{}\n", lines[1]));
    // Without the store, the CLI says where the log is.
    let (ok, _, err) = Cli::new(&cluster)
        .run(&["-n", NS, "logs", "--attempt", "2", name])
        .await;
    assert!(!ok);
    assert!(
        err.contains("is archived and its Job is gone: pass --log-store URL"),
        "{err}"
    );

    // Logs go with their instance.
    cluster
        .instances()
        .delete(name, &DeleteParams::default())
        .await
        .expect("delete instance");
    let prefix = charon_core::archive::instance_prefix(NS, &uid);
    cluster
        .eventually("the instance's logs to be deleted", LONG, || async {
            let keys = store.keys(&prefix).await.map_err(|e| e.to_string())?;
            if keys.is_empty() {
                Ok(())
            } else {
                Err(format!("{keys:?}"))
            }
        })
        .await;
    cluster.stop().await;
}

/// A halted attempt's pod is killed, but its log so far is archived before the pod goes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_halted_attempts_log_is_archived_in_a_file_store() {
    let dir = tempfile::tempdir().expect("dir");
    let url = url::Url::from_directory_path(dir.path().join("logs"))
        .expect("absolute")
        .to_string();
    let store = Arc::new(LogStore::open(&url).expect("file store"));
    let mut cluster = Cluster::without_operator().await;
    cluster.log_store = Some(store.clone());
    cluster.start_operator();
    let cli = Cli::new(&cluster).with_env(&[("CHARON_LOG_STORE".into(), url.clone())]);
    cluster
        .apply_suspended_hourly("long", "echo started; sleep 120")
        .await;
    let (ok, _, err) = cli
        .run(&["-n", NS, "trigger", "long", "2024-01-01T00"])
        .await;
    assert!(ok, "{err}");
    let name = "long-2024-01-01t00";
    let job = format!("{name}-1");
    cluster
        .eventually("the attempt to print", LONG, || async {
            let jobs = cluster.jobs_of(name).await;
            if jobs.is_empty() {
                return Err("no Job".to_string());
            }
            let pods = pods_of(&cluster, name).await;
            let running = pods
                .iter()
                .any(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running"));
            if running && cluster.log_of(&job).await.contains("started") {
                Ok(())
            } else {
                Err("not yet".to_string())
            }
        })
        .await;
    let (ok, _, err) = cli.run(&["-n", NS, "halt", name]).await;
    assert!(ok, "{err}");
    let attempts = all_archived(&cluster, name, 1).await;
    assert_eq!(
        attempts[0].outcome,
        Some(charon_core::resources::AttemptOutcomeKind::Halted)
    );
    no_pods_left(&cluster, name, "the halted pod to go").await;
    let (ok, out, err) = cli.run(&["-n", NS, "logs", name]).await;
    assert!(ok, "{err}");
    assert_eq!(out, "started\n");
    let (ok, out, err) = cli.run(&["-n", NS, "logs", "--all", name]).await;
    assert!(ok, "{err}");
    assert_eq!(out, "== attempt 1 (exit none, reason Halted) ==\nstarted\n");
    cluster.stop().await;
}

/// The store down while an attempt ends: the run finishes as if there were no store, the
/// pod is held, and its log is archived once the store is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_that_is_down_delays_only_the_archive_never_the_run() {
    let dir = tempfile::tempdir().expect("dir");
    let mut server = S3Server::start(dir.path()).await;
    server.stop();
    let (cluster, cli, _) = on_s3(&server, "down").await;
    cluster
        .apply_suspended_hourly("quick", "echo hello from $CHARON_PARAMETER")
        .await;
    let started = std::time::Instant::now();
    let (ok, _, err) = cli
        .run(&["-n", NS, "trigger", "quick", "2024-01-01T00"])
        .await;
    assert!(ok, "{err}");
    let name = "quick-2024-01-01t00";
    let done = until_finished(&cluster, name).await;
    assert_eq!(state(&done), InstanceState::Done);
    assert!(
        started.elapsed() < StdDuration::from_secs(20),
        "the run was delayed"
    );
    let attempt = &done.status.as_ref().expect("status").attempts[0];
    assert!(!attempt.archived);
    let held = pods_of(&cluster, name).await;
    assert_eq!(held.len(), 1);
    assert!(
        held[0]
            .finalizers()
            .iter()
            .any(|f| f == charon_core::archive::FINALIZER)
    );

    server.resume().await;
    all_archived(&cluster, name, 1).await;
    delete_jobs_and_pods(&cluster, name).await;
    let (ok, out, err) = cli.run(&["-n", NS, "logs", name]).await;
    assert!(ok, "{err}");
    assert_eq!(out, "hello from 2024-01-01T00\n");
    cluster.stop().await;
}

/// An archive the operator could not finish (the store was down) is done by the next
/// operator, from the pod's finalizer; and an attempt killed at its running timeout, whose
/// pod the Job controller deletes, still has its log archived.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_timed_out_attempt_is_archived_by_the_operator_after_a_crash() {
    let dir = tempfile::tempdir().expect("dir");
    let mut server = S3Server::start(dir.path()).await;
    server.stop();
    let (mut cluster, cli, _) = on_s3(&server, "crash").await;
    cluster
        .apply_workflow("slow", {
            let mut spec = suspended_hourly("echo begun; sleep 60");
            spec["runningTimeout"] = json!("PT2S");
            spec
        })
        .await;
    let (ok, _, err) = cli
        .run(&["-n", NS, "trigger", "slow", "2024-01-01T00"])
        .await;
    assert!(ok, "{err}");
    let name = "slow-2024-01-01t00";
    let timed_out = cluster
        .eventually("the attempt to time out", LONG, || async {
            let current = cluster.instance(name).await?;
            let attempts = current.status.unwrap_or_default().attempts;
            match attempts.first() {
                Some(a)
                    if a.outcome == Some(charon_core::resources::AttemptOutcomeKind::TimedOut) =>
                {
                    Ok(a.clone())
                }
                other => Err(format!("{other:?}")),
            }
        })
        .await;
    assert!(!timed_out.archived, "the store is down");
    // Halt it so no second attempt runs, then crash the operator while the pod is held.
    let (ok, _, err) = cli.run(&["-n", NS, "halt", name]).await;
    assert!(ok, "{err}");
    cluster
        .eventually("the killed pod to be held", LONG, || async {
            let pods = pods_of(&cluster, name).await;
            let held = pods.iter().any(|p| {
                p.metadata.deletion_timestamp.is_some()
                    && p.finalizers()
                        .iter()
                        .any(|f| f == charon_core::archive::FINALIZER)
            });
            if held {
                Ok(())
            } else {
                Err(format!("{} pods", pods.len()))
            }
        })
        .await;
    cluster.kill_operator().await;
    server.resume().await;
    cluster.start_operator();
    all_archived(&cluster, name, 1).await;
    no_pods_left(&cluster, name, "the pod to go once archived").await;
    let (ok, out, err) = cli.run(&["-n", NS, "logs", "--attempt", "1", name]).await;
    assert!(ok, "{err}");
    assert_eq!(out, "begun\n");
    cluster.stop().await;
}
