//! `sagaflow serve` on EventStoreDB, through the protocol-level test double
//! (`esdb-double`, a gRPC server in this test process): no real EventStoreDB
//! runs here. Orders go through, and a restarted server finds them in the log.

mod common;

use common::{client, get_json};
use reqwest::StatusCode;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orders_run_on_the_eventstoredb_double_and_survive_a_restart() {
    let double = esdb_double::Double::default();
    let server = double.serve().await;
    let url = server.url();
    let dir = common::temp_dir("esdb");
    let data = dir.join("data");
    let s = common::serve_in(&dir, "first.log", &["--store", &url], &[]);
    let c = client();
    let mut instances = Vec::new();
    for (id, amount) in [("es-1", 20.0), ("es-2", 5000.0)] {
        let r = c
            .post(format!("{}/orders", s.url))
            .json(&json!({"order_id": id, "customer_id": "c-es", "items": [{"sku": "cup", "qty": 1}], "amount": amount}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::CREATED, "{}", s.log());
        let o: serde_json::Value = r.json().await.unwrap();
        instances.push(o["instance_id"].as_str().unwrap().to_string());
    }
    for id in &instances {
        get_json(&c, format!("{}/instances/{id}?wait=30s", s.url)).await;
    }
    let (_, o1) = get_json(&c, format!("{}/orders/es-1?consistent=true", s.url)).await;
    let (_, o2) = get_json(&c, format!("{}/orders/es-2?consistent=true", s.url)).await;
    assert_eq!(
        (o1["status"].as_str(), o2["status"].as_str()),
        (Some("shipped"), Some("compensated")),
        "{}",
        s.log()
    );
    let mut histories = 0;
    for id in &instances {
        let (_, h) = get_json(&c, format!("{}/instances/{id}/events", s.url)).await;
        histories += h["items"].as_array().unwrap().len();
    }
    let stored = double.len_of("saga-");
    assert!(histories >= 12, "{histories} events");
    assert_eq!(stored, histories, "every event is in the double");
    drop(s);

    // a new server (its read models rebuilt from the double's $all) sees the same
    std::fs::remove_dir_all(&data).unwrap();
    let s = common::serve_in(&dir, "second.log", &["--store", &url], &[]);
    let (_, again) = get_json(&c, format!("{}/orders/es-2?consistent=true", s.url)).await;
    assert_eq!(again["status"], "compensated", "{}", s.log());
    let history = get_json(&c, format!("{}/instances/{}/events", s.url, instances[1]))
        .await
        .1;
    let kinds: Vec<&str> = history["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["event_type"].as_str().unwrap())
        .collect();
    assert_eq!(
        (kinds.first(), kinds.last()),
        (Some(&"SagaStarted"), Some(&"SagaCompensated")),
        "{kinds:?}"
    );
    assert_eq!(
        double.len_of("saga-"),
        stored,
        "a restart on ended sagas writes nothing to them"
    );
}
