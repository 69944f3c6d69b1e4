//! Running a container's command as a local process: found on `PATH` as `execvp` would,
//! in its own process group (so whatever it starts is stopped with it), with stdout and
//! stderr on one pipe read line by line into its log.

use std::os::fd::OwnedFd;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::Arc;

use tokio::io::AsyncReadExt;
use tokio::task::JoinHandle;

use crate::logs::LogBuffer;

/// Longest line kept whole; longer output is split, as the real runtime splits at 16 KiB.
const MAX_LINE: usize = 16 * 1024;

/// Sends `signal` to the process group `pgid` (nothing for an invalid one).
pub fn signal_group(pgid: i32, signal: i32) {
    if pgid <= 0 {
        return;
    }
    // SAFETY: kill(2) has no memory-safety preconditions; a negative pid names the process
    // group this kubelet created with process_group(0).
    unsafe {
        libc::kill(-pgid, signal);
    }
}

/// The exit code a container reports: its own, 128 + the signal that killed it, or 128
/// when it cannot be known.
pub fn exit_code(status: std::io::Result<ExitStatus>) -> i32 {
    match status {
        Ok(s) => s
            .code()
            .or_else(|| s.signal().map(|sig| 128 + sig))
            .unwrap_or(128),
        Err(_) => 128,
    }
}

/// What the container runtime says when `program` cannot be started.
pub fn start_error(program: &str, err: &std::io::Error) -> String {
    format!(
        "failed to create containerd task: failed to create shim task: OCI runtime create failed: runc create failed: unable to start container process: exec: \"{program}\": {}: unknown",
        if err.kind() == std::io::ErrorKind::NotFound {
            "executable file not found in $PATH".to_string()
        } else {
            err.to_string()
        }
    )
}

/// A started process and the task reading its output.
pub type Spawned = (tokio::process::Child, JoinHandle<()>);

/// The file `execvp` would run for `program`, given the child's `env` and working
/// directory `cwd`, when it is one `posix_spawn` runs the same way (a binary or a `#!`
/// script); `None` leaves the lookup to `execvp`.
///
/// With the environment replaced, the standard library only spawns a bare program name by
/// fork + exec, and a fork copies the page tables of this whole process (the store
/// included) for every container started: naming the program by its path lets it use
/// `posix_spawn`, whose cost does not grow with the server's memory.
fn resolve_program(program: &str, env: &[(String, String)], cwd: &Path) -> Option<PathBuf> {
    use std::io::Read;
    use std::os::unix::fs::PermissionsExt;
    if program.is_empty() || program.contains('/') {
        return None;
    }
    // The last setting wins, as for the child; glibc's default search path without one.
    let search = env
        .iter()
        .rev()
        .find(|(k, _)| k == "PATH")
        .map_or("/bin:/usr/bin", |(_, v)| v.as_str());
    for dir in search.split(':') {
        // An empty entry is the working directory, a relative one is under it.
        let candidate = cwd.join(dir).join(program);
        let Ok(meta) = std::fs::metadata(&candidate) else {
            continue;
        };
        if !meta.is_file() || meta.permissions().mode() & 0o111 == 0 {
            // execvp moves on past what it cannot execute.
            continue;
        }
        // execvp would run this one. A script without `#!` it runs with /bin/sh, which
        // posix_spawn does not: leave those (and unreadable files) to it.
        let mut magic = [0u8; 4];
        let read = std::fs::File::open(&candidate).and_then(|mut f| f.read_exact(&mut magic));
        let spawnable = read.is_ok() && (magic.starts_with(b"#!") || magic == *b"\x7fELF");
        return spawnable.then_some(candidate);
    }
    None
}

/// Starts a process in its own process group with stdout and stderr on one pipe read into
/// `log`.
pub fn spawn(
    argv: &[String],
    env: &[(String, String)],
    cwd: &Path,
    log: Arc<LogBuffer>,
) -> std::io::Result<Spawned> {
    let (reader, writer) = std::io::pipe()?;
    let writer_err = writer.try_clone()?;
    let mut cmd = match resolve_program(&argv[0], env, cwd) {
        Some(path) => {
            let mut cmd = tokio::process::Command::new(path);
            // The process sees the name it was given, as with execvp.
            cmd.arg0(&argv[0]);
            cmd
        }
        None => tokio::process::Command::new(&argv[0]),
    };
    cmd.args(&argv[1..])
        .env_clear()
        .envs(env.iter().map(|(k, v)| (k, v)))
        .current_dir(cwd)
        .stdin(Stdio::null())
        .stdout(writer)
        .stderr(writer_err)
        .process_group(0)
        .kill_on_drop(true);
    let child = cmd.spawn();
    // Our copies of the pipe's write end must close, or the reader never sees EOF.
    drop(cmd);
    let child = child?;
    let mut pipe = tokio::net::unix::pipe::Receiver::from_owned_fd(OwnedFd::from(reader))?;
    let task = tokio::spawn(async move {
        let mut buf = vec![0u8; 8192];
        let mut partial: Vec<u8> = Vec::new();
        loop {
            match pipe.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    partial.extend_from_slice(&buf[..n]);
                    while let Some(pos) = partial.iter().position(|b| *b == b'\n') {
                        let line: Vec<u8> = partial.drain(..=pos).collect();
                        log.push(line);
                    }
                    if partial.len() > MAX_LINE {
                        log.push(std::mem::take(&mut partial));
                    }
                }
            }
        }
        if !partial.is_empty() {
            log.push(partial);
        }
    });
    Ok((child, task))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn programs_resolve_as_execvp_finds_them() -> std::io::Result<()> {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("charon-resolve-{}", std::process::id()));
        let bin = dir.join("bin");
        std::fs::create_dir_all(bin.join("tool"))?;
        let script = |name: &str, body: &str| -> std::io::Result<PathBuf> {
            let path = bin.join(name);
            std::fs::write(&path, body)?;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))?;
            Ok(path)
        };
        let shebang = script("hello", "#!/bin/sh\necho hi\n")?;
        script("bare", "echo hi\n")?;
        std::fs::write(bin.join("plain"), "#!/bin/sh\n")?;
        let env = |path: &str| vec![("PATH".to_string(), path.to_string())];
        let search = format!("/nonexistent:{}", bin.display());
        // Skips what does not exist, directories and files without an execute bit.
        assert_eq!(
            resolve_program("hello", &env(&search), &dir),
            Some(shebang.clone())
        );
        assert_eq!(resolve_program("tool", &env(&search), &dir), None);
        assert_eq!(resolve_program("plain", &env(&search), &dir), None);
        // Relative entries are under the working directory.
        assert_eq!(
            resolve_program("hello", &env("bin"), &dir),
            Some(dir.join("bin").join("hello"))
        );
        // Scripts without `#!` and paths are left to execvp.
        assert_eq!(resolve_program("bare", &env(&search), &dir), None);
        assert_eq!(resolve_program("bin/hello", &env(&search), &dir), None);
        // The last PATH wins.
        let both = vec![
            ("PATH".to_string(), "/nonexistent".to_string()),
            ("PATH".to_string(), bin.display().to_string()),
        ];
        assert_eq!(resolve_program("hello", &both, &dir), Some(shebang));
        let _ = std::fs::remove_dir_all(&dir);
        Ok(())
    }

    #[test]
    fn exit_codes_follow_the_runtime() {
        assert_eq!(exit_code(Ok(ExitStatus::from_raw(3 << 8))), 3);
        assert_eq!(exit_code(Ok(ExitStatus::from_raw(libc::SIGKILL))), 137);
        assert_eq!(exit_code(Err(std::io::Error::other("lost"))), 128);
        let missing = std::io::Error::from(std::io::ErrorKind::NotFound);
        assert!(
            start_error("nope", &missing)
                .ends_with("exec: \"nope\": executable file not found in $PATH: unknown")
        );
    }
}
