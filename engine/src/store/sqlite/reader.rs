//! Reading the SQLite event log: the store's reads, and `sagaflow events`
//! (which opens a file read-only, also while a server writes to it).

use std::path::Path;
use std::sync::Arc;

use sqlx::sqlite::{SqliteConnectOptions, SqlitePool, SqlitePoolOptions, SqliteRow};
use sqlx::Row;

use super::codec::Dictionaries;
use super::db_error;
use crate::saga::Timestamp;
use crate::store::{RecordedEvent, StoreError};

/// The columns every read selects, with the stream's and the type's names.
const COLUMNS: &str = "(SELECT name FROM streams WHERE id = stream_id) AS stream, revision, \
                       position, (SELECT name FROM event_types WHERE id = type_id) AS event_type, \
                       schema_version, data, recorded_at";

pub struct SqliteReader {
    pub(super) pool: SqlitePool,
    pub(super) dicts: Arc<Dictionaries>,
}

impl SqliteReader {
    /// Opens an existing event log read-only (it never creates nor migrates one).
    pub async fn open(path: &Path) -> Result<Self, StoreError> {
        if !path.is_file() {
            return Err(StoreError::Unavailable(format!(
                "{} does not exist",
                path.display()
            )));
        }
        let options = SqliteConnectOptions::new().filename(path).read_only(true);
        let pool = SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(options)
            .await
            .map_err(db_error)?;
        let dicts = Arc::new(Dictionaries::default());
        dicts.refresh(&pool).await?;
        Ok(Self { pool, dicts })
    }

    /// A stream's events from revision `from`.
    pub async fn read_stream(
        &self,
        stream: &str,
        from: u64,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT {COLUMNS} FROM events \
             WHERE stream_id = (SELECT id FROM streams WHERE name = ?1) AND revision >= ?2 \
             ORDER BY revision"
        ))
        .bind(stream)
        .bind(from as i64)
        .fetch_all(&self.pool)
        .await
        .map_err(db_error)?;
        self.decode(&rows).await
    }

    /// Up to `limit` events of the log after position `after`, in order.
    pub async fn read_all(
        &self,
        after: Option<u64>,
        limit: usize,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT {COLUMNS} FROM events WHERE position > ? ORDER BY position LIMIT ?"
        ))
        .bind(after.map_or(-1, |p| p as i64))
        .bind(limit as i64)
        .fetch_all(&self.pool)
        .await
        .map_err(db_error)?;
        self.decode(&rows).await
    }

    /// [`read_all`](Self::read_all), only events of `types`.
    pub(super) async fn read_of_types(
        &self,
        after: Option<u64>,
        limit: usize,
        types: &[&str],
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        let marks = vec!["?"; types.len()].join(", ");
        let sql = format!(
            "SELECT {COLUMNS} FROM events \
             WHERE position > ? AND type_id IN (SELECT id FROM event_types WHERE name IN ({marks})) \
             ORDER BY position LIMIT ?"
        );
        let mut q = sqlx::query(&sql).bind(after.map_or(-1, |p| p as i64));
        for t in types {
            q = q.bind(*t);
        }
        let rows = q
            .bind(limit as i64)
            .fetch_all(&self.pool)
            .await
            .map_err(db_error)?;
        self.decode(&rows).await
    }

    /// Decodes rows of `events`, first loading any dictionary another
    /// process trained since this one opened the file.
    async fn decode(&self, rows: &[SqliteRow]) -> Result<Vec<RecordedEvent>, StoreError> {
        let misses = rows.iter().any(|r| {
            r.try_get::<&[u8], _>("data")
                .is_ok_and(|d| self.dicts.misses(d))
        });
        if misses {
            self.dicts.refresh(&self.pool).await?;
        }
        rows.iter().map(|r| self.row_to_event(r)).collect()
    }

    fn row_to_event(&self, row: &SqliteRow) -> Result<RecordedEvent, StoreError> {
        let corrupt = |e: sqlx::Error| StoreError::Corrupt(e.to_string());
        let data: &[u8] = row.try_get("data").map_err(corrupt)?;
        Ok(RecordedEvent {
            stream: row.try_get("stream").map_err(corrupt)?,
            revision: row.try_get::<i64, _>("revision").map_err(corrupt)? as u64,
            position: row.try_get::<i64, _>("position").map_err(corrupt)? as u64,
            event_type: row.try_get("event_type").map_err(corrupt)?,
            schema_version: u16::try_from(
                row.try_get::<i64, _>("schema_version").map_err(corrupt)?,
            )
            .map_err(|e| StoreError::Corrupt(e.to_string()))?,
            data: self.dicts.decode(data)?,
            recorded_at: Timestamp(row.try_get::<i64, _>("recorded_at").map_err(corrupt)? as u64),
        })
    }
}
