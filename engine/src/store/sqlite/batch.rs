//! Writing a batch of appends: one transaction, one query for the streams
//! the writer has no head for, then a prepared INSERT per new stream and per
//! event.
//!
//! The writer's thread owns its connection and calls SQLite directly, so a
//! statement costs what SQLite does: there is no hand-off to a driver's
//! thread per statement (a profile of the server under load had those
//! hand-offs and their wake-ups above SQLite itself, docs/performance.md).
//! Should an insert fail on a revision already taken (a head the writer
//! knew wrongly), the batch is written again one append at a time, so that
//! only the append at fault fails.

// ahash: keyed at random per process as std's maps are, and several times
// cheaper on stream names and ids (docs/performance.md, seventh session)
use ahash::{AHashMap as HashMap, AHashSet as HashSet};

use rusqlite::types::ToSql;
use rusqlite::{ffi, params, Connection};

use super::{Codec, Head, Heads};
use crate::saga::Timestamp;
use crate::store::sqlite::codec::Encoded;
use crate::store::{AppendRequest, Appended, StoreError};

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
    fn learn(&mut self, conn: &Connection, batch: &[AppendRequest]) -> rusqlite::Result<()> {
        for e in batch.iter().flat_map(|r| &r.events) {
            if self.0.contains_key(&e.event_type) {
                continue;
            }
            conn.prepare_cached(
                "INSERT INTO event_types (name) VALUES (?1) ON CONFLICT DO NOTHING",
            )?
            .execute([&e.event_type])?;
            let id: i64 = conn
                .prepare_cached("SELECT id FROM event_types WHERE name = ?1")?
                .query_row([&e.event_type], |r| r.get(0))?;
            self.0.insert(e.event_type.clone(), id);
        }
        Ok(())
    }
}

/// Writes a batch in one transaction; each append gets its own result.
pub(super) fn write_batch(
    conn: &Connection,
    batch: &[AppendRequest],
    now: Timestamp,
    heads: &mut Heads,
    types: &mut Types,
    codec: &mut Codec,
) -> Vec<Result<Appended, StoreError>> {
    if let Err(e) = types.learn(conn, batch) {
        return unavailable(batch, e.to_string());
    }
    if let Err(e) = begin(conn) {
        return unavailable(batch, e.to_string());
    }
    // Heads as this transaction sees them; they reach the cache only if it commits.
    let mut local = Heads::default();
    let unknown: Vec<&str> = batch
        .iter()
        .map(|r| r.stream.as_str())
        .filter(|s| !heads.0.contains_key(*s))
        .collect();
    let mut lookup = match look_up(conn, &unknown, &mut local) {
        Ok(l) => l,
        Err(e) => {
            rollback(conn);
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
    let positions = match create_streams(conn, &created).and_then(|()| insert(conn, &rows, now)) {
        Ok(p) => p,
        Err(e) => {
            rollback(conn);
            if !is_unique_violation(&e) {
                return unavailable(batch, e.to_string());
            }
            for req in batch {
                heads.0.remove(&req.stream);
            }
            return one_by_one(conn, batch, now, heads, types, codec);
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
    commit(conn, batch, heads, local, results)
}

/// The batch again, one append at a time: an append whose revision is
/// already taken fails alone.
fn one_by_one(
    conn: &Connection,
    batch: &[AppendRequest],
    now: Timestamp,
    heads: &mut Heads,
    types: &Types,
    codec: &mut Codec,
) -> Vec<Result<Appended, StoreError>> {
    if let Err(e) = begin(conn) {
        return unavailable(batch, e.to_string());
    }
    let mut local = Heads::default();
    let mut results = Vec::with_capacity(batch.len());
    for req in batch {
        results.push(append_one(conn, req, now, heads, &mut local, types, codec));
    }
    commit(conn, batch, heads, local, results)
}

fn append_one(
    conn: &Connection,
    req: &AppendRequest,
    now: Timestamp,
    heads: &mut Heads,
    local: &mut Heads,
    types: &Types,
    codec: &mut Codec,
) -> Result<Appended, StoreError> {
    let mut lookup = Lookup::default();
    if !heads.0.contains_key(&req.stream) && !local.0.contains_key(&req.stream) {
        lookup = look_up(conn, &[req.stream.as_str()], local).map_err(super::error)?;
    }
    let mut created = Vec::new();
    let (id, first) = plan(req, heads, local, &mut lookup, &mut created)?;
    let mut rows = Vec::with_capacity(req.events.len());
    push_rows(&mut rows, req, id, first, types, codec);
    // a savepoint, so that a failed append leaves none of its rows behind
    conn.execute_batch("SAVEPOINT one").map_err(super::error)?;
    let written = create_streams(conn, &created).and_then(|()| insert(conn, &rows, now));
    let end = if written.is_ok() {
        "RELEASE one"
    } else {
        "ROLLBACK TO one; RELEASE one"
    };
    conn.execute_batch(end).map_err(super::error)?;
    match written {
        Ok(positions) => Ok(Appended {
            revision: first + req.events.len() as u64 - 1,
            position: positions[positions.len() - 1],
        }),
        // what we knew of the stream is stale: the same as a failed expectation
        Err(e) if is_unique_violation(&e) => {
            heads.0.remove(&req.stream);
            local.0.remove(&req.stream);
            Err(StoreError::Conflict {
                stream: req.stream.clone(),
                expected: req.expected,
                actual: None,
            })
        }
        Err(e) => Err(super::error(e)),
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

/// Looks up `names` in one query: each one's number and last revision
/// (into `local`), or that it is absent or removed.
fn look_up(conn: &Connection, names: &[&str], local: &mut Heads) -> rusqlite::Result<Lookup> {
    let mut lookup = Lookup::default();
    if names.is_empty() {
        return Ok(lookup);
    }
    // one statement whatever the number of names: the names as a JSON array
    let wanted = serde_json::to_string(names).unwrap_or_default();
    let mut st = conn.prepare_cached(
        "SELECT w.value, s.id, (SELECT MAX(revision) FROM events WHERE stream_id = s.id), \
             (SELECT removed_at FROM removed_streams WHERE stream = w.value), \
             (SELECT MAX(id) FROM streams) \
             FROM json_each(?1) AS w LEFT JOIN streams s ON s.name = w.value",
    )?;
    let mut rows = st.query([wanted])?;
    while let Some(row) = rows.next()? {
        let name: String = row.get(0)?;
        let (id, last, removed): (Option<i64>, Option<i64>, Option<i64>) =
            (row.get(1)?, row.get(2)?, row.get(3)?);
        lookup.top = row.get::<_, Option<i64>>(4)?.unwrap_or(0);
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

/// Numbers new streams.
fn create_streams(conn: &Connection, created: &[(i64, String)]) -> rusqlite::Result<()> {
    if created.is_empty() {
        return Ok(());
    }
    let mut st = conn.prepare_cached("INSERT INTO streams (id, name) VALUES (?1, ?2)")?;
    for (id, name) in created {
        st.execute(params![id, name])?;
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
            data: codec.encode(e.data.json_text()),
        });
    }
}

/// Inserts `rows` in order; the position each got.
///
/// The first row is placed after both the newest event and the highest
/// position given out before a removal (`log_head`, which retention keeps:
/// it may remove the stream holding the newest event); SQLite places each
/// of the others after the newest, so no position is given out twice
/// (migration 6). The rows of one call are in one transaction.
fn insert(conn: &Connection, rows: &[Row], now: Timestamp) -> rusqlite::Result<Vec<u64>> {
    let mut first = conn.prepare_cached(
        "INSERT INTO events (position, stream_id, revision, type_id, schema_version, data, recorded_at) \
         VALUES (MAX(COALESCE((SELECT MAX(position) FROM events), 0), \
                     COALESCE((SELECT position FROM log_head), 0)) + 1, \
                 ?1, ?2, ?3, ?4, ?5, ?6)",
    )?;
    let mut rest = conn.prepare_cached(
        "INSERT INTO events (stream_id, revision, type_id, schema_version, data, recorded_at) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
    )?;
    let now = now.millis() as i64;
    rows.iter()
        .enumerate()
        .map(|(i, r)| {
            let st = if i == 0 { &mut first } else { &mut rest };
            let data: &dyn ToSql = match &r.data {
                Encoded::Text(text) => text,
                Encoded::Frame(frame) => frame,
            };
            let position = st.insert(params![
                r.stream_id,
                r.revision as i64,
                r.type_id,
                r.schema_version,
                data,
                now
            ])?;
            Ok(position as u64)
        })
        .collect()
}

/// A revision (or a stream's name) already taken.
fn is_unique_violation(e: &rusqlite::Error) -> bool {
    matches!(e, rusqlite::Error::SqliteFailure(f, _)
        if f.extended_code == ffi::SQLITE_CONSTRAINT_UNIQUE
            || f.extended_code == ffi::SQLITE_CONSTRAINT_PRIMARYKEY)
}

fn begin(conn: &Connection) -> rusqlite::Result<()> {
    conn.execute_batch("BEGIN IMMEDIATE")
}

/// Undoes the open transaction, if it is still open (SQLite may have rolled
/// it back itself); a connection that stays in it is replaced by the writer.
fn rollback(conn: &Connection) {
    if !conn.is_autocommit() {
        let _ = conn.execute_batch("ROLLBACK");
    }
}

fn commit(
    conn: &Connection,
    batch: &[AppendRequest],
    heads: &mut Heads,
    local: Heads,
    results: Vec<Result<Appended, StoreError>>,
) -> Vec<Result<Appended, StoreError>> {
    if let Err(e) = conn.execute_batch("COMMIT") {
        rollback(conn);
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
