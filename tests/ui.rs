//! The web UI's JSON API (SPEC §12) against the embedded cluster with the operator: the
//! session token, reads, paging, every action and its errors.

mod common;

use serde_json::json;

use charon::ui::auth::Mode;
use common::ui::{call, serve, until};
use common::{Cluster, NS};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_reads_triggers_logs_backfills_halts_and_retries() {
    let cluster = Cluster::start().await;
    cluster
        .apply_suspended_hourly(
            "report",
            "echo \"report for $CHARON_PARAMETER\"; echo second line",
        )
        .await;
    cluster
        .apply_suspended_hourly("flaky", "echo trying; exit 1")
        .await;
    let token = "session-token-for-tests".to_string();
    let mode = Mode::Local {
        token: token.clone(),
    };
    let (_ui, base) = serve(&cluster, cluster.client.clone(), mode).await;
    let api = format!("{base}/api/v1/namespaces/{NS}");
    let t = Some(token.as_str());

    // Without the session token: 401, as JSON naming what to send.
    let (status, body) = call("GET", &format!("{api}/workflows"), None, None).await;
    assert_eq!(status, 401, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("bearer token"),
        "{body}"
    );
    let (status, _) = call("GET", &format!("{api}/workflows"), Some("wrong"), None).await;
    assert_eq!(status, 401);

    // The URL with ?token= keeps it in a cookie and drops it from the address.
    let response = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
        .get(format!("{base}/?token={token}&namespace={NS}"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 303);
    assert_eq!(response.headers()["location"], format!("/?namespace={NS}"));
    let cookie = response.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(
        cookie.starts_with(&format!("charon_token={token};")) && cookie.contains("HttpOnly"),
        "{cookie}"
    );

    // The list: both workflows with their summaries.
    let list = until("both workflows in the UI's cache", || async {
        let (_, body) = call("GET", &format!("{api}/workflows"), t, None).await;
        (body["items"].as_array()?.len() == 2).then_some(body)
    })
    .await;
    let report = list["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|w| w["name"] == "report")
        .expect("report listed");
    assert_eq!(report["schedule"], "@hourly");
    assert_eq!(report["suspended"], true);
    assert_eq!(report["valid"], true);
    assert_eq!(report["timeZone"], "UTC");
    assert_eq!(report["recent"], json!([]));
    let (status, detail) = call("GET", &format!("{api}/workflows/report"), t, None).await;
    assert_eq!(status, 200);
    assert_eq!(detail["upcoming"].as_array().unwrap().len(), 10);
    assert_eq!(detail["spec"]["schedule"], "@hourly");
    let (status, body) = call("GET", &format!("{api}/workflows/nope"), t, None).await;
    assert_eq!(status, 404, "{body}");

    // Trigger with an env overlay: 201 and the instance runs to Done.
    let (status, body) = call(
        "POST",
        &format!("{api}/workflows/report/trigger"),
        t,
        Some(json!({"parameter": "2024-03-01T05", "env": {"EXTRA": "yes"}})),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    let instance = body["instance"].as_str().unwrap().to_string();
    let done = until("the triggered instance Done", || async {
        let (_, body) = call("GET", &format!("{api}/instances/{instance}"), t, None).await;
        (body["state"] == "Done").then_some(body)
    })
    .await;
    assert_eq!(done["workflow"], "report");
    assert_eq!(done["parameter"], "2024-03-01T05");
    assert_eq!(done["tries"], 1);
    assert_eq!(done["attempts"][0]["exitCode"], 0);
    assert!(done["history"].as_array().unwrap().len() >= 3, "{done}");
    assert!(done["events"].as_array().is_some());

    // Its log, then nothing new after the returned cursor.
    let (status, log) = call("GET", &format!("{api}/instances/{instance}/log"), t, None).await;
    assert_eq!(status, 200, "{log}");
    assert_eq!(
        log["lines"],
        json!(["report for 2024-03-01T05", "second line"])
    );
    assert_eq!(log["cursor"], 2);
    assert_eq!(log["complete"], true);
    let (_, log) = call(
        "GET",
        &format!("{api}/instances/{instance}/log?attempt=1&cursor=1"),
        t,
        None,
    )
    .await;
    assert_eq!(log["lines"], json!(["second line"]));
    let (status, body) = call(
        "GET",
        &format!("{api}/instances/{instance}/log?cursor=x"),
        t,
        None,
    )
    .await;
    assert_eq!(
        (status, body["field"].clone()),
        (400, json!("cursor")),
        "{body}"
    );

    // Bad triggers: the error names the field, or says why.
    let (status, body) = call(
        "POST",
        &format!("{api}/workflows/report/trigger"),
        t,
        Some(json!({})),
    )
    .await;
    assert_eq!(
        (status, body["field"].clone()),
        (400, json!("parameter")),
        "{body}"
    );
    let (status, body) = call(
        "POST",
        &format!("{api}/workflows/report/trigger"),
        t,
        Some(json!({"parameter": "2999-01-01T00"})),
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert!(body["error"].as_str().unwrap().contains("future"), "{body}");
    let (status, _) = call(
        "POST",
        &format!("{api}/workflows/nope/trigger"),
        t,
        Some(json!({"parameter": "2024-03-01T05"})),
    )
    .await;
    assert_eq!(status, 404);
    // Halting what has finished is a conflict.
    let (status, body) = call("POST", &format!("{api}/instances/{instance}/halt"), t, None).await;
    assert_eq!(status, 409, "{body}");

    // A backfill: the preview lists what it will cover and creates nothing; then it runs.
    let request = json!({"workflow": "report", "start": "2024-03-02T00", "end": "2024-03-02T06", "concurrency": 3});
    let (status, preview) = call(
        "POST",
        &format!("{api}/backfills?dryRun=true"),
        t,
        Some(request.clone()),
    )
    .await;
    assert_eq!(status, 200, "{preview}");
    assert_eq!(preview["count"], 6);
    assert_eq!(preview["partitions"][0], "2024-03-02T00");
    let (status, _) = call(
        "GET",
        &format!("{api}/backfills/{}", preview["name"].as_str().unwrap()),
        t,
        None,
    )
    .await;
    assert_eq!(status, 404, "a dry run creates nothing");
    let (status, body) = call("POST", &format!("{api}/backfills"), t, Some(json!({"workflow": "report", "start": "2024-03-02T00", "end": "2024-03-02T06", "concurrency": 0}))).await;
    assert_eq!(
        (status, body["field"].clone()),
        (400, json!("concurrency")),
        "{body}"
    );
    let (status, body) = call(
        "POST",
        &format!("{api}/backfills"),
        t,
        Some(json!({"workflow": "report", "start": "2024-03-02T00:30", "end": "2024-03-02T06"})),
    )
    .await;
    assert_eq!(
        (status, body["field"].clone()),
        (400, json!("start")),
        "{body}"
    );
    let (status, created) = call(
        "POST",
        &format!("{api}/backfills"),
        t,
        Some(request.clone()),
    )
    .await;
    assert_eq!(status, 201, "{created}");
    let name = created["name"].as_str().unwrap().to_string();
    let (status, _) = call("POST", &format!("{api}/backfills"), t, Some(request)).await;
    assert_eq!(status, 409, "the same backfill again");
    let finished = until("the backfill finished", || async {
        let (_, body) = call("GET", &format!("{api}/backfills/{name}"), t, None).await;
        (body["finished"] == 6).then_some(body)
    })
    .await;
    assert_eq!(finished["percent"], 100);
    assert_eq!(finished["partitions"].as_array().unwrap().len(), 6);
    let (status, body) = call(
        "POST",
        &format!("{api}/backfills/{name}/concurrency"),
        t,
        Some(json!({"concurrency": 5})),
    )
    .await;
    assert_eq!(
        (status, body["concurrency"].clone()),
        (200, json!(5)),
        "{body}"
    );

    // Seven partitions now, paged three at a time, newest first, with a state filter.
    let mut seen = Vec::new();
    let mut next = String::new();
    loop {
        let (status, page) = call(
            "GET",
            &format!("{api}/workflows/report/partitions?limit=3&continue={next}"),
            t,
            None,
        )
        .await;
        assert_eq!(status, 200, "{page}");
        seen.extend(
            page["items"]
                .as_array()
                .unwrap()
                .iter()
                .map(|i| i["parameter"].as_str().unwrap().to_string()),
        );
        match page["continue"].as_str() {
            Some(token) => next = token.to_string(),
            None => break,
        }
    }
    assert_eq!(seen.len(), 7, "{seen:?}");
    assert_eq!(seen[0], "2024-03-02T05");
    assert_eq!(seen[6], "2024-03-01T05");
    let (_, page) = call(
        "GET",
        &format!("{api}/workflows/report/partitions?state=Error"),
        t,
        None,
    )
    .await;
    assert_eq!(page["items"], json!([]));
    let (status, body) = call(
        "GET",
        &format!("{api}/workflows/report/partitions?limit=0"),
        t,
        None,
    )
    .await;
    assert_eq!(
        (status, body["field"].clone()),
        (400, json!("limit")),
        "{body}"
    );

    // A failed attempt waits for its retry: retry now runs it at once, halt stops it.
    let (_, body) = call(
        "POST",
        &format!("{api}/workflows/flaky/trigger"),
        t,
        Some(json!({"parameter": "2024-03-01T05"})),
    )
    .await;
    let flaky = body["instance"].as_str().unwrap().to_string();
    let waiting = until("the first attempt failed and a retry waits", || async {
        let (_, body) = call("GET", &format!("{api}/instances/{flaky}"), t, None).await;
        (body["state"] == "Queued" && body["tries"] == 1).then_some(body)
    })
    .await;
    assert_eq!(waiting["attempts"][0]["exitCode"], 1);
    let (_, log) = call(
        "GET",
        &format!("{api}/instances/{flaky}/log?attempt=1"),
        t,
        None,
    )
    .await;
    assert_eq!(log["lines"], json!(["trying"]));
    let (status, body) = call("POST", &format!("{api}/instances/{flaky}/retry"), t, None).await;
    assert_eq!(status, 200, "{body}");
    until("the second attempt", || async {
        let (_, body) = call("GET", &format!("{api}/instances/{flaky}"), t, None).await;
        (body["tries"] == 2 && body["state"] == "Queued").then_some(body)
    })
    .await;
    let (status, _) = call("POST", &format!("{api}/instances/{flaky}/halt"), t, None).await;
    assert_eq!(status, 200);
    until("halted", || async {
        let (_, body) = call("GET", &format!("{api}/instances/{flaky}"), t, None).await;
        (body["state"] == "Halted").then_some(body)
    })
    .await;
    let (status, _) = call("POST", &format!("{api}/instances/{flaky}/explode"), t, None).await;
    assert_eq!(status, 404);

    // Suspend and resume a workflow.
    let (status, body) = call("POST", &format!("{api}/workflows/report/resume"), t, None).await;
    assert_eq!(
        (status, body["suspended"].clone()),
        (200, json!(false)),
        "{body}"
    );
    let (status, body) = call("POST", &format!("{api}/workflows/report/suspend"), t, None).await;
    assert_eq!(
        (status, body["suspended"].clone()),
        (200, json!(true)),
        "{body}"
    );

    // A body that is not JSON is refused before anything happens.
    let response = reqwest::Client::new()
        .post(format!("{api}/workflows/report/trigger"))
        .header("Authorization", format!("Bearer {token}"))
        .header("Content-Type", "application/x-www-form-urlencoded")
        .body("parameter=2024-03-01T06")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 400);

    // The pages render what the API says.
    let page = reqwest::Client::new()
        .get(format!("{base}/namespaces/{NS}/workflows/report"))
        .header("Authorization", format!("Bearer {token}"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        page.contains("2024-03-02T05") && page.contains("Done"),
        "{page}"
    );
    cluster.stop().await;
}

/// `charon ui` as a user runs it: with a kubeconfig, on loopback, printing `UI: <url>` whose
/// token opens the API; an address off loopback is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn charon_ui_serves_the_kubeconfigs_view_on_loopback() {
    use std::io::{BufRead, BufReader};
    let cluster = Cluster::start().await;
    cluster.apply_suspended_hourly("report", "true").await;
    let cli = common::cli::Cli::new(&cluster);
    let (ok, _, err) = cli.run(&["ui", "--address", "0.0.0.0:8090"]).await;
    assert!(!ok && err.contains("loopback only"), "{err}");
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_charon"))
        .args(["ui", "--address", "127.0.0.1:0", "--kubeconfig"])
        .arg(&cli.kubeconfig)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("charon ui starts");
    let stdout = child.stdout.take().expect("stdout");
    let url = tokio::task::spawn_blocking(move || {
        BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
            .find_map(|line| line.strip_prefix("UI: ").map(str::to_string))
    })
    .await
    .expect("join")
    .expect("charon ui prints `UI: <url>`");
    let (base, token) = url.split_once("/?token=").expect("a URL with a token");
    let list = until("the workflow listed", || async {
        let (status, body) = call(
            "GET",
            &format!("{base}/api/v1/workflows"),
            Some(token),
            None,
        )
        .await;
        (status == 200 && body["items"][0]["name"] == "report").then_some(body)
    })
    .await;
    assert_eq!(list["items"][0]["namespace"], NS);
    let (status, _) = call("GET", &format!("{base}/api/v1/workflows"), None, None).await;
    assert_eq!(status, 401);
    let _ = child.kill();
    let _ = child.wait();
    cluster.stop().await;
}
