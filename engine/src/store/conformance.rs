//! The behaviour every [`EventStore`] adapter must show. Each adapter's tests
//! call [`run`] with a factory of fresh stores, and durable adapters also
//! [`survives_restart`].

use std::collections::HashSet;
use std::future::Future;
use std::sync::Arc;

use serde_json::json;

use super::{EventStore, Expected, NewEvent};

fn ev(n: u64) -> NewEvent {
    NewEvent {
        event_type: "Tested".into(),
        schema_version: 1,
        data: json!({ "n": n }).into(),
    }
}

/// Runs every check, each on a fresh store from `make`.
pub async fn run<S, F, Fut>(make: F)
where
    S: EventStore,
    F: Fn() -> Fut,
    Fut: Future<Output = S>,
{
    appends_and_reads_in_order(&make().await).await;
    honours_every_expectation(&make().await).await;
    a_conflict_writes_nothing(&make().await).await;
    reads_all_streams_from_a_position(&make().await).await;
    announces_the_head(&make().await).await;
    concurrent_writers_of_one_stream_lose_nothing(Arc::new(make().await)).await;
    concurrent_writers_of_many_streams_all_land(Arc::new(make().await)).await;
    a_trimmed_stream_keeps_its_revisions(&make().await).await;
    removed_streams_stay_removed(&make().await).await;
}

/// A removed stream's events are gone from its reads (from `$all`, or
/// followed there by the store's removal marker), its tombstone refuses
/// appends until it is forgotten, and other streams are untouched.
async fn removed_streams_stay_removed(s: &impl EventStore) {
    use super::{StoreError, STREAM_REMOVED};
    use crate::saga::Timestamp;
    s.append("saga-gone", Expected::NoStream, (0..3).map(ev).collect())
        .await
        .unwrap();
    s.append("saga-kept", Expected::NoStream, (0..2).map(ev).collect())
        .await
        .unwrap();
    let gone = ["saga-gone".to_string(), "saga-never".to_string()];
    s.remove(&gone, Timestamp(1_000)).await.unwrap();
    s.remove(&gone[..1], Timestamp(1_500)).await.expect("again");
    assert!(s.read_stream("saga-gone", 0).await.unwrap().is_empty());
    assert_eq!(s.read_stream("saga-kept", 0).await.unwrap().len(), 2);
    let all = s.read_all(None, 100).await.unwrap();
    let of_gone: Vec<&str> = all
        .iter()
        .filter(|e| e.stream == "saga-gone")
        .map(|e| e.event_type.as_str())
        .collect();
    assert!(
        of_gone.is_empty() || of_gone.last() == Some(&STREAM_REMOVED),
        "{of_gone:?}"
    );
    assert_eq!(all.iter().filter(|e| e.stream == "saga-kept").count(), 2);
    for expected in [Expected::NoStream, Expected::Any, Expected::Revision(2)] {
        let err = s
            .append("saga-gone", expected, vec![ev(9)])
            .await
            .unwrap_err();
        assert!(matches!(err, StoreError::Removed { .. }), "{err}");
    }
    let t = s.tombstone("saga-gone").await.unwrap().expect("tombstone");
    assert!(
        t.removed_at.is_none_or(|at| at == Timestamp(1_000)),
        "{t:?}"
    );
    assert!(s.tombstone("saga-kept").await.unwrap().is_none());
    assert_eq!(s.forget_removed(Timestamp(1_000)).await.unwrap(), 0);
    s.reclaim().await.unwrap();
    if s.forget_removed(Timestamp(1_001)).await.unwrap() > 0 {
        assert!(s.tombstone("saga-gone").await.unwrap().is_none());
        let a = s
            .append("saga-gone", Expected::NoStream, vec![ev(0)])
            .await
            .unwrap();
        assert_eq!(a.revision, 0);
    } else {
        // permanent tombstones
        assert!(s.tombstone("saga-gone").await.unwrap().is_some());
    }
    s.append("saga-kept", Expected::Revision(1), vec![ev(2)])
        .await
        .unwrap();

    // the stream with the newest event goes: its positions are not given out again
    let newest = s
        .append("saga-newest", Expected::NoStream, vec![ev(0)])
        .await
        .unwrap();
    s.remove(&["saga-newest".to_string()], Timestamp(2_000))
        .await
        .unwrap();
    let after = s
        .append("saga-kept", Expected::Revision(2), vec![ev(3)])
        .await
        .unwrap();
    assert!(
        after.position > newest.position,
        "{after:?} after {newest:?}"
    );
}

/// Trimming may drop old events (or keep them), never renumber the rest or
/// lose the stream's place: appends still expect the last revision.
async fn a_trimmed_stream_keeps_its_revisions(s: &impl EventStore) {
    s.append("lease", Expected::NoStream, (0..5).map(ev).collect())
        .await
        .unwrap();
    s.trim("lease", 3).await.unwrap();
    let tail = s.read_stream("lease", 3).await.unwrap();
    assert_eq!(
        tail.iter().map(|e| e.revision).collect::<Vec<_>>(),
        vec![3, 4]
    );
    let all = s.read_stream("lease", 0).await.unwrap();
    assert!(all.iter().all(|e| e.data["n"] == e.revision), "{all:?}");
    assert_eq!(all.last().unwrap().revision, 4);
    assert!(s
        .append("lease", Expected::Revision(3), vec![ev(5)])
        .await
        .unwrap_err()
        .is_conflict());
    let a = s
        .append("lease", Expected::Revision(4), vec![ev(5)])
        .await
        .unwrap();
    assert_eq!(a.revision, 5);
}

async fn appends_and_reads_in_order(s: &impl EventStore) {
    let a = s
        .append("saga-a", Expected::NoStream, vec![ev(0), ev(1)])
        .await
        .expect("append");
    assert_eq!(a.revision, 1);
    let b = s
        .append("saga-a", Expected::Revision(1), vec![ev(2)])
        .await
        .expect("append");
    assert_eq!(b.revision, 2);
    assert!(b.position > a.position);
    let all = s.read_stream("saga-a", 0).await.expect("read");
    let ns: Vec<u64> = all.iter().map(|e| e.data["n"].as_u64().unwrap()).collect();
    assert_eq!(ns, [0, 1, 2]);
    assert_eq!(
        all.iter().map(|e| e.revision).collect::<Vec<_>>(),
        [0, 1, 2]
    );
    assert!(all
        .iter()
        .all(|e| e.stream == "saga-a" && e.event_type == "Tested" && e.schema_version == 1));
    assert_eq!(s.read_stream("saga-a", 2).await.unwrap().len(), 1);
    assert!(s.read_stream("saga-missing", 0).await.unwrap().is_empty());
    assert!(
        s.append("saga-a", Expected::Any, vec![]).await.is_err(),
        "an empty append is refused"
    );
}

async fn honours_every_expectation(s: &impl EventStore) {
    assert!(s
        .append("saga-b", Expected::StreamExists, vec![ev(0)])
        .await
        .unwrap_err()
        .is_conflict());
    assert!(s
        .append("saga-b", Expected::Revision(0), vec![ev(0)])
        .await
        .unwrap_err()
        .is_conflict());
    s.append("saga-b", Expected::NoStream, vec![ev(0)])
        .await
        .unwrap();
    assert!(s
        .append("saga-b", Expected::NoStream, vec![ev(1)])
        .await
        .unwrap_err()
        .is_conflict());
    s.append("saga-b", Expected::StreamExists, vec![ev(1)])
        .await
        .unwrap();
    s.append("saga-b", Expected::Any, vec![ev(2)])
        .await
        .unwrap();
    assert!(s
        .append("saga-b", Expected::Revision(1), vec![ev(3)])
        .await
        .unwrap_err()
        .is_conflict());
    s.append("saga-b", Expected::Revision(2), vec![ev(3)])
        .await
        .unwrap();
    s.append("saga-c", Expected::Any, vec![ev(0)])
        .await
        .unwrap();
    assert_eq!(s.read_stream("saga-b", 0).await.unwrap().len(), 4);
}

async fn a_conflict_writes_nothing(s: &impl EventStore) {
    s.append("saga-d", Expected::NoStream, vec![ev(0)])
        .await
        .unwrap();
    let err = s
        .append("saga-d", Expected::Revision(5), vec![ev(1), ev(2)])
        .await
        .unwrap_err();
    match err {
        super::StoreError::Conflict { actual, .. } => assert_eq!(actual, Some(0)),
        other => panic!("expected a conflict, got {other}"),
    }
    assert_eq!(s.read_stream("saga-d", 0).await.unwrap().len(), 1);
    assert_eq!(s.read_all(None, 100).await.unwrap().len(), 1);
}

async fn reads_all_streams_from_a_position(s: &impl EventStore) {
    for i in 0..5 {
        s.append(
            &format!("saga-{i}"),
            Expected::NoStream,
            vec![ev(i * 10), ev(i * 10 + 1)],
        )
        .await
        .unwrap();
    }
    let all = s.read_all(None, 100).await.unwrap();
    assert_eq!(all.len(), 10);
    assert!(
        all.windows(2).all(|w| w[0].position < w[1].position),
        "positions increase"
    );
    let ns: Vec<u64> = all.iter().map(|e| e.data["n"].as_u64().unwrap()).collect();
    assert_eq!(ns, [0, 1, 10, 11, 20, 21, 30, 31, 40, 41]);
    let page = s.read_all(Some(all[3].position), 4).await.unwrap();
    assert_eq!(
        page.iter().map(|e| e.position).collect::<Vec<_>>(),
        all[4..8].iter().map(|e| e.position).collect::<Vec<_>>()
    );
    assert!(s
        .read_all(Some(all[9].position), 10)
        .await
        .unwrap()
        .is_empty());
    // the same page without the data
    let refs = s.read_all_refs(Some(all[3].position), 4).await.unwrap();
    let want: Vec<super::EventRef> = page.into_iter().map(Into::into).collect();
    assert_eq!(refs, want);
}

async fn announces_the_head(s: &impl EventStore) {
    let mut head = s.head();
    let a = s
        .append("saga-h", Expected::NoStream, vec![ev(0), ev(1)])
        .await
        .unwrap();
    tokio::time::timeout(
        std::time::Duration::from_secs(5),
        head.wait_for(|h| *h >= Some(a.position)),
    )
    .await
    .expect("head announced within 5 s")
    .expect("store alive");
}

/// Eight writers append 25 events each to one stream, reloading on conflict:
/// every event lands exactly once, with contiguous revisions.
async fn concurrent_writers_of_one_stream_lose_nothing<S: EventStore>(s: Arc<S>) {
    let mut tasks = Vec::new();
    for w in 0..8u64 {
        let s = s.clone();
        tasks.push(tokio::spawn(async move {
            let mut conflicts = 0;
            for i in 0..25u64 {
                loop {
                    let known = s.read_stream("saga-shared", 0).await.unwrap().len() as u64;
                    match s
                        .append(
                            "saga-shared",
                            Expected::after(known),
                            vec![ev(w * 1000 + i)],
                        )
                        .await
                    {
                        Ok(_) => break,
                        Err(e) if e.is_conflict() => conflicts += 1,
                        Err(e) => panic!("unexpected {e}"),
                    }
                }
            }
            conflicts
        }));
    }
    for t in tasks {
        t.await.expect("writer");
    }
    let events = s.read_stream("saga-shared", 0).await.unwrap();
    assert_eq!(events.len(), 200);
    assert!(events
        .iter()
        .enumerate()
        .all(|(i, e)| e.revision == i as u64));
    let distinct: HashSet<u64> = events
        .iter()
        .map(|e| e.data["n"].as_u64().unwrap())
        .collect();
    assert_eq!(distinct.len(), 200, "no event lost or doubled");
}

async fn concurrent_writers_of_many_streams_all_land<S: EventStore>(s: Arc<S>) {
    let mut tasks = Vec::new();
    for w in 0..16u64 {
        let s = s.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..10u64 {
                s.append(&format!("saga-w{w}"), Expected::after(i), vec![ev(i)])
                    .await
                    .expect("own stream");
            }
        }));
    }
    for t in tasks {
        t.await.expect("writer");
    }
    let all = s.read_all(None, 1000).await.unwrap();
    assert_eq!(all.len(), 160);
    let positions: HashSet<u64> = all.iter().map(|e| e.position).collect();
    assert_eq!(positions.len(), 160, "positions are unique");
}

/// A durable adapter keeps what it acknowledged across a reopen.
pub async fn survives_restart<S, F, Fut>(open: F)
where
    S: EventStore,
    F: Fn() -> Fut,
    Fut: Future<Output = S>,
{
    let first = open().await;
    let a = first
        .append("saga-r", Expected::NoStream, vec![ev(0), ev(1)])
        .await
        .unwrap();
    drop(first);
    let second = open().await;
    let events = second.read_stream("saga-r", 0).await.unwrap();
    assert_eq!(events.len(), 2);
    assert_eq!(
        second
            .read_all(None, 10)
            .await
            .unwrap()
            .last()
            .map(|e| e.position),
        Some(a.position)
    );
    let b = second
        .append("saga-r", Expected::Revision(1), vec![ev(2)])
        .await
        .unwrap();
    assert!(
        b.position > a.position,
        "positions keep increasing after a restart"
    );
    assert!(second
        .append("saga-r", Expected::Revision(1), vec![ev(3)])
        .await
        .unwrap_err()
        .is_conflict());

    // the stream with the newest event goes, and the store restarts: its
    // positions are still not given out again
    let newest = second
        .append("saga-newest", Expected::NoStream, vec![ev(0), ev(1)])
        .await
        .unwrap();
    second
        .remove(&["saga-newest".to_string()], crate::saga::Timestamp(1))
        .await
        .unwrap();
    drop(second);
    let third = open().await;
    let c = third
        .append("saga-r", Expected::Revision(2), vec![ev(3)])
        .await
        .unwrap();
    assert!(
        c.position > newest.position,
        "{c:?} after the removed {newest:?}"
    );
}
