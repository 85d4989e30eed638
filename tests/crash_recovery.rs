//! The outage test: 300 orders, the server killed with SIGKILL mid-run, kept
//! down longer than the order workflow's step timeout (5 s), restarted on the
//! same data directory: every saga ends right, no event is lost, and each
//! business effect (reserve, pay, ship, release, refund) was done once per
//! order as the downstream counted it. The demo services run as their own
//! process so they outlive the kill and remember every idempotency key.
//!
//! 600 orders write about 4,800 events: past the 4,096 after which the
//! SQLite store trains its first dictionary and compresses event data
//! (ADR 18). Once it has, 40 more orders run on the restarted server, and
//! `sagaflow events` must print every order's events, text and compressed,
//! as the API shows them.

mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use common::{client, get_json, temp_dir, Proc};
use serde_json::Value;

const ORDERS: u32 = 600;
/// Longer than the step timeout of `workflows/order.yaml`.
const DOWN: Duration = Duration::from_secs(7);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sagas_survive_kill_9() {
    let dir = temp_dir("crash");
    let data = dir.join("data");
    let workflows = concat!(env!("CARGO_MANIFEST_DIR"), "/workflows");
    let demo = common::demo_services(&dir, "15ms");
    let demo_env = format!("demo_url={}/demo", demo.url);
    let serve_args = [
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--data-dir",
        data.to_str().unwrap(),
        "--workflows",
        workflows,
        "--no-demo",
        "--workflow-env",
        &demo_env,
    ];
    let mut server = Proc::start(&serve_args, &dir.join("server-1.log"));
    let c = client();

    // Start every order, 10% over the payment limit, 16 at a time.
    let ids = common::start_orders(&c, std::slice::from_ref(&server.url), ORDERS, "crash").await;

    // Kill the server while sagas are in flight, and keep it down past the step timeout.
    server.kill9();
    std::thread::sleep(DOWN);

    // Restart on the same data directory: the unfinished sagas resume.
    let server = Proc::start(&serve_args, &dir.join("server-2.log"));
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut statuses: HashMap<u32, String> = HashMap::new();
    for (i, id) in &ids {
        let remaining = deadline.saturating_duration_since(Instant::now());
        assert!(
            !remaining.is_zero(),
            "sagas did not finish within 120 s of the restart"
        );
        let v: Value = get_json(&c, format!("{}/instances/{id}?wait=60s", server.url))
            .await
            .1;
        statuses.insert(*i, v["status"].as_str().unwrap_or_default().to_string());
    }
    for (i, status) in &statuses {
        let want = if i % 10 == 0 {
            "compensated"
        } else {
            "completed"
        };
        assert_eq!(status, want, "order {i}; server log:\n{}", server.log());
    }

    common::histories_are_whole(&c, &server.url, &ids).await;
    // The kill landed mid-run: effects in flight were re-issued on restart, each
    // with its key, and none of them was failed by the outage.
    let reissued = common::reissued_without_timeouts(&c, &server.url, ids.values()).await;
    assert!(reissued > 0, "no attempt was in flight at the kill");
    // (how many of those had reached the downstream before the kill varies: it is only reported)
    let replayed = common::effects_happened_once(&c, &demo.url, ORDERS).await;
    eprintln!("{reissued} attempts were in flight at the kill and re-issued; {replayed} effects reached the downstream again with their key and were done once");

    let trained = || {
        server.log().contains("event data dictionary trained")
            || std::fs::read_to_string(dir.join("server-1.log"))
                .unwrap_or_default()
                .contains("event data dictionary trained")
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while !trained() {
        assert!(
            Instant::now() < deadline,
            "no dictionary within 30 s; server log:\n{}",
            server.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut all = ids.clone();
    for i in 1..=40 {
        let (status, v) = common::post_json(
            &c,
            format!("{}/workflows/order/instances", server.url),
            serde_json::json!({"order_id": format!("late-{i}"), "customer_id": "c-2", "items": [{"sku": "widget", "qty": 1}], "amount": 10.0}),
        )
        .await;
        assert!(status.is_success(), "late order {i}: {status} {v}");
        let id = v["id"].as_str().unwrap().to_string();
        let end = get_json(&c, format!("{}/instances/{id}?wait=60s", server.url))
            .await
            .1;
        assert_eq!(end["status"], "completed", "late order {i}");
        all.insert(ORDERS + i, id);
    }
    the_event_log_reads_as_the_api_shows(&c, &server.url, &data, &all).await;
}

/// `sagaflow events` (reading the file, beside the running server) prints
/// every order's events as the API's history does: same positions, types
/// and data, compressed or not.
async fn the_event_log_reads_as_the_api_shows(
    c: &reqwest::Client,
    url: &str,
    data: &std::path::Path,
    ids: &HashMap<u32, String>,
) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_sagaflow"))
        .args(["events", "--limit", "100000", "--data-dir"])
        .arg(data)
        .output()
        .expect("sagaflow events");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut streams: HashMap<String, Vec<Value>> = HashMap::new();
    for line in String::from_utf8(out.stdout).unwrap().lines() {
        let e: Value = serde_json::from_str(line).expect("a JSON line");
        streams
            .entry(e["stream"].as_str().unwrap().to_string())
            .or_default()
            .push(serde_json::json!([e["position"], e["type"], e["data"]]));
    }
    for (i, id) in ids {
        let history = get_json(c, format!("{url}/instances/{id}/events")).await.1["items"].clone();
        let shown: Vec<Value> = history
            .as_array()
            .unwrap()
            .iter()
            .map(|e| serde_json::json!([e["position"], e["event_type"], e["data"]]))
            .collect();
        assert_eq!(
            streams.get(&format!("saga-{id}")),
            Some(&shown),
            "order {i}: `sagaflow events` differs from the API's history"
        );
    }
}
