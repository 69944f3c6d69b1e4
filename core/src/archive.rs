//! Log archiving (SPEC §11), the pure part: where an attempt's log goes in the log store, how
//! a pod is held until its log is archived, and when a pod's log is complete.
//!
//! With a log store configured, every pod of an execution carries the [`FINALIZER`]: the pod
//! object (and with it the kubelet's copy of its log) stays after its container ends, after
//! its Job is deleted (a later attempt, a halt, the history TTL) and after a running-timeout
//! kill, until the operator has copied the log into the store and removed the finalizer. An
//! operator that stops mid-copy finds the finalizer still there and copies again, to the same
//! deterministic key.

use chrono::{DateTime, Duration, Utc};
use k8s_openapi::api::core::v1::{ContainerStatus, Pod};

use crate::job::MAIN_CONTAINER;

/// Finalizer that holds a pod until its log is in the log store.
pub const FINALIZER: &str = "charon.dev/log-archive";

/// Annotation on each pod naming the store key of its log.
pub const ANNOTATION_LOG_KEY: &str = "charon.dev/log-key";

/// Annotation on each pod naming its instance (labels hold a shortened name).
pub const ANNOTATION_INSTANCE: &str = "charon.dev/instance";

/// How long after a pod's container ended the operator keeps trying to archive its log
/// before it lets the pod go without one (and says so in an Event): a store that is down for
/// longer must not hold pods for ever.
pub const GIVE_UP_AFTER: Duration = Duration::hours(1);

/// The store key of one attempt's log: namespace, instance uid and execution number (and,
/// for a pipeline, the step).
pub fn log_key(namespace: &str, uid: &str, execution: u32, step: Option<&str>) -> String {
    match step {
        Some(step) => format!("{namespace}/{uid}/{execution}/{step}.log"),
        None => format!("{namespace}/{uid}/{execution}.log"),
    }
}

/// The key of one part of an attempt's log, from the attempt's key ([`log_key`] without a
/// step): a pipeline's step, or an array's `task-<id>`.
pub fn part_key(attempt_key: &str, part: &str) -> String {
    format!(
        "{}/{part}.log",
        attempt_key.strip_suffix(".log").unwrap_or(attempt_key)
    )
}

/// The logs of a held pod to archive, as (container, store key) pairs, from the attempt's
/// key: each step a pipeline's pod started, an array task's log under its id, else the main
/// container's.
pub fn pod_logs(pod: &Pod, attempt_key: &str) -> Vec<(String, String)> {
    if let Some(steps) = crate::pipeline::pod_steps(pod) {
        return steps
            .into_iter()
            .filter(|s| crate::pipeline::container_ran(pod, s))
            .map(|s| (s.to_string(), part_key(attempt_key, s)))
            .collect();
    }
    let key = match crate::pipeline::pod_task_id(pod) {
        Some(id) => part_key(attempt_key, &format!("task-{id}")),
        None => attempt_key.to_string(),
    };
    vec![(MAIN_CONTAINER.to_string(), key)]
}

/// The key prefix of every log of one instance (deleted with it).
pub fn instance_prefix(namespace: &str, uid: &str) -> String {
    format!("{namespace}/{uid}/")
}

/// The namespace and instance uid a key belongs to, if it is one of [`log_key`]'s.
pub fn key_owner(key: &str) -> Option<(&str, &str)> {
    let mut parts = key.splitn(3, '/');
    let namespace = parts.next().filter(|s| !s.is_empty())?;
    let uid = parts.next().filter(|s| !s.is_empty())?;
    parts.next().filter(|rest| rest.ends_with(".log"))?;
    Some((namespace, uid))
}

/// What can be done with a held pod's log now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Readiness {
    /// Its container may still write: wait.
    Running,
    /// Its container has ended: the log is complete, archive it (`ended` is when).
    Complete {
        /// When the container ended, as the kubelet reported.
        ended: Option<DateTime<Utc>>,
    },
    /// It will never have a log (its container never started): let it go, saying why.
    Nothing(String),
}

fn main_status(pod: &Pod) -> Option<&ContainerStatus> {
    if let Some(steps) = crate::pipeline::pod_steps(pod) {
        // A pipeline's log is complete once the step that ended it has ended.
        return crate::pipeline::deciding_container(pod, &steps);
    }
    pod.status
        .as_ref()?
        .container_statuses
        .as_ref()?
        .iter()
        .find(|c| c.name == MAIN_CONTAINER)
}

/// Whether a pod's log is complete. A pod is done when its phase is terminal, or when it is
/// being deleted and its main container is not running (killed, or never started).
pub fn readiness(pod: &Pod) -> Readiness {
    let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
    let terminal = matches!(phase, Some("Succeeded" | "Failed"));
    let deleting = pod.metadata.deletion_timestamp.is_some();
    let main = main_status(pod);
    let state = main.and_then(|c| c.state.as_ref());
    let terminated = state
        .and_then(|s| s.terminated.as_ref())
        .or_else(|| main.and_then(|c| c.last_state.as_ref()?.terminated.as_ref()));
    let running = state.is_some_and(|s| s.running.is_some());
    if running && !terminal {
        return Readiness::Running;
    }
    if let Some(t) = terminated {
        if terminal || deleting {
            return Readiness::Complete {
                ended: t.finished_at.as_ref().and_then(crate::observe::time),
            };
        }
        return Readiness::Running;
    }
    if terminal || deleting {
        let why = match state.and_then(|s| s.waiting.as_ref()) {
            Some(w) => format!(
                "its container never started ({})",
                w.reason.as_deref().unwrap_or("waiting")
            ),
            None => "its container never started".to_string(),
        };
        return Readiness::Nothing(why);
    }
    Readiness::Running
}

/// Whether to stop trying to archive a log whose container ended at `ended` (or, when the
/// kubelet did not say, whose pod was created at `created`).
pub fn give_up(
    ended: Option<DateTime<Utc>>,
    created: Option<DateTime<Utc>>,
    now: DateTime<Utc>,
) -> bool {
    ended
        .or(created)
        .is_some_and(|since| now - since >= GIVE_UP_AFTER)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(value: serde_json::Value) -> Pod {
        serde_json::from_value(value).expect("a pod")
    }

    fn with_main(phase: &str, state: serde_json::Value, deleting: bool) -> Pod {
        let mut meta = json!({"name": "p", "namespace": "ns"});
        if deleting {
            meta["deletionTimestamp"] = json!("2026-12-01T10:00:00Z");
        }
        pod(json!({
            "metadata": meta,
            "status": {"phase": phase, "containerStatuses": [
                {"name": "main", "image": "i", "imageID": "", "ready": false,
                 "restartCount": 0, "state": state}
            ]}
        }))
    }

    #[test]
    fn keys_are_namespace_uid_and_execution() {
        assert_eq!(log_key("ns", "u-1", 3, None), "ns/u-1/3.log");
        assert_eq!(log_key("ns", "u-1", 3, Some("upper")), "ns/u-1/3/upper.log");
        assert_eq!(instance_prefix("ns", "u-1"), "ns/u-1/");
        assert!(log_key("ns", "u-1", 3, None).starts_with(&instance_prefix("ns", "u-1")));
    }

    #[test]
    fn key_owner_reads_back_what_log_key_wrote() {
        assert_eq!(key_owner(&log_key("a", "b", 1, None)), Some(("a", "b")));
        assert_eq!(
            key_owner(&log_key("a", "b", 1, Some("s"))),
            Some(("a", "b"))
        );
        assert_eq!(key_owner("a/b"), None);
        assert_eq!(key_owner("a/b/notes.txt"), None);
        assert_eq!(key_owner("/b/1.log"), None);
    }

    #[test]
    fn readiness_table() {
        let ended = json!({"terminated": {"exitCode": 1, "finishedAt": "2026-12-01T10:00:05Z"}});
        let running = json!({"running": {"startedAt": "2026-12-01T10:00:00Z"}});
        let waiting = json!({"waiting": {"reason": "ErrImagePull"}});
        let at = "2026-12-01T10:00:05Z".parse::<DateTime<Utc>>().ok();
        let cases = [
            (
                "finished",
                with_main("Failed", ended.clone(), false),
                Readiness::Complete { ended: at },
            ),
            (
                "finished, deleting",
                with_main("Failed", ended.clone(), true),
                Readiness::Complete { ended: at },
            ),
            (
                "killed, phase not yet written",
                with_main("Running", ended, true),
                Readiness::Complete { ended: at },
            ),
            (
                "running",
                with_main("Running", running.clone(), false),
                Readiness::Running,
            ),
            (
                "being killed",
                with_main("Running", running, true),
                Readiness::Running,
            ),
            (
                "pulling",
                with_main("Pending", waiting.clone(), false),
                Readiness::Running,
            ),
            (
                "deleted before it started",
                with_main("Pending", waiting, true),
                Readiness::Nothing("its container never started (ErrImagePull)".into()),
            ),
            (
                "no status at all, deleted",
                pod(
                    json!({"metadata": {"name": "p", "deletionTimestamp": "2026-12-01T10:00:00Z"}}),
                ),
                Readiness::Nothing("its container never started".into()),
            ),
            (
                "no status at all",
                pod(json!({"metadata": {"name": "p"}})),
                Readiness::Running,
            ),
        ];
        for (what, pod, want) in cases {
            assert_eq!(readiness(&pod), want, "{what}");
        }
    }

    #[test]
    fn gives_up_an_hour_after_the_container_ended() {
        let ended = "2026-12-01T10:00:00Z".parse::<DateTime<Utc>>().ok();
        let now = |m: i64| ended.unwrap() + Duration::minutes(m);
        assert!(!give_up(ended, None, now(59)));
        assert!(give_up(ended, None, now(60)));
        assert!(
            give_up(None, ended, now(61)),
            "falls back to the pod's creation"
        );
        assert!(!give_up(None, None, now(1000)), "never without a time");
    }

    #[test]
    fn each_step_and_each_task_has_its_own_key() {
        let base = log_key("ns", "uid", 2, None);
        let pipeline = pod(json!({
            "metadata": {"name": "p", "annotations": {crate::pipeline::ANNOTATION_STEPS: "a,b,c"}},
            "status": {"phase": "Failed",
                "initContainerStatuses": [
                    {"name": "a", "image": "x", "imageID": "", "ready": false, "restartCount": 0,
                     "state": {"terminated": {"exitCode": 0, "startedAt": "2024-01-01T00:00:00Z"}}},
                    {"name": "b", "image": "x", "imageID": "", "ready": false, "restartCount": 0,
                     "state": {"terminated": {"exitCode": 1, "startedAt": "2024-01-01T00:00:01Z"}}}],
                "containerStatuses": [
                    {"name": "c", "image": "x", "imageID": "", "ready": false, "restartCount": 0,
                     "state": {"terminated": {"exitCode": 137, "reason": "ContainerStatusUnknown"}}}]},
        }));
        assert_eq!(
            pod_logs(&pipeline, &base),
            [
                ("a".to_string(), "ns/uid/2/a.log".to_string()),
                ("b".to_string(), "ns/uid/2/b.log".to_string())
            ]
        );
        let task = pod(json!({
            "metadata": {"name": "t", "labels": {crate::pipeline::INDEX_LABEL: "1"}},
            "spec": {"containers": [{"name": MAIN_CONTAINER, "env": [
                {"name": "CHARON_TASK_FIRST", "value": "0"},
                {"name": "CHARON_TASK_STEP", "value": "3"},
                {"name": "CHARON_TASK_INDEXES", "value": "2-3"}]}]},
        }));
        assert_eq!(
            pod_logs(&task, &base),
            [(
                MAIN_CONTAINER.to_string(),
                "ns/uid/2/task-9.log".to_string()
            )]
        );
        let single = pod(json!({"metadata": {"name": "s"}}));
        assert_eq!(
            pod_logs(&single, &base),
            [(MAIN_CONTAINER.to_string(), base.clone())]
        );
    }
}
