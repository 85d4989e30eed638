//! A full disk under the data directory (a size-limited tmpfs): writes are
//! refused with a retryable 503 and nothing half-written, `/ready` says why,
//! and once space is freed the server is ready again and runs orders with no
//! restart. Needs root to mount; elsewhere it says so and checks nothing.

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::{client, get_json, post_json, temp_dir, Proc};
use reqwest::StatusCode;
use serde_json::{json, Value};

/// A tmpfs mounted for the test, unmounted when dropped.
struct Mount(PathBuf);

impl Mount {
    fn new(dir: &Path, size: &str) -> Option<Mount> {
        std::fs::create_dir_all(dir).unwrap();
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .status()
            .is_ok_and(|s| s.success());
        ok.then(|| Mount(dir.to_path_buf()))
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

fn new_order(id: &str) -> Value {
    json!({"order_id": id, "customer_id": "c-1", "items": [{"sku": "widget", "qty": 1}], "amount": 10})
}

/// Fills the file system under `dir` until it refuses another byte.
fn fill(dir: &Path) -> PathBuf {
    let path = dir.join("filler");
    let mut f = std::fs::File::create(&path).unwrap();
    let chunk = vec![0u8; 1 << 20];
    while f.write_all(&chunk).is_ok() {}
    let _ = f.flush();
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_is_refused_cleanly_and_healed_without_a_restart() {
    if !is_root() {
        eprintln!("not run: mounting a small tmpfs needs root");
        return;
    }
    let dir = temp_dir("full-disk");
    let mount = Mount::new(&dir.join("fs"), "24M").expect("mount a tmpfs (root)");
    let data = mount.0.join("data");
    let workflows = concat!(env!("CARGO_MANIFEST_DIR"), "/workflows");
    let server = Proc::start(
        &[
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
            data.to_str().unwrap(),
            "--workflows",
            workflows,
        ],
        &dir.join("server.log"),
    );
    let c = client();
    for id in ["before-1", "before-2"] {
        let (status, v) = post_json(&c, format!("{}/orders", server.url), new_order(id)).await;
        assert_eq!(status, StatusCode::CREATED, "{v}");
    }

    // the first orders finish (and reach the read models) before the disk
    // fills, so what is refused is the new order's write, not theirs
    for id in ["before-1", "before-2"] {
        let until = Instant::now() + Duration::from_secs(20);
        loop {
            let (_, o) = get_json(&c, format!("{}/orders/{id}?consistent=true", server.url)).await;
            if o["status"] == "shipped" {
                break;
            }
            assert!(Instant::now() < until, "{id} never shipped: {o}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let filler = fill(&mount.0);
    let (status, p) = post_json(&c, format!("{}/orders", server.url), new_order("during")).await;
    assert_eq!(
        (status, p["type"].as_str(), p["retryable"].as_bool()),
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Some("/problems/store-unavailable"),
            Some(true)
        ),
        "{p}"
    );
    let (status, ready) = get_json(&c, format!("{}/ready", server.url)).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{ready}");
    assert!(
        ready["detail"].as_str().unwrap().contains("refuses writes"),
        "{ready}"
    );

    std::fs::remove_file(filler).unwrap();
    let until = Instant::now() + Duration::from_secs(20);
    loop {
        let (status, ready) = get_json(&c, format!("{}/ready", server.url)).await;
        if status == StatusCode::OK {
            break;
        }
        assert!(Instant::now() < until, "never ready again: {ready}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (status, v) = post_json(&c, format!("{}/orders", server.url), new_order("after")).await;
    assert_eq!(status, StatusCode::CREATED, "{v}");
    for id in ["before-1", "before-2", "after"] {
        let until = Instant::now() + Duration::from_secs(20);
        loop {
            let (_, o) = get_json(&c, format!("{}/orders/{id}?consistent=true", server.url)).await;
            if o["status"] == "shipped" {
                break;
            }
            assert!(Instant::now() < until, "{id} never shipped: {o}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let (status, _) = get_json(&c, format!("{}/orders/during", server.url)).await;
    assert_eq!(
        status,
        StatusCode::NOT_FOUND,
        "a refused order left nothing behind"
    );
    drop(server);
    drop(mount);
}
