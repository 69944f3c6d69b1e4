//! The Job controller, after Kubernetes 1.33's: it creates pods from `spec.template`
//! (completions, parallelism, `Indexed` mode), tracks finished pods with the
//! `batch.kubernetes.io/job-tracking` finalizer and `status.uncountedTerminatedPods`, and
//! ends Jobs with `SuccessCriteriaMet` + `Complete` or `FailureTarget` + `Failed`
//! (`BackoffLimitExceeded`, `DeadlineExceeded`, and with `backoffLimitPerIndex`
//! `FailedIndexes` or `MaxFailedIndexesExceeded`), honouring suspend, replacement back-off
//! (per index with `backoffLimitPerIndex`) and `ttlSecondsAfterFinished`.
//!
//! It is level-triggered: any change to a Job or one of its pods queues the Job, timers
//! queue it again for deadlines, back-off and TTL, and every Job that may still have work
//! to do (not finished, not settled in suspension, or left with a failed write) is re-checked
//! every few seconds. Settled Jobs cost nothing until they or their pods change, and a
//! Job's pods are found through the store's owner index, so the work per change follows the
//! Job's own pods rather than everything stored.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::time::Instant;

use crate::controllers::{self, Recorder, builtin, has_finalizer, text};
use crate::gc::{Propagation, delete_object};
use crate::lock::lock;
use crate::registry::ResourceType;
use crate::state::AppState;
use crate::store::{Change, Write};

/// The finalizer that keeps a finished pod until the controller has counted it.
pub const TRACKING_FINALIZER: &str = "batch.kubernetes.io/job-tracking";
const INDEX_KEY: &str = "batch.kubernetes.io/job-completion-index";
/// How many pods of its index failed before a pod was created (`backoffLimitPerIndex`).
const FAILURE_COUNT_KEY: &str = "batch.kubernetes.io/job-index-failure-count";
/// Failures a pod failure policy ignored; they still lengthen the index's back-off.
const IGNORED_FAILURE_COUNT_KEY: &str = "batch.kubernetes.io/job-index-ignored-failure-count";
/// How often Jobs that are not settled are looked at again.
const RESYNC: Duration = Duration::from_secs(5);
const BACKOFF_MESSAGE: &str = "Job has reached the specified backoff limit";
const DEADLINE_MESSAGE: &str = "Job was active longer than specified deadline";
const SUCCESS_MESSAGE: &str = "Reached expected number of succeeded pods";
const FAILED_INDEXES_MESSAGE: &str = "Job has failed indexes";
const MAX_FAILED_INDEXES_MESSAGE: &str =
    "Job has exceeded the specified maximal number of failed indexes";

/// How the controller paces itself.
#[derive(Clone, Debug)]
pub struct JobConfig {
    /// Delay before replacing the first failed pod; it doubles per failure.
    pub backoff: Duration,
    /// Longest replacement delay.
    pub backoff_max: Duration,
}

struct Ctx {
    state: Arc<AppState>,
    config: JobConfig,
    jobs: ResourceType,
    pods: ResourceType,
    recorder: Recorder,
    /// When each Job (by uid) last saw its failed count go up.
    last_failure: std::sync::Mutex<HashMap<String, (i64, Instant)>>,
}

type Key = (String, String);

/// What one look at a Job leaves to do.
struct Outcome {
    /// Look again after this long (deadlines, back-off, TTL).
    after: Option<Duration>,
    /// Nothing can change for the Job until it or one of its pods does (it is finished or
    /// suspended with nothing left to stop, and every write went through): the periodic
    /// resync skips it.
    settled: bool,
}

/// Runs the controller until the task is aborted.
pub async fn run(state: Arc<AppState>, config: JobConfig) {
    let (Some(jobs), Some(pods)) = (
        builtin(&state.store, "batch", "jobs"),
        builtin(&state.store, "", "pods"),
    ) else {
        return;
    };
    let ctx = Ctx {
        state,
        config,
        jobs,
        pods,
        recorder: Recorder::new("job-controller", None),
        last_failure: std::sync::Mutex::new(HashMap::new()),
    };
    let mut events = ctx.state.store.changes();
    let mut dirty: HashSet<Key> = all_jobs(&ctx);
    let mut timers: HashMap<Key, Instant> = HashMap::new();
    // Jobs the resync looks at: those whose last look did not leave them settled.
    let mut unsettled: HashSet<Key> = HashSet::new();
    let mut resync = tokio::time::interval(RESYNC);
    // A slow pass is followed by a full period, not by the ticks it missed.
    resync.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        for (i, key) in std::mem::take(&mut dirty).into_iter().enumerate() {
            controllers::pace(i).await;
            timers.remove(&key);
            let outcome = reconcile(&ctx, &key);
            if let Some(after) = outcome.after {
                timers.insert(key.clone(), Instant::now() + after);
            }
            if outcome.settled {
                unsettled.remove(&key);
            } else {
                unsettled.insert(key);
            }
        }
        let next = timers.values().min().copied();
        let far = Instant::now() + Duration::from_secs(3600);
        tokio::select! {
            open = events.next_batch(|change| match change {
                Change::Event(e) => observe(&ctx, &e, &mut dirty),
                Change::Missed => dirty.extend(all_jobs(&ctx)),
            }) => if !open { return },
            _ = tokio::time::sleep_until(next.unwrap_or(far)), if next.is_some() => {
                let now = Instant::now();
                let due: Vec<Key> = timers.iter().filter(|(_, at)| **at <= now).map(|(k, _)| k.clone()).collect();
                for key in due {
                    timers.remove(&key);
                    dirty.insert(key);
                }
            }
            _ = resync.tick() => dirty.extend(unsettled.iter().cloned()),
        }
    }
}

fn all_jobs(ctx: &Ctx) -> HashSet<Key> {
    ctx.state.store.names(&ctx.jobs).into_iter().collect()
}

/// A string field of `v`, or "".
fn field<'a>(v: &'a Value, name: &str) -> &'a str {
    v.get(name).and_then(Value::as_str).unwrap_or_default()
}

/// The reference to the Job that controls `pod`.
fn controller_ref(pod: &Value) -> Option<&Value> {
    pod.get("metadata")?
        .get("ownerReferences")?
        .as_array()?
        .iter()
        .find(|r| {
            r.get("controller").and_then(Value::as_bool) == Some(true)
                && field(r, "kind") == "Job"
                && field(r, "apiVersion").starts_with("batch/")
        })
}

/// The Job that controls `pod`, as (name, uid).
fn controller_job(pod: &Value) -> Option<(String, String)> {
    controller_ref(pod).map(|r| (field(r, "name").to_string(), field(r, "uid").to_string()))
}

fn observe(ctx: &Ctx, e: &crate::store::Event, dirty: &mut HashSet<Key>) {
    match e.type_key.as_str() {
        "batch/jobs" => {
            if e.kind == "DELETED" {
                release_pods(ctx, &e.namespace, text(&e.object, "/metadata/uid"));
                lock(&ctx.last_failure).remove(text(&e.object, "/metadata/uid"));
            } else {
                dirty.insert((
                    e.namespace.clone(),
                    text(&e.object, "/metadata/name").into(),
                ));
            }
        }
        "/pods" => match controller_job(&e.object) {
            Some((job, _)) => {
                dirty.insert((e.namespace.clone(), job));
            }
            None => {
                if e.kind != "DELETED" && has_finalizer(&e.object, TRACKING_FINALIZER) {
                    // An orphan (its Job was deleted with orphan propagation): nobody counts
                    // it any more.
                    controllers::remove_finalizer(
                        &ctx.state.store,
                        &ctx.pods,
                        &e.namespace,
                        text(&e.object, "/metadata/name"),
                        TRACKING_FINALIZER,
                    );
                }
            }
        },
        _ => {}
    }
}

/// Removes the tracking finalizer from every pod of the Job `uid`, which is gone.
fn release_pods(ctx: &Ctx, namespace: &str, uid: &str) {
    release(ctx, namespace, &pods_of(ctx, namespace, uid));
}

/// Removes the tracking finalizer from `pods`, whose Job is gone or going.
fn release(ctx: &Ctx, namespace: &str, pods: &[Value]) {
    for pod in pods {
        if has_finalizer(pod, TRACKING_FINALIZER) {
            controllers::remove_finalizer(
                &ctx.state.store,
                &ctx.pods,
                namespace,
                text(pod, "/metadata/name"),
                TRACKING_FINALIZER,
            );
        }
    }
}

/// The pods in `namespace` whose controller is the Job `uid`, through the owner index.
fn pods_of(ctx: &Ctx, namespace: &str, uid: &str) -> Vec<Value> {
    ctx.state.store.dependents(&ctx.pods, namespace, uid, |p| {
        controller_ref(p).is_some_and(|r| field(r, "uid") == uid)
    })
}

fn phase(pod: &Value) -> &str {
    text(pod, "/status/phase")
}

fn terminal(pod: &Value) -> bool {
    matches!(phase(pod), "Succeeded" | "Failed")
}

fn deleting(obj: &Value) -> bool {
    obj.pointer("/metadata/deletionTimestamp").is_some()
}

fn int(v: &Value, pointer: &str) -> Option<i64> {
    v.pointer(pointer).and_then(Value::as_i64)
}

fn strings(v: &Value, pointer: &str) -> Vec<String> {
    v.pointer(pointer)
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|s| s.as_str().map(str::to_string))
        .collect()
}

fn condition_true(status: &Value, type_: &str) -> bool {
    status
        .get("conditions")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .any(|c| text(c, "/type") == type_ && text(c, "/status") == "True")
}

fn condition(type_: &str, status: bool, reason: &str, message: &str) -> Value {
    let now = controllers::now();
    json!({
        "type": type_, "status": if status { "True" } else { "False" },
        "lastProbeTime": now, "lastTransitionTime": now,
        "reason": reason, "message": message,
    })
}

/// Sets a condition, keeping its place (and transition time when its status stays).
fn set_condition(status: &mut Value, new: Value) {
    if !status.get("conditions").is_some_and(Value::is_array) {
        status["conditions"] = json!([]);
    }
    let Some(list) = status["conditions"].as_array_mut() else {
        return;
    };
    match list.iter_mut().find(|c| c["type"] == new["type"]) {
        Some(existing) if existing["status"] == new["status"] => {}
        Some(existing) => *existing = new,
        None => list.push(new),
    }
}

/// A pod's completion index, from its annotation or else its label.
fn pod_index(pod: &Value) -> Option<i64> {
    let metadata = pod.get("metadata")?;
    ["annotations", "labels"]
        .iter()
        .find_map(|m| metadata.get(*m)?.get(INDEX_KEY)?.as_str()?.parse().ok())
}

/// Parses `1,3-5` into indexes.
fn parse_indexes(s: &str) -> BTreeSet<i64> {
    let mut out = BTreeSet::new();
    for part in s.split(',').filter(|p| !p.is_empty()) {
        match part.split_once('-') {
            Some((a, b)) => {
                if let (Ok(a), Ok(b)) = (a.parse::<i64>(), b.parse::<i64>()) {
                    out.extend(a..=b);
                }
            }
            None => {
                if let Ok(i) = part.parse() {
                    out.insert(i);
                }
            }
        }
    }
    out
}

/// Formats indexes as the API does: ranges of three or more as `a-b`.
fn format_indexes(set: &BTreeSet<i64>) -> String {
    let mut parts = Vec::new();
    let mut iter = set.iter().copied().peekable();
    while let Some(start) = iter.next() {
        let mut end = start;
        while iter.peek() == Some(&(end + 1)) {
            end += 1;
            iter.next();
        }
        match end - start {
            0 => parts.push(start.to_string()),
            1 => {
                parts.push(start.to_string());
                parts.push(end.to_string());
            }
            _ => parts.push(format!("{start}-{end}")),
        }
    }
    parts.join(",")
}

/// A pod's `job-index-failure-count` annotation (0 when absent or not a number).
fn failure_count(pod: &Value, key: &str) -> i64 {
    pod.pointer("/metadata/annotations")
        .and_then(|a| a.get(key))
        .and_then(Value::as_str)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

/// Every failure of the pod's index before it, ignored ones included, as the back-off
/// counts them.
fn absolute_failure_count(pod: &Value) -> i64 {
    failure_count(pod, FAILURE_COUNT_KEY) + failure_count(pod, IGNORED_FAILURE_COUNT_KEY)
}

/// When a pod finished: its containers' last `finishedAt`, else its deletion, else its
/// creation (`getFinishedTime`).
fn finished_at(pod: &Value) -> Option<chrono::DateTime<chrono::Utc>> {
    let containers = ["/status/initContainerStatuses", "/status/containerStatuses"]
        .into_iter()
        .flat_map(|f| {
            pod.pointer(f)
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
        })
        .filter_map(|c| controllers::parse_time(text(c, "/state/terminated/finishedAt")))
        .max();
    containers
        .or_else(|| controllers::parse_time(text(pod, "/metadata/deletionTimestamp")))
        .or_else(|| controllers::parse_time(text(pod, "/metadata/creationTimestamp")))
}

/// What `backoffLimitPerIndex` makes of a Job's pods in one look.
#[derive(Default)]
struct PerIndex {
    /// The limit, when the Job is Indexed and sets one.
    limit: Option<i64>,
    /// `status.failedIndexes` and the indexes whose last pod just used up the limit.
    failed: BTreeSet<i64>,
    /// For an index still to be retried, its last failed pod: the real controller keeps it
    /// (tracking finalizer on, not yet counted) until a replacement exists, since it carries
    /// the index's failure count and failure time.
    delayed: HashMap<i64, Value>,
}

impl PerIndex {
    fn of(spec: &Value, status: &Value, pods: &[Value], releasing: bool) -> PerIndex {
        let limit = match text(spec, "/completionMode") {
            "Indexed" => int(spec, "/backoffLimitPerIndex"),
            _ => None,
        };
        let Some(limit) = limit else {
            return PerIndex::default();
        };
        let completions = int(spec, "/completions").unwrap_or(0);
        let valid = |pod: &Value| pod_index(pod).filter(|i| (0..completions).contains(i));
        let tracked_failure =
            |pod: &Value| has_finalizer(pod, TRACKING_FINALIZER) && phase(pod) == "Failed";
        let mut failed: BTreeSet<i64> = parse_indexes(text(status, "/failedIndexes"))
            .into_iter()
            .filter(|i| *i < completions)
            .collect();
        for pod in pods.iter().filter(|p| tracked_failure(p)) {
            if let Some(i) = valid(pod)
                && failure_count(pod, FAILURE_COUNT_KEY) >= limit
            {
                failed.insert(i);
            }
        }
        let mut delayed: HashMap<i64, Value> = HashMap::new();
        if !releasing {
            let mut settled = parse_indexes(text(status, "/completedIndexes"));
            settled.extend(failed.iter().copied());
            for pod in pods {
                let running = !terminal(pod) && !deleting(pod);
                let succeeded = phase(pod) == "Succeeded" && has_finalizer(pod, TRACKING_FINALIZER);
                if let Some(i) = valid(pod).filter(|_| running || succeeded) {
                    settled.insert(i);
                }
            }
            for pod in pods.iter().filter(|p| tracked_failure(p)) {
                let Some(i) = valid(pod).filter(|i| !settled.contains(i)) else {
                    continue;
                };
                let later = delayed.get(&i).is_none_or(|last| {
                    absolute_failure_count(last) <= absolute_failure_count(pod)
                        && finished_at(pod) >= finished_at(last)
                });
                if later {
                    delayed.insert(i, pod.clone());
                }
            }
        }
        PerIndex {
            limit: Some(limit),
            failed,
            delayed,
        }
    }

    /// Whether `pod` is one whose counting waits for its replacement.
    fn delays(&self, pod: &Value) -> bool {
        let uid = text(pod, "/metadata/uid");
        self.delayed
            .values()
            .any(|p| text(p, "/metadata/uid") == uid)
    }

    /// How long index `i` still waits before its next pod (`getRemainingTimePerIndex`):
    /// the back-off doubles with each failure of the index, from the last one's end.
    fn remaining(&self, config: &JobConfig, i: i64) -> Duration {
        let Some(last) = self.delayed.get(&i) else {
            return Duration::ZERO;
        };
        let failures = absolute_failure_count(last) + 1;
        let exponent = u32::try_from((failures - 1).clamp(0, 20)).unwrap_or(20);
        let delay = config
            .backoff
            .saturating_mul(2u32.saturating_pow(exponent))
            .min(config.backoff_max);
        let elapsed = finished_at(last)
            .and_then(|t| (chrono::Utc::now() - t).to_std().ok())
            .unwrap_or(Duration::ZERO);
        delay.saturating_sub(elapsed)
    }

    /// The failure count a new pod of index `i` starts with.
    fn next_count(&self, i: i64) -> i64 {
        self.delayed
            .get(&i)
            .map_or(0, |p| failure_count(p, FAILURE_COUNT_KEY) + 1)
    }
}

/// Writes the Job's status when it changed; the Job as stored after, `None` when it is gone
/// or the write failed.
fn write_status(ctx: &Ctx, job: &Value, status: &Value) -> Option<Value> {
    if job.get("status") == Some(status) {
        return Some(job.clone());
    }
    let name = text(job, "/metadata/name");
    controllers::write_status(
        &ctx.state.store,
        &ctx.jobs,
        text(job, "/metadata/namespace"),
        name,
        text(job, "/metadata/uid"),
        status,
    )
    .unwrap_or_else(|err| {
        tracing::debug!(%err, job = name, "writing job status");
        None
    })
}

/// Brings one Job closer to its spec; says when to look again and whether the periodic
/// resync still needs to.
fn reconcile(ctx: &Ctx, key: &Key) -> Outcome {
    let (ns, name) = key;
    let Ok(job) = ctx.state.store.get(&ctx.jobs, ns, name) else {
        // Gone: its DELETED event releases its pods.
        return Outcome {
            after: None,
            settled: true,
        };
    };
    let mut settled = false;
    let after = sync(ctx, ns, job, &mut settled);
    Outcome { after, settled }
}

/// [`reconcile`] for the stored `job` in `ns`; sets `settled` when nothing is left for a
/// resync.
fn sync(ctx: &Ctx, ns: &str, job: Value, settled: &mut bool) -> Option<Duration> {
    let store = &ctx.state.store;
    let uid = text(&job, "/metadata/uid").to_string();
    let pods = pods_of(ctx, ns, &uid);
    if deleting(&job) {
        release(ctx, ns, &pods);
        return None;
    }
    let spec = job.get("spec").cloned().unwrap_or(json!({}));
    let mut status = job.get("status").cloned().unwrap_or(json!({}));
    if !status.is_object() {
        status = json!({});
    }
    let finished = condition_true(&status, "Complete") || condition_true(&status, "Failed");
    let indexed = text(&spec, "/completionMode") == "Indexed";
    let releasing =
        condition_true(&status, "FailureTarget") || condition_true(&status, "SuccessCriteriaMet");
    let per_index = if finished {
        PerIndex::default()
    } else {
        PerIndex::of(&spec, &status, &pods, releasing)
    };

    // Count pods that finished, in the order the real controller does: record them as
    // uncounted, drop their finalizers, then move them into the counters.
    let mut uncounted_ok = strings(&status, "/uncountedTerminatedPods/succeeded");
    let mut uncounted_failed = strings(&status, "/uncountedTerminatedPods/failed");
    let mut newly = false;
    let mut index_of: HashMap<String, Option<i64>> = HashMap::new();
    for pod in &pods {
        let puid = text(pod, "/metadata/uid").to_string();
        index_of.insert(puid.clone(), pod_index(pod));
        if !has_finalizer(pod, TRACKING_FINALIZER)
            || !terminal(pod)
            || finished
            || per_index.delays(pod)
        {
            continue;
        }
        let list = if phase(pod) == "Succeeded" {
            &mut uncounted_ok
        } else {
            &mut uncounted_failed
        };
        if !list.contains(&puid) {
            list.push(puid);
            newly = true;
        }
    }
    let mut job = job;
    if newly {
        status["uncountedTerminatedPods"] = json!({});
        if !uncounted_ok.is_empty() {
            status["uncountedTerminatedPods"]["succeeded"] = json!(uncounted_ok);
        }
        if !uncounted_failed.is_empty() {
            status["uncountedTerminatedPods"]["failed"] = json!(uncounted_failed);
        }
        job = write_status(ctx, &job, &status)?;
    }
    for pod in &pods {
        let puid = text(pod, "/metadata/uid");
        let counted = uncounted_ok
            .iter()
            .chain(&uncounted_failed)
            .any(|u| u == puid);
        let releasable = counted || (deleting(pod) && terminal(pod) && !per_index.delays(pod));
        if has_finalizer(pod, TRACKING_FINALIZER) && (finished || releasable) {
            controllers::remove_finalizer(
                store,
                &ctx.pods,
                ns,
                text(pod, "/metadata/name"),
                TRACKING_FINALIZER,
            );
        }
    }
    let mut succeeded = int(&status, "/succeeded").unwrap_or(0);
    let mut failed = int(&status, "/failed").unwrap_or(0);
    let mut completed = parse_indexes(text(&status, "/completedIndexes"));
    for puid in uncounted_ok.drain(..) {
        match index_of.get(&puid).copied().flatten() {
            Some(i) if indexed => {
                completed.insert(i);
            }
            _ => succeeded += 1,
        }
    }
    if indexed {
        succeeded = i64::try_from(completed.len()).unwrap_or(i64::MAX);
    }
    let new_failures = i64::try_from(uncounted_failed.len()).unwrap_or(0);
    failed += new_failures;
    uncounted_failed.clear();
    if new_failures > 0 {
        lock(&ctx.last_failure).insert(uid.clone(), (failed, Instant::now()));
    }
    status["uncountedTerminatedPods"] = json!({});
    set_count(&mut status, "succeeded", succeeded);
    set_count(&mut status, "failed", failed);
    if indexed && !completed.is_empty() {
        status["completedIndexes"] = json!(format_indexes(&completed));
    }
    if per_index.limit.is_some() {
        // Set (if empty) whenever the limit is, as the real controller does.
        status["failedIndexes"] = json!(format_indexes(&per_index.failed));
    }

    let active: Vec<&Value> = pods
        .iter()
        .filter(|p| !terminal(p) && !deleting(p))
        .collect();
    let terminating = pods.iter().filter(|p| !terminal(p) && deleting(p)).count();
    let ready = active
        .iter()
        .filter(|p| {
            p.pointer("/status/conditions")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .any(|c| text(c, "/type") == "Ready" && text(c, "/status") == "True")
        })
        .count();
    let set_active = |status: &mut Value, active: usize, terminating: usize, ready: usize| {
        set_count(status, "active", i64::try_from(active).unwrap_or(0));
        status["ready"] = json!(ready);
        status["terminating"] = json!(terminating);
    };
    set_active(&mut status, active.len(), terminating, ready);

    if finished {
        let written = write_status(ctx, &job, &status).is_some();
        // Finalizers just removed come back as pod events; a removal that failed needs
        // another look.
        *settled = written && !pods.iter().any(|p| has_finalizer(p, TRACKING_FINALIZER));
        return ttl(ctx, &job, &status);
    }

    // Suspension.
    let suspend = spec.get("suspend").and_then(Value::as_bool) == Some(true);
    let ending =
        condition_true(&status, "FailureTarget") || condition_true(&status, "SuccessCriteriaMet");
    // The real controller judges the backoff limit before it looks at suspension: pods
    // stopped by a suspension count as failed, and a Job past its limit fails even while
    // suspended.
    let past_limit = failed > int(&spec, "/backoffLimit").unwrap_or(6);
    if suspend && !ending && !past_limit {
        if per_index.limit.is_some() {
            // The real controller releases the pods it stops for a suspension, so they never
            // count as failures (which would use up their index's limit here).
            release(
                ctx,
                ns,
                &active.iter().map(|p| (*p).clone()).collect::<Vec<_>>(),
            );
        }
        for pod in &active {
            delete_pod(ctx, &job, pod);
        }
        if !condition_true(&status, "Suspended") {
            set_condition(
                &mut status,
                condition("Suspended", true, "JobSuspended", "Job suspended"),
            );
            ctx.recorder
                .record(store, &job, None, "Normal", "Suspended", "Job suspended");
        }
        set_active(&mut status, 0, terminating + active.len(), 0);
        let written = write_status(ctx, &job, &status).is_some();
        // Pods being stopped come back as pod events; a delete that failed needs another look.
        *settled = written && active.is_empty();
        return None;
    }
    if condition_true(&status, "Suspended") {
        set_condition(
            &mut status,
            condition("Suspended", false, "JobResumed", "Job resumed"),
        );
        status["startTime"] = json!(controllers::now());
        ctx.recorder
            .record(store, &job, None, "Normal", "Resumed", "Job resumed");
    }
    if status.get("startTime").is_none() {
        status["startTime"] = json!(controllers::now());
    }

    let parallelism = int(&spec, "/parallelism").unwrap_or(1).max(0);
    let completions = int(&spec, "/completions");
    let backoff_limit = int(&spec, "/backoffLimit").unwrap_or(6);
    let on_failure = text(&spec, "/template/spec/restartPolicy") == "OnFailure";
    let restarts: i64 = active
        .iter()
        .flat_map(|p| {
            ["/status/containerStatuses", "/status/initContainerStatuses"]
                .into_iter()
                .flat_map(move |f| p.pointer(f).and_then(Value::as_array).into_iter().flatten())
        })
        .filter_map(|c| c.get("restartCount").and_then(Value::as_i64))
        .sum();
    let past_on_failure = on_failure
        && if backoff_limit == 0 {
            restarts > 0
        } else {
            restarts >= backoff_limit
        };
    let started = status
        .get("startTime")
        .and_then(Value::as_str)
        .and_then(controllers::parse_time);
    let deadline_left = int(&spec, "/activeDeadlineSeconds")
        .zip(started)
        .map(|(s, t)| {
            let end = t + chrono::Duration::seconds(s);
            (end - chrono::Utc::now())
                .to_std()
                .unwrap_or(Duration::ZERO)
        });
    let mut requeue: Option<Duration> = None;
    if !ending {
        let success = match (indexed, completions) {
            (true, Some(c)) => i64::try_from(completed.len()).unwrap_or(0) >= c,
            (false, Some(c)) => succeeded >= c,
            (_, None) => succeeded > 0 && active.is_empty(),
        };
        if failed > backoff_limit || past_on_failure {
            set_condition(
                &mut status,
                condition(
                    "FailureTarget",
                    true,
                    "BackoffLimitExceeded",
                    BACKOFF_MESSAGE,
                ),
            );
        } else if deadline_left == Some(Duration::ZERO) {
            set_condition(
                &mut status,
                condition("FailureTarget", true, "DeadlineExceeded", DEADLINE_MESSAGE),
            );
        } else if let Some((reason, message)) = index_failure(&spec, &per_index, &completed) {
            set_condition(
                &mut status,
                condition("FailureTarget", true, reason, message),
            );
        } else if success {
            set_condition(
                &mut status,
                condition(
                    "SuccessCriteriaMet",
                    true,
                    "CompletionsReached",
                    SUCCESS_MESSAGE,
                ),
            );
        } else if let Some(left) = deadline_left {
            requeue = Some(left);
        }
    }
    if condition_true(&status, "FailureTarget") {
        for pod in &active {
            delete_pod(ctx, &job, pod);
        }
        // A failed pod kept for its index's retry is counted on the next look, before the
        // Job may be Failed.
        let gone = active.is_empty() && terminating == 0 && per_index.delayed.is_empty();
        set_active(&mut status, 0, terminating + active.len(), 0);
        if gone {
            let target = status["conditions"]
                .as_array()
                .and_then(|l| l.iter().find(|c| c["type"] == "FailureTarget"))
                .cloned()
                .unwrap_or(json!({}));
            let reason = text(&target, "/reason").to_string();
            let message = text(&target, "/message").to_string();
            set_condition(&mut status, condition("Failed", true, &reason, &message));
            ctx.recorder
                .record(store, &job, None, "Warning", &reason, &message);
        }
        write_status(ctx, &job, &status);
        return requeue;
    }
    if condition_true(&status, "SuccessCriteriaMet") {
        for pod in &active {
            delete_pod(ctx, &job, pod);
        }
        if active.is_empty() && terminating == 0 {
            set_condition(
                &mut status,
                condition("Complete", true, "CompletionsReached", SUCCESS_MESSAGE),
            );
            status["completionTime"] = json!(controllers::now());
            ctx.recorder
                .record(store, &job, None, "Normal", "Completed", "Job completed");
        } else {
            set_active(&mut status, 0, terminating + active.len(), 0);
        }
        let written = write_status(ctx, &job, &status);
        return written.and_then(|j| ttl(ctx, &j, &status));
    }

    // Start pods, after the back-off that follows failures.
    let mut wait = None;
    // With a per-index limit each index backs off on its own (below).
    if failed > 0 && per_index.limit.is_none() {
        let last = lock(&ctx.last_failure).get(&uid).copied();
        if let Some((_, at)) = last {
            let exponent = u32::try_from((failed - 1).clamp(0, 20)).unwrap_or(20);
            let delay = ctx
                .config
                .backoff
                .saturating_mul(2u32.saturating_pow(exponent))
                .min(ctx.config.backoff_max);
            let elapsed = at.elapsed();
            if elapsed < delay {
                wait = Some(delay - elapsed);
            }
        }
    }
    let mut created = 0usize;
    if wait.is_none() {
        let room = usize::try_from(parallelism)
            .unwrap_or(0)
            .saturating_sub(active.len());
        if indexed {
            let total = completions.unwrap_or(0);
            let busy: HashSet<i64> = active.iter().filter_map(|p| pod_index(p)).collect();
            let wanted: Vec<i64> = (0..total)
                .filter(|i| {
                    !completed.contains(i) && !busy.contains(i) && !per_index.failed.contains(i)
                })
                .take(room)
                .collect();
            for i in wanted {
                let mut annotations = Vec::new();
                if per_index.limit.is_some() {
                    let left = per_index.remaining(&ctx.config, i);
                    if !left.is_zero() {
                        wait = Some(wait.map_or(left, |w: Duration| w.min(left)));
                        continue;
                    }
                    annotations.push((FAILURE_COUNT_KEY, per_index.next_count(i).to_string()));
                }
                if create_pod(ctx, &job, Some(i), &annotations) {
                    created += 1;
                }
            }
        } else {
            let want = match completions {
                Some(c) => usize::try_from((c - succeeded).max(0))
                    .unwrap_or(0)
                    .min(usize::try_from(parallelism).unwrap_or(0)),
                None if succeeded > 0 => 0,
                None => usize::try_from(parallelism).unwrap_or(0),
            };
            for _ in active.len()..want {
                if create_pod(ctx, &job, None, &[]) {
                    created += 1;
                }
            }
        }
    }
    set_active(&mut status, active.len() + created, terminating, ready);
    write_status(ctx, &job, &status);
    match (requeue, wait) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// The failure `backoffLimitPerIndex` leads to, if any: more failed indexes than
/// `maxFailedIndexes` fail the Job at once; otherwise it fails once every index has
/// either succeeded or failed, and some failed.
fn index_failure(
    spec: &Value,
    per_index: &PerIndex,
    completed: &BTreeSet<i64>,
) -> Option<(&'static str, &'static str)> {
    per_index.limit?;
    let failed = i64::try_from(per_index.failed.len()).unwrap_or(i64::MAX);
    let done = failed + i64::try_from(completed.len()).unwrap_or(0);
    if int(spec, "/maxFailedIndexes").is_some_and(|max| failed > max) {
        Some(("MaxFailedIndexesExceeded", MAX_FAILED_INDEXES_MESSAGE))
    } else if failed > 0 && done >= int(spec, "/completions").unwrap_or(0) {
        Some(("FailedIndexes", FAILED_INDEXES_MESSAGE))
    } else {
        None
    }
}

fn set_count(status: &mut Value, field: &str, n: i64) {
    if let Some(o) = status.as_object_mut() {
        if n == 0 {
            o.remove(field);
        } else {
            o.insert(field.into(), json!(n));
        }
    }
}

/// Deletes a finished Job once `ttlSecondsAfterFinished` has passed.
fn ttl(ctx: &Ctx, job: &Value, status: &Value) -> Option<Duration> {
    let seconds = int(job, "/spec/ttlSecondsAfterFinished")?;
    let finished_at = status
        .get("conditions")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter(|c| {
            matches!(text(c, "/type"), "Complete" | "Failed") && text(c, "/status") == "True"
        })
        .filter_map(|c| controllers::parse_time(text(c, "/lastTransitionTime")))
        .next()?;
    let left = (finished_at + chrono::Duration::seconds(seconds) - chrono::Utc::now())
        .to_std()
        .unwrap_or(Duration::ZERO);
    if !left.is_zero() {
        return Some(left);
    }
    let ns = text(job, "/metadata/namespace");
    let name = text(job, "/metadata/name");
    match delete_object(&ctx.state, &ctx.jobs, ns, name, Propagation::Background) {
        Ok(_) => None,
        Err(err) if err.code == 404 => None,
        Err(err) => {
            tracing::debug!(%err, job = name, "deleting a finished job");
            // Try again as the periodic resync used to.
            Some(RESYNC)
        }
    }
}

fn delete_pod(ctx: &Ctx, job: &Value, pod: &Value) {
    let ns = text(pod, "/metadata/namespace");
    let name = text(pod, "/metadata/name");
    match delete_object(&ctx.state, &ctx.pods, ns, name, Propagation::Background) {
        Ok(_) => ctx.recorder.record(
            &ctx.state.store,
            job,
            None,
            "Normal",
            "SuccessfulDelete",
            &format!("Deleted pod: {name}"),
        ),
        Err(err) => tracing::debug!(%err, pod = name, "deleting a job's pod"),
    }
}

/// Creates one pod from the Job's template (with `index` in Indexed mode, and `extra`
/// annotations).
fn create_pod(ctx: &Ctx, job: &Value, index: Option<i64>, extra: &[(&str, String)]) -> bool {
    let store = &ctx.state.store;
    let ns = text(job, "/metadata/namespace");
    let job_name = text(job, "/metadata/name");
    let template = job.pointer("/spec/template").cloned().unwrap_or(json!({}));
    let mut labels = template
        .pointer("/metadata/labels")
        .cloned()
        .unwrap_or(json!({}));
    let mut annotations = template
        .pointer("/metadata/annotations")
        .cloned()
        .unwrap_or(json!({}));
    let mut spec = template.get("spec").cloned().unwrap_or(json!({}));
    let prefix = match index {
        Some(i) => format!("{job_name}-{i}-"),
        None => format!("{job_name}-"),
    };
    if !annotations.is_object() {
        annotations = json!({});
    }
    for (key, value) in extra {
        annotations[*key] = json!(value);
    }
    if let Some(i) = index {
        labels[INDEX_KEY] = json!(i.to_string());
        annotations[INDEX_KEY] = json!(i.to_string());
        if text(&spec, "/hostname").is_empty() {
            spec["hostname"] = json!(format!("{job_name}-{i}"));
        }
        for field in ["initContainers", "containers"] {
            for c in spec
                .get_mut(field)
                .and_then(Value::as_array_mut)
                .into_iter()
                .flatten()
            {
                if !c.get("env").is_some_and(Value::is_array) {
                    c["env"] = json!([]);
                }
                if let Some(env) = c["env"].as_array_mut()
                    && !env.iter().any(|e| e["name"] == "JOB_COMPLETION_INDEX")
                {
                    env.push(
                        json!({"name": "JOB_COMPLETION_INDEX", "valueFrom": {"fieldRef": {
                            "apiVersion": "v1",
                            "fieldPath": format!("metadata.labels['{INDEX_KEY}']"),
                        }}}),
                    );
                }
            }
        }
    }
    // The template's finalizers are copied, as the real controller's GetPodFromTemplate
    // does, and the tracking one is added.
    let mut finalizers = strings(&template, "/metadata/finalizers");
    if !finalizers.iter().any(|f| f == TRACKING_FINALIZER) {
        finalizers.push(TRACKING_FINALIZER.to_string());
    }
    let mut metadata = json!({
        "generateName": prefix,
        "labels": labels,
        "ownerReferences": [{
            "apiVersion": "batch/v1", "kind": "Job", "name": job_name,
            "uid": text(job, "/metadata/uid"), "controller": true, "blockOwnerDeletion": true,
        }],
        "finalizers": finalizers,
    });
    if annotations.as_object().is_some_and(|a| !a.is_empty()) {
        metadata["annotations"] = annotations;
    }
    // Names as the real controller's: the prefix and five random characters, retried on
    // the rare collision.
    for _ in 0..5 {
        metadata["name"] = json!(format!("{prefix}{}", controllers::random_suffix()));
        let pod = json!({"apiVersion": "v1", "kind": "Pod", "metadata": metadata, "spec": spec});
        match store.create(&ctx.pods, ns, pod, Write::default()) {
            Ok(created) => {
                ctx.recorder.record(
                    store,
                    job,
                    None,
                    "Normal",
                    "SuccessfulCreate",
                    &format!("Created pod: {}", text(&created, "/metadata/name")),
                );
                return true;
            }
            Err(err) if err.code == 409 => continue,
            Err(err) => {
                ctx.recorder.record(
                    store,
                    job,
                    None,
                    "Warning",
                    "FailedCreate",
                    &format!("Error creating: {}", err.message),
                );
                return false;
            }
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn completed_indexes_round_trip() {
        let set = parse_indexes("0,2-4,7,8");
        assert_eq!(set.iter().copied().collect::<Vec<_>>(), [0, 2, 3, 4, 7, 8]);
        assert_eq!(format_indexes(&set), "0,2-4,7,8");
    }
}
