//! Each effect once, through the public interface: a slow service that answers
//! after the step's timeout, tasks whose attempt has ended, an order id used
//! twice, and durations past the end of the calendar.

mod common;

use std::time::{Duration, Instant};

use common::{client, get_json, order, post_json, publish_ok, publish_yaml, temp_dir, Proc};
use reqwest::StatusCode;
use serde_json::{json, Value};

/// `pay` gives up on each attempt after 400 ms; the payment service takes
/// 1 s. Every attempt times out, so the saga compensates (the payment's
/// outcome is unknown: it is refunded, and the stock released).
const SLOW: &str = r#"
name: slow-pay
env: { fast: "http://127.0.0.1:1/demo", slow: "http://127.0.0.1:1/demo" }
steps:
  - name: reserve
    http: { url: "${ .env.fast }/inventory/reservations", body: { order_id: "${ .input.order_id }" } }
    timeout: 5s
    compensate:
      http: { url: "${ .env.fast }/inventory/releases", body: { order_id: "${ .input.order_id }" } }
  - name: pay
    http: { url: "${ .env.slow }/payments", body: { order_id: "${ .input.order_id }", amount: "${ .input.amount }" } }
    timeout: 400ms
    retry: { max_attempts: 3, backoff: { initial: 800ms } }
    compensate:
      http: { url: "${ .env.fast }/refunds", body: { order_id: "${ .input.order_id }" } }
"#;

async fn instance_done(c: &reqwest::Client, url: &str, id: &str) -> Value {
    get_json(c, format!("{url}/instances/{id}?wait=30s"))
        .await
        .1
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_that_answers_after_the_timeout_does_the_effect_once() {
    let dir = temp_dir("slow-once");
    let slow = common::demo_services(&dir, "1s");
    let fast = Proc::start(
        &["demo-services", "--listen", "127.0.0.1:0"],
        &dir.join("fast.log"),
    );
    let env = format!("fast={}/demo,slow={}/demo", fast.url, slow.url);
    let server = common::serve_in(
        &dir,
        "server.log",
        &["--no-demo", "--workflow-env", &env],
        &[],
    );
    let c = client();
    publish_ok(&c, &server.url, SLOW).await;
    let per_attempt = SLOW
        .replace("name: slow-pay", "name: slow-pay-per-attempt")
        .replace(
            "    timeout: 400ms",
            "    timeout: 400ms\n    idempotency: per_attempt",
        );
    let per_attempt: &'static str = Box::leak(per_attempt.into_boxed_str());
    publish_ok(&c, &server.url, per_attempt).await;

    let mut ids = Vec::new();
    for (n, workflow) in [(1, "slow-pay"), (2, "slow-pay-per-attempt")] {
        let (status, v) = post_json(
            &c,
            format!("{}/workflows/{workflow}/instances", server.url),
            order(n, 10.0),
        )
        .await;
        assert_eq!(status, StatusCode::CREATED, "{v}");
        ids.push(v["id"].as_str().unwrap().to_string());
    }
    for id in &ids {
        let done = instance_done(&c, &server.url, id).await;
        assert_eq!(done["status"], "compensated", "{done}");
    }
    // let the last late answers land before counting
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let stats = get_json(&c, format!("{}/demo/stats", slow.url)).await.1;
    let undone = get_json(&c, format!("{}/demo/stats", fast.url)).await.1;
    let keys = &stats["keys"];
    assert_eq!(
        stats["orders"]["o-1"],
        json!({"pay": 1}),
        "three attempts, one key, one payment: {stats}"
    );
    assert_eq!(keys[format!("{}:pay", ids[0])], 3, "{keys}");
    assert_eq!(
        undone["orders"]["o-1"],
        json!({"reserve": 1, "refund": 1, "release": 1}),
        "{undone}"
    );
    assert_eq!(
        stats["orders"]["o-2"]["pay"], 3,
        "`idempotency: per_attempt` makes each attempt a new operation: {stats}"
    );
    assert_eq!(keys[format!("{}:pay:2", ids[1])], 1, "{keys}");
}

const TASKS: &str = "\
name: stale-task
steps:
  - name: label
    task: { queue: labels }
    timeout: 1s
    retry: { max_attempts: 2, backoff: { initial: 2s } }
    compensate: none
";

#[tokio::test]
async fn a_task_whose_attempt_ended_is_withdrawn_and_its_answer_refused() {
    let (s, _dir) = common::serve("stale-task", &[]);
    let c = client();
    publish_ok(&c, &s.url, TASKS).await;
    let (_, started) = post_json(
        &c,
        format!("{}/workflows/stale-task/instances", s.url),
        json!({}),
    )
    .await;
    let id = started["id"].as_str().unwrap().to_string();

    let poll = |wait: &'static str| {
        let c = c.clone();
        let url = format!("{}/tasks/labels/poll?wait={wait}", s.url);
        async move {
            let r = c.post(url).send().await.unwrap();
            let status = r.status();
            (status, r.json::<Value>().await.unwrap_or(Value::Null))
        }
    };
    let (status, first) = poll("5s").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(first["attempt"], 1);
    assert_eq!(first["idempotency_key"], format!("{id}:label"));
    let tid = first["id"].as_str().unwrap().to_string();

    // the attempt times out; its task is gone, with its lease
    let until = Instant::now() + Duration::from_secs(10);
    loop {
        let (_, v) = get_json(&c, format!("{}/instances/{id}", s.url)).await;
        if v["error"].as_str().is_some_and(|e| e.contains("timed out")) {
            break;
        }
        assert!(Instant::now() < until, "the attempt never timed out: {v}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (status, _) = poll("0s").await;
    assert_eq!(
        status,
        StatusCode::NO_CONTENT,
        "nothing to hand out during the backoff"
    );
    for (op, body) in [
        ("complete", json!({"output": {}})),
        ("fail", json!({"error": "late"})),
        ("heartbeat", json!({})),
    ] {
        let (status, p) = post_json(&c, format!("{}/tasks/{tid}/{op}", s.url), body).await;
        assert_eq!(
            (status, p["type"].as_str()),
            (StatusCode::CONFLICT, Some("/problems/task-gone")),
            "{op} of an ended attempt: {p}"
        );
    }

    // the next attempt carries the same effect key, and its answer counts once
    let (status, second) = poll("10s").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        (second["attempt"].as_u64(), &second["idempotency_key"]),
        (Some(2), &first["idempotency_key"])
    );
    let tid2 = second["id"].as_str().unwrap().to_string();
    let (status, answer) = post_json(
        &c,
        format!("{}/tasks/{tid2}/complete", s.url),
        json!({"output": {"ok": true}}),
    )
    .await;
    assert_eq!(
        (status, &answer["accepted"]),
        (StatusCode::OK, &json!(true))
    );
    let (status, p) = post_json(&c, format!("{}/tasks/{tid2}/complete", s.url), json!({})).await;
    assert_eq!(
        (status, p["type"].as_str()),
        (StatusCode::CONFLICT, Some("/problems/task-gone")),
        "{p}"
    );
    assert_eq!(instance_done(&c, &s.url, &id).await["status"], "completed");
    let (status, p) = post_json(
        &c,
        format!("{}/tasks/{}:label:1/complete", s.url, uuid::Uuid::nil()),
        json!({}),
    )
    .await;
    assert_eq!(
        (status, p["type"].as_str()),
        (StatusCode::NOT_FOUND, Some("/problems/unknown-task")),
        "{p}"
    );
}

#[tokio::test]
async fn an_order_id_in_use_is_never_started_again() {
    let (s, _dir) = common::serve("order-exists", &[]);
    let c = client();
    let (status, a) = post_json(&c, format!("{}/orders", s.url), order(1, 30.0)).await;
    assert_eq!(status, StatusCode::CREATED, "{a}");
    let (status, again) = post_json(&c, format!("{}/orders", s.url), order(1, 30.0)).await;
    assert_eq!(
        (status, &again["instance_id"]),
        (StatusCode::OK, &a["instance_id"]),
        "{again}"
    );
    let (status, p) = post_json(&c, format!("{}/orders", s.url), order(1, 31.0)).await;
    assert_eq!(
        (status, p["type"].as_str()),
        (StatusCode::CONFLICT, Some("/problems/order-exists")),
        "{p}"
    );

    // an order started through the generic endpoint, under another key, holds its id too
    let r = c
        .post(format!("{}/workflows/order/instances", s.url))
        .header("Idempotency-Key", "elsewhere-2")
        .json(&order(2, 40.0))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    let (status, p) = post_json(&c, format!("{}/orders", s.url), order(2, 99.0)).await;
    assert_eq!(
        (status, p["type"].as_str()),
        (StatusCode::CONFLICT, Some("/problems/order-exists")),
        "{p}"
    );
    let (status, same) = post_json(&c, format!("{}/orders", s.url), order(2, 40.0)).await;
    assert_eq!(
        (status, same["order_id"].as_str()),
        (StatusCode::OK, Some("o-2")),
        "{same}"
    );
    for n in [1, 2] {
        let (_, page) = get_json(
            &c,
            format!("{}/instances?input_field=order_id=o-{n}", s.url),
        )
        .await;
        assert_eq!(
            page["items"].as_array().unwrap().len(),
            1,
            "order o-{n}: one saga only: {page}"
        );
    }
    for n in [1, 2] {
        let until = Instant::now() + Duration::from_secs(10);
        loop {
            let (_, stats) = get_json(&c, format!("{}/demo/stats", s.url)).await;
            if stats["orders"][format!("o-{n}")]["ship"] == 1 {
                assert_eq!(stats["orders"][format!("o-{n}")]["pay"], 1, "{stats}");
                break;
            }
            assert!(Instant::now() < until, "o-{n} never shipped: {stats}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    common::nothing_was_sent_twice(&c, &s.url).await;
}

#[tokio::test]
async fn durations_past_a_hundred_years_are_refused_and_nothing_panics() {
    let (s, _dir) = common::serve("durations", &[]);
    let c = client();
    let r = publish_yaml(
        &c,
        &s.url,
        "name: forever\ndeadline: 20000000y\nsteps:\n  - name: nap\n    wait: { duration: 1s }\n",
    )
    .await;
    assert_eq!(r.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let p: Value = r.json().await.unwrap();
    assert_eq!(p["errors"][0]["code"], "duration-too-long", "{p}");
    assert_eq!(
        (
            p["errors"][0]["line"].as_u64(),
            p["errors"][0]["column"].as_u64()
        ),
        (Some(2), Some(11)),
        "{p}"
    );
    let r = publish_yaml(
        &c,
        &s.url,
        "name: backoff-forever\nsteps:\n  - name: a\n    http: { url: 'http://127.0.0.1:1' }\n    retry: { max_attempts: 3, backoff: { initial: 1s, max: 20000000y } }\n    compensate: none\n",
    )
    .await;
    assert_eq!(r.status(), StatusCode::UNPROCESSABLE_ENTITY);

    // a timer moved past the end of the calendar
    let r = publish_yaml(
        &c,
        &s.url,
        "name: napping\nsteps:\n  - name: nap\n    wait: { duration: 1h }\n",
    )
    .await;
    assert_eq!(r.status(), StatusCode::CREATED);
    let (_, v) = post_json(
        &c,
        format!("{}/workflows/napping/instances", s.url),
        json!({}),
    )
    .await;
    let id = v["id"].as_str().unwrap().to_string();
    for by in ["100000years", "101y", "20000000y"] {
        let (status, p) = post_json(
            &c,
            format!("{}/instances/{id}/timers/wait:0", s.url),
            json!({"extend_by": by}),
        )
        .await;
        assert_eq!(
            (status, p["type"].as_str()),
            (
                StatusCode::UNPROCESSABLE_ENTITY,
                Some("/problems/duration-too-long")
            ),
            "{by}: {p}"
        );
    }
    let (status, p) = post_json(
        &c,
        format!("{}/instances/{id}/timers/wait:0", s.url),
        json!({"due": "9999-12-31T23:59:59Z"}),
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{p}");
    let (status, v) = get_json(&c, format!("{}/instances/{id}", s.url)).await;
    assert_eq!(status, StatusCode::OK, "{v}");
    let (status, _) = get_json(&c, format!("{}/health", s.url)).await;
    assert_eq!(status, StatusCode::OK);
    assert!(!s.log().contains("panicked"), "{}", s.log());
}

#[tokio::test]
async fn the_timer_api_extends_sets_and_fires_a_pending_timer() {
    let (s, _dir) = common::serve("timer-api", &[]);
    let c = client();
    let r = publish_yaml(
        &c,
        &s.url,
        "name: sleepy\nsteps:\n  - name: nap\n    wait: { duration: 1h }\n",
    )
    .await;
    assert_eq!(r.status(), StatusCode::CREATED);
    let (_, v) = post_json(
        &c,
        format!("{}/workflows/sleepy/instances", s.url),
        json!({}),
    )
    .await;
    let id = v["id"].as_str().unwrap().to_string();
    let timer_url = format!("{}/instances/{id}/timers/wait:0", s.url);
    let due = |v: &Value| -> String {
        v["timers"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["timer"] == "wait:0")
            .map(|t| t["due"].as_str().unwrap().to_string())
            .unwrap_or_default()
    };
    let first = due(&v);

    let (status, moved) = post_json(&c, timer_url.clone(), json!({"extend_by": "1h"})).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{moved}");
    let parse = |t: &str| humantime::parse_rfc3339_weak(t).unwrap();
    assert_eq!(
        parse(&due(&moved)).duration_since(parse(&first)).unwrap(),
        Duration::from_secs(3600),
        "{moved}"
    );
    let (status, set) = post_json(
        &c,
        timer_url.clone(),
        json!({"due": "2099-01-01T00:00:00Z"}),
    )
    .await;
    assert_eq!(
        (status, due(&set).as_str()),
        (StatusCode::ACCEPTED, "2099-01-01T00:00:00.000Z"),
        "{set}"
    );
    for bad in [
        json!({}),
        json!({"due": "soon"}),
        json!({"extend_by": "1h", "fire_now": true}),
    ] {
        let (status, p) = post_json(&c, timer_url.clone(), bad.clone()).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}: {p}");
    }
    let (status, p) = post_json(
        &c,
        format!("{}/instances/{id}/timers/nope", s.url),
        json!({"fire_now": true}),
    )
    .await;
    assert_eq!(
        (status, p["type"].as_str()),
        (StatusCode::NOT_FOUND, Some("/problems/unknown-timer")),
        "{p}"
    );
    let (status, fired) = post_json(&c, timer_url.clone(), json!({"fire_now": true})).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{fired}");
    assert_eq!(instance_done(&c, &s.url, &id).await["status"], "completed");
    let (status, p) = post_json(&c, timer_url, json!({"fire_now": true})).await;
    assert_eq!(
        (status, p["type"].as_str()),
        (StatusCode::NOT_FOUND, Some("/problems/unknown-timer")),
        "a finished instance has no timers to move: {p}"
    );
}
