//! `charon dev` driven with the real kubectl, as a user would: apply the examples, read them
//! back, explain a field, see an invalid name refused; and with the operator, watch the clock
//! trigger a workflow, its Job log the parameter, a fatal exit end in Error and an invalid
//! schedule be reported.

use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

struct Dev {
    child: Child,
    kubeconfig: PathBuf,
    /// What `charon dev` printed: its live log.
    output: PathBuf,
    /// Its `--state-dir` (the log store under it).
    state: PathBuf,
}

impl Dev {
    fn output(&self) -> String {
        std::fs::read_to_string(&self.output).unwrap_or_default()
    }
}

impl Drop for Dev {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.kubeconfig);
        let _ = std::fs::remove_file(&self.output);
        let _ = std::fs::remove_dir_all(&self.state);
    }
}

fn start() -> Dev {
    start_with(&["--no-controller"], "cluster")
}

fn start_with(flags: &[&str], tag: &str) -> Dev {
    let kubeconfig = std::env::temp_dir().join(format!(
        "charon-dev-test-{}-{tag}.kubeconfig",
        std::process::id()
    ));
    let _ = std::fs::remove_file(&kubeconfig);
    let output = kubeconfig.with_extension("out");
    let state = kubeconfig.with_extension("state");
    let child = Command::new(env!("CARGO_BIN_EXE_charon"))
        .arg("dev")
        .args(flags)
        .arg("--state-dir")
        .arg(&state)
        .args(["--port", "0", "--kubeconfig"])
        .arg(&kubeconfig)
        .stdout(std::fs::File::create(&output).expect("output file"))
        .stderr(Stdio::null())
        .spawn()
        .expect("charon dev starts");
    let dev = Dev {
        child,
        kubeconfig,
        output,
        state,
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    // The CRDs are installed after the kubeconfig is written: wait until kubectl sees them.
    while Instant::now() < deadline {
        if dev.kubeconfig.exists()
            && kubectl(&dev, &["get", "crd", "workflows.charon.dev"])
                .status
                .success()
        {
            return dev;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("charon dev did not become ready within 30s");
}

fn kubectl(dev: &Dev, args: &[&str]) -> Output {
    Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(&dev.kubeconfig)
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("kubectl runs")
}

fn ok(dev: &Dev, args: &[&str]) -> String {
    let out = kubectl(dev, args);
    assert!(
        out.status.success(),
        "kubectl {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn kubectl_applies_reads_and_explains_charon_resources() {
    let dev = start();
    let applied = ok(&dev, &["apply", "-f", "config/examples/"]);
    assert!(
        applied.contains("workflow.charon.dev/hello created"),
        "{applied}"
    );
    let names = ok(
        &dev,
        &["get", "cwf", "-o", "jsonpath={.items[*].metadata.name}"],
    );
    assert_eq!(
        names,
        "fails-fatally hello hourly-report kueue-report minutely-ingest minutely-summary pool-batch pool-urgent task-array waits-for-input word-pipeline"
    );
    // Printer columns come back as a server-side table.
    let table = ok(&dev, &["get", "cwf", "hourly-report", "-o", "wide"]);
    let header: Vec<&str> = table
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    assert_eq!(
        header[..4],
        ["NAME", "SCHEDULE", "ZONE", "SUSPENDED"],
        "{table}"
    );
    assert!(table.contains("Europe/Stockholm"), "{table}");
    // Re-applying a change updates the object and bumps its generation.
    let schedule = ok(
        &dev,
        &[
            "patch",
            "cwf",
            "hello",
            "--type",
            "merge",
            "-p",
            r#"{"spec":{"schedule":"*/5 * * * *"}}"#,
        ],
    );
    assert!(schedule.contains("patched"), "{schedule}");
    let spec = ok(
        &dev,
        &[
            "get",
            "workflow",
            "hello",
            "-o",
            "jsonpath={.spec.schedule} {.metadata.generation}",
        ],
    );
    assert_eq!(spec, "*/5 * * * * 2");
    let explain = ok(&dev, &["explain", "workflow.spec.catchUp"]);
    assert!(
        explain.contains("What to do with partitions missed"),
        "{explain}"
    );
    let explain = ok(&dev, &["explain", "workflow.spec.template.imagePullPolicy"]);
    assert!(
        explain.contains("When the kubelet pulls the image"),
        "{explain}"
    );
    // An instance nothing has recorded yet reads as Queued (the schema's default status),
    // never as a blank STATE.
    let instance = Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(&dev.kubeconfig)
        .args(["create", "-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .and_then(|mut child| {
            use std::io::Write;
            child.stdin.take().expect("stdin").write_all(
                b"apiVersion: charon.dev/v1alpha1\nkind: WorkflowInstance\nmetadata: {name: hello-2024-01-01t00-00-00z}\nspec: {workflow: hello, parameter: '2024-01-01T00:00:00Z', logicalTime: '2024-01-01T00:00:00Z', trigger: {type: adhoc, id: adhoc-1-00000}}\n",
            )?;
            child.wait_with_output()
        })
        .expect("kubectl runs");
    assert!(
        instance.status.success(),
        "{}",
        String::from_utf8_lossy(&instance.stderr)
    );
    let row = ok(
        &dev,
        &["get", "cwfi", "hello-2024-01-01t00-00-00z", "--no-headers"],
    );
    let cells: Vec<&str> = row.split_whitespace().collect();
    assert_eq!(cells.get(4), Some(&"Queued"), "{row}");
    let invalid = Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(&dev.kubeconfig)
        .args(["apply", "-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .and_then(|mut child| {
            use std::io::Write;
            child
                .stdin
                .take()
                .expect("stdin")
                .write_all(b"apiVersion: charon.dev/v1alpha1\nkind: Workflow\nmetadata: {name: Upper}\nspec: {schedule: '@daily', template: {image: busybox}}\n")?;
            child.wait_with_output()
        })
        .expect("kubectl runs");
    assert!(!invalid.status.success());
    let message = String::from_utf8_lossy(&invalid.stderr);
    assert!(
        message.contains("metadata.name: Invalid value: \"Upper\": a lowercase RFC 1123 subdomain"),
        "{message}"
    );
    ok(&dev, &["delete", "cwf", "hello"]);
    let after = ok(&dev, &["get", "cwf", "-o", "name"]);
    assert!(!after.contains("hello"), "{after}");
}

/// `charon dev` is not open to whoever reaches its port: it serves HTTPS, its kubeconfig
/// carries the CA and a token, and a request without the token gets the real server's 401.
#[test]
fn charon_dev_requires_the_token_of_its_kubeconfig() {
    let dev = start_with(&["--no-controller"], "token");
    let config = std::fs::read_to_string(&dev.kubeconfig).expect("kubeconfig");
    assert!(config.contains("    token: \""), "{config}");
    assert!(config.contains("server: https://127.0.0.1:"), "{config}");
    assert!(config.contains("certificate-authority-data: "), "{config}");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&dev.kubeconfig)
            .expect("kubeconfig")
            .permissions()
            .mode();
        assert_eq!(mode & 0o077, 0, "{mode:o}");
    }
    ok(&dev, &["get", "namespaces"]);

    // The same kubeconfig without the token.
    let anonymous = dev.kubeconfig.with_extension("anonymous");
    let stripped: String = config
        .lines()
        .filter(|l| !l.trim_start().starts_with("token:"))
        .map(|l| format!("{l}\n"))
        .collect::<String>()
        .replace("  user:\n", "  user: {}\n");
    std::fs::write(&anonymous, &stripped).expect("write");
    let kubectl_with = |config: &str, args: &[&str]| {
        std::fs::write(&anonymous, config).expect("write");
        Command::new("kubectl")
            .arg("--kubeconfig")
            .arg(&anonymous)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("kubectl runs")
    };
    // Refused with 401, kubectl asks for a user name and password (as against any server),
    // which it cannot read here.
    let out = kubectl_with(&stripped, &["get", "namespaces"]);
    let printed = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!out.status.success());
    assert!(printed.contains("Please enter Username"), "{printed}");
    // With a wrong token it reports the server's 401.
    let wrong = config.replace("    token: \"", "    token: \"x");
    let out = kubectl_with(&wrong, &["get", "--raw", "/api/v1/namespaces"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("You must be logged in to the server (Unauthorized)"),
        "{stderr}"
    );

    // The Status is the real server's, and a wrong token fares no better.
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    for (kubeconfig, what) in [
        (stripped, "no token"),
        (
            config.replace("    token: \"", "    token: \"x"),
            "a wrong token",
        ),
    ] {
        let status = runtime.block_on(async {
            let kubeconfig = kube::config::Kubeconfig::from_yaml(&kubeconfig).expect("parses");
            let options = kube::config::KubeConfigOptions::default();
            let config = kube::Config::from_custom_kubeconfig(kubeconfig, &options)
                .await
                .expect("config");
            let client = kube::Client::try_from(config).expect("client");
            let namespaces: kube::Api<k8s_openapi::api::core::v1::Namespace> =
                kube::Api::all(client);
            namespaces.list(&Default::default()).await.err()
        });
        match status {
            Some(kube::Error::Api(status)) => {
                assert_eq!(
                    (
                        status.code,
                        status.reason.as_str(),
                        status.message.as_str(),
                        status.status
                    ),
                    (
                        401,
                        "Unauthorized",
                        "Unauthorized",
                        Some(kube::core::response::StatusSummary::Failure)
                    ),
                    "{what}"
                );
            }
            other => panic!("{what}: {other:?}"),
        }
    }
    let _ = std::fs::remove_file(&anonymous);
}

/// One request over a fresh connection: (status code, body).
fn http(address: &str, token: &str, method: &str, path: &str, body: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(address).expect("connect");
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: test\r\nAuthorization: Bearer {token}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).expect("write");
    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
    let mut out = Vec::new();
    let _ = stream.read_to_end(&mut out);
    let raw = String::from_utf8_lossy(&out).into_owned();
    let code = raw
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = raw.split("\r\n\r\n").nth(1).unwrap_or_default().to_string();
    (code, body)
}

/// `charon dev --faults-address` serves the fault control API: faults set over it reach
/// kubectl, bad input is refused naming the field, and clearing them restores service.
#[test]
fn the_fault_control_api_of_charon_dev_steers_the_server() {
    let dev = start_with(
        &["--no-controller", "--faults-address", "127.0.0.1:0"],
        "faults",
    );
    let output = dev.output();
    let address = output
        .lines()
        .find_map(|l| l.strip_prefix("Fault control API listening on http://"))
        .and_then(|l| l.strip_suffix("/faults"))
        .unwrap_or_else(|| panic!("no fault control address in {output}"))
        .to_string();
    // The control API takes the API server's token, from the kubeconfig.
    let kubeconfig = std::fs::read_to_string(&dev.kubeconfig).expect("kubeconfig");
    let token = kubeconfig
        .lines()
        .find_map(|l| l.trim().strip_prefix("token: "))
        .map(|t| t.trim_matches('"').to_string())
        .expect("a token");
    assert_eq!(http(&address, "wrong", "GET", "/faults", "").0, 401);
    let json = |body: &str| -> serde_json::Value {
        serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body}"))
    };
    let (code, body) = http(&address, &token, "GET", "/faults", "");
    assert_eq!(code, 200, "{body}");
    assert_eq!(
        json(&body),
        serde_json::json!({"errors": {}, "latencyMillis": 0, "expireWatches": 0, "paused": false})
    );

    // Every list fails with the code asked for.
    let (code, body) = http(
        &address,
        &token,
        "PUT",
        "/faults/errors/list",
        r#"{"rate":1.0,"code":500}"#,
    );
    assert_eq!(code, 200, "{body}");
    assert_eq!(
        json(&body)["errors"]["list"],
        serde_json::json!({"rate": 1.0, "code": 500})
    );
    let out = kubectl(&dev, &["get", "configmaps"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("InternalError"), "{stderr}");
    // Gets are another verb.
    ok(&dev, &["get", "namespace", "default"]);

    // Bad input names the field.
    for (method, path, body, field) in [
        ("PUT", "/faults/errors/list", r#"{"rate":2}"#, "rate"),
        (
            "PUT",
            "/faults/errors/list",
            r#"{"rate":0.5,"code":404}"#,
            "code",
        ),
        ("PUT", "/faults/errors/fly", r#"{"rate":0.5}"#, "verb"),
        ("PUT", "/faults/latency", r#"{"millis":"soon"}"#, "millis"),
        ("POST", "/faults/expire-watches", r#"{}"#, "count"),
        ("PUT", "/faults/latency", "not json", "invalid JSON"),
    ] {
        let (code, text) = http(&address, &token, method, path, body);
        assert_eq!(code, 400, "{method} {path} {body}: {text}");
        let message = json(&text)["message"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        assert!(
            message.starts_with(field),
            "{method} {path} {body}: {message}"
        );
    }

    let (code, body) = http(
        &address,
        &token,
        "POST",
        "/faults/expire-watches",
        r#"{"count":3}"#,
    );
    assert_eq!(
        (code, json(&body)["expireWatches"].clone()),
        (200, 3.into())
    );
    let (code, body) = http(
        &address,
        &token,
        "PUT",
        "/faults/latency",
        r#"{"millis":20}"#,
    );
    assert_eq!(
        (code, json(&body)["latencyMillis"].clone()),
        (200, 20.into())
    );
    assert_eq!(
        http(&address, &token, "POST", "/faults/drop-watches", "").0,
        200
    );

    // Paused, requests wait; resumed, they go on.
    let (_, body) = http(&address, &token, "POST", "/faults/pause", "");
    assert_eq!(json(&body)["paused"], true);
    let out = kubectl(
        &dev,
        &["get", "namespace", "default", "--request-timeout=1s"],
    );
    assert!(!out.status.success());
    let (_, body) = http(&address, &token, "POST", "/faults/resume", "");
    assert_eq!(json(&body)["paused"], false);

    // Cleared, everything works again.
    let (code, body) = http(&address, &token, "DELETE", "/faults", "");
    assert_eq!(code, 200, "{body}");
    assert_eq!(json(&body)["errors"], serde_json::json!({}));
    assert_eq!(json(&body)["expireWatches"], 0);
    ok(&dev, &["get", "configmaps"]);
}

fn wait_for(
    dev: &Dev,
    what: &str,
    timeout: Duration,
    args: &[&str],
    done: impl Fn(&str) -> bool,
) -> String {
    let deadline = Instant::now() + timeout;
    loop {
        let out = kubectl(dev, args);
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        if out.status.success() && done(&text) {
            return text;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}; last: {text} {}",
            String::from_utf8_lossy(&out.stderr)
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// The one test that waits for the wall clock: a `* * * * *` workflow is triggered at the
/// next minute (at most a minute away).
#[test]
fn the_operator_in_charon_dev_runs_workflows_on_the_clock() {
    let dev = start_with(&[], "operator");
    let manifest =
        std::env::temp_dir().join(format!("charon-dev-test-{}-wf.yaml", std::process::id()));
    std::fs::write(
        &manifest,
        r#"apiVersion: charon.dev/v1alpha1
kind: Workflow
metadata: {name: every-minute}
spec:
  schedule: "* * * * *"
  template:
    image: busybox
    command: ["sh", "-c", "echo partition $CHARON_PARAMETER"]
---
apiVersion: charon.dev/v1alpha1
kind: Workflow
metadata: {name: fatal}
spec:
  schedule: "* * * * *"
  template:
    image: busybox
    command: ["sh", "-c", "exit 50"]
---
apiVersion: charon.dev/v1alpha1
kind: Workflow
metadata: {name: no-command}
spec:
  schedule: "* * * * *"
  template: {image: busybox}
---
apiVersion: charon.dev/v1alpha1
kind: Workflow
metadata: {name: bad-minute}
spec:
  schedule: "61 * * * *"
  template: {image: busybox, command: ["true"]}
"#,
    )
    .expect("manifest");
    ok(
        &dev,
        &["apply", "-f", manifest.to_str().expect("utf-8 path")],
    );
    let message = wait_for(
        &dev,
        "Valid=False on bad-minute",
        Duration::from_secs(20),
        &[
            "get",
            "cwf",
            "bad-minute",
            "-o",
            "jsonpath={.status.conditions[?(@.type==\"Valid\")].message}",
        ],
        |m| !m.is_empty(),
    );
    assert!(message.starts_with("spec.schedule: "), "{message}");

    let jsonpath = "jsonpath={range .items[?(@.spec.workflow==\"every-minute\")]}{.metadata.name} {.spec.parameter} {.status.state} {.status.job}{\"\\n\"}{end}";
    let line = wait_for(
        &dev,
        "the every-minute instance to be Done",
        Duration::from_secs(90),
        &["get", "cwfi", "-o", jsonpath],
        |t| t.lines().any(|l| l.split(' ').nth(2) == Some("Done")),
    );
    let done = line
        .lines()
        .find(|l| l.split(' ').nth(2) == Some("Done"))
        .expect("a done line");
    let fields: Vec<&str> = done.split(' ').collect();
    let (parameter, job) = (fields[1], fields[3]);
    let log = ok(&dev, &["logs", &format!("job/{job}")]);
    assert_eq!(log.trim(), format!("partition {parameter}"));

    let errors = wait_for(
        &dev,
        "the fatal instance to end in Error",
        Duration::from_secs(30),
        &[
            "get",
            "cwfi",
            "-o",
            "jsonpath={range .items[?(@.spec.workflow==\"fatal\")]}{.metadata.name} {.status.state}{\"\\n\"}{end}",
        ],
        |t| t.lines().any(|l| l.ends_with(" Error")),
    );
    let instance = errors
        .lines()
        .find(|l| l.ends_with(" Error"))
        .and_then(|l| l.split(' ').next())
        .expect("instance")
        .to_string();
    let jobs = ok(
        &dev,
        &[
            "get",
            "jobs",
            "-l",
            &format!("charon.dev/instance={instance}"),
            "-o",
            "name",
        ],
    );
    assert_eq!(jobs.lines().count(), 1, "{jobs}");

    // A container without a command cannot start under the embedded kubelet: an immediate
    // Error after one Job, saying why, rather than exit code 128 retried at full cost.
    let errors = wait_for(
        &dev,
        "the no-command instance to end in Error",
        Duration::from_secs(30),
        &[
            "get",
            "cwfi",
            "-o",
            "jsonpath={range .items[?(@.spec.workflow==\"no-command\")]}{.metadata.name} {.status.state} {.status.tries} {.status.message}{\"\\n\"}{end}",
        ],
        |t| t.lines().any(|l| l.split(' ').nth(1) == Some("Error")),
    );
    let line = errors
        .lines()
        .find(|l| l.split(' ').nth(1) == Some("Error"))
        .expect("an Error line");
    assert!(line.contains(" Error 1 "), "one attempt: {line}");
    assert!(
        line.contains("the embedded kubelet runs commands, not image entrypoints"),
        "{line}"
    );

    // The next trigger reads as a time in the default view (a date column would say
    // `<invalid>` for any time in the future).
    let table = ok(&dev, &["get", "cwf", "every-minute"]);
    assert!(
        table.lines().next().unwrap_or_default().contains("NEXT AT"),
        "{table}"
    );
    let row = table.lines().nth(1).unwrap_or_default();
    assert!(!row.contains("<invalid>"), "{table}");
    assert!(
        row.split_whitespace()
            .any(|cell| chrono::DateTime::parse_from_rfc3339(cell)
                .is_ok_and(|t| t > chrono::Utc::now() - chrono::Duration::minutes(1))),
        "{table}"
    );

    // The live log told the same story, one line per change.
    let log = dev.output();
    let lines: Vec<Vec<&str>> = log
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    let said = |name: &str, state: &str| {
        lines
            .iter()
            .any(|words| words.get(1) == Some(&name) && words.get(2) == Some(&state))
    };
    let finished = done.split(' ').next().expect("instance name");
    assert!(said(finished, "Queued") && said(finished, "Done"), "{log}");
    // Every change, also those recorded in the same status write as the run's end.
    assert!(
        said(finished, "Prepare") && said(finished, "Submitting"),
        "{log}"
    );
    assert!(said(&instance, "Error"), "{log}");
    assert!(said("workflow/bad-minute", "Invalid"), "{log}");
    assert!(
        log.lines()
            .any(|l| l.contains("workflow/bad-minute") && l.contains("spec.schedule: ")),
        "{log}"
    );
    assert!(
        !said("workflow/every-minute", "Valid"),
        "valid from the start: {log}"
    );
    let _ = std::fs::remove_file(&manifest);
}

/// `charon` itself (the user commands) against `charon dev`, with `env` added.
fn charon(dev: &Dev, env: &[(&str, &str)], args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_charon"))
        .args(args)
        .arg("--kubeconfig")
        .arg(&dev.kubeconfig)
        .env_remove("CHARON_LOG_STORE")
        .envs(env.iter().copied())
        .output()
        .expect("charon runs")
}

/// SPEC §11 under `charon dev`, whose default log store is a directory under its state
/// directory: two failed attempts and a success, all three logs read back by `charon logs
/// --all` once their Jobs and pods are deleted.
#[test]
fn charon_dev_archives_every_attempts_log_under_its_state_directory() {
    let dev = start_with(&[], "logs");
    let manifest = dev.state.with_extension("flaky.yaml");
    std::fs::write(
        &manifest,
        r#"apiVersion: charon.dev/v1alpha1
kind: Workflow
metadata: {name: flaky}
spec:
  schedule: "@hourly"
  suspend: true
  template:
    image: busybox
    command: ["sh", "-c", "echo attempt $CHARON_EXECUTION_TRIES; [ $CHARON_EXECUTION_TRIES -ge 2 ]"]
"#,
    )
    .expect("manifest");
    ok(
        &dev,
        &["apply", "-f", manifest.to_str().expect("utf-8 path")],
    );
    let _ = std::fs::remove_file(&manifest);
    let out = charon(&dev, &[], &["trigger", "flaky", "2024-01-01T00"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let name = "flaky-2024-01-01t00";
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let line = ok(
            &dev,
            &[
                "get",
                "cwfi",
                name,
                "-o",
                "jsonpath={.status.state} {.status.tries} {.metadata.annotations}",
            ],
        );
        if line.starts_with("Done ") {
            break;
        }
        // Skip each retry's delay, as a user would.
        if line.starts_with("Queued ")
            && !line.starts_with("Queued 0")
            && !line.contains("retry-now")
        {
            let _ = charon(&dev, &[], &["retry", name]);
        }
        assert!(Instant::now() < deadline, "not Done in time: {line}");
        std::thread::sleep(Duration::from_millis(200));
    }
    wait_for(
        &dev,
        "every attempt to be archived",
        Duration::from_secs(30),
        &[
            "get",
            "cwfi",
            name,
            "-o",
            "jsonpath={.status.attempts[*].archived}",
        ],
        |t| t.trim() == "true true true",
    );
    ok(
        &dev,
        &[
            "delete",
            "jobs",
            "-l",
            &format!("charon.dev/instance={name}"),
            "--wait",
        ],
    );
    wait_for(
        &dev,
        "the pods to be gone",
        Duration::from_secs(30),
        &[
            "get",
            "pods",
            "-l",
            &format!("charon.dev/instance={name}"),
            "-o",
            "name",
        ],
        |t| t.trim().is_empty(),
    );
    let printed = dev.output();
    let store = printed
        .lines()
        .find_map(|l| l.split("export CHARON_LOG_STORE=").nth(1))
        .map(|s| s.trim_end_matches(')').to_string())
        .unwrap_or_else(|| panic!("no log store line in: {printed}"));
    let state = std::path::absolute(&dev.state).expect("absolute");
    assert!(
        store.starts_with("file:///") && store.contains(state.to_str().expect("utf-8")),
        "{store}"
    );
    let reasons = ok(
        &dev,
        &[
            "get",
            "cwfi",
            name,
            "-o",
            "jsonpath={range .status.attempts[*]}{.reason}{\"\\n\"}{end}",
        ],
    );
    let reasons: Vec<&str> = reasons.lines().collect();
    assert_eq!(reasons.len(), 3, "{reasons:?}");
    let out = charon(
        &dev,
        &[("CHARON_LOG_STORE", &store)],
        &["logs", "--all", name],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let expected = format!(
        "== attempt 1 (exit 1, reason {}) ==\nattempt 0\n== attempt 2 (exit 1, reason {}) ==\nattempt 1\n== attempt 3 (exit 0, reason {}) ==\nattempt 2\n",
        reasons[0], reasons[1], reasons[2]
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), expected);
}

/// SPEC §14 as a user runs it: `charon dev --apply config/examples/` runs the word pipeline and
/// the task array with the launcher built beside `charon`, and `charon logs --step` shows each
/// step of the pipeline.
#[test]
fn charon_dev_runs_the_example_pipeline_and_array() {
    let dev = start_with(&["--apply", "config/examples/"], "pipelines");
    for workflow in ["word-pipeline", "task-array"] {
        let out = charon(&dev, &[], &["trigger", workflow, "2024-01-01T00:00"]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    for name in [
        "word-pipeline-2024-01-01t00-00-00z",
        "task-array-2024-01-01t00-00-00z",
    ] {
        wait_for(
            &dev,
            &format!("{name} to be Done"),
            Duration::from_secs(60),
            &["get", "cwfi", name, "-o", "jsonpath={.status.state}"],
            |t| t == "Done",
        );
    }
    let step = |s: &str| {
        let out = charon(
            &dev,
            &[],
            &["logs", "word-pipeline-2024-01-01t00-00-00z", "--step", s],
        );
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::to_string)
            .collect::<Vec<_>>()
    };
    let (words, upper, reverse) = (step("words"), step("upper"), step("reverse"));
    assert_eq!(words.len(), 3, "{words:?}");
    let upper_want: Vec<String> = words.iter().map(|w| w.to_uppercase()).collect();
    assert_eq!(upper, upper_want);
    let reverse_want: Vec<String> = upper.iter().map(|w| w.chars().rev().collect()).collect();
    assert_eq!(reverse, reverse_want);
    // The same log is the step container's, as kubectl shows it.
    let pod = ok(
        &dev,
        &[
            "get",
            "pods",
            "-l",
            "charon.dev/instance=word-pipeline-2024-01-01t00-00-00z",
            "-o",
            "jsonpath={.items[0].metadata.name}",
        ],
    );
    let from_kubectl = ok(&dev, &["logs", &pod, "-c", "upper"]);
    assert_eq!(from_kubectl.lines().collect::<Vec<_>>(), upper);
    let tasks = ok(
        &dev,
        &[
            "get",
            "cwfi",
            "task-array-2024-01-01t00-00-00z",
            "-o",
            "jsonpath={.status.array.succeeded}",
        ],
    );
    assert_eq!(tasks, "[0,10,20]");
    // Each task's log, by id, from the archive.
    let out = charon(&dev, &[], &["logs", "task-array-2024-01-01t00-00-00z"]);
    let logs = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for id in [0, 10, 20] {
        assert!(
            logs.contains(&format!("== task {id} ==\ntask {id} of 3 (0..20 by 10)")),
            "{logs}"
        );
    }
}
