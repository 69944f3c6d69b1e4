//! Command-line entry point: parses arguments and dispatches to the subcommands.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::preview::PreviewArgs;
use crate::telemetry::{self, LogFormat};

/// Charon: a Kubernetes-native batch scheduler.
#[derive(Debug, Parser)]
#[command(name = "charon", version, about, propagate_version = true)]
pub struct Cli {
    /// Log output format.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text, env = "CHARON_LOG_FORMAT")]
    pub log_format: LogFormat,
    /// Log level filter (tracing `EnvFilter` syntax); `RUST_LOG` overrides it.
    #[arg(long, global = true, default_value = "info", env = "CHARON_LOG_LEVEL")]
    pub log_level: String,
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands of `charon`.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Print the CustomResourceDefinitions as YAML (or write one file per kind with --out-dir).
    Crds {
        /// Write `<plural>.charon.dev.yaml` files into this directory instead of printing.
        #[arg(long, value_name = "DIR")]
        out_dir: Option<PathBuf>,
    },
    /// Show the next partitions of a schedule: when each is triggered and its parameter.
    Preview(PreviewArgs),
    /// Run a local Kubernetes-compatible API server with Charon's CRDs (no cluster needed).
    Dev(crate::dev::DevArgs),
    /// Run the controller against a cluster (kubeconfig or in-cluster account).
    Operator(crate::operator::OperatorArgs),
    /// Serve the web UI and its JSON API on loopback, acting with your kubeconfig.
    Ui(crate::ui::UiArgs),
    /// Print Workflow manifests converted from another scheduler's files (`import styx DIR`).
    Import(crate::import::ImportArgs),
    #[command(flatten)]
    User(crate::user::UserCommand),
}

/// Parses the process arguments, runs the command and maps failures to a one-line error.
pub fn main() -> ExitCode {
    let cli = Cli::parse_from(user_flags_after_command(std::env::args_os().collect()));
    // `charon dev` prints its own compact log of state changes; the operator's own log
    // lines would drown it, so they show only warnings unless a level is asked for.
    // The user commands report a failed request in their one-line error; kube's own error
    // log of it would say the same thing again, less clearly.
    let level = match (&cli.command, cli.log_level.as_str()) {
        (Command::Dev(_), "info") => "warn",
        (Command::User(_), "info") => "warn,kube_client=off",
        (_, level) => level,
    };
    telemetry::init(cli.log_format, level);
    match run(cli.command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

/// The user commands' connection flags, which kubectl users write before the command
/// (`charon -n NS backfill list`, and so `kubectl charon -n NS …`).
const USER_COMMANDS: &[&str] = &[
    "trigger", "backfill", "halt", "retry", "logs", "status", "suspend", "resume", "deps",
];
const USER_FLAGS: &[&str] = &[
    "-n",
    "--namespace",
    "--kubeconfig",
    "--context",
    "-o",
    "--output",
];

/// Moves connection flags given before a user command to just after it, where the command
/// defines them; anything else is left alone.
pub fn user_flags_after_command(args: Vec<std::ffi::OsString>) -> Vec<std::ffi::OsString> {
    let text: Vec<String> = args
        .iter()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    let mut moved = Vec::new();
    let mut rest = Vec::new();
    let mut i = 1;
    while i < text.len() {
        let arg = &text[i];
        if USER_COMMANDS.contains(&arg.as_str()) {
            let mut out = vec![args[0].clone()];
            out.extend(rest);
            out.push(args[i].clone());
            out.extend(moved);
            out.extend(args[i + 1..].iter().cloned());
            return out;
        }
        let flag = arg.split('=').next().unwrap_or_default();
        if USER_FLAGS.contains(&flag) {
            moved.push(args[i].clone());
            if !arg.contains('=') && i + 1 < text.len() {
                moved.push(args[i + 1].clone());
                i += 1;
            }
        } else if arg.starts_with('-') {
            rest.push(args[i].clone());
            // Global flags with a value (`--log-level info`).
            if !arg.contains('=')
                && matches!(arg.as_str(), "--log-level" | "--log-format")
                && i + 1 < text.len()
            {
                rest.push(args[i + 1].clone());
                i += 1;
            }
        } else {
            // Another command: nothing to move.
            return args;
        }
        i += 1;
    }
    args
}

/// Runs one subcommand, writing its output to stdout.
pub fn run(command: Command) -> anyhow::Result<()> {
    let mut stdout = std::io::stdout().lock();
    match command {
        Command::Crds { out_dir: None } => {
            stdout.write_all(crate::crd::all_yaml()?.as_bytes())?;
        }
        Command::Crds { out_dir: Some(dir) } => {
            for (file, yaml) in crate::crd::files()? {
                let path = dir.join(file);
                std::fs::write(&path, yaml)
                    .map_err(|e| anyhow::anyhow!("writing {}: {e}", path.display()))?;
                writeln!(stdout, "wrote {}", path.display())?;
            }
        }
        Command::Preview(args) => {
            let out = crate::preview::run(&args, chrono::Utc::now())?;
            stdout.write_all(out.as_bytes())?;
        }
        Command::Import(args) => {
            crate::import::run(&args, &mut stdout, &mut std::io::stderr().lock())?;
        }
        Command::Ui(args) => {
            drop(stdout);
            tokio::runtime::Runtime::new()?.block_on(crate::ui::run(args))?;
        }
        Command::Dev(args) => {
            drop(stdout);
            tokio::runtime::Runtime::new()?.block_on(crate::dev::run(args))?;
        }
        Command::User(command) => {
            tokio::runtime::Runtime::new()?.block_on(crate::user::run(command, &mut stdout))?;
        }
        Command::Operator(args) => {
            drop(stdout);
            let runtime = tokio::runtime::Runtime::new()?;
            let result = runtime.block_on(crate::operator::main(args));
            // `main` returns within its shutdown bound; whatever it left behind (a request
            // to a server that does not answer, a name lookup in a blocking thread) must not
            // hold the process past it.
            runtime.shutdown_timeout(std::time::Duration::from_millis(250));
            result?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn moved(args: &[&str]) -> Vec<String> {
        user_flags_after_command(args.iter().map(Into::into).collect())
            .into_iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect()
    }

    #[test]
    fn connection_flags_before_a_user_command_move_after_it() {
        assert_eq!(
            moved(&["charon", "-n", "ns", "backfill", "list"]),
            ["charon", "backfill", "-n", "ns", "list"]
        );
        assert_eq!(
            moved(&[
                "charon",
                "--log-level",
                "debug",
                "--kubeconfig=k",
                "trigger",
                "w",
                "p"
            ]),
            [
                "charon",
                "--log-level",
                "debug",
                "trigger",
                "--kubeconfig=k",
                "w",
                "p"
            ]
        );
        // Other commands keep their own flags.
        assert_eq!(
            moved(&["charon", "preview", "-o", "json"]),
            ["charon", "preview", "-o", "json"]
        );
        assert_eq!(
            moved(&["charon", "dev", "--kubeconfig", "k"]),
            ["charon", "dev", "--kubeconfig", "k"]
        );
    }
}
