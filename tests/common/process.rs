//! `charon operator` as a separate process, the way a Deployment runs it, against the embedded
//! cluster of the test through a kubeconfig.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::{Cluster, NS};

/// One `charon operator` process with its log.
pub struct Operator {
    pub child: Child,
    log: Arc<Mutex<String>>,
}

impl Operator {
    pub fn start(kubeconfig: &Path, identity: &str, extra: &[&str]) -> Operator {
        let mut child = Command::new(env!("CARGO_BIN_EXE_charon"))
            .args(["--log-level", "info", "--log-format", "text", "operator"])
            .arg("--kubeconfig")
            .arg(kubeconfig)
            .args(["--identity", identity, "--metrics-address", "127.0.0.1:0"])
            .args(["--lease-namespace", NS])
            .args(extra)
            .env_remove("RUST_LOG")
            // A finer log for a test being investigated: `CHARON_TEST_OPERATOR_LOG=debug`.
            .envs(
                std::env::var("CHARON_TEST_OPERATOR_LOG")
                    .ok()
                    .map(|filter| ("RUST_LOG", filter)),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("charon operator starts");
        let log = Arc::new(Mutex::new(String::new()));
        let stderr = child.stderr.take().expect("piped stderr");
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let mut log = sink.lock().unwrap_or_else(|e| e.into_inner());
                log.push_str(&line);
                log.push('\n');
            }
        });
        Operator { child, log }
    }

    pub fn log(&self) -> String {
        self.log.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Waits until the log has a line containing `text`.
    pub async fn logged(&self, text: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while !self.log().contains(text) {
            assert!(
                Instant::now() < deadline,
                "no {text:?} in the log:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn terminate(&self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("kill runs");
        assert!(status.success(), "kill -TERM failed");
    }

    /// Waits for the process to exit; None if it is still running after `timeout`.
    pub async fn exited(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Operator {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A kubeconfig for the cluster, in `dir`.
pub fn kubeconfig(cluster: &Cluster, dir: &tempfile::TempDir) -> PathBuf {
    let path = dir.path().join("kubeconfig");
    let server = cluster.server.as_ref().expect("server runs");
    charon_apiserver::write_kubeconfig(&path, &server.url()).expect("kubeconfig written");
    path
}
