//! End-to-end: pipelines and job arrays (SPEC §14) on the embedded cluster, whose kubelet
//! runs every container, the launcher included, as a local process: outputs passed between
//! steps on each channel, per-step logs and statuses, a failing step driving the retry rules,
//! a retry resuming from the failed step, and an array whose retry runs only its failed task.

mod common;

use std::path::Path;

use charon_core::resources::{InstanceState, StepState};
use common::cli::Cli;
use common::{Cluster, LONG, NS};
use k8s_openapi::api::core::v1::{Event, PersistentVolumeClaim};
use kube::Api;
use kube::api::ListParams;
use serde_json::json;

fn step(name: &str, script: &str) -> serde_json::Value {
    json!({"name": name, "image": "busybox", "command": ["sh", "-c", script]})
}

fn pipeline(steps: Vec<serde_json::Value>) -> serde_json::Value {
    json!({"schedule": "@hourly", "suspend": true, "template": {"steps": steps}})
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_steps_output_is_the_next_steps_input_on_every_channel() {
    let cluster = Cluster::start().await;
    let cli = Cli::new(&cluster);
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("upper.txt");
    let bulk = dir.path().join("bulk.bin");
    let spec = pipeline(vec![
        step(
            "words",
            "printf 'alpha beta gamma\\n'; echo 'words noise' >&2",
        ),
        // The file channel: what the step writes at an absolute path.
        json!({"name": "upper", "image": "busybox", "command": ["sh", "-c",
            format!("tr a-z A-Z > {}; echo 'upper wrote its file'", file.display())],
            "output": file.display().to_string()}),
        // The stderr channel.
        json!({"name": "shout", "image": "busybox",
            "command": ["sh", "-c", "echo \"$CHARON_STEP on stdout\"; cat >&2"],
            "output": "stderr"}),
        step(
            "ten-mb",
            &format!(
                "read line; echo \"ten-mb got: $line\"; head -c 10485760 /dev/zero > {}",
                bulk.display()
            ),
        ),
    ]);
    let mut spec = spec;
    spec["template"]["steps"][3]["output"] = json!(bulk.display().to_string());
    spec["template"]["steps"]
        .as_array_mut()
        .expect("steps")
        .push(step(
            "count",
            "echo \"count got $(wc -c | tr -d ' ') bytes\"",
        ));
    cluster.apply_workflow("words", spec).await;
    let (ok, _, err) = cli
        .run(&["-n", NS, "trigger", "words", "2024-01-01T05"])
        .await;
    assert!(ok, "{err}");
    let done = cluster
        .wait_states("words", 1, &[InstanceState::Done], LONG)
        .await;
    let status = done[0].status.clone().expect("status");
    let states: Vec<(&str, StepState, Option<i32>)> = status
        .steps
        .iter()
        .map(|s| (s.name.as_str(), s.state, s.exit_code))
        .collect();
    assert_eq!(
        states,
        [
            ("words", StepState::Succeeded, Some(0)),
            ("upper", StepState::Succeeded, Some(0)),
            ("shout", StepState::Succeeded, Some(0)),
            ("ten-mb", StepState::Succeeded, Some(0)),
            ("count", StepState::Succeeded, Some(0)),
        ]
    );
    assert_eq!(status.steps_completed, Some(5));
    assert!(
        status
            .steps
            .iter()
            .all(|s| s.started_at.is_some() && s.finished_at.is_some())
    );
    assert_eq!(read(&file), "ALPHA BETA GAMMA\n");

    let name = "words-2024-01-01t05";
    let log = |step: &'static str| {
        let cli = &cli;
        async move {
            let (ok, out, err) = cli.run(&["-n", NS, "logs", name, "--step", step]).await;
            assert!(ok, "{err}");
            out
        }
    };
    // Each step's log has what it wrote, the captured channel included.
    let words = log("words").await;
    assert!(
        words.contains("alpha beta gamma") && words.contains("words noise"),
        "{words}"
    );
    let shout = log("shout").await;
    assert!(
        shout.contains("shout on stdout") && shout.contains("ALPHA BETA GAMMA"),
        "{shout}"
    );
    // The stderr channel carried only stderr.
    let ten = log("ten-mb").await;
    assert!(ten.contains("ten-mb got: ALPHA BETA GAMMA"), "{ten}");
    assert!(!ten.contains("shout on stdout"), "{ten}");
    assert!(log("count").await.contains("count got 10485760 bytes"));
    // Every step, each after its header.
    let (ok, all, err) = cli.run(&["-n", NS, "logs", name]).await;
    assert!(ok, "{err}");
    let headers: Vec<&str> = all.lines().filter(|l| l.starts_with("== step")).collect();
    assert_eq!(
        headers,
        [
            "== step words ==",
            "== step upper ==",
            "== step shout ==",
            "== step ten-mb ==",
            "== step count =="
        ],
        "{all}"
    );
    let (ok, _, err) = cli.run(&["-n", NS, "logs", name, "--step", "nope"]).await;
    assert!(
        !ok && err.contains("has no step \"nope\" (its steps: words, upper, shout, ten-mb, count)"),
        "{err}"
    );
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_step_stops_the_rest_and_a_resumed_retry_reuses_the_earlier_output() {
    let cluster = Cluster::start().await;
    let cli = Cli::new(&cluster);
    let dir = tempfile::tempdir().expect("temp dir");
    let runs = dir.path().join("runs");
    let marker = dir.path().join("failed-once");
    let after = dir.path().join("after-ran");

    // A fatal exit code (50) in the middle step: Error at once, the last step never runs.
    cluster
        .apply_workflow(
            "fatal",
            pipeline(vec![
                step("first", "echo one"),
                step("middle", "cat; exit 50"),
                step("last", &format!("touch {}", after.display())),
            ]),
        )
        .await;
    let (ok, _, err) = cli
        .run(&["-n", NS, "trigger", "fatal", "2024-01-01T05"])
        .await;
    assert!(ok, "{err}");
    let ended = cluster
        .wait_states("fatal", 1, &[InstanceState::Error], LONG)
        .await;
    let status = ended[0].status.clone().expect("status");
    assert_eq!(status.last_exit_code, Some(50));
    let states: Vec<StepState> = status.steps.iter().map(|s| s.state).collect();
    assert_eq!(
        states,
        [StepState::Succeeded, StepState::Failed, StepState::Skipped]
    );
    assert_eq!(status.steps[1].exit_code, Some(50));
    assert!(!after.exists(), "the step after the failed one ran");
    let events: Api<Event> = Api::namespaced(cluster.client.clone(), NS);
    cluster
        .eventually("a StepFailed Event naming the step", LONG, || async {
            let list = events
                .list(&ListParams::default())
                .await
                .map_err(|e| e.to_string())?;
            list.items
                .iter()
                .find(|e| e.reason.as_deref() == Some("StepFailed"))
                .and_then(|e| e.message.clone())
                .filter(|m| m.contains("step middle failed (exit code 50)"))
                .ok_or_else(|| format!("{} events", list.items.len()))
        })
        .await;

    // Exit 1 in the middle step the first time: a retry, which resumes at that step with the
    // first step's stored output (the first step runs once).
    let mut spec = pipeline(vec![
        step(
            "produce",
            &format!(
                "echo ran >> {}; echo \"token-$$-$(date +%s%N)\"",
                runs.display()
            ),
        ),
        step(
            "check",
            &format!(
                "input=$(cat); if [ ! -e {m} ]; then touch {m}; echo 'failing once' >&2; exit 1; fi; echo \"checked $input\"",
                m = marker.display()
            ),
        ),
        step("report", "echo \"report: $(cat)\""),
    ]);
    spec["retry"] = json!({"resumeFromFailedStep": true});
    cluster.apply_workflow("resumable", spec).await;
    let (ok, _, err) = cli
        .run(&["-n", NS, "trigger", "resumable", "2024-01-01T05"])
        .await;
    assert!(ok, "{err}");
    let name = "resumable-2024-01-01t05";
    let failed = cluster
        .eventually("the first attempt to fail in check", LONG, || async {
            let i = cluster.instance(name).await?;
            let s = i.status.clone().unwrap_or_default();
            let check_failed = s
                .steps
                .iter()
                .any(|st| st.name == "check" && st.state == StepState::Failed);
            if s.state == InstanceState::Queued && s.tries == 1 && check_failed {
                Ok(s)
            } else {
                Err(format!("{:?} {:?}", s.state, s.steps))
            }
        })
        .await;
    assert_eq!(failed.last_exit_code, Some(1));
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(cluster.client.clone(), NS);
    assert!(
        claims
            .get_opt(&format!("{name}-outputs"))
            .await
            .expect("get")
            .is_some(),
        "the run keeps its outputs on a claim"
    );
    let (ok, out, err) = cli.run(&["-n", NS, "retry", name]).await;
    assert!(ok, "{out}{err}");
    let done = cluster
        .wait_states("resumable", 1, &[InstanceState::Done], LONG)
        .await;
    let status = done[0].status.clone().expect("status");
    assert_eq!(status.tries, 2);
    let states: Vec<StepState> = status.steps.iter().map(|s| s.state).collect();
    assert_eq!(
        states,
        [
            StepState::Reused,
            StepState::Succeeded,
            StepState::Succeeded
        ]
    );
    assert_eq!(
        status.snapshot.and_then(|s| s.resume_from).as_deref(),
        Some("check")
    );
    assert_eq!(read(&runs), "ran\n", "the first step ran again");
    let (ok, report, err) = cli.run(&["-n", NS, "logs", name, "--step", "report"]).await;
    assert!(ok, "{err}");
    assert!(report.contains("report: checked token-"), "{report}");
    // The finished run's claim is deleted (held Terminating, as a real cluster's PVC
    // protection holds it, while the finished pods that used it exist).
    cluster
        .eventually("the outputs claim to be deleted", LONG, || async {
            match claims.get_opt(&format!("{name}-outputs")).await {
                Ok(None) => Ok(()),
                Ok(Some(c)) if c.metadata.deletion_timestamp.is_some() => Ok(()),
                Ok(Some(_)) => Err("still there, not being deleted".to_string()),
                Err(e) => Err(e.to_string()),
            }
        })
        .await;
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_array_runs_one_task_per_id_and_its_retry_runs_only_the_failed_task() {
    let cluster = Cluster::start().await;
    let cli = Cli::new(&cluster);
    let dir = tempfile::tempdir().expect("temp dir");
    let d = dir.path().display().to_string();
    // Each task records its variables and how often it ran; task 6 fails the first time.
    let script = format!(
        "echo \"$CHARON_TASK_ID $CHARON_TASK_FIRST $CHARON_TASK_LAST $CHARON_TASK_STEP $CHARON_TASK_COUNT\" > {d}/env-$CHARON_TASK_ID; \
         echo ran >> {d}/runs-$CHARON_TASK_ID; \
         if [ \"$CHARON_TASK_ID\" = 6 ] && [ ! -e {d}/failed ]; then touch {d}/failed; exit 7; fi; \
         echo \"task $CHARON_TASK_ID done\""
    );
    cluster
        .apply_workflow(
            "array",
            json!({"schedule": "@hourly", "suspend": true, "template": {
                "image": "busybox", "command": ["sh", "-c", script],
                "array": {"start": 0, "end": 9, "step": 3, "parallelism": 2},
            }}),
        )
        .await;
    let (ok, _, err) = cli
        .run(&["-n", NS, "trigger", "array", "2024-01-01T05"])
        .await;
    assert!(ok, "{err}");
    let name = "array-2024-01-01t05";
    let failed = cluster
        .eventually(
            "the first attempt to end with task 6 failed",
            LONG,
            || async {
                let s = cluster.instance(name).await?.status.unwrap_or_default();
                if s.state == InstanceState::Queued && s.tries == 1 {
                    Ok(s)
                } else {
                    Err(format!("{:?} {:?}", s.state, s.array))
                }
            },
        )
        .await;
    assert_eq!(failed.last_exit_code, Some(7));
    let array = failed.array.clone().expect("status.array");
    assert_eq!(array.succeeded, [0, 3, 9]);
    assert_eq!(array.failed, [6]);
    for id in [0, 3, 6, 9] {
        assert_eq!(
            read(&dir.path().join(format!("env-{id}"))),
            format!("{id} 0 9 3 4\n"),
            "task {id}"
        );
    }
    let (ok, out, err) = cli.run(&["-n", NS, "retry", name]).await;
    assert!(ok, "{out}{err}");
    let done = cluster
        .wait_states("array", 1, &[InstanceState::Done], LONG)
        .await;
    let status = done[0].status.clone().expect("status");
    let array = status.array.expect("status.array");
    assert_eq!(array.succeeded, [0, 3, 6, 9]);
    assert!(array.failed.is_empty());
    assert_eq!(status.snapshot.map(|s| s.tasks).as_deref(), Some("2"));
    for (id, runs) in [(0, 1), (3, 1), (6, 2), (9, 1)] {
        assert_eq!(
            read(&dir.path().join(format!("runs-{id}"))).lines().count(),
            runs,
            "task {id} ran {runs} time(s)"
        );
    }
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn halting_an_array_stops_every_task() {
    let cluster = Cluster::start().await;
    let cli = Cli::new(&cluster);
    cluster
        .apply_workflow(
            "long-array",
            json!({"schedule": "@hourly", "suspend": true, "template": {
                "image": "busybox", "command": ["sh", "-c", "sleep 300"],
                "array": {"start": 1, "end": 3},
            }}),
        )
        .await;
    let (ok, _, err) = cli
        .run(&["-n", NS, "trigger", "long-array", "2024-01-01T05"])
        .await;
    assert!(ok, "{err}");
    let name = "long-array-2024-01-01t05";
    let pods: Api<k8s_openapi::api::core::v1::Pod> = Api::namespaced(cluster.client.clone(), NS);
    let selector = format!("charon.dev/instance={name}");
    let running = || async {
        let list = pods
            .list(&ListParams::default().labels(&selector))
            .await
            .map_err(|e| e.to_string())?;
        Ok::<usize, String>(
            list.items
                .iter()
                .filter(|p| {
                    p.metadata.deletion_timestamp.is_none()
                        && p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running")
                })
                .count(),
        )
    };
    cluster
        .eventually("three running tasks", LONG, || async {
            match running().await? {
                3 => Ok(()),
                n => Err(format!("{n} running")),
            }
        })
        .await;
    let (ok, out, err) = cli.run(&["-n", NS, "halt", name]).await;
    assert!(ok, "{out}{err}");
    cluster
        .wait_states("long-array", 1, &[InstanceState::Halted], LONG)
        .await;
    cluster
        .eventually("no task left running", LONG, || async {
            match running().await? {
                0 => Ok(()),
                n => Err(format!("{n} running")),
            }
        })
        .await;
    cluster.stop().await;
}
