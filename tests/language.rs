//! Parallel branches, `when` and `for_each` over HTTP against the demo
//! services: a trip booked at once, a parallel step whose branch fails (its
//! siblings and the earlier step undone), a skipped step, and a for-each
//! whose later element fails (exactly the elements that ran undone). Each
//! runs once straight through and once across a `kill -9` mid-flight.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::{client, get_json, post_json, publish_yaml, temp_dir, Proc};
use serde_json::{json, Value};

/// A quote, then three bookings at once; the car hire refuses a class
/// starting with `unavailable`.
const QUOTED_TRIP: &str = "
name: quoted-trip
env: { demo_url: 'http://127.0.0.1:9/demo' }
defaults: { timeout: 10s }
steps:
  - name: quote
    http: { url: '${ .env.demo_url }/quotes', body: { trip: '${ .input.trip }' } }
    compensate: { http: { method: DELETE, url: '${ .env.demo_url }/quotes/${ .input.trip }' } }
  - name: book
    parallel:
      - name: flight
        http: { url: '${ .env.demo_url }/flights', body: { trip: '${ .input.trip }' } }
        compensate: { http: { method: DELETE, url: '${ .env.demo_url }/flights/${ .input.trip }' } }
      - name: hotel
        http: { url: '${ .env.demo_url }/hotels', body: { trip: '${ .input.trip }' } }
        compensate: { http: { method: DELETE, url: '${ .env.demo_url }/hotels/${ .input.trip }' } }
      - name: car
        http: { url: '${ .env.demo_url }/cars', body: { class: '${ .input.class }' } }
        compensate: { http: { method: DELETE, url: '${ .env.demo_url }/cars/${ .input.trip }' } }
";

/// The elements of the for-each order, and the one the demo refuses.
const ELEMENTS: usize = 16;
const REFUSED: usize = 5;

struct Started {
    trip: String,
    quoted: String,
    skipped: String,
    elements: String,
}

fn items(prefix: &str, n: usize, refused: usize) -> Value {
    Value::Array(
        (0..n)
            .map(|i| {
                let sku = if i == refused {
                    format!("unavailable-{prefix}-{i}")
                } else {
                    format!("{prefix}-{i}")
                };
                json!({"sku": sku, "qty": 1})
            })
            .collect(),
    )
}

async fn start(c: &reqwest::Client, url: &str, run: &str) -> Started {
    let published = publish_yaml(c, url, QUOTED_TRIP).await;
    assert!(
        published.status().is_success(),
        "{:?}",
        published.text().await
    );
    let go = |workflow: &'static str, input: Value| {
        let url = format!("{url}/workflows/{workflow}/instances");
        async move {
            let (status, body) = post_json(c, url, input).await;
            assert_eq!(status, 201, "{body}");
            body["id"].as_str().unwrap().to_string()
        }
    };
    Started {
        trip: go("trip-booking", json!({"trip_id": format!("{run}-t"), "traveller": "ada", "from": "LHR", "to": "OSL", "depart": "2027-01-02", "return": "2027-01-09"})).await,
        quoted: go("quoted-trip", json!({"trip": format!("{run}-q"), "class": "unavailable-van"})).await,
        skipped: go("fulfilment", json!({"order_id": format!("{run}-s"), "amount": 100, "items": items(&format!("{run}s"), 3, 99)})).await,
        elements: go("fulfilment", json!({"order_id": format!("{run}-e"), "amount": 100, "items": items(&format!("{run}e"), ELEMENTS, REFUSED)})).await,
    }
}

/// Answers flight tasks as a worker would until the trip ends.
async fn fly(c: &reqwest::Client, url: &str, trip: &str) -> Value {
    for _ in 0..60 {
        let r = c
            .post(format!("{url}/tasks/flights/poll?wait=1s"))
            .send()
            .await
            .unwrap();
        if r.status() == 200 {
            let task: Value = r.json().await.unwrap();
            let (status, body) = post_json(
                c,
                format!("{url}/tasks/{}/complete", task["id"].as_str().unwrap()),
                json!({"output": {"booking_ref": "FL-7"}}),
            )
            .await;
            assert!(status.is_success() || status == 410, "{status} {body}");
        }
        let (_, v) = get_json(c, format!("{url}/instances/{trip}")).await;
        if v["finished_at"].is_string() {
            return v;
        }
    }
    panic!("the trip did not end");
}

async fn history(c: &reqwest::Client, url: &str, id: &str) -> Vec<Value> {
    let (_, h) = get_json(c, format!("{url}/instances/{id}/events")).await;
    h["items"].as_array().cloned().unwrap_or_default()
}

/// The units of step `step` whose attempts in `phase` started.
fn started(h: &[Value], step: u64, phase: &str) -> BTreeSet<u64> {
    h.iter()
        .filter(|e| {
            e["event_type"] == "StepStarted"
                && e["data"]["step"] == step
                && e["data"]["phase"] == phase
        })
        .filter_map(|e| e["data"]["index"].as_u64())
        .collect()
}

async fn ended(c: &reqwest::Client, url: &str, id: &str) -> Value {
    let (_, v) = get_json(c, format!("{url}/instances/{id}?wait=60s")).await;
    assert!(v["finished_at"].is_string(), "{v}");
    v
}

async fn check(c: &reqwest::Client, url: &str, demo: &str, s: &Started) {
    // the trip: three bookings at once, completed when all are made
    let trip = fly(c, url, &s.trip).await;
    assert_eq!(trip["status"], "completed", "{trip}");
    assert_eq!(trip["output"]["flight"], "FL-7");
    assert!(
        trip["output"]["hotel"].is_string() && trip["output"]["car"].is_string(),
        "{trip}"
    );
    let h = history(c, url, &s.trip).await;
    assert!(h.iter().any(|e| e["event_type"] == "BranchesStarted"));
    assert_eq!(started(&h, 0, "forward"), BTreeSet::from([0, 1, 2]));

    // a branch fails: its siblings (in flight or done) and the quote are undone
    let quoted = ended(c, url, &s.quoted).await;
    assert_eq!(quoted["status"], "compensated", "{quoted}");
    let h = history(c, url, &s.quoted).await;
    assert_eq!(
        started(&h, 1, "compensation"),
        BTreeSet::from([0, 1]),
        "flight and hotel, not the refused car"
    );
    let undone: Vec<&str> = h
        .iter()
        .filter(|e| e["event_type"] == "StepCompensated")
        .map(|e| e["data"]["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        undone.last(),
        Some(&"quote"),
        "the earlier step is undone last: {undone:?}"
    );
    assert!(undone.contains(&"flight") && undone.contains(&"hotel"));

    // `when` false: the step is skipped, never performed, never undone
    let skipped = ended(c, url, &s.skipped).await;
    assert_eq!(skipped["status"], "completed", "{skipped}");
    assert_eq!(skipped["output"]["policy"], Value::Null);
    let h = history(c, url, &s.skipped).await;
    assert!(h
        .iter()
        .any(|e| e["event_type"] == "StepSkipped" && e["data"]["name"] == "insure"));
    assert!(!h
        .iter()
        .any(|e| e["event_type"] == "StepStarted" && e["data"]["name"] == "insure"));

    // a later element fails: exactly the elements that ran are undone
    let elements = ended(c, url, &s.elements).await;
    assert_eq!(elements["status"], "compensated", "{elements}");
    let h = history(c, url, &s.elements).await;
    let ran = started(&h, 0, "forward");
    let undone = started(&h, 0, "compensation");
    let refused = REFUSED as u64;
    assert!(
        ran.contains(&refused) && ran.len() < ELEMENTS,
        "four at a time, none after the failure: {ran:?}"
    );
    let mut expected = ran.clone();
    expected.remove(&refused);
    assert_eq!(
        undone, expected,
        "the elements that ran, less the refused one"
    );
    let (_, stats) = get_json(c, format!("{demo}/demo/stats")).await;
    let effects = &stats["effects"];
    let order = elements["input"]["order_id"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let prefix = order.trim_end_matches("-e").to_string() + "e";
    for i in 0..ELEMENTS as u64 {
        let reserved = effects[format!("inventory/{prefix}-{i}/reservations")]
            .as_u64()
            .unwrap_or(0);
        let released = effects[format!("inventory/{prefix}-{i}/releases")]
            .as_u64()
            .unwrap_or(0);
        assert!(
            reserved <= 1 && released <= 1,
            "element {i} done once: {reserved} {released}"
        );
        if !ran.contains(&i) {
            assert_eq!((reserved, released), (0, 0), "element {i} never ran");
        }
        if i != refused && ran.contains(&i) {
            assert_eq!(released, 1, "element {i} released with its own item");
        }
    }
}

fn serve_args(dir: &std::path::Path, demo_env: &str) -> Vec<String> {
    let data = dir.join("data");
    [
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--data-dir",
        data.to_str().unwrap(),
        "--workflows",
        concat!(env!("CARGO_MANIFEST_DIR"), "/workflows"),
        "--no-demo",
        "--workflow-env",
        demo_env,
    ]
    .map(String::from)
    .to_vec()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parallel_when_and_for_each_over_http() {
    let dir = temp_dir("language");
    let demo = common::demo_services(&dir, "20ms");
    let env = format!("demo_url={}/demo", demo.url);
    let args = serve_args(&dir, &env);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let server = Proc::start(&args, &dir.join("server.log"));
    let c = client();
    let s = start(&c, &server.url, "a").await;
    check(&c, &server.url, &demo.url, &s).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parallel_when_and_for_each_across_a_kill_9() {
    let dir = temp_dir("language-kill");
    let demo = common::demo_services(&dir, "300ms");
    let env = format!("demo_url={}/demo", demo.url);
    let args = serve_args(&dir, &env);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut server = Proc::start(&args, &dir.join("server-1.log"));
    let c = client();
    let s = start(&c, &server.url, "k").await;
    // branches and elements are in flight at the demo (300 ms each)
    tokio::time::sleep(Duration::from_millis(450)).await;
    server.kill9();
    let server = Proc::start(&args, &dir.join("server-2.log"));
    check(&c, &server.url, &demo.url, &s).await;
    // the restart re-issued what was in flight, with the same keys
    let mut reissued = 0;
    for id in [&s.trip, &s.quoted, &s.skipped, &s.elements] {
        reissued += history(&c, &server.url, id)
            .await
            .iter()
            .filter(|e| e["event_type"] == "AttemptReissued")
            .count();
    }
    assert!(
        reissued > 0,
        "nothing was in flight at the kill; log:\n{}",
        server.log()
    );
}
