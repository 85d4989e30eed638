//! Replicas sharing one store: three `sagaflow serve` processes on one
//! PostgreSQL database, and two on one EventStoreDB (the protocol-level test
//! double; no real EventStoreDB runs here). They split the partitions of
//! instances between them, orders started on any of them all run, one replica
//! is killed with SIGKILL while it drives unfinished sagas, and the others take
//! them over: every saga ends right, every history is whole, every effect
//! happened once (the demo services run as their own process and count them).

mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use common::{client, get_json, temp_dir, Proc};
use reqwest::StatusCode;
use serde_json::{json, Value};

const PARTITIONS: usize = 64;

/// A saga that waits (a timer), then hands a task to a worker. The queue's
/// name holds a `/`: relays between replicas must keep it one path segment.
const TIMER_WORKFLOW: &str = "\
name: replica-timer
version: 1
steps:
  - name: pause
    wait: { duration: 4s }
  - name: handoff
    task: { queue: replica/q, heartbeat: 2s }
    timeout: 1m
    compensate: none
";

/// The partitions a replica drives, from its health report.
async fn held(c: &reqwest::Client, url: &str) -> Vec<u64> {
    let (_, h) = get_json(c, format!("{url}/health")).await;
    h["partitions"]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_u64).collect())
        .unwrap_or_default()
}

/// Waits (at most 30 s) until the replicas together hold every partition, each some, none twice.
async fn until_split(c: &reqwest::Client, replicas: &[&Proc]) -> Vec<Vec<u64>> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let mut all = Vec::new();
        for r in replicas {
            all.push(held(c, &r.url).await);
        }
        let mut union: Vec<u64> = all.iter().flatten().copied().collect();
        let total = union.len();
        union.sort_unstable();
        union.dedup();
        let split = all.iter().all(|h| !h.is_empty()) && union.len() == PARTITIONS;
        assert_eq!(union.len(), total, "a partition held twice: {all:?}");
        if split {
            return all;
        }
        assert!(
            Instant::now() < deadline,
            "the replicas did not split the partitions: {all:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn partition(id: &str) -> u64 {
    u64::from(sagaflow_engine::runtime::cluster::partition(
        id.parse().unwrap(),
    ))
}

async fn replicas_share_the_work_and_take_over_a_dead_one(
    name: &str,
    store: &str,
    replicas: usize,
    orders: u32,
) {
    let dir = temp_dir(name);
    // slow enough that many sagas are in flight when a replica dies
    let demo = common::demo_services(&dir, "300ms");
    let demo_env = format!("demo_url={}/demo", demo.url);
    // the default lease ttl (10 s): longer than the order workflow's step timeout (5 s)
    let args = ["--store", store, "--no-demo", "--workflow-env", &demo_env];
    let mut procs: Vec<Proc> = (0..replicas)
        .map(|i| {
            let home = dir.join(format!("r{i}"));
            std::fs::create_dir_all(&home).unwrap();
            common::serve_in(&home, "server.log", &args, &[])
        })
        .collect();
    let c = client();
    let shares = until_split(&c, &procs.iter().collect::<Vec<_>>()).await;
    eprintln!(
        "partitions per replica: {:?}",
        shares.iter().map(Vec::len).collect::<Vec<_>>()
    );

    // A token issued through one replica is accepted by the others.
    let (status, issued) = common::post_json(
        &c,
        format!("{}/tokens", procs[0].url),
        json!({"name": "replicas", "role": "client"}),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{issued}");
    let token = issued["token"].as_str().unwrap().to_string();
    let with_token = common::client_with(Some(&token));
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let r = with_token
            .get(format!("{}/instances?limit=1", procs[replicas - 1].url))
            .send()
            .await
            .unwrap();
        if r.status() == StatusCode::OK {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "another replica never accepted the token: {}",
            r.status()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // A workflow published on one replica reaches the others.
    let r = common::publish_yaml(&c, &procs[0].url, TIMER_WORKFLOW).await;
    assert_eq!(r.status(), StatusCode::CREATED);
    for p in &procs {
        let deadline = Instant::now() + Duration::from_secs(10);
        while c
            .get(format!("{}/workflows/replica-timer", p.url))
            .send()
            .await
            .unwrap()
            .status()
            != StatusCode::OK
        {
            assert!(
                Instant::now() < deadline,
                "the workflow never reached {}",
                p.url
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    // Sagas that wait on a timer, then hand a task to a worker: started
    // first, until two fall in the partitions of every replica (the victim is
    // chosen below), so that the orders can be started right before the kill.
    let mut waiting: Vec<String> = Vec::new();
    let mut per_replica = vec![0; replicas];
    for k in 0..96 {
        if per_replica.iter().all(|n| *n >= 2) {
            break;
        }
        let (status, v) = common::post_json(
            &c,
            format!(
                "{}/workflows/replica-timer/instances",
                procs[k % replicas].url
            ),
            json!({"n": k}),
        )
        .await;
        assert_eq!(status, StatusCode::CREATED, "{v}");
        let id = v["id"].as_str().unwrap().to_string();
        if let Some(r) = shares.iter().position(|s| s.contains(&partition(&id))) {
            per_replica[r] += 1;
        }
        waiting.push(id);
    }
    assert!(
        per_replica.iter().all(|n| *n >= 2),
        "waits per replica: {per_replica:?}"
    );

    // Orders started round-robin on every replica, 10% over the payment limit, 16 at a time.
    let urls: Vec<String> = procs.iter().map(|p| p.url.clone()).collect();
    let ids = common::start_orders(&c, &urls, orders, "replica").await;

    // Kill at once, mid-run (each step takes 300 ms), the replica driving the
    // most of the sagas started last. Nothing between the last start and the
    // kill waits on the servers: on a loaded machine the orders would finish first.
    let latest: Vec<&String> = (orders.saturating_sub(11)..=orders)
        .filter_map(|i| ids.get(&i))
        .collect();
    let driven_by = |r: usize| {
        latest
            .iter()
            .filter(|id| shares[r].contains(&partition(id)))
            .count()
    };
    let victim = (0..replicas).max_by_key(|r| driven_by(*r)).unwrap();
    procs[victim].kill9();
    let victim_log = procs.remove(victim).log();
    // Its sagas still unfinished (orders, and the two waits at least), and how
    // far their histories got when it died.
    let mut orphaned: HashMap<String, u64> = HashMap::new();
    for id in ids.values().chain(&waiting) {
        if !shares[victim].contains(&partition(id)) {
            continue;
        }
        let (_, v) = get_json(&c, format!("{}/instances/{id}", procs[0].url)).await;
        if v["finished_at"].is_null() {
            orphaned.insert(id.clone(), v["events"].as_u64().unwrap());
        }
    }
    assert!(
        !orphaned.is_empty(),
        "the kill should land while the replica drives unfinished sagas"
    );

    // The others take its partitions over once its lease runs out, and finish everything.
    let survivors: Vec<&Proc> = procs.iter().collect();
    let now_held = until_split(&c, &survivors).await;
    // With two survivors or more: one more wait held by the second, whose task
    // the worker below only gets by polling the first.
    if survivors.len() > 1 {
        for k in 100..164 {
            let (status, v) = common::post_json(
                &c,
                format!("{}/workflows/replica-timer/instances", survivors[0].url),
                json!({"n": k}),
            )
            .await;
            assert_eq!(status, StatusCode::CREATED, "{v}");
            let id = v["id"].as_str().unwrap().to_string();
            let on_second = now_held[1].contains(&partition(&id));
            waiting.push(id);
            if on_second {
                break;
            }
        }
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    for (i, id) in &ids {
        assert!(
            Instant::now() < deadline,
            "sagas did not finish within 120 s of the kill"
        );
        let url = &survivors[*i as usize % survivors.len()].url;
        let v = get_json(&c, format!("{url}/instances/{id}?wait=60s"))
            .await
            .1;
        let want = if i % 10 == 0 {
            "compensated"
        } else {
            "completed"
        };
        assert_eq!(
            v["status"], want,
            "order {i} ({id}, partition {}): {v}\nkilled replica's log:\n{victim_log}\nsurvivor's log:\n{}",
            partition(id),
            survivors[0].log()
        );
    }
    common::histories_are_whole(&c, &survivors[0].url, &ids).await;

    // The waits' timers fire on whichever replica holds them now. A worker
    // polls one replica only, which hands out the tasks the others hold too,
    // and answers each task on the other replica.
    let worker = common::client_with(Some(common::WORKER_TOKEN));
    let mut answered = 0;
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut relayed = 0;
    while answered < waiting.len() {
        assert!(
            Instant::now() < deadline,
            "only {answered} of {} tasks were handed out",
            waiting.len()
        );
        let from = &survivors[0].url;
        let to = &survivors[survivors.len() - 1].url;
        let r = worker
            .post(format!("{from}/tasks/replica%2Fq/poll?wait=500ms"))
            .send()
            .await
            .unwrap();
        if r.status() == StatusCode::NO_CONTENT {
            continue;
        }
        assert_eq!(r.status(), StatusCode::OK);
        let task: Value = r.json().await.unwrap();
        let tid = task["id"].as_str().unwrap();
        let instance = task["instance_id"].as_str().unwrap();
        let mut holder = None;
        for s in &survivors {
            if held(&c, &s.url).await.contains(&partition(instance)) {
                holder = Some(s.url.clone());
            }
        }
        if holder.as_ref() != Some(from) {
            relayed += 1;
        }
        let elsewhere = survivors.iter().find(|s| Some(&s.url) != holder.as_ref());
        if let (Some(elsewhere), 0) = (elsewhere, answered) {
            // Heartbeats sent to another replica reach the one that handed the
            // task out: four seconds of them keep a two-second lease alive.
            // Right after the takeover, the replica they are sent to may not
            // have read the lease table since the other took its share; it
            // still finds the holder.
            for _ in 0..16 {
                let hb = worker
                    .post(format!("{}/tasks/{tid}/heartbeat", elsewhere.url))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(hb.status(), StatusCode::NO_CONTENT, "{tid}");
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        }
        let (status, answer) = common::post_json(
            &worker,
            format!("{to}/tasks/{tid}/complete"),
            json!({"output": {"by": "worker"}}),
        )
        .await;
        assert_eq!(
            (status, &answer["accepted"]),
            (StatusCode::OK, &json!(true))
        );
        answered += 1;
    }
    if survivors.len() > 1 {
        assert!(
            relayed > 0,
            "no task came from a replica other than the one polled"
        );
    }
    for id in &waiting {
        let v = get_json(&c, format!("{}/instances/{id}?wait=30s", survivors[0].url))
            .await
            .1;
        assert_eq!(v["status"], "completed", "{v}");
        let history = get_json(&c, format!("{}/instances/{id}/events", survivors[0].url))
            .await
            .1;
        let fired = history["items"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["event_type"] == "TimerFired")
            .count();
        assert_eq!(fired, 1, "{id}: {history}");
    }

    // The dead replica's sagas moved on after it died: the others drove them.
    for (id, at_kill) in &orphaned {
        let (_, v) = get_json(&c, format!("{}/instances/{id}", survivors[0].url)).await;
        assert!(
            v["events"].as_u64().unwrap() > *at_kill,
            "{id} did not move after the kill: {v}"
        );
    }
    // Their attempts in flight were re-issued by the replicas that took them
    // over, each with its key and a fresh timeout, and none timed out meanwhile.
    let orders_orphaned: Vec<&String> = orphaned
        .keys()
        .filter(|id| ids.values().any(|o| o == *id))
        .collect();
    let reissued =
        common::reissued_without_timeouts(&c, &survivors[0].url, orders_orphaned.iter().copied())
            .await;
    assert!(
        reissued > 0,
        "no attempt was in flight on the killed replica ({} of its orders were unfinished)",
        orders_orphaned.len()
    );
    let replayed = common::effects_happened_once(&c, &demo.url, orders).await;
    eprintln!(
        "{} sagas of the killed replica were unfinished and taken over; \
         {reissued} attempts re-issued; {replayed} effects reached the downstream again with their key and were done once",
        orphaned.len()
    );

    // Every replica's read models agree on the outcome.
    for s in &survivors {
        let (_, o) = get_json(&c, format!("{}/orders/o-10?consistent=true", s.url)).await;
        assert_eq!(o["status"], "compensated", "{o}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_on_postgres_share_the_work_and_take_over_a_dead_one() {
    let url = sagaflow_engine::store::postgres::test_database("e2e_replicas").await;
    replicas_share_the_work_and_take_over_a_dead_one("pg-replicas", &url, 3, 120).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_on_the_eventstoredb_double_share_the_work_and_take_over_a_dead_one() {
    let double = esdb_double::Double::default();
    let server = double.serve().await;
    replicas_share_the_work_and_take_over_a_dead_one("esdb-replicas", &server.url(), 2, 60).await;
}

#[tokio::test]
async fn a_database_that_does_not_answer_is_named_without_its_password() {
    let dir = temp_dir("pg-away");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_sagaflow"))
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
            dir.join("data").to_str().unwrap(),
            "--store",
            "postgres://sagaflow:s3cret-password@127.0.0.1:1/nowhere",
        ])
        .env("SAGAFLOW_ADMIN_TOKEN", common::ADMIN_TOKEN)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("PostgreSQL"), "{err}");
    assert!(
        !err.contains("s3cret-password"),
        "no password in messages: {err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_started_at_once_on_a_fresh_database_all_come_up() {
    let c = client();
    for round in 0..3 {
        let url =
            sagaflow_engine::store::postgres::test_database(&format!("e2e_at_once_{round}")).await;
        let dir = temp_dir(&format!("at-once-{round}"));
        // each start waits for its "listening" line: start them from threads, together
        let starts: Vec<_> = (0..3)
            .map(|i| {
                let (url, home) = (url.clone(), dir.join(format!("r{i}")));
                std::thread::spawn(move || {
                    std::fs::create_dir_all(&home).unwrap();
                    common::serve_in(&home, "server.log", &["--store", &url], &[])
                })
            })
            .collect();
        let procs: Vec<Proc> = starts
            .into_iter()
            .map(|t| t.join().expect("every replica came up"))
            .collect();
        for p in &procs {
            let (status, ready) = get_json(&c, format!("{}/ready", p.url)).await;
            assert_eq!(
                status,
                StatusCode::OK,
                "round {round}: {ready}\n{}",
                p.log()
            );
        }
    }
}
