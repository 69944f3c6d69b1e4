use super::*;
use charon_core::resources::{Trigger, TriggerType, WorkflowInstanceSpec, WorkflowInstanceStatus};
use chrono::TimeZone;

fn instance(workflow: &str, hour: u32, state: InstanceState) -> Arc<WorkflowInstance> {
    let logical =
        Utc.with_ymd_and_hms(2024, 1, 1, 0, 0, 0).unwrap() + chrono::Duration::hours(hour.into());
    let parameter = logical.format("%Y-%m-%dT%H").to_string();
    let mut i = WorkflowInstance::new(
        &charon_core::names::instance_name(workflow, &parameter),
        WorkflowInstanceSpec {
            workflow: workflow.into(),
            parameter,
            logical_time: logical,
            trigger: Trigger {
                trigger_type: TriggerType::Natural,
                id: "n".into(),
            },
            halted: false,
            suspended: false,
            env: Vec::new(),
        },
    );
    i.metadata.namespace = Some("team".into());
    i.status = Some(WorkflowInstanceStatus {
        state,
        ..Default::default()
    });
    Arc::new(i)
}

fn many(n: u32) -> Vec<Arc<WorkflowInstance>> {
    (0..n)
        .map(|h| {
            let state = if h % 3 == 0 {
                InstanceState::Error
            } else {
                InstanceState::Done
            };
            instance("report", h, state)
        })
        .collect()
}

#[test]
fn pages_are_newest_first_and_cover_every_partition_once() {
    let all = many(250);
    let mut query = PageQuery::parse(Some("100"), None, None).unwrap();
    let mut seen = Vec::new();
    let mut pages = 0;
    loop {
        let page = partitions(&all, &query);
        assert_eq!(page.total, 250);
        assert!(page.items.len() <= 100);
        assert!(
            page.items
                .windows(2)
                .all(|w| w[0].logical_time > w[1].logical_time)
        );
        seen.extend(page.items.iter().map(|i| i.parameter.clone()));
        pages += 1;
        match page.next {
            Some(token) => query = PageQuery::parse(Some("100"), Some(&token), None).unwrap(),
            None => break,
        }
    }
    assert_eq!(pages, 3);
    assert_eq!(seen.len(), 250);
    assert_eq!(seen.first().unwrap(), "2024-01-11T09");
    let mut unique = seen.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), 250);
}

#[test]
fn the_state_filter_applies_before_paging() {
    let all = many(30);
    let query = PageQuery::parse(Some("4"), None, Some("error")).unwrap();
    let page = partitions(&all, &query);
    assert_eq!(page.total, 10);
    assert_eq!(page.items.len(), 4);
    assert!(page.items.iter().all(|i| i.state == InstanceState::Error));
    assert!(page.next.is_some());
}

#[test]
fn bad_page_parameters_name_the_field() {
    for (limit, token, state, field) in [
        (Some("0"), None, None, "limit"),
        (Some("1001"), None, None, "limit"),
        (Some("x"), None, None, "limit"),
        (None, Some("nope"), None, "continue"),
        (None, None, Some("Finished"), "state"),
    ] {
        let error = PageQuery::parse(limit, token, state).unwrap_err();
        assert_eq!(error.field, field, "{limit:?} {token:?} {state:?}");
    }
    assert_eq!(
        PageQuery::parse(None, None, None).unwrap().limit,
        DEFAULT_LIMIT
    );
}

#[test]
fn a_summary_shows_the_newest_partitions_and_the_active_count() {
    let mut all = many(20);
    all.push(instance("report", 20, InstanceState::Running));
    let workflow: Workflow = serde_json::from_value(serde_json::json!({
        "apiVersion": "charon.dev/v1alpha1", "kind": "Workflow",
        "metadata": {"name": "report", "namespace": "team"},
        "spec": {"schedule": "@hourly", "template": {"image": "busybox", "command": ["true"]}}
    }))
    .unwrap();
    let item = workflow_item(&workflow, &all);
    assert_eq!(item.recent.len(), RECENT);
    assert_eq!(item.recent[0].parameter, "2024-01-01T20");
    assert_eq!(item.recent[0].state, InstanceState::Running);
    assert_eq!(item.active, 1);
    assert!(item.valid);
    let detail = workflow_detail(
        &workflow,
        &all,
        &[],
        &[],
        Utc.with_ymd_and_hms(2024, 1, 2, 0, 30, 0).unwrap(),
    );
    assert_eq!(detail.upcoming.len(), UPCOMING);
    // @hourly triggers a partition when its hour ends.
    assert_eq!(detail.upcoming[0].parameter, "2024-01-02T00");
    assert_eq!(detail.states.get("Error"), Some(&7));
}

#[test]
fn an_invalid_workflow_says_why_and_has_no_next_trigger() {
    let workflow: Workflow = serde_json::from_value(serde_json::json!({
        "apiVersion": "charon.dev/v1alpha1", "kind": "Workflow",
        "metadata": {"name": "bad", "namespace": "team"},
        "spec": {"schedule": "61 * * * *", "template": {"image": "busybox", "command": ["true"]}}
    }))
    .unwrap();
    let item = workflow_item(&workflow, &[]);
    assert!(!item.valid);
    assert!(item.message.contains("spec.schedule"), "{}", item.message);
    assert_eq!(item.next_trigger, None);
}

#[test]
fn relative_times_read_as_people_say_them() {
    let now = Utc.with_ymd_and_hms(2024, 1, 1, 12, 0, 0).unwrap();
    for (seconds, text) in [
        (720, "in 12m"),
        (-30, "30s ago"),
        (3 * 3600 + 600, "in 3h10m"),
        (-7200, "2h ago"),
        (86_400 * 3, "in 3d"),
    ] {
        assert_eq!(
            relative(now + chrono::Duration::seconds(seconds), now),
            text
        );
    }
}
