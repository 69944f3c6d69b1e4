//! Server-side render time of the web UI: `cargo bench --bench ui`.
//!
//! Fills the UI's caches in memory (no API server: the UI reads only its caches for pages)
//! and times, through the real router, the workflows page with 1,000 workflows (10 instances
//! each), a workflow page whose workflow has 10,000 instances, and the partitions API paging a
//! workflow with 100,000 partitions. Prints p50, p99 and max per case; the target is under
//! 300 ms for both pages.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::Request;
use chrono::{TimeZone, Utc};
use tower::ServiceExt;

use charon::ui::auth::{Authority, Mode};
use charon::ui::cache::Cache;
use charon::ui::{Ui, router};
use charon_core::resources::{
    AttemptOutcomeKind, AttemptRecord, InstanceState, Trigger, TriggerType, Workflow,
    WorkflowInstance, WorkflowInstanceSpec, WorkflowInstanceStatus,
};

const TOKEN: &str = "bench";

fn workflow(name: &str) -> Workflow {
    serde_json::from_value(serde_json::json!({
        "apiVersion": "charon.dev/v1alpha1", "kind": "Workflow",
        "metadata": {"name": name, "namespace": "team", "uid": format!("uid-{name}"), "generation": 1},
        "spec": {"schedule": "@hourly", "template": {"image": "busybox", "command": ["sh", "-c", "echo hi"]}}
    }))
    .expect("a workflow literal")
}

fn instances(workflow: &Workflow, count: u32) -> Vec<WorkflowInstance> {
    let name = workflow.metadata.name.clone().unwrap_or_default();
    let start = Utc
        .with_ymd_and_hms(2020, 1, 1, 0, 0, 0)
        .single()
        .expect("a valid time");
    (0..count)
        .map(|n| {
            let logical = start + chrono::Duration::hours(n.into());
            let parameter = logical.format("%Y-%m-%dT%H").to_string();
            let mut i = WorkflowInstance::new(
                &charon_core::names::instance_name(&name, &parameter),
                WorkflowInstanceSpec {
                    workflow: name.clone(),
                    parameter,
                    logical_time: logical,
                    trigger: Trigger {
                        trigger_type: TriggerType::Natural,
                        id: format!("n{n}"),
                    },
                    halted: false,
                    suspended: false,
                    env: Vec::new(),
                },
            );
            i.metadata.namespace = workflow.metadata.namespace.clone();
            let failed = n % 7 == 0;
            i.status = Some(WorkflowInstanceStatus {
                state: if failed {
                    InstanceState::Error
                } else {
                    InstanceState::Done
                },
                tries: 1,
                attempts: vec![AttemptRecord {
                    execution: 1,
                    job: format!("{name}-{n}-1"),
                    exit_code: Some(if failed { 1 } else { 0 }),
                    outcome: Some(if failed {
                        AttemptOutcomeKind::Failed
                    } else {
                        AttemptOutcomeKind::Succeeded
                    }),
                    ..Default::default()
                }],
                ..Default::default()
            });
            i
        })
        .collect()
}

fn ui(cache: Cache) -> Arc<Ui> {
    // Pages never reach the API server: the client only has to exist.
    let client = kube::Client::try_from(kube::Config::new(
        "http://127.0.0.1:9".parse().expect("url"),
    ))
    .expect("a client");
    Arc::new(Ui {
        cache,
        authority: Authority::new(
            Mode::Local {
                token: TOKEN.into(),
            },
            client.clone(),
        ),
        client,
        store: None,
    })
}

async fn measure(label: &str, ui: &Arc<Ui>, path: &str, rounds: usize) {
    let app = router(ui.clone());
    let mut times = Vec::with_capacity(rounds);
    let mut bytes = 0;
    for _ in 0..rounds {
        let request = Request::get(path)
            .header("Authorization", format!("Bearer {TOKEN}"))
            .body(Body::empty())
            .expect("a request");
        let began = Instant::now();
        let response = app.clone().oneshot(request).await.expect("a response");
        assert!(
            response.status().is_success(),
            "{path}: {}",
            response.status()
        );
        let body = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .expect("body");
        times.push(began.elapsed());
        bytes = body.len();
    }
    times.sort();
    let at = |q: f64| times[((times.len() - 1) as f64 * q) as usize];
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!(
        "{label:<58} p50 {:>7.1} ms  p99 {:>7.1} ms  max {:>7.1} ms  ({rounds} renders, {} KiB)",
        ms(at(0.5)),
        ms(at(0.99)),
        ms(*times.last().expect("rounds > 0")),
        bytes / 1024
    );
}

#[tokio::main]
async fn main() {
    let rounds = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(30);

    let workflows: Vec<Workflow> = (0..1000).map(|n| workflow(&format!("wf-{n:04}"))).collect();
    let all: Vec<WorkflowInstance> = workflows.iter().flat_map(|w| instances(w, 10)).collect();
    let many = ui(Cache::holding(workflows, all, Vec::new()));
    measure(
        "workflows page, 1,000 workflows x 10 instances",
        &many,
        "/",
        rounds,
    )
    .await;
    measure(
        "GET /api/v1/workflows, the same",
        &many,
        "/api/v1/workflows",
        rounds,
    )
    .await;

    let big = workflow("big");
    let ns = big.metadata.namespace.clone().unwrap_or_default();
    let ten_thousand = instances(&big, 10_000);
    let one = ui(Cache::holding(vec![big.clone()], ten_thousand, Vec::new()));
    measure(
        "workflow page, 10,000 instances (first page of 50)",
        &one,
        &format!("/namespaces/{ns}/workflows/big"),
        rounds,
    )
    .await;
    measure(
        "workflow page, 10,000 instances, state=Error",
        &one,
        &format!("/namespaces/{ns}/workflows/big?state=Error"),
        rounds,
    )
    .await;

    let hundred_thousand = instances(&big, 100_000);
    let huge = ui(Cache::holding(vec![big], hundred_thousand, Vec::new()));
    measure(
        "GET …/partitions?limit=100, 100,000 partitions",
        &huge,
        &format!("/api/v1/namespaces/{ns}/workflows/big/partitions?limit=100"),
        rounds,
    )
    .await;
}
