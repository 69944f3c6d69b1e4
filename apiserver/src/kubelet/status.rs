//! The pod status the kubelet reports, built from what its containers are doing: pure
//! functions of the pod and the run, so the phase and conditions are tested without
//! processes.

use std::collections::HashMap;

use serde_json::{Value, json};

use crate::controllers::{self, text};

/// The IP every pod and the node report.
pub const LOCAL_IP: &str = "127.0.0.1";

/// What a container is doing, as its status reports it.
#[derive(Clone, Debug, PartialEq)]
pub enum State {
    /// Not started (yet, or again): why, and what the runtime said.
    Waiting {
        /// `ContainerCreating`, `CrashLoopBackOff`, …
        reason: String,
        /// Details, when there are any.
        message: Option<String>,
    },
    /// Its process runs.
    Running {
        /// When it started.
        started: String,
    },
    /// Its process ended (or never started).
    Terminated {
        /// The exit code (128 + signal when killed).
        exit: i32,
        /// `Completed`, `Error`, `StartError`, …
        reason: String,
        /// Details, when there are any.
        message: Option<String>,
        /// When it started, if it did.
        started: Option<String>,
        /// When it ended.
        finished: String,
    },
}

impl State {
    /// Waiting for `reason`.
    pub fn waiting(reason: &str, message: Option<String>) -> Self {
        State::Waiting {
            reason: reason.to_string(),
            message,
        }
    }

    /// The state as `containerStatuses[].state` shows it; `id` is the container's, for a
    /// terminated one.
    pub fn to_json(&self, id: &str) -> Value {
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

/// One container of the pod, as the kubelet tracks it.
#[derive(Clone, Debug)]
pub struct Ctr {
    /// Its name in the pod spec.
    pub name: String,
    /// Its image, reported as given.
    pub image: String,
    /// What it does now.
    pub state: State,
    /// What its previous instance ended as (`lastState`).
    pub last: Option<State>,
    /// How often it was restarted.
    pub restarts: u32,
    /// The current instance's container ID.
    pub id: String,
    /// The process group of the running instance.
    pub pgid: Option<i32>,
}

/// A pod's run on this node: everything its status is built from.
#[derive(Default)]
pub struct Run {
    /// The init containers, in order.
    pub init: Vec<Ctr>,
    /// The app containers.
    pub containers: Vec<Ctr>,
    /// Every init container has succeeded.
    pub init_done: bool,
    /// Set once the pod is being stopped: nothing (re)starts.
    pub stopping: bool,
    /// Why the pod failed as a whole (`DeadlineExceeded`, `Evicted`) and the message.
    pub failure: Option<(String, String)>,
    /// The volumes are set up (`PodReadyToStartContainers`).
    pub sandbox_ready: bool,
    /// Conditions' transition times, kept while their status stays.
    pub transitions: HashMap<String, (String, String)>,
    /// The status last written, so an unchanged one is not written again.
    pub last_written: Value,
    /// When the kubelet took the pod on (`startTime`).
    pub started_at: Option<String>,
}

/// The containers of `spec.<field>` (`containers`, `initContainers`).
pub fn containers_of(pod: &Value, field: &str) -> Vec<Value> {
    pod.pointer(&format!("/spec/{field}"))
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default()
}

impl Ctr {
    /// A container of the spec `c`, not created yet.
    pub fn new(c: &Value) -> Ctr {
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
}

/// The pod status the real kubelet would write for `run`. Pure but for the clock, and for
/// the conditions' transition times it keeps in `run`.
pub fn build_status(pod: &Value, run: &mut Run) -> Value {
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

    fn pod(policy: &str) -> Value {
        json!({"spec": {"restartPolicy": policy, "containers": [{"name": "main", "image": "busybox"}]}})
    }

    fn run_with(state: State) -> Run {
        let mut c = Ctr::new(&json!({"name": "main", "image": "busybox"}));
        c.state = state;
        Run {
            containers: vec![c],
            init_done: true,
            sandbox_ready: true,
            ..Run::default()
        }
    }

    fn ended(exit: i32) -> State {
        State::Terminated {
            exit,
            reason: if exit == 0 { "Completed" } else { "Error" }.into(),
            message: None,
            started: Some("2025-01-01T00:00:00Z".into()),
            finished: "2025-01-01T00:00:01Z".into(),
        }
    }

    fn condition<'a>(status: &'a Value, type_: &str) -> &'a Value {
        status["conditions"]
            .as_array()
            .and_then(|c| c.iter().find(|c| c["type"] == type_))
            .unwrap_or(&Value::Null)
    }

    #[test]
    fn a_running_container_makes_a_ready_running_pod() {
        let mut run = run_with(State::Running {
            started: "2025-01-01T00:00:00Z".into(),
        });
        let status = build_status(&pod("Never"), &mut run);
        assert_eq!(status["phase"], "Running");
        assert_eq!(status["podIP"], LOCAL_IP);
        assert_eq!(condition(&status, "Ready")["status"], "True");
        assert_eq!(
            condition(&status, "PodReadyToStartContainers")["status"],
            "True"
        );
        let types: Vec<&str> = status["conditions"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|c| c["type"].as_str())
            .collect();
        assert_eq!(
            types,
            [
                "PodReadyToStartContainers",
                "Initialized",
                "Ready",
                "ContainersReady",
                "PodScheduled"
            ]
        );
        let ctr = &status["containerStatuses"][0];
        assert_eq!(ctr["ready"], true);
        assert_eq!(ctr["state"]["running"]["startedAt"], "2025-01-01T00:00:00Z");
        assert!(status.get("initContainerStatuses").is_none());
    }

    #[test]
    fn the_phase_follows_exits_and_the_restart_policy() {
        for (policy, exit, phase) in [
            ("Never", 0, "Succeeded"),
            ("Never", 1, "Failed"),
            ("OnFailure", 0, "Succeeded"),
            ("OnFailure", 1, "Running"),
            ("Always", 0, "Running"),
        ] {
            let mut run = run_with(ended(exit));
            let status = build_status(&pod(policy), &mut run);
            assert_eq!(status["phase"], phase, "{policy} exit {exit}");
        }
        let mut run = run_with(ended(0));
        let status = build_status(&pod("Never"), &mut run);
        assert_eq!(condition(&status, "Ready")["reason"], "PodCompleted");
        assert_eq!(
            status["containerStatuses"][0]["state"]["terminated"]["exitCode"],
            0
        );
        // A terminal phase is never left.
        let mut finished = pod("Always");
        finished["status"] = json!({"phase": "Failed"});
        let status = build_status(&finished, &mut run_with(ended(0)));
        assert_eq!(status["phase"], "Failed");
    }

    #[test]
    fn init_containers_hold_the_pod_pending() {
        let mut run = run_with(State::waiting("PodInitializing", None));
        run.init = vec![Ctr::new(&json!({"name": "setup", "image": "busybox"}))];
        run.init_done = false;
        let status = build_status(&pod("Never"), &mut run);
        assert_eq!(status["phase"], "Pending");
        let initialized = condition(&status, "Initialized");
        assert_eq!(initialized["status"], "False");
        assert_eq!(initialized["reason"], "ContainersNotInitialized");
        assert_eq!(
            initialized["message"],
            "containers with incomplete status: [setup]"
        );
        assert_eq!(
            condition(&status, "Ready")["message"],
            "containers with unready status: [main]"
        );
        assert_eq!(status["initContainerStatuses"][0]["name"], "setup");
        // A failed init container fails a pod that never restarts.
        run.init[0].state = ended(2);
        assert_eq!(build_status(&pod("Never"), &mut run)["phase"], "Failed");
    }

    #[test]
    fn an_evicted_pod_fails_with_the_reason() {
        let mut run = run_with(ended(137));
        run.stopping = true;
        run.failure = Some(("Evicted".into(), "low on memory".into()));
        let status = build_status(&pod("Always"), &mut run);
        assert_eq!(status["phase"], "Failed");
        assert_eq!(status["reason"], "Evicted");
        assert_eq!(status["message"], "low on memory");
        let target = condition(&status, "DisruptionTarget");
        assert_eq!(target["status"], "True");
        assert_eq!(target["reason"], "TerminationByKubelet");
    }

    #[test]
    fn transition_times_stay_while_a_condition_holds() {
        let mut run = run_with(State::Running {
            started: "2025-01-01T00:00:00Z".into(),
        });
        run.transitions.insert(
            "Ready".into(),
            ("True".into(), "2020-01-01T00:00:00Z".into()),
        );
        run.transitions.insert(
            "Initialized".into(),
            ("False".into(), "2020-01-01T00:00:00Z".into()),
        );
        let status = build_status(&pod("Never"), &mut run);
        assert_eq!(
            condition(&status, "Ready")["lastTransitionTime"],
            "2020-01-01T00:00:00Z"
        );
        // Initialized turned True: a new transition.
        assert_ne!(
            condition(&status, "Initialized")["lastTransitionTime"],
            "2020-01-01T00:00:00Z"
        );
        assert_eq!(run.transitions["Initialized"].0, "True");
    }
}
