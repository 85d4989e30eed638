//! Retention on a manual clock: which instances a sweep removes, what a
//! removed one answers, and the tombstone window of its Idempotency-Key.

use std::sync::Arc;
use std::time::Duration;

use serde_json::json;

use super::*;
use crate::saga::ManualClock;
use crate::store::memory::{MemoryStore, Watched};

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
    assert_eq!(swept.behind, 10 * MIN, "a was kept 10 min past the age");
    assert_eq!(swept.lag, swept.behind, "nothing older was left");
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
    let swept = rt.sweep().await.unwrap();
    assert_eq!(swept.removed, 1);
    assert_eq!(swept.behind, 80 * MIN + Duration::from_millis(1));
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

/// A sweep takes what came due within the slack (a tenth of the age here)
/// before the backlog behind it, which the loop paces under load.
#[tokio::test]
async fn a_sweep_removes_what_came_due_lately_before_the_backlog() {
    let clock = Arc::new(ManualClock::new(T0));
    let (rt, projections) = runtime(clock.clone(), "lately").await;
    let old = ended(&rt, "k-old").await;
    clock.advance(100 * MIN);
    let late = ended(&rt, "k-late").await;
    projections.catch_up(rt.store().as_ref()).await.unwrap();

    // at 165 min, with an age of 60 and a slack of 6: `late` came due 5 min
    // ago, `old` 105 min ago
    clock.advance(65 * MIN);
    let first = rt.sweep().await.unwrap();
    assert_eq!((first.removed, first.behind), (1, 5 * MIN), "{first:?}");
    // the backlog it left shows in how far behind retention is
    assert_eq!(first.lag, 105 * MIN, "{first:?}");
    assert!(matches!(
        rt.get(late).await,
        Err(RuntimeError::Removed { .. })
    ));
    assert_eq!(rt.get(old).await.unwrap().status, "cancelled");
    let second = rt.sweep().await.unwrap();
    assert_eq!(
        (second.removed, second.behind, second.lag),
        (1, 105 * MIN, 105 * MIN),
        "{second:?}"
    );
    assert!(matches!(
        rt.get(old).await,
        Err(RuntimeError::Removed { .. })
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

/// A batch stopped after any of its steps (archive, remove, forget) is
/// finished by the next sweep, in a new process: every instance ends up
/// archived once, removed, and forgotten by the read models.
#[tokio::test]
async fn a_batch_stopped_after_any_step_is_finished_by_the_next_sweep() {
    for stop_after in ["archive", "remove"] {
        let dir = std::env::temp_dir().join(format!(
            "sagaflow-ret-{}-crash-{stop_after}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let clock = Arc::new(ManualClock::new(T0));
        let store = Arc::new(Watched::default());
        store
            .fail_next_remove
            .store(stop_after == "archive", std::sync::atomic::Ordering::SeqCst);
        let projections = Arc::new(Projections::open(&dir.join("readmodels.db")).await.unwrap());
        let config = || RuntimeConfig {
            retention: RetentionConfig {
                max_age: Some(60 * MIN),
                archive_dir: Some(dir.join("archive")),
                ..RetentionConfig::default()
            },
            ..RuntimeConfig::default()
        };
        // one process, then the next, on the same store and read models
        let process = || {
            Runtime::new(
                store.clone(),
                Some(projections.clone()),
                clock.clone(),
                config(),
            )
        };
        let rt = process().await.unwrap();
        rt.publish(HOLD).await.unwrap();
        let ids = [ended(&rt, "k-1").await, ended(&rt, "k-2").await];
        projections.catch_up(rt.store().as_ref()).await.unwrap();
        clock.advance(61 * MIN);
        if stop_after == "remove" {
            projections.fail_next_transactions(1);
        }
        assert!(rt.sweep().await.is_err(), "{stop_after}: the batch stopped");

        // the next process sweeps again
        let rt = process().await.unwrap();
        assert_eq!(rt.sweep().await.unwrap().removed, 2, "{stop_after}");
        assert_eq!(rt.sweep().await.unwrap().removed, 0, "{stop_after}");
        for id in ids {
            assert!(
                matches!(rt.get(id).await, Err(RuntimeError::Removed { .. })),
                "{stop_after}"
            );
        }
        let file = std::fs::read_dir(dir.join("archive"))
            .unwrap()
            .next()
            .unwrap()
            .unwrap()
            .path();
        let archived = crate::archive::read(&file).unwrap();
        let mut got: Vec<Uuid> = archived.iter().map(|a| a.instance_id).collect();
        got.sort();
        let mut want = ids.to_vec();
        want.sort();
        assert_eq!(got, want, "{stop_after}: each archived once");
        assert!(
            archived.iter().all(|a| a.events.len() >= 3),
            "{stop_after}: with every event"
        );
    }
}

/// Two replicas on one store: `a` removes what ended, `b` keeps everything.
/// The oldest instances to end are `b`'s; `a` still removes a batch of its
/// own, and none of `b`'s (taking the oldest of all and keeping its own,
/// it found none of its own there and removed nothing).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_removes_the_oldest_ended_of_its_own_partitions() {
    let clock = Arc::new(ManualClock::new(T0));
    let store: Arc<dyn EventStore> = Arc::new(MemoryStore::new());
    // leases of 2 s on the manual clock, renewed every 400 ms: the clock
    // moves less than that here, so neither replica ever looks dead
    let cluster = || Some(ClusterConfig::new(Duration::from_secs(2), None));
    let dir = std::env::temp_dir().join(format!("sagaflow-ret-{}-replicas", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let projections = Arc::new(Projections::open(&dir.join("readmodels.db")).await.unwrap());
    let removing = RuntimeConfig {
        cluster: cluster(),
        retention: RetentionConfig {
            max_age: Some(Duration::from_millis(100)),
            batch: 4,
            ..RetentionConfig::default()
        },
        ..RuntimeConfig::default()
    };
    let a = Runtime::new(
        store.clone(),
        Some(projections.clone()),
        clock.clone(),
        removing,
    )
    .await
    .unwrap();
    let keeping = RuntimeConfig {
        cluster: cluster(),
        ..RuntimeConfig::default()
    };
    let b = Runtime::new(store.clone(), None, clock.clone(), keeping)
        .await
        .unwrap();
    a.publish(HOLD).await.unwrap();
    b.publish(HOLD).await.unwrap();
    a.run_background().await.unwrap();
    b.run_background().await.unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let held = |rt: &Runtime| rt.partitions_held().unwrap().1.len();
        if held(&a) > 0 && held(&b) > 0 && held(&a) + held(&b) == 64 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the replicas never split the partitions"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let mut ids = Vec::new();
    for k in 0..40 {
        ids.push(
            a.start("hold", None, json!({}), Some(format!("k-{k}")))
                .await
                .unwrap()
                .id,
        );
    }
    let (of_a, of_b): (Vec<Uuid>, Vec<Uuid>) = ids.into_iter().partition(|id| a.drives(*id));
    assert!(
        of_a.len() >= 4 && of_b.len() >= 4,
        "{} and {}",
        of_a.len(),
        of_b.len()
    );
    // b's end first
    for (rt, id) in of_b
        .iter()
        .map(|id| (&b, id))
        .chain(of_a.iter().map(|id| (&a, id)))
    {
        clock.advance(Duration::from_millis(1));
        rt.cancel(*id, None).await.unwrap();
    }
    projections.catch_up(store.as_ref()).await.unwrap();
    clock.advance(Duration::from_millis(200));
    a.sweep().await.unwrap();

    let removed = |id: &Uuid| {
        let store = store.clone();
        let stream = format!("saga-{id}");
        async move { store.tombstone(&stream).await.unwrap().is_some() }
    };
    let mut removed_of_a = 0;
    for id in &of_a {
        removed_of_a += usize::from(removed(id).await);
    }
    assert!(removed_of_a >= 4, "a removed {removed_of_a} of its own");
    for id in &of_b {
        assert!(!removed(id).await, "a removed b's {id}");
    }
    a.shutdown(Duration::ZERO).await;
    b.shutdown(Duration::ZERO).await;
    let _ = std::fs::remove_dir_all(&dir);
}
