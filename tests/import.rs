//! End-to-end: `charon import styx DIR` run as the real binary on a directory of Styx workflow
//! files, its output applied with the real `kubectl apply -f -` against the embedded cluster
//! with the operator: what is stored is what was printed, the operator finds every imported
//! workflow valid and schedules it with Styx's offsets, and a bad file is named while the
//! others are still printed.

mod common;

use charon_core::resources::{ConditionStatus, Workflow, condition_type};
use chrono::{DateTime, Duration, Utc};
use common::cli::{Cli, charon};
use common::{Cluster, LONG, NS};
use serde::Deserialize;

/// The workflow configuration example of the Styx README.
const README_EXAMPLE: &str = "id: my-workflow
docker_image: my-workflow:0.1
docker_args: ['./run.sh', '{}']
schedule: hourly
offset: PT1H
secret:
  name: my-secret
  mount_path: /etc/my-keys
service_account: my-workflow@my-project.iam.gserviceaccount.com
";

/// The README's offset example: daily at 02:00, the partition still the day before.
const AT_TWO: &str = "id: Nightly_Export
docker_image: export:2.0
docker_args: [--date, '{}']
schedule: '@daily'
offset: P1DT2H
env: {TARGET: 'gs://bucket/export'}
running_timeout: PT3H
";

/// Several workflows in one file, as Styx's own tools write them.
const SEVERAL: &str = "id: weekly-rollup
schedule: weeks
docker_image: rollup:1
docker_args: ['{}']
---
id: every-ten
schedule: '*/10 * * * *'
docker_image: busybox
docker_args: [echo, '{}']
retry_condition: '#tries < 3'
";

fn workflows_of(yaml: &str) -> Vec<Workflow> {
    serde_yaml::Deserializer::from_str(yaml)
        .map(|document| Workflow::deserialize(document).expect("a Workflow manifest"))
        .collect()
}

fn utc(text: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(text)
        .expect("instant")
        .with_timezone(&Utc)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn styx_files_are_imported_applied_with_kubectl_and_keep_their_offsets() {
    let cluster = Cluster::start().await;
    let cli = Cli::new(&cluster);
    let dir = tempfile::tempdir().expect("dir");
    for (file, text) in [
        ("my-workflow.yaml", README_EXAMPLE),
        ("nightly.yml", AT_TWO),
        ("several.yaml", SEVERAL),
        ("README.md", "not a workflow file"),
    ] {
        std::fs::write(dir.path().join(file), text).expect("file written");
    }
    let path = dir.path().to_str().expect("utf-8 path");
    let (ok, out, err) = charon(&["import", "styx", path, "-n", NS]);
    assert!(ok, "{err}");
    let file = |name: &str| dir.path().join(name).display().to_string();
    // What has no equivalent is reported, naming the file, the workflow and the field.
    let warnings: Vec<&str> = err.lines().collect();
    assert_eq!(warnings.len(), 3, "{err}");
    assert!(warnings[0].starts_with(&format!(
        "warning: {}: workflow \"my-workflow\": service_account: \"my-workflow@my-project.iam.gserviceaccount.com\" has no equivalent",
        file("my-workflow.yaml")
    )), "{err}");
    assert!(warnings[1].starts_with(&format!(
        "warning: {}: workflow \"Nightly_Export\": id: \"Nightly_Export\" is not a Kubernetes name: the Workflow is named \"nightly-export\"",
        file("nightly.yml")
    )), "{err}");
    assert!(warnings[2].starts_with(&format!(
        "warning: {}: workflow \"every-ten\": retry_condition: \"#tries < 3\" has no equivalent",
        file("several.yaml")
    )), "{err}");

    let printed = workflows_of(&out);
    let names: Vec<&str> = printed
        .iter()
        .map(|w| w.metadata.name.as_deref().unwrap_or_default())
        .collect();
    assert_eq!(
        names,
        [
            "my-workflow",
            "nightly-export",
            "weekly-rollup",
            "every-ten"
        ]
    );
    assert!(printed.iter().all(|w| w.spec.styx_compatible_env));

    let (ok, applied, err) = cli.kubectl(&["apply", "-f", "-"], &out).await;
    assert!(ok, "kubectl apply: {err}");
    for name in &names {
        assert!(
            applied.contains(&format!("workflow.charon.dev/{name} created")),
            "{applied}"
        );
    }

    // Stored as printed, and valid for the operator, which plans each next trigger.
    for workflow in &printed {
        let name = workflow.metadata.name.clone().unwrap_or_default();
        let stored = cluster
            .eventually(&format!("{name} valid"), LONG, || async {
                let stored = cluster.workflow(&name).await?;
                let status = stored.status.clone().unwrap_or_default();
                let valid = status
                    .conditions
                    .iter()
                    .find(|c| c.type_ == condition_type::VALID);
                match valid {
                    Some(c)
                        if c.status == ConditionStatus::True && status.next_trigger.is_some() =>
                    {
                        Ok(stored)
                    }
                    _ => Err(format!("{status:?}")),
                }
            })
            .await;
        assert_eq!(stored.spec, workflow.spec, "{name}");
        assert_eq!(stored.metadata.namespace.as_deref(), Some(NS));
    }

    // Styx's offset semantics: the README's "At 2017-06-30T02 the execution for 2017-06-29
    // will be triggered", from the stored spec through `charon preview`...
    let nightly = cluster.workflow("nightly-export").await.expect("stored");
    let offset = nightly.spec.offset.clone().expect("offset");
    let (ok, preview, err) = charon(&[
        "preview",
        "--schedule",
        &nightly.spec.schedule,
        "--offset",
        &offset,
        "--after",
        "2017-06-30T01:00:00Z",
        "--count",
        "2",
        "-o",
        "json",
    ]);
    assert!(ok, "{err}");
    let preview: serde_json::Value = serde_json::from_str(&preview).expect("json");
    assert_eq!(
        preview,
        serde_json::json!([
            {"logicalTime": "2017-06-29T00:00:00Z", "triggerAt": "2017-06-30T02:00:00Z", "parameter": "2017-06-29"},
            {"logicalTime": "2017-06-30T00:00:00Z", "triggerAt": "2017-07-01T02:00:00Z", "parameter": "2017-06-30"},
        ])
    );
    // ... and in what the operator plans: every trigger 26 hours after its partition.
    let next = nightly
        .status
        .and_then(|s| s.next_trigger)
        .expect("next trigger");
    assert_eq!(next.trigger_at - next.logical_time, Duration::hours(26));
    assert_eq!(
        next.parameter,
        next.logical_time.format("%Y-%m-%d").to_string()
    );
    assert!(next.trigger_at > utc("2017-06-30T02:00:00Z"));
    let hourly = cluster.workflow("my-workflow").await.expect("stored");
    let next = hourly
        .status
        .and_then(|s| s.next_trigger)
        .expect("next trigger");
    assert_eq!(next.trigger_at - next.logical_time, Duration::hours(1));

    // One bad file among good ones: named with its field, the others still printed.
    std::fs::write(
        dir.path().join("broken.yaml"),
        "id: broken\nschedule: '@fortnightly'\n",
    )
    .expect("file written");
    let (ok, out, err) = charon(&["import", "styx", path]);
    assert!(!ok, "a bad file fails the command");
    let broken = file("broken.yaml");
    assert!(
        err.contains(&format!(
            "error: {broken}: workflow \"broken\": docker_image: missing"
        )) && err.contains(&format!(
            "error: {broken}: workflow \"broken\": schedule: unknown schedule \"@fortnightly\""
        )),
        "{err}"
    );
    assert!(
        err.contains("error: 1 of 4 Styx files could not be imported"),
        "{err}"
    );
    assert_eq!(workflows_of(&out).len(), 4, "{out}");
    assert!(!out.contains("namespace:"), "no -n, no namespace: {out}");
    cluster.stop().await;
}
