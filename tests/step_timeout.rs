//! An order whose payment service never answers in time is compensated after
//! the step's timeout: the reservation is released and the payment, whose
//! outcome is unknown, is refunded.

mod common;

use common::{client, get_json, order, temp_dir, Proc};
use reqwest::StatusCode;
use serde_json::Value;

const WORKFLOW: &str = r#"
name: slow-order
env:
  fast: http://127.0.0.1:1/demo
  slow: http://127.0.0.1:1/demo
steps:
  - name: reserve
    http: { url: "${ .env.fast }/inventory/reservations", body: { order_id: "${ .input.order_id }" } }
    timeout: 5s
    compensate:
      http: { url: "${ .env.fast }/inventory/releases", body: { order_id: "${ .input.order_id }" } }
  - name: pay
    http: { url: "${ .env.slow }/payments", body: { order_id: "${ .input.order_id }", amount: "${ .input.amount }" } }
    timeout: 300ms
    compensate:
      http: { url: "${ .env.fast }/refunds", body: { order_id: "${ .input.order_id }" } }
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_payment_that_never_answers_is_compensated_after_its_timeout() {
    let dir = temp_dir("timeout");
    let fast = Proc::start(
        &["demo-services", "--listen", "127.0.0.1:0"],
        &dir.join("fast.log"),
    );
    let slow = Proc::start(
        &[
            "demo-services",
            "--listen",
            "127.0.0.1:0",
            "--latency",
            "3s",
        ],
        &dir.join("slow.log"),
    );
    let env = format!("fast={}/demo,slow={}/demo", fast.url, slow.url);
    let data = dir.join("data");
    let server = Proc::start(
        &[
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
            data.to_str().unwrap(),
            "--workflows",
            dir.to_str().unwrap(),
            "--no-demo",
            "--workflow-env",
            &env,
        ],
        &dir.join("server.log"),
    );
    let c = client();

    let r = c
        .post(format!("{}/workflows", server.url))
        .header("content-type", "application/yaml")
        .body(WORKFLOW)
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status(),
        StatusCode::CREATED,
        "{}",
        r.text().await.unwrap()
    );
    let started: Value = c
        .post(format!("{}/workflows/slow-order/instances", server.url))
        .json(&order(1, 10.0))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = started["id"].as_str().unwrap();
    let (_, done) = get_json(&c, format!("{}/instances/{id}?wait=30s", server.url)).await;
    assert_eq!(done["status"], "compensated", "{done}");
    assert!(done["error"].as_str().unwrap().contains("pay:"), "{done}");
    let history = get_json(&c, format!("{}/instances/{id}/events", server.url))
        .await
        .1["items"]
        .clone();
    let failed = history
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["event_type"] == "StepFailed")
        .expect("pay failed");
    assert_eq!(failed["data"]["kind"], "timeout", "{failed}");
    let undone: Vec<&str> = history
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["event_type"] == "StepCompensated")
        .map(|e| e["data"]["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        undone,
        ["pay", "reserve"],
        "the payment's outcome is unknown, so it is refunded too, then the stock released"
    );
}
