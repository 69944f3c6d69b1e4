//! Throughput and footprint of the embedded server, over HTTP with kube-rs as clients use
//! it: create rates for Jobs and custom objects, watch fan-out latency, and resident memory
//! with many objects stored.
//!
//! `cargo bench -p charon-apiserver --bench apiserver` (set `BENCH_OBJECTS` to change the
//! number of stored objects for the memory figure, 100000 by default). The server runs
//! without controllers or kubelet, so only the API is measured; the RSS figure is the whole
//! process, clients included.

use std::time::{Duration, Instant};

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DynamicObject, PostParams, WatchEvent, WatchParams};
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

#[tokio::main(flavor = "multi_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let objects: usize = std::env::var("BENCH_OBJECTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
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
