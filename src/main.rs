//! The `charon` binary: every subcommand lives in the library so tests can drive it.

fn main() -> std::process::ExitCode {
    charon::cli::main()
}
