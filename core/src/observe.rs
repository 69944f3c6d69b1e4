//! What a Job and its Pods say about an attempt (SPEC §4), as a pure function.
//!
//! The instance state machine only understands [`JobStatus`]; this module turns the Job's
//! conditions and the main container's status into it, telling exits (with a code) from
//! attempts that broke without one and from infrastructure failures that never let the
//! container run (which are retried without cost).

use chrono::{DateTime, TimeZone, Utc};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{ContainerStateWaiting, ContainerStatus, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use crate::instance::JobStatus;
use crate::job::MAIN_CONTAINER;
use crate::pipeline;
use crate::retry::AttemptOutcome;

/// Waiting reasons that mean the image will never be fetched as things stand: retried as
/// infrastructure failures.
const PULL_FAILURES: &[&str] = &["ErrImagePull", "ImagePullBackOff", "RegistryUnavailable"];
/// Pod failure reasons that mean the node, not the work, ended the attempt.
const POD_INFRASTRUCTURE: &[&str] = &[
    "Evicted",
    "NodeLost",
    "Shutdown",
    "NodeShutdown",
    "Terminated",
    "UnexpectedAdmissionError",
    "OutOfpods",
    "Preempting",
];
/// Waiting reasons that mean the Job itself is wrong: an immediate Error.
const INVALID: &[&str] = &[
    "InvalidImageName",
    "CreateContainerConfigError",
    "CreateContainerError",
];
/// Reasons of a container reported terminated that never ran: the runtime could not start
/// its command (not in the image, not executable, a bad working directory; containerd says
/// `StartError` with exit code 128, the older dockershim `RunContainerError`). The same Job
/// fails the same way every time, so it is an immediate Error with the runtime's message
/// rather than a retried exit code 128.
const START_FAILURES: &[&str] = &["StartError", "RunContainerError"];

/// Converts a Kubernetes timestamp (jiff) to chrono.
pub fn time(t: &Time) -> Option<DateTime<Utc>> {
    let ts = t.0;
    Utc.timestamp_opt(ts.as_second(), ts.subsec_nanosecond().max(0) as u32)
        .single()
}

/// The container whose status speaks for the pod: a pipeline's first step that did not
/// exit 0, else the main container.
fn main_status(pod: &Pod) -> Option<&ContainerStatus> {
    if let Some(steps) = pipeline::pod_steps(pod) {
        return pipeline::deciding_container(pod, &steps);
    }
    let statuses = pod.status.as_ref()?.container_statuses.as_ref()?;
    statuses
        .iter()
        .find(|c| c.name == MAIN_CONTAINER)
        .or_else(|| statuses.first())
}

fn condition<'a>(job: &'a Job, type_: &str) -> Option<(&'a str, String)> {
    job.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == type_ && c.status == "True")
        .map(|c| {
            (
                c.reason.as_deref().unwrap_or_default(),
                c.message.clone().unwrap_or_default(),
            )
        })
}

/// Whether the Job has ended (its `Complete` or `Failed` condition is true): its attempt
/// no longer runs, whether or not its instance records that yet.
pub fn job_ended(job: &Job) -> bool {
    condition(job, "Complete").is_some() || condition(job, "Failed").is_some()
}

/// The attempt as seen through the Job of the current execution and its Pods (any order;
/// the newest pod decides). `job` is `None` when no such Job exists.
pub fn job_status(job: Option<&Job>, pods: &[Pod]) -> JobStatus {
    let Some(job) = job else {
        return JobStatus::Missing;
    };
    // Suspended on request, or still by the Job controller's account (a resume it has not
    // acted on yet: the pods it lists are still the ones the suspension stopped).
    let suspended = job.spec.as_ref().and_then(|s| s.suspend).unwrap_or(false)
        || condition(job, "Suspended").is_some();
    if suspended && !job_ended(job) {
        return JobStatus::Suspended;
    }
    // Pods stopped by a suspension say nothing about the attempt's outcome: after a resume
    // only the pods created since count.
    let resumed = resumed_at(job);
    let mut pods: Vec<&Pod> = pods
        .iter()
        .filter(|p| {
            let created = p.metadata.creation_timestamp.as_ref().and_then(time);
            let deleting = p.metadata.deletion_timestamp.is_some();
            // Creation times have whole seconds: a pod of the resume's second counts unless
            // it is being deleted (as a suspension's pods are).
            resumed.is_none_or(|at| created.is_some_and(|c| c > at || (c == at && !deleting)))
        })
        .collect();
    pods.sort_by_key(|p| p.metadata.creation_timestamp.as_ref().map(|t| t.0));
    if pipeline::is_array_job(job) {
        return array_status(job, &pods);
    }
    let newest = pods.last().copied();

    // A terminated main container is the most precise answer there is.
    let terminated = pods
        .iter()
        .rev()
        .filter_map(|p| main_status(p))
        .find_map(|c| c.state.as_ref()?.terminated.as_ref());
    if condition(job, "Complete").is_some() {
        return JobStatus::Finished(AttemptOutcome::Exited(0));
    }
    if let Some(t) = terminated
        && let Some(reason) = t.reason.as_deref()
        && START_FAILURES.contains(&reason)
    {
        let message = t.message.as_deref().unwrap_or_default();
        return JobStatus::Finished(AttemptOutcome::Invalid(describe(reason, message)));
    }
    if let Some((reason, message)) = condition(job, "Failed") {
        if reason == "DeadlineExceeded" {
            return JobStatus::Finished(AttemptOutcome::TimedOut);
        }
        if let Some(outcome) = newest.and_then(pod_failure) {
            return JobStatus::Finished(outcome);
        }
        if let Some(t) = terminated {
            return JobStatus::Finished(AttemptOutcome::Exited(t.exit_code));
        }
        if let Some(outcome) = newest.and_then(pod_failure) {
            return JobStatus::Finished(outcome);
        }
        let what = if message.is_empty() {
            format!("Job failed ({reason}) without an exit code")
        } else {
            format!("Job failed ({reason}): {message}")
        };
        return JobStatus::Finished(AttemptOutcome::NoExitCode(what));
    }
    if let Some(outcome) = newest.and_then(pod_failure) {
        return JobStatus::Finished(outcome);
    }
    if let Some(t) = terminated
        && t.exit_code != 0
    {
        // backoffLimit is 0: the Job will fail; no need to wait for its condition.
        return JobStatus::Finished(AttemptOutcome::Exited(t.exit_code));
    }
    let Some(pod) = newest else {
        return JobStatus::Pending;
    };
    match main_status(pod).and_then(|c| c.state.as_ref()) {
        Some(state) if state.running.is_some() => {
            let since = match pipeline::pod_steps(pod) {
                // The execution runs since its first step started.
                Some(steps) => pipeline::pipeline_started(pod, &steps),
                None => state
                    .running
                    .as_ref()
                    .and_then(|r| r.started_at.as_ref())
                    .and_then(time),
            };
            JobStatus::Running(since)
        }
        Some(state) if state.terminated.is_some() => JobStatus::Running(None),
        Some(state) => state
            .waiting
            .as_ref()
            .and_then(waiting_verdict)
            .unwrap_or(JobStatus::Pending),
        None => JobStatus::Pending,
    }
}

/// An array's Job: its tasks fail independently, so one task's exit does not end the
/// attempt; the Job's verdict does, with the exit code of the failed task with the lowest id.
fn array_status(job: &Job, pods: &[&Pod]) -> JobStatus {
    if condition(job, "Complete").is_some() {
        return JobStatus::Finished(AttemptOutcome::Exited(0));
    }
    if let Some((reason, message)) = condition(job, "Failed") {
        if reason == "DeadlineExceeded" {
            return JobStatus::Finished(AttemptOutcome::TimedOut);
        }
        return match pipeline::lowest_failed_exit(job, pods) {
            Some((_, code)) if code != 0 => JobStatus::Finished(AttemptOutcome::Exited(code)),
            _ => JobStatus::Finished(AttemptOutcome::NoExitCode(describe(
                &format!("Job failed ({reason}) without an exit code"),
                &message,
            ))),
        };
    }
    let running = pods
        .iter()
        .filter_map(|p| main_status(p)?.state.as_ref()?.running.as_ref())
        .map(|r| r.started_at.as_ref().and_then(time))
        .min();
    if let Some(since) = running {
        return JobStatus::Running(since);
    }
    let waiting = pods
        .last()
        .and_then(|p| main_status(p)?.state.as_ref()?.waiting.as_ref());
    if let Some(verdict) = waiting.and_then(waiting_verdict) {
        return verdict;
    }
    let started = pods.iter().any(|p| {
        main_status(p)
            .and_then(|c| c.state.as_ref())
            .is_some_and(|s| s.terminated.is_some())
    });
    if started {
        JobStatus::Running(None)
    } else {
        JobStatus::Pending
    }
}

/// What a container waiting to start says of the attempt: that it will never start as things
/// stand (an image that cannot be pulled, a Job that is wrong), or nothing yet.
fn waiting_verdict(w: &ContainerStateWaiting) -> Option<JobStatus> {
    let reason = w.reason.as_deref().unwrap_or_default();
    let message = w.message.as_deref().unwrap_or_default();
    if PULL_FAILURES.contains(&reason) {
        Some(JobStatus::Finished(AttemptOutcome::Infrastructure(
            describe(reason, message),
        )))
    } else if INVALID.contains(&reason) {
        Some(JobStatus::Finished(AttemptOutcome::Invalid(describe(
            reason, message,
        ))))
    } else {
        None
    }
}

/// When the Job was last resumed from a suspension (its `Suspended` condition turned False).
fn resumed_at(job: &Job) -> Option<DateTime<Utc>> {
    let conditions = job.status.as_ref()?.conditions.as_ref()?;
    let suspended = conditions.iter().find(|c| c.type_ == "Suspended")?;
    if suspended.status != "False" {
        return None;
    }
    suspended.last_transition_time.as_ref().and_then(time)
}

/// A pod that failed without its container running to an exit: eviction, a lost node, a
/// deadline. `None` when the pod says nothing of the sort.
fn pod_failure(pod: &Pod) -> Option<AttemptOutcome> {
    let status = pod.status.as_ref()?;
    if status.phase.as_deref() != Some("Failed") {
        return None;
    }
    let reason = status.reason.as_deref().unwrap_or("Failed");
    // A pod the node gave up on: whatever its container's exit code says (137 after the kill),
    // the attempt was cut short by the infrastructure.
    let node_failure = POD_INFRASTRUCTURE.contains(&reason);
    let exited = main_status(pod)
        .and_then(|c| c.state.as_ref())
        .is_some_and(|s| s.terminated.is_some());
    if exited && !node_failure && reason != "DeadlineExceeded" {
        return None;
    }
    let message = status.message.as_deref().unwrap_or_default();
    Some(match reason {
        "DeadlineExceeded" => AttemptOutcome::TimedOut,
        _ => AttemptOutcome::Infrastructure(describe(reason, message)),
    })
}

fn describe(reason: &str, message: &str) -> String {
    if message.is_empty() {
        reason.to_string()
    } else {
        format!("{reason}: {message}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn job(conditions: serde_json::Value) -> Job {
        serde_json::from_value(json!({
            "metadata": {"name": "j"},
            "status": {"conditions": conditions}
        }))
        .expect("test job")
    }

    fn pod(created: &str, status: serde_json::Value) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": "p", "creationTimestamp": created},
            "status": status
        }))
        .expect("test pod")
    }

    fn main_state(state: serde_json::Value) -> serde_json::Value {
        json!({"phase": "Running", "containerStatuses": [{
            "name": "main", "image": "x", "imageID": "", "ready": true, "restartCount": 0,
            "state": state
        }]})
    }

    #[test]
    fn a_job_has_ended_once_it_is_complete_or_failed() {
        for (conditions, ended) in [
            (json!([]), false),
            (json!([{"type": "Suspended", "status": "True"}]), false),
            (
                json!([{"type": "SuccessCriteriaMet", "status": "True"}]),
                false,
            ),
            (json!([{"type": "Complete", "status": "False"}]), false),
            (json!([{"type": "Complete", "status": "True"}]), true),
            (
                json!([{"type": "FailureTarget", "status": "True"}, {"type": "Failed", "status": "True"}]),
                true,
            ),
        ] {
            assert_eq!(job_ended(&job(conditions.clone())), ended, "{conditions}");
        }
    }

    #[test]
    fn a_suspended_job_is_suspended_and_its_stopped_pods_do_not_count_after_a_resume() {
        let mut suspended = job(json!([{"type": "Suspended", "status": "True"}]));
        suspended.spec =
            Some(serde_json::from_value(json!({"suspend": true, "template": {}})).unwrap());
        let killed = main_state(json!({"terminated": {"exitCode": 143}}));
        let stopped = pod("2024-01-01T00:00:00Z", killed.clone());
        assert_eq!(
            job_status(Some(&suspended), std::slice::from_ref(&stopped)),
            JobStatus::Suspended
        );
        // Unsuspended but not yet resumed by the Job controller: still suspended, and the
        // stopped pod's exit is not the attempt's.
        let resuming = job(json!([{"type": "Suspended", "status": "True"}]));
        assert_eq!(
            job_status(Some(&resuming), std::slice::from_ref(&stopped)),
            JobStatus::Suspended
        );
        let resumed = job(
            json!([{"type": "Suspended", "status": "False", "reason": "JobResumed",
            "lastTransitionTime": "2024-01-01T00:05:00Z"}]),
        );
        assert_eq!(
            job_status(Some(&resumed), std::slice::from_ref(&stopped)),
            JobStatus::Pending
        );
        let mut deleted_same_second = pod("2024-01-01T00:05:00Z", killed.clone());
        deleted_same_second.metadata.deletion_timestamp =
            deleted_same_second.metadata.creation_timestamp.clone();
        assert_eq!(
            job_status(Some(&resumed), &[stopped.clone(), deleted_same_second]),
            JobStatus::Pending
        );
        let running = pod(
            "2024-01-01T00:05:00Z",
            main_state(json!({"running": {"startedAt": "2024-01-01T00:05:01Z"}})),
        );
        assert!(matches!(
            job_status(Some(&resumed), &[stopped.clone(), running]),
            JobStatus::Running(Some(_))
        ));
        let new_failure = pod("2024-01-01T00:06:00Z", killed);
        assert_eq!(
            job_status(Some(&resumed), &[stopped, new_failure]),
            JobStatus::Finished(AttemptOutcome::Exited(143))
        );
        // A Job that completed as it was suspended is complete.
        let mut complete = job(json!([{"type": "Complete", "status": "True"}]));
        complete.spec = suspended.spec.clone();
        assert_eq!(
            job_status(Some(&complete), &[]),
            JobStatus::Finished(AttemptOutcome::Exited(0))
        );
    }

    #[test]
    fn table() {
        let none = job(json!([]));
        let complete = job(json!([{"type": "Complete", "status": "True"}]));
        let failed = job(
            json!([{"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded",
            "message": "Job has reached the specified backoff limit"}]),
        );
        let deadline =
            job(json!([{"type": "Failed", "status": "True", "reason": "DeadlineExceeded"}]));
        let t0 = "2024-01-01T00:00:00Z";
        let running = pod(
            t0,
            main_state(json!({"running": {"startedAt": "2024-01-01T00:00:05Z"}})),
        );
        let exited3 = pod(
            t0,
            main_state(json!({"terminated": {"exitCode": 3, "reason": "Error"}})),
        );
        let pulling = pod(
            t0,
            main_state(
                json!({"waiting": {"reason": "ImagePullBackOff", "message": "Back-off pulling image"}}),
            ),
        );
        let bad_image = pod(
            t0,
            main_state(json!({"waiting": {"reason": "InvalidImageName"}})),
        );
        let creating = pod(
            t0,
            main_state(json!({"waiting": {"reason": "ContainerCreating"}})),
        );
        let evicted = pod(
            t0,
            json!({"phase": "Failed", "reason": "Evicted", "message": "The node was low on resource: memory."}),
        );
        let since = Some(Utc.with_ymd_and_hms(2024, 1, 1, 0, 0, 5).unwrap());
        let cases: Vec<(&str, Option<&Job>, Vec<Pod>, JobStatus)> = vec![
            ("no job", None, vec![], JobStatus::Missing),
            ("no pods yet", Some(&none), vec![], JobStatus::Pending),
            (
                "creating",
                Some(&none),
                vec![creating.clone()],
                JobStatus::Pending,
            ),
            (
                "running",
                Some(&none),
                vec![running.clone()],
                JobStatus::Running(since),
            ),
            (
                "complete",
                Some(&complete),
                vec![],
                JobStatus::Finished(AttemptOutcome::Exited(0)),
            ),
            (
                "exit before the Job condition",
                Some(&none),
                vec![exited3.clone()],
                JobStatus::Finished(AttemptOutcome::Exited(3)),
            ),
            (
                "failed with exit",
                Some(&failed),
                vec![exited3],
                JobStatus::Finished(AttemptOutcome::Exited(3)),
            ),
            (
                "deadline",
                Some(&deadline),
                vec![running],
                JobStatus::Finished(AttemptOutcome::TimedOut),
            ),
            (
                "image pull",
                Some(&none),
                vec![pulling],
                JobStatus::Finished(AttemptOutcome::Infrastructure(
                    "ImagePullBackOff: Back-off pulling image".into(),
                )),
            ),
            (
                "invalid image",
                Some(&none),
                vec![bad_image],
                JobStatus::Finished(AttemptOutcome::Invalid("InvalidImageName".into())),
            ),
            (
                "evicted",
                Some(&none),
                vec![evicted.clone()],
                JobStatus::Finished(AttemptOutcome::Infrastructure(
                    "Evicted: The node was low on resource: memory.".into(),
                )),
            ),
            (
                "evicted after running (the kill's 137 is not the work's exit)",
                Some(&failed),
                vec![pod(
                    t0,
                    json!({"phase": "Failed", "reason": "Evicted", "message": "low on memory",
                        "containerStatuses": [{"name": "main", "image": "x", "imageID": "", "ready": false,
                            "restartCount": 0, "state": {"terminated": {"exitCode": 137, "reason": "Error"}}}]}),
                )],
                JobStatus::Finished(AttemptOutcome::Infrastructure("Evicted: low on memory".into())),
            ),
            (
                "a command that cannot start (containerd)",
                Some(&failed),
                vec![pod(
                    t0,
                    json!({"phase": "Failed", "containerStatuses": [{"name": "main", "image": "x",
                        "imageID": "", "ready": false, "restartCount": 0, "state": {"terminated": {
                            "exitCode": 128, "reason": "StartError",
                            "message": "failed to create containerd task: exec: \"report\": executable file not found in $PATH"}}}]}),
                )],
                JobStatus::Finished(AttemptOutcome::Invalid(
                    "StartError: failed to create containerd task: exec: \"report\": executable file not found in $PATH".into(),
                )),
            ),
            (
                "a container without a command, before the Job's condition",
                Some(&none),
                vec![pod(
                    t0,
                    main_state(json!({"terminated": {"exitCode": 128, "reason": "RunContainerError",
                        "message": "container \"main\" has no command"}})),
                )],
                JobStatus::Finished(AttemptOutcome::Invalid(
                    "RunContainerError: container \"main\" has no command".into(),
                )),
            ),
            (
                "an ordinary exit 128 is retried",
                Some(&none),
                vec![pod(
                    t0,
                    main_state(json!({"terminated": {"exitCode": 128, "reason": "Error"}})),
                )],
                JobStatus::Finished(AttemptOutcome::Exited(128)),
            ),
            (
                "failed without pods",
                Some(&failed),
                vec![],
                JobStatus::Finished(AttemptOutcome::NoExitCode(
                    "Job failed (BackoffLimitExceeded): Job has reached the specified backoff limit"
                        .into(),
                )),
            ),
        ];
        for (name, job, pods, want) in cases {
            assert_eq!(job_status(job, &pods), want, "{name}");
        }
    }
}
