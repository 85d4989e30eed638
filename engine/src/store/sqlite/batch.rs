//! Writing a batch of appends: one transaction, one query for the streams
//! the writer has no head for, one INSERT for the new streams, and the
//! events of all its appends in a few multi-row INSERTs.
//!
//! Each statement is a hand-off to the SQLite driver's thread and back; a
//! profile of the server under load had that channel and its wake-ups at
//! about a fifth of all samples, more than SQLite itself. Rows go in chunks
//! of a power of two (at most 256), so the driver caches a handful of
//! statement shapes. Should the combined insert fail on a revision already
//! taken (a head the writer knew wrongly), the batch is written again one
//! append at a time, so that only the append at fault fails.

use std::collections::{HashMap, HashSet};

use sqlx::SqliteConnection;

use super::{db_error, Codec, Head, Heads};
use crate::saga::{Clock, SystemClock, Timestamp};
use crate::store::sqlite::codec::Encoded;
use crate::store::{AppendRequest, Appended, StoreError};

/// The most rows one INSERT takes (6 arguments each).
const MAX_ROWS: usize = 256;

/// What one query told of streams the writer had no head for.
#[derive(Default)]
struct Lookup {
    /// Streams without a number: they have never had events.
    absent: HashSet<String>,
    /// Removed streams, with when.
    removed: HashMap<String, Timestamp>,
    /// The highest stream number in use; new streams get the next ones.
    top: i64,
}

/// One event's row.
struct Row {
    stream_id: i64,
    revision: u64,
    type_id: i64,
    schema_version: u16,
    data: Encoded,
}

/// Event type names and their numbers in `event_types`, as the writer has
/// met them. A new name is numbered in a statement of its own, before the
/// batch's transaction, so a batch that rolls back never leaves the cache
/// naming a number the file does not have (an unused name costs nothing).
#[derive(Default)]
pub(super) struct Types(HashMap<String, i64>);

impl Types {
    async fn learn(
        &mut self,
        conn: &mut SqliteConnection,
        batch: &[AppendRequest],
    ) -> Result<(), sqlx::Error> {
        for e in batch.iter().flat_map(|r| &r.events) {
            if self.0.contains_key(&e.event_type) {
                continue;
            }
            sqlx::query("INSERT INTO event_types (name) VALUES (?) ON CONFLICT DO NOTHING")
                .bind(&e.event_type)
                .execute(&mut *conn)
                .await?;
            let id: i64 = sqlx::query_scalar("SELECT id FROM event_types WHERE name = ?")
                .bind(&e.event_type)
                .fetch_one(&mut *conn)
                .await?;
            self.0.insert(e.event_type.clone(), id);
        }
        Ok(())
    }
}

/// Writes a batch in one transaction; each append gets its own result.
pub(super) async fn write_batch(
    conn: &mut SqliteConnection,
    batch: &[AppendRequest],
    heads: &mut Heads,
    types: &mut Types,
    codec: &mut Codec,
) -> Vec<Result<Appended, StoreError>> {
    if let Err(e) = types.learn(conn, batch).await {
        return unavailable(batch, e.to_string());
    }
    if let Err(e) = begin(conn).await {
        return unavailable(batch, e.to_string());
    }
    let now = SystemClock.now();
    // Heads as this transaction sees them; they reach the cache only if it commits.
    let mut local = Heads::default();
    let unknown: Vec<&str> = batch
        .iter()
        .map(|r| r.stream.as_str())
        .filter(|s| !heads.0.contains_key(*s))
        .collect();
    let mut lookup = match look_up(conn, &unknown, &mut local).await {
        Ok(l) => l,
        Err(e) => {
            let _ = sqlx::query("ROLLBACK").execute(&mut *conn).await;
            return unavailable(batch, e.to_string());
        }
    };
    let mut results = Vec::with_capacity(batch.len());
    let mut rows = Vec::new();
    let mut created = Vec::new();
    for req in batch {
        let planned = plan(req, heads, &mut local, &mut lookup, &mut created);
        if let Ok((id, first)) = planned {
            push_rows(&mut rows, req, id, first, types, codec);
        }
        results.push(planned.map(|(_, first)| Appended {
            revision: first + req.events.len() as u64 - 1,
            position: 0,
        }));
    }
    let written = match create_streams(conn, &created).await {
        Ok(()) => insert(conn, &rows, now).await,
        Err(e) => Err(e),
    };
    let positions = match written {
        Ok(p) => p,
        Err(e) => {
            let _ = sqlx::query("ROLLBACK").execute(&mut *conn).await;
            return match e {
                sqlx::Error::Database(d) if d.is_unique_violation() => {
                    for req in batch {
                        heads.0.remove(&req.stream);
                    }
                    one_by_one(conn, batch, heads, types, codec).await
                }
                e => unavailable(batch, e.to_string()),
            };
        }
    };
    // each append's position is that of its last row; rows are in the batch's order
    let mut next = 0;
    for (req, result) in batch.iter().zip(results.iter_mut()) {
        if let Ok(a) = result {
            next += req.events.len();
            a.position = positions[next - 1];
        }
    }
    commit(conn, batch, heads, local, results).await
}

/// The batch again, one INSERT per append: an append whose revision is
/// already taken fails alone.
async fn one_by_one(
    conn: &mut SqliteConnection,
    batch: &[AppendRequest],
    heads: &mut Heads,
    types: &Types,
    codec: &mut Codec,
) -> Vec<Result<Appended, StoreError>> {
    if let Err(e) = begin(conn).await {
        return unavailable(batch, e.to_string());
    }
    let now = SystemClock.now();
    let mut local = Heads::default();
    let mut results = Vec::with_capacity(batch.len());
    for req in batch {
        results.push(append_one(conn, req, now, heads, &mut local, types, codec).await);
    }
    commit(conn, batch, heads, local, results).await
}

async fn append_one(
    conn: &mut SqliteConnection,
    req: &AppendRequest,
    now: Timestamp,
    heads: &mut Heads,
    local: &mut Heads,
    types: &Types,
    codec: &mut Codec,
) -> Result<Appended, StoreError> {
    let mut lookup = Lookup::default();
    if !heads.0.contains_key(&req.stream) && !local.0.contains_key(&req.stream) {
        lookup = look_up(conn, &[req.stream.as_str()], local)
            .await
            .map_err(db_error)?;
    }
    let mut created = Vec::new();
    let (id, first) = plan(req, heads, local, &mut lookup, &mut created)?;
    let mut rows = Vec::with_capacity(req.events.len());
    push_rows(&mut rows, req, id, first, types, codec);
    let written = match create_streams(conn, &created).await {
        Ok(()) => insert(conn, &rows, now).await,
        Err(e) => Err(e),
    };
    match written {
        Ok(positions) => Ok(Appended {
            revision: first + req.events.len() as u64 - 1,
            position: positions[positions.len() - 1],
        }),
        // what we knew of the stream is stale: the same as a failed expectation
        Err(sqlx::Error::Database(d)) if d.is_unique_violation() => {
            heads.0.remove(&req.stream);
            local.0.remove(&req.stream);
            Err(StoreError::Conflict {
                stream: req.stream.clone(),
                expected: req.expected,
                actual: None,
            })
        }
        Err(e) => Err(db_error(e)),
    }
}

/// Checks an append against its stream's head and gives it its place: the
/// stream's number (a new stream gets the next one, to create in
/// `created`) and its first revision. The head in `local` moves past it.
/// A stream with no head in `heads` or `local` must be in `lookup`.
fn plan(
    req: &AppendRequest,
    heads: &Heads,
    local: &mut Heads,
    lookup: &mut Lookup,
    created: &mut Vec<(i64, String)>,
) -> Result<(i64, u64), StoreError> {
    if req.events.is_empty() {
        return Err(StoreError::empty_append());
    }
    let known = local
        .0
        .get(&req.stream)
        .or_else(|| heads.0.get(&req.stream))
        .copied();
    let (id, last) = match known {
        Some(h) => (Some(h.id), h.last),
        None => {
            if let Some(at) = lookup.removed.get(&req.stream) {
                return Err(StoreError::Removed {
                    stream: req.stream.clone(),
                    removed_at: Some(*at),
                });
            }
            if !lookup.absent.contains(&req.stream) {
                return Err(StoreError::Unavailable(format!(
                    "stream {} was not looked up",
                    req.stream
                )));
            }
            (None, None)
        }
    };
    if !req.expected.admits(last) {
        return Err(StoreError::Conflict {
            stream: req.stream.clone(),
            expected: req.expected,
            actual: last,
        });
    }
    let id = id.unwrap_or_else(|| {
        lookup.top += 1;
        created.push((lookup.top, req.stream.clone()));
        lookup.top
    });
    let first = last.map_or(0, |l| l + 1);
    let last = first + req.events.len() as u64 - 1;
    local.0.insert(
        req.stream.clone(),
        Head {
            id,
            last: Some(last),
        },
    );
    Ok((id, first))
}

/// A looked-up name: its number, last revision, removal time, and the
/// highest number in use.
type StreamRow = (String, Option<i64>, Option<i64>, Option<i64>, Option<i64>);

/// Looks up `names` in one query: each one's number and last revision
/// (into `local`), or that it is absent or removed.
async fn look_up(
    conn: &mut SqliteConnection,
    names: &[&str],
    local: &mut Heads,
) -> Result<Lookup, sqlx::Error> {
    let mut lookup = Lookup::default();
    if names.is_empty() {
        return Ok(lookup);
    }
    // one statement whatever the number of names: the names as a JSON array
    let wanted = serde_json::to_string(names).unwrap_or_default();
    let rows: Vec<StreamRow> = sqlx::query_as(
        "SELECT w.value, s.id, (SELECT MAX(revision) FROM events WHERE stream_id = s.id), \
             (SELECT removed_at FROM removed_streams WHERE stream = w.value), \
             (SELECT MAX(id) FROM streams) \
             FROM json_each(?1) AS w LEFT JOIN streams s ON s.name = w.value",
    )
    .bind(wanted)
    .fetch_all(&mut *conn)
    .await?;
    for (name, id, last, removed, top) in rows {
        lookup.top = top.unwrap_or(0);
        if let Some(at) = removed {
            lookup.removed.insert(name, Timestamp(at as u64));
        } else if let Some(id) = id {
            let last = last.map(|l| l as u64);
            local.0.insert(name, Head { id, last });
        } else {
            lookup.absent.insert(name);
        }
    }
    Ok(lookup)
}

/// Numbers new streams, in one INSERT.
async fn create_streams(
    conn: &mut SqliteConnection,
    created: &[(i64, String)],
) -> Result<(), sqlx::Error> {
    let mut rest = created;
    while !rest.is_empty() {
        let n = chunk_len(rest.len());
        let (chunk, tail) = rest.split_at(n);
        rest = tail;
        let sql = format!(
            "INSERT INTO streams (id, name) VALUES {}",
            vec!["(?, ?)"; n].join(", ")
        );
        let mut q = sqlx::query(&sql);
        for (id, name) in chunk {
            q = q.bind(*id).bind(name.as_str());
        }
        q.execute(&mut *conn).await?;
    }
    Ok(())
}

fn push_rows(
    rows: &mut Vec<Row>,
    req: &AppendRequest,
    stream_id: i64,
    first: u64,
    types: &Types,
    codec: &mut Codec,
) {
    for (i, e) in req.events.iter().enumerate() {
        rows.push(Row {
            stream_id,
            revision: first + i as u64,
            // every type of the batch was learned before it began
            type_id: types.0.get(&e.event_type).copied().unwrap_or(0),
            schema_version: e.schema_version,
            data: codec.encode(e.data.to_string()),
        });
    }
}

/// Inserts `rows` in order; the position each got.
async fn insert(
    conn: &mut SqliteConnection,
    rows: &[Row],
    now: Timestamp,
) -> Result<Vec<u64>, sqlx::Error> {
    let mut positions = Vec::with_capacity(rows.len());
    let mut rest = rows;
    while !rest.is_empty() {
        let n = chunk_len(rest.len());
        let (chunk, tail) = rest.split_at(n);
        rest = tail;
        let mut sql = String::from(
            "INSERT INTO events (stream_id, revision, type_id, schema_version, data, recorded_at) VALUES ",
        );
        for i in 0..n {
            sql.push_str(if i == 0 {
                "(?, ?, ?, ?, ?, ?)"
            } else {
                ", (?, ?, ?, ?, ?, ?)"
            });
        }
        let mut q = sqlx::query(&sql);
        for r in chunk {
            q = q
                .bind(r.stream_id)
                .bind(r.revision as i64)
                .bind(r.type_id)
                .bind(i64::from(r.schema_version));
            q = match &r.data {
                Encoded::Text(text) => q.bind(text.as_str()),
                Encoded::Frame(frame) => q.bind(frame.as_slice()),
            };
            q = q.bind(now.millis() as i64);
        }
        // one writer, so the rows of one INSERT take consecutive positions
        let last = q.execute(&mut *conn).await?.last_insert_rowid() as u64;
        positions.extend((last + 1 - n as u64)..=last);
    }
    Ok(positions)
}

/// How many of `left` rows the next INSERT takes: the largest power of two
/// that fits, so the driver prepares few distinct statements.
fn chunk_len(left: usize) -> usize {
    MAX_ROWS.min(1 << left.ilog2())
}

async fn begin(conn: &mut SqliteConnection) -> Result<(), sqlx::Error> {
    sqlx::query("BEGIN IMMEDIATE").execute(&mut *conn).await?;
    Ok(())
}

async fn commit(
    conn: &mut SqliteConnection,
    batch: &[AppendRequest],
    heads: &mut Heads,
    local: Heads,
    results: Vec<Result<Appended, StoreError>>,
) -> Vec<Result<Appended, StoreError>> {
    if let Err(e) = sqlx::query("COMMIT").execute(&mut *conn).await {
        let _ = sqlx::query("ROLLBACK").execute(&mut *conn).await;
        return unavailable(batch, format!("commit failed: {e}"));
    }
    if heads.0.len() + local.0.len() > super::HEAD_CACHE {
        heads.0.clear();
    }
    heads.0.extend(local.0);
    results
}

fn unavailable(batch: &[AppendRequest], why: String) -> Vec<Result<Appended, StoreError>> {
    batch
        .iter()
        .map(|_| Err(StoreError::Unavailable(why.clone())))
        .collect()
}
