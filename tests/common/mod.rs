//! Starting the real `sagaflow` binary for end-to-end tests: port 0, a fresh
//! data directory, the URL read from its first lines, killed when dropped.

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

pub struct Proc {
    child: Child,
    pub url: String,
    pub log: PathBuf,
}

impl Proc {
    /// Starts `sagaflow ARGS` and waits (at most 30 s) for its "listening on URL" line.
    pub fn start(args: &[&str], log: &Path) -> Proc {
        Self::start_with_env(args, log, &[])
    }

    /// Like [`Proc::start`], with more environment variables (they win over the defaults).
    pub fn start_with_env(args: &[&str], log: &Path, env: &[(&str, &str)]) -> Proc {
        let stderr = std::fs::File::create(log).expect("log file");
        let mut child = Command::new(env!("CARGO_BIN_EXE_sagaflow"))
            .args(args)
            .env("SAGAFLOW_LOG", "warn,sagaflow=info")
            .env("SAGAFLOW_ADMIN_TOKEN", ADMIN_TOKEN)
            .env(
                "SAGAFLOW_TOKENS",
                format!("client:{CLIENT_TOKEN},worker:{WORKER_TOKEN},operator:{OPERATOR_TOKEN}"),
            )
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .expect("start sagaflow");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(url) = line.split_whitespace().find(|w| w.starts_with("http://")) {
                    let _ = tx.send(url.trim_end_matches("/demo").to_string());
                }
            }
        });
        match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(url) => Proc {
                child,
                url,
                log: log.to_path_buf(),
            },
            Err(_) => {
                let _ = child.kill();
                panic!(
                    "sagaflow {args:?} did not report its URL within 30 s; log:\n{}",
                    std::fs::read_to_string(log).unwrap_or_default()
                );
            }
        }
    }

    /// SIGKILL: no shutdown, no flush, nothing.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, then waits (at most `within`) for the process to exit; its status.
    pub fn terminate(&mut self, within: Duration) -> Option<std::process::ExitStatus> {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let until = std::time::Instant::now() + within;
        while std::time::Instant::now() < until {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    /// The process's id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The process's resident memory, in KiB.
    pub fn rss_kib(&self) -> u64 {
        std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .ok()
            .and_then(|s| {
                s.lines()
                    .find(|l| l.starts_with("VmRSS:"))
                    .and_then(|l| l.split_whitespace().nth(1))
                    .and_then(|n| n.parse().ok())
            })
            .expect("VmRSS of the server")
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// A fresh directory for one test.
pub fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("sagaflow-e2e-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

/// A server on port 0 with a fresh data directory and the example workflows.
pub fn serve(name: &str, extra: &[&str]) -> (Proc, PathBuf) {
    let dir = temp_dir(name);
    (serve_in(&dir, "server.log", extra, &[]), dir)
}

/// A server on port 0 with the data directory `dir/data` (kept across
/// restarts) and the example workflows, logging to `dir/log`.
pub fn serve_in(dir: &Path, log: &str, extra: &[&str], env: &[(&str, &str)]) -> Proc {
    let data = dir.join("data");
    let workflows = concat!(env!("CARGO_MANIFEST_DIR"), "/workflows");
    let mut args = vec![
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--data-dir",
        data.to_str().unwrap(),
        "--workflows",
        workflows,
    ];
    args.extend_from_slice(extra);
    Proc::start_with_env(&args, &dir.join(log), env)
}

pub const ADMIN_TOKEN: &str = "test-admin-token-0123456789";
pub const CLIENT_TOKEN: &str = "test-client-token-0123456789";
pub const WORKER_TOKEN: &str = "test-worker-token-0123456789";
pub const OPERATOR_TOKEN: &str = "test-operator-token-0123456789";

/// An HTTP client that sends `token` with every request.
pub fn client_with(token: Option<&str>) -> reqwest::Client {
    let mut headers = reqwest::header::HeaderMap::new();
    if let Some(t) = token {
        headers.insert(
            reqwest::header::AUTHORIZATION,
            format!("Bearer {t}").parse().expect("header"),
        );
    }
    reqwest::Client::builder()
        .default_headers(headers)
        .timeout(Duration::from_secs(60))
        .build()
        .expect("client")
}

/// An HTTP client with the admin token.
pub fn client() -> reqwest::Client {
    client_with(Some(ADMIN_TOKEN))
}

pub fn order(n: u32, amount: f64) -> serde_json::Value {
    serde_json::json!({"order_id": format!("o-{n}"), "customer_id": "c-1", "items": [{"sku": "widget", "qty": 2}], "amount": amount})
}

/// GET a URL and read its JSON body (`null` if there is none).
pub async fn get_json(
    c: &reqwest::Client,
    url: String,
) -> (reqwest::StatusCode, serde_json::Value) {
    let r = c.get(url).send().await.expect("request");
    let status = r.status();
    (status, r.json().await.unwrap_or(serde_json::Value::Null))
}

/// POST a JSON body and read the JSON answer (`null` if there is none).
pub async fn post_json(
    c: &reqwest::Client,
    url: String,
    body: serde_json::Value,
) -> (reqwest::StatusCode, serde_json::Value) {
    let r = c.post(url).json(&body).send().await.expect("request");
    let status = r.status();
    (status, r.json().await.unwrap_or(serde_json::Value::Null))
}

/// Every order's history is whole: one start, one end, no step succeeding
/// twice, revisions without gaps.
pub async fn histories_are_whole(
    c: &reqwest::Client,
    url: &str,
    ids: &std::collections::HashMap<u32, String>,
) {
    for (i, id) in ids {
        let history = get_json(c, format!("{url}/instances/{id}/events")).await.1["items"].clone();
        let events = history.as_array().unwrap();
        assert!(
            events
                .iter()
                .enumerate()
                .all(|(r, e)| e["revision"] == r as u64),
            "order {i}: revisions have gaps"
        );
        let count = |t: &str| events.iter().filter(|e| e["event_type"] == t).count();
        assert_eq!(count("SagaStarted"), 1, "order {i}");
        assert_eq!(
            count("SagaCompleted") + count("SagaCompensated"),
            1,
            "order {i}"
        );
        let mut succeeded: Vec<&str> = events
            .iter()
            .filter(|e| e["event_type"] == "StepSucceeded")
            .map(|e| e["data"]["name"].as_str().unwrap())
            .collect();
        let total = succeeded.len();
        succeeded.sort_unstable();
        succeeded.dedup();
        assert_eq!(succeeded.len(), total, "order {i}: a step succeeded twice");
    }
}

/// Orders `o-1` to `o-{orders}` (every tenth over the payment limit) had each
/// business effect done exactly once, as the downstream counted it: reserve,
/// pay and ship for an accepted order; reserve and release for a declined
/// one (the refusal changes nothing); never a refund. Every key the demo saw
/// belongs to one of these effects. Returns how many keys came again (effects
/// re-sent with their key, which the demo answered without doing them again).
pub async fn effects_happened_once(c: &reqwest::Client, demo_url: &str, orders: u32) -> usize {
    let stats = get_json(c, format!("{demo_url}/demo/stats")).await.1;
    for i in 1..=orders {
        let effects = &stats["orders"][format!("o-{i}")];
        let once = |k: &str| effects[k].as_u64();
        let kinds = effects.as_object().map_or(0, |o| o.len());
        if i % 10 == 0 {
            assert_eq!(
                (once("reserve"), once("release")),
                (Some(1), Some(1)),
                "order {i}: {effects}"
            );
            assert_eq!(kinds, 2, "order {i}: nothing else happened: {effects}");
        } else {
            assert_eq!(
                (once("reserve"), once("pay"), once("ship"), once("release")),
                (Some(1), Some(1), Some(1), None),
                "order {i}: {effects}"
            );
            // a payment is refunded only if shipping was compensated, which a shipped order never is
            assert_eq!(once("refund"), None, "order {i}: {effects}");
            assert_eq!(kinds, 3, "order {i}: nothing else happened: {effects}");
        }
    }
    let keys = stats["keys"].as_object().unwrap();
    // each order's effects carry one key apiece: 3 per order (reserve, pay or decline, ship or release)
    assert_eq!(
        keys.len(),
        orders as usize * 3,
        "one key per effect, whatever was re-sent"
    );
    keys.values().filter(|n| n.as_u64() > Some(1)).count()
}

/// With no fault at all, the demo saw every key exactly once: nothing was sent twice.
pub async fn nothing_was_sent_twice(c: &reqwest::Client, demo_url: &str) {
    let stats = get_json(c, format!("{demo_url}/demo/stats")).await.1;
    let twice: Vec<_> = stats["keys"]
        .as_object()
        .unwrap()
        .iter()
        .filter(|(_, n)| n.as_u64() != Some(1))
        .collect();
    assert!(twice.is_empty(), "keys seen more than once: {twice:?}");
}

/// How many attempts of these instances were re-issued after an outage
/// (`AttemptReissued`); fails if any attempt of theirs timed out, since a
/// re-issued attempt gets its whole timeout again.
pub async fn reissued_without_timeouts<'a>(
    c: &reqwest::Client,
    url: &str,
    ids: impl IntoIterator<Item = &'a String>,
) -> usize {
    let mut reissued = 0;
    for id in ids {
        let history = get_json(c, format!("{url}/instances/{id}/events")).await.1;
        let events = history["items"].as_array().unwrap();
        reissued += events
            .iter()
            .filter(|e| e["event_type"] == "AttemptReissued")
            .count();
        assert!(
            !events
                .iter()
                .any(|e| e["event_type"] == "StepFailed" && e["data"]["kind"] == "timeout"),
            "{id}: the outage failed an attempt: {history}"
        );
    }
    reissued
}

/// Reads one HTTP/1.1 request from `conn`: its head and as much body as its
/// `content-length` announces, lowercased; `None` when the peer closes first.
/// For the small services and proxies the tests stand up.
pub async fn read_request(conn: &mut tokio::net::TcpStream) -> Option<String> {
    use tokio::io::AsyncReadExt;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let n = conn.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
        let text = String::from_utf8_lossy(&buf).to_lowercase();
        let Some(end) = text.find("\r\n\r\n") else {
            continue;
        };
        let length = text[..end]
            .lines()
            .find_map(|l| l.strip_prefix("content-length: "))
            .and_then(|n| n.trim().parse::<usize>().ok())
            .unwrap_or(0);
        if buf.len() >= end + 4 + length {
            return Some(text);
        }
    }
}

/// A service on 127.0.0.1 for steps to call: each request is kept
/// (lowercased, as [`read_request`] reads it) and answered with what
/// `reply` makes of it; the connection is then held for `hold`. Its URL,
/// and the requests it saw.
pub async fn tiny_service(
    reply: impl Fn(&str) -> String + Send + Sync + 'static,
    hold: Duration,
) -> (String, std::sync::Arc<std::sync::Mutex<Vec<String>>>) {
    use tokio::io::AsyncWriteExt;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let (kept, reply) = (seen.clone(), std::sync::Arc::new(reply));
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            let (kept, reply) = (kept.clone(), reply.clone());
            tokio::spawn(async move {
                let Some(request) = read_request(&mut conn).await else {
                    return;
                };
                let answer = reply(&request);
                kept.lock().unwrap().push(request);
                let _ = conn.write_all(answer.as_bytes()).await;
                tokio::time::sleep(hold).await;
            });
        }
    });
    (url, seen)
}

/// `POST /workflows` with a YAML body.
pub async fn publish_yaml(c: &reqwest::Client, url: &str, yaml: &'static str) -> reqwest::Response {
    c.post(format!("{url}/workflows"))
        .header("content-type", "application/yaml")
        .body(yaml)
        .send()
        .await
        .expect("request")
}

/// [`publish_yaml`], which must answer 201 (the body says why when not).
pub async fn publish_ok(c: &reqwest::Client, url: &str, yaml: &'static str) {
    let r = publish_yaml(c, url, yaml).await;
    assert_eq!(
        r.status(),
        reqwest::StatusCode::CREATED,
        "{}",
        r.text().await.unwrap()
    );
}

/// The demo services as their own process (they outlive a killed server and
/// remember every idempotency key), answering after `latency`.
pub fn demo_services(dir: &Path, latency: &str) -> Proc {
    Proc::start(
        &[
            "demo-services",
            "--listen",
            "127.0.0.1:0",
            "--latency",
            latency,
        ],
        &dir.join("demo.log"),
    )
}

/// Starts orders `o-1` to `o-{n}` (every tenth over the payment limit) with
/// the Idempotency-Key `{key}-{i}`, 16 at a time, round-robin over `urls`;
/// returns their instance ids.
pub async fn start_orders(
    c: &reqwest::Client,
    urls: &[String],
    n: u32,
    key: &str,
) -> std::collections::HashMap<u32, String> {
    let mut ids = std::collections::HashMap::new();
    let mut from = 1;
    while from <= n {
        let batch: Vec<_> = (from..(from + 16).min(n + 1))
            .map(|i| {
                let c = c.clone();
                let url = format!(
                    "{}/workflows/order/instances",
                    urls[i as usize % urls.len()]
                );
                let amount = if i % 10 == 0 { 5000.0 } else { 25.0 };
                let key = format!("{key}-{i}");
                tokio::spawn(async move {
                    let r = c
                        .post(url)
                        .header("Idempotency-Key", key)
                        .json(&order(i, amount))
                        .send()
                        .await
                        .expect("start");
                    assert!(r.status().is_success(), "start {i}: {}", r.status());
                    let v: serde_json::Value = r.json().await.unwrap();
                    (i, v["id"].as_str().unwrap().to_string())
                })
            })
            .collect();
        for task in batch {
            let (i, id) = task.await.expect("start task");
            ids.insert(i, id);
        }
        from += 16;
    }
    ids
}

/// A tool of the test virtualenv (`scripts/test-tools.sh` makes it;
/// `SAGAFLOW_TEST_VENV` points elsewhere).
pub fn venv_bin(tool: &str) -> PathBuf {
    let venv = std::env::var_os("SAGAFLOW_TEST_VENV").map_or_else(
        || {
            PathBuf::from(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/target/test-tools/venv"
            ))
        },
        PathBuf::from,
    );
    let bin = venv.join("bin").join(tool);
    assert!(
        bin.exists(),
        "{} is missing: run ./scripts/test-tools.sh (the test command does)",
        bin.display()
    );
    bin
}

/// Runs a tool to its end (each bounds its own time) and fails the test with its output if it fails.
pub fn run_tool(mut cmd: Command, what: &str) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("{what}: cannot start: {e}"));
    let text = format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "{what} failed ({}):\n{text}",
        out.status
    );
    text
}
