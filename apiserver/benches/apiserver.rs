//! Throughput and footprint of the embedded server, over HTTP with kube-rs as clients use
//! it: create rates for Jobs and custom objects, watch fan-out latency, and resident memory
//! with many objects stored; then, with the Job controller, garbage collector and kubelet
//! running, how long a burst of Jobs takes to complete and how much CPU the server burns
//! once everything has finished and nobody is asking anything; and how long listing many
//! custom objects of realistic size takes, paged (as kube-rs's watcher and kubectl page) and
//! not, and as the Table `kubectl get` asks for.
//!
//! `cargo bench -p charon-apiserver --bench apiserver`. Knobs (environment):
//! - `BENCH_OBJECTS`: stored objects for the memory figure (100000);
//! - `BENCH_BURST`: Jobs running `true` in the timed burst (1000);
//! - `BENCH_IDLE_JOBS`: finished Jobs (with their pods) stored for the idle figure, the
//!   burst's included (2000);
//! - `BENCH_SUSPENDED`: suspended Jobs stored beside them (2000);
//! - `BENCH_IDLE_SECS`: length of the idle window (10);
//! - `BENCH_LIST_OBJECTS`: custom objects (a few KB each) stored for the list figures
//!   (10000);
//! - `BENCH_SECTIONS`: `api`, `jobs`, `list`, comma-separated (all three).
//!
//! The API figures come from a server without controllers or kubelet; the RSS figure is the
//! whole process, clients included. The idle CPU figure is the whole process too (user +
//! system time from `getrusage`), but the clients are silent during the window.

use std::time::{Duration, Instant};

use futures::{StreamExt, TryStreamExt};
use std::collections::HashSet;

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DynamicObject, ListParams, PostParams, WatchEvent, WatchParams};
use kube::core::{ApiResource, GroupVersionKind};
use kube::{Client, Config};
use serde_json::json;

const CONCURRENCY: usize = 32;

fn rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

/// Runs `count` creates with `CONCURRENCY` in flight; returns creates per second.
async fn creates<F, Fut>(count: usize, make: F) -> f64
where
    F: Fn(usize) -> Fut,
    Fut: std::future::Future<Output = Result<(), kube::Error>>,
{
    let start = Instant::now();
    let results: Vec<Result<(), kube::Error>> = futures::stream::iter(0..count)
        .map(make)
        .buffer_unordered(CONCURRENCY)
        .collect()
        .await;
    let failed = results.iter().filter(|r| r.is_err()).count();
    if failed > 0 {
        eprintln!("{failed} creates failed");
    }
    count as f64 / start.elapsed().as_secs_f64()
}

/// A numeric knob from the environment.
fn knob(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// CPU time (user + system) this process has used so far.
fn cpu_time() -> Duration {
    // SAFETY: getrusage only writes into the struct it is given, which is zeroed and ours.
    let usage = unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_SELF, &mut usage);
        usage
    };
    let tv = |t: libc::timeval| {
        Duration::from_secs(u64::try_from(t.tv_sec).unwrap_or(0))
            + Duration::from_micros(u64::try_from(t.tv_usec).unwrap_or(0))
    };
    tv(usage.ru_utime) + tv(usage.ru_stime)
}

#[tokio::main(flavor = "multi_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let sections = std::env::var("BENCH_SECTIONS").unwrap_or_else(|_| "api,jobs,list".into());
    let sections: HashSet<&str> = sections.split(',').map(str::trim).collect();
    if sections.contains("api") {
        api().await?;
    }
    if sections.contains("jobs") {
        jobs().await?;
    }
    if sections.contains("list") {
        lists().await?;
    }
    Ok(())
}

/// The API alone: create rates, watch fan-out and memory.
async fn api() -> Result<(), Box<dyn std::error::Error>> {
    let objects = knob("BENCH_OBJECTS", 100_000);
    let server =
        charon_apiserver::ApiServer::start(charon_apiserver::Config::default().api_only()).await?;
    let client = Client::try_from(Config::new(server.url().parse()?))?;

    // Jobs.
    let jobs: Api<Job> = Api::namespaced(client.clone(), "default");
    let rate = creates(2_000, |i| {
        let jobs = jobs.clone();
        async move {
            let job: Job = serde_json::from_value(json!({
                "metadata": {"name": format!("job-{i}")},
                "spec": {"template": {"spec": {"restartPolicy": "Never",
                    "containers": [{"name": "main", "image": "busybox", "command": ["true"]}]}}},
            }))
            .map_err(kube::Error::SerdeError)?;
            jobs.create(&PostParams::default(), &job).await.map(|_| ())
        }
    })
    .await;
    println!("job creates:           {rate:>10.0} /s  (target >= 2000)");

    // Custom objects.
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    let crd: CustomResourceDefinition = serde_json::from_value(json!({
        "metadata": {"name": "widgets.bench.test"},
        "spec": {"group": "bench.test", "scope": "Namespaced",
            "names": {"plural": "widgets", "singular": "widget", "kind": "Widget"},
            "versions": [{"name": "v1", "served": true, "storage": true,
                "schema": {"openAPIV3Schema": {"type": "object", "properties": {
                    "spec": {"type": "object", "properties": {"size": {"type": "integer"}}}}}}}]},
    }))?;
    crds.create(&PostParams::default(), &crd).await?;
    let resource = ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("bench.test", "v1", "Widget"),
        "widgets",
    );
    let widgets: Api<DynamicObject> = Api::namespaced_with(client.clone(), "default", &resource);
    let rate = creates(2_000, |i| {
        let widgets = widgets.clone();
        let resource = resource.clone();
        async move {
            let mut obj = DynamicObject::new(&format!("w-{i}"), &resource);
            obj.data = json!({"spec": {"size": i}});
            widgets
                .create(&PostParams::default(), &obj)
                .await
                .map(|_| ())
        }
    })
    .await;
    println!("custom object creates: {rate:>10.0} /s  (target >= 2000)");

    // Watch fan-out: many watchers, one change, time until all have seen it.
    let maps: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    let watchers = 50;
    let (seen_tx, mut seen_rx) = tokio::sync::mpsc::unbounded_channel::<(String, Instant)>();
    let mut tasks = Vec::new();
    for _ in 0..watchers {
        let maps = maps.clone();
        let seen_tx = seen_tx.clone();
        let mut stream = maps.watch(&WatchParams::default(), "0").await?.boxed();
        tasks.push(tokio::spawn(async move {
            while let Ok(Some(event)) = stream.try_next().await {
                if let WatchEvent::Added(cm) = event {
                    let _ = seen_tx.send((cm.metadata.name.unwrap_or_default(), Instant::now()));
                }
            }
        }));
    }
    let mut latencies = Vec::new();
    for round in 0..20 {
        let name = format!("fanout-{round}");
        let cm: ConfigMap = serde_json::from_value(json!({"metadata": {"name": name}}))?;
        let start = Instant::now();
        maps.create(&PostParams::default(), &cm).await?;
        let mut got = 0;
        let mut last = start;
        while got < watchers {
            match tokio::time::timeout(Duration::from_secs(5), seen_rx.recv()).await {
                Ok(Some((n, at))) if n == name => {
                    got += 1;
                    last = last.max(at);
                }
                Ok(Some(_)) => {}
                _ => break,
            }
        }
        latencies.push(last - start);
    }
    latencies.sort();
    println!(
        "watch fan-out ({watchers} watchers): p50 {:?}, max {:?}",
        latencies[latencies.len() / 2],
        latencies[latencies.len() - 1]
    );

    for task in tasks {
        task.abort();
    }

    // Memory with many objects stored.
    let before = rss_mib();
    let rate = creates(objects, |i| {
        let maps = maps.clone();
        async move {
            let cm: ConfigMap = serde_json::from_value(json!({
                "metadata": {"name": format!("cm-{i}"), "labels": {"app": "bench", "shard": (i % 16).to_string()}},
                "data": {"key": format!("value-{i}")},
            }))
            .map_err(kube::Error::SerdeError)?;
            maps.create(&PostParams::default(), &cm).await.map(|_| ())
        }
    })
    .await;
    println!("configmap creates:     {rate:>10.0} /s");
    println!(
        "RSS with {} objects stored: {:.0} MiB (was {before:.0} MiB; target < 1024)",
        objects + 4_000,
        rss_mib()
    );
    server.shutdown().await;
    Ok(())
}

/// A Job named `name` running `true` once, suspended or not.
fn true_job(name: &str, suspend: bool) -> Result<Job, serde_json::Error> {
    serde_json::from_value(json!({
        "metadata": {"name": name, "labels": {"bench": "jobs"}},
        "spec": {"suspend": suspend, "backoffLimit": 0, "template": {"spec": {
            "restartPolicy": "Never",
            "containers": [{"name": "main", "image": "busybox", "command": ["true"]}]}}},
    }))
}

/// Creates `n` Jobs running `true`, named `<prefix>-<i>`, suspended or not.
async fn create_jobs(jobs: &Api<Job>, prefix: &str, n: usize, suspend: bool) {
    creates(n, |i| {
        let jobs = jobs.clone();
        async move {
            let job =
                true_job(&format!("{prefix}-{i}"), suspend).map_err(kube::Error::SerdeError)?;
            jobs.create(&PostParams::default(), &job).await.map(|_| ())
        }
    })
    .await;
}

/// Waits (polling, at most `limit`) until `want` Jobs named `<prefix>…` have completed;
/// returns how many did.
async fn wait_complete(jobs: &Api<Job>, prefix: &str, want: usize, limit: Duration) -> usize {
    let deadline = Instant::now() + limit;
    loop {
        let done = match jobs.list(&ListParams::default().labels("bench=jobs")).await {
            Ok(list) => list
                .items
                .iter()
                .filter(|j| {
                    j.metadata
                        .name
                        .as_deref()
                        .is_some_and(|n| n.starts_with(prefix))
                })
                .filter(|j| {
                    j.status
                        .as_ref()
                        .and_then(|s| s.conditions.as_ref())
                        .is_some_and(|c| {
                            c.iter()
                                .any(|c| c.type_ == "Complete" && c.status == "True")
                        })
                })
                .count(),
            Err(err) => {
                eprintln!("listing jobs: {err}");
                0
            }
        };
        if done >= want || Instant::now() >= deadline {
            return done;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// With controllers and kubelet: a timed burst of Jobs, then the CPU the server uses while
/// idle with many finished Jobs (and their pods, and Events) and suspended Jobs stored.
async fn jobs() -> Result<(), Box<dyn std::error::Error>> {
    let burst = knob("BENCH_BURST", 1_000);
    let finished = knob("BENCH_IDLE_JOBS", 2_000).max(burst);
    let suspended = knob("BENCH_SUSPENDED", 2_000);
    let idle_secs = knob("BENCH_IDLE_SECS", 10);
    let limit = Duration::from_secs(600);
    let server = charon_apiserver::ApiServer::start(charon_apiserver::Config::default()).await?;
    let client = Client::try_from(Config::new(server.url().parse()?))?;
    let jobs: Api<Job> = Api::namespaced(client.clone(), "default");

    let start = Instant::now();
    let cpu_start = cpu_time();
    create_jobs(&jobs, "burst", burst, false).await;
    let done = wait_complete(&jobs, "burst-", burst, limit).await;
    let took = start.elapsed();
    let cpu = cpu_time() - cpu_start;
    println!(
        "burst of {burst} jobs running `true`: {done} complete in {:.1} s ({:.0} jobs/s, {:.1} CPU s)",
        took.as_secs_f64(),
        done as f64 / took.as_secs_f64(),
        cpu.as_secs_f64()
    );

    // More finished Jobs, and suspended ones beside them.
    let more = finished - burst;
    create_jobs(&jobs, "done", more, false).await;
    create_jobs(&jobs, "held", suspended, true).await;
    wait_complete(&jobs, "done-", more, limit).await;
    // Let the last pod statuses, finalizer removals and Events settle.
    tokio::time::sleep(Duration::from_secs(3)).await;

    eprintln!(
        "idle window of {idle_secs} s starts (pid {})",
        std::process::id()
    );
    let wall = Instant::now();
    let cpu_start = cpu_time();
    tokio::time::sleep(Duration::from_secs(u64::try_from(idle_secs).unwrap_or(10))).await;
    let cpu = cpu_time() - cpu_start;
    let wall = wall.elapsed();
    println!(
        "idle CPU with {finished} finished jobs (+ pods) and {suspended} suspended stored: {:.2} CPU s over {:.0} s = {:.1}% of a core  (target ~0)",
        cpu.as_secs_f64(),
        wall.as_secs_f64(),
        100.0 * cpu.as_secs_f64() / wall.as_secs_f64()
    );
    server.shutdown().await;
    Ok(())
}

/// A custom object of realistic size (about 3 KB): a spec and a status with a history.
fn workflow(i: usize) -> serde_json::Value {
    let history: Vec<serde_json::Value> = (0..12)
        .map(|run| {
            json!({"run": run, "partition": format!("2025-01-{:02}", run + 1),
                "phase": if run % 5 == 4 { "Failed" } else { "Succeeded" },
                "startTime": "2025-01-01T00:00:00Z", "completionTime": "2025-01-01T00:05:00Z",
                "attempts": 1 + run % 3, "job": format!("wf-{i}-run-{run}"),
                "message": "the job completed within its deadline"})
        })
        .collect();
    json!({
        "metadata": {"name": format!("wf-{i:05}"),
            "labels": {"app": "bench", "shard": (i % 16).to_string()},
            "annotations": {"bench.test/owner": "team-a", "bench.test/description": "a workflow for the list benchmark"}},
        "spec": {"schedule": "@hourly", "concurrencyPolicy": "Forbid", "backfill": {"from": "2025-01-01", "parallelism": 4},
            "template": {"spec": {"restartPolicy": "Never", "containers": [{"name": "main",
                "image": "registry.example.com/team-a/pipeline:1.2.3",
                "command": ["/bin/run", "--partition", "$(PARTITION)", "--verbose"],
                "resources": {"requests": {"cpu": "500m", "memory": "512Mi"}}}]}}},
        "status": {"phase": "Active", "lastScheduleTime": "2025-01-12T00:00:00Z", "history": history},
    })
}

/// Lists of many custom objects: a full paged relist (limit 500, following continue tokens
/// as kube-rs's watcher does), one unpaged list, and the Table `kubectl get` asks for.
async fn lists() -> Result<(), Box<dyn std::error::Error>> {
    let count = knob("BENCH_LIST_OBJECTS", 10_000);
    let server =
        charon_apiserver::ApiServer::start(charon_apiserver::Config::default().api_only()).await?;
    let client = Client::try_from(Config::new(server.url().parse()?))?;
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    let crd: CustomResourceDefinition = serde_json::from_value(json!({
        "metadata": {"name": "workflows.bench.test"},
        "spec": {"group": "bench.test", "scope": "Namespaced",
            "names": {"plural": "workflows", "singular": "workflow", "kind": "Workflow"},
            "versions": [{"name": "v1", "served": true, "storage": true,
                "additionalPrinterColumns": [
                    {"name": "Schedule", "type": "string", "jsonPath": ".spec.schedule"},
                    {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
                    {"name": "Last", "type": "string", "jsonPath": ".status.history[0].phase"},
                    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"}],
                "schema": {"openAPIV3Schema": {"type": "object", "properties": {
                    "spec": {"type": "object", "x-kubernetes-preserve-unknown-fields": true},
                    "status": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}}}}}]},
    }))?;
    crds.create(&PostParams::default(), &crd).await?;
    let resource = ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("bench.test", "v1", "Workflow"),
        "workflows",
    );
    let workflows: Api<DynamicObject> = Api::namespaced_with(client.clone(), "default", &resource);
    let size = workflow(0).to_string().len();
    creates(count, |i| {
        let workflows = workflows.clone();
        let resource = resource.clone();
        async move {
            let mut obj: DynamicObject =
                serde_json::from_value(workflow(i)).map_err(kube::Error::SerdeError)?;
            obj.types = Some(kube::core::TypeMeta {
                api_version: resource.api_version.clone(),
                kind: resource.kind.clone(),
            });
            workflows
                .create(&PostParams::default(), &obj)
                .await
                .map(|_| ())
        }
    })
    .await;
    println!("list figures with {count} custom objects of ~{size} bytes stored:");

    let rounds = 3;
    let start = Instant::now();
    let mut pages = 0;
    for _ in 0..rounds {
        let mut params = ListParams::default().limit(500);
        let mut seen = 0;
        loop {
            let page = workflows.list(&params).await?;
            pages += 1;
            seen += page.items.len();
            match page.metadata.continue_.filter(|c| !c.is_empty()) {
                Some(token) => params = params.continue_token(&token),
                None => break,
            }
        }
        if seen != count {
            eprintln!("paged list saw {seen} of {count} objects");
        }
    }
    let took = start.elapsed() / rounds;
    println!(
        "  full paged list (limit 500, {} pages): {:>8.1} ms",
        pages / rounds,
        took.as_secs_f64() * 1e3
    );

    let start = Instant::now();
    for _ in 0..rounds {
        let all = workflows.list(&ListParams::default()).await?;
        if all.items.len() != count {
            eprintln!("unpaged list saw {} of {count} objects", all.items.len());
        }
    }
    let took = start.elapsed() / rounds;
    println!(
        "  unpaged list:                          {:>8.1} ms",
        took.as_secs_f64() * 1e3
    );

    // A page of 500 as a Table, as `kubectl get` asks for it.
    let table = |continue_token: Option<&str>| {
        let mut uri = "/apis/bench.test/v1/namespaces/default/workflows?limit=500".to_string();
        if let Some(token) = continue_token {
            uri.push_str(&format!("&continue={token}"));
        }
        axum::http::Request::get(uri)
            .header(
                axum::http::header::ACCEPT,
                "application/json;as=Table;v=v1;g=meta.k8s.io,application/json",
            )
            .body(Vec::new())
    };
    let start = Instant::now();
    for _ in 0..rounds {
        let mut continue_token: Option<String> = None;
        loop {
            let request = table(continue_token.as_deref())?;
            let page: serde_json::Value =
                serde_json::from_str(&client.request_text(request).await?)?;
            continue_token = page
                .pointer("/metadata/continue")
                .and_then(serde_json::Value::as_str)
                .filter(|c| !c.is_empty())
                .map(str::to_string);
            if continue_token.is_none() {
                break;
            }
        }
    }
    let took = start.elapsed() / rounds;
    println!(
        "  paged Table (kubectl get, limit 500):  {:>8.1} ms",
        took.as_secs_f64() * 1e3
    );
    println!("  RSS: {:.0} MiB", rss_mib());
    server.shutdown().await;
    Ok(())
}
