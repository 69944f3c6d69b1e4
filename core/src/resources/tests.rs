//! Serde of SPEC §10's examples and of the documented defaults.

use super::*;

/// SPEC §10's example, verbatim (the test below checks it against `../shared/SPEC.md` when
/// that file is beside the repository).
const SPEC_EXAMPLE: &str = r#"apiVersion: charon.dev/v1alpha1
kind: Workflow
metadata: {name: hourly-report, namespace: data}
spec:
  schedule: "@hourly"            # §2
  timeZone: Europe/Stockholm     # optional, default UTC
  offset: PT1H                   # optional, default per alias
  suspend: false
  catchUp: All                   # All | Latest | None
  concurrency: 3                 # optional
  runningTimeout: PT2H           # optional
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
status:                          # written by the controller
  observedGeneration: 3
  conditions: [{type: Valid, status: "True"}]
  lastTriggered: {parameter: "2024-10-27T02+01:00", logicalTime: "2024-10-27T01:00:00Z", at: "…"}
  nextTrigger: {parameter: "…", logicalTime: "…", triggerAt: "…"}
  active: 1
---
apiVersion: charon.dev/v1alpha1
kind: WorkflowInstance           # created by the controller, one per partition
metadata: {name: hourly-report-2024-10-27t02-01-00, namespace: data}
spec:
  workflow: hourly-report
  parameter: "2024-10-27T02+01:00"
  logicalTime: "2024-10-27T01:00:00Z"
  trigger: {type: natural, id: natural}
  halted: false
status:
  state: Running                 # §4
  tries: 1
  cost: 0
  consecutiveFailures: 0
  lastExitCode: null
  nextAttemptAt: null
  job: hourly-report-2024-10-27t02-01-00-1
  message: "running on attempt 1"
  history: [{at: "…", from: Queued, to: Prepare, reason: Dequeued}]
"#;

/// What the SPEC abbreviates: `"…"` stands for timestamps, and the condition omits the fields
/// a `metav1.Condition` requires. Each left side must occur in the example.
const ABBREVIATIONS: &[(&str, &str)] = &[
    (
        r#"conditions: [{type: Valid, status: "True"}]"#,
        r#"conditions: [{type: Valid, status: "True", lastTransitionTime: "2024-10-20T08:00:00Z", reason: Valid}]"#,
    ),
    (
        r#"logicalTime: "2024-10-27T01:00:00Z", at: "…"}"#,
        r#"logicalTime: "2024-10-27T01:00:00Z", at: "2024-10-27T02:00:01Z"}"#,
    ),
    (
        r#"nextTrigger: {parameter: "…", logicalTime: "…", triggerAt: "…"}"#,
        r#"nextTrigger: {parameter: "2024-10-27T02+01:00", logicalTime: "2024-10-27T02:00:00Z", triggerAt: "2024-10-27T03:00:00Z"}"#,
    ),
    (
        r#"history: [{at: "…", from: Queued"#,
        r#"history: [{at: "2024-10-27T02:00:01Z", from: Queued"#,
    ),
];

/// The example with its abbreviations filled in, split into (Workflow, WorkflowInstance).
fn spec_documents() -> (String, String) {
    let mut text = SPEC_EXAMPLE.to_string();
    for (short, full) in ABBREVIATIONS {
        assert!(
            text.contains(short),
            "SPEC example no longer contains {short}"
        );
        text = text.replace(short, full);
    }
    assert!(
        !text.contains('…'),
        "an abbreviation is not filled in:\n{text}"
    );
    let (workflow, instance) = text.split_once("\n---\n").expect("two documents");
    (workflow.to_string(), instance.to_string())
}

#[test]
fn the_embedded_example_is_the_spec_one() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../shared/SPEC.md");
    let Ok(spec) = std::fs::read_to_string(path) else {
        eprintln!("{path} not found; comparing the embedded example skipped");
        return;
    };
    let section = &spec[spec.find("## 10.").expect("SPEC has §10")..];
    let block = section
        .split_once("```yaml\n")
        .and_then(|(_, rest)| rest.split_once("```"))
        .map(|(block, _)| block)
        .expect("§10 has a yaml block");
    assert_eq!(block, SPEC_EXAMPLE, "SPEC §10 changed: update SPEC_EXAMPLE");
}

/// Parses `yaml`, checks that JSON and YAML serialisation read back to the same value.
fn round_trip<T>(yaml: &str) -> T
where
    T: serde::de::DeserializeOwned + serde::Serialize + PartialEq + std::fmt::Debug,
{
    let parsed: T = serde_yaml::from_str(yaml).expect("parses");
    let json = serde_json::to_value(&parsed).unwrap();
    assert_eq!(serde_json::from_value::<T>(json).unwrap(), parsed);
    let yaml = serde_yaml::to_string(&parsed).unwrap();
    assert_eq!(serde_yaml::from_str::<T>(&yaml).unwrap(), parsed);
    parsed
}

#[test]
fn the_spec_workflow_parses_and_round_trips() {
    let (yaml, _) = spec_documents();
    let workflow: Workflow = round_trip(&yaml);
    let spec = &workflow.spec;
    assert_eq!(spec.schedule, "@hourly");
    assert_eq!(spec.time_zone, "Europe/Stockholm");
    assert_eq!(spec.offset.as_deref(), Some("PT1H"));
    assert_eq!(spec.catch_up, CatchUpPolicy::All);
    assert_eq!(spec.concurrency, Some(3));
    assert_eq!(spec.running_timeout.as_deref(), Some("PT2H"));
    assert_eq!(spec.retry, RetryPolicySpec::default());
    assert_eq!(spec.history.ttl, "P7D");
    let template = &spec.template;
    assert_eq!(template.image, "registry.example.com/report:1.4");
    assert_eq!(template.args, ["--hour", "{}"]);
    assert_eq!(
        template.env[0].value.as_deref(),
        Some("s3://bucket/reports")
    );
    let requests = template
        .resources
        .as_ref()
        .and_then(|r| r.requests.as_ref());
    assert_eq!(requests.map(|r| r["memory"].0.as_str()), Some("1Gi"));
    let secret = template.secret.as_ref().expect("secret");
    assert_eq!(
        (secret.name.as_str(), secret.mount_path.as_str()),
        ("report-credentials", "/etc/report")
    );
    assert_eq!(template.service_account_name.as_deref(), Some("report"));

    let status = workflow.status.as_ref().expect("status");
    assert_eq!(status.observed_generation, Some(3));
    let valid = find_condition(&status.conditions, condition_type::VALID).expect("Valid");
    assert_eq!(valid.status, ConditionStatus::True);
    assert_eq!(
        status.last_triggered.as_ref().map(|t| t.parameter.as_str()),
        Some("2024-10-27T02+01:00")
    );
    assert_eq!(status.active, 1);

    // The contract's field names survive serialisation.
    let json = serde_json::to_value(&workflow).unwrap();
    for pointer in [
        "/spec/timeZone",
        "/spec/catchUp",
        "/spec/runningTimeout",
        "/spec/retry/maxCost",
        "/spec/retry/missingDependencyExitCode",
        "/spec/retry/fatalExitCodes",
        "/spec/retry/infrastructureAttempts",
        "/spec/history/ttl",
        "/spec/template/secret/mountPath",
        "/spec/template/serviceAccountName",
        "/status/observedGeneration",
        "/status/conditions/0/type",
        "/status/lastTriggered/logicalTime",
        "/status/lastTriggered/at",
        "/status/nextTrigger/triggerAt",
        "/status/active",
    ] {
        assert!(
            json.pointer(pointer).is_some(),
            "{pointer} missing in {json}"
        );
    }
}

#[test]
fn the_spec_instance_parses_and_round_trips() {
    let (_, yaml) = spec_documents();
    let instance: WorkflowInstance = round_trip(&yaml);
    assert_eq!(instance.spec.workflow, "hourly-report");
    assert_eq!(instance.spec.parameter, "2024-10-27T02+01:00");
    assert_eq!(
        instance.spec.logical_time.to_rfc3339(),
        "2024-10-27T01:00:00+00:00"
    );
    assert_eq!(instance.spec.trigger.trigger_type, TriggerType::Natural);
    assert_eq!(instance.spec.trigger.id, "natural");
    assert!(!instance.spec.halted);
    let status = instance.status.as_ref().expect("status");
    assert_eq!(status.state, InstanceState::Running);
    assert_eq!(
        (status.tries, status.cost, status.consecutive_failures),
        (1, 0.0, 0)
    );
    assert_eq!(status.last_exit_code, None);
    assert_eq!(status.next_attempt_at, None);
    assert_eq!(
        status.job.as_deref(),
        Some("hourly-report-2024-10-27t02-01-00-1")
    );
    assert_eq!(status.message, "running on attempt 1");
    let entry = &status.history[0];
    assert_eq!(
        (entry.from, entry.to),
        (InstanceState::Queued, InstanceState::Prepare)
    );
    assert_eq!(entry.reason, "Dequeued");

    // As in the example, "no exit code yet" and "no retry scheduled" are written as null.
    let json = serde_json::to_value(&instance).unwrap();
    assert_eq!(json["status"]["lastExitCode"], serde_json::Value::Null);
    assert!(
        json["status"]
            .as_object()
            .unwrap()
            .contains_key("lastExitCode")
    );
    assert!(
        json["status"]
            .as_object()
            .unwrap()
            .contains_key("nextAttemptAt")
    );
    assert_eq!(json["spec"]["trigger"]["type"], "natural");
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
    assert_eq!(spec.running_timeout, None);
    assert_eq!(spec.retry.max_cost, 50.0);
    assert_eq!(spec.retry.missing_dependency_exit_code, 20);
    assert_eq!(spec.retry.fatal_exit_codes, [50]);
    assert_eq!(spec.retry.infrastructure_attempts, 10);
    assert_eq!(spec.history.ttl, "P7D");
    assert_eq!(spec.history.limit, 50);
    assert!(!spec.styx_compatible_env);
    assert_eq!(
        *spec.template,
        WorkflowTemplate {
            image: "busybox".into(),
            ..WorkflowTemplate::default()
        }
    );
    assert!(workflow.status.is_none());

    // A partially given nested object gets the defaults of the missing fields.
    let partial: WorkflowSpec = serde_yaml::from_str(
        "{schedule: '@daily', template: {image: busybox}, retry: {maxCost: 3}, history: {limit: 5}}",
    )
    .unwrap();
    assert_eq!(partial.retry.max_cost, 3.0);
    assert_eq!(partial.retry.fatal_exit_codes, [50]);
    assert_eq!(partial.history.ttl, "P7D");
    assert_eq!(partial.history.limit, 5);
}

#[test]
fn minimal_instances_and_backfills_get_the_documented_defaults() {
    let instance: WorkflowInstance = serde_yaml::from_str(
        "apiVersion: charon.dev/v1alpha1\nkind: WorkflowInstance\nmetadata: {name: i}\nspec: {workflow: w, parameter: '2024-01-01', logicalTime: '2024-01-01T00:00:00Z', trigger: {type: adhoc, id: adhoc-1-12345}}\n",
    )
    .expect("minimal instance parses");
    assert!(!instance.spec.halted);
    assert!(instance.spec.env.is_empty());
    assert_eq!(instance.spec.trigger.trigger_type, TriggerType::Adhoc);
    let status = WorkflowInstanceStatus::default();
    assert_eq!(status.state, InstanceState::Queued);
    assert_eq!(status.tries, 0);

    let backfill: Backfill = serde_yaml::from_str(
        "apiVersion: charon.dev/v1alpha1\nkind: Backfill\nmetadata: {name: b}\nspec: {workflow: hb, start: '2024-01-01T00', end: '2024-01-01T12'}\n",
    )
    .expect("minimal backfill parses");
    let spec = &backfill.spec;
    assert_eq!(spec.concurrency, 1);
    assert_eq!(spec.reprocess, Reprocess::All);
    assert!(!spec.reverse && !spec.halted && !spec.graceful_halt && !spec.allow_future);
    assert_eq!(spec.description, None);
    assert!(spec.env.is_empty());
    assert_eq!(BackfillStatus::default().state, BackfillState::Pending);
}

/// How each value of an enum is spelled on the wire.
fn spelled<T: serde::Serialize>(values: &[T]) -> Vec<String> {
    values
        .iter()
        .map(|v| {
            serde_json::to_value(v)
                .unwrap()
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect()
}

#[test]
fn enums_use_their_documented_spelling() {
    let triggers = [
        TriggerType::Natural,
        TriggerType::Adhoc,
        TriggerType::Backfill,
    ];
    assert_eq!(spelled(&triggers), ["natural", "adhoc", "backfill"]);
    for t in triggers {
        assert_eq!(serde_json::to_value(t).unwrap(), t.as_str());
    }
    assert_eq!(
        spelled(&[
            CatchUpPolicy::All,
            CatchUpPolicy::Latest,
            CatchUpPolicy::None
        ]),
        ["All", "Latest", "None"]
    );
    assert_eq!(
        spelled(&[Reprocess::All, Reprocess::Failed, Reprocess::Missing]),
        ["All", "Failed", "Missing"]
    );
    assert_eq!(
        spelled(&[
            ImagePullPolicy::Always,
            ImagePullPolicy::IfNotPresent,
            ImagePullPolicy::Never
        ]),
        ["Always", "IfNotPresent", "Never"]
    );
    assert_eq!(
        spelled(&[
            BackfillState::Pending,
            BackfillState::Running,
            BackfillState::Completed,
            BackfillState::Halted,
            BackfillState::Invalid
        ]),
        ["Pending", "Running", "Completed", "Halted", "Invalid"]
    );
    assert_eq!(
        spelled(&[
            ConditionStatus::True,
            ConditionStatus::False,
            ConditionStatus::Unknown
        ]),
        ["True", "False", "Unknown"]
    );
}

#[test]
fn instance_state_names_match_their_serialisation() {
    for state in InstanceState::ALL {
        assert_eq!(serde_json::to_value(state).unwrap(), state.as_str());
        assert_eq!(
            state.is_terminal(),
            matches!(
                state,
                InstanceState::Done | InstanceState::Error | InstanceState::Halted
            )
        );
        assert!(!(state.is_terminal() && state.is_active()));
    }
    // `ALL` names every state the schema allows, each once.
    let schema = serde_json::to_value(schemars::schema_for!(InstanceState)).unwrap();
    // Variants with doc comments are `oneOf` one `const` (or one-value `enum`) each.
    let allowed: Vec<&str> = schema["oneOf"]
        .as_array()
        .expect("a oneOf schema")
        .iter()
        .filter_map(|v| v["const"].as_str().or(v["enum"][0].as_str()))
        .collect();
    let all: Vec<&str> = InstanceState::ALL.iter().map(|s| s.as_str()).collect();
    assert_eq!(all, allowed);
}

/// The operator caches every Workflow and WorkflowInstance, each in one allocation of its
/// inline size: at 100,000 workflows every 100 bytes here is 10 MB of its memory. Large
/// fields set only by some workflows (the template, a pipeline's snapshot) are boxed.
#[test]
fn cached_resources_stay_small_inline() {
    use std::mem::size_of;
    assert!(
        size_of::<Workflow>() <= 850,
        "Workflow is {} bytes",
        size_of::<Workflow>()
    );
    assert!(
        size_of::<WorkflowInstance>() <= 900,
        "WorkflowInstance is {} bytes",
        size_of::<WorkflowInstance>()
    );
}
