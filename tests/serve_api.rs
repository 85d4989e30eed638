//! The HTTP API of `sagaflow serve`, as a client uses it.

mod common;

use common::{
    client, client_with, get_json, order, serve, CLIENT_TOKEN, OPERATOR_TOKEN, WORKER_TOKEN,
};
use reqwest::StatusCode;
use serde_json::{json, Value};

async fn post(c: &reqwest::Client, url: String, body: Value) -> (StatusCode, Value) {
    let r = c.post(url).json(&body).send().await.expect("request");
    let status = r.status();
    (status, r.json().await.unwrap_or(Value::Null))
}

fn types(history: &Value) -> Vec<String> {
    history
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["event_type"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test]
async fn an_order_completes_and_an_over_limit_order_is_compensated() {
    let (s, _dir) = serve("orders", &[]);
    let c = client();
    let (status, started) = post(
        &c,
        format!("{}/workflows/order/instances", s.url),
        order(1, 120.5),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{started}");
    let id = started["id"].as_str().unwrap().to_string();
    let (_, done) = get_json(&c, format!("{}/instances/{id}?wait=30s", s.url)).await;
    assert_eq!(done["status"], "completed", "{done}");
    assert_eq!(done["output"]["order_id"], "o-1");
    assert!(done["output"]["shipment_id"]
        .as_str()
        .unwrap()
        .starts_with("ship-"));

    let (_, declined) = post(
        &c,
        format!("{}/workflows/order/instances", s.url),
        order(2, 5000.0),
    )
    .await;
    let id2 = declined["id"].as_str().unwrap().to_string();
    let (_, done2) = get_json(&c, format!("{}/instances/{id2}?wait=30s", s.url)).await;
    assert_eq!(done2["status"], "compensated", "{done2}");
    assert!(
        done2["error"].as_str().unwrap().contains("HTTP 402"),
        "{done2}"
    );
    let history = get_json(&c, format!("{}/instances/{id2}/events", s.url))
        .await
        .1["items"]
        .clone();
    let t = types(&history);
    assert_eq!(t.first().map(String::as_str), Some("SagaStarted"));
    assert!(t.contains(&"CompensationStarted".to_string()));
    assert_eq!(t.last().map(String::as_str), Some("SagaCompensated"));
    let release = history
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["event_type"] == "StepCompensated")
        .expect("the release is in the history");
    assert_eq!(release["data"]["name"], "reserve");
    assert!(history
        .as_array()
        .unwrap()
        .windows(2)
        .all(|w| w[0]["revision"].as_u64() < w[1]["revision"].as_u64()));

    let (_, stats) = get_json(&c, format!("{}/demo/stats", s.url)).await;
    assert_eq!(
        stats["orders"]["o-1"],
        json!({"reserve": 1, "pay": 1, "ship": 1})
    );
    assert_eq!(stats["orders"]["o-2"], json!({"reserve": 1, "release": 1}));
    // without a fault, every call went out once: no key came twice
    common::nothing_was_sent_twice(&c, &s.url).await;
    let (_, listed) = get_json(
        &c,
        format!("{}/instances?workflow=order&consistent=true", s.url),
    )
    .await;
    let mut statuses: Vec<&str> = listed["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["status"].as_str().unwrap())
        .collect();
    statuses.sort_unstable();
    assert_eq!(statuses, ["compensated", "completed"]);
}

#[tokio::test]
async fn a_retried_start_with_the_same_key_returns_the_same_instance() {
    let (s, _dir) = serve("idempotency", &[]);
    let c = client();
    let url = format!("{}/workflows/order/instances", s.url);
    let first = c
        .post(&url)
        .header("Idempotency-Key", "order-7")
        .json(&order(7, 10.0))
        .send()
        .await
        .unwrap();
    assert_eq!(first.status(), StatusCode::CREATED);
    let location = first.headers()["location"].to_str().unwrap().to_string();
    let a: Value = first.json().await.unwrap();
    let again = c
        .post(&url)
        .header("Idempotency-Key", "order-7")
        .json(&order(7, 10.0))
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), StatusCode::OK);
    let b: Value = again.json().await.unwrap();
    assert_eq!(a["id"], b["id"]);
    assert_eq!(
        location,
        format!("/instances/{}", a["id"].as_str().unwrap())
    );
    let other = c
        .post(&url)
        .header("Idempotency-Key", "order-7")
        .json(&order(8, 10.0))
        .send()
        .await
        .unwrap();
    assert_eq!(other.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let p: Value = other.json().await.unwrap();
    assert_eq!(p["type"], "/problems/idempotency-key-reused");
}

#[tokio::test]
async fn bad_requests_get_problems_and_write_nothing() {
    let (s, _dir) = serve("bad-input", &[]);
    let c = client();
    let count = || async {
        c.get(format!("{}/instances", s.url))
            .send()
            .await
            .unwrap()
            .json::<Value>()
            .await
            .unwrap()["items"]
            .as_array()
            .unwrap()
            .len()
    };
    let before = count().await;

    let cases: Vec<(reqwest::RequestBuilder, StatusCode, &str)> = vec![
        (
            c.post(format!("{}/workflows/nope/instances", s.url))
                .json(&json!({})),
            StatusCode::NOT_FOUND,
            "/problems/unknown-workflow",
        ),
        (
            c.post(format!("{}/workflows/order/instances", s.url))
                .json(&json!({"order_id": 5})),
            StatusCode::UNPROCESSABLE_ENTITY,
            "/problems/invalid-input",
        ),
        (
            c.post(format!("{}/workflows/order/instances", s.url))
                .header("content-type", "application/json")
                .body("{\"order_id\":"),
            StatusCode::BAD_REQUEST,
            "/problems/invalid-body",
        ),
        (
            c.post(format!("{}/workflows/order/instances", s.url))
                .header("content-type", "text/plain")
                .body("hi"),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "/problems/unsupported-media-type",
        ),
        // on a client of its own: the server answers without reading the body, then closes the connection
        (
            client()
                .post(format!("{}/workflows/order/instances", s.url))
                .header("content-type", "application/json")
                .body(vec![b' '; 2 * 1024 * 1024]),
            StatusCode::PAYLOAD_TOO_LARGE,
            "/problems/too-large",
        ),
        (
            c.get(format!("{}/instances/not-a-uuid", s.url)),
            StatusCode::BAD_REQUEST,
            "/problems/bad-request",
        ),
        (
            c.get(format!("{}/instances/{}", s.url, uuid_nil())),
            StatusCode::NOT_FOUND,
            "/problems/unknown-instance",
        ),
        (
            c.get(format!("{}/instances/{}?wait=forever", s.url, uuid_nil())),
            StatusCode::BAD_REQUEST,
            "/problems/bad-wait",
        ),
        (
            c.post(format!("{}/tasks/nope/complete", s.url))
                .json(&json!({})),
            StatusCode::NOT_FOUND,
            "/problems/unknown-task",
        ),
        (
            c.post(format!("{}/workflows", s.url))
                .header("content-type", "application/yaml")
                .body("name: x\nsteps: []\n"),
            StatusCode::UNPROCESSABLE_ENTITY,
            "/problems/invalid-workflow",
        ),
        (
            c.post(format!("{}/workflows", s.url))
                .header("content-type", "application/yaml")
                .body(vec![0xffu8, 0xfe, 0x00]),
            StatusCode::BAD_REQUEST,
            "/problems/bad-request",
        ),
        (
            c.get(format!("{}/no/such/route", s.url)),
            StatusCode::NOT_FOUND,
            "/problems/not-found",
        ),
        // ids no URL path can name (a client reads `/orders/..` as `/`)
        (
            c.post(format!("{}/orders", s.url)).json(
                &json!({"order_id": "..", "customer_id": "c-1", "items": [{"sku": "a", "qty": 1}], "amount": 1}),
            ),
            StatusCode::BAD_REQUEST,
            "/problems/invalid-body",
        ),
        (
            c.post(format!("{}/orders", s.url)).json(
                &json!({"order_id": "o-1", "customer_id": ".", "items": [{"sku": "a", "qty": 1}], "amount": 1}),
            ),
            StatusCode::BAD_REQUEST,
            "/problems/invalid-body",
        ),
    ];
    for (req, want, kind) in cases {
        let r = req.send().await.unwrap();
        let status = r.status();
        let ct = r
            .headers()
            .get("content-type")
            .map(|v| v.to_str().unwrap().to_string())
            .unwrap_or_default();
        let body: Value = r.json().await.unwrap_or(Value::Null);
        assert_eq!(
            (status, body["type"].as_str().unwrap_or_default()),
            (want, kind),
            "{body}"
        );
        assert_eq!(ct, "application/problem+json", "{kind}");
        assert_eq!(body["status"], want.as_u16());
        assert!(body["detail"].as_str().is_some_and(|d| !d.is_empty()));
    }
    assert_eq!(count().await, before, "no instance was written");

    let (_, bad_wf) = {
        let r = c
            .post(format!("{}/workflows", s.url))
            .header("content-type", "application/yaml")
            .body("name: w\nsteps:\n  - name: a\n    retires: 3\n")
            .send()
            .await
            .unwrap();
        (r.status(), r.json::<Value>().await.unwrap())
    };
    // the misspelt field, and what it does not hide: the step has no action
    let e = &bad_wf["errors"][1];
    assert_eq!(
        (e["code"].as_str(), e["line"].as_u64(), e["column"].as_u64()),
        (Some("unknown-field"), Some(4), Some(5)),
        "{bad_wf}"
    );
    assert_eq!(bad_wf["errors"][0]["code"], "missing-action", "{bad_wf}");

    // a signal to an instance that has ended
    let (_, done) = post(
        &c,
        format!("{}/workflows/order/instances", s.url),
        order(1, 1.0),
    )
    .await;
    let id = done["id"].as_str().unwrap();
    get_json(&c, format!("{}/instances/{id}?wait=30s", s.url)).await;
    let (status, p) = post(
        &c,
        format!("{}/instances/{id}/signals/approval", s.url),
        json!({}),
    )
    .await;
    assert_eq!(
        (status, p["type"].as_str()),
        (StatusCode::CONFLICT, Some("/problems/instance-finished"))
    );
    let (status, _) = post(&c, format!("{}/instances/{id}/cancel", s.url), json!({})).await;
    assert_eq!(status, StatusCode::CONFLICT);
}

fn uuid_nil() -> &'static str {
    "00000000-0000-0000-0000-000000000000"
}

#[tokio::test]
async fn a_worker_and_a_signal_drive_the_approval_workflow() {
    let (s, _dir) = serve("approval", &[]);
    let c = client();
    let (status, started) = post(
        &c,
        format!("{}/workflows/refund-approval/instances", s.url),
        json!({"refund_id": "r-1", "customer_id": "c-9", "amount": 40}),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{started}");
    let id = started["id"].as_str().unwrap().to_string();
    let mut view = Value::Null;
    for _ in 0..100 {
        view = get_json(&c, format!("{}/instances/{id}", s.url)).await.1;
        if view["status"] == "waiting" {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(
        (view["status"].as_str(), view["current_step"].as_str()),
        (Some("waiting"), Some("approval")),
        "{view}"
    );
    let (status, _) = post(
        &c,
        format!("{}/instances/{id}/signals/approval", s.url),
        json!({"approved_by": "kim"}),
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let task = c
        .post(format!("{}/tasks/notifications/poll?wait=20s", s.url))
        .send()
        .await
        .unwrap();
    assert_eq!(task.status(), StatusCode::OK);
    let task: Value = task.json().await.unwrap();
    assert_eq!(task["instance_id"], id.as_str());
    assert_eq!(task["input"]["text"], "Your refund of 40 is on its way.");
    let tid = task["id"].as_str().unwrap();
    let hb = c
        .post(format!("{}/tasks/{tid}/heartbeat", s.url))
        .send()
        .await
        .unwrap();
    assert_eq!(hb.status(), StatusCode::NO_CONTENT);
    let (status, answer) = post(
        &c,
        format!("{}/tasks/{tid}/complete", s.url),
        json!({"output": {"sent": true}}),
    )
    .await;
    assert_eq!(
        (status, answer["accepted"].as_bool()),
        (StatusCode::OK, Some(true))
    );
    let (_, done) = get_json(&c, format!("{}/instances/{id}?wait=30s", s.url)).await;
    assert_eq!(done["status"], "completed", "{done}");
    let empty = c
        .post(format!("{}/tasks/notifications/poll?wait=100ms", s.url))
        .send()
        .await
        .unwrap();
    assert_eq!(empty.status(), StatusCode::NO_CONTENT);
}

#[tokio::test]
async fn cancelling_a_trip_undoes_the_flight_through_its_worker() {
    let (s, _dir) = serve("cancel", &[]);
    let c = client();
    let input = json!({"trip_id": "t-1", "traveller": "ada", "from": "LHR", "to": "OSL", "depart": "2027-01-02", "return": "2027-01-09"});
    let (_, started) = post(
        &c,
        format!("{}/workflows/trip-booking/instances", s.url),
        input,
    )
    .await;
    let id = started["id"].as_str().unwrap().to_string();
    let (status, view) = post(
        &c,
        format!("{}/instances/{id}/cancel", s.url),
        json!({"reason": "changed plans"}),
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{view}");
    assert_eq!(view["status"], "compensating");
    let task: Value = c
        .post(format!("{}/tasks/flights/poll?wait=20s", s.url))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        task["phase"], "compensation",
        "the forward task was withdrawn: {task}"
    );
    post(
        &c,
        format!("{}/tasks/{}/complete", s.url, task["id"].as_str().unwrap()),
        json!({}),
    )
    .await;
    let (_, done) = get_json(&c, format!("{}/instances/{id}?wait=30s", s.url)).await;
    assert_eq!(
        (done["status"].as_str(), done["error"].as_str()),
        (Some("cancelled"), Some("cancelled: changed plans"))
    );
}

#[tokio::test]
async fn the_spec_and_swagger_ui_are_served() {
    let (s, _dir) = serve("spec", &[]);
    let c = client();
    let (status, spec) = get_json(&c, format!("{}/openapi.json", s.url)).await;
    assert_eq!(status, StatusCode::OK);
    assert!(spec["openapi"].as_str().unwrap().starts_with("3."));
    // docs/openapi.json is the served spec (only the server URL differs)
    let mut written: Value = serde_json::from_str(
        &std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/openapi.json"))
            .unwrap(),
    )
    .unwrap();
    let mut served = spec.clone();
    written["servers"] = Value::Null;
    served["servers"] = Value::Null;
    assert!(
        written == served,
        "docs/openapi.json is stale: run `cargo run -- openapi > docs/openapi.json`"
    );
    for path in [
        "/workflows",
        "/workflows/{name}/instances",
        "/instances/{id}",
        "/instances/{id}/events",
        "/instances/{id}/signals/{name}",
        "/instances/{id}/cancel",
        "/tasks/{queue}/poll",
        "/health",
    ] {
        assert!(spec["paths"].get(path).is_some(), "{path} is in the spec");
    }
    let docs = c.get(format!("{}/docs", s.url)).send().await.unwrap();
    assert_eq!(docs.status(), StatusCode::OK);
    assert!(docs
        .text()
        .await
        .unwrap()
        .to_lowercase()
        .contains("swagger"));
    let (status, health) = get_json(&c, format!("{}/health", s.url)).await;
    assert_eq!(
        (status, health["status"].as_str()),
        (StatusCode::OK, Some("ok"))
    );
}

#[tokio::test]
async fn every_protected_operation_needs_a_token_of_the_right_role() {
    let (s, _dir) = serve("auth", &[]);
    // every operation of the served spec, except the public ones, with its path parameters filled in
    let spec: Value = get_json(&client_with(None), format!("{}/openapi.json", s.url))
        .await
        .1;
    let mut protected = Vec::new();
    let mut public = Vec::new();
    for (path, ops) in spec["paths"].as_object().unwrap() {
        for (method, op) in ops.as_object().unwrap() {
            let filled = path
                .split('/')
                .map(|part| match part {
                    "{id}" | "{instance_id}" => uuid_nil(),
                    p if p.starts_with('{') => "x",
                    p => p,
                })
                .collect::<Vec<_>>()
                .join("/");
            if op.get("security").is_some() {
                protected.push((method.to_uppercase(), filled));
            } else {
                public.push(path.clone());
            }
        }
    }
    public.sort();
    assert_eq!(public, ["/health", "/ready"], "only these are open");
    assert!(protected.len() >= 20, "{protected:?}");
    for token in [None, Some("not-a-valid-token-at-all")] {
        let c = client_with(token);
        for (method, path) in &protected {
            let req = c
                .request(method.parse().unwrap(), format!("{}{path}", s.url))
                .json(&json!({}));
            let r = req.send().await.unwrap();
            assert_eq!(
                r.status(),
                StatusCode::UNAUTHORIZED,
                "{method} {path} with {token:?}"
            );
            let p: Value = r.json().await.unwrap();
            assert_eq!(p["type"], "/problems/unauthorized", "{method} {path}");
        }
    }
    for public in [
        "/health",
        "/ready",
        "/openapi.json",
        "/openapi.yaml",
        "/docs",
    ] {
        assert_eq!(
            client_with(None)
                .get(format!("{}{public}", s.url))
                .send()
                .await
                .unwrap()
                .status(),
            StatusCode::OK,
            "{public}"
        );
    }
    // Swagger UI, with the spec in the page
    let docs = client_with(None)
        .get(format!("{}/docs", s.url))
        .send()
        .await
        .unwrap();
    assert!(docs.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/html"));
    let page = docs.text().await.unwrap();
    assert!(page.contains("SwaggerUIBundle") && page.contains("/workflows/{name}/instances"));

    // a client starts and reads, but may not publish or cancel
    let client = client_with(Some(CLIENT_TOKEN));
    let (status, started) = post(
        &client,
        format!("{}/workflows/order/instances", s.url),
        order(1, 10.0),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED);
    let iid = started["id"].as_str().unwrap();
    assert_eq!(
        get_json(&client, format!("{}/instances/{iid}?wait=30s", s.url))
            .await
            .0,
        StatusCode::OK
    );
    let (status, p) = post(
        &client,
        format!("{}/instances/{iid}/cancel", s.url),
        json!({}),
    )
    .await;
    assert_eq!(
        (status, p["type"].as_str()),
        (StatusCode::FORBIDDEN, Some("/problems/forbidden"))
    );
    let r = common::publish_yaml(&client, &s.url, "name: x").await;
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    // an operator may cancel (this one has ended: 409, past the role check)
    let (status, _) = post(
        &client_with(Some(OPERATOR_TOKEN)),
        format!("{}/instances/{iid}/cancel", s.url),
        json!({}),
    )
    .await;
    assert_eq!(status, StatusCode::CONFLICT);
    // a worker takes tasks but reads no instances
    let worker = client_with(Some(WORKER_TOKEN));
    assert_eq!(
        worker
            .post(format!("{}/tasks/q/poll?wait=10ms", s.url))
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        get_json(&worker, format!("{}/instances/{iid}", s.url))
            .await
            .0,
        StatusCode::FORBIDDEN
    );
    let spec: Value = get_json(&client, format!("{}/openapi.json", s.url)).await.1;
    assert_eq!(
        spec["components"]["securitySchemes"]["Auth"]["scheme"], "bearer",
        "Swagger UI's Authorize button uses it"
    );
}

#[tokio::test]
async fn the_first_start_generates_and_prints_an_admin_token() {
    let dir = common::temp_dir("first-start");
    let data = dir.join("data");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_sagaflow"))
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
            data.to_str().unwrap(),
            "--workflows",
            dir.to_str().unwrap(),
        ])
        .env_remove("SAGAFLOW_ADMIN_TOKEN")
        .env("SAGAFLOW_LOG", "warn")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut child = out;
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufRead::lines(std::io::BufReader::new(stdout)).map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let mut url = String::new();
    let mut token = String::new();
    let mut console = String::new();
    // the banner is a few lines; stop once all are seen (the server keeps running), or after 30 s
    while let Ok(line) = rx.recv_timeout(std::time::Duration::from_secs(30)) {
        if let Some(u) = line.split_whitespace().find(|w| w.starts_with("http://")) {
            if url.is_empty() {
                url = u.to_string();
            }
        }
        if let Some(c) = line.split("Console: ").nth(1) {
            console = c.split_whitespace().next().unwrap_or_default().to_string();
        }
        if let Some(t) = line.split_whitespace().find(|w| w.starts_with("sf_")) {
            token = t.to_string();
        }
        if !url.is_empty() && !token.is_empty() && !console.is_empty() {
            break;
        }
    }
    assert!(token.len() > 40, "a generated token was printed");
    assert_eq!(console, format!("{url}/ui"), "the banner links the console");
    let stored = std::fs::read_to_string(data.join("admin-token.sha256")).unwrap();
    assert!(!stored.contains(&token), "only its hash is stored");
    let ok = client_with(Some(&token))
        .get(format!("{url}/workflows"))
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), StatusCode::OK);
    let _ = child.kill();
    let _ = child.wait();
}

/// Creates an order (201), follows its `Location` to it (200, the same order
/// id), and gives the `Location`.
async fn create_and_follow(
    c: &reqwest::Client,
    url: &str,
    order_id: &str,
    customer_id: &str,
) -> String {
    let r = c
        .post(format!("{url}/orders"))
        .json(&json!({"order_id": order_id, "customer_id": customer_id, "items": [{"sku": "lamp", "qty": 1}], "amount": 20.0}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED, "{order_id:?}");
    let location = r.headers()["location"].to_str().unwrap().to_string();
    let (status, followed) = get_json(c, format!("{url}{location}")).await;
    assert_eq!(
        (status, followed["order_id"].as_str()),
        (StatusCode::OK, Some(order_id)),
        "{location}: {followed}"
    );
    location
}

#[tokio::test]
async fn orders_are_created_followed_and_listed_per_customer() {
    let (s, _dir) = serve("orders", &[]);
    let c = client_with(Some(CLIENT_TOKEN));
    let new = |id: &str, amount: f64| json!({"order_id": id, "customer_id": "c-9", "items": [{"sku": "lamp", "qty": 1}], "amount": amount});
    let r = c
        .post(format!("{}/orders", s.url))
        .json(&new("o-100", 20.0))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    assert_eq!(r.headers()["location"], "/orders/o-100");
    let created: Value = r.json().await.unwrap();
    assert_eq!(created["customer_id"], "c-9");
    let instance = created["instance_id"].as_str().unwrap().to_string();

    let (status, again) = post(&c, format!("{}/orders", s.url), new("o-100", 20.0)).await;
    assert_eq!(
        (status, again["instance_id"].as_str()),
        (StatusCode::OK, Some(instance.as_str()))
    );
    let (status, p) = post(&c, format!("{}/orders", s.url), new("o-100", 21.0)).await;
    assert_eq!(
        (status, p["type"].as_str()),
        (StatusCode::CONFLICT, Some("/problems/order-exists"))
    );

    let (_, declined) = post(&c, format!("{}/orders", s.url), new("o-101", 5000.0)).await;
    for id in [instance.as_str(), declined["instance_id"].as_str().unwrap()] {
        get_json(&c, format!("{}/instances/{id}?wait=30s", s.url)).await;
    }
    let (status, shipped) = get_json(&c, format!("{}/orders/o-100?consistent=true", s.url)).await;
    assert_eq!(
        (status, shipped["status"].as_str()),
        (StatusCode::OK, Some("shipped"))
    );
    let (_, undone) = get_json(&c, format!("{}/orders/o-101?consistent=true", s.url)).await;
    assert_eq!(undone["status"], "compensated", "{undone}");

    let (_, first) = get_json(&c, format!("{}/customers/c-9/orders?limit=1", s.url)).await;
    assert_eq!(first["items"][0]["order_id"], "o-101", "newest first");
    let cursor = first["next_cursor"].as_str().unwrap();
    let (_, second) = get_json(
        &c,
        format!("{}/customers/c-9/orders?limit=1&cursor={cursor}", s.url),
    )
    .await;
    assert_eq!(second["items"][0]["order_id"], "o-100");
    assert!(
        second.get("next_cursor").is_none_or(Value::is_null),
        "{second}"
    );

    let (_, found) = get_json(
        &c,
        format!(
            "{}/instances?input_field=customer_id=c-9&input_field=order_id=o-101&consistent=true",
            s.url
        ),
    )
    .await;
    let found = found["items"].as_array().unwrap();
    assert_eq!(found.len(), 1);
    assert_eq!(found[0]["input"]["order_id"], "o-101");

    for (url, want, kind) in [
        (
            format!("{}/orders/nope", s.url),
            StatusCode::NOT_FOUND,
            "/problems/unknown-order",
        ),
        (
            format!("{}/instances?input_field=customer_id", s.url),
            StatusCode::BAD_REQUEST,
            "/problems/bad-input-filter",
        ),
        (
            format!("{}/instances?input_field=a;drop=1", s.url),
            StatusCode::BAD_REQUEST,
            "/problems/bad-input-filter",
        ),
        // only the fields a workflow declares (`search:`) are indexed
        (
            format!("{}/instances?input_field=amount=5000", s.url),
            StatusCode::BAD_REQUEST,
            "/problems/field-not-searchable",
        ),
        (
            format!(
                "{}/instances?workflow=trip-booking&input_field=customer_id=c-9",
                s.url
            ),
            StatusCode::BAD_REQUEST,
            "/problems/field-not-searchable",
        ),
        (
            format!("{}/instances?cursor=zzz", s.url),
            StatusCode::BAD_REQUEST,
            "/problems/bad-cursor",
        ),
        // an order listing's cursor is not an instance listing's
        (
            format!("{}/instances?cursor=1700000000000.o-1", s.url),
            StatusCode::BAD_REQUEST,
            "/problems/bad-cursor",
        ),
        (
            format!("{}/instances?started_from=yesterday", s.url),
            StatusCode::BAD_REQUEST,
            "/problems/bad-parameter",
        ),
    ] {
        let (status, p) = get_json(&c, url.clone()).await;
        assert_eq!(
            (status, p["type"].as_str().unwrap_or_default()),
            (want, kind),
            "{url}"
        );
    }
    let (_, p) = get_json(
        &c,
        format!(
            "{}/instances?workflow=trip-booking&input_field=customer_id=c-9",
            s.url
        ),
    )
    .await;
    let detail = p["detail"].as_str().unwrap_or_default();
    assert!(
        detail.contains("`search: [customer_id]`") && detail.contains("declared by `order`"),
        "{p}"
    );
    let (status, p) = post(&c, format!("{}/orders", s.url), json!({"order_id": "o-1", "customer_id": "c", "items": [{"sku": "a", "qty": 0}], "amount": 1})).await;
    assert_eq!(
        (status, p["errors"][0]["path"].as_str()),
        (StatusCode::BAD_REQUEST, Some("body.qty")),
        "{p}"
    );
    let (status, p) = get_json(&c, format!("{}/customers/c-9/orders?limit=0", s.url)).await;
    assert_eq!(
        (status, p["type"].as_str(), p["errors"][0]["path"].as_str()),
        (
            StatusCode::BAD_REQUEST,
            Some("/problems/bad-parameter"),
            Some("limit")
        ),
        "{p}"
    );

    // any order id gives a Location a client can follow: a raw control
    // character or quote would not be a header value at all
    let odd = "ö 1/\u{e}\"~";
    let location = create_and_follow(&c, &s.url, odd, "c-odd").await;
    assert_eq!(location, "/orders/%C3%B6%201%2F%0E%22~");

    // `.` and `..` are refused (no URL path names them); dots elsewhere are ids
    let (status, p) = post(&c, format!("{}/orders", s.url), json!({"order_id": ".", "customer_id": "c", "items": [{"sku": "a", "qty": 1}], "amount": 1})).await;
    assert_eq!(
        (status, p["errors"][0]["path"].as_str()),
        (StatusCode::BAD_REQUEST, Some("body.order_id")),
        "{p}"
    );
    for id in ["...", ".a", "a..", "..\n"] {
        create_and_follow(&c, &s.url, id, "...").await;
    }
    let (_, listed) = get_json(
        &c,
        format!("{}/customers/.../orders?consistent=true", s.url),
    )
    .await;
    assert_eq!(
        listed["items"].as_array().map(Vec::len),
        Some(4),
        "{listed}"
    );
}

#[tokio::test]
async fn an_admin_issues_a_worker_token_for_one_queue_and_revokes_it() {
    let (s, dir) = serve("tokens", &[]);
    let admin = client();
    let (status, issued) = post(
        &admin,
        format!("{}/tokens", s.url),
        json!({"name": "flight-worker", "role": "worker", "queues": ["flights"]}),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{issued}");
    let secret = issued["token"].as_str().unwrap().to_string();
    let id = issued["id"].as_str().unwrap().to_string();
    let (_, listed) = get_json(&admin, format!("{}/tokens", s.url)).await;
    assert!(
        !listed.to_string().contains(&secret),
        "secrets are never listed"
    );
    assert!(listed
        .as_array()
        .unwrap()
        .iter()
        .any(|t| t["id"] == id.as_str() && t["source"] == "api"));
    assert!(
        !s.log().contains(&secret),
        "the secret is not in the server's log"
    );

    let worker = client_with(Some(&secret));
    let poll = |queue: &str| {
        worker
            .post(format!("{}/tasks/{queue}/poll?wait=10ms", s.url))
            .send()
    };
    assert_eq!(
        poll("flights").await.unwrap().status(),
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        poll("hotels").await.unwrap().status(),
        StatusCode::FORBIDDEN
    );
    let (status, _) = post(
        &client_with(Some(CLIENT_TOKEN)),
        format!("{}/tokens", s.url),
        json!({"name": "x", "role": "admin"}),
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "only an admin issues tokens");
    let (status, p) = post(
        &admin,
        format!("{}/tokens", s.url),
        json!({"name": "x", "role": "client", "queues": ["a"]}),
    )
    .await;
    assert_eq!(
        (status, p["type"].as_str()),
        (StatusCode::BAD_REQUEST, Some("/problems/bad-token"))
    );

    // the token survives a restart: it is an event in the store
    drop(s);
    let s = common::serve_in(&dir, "again.log", &[], &[]);
    let worker = client_with(Some(&secret));
    let r = worker
        .post(format!("{}/tasks/flights/poll?wait=10ms", s.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);

    let revoke = |id: String| admin.delete(format!("{}/tokens/{id}", s.url)).send();
    assert_eq!(
        revoke(id.clone()).await.unwrap().status(),
        StatusCode::NO_CONTENT
    );
    let r = worker
        .post(format!("{}/tasks/flights/poll?wait=10ms", s.url))
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status(),
        StatusCode::UNAUTHORIZED,
        "a revoked token is refused"
    );
    assert_eq!(revoke(id).await.unwrap().status(), StatusCode::NOT_FOUND);
    let configured = listed
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["source"] == "config")
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(
        revoke(configured).await.unwrap().status(),
        StatusCode::CONFLICT
    );
}

#[tokio::test]
async fn metrics_and_readiness_report_the_engine() {
    let (s, _dir) = serve("metrics", &[]);
    let (status, ready) = get_json(&client_with(None), format!("{}/ready", s.url)).await;
    assert_eq!(
        (status, ready["status"].as_str()),
        (StatusCode::OK, Some("ready"))
    );
    let c = client();
    // two completed, the third declined at payment and compensated
    for (n, amount) in [(1, 10.0), (2, 10.0), (3, 5000.0)] {
        let (_, started) = post(
            &c,
            format!("{}/workflows/order/instances", s.url),
            order(n, amount),
        )
        .await;
        let id = started["id"].as_str().unwrap();
        get_json(&c, format!("{}/instances/{id}?wait=30s", s.url)).await;
    }
    let operator = client_with(Some(OPERATOR_TOKEN));
    let r = operator
        .get(format!("{}/metrics", s.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert!(r.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/plain"));
    let text = r.text().await.unwrap();
    for want in [
        "sagaflow_sagas_started_total{workflow=\"order\"} 3",
        "sagaflow_step_duration_seconds_bucket{",
        "step=\"pay\"",
        "sagaflow_store_append_seconds_count",
        "sagaflow_projection_lag_events",
        "# HELP sagaflow_live_instances",
    ] {
        assert!(text.contains(want), "{want} in\n{text}");
    }
    // each labelled series counts every saga it was recorded for
    let line = |name: &str, labels: &[&str], value: &str| {
        text.lines().any(|l| {
            l.starts_with(&format!("{name}{{"))
                && labels.iter().all(|want| l.contains(want))
                && l.ends_with(&format!(" {value}"))
        })
    };
    for (name, labels, value) in [
        (
            "sagaflow_sagas_ended_total",
            &["outcome=\"completed\""][..],
            "2",
        ),
        (
            "sagaflow_sagas_ended_total",
            &["outcome=\"compensated\""],
            "1",
        ),
        (
            "sagaflow_step_duration_seconds_count",
            &["step=\"pay\"", "phase=\"forward\"", "outcome=\"succeeded\""],
            "2",
        ),
        (
            "sagaflow_step_duration_seconds_count",
            &["step=\"pay\"", "phase=\"forward\"", "outcome=\"failed\""],
            "1",
        ),
        (
            "sagaflow_step_duration_seconds_count",
            &[
                "step=\"reserve\"",
                "phase=\"compensation\"",
                "outcome=\"succeeded\"",
            ],
            "1",
        ),
    ] {
        assert!(
            line(name, labels, value),
            "{name} {labels:?} {value} in\n{text}"
        );
    }
    let r = client_with(Some(CLIENT_TOKEN))
        .get(format!("{}/metrics", s.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
}

/// A workflow run entirely by a worker: `hold` (undone by `unhold`), then `charge`.
const TASKS_WORKFLOW: &str = "name: ops
defaults:
  timeout: 1m
steps:
  - name: hold
    task: { queue: ops }
    compensate:
      task: { queue: ops }
  - name: charge
    task: { queue: ops }
    compensate: none
";

/// Takes the next task of the `ops` queue and answers it.
async fn work(c: &reqwest::Client, url: &str, answer: &str) -> Value {
    let r = c
        .post(format!("{url}/tasks/ops/poll?wait=20s"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK, "a task came");
    let task: Value = r.json().await.unwrap();
    let id = task["id"].as_str().unwrap();
    let (status, _) = match answer {
        "ok" => {
            post(
                c,
                format!("{url}/tasks/{id}/complete"),
                json!({"output": {"ok": true}}),
            )
            .await
        }
        _ => {
            post(
                c,
                format!("{url}/tasks/{id}/fail"),
                json!({"error": answer, "retryable": false}),
            )
            .await
        }
    };
    assert_eq!(status, StatusCode::OK);
    task
}

#[tokio::test]
async fn operators_pause_resume_and_retry_and_read_any_past_state() {
    let (s, _dir) = serve("operate", &[]);
    let c = client();
    let r = common::publish_yaml(&c, &s.url, TASKS_WORKFLOW).await;
    assert_eq!(r.status(), StatusCode::CREATED);
    let (_, started) = post(&c, format!("{}/workflows/ops/instances", s.url), json!({})).await;
    let id = started["id"].as_str().unwrap().to_string();
    let instance = format!("{}/instances/{id}", s.url);

    // paused: `hold` finishes, `charge` is held, no task is offered until resume
    let (status, paused) = post(&c, format!("{instance}/pause"), json!({"reason": "audit"})).await;
    assert_eq!(
        (status, paused["paused"].as_bool()),
        (StatusCode::ACCEPTED, Some(true))
    );
    work(&c, &s.url, "ok").await;
    let idle = c
        .post(format!("{}/tasks/ops/poll?wait=300ms", s.url))
        .send()
        .await
        .unwrap();
    assert_eq!(
        idle.status(),
        StatusCode::NO_CONTENT,
        "nothing starts while paused"
    );
    let (_, held) = get_json(&c, instance.clone()).await;
    assert_eq!(
        (held["current_step"].as_str(), held["paused"].as_bool()),
        (Some("charge"), Some(true))
    );
    let (status, _) = post(&c, format!("{instance}/resume"), json!({})).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let (status, p) = post(&c, format!("{instance}/resume"), json!({})).await;
    assert_eq!(
        (status, p["type"].as_str()),
        (StatusCode::CONFLICT, Some("/problems/not-paused"))
    );

    // `charge` is refused, the undo of `hold` too: the saga fails and waits for an operator
    let charge = work(&c, &s.url, "card declined").await;
    assert_eq!(charge["step"], "charge");
    let unhold = work(&c, &s.url, "ledger closed").await;
    assert_eq!(
        (unhold["step"].as_str(), unhold["phase"].as_str()),
        (Some("hold"), Some("compensation"))
    );
    let (_, failed) = get_json(&c, format!("{instance}?wait=10s")).await;
    assert_eq!(failed["status"], "failed", "{failed}");

    // retried: the compensation runs again, with a new attempt (so a new key), and succeeds
    let (status, retried) = post(&c, format!("{instance}/retry"), json!({})).await;
    assert_eq!(
        (status, retried["status"].as_str()),
        (StatusCode::ACCEPTED, Some("compensating")),
        "{retried}"
    );
    let again = work(&c, &s.url, "ok").await;
    assert_eq!(
        (again["step"].as_str(), again["attempt"].as_u64()),
        (Some("hold"), Some(2))
    );
    assert_ne!(again["id"], unhold["id"]);
    let (_, done) = get_json(&c, format!("{instance}?wait=10s")).await;
    assert_eq!(done["status"], "compensated");
    let (status, p) = post(&c, format!("{instance}/retry"), json!({})).await;
    assert_eq!(
        (status, p["type"].as_str()),
        (StatusCode::CONFLICT, Some("/problems/not-failed"))
    );

    // the history in pages, and the state as of any revision
    let (_, page) = get_json(&c, format!("{instance}/events?limit=5")).await;
    assert_eq!(page["items"].as_array().unwrap().len(), 5);
    assert_eq!(page["next_from"], 5);
    let (_, all) = get_json(&c, format!("{instance}/events")).await;
    let all = all["items"].as_array().unwrap().clone();
    let kinds: Vec<&str> = all
        .iter()
        .map(|e| e["event_type"].as_str().unwrap())
        .collect();
    for kind in [
        "SagaPaused",
        "StepHeld",
        "SagaResumed",
        "SagaFailed",
        "SagaRetried",
        "SagaCompensated",
    ] {
        assert!(kinds.contains(&kind), "{kind} in {kinds:?}");
    }
    let failed_at = kinds.iter().position(|k| *k == "SagaFailed").unwrap();
    let (_, then) = get_json(&c, format!("{instance}/state?revision={failed_at}")).await;
    assert_eq!(
        (then["status"].as_str(), then["events"].as_u64()),
        (Some("failed"), Some(failed_at as u64 + 1))
    );
    let (_, first) = get_json(&c, format!("{instance}/state?revision=0")).await;
    assert_eq!(first["events"], 1);
    let (status, p) = get_json(&c, format!("{instance}/state?revision={}", all.len())).await;
    assert_eq!(
        (status, p["type"].as_str()),
        (StatusCode::NOT_FOUND, Some("/problems/unknown-revision"))
    );
}

#[tokio::test]
async fn json_logs_carry_the_instance_step_and_attempt_and_never_a_token() {
    let dir = common::temp_dir("json-logs");
    let s = common::serve_in(
        &dir,
        "server.log",
        &[],
        &[("SAGAFLOW_LOG", "info"), ("SAGAFLOW_LOG_FORMAT", "json")],
    );
    let c = client();
    let (_, started) = post(
        &c,
        format!("{}/workflows/order/instances", s.url),
        order(1, 5000.0),
    )
    .await;
    let id = started["id"].as_str().unwrap();
    get_json(&c, format!("{}/instances/{id}?wait=30s", s.url)).await;
    let log = s.log();
    let failed: Value = log
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|l| l["fields"]["message"] == "attempt failed")
        .unwrap_or_else(|| panic!("no JSON line for the declined payment in\n{log}"));
    assert_eq!(failed["span"]["instance_id"], id, "{failed}");
    assert_eq!(failed["span"]["step"], "pay");
    assert_eq!(failed["span"]["attempt"], 1);
    for token in [
        common::ADMIN_TOKEN,
        CLIENT_TOKEN,
        WORKER_TOKEN,
        OPERATOR_TOKEN,
    ] {
        assert!(!log.contains(token), "a token is in the log");
    }
}
