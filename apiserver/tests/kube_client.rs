//! Drives the embedded server with kube-rs the way the operator will.

use futures::StreamExt;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{
    Api, DeleteParams, DynamicObject, ListParams, Patch, PatchParams, PostParams, WatchEvent,
    WatchParams,
};
use kube::core::{ApiResource, GroupVersionKind};
use kube::{Client, Config};
use serde_json::json;

async fn client() -> (charon_apiserver::RunningServer, Client) {
    let server = charon_apiserver::start("127.0.0.1:0".parse().expect("address"))
        .await
        .expect("server starts");
    let config = Config::new(server.url().parse().expect("url"));
    let client = Client::try_from(config).expect("client");
    (server, client)
}

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
    assert!(message.contains("type: Required value"), "{message}");

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
