//! End-to-end: what an adversarial trial broke — the operator wedging, losing or repeating runs
//! when objects vanish, writes fail or deletes fail. Each test failed before its fix.

mod common;

use std::time::Duration as StdDuration;

use charon_core::resources::InstanceState;
use chrono::Duration;
use common::{Cluster, LONG};
use serde_json::json;

/// Instances deleted the moment they finish (`history.ttl: PT0S`) used to stall the instance
/// controller for everyone: its shared watch handed it the name of an instance already gone
/// from the cache and then waited forever. Every other workflow must keep running.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instances_deleted_as_they_finish_do_not_stall_the_others() {
    let cluster = Cluster::start().await;
    let every_minute = |ttl: Option<&str>| {
        let mut spec = json!({
            "schedule": "* * * * *",
            "template": {"image": "busybox", "command": ["true"]},
        });
        if let Some(ttl) = ttl {
            spec["history"] = json!({"ttl": ttl});
        }
        spec
    };
    for i in 0..20 {
        cluster
            .apply_workflow(&format!("gone-{i}"), every_minute(Some("PT0S")))
            .await;
    }
    cluster.apply_workflow("steady", every_minute(None)).await;
    for minute in 1..=3 {
        cluster.clock.advance(Duration::minutes(1));
        cluster
            .wait_states("steady", minute, &[InstanceState::Done], LONG)
            .await;
        // The short-lived ones ran and went.
        cluster
            .eventually("the PT0S instances to be deleted", LONG, || async {
                let left = cluster.instances().list(&Default::default()).await;
                let left = left.map_err(|e| e.to_string())?.items;
                let gone = left.iter().all(|i| !i.spec.workflow.starts_with("gone-"));
                if gone {
                    Ok(())
                } else {
                    Err(format!("{} instances left", left.len()))
                }
            })
            .await;
    }
    tokio::time::sleep(StdDuration::from_millis(100)).await;
    cluster.stop().await;
}
