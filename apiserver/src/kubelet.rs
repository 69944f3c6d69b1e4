//! A simulated kubelet: it "schedules" every pod onto one node and runs each container's
//! `command` + `args` as a local process (there are no images: a container without a
//! `command` fails with `RunContainerError`), reporting status the way the real kubelet does.
//!
//! Volumes: secret, configMap, downwardAPI and emptyDir volumes are written to
//! `<work dir>/<namespace>_<pod>_<uid>/volumes/<volume>/`; hostPath volumes are the host path
//! itself. Processes cannot see the real mount paths, so wherever a container's
//! `volumeMounts[].mountPath` (or something under it) appears in its command, args or env
//! values it is rewritten to that directory, and `CHARON_DEV_VOLUME_<NAME>` (the volume
//! name upper-cased, `-` and `.` as `_`) names it too. A process starts in `workingDir` when
//! that exists, else in the pod's directory.
//!
//! Output (stdout and stderr in one pipe, so in order) is kept per container instance,
//! current and previous, bounded to [`crate::logs::LOG_LIMIT`] bytes each, for `pods/log`.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::os::fd::OwnedFd;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine;
use regex::Regex;
use serde_json::{Value, json};
use tokio::io::AsyncReadExt;
use tokio::sync::{Notify, mpsc, watch};
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::Instant;

use crate::controllers::{self, Recorder, builtin, modify, text};
use crate::lock::lock;
use crate::logs::LogBuffer;
use crate::registry::ResourceType;
use crate::state::AppState;
use crate::store::{Change, Deletion, Write};

/// The IP every pod and the node report.
const LOCAL_IP: &str = "127.0.0.1";

/// Longest line kept whole; longer output is split, as the real runtime splits at 16 KiB.
const MAX_LINE: usize = 16 * 1024;

/// How the kubelet runs.
#[derive(Clone, Debug)]
pub struct KubeletConfig {
    /// The node every pod lands on.
    pub node_name: String,
    /// Images matching this never pull (a test hook).
    pub image_pull_failure: Option<Regex>,
    /// First crash-loop back-off; it doubles up to `backoff_max`.
    pub backoff: Duration,
    /// Longest crash-loop back-off.
    pub backoff_max: Duration,
    /// Where per-pod directories go.
    pub work_dir: PathBuf,
}

enum Command {
    Evict,
}

struct Worker {
    pod: watch::Sender<Option<Value>>,
    commands: mpsc::UnboundedSender<Command>,
}

struct Shared {
    state: Arc<AppState>,
    config: KubeletConfig,
    recorder: Recorder,
    scheduler: Recorder,
    pods: ResourceType,
    workers: Mutex<HashMap<String, Worker>>,
    tasks: Mutex<JoinSet<()>>,
    /// Process groups alive now, killed at shutdown whatever state their pod is in.
    groups: Mutex<HashSet<i32>>,
    stop: watch::Sender<bool>,
}

/// The running kubelet.
pub struct Kubelet {
    shared: Arc<Shared>,
    task: JoinHandle<()>,
}

fn signal_group(pgid: i32, signal: i32) {
    if pgid <= 0 {
        return;
    }
    // SAFETY: kill(2) has no memory-safety preconditions; a negative pid names the process
    // group this kubelet created with process_group(0).
    unsafe {
        libc::kill(-pgid, signal);
    }
}

impl Kubelet {
    /// Starts watching pods.
    pub fn start(state: Arc<AppState>, config: KubeletConfig) -> std::io::Result<Kubelet> {
        let pods = builtin(&state.store, "", "pods")
            .ok_or_else(|| std::io::Error::other("pods are always served"))?;
        std::fs::create_dir_all(&config.work_dir)?;
        let shared = Arc::new(Shared {
            recorder: Recorder::new("kubelet", Some(config.node_name.clone())),
            scheduler: Recorder::new("default-scheduler", None),
            state,
            config,
            pods,
            workers: Mutex::new(HashMap::new()),
            tasks: Mutex::new(JoinSet::new()),
            groups: Mutex::new(HashSet::new()),
            stop: watch::channel(false).0,
        });
        let task = tokio::spawn(watch_pods(shared.clone()));
        Ok(Kubelet { shared, task })
    }

    /// Fails a running pod as the kubelet does under node pressure; false when no such pod
    /// runs here.
    pub fn evict(&self, namespace: &str, name: &str) -> bool {
        let Ok(pod) = self
            .shared
            .state
            .store
            .get(&self.shared.pods, namespace, name)
        else {
            return false;
        };
        let workers = lock(&self.shared.workers);
        workers
            .get(text(&pod, "/metadata/uid"))
            .is_some_and(|w| w.commands.send(Command::Evict).is_ok())
    }

    /// Kills every process and waits (briefly) for the pod workers to end.
    pub async fn shutdown(self) {
        self.shared.stop.send_replace(true);
        for pgid in lock(&self.shared.groups).drain() {
            signal_group(pgid, libc::SIGKILL);
        }
        let mut tasks = std::mem::take(&mut *lock(&self.shared.tasks));
        let drained = tokio::time::timeout(Duration::from_secs(2), async {
            while tasks.join_next().await.is_some() {}
        })
        .await;
        if drained.is_err() {
            tasks.abort_all();
        }
        self.task.abort();
        let _ = std::fs::remove_dir_all(&self.shared.config.work_dir);
    }
}

async fn watch_pods(shared: Arc<Shared>) {
    let mut changes = shared.state.store.changes();
    let mut stop = shared.stop.subscribe();
    resync(&shared);
    loop {
        tokio::select! {
            _ = stop.changed() => return,
            open = changes.next_batch(|change| match change {
                Change::Event(e) if e.type_key == "/pods" => {
                    observe(&shared, e.kind, Arc::unwrap_or_clone(e.object));
                }
                Change::Event(_) => {}
                Change::Missed => resync(&shared),
            }) => if !open { return },
        }
    }
}

/// Catches up with the store after missing events: workers whose pod is gone learn so, and
/// pods that are new or changed since their worker last saw them are observed again. Pods a
/// worker has seen at their current resourceVersion are neither copied nor sent, so catching
/// up costs little while thousands of finished pods are stored.
fn resync(shared: &Arc<Shared>) {
    let resource_version = |p: &Value| text(p, "/metadata/resourceVersion").to_string();
    // Each worker's pod as last seen; the ones whose pod is not found below are gone.
    let mut unseen: HashMap<String, String> = lock(&shared.workers)
        .iter()
        .map(|(uid, w)| {
            let rv = w.pod.borrow().as_ref().map(resource_version);
            (uid.clone(), rv.unwrap_or_default())
        })
        .collect();
    let node = shared.config.node_name.as_str();
    let changed = shared.state.store.select(&shared.pods, "", |p| {
        let seen_at = unseen.remove(text(p, "/metadata/uid"));
        ours(p, node) && seen_at.is_none_or(|rv| rv != text(p, "/metadata/resourceVersion"))
    });
    let workers = lock(&shared.workers);
    for uid in unseen.keys() {
        if let Some(w) = workers.get(uid) {
            w.pod.send_replace(None);
        }
    }
    drop(workers);
    for pod in changed {
        observe(shared, "MODIFIED", pod);
    }
}

/// Whether this node runs the pod: pods bound to other nodes are theirs.
fn ours(pod: &Value, node: &str) -> bool {
    let bound_to = text(pod, "/spec/nodeName");
    bound_to.is_empty() || bound_to == node
}

fn observe(shared: &Arc<Shared>, kind: &str, pod: Value) {
    let uid = text(&pod, "/metadata/uid").to_string();
    let mut workers = lock(&shared.workers);
    if kind == "DELETED" {
        if let Some(w) = workers.get(&uid) {
            w.pod.send_replace(None);
        }
        return;
    }
    if !ours(&pod, &shared.config.node_name) {
        return;
    }
    if let Some(w) = workers.get(&uid) {
        w.pod.send_replace(Some(pod));
        return;
    }
    let (pod_tx, pod_rx) = watch::channel(Some(pod));
    let (commands, commands_rx) = mpsc::unbounded_channel();
    workers.insert(
        uid.clone(),
        Worker {
            pod: pod_tx,
            commands,
        },
    );
    drop(workers);
    let worker_shared = shared.clone();
    lock(&shared.tasks).spawn(async move {
        pod_worker(worker_shared.clone(), &uid, pod_rx, commands_rx).await;
        lock(&worker_shared.workers).remove(&uid);
        worker_shared.state.logs.remove_pod(&uid);
    });
}

/// Runs one pod from scheduling to its removal from the store.
async fn pod_worker(
    shared: Arc<Shared>,
    uid: &str,
    mut pod_rx: watch::Receiver<Option<Value>>,
    commands: mpsc::UnboundedReceiver<Command>,
) {
    let Some(pod) = pod_rx.borrow_and_update().clone() else {
        return;
    };
    let namespace = text(&pod, "/metadata/namespace").to_string();
    let name = text(&pod, "/metadata/name").to_string();
    let dir = shared
        .config
        .work_dir
        .join(format!("{namespace}_{name}_{uid}"));
    let terminal = matches!(text(&pod, "/status/phase"), "Succeeded" | "Failed");
    if !terminal && pod.pointer("/metadata/deletionTimestamp").is_none() {
        let ctx = Arc::new(PodCtx {
            shared: shared.clone(),
            uid: uid.to_string(),
            namespace: namespace.clone(),
            name: name.clone(),
            dir: dir.clone(),
            pod: Mutex::new(pod),
            run: Mutex::new(Run::default()),
            changed: Notify::new(),
            stop: watch::channel(false).0,
            mounts: Mutex::new(Vec::new()),
            volume_dirs: Mutex::new(BTreeMap::new()),
        });
        ctx.run_pod(&mut pod_rx, commands).await;
    }
    // Finished: wait for the delete, finish it, and clean up once the pod is gone.
    let mut stop = shared.stop.subscribe();
    loop {
        if *stop.borrow() {
            break;
        }
        let current = pod_rx.borrow_and_update().clone();
        match current {
            None => break,
            Some(pod) if pod.pointer("/metadata/deletionTimestamp").is_some() => {
                let grace = pod
                    .pointer("/metadata/deletionGracePeriodSeconds")
                    .and_then(Value::as_i64);
                if grace != Some(0) {
                    let _ = shared.state.store.delete_with(
                        &shared.pods,
                        &namespace,
                        &name,
                        &json!({"uid": uid}),
                        Write::default(),
                        &Deletion::default(),
                    );
                }
            }
            Some(_) => {}
        }
        tokio::select! {
            changed = pod_rx.changed() => if changed.is_err() { break },
            _ = stop.changed() => break,
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// What a container is doing.
#[derive(Clone, Debug, PartialEq)]
enum State {
    Waiting {
        reason: String,
        message: Option<String>,
    },
    Running {
        started: String,
    },
    Terminated {
        exit: i32,
        reason: String,
        message: Option<String>,
        started: Option<String>,
        finished: String,
    },
}

impl State {
    fn waiting(reason: &str, message: Option<String>) -> Self {
        State::Waiting {
            reason: reason.to_string(),
            message,
        }
    }

    fn to_json(&self, id: &str) -> Value {
        match self {
            State::Waiting { reason, message } => {
                let mut w = json!({"reason": reason});
                if let Some(m) = message {
                    w["message"] = json!(m);
                }
                json!({"waiting": w})
            }
            State::Running { started } => json!({"running": {"startedAt": started}}),
            State::Terminated {
                exit,
                reason,
                message,
                started,
                finished,
            } => {
                let mut t = json!({"exitCode": exit, "reason": reason, "finishedAt": finished});
                if let Some(s) = started {
                    t["startedAt"] = json!(s);
                }
                if let Some(m) = message {
                    t["message"] = json!(m);
                }
                if !id.is_empty() {
                    t["containerID"] = json!(id);
                }
                json!({"terminated": t})
            }
        }
    }
}

#[derive(Clone, Debug)]
struct Ctr {
    name: String,
    image: String,
    state: State,
    last: Option<State>,
    restarts: u32,
    id: String,
    pgid: Option<i32>,
}

#[derive(Default)]
struct Run {
    init: Vec<Ctr>,
    containers: Vec<Ctr>,
    init_done: bool,
    /// Set once the pod is being stopped: nothing (re)starts.
    stopping: bool,
    /// Why the pod failed as a whole (`DeadlineExceeded`, `Evicted`) and the message.
    failure: Option<(String, String)>,
    /// Volumes could not be set up yet.
    sandbox_ready: bool,
    /// Conditions' transition times, kept while their status stays.
    transitions: HashMap<String, (String, String)>,
    last_written: Value,
    started_at: Option<String>,
}

/// (mountPath, host path) pairs, longest mountPath first.
type Mounts = Vec<(String, PathBuf)>;

struct PodCtx {
    shared: Arc<Shared>,
    uid: String,
    namespace: String,
    name: String,
    dir: PathBuf,
    pod: Mutex<Value>,
    run: Mutex<Run>,
    changed: Notify,
    stop: watch::Sender<bool>,
    /// (mountPath, host path) of each mount, longest mountPath first, per container name.
    mounts: Mutex<Vec<(String, Mounts)>>,
    /// Each volume's directory, by volume name.
    volume_dirs: Mutex<BTreeMap<String, PathBuf>>,
}

fn containers_of(pod: &Value, field: &str) -> Vec<Value> {
    pod.pointer(&format!("/spec/{field}"))
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default()
}

fn new_ctr(c: &Value) -> Ctr {
    Ctr {
        name: text(c, "/name").to_string(),
        image: text(c, "/image").to_string(),
        state: State::waiting("ContainerCreating", None),
        last: None,
        restarts: 0,
        id: String::new(),
        pgid: None,
    }
}

impl PodCtx {
    fn pod(&self) -> Value {
        lock(&self.pod).clone()
    }

    fn event(&self, container: Option<&str>, type_: &str, reason: &str, message: &str) {
        let pod = self.pod();
        let path = container.map(|c| {
            let init = containers_of(&pod, "initContainers")
                .iter()
                .any(|x| text(x, "/name") == c);
            if init {
                format!("spec.initContainers{{{c}}}")
            } else {
                format!("spec.containers{{{c}}}")
            }
        });
        self.shared.recorder.record(
            &self.shared.state.store,
            &pod,
            path.as_deref(),
            type_,
            reason,
            message,
        );
    }

    fn stopped(&self) -> bool {
        *self.stop.borrow()
    }

    async fn run_pod(
        self: &Arc<Self>,
        pod_rx: &mut watch::Receiver<Option<Value>>,
        mut commands: mpsc::UnboundedReceiver<Command>,
    ) {
        let store = &self.shared.state.store;
        let pod = self.pod();
        {
            let mut run = lock(&self.run);
            run.init = containers_of(&pod, "initContainers")
                .iter()
                .map(new_ctr)
                .collect();
            run.containers = containers_of(&pod, "containers")
                .iter()
                .map(new_ctr)
                .collect();
            if !run.init.is_empty() {
                for c in &mut run.containers {
                    c.state = State::waiting("PodInitializing", None);
                }
            }
            run.init_done = run.init.is_empty();
        }
        // Scheduling.
        if text(&pod, "/spec/nodeName").is_empty() {
            let node = self.shared.config.node_name.clone();
            let bound = modify(
                store,
                &self.shared.pods,
                &self.namespace,
                &self.name,
                false,
                |p| {
                    if text(p, "/metadata/uid") != self.uid {
                        return false;
                    }
                    p["spec"]["nodeName"] = json!(node);
                    true
                },
            );
            match bound {
                Ok(Some(p)) => *lock(&self.pod) = p,
                _ => return,
            }
            self.shared.scheduler.record(
                store,
                &self.pod(),
                None,
                "Normal",
                "Scheduled",
                &format!(
                    "Successfully assigned {}/{} to {}",
                    self.namespace, self.name, self.shared.config.node_name
                ),
            );
        }
        lock(&self.run).started_at = Some(controllers::now());
        self.write_status();

        let mut stop_all = self.shared.stop.subscribe();
        let deadline = pod
            .pointer("/spec/activeDeadlineSeconds")
            .and_then(Value::as_u64)
            .map(|s| Instant::now() + Duration::from_secs(s));
        let mut kill_at: Option<Instant> = None;
        let mut main: Option<JoinHandle<()>> = {
            let ctx = self.clone();
            Some(tokio::spawn(async move { ctx.run_containers().await }))
        };
        loop {
            self.write_status();
            if main.as_ref().is_some_and(JoinHandle::is_finished) {
                main = None;
            }
            if main.is_none() {
                break;
            }
            let far = Instant::now() + Duration::from_secs(86_400 * 365);
            tokio::select! {
                _ = self.changed.notified() => {}
                _ = async { if let Some(m) = main.as_mut() { let _ = m.await; } } => { main = None; }
                changed = pod_rx.changed() => {
                    let latest = if changed.is_ok() { pod_rx.borrow_and_update().clone() } else { None };
                    match latest {
                        None => {
                            // Removed from the store (force delete): kill now.
                            self.begin_stop(Some(0));
                            kill_at = Some(Instant::now());
                        }
                        Some(p) => {
                            let deleting = p.pointer("/metadata/deletionTimestamp").is_some();
                            let grace = p.pointer("/metadata/deletionGracePeriodSeconds").and_then(Value::as_i64);
                            *lock(&self.pod) = p;
                            if deleting {
                                let grace = grace.unwrap_or(0).max(0);
                                let at = Instant::now() + Duration::from_secs(grace.unsigned_abs());
                                if !lock(&self.run).stopping || kill_at.is_none_or(|k| at < k) {
                                    self.begin_stop(Some(grace));
                                    kill_at = Some(at);
                                }
                            }
                        }
                    }
                }
                _ = tokio::time::sleep_until(deadline.unwrap_or(far)), if deadline.is_some() && !lock(&self.run).stopping => {
                    let message = "Pod was active on the node longer than the specified deadline";
                    lock(&self.run).failure = Some(("DeadlineExceeded".into(), message.into()));
                    self.event(None, "Normal", "DeadlineExceeded", message);
                    let grace = self.grace_period();
                    self.begin_stop(Some(grace));
                    kill_at = Some(Instant::now() + Duration::from_secs(grace.unsigned_abs()));
                }
                _ = tokio::time::sleep_until(kill_at.unwrap_or(far)), if kill_at.is_some() => {
                    self.kill_all(libc::SIGKILL);
                    kill_at = None;
                }
                Some(Command::Evict) = commands.recv() => {
                    let message = format!(
                        "The node was low on resource: memory. Threshold quantity: 100Mi, available: 42Mi. Container {} was using 512Mi, request is 0, has larger consumption of memory. ",
                        lock(&self.run).containers.first().map(|c| c.name.clone()).unwrap_or_default()
                    );
                    lock(&self.run).failure = Some(("Evicted".into(), message.clone()));
                    self.event(None, "Warning", "Evicted", &message);
                    self.begin_stop(Some(0));
                    kill_at = Some(Instant::now());
                }
                _ = stop_all.changed() => {
                    self.begin_stop(Some(0));
                    self.kill_all(libc::SIGKILL);
                    if let Some(m) = main.take() {
                        let _ = tokio::time::timeout(Duration::from_secs(1), m).await;
                    }
                    return;
                }
            }
        }
        // Everything has ended: report the final state.
        {
            let mut run = lock(&self.run);
            if run.stopping {
                let run = &mut *run;
                for c in run.init.iter_mut().chain(run.containers.iter_mut()) {
                    if let State::Waiting { .. } = c.state {
                        c.state = match c.last.take() {
                            Some(last) => last,
                            None => State::Terminated {
                                exit: 137,
                                reason: "ContainerStatusUnknown".into(),
                                message: Some(
                                    "The container could not be located when the pod was terminated"
                                        .into(),
                                ),
                                started: None,
                                finished: controllers::now(),
                            },
                        };
                    }
                }
            }
        }
        self.write_status();
    }

    fn grace_period(&self) -> i64 {
        self.pod()
            .pointer("/spec/terminationGracePeriodSeconds")
            .and_then(Value::as_i64)
            .unwrap_or(30)
            .max(0)
    }

    /// Stops restarts and asks every running container to stop (SIGTERM, or SIGKILL when
    /// the grace period is 0).
    fn begin_stop(&self, grace: Option<i64>) {
        let first = {
            let mut run = lock(&self.run);
            let first = !run.stopping;
            run.stopping = true;
            first
        };
        self.stop.send_replace(true);
        if first {
            let running: Vec<String> = {
                let run = lock(&self.run);
                run.init
                    .iter()
                    .chain(run.containers.iter())
                    .filter(|c| matches!(c.state, State::Running { .. }))
                    .map(|c| c.name.clone())
                    .collect()
            };
            for name in running {
                self.event(
                    Some(&name),
                    "Normal",
                    "Killing",
                    &format!("Stopping container {name}"),
                );
            }
        }
        let signal = if grace == Some(0) {
            libc::SIGKILL
        } else {
            libc::SIGTERM
        };
        self.kill_all(signal);
        self.changed.notify_one();
    }

    fn kill_all(&self, signal: i32) {
        let run = lock(&self.run);
        for c in run.init.iter().chain(run.containers.iter()) {
            if let Some(pgid) = c.pgid {
                signal_group(pgid, signal);
            }
        }
    }

    async fn run_containers(self: Arc<Self>) {
        // The sandbox: the pod directory and its volumes.
        loop {
            if self.stopped() {
                return;
            }
            match self.prepare_volumes() {
                Ok(()) => break,
                Err((volume, message)) => {
                    self.event(
                        None,
                        "Warning",
                        "FailedMount",
                        &format!("MountVolume.SetUp failed for volume \"{volume}\" : {message}"),
                    );
                    if !self.pause(self.shared.config.backoff).await {
                        return;
                    }
                }
            }
        }
        lock(&self.run).sandbox_ready = true;
        self.changed.notify_one();
        let pod = self.pod();
        let policy = text(&pod, "/spec/restartPolicy").to_string();
        let init_count = lock(&self.run).init.len();
        for i in 0..init_count {
            let exit = self.clone().run_container(true, i, &policy).await;
            if exit != Some(0) {
                if policy == "Never" && exit.is_some() {
                    // A failed init container fails the pod.
                    let mut run = lock(&self.run);
                    run.stopping = true;
                    for c in &mut run.containers {
                        c.state = State::waiting("PodInitializing", None);
                    }
                }
                self.changed.notify_one();
                return;
            }
        }
        {
            let mut run = lock(&self.run);
            run.init_done = true;
            for c in &mut run.containers {
                c.state = State::waiting("ContainerCreating", None);
            }
        }
        self.changed.notify_one();
        let count = lock(&self.run).containers.len();
        let mut set = JoinSet::new();
        for i in 0..count {
            let ctx = self.clone();
            let policy = policy.clone();
            set.spawn(async move {
                ctx.run_container(false, i, &policy).await;
            });
        }
        while set.join_next().await.is_some() {}
    }

    /// Sleeps unless the pod stops first; false when it stopped.
    async fn pause(&self, d: Duration) -> bool {
        let mut stop = self.stop.subscribe();
        if *stop.borrow_and_update() {
            return false;
        }
        tokio::select! {
            _ = tokio::time::sleep(d) => true,
            _ = stop.changed() => false,
        }
    }

    fn set_state(&self, init: bool, i: usize, f: impl FnOnce(&mut Ctr)) {
        {
            let mut run = lock(&self.run);
            let list = if init {
                &mut run.init
            } else {
                &mut run.containers
            };
            if let Some(c) = list.get_mut(i) {
                f(c);
            }
        }
        self.changed.notify_one();
    }

    /// Runs one container until it should not restart; returns its last exit code (None if it
    /// never ran).
    async fn run_container(self: Arc<Self>, init: bool, i: usize, policy: &str) -> Option<i32> {
        let pod = self.pod();
        let spec = containers_of(&pod, if init { "initContainers" } else { "containers" })
            .get(i)
            .cloned()
            .unwrap_or_default();
        let name = text(&spec, "/name").to_string();
        let image = text(&spec, "/image").to_string();
        let cfg = self.shared.config.clone();
        let mut pull_backoff = cfg.backoff;
        let mut instances = 0u32;
        let mut last_exit = None;
        let mut crash_backoff = cfg.backoff;
        loop {
            if self.stopped() {
                return last_exit;
            }
            if cfg
                .image_pull_failure
                .as_ref()
                .is_some_and(|re| re.is_match(&image))
            {
                let pull_error = format!(
                    "failed to pull and unpack image \"{image}\": failed to resolve reference \"{image}\": pull access denied, repository does not exist or may require authorization"
                );
                self.event(
                    Some(&name),
                    "Normal",
                    "Pulling",
                    &format!("Pulling image \"{image}\""),
                );
                self.event(
                    Some(&name),
                    "Warning",
                    "Failed",
                    &format!("Failed to pull image \"{image}\": {pull_error}"),
                );
                self.event(Some(&name), "Warning", "Failed", "Error: ErrImagePull");
                self.set_state(init, i, |c| {
                    c.state = State::waiting("ErrImagePull", Some(pull_error.clone()));
                });
                if !self.pause(pull_backoff).await {
                    return last_exit;
                }
                let message = format!("Back-off pulling image \"{image}\"");
                self.event(Some(&name), "Normal", "BackOff", &message);
                self.event(Some(&name), "Warning", "Failed", "Error: ImagePullBackOff");
                self.set_state(init, i, |c| {
                    c.state = State::waiting("ImagePullBackOff", Some(message.clone()));
                });
                if !self.pause(pull_backoff).await {
                    return last_exit;
                }
                pull_backoff = (pull_backoff * 2).min(cfg.backoff_max);
                continue;
            }
            if instances == 0 {
                if text(&spec, "/imagePullPolicy") == "Always" {
                    self.event(
                        Some(&name),
                        "Normal",
                        "Pulling",
                        &format!("Pulling image \"{image}\""),
                    );
                    self.event(
                        Some(&name),
                        "Normal",
                        "Pulled",
                        &format!("Successfully pulled image \"{image}\" in 0s (0s including waiting). Image size: 0 bytes."),
                    );
                } else {
                    self.event(
                        Some(&name),
                        "Normal",
                        "Pulled",
                        &format!("Container image \"{image}\" already present on machine"),
                    );
                }
            }
            let resolved = match self.resolve(&spec) {
                Ok(r) => r,
                Err(message) => {
                    self.event(
                        Some(&name),
                        "Warning",
                        "Failed",
                        &format!("Error: {message}"),
                    );
                    self.set_state(init, i, |c| {
                        c.state =
                            State::waiting("CreateContainerConfigError", Some(message.clone()));
                    });
                    if !self.pause(cfg.backoff).await {
                        return last_exit;
                    }
                    continue;
                }
            };
            let log = self.shared.state.logs.start_instance(&self.uid, &name);
            let id = format!("charon://{}", uuid::Uuid::new_v4().simple());
            let started = controllers::now();
            let restarts = instances;
            instances += 1;
            let exit = match resolved.argv {
                None => {
                    let message = format!(
                        "container \"{name}\" has no command: the embedded kubelet runs commands, not image entrypoints"
                    );
                    log.close();
                    self.event(
                        Some(&name),
                        "Warning",
                        "Failed",
                        &format!("Error: {message}"),
                    );
                    self.set_state(init, i, |c| {
                        c.restarts = restarts;
                        c.id = id.clone();
                        c.state = State::Terminated {
                            exit: 128,
                            reason: "RunContainerError".into(),
                            message: Some(message.clone()),
                            started: None,
                            finished: controllers::now(),
                        };
                    });
                    128
                }
                Some(argv) => match spawn(&argv, &resolved.env, &resolved.cwd, log.clone()) {
                    Err(err) => {
                        let message = format!(
                            "failed to create containerd task: failed to create shim task: OCI runtime create failed: runc create failed: unable to start container process: exec: \"{}\": {}: unknown",
                            argv[0],
                            if err.kind() == std::io::ErrorKind::NotFound {
                                "executable file not found in $PATH".to_string()
                            } else {
                                err.to_string()
                            }
                        );
                        log.close();
                        self.event(
                            Some(&name),
                            "Warning",
                            "Failed",
                            &format!("Error: {message}"),
                        );
                        self.set_state(init, i, |c| {
                            c.restarts = restarts;
                            c.id = id.clone();
                            c.state = State::Terminated {
                                exit: 128,
                                reason: "StartError".into(),
                                message: Some(message.clone()),
                                started: Some("1970-01-01T00:00:00Z".into()),
                                finished: controllers::now(),
                            };
                        });
                        128
                    }
                    Ok((mut child, reader)) => {
                        let pgid = child.id().and_then(|p| i32::try_from(p).ok());
                        if let Some(pgid) = pgid {
                            lock(&self.shared.groups).insert(pgid);
                        }
                        self.event(
                            Some(&name),
                            "Normal",
                            "Created",
                            &format!("Created container: {name}"),
                        );
                        self.event(
                            Some(&name),
                            "Normal",
                            "Started",
                            &format!("Started container {name}"),
                        );
                        self.set_state(init, i, |c| {
                            c.restarts = restarts;
                            c.id = id.clone();
                            c.pgid = pgid;
                            c.state = State::Running {
                                started: started.clone(),
                            };
                        });
                        if self.stopped() {
                            // Stopped while starting: this one missed the signal.
                            if let Some(pgid) = pgid {
                                signal_group(pgid, libc::SIGTERM);
                            }
                        }
                        let status = child.wait().await;
                        if let Some(pgid) = pgid {
                            // Whatever it left behind goes too, as with a container's PID
                            // namespace.
                            signal_group(pgid, libc::SIGKILL);
                            lock(&self.shared.groups).remove(&pgid);
                        }
                        let _ = tokio::time::timeout(Duration::from_millis(500), reader).await;
                        log.close();
                        let exit = match status {
                            Ok(s) => s
                                .code()
                                .or_else(|| s.signal().map(|sig| 128 + sig))
                                .unwrap_or(128),
                            Err(_) => 128,
                        };
                        self.set_state(init, i, |c| {
                            c.pgid = None;
                            c.state = State::Terminated {
                                exit,
                                reason: if exit == 0 { "Completed" } else { "Error" }.into(),
                                message: None,
                                started: Some(started.clone()),
                                finished: controllers::now(),
                            };
                        });
                        exit
                    }
                },
            };
            last_exit = Some(exit);
            let restart = match policy {
                "Always" => !init || exit != 0,
                "OnFailure" => exit != 0,
                _ => false,
            };
            if !restart || self.stopped() {
                return last_exit;
            }
            // The first restart is immediate, later ones back off (10s, 20s, … 5m).
            if instances > 1 {
                let delay = crash_backoff;
                crash_backoff = (crash_backoff * 2).min(cfg.backoff_max);
                let message = format!(
                    "back-off {} restarting failed container={name} pod={}_{}({})",
                    human(delay),
                    self.name,
                    self.namespace,
                    self.uid
                );
                self.event(
                    Some(&name),
                    "Warning",
                    "BackOff",
                    &format!(
                        "Back-off restarting failed container {name} in pod {}_{}({})",
                        self.name, self.namespace, self.uid
                    ),
                );
                self.set_state(init, i, |c| {
                    c.last = Some(c.state.clone());
                    c.state = State::waiting("CrashLoopBackOff", Some(message.clone()));
                });
                if !self.pause(delay).await {
                    return last_exit;
                }
            } else {
                self.set_state(init, i, |c| {
                    c.last = Some(c.state.clone());
                });
            }
        }
    }

    /// Writes the pod's status when it changed.
    fn write_status(&self) {
        let pod = self.pod();
        let status = {
            let mut run = lock(&self.run);
            let status = build_status(&pod, &mut run);
            if status == run.last_written {
                return;
            }
            run.last_written = status.clone();
            status
        };
        let written = controllers::write_status(
            &self.shared.state.store,
            &self.shared.pods,
            &self.namespace,
            &self.name,
            &self.uid,
            &status,
        );
        if let Err(err) = written {
            tracing::debug!(%err, pod = self.name, "writing pod status");
        }
    }

    /// Materialises the pod's volumes; Err names the volume and says why.
    fn prepare_volumes(&self) -> Result<(), (String, String)> {
        let pod = self.pod();
        let store = &self.shared.state.store;
        std::fs::create_dir_all(&self.dir).map_err(|e| (String::new(), e.to_string()))?;
        let volumes_dir = self.dir.join("volumes");
        let mut hosts: HashMap<String, PathBuf> = HashMap::new();
        for v in pod
            .pointer("/spec/volumes")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let vname = text(v, "/name").to_string();
            let dir = volumes_dir.join(&vname);
            let fail = |m: String| (vname.clone(), m);
            if let Some(path) = v.pointer("/hostPath/path").and_then(Value::as_str) {
                hosts.insert(vname.clone(), PathBuf::from(path));
                continue;
            }
            std::fs::create_dir_all(&dir).map_err(|e| fail(e.to_string()))?;
            let mut files: Vec<(String, Vec<u8>)> = Vec::new();
            let add_source = |files: &mut Vec<(String, Vec<u8>)>,
                              kind: &str,
                              source: &Value|
             -> Result<(), String> {
                let (type_plural, name_field) = match kind {
                    "secret" => ("secrets", "/secretName"),
                    _ => ("configmaps", "/name"),
                };
                let obj_name = text(source, name_field);
                let optional = source.get("optional").and_then(Value::as_bool) == Some(true);
                let Some(t) = builtin(store, "", type_plural) else {
                    return Ok(());
                };
                let obj = match store.get(&t, &self.namespace, obj_name) {
                    Ok(obj) => obj,
                    Err(_) if optional => return Ok(()),
                    Err(_) => {
                        let what = if kind == "secret" {
                            "secret"
                        } else {
                            "configmap"
                        };
                        return Err(format!("{what} \"{obj_name}\" not found"));
                    }
                };
                let data = object_data(&obj, kind == "secret");
                match source.get("items").and_then(Value::as_array) {
                    Some(items) => {
                        for item in items {
                            let key = text(item, "/key");
                            match data.get(key) {
                                Some(bytes) => {
                                    files.push((text(item, "/path").to_string(), bytes.clone()))
                                }
                                None if optional => {}
                                None => {
                                    return Err(format!(
                                        "configmap references non-existent config key: {key}"
                                    ));
                                }
                            }
                        }
                    }
                    None => files.extend(data),
                }
                Ok(())
            };
            if let Some(s) = v.get("secret") {
                add_source(&mut files, "secret", s).map_err(&fail)?;
            } else if let Some(c) = v.get("configMap") {
                add_source(&mut files, "configMap", c).map_err(&fail)?;
            } else if let Some(sources) = v.pointer("/projected/sources").and_then(Value::as_array)
            {
                for s in sources {
                    if let Some(secret) = s.get("secret") {
                        let mut secret = secret.clone();
                        secret["secretName"] = secret.get("name").cloned().unwrap_or(Value::Null);
                        add_source(&mut files, "secret", &secret).map_err(&fail)?;
                    } else if let Some(cm) = s.get("configMap") {
                        add_source(&mut files, "configMap", cm).map_err(&fail)?;
                    } else if let Some(items) =
                        s.pointer("/downwardAPI/items").and_then(Value::as_array)
                    {
                        for item in items {
                            let value = field_ref(&pod, text(item, "/fieldRef/fieldPath"));
                            files.push((text(item, "/path").to_string(), value.into_bytes()));
                        }
                    }
                }
            } else if let Some(items) = v.pointer("/downwardAPI/items").and_then(Value::as_array) {
                for item in items {
                    let value = field_ref(&pod, text(item, "/fieldRef/fieldPath"));
                    files.push((text(item, "/path").to_string(), value.into_bytes()));
                }
            }
            for (path, bytes) in files {
                let relative = Path::new(&path);
                if relative.is_absolute()
                    || relative
                        .components()
                        .any(|c| matches!(c, std::path::Component::ParentDir))
                {
                    continue;
                }
                let file = dir.join(relative);
                if let Some(parent) = file.parent() {
                    std::fs::create_dir_all(parent).map_err(|e| fail(e.to_string()))?;
                }
                std::fs::write(&file, bytes).map_err(|e| fail(e.to_string()))?;
            }
            hosts.insert(vname, dir);
        }
        let mut mounts = Vec::new();
        for c in containers_of(&pod, "initContainers")
            .iter()
            .chain(containers_of(&pod, "containers").iter())
        {
            let mut list: Vec<(String, PathBuf)> = c
                .get("volumeMounts")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(|m| {
                    let host = hosts.get(text(m, "/name"))?;
                    let host = match text(m, "/subPath") {
                        "" => host.clone(),
                        sub => host.join(sub),
                    };
                    Some((
                        text(m, "/mountPath").trim_end_matches('/').to_string(),
                        host,
                    ))
                })
                .filter(|(p, _)| !p.is_empty())
                .collect();
            list.sort_by_key(|(p, _)| std::cmp::Reverse(p.len()));
            mounts.push((text(c, "/name").to_string(), list));
        }
        *lock(&self.mounts) = mounts;
        *lock(&self.volume_dirs) = hosts.into_iter().collect();
        Ok(())
    }

    /// The process to start for container `c`: argv (None without a command), environment
    /// and working directory, or why it cannot be configured.
    fn resolve(&self, c: &Value) -> Result<Resolved, String> {
        let pod = self.pod();
        let store = &self.shared.state.store;
        let cname = text(c, "/name");
        let mut vars: Vec<(String, String)> = Vec::new();
        let set = |vars: &mut Vec<(String, String)>, k: String, v: String| {
            vars.retain(|(x, _)| *x != k);
            vars.push((k, v));
        };
        let port = self
            .shared
            .state
            .address
            .rsplit(':')
            .next()
            .unwrap_or("443")
            .to_string();
        for (k, v) in [
            ("KUBERNETES_SERVICE_HOST", LOCAL_IP.to_string()),
            ("KUBERNETES_SERVICE_PORT", port.clone()),
            ("KUBERNETES_PORT", format!("tcp://{LOCAL_IP}:{port}")),
        ] {
            set(&mut vars, k.to_string(), v);
        }
        let lookup_obj = |plural: &str, name: &str| -> Option<Value> {
            let t = builtin(store, "", plural)?;
            store.get(&t, &self.namespace, name).ok()
        };
        for from in c
            .get("envFrom")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let prefix = text(from, "/prefix");
            let (source, secret) = match (from.get("secretRef"), from.get("configMapRef")) {
                (Some(s), _) => (s, true),
                (None, Some(cm)) => (cm, false),
                _ => continue,
            };
            let name = text(source, "/name");
            let optional = source.get("optional").and_then(Value::as_bool) == Some(true);
            let obj = lookup_obj(if secret { "secrets" } else { "configmaps" }, name);
            match obj {
                Some(obj) => {
                    for (k, v) in object_data(&obj, secret) {
                        set(
                            &mut vars,
                            format!("{prefix}{k}"),
                            String::from_utf8_lossy(&v).into_owned(),
                        );
                    }
                }
                None if optional => {}
                None => {
                    return Err(format!(
                        "{} \"{name}\" not found",
                        if secret { "secret" } else { "configmap" }
                    ));
                }
            }
        }
        for e in c.get("env").and_then(Value::as_array).into_iter().flatten() {
            let key = text(e, "/name").to_string();
            let value = if let Some(v) = e.get("value").and_then(Value::as_str) {
                let known: HashMap<&str, &str> =
                    vars.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
                expand(v, |n| known.get(n).map(|s| s.to_string()))
            } else if let Some(from) = e.get("valueFrom") {
                if let Some(path) = from.pointer("/fieldRef/fieldPath").and_then(Value::as_str) {
                    field_ref(&pod, path)
                } else if let Some(sel) = from
                    .get("secretKeyRef")
                    .or_else(|| from.get("configMapKeyRef"))
                {
                    let secret = from.get("secretKeyRef").is_some();
                    let name = text(sel, "/name");
                    let k = text(sel, "/key");
                    let optional = sel.get("optional").and_then(Value::as_bool) == Some(true);
                    let what = if secret { "secret" } else { "configmap" };
                    match lookup_obj(if secret { "secrets" } else { "configmaps" }, name) {
                        Some(obj) => match object_data(&obj, secret).remove(k) {
                            Some(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
                            None if optional => continue,
                            None => {
                                return Err(format!(
                                    "couldn't find key {k} in {}{} {}/{name}",
                                    what[..1].to_uppercase(),
                                    &what[1..],
                                    self.namespace
                                ));
                            }
                        },
                        None if optional => continue,
                        None => return Err(format!("{what} \"{name}\" not found")),
                    }
                } else if let Some(r) = from.get("resourceFieldRef") {
                    match text(r, "/resource") {
                        "limits.cpu" | "requests.cpu" => "1".to_string(),
                        _ => "0".to_string(),
                    }
                } else {
                    String::new()
                }
            } else {
                String::new()
            };
            set(&mut vars, key, value);
        }
        let hostname = match text(&pod, "/spec/hostname") {
            "" => self.name.clone(),
            h => h.to_string(),
        };
        let mounts: Vec<(String, PathBuf)> = lock(&self.mounts)
            .iter()
            .find(|(n, _)| n == cname)
            .map(|(_, m)| m.clone())
            .unwrap_or_default();
        let rewrite = |s: String| rewrite_mounts(&s, &mounts);
        let known: HashMap<String, String> = vars.iter().cloned().collect();
        let lookup = |n: &str| known.get(n).cloned();
        let list = |field: &str| -> Option<Vec<String>> {
            c.get(field).and_then(Value::as_array).map(|a| {
                a.iter()
                    .map(|x| rewrite(expand(x.as_str().unwrap_or_default(), lookup)))
                    .collect()
            })
        };
        let argv = match (list("command"), list("args")) {
            (Some(cmd), args) if !cmd.is_empty() => {
                let mut argv = cmd;
                argv.extend(args.unwrap_or_default());
                Some(argv)
            }
            _ => None,
        };
        let mut env: Vec<(String, String)> = Vec::new();
        for k in ["PATH", "LANG", "LC_ALL", "TZ"] {
            if let Ok(v) = std::env::var(k) {
                env.push((k.to_string(), v));
            }
        }
        env.push(("HOME".into(), self.dir.display().to_string()));
        env.push(("HOSTNAME".into(), hostname));
        env.push(("TMPDIR".into(), std::env::temp_dir().display().to_string()));
        {
            for (vname, dir) in lock(&self.volume_dirs).iter() {
                let key: String = vname
                    .chars()
                    .map(|ch| match ch {
                        '-' | '.' => '_',
                        other => other.to_ascii_uppercase(),
                    })
                    .collect();
                env.push((
                    format!("CHARON_DEV_VOLUME_{key}"),
                    dir.display().to_string(),
                ));
            }
        }
        for (k, v) in vars {
            env.retain(|(x, _)| *x != k);
            env.push((k, rewrite(v)));
        }
        let cwd = match text(c, "/workingDir") {
            "" => self.dir.clone(),
            w => {
                let rewritten = PathBuf::from(rewrite(w.to_string()));
                if rewritten.is_dir() {
                    rewritten
                } else {
                    self.dir.clone()
                }
            }
        };
        Ok(Resolved { argv, env, cwd })
    }
}

struct Resolved {
    argv: Option<Vec<String>>,
    env: Vec<(String, String)>,
    cwd: PathBuf,
}

/// `10s`, `1m20s`, `5m0s` as Go prints durations.
fn human(d: Duration) -> String {
    let secs = d.as_secs();
    if secs == 0 {
        return format!("{}ms", d.as_millis());
    }
    if secs < 60 {
        format!("{secs}s")
    } else {
        format!("{}m{}s", secs / 60, secs % 60)
    }
}

/// Replaces a mount path (or a path under it) in `s` by the directory that stands for it.
fn rewrite_mounts(s: &str, mounts: &[(String, PathBuf)]) -> String {
    let mut out = s.to_string();
    for (mount, host) in mounts {
        let host = host.display().to_string();
        let mut result = String::new();
        let mut rest = out.as_str();
        while let Some(pos) = rest.find(mount.as_str()) {
            let before_ok = pos == 0
                || !rest[..pos]
                    .chars()
                    .next_back()
                    .is_some_and(|c| c.is_alphanumeric() || matches!(c, '/' | '_' | '-' | '.'));
            let after = &rest[pos + mount.len()..];
            let after_ok = after
                .chars()
                .next()
                .is_none_or(|c| !(c.is_alphanumeric() || matches!(c, '_' | '-' | '.')));
            result.push_str(&rest[..pos]);
            if before_ok && after_ok {
                result.push_str(&host);
            } else {
                result.push_str(mount);
            }
            rest = after;
        }
        result.push_str(rest);
        out = result;
    }
    out
}

/// The decoded `data` (and `stringData`, `binaryData`) of a Secret or ConfigMap.
fn object_data(obj: &Value, secret: bool) -> BTreeMap<String, Vec<u8>> {
    let b64 = base64::engine::general_purpose::STANDARD;
    let mut out = BTreeMap::new();
    let entries = |field: &str| {
        obj.get(field)
            .and_then(Value::as_object)
            .cloned()
            .unwrap_or_default()
    };
    for (k, v) in entries("data") {
        let s = v.as_str().unwrap_or_default();
        let bytes = if secret {
            b64.decode(s).unwrap_or_else(|_| s.as_bytes().to_vec())
        } else {
            s.as_bytes().to_vec()
        };
        out.insert(k, bytes);
    }
    for (k, v) in entries("binaryData") {
        if let Ok(bytes) = b64.decode(v.as_str().unwrap_or_default()) {
            out.insert(k, bytes);
        }
    }
    if secret {
        for (k, v) in entries("stringData") {
            out.insert(k, v.as_str().unwrap_or_default().as_bytes().to_vec());
        }
    }
    out
}

/// The value of a downward-API field path.
fn field_ref(pod: &Value, path: &str) -> String {
    let map_entry = |field: &str, rest: &str| -> String {
        let key = rest
            .trim_start_matches("['")
            .trim_start_matches("[\"")
            .trim_end_matches("']")
            .trim_end_matches("\"]");
        text(
            pod,
            &format!(
                "/metadata/{field}/{}",
                key.replace('~', "~0").replace('/', "~1")
            ),
        )
        .to_string()
    };
    let map_all = |field: &str| -> String {
        pod.pointer(&format!("/metadata/{field}"))
            .and_then(Value::as_object)
            .map(|m| {
                m.iter()
                    .map(|(k, v)| format!("{k}=\"{}\"", v.as_str().unwrap_or_default()))
                    .collect::<Vec<_>>()
                    .join("\n")
            })
            .unwrap_or_default()
    };
    match path {
        "metadata.name" => text(pod, "/metadata/name").into(),
        "metadata.namespace" => text(pod, "/metadata/namespace").into(),
        "metadata.uid" => text(pod, "/metadata/uid").into(),
        "metadata.labels" => map_all("labels"),
        "metadata.annotations" => map_all("annotations"),
        "spec.nodeName" => text(pod, "/spec/nodeName").into(),
        "spec.serviceAccountName" => match text(pod, "/spec/serviceAccountName") {
            "" => "default".into(),
            s => s.into(),
        },
        "status.podIP" | "status.hostIP" => LOCAL_IP.into(),
        "status.podIPs" | "status.hostIPs" => LOCAL_IP.into(),
        p if p.starts_with("metadata.labels[") => {
            map_entry("labels", &p["metadata.labels".len()..])
        }
        p if p.starts_with("metadata.annotations[") => {
            map_entry("annotations", &p["metadata.annotations".len()..])
        }
        _ => String::new(),
    }
}

/// Kubelet's `$(VAR)` expansion: `$$` is a literal `$`, unknown references stay as written.
pub fn expand(input: &str, lookup: impl Fn(&str) -> Option<String>) -> String {
    let bytes = input.as_bytes();
    let mut out: Vec<u8> = Vec::with_capacity(bytes.len());
    let mut checkpoint = 0;
    let mut cursor = 0;
    while cursor < bytes.len() {
        if bytes[cursor] == b'$' && cursor + 1 < bytes.len() {
            out.extend_from_slice(&bytes[checkpoint..cursor]);
            let rest = &bytes[cursor + 1..];
            let advance = match rest[0] {
                b'$' => {
                    out.push(b'$');
                    1
                }
                b'(' => match rest.iter().skip(1).position(|b| *b == b')') {
                    Some(p) => {
                        let name = String::from_utf8_lossy(&rest[1..p + 1]).into_owned();
                        match lookup(&name) {
                            Some(v) => out.extend_from_slice(v.as_bytes()),
                            None => out.extend_from_slice(format!("$({name})").as_bytes()),
                        }
                        p + 2
                    }
                    None => {
                        out.extend_from_slice(b"$(");
                        1
                    }
                },
                other => {
                    out.push(b'$');
                    out.push(other);
                    1
                }
            };
            cursor += advance;
            checkpoint = cursor + 1;
        }
        cursor += 1;
    }
    if checkpoint < bytes.len() {
        out.extend_from_slice(&bytes[checkpoint..]);
    }
    String::from_utf8_lossy(&out).into_owned()
}

type Spawned = (tokio::process::Child, JoinHandle<()>);

/// The file `execvp` would run for `program`, given the child's `env` and working
/// directory `cwd`, when it is one `posix_spawn` runs the same way (a binary or a `#!`
/// script); `None` leaves the lookup to `execvp`.
///
/// With the environment replaced, the standard library only spawns a bare program name by
/// fork + exec, and a fork copies the page tables of this whole process (the store
/// included) for every container started: naming the program by its path lets it use
/// `posix_spawn`, whose cost does not grow with the server's memory.
fn resolve_program(program: &str, env: &[(String, String)], cwd: &Path) -> Option<PathBuf> {
    use std::io::Read;
    use std::os::unix::fs::PermissionsExt;
    if program.is_empty() || program.contains('/') {
        return None;
    }
    // The last setting wins, as for the child; glibc's default search path without one.
    let search = env
        .iter()
        .rev()
        .find(|(k, _)| k == "PATH")
        .map_or("/bin:/usr/bin", |(_, v)| v.as_str());
    for dir in search.split(':') {
        // An empty entry is the working directory, a relative one is under it.
        let candidate = cwd.join(dir).join(program);
        let Ok(meta) = std::fs::metadata(&candidate) else {
            continue;
        };
        if !meta.is_file() || meta.permissions().mode() & 0o111 == 0 {
            // execvp moves on past what it cannot execute.
            continue;
        }
        // execvp would run this one. A script without `#!` it runs with /bin/sh, which
        // posix_spawn does not: leave those (and unreadable files) to it.
        let mut magic = [0u8; 4];
        let read = std::fs::File::open(&candidate).and_then(|mut f| f.read_exact(&mut magic));
        let spawnable = read.is_ok() && (magic.starts_with(b"#!") || magic == *b"\x7fELF");
        return spawnable.then_some(candidate);
    }
    None
}

/// Starts a process in its own process group with stdout and stderr on one pipe read into
/// `log`.
fn spawn(
    argv: &[String],
    env: &[(String, String)],
    cwd: &Path,
    log: Arc<LogBuffer>,
) -> std::io::Result<Spawned> {
    let (reader, writer) = std::io::pipe()?;
    let writer_err = writer.try_clone()?;
    let mut cmd = match resolve_program(&argv[0], env, cwd) {
        Some(path) => {
            let mut cmd = tokio::process::Command::new(path);
            // The process sees the name it was given, as with execvp.
            cmd.arg0(&argv[0]);
            cmd
        }
        None => tokio::process::Command::new(&argv[0]),
    };
    cmd.args(&argv[1..])
        .env_clear()
        .envs(env.iter().map(|(k, v)| (k, v)))
        .current_dir(cwd)
        .stdin(Stdio::null())
        .stdout(writer)
        .stderr(writer_err)
        .process_group(0)
        .kill_on_drop(true);
    let child = cmd.spawn();
    // Our copies of the pipe's write end must close, or the reader never sees EOF.
    drop(cmd);
    let child = child?;
    let mut pipe = tokio::net::unix::pipe::Receiver::from_owned_fd(OwnedFd::from(reader))?;
    let task = tokio::spawn(async move {
        let mut buf = vec![0u8; 8192];
        let mut partial: Vec<u8> = Vec::new();
        loop {
            match pipe.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    partial.extend_from_slice(&buf[..n]);
                    while let Some(pos) = partial.iter().position(|b| *b == b'\n') {
                        let line: Vec<u8> = partial.drain(..=pos).collect();
                        log.push(line);
                    }
                    if partial.len() > MAX_LINE {
                        log.push(std::mem::take(&mut partial));
                    }
                }
            }
        }
        if !partial.is_empty() {
            log.push(partial);
        }
    });
    Ok((child, task))
}

/// The pod status the real kubelet would write for `run`.
fn build_status(pod: &Value, run: &mut Run) -> Value {
    let policy = text(pod, "/spec/restartPolicy");
    let ctr_json = |c: &Ctr| {
        let running = matches!(c.state, State::Running { .. });
        let mut v = json!({
            "name": c.name,
            "image": c.image,
            "imageID": "",
            "ready": running,
            "started": running,
            "restartCount": c.restarts,
            "state": c.state.to_json(&c.id),
            "lastState": c.last.as_ref().map_or(json!({}), |l| l.to_json("")),
        });
        if !c.id.is_empty() {
            v["containerID"] = json!(c.id);
        }
        v
    };
    // getPhase, as the kubelet computes it.
    let (mut waiting, mut running, mut stopped, mut succeeded) = (0, 0, 0, 0);
    for c in &run.containers {
        match &c.state {
            State::Waiting { .. } if c.last.is_some() => stopped += 1,
            State::Waiting { .. } => waiting += 1,
            State::Running { .. } => running += 1,
            State::Terminated { exit, .. } => {
                stopped += 1;
                if *exit == 0 {
                    succeeded += 1;
                }
            }
        }
    }
    let init_failed = run
        .init
        .iter()
        .any(|c| matches!(c.state, State::Terminated { exit, .. } if exit != 0))
        && policy == "Never";
    let all_done = run
        .init
        .iter()
        .chain(run.containers.iter())
        .all(|c| !matches!(c.state, State::Running { .. }));
    let previous = text(pod, "/status/phase");
    let phase = if matches!(previous, "Succeeded" | "Failed") {
        previous.to_string()
    } else if (run.failure.is_some() && all_done) || init_failed {
        "Failed".into()
    } else if run.stopping && all_done && waiting == 0 {
        if stopped == succeeded && stopped > 0 {
            "Succeeded".into()
        } else {
            "Failed".into()
        }
    } else if !run.init_done || waiting > 0 {
        "Pending".into()
    } else if running > 0 {
        "Running".into()
    } else if stopped > 0 {
        if policy == "Always" {
            "Running".into()
        } else if stopped == succeeded {
            "Succeeded".into()
        } else if policy == "Never" {
            "Failed".into()
        } else {
            "Running".into()
        }
    } else {
        "Pending".into()
    };
    let terminal = matches!(phase.as_str(), "Succeeded" | "Failed");
    let now = controllers::now();
    let condition = |run: &mut Run,
                     type_: &str,
                     ok: bool,
                     reason: Option<&str>,
                     message: Option<String>| {
        let status = if ok { "True" } else { "False" }.to_string();
        let time = match run.transitions.get(type_) {
            Some((s, t)) if *s == status => t.clone(),
            _ => {
                run.transitions
                    .insert(type_.to_string(), (status.clone(), now.clone()));
                now.clone()
            }
        };
        let mut c = json!({"type": type_, "status": status, "lastProbeTime": null, "lastTransitionTime": time});
        if let Some(r) = reason {
            c["reason"] = json!(r);
        }
        if let Some(m) = message {
            c["message"] = json!(m);
        }
        c
    };
    let unready: Vec<String> = run
        .containers
        .iter()
        .filter(|c| !matches!(c.state, State::Running { .. }))
        .map(|c| c.name.clone())
        .collect();
    let all_ready = unready.is_empty() && !terminal;
    let (ready_reason, ready_message) = if terminal {
        (Some("PodCompleted"), None)
    } else if all_ready {
        (None, None)
    } else {
        (
            Some("ContainersNotReady"),
            Some(format!(
                "containers with unready status: [{}]",
                unready.join(" ")
            )),
        )
    };
    let init_message = (!run.init_done && !terminal).then(|| {
        format!(
            "containers with incomplete status: [{}]",
            run.init
                .iter()
                .filter(|c| !matches!(c.state, State::Terminated { exit: 0, .. }))
                .map(|c| c.name.clone())
                .collect::<Vec<_>>()
                .join(" ")
        )
    });
    let mut conditions = Vec::new();
    if let Some((reason, message)) = run.failure.clone()
        && reason == "Evicted"
    {
        conditions.push(condition(
            run,
            "DisruptionTarget",
            true,
            Some("TerminationByKubelet"),
            Some(message),
        ));
    }
    conditions.push(condition(
        run,
        "PodReadyToStartContainers",
        run.sandbox_ready && !terminal,
        None,
        None,
    ));
    conditions.push(condition(
        run,
        "Initialized",
        run.init_done || terminal && run.init.is_empty(),
        if terminal && run.init_done {
            Some("PodCompleted")
        } else if init_message.is_some() {
            Some("ContainersNotInitialized")
        } else {
            None
        },
        init_message,
    ));
    conditions.push(condition(
        run,
        "Ready",
        all_ready,
        ready_reason,
        ready_message.clone(),
    ));
    conditions.push(condition(
        run,
        "ContainersReady",
        all_ready,
        ready_reason,
        ready_message,
    ));
    conditions.push(condition(run, "PodScheduled", true, None, None));
    let mut status = json!({
        "phase": phase,
        "conditions": conditions,
        "hostIP": LOCAL_IP,
        "hostIPs": [{"ip": LOCAL_IP}],
        "podIP": LOCAL_IP,
        "podIPs": [{"ip": LOCAL_IP}],
        "startTime": run.started_at.clone().unwrap_or_else(|| now.clone()),
        "qosClass": "BestEffort",
        "containerStatuses": run.containers.iter().map(ctr_json).collect::<Vec<_>>(),
    });
    if !run.init.is_empty() {
        status["initContainerStatuses"] = json!(run.init.iter().map(ctr_json).collect::<Vec<_>>());
    }
    if let Some((reason, message)) = &run.failure
        && phase == "Failed"
    {
        status["reason"] = json!(reason);
        status["message"] = json!(message);
    }
    status
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expansion_follows_the_kubelet() {
        let vars = |n: &str| (n == "A").then(|| "x".to_string());
        assert_eq!(expand("$(A)-$(B)", vars), "x-$(B)");
        assert_eq!(expand("$$(A) $$ $", vars), "$(A) $ $");
        assert_eq!(expand("$((n+1)) $(A", vars), "$((n+1)) $(A");
        assert_eq!(expand("héllo $(A)é", vars), "héllo xé");
    }

    #[test]
    fn programs_resolve_as_execvp_finds_them() -> std::io::Result<()> {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("charon-resolve-{}", std::process::id()));
        let bin = dir.join("bin");
        std::fs::create_dir_all(bin.join("tool"))?;
        let script = |name: &str, body: &str| -> std::io::Result<PathBuf> {
            let path = bin.join(name);
            std::fs::write(&path, body)?;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))?;
            Ok(path)
        };
        let shebang = script("hello", "#!/bin/sh\necho hi\n")?;
        script("bare", "echo hi\n")?;
        std::fs::write(bin.join("plain"), "#!/bin/sh\n")?;
        let env = |path: &str| vec![("PATH".to_string(), path.to_string())];
        let search = format!("/nonexistent:{}", bin.display());
        // Skips what does not exist, directories and files without an execute bit.
        assert_eq!(
            resolve_program("hello", &env(&search), &dir),
            Some(shebang.clone())
        );
        assert_eq!(resolve_program("tool", &env(&search), &dir), None);
        assert_eq!(resolve_program("plain", &env(&search), &dir), None);
        // Relative entries are under the working directory.
        assert_eq!(
            resolve_program("hello", &env("bin"), &dir),
            Some(dir.join("bin").join("hello"))
        );
        // Scripts without `#!` and paths are left to execvp.
        assert_eq!(resolve_program("bare", &env(&search), &dir), None);
        assert_eq!(resolve_program("bin/hello", &env(&search), &dir), None);
        // The last PATH wins.
        let both = vec![
            ("PATH".to_string(), "/nonexistent".to_string()),
            ("PATH".to_string(), bin.display().to_string()),
        ];
        assert_eq!(resolve_program("hello", &both, &dir), Some(shebang));
        let _ = std::fs::remove_dir_all(&dir);
        Ok(())
    }

    #[test]
    fn mount_paths_are_rewritten_only_as_whole_paths() {
        let mounts = vec![(
            "/etc/creds".to_string(),
            PathBuf::from("/tmp/p/volumes/creds"),
        )];
        assert_eq!(
            rewrite_mounts("cat /etc/creds/password /etc/credsx", &mounts),
            "cat /tmp/p/volumes/creds/password /etc/credsx"
        );
    }
}
