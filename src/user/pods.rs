//! Finding the pod of an attempt for `charon logs`, and telling why it has not started.

use super::*;

/// Why a pod's main container has no log to show yet: `None` once it has started (running
/// or finished), else its waiting reason, and whether waiting longer can help.
pub(super) fn not_started(pod: &Pod) -> Option<(String, bool)> {
    let status = pod.status.as_ref();
    if matches!(
        status.and_then(|s| s.phase.as_deref()),
        Some("Succeeded" | "Failed")
    ) {
        return None;
    }
    // A pipeline has started once its launcher has; its first container not done says why
    // it waits.
    let main = match charon_core::pipeline::pod_steps(pod) {
        Some(steps) => charon_core::pipeline::deciding_container(pod, &steps),
        None => status
            .and_then(|s| s.container_statuses.as_ref())
            .and_then(|c| {
                c.iter()
                    .find(|c| c.name == charon_core::job::MAIN_CONTAINER)
            }),
    };
    let Some(state) = main.and_then(|c| c.state.as_ref()) else {
        return Some(("the pod is being scheduled".to_string(), true));
    };
    if state.running.is_some() || state.terminated.is_some() {
        return None;
    }
    let waiting = state.waiting.as_ref();
    let reason = waiting
        .and_then(|w| w.reason.clone())
        .unwrap_or_else(|| "waiting".to_string());
    let transient = matches!(
        reason.as_str(),
        "ContainerCreating" | "PodInitializing" | "waiting"
    );
    let text = match waiting.and_then(|w| w.message.as_deref()) {
        Some(message) if !message.is_empty() => format!("{reason}: {message}"),
        _ => reason,
    };
    Some((text, transient))
}

/// Whether a Job has finished (its pods will not change any more).
pub(super) fn finished(job: &Job) -> bool {
    job.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| {
            c.iter()
                .any(|c| matches!(c.type_.as_str(), "Complete" | "Failed") && c.status == "True")
        })
}

/// The name of the newest pod matching `selector` once its main container has started,
/// waiting up to [`POD_START_TIMEOUT`] for it (a Job's pod appears and starts within
/// moments of the Job).
/// The newest pod matching `selector`, if any is left.
pub(super) async fn existing_pod(
    pods: &Api<Pod>,
    selector: &str,
) -> anyhow::Result<Option<String>> {
    let mut list = pods
        .list(&ListParams::default().labels(selector))
        .await?
        .items;
    list.sort_by_key(|p| p.metadata.creation_timestamp.as_ref().map(|t| t.0));
    Ok(list.pop().map(|p| p.name_any()))
}

pub(super) async fn started_pod(
    pods: &Api<Pod>,
    selector: &str,
    job: &Job,
) -> anyhow::Result<String> {
    let job_name = job.name_any();
    let mut list = pods
        .list(&ListParams::default().labels(selector))
        .await?
        .items;
    list.sort_by_key(|p| p.metadata.creation_timestamp.as_ref().map(|t| t.0));
    let mut newest = list.pop();
    match newest.as_ref().map(|p| (p, not_started(p))) {
        Some((pod, None)) => return Ok(pod.name_any()),
        Some((pod, Some((why, false)))) => {
            bail!(
                "the container of pod {} cannot start: {why}",
                pod.name_any()
            )
        }
        None if finished(job) => {
            bail!("no pod of Job {job_name} exists any more; its log is gone")
        }
        _ => {}
    }
    // A new attempt: wait for its pod to start.
    let wait = async {
        let mut events = std::pin::pin!(
            watcher(pods.clone(), watcher::Config::default().labels(selector)).applied_objects()
        );
        while let Some(pod) = events.try_next().await? {
            let older = newest.as_ref().is_some_and(|n| {
                n.name_any() != pod.name_any()
                    && n.metadata.creation_timestamp > pod.metadata.creation_timestamp
            });
            if older {
                continue;
            }
            match not_started(&pod) {
                None => return Ok(Some(pod.name_any())),
                Some((why, false)) => {
                    bail!(
                        "the container of pod {} cannot start: {why}",
                        pod.name_any()
                    )
                }
                Some(_) => newest = Some(pod),
            }
        }
        Ok::<_, anyhow::Error>(None)
    };
    match tokio::time::timeout(POD_START_TIMEOUT, wait).await {
        Ok(Ok(Some(pod))) => Ok(pod),
        Ok(Err(err)) => Err(err),
        Ok(Ok(None)) | Err(_) => {
            let why = newest
                .as_ref()
                .and_then(not_started)
                .map_or_else(|| "no pod exists".to_string(), |(why, _)| why);
            bail!(
                "the container of Job {job_name} has not started after {}s ({why})",
                POD_START_TIMEOUT.as_secs()
            )
        }
    }
}

/// Whether `container` of the pod has started (so it has a log); with `wait`, waits for it
/// while the pod runs (a later step starts when the one before it ends). False: it never
/// ran, and now will not.
pub(super) async fn container_started(
    pods: &Api<Pod>,
    pod: &str,
    container: &str,
    wait: bool,
) -> anyhow::Result<bool> {
    loop {
        let current = pods.get(pod).await?;
        let status = current.status.as_ref();
        let started = charon_core::pipeline::container_ran(&current, container);
        let ended = matches!(
            status.and_then(|s| s.phase.as_deref()),
            Some("Succeeded" | "Failed")
        );
        if started || ended || !wait {
            return Ok(started);
        }
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    }
}
