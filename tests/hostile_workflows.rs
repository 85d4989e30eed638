//! A published workflow cannot hurt the server. Each hostile workflow is
//! either refused at publish with a located `forbidden-function`, or its
//! instances end failed or compensated with a clear error that holds no
//! secret. Through all of it `/health` answers quickly, a crash with the
//! hostile instances in flight does not stop the server from coming back, and
//! the server's secrets appear in no answer, event, or log line.

mod common;

use std::time::{Duration, Instant};

use common::{client, get_json, post_json, temp_dir, ADMIN_TOKEN};
use reqwest::StatusCode;
use serde_json::{json, Value};

const SECRET: &str = "sk-live-7f3a9c2e51d0b8a4";

/// Refused at publish: (workflow, body template).
const REFUSED: &[(&str, &str)] = &[
    ("env", "${ env.SAGAFLOW_ADMIN_TOKEN }"),
    ("env-var", "${ $ENV }"),
    ("halt", "${ if .input.boom then halt_error else 1 end }"),
    ("import", "${ import \\\"/etc/passwd\\\" as $x; $x }"),
    ("debug", "${ .input | debug }"),
    ("stderr", "${ .input | stderr }"),
    ("input", "${ input }"),
    ("now", "${ now }"),
    ("loc", "${ $__loc__ }"),
];

/// Published, and each instance stopped by the budget: (workflow, body template, input).
fn runaway() -> Vec<(&'static str, &'static str, Value)> {
    vec![
        ("loop", "${ last(range(.input.n)) }", json!({"n": 1e13})),
        ("spin", "${ def f: f; f }", json!({})),
        ("deep", "${ def f: 1 + f; f }", json!({})),
        ("big", "${ \\\"x\\\" * 10000000 }", json!({})),
        (
            "bomb",
            "${ \\\"x\\\" * .input.n }",
            json!({"n": 1_000_000_000_000u64}),
        ),
    ]
}

fn workflow(name: &str, body: &str) -> String {
    format!(
        "name: {name}\nsteps:\n  - name: call\n    http:\n      url: \"http://127.0.0.1:1/x\"\n      body: {{ v: \"{body}\" }}\n    compensate: none\n"
    )
}

/// A secret in the URL of a service that cannot be reached.
const LEAKY: &str = r#"
name: leaky
env: { api_key: "" }
steps:
  - name: pay
    http: { url: "http://127.0.0.1:1/pay?key=${ .env.api_key }", body: { k: "${ .env.api_key }" } }
    retry: { max_attempts: 2, backoff: { initial: 50ms } }
    compensate: none
output:
  key: "${ .env.api_key }"
"#;

async fn publish(c: &reqwest::Client, url: &str, yaml: String) -> (StatusCode, Value) {
    let r = c
        .post(format!("{url}/workflows"))
        .header("content-type", "application/yaml")
        .body(yaml)
        .send()
        .await
        .expect("request");
    let status = r.status();
    (status, r.json().await.unwrap_or(Value::Null))
}

/// Polls `/health` until `stop`; the slowest answer.
async fn health_watch(url: String, stop: tokio::sync::watch::Receiver<bool>) -> Duration {
    let c = client();
    let mut slowest = Duration::ZERO;
    while !*stop.borrow() {
        let t = Instant::now();
        let r = c
            .get(format!("{url}/health"))
            .timeout(Duration::from_secs(5))
            .send()
            .await;
        let took = t.elapsed();
        assert!(
            r.is_ok_and(|r| r.status().is_success()),
            "/health did not answer"
        );
        slowest = slowest.max(took);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    slowest
}

fn serve(dir: &std::path::Path, log: &str) -> common::Proc {
    common::serve_in(
        dir,
        log,
        &["--workflow-env", &format!("api_key={SECRET}")],
        &[("SAGAFLOW_LOG", "debug,hyper=info,h2=info,sqlx=info")],
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_workflows_are_refused_or_fail_alone_and_secrets_stay_secret() {
    let dir = temp_dir("hostile");
    let mut server = serve(&dir, "server.log");
    let c = client();

    for (name, expr) in REFUSED {
        let (status, p) = publish(&c, &server.url, workflow(name, expr)).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{name}: {p}");
        let e = &p["errors"][0];
        assert_eq!(e["code"], "forbidden-function", "{name}: {p}");
        assert_eq!(e["line"], 6, "{name}: located at the template: {p}");
        assert_eq!(e["column"], 18, "{name}: located at the template: {p}");
    }

    let (stop, watching) = tokio::sync::watch::channel(false);
    let watch = tokio::spawn(health_watch(server.url.clone(), watching));
    let mut ids = Vec::new();
    for (name, body, input) in runaway() {
        let (status, p) = publish(&c, &server.url, workflow(name, body)).await;
        assert_eq!(status, StatusCode::CREATED, "{name}: {p}");
        let (status, v) = post_json(
            &c,
            format!("{}/workflows/{name}/instances", server.url),
            input,
        )
        .await;
        assert_eq!(status, StatusCode::CREATED, "{name}: {v}");
        ids.push((name, v["id"].as_str().unwrap().to_string()));
    }
    let (status, p) = publish(&c, &server.url, LEAKY.to_string()).await;
    assert_eq!(status, StatusCode::CREATED, "{p}");
    let (status, v) = post_json(
        &c,
        format!("{}/workflows/leaky/instances", server.url),
        json!({}),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{v}");
    ids.push(("leaky", v["id"].as_str().unwrap().to_string()));

    // A crash with the hostile instances started: they must not keep the
    // server from coming back.
    server.kill9();
    let started = Instant::now();
    let mut server = serve(&dir, "server-2.log");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "restarted in {:?}",
        started.elapsed()
    );
    stop.send_replace(true);
    let _ = watch.await;
    let (stop, watching) = tokio::sync::watch::channel(false);
    let watch = tokio::spawn(health_watch(server.url.clone(), watching));

    for (name, id) in &ids {
        let (_, done) = get_json(&c, format!("{}/instances/{id}?wait=30s", server.url)).await;
        let status = done["status"].as_str().unwrap_or_default();
        assert!(
            ["failed", "compensated"].contains(&status),
            "{name}: {done}"
        );
        let text = done.to_string();
        assert!(!text.contains(SECRET), "{name} shows the secret: {text}");
        if *name == "leaky" {
            let error = done["error"].as_str().unwrap_or_default();
            assert!(error.contains("***"), "the masked key is visible: {done}");
        } else {
            let error = done["error"].as_str().unwrap_or_default();
            assert!(
                error.contains("was stopped") && error.contains("template budget"),
                "{name}: {done}"
            );
        }
        let (_, history) = get_json(&c, format!("{}/instances/{id}/history", server.url)).await;
        assert!(!history.to_string().contains(SECRET), "{name}: {history}");
    }
    let (_, listing) = get_json(&c, format!("{}/instances?limit=100", server.url)).await;
    assert!(!listing.to_string().contains(SECRET), "{listing}");

    stop.send_replace(true);
    let slowest = watch.await.expect("health watch");
    assert!(
        slowest < Duration::from_millis(100),
        "/health took {slowest:?} at worst"
    );

    // and once more, a clean restart on the same data
    assert!(server.terminate(Duration::from_secs(10)).is_some());
    let started = Instant::now();
    let server = serve(&dir, "server-3.log");
    let (status, _) = get_json(&c, format!("{}/health", server.url)).await;
    assert_eq!(status, StatusCode::OK);
    assert!(started.elapsed() < Duration::from_secs(10));
    drop(server);

    // nothing on disk or in the logs holds the secrets
    for entry in walk(&dir) {
        let bytes = std::fs::read(&entry).unwrap_or_default();
        for secret in [SECRET, ADMIN_TOKEN] {
            assert!(
                !contains(&bytes, secret.as_bytes()),
                "{} holds a secret",
                entry.display()
            );
        }
    }
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}
