//! Helpers shared by the embedded server's tests.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::time::Duration;

/// One GET over a fresh connection, with an `Authorization` header when given: the raw
/// response, read until the server closes it or `wait` passes.
pub async fn raw_get(
    address: SocketAddr,
    path: &str,
    auth: Option<&str>,
    wait: Duration,
) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(address)
        .await
        .expect("connect");
    let auth = auth
        .map(|a| format!("Authorization: {a}\r\n"))
        .unwrap_or_default();
    let request = format!("GET {path} HTTP/1.1\r\nHost: test\r\n{auth}Connection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.expect("write");
    let mut out = Vec::new();
    let _ = tokio::time::timeout(wait, stream.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

/// The embedded server on an ephemeral port, and a kube-rs client of it.
pub async fn client() -> (charon_apiserver::RunningServer, kube::Client) {
    let server = charon_apiserver::start("127.0.0.1:0".parse().expect("address"))
        .await
        .expect("server starts");
    let config = kube::Config::new(server.url().parse().expect("url"));
    let client = kube::Client::try_from(config).expect("client");
    (server, client)
}
