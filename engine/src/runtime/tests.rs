use std::sync::Arc;
use std::time::Duration;

use serde_json::json;

use super::*;
use crate::saga::SystemClock;
use crate::store::memory::MemoryStore;
use crate::store::sqlite::SqliteStore;

const TRIP: &str = "\
name: trip
input: { type: object, required: [trip_id], properties: { trip_id: { type: string } } }
steps:
  - name: flight
    task: { queue: flights, input: { trip: '${ .input.trip_id }' } }
    timeout: 30s
    compensate:
      task: { queue: flights, input: { cancel: '${ .steps.flight.output.ref }' } }
  - name: approve
    wait: { signal: go }
    timeout: 1h
  - name: hotel
    task: { queue: hotels }
    timeout: 30s
    compensate: none
";

async fn runtime(store: Arc<dyn EventStore>, projections: Option<Arc<Projections>>) -> Runtime {
    let rt = Runtime::new(
        store,
        projections,
        Arc::new(SystemClock),
        RuntimeConfig::default(),
    )
    .await
    .unwrap();
    rt.run_background().await.unwrap();
    rt
}

async fn take(rt: &Runtime, queue: &str) -> Task {
    rt.poll_task(queue, Duration::from_secs(5))
        .await
        .expect("a poll")
        .unwrap_or_else(|| panic!("a task on {queue}"))
}

#[tokio::test]
async fn a_saga_runs_through_workers_and_signals() {
    let rt = runtime(Arc::new(MemoryStore::new()), None).await;
    rt.publish(TRIP).await.unwrap();
    let started = rt
        .start("trip", None, json!({"trip_id": "t-1"}), None)
        .await
        .unwrap();
    let task = take(&rt, "flights").await;
    assert_eq!(task.input, json!({"trip": "t-1"}));
    assert_eq!(task.id, format!("{}:flight:1", started.id));
    assert_eq!(task.idempotency_key, format!("{}:flight", started.id));
    rt.complete_task(&task.id, json!({"ref": "F-7"}))
        .await
        .unwrap();
    assert!(
        matches!(
            rt.complete_task(&task.id, json!({})).await,
            Err(RuntimeError::TaskGone(_))
        ),
        "an answered task is gone"
    );
    assert_eq!(rt.get(started.id).await.unwrap().status, "waiting");
    rt.signal(started.id, "go".into(), json!({"by": "kim"}))
        .await
        .unwrap();
    let hotel = take(&rt, "hotels").await;
    rt.complete_task(&hotel.id, json!({})).await.unwrap();
    let v = rt.wait(started.id, Duration::from_secs(5)).await.unwrap();
    assert_eq!(v.status, "completed");
    let types: Vec<String> = rt
        .history(started.id, 0)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.event_type)
        .collect();
    assert_eq!(types.first().map(String::as_str), Some("SagaStarted"));
    assert_eq!(types.last().map(String::as_str), Some("SagaCompleted"));
    assert!(types.iter().any(|t| t == "SignalReceived"));
    assert!(
        rt.complete_task(&hotel.id, json!({})).await.is_err(),
        "an answered task is gone"
    );
    assert_eq!(rt.live_instances(), 0);
}

#[tokio::test]
async fn a_failed_task_compensates_with_the_earlier_output() {
    let rt = runtime(Arc::new(MemoryStore::new()), None).await;
    rt.publish(TRIP).await.unwrap();
    let id = rt
        .start("trip", None, json!({"trip_id": "t-2"}), None)
        .await
        .unwrap()
        .id;
    let f = take(&rt, "flights").await;
    rt.complete_task(&f.id, json!({"ref": "F-9"}))
        .await
        .unwrap();
    rt.cancel(id, Some("changed plans".into())).await.unwrap();
    let undo = take(&rt, "flights").await;
    assert_eq!(undo.input, json!({"cancel": "F-9"}));
    assert_eq!(undo.phase, Phase::Compensation);
    rt.complete_task(&undo.id, json!({})).await.unwrap();
    let v = rt.wait(id, Duration::from_secs(5)).await.unwrap();
    assert_eq!(v.status, "cancelled");
    assert_eq!(v.error.as_deref(), Some("cancelled: changed plans"));
    assert!(matches!(
        rt.cancel(id, None).await,
        Err(RuntimeError::Rejected(_))
    ));
}

#[tokio::test]
async fn starts_are_idempotent_by_key_and_inputs_are_checked() {
    let rt = runtime(Arc::new(MemoryStore::new()), None).await;
    rt.publish(TRIP).await.unwrap();
    let a = rt
        .start("trip", None, json!({"trip_id": "t-3"}), Some("k-1".into()))
        .await
        .unwrap();
    let b = rt
        .start("trip", None, json!({"trip_id": "t-3"}), Some("k-1".into()))
        .await
        .unwrap();
    assert_eq!(a.id, b.id);
    assert!(a.created && !b.created);
    assert!(matches!(
        rt.start(
            "trip",
            None,
            json!({"trip_id": "other"}),
            Some("k-1".into())
        )
        .await,
        Err(RuntimeError::IdempotencyMismatch(_))
    ));
    match rt.start("trip", None, json!({"trip_id": 5}), None).await {
        Err(RuntimeError::InvalidInput(errs)) => assert_eq!(errs[0].pointer, "/trip_id"),
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        rt.start("nope", None, json!({}), None).await,
        Err(RuntimeError::UnknownWorkflow(_))
    ));
    assert!(matches!(
        rt.get(Uuid::nil()).await,
        Err(RuntimeError::UnknownInstance(_))
    ));
}

#[tokio::test]
async fn publishing_is_recorded_and_versions_are_immutable() {
    let store: Arc<dyn EventStore> = Arc::new(MemoryStore::new());
    let rt = runtime(store.clone(), None).await;
    assert_eq!(rt.publish(TRIP).await.unwrap().1, PublishOutcome::Published);
    assert_eq!(rt.publish(TRIP).await.unwrap().1, PublishOutcome::Unchanged);
    let changed = TRIP.replace("timeout: 1h", "timeout: 2h");
    assert!(matches!(
        rt.publish(&changed).await,
        Err(RuntimeError::VersionConflict { .. })
    ));
    let v2 = changed.replace("name: trip\n", "name: trip\nversion: 2\n");
    rt.publish(&v2).await.unwrap();
    assert!(matches!(
        rt.publish("name: x\nsteps: []\n").await,
        Err(RuntimeError::InvalidWorkflow(_))
    ));
    // a new runtime on the same store finds both versions
    let again = runtime(store, None).await;
    assert_eq!(again.workflow("trip", None).unwrap().machine.version, 2);
    assert_eq!(again.workflow("trip", Some(1)).unwrap().machine.version, 1);
}

#[tokio::test]
async fn a_restart_without_read_models_resumes_from_the_log() {
    let store: Arc<dyn EventStore> = Arc::new(MemoryStore::new());
    let first = runtime(store.clone(), None).await;
    first.publish(TRIP).await.unwrap();
    let mut ids = Vec::new();
    for trip in ["t-a", "t-b", "t-c"] {
        let started = first
            .start("trip", None, json!({"trip_id": trip}), None)
            .await
            .unwrap();
        ids.push(started.id);
    }
    // one ends (compensated after a business failure), two stay in flight
    let task = take(&first, "flights").await;
    first
        .fail_task(&task.id, "no seats".into(), false)
        .await
        .unwrap();
    let ended = task.instance;
    first.shutdown(Duration::from_secs(1)).await;
    drop(first);

    let mut unfinished = executor::unfinished_in_store(store.as_ref()).await.unwrap();
    unfinished.sort();
    let mut expected: Vec<Uuid> = ids.iter().copied().filter(|id| *id != ended).collect();
    expected.sort();
    assert_eq!(unfinished, expected);

    let second = runtime(store, None).await;
    assert_eq!(
        second.live_instances(),
        2,
        "both unfinished sagas are resumed"
    );
    let mut offered = vec![
        take(&second, "flights").await.instance,
        take(&second, "flights").await.instance,
    ];
    offered.sort();
    assert_eq!(offered, expected, "their attempts are offered again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_resumes_and_reoffers_the_same_task() {
    let dir = std::env::temp_dir().join(format!("sagaflow-rt-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("sagaflow.db");
    let open = || async {
        let store: Arc<dyn EventStore> = Arc::new(SqliteStore::open(&path).await.unwrap());
        let proj = Arc::new(
            Projections::open(&path.with_file_name("readmodels.db"))
                .await
                .unwrap(),
        );
        runtime(store, Some(proj)).await
    };
    let first = open().await;
    first.publish(TRIP).await.unwrap();
    let id = first
        .start("trip", None, json!({"trip_id": "t-4"}), None)
        .await
        .unwrap()
        .id;
    let before = take(&first, "flights").await;
    // the process dies with the task taken but not answered
    first.shutdown(Duration::from_secs(1)).await;
    drop(first);
    let second = open().await;
    let again = take(&second, "flights").await;
    assert_eq!(
        (&again.id, &again.idempotency_key),
        (&before.id, &before.idempotency_key),
        "the same attempt, with the same idempotency key"
    );
    let history = second.history(id, 0).await.unwrap();
    assert!(
        history.iter().any(|e| e.event_type == "AttemptReissued"),
        "the re-issue is recorded: {:?}",
        history
            .iter()
            .map(|e| e.event_type.as_str())
            .collect::<Vec<_>>()
    );
    second
        .complete_task(&again.id, json!({"ref": "F-1"}))
        .await
        .unwrap();
    assert_eq!(second.get(id).await.unwrap().status, "waiting");
    let page = second
        .search(&crate::projection::InstanceFilter {
            workflow: Some("trip".into()),
            limit: 10,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(page.items.len(), 1);
    assert!(page.next.is_none());
}

#[tokio::test]
async fn a_duration_wait_fires_its_timer() {
    let rt = runtime(Arc::new(MemoryStore::new()), None).await;
    rt.publish("name: pause\nsteps:\n  - name: nap\n    wait: { duration: 50ms }\n")
        .await
        .unwrap();
    let id = rt.start("pause", None, json!({}), None).await.unwrap().id;
    let v = rt.wait(id, Duration::from_secs(5)).await.unwrap();
    assert_eq!(v.status, "completed");
    assert_eq!(rt.pending_timers(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_models_heal_after_failed_transactions() {
    let dir = std::env::temp_dir().join(format!("sagaflow-heal-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let store: Arc<dyn EventStore> = Arc::new(MemoryStore::new());
    let proj = Arc::new(Projections::open(&dir.join("readmodels.db")).await.unwrap());
    let rt = runtime(store, Some(proj.clone())).await;
    rt.publish("name: pause\nsteps:\n  - name: nap\n    wait: { duration: 10ms }\n")
        .await
        .unwrap();
    assert!(rt
        .catch_up_read_models(Duration::from_secs(5))
        .await
        .unwrap());
    assert!(rt.read_model_stall().is_none());

    // the database refuses the next transactions: nothing is half-applied, and the stall shows
    proj.fail_next_transactions(6);
    let id = rt.start("pause", None, json!({}), None).await.unwrap().id;
    assert_eq!(
        rt.wait(id, Duration::from_secs(5)).await.unwrap().status,
        "completed"
    );
    let until = tokio::time::Instant::now() + Duration::from_secs(5);
    while rt.read_model_stall().is_none() {
        assert!(
            tokio::time::Instant::now() < until,
            "the stall was never reported"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let (_, why) = rt.read_model_stall().unwrap();
    assert!(why.contains("injected fault"), "{why}");

    // the faults run out: the projection retries by itself and the read model is right again
    assert!(
        rt.catch_up_read_models(Duration::from_secs(20))
            .await
            .unwrap(),
        "the read models never caught up"
    );
    let page = rt
        .search(&crate::projection::InstanceFilter {
            workflow: Some("pause".into()),
            limit: 10,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(page.items.len(), 1);
    assert_eq!(page.items[0].status, "completed");
    let until = tokio::time::Instant::now() + Duration::from_secs(5);
    while rt.read_model_stall().is_some() {
        assert!(
            tokio::time::Instant::now() < until,
            "the stall was never cleared"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panic_performing_fails_that_saga_only_and_a_retry_resumes_it() {
    let rt = runtime(Arc::new(MemoryStore::new()), None).await;
    rt.publish(TRIP).await.unwrap();
    let healthy = rt
        .start("trip", None, json!({"trip_id": "t-1"}), None)
        .await
        .unwrap();
    rt.panic_next_performs(1);
    let faulty = rt
        .start("trip", None, json!({"trip_id": "t-2"}), None)
        .await
        .unwrap();
    let v = rt.wait(faulty.id, Duration::from_secs(5)).await.unwrap();
    assert_eq!(v.status, "failed");
    assert!(
        v.error
            .as_deref()
            .is_some_and(|e| e.contains("internal error while performing: injected fault")),
        "{v:?}"
    );
    // the other saga runs on
    let task = take(&rt, "flights").await;
    assert_eq!(task.instance, healthy.id);
    rt.complete_task(&task.id, json!({"ref": "F-1"}))
        .await
        .unwrap();
    assert_eq!(rt.get(healthy.id).await.unwrap().status, "waiting");
    // an operator retries the failed one: its attempt goes out again
    rt.retry(faulty.id).await.unwrap();
    let task = take(&rt, "flights").await;
    assert_eq!(task.instance, faulty.id);
    assert_eq!(task.attempt, 2);
}

/// A span's name and its parent's.
type NameAndParent = (String, Option<String>);

/// Records each new span's name and its parent's name.
#[derive(Clone, Default)]
struct SpanParents(Arc<std::sync::Mutex<Vec<NameAndParent>>>);

impl<S> tracing_subscriber::Layer<S> for SpanParents
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
{
    fn on_new_span(
        &self,
        _: &tracing::span::Attributes<'_>,
        id: &tracing::span::Id,
        ctx: tracing_subscriber::layer::Context<'_, S>,
    ) {
        let span = ctx.span(id).expect("a new span");
        let parent = span.parent().map(|p| p.name().to_string());
        self.0
            .lock()
            .unwrap()
            .push((span.name().to_string(), parent));
    }
}

#[tokio::test]
async fn every_attempt_is_a_child_of_its_saga_not_of_the_attempt_before() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tracing_subscriber::layer::SubscriberExt;
    let spans = SpanParents::default();
    let _guard =
        tracing::subscriber::set_default(tracing_subscriber::registry().with(spans.clone()));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            let mut buf = vec![0u8; 16 * 1024];
            let _ = conn.read(&mut buf).await;
            let _ = conn
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\n{}")
                .await;
        }
    });
    let workflow = format!(
        "name: chain\nsteps:\n{}",
        ["a", "b", "c"]
            .map(|s| format!("  - name: {s}\n    http: {{ method: POST, url: '{url}/{s}' }}\n    compensate: none\n"))
            .concat()
    );
    let rt = runtime(Arc::new(MemoryStore::new()), None).await;
    rt.publish(&workflow).await.unwrap();
    let id = rt.start("chain", None, json!({}), None).await.unwrap().id;
    let view = rt.wait(id, Duration::from_secs(10)).await.unwrap();
    assert_eq!(view.status, "completed");
    let spans = spans.0.lock().unwrap().clone();
    let attempts: Vec<_> = spans.iter().filter(|(n, _)| n == "attempt").collect();
    assert_eq!(attempts.len(), 3, "{spans:?}");
    for (_, parent) in attempts {
        assert_eq!(parent.as_deref(), Some("saga"), "{spans:?}");
    }
}
