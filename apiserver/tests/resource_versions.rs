//! Reads and watches at resourceVersions the server never issued: from an earlier server on
//! the same address (410 Gone), and newer than its current one (504 `Too large resource
//! version` for reads and streaming lists, a waiting stream for plain watches), as the real
//! kube-apiserver answers them.

mod common;

use common::raw_get;

use std::time::{Duration, Instant};

use charon_apiserver::{ApiServer, Config};
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, PostParams};
use kube::{Client, ResourceExt};
use serde_json::{Value, json};

/// The JSON body of a raw (unchunked) response.
fn body_of(raw: &str) -> Value {
    let body = raw.split("\r\n\r\n").nth(1).expect("a body");
    serde_json::from_str(body.trim()).expect("a JSON body")
}

async fn create_map(client: &Client, name: &str) -> ConfigMap {
    let maps: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    let map: ConfigMap =
        serde_json::from_value(json!({"metadata": {"name": name}})).expect("configmap");
    maps.create(&PostParams::default(), &map)
        .await
        .expect("created")
}

fn rv_of(map: &ConfigMap) -> u64 {
    map.resource_version()
        .and_then(|v| v.parse().ok())
        .expect("a numeric resourceVersion")
}

#[tokio::test]
async fn a_restarted_server_sends_watches_from_its_predecessor_away() {
    let first = ApiServer::start(Config::default().api_only())
        .await
        .expect("starts");
    let address = first.address();
    let client =
        Client::try_from(kube::Config::new(first.url().parse().expect("url"))).expect("client");
    for i in 0..5 {
        create_map(&client, &format!("m{i}")).await;
    }
    let old = rv_of(&create_map(&client, "last").await);
    first.shutdown().await;

    let second = ApiServer::start(Config {
        address,
        ..Config::default().api_only()
    })
    .await
    .expect("starts again on the same address");
    // The new server's versions all come after the old one's.
    let new = rv_of(&create_map(&client, "fresh").await);
    assert!(new > old, "{new} <= {old}");
    // Resuming from the old server's version: the stream's only event is 410 Gone.
    let raw = raw_get(
        address,
        &format!("/api/v1/namespaces/default/configmaps?watch=true&resourceVersion={old}"),
        None,
        Duration::from_secs(2),
    )
    .await;
    assert!(raw.contains("\"type\":\"ERROR\""), "{raw}");
    assert!(raw.contains("\"code\":410"), "{raw}");
    // Named with the oldest version the new server can resume from, as the real one does.
    let message = format!("too old resource version: {old} (");
    assert!(raw.contains(&message), "{raw}");
    second.shutdown().await;
}

#[tokio::test]
async fn versions_not_yet_issued_wait_then_time_out() {
    let server = ApiServer::start(Config::default().api_only())
        .await
        .expect("starts");
    let client =
        Client::try_from(kube::Config::new(server.url().parse().expect("url"))).expect("client");
    let current = rv_of(&create_map(&client, "a").await);
    let future = current + 1000;

    // A list at a version the server has not reached waits about three seconds, then fails
    // as the real server's watch cache does.
    let started = Instant::now();
    let raw = raw_get(
        server.address(),
        &format!(
            "/api/v1/namespaces/default/configmaps?resourceVersion={future}&resourceVersionMatch=NotOlderThan"
        ),
        None,
        Duration::from_secs(10),
    )
    .await;
    let waited = started.elapsed();
    assert!(waited >= Duration::from_millis(2900), "{waited:?}");
    assert!(raw.starts_with("HTTP/1.1 504"), "{raw}");
    assert!(raw.to_lowercase().contains("retry-after: 1"), "{raw}");
    assert_eq!(
        body_of(&raw),
        json!({
            "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": format!("Timeout: Too large resource version: {future}, current: {current}"),
            "reason": "Timeout",
            "details": {
                "causes": [{"reason": "ResourceVersionTooLarge", "message": "Too large resource version"}],
                "retryAfterSeconds": 1,
            },
            "code": 504,
        })
    );
    // A get does the same.
    let raw = raw_get(
        server.address(),
        &format!("/api/v1/namespaces/default/configmaps/a?resourceVersion={future}"),
        None,
        Duration::from_secs(10),
    )
    .await;
    assert!(raw.starts_with("HTTP/1.1 504"), "{raw}");

    // A version issued while the list waits answers it.
    let next = current + 1;
    let list = tokio::spawn({
        let address = server.address();
        async move {
            raw_get(
                address,
                &format!("/api/v1/namespaces/default/configmaps?resourceVersion={next}"),
                None,
                Duration::from_secs(10),
            )
            .await
        }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    create_map(&client, "b").await;
    let raw = list.await.expect("join");
    assert!(raw.starts_with("HTTP/1.1 200"), "{raw}");
    assert_eq!(body_of(&raw)["items"].as_array().map(Vec::len), Some(2));

    // A streaming list from a version not yet issued ends with the same Status as its
    // only event.
    let raw = raw_get(
        server.address(),
        &format!(
            "/api/v1/namespaces/default/configmaps?watch=true&sendInitialEvents=true&allowWatchBookmarks=true&resourceVersionMatch=NotOlderThan&resourceVersion={future}"
        ),
        None,
        Duration::from_secs(10),
    )
    .await;
    assert!(raw.starts_with("HTTP/1.1 200"), "{raw}");
    assert!(raw.contains("\"type\":\"ERROR\""), "{raw}");
    assert!(raw.contains("\"code\":504"), "{raw}");
    assert!(raw.contains("ResourceVersionTooLarge"), "{raw}");

    // A plain watch from it is accepted and waits for that version, as the real server's.
    let raw = raw_get(
        server.address(),
        &format!("/api/v1/namespaces/default/configmaps?watch=true&resourceVersion={future}"),
        None,
        Duration::from_secs(1),
    )
    .await;
    assert!(raw.starts_with("HTTP/1.1 200"), "{raw}");
    assert!(!raw.contains("\"type\":\"ERROR\""), "{raw}");
    server.shutdown().await;
}
