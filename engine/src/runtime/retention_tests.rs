//! Retention on a manual clock: which instances a sweep removes, what a
//! removed one answers, and the tombstone window of its Idempotency-Key.

use std::sync::Arc;
use std::time::Duration;

use serde_json::json;

use super::*;
use crate::saga::ManualClock;
use crate::store::memory::MemoryStore;

const T0: Timestamp = Timestamp(1_800_000_000_000);
const MIN: Duration = Duration::from_secs(60);

const HOLD: &str = "\
name: hold
input: { type: object }
steps:
  - name: hold
    wait: { signal: go }
    timeout: 1d
";

/// A runtime keeping ended instances an hour and their tombstones two.
async fn runtime(clock: Arc<ManualClock>, name: &str) -> (Runtime, Arc<Projections>) {
    let dir = std::env::temp_dir().join(format!("sagaflow-ret-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let projections = Arc::new(Projections::open(&dir.join("readmodels.db")).await.unwrap());
    let config = RuntimeConfig {
        retention: RetentionConfig {
            max_age: Some(60 * MIN),
            tombstone_window: 120 * MIN,
            ..RetentionConfig::default()
        },
        ..RuntimeConfig::default()
    };
    let store: Arc<dyn EventStore> = Arc::new(MemoryStore::new());
    let rt = Runtime::new(store, Some(projections.clone()), clock, config)
        .await
        .unwrap();
    rt.publish(HOLD).await.unwrap();
    (rt, projections)
}

/// Starts an instance with `key` and cancels it: it ends at the clock's now.
async fn ended(rt: &Runtime, key: &str) -> Uuid {
    let id = rt
        .start("hold", None, json!({}), Some(key.into()))
        .await
        .unwrap()
        .id;
    rt.cancel(id, None).await.unwrap();
    id
}

#[tokio::test]
async fn a_sweep_removes_what_ended_before_the_age_and_the_tombstone_refuses_the_key_for_its_window(
) {
    let clock = Arc::new(ManualClock::new(T0));
    let (rt, projections) = runtime(clock.clone(), "window").await;
    let a = ended(&rt, "k-a").await;
    clock.advance(50 * MIN);
    let b = ended(&rt, "k-b").await;
    projections.catch_up(rt.store().as_ref()).await.unwrap();

    // at 70 min only `a` ended more than an hour ago
    clock.advance(20 * MIN);
    let swept = rt.sweep().await.unwrap();
    assert_eq!(swept.removed, 1);
    let removed_at = Some(T0.plus(70 * MIN));
    assert!(
        matches!(rt.get(a).await, Err(RuntimeError::Removed { id, removed_at: at }) if id == a && at == removed_at)
    );
    assert!(matches!(
        rt.history(a, 0).await,
        Err(RuntimeError::Removed { .. })
    ));
    assert_eq!(rt.get(b).await.unwrap().status, "cancelled");
    let listed = projections
        .search(&crate::projection::InstanceFilter {
            limit: 10,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(listed.items.iter().map(|r| r.id).collect::<Vec<_>>(), [b]);
    // a late retry of a's start
    let again = rt.start("hold", None, json!({}), Some("k-a".into())).await;
    assert!(
        matches!(again, Err(RuntimeError::StartOfRemoved { id, .. }) if id == a),
        "{again:?}"
    );
    assert_eq!(
        rt.sweep().await.unwrap(),
        Swept::default(),
        "nothing more yet"
    );

    // past a's tombstone window: b goes, then a's tombstone
    clock.advance(120 * MIN + Duration::from_millis(1));
    assert_eq!(rt.sweep().await.unwrap().removed, 1);
    assert_eq!(rt.sweep().await.unwrap().tombstones_forgotten, 1);
    let fresh = rt
        .start("hold", None, json!({}), Some("k-a".into()))
        .await
        .unwrap();
    assert!(
        fresh.created && fresh.id == a,
        "the key starts an instance again"
    );
    assert!(matches!(
        rt.start("hold", None, json!({}), Some("k-b".into())).await,
        Err(RuntimeError::StartOfRemoved { .. })
    ));
}

#[tokio::test]
async fn without_an_age_nothing_is_removed() {
    let clock = Arc::new(ManualClock::new(T0));
    let (rt, projections) = runtime(clock.clone(), "off").await;
    let rt = Runtime::new(
        rt.store().clone(),
        Some(projections.clone()),
        clock.clone(),
        RuntimeConfig::default(),
    )
    .await
    .unwrap();
    let a = ended(&rt, "k").await;
    projections.catch_up(rt.store().as_ref()).await.unwrap();
    clock.advance(1000 * 24 * 60 * MIN);
    assert_eq!(rt.sweep().await.unwrap(), Swept::default());
    assert_eq!(rt.get(a).await.unwrap().status, "cancelled");
}
