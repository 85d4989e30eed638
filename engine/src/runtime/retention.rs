//! Retention: instances that ended longer ago than the configured age are
//! removed from the event log and the read models in the background, a small
//! batch at a time, after being archived if an archive folder is set. Each
//! removed stream leaves a tombstone that refuses a late retried start with
//! the same Idempotency-Key for the tombstone window (docs/adr/0015).
//!
//! A batch is: find ended instances (read models, oldest first), archive
//! their histories (synced), remove their streams (tombstones in the same
//! transaction), forget their rows, give the space back. A crash anywhere
//! leaves the rest for the next batch; each part can be done twice.

use std::path::PathBuf;

use super::*;
use crate::archive::{self, ArchivedEvent, ArchivedInstance};

/// How long ended instances are kept, and what happens to them then.
#[derive(Debug, Clone)]
pub struct RetentionConfig {
    /// Instances that ended longer ago than this are removed (`None`: kept
    /// for ever).
    pub max_age: Option<Duration>,
    /// How long a removed instance's tombstone refuses its Idempotency-Key.
    pub tombstone_window: Duration,
    /// Where removed instances are archived first (`None`: not archived).
    pub archive_dir: Option<PathBuf>,
    /// Instances removed per batch (one short transaction each in the
    /// store and the read models, between the appends).
    pub batch: usize,
}

impl Default for RetentionConfig {
    fn default() -> Self {
        Self {
            max_age: None,
            tombstone_window: Duration::from_secs(30 * 24 * 3600),
            archive_dir: None,
            batch: 100,
        }
    }
}

impl RetentionConfig {
    /// How often the sweep looks for ended instances when the last found none:
    /// a tenth of the age, between a second and a minute.
    pub fn every(&self) -> Duration {
        self.max_age.map_or(Duration::from_secs(60), |age| {
            (age / 10).clamp(Duration::from_secs(1), Duration::from_secs(60))
        })
    }
}

/// What one retention batch did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Swept {
    /// Instances removed.
    pub removed: usize,
    /// Tombstones past their window, dropped.
    pub tombstones_forgotten: u64,
    /// Archive files written to.
    pub archived_to: Vec<PathBuf>,
}

/// The pause between two batches while there is more to remove, so the
/// sweep never takes the writer for long.
const BETWEEN_BATCHES: Duration = Duration::from_millis(20);

/// How many times the configured batch a batch grows to while the server
/// is idle.
const IDLE_GROWTH: usize = 10;

/// The size of the next batch: `base` while the store takes appends, and
/// while it takes none twice the last, up to [`IDLE_GROWTH`] times `base`.
///
/// A removal deletes rows from indexes with random keys; at a million
/// stored, batches of 1,000 cost 30 % less CPU and disk per instance than
/// batches of 100 and remove twice as many a second, but they hold the
/// writers long enough to treble the p99 of sagas running meanwhile
/// (docs/performance.md, "What removing an instance costs"). So batches
/// stay small under load and grow when nothing else is written; a batch
/// begun just before load comes back is the one that can hold it up.
fn next_batch(last: usize, base: usize, idle: bool) -> usize {
    if idle {
        last.saturating_mul(2)
            .clamp(base, base.saturating_mul(IDLE_GROWTH))
    } else {
        base
    }
}

impl Runtime {
    /// One batch of retention at the clock's "now" (tests call it instead of
    /// waiting for the loop). Removes nothing without a `max_age` or without
    /// read models (they say which instances ended when).
    pub async fn sweep(&self) -> Result<Swept, RuntimeError> {
        self.sweep_up_to(self.0.config.retention.batch.max(1)).await
    }

    /// One batch of at most `limit` instances.
    async fn sweep_up_to(&self, limit: usize) -> Result<Swept, RuntimeError> {
        let config = &self.0.config.retention;
        let (Some(age), Some(projections)) = (config.max_age, &self.0.projections) else {
            return Ok(Swept::default());
        };
        let now = self.now();
        let before = |d: Duration| Timestamp(now.0.saturating_sub(d.as_millis() as u64));
        // with replicas, each removes the instances of its own partitions
        // (asked for by partition; checked again, as the lease may have moved)
        let held = self.0.cluster.as_ref().map(|c| c.held());
        let ended = projections.ended_before(before(age), limit, held).await?;
        let ended: Vec<_> = ended.into_iter().filter(|e| self.drives(e.id)).collect();
        if ended.is_empty() {
            let forgotten = self
                .0
                .store
                .forget_removed(before(config.tombstone_window))
                .await?;
            return Ok(Swept {
                tombstones_forgotten: forgotten,
                ..Swept::default()
            });
        }
        let streams: Vec<String> = ended.iter().map(|e| format!("saga-{}", e.id)).collect();
        let mut archived_to = Vec::new();
        if let Some(dir) = &config.archive_dir {
            let mut instances = Vec::with_capacity(ended.len());
            for (e, stream) in ended.iter().zip(&streams) {
                let events = self.0.store.read_stream(stream, 0).await?;
                // (removed already by a batch that stopped before forgetting its rows)
                if events.is_empty() {
                    continue;
                }
                instances.push(ArchivedInstance {
                    instance_id: e.id,
                    workflow: e.workflow.clone(),
                    finished_at: e.finished_at,
                    removed_at: now,
                    events: events.into_iter().map(ArchivedEvent::from).collect(),
                });
            }
            let dir = dir.clone();
            archived_to = tokio::task::spawn_blocking(move || archive::append(&dir, &instances))
                .await
                .map_err(|e| RuntimeError::Archive(e.to_string()))?
                .map_err(|e| RuntimeError::Archive(e.to_string()))?;
        }
        let ids: Vec<Uuid> = ended.iter().map(|e| e.id).collect();
        let forgetting = projections.forgetting(&ids).await?;
        self.0.store.remove(&streams, now).await?;
        {
            let mut live = self.lock_live();
            for id in &ids {
                live.remove(id);
            }
        }
        projections.forget_prepared(forgetting).await?;
        self.0.store.reclaim().await?;
        projections.reclaim().await?;
        crate::telemetry::instances_removed(ids.len());
        tracing::info!(instances = ids.len(), "ended instances removed (retention)");
        Ok(Swept {
            removed: ids.len(),
            tombstones_forgotten: 0,
            archived_to,
        })
    }

    /// Sweeps while there is something to remove, then every
    /// [`RetentionConfig::every`], until the runtime stops. Batches grow
    /// while nothing else is written ([`next_batch`]).
    pub(crate) async fn retention_loop(&self) {
        let every = self.0.config.retention.every();
        let base = self.0.config.retention.batch.max(1);
        let mut size = base;
        let head = self.0.store.head();
        let mut seen = *head.borrow();
        loop {
            // no append since the last batch: the server is idle (a replica
            // cannot tell the others' appends, so it keeps to small batches)
            let now = *head.borrow();
            size = next_batch(size, base, now == seen && !self.is_replica());
            seen = now;
            let pause = match self.sweep_up_to(size).await {
                Ok(s) if s.removed > 0 => BETWEEN_BATCHES,
                Ok(_) => every,
                Err(e) => {
                    tracing::warn!(error = %e, "retention could not remove ended instances; retrying");
                    every
                }
            };
            tokio::select! {
                () = self.0.stop.cancelled() => return,
                () = tokio::time::sleep(pause) => {}
            }
        }
    }

    /// Why the store has no instance `id`: removed by retention (with
    /// when), or unknown.
    pub async fn why_missing(&self, id: Uuid) -> RuntimeError {
        match self.0.store.tombstone(&format!("saga-{id}")).await {
            Ok(Some(t)) => RuntimeError::Removed {
                id,
                removed_at: t.removed_at,
            },
            _ => RuntimeError::UnknownInstance(id),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_grow_while_idle_and_fall_back_at_the_first_append() {
        let mut size = 100;
        let mut sizes = Vec::new();
        for idle in [true, true, true, true, true, false, true] {
            size = next_batch(size, 100, idle);
            sizes.push(size);
        }
        assert_eq!(sizes, [200, 400, 800, 1_000, 1_000, 100, 200]);
        assert_eq!(next_batch(1, 1, true), 2);
        assert_eq!(next_batch(usize::MAX, 100, true), 1_000);
    }
}
