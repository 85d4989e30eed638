//! The SQLite read models' writes. One thread owns a connection and runs each
//! transaction whole: a batch of statements is one hand-off between the
//! runtime and the database, where going through the pool's driver made it
//! one per statement (two thread wake-ups each, which were a third of the
//! projection's time). Reads stay on the pool: WAL lets them run beside the
//! writer.

use std::path::Path;
use std::sync::mpsc;

use rusqlite::types::{ToSqlOutput, Value, ValueRef};
use rusqlite::{Connection, ToSql, TransactionBehavior};
use tokio::sync::oneshot;

use super::sql::{sqlite_params, Arg, Stmt};
use crate::store::sqlite::error;
use crate::store::StoreError;

/// Distinct statements kept prepared: the projection's updates vary with the
/// columns a batch sets and its search inserts with their number of rows;
/// the least recently used go first.
const PREPARED: usize = 256;

enum Job {
    /// Statements to run in one transaction, and where to answer.
    Run(Vec<Stmt>, oneshot::Sender<Result<(), StoreError>>),
    /// Give back the pages removals left free, if enough are
    /// ([`crate::store::sqlite::reclaim`]), between two transactions.
    Reclaim(oneshot::Sender<Result<(), StoreError>>),
    /// Close the connection and end the thread; answered once closed.
    Close(oneshot::Sender<()>),
    /// A transaction that panics half-way (tests of the thread's recovery).
    #[cfg(test)]
    Panic(Vec<Stmt>, oneshot::Sender<Result<(), StoreError>>),
}

/// A handle on the writing thread. Dropping it ends the thread and waits for
/// it (the transaction in hand, then closing the connection), so a server
/// that stops leaves the file closed, its write-ahead log checkpointed.
pub(crate) struct Writer {
    jobs: Option<mpsc::Sender<Job>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Writer {
    fn drop(&mut self) {
        self.jobs.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Writer {
    /// Opens a connection on the file at `path` (made and migrated by the pool)
    /// and starts the thread that writes through it.
    pub(crate) fn start(path: &Path) -> Result<Self, StoreError> {
        let conn = open(path)?;
        let path = path.to_path_buf();
        let (jobs, rx) = mpsc::channel::<Job>();
        let thread = std::thread::Builder::new()
            .name("read-model-writer".into())
            .spawn(move || serve(&path, Some(conn), &rx))
            .map_err(|e| {
                StoreError::Unavailable(format!("starting the read models' writer: {e}"))
            })?;
        Ok(Self {
            jobs: Some(jobs),
            thread: Some(thread),
        })
    }

    /// Runs `stmts` in one transaction: all of them, or none.
    pub(crate) async fn transaction(&self, stmts: Vec<Stmt>) -> Result<(), StoreError> {
        self.send(|done| Job::Run(stmts, done)).await
    }

    /// Gives back the pages removals left free, once an eighth of the file
    /// is (the one writer does it, between transactions).
    pub(crate) async fn reclaim(&self) -> Result<(), StoreError> {
        self.send(Job::Reclaim).await
    }

    async fn send(
        &self,
        job: impl FnOnce(oneshot::Sender<Result<(), StoreError>>) -> Job,
    ) -> Result<(), StoreError> {
        let (done, answer) = oneshot::channel();
        let gone = || StoreError::Unavailable("the read models' writer has stopped".into());
        let jobs = self.jobs.as_ref().ok_or_else(gone)?;
        jobs.send(job(done)).map_err(|_| gone())?;
        answer.await.map_err(|_| gone())?
    }

    /// Closes the connection and ends the thread, without waiting for the
    /// handle's drop (which an `Arc` may put off past the process's exit).
    /// Later transactions are refused as `Unavailable`.
    pub(crate) async fn close(&self) {
        let (done, closed) = oneshot::channel();
        if let Some(jobs) = &self.jobs {
            if jobs.send(Job::Close(done)).is_ok() {
                let _ = closed.await;
            }
        }
    }
}

fn open(path: &Path) -> Result<Connection, StoreError> {
    // NORMAL, as the pool's connections: the read models are rebuilt from the log
    let conn = crate::store::sqlite::open_writing(path, "NORMAL")?;
    conn.set_prepared_statement_cache_capacity(PREPARED);
    Ok(conn)
}

/// The thread: one job after the other until it is told to close or the
/// handle is dropped.
fn serve(path: &Path, mut conn: Option<Connection>, jobs: &mpsc::Receiver<Job>) {
    while let Ok(job) = jobs.recv() {
        // statements to run in a transaction, or none: give back free pages
        let (stmts, done, fail) = match job {
            Job::Run(stmts, done) => (Some(stmts), done, false),
            Job::Reclaim(done) => (None, done, false),
            Job::Close(done) => {
                drop(conn);
                let _ = done.send(());
                return;
            }
            #[cfg(test)]
            Job::Panic(stmts, done) => (Some(stmts), done, true),
        };
        // A panic (a bug) fails its own job, not the thread: the
        // projection retries, and later transactions go on.
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let c = match conn.as_mut() {
                Some(c) => c,
                None => conn.insert(open(path)?),
            };
            match &stmts {
                Some(stmts) => run(c, stmts, fail),
                None => crate::store::sqlite::reclaim(c),
            }
        }))
        .unwrap_or_else(|panic| {
            let why = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_default();
            tracing::error!("the read models' writer panicked: {why}");
            // whatever state the connection was left in, it goes
            conn = None;
            Err(StoreError::Unavailable(format!(
                "the read models' writer failed: {why}"
            )))
        });
        // A failed statement, commit or rollback (a full disk) can leave the
        // transaction open and the file write-locked by this connection:
        // closing it is the one sure way to let go; the next job opens anew.
        if result.is_err() && conn.as_ref().is_some_and(|c| !c.is_autocommit()) {
            conn = None;
        }
        let _ = done.send(result);
    }
}

/// Runs `stmts` in a transaction; `fail`: panics after them, before the commit.
fn run(conn: &mut Connection, stmts: &[Stmt], fail: bool) -> Result<(), StoreError> {
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(error)?;
    for (sql, args) in stmts {
        let mut st = tx.prepare_cached(&sqlite_params(sql)).map_err(error)?;
        for (i, a) in args.iter().enumerate() {
            st.raw_bind_parameter(i + 1, a).map_err(error)?;
        }
        st.raw_execute().map_err(error)?;
    }
    assert!(!fail, "a transaction told to fail");
    tx.commit().map_err(error)
}

impl ToSql for Arg {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(match self {
            Arg::Int(v) => ToSqlOutput::Owned(Value::Integer(*v)),
            Arg::OptInt(v) => ToSqlOutput::Owned(v.map_or(Value::Null, Value::Integer)),
            Arg::Text(v) => ToSqlOutput::Borrowed(ValueRef::Text(v.as_bytes())),
            Arg::OptText(v) => match v {
                Some(v) => ToSqlOutput::Borrowed(ValueRef::Text(v.as_bytes())),
                None => ToSqlOutput::Owned(Value::Null),
            },
            Arg::Bool(v) => ToSqlOutput::Owned(Value::Integer(i64::from(*v))),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::super::sql::Db;
    use super::*;

    async fn db(name: &str) -> Db {
        let dir =
            std::env::temp_dir().join(format!("sagaflow-writer-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let db = Db::open_sqlite(&dir.join("readmodels.db")).await.unwrap();
        db.transaction(vec![(
            "CREATE TABLE t (k INTEGER PRIMARY KEY, i INTEGER, s TEXT, b INTEGER)".into(),
            vec![],
        )])
        .await
        .unwrap();
        db
    }

    fn insert(k: i64, s: Option<&str>) -> Stmt {
        (
            "INSERT INTO t (k, i, s, b) VALUES ($1, $2, $3, $4)".into(),
            vec![k.into(), Arg::OptInt(None), s.into(), true.into()],
        )
    }

    async fn keys(db: &Db) -> Vec<i64> {
        db.fetch("SELECT k FROM t ORDER BY k", &[], |r| r.int("k"))
            .await
            .unwrap()
    }

    /// Every kind of argument arrives as the pool's readers decode it.
    #[tokio::test]
    async fn arguments_read_back_through_the_pool() {
        let db = db("args").await;
        db.transaction(vec![insert(1, Some("x")), insert(2, None)])
            .await
            .unwrap();
        let rows = db
            .fetch("SELECT * FROM t ORDER BY k", &[], |r| {
                Ok((r.opt_int("i")?, r.opt_text("s")?, r.boolean("b")?))
            })
            .await
            .unwrap();
        assert_eq!(rows, [(None, Some("x".into()), true), (None, None, true)]);
    }

    /// Rows deleted leave free pages; once they are an eighth of the file,
    /// the writer gives them back (between its transactions, on its own
    /// connection), and the next transaction runs.
    #[tokio::test]
    async fn the_writer_gives_back_the_pages_deleted_rows_left() {
        let db = db("reclaim").await;
        let pad = "x".repeat(2_000);
        let rows: Vec<Stmt> = (0..400).map(|k| insert(k, Some(&pad))).collect();
        db.transaction(rows).await.unwrap();
        db.transaction(vec![("DELETE FROM t WHERE k >= 20".into(), vec![])])
            .await
            .unwrap();
        let pragma = |name: &'static str| {
            let db = &db;
            async move {
                db.fetch(&format!("PRAGMA {name}"), &[], |r| r.int(name))
                    .await
                    .unwrap()[0]
            }
        };
        let (free, pages) = (pragma("freelist_count").await, pragma("page_count").await);
        assert!(free * 2 > pages, "{free} of {pages} pages free");
        db.reclaim().await.unwrap();
        assert_eq!(pragma("freelist_count").await, 0);
        assert!(pragma("page_count").await < pages / 2);
        db.transaction(vec![insert(1_000, None)]).await.unwrap();
        assert_eq!(keys(&db).await.len(), 21);
    }

    /// Dropping the writer returns once its connection is closed: the last
    /// connection to close checkpoints the write-ahead log and deletes it.
    #[tokio::test]
    async fn a_dropped_writer_has_closed_the_file() {
        let dir = std::env::temp_dir().join(format!("sagaflow-writer-{}-drop", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("readmodels.db");
        if let Db::Sqlite(pool, _) = Db::open_sqlite(&path).await.unwrap() {
            pool.close().await;
        }
        let writer = Writer::start(&path).unwrap();
        writer
            .transaction(vec![("CREATE TABLE t (k INTEGER)".into(), vec![])])
            .await
            .unwrap();
        assert!(dir.join("readmodels.db-wal").exists());
        drop(writer);
        assert!(!dir.join("readmodels.db-wal").exists());
    }

    /// A statement that fails undoes the ones before it in its transaction,
    /// says why, and leaves the writer able to take the next transaction.
    #[tokio::test]
    async fn a_failed_transaction_leaves_nothing_and_the_next_one_runs() {
        let db = db("atomic").await;
        db.transaction(vec![insert(1, None)]).await.unwrap();
        let e = db
            .transaction(vec![insert(2, None), insert(1, None)])
            .await
            .unwrap_err();
        assert!(
            matches!(e, StoreError::Invalid(ref m) if m.contains("UNIQUE")),
            "{e:?}"
        );
        undone_and_the_next_runs(&db).await;
    }

    /// After a failed transaction over row 1: only row 1 is there, and the
    /// next transaction runs.
    async fn undone_and_the_next_runs(db: &Db) {
        assert_eq!(keys(db).await, [1], "the failed transaction was undone");
        db.transaction(vec![insert(3, None)]).await.unwrap();
        assert_eq!(keys(db).await, [1, 3]);
    }

    /// A transaction that panics (a bug) fails alone: its statements are
    /// undone, the thread lives on, and the next transaction runs.
    #[tokio::test]
    async fn a_panicking_transaction_leaves_nothing_and_the_next_one_runs() {
        let db = db("panic").await;
        let Db::Sqlite(_, writer) = &db else {
            unreachable!("a SQLite file")
        };
        db.transaction(vec![insert(1, None)]).await.unwrap();
        let e = writer
            .send(|done| Job::Panic(vec![insert(2, None)], done))
            .await
            .unwrap_err();
        assert!(
            matches!(e, StoreError::Unavailable(ref m) if m.contains("told to fail")),
            "{e:?}"
        );
        undone_and_the_next_runs(&db).await;
    }
}
