//! The web UI's server on the test cluster, and requests to its JSON API.

use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;

use super::Cluster;
use charon::ui::{Ui, auth::Mode};

/// A UI server on `client` (the cluster's own, or one with another User-Agent), in `mode`;
/// returns it and its base URL once its caches are filled.
pub async fn serve(cluster: &Cluster, client: kube::Client, mode: Mode) -> (Arc<Ui>, String) {
    let (ui, caches) = Ui::new(client, None, mode, cluster.log_store.clone());
    tokio::spawn(caches);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("listen");
    let base = format!("http://{}", listener.local_addr().expect("address"));
    tokio::spawn(charon::ui::serve(
        listener,
        ui.clone(),
        std::future::pending(),
    ));
    ui.cache.ready().await;
    (ui, base)
}

/// One request with an optional bearer token and JSON body: its status and JSON body (`Null`
/// when the body is not JSON).
pub async fn call(
    method: &str,
    url: &str,
    token: Option<&str>,
    body: Option<Value>,
) -> (u16, Value) {
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("http client");
    let mut request = client.request(method.parse().expect("method"), url);
    if let Some(token) = token {
        request = request.header("Authorization", format!("Bearer {token}"));
    }
    if let Some(body) = body {
        request = request
            .header("Content-Type", "application/json")
            .body(body.to_string());
    }
    let response = request.send().await.expect("request");
    let status = response.status().as_u16();
    let text = response.text().await.unwrap_or_default();
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

/// Polls `check` until it gives a value, failing after [`super::LONG`].
pub async fn until<F, Fut>(what: &str, mut check: F) -> Value
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<Value>>,
{
    let deadline = tokio::time::Instant::now() + super::LONG;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
}
