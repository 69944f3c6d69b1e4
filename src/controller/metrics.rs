//! Prometheus metrics of the operator: reconciles, errors, durations, instances by state and
//! trigger lateness (from a partition's trigger instant to its instance existing).

use std::sync::Arc;
use std::time::Instant;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use charon_core::resources::InstanceState;

use super::context::Context;

/// Label set naming a controller.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ControllerLabels {
    /// `workflow`, `instance` or `backfill`.
    pub controller: String,
}

/// Label set naming a controller and what kind of error it met.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    /// `workflow`, `instance` or `backfill`.
    pub controller: String,
    /// What kind of failure (`conflict`, `server`, `connection`, `refused`, `panic`…).
    pub kind: String,
}

/// Label set naming an instance state.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StateLabels {
    /// The state, as in `status.state`.
    pub state: String,
}

/// Label set naming a pool.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PoolLabels {
    /// The Pool's name.
    pub pool: String,
}

/// Bucket bounds of `charon_pool_wait_seconds`: seconds to hours.
const WAIT_BUCKETS: [f64; 16] = [
    0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0, 7200.0,
    21600.0,
];

fn wait_histogram() -> Histogram {
    Histogram::new(WAIT_BUCKETS.iter().copied())
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

/// The operator's metrics and their registry.
pub struct Metrics {
    registry: Registry,
    reconciles: Family<ControllerLabels, Counter>,
    errors: Family<ErrorLabels, Counter>,
    panics: Family<ControllerLabels, Counter>,
    durations: HistogramFamily<ControllerLabels>,
    instances: Family<StateLabels, Gauge>,
    lateness: Histogram,
    leader: Gauge,
    shards_held: Gauge,
    liveness: super::liveness::Liveness,
    logs_archived: Counter,
    log_bytes_archived: Counter,
    log_archive_failures: Counter,
    log_archive_duration: Histogram,
    pool_used: Family<PoolLabels, Gauge>,
    pool_slots: Family<PoolLabels, Gauge>,
    pool_queued: Family<PoolLabels, Gauge>,
    pool_wait: HistogramFamily<PoolLabels>,
}

/// Bucket bounds of `charon_trigger_lateness_seconds`.
const LATENESS_BUCKETS: [f64; 18] = [
    0.05, 0.1, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0,
    1800.0, 3600.0,
];

fn duration_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.0005, 2.0, 16))
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("charon");
        let reconciles = Family::<ControllerLabels, Counter>::default();
        let errors = Family::<ErrorLabels, Counter>::default();
        let panics = Family::<ControllerLabels, Counter>::default();
        let durations: HistogramFamily<ControllerLabels> =
            Family::new_with_constructor(duration_histogram as fn() -> Histogram);
        let instances = Family::<StateLabels, Gauge>::default();
        // Fine steps around the seconds that matter for a scheduler (the 2 s target among
        // them), then coarse ones up to an hour.
        let lateness = Histogram::new(LATENESS_BUCKETS.iter().copied());
        let leader = Gauge::default();
        let shards_held = Gauge::default();
        registry.register(
            "shards_held",
            "Shards whose Lease this replica holds (with --shards N)",
            shards_held.clone(),
        );
        registry.register("reconciles", "Reconciles run", reconciles.clone());
        registry.register(
            "reconcile_errors",
            "Reconciles that failed and were retried",
            errors.clone(),
        );
        registry.register(
            "reconcile_panics",
            "Reconciles that panicked (a bug), caught and retried",
            panics.clone(),
        );
        registry.register(
            "reconcile_duration_seconds",
            "Time spent in one reconcile",
            durations.clone(),
        );
        registry.register("instances", "WorkflowInstances by state", instances.clone());
        registry.register(
            "trigger_lateness_seconds",
            "Delay from a partition's trigger instant to its instance being created",
            lateness.clone(),
        );
        registry.register(
            "leader",
            "1 while this replica holds the leader lease",
            leader.clone(),
        );
        let logs_archived = Counter::default();
        let log_bytes_archived = Counter::default();
        let log_archive_failures = Counter::default();
        let log_archive_duration = duration_histogram();
        registry.register(
            "logs_archived",
            "Attempt logs copied into the log store",
            logs_archived.clone(),
        );
        registry.register(
            "log_archived_bytes",
            "Bytes of attempt logs copied into the log store",
            log_bytes_archived.clone(),
        );
        registry.register(
            "log_archive_failures",
            "Tries to archive a log that failed (retried)",
            log_archive_failures.clone(),
        );
        registry.register(
            "log_archive_duration_seconds",
            "Time to copy one attempt's log into the log store",
            log_archive_duration.clone(),
        );
        let pool_used = Family::<PoolLabels, Gauge>::default();
        let pool_slots = Family::<PoolLabels, Gauge>::default();
        let pool_queued = Family::<PoolLabels, Gauge>::default();
        let pool_wait: HistogramFamily<PoolLabels> =
            Family::new_with_constructor(wait_histogram as fn() -> Histogram);
        registry.register(
            "pool_slots_used",
            "Slots of a Pool held by attempts",
            pool_used.clone(),
        );
        registry.register("pool_slots", "Slots a Pool has", pool_slots.clone());
        registry.register(
            "pool_queued",
            "Instances ready to run that wait for a Pool",
            pool_queued.clone(),
        );
        registry.register(
            "pool_wait_seconds",
            "Time from an instance being ready to run to its admission to a Pool",
            pool_wait.clone(),
        );
        Metrics {
            pool_used,
            pool_slots,
            pool_queued,
            pool_wait,
            logs_archived,
            log_bytes_archived,
            log_archive_failures,
            log_archive_duration,
            registry,
            reconciles,
            errors,
            panics,
            durations,
            instances,
            lateness,
            leader,
            shards_held,
            liveness: Default::default(),
        }
    }
}

impl Metrics {
    /// Starts timing a reconcile of `controller`; the guard records it when dropped.
    pub fn reconcile(&self, controller: &str) -> ReconcileTimer<'_> {
        let labels = ControllerLabels {
            controller: controller.to_string(),
        };
        self.reconciles.get_or_create(&labels).inc();
        ReconcileTimer {
            metrics: self,
            labels,
            start: Instant::now(),
        }
    }

    /// Counts a failed reconcile, by what kind of failure it was.
    pub fn error(&self, controller: &str, kind: &str) {
        self.errors
            .get_or_create(&ErrorLabels {
                controller: controller.to_string(),
                kind: kind.to_string(),
            })
            .inc();
    }

    /// Counts a reconcile that panicked.
    pub fn panic(&self, controller: &str) {
        self.panics
            .get_or_create(&ControllerLabels {
                controller: controller.to_string(),
            })
            .inc();
    }

    /// Records how late an instance was created after its trigger instant.
    pub fn lateness(&self, seconds: f64) {
        self.lateness.observe(seconds.max(0.0));
    }

    /// Whether the controllers make progress (`/healthz`).
    pub fn liveness(&self) -> &super::liveness::Liveness {
        &self.liveness
    }

    /// Counts one log archived: its size and how long the copy took.
    pub fn log_archived(&self, bytes: u64, took: std::time::Duration) {
        self.logs_archived.inc();
        self.log_bytes_archived.inc_by(bytes);
        self.log_archive_duration.observe(took.as_secs_f64());
    }

    /// Counts a try to archive a log that failed.
    pub fn log_archive_failed(&self) {
        self.log_archive_failures.inc();
    }

    /// Records a pool's slots, how many are held and how many instances wait for it.
    pub fn pool(&self, pool: &str, slots: u32, used: u32, queued: u32) {
        let labels = PoolLabels {
            pool: pool.to_string(),
        };
        self.pool_slots.get_or_create(&labels).set(i64::from(slots));
        self.pool_used.get_or_create(&labels).set(i64::from(used));
        self.pool_queued
            .get_or_create(&labels)
            .set(i64::from(queued));
    }

    /// Records how long an instance waited before a pool admitted it.
    pub fn pool_wait(&self, pool: &str, seconds: f64) {
        self.pool_wait
            .get_or_create(&PoolLabels {
                pool: pool.to_string(),
            })
            .observe(seconds.max(0.0));
    }

    /// Records how many shards this replica holds.
    pub fn set_shards_held(&self, held: usize) {
        self.shards_held
            .set(i64::try_from(held).unwrap_or(i64::MAX));
    }

    /// Records whether this replica leads.
    pub fn set_leader(&self, leading: bool) {
        self.leader.set(i64::from(leading));
    }

    /// The metrics in the Prometheus text format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

/// Records a reconcile's duration when dropped.
pub struct ReconcileTimer<'a> {
    metrics: &'a Metrics,
    labels: ControllerLabels,
    start: Instant,
}

impl Drop for ReconcileTimer<'_> {
    fn drop(&mut self) {
        self.metrics
            .durations
            .get_or_create(&self.labels)
            .observe(self.start.elapsed().as_secs_f64());
    }
}

/// Counts cached instances by state every few seconds until `stop` resolves.
pub async fn refresh_instance_gauges(
    context: Arc<Context>,
    stop: impl std::future::Future<Output = ()>,
) {
    let refresh = async {
        loop {
            let mut counts = [0i64; InstanceState::ALL.len()];
            for instance in context.instances.state() {
                let state = instance
                    .status
                    .as_ref()
                    .map(|s| s.state)
                    .unwrap_or_default();
                if let Some(i) = InstanceState::ALL.iter().position(|s| *s == state) {
                    counts[i] += 1;
                }
            }
            for (state, count) in InstanceState::ALL.iter().zip(counts) {
                context
                    .metrics
                    .instances
                    .get_or_create(&StateLabels {
                        state: state.as_str().to_string(),
                    })
                    .set(count);
            }
            tokio::time::sleep(std::time::Duration::from_secs(5)).await;
        }
    };
    tokio::select! {
        () = refresh => {}
        () = stop => {}
    }
}
