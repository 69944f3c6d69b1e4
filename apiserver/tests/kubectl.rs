//! Drives the embedded server with the real `kubectl`, as a person would: apply a CRD and
//! custom objects, read them back as tables, JSON and JSONPath, label, patch, apply
//! server-side, delete, and see invalid objects refused in the real server's words.

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};

use charon_apiserver::{ApiServer, Config, RunningServer, write_kubeconfig};

const CRD: &str = r#"
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: gizmos.demo.test
spec:
  group: demo.test
  scope: Namespaced
  names: {plural: gizmos, singular: gizmo, kind: Gizmo, shortNames: [gz]}
  versions:
  - name: v1
    served: true
    storage: true
    subresources: {status: {}}
    additionalPrinterColumns:
    - {name: Size, type: integer, jsonPath: .spec.size}
    - {name: Color, type: string, jsonPath: .spec.color}
    - {name: Age, type: date, jsonPath: .metadata.creationTimestamp}
    schema:
      openAPIV3Schema:
        type: object
        properties:
          spec:
            type: object
            required: [size]
            properties:
              size: {type: integer, minimum: 1, maximum: 10}
              color: {type: string, enum: [red, blue], default: red}
          status:
            type: object
            properties:
              phase: {type: string}
"#;

/// A server plus a kubeconfig and a private discovery cache, so that kubectl never reuses
/// what it learnt from another server on the same port.
struct Cluster {
    runtime: tokio::runtime::Runtime,
    server: Option<RunningServer>,
    dir: PathBuf,
}

impl Cluster {
    fn start() -> Self {
        let runtime = tokio::runtime::Runtime::new().expect("runtime");
        let server = runtime
            .block_on(ApiServer::start(Config::default()))
            .expect("server starts");
        let dir = std::env::temp_dir().join(format!(
            "charon-apiserver-kubectl-{}-{}",
            std::process::id(),
            server.address().port()
        ));
        std::fs::create_dir_all(&dir).expect("temp dir");
        write_kubeconfig(&dir.join("kubeconfig"), &server.url()).expect("kubeconfig");
        Cluster {
            runtime,
            server: Some(server),
            dir,
        }
    }

    fn run(&self, args: &[&str], stdin: Option<&str>) -> Output {
        let kubeconfig = self.dir.join("kubeconfig");
        let cache = self.dir.join("cache");
        let mut child = Command::new("kubectl")
            .arg(format!("--kubeconfig={}", kubeconfig.display()))
            .arg(format!("--cache-dir={}", cache.display()))
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("kubectl runs");
        let mut input = child.stdin.take().expect("stdin");
        if let Some(text) = stdin {
            input.write_all(text.as_bytes()).expect("write stdin");
        }
        drop(input);
        child.wait_with_output().expect("kubectl finishes")
    }

    /// Runs kubectl and returns its stdout, failing the test if it fails.
    fn ok(&self, args: &[&str]) -> String {
        self.ok_with(args, None)
    }

    fn ok_with(&self, args: &[&str], stdin: Option<&str>) -> String {
        let out = self.run(args, stdin);
        assert!(
            out.status.success(),
            "kubectl {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Runs kubectl expecting failure and returns its stderr.
    fn fails(&self, args: &[&str], stdin: Option<&str>) -> String {
        let out = self.run(args, stdin);
        assert!(
            !out.status.success(),
            "kubectl {args:?} should have failed: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        String::from_utf8_lossy(&out.stderr).into_owned()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if let Some(server) = self.server.take() {
            self.runtime.block_on(server.shutdown());
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn kubectl_available() -> bool {
    let found = Command::new("kubectl")
        .arg("version")
        .arg("--client")
        .output()
        .is_ok_and(|o| o.status.success());
    if !found {
        eprintln!("kubectl is not on PATH; skipping");
    }
    found
}

fn gizmo(name: &str, spec: &str) -> String {
    format!("apiVersion: demo.test/v1\nkind: Gizmo\nmetadata:\n  name: {name}\nspec: {spec}\n")
}

#[test]
fn kubectl_manages_custom_objects() {
    if !kubectl_available() {
        return;
    }
    let k = Cluster::start();
    let out = k.ok(&["version", "-o", "json"]);
    assert!(out.contains("\"gitVersion\": \"v1.33.0\""), "{out}");

    let out = k.ok_with(&["apply", "-f", "-"], Some(CRD));
    assert_eq!(
        out.trim(),
        "customresourcedefinition.apiextensions.k8s.io/gizmos.demo.test created"
    );
    let out = k.ok(&[
        "get",
        "crd",
        "gizmos.demo.test",
        "-o",
        "jsonpath={.status.conditions[?(@.type==\"Established\")].status}",
    ]);
    assert_eq!(out, "True");
    let out = k.ok(&["api-resources", "--api-group=demo.test"]);
    assert!(out.contains("gizmos") && out.contains("gz"), "{out}");

    let out = k.ok_with(&["apply", "-f", "-"], Some(&gizmo("g1", "{size: 3}")));
    assert_eq!(out.trim(), "gizmo.demo.test/g1 created");

    // Defaults are applied, and the printer columns make the table.
    let out = k.ok(&["get", "gizmos"]);
    let lines: Vec<Vec<&str>> = out
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(lines[0], ["NAME", "SIZE", "COLOR", "AGE"], "{out}");
    assert_eq!(lines[1][..3], ["g1", "3", "red"], "{out}");
    let json: serde_json::Value =
        serde_json::from_str(&k.ok(&["get", "gz", "g1", "-o", "json"])).expect("json");
    assert_eq!(json["spec"], serde_json::json!({"size": 3, "color": "red"}));
    assert_eq!(json["metadata"]["generation"], 1);

    // Labels, annotations and patches.
    k.ok(&["label", "gz", "g1", "tier=gold"]);
    k.ok(&["annotate", "gz", "g1", "note=hello"]);
    assert_eq!(
        k.ok(&["get", "gz", "-l", "tier in (gold,silver)", "-o", "name"])
            .trim(),
        "gizmo.demo.test/g1"
    );
    assert_eq!(k.ok(&["get", "gz", "-l", "tier!=gold", "-o", "name"]), "");
    k.ok(&[
        "patch",
        "gz",
        "g1",
        "--type=merge",
        "-p",
        r#"{"spec":{"size":5}}"#,
    ]);
    k.ok(&[
        "patch",
        "gz",
        "g1",
        "--type=json",
        "-p",
        r#"[{"op":"replace","path":"/spec/color","value":"blue"}]"#,
    ]);
    let out = k.ok(&[
        "get",
        "gz",
        "g1",
        "-o",
        "jsonpath={.spec.size} {.spec.color} {.metadata.generation} {.metadata.annotations.note}",
    ]);
    assert_eq!(out, "5 blue 3 hello");

    // The patches made kubectl-patch the owner of what they changed: applying another
    // size conflicts (the same color does not) until the applier forces it.
    let err = k.fails(
        &["apply", "--server-side", "-f", "-"],
        Some(&gizmo("g1", "{size: 7, color: blue}")),
    );
    assert!(
        err.contains("Apply failed with 1 conflict: conflict with \"kubectl-patch\": .spec.size"),
        "{err}"
    );
    let managers = k.ok(&[
        "get",
        "gz",
        "g1",
        "-o",
        "jsonpath={range .metadata.managedFields[*]}{.manager}:{.operation} {end}",
    ]);
    assert!(
        managers.contains("kubectl-client-side-apply:Update")
            && managers.contains("kubectl-patch:Update"),
        "{managers}"
    );
    let out = k.ok_with(
        &["apply", "--server-side", "--force-conflicts", "-f", "-"],
        Some(&gizmo("g1", "{size: 7, color: blue}")),
    );
    assert_eq!(out.trim(), "gizmo.demo.test/g1 serverside-applied");
    assert_eq!(
        k.ok(&["get", "gz", "g1", "-o", "jsonpath={.spec.size}"]),
        "7"
    );

    // Invalid objects are refused in the real server's words.
    let err = k.fails(
        &["apply", "-f", "-"],
        Some(&gizmo("bad", "{size: \"three\", color: green}")),
    );
    assert!(
        err.contains(
            "The Gizmo \"bad\" is invalid: \n\
             * spec.color: Unsupported value: \"green\": supported values: \"red\", \"blue\"\n\
             * spec.size: Invalid value: \"string\": spec.size in body must be of type integer: \"string\""
        ),
        "{err}"
    );
    let err = k.fails(&["create", "-f", "-"], Some(&gizmo("bad", "{size: 0}")));
    assert!(
        err.contains(
            "The Gizmo \"bad\" is invalid: spec.size: Invalid value: 0: spec.size in body should be greater than or equal to 1"
        ),
        "{err}"
    );
    // kubectl asks for strict field validation, so unknown fields are refused rather than
    // dropped.
    let err = k.fails(
        &["apply", "-f", "-"],
        Some(&gizmo("extra", "{size: 1, shape: round}")),
    );
    assert!(
        err.contains(
            "Gizmo in version \"v1\" cannot be handled as a Gizmo: strict decoding error: unknown field \"spec.shape\""
        ),
        "{err}"
    );
    k.ok_with(
        &["apply", "--validate=false", "-f", "-"],
        Some(&gizmo("extra", "{size: 1, shape: round}")),
    );
    assert_eq!(
        k.ok(&["get", "gz", "extra", "-o", "jsonpath={.spec}"]),
        r#"{"color":"red","size":1}"#
    );

    let out = k.ok_with(
        &["apply", "--dry-run=server", "-f", "-"],
        Some(&gizmo("dry", "{size: 2}")),
    );
    assert_eq!(out.trim(), "gizmo.demo.test/dry created (server dry run)");
    k.fails(&["get", "gz", "dry"], None);

    let out = k.ok(&["delete", "gz", "g1"]);
    assert_eq!(out.trim(), "gizmo.demo.test \"g1\" deleted");
    let err = k.fails(&["get", "gz", "g1"], None);
    assert_eq!(
        err.trim(),
        "Error from server (NotFound): gizmos.demo.test \"g1\" not found"
    );
}

#[test]
fn kubectl_manages_built_in_kinds() {
    if !kubectl_available() {
        return;
    }
    let k = Cluster::start();
    k.ok_with(
        &["create", "-f", "-"],
        Some("apiVersion: v1\nkind: Namespace\nmetadata: {name: team-a}\n"),
    );
    let config_map = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: settings, namespace: team-a}\ndata: {mode: fast}\n";
    k.ok_with(&["apply", "-f", "-"], Some(config_map));
    assert_eq!(
        k.ok(&[
            "get",
            "cm",
            "settings",
            "-n",
            "team-a",
            "-o",
            "jsonpath={.data.mode}"
        ]),
        "fast"
    );
    let out = k.ok(&["get", "configmaps", "-A"]);
    assert!(out.starts_with("NAMESPACE"), "{out}");
    assert!(out.contains("team-a") && out.contains("settings"), "{out}");
    let err = k.fails(&["create", "-f", "-"], Some(config_map));
    assert_eq!(
        err.trim(),
        "Error from server (AlreadyExists): error when creating \"STDIN\": configmaps \"settings\" already exists"
    );
    let err = k.fails(
        &["create", "-f", "-"],
        Some("apiVersion: v1\nkind: Namespace\nmetadata: {name: Team_B}\n"),
    );
    assert!(
        err.contains(
            "The Namespace \"Team_B\" is invalid: metadata.name: Invalid value: \"Team_B\": a lowercase RFC 1123 label must consist of"
        ),
        "{err}"
    );
    // Typed commands send protobuf bodies.
    k.ok(&["create", "namespace", "team-c"]);
    k.ok(&[
        "create",
        "configmap",
        "flags",
        "-n",
        "team-c",
        "--from-literal=debug=true",
    ]);
    k.ok(&[
        "create",
        "secret",
        "generic",
        "token",
        "--from-literal=t=abc",
    ]);
    k.ok(&["create", "serviceaccount", "robot"]);
    k.ok(&[
        "create",
        "job",
        "hello",
        "--image=busybox",
        "--",
        "echo",
        "hi",
    ]);
    assert_eq!(
        k.ok(&[
            "get",
            "cm",
            "flags",
            "-n",
            "team-c",
            "-o",
            "jsonpath={.data.debug}"
        ]),
        "true"
    );
    assert_eq!(
        k.ok(&["get", "secret", "token", "-o", "jsonpath={.type} {.data.t}"]),
        "Opaque YWJj"
    );
    assert_eq!(
        k.ok(&[
            "get",
            "job",
            "hello",
            "-o",
            "jsonpath={.spec.template.spec.containers[0].image} {.spec.template.spec.containers[0].command}"
        ]),
        r#"busybox ["echo","hi"]"#
    );
    let err = k.fails(&["create", "configmap", "flags", "-n", "team-c"], None);
    assert_eq!(
        err.trim(),
        "error: failed to create configmap: configmaps \"flags\" already exists"
    );
    let long = "j".repeat(64);
    let job = |name: &str| {
        format!(
            "apiVersion: batch/v1\nkind: Job\nmetadata: {{name: {name}}}\nspec:\n  template:\n    spec:\n      restartPolicy: Never\n      containers: [{{name: main, image: busybox}}]\n"
        )
    };
    let err = k.fails(&["create", "-f", "-"], Some(&job(&long)));
    assert!(
        err.contains(&format!(
            "The Job \"{long}\" is invalid: spec.template.labels: Invalid value: \"{long}\": must be no more than 63 characters"
        )),
        "{err}"
    );
    k.ok_with(&["create", "-f", "-"], Some(&job("short")));
    assert_eq!(
        k.ok(&["get", "jobs", "-o", "name"]),
        "job.batch/hello\njob.batch/short\n"
    );
    // Re-applying a Pod sends a strategic merge patch: containers merge by name.
    let pod = |image: &str| {
        format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: web}}\nspec:\n  containers:\n  - {{name: main, image: '{image}', command: [sleep, '3600']}}\n  - {{name: side, image: envoy}}\n"
        )
    };
    k.ok_with(&["apply", "-f", "-"], Some(&pod("busybox:1")));
    let out = k.ok_with(&["apply", "-f", "-"], Some(&pod("busybox:2")));
    assert_eq!(out.trim(), "pod/web configured");
    k.ok(&[
        "patch",
        "pod",
        "web",
        "-p",
        r#"{"metadata":{"labels":{"tier":"front"}}}"#,
    ]);
    let json: serde_json::Value =
        serde_json::from_str(&k.ok(&["get", "pod", "web", "-o", "json"])).expect("json");
    let containers = &json["spec"]["containers"];
    assert_eq!(containers[0]["image"], "busybox:2");
    assert_eq!(
        containers[0]["command"],
        serde_json::json!(["sleep", "3600"])
    );
    assert_eq!(containers[1]["name"], "side");
    assert_eq!(json["metadata"]["labels"]["tier"], "front");
    assert!(!json.to_string().contains("$setElementOrder"), "{json}");

    // Built-in kinds get their own columns, and `all` covers pods and jobs.
    let out = k.ok(&["get", "secret", "token"]);
    let row: Vec<&str> = out
        .lines()
        .nth(1)
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    assert!(out.starts_with("NAME    TYPE     DATA   AGE"), "{out}");
    assert_eq!(row[..3], ["token", "Opaque", "1"], "{out}");
    let out = k.ok(&["get", "all"]);
    assert!(
        out.contains("job.batch/hello") && out.contains("COMPLETIONS"),
        "{out}"
    );
    assert!(out.contains("pod/web") && out.contains("READY"), "{out}");

    k.ok(&["delete", "namespace", "team-a"]);
    let err = k.fails(&["get", "namespace", "team-a"], None);
    assert!(err.contains("namespaces \"team-a\" not found"), "{err}");
    // Its contents went with it.
    let left = k.ok(&["get", "cm", "-A", "-o", "name"]);
    assert!(!left.contains("configmap/settings"), "{left}");
}

#[test]
fn kubectl_watches_with_one_header() {
    use std::io::{BufRead, BufReader};
    use std::time::{Duration, Instant};

    if !kubectl_available() {
        return;
    }
    let k = Cluster::start();
    k.ok(&["create", "configmap", "first"]);
    let mut child = Command::new("kubectl")
        .arg(format!(
            "--kubeconfig={}",
            k.dir.join("kubeconfig").display()
        ))
        .arg(format!("--cache-dir={}", k.dir.join("cache").display()))
        .args(["get", "configmaps", "--watch", "--output-watch-events"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("kubectl runs");
    let stdout = child.stdout.take().expect("stdout");
    let (lines_tx, lines) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if lines_tx.send(line).is_err() {
                break;
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut seen = Vec::new();
    let wait_for = |wanted: &str, seen: &mut Vec<String>| {
        while !seen.iter().any(|l: &String| l.contains(wanted)) {
            let left = deadline.saturating_duration_since(Instant::now());
            match lines.recv_timeout(left) {
                Ok(line) => seen.push(line),
                Err(_) => panic!("no {wanted:?} from kubectl get --watch; saw {seen:?}"),
            }
        }
    };
    wait_for("first", &mut seen);
    k.ok(&["create", "configmap", "second"]);
    wait_for("second", &mut seen);
    k.ok(&["delete", "configmap", "first"]);
    wait_for("DELETED", &mut seen);
    let _ = child.kill();
    let _ = child.wait();
    let rows: Vec<Vec<&str>> = seen
        .iter()
        .map(|l| l.split_whitespace().take(2).collect())
        .collect();
    assert_eq!(
        rows,
        [
            vec!["EVENT", "NAME"],
            vec!["ADDED", "first"],
            vec!["ADDED", "second"],
            vec!["DELETED", "first"]
        ],
        "{seen:?}"
    );
}

/// Polls kubectl until `check` accepts its output.
fn poll(k: &Cluster, args: &[&str], what: &str, check: impl Fn(&str) -> bool) -> String {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let out = k.run(args, None);
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        if out.status.success() && check(&text) {
            return text;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for {what}: {text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

#[test]
fn kubectl_runs_jobs_reads_logs_and_cascades_deletes() {
    if !kubectl_available() {
        return;
    }
    let k = Cluster::start();
    k.ok(&[
        "create",
        "job",
        "hello",
        "--image=busybox",
        "--",
        "sh",
        "-c",
        "echo hello; echo world >&2",
    ]);
    k.ok(&[
        "wait",
        "--for=condition=complete",
        "job/hello",
        "--timeout=20s",
    ]);
    assert_eq!(k.ok(&["logs", "job/hello"]), "hello\nworld\n");
    assert_eq!(k.ok(&["logs", "job/hello", "--tail=1"]), "world\n");
    let out = k.ok(&["describe", "job", "hello"]);
    assert!(
        out.contains("0 Active (0 Ready) / 1 Succeeded / 0 Failed"),
        "{out}"
    );
    let events = out.split("Events:").nth(1).unwrap_or_default();
    assert!(
        events.contains("SuccessfulCreate") && events.contains("Created pod: hello-"),
        "{out}"
    );
    assert!(
        events.contains("Completed") && events.contains("Job completed"),
        "{out}"
    );
    let out = k.ok(&["describe", "pod", "-l", "job-name=hello"]);
    assert!(out.contains("Status:       Succeeded"), "{out}");
    assert!(out.contains("Started container hello"), "{out}");

    // Following streams lines as they come, until the container ends.
    k.ok(&[
        "create",
        "job",
        "ticker",
        "--image=busybox",
        "--",
        "sh",
        "-c",
        "for i in 1 2 3; do echo tick $i; sleep 0.2; done",
    ]);
    let out = k.ok(&["logs", "-f", "job/ticker", "--pod-running-timeout=20s"]);
    assert_eq!(out, "tick 1\ntick 2\ntick 3\n");

    // With two containers, a name is needed.
    let pod = "apiVersion: v1\nkind: Pod\nmetadata: {name: duo}\nspec:\n  containers:\n  - {name: main, image: busybox, command: [sh, -c, 'echo main; sleep 30']}\n  - {name: side, image: busybox, command: [sh, -c, 'echo side; sleep 30']}\n";
    k.ok_with(&["apply", "-f", "-"], Some(pod));
    poll(
        &k,
        &["get", "pod", "duo", "-o", "jsonpath={.status.phase}"],
        "duo to run",
        |s| s == "Running",
    );
    // kubectl picks the first container itself; the server wants a name.
    let err = k.fails(
        &["get", "--raw", "/api/v1/namespaces/default/pods/duo/log"],
        None,
    );
    assert_eq!(
        err.trim(),
        "Error from server (BadRequest): a container name must be specified for pod duo, choose one of: [main side]"
    );
    poll(&k, &["logs", "duo", "-c", "side"], "side's output", |s| {
        s == "side\n"
    });
    k.ok(&["delete", "pod", "duo", "--grace-period=1"]);

    // A foreground cascade deletes the pod before the Job.
    k.ok(&[
        "create",
        "job",
        "sleeper",
        "--image=busybox",
        "--",
        "sh",
        "-c",
        "trap 'sleep 0.3; exit 0' TERM; sleep 30 & wait",
    ]);
    poll(
        &k,
        &[
            "get",
            "pods",
            "-l",
            "job-name=sleeper",
            "-o",
            "jsonpath={.items[*].status.phase}",
        ],
        "the sleeper to run",
        |s| s == "Running",
    );
    let out = k.ok(&["delete", "job", "sleeper", "--cascade=foreground"]);
    assert_eq!(out.trim(), "job.batch \"sleeper\" deleted");
    assert_eq!(
        k.ok(&["get", "pods", "-l", "job-name=sleeper", "-o", "name"]),
        ""
    );
    let err = k.fails(&["get", "job", "sleeper"], None);
    assert!(err.contains("not found"), "{err}");
}

/// `kubectl get --sort-by` reads the objects from the Table rows (it asks for
/// `includeObject=Object`), and events get the columns the real server prints.
#[test]
fn kubectl_sorts_tables_and_shows_event_columns() {
    if !kubectl_available() {
        return;
    }
    let k = Cluster::start();
    k.ok_with(&["apply", "-f", "-"], Some(CRD));
    poll(&k, &["get", "gizmos"], "the gizmo type", |out| {
        !out.contains("the server doesn't have a resource type")
    });
    for (name, size) in [("b-middle", 5), ("a-large", 9), ("c-small", 2)] {
        k.ok_with(
            &["apply", "-f", "-"],
            Some(&gizmo(name, &format!("{{size: {size}}}"))),
        );
    }
    let out = k.ok(&["get", "gizmos", "--sort-by=.spec.size", "--no-headers"]);
    let names: Vec<&str> = out
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    assert_eq!(names, ["c-small", "b-middle", "a-large"], "{out}");

    let event = "apiVersion: v1\nkind: Event\nmetadata: {name: gizmo-resized, namespace: default}\n\
        involvedObject: {kind: Gizmo, name: a-large, namespace: default, apiVersion: demo.test/v1}\n\
        reason: Resized\nmessage: grown to nine\ntype: Normal\ncount: 3\n\
        source: {component: gizmo-controller}\n\
        firstTimestamp: \"2026-01-01T00:00:00Z\"\nlastTimestamp: \"2026-01-01T00:00:00Z\"\n";
    k.ok_with(&["create", "-f", "-"], Some(event));
    let out = k.ok(&["get", "events"]);
    let mut lines = out.lines();
    let header: Vec<&str> = lines
        .next()
        .unwrap_or_default()
        .split("  ")
        .map(str::trim)
        .filter(|c| !c.is_empty())
        .collect();
    assert_eq!(
        header,
        ["LAST SEEN", "TYPE", "REASON", "OBJECT", "MESSAGE"],
        "{out}"
    );
    let row = lines.next().unwrap_or_default();
    assert!(
        row.contains("Normal")
            && row.contains("Resized")
            && row.contains("gizmo/a-large")
            && row.contains("grown to nine"),
        "{out}"
    );
    let wide = k.ok(&["get", "events", "-o", "wide"]);
    assert!(
        wide.contains("SUBOBJECT")
            && wide.contains("gizmo-controller")
            && wide.contains("gizmo-resized"),
        "{wide}"
    );
}

/// Labels and annotations are checked on every kind, in the real server's words.
#[test]
fn kubectl_is_refused_invalid_labels_on_any_kind() {
    if !kubectl_available() {
        return;
    }
    let k = Cluster::start();
    let long = "v".repeat(64);
    let job = format!(
        "apiVersion: batch/v1\nkind: Job\nmetadata: {{name: labelled, labels: {{team: {long}}}}}\n\
         spec:\n  template:\n    spec:\n      restartPolicy: Never\n      containers: [{{name: main, image: busybox, command: [\"true\"]}}]\n"
    );
    let err = k.fails(&["create", "-f", "-"], Some(&job));
    assert!(
        err.contains(&format!(
            "The Job \"labelled\" is invalid: metadata.labels: Invalid value: \"{long}\": must be no more than 63 characters"
        )),
        "{err}"
    );
    k.ok_with(&["apply", "-f", "-"], Some(CRD));
    poll(&k, &["get", "gizmos"], "the gizmo type", |out| {
        !out.contains("the server doesn't have a resource type")
    });
    k.ok_with(&["apply", "-f", "-"], Some(&gizmo("plain", "{size: 1}")));
    let err = k.fails(&["label", "gizmo", "plain", "bad key!=x"], None);
    assert!(err.contains("bad key!"), "{err}");
    let err = k.fails(&["annotate", "gizmo", "plain", "a/b/c=x"], None);
    assert!(
        err.contains(
            "metadata.annotations: Invalid value: \"a/b/c\": a qualified name must consist of"
        ),
        "{err}"
    );
    k.ok(&["label", "gizmo", "plain", "example.com/tier=gold"]);
}

mod recorded;

/// Replays the recorded kubectl session (see `tests/recorded`) and compares every answer
/// with the real server's.
#[test]
fn kubectl_session_matches_the_real_server() {
    if !kubectl_available() {
        return;
    }
    let k = Cluster::start();
    let mut differences = Vec::new();
    for step in recorded::SESSION {
        let out = k.run(step.args, step.stdin);
        let printed = if step.succeeds {
            &out.stdout
        } else {
            &out.stderr
        };
        let printed = String::from_utf8_lossy(printed).trim().to_string();
        let same = match step.output {
            recorded::Answer::Exactly(text) => printed == text,
            recorded::Answer::StartsWith(text) => printed.starts_with(text),
        };
        if out.status.success() != step.succeeds || !same {
            differences.push(format!(
                "kubectl {}: exit {:?}, printed:\n{printed}\nstderr:\n{}",
                step.args.join(" "),
                out.status.code(),
                String::from_utf8_lossy(&out.stderr)
            ));
        }
    }
    assert!(differences.is_empty(), "{}", differences.join("\n\n"));
}

/// The header cells of `kubectl get` output (columns are two or more spaces apart).
fn header(out: &str) -> Vec<String> {
    out.lines()
        .next()
        .unwrap_or_default()
        .split("  ")
        .map(str::trim)
        .filter(|c| !c.is_empty())
        .map(str::to_string)
        .collect()
}

/// Claims, volumes and classes print the columns `kubectl get pvc`, `pv` and `sc` show on a
/// 1.33 cluster with the local-path provisioner.
#[test]
fn kubectl_shows_claims_volumes_and_classes_as_the_real_server() {
    if !kubectl_available() {
        return;
    }
    let k = Cluster::start();
    let claim = "apiVersion: v1\nkind: PersistentVolumeClaim\nmetadata: {name: data}\n\
        spec: {accessModes: [ReadWriteOnce], resources: {requests: {storage: 2Gi}}}\n";
    k.ok_with(&["apply", "-f", "-"], Some(claim));
    let out = poll(&k, &["get", "pvc"], "the claim to bind", |out| {
        out.contains("Bound")
    });
    assert_eq!(
        header(&out),
        [
            "NAME",
            "STATUS",
            "VOLUME",
            "CAPACITY",
            "ACCESS MODES",
            "STORAGECLASS",
            "VOLUMEATTRIBUTESCLASS",
            "AGE"
        ],
        "{out}"
    );
    let row: Vec<&str> = out
        .lines()
        .nth(1)
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    assert_eq!(row[0], "data", "{out}");
    assert_eq!(row[1], "Bound", "{out}");
    assert!(row[2].starts_with("pvc-"), "{out}");
    assert_eq!(&row[3..7], ["2Gi", "RWO", "standard", "<unset>"], "{out}");
    let wide = k.ok(&["get", "pvc", "-o", "wide"]);
    assert!(
        header(&wide).ends_with(&["AGE".to_string(), "VOLUMEMODE".to_string()]),
        "{wide}"
    );
    assert!(wide.contains("Filesystem"), "{wide}");

    let out = k.ok(&["get", "pv"]);
    assert_eq!(
        header(&out),
        [
            "NAME",
            "CAPACITY",
            "ACCESS MODES",
            "RECLAIM POLICY",
            "STATUS",
            "CLAIM",
            "STORAGECLASS",
            "VOLUMEATTRIBUTESCLASS",
            "REASON",
            "AGE"
        ],
        "{out}"
    );
    let row: Vec<&str> = out
        .lines()
        .nth(1)
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    assert_eq!(
        &row[1..8],
        [
            "2Gi",
            "RWO",
            "Delete",
            "Bound",
            "default/data",
            "standard",
            "<unset>"
        ],
        "{out}"
    );

    let out = k.ok(&["get", "sc"]);
    assert_eq!(
        header(&out),
        [
            "NAME",
            "PROVISIONER",
            "RECLAIMPOLICY",
            "VOLUMEBINDINGMODE",
            "ALLOWVOLUMEEXPANSION",
            "AGE"
        ],
        "{out}"
    );
    let row: Vec<&str> = out
        .lines()
        .nth(1)
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    assert_eq!(
        &row[..6],
        [
            "standard",
            "(default)",
            "rancher.io/local-path",
            "Delete",
            "Immediate",
            "false"
        ],
        "{out}"
    );

    // The claim's events, as `kubectl describe` lists them.
    let described = k.ok(&["describe", "pvc", "data"]);
    assert!(
        described.contains("ProvisioningSucceeded")
            && described.contains("Successfully provisioned volume pvc-"),
        "{described}"
    );
    k.ok(&["delete", "pvc", "data"]);
    poll(
        &k,
        &["get", "pv", "-o", "name"],
        "the volume to go",
        |out| out.trim().is_empty(),
    );
}
