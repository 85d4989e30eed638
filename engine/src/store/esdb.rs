//! EventStoreDB (and KurrentDB) through the `kurrentdb` gRPC client.
//!
//! Streams keep their names (`saga-{id}`, `workflow-{name}`, ...); an append
//! carries the expected revision, and a wrong one comes back as the store's
//! conflict. The global position is the commit position in `$all`. Each event
//! carries, as its custom metadata, the schema version and the time it was
//! recorded (milliseconds; the server's own `created` has only seconds through
//! the client). System streams (`$...`) are skipped when reading `$all`. A
//! catch-up subscription to `$all` from the end moves the head, so followers
//! wake on any writer's events.
//!
//! Retention removes a stream with a hard delete (a tombstone): EventStoreDB
//! refuses its name for good, so a removed instance's Idempotency-Key stays
//! refused after the tombstone window the SQL stores keep. The removed
//! events stay in `$all` until the server's scavenge, followed by a
//! [`STREAM_REMOVED`](super::STREAM_REMOVED) event that followers take as
//! the stream's end.
//!
//! Tested against a protocol-level test double (`esdb-double`), not a real server.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use kurrentdb::{
    AppendToStreamOptions, Client, ClientSettings, EventData, Position, ReadAllOptions,
    ReadStreamOptions, StreamPosition, StreamState, SubscribeToAllOptions, TombstoneStreamOptions,
};
use tokio::sync::watch;

use super::{
    Appended, EventStore, Expected, NewEvent, RecordedEvent, StoreError, Tombstone, STREAM_REMOVED,
};
use crate::saga::{Clock, SystemClock, Timestamp};

/// Streams removed at once by [`EsdbStore::remove`].
const REMOVING_AT_ONCE: usize = 16;

pub struct EsdbStore {
    client: Client,
    head: watch::Receiver<Option<u64>>,
    head_tx: Arc<watch::Sender<Option<u64>>>,
    where_: String,
}

fn unavailable(e: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(format!("EventStoreDB: {e}"))
}

fn is_system(stream: &str) -> bool {
    stream.starts_with('$')
}

#[derive(serde::Serialize, serde::Deserialize)]
struct Meta {
    schema_version: u16,
    recorded_at: u64,
}

fn convert(e: &kurrentdb::RecordedEvent) -> Result<RecordedEvent, StoreError> {
    if e.event_type == STREAM_REMOVED {
        // the server's own event: no data, no metadata of ours
        return Ok(RecordedEvent {
            stream: e.stream_id().to_string(),
            revision: e.revision,
            position: e.position.commit,
            event_type: e.event_type.clone(),
            schema_version: 0,
            data: serde_json::Value::Null.into(),
            recorded_at: Timestamp(e.created.timestamp_millis().max(0) as u64),
        });
    }
    let meta: Meta = serde_json::from_slice(&e.custom_metadata)
        .map_err(|err| StoreError::Corrupt(format!("event {} metadata: {err}", e.id)))?;
    Ok(RecordedEvent {
        stream: e.stream_id().to_string(),
        revision: e.revision,
        position: e.position.commit,
        event_type: e.event_type.clone(),
        schema_version: meta.schema_version,
        data: serde_json::from_slice::<serde_json::Value>(&e.data)
            .map_err(|err| StoreError::Corrupt(format!("event {} data: {err}", e.id)))?
            .into(),
        recorded_at: Timestamp(meta.recorded_at),
    })
}

impl EsdbStore {
    /// Connects with a connection string such as `esdb://host:2113?tls=false`
    /// (TLS and credentials as the client documents them).
    pub async fn open(url: &str) -> Result<Self, StoreError> {
        let settings: ClientSettings = url
            .parse()
            .map_err(|e| StoreError::Invalid(format!("EventStoreDB connection string: {e}")))?;
        let where_ = settings
            .hosts()
            .iter()
            .map(|h| format!("{}:{}", h.host, h.port))
            .collect::<Vec<_>>()
            .join(",");
        let client = Client::new(settings).map_err(|e| StoreError::Invalid(e.to_string()))?;
        // the newest non-system event's position, or none
        let mut newest = None;
        let mut read = client
            .read_all(
                &ReadAllOptions::default()
                    .backwards()
                    .position(StreamPosition::End)
                    .max_count(100),
            )
            .await
            .map_err(unavailable)?;
        while let Some(e) = read.next().await.map_err(unavailable)? {
            let e = e.get_original_event();
            if !is_system(e.stream_id()) {
                newest = Some(e.position.commit);
                break;
            }
        }
        let (head_tx, head) = watch::channel(newest);
        let head_tx = Arc::new(head_tx);
        tokio::spawn(follow_head(client.clone(), head_tx.clone()));
        Ok(Self {
            client,
            head,
            head_tx,
            where_,
        })
    }
}

/// Moves the head on every writer's events, resubscribing after errors.
async fn follow_head(client: Client, head: Arc<watch::Sender<Option<u64>>>) {
    loop {
        let from = (*head.borrow()).map_or(StreamPosition::End, |p| {
            StreamPosition::Position(Position {
                commit: p,
                prepare: p,
            })
        });
        let mut sub = client
            .subscribe_to_all(&SubscribeToAllOptions::default().position(from))
            .await;
        loop {
            if head.is_closed() {
                return;
            }
            match sub.next().await {
                Ok(e) => {
                    let e = e.get_original_event();
                    if !is_system(e.stream_id()) {
                        super::advance_head(&head, e.position.commit);
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "EventStoreDB subscription to $all dropped; resubscribing");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    break;
                }
            }
        }
    }
}

#[async_trait]
impl EventStore for EsdbStore {
    async fn append(
        &self,
        stream: &str,
        expected: Expected,
        events: Vec<NewEvent>,
    ) -> Result<Appended, StoreError> {
        if events.is_empty() {
            return Err(StoreError::empty_append());
        }
        let n = events.len() as u64;
        let now = SystemClock.now().millis();
        let data = events
            .into_iter()
            .map(|e| {
                EventData::json(&e.event_type, &*e.data)
                    .and_then(|d| {
                        d.metadata_as_json(&Meta {
                            schema_version: e.schema_version,
                            recorded_at: now,
                        })
                    })
                    .map(|d| d.id(uuid::Uuid::new_v4()))
                    .map_err(|err| StoreError::Invalid(err.to_string()))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let state = match expected {
            Expected::Any => StreamState::Any,
            Expected::NoStream => StreamState::NoStream,
            Expected::StreamExists => StreamState::StreamExists,
            Expected::Revision(r) => StreamState::StreamRevision(r),
        };
        match self
            .client
            .append_to_stream(
                stream,
                &AppendToStreamOptions::default().stream_state(state),
                data,
            )
            .await
        {
            Ok(w) => {
                super::advance_head(&self.head_tx, w.position.commit);
                Ok(Appended {
                    revision: w.next_expected_version,
                    position: w.position.commit,
                })
            }
            Err(kurrentdb::Error::WrongExpectedVersion { current, .. }) => {
                Err(StoreError::Conflict {
                    stream: stream.to_string(),
                    expected,
                    actual: match current {
                        kurrentdb::CurrentRevision::Current(r) => Some(r),
                        kurrentdb::CurrentRevision::NoStream => None,
                    },
                })
            }
            Err(kurrentdb::Error::ResourceDeleted) => Err(StoreError::Removed {
                stream: stream.to_string(),
                removed_at: None,
            }),
            Err(e) => Err(unavailable(format!(
                "appending {n} events to {stream}: {e}"
            ))),
        }
    }

    async fn trim(&self, stream: &str, before: u64) -> Result<(), StoreError> {
        // EventStoreDB hides events before `$tb` at once and scavenges them later.
        let metadata = kurrentdb::StreamMetadata::builder()
            .truncate_before(before)
            .build();
        self.client
            .set_stream_metadata(stream, &AppendToStreamOptions::default(), &metadata)
            .await
            .map_err(|e| unavailable(format!("trimming {stream}: {e}")))?;
        Ok(())
    }

    async fn read_stream(&self, stream: &str, from: u64) -> Result<Vec<RecordedEvent>, StoreError> {
        let options = ReadStreamOptions::default()
            .forwards()
            .position(StreamPosition::Position(from))
            .max_count(usize::MAX);
        let gone = |e: &kurrentdb::Error| {
            matches!(
                e,
                kurrentdb::Error::ResourceNotFound | kurrentdb::Error::ResourceDeleted
            )
        };
        let mut read = match self.client.read_stream(stream, &options).await {
            Ok(r) => r,
            Err(e) if gone(&e) => return Ok(Vec::new()),
            Err(e) => return Err(unavailable(e)),
        };
        let mut out = Vec::new();
        loop {
            match read.next().await {
                Ok(Some(e)) => out.push(convert(e.get_original_event())?),
                Ok(None) => return Ok(out),
                Err(e) if gone(&e) => return Ok(Vec::new()),
                Err(e) => return Err(unavailable(e)),
            }
        }
    }

    /// One hard delete per stream (the protocol has no batch of them), up to
    /// [`REMOVING_AT_ONCE`] in flight: one at a time, a retention batch of
    /// 100 would take 100 round trips, slower than a busy server starts sagas.
    async fn remove(&self, streams: &[String], _at: Timestamp) -> Result<(), StoreError> {
        for chunk in streams.chunks(REMOVING_AT_ONCE) {
            let mut calls = tokio::task::JoinSet::new();
            for stream in chunk {
                let client = self.client.clone();
                let stream = stream.clone();
                calls.spawn(async move {
                    let done = client
                        .tombstone_stream(stream.as_str(), &TombstoneStreamOptions::default())
                        .await;
                    (stream, done)
                });
            }
            while let Some(joined) = calls.join_next().await {
                match joined {
                    Ok((_, Ok(_) | Err(kurrentdb::Error::ResourceDeleted))) => {}
                    Ok((stream, Err(e))) => {
                        return Err(unavailable(format!("removing {stream}: {e}")))
                    }
                    Err(e) => return Err(unavailable(format!("removing a stream: {e}"))),
                }
            }
        }
        Ok(())
    }

    async fn tombstone(&self, stream: &str) -> Result<Option<Tombstone>, StoreError> {
        let options = ReadStreamOptions::default()
            .forwards()
            .position(StreamPosition::Start)
            .max_count(1);
        let removed = Some(Tombstone { removed_at: None });
        let mut read = match self.client.read_stream(stream, &options).await {
            Ok(r) => r,
            Err(kurrentdb::Error::ResourceDeleted) => return Ok(removed),
            Err(kurrentdb::Error::ResourceNotFound) => return Ok(None),
            Err(e) => return Err(unavailable(e)),
        };
        match read.next().await {
            Ok(_) | Err(kurrentdb::Error::ResourceNotFound) => Ok(None),
            Err(kurrentdb::Error::ResourceDeleted) => Ok(removed),
            Err(e) => Err(unavailable(e)),
        }
    }

    /// Hard deletes are for good.
    async fn forget_removed(&self, _before: Timestamp) -> Result<u64, StoreError> {
        Ok(0)
    }

    async fn read_all(
        &self,
        after: Option<u64>,
        limit: usize,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        let mut out = Vec::new();
        let mut from = after;
        // reading from a position includes the event at it, and system events are skipped: read until `limit` are kept or the log ends
        loop {
            let position = from.map_or(StreamPosition::Start, |p| {
                StreamPosition::Position(Position {
                    commit: p,
                    prepare: p,
                })
            });
            let want = limit - out.len() + 1;
            let options = ReadAllOptions::default()
                .forwards()
                .position(position)
                .max_count(want);
            let mut read = self.client.read_all(&options).await.map_err(unavailable)?;
            let mut seen = 0;
            let mut last = from;
            while let Some(e) = read.next().await.map_err(unavailable)? {
                seen += 1;
                let e = e.get_original_event();
                last = Some(e.position.commit);
                if from.is_some_and(|f| e.position.commit <= f) || is_system(e.stream_id()) {
                    continue;
                }
                out.push(convert(e)?);
                if out.len() == limit {
                    return Ok(out);
                }
            }
            if seen < want || last == from {
                return Ok(out);
            }
            from = last;
        }
    }

    fn head(&self) -> watch::Receiver<Option<u64>> {
        self.head.clone()
    }

    fn durability(&self) -> String {
        format!(
            "EventStoreDB at {} (acknowledged once the server has written the events)",
            self.where_
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::conformance;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn conforms_against_the_protocol_double() {
        let servers = std::sync::Mutex::new(Vec::new());
        conformance::run(|| {
            let double = esdb_double::Double::default();
            let servers = &servers;
            async move {
                let running = double.serve().await;
                let store = EsdbStore::open(&running.url()).await.expect("open");
                servers.lock().unwrap().push(running);
                store
            }
        })
        .await;
    }

    fn event() -> NewEvent {
        NewEvent {
            event_type: "Tick".into(),
            schema_version: 1,
            data: serde_json::json!({}).into(),
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_server_that_goes_away_is_an_unavailable_store_until_it_is_back() {
        let double = esdb_double::Double::default();
        let running = double.serve().await;
        let proxy = esdb_double::Proxy::start(running.addr).await;
        let store = EsdbStore::open(&proxy.url()).await.unwrap();
        store
            .append("s", Expected::NoStream, vec![event()])
            .await
            .unwrap();
        proxy.cut().await;
        let away = tokio::time::timeout(
            Duration::from_secs(60),
            store.append("s", Expected::Revision(0), vec![event()]),
        )
        .await
        .expect("an answer, not a hang");
        let err = away.expect_err("nothing is acknowledged while the server is away");
        assert!(err.is_transient(), "{err}");
        assert_eq!(double.len(), 1);
        // the network is back: the same client reconnects
        proxy.restore().await;
        let mut last = None;
        for _ in 0..120 {
            match store
                .append("s", Expected::Revision(0), vec![event()])
                .await
            {
                Ok(a) => {
                    last = Some(a);
                    break;
                }
                Err(e) => {
                    assert!(e.is_transient(), "{e}");
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
            }
        }
        assert_eq!(last.expect("reconnected").revision, 1);
        assert_eq!(store.read_stream("s", 0).await.unwrap().len(), 2);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn survives_a_new_client_against_the_protocol_double() {
        let double = esdb_double::Double::default();
        let running = double.serve().await;
        let url = running.url();
        conformance::survives_restart(|| {
            let url = url.clone();
            async move { EsdbStore::open(&url).await.expect("open") }
        })
        .await;
    }
}
