//! Read models: projections follow the event log from a checkpoint and keep
//! tables that status queries read. The checkpoint is written in the same
//! transaction as the rows, so replaying a batch is harmless.
//!
//! `saga_instances`: one row per instance (workflow, status, current step,
//! attempts, error, times). The runtime uses it on start to find the
//! instances to resume.

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use serde::Serialize;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use sqlx::Row;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::saga::{Event, Phase, Timestamp};
use crate::store::{EventStore, RecordedEvent, StoreError};

const NAME: &str = "saga_instances";
/// The events that change a row; the others are not even read.
const TYPES: [&str; 8] = [
    "SagaStarted",
    "StepStarted",
    "StepFailed",
    "CompensationFailed",
    "SagaCompleted",
    "SagaCompensated",
    "SagaFailed",
    "SagaCancelled",
];
const BATCH: usize = 1000;

/// A row of `saga_instances`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct InstanceRow {
    pub id: Uuid,
    pub workflow: String,
    pub version: u32,
    pub status: String,
    pub current_step: Option<String>,
    pub attempts: u32,
    pub error: Option<String>,
    pub started_at: Timestamp,
    pub updated_at: Timestamp,
    pub finished_at: Option<Timestamp>,
}

pub struct Projections {
    pool: SqlitePool,
}

fn db(e: sqlx::Error) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

impl Projections {
    /// Opens (creating and migrating) the read models in the SQLite file at
    /// `path`: a file of their own, so the event writer never waits for them.
    pub async fn open(path: &Path) -> Result<Self, StoreError> {
        let options = SqliteConnectOptions::from_str("sqlite://")
            .map_err(db)?
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            // Read models are rebuilt from the log, so they need not fsync on every commit.
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(Duration::from_secs(10));
        let pool = SqlitePoolOptions::new()
            .max_connections(2)
            .connect_with(options)
            .await
            .map_err(db)?;
        sqlx::migrate!("../migrations/sqlite-readmodels")
            .run(&pool)
            .await
            .map_err(|e| StoreError::Invalid(format!("migrating {}: {e}", path.display())))?;
        Ok(Self { pool })
    }

    pub async fn checkpoint(&self) -> Result<Option<u64>, StoreError> {
        let p: Option<i64> =
            sqlx::query_scalar("SELECT position FROM projection_checkpoints WHERE name = ?")
                .bind(NAME)
                .fetch_optional(&self.pool)
                .await
                .map_err(db)?;
        Ok(p.map(|p| p as u64))
    }

    /// Applies every event after the checkpoint; returns how many were read.
    pub async fn catch_up(&self, store: &dyn EventStore) -> Result<usize, StoreError> {
        let mut total = 0;
        loop {
            let after = self.checkpoint().await?;
            let (batch, scanned) = store.read_all_of_types(after, BATCH, &TYPES).await?;
            if scanned <= after {
                return Ok(total);
            }
            total += batch.len();
            self.apply(&batch, scanned).await?;
        }
    }

    /// Follows the log until `stop` fires.
    pub async fn follow(&self, store: &dyn EventStore, stop: CancellationToken) {
        let mut head = store.head();
        loop {
            if let Err(e) = self.catch_up(store).await {
                tracing::warn!(error = %e, "projection could not catch up; retrying");
                tokio::select! {
                    () = stop.cancelled() => return,
                    () = tokio::time::sleep(Duration::from_secs(1)) => continue,
                }
            }
            tokio::select! {
                () = stop.cancelled() => return,
                changed = head.changed() => if changed.is_err() { return },
            }
        }
    }

    async fn apply(&self, batch: &[RecordedEvent], scanned: Option<u64>) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await.map_err(db)?;
        for rec in batch {
            let Some(id) = rec.stream.strip_prefix("saga-") else {
                continue;
            };
            let event = match rec.to_event() {
                Ok(e) => e,
                Err(e) => {
                    tracing::error!(stream = %rec.stream, position = rec.position, error = %e, "skipping an unreadable event");
                    continue;
                }
            };
            let pos = rec.position as i64;
            let q = match &event {
                Event::SagaStarted { workflow, version, started_at, .. } => sqlx::query(
                    "INSERT INTO saga_instances (id, workflow, version, status, started_at, updated_at, last_position) \
                     VALUES (?, ?, ?, 'running', ?, ?, ?) ON CONFLICT (id) DO NOTHING",
                )
                .bind(id)
                .bind(workflow)
                .bind(i64::from(*version))
                .bind(started_at.millis() as i64)
                .bind(started_at.millis() as i64)
                .bind(pos),
                Event::StepStarted { name, attempt, phase, action, at, .. } => {
                    let status = match (phase, action) {
                        (Phase::Compensation, _) => "compensating",
                        (_, crate::saga::ActionKind::Wait) => "waiting",
                        _ => "running",
                    };
                    sqlx::query("UPDATE saga_instances SET status = ?, current_step = ?, attempts = ?, updated_at = ?, last_position = ? WHERE id = ? AND last_position < ?")
                        .bind(status)
                        .bind(name)
                        .bind(i64::from(*attempt))
                        .bind(at.millis() as i64)
                        .bind(pos)
                        .bind(id)
                        .bind(pos)
                }
                Event::StepFailed { error, at, .. } | Event::CompensationFailed { error, at, .. } => {
                    sqlx::query("UPDATE saga_instances SET error = ?, updated_at = ?, last_position = ? WHERE id = ? AND last_position < ?")
                        .bind(error)
                        .bind(at.millis() as i64)
                        .bind(pos)
                        .bind(id)
                        .bind(pos)
                }
                Event::SagaCompleted { at, .. } | Event::SagaCompensated { at } | Event::SagaFailed { at, .. } | Event::SagaCancelled { at } => {
                    let status = match &event {
                        Event::SagaCompleted { .. } => "completed",
                        Event::SagaCompensated { .. } => "compensated",
                        Event::SagaFailed { .. } => "failed",
                        _ => "cancelled",
                    };
                    let error = match &event {
                        Event::SagaFailed { reason, .. } => Some(reason.clone()),
                        _ => None,
                    };
                    sqlx::query(
                        "UPDATE saga_instances SET status = ?, current_step = NULL, error = COALESCE(?, error), updated_at = ?, finished_at = ?, last_position = ? \
                         WHERE id = ? AND last_position < ?",
                    )
                    .bind(status)
                    .bind(error)
                    .bind(at.millis() as i64)
                    .bind(at.millis() as i64)
                    .bind(pos)
                    .bind(id)
                    .bind(pos)
                }
                _ => continue,
            };
            q.execute(&mut *tx).await.map_err(db)?;
        }
        if let Some(last) = scanned {
            sqlx::query("INSERT INTO projection_checkpoints (name, position) VALUES (?, ?) ON CONFLICT (name) DO UPDATE SET position = excluded.position")
                .bind(NAME)
                .bind(last as i64)
                .execute(&mut *tx)
                .await
                .map_err(db)?;
        }
        tx.commit().await.map_err(db)
    }

    /// Instances that have not ended.
    pub async fn unfinished(&self) -> Result<Vec<Uuid>, StoreError> {
        let ids: Vec<String> = sqlx::query_scalar("SELECT id FROM saga_instances WHERE status NOT IN ('completed', 'compensated', 'failed', 'cancelled')")
            .fetch_all(&self.pool)
            .await
            .map_err(db)?;
        Ok(ids.iter().filter_map(|s| Uuid::parse_str(s).ok()).collect())
    }

    /// Instances, newest first, optionally of one workflow and status.
    pub async fn list(
        &self,
        workflow: Option<&str>,
        status: Option<&str>,
        limit: u32,
    ) -> Result<Vec<InstanceRow>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, workflow, version, status, current_step, attempts, error, started_at, updated_at, finished_at FROM saga_instances \
             WHERE (?1 IS NULL OR workflow = ?1) AND (?2 IS NULL OR status = ?2) ORDER BY started_at DESC, id LIMIT ?3",
        )
        .bind(workflow)
        .bind(status)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await
        .map_err(db)?;
        rows.iter()
            .map(|r| {
                let corrupt = |e: sqlx::Error| StoreError::Corrupt(e.to_string());
                let id: String = r.try_get("id").map_err(corrupt)?;
                Ok(InstanceRow {
                    id: Uuid::parse_str(&id).map_err(|e| StoreError::Corrupt(e.to_string()))?,
                    workflow: r.try_get("workflow").map_err(corrupt)?,
                    version: r.try_get::<i64, _>("version").map_err(corrupt)? as u32,
                    status: r.try_get("status").map_err(corrupt)?,
                    current_step: r.try_get("current_step").map_err(corrupt)?,
                    attempts: r.try_get::<i64, _>("attempts").map_err(corrupt)? as u32,
                    error: r.try_get("error").map_err(corrupt)?,
                    started_at: Timestamp(
                        r.try_get::<i64, _>("started_at").map_err(corrupt)? as u64
                    ),
                    updated_at: Timestamp(
                        r.try_get::<i64, _>("updated_at").map_err(corrupt)? as u64
                    ),
                    finished_at: r
                        .try_get::<Option<i64>, _>("finished_at")
                        .map_err(corrupt)?
                        .map(|t| Timestamp(t as u64)),
                })
            })
            .collect()
    }
}
