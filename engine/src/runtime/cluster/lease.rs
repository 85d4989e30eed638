//! Replicas sharing one store (PostgreSQL or EventStoreDB).
//!
//! Instances fall into [`PARTITIONS`] partitions by their id. Each replica
//! drives the instances of the partitions it holds: it performs their effects,
//! arms their timers and hands out their tasks. Who holds what is a lease
//! table kept as the last event of the stream [`STREAM`], changed only by an
//! append that expects the revision it read (compare-and-set), so two
//! replicas never both believe they won the same partition.
//!
//! Every `renew` interval a replica reads the table, marks itself alive until
//! `now + ttl`, forgets replicas whose time ran out (their partitions are
//! free), gives back partitions above its fair share and takes free ones up
//! to it. When its append fails for long enough that the others may think it
//! dead, it stops driving anything until it renews again (self-fencing).
//!
//! Any replica may record an input (a start, a signal, a worker's answer) for
//! any instance: appends carry the expected revision. The holder learns of
//! events it did not write by following the log, and performs what they ask.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::saga::Timestamp;
use crate::store::{EventStore, Expected, NewEvent, StoreError};

/// How many partitions instances are spread over (the bits of a `u64`).
pub const PARTITIONS: u32 = 64;
/// The stream holding the lease table.
pub const STREAM: &str = "sagaflow-cluster";
const EVENT: &str = "LeaseTable";
/// Lease-table events kept in the stream (older ones are trimmed).
const KEEP: u64 = 16;

/// The partition of an instance.
pub fn partition(id: Uuid) -> u32 {
    // The low bits are random in both v4/v7 ids and v5 (hash) ids.
    (id.as_u128() % u128::from(PARTITIONS)) as u32
}

/// How a replica takes part.
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    /// This replica's name in the lease table (unique per process).
    pub replica: String,
    /// How long a replica counts as alive after its last renewal.
    pub ttl: Duration,
    /// Where the other replicas reach this one's API (to relay a worker's
    /// heartbeat to the replica that handed the task out).
    pub url: Option<String>,
}

impl ClusterConfig {
    pub fn new(ttl: Duration, url: Option<String>) -> Self {
        Self {
            replica: Uuid::now_v7().to_string(),
            ttl,
            url,
        }
    }

    /// How often the table is read and the lease renewed.
    pub fn renew_every(&self) -> Duration {
        (self.ttl / 5).max(Duration::from_millis(50))
    }
}

/// The lease table as stored.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Table {
    /// Replica name -> alive until (ms since the epoch).
    pub replicas: BTreeMap<String, u64>,
    /// The holder of each partition, if any.
    pub owners: Vec<Option<String>>,
    /// Replica name -> the base URL of its API, for those that said.
    #[serde(default)]
    pub urls: BTreeMap<String, String>,
}

impl Table {
    /// The partitions `replica` holds, as a bit set.
    pub fn held_by(&self, replica: &str) -> u64 {
        self.owners
            .iter()
            .enumerate()
            .filter(|(_, o)| o.as_deref() == Some(replica))
            .fold(0, |m, (p, _)| m | (1 << p))
    }
}

/// The table `me` writes at `now`: renews its lease, frees the partitions of
/// replicas whose lease ran out, and moves its own holdings towards a fair
/// share (or to none when `leaving`).
pub fn plan(
    table: &Table,
    me: &str,
    url: Option<&str>,
    now: u64,
    ttl: Duration,
    leaving: bool,
) -> Table {
    let mut next = Table {
        replicas: table
            .replicas
            .iter()
            .filter(|(r, until)| **until > now && r.as_str() != me)
            .map(|(r, u)| (r.clone(), *u))
            .collect(),
        owners: vec![None; PARTITIONS as usize],
        urls: BTreeMap::new(),
    };
    if !leaving {
        next.replicas
            .insert(me.to_string(), now + ttl.as_millis() as u64);
    }
    for (r, u) in &table.urls {
        if next.replicas.contains_key(r) && r != me {
            next.urls.insert(r.clone(), u.clone());
        }
    }
    if let (Some(u), false) = (url, leaving) {
        next.urls.insert(me.to_string(), u.to_string());
    }
    for (p, owner) in table.owners.iter().enumerate().take(PARTITIONS as usize) {
        if let Some(o) = owner {
            if next.replicas.contains_key(o) {
                next.owners[p] = Some(o.clone());
            }
        }
    }
    if leaving {
        return next;
    }
    let live = next.replicas.len() as u32;
    let share = PARTITIONS.div_ceil(live) as usize;
    let mine: Vec<usize> = (0..PARTITIONS as usize)
        .filter(|p| next.owners[*p].as_deref() == Some(me))
        .collect();
    if mine.len() > share {
        for p in &mine[share..] {
            next.owners[*p] = None;
        }
    } else {
        let mut want = share - mine.len();
        for owner in next.owners.iter_mut() {
            if want == 0 {
                break;
            }
            if owner.is_none() {
                *owner = Some(me.to_string());
                want -= 1;
            }
        }
    }
    next
}

/// A replica's view of the cluster.
pub(crate) struct Cluster {
    pub config: ClusterConfig,
    /// The partitions this replica drives now (bit set).
    held: AtomicU64,
    /// Until when (ms) the last renewal this replica wrote keeps others away.
    fenced_at: AtomicU64,
    /// The last table read and its revision.
    last: tokio::sync::Mutex<Option<(u64, Table)>>,
}

/// What a round changed in the partitions held.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Change {
    pub gained: u64,
    pub lost: u64,
}

impl Cluster {
    pub fn new(config: ClusterConfig) -> Self {
        Self {
            config,
            held: AtomicU64::new(0),
            fenced_at: AtomicU64::new(0),
            last: tokio::sync::Mutex::new(None),
        }
    }

    pub fn holds(&self, id: Uuid) -> bool {
        self.held.load(Ordering::Acquire) & (1 << partition(id)) != 0
    }

    pub fn held(&self) -> u64 {
        self.held.load(Ordering::Acquire)
    }

    /// The APIs of the other live replicas at the last round, in a random
    /// order (so polls spread over them).
    pub async fn other_urls(&self) -> Vec<String> {
        let last = self.last.lock().await;
        let Some((_, table)) = last.as_ref() else {
            return Vec::new();
        };
        let mut urls: Vec<String> = table
            .urls
            .iter()
            .filter(|(r, _)| **r != self.config.replica)
            .map(|(_, u)| u.clone())
            .collect();
        let turn = Uuid::new_v4().as_u128() as usize;
        if !urls.is_empty() {
            let n = urls.len();
            urls.rotate_left(turn % n);
        }
        urls
    }

    /// The API of the replica that holds the instance's partition, if that
    /// is another one and it said where it is. The table is read again
    /// first: the one of this replica's last round may be up to a renewal
    /// old, and in that time a partition it saw free (its holder died) may
    /// have been taken by another replica.
    pub async fn holder_url(&self, store: &dyn EventStore, id: Uuid) -> Option<String> {
        let mut last = self.last.lock().await;
        let from = last.as_ref().map_or(0, |(rev, _)| *rev);
        match store.read_stream(STREAM, from).await {
            Ok(events) => {
                if let Some(e) = events.last() {
                    match Table::deserialize(&*e.data) {
                        Ok(table) => *last = Some((e.revision, table)),
                        Err(err) => tracing::warn!(error = %err, "unreadable lease table"),
                    }
                }
            }
            // the last round's table is the best this replica knows
            Err(e) => tracing::debug!(error = %e, "could not read the lease table"),
        }
        let (_, table) = last.as_ref()?;
        let holder = table.owners.get(partition(id) as usize)?.as_ref()?;
        if *holder == self.config.replica {
            return None;
        }
        table.urls.get(holder).cloned()
    }

    /// Reads the table, writes this replica's next one, and returns what
    /// changed in its holdings. A lost race is retried with the newer table.
    pub async fn round(
        &self,
        store: &dyn EventStore,
        now: Timestamp,
        leaving: bool,
    ) -> Result<Change, StoreError> {
        let mut last = self.last.lock().await;
        let mut result = Err(StoreError::Unavailable("no round ran".into()));
        for _ in 0..4 {
            let from = last.as_ref().map_or(0, |(rev, _)| *rev);
            let events = store.read_stream(STREAM, from).await?;
            if let Some(e) = events.last() {
                let table = Table::deserialize(&*e.data)
                    .map_err(|err| StoreError::Corrupt(format!("{STREAM}: {err}")))?;
                *last = Some((e.revision, table));
            }
            let (expected, current) = match &*last {
                Some((rev, t)) => (Expected::Revision(*rev), t.clone()),
                None => (Expected::NoStream, Table::default()),
            };
            let next = plan(
                &current,
                &self.config.replica,
                self.config.url.as_deref(),
                now.millis(),
                self.config.ttl,
                leaving,
            );
            let event = NewEvent {
                event_type: EVENT.into(),
                schema_version: 1,
                data: serde_json::to_value(&next)
                    .expect("a table serializes")
                    .into(),
            };
            match store.append(STREAM, expected, vec![event]).await {
                Ok(a) => {
                    if a.revision >= KEEP && a.revision % KEEP == 0 {
                        if let Err(e) = store.trim(STREAM, a.revision + 1 - KEEP).await {
                            tracing::debug!(error = %e, "could not trim the lease table's stream");
                        }
                    }
                    *last = Some((a.revision, next.clone()));
                    // Others wait for `ttl` after this renewal; stop a quarter earlier.
                    let fence = now.millis() + (self.config.ttl.as_millis() as u64) * 3 / 4;
                    self.fenced_at.store(fence, Ordering::Release);
                    let held = next.held_by(&self.config.replica);
                    let before = self.held.swap(held, Ordering::AcqRel);
                    return Ok(Change {
                        gained: held & !before,
                        lost: before & !held,
                    });
                }
                Err(e) if e.is_conflict() => {
                    result = Err(e);
                    continue;
                }
                Err(e) => return Err(e),
            }
        }
        result
    }

    /// Gives up every partition if the last renewal is too old to keep the
    /// others away; returns what was dropped.
    pub fn fence(&self, now: Timestamp) -> u64 {
        if now.millis() >= self.fenced_at.load(Ordering::Acquire) {
            self.held.swap(0, Ordering::AcqRel)
        } else {
            0
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TTL: Duration = Duration::from_secs(10);

    fn replica(name: &str) -> Cluster {
        Cluster::new(ClusterConfig {
            replica: name.into(),
            ttl: TTL,
            url: None,
        })
    }

    fn count(t: &Table, r: &str) -> u32 {
        t.held_by(r).count_ones()
    }

    #[test]
    fn a_lone_replica_takes_every_partition() {
        let t = plan(&Table::default(), "a", None, 1000, TTL, false);
        assert_eq!(count(&t, "a"), PARTITIONS);
        assert_eq!(t.replicas["a"], 11_000);
    }

    #[test]
    fn a_newcomer_gets_a_fair_share_in_two_rounds() {
        let t = plan(&Table::default(), "a", None, 1000, TTL, false);
        // b registers; nothing is free yet
        let t = plan(&t, "b", None, 1100, TTL, false);
        assert_eq!(count(&t, "b"), 0);
        // a sees two replicas and gives back half
        let t = plan(&t, "a", None, 1200, TTL, false);
        assert_eq!(count(&t, "a"), PARTITIONS / 2);
        // b takes them
        let t = plan(&t, "b", None, 1300, TTL, false);
        assert_eq!(count(&t, "b"), PARTITIONS / 2);
        assert_eq!(t.held_by("a") & t.held_by("b"), 0);
    }

    #[test]
    fn a_dead_replicas_partitions_are_taken_once_its_lease_runs_out() {
        let t = plan(&Table::default(), "a", None, 1000, TTL, false);
        let t = plan(&t, "b", None, 1000, TTL, false);
        let t = plan(&t, "a", None, 1000, TTL, false);
        let t = plan(&t, "b", None, 1000, TTL, false);
        assert_eq!(count(&t, "b"), PARTITIONS / 2);
        // a stops renewing; before its lease ends, b leaves its partitions alone
        let early = plan(&t, "b", None, 10_999, TTL, false);
        assert_eq!(count(&early, "b"), PARTITIONS / 2);
        let late = plan(&t, "b", None, 11_001, TTL, false);
        assert_eq!(count(&late, "b"), PARTITIONS);
        assert!(!late.replicas.contains_key("a"));
    }

    #[test]
    fn the_table_keeps_the_urls_of_live_replicas_only() {
        let t = plan(
            &Table::default(),
            "a",
            Some("http://a:8080"),
            1000,
            TTL,
            false,
        );
        let t = plan(&t, "b", Some("http://b:8080"), 1000, TTL, false);
        assert_eq!(t.urls.len(), 2);
        let t = plan(&t, "b", Some("http://b:8080"), 11_001, TTL, false);
        assert_eq!(
            t.urls.into_iter().collect::<Vec<_>>(),
            vec![("b".to_string(), "http://b:8080".to_string())]
        );
    }

    #[test]
    fn leaving_gives_everything_back() {
        let t = plan(&Table::default(), "a", None, 1000, TTL, false);
        let t = plan(&t, "a", None, 2000, TTL, true);
        assert_eq!(count(&t, "a"), 0);
        assert!(t.replicas.is_empty());
    }

    #[test]
    fn three_replicas_split_every_partition_without_overlap() {
        let mut t = Table::default();
        for round in 0..4 {
            for r in ["a", "b", "c"] {
                t = plan(&t, r, None, 1000 + round, TTL, false);
            }
        }
        let (a, b, c) = (t.held_by("a"), t.held_by("b"), t.held_by("c"));
        assert_eq!(a & b | a & c | b & c, 0);
        assert_eq!((a | b | c).count_ones(), PARTITIONS);
        // shares of ceil(64 / 3) = 22, the last one takes the rest
        let mut counts: Vec<u32> = ["a", "b", "c"].iter().map(|r| count(&t, r)).collect();
        counts.sort();
        assert_eq!(counts, vec![20, 22, 22]);
    }

    #[tokio::test]
    async fn two_replicas_on_one_store_never_hold_the_same_partition() {
        let store = crate::store::memory::MemoryStore::default();
        let a = replica("a");
        let b = replica("b");
        let now = Timestamp(1000);
        for _ in 0..4 {
            let (x, y) = tokio::join!(a.round(&store, now, false), b.round(&store, now, false));
            x.unwrap();
            y.unwrap();
            assert_eq!(a.held() & b.held(), 0);
        }
        assert_eq!((a.held() | b.held()).count_ones(), PARTITIONS);
        assert_eq!(a.held().count_ones(), PARTITIONS / 2);
        // a leaves; b takes everything on its next round
        let change = a.round(&store, now, true).await.unwrap();
        assert_eq!(change.lost.count_ones(), PARTITIONS / 2);
        let change = b.round(&store, now, false).await.unwrap();
        assert_eq!(change.gained.count_ones(), PARTITIONS / 2);
        assert_eq!(b.held().count_ones(), PARTITIONS);
    }

    #[tokio::test]
    async fn the_holder_is_looked_up_in_the_newest_table() {
        let store = crate::store::memory::MemoryStore::default();
        let config = |name: &str| ClusterConfig {
            replica: name.into(),
            ttl: TTL,
            url: Some(format!("http://{name}")),
        };
        let a = Cluster::new(config("a"));
        let b = Cluster::new(config("b"));
        let now = Timestamp(1000);
        a.round(&store, now, false).await.unwrap();
        b.round(&store, now, false).await.unwrap();
        // a gives half back; b takes it after a's round, so a's own last
        // table shows those partitions free
        a.round(&store, now, false).await.unwrap();
        b.round(&store, now, false).await.unwrap();
        let on_b = (0..u128::MAX)
            .map(Uuid::from_u128)
            .find(|id| b.holds(*id))
            .unwrap();
        assert!(!a.holds(on_b));
        assert_eq!(
            a.holder_url(&store, on_b).await.as_deref(),
            Some("http://b")
        );
        let on_a = (0..u128::MAX)
            .map(Uuid::from_u128)
            .find(|id| a.holds(*id))
            .unwrap();
        assert_eq!(a.holder_url(&store, on_a).await, None, "a holds it itself");
    }

    #[tokio::test]
    async fn a_replica_that_cannot_renew_stops_before_the_others_may_take_over() {
        let store = crate::store::memory::MemoryStore::default();
        let a = replica("a");
        a.round(&store, Timestamp(1000), false).await.unwrap();
        assert_eq!(a.fence(Timestamp(8499)), 0, "still well inside its lease");
        assert_eq!(a.held().count_ones(), PARTITIONS);
        // three quarters of the lease after the last renewal it lets go; the others wait for all of it
        assert_eq!(a.fence(Timestamp(8500)).count_ones(), PARTITIONS);
        assert_eq!(a.held(), 0);
        let b = replica("b");
        b.round(&store, Timestamp(10_999), false).await.unwrap();
        assert_eq!(b.held(), 0, "a's lease has not run out yet");
        b.round(&store, Timestamp(11_001), false).await.unwrap();
        assert_eq!(b.held().count_ones(), PARTITIONS);
    }
}
