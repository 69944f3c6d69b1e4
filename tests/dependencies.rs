//! End-to-end: `spec.dependsOn` (partitions wait for their upstream partitions, are woken
//! when those are Done, time out, cycles are refused) and suspending and resuming a running
//! instance (SPEC §15), with the real binary's `trigger`, `backfill`, `deps`, `status`,
//! `suspend` and `resume` against the embedded cluster and the operator.

mod common;

use std::time::Duration as StdDuration;

use charon_core::resources::{InstanceState, WorkflowInstance};
use chrono::{DateTime, Utc};
use common::cli::Cli;
use common::{Cluster, LONG, NS, state, suspended_hourly};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{ListParams, Patch, PatchParams};
use kube::{Api, ResourceExt};
use serde_json::json;

/// When the instance's history first reached `to`.
fn reached(instance: &WorkflowInstance, to: InstanceState) -> DateTime<Utc> {
    let status = instance.status.as_ref().expect("a status");
    status
        .history
        .iter()
        .find(|h| h.to == to)
        .unwrap_or_else(|| {
            panic!(
                "{} never reached {to:?}: {:?}",
                instance.name_any(),
                status.history
            )
        })
        .at
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn downstream_partitions_wait_for_their_upstream_and_start_as_soon_as_it_is_done() {
    let cluster = Cluster::start().await;
    let cli = Cli::new(&cluster);
    cluster.apply_suspended_hourly("ingest", "sleep 1").await;
    let mut down = suspended_hourly("echo \"report $CHARON_PARAMETER\"");
    down["dependsOn"] = json!([{"workflow": "ingest", "partitions": "Same"}]);
    cluster.apply_workflow("report", down).await;

    // A backfill of the downstream range waits for, but does not trigger, its upstream.
    let backfill = |workflow: &'static str| {
        let cli = &cli;
        async move {
            let args = [
                "-n",
                NS,
                "backfill",
                "create",
                workflow,
                "--start",
                "2024-01-01T05",
                "--end",
                "2024-01-01T08",
                "--concurrency",
                "3",
            ];
            let (ok, out, err) = cli.run(&args).await;
            assert!(ok, "{out}{err}");
        }
    };
    backfill("report").await;
    let waiting = cluster
        .wait_states("report", 3, &[InstanceState::Queued], LONG)
        .await;
    let first = cluster
        .eventually("the wait to be on record", LONG, || async {
            let i = cluster.instance("report-2024-01-01t05").await?;
            let s = i.status.clone().unwrap_or_default();
            if s.reason.as_deref() == Some("WaitingForDependencies") {
                Ok(s)
            } else {
                Err(format!("{s:?}"))
            }
        })
        .await;
    assert_eq!(
        first.message,
        "waiting for dependencies: 1 of 1 upstream partitions not Done: ingest 2024-01-01T05 (not triggered)"
    );
    assert_eq!(first.tries, 0);
    assert!(
        cluster.instances_of("ingest").await.is_empty(),
        "nothing upstream was triggered"
    );
    assert_eq!(waiting.len(), 3);

    // The CLI shows what each waits for.
    let (ok, out, err) = cli.run(&["-n", NS, "status", "report"]).await;
    assert!(ok, "{err}");
    assert!(out.contains("Depends:  ingest (Same)"), "{out}");
    assert!(
        out.contains("ingest 2024-01-01T06 (not triggered)"),
        "{out}"
    );
    let (ok, out, err) = cli
        .run(&["-n", NS, "deps", "report", "2024-01-01T05"])
        .await;
    assert!(ok, "{err}");
    assert!(
        out.starts_with("Workflow report  partition 2024-01-01T05  Queued"),
        "{out}"
    );
    assert!(out.contains("Upstream: 1 partitions, 0 Done"), "{out}");
    assert!(out.contains("ingest"), "{out}");

    // The upstream backfill runs; each downstream partition starts once its own upstream
    // partition is Done, and within 2 s of it (woken, not polled).
    backfill("ingest").await;
    let ups = cluster
        .wait_states("ingest", 3, &[InstanceState::Done], LONG)
        .await;
    let downs = cluster
        .wait_states("report", 3, &[InstanceState::Done], LONG)
        .await;
    for (up, down) in ups.iter().zip(&downs) {
        assert_eq!(up.spec.parameter, down.spec.parameter);
        let done = reached(up, InstanceState::Done);
        let started = reached(down, InstanceState::Prepare);
        assert!(
            started >= done,
            "{} started before its upstream was Done",
            down.name_any()
        );
        assert!(
            started - done <= chrono::Duration::seconds(2),
            "{} started {:?} after its upstream was Done",
            down.name_any(),
            started - done
        );
    }
    cluster.assert_each_ran_once(&downs).await;
    let (ok, out, err) = cli
        .run(&["-n", NS, "-o", "json", "deps", "ingest", "2024-01-01T06"])
        .await;
    assert!(ok, "{err}");
    let report: serde_json::Value = serde_json::from_str(&out).expect("json");
    assert_eq!(report["downstream"][0]["instance"], "report-2024-01-01t06");
    assert_eq!(report["downstream"][0]["state"], "Done");
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wait_past_the_dependency_timeout_ends_in_error_and_cycles_are_refused() {
    let cluster = Cluster::start().await;
    let cli = Cli::new(&cluster);
    let mut late = suspended_hourly("true");
    late["dependsOn"] = json!([{"workflow": "ghost", "partitions": "Covering"}]);
    late["dependencyTimeout"] = json!("PT3S");
    cluster.apply_workflow("late", late).await;
    let (ok, _, err) = cli
        .run(&["-n", NS, "trigger", "late", "2024-01-01T05"])
        .await;
    assert!(ok, "{err}");
    let ended = cluster
        .wait_states("late", 1, &[InstanceState::Error], LONG)
        .await;
    let status = ended[0].status.clone().expect("status");
    let last = status.history.last().expect("history");
    assert_eq!(
        (last.from, last.reason.as_str()),
        (InstanceState::Queued, "DependencyTimeout")
    );
    assert!(
        status
            .message
            .contains("upstream workflow ghost does not exist"),
        "{}",
        status.message
    );
    assert_eq!((status.tries, status.job), (0, None), "it never ran");

    // The API server refuses more than 32 dependencies and over-long names, naming the field.
    let many: Vec<_> = (0..33)
        .map(|i| json!({"workflow": format!("up-{i}")}))
        .collect();
    let long = vec![json!({"workflow": "a".repeat(254)})];
    for (deps, want) in [
        (
            many,
            "spec.dependsOn: Too many: 33: must have at most 32 items",
        ),
        (
            long,
            "spec.dependsOn[0].workflow: Too long: may not be more than 253",
        ),
    ] {
        let mut spec = suspended_hourly("true");
        spec["dependsOn"] = json!(deps);
        let workflow: charon_core::resources::Workflow = serde_json::from_value(json!({
            "apiVersion": "charon.dev/v1alpha1", "kind": "Workflow",
            "metadata": {"name": "greedy"}, "spec": spec,
        }))
        .expect("workflow");
        let refused = cluster
            .workflows()
            .create(&kube::api::PostParams::default(), &workflow)
            .await
            .expect_err("refused");
        assert!(refused.to_string().contains(want), "{refused}");
    }

    // a → b → a: both are refused, naming spec.dependsOn; breaking the cycle frees both.
    let with = |upstream: &str| {
        let mut spec = suspended_hourly("true");
        spec["dependsOn"] = json!([{"workflow": upstream}]);
        spec
    };
    cluster.apply_workflow("a", with("b")).await;
    cluster.apply_workflow("b", with("a")).await;
    let valid = |name: &'static str| {
        let cluster = &cluster;
        async move {
            let wf = cluster.workflow(name).await.ok()?;
            let c = wf
                .status?
                .conditions
                .into_iter()
                .find(|c| c.type_ == "Valid")?;
            Some((
                c.status == charon_core::resources::ConditionStatus::True,
                c.message,
            ))
        }
    };
    for name in ["a", "b"] {
        let message = cluster
            .eventually("the cycle to be refused", LONG, || async {
                match valid(name).await {
                    Some((false, message)) => Ok(message),
                    other => Err(format!("{other:?}")),
                }
            })
            .await;
        assert!(
            message.starts_with("spec.dependsOn: the dependencies form a cycle"),
            "{message}"
        );
    }
    cluster
        .workflows()
        .patch(
            "b",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"dependsOn": null}})),
        )
        .await
        .expect("patch");
    for name in ["a", "b"] {
        cluster
            .eventually("the workflows to be valid again", LONG, || async {
                match valid(name).await {
                    Some((true, _)) => Ok(()),
                    other => Err(format!("{other:?}")),
                }
            })
            .await;
    }
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn suspending_a_running_instance_stops_its_pod_and_resuming_finishes_the_same_execution() {
    let cluster = Cluster::start().await;
    let cli = Cli::new(&cluster);
    cluster
        .apply_suspended_hourly("nap", "echo start; sleep 6; echo finished")
        .await;
    let (ok, _, err) = cli
        .run(&["-n", NS, "trigger", "nap", "2024-01-01T05"])
        .await;
    assert!(ok, "{err}");
    let name = "nap-2024-01-01t05";
    let pods: Api<Pod> = Api::namespaced(cluster.client.clone(), NS);
    let live_pods = || async {
        let list = pods
            .list(&ListParams::default().labels("job-name=nap-2024-01-01t05-1"))
            .await;
        list.map(|l| {
            l.items
                .iter()
                .filter(|p| p.metadata.deletion_timestamp.is_none())
                .count()
        })
        .map_err(|e| e.to_string())
    };

    // Suspended as soon as its container runs (before the attempt may be on record).
    cluster
        .eventually("a running pod", LONG, || async {
            let list = pods
                .list(&ListParams::default().labels("job-name=nap-2024-01-01t05-1"))
                .await;
            let list = list.map_err(|e| e.to_string())?;
            let running = list
                .items
                .iter()
                .any(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running"));
            if running {
                Ok(())
            } else {
                Err(format!("{} pods", list.items.len()))
            }
        })
        .await;
    let (ok, out, err) = cli
        .run(&["-n", NS, "suspend", &format!("cwfi/{name}")])
        .await;
    assert!(ok, "{err}");
    assert!(
        out.starts_with(&format!("workflowinstance/{name} suspended")),
        "{out}"
    );
    cluster
        .wait_states("nap", 1, &[InstanceState::Suspended], LONG)
        .await;
    cluster
        .eventually("the pod to stop", LONG, || async {
            let job = cluster
                .jobs()
                .get("nap-2024-01-01t05-1")
                .await
                .map_err(|e| e.to_string())?;
            let suspended = job.spec.and_then(|s| s.suspend) == Some(true);
            match (suspended, live_pods().await?) {
                (true, 0) => Ok(()),
                other => Err(format!("{other:?}")),
            }
        })
        .await;
    // Suspended longer than the run takes: nothing runs meanwhile.
    tokio::time::sleep(StdDuration::from_secs(7)).await;
    let held = cluster.instance(name).await.expect("instance");
    assert_eq!(state(&held), InstanceState::Suspended);

    let (ok, out, err) = cli.run(&["-n", NS, "resume", name]).await;
    assert!(ok, "{err}");
    assert!(
        out.starts_with(&format!("workflowinstance/{name} resumed")),
        "{out}"
    );
    let done = cluster
        .wait_states("nap", 1, &[InstanceState::Done], LONG)
        .await;
    let status = done[0].status.clone().expect("status");
    assert_eq!((status.tries, status.execution, status.cost), (1, 1, 0.0));
    assert_eq!(status.attempts.len(), 1, "{:?}", status.attempts);
    assert_eq!(status.attempts[0].exit_code, Some(0));
    let reasons: Vec<&str> = status.history.iter().map(|h| h.reason.as_str()).collect();
    let at = |r: &str| {
        reasons
            .iter()
            .position(|x| *x == r)
            .unwrap_or_else(|| panic!("{reasons:?}"))
    };
    assert!(
        at("Suspended") < at("Resumed") && at("Resumed") < at("Succeeded"),
        "{reasons:?}"
    );
    assert_eq!(cluster.jobs_of(name).await.len(), 1, "the same Job ran on");
    assert!(
        cluster
            .log_of("nap-2024-01-01t05-1")
            .await
            .contains("finished")
    );
    cluster.stop().await;
}
