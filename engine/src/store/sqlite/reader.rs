//! Reading the SQLite event log: the store's reads, and `sagaflow events`
//! (which opens a file read-only, also while a server writes to it).
//!
//! Each read runs whole on one of the runtime's blocking threads, on a
//! read-only connection of its own (kept for the next read): the query,
//! its rows, and decoding them into events. One hand-off per read, where a
//! driver with a thread per connection hands over every row.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rusqlite::{Connection, OpenFlags};

use super::codec::Dictionaries;
use super::error;
use crate::saga::Timestamp;
use crate::store::{RecordedEvent, StoreError};

/// The columns every read selects, with the stream's and the type's names.
const COLUMNS: &str = "(SELECT name FROM streams WHERE id = stream_id) AS stream, revision, \
                       position, (SELECT name FROM event_types WHERE id = type_id) AS event_type, \
                       schema_version, data, recorded_at";

/// Reads at once, each on a connection of its own (kept between reads);
/// more wait for a turn, as they would for a pool's connection.
const KEPT: usize = 4;

/// A reader of the event log. Clones share its connections.
#[derive(Clone)]
pub struct SqliteReader {
    conns: Arc<Connections>,
    pub(super) dicts: Arc<Dictionaries>,
}

/// Connections to one file, that only read.
struct Connections {
    path: PathBuf,
    /// Opened read-write (never creating), though they only read: the last
    /// connection to a file closes its write-ahead log only if it may write.
    writable: bool,
    /// The page cache of each (`PRAGMA cache_size`), when not SQLite's default.
    cache: Option<&'static str>,
    idle: Mutex<Option<Vec<Connection>>>,
    /// Connections open, idle or in use.
    open: AtomicUsize,
    /// The most connections ever open at once.
    most: AtomicUsize,
    /// A turn per read running; closed with the reader.
    turns: Arc<tokio::sync::Semaphore>,
}

impl Connections {
    fn take(&self) -> Result<Connection, StoreError> {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        let Some(idle) = idle.as_mut() else {
            return Err(StoreError::Unavailable("the event log is closed".into()));
        };
        if let Some(c) = idle.pop() {
            return Ok(c);
        }
        let access = if self.writable {
            OpenFlags::SQLITE_OPEN_READ_WRITE
        } else {
            OpenFlags::SQLITE_OPEN_READ_ONLY
        };
        let flags = access | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let conn = Connection::open_with_flags(&self.path, flags).map_err(error)?;
        conn.busy_timeout(Duration::from_secs(10)).map_err(error)?;
        if let Some(size) = self.cache {
            conn.pragma_update(None, "cache_size", size)
                .map_err(error)?;
        }
        let open = self.open.fetch_add(1, Ordering::SeqCst) + 1;
        self.most.fetch_max(open, Ordering::SeqCst);
        Ok(conn)
    }

    fn give(&self, conn: Connection) {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        match idle.as_mut() {
            Some(idle) if idle.len() < KEPT => idle.push(conn),
            _ => {
                drop(idle);
                self.close(conn);
            }
        }
    }

    fn close(&self, conn: Connection) {
        drop(conn);
        self.open.fetch_sub(1, Ordering::SeqCst);
    }
}

impl SqliteReader {
    /// Opens an existing event log to read it (it never creates, migrates
    /// nor writes one). Beside a stopped server its connections are the
    /// file's last, and they may write so that closing them folds the
    /// write-ahead log into the file and deletes it and the shared-memory
    /// file; a read-only connection leaves both behind. (SQLite opens a
    /// file the process may not write read-only.)
    pub async fn open(path: &Path) -> Result<Self, StoreError> {
        if !path.is_file() {
            return Err(StoreError::Unavailable(format!(
                "{} does not exist",
                path.display()
            )));
        }
        let reader = Self::new(path, None, true);
        reader.run(|c, dicts| dicts.refresh(c)).await?;
        Ok(reader)
    }

    pub(super) fn new(path: &Path, cache: Option<&'static str>, writable: bool) -> Self {
        Self {
            conns: Arc::new(Connections {
                path: path.to_path_buf(),
                writable,
                cache,
                idle: Mutex::new(Some(Vec::new())),
                open: AtomicUsize::new(0),
                most: AtomicUsize::new(0),
                turns: Arc::new(tokio::sync::Semaphore::new(KEPT)),
            }),
            dicts: Arc::new(Dictionaries::default()),
        }
    }

    /// Runs `read` on a connection, on a blocking thread.
    pub(super) async fn run<T: Send + 'static>(
        &self,
        read: impl FnOnce(&Connection, &Dictionaries) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let closed = || StoreError::Unavailable("the event log is closed".into());
        let turn = self.conns.turns.clone().acquire_owned().await;
        let turn = turn.map_err(|_| closed())?;
        let (conns, dicts) = (self.conns.clone(), self.dicts.clone());
        tokio::task::spawn_blocking(move || {
            let conn = conns.take()?;
            let result = read(&conn, &dicts);
            conns.give(conn);
            drop(turn);
            result
        })
        .await
        .map_err(|e| StoreError::Unavailable(format!("a read of the event log failed: {e}")))?
    }

    /// Closes the connections and waits, at most a second, until those in
    /// use have closed too: a writer's connection must close after them,
    /// last, to move the write-ahead log into the file and delete it.
    /// Later reads are refused.
    pub(super) async fn close(&self) {
        self.conns.turns.close();
        let idle = self
            .conns
            .idle
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        for conn in idle.into_iter().flatten() {
            self.conns.close(conn);
        }
        for _ in 0..200 {
            if self.conns.open.load(Ordering::SeqCst) == 0 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// A stream's events from revision `from`.
    pub async fn read_stream(
        &self,
        stream: &str,
        from: u64,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        let stream = stream.to_string();
        self.run(move |c, dicts| {
            let sql = format!(
                "SELECT {COLUMNS} FROM events \
                 WHERE stream_id = (SELECT id FROM streams WHERE name = ?1) AND revision >= ?2 \
                 ORDER BY revision"
            );
            read(c, dicts, &sql, rusqlite::params![stream, from as i64])
        })
        .await
    }

    /// Up to `limit` events of the log after position `after`, in order.
    pub async fn read_all(
        &self,
        after: Option<u64>,
        limit: usize,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        self.run(move |c, dicts| {
            let sql = format!(
                "SELECT {COLUMNS} FROM events WHERE position > ?1 ORDER BY position LIMIT ?2"
            );
            let after = after.map_or(-1, |p| p as i64);
            read(c, dicts, &sql, rusqlite::params![after, limit as i64])
        })
        .await
    }

    /// [`read_all`](Self::read_all), only events of `types`.
    pub(super) async fn read_of_types(
        &self,
        after: Option<u64>,
        limit: usize,
        types: &[&str],
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        // the names as a JSON array: one prepared statement for any number of them
        let names = serde_json::to_string(types).unwrap_or_default();
        self.run(move |c, dicts| {
            let sql = format!(
                "SELECT {COLUMNS} FROM events \
                 WHERE position > ?1 AND type_id IN \
                 (SELECT id FROM event_types WHERE name IN (SELECT value FROM json_each(?2))) \
                 ORDER BY position LIMIT ?3"
            );
            let after = after.map_or(-1, |p| p as i64);
            read(
                c,
                dicts,
                &sql,
                rusqlite::params![after, names, limit as i64],
            )
        })
        .await
    }
}

/// Runs a query of [`COLUMNS`] and decodes its rows, first loading any
/// dictionary another process trained since this one opened the file.
fn read(
    conn: &Connection,
    dicts: &Dictionaries,
    sql: &str,
    params: impl rusqlite::Params,
) -> Result<Vec<RecordedEvent>, StoreError> {
    let mut st = conn.prepare_cached(sql).map_err(error)?;
    let mut rows = st.query(params).map_err(error)?;
    let mut events = Vec::new();
    let mut refreshed = false;
    while let Some(row) = rows.next().map_err(error)? {
        let corrupt = |e: rusqlite::Error| StoreError::Corrupt(e.to_string());
        let data = row.get_ref(5).map_err(corrupt)?.as_bytes();
        let data = data.map_err(|e| StoreError::Corrupt(format!("event data: {e}")))?;
        if !refreshed && dicts.misses(data) {
            dicts.refresh(conn)?;
            refreshed = true;
        }
        events.push(RecordedEvent {
            stream: row.get(0).map_err(corrupt)?,
            revision: row.get::<_, i64>(1).map_err(corrupt)? as u64,
            position: row.get::<_, i64>(2).map_err(corrupt)? as u64,
            event_type: row.get(3).map_err(corrupt)?,
            schema_version: row.get(4).map_err(corrupt)?,
            data: dicts.decode(data)?.into(),
            recorded_at: Timestamp(row.get::<_, i64>(6).map_err(corrupt)? as u64),
        });
    }
    Ok(events)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::sqlite::SqliteStore;
    use crate::store::{EventStore, Expected, NewEvent};

    /// Many reads at once take turns on a few connections, and every one
    /// reads what was written; after `close`, reads are refused.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn many_reads_at_once_share_a_few_connections() {
        let dir = std::env::temp_dir().join(format!("sagaflow-reader-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let store = SqliteStore::open(&dir.join("events.db")).await.unwrap();
        let event = NewEvent {
            event_type: "T".into(),
            schema_version: 1,
            data: serde_json::json!({ "i": 1 }).into(),
        };
        store
            .append("saga-1", Expected::NoStream, vec![event])
            .await
            .unwrap();
        let reader = store.reader.clone();
        // reads that take a while, so that many would run at once
        let reads: Vec<_> = (0..64)
            .map(|_| {
                let r = reader.clone();
                tokio::spawn(async move {
                    r.run(|c, dicts| {
                        std::thread::sleep(Duration::from_millis(10));
                        let sql = format!("SELECT {COLUMNS} FROM events");
                        read(c, dicts, &sql, [])
                    })
                    .await
                })
            })
            .collect();
        for read in reads {
            assert_eq!(read.await.unwrap().unwrap().len(), 1);
        }
        let most = reader.conns.most.load(Ordering::SeqCst);
        assert!(most <= KEPT, "{most} connections at once");
        reader.close().await;
        assert!(matches!(
            reader.read_all(None, 1).await,
            Err(StoreError::Unavailable(_))
        ));
    }
}
