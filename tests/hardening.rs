//! End-to-end: what an adversarial trial broke — the operator wedging, losing or repeating runs
//! when objects vanish, writes fail or deletes fail. Each test failed before its fix.

mod common;

use std::time::Duration as StdDuration;

use charon_core::resources::InstanceState;
use chrono::Duration;
use common::{Cluster, LONG};
use serde_json::json;

/// Instances deleted the moment they finish (`history.ttl: PT0S`) used to stall the instance
/// controller for everyone: its shared watch handed it the name of an instance already gone
/// from the cache and then waited forever. Every other workflow must keep running.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instances_deleted_as_they_finish_do_not_stall_the_others() {
    let cluster = Cluster::start().await;
    let every_minute = |ttl: Option<&str>| {
        let mut spec = json!({
            "schedule": "* * * * *",
            "template": {"image": "busybox", "command": ["true"]},
        });
        if let Some(ttl) = ttl {
            spec["history"] = json!({"ttl": ttl});
        }
        spec
    };
    for i in 0..20 {
        cluster
            .apply_workflow(&format!("gone-{i}"), every_minute(Some("PT0S")))
            .await;
    }
    cluster.apply_workflow("steady", every_minute(None)).await;
    for minute in 1..=3 {
        cluster.clock.advance(Duration::minutes(1));
        cluster
            .wait_states("steady", minute, &[InstanceState::Done], LONG)
            .await;
        // The short-lived ones ran and went.
        cluster
            .eventually("the PT0S instances to be deleted", LONG, || async {
                let left = cluster.instances().list(&Default::default()).await;
                let left = left.map_err(|e| e.to_string())?.items;
                let gone = left.iter().all(|i| !i.spec.workflow.starts_with("gone-"));
                if gone {
                    Ok(())
                } else {
                    Err(format!("{} instances left", left.len()))
                }
            })
            .await;
    }
    tokio::time::sleep(StdDuration::from_millis(100)).await;
    cluster.stop().await;
}

/// With `history.ttl` shorter than the workflow's held-back status write, an instance was
/// deleted before the workflow's trigger cursor recorded its partition; an operator killed
/// in between then triggered the partition again. Every deletion must come after the cursor
/// write that covers the partition, in the server's own order of changes (resourceVersions).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_outlives_nothing_but_its_recorded_trigger() {
    use futures::StreamExt;
    use kube::runtime::WatchStreamExt;
    use kube::runtime::watcher::{Config, Event, watcher};

    let cluster = Cluster::start().await;
    let rv = |meta: &kube::api::ObjectMeta| -> u64 {
        meta.resource_version
            .as_deref()
            .and_then(|v| v.parse().ok())
            .expect("numeric resourceVersion")
    };
    // Every change of the workflows and instances, with its resourceVersion.
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let record = |seen: std::sync::Arc<std::sync::Mutex<Vec<(u64, String)>>>| {
        move |line: (u64, String)| seen.lock().expect("not poisoned").push(line)
    };
    // With back-off: once the server stops, an endless run of ready errors would hold a
    // worker thread for ever.
    let workflows = watcher(cluster.workflows(), Config::default()).default_backoff();
    let push = record(seen.clone());
    tokio::spawn(workflows.for_each(move |event| {
        if let Ok(Event::Apply(w) | Event::InitApply(w)) = event
            && let Some(cursor) = w.status.as_ref().and_then(|s| s.trigger_cursor)
        {
            push((rv(&w.metadata), format!("cursor {}", cursor.to_rfc3339())));
        }
        futures::future::ready(())
    }));
    let instances = watcher(cluster.instances(), Config::default()).default_backoff();
    let push = record(seen.clone());
    tokio::spawn(instances.for_each(move |event| {
        if let Ok(Event::Delete(i)) = event {
            let trigger_at = i.spec.logical_time + Duration::hours(1);
            push((
                rv(&i.metadata),
                format!("deleted {}", trigger_at.to_rfc3339()),
            ));
        }
        futures::future::ready(())
    }));
    // Two partitions come due in one pass; the odd hour's run is slow, so the workflow holds
    // its status write back while the even hour's instance has already finished.
    cluster
        .apply_workflow(
            "brief",
            json!({
                "schedule": "@hourly",
                "history": {"ttl": "PT0S"},
                "template": {"image": "busybox", "command": ["sh", "-c",
                    "h=$(echo \"$CHARON_PARAMETER\" | cut -c12-13); if [ $((1$h % 2)) = 1 ]; then sleep 4; fi"]},
            }),
        )
        .await;
    // Its first status first, so the trigger below is not its first reconcile.
    cluster.planned("brief", LONG).await;
    cluster.clock.advance(Duration::minutes(121));
    cluster
        .eventually("both instances to run and go", LONG, || async {
            let s = seen.lock().expect("not poisoned");
            let deleted = s.iter().filter(|(_, l)| l.starts_with("deleted")).count();
            if deleted >= 2 {
                Ok(())
            } else {
                Err(format!("{s:?}"))
            }
        })
        .await;
    let mut changes = seen.lock().expect("not poisoned").clone();
    changes.sort();
    let mut cursor: Option<chrono::DateTime<chrono::Utc>> = None;
    for (version, line) in &changes {
        if let Some(at) = line.strip_prefix("cursor ") {
            cursor = cursor.max(Some(at.parse().expect("a time")));
        } else if let Some(at) = line.strip_prefix("deleted ") {
            let trigger_at: chrono::DateTime<chrono::Utc> = at.parse().expect("a time");
            assert!(
                cursor.is_some_and(|c| c >= trigger_at),
                "deleted at version {version} before the cursor recorded its trigger at {at}: {changes:?}"
            );
        }
    }
    cluster.stop().await;
}

/// Re-opening a finished instance writes its spec (the new trigger), then its status (the
/// new run). When the second write failed, the instance stayed Done under the new trigger
/// and never ran again; the next reconcile must finish the re-open. This leaves an instance
/// exactly as a re-open whose status write failed leaves it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_half_done_reopen_is_finished_by_the_next_reconcile() {
    use kube::api::PostParams;

    let cluster = Cluster::start().await;
    cluster
        .apply_workflow(
            "again",
            json!({
                "schedule": "@hourly",
                "template": {"image": "busybox", "command": ["sh", "-c", "echo run $CHARON_TRIGGER_ID"]},
            }),
        )
        .await;
    cluster.planned("again", LONG).await;
    cluster.clock.advance(Duration::minutes(61));
    let done = cluster
        .wait_states("again", 1, &[InstanceState::Done], LONG)
        .await;
    let name = kube::ResourceExt::name_any(&done[0]);
    // The first write of a re-open: the new trigger in the spec, and nothing else.
    let mut instance = cluster.instances().get(&name).await.expect("instance");
    instance.spec.trigger = charon_core::resources::Trigger {
        trigger_type: charon_core::resources::TriggerType::Adhoc,
        id: "adhoc-1-00001".into(),
    };
    cluster
        .instances()
        .replace(&name, &PostParams::default(), &instance)
        .await
        .expect("spec written");
    let rerun = cluster
        .first_status_where("again", "the re-opened run to finish", LONG, |s| {
            s.state == InstanceState::Done && s.runs.len() == 1
        })
        .await;
    assert_eq!(rerun.runs[0].trigger.id, "natural", "the first run is kept");
    assert_eq!(rerun.tries, 1, "the new run's tries start again");
    cluster
        .eventually("only the new run's Job to be kept", LONG, || async {
            let jobs = cluster.jobs_of(&name).await;
            if jobs.len() == 1 {
                Ok(())
            } else {
                Err(format!("{} Jobs", jobs.len()))
            }
        })
        .await;
    let job = rerun.job.expect("a job");
    assert!(
        cluster.log_of(&job).await.contains("run adhoc-1-00001"),
        "the new run ran under the new trigger"
    );
    cluster.stop().await;
}

/// A retry deletes the earlier attempt's Job; when that delete failed (a 500), the step that
/// asked for it was not planned again and the Job stayed for the instance's lifetime.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_delete_of_an_earlier_attempts_job_is_retried() {
    let cluster = Cluster::start().await;
    cluster
        .apply_workflow(
            "second-time",
            json!({
                "schedule": "@hourly",
                "template": {"image": "busybox", "command": ["sh", "-c",
                    "if [ \"$CHARON_EXECUTION_TRIES\" = 0 ]; then exit 3; fi"]},
            }),
        )
        .await;
    cluster.planned("second-time", LONG).await;
    cluster.clock.advance(Duration::minutes(61));
    cluster
        .first_status_where("second-time", "the first attempt to fail", LONG, |s| {
            s.state == InstanceState::Queued && s.tries == 1
        })
        .await;
    let server = cluster.server.as_ref().expect("server");
    server.set_error_rate("delete", 1.0, 500);
    cluster.clock.advance(Duration::minutes(3));
    let done = cluster
        .first_status_where("second-time", "the retry to succeed", LONG, |s| {
            s.state == InstanceState::Done
        })
        .await;
    assert_eq!(done.tries, 2);
    let instance = cluster.instances_of("second-time").await.remove(0);
    let name = kube::ResourceExt::name_any(&instance);
    assert_eq!(cluster.jobs_of(&name).await.len(), 2, "the delete failed");
    server.clear_faults();
    cluster
        .eventually("the first attempt's Job to be deleted", LONG, || async {
            let jobs: Vec<String> = cluster
                .jobs_of(&name)
                .await
                .iter()
                .map(kube::ResourceExt::name_any)
                .collect();
            if jobs == [format!("{name}-2")] {
                Ok(())
            } else {
                Err(format!("{jobs:?}"))
            }
        })
        .await;
    cluster.stop().await;
}

/// A Job too large to store (a 1 MiB argument, which the Job carries twice: as an argument
/// and in CHARON_ARGS) was retried every few seconds for ever with no status. The server's
/// refusal is permanent (413): the instance ends in Error with the server's message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_the_server_refuses_as_too_large_ends_in_error() {
    let cluster = Cluster::start().await;
    cluster
        .apply_workflow(
            "huge",
            json!({
                "schedule": "@hourly",
                "template": {"image": "busybox", "command": ["echo"], "args": ["x".repeat(1 << 20)]},
            }),
        )
        .await;
    cluster.planned("huge", LONG).await;
    cluster.clock.advance(Duration::minutes(61));
    let status = cluster
        .first_status_where("huge", "the refusal to end the instance", LONG, |s| {
            s.state == InstanceState::Error
        })
        .await;
    assert!(
        status.message.contains("request is too large"),
        "the server's message: {}",
        status.message
    );
    assert_eq!(status.tries, 1);
    cluster.stop().await;
}

/// An instance created while the operator's watches were down reached it only through the
/// relist that followed, and a relist is applied to the cache only when complete: the
/// instance was looked up before that, not found, and never reconciled (it stayed without a
/// status for ever). Listed instances must be handed on once the list is in the cache.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_created_while_the_watches_are_down_still_runs() {
    let cluster = Cluster::start().await;
    cluster
        .apply_workflow(
            "relisted",
            json!({"schedule": "@hourly", "template": {"image": "busybox", "command": ["true"]}}),
        )
        .await;
    let server = cluster.server.as_ref().expect("a running server");
    tokio::time::sleep(StdDuration::from_secs(1)).await;
    // Every watch is cut and then expired, so each must relist, and every list fails until
    // the faults are cleared; the workflow controller still creates the due instance.
    server.set_error_rate("list", 1.0, 503);
    server.expire_next_watches(1000);
    server.drop_watches();
    tokio::time::sleep(StdDuration::from_millis(1500)).await;
    cluster.clock.advance(Duration::minutes(61));
    tokio::time::sleep(StdDuration::from_secs(2)).await;
    server.clear_faults();
    let instances = cluster
        .wait_states("relisted", 1, &[InstanceState::Done], LONG)
        .await;
    cluster.assert_each_ran_once(&instances[..1]).await;
    cluster.stop().await;
}

/// The `Valid` condition of a stored object's conditions, as `(status, message)`.
fn valid_condition(conditions: &[charon_core::resources::Condition]) -> Option<(String, String)> {
    charon_core::resources::find_condition(
        conditions,
        charon_core::resources::condition_type::VALID,
    )
    .map(|c| (format!("{:?}", c.status), c.message.clone()))
}

/// Durations far outside years 1970–9999 panicked validation (`TimeDelta::days out of
/// bounds`), and privileged or broken `podOverrides` and bad env vars were accepted; each
/// must be Valid=False naming the field, and the operator must keep serving other workflows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn out_of_range_and_unsafe_specs_are_invalid_not_fatal() {
    let cluster = Cluster::start().await;
    let template = json!({"image": "busybox", "command": ["true"]});
    let cases = [
        (
            "timeout",
            json!({"schedule": "@hourly", "runningTimeout": "P300000000Y", "template": template}),
            "spec.runningTimeout: P300000000Y is outside the supported range",
        ),
        (
            "ttl",
            json!({"schedule": "@hourly", "history": {"ttl": "P300000000Y"}, "template": template}),
            "spec.history.ttl: P300000000Y is outside the supported range",
        ),
        (
            "offset",
            json!({"schedule": "@hourly", "offset": "P1000000Y", "template": template}),
            "spec.offset: P1000000Y is outside the supported range",
        ),
        (
            "privileged",
            json!({"schedule": "@hourly", "template": {"image": "busybox",
            "podOverrides": {"spec": {"containers": [{"name": "main", "image": "busybox",
                "securityContext": {"privileged": true}}]}}}}),
            "spec.template.podOverrides.spec.containers[0].securityContext.privileged: refused by default",
        ),
        (
            "nomain",
            json!({"schedule": "@hourly", "template": {"image": "busybox",
            "podOverrides": {"spec": {"containers": [{"name": "other", "image": "busybox"}]}}}}),
            "spec.template.podOverrides: removes the \"main\" container",
        ),
        (
            "envname",
            json!({"schedule": "@hourly", "template": {"image": "busybox",
            "env": [{"name": "A=B", "value": "x"}]}}),
            "spec.template.env[0].name: \"A=B\" is not a valid environment variable name",
        ),
        (
            "nul",
            json!({"schedule": "@hourly", "template": {"image": "busybox",
            "env": [{"name": "A", "value": "a\u{0}b"}]}}),
            "spec.template.env[0].value: must not contain a NUL byte",
        ),
    ];
    for (name, spec, _) in &cases {
        cluster.apply_workflow(name, spec.clone()).await;
    }
    for (name, _, want) in &cases {
        cluster
            .eventually(&format!("{name} to be invalid"), LONG, || async {
                let w = cluster.workflow(name).await?;
                let conditions = w.status.map(|s| s.conditions).unwrap_or_default();
                match valid_condition(&conditions) {
                    Some((status, message)) if status == "False" && message.starts_with(want) => {
                        Ok(())
                    }
                    other => Err(format!("{other:?}")),
                }
            })
            .await;
    }
    cluster.stop().await;
}

/// Hand-made instances (a name not derived from workflow and parameter, an unaligned
/// parameter, a missing workflow, a missing backfill) ran or were requeued every 2 s forever.
/// They must get Valid=False saying why, no Job, and no further writes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hand_made_instances_are_refused_once_and_never_run() {
    use kube::api::PostParams;
    let cluster = Cluster::start().await;
    cluster
        .apply_workflow(
            "w",
            json!({"schedule": "@hourly", "template": {"image": "busybox", "command": ["true"]}}),
        )
        .await;
    let cases = [
        (
            "evil",
            "w",
            "2024-01-01T05",
            "2024-01-01T05:00:00Z",
            "adhoc",
            "metadata.name: \"evil\" is not the name derived",
        ),
        (
            "w-2024-01-01t05-30",
            "w",
            "2024-01-01T05:30",
            "2024-01-01T05:30:00Z",
            "adhoc",
            "spec.parameter: \"2024-01-01T05:30\"",
        ),
        (
            "ghost-2024-01-01t05",
            "ghost",
            "2024-01-01T05",
            "2024-01-01T05:00:00Z",
            "adhoc",
            "spec.workflow: workflow \"ghost\" does not exist",
        ),
        (
            "w-2024-01-01t06",
            "w",
            "2024-01-01T06",
            "2024-01-01T06:00:00Z",
            "backfill",
            "spec.trigger.id: backfill \"nobf\" does not exist",
        ),
    ];
    for (name, workflow, parameter, logical, trigger, _) in &cases {
        let instance: charon_core::resources::WorkflowInstance = serde_json::from_value(json!({
            "apiVersion": "charon.dev/v1alpha1",
            "kind": "WorkflowInstance",
            "metadata": {"name": name},
            "spec": {"workflow": workflow, "parameter": parameter, "logicalTime": logical,
                "trigger": {"type": trigger, "id": if *trigger == "backfill" { "nobf" } else { "adhoc-1-00001" }}},
        }))
        .expect("an instance");
        cluster
            .instances()
            .create(&PostParams::default(), &instance)
            .await
            .expect("instance created");
    }
    let mut versions = Vec::new();
    for (name, _, _, _, _, want) in &cases {
        let stored = cluster
            .eventually(&format!("{name} to be invalid"), LONG, || async {
                let i = cluster.instance(name).await?;
                let conditions = i.status.clone().map(|s| s.conditions).unwrap_or_default();
                match valid_condition(&conditions) {
                    Some((status, message)) if status == "False" && message.starts_with(want) => {
                        Ok(i)
                    }
                    other => Err(format!("{other:?}")),
                }
            })
            .await;
        versions.push(stored.metadata.resource_version);
    }
    tokio::time::sleep(StdDuration::from_secs(5)).await;
    for ((name, ..), version) in cases.iter().zip(versions) {
        let stored = cluster.instance(name).await.expect("still there");
        assert_eq!(
            stored.metadata.resource_version, version,
            "{name} was written again"
        );
        assert_eq!(
            stored.status.map(|s| s.state),
            Some(InstanceState::Queued),
            "{name} ran"
        );
        assert!(cluster.jobs_of(name).await.is_empty(), "{name} has a Job");
    }
    cluster.stop().await;
}
