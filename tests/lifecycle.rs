//! The server process as an operator runs it: one server per data directory,
//! and SIGTERM mid-run stops it cleanly (exit 0; effects in flight record
//! their outcome within the grace period, so here the sagas run to their end
//! before it exits), with every saga ended right and each effect once after
//! the next start.

mod common;

use std::time::Duration;

use common::{client, get_json, serve_in, temp_dir};

#[tokio::test]
async fn a_second_server_on_the_same_data_directory_is_refused() {
    let dir = temp_dir("datadir-lock");
    let first = serve_in(&dir, "first.log", &[], &[]);
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_sagaflow"))
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.join("data"))
        .env("SAGAFLOW_ADMIN_TOKEN", common::ADMIN_TOKEN)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("another sagaflow server is using"),
        "a clear refusal: {err}"
    );
    // the first goes on undisturbed
    let (status, _) = get_json(&client(), format!("{}/ready", first.url)).await;
    assert_eq!(status, reqwest::StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_mid_run_stops_cleanly_and_loses_nothing() {
    const ORDERS: u32 = 60;
    let dir = temp_dir("sigterm");
    let demo = common::demo_services(&dir, "100ms");
    let env = format!("demo_url={}/demo", demo.url);
    let args = ["--no-demo", "--workflow-env", env.as_str()];
    let mut server = serve_in(&dir, "server-1.log", &args, &[]);
    let c = client();
    let ids = common::start_orders(&c, std::slice::from_ref(&server.url), ORDERS, "term").await;
    let status = server
        .terminate(Duration::from_secs(30))
        .expect("the server exits within 30 s of SIGTERM");
    assert!(status.success(), "{status:?}\n{}", server.log());
    assert!(server.log().contains("shutting down"), "{}", server.log());
    // the log is whole in its file: a copy of events.db alone is a backup
    assert!(
        !dir.join("data/events.db-wal").exists(),
        "a clean stop closes the event log\n{}",
        server.log()
    );
    assert!(
        !dir.join("data/readmodels.db-wal").exists(),
        "a clean stop closes the read models\n{}",
        server.log()
    );

    let server = serve_in(&dir, "server-2.log", &args, &[]);
    for (i, id) in &ids {
        let v = get_json(&c, format!("{}/instances/{id}?wait=30s", server.url))
            .await
            .1;
        let want = if i % 10 == 0 {
            "compensated"
        } else {
            "completed"
        };
        assert_eq!(v["status"], want, "order {i}: {v}");
    }
    common::histories_are_whole(&c, &server.url, &ids).await;
    let reissued = common::reissued_without_timeouts(&c, &server.url, ids.values()).await;
    let repeated = common::effects_happened_once(&c, &demo.url, ORDERS).await;
    eprintln!("after SIGTERM: {reissued} attempts re-issued on the next start, {repeated} keys seen again");
}
