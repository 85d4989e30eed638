//! A step's service that answers a success too long to keep (more than
//! 1 MiB): the step retries under its key and, when its retries run out, is
//! compensated with the steps before it (ADR 3); the server holds none of
//! the answer.

mod common;

use std::sync::{Arc, Mutex};

use common::{client, get_json, post_json, publish_yaml, read_request, serve_in, temp_dir};
use reqwest::StatusCode;
use serde_json::json;
use tokio::io::AsyncWriteExt;

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

/// A service on 127.0.0.1: `/pay` answers 200 with 4 MiB (and keeps the
/// connection open), everything else `{}`. It keeps each request's path.
async fn service() -> (String, Arc<Mutex<Vec<String>>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let seen = Arc::new(Mutex::new(Vec::new()));
    let kept = seen.clone();
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            let kept = kept.clone();
            tokio::spawn(async move {
                let Some(request) = read_request(&mut conn).await else {
                    return;
                };
                let path = request.split(' ').nth(1).unwrap_or_default().to_string();
                kept.lock().unwrap().push(path.clone());
                let reply = if path == "/pay" {
                    let big = format!("\"{}\"", "x".repeat(4 << 20));
                    format!(
                        "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{big}",
                        big.len()
                    )
                } else {
                    "HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\n{}".into()
                };
                let _ = conn.write_all(reply.as_bytes()).await;
                // hold the connection as a slow reader's service would
                tokio::time::sleep(std::time::Duration::from_secs(30)).await;
            });
        }
    });
    (url, seen)
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
    let c = client();
    let r = publish_yaml(&c, &server.url, WORKFLOW).await;
    assert_eq!(
        r.status(),
        StatusCode::CREATED,
        "{}",
        r.text().await.unwrap()
    );
    let (status, instance) = post_json(
        &c,
        format!("{}/workflows/long-answer/instances?wait=30s", server.url),
        json!({}),
    )
    .await;
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
    assert_eq!(
        *seen.lock().unwrap(),
        ["/reserve", "/pay", "/pay", "/refund", "/release"]
    );
    let id = instance["id"].as_str().unwrap();
    let (_, history) = get_json(&c, format!("{}/instances/{id}/events", server.url)).await;
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
