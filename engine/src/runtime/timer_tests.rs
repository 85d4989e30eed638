//! Every timer kind on a manual clock: time moves only when the test says so, and `tick()` fires what is due.

use std::sync::Arc;
use std::time::Duration;

use serde_json::json;

use super::*;
use crate::saga::ManualClock;
use crate::store::memory::MemoryStore;
use crate::store::sqlite::SqliteStore;

const T0: Timestamp = Timestamp(1_800_000_000_000);

const SHIPPING: &str = "\
name: shipping
deadline: 1h
steps:
  - name: label
    task: { queue: labels }
    timeout: 30s
    retry: { max_attempts: 2, backoff: { initial: 10s } }
    compensate: none
  - name: approve
    wait: { signal: go }
    timeout: 10m
  - name: cool_down
    wait: { duration: 5m }
  - name: pickup
    task: { queue: pickups, heartbeat: 20s }
    timeout: 30m
    compensate: none
";

struct Harness {
    rt: Runtime,
    clock: Arc<ManualClock>,
}

impl Harness {
    async fn new(
        store: Arc<dyn EventStore>,
        projections: Option<Arc<Projections>>,
        clock: Arc<ManualClock>,
    ) -> Self {
        let rt = Runtime::new(store, projections, clock.clone(), RuntimeConfig::default())
            .await
            .unwrap();
        rt.resume().await.unwrap();
        Self { rt, clock }
    }

    async fn memory() -> Self {
        let h = Self::new(
            Arc::new(MemoryStore::new()),
            None,
            Arc::new(ManualClock::new(T0)),
        )
        .await;
        h.rt.publish(SHIPPING).await.unwrap();
        h
    }

    async fn advance(&self, by: Duration) -> usize {
        self.clock.advance(by);
        self.rt.tick().await
    }

    async fn task(&self, queue: &str) -> Task {
        self.rt
            .poll_task(queue, Duration::ZERO)
            .await
            .expect("a poll")
            .unwrap_or_else(|| panic!("a task on {queue}"))
    }

    /// Starts a shipping saga and answers its label task: it then waits for `go`.
    async fn start_labelled(&self) -> Uuid {
        let id = self
            .rt
            .start("shipping", None, json!({}), None)
            .await
            .unwrap()
            .id;
        let t = self.task("labels").await;
        self.rt.complete_task(&t.id, json!({})).await.unwrap();
        id
    }

    async fn status(&self, id: Uuid) -> (&'static str, Option<String>) {
        let v = self.rt.get(id).await.unwrap();
        (v.status, v.current_step)
    }
}

#[tokio::test]
async fn a_step_timeout_fails_the_attempt_and_the_backoff_starts_the_next() {
    let h = Harness::memory().await;
    let id =
        h.rt.start("shipping", None, json!({}), None)
            .await
            .unwrap()
            .id;
    let first = h.task("labels").await;
    assert_eq!(h.advance(Duration::from_secs(29)).await, 0);
    assert_eq!(
        h.advance(Duration::from_secs(1)).await,
        1,
        "the timeout fires at 30 s"
    );
    assert!(
        h.rt.poll_task("labels", Duration::ZERO)
            .await
            .expect("a poll")
            .is_none(),
        "the next attempt waits for its backoff"
    );
    // the first attempt answers late: its task is gone, nothing happens
    assert!(matches!(
        h.rt.heartbeat(&first.id).await,
        Err(RuntimeError::TaskGone(_))
    ));
    assert!(matches!(
        h.rt.complete_task(&first.id, json!({})).await,
        Err(RuntimeError::TaskGone(_))
    ));
    assert_eq!(
        h.advance(Duration::from_secs(10)).await,
        1,
        "the backoff fires at 10 s"
    );
    let second = h.task("labels").await;
    assert_eq!(second.attempt, 2);
    assert_eq!(
        second.idempotency_key, first.idempotency_key,
        "the effect keeps its key"
    );
    h.rt.complete_task(&second.id, json!({})).await.unwrap();
    assert_eq!(h.status(id).await, ("waiting", Some("approve".into())));
}

#[tokio::test]
async fn a_wait_that_times_out_compensates_and_a_duration_wait_goes_on() {
    let h = Harness::memory().await;
    let id = h.start_labelled().await;
    h.advance(Duration::from_secs(599)).await;
    assert_eq!(h.status(id).await.0, "waiting");
    h.advance(Duration::from_secs(1)).await;
    assert_eq!(
        h.status(id).await.0,
        "compensated",
        "the label step has `compensate: none`, so nothing else runs"
    );

    let id = h.start_labelled().await;
    h.rt.signal(id, "go".into(), json!({})).await.unwrap();
    assert_eq!(h.status(id).await, ("waiting", Some("cool_down".into())));
    h.advance(Duration::from_secs(299)).await;
    assert_eq!(h.status(id).await.1.as_deref(), Some("cool_down"));
    h.advance(Duration::from_secs(1)).await;
    assert_eq!(h.status(id).await, ("running", Some("pickup".into())));
}

#[tokio::test]
async fn a_missed_heartbeat_fails_the_attempt() {
    let h = Harness::memory().await;
    let id = h.start_labelled().await;
    h.rt.signal(id, "go".into(), json!({})).await.unwrap();
    h.advance(Duration::from_secs(300)).await;
    let pickup = h.task("pickups").await;
    h.advance(Duration::from_secs(15)).await;
    h.rt.heartbeat(&pickup.id).await.unwrap();
    h.advance(Duration::from_secs(15)).await;
    assert_eq!(h.status(id).await.0, "running", "heartbeats keep the lease");
    h.advance(Duration::from_secs(21)).await;
    let v = h.rt.get(id).await.unwrap();
    assert_eq!(
        v.status, "compensated",
        "one attempt, and it timed out: {:?}",
        v.error
    );
    assert!(v.error.unwrap().contains("no heartbeat"));
}

#[tokio::test]
async fn the_deadline_compensates_and_an_operator_can_move_it() {
    let h = Harness::memory().await;
    let id = h.start_labelled().await;
    // an operator gives the saga another hour, and the approval wait too
    let deadline =
        h.rt.get(id)
            .await
            .unwrap()
            .timers
            .iter()
            .find(|t| t.0 == "deadline")
            .unwrap()
            .2;
    h.rt.move_timer(
        id,
        "deadline".into(),
        deadline.plus(Duration::from_secs(3600)),
    )
    .await
    .unwrap();
    h.rt.move_timer(
        id,
        "wait-timeout:1".into(),
        T0.plus(Duration::from_secs(3 * 3600)),
    )
    .await
    .unwrap();
    h.advance(Duration::from_secs(3600)).await;
    assert_eq!(
        h.status(id).await.0,
        "waiting",
        "the old deadline passed without effect"
    );
    h.advance(Duration::from_secs(3600)).await;
    let v = h.rt.get(id).await.unwrap();
    assert_eq!(v.status, "compensated");
    assert_eq!(v.error.as_deref(), Some("the saga's deadline passed"));
    assert!(matches!(
        h.rt.move_timer(id, "deadline".into(), T0).await,
        Err(RuntimeError::Rejected(_))
    ));
}

#[tokio::test]
async fn firing_a_wait_now_moves_on_at_once() {
    let h = Harness::memory().await;
    let id = h.start_labelled().await;
    h.rt.signal(id, "go".into(), json!({})).await.unwrap();
    h.rt.move_timer(id, "wait:2".into(), h.rt.now())
        .await
        .unwrap();
    assert_eq!(h.status(id).await, ("running", Some("pickup".into())));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_fires_overdue_timers_and_gives_reissued_attempts_their_time() {
    let dir = std::env::temp_dir().join(format!("sagaflow-timers-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("sagaflow.db");
    let clock = Arc::new(ManualClock::new(T0));
    let open = || {
        let (path, clock) = (path.clone(), clock.clone());
        async move {
            let store: Arc<dyn EventStore> = Arc::new(SqliteStore::open(&path).await.unwrap());
            Harness::new(
                store,
                Some(Arc::new(
                    Projections::open(&path.with_file_name("readmodels.db"))
                        .await
                        .unwrap(),
                )),
                clock,
            )
            .await
        }
    };
    // T0: saga A starts; its attempt times out at T0+30s and its backoff is due at T0+40s.
    // T0+30s: saga B starts, its attempt due to time out at T0+60s. Then the process dies.
    let h = open().await;
    h.rt.publish(SHIPPING).await.unwrap();
    let a =
        h.rt.start("shipping", None, json!({}), None)
            .await
            .unwrap()
            .id;
    assert_eq!(h.advance(Duration::from_secs(30)).await, 1, "A times out");
    let b =
        h.rt.start("shipping", None, json!({}), None)
            .await
            .unwrap()
            .id;
    drop(h);
    // Down until T0+75s: A's backoff and B's timeout both passed while nothing ran.
    clock.advance(Duration::from_secs(45));
    let h = open().await;
    assert_eq!(
        h.rt.pending_timers(),
        4,
        "A's backoff, B's timeout and both deadlines are armed again"
    );
    assert_eq!(h.rt.tick().await, 1, "A's overdue backoff fires at once");
    assert_eq!(h.rt.get(a).await.unwrap().attempt, 2);
    // B's attempt was re-issued with its key, and its timeout counts from the restart
    let vb = h.rt.get(b).await.unwrap();
    assert_eq!(vb.attempt, 1, "B's attempt was not failed by the outage");
    let due = vb
        .timers
        .iter()
        .find(|t| t.0 == "timeout:0:f:1")
        .map(|t| t.2);
    assert_eq!(
        due,
        Some(T0.plus(Duration::from_secs(105))),
        "{:?}",
        vb.timers
    );
    let queued = [h.task("labels").await, h.task("labels").await];
    assert!(
        queued.iter().any(|t| t.instance == a && t.attempt == 2),
        "{queued:?}"
    );
    assert!(
        queued.iter().any(|t| t.instance == b && t.attempt == 1),
        "{queued:?}"
    );
    assert_eq!(h.advance(Duration::from_secs(29)).await, 0);
    assert_eq!(
        h.advance(Duration::from_secs(1)).await,
        2,
        "A's second attempt and B's re-issued one time out at T0+105s"
    );
    assert_eq!(h.status(a).await.0, "compensated", "A had two attempts");
    assert_eq!(
        h.rt.get(b)
            .await
            .unwrap()
            .timers
            .iter()
            .filter(|t| t.0.starts_with("backoff"))
            .count(),
        1
    );
}
