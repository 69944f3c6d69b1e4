//! `charon-launcher`: the small program Charon runs inside user images.
//!
//! A pipeline runs as one pod: an init container copies this binary into a shared `emptyDir`
//! (`install`), then every step runs its real command under `run`, which feeds the step the
//! previous step's output and saves its own for the next one. Job arrays wrap the user's
//! command in `run` too, which turns the Indexed Job's completion index into `CHARON_TASK_ID`.
//!
//! User images may have no shell and no libc, so this file uses only std and the `libc` crate
//! (signals and reaping) and nothing of the `charon` library: it is meant to be linked
//! statically (`-C target-feature=+crt-static`).
//!
//! Exit codes follow the shell's, so that a step reads the same wrapped or not: the child's own
//! code, 128+N when it dies of signal N, 127 when the command is not found, 126 when it cannot
//! be executed; the launcher's own failures exit 1 and usage errors 2.

use std::ffi::{OsStr, OsString};
use std::fs::{self, File, OpenOptions};
use std::io::{self, ErrorKind, Read, Write};
use std::mem::MaybeUninit;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{self, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::thread::{self, JoinHandle};
use std::time::{SystemTime, UNIX_EPOCH};

const USAGE: &str = "\
usage: charon-launcher install DEST
       charon-launcher run [--input FILE] [--output CHANNEL --save FILE] -- COMMAND [ARGS...]
       charon-launcher --help

install DEST
    Copy this executable to DEST (parent directories created, atomic rename, mode 0755).

run [--input FILE] [--output CHANNEL --save FILE] -- COMMAND [ARGS...]
    Run COMMAND (looked up in PATH). Without --input and --output the launcher replaces
    itself with COMMAND. --input FILE is streamed to COMMAND's stdin (otherwise /dev/null).
    --output CHANNEL is stdout, stderr or an absolute path COMMAND writes; what COMMAND
    sends there is saved to FILE if COMMAND succeeds (streams are still shown on the
    launcher's own). SIGTERM, SIGINT and SIGHUP are forwarded to COMMAND; the exit code is
    COMMAND's (128+N if killed by signal N, 127 if not found, 126 if not executable).
    With CHARON_TASK_FIRST set (an array task), COMMAND gets CHARON_TASK_ID =
    CHARON_TASK_FIRST + position * CHARON_TASK_STEP (default 1), where the position is
    JOB_COMPLETION_INDEX, or the JOB_COMPLETION_INDEX-th entry of CHARON_TASK_INDEXES
    (\"1,3-5,7\") when that is set.
";

/// Signals the launcher passes on: Kubernetes sends SIGTERM only to the container's PID 1,
/// which is the launcher, not the step's command.
const FORWARDED: [libc::c_int; 3] = [libc::SIGTERM, libc::SIGINT, libc::SIGHUP];

fn main() {
    let args: Vec<OsString> = std::env::args_os().skip(1).collect();
    let code = match launch(&args) {
        Ok(code) => code,
        Err(failure) => {
            failure.report();
            failure.code
        }
    };
    process::exit(code);
}

/// Why the launcher stops with its own exit code rather than the child's.
struct Failure {
    code: i32,
    message: String,
    /// Whether the usage text follows the message.
    usage: bool,
}

impl Failure {
    fn new(code: i32, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            usage: false,
        }
    }

    fn usage(message: impl Into<String>) -> Self {
        Self {
            code: 2,
            message: message.into(),
            usage: true,
        }
    }

    /// Writes the message to stderr; a failing stderr must not turn into a panic.
    fn report(&self) {
        let mut stderr = io::stderr().lock();
        let _ = writeln!(stderr, "charon-launcher: {}", self.message);
        if self.usage {
            let _ = stderr.write_all(USAGE.as_bytes());
        }
    }
}

fn print_usage() -> i32 {
    let mut stdout = io::stdout().lock();
    let _ = stdout
        .write_all(USAGE.as_bytes())
        .and_then(|()| stdout.flush());
    0
}

/// Runs the subcommand and returns the exit code.
fn launch(args: &[OsString]) -> Result<i32, Failure> {
    let Some((subcommand, rest)) = args.split_first() else {
        return Err(Failure::usage("missing subcommand"));
    };
    match subcommand.to_str() {
        Some("--help" | "-h") if rest.is_empty() => Ok(print_usage()),
        Some("install") => match rest {
            [flag] if flag == "--help" || flag == "-h" => Ok(print_usage()),
            [dest] => install(Path::new(dest)).map(|()| 0),
            _ => Err(Failure::usage("install takes exactly one DEST")),
        },
        Some("run") => match parse_run(rest)? {
            None => Ok(print_usage()),
            Some(spec) => {
                let task_id = task_id()?;
                if spec.input.is_none() && spec.output.is_none() {
                    Err(exec(&spec, task_id))
                } else {
                    supervise(&spec, task_id)
                }
            }
        },
        _ => Err(Failure::usage(format!(
            "unknown subcommand {:?}",
            subcommand.to_string_lossy()
        ))),
    }
}

// ----------------------------------------------------------------------------------------
// install

/// Copies this executable to `dest` through a temporary file beside it and a rename, so that
/// a step never runs a half-written launcher, even when an install is restarted or races.
fn install(dest: &Path) -> Result<(), Failure> {
    let failed = |reason: &dyn std::fmt::Display| {
        Failure::new(1, format!("install {}: {reason}", dest.display()))
    };
    let Some(name) = dest.file_name() else {
        return Err(failed(&"not a file name"));
    };
    let dir = match dest.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    };
    let me = std::env::current_exe().map_err(|e| failed(&e))?;
    fs::create_dir_all(dir).map_err(|e| failed(&e))?;
    // Unique per attempt: PIDs repeat across containers sharing the directory (each is PID 1).
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.subsec_nanos());
    let mut temp_name = OsString::from(".");
    temp_name.push(name);
    temp_name.push(format!(".{}.{nanos}.tmp", process::id()));
    let temp = dir.join(temp_name);
    let copied = copy_executable(&me, &temp).and_then(|()| fs::rename(&temp, dest));
    if let Err(e) = copied {
        let _ = fs::remove_file(&temp);
        return Err(failed(&e));
    }
    Ok(())
}

fn copy_executable(from: &Path, to: &Path) -> io::Result<()> {
    let mut source = File::open(from)?;
    let mut target = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o755)
        .open(to)?;
    io::copy(&mut source, &mut target)?;
    // The umask may have narrowed the mode given at creation.
    target.set_permissions(fs::Permissions::from_mode(0o755))
}

// ----------------------------------------------------------------------------------------
// run: command line

/// A parsed `run` command line.
struct RunSpec {
    input: Option<PathBuf>,
    output: Option<(Channel, PathBuf)>,
    command: OsString,
    args: Vec<OsString>,
}

/// What of the step's output is saved.
enum Channel {
    Stdout,
    Stderr,
    /// A file the command writes, copied once it succeeds.
    File(PathBuf),
}

/// Parses the arguments after `run`; `None` asks for the usage text.
fn parse_run(args: &[OsString]) -> Result<Option<RunSpec>, Failure> {
    let mut input = None;
    let mut output = None;
    let mut save = None;
    let mut rest = args.iter();
    loop {
        let Some(arg) = rest.next() else {
            return Err(Failure::usage("missing -- before COMMAND"));
        };
        let flag = match arg.to_str() {
            Some("--") => break,
            Some("--help" | "-h") => return Ok(None),
            Some(flag @ ("--input" | "--output" | "--save")) => flag,
            _ => {
                return Err(Failure::usage(format!(
                    "unknown option {:?}",
                    arg.to_string_lossy()
                )));
            }
        };
        let value = match rest.next() {
            Some(value) if !value.is_empty() => value.clone(),
            _ => return Err(Failure::usage(format!("{flag} needs a value"))),
        };
        let slot = match flag {
            "--input" => &mut input,
            "--output" => &mut output,
            _ => &mut save,
        };
        if slot.replace(value).is_some() {
            return Err(Failure::usage(format!("{flag} given twice")));
        }
    }
    let Some(command) = rest.next().cloned() else {
        return Err(Failure::usage("missing COMMAND after --"));
    };
    let output = match (output, save) {
        (None, None) => None,
        (Some(channel), Some(save)) => Some((parse_channel(channel)?, PathBuf::from(save))),
        (Some(_), None) => return Err(Failure::usage("--output needs --save FILE")),
        (None, Some(_)) => return Err(Failure::usage("--save needs --output CHANNEL")),
    };
    Ok(Some(RunSpec {
        input: input.map(PathBuf::from),
        output,
        command,
        args: rest.cloned().collect(),
    }))
}

fn parse_channel(value: OsString) -> Result<Channel, Failure> {
    match value.to_str() {
        Some("stdout") => Ok(Channel::Stdout),
        Some("stderr") => Ok(Channel::Stderr),
        _ if Path::new(&value).is_absolute() => Ok(Channel::File(PathBuf::from(value))),
        _ => Err(Failure::usage(format!(
            "--output {:?}: expected stdout, stderr or an absolute path",
            value.to_string_lossy()
        ))),
    }
}

// ----------------------------------------------------------------------------------------
// run: array task id

/// The `CHARON_TASK_ID` of an array task, `None` when `CHARON_TASK_FIRST` is unset (not an
/// array task: the environment passes unchanged).
///
/// An array `{start, end, step}` runs as an Indexed Job whose completion index k picks the
/// k-th position; a Job re-created for some tasks only (a retry of the failed ones) lists the
/// original positions it runs in `CHARON_TASK_INDEXES`, so that the ids stay those of the
/// first run.
fn task_id() -> Result<Option<i64>, Failure> {
    let Some(first) = std::env::var_os("CHARON_TASK_FIRST") else {
        return Ok(None);
    };
    let first = parse_signed("CHARON_TASK_FIRST", &first)?;
    let step = match std::env::var_os("CHARON_TASK_STEP") {
        Some(step) => parse_signed("CHARON_TASK_STEP", &step)?,
        None => 1,
    };
    let Some(index) = std::env::var_os("JOB_COMPLETION_INDEX") else {
        return Err(Failure::new(
            1,
            "JOB_COMPLETION_INDEX is not set (an array task runs in an Indexed Job)",
        ));
    };
    let index = index
        .to_str()
        .and_then(|text| parse_index(text).ok())
        .ok_or_else(|| {
            Failure::new(
                1,
                format!("JOB_COMPLETION_INDEX={index:?} is not a non-negative integer"),
            )
        })?;
    let position = match std::env::var_os("CHARON_TASK_INDEXES") {
        None => index,
        Some(list) => {
            let text = list.to_str().ok_or_else(|| {
                Failure::new(
                    1,
                    format!("CHARON_TASK_INDEXES={list:?} is not valid UTF-8"),
                )
            })?;
            match nth_index(text, index) {
                Ok(Some(position)) => position,
                Ok(None) => {
                    return Err(Failure::new(
                        1,
                        format!(
                            "JOB_COMPLETION_INDEX={index} is beyond the {} entries of CHARON_TASK_INDEXES={text:?}",
                            count_indexes(text)
                        ),
                    ));
                }
                Err(reason) => {
                    return Err(Failure::new(
                        1,
                        format!("CHARON_TASK_INDEXES={text:?}: {reason}"),
                    ));
                }
            }
        }
    };
    i64::try_from(position)
        .ok()
        .and_then(|position| position.checked_mul(step))
        .and_then(|offset| first.checked_add(offset))
        .map(Some)
        .ok_or_else(|| {
            Failure::new(
                1,
                format!(
                    "CHARON_TASK_ID overflows: CHARON_TASK_FIRST={first} + {position} * CHARON_TASK_STEP={step}"
                ),
            )
        })
}

fn parse_signed(name: &str, value: &OsStr) -> Result<i64, Failure> {
    value
        .to_str()
        .and_then(|text| text.parse().ok())
        .ok_or_else(|| Failure::new(1, format!("{name}={value:?} is not an integer")))
}

/// A non-negative decimal index, digits only (as Kubernetes writes them).
fn parse_index(text: &str) -> Result<u64, String> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("{text:?} is not an index"));
    }
    text.parse().map_err(|_| format!("{text} is too large"))
}

/// The `k`-th (0-based) index of a list in the Job `completedIndexes` format (`"1,3-5,7"`,
/// ascending), `None` past its end. Ranges are counted, not expanded: an array may be huge.
/// The whole list is checked even when the index is found early, so that a malformed list
/// fails every task alike.
fn nth_index(list: &str, k: u64) -> Result<Option<u64>, String> {
    let mut remaining = k;
    let mut found = None;
    let mut previous: Option<u64> = None;
    for part in list.split(',') {
        let (low, high) = match part.split_once('-') {
            Some((low, high)) => (parse_index(low)?, parse_index(high)?),
            None => {
                let index = parse_index(part)?;
                (index, index)
            }
        };
        if low > high {
            return Err(format!("range {part} is reversed"));
        }
        if previous.is_some_and(|previous| low <= previous) {
            return Err(format!("{part} is not above the entry before it"));
        }
        previous = Some(high);
        if found.is_none() {
            // `remaining > high - low` below, so `high - low + 1` cannot overflow.
            if remaining <= high - low {
                found = Some(low + remaining);
            } else {
                remaining -= high - low + 1;
            }
        }
    }
    Ok(found)
}

/// How many indexes a list already validated by [`nth_index`] holds, for the error message.
fn count_indexes(list: &str) -> u128 {
    list.split(',')
        .map(|part| match part.split_once('-') {
            Some((low, high)) => match (parse_index(low), parse_index(high)) {
                (Ok(low), Ok(high)) => u128::from(high) - u128::from(low) + 1,
                _ => 0,
            },
            None => 1,
        })
        .sum()
}

// ----------------------------------------------------------------------------------------
// run: execution

fn command(spec: &RunSpec, task_id: Option<i64>) -> Command {
    let mut command = Command::new(&spec.command);
    command.args(&spec.args);
    if let Some(id) = task_id {
        command.env("CHARON_TASK_ID", id.to_string());
    }
    command
}

/// Replaces the launcher with the command, which then gets signals directly and is the
/// container's PID 1. Returns only if the exec failed.
fn exec(spec: &RunSpec, task_id: Option<i64>) -> Failure {
    let error = command(spec, task_id).exec();
    spawn_failure(&spec.command, &error)
}

/// The shell's answer to a command that cannot be started: 127 if it does not exist, 126
/// otherwise (not executable, not a valid binary...).
fn spawn_failure(command: &OsStr, error: &io::Error) -> Failure {
    let name = command.to_string_lossy();
    if error.kind() == ErrorKind::NotFound {
        Failure::new(127, format!("{name}: not found"))
    } else {
        Failure::new(126, format!("{name}: {error}"))
    }
}

/// Runs the command as a child: feeds its input, tees and saves its output, forwards signals,
/// and returns its exit code once the output is safely in place.
fn supervise(spec: &RunSpec, task_id: Option<i64>) -> Result<i32, Failure> {
    let input = match &spec.input {
        Some(path) => Some(
            File::open(path)
                .map_err(|e| Failure::new(1, format!("input {}: {e}", path.display())))?,
        ),
        None => None,
    };
    let save = match &spec.output {
        Some((_, file)) => Some(Save::prepare(file)?),
        None => None,
    };
    let channel = spec.output.as_ref().map(|(channel, _)| channel);
    let partial = match (&channel, &save) {
        (Some(Channel::Stdout | Channel::Stderr), Some(save)) => Some(save.create()?),
        _ => None,
    };
    // Blocked before the child exists, so that a SIGTERM arriving at any point is forwarded.
    let signals =
        Signals::block().map_err(|e| Failure::new(1, format!("cannot block signals: {e}")))?;

    let mut command = command(spec, task_id);
    signals.restore_in_child(&mut command);
    command.stdin(if input.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    });
    match channel {
        Some(Channel::Stdout) => command.stdout(Stdio::piped()),
        Some(Channel::Stderr) => command.stderr(Stdio::piped()),
        _ => &mut command,
    };
    let mut child = command
        .spawn()
        .map_err(|e| spawn_failure(&spec.command, &e))?;
    let pid = libc::pid_t::try_from(child.id())
        .map_err(|_| Failure::new(1, format!("child pid {} out of range", child.id())))?;

    let fed = match (input, child.stdin.take()) {
        (Some(file), Some(stdin)) => Some(feed(file, stdin)),
        _ => None,
    };
    let tee = match (channel, partial) {
        (Some(Channel::Stdout), Some(partial)) => child
            .stdout
            .take()
            .map(|from| spawn_named("tee-stdout", move || tee(from, io::stdout(), partial))),
        (Some(Channel::Stderr), Some(partial)) => child
            .stderr
            .take()
            .map(|from| spawn_named("tee-stderr", move || tee(from, io::stderr(), partial))),
        _ => None,
    }
    .transpose()
    .map_err(|e| {
        let _ = child.kill();
        Failure::new(1, format!("cannot start the output copier: {e}"))
    })?;

    let status = signals
        .forward_until_exit(pid)
        .map_err(|e| Failure::new(1, format!("waiting for {:?}: {e}", spec.command)))?;
    // Even after a failure: the end of the output belongs in the container log.
    let teed = match tee {
        Some(handle) => Some(
            handle
                .join()
                .map_err(|_| Failure::new(1, "the output copier panicked"))?,
        ),
        None => None,
    };

    let code = exit_code(status);
    if code != 0 {
        // `save` drops here, which removes the partial file.
        return Ok(code);
    }
    if let (Some(Err(e)), Some(save)) = (teed, &save) {
        return Err(Failure::new(
            1,
            format!("save {}: {e}", save.file.display()),
        ));
    }
    if let (Some(fed), Some(path)) = (fed, &spec.input) {
        // Nothing received: the copy is still running because the child did not read it all.
        if let Ok(Err(e)) = fed.try_recv() {
            return Err(Failure::new(1, format!("input {}: {e}", path.display())));
        }
    }
    if let Some(save) = save {
        if let Some(Channel::File(written)) = channel {
            save.copy_from(written)?;
        }
        save.commit()?;
    }
    Ok(0)
}

fn spawn_named<T: Send + 'static>(
    name: &str,
    work: impl FnOnce() -> T + Send + 'static,
) -> io::Result<JoinHandle<T>> {
    thread::Builder::new().name(name.to_owned()).spawn(work)
}

/// The shell's exit code for a status: the code, or 128+N for death by signal N.
fn exit_code(status: ExitStatus) -> i32 {
    match (status.code(), status.signal()) {
        (Some(code), _) => code,
        (None, Some(signal)) => 128 + signal,
        // Not reachable: waitpid without WUNTRACED reports only exits and deaths.
        (None, None) => 1,
    }
}

/// Streams `file` into the child's stdin on a thread of its own, so that the child can read
/// and write at once whatever the sizes. A child that stops reading early (EPIPE) is fine.
///
/// The result is sent before stdin is closed: by the time the child can see end-of-file, and
/// so exit, a read error of the input is already known to the launcher.
fn feed(mut file: File, mut stdin: ChildStdin) -> mpsc::Receiver<io::Result<()>> {
    let (sender, receiver) = mpsc::channel();
    let work = move || {
        let result = match io::copy(&mut file, &mut stdin) {
            Err(e) if e.kind() == ErrorKind::BrokenPipe => Ok(()),
            result => result.map(drop),
        };
        let _ = sender.send(result);
        drop(stdin);
    };
    if let Err(e) = spawn_named("feed-stdin", work) {
        // The closure, stdin with it, is gone: the child sees end-of-file; report why.
        let (sender, failed) = mpsc::channel();
        let _ = sender.send(Err(e));
        return failed;
    }
    receiver
}

/// Copies the child's stream chunk by chunk to the launcher's own stream, so that it still
/// reaches the container log, and to the partial file. A broken log stream stops only the
/// echo; a failed write to the file is reported at the end, the stream being read to its end
/// anyway so that the child never blocks on a full pipe.
///
/// The stream ends when every writer has closed it: background processes the command left
/// holding it keep the step open, as in a shell pipeline.
fn tee(mut from: impl Read, mut echo: impl Write, mut save: File) -> io::Result<()> {
    let mut buffer = vec![0; 64 * 1024];
    let mut echoing = true;
    let mut saved = Ok(());
    loop {
        let chunk = match from.read(&mut buffer) {
            Ok(0) => break,
            Ok(read) => buffer.get(..read).unwrap_or_default(),
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if echoing {
            echoing = echo.write_all(chunk).and_then(|()| echo.flush()).is_ok();
        }
        if saved.is_ok() {
            saved = save.write_all(chunk);
        }
    }
    saved
}

/// Where a step's output is saved: `FILE.partial` while the step runs, renamed to FILE only
/// when it succeeds, so that the next step never reads a truncated output. Dropped without
/// [`Save::commit`], it removes the partial file.
struct Save {
    file: PathBuf,
    partial: PathBuf,
    committed: bool,
}

impl Save {
    /// Creates FILE's directory, so that the partial file can live beside FILE.
    fn prepare(file: &Path) -> Result<Self, Failure> {
        let mut partial = file.as_os_str().to_owned();
        partial.push(".partial");
        let save = Self {
            file: file.to_owned(),
            partial: PathBuf::from(partial),
            committed: false,
        };
        if let Some(dir) = file.parent().filter(|dir| !dir.as_os_str().is_empty()) {
            fs::create_dir_all(dir).map_err(|e| save.failed(&e))?;
        }
        Ok(save)
    }

    fn failed(&self, reason: &dyn std::fmt::Display) -> Failure {
        Failure::new(1, format!("save {}: {reason}", self.file.display()))
    }

    /// Creates (or truncates a stale) partial file.
    fn create(&self) -> Result<File, Failure> {
        File::create(&self.partial).map_err(|e| self.failed(&e))
    }

    /// Copies the file the step wrote into the partial file.
    fn copy_from(&self, written: &Path) -> Result<(), Failure> {
        let mut source = File::open(written).map_err(|e| {
            let message = if e.kind() == ErrorKind::NotFound {
                format!("step output {} was not written", written.display())
            } else {
                format!("step output {}: {e}", written.display())
            };
            Failure::new(1, message)
        })?;
        let mut target = self.create()?;
        io::copy(&mut source, &mut target)
            .map_err(|e| Failure::new(1, format!("step output {}: {e}", written.display())))?;
        Ok(())
    }

    fn commit(mut self) -> Result<(), Failure> {
        fs::rename(&self.partial, &self.file).map_err(|e| self.failed(&e))?;
        self.committed = true;
        Ok(())
    }
}

impl Drop for Save {
    fn drop(&mut self) {
        if !self.committed {
            let _ = fs::remove_file(&self.partial);
        }
    }
}

// ----------------------------------------------------------------------------------------
// run: signals

/// The forwarded signals and SIGCHLD, blocked so that they stay pending until
/// [`Signals::forward_until_exit`] takes them with `sigwait`: no handler, hence no
/// async-signal-safety concern and no lost wake-up between "child still running?" and
/// "wait". Blocked signals are also delivered to a PID 1, which ignores unhandled ones.
struct Signals {
    set: libc::sigset_t,
    /// The mask the launcher started with, which the child gets back.
    previous: libc::sigset_t,
}

impl Signals {
    /// Blocks the signals in the calling thread, and so in the threads it spawns afterwards.
    fn block() -> io::Result<Self> {
        // An ignored SIGCHLD, inherited through exec, would have the kernel reap the child
        // before the launcher can learn its status.
        // SAFETY: SIG_DFL installs no handler; nothing else in the launcher handles SIGCHLD.
        if unsafe { libc::signal(libc::SIGCHLD, libc::SIG_DFL) } == libc::SIG_ERR {
            return Err(io::Error::last_os_error());
        }
        let mut set = MaybeUninit::<libc::sigset_t>::uninit();
        // SAFETY: sigemptyset only writes the set behind the valid pointer it is given.
        if unsafe { libc::sigemptyset(set.as_mut_ptr()) } != 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: initialised by the successful sigemptyset just above.
        let mut set = unsafe { set.assume_init() };
        for signal in FORWARDED.into_iter().chain([libc::SIGCHLD]) {
            // SAFETY: `set` is an initialised sigset_t and `signal` a valid signal number.
            if unsafe { libc::sigaddset(&mut set, signal) } != 0 {
                return Err(io::Error::last_os_error());
            }
        }
        let mut previous = MaybeUninit::<libc::sigset_t>::uninit();
        // SAFETY: `set` is initialised and `previous` a valid pointer for the old mask.
        let error = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, previous.as_mut_ptr()) };
        if error != 0 {
            return Err(io::Error::from_raw_os_error(error));
        }
        // SAFETY: the successful pthread_sigmask just above wrote the old mask.
        let previous = unsafe { previous.assume_init() };
        Ok(Self { set, previous })
    }

    /// Has `command` start with the launcher's original signal mask: std does not reset the
    /// mask, which survives exec, and a command with SIGTERM blocked would never see it.
    fn restore_in_child(&self, command: &mut Command) {
        let previous = self.previous;
        // SAFETY: the closure runs in the child between fork and exec, where only
        // async-signal-safe functions may be called: sigprocmask is one, and it reads only
        // the copy of the mask the closure owns.
        unsafe {
            command.pre_exec(move || {
                if libc::sigprocmask(libc::SIG_SETMASK, &previous, std::ptr::null_mut()) == 0 {
                    Ok(())
                } else {
                    Err(io::Error::last_os_error())
                }
            });
        }
    }

    /// Forwards SIGTERM, SIGINT and SIGHUP to `pid` until it exits, and returns its status.
    /// Other children are reaped on the way: as a container's PID 1 the launcher inherits the
    /// command's orphans, which would otherwise stay zombies.
    fn forward_until_exit(&self, pid: libc::pid_t) -> io::Result<ExitStatus> {
        loop {
            // Before waiting: a SIGCHLD already taken may stand for several exits.
            if let Some(status) = reap(pid)? {
                return Ok(status);
            }
            let mut signal: libc::c_int = 0;
            // SAFETY: `self.set` is an initialised sigset_t, `signal` a valid out pointer.
            let error = unsafe { libc::sigwait(&self.set, &mut signal) };
            if error != 0 {
                return Err(io::Error::from_raw_os_error(error));
            }
            if FORWARDED.contains(&signal) {
                // SAFETY: kill has no memory-safety preconditions. `pid` is not reaped yet
                // (only this loop reaps), so it still names our child, not a recycled PID.
                // A failure (the child just exited) needs nothing: its SIGCHLD follows.
                unsafe { libc::kill(pid, signal) };
            }
        }
    }
}

/// Reaps every exited child without blocking; returns `pid`'s status if it was among them.
fn reap(pid: libc::pid_t) -> io::Result<Option<ExitStatus>> {
    let mut found = None;
    loop {
        let mut status: libc::c_int = 0;
        // SAFETY: `status` is a valid out pointer; WNOHANG makes the call return at once.
        let reaped = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) };
        if reaped == pid {
            found = Some(ExitStatus::from_raw(status));
        } else if reaped == 0 {
            return Ok(found);
        } else if reaped < 0 {
            let error = io::Error::last_os_error();
            match error.raw_os_error() {
                Some(libc::EINTR) => {}
                Some(libc::ECHILD) if found.is_some() => return Ok(found),
                Some(libc::ECHILD) => return Err(io::Error::other("the child was lost")),
                _ => return Err(error),
            }
        }
        // Any other PID is an orphan, now reaped.
    }
}

#[cfg(test)]
mod tests {
    use super::{count_indexes, nth_index};

    #[test]
    fn nth_index_walks_ranges_without_expanding_them() {
        assert_eq!(nth_index("1,3-5,7", 0), Ok(Some(1)));
        assert_eq!(nth_index("1,3-5,7", 2), Ok(Some(4)));
        assert_eq!(nth_index("1,3-5,7", 4), Ok(Some(7)));
        assert_eq!(nth_index("1,3-5,7", 5), Ok(None));
        assert_eq!(
            nth_index("0-18446744073709551615", u64::MAX),
            Ok(Some(u64::MAX))
        );
        assert_eq!(count_indexes("1,3-5,7"), 5);
    }

    #[test]
    fn nth_index_refuses_malformed_lists() {
        for list in [
            "", "1,,2", "a", "3-1", "1,1", "5,3", "1-3,2", " 1", "+1", "1-", "-1",
        ] {
            assert!(nth_index(list, 0).is_err(), "{list:?} accepted");
        }
    }
}
