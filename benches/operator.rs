//! Operator benchmarks on the embedded cluster. The cluster (`charon dev --no-controller`) runs
//! in its own process, so this process's memory is the operator's (plus a small client).
//!
//! ```sh
//! cargo bench --bench operator                       # both, at their default sizes
//! cargo bench --bench operator -- triggers 1000 10000
//! cargo bench --bench operator -- triggers 100000 --spread=5
//! cargo bench --bench operator -- backfill 10000 500
//! cargo bench --bench operator -- triggers 10000 --events=warnings
//! cargo bench --bench operator -- triggers 1000 --api-qps=50 --api-burst=100
//! cargo bench --bench operator -- archive 1000
//! ```
//!
//! `--events=warnings` runs the operator as `charon operator --events warnings` does.
//! `--api-qps=Q` (with `--api-burst=B`, default 2Q) runs `triggers` twice, without a limit and
//! then with it as `charon operator --api-qps Q --api-burst B` does, and prints what the limit
//! costs in trigger lateness.
//!
//! `triggers N…`: N hourly workflows, all due at the same top of the hour (the operator's clock
//! is moved to just before it): trigger lateness (trigger instant → instance created) p50, p99
//! and max, API requests and writes per triggered instance, operator RSS, and the rate the
//! operator created instances at as a ratio of the same server's raw create rate for
//! WorkflowInstances (measured after the run, once the operator has stopped). Pods are
//! simulated (`charon dev --simulate-pods`: they complete without running a process, as kwok
//! does), so 100,000 runs fit on one machine. With `--spread=M` the workflows are due spread
//! evenly over the hour instead, and the lateness of those due in its first M minutes is
//! measured. Each target is printed with whether it was met.
//!
//! `backfill P C`: one Backfill of P partitions whose command exits 0, at most C at a time:
//! partitions finished per second, API requests and writes per partition (by kind), and the
//! same server's raw Job creation rate for comparison.
//!
//! `pools N SLOTS NAMESPACES` (default 10000 100 10): N instances of workflows in NAMESPACES
//! namespaces queued on one Pool of SLOTS slots (created with 0 slots, so all of them queue
//! first; then given SLOTS): admissions per second, the operator's CPU time per admission,
//! and the time from a slot freeing to the next admission (p50, p99), from the instances'
//! recorded history.
//!
//! `archive N`: a backfill of N partitions whose attempts each print a few KiB, with a
//! `file://` log store: per archived attempt its time (mean, p50, p99) and bytes, how long the
//! last archive trailed the last run; then one attempt printing 100 MiB, with the operator's
//! RSS before and at its peak while that log is archived.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration as StdDuration, Instant};

use charon::controller::{Clock, EventLevel, Metrics, ShiftedClock};
use charon::operator::{self, Settings};
use charon::throttle::{self, RateLimit};
use charon_core::resources::{Backfill, Workflow, WorkflowInstance};
use chrono::{DateTime, Duration, DurationRound, Utc};
use futures::StreamExt;
use k8s_openapi::api::batch::v1::Job;
use kube::api::{ListParams, PostParams};
use kube::{Api, Client};
use serde_json::json;

const NS: &str = "default";

// The operator's allocator, as in the `charon` binary, so the RSS measured is what a replica
// would use.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

struct Dev {
    child: Child,
    kubeconfig: PathBuf,
}

impl Drop for Dev {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.kubeconfig);
    }
}

fn charon_binary() -> PathBuf {
    // Benches are built next to the binary: target/<profile>/deps/operator-… → target/<profile>/charon.
    let exe = std::env::current_exe().expect("current exe");
    let dir = exe.parent().and_then(|d| d.parent()).expect("target dir");
    let bin = dir.join("charon");
    assert!(
        bin.exists(),
        "{} not found: run `cargo build --release` first",
        bin.display()
    );
    bin
}

/// Starts `charon dev --no-controller`; with `simulated` its pods run no processes and
/// complete at once (`--simulate-pods`, as kwok does), so only the operator and the API
/// server are measured.
async fn start_cluster(simulated: bool) -> (Dev, Client) {
    let kubeconfig =
        std::env::temp_dir().join(format!("charon-bench-{}.kubeconfig", std::process::id()));
    let _ = std::fs::remove_file(&kubeconfig);
    let mut command = Command::new(charon_binary());
    command
        .args(["dev", "--no-controller", "--kubeconfig"])
        .arg(&kubeconfig);
    if simulated {
        command.arg("--simulate-pods");
    }
    let child = command
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("charon dev starts");
    let dev = Dev { child, kubeconfig };
    let deadline = Instant::now() + StdDuration::from_secs(30);
    loop {
        if let Ok(client) = operator::client(Some(&dev.kubeconfig), None, "charon-bench").await {
            let workflows: Api<Workflow> = Api::namespaced(client.clone(), NS);
            if workflows
                .list(&ListParams::default().limit(1))
                .await
                .is_ok()
            {
                return (dev, client);
            }
        }
        assert!(Instant::now() < deadline, "charon dev did not start");
        tokio::time::sleep(StdDuration::from_millis(100)).await;
    }
}

fn rss_mib() -> f64 {
    status_mib("VmRSS:")
}

/// The peak of [`rss_mib`] so far.
fn peak_rss_mib() -> f64 {
    status_mib("VmHWM:")
}

/// A memory figure of this process from `/proc/self/status`, in MiB.
fn status_mib(field: &str) -> f64 {
    process_mib("self", field)
}

/// A memory figure of process `pid` from `/proc/<pid>/status`, in MiB (0 if it is gone).
fn process_mib(pid: &str, field: &str) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

/// API requests the operator made, counted by a layer on its client.
#[derive(Default)]
struct Counter {
    requests: AtomicU64,
    writes: AtomicU64,
    by_kind: std::sync::Mutex<BTreeMap<String, u64>>,
}

/// `POST workflowinstances`, `PUT workflowinstances/status`, … from a request.
fn kind_of(req: &http::Request<kube::client::Body>) -> String {
    let path = req.uri().path();
    let parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
    let after_ns = parts.iter().position(|p| *p == "namespaces").map(|i| i + 2);
    let rest: Vec<&str> = match after_ns {
        Some(i) if i <= parts.len() => parts[i..].to_vec(),
        _ => parts.iter().rev().take(1).copied().collect(),
    };
    let resource = match rest.as_slice() {
        [r, _, sub] => format!("{r}/{sub}"),
        [r, ..] => r.to_string(),
        [] => path.to_string(),
    };
    format!("{} {resource}", req.method())
}

/// Which Events the benchmarked operator writes: `--events=warnings` on the command line
/// measures an operator run with `charon operator --events warnings`.
fn events_level() -> EventLevel {
    if std::env::args().any(|a| a == "--events=warnings") {
        EventLevel::Warnings
    } else {
        EventLevel::All
    }
}

/// Writes (anything but GET) counted between two snapshots of the requests by kind, Events
/// left out: they are a courtesy, one per transition, dropped under load.
fn writes_besides_events(before: &BTreeMap<String, u64>, after: &BTreeMap<String, u64>) -> u64 {
    after
        .iter()
        .filter(|(kind, _)| !kind.starts_with("GET ") && kind.as_str() != "POST events")
        .map(|(kind, n)| n - before.get(kind).copied().unwrap_or(0))
        .sum()
}

struct Counts {
    requests: u64,
    writes: u64,
}

impl Counter {
    fn snapshot(&self) -> Counts {
        Counts {
            requests: self.requests.load(Ordering::SeqCst),
            writes: self.writes.load(Ordering::SeqCst),
        }
    }
}

/// The limit `--api-qps=Q` and `--api-burst=B` on the command line ask for.
fn api_limit() -> Option<RateLimit> {
    let flag = |name: &str| {
        std::env::args().find_map(|a| a.strip_prefix(&format!("--{name}=")).map(str::to_string))
    };
    let qps: f64 = flag("api-qps")?
        .parse()
        .expect("--api-qps=<requests per second>");
    let burst = flag("api-burst").map(|b| b.parse().expect("--api-burst=<requests>"));
    Some(RateLimit::new(qps, burst).expect("a valid limit"))
}

async fn counting_client(
    kubeconfig: &PathBuf,
    counter: Arc<Counter>,
    limit: Option<RateLimit>,
) -> anyhow::Result<Client> {
    let kc = kube::config::Kubeconfig::read_from(kubeconfig)?;
    let mut config = kube::Config::from_custom_kubeconfig(kc, &Default::default()).await?;
    // The operator's own retries (`throttle::client_from`) replace kube's.
    config.default_retry = false;
    config.headers.push((
        http::header::USER_AGENT,
        http::HeaderValue::from_static(operator::OPERATOR_AGENT),
    ));
    let count = tower::util::MapRequestLayer::new(move |req: http::Request<kube::client::Body>| {
        counter.requests.fetch_add(1, Ordering::Relaxed);
        if req.method() != http::Method::GET {
            counter.writes.fetch_add(1, Ordering::Relaxed);
        }
        if let Ok(mut kinds) = counter.by_kind.lock() {
            *kinds.entry(kind_of(&req)).or_default() += 1;
        }
        req
    });
    // Counted under the limit: what reaches the server.
    let builder = kube::client::ClientBuilder::try_from(config)?
        .with_layer(&count)
        .with_layer(&tower::util::BoxService::layer());
    Ok(throttle::client_from(builder, limit))
}

fn start_operator(
    kubeconfig: &std::path::Path,
    clock: Arc<ShiftedClock>,
    counter: Arc<Counter>,
    metrics: Arc<Metrics>,
    limit: Option<RateLimit>,
    log_store: Option<Arc<charon::logstore::LogStore>>,
) -> (
    tokio::sync::watch::Sender<bool>,
    tokio::task::JoinHandle<anyhow::Result<()>>,
) {
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let kubeconfig = kubeconfig.to_path_buf();
    let task = tokio::spawn(async move {
        let client = counting_client(&kubeconfig, counter, limit).await?;
        let settings = Settings {
            namespaces: Vec::new(),
            lease: None,
            clock,
            metrics,
            identity: "bench".into(),
            events: events_level(),
            shutdown_timeout: operator::SHUTDOWN_TIMEOUT,
            lease_client: None,
            policy: charon_core::validate::Policy::default(),
            log_store,
            launcher: Default::default(),
            shards: 1,
        };
        let shutdown = async move {
            let mut stopped = stopped;
            let _ = stopped.wait_for(|s| *s).await;
        };
        operator::run(client, settings, shutdown).await
    });
    (stop, task)
}

/// Upper bounds of the buckets holding the median and the 99th percentile of a Prometheus
/// histogram in text format, and its sample count.
fn histogram_quantiles(text: &str, name: &str) -> (String, String, u64) {
    let mut buckets: Vec<(String, u64)> = Vec::new();
    let mut count = 0;
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix(&format!("{name}_bucket{{le=\"")) {
            let (le, value) = rest.split_once("\"} ").unwrap_or(("", "0"));
            buckets.push((le.to_string(), value.trim().parse().unwrap_or(0)));
        } else if let Some(rest) = line.strip_prefix(&format!("{name}_count ")) {
            count = rest.trim().parse().unwrap_or(0);
        }
    }
    let quantile = |q: f64| {
        let want = (count as f64 * q).ceil() as u64;
        buckets
            .iter()
            .find(|(_, cumulative)| *cumulative >= want.max(1))
            .map_or("?".to_string(), |(le, _)| le.clone())
    };
    (quantile(0.5), quantile(0.99), count)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// Creates `objects` as they are made, so the benchmark holds a few at a time rather than
/// every one (its memory is counted with the operator's).
async fn create_all<K>(api: &Api<K>, objects: impl IntoIterator<Item = K>, concurrency: usize)
where
    K: kube::Resource + Clone + serde::Serialize + serde::de::DeserializeOwned + std::fmt::Debug,
{
    futures::stream::iter(objects)
        .for_each_concurrent(concurrency, |o| {
            let api = api.clone();
            async move {
                if let Err(err) = api.create(&PostParams::default(), &o).await {
                    eprintln!("create failed: {err}");
                }
            }
        })
        .await;
}

/// Trigger lateness as a watching client saw it, in seconds.
struct Lateness {
    p50: f64,
    p99: f64,
    max: f64,
}

/// When the workflows of `triggers` are due.
#[derive(Clone, Copy, Debug)]
enum Due {
    /// All at the same top of the hour.
    AtOnce,
    /// Spread evenly over an hour, measured over its first `minutes`. The hour starts a few
    /// minutes after the workflows are created, at the operator's real clock: moving the
    /// clock forward would make every trigger it skipped come due at once, as catch-up.
    Spread { minutes: u64 },
}

impl Due {
    /// `--spread=M` on the command line: spread over the hour, measured for M minutes.
    fn from_args() -> Due {
        std::env::args()
            .find_map(|a| a.strip_prefix("--spread=").map(str::to_string))
            .map_or(Due::AtOnce, |m| Due::Spread {
                minutes: m.parse().expect("--spread=<minutes measured>"),
            })
    }

    /// Workflow `i`'s first trigger after the measured hour starts, in seconds.
    fn offset(self, i: usize, n: usize) -> u64 {
        match self {
            Due::AtOnce => 0,
            Due::Spread { .. } => (i as u64 * 3600) / n.max(1) as u64,
        }
    }

    /// How long after the start of the hour the triggers measured fall (None: all of them).
    fn window(self) -> Option<u64> {
        match self {
            Due::AtOnce => None,
            Due::Spread { minutes } => Some(minutes * 60),
        }
    }
}

/// The same server's raw create throughput for the operator's own kind: `count` copies of
/// `sample` (a WorkflowInstance the operator created) created by one client 64 at a time into
/// a namespace of their own, once the operator has stopped. Objects a second.
async fn raw_create_rate(client: &Client, sample: &WorkflowInstance, count: usize) -> f64 {
    let namespaces: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(client.clone());
    let namespace = serde_json::from_value(json!({"metadata": {"name": "raw"}})).expect("ns");
    namespaces
        .create(&PostParams::default(), &namespace)
        .await
        .expect("namespace raw");
    let mut template = sample.clone();
    template.metadata = kube::api::ObjectMeta {
        labels: sample.metadata.labels.clone(),
        ..Default::default()
    };
    template.status = None;
    let objects: Vec<WorkflowInstance> = (0..count)
        .map(|i| {
            let mut o = template.clone();
            o.metadata.name = Some(format!("raw-{i:06}"));
            o
        })
        .collect();
    let raw: Api<WorkflowInstance> = Api::namespaced(client.clone(), "raw");
    let started = Instant::now();
    create_all(&raw, objects, 64).await;
    count as f64 / started.elapsed().as_secs_f64()
}

async fn triggers(n: usize, limit: Option<RateLimit>, due: Due) -> Lateness {
    let (dev, client) = start_cluster(true).await;
    let clock = Arc::new(ShiftedClock::default());
    let workflows: Api<Workflow> = Api::namespaced(client.clone(), NS);
    // Spread: the measured hour starts once creating and planning are surely over; each
    // workflow's offset puts its first trigger `due.offset(i)` seconds into it.
    let spread_start = (Utc::now() + Duration::seconds(180))
        .duration_trunc(Duration::seconds(1))
        .expect("trunc");
    let start_in_hour = match due {
        Due::AtOnce => 0,
        Due::Spread { .. } => {
            let hour = spread_start
                .duration_trunc(Duration::hours(1))
                .expect("trunc");
            (spread_start - hour).num_seconds() as u64
        }
    };
    let objects = (0..n).map(|i| -> Workflow {
        let offset = (start_in_hour + due.offset(i, n)) % 3600;
        serde_json::from_value(json!({
            "apiVersion": "charon.dev/v1alpha1", "kind": "Workflow",
            "metadata": {"name": format!("w{i:06}")},
            "spec": {"schedule": "@hourly", "offset": format!("PT{offset}S"),
                "template": {"image": "busybox", "command": ["true"]}},
        }))
        .expect("workflow")
    });
    let creating = Instant::now();
    create_all(&workflows, objects, 32).await;
    let created_in = creating.elapsed();
    let rss_before = rss_mib();
    let counter = Arc::new(Counter::default());
    let metrics = Arc::new(Metrics::default());
    let (stop, task) = start_operator(
        &dev.kubeconfig,
        clock.clone(),
        counter.clone(),
        metrics.clone(),
        limit,
        None,
    );
    // Wait until every workflow knows its next trigger (watched: listing thousands of
    // workflows over and over would load the server being measured).
    let wait_planned = Instant::now();
    let mut planned = std::collections::HashSet::new();
    let mut workflow_events = kube::runtime::watcher(workflows.clone(), Default::default()).boxed();
    while planned.len() < n {
        match workflow_events.next().await {
            Some(Ok(
                kube::runtime::watcher::Event::Apply(w)
                | kube::runtime::watcher::Event::InitApply(w),
            )) if w.status.as_ref().is_some_and(|s| s.next_trigger.is_some()) => {
                planned.insert(w.metadata.name.clone().unwrap_or_default());
            }
            Some(_) => {}
            None => break,
        }
    }
    drop(workflow_events);
    drop(planned);
    let planned_in = wait_planned.elapsed();
    let rss_planned = rss_mib();
    // All at once: move the operator's clock to two seconds before the next top of the
    // hour. Spread: wait for the measured hour to start.
    let now = clock.now();
    let top: DateTime<Utc> = match due {
        Due::AtOnce => {
            let top = now.duration_trunc(Duration::hours(1)).expect("trunc") + Duration::hours(1);
            clock.advance(top - now - Duration::seconds(2));
            top
        }
        Due::Spread { .. } => spread_start,
    };
    let before = counter.snapshot();
    let kinds_before = counter
        .by_kind
        .lock()
        .map(|k| k.clone())
        .unwrap_or_default();
    // The instances measured: every one, or those due within the window.
    let window = due.window();
    let measured = |i: usize| window.is_none_or(|w| due.offset(i, n) < w);
    let expected = (0..n).filter(|i| measured(*i)).count();
    // Lateness: when each instance is seen (a watch started before the trigger instant),
    // on the operator's clock, after its workflow's trigger instant. The same watch then
    // follows the instances to the end, to count a whole instance's requests.
    let instances: Api<WorkflowInstance> = Api::namespaced(client.clone(), NS);
    let mut seen = kube::runtime::watcher(instances.clone(), Default::default()).boxed();
    let mut lateness: Vec<f64> = Vec::new();
    let mut names = std::collections::HashSet::new();
    let mut finished = std::collections::HashSet::new();
    let mut done_after: Vec<f64> = Vec::new();
    let mut sample = None;
    let deadline = Instant::now() + StdDuration::from_secs(1200 + window.unwrap_or(0));
    while finished.len() < expected && Instant::now() < deadline {
        let event = tokio::time::timeout(StdDuration::from_secs(5), seen.next()).await;
        if let Ok(Some(Ok(
            kube::runtime::watcher::Event::Apply(i) | kube::runtime::watcher::Event::InitApply(i),
        ))) = event
        {
            let name = i.metadata.name.clone().unwrap_or_default();
            let index: Option<usize> = i
                .spec
                .workflow
                .strip_prefix('w')
                .and_then(|d| d.parse().ok());
            let Some(index) = index.filter(|i| measured(*i)) else {
                names.insert(name);
                continue;
            };
            let due_at = top + Duration::seconds(due.offset(index, n) as i64);
            let after = (clock.now() - due_at).num_milliseconds() as f64 / 1000.0;
            if names.insert(name.clone()) {
                lateness.push(after);
            }
            if i.status.as_ref().is_some_and(|s| s.state.is_terminal()) && finished.insert(name) {
                done_after.push(after);
                sample.get_or_insert(i);
            }
        }
    }
    drop(seen);
    let observed_for = clock.now() - top;
    lateness.sort_by(f64::total_cmp);
    done_after.sort_by(f64::total_cmp);
    if finished.len() < expected {
        println!(
            "triggers: only {} of {expected} instances finished within the deadline",
            finished.len()
        );
    }
    // Events are written in the background: count them too, once the writes stop (in
    // `--spread` runs the writes of later triggers go on; they are counted with their
    // instances).
    let mut last = counter.snapshot().writes;
    for _ in 0..120 {
        if window.is_some() {
            break;
        }
        tokio::time::sleep(StdDuration::from_secs(2)).await;
        let now = counter.snapshot().writes;
        if now == last {
            break;
        }
        last = now;
    }
    let after = counter.snapshot();
    let triggered = names.len().max(1) as f64;
    let kinds_after = counter
        .by_kind
        .lock()
        .map(|k| k.clone())
        .unwrap_or_default();
    let limited = limit.map_or("no API rate limit".to_string(), |l| {
        format!("--api-qps {} --api-burst {}", l.qps, l.burst)
    });
    let rss = rss_mib();
    let _ = stop.send(true);
    let _ = tokio::time::timeout(StdDuration::from_secs(10), task).await;
    let due_text = match due {
        Due::AtOnce => "all due at the same top of the hour".to_string(),
        Due::Spread { minutes } => format!(
            "spread over the hour, the {expected} due in its first {minutes} minutes measured"
        ),
    };
    println!(
        "triggers: {n} hourly workflows ({due_text}), {limited}, simulated pods: created in {:.1}s, planned in {:.1}s; {} instances seen in {:.0}s after the first trigger instant; Events: {:?}",
        created_in.as_secs_f64(),
        planned_in.as_secs_f64(),
        names.len(),
        observed_for.num_milliseconds() as f64 / 1000.0,
        events_level()
    );
    let (p50, p99, count) =
        histogram_quantiles(&metrics.encode(), "charon_trigger_lateness_seconds");
    println!(
        "  trigger lateness (operator's histogram, trigger instant → create answered, {count} samples): p50 ≤ {p50}s  p99 ≤ {p99}s"
    );
    let p99_seen = percentile(&lateness, 0.99);
    println!(
        "  seen by a watching client: p50 {:.3}s  p99 {:.3}s  max {:.3}s{}",
        percentile(&lateness, 0.5),
        p99_seen,
        lateness.last().copied().unwrap_or(f64::NAN),
        if window.is_some() {
            format!(" (target p99 < 1 s: {})", verdict(p99_seen < 1.0))
        } else {
            String::new()
        }
    );
    println!(
        "  instances seen finished after their trigger instant: p50 {:.1}s  p99 {:.1}s  max {:.1}s",
        percentile(&done_after, 0.5),
        percentile(&done_after, 0.99),
        done_after.last().copied().unwrap_or(f64::NAN)
    );
    println!(
        "  per triggered instance, run to the end: {:.1} API requests, {:.1} writes (Events included)",
        (after.requests - before.requests) as f64 / triggered,
        (after.writes - before.writes) as f64 / triggered
    );
    let breakdown: Vec<String> = kinds_after
        .iter()
        .map(|(k, v)| (k, v - kinds_before.get(k).copied().unwrap_or(0)))
        .filter(|(k, v)| *v > 0 && !k.starts_with("GET "))
        .map(|(k, v)| format!("{k} {:.2}", v as f64 / triggered))
        .collect();
    println!("  writes per instance by kind: {}", breakdown.join(", "));
    let writes = writes_besides_events(&kinds_before, &kinds_after) as f64 / triggered;
    println!(
        "  writes per instance besides Events: {writes:.2} (target ≤ 4: {})",
        verdict(writes <= 4.0)
    );
    let peak = peak_rss_mib();
    println!(
        "  operator RSS {rss:.0} MiB, peak {peak:.0} MiB (before starting it: {rss_before:.0} MiB; with every workflow planned: {rss_planned:.0} MiB; target < 1024 MiB: {})",
        verdict(peak < 1024.0)
    );
    let server = dev.child.id().to_string();
    println!(
        "  embedded server (charon dev) RSS {:.0} MiB, peak {:.0} MiB",
        process_mib(&server, "VmRSS:"),
        process_mib(&server, "VmHWM:")
    );
    if let (Due::AtOnce, Some(sample)) = (due, sample.as_ref()) {
        // Every instance was due at the same instant: the operator created them at n over the
        // lateness of the last one.
        let last = lateness.last().copied().unwrap_or(f64::NAN).max(0.001);
        let operator_rate = lateness.len() as f64 / last;
        let raw_rate = raw_create_rate(&client, sample, n.min(20_000)).await;
        let ratio = operator_rate / raw_rate;
        println!(
            "  instances created at {operator_rate:.0}/s; the same server's raw creates of WorkflowInstances: {raw_rate:.0}/s (one client, 64 at a time, {} objects); ratio {ratio:.2} (target ≥ 0.8: {})",
            n.min(20_000),
            verdict(ratio >= 0.8)
        );
    }
    drop(dev);
    Lateness {
        p50: percentile(&lateness, 0.5),
        p99: p99_seen,
        max: lateness.last().copied().unwrap_or(f64::NAN),
    }
}

/// "met" or "NOT met", for a target.
fn verdict(met: bool) -> &'static str {
    if met { "met" } else { "NOT met" }
}

/// `triggers n` without a limit, then with `limit`, and what the limit costs.
async fn triggers_limited(n: usize, limit: RateLimit) {
    let free = triggers(n, None, Due::from_args()).await;
    let limited = triggers(n, Some(limit), Due::from_args()).await;
    println!(
        "triggers: {n} workflows, what --api-qps {} --api-burst {} costs in lateness seen by a watching client:",
        limit.qps, limit.burst
    );
    println!(
        "  unlimited p50 {:.3}s  p99 {:.3}s  max {:.3}s; limited p50 {:.3}s  p99 {:.3}s  max {:.3}s",
        free.p50, free.p99, free.max, limited.p50, limited.p99, limited.max
    );
    println!(
        "  the limit adds p50 {:+.3}s  p99 {:+.3}s  max {:+.3}s (the {n} creates alone need {:.1}s at {} a second)",
        limited.p50 - free.p50,
        limited.p99 - free.p99,
        limited.max - free.max,
        (n as f64 - f64::from(limit.burst)).max(0.0) / limit.qps,
        limit.qps
    );
}

async fn backfill(partitions: usize, concurrency: u32) {
    let (dev, client) = start_cluster(false).await;
    let clock = Arc::new(ShiftedClock::default());
    // Raw Job creation rate of the same server, for comparison.
    let jobs: Api<Job> = Api::namespaced(client.clone(), NS);
    let raw = 2000;
    let objects: Vec<Job> = (0..raw)
        .map(|i| {
            serde_json::from_value(json!({
                "metadata": {"name": format!("raw-{i}")},
                "spec": {"suspend": true, "template": {"spec": {"restartPolicy": "Never",
                    "containers": [{"name": "main", "image": "busybox", "command": ["true"]}]}}},
            }))
            .expect("job")
        })
        .collect();
    let started = Instant::now();
    create_all(&jobs, objects, 32).await;
    let raw_rate = raw as f64 / started.elapsed().as_secs_f64();

    let workflows: Api<Workflow> = Api::namespaced(client.clone(), NS);
    let wf: Workflow = serde_json::from_value(json!({
        "apiVersion": "charon.dev/v1alpha1", "kind": "Workflow", "metadata": {"name": "bf"},
        "spec": {"schedule": "@hourly", "suspend": true, "template": {"image": "busybox", "command": ["true"]}},
    }))
    .expect("workflow");
    workflows
        .create(&PostParams::default(), &wf)
        .await
        .expect("workflow");
    let counter = Arc::new(Counter::default());
    let metrics = Arc::new(Metrics::default());
    let (stop, task) = start_operator(
        &dev.kubeconfig,
        clock.clone(),
        counter.clone(),
        metrics.clone(),
        None,
        None,
    );
    tokio::time::sleep(StdDuration::from_secs(1)).await;
    let start = Utc::now()
        .duration_trunc(Duration::hours(1))
        .expect("trunc")
        - Duration::hours(partitions as i64 + 2);
    let end = start + Duration::hours(partitions as i64);
    let backfills: Api<Backfill> = Api::namespaced(client.clone(), NS);
    let b: Backfill = serde_json::from_value(json!({
        "apiVersion": "charon.dev/v1alpha1", "kind": "Backfill", "metadata": {"name": "bench"},
        "spec": {"workflow": "bf", "start": start.format("%Y-%m-%dT%H").to_string(),
            "end": end.format("%Y-%m-%dT%H").to_string(), "concurrency": concurrency},
    }))
    .expect("backfill");
    let before = counter.snapshot();
    let kinds_before = counter
        .by_kind
        .lock()
        .map(|k| k.clone())
        .unwrap_or_default();
    let t0 = Instant::now();
    backfills
        .create(&PostParams::default(), &b)
        .await
        .expect("backfill");
    let mut max_active = 0;
    let mut progress = BTreeMap::new();
    loop {
        // The status lists every partition: a slow poll keeps the reads from weighing on the
        // server being measured.
        tokio::time::sleep(StdDuration::from_secs(2)).await;
        let b = backfills.get("bench").await.expect("get");
        let c = b.status.clone().unwrap_or_default().counts;
        max_active = max_active.max(c.active);
        let second = t0.elapsed().as_secs();
        if second.is_multiple_of(10) && !progress.contains_key(&second) {
            eprintln!(
                "  {second:>4}s: {} done, {} active, {} failed, {} skipped",
                c.done, c.active, c.failed, c.skipped
            );
        }
        progress.insert(second, c.done);
        if (c.done + c.failed + c.skipped) as usize >= partitions {
            break;
        }
        if t0.elapsed() > StdDuration::from_secs(3600) {
            println!("backfill: gave up after an hour: {c:?}");
            break;
        }
    }
    let elapsed = t0.elapsed().as_secs_f64();
    let after = counter.snapshot();
    let kinds_after = counter
        .by_kind
        .lock()
        .map(|k| k.clone())
        .unwrap_or_default();
    println!(
        "backfill: {partitions} partitions (command `true`), concurrency {concurrency}; Events: {:?}",
        events_level()
    );
    println!(
        "  finished in {elapsed:.1}s: {:.0} partitions/s; at most {max_active} active",
        partitions as f64 / elapsed
    );
    println!(
        "  per partition: {:.1} API requests, {:.1} writes (Events included)",
        (after.requests - before.requests) as f64 / partitions as f64,
        (after.writes - before.writes) as f64 / partitions as f64
    );
    let breakdown: Vec<String> = kinds_after
        .iter()
        .map(|(k, v)| (k, v - kinds_before.get(k).copied().unwrap_or(0)))
        .filter(|(_, v)| *v > 0)
        .map(|(k, v)| format!("{k} {:.2}", v as f64 / partitions as f64))
        .collect();
    println!("  requests per partition by kind: {}", breakdown.join(", "));
    println!(
        "  writes per partition besides Events: {:.2}",
        writes_besides_events(&kinds_before, &kinds_after) as f64 / partitions as f64
    );
    println!("  raw Job creates on the same server: {raw_rate:.0}/s (32 concurrent clients)");
    println!("  operator RSS {:.0} MiB", rss_mib());
    let _ = stop.send(true);
    let _ = tokio::time::timeout(StdDuration::from_secs(10), task).await;
    drop(dev);
}

/// CPU seconds this process (the operator, and the benchmark's light polling) has used.
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name (which may hold spaces) start after its ')'.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after the name.
    (ticks(11) + ticks(12)) / 100.0
}

async fn pools(n: usize, slots: u32, namespaces: usize) {
    use charon_core::resources::{InstanceState, Pool};
    use k8s_openapi::api::core::v1::Namespace;
    use kube::api::{Patch, PatchParams};

    let (dev, client) = start_cluster(false).await;
    let clock = Arc::new(ShiftedClock::default());
    let apply = PatchParams::apply("bench").force();
    let pool_api: Api<Pool> = Api::all(client.clone());
    let pool = json!({"apiVersion": "charon.dev/v1alpha1", "kind": "Pool",
        "metadata": {"name": "bench"}, "spec": {"slots": 0}});
    pool_api
        .patch("bench", &apply, &Patch::Apply(&pool))
        .await
        .expect("pool");
    let per = n / namespaces;
    let names: Vec<String> = (0..namespaces).map(|i| format!("team-{i:02}")).collect();
    for ns in &names {
        let namespace: Namespace =
            serde_json::from_value(json!({"metadata": {"name": ns}})).expect("namespace");
        Api::<Namespace>::all(client.clone())
            .create(&PostParams::default(), &namespace)
            .await
            .expect("namespace");
        let wf: Workflow = serde_json::from_value(json!({
            "apiVersion": "charon.dev/v1alpha1", "kind": "Workflow", "metadata": {"name": "work"},
            "spec": {"schedule": "@hourly", "suspend": true, "pools": [{"name": "bench"}],
                "template": {"image": "busybox", "command": ["true"]}},
        }))
        .expect("workflow");
        Api::<Workflow>::namespaced(client.clone(), ns)
            .create(&PostParams::default(), &wf)
            .await
            .expect("workflow");
    }
    let counter = Arc::new(Counter::default());
    let metrics = Arc::new(Metrics::default());
    let (stop, task) = start_operator(
        &dev.kubeconfig,
        clock.clone(),
        counter.clone(),
        metrics.clone(),
        None,
        None,
    );
    let start = Utc::now()
        .duration_trunc(Duration::hours(1))
        .expect("trunc")
        - Duration::hours(per as i64 + 2);
    let end = start + Duration::hours(per as i64);
    for ns in &names {
        let b: Backfill = serde_json::from_value(json!({
            "apiVersion": "charon.dev/v1alpha1", "kind": "Backfill", "metadata": {"name": "range"},
            "spec": {"workflow": "work", "start": start.format("%Y-%m-%dT%H").to_string(),
                "end": end.format("%Y-%m-%dT%H").to_string(), "concurrency": per},
        }))
        .expect("backfill");
        Api::<Backfill>::namespaced(client.clone(), ns)
            .create(&PostParams::default(), &b)
            .await
            .expect("backfill");
    }
    let all: Api<WorkflowInstance> = Api::all(client.clone());
    let t_queue = Instant::now();
    loop {
        tokio::time::sleep(StdDuration::from_secs(5)).await;
        let pool = pool_api.get("bench").await.expect("pool");
        let queued = pool.status.map_or(0, |s| s.queued) as usize;
        eprintln!("  {:>4}s: {queued} queued", t_queue.elapsed().as_secs());
        if queued >= per * namespaces {
            break;
        }
        assert!(
            t_queue.elapsed() < StdDuration::from_secs(1800),
            "instances did not queue"
        );
    }
    let total = per * namespaces;
    println!(
        "pools: {total} instances in {namespaces} namespaces queued on one pool in {:.1}s; giving it {slots} slots",
        t_queue.elapsed().as_secs_f64()
    );
    let cpu_before = cpu_seconds();
    let t0 = Instant::now();
    pool_api
        .patch(
            "bench",
            &PatchParams::default(),
            &Patch::Merge(&json!({"spec": {"slots": slots}})),
        )
        .await
        .expect("slots");
    loop {
        tokio::time::sleep(StdDuration::from_secs(5)).await;
        let mut done = 0;
        for ns in &names {
            let b = Api::<Backfill>::namespaced(client.clone(), ns)
                .get("range")
                .await
                .expect("backfill");
            done += b.status.map_or(0, |s| s.counts.done) as usize;
        }
        let pool = pool_api.get("bench").await.expect("pool");
        let status = pool.status.unwrap_or_default();
        eprintln!(
            "  {:>4}s: {done} done, {} of {slots} slots used, {} queued",
            t0.elapsed().as_secs(),
            status.used,
            status.queued
        );
        assert!(
            status.used <= slots,
            "the pool reports {} of {slots} used",
            status.used
        );
        if done >= total {
            break;
        }
        if t0.elapsed() > StdDuration::from_secs(3600) {
            println!("pools: gave up after an hour at {done} done");
            break;
        }
    }
    let elapsed = t0.elapsed().as_secs_f64();
    let cpu = cpu_seconds() - cpu_before;
    let instances = all
        .list(&ListParams::default())
        .await
        .expect("instances")
        .items;
    // (time, +1 admitted / -1 freed)
    let mut events: Vec<(DateTime<Utc>, i32)> = Vec::new();
    for i in &instances {
        let history = i
            .status
            .as_ref()
            .map(|s| s.history.clone())
            .unwrap_or_default();
        let mut held = false;
        for h in history {
            if h.to == InstanceState::Prepare {
                events.push((h.at, 1));
                held = true;
            } else if held && !h.to.is_active() {
                events.push((h.at, -1));
                held = false;
            }
        }
    }
    events.sort();
    let admissions: Vec<DateTime<Utc>> = events.iter().filter(|e| e.1 > 0).map(|e| e.0).collect();
    let span = match (admissions.first(), admissions.last()) {
        (Some(a), Some(b)) => (*b - *a).num_milliseconds() as f64 / 1000.0,
        _ => f64::NAN,
    };
    // Each free of a full pool while instances still wait, to the next admission.
    let mut used = 0i32;
    let mut remaining = admissions.len();
    let mut waits: Vec<f64> = Vec::new();
    let mut most = 0;
    for (k, (at, delta)) in events.iter().enumerate() {
        if *delta > 0 {
            remaining -= 1;
        } else if used == slots as i32
            && remaining > 0
            && let Some((next, _)) = events[k + 1..].iter().find(|e| e.1 > 0)
        {
            waits.push((*next - *at).num_milliseconds() as f64);
        }
        used += delta;
        most = most.max(used);
    }
    waits.sort_by(f64::total_cmp);
    println!(
        "  {} admitted in {span:.1}s: {:.0} admissions/s; all done in {elapsed:.1}s; at most {most} slots held at once (recorded)",
        admissions.len(),
        admissions.len() as f64 / span
    );
    println!(
        "  operator CPU {:.2} ms per admission ({cpu:.1}s in all, 2 cores)",
        cpu * 1000.0 / admissions.len().max(1) as f64
    );
    println!(
        "  slot freed → next admission: p50 {:.0} ms, p99 {:.0} ms ({} frees of a full pool)",
        percentile(&waits, 0.5),
        percentile(&waits, 0.99),
        waits.len()
    );
    println!("  operator RSS {:.0} MiB", rss_mib());
    let _ = stop.send(true);
    let _ = tokio::time::timeout(StdDuration::from_secs(10), task).await;
    drop(dev);
}

/// The value of an unlabelled metric in Prometheus text.
fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}

/// Creates a Backfill named `name` of `partitions` hours of `workflow`, `concurrency` at once.
async fn run_backfill(
    client: &Client,
    name: &str,
    workflow: &str,
    partitions: i64,
    concurrency: u32,
) {
    let start = Utc::now()
        .duration_trunc(Duration::hours(1))
        .expect("trunc")
        - Duration::hours(partitions + 2);
    let end = start + Duration::hours(partitions);
    let backfills: Api<Backfill> = Api::namespaced(client.clone(), NS);
    let b: Backfill = serde_json::from_value(json!({
        "apiVersion": "charon.dev/v1alpha1", "kind": "Backfill", "metadata": {"name": name},
        "spec": {"workflow": workflow, "start": start.format("%Y-%m-%dT%H").to_string(),
            "end": end.format("%Y-%m-%dT%H").to_string(), "concurrency": concurrency},
    }))
    .expect("backfill");
    backfills
        .create(&PostParams::default(), &b)
        .await
        .expect("backfill");
}

/// Waits until `metrics` counted `n` archived logs, sampling RSS; returns the peak RSS (MiB).
async fn archived(metrics: &Metrics, n: f64, limit: StdDuration) -> f64 {
    let t0 = Instant::now();
    let mut peak: f64 = 0.0;
    while metric(&metrics.encode(), "charon_logs_archived_total") < n {
        peak = peak.max(rss_mib());
        assert!(t0.elapsed() < limit, "logs not archived within {limit:?}");
        tokio::time::sleep(StdDuration::from_millis(20)).await;
    }
    peak.max(rss_mib())
}

async fn archive(n: usize) {
    let (dev, client) = start_cluster(false).await;
    let dir = std::env::temp_dir().join(format!("charon-bench-logs-{}", std::process::id()));
    let url = format!("file://{}/", dir.display());
    let store = Arc::new(charon::logstore::LogStore::open(&url).expect("file store"));
    let workflows: Api<Workflow> = Api::namespaced(client.clone(), NS);
    for (name, command) in [("chatty", "echo \"partition $CHARON_PARAMETER\"; seq 1 1000")] {
        let wf: Workflow = serde_json::from_value(json!({
            "apiVersion": "charon.dev/v1alpha1", "kind": "Workflow", "metadata": {"name": name},
            "spec": {"schedule": "@hourly", "suspend": true,
                "template": {"image": "busybox", "command": ["sh", "-c", command]}},
        }))
        .expect("workflow");
        workflows
            .create(&PostParams::default(), &wf)
            .await
            .expect("workflow");
    }
    let metrics = Arc::new(Metrics::default());
    let (stop, task) = start_operator(
        &dev.kubeconfig,
        Arc::new(ShiftedClock::default()),
        Arc::new(Counter::default()),
        metrics.clone(),
        None,
        Some(store.clone()),
    );
    tokio::time::sleep(StdDuration::from_secs(1)).await;
    let t0 = Instant::now();
    run_backfill(&client, "chatty", "chatty", n as i64, 100).await;
    let backfills: Api<Backfill> = Api::namespaced(client.clone(), NS);
    loop {
        tokio::time::sleep(StdDuration::from_secs(1)).await;
        let c = backfills
            .get("chatty")
            .await
            .expect("get")
            .status
            .unwrap_or_default()
            .counts;
        if (c.done + c.failed + c.skipped) as usize >= n {
            break;
        }
        assert!(
            t0.elapsed() < StdDuration::from_secs(3600),
            "backfill stuck: {c:?}"
        );
    }
    let runs_done = t0.elapsed();
    archived(&metrics, n as f64, StdDuration::from_secs(600)).await;
    let all_archived = t0.elapsed();
    let text = metrics.encode();
    let count = metric(&text, "charon_log_archive_duration_seconds_count");
    let seconds = metric(&text, "charon_log_archive_duration_seconds_sum");
    let bytes = metric(&text, "charon_log_archived_bytes_total");
    let (p50, p99, _) = histogram_quantiles(&text, "charon_log_archive_duration_seconds");
    println!(
        "archive: {n} attempts, each printing {:.1} KiB, file:// store",
        bytes / count / 1024.0
    );
    println!(
        "  per attempt: {:.1} ms to archive (p50 <= {p50} s, p99 <= {p99} s), {:.0} bytes",
        seconds / count * 1000.0,
        bytes / count
    );
    println!(
        "  runs finished in {:.1}s, every log archived {:.1}s after the start ({:.1}s after the last run)",
        runs_done.as_secs_f64(),
        all_archived.as_secs_f64(),
        (all_archived - runs_done).as_secs_f64()
    );
    println!(
        "  failed tries: {}",
        metric(&text, "charon_log_archive_failures_total")
    );

    // A 100 MiB log through the same upload path (the embedded kubelet, like the real one,
    // serves only the newest part of a container's log, so a pod cannot supply it whole).
    let before = rss_mib();
    let t1 = Instant::now();
    let size: u64 = 100 * 1024 * 1024;
    let log = tokio::io::AsyncReadExt::take(tokio::io::repeat(b'x'), size);
    let upload = store.put("bench/huge/1.log", log);
    let mut upload = std::pin::pin!(upload);
    let mut peak = before;
    let written = loop {
        tokio::select! {
            written = &mut upload => break written.expect("upload"),
            () = tokio::time::sleep(StdDuration::from_millis(10)) => peak = peak.max(rss_mib()),
        }
    };
    assert_eq!(written, size);
    println!(
        "  a 100 MiB log streamed into the store in {:.2}s; operator RSS {before:.0} MiB before, {peak:.0} MiB at most while archiving it (+{:.1} MiB)",
        t1.elapsed().as_secs_f64(),
        peak - before
    );
    let _ = stop.send(true);
    let _ = tokio::time::timeout(StdDuration::from_secs(10), task).await;
    let _ = std::fs::remove_dir_all(&dir);
    drop(dev);
}

fn main() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .try_init();
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    match args.first().map(String::as_str) {
        Some("triggers") => {
            for n in &args[1..] {
                let n = n.parse().expect("a number of workflows");
                match api_limit() {
                    Some(limit) => runtime.block_on(triggers_limited(n, limit)),
                    None => {
                        runtime.block_on(triggers(n, None, Due::from_args()));
                    }
                }
            }
        }
        Some("backfill") => {
            let partitions = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(10_000);
            let concurrency = args.get(2).and_then(|a| a.parse().ok()).unwrap_or(500);
            runtime.block_on(backfill(partitions, concurrency));
        }
        Some("pools") => {
            let n = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(10_000);
            let slots = args.get(2).and_then(|a| a.parse().ok()).unwrap_or(100);
            let namespaces = args.get(3).and_then(|a| a.parse().ok()).unwrap_or(10);
            runtime.block_on(pools(n, slots, namespaces));
        }
        Some("archive") => {
            let n = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(1000);
            runtime.block_on(archive(n));
        }
        _ => {
            runtime.block_on(triggers(1000, None, Due::AtOnce));
            runtime.block_on(backfill(2000, 200));
        }
    }
}
