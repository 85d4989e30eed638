//! The read models' two databases behind one face: statements are written
//! once with `$1`-style parameters (SQLite takes them as `?1`), arguments are
//! plain values, rows are decoded by the same code for both.

use std::str::FromStr;
use std::time::Duration;

use sqlx::postgres::{PgPool, PgPoolOptions};
use sqlx::sqlite::{
    SqliteAutoVacuum, SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions,
    SqliteSynchronous,
};
use sqlx::{ColumnIndex, Decode, Row, Type};

use super::writer::Writer;
use crate::store::StoreError;

/// The advisory lock key read-model transactions take on PostgreSQL ("sfrm").
const READ_MODEL_LOCK: i64 = 0x7366_726d;

/// A statement's argument.
#[derive(Debug, Clone)]
pub(crate) enum Arg {
    Int(i64),
    OptInt(Option<i64>),
    Text(String),
    OptText(Option<String>),
    Bool(bool),
}

impl From<i64> for Arg {
    fn from(v: i64) -> Self {
        Arg::Int(v)
    }
}
impl From<Option<i64>> for Arg {
    fn from(v: Option<i64>) -> Self {
        Arg::OptInt(v)
    }
}
impl From<&str> for Arg {
    fn from(v: &str) -> Self {
        Arg::Text(v.to_string())
    }
}
impl From<String> for Arg {
    fn from(v: String) -> Self {
        Arg::Text(v)
    }
}
impl From<&String> for Arg {
    fn from(v: &String) -> Self {
        Arg::Text(v.clone())
    }
}
impl From<Option<String>> for Arg {
    fn from(v: Option<String>) -> Self {
        Arg::OptText(v)
    }
}
impl From<Option<&str>> for Arg {
    fn from(v: Option<&str>) -> Self {
        Arg::OptText(v.map(str::to_string))
    }
}
impl From<bool> for Arg {
    fn from(v: bool) -> Self {
        Arg::Bool(v)
    }
}

/// A statement and its arguments.
/// A statement's text (shared: texts of the same shape are built once) and its arguments.
pub(crate) type Stmt = (std::sync::Arc<str>, Vec<Arg>);

macro_rules! bind_all {
    ($q:expr, $args:expr) => {{
        let mut q = $q;
        for a in $args {
            q = match a {
                Arg::Int(v) => q.bind(*v),
                Arg::OptInt(v) => q.bind(*v),
                Arg::Text(v) => q.bind(v.clone()),
                Arg::OptText(v) => q.bind(v.clone()),
                Arg::Bool(v) => q.bind(*v),
            };
        }
        q
    }};
}

fn db(e: sqlx::Error) -> StoreError {
    crate::store::sql_error(e)
}

pub(crate) fn corrupt(e: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(e.to_string())
}

/// Where the read models live. On SQLite the pool reads and one thread of
/// its own writes ([`Writer`]).
pub(crate) enum Db {
    Sqlite(SqlitePool, Writer),
    Postgres(PgPool),
}

impl Db {
    /// A SQLite file of its own, so the event writer never waits for the read models.
    pub(crate) async fn open_sqlite(path: &std::path::Path) -> Result<Self, StoreError> {
        let options = SqliteConnectOptions::from_str("sqlite://")
            .map_err(db)?
            .filename(path)
            .create_if_missing(true)
            // space freed by retention goes back to the file system (on a new file)
            .auto_vacuum(SqliteAutoVacuum::Incremental)
            .journal_mode(SqliteJournalMode::Wal)
            // Read models are rebuilt from the log, so they need not fsync on every commit.
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(Duration::from_secs(10));
        let pool = SqlitePoolOptions::new()
            .max_connections(2)
            .connect_with(options.pragma("cache_size", crate::store::sqlite::READ_CACHE))
            .await
            .map_err(db)?;
        sqlx::migrate!("../migrations/sqlite-readmodels")
            .run(&pool)
            .await
            .map_err(|e| crate::store::migration_error(e, &path.display().to_string()))?;
        let writer = Writer::start(path)?;
        Ok(Db::Sqlite(pool, writer))
    }

    /// Tables in the schema `read_models` of a PostgreSQL database (the event
    /// log's, or another): a schema of their own, with their own migrations table.
    pub(crate) async fn open_postgres(url: &str) -> Result<Self, StoreError> {
        use sqlx::Connection;
        let unavailable =
            |e: sqlx::Error| StoreError::Unavailable(format!("read models' PostgreSQL: {e}"));
        let options: sqlx::postgres::PgConnectOptions = url
            .parse()
            .map_err(|e| StoreError::Invalid(format!("database URL: {e}")))?;
        let mut conn = sqlx::postgres::PgConnection::connect_with(&options)
            .await
            .map_err(unavailable)?;
        // held until the schema and its tables are made: replicas start together
        let guard = crate::store::postgres::MigrationLock::take(&mut conn).await?;
        sqlx::query("CREATE SCHEMA IF NOT EXISTS read_models")
            .execute(&mut conn)
            .await
            .map_err(unavailable)?;
        let pool = PgPoolOptions::new()
            .max_connections(4)
            .acquire_timeout(Duration::from_secs(10))
            .connect_with(options.options([("search_path", "read_models")]))
            .await
            .map_err(unavailable)?;
        sqlx::migrate!("../migrations/postgres-readmodels")
            .run(&pool)
            .await
            .map_err(|e| {
                crate::store::migration_error(e, "the read models' PostgreSQL database")
            })?;
        guard.release(&mut conn).await?;
        Ok(Db::Postgres(pool))
    }

    /// Closes the connections. On SQLite the readers go first: the last
    /// connection to close checkpoints the write-ahead log into the file and
    /// deletes it. Later reads and writes are refused.
    pub(crate) async fn close(&self) {
        match self {
            Db::Sqlite(pool, writer) => {
                crate::store::sqlite::close_pool(pool).await;
                writer.close().await;
            }
            Db::Postgres(pool) => pool.close().await,
        }
    }

    /// Runs `stmts` in one transaction (on PostgreSQL, one writer at a time across processes).
    /// Gives back the pages removals left free (SQLite, through its
    /// writer; nothing to do on PostgreSQL, whose autovacuum does it).
    pub(crate) async fn reclaim(&self) -> Result<(), StoreError> {
        match self {
            Db::Sqlite(_, writer) => writer.reclaim().await,
            Db::Postgres(_) => Ok(()),
        }
    }

    pub(crate) async fn transaction(&self, stmts: Vec<Stmt>) -> Result<(), StoreError> {
        match self {
            Db::Sqlite(_, writer) => writer.transaction(stmts).await,
            Db::Postgres(pool) => {
                let mut tx = pool.begin().await.map_err(db)?;
                // Replicas sharing the read models write one transaction at a time: their
                // batches overlap and would otherwise lock rows in different orders (deadlock).
                sqlx::query("SELECT pg_advisory_xact_lock($1)")
                    .bind(READ_MODEL_LOCK)
                    .execute(&mut *tx)
                    .await
                    .map_err(db)?;
                for (sql, args) in &stmts {
                    bind_all!(sqlx::query(sql), args)
                        .execute(&mut *tx)
                        .await
                        .map_err(db)?;
                }
                tx.commit().await.map_err(db)
            }
        }
    }

    /// The rows of a query, each decoded by `decode`.
    pub(crate) async fn fetch<T>(
        &self,
        sql: &str,
        args: &[Arg],
        decode: impl Fn(&dyn Columns) -> Result<T, StoreError>,
    ) -> Result<Vec<T>, StoreError> {
        match self {
            Db::Sqlite(pool, _) => {
                let sql = sqlite_params(sql);
                let rows = bind_all!(sqlx::query(&sql), args)
                    .fetch_all(pool)
                    .await
                    .map_err(db)?;
                rows.iter().map(|r| decode(r)).collect()
            }
            Db::Postgres(pool) => {
                let rows = bind_all!(sqlx::query(sql), args)
                    .fetch_all(pool)
                    .await
                    .map_err(db)?;
                rows.iter().map(|r| decode(r)).collect()
            }
        }
    }
}

/// `$1` to `?1`: SQLite's numbered parameters. Statements carry no `$` of their own.
pub(super) fn sqlite_params(sql: &str) -> String {
    sql.replace('$', "?")
}

/// Reading a row's columns, whichever database it came from.
pub(crate) trait Columns {
    fn int(&self, name: &str) -> Result<i64, StoreError>;
    fn opt_int(&self, name: &str) -> Result<Option<i64>, StoreError>;
    fn text(&self, name: &str) -> Result<String, StoreError>;
    fn opt_text(&self, name: &str) -> Result<Option<String>, StoreError>;
    fn boolean(&self, name: &str) -> Result<bool, StoreError>;
}

fn get<'r, R, T>(row: &'r R, name: &str) -> Result<T, StoreError>
where
    R: Row,
    for<'a> &'a str: ColumnIndex<R>,
    T: Decode<'r, R::Database> + Type<R::Database>,
{
    row.try_get(name).map_err(corrupt)
}

macro_rules! columns_for {
    ($row:ty) => {
        impl Columns for $row {
            fn int(&self, name: &str) -> Result<i64, StoreError> {
                get(self, name)
            }
            fn opt_int(&self, name: &str) -> Result<Option<i64>, StoreError> {
                get(self, name)
            }
            fn text(&self, name: &str) -> Result<String, StoreError> {
                get(self, name)
            }
            fn opt_text(&self, name: &str) -> Result<Option<String>, StoreError> {
                get(self, name)
            }
            fn boolean(&self, name: &str) -> Result<bool, StoreError> {
                get(self, name)
            }
        }
    };
}

columns_for!(sqlx::sqlite::SqliteRow);
columns_for!(sqlx::postgres::PgRow);
