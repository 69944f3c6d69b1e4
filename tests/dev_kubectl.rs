//! `charon dev --no-controller` driven with the real kubectl, as a user would: apply the
//! examples, read them back, explain a field, see an invalid name refused.

use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

struct Dev {
    child: Child,
    kubeconfig: PathBuf,
}

impl Drop for Dev {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.kubeconfig);
    }
}

fn start() -> Dev {
    let kubeconfig =
        std::env::temp_dir().join(format!("charon-dev-test-{}.kubeconfig", std::process::id()));
    let _ = std::fs::remove_file(&kubeconfig);
    let child = Command::new(env!("CARGO_BIN_EXE_charon"))
        .args(["dev", "--no-controller", "--port", "0", "--kubeconfig"])
        .arg(&kubeconfig)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("charon dev starts");
    let dev = Dev { child, kubeconfig };
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
    assert_eq!(names, "fails-fatally hello hourly-report waits-for-input");
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
