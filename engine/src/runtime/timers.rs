//! Pending timers of all instances in one heap: memory proportional to the
//! timers, one task to wait for the earliest. Timers are durable as events;
//! this heap is rebuilt from them on start.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::sync::Mutex;

use tokio::sync::Notify;
use uuid::Uuid;

use crate::saga::Timestamp;

#[derive(Default)]
pub struct Timers {
    heap: Mutex<BinaryHeap<Reverse<(Timestamp, Uuid, String)>>>,
    /// Woken when a timer earlier than all others is armed.
    pub changed: Notify,
}

impl Timers {
    fn lock(&self) -> std::sync::MutexGuard<'_, BinaryHeap<Reverse<(Timestamp, Uuid, String)>>> {
        self.heap
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub fn arm(&self, instance: Uuid, timer: String, due: Timestamp) {
        let mut heap = self.lock();
        let earliest = heap.peek().is_none_or(|Reverse((d, _, _))| due < *d);
        heap.push(Reverse((due, instance, timer)));
        drop(heap);
        if earliest {
            self.changed.notify_one();
        }
    }

    /// Removes and returns every timer due at `now`.
    pub fn due(&self, now: Timestamp) -> Vec<(Uuid, String)> {
        let mut heap = self.lock();
        let mut out = Vec::new();
        while heap.peek().is_some_and(|Reverse((d, _, _))| *d <= now) {
            if let Some(Reverse((_, id, timer))) = heap.pop() {
                out.push((id, timer));
            }
        }
        out
    }

    pub fn next_due(&self) -> Option<Timestamp> {
        self.lock().peek().map(|Reverse((d, _, _))| *d)
    }

    /// How many timers are pending.
    pub fn pending(&self) -> usize {
        self.lock().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fires_in_due_order_and_only_when_due() {
        let t = Timers::default();
        let a = Uuid::from_u128(1);
        t.arm(a, "late".into(), Timestamp(300));
        t.arm(a, "early".into(), Timestamp(100));
        t.arm(a, "mid".into(), Timestamp(200));
        assert_eq!(t.next_due(), Some(Timestamp(100)));
        assert!(t.due(Timestamp(99)).is_empty());
        assert_eq!(
            t.due(Timestamp(250)),
            vec![(a, "early".to_string()), (a, "mid".to_string())]
        );
        assert_eq!(t.pending(), 1);
    }
}
