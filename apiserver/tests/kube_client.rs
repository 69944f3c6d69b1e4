//! Drives the embedded server with kube-rs the way the operator will.

mod common;

use common::client;

use futures::StreamExt;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{
    Api, DeleteParams, DynamicObject, ListParams, Patch, PatchParams, PostParams, WatchEvent,
    WatchParams,
};
use kube::core::{ApiResource, GroupVersionKind};
use serde_json::json;

fn api_error(err: kube::Error) -> (u16, String, String) {
    match err {
        kube::Error::Api(status) => (status.code, status.reason.clone(), status.message.clone()),
        other => panic!("expected an API error, got {other:?}"),
    }
}

#[tokio::test]
async fn crud_conflicts_and_errors_like_the_real_server() {
    let (server, client) = client().await;
    let cms: Api<ConfigMap> = Api::namespaced(client, "default");
    let cm: ConfigMap = serde_json::from_value(json!({
        "metadata": {"name": "settings", "labels": {"app": "charon"}}, "data": {"a": "1"},
    }))
    .expect("configmap");
    let created = cms
        .create(&PostParams::default(), &cm)
        .await
        .expect("create");
    assert!(created.metadata.uid.is_some());
    assert_eq!(created.metadata.generation, Some(1));
    let (code, reason, message) =
        api_error(cms.create(&PostParams::default(), &cm).await.unwrap_err());
    assert_eq!((code, reason.as_str()), (409, "AlreadyExists"));
    assert_eq!(message, "configmaps \"settings\" already exists");

    let patched = cms
        .patch(
            "settings",
            &PatchParams::default(),
            &Patch::Merge(json!({"data": {"b": "2"}})),
        )
        .await
        .expect("merge patch");
    assert_eq!(patched.data.as_ref().map(|d| d.len()), Some(2));
    assert_ne!(
        patched.metadata.resource_version,
        created.metadata.resource_version
    );

    // A write based on a stale version is refused.
    let (code, reason, message) = api_error(
        cms.replace("settings", &PostParams::default(), &created)
            .await
            .unwrap_err(),
    );
    assert_eq!((code, reason.as_str()), (409, "Conflict"));
    assert!(message.starts_with(
        "Operation cannot be fulfilled on configmaps \"settings\": the object has been modified"
    ));

    let listed = cms
        .list(&ListParams::default().labels("app=charon"))
        .await
        .expect("list");
    assert_eq!(listed.items.len(), 1);
    assert!(
        cms.list(&ListParams::default().labels("app!=charon"))
            .await
            .expect("list")
            .items
            .is_empty()
    );

    let bad: ConfigMap =
        serde_json::from_value(json!({"metadata": {"name": "Bad_Name"}})).expect("configmap");
    let (code, reason, message) =
        api_error(cms.create(&PostParams::default(), &bad).await.unwrap_err());
    assert_eq!((code, reason.as_str()), (422, "Invalid"));
    assert!(message.starts_with("ConfigMap \"Bad_Name\" is invalid: metadata.name: Invalid value: \"Bad_Name\": a lowercase RFC 1123 subdomain"), "{message}");

    // Dry runs check and answer without storing.
    let dry: ConfigMap =
        serde_json::from_value(json!({"metadata": {"name": "dry"}})).expect("configmap");
    cms.create(
        &PostParams {
            dry_run: true,
            ..PostParams::default()
        },
        &dry,
    )
    .await
    .expect("dry-run create");
    assert_eq!(api_error(cms.get("dry").await.unwrap_err()).0, 404);

    // Delete preconditions are checked.
    let stale = DeleteParams {
        preconditions: Some(kube::api::Preconditions {
            resource_version: created.metadata.resource_version.clone(),
            uid: None,
        }),
        ..DeleteParams::default()
    };
    let (code, reason, message) = api_error(cms.delete("settings", &stale).await.unwrap_err());
    assert_eq!((code, reason.as_str()), (409, "Conflict"));
    assert!(
        message.starts_with(
            "Operation cannot be fulfilled on configmaps \"settings\": Precondition failed"
        ),
        "{message}"
    );
    cms.delete("settings", &DeleteParams::background())
        .await
        .expect("delete");
    let (code, _, message) = api_error(cms.get("settings").await.unwrap_err());
    assert_eq!(
        (code, message.as_str()),
        (404, "configmaps \"settings\" not found")
    );
    server.shutdown().await;
}

#[tokio::test]
async fn crds_serve_custom_objects_with_a_status_subresource() {
    let (server, client) = client().await;
    let crds: Api<DynamicObject> = Api::all_with(
        client.clone(),
        &ApiResource::from_gvk_with_plural(
            &GroupVersionKind::gvk("apiextensions.k8s.io", "v1", "CustomResourceDefinition"),
            "customresourcedefinitions",
        ),
    );
    let crd: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
        "metadata": {"name": "widgets.example.test"},
        "spec": {"group": "example.test", "scope": "Namespaced",
            "names": {"plural": "widgets", "singular": "widget", "kind": "Widget", "shortNames": ["wd"]},
            "versions": [{"name": "v1", "served": true, "storage": true, "subresources": {"status": {}},
                "schema": {"openAPIV3Schema": {"type": "object", "properties": {
                    "spec": {"type": "object", "properties": {"size": {"type": "integer"}}},
                    "status": {"type": "object", "properties": {"phase": {"type": "string"}}}}}}}]},
    }))
    .expect("crd");
    let created = crds
        .create(&PostParams::default(), &crd)
        .await
        .expect("CRD accepted");
    let conditions = created
        .data
        .pointer("/status/conditions")
        .expect("conditions")
        .to_string();
    assert!(conditions.contains("Established"), "{conditions}");

    let mut broken = crd.clone();
    broken.metadata.name = Some("gadgets.example.test".into());
    broken.data["spec"]["names"] = json!({"plural": "gadgets", "kind": "Gadget"});
    broken.data["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"] =
        json!({"properties": {}});
    let (code, _, message) = api_error(
        crds.create(&PostParams::default(), &broken)
            .await
            .unwrap_err(),
    );
    assert_eq!(code, 422);
    assert_eq!(
        message,
        "CustomResourceDefinition.apiextensions.k8s.io \"gadgets.example.test\" is invalid: spec.validation.openAPIV3Schema.properties[spec].type: Required value: must not be empty for specified object fields"
    );

    let resource = ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("example.test", "v1", "Widget"),
        "widgets",
    );
    let widgets: Api<DynamicObject> = Api::namespaced_with(client, "default", &resource);
    let widget: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "example.test/v1", "kind": "Widget", "metadata": {"name": "w1"},
        "spec": {"size": 1}, "status": {"phase": "ignored on create"},
    }))
    .expect("widget");
    let w = widgets
        .create(&PostParams::default(), &widget)
        .await
        .expect("custom object");
    assert!(
        w.data.get("status").is_none(),
        "status is written through /status only"
    );

    let with_status = widgets
        .patch_status(
            "w1",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"phase": "Ready"}, "spec": {"size": 9}})),
        )
        .await
        .expect("status patch");
    assert_eq!(with_status.data["status"]["phase"], "Ready");
    assert_eq!(
        with_status.data["spec"]["size"], 1,
        "spec is not written through /status"
    );
    assert_eq!(with_status.metadata.generation, Some(1));

    let bumped = widgets
        .patch(
            "w1",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"size": 2}})),
        )
        .await
        .expect("spec patch");
    assert_eq!(bumped.metadata.generation, Some(2));
    assert_eq!(
        bumped.data["status"]["phase"], "Ready",
        "status survives spec writes"
    );

    // replace_status writes status only, with optimistic concurrency.
    let mut replaced = bumped.clone();
    replaced.data["status"]["phase"] = json!("Done");
    replaced.data["spec"]["size"] = json!(5);
    let done = widgets
        .replace_status("w1", &PostParams::default(), &replaced)
        .await
        .expect("replace status");
    assert_eq!(done.data["status"]["phase"], "Done");
    assert_eq!(done.data["spec"]["size"], 2);
    assert_eq!(done.metadata.generation, Some(2));
    let (code, reason, _) = api_error(
        widgets
            .replace_status("w1", &PostParams::default(), &replaced)
            .await
            .unwrap_err(),
    );
    assert_eq!((code, reason.as_str()), (409, "Conflict"));

    // Controllers apply status server-side; an unchanged apply causes no write.
    let status_apply = Patch::Apply(json!({"apiVersion": "example.test/v1", "kind": "Widget",
        "metadata": {"name": "w1"}, "status": {"phase": "Applied"}}));
    // status.phase was last written by a replace (an `Update` by a client without a
    // User-Agent): a different value conflicts unless forced, as on a real server.
    let (code, reason, message) = api_error(
        widgets
            .patch_status(
                "w1",
                &PatchParams::apply("widget-controller"),
                &status_apply,
            )
            .await
            .unwrap_err(),
    );
    assert_eq!(
        (code, reason.as_str(), message.as_str()),
        (
            409,
            "Conflict",
            "Apply failed with 1 conflict: conflict with \"\": .status.phase"
        )
    );
    let applied = widgets
        .patch_status(
            "w1",
            &PatchParams::apply("widget-controller").force(),
            &status_apply,
        )
        .await
        .expect("status apply");
    assert_eq!(applied.data["status"]["phase"], "Applied");
    assert_eq!(applied.data["spec"]["size"], 2);
    let again = widgets
        .patch_status(
            "w1",
            &PatchParams::apply("widget-controller"),
            &status_apply,
        )
        .await
        .expect("status re-apply");
    assert_eq!(
        again.metadata.resource_version,
        applied.metadata.resource_version
    );

    // Custom objects are checked against the schema, with the real server's causes.
    let mut bad = widget.clone();
    bad.metadata.name = Some("w2".into());
    bad.data["spec"]["size"] = json!("big");
    let err = widgets
        .create(&PostParams::default(), &bad)
        .await
        .unwrap_err();
    let kube::Error::Api(status) = err else {
        panic!("expected an API error, got {err:?}");
    };
    assert_eq!((status.code, status.reason.as_str()), (422, "Invalid"));
    assert_eq!(
        status.message,
        "Widget.example.test \"w2\" is invalid: spec.size: Invalid value: \"string\": spec.size in body must be of type integer: \"string\""
    );
    let cause = status
        .details
        .as_ref()
        .and_then(|d| d.causes.first())
        .expect("a cause");
    assert_eq!(
        (cause.reason.as_str(), cause.field.as_str()),
        ("FieldValueTypeInvalid", "spec.size")
    );

    // Deleting the CRD stops serving its resource.
    crds.delete("widgets.example.test", &DeleteParams::default())
        .await
        .expect("delete CRD");
    let (code, _, _) = api_error(widgets.get("w1").await.unwrap_err());
    assert_eq!(code, 404);
    server.shutdown().await;
}

#[tokio::test]
async fn lists_page_with_limit_and_continue() {
    let (server, client) = client().await;
    let cms: Api<ConfigMap> = Api::namespaced(client, "default");
    for name in ["a", "b", "c", "d", "e"] {
        let cm: ConfigMap =
            serde_json::from_value(json!({"metadata": {"name": name}})).expect("cm");
        cms.create(&PostParams::default(), &cm)
            .await
            .expect("create");
    }
    let mut names = Vec::new();
    let mut params = ListParams::default().limit(2);
    loop {
        let page = cms.list(&params).await.expect("page");
        assert!(page.items.len() <= 2);
        names.extend(page.items.into_iter().filter_map(|cm| cm.metadata.name));
        match page.metadata.continue_ {
            Some(token) if !token.is_empty() => params = params.continue_token(&token),
            _ => break,
        }
    }
    assert_eq!(names, ["a", "b", "c", "d", "e"]);

    // An object created between two pages, sorting before the continue point, is not on any
    // page; a watch from the version the pages report must still show it.
    let first = cms
        .list(&ListParams::default().limit(2))
        .await
        .expect("page");
    let token = first.metadata.continue_.clone().expect("more pages");
    let early: ConfigMap = serde_json::from_value(json!({"metadata": {"name": "aa"}})).expect("cm");
    cms.create(&PostParams::default(), &early)
        .await
        .expect("create");
    let last = cms
        .list(&ListParams::default().limit(10).continue_token(&token))
        .await
        .expect("page");
    assert!(
        last.items
            .iter()
            .all(|cm| cm.metadata.name.as_deref() != Some("aa"))
    );
    assert_eq!(
        last.metadata.resource_version,
        first.metadata.resource_version
    );
    let rv = last.metadata.resource_version.clone().expect("rv");
    let mut watch = cms
        .watch(&kube::api::WatchParams::default().timeout(1), &rv)
        .await
        .expect("watch")
        .boxed();
    let mut seen = Vec::new();
    while let Some(Ok(event)) = watch.next().await {
        if let kube::api::WatchEvent::Added(cm) = event {
            seen.extend(cm.metadata.name);
        }
    }
    assert_eq!(seen, ["aa"]);
    cms.delete("aa", &DeleteParams::default())
        .await
        .expect("delete");

    let one = cms
        .list(&ListParams::default().fields("metadata.name=c"))
        .await
        .expect("field selector");
    assert_eq!(one.items.len(), 1);
    cms.delete_collection(
        &DeleteParams::default(),
        &ListParams::default().fields("metadata.name!=a"),
    )
    .await
    .expect("delete collection");
    let left = cms.list(&ListParams::default()).await.expect("list");
    let names: Vec<_> = left
        .items
        .iter()
        .filter_map(|c| c.metadata.name.clone())
        .collect();
    assert_eq!(names, ["a"]);
    server.shutdown().await;
}

#[tokio::test]
async fn watches_resume_and_expire() {
    let (server, client) = client().await;
    let cms: Api<ConfigMap> = Api::namespaced(client, "default");
    let first = cms
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": "one"}})).expect("cm"),
        )
        .await
        .expect("create");
    let rv = first.metadata.resource_version.clone().expect("rv");
    let mut stream = cms
        .watch(&WatchParams::default().timeout(5), &rv)
        .await
        .expect("watch")
        .boxed();
    cms.create(
        &PostParams::default(),
        &serde_json::from_value(json!({"metadata": {"name": "two"}})).expect("cm"),
    )
    .await
    .expect("create");
    // Bookmarks may come first: they only carry the current resourceVersion.
    loop {
        match stream.next().await {
            Some(Ok(WatchEvent::Bookmark(_))) => continue,
            Some(Ok(WatchEvent::Added(cm))) => {
                assert_eq!(cm.metadata.name.as_deref(), Some("two"));
                break;
            }
            other => panic!("expected ADDED two, got {other:?}"),
        }
    }
    drop(stream);

    server.compact();
    let mut expired = cms
        .watch(&WatchParams::default().timeout(5), &rv)
        .await
        .expect("watch")
        .boxed();
    match expired.next().await {
        Some(Ok(WatchEvent::Error(status))) => {
            assert_eq!(status.code, 410);
            assert!(
                status.message.starts_with("too old resource version"),
                "{}",
                status.message
            );
        }
        other => panic!("expected 410 Gone, got {other:?}"),
    }

    // The runtime watcher relists and sees both objects.
    let names: Vec<String> =
        kube::runtime::watcher(cms.clone(), kube::runtime::watcher::Config::default())
            .take(4)
            .filter_map(|e| async move {
                match e {
                    Ok(kube::runtime::watcher::Event::InitApply(cm)) => cm.metadata.name,
                    _ => None,
                }
            })
            .collect()
            .await;
    assert_eq!(names, ["one", "two"]);
    server.shutdown().await;
}

#[tokio::test]
async fn server_side_apply_tracks_managers() {
    let (server, client) = client().await;
    let cms: Api<ConfigMap> = Api::namespaced(client, "default");
    let apply = |manager: &str| PatchParams::apply(manager);
    let config = |data: serde_json::Value| {
        Patch::Apply(json!({"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "applied"}, "data": data}))
    };
    let created = cms
        .patch(
            "applied",
            &apply("alice"),
            &config(json!({"a": "1", "b": "2"})),
        )
        .await
        .expect("apply creates");
    let again = cms
        .patch(
            "applied",
            &apply("alice"),
            &config(json!({"a": "1", "b": "2"})),
        )
        .await
        .expect("re-apply");
    assert_eq!(
        again.metadata.resource_version, created.metadata.resource_version,
        "an unchanged apply is a no-op"
    );
    let dropped = cms
        .patch("applied", &apply("alice"), &config(json!({"a": "1"})))
        .await
        .expect("apply without b");
    assert_eq!(
        dropped
            .data
            .as_ref()
            .map(|d| d.keys().cloned().collect::<Vec<_>>()),
        Some(vec!["a".to_string()]),
        "fields a manager stops applying are removed"
    );
    let (code, reason, message) = api_error(
        cms.patch("applied", &apply("bob"), &config(json!({"a": "9"})))
            .await
            .unwrap_err(),
    );
    assert_eq!((code, reason.as_str()), (409, "Conflict"));
    assert_eq!(
        message,
        "Apply failed with 1 conflict: conflict with \"alice\": .data.a"
    );
    let forced = cms
        .patch("applied", &apply("bob").force(), &config(json!({"a": "9"})))
        .await
        .expect("forced apply");
    assert_eq!(
        forced
            .data
            .as_ref()
            .and_then(|d| d.get("a"))
            .map(String::as_str),
        Some("9")
    );
    let managers: Vec<String> = forced
        .metadata
        .managed_fields
        .unwrap_or_default()
        .into_iter()
        .filter_map(|m| m.manager)
        .collect();
    assert_eq!(managers, ["bob"], "alice lost her only field");
    server.shutdown().await;
}

#[tokio::test]
async fn jobs_and_pods_get_defaults_and_checks() {
    use k8s_openapi::api::batch::v1::Job;
    use k8s_openapi::api::core::v1::Pod;

    let (server, client) = client().await;
    let jobs: Api<Job> = Api::namespaced(client.clone(), "default");
    let job = |name: &str, restart: Option<&str>| -> Job {
        let mut pod = json!({"containers": [{"name": "main", "image": "busybox:1.36"}]});
        if let Some(policy) = restart {
            pod["restartPolicy"] = json!(policy);
        }
        serde_json::from_value(json!({"metadata": {"name": name},
            "spec": {"template": {"spec": pod}}}))
        .expect("job")
    };
    let created = jobs
        .create(&PostParams::default(), &job("hello", Some("Never")))
        .await
        .expect("job");
    let uid = created.metadata.uid.clone().expect("uid");
    let spec = created.spec.expect("spec");
    assert_eq!(spec.backoff_limit, Some(6));
    assert_eq!(spec.completions, Some(1));
    let selector = spec
        .selector
        .and_then(|s| s.match_labels)
        .expect("selector");
    assert_eq!(selector["batch.kubernetes.io/controller-uid"], uid);
    let labels = spec
        .template
        .metadata
        .and_then(|m| m.labels)
        .expect("pod labels");
    assert_eq!(labels["batch.kubernetes.io/job-name"], "hello");
    let container = &spec.template.spec.expect("pod spec").containers[0];
    assert_eq!(container.image_pull_policy.as_deref(), Some("IfNotPresent"));

    let (code, _, message) = api_error(
        jobs.create(&PostParams::default(), &job("no-policy", None))
            .await
            .unwrap_err(),
    );
    assert_eq!(code, 422);
    assert_eq!(
        message,
        "Job.batch \"no-policy\" is invalid: spec.template.spec.restartPolicy: Required value: valid values: \"OnFailure\", \"Never\""
    );
    let (_, _, message) = api_error(
        jobs.create(&PostParams::default(), &job("always", Some("Always")))
            .await
            .unwrap_err(),
    );
    assert_eq!(
        message,
        "Job.batch \"always\" is invalid: spec.template.spec.restartPolicy: Unsupported value: \"Always\": supported values: \"OnFailure\", \"Never\""
    );

    let pods: Api<Pod> = Api::namespaced(client, "default");
    let pod: Pod = serde_json::from_value(json!({"metadata": {"name": "p"},
        "spec": {"containers": [{"name": "main"}]}}))
    .expect("pod");
    let (code, _, message) =
        api_error(pods.create(&PostParams::default(), &pod).await.unwrap_err());
    assert_eq!(code, 422);
    assert_eq!(
        message,
        "Pod \"p\" is invalid: spec.containers[0].image: Required value"
    );
    server.shutdown().await;
}

#[tokio::test]
async fn streaming_lists_end_with_a_bookmark() {
    let (server, client) = client().await;
    let cms: Api<ConfigMap> = Api::namespaced(client, "default");
    for name in ["x", "y"] {
        let cm: ConfigMap =
            serde_json::from_value(json!({"metadata": {"name": name}})).expect("cm");
        cms.create(&PostParams::default(), &cm)
            .await
            .expect("create");
    }
    let config = kube::runtime::watcher::Config::default().streaming_lists();
    let mut events = kube::runtime::watcher(cms, config).boxed();
    let mut names = Vec::new();
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let next = tokio::time::timeout_at(deadline, events.next())
            .await
            .expect("the initial list ends");
        match next {
            Some(Ok(kube::runtime::watcher::Event::InitApply(cm))) => {
                names.extend(cm.metadata.name)
            }
            Some(Ok(kube::runtime::watcher::Event::InitDone)) => break,
            Some(Ok(_)) => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(names, ["x", "y"]);
    server.shutdown().await;
}

/// The real server reads at most 3 MiB of a request body, and etcd stores at most 1.5 MiB
/// per object: both refusals are 413 with the real messages, so a client can tell them from
/// a transient failure.
#[tokio::test]
async fn oversized_requests_and_objects_are_refused_as_too_large() {
    let (server, client) = client().await;
    let maps: Api<ConfigMap> = Api::namespaced(client, "default");
    let map = |name: &str, bytes: usize| -> ConfigMap {
        serde_json::from_value(json!({
            "metadata": {"name": name},
            "data": {"blob": "x".repeat(bytes)},
        }))
        .expect("a ConfigMap")
    };
    let (code, reason, message) = api_error(
        maps.create(&PostParams::default(), &map("body", 4 << 20))
            .await
            .expect_err("a 4 MiB body"),
    );
    assert_eq!(
        (code, reason.as_str(), message.as_str()),
        (
            413,
            "RequestEntityTooLarge",
            "Request entity too large: limit is 3145728"
        )
    );
    let (code, reason, message) = api_error(
        maps.create(&PostParams::default(), &map("object", 2 << 20))
            .await
            .expect_err("a 2 MiB object"),
    );
    assert_eq!(
        (code, reason.as_str(), message.as_str()),
        (
            413,
            "RequestEntityTooLarge",
            "etcdserver: request is too large"
        )
    );
    // Growing a stored object past the limit is refused the same way; it stays as it was.
    maps.create(&PostParams::default(), &map("grows", 1 << 20))
        .await
        .expect("1 MiB fits");
    let patch = json!({"data": {"more": "y".repeat(1 << 20)}});
    let (code, _, message) = api_error(
        maps.patch("grows", &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .expect_err("2 MiB in all"),
    );
    assert_eq!(
        (code, message.as_str()),
        (413, "etcdserver: request is too large")
    );
    let stored = maps.get("grows").await.expect("still there");
    assert!(stored.data.is_some_and(|d| !d.contains_key("more")));
    server.shutdown().await;
}
