//! End-to-end: Pools, priority, fair share, Quotas and the Kueue hand-off (SPEC §13), with
//! workflows in several namespaces, the real binary's `trigger`, `backfill` and `status`, and
//! the operator against the embedded cluster.

mod common;

use std::time::Duration as StdDuration;

use charon_core::resources::{InstanceState, Pool, Quota, WorkflowInstance};
use chrono::{DateTime, Utc};
use common::cli::Cli;
use common::{Cluster, LONG, NS, most_active_at_once, state, suspended_hourly};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Namespace;
use kube::api::{ListParams, Patch, PatchParams, PostParams};
use kube::{Api, ResourceExt};
use serde_json::json;

async fn namespace(cluster: &Cluster, name: &str) {
    let namespace: Namespace =
        serde_json::from_value(json!({"metadata": {"name": name}})).expect("namespace");
    Api::<Namespace>::all(cluster.client.clone())
        .create(&PostParams::default(), &namespace)
        .await
        .expect("namespace created");
}

async fn apply(
    cluster: &Cluster,
    namespace: &str,
    kind: &str,
    name: &str,
    spec: serde_json::Value,
) {
    let object = json!({
        "apiVersion": "charon.dev/v1alpha1",
        "kind": kind,
        "metadata": {"name": name, "namespace": namespace},
        "spec": spec,
    });
    let params = PatchParams::apply("pools-test").force();
    let patch = Patch::Apply(&object);
    match kind {
        "Pool" => {
            Api::<Pool>::all(cluster.client.clone())
                .patch(name, &params, &patch)
                .await
                .expect("pool applied");
        }
        "Quota" => {
            Api::<Quota>::namespaced(cluster.client.clone(), namespace)
                .patch(name, &params, &patch)
                .await
                .expect("quota applied");
        }
        "Workflow" => {
            Api::<charon_core::resources::Workflow>::namespaced(cluster.client.clone(), namespace)
                .patch(name, &params, &patch)
                .await
                .expect("workflow applied");
        }
        "Backfill" => {
            Api::<charon_core::resources::Backfill>::namespaced(cluster.client.clone(), namespace)
                .patch(name, &params, &patch)
                .await
                .expect("backfill applied");
        }
        other => panic!("no kind {other}"),
    }
}

async fn all_instances(cluster: &Cluster) -> Vec<WorkflowInstance> {
    Api::<WorkflowInstance>::all(cluster.client.clone())
        .list(&ListParams::default())
        .await
        .expect("list instances")
        .items
}

fn reached(instance: &WorkflowInstance, to: InstanceState) -> DateTime<Utc> {
    let status = instance.status.as_ref().expect("a status");
    status
        .history
        .iter()
        .find(|h| h.to == to)
        .unwrap_or_else(|| panic!("{} never reached {to:?}", instance.name_any()))
        .at
}

fn message(instance: &WorkflowInstance) -> String {
    instance
        .status
        .as_ref()
        .map(|s| s.message.clone())
        .unwrap_or_default()
}

/// Polls `check` until it returns something, or panics naming `what` after `timeout`.
async fn until<T, F, Fut>(what: &str, timeout: StdDuration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(StdDuration::from_millis(100)).await;
    }
}

/// A suspended hourly workflow in the test namespace running `script` on `pool`.
async fn pooled(
    cluster: &Cluster,
    name: &str,
    script: &str,
    pool: &str,
) -> charon_core::resources::Workflow {
    let mut spec = suspended_hourly(script);
    spec["pools"] = json!([{"name": pool}]);
    cluster.apply_workflow(name, spec).await
}

async fn pool(cluster: &Cluster, name: &str) -> Pool {
    Api::<Pool>::all(cluster.client.clone())
        .get(name)
        .await
        .expect("pool")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pools_admit_by_priority_then_fair_share_and_never_over_their_slots() {
    let cluster = Cluster::start().await;
    let cli = Cli::new(&cluster);
    for ns in ["team-a", "team-b", "team-c"] {
        namespace(&cluster, ns).await;
    }
    // No slots yet: everything queues, and the line is visible.
    apply(&cluster, "", "Pool", "shared", json!({"slots": 0})).await;
    for (ns, priority) in [("team-a", 50), ("team-b", 50), ("team-c", 80)] {
        let mut spec = suspended_hourly("sleep 1");
        spec["pools"] = json!([{"name": "shared"}]);
        spec["priority"] = json!(priority);
        apply(&cluster, ns, "Workflow", "work", spec).await;
        let end = if ns == "team-c" {
            "2024-01-01T02"
        } else {
            "2024-01-01T04"
        };
        let backfill =
            json!({"workflow": "work", "start": "2024-01-01T00", "end": end, "concurrency": 4});
        apply(&cluster, ns, "Backfill", "range", backfill).await;
    }
    let queued = until("10 instances waiting for the pool", LONG, || async {
        let all = all_instances(&cluster).await;
        let waiting = all.iter().all(|i| {
            i.status.as_ref().and_then(|s| s.reason.as_deref())
                == Some(charon_core::instance::waiting::SLOT)
        });
        (all.len() == 10 && waiting).then_some(all)
    })
    .await;
    let first_c = queued
        .iter()
        .find(|i| i.namespace().as_deref() == Some("team-c") && i.spec.parameter == "2024-01-01T00")
        .expect("team-c's first partition");
    assert_eq!(
        message(first_c),
        "waiting for 1 slot of pool shared (0 of 0 used): 1st in line at priority 80"
    );
    assert!(
        queued
            .iter()
            .filter(|i| i.namespace().as_deref() != Some("team-c"))
            .all(|i| message(i).ends_with("in line at priority 50")),
        "{:?}",
        queued.iter().map(message).collect::<Vec<_>>()
    );
    until("the pool's status counts the queue", LONG, || async {
        let status = pool(&cluster, "shared").await.status.unwrap_or_default();
        (status.queued == 10 && status.used == 0).then_some(())
    })
    .await;
    // The UI shows the pool, who waits and why.
    let token = "pools-ui-token".to_string();
    let mode = charon::ui::auth::Mode::Local {
        token: token.clone(),
    };
    let (_ui, base) = common::ui::serve(&cluster, cluster.client.clone(), mode).await;
    let t = Some(token.as_str());
    let pools = common::ui::until("the UI's pools", || async {
        let (status, body) =
            common::ui::call("GET", &format!("{base}/api/v1/pools"), t, None).await;
        (status == 200 && body["items"][0]["queued"] == 10).then_some(body)
    })
    .await;
    assert_eq!(pools["items"][0]["name"], "shared", "{pools}");
    assert_eq!(pools["items"][0]["slots"], 0, "{pools}");
    let detail = common::ui::until("the workflow's pools and waiting instances", || async {
        let url = format!("{base}/api/v1/namespaces/team-c/workflows/work");
        let (_, body) = common::ui::call("GET", &url, t, None).await;
        (body["waiting"].as_array().is_some_and(|w| w.len() == 2)).then_some(body)
    })
    .await;
    assert_eq!(detail["priority"], 80, "{detail}");
    assert_eq!(detail["pools"][0]["name"], "shared", "{detail}");
    assert_eq!(detail["pools"][0]["claim"], 1, "{detail}");
    assert_eq!(
        detail["waiting"][0]["message"],
        "waiting for 1 slot of pool shared (0 of 0 used): 1st in line at priority 80",
        "{detail}"
    );
    let page = reqwest::Client::new()
        .get(format!("{base}/namespaces/team-c/workflows/work"))
        .header("Authorization", format!("Bearer {token}"))
        .send()
        .await
        .expect("page")
        .text()
        .await
        .expect("page text");
    assert!(
        page.contains("Waiting for a slot") && page.contains("1st in line at priority 80"),
        "{page}"
    );
    let (ok, out, err) = cli.run(&["-n", "team-c", "status"]).await;
    assert!(ok, "{err}");
    assert!(
        out.contains("Pools:    shared (1 slot), priority 80"),
        "{out}"
    );
    assert!(
        out.contains("Pool shared: 0 of 0 slots used, 10 queued"),
        "{out}"
    );
    assert!(
        out.contains("waits:   work-2024-01-01t00") && out.contains("1st in line at priority 80"),
        "{out}"
    );
    let (ok, out, err) = cli.kubectl(&["get", "cpool", "shared"], "").await;
    assert!(ok, "{err}");
    assert!(out.contains("SLOTS") && out.contains("QUEUED"), "{out}");

    // A workflow naming a pool that does not exist waits (it is not invalid: the pool may be
    // created later), and runs once it is.
    let mut lonely = suspended_hourly("true");
    lonely["pools"] = json!([{"name": "later"}]);
    apply(&cluster, "team-a", "Workflow", "lonely", lonely).await;
    let (ok, _, err) = cli
        .run(&["-n", "team-a", "trigger", "lonely", "2024-01-01T00"])
        .await;
    assert!(ok, "{err}");
    let waiting = until("lonely waits for its pool", LONG, || async {
        let all = all_instances(&cluster).await;
        all.into_iter()
            .find(|i| i.spec.workflow == "lonely")
            .filter(|i| message(i).contains("does not exist"))
    })
    .await;
    assert_eq!(
        message(&waiting),
        "waiting for pool later, which does not exist (spec.pools names it; create the Pool to run)"
    );
    assert_eq!(state(&waiting), InstanceState::Queued);
    apply(&cluster, "", "Pool", "later", json!({"slots": 1})).await;

    // Two slots: team-c (priority 80) first, then teams a and b in turn.
    apply(&cluster, "", "Pool", "shared", json!({"slots": 2})).await;
    let done = until(
        "every instance Done",
        StdDuration::from_secs(120),
        || async {
            let all = all_instances(&cluster).await;
            (all.len() == 11 && all.iter().all(|i| state(i) == InstanceState::Done)).then_some(all)
        },
    )
    .await;
    let shared: Vec<WorkflowInstance> = done
        .iter()
        .filter(|i| i.spec.workflow == "work")
        .cloned()
        .collect();
    assert_eq!(
        most_active_at_once(&shared),
        2,
        "never more than the pool's 2 slots"
    );
    let mut order: Vec<(DateTime<Utc>, String)> = shared
        .iter()
        .map(|i| {
            (
                reached(i, InstanceState::Prepare),
                i.namespace().unwrap_or_default(),
            )
        })
        .collect();
    order.sort();
    let namespaces: Vec<&str> = order.iter().map(|(_, ns)| ns.as_str()).collect();
    assert_eq!(&namespaces[..2], ["team-c", "team-c"], "{namespaces:?}");
    let first_four = &namespaces[2..6];
    assert_eq!(
        first_four.iter().filter(|ns| **ns == "team-a").count(),
        2,
        "equal priority shares the pool: {namespaces:?}"
    );

    let status = until("the pool's status shows it drained", LONG, || async {
        let status = pool(&cluster, "shared").await.status.unwrap_or_default();
        (status.used == 0 && status.queued == 0).then_some(status)
    })
    .await;
    for ns in ["team-a", "team-b", "team-c"] {
        let share = status
            .namespaces
            .iter()
            .find(|n| n.namespace == ns)
            .unwrap_or_else(|| panic!("{ns} in {status:?}"));
        assert!(share.usage > 0.5, "{ns} used the pool: {share:?}");
    }
    let metrics = cluster_metrics(&cluster).await;
    assert!(
        metrics.contains("charon_pool_wait_seconds_count{pool=\"shared\"} 10"),
        "{metrics}"
    );
    cluster.stop().await;
}

async fn cluster_metrics(cluster: &Cluster) -> String {
    cluster.metrics.encode()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quotas_bound_active_attempts_and_refuse_adhoc_and_backfill_beyond_max_queued() {
    let cluster = Cluster::start().await;
    let cli = Cli::new(&cluster);
    apply(
        &cluster,
        NS,
        "Quota",
        "limits",
        json!({"maxActive": 0, "maxQueued": 2}),
    )
    .await;
    let mut spec = suspended_hourly("sleep 1");
    spec["template"]["resources"] = json!({"requests": {"cpu": "600m", "memory": "64Mi"}});
    apply(&cluster, NS, "Workflow", "q", spec).await;

    for parameter in ["2024-01-01T00", "2024-01-01T01"] {
        let (ok, _, err) = cli.run(&["trigger", "q", parameter]).await;
        assert!(ok, "{err}");
    }
    let (ok, _, err) = cli.run(&["trigger", "q", "2024-01-01T02"]).await;
    assert!(!ok);
    assert!(
        err.contains(
            "refused by Quota default/limits: 2 of 2 instances queued (spec.maxQueued), 1 more would exceed it"
        ),
        "{err}"
    );
    let (ok, _, err) = cli
        .run(&[
            "backfill",
            "create",
            "q",
            "--start",
            "2024-01-01T02",
            "--end",
            "2024-01-01T05",
        ])
        .await;
    assert!(!ok);
    assert!(err.contains("refused by Quota default/limits"), "{err}");

    // A Backfill applied directly waits for room, its rows saying why.
    apply(
        &cluster,
        NS,
        "Backfill",
        "declared",
        json!({"workflow": "q", "start": "2024-01-01T02", "end": "2024-01-01T04", "concurrency": 2}),
    )
    .await;
    until("the backfill waits for room in the quota", LONG, || async {
            let backfill = Api::<charon_core::resources::Backfill>::namespaced(cluster.client.clone(), NS)
                .get("declared")
                .await
                .ok()?;
            let rows = backfill.status?.partitions;
            rows.iter()
                .any(|r| {
                    r.reason.as_deref()
                        == Some("waiting for room in Quota default/limits: 2 of 2 instances queued (spec.maxQueued)")
                })
                .then_some(())
        })
        .await;
    until("the instance waits for the quota", LONG, || async {
        let i = cluster.instance("q-2024-01-01t00").await.ok()?;
        (message(&i) == "waiting for Quota default/limits: 0 of 0 attempts active (spec.maxActive)")
            .then_some(())
    })
    .await;
    let quotas: Api<Quota> = Api::namespaced(cluster.client.clone(), NS);
    until("the quota's status counts the queue", LONG, || async {
        let status = quotas.get("limits").await.ok()?.status?;
        (status.queued == 2 && status.active == 0).then_some(())
    })
    .await;

    // One at a time, with the requests of the running one on record.
    apply(
        &cluster,
        NS,
        "Quota",
        "limits",
        json!({"maxActive": 1, "maxQueued": 2}),
    )
    .await;
    let saw_requests = std::sync::atomic::AtomicBool::new(false);
    let done = until("every partition Done", StdDuration::from_secs(90), || {
        let (cluster, quotas, saw) = (&cluster, &quotas, &saw_requests);
        async move {
            if let Some(requests) = quotas
                .get("limits")
                .await
                .ok()
                .and_then(|q| q.status?.requests)
                && requests.cpu.as_ref().map(|q| q.0.as_str()) == Some("600m")
                && requests.memory.as_ref().map(|q| q.0.as_str()) == Some("64Mi")
            {
                saw.store(true, std::sync::atomic::Ordering::SeqCst);
            }
            let all = cluster.instances_of("q").await;
            (all.len() == 4 && all.iter().all(|i| state(i) == InstanceState::Done)).then_some(all)
        }
    })
    .await;
    assert!(
        saw_requests.into_inner(),
        "the quota's status showed the running attempt's requests"
    );
    assert_eq!(most_active_at_once(&done), 1, "spec.maxActive: 1");

    // A second Quota in the namespace is not used, and says so.
    apply(&cluster, NS, "Quota", "second", json!({"maxActive": 5})).await;
    until("the second quota is marked unused", LONG, || async {
            let q = quotas.get("second").await.ok()?;
            let valid = charon_core::resources::find_condition(
                &q.status?.conditions,
                charon_core::resources::condition_type::VALID,
            )?
            .clone();
            (valid.message
                == "namespace default already has Quota limits: at most one Quota per namespace is used")
                .then_some(())
        })
        .await;
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kueue_admits_jobs_by_unsuspending_them() {
    let cluster = Cluster::start().await;
    let cli = Cli::new(&cluster);
    let mut spec = suspended_hourly("echo admitted");
    spec["template"]["queueName"] = json!("team-queue");
    spec["runningTimeout"] = json!("PT3S");
    apply(&cluster, NS, "Workflow", "queued", spec).await;
    let (ok, _, err) = cli.run(&["trigger", "queued", "2024-01-01T00"]).await;
    assert!(ok, "{err}");
    let name = "queued-2024-01-01t00";
    let waiting = until("the instance waits for Kueue", LONG, || async {
        let i = cluster.instance(name).await.ok()?;
        (message(&i) == "waiting for Kueue admission in queue team-queue").then_some(i)
    })
    .await;
    assert_eq!(state(&waiting), InstanceState::Submitted);
    let jobs = cluster.jobs_of(name).await;
    assert_eq!(jobs.len(), 1);
    let job = &jobs[0];
    assert_eq!(
        job.labels()
            .get("kueue.x-k8s.io/queue-name")
            .map(String::as_str),
        Some("team-queue")
    );
    assert_eq!(job.spec.as_ref().and_then(|s| s.suspend), Some(true));
    // Waiting costs nothing: past the running timeout it is still waiting, not timed out.
    tokio::time::sleep(StdDuration::from_secs(5)).await;
    let still = cluster.instance(name).await.expect("instance");
    assert_eq!(state(&still), InstanceState::Submitted);
    assert_eq!(
        message(&still),
        "waiting for Kueue admission in queue team-queue"
    );
    // Kueue admits it.
    let jobs: Api<Job> = Api::namespaced(cluster.client.clone(), NS);
    jobs.patch(
        &job.name_any(),
        &PatchParams::default(),
        &Patch::Merge(&json!({"spec": {"suspend": false}})),
    )
    .await
    .expect("unsuspended");
    let done = until("the admitted Job runs to Done", LONG, || async {
        let i = cluster.instance(name).await.ok()?;
        (state(&i) == InstanceState::Done).then_some(i)
    })
    .await;
    assert_eq!(done.status.expect("status").attempts.len(), 1);
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_operator_counts_an_unrecorded_job_before_admitting_into_its_pool() {
    let mut cluster = Cluster::start().await;
    apply(&cluster, "", "Pool", "solo", json!({"slots": 1})).await;
    let workflow = pooled(&cluster, "solo", "sleep 12", "solo").await;
    // The operator stops after creating the later partition's Job, before recording it: that
    // Job holds the pool's one slot.
    cluster.kill_operator().await;
    let mut instances = Vec::new();
    for partition in ["2024-01-01T05", "2024-01-01T06"] {
        instances.push(common::trigger_adhoc(&cluster, &workflow, partition).await);
    }
    let holder = common::unrecorded_job(&cluster, &workflow, &instances[1], None).await;
    // The restarted operator's Job cache is the last to be listed: the Pool and the
    // instances are seen while the holder is not, and the Pool is looked at then.
    let faults = |cluster: &Cluster, rate: f64| {
        cluster
            .server
            .as_ref()
            .expect("server runs")
            .set_error_rate("list jobs", rate, 503)
    };
    faults(&cluster, 1.0);
    cluster.start_operator();
    tokio::time::sleep(StdDuration::from_secs(2)).await;
    Api::<Pool>::all(cluster.client.clone())
        .patch(
            "solo",
            &PatchParams::default(),
            &Patch::Merge(&json!({"metadata": {"labels": {"looked-at": "now"}}})),
        )
        .await
        .expect("pool labelled");
    tokio::time::sleep(StdDuration::from_secs(1)).await;
    faults(&cluster, 0.0);

    // The earlier partition waits while the holder runs.
    let waiting = charon_core::names::job_name(&instances[0].name_any(), 1);
    until("the unrecorded Job to finish", LONG, || async {
        let job = cluster
            .jobs()
            .get(&holder.name_any())
            .await
            .expect("holder");
        assert!(
            cluster
                .jobs()
                .get_opt(&waiting)
                .await
                .expect("get")
                .is_none(),
            "{waiting} was created while {} held the pool's only slot",
            holder.name_any()
        );
        job.status.and_then(|s| s.completion_time).map(|_| ())
    })
    .await;
    // Then it runs: the slot was the holder's, not lost.
    until("both partitions Done", LONG, || async {
        let all = all_instances(&cluster).await;
        all.iter()
            .all(|i| state(i) == InstanceState::Done)
            .then_some(())
    })
    .await;
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pool_reports_an_ended_unrecorded_attempt_as_holding_nothing() {
    use futures::StreamExt;
    let mut cluster = Cluster::start().await;
    apply(&cluster, "", "Pool", "pair", json!({"slots": 2})).await;
    let slow = pooled(&cluster, "slow", "sleep 6", "pair").await;
    let quick = pooled(&cluster, "quick", "true", "pair").await;
    // The operator stops with three attempts unrecorded: one whose Job has ended (its slot
    // was given to one of the others) and two still running.
    cluster.kill_operator().await;
    let mut jobs = Vec::new();
    for (workflow, partition) in [
        (&quick, "2024-01-01T05"),
        (&slow, "2024-01-01T05"),
        (&slow, "2024-01-01T06"),
    ] {
        let instance = common::trigger_adhoc(&cluster, workflow, partition).await;
        jobs.push(common::unrecorded_job(&cluster, workflow, &instance, None).await);
    }
    until("the quick attempt's Job to end", LONG, || async {
        let job = cluster.jobs().get(&jobs[0].name_any()).await.expect("job");
        job.status.and_then(|s| s.succeeded).filter(|n| *n == 1)
    })
    .await;

    // Every status the restarted operator writes counts the two running attempts alone.
    let pools: Api<Pool> = Api::all(cluster.client.clone());
    let version = pools
        .get("pair")
        .await
        .expect("pool")
        .resource_version()
        .expect("a version");
    let mut events = pools
        .watch(&kube::api::WatchParams::default(), &version)
        .await
        .expect("watch")
        .boxed();
    cluster.start_operator();
    let mut written = Vec::new();
    let until_done = tokio::time::Instant::now() + StdDuration::from_secs(5);
    while let Ok(Some(event)) = tokio::time::timeout_at(until_done, events.next()).await {
        if let Ok(kube::api::WatchEvent::Modified(pool)) = event {
            written.extend(pool.status.map(|s| s.used));
        }
    }
    assert!(!written.is_empty(), "the Pool's status was written");
    assert!(
        written.iter().all(|used| *used <= 2),
        "statuses written counted {written:?} of 2 slots used"
    );
    cluster.stop().await;
}
