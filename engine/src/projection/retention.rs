//! The read models' part in retention: which instances ended before a time,
//! and forgetting the rows of removed ones.

use uuid::Uuid;

use super::sql::{Arg, Stmt};
use super::{stmt, Projections};
use crate::runtime::cluster;
use crate::saga::Timestamp;
use crate::store::StoreError;

/// An instance that has ended, as retention sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct Ended {
    pub id: Uuid,
    pub workflow: String,
    pub finished_at: Timestamp,
}

/// The statements that forget the rows of instances `ids`; `search` are
/// their `instance_search` rows, each naming its instance by row number
/// (see [`Projections::search_rows_of`]),
/// deleted by their key: the table has no index by instance (it would
/// double its size). A few statements for a whole batch, each over up to
/// [`MAX_SET`] rows in a power-of-two chunk (few statement shapes), so the
/// transaction that follows a batch's removal from the log is short.
pub(super) fn forget(ids: &[String], search: &[[Arg; 5]], out: &mut Vec<Stmt>) {
    for chunk in chunks(ids) {
        let args: Vec<Arg> = chunk.iter().map(|id| id.into()).collect();
        let marks = marks(chunk.len(), 1);
        // orders first: they find their instances by the rows' numbers
        out.push(stmt(
            &format!(
                "DELETE FROM orders WHERE instance_seq IN \
                 (SELECT seq FROM saga_instances WHERE id IN ({marks}))"
            ),
            args.clone(),
        ));
        out.push(stmt(
            &format!("DELETE FROM saga_instances WHERE id IN ({marks})"),
            args,
        ));
    }
    for chunk in chunks(search) {
        let mut args = Vec::with_capacity(chunk.len() * 4);
        for [field, value, started_at, instance, _] in chunk {
            args.extend([
                field.clone(),
                value.clone(),
                started_at.clone(),
                instance.clone(),
            ]);
        }
        out.push(stmt(
            &format!(
                "DELETE FROM instance_search \
                 WHERE (field, value, started_at, instance_seq) IN ({})",
                marks(chunk.len(), 4)
            ),
            args,
        ));
    }
}

/// ` AND <the id is in a partition of held>`, or nothing when `held` names
/// every partition. An instance's partition is the low six bits of its id
/// ([`cluster::partition`]): the last byte, the id's last two hex digits,
/// modulo 64. Those digits are listed for each partition held (four each),
/// as literals: they are made here, never from input.
fn in_partitions(held: u64) -> String {
    let all = u64::MAX >> (64 - cluster::PARTITIONS);
    if held & all == all {
        return String::new();
    }
    let digits: Vec<String> = (0..=u8::MAX)
        .filter(|byte| held & (1 << (u32::from(*byte) % cluster::PARTITIONS)) != 0)
        .map(|byte| format!("'{byte:02x}'"))
        .collect();
    if digits.is_empty() {
        return " AND false".to_string();
    }
    format!(" AND substr(id, 35, 2) IN ({})", digits.join(", "))
}

/// The most rows one statement of [`forget`] names.
const MAX_SET: usize = 64;

/// `items` in chunks of the largest power of two that fits, at most [`MAX_SET`].
fn chunks<T>(mut items: &[T]) -> Vec<&[T]> {
    let mut out = Vec::new();
    while !items.is_empty() {
        let n = MAX_SET.min(1 << items.len().ilog2());
        let (chunk, rest) = items.split_at(n);
        out.push(chunk);
        items = rest;
    }
    out
}

/// `($1, $2), ($3, $4)`-style placeholders for `rows` rows of `width`
/// values (a bare list for width 1).
fn marks(rows: usize, width: usize) -> String {
    let row = |r: usize| {
        let cols: Vec<String> = (1..=width).map(|c| format!("${}", r * width + c)).collect();
        if width == 1 {
            cols.concat()
        } else {
            format!("({})", cols.join(", "))
        }
    };
    (0..rows).map(row).collect::<Vec<_>>().join(", ")
}

/// The statements that forget removed instances' rows, prepared.
pub(crate) struct Forgetting(Vec<Stmt>);

impl Projections {
    /// Up to `limit` instances that ended at or after `since` and before
    /// `before`, the oldest first; with `held`, only those of the partitions
    /// it names (bit `p` for partition `p`: a replica's own,
    /// [`crate::runtime::cluster`]).
    ///
    /// The partitions are picked in the query, not after it: a replica that
    /// took the oldest `limit` and kept its own would get its share of them,
    /// and none at all while the others had not yet removed theirs.
    pub async fn ended_between(
        &self,
        since: Timestamp,
        before: Timestamp,
        limit: usize,
        held: Option<u64>,
    ) -> Result<Vec<Ended>, StoreError> {
        let sql = format!(
            "SELECT id, workflow, finished_at FROM saga_instances \
             WHERE finished_at IS NOT NULL AND finished_at >= $3 AND finished_at < $1{} \
             ORDER BY finished_at LIMIT $2",
            held.map_or_else(String::new, in_partitions)
        );
        self.db
            .fetch(
                &sql,
                &[
                    (before.millis() as i64).into(),
                    (limit as i64).into(),
                    (since.millis() as i64).into(),
                ],
                |r| {
                    Ok(Ended {
                        id: Uuid::parse_str(&r.text("id")?).map_err(super::corrupt)?,
                        workflow: r.text("workflow")?,
                        finished_at: Timestamp(r.int("finished_at")? as u64),
                    })
                },
            )
            .await
    }

    /// Forgets the rows of removed instances, in one transaction.
    pub async fn forget(&self, ids: &[Uuid]) -> Result<(), StoreError> {
        let prepared = self.forgetting(ids).await?;
        self.forget_prepared(prepared).await
    }

    /// What forgetting instances `ids` takes, read before their removal
    /// from the log, so that the removal and the forgetting follow each
    /// other with nothing to read in between (an instance already gone from
    /// the log is not listed for longer than one transaction takes).
    pub(crate) async fn forgetting(&self, ids: &[Uuid]) -> Result<Forgetting, StoreError> {
        let ids: Vec<String> = ids.iter().map(Uuid::to_string).collect();
        let search = self.search_rows_of(&ids).await?;
        let mut stmts = Vec::new();
        forget(&ids, &search, &mut stmts);
        Ok(Forgetting(stmts))
    }

    /// Forgets what [`forgetting`](Self::forgetting) prepared, in one transaction.
    pub(crate) async fn forget_prepared(&self, prepared: Forgetting) -> Result<(), StoreError> {
        self.transaction(prepared.0).await
    }

    /// The `instance_search` rows instances `ids` have, recomputed in one
    /// query from their stored rows as the projection made them, each with
    /// its instance's row number where the projection gives the id (none for an
    /// instance not stored, or whose workflow version declares no fields).
    pub(super) async fn search_rows_of(&self, ids: &[String]) -> Result<Vec<[Arg; 5]>, StoreError> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let marks: Vec<String> = (1..=ids.len()).map(|i| format!("${i}")).collect();
        let args: Vec<Arg> = ids.iter().map(|id| id.as_str().into()).collect();
        let stored = self
            .db
            .fetch(
                &format!(
                    "SELECT id, seq, workflow, version, started_at, input FROM saga_instances WHERE id IN ({})",
                    marks.join(", ")
                ),
                &args,
                |r| {
                    Ok((
                        r.text("id")?,
                        r.int("seq")?,
                        r.text("workflow")?,
                        r.int("version")?,
                        r.int("started_at")?,
                        r.text("input")?,
                    ))
                },
            )
            .await?;
        let mut rows = Vec::new();
        for (id, seq, workflow, version, started_at, input) in stored {
            let version = u32::try_from(version).map_err(super::corrupt)?;
            let fields = self.declared(&workflow, version).await?;
            if fields.is_empty() {
                continue;
            }
            let input: serde_json::Value = serde_json::from_str(&input).map_err(super::corrupt)?;
            rows.extend(
                super::search::rows(&id, &workflow, started_at, &input, &fields)
                    .into_iter()
                    .map(|mut row| {
                        row[3] = seq.into();
                        row
                    }),
            );
        }
        Ok(rows)
    }

    /// Gives the space of forgotten rows back to the file system (SQLite:
    /// the free pages, then the write-ahead log the deletes went through),
    /// once they are worth it (the event log's rule,
    /// [`worth_reclaiming`](crate::store::sqlite::worth_reclaiming)), on
    /// the read models' one writer, between its transactions; PostgreSQL's
    /// autovacuum does this by itself.
    pub async fn reclaim(&self) -> Result<(), StoreError> {
        self.db.reclaim().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sets_are_cut_into_power_of_two_chunks() {
        let items: Vec<u32> = (0..100).collect();
        let lens: Vec<usize> = chunks(&items).iter().map(|c| c.len()).collect();
        assert_eq!(lens, vec![64, 32, 4]);
        assert!(chunks::<u32>(&[]).is_empty());
    }

    #[test]
    fn placeholders_number_every_value_once() {
        assert_eq!(marks(3, 1), "$1, $2, $3");
        assert_eq!(marks(2, 2), "($1, $2), ($3, $4)");
    }
}
