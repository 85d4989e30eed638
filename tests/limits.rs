//! Limits on what callers can make the server hold: half-sent requests and
//! queue names (their memory stays flat). The per-token poll cap is tested
//! beside its code (api/src/tasks.rs).

mod common;

use std::io::{Read, Write};
use std::time::Duration;

use common::{client_with, serve, WORKER_TOKEN};
use reqwest::StatusCode;

#[test]
fn connections_that_never_finish_their_headers_are_closed() {
    let (server, _dir) = serve("half-requests", &["--header-timeout", "1s"]);
    let addr = server.url.trim_start_matches("http://").to_string();
    let mut half: Vec<std::net::TcpStream> = (0..50)
        .map(|_| {
            let mut s = std::net::TcpStream::connect(&addr).expect("connect");
            s.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n")
                .expect("half a request");
            s
        })
        .collect();
    std::thread::sleep(Duration::from_millis(2500));
    for s in &mut half {
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut buf = [0u8; 64];
        match s.read(&mut buf) {
            Ok(0) | Err(_) => {}
            Ok(n) => panic!(
                "a half request got an answer: {}",
                String::from_utf8_lossy(&buf[..n])
            ),
        }
    }
    // a whole request on a new connection is served as usual, and a slow but
    // complete one keeps its connection after the deadline
    let mut s = std::net::TcpStream::connect(&addr).unwrap();
    s.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    s.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut answer = String::new();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let _ = s.read_to_string(&mut answer);
    assert_eq!(answer.matches("HTTP/1.1 200").count(), 2, "{answer}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_stays_flat_over_polls_on_20000_distinct_queue_names() {
    let (server, _dir) = serve("queue-names", &[]);
    let worker = client_with(Some(WORKER_TOKEN));
    let name = "q".repeat(4000);
    let poll_all = |from: usize, to: usize| {
        let (worker, url, name) = (worker.clone(), server.url.clone(), name.clone());
        async move {
            let mut polls = tokio::task::JoinSet::new();
            for i in from..to {
                if polls.len() >= 32 {
                    let r: reqwest::StatusCode = polls.join_next().await.unwrap().unwrap();
                    assert_eq!(r, StatusCode::NO_CONTENT);
                }
                let (w, url) = (worker.clone(), url.clone());
                let queue = format!("{name}-{i}");
                polls.spawn(async move {
                    w.post(format!("{url}/tasks/{queue}/poll?wait=1ms"))
                        .send()
                        .await
                        .unwrap()
                        .status()
                });
            }
            while let Some(r) = polls.join_next().await {
                assert_eq!(r.unwrap(), StatusCode::NO_CONTENT);
            }
        }
    };
    poll_all(0, 2_000).await;
    let warm = server.rss_kib();
    poll_all(2_000, 20_000).await;
    let after = server.rss_kib();
    // 18,000 more names of 4 KB each would be 70 MB if they were kept
    assert!(
        after < warm + 16 * 1024,
        "RSS grew from {warm} KiB to {after} KiB over 18,000 queue names"
    );
}

#[test]
fn memory_stays_flat_over_a_20000_saga_bench_with_the_demo_on() {
    let (server, dir) = serve("bench-rss", &["--demo-ledger-size", "2000"]);
    let pid = server.pid().to_string();
    let bench = |n: &str| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_sagaflow"))
            .args([
                "bench",
                "--url",
                &server.url,
                "--token",
                common::ADMIN_TOKEN,
                "--server-pid",
                &pid,
                "-n",
                n,
                "--serial",
                "0",
            ])
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .output()
            .expect("bench runs");
        let line = String::from_utf8_lossy(&out.stdout).to_string();
        assert!(
            out.status.success(),
            "{line}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let report: serde_json::Value =
            serde_json::from_str(line.lines().last().unwrap_or_default()).expect("a JSON line");
        assert_eq!(report["other"], 0, "{report}");
        // the server's CPU time per saga, read from /proc for --server-pid
        let cpu = report["server_cpu_us_per_saga"]
            .as_f64()
            .expect("CPU per saga");
        assert!(cpu > 0.0 && cpu < 1_000_000.0, "{report}");
        assert!(report["rss_mib"].as_f64().is_some(), "{report}");
    };
    bench("4000");
    let warm = server.rss_kib();
    bench("20000");
    let after = server.rss_kib();
    // the old unbounded ledger alone grew about 4 KiB per saga: 80 MB here
    assert!(
        after < warm + 24 * 1024,
        "RSS grew from {warm} KiB to {after} KiB over 20,000 sagas"
    );
    drop(dir);
}

#[test]
fn bench_outside_the_repository_says_what_is_missing() {
    let dir = common::temp_dir("bench-elsewhere");
    let bench = std::process::Command::new(env!("CARGO_BIN_EXE_sagaflow"))
        .args(["bench", "-n", "1"])
        .current_dir(&dir)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("bench runs");
    let pid = bench.id();
    let out = bench.wait_with_output().expect("bench ends");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("workflows/order.yaml is missing"), "{err}");
    // the data directory it made for its server is gone with it
    let own = std::env::temp_dir().join(format!("sagaflow-bench-{pid}"));
    assert!(!own.exists(), "{} was left behind", own.display());
}

/// A bench whose server dies half-way fails at once, says so, and leaves
/// neither its processes nor its server's data directory behind.
#[test]
fn bench_that_fails_half_way_leaves_nothing_behind() {
    // it stops at the first refused connection, not after a request for each saga left
    bench_whose_server_is_signalled("-KILL", "stopped taking connections after");
}

/// A bench whose server stops answering (stopped, so the kernel still takes
/// its connections) gives up once no saga has ended for `--stall-timeout`,
/// instead of waiting out each request's two minutes, and leaves nothing behind.
#[test]
fn bench_whose_server_stops_answering_gives_up_after_the_stall_timeout() {
    bench_whose_server_is_signalled("-STOP", "stopped answering: no saga ended for 3s");
}

/// Runs a bench with its own server, sends `signal` to that server once it
/// has made sagas, and checks that the bench fails within 150 s with `says`
/// in its error, its data directory gone.
fn bench_whose_server_is_signalled(signal: &str, says: &str) {
    let tmp = common::temp_dir("bench-fails");
    let mut bench = std::process::Command::new(env!("CARGO_BIN_EXE_sagaflow"))
        .args(["bench", "--fill", "100000", "-c", "4", "--serial", "1"])
        .args(["--warmup", "1", "-n", "10", "--listings", "1"])
        .args(["--stall-timeout", "3s"])
        .env("TMPDIR", &tmp)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("bench runs");
    let own = tmp.join(format!("sagaflow-bench-{}", bench.id()));
    // its server: the process serving from that directory, once it has made sagas
    let server = (0..600)
        .find_map(|_| {
            std::thread::sleep(Duration::from_millis(100));
            let started = std::fs::read_dir(own.join("data")).is_ok();
            std::fs::read_dir("/proc")
                .ok()?
                .flatten()
                .filter(|_| started)
                .find(|p| {
                    std::fs::read(p.path().join("cmdline")).is_ok_and(|c| {
                        let c = String::from_utf8_lossy(&c);
                        c.contains("serve") && c.contains(&*own.to_string_lossy())
                    })
                })
                .map(|p| p.file_name().to_string_lossy().into_owned())
        })
        .expect("bench started its server");
    std::thread::sleep(Duration::from_secs(1));
    let signalled = std::process::Command::new("kill")
        .args([signal, &server])
        .status()
        .expect("kill runs");
    assert!(signalled.success());
    let status = (0..1500)
        .find_map(|_| {
            std::thread::sleep(Duration::from_millis(100));
            bench.try_wait().expect("bench is there")
        })
        .unwrap_or_else(|| {
            let _ = bench.kill();
            let _ = std::process::Command::new("kill")
                .args(["-KILL", &server])
                .status();
            panic!("bench did not end within 150 s of its server's {signal}")
        });
    let mut err = String::new();
    std::io::Read::read_to_string(&mut bench.stderr.take().unwrap(), &mut err).ok();
    assert!(
        !status.success(),
        "bench succeeded without its server: {err}"
    );
    assert!(
        err.contains(says),
        "bench did not say why it stopped: {err}"
    );
    assert!(!own.exists(), "{} was left behind: {err}", own.display());
    let _ = std::fs::remove_dir_all(&tmp);
}

/// `sagaflow bench` with its own server, from the repository's folder: its
/// JSON line.
fn bench_own(args: &[&str]) -> serde_json::Value {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_sagaflow"))
        .arg("bench")
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("bench runs");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_str(text.lines().last().unwrap_or_default()).expect("a JSON line")
}

#[test]
fn bench_with_its_own_server_reports_cpu_listings_bytes_and_restart() {
    let report = bench_own(&[
        "-n",
        "100",
        "-c",
        "8",
        "--serial",
        "2",
        "--warmup",
        "2",
        "--fill",
        "40",
        "--listings",
        "2",
    ]);
    assert_eq!(report["other"], 0, "{report}");
    assert_eq!(report["stored_sagas"], 144, "{report}");
    for field in [
        "server_cpu_us_per_saga",
        "bytes_per_saga",
        "restart_s",
        "rss_mib",
        // the demo services ran in a process of their own, measured apart
        "demo_cpu_us_per_saga",
        "demo_rss_mib",
    ] {
        assert!(
            report[field].as_f64().is_some_and(|v| v > 0.0),
            "{field}: {report}"
        );
    }
    assert!(
        report["read_model_lag_events"].as_u64().is_some(),
        "{report}"
    );
    // CPU counted on until the read models hold the phase: never less
    let (phase, caught_up) = (
        report["server_cpu_us_per_saga"].as_f64(),
        report["server_cpu_us_per_saga_caught_up"].as_f64(),
    );
    assert!(
        caught_up.zip(phase).is_some_and(|(c, p)| c >= p),
        "{report}"
    );
    assert!(
        report["read_model_catch_up_s"]
            .as_f64()
            .is_some_and(|s| s >= 0.0),
        "{report}"
    );
    let listings = report["listing_ms"].as_object().expect("listings");
    assert_eq!(listings.len(), 6, "{report}");
    assert!(listings.contains_key("input_field"), "{report}");
}

#[test]
fn bench_can_serve_the_demo_from_its_server_and_then_reports_no_demo_figures() {
    let report = bench_own(&[
        "-n",
        "20",
        "-c",
        "4",
        "--serial",
        "1",
        "--warmup",
        "1",
        "--listings",
        "1",
        "--demo-in-server",
    ]);
    assert_eq!(
        (report["completed"].as_u64(), report["compensated"].as_u64()),
        (Some(18), Some(2)),
        "{report}"
    );
    assert!(
        report["server_cpu_us_per_saga"].as_f64().is_some(),
        "{report}"
    );
    assert!(report["demo_cpu_us_per_saga"].is_null(), "{report}");
    assert!(report["demo_rss_mib"].is_null(), "{report}");
}
