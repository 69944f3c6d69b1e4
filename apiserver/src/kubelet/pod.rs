//! One pod's run on this node, from scheduling to its final status: volumes, containers in
//! order (init containers first), restarts with crash-loop back-off, graceful stops,
//! deadlines and eviction, with the events and status the real kubelet writes.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};
use tokio::sync::{Notify, mpsc, watch};
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::Instant;

use super::env::{self, Resolved, Sandbox};
use super::node::Node;
use super::process;
use super::status::{Ctr, Run, State, build_status, containers_of};
use super::volumes::{self, Volumes};
use crate::controllers::{self, builtin, modify, text};
use crate::lock::lock;
use crate::logs::LogBuffer;
use crate::store::{Deletion, Write};

/// How often an unschedulable pod's claims are looked at again.
const CLAIM_POLL: Duration = Duration::from_millis(200);

/// What the kubelet asks of a running pod besides what its object says.
pub enum Command {
    /// Fail it as under node pressure.
    Evict,
}

/// Why a container instance did not start, as its status reports it.
struct StartFailure {
    /// `RunContainerError`, `StartError`.
    reason: &'static str,
    /// What the runtime said.
    message: String,
    /// The start time the runtime reports for it, if any.
    started: Option<String>,
}

struct PodCtx {
    node: Arc<Node>,
    uid: String,
    namespace: String,
    name: String,
    dir: PathBuf,
    pod: Mutex<Value>,
    run: Mutex<Run>,
    changed: Notify,
    stop: watch::Sender<bool>,
    volumes: Mutex<Volumes>,
}

/// Runs one pod from scheduling to its removal from the store.
pub async fn pod_worker(
    node: Arc<Node>,
    uid: &str,
    mut pod_rx: watch::Receiver<Option<Arc<Value>>>,
    commands: mpsc::UnboundedReceiver<Command>,
) {
    let Some(pod) = pod_rx.borrow_and_update().clone() else {
        return;
    };
    let namespace = text(&pod, "/metadata/namespace").to_string();
    let name = text(&pod, "/metadata/name").to_string();
    let dir = node
        .config
        .work_dir
        .join(format!("{namespace}_{name}_{uid}"));
    let terminal = matches!(text(&pod, "/status/phase"), "Succeeded" | "Failed");
    if !terminal && pod.pointer("/metadata/deletionTimestamp").is_none() {
        let ctx = Arc::new(PodCtx {
            node: node.clone(),
            uid: uid.to_string(),
            namespace: namespace.clone(),
            name: name.clone(),
            dir: dir.clone(),
            pod: Mutex::new(Value::clone(&pod)),
            run: Mutex::new(Run::default()),
            changed: Notify::new(),
            stop: watch::channel(false).0,
            volumes: Mutex::new(Volumes::default()),
        });
        // Boxed, so that its (large) state is freed once the pod has run: the worker then
        // waits for the pod's deletion, often for as long as the node runs, holding little.
        Box::pin(ctx.run_pod(&mut pod_rx, commands)).await;
    }
    // Finished: wait for the delete, finish it, and clean up once the pod is gone.
    let mut stop = node.stop.subscribe();
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
                    let _ = node.state.store.delete_with(
                        &node.pods,
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
        self.node.recorder.record(
            &self.node.state.store,
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
        pod_rx: &mut watch::Receiver<Option<Arc<Value>>>,
        mut commands: mpsc::UnboundedReceiver<Command>,
    ) {
        let store = &self.node.state.store;
        let pod = self.pod();
        {
            let mut run = lock(&self.run);
            run.init = containers_of(&pod, "initContainers")
                .iter()
                .map(Ctr::new)
                .collect();
            run.containers = containers_of(&pod, "containers")
                .iter()
                .map(Ctr::new)
                .collect();
            if !run.init.is_empty() {
                for c in &mut run.containers {
                    c.state = State::waiting("PodInitializing", None);
                }
            }
            run.init_done = run.init.is_empty();
        }
        // Scheduling.
        if text(&pod, "/spec/nodeName").is_empty() && !self.await_claims(pod_rx).await {
            return;
        }
        let pod = self.pod();
        if text(&pod, "/spec/nodeName").is_empty() {
            let node = self.node.config.node_name.clone();
            let bound = modify(
                store,
                &self.node.pods,
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
            self.node.scheduler.record(
                store,
                &self.pod(),
                None,
                "Normal",
                "Scheduled",
                &format!(
                    "Successfully assigned {}/{} to {}",
                    self.namespace, self.name, self.node.config.node_name
                ),
            );
        }
        lock(&self.run).started_at = Some(controllers::now());
        self.write_status();

        let mut stop_all = self.node.stop.subscribe();
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
                            *lock(&self.pod) = Value::clone(&p);
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
                process::signal_group(pgid, signal);
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
                    if !self.pause(self.node.config.backoff).await {
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

    /// A container that runs no process: it exits 0 as soon as it starts, unless it would
    /// restart on success, in which case it runs until the pod stops.
    async fn simulate(&self, init: bool, i: usize, policy: &str) -> Option<i32> {
        let id = format!("charon://{}", uuid::Uuid::new_v4().simple());
        let started = controllers::now();
        if policy == "Always" && !init {
            self.set_state(init, i, |c| {
                c.id = id;
                c.state = State::Running { started };
            });
            while self.pause(Duration::from_secs(3600)).await {}
            return None;
        }
        self.set_state(init, i, |c| {
            c.id = id;
            c.state = State::Terminated {
                exit: 0,
                reason: "Completed".into(),
                message: None,
                started: Some(started.clone()),
                finished: started,
            };
        });
        Some(0)
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
        let cfg = self.node.config.clone();
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
                self.pulling(&name, &image);
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
            if cfg.simulated {
                return self.simulate(init, i, policy).await;
            }
            if instances == 0 {
                if text(&spec, "/imagePullPolicy") == "Always" {
                    self.pulling(&name, &image);
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
                    self.report_failed(&name, &message);
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
            let log = self.node.state.logs.start_instance(&self.uid, &name);
            let id = format!("charon://{}", uuid::Uuid::new_v4().simple());
            let started = controllers::now();
            let restarts = instances;
            instances += 1;
            let exit = match resolved.argv {
                None => {
                    let message = format!(
                        "container \"{name}\" has no command: the embedded kubelet runs commands, not image entrypoints"
                    );
                    let failure = StartFailure {
                        reason: "RunContainerError",
                        message,
                        started: None,
                    };
                    self.start_failed((init, i), &name, &log, (restarts, &id), failure)
                }
                Some(argv) => {
                    match process::spawn(&argv, &resolved.env, &resolved.cwd, log.clone()) {
                        Err(err) => {
                            let failure = StartFailure {
                                reason: "StartError",
                                message: process::start_error(&argv[0], &err),
                                started: Some("1970-01-01T00:00:00Z".into()),
                            };
                            self.start_failed((init, i), &name, &log, (restarts, &id), failure)
                        }
                        Ok((mut child, reader)) => {
                            let pgid = child.id().and_then(|p| i32::try_from(p).ok());
                            if let Some(pgid) = pgid {
                                lock(&self.node.groups).insert(pgid);
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
                                    process::signal_group(pgid, libc::SIGTERM);
                                }
                            }
                            let status = child.wait().await;
                            if let Some(pgid) = pgid {
                                // Whatever it left behind goes too, as with a container's PID
                                // namespace.
                                process::signal_group(pgid, libc::SIGKILL);
                                lock(&self.node.groups).remove(&pgid);
                            }
                            let _ = tokio::time::timeout(Duration::from_millis(500), reader).await;
                            log.close();
                            let exit = process::exit_code(status);
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
                    }
                }
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

    /// The event of a (simulated) image pull starting.
    fn pulling(&self, name: &str, image: &str) {
        self.event(
            Some(name),
            "Normal",
            "Pulling",
            &format!("Pulling image \"{image}\""),
        );
    }

    /// The Warning event every failure to configure or start a container gets.
    fn report_failed(&self, name: &str, message: &str) {
        self.event(
            Some(name),
            "Warning",
            "Failed",
            &format!("Error: {message}"),
        );
    }

    /// A container instance that did not start: its log ends, the Failed event says why,
    /// and it is reported terminated with exit code 128, which it returns. `slot` is (init,
    /// index) and `instance` its (restart count, container ID).
    fn start_failed(
        &self,
        slot: (bool, usize),
        name: &str,
        log: &LogBuffer,
        instance: (u32, &str),
        failure: StartFailure,
    ) -> i32 {
        log.close();
        self.report_failed(name, &failure.message);
        let (restarts, id) = instance;
        self.set_state(slot.0, slot.1, |c| {
            c.restarts = restarts;
            c.id = id.to_string();
            c.state = State::Terminated {
                exit: 128,
                reason: failure.reason.into(),
                message: Some(failure.message),
                started: failure.started,
                finished: controllers::now(),
            };
        });
        128
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
        self.put_status(&status, "writing pod status");
    }

    /// Writes `status` as the pod's; a failure (the pod went) is only logged, as `what`.
    fn put_status(&self, status: &Value, what: &str) {
        let written = controllers::write_status(
            &self.node.state.store,
            &self.node.pods,
            &self.namespace,
            &self.name,
            &self.uid,
            status,
        );
        if let Err(err) = written {
            tracing::debug!(%err, pod = self.name, "{what}");
        }
    }

    /// A Secret, ConfigMap or PersistentVolumeClaim (`plural`) of the pod's namespace, or a
    /// PersistentVolume.
    fn lookup(&self, plural: &str, name: &str) -> Option<Value> {
        let store = &self.node.state.store;
        let t = builtin(store, "", plural)?;
        let namespace = if t.namespaced {
            self.namespace.as_str()
        } else {
            ""
        };
        store.get(&t, namespace, name).ok()
    }

    /// Holds an unscheduled pod while the scheduler's volume binding would reject it (a
    /// claim missing, being deleted or unbound), reporting each new reason as the scheduler
    /// does; false when the pod stopped or went meanwhile.
    async fn await_claims(&self, pod_rx: &mut watch::Receiver<Option<Arc<Value>>>) -> bool {
        let mut reported: Option<String> = None;
        let mut stop = self.node.stop.subscribe();
        loop {
            let pod = self.pod();
            let node = &self.node.config.node_name;
            let reason = match crate::storage::claims_block(&self.node.state, &pod, node) {
                Ok(()) => return true,
                Err(reason) => reason,
            };
            if let Some(reason) = reason
                && reported.as_ref() != Some(&reason)
            {
                let message = format!(
                    "0/1 nodes are available: {reason}. preemption: 0/1 nodes are available: 1 Preemption is not helpful for scheduling.."
                );
                self.node.scheduler.record(
                    &self.node.state.store,
                    &pod,
                    None,
                    "Warning",
                    "FailedScheduling",
                    &message,
                );
                let status = json!({"phase": "Pending", "conditions": [{
                    "type": "PodScheduled", "status": "False", "lastProbeTime": null,
                    "lastTransitionTime": controllers::now(), "reason": "Unschedulable",
                    "message": message,
                }]});
                self.put_status(&status, "writing an unschedulable status");
                reported = Some(reason);
            }
            // The scheduler retries as claims change; a short poll stands in for its queue.
            tokio::select! {
                changed = pod_rx.changed() => {
                    let latest = if changed.is_ok() { pod_rx.borrow_and_update().clone() } else { None };
                    match latest {
                        Some(p) if p.pointer("/metadata/deletionTimestamp").is_none() => *lock(&self.pod) = Value::clone(&p),
                        _ => return false,
                    }
                }
                _ = stop.changed() => return false,
                _ = tokio::time::sleep(CLAIM_POLL) => {}
            }
        }
    }

    /// Materialises the pod's volumes; Err names the volume and says why.
    fn prepare_volumes(&self) -> Result<(), (String, String)> {
        let pod = self.pod();
        let prepared = volumes::prepare(&pod, &self.dir, |plural, name| self.lookup(plural, name))?;
        *lock(&self.volumes) = prepared;
        Ok(())
    }

    /// The process to start for container `c`, or why it cannot be configured.
    fn resolve(&self, c: &Value) -> Result<Resolved, String> {
        let pod = self.pod();
        let volumes = lock(&self.volumes).clone();
        let sandbox = Sandbox {
            pod: &pod,
            namespace: &self.namespace,
            name: &self.name,
            dir: &self.dir,
            address: &self.node.state.address,
            volumes: &volumes,
        };
        env::resolve(&sandbox, c, |plural, name| self.lookup(plural, name))
    }
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
