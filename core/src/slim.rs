//! What the operator's caches keep of the Jobs and Pods it watches: the fields observation
//! reads (status, labels, annotations, owners, the few spec fields of [`crate::observe`] and
//! [`crate::pipeline`]), not the pod template and containers it rendered itself, which are
//! most of each object. At 100,000 runs that is most of the operator's memory.

use k8s_openapi::api::batch::v1::{Job, JobSpec};
use k8s_openapi::api::core::v1::{Container, EnvVar, Pod, PodSpec};

use crate::job::MAIN_CONTAINER;

/// Prefix of the array variables a task's pod is read back by ([`crate::pipeline::pod_task_id`]).
const TASK_VARS: &str = "CHARON_TASK_";

/// Drops what no observation of a Job reads: the pod template and selector, and who manages
/// which field.
pub fn job(job: &mut Job) {
    job.metadata.managed_fields = None;
    if let Some(spec) = job.spec.take() {
        job.spec = Some(JobSpec {
            suspend: spec.suspend,
            backoff_limit: spec.backoff_limit,
            backoff_limit_per_index: spec.backoff_limit_per_index,
            completion_mode: spec.completion_mode,
            completions: spec.completions,
            parallelism: spec.parallelism,
            ..JobSpec::default()
        });
    }
}

/// Drops what no observation of a Pod reads: every container field but its name (and the
/// array variables of the main container), volumes and the rest of the spec, who manages
/// which field, and of the status the pod's conditions, addresses and QoS class and each
/// container's image, ID, mounts and resources. Phase, reason, message, start time and every
/// container's state are kept.
pub fn pod(pod: &mut Pod) {
    pod.metadata.managed_fields = None;
    if let Some(status) = pod.status.as_mut() {
        status.conditions = None;
        status.host_ip = None;
        status.host_ips = None;
        status.pod_ip = None;
        status.pod_ips = None;
        status.qos_class = None;
        status.resize = None;
        status.resource_claim_statuses = None;
        status.nominated_node_name = None;
        for statuses in [
            &mut status.container_statuses,
            &mut status.init_container_statuses,
            &mut status.ephemeral_container_statuses,
        ] {
            for c in statuses.iter_mut().flatten() {
                c.image = String::new();
                c.image_id = String::new();
                c.container_id = None;
                c.volume_mounts = None;
                c.resources = None;
                c.allocated_resources = None;
                c.allocated_resources_status = None;
                c.user = None;
            }
        }
    }
    let named = |c: Container| {
        let env = (c.name == MAIN_CONTAINER)
            .then(|| {
                c.env.map(|env| {
                    env.into_iter()
                        .filter(|e| e.name.starts_with(TASK_VARS))
                        .collect::<Vec<EnvVar>>()
                })
            })
            .flatten()
            .filter(|env| !env.is_empty());
        Container {
            name: c.name,
            env,
            ..Container::default()
        }
    };
    if let Some(spec) = pod.spec.take() {
        pod.spec = Some(PodSpec {
            containers: spec.containers.into_iter().map(named).collect(),
            init_containers: spec
                .init_containers
                .map(|c| c.into_iter().map(named).collect()),
            node_name: spec.node_name,
            restart_policy: spec.restart_policy,
            ..PodSpec::default()
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn array_pod() -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": "p", "namespace": "default",
                "labels": {"batch.kubernetes.io/job-completion-index": "1"},
                "annotations": {"batch.kubernetes.io/job-completion-index": "1"},
                "managedFields": [{"manager": "kubelet", "operation": "Update"}]},
            "spec": {
                "restartPolicy": "Never",
                "volumes": [{"name": "charon", "emptyDir": {}}],
                "initContainers": [{"name": "charon-launcher", "image": "charon",
                    "command": ["cp"], "volumeMounts": [{"name": "charon", "mountPath": "/charon"}]}],
                "containers": [{"name": "main", "image": "busybox", "command": ["sh", "-c", "exit 0"],
                    "env": [{"name": "CHARON_TASK_FIRST", "value": "10"},
                            {"name": "CHARON_TASK_STEP", "value": "5"},
                            {"name": "CHARON_PARAMETER", "value": "2026-12-01"}]}],
            },
            "status": {"phase": "Failed", "podIP": "10.0.0.1",
                "conditions": [{"type": "Ready", "status": "False"}],
                "containerStatuses": [{"name": "main", "image": "busybox",
                "imageID": "", "ready": false, "restartCount": 0,
                "state": {"terminated": {"exitCode": 3, "reason": "Error",
                    "startedAt": "2026-12-01T10:00:00Z", "finishedAt": "2026-12-01T10:00:05Z"}}}]},
        }))
        .expect("a pod")
    }

    #[test]
    fn a_slim_pod_reads_as_the_whole_one() {
        let whole = array_pod();
        let mut slim = whole.clone();
        pod(&mut slim);
        assert_eq!(
            crate::pipeline::pod_task_id(&slim),
            crate::pipeline::pod_task_id(&whole)
        );
        assert_eq!(crate::pipeline::pod_task_id(&slim), Some(15));
        assert_eq!(
            crate::archive::readiness(&slim),
            crate::archive::readiness(&whole)
        );
        let states = |p: &Pod| {
            let status = p.status.clone().unwrap_or_default();
            let states = status.container_statuses.unwrap_or_default();
            (
                status.phase,
                states
                    .into_iter()
                    .map(|c| (c.name, c.state, c.last_state))
                    .collect::<Vec<_>>(),
            )
        };
        assert_eq!(
            states(&slim),
            states(&whole),
            "phase and container states kept"
        );
        let status = slim.status.as_ref().expect("status");
        assert!(status.conditions.is_none() && status.pod_ip.is_none());
        assert!(
            status
                .container_statuses
                .as_ref()
                .is_some_and(|c| c[0].image.is_empty())
        );
        assert_eq!(slim.metadata.annotations, whole.metadata.annotations);
        assert!(slim.metadata.managed_fields.is_none());
        let spec = slim.spec.as_ref().expect("spec");
        assert!(spec.volumes.is_none());
        assert_eq!(spec.containers[0].env.as_ref().map(Vec::len), Some(2));
        assert!(spec.containers[0].command.is_none());
        let job: Job = serde_json::from_value(json!({
            "metadata": {"name": "j"},
            "spec": {"template": {}},
            "status": {"failed": 1, "conditions": [{"type": "Failed", "status": "True",
                "reason": "BackoffLimitExceeded", "message": "Job has reached the specified backoff limit"}]},
        }))
        .expect("a job");
        assert_eq!(
            crate::observe::job_status(Some(&job), std::slice::from_ref(&slim)),
            crate::observe::job_status(Some(&job), std::slice::from_ref(&whole))
        );
    }

    #[test]
    fn a_slim_job_keeps_what_observation_reads() {
        let whole: Job = serde_json::from_value(json!({
            "metadata": {"name": "j", "labels": {"charon.dev/instance": "i"}},
            "spec": {"suspend": true, "backoffLimit": 2, "completionMode": "Indexed",
                "backoffLimitPerIndex": 0, "completions": 3, "parallelism": 2,
                "template": {"spec": {"restartPolicy": "Never",
                    "containers": [{"name": "main", "image": "busybox"}]}}},
            "status": {"active": 2},
        }))
        .expect("a job");
        let mut slim = whole.clone();
        job(&mut slim);
        assert_eq!(
            crate::pipeline::is_array_job(&slim),
            crate::pipeline::is_array_job(&whole)
        );
        assert!(crate::pipeline::is_array_job(&slim));
        assert_eq!(
            crate::observe::job_status(Some(&slim), &[]),
            crate::observe::job_status(Some(&whole), &[])
        );
        let spec = slim.spec.expect("spec");
        assert_eq!((spec.suspend, spec.backoff_limit), (Some(true), Some(2)));
        assert!(spec.template.spec.is_none());
        assert_eq!(slim.metadata.labels, whole.metadata.labels);
    }
}
