//! The pending timers of all live instances, ordered by due time: memory
//! proportional to the timers, one task to wait for the earliest. It mirrors
//! each instance's pending timers exactly (set after every change, emptied
//! when the instance ends), so timers made moot cost nothing later. Timers
//! are durable as events; this set is rebuilt from them on start.

use std::collections::{BTreeSet, HashMap};
use std::sync::Mutex;

use tokio::sync::Notify;
use uuid::Uuid;

use crate::saga::Timestamp;

#[derive(Default)]
struct Inner {
    by_due: BTreeSet<(Timestamp, Uuid, String)>,
    by_instance: HashMap<Uuid, Vec<(Timestamp, String)>>,
}

#[derive(Default)]
pub struct Timers {
    inner: Mutex<Inner>,
    /// Woken when a timer earlier than all others is armed.
    pub changed: Notify,
}

impl Timers {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Makes `timers` the instance's pending timers (an empty list removes them all).
    pub fn set(&self, instance: Uuid, timers: impl IntoIterator<Item = (String, Timestamp)>) {
        let new: Vec<(Timestamp, String)> = timers.into_iter().map(|(t, d)| (d, t)).collect();
        let mut inner = self.lock();
        let earliest_before = inner.by_due.first().map(|e| e.0);
        let old = if new.is_empty() {
            inner.by_instance.remove(&instance)
        } else {
            inner.by_instance.insert(instance, new.clone())
        };
        for (due, timer) in old.into_iter().flatten() {
            inner.by_due.remove(&(due, instance, timer));
        }
        for (due, timer) in new {
            inner.by_due.insert((due, instance, timer));
        }
        let earliest_after = inner.by_due.first().map(|e| e.0);
        drop(inner);
        if earliest_after.is_some()
            && (earliest_before.is_none() || earliest_after < earliest_before)
        {
            self.changed.notify_one();
        }
    }

    /// Removes and returns every timer due at `now`.
    pub fn due(&self, now: Timestamp) -> Vec<(Uuid, String)> {
        let mut inner = self.lock();
        let mut out = Vec::new();
        while inner.by_due.first().is_some_and(|(d, _, _)| *d <= now) {
            let Some((due, id, timer)) = inner.by_due.pop_first() else {
                break;
            };
            if let Some(list) = inner.by_instance.get_mut(&id) {
                list.retain(|(d, t)| !(*d == due && *t == timer));
                if list.is_empty() {
                    inner.by_instance.remove(&id);
                }
            }
            out.push((id, timer));
        }
        out
    }

    pub fn next_due(&self) -> Option<Timestamp> {
        self.lock().by_due.first().map(|(d, _, _)| *d)
    }

    /// How many timers are pending.
    pub fn pending(&self) -> usize {
        self.lock().by_due.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(id: &str, due: u64) -> (String, Timestamp) {
        (id.to_string(), Timestamp(due))
    }

    #[test]
    fn fires_in_due_order_and_only_when_due() {
        let timers = Timers::default();
        let (a, b) = (Uuid::from_u128(1), Uuid::from_u128(2));
        timers.set(a, [t("late", 300), t("early", 100)]);
        timers.set(b, [t("mid", 200)]);
        assert_eq!(timers.next_due(), Some(Timestamp(100)));
        assert!(timers.due(Timestamp(99)).is_empty());
        assert_eq!(
            timers.due(Timestamp(250)),
            vec![(a, "early".to_string()), (b, "mid".to_string())]
        );
        assert_eq!(timers.pending(), 1);
    }

    #[test]
    fn setting_replaces_and_an_empty_set_removes() {
        let timers = Timers::default();
        let a = Uuid::from_u128(1);
        timers.set(a, [t("timeout", 100), t("deadline", 900)]);
        timers.set(a, [t("deadline", 900)]);
        assert_eq!(timers.pending(), 1, "the moot timeout is gone");
        timers.set(a, []);
        assert_eq!(timers.pending(), 0);
        assert!(timers.due(Timestamp(u64::MAX)).is_empty());
    }
}
