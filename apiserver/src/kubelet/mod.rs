//! A simulated kubelet: it "schedules" every pod onto one node and runs each container's
//! `command` + `args` as a local process (there are no images: a container without a
//! `command` fails with `RunContainerError`), reporting status the way the real kubelet does.
//!
//! Volumes (see `volumes`): secret, configMap, downwardAPI and emptyDir volumes are written
//! to `<work dir>/<namespace>_<pod>_<uid>/volumes/<volume>/`; hostPath volumes are the host
//! path itself, a persistentVolumeClaim the directory of its bound volume (which outlives the
//! pod). Processes cannot see the real mount paths, so wherever a container's
//! `volumeMounts[].mountPath` (or something under it) appears in its command, args or env
//! values it is rewritten to that directory, and `CHARON_DEV_VOLUME_<NAME>` (the volume
//! name upper-cased, `-` and `.` as `_`) names it too. A process starts in `workingDir` when
//! that exists, else in the pod's directory.
//!
//! Output (stdout and stderr in one pipe, so in order) is kept per container instance,
//! current and previous, bounded to [`crate::logs::LOG_LIMIT`] bytes each, for `pods/log`.

//!
//! This module watches pods and runs a worker per pod (`pod`); the workers build on
//! `process` (running a command), `volumes`, `env` (a container's process environment),
//! `downward` (fieldRef values) and `status` (the pod status, pure functions of the run).

mod downward;
mod env;
mod node;
mod pod;
mod process;
mod status;
mod volumes;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;
use tokio::sync::{mpsc, watch};
use tokio::task::{JoinHandle, JoinSet};

pub use node::KubeletConfig;
use node::Node;
use pod::Command;

use crate::controllers::{Recorder, builtin, text};
use crate::lock::lock;
use crate::state::AppState;
use crate::store::Change;

/// The kubelet's handle on a pod's worker.
struct Worker {
    /// The pod as last seen (None once it is gone from the store), shared with the store: a
    /// node keeps thousands of finished pods' workers waiting for their deletion, and a copy
    /// each would double what their pods cost.
    pod: watch::Sender<Option<Arc<Value>>>,
    /// What else the worker is asked to do.
    commands: mpsc::UnboundedSender<Command>,
}

/// The kubelet's loop and its pod workers.
struct Shared {
    node: Arc<Node>,
    /// A worker per pod uid, while it runs.
    workers: Mutex<HashMap<String, Worker>>,
    tasks: Mutex<JoinSet<()>>,
}

/// The running kubelet.
pub struct Kubelet {
    shared: Arc<Shared>,
    task: JoinHandle<()>,
}

impl Kubelet {
    /// Starts watching pods.
    pub fn start(state: Arc<AppState>, config: KubeletConfig) -> std::io::Result<Kubelet> {
        let pods = builtin(&state.store, "", "pods")
            .ok_or_else(|| std::io::Error::other("pods are always served"))?;
        std::fs::create_dir_all(&config.work_dir)?;
        let node = Arc::new(Node {
            recorder: Recorder::new("kubelet", Some(config.node_name.clone())),
            scheduler: Recorder::new("default-scheduler", None),
            state,
            config,
            pods,
            groups: Mutex::new(HashSet::new()),
            stop: watch::channel(false).0,
        });
        let shared = Arc::new(Shared {
            node,
            workers: Mutex::new(HashMap::new()),
            tasks: Mutex::new(JoinSet::new()),
        });
        let task = tokio::spawn(watch_pods(shared.clone()));
        Ok(Kubelet { shared, task })
    }

    /// Fails a running pod as the kubelet does under node pressure; false when no such pod
    /// runs here.
    pub fn evict(&self, namespace: &str, name: &str) -> bool {
        let node = &self.shared.node;
        let Ok(pod) = node.state.store.get(&node.pods, namespace, name) else {
            return false;
        };
        let workers = lock(&self.shared.workers);
        workers
            .get(text(&pod, "/metadata/uid"))
            .is_some_and(|w| w.commands.send(Command::Evict).is_ok())
    }

    /// Kills every process and waits (briefly) for the pod workers to end.
    pub async fn shutdown(self) {
        self.shared.node.stop.send_replace(true);
        for pgid in lock(&self.shared.node.groups).drain() {
            process::signal_group(pgid, libc::SIGKILL);
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
        let _ = std::fs::remove_dir_all(&self.shared.node.config.work_dir);
    }
}

async fn watch_pods(shared: Arc<Shared>) {
    let mut changes = shared.node.state.store.changes();
    let mut stop = shared.node.stop.subscribe();
    resync(&shared);
    loop {
        tokio::select! {
            _ = stop.changed() => return,
            open = changes.next_batch(|change| match change {
                Change::Event(e) if e.type_key == "/pods" => {
                    observe(&shared, e.kind, e.object);
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
            let rv = w.pod.borrow().as_ref().map(|p| resource_version(p));
            (uid.clone(), rv.unwrap_or_default())
        })
        .collect();
    let node = shared.node.config.node_name.as_str();
    let changed = shared.node.state.store.select(&shared.node.pods, "", |p| {
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
        observe(shared, "MODIFIED", Arc::new(pod));
    }
}

/// Whether this node runs the pod: pods bound to other nodes are theirs.
fn ours(pod: &Value, node: &str) -> bool {
    let bound_to = text(pod, "/spec/nodeName");
    bound_to.is_empty() || bound_to == node
}

fn observe(shared: &Arc<Shared>, kind: &str, pod: Arc<Value>) {
    let uid = text(&pod, "/metadata/uid").to_string();
    let mut workers = lock(&shared.workers);
    if kind == "DELETED" {
        if let Some(w) = workers.get(&uid) {
            w.pod.send_replace(None);
        }
        return;
    }
    if !ours(&pod, &shared.node.config.node_name) {
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
        pod::pod_worker(worker_shared.node.clone(), &uid, pod_rx, commands_rx).await;
        lock(&worker_shared.workers).remove(&uid);
        worker_shared.node.state.logs.remove_pod(&uid);
    });
}
