//! `sagaflow serve` on PostgreSQL (events and read models), and `sagaflow
//! projections rebuild` reproducing the read models from the log, on both stores.
//! PostgreSQL comes from `scripts/postgres.sh` (the test command runs it).

mod common;

use std::process::Command;

use common::{client, get_json, serve};
use reqwest::StatusCode;
use serde_json::{json, Value};

async fn create(c: &reqwest::Client, url: &str, id: &str, amount: f64) -> Value {
    let r = c
        .post(format!("{url}/orders"))
        .json(&json!({"order_id": id, "customer_id": "c-pg", "items": [{"sku": "mug", "qty": 3}], "amount": amount}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    r.json().await.unwrap()
}

/// Everything the read models say, as the API shows it.
async fn read_models(c: &reqwest::Client, url: &str) -> (Value, Value) {
    let instances = get_json(c, format!("{url}/instances?consistent=true&limit=1000"))
        .await
        .1;
    let orders = get_json(c, format!("{url}/customers/c-pg/orders?consistent=true"))
        .await
        .1;
    (instances, orders)
}

fn rebuild(data: &std::path::Path, store: &str) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_sagaflow"))
        .args([
            "projections",
            "rebuild",
            "--data-dir",
            data.to_str().unwrap(),
            "--store",
            store,
        ])
        .env("SAGAFLOW_LOG", "warn")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "rebuild failed: {text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    text
}

async fn orders_survive_a_rebuild(name: &str, store: &str) {
    let (s, dir) = serve(name, &["--store", store]);
    let c = client();
    let shipped = create(&c, &s.url, "pg-1", 20.0).await;
    let declined = create(&c, &s.url, "pg-2", 5000.0).await;
    for o in [&shipped, &declined] {
        let id = o["instance_id"].as_str().unwrap();
        get_json(&c, format!("{}/instances/{id}?wait=30s", s.url)).await;
    }
    let (_, o1) = get_json(&c, format!("{}/orders/pg-1?consistent=true", s.url)).await;
    let (_, o2) = get_json(&c, format!("{}/orders/pg-2?consistent=true", s.url)).await;
    assert_eq!(
        (o1["status"].as_str(), o2["status"].as_str()),
        (Some("shipped"), Some("compensated"))
    );
    let before = read_models(&c, &s.url).await;
    assert_eq!(before.0["items"].as_array().unwrap().len(), 2);
    drop(s);

    let data = dir.join("data");
    let said = rebuild(&data, store);
    assert!(said.contains("read models rebuilt"), "{said}");
    let s = common::serve_in(&dir, "after.log", &["--store", store], &[]);
    let after = read_models(&c, &s.url).await;
    assert_eq!(before, after, "the rebuilt read models are the same");
}

#[tokio::test]
async fn orders_on_postgres_and_a_rebuild_reproduces_the_read_models() {
    let url = sagaflow_engine::store::postgres::test_database("e2e_orders").await;
    orders_survive_a_rebuild("pg-orders", &url).await;
}

#[tokio::test]
async fn a_rebuild_reproduces_the_sqlite_read_models() {
    orders_survive_a_rebuild("sqlite-rebuild", "sqlite").await;
}
