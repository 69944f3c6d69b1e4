//! The real `charon-launcher` binary, run as pipeline steps and array tasks run it: install,
//! exec pass-through, output channels, input streaming, exit codes, signal forwarding and
//! task ids.

use std::fs;
use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

const LAUNCHER: &str = env!("CARGO_BIN_EXE_charon-launcher");
const DEADLINE: Duration = Duration::from_secs(30);
const TASK_VARS: [&str; 5] = [
    "CHARON_TASK_FIRST",
    "CHARON_TASK_STEP",
    "CHARON_TASK_INDEXES",
    "CHARON_TASK_ID",
    "JOB_COMPLETION_INDEX",
];

/// The launcher with `args`, in an environment free of task variables.
fn launcher(args: &[&str]) -> Command {
    let mut command = Command::new(LAUNCHER);
    command.args(args);
    for var in TASK_VARS {
        command.env_remove(var);
    }
    command
}

fn run(args: &[&str]) -> Output {
    run_with(args, &[])
}

fn run_with(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut command = launcher(args);
    command.envs(env.iter().copied());
    command.output().expect("the launcher starts")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn path(dir: &Path, name: &str) -> String {
    dir.join(name)
        .to_str()
        .expect("temp paths are UTF-8")
        .to_owned()
}

/// Waits for `child`, killing it and failing the test if it takes longer than [`DEADLINE`].
fn wait(child: &mut Child) -> ExitStatus {
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return status;
        }
        if start.elapsed() > DEADLINE {
            let _ = child.kill();
            panic!("the launcher did not exit within {DEADLINE:?}");
        }
        thread::sleep(Duration::from_millis(20));
    }
}

/// Reads `stream` until `marker` has appeared, failing the test after [`DEADLINE`]; the rest
/// of the stream is drained in the background so that the writer never blocks.
fn await_marker(mut stream: impl Read + Send + 'static, marker: &'static str) {
    let (seen, seen_rx) = mpsc::channel();
    thread::spawn(move || {
        let mut all = Vec::new();
        let mut buffer = [0; 256];
        let mut announced = false;
        while let Ok(read @ 1..) = stream.read(&mut buffer) {
            all.extend_from_slice(&buffer[..read]);
            if !announced && text(&all).contains(marker) {
                announced = true;
                let _ = seen.send(());
            }
        }
    });
    seen_rx
        .recv_timeout(DEADLINE)
        .unwrap_or_else(|_| panic!("{marker:?} never appeared"));
}

fn send_signal(child: &Child, signal: libc::c_int) {
    let pid = libc::pid_t::try_from(child.id()).expect("pids fit in pid_t");
    // SAFETY: kill takes no pointers; `pid` is our unreaped child.
    let sent = unsafe { libc::kill(pid, signal) };
    assert_eq!(sent, 0, "kill({pid}, {signal})");
}

// ----------------------------------------------------------------------------------------
// usage and install

#[test]
fn help_goes_to_stdout_and_bad_command_lines_exit_2() {
    let help = run(&["--help"]);
    assert_eq!(help.status.code(), Some(0));
    assert!(text(&help.stdout).starts_with("usage: charon-launcher install DEST"));
    assert!(help.stderr.is_empty());

    let bad: &[&[&str]] = &[
        &[],
        &["bogus"],
        &["install"],
        &["install", "a", "b"],
        &["run"],
        &["run", "true"],
        &["run", "--"],
        &["run", "--bogus", "x", "--", "true"],
        &["run", "--output", "stdout", "--", "true"],
        &["run", "--save", "/tmp/x", "--", "true"],
        &[
            "run",
            "--output",
            "relative/path",
            "--save",
            "/tmp/x",
            "--",
            "true",
        ],
        &[
            "run", "--output", "stdout", "--save", "a", "--save", "b", "--", "true",
        ],
        &["run", "--input"],
    ];
    for args in bad {
        let output = run(args);
        assert_eq!(output.status.code(), Some(2), "{args:?}");
        assert!(output.stdout.is_empty(), "{args:?}");
        let stderr = text(&output.stderr);
        assert!(
            stderr.starts_with("charon-launcher: "),
            "{args:?}: {stderr}"
        );
        assert!(
            stderr.contains("usage: charon-launcher"),
            "{args:?}: {stderr}"
        );
    }
}

#[test]
fn install_copies_a_runnable_executable_atomically() {
    let dir = tempfile::tempdir().expect("tempdir");
    let dest = path(dir.path(), "shared/bin/charon-launcher");
    for _ in 0..2 {
        // The second round replaces the first copy, as a restarted init container does.
        let output = run(&["install", &dest]);
        assert_eq!(output.status.code(), Some(0), "{}", text(&output.stderr));
        let mode = fs::metadata(&dest).expect("installed").permissions().mode();
        assert_eq!(mode & 0o7777, 0o755);
        let installed = Command::new(&dest).arg("--help").output().expect("runs");
        assert_eq!(installed.status.code(), Some(0));
        assert!(text(&installed.stdout).starts_with("usage: charon-launcher"));
        let names: Vec<_> = fs::read_dir(dir.path().join("shared/bin"))
            .expect("dir")
            .map(|entry| entry.expect("entry").file_name())
            .collect();
        assert_eq!(names, ["charon-launcher"], "no temporary file is left");
    }
    assert_eq!(
        fs::read(&dest).expect("installed"),
        fs::read(LAUNCHER).expect("built")
    );
}

#[test]
fn install_reports_why_it_failed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = path(dir.path(), "file");
    fs::write(&file, "not a directory").expect("write");
    let dest = format!("{file}/charon-launcher");
    let output = run(&["install", &dest]);
    assert_eq!(output.status.code(), Some(1));
    let stderr = text(&output.stderr);
    assert!(
        stderr.starts_with(&format!("charon-launcher: install {dest}: ")),
        "{stderr}"
    );
}

// ----------------------------------------------------------------------------------------
// run without channels: exec

#[test]
fn run_alone_execs_and_passes_the_exit_code_and_environment() {
    assert_eq!(
        run(&["run", "--", "sh", "-c", "exit 3"]).status.code(),
        Some(3)
    );
    let output = run_with(
        &[
            "run",
            "--",
            "sh",
            "-c",
            "printf '%s %s' \"$STEP_VAR\" \"$CHARON_TASK_ID\"",
        ],
        &[("STEP_VAR", "kept"), ("CHARON_TASK_ID", "untouched")],
    );
    assert_eq!(output.status.code(), Some(0));
    assert_eq!(text(&output.stdout), "kept untouched");
}

#[test]
fn run_alone_is_replaced_by_the_command() {
    // The launcher's own PID now belongs to the command: it dies of the signal itself.
    let output = run(&["run", "--", "sh", "-c", "kill -9 $$"]);
    assert_eq!(output.status.signal(), Some(libc::SIGKILL));

    let mut child = launcher(&[
        "run",
        "--",
        "sh",
        "-c",
        "trap 'exit 42' TERM; printf ready; while :; do sleep 0.1; done",
    ])
    .stdout(Stdio::piped())
    .spawn()
    .expect("starts");
    await_marker(child.stdout.take().expect("piped"), "ready");
    send_signal(&child, libc::SIGTERM);
    assert_eq!(wait(&mut child).code(), Some(42));
}

// ----------------------------------------------------------------------------------------
// output channels

#[test]
fn the_stdout_channel_is_saved_and_still_shown() {
    let dir = tempfile::tempdir().expect("tempdir");
    let save = path(dir.path(), "out/step-1");
    let script = "printf 'line one\\nline two'; printf 'to stderr' >&2";
    let output = run(&[
        "run", "--output", "stdout", "--save", &save, "--", "sh", "-c", script,
    ]);
    assert_eq!(output.status.code(), Some(0), "{}", text(&output.stderr));
    assert_eq!(text(&output.stdout), "line one\nline two");
    assert_eq!(text(&output.stderr), "to stderr", "stderr is not captured");
    assert_eq!(
        fs::read_to_string(&save).expect("saved"),
        "line one\nline two"
    );
    assert!(!Path::new(&format!("{save}.partial")).exists());
}

#[test]
fn the_stderr_channel_is_saved_and_still_shown() {
    let dir = tempfile::tempdir().expect("tempdir");
    let save = path(dir.path(), "out/step-1");
    let script = "printf 'to stdout'; printf 'saved\\nbytes' >&2";
    let output = run(&[
        "run", "--output", "stderr", "--save", &save, "--", "sh", "-c", script,
    ]);
    assert_eq!(output.status.code(), Some(0), "{}", text(&output.stderr));
    assert_eq!(text(&output.stdout), "to stdout", "stdout is not captured");
    assert_eq!(text(&output.stderr), "saved\nbytes");
    assert_eq!(fs::read_to_string(&save).expect("saved"), "saved\nbytes");
    assert!(!Path::new(&format!("{save}.partial")).exists());
}

#[test]
fn the_file_channel_copies_what_the_command_wrote() {
    let dir = tempfile::tempdir().expect("tempdir");
    let written = path(dir.path(), "work/result.csv");
    let save = path(dir.path(), "out/step-1");
    let script = "mkdir -p \"${0%/*}\"; printf 'a,b\\n1,2\\n' > \"$0\"; echo shown";
    let output = run(&[
        "run", "--output", &written, "--save", &save, "--", "sh", "-c", script, &written,
    ]);
    assert_eq!(output.status.code(), Some(0), "{}", text(&output.stderr));
    assert_eq!(
        text(&output.stdout),
        "shown\n",
        "both streams are inherited"
    );
    assert_eq!(fs::read_to_string(&save).expect("saved"), "a,b\n1,2\n");
    assert!(!Path::new(&format!("{save}.partial")).exists());
}

#[test]
fn a_file_channel_the_command_never_wrote_fails_the_step() {
    let dir = tempfile::tempdir().expect("tempdir");
    let written = path(dir.path(), "never");
    let save = path(dir.path(), "out/step-1");
    let output = run(&["run", "--output", &written, "--save", &save, "--", "true"]);
    assert_eq!(output.status.code(), Some(1));
    assert_eq!(
        text(&output.stderr),
        format!("charon-launcher: step output {written} was not written\n")
    );
    assert!(!Path::new(&save).exists());
    assert!(!Path::new(&format!("{save}.partial")).exists());
}

// ----------------------------------------------------------------------------------------
// input

#[test]
fn ten_megabytes_pass_from_one_step_to_the_next() {
    const SIZE: usize = 10 * 1024 * 1024;
    let dir = tempfile::tempdir().expect("tempdir");
    let first = path(dir.path(), "out/step-1");
    let second = path(dir.path(), "out/step-2");

    let output = run(&[
        "run",
        "--output",
        "stdout",
        "--save",
        &first,
        "--",
        "head",
        "-c",
        &SIZE.to_string(),
        "/dev/urandom",
    ]);
    assert_eq!(output.status.code(), Some(0), "{}", text(&output.stderr));
    let bytes = fs::read(&first).expect("saved");
    assert_eq!(bytes.len(), SIZE);
    assert!(output.stdout == bytes, "the log shows what was saved");

    let output = run(&[
        "run", "--input", &first, "--output", "stdout", "--save", &second, "--", "cat",
    ]);
    assert_eq!(output.status.code(), Some(0), "{}", text(&output.stderr));
    assert!(
        output.stdout == bytes,
        "the child read exactly the saved bytes"
    );
    assert!(fs::read(&second).expect("saved") == bytes);

    // The checksum the child computes from its stdin is the one of the file itself.
    let through_launcher = run(&["run", "--input", &first, "--", "cksum"]);
    assert_eq!(through_launcher.status.code(), Some(0));
    let direct = Command::new("sh")
        .args(["-c", "cksum < \"$0\"", &first])
        .output()
        .expect("cksum");
    assert_eq!(text(&through_launcher.stdout), text(&direct.stdout));
}

#[test]
fn a_child_that_stops_reading_its_input_is_not_an_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let input = path(dir.path(), "input");
    fs::write(&input, vec![b'x'; 4 * 1024 * 1024]).expect("write");
    let save = path(dir.path(), "out");
    let output = run(&[
        "run", "--input", &input, "--output", "stdout", "--save", &save, "--", "head", "-c", "1",
    ]);
    assert_eq!(output.status.code(), Some(0), "{}", text(&output.stderr));
    assert_eq!(fs::read_to_string(&save).expect("saved"), "x");
}

#[test]
fn without_input_the_child_reads_dev_null() {
    let dir = tempfile::tempdir().expect("tempdir");
    let save = path(dir.path(), "out");
    // The launcher's own stdin stays open: the child must not be reading it.
    let mut child = launcher(&["run", "--output", "stdout", "--save", &save, "--", "cat"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .expect("starts");
    let _open_stdin = child.stdin.take();
    assert_eq!(wait(&mut child).code(), Some(0));
    assert_eq!(fs::read(&save).expect("saved"), b"");
}

#[test]
fn a_missing_input_fails_before_running_the_command() {
    let dir = tempfile::tempdir().expect("tempdir");
    let input = path(dir.path(), "missing");
    let marker = path(dir.path(), "ran");
    let output = run(&["run", "--input", &input, "--", "touch", &marker]);
    assert_eq!(output.status.code(), Some(1));
    let stderr = text(&output.stderr);
    assert!(
        stderr.starts_with(&format!("charon-launcher: input {input}: ")),
        "{stderr}"
    );
    assert!(!Path::new(&marker).exists());
}

// ----------------------------------------------------------------------------------------
// failures and exit codes

#[test]
fn a_failed_step_leaves_no_output_and_passes_its_code() {
    let dir = tempfile::tempdir().expect("tempdir");
    let save = path(dir.path(), "out/step-1");
    let output = run(&[
        "run",
        "--output",
        "stdout",
        "--save",
        &save,
        "--",
        "sh",
        "-c",
        "printf partial; exit 5",
    ]);
    assert_eq!(output.status.code(), Some(5));
    assert_eq!(text(&output.stdout), "partial", "still shown in the log");
    assert!(!Path::new(&save).exists());
    assert!(!Path::new(&format!("{save}.partial")).exists());

    // The file channel is not copied either.
    let written = path(dir.path(), "written");
    let script = "printf data > \"$0\"; exit 4";
    let output = run(&[
        "run", "--output", &written, "--save", &save, "--", "sh", "-c", script, &written,
    ]);
    assert_eq!(output.status.code(), Some(4));
    assert!(!Path::new(&save).exists());
    assert!(!Path::new(&format!("{save}.partial")).exists());
}

#[test]
fn a_step_killed_by_a_signal_exits_128_plus_the_signal() {
    let dir = tempfile::tempdir().expect("tempdir");
    let save = path(dir.path(), "out");
    let output = run(&[
        "run",
        "--output",
        "stdout",
        "--save",
        &save,
        "--",
        "sh",
        "-c",
        "kill -9 $$",
    ]);
    assert_eq!(output.status.code(), Some(128 + libc::SIGKILL));
    assert!(!Path::new(&save).exists());
    assert!(!Path::new(&format!("{save}.partial")).exists());
}

#[test]
fn commands_that_cannot_run_exit_127_or_126() {
    let dir = tempfile::tempdir().expect("tempdir");
    let save = path(dir.path(), "out");
    let missing = "charon-no-such-command";
    for args in [
        vec!["run", "--", missing],
        vec!["run", "--output", "stdout", "--save", &save, "--", missing],
    ] {
        let output = run(&args);
        assert_eq!(output.status.code(), Some(127), "{args:?}");
        assert_eq!(
            text(&output.stderr),
            format!("charon-launcher: {missing}: not found\n")
        );
    }
    assert!(!Path::new(&format!("{save}.partial")).exists());

    let not_executable = path(dir.path(), "script");
    fs::write(&not_executable, "#!/bin/sh\nexit 0\n").expect("write");
    fs::set_permissions(&not_executable, fs::Permissions::from_mode(0o644)).expect("chmod");
    for args in [
        vec!["run", "--", &not_executable],
        vec![
            "run",
            "--output",
            "stdout",
            "--save",
            &save,
            "--",
            &not_executable,
        ],
    ] {
        let output = run(&args);
        assert_eq!(output.status.code(), Some(126), "{args:?}");
        let stderr = text(&output.stderr);
        assert!(
            stderr.starts_with(&format!("charon-launcher: {not_executable}: ")),
            "{stderr}"
        );
    }
}

// ----------------------------------------------------------------------------------------
// signals

#[test]
fn sigterm_to_the_launcher_reaches_the_child() {
    let dir = tempfile::tempdir().expect("tempdir");
    let save = path(dir.path(), "out");
    let script = "trap 'exit 42' TERM; printf ready; while :; do sleep 0.1; done";
    let mut child = launcher(&[
        "run", "--output", "stdout", "--save", &save, "--", "sh", "-c", script,
    ])
    .stdout(Stdio::piped())
    .spawn()
    .expect("starts");
    await_marker(child.stdout.take().expect("piped"), "ready");
    send_signal(&child, libc::SIGTERM);
    // The child's trap ran and chose the code; the launcher itself did not die of the signal.
    let status = wait(&mut child);
    assert_eq!(status.code(), Some(42), "{status:?}");
    assert!(!Path::new(&save).exists());
}

#[test]
fn the_child_gets_the_signal_mask_the_launcher_was_given() {
    // The launcher blocks the forwarded signals for itself; the command must not inherit that.
    // (grep itself reads its status: a shell's own mask changes while it forks.)
    let dir = tempfile::tempdir().expect("tempdir");
    let save = path(dir.path(), "out");
    let status = ["grep", "-E", "^Sig(Blk|Ign)", "/proc/self/status"];
    let direct = Command::new(status[0])
        .args(&status[1..])
        .output()
        .expect("grep");
    assert_eq!(direct.status.code(), Some(0));
    let mut args = vec!["run", "--output", "stdout", "--save", &save, "--"];
    args.extend(status);
    let output = run(&args);
    assert_eq!(output.status.code(), Some(0), "{}", text(&output.stderr));
    assert_eq!(text(&output.stdout), text(&direct.stdout));
}

#[test]
fn a_child_killed_by_the_forwarded_sigterm_exits_143() {
    let dir = tempfile::tempdir().expect("tempdir");
    let input = path(dir.path(), "input");
    fs::write(&input, "").expect("write");
    let script = "printf ready >&2; exec sleep 60";
    let mut child = launcher(&["run", "--input", &input, "--", "sh", "-c", script])
        .stderr(Stdio::piped())
        .spawn()
        .expect("starts");
    await_marker(child.stderr.take().expect("piped"), "ready");
    let start = Instant::now();
    send_signal(&child, libc::SIGTERM);
    let status = wait(&mut child);
    assert_eq!(status.code(), Some(128 + libc::SIGTERM), "{status:?}");
    assert!(
        start.elapsed() < Duration::from_secs(10),
        "sleep was cut short"
    );
}

// ----------------------------------------------------------------------------------------
// array tasks

fn task_id(env: &[(&str, &str)]) -> Output {
    run_with(
        &["run", "--", "sh", "-c", "printf %s \"$CHARON_TASK_ID\""],
        env,
    )
}

#[test]
fn the_task_id_is_first_plus_position_times_step() {
    let cases: &[(&[(&str, &str)], &str)] = &[
        (
            &[
                ("CHARON_TASK_FIRST", "0"),
                ("CHARON_TASK_STEP", "3"),
                ("JOB_COMPLETION_INDEX", "2"),
            ],
            "6",
        ),
        (
            &[("CHARON_TASK_FIRST", "5"), ("JOB_COMPLETION_INDEX", "2")],
            "7",
        ),
        (
            &[
                ("CHARON_TASK_FIRST", "-1"),
                ("CHARON_TASK_STEP", "-2"),
                ("JOB_COMPLETION_INDEX", "1"),
            ],
            "-3",
        ),
        // A Job for some positions only: index 2 of "1,3-5" is position 4.
        (
            &[
                ("CHARON_TASK_FIRST", "10"),
                ("CHARON_TASK_STEP", "3"),
                ("CHARON_TASK_INDEXES", "1,3-5"),
                ("JOB_COMPLETION_INDEX", "2"),
            ],
            "22",
        ),
        (
            &[
                ("CHARON_TASK_FIRST", "10"),
                ("CHARON_TASK_INDEXES", "1,3-5,7"),
                ("JOB_COMPLETION_INDEX", "4"),
            ],
            "17",
        ),
        // Set by someone else and no array: passed unchanged.
        (
            &[("CHARON_TASK_ID", "theirs"), ("JOB_COMPLETION_INDEX", "2")],
            "theirs",
        ),
    ];
    for (env, expected) in cases {
        let output = task_id(env);
        assert_eq!(
            output.status.code(),
            Some(0),
            "{env:?}: {}",
            text(&output.stderr)
        );
        assert_eq!(text(&output.stdout), *expected, "{env:?}");
    }

    // The same in a supervised step.
    let dir = tempfile::tempdir().expect("tempdir");
    let save = path(dir.path(), "out");
    let output = run_with(
        &[
            "run",
            "--output",
            "stdout",
            "--save",
            &save,
            "--",
            "sh",
            "-c",
            "printf %s \"$CHARON_TASK_ID\"",
        ],
        &[
            ("CHARON_TASK_FIRST", "100"),
            ("CHARON_TASK_STEP", "10"),
            ("JOB_COMPLETION_INDEX", "3"),
        ],
    );
    assert_eq!(output.status.code(), Some(0), "{}", text(&output.stderr));
    assert_eq!(fs::read_to_string(&save).expect("saved"), "130");
}

#[test]
fn a_bad_task_environment_fails_before_running_the_command() {
    let dir = tempfile::tempdir().expect("tempdir");
    let marker = path(dir.path(), "ran");
    let cases: &[(&[(&str, &str)], &str)] = &[
        (&[("CHARON_TASK_FIRST", "0")], "JOB_COMPLETION_INDEX"),
        (
            &[("CHARON_TASK_FIRST", "0"), ("JOB_COMPLETION_INDEX", "x")],
            "JOB_COMPLETION_INDEX",
        ),
        (
            &[("CHARON_TASK_FIRST", "0"), ("JOB_COMPLETION_INDEX", "-1")],
            "JOB_COMPLETION_INDEX",
        ),
        (
            &[("CHARON_TASK_FIRST", "zero"), ("JOB_COMPLETION_INDEX", "0")],
            "CHARON_TASK_FIRST",
        ),
        (
            &[
                ("CHARON_TASK_FIRST", "0"),
                ("CHARON_TASK_STEP", "1.5"),
                ("JOB_COMPLETION_INDEX", "0"),
            ],
            "CHARON_TASK_STEP",
        ),
        (
            &[
                ("CHARON_TASK_FIRST", "0"),
                ("CHARON_TASK_INDEXES", "1,3-5"),
                ("JOB_COMPLETION_INDEX", "4"),
            ],
            "CHARON_TASK_INDEXES",
        ),
        (
            &[
                ("CHARON_TASK_FIRST", "0"),
                ("CHARON_TASK_INDEXES", "5-3"),
                ("JOB_COMPLETION_INDEX", "0"),
            ],
            "CHARON_TASK_INDEXES",
        ),
        (
            &[
                ("CHARON_TASK_FIRST", "0"),
                ("CHARON_TASK_INDEXES", "3,1"),
                ("JOB_COMPLETION_INDEX", "0"),
            ],
            "CHARON_TASK_INDEXES",
        ),
        (
            &[
                ("CHARON_TASK_FIRST", "9223372036854775807"),
                ("JOB_COMPLETION_INDEX", "1"),
            ],
            "CHARON_TASK_FIRST",
        ),
    ];
    for (env, named) in cases {
        for args in [
            vec!["run", "--", "touch", &marker],
            vec![
                "run",
                "--output",
                "stdout",
                "--save",
                &path(dir.path(), "out"),
                "--",
                "touch",
                &marker,
            ],
        ] {
            let output = run_with(&args, env);
            assert_eq!(output.status.code(), Some(1), "{env:?} {args:?}");
            let stderr = text(&output.stderr);
            assert!(stderr.starts_with("charon-launcher: "), "{env:?}: {stderr}");
            assert!(stderr.contains(named), "{env:?}: {stderr}");
            assert!(!Path::new(&marker).exists(), "{env:?}: the command ran");
        }
    }
}
