//! End-to-end: the user commands (`charon trigger`, `backfill`, `halt`, `retry`, `logs`,
//! `status`) run as the real binary against the embedded cluster with the operator, and as a
//! kubectl plugin through the real `kubectl`.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration as StdDuration;

use charon_core::resources::{Backfill, InstanceState, TriggerType, Workflow};
use common::cli::Cli;
use common::{Cluster, LONG, NS, state};
use kube::api::{Patch, PatchParams};
use kube::{Api, ResourceExt};
use serde_json::json;

fn backfills(cluster: &Cluster) -> Api<Backfill> {
    Api::namespaced(cluster.client.clone(), NS)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backfill_from_the_cli_never_exceeds_its_concurrency() {
    let cluster = Cluster::start().await;
    let cli = Cli::new(&cluster);
    cluster
        .apply_suspended_hourly("hb", "sleep 0.3; echo \"done $CHARON_PARAMETER\"")
        .await;
    let (ok, out, err) = cli
        .run(&[
            "-n",
            NS,
            "backfill",
            "create",
            "hb",
            "--start",
            "2024-01-01T00",
            "--end",
            "2024-01-01T12",
            "--concurrency",
            "3",
        ])
        .await;
    assert!(ok, "{err}");
    assert!(
        out.contains("12 partitions of hb, at most 3 at a time"),
        "{out}"
    );
    let name = out
        .split_whitespace()
        .next()
        .and_then(|w| w.strip_prefix("backfill/"))
        .expect("name")
        .to_string();
    let deadline = tokio::time::Instant::now() + LONG;
    loop {
        let backfill = backfills(&cluster).get(&name).await.expect("backfill");
        let done = backfill.status.as_ref().map_or(0, |s| s.counts.done);
        if done == 12 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "backfill did not finish: {:?}",
            backfill.status
        );
        tokio::time::sleep(StdDuration::from_millis(20)).await;
    }
    let instances = cluster.instances_of("hb").await;
    assert_eq!(instances.len(), 12);
    let max_active = common::most_active_at_once(&instances);
    assert!(max_active <= 3, "{max_active} active at once");
    assert!(max_active >= 2, "ran one at a time ({max_active})");
    assert!(
        instances.iter().all(|i| state(i) == InstanceState::Done
            && i.spec.trigger.trigger_type == TriggerType::Backfill)
    );

    // `backfill list` and `show`, directly and as a kubectl plugin.
    let (ok, out, err) = cli.run(&["-n", NS, "backfill", "list"]).await;
    assert!(ok, "{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert!(lines[0].starts_with("NAME"), "{out}");
    assert!(
        lines[1].contains("Completed") && lines[1].contains("12/12"),
        "{out}"
    );
    let (ok, out, _) = cli.run(&["-n", NS, "backfill", "show", &name]).await;
    assert!(ok);
    assert!(
        out.contains("triggered 12 active 0 done 12 failed 0 skipped 0"),
        "{out}"
    );
    assert!(out.contains("2024-01-01T11   Done"), "{out}");
    let plugin = kubectl_plugin_dir();
    let path = format!(
        "{}:{}",
        plugin.path().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let out = Command::new("kubectl")
        .args(["charon", "backfill", "list", "-n", NS, "--kubeconfig"])
        .arg(&cli.kubeconfig)
        .env("PATH", path)
        .output()
        .expect("kubectl runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains(&name) && stdout.contains("12/12"),
        "{stdout}"
    );

    // `status` shows the grid and the backfill's progress; `logs` prints the Job's output.
    let (ok, out, _) = cli.run(&["-n", NS, "status", "hb"]).await;
    assert!(ok);
    assert!(out.contains("Recent:   DDDDDDDDDDDD"), "{out}");
    assert!(out.contains("[####################] 12/12 100%"), "{out}");
    let (ok, out, err) = cli.run(&["-n", NS, "logs", "hb-2024-01-01t05"]).await;
    assert!(ok, "{err}");
    assert_eq!(out.trim(), "done 2024-01-01T05");

    // The whole output of each view, with what depends on when the test runs masked.
    for (snapshot, args) in [
        ("backfill_list", vec!["backfill", "list"]),
        ("backfill_show", vec!["backfill", "show", name.as_str()]),
        ("status_workflow", vec!["status", "hb"]),
        ("backfill_list_json", vec!["backfill", "list", "-o", "json"]),
    ] {
        let mut full = vec!["-n", NS];
        full.extend(args);
        let (ok, out, err) = cli.run(&full).await;
        assert!(ok, "{snapshot}: {err}");
        insta::with_settings!({filters => vec![
            // Ids first: a uid segment such as `983d` would otherwise be masked as a duration.
            (r"\b(uid|resourceVersion)(\W+)[0-9a-f-]+", "$1$2[id]"),
            (r"\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:\d{2})", "[time]"),
            // Partitions of the test's own range are kept; the next one depends on today.
            (r"\b20(2[5-9]|[3-9][0-9])-\d{2}-\d{2}T\d{2}\b", "[partition]"),
            (r"\b\d+(\.\d+)?(ms|s|m|h|d)\b", "[duration]"),
        ]}, {
            insta::assert_snapshot!(snapshot, out);
        });
    }
    cluster.stop().await;
}

fn kubectl_plugin_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("dir");
    let target = dir.path().join("kubectl-charon");
    std::os::unix::fs::symlink(Path::new(env!("CARGO_BIN_EXE_charon")), &target).expect("symlink");
    dir
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ad_hoc_triggers_annotations_halt_and_retry() {
    let cluster = Cluster::start().await;
    let cli = Cli::new(&cluster);
    cluster
        .apply_suspended_hourly("hb", "echo \"p=$CHARON_PARAMETER x=$EXTRA\"")
        .await;

    let (ok, out, err) = cli
        .run(&[
            "-n",
            NS,
            "trigger",
            "hb",
            "2024-01-02T05:30",
            "-e",
            "EXTRA=yes",
        ])
        .await;
    assert!(ok, "{err}");
    assert!(
        out.starts_with(
            "workflowinstance/hb-2024-01-02t05 created (partition 2024-01-02T05, trigger adhoc-"
        ),
        "{out}"
    );
    let instance = cluster
        .instances()
        .get("hb-2024-01-02t05")
        .await
        .expect("instance");
    assert_eq!(instance.spec.parameter, "2024-01-02T05");
    assert_eq!(instance.spec.trigger.trigger_type, TriggerType::Adhoc);
    cluster
        .wait_states("hb", 1, &[InstanceState::Done], LONG)
        .await;
    let (_, out, _) = cli.run(&["-n", NS, "logs", "hb-2024-01-02t05"]).await;
    assert_eq!(out.trim(), "p=2024-01-02T05 x=yes");

    // Again: the finished instance is re-opened as a new run, the first run kept.
    let (ok, out, err) = cli.run(&["-n", NS, "trigger", "hb", "2024-01-02T05"]).await;
    assert!(ok, "{err}");
    assert!(out.contains("re-opened"), "{out}");
    let reopened = cluster
        .eventually("the second run to finish", LONG, || async {
            let i = cluster.instance("hb-2024-01-02t05").await?;
            let s = i.status.clone().unwrap_or_default();
            if s.state == InstanceState::Done && s.runs.len() == 1 {
                Ok(i)
            } else {
                Err(format!("{s:?}"))
            }
        })
        .await;
    let status = reopened.status.expect("status");
    assert_eq!(status.runs[0].state, InstanceState::Done);
    assert_eq!(status.execution, 2);
    // Every attempt, with a header each: the first run's Job was deleted with its log.
    cluster
        .eventually("the first attempt's Job to go", LONG, || async {
            let jobs = cluster.jobs_of("hb-2024-01-02t05").await;
            if jobs.len() == 1 {
                Ok(())
            } else {
                Err(format!("{} Jobs", jobs.len()))
            }
        })
        .await;
    let (ok, out, err) = cli
        .run(&["-n", NS, "logs", "--all", "hb-2024-01-02t05"])
        .await;
    assert!(ok, "{err}");
    assert_eq!(
        out,
        "== attempt 1 (exit 0, reason Succeeded) ==\n\
         (log not kept: its Job hb-2024-01-02t05-1 was deleted; it was never archived (no log store was configured when it ran, or archiving failed: see the instance's LogNotArchived Events))\n\
         == attempt 2 (exit 0, reason Succeeded) ==\n\
         p=2024-01-02T05 x=\n"
    );
    let (ok, out, err) = cli.run(&["-n", NS, "status", "hb"]).await;
    assert!(ok, "{err}");
    assert!(
        out.contains("  Retried:\n    2024-01-02T05            2 attempts: exit 0, exit 0\n"),
        "{out}"
    );

    // A partition that is not due is refused with one clear line and a non-zero exit.
    let (ok, _, err) = cli.run(&["-n", NS, "trigger", "hb", "2099-01-01T00"]).await;
    assert!(!ok);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.starts_with("error: partition 2099-01-01T00 is not due until"),
        "{err}"
    );
    let (ok, _, err) = cli.run(&["-n", NS, "trigger", "nope", "2024-01-01"]).await;
    assert!(!ok);
    assert_eq!(
        err.trim(),
        "error: workflow \"nope\" not found in namespace default"
    );

    // Annotation shorthands: consumed, acted on, and removed.
    let workflows: Api<Workflow> = Api::namespaced(cluster.client.clone(), NS);
    workflows
        .patch(
            "hb",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"annotations": {
                "charon.dev/trigger": "2024-01-03T01",
                "charon.dev/backfill": "2024-01-04T00/2024-01-04T03/2",
            }}})),
        )
        .await
        .expect("annotate");
    cluster
        .eventually("the annotations to be consumed", LONG, || async {
            let wf = workflows.get("hb").await.map_err(|e| e.to_string())?;
            let left: Vec<&String> = wf
                .annotations()
                .keys()
                .filter(|k| k.starts_with("charon.dev/"))
                .collect();
            if left.is_empty() {
                Ok(())
            } else {
                Err(format!("{left:?}"))
            }
        })
        .await;
    let adhoc = cluster
        .instances()
        .get("hb-2024-01-03t01")
        .await
        .expect("annotation trigger");
    assert_eq!(adhoc.spec.trigger.trigger_type, TriggerType::Adhoc);
    cluster
        .eventually("the annotation's backfill to complete", LONG, || async {
            let list = backfills(&cluster)
                .list(&Default::default())
                .await
                .map_err(|e| e.to_string())?;
            match list.items.first().and_then(|b| b.status.clone()) {
                Some(s) if s.counts.done == 3 => Ok(()),
                other => Err(format!("{other:?}")),
            }
        })
        .await;

    // Halt a running instance from the CLI; retry a queued one.
    cluster.apply_suspended_hourly("slow", "sleep 60").await;
    cluster.apply_suspended_hourly("flaky", "exit 3").await;
    let (ok, _, err) = cli
        .run(&["-n", NS, "trigger", "slow", "2024-01-01T00"])
        .await;
    assert!(ok, "{err}");
    cluster
        .wait_states("slow", 1, &[InstanceState::Running], LONG)
        .await;
    let (ok, out, _) = cli.run(&["-n", NS, "halt", "slow-2024-01-01t00"]).await;
    assert!(ok);
    assert_eq!(out.trim(), "workflowinstance/slow-2024-01-01t00 halted");
    cluster
        .wait_states("slow", 1, &[InstanceState::Halted], LONG)
        .await;

    let (ok, _, _) = cli
        .run(&["-n", NS, "trigger", "flaky", "2024-01-01T00"])
        .await;
    assert!(ok);
    cluster
        .eventually("the first failure", LONG, || async {
            let i = cluster.instance("flaky-2024-01-01t00").await?;
            let s = i.status.unwrap_or_default();
            if s.state == InstanceState::Queued && s.tries == 1 {
                Ok(())
            } else {
                Err(format!("{s:?}"))
            }
        })
        .await;
    let (ok, out, _) = cli.run(&["-n", NS, "retry", "flaky-2024-01-01t00"]).await;
    assert!(ok);
    assert_eq!(
        out.trim(),
        "workflowinstance/flaky-2024-01-01t00 will retry now"
    );
    cluster
        .eventually("the second attempt at once", LONG, || async {
            let i = cluster.instance("flaky-2024-01-01t00").await?;
            let s = i.status.unwrap_or_default();
            // Cost is not reset by a retry-now.
            if s.tries == 2 && s.cost >= 2.0 {
                Ok(())
            } else {
                Err(format!("{s:?}"))
            }
        })
        .await;
    cluster.stop().await;
}

async fn create(cluster: &Cluster, name: &str, extra: serde_json::Value) {
    let mut spec = json!({"workflow": "rb", "start": "2024-01-01T00", "end": "2024-01-01T04", "concurrency": 1});
    for (k, v) in extra.as_object().expect("object") {
        spec[k] = v.clone();
    }
    let backfill: Backfill = serde_json::from_value(json!({
        "apiVersion": "charon.dev/v1alpha1", "kind": "Backfill",
        "metadata": {"name": name}, "spec": spec,
    }))
    .expect("backfill");
    backfills(cluster)
        .create(&Default::default(), &backfill)
        .await
        .expect("created");
}

async fn wait_completed(cluster: &Cluster, name: &str) -> charon_core::resources::BackfillStatus {
    let api = backfills(cluster);
    cluster
        .eventually(&format!("backfill {name} to complete"), LONG, || async {
            let b = api.get(name).await.map_err(|e| e.to_string())?;
            let s = b.status.unwrap_or_default();
            if s.state == charon_core::resources::BackfillState::Completed {
                Ok(s)
            } else {
                Err(format!("{s:?}"))
            }
        })
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reverse_order_reprocess_modes_and_halting() {
    let cluster = Cluster::start().await;
    cluster.apply_suspended_hourly("rb", "sleep 0.2").await;
    // Reverse: newest first, one at a time.
    create(&cluster, "rev", json!({"reverse": true})).await;
    wait_completed(&cluster, "rev").await;
    let mut instances = cluster.instances_of("rb").await;
    instances.sort_by_key(|i| i.status.as_ref().and_then(|s| s.started_at));
    let order: Vec<&str> = instances
        .iter()
        .map(|i| i.spec.parameter.as_str())
        .collect();
    assert_eq!(
        order,
        [
            "2024-01-01T03",
            "2024-01-01T02",
            "2024-01-01T01",
            "2024-01-01T00"
        ]
    );

    // Missing: everything exists, so everything is skipped.
    create(
        &cluster,
        "missing",
        json!({"reprocess": "Missing", "end": "2024-01-01T05"}),
    )
    .await;
    let s = wait_completed(&cluster, "missing").await;
    assert_eq!(
        (s.counts.skipped, s.counts.triggered, s.counts.done),
        (4, 1, 1)
    );

    // All re-runs finished partitions; Failed re-runs only those that did not end Done.
    create(
        &cluster,
        "all",
        json!({"reprocess": "All", "end": "2024-01-01T02"}),
    )
    .await;
    let s = wait_completed(&cluster, "all").await;
    assert_eq!(s.counts.done, 2);
    create(&cluster, "failed", json!({"reprocess": "Failed"})).await;
    let s = wait_completed(&cluster, "failed").await;
    assert_eq!(s.counts.skipped, 4);

    // Non-graceful halt halts the active instance; graceful lets it finish.
    cluster.apply_suspended_hourly("long", "sleep 30").await;
    for (name, graceful) in [("hard", false), ("soft", true)] {
        let start = if graceful {
            "2024-02-01T00"
        } else {
            "2024-03-01T00"
        };
        let end = if graceful {
            "2024-02-01T03"
        } else {
            "2024-03-01T03"
        };
        let backfill: Backfill = serde_json::from_value(json!({
            "apiVersion": "charon.dev/v1alpha1", "kind": "Backfill",
            "metadata": {"name": name},
            "spec": {"workflow": "long", "start": start, "end": end, "concurrency": 1},
        }))
        .expect("backfill");
        backfills(&cluster)
            .create(&Default::default(), &backfill)
            .await
            .expect("created");
        let first = format!("long-{}", start.to_lowercase());
        cluster
            .eventually("the first partition to run", LONG, || async {
                let i = cluster.instance(&first).await?;
                if state(&i) == InstanceState::Running {
                    Ok(())
                } else {
                    Err(state(&i).as_str().to_string())
                }
            })
            .await;
        backfills(&cluster)
            .patch(
                name,
                &PatchParams::default(),
                &Patch::Merge(json!({"spec": {"halted": true, "gracefulHalt": graceful}})),
            )
            .await
            .expect("halt");
        let b = cluster
            .eventually("the backfill to halt", LONG, || async {
                let b = backfills(&cluster)
                    .get(name)
                    .await
                    .map_err(|e| e.to_string())?;
                let s = b.status.clone().unwrap_or_default();
                if s.state == charon_core::resources::BackfillState::Halted
                    || (!graceful && s.state == charon_core::resources::BackfillState::Completed)
                {
                    Ok(s)
                } else {
                    Err(format!("{s:?}"))
                }
            })
            .await;
        assert_eq!(b.counts.triggered, 1, "{name}");
        let i = cluster.instances().get(&first).await.expect("instance");
        if graceful {
            assert_eq!(state(&i), InstanceState::Running);
        } else {
            cluster
                .eventually("the instance to halt", LONG, || async {
                    let i = cluster.instance(&first).await?;
                    if state(&i) == InstanceState::Halted {
                        Ok(())
                    } else {
                        Err(state(&i).as_str().to_string())
                    }
                })
                .await;
        }
    }
    cluster.stop().await;
}

/// Runs `charon ARGS` with no cluster at all, in `env` (HOME and KUBECONFIG are the test's).
fn run_alone(args: &[&str], env: &[(&str, &std::ffi::OsStr)]) -> (bool, String) {
    let mut command = Command::new(env!("CARGO_BIN_EXE_charon"));
    command
        .args(args)
        .env_remove("KUBECONFIG")
        .env_remove("KUBERNETES_SERVICE_HOST")
        .env_remove("RUST_LOG")
        .env_remove("NO_COLOR");
    for (key, value) in env {
        command.env(key, value);
    }
    let out = command.output().expect("charon runs");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn connection_problems_are_one_line_naming_the_server_or_the_missing_kubeconfig() {
    let home = tempfile::tempdir().expect("home");
    let home_env = ("HOME", home.path().as_os_str());

    // A server that is not there: a port nothing listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let kubeconfig = home.path().join("closed.kubeconfig");
    charon_apiserver::write_kubeconfig(&kubeconfig, &format!("http://127.0.0.1:{port}"))
        .expect("kubeconfig");
    let path = kubeconfig.to_str().expect("utf-8 path");
    let (ok, err) = run_alone(&["backfill", "list", "--kubeconfig", path], &[home_env]);
    assert!(!ok);
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    assert!(
        err.starts_with(&format!(
            "error: cannot reach the API server at http://127.0.0.1:{port}: "
        )),
        "{err}"
    );
    assert!(err.contains("check that the cluster is running"), "{err}");

    // No kubeconfig where KUBECONFIG says, and none in HOME.
    let missing = home.path().join("nowhere.kubeconfig");
    let (ok, err) = run_alone(
        &["status"],
        &[home_env, ("KUBECONFIG", missing.as_os_str())],
    );
    assert!(!ok);
    assert_eq!(
        err.trim_end(),
        format!(
            "error: no kubeconfig: KUBECONFIG is {}, which does not exist; pass --kubeconfig PATH, set KUBECONFIG, or run `charon dev` for a local cluster",
            missing.display()
        )
    );
    let (ok, err) = run_alone(&["halt", "x"], &[home_env]);
    assert!(!ok);
    assert_eq!(
        err.trim_end(),
        format!(
            "error: no kubeconfig: KUBECONFIG is not set and {} does not exist; pass --kubeconfig PATH, set KUBECONFIG, or run `charon dev` for a local cluster",
            home.path().join(".kube/config").display()
        )
    );

    // Logs into a pipe (stderr here) are plain text, without ANSI colour codes.
    let (ok, err) = run_alone(
        &[
            "--log-level",
            "debug",
            "backfill",
            "list",
            "--kubeconfig",
            path,
        ],
        &[home_env],
    );
    assert!(!ok);
    assert!(err.contains("DEBUG"), "debug logs expected: {err}");
    assert!(!err.contains('\x1b'), "ANSI codes in a pipe: {err:?}");
}

/// A Warning Event about `object` with this reason, when there is one.
async fn warning(cluster: &Cluster, object: &str, reason: &str) -> Result<String, String> {
    let events: Api<k8s_openapi::api::core::v1::Event> =
        Api::namespaced(cluster.client.clone(), NS);
    let list = events
        .list(&Default::default())
        .await
        .map_err(|e| e.to_string())?;
    let about: Vec<_> = list
        .items
        .iter()
        .filter(|e| e.involved_object.name.as_deref() == Some(object))
        .collect();
    about
        .iter()
        .find(|e| e.reason.as_deref() == Some(reason))
        .map(|e| {
            assert_eq!(e.type_.as_deref(), Some("Warning"), "{e:?}");
            e.message.clone().unwrap_or_default()
        })
        .ok_or_else(|| {
            let reasons: Vec<_> = about.iter().map(|e| e.reason.clone()).collect();
            format!("{reasons:?}")
        })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_a_new_user_runs_into() {
    let cluster = Cluster::start().await;
    let cli = Cli::new(&cluster);
    cluster
        .apply_suspended_hourly("hb", "echo \"p=$CHARON_PARAMETER\"")
        .await;

    // Halting a finished instance is refused, as retrying one is.
    let (ok, _, err) = cli.run(&["-n", NS, "trigger", "hb", "2024-01-01T05"]).await;
    assert!(ok, "{err}");
    cluster
        .wait_states("hb", 1, &[InstanceState::Done], LONG)
        .await;
    let (ok, out, err) = cli.run(&["-n", NS, "halt", "hb-2024-01-01t05"]).await;
    assert!(!ok, "{out}");
    assert_eq!(
        err.trim_end(),
        "error: instance hb-2024-01-01t05 is Done already; halting stops an unfinished instance"
    );

    // Suspend and resume a workflow, by name or as cwf/NAME; a finished instance cannot be.
    let suspended = || async { cluster.workflow("hb").await.map(|w| w.spec.suspend) };
    let (ok, out, err) = cli.run(&["-n", NS, "resume", "hb"]).await;
    assert!(ok, "{err}");
    assert!(out.starts_with("workflow/hb resumed"), "{out}");
    assert_eq!(suspended().await, Ok(false));
    let (ok, out, err) = cli.run(&["-n", NS, "suspend", "cwf/hb"]).await;
    assert!(ok, "{err}");
    assert!(out.starts_with("workflow/hb suspended"), "{out}");
    assert_eq!(suspended().await, Ok(true));
    for name in ["cwfi/hb-2024-01-01t05", "hb-2024-01-01t05"] {
        let (ok, _, err) = cli.run(&["-n", NS, "suspend", name]).await;
        assert!(!ok);
        assert_eq!(
            err.trim_end(),
            "error: workflowinstance/hb-2024-01-01t05 is Done already; only a queued or running instance can be suspended"
        );
    }
    let (ok, _, err) = cli.run(&["-n", NS, "resume", "nope"]).await;
    assert!(!ok);
    assert_eq!(
        err.trim_end(),
        "error: no workflow or workflowinstance \"nope\" in namespace default"
    );

    // Backfill ranges are refused in the CLI's words; `--reprocess All` (as documented) is accepted.
    let create = |start: &'static str, end: &'static str| {
        let cli = &cli;
        async move {
            cli.run(&[
                "-n",
                NS,
                "backfill",
                "create",
                "hb",
                "--start",
                start,
                "--end",
                end,
                "--reprocess",
                "All",
            ])
            .await
        }
    };
    // A range that reaches a day past now (whatever day the test runs on).
    let hour = |d: chrono::Duration| (chrono::Utc::now() + d).format("%Y-%m-%dT%H").to_string();
    let (start, end) = (
        hour(-chrono::Duration::days(2)),
        hour(chrono::Duration::days(1)),
    );
    let (ok, _, err) = cli
        .run(&[
            "-n", NS, "backfill", "create", "hb", "--start", &start, "--end", &end,
        ])
        .await;
    assert!(!ok);
    assert!(err.starts_with("error: --end: partition "), "{err}");
    assert!(err.contains("pass --allow-future"), "{err}");
    assert!(!err.contains("spec."), "{err}");
    let (ok, _, err) = create("2024-01-01T02", "2024-01-01T00").await;
    assert!(!ok);
    assert_eq!(
        err.trim_end(),
        "error: --end: \"2024-01-01T00\" must be after --start \"2024-01-01T02\""
    );

    // The same reversed range through the annotation: a Warning, and no Backfill.
    let workflows: Api<Workflow> = Api::namespaced(cluster.client.clone(), NS);
    workflows
        .patch(
            "hb",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"annotations": {
                "charon.dev/backfill": "2024-01-02T00/2024-01-01T00",
            }}})),
        )
        .await
        .expect("annotate");
    let message = cluster
        .eventually("the refusal's Event", LONG, || async {
            warning(&cluster, "hb", "BackfillRefused").await
        })
        .await;
    assert!(
        message.contains("refused: spec.end: \"2024-01-01T00\" must be after spec.start"),
        "{message}"
    );
    assert!(
        backfills(&cluster)
            .list(&Default::default())
            .await
            .expect("list")
            .items
            .is_empty()
    );

    // Backfills by a unique prefix of their name; a halted one shows no ETA and resumes.
    cluster.apply_suspended_hourly("slow", "sleep 1").await;
    let (ok, out, err) = cli
        .run(&[
            "-n",
            NS,
            "backfill",
            "create",
            "slow",
            "--start",
            "2024-01-01T00",
            "--end",
            "2024-01-01T10",
        ])
        .await;
    assert!(ok, "{err}");
    assert!(
        out.starts_with("backfill/slow-backfill-2024-01-01t00-2024-01-01t10 created"),
        "{out}"
    );
    let (ok, out, err) = cli
        .run(&[
            "-n",
            NS,
            "backfill",
            "create",
            "slow",
            "--start",
            "2024-02-01T00",
            "--end",
            "2024-02-01T01",
        ])
        .await;
    assert!(ok, "{err}: {out}");
    let (ok, _, err) = cli.run(&["-n", NS, "backfill", "show", "slow-back"]).await;
    assert!(!ok);
    assert_eq!(
        err.trim_end(),
        "error: 2 backfills start with \"slow-back\" (slow-backfill-2024-01-01t00-2024-01-01t10, slow-backfill-2024-02-01t00-2024-02-01t01); give more of the name"
    );
    let name = "slow-backfill-2024-01-01t00-2024-01-01t10";
    cluster
        .eventually("a first partition done", LONG, || async {
            let b = backfills(&cluster)
                .get(name)
                .await
                .map_err(|e| e.to_string())?;
            match b.status {
                Some(s) if s.counts.done >= 1 => Ok(()),
                other => Err(format!("{other:?}")),
            }
        })
        .await;
    let (ok, out, err) = cli
        .run(&[
            "-n",
            NS,
            "backfill",
            "halt",
            "slow-backfill-2024-01",
            "--graceful",
        ])
        .await;
    assert!(ok, "{err}");
    assert_eq!(
        out.trim(),
        format!("backfill/{name} halted; active instances may finish")
    );
    cluster
        .eventually("the backfill to halt", LONG, || async {
            let b = backfills(&cluster)
                .get(name)
                .await
                .map_err(|e| e.to_string())?;
            let s = b.status.unwrap_or_default();
            if s.state == charon_core::resources::BackfillState::Halted && s.counts.active == 0 {
                Ok(())
            } else {
                Err(format!("{s:?}"))
            }
        })
        .await;
    let (ok, out, err) = cli
        .run(&["-n", NS, "backfill", "show", "slow-backfill-2024-01"])
        .await;
    assert!(ok, "{err}");
    assert!(out.starts_with(&format!("Name:        {name}\n")), "{out}");
    let progress = out
        .lines()
        .find(|l| l.starts_with("Progress:"))
        .expect("progress");
    assert!(
        progress.ends_with("Halted"),
        "no ETA for a halted backfill: {progress}"
    );
    let (ok, out, err) = cli
        .run(&["-n", NS, "backfill", "resume", "slow-backfill-2024-01"])
        .await;
    assert!(ok, "{err}");
    assert_eq!(
        out.trim(),
        format!("backfill/{name} resumed; its pending partitions are triggered again")
    );
    let status = wait_completed(&cluster, name).await;
    assert_eq!((status.counts.done, status.counts.failed), (10, 0));
    let (ok, _, err) = cli.run(&["-n", NS, "backfill", "resume", name]).await;
    assert!(!ok);
    assert_eq!(
        err.trim_end(),
        format!("error: backfill {name} is not halted")
    );
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_shows_gaps_retry_times_and_one_legend_and_logs_start_with_the_job() {
    let cluster = Cluster::start().await;
    let cli = Cli::new(&cluster);
    cluster.apply_suspended_hourly("gaps", "true").await;
    cluster.apply_suspended_hourly("flaky", "exit 3").await;
    for (workflow, partition) in [
        ("gaps", "2024-01-01T00"),
        ("gaps", "2024-01-01T01"),
        ("gaps", "2024-01-01T03"),
        ("flaky", "2024-01-01T00"),
    ] {
        let (ok, _, err) = cli.run(&["-n", NS, "trigger", workflow, partition]).await;
        assert!(ok, "{err}");
    }
    cluster
        .wait_states("gaps", 3, &[InstanceState::Done], LONG)
        .await;
    cluster
        .eventually("flaky's first failure", LONG, || async {
            let i = cluster.instance("flaky-2024-01-01t00").await?;
            let s = i.status.unwrap_or_default();
            if s.state == InstanceState::Queued && s.next_attempt_at.is_some() {
                Ok(())
            } else {
                Err(format!("{s:?}"))
            }
        })
        .await;
    let (ok, out, err) = cli.run(&["-n", NS, "status"]).await;
    assert!(ok, "{err}");
    assert!(
        out.contains("Recent:   DD-D  (2024-01-01T00 … 2024-01-01T03)"),
        "{out}"
    );
    assert_eq!(
        out.lines().filter(|l| l.contains("D done")).count(),
        1,
        "one legend: {out}"
    );
    assert!(
        out.ends_with(
            "Recent: D done, E error, H halted, R running, Q queued, - no instance, . other\n"
        ),
        "{out}"
    );
    // The retry delay as a time, not the "retrying in 3m" frozen when it was written.
    let line = out
        .lines()
        .find(|l| l.contains("exit code 3"))
        .expect("flaky's line");
    let shape = regex::Regex::new(r"exit code 3; retrying at \d\d:\d\d:\d\dZ \(in \d+m(\d+s)?\)$")
        .expect("regex");
    assert!(shape.is_match(line), "{line}");

    // `charon logs` from the first moment the Job exists, before the attempt is recorded.
    cluster
        .apply_suspended_hourly("talks", "echo one; sleep 3; echo two")
        .await;
    let (ok, _, err) = cli
        .run(&["-n", NS, "trigger", "talks", "2024-01-01T00"])
        .await;
    assert!(ok, "{err}");
    let instance = "talks-2024-01-01t00";
    cluster
        .eventually("the Job", LONG, || async {
            match cluster.jobs_of(instance).await.len() {
                0 => Err("no Job".to_string()),
                _ => Ok(()),
            }
        })
        .await;
    let unrecorded = cluster.instance(instance).await.expect("instance");
    let status = unrecorded.status.expect("the schema's default status");
    assert_eq!(status.job, None, "recorded already: {status:?}");
    assert_eq!(status.state, InstanceState::Queued);
    let (ok, out, err) = cli.run(&["-n", NS, "logs", "-f", instance]).await;
    assert!(ok, "{err}");
    assert_eq!(out, "one\ntwo\n");
    cluster.stop().await;
}
