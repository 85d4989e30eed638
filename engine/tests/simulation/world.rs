//! The simulated world around the runtime: a virtual clock that survives
//! crashes, an event store that injects faults, and a downstream that
//! honours idempotency keys and remembers every delivery.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use sagaflow_engine::runtime::Task;
use sagaflow_engine::saga::{Clock, Phase, Timestamp};
use sagaflow_engine::store::memory::MemoryStore;
use sagaflow_engine::store::{
    Appended, EventRef, EventStore, Expected, NewEvent, RecordedEvent, StoreError, Tombstone,
};
use tokio::sync::watch;

/// Virtual time: tokio's paused clock within a life, carried over crashes.
pub struct SimClock {
    base: AtomicU64,
    life_start: Mutex<Option<tokio::time::Instant>>,
}

impl SimClock {
    pub fn new() -> Self {
        Self {
            // 2026-01-01T00:00:00Z
            base: AtomicU64::new(1_767_225_600_000),
            life_start: Mutex::new(None),
        }
    }

    /// Called first thing in a life's tokio runtime.
    pub fn begin_life(&self) {
        *self.life_start.lock().unwrap() = Some(tokio::time::Instant::now());
    }

    /// Called when a life ends (a crash or the end of the run): its time stays passed.
    pub fn end_life(&self) {
        let now = self.now();
        self.base.store(now.millis(), Ordering::SeqCst);
        *self.life_start.lock().unwrap() = None;
    }
}

impl Clock for SimClock {
    fn now(&self) -> Timestamp {
        let base = self.base.load(Ordering::SeqCst);
        let elapsed = self
            .life_start
            .lock()
            .unwrap()
            .map_or(0, |s| s.elapsed().as_millis() as u64);
        Timestamp::from_millis(base + elapsed)
    }
}

/// What the fault-injecting store did, for the run's summary.
#[derive(Debug, Default, Clone, Copy)]
pub struct FaultCounts {
    pub refused: u64,
    pub lost_answers: u64,
    pub conflicts: u64,
    pub slow: u64,
    pub failed_reads: u64,
}

/// The memory store behind a wrapper that fails appends before commit,
/// loses the answer of committed ones, answers a conflict as if a second
/// writer had moved the stream, delays, and fails reads, from a seeded RNG.
pub struct FaultyStore {
    inner: MemoryStore,
    rng: Mutex<fastrand::Rng>,
    pub enabled: AtomicBool,
    counts: Mutex<FaultCounts>,
}

impl FaultyStore {
    pub fn new(seed: u64) -> Self {
        Self {
            inner: MemoryStore::new(),
            rng: Mutex::new(fastrand::Rng::with_seed(seed ^ 0x5354_4f52_4500_0000)),
            enabled: AtomicBool::new(false),
            counts: Mutex::default(),
        }
    }

    pub fn counts(&self) -> FaultCounts {
        *self.counts.lock().unwrap()
    }

    /// A roll in 0..1000 if faults are on.
    fn roll(&self) -> Option<u32> {
        self.enabled
            .load(Ordering::SeqCst)
            .then(|| self.rng.lock().unwrap().u32(0..1000))
    }

    async fn maybe_slow(&self) {
        let delay = match self.roll() {
            Some(r) if r < 50 => Duration::from_millis(u64::from(r) * 20),
            _ => return,
        };
        self.counts.lock().unwrap().slow += 1;
        tokio::time::sleep(delay).await;
    }
}

#[async_trait]
impl EventStore for FaultyStore {
    async fn append(
        &self,
        stream: &str,
        expected: Expected,
        events: Vec<NewEvent>,
    ) -> Result<Appended, StoreError> {
        self.maybe_slow().await;
        match self.roll() {
            Some(r) if r < 20 => {
                self.counts.lock().unwrap().refused += 1;
                Err(StoreError::Unavailable(
                    "injected: refused before commit".into(),
                ))
            }
            Some(r) if r < 40 => {
                let committed = self.inner.append(stream, expected, events).await?;
                let _ = committed;
                self.counts.lock().unwrap().lost_answers += 1;
                Err(StoreError::Unavailable(
                    "injected: committed, answer lost".into(),
                ))
            }
            Some(r) if r < 55 && !matches!(expected, Expected::NoStream) => {
                self.counts.lock().unwrap().conflicts += 1;
                Err(StoreError::Conflict {
                    stream: stream.to_string(),
                    expected,
                    actual: None,
                })
            }
            _ => self.inner.append(stream, expected, events).await,
        }
    }

    async fn read_stream(&self, stream: &str, from: u64) -> Result<Vec<RecordedEvent>, StoreError> {
        self.maybe_slow().await;
        if matches!(self.roll(), Some(r) if r < 10) {
            self.counts.lock().unwrap().failed_reads += 1;
            return Err(StoreError::Unavailable("injected: read failed".into()));
        }
        self.inner.read_stream(stream, from).await
    }

    async fn read_all(
        &self,
        after: Option<u64>,
        limit: usize,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        self.inner.read_all(after, limit).await
    }

    async fn read_all_refs(
        &self,
        after: Option<u64>,
        limit: usize,
    ) -> Result<Vec<EventRef>, StoreError> {
        self.inner.read_all_refs(after, limit).await
    }

    async fn remove(&self, streams: &[String], at: Timestamp) -> Result<(), StoreError> {
        self.inner.remove(streams, at).await
    }

    async fn tombstone(&self, stream: &str) -> Result<Option<Tombstone>, StoreError> {
        self.inner.tombstone(stream).await
    }

    async fn forget_removed(&self, before: Timestamp) -> Result<u64, StoreError> {
        self.inner.forget_removed(before).await
    }

    fn head(&self) -> watch::Receiver<Option<u64>> {
        self.inner.head()
    }

    fn durability(&self) -> String {
        "simulated".into()
    }
}

/// How the downstream answers the first delivery of an effect; later
/// deliveries with the same key get the same answer (it honours the key).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    Done,
    Refused,
}

/// One task handed to a worker, in the order they were handed out.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub instance: uuid::Uuid,
    pub step: usize,
    /// The branch or element of a parallel or for-each step.
    pub unit: Option<u32>,
    pub attempt: u32,
    pub phase: Phase,
    pub key: String,
    /// The instance was paused (acknowledged) when this was handed out.
    pub while_paused: bool,
}

/// The services the sagas' tasks act on.
#[derive(Default)]
pub struct Downstream {
    pub answers: HashMap<String, Answer>,
    pub deliveries: Vec<Delivery>,
}

impl Downstream {
    /// Records a delivery and does the effect once per key; the answer to give.
    pub fn deliver(
        &mut self,
        task: &Task,
        while_paused: bool,
        rng: &mut fastrand::Rng,
        refusals: bool,
    ) -> Answer {
        self.deliveries.push(Delivery {
            instance: task.instance,
            step: task.step_index,
            unit: task.index,
            attempt: task.attempt,
            phase: task.phase,
            key: task.idempotency_key.clone(),
            while_paused,
        });
        let refuse_per_mille = match (refusals, task.phase) {
            (false, _) => 0,
            (true, Phase::Forward) => 120,
            (true, Phase::Compensation) => 15,
        };
        *self
            .answers
            .entry(task.idempotency_key.clone())
            .or_insert_with(|| {
                if rng.u32(0..1000) < refuse_per_mille {
                    Answer::Refused
                } else {
                    Answer::Done
                }
            })
    }

    /// Whether the effect with this key took place.
    pub fn done(&self, key: &str) -> bool {
        self.answers.get(key) == Some(&Answer::Done)
    }
}
