//! End-to-end: the operator against the embedded cluster, whose simulated kubelet runs each
//! Job's command as a local process. The operator's clock can be moved forward, so hours of
//! schedule pass in seconds; no test sleeps for wall-clock minutes.

mod common;

use std::time::Duration as StdDuration;

use charon_core::resources::{AttemptOutcomeKind, InstanceState, find_condition};
use chrono::Duration;
use common::{Cluster, LONG, NS, is_status_write, is_write, requests_between, state};
use kube::api::{ListParams, Patch, PatchParams};
use kube::{Api, ResourceExt};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forty_eight_hours_of_an_hourly_workflow() {
    let cluster = Cluster::start().await;
    cluster
        .apply_workflow(
            "hb",
            json!({
                "schedule": "@hourly",
                "template": {
                    "image": "busybox",
                    "command": ["sh", "-c", "echo \"p=$CHARON_PARAMETER a=$1 t=$CHARON_TRIGGER_TYPE x=$CHARON_EXECUTION_TRIES\"", "sh"],
                    "args": ["{}"],
                }
            }),
        )
        .await;
    let created = chrono::Utc::now();
    // Nothing is due until the first hour after creation has passed.
    let workflow = cluster
        .eventually("nextTrigger", LONG, || async {
            let wf = cluster.workflow("hb").await?;
            match wf.status.as_ref().and_then(|s| s.next_trigger.clone()) {
                Some(_) => Ok(wf),
                None => Err(format!("{:?}", wf.status)),
            }
        })
        .await;
    let next = workflow.status.and_then(|s| s.next_trigger).expect("next");
    assert!(next.trigger_at > created);
    assert!(cluster.instances_of("hb").await.is_empty());

    let server = cluster.server.as_ref().expect("server");
    let before = server.requests();
    cluster.clock.advance(Duration::hours(48));
    let instances = cluster
        .wait_states("hb", 48, &[InstanceState::Done], LONG * 2)
        .await;
    let schedule = charon_core::schedule::Schedule::new("@hourly", None, None).expect("schedule");
    let expected: Vec<String> = schedule
        .partitions_after(next.logical_time - Duration::seconds(1))
        .take(48)
        .map(|p| schedule.parameter(p))
        .collect();
    let got: Vec<String> = instances.iter().map(|i| i.spec.parameter.clone()).collect();
    assert_eq!(got, expected);
    for instance in instances.iter().take(3) {
        let status = instance.status.clone().expect("status");
        assert_eq!(status.tries, 1);
        let job = status.job.expect("job");
        let log = cluster.log_of(&job).await;
        let parameter = &instance.spec.parameter;
        assert_eq!(
            log.trim(),
            format!("p={parameter} a={parameter} t=natural x=0"),
            "{job}"
        );
        assert_eq!(cluster.jobs_of(&instance.name_any()).await.len(), 1);
    }
    // The workflow records the last trigger once its instances have finished.
    let last = expected.last().cloned();
    let wf = cluster
        .eventually("the workflow's status", LONG, || async {
            let wf = cluster.workflow("hb").await?;
            let status = wf.status.clone().unwrap_or_default();
            let recorded = status.last_triggered.map(|t| t.parameter);
            if recorded == last && status.active == 0 {
                Ok(wf)
            } else {
                Err(format!(
                    "lastTriggered {recorded:?}, active {}",
                    status.active
                ))
            }
        })
        .await;
    let status = wf.status.expect("status");
    assert_eq!(status.observed_generation, wf.metadata.generation);

    // What the 48 runs cost, from the trigger on: one Job each; each attempt recorded when it
    // ends (a run this short is mostly recorded once, already finished); the catch-up's
    // trigger written once its instances have finished. Events aside (one per transition),
    // that is at most four writes per instance.
    let after = server.requests();
    let since_trigger =
        |keep: &dyn Fn(&charon_apiserver::Request) -> bool| requests_between(&before, &after, keep);
    let creates = |resource: &str| {
        since_trigger(&|r: &charon_apiserver::Request| r.verb == "create" && r.resource == resource)
    };
    assert_eq!(creates("jobs"), 48);
    assert_eq!(creates("workflowinstances"), 48);
    let status_writes = since_trigger(&|r| is_status_write(r, "workflowinstances"));
    assert!(
        status_writes < 2 * 48,
        "{status_writes} instance status writes"
    );
    let workflow_writes = since_trigger(&|r| is_write(r) && r.resource == "workflows");
    assert!(workflow_writes <= 3, "{workflow_writes} workflow writes");
    let writes = since_trigger(&|r| is_write(r) && r.resource != "events");
    assert!(writes <= 4 * 48, "{writes} writes besides Events");
    cluster.stop().await;
}

/// Workflows due at the same instant.
const BURST: usize = 30;

/// Waits until every workflow's status satisfies `check`.
async fn all_workflows(
    cluster: &Cluster,
    what: &str,
    check: impl Fn(&charon_core::resources::WorkflowStatus) -> bool,
) {
    cluster
        .eventually(&format!("every workflow: {what}"), LONG, || async {
            let list = cluster
                .workflows()
                .list(&ListParams::default())
                .await
                .map_err(|e| e.to_string())?;
            let ready = list
                .items
                .iter()
                .filter(|w| w.status.as_ref().is_some_and(&check))
                .count();
            if !list.items.is_empty() && ready == list.items.len() {
                Ok(())
            } else {
                Err(format!("{ready} of {}", list.items.len()))
            }
        })
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_long_runs_writes_each_status_once() {
    let cluster = Cluster::start().await;
    // Runs that outlast the quiet windows for progress writes (5 s for an attempt, 10 s for a
    // trigger): alone, each would be written twice, running and then finished.
    for n in 0..BURST {
        cluster
            .apply_workflow(
                &format!("b{n:02}"),
                json!({
                    "schedule": "@hourly",
                    "template": {"image": "busybox", "command": ["sleep", "12"]},
                }),
            )
            .await;
    }
    all_workflows(&cluster, "a nextTrigger", |s| s.next_trigger.is_some()).await;
    let server = cluster.server.as_ref().expect("server");
    let before = server.requests();
    cluster.clock.advance(Duration::hours(1));
    let mut instances = Vec::new();
    for n in 0..BURST {
        let done = cluster
            .wait_states(&format!("b{n:02}"), 1, &[InstanceState::Done], LONG)
            .await;
        cluster.assert_each_ran_once(&done[..1]).await;
        instances.extend(done.into_iter().take(1));
    }
    all_workflows(&cluster, "the trigger recorded, nothing active", |s| {
        s.last_triggered.is_some() && s.active == 0
    })
    .await;
    let after = server.requests();
    // A burst keeps the operator busy, so progress waits for the runs to end: most runs and
    // triggers are written once. Quiet, every one would be written twice.
    let instance_writes =
        requests_between(&before, &after, |r| is_status_write(r, "workflowinstances"));
    let workflow_writes = requests_between(&before, &after, |r| is_status_write(r, "workflows"));
    let most = (BURST * 3 / 2) as u64;
    assert!(
        instance_writes < most,
        "{instance_writes} instance status writes for {BURST} runs"
    );
    assert!(
        workflow_writes < most,
        "{workflow_writes} workflow status writes for {BURST} triggers"
    );
    // The history still has every transition, with its real time.
    for instance in &instances {
        let history = &instance.status.as_ref().expect("status").history;
        assert!(
            history.iter().any(|h| h.to == InstanceState::Running),
            "{}: {history:?}",
            instance.name_any()
        );
    }
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn warnings_only_events_leave_successful_runs_quiet() {
    let mut cluster = Cluster::without_operator().await;
    cluster.events = charon::controller::EventLevel::Warnings;
    cluster.start_operator();
    for (name, command) in [("fine", "true"), ("fatal", "exit 50")] {
        cluster
            .apply_workflow(
                name,
                json!({
                    "schedule": "@hourly",
                    "template": {"image": "busybox", "command": ["sh", "-c", command]},
                }),
            )
            .await;
    }
    cluster.clock.advance(Duration::minutes(61));
    let fine = cluster
        .wait_states("fine", 1, &[InstanceState::Done], LONG)
        .await;
    let fatal = cluster
        .wait_states("fatal", 1, &[InstanceState::Error], LONG)
        .await;
    let about = |instance: &charon_core::resources::WorkflowInstance| {
        let uid = instance.metadata.uid.clone();
        move |e: &k8s_openapi::api::core::v1::Event| e.involved_object.uid == uid
    };
    let events: Api<k8s_openapi::api::core::v1::Event> =
        Api::namespaced(cluster.client.clone(), NS);
    // The failure is reported (Events are written in the background)...
    let all = cluster
        .eventually("a Warning about the fatal run", LONG, || async {
            let list = events
                .list(&ListParams::default())
                .await
                .map_err(|e| e.to_string())?
                .items;
            if list.iter().any(about(&fatal[0])) {
                Ok(list)
            } else {
                Err(format!("{} events", list.len()))
            }
        })
        .await;
    // ...and nothing else: every transition is still in the history.
    let ours: Vec<_> = all
        .iter()
        .filter(|e| e.reporting_component.as_deref() == Some("charon-operator"))
        .collect();
    assert!(
        ours.iter().all(|e| e.type_.as_deref() == Some("Warning")),
        "{:?}",
        ours.iter().map(|e| &e.reason).collect::<Vec<_>>()
    );
    assert!(!all.iter().any(about(&fine[0])), "the successful run");
    let history = &fine[0].status.as_ref().expect("status").history;
    assert!(
        history.len() >= 4 && history.last().is_some_and(|h| h.to == InstanceState::Done),
        "{history:?}"
    );
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exit_codes_decide_retries() {
    let cluster = Cluster::start().await;
    let spec = |script: &str| {
        json!({
            "schedule": "@hourly",
            "template": {"image": "busybox", "command": ["sh", "-c", script]},
        })
    };
    // Exit 20 on the first attempt, then success.
    cluster
        .apply_workflow(
            "deps",
            spec("if [ \"$CHARON_EXECUTION_TRIES\" = 0 ]; then exit 20; fi; echo ok"),
        )
        .await;
    cluster.apply_workflow("fatal", spec("exit 50")).await;
    cluster.apply_workflow("flaky", spec("exit 3")).await;
    cluster.clock.advance(Duration::minutes(61));

    let fatal = cluster
        .wait_states("fatal", 1, &[InstanceState::Error], LONG)
        .await;
    let status = fatal[0].status.clone().expect("status");
    assert_eq!(status.last_exit_code, Some(50));
    assert_eq!(status.tries, 1);
    assert_eq!(cluster.jobs_of(&fatal[0].name_any()).await.len(), 1);

    // (A new instance has no status yet, which reads as Queued: wait for the retry.)
    cluster
        .first_status_where("deps", "the exit-20 retry", LONG, |s| {
            s.state == InstanceState::Queued && s.tries == 1
        })
        .await;
    let deps = cluster.instances_of("deps").await;
    let status = deps[0].status.clone().expect("status");
    assert_eq!(status.last_exit_code, Some(20));
    assert!((status.cost - 0.1).abs() < 1e-9, "cost {}", status.cost);
    let finished = status.history.last().expect("history").at;
    let delay = status.next_attempt_at.expect("retry time") - finished;
    assert_eq!(delay, Duration::minutes(10));

    let status = cluster
        .first_status_where("flaky", "the exit-3 retry", LONG, |s| {
            s.state == InstanceState::Queued && s.tries == 1
        })
        .await;
    assert_eq!(status.last_exit_code, Some(3));
    assert!((status.cost - 1.0).abs() < 1e-9);
    let delay = status.next_attempt_at.expect("retry") - status.history.last().expect("h").at;
    // First failure: 3 min × max(1, U{0, 1}) = 3 minutes.
    assert_eq!(delay, Duration::minutes(3));

    // Nine minutes later the exit-20 instance still waits; at ten it runs again and succeeds.
    cluster.clock.advance(Duration::minutes(9));
    tokio::time::sleep(StdDuration::from_millis(500)).await;
    assert_eq!(
        state(
            &cluster
                .instances()
                .get(&deps[0].name_any())
                .await
                .expect("get")
        ),
        InstanceState::Queued
    );
    cluster.clock.advance(Duration::minutes(1));
    let deps = cluster
        .wait_states("deps", 1, &[InstanceState::Done], LONG)
        .await;
    let status = deps[0].status.clone().expect("status");
    assert_eq!(status.tries, 2);
    assert!((status.cost - 0.1).abs() < 1e-9);
    // Only the last attempt's Job is kept.
    let jobs = cluster.jobs_of(&deps[0].name_any()).await;
    let names: Vec<String> = jobs.iter().map(|j| j.name_any()).collect();
    cluster
        .eventually("the first attempt's Job to be deleted", LONG, || async {
            let jobs = cluster.jobs_of(&deps[0].name_any()).await;
            let names: Vec<String> = jobs.iter().map(|j| j.name_any()).collect();
            if names == [format!("{}-2", deps[0].name_any())] {
                Ok(())
            } else {
                Err(format!("{names:?}"))
            }
        })
        .await;
    drop(names);
    let reasons: Vec<&str> = status.history.iter().map(|h| h.reason.as_str()).collect();
    assert!(reasons.contains(&"MissingDependencies"), "{reasons:?}");
    // The run history outlives the first attempt's Job.
    let attempts: Vec<_> = status
        .attempts
        .iter()
        .map(|a| {
            (
                a.execution,
                a.exit_code,
                a.outcome,
                a.reason.as_str(),
                a.finished_at.is_some(),
            )
        })
        .collect();
    assert_eq!(
        attempts,
        [
            (
                1,
                Some(20),
                Some(AttemptOutcomeKind::Failed),
                "MissingDependencies",
                true
            ),
            (
                2,
                Some(0),
                Some(AttemptOutcomeKind::Succeeded),
                "Succeeded",
                true
            ),
        ]
    );
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_specs_and_halts() {
    let cluster = Cluster::start().await;
    cluster
        .apply_workflow(
            "bad",
            json!({"schedule": "61 * * * *", "template": {"image": "busybox", "command": ["true"]}}),
        )
        .await;
    let message = cluster
        .eventually("Valid=False", LONG, || async {
            let wf = cluster.workflow("bad").await?;
            let status = wf.status.unwrap_or_default();
            match find_condition(&status.conditions, "Valid") {
                Some(c) if c.status == charon_core::resources::ConditionStatus::False => {
                    Ok(c.message.clone())
                }
                other => Err(format!("{other:?}")),
            }
        })
        .await;
    assert!(message.starts_with("spec.schedule: "), "{message}");
    // A Warning Event names the field too.
    let events: Api<k8s_openapi::api::core::v1::Event> =
        Api::namespaced(cluster.client.clone(), NS);
    let warning = events
        .list(&ListParams::default())
        .await
        .expect("events")
        .items
        .into_iter()
        .find(|e| e.involved_object.name.as_deref() == Some("bad"))
        .expect("an event about the workflow");
    assert_eq!(warning.type_.as_deref(), Some("Warning"));
    assert!(
        warning
            .message
            .unwrap_or_default()
            .contains("spec.schedule")
    );
    cluster.clock.advance(Duration::hours(2));
    tokio::time::sleep(StdDuration::from_millis(500)).await;
    assert!(cluster.instances_of("bad").await.is_empty());

    // Fixed: scheduling resumes.
    cluster
        .workflows()
        .patch(
            "bad",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"schedule": "@hourly"}})),
        )
        .await
        .expect("fix");
    cluster
        .eventually("Valid=True and instances", LONG, || async {
            let wf = cluster.workflow("bad").await?;
            let status = wf.status.unwrap_or_default();
            let valid = find_condition(&status.conditions, "Valid")
                .is_some_and(|c| c.status == charon_core::resources::ConditionStatus::True);
            let n = cluster.instances_of("bad").await.len();
            if valid && n >= 1 {
                Ok(())
            } else {
                Err(format!("valid={valid} instances={n}"))
            }
        })
        .await;

    // Halt a running instance: its Job goes, the instance ends Halted.
    cluster
        .apply_workflow(
            "sleepy",
            json!({"schedule": "@hourly", "template": {"image": "busybox", "command": ["sleep", "300"]}}),
        )
        .await;
    // The clock was moved forward above, so some partitions are due at once.
    let running = cluster
        .eventually("sleepy instances running", LONG, || async {
            let list = cluster.instances_of("sleepy").await;
            if !list.is_empty() && list.iter().all(|i| state(i) == InstanceState::Running) {
                Ok(list)
            } else {
                Err(format!("{:?}", list.iter().map(state).collect::<Vec<_>>()))
            }
        })
        .await;
    let name = running[0].name_any();
    cluster
        .instances()
        .patch(
            &name,
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"halted": true}})),
        )
        .await
        .expect("halt");
    cluster
        .eventually("the instance to halt and its Job to go", LONG, || async {
            let i = cluster.instance(&name).await?;
            let jobs = cluster.jobs_of(&name).await.len();
            if state(&i) == InstanceState::Halted && jobs == 0 {
                Ok(())
            } else {
                Err(format!("{} with {jobs} jobs", state(&i).as_str()))
            }
        })
        .await;
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrency_is_never_exceeded_and_older_partitions_go_first() {
    let cluster = Cluster::start().await;
    cluster
        .apply_workflow(
            "limited",
            json!({
                "schedule": "@hourly",
                "concurrency": 2,
                "template": {"image": "busybox", "command": ["sh", "-c", "sleep 0.3"]},
            }),
        )
        .await;
    cluster.clock.advance(Duration::hours(6));
    let deadline = tokio::time::Instant::now() + LONG;
    loop {
        let list = cluster.instances_of("limited").await;
        // At least six: one more is due if the test spans the top of a wall-clock hour.
        if list.len() >= 6 && list.iter().all(|i| state(i) == InstanceState::Done) {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "not all done");
        tokio::time::sleep(StdDuration::from_millis(20)).await;
    }
    let list = cluster.instances_of("limited").await;
    let max_active = common::most_active_at_once(&list);
    assert_eq!(max_active, 2, "six were due at once and two may run");
    // Older partitions went first: no partition started before an older one. Slots freed
    // together are taken together, so partitions admitted in the same round may start in
    // either order, a few milliseconds apart (a round is at least the 0.3 s a run takes).
    let starts: Vec<_> = list
        .iter()
        .map(|i| {
            i.status
                .as_ref()
                .and_then(|s| s.started_at)
                .expect("started")
        })
        .collect();
    let same_round = Duration::milliseconds(100);
    for (older, start) in starts.iter().enumerate() {
        for later in &starts[older + 1..] {
            assert!(*start <= *later + same_round, "{starts:?}");
        }
    }
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_neither_duplicates_nor_misses() {
    let mut cluster = Cluster::start().await;

    // Crash the operator while an instance's Job runs (an attempt that short is not on record
    // yet), miss five hours, and restart it.
    cluster
        .apply_workflow(
            "steady",
            json!({"schedule": "@hourly", "template": {"image": "busybox", "command": ["sleep", "2"]}}),
        )
        .await;
    cluster.clock.advance(Duration::minutes(61));
    cluster
        .eventually("a running Job of steady", LONG, || async {
            let Some(instance) = cluster.instances_of("steady").await.into_iter().next() else {
                return Err("no instance".to_string());
            };
            let jobs = cluster.jobs_of(&instance.name_any()).await;
            let active = jobs
                .iter()
                .filter_map(|j| j.status.as_ref()?.active)
                .sum::<i32>();
            if active > 0 {
                Ok(())
            } else {
                Err(format!("{} Jobs, none active", jobs.len()))
            }
        })
        .await;
    cluster.kill_operator().await;
    cluster.clock.advance(Duration::hours(5));
    cluster.start_operator();
    let instances = cluster
        .wait_states("steady", 6, &[InstanceState::Done], LONG)
        .await;
    assert!(instances.len() >= 6);
    cluster.assert_each_ran_once(&instances[..6]).await;
    cluster.stop().await;
}

/// The server loses its state (a restarted `charon dev`) while the operator runs: the
/// operator's watches resume from resourceVersions of the old server, must be told to relist,
/// and a workflow created on the new server still runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_lost_its_state_is_relisted() {
    let mut cluster = Cluster::start().await;
    // Enough writes that the old server's versions are well past the new one's first.
    for i in 0..3 {
        cluster
            .apply_workflow(
                &format!("before-{i}"),
                json!({"schedule": "@hourly", "template": {"image": "busybox", "command": ["true"]}}),
            )
            .await;
    }
    cluster.clock.advance(Duration::minutes(61));
    cluster
        .wait_states("before-0", 1, &[InstanceState::Done], LONG)
        .await;
    cluster.restart_server_empty().await;
    cluster
        .apply_workflow(
            "after",
            json!({"schedule": "@hourly", "template": {"image": "busybox", "command": ["true"]}}),
        )
        .await;
    cluster.planned("after", StdDuration::from_secs(20)).await;
    cluster.clock.advance(Duration::minutes(61));
    cluster
        .wait_states(
            "after",
            1,
            &[InstanceState::Done],
            StdDuration::from_secs(20),
        )
        .await;
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_errors_lost_watches_and_a_stall_neither_duplicate_nor_lose_runs() {
    let cluster = Cluster::start().await;
    cluster
        .apply_workflow(
            "flaky",
            json!({"schedule": "@hourly",
                "template": {"image": "busybox", "command": ["sh", "-c", "sleep 0.2"]}}),
        )
        .await;
    let server = cluster.server.as_ref().expect("a running server");
    // Six partitions come due while a share of every kind of request fails (500, 429 on
    // creates, 503 on lists and watches), watches are cut and relists forced, and the server
    // stalls for a while.
    server.set_error_rate("*", 0.2, 500);
    server.set_error_rate("create", 0.3, 429);
    server.set_error_rate("update", 0.3, 500);
    server.set_error_rate("list", 0.3, 503);
    server.set_error_rate("watch", 0.3, 503);
    server.expire_next_watches(10);
    cluster.clock.advance(Duration::hours(6));
    tokio::time::sleep(StdDuration::from_secs(3)).await;
    server.drop_watches();
    server.pause();
    tokio::time::sleep(StdDuration::from_millis(1500)).await;
    server.resume();
    tokio::time::sleep(StdDuration::from_secs(3)).await;
    server.clear_faults();

    let instances = cluster
        .wait_states("flaky", 6, &[InstanceState::Done], LONG)
        .await;
    // An API error is never a failed attempt, and never a second run.
    cluster.assert_each_ran_once(&instances[..6]).await;
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_only_the_leader_writes_and_failover_continues() {
    let cluster = Cluster::without_operator().await;
    let lease = |identity: &str| charon::controller::leader::LeaseConfig {
        namespace: NS.into(),
        name: "charon-operator".into(),
        identity: identity.into(),
        duration: StdDuration::from_secs(2),
        retry_period: StdDuration::from_millis(300),
    };
    let (stop_a, a) = cluster.replica("replica-a", "charon-operator/a", Some(lease("replica-a")));
    tokio::time::sleep(StdDuration::from_millis(500)).await;
    let (stop_b, b) = cluster.replica("replica-b", "charon-operator/b", Some(lease("replica-b")));
    cluster
        .apply_workflow(
            "ha",
            json!({"schedule": "@hourly", "template": {"image": "busybox", "command": ["true"]}}),
        )
        .await;
    cluster.clock.advance(Duration::minutes(61));
    cluster
        .wait_states("ha", 1, &[InstanceState::Done], LONG)
        .await;

    let leases: Api<k8s_openapi::api::coordination::v1::Lease> =
        Api::namespaced(cluster.client.clone(), NS);
    let holder = |lease: k8s_openapi::api::coordination::v1::Lease| {
        lease
            .spec
            .and_then(|s| s.holder_identity)
            .unwrap_or_default()
    };
    assert_eq!(
        holder(leases.get("charon-operator").await.expect("lease")),
        "replica-a"
    );
    let server = cluster.server.as_ref().expect("server");
    let writes = |agent: &str| -> Vec<String> {
        server
            .requests()
            .into_iter()
            .filter(|r| r.user_agent == agent && r.resource != "leases")
            .filter(is_write)
            .map(|r| format!("{} {}/{}", r.verb, r.resource, r.subresource))
            .collect()
    };
    assert!(!writes("charon-operator/a").is_empty());
    assert_eq!(writes("charon-operator/b"), Vec::<String>::new());

    // The leader dies without releasing the lease; the standby takes over once it expires.
    a.abort();
    let _ = a.await;
    drop(stop_a);
    cluster
        .eventually("replica-b to lead", StdDuration::from_secs(10), || async {
            let h = holder(
                leases
                    .get("charon-operator")
                    .await
                    .map_err(|e| e.to_string())?,
            );
            if h == "replica-b" { Ok(()) } else { Err(h) }
        })
        .await;
    cluster.clock.advance(Duration::hours(1));
    cluster
        .wait_states("ha", 2, &[InstanceState::Done], LONG)
        .await;
    assert!(!writes("charon-operator/b").is_empty());
    let _ = stop_b.send(true);
    let _ = tokio::time::timeout(StdDuration::from_secs(5), b).await;
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn infrastructure_failures_are_retried_without_cost() {
    let config = charon_apiserver::Config {
        image_pull_failure: Some("^registry\\.invalid/".into()),
        ..Default::default()
    };
    let cluster = Cluster::start_with(config).await;
    cluster
        .apply_workflow(
            "unpullable",
            json!({"schedule": "@hourly", "template": {"image": "registry.invalid/job:1", "command": ["true"]}}),
        )
        .await;
    cluster
        .apply_workflow(
            "evicted",
            json!({"schedule": "@hourly", "template": {"image": "busybox", "command": ["sleep", "30"]}}),
        )
        .await;
    cluster.clock.advance(Duration::minutes(61));
    let failed = cluster
        .first_status_where("unpullable", "the pull failure to be judged", LONG, |s| {
            s.infrastructure_failures == 1
        })
        .await;
    assert_eq!(failed.state, InstanceState::Queued);
    assert_eq!(failed.cost, 0.0);
    assert!(
        failed
            .history
            .iter()
            .any(|h| h.message.contains("ImagePull")),
        "{:?}",
        failed.history
    );

    // A pod evicted from under a running attempt is an infrastructure failure too.
    let running = cluster
        .wait_states("evicted", 1, &[InstanceState::Running], LONG)
        .await;
    let job = running[0].status.clone().and_then(|s| s.job).expect("job");
    let pods: Api<k8s_openapi::api::core::v1::Pod> = Api::namespaced(cluster.client.clone(), NS);
    let pod = pods
        .list(&ListParams::default().labels(&format!("job-name={job}")))
        .await
        .expect("pods")
        .items
        .remove(0);
    assert!(
        cluster
            .server
            .as_ref()
            .expect("server")
            .evict_pod(NS, &pod.name_any())
    );
    let s = cluster
        .first_status_where("evicted", "the eviction to be judged", LONG, |s| {
            s.infrastructure_failures == 1
        })
        .await;
    assert_eq!(s.state, InstanceState::Queued);
    assert_eq!(s.cost, 0.0);
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_created_but_not_recorded_is_adopted_not_run_again() {
    let mut cluster = Cluster::start().await;
    let workflow = cluster
        .apply_workflow(
            "adopt",
            json!({"schedule": "@hourly", "suspend": true,
                "template": {"image": "busybox", "command": ["sh", "-c", "echo ran"]}}),
        )
        .await;
    // The operator stops after creating the first attempt's Job of two partitions, before it
    // recorded either. One Job is the instance's own; the other's name is taken by an object
    // that is not the instance (here owned by the workflow).
    cluster.kill_operator().await;
    let mut instances = Vec::new();
    for partition in ["2024-01-01T05", "2024-01-01T06"] {
        instances.push(common::trigger_adhoc(&cluster, &workflow, partition).await);
    }
    let own = common::unrecorded_job(&cluster, &workflow, &instances[0], None).await;
    let foreign_owner = k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference {
        api_version: "charon.dev/v1alpha1".into(),
        kind: "Workflow".into(),
        name: workflow.name_any(),
        uid: workflow.uid().expect("uid"),
        controller: Some(true),
        block_owner_deletion: None,
    };
    let foreign =
        common::unrecorded_job(&cluster, &workflow, &instances[1], Some(foreign_owner)).await;
    // The instance's own Job has finished before the operator starts again: no event of it
    // is left to come.
    cluster
        .eventually("the unrecorded Job to succeed", LONG, || async {
            let job = cluster
                .jobs()
                .get(&own.name_any())
                .await
                .map_err(|e| e.to_string())?;
            match job.status.and_then(|s| s.succeeded) {
                Some(1) => Ok(()),
                other => Err(format!("succeeded {other:?}")),
            }
        })
        .await;
    let restarted = std::time::Instant::now();
    cluster.start_operator();

    // The instance's own Job is adopted: one attempt, the same Job, Done, as soon as it is
    // adopted (not once the few seconds an unrecorded attempt may wait have passed).
    let adopted = instances[0].name_any();
    let done = cluster
        .eventually("the adopted attempt to be Done", LONG, || async {
            let i = cluster.instance(&adopted).await?;
            if state(&i) == InstanceState::Done {
                Ok(i)
            } else {
                Err(format!("{:?}", i.status))
            }
        })
        .await;
    assert!(
        restarted.elapsed() < StdDuration::from_secs(4),
        "Done {:?} after the restart",
        restarted.elapsed()
    );
    let status = done.status.expect("status");
    assert_eq!((status.tries, status.execution), (1, 1));
    let jobs = cluster.jobs_of(&adopted).await;
    assert_eq!(jobs.len(), 1);
    assert_eq!(jobs[0].uid(), own.uid(), "the Job created before the stop");

    // The other is never taken for the instance's: it waits until that Job is gone.
    let waiting = instances[1].name_any();
    tokio::time::sleep(StdDuration::from_secs(2)).await;
    let i = cluster.instances().get(&waiting).await.expect("instance");
    assert!(
        !state(&i).is_active() && !state(&i).is_terminal(),
        "{:?}",
        i.status
    );
    cluster
        .jobs()
        .delete(&foreign.name_any(), &Default::default())
        .await
        .expect("delete");
    cluster
        .eventually("the waiting instance to run its own Job", LONG, || async {
            let i = cluster.instance(&waiting).await?;
            let jobs = cluster.jobs_of(&waiting).await;
            let own = jobs.iter().all(|j| {
                j.owner_references()
                    .iter()
                    .any(|o| Some(&o.uid) == i.metadata.uid.as_ref())
            });
            if state(&i) == InstanceState::Done && jobs.len() == 1 && own {
                Ok(())
            } else {
                Err(format!("{} with {} Jobs", state(&i).as_str(), jobs.len()))
            }
        })
        .await;
    cluster.stop().await;
}
