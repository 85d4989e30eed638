//! PostgreSQL, for single-database deployments and replicas sharing one store.
//!
//! Like the SQLite store, one writer task per process takes every append
//! waiting in its queue into one transaction (group commit). Positions are
//! given out under a transaction-scoped advisory lock, so they grow in commit
//! order with no gaps even when several processes write: a follower reading
//! "after position p" never misses an event that commits later with a lower
//! position. Each commit sends `NOTIFY sagaflow_events` with the new head, so
//! every process's followers wake on every process's writes.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::postgres::{PgConnectOptions, PgConnection, PgListener, PgPool, PgPoolOptions};
use sqlx::{Connection, Row};
use tokio::sync::{mpsc, watch};

use super::{
    AppendRequest, Appended, EventRef, EventStore, Expected, NewEvent, RecordedEvent, StoreError,
    Tombstone,
};
use crate::saga::{Clock, SystemClock, Timestamp};

/// The most appends one transaction takes.
const MAX_BATCH: usize = 512;
/// Forgotten wholesale past this many streams.
const HEAD_CACHE: usize = 65_536;
/// The advisory lock that orders every writer's transactions.
const POSITION_LOCK: i64 = 0x5a6a_f10e;
const CHANNEL: &str = "sagaflow_events";

/// The advisory lock under which one process at a time creates schemas and
/// migrates (replicas often start together on a fresh database).
const MIGRATION_LOCK: i64 = 0x5a6a_f10f;

/// Holds [`MIGRATION_LOCK`] on one connection (a session lock: it goes with the
/// connection if the process dies).
pub(crate) struct MigrationLock(());

impl MigrationLock {
    pub(crate) async fn take(conn: &mut PgConnection) -> Result<Self, StoreError> {
        sqlx::query("SELECT pg_advisory_lock($1)")
            .bind(MIGRATION_LOCK)
            .execute(&mut *conn)
            .await
            .map_err(|e| StoreError::Unavailable(format!("taking the migration lock: {e}")))?;
        Ok(Self(()))
    }

    pub(crate) async fn release(self, conn: &mut PgConnection) -> Result<(), StoreError> {
        sqlx::query("SELECT pg_advisory_unlock($1)")
            .bind(MIGRATION_LOCK)
            .execute(&mut *conn)
            .await
            .map_err(|e| StoreError::Unavailable(format!("releasing the migration lock: {e}")))?;
        Ok(())
    }
}

pub struct PostgresStore {
    queue: mpsc::Sender<AppendRequest>,
    reads: PgPool,
    head: watch::Receiver<Option<u64>>,
    where_: String,
}

fn db_error(e: sqlx::Error) -> StoreError {
    super::sql_error(e)
}

impl PostgresStore {
    /// Connects to `url` (`postgres://user:password@host:port/database`) and runs the event log's migrations.
    pub async fn open(url: &str) -> Result<Self, StoreError> {
        let options: PgConnectOptions = url
            .parse()
            .map_err(|e| StoreError::Invalid(format!("database URL: {e}")))?;
        let where_ = format!(
            "{}:{}/{}",
            options.get_host(),
            options.get_port(),
            options.get_database().unwrap_or_default()
        );
        let mut writer = PgConnection::connect_with(&options).await.map_err(|e| {
            StoreError::Unavailable(format!("cannot connect to PostgreSQL at {where_}: {e}"))
        })?;
        let guard = MigrationLock::take(&mut writer).await?;
        sqlx::migrate!("../migrations/postgres")
            .run(&mut writer)
            .await
            .map_err(|e| super::migration_error(e, &format!("PostgreSQL {where_}")))?;
        guard.release(&mut writer).await?;
        let reads = PgPoolOptions::new()
            .max_connections(8)
            .acquire_timeout(Duration::from_secs(10))
            .connect_with(options.clone())
            .await
            .map_err(db_error)?;
        let last: Option<i64> = sqlx::query_scalar("SELECT MAX(position) FROM events")
            .fetch_one(&reads)
            .await
            .map_err(db_error)?;
        let (head_tx, head) = watch::channel(last.map(|p| p as u64));
        let head_tx = Arc::new(head_tx);
        let mut listener = PgListener::connect_with(&reads).await.map_err(db_error)?;
        listener.listen(CHANNEL).await.map_err(db_error)?;
        tokio::spawn(listen_loop(listener, head_tx.clone()));
        let (queue, rx) = mpsc::channel(4096);
        tokio::spawn(write_loop(writer, options, rx, head_tx));
        Ok(Self {
            queue,
            reads,
            head,
            where_,
        })
    }
}

/// Moves the head on every process's commits.
async fn listen_loop(mut listener: PgListener, head: Arc<watch::Sender<Option<u64>>>) {
    loop {
        // `recv` reconnects by itself after a lost connection
        match listener.recv().await {
            Ok(n) => {
                if let Ok(p) = n.payload().parse::<u64>() {
                    super::advance_head(&head, p);
                }
            }
            Err(e) => {
                if head.is_closed() {
                    return;
                }
                tracing::warn!(error = %e, "listening for new events failed; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
        if head.is_closed() {
            return;
        }
    }
}

async fn write_loop(
    mut conn: PgConnection,
    options: PgConnectOptions,
    mut rx: mpsc::Receiver<AppendRequest>,
    head: Arc<watch::Sender<Option<u64>>>,
) {
    let mut heads: HashMap<String, Option<u64>> = HashMap::new();
    while let Some(first) = rx.recv().await {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(r) => batch.push(r),
                Err(_) => break,
            }
        }
        let began = std::time::Instant::now();
        let mut outcome = write_batch(&mut conn, &batch, &mut heads).await;
        if matches!(outcome, Err(Batch::Stale)) {
            // another process wrote a stream whose head we cached: forget them all, once more
            heads.clear();
            outcome = write_batch(&mut conn, &batch, &mut heads).await;
        }
        let results = match outcome {
            Ok(results) => results,
            Err(Batch::Stale) => batch
                .iter()
                .map(|_| {
                    Err(StoreError::Unavailable(
                        "streams kept moving under this writer; retry".into(),
                    ))
                })
                .collect(),
            Err(Batch::Failed(e)) => {
                // the connection may be gone: every append of the batch fails (nothing was
                // committed), and the next batch gets a new connection
                tracing::warn!(error = %e, "PostgreSQL write failed");
                heads.clear();
                if let Ok(fresh) = PgConnection::connect_with(&options).await {
                    conn = fresh;
                }
                batch.iter().map(|_| Err(e.clone())).collect()
            }
        };
        crate::telemetry::store_commit(began.elapsed().as_secs_f64(), batch.len());
        if let Some(p) = results
            .iter()
            .filter_map(|r| r.as_ref().ok())
            .map(|a| a.position)
            .max()
        {
            super::advance_head(&head, p);
        }
        for (req, result) in batch.into_iter().zip(results) {
            let _ = req.reply.send(result);
        }
    }
    let _ = conn.close().await;
}

/// Why a batch's transaction did not commit.
enum Batch {
    /// A cached stream head was stale: try again with fresh ones.
    Stale,
    Failed(StoreError),
}

impl From<StoreError> for Batch {
    fn from(e: StoreError) -> Self {
        Batch::Failed(e)
    }
}

/// One transaction for the batch; an append whose expectation fails is left out, the others commit.
async fn write_batch(
    conn: &mut PgConnection,
    batch: &[AppendRequest],
    heads: &mut HashMap<String, Option<u64>>,
) -> Result<Vec<Result<Appended, StoreError>>, Batch> {
    let mut tx = conn.begin().await.map_err(db_error)?;
    sqlx::query("SELECT pg_advisory_xact_lock($1)")
        .bind(POSITION_LOCK)
        .execute(&mut *tx)
        .await
        .map_err(db_error)?;
    let mut position: i64 = sqlx::query_scalar("SELECT position FROM log_head")
        .fetch_one(&mut *tx)
        .await
        .map_err(db_error)?;
    let now = SystemClock.now();
    let mut local: HashMap<String, Option<u64>> = HashMap::new();
    let mut results = Vec::with_capacity(batch.len());
    for req in batch {
        if req.events.is_empty() {
            results.push(Err(StoreError::empty_append()));
            continue;
        }
        let mut known = local.get(&req.stream).copied();
        let cached = known.is_none();
        if cached {
            known = heads.get(&req.stream).copied();
        }
        let last = match known {
            // A head cached from an earlier batch may be stale (another process wrote the
            // stream); it is trusted only when it admits the append, and the insert checks that.
            Some(l) if !cached || req.expected.admits(l) => l,
            _ => {
                let (l, removed): (Option<i64>, Option<i64>) = sqlx::query_as(
                    "SELECT (SELECT MAX(revision) FROM events WHERE stream = $1), \
                     (SELECT removed_at FROM removed_streams WHERE stream = $1)",
                )
                .bind(&req.stream)
                .fetch_one(&mut *tx)
                .await
                .map_err(db_error)?;
                if let Some(at) = removed {
                    results.push(Err(StoreError::Removed {
                        stream: req.stream.clone(),
                        removed_at: Some(Timestamp(at as u64)),
                    }));
                    continue;
                }
                l.map(|l| l as u64)
            }
        };
        if !req.expected.admits(last) {
            local.insert(req.stream.clone(), last);
            results.push(Err(StoreError::Conflict {
                stream: req.stream.clone(),
                expected: req.expected,
                actual: last,
            }));
            continue;
        }
        let first_revision = last.map_or(0, |l| l + 1);
        let n = req.events.len();
        let positions: Vec<i64> = (1..=n as i64).map(|i| position + i).collect();
        let revisions: Vec<i64> = (0..n as i64).map(|i| first_revision as i64 + i).collect();
        let types: Vec<&str> = req.events.iter().map(|e| e.event_type.as_str()).collect();
        let versions: Vec<i32> = req
            .events
            .iter()
            .map(|e| i32::from(e.schema_version))
            .collect();
        let data: Vec<String> = req.events.iter().map(|e| e.data.json_text()).collect();
        let inserted = sqlx::query(
            "INSERT INTO events (position, stream, revision, event_type, schema_version, data, recorded_at) \
             SELECT p, $2, r, t, v, d::jsonb, $7 FROM UNNEST($1::bigint[], $3::bigint[], $4::text[], $5::int[], $6::text[]) AS x(p, r, t, v, d) \
             WHERE NOT EXISTS (SELECT 1 FROM removed_streams WHERE stream = $2) \
             ON CONFLICT (stream, revision) DO NOTHING",
        )
        .bind(&positions)
        .bind(&req.stream)
        .bind(&revisions)
        .bind(&types)
        .bind(&versions)
        .bind(&data)
        .bind(now.millis() as i64)
        .execute(&mut *tx)
        .await
        .map_err(db_error)?;
        if inserted.rows_affected() != n as u64 {
            // another process wrote (or removed) the stream since we cached its head; the transaction
            // (with any rows of this append that did go in) is dropped, so rolled back
            return Err(Batch::Stale);
        }
        position += n as i64;
        let revision = first_revision + n as u64 - 1;
        local.insert(req.stream.clone(), Some(revision));
        results.push(Ok(Appended {
            revision,
            position: position as u64,
        }));
    }
    if results.iter().any(Result::is_ok) {
        sqlx::query("UPDATE log_head SET position = $1")
            .bind(position)
            .execute(&mut *tx)
            .await
            .map_err(db_error)?;
        sqlx::query("SELECT pg_notify($1, $2)")
            .bind(CHANNEL)
            .bind(position.to_string())
            .execute(&mut *tx)
            .await
            .map_err(db_error)?;
    }
    tx.commit()
        .await
        .map_err(|e| StoreError::Unavailable(format!("commit failed: {e}")))?;
    if heads.len() + local.len() > HEAD_CACHE {
        heads.clear();
    }
    heads.extend(local);
    Ok(results)
}

fn row_to_event(row: &sqlx::postgres::PgRow) -> Result<RecordedEvent, StoreError> {
    let corrupt = |e: sqlx::Error| StoreError::Corrupt(e.to_string());
    let data: String = row.try_get("data").map_err(corrupt)?;
    Ok(RecordedEvent {
        stream: row.try_get("stream").map_err(corrupt)?,
        revision: row.try_get::<i64, _>("revision").map_err(corrupt)? as u64,
        position: row.try_get::<i64, _>("position").map_err(corrupt)? as u64,
        event_type: row.try_get("event_type").map_err(corrupt)?,
        schema_version: u16::try_from(row.try_get::<i32, _>("schema_version").map_err(corrupt)?)
            .map_err(|e| StoreError::Corrupt(e.to_string()))?,
        data: serde_json::from_str::<serde_json::Value>(&data)
            .map_err(|e| StoreError::Corrupt(format!("event data: {e}")))?
            .into(),
        recorded_at: Timestamp(row.try_get::<i64, _>("recorded_at").map_err(corrupt)? as u64),
    })
}

const COLUMNS: &str =
    "stream, revision, position, event_type, schema_version, data::text AS data, recorded_at";

#[async_trait]
impl EventStore for PostgresStore {
    async fn append(
        &self,
        stream: &str,
        expected: Expected,
        events: Vec<NewEvent>,
    ) -> Result<Appended, StoreError> {
        super::submit(&self.queue, stream, expected, events).await
    }

    async fn read_stream(&self, stream: &str, from: u64) -> Result<Vec<RecordedEvent>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT {COLUMNS} FROM events WHERE stream = $1 AND revision >= $2 ORDER BY revision"
        ))
        .bind(stream)
        .bind(from as i64)
        .fetch_all(&self.reads)
        .await
        .map_err(db_error)?;
        rows.iter().map(row_to_event).collect()
    }

    async fn read_all_refs(
        &self,
        after: Option<u64>,
        limit: usize,
    ) -> Result<Vec<EventRef>, StoreError> {
        let rows = sqlx::query(
            "SELECT stream, revision, position, event_type FROM events WHERE position > $1 ORDER BY position LIMIT $2",
        )
        .bind(after.map_or(0, |p| p as i64))
        .bind(limit as i64)
        .fetch_all(&self.reads)
        .await
        .map_err(db_error)?;
        let corrupt = |e: sqlx::Error| StoreError::Corrupt(e.to_string());
        rows.iter()
            .map(|row| {
                Ok(EventRef {
                    stream: row.try_get("stream").map_err(corrupt)?,
                    revision: row.try_get::<i64, _>("revision").map_err(corrupt)? as u64,
                    position: row.try_get::<i64, _>("position").map_err(corrupt)? as u64,
                    event_type: row.try_get("event_type").map_err(corrupt)?,
                })
            })
            .collect()
    }

    async fn remove(&self, streams: &[String], at: Timestamp) -> Result<(), StoreError> {
        let mut tx = self.reads.begin().await.map_err(db_error)?;
        // in line with the writers: an append committing meanwhile would escape the delete
        sqlx::query("SELECT pg_advisory_xact_lock($1)")
            .bind(POSITION_LOCK)
            .execute(&mut *tx)
            .await
            .map_err(db_error)?;
        sqlx::query("DELETE FROM events WHERE stream = ANY($1)")
            .bind(streams)
            .execute(&mut *tx)
            .await
            .map_err(db_error)?;
        sqlx::query(
            "INSERT INTO removed_streams (stream, removed_at) SELECT s, $2 FROM UNNEST($1::text[]) AS s \
             ON CONFLICT DO NOTHING",
        )
        .bind(streams)
        .bind(at.millis() as i64)
        .execute(&mut *tx)
        .await
        .map_err(db_error)?;
        tx.commit().await.map_err(db_error)
    }

    async fn tombstone(&self, stream: &str) -> Result<Option<Tombstone>, StoreError> {
        let at: Option<i64> =
            sqlx::query_scalar("SELECT removed_at FROM removed_streams WHERE stream = $1")
                .bind(stream)
                .fetch_optional(&self.reads)
                .await
                .map_err(db_error)?;
        Ok(at.map(|at| Tombstone {
            removed_at: Some(Timestamp(at as u64)),
        }))
    }

    async fn forget_removed(&self, before: Timestamp) -> Result<u64, StoreError> {
        let done = sqlx::query("DELETE FROM removed_streams WHERE removed_at < $1")
            .bind(before.millis() as i64)
            .execute(&self.reads)
            .await
            .map_err(db_error)?;
        Ok(done.rows_affected())
    }

    async fn trim(&self, stream: &str, before: u64) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM events WHERE stream = $1 AND revision < $2")
            .bind(stream)
            .bind(before as i64)
            .execute(&self.reads)
            .await
            .map_err(db_error)?;
        Ok(())
    }

    async fn read_all(
        &self,
        after: Option<u64>,
        limit: usize,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT {COLUMNS} FROM events WHERE position > $1 ORDER BY position LIMIT $2"
        ))
        .bind(after.map_or(0, |p| p as i64))
        .bind(limit as i64)
        .fetch_all(&self.reads)
        .await
        .map_err(db_error)?;
        rows.iter().map(row_to_event).collect()
    }

    async fn read_all_of_types(
        &self,
        after: Option<u64>,
        limit: usize,
        types: &[&str],
    ) -> Result<(Vec<RecordedEvent>, Option<u64>), StoreError> {
        // Positions are given out in commit order, so everything up to the newest committed position is readable.
        let head: Option<i64> = sqlx::query_scalar("SELECT MAX(position) FROM events")
            .fetch_one(&self.reads)
            .await
            .map_err(db_error)?;
        let rows = sqlx::query(&format!(
            "SELECT {COLUMNS} FROM events WHERE position > $1 AND position <= $2 AND event_type = ANY($3) ORDER BY position LIMIT $4"
        ))
        .bind(after.map_or(0, |p| p as i64))
        .bind(head.unwrap_or(0))
        .bind(types)
        .bind(limit as i64)
        .fetch_all(&self.reads)
        .await
        .map_err(db_error)?;
        let events: Vec<RecordedEvent> = rows.iter().map(row_to_event).collect::<Result<_, _>>()?;
        let last = events.last().map(|e| e.position);
        let scanned = if events.len() < limit {
            last.max(head.map(|h| h as u64)).max(after)
        } else {
            last
        };
        Ok((events, scanned))
    }

    fn head(&self) -> watch::Receiver<Option<u64>> {
        self.head.clone()
    }

    fn durability(&self) -> String {
        format!(
            "PostgreSQL {} (committed per group of appends; durability as the server's synchronous_commit)",
            self.where_
        )
    }
}

/// A fresh, empty database for one test, on the server the test command starts
/// (`scripts/postgres.sh`; `SAGAFLOW_TEST_POSTGRES` points elsewhere). Returns its URL.
#[doc(hidden)]
pub async fn test_database(name: &str) -> String {
    let base = std::env::var("SAGAFLOW_TEST_POSTGRES")
        .unwrap_or_else(|_| "postgres://sagaflow:sagaflow@127.0.0.1:5432/sagaflow".into());
    let db = format!("sagaflow_t{}_{name}", std::process::id()).to_lowercase();
    let mut admin = PgConnection::connect(&base).await.unwrap_or_else(|e| {
        panic!("PostgreSQL at {base} does not answer ({e}): start it with ./scripts/postgres.sh")
    });
    sqlx::query(&format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)"))
        .execute(&mut admin)
        .await
        .expect("drop the test database");
    sqlx::query(&format!("CREATE DATABASE {db}"))
        .execute(&mut admin)
        .await
        .expect("create the test database");
    let (prefix, _) = base.rsplit_once('/').expect("a database URL");
    format!("{prefix}/{db}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::conformance;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn conforms() {
        let n = std::sync::atomic::AtomicUsize::new(0);
        conformance::run(|| {
            let i = n.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            async move {
                let url = test_database(&format!("conf{i}")).await;
                PostgresStore::open(&url).await.expect("open")
            }
        })
        .await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn survives_restart() {
        let url = test_database("restart").await;
        conformance::survives_restart(|| {
            let url = url.clone();
            async move { PostgresStore::open(&url).await.expect("open") }
        })
        .await;
    }

    fn event(n: u64) -> NewEvent {
        NewEvent {
            event_type: "Tick".into(),
            schema_version: 1,
            data: serde_json::json!({ "n": n }).into(),
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn two_processes_share_one_log_without_gaps_or_lost_conflicts() {
        let url = test_database("shared").await;
        let a = Arc::new(PostgresStore::open(&url).await.unwrap());
        let b = Arc::new(PostgresStore::open(&url).await.unwrap());
        let mut b_head = b.head();
        // each writer appends to the same 20 streams, always expecting what it last saw
        let writer = |store: Arc<PostgresStore>| async move {
            let mut ok = 0;
            let mut conflicts = 0;
            for round in 0..10u64 {
                for s in 0..20 {
                    let stream = format!("s-{s}");
                    let seen = store.read_stream(&stream, 0).await.unwrap().len() as u64;
                    match store
                        .append(&stream, Expected::after(seen), vec![event(round)])
                        .await
                    {
                        Ok(_) => ok += 1,
                        Err(e) if e.is_conflict() => conflicts += 1,
                        Err(e) => panic!("{e}"),
                    }
                }
            }
            (ok, conflicts)
        };
        let (ra, rb) = tokio::join!(
            tokio::spawn(writer(a.clone())),
            tokio::spawn(writer(b.clone()))
        );
        let ((oka, ca), (okb, cb)) = (ra.unwrap(), rb.unwrap());
        assert_eq!(oka + ca, 200);
        assert_eq!(okb + cb, 200);
        let all = a.read_all(None, 10_000).await.unwrap();
        assert_eq!(
            all.len(),
            oka + okb,
            "every acknowledged append is stored, nothing else"
        );
        assert!(
            all.iter()
                .enumerate()
                .all(|(i, e)| e.position == i as u64 + 1),
            "positions have no gaps"
        );
        for s in 0..20 {
            let events = a.read_stream(&format!("s-{s}"), 0).await.unwrap();
            assert!(events
                .iter()
                .enumerate()
                .all(|(i, e)| e.revision == i as u64));
        }
        // a's cached head of `x` goes stale when b writes it; an append expecting the truth still lands
        a.append("x", Expected::NoStream, vec![event(0)])
            .await
            .unwrap();
        b.append("x", Expected::Revision(0), vec![event(1)])
            .await
            .unwrap();
        let third = a.append("x", Expected::Revision(1), vec![event(2)]).await;
        assert_eq!(third.unwrap().revision, 2);
        let stale = a.append("x", Expected::Revision(1), vec![event(3)]).await;
        assert!(stale.unwrap_err().is_conflict());
        // b hears about a's commits
        let all = a.read_all(None, 10_000).await.unwrap();
        let last = all.last().unwrap().position;
        tokio::time::timeout(
            Duration::from_secs(10),
            b_head.wait_for(|h| *h == Some(last)),
        )
        .await
        .expect("b's head reached the log's end")
        .unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_database_from_a_newer_version_is_refused() {
        let url = test_database("newer").await;
        drop(PostgresStore::open(&url).await.unwrap());
        let mut conn = PgConnection::connect(&url).await.unwrap();
        sqlx::query("INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time) VALUES (9999, 'from the future', true, '\\x00', 0)")
            .execute(&mut conn)
            .await
            .unwrap();
        let err = PostgresStore::open(&url).await.err().expect("refused");
        assert!(err.to_string().contains("newer version"), "{err}");
    }
}
