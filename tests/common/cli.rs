//! The `charon` binary as a user runs it against the test cluster.

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use super::Cluster;

/// Runs `charon` with a kubeconfig for the cluster (and any extra environment).
pub struct Cli {
    pub kubeconfig: PathBuf,
    env: Vec<(String, String)>,
    _dir: tempfile::TempDir,
}

impl Cli {
    pub fn new(cluster: &Cluster) -> Cli {
        let dir = tempfile::tempdir().expect("temp dir");
        let kubeconfig = dir.path().join("kubeconfig");
        let server = cluster.server.as_ref().expect("server");
        charon_apiserver::write_kubeconfig(&kubeconfig, &server.url()).expect("kubeconfig");
        Cli {
            kubeconfig,
            env: Vec::new(),
            _dir: dir,
        }
    }

    /// The same, with `KEY=VALUE` in the environment of every command.
    pub fn with_env(mut self, env: &[(String, String)]) -> Cli {
        self.env.extend(env.iter().cloned());
        self
    }

    /// Runs `charon ARGS` and returns (success, stdout, stderr).
    pub async fn run(&self, args: &[&str]) -> (bool, String, String) {
        let kubeconfig = self.kubeconfig.clone();
        let env = self.env.clone();
        let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        tokio::task::spawn_blocking(move || {
            let out = Command::new(env!("CARGO_BIN_EXE_charon"))
                .args(&args)
                .arg("--kubeconfig")
                .arg(&kubeconfig)
                .env("NO_COLOR", "1")
                .env_remove("CHARON_LOG_STORE")
                .envs(env)
                .output()
                .expect("charon runs");
            (
                out.status.success(),
                String::from_utf8_lossy(&out.stdout).into_owned(),
                String::from_utf8_lossy(&out.stderr).into_owned(),
            )
        })
        .await
        .expect("join")
    }

    /// Runs the real `kubectl ARGS` against the cluster with `stdin` as its input, and
    /// returns (success, stdout, stderr).
    pub async fn kubectl(&self, args: &[&str], stdin: &str) -> (bool, String, String) {
        let kubeconfig = self.kubeconfig.clone();
        let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        let stdin = stdin.to_string();
        tokio::task::spawn_blocking(move || {
            let mut child = Command::new("kubectl")
                .arg("--kubeconfig")
                .arg(&kubeconfig)
                .args(&args)
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("kubectl runs");
            child
                .stdin
                .take()
                .expect("piped stdin")
                .write_all(stdin.as_bytes())
                .expect("stdin written");
            let out = child.wait_with_output().expect("kubectl exits");
            (
                out.status.success(),
                String::from_utf8_lossy(&out.stdout).into_owned(),
                String::from_utf8_lossy(&out.stderr).into_owned(),
            )
        })
        .await
        .expect("join")
    }
}

/// Runs `charon ARGS` as a command that needs no cluster, and returns (success, stdout,
/// stderr).
pub fn charon(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_charon"))
        .args(args)
        .env("NO_COLOR", "1")
        .output()
        .expect("charon runs");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}
