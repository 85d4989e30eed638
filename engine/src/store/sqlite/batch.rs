//! Writing a batch of appends: one transaction, and the events of all its
//! appends in a few multi-row INSERTs instead of one per append.
//!
//! Each statement is a hand-off to the SQLite driver's thread and back; a
//! profile of the server under load had that channel and its wake-ups at
//! about a fifth of all samples, more than SQLite itself. Rows go in chunks
//! of a power of two (at most 256), so the driver caches a handful of
//! statement shapes. Should the combined insert fail on a revision already
//! taken (a head the writer knew wrongly), the batch is written again one
//! append at a time, so that only the append at fault fails.

use sqlx::SqliteConnection;

use super::{db_error, Codec, Head, Heads};
use crate::saga::{Clock, SystemClock, Timestamp};
use crate::store::sqlite::codec::Encoded;
use crate::store::{AppendRequest, Appended, StoreError};

/// The most rows one INSERT takes (6 arguments each).
const MAX_ROWS: usize = 256;

/// One event's row.
struct Row<'a> {
    stream_id: i64,
    revision: u64,
    event_type: &'a str,
    schema_version: u16,
    data: Encoded,
}

/// Writes a batch in one transaction; each append gets its own result.
pub(super) async fn write_batch(
    conn: &mut SqliteConnection,
    batch: &[AppendRequest],
    heads: &mut Heads,
    codec: &mut Codec,
) -> Vec<Result<Appended, StoreError>> {
    if let Err(e) = begin(conn).await {
        return unavailable(batch, e.to_string());
    }
    let now = SystemClock.now();
    // Heads as this transaction sees them; they reach the cache only if it commits.
    let mut local = Heads::default();
    let mut results = Vec::with_capacity(batch.len());
    let mut rows = Vec::new();
    for req in batch {
        let planned = plan(conn, req, heads, &mut local).await;
        if let Ok((id, first)) = planned {
            push_rows(&mut rows, req, id, first, codec);
        }
        results.push(planned.map(|(_, first)| Appended {
            revision: first + req.events.len() as u64 - 1,
            position: 0,
        }));
    }
    let positions = match insert(conn, &rows, now).await {
        Ok(p) => p,
        Err(e) => {
            let _ = sqlx::query("ROLLBACK").execute(&mut *conn).await;
            return match e {
                sqlx::Error::Database(d) if d.is_unique_violation() => {
                    for req in batch {
                        heads.0.remove(&req.stream);
                    }
                    one_by_one(conn, batch, heads, codec).await
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
    codec: &mut Codec,
) -> Vec<Result<Appended, StoreError>> {
    if let Err(e) = begin(conn).await {
        return unavailable(batch, e.to_string());
    }
    let now = SystemClock.now();
    let mut local = Heads::default();
    let mut results = Vec::with_capacity(batch.len());
    for req in batch {
        results.push(append_one(conn, req, now, heads, &mut local, codec).await);
    }
    commit(conn, batch, heads, local, results).await
}

async fn append_one(
    conn: &mut SqliteConnection,
    req: &AppendRequest,
    now: Timestamp,
    heads: &mut Heads,
    local: &mut Heads,
    codec: &mut Codec,
) -> Result<Appended, StoreError> {
    let (id, first) = plan(conn, req, heads, local).await?;
    let mut rows = Vec::with_capacity(req.events.len());
    push_rows(&mut rows, req, id, first, codec);
    match insert(conn, &rows, now).await {
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
/// stream's number (a new stream gets one) and its first revision. The head
/// in `local` moves past it.
async fn plan(
    conn: &mut SqliteConnection,
    req: &AppendRequest,
    heads: &Heads,
    local: &mut Heads,
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
            let (id, l, removed): (Option<i64>, Option<i64>, Option<i64>) = sqlx::query_as(
                "SELECT s.id, (SELECT MAX(revision) FROM events WHERE stream_id = s.id), \
                 (SELECT removed_at FROM removed_streams WHERE stream = ?1) \
                 FROM (SELECT ?1 AS name) AS wanted LEFT JOIN streams s ON s.name = wanted.name",
            )
            .bind(&req.stream)
            .fetch_one(&mut *conn)
            .await
            .map_err(db_error)?;
            if let Some(at) = removed {
                return Err(StoreError::Removed {
                    stream: req.stream.clone(),
                    removed_at: Some(Timestamp(at as u64)),
                });
            }
            let l = l.map(|l| l as u64);
            if let Some(id) = id {
                local.0.insert(req.stream.clone(), Head { id, last: l });
            }
            (id, l)
        }
    };
    if !req.expected.admits(last) {
        return Err(StoreError::Conflict {
            stream: req.stream.clone(),
            expected: req.expected,
            actual: last,
        });
    }
    let id = match id {
        Some(id) => id,
        // a new stream gets its number (kept only if the transaction commits)
        None => sqlx::query("INSERT INTO streams (name) VALUES (?)")
            .bind(&req.stream)
            .execute(&mut *conn)
            .await
            .map_err(db_error)?
            .last_insert_rowid(),
    };
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

fn push_rows<'a>(
    rows: &mut Vec<Row<'a>>,
    req: &'a AppendRequest,
    stream_id: i64,
    first: u64,
    codec: &mut Codec,
) {
    for (i, e) in req.events.iter().enumerate() {
        rows.push(Row {
            stream_id,
            revision: first + i as u64,
            event_type: &e.event_type,
            schema_version: e.schema_version,
            data: codec.encode(e.data.to_string()),
        });
    }
}

/// Inserts `rows` in order; the position each got.
async fn insert(
    conn: &mut SqliteConnection,
    rows: &[Row<'_>],
    now: Timestamp,
) -> Result<Vec<u64>, sqlx::Error> {
    let mut positions = Vec::with_capacity(rows.len());
    let mut rest = rows;
    while !rest.is_empty() {
        // the largest power of two that fits: few distinct statements to prepare
        let n = MAX_ROWS.min(1 << rest.len().ilog2());
        let (chunk, tail) = rest.split_at(n);
        rest = tail;
        let mut sql = String::from(
            "INSERT INTO events (stream_id, revision, event_type, schema_version, data, recorded_at) VALUES ",
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
                .bind(r.event_type)
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
