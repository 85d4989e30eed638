//! Retention through the binary, on each store: instances that ended longer
//! ago than `--retention` are archived and removed, newer ones stay, the
//! removed ones answer 404 `/problems/instance-removed`, a late retried start
//! with the same key is refused while the tombstone is kept, a rebuild of
//! the read models does not bring them back, and on SQLite the files shrink.
//! PostgreSQL comes from `scripts/postgres.sh`; EventStoreDB is the
//! protocol-level test double.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::{client, get_json, Proc};
use reqwest::StatusCode;
use serde_json::{json, Value};

/// Old and new orders: enough old ones on SQLite for the files to shrink
/// measurably, fewer on the EventStoreDB double (it is slow: every call is a
/// new gRPC request to a server that scans its log).
const OLD: usize = 150;
const OLD_ON_THE_DOUBLE: usize = 20;
const NEW: usize = 10;
/// The old orders end at least this long before the new ones start.
const GAP: Duration = Duration::from_secs(40);
/// What server 2 keeps: older than the old ones, younger than the new ones
/// by half a minute: the test's checks run in that margin, on a machine that
/// may be running every other test at once.
const KEEP: &str = "30s";

fn body(id: &str) -> Value {
    json!({"order_id": id, "customer_id": "c-ret", "items": [{"sku": "mug", "qty": 1}], "amount": 20.0})
}

/// Creates the orders and waits until each has ended; their instance ids.
async fn orders(c: &reqwest::Client, s: &Proc, prefix: &str, n: usize) -> Vec<String> {
    let mut ids = Vec::new();
    for i in 0..n {
        let r = c
            .post(format!("{}/orders", s.url))
            .json(&body(&format!("{prefix}-{i}")))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::CREATED, "{}", s.log());
        let o: Value = r.json().await.unwrap();
        ids.push(o["instance_id"].as_str().unwrap().to_string());
    }
    for id in &ids {
        let (_, v) = get_json(c, format!("{}/instances/{id}?wait=30s", s.url)).await;
        assert_eq!(v["status"], "completed", "{v}");
    }
    ids
}

/// A graceful stop: on a shared store the partitions are handed back, so the
/// next server drives every instance at once.
fn stop(mut s: Proc) {
    assert!(
        s.terminate(Duration::from_secs(30)).is_some(),
        "{}",
        s.log()
    );
}

fn sagaflow(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_sagaflow"))
        .args(args)
        .env("SAGAFLOW_LOG", "warn")
        .output()
        .unwrap()
}

fn files_size(data: &Path, prefix: &str) -> u64 {
    std::fs::read_dir(data)
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with(prefix))
        .map(|e| e.metadata().unwrap().len())
        .sum()
}

async fn retention_on(name: &str, store: &str, permanent_tombstones: bool) {
    let n_old = if permanent_tombstones {
        OLD_ON_THE_DOUBLE
    } else {
        OLD
    };
    let dir = common::temp_dir(name);
    let data = dir.join("data");
    let archive = dir.join("archive");
    let c = client();
    let keep_all = ["--store", store, "--retention", "off"];

    // server 1 keeps everything: old orders, a pause, new orders
    let s = common::serve_in(&dir, "1.log", &keep_all, &[]);
    let old = orders(&c, &s, "old", n_old).await;
    tokio::time::sleep(GAP).await;
    let new = orders(&c, &s, "new", NEW).await;
    let new_ended = std::time::Instant::now();
    stop(s);
    let sizes = |data: &Path| {
        (
            files_size(data, "events.db"),
            files_size(data, "readmodels.db"),
        )
    };
    let before = sizes(&data);

    // server 2 removes what ended more than KEEP ago: the old orders only
    let s = common::serve_in(
        &dir,
        "2.log",
        &[
            "--store",
            store,
            "--retention",
            KEEP,
            "--tombstone-window",
            "1h",
            "--archive-dir",
            archive.to_str().unwrap(),
        ],
        &[],
    );
    // every old one is removed (in batches, oldest ended first: the one
    // started last need not be the last removed)
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    for id in &old {
        loop {
            let (status, v) = get_json(&c, format!("{}/instances/{id}", s.url)).await;
            if status == StatusCode::NOT_FOUND {
                assert_eq!(v["type"], "/problems/instance-removed", "{v}");
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{id} was not removed: {v}\n{}",
                s.log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    for id in &old[..3] {
        for path in ["", "/events"] {
            let (status, v) = get_json(&c, format!("{}/instances/{id}{path}", s.url)).await;
            assert_eq!(status, StatusCode::NOT_FOUND, "{path} {v}");
            assert_eq!(v["type"], "/problems/instance-removed", "{path} {v}");
        }
    }
    let (status, v) = get_json(&c, format!("{}/orders/old-0", s.url)).await;
    assert_eq!(
        (status, &v["type"]),
        (StatusCode::NOT_FOUND, &json!("/problems/instance-removed")),
        "{v}"
    );
    // a late retry of an old order's start is refused, not run again
    let r = c
        .post(format!("{}/orders", s.url))
        .json(&body("old-1"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CONFLICT);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["type"], "/problems/instance-removed", "{v}");
    // how far behind retention is: the old orders were kept a little past
    // the age; 0 once a look finds nothing due
    let metrics = c
        .get(format!("{}/metrics", s.url))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let behind: f64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("sagaflow_retention_behind_seconds "))
        .unwrap_or_else(|| panic!("no retention gauge in\n{metrics}"))
        .parse()
        .unwrap();
    assert!((0.0..120.0).contains(&behind), "{behind}");
    // only the new ones are listed: the read models forget a batch in the
    // transaction right after its removal from the log, so an instance may
    // answer 404 and be listed for that long (docs/adr/0015)
    let mut want: Vec<String> = new.clone();
    want.sort_unstable();
    let mut got = Vec::new();
    for _ in 0..50 {
        let (_, listed) =
            get_json(&c, format!("{}/instances?consistent=true&limit=500", s.url)).await;
        got = listed["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["id"].as_str().unwrap().to_string())
            .collect();
        got.sort_unstable();
        if got == want {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        got,
        want,
        "only the new instances are listed ({:?} after the new ones ended; they are kept for {KEEP})\n{}",
        new_ended.elapsed(),
        s.log()
    );
    assert!(
        !s.log().contains("retention could not remove"),
        "{}",
        s.log()
    );
    for (i, id) in new.iter().enumerate() {
        let (_, o) = get_json(&c, format!("{}/orders/new-{i}", s.url)).await;
        assert_eq!(o["status"], "shipped", "{o}");
        let (_, h) = get_json(&c, format!("{}/instances/{id}/events", s.url)).await;
        assert_eq!(h["items"][0]["event_type"], "SagaStarted", "{h}");
    }
    stop(s);
    // what retention and the vacuum left (server 3 below starts an order of its own)
    let after = sizes(&data);

    // the archive holds every old order's whole history
    let mut archived = Vec::new();
    for file in std::fs::read_dir(&archive).unwrap().flatten() {
        let out = sagaflow(&["archive", "read", file.path().to_str().unwrap()]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        for line in String::from_utf8(out.stdout).unwrap().lines() {
            archived.push(serde_json::from_str::<Value>(line).unwrap());
        }
    }
    assert_eq!(archived.len(), n_old);
    for a in &archived {
        let events = a["events"].as_array().unwrap();
        assert_eq!(events[0]["type"], "SagaStarted", "{a}");
        assert_eq!(events.last().unwrap()["type"], "SagaCompleted", "{a}");
        assert!(old.contains(&a["instance_id"].as_str().unwrap().to_string()));
    }

    // a rebuild of the read models does not bring the removed instances back
    let out = sagaflow(&[
        "projections",
        "rebuild",
        "--data-dir",
        data.to_str().unwrap(),
        "--store",
        store,
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // a short tombstone window: the keys of the old orders are free again
    // (EventStoreDB's hard deletes are for ever)
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let s = common::serve_in(
        &dir,
        "3.log",
        &[
            "--store",
            store,
            "--retention",
            "1h",
            "--tombstone-window",
            "1s",
        ],
        &[],
    );
    let (_, listed) = get_json(&c, format!("{}/instances?consistent=true&limit=500", s.url)).await;
    assert_eq!(listed["items"].as_array().unwrap().len(), NEW, "{listed}");
    let mut again = StatusCode::CONFLICT;
    for _ in 0..50 {
        let r = c
            .post(format!("{}/orders", s.url))
            .json(&body("old-2"))
            .send()
            .await
            .unwrap();
        again = r.status();
        if again != StatusCode::CONFLICT || permanent_tombstones {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let want = if permanent_tombstones {
        StatusCode::CONFLICT
    } else {
        StatusCode::CREATED
    };
    assert_eq!(again, want, "{}", s.log());
    stop(s);

    if store == "sqlite" {
        // Without the vacuum the files keep their freed pages and do not
        // shrink at all. Each file also holds a page or more per table and
        // index whatever its rows (about half of the small read models'
        // file here), so "more than 40% smaller" is what removing 150 of
        // 160 sagas must show.
        assert!(
            after.0 * 5 < before.0 * 3 && after.1 * 5 < before.1 * 3,
            "the files shrank: events {} -> {} bytes, read models {} -> {} bytes",
            before.0,
            after.0,
            before.1,
            after.1
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_on_sqlite_removes_old_instances_and_the_files_shrink() {
    retention_on("ret-sqlite", "sqlite", false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_on_postgres() {
    let url = sagaflow_engine::store::postgres::test_database("e2e_retention").await;
    retention_on("ret-pg", &url, false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_on_the_eventstoredb_double() {
    let double = esdb_double::Double::default();
    let server = double.serve().await;
    retention_on("ret-esdb", &server.url(), true).await;
}
