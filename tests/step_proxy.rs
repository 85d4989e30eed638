//! With `HTTP_PROXY` set where `sagaflow serve` runs, `http` steps go through
//! that proxy (ADR 25). The step's service has a name no resolver knows
//! (`.invalid`), so the saga completes only if its call reached the proxy.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{client, post_json, publish_ok, serve_in, temp_dir, tiny_service};
use reqwest::StatusCode;
use serde_json::json;

const WORKFLOW: &str = r#"
name: through-a-proxy
steps:
  - name: effect
    http: { url: "http://service.invalid/effects?n=${ .input.n }", body: { n: "${ .input.n }" } }
    timeout: 5s
    compensate: none
"#;

/// A proxy on 127.0.0.1 that answers every request itself, as the service
/// would.
async fn proxy() -> (String, Arc<Mutex<Vec<String>>>) {
    tiny_service(
        |_| {
            let body = r#"{"through":"the proxy"}"#;
            format!(
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            )
        },
        Duration::ZERO,
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn steps_go_through_the_proxy_the_environment_names() {
    let (proxy_url, seen) = proxy().await;
    let dir = temp_dir("step-proxy");
    let server = serve_in(
        &dir,
        "server.log",
        &["--no-demo"],
        &[
            ("HTTP_PROXY", &proxy_url),
            ("http_proxy", &proxy_url),
            ("NO_PROXY", ""),
            ("no_proxy", ""),
        ],
    );
    let c = client();
    publish_ok(&c, &server.url, WORKFLOW).await;
    let (status, instance) = post_json(
        &c,
        format!(
            "{}/workflows/through-a-proxy/instances?wait=30s",
            server.url
        ),
        json!({"n": 7}),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{instance}");
    assert_eq!(instance["status"], "completed", "{instance}");
    assert_eq!(
        instance["outputs"]["effect"],
        json!({"through": "the proxy"}),
        "{instance}"
    );
    // a proxy is sent the whole URL
    let first: Vec<_> = seen
        .lock()
        .unwrap()
        .iter()
        .map(|r| r.lines().next().unwrap_or_default().to_string())
        .collect();
    assert_eq!(first, ["post http://service.invalid/effects?n=7 http/1.1"]);
}
