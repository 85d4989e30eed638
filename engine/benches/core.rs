//! Benchmarks of the hot pieces: the pure core (decide + evolve over a whole
//! order saga), template rendering, and SQLite appends with group commit.
//! `cargo bench -p sagaflow-engine`; figures in docs/performance.md.

use std::sync::Arc;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use sagaflow_engine::compile::{check, Action as StepAction};
use sagaflow_engine::dsl::template::Context;
use sagaflow_engine::saga::{decide, evolve, Input, Phase, SagaState, Timestamp};
use sagaflow_engine::store::sqlite::SqliteStore;
use sagaflow_engine::store::{EventStore, Expected, NewEvent};
use serde_json::json;

const ORDER: &str = include_str!("../../workflows/order.yaml");

fn order_input() -> serde_json::Value {
    json!({"order_id": "o-1", "customer_id": "c-1", "items": [{"sku": "widget", "qty": 2}], "amount": 120.5})
}

/// A whole order saga through the core: start, three successes, completion.
fn core(c: &mut Criterion) {
    let m = check(ORDER).machine.expect("order.yaml compiles");
    let now = Timestamp(1_800_000_000_000);
    let mut g = c.benchmark_group("core");
    g.throughput(Throughput::Elements(1));
    g.bench_function("order_saga_decide_evolve", |b| {
        b.iter(|| {
            let mut st = SagaState::default();
            let mut input = Input::Start {
                input: order_input(),
                idempotency_key: None,
            };
            for step in 0..=3 {
                let d = decide(&m, "0190d7a4-0000-7000-8000-000000000001", &st, input, now)
                    .expect("accepted");
                for e in &d.events {
                    st = evolve(st, e);
                }
                input = Input::Succeeded {
                    step,
                    index: None,
                    attempt: 1,
                    phase: Phase::Forward,
                    output: json!({"id": step}),
                };
            }
            assert!(st.is_terminal());
            st
        })
    });
    g.finish();
}

/// Rendering the payment step's URL and body against a saga context.
fn templates(c: &mut Criterion) {
    let m = check(ORDER).machine.expect("order.yaml compiles");
    let StepAction::Http(pay) = &m.steps[1].action else {
        panic!("pay is an http step")
    };
    let ctx = json!({"input": order_input(), "steps": {"reserve": {"output": {"reservation_id": "res-1"}}}, "env": m.env, "instance": {"id": "x"}});
    let mut g = c.benchmark_group("templates");
    g.bench_function("context_convert", |b| b.iter(|| Context::new(&ctx)));
    let converted = Context::new(&ctx);
    g.bench_function("render_pay_url_and_body", |b| {
        b.iter(|| {
            let url = pay.url.render(&converted).expect("url");
            let body = pay
                .body
                .as_ref()
                .expect("body")
                .render(&converted)
                .expect("body");
            (url, body)
        })
    });
    g.finish();
}

/// 64 instances appending 3 events each at once: how long the group commit takes.
fn appends(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio");
    let dir = std::env::temp_dir().join(format!("sagaflow-bench-append-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("dir");
    let store = Arc::new(
        rt.block_on(SqliteStore::open(&dir.join("events.db")))
            .expect("store"),
    );
    let mut round = 0u64;
    let mut g = c.benchmark_group("sqlite");
    g.throughput(Throughput::Elements(64));
    g.sample_size(30);
    g.bench_function("append_64_concurrent_x3_events", |b| {
        b.iter_batched(
            || {
                round += 1;
                round
            },
            |r| {
                rt.block_on(async {
                    let tasks: Vec<_> = (0..64)
                        .map(|i| {
                            let s = store.clone();
                            tokio::spawn(async move {
                                let ev = |n: u64| NewEvent {
                                    event_type: "StepSucceeded".into(),
                                    schema_version: 1,
                                    data: json!({"step": n, "output": {"id": "res-1"}}).into(),
                                };
                                s.append(
                                    &format!("saga-{r}-{i}"),
                                    Expected::NoStream,
                                    vec![ev(0), ev(1), ev(2)],
                                )
                                .await
                                .expect("append")
                            })
                        })
                        .collect();
                    for t in tasks {
                        t.await.expect("task");
                    }
                })
            },
            BatchSize::SmallInput,
        )
    });
    g.finish();
    let (commits, appends) = store.stats();
    eprintln!(
        "group commit: {appends} appends in {commits} commits ({:.1} per commit)",
        appends as f64 / commits.max(1) as f64
    );
}

criterion_group!(benches, core, templates, appends);
criterion_main!(benches);
