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

/// The statements that forget instance `id`'s rows.
pub(super) fn forget(id: &str) -> [Stmt; 3] {
    [
        stmt("DELETE FROM saga_instances WHERE id = $1", vec![id.into()]),
        stmt("DELETE FROM orders WHERE instance_id = $1", vec![id.into()]),
        stmt(
            "DELETE FROM instance_search WHERE instance_id = $1",
            vec![id.into()],
        ),
    ]
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
        let stmts: Vec<Stmt> = ids.iter().flat_map(|id| forget(&id.to_string())).collect();
        self.transaction(&stmts).await
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
