//! The web UI in headless Chromium, as a user clicks it: `charon dev --apply
//! config/examples/`, the printed `UI:` URL, then each page with its data, the actions and
//! their effect, a log followed while it is written, and a screenshot of each page (under
//! `target/tmp/screenshots`).

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder, Locator, elements::Element};

struct Process(Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `charon dev` with the examples; returns it, its kubeconfig and the UI's URL.
fn start_dev(dir: &std::path::Path) -> (Process, PathBuf, String) {
    let kubeconfig = dir.join("kubeconfig");
    let mut child = Command::new(env!("CARGO_BIN_EXE_charon"))
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .args([
            "dev",
            "--apply",
            "config/examples/",
            "--ui-address",
            "127.0.0.1:0",
        ])
        .arg("--kubeconfig")
        .arg(&kubeconfig)
        .arg("--state-dir")
        .arg(dir.join("state"))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("charon dev starts");
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Some(url) = line.strip_prefix("UI: ") {
                let _ = tx.send(url.to_string());
            }
        }
    });
    let url = rx
        .recv_timeout(Duration::from_secs(60))
        .expect("charon dev prints `UI: <url>`");
    (Process(child), kubeconfig, url)
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

async fn browser(dir: &std::path::Path) -> (Process, Client) {
    let port = free_port();
    let driver = Command::new("chromedriver")
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("chromedriver runs (Debian package chromium-driver; scripts/test installs it)");
    let driver = Process(driver);
    let capabilities = serde_json::json!({
        "goog:chromeOptions": {
            "binary": "/usr/bin/chromium",
            "args": [
                "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--no-first-run", "--disable-quic", "--window-size=1280,900",
                format!("--user-data-dir={}", dir.join("chromium").display()),
            ]
        }
    });
    let capabilities = match capabilities {
        serde_json::Value::Object(map) => map,
        _ => unreachable!("an object literal"),
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let connector = hyper_util::client::legacy::connect::HttpConnector::new();
        match ClientBuilder::new(connector)
            .capabilities(capabilities.clone())
            .connect(&format!("http://127.0.0.1:{port}"))
            .await
        {
            Ok(client) => return (driver, client),
            Err(e) if Instant::now() > deadline => panic!("connecting to chromedriver: {e}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}

fn screenshots() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("screenshots");
    std::fs::create_dir_all(&dir).expect("screenshot directory");
    dir
}

async fn screenshot(client: &Client, name: &str) {
    let png = client.screenshot().await.expect("screenshot");
    let path = screenshots().join(format!("{name}.png"));
    std::fs::write(&path, png).expect("write screenshot");
    println!("screenshot {}", path.display());
}

/// Waits until the element at `css` exists and its text satisfies `check`; returns the text.
async fn text_until(
    client: &Client,
    css: &str,
    what: &str,
    check: impl Fn(&str) -> bool,
) -> String {
    let deadline = Instant::now() + Duration::from_secs(90);
    let mut last = String::new();
    loop {
        if let Ok(element) = client.find(Locator::Css(css)).await
            && let Ok(text) = element.text().await
        {
            if check(&text) {
                return text;
            }
            last = text;
        }
        if Instant::now() > deadline {
            let _ = screenshot(client, &format!("timeout-{}", what.replace(' ', "-"))).await;
            panic!("timed out waiting for {what} at {css}; last text: {last:?}");
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

async fn find(client: &Client, css: &str) -> Element {
    client
        .wait()
        .at_most(Duration::from_secs(30))
        .for_element(Locator::Css(css))
        .await
        .unwrap_or_else(|e| panic!("no element {css}: {e}"))
}

async fn fill(client: &Client, css: &str, value: &str) {
    let input = find(client, css).await;
    input.clear().await.expect("clear");
    input.send_keys(value).await.expect("type");
}

/// Triggers `parameter` from the workflow page and opens the new instance's page.
async fn trigger(client: &Client, base: &str, workflow: &str, parameter: &str) {
    client
        .goto(&format!("{base}/namespaces/default/workflows/{workflow}"))
        .await
        .expect("workflow page");
    fill(client, "#trigger-parameter", parameter).await;
    find(client, "form[data-api$='/trigger'] button[type=submit]")
        .await
        .click()
        .await
        .expect("click Trigger");
    find(client, "#notice a[data-new-instance]")
        .await
        .click()
        .await
        .expect("open the new instance");
    find(client, "[data-state]").await;
}

async fn click(client: &Client, css: &str) {
    find(client, css)
        .await
        .click()
        .await
        .unwrap_or_else(|e| panic!("click {css}: {e}"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_runs_watches_backfills_halts_and_retries_from_the_browser() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (_dev, kubeconfig, url) = start_dev(dir.path());
    let base = url.split("/?").next().expect("base").to_string();
    // A workflow that writes its log slowly, to watch the viewer follow it.
    let applied = Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(&kubeconfig)
        .args(["apply", "-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .and_then(|mut child| {
            use std::io::Write;
            child.stdin.take().expect("stdin").write_all(
                b"apiVersion: charon.dev/v1alpha1\nkind: Workflow\nmetadata:\n  name: slow-log\nspec:\n  schedule: '@daily'\n  suspend: true\n  template:\n    image: busybox:1.36\n    command: ['sh', '-c', 'for i in $(seq 1 15); do echo tick $i; sleep 1; done']\n",
            )?;
            child.wait()
        })
        .expect("kubectl apply");
    assert!(applied.success());
    let (_driver, client) = browser(dir.path()).await;

    // The printed URL signs in and shows the examples.
    client.goto(&url).await.expect("open the UI");
    let table = text_until(&client, "table.workflows", "the example workflows", |t| {
        [
            "hello",
            "fails-fatally",
            "waits-for-input",
            "word-pipeline",
            "task-array",
            "slow-log",
        ]
        .iter()
        .all(|w| t.contains(w))
    })
    .await;
    assert!(table.contains("Suspended"), "{table}");
    assert!(
        !client
            .current_url()
            .await
            .unwrap()
            .as_str()
            .contains("token="),
        "the token leaves the address bar"
    );
    screenshot(&client, "workflows-1280").await;
    client.set_window_size(800, 900).await.expect("resize");
    screenshot(&client, "workflows-800").await;
    client.set_window_size(1280, 900).await.expect("resize");
    // The state filter.
    client
        .goto(&format!("{base}/?health=suspended"))
        .await
        .unwrap();
    let filtered = text_until(&client, "table.workflows", "the suspended filter", |t| {
        t.contains("slow-log")
    })
    .await;
    assert!(!filtered.contains("fails-fatally"), "{filtered}");

    // A failed attempt's exit code and log.
    trigger(&client, &base, "fails-fatally", "2025-01-01T10:00").await;
    text_until(&client, "[data-state]", "Error", |t| t == "Error").await;
    text_until(
        &client,
        "tr[data-attempt='1'] [data-exit]",
        "exit 50",
        |t| t == "50",
    )
    .await;
    text_until(&client, "#log", "the failed attempt's log", |t| {
        t.contains("bad configuration, giving up")
    })
    .await;
    screenshot(&client, "instance-failed").await;

    // A log followed while it is written.
    trigger(&client, &base, "slow-log", "2025-01-01").await;
    let partial = text_until(&client, "#log", "the first ticks", |t| t.contains("tick 1")).await;
    // (The operator records a run within 5 s of its start; the log follows from then.)
    assert!(
        !partial.contains("tick 15"),
        "the log was shown before the attempt ended: {partial}"
    );
    text_until(&client, "[data-log-status]", "following", |t| {
        t.ends_with("following")
    })
    .await;
    text_until(&client, "#log", "every tick", |t| t.contains("tick 15")).await;
    text_until(&client, "[data-log-status]", "complete", |t| {
        t.ends_with("complete")
    })
    .await;
    text_until(&client, "[data-state]", "Done", |t| t == "Done").await;
    screenshot(&client, "instance-log-followed").await;

    // Retry now: a missing-input exit waits ten minutes; the button runs it at once.
    trigger(&client, &base, "waits-for-input", "2025-01-01T10:00").await;
    text_until(&client, "[data-message]", "a retry waiting", |t| {
        t.contains("retrying")
    })
    .await;
    click(&client, "button[data-post$='/retry']").await;
    text_until(&client, "[data-state]", "Done after the retry", |t| {
        t == "Done"
    })
    .await;
    text_until(&client, "#log", "the retried attempt's log", |t| {
        t.contains("processed")
    })
    .await;

    // Halt, after the confirmation.
    trigger(&client, &base, "waits-for-input", "2025-01-01T11:00").await;
    text_until(&client, "[data-message]", "a retry waiting", |t| {
        t.contains("retrying")
    })
    .await;
    click(&client, "button[data-post$='/halt']").await;
    client.accept_alert().await.expect("confirm the halt");
    text_until(&client, "[data-state]", "Halted", |t| t == "Halted").await;
    screenshot(&client, "instance-halted").await;

    // A backfill: preview, create, watch it finish.
    client
        .goto(&format!("{base}/namespaces/default/workflows/hello"))
        .await
        .unwrap();
    fill(&client, "#backfill-start", "2025-01-01T10:00").await;
    fill(&client, "#backfill-end", "2025-01-01T10:04").await;
    fill(&client, "#backfill-concurrency", "2").await;
    click(&client, "button[data-action=preview]").await;
    let preview = text_until(&client, ".preview", "the preview", |t| {
        t.contains("partitions will run")
    })
    .await;
    assert!(preview.starts_with("4 partitions"), "{preview}");
    assert!(preview.contains("2025-01-01T10:03"), "{preview}");
    screenshot(&client, "workflow-backfill-preview").await;
    click(&client, "form[data-preview] button[type=submit]").await;
    click(&client, "#notice a[data-new-backfill]").await;
    text_until(&client, "[data-progress]", "the backfill finished", |t| {
        t.starts_with("4/4")
    })
    .await;
    screenshot(&client, "backfill").await;
    // Its concurrency is editable.
    fill(&client, "#concurrency", "3").await;
    click(
        &client,
        "form[data-api$='/concurrency'] button[type=submit]",
    )
    .await;
    text_until(&client, "[data-concurrency]", "concurrency 3", |t| t == "3").await;

    // The workflow page: the partition grid with the backfill's partitions, filtered.
    client
        .goto(&format!(
            "{base}/namespaces/default/workflows/hello?state=Done"
        ))
        .await
        .unwrap();
    let grid = text_until(&client, "table.grid", "the grid", |t| {
        t.contains("2025-01-01T10:03")
    })
    .await;
    assert!(!grid.contains("Error"), "{grid}");
    screenshot(&client, "workflow").await;
    // Keyboard: the skip link is the first stop and leads to the content.
    client
        .find(Locator::Css("body"))
        .await
        .unwrap()
        .send_keys("\u{E004}")
        .await
        .unwrap();
    let focused = client.active_element().await.unwrap().text().await.unwrap();
    assert_eq!(focused, "Skip to content");
    client.close().await.expect("close the browser");
}
