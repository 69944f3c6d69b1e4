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

/// Runs the real kubectl against `kubeconfig` (with `--token` when given); (ok, stdout, stderr).
fn kubectl(
    kubeconfig: &std::path::Path,
    token: Option<&str>,
    args: &[&str],
    stdin: &str,
) -> (bool, String, String) {
    use std::io::Write;
    let mut command = std::process::Command::new("kubectl");
    command.arg("--kubeconfig").arg(kubeconfig);
    // A private discovery cache: nothing learnt from another server on the same port.
    command
        .arg("--cache-dir")
        .arg(kubeconfig.with_extension("cache"));
    if let Some(token) = token {
        command.arg("--token").arg(token);
    }
    let mut child = command
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("kubectl runs");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(stdin.as_bytes())
        .expect("stdin");
    let out = child.wait_with_output().expect("kubectl exits");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).trim().to_string(),
        String::from_utf8_lossy(&out.stderr).trim().to_string(),
    )
}

/// ServiceAccount tokens from `kubectl create token` are authorised by the stored RBAC
/// objects, refusals read as the real server's, `kubectl auth can-i` and `whoami` answer
/// for the token, TokenReview and SubjectAccessReview evaluate the same RBAC, and a token
/// dies with its ServiceAccount.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn service_account_tokens_are_authorised_by_rbac_and_reviewed() {
    let admin = charon_apiserver::random_token();
    let server = ApiServer::start(Config {
        token: Some(admin.clone()),
        tls: true,
        ..Config::default().api_only()
    })
    .await
    .expect("starts");
    let dir = tempfile::tempdir().expect("dir");
    let kubeconfig = dir.path().join("kubeconfig");
    charon_apiserver::write_kubeconfig_with(
        &kubeconfig,
        &server.url(),
        Some(&admin),
        server.ca_pem(),
    )
    .expect("kubeconfig");
    let k = |token: Option<&str>, args: &[&str]| kubectl(&kubeconfig, token, args, "");
    let ok = |token: Option<&str>, args: &[&str]| {
        let (ok, out, err) = k(token, args);
        assert!(ok, "kubectl {args:?}: {err}");
        out
    };
    for args in [
        &["create", "namespace", "team"][..],
        &["create", "namespace", "other"],
        &["-n", "team", "create", "serviceaccount", "viewer"],
        &[
            "-n",
            "team",
            "create",
            "configmap",
            "settings",
            "--from-literal=a=b",
        ],
        &[
            "-n",
            "team",
            "create",
            "role",
            "reader",
            "--verb=get,list",
            "--resource=configmaps",
        ],
        &[
            "-n",
            "team",
            "create",
            "rolebinding",
            "viewer",
            "--role=reader",
            "--serviceaccount=team:viewer",
        ],
        &[
            "create",
            "clusterrole",
            "log-reader",
            "--verb=get",
            "--resource=pods/log",
        ],
        &[
            "create",
            "clusterrolebinding",
            "viewer-logs",
            "--clusterrole=log-reader",
            "--serviceaccount=team:viewer",
        ],
    ] {
        ok(None, args);
    }
    let token = ok(None, &["-n", "team", "create", "token", "viewer"]);
    assert_eq!(token.split('.').count(), 3, "JWT-shaped: {token}");
    let (refused, _, err) = k(
        None,
        &["-n", "team", "create", "token", "viewer", "--duration=5m"],
    );
    assert!(
        !refused && err.contains("may not specify a duration less than 10 minutes"),
        "{err}"
    );
    let (missing, _, err) = k(None, &["-n", "team", "create", "token", "ghost"]);
    assert!(
        !missing && err.contains("serviceaccounts \"ghost\" not found"),
        "{err}"
    );

    // What the Role allows, and the real refusals of what it does not.
    let t = Some(token.as_str());
    assert!(ok(t, &["-n", "team", "get", "configmaps"]).contains("settings"));
    let (created, _, err) = k(
        t,
        &[
            "-n",
            "team",
            "create",
            "configmap",
            "x",
            "--from-literal=a=b",
        ],
    );
    assert!(!created);
    assert_eq!(
        err,
        "error: failed to create configmap: configmaps is forbidden: User \"system:serviceaccount:team:viewer\" cannot create resource \"configmaps\" in API group \"\" in the namespace \"team\""
    );
    let (listed, _, err) = k(t, &["-n", "other", "get", "configmaps"]);
    assert!(!listed);
    assert_eq!(
        err,
        "Error from server (Forbidden): configmaps is forbidden: User \"system:serviceaccount:team:viewer\" cannot list resource \"configmaps\" in API group \"\" in the namespace \"other\""
    );
    let (nodes, _, err) = k(t, &["get", "namespaces"]);
    assert!(
        !nodes
            && err.contains(
                "cannot list resource \"namespaces\" in API group \"\" at the cluster scope"
            ),
        "{err}"
    );

    // kubectl auth can-i and whoami, for the token.
    for (args, answer) in [
        (
            &["-n", "team", "auth", "can-i", "list", "configmaps"][..],
            "yes",
        ),
        (
            &["-n", "team", "auth", "can-i", "delete", "configmaps"],
            "no",
        ),
        (
            &[
                "-n",
                "other",
                "auth",
                "can-i",
                "get",
                "pods",
                "--subresource=log",
            ],
            "yes",
        ),
        (&["-n", "other", "auth", "can-i", "get", "configmaps"], "no"),
    ] {
        assert_eq!(k(t, args).1, answer, "{args:?}");
    }
    assert!(ok(t, &["auth", "whoami"]).contains("system:serviceaccount:team:viewer"));

    // TokenReview and SubjectAccessReview, as a web UI would send them.
    let mut config = kube::Config::new(server.url().parse().expect("url"));
    config.auth_info.token = Some(admin.clone().into());
    config.root_cert = server.ca_der().map(|der| vec![der.to_vec()]);
    let client = Client::try_from(config).expect("client");
    let post = |path: &str, body: serde_json::Value| {
        let client = client.clone();
        let request = http::Request::post(path)
            .header("Content-Type", "application/json")
            .body(body.to_string().into_bytes())
            .expect("request");
        async move { client.request::<serde_json::Value>(request).await }
    };
    let review = post(
        "/apis/authentication.k8s.io/v1/tokenreviews",
        serde_json::json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview", "spec": {"token": token}}),
    )
    .await
    .expect("reviewed");
    assert_eq!(review["status"]["authenticated"], true, "{review}");
    assert_eq!(
        review["status"]["user"]["username"],
        "system:serviceaccount:team:viewer"
    );
    assert_eq!(
        review["status"]["user"]["groups"],
        serde_json::json!([
            "system:serviceaccounts",
            "system:serviceaccounts:team",
            "system:authenticated"
        ])
    );
    let unknown = post(
        "/apis/authentication.k8s.io/v1/tokenreviews",
        serde_json::json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview", "spec": {"token": "nope"}}),
    )
    .await
    .expect("reviewed");
    assert_eq!(
        unknown["status"]["authenticated"],
        serde_json::Value::Null,
        "{unknown}"
    );
    let access = |verb: &str, resource: &str, sub: &str, ns: &str| {
        post(
            "/apis/authorization.k8s.io/v1/subjectaccessreviews",
            serde_json::json!({"apiVersion": "authorization.k8s.io/v1", "kind": "SubjectAccessReview", "spec": {
                "user": "system:serviceaccount:team:viewer",
                "groups": ["system:serviceaccounts", "system:serviceaccounts:team", "system:authenticated"],
                "resourceAttributes": {"namespace": ns, "verb": verb, "resource": resource, "subresource": sub}}}),
        )
    };
    let allowed = access("get", "configmaps", "", "team")
        .await
        .expect("review");
    assert_eq!(allowed["status"]["allowed"], true, "{allowed}");
    assert_eq!(
        allowed["status"]["reason"],
        "RBAC: allowed by RoleBinding \"viewer/team\" of Role \"reader\" to ServiceAccount \"viewer/team\""
    );
    for (verb, resource, sub, ns, expected) in [
        ("create", "configmaps", "", "team", false),
        ("get", "configmaps", "", "other", false),
        ("get", "pods", "log", "other", true),
        ("get", "pods", "", "other", false),
    ] {
        let answer = access(verb, resource, sub, ns).await.expect("review");
        assert_eq!(
            answer["status"]["allowed"], expected,
            "{verb} {resource}/{sub} in {ns}: {answer}"
        );
    }
    let bad = post(
        "/apis/authorization.k8s.io/v1/subjectaccessreviews",
        serde_json::json!({"apiVersion": "authorization.k8s.io/v1", "kind": "SubjectAccessReview", "spec": {"user": "u"}}),
    )
    .await
    .expect_err("refused");
    assert!(
        bad.to_string().contains(
            "exactly one of nonResourceAttributes or resourceAttributes must be specified"
        ),
        "{bad}"
    );

    // The token dies with its ServiceAccount.
    ok(None, &["-n", "team", "delete", "serviceaccount", "viewer"]);
    let (after, _, err) = k(t, &["-n", "team", "get", "configmaps"]);
    assert!(!after && err.contains("Unauthorized"), "{err}");
    server.shutdown().await;
}
