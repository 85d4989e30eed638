//! 100,000 pending timers: what they cost in memory, and how late they fire
//! when they come due at 50,000 a second (the scheduler under load).
//! `cargo bench -p sagaflow-engine --bench timers`; figures in docs/performance.md.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use sagaflow_engine::runtime::timers::Timers;
use sagaflow_engine::saga::Timestamp;
use uuid::Uuid;

const TIMERS: u64 = 100_000;
const SPREAD_MS: u64 = 2_000;

fn now() -> Timestamp {
    Timestamp(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .expect("clock")
            .as_millis() as u64,
    )
}

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio");
    let timers = Timers::default();
    let before = rss_kib();
    let start = now().plus(Duration::from_millis(500));
    let armed = Instant::now();
    for i in 0..TIMERS {
        let due = start.plus(Duration::from_micros(i * SPREAD_MS * 1000 / TIMERS));
        timers.set(
            Uuid::from_u128(u128::from(i) + 1),
            [(format!("timeout:0:f:{i}"), due)],
        );
    }
    let arm_time = armed.elapsed();
    let per_timer = (rss_kib().saturating_sub(before)) as f64 * 1024.0 / TIMERS as f64;
    println!(
        "armed {TIMERS} timers in {arm_time:?}; memory ~{per_timer:.0} bytes per pending timer"
    );

    let mut lags: Vec<u64> = Vec::with_capacity(TIMERS as usize);
    rt.block_on(async {
        let mut fired = 0;
        while fired < TIMERS {
            let t = now();
            for (id, _) in timers.due(t) {
                let due = start.plus(Duration::from_micros(
                    (id.as_u128() as u64 - 1) * SPREAD_MS * 1000 / TIMERS,
                ));
                lags.push(t.millis().saturating_sub(due.millis()));
                fired += 1;
            }
            let sleep = timers.next_due().map_or(Duration::from_millis(1), |d| {
                t.until(d).max(Duration::from_millis(1))
            });
            tokio::select! {
                () = tokio::time::sleep(sleep) => {}
                () = timers.changed.notified() => {}
            }
        }
    });
    lags.sort_unstable();
    let pct = |p: f64| lags[((p / 100.0) * lags.len() as f64).ceil() as usize - 1];
    println!(
        "fired {} timers due over {SPREAD_MS} ms: lag p50 {} ms, p99 {} ms, max {} ms",
        lags.len(),
        pct(50.0),
        pct(99.0),
        lags[lags.len() - 1]
    );
}
