//! The test bed shared by the end-to-end tests: the embedded cluster (whose simulated
//! kubelet runs Jobs as local processes), Charon's CRDs, and the operator with a clock that
//! can be moved forward.
#![allow(dead_code)]

pub mod cli;
pub mod process;
pub mod s3;
pub mod ui;

use std::sync::Arc;
use std::time::Duration as StdDuration;

use charon::controller::{EventLevel, Metrics, ShiftedClock};
use charon::operator::{self, Settings};
use charon_core::resources::{InstanceState, Workflow, WorkflowInstance, WorkflowInstanceStatus};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{ListParams, LogParams, PostParams};
use kube::{Api, Client, ResourceExt};
use serde_json::json;
use tokio::sync::watch;
use tokio::task::JoinHandle;

pub const NS: &str = "default";

pub struct Cluster {
    pub server: Option<charon_apiserver::RunningServer>,
    pub client: Client,
    pub clock: Arc<ShiftedClock>,
    /// Which Events operators started from now on write.
    pub events: EventLevel,
    /// The pod policy operators started from now on enforce.
    pub policy: charon_core::validate::Policy,
    /// The log store operators started from now on archive into.
    pub log_store: Option<Arc<charon::logstore::LogStore>>,
    /// The metrics of the operator `start_operator` runs.
    pub metrics: Arc<Metrics>,
    operator: Option<(watch::Sender<bool>, JoinHandle<anyhow::Result<()>>)>,
}

impl Cluster {
    pub async fn start() -> Cluster {
        let mut cluster = Cluster::without_operator().await;
        cluster.start_operator();
        cluster
    }

    /// The cluster with the CRDs, and no operator yet.
    pub async fn without_operator() -> Cluster {
        Cluster::with_config(charon_apiserver::Config::default()).await
    }

    /// The cluster with the CRDs and the operator, the server configured by `config`.
    pub async fn start_with(config: charon_apiserver::Config) -> Cluster {
        let mut cluster = Cluster::with_config(config).await;
        cluster.start_operator();
        cluster
    }

    async fn with_config(config: charon_apiserver::Config) -> Cluster {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(
                tracing_subscriber::EnvFilter::try_from_default_env()
                    .unwrap_or_else(|_| "charon=warn,kube_runtime=warn".into()),
            )
            .with_test_writer()
            .try_init();
        let server = charon_apiserver::ApiServer::start(config)
            .await
            .expect("server starts");
        let client = Client::try_from(kube::Config::new(server.url().parse().expect("url")))
            .expect("client");
        let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
        for crd in charon::crd::crds() {
            crds.create(&PostParams::default(), &crd)
                .await
                .expect("CRD installs");
        }
        Cluster {
            server: Some(server),
            client,
            clock: Arc::new(ShiftedClock::default()),
            events: EventLevel::All,
            policy: charon_core::validate::Policy::default(),
            log_store: None,
            metrics: Arc::new(Metrics::default()),
            operator: None,
        }
    }

    /// Replaces the server by a new, empty one on the same address, as a restarted
    /// `charon dev` would be, and installs the CRDs again; the operator keeps running and
    /// its watches resume against the new server.
    pub async fn restart_server_empty(&mut self) {
        let old = self.server.take().expect("server runs");
        let address = old.address();
        old.shutdown().await;
        let server = charon_apiserver::ApiServer::start(charon_apiserver::Config {
            address,
            ..charon_apiserver::Config::default()
        })
        .await
        .expect("server restarts on its address");
        let crds: Api<CustomResourceDefinition> = Api::all(self.client.clone());
        for crd in charon::crd::crds() {
            crds.create(&PostParams::default(), &crd)
                .await
                .expect("CRD installs");
        }
        self.server = Some(server);
    }

    pub fn start_operator(&mut self) {
        let metrics = self.metrics.clone();
        let (stop, task) = self.replica_with("test", operator::OPERATOR_AGENT, None, metrics);
        self.operator = Some((stop, task));
    }

    /// Starts an operator replica sending `agent` as its User-Agent; the caller owns it.
    pub fn replica(
        &self,
        identity: &str,
        agent: &str,
        lease: Option<charon::controller::leader::LeaseConfig>,
    ) -> (watch::Sender<bool>, JoinHandle<anyhow::Result<()>>) {
        self.replica_with(identity, agent, lease, Arc::new(Metrics::default()))
    }

    /// [`Cluster::replica`] recording into `metrics`.
    pub fn replica_with(
        &self,
        identity: &str,
        agent: &str,
        lease: Option<charon::controller::leader::LeaseConfig>,
        metrics: Arc<Metrics>,
    ) -> (watch::Sender<bool>, JoinHandle<anyhow::Result<()>>) {
        let settings = Settings {
            namespaces: Vec::new(),
            lease,
            clock: self.clock.clone(),
            metrics,
            identity: identity.into(),
            events: self.events,
            shutdown_timeout: operator::SHUTDOWN_TIMEOUT,
            lease_client: None,
            policy: self.policy,
            log_store: self.log_store.clone(),
            launcher: launcher(),
            shards: 1,
        };
        let (stop, stopped) = watch::channel(false);
        let shutdown = async move {
            let mut stopped = stopped;
            let _ = stopped.wait_for(|s| *s).await;
        };
        let server = self.server.as_ref().expect("server runs");
        let client = operator::client_with_agent(
            kube::Config::new(server.url().parse().expect("url")),
            agent,
        )
        .expect("operator client");
        (
            stop,
            tokio::spawn(operator::run(client, settings, shutdown)),
        )
    }

    /// Kills the operator abruptly (no graceful shutdown), as a crash would.
    pub async fn kill_operator(&mut self) {
        if let Some((_, task)) = self.operator.take() {
            task.abort();
            let _ = task.await;
        }
    }

    pub async fn stop(mut self) {
        if let Some((stop, task)) = self.operator.take() {
            let _ = stop.send(true);
            let _ = tokio::time::timeout(StdDuration::from_secs(5), task).await;
        }
        if let Some(server) = self.server.take() {
            server.shutdown().await;
        }
    }

    pub fn workflows(&self) -> Api<Workflow> {
        Api::namespaced(self.client.clone(), NS)
    }

    pub fn instances(&self) -> Api<WorkflowInstance> {
        Api::namespaced(self.client.clone(), NS)
    }

    pub fn jobs(&self) -> Api<Job> {
        Api::namespaced(self.client.clone(), NS)
    }

    /// One instance as stored, or the error as text (for [`Cluster::eventually`]).
    pub async fn instance(&self, name: &str) -> Result<WorkflowInstance, String> {
        self.instances().get(name).await.map_err(|e| e.to_string())
    }

    /// One workflow as stored, or the error as text (for [`Cluster::eventually`]).
    pub async fn workflow(&self, name: &str) -> Result<Workflow, String> {
        self.workflows().get(name).await.map_err(|e| e.to_string())
    }

    pub async fn apply_workflow(&self, name: &str, spec: serde_json::Value) -> Workflow {
        let workflow: Workflow = serde_json::from_value(json!({
            "apiVersion": "charon.dev/v1alpha1",
            "kind": "Workflow",
            "metadata": {"name": name},
            "spec": spec,
        }))
        .expect("workflow");
        self.workflows()
            .create(&PostParams::default(), &workflow)
            .await
            .expect("workflow created")
    }

    /// An hourly workflow running `sh -c script` that is suspended, so only the test's own
    /// triggers and backfills run it (an hour starting mid-test would otherwise add an
    /// instance).
    pub async fn apply_suspended_hourly(&self, name: &str, script: &str) -> Workflow {
        self.apply_workflow(name, suspended_hourly(script)).await
    }

    pub async fn instances_of(&self, workflow: &str) -> Vec<WorkflowInstance> {
        let mut list: Vec<WorkflowInstance> = self
            .instances()
            .list(&ListParams::default())
            .await
            .expect("list instances")
            .items
            .into_iter()
            .filter(|i| i.spec.workflow == workflow)
            .collect();
        list.sort_by_key(|i| i.spec.logical_time);
        list
    }

    pub async fn jobs_of(&self, instance: &str) -> Vec<Job> {
        self.jobs()
            .list(&ListParams::default().labels(&format!("charon.dev/instance={instance}")))
            .await
            .expect("list jobs")
            .items
    }

    pub async fn log_of(&self, job: &str) -> String {
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), NS);
        let list = pods
            .list(&ListParams::default().labels(&format!("job-name={job}")))
            .await
            .expect("pods");
        let pod = list.items.first().expect("a pod of the job");
        pods.logs(&pod.name_any(), &LogParams::default())
            .await
            .expect("log")
    }

    /// Polls until `check` returns Some, or panics with the last state after `timeout`.
    pub async fn eventually<T, F, Fut>(&self, what: &str, timeout: StdDuration, mut check: F) -> T
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, String>>,
    {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            match check().await {
                Ok(value) => return value,
                Err(state) if tokio::time::Instant::now() >= deadline => {
                    panic!("timed out waiting for {what}; last seen: {state}")
                }
                Err(_) => tokio::time::sleep(StdDuration::from_millis(100)).await,
            }
        }
    }

    /// Waits until `workflow` has a status with its next trigger: its first reconcile is
    /// done, so what a test does next is not part of it.
    pub async fn planned(&self, workflow: &str, timeout: StdDuration) {
        self.eventually("the workflow's nextTrigger", timeout, || async {
            let wf = self.workflow(workflow).await?;
            wf.status
                .and_then(|s| s.next_trigger)
                .map(|_| ())
                .ok_or_else(|| "no nextTrigger yet".to_string())
        })
        .await;
    }

    /// Polls the status of `workflow`'s oldest instance until `ready` accepts it.
    pub async fn first_status_where(
        &self,
        workflow: &str,
        what: &str,
        timeout: StdDuration,
        ready: impl Fn(&WorkflowInstanceStatus) -> bool,
    ) -> WorkflowInstanceStatus {
        self.eventually(what, timeout, || async {
            let list = self.instances_of(workflow).await;
            let s = list
                .first()
                .and_then(|i| i.status.clone())
                .unwrap_or_default();
            if ready(&s) {
                Ok(s)
            } else {
                Err(format!("{s:?}"))
            }
        })
        .await
    }

    pub async fn wait_states(
        &self,
        workflow: &str,
        count: usize,
        states: &[InstanceState],
        timeout: StdDuration,
    ) -> Vec<WorkflowInstance> {
        self.eventually(
            &format!("{count} instances of {workflow} in {states:?}"),
            timeout,
            || async {
                let list = self.instances_of(workflow).await;
                let summary: Vec<String> = list
                    .iter()
                    .map(|i| {
                        let s = i.status.clone().unwrap_or_default();
                        format!("{}={}({})", i.spec.parameter, s.state.as_str(), s.message)
                    })
                    .collect();
                // The oldest `count`: a test that moves the clock past another top of the
                // hour (it depends on the minute it starts at) may see one more partition.
                let done = list.len() >= count
                    && list.iter().take(count).all(|i| {
                        states.contains(&i.status.as_ref().map(|s| s.state).unwrap_or_default())
                    });
                if done {
                    Ok(list)
                } else {
                    Err(summary.join(", "))
                }
            },
        )
        .await
    }
}

impl Cluster {
    /// Asserts that each of `instances` is a different partition that ran exactly once: one
    /// Job, one attempt, one execution.
    pub async fn assert_each_ran_once(&self, instances: &[WorkflowInstance]) {
        let parameters: std::collections::BTreeSet<&str> = instances
            .iter()
            .map(|i| i.spec.parameter.as_str())
            .collect();
        assert_eq!(
            parameters.len(),
            instances.len(),
            "one instance per partition"
        );
        for instance in instances {
            let name = instance.metadata.name.clone().unwrap_or_default();
            let jobs = self.jobs_of(&name).await;
            assert_eq!(jobs.len(), 1, "{name} has {} jobs", jobs.len());
            let status = instance.status.clone().unwrap_or_default();
            assert_eq!(
                (status.tries, status.execution),
                (1, 1),
                "{name}: one attempt, one execution"
            );
        }
    }
}

/// The spec of [`Cluster::apply_suspended_hourly`], for a test that adds to it.
pub fn suspended_hourly(script: &str) -> serde_json::Value {
    json!({
        "schedule": "@hourly",
        "suspend": true,
        "template": {"image": "busybox", "command": ["sh", "-c", script]},
    })
}

pub fn state(instance: &WorkflowInstance) -> InstanceState {
    instance
        .status
        .as_ref()
        .map(|s| s.state)
        .unwrap_or_default()
}

pub const LONG: StdDuration = StdDuration::from_secs(60);

/// Requests made between two snapshots of the server's request counts that `keep` selects.
pub fn requests_between(
    before: &[charon_apiserver::Request],
    after: &[charon_apiserver::Request],
    keep: impl Fn(&charon_apiserver::Request) -> bool,
) -> u64 {
    let sum = |requests: &[charon_apiserver::Request]| -> u64 {
        requests.iter().filter(|r| keep(r)).map(|r| r.count).sum()
    };
    sum(after) - sum(before)
}

/// Whether a request changes something.
pub fn is_write(request: &charon_apiserver::Request) -> bool {
    matches!(
        request.verb.as_str(),
        "create" | "update" | "patch" | "delete" | "deletecollection"
    )
}

/// Whether a request writes the status of a `resource`.
pub fn is_status_write(request: &charon_apiserver::Request, resource: &str) -> bool {
    request.verb == "update" && request.resource == resource && request.subresource == "status"
}

/// The most attempts that held a slot at once, from the instances' recorded history: an
/// attempt holds one from its `Submitting` transition to the transition that ends it. Taken
/// from the record rather than by polling, so runs shorter than a poll still count.
pub fn most_active_at_once(instances: &[WorkflowInstance]) -> usize {
    let mut edges: Vec<(chrono::DateTime<chrono::Utc>, i32)> = Vec::new();
    for instance in instances {
        let history = instance
            .status
            .as_ref()
            .map(|s| s.history.clone())
            .unwrap_or_default();
        let mut started = None;
        for entry in history {
            if entry.to == InstanceState::Submitting {
                started = Some(entry.at);
            } else if !entry.to.is_active()
                && let Some(at) = started.take()
            {
                edges.push((at, 1));
                edges.push((entry.at, -1));
            }
        }
    }
    // At the same instant a slot is freed before it is taken.
    edges.sort();
    let (mut now, mut most) = (0i32, 0i32);
    for (_, delta) in edges {
        now += delta;
        most = most.max(now);
    }
    most as usize
}

/// The launcher of pipelines and arrays: the `charon-launcher` cargo built for these tests,
/// run by the embedded kubelet as a local process.
pub fn launcher() -> charon::controller::LauncherConfig {
    charon::controller::LauncherConfig {
        image: "charon-launcher".to_string(),
        command: env!("CARGO_BIN_EXE_charon-launcher").to_string(),
    }
}

/// The Job of an attempt a stopped operator created but never recorded, rendered as the
/// operator renders it; `owner` replaces the instance as its owner when given.
pub async fn unrecorded_job(
    cluster: &Cluster,
    workflow: &charon_core::resources::Workflow,
    instance: &charon_core::resources::WorkflowInstance,
    owner: Option<k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference>,
) -> k8s_openapi::api::batch::v1::Job {
    let uid = instance.uid().expect("uid");
    let name = instance.name_any();
    let snapshot = charon_core::job::snapshot(
        &workflow.spec.template,
        &instance.spec.parameter,
        workflow.metadata.generation,
    );
    let execution = charon_core::job::Execution::of(workflow, instance, (NS, &name, &uid), 1, 0);
    let mut job =
        charon_core::job::render(&workflow.spec.template, &snapshot, &execution).expect("renders");
    if let Some(owner) = owner {
        job.metadata.owner_references = Some(vec![owner]);
    }
    cluster
        .jobs()
        .create(&Default::default(), &job)
        .await
        .expect("create the Job")
}

/// Triggers `partition` of `workflow` ad hoc straight through the API (as the CLI does), with
/// no operator needed, and returns the instance created.
pub async fn trigger_adhoc(
    cluster: &Cluster,
    workflow: &Workflow,
    partition: &str,
) -> WorkflowInstance {
    let triggered = charon::controller::triggers::adhoc(
        &cluster.client,
        workflow,
        charon_core::validate::Policy::default(),
        partition,
        Vec::new(),
        false,
        chrono::Utc::now(),
    )
    .await
    .expect("trigger");
    cluster
        .instances()
        .get(&triggered.instance)
        .await
        .expect("instance")
}
