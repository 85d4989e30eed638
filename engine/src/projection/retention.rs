//! The read models' part in retention: which instances ended before a time,
//! and forgetting the rows of removed ones.

use uuid::Uuid;

use super::sql::{Arg, Db, Stmt};
use super::{stmt, Projections};
use crate::saga::Timestamp;
use crate::store::StoreError;

/// An instance that has ended, as retention sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct Ended {
    pub id: Uuid,
    pub workflow: String,
    pub finished_at: Timestamp,
}

/// The statements that forget instance `id`'s rows; `search` are its
/// `instance_search` rows (see [`Projections::search_rows_of`]), deleted by
/// their key: the table has no index by instance (it would double its size).
pub(super) fn forget(id: &str, search: &[[Arg; 5]], out: &mut Vec<Stmt>) {
    out.push(stmt(
        "DELETE FROM saga_instances WHERE id = $1",
        vec![id.into()],
    ));
    out.push(stmt(
        "DELETE FROM orders WHERE instance_id = $1",
        vec![id.into()],
    ));
    for [field, value, started_at, instance, _] in search {
        out.push(stmt(
            "DELETE FROM instance_search \
             WHERE field = $1 AND value = $2 AND started_at = $3 AND instance_id = $4",
            vec![
                field.clone(),
                value.clone(),
                started_at.clone(),
                instance.clone(),
            ],
        ));
    }
}

impl Projections {
    /// Up to `limit` instances that ended before `before`, the oldest first.
    pub async fn ended_before(
        &self,
        before: Timestamp,
        limit: usize,
    ) -> Result<Vec<Ended>, StoreError> {
        self.db
            .fetch(
                "SELECT id, workflow, finished_at FROM saga_instances \
                 WHERE finished_at IS NOT NULL AND finished_at < $1 ORDER BY finished_at LIMIT $2",
                &[(before.millis() as i64).into(), (limit as i64).into()],
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
        let mut stmts = Vec::new();
        for id in ids {
            let id = id.to_string();
            let search = self.search_rows_of(&id).await?;
            forget(&id, &search, &mut stmts);
        }
        self.transaction(&stmts).await
    }

    /// The `instance_search` rows instance `id` has, recomputed from its
    /// stored row as the projection made them (none if it is not stored, or
    /// its workflow version declares no fields).
    pub(super) async fn search_rows_of(&self, id: &str) -> Result<Vec<[Arg; 5]>, StoreError> {
        let stored = self
            .db
            .fetch(
                "SELECT workflow, version, started_at, input FROM saga_instances WHERE id = $1",
                &[id.into()],
                |r| {
                    Ok((
                        r.text("workflow")?,
                        r.int("version")?,
                        r.int("started_at")?,
                        r.text("input")?,
                    ))
                },
            )
            .await?;
        let Some((workflow, version, started_at, input)) = stored.into_iter().next() else {
            return Ok(Vec::new());
        };
        let version = u32::try_from(version).map_err(super::corrupt)?;
        let fields = self.declared(&workflow, version).await?;
        if fields.is_empty() {
            return Ok(Vec::new());
        }
        let input: serde_json::Value = serde_json::from_str(&input).map_err(super::corrupt)?;
        Ok(super::search::rows(
            id, &workflow, started_at, &input, &fields,
        ))
    }

    /// Gives the space of forgotten rows back to the file system (SQLite:
    /// the free pages, then the write-ahead log the deletes went through);
    /// PostgreSQL's autovacuum does this by itself.
    pub async fn reclaim(&self) -> Result<(), StoreError> {
        if let Db::Sqlite(_) = &self.db {
            let no_args: [Arg; 0] = [];
            for pragma in [
                "PRAGMA incremental_vacuum",
                "PRAGMA wal_checkpoint(TRUNCATE)",
            ] {
                self.db.fetch(pragma, &no_args, |_| Ok(())).await?;
            }
        }
        Ok(())
    }
}
