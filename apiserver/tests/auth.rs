//! A server configured with a bearer token serves only requests that carry it; others get
//! the real server's 401 Status.

mod common;

use common::raw_get;

use std::time::Duration;

use charon_apiserver::{ApiServer, Config};
use k8s_openapi::api::core::v1::Namespace;
use kube::Client;
use kube::api::{Api, ListParams};

const UNAUTHORIZED: &str = r#"{"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure","message":"Unauthorized","reason":"Unauthorized","code":401}"#;

#[tokio::test]
async fn only_requests_with_the_token_are_served() {
    let token = charon_apiserver::random_token();
    assert_eq!(token.len(), 64);
    assert_ne!(token, charon_apiserver::random_token());
    let server = ApiServer::start(Config {
        token: Some(token.clone()),
        ..Config::default().api_only()
    })
    .await
    .expect("starts");
    let mut config = kube::Config::new(server.url().parse().expect("url"));
    config.auth_info.token = Some(token.clone().into());
    let client = Client::try_from(config).expect("client");
    let namespaces: Api<Namespace> = Api::all(client);
    assert!(
        !namespaces
            .list(&ListParams::default())
            .await
            .expect("served with the token")
            .items
            .is_empty()
    );

    for auth in [None, Some("Bearer wrong"), Some(&*format!("Basic {token}"))] {
        for path in ["/api/v1/namespaces", "/version", "/healthz"] {
            let raw = raw_get(server.address(), path, auth, Duration::from_secs(2)).await;
            assert!(raw.starts_with("HTTP/1.1 401"), "{auth:?} {path}: {raw}");
            let body = raw.split("\r\n\r\n").nth(1).unwrap_or_default();
            assert_eq!(
                serde_json::from_str::<serde_json::Value>(body).expect("JSON"),
                serde_json::from_str::<serde_json::Value>(UNAUTHORIZED).expect("JSON"),
            );
        }
    }
    let raw = raw_get(
        server.address(),
        "/api/v1/namespaces",
        Some(&format!("Bearer {token}")),
        Duration::from_secs(2),
    )
    .await;
    assert!(raw.starts_with("HTTP/1.1 200"), "{raw}");
    // Refused requests are not resource requests: the audit has none of them.
    assert!(
        server
            .requests()
            .iter()
            .all(|r| r.resource != "namespaces" || r.count <= 2),
        "{:?}",
        server.requests()
    );
    server.shutdown().await;

    // A kubeconfig carrying the token, readable by its owner only.
    let path = std::env::temp_dir().join(format!("auth-test-{}.kubeconfig", std::process::id()));
    charon_apiserver::write_kubeconfig_with(&path, "http://127.0.0.1:1", Some(&token), None)
        .expect("written");
    let text = std::fs::read_to_string(&path).expect("read");
    assert!(
        text.contains(&format!("    token: \"{token}\"\n")),
        "{text}"
    );
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).expect("meta").permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "{mode:o}");
    }
    let _ = std::fs::remove_file(&path);
}
