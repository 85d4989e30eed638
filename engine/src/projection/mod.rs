//! Read models: projections follow the event log from a checkpoint and keep
//! tables that status queries read. The checkpoint is written in the same
//! transaction as the rows, so replaying a batch is harmless.
//!
//! - `saga_instances`: one row per instance (workflow, status, current step,
//!   attempts, error, times, input). The runtime uses it on start to find the
//!   instances to resume; listings search it by time and input fields.
//! - `instance_search` and `search_fields` (their own module, `search.rs`):
//!   the values of the input fields each workflow declares searchable.
//! - `orders` (its own module, `orders.rs`: the demo domain's knowledge):
//!   one row per instance of the [`ORDER_WORKFLOW`], keyed by its input's
//!   `order_id`, with an order status that follows `reserve`, `pay` and `ship`.
//!
//! A batch of events is folded per instance before it is written (`fold.rs`):
//! one change per row, not one statement per event.
//!
//! Readers that must see their own writes wait for the checkpoint to reach a
//! position ([`Projections::wait_for`]).

mod fold;
mod orders;
mod retention;
mod search;
mod sql;
mod writer;

use orders::order_change;
pub use orders::{OrderRow, ORDER_WORKFLOW};
pub use retention::Ended;

use std::path::Path;
use std::time::Duration;

use serde::Serialize;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::saga::{Event, Phase, Timestamp};
use crate::store::{EventStore, RecordedEvent, StoreError, STREAM_REMOVED};

use sql::{corrupt, Arg, Columns, Db, Stmt};

const NAME: &str = "saga_instances";
/// The events that change a row; the others are not even read.
const TYPES: [&str; 17] = [
    // the fields a workflow version declares searchable
    "WorkflowPublished",
    "BranchesStarted",
    "ElementsListed",
    "UnitsToCompensate",
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
    // the end of a removed stream whose events the store still shows (EventStoreDB)
    STREAM_REMOVED,
];
/// Events read and applied per transaction, at most: a catch-up of a long
/// log (a start after a lag, `projections rebuild`) writes each hot page
/// once per batch; 4,000 cut a rebuild by a fifth against 1,000.
const BATCH: usize = 4000;
/// The first and the longest pause before a failed catch-up is tried again.
const RETRY_FIRST: Duration = Duration::from_millis(100);
const RETRY_MOST: Duration = Duration::from_secs(5);
/// The least time from one catch-up to the next while the log keeps moving,
/// so that the commits of that time go into one transaction: a transaction
/// of the read models costs about the same for one event as for a hundred
/// (the pages at the end of each index are written whole), and a saga whose
/// events fall in one transaction has its rows written once, not once per
/// step. The read models trail the log by at most this much more; after a
/// quiet spell the next event is applied at once, and a read that asks for
/// its writes ([`Projections::wait_for`]) cuts the pause short
/// (docs/performance.md, "Read models written less often").
const GATHER: Duration = Duration::from_millis(50);
/// The pause ends sooner once this many positions of the log have come
/// since the catch-up before it began: half the events the SQLite store
/// keeps in memory (`store::sqlite::tail::KEPT`), so that the follower
/// reads its batch from there, not from the file, and a batch stays small.
const GATHER_EVENTS: u64 = 1024;

/// The instances that have not ended. The terms are those of SQLite's partial
/// index `saga_instances_open`, one by one, so that the index serves the query;
/// `NOT IN` there made every write to the table build a temporary table.
const UNFINISHED: &str = "SELECT id FROM saga_instances WHERE status <> 'completed' \
    AND status <> 'compensated' AND status <> 'failed' AND status <> 'cancelled'";

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

/// Where a page of a listing starts: after this `(started_at, id)`, where
/// `id` is an order's id in an order listing and an instance's row number
/// (`seq`, ADR 21) in an instance listing.
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

    /// The instance row number an instance listing's cursor names.
    pub fn seq(&self) -> Option<i64> {
        self.id.parse().ok()
    }

    /// Whether an instance listing can go on from this cursor: it names a
    /// row number, or (given out before rows were numbered) an instance id.
    pub fn fits_instances(&self) -> bool {
        self.seq().is_some() || Uuid::parse_str(&self.id).is_ok()
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
    /// Only fields the workflow declares searchable find anything.
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
    db: Db,
    checkpoint: tokio::sync::watch::Sender<Option<u64>>,
    /// Since when, and why, catching up has been failing (`None`: it works).
    failing: std::sync::Mutex<Option<(std::time::Instant, String)>>,
    /// Fault injection: this many of the next transactions fail.
    faults: std::sync::atomic::AtomicU32,
    declared: search::Declared,
    /// The pause between catch-ups while the log moves ([`GATHER`]).
    gather: Duration,
    /// Positions after which the pause ends early ([`GATHER_EVENTS`]).
    gather_events: u64,
    /// A reader waits for a position: the follower catches up without its pause.
    hurry: tokio::sync::Notify,
}

/// A statement with its arguments, built from `$n` SQL and values.
fn stmt(sql: &str, args: Vec<Arg>) -> Stmt {
    (sql.into(), args)
}

impl Projections {
    /// Opens (creating and migrating) the read models in the SQLite file at
    /// `path`: a file of their own, so the event writer never waits for them.
    pub async fn open(path: &Path) -> Result<Self, StoreError> {
        Self::with(Db::open_sqlite(path).await?).await
    }

    /// Opens (migrating) the read models in a PostgreSQL database.
    pub async fn open_postgres(url: &str) -> Result<Self, StoreError> {
        Self::with(Db::open_postgres(url).await?).await
    }

    async fn with(db: Db) -> Result<Self, StoreError> {
        let this = Self {
            db,
            checkpoint: tokio::sync::watch::channel(None).0,
            failing: std::sync::Mutex::default(),
            faults: std::sync::atomic::AtomicU32::new(0),
            declared: search::Declared::default(),
            gather: GATHER,
            gather_events: GATHER_EVENTS,
            hurry: tokio::sync::Notify::new(),
        };
        let at = this.checkpoint().await?;
        this.checkpoint.send_replace(at);
        Ok(this)
    }

    /// Closes the read models' connections, so a clean stop leaves their
    /// SQLite file whole (no write-ahead log beside it). Call it once nothing
    /// applies or reads any more; later calls are refused as `Unavailable`.
    pub async fn close(&self) {
        self.db.close().await;
    }

    /// The position the read models have applied the log up to.
    pub fn applied(&self) -> Option<u64> {
        *self.checkpoint.borrow()
    }

    /// Waits until the projection has applied the log up to `position`
    /// (read-your-writes); false if `timeout` passed first.
    pub async fn wait_for(&self, position: u64, timeout: Duration) -> bool {
        let mut rx = self.checkpoint.subscribe();
        if !rx.borrow().is_some_and(|c| c >= position) {
            // kept if the follower is not pausing now: its next pause is skipped
            self.hurry.notify_one();
        }
        tokio::time::timeout(timeout, rx.wait_for(|c| c.is_some_and(|c| c >= position)))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    /// Where the next batch starts. SQLite read models are written by this
    /// process alone (the data directory's lock keeps others out), so the
    /// position it last committed is the one in the file; PostgreSQL's may
    /// have been moved by a replica sharing them, so it is read.
    async fn resume_after(&self) -> Result<Option<u64>, StoreError> {
        match self.db {
            Db::Sqlite(..) => Ok(self.applied()),
            Db::Postgres(_) => self.checkpoint().await,
        }
    }

    pub async fn checkpoint(&self) -> Result<Option<u64>, StoreError> {
        let p = self
            .db
            .fetch(
                "SELECT position FROM projection_checkpoints WHERE name = $1",
                &[NAME.into()],
                |r| r.int("position"),
            )
            .await?;
        Ok(p.first().map(|p| *p as u64))
    }

    /// Empties the read models, so the next catch-up replays the whole log.
    pub async fn reset(&self) -> Result<(), StoreError> {
        self.db
            .transaction(vec![
                stmt("DELETE FROM saga_instances", vec![]),
                stmt("DELETE FROM orders", vec![]),
                stmt("DELETE FROM instance_search", vec![]),
                stmt("DELETE FROM search_fields", vec![]),
                stmt("DELETE FROM projection_checkpoints", vec![]),
            ])
            .await?;
        self.lock_declared().clear();
        self.checkpoint.send_replace(None);
        Ok(())
    }

    /// Applies every event after the checkpoint; returns how many were read.
    pub async fn catch_up(&self, store: &dyn EventStore) -> Result<usize, StoreError> {
        self.catch_up_with(store, |_| {}).await
    }

    /// Like [`catch_up`](Self::catch_up), stopping between batches once `stop`
    /// fires: a server that shuts down while far behind does not wait for the rest.
    /// Stops too once a batch reached the head `head` last showed: what is
    /// appended after that changes `head` again, so asking the log once more
    /// would only find nothing.
    async fn catch_up_until(
        &self,
        store: &dyn EventStore,
        head: &mut tokio::sync::watch::Receiver<Option<u64>>,
        stop: &CancellationToken,
    ) -> Result<usize, StoreError> {
        let mut total = 0;
        while !stop.is_cancelled() {
            // seen before the read: a later append is waited for, not missed
            let newest = *head.borrow_and_update();
            match self.catch_up_batch(store).await? {
                Some((read, reached)) => {
                    total += read;
                    if newest.is_some_and(|h| reached >= h) {
                        break;
                    }
                }
                None => break,
            }
        }
        Ok(total)
    }

    /// Applies the next batch after the checkpoint: how many events it read,
    /// `None` when there was nothing after it.
    async fn catch_up_batch(
        &self,
        store: &dyn EventStore,
    ) -> Result<Option<(usize, u64)>, StoreError> {
        let after = self.resume_after().await?;
        let (batch, scanned) = store.read_all_of_types(after, BATCH, &TYPES).await?;
        let Some(reached) = scanned.filter(|s| Some(*s) > after) else {
            return Ok(None);
        };
        self.apply(&batch, scanned).await?;
        Ok(Some((batch.len(), reached)))
    }

    /// Like [`catch_up`](Self::catch_up), telling `progress` the position reached after each batch.
    pub async fn catch_up_with(
        &self,
        store: &dyn EventStore,
        mut progress: impl FnMut(u64),
    ) -> Result<usize, StoreError> {
        let mut total = 0;
        while let Some((read, reached)) = self.catch_up_batch(store).await? {
            total += read;
            progress(reached);
        }
        Ok(total)
    }

    /// Follows the log until `stop` fires. A failed batch was rolled back: it
    /// is tried again, with a backoff, until the database takes it.
    pub async fn follow(&self, store: &dyn EventStore, stop: CancellationToken) {
        let mut head = store.head();
        let mut backoff = RETRY_FIRST;
        loop {
            let round = tokio::time::Instant::now();
            if let Err(e) = self.catch_up_until(store, &mut head, &stop).await {
                self.note_failure(&e);
                tracing::warn!(error = %e, retry_in = ?backoff, "projection could not catch up; retrying");
                tokio::select! {
                    () = stop.cancelled() => return,
                    () = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(RETRY_MOST);
                continue;
            }
            backoff = RETRY_FIRST;
            if self.lock_failing().take().is_some() {
                tracing::info!("projection caught up again");
            }
            tokio::select! {
                () = stop.cancelled() => return,
                changed = head.changed() => if changed.is_err() { return },
            }
            let gathered = round + self.gather;
            let from = self.applied().unwrap_or(0);
            while tokio::time::Instant::now() < gathered {
                tokio::select! {
                    () = stop.cancelled() => return,
                    () = tokio::time::sleep_until(gathered) => break,
                    () = self.hurry.notified() => break,
                    changed = head.changed() => {
                        if changed.is_err() {
                            return;
                        }
                        let at = (*head.borrow_and_update()).unwrap_or(0);
                        if at.saturating_sub(from) >= self.gather_events {
                            break;
                        }
                    }
                }
            }
        }
    }

    fn lock_failing(&self) -> std::sync::MutexGuard<'_, Option<(std::time::Instant, String)>> {
        self.failing
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn note_failure(&self, e: &StoreError) {
        let mut f = self.lock_failing();
        let since = f.as_ref().map_or_else(std::time::Instant::now, |(t, _)| *t);
        *f = Some((since, e.to_string()));
    }

    /// How long catching up has been failing, and the last error (`None` while it works).
    pub fn stalled(&self) -> Option<(Duration, String)> {
        self.lock_failing()
            .as_ref()
            .map(|(since, e)| (since.elapsed(), e.clone()))
    }

    /// Fault injection, for tests of healing and readiness: the next `n`
    /// transactions fail as a database that refuses writes would, and are
    /// rolled back.
    pub fn fail_next_transactions(&self, n: u32) {
        self.faults.store(n, std::sync::atomic::Ordering::SeqCst);
    }

    async fn apply(&self, batch: &[RecordedEvent], scanned: Option<u64>) -> Result<(), StoreError> {
        let mut stmts = Vec::new();
        let mut folded = fold::Batch::default();
        for rec in batch {
            if rec.event_type == "WorkflowPublished" {
                if let Some((workflow, version, fields)) = search::published(rec) {
                    stmts.extend(search::declare(&workflow, version, &fields));
                    self.learn_declared(workflow, version, &fields);
                }
                continue;
            }
            let Some(id) = rec.stream.strip_prefix("saga-") else {
                continue;
            };
            if rec.event_type == STREAM_REMOVED {
                // What came before the removal is written first, then
                // forgotten; search values of a start in this batch are
                // never written, those of an earlier one are found by key.
                folded.drop_search_of(id);
                folded.flush_into(&mut stmts);
                let id = [id.to_string()];
                let search = self.search_rows_of(&id).await?;
                retention::forget(&id, &search, &mut stmts);
                continue;
            }
            // from the SQLite store's tail, the event as it was appended
            let event = match rec.event() {
                Ok(e) => e,
                Err(e) => {
                    tracing::error!(stream = %rec.stream, position = rec.position, error = %e, "skipping an unreadable event");
                    continue;
                }
            };
            let pos = rec.position as i64;
            if let Event::SagaStarted {
                workflow,
                version,
                started_at,
                input,
                ..
            } = &*event
            {
                let fields = self.declared(workflow, *version).await?;
                folded.search(search::rows(
                    id,
                    workflow,
                    started_at.millis() as i64,
                    input,
                    &fields,
                ));
            }
            let instance = folded.instance(id);
            order_change(&mut instance.order, pos, &event);
            instance_change(&mut instance.row, pos, &event);
        }
        folded.flush_into(&mut stmts);
        if let Some(last) = scanned {
            stmts.push(stmt(
                // replicas sharing the read models may apply the same events; the checkpoint never goes back
                "INSERT INTO projection_checkpoints (name, position) VALUES ($1, $2) \
                 ON CONFLICT (name) DO UPDATE SET position = CASE \
                 WHEN excluded.position > projection_checkpoints.position THEN excluded.position \
                 ELSE projection_checkpoints.position END",
                vec![NAME.into(), (last as i64).into()],
            ));
        }
        self.transaction(stmts).await?;
        if scanned.is_some() {
            self.checkpoint.send_replace(scanned);
        }
        Ok(())
    }

    /// Runs `stmts` in one transaction, unless a fault is injected
    /// ([`fail_next_transactions`](Self::fail_next_transactions)).
    async fn transaction(&self, stmts: Vec<Stmt>) -> Result<(), StoreError> {
        let injected = self
            .faults
            .fetch_update(
                std::sync::atomic::Ordering::SeqCst,
                std::sync::atomic::Ordering::SeqCst,
                |n| n.checked_sub(1),
            )
            .is_ok();
        if injected {
            return Err(StoreError::Unavailable(
                "injected fault: the read models' database refused the transaction".into(),
            ));
        }
        self.db.transaction(stmts).await
    }

    /// Instances that have not ended.
    pub async fn unfinished(&self) -> Result<Vec<Uuid>, StoreError> {
        let ids = self.db.fetch(UNFINISHED, &[], |r| r.text("id")).await?;
        Ok(ids.iter().filter_map(|s| Uuid::parse_str(s).ok()).collect())
    }

    /// Instances, newest first, that match `filter`, one page at a time.
    /// Input fields are searched in `instance_search`, so only the fields a
    /// workflow declares (`search:`) find anything; the first drives the
    /// walk, newest first, and any others must match too.
    pub async fn search(&self, filter: &InstanceFilter) -> Result<Page<InstanceRow>, StoreError> {
        const COLUMNS: &str =
            "i.id, i.workflow, i.version, i.status, i.current_step, i.attempts, i.error, \
             i.started_at, i.updated_at, i.finished_at, i.input, i.paused, i.seq";
        let mut args: Vec<Arg> = Vec::new();
        let arg = |a: Arg, args: &mut Vec<Arg>| {
            args.push(a);
            format!("${}", args.len())
        };
        // the walk's columns: the index's when an input field drives it
        let (mut sql, workflow, started, id) = match filter.input.split_first() {
            None => (
                format!("SELECT {COLUMNS} FROM saga_instances i WHERE 1 = 1"),
                "i.workflow",
                "i.started_at",
                "i.seq",
            ),
            Some(((field, value), others)) => {
                let f = arg(field.into(), &mut args);
                let mut sql = format!(
                    "SELECT {COLUMNS} FROM instance_search s JOIN saga_instances i ON i.seq = s.instance_seq \
                     WHERE s.field = {f} AND {}",
                    search::matches("s.value", value, &mut args)
                );
                for (field, value) in others {
                    let f = arg(field.into(), &mut args);
                    sql += &format!(
                        " AND EXISTS (SELECT 1 FROM instance_search t WHERE t.field = {f} AND {} \
                         AND t.started_at = s.started_at AND t.instance_seq = s.instance_seq)",
                        search::matches("t.value", value, &mut args)
                    );
                }
                (sql, "s.workflow", "s.started_at", "s.instance_seq")
            }
        };
        if let Some(w) = &filter.workflow {
            sql += &format!(" AND {workflow} = {}", arg(w.into(), &mut args));
        }
        if let Some(s) = &filter.status {
            sql += &format!(" AND i.status = {}", arg(s.into(), &mut args));
        }
        if let Some(t) = filter.started_from {
            let t = arg((t.millis() as i64).into(), &mut args);
            sql += &format!(" AND {started} >= {t}");
        }
        if let Some(t) = filter.started_until {
            let t = arg((t.millis() as i64).into(), &mut args);
            sql += &format!(" AND {started} < {t}");
        }
        if let Some(c) = &filter.after {
            let at = arg((c.at as i64).into(), &mut args);
            let after = match (c.seq(), Uuid::parse_str(&c.id)) {
                (Some(seq), _) => arg(seq.into(), &mut args),
                // a cursor given out before the rows were numbered (ADR 21)
                // names the page's last instance: it goes on from that row
                (None, Ok(last)) => format!(
                    "(SELECT seq FROM saga_instances WHERE id = {})",
                    arg(last.to_string().into(), &mut args)
                ),
                (None, Err(_)) => {
                    return Err(StoreError::Invalid(format!(
                        "`{}` is not an instance listing's cursor",
                        c.encode()
                    )))
                }
            };
            sql += &format!(" AND ({started} < {at} OR ({started} = {at} AND {id} < {after}))");
        }
        let limit = arg((i64::from(filter.limit) + 1).into(), &mut args);
        sql += &format!(" ORDER BY {started} DESC, {id} DESC LIMIT {limit}");
        let mut rows = self
            .db
            .fetch(&sql, &args, |r| Ok((instance_row(r)?, r.int("seq")?)))
            .await?;
        let next = page_end(&mut rows, filter.limit, |(r, seq)| Cursor {
            at: r.started_at.millis(),
            id: seq.to_string(),
        });
        let items = rows.into_iter().map(|(r, _)| r).collect();
        Ok(Page { items, next })
    }
}

/// Cuts a page fetched with one row too many; the cursor of the last row kept if there is more.
fn page_end<T>(items: &mut Vec<T>, limit: u32, cursor: impl Fn(&T) -> Cursor) -> Option<Cursor> {
    if items.len() > limit as usize {
        items.truncate(limit as usize);
        items.last().map(cursor)
    } else {
        None
    }
}

fn json_column(r: &dyn Columns, name: &str) -> Result<serde_json::Value, StoreError> {
    serde_json::from_str(&r.text(name)?).map_err(corrupt)
}

fn instance_row(r: &dyn Columns) -> Result<InstanceRow, StoreError> {
    Ok(InstanceRow {
        id: Uuid::parse_str(&r.text("id")?).map_err(corrupt)?,
        workflow: r.text("workflow")?,
        version: r.int("version")? as u32,
        status: r.text("status")?,
        current_step: r.opt_text("current_step")?,
        attempts: r.int("attempts")? as u32,
        error: r.opt_text("error")?,
        started_at: Timestamp(r.int("started_at")? as u64),
        updated_at: Timestamp(r.int("updated_at")? as u64),
        finished_at: r.opt_int("finished_at")?.map(|t| Timestamp(t as u64)),
        input: json_column(r, "input")?,
        paused: r.boolean("paused")?,
    })
}

/// The `saga_instances` row's share of an event (at log position `pos`).
fn instance_change(row: &mut fold::Change, pos: i64, event: &Event) {
    let at = |t: &Timestamp| Arg::Int(t.millis() as i64);
    let status = |phase: &Phase| match phase {
        Phase::Compensation => "compensating",
        Phase::Forward => "running",
    };
    match event {
        Event::SagaStarted {
            workflow,
            version,
            started_at,
            input,
            ..
        } => row.create(
            pos,
            vec![
                ("workflow", workflow.into()),
                ("version", i64::from(*version).into()),
                ("status", "running".into()),
                ("started_at", at(started_at)),
                ("updated_at", at(started_at)),
                ("input", input.to_string().into()),
            ],
        ),
        // a branch or element: the row shows its step (the group), set when it started
        Event::StepStarted {
            index: Some(_),
            phase,
            at: t,
            ..
        } => {
            row.set(pos, "status", status(phase).into());
            row.set(pos, "updated_at", at(t));
        }
        Event::BranchesStarted { name, at: t, .. }
        | Event::ElementsListed { name, at: t, .. }
        | Event::UnitsToCompensate { name, at: t, .. } => {
            let status = match event {
                Event::UnitsToCompensate { .. } => "compensating",
                _ => "running",
            };
            row.set(pos, "status", status.into());
            row.set(pos, "current_step", name.into());
            row.set(pos, "attempts", 1i64.into());
            row.set(pos, "updated_at", at(t));
        }
        Event::StepStarted {
            name,
            attempt,
            phase,
            action,
            at: t,
            ..
        } => {
            let status = match (phase, action) {
                (Phase::Compensation, _) => "compensating",
                (_, crate::saga::ActionKind::Wait) => "waiting",
                _ => "running",
            };
            row.set(pos, "status", status.into());
            row.set(pos, "current_step", name.into());
            row.set(pos, "attempts", i64::from(*attempt).into());
            row.set(pos, "updated_at", at(t));
        }
        Event::StepFailed { error, at: t, .. } | Event::CompensationFailed { error, at: t, .. } => {
            row.set(pos, "error", error.into());
            row.set(pos, "updated_at", at(t));
        }
        Event::SagaCompleted { at: t, .. }
        | Event::SagaCompensated { at: t }
        | Event::SagaFailed { at: t, .. }
        | Event::SagaCancelled { at: t } => {
            let status = match event {
                Event::SagaCompleted { .. } => "completed",
                Event::SagaCompensated { .. } => "compensated",
                Event::SagaFailed { .. } => "failed",
                _ => "cancelled",
            };
            row.set(pos, "status", status.into());
            row.set(pos, "current_step", Arg::OptText(None));
            if let Event::SagaFailed { reason, .. } = event {
                row.set(pos, "error", reason.into());
            }
            row.set(pos, "updated_at", at(t));
            row.set(pos, "finished_at", at(t));
        }
        Event::SagaPaused { at: t, .. } | Event::SagaResumed { at: t } => {
            row.set(
                pos,
                "paused",
                matches!(event, Event::SagaPaused { .. }).into(),
            );
            row.set(pos, "updated_at", at(t));
        }
        Event::SagaRetried {
            name, phase, at: t, ..
        } => {
            row.set(pos, "status", status(phase).into());
            row.set(pos, "current_step", name.into());
            row.set(pos, "finished_at", Arg::OptInt(None));
            row.set(pos, "updated_at", at(t));
        }
        _ => {}
    }
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
            index: None,
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

    async fn open_postgres(name: &str) -> Projections {
        let url = crate::store::postgres::test_database(&format!("rm_{name}")).await;
        Projections::open_postgres(&url).await.unwrap()
    }

    #[tokio::test]
    async fn orders_follow_the_steps_and_end_states() {
        orders_case(open("orders").await).await;
    }

    #[tokio::test]
    async fn orders_follow_the_steps_and_end_states_in_postgres() {
        orders_case(open_postgres("orders").await).await;
    }

    /// Retention's query: the oldest instances ended before a time, and with
    /// a replica's partitions only theirs, a whole batch of them even when
    /// the oldest of all are the other replicas'.
    async fn ended_case(p: Projections) {
        let store = MemoryStore::default();
        // the partitions of instances ending at 1 s, 2 s, …; their ids
        // spread over the last byte's four values for each partition
        let partitions = [0, 2, 0, 2, 1, 3, 1, 0];
        let mut ids = Vec::new();
        for (k, partition) in (1..).zip(partitions) {
            let id = 64 * k + partition;
            let at = k as u64 * 1_000;
            let completed = Event::SagaCompleted {
                output: json!(null),
                at: Timestamp(at),
            };
            append(&store, id, &[started("hold", json!({}), 500), completed]).await;
            ids.push((Uuid::from_u128(id), at));
        }
        p.catch_up(&store).await.unwrap();
        let ended_since = |since: u64, before: u64, limit: usize, held: Option<u64>| {
            let p = &p;
            async move {
                let e = p
                    .ended_between(Timestamp(since), Timestamp(before), limit, held)
                    .await
                    .unwrap();
                e.into_iter().map(|e| e.finished_at.0).collect::<Vec<_>>()
            }
        };
        let ended = |before, limit, held| ended_since(0, before, limit, held);
        assert_eq!(ended(9_000, 2, None).await, [1_000, 2_000]);
        // from a time on (retention's current window), the oldest of those
        assert_eq!(ended_since(6_000, 9_000, 2, None).await, [6_000, 7_000]);
        assert_eq!(ended_since(6_000, 9_000, 9, Some(0b0001)).await, [8_000]);
        assert_eq!(ended(9_000, 2, Some(u64::MAX)).await, [1_000, 2_000]);
        // partitions 1 and 3: their oldest two, past the others' four
        assert_eq!(ended(9_000, 2, Some(0b1010)).await, [5_000, 6_000]);
        assert_eq!(ended(9_000, 9, Some(0b1010)).await, [5_000, 6_000, 7_000]);
        assert_eq!(ended(7_000, 9, Some(0b1010)).await, [5_000, 6_000]);
        assert_eq!(ended(9_000, 9, Some(0b0001)).await, [1_000, 3_000, 8_000]);
        assert_eq!(ended(9_000, 9, Some(0)).await, Vec::<u64>::new());
        // each instance is found under its own partition, whatever its id's last byte
        for (id, t) in ids {
            let mask = 1 << crate::runtime::cluster::partition(id);
            assert!(ended(9_000, 9, Some(mask)).await.contains(&t), "{id}");
        }
    }

    #[tokio::test]
    async fn retention_finds_the_oldest_ended_of_the_partitions_held() {
        ended_case(open("ended").await).await;
    }

    #[tokio::test]
    async fn retention_finds_the_oldest_ended_of_the_partitions_held_in_postgres() {
        ended_case(open_postgres("ended").await).await;
    }

    /// Closing leaves the file whole even while other handles on the read
    /// models live on (as the runtime's do when a server stops), and later
    /// work is refused rather than lost in a file nobody checkpoints.
    #[tokio::test]
    async fn closed_read_models_leave_no_log_beside_their_file() {
        let p = std::sync::Arc::new(open("close").await);
        let dir = std::env::temp_dir().join(format!("sagaflow-rm-{}-close", std::process::id()));
        let store = MemoryStore::default();
        append(&store, 1, &[started("order", order(1, "c-1"), 1_000)]).await;
        p.catch_up(&store).await.unwrap();
        assert!(dir.join("readmodels.db-wal").exists());
        let held = p.clone();
        p.close().await;
        assert!(!dir.join("readmodels.db-wal").exists());
        append(&store, 2, &[started("order", order(2, "c-1"), 2_000)]).await;
        let e = held.catch_up(&store).await.unwrap_err();
        assert!(matches!(e, StoreError::Unavailable(_)), "{e:?}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// Writing an instance's row builds no temporary table (an `IN` list in a
    /// partial index's condition made SQLite build one on every write), and
    /// the unfinished instances are still found through that index.
    #[tokio::test]
    async fn writing_an_instance_builds_no_temporary_table() {
        let p = open("ephemeral").await;
        let opcodes =
            p.db.fetch(
                "EXPLAIN UPDATE saga_instances SET status = 'completed', last_position = 9 \
                 WHERE id = 'x' AND last_position < 9",
                &[],
                |r| r.text("opcode"),
            )
            .await
            .unwrap();
        assert!(
            opcodes.iter().any(|o| o == "Update" || o == "Insert"),
            "{opcodes:?}"
        );
        assert!(!opcodes.iter().any(|o| o == "OpenEphemeral"), "{opcodes:?}");
        let plan =
            p.db.fetch(&format!("EXPLAIN QUERY PLAN {UNFINISHED}"), &[], |r| {
                r.text("detail")
            })
            .await
            .unwrap();
        assert!(
            plan.iter().any(|d| d.contains("saga_instances_open")),
            "{plan:?}"
        );
        let store = MemoryStore::default();
        append(&store, 1, &[started("order", order(1, "c-1"), 1_000)]).await;
        p.catch_up(&store).await.unwrap();
        assert_eq!(p.unfinished().await.unwrap(), vec![Uuid::from_u128(1)]);
    }

    /// A store made before orders were keyed by their id (migration 10)
    /// keeps its orders through the migrations at the next start.
    #[tokio::test]
    async fn orders_of_an_older_store_outlive_its_migration() {
        use sqlx::sqlite::{SqliteConnectOptions, SqlitePool};
        let dir = std::env::temp_dir().join(format!("sagaflow-rm-{}-older", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("readmodels.db");
        let options = SqliteConnectOptions::new()
            .filename(&path)
            .create_if_missing(true);
        let pool = SqlitePool::connect_with(options).await.unwrap();
        let mut older = sqlx::migrate!("../migrations/sqlite-readmodels");
        older.migrations = older
            .migrations
            .iter()
            .filter(|m| m.version < 10)
            .cloned()
            .collect();
        older.run(&pool).await.unwrap();
        let input = order(1, "c-1").to_string();
        sqlx::query(
            "INSERT INTO saga_instances (id, workflow, version, status, started_at, updated_at, \
             last_position, input) VALUES (?, 'order', 1, 'completed', 5, 6, 3, ?)",
        )
        .bind(Uuid::from_u128(1).to_string())
        .bind(input)
        .execute(&pool)
        .await
        .unwrap();
        sqlx::query(
            "INSERT INTO orders (order_id, instance_seq, customer_id, status, created_at, \
             updated_at, last_position) VALUES ('o-1', 1, 'c-1', 'shipped', 5, 6, 3)",
        )
        .execute(&pool)
        .await
        .unwrap();
        pool.close().await;
        let p = Projections::open(&path).await.unwrap();
        let o = p
            .order("o-1")
            .await
            .unwrap()
            .expect("the order is still there");
        assert_eq!(
            (o.instance_id, o.status.as_str()),
            (Uuid::from_u128(1), "shipped")
        );
        assert_eq!((o.amount, o.customer_id.as_str()), (10.5, "c-1"));
        let page = p.customer_orders("c-1", None, 10).await.unwrap();
        assert_eq!(page.items, vec![o]);
        p.close().await;
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// A parallel step shows as itself, not as whichever branch started last.
    #[tokio::test]
    async fn a_group_shows_as_its_step() {
        let p = open("groups").await;
        let store = MemoryStore::default();
        let t = Timestamp(1_800_000_000_000);
        let branch = |index: u32, name: &str, phase: Phase| Event::StepStarted {
            step: 0,
            index: Some(index),
            name: name.into(),
            attempt: 1,
            phase,
            action: crate::saga::ActionKind::Http,
            at: t,
            timeout_due: None,
        };
        let filter = InstanceFilter {
            workflow: Some("trip".into()),
            status: None,
            started_from: None,
            started_until: None,
            input: Vec::new(),
            after: None,
            limit: 10,
        };
        append(
            &store,
            1,
            &[
                started("trip", json!({}), t.0),
                Event::BranchesStarted {
                    step: 0,
                    name: "book".into(),
                    branches: vec!["flight".into(), "hotel".into()],
                    at: t,
                },
                branch(0, "flight", Phase::Forward),
                branch(1, "hotel", Phase::Forward),
            ],
        )
        .await;
        p.catch_up(&store).await.unwrap();
        let r = p.search(&filter).await.unwrap().items.remove(0);
        assert_eq!(
            (r.status.as_str(), r.current_step.as_deref()),
            ("running", Some("book"))
        );
        append(
            &store,
            1,
            &[
                Event::UnitsToCompensate {
                    step: 0,
                    name: "book".into(),
                    units: vec![1],
                    at: t,
                },
                branch(1, "hotel", Phase::Compensation),
            ],
        )
        .await;
        p.catch_up(&store).await.unwrap();
        let r = p.search(&filter).await.unwrap().items.remove(0);
        assert_eq!(
            (r.status.as_str(), r.current_step.as_deref()),
            ("compensating", Some("book"))
        );
    }

    #[tokio::test]
    async fn search_filters_by_time_and_input_and_pages_without_gaps() {
        search_case(open("search").await).await;
    }

    #[tokio::test]
    async fn search_filters_by_time_and_input_and_pages_without_gaps_in_postgres() {
        search_case(open_postgres("search").await).await;
    }

    async fn orders_case(p: Projections) {
        let store = MemoryStore::new();
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
        // replaying from the start changes nothing (a restart reads the
        // checkpoint back from the database)
        p.db.transaction(vec![stmt("DELETE FROM projection_checkpoints", vec![])])
            .await
            .unwrap();
        p.checkpoint.send_replace(p.checkpoint().await.unwrap());
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

    async fn publish(store: &MemoryStore, workflow: &str, search: &[&str]) {
        let data = json!({"name": workflow, "version": 1, "hash": "h", "source": "", "at": 0, "search": search});
        let new = NewEvent {
            event_type: "WorkflowPublished".into(),
            schema_version: 1,
            data: data.into(),
        };
        let stream = format!("workflow-{workflow}");
        store
            .append(&stream, Expected::Any, vec![new])
            .await
            .unwrap();
    }

    /// Every row of the three tables, as text, in a fixed order.
    async fn dump(p: &Projections) -> Vec<String> {
        let mut out = Vec::new();
        for sql in [
            "SELECT id || '|' || workflow || '|' || CAST(version AS TEXT) || '|' || status || '|' || COALESCE(current_step, '-') \
             || '|' || CAST(attempts AS TEXT) || '|' || COALESCE(error, '-') || '|' || CAST(started_at AS TEXT) || '|' || CAST(updated_at AS TEXT) \
             || '|' || COALESCE(CAST(finished_at AS TEXT), '-') || '|' || input || '|' || CAST(paused AS TEXT) || '|' || CAST(last_position AS TEXT) AS row \
             FROM saga_instances ORDER BY id",
            "SELECT o.order_id || '|' || i.id || '|' || o.customer_id || '|' || o.status || '|' || COALESCE(o.error, '-') \
             || '|' || CAST(o.created_at AS TEXT) || '|' || CAST(o.updated_at AS TEXT) AS row \
             FROM orders o JOIN saga_instances i ON i.seq = o.instance_seq ORDER BY o.order_id",
            "SELECT s.field || '|' || s.value || '|' || CAST(s.started_at AS TEXT) || '|' || i.id || '|' || s.workflow AS row \
             FROM instance_search s JOIN saga_instances i ON i.seq = s.instance_seq ORDER BY s.field, s.value, i.id",
        ] {
            out.extend(p.db.fetch(sql, &[], |r| r.text("row")).await.unwrap());
        }
        out
    }

    /// Several instances whose events interleave: steps, a failure and a retry,
    /// a pause, a group, each way of ending, one left running, an order id used twice.
    async fn busy_log() -> MemoryStore {
        let store = MemoryStore::new();
        publish(&store, "order", &["customer_id"]).await;
        let step = |name: &str, attempt: u32, phase: Phase, at: u64| Event::StepStarted {
            step: 0,
            index: None,
            name: name.into(),
            attempt,
            phase,
            action: crate::saga::ActionKind::Http,
            at: Timestamp(at),
            timeout_due: None,
        };
        let failed = |name: &str, at: u64| Event::StepFailed {
            step: 1,
            index: None,
            name: name.into(),
            attempt: 1,
            kind: crate::dsl::spec::FailureKind::Business,
            error: format!("{name} said no"),
            retryable: false,
            at: Timestamp(at),
        };
        let lives: Vec<(u128, Vec<Event>)> = vec![
            (
                1,
                vec![
                    started("order", order(1, "c-1"), 10),
                    step("reserve", 1, Phase::Forward, 11),
                    succeeded("reserve", 12),
                    step("pay", 1, Phase::Forward, 13),
                    succeeded("pay", 14),
                    step("ship", 1, Phase::Forward, 15),
                    succeeded("ship", 16),
                    Event::SagaCompleted {
                        output: json!({}),
                        at: Timestamp(17),
                    },
                ],
            ),
            (
                2,
                vec![
                    started("order", order(2, "c-2"), 20),
                    step("reserve", 1, Phase::Forward, 21),
                    succeeded("reserve", 22),
                    step("pay", 1, Phase::Forward, 23),
                    failed("pay", 24),
                    step("reserve", 1, Phase::Compensation, 25),
                    Event::SagaCompensated { at: Timestamp(26) },
                ],
            ),
            (
                3,
                vec![
                    started("order", order(3, "c-1"), 30),
                    step("reserve", 1, Phase::Forward, 31),
                    failed("reserve", 32),
                    Event::SagaFailed {
                        reason: "stuck".into(),
                        at: Timestamp(33),
                    },
                    Event::SagaRetried {
                        step: 0,
                        name: "reserve".into(),
                        phase: Phase::Forward,
                        at: Timestamp(34),
                    },
                    Event::SagaPaused {
                        reason: None,
                        at: Timestamp(35),
                    },
                    Event::SagaResumed { at: Timestamp(36) },
                    step("reserve", 2, Phase::Forward, 37),
                    succeeded("reserve", 38),
                ],
            ),
            (
                4,
                vec![
                    started("trip", json!({"customer_id": "c-1"}), 40),
                    Event::BranchesStarted {
                        step: 0,
                        name: "book".into(),
                        branches: vec!["a".into(), "b".into()],
                        at: Timestamp(41),
                    },
                    Event::StepStarted {
                        step: 0,
                        index: Some(1),
                        name: "b".into(),
                        attempt: 1,
                        phase: Phase::Forward,
                        action: crate::saga::ActionKind::Http,
                        at: Timestamp(42),
                        timeout_due: None,
                    },
                    Event::SagaCancelled { at: Timestamp(43) },
                ],
            ),
            // the same order id again: the first instance keeps the order
            (
                5,
                vec![
                    started("order", order(1, "c-9"), 50),
                    step("reserve", 1, Phase::Forward, 51),
                    succeeded("reserve", 52),
                ],
            ),
        ];
        // round robin, one event of each instance at a time
        let most = lives.iter().map(|(_, e)| e.len()).max().unwrap();
        for i in 0..most {
            for (id, events) in &lives {
                if let Some(e) = events.get(i) {
                    append(&store, *id, std::slice::from_ref(e)).await;
                }
            }
        }
        store
    }

    async fn folded_case(open: impl AsyncFn(String) -> Projections) {
        let store = busy_log().await;
        let (log, last) = store.read_all_of_types(None, 10_000, &TYPES).await.unwrap();
        let last = last.unwrap();
        let whole = open("whole".into()).await;
        whole.apply(&log, Some(last)).await.unwrap();
        let want = dump(&whole).await;
        assert!(want.iter().any(|r| r.contains("|cancelled|")), "{want:#?}");
        let one_by_one = open("each".into()).await;
        for rec in &log {
            one_by_one
                .apply(std::slice::from_ref(rec), Some(rec.position))
                .await
                .unwrap();
        }
        assert_eq!(
            dump(&one_by_one).await,
            want,
            "folding a batch changes nothing"
        );
        // a replica (or a replay) applies batches that overlap what is applied
        for (cut, back) in [(7, 3), (12, 12), (20, 1), (30, 25)] {
            let p = open(format!("overlap-{cut}-{back}")).await;
            p.apply(&log[..cut], Some(log[cut - 1].position))
                .await
                .unwrap();
            p.apply(&log[cut - back..], Some(last)).await.unwrap();
            assert_eq!(dump(&p).await, want, "cut at {cut}, {back} again");
        }
    }

    /// A follower told to stop does not first apply the rest of the log.
    #[tokio::test]
    async fn a_stopped_follower_stops_between_batches() {
        let p = open("stop").await;
        let store = MemoryStore::new();
        for n in 0..(BATCH as u32 + 10) {
            append(&store, u128::from(n) + 1, &[started("trip", json!({}), 1)]).await;
        }
        let stop = CancellationToken::new();
        stop.cancel();
        p.follow(&store, stop).await;
        assert_eq!(p.checkpoint().await.unwrap(), None);
        p.catch_up(&store).await.unwrap();
        assert_eq!(p.checkpoint().await.unwrap(), *store.head().borrow());
    }

    /// A log in memory that counts its reads.
    type Log = std::sync::Arc<crate::store::memory::Watched>;

    /// Appends the `n`th saga's start, to a stream of its own.
    async fn append_start(store: &Log, n: u64) -> crate::store::Appended {
        let new = vec![NewEvent::from(&started("trip", json!({}), n))];
        let stream = format!("saga-{}", Uuid::from_u128(n.into()));
        store.append(&stream, Expected::Any, new).await.unwrap()
    }

    /// `p` following `store` until `stop` fires.
    fn spawn_follower(
        p: &std::sync::Arc<Projections>,
        store: &Log,
        stop: &CancellationToken,
    ) -> tokio::task::JoinHandle<()> {
        let (p, store, stop) = (p.clone(), store.clone(), stop.clone());
        tokio::spawn(async move { p.follow(store.as_ref(), stop).await })
    }

    /// A follower that keeps up reads the log once per append: the batch
    /// that reached the head is not followed by a read that finds nothing.
    #[tokio::test]
    async fn a_follower_reads_the_log_once_per_append() {
        let p = std::sync::Arc::new(open("once").await);
        let store = std::sync::Arc::new(crate::store::memory::Watched::default());
        // the first is there before the follower starts, so it finds it at once
        let first = append_start(&store, 1).await;
        let stop = CancellationToken::new();
        let follower = spawn_follower(&p, &store, &stop);
        assert!(p.wait_for(first.position, Duration::from_secs(5)).await);
        let appends = 5;
        for n in 2..=appends {
            let at = append_start(&store, n).await;
            assert!(p.wait_for(at.position, Duration::from_secs(5)).await);
        }
        // a second read after the last batch would come now
        tokio::time::sleep(Duration::from_millis(100)).await;
        stop.cancel();
        follower.await.unwrap();
        let reads = store.reads.load(std::sync::atomic::Ordering::SeqCst);
        assert_eq!(reads, appends as usize);
        assert_eq!(p.checkpoint().await.unwrap(), *store.head().borrow());
    }

    /// A reader that waits for its writes does not wait out the pause in
    /// which the follower gathers commits.
    #[tokio::test]
    async fn a_reader_waiting_for_its_writes_cuts_the_gathering_short() {
        let mut p = open("hurry").await;
        p.gather = Duration::from_secs(600);
        let p = std::sync::Arc::new(p);
        let store = std::sync::Arc::new(crate::store::memory::Watched::default());
        let stop = CancellationToken::new();
        let follower = spawn_follower(&p, &store, &stop);
        // after the first (which the follower's first catch-up may find),
        // each append lands while the follower pauses (its round began at its
        // start), so only the reader's hurry gets it applied
        for n in 1..=3 {
            let at = append_start(&store, n).await;
            assert!(p.wait_for(at.position, Duration::from_secs(10)).await);
        }
        // without a reader waiting, an append waits for the pause to end
        let at = append_start(&store, 4).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(p.applied() < Some(at.position));
        stop.cancel();
        follower.await.unwrap();
    }

    /// The pause ends once enough of the log has come, whatever its length.
    #[tokio::test]
    async fn the_gathering_ends_once_enough_events_have_come() {
        let mut p = open("enough").await;
        p.gather = Duration::from_secs(600);
        p.gather_events = 3;
        let p = std::sync::Arc::new(p);
        let store = std::sync::Arc::new(crate::store::memory::Watched::default());
        let stop = CancellationToken::new();
        let follower = spawn_follower(&p, &store, &stop);
        // the follower's first catch-up, of an empty log, is over before the appends
        tokio::time::sleep(Duration::from_millis(100)).await;
        // positions 0, 1 and 2 (this store counts from 0): the log is at 2
        for n in 1..=3 {
            append_start(&store, n).await;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(
            p.applied(),
            None,
            "the log moved by 2, not 3: still pausing"
        );
        let fourth = append_start(&store, 4).await;
        let mut applied = false;
        for _ in 0..1000 {
            if p.applied() >= Some(fourth.position) {
                applied = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(applied, "the log moved by 3: the pause is over");
        stop.cancel();
        follower.await.unwrap();
    }

    #[tokio::test]
    async fn a_folded_batch_leaves_the_rows_that_event_by_event_would() {
        folded_case(async |name: String| open(&format!("fold-{name}")).await).await;
    }

    #[tokio::test]
    async fn a_folded_batch_leaves_the_rows_that_event_by_event_would_in_postgres() {
        folded_case(async |name: String| {
            open_postgres(&format!("fold_{}", name.replace('-', "_"))).await
        })
        .await;
    }

    #[tokio::test]
    async fn removed_instances_leave_no_search_values() {
        removed_case(open("removed").await).await;
    }

    #[tokio::test]
    async fn removed_instances_leave_no_search_values_in_postgres() {
        removed_case(open_postgres("removed").await).await;
    }

    /// `instance_search` has no index by instance: its rows are deleted by
    /// their key, recomputed from the instance's row. A removal in a later
    /// batch than the start, one in the same batch, and retention's
    /// `forget` each leave none behind, and the kept instance keeps its own.
    async fn removed_case(p: Projections) {
        let store = MemoryStore::new();
        publish(&store, "order", &["customer_id", "amount"]).await;
        let removed = || NewEvent {
            event_type: STREAM_REMOVED.into(),
            schema_version: 1,
            data: json!({}).into(),
        };
        let remove = |n: u128| {
            let store = &store;
            async move {
                let stream = format!("saga-{}", Uuid::from_u128(n));
                store
                    .append(&stream, Expected::Any, vec![removed()])
                    .await
                    .unwrap();
            }
        };
        for n in [1u32, 2, 3, 4, 6] {
            append(
                &store,
                u128::from(n),
                &[started("order", order(n, "c"), 1000 + u64::from(n))],
            )
            .await;
        }
        p.catch_up(&store).await.unwrap();
        remove(1).await;
        append(&store, 5, &[started("order", order(5, "c"), 1005)]).await;
        remove(5).await;
        p.catch_up(&store).await.unwrap();
        p.forget(&[Uuid::from_u128(4), Uuid::from_u128(6)])
            .await
            .unwrap();
        let instances =
            p.db.fetch("SELECT COUNT(*) AS n FROM saga_instances", &[], |r| {
                r.int("n")
            })
            .await
            .unwrap();
        assert_eq!(instances, [2]);
        let left =
            p.db.fetch(
                "SELECT DISTINCT i.id FROM instance_search s JOIN saga_instances i ON i.seq = s.instance_seq ORDER BY i.id",
                &[],
                |r| r.text("id"),
            )
            .await
            .unwrap();
        let kept = [2u128, 3].map(|n| Uuid::from_u128(n).to_string());
        assert_eq!(left, kept);
        let rows =
            p.db.fetch("SELECT COUNT(*) AS n FROM instance_search", &[], |r| {
                r.int("n")
            })
            .await
            .unwrap();
        // customer_id and amount, each
        assert_eq!(rows, [4]);
        let orders =
            p.db.fetch("SELECT COUNT(*) AS n FROM orders", &[], |r| r.int("n"))
                .await
                .unwrap();
        assert_eq!(orders, [2], "the removed instances' orders are forgotten");
    }

    async fn search_case(p: Projections) {
        let store = MemoryStore::new();
        publish(&store, "order", &["customer_id", "amount", "items"]).await;
        publish(&store, "trip", &[]).await;
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
        // a cursor of the form given out before the rows were numbered
        // (`started_at.id` of the page's last instance) goes on from that row
        let first = p
            .search(&InstanceFilter {
                limit: 7,
                ..Default::default()
            })
            .await
            .unwrap();
        let last = first.items.last().unwrap();
        let old = Cursor {
            at: last.started_at.millis(),
            id: last.id.to_string(),
        };
        assert!(old.fits_instances());
        let mut ids = Vec::new();
        for after in [old, first.next.unwrap()] {
            let filter = InstanceFilter {
                limit: 7,
                after: Some(after),
                ..Default::default()
            };
            let items = p.search(&filter).await.unwrap().items;
            ids.push(items.iter().map(|r| r.id).collect::<Vec<_>>());
        }
        assert_eq!(ids[0], ids[1]);
        assert!(!Cursor::decode("1005.o-1").unwrap().fits_instances());

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

        // a workflow that does not declare the field is not in its index
        append(
            &store,
            100,
            &[started("trip", json!({"customer_id": "odd"}), 5000)],
        )
        .await;
        // nor is a value under a path that is not a field: `items` holds objects
        let by_items = InstanceFilter {
            input: vec![("items".into(), "a".into())],
            limit: 100,
            ..Default::default()
        };
        // a replica that did not apply the WorkflowPublished itself reads the declaration back
        p.declared.lock().unwrap().clear();
        append(&store, 101, &[started("order", order(101, "odd"), 5001)]).await;
        p.catch_up(&store).await.unwrap();
        assert!(p.search(&by_items).await.unwrap().items.is_empty());
        let odd_all = InstanceFilter {
            input: vec![("customer_id".into(), "odd".into())],
            limit: 100,
            ..Default::default()
        };
        let found = p.search(&odd_all).await.unwrap().items;
        assert_eq!(found.len(), 14, "13 odd orders and the one started later");
        assert_eq!(found[0].id, Uuid::from_u128(101), "newest first");
        assert!(found.iter().all(|r| r.workflow == "order"));
        // two fields: both must match; a number matches however it is written
        let both = InstanceFilter {
            input: vec![
                ("customer_id".into(), "odd".into()),
                ("amount".into(), "136.5e0".into()),
            ],
            workflow: Some("order".into()),
            limit: 100,
            ..Default::default()
        };
        let found = p.search(&both).await.unwrap().items;
        assert_eq!(
            found.iter().map(|r| r.id).collect::<Vec<_>>(),
            [Uuid::from_u128(13)]
        );
        assert_eq!(p.declaring("customer_id", None).await.unwrap(), ["order"]);
        assert!(p
            .declaring("customer_id", Some("trip"))
            .await
            .unwrap()
            .is_empty());
        // a removed instance leaves nothing behind in the index
        p.forget(&[Uuid::from_u128(101)]).await.unwrap();
        assert_eq!(p.search(&odd_all).await.unwrap().items.len(), 13);
    }
}
