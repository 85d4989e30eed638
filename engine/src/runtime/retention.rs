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
    /// How long past the retention age the oldest instance removed had
    /// been kept (zero when none was removed).
    pub behind: Duration,
}

/// The pause between two batches while there is more to remove and nothing
/// else is written, so the sweep never takes the writer for long.
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

/// While the store takes appends and retention is behind, a batch is
/// followed by a pause this many times as long as the batch took: retention
/// then has at most a quarter of the time.
const PAUSE_UNDER_LOAD: u32 = 3;

/// How far past the age retention may be and still count as current: a
/// tenth of the age, and at least twice [`RetentionConfig::every`] (the
/// wait after a look that found nothing lets that much come due).
fn slack(config: &RetentionConfig) -> Duration {
    let tenth = config.max_age.map_or(Duration::ZERO, |age| age / 10);
    tenth.max(config.every().saturating_mul(2))
}

/// The pause after a batch that removed something and took `took`, when
/// the oldest instance it removed had been kept `behind` past the age.
///
/// - Instances that came due within [`slack`] (a sweep takes those first):
///   [`BETWEEN_BATCHES`]. Retention keeps up with the rate sagas end, or the
///   store would grow under a steady load.
/// - The backlog behind them (retention first turned on for a full store, a
///   shorter age, a long stop, a load it could not keep up with), under
///   load: [`PAUSE_UNDER_LOAD`] times `took`, never less than
///   [`BETWEEN_BATCHES`]. Unpaced, such a backlog at a million stored took
///   about a third of the throughput and raised p99 by half while it lasted
///   (docs/performance.md, "Retention paced by load"); now it takes at most
///   a quarter of the writers' time, and goes at the full rate when load
///   falls.
/// - The backlog, idle: [`BETWEEN_BATCHES`].
fn pause_after(took: Duration, behind: Duration, slack: Duration, under_load: bool) -> Duration {
    if under_load && behind > slack {
        took.saturating_mul(PAUSE_UNDER_LOAD).max(BETWEEN_BATCHES)
    } else {
        BETWEEN_BATCHES
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
        // what came due within the slack first (kept current at the rate
        // sagas end), then the backlog behind it, which the loop paces
        let due = before(age);
        let mut ended = projections
            .ended_between(before(age.saturating_add(slack(config))), due, limit, held)
            .await?;
        if ended.is_empty() {
            ended = projections
                .ended_between(Timestamp(0), due, limit, held)
                .await?;
        }
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
        let oldest = ended.iter().map(|e| e.finished_at.0).min().unwrap_or(0);
        let behind = Duration::from_millis(due.0.saturating_sub(oldest));
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
            behind,
        })
    }

    /// Sweeps while there is something to remove, then every
    /// [`RetentionConfig::every`], until the runtime stops. Batches grow
    /// while nothing else is written ([`next_batch`]); a backlog is paced
    /// under load ([`pause_after`]).
    pub(crate) async fn retention_loop(&self) {
        let every = self.0.config.retention.every();
        let slack = slack(&self.0.config.retention);
        let base = self.0.config.retention.batch.max(1);
        let mut size = base;
        let head = self.0.store.head();
        let mut seen = *head.borrow();
        // a replica cannot tell the others' appends: it counts as under load
        let replica = self.is_replica();
        loop {
            // no append since the last batch began: the server is idle
            let now = *head.borrow();
            size = next_batch(size, base, now == seen && !replica);
            seen = now;
            let began = tokio::time::Instant::now();
            let swept = self.sweep_up_to(size).await;
            let under_load = replica || *head.borrow() != seen;
            if let Ok(s) = &swept {
                crate::telemetry::retention_behind(s.behind);
            }
            let pause = match swept {
                Ok(s) if s.removed > 0 => pause_after(began.elapsed(), s.behind, slack, under_load),
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

    #[test]
    fn a_backlog_under_load_waits_three_times_its_batch_and_a_current_sweep_does_not() {
        let ms = Duration::from_millis;
        let slack = ms(2_000);
        // behind more than the slack, under load: paced
        assert_eq!(pause_after(ms(60), ms(2_001), slack, true), ms(180));
        assert_eq!(pause_after(ms(2), ms(9_000), slack, true), BETWEEN_BATCHES);
        assert_eq!(
            pause_after(Duration::MAX, ms(9_000), slack, true),
            Duration::MAX
        );
        // current, or idle: not paced
        assert_eq!(pause_after(ms(60), slack, slack, true), BETWEEN_BATCHES);
        assert_eq!(
            pause_after(ms(60), ms(9_000), slack, false),
            BETWEEN_BATCHES
        );
    }

    #[test]
    fn retention_is_current_within_a_tenth_of_the_age_or_two_looks() {
        let config = |secs| RetentionConfig {
            max_age: Some(Duration::from_secs(secs)),
            ..RetentionConfig::default()
        };
        let day = 24 * 3600;
        // 30 days: 3 days; 20 s: two looks of 2 s; 5 s: two looks of 1 s
        assert_eq!(slack(&config(30 * day)), Duration::from_secs(3 * day));
        assert_eq!(slack(&config(20)), Duration::from_secs(4));
        assert_eq!(slack(&config(5)), Duration::from_secs(2));
    }
}
