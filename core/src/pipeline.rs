//! How pipelines and job arrays run (SPEC §14), as pure functions: the pod of a pipeline,
//! the Indexed Job of an array, what their statuses say, and what a retry runs.
//!
//! One pod per execution. An init container copies `charon-launcher` (shipped in the
//! operator's image) into an `emptyDir` at [`MOUNT`]; every step is then a container of the
//! pod, the earlier ones init containers (Kubernetes runs those in order, each only after the
//! previous one exited 0, and fails the pod with the first non-zero one) and the last the
//! pod's container. Each step's command is the launcher wrapping the step's own: it feeds the
//! previous step's saved output to stdin and saves the chosen channel under [`OUTPUTS`] while
//! still writing it to the step's log. Outputs stay on the pod's storage: they never pass
//! through the API server, and images need no shell. A pipeline whose retries resume from the
//! failed step keeps [`OUTPUTS`] on a PersistentVolumeClaim of the run instead, so the next
//! attempt's pod finds them.
//!
//! An array is one Indexed Job whose container runs the launcher too: it turns the pod's
//! `JOB_COMPLETION_INDEX` into `CHARON_TASK_ID`. Each index may fail once
//! (`backoffLimitPerIndex: 0`) without stopping the others, and a retry's Job runs only the
//! positions that have not succeeded, listed in `CHARON_TASK_INDEXES`.

use std::collections::BTreeSet;

use chrono::{DateTime, Utc};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{ContainerStatus, Pod};

use crate::observe::time;
use crate::resources::{
    ArraySpec, ArrayStatus, ExecutionSnapshot, StepState, StepStatus, WorkflowInstanceStatus,
};

/// The shared volume the launcher is copied into.
pub const VOLUME: &str = "charon";
/// Where [`VOLUME`] is mounted in every container of the pod.
pub const MOUNT: &str = "/charon";
/// The launcher inside [`VOLUME`].
pub const LAUNCHER: &str = "/charon/launcher";
/// Where step outputs are saved, one file per step named after it.
pub const OUTPUTS: &str = "/charon/outputs";
/// The volume holding [`OUTPUTS`] when a retry may resume from a failed step: the run's
/// PersistentVolumeClaim.
pub const OUTPUTS_VOLUME: &str = "charon-outputs";
/// The init container that installs the launcher.
pub const INSTALL_CONTAINER: &str = "charon-launcher";
/// Pod annotation listing the steps the pod runs, in order (comma-separated): what the
/// observer and the log archive read the pod's steps from.
pub const ANNOTATION_STEPS: &str = "charon.dev/steps";
/// The label (and annotation) the Job controller puts the completion index of an Indexed
/// Job's pod in.
pub const INDEX_LABEL: &str = "batch.kubernetes.io/job-completion-index";

/// Where the operator's launcher comes from: its image and the launcher's path in it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Launcher<'a> {
    /// The image holding `charon-launcher` (the operator's own).
    pub image: &'a str,
    /// The launcher's path inside that image.
    pub command: &'a str,
}

impl Launcher<'static> {
    /// The released operator image, whose Dockerfile puts the launcher at `/charon-launcher`.
    pub const DEFAULT: Launcher<'static> = Launcher {
        image: concat!("ghcr.io/charon-dev/charon:", env!("CARGO_PKG_VERSION")),
        command: "/charon-launcher",
    };
}

/// The claim a resumable pipeline's run keeps its step outputs on.
pub fn outputs_claim(instance: &str) -> String {
    // Instance names are DNS labels of at most 63 characters; claim names may have 253.
    format!("{instance}-outputs")
}

/// The saved output of step `name`.
pub fn output_path(name: &str) -> String {
    format!("{OUTPUTS}/{name}")
}

/// The argv of step `index` of `steps` (the launcher wrapping the step's command): reading
/// the output of the step before it, saving its own for the step after it.
pub fn step_argv(names: &[&str], index: usize, output: &str, argv: &[String]) -> Vec<String> {
    let mut out = vec![LAUNCHER.to_string(), "run".to_string()];
    if index > 0 {
        out.push("--input".to_string());
        out.push(output_path(names[index - 1]));
    }
    if index + 1 < names.len() {
        out.push("--output".to_string());
        out.push(output.to_string());
        out.push("--save".to_string());
        out.push(output_path(names[index]));
    }
    out.push("--".to_string());
    out.extend(argv.iter().cloned());
    out
}

/// Parses Kubernetes' index list format (`"1,3-5,7"`); `None` when malformed.
pub fn parse_indexes(text: &str) -> Option<Vec<i64>> {
    let mut out = Vec::new();
    for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        match part.split_once('-') {
            Some((a, b)) => {
                let (a, b): (i64, i64) = (a.parse().ok()?, b.parse().ok()?);
                if b < a {
                    return None;
                }
                out.extend(a..=b);
            }
            None => out.push(part.parse().ok()?),
        }
    }
    Some(out)
}

/// Formats ascending indexes as Kubernetes does (`"1,3-5,7"`).
pub fn format_indexes(indexes: &[i64]) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut i = 0;
    while i < indexes.len() {
        let start = indexes[i];
        let mut end = start;
        while i + 1 < indexes.len() && indexes[i + 1] == end + 1 {
            i += 1;
            end = indexes[i];
        }
        parts.push(if start == end {
            start.to_string()
        } else {
            format!("{start}-{end}")
        });
        i += 1;
    }
    parts.join(",")
}

/// The array positions an execution runs: those of `snapshot.tasks`, or all of them.
pub fn positions(array: &ArraySpec, tasks: &str) -> Vec<i64> {
    if tasks.is_empty() {
        (0..array.count()).collect()
    } else {
        parse_indexes(tasks).unwrap_or_default()
    }
}

/// What the next attempt of a run runs, decided when it is prepared from the status the last
/// attempt left: an array's retry runs the tasks that have not succeeded; a resumable
/// pipeline's retry starts at the step that failed when the steps before it are unchanged.
pub fn plan_retry(
    next: &mut ExecutionSnapshot,
    status: &WorkflowInstanceStatus,
    resume_from_failed_step: bool,
) {
    let previous = status.snapshot.as_ref();
    if let (Some(array), Some(done)) = (&next.array, &status.array)
        && previous.and_then(|p| p.array.as_ref()) == Some(array)
    {
        let succeeded: BTreeSet<i64> = done.succeeded.iter().copied().collect();
        let left: Vec<i64> = (0..array.count())
            .filter(|p| !succeeded.contains(&array.id(*p)))
            .collect();
        if left.len() as i64 != array.count() {
            next.tasks = format_indexes(&left);
        }
    }
    if !resume_from_failed_step || next.steps.is_empty() {
        return;
    }
    let Some(previous) = previous else { return };
    let Some(failed) = status
        .steps
        .iter()
        .position(|s| s.state == StepState::Failed)
    else {
        return;
    };
    let earlier_ok = status.steps[..failed]
        .iter()
        .all(|s| matches!(s.state, StepState::Succeeded | StepState::Reused));
    let names = |steps: &[crate::resources::Step]| {
        steps
            .iter()
            .take(failed + 1)
            .map(|s| s.name.clone())
            .collect::<Vec<_>>()
    };
    // The steps before the failed one must be the ones whose outputs were saved.
    let unchanged = previous.steps.len() > failed
        && next.steps.len() > failed
        && names(&previous.steps) == names(&next.steps)
        && previous.steps[..failed] == next.steps[..failed];
    if failed > 0 && earlier_ok && unchanged {
        next.resume_from = Some(next.steps[failed].name.clone());
    }
}

/// The index of the first step an execution runs.
pub fn first_step(snapshot: &ExecutionSnapshot) -> usize {
    snapshot
        .resume_from
        .as_deref()
        .and_then(|name| snapshot.steps.iter().position(|s| s.name == name))
        .unwrap_or(0)
}

/// `status.steps` of a new attempt: the reused steps, then every other one waiting.
pub fn initial_steps(snapshot: &ExecutionSnapshot) -> Vec<StepStatus> {
    let first = first_step(snapshot);
    snapshot
        .steps
        .iter()
        .enumerate()
        .map(|(i, s)| StepStatus {
            name: s.name.clone(),
            state: if i < first {
                StepState::Reused
            } else {
                StepState::Waiting
            },
            ..Default::default()
        })
        .collect()
}

/// The steps a pod runs, from [`ANNOTATION_STEPS`]; `None` for a pod that is no pipeline's.
pub fn pod_steps(pod: &Pod) -> Option<Vec<&str>> {
    let names = pod.metadata.annotations.as_ref()?.get(ANNOTATION_STEPS)?;
    Some(names.split(',').filter(|s| !s.is_empty()).collect())
}

/// Whether a container ran (and so has a log): it runs or ran. The kubelet reports a
/// container that never started in a pod that ended as terminated with reason
/// `ContainerStatusUnknown` and no start time; that one did not run.
pub fn ran(status: &ContainerStatus) -> bool {
    let Some(state) = status.state.as_ref() else {
        return false;
    };
    if state.running.is_some() {
        return true;
    }
    state.terminated.as_ref().is_some_and(|t| {
        t.started_at.is_some() || t.reason.as_deref() != Some("ContainerStatusUnknown")
    })
}

/// Whether container `name` of the pod ran ([`ran`]), so it has a log.
pub fn container_ran(pod: &Pod, name: &str) -> bool {
    statuses(pod).filter(|c| c.name == name).any(ran)
}

/// A pod's container statuses, init containers first.
fn statuses(pod: &Pod) -> impl Iterator<Item = &ContainerStatus> {
    let status = pod.status.as_ref();
    let init = status.and_then(|s| s.init_container_statuses.as_deref());
    let main = status.and_then(|s| s.container_statuses.as_deref());
    init.into_iter().flatten().chain(main.into_iter().flatten())
}

/// The container of a pipeline pod that says what the attempt is: the first one that did
/// not exit 0 (running, waiting, or failed), else the last step.
pub fn deciding_container<'a>(pod: &'a Pod, steps: &[&str]) -> Option<&'a ContainerStatus> {
    let find = |name: &str| statuses(pod).find(|c| c.name == name);
    let order = std::iter::once(INSTALL_CONTAINER).chain(steps.iter().copied());
    let mut last = None;
    for name in order {
        // Not reported yet: the pod is still being set up.
        let status = find(name)?;
        let exited_zero = status
            .state
            .as_ref()
            .and_then(|s| s.terminated.as_ref())
            .is_some_and(|t| t.exit_code == 0);
        if !exited_zero {
            return Some(status);
        }
        last = Some(status);
    }
    last
}

/// When the pipeline pod's first step started running.
pub fn pipeline_started(pod: &Pod, steps: &[&str]) -> Option<DateTime<Utc>> {
    let first = steps.first()?;
    let status = statuses(pod).find(|c| c.name == *first)?;
    let state = status.state.as_ref()?;
    let started = state
        .running
        .as_ref()
        .and_then(|r| r.started_at.as_ref())
        .or_else(|| {
            state
                .terminated
                .as_ref()
                .and_then(|t| t.started_at.as_ref())
        })?;
    time(started)
}

/// `status.steps` as the newest pod of the current attempt shows them; `finished` marks the
/// steps an ended attempt never reached as skipped.
pub fn step_statuses(
    snapshot: &ExecutionSnapshot,
    pods: &[Pod],
    finished: bool,
) -> Vec<StepStatus> {
    let mut steps = initial_steps(snapshot);
    let newest = pods
        .iter()
        .filter(|p| pod_steps(p).is_some())
        .max_by_key(|p| p.metadata.creation_timestamp.as_ref().map(|t| t.0));
    if let Some(pod) = newest {
        for step in steps.iter_mut().filter(|s| s.state != StepState::Reused) {
            let Some(status) = statuses(pod).find(|c| c.name == step.name) else {
                continue;
            };
            let Some(state) = status.state.as_ref().filter(|_| ran(status)) else {
                continue;
            };
            if let Some(t) = &state.terminated {
                step.state = if t.exit_code == 0 {
                    StepState::Succeeded
                } else {
                    StepState::Failed
                };
                step.exit_code = Some(t.exit_code);
                step.started_at = t.started_at.as_ref().and_then(time);
                step.finished_at = t.finished_at.as_ref().and_then(time);
            } else if let Some(r) = &state.running {
                step.state = StepState::Running;
                step.started_at = r.started_at.as_ref().and_then(time);
            }
        }
    }
    if finished {
        for step in steps.iter_mut() {
            if matches!(step.state, StepState::Waiting | StepState::Running) {
                step.state = StepState::Skipped;
            }
        }
    }
    steps
}

/// How many steps of the attempt are behind it.
pub fn steps_completed(steps: &[StepStatus]) -> u32 {
    steps
        .iter()
        .filter(|s| matches!(s.state, StepState::Succeeded | StepState::Reused))
        .count() as u32
}

/// The first step that failed, with its exit code: what Events and messages name.
pub fn failed_step(steps: &[StepStatus]) -> Option<(&str, Option<i32>)> {
    steps
        .iter()
        .find(|s| s.state == StepState::Failed)
        .map(|s| (s.name.as_str(), s.exit_code))
}

/// Whether a Job runs an array (Indexed, one failure allowed per index).
pub fn is_array_job(job: &Job) -> bool {
    job.spec.as_ref().is_some_and(|s| {
        s.completion_mode.as_deref() == Some("Indexed") && s.backoff_limit_per_index.is_some()
    })
}

/// The positions of the Job's indexes in `list` (`completedIndexes` or `failedIndexes`).
fn job_positions(job: &Job, failed: bool, positions: &[i64]) -> Vec<i64> {
    let status = job.status.as_ref();
    let list = if failed {
        status.and_then(|s| s.failed_indexes.as_deref())
    } else {
        status.and_then(|s| s.completed_indexes.as_deref())
    };
    parse_indexes(list.unwrap_or_default())
        .unwrap_or_default()
        .into_iter()
        .filter_map(|i| {
            usize::try_from(i)
                .ok()
                .and_then(|i| positions.get(i).copied())
        })
        .collect()
}

/// `status.array` after what the current execution's Job reports, on top of what earlier
/// attempts of the run left.
pub fn array_status(
    snapshot: &ExecutionSnapshot,
    job: Option<&Job>,
    previous: Option<&ArrayStatus>,
) -> Option<ArrayStatus> {
    let array = snapshot.array.as_ref()?;
    let positions = positions(array, &snapshot.tasks);
    let mut succeeded: BTreeSet<i64> = previous
        .map(|p| p.succeeded.iter().copied().collect())
        .unwrap_or_default();
    let running: BTreeSet<i64> = positions.iter().map(|p| array.id(*p)).collect();
    // A task this attempt re-runs is failed only if it fails again.
    let mut failed: BTreeSet<i64> = previous
        .map(|p| {
            p.failed
                .iter()
                .copied()
                .filter(|id| !running.contains(id))
                .collect()
        })
        .unwrap_or_default();
    if let Some(job) = job {
        succeeded.extend(
            job_positions(job, false, &positions)
                .into_iter()
                .map(|p| array.id(p)),
        );
        failed.extend(
            job_positions(job, true, &positions)
                .into_iter()
                .map(|p| array.id(p)),
        );
    }
    Some(ArrayStatus {
        succeeded: succeeded.into_iter().collect(),
        failed: failed.into_iter().collect(),
    })
}

/// The exit code of the failed task with the lowest id (its index's pods, newest first).
pub fn lowest_failed_exit(job: &Job, pods: &[&Pod]) -> Option<(i64, i32)> {
    let failed = parse_indexes(
        job.status
            .as_ref()
            .and_then(|s| s.failed_indexes.as_deref())
            .unwrap_or_default(),
    )?;
    let lowest = *failed.iter().min()?;
    let code = pods
        .iter()
        .filter(|p| pod_index(p) == Some(lowest))
        .filter_map(|p| {
            let main = p.status.as_ref()?.container_statuses.as_ref()?.first()?;
            let t = main.state.as_ref()?.terminated.as_ref()?;
            Some((
                p.metadata.creation_timestamp.as_ref().map(|t| t.0),
                t.exit_code,
            ))
        })
        .max_by_key(|(created, _)| *created)
        .map(|(_, code)| code)?;
    Some((lowest, code))
}

/// The task id an array's pod runs: its completion index mapped through the array variables
/// its main container was given (as the launcher maps it).
pub fn pod_task_id(pod: &Pod) -> Option<i64> {
    let index = pod_index(pod)?;
    let spec = pod.spec.as_ref()?;
    let main = spec
        .containers
        .iter()
        .find(|c| c.name == crate::job::MAIN_CONTAINER)?;
    let var = |name: &str| {
        main.env
            .as_ref()?
            .iter()
            .find(|e| e.name == name)?
            .value
            .clone()
    };
    let first: i64 = var("CHARON_TASK_FIRST")?.parse().ok()?;
    let step: i64 = var("CHARON_TASK_STEP")
        .and_then(|s| s.parse().ok())
        .unwrap_or(1);
    let position = match var("CHARON_TASK_INDEXES") {
        Some(list) => *parse_indexes(&list)?.get(usize::try_from(index).ok()?)?,
        None => index,
    };
    Some(first.saturating_add(position.saturating_mul(step)))
}

/// The completion index of an Indexed Job's pod.
pub fn pod_index(pod: &Pod) -> Option<i64> {
    pod.metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(INDEX_LABEL))
        .or_else(|| pod.metadata.annotations.as_ref()?.get(INDEX_LABEL))?
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::Step;
    use serde_json::json;

    fn step(name: &str) -> Step {
        Step {
            name: name.into(),
            image: "busybox".into(),
            command: vec!["sh".into(), "-c".into(), name.into()],
            output: "stdout".into(),
            ..Default::default()
        }
    }

    #[test]
    fn index_lists_round_trip() {
        for (text, list) in [
            ("", vec![]),
            ("0", vec![0]),
            ("1,3-5,7", vec![1, 3, 4, 5, 7]),
            ("0-3", vec![0, 1, 2, 3]),
        ] {
            assert_eq!(parse_indexes(text), Some(list.clone()), "{text}");
            assert_eq!(format_indexes(&list), text);
        }
        assert_eq!(parse_indexes("3-1"), None);
        assert_eq!(parse_indexes("x"), None);
    }

    #[test]
    fn step_argv_chains_outputs() {
        let names = ["words", "upper", "reverse"];
        let argv = vec!["tr".to_string(), "a-z".to_string(), "A-Z".to_string()];
        assert_eq!(
            step_argv(&names, 0, "stdout", &argv),
            [
                LAUNCHER,
                "run",
                "--output",
                "stdout",
                "--save",
                "/charon/outputs/words",
                "--",
                "tr",
                "a-z",
                "A-Z"
            ]
        );
        assert_eq!(
            step_argv(&names, 1, "/tmp/out", &argv),
            [
                LAUNCHER,
                "run",
                "--input",
                "/charon/outputs/words",
                "--output",
                "/tmp/out",
                "--save",
                "/charon/outputs/upper",
                "--",
                "tr",
                "a-z",
                "A-Z"
            ]
        );
        assert_eq!(
            step_argv(&names, 2, "stdout", &argv),
            [
                LAUNCHER,
                "run",
                "--input",
                "/charon/outputs/upper",
                "--",
                "tr",
                "a-z",
                "A-Z"
            ]
        );
    }

    fn status_with(
        steps: Vec<(&str, StepState)>,
        snapshot: ExecutionSnapshot,
    ) -> WorkflowInstanceStatus {
        WorkflowInstanceStatus {
            steps: steps
                .into_iter()
                .map(|(n, state)| StepStatus {
                    name: n.into(),
                    state,
                    ..Default::default()
                })
                .collect(),
            snapshot: Some(Box::new(snapshot)),
            ..Default::default()
        }
    }

    #[test]
    fn a_resumable_retry_starts_at_the_failed_step_only_when_the_steps_before_are_unchanged() {
        let snapshot = ExecutionSnapshot {
            steps: vec![step("a"), step("b"), step("c")],
            ..Default::default()
        };
        let failed_b = status_with(
            vec![
                ("a", StepState::Succeeded),
                ("b", StepState::Failed),
                ("c", StepState::Skipped),
            ],
            snapshot.clone(),
        );
        let mut next = snapshot.clone();
        plan_retry(&mut next, &failed_b, true);
        assert_eq!(next.resume_from.as_deref(), Some("b"));
        assert_eq!(first_step(&next), 1);
        assert_eq!(initial_steps(&next)[0].state, StepState::Reused);
        // Not asked for.
        let mut next = snapshot.clone();
        plan_retry(&mut next, &failed_b, false);
        assert_eq!(next.resume_from, None);
        // The first step failed: nothing to reuse.
        let failed_a = status_with(
            vec![("a", StepState::Failed), ("b", StepState::Skipped)],
            snapshot.clone(),
        );
        let mut next = snapshot.clone();
        plan_retry(&mut next, &failed_a, true);
        assert_eq!(next.resume_from, None);
        // Step a changed since: its saved output is not what the new a would write.
        let mut changed = snapshot.clone();
        changed.steps[0].args = vec!["new".into()];
        plan_retry(&mut changed, &failed_b, true);
        assert_eq!(changed.resume_from, None);
        // A resumed attempt that fails again at c resumes at c.
        let mut resumed = snapshot.clone();
        resumed.resume_from = Some("b".into());
        let failed_c = status_with(
            vec![
                ("a", StepState::Reused),
                ("b", StepState::Succeeded),
                ("c", StepState::Failed),
            ],
            resumed,
        );
        let mut next = snapshot.clone();
        plan_retry(&mut next, &failed_c, true);
        assert_eq!(next.resume_from.as_deref(), Some("c"));
    }

    fn array_snapshot(tasks: &str) -> ExecutionSnapshot {
        ExecutionSnapshot {
            array: Some(ArraySpec {
                start: 0,
                end: 9,
                step: 3,
                parallelism: None,
            }),
            tasks: tasks.into(),
            ..Default::default()
        }
    }

    fn array_job(completed: &str, failed: &str) -> Job {
        serde_json::from_value(json!({
            "metadata": {"name": "j"},
            "spec": {"completionMode": "Indexed", "backoffLimitPerIndex": 0, "template": {}},
            "status": {"completedIndexes": completed, "failedIndexes": failed},
        }))
        .unwrap()
    }

    #[test]
    fn an_array_retry_runs_only_the_tasks_that_failed() {
        let first = array_snapshot("");
        assert_eq!(positions(first.array.as_ref().unwrap(), ""), [0, 1, 2, 3]);
        let job = array_job("0,2-3", "1");
        let after = array_status(&first, Some(&job), None).unwrap();
        assert_eq!(after.succeeded, [0, 6, 9]);
        assert_eq!(after.failed, [3]);
        let status = WorkflowInstanceStatus {
            snapshot: Some(Box::new(first.clone())),
            array: Some(after.clone()),
            ..Default::default()
        };
        let mut next = array_snapshot("");
        plan_retry(&mut next, &status, false);
        assert_eq!(next.tasks, "1");
        // The retry's Job has one index, 0, which is position 1 (task 3).
        let running = array_status(&next, Some(&array_job("", "")), Some(&after)).unwrap();
        assert_eq!(running.failed, Vec::<i64>::new());
        let done = array_status(&next, Some(&array_job("0", "")), Some(&after)).unwrap();
        assert_eq!(done.succeeded, [0, 3, 6, 9]);
        assert_eq!(done.failed, Vec::<i64>::new());
        let again = array_status(&next, Some(&array_job("", "0")), Some(&after)).unwrap();
        assert_eq!(again.failed, [3]);
    }

    #[test]
    fn the_lowest_failed_task_gives_the_exit_code() {
        let job = array_job("0", "1,3");
        let pod = |index: &str, code: i32| -> Pod {
            serde_json::from_value(json!({
                "metadata": {"name": format!("p{index}"), "creationTimestamp": "2024-01-01T00:00:00Z",
                    "labels": {INDEX_LABEL: index}},
                "status": {"phase": "Failed", "containerStatuses": [{"name": "main", "image": "x",
                    "imageID": "", "ready": false, "restartCount": 0,
                    "state": {"terminated": {"exitCode": code}}}]},
            }))
            .unwrap()
        };
        assert_eq!(
            lowest_failed_exit(&job, &[&pod("3", 7), &pod("1", 4), &pod("0", 0)]),
            Some((1, 4))
        );
    }

    #[test]
    fn step_statuses_follow_the_pod() {
        let snapshot = ExecutionSnapshot {
            steps: vec![step("a"), step("b"), step("c")],
            ..Default::default()
        };
        let pod: Pod = serde_json::from_value(json!({
            "metadata": {"name": "p", "creationTimestamp": "2024-01-01T00:00:00Z",
                "annotations": {ANNOTATION_STEPS: "a,b,c"}},
            "status": {"phase": "Failed",
                "initContainerStatuses": [
                    {"name": INSTALL_CONTAINER, "image": "x", "imageID": "", "ready": false, "restartCount": 0,
                     "state": {"terminated": {"exitCode": 0}}},
                    {"name": "a", "image": "x", "imageID": "", "ready": false, "restartCount": 0,
                     "state": {"terminated": {"exitCode": 0, "startedAt": "2024-01-01T00:00:01Z",
                        "finishedAt": "2024-01-01T00:00:02Z"}}},
                    {"name": "b", "image": "x", "imageID": "", "ready": false, "restartCount": 0,
                     "state": {"terminated": {"exitCode": 3}}}],
                "containerStatuses": [
                    {"name": "c", "image": "x", "imageID": "", "ready": false, "restartCount": 0,
                     "state": {"terminated": {"exitCode": 137, "reason": "ContainerStatusUnknown",
                        "message": "The container could not be located when the pod was terminated"}}}]},
        }))
        .unwrap();
        let steps = step_statuses(&snapshot, std::slice::from_ref(&pod), true);
        let states: Vec<StepState> = steps.iter().map(|s| s.state).collect();
        assert_eq!(
            states,
            [StepState::Succeeded, StepState::Failed, StepState::Skipped]
        );
        assert_eq!(steps[1].exit_code, Some(3));
        assert_eq!(failed_step(&steps), Some(("b", Some(3))));
        assert_eq!(steps_completed(&steps), 1);
        let decider = deciding_container(&pod, &["a", "b", "c"]).unwrap();
        assert_eq!(decider.name, "b");
        assert_eq!(
            pipeline_started(&pod, &["a", "b", "c"]),
            Some("2024-01-01T00:00:01Z".parse().unwrap())
        );
    }
}
