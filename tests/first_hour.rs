//! What a newcomer meets in the first hour, through the real server: waits
//! for a revision, a status or an order's end; the change stream; the
//! console's files; messages that say what is wrong; a spec whose types
//! make good generated clients; `--help` without empty values.

mod common;

use std::time::{Duration, Instant};

use common::{client, client_with, get_json, post_json, serve, ADMIN_TOKEN, CLIENT_TOKEN};
use reqwest::StatusCode;
use serde_json::{json, Value};

fn refund(n: u32) -> Value {
    json!({"refund_id": format!("r-{n}"), "customer_id": "c-1", "amount": 80})
}

#[tokio::test]
async fn a_client_waits_for_a_status_a_revision_or_an_order_without_polling() {
    let (s, _dir) = serve("first-hour-waits", &[]);
    let c = client();
    let (status, started) = post_json(
        &c,
        format!("{}/workflows/refund-approval/instances", s.url),
        refund(1),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{started}");
    let id = started["id"].as_str().unwrap().to_string();

    // until the instance waits for its signal
    let (status, waiting) = get_json(
        &c,
        format!("{}/instances/{id}?wait=20s&until_status=waiting", s.url),
    )
    .await;
    assert_eq!(
        (status, waiting["status"].as_str()),
        (StatusCode::OK, Some("waiting"))
    );
    let newest = waiting["events"].as_u64().unwrap() - 1;

    // nothing moves: the wait lasts its time and answers as the instance stands
    let t = Instant::now();
    let (_, same) = get_json(
        &c,
        format!(
            "{}/instances/{id}?wait=600ms&after_revision={newest}",
            s.url
        ),
    )
    .await;
    assert!(
        t.elapsed() >= Duration::from_millis(550),
        "{:?}",
        t.elapsed()
    );
    assert_eq!(same["events"], waiting["events"]);

    // a signal sent meanwhile ends the wait for the next revision at once
    let signaller = {
        let (c, url) = (
            c.clone(),
            format!("{}/instances/{id}/signals/approval", s.url),
        );
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(300)).await;
            post_json(&c, url, json!({"approved_by": "kim"})).await
        })
    };
    let t = Instant::now();
    let (status, moved) = get_json(
        &c,
        format!("{}/instances/{id}?wait=20s&after_revision={newest}", s.url),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert!(t.elapsed() < Duration::from_secs(10), "{:?}", t.elapsed());
    assert!(moved["events"].as_u64().unwrap() > newest + 1, "{moved}");
    assert_eq!(signaller.await.unwrap().0, StatusCode::ACCEPTED);

    // what to wait for, without how long, is a client's mistake
    let (status, p) = get_json(&c, format!("{}/instances/{id}?after_revision=1", s.url)).await;
    assert_eq!(
        (status, p["type"].as_str()),
        (StatusCode::BAD_REQUEST, Some("/problems/bad-wait"))
    );
    let (status, p) = get_json(
        &c,
        format!("{}/instances/{id}?wait=1s&until_status=asleep", s.url),
    )
    .await;
    assert_eq!(
        (status, p["type"].as_str()),
        (StatusCode::BAD_REQUEST, Some("/problems/bad-parameter"))
    );

    // an order: the answer comes when its saga has ended and the read model shows it
    let (status, _) = post_json(&c, format!("{}/orders", s.url), common::order(1, 30.0)).await;
    assert_eq!(status, StatusCode::CREATED);
    let (status, order) = get_json(&c, format!("{}/orders/o-1?wait=30s", s.url)).await;
    assert_eq!(
        (status, order["status"].as_str()),
        (StatusCode::OK, Some("shipped")),
        "{order}"
    );
    let (status, _) = post_json(&c, format!("{}/orders", s.url), common::order(2, 5000.0)).await;
    assert_eq!(status, StatusCode::CREATED);
    let (_, order) = get_json(&c, format!("{}/orders/o-2?wait=30s", s.url)).await;
    assert_eq!(order["status"], "compensated", "{order}");
}

#[tokio::test]
async fn one_request_starts_a_saga_and_answers_with_its_outcome() {
    let (s, _dir) = serve("first-hour-start-and-wait", &[]);
    let c = client();
    let start = |key: &str, input: Value, wait: &str| {
        c.post(format!("{}/workflows/order/instances?wait={wait}", s.url))
            .header("Idempotency-Key", key)
            .json(&input)
            .send()
    };
    let answer = |r: reqwest::Response| async move {
        let status = r.status();
        (status, r.json::<Value>().await.unwrap())
    };

    let (status, done) = answer(start("k-1", common::order(1, 30.0), "30s").await.unwrap()).await;
    assert_eq!(
        (status, done["status"].as_str()),
        (StatusCode::CREATED, Some("completed")),
        "{done}"
    );
    assert_eq!(done["events"], 8, "{done}");
    let (status, declined) =
        answer(start("k-2", common::order(2, 5000.0), "30s").await.unwrap()).await;
    assert_eq!(
        (status, declined["status"].as_str()),
        (StatusCode::CREATED, Some("compensated")),
        "{declined}"
    );
    // a retried start waits too, and finds the same instance
    let (status, again) = answer(start("k-1", common::order(1, 30.0), "30s").await.unwrap()).await;
    assert_eq!((status, &again["id"]), (StatusCode::OK, &done["id"]));
    assert_eq!(again["status"], "completed");

    // a wait that ends first answers with the instance as it stands
    let t = Instant::now();
    let (status, waiting) = answer(
        c.post(format!(
            "{}/workflows/refund-approval/instances?wait=700ms",
            s.url
        ))
        .json(&refund(1))
        .send()
        .await
        .unwrap(),
    )
    .await;
    assert!(
        t.elapsed() >= Duration::from_millis(650),
        "{:?}",
        t.elapsed()
    );
    assert_eq!(
        (status, waiting["status"].as_str()),
        (StatusCode::CREATED, Some("waiting")),
        "{waiting}"
    );

    // a wait that is not a duration starts nothing
    let (status, p) = answer(start("k-3", common::order(3, 30.0), "soon").await.unwrap()).await;
    assert_eq!(
        (status, p["type"].as_str()),
        (StatusCode::BAD_REQUEST, Some("/problems/bad-wait")),
        "{p}"
    );
    let (status, _) = answer(start("k-3", common::order(3, 30.0), "30s").await.unwrap()).await;
    assert_eq!(status, StatusCode::CREATED);

    // an order, likewise, once the read model shows its end; created, then existing
    for expected in [StatusCode::CREATED, StatusCode::OK] {
        let (status, order) = post_json(
            &c,
            format!("{}/orders?wait=30s", s.url),
            common::order(4, 30.0),
        )
        .await;
        assert_eq!(
            (status, order["status"].as_str()),
            (expected, Some("shipped")),
            "{order}"
        );
    }
}

/// Reads server-sent events from `r` until `want` of them have come, or 20 s.
async fn change_events(r: &mut reqwest::Response, want: usize) -> Vec<Value> {
    let mut text = String::new();
    let mut events = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while events.len() < want {
        let chunk = tokio::time::timeout_at(deadline, r.chunk())
            .await
            .expect("a change event within 20 s")
            .expect("the stream")
            .expect("the stream is open");
        text.push_str(&String::from_utf8_lossy(&chunk));
        while let Some(end) = text.find("\n\n") {
            let frame: String = text.drain(..end + 2).collect();
            if frame.lines().any(|l| l == "event: change") {
                let data = frame
                    .lines()
                    .find_map(|l| l.strip_prefix("data: "))
                    .expect("data");
                events.push(serde_json::from_str(data).expect("json"));
            }
        }
    }
    events
}

#[tokio::test]
async fn the_change_stream_tells_when_instances_change() {
    let (s, _dir) = serve("first-hour-changes", &[]);
    // no token: the answer says what is missing
    let (status, p) = get_json(&client_with(None), format!("{}/changes", s.url)).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(
        p["detail"]
            .as_str()
            .unwrap()
            .contains("Authorization: Bearer"),
        "{p}"
    );

    let c = client_with(Some(CLIENT_TOKEN));
    let mut r = c.get(format!("{}/changes", s.url)).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert!(r.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/event-stream"));
    let first = change_events(&mut r, 1).await;
    let at = first[0]["position"].as_u64().unwrap();
    let (status, _) = post_json(&c, format!("{}/orders", s.url), common::order(7, 30.0)).await;
    assert_eq!(status, StatusCode::CREATED);
    let next = change_events(&mut r, 1).await;
    assert!(next[0]["position"].as_u64().unwrap() > at, "{next:?}");
}

#[tokio::test]
async fn the_console_is_served_from_the_binary_with_a_strict_policy() {
    let (s, _dir) = serve("first-hour-console", &[]);
    let c = client_with(None);
    for (path, kind, needle) in [
        ("/ui", "text/html", "/ui/app.js"),
        ("/ui/", "text/html", "/ui/app.js"),
        ("/ui/app.js", "text/javascript", "function drawGraph"),
        ("/ui/app.css", "text/css", "svg.graph"),
    ] {
        let r = c.get(format!("{}{path}", s.url)).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::OK, "{path}");
        let h = r.headers().clone();
        assert!(
            h["content-type"].to_str().unwrap().starts_with(kind),
            "{path}"
        );
        let csp = h["content-security-policy"].to_str().unwrap();
        assert!(
            csp.contains("script-src 'self'") && csp.contains("connect-src 'self'"),
            "{csp}"
        );
        assert_eq!(h["x-content-type-options"], "nosniff");
        assert!(r.text().await.unwrap().contains(needle), "{path}");
    }

    // what the page offers follows what the token may do
    let (_, me) = get_json(&client_with(Some(CLIENT_TOKEN)), format!("{}/me", s.url)).await;
    assert_eq!(me, json!({"role": "client", "may": ["read", "start"]}));
    let (_, me) = get_json(&client_with(Some(ADMIN_TOKEN)), format!("{}/me", s.url)).await;
    assert_eq!(me["role"], "admin");
    assert!(me["may"].as_array().unwrap().contains(&json!("publish")));
}

#[tokio::test]
async fn messages_say_what_is_wrong() {
    let (s, _dir) = serve("first-hour-messages", &[]);
    let c = client();
    // an invalid workflow: the count is right and the first problem is named
    let r = c
        .post(format!("{}/workflows", s.url))
        .header("content-type", "application/yaml")
        .body("name: a\nsteps:\n  - name: a\n    retires: 3\n")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let p: Value = r.json().await.unwrap();
    assert_eq!(
        p["detail"],
        "the workflow is invalid: step `a` has no action (line 3, column 5), and 1 more error"
    );
    let codes: Vec<&str> = p["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["code"].as_str().unwrap())
        .collect();
    assert_eq!(codes, ["missing-action", "unknown-field"]);

    // a missing input property is named in the path
    let (status, p) = post_json(
        &c,
        format!("{}/workflows/order/instances", s.url),
        json!({"order_id": "o-1", "items": [{"sku": "a", "qty": 1}], "amount": 1}),
    )
    .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(p["errors"][0]["path"], "/customer_id", "{p}");

    // no Authorization header at all
    let r = client_with(None)
        .get(format!("{}/instances", s.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let p: Value = r.json().await.unwrap();
    assert!(
        p["detail"]
            .as_str()
            .unwrap()
            .contains("no bearer token: send `Authorization: Bearer TOKEN`"),
        "{p}"
    );
}

#[tokio::test]
async fn the_spec_gives_generated_clients_typed_and_consistent_fields() {
    let (s, _dir) = serve("first-hour-spec", &[]);
    let (_, spec) = get_json(&client(), format!("{}/openapi.json", s.url)).await;
    let schemas = &spec["components"]["schemas"];
    let prop = |schema: &str, field: &str| schemas[schema]["properties"][field].clone();
    let status_enum = |name: &str| {
        schemas[name]["enum"]
            .as_array()
            .unwrap_or_else(|| panic!("{name} is an enum"))
            .len()
    };
    for schema in ["Instance", "InstanceSummary"] {
        assert_eq!(
            prop(schema, "status")["$ref"],
            "#/components/schemas/InstanceStatus"
        );
        assert_eq!(
            prop(schema, "started_at")["format"],
            "date-time",
            "{schema}"
        );
        assert_eq!(prop(schema, "id")["format"], "uuid", "{schema}");
        assert!(prop(schema, "attempt").is_object(), "{schema}: attempt");
        assert!(prop(schema, "attempts").is_null(), "{schema}: attempts");
    }
    assert_eq!(status_enum("InstanceStatus"), 8);
    assert_eq!(status_enum("OrderStatus"), 7);
    assert_eq!(prop("Order", "instance_id")["format"], "uuid");
    assert_eq!(
        prop("Order", "status")["$ref"],
        "#/components/schemas/OrderStatus"
    );
    assert_eq!(prop("WorkerTask", "instance_id")["format"], "uuid");
    assert_eq!(prop("HistoryEvent", "recorded_at")["format"], "date-time");
    assert_eq!(prop("PendingTimer", "due")["format"], "date-time");
    // names a Python client would have to mangle, where a better name exists
    assert!(
        prop("HistoryEvent", "type").is_null() && prop("HistoryEvent", "event_type").is_object()
    );
    assert!(
        prop("WorkflowVersion", "hash").is_null() && prop("WorkflowVersion", "sha256").is_object()
    );
    let list = &spec["paths"]["/instances"]["get"]["parameters"];
    let names: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert!(
        names.contains(&"input_field") && !names.contains(&"input"),
        "{names:?}"
    );
    // every filter is optional
    assert!(list
        .as_array()
        .unwrap()
        .iter()
        .all(|p| p["required"] != json!(true)));
    let events = &spec["paths"]["/instances/{id}/events"]["get"]["parameters"];
    assert!(events
        .as_array()
        .unwrap()
        .iter()
        .any(|p| p["name"] == "from_revision"));
}

#[test]
fn help_names_environment_variables_without_empty_values() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_sagaflow"))
        .args(["serve", "--help"])
        .env_remove("SAGAFLOW_DATA_DIR")
        .env("SAGAFLOW_LISTEN", "127.0.0.1:9999")
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(help.contains("[env: SAGAFLOW_DATA_DIR]"), "{help}");
    assert!(help.contains("[env: SAGAFLOW_LISTEN]"), "{help}");
    assert!(!help.contains("SAGAFLOW_DATA_DIR="), "{help}");
    assert!(!help.contains("9999"), "a set value is not shown: {help}");
}
