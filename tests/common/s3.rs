//! A real S3-protocol server for the log store tests: `s3s-fs`, a separate process on
//! loopback that checks request signatures, started and stopped by the test.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// The access key the server accepts.
pub const ACCESS_KEY: &str = "charon-test";
/// Its secret.
pub const SECRET_KEY: &str = "charon-test-secret";
/// The bucket the server starts with.
pub const BUCKET: &str = "charon-logs";

/// An `s3s-fs` process serving `root`.
pub struct S3Server {
    pub port: u16,
    root: PathBuf,
    child: Option<Child>,
}

/// The `s3s-fs` binary: `$S3S_FS`, else on the PATH (scripts/test installs it).
fn binary() -> PathBuf {
    if let Some(path) = std::env::var_os("S3S_FS") {
        return PathBuf::from(path);
    }
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|p| p.join("s3s-fs"))
            .find(|p| p.is_file())
    });
    found.unwrap_or_else(|| {
        panic!(
            "s3s-fs not found: install it with `cargo install --locked --features binary s3s-fs@0.14.1` (scripts/test does), or set S3S_FS"
        )
    })
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

impl S3Server {
    /// Starts the server with [`BUCKET`] in a fresh directory under `dir`.
    pub async fn start(dir: &Path) -> S3Server {
        let root = dir.join("s3");
        std::fs::create_dir_all(root.join(BUCKET)).expect("bucket directory");
        let mut server = S3Server {
            port: free_port(),
            root,
            child: None,
        };
        server.resume().await;
        server
    }

    /// Starts it again on the same port and data (after [`S3Server::stop`]).
    pub async fn resume(&mut self) {
        assert!(self.child.is_none(), "already running");
        let child = Command::new(binary())
            .args(["--host", "127.0.0.1", "--port", &self.port.to_string()])
            .args(["--access-key", ACCESS_KEY, "--secret-key", SECRET_KEY])
            .arg(&self.root)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("s3s-fs starts");
        self.child = Some(child);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        while tokio::net::TcpStream::connect(("127.0.0.1", self.port))
            .await
            .is_err()
        {
            assert!(
                tokio::time::Instant::now() < deadline,
                "s3s-fs did not listen"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Stops the process (its data stays).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The `AWS_*` settings that reach it with the right credentials.
    pub fn settings(&self) -> Vec<(String, String)> {
        vec![
            ("AWS_ENDPOINT_URL".into(), self.endpoint()),
            ("AWS_ACCESS_KEY_ID".into(), ACCESS_KEY.into()),
            ("AWS_SECRET_ACCESS_KEY".into(), SECRET_KEY.into()),
            ("AWS_REGION".into(), "us-east-1".into()),
        ]
    }

    /// A log store on it at `url`, with `settings` (as from [`S3Server::settings`]).
    pub fn store(url: &str, settings: &[(String, String)]) -> charon::logstore::LogStore {
        let pairs: Vec<(&str, &str)> = settings
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        charon::logstore::LogStore::open_with(url, &pairs).expect("log store opens")
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        self.stop();
    }
}
