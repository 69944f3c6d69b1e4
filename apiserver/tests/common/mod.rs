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
