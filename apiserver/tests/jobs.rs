//! Jobs actually run: the Job controller creates pods, the simulated kubelet runs their
//! commands as local processes, and statuses, logs, events and garbage collection look the
//! way they do on a real 1.33 cluster.

mod common;

use common::raw_get;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{ConfigMap, Event, Namespace, Pod, Secret};
use kube::api::{Api, DeleteParams, ListParams, LogParams, Patch, PatchParams, PostParams};
use kube::{Client, Config};
use serde_json::{Value, json};

struct Cluster {
    server: charon_apiserver::RunningServer,
    client: Client,
}

async fn cluster_with(config: charon_apiserver::Config) -> Cluster {
    let server = charon_apiserver::ApiServer::start(config)
        .await
        .expect("server starts");
    let client = Client::try_from(Config::new(server.url().parse().expect("url"))).expect("client");
    Cluster { server, client }
}

impl Cluster {
    /// The Jobs and pods of the `default` namespace.
    fn apis(&self) -> (Api<Job>, Api<Pod>) {
        (
            Api::namespaced(self.client.clone(), "default"),
            Api::namespaced(self.client.clone(), "default"),
        )
    }
}

/// Creates `job`, failing the test when the server refuses it.
async fn create_job(jobs: &Api<Job>, job: Job) {
    jobs.create(&PostParams::default(), &job)
        .await
        .expect("create");
}

async fn cluster() -> Cluster {
    cluster_with(charon_apiserver::Config::default().fast_backoff(Duration::from_millis(50))).await
}

/// Polls `check` until it returns Some, failing after `secs` seconds.
async fn eventually<T, F, Fut>(secs: u64, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(40)).await;
    }
}

fn job(name: &str, script: &str, extra: Value) -> Job {
    let mut job = json!({
        "apiVersion": "batch/v1", "kind": "Job",
        "metadata": {"name": name},
        "spec": {
            "backoffLimit": 0,
            "template": {"spec": {
                "restartPolicy": "Never",
                "containers": [{"name": "main", "image": "busybox:1.36", "command": ["sh", "-c", script]}],
            }},
        },
    });
    json_patch::merge(&mut job, &extra);
    serde_json::from_value(job).expect("job")
}

fn conditions(job: &Job) -> Vec<(String, String, String)> {
    job.status
        .as_ref()
        .and_then(|s| s.conditions.clone())
        .unwrap_or_default()
        .into_iter()
        .filter(|c| c.status == "True")
        .map(|c| {
            (
                c.type_,
                c.reason.unwrap_or_default(),
                c.message.unwrap_or_default(),
            )
        })
        .collect()
}

async fn finished(jobs: &Api<Job>, name: &str) -> Job {
    eventually(15, &format!("job {name} to finish"), || async {
        let job = jobs.get(name).await.ok()?;
        conditions(&job)
            .iter()
            .any(|(t, _, _)| t == "Complete" || t == "Failed")
            .then_some(job)
    })
    .await
}

async fn pods_of(pods: &Api<Pod>, job: &str) -> Vec<Pod> {
    pods.list(&ListParams::default().labels(&format!("job-name={job}")))
        .await
        .expect("list pods")
        .items
}

fn terminated(pod: &Pod) -> (i32, String) {
    let state = pod
        .status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref())
        .and_then(|c| c.first())
        .and_then(|c| c.state.as_ref())
        .and_then(|s| s.terminated.as_ref())
        .expect("a terminated container");
    (state.exit_code, state.reason.clone().unwrap_or_default())
}

async fn event_reasons(client: &Client, name: &str) -> Vec<String> {
    let events: Api<Event> = Api::namespaced(client.clone(), "default");
    events
        .list(&ListParams::default().fields(&format!("involvedObject.name={name}")))
        .await
        .expect("events")
        .items
        .into_iter()
        .filter_map(|e| e.reason)
        .collect()
}

fn temp_dir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "charon-jobs-test-{tag}-{}-{}",
        std::process::id(),
        uuid_like()
    ));
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

fn uuid_like() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default()
}

fn alive(pid: &str) -> bool {
    let status = std::fs::read_to_string(format!("/proc/{}/stat", pid.trim())).unwrap_or_default();
    // A zombie (state Z) is dead for our purposes.
    !status.is_empty() && !status.contains(") Z ")
}

#[tokio::test]
async fn a_failing_job_fails_with_its_exit_code_and_log() {
    let c = cluster().await;
    let (jobs, pods) = c.apis();
    create_job(&jobs, job("boom", "echo hi; exit 3", json!({}))).await;
    let done = finished(&jobs, "boom").await;
    let conds = conditions(&done);
    let types: Vec<&str> = conds.iter().map(|(t, _, _)| t.as_str()).collect();
    assert_eq!(types, ["FailureTarget", "Failed"]);
    assert_eq!(conds[1].1, "BackoffLimitExceeded");
    assert_eq!(conds[1].2, "Job has reached the specified backoff limit");
    let status = done.status.expect("status");
    assert_eq!(status.failed, Some(1));
    assert_eq!(status.active, None);
    assert_eq!(status.ready, Some(0));
    assert!(status.start_time.is_some() && status.completion_time.is_none());

    let list = pods_of(&pods, "boom").await;
    assert_eq!(list.len(), 1);
    let pod = &list[0];
    let name = pod.metadata.name.clone().expect("name");
    assert!(
        regex::Regex::new("^boom-[a-z0-9]{5}$")
            .expect("regex")
            .is_match(&name),
        "{name}"
    );
    assert_eq!(terminated(pod), (3, "Error".to_string()));
    assert_eq!(
        pod.status.as_ref().and_then(|s| s.phase.as_deref()),
        Some("Failed")
    );
    assert_eq!(
        pod.spec.as_ref().and_then(|s| s.node_name.as_deref()),
        Some("charon-dev")
    );
    let owner = &pod.metadata.owner_references.as_ref().expect("owners")[0];
    assert_eq!((owner.kind.as_str(), owner.name.as_str()), ("Job", "boom"));
    assert_eq!(
        (owner.controller, owner.block_owner_deletion),
        (Some(true), Some(true))
    );
    // The tracking finalizer is gone once the pod is counted.
    assert!(
        pod.metadata
            .finalizers
            .as_ref()
            .is_none_or(|f| f.is_empty())
    );
    assert_eq!(
        pods.logs(&name, &LogParams::default()).await.expect("log"),
        "hi\n"
    );

    let reasons = event_reasons(&c.client, "boom").await;
    assert!(
        reasons.contains(&"SuccessfulCreate".to_string()),
        "{reasons:?}"
    );
    assert!(
        reasons.contains(&"BackoffLimitExceeded".to_string()),
        "{reasons:?}"
    );
    let reasons = event_reasons(&c.client, &name).await;
    for r in ["Scheduled", "Pulled", "Created", "Started"] {
        assert!(
            reasons.contains(&r.to_string()),
            "{r} missing from {reasons:?}"
        );
    }
    c.server.shutdown().await;
}

#[tokio::test]
async fn a_succeeding_job_completes() {
    let c = cluster().await;
    let (jobs, pods) = c.apis();
    create_job(
        &jobs,
        job(
            "fine",
            "echo one; echo two >&2; echo three",
            json!({"spec": {"completions": 2, "parallelism": 1}}),
        ),
    )
    .await;
    let done = finished(&jobs, "fine").await;
    let conds = conditions(&done);
    let types: Vec<&str> = conds.iter().map(|(t, _, _)| t.as_str()).collect();
    assert_eq!(types, ["SuccessCriteriaMet", "Complete"]);
    assert_eq!(conds[1].1, "CompletionsReached");
    let status = done.status.expect("status");
    assert_eq!(status.succeeded, Some(2));
    assert!(status.completion_time.is_some());
    let list = pods_of(&pods, "fine").await;
    assert_eq!(list.len(), 2);
    for pod in &list {
        assert_eq!(terminated(pod), (0, "Completed".to_string()));
        let name = pod.metadata.name.clone().expect("name");
        // stdout and stderr interleave in order.
        assert_eq!(
            pods.logs(&name, &LogParams::default()).await.expect("log"),
            "one\ntwo\nthree\n"
        );
        let tail = LogParams {
            tail_lines: Some(1),
            timestamps: true,
            ..LogParams::default()
        };
        let last = pods.logs(&name, &tail).await.expect("log");
        assert!(last.ends_with("Z three\n"), "{last}");
        let conditions: Vec<(String, String)> = pod
            .status
            .as_ref()
            .and_then(|s| s.conditions.clone())
            .unwrap_or_default()
            .into_iter()
            .map(|c| (c.type_, c.status))
            .collect();
        assert!(conditions.contains(&("PodScheduled".into(), "True".into())));
        assert!(conditions.contains(&("Ready".into(), "False".into())));
    }
    assert!(
        event_reasons(&c.client, "fine")
            .await
            .contains(&"Completed".to_string())
    );
    c.server.shutdown().await;
}

/// With simulated pods (kwok's way of running many pods without their processes) a
/// container exits 0 as soon as it starts, whatever its command: a command that would fail or
/// run for an hour completes its Job at once, with no process started and no log.
#[tokio::test]
async fn simulated_pods_complete_without_running_their_command() {
    let c = cluster_with(charon_apiserver::Config {
        simulated_pods: true,
        ..charon_apiserver::Config::default()
    })
    .await;
    let (jobs, pods) = c.apis();
    let marker = temp_dir("simulated").join("ran");
    let script = format!("touch {}; sleep 3600; exit 3", marker.display());
    create_job(&jobs, job("simulated", &script, json!({}))).await;
    let started = Instant::now();
    let done = finished(&jobs, "simulated").await;
    assert!(started.elapsed() < Duration::from_secs(5));
    let types: Vec<String> = conditions(&done).into_iter().map(|(t, _, _)| t).collect();
    assert_eq!(types, ["SuccessCriteriaMet", "Complete"]);
    let list = pods_of(&pods, "simulated").await;
    assert_eq!(list.len(), 1);
    assert_eq!(terminated(&list[0]), (0, "Completed".to_string()));
    assert!(!marker.exists(), "the command ran");
    let name = list[0].metadata.name.clone().expect("name");
    assert_eq!(
        pods.logs(&name, &LogParams::default()).await.expect("log"),
        ""
    );
    c.server.shutdown().await;
}

#[tokio::test]
async fn the_backoff_limit_counts_failed_pods() {
    let c = cluster().await;
    let (jobs, pods) = c.apis();
    create_job(
        &jobs,
        job("flaky", "exit 1", json!({"spec": {"backoffLimit": 2}})),
    )
    .await;
    let done = finished(&jobs, "flaky").await;
    assert_eq!(done.status.as_ref().and_then(|s| s.failed), Some(3));
    assert_eq!(conditions(&done)[1].1, "BackoffLimitExceeded");
    assert_eq!(pods_of(&pods, "flaky").await.len(), 3);
    c.server.shutdown().await;
}

#[tokio::test]
async fn on_failure_restarts_the_container_in_place() {
    let c = cluster().await;
    let (jobs, pods) = c.apis();
    // Each run counts itself in a file of the pod's directory and succeeds on the third.
    let script = "n=$(cat count 2>/dev/null || echo 0); n=$((n+1)); echo $n > count; echo attempt $n; [ $n -ge 3 ]";
    create_job(&jobs, job(
            "retry",
            script,
            json!({"spec": {"backoffLimit": 5, "template": {"spec": {"restartPolicy": "OnFailure"}}}}),
        )).await;
    let done = finished(&jobs, "retry").await;
    assert_eq!(conditions(&done)[1].0, "Complete");
    let list = pods_of(&pods, "retry").await;
    assert_eq!(list.len(), 1);
    let status = list[0]
        .status
        .as_ref()
        .and_then(|s| s.container_statuses.clone())
        .expect("statuses");
    assert_eq!(status[0].restart_count, 2);
    let last = status[0]
        .last_state
        .as_ref()
        .and_then(|s| s.terminated.as_ref())
        .expect("last state");
    assert_eq!(last.exit_code, 1);
    let name = list[0].metadata.name.clone().expect("name");
    assert_eq!(
        pods.logs(&name, &LogParams::default()).await.expect("log"),
        "attempt 3\n"
    );
    let previous = LogParams {
        previous: true,
        ..LogParams::default()
    };
    assert_eq!(
        pods.logs(&name, &previous).await.expect("previous"),
        "attempt 2\n"
    );
    c.server.shutdown().await;

    // With a lower limit the restarts count against it.
    let c = cluster().await;
    let jobs: Api<Job> = Api::namespaced(c.client.clone(), "default");
    create_job(&jobs, job(
            "crashy",
            "exit 1",
            json!({"spec": {"backoffLimit": 1, "template": {"spec": {"restartPolicy": "OnFailure"}}}}),
        )).await;
    let done = finished(&jobs, "crashy").await;
    assert_eq!(
        conditions(&done)[1],
        (
            "Failed".into(),
            "BackoffLimitExceeded".into(),
            "Job has reached the specified backoff limit".into()
        )
    );
    c.server.shutdown().await;
}

#[tokio::test]
async fn an_active_deadline_fails_the_job_and_kills_the_process() {
    let c = cluster().await;
    let jobs: Api<Job> = Api::namespaced(c.client.clone(), "default");
    let host = temp_dir("deadline");
    // `$$$$` is `$$` once the kubelet has expanded `$$` escapes: the shell's pid. The
    // deadline counts from `startTime`, which has whole seconds (as the real API's), so a
    // deadline of 2 s leaves the process at least 1 s to be seen alive.
    let spec = json!({"spec": {"activeDeadlineSeconds": 2, "template": {"spec": {
        "volumes": [{"name": "data", "hostPath": {"path": host.display().to_string()}}],
        "containers": [{"name": "main", "image": "busybox", "command": ["sh", "-c", "echo $$$$ > /data/pid; exec sleep 30"],
            "volumeMounts": [{"name": "data", "mountPath": "/data"}]}],
    }}}});
    jobs.create(&PostParams::default(), &job("slow", "", spec))
        .await
        .expect("create");
    let pid = eventually(10, "the pid file", || async {
        std::fs::read_to_string(host.join("pid"))
            .ok()
            .filter(|p| !p.trim().is_empty())
    })
    .await;
    assert!(alive(&pid));
    let done = finished(&jobs, "slow").await;
    let conds = conditions(&done);
    assert_eq!(
        conds[0],
        (
            "FailureTarget".into(),
            "DeadlineExceeded".into(),
            "Job was active longer than specified deadline".into()
        )
    );
    assert_eq!(conds[1].0, "Failed");
    eventually(5, "the process to die", || async {
        (!alive(&pid)).then_some(())
    })
    .await;
    c.server.shutdown().await;
    let _ = std::fs::remove_dir_all(host);
}

#[tokio::test]
async fn images_that_cannot_be_pulled_never_start() {
    let mut config = charon_apiserver::Config::default().fast_backoff(Duration::from_millis(50));
    config.image_pull_failure = Some("^broken/".into());
    let c = cluster_with(config).await;
    let pods: Api<Pod> = Api::namespaced(c.client.clone(), "default");
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": "nopull"},
        "spec": {"containers": [{"name": "main", "image": "broken/app:1", "command": ["true"]}]},
    }))
    .expect("pod");
    pods.create(&PostParams::default(), &pod)
        .await
        .expect("create");
    let seen = std::sync::Mutex::new(Vec::new());
    eventually(10, "ImagePullBackOff", || async {
        let pod = pods.get("nopull").await.ok()?;
        let reason = pod
            .status?
            .container_statuses?
            .first()?
            .state
            .as_ref()?
            .waiting
            .as_ref()?
            .reason
            .clone()?;
        let mut seen = seen.lock().expect("lock");
        if !seen.contains(&reason) {
            seen.push(reason.clone());
        }
        (reason == "ImagePullBackOff").then_some(())
    })
    .await;
    let seen = seen.into_inner().expect("lock");
    assert!(
        seen.iter()
            .all(|r| r == "ErrImagePull" || r == "ImagePullBackOff"),
        "{seen:?}"
    );
    let pod = pods.get("nopull").await.expect("pod");
    assert_eq!(pod.status.and_then(|s| s.phase).as_deref(), Some("Pending"));
    match pods.logs("nopull", &LogParams::default()).await {
        Err(kube::Error::Api(status)) => {
            assert_eq!(status.code, 400);
            assert!(
                status
                    .message
                    .contains("container \"main\" in pod \"nopull\" is waiting to start"),
                "{}",
                status.message
            );
        }
        other => panic!("expected a 400, got {other:?}"),
    }
    c.server.shutdown().await;
}

#[tokio::test]
async fn an_evicted_pod_fails_its_job() {
    let c = cluster().await;
    let (jobs, pods) = c.apis();
    create_job(&jobs, job("victim", "sleep 30", json!({}))).await;
    let name = eventually(10, "a running pod", || async {
        let list = pods_of(&pods, "victim").await;
        let pod = list.first()?;
        (pod.status.as_ref()?.phase.as_deref() == Some("Running"))
            .then(|| pod.metadata.name.clone())?
    })
    .await;
    assert!(c.server.evict_pod("default", &name));
    let done = finished(&jobs, "victim").await;
    assert_eq!(conditions(&done)[1].1, "BackoffLimitExceeded");
    let pod = pods.get(&name).await.expect("pod");
    let status = pod.status.expect("status");
    assert_eq!(status.phase.as_deref(), Some("Failed"));
    assert_eq!(status.reason.as_deref(), Some("Evicted"));
    assert!(
        status
            .message
            .unwrap_or_default()
            .starts_with("The node was low on resource: memory.")
    );
    let disruption = status
        .conditions
        .unwrap_or_default()
        .into_iter()
        .find(|c| c.type_ == "DisruptionTarget")
        .expect("DisruptionTarget");
    assert_eq!(disruption.reason.as_deref(), Some("TerminationByKubelet"));
    c.server.shutdown().await;
}

#[tokio::test]
async fn containers_get_env_expansion_field_refs_secrets_and_volumes() {
    let c = cluster().await;
    let client = c.client.clone();
    let secrets: Api<Secret> = Api::namespaced(client.clone(), "default");
    let maps: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    secrets
        .create(
            &PostParams::default(),
            &serde_json::from_value(
                json!({"metadata": {"name": "creds"}, "data": {"password": "czNjcmV0"}}),
            )
            .expect("secret"),
        )
        .await
        .expect("secret");
    maps.create(
        &PostParams::default(),
        &serde_json::from_value(
            json!({"metadata": {"name": "settings"}, "data": {"mode": "fast"}}),
        )
        .expect("configmap"),
    )
    .await
    .expect("configmap");
    let script = r#"echo "$MESSAGE|$ESCAPED|$UNKNOWN|$POD_NAME|$NS|$APP|$PASSWORD|$CFG_mode|$1"; cat /etc/creds/password; echo; cat $SECRET_FILE"#;
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": "envpod", "labels": {"app": "demo"}},
        "spec": {
            "restartPolicy": "Never",
            "volumes": [{"name": "creds", "secret": {"secretName": "creds"}}],
            "containers": [{
                "name": "main", "image": "busybox",
                "command": ["sh", "-c"],
                "args": [script, "sh", "$(GREETING)"],
                "env": [
                    {"name": "GREETING", "value": "hello"},
                    {"name": "MESSAGE", "value": "$(GREETING) world"},
                    {"name": "ESCAPED", "value": "$$(GREETING)"},
                    {"name": "UNKNOWN", "value": "$(NOPE)"},
                    {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                    {"name": "NS", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
                    {"name": "APP", "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels['app']"}}},
                    {"name": "PASSWORD", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "password"}}},
                    {"name": "SECRET_FILE", "value": "/etc/creds/password"},
                ],
                "envFrom": [{"prefix": "CFG_", "configMapRef": {"name": "settings"}}],
                "volumeMounts": [{"name": "creds", "mountPath": "/etc/creds", "readOnly": true}],
            }],
        },
    }))
    .expect("pod");
    pods.create(&PostParams::default(), &pod)
        .await
        .expect("create");
    eventually(10, "the pod to succeed", || async {
        let pod = pods.get("envpod").await.ok()?;
        (pod.status?.phase.as_deref() == Some("Succeeded")).then_some(())
    })
    .await;
    let log = pods
        .logs("envpod", &LogParams::default())
        .await
        .expect("log");
    assert_eq!(
        log,
        "hello world|$(GREETING)|$(NOPE)|envpod|default|demo|s3cret|fast|hello\ns3cret\ns3cret"
    );
    c.server.shutdown().await;
}

#[tokio::test]
async fn indexed_jobs_give_each_pod_its_index() {
    let c = cluster().await;
    let (jobs, pods) = c.apis();
    create_job(
        &jobs,
        job(
            "shards",
            "echo index=$JOB_COMPLETION_INDEX",
            json!({"spec": {"completions": 3, "parallelism": 3, "completionMode": "Indexed"}}),
        ),
    )
    .await;
    let done = finished(&jobs, "shards").await;
    assert_eq!(conditions(&done)[1].0, "Complete");
    let status = done.status.expect("status");
    assert_eq!(status.completed_indexes.as_deref(), Some("0-2"));
    assert_eq!(status.succeeded, Some(3));
    let mut seen = Vec::new();
    for pod in pods_of(&pods, "shards").await {
        let name = pod.metadata.name.clone().expect("name");
        let index = pod
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get("batch.kubernetes.io/job-completion-index"))
            .cloned()
            .expect("index annotation");
        assert!(name.starts_with(&format!("shards-{index}-")), "{name}");
        let log = pods.logs(&name, &LogParams::default()).await.expect("log");
        assert_eq!(log, format!("index={index}\n"));
        seen.push(index);
    }
    seen.sort();
    assert_eq!(seen, ["0", "1", "2"]);
    c.server.shutdown().await;
}

/// Each pod's (index, `job-index-failure-count`, phase), sorted.
async fn index_attempts(pods: &Api<Pod>, job: &str) -> Vec<(String, String, String)> {
    let mut attempts: Vec<(String, String, String)> = pods_of(pods, job)
        .await
        .into_iter()
        .map(|pod| {
            let annotation = |key: &str| {
                pod.metadata
                    .annotations
                    .as_ref()
                    .and_then(|a| a.get(key))
                    .cloned()
                    .unwrap_or_default()
            };
            let phase = pod.status.as_ref().and_then(|s| s.phase.clone());
            (
                annotation("batch.kubernetes.io/job-completion-index"),
                annotation("batch.kubernetes.io/job-index-failure-count"),
                phase.unwrap_or_default(),
            )
        })
        .collect();
    attempts.sort();
    attempts
}

fn per_index_job(name: &str, script: &str, spec: Value) -> Job {
    let mut extra = json!({"spec": {"backoffLimit": null, "completionMode": "Indexed"}});
    json_patch::merge(&mut extra["spec"], &spec);
    job(name, script, extra)
}

#[tokio::test]
async fn a_per_index_backoff_limit_fails_indexes_on_their_own() {
    let c = cluster().await;
    let (jobs, pods) = c.apis();
    let script = "case $JOB_COMPLETION_INDEX in 1|3) exit 1;; esac";
    create_job(
        &jobs,
        per_index_job(
            "shards",
            script,
            json!({"completions": 4, "parallelism": 4, "backoffLimitPerIndex": 0}),
        ),
    )
    .await;
    let stored = jobs.get("shards").await.expect("job");
    // The real defaulting: no global limit once there is one per index.
    assert_eq!(
        stored.spec.as_ref().and_then(|s| s.backoff_limit),
        Some(i32::MAX)
    );
    let done = finished(&jobs, "shards").await;
    assert_eq!(
        conditions(&done),
        [
            (
                "FailureTarget".to_string(),
                "FailedIndexes".to_string(),
                "Job has failed indexes".to_string()
            ),
            (
                "Failed".to_string(),
                "FailedIndexes".to_string(),
                "Job has failed indexes".to_string()
            ),
        ]
    );
    let status = done.status.expect("status");
    assert_eq!(status.failed_indexes.as_deref(), Some("1,3"));
    assert_eq!(status.completed_indexes.as_deref(), Some("0,2"));
    assert_eq!(status.succeeded, Some(2));
    assert_eq!(status.failed, Some(2));
    assert_eq!(status.active, None);
    // No index was retried: one pod each, the failed ones not recreated.
    let attempt = |i: &str, phase: &str| (i.to_string(), "0".to_string(), phase.to_string());
    assert_eq!(
        index_attempts(&pods, "shards").await,
        [
            attempt("0", "Succeeded"),
            attempt("1", "Failed"),
            attempt("2", "Succeeded"),
            attempt("3", "Failed"),
        ]
    );
    assert!(
        event_reasons(&c.client, "shards")
            .await
            .contains(&"FailedIndexes".to_string())
    );
    c.server.shutdown().await;
}

#[tokio::test]
async fn a_per_index_backoff_limit_of_one_retries_each_index_once() {
    let c = cluster().await;
    let (jobs, pods) = c.apis();
    // Index 0 fails only its first attempt; index 1 fails both.
    let script = "[ $JOB_COMPLETION_INDEX = 0 ] && [ $FAILURES = 1 ]";
    let mut spec = json!({"completions": 2, "parallelism": 2, "backoffLimitPerIndex": 1});
    spec["template"] = json!({"spec": {"containers": [{"name": "main", "image": "busybox:1.36",
        "command": ["sh", "-c", script],
        "env": [{"name": "FAILURES", "valueFrom": {"fieldRef": {
            "fieldPath": "metadata.annotations['batch.kubernetes.io/job-index-failure-count']"}}}]}]}});
    create_job(&jobs, per_index_job("retried", script, spec)).await;
    let done = finished(&jobs, "retried").await;
    assert_eq!(conditions(&done)[1].1, "FailedIndexes");
    let status = done.status.expect("status");
    assert_eq!(status.failed_indexes.as_deref(), Some("1"));
    assert_eq!(status.completed_indexes.as_deref(), Some("0"));
    assert_eq!(status.failed, Some(3));
    let attempt = |i: &str, n: &str, phase: &str| (i.to_string(), n.to_string(), phase.to_string());
    assert_eq!(
        index_attempts(&pods, "retried").await,
        [
            attempt("0", "0", "Failed"),
            attempt("0", "1", "Succeeded"),
            attempt("1", "0", "Failed"),
            attempt("1", "1", "Failed"),
        ]
    );

    // Every index retried into success completes the Job, failures and all.
    create_job(
        &jobs,
        per_index_job(
            "recovers",
            "[ $FAILURES = 1 ]",
            json!({"completions": 2, "parallelism": 2, "backoffLimitPerIndex": 1,
                "template": {"spec": {"containers": [{"name": "main", "image": "busybox:1.36",
                    "command": ["sh", "-c", "[ $FAILURES = 1 ]"],
                    "env": [{"name": "FAILURES", "valueFrom": {"fieldRef": {
                        "fieldPath": "metadata.annotations['batch.kubernetes.io/job-index-failure-count']"}}}]}]}}}),
        ),
    )
    .await;
    let done = finished(&jobs, "recovers").await;
    assert_eq!(conditions(&done)[1].0, "Complete");
    let status = done.status.expect("status");
    assert_eq!(status.failed_indexes.as_deref(), Some(""));
    assert_eq!(status.completed_indexes.as_deref(), Some("0,1"));
    assert_eq!(status.failed, Some(2));
    c.server.shutdown().await;
}

#[tokio::test]
async fn too_many_failed_indexes_fail_the_job_at_once() {
    let c = cluster().await;
    let (jobs, pods) = c.apis();
    create_job(
        &jobs,
        per_index_job(
            "capped",
            "exit 1",
            json!({"completions": 4, "parallelism": 1, "backoffLimitPerIndex": 0, "maxFailedIndexes": 0}),
        ),
    )
    .await;
    let done = finished(&jobs, "capped").await;
    assert_eq!(
        conditions(&done)[1],
        (
            "Failed".to_string(),
            "MaxFailedIndexesExceeded".to_string(),
            "Job has exceeded the specified maximal number of failed indexes".to_string()
        )
    );
    let status = done.status.expect("status");
    assert_eq!(status.failed_indexes.as_deref(), Some("0"));
    assert_eq!(status.failed, Some(1));
    // The other three indexes never started.
    assert_eq!(pods_of(&pods, "capped").await.len(), 1);
    c.server.shutdown().await;
}

#[tokio::test]
async fn per_index_limits_are_validated_as_the_real_server_does() {
    let c = cluster_with(charon_apiserver::Config::default().api_only()).await;
    let (jobs, _) = c.apis();
    let refused = |job: Job| {
        let jobs = jobs.clone();
        async move {
            match jobs.create(&PostParams::default(), &job).await {
                Err(kube::Error::Api(status)) => {
                    assert_eq!(status.code, 422, "{status:?}");
                    status.message
                }
                other => panic!("expected a refusal, got {other:?}"),
            }
        }
    };
    let plain = job(
        "plain",
        "true",
        json!({"spec": {"backoffLimitPerIndex": 1}}),
    );
    assert_eq!(
        refused(plain).await,
        "Job.batch \"plain\" is invalid: spec.backoffLimitPerIndex: Invalid value: 1: requires indexed completion mode"
    );
    let negative = per_index_job(
        "negative",
        "true",
        json!({"completions": 2, "backoffLimitPerIndex": -1}),
    );
    assert_eq!(
        refused(negative).await,
        "Job.batch \"negative\" is invalid: spec.backoffLimitPerIndex: Invalid value: -1: must be greater than or equal to 0"
    );
    let alone = per_index_job(
        "alone",
        "true",
        json!({"completions": 2, "maxFailedIndexes": 1}),
    );
    assert_eq!(
        refused(alone).await,
        "Job.batch \"alone\" is invalid: spec.backoffLimitPerIndex: Required value: when maxFailedIndexes is specified"
    );
    let over = per_index_job(
        "over",
        "true",
        json!({"completions": 2, "backoffLimitPerIndex": 1, "maxFailedIndexes": 3}),
    );
    assert_eq!(
        refused(over).await,
        "Job.batch \"over\" is invalid: spec.maxFailedIndexes: Invalid value: 3: must be less than or equal to completions"
    );
    let wide = per_index_job(
        "wide",
        "true",
        json!({"completions": 200_000, "parallelism": 100_001, "backoffLimitPerIndex": 1}),
    );
    assert_eq!(
        refused(wide).await,
        "Job.batch \"wide\" is invalid: [spec.parallelism: Invalid value: 100001: must be less than or equal to 100000 when completion mode is Indexed, \
         spec.maxFailedIndexes: Required value: must be specified when completions is above 100000, \
         spec.parallelism: Invalid value: 100001: must be less than or equal to 10000 when completions are above 100000 and used with backoff limit per index]"
    );

    // The per-index limit cannot change afterwards.
    create_job(
        &jobs,
        per_index_job(
            "fixed",
            "true",
            json!({"completions": 2, "backoffLimitPerIndex": 1}),
        ),
    )
    .await;
    let patch = Patch::Merge(json!({"spec": {"backoffLimitPerIndex": 2}}));
    match jobs.patch("fixed", &PatchParams::default(), &patch).await {
        Err(kube::Error::Api(status)) => assert_eq!(
            status.message,
            "Job.batch \"fixed\" is invalid: spec.backoffLimitPerIndex: Invalid value: 2: field is immutable"
        ),
        other => panic!("expected a refusal, got {other:?}"),
    }
    let patch = Patch::Merge(json!({"spec": {"maxFailedIndexes": 1}}));
    jobs.patch("fixed", &PatchParams::default(), &patch)
        .await
        .expect("maxFailedIndexes may change");
    c.server.shutdown().await;
}

#[tokio::test]
async fn suspended_jobs_wait_until_resumed() {
    let c = cluster().await;
    let (jobs, pods) = c.apis();
    create_job(
        &jobs,
        job("later", "true", json!({"spec": {"suspend": true}})),
    )
    .await;
    eventually(5, "Suspended", || async {
        let job = jobs.get("later").await.ok()?;
        conditions(&job)
            .iter()
            .any(|(t, _, _)| t == "Suspended")
            .then_some(())
    })
    .await;
    assert!(pods_of(&pods, "later").await.is_empty());
    jobs.patch(
        "later",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"suspend": false}})),
    )
    .await
    .expect("resume");
    let done = finished(&jobs, "later").await;
    assert!(conditions(&done).iter().any(|(t, _, _)| t == "Complete"));
    c.server.shutdown().await;
}

/// Suspending a running Job stops its pod, which counts as failed, as in Kubernetes: with
/// `backoffLimit: 0` the Job fails; raised along with the suspension, the Job waits and,
/// resumed, runs a new pod to completion (with a new startTime).
#[tokio::test]
async fn suspending_a_running_job_stops_its_pod_and_resuming_starts_a_new_one() {
    let c = cluster().await;
    let (jobs, pods) = c.apis();
    let script = "echo trapped; sleep 2";
    for (name, backoff_limit) in [("strict", 0), ("lenient", 1)] {
        create_job(&jobs, job(name, script, json!({}))).await;
        let first = eventually(10, "a running pod", || async {
            let list = pods_of(&pods, name).await;
            let pod = list.first()?;
            (pod.status.as_ref()?.phase.as_deref() == Some("Running"))
                .then(|| pod.metadata.name.clone())?
        })
        .await;
        jobs.patch(
            name,
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"suspend": true, "backoffLimit": backoff_limit}})),
        )
        .await
        .expect("suspend");
        eventually(10, "the pod to go", || async {
            pods.get_opt(&first).await.ok()?.is_none().then_some(())
        })
        .await;
        if backoff_limit == 0 {
            let failed = finished(&jobs, name).await;
            assert!(
                conditions(&failed)
                    .iter()
                    .any(|(t, r, _)| t == "Failed" && r == "BackoffLimitExceeded"),
                "{:?}",
                conditions(&failed)
            );
            continue;
        }
        let suspended = eventually(10, "Suspended", || async {
            let job = jobs.get(name).await.ok()?;
            let status = job.status.clone()?;
            (conditions(&job).iter().any(|(t, _, _)| t == "Suspended")
                && status.failed == Some(1)
                && status.active.unwrap_or(0) == 0)
                .then_some(job)
        })
        .await;
        let started = suspended.status.and_then(|s| s.start_time);
        assert!(pods_of(&pods, name).await.is_empty());
        tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
        jobs.patch(
            name,
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"suspend": false}})),
        )
        .await
        .expect("resume");
        let done = finished(&jobs, name).await;
        assert!(conditions(&done).iter().any(|(t, _, _)| t == "Complete"));
        let status = done.status.expect("status");
        assert_eq!((status.succeeded, status.failed), (Some(1), Some(1)));
        assert!(status.start_time > started, "startTime is reset on resume");
    }
    c.server.shutdown().await;
}

#[tokio::test]
async fn finished_jobs_go_after_their_ttl() {
    let c = cluster().await;
    let jobs: Api<Job> = Api::namespaced(c.client.clone(), "default");
    create_job(
        &jobs,
        job(
            "brief",
            "true",
            json!({"spec": {"ttlSecondsAfterFinished": 1}}),
        ),
    )
    .await;
    let done = finished(&jobs, "brief").await;
    assert!(conditions(&done).iter().any(|(t, _, _)| t == "Complete"));
    eventually(10, "the finished job to go", || async {
        jobs.get_opt("brief").await.ok()?.is_none().then_some(())
    })
    .await;
    c.server.shutdown().await;
}

async fn running_job(c: &Cluster, name: &str) -> (Api<Job>, Api<Pod>, String) {
    let (jobs, pods) = c.apis();
    create_job(
        &jobs,
        job(
            name,
            "trap 'sleep 0.5; exit 0' TERM; echo trapped; sleep 30 & wait",
            json!({}),
        ),
    )
    .await;
    let pod = eventually(10, "a running pod", || async {
        let list = pods_of(&pods, name).await;
        let pod = list.first()?;
        (pod.status.as_ref()?.phase.as_deref() == Some("Running"))
            .then(|| pod.metadata.name.clone())?
    })
    .await;
    trapped(&pods, &pod).await;
    (jobs, pods, pod)
}

/// Waits until a pod's shell has set its TERM trap (it prints `trapped`): `Running` only
/// says the process started, and a TERM before the trap ends the pod at once instead of
/// after its grace.
async fn trapped(pods: &Api<Pod>, name: &str) {
    eventually(10, "the TERM trap", || async {
        let log = pods.logs(name, &LogParams::default()).await.ok()?;
        log.contains("trapped").then_some(())
    })
    .await;
}

#[tokio::test]
async fn deletes_propagate_to_dependents() {
    let c = cluster().await;

    // Background: the Job goes now, its pod soon after.
    let (jobs, pods, pod) = running_job(&c, "bg").await;
    jobs.delete("bg", &DeleteParams::background())
        .await
        .expect("delete");
    assert!(jobs.get_opt("bg").await.expect("get").is_none());
    eventually(10, "the pod to go", || async {
        pods.get_opt(&pod).await.ok()?.is_none().then_some(())
    })
    .await;

    // Foreground: the Job waits, with a finalizer, until its pod is gone.
    let (jobs, pods, pod) = running_job(&c, "fg").await;
    let answer = jobs
        .delete("fg", &DeleteParams::foreground())
        .await
        .expect("delete");
    assert!(answer.is_left(), "{answer:?}");
    let held = jobs.get("fg").await.expect("still there");
    assert!(held.metadata.deletion_timestamp.is_some());
    assert!(
        held.metadata
            .finalizers
            .unwrap_or_default()
            .contains(&"foregroundDeletion".to_string())
    );
    eventually(10, "the job and its pod to go", || async {
        let job_gone = jobs.get_opt("fg").await.ok()?.is_none();
        let pod_gone = pods.get_opt(&pod).await.ok()?.is_none();
        if job_gone {
            assert!(pod_gone, "the job went before its pod");
        }
        job_gone.then_some(())
    })
    .await;

    // No policy: batch/v1 Jobs orphan their pods, as the real server does.
    let (jobs, pods, pod) = running_job(&c, "orphaner").await;
    jobs.delete("orphaner", &DeleteParams::default())
        .await
        .expect("delete");
    eventually(10, "the job to go", || async {
        jobs.get_opt("orphaner").await.ok()?.is_none().then_some(())
    })
    .await;
    let kept = eventually(10, "the pod to be orphaned", || async {
        let p = pods.get(&pod).await.ok()?;
        p.metadata
            .owner_references
            .as_ref()
            .is_none_or(|o| o.is_empty())
            .then_some(p)
    })
    .await;
    assert!(kept.metadata.deletion_timestamp.is_none());
    eventually(5, "the tracking finalizer to go", || async {
        let p = pods.get(&pod).await.ok()?;
        p.metadata
            .finalizers
            .as_ref()
            .is_none_or(|f| f.is_empty())
            .then_some(())
    })
    .await;

    // Objects whose owner does not exist are collected.
    let maps: Api<ConfigMap> = Api::namespaced(c.client.clone(), "default");
    let owner = maps
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": "owner"}})).expect("cm"),
        )
        .await
        .expect("owner");
    let owned = |name: &str, uid: &str| -> ConfigMap {
        serde_json::from_value(json!({"metadata": {"name": name, "ownerReferences": [
            {"apiVersion": "v1", "kind": "ConfigMap", "name": "owner", "uid": uid}
        ]}}))
        .expect("cm")
    };
    let uid = owner.metadata.uid.clone().expect("uid");
    maps.create(&PostParams::default(), &owned("child", &uid))
        .await
        .expect("child");
    maps.create(
        &PostParams::default(),
        &owned("stray", "00000000-0000-0000-0000-000000000000"),
    )
    .await
    .expect("stray");
    eventually(5, "the stray to be collected", || async {
        maps.get_opt("stray").await.ok()?.is_none().then_some(())
    })
    .await;
    assert!(maps.get_opt("child").await.expect("get").is_some());
    maps.delete("owner", &DeleteParams::default())
        .await
        .expect("delete");
    eventually(5, "the child to be collected", || async {
        maps.get_opt("child").await.ok()?.is_none().then_some(())
    })
    .await;
    c.server.shutdown().await;
}

#[tokio::test]
async fn deleting_a_namespace_terminates_it_first() {
    let c = cluster().await;
    let namespaces: Api<Namespace> = Api::all(c.client.clone());
    namespaces
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": "doomed"}})).expect("ns"),
        )
        .await
        .expect("namespace");
    let pods: Api<Pod> = Api::namespaced(c.client.clone(), "doomed");
    let sleeper = |name: &str| -> Pod {
        serde_json::from_value(json!({"metadata": {"name": name}, "spec": {
            "terminationGracePeriodSeconds": 5,
            "containers": [{"name": "main", "image": "busybox", "command": ["sh", "-c", "trap 'sleep 1; exit 0' TERM; echo trapped; sleep 30 & wait"]}]}}))
        .expect("pod")
    };
    pods.create(&PostParams::default(), &sleeper("sleeper"))
        .await
        .expect("pod");
    trapped(&pods, "sleeper").await;
    namespaces
        .delete("doomed", &DeleteParams::default())
        .await
        .expect("delete");
    let ns = namespaces.get("doomed").await.expect("still there");
    assert_eq!(
        ns.status.and_then(|s| s.phase).as_deref(),
        Some("Terminating")
    );
    match pods.create(&PostParams::default(), &sleeper("late")).await {
        Err(kube::Error::Api(status)) => {
            assert_eq!((status.code, status.reason.as_str()), (403, "Forbidden"));
            assert_eq!(
                status.message,
                "pods \"late\" is forbidden: unable to create new content in namespace doomed because it is being terminated"
            );
        }
        other => panic!("expected 403, got {other:?}"),
    }
    eventually(10, "the namespace to go", || async {
        namespaces
            .get_opt("doomed")
            .await
            .ok()?
            .is_none()
            .then_some(())
    })
    .await;
    c.server.shutdown().await;
}

#[tokio::test]
async fn shutdown_kills_every_process() {
    let c = cluster().await;
    let host = temp_dir("shutdown");
    let pods: Api<Pod> = Api::namespaced(c.client.clone(), "default");
    let pod: Pod = serde_json::from_value(json!({"metadata": {"name": "forever"}, "spec": {
        "volumes": [{"name": "data", "hostPath": {"path": host.display().to_string()}}],
        "containers": [{"name": "main", "image": "busybox",
            "command": ["sh", "-c", "sleep 60 & echo $$! > /data/pid; wait"],
            "volumeMounts": [{"name": "data", "mountPath": "/data"}]}]}}))
    .expect("pod");
    pods.create(&PostParams::default(), &pod)
        .await
        .expect("create");
    let pid = eventually(10, "the pid file", || async {
        std::fs::read_to_string(host.join("pid"))
            .ok()
            .filter(|p| p.ends_with('\n'))
    })
    .await;
    assert!(alive(&pid), "{pid}");
    c.server.shutdown().await;
    eventually(5, "the grandchild to die", || async {
        (!alive(&pid)).then_some(())
    })
    .await;
    let _ = std::fs::remove_dir_all(host);
}

#[tokio::test]
async fn requests_are_audited_and_faults_injected() {
    let c = cluster_with(charon_apiserver::Config::default().api_only()).await;
    let maps: Api<ConfigMap> = Api::namespaced(c.client.clone(), "default");
    maps.list(&ListParams::default()).await.expect("list");
    let seen = c.server.requests();
    assert!(
        seen.iter().any(|r| r.verb == "list"
            && r.resource == "configmaps"
            && r.namespace == "default"
            && r.api_group.is_empty()),
        "{seen:?}"
    );

    c.server.set_error_rate("list", 1.0, 500);
    match maps.list(&ListParams::default()).await {
        Err(kube::Error::Api(status)) => {
            assert_eq!(
                (status.code, status.reason.as_str()),
                (500, "InternalError")
            )
        }
        other => panic!("expected 500, got {other:?}"),
    }
    c.server.set_error_rate("list", 0.0, 500);
    // A fault can be aimed at one resource: other resources' lists go through.
    c.server.set_error_rate("list configmaps", 1.0, 500);
    assert!(maps.list(&ListParams::default()).await.is_err());
    Api::<Secret>::namespaced(c.client.clone(), "default")
        .list(&ListParams::default())
        .await
        .expect("secrets are listed while configmaps fail");
    c.server.set_error_rate("list configmaps", 0.0, 500);
    maps.list(&ListParams::default()).await.expect("list again");
    // Throttling comes with Retry-After (checked over plain HTTP: clients retry it).
    c.server.set_error_rate("*", 1.0, 429);
    let raw = raw_get(
        c.server.address(),
        "/api/v1/namespaces/default/configmaps",
        None,
        Duration::from_millis(500),
    )
    .await;
    assert!(raw.starts_with("HTTP/1.1 429"), "{raw}");
    assert!(raw.to_lowercase().contains("retry-after: 1"), "{raw}");
    assert!(raw.contains("\"reason\":\"TooManyRequests\""), "{raw}");
    c.server.clear_faults();
    maps.list(&ListParams::default()).await.expect("list again");

    // Watches can be cut, and made to start with 410 Gone.
    c.server.expire_next_watches(1);
    let raw = raw_get(
        c.server.address(),
        "/api/v1/namespaces/default/configmaps?watch=true&resourceVersion=1",
        None,
        Duration::from_millis(500),
    )
    .await;
    assert!(raw.contains("\"code\":410"), "{raw}");

    c.server.pause();
    let held = tokio::spawn({
        let maps = maps.clone();
        async move {
            maps.list(&ListParams::default())
                .await
                .map(|l| l.items.len())
        }
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(!held.is_finished());
    c.server.resume();
    assert_eq!(held.await.expect("join").expect("list"), 0);
    c.server.shutdown().await;
}

/// The template's finalizers reach the pods, beside the tracking one, as the real
/// controller's `GetPodFromTemplate` copies them; such a pod outlives its deleted Job, and
/// its log with it, until the finalizer is removed.
#[tokio::test]
async fn template_finalizers_hold_a_pod_and_its_log_after_the_job_goes() {
    let c = cluster().await;
    let (jobs, pods) = c.apis();
    create_job(
        &jobs,
        job(
            "held",
            "echo kept",
            json!({"spec": {"template": {"metadata": {"finalizers": ["example.com/hold"]}}}}),
        ),
    )
    .await;
    finished(&jobs, "held").await;
    let pod = pods_of(&pods, "held").await.remove(0);
    let name = pod.metadata.name.clone().expect("name");
    assert!(
        pod.metadata
            .finalizers
            .clone()
            .unwrap_or_default()
            .contains(&"example.com/hold".to_string()),
        "{:?}",
        pod.metadata.finalizers
    );
    jobs.delete("held", &kube::api::DeleteParams::background())
        .await
        .expect("delete job");
    let deleting = eventually(15, "the pod to be marked deleted", || async {
        let p = pods.get(&name).await.ok()?;
        p.metadata.deletion_timestamp.is_some().then_some(p)
    })
    .await;
    assert_eq!(
        deleting.metadata.finalizers,
        Some(vec!["example.com/hold".to_string()]),
        "the tracking finalizer is gone, the template's stays"
    );
    assert_eq!(
        pods.logs(&name, &LogParams::default()).await.expect("log"),
        "kept\n"
    );
    let patch = json!([{"op": "remove", "path": "/metadata/finalizers/0"}]);
    pods.patch(
        &name,
        &kube::api::PatchParams::default(),
        &kube::api::Patch::Json::<()>(serde_json::from_value(patch).expect("patch")),
    )
    .await
    .expect("remove the finalizer");
    eventually(15, "the pod to be gone", || async {
        pods.get_opt(&name).await.ok()?.is_none().then_some(())
    })
    .await;
    c.server.shutdown().await;
}
