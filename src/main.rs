//! The `charon` binary: every subcommand lives in the library so tests can drive it.

// mimalloc returns freed memory to the system and fragments less than the system allocator
// under many threads: the operator's resident memory stays close to what its caches hold.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    charon::cli::main()
}
