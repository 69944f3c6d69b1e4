//! The `charon` binary as a user runs it against the test cluster.

use std::path::PathBuf;
use std::process::Command;

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
}
