//! The Helm chart (`charts/charon`) and the plain install manifest (`config/install/charon.yaml`):
//! strict lint, rendering with default and non-default values (which enforces
//! `values.schema.json`), validation of every rendered object against Kubernetes 1.33's schemas,
//! CRDs identical to `crds/`, the install manifest up to date, the operator pod in the restricted
//! Pod Security profile, least-privilege RBAC, and a server-side dry run of everything with the
//! real `kubectl` against `charon dev`.
//!
//! Needs `helm` (`$HELM`, else on `PATH`; `.ci/run` installs it with
//! `../shared/tools/get-helm.sh`), `kubernetes-validate` (pip) and `kubectl`; a missing tool
//! fails the tests rather than skipping them.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde::Deserialize;
use serde_yaml::Value;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");
const CHART: &str = "charts/charon";
const CUSTOM_VALUES: &str = "charts/charon/ci/custom-values.yaml";
const RELEASE_NAMESPACE: &str = "charon-system";

fn on_path(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|candidate| candidate.is_file())
}

/// A tool the tests need: `$env_var` when set, else `program` on `PATH`; panics naming how to
/// install it.
fn tool(env_var: &str, program: &str, install: &str) -> PathBuf {
    if let Some(path) = std::env::var_os(env_var).filter(|p| !p.is_empty()) {
        let path = PathBuf::from(path);
        assert!(
            path.is_file(),
            "{env_var}={} does not name a file; {install}",
            path.display()
        );
        return path;
    }
    on_path(program).unwrap_or_else(|| {
        panic!("`{program}` is required by tests/helm.rs and was found neither in ${env_var} nor on PATH; {install}")
    })
}

/// The `helm` binary: `$HELM`, else `helm` on `PATH`.
fn helm() -> PathBuf {
    tool(
        "HELM",
        "helm",
        "install it with `bash ../shared/tools/get-helm.sh \"$HOME/.local/bin\"` (as .ci/run does) and set HELM to the path it prints",
    )
}

fn kubernetes_validate() -> PathBuf {
    tool(
        "KUBERNETES_VALIDATE",
        "kubernetes-validate",
        "install it with `python3 -m pip install kubernetes-validate` (as .ci/run does)",
    )
}

fn output(command: &mut Command) -> Output {
    command
        .current_dir(ROOT)
        .output()
        .unwrap_or_else(|e| panic!("running {command:?}: {e}"))
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Runs helm with `args` in the repository root.
fn run_helm(args: &[&str]) -> Output {
    output(Command::new(helm()).args(args))
}

fn helm_ok(args: &[&str]) -> String {
    let out = run_helm(args);
    assert!(
        out.status.success(),
        "helm {args:?} failed:\n{}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    text(&out.stdout)
}

/// `helm template charon charts/charon --namespace charon-system` plus `extra` arguments.
fn render(extra: &[&str]) -> String {
    let mut args = vec![
        "template",
        "charon",
        CHART,
        "--namespace",
        RELEASE_NAMESPACE,
    ];
    args.extend_from_slice(extra);
    helm_ok(&args)
}

fn render_default() -> String {
    render(&[])
}

fn render_custom() -> String {
    render(&["--values", CUSTOM_VALUES])
}

/// The objects of a multi-document YAML stream (comment-only documents left out).
fn documents(yaml: &str) -> Vec<Value> {
    serde_yaml::Deserializer::from_str(yaml)
        .map(|doc| Value::deserialize(doc).expect("rendered YAML parses"))
        .filter(|doc| !doc.is_null())
        .collect()
}

fn str_of<'a>(v: &'a Value, path: &[&str]) -> &'a str {
    path.iter()
        .try_fold(v, |v, key| v.get(*key))
        .and_then(Value::as_str)
        .unwrap_or_default()
}

fn kind(doc: &Value) -> &str {
    str_of(doc, &["kind"])
}

fn name(doc: &Value) -> &str {
    str_of(doc, &["metadata", "name"])
}

fn of_kind<'a>(docs: &'a [Value], k: &str) -> Vec<&'a Value> {
    docs.iter().filter(|d| kind(d) == k).collect()
}

fn only<'a>(docs: &'a [Value], k: &str) -> &'a Value {
    match of_kind(docs, k).as_slice() {
        [one] => one,
        other => panic!("expected one {k}, found {}", other.len()),
    }
}

fn strings(v: Option<&Value>) -> Vec<String> {
    v.and_then(Value::as_sequence)
        .into_iter()
        .flatten()
        .map(|s| s.as_str().expect("a string").to_string())
        .collect()
}

/// A (group, resource, verb) permission; `resource` may name a subresource (`pods/log`).
pub type Permission = (String, String, String);

/// The permissions the Roles and ClusterRoles in `rendered` grant, by scope: `None` for
/// ClusterRoles, `Some(namespace)` for Roles.
pub fn rbac_permissions_by_scope(rendered: &str) -> BTreeMap<Option<String>, BTreeSet<Permission>> {
    let mut scopes: BTreeMap<Option<String>, BTreeSet<Permission>> = BTreeMap::new();
    for doc in documents(rendered) {
        let scope = match kind(&doc) {
            "ClusterRole" => None,
            "Role" => Some(str_of(&doc, &["metadata", "namespace"]).to_string()),
            _ => continue,
        };
        let granted = scopes.entry(scope).or_default();
        for rule in doc
            .get("rules")
            .and_then(Value::as_sequence)
            .into_iter()
            .flatten()
        {
            for group in strings(rule.get("apiGroups")) {
                for resource in strings(rule.get("resources")) {
                    for verb in strings(rule.get("verbs")) {
                        granted.insert((group.clone(), resource.clone(), verb));
                    }
                }
            }
        }
    }
    scopes
}

/// Every (group, resource, verb) the Roles and ClusterRoles in `rendered` grant, whatever the
/// scope: what to compare with the API calls the operator makes.
pub fn rbac_permissions(rendered: &str) -> BTreeSet<Permission> {
    rbac_permissions_by_scope(rendered)
        .into_values()
        .flatten()
        .collect()
}

fn permissions(spec: &[(&str, &[&str], &[&str])]) -> BTreeSet<Permission> {
    let mut set = BTreeSet::new();
    for (group, resources, verbs) in spec {
        for resource in *resources {
            for verb in *verbs {
                set.insert((group.to_string(), resource.to_string(), verb.to_string()));
            }
        }
    }
    set
}

/// What the operator does in the namespaces it watches.
fn workload_permissions() -> BTreeSet<Permission> {
    permissions(&[
        ("charon.dev", &["workflows"], &["list", "watch", "patch"]),
        (
            "charon.dev",
            &["workflowinstances"],
            &[
                "get", "list", "watch", "create", "update", "patch", "delete",
            ],
        ),
        (
            "charon.dev",
            &["backfills"],
            &["get", "list", "watch", "create"],
        ),
        ("charon.dev", &["quotas"], &["list", "watch"]),
        (
            "charon.dev",
            &[
                "workflows/status",
                "workflowinstances/status",
                "backfills/status",
                "quotas/status",
            ],
            &["update"],
        ),
        (
            "batch",
            &["jobs"],
            &["get", "list", "watch", "create", "patch", "delete"],
        ),
        ("", &["persistentvolumeclaims"], &["create", "delete"]),
        ("", &["pods"], &["list", "watch"]),
        ("", &["events"], &["create"]),
    ])
}

/// What an operator watching every namespace does besides: read the cluster-scoped Pools and
/// write their status.
fn pool_permissions() -> BTreeSet<Permission> {
    permissions(&[
        ("charon.dev", &["pools"], &["list", "watch"]),
        ("charon.dev", &["pools/status"], &["patch"]),
    ])
}

/// What the operator does besides with a log store: hold pods for their logs, read the logs,
/// release the pods and mark the attempts archived.
fn archive_permissions() -> BTreeSet<Permission> {
    permissions(&[
        ("charon.dev", &["workflowinstances/status"], &["patch"]),
        ("", &["pods"], &["get", "patch"]),
        ("", &["pods/log"], &["get"]),
    ])
}

/// The values that turn log archiving on.
const WITH_LOG_STORE: &[&str] = &["--set", "logStore.url=s3://charon-logs/prod"];

fn lease_permissions() -> BTreeSet<Permission> {
    permissions(&[(
        "coordination.k8s.io",
        &["leases"],
        &["get", "create", "update"],
    )])
}

/// A scratch directory, removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new(label: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("charon-helm-{label}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("temp dir");
        TempDir(dir)
    }

    fn write(&self, file: &str, contents: &str) -> PathBuf {
        let path = self.0.join(file);
        std::fs::write(&path, contents).expect("write temp file");
        path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("create dir");
    for entry in std::fs::read_dir(from).expect("read dir") {
        let entry = entry.expect("dir entry");
        let target = to.join(entry.file_name());
        if entry.file_type().expect("file type").is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).expect("copy file");
        }
    }
}

#[test]
fn chart_lints_strictly_with_default_and_custom_values() {
    for extra in [&[][..], &["--values", CUSTOM_VALUES][..]] {
        let mut args = vec!["lint", "--strict", CHART];
        args.extend_from_slice(extra);
        let out = helm_ok(&args);
        assert!(out.contains("0 chart(s) failed"), "{out}");
    }
}

#[test]
fn chart_app_version_is_the_crate_version() {
    let chart: Value = serde_yaml::from_str(
        &std::fs::read_to_string(Path::new(ROOT).join(CHART).join("Chart.yaml"))
            .expect("Chart.yaml"),
    )
    .expect("Chart.yaml parses");
    assert_eq!(str_of(&chart, &["apiVersion"]), "v2");
    assert_eq!(str_of(&chart, &["name"]), "charon");
    assert_eq!(str_of(&chart, &["appVersion"]), env!("CARGO_PKG_VERSION"));
    let deployment = only(&documents(&render_default()), "Deployment").clone();
    let image = str_of(
        &deployment["spec"]["template"]["spec"]["containers"][0],
        &["image"],
    )
    .to_string();
    assert!(
        image.ends_with(&format!(":{}", env!("CARGO_PKG_VERSION"))),
        "{image}"
    );
}

#[test]
fn a_broken_template_fails_lint() {
    let dir = TempDir::new("broken");
    let chart = dir.0.join("charon");
    copy_dir(&Path::new(ROOT).join(CHART), &chart);
    let service = chart.join("templates/service.yaml");
    let mut yaml = std::fs::read_to_string(&service).expect("service.yaml");
    yaml.push_str("  clusterIP: {{ .Values.metrics.port \n");
    std::fs::write(&service, yaml).expect("write service.yaml");
    let out = run_helm(&["lint", "--strict", chart.to_str().expect("utf-8 path")]);
    assert!(!out.status.success(), "lint passed a broken template");
    let report = text(&out.stdout) + &text(&out.stderr);
    assert!(
        report.contains("templates/service.yaml") && report.contains("1 chart(s) failed"),
        "{report}"
    );
}

#[test]
fn values_outside_the_schema_are_refused() {
    for (set, complaint) in [
        ("replicaCount=lots", "/replicaCount"),
        ("logFormat=xml", "/logFormat"),
        ("events=none", "/events"),
        ("logLevel=verbose", "/logLevel"),
        ("metrics.port=70000", "/metrics/port"),
        ("watchNamespaces[0]=Not_A_Namespace", "/watchNamespaces/0"),
        ("replicas=3", "replicas"),
        ("image.registry=example.com", "registry"),
    ] {
        let out = run_helm(&[
            "template",
            "charon",
            CHART,
            "--namespace",
            RELEASE_NAMESPACE,
            "--set",
            set,
        ]);
        let stderr = text(&out.stderr);
        assert!(!out.status.success(), "--set {set} was accepted");
        assert!(
            stderr.contains("values don't meet the specifications of the schema")
                && stderr.contains(complaint),
            "--set {set}: {stderr}"
        );
    }
    // Several writers without a Lease are refused by the templates themselves.
    let out = run_helm(&[
        "template",
        "charon",
        CHART,
        "--set",
        "leaderElection.enabled=false",
    ]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("replicaCount above 1 needs leaderElection.enabled"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn rendered_objects_are_valid_kubernetes_1_33_objects() {
    let validate = kubernetes_validate();
    let dir = TempDir::new("validate");
    for (label, rendered) in [
        ("default", render(&["--include-crds"])),
        ("custom", render(&["--values", CUSTOM_VALUES])),
        (
            "install",
            std::fs::read_to_string(Path::new(ROOT).join("config/install/charon.yaml"))
                .expect("config/install/charon.yaml"),
        ),
    ] {
        let file = dir.write(&format!("{label}.yaml"), &rendered);
        let out = output(
            Command::new(&validate)
                .args(["--kubernetes-version", "1.33.0", "--strict"])
                .arg(&file),
        );
        let report = text(&out.stdout) + &text(&out.stderr);
        assert!(out.status.success(), "{label}: {report}");
        // kubernetes-validate has no schema for the Prometheus Operator's ServiceMonitor: it
        // warns and moves on. Every other object must have been checked.
        let docs = documents(&rendered);
        let checked = docs.iter().filter(|d| kind(d) != "ServiceMonitor").count();
        assert_eq!(
            report.matches(" passed for resource ").count(),
            checked,
            "{label}: {report}"
        );
        assert!(!report.contains("ERROR"), "{label}: {report}");
    }
}

#[test]
fn chart_crds_are_the_generated_ones() {
    let generated = Path::new(ROOT).join("crds");
    let in_chart = Path::new(ROOT).join(CHART).join("crds");
    let names = |dir: &Path| -> BTreeSet<String> {
        std::fs::read_dir(dir)
            .expect("read crds dir")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect()
    };
    assert_eq!(
        names(&generated),
        names(&in_chart),
        "charts/charon/crds/ must hold exactly the files of crds/; run: cp crds/*.yaml charts/charon/crds/"
    );
    for file in names(&generated) {
        assert!(
            std::fs::read(generated.join(&file)).expect("read")
                == std::fs::read(in_chart.join(&file)).expect("read"),
            "charts/charon/crds/{file} differs from crds/{file}; run: cp crds/*.yaml charts/charon/crds/"
        );
    }
}

#[test]
fn install_manifest_is_a_fresh_render_of_the_chart() {
    let out = output(
        Command::new("bash")
            .arg("config/install/generate.sh")
            .env("HELM", helm()),
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let fresh = text(&out.stdout);
    let checked_in = std::fs::read_to_string(Path::new(ROOT).join("config/install/charon.yaml"))
        .expect("config/install/charon.yaml");
    assert!(
        fresh == checked_in,
        "config/install/charon.yaml is stale; regenerate it with: config/install/generate.sh config/install/charon.yaml"
    );
    // It is a Namespace, the CRDs and the chart with default values, in that order.
    let docs = documents(&checked_in);
    assert_eq!(kind(&docs[0]), "Namespace");
    assert_eq!(name(&docs[0]), RELEASE_NAMESPACE);
    let crds: Vec<&str> = docs[1..6].iter().map(name).collect();
    assert_eq!(
        crds,
        [
            "backfills.charon.dev",
            "pools.charon.dev",
            "quotas.charon.dev",
            "workflowinstances.charon.dev",
            "workflows.charon.dev"
        ]
    );
    assert_eq!(docs[6..], documents(&render_default())[..]);
}

#[test]
fn operator_pod_runs_under_the_restricted_profile_with_probes() {
    let docs = documents(&render_default());
    let deployment = only(&docs, "Deployment");
    assert_eq!(deployment["spec"]["replicas"], Value::from(2));
    let pod = &deployment["spec"]["template"]["spec"];
    let pod_security = &pod["securityContext"];
    assert_eq!(pod_security["runAsNonRoot"], Value::from(true));
    assert_eq!(pod_security["runAsUser"], Value::from(65532));
    assert_eq!(
        str_of(pod_security, &["seccompProfile", "type"]),
        "RuntimeDefault"
    );
    for forbidden in ["hostNetwork", "hostPID", "hostIPC", "volumes"] {
        assert!(pod.get(forbidden).is_none(), "{forbidden} is set");
    }
    let containers = pod["containers"].as_sequence().expect("containers");
    assert_eq!(containers.len(), 1);
    let c = &containers[0];
    let security = &c["securityContext"];
    assert_eq!(security["runAsNonRoot"], Value::from(true));
    assert_eq!(security["runAsUser"], Value::from(65532));
    assert_eq!(security["readOnlyRootFilesystem"], Value::from(true));
    assert_eq!(security["allowPrivilegeEscalation"], Value::from(false));
    assert_eq!(strings(security["capabilities"].get("drop")), ["ALL"]);
    assert!(security["capabilities"].get("add").is_none());
    assert!(security.get("privileged").is_none());
    assert_eq!(
        str_of(security, &["seccompProfile", "type"]),
        "RuntimeDefault"
    );
    let ports = c["ports"].as_sequence().expect("ports");
    assert_eq!(ports.len(), 1);
    assert_eq!(str_of(&ports[0], &["name"]), "metrics");
    assert_eq!(ports[0]["containerPort"], Value::from(8080));
    for (probe, path) in [("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")] {
        assert_eq!(str_of(&c[probe], &["httpGet", "path"]), path, "{probe}");
        assert_eq!(
            str_of(&c[probe], &["httpGet", "port"]),
            "metrics",
            "{probe}"
        );
    }
    assert_eq!(
        strings(c.get("args")),
        [
            "operator",
            "--leader-elect",
            "--lease-namespace",
            "$(POD_NAMESPACE)",
            "--metrics-address",
            "0.0.0.0:8080",
            "--log-level",
            "info",
            "--log-format",
            "json",
            "--events",
            "all",
            "--launcher-image",
            "ghcr.io/charon-dev/charon:0.1.0",
            "--launcher-command",
            "/charon-launcher",
        ]
    );
    let env: Vec<(&str, &str)> = c["env"]
        .as_sequence()
        .expect("env")
        .iter()
        .map(|e| {
            (
                str_of(e, &["name"]),
                str_of(e, &["valueFrom", "fieldRef", "fieldPath"]),
            )
        })
        .collect();
    assert_eq!(
        env,
        [
            ("POD_NAME", "metadata.name"),
            ("POD_NAMESPACE", "metadata.namespace")
        ]
    );
    // The metrics Service and the PodDisruptionBudget select exactly the operator pods.
    let labels = &deployment["spec"]["selector"]["matchLabels"];
    assert_eq!(&only(&docs, "Service")["spec"]["selector"], labels);
    let pdb = only(&docs, "PodDisruptionBudget");
    assert_eq!(&pdb["spec"]["selector"]["matchLabels"], labels);
    assert_eq!(pdb["spec"]["minAvailable"], Value::from(1));
    assert!(of_kind(&docs, "ServiceMonitor").is_empty());
}

/// The operator container's arguments and the pod's grace period, rendered with `extra`.
fn operator_args_and_grace(extra: &[&str]) -> (Vec<String>, Value) {
    let docs = documents(&render(extra));
    let pod = &only(&docs, "Deployment")["spec"]["template"]["spec"];
    let args = strings(pod["containers"][0].get("args"));
    (args, pod["terminationGracePeriodSeconds"].clone())
}

/// The value following `flag` in `args`, if the flag is there.
fn flag_value<'a>(args: &'a [String], flag: &str) -> Option<&'a str> {
    let at = args.iter().position(|a| a == flag)?;
    args.get(at + 1).map(String::as_str)
}

#[test]
fn the_log_store_and_its_credentials_reach_the_operator() {
    let (args, _) = operator_args_and_grace(&[]);
    assert!(!args.iter().any(|a| a == "--log-store"), "{args:?}");
    let values = [
        "--set",
        "logStore.url=s3://charon-logs/prod,logStore.existingSecret=charon-s3",
    ];
    let (args, _) = operator_args_and_grace(&values);
    assert_eq!(
        flag_value(&args, "--log-store"),
        Some("s3://charon-logs/prod")
    );
    let docs = documents(&render(&values));
    let container = &only(&docs, "Deployment")["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(
        container["envFrom"],
        serde_yaml::from_str::<Value>("[{secretRef: {name: charon-s3}}]").expect("yaml")
    );
    let out = run_helm(&[
        "template",
        "charon",
        CHART,
        "--set",
        "logStore.url=http://x",
    ]);
    assert!(!out.status.success(), "an http:// store was accepted");
    assert!(
        text(&out.stderr).contains("/logStore/url"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn the_launcher_is_the_operators_own_image_unless_set() {
    let (args, _) = operator_args_and_grace(&[]);
    let docs = documents(&render_default());
    let image = str_of(
        &only(&docs, "Deployment")["spec"]["template"]["spec"]["containers"][0],
        &["image"],
    )
    .to_string();
    assert_eq!(flag_value(&args, "--launcher-image"), Some(image.as_str()));
    assert_eq!(
        flag_value(&args, "--launcher-command"),
        Some("/charon-launcher")
    );
    let (args, _) = operator_args_and_grace(&[
        "--set",
        "launcher.image=mirror.example.com/charon:1,launcher.command=/bin/charon-launcher",
    ]);
    assert_eq!(
        flag_value(&args, "--launcher-image"),
        Some("mirror.example.com/charon:1")
    );
    assert_eq!(
        flag_value(&args, "--launcher-command"),
        Some("/bin/charon-launcher")
    );
    let out = run_helm(&[
        "template",
        "charon",
        CHART,
        "--set",
        "launcher.command=charon-launcher",
    ]);
    assert!(
        !out.status.success(),
        "a relative launcher path was accepted"
    );
}

#[test]
fn api_limits_and_the_shutdown_bound_reach_the_operator() {
    // Defaults: no limit, the operator's own 10 s stop, well inside the pod's 30 s.
    let (args, grace) = operator_args_and_grace(&[]);
    assert_eq!(grace, Value::from(30));
    for flag in ["--api-qps", "--api-burst", "--shutdown-timeout-seconds"] {
        assert!(!args.iter().any(|a| a == flag), "{flag} in {args:?}");
    }
    let (args, grace) = operator_args_and_grace(&[
        "--set-json",
        "apiQps=2.5",
        "--set",
        "apiBurst=20,shutdownTimeoutSeconds=40,terminationGracePeriodSeconds=60",
    ]);
    assert_eq!(grace, Value::from(60));
    assert_eq!(flag_value(&args, "--api-qps"), Some("2.5"));
    assert_eq!(flag_value(&args, "--api-burst"), Some("20"));
    assert_eq!(flag_value(&args, "--shutdown-timeout-seconds"), Some("40"));
    // The rendered flags are ones `charon operator` accepts.
    let out = output(
        Command::new(env!("CARGO_BIN_EXE_charon"))
            .args(&args)
            .arg("--help"),
    );
    assert!(out.status.success(), "{}", text(&out.stderr));

    for (set, complaint) in [
        ("apiQps=-1", "/apiQps"),
        ("apiBurst=-2", "/apiBurst"),
        ("shutdownTimeoutSeconds=-1", "/shutdownTimeoutSeconds"),
        (
            "terminationGracePeriodSeconds=0",
            "/terminationGracePeriodSeconds",
        ),
    ] {
        let out = run_helm(&["template", "charon", CHART, "--set", set]);
        assert!(!out.status.success(), "--set {set} was accepted");
        assert!(
            text(&out.stderr).contains(complaint),
            "--set {set}: {}",
            text(&out.stderr)
        );
    }
    for (set, complaint) in [
        ("apiBurst=10", "apiBurst needs apiQps"),
        (
            "shutdownTimeoutSeconds=30",
            "shutdownTimeoutSeconds (30) must be below terminationGracePeriodSeconds (30)",
        ),
        (
            "terminationGracePeriodSeconds=10",
            "shutdownTimeoutSeconds (10) must be below terminationGracePeriodSeconds (10)",
        ),
    ] {
        let out = run_helm(&["template", "charon", CHART, "--set", set]);
        assert!(!out.status.success(), "--set {set} was accepted");
        assert!(
            text(&out.stderr).contains(complaint),
            "--set {set}: {}",
            text(&out.stderr)
        );
    }
}

#[test]
fn default_rbac_is_cluster_wide_except_the_lease() {
    let rendered = render_default();
    let scopes = rbac_permissions_by_scope(&rendered);
    let cluster_wide: BTreeSet<Permission> = workload_permissions()
        .union(&pool_permissions())
        .cloned()
        .collect();
    let expected = BTreeMap::from([
        (None, cluster_wide.clone()),
        (Some(RELEASE_NAMESPACE.to_string()), lease_permissions()),
    ]);
    assert_eq!(scopes, expected);
    let all: BTreeSet<Permission> = cluster_wide.union(&lease_permissions()).cloned().collect();
    assert_eq!(rbac_permissions(&rendered), all);
    // Archiving logs adds exactly its own calls, in the same scope.
    let with_store = rbac_permissions_by_scope(&render(WITH_LOG_STORE));
    let archiving: BTreeSet<Permission> = cluster_wide
        .union(&archive_permissions())
        .cloned()
        .collect();
    assert_eq!(with_store[&None], archiving);
    let docs = documents(&rendered);
    // Each role is bound to the operator's ServiceAccount, and nothing else is bound.
    let account = name(only(&docs, "ServiceAccount"));
    let deployment = only(&docs, "Deployment");
    assert_eq!(
        str_of(
            &deployment["spec"]["template"]["spec"],
            &["serviceAccountName"]
        ),
        account
    );
    for (binding, role) in [
        ("ClusterRoleBinding", "ClusterRole"),
        ("RoleBinding", "Role"),
    ] {
        let binding = only(&docs, binding);
        assert_eq!(str_of(binding, &["roleRef", "kind"]), role);
        assert_eq!(
            str_of(binding, &["roleRef", "name"]),
            name(only(&docs, role))
        );
        let subjects = binding["subjects"].as_sequence().expect("subjects");
        assert_eq!(subjects.len(), 1);
        assert_eq!(str_of(&subjects[0], &["kind"]), "ServiceAccount");
        assert_eq!(str_of(&subjects[0], &["name"]), account);
        assert_eq!(str_of(&subjects[0], &["namespace"]), RELEASE_NAMESPACE);
    }
}

#[test]
fn watched_namespaces_get_roles_and_no_cluster_rights() {
    let rendered = render_custom();
    let docs = documents(&rendered);
    assert!(of_kind(&docs, "ClusterRole").is_empty());
    assert!(of_kind(&docs, "ClusterRoleBinding").is_empty());
    // Leader election is off in these values, so there is no Lease role either.
    let expected = BTreeMap::from([
        (Some("data".to_string()), workload_permissions()),
        (Some("reports".to_string()), workload_permissions()),
    ]);
    assert_eq!(rbac_permissions_by_scope(&rendered), expected);
    let bindings: Vec<(&str, &str)> = of_kind(&docs, "RoleBinding")
        .into_iter()
        .map(|b| {
            (
                str_of(b, &["metadata", "namespace"]),
                str_of(b, &["roleRef", "name"]),
            )
        })
        .collect();
    assert_eq!(bindings, [("data", "charon"), ("reports", "charon")]);
    let deployment = only(&docs, "Deployment");
    assert_eq!(deployment["spec"]["replicas"], Value::from(1));
    let c = &deployment["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(
        strings(c.get("args")),
        [
            "operator",
            "--metrics-address",
            "0.0.0.0:9090",
            "--log-level",
            "debug",
            "--log-format",
            "text",
            "--events",
            "warnings",
            "--launcher-image",
            "registry.example.com/platform/charon:0.1.0-rc.1",
            "--launcher-command",
            "/charon-launcher",
            "--namespace",
            "data",
            "--namespace",
            "reports",
        ]
    );
    let env: Vec<&str> = c["env"]
        .as_sequence()
        .expect("env")
        .iter()
        .map(|e| str_of(e, &["name"]))
        .collect();
    assert_eq!(
        env,
        ["POD_NAME", "POD_NAMESPACE", "RUST_BACKTRACE", "NODE_NAME"]
    );
    assert_eq!(
        str_of(c, &["image"]),
        "registry.example.com/platform/charon:0.1.0-rc.1"
    );
    assert_eq!(str_of(&c["resources"], &["limits", "cpu"]), "1");
    // One replica: no disruption budget (it would block every drain).
    assert!(of_kind(&docs, "PodDisruptionBudget").is_empty());
    let monitor = only(&docs, "ServiceMonitor");
    assert_eq!(str_of(monitor, &["apiVersion"]), "monitoring.coreos.com/v1");
    let endpoint = &monitor["spec"]["endpoints"][0];
    assert_eq!(str_of(endpoint, &["port"]), "metrics");
    assert_eq!(str_of(endpoint, &["interval"]), "15s");
    assert_eq!(
        str_of(monitor, &["metadata", "labels", "release"]),
        "prometheus"
    );
    assert_eq!(
        &monitor["spec"]["selector"]["matchLabels"],
        &deployment["spec"]["selector"]["matchLabels"]
    );
    assert_eq!(name(only(&docs, "ServiceAccount")), "charon-operator");
}

/// `charon dev --no-controller` in the background, with kubectl pointed at it through a private
/// kubeconfig and discovery cache.
struct Dev {
    child: Child,
    dir: TempDir,
}

impl Drop for Dev {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Dev {
    fn start() -> Dev {
        let dir = TempDir::new("dev");
        let child = Command::new(env!("CARGO_BIN_EXE_charon"))
            .args(["dev", "--no-controller", "--port", "0", "--kubeconfig"])
            .arg(dir.0.join("kubeconfig"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("charon dev starts");
        let dev = Dev { child, dir };
        let deadline = Instant::now() + Duration::from_secs(30);
        // The CRDs are installed after the kubeconfig is written: wait until kubectl sees them.
        while Instant::now() < deadline {
            if dev.dir.0.join("kubeconfig").exists()
                && dev
                    .kubectl(&["get", "crd", "workflows.charon.dev"], None)
                    .status
                    .success()
            {
                return dev;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("charon dev did not become ready within 30s");
    }

    fn kubectl(&self, args: &[&str], stdin: Option<&str>) -> Output {
        let mut child = Command::new("kubectl")
            .arg("--kubeconfig")
            .arg(self.dir.0.join("kubeconfig"))
            .arg("--cache-dir")
            .arg(self.dir.0.join("cache"))
            .args(args)
            .current_dir(ROOT)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("kubectl runs (is it installed?)");
        let input = child.stdin.take().expect("stdin");
        if let Some(text) = stdin {
            use std::io::Write;
            let mut input = input;
            input.write_all(text.as_bytes()).expect("write stdin");
        }
        child.wait_with_output().expect("kubectl finishes")
    }

    fn kubectl_ok(&self, args: &[&str], stdin: Option<&str>) -> String {
        let out = self.kubectl(args, stdin);
        assert!(
            out.status.success(),
            "kubectl {args:?} failed:\n{}{}",
            text(&out.stdout),
            text(&out.stderr)
        );
        text(&out.stdout)
    }

    /// `kubectl apply --dry-run=server` of `manifests`: every object must be accepted.
    fn dry_run(&self, manifests: &str) {
        let applied = self.kubectl_ok(&["apply", "--dry-run=server", "-f", "-"], Some(manifests));
        let docs = documents(manifests);
        let lines: Vec<&str> = applied.lines().collect();
        assert_eq!(lines.len(), docs.len(), "{applied}");
        for (doc, line) in docs.iter().zip(&lines) {
            assert!(
                line.ends_with("(server dry run)") && line.contains(&format!("/{} ", name(doc))),
                "{} {}: {line}",
                kind(doc),
                name(doc)
            );
        }
    }
}

/// Just enough of the Prometheus Operator's CRD for the server to accept a ServiceMonitor.
const SERVICE_MONITOR_CRD: &str = r#"
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: servicemonitors.monitoring.coreos.com
spec:
  group: monitoring.coreos.com
  scope: Namespaced
  names: {plural: servicemonitors, singular: servicemonitor, kind: ServiceMonitor, shortNames: [smon]}
  versions:
  - name: v1
    served: true
    storage: true
    schema:
      openAPIV3Schema:
        type: object
        properties:
          spec: {type: object, x-kubernetes-preserve-unknown-fields: true}
"#;

#[test]
fn rendered_manifests_pass_a_server_side_dry_run_against_charon_dev() {
    let dev = Dev::start();
    // Namespaces are not created by a dry run, and the objects in them need them to exist.
    for namespace in [RELEASE_NAMESPACE, "data", "reports"] {
        dev.kubectl_ok(&["create", "namespace", namespace], None);
    }
    dev.kubectl_ok(&["apply", "-f", "-"], Some(SERVICE_MONITOR_CRD));
    let install = std::fs::read_to_string(Path::new(ROOT).join("config/install/charon.yaml"))
        .expect("config/install/charon.yaml");
    dev.dry_run(&install);
    dev.dry_run(&render_custom());
    // Nothing was stored.
    let stored = dev.kubectl_ok(
        &[
            "get",
            "deployments,services,roles,rolebindings,poddisruptionbudgets",
            "--all-namespaces",
            "-o",
            "name",
        ],
        None,
    );
    assert_eq!(stored, "");
    // The server refuses what a real one would: a Deployment whose selector misses its pods.
    let mut deployment = only(&documents(&render_default()), "Deployment").clone();
    deployment["spec"]["selector"]["matchLabels"]["app.kubernetes.io/instance"] = "other".into();
    let deployment = serde_yaml::to_string(&deployment).expect("YAML");
    let refused = dev.kubectl(&["apply", "--dry-run=server", "-f", "-"], Some(&deployment));
    assert!(!refused.status.success(), "{deployment}");
    assert!(
        text(&refused.stderr).contains("`selector` does not match template `labels`"),
        "{}",
        text(&refused.stderr)
    );
    // And lists the new kinds as a cluster does.
    let resources = dev.kubectl_ok(&["api-resources", "-o", "name"], None);
    for kind in [
        "deployments.apps",
        "services",
        "clusterroles.rbac.authorization.k8s.io",
        "clusterrolebindings.rbac.authorization.k8s.io",
        "roles.rbac.authorization.k8s.io",
        "rolebindings.rbac.authorization.k8s.io",
        "poddisruptionbudgets.policy",
    ] {
        assert!(resources.lines().any(|l| l == kind), "{kind}: {resources}");
    }
}

mod common;

/// Every (group, resource, verb) the operator called, from the embedded server's record of
/// requests made with the operator's User-Agent.
fn operator_calls(server: &charon_apiserver::RunningServer) -> BTreeSet<Permission> {
    server
        .requests()
        .into_iter()
        .filter(|r| r.user_agent == charon::operator::OPERATOR_AGENT && !r.resource.is_empty())
        .map(|r| {
            let resource = if r.subresource.is_empty() {
                r.resource
            } else {
                format!("{}/{}", r.resource, r.subresource)
            };
            (r.api_group, resource, r.verb)
        })
        .collect()
}

/// Runs the operator through everything it does (natural triggers, retries with a Job
/// replaced, retry-now, both annotation shorthands, a re-run and a halting backfill, history
/// expiry, leader election, every attempt's log archived), records its API calls, and holds
/// the chart's RBAC with a log store to exactly them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_chart_grants_exactly_the_calls_the_operator_makes() {
    use charon_core::resources::{Backfill, InstanceState, Workflow};
    use chrono::Duration as Span;
    use kube::api::{Patch, PatchParams};
    use kube::{Api, ResourceExt};
    use serde_json::json;

    let mut cluster = common::Cluster::without_operator().await;
    let logs = tempfile::tempdir().expect("dir");
    let store_url = url::Url::from_directory_path(logs.path())
        .expect("absolute")
        .to_string();
    cluster.log_store = Some(std::sync::Arc::new(
        charon::logstore::LogStore::open(&store_url).expect("file store"),
    ));
    let lease = charon::controller::leader::LeaseConfig {
        namespace: common::NS.into(),
        name: "charon-operator".into(),
        identity: "rbac".into(),
        duration: Duration::from_secs(5),
        retry_period: Duration::from_millis(500),
    };
    let (stop, task) = cluster.replica("rbac", charon::operator::OPERATOR_AGENT, Some(lease));
    let long = common::LONG;
    let hourly = |script: &str, ttl: &str| {
        json!({"schedule": "@hourly", "history": {"ttl": ttl},
            "template": {"image": "busybox", "command": ["sh", "-c", script]}})
    };
    cluster.apply_workflow("ok", hourly("true", "PT2H")).await;
    cluster
        .apply_workflow(
            "later",
            hourly(
                "[ \"$CHARON_EXECUTION_TRIES\" = 0 ] && exit 20; true",
                "P7D",
            ),
        )
        .await;
    cluster
        .apply_workflow("slow", hourly("sleep 30", "P7D"))
        .await;
    cluster.clock.advance(Span::minutes(61));
    cluster
        .wait_states("ok", 1, &[InstanceState::Done], long)
        .await;
    let waiting = cluster
        .wait_states("later", 1, &[InstanceState::Queued], long)
        .await;
    // retry-now: the operator removes the annotation and replaces the first attempt's Job.
    cluster
        .instances()
        .patch(
            &waiting[0].name_any(),
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"annotations": {"charon.dev/retry-now": "now"}}})),
        )
        .await
        .expect("retry-now");
    cluster
        .wait_states("later", 1, &[InstanceState::Done], long)
        .await;

    // Annotation shorthands, and a backfill that re-runs a finished partition.
    let done_instance = cluster.instances_of("ok").await[0].clone();
    let done = done_instance.spec.parameter.clone();
    let workflows: Api<Workflow> = Api::namespaced(cluster.client.clone(), common::NS);
    workflows
        .patch(
            "ok",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"annotations": {
                "charon.dev/trigger": "2024-01-01T05",
                "charon.dev/backfill": "2024-01-02T00/2024-01-02T02",
            }}})),
        )
        .await
        .expect("annotate");
    let backfills: Api<Backfill> = Api::namespaced(cluster.client.clone(), common::NS);
    let end = (done_instance.spec.logical_time + Span::hours(1))
        .format("%Y-%m-%dT%H")
        .to_string();
    let rerun: Backfill = serde_json::from_value(json!({
        "apiVersion": "charon.dev/v1alpha1", "kind": "Backfill", "metadata": {"name": "rerun"},
        "spec": {"workflow": "ok", "start": done, "end": end, "allowFuture": true, "concurrency": 1},
    }))
    .expect("backfill");
    backfills
        .create(&Default::default(), &rerun)
        .await
        .expect("create");
    // A backfill halted with a running instance halts it, which deletes its Job.
    let halting: Backfill = serde_json::from_value(json!({
        "apiVersion": "charon.dev/v1alpha1", "kind": "Backfill", "metadata": {"name": "halting"},
        "spec": {"workflow": "slow", "start": "2024-01-01T00", "end": "2024-01-01T01"},
    }))
    .expect("backfill");
    backfills
        .create(&Default::default(), &halting)
        .await
        .expect("create");
    cluster
        .eventually("the slow backfill to run", long, || async {
            match cluster.instances().get("slow-2024-01-01t00").await {
                Ok(i) if common::state(&i) == InstanceState::Running => Ok(()),
                other => Err(format!("{:?}", other.map(|i| common::state(&i)))),
            }
        })
        .await;
    backfills
        .patch(
            "halting",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"halted": true}})),
        )
        .await
        .expect("halt");
    cluster
        .eventually("the halted instance", long, || async {
            let i = cluster.instance("slow-2024-01-01t00").await?;
            if common::state(&i) == InstanceState::Halted {
                Ok(())
            } else {
                Err(common::state(&i).as_str().into())
            }
        })
        .await;
    cluster
        .eventually("the re-run", long, || async {
            let i = cluster.instance(&done_instance.name_any()).await?;
            let s = i.status.unwrap_or_default();
            if s.runs.len() == 1 && s.state == InstanceState::Done {
                Ok(())
            } else {
                Err(format!("{s:?}"))
            }
        })
        .await;
    // A Job that vanishes under a running attempt is looked up before it counts as lost.
    let vanishing = cluster
        .eventually("a running instance of slow", long, || async {
            let list = cluster.instances_of("slow").await;
            list.into_iter()
                .find(|i| {
                    common::state(i) == InstanceState::Running
                        && i.spec.trigger.trigger_type
                            == charon_core::resources::TriggerType::Natural
                })
                .ok_or_else(|| "none yet".to_string())
        })
        .await;
    let job = vanishing.status.clone().and_then(|s| s.job).expect("job");
    cluster
        .jobs()
        .delete(&job, &Default::default())
        .await
        .expect("delete the job");
    cluster
        .eventually("the lost attempt to be judged", long, || async {
            let i = cluster.instance(&vanishing.name_any()).await?;
            if common::state(&i) == InstanceState::Queued {
                Ok(())
            } else {
                Err(common::state(&i).as_str().into())
            }
        })
        .await;
    cluster
        .eventually("the annotations' work", long, || async {
            let adhoc = cluster.instances().get("ok-2024-01-01t05").await.is_ok();
            let list = backfills
                .list(&Default::default())
                .await
                .map_err(|e| e.to_string())?;
            if adhoc && list.items.len() == 3 {
                Ok(())
            } else {
                Err(format!("adhoc={adhoc} backfills={}", list.items.len()))
            }
        })
        .await;
    // Suspending and resuming a running instance patches its Job.
    let trigger = |workflow: &'static str| {
        let workflows = workflows.clone();
        async move {
            workflows
                .patch(
                    workflow,
                    &PatchParams::default(),
                    &Patch::Merge(
                        json!({"metadata": {"annotations": {"charon.dev/trigger": "2024-01-01T03"}}}),
                    ),
                )
                .await
                .expect("annotate");
        }
    };
    cluster
        .apply_workflow(
            "nap",
            json!({"schedule": "@hourly", "suspend": true,
                "template": {"image": "busybox", "command": ["sh", "-c", "sleep 8"]}}),
        )
        .await;
    trigger("nap").await;
    let in_state = |name: &'static str, want: InstanceState| {
        let cluster = &cluster;
        async move {
            cluster
                .eventually(&format!("{name} {want:?}"), long, || async {
                    let i = cluster.instance(name).await?;
                    if common::state(&i) == want {
                        Ok(i)
                    } else {
                        Err(common::state(&i).as_str().into())
                    }
                })
                .await
        }
    };
    in_state("nap-2024-01-01t03", InstanceState::Running).await;
    for (suspended, want) in [
        (true, InstanceState::Suspended),
        (false, InstanceState::Done),
    ] {
        cluster
            .instances()
            .patch(
                "nap-2024-01-01t03",
                &PatchParams::default(),
                &Patch::Merge(json!({"spec": {"suspended": suspended}})),
            )
            .await
            .expect("suspend");
        in_state("nap-2024-01-01t03", want).await;
    }
    // A pipeline resuming from its failed step keeps its outputs on a claim of the run.
    let marker = logs.path().join("failed-once");
    cluster
        .apply_workflow(
            "resume",
            json!({"schedule": "@hourly", "suspend": true,
            "retry": {"resumeFromFailedStep": true},
            "template": {"steps": [
                {"name": "a", "image": "busybox", "command": ["sh", "-c", "echo a"]},
                {"name": "b", "image": "busybox", "command": ["sh", "-c",
                    format!("[ -e {m} ] || {{ touch {m}; exit 1; }}; cat", m = marker.display())]},
            ]}}),
        )
        .await;
    trigger("resume").await;
    cluster
        .eventually("the pipeline's first failure", long, || async {
            let i = cluster.instance("resume-2024-01-01t03").await?;
            let s = i.status.unwrap_or_default();
            if s.state == InstanceState::Queued && s.tries == 1 {
                Ok(())
            } else {
                Err(format!("{:?} {}", s.state, s.tries))
            }
        })
        .await;
    cluster
        .instances()
        .patch(
            "resume-2024-01-01t03",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"annotations": {"charon.dev/retry-now": "now"}}})),
        )
        .await
        .expect("retry-now");
    in_state("resume-2024-01-01t03", InstanceState::Done).await;
    // A Pool and a Quota: the operator watches both and writes their status.
    for (kind, name, spec) in [
        ("Pool", "rbac-pool", json!({"slots": 1})),
        ("Quota", "rbac-quota", json!({"maxActive": 5})),
    ] {
        let object = json!({"apiVersion": "charon.dev/v1alpha1", "kind": kind,
            "metadata": {"name": name, "namespace": common::NS}, "spec": spec});
        let params = PatchParams::apply("rbac-test");
        if kind == "Pool" {
            Api::<charon_core::resources::Pool>::all(cluster.client.clone())
                .patch(name, &params, &Patch::Apply(&object))
                .await
                .expect("pool");
        } else {
            Api::<charon_core::resources::Quota>::namespaced(cluster.client.clone(), common::NS)
                .patch(name, &params, &Patch::Apply(&object))
                .await
                .expect("quota");
        }
    }
    cluster
        .apply_workflow(
            "pooled",
            json!({"schedule": "@hourly", "suspend": true, "pools": [{"name": "rbac-pool"}],
                "template": {"image": "busybox", "command": ["true"]}}),
        )
        .await;
    trigger("pooled").await;
    in_state("pooled-2024-01-01t03", InstanceState::Done).await;
    cluster
        .eventually("the Pool and Quota statuses", long, || async {
            let pool = Api::<charon_core::resources::Pool>::all(cluster.client.clone())
                .get("rbac-pool")
                .await
                .map_err(|e| e.to_string())?;
            let quota = Api::<charon_core::resources::Quota>::namespaced(
                cluster.client.clone(),
                common::NS,
            )
            .get("rbac-quota")
            .await
            .map_err(|e| e.to_string())?;
            match (pool.status, quota.status) {
                (Some(_), Some(_)) => Ok(()),
                other => Err(format!("{other:?}")),
            }
        })
        .await;
    // History expiry: `ok` keeps finished instances for two hours.
    cluster.clock.advance(Span::hours(3));
    cluster
        .eventually("the expired instance to be deleted", long, || async {
            match cluster.instances().get(&done_instance.name_any()).await {
                Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
                other => Err(format!("{:?}", other.map(|i| i.status))),
            }
        })
        .await;

    let _ = stop.send(true);
    let _ = tokio::time::timeout(Duration::from_secs(5), task).await;
    let server = cluster.server.as_ref().expect("server");
    let calls = operator_calls(server);
    let granted = rbac_permissions(&render(WITH_LOG_STORE));
    let missing: Vec<_> = calls.difference(&granted).collect();
    let unused: Vec<_> = granted.difference(&calls).collect();
    assert!(
        missing.is_empty() && unused.is_empty(),
        "the chart's RBAC does not match the operator's calls\nmissing: {missing:?}\nunused: {unused:?}"
    );
    cluster.stop().await;
}

/// The web UI in cluster mode (`charon operator --ui-address`, Helm `ui.enabled`): a bearer
/// token is reviewed (401 without one that checks out), each read and action is authorised
/// with a SubjectAccessReview against the RBAC objects of the cluster (403 naming the
/// permission: a read-only ServiceAccount sees but cannot trigger), and the chart with
/// `ui.enabled` grants every call the UI makes, each of its additions used.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ui_reviews_tokens_authorises_actions_and_has_the_charts_rbac() {
    use charon::ui::auth::Mode;
    use common::ui::{call, serve, until};
    use serde_json::json;

    let cluster = common::Cluster::start().await;
    cluster
        .apply_suspended_hourly("report", "echo report $CHARON_PARAMETER")
        .await;
    let cli = common::cli::Cli::new(&cluster);
    let kubectl = |args: Vec<&'static str>| {
        let cli = &cli;
        async move {
            let (ok, out, err) = cli.kubectl(&args, "").await;
            assert!(ok, "kubectl {args:?}: {err}");
            out.trim().to_string()
        }
    };
    let resources =
        "--resource=workflows.charon.dev,workflowinstances.charon.dev,backfills.charon.dev";
    for sa in ["viewer", "editor", "nobody"] {
        kubectl(vec!["create", "serviceaccount", sa]).await;
    }
    kubectl(vec![
        "create",
        "role",
        "charon-viewer",
        "--verb=get,list,watch",
        resources,
    ])
    .await;
    kubectl(vec![
        "create",
        "rolebinding",
        "viewer",
        "--role=charon-viewer",
        "--serviceaccount=default:viewer",
    ])
    .await;
    kubectl(vec![
        "create",
        "role",
        "charon-editor",
        "--verb=get,list,watch,create,patch",
        resources,
    ])
    .await;
    kubectl(vec![
        "create",
        "role",
        "log-reader",
        "--verb=get",
        "--resource=pods/log",
    ])
    .await;
    kubectl(vec![
        "create",
        "rolebinding",
        "editor",
        "--role=charon-editor",
        "--serviceaccount=default:editor",
    ])
    .await;
    kubectl(vec![
        "create",
        "rolebinding",
        "editor-logs",
        "--role=log-reader",
        "--serviceaccount=default:editor",
    ])
    .await;
    let viewer = kubectl(vec!["create", "token", "viewer"]).await;
    let editor = kubectl(vec!["create", "token", "editor"]).await;
    let nobody = kubectl(vec!["create", "token", "nobody"]).await;

    let server = cluster.server.as_ref().expect("server");
    let ui_client = charon::operator::client_with_agent(
        kube::Config::new(server.url().parse().expect("url")),
        charon::operator::UI_AGENT,
    )
    .expect("client");
    let (_ui, base) = serve(&cluster, ui_client, Mode::Cluster).await;
    let api = format!("{base}/api/v1/namespaces/{}", common::NS);

    // Authentication: no token, and a token the API server does not know, are 401.
    let (status, _) = call("GET", &format!("{api}/workflows"), None, None).await;
    assert_eq!(status, 401);
    let (status, _) = call(
        "GET",
        &format!("{api}/workflows"),
        Some("not-a-token"),
        None,
    )
    .await;
    assert_eq!(status, 401);

    // The viewer sees, and is refused what its Role does not allow, in the server's words.
    let (status, list) = call("GET", &format!("{api}/workflows"), Some(&viewer), None).await;
    assert_eq!(status, 200, "{list}");
    assert_eq!(list["items"][0]["name"], "report");
    let trigger = json!({"parameter": "2024-03-01T05"});
    let (status, body) = call(
        "POST",
        &format!("{api}/workflows/report/trigger"),
        Some(&viewer),
        Some(trigger.clone()),
    )
    .await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(
        body["error"],
        "User \"system:serviceaccount:default:viewer\" cannot create resource \"workflowinstances\" in API group \"charon.dev\" in the namespace \"default\""
    );
    // A token bound to nothing sees no namespace, and is refused a namespace's list.
    let (status, list) = call(
        "GET",
        &format!("{base}/api/v1/workflows"),
        Some(&nobody),
        None,
    )
    .await;
    assert_eq!((status, list["items"].clone()), (200, json!([])), "{list}");
    let (status, _) = call("GET", &format!("{api}/workflows"), Some(&nobody), None).await;
    assert_eq!(status, 403);

    // The editor may: trigger, read the log, backfill, halt, retry, suspend, resume.
    let (status, body) = call(
        "POST",
        &format!("{api}/workflows/report/trigger"),
        Some(&editor),
        Some(trigger),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    let instance = body["instance"].as_str().expect("instance").to_string();
    until("the triggered instance Done", || async {
        let (_, body) = call(
            "GET",
            &format!("{api}/instances/{instance}"),
            Some(&editor),
            None,
        )
        .await;
        (body["state"] == "Done").then_some(body)
    })
    .await;
    let (status, log) = call(
        "GET",
        &format!("{api}/instances/{instance}/log"),
        Some(&editor),
        None,
    )
    .await;
    assert_eq!(
        (status, log["lines"].clone()),
        (200, json!(["report 2024-03-01T05"])),
        "{log}"
    );
    let (status, body) = call(
        "GET",
        &format!("{api}/instances/{instance}/log"),
        Some(&viewer),
        None,
    )
    .await;
    assert_eq!(status, 403, "{body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap_or_default()
            .contains("cannot get resource \"pods/log\""),
        "{body}"
    );
    // A pipeline's log: each step after its header (the UI reads whether each step ran).
    cluster
        .apply_workflow(
            "words",
            json!({"schedule": "@hourly", "suspend": true, "template": {"steps": [
                {"name": "make", "image": "busybox", "command": ["sh", "-c", "echo word"]},
                {"name": "shout", "image": "busybox", "command": ["tr", "a-z", "A-Z"]},
            ]}}),
        )
        .await;
    let (_, body) = call(
        "POST",
        &format!("{api}/workflows/words/trigger"),
        Some(&editor),
        Some(json!({"parameter": "2024-03-01T05"})),
    )
    .await;
    let words = body["instance"].as_str().expect("instance").to_string();
    until("the pipeline Done", || async {
        let (_, body) = call(
            "GET",
            &format!("{api}/instances/{words}"),
            Some(&editor),
            None,
        )
        .await;
        (body["state"] == "Done").then_some(body)
    })
    .await;
    let (_, log) = call(
        "GET",
        &format!("{api}/instances/{words}/log"),
        Some(&editor),
        None,
    )
    .await;
    assert_eq!(
        log["lines"],
        json!(["== step make ==", "word", "== step shout ==", "WORD"]),
        "{log}"
    );
    let backfill = json!({"workflow": "report", "start": "2024-03-02T00", "end": "2024-03-02T02"});
    let (status, _) = call(
        "POST",
        &format!("{api}/backfills?dryRun=true"),
        Some(&editor),
        Some(backfill.clone()),
    )
    .await;
    assert_eq!(status, 200);
    let (status, created) = call(
        "POST",
        &format!("{api}/backfills"),
        Some(&editor),
        Some(backfill),
    )
    .await;
    assert_eq!(status, 201, "{created}");
    let name = created["name"].as_str().expect("name").to_string();
    let (status, _) = call(
        "POST",
        &format!("{api}/backfills/{name}/concurrency"),
        Some(&editor),
        Some(json!({"concurrency": 2})),
    )
    .await;
    assert_eq!(status, 200);
    let (status, _) = call(
        "POST",
        &format!("{api}/backfills/{name}/halt"),
        Some(&editor),
        Some(json!({})),
    )
    .await;
    assert_eq!(status, 200);
    let (status, _) = call(
        "POST",
        &format!("{api}/workflows/report/resume"),
        Some(&editor),
        None,
    )
    .await;
    assert_eq!(status, 200);
    let (status, _) = call(
        "POST",
        &format!("{api}/workflows/report/suspend"),
        Some(&editor),
        None,
    )
    .await;
    assert_eq!(status, 200);
    cluster
        .apply_suspended_hourly("flaky", "echo trying; exit 1")
        .await;
    let (_, body) = call(
        "POST",
        &format!("{api}/workflows/flaky/trigger"),
        Some(&editor),
        Some(json!({"parameter": "2024-03-01T05"})),
    )
    .await;
    let flaky = body["instance"].as_str().expect("instance").to_string();
    until("a retry waiting", || async {
        let (_, body) = call(
            "GET",
            &format!("{api}/instances/{flaky}"),
            Some(&editor),
            None,
        )
        .await;
        (body["state"] == "Queued" && body["tries"] == 1).then_some(body)
    })
    .await;
    for action in ["suspend", "resume", "retry", "halt"] {
        let (status, body) = call(
            "POST",
            &format!("{api}/instances/{flaky}/{action}"),
            Some(&editor),
            None,
        )
        .await;
        assert_eq!(status, 200, "{action}: {body}");
    }
    let (status, _) = call(
        "POST",
        &format!("{api}/instances/{flaky}/halt"),
        Some(&viewer),
        None,
    )
    .await;
    assert_eq!(status, 403);

    // Every call the UI made is granted by the chart with ui.enabled, and every permission
    // the UI adds to the operator's is one it used.
    let calls: BTreeSet<Permission> = server
        .requests()
        .into_iter()
        .filter(|r| r.user_agent == charon::operator::UI_AGENT && !r.resource.is_empty())
        .map(|r| {
            let resource = if r.subresource.is_empty() {
                r.resource
            } else {
                format!("{}/{}", r.resource, r.subresource)
            };
            (r.api_group, resource, r.verb)
        })
        .collect();
    let with_ui = rbac_permissions(&render(&["--set", "ui.enabled=true"]));
    let without = rbac_permissions(&render_default());
    let missing: Vec<_> = calls.difference(&with_ui).collect();
    let added: BTreeSet<Permission> = with_ui.difference(&without).cloned().collect();
    let unused: Vec<_> = added.difference(&calls).collect();
    assert!(
        missing.is_empty() && unused.is_empty(),
        "the chart's RBAC with ui.enabled does not match the UI's calls\nmissing: {missing:?}\nunused additions: {unused:?}"
    );
    cluster.stop().await;
}
