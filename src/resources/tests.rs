//! Serde round trips of SPEC §10's examples and the documented defaults.

use super::*;

const SPEC_WORKFLOW: &str = r#"
apiVersion: charon.dev/v1alpha1
kind: Workflow
metadata: {name: hourly-report, namespace: data}
spec:
  schedule: "@hourly"
  timeZone: Europe/Stockholm
  offset: PT1H
  suspend: false
  catchUp: All
  concurrency: 3
  runningTimeout: PT2H
  retry: {maxCost: 50, missingDependencyExitCode: 20, fatalExitCodes: [50], infrastructureAttempts: 10}
  history: {ttl: P7D}
  template:
    image: registry.example.com/report:1.4
    command: ["report"]
    args: ["--hour", "{}"]
    env: [{name: OUTPUT, value: "s3://bucket/reports"}]
    resources: {requests: {cpu: 500m, memory: 1Gi}}
    secret: {name: report-credentials, mountPath: /etc/report}
    serviceAccountName: report
status:
  observedGeneration: 3
  conditions: [{type: Valid, status: "True", lastTransitionTime: "2024-10-27T00:00:00Z", reason: Valid, message: ""}]
  lastTriggered: {parameter: "2024-10-27T02+01:00", logicalTime: "2024-10-27T01:00:00Z", at: "2024-10-27T02:00:01Z"}
  nextTrigger: {parameter: "2024-10-27T03+01:00", logicalTime: "2024-10-27T02:00:00Z", triggerAt: "2024-10-27T03:00:00Z"}
  active: 1
"#;

const SPEC_INSTANCE: &str = r#"
apiVersion: charon.dev/v1alpha1
kind: WorkflowInstance
metadata: {name: hourly-report-2024-10-27t02-01-00, namespace: data}
spec:
  workflow: hourly-report
  parameter: "2024-10-27T02+01:00"
  logicalTime: "2024-10-27T01:00:00Z"
  trigger: {type: natural, id: natural}
  halted: false
status:
  state: Running
  tries: 1
  cost: 0
  consecutiveFailures: 0
  lastExitCode: null
  nextAttemptAt: null
  job: hourly-report-2024-10-27t02-01-00-1
  message: "running on attempt 1"
  history: [{at: "2024-10-27T02:00:01Z", from: Queued, to: Prepare, reason: Dequeued}]
"#;

#[test]
fn spec_examples_parse_and_round_trip() {
    let workflow: Workflow = serde_yaml::from_str(SPEC_WORKFLOW).expect("SPEC workflow parses");
    assert_eq!(workflow.spec.time_zone, "Europe/Stockholm");
    assert_eq!(workflow.spec.concurrency, Some(3));
    assert_eq!(
        workflow
            .spec
            .template
            .secret
            .as_ref()
            .map(|s| s.mount_path.as_str()),
        Some("/etc/report")
    );
    let status = workflow.status.as_ref().expect("status");
    assert_eq!(
        status.last_triggered.as_ref().map(|t| t.parameter.as_str()),
        Some("2024-10-27T02+01:00")
    );
    let again: Workflow = serde_json::from_value(serde_json::to_value(&workflow).unwrap()).unwrap();
    assert_eq!(again.spec, workflow.spec);
    assert_eq!(again.status, workflow.status);

    let instance: WorkflowInstance =
        serde_yaml::from_str(SPEC_INSTANCE).expect("SPEC instance parses");
    assert_eq!(instance.spec.trigger.trigger_type, TriggerType::Natural);
    let status = instance.status.as_ref().expect("status");
    assert_eq!(status.state, InstanceState::Running);
    assert_eq!(status.history[0].to, InstanceState::Prepare);
    let again: WorkflowInstance =
        serde_json::from_value(serde_json::to_value(&instance).unwrap()).unwrap();
    assert_eq!(again.spec, instance.spec);
    assert_eq!(again.status, instance.status);
}

#[test]
fn a_minimal_workflow_gets_the_documented_defaults() {
    let workflow: Workflow = serde_yaml::from_str(
        "apiVersion: charon.dev/v1alpha1\nkind: Workflow\nmetadata: {name: m}\nspec: {schedule: '@daily', template: {image: busybox}}\n",
    )
    .expect("minimal workflow parses");
    let spec = &workflow.spec;
    assert_eq!(spec.time_zone, "UTC");
    assert_eq!(spec.offset, None);
    assert!(!spec.suspend);
    assert_eq!(spec.catch_up, CatchUpPolicy::All);
    assert_eq!(spec.concurrency, None);
    assert_eq!(spec.retry.max_cost, 50.0);
    assert_eq!(spec.retry.missing_dependency_exit_code, 20);
    assert_eq!(spec.retry.fatal_exit_codes, [50]);
    assert_eq!(spec.retry.infrastructure_attempts, 10);
    assert_eq!(spec.history.ttl, "P7D");
    assert_eq!(spec.history.limit, 50);
    assert!(!spec.styx_compatible_env);
    let backfill: Backfill = serde_yaml::from_str(
        "apiVersion: charon.dev/v1alpha1\nkind: Backfill\nmetadata: {name: b}\nspec: {workflow: hb, start: '2024-01-01T00', end: '2024-01-01T12'}\n",
    )
    .expect("minimal backfill parses");
    assert_eq!(backfill.spec.concurrency, 1);
    assert_eq!(backfill.spec.reprocess, Reprocess::All);
    assert!(!backfill.spec.reverse && !backfill.spec.halted && !backfill.spec.allow_future);
}

#[test]
fn instance_state_names_match_their_serialisation() {
    for state in [
        InstanceState::Queued,
        InstanceState::Prepare,
        InstanceState::Submitting,
        InstanceState::Submitted,
        InstanceState::Running,
        InstanceState::Terminated,
        InstanceState::Failed,
        InstanceState::Done,
        InstanceState::Error,
        InstanceState::Halted,
    ] {
        assert_eq!(serde_json::to_value(state).unwrap(), state.as_str());
    }
}
