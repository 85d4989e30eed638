//! The event store port and its adapters.
//!
//! A store holds streams of events (`saga-{id}`, `workflow-{name}`). Every
//! append states what it expects the stream's last revision to be
//! (optimistic concurrency); every event also gets a global position so
//! followers (projections) can read everything in order from a checkpoint.
//!
//! Adapters: [`memory`] (tests), [`sqlite`] (the embedded default),
//! [`postgres`] (single-database deployments) and [`esdb`] (EventStoreDB, via
//! the `kurrentdb` client). The [`conformance`] suite runs against each.

pub mod conformance;
pub mod esdb;
pub mod memory;
mod payload;
pub mod postgres;
pub mod sqlite;

use std::borrow::Cow;

use async_trait::async_trait;
use tokio::sync::watch;

pub use payload::Payload;

use crate::saga::{Event, EventError, Timestamp};

/// What the writer expects the stream to look like.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expected {
    /// Whatever it is.
    Any,
    /// The stream has no events yet.
    NoStream,
    /// The stream has at least one event.
    StreamExists,
    /// The stream's last event has this revision (revisions start at 0).
    Revision(u64),
}

impl Expected {
    /// What to expect of a stream of which `count` events are known.
    pub fn after(count: u64) -> Self {
        match count {
            0 => Expected::NoStream,
            n => Expected::Revision(n - 1),
        }
    }

    fn admits(self, last: Option<u64>) -> bool {
        match (self, last) {
            (Expected::Any, _) | (Expected::NoStream, None) | (Expected::StreamExists, Some(_)) => {
                true
            }
            (Expected::Revision(r), Some(l)) => r == l,
            _ => false,
        }
    }
}

/// What is left of a removed stream: its name is refused to appends while
/// the tombstone is kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tombstone {
    /// When it was removed (EventStoreDB's own tombstones do not say).
    pub removed_at: Option<Timestamp>,
}

/// The type of the event EventStoreDB writes into a hard-deleted stream;
/// followers reading `$all` see it after the stream's old events (which stay
/// in `$all` until a scavenge).
pub const STREAM_REMOVED: &str = "$streamDeleted";

/// An event to append.
#[derive(Debug, Clone, PartialEq)]
pub struct NewEvent {
    pub event_type: String,
    pub schema_version: u16,
    pub data: Payload,
}

/// A saga event to append, kept typed ([`Payload`]).
impl From<Event> for NewEvent {
    fn from(e: Event) -> Self {
        Self {
            event_type: e.type_name().to_string(),
            schema_version: e.schema_version(),
            data: Payload::saga(e),
        }
    }
}

impl From<&Event> for NewEvent {
    fn from(e: &Event) -> Self {
        Self::from(e.clone())
    }
}

/// An event as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct RecordedEvent {
    pub stream: String,
    pub revision: u64,
    /// Global order across all streams, increasing (not necessarily dense).
    pub position: u64,
    pub event_type: String,
    pub schema_version: u16,
    /// Shared: the SQLite store's tail hands the same event to every
    /// follower, and a copy of a JSON tree costs as much as its decoding.
    /// From the tail, a saga event is the one appended, still typed.
    pub data: Payload,
    pub recorded_at: Timestamp,
}

impl RecordedEvent {
    /// The saga event, upcast to the current schema.
    pub fn to_event(&self) -> Result<Event, EventError> {
        self.event().map(Cow::into_owned)
    }

    /// [`to_event`](Self::to_event) without a copy of an event kept typed.
    pub fn event(&self) -> Result<Cow<'_, Event>, EventError> {
        match self.data.kept_event(&self.event_type) {
            Some(e) => Ok(e),
            None => Event::from_stored_ref(&self.event_type, self.schema_version, &self.data)
                .map(Cow::Owned),
        }
    }
}

/// Where an event landed, without its data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventRef {
    pub stream: String,
    pub revision: u64,
    pub position: u64,
    pub event_type: String,
}

impl From<RecordedEvent> for EventRef {
    fn from(e: RecordedEvent) -> Self {
        Self {
            stream: e.stream,
            revision: e.revision,
            position: e.position,
            event_type: e.event_type,
        }
    }
}

/// The result of a successful append.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Appended {
    /// The revision of the last event appended.
    pub revision: u64,
    /// The position of the last event appended.
    pub position: u64,
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    #[error("stream `{stream}` is at revision {actual:?}, the writer expected {expected:?}")]
    Conflict {
        stream: String,
        expected: Expected,
        actual: Option<u64>,
    },
    #[error("the event store is unavailable: {0}")]
    Unavailable(String),
    #[error("the event store refused the request: {0}")]
    Invalid(String),
    #[error("stored data is unreadable: {0}")]
    Corrupt(String),
    /// The stream was removed (retention), and its tombstone keeps it from
    /// being written again.
    #[error("stream `{stream}` was removed{}", removed_at.map(|t| format!(" at {t}")).unwrap_or_default())]
    Removed {
        stream: String,
        removed_at: Option<Timestamp>,
    },
}

impl StoreError {
    /// The refusal of an append without events (every adapter's).
    pub(crate) fn empty_append() -> Self {
        StoreError::Invalid("an append needs at least one event".into())
    }

    /// Another writer moved the stream: reload and decide again.
    pub fn is_conflict(&self) -> bool {
        matches!(self, StoreError::Conflict { .. })
    }

    /// The stream was removed: its tombstone refuses the write.
    pub fn is_removed(&self) -> bool {
        matches!(self, StoreError::Removed { .. })
    }

    /// Worth retrying as is.
    pub fn is_transient(&self) -> bool {
        matches!(self, StoreError::Unavailable(_))
    }
}

/// A database error classified by what the caller can do: the database is
/// away or busy (transient: retry), the stored data does not decode
/// (corrupt), or the statement itself is wrong (a bug: retrying cannot help).
pub(crate) fn sql_error(e: sqlx::Error) -> StoreError {
    use sqlx::Error as E;
    match e {
        E::Io(_)
        | E::Tls(_)
        | E::Protocol(_)
        | E::PoolTimedOut
        | E::PoolClosed
        | E::WorkerCrashed => StoreError::Unavailable(e.to_string()),
        E::RowNotFound
        | E::ColumnNotFound(_)
        | E::ColumnIndexOutOfBounds { .. }
        | E::ColumnDecode { .. }
        | E::Decode(_)
        | E::TypeNotFound { .. } => StoreError::Corrupt(e.to_string()),
        E::Database(ref d) if transient_code(d.code().as_deref()) => {
            StoreError::Unavailable(e.to_string())
        }
        E::Database(_) | E::Configuration(_) => StoreError::Invalid(e.to_string()),
        _ => StoreError::Unavailable(e.to_string()),
    }
}

/// A SQLite result code (extended or primary) and its message as a store
/// error: "not now" codes are [`StoreError::Unavailable`], the others invalid.
pub(crate) fn sqlite_code_error(code: i32, message: String) -> StoreError {
    if transient_code(Some(&code.to_string())) {
        StoreError::Unavailable(message)
    } else {
        StoreError::Invalid(message)
    }
}

/// SQLite result codes (numbers; the primary code is the low byte) and
/// PostgreSQL SQLSTATEs that say "not now" rather than "never".
fn transient_code(code: Option<&str>) -> bool {
    let Some(code) = code else { return false };
    // a SQLSTATE is five characters; SQLite's codes have at most four digits
    if code.len() < 5 {
        let Ok(n) = code.parse::<u32>() else {
            return false;
        };
        // BUSY, LOCKED, IOERR, FULL, CANTOPEN, PROTOCOL
        return matches!(n & 0xff, 5 | 6 | 10 | 13 | 14 | 15);
    }
    // connection exceptions, insufficient resources, operator intervention,
    // serialization failures and deadlocks
    code.starts_with("08")
        || code.starts_with("53")
        || code.starts_with("57")
        || code == "40001"
        || code == "40P01"
}

/// A failed migration as a store error; a database migrated by a newer
/// sagaflow (a migration this one does not know) is refused in so many words.
pub(crate) fn migration_error(e: sqlx::migrate::MigrateError, what: &str) -> StoreError {
    match e {
        sqlx::migrate::MigrateError::VersionMissing(v) => StoreError::Invalid(format!(
            "{what} has migration {v}, which this sagaflow does not know: it was written by a newer version; refusing to start"
        )),
        e => StoreError::Invalid(format!("migrating {what}: {e}")),
    }
}

/// An append waiting for a writer task (the group-commit stores).
pub(crate) struct AppendRequest {
    pub stream: String,
    pub expected: Expected,
    pub events: Vec<NewEvent>,
    pub reply: tokio::sync::oneshot::Sender<Result<Appended, StoreError>>,
}

/// Hands an append to a writer task and waits for its answer.
pub(crate) async fn submit<J: From<AppendRequest>>(
    queue: &tokio::sync::mpsc::Sender<J>,
    stream: &str,
    expected: Expected,
    events: Vec<NewEvent>,
) -> Result<Appended, StoreError> {
    let stopped = || StoreError::Unavailable("the writer has stopped".into());
    let (reply, answer) = tokio::sync::oneshot::channel();
    let req = AppendRequest {
        stream: stream.to_string(),
        expected,
        events,
        reply,
    };
    queue.send(req.into()).await.map_err(|_| stopped())?;
    answer.await.map_err(|_| stopped())?
}

/// Moves a head to `position` if that is further on (heads never go back).
pub(crate) fn advance_head(head: &watch::Sender<Option<u64>>, position: u64) {
    head.send_if_modified(|h| {
        let newer = h.is_none_or(|old| position > old);
        if newer {
            *h = Some(position);
        }
        newer
    });
}

/// The port every adapter implements.
#[async_trait]
pub trait EventStore: Send + Sync + 'static {
    /// Appends `events` to `stream` if the stream is as `expected`; all or nothing.
    async fn append(
        &self,
        stream: &str,
        expected: Expected,
        events: Vec<NewEvent>,
    ) -> Result<Appended, StoreError>;

    /// The events of `stream` from revision `from` on, in order (empty if there is no such stream).
    async fn read_stream(&self, stream: &str, from: u64) -> Result<Vec<RecordedEvent>, StoreError>;

    /// Up to `limit` events of all streams with a position after `after` (from the start if `None`), in order.
    async fn read_all(
        &self,
        after: Option<u64>,
        limit: usize,
    ) -> Result<Vec<RecordedEvent>, StoreError>;

    /// Like [`read_all`](Self::read_all), only events of the given types, and
    /// how far the log was scanned (a follower's next checkpoint, which may be
    /// past the last event returned).
    async fn read_all_of_types(
        &self,
        after: Option<u64>,
        limit: usize,
        types: &[&str],
    ) -> Result<(Vec<RecordedEvent>, Option<u64>), StoreError> {
        let all = self.read_all(after, limit).await?;
        let scanned = all.last().map(|e| e.position).or(after);
        Ok((
            all.into_iter()
                .filter(|e| types.contains(&e.event_type.as_str()))
                .collect(),
            scanned,
        ))
    }

    /// Like [`read_all`](Self::read_all) without the events' data, for
    /// followers that only need to know which streams moved.
    async fn read_all_refs(
        &self,
        after: Option<u64>,
        limit: usize,
    ) -> Result<Vec<EventRef>, StoreError> {
        Ok(self
            .read_all(after, limit)
            .await?
            .into_iter()
            .map(EventRef::from)
            .collect())
    }

    /// Drops the events of `stream` before revision `before`, for streams only
    /// their latest events matter to (the replicas' lease table). Stores that
    /// cannot drop events keep them; reads from a revision still work.
    async fn trim(&self, _stream: &str, _before: u64) -> Result<(), StoreError> {
        Ok(())
    }

    /// Removes `streams` and all their events, leaving a tombstone dated
    /// `at` for each: appends to a tombstoned stream fail with
    /// [`StoreError::Removed`], and reads find nothing. Removing a removed or
    /// unknown stream is not an error.
    async fn remove(&self, streams: &[String], at: Timestamp) -> Result<(), StoreError>;

    /// The tombstone of `stream`, if it was removed and the tombstone is kept.
    async fn tombstone(&self, stream: &str) -> Result<Option<Tombstone>, StoreError>;

    /// Drops the tombstones of streams removed before `before` (the name may
    /// be written again); how many went. Stores whose tombstones are
    /// permanent (EventStoreDB) drop none.
    async fn forget_removed(&self, before: Timestamp) -> Result<u64, StoreError>;

    /// Gives the space of removed events back to the file system where the
    /// store can (SQLite's incremental vacuum); the others do nothing.
    async fn reclaim(&self) -> Result<(), StoreError> {
        Ok(())
    }

    /// Closes the store's files or connections at shutdown, after the last
    /// write: a SQLite log is then whole in its file, its write-ahead log
    /// checkpointed and deleted. Later calls fail as an unavailable store
    /// would. The others close with the process.
    async fn close(&self) {}

    /// The position of the newest event, updated as events are appended (for followers to wait on).
    fn head(&self) -> watch::Receiver<Option<u64>>;

    /// How events reach disk, for people (shown by `sagaflow bench`).
    fn durability(&self) -> String;
}

#[cfg(test)]
mod sql_error_tests {
    use super::*;

    #[test]
    fn database_errors_are_transient_only_when_waiting_can_help() {
        // SQLite: BUSY, LOCKED, IOERR (and its extended codes), FULL
        for code in ["5", "6", "10", "266", "13", "517"] {
            assert!(transient_code(Some(code)), "{code}");
        }
        // SQLite: ERROR (a bad statement), CONSTRAINT, MISMATCH
        for code in ["1", "19", "2067", "20"] {
            assert!(!transient_code(Some(code)), "{code}");
        }
        // PostgreSQL: connection failure, too many connections, admin
        // shutdown, serialization failure, deadlock
        for code in ["08006", "53300", "57P01", "40001", "40P01"] {
            assert!(transient_code(Some(code)), "{code}");
        }
        // PostgreSQL: syntax error, undefined table, unique violation
        for code in ["42601", "42P01", "23505"] {
            assert!(!transient_code(Some(code)), "{code}");
        }
        assert!(!transient_code(None));
        assert!(sql_error(sqlx::Error::PoolTimedOut).is_transient());
        assert!(!sql_error(sqlx::Error::RowNotFound).is_transient());
    }
}
