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
    /// How long past the age the oldest ended instance still to remove had
    /// been kept when the batch began: `behind`, or more when the batch took
    /// what came due lately and left an older backlog for later (zero when
    /// nothing was due). The gauge `sagaflow_retention_behind_seconds`.
    pub lag: Duration,
}

/// The pause between two batches while there is more to remove and nothing
/// else is written, so the sweep never takes the writer for long.
const BETWEEN_BATCHES: Duration = Duration::from_millis(20);

/// How many times the configured batch a batch grows to while the server
/// is idle.
const IDLE_GROWTH: usize = 10;

/// How long a batch is sized to take. A batch holds the writers while it
/// runs, and one begun while the server was idle is still running when load
/// comes back: the sagas of that moment wait for it.
const BATCH_TIME: Duration = Duration::from_millis(100);

/// The size of the next batch, after one of `last` instances that removed
/// some and took `took` (`None` when it removed none: nothing to learn).
///
/// - Sized to take [`BATCH_TIME`] at the rate the last one went: `last`
///   times [`BATCH_TIME`] over `took`, and at least half and at most twice
///   `last`, so that one slow or quick batch does not swing the next.
/// - At least `base`; at most `base` while the store takes appends, and
///   [`IDLE_GROWTH`] times `base` while it takes none. Under load a batch
///   waits behind the sagas' writes, so the time it takes says little about
///   how long it holds them; smaller batches there removed a quarter less
///   and made no p99 this machine could tell apart (docs/performance.md,
///   "Retention batches sized by time").
///
/// A removal deletes rows from indexes with random keys; at a million
/// stored, batches of 1,000 cost 30 % less CPU and disk per instance than
/// batches of 100 and remove twice as many a second, but they hold the
/// writers long enough to treble the p99 of sagas running meanwhile
/// (docs/performance.md, "What removing an instance costs"). So batches
/// stay small under load and grow when nothing else is written, as long as
/// one still takes a short time: what a batch costs grows with the store
/// and on a slower disk, and the batch begun just before load comes back
/// is the one that holds it up.
fn next_batch(last: usize, base: usize, idle: bool, took: Option<Duration>) -> usize {
    let most = if idle {
        base.saturating_mul(IDLE_GROWTH)
    } else {
        base
    };
    let next = match took {
        None => last,
        Some(t) if t.is_zero() => last.saturating_mul(2),
        // (the cast back saturates, and the bounds below apply after it)
        Some(t) => {
            let last = last as f64;
            (last * BATCH_TIME.as_secs_f64() / t.as_secs_f64()).clamp(last / 2.0, last * 2.0)
                as usize
        }
    };
    next.clamp(base, most)
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

/// What the retention loop decides between batches, kept apart from the
/// clock and the store: how many instances the next batch takes, and how
/// long to wait after one.
struct Pacer {
    base: usize,
    slack: Duration,
    every: Duration,
    /// A replica cannot tell the others' appends: it counts as under load.
    replica: bool,
    /// The size of the last batch.
    size: usize,
    /// How long the last batch took, if it removed something.
    took: Option<Duration>,
    /// The log's head when the last batch began.
    seen: Option<u64>,
}

impl Pacer {
    fn new(config: &RetentionConfig, replica: bool, head: Option<u64>) -> Self {
        let base = config.batch.max(1);
        Self {
            base,
            slack: slack(config),
            every: config.every(),
            replica,
            size: base,
            took: None,
            seen: head,
        }
    }

    /// The size of the batch about to begin, the log's head being `head`:
    /// the server is idle if nothing was appended since the last batch began.
    fn begin(&mut self, head: Option<u64>) -> usize {
        let idle = head == self.seen && !self.replica;
        self.size = next_batch(self.size, self.base, idle, self.took.take());
        self.seen = head;
        self.size
    }

    /// The pause after the batch, given what it did (`None`: it failed), how
    /// long it took and the log's head at its end (moved since it began: the
    /// store took appends meanwhile).
    fn end(&mut self, swept: Option<&Swept>, took: Duration, head: Option<u64>) -> Duration {
        let under_load = self.replica || head != self.seen;
        match swept {
            Some(s) if s.removed > 0 => {
                self.took = Some(took);
                pause_after(took, s.behind, self.slack, under_load)
            }
            // nothing to remove, or a failure: the next look in a while
            _ => self.every,
        }
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
        let window = before(age.saturating_add(slack(config)));
        let mut ended = projections.ended_between(window, due, limit, held).await?;
        // the oldest of a backlog left for later, which the batch does not show
        let mut left = None;
        if ended.is_empty() {
            ended = projections
                .ended_between(Timestamp(0), due, limit, held)
                .await?;
        } else {
            left = (projections
                .ended_between(Timestamp(0), window, 1, held)
                .await?)
                .first()
                .map(|e| e.finished_at.0);
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
        let lag = Duration::from_millis(due.0.saturating_sub(left.unwrap_or(oldest).min(oldest)));
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
            lag,
        })
    }

    /// Sweeps while there is something to remove, then every
    /// [`RetentionConfig::every`], until the runtime stops, as [`Pacer`]
    /// says: batches sized by what the last took and whether the store took
    /// appends meanwhile ([`next_batch`]), a backlog paced under load
    /// ([`pause_after`]).
    pub(crate) async fn retention_loop(&self) {
        let head = self.0.store.head();
        let mut pacer = Pacer::new(&self.0.config.retention, self.is_replica(), *head.borrow());
        loop {
            let size = pacer.begin(*head.borrow());
            let began = tokio::time::Instant::now();
            let swept = self.sweep_up_to(size).await;
            let took = began.elapsed();
            match &swept {
                Ok(s) => crate::telemetry::retention_behind(s.lag),
                Err(e) => {
                    tracing::warn!(error = %e, "retention could not remove ended instances; retrying");
                }
            }
            let pause = pacer.end(swept.as_ref().ok(), took, *head.borrow());
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
    fn idle_batches_are_sized_to_take_a_tenth_of_a_second_and_fall_back_at_the_first_append() {
        let ms = |n| Some(Duration::from_millis(n));
        let mut size = 100;
        let mut sizes = Vec::new();
        for (idle, took) in [
            (true, ms(50)),
            (true, ms(50)),
            (true, ms(99)),
            (true, ms(60)),
            (true, ms(60)),
            (false, ms(10)),
            (true, ms(10)),
            // slower than BATCH_TIME: smaller, by half at most, never below the base
            (true, ms(150)),
            (true, ms(201)),
            (true, ms(40)),
            // a look that removed nothing: kept (within the bounds)
            (true, None),
            (false, None),
            (false, ms(500)),
        ] {
            size = next_batch(size, 100, idle, took);
            sizes.push(size);
        }
        assert_eq!(
            sizes,
            [200, 400, 404, 673, 1_000, 100, 200, 133, 100, 200, 200, 100, 100]
        );
        assert_eq!(next_batch(1, 1, true, ms(1)), 2);
        assert_eq!(next_batch(100, 100, true, Some(Duration::MAX)), 100);
        assert_eq!(next_batch(usize::MAX, 100, true, ms(1)), 1_000);
        assert_eq!(next_batch(1_000, 100, false, None), 100);
        assert_eq!(next_batch(300, 100, true, Some(Duration::ZERO)), 600);
    }

    #[test]
    fn the_loop_grows_batches_while_the_head_stays_and_paces_a_backlog_once_it_moves() {
        let ms = Duration::from_millis;
        let config = RetentionConfig {
            max_age: Some(Duration::from_secs(60)),
            ..RetentionConfig::default()
        };
        // looks every 6 s; current within 12 s (two looks)
        let removed = |n, behind| Swept {
            removed: n,
            behind,
            ..Swept::default()
        };
        let backlog = Duration::from_secs(3600);
        let mut p = Pacer::new(&config, false, Some(10));
        assert_eq!(p.begin(Some(10)), 100);
        // no append during the batch: idle, the next batch right away, twice as big
        assert_eq!(
            p.end(Some(&removed(100, backlog)), ms(50), Some(10)),
            BETWEEN_BATCHES
        );
        assert_eq!(p.begin(Some(10)), 200);
        // the head moved during it: under load, the backlog paced
        assert_eq!(
            p.end(Some(&removed(200, backlog)), ms(80), Some(11)),
            ms(240)
        );
        // ... and the next batch back to the configured size
        assert_eq!(p.begin(Some(12)), 100);
        // what came due lately is not paced, under load or not
        let current = Duration::from_secs(1);
        assert_eq!(
            p.end(Some(&removed(100, current)), ms(40), Some(13)),
            BETWEEN_BATCHES
        );
        assert_eq!(p.begin(Some(13)), 100);
        // nothing to remove, or a failure: the next look in a while, the size kept
        assert_eq!(
            p.end(Some(&removed(0, Duration::ZERO)), ms(3), Some(13)),
            ms(6_000)
        );
        assert_eq!(p.begin(Some(13)), 100);
        assert_eq!(p.end(None, ms(3), Some(13)), ms(6_000));
        assert_eq!(p.begin(Some(13)), 100);
        // a quick batch makes the next bigger, a slow one smaller (not below the base)
        assert_eq!(
            p.end(Some(&removed(100, backlog)), ms(25), Some(13)),
            BETWEEN_BATCHES
        );
        assert_eq!(p.begin(Some(13)), 200);
        assert_eq!(
            p.end(Some(&removed(200, backlog)), ms(150), Some(13)),
            BETWEEN_BATCHES
        );
        assert_eq!(p.begin(Some(13)), 133);
        assert_eq!(
            p.end(Some(&removed(133, backlog)), ms(450), Some(13)),
            BETWEEN_BATCHES
        );
        assert_eq!(p.begin(Some(13)), 100);

        // a replica counts as under load: never grows, its backlog paced
        let mut p = Pacer::new(&config, true, Some(1));
        assert_eq!(p.begin(Some(1)), 100);
        assert_eq!(p.end(Some(&removed(100, backlog)), ms(10), Some(1)), ms(30));
        assert_eq!(p.begin(Some(1)), 100);
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
