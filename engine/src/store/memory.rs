//! An in-memory store, for tests. Loses everything when dropped.

use std::collections::HashMap;
use std::sync::Mutex;

use async_trait::async_trait;
use tokio::sync::watch;

use super::{Appended, EventStore, Expected, NewEvent, RecordedEvent, StoreError, Tombstone};
use crate::saga::{Clock, SystemClock, Timestamp};

#[derive(Default)]
struct Inner {
    /// Indexed by position; a removed stream's events leave `None` behind.
    all: Vec<Option<RecordedEvent>>,
    streams: HashMap<String, Vec<usize>>,
    removed: HashMap<String, Timestamp>,
}

pub struct MemoryStore {
    inner: Mutex<Inner>,
    head: watch::Sender<Option<u64>>,
}

impl Default for MemoryStore {
    fn default() -> Self {
        Self {
            inner: Mutex::default(),
            head: watch::channel(None).0,
        }
    }
}

impl MemoryStore {
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding the lock cannot leave Inner half-updated (appends are built first), so poison is safe to ignore.
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[async_trait]
impl EventStore for MemoryStore {
    async fn append(
        &self,
        stream: &str,
        expected: Expected,
        events: Vec<NewEvent>,
    ) -> Result<Appended, StoreError> {
        if events.is_empty() {
            return Err(StoreError::empty_append());
        }
        let mut inner = self.lock();
        if let Some(at) = inner.removed.get(stream) {
            return Err(StoreError::Removed {
                stream: stream.to_string(),
                removed_at: Some(*at),
            });
        }
        let last = inner.streams.get(stream).map(|v| v.len() as u64 - 1);
        if !expected.admits(last) {
            return Err(StoreError::Conflict {
                stream: stream.to_string(),
                expected,
                actual: last,
            });
        }
        let now = SystemClock.now();
        let mut appended = Appended {
            revision: 0,
            position: 0,
        };
        for (revision, e) in (last.map_or(0, |l| l + 1)..).zip(events) {
            let index = inner.all.len();
            let position = index as u64;
            inner.all.push(Some(RecordedEvent {
                stream: stream.to_string(),
                revision,
                position,
                event_type: e.event_type,
                schema_version: e.schema_version,
                // kept as the JSON value a file would give back, so that
                // readers (the simulation's) decode every event as they
                // would from a real store
                data: e.data.into_value().into(),
                recorded_at: now,
            }));
            inner
                .streams
                .entry(stream.to_string())
                .or_default()
                .push(index);
            appended = Appended { revision, position };
        }
        drop(inner);
        self.head.send_replace(Some(appended.position));
        Ok(appended)
    }

    async fn read_stream(&self, stream: &str, from: u64) -> Result<Vec<RecordedEvent>, StoreError> {
        let inner = self.lock();
        Ok(inner
            .streams
            .get(stream)
            .map(|idx| {
                idx.iter()
                    .skip(from as usize)
                    .filter_map(|&i| inner.all[i].clone())
                    .collect()
            })
            .unwrap_or_default())
    }

    async fn read_all(
        &self,
        after: Option<u64>,
        limit: usize,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        let inner = self.lock();
        let start = after.map_or(0, |p| p as usize + 1);
        Ok(inner
            .all
            .iter()
            .skip(start)
            .flatten()
            .take(limit)
            .cloned()
            .collect())
    }

    async fn remove(&self, streams: &[String], at: Timestamp) -> Result<(), StoreError> {
        let mut inner = self.lock();
        for stream in streams {
            for i in inner.streams.remove(stream).unwrap_or_default() {
                inner.all[i] = None;
            }
            inner.removed.entry(stream.clone()).or_insert(at);
        }
        Ok(())
    }

    async fn tombstone(&self, stream: &str) -> Result<Option<Tombstone>, StoreError> {
        Ok(self.lock().removed.get(stream).map(|at| Tombstone {
            removed_at: Some(*at),
        }))
    }

    async fn forget_removed(&self, before: Timestamp) -> Result<u64, StoreError> {
        let mut inner = self.lock();
        let was = inner.removed.len();
        inner.removed.retain(|_, at| *at >= before);
        Ok((was - inner.removed.len()) as u64)
    }

    fn head(&self) -> watch::Receiver<Option<u64>> {
        self.head.subscribe()
    }

    fn durability(&self) -> String {
        "in memory: nothing reaches disk".into()
    }
}

/// The memory store, watched by tests: it counts reads of the whole log,
/// and its next `remove` can be made to fail (as a crash between archiving
/// and removing would leave things).
#[cfg(test)]
#[derive(Default)]
pub(crate) struct Watched {
    pub inner: MemoryStore,
    pub reads: std::sync::atomic::AtomicUsize,
    pub fail_next_remove: std::sync::atomic::AtomicBool,
}

#[cfg(test)]
#[async_trait]
impl EventStore for Watched {
    async fn append(
        &self,
        stream: &str,
        expected: Expected,
        events: Vec<NewEvent>,
    ) -> Result<Appended, StoreError> {
        self.inner.append(stream, expected, events).await
    }
    async fn read_stream(&self, stream: &str, from: u64) -> Result<Vec<RecordedEvent>, StoreError> {
        self.inner.read_stream(stream, from).await
    }
    async fn read_all(
        &self,
        after: Option<u64>,
        limit: usize,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        self.reads.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        self.inner.read_all(after, limit).await
    }
    async fn remove(&self, streams: &[String], at: Timestamp) -> Result<(), StoreError> {
        if self
            .fail_next_remove
            .swap(false, std::sync::atomic::Ordering::SeqCst)
        {
            return Err(StoreError::Unavailable(
                "injected: the process stopped here".into(),
            ));
        }
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
        self.inner.durability()
    }
}

#[cfg(test)]
mod tests {
    #[tokio::test]
    async fn conforms() {
        super::super::conformance::run(|| async { super::MemoryStore::new() }).await;
    }
}
