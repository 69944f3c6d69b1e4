//! Watches through bursts of writes: a client that keeps up must never be told to relist.
//! Each test reproduces, at a size a test run affords, one way a burst of tens of thousands of
//! objects used to expire every watch (`410 Gone`) and force relists.

mod common;

use common::client;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::api::{Api, PostParams, WatchEvent, WatchParams};
use kube::runtime::watcher;

use serde_json::json;

/// Creates `count` objects named `{prefix}-{i}` from `body(name)`, 16 at a time.
async fn create_many<K>(api: &Api<K>, prefix: &str, count: usize, body: impl Fn(&str) -> K)
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + serde::Serialize + std::fmt::Debug,
{
    futures::stream::iter((0..count).map(|i| {
        let object = body(&format!("{prefix}-{i}"));
        async move { api.create(&PostParams::default(), &object).await }
    }))
    .buffer_unordered(16)
    .try_for_each(|_| async { Ok(()) })
    .await
    .expect("creates");
}

/// A watch of a quiet type resumes after a burst of another type without relisting: the
/// history is kept per type, so the other type's events never push this one's out. (Before,
/// one history of 10,000 events for every type was shared, and any burst larger than that
/// expired every other watch's version.) Bookmarks are off because the real server sends them
/// only about once a minute, far less often than a burst this size takes.
#[tokio::test]
async fn a_burst_of_one_type_never_expires_a_watch_of_another() {
    let (server, client) = client().await;
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    let secrets: Api<Secret> = Api::namespaced(client, "default");
    let cm = serde_json::from_value(json!({"metadata": {"name": "quiet"}})).expect("cm");
    cms.create(&PostParams::default(), &cm)
        .await
        .expect("create");

    let lists = Arc::new(AtomicUsize::new(0));
    let errors = Arc::new(AtomicUsize::new(0));
    let (seen_lists, seen_errors) = (lists.clone(), errors.clone());
    // A one-second server-side timeout: the watch resumes from its version again and again.
    let config = watcher::Config::default().timeout(1).disable_bookmarks();
    let watching = tokio::spawn(watcher(cms, config).for_each(move |event| {
        match event {
            Ok(watcher::Event::Init) => {
                seen_lists.fetch_add(1, Ordering::SeqCst);
            }
            Err(_) => {
                seen_errors.fetch_add(1, Ordering::SeqCst);
            }
            Ok(_) => {}
        }
        futures::future::ready(())
    }));
    let started = Instant::now();
    while lists.load(Ordering::SeqCst) == 0 {
        assert!(started.elapsed() < Duration::from_secs(10), "no first list");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    create_many(&secrets, "burst", 12_000, |name| {
        serde_json::from_value(json!({"metadata": {"name": name}})).expect("secret")
    })
    .await;
    // Long enough for the watch to resume at least twice after the burst.
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    assert_eq!(errors.load(Ordering::SeqCst), 0, "the watch saw errors");
    assert_eq!(
        lists.load(Ordering::SeqCst),
        1,
        "the watch of configmaps relisted after a burst of secrets"
    );
    watching.abort();
    server.shutdown().await;
}

/// A watcher that stops reading while thousands of large objects are written falls behind
/// what the server buffers for it. The real server then closes its stream without an error,
/// and the client resumes from the last version it read, which the history still holds: it
/// misses nothing and lists nothing again. (Before, it got `410 Gone` and had to relist.)
#[tokio::test]
async fn a_watcher_that_falls_behind_resumes_where_it_was() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    const COUNT: usize = 6_000;
    let (server, client) = client().await;
    let cms: Api<ConfigMap> = Api::namespaced(client, "default");
    let first = serde_json::from_value(json!({"metadata": {"name": "first"}})).expect("cm");
    let rv = cms
        .create(&PostParams::default(), &first)
        .await
        .expect("create")
        .metadata
        .resource_version
        .expect("rv");

    // A watch whose client reads nothing until the burst is over.
    let mut stream = tokio::net::TcpStream::connect(server.address())
        .await
        .expect("connect");
    let request = format!(
        "GET /api/v1/namespaces/default/configmaps?watch=true&resourceVersion={rv}&timeoutSeconds=120 \
         HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await.expect("write");
    let payload = "x".repeat(16 * 1024);
    create_many(&cms, "big", COUNT, |name| {
        serde_json::from_value(json!({"metadata": {"name": name}, "data": {"payload": payload}}))
            .expect("cm")
    })
    .await;

    let reading = Instant::now();
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(60), stream.read_to_end(&mut raw))
        .await
        .expect("the stream of a watcher that fell behind is closed, well before its timeout")
        .expect("read");
    assert!(reading.elapsed() < Duration::from_secs(60));
    let raw = String::from_utf8_lossy(&raw);
    assert!(
        raw.starts_with("HTTP/1.1 200"),
        "{}",
        &raw[..200.min(raw.len())]
    );
    assert!(
        !raw.contains(r#""type":"ERROR""#),
        "the watch ended with an error"
    );
    // Each event is one chunk of one line: pick the name and version out of each.
    let mut names = BTreeSet::new();
    let mut last_rv = rv.clone();
    for line in raw.lines().filter(|l| l.starts_with(r#"{"type":"ADDED""#)) {
        let event: serde_json::Value = serde_json::from_str(line).expect("an event line");
        let metadata = &event["object"]["metadata"];
        names.insert(metadata["name"].as_str().expect("name").to_string());
        last_rv = metadata["resourceVersion"]
            .as_str()
            .expect("rv")
            .to_string();
    }
    assert!(
        names.len() < COUNT,
        "the watcher got every event: it did not fall behind, so this tests nothing"
    );

    // Resuming from the last version read yields every event it missed.
    let mut resumed = cms
        .watch(&WatchParams::default().timeout(10), &last_rv)
        .await
        .expect("resume")
        .boxed();
    while names.len() < COUNT {
        match resumed.next().await {
            Some(Ok(WatchEvent::Added(cm))) => {
                names.insert(cm.metadata.name.expect("name"));
            }
            Some(Ok(WatchEvent::Bookmark(_))) => {}
            other => panic!("expected the missed events, got {other:?}"),
        }
    }
    let expected: BTreeSet<String> = (0..COUNT).map(|i| format!("big-{i}")).collect();
    assert_eq!(names, expected);
    server.shutdown().await;
}
