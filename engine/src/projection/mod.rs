//! Read models: projections follow the event log from a checkpoint and keep
//! tables that status queries read. The checkpoint is written in the same
//! transaction as the rows, so replaying a batch is harmless.
//!
//! - `saga_instances`: one row per instance (workflow, status, current step,
//!   attempts, error, times, input). The runtime uses it on start to find the
//!   instances to resume; listings search it by time and input fields.
//! - `orders`: one row per instance of the [`ORDER_WORKFLOW`], keyed by its
//!   input's `order_id`: customer, amount, items and an order status that
//!   follows the steps `reserve`, `pay` and `ship`.
//!
//! Readers that must see their own writes wait for the checkpoint to reach a
//! position ([`Projections::wait_for`]).

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
const TYPES: [&str; 12] = [
    "SagaPaused",
    "SagaResumed",
    "SagaRetried",
    "SagaStarted",
    "StepStarted",
    "StepSucceeded",
    "StepFailed",
    "CompensationFailed",
    "SagaCompleted",
    "SagaCompensated",
    "SagaFailed",
    "SagaCancelled",
];
const BATCH: usize = 1000;
/// The workflow whose instances are orders.
pub const ORDER_WORKFLOW: &str = "order";
/// The order status each step's success brings.
const ORDER_STEPS: [(&str, &str); 3] = [
    ("reserve", "reserved"),
    ("pay", "paid"),
    ("ship", "shipped"),
];

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
    pub input: serde_json::Value,
    pub paused: bool,
}

/// A row of `orders`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct OrderRow {
    pub order_id: String,
    pub instance_id: Uuid,
    pub customer_id: String,
    pub amount: f64,
    pub items: serde_json::Value,
    /// `pending`, `reserved`, `paid`, `shipped`, `compensated`, `failed` or `cancelled`.
    pub status: String,
    pub error: Option<String>,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
}

/// Where a page of a listing starts: after this `(started_at, id)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cursor {
    pub at: u64,
    pub id: String,
}

impl Cursor {
    /// The opaque text handed to clients.
    pub fn encode(&self) -> String {
        format!("{}.{}", self.at, self.id)
    }

    pub fn decode(s: &str) -> Option<Self> {
        let (at, id) = s.split_once('.')?;
        let id_ok = !id.is_empty() && id.len() <= 256;
        Some(Self {
            at: at.parse().ok()?,
            id: id.to_string(),
        })
        .filter(|_| id_ok)
    }
}

/// What to list from `saga_instances`.
#[derive(Debug, Clone, Default)]
pub struct InstanceFilter {
    pub workflow: Option<String>,
    pub status: Option<String>,
    /// Started at or after.
    pub started_from: Option<Timestamp>,
    /// Started before.
    pub started_until: Option<Timestamp>,
    /// Input fields that must equal a value: `(path like customer_id or address.city, value as text)`.
    pub input: Vec<(String, String)>,
    pub after: Option<Cursor>,
    pub limit: u32,
}

/// One page of a listing and where the next one starts.
#[derive(Debug, Clone)]
pub struct Page<T> {
    pub items: Vec<T>,
    pub next: Option<Cursor>,
}

pub struct Projections {
    pool: SqlitePool,
    checkpoint: tokio::sync::watch::Sender<Option<u64>>,
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
            .map_err(|e| crate::store::migration_error(e, &path.display().to_string()))?;
        let this = Self {
            pool,
            checkpoint: tokio::sync::watch::channel(None).0,
        };
        let at = this.checkpoint().await?;
        this.checkpoint.send_replace(at);
        Ok(this)
    }

    /// The position the read models have applied the log up to.
    pub fn applied(&self) -> Option<u64> {
        *self.checkpoint.borrow()
    }

    /// Waits until the projection has applied the log up to `position`
    /// (read-your-writes); false if `timeout` passed first.
    pub async fn wait_for(&self, position: u64, timeout: Duration) -> bool {
        let mut rx = self.checkpoint.subscribe();
        tokio::time::timeout(timeout, rx.wait_for(|c| c.is_some_and(|c| c >= position)))
            .await
            .is_ok_and(|r| r.is_ok())
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
            order_update(&mut tx, id, pos, &event).await?;
            let q = match &event {
                Event::SagaStarted { workflow, version, started_at, input, .. } => sqlx::query(
                    "INSERT INTO saga_instances (id, workflow, version, status, started_at, updated_at, last_position, input) \
                     VALUES (?, ?, ?, 'running', ?, ?, ?, ?) ON CONFLICT (id) DO NOTHING",
                )
                .bind(id)
                .bind(workflow)
                .bind(i64::from(*version))
                .bind(started_at.millis() as i64)
                .bind(started_at.millis() as i64)
                .bind(pos)
                .bind(input.to_string()),
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
                Event::SagaPaused { at, .. } | Event::SagaResumed { at } => {
                    sqlx::query("UPDATE saga_instances SET paused = ?, updated_at = ?, last_position = ? WHERE id = ? AND last_position < ?")
                        .bind(matches!(event, Event::SagaPaused { .. }))
                        .bind(at.millis() as i64)
                        .bind(pos)
                        .bind(id)
                        .bind(pos)
                }
                Event::SagaRetried { name, phase, at, .. } => {
                    let status = match phase {
                        Phase::Forward => "running",
                        Phase::Compensation => "compensating",
                    };
                    sqlx::query("UPDATE saga_instances SET status = ?, current_step = ?, finished_at = NULL, updated_at = ?, last_position = ? WHERE id = ? AND last_position < ?")
                        .bind(status)
                        .bind(name)
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
        tx.commit().await.map_err(db)?;
        if scanned.is_some() {
            self.checkpoint.send_replace(scanned);
        }
        Ok(())
    }

    /// Instances that have not ended.
    pub async fn unfinished(&self) -> Result<Vec<Uuid>, StoreError> {
        let ids: Vec<String> = sqlx::query_scalar("SELECT id FROM saga_instances WHERE status NOT IN ('completed', 'compensated', 'failed', 'cancelled')")
            .fetch_all(&self.pool)
            .await
            .map_err(db)?;
        Ok(ids.iter().filter_map(|s| Uuid::parse_str(s).ok()).collect())
    }

    /// Instances, newest first, that match `filter`, one page at a time.
    pub async fn search(&self, filter: &InstanceFilter) -> Result<Page<InstanceRow>, StoreError> {
        let mut q = sqlx::QueryBuilder::<sqlx::Sqlite>::new(
            "SELECT id, workflow, version, status, current_step, attempts, error, started_at, updated_at, finished_at, input, paused \
             FROM saga_instances WHERE 1 = 1",
        );
        if let Some(w) = &filter.workflow {
            q.push(" AND workflow = ").push_bind(w.clone());
        }
        if let Some(s) = &filter.status {
            q.push(" AND status = ").push_bind(s.clone());
        }
        if let Some(t) = filter.started_from {
            q.push(" AND started_at >= ").push_bind(t.millis() as i64);
        }
        if let Some(t) = filter.started_until {
            q.push(" AND started_at < ").push_bind(t.millis() as i64);
        }
        for (path, value) in &filter.input {
            // `path` is checked by the caller: letters, digits, `_` and dots.
            // text compares as text; a number also by value, so `5000` finds `5000.0`
            q.push(" AND (CAST(json_extract(input, ")
                .push_bind(format!("$.{path}"))
                .push(") AS TEXT) = ")
                .push_bind(value.clone());
            match value.parse::<f64>() {
                Ok(n) if n.is_finite() => {
                    q.push(" OR json_extract(input, ")
                        .push_bind(format!("$.{path}"))
                        .push(") = ")
                        .push_bind(n)
                        .push(")");
                }
                _ => {
                    q.push(")");
                }
            }
        }
        if let Some(c) = &filter.after {
            q.push(" AND (started_at < ")
                .push_bind(c.at as i64)
                .push(" OR (started_at = ")
                .push_bind(c.at as i64)
                .push(" AND id < ")
                .push_bind(c.id.clone())
                .push("))");
        }
        q.push(" ORDER BY started_at DESC, id DESC LIMIT ")
            .push_bind(i64::from(filter.limit) + 1);
        let rows = q.build().fetch_all(&self.pool).await.map_err(db)?;
        let mut items = rows
            .iter()
            .map(instance_row)
            .collect::<Result<Vec<_>, _>>()?;
        let next = page_end(&mut items, filter.limit, |r| Cursor {
            at: r.started_at.millis(),
            id: r.id.to_string(),
        });
        Ok(Page { items, next })
    }

    /// An order by its id.
    pub async fn order(&self, order_id: &str) -> Result<Option<OrderRow>, StoreError> {
        let row = sqlx::query(&format!("{ORDER_COLUMNS} WHERE order_id = ?"))
            .bind(order_id)
            .fetch_optional(&self.pool)
            .await
            .map_err(db)?;
        row.as_ref().map(order_row).transpose()
    }

    /// A customer's orders, newest first, one page at a time.
    pub async fn customer_orders(
        &self,
        customer_id: &str,
        after: Option<&Cursor>,
        limit: u32,
    ) -> Result<Page<OrderRow>, StoreError> {
        let rows = sqlx::query(&format!(
            "{ORDER_COLUMNS} WHERE customer_id = ?1 \
             AND (?2 IS NULL OR created_at < ?2 OR (created_at = ?2 AND order_id < ?3)) \
             ORDER BY created_at DESC, order_id DESC LIMIT ?4"
        ))
        .bind(customer_id)
        .bind(after.map(|c| c.at as i64))
        .bind(after.map(|c| c.id.clone()))
        .bind(i64::from(limit) + 1)
        .fetch_all(&self.pool)
        .await
        .map_err(db)?;
        let mut items = rows.iter().map(order_row).collect::<Result<Vec<_>, _>>()?;
        let next = page_end(&mut items, limit, |o| Cursor {
            at: o.created_at.millis(),
            id: o.order_id.clone(),
        });
        Ok(Page { items, next })
    }
}

const ORDER_COLUMNS: &str = "SELECT order_id, instance_id, customer_id, amount, items, status, error, created_at, updated_at FROM orders";

/// Cuts a page fetched with one row too many; the cursor of the last row kept if there is more.
fn page_end<T>(items: &mut Vec<T>, limit: u32, cursor: impl Fn(&T) -> Cursor) -> Option<Cursor> {
    if items.len() > limit as usize {
        items.truncate(limit as usize);
        items.last().map(cursor)
    } else {
        None
    }
}

fn corrupt(e: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(e.to_string())
}

fn json_column(r: &sqlx::sqlite::SqliteRow, name: &str) -> Result<serde_json::Value, StoreError> {
    let text: String = r.try_get(name).map_err(corrupt)?;
    serde_json::from_str(&text).map_err(corrupt)
}

fn instance_row(r: &sqlx::sqlite::SqliteRow) -> Result<InstanceRow, StoreError> {
    let id: String = r.try_get("id").map_err(corrupt)?;
    Ok(InstanceRow {
        id: Uuid::parse_str(&id).map_err(corrupt)?,
        workflow: r.try_get("workflow").map_err(corrupt)?,
        version: r.try_get::<i64, _>("version").map_err(corrupt)? as u32,
        status: r.try_get("status").map_err(corrupt)?,
        current_step: r.try_get("current_step").map_err(corrupt)?,
        attempts: r.try_get::<i64, _>("attempts").map_err(corrupt)? as u32,
        error: r.try_get("error").map_err(corrupt)?,
        started_at: Timestamp(r.try_get::<i64, _>("started_at").map_err(corrupt)? as u64),
        updated_at: Timestamp(r.try_get::<i64, _>("updated_at").map_err(corrupt)? as u64),
        finished_at: r
            .try_get::<Option<i64>, _>("finished_at")
            .map_err(corrupt)?
            .map(|t| Timestamp(t as u64)),
        input: json_column(r, "input")?,
        paused: r.try_get::<i64, _>("paused").map_err(corrupt)? != 0,
    })
}

fn order_row(r: &sqlx::sqlite::SqliteRow) -> Result<OrderRow, StoreError> {
    let id: String = r.try_get("instance_id").map_err(corrupt)?;
    Ok(OrderRow {
        order_id: r.try_get("order_id").map_err(corrupt)?,
        instance_id: Uuid::parse_str(&id).map_err(corrupt)?,
        customer_id: r.try_get("customer_id").map_err(corrupt)?,
        amount: r.try_get("amount").map_err(corrupt)?,
        items: json_column(r, "items")?,
        status: r.try_get("status").map_err(corrupt)?,
        error: r.try_get("error").map_err(corrupt)?,
        created_at: Timestamp(r.try_get::<i64, _>("created_at").map_err(corrupt)? as u64),
        updated_at: Timestamp(r.try_get::<i64, _>("updated_at").map_err(corrupt)? as u64),
    })
}

/// The `orders` row's share of an event of instance `id`.
async fn order_update(
    tx: &mut sqlx::SqliteConnection,
    id: &str,
    pos: i64,
    event: &Event,
) -> Result<(), StoreError> {
    let (status, error, at): (&str, Option<&str>, Timestamp) = match event {
        Event::SagaStarted {
            workflow,
            input,
            started_at,
            ..
        } if workflow == ORDER_WORKFLOW => {
            let (Some(order_id), Some(customer_id), Some(amount)) = (
                input["order_id"].as_str(),
                input["customer_id"].as_str(),
                input["amount"].as_f64(),
            ) else {
                return Ok(());
            };
            // the first instance of an order id keeps it
            sqlx::query(
                "INSERT INTO orders (order_id, instance_id, customer_id, amount, items, status, created_at, updated_at, last_position) \
                 VALUES (?, ?, ?, ?, ?, 'pending', ?, ?, ?) ON CONFLICT DO NOTHING",
            )
            .bind(order_id)
            .bind(id)
            .bind(customer_id)
            .bind(amount)
            .bind(input["items"].to_string())
            .bind(started_at.millis() as i64)
            .bind(started_at.millis() as i64)
            .bind(pos)
            .execute(&mut *tx)
            .await
            .map_err(db)?;
            return Ok(());
        }
        Event::StepSucceeded { name, at, .. } => {
            match ORDER_STEPS.iter().find(|(step, _)| step == name) {
                Some((_, status)) => (*status, None, *at),
                None => return Ok(()),
            }
        }
        Event::StepFailed { error, at, .. } => ("", Some(error.as_str()), *at),
        Event::SagaCompleted { at, .. } => ("shipped", None, *at),
        Event::SagaCompensated { at } => ("compensated", None, *at),
        Event::SagaFailed { reason, at } => ("failed", Some(reason.as_str()), *at),
        Event::SagaCancelled { at } => ("cancelled", None, *at),
        _ => return Ok(()),
    };
    sqlx::query(
        "UPDATE orders SET status = CASE WHEN ?1 = '' THEN status ELSE ?1 END, error = COALESCE(?2, error), \
         updated_at = ?3, last_position = ?4 WHERE instance_id = ?5 AND last_position < ?4",
    )
    .bind(status)
    .bind(error)
    .bind(at.millis() as i64)
    .bind(pos)
    .bind(id)
    .execute(&mut *tx)
    .await
    .map_err(db)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::store::memory::MemoryStore;
    use crate::store::{Expected, NewEvent};

    async fn open(name: &str) -> Projections {
        let dir = std::env::temp_dir().join(format!("sagaflow-rm-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Projections::open(&dir.join("readmodels.db")).await.unwrap()
    }

    fn started(workflow: &str, input: serde_json::Value, at: u64) -> Event {
        Event::SagaStarted {
            workflow: workflow.into(),
            version: 1,
            definition_hash: "h".into(),
            input,
            idempotency_key: None,
            deadline: None,
            started_at: Timestamp(at),
        }
    }

    fn succeeded(name: &str, at: u64) -> Event {
        Event::StepSucceeded {
            step: 0,
            name: name.into(),
            attempt: 1,
            output: json!({}),
            signal: None,
            at: Timestamp(at),
        }
    }

    async fn append(store: &MemoryStore, id: u128, events: &[Event]) {
        let stream = format!("saga-{}", Uuid::from_u128(id));
        let new = events.iter().map(NewEvent::from).collect();
        store.append(&stream, Expected::Any, new).await.unwrap();
    }

    fn order(n: u32, customer: &str) -> serde_json::Value {
        json!({"order_id": format!("o-{n}"), "customer_id": customer, "items": [{"sku": "a", "qty": n}], "amount": 10.5 * f64::from(n)})
    }

    #[tokio::test]
    async fn orders_follow_the_steps_and_end_states() {
        let store = MemoryStore::new();
        let p = open("orders").await;
        append(
            &store,
            1,
            &[
                started("order", order(1, "c-1"), 100),
                succeeded("reserve", 101),
                succeeded("pay", 102),
            ],
        )
        .await;
        append(
            &store,
            2,
            &[
                started("order", order(2, "c-1"), 200),
                succeeded("reserve", 201),
                Event::SagaCompensated { at: Timestamp(205) },
            ],
        )
        .await;
        append(
            &store,
            3,
            &[started("trip", json!({"order_id": "o-3"}), 300)],
        )
        .await;
        p.catch_up(&store).await.unwrap();
        let o1 = p.order("o-1").await.unwrap().unwrap();
        assert_eq!(
            (o1.status.as_str(), o1.amount, o1.customer_id.as_str()),
            ("paid", 10.5, "c-1")
        );
        assert_eq!(o1.items, json!([{"sku": "a", "qty": 1}]));
        assert_eq!(o1.instance_id, Uuid::from_u128(1));
        assert_eq!(p.order("o-2").await.unwrap().unwrap().status, "compensated");
        assert!(
            p.order("o-3").await.unwrap().is_none(),
            "only instances of the order workflow are orders"
        );

        append(
            &store,
            1,
            &[
                succeeded("ship", 103),
                Event::SagaCompleted {
                    output: json!({}),
                    at: Timestamp(104),
                },
            ],
        )
        .await;
        p.catch_up(&store).await.unwrap();
        assert_eq!(p.order("o-1").await.unwrap().unwrap().status, "shipped");
        // replaying from the start changes nothing
        sqlx::query("DELETE FROM projection_checkpoints")
            .execute(&p.pool)
            .await
            .unwrap();
        p.catch_up(&store).await.unwrap();
        assert_eq!(p.order("o-1").await.unwrap().unwrap().status, "shipped");

        let first = p.customer_orders("c-1", None, 1).await.unwrap();
        assert_eq!(first.items[0].order_id, "o-2", "newest first");
        let second = p
            .customer_orders("c-1", first.next.as_ref(), 1)
            .await
            .unwrap();
        assert_eq!(second.items[0].order_id, "o-1");
        assert!(second.next.is_none(), "the last page says so");
    }

    #[tokio::test]
    async fn search_filters_by_time_and_input_and_pages_without_gaps() {
        let store = MemoryStore::new();
        let p = open("search").await;
        for n in 1..=25u32 {
            let customer = if n % 2 == 0 { "even" } else { "odd" };
            // two instances share each start time, so the cursor must break ties
            append(
                &store,
                u128::from(n),
                &[started(
                    "order",
                    order(n, customer),
                    1000 + u64::from(n / 2),
                )],
            )
            .await;
        }
        p.catch_up(&store).await.unwrap();
        let mut filter = InstanceFilter {
            limit: 7,
            ..Default::default()
        };
        let mut seen = Vec::new();
        loop {
            let page = p.search(&filter).await.unwrap();
            seen.extend(page.items.iter().map(|r| r.id));
            match page.next {
                Some(c) => filter.after = Some(Cursor::decode(&c.encode()).unwrap()),
                None => break,
            }
        }
        assert_eq!(seen.len(), 25);
        seen.sort();
        seen.dedup();
        assert_eq!(seen.len(), 25, "no instance twice, none left out");

        let odd = InstanceFilter {
            input: vec![("customer_id".into(), "odd".into())],
            started_from: Some(Timestamp(1005)),
            started_until: Some(Timestamp(1008)),
            limit: 100,
            ..Default::default()
        };
        let found: Vec<u32> = p
            .search(&odd)
            .await
            .unwrap()
            .items
            .iter()
            .map(|r| r.input["items"][0]["qty"].as_u64().unwrap() as u32)
            .collect();
        assert_eq!(found, [15, 13, 11]);
        let by_number = InstanceFilter {
            input: vec![("amount".into(), "42".into())],
            limit: 100,
            ..Default::default()
        };
        assert_eq!(p.search(&by_number).await.unwrap().items.len(), 1);
        assert!(Cursor::decode("nonsense").is_none());
    }
}
