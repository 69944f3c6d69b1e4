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
    #[command(flatten)]
    User(crate::user::UserCommand),
}

/// Parses the process arguments, runs the command and maps failures to a one-line error.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    telemetry::init(cli.log_format, &cli.log_level);
    match run(cli.command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
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
        Command::Dev(args) => {
            drop(stdout);
            tokio::runtime::Runtime::new()?.block_on(crate::dev::run(args))?;
        }
        Command::User(command) => {
            tokio::runtime::Runtime::new()?.block_on(crate::user::run(command, &mut stdout))?;
        }
        Command::Operator(args) => {
            drop(stdout);
            tokio::runtime::Runtime::new()?.block_on(crate::operator::main(args))?;
        }
    }
    Ok(())
}
