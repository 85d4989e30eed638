//! A step's service that answers a success too long to keep (more than
//! 1 MiB, or `--step-answer-limit`): the step retries under its key and,
//! when its retries run out, is compensated with the steps before it
//! (ADR 3); the server holds none of the answer.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{client, get_json, post_json, publish_ok, serve_in, temp_dir, tiny_service};
use reqwest::StatusCode;
use serde_json::json;

const WORKFLOW: &str = r#"
name: long-answer
env:
  svc: http://127.0.0.1:1
steps:
  - name: reserve
    http: { method: POST, url: "${ .env.svc }/reserve" }
    timeout: 5s
    compensate:
      http: { method: POST, url: "${ .env.svc }/release" }
  - name: pay
    http: { method: POST, url: "${ .env.svc }/pay" }
    timeout: 5s
    retry: { max_attempts: 2, backoff: { initial: 10ms, max: 10ms } }
    compensate:
      http: { method: POST, url: "${ .env.svc }/refund" }
"#;

/// The request's path.
fn path(request: &str) -> &str {
    request.split(' ').nth(1).unwrap_or_default()
}

/// A service on 127.0.0.1: `/pay` answers 200 with 4 MiB (and holds the
/// connection), everything else `{}`.
async fn service() -> (String, Arc<Mutex<Vec<String>>>) {
    tiny_service(
        |request| {
            if path(request) == "/pay" {
                let big = format!("\"{}\"", "x".repeat(4 << 20));
                format!(
                    "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{big}",
                    big.len()
                )
            } else {
                "HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\n{}".into()
            }
        },
        Duration::from_secs(30),
    )
    .await
}

/// Publishes the workflow to the server at `url` and runs one saga of it to
/// its end: the start's status and the instance.
async fn run_one(url: &str) -> (StatusCode, serde_json::Value) {
    let c = client();
    publish_ok(&c, url, WORKFLOW).await;
    post_json(
        &c,
        format!("{url}/workflows/long-answer/instances?wait=30s"),
        json!({}),
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_success_too_long_to_keep_is_retried_then_compensated() {
    let (svc, seen) = service().await;
    let dir = temp_dir("step-answers");
    let env = format!("svc={svc}");
    let server = serve_in(
        &dir,
        "server.log",
        &["--no-demo", "--workflow-env", &env],
        &[],
    );
    let (status, instance) = run_one(&server.url).await;
    assert_eq!(status, StatusCode::CREATED, "{instance}");
    // (a failure prints only the error: a kept answer would be 4 MiB)
    assert_eq!(instance["status"], "compensated", "{}", instance["error"]);
    let error = instance["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("the answer is too long: 4194306 bytes"),
        "{error}"
    );
    assert!(instance["outputs"].get("pay").is_none());
    // two attempts, then both steps undone, the one in doubt first
    let paths: Vec<String> = seen
        .lock()
        .unwrap()
        .iter()
        .map(|r| path(r).to_string())
        .collect();
    assert_eq!(paths, ["/reserve", "/pay", "/pay", "/refund", "/release"]);
    let id = instance["id"].as_str().unwrap();
    let (_, history) = get_json(&client(), format!("{}/instances/{id}/events", server.url)).await;
    let failed: Vec<_> = history["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["event_type"] == "StepFailed")
        .map(|e| e["data"]["kind"].clone())
        .collect();
    assert_eq!(
        failed,
        [json!("transient"), json!("transient")],
        "{history}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_limit_is_a_setting() {
    // the same 4 MiB, kept under a limit of 5 MiB
    let (svc, _) = service().await;
    let dir = temp_dir("step-answer-limit");
    let env = format!("svc={svc}");
    let server = serve_in(
        &dir,
        "server.log",
        &[
            "--no-demo",
            "--workflow-env",
            &env,
            "--step-answer-limit",
            "5242880",
        ],
        &[],
    );
    let (status, instance) = run_one(&server.url).await;
    assert_eq!(status, StatusCode::CREATED, "{}", instance["error"]);
    assert_eq!(instance["status"], "completed", "{}", instance["error"]);
    let kept = instance["outputs"]["pay"].as_str().unwrap_or_default();
    assert_eq!(kept.len(), 4 << 20);
}
