//! The newest events the writer committed, kept in memory so that a follower
//! that keeps up (the read models' projection) takes them from here: no read
//! of the file, no decompression, no parse of their JSON, no hand-off to a
//! blocking thread.
//!
//! The tail answers only for what it holds whole: every event with a
//! position after `since` up to the newest is in it. The writer is the only
//! one that writes the file (the data directory's lock keeps other
//! processes out), so whatever it committed it has seen. Anything else it
//! does to the log (retention's removals, a batch that failed) resets the
//! tail, and reads go to the file until the next append starts it again.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use crate::store::RecordedEvent;

/// Events kept at most. A follower further behind than this reads the file,
/// as it always did. The projection's pause between catch-ups ends once
/// half of this has been appended (`projection::GATHER_EVENTS`), so that a
/// follower that keeps up finds its batch here.
pub(super) const KEPT: usize = 2048;

#[derive(Default)]
pub(super) struct Tail(Mutex<Held>);

#[derive(Default)]
struct Held {
    /// Every event after this position is in `events` (`None`: nothing is
    /// known, reads go to the file).
    since: Option<u64>,
    /// In the order of their positions; shared, so that a read copies
    /// them after letting go of the lock the writer waits on.
    events: VecDeque<Arc<RecordedEvent>>,
}

impl Tail {
    fn held(&self) -> MutexGuard<'_, Held> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Forgets everything: the log changed in a way the tail did not see.
    pub(super) fn reset(&self) {
        let mut h = self.held();
        h.since = None;
        h.events.clear();
    }

    /// Takes in events just committed, in the order of their positions.
    /// After a reset, the first of them starts the tail again: no event
    /// before it is claimed.
    pub(super) fn extend(&self, committed: impl IntoIterator<Item = RecordedEvent>) {
        let mut h = self.held();
        for e in committed {
            if h.events
                .back()
                .is_some_and(|last| e.position <= last.position)
            {
                // out of order: claim nothing rather than something wrong
                h.since = None;
                h.events.clear();
            }
            if h.since.is_none() {
                h.since = Some(e.position - 1);
            }
            h.events.push_back(Arc::new(e));
            if h.events.len() > KEPT {
                let oldest = h.events.pop_front().map(|e| e.position);
                h.since = oldest;
            }
        }
    }

    /// Up to `limit` events of `types` after `after`, as a read of the file
    /// would give them; `None` if the tail does not hold all that came after
    /// `after`.
    pub(super) fn of_types(
        &self,
        after: Option<u64>,
        limit: usize,
        types: &[&str],
    ) -> Option<Vec<RecordedEvent>> {
        let shared: Vec<Arc<RecordedEvent>> = {
            let h = self.held();
            let after = after.unwrap_or(0);
            if h.since? > after {
                return None;
            }
            let from = h.events.partition_point(|e| e.position <= after);
            h.events
                .range(from..)
                .filter(|e| types.contains(&e.event_type.as_str()))
                .take(limit)
                .cloned()
                .collect()
        };
        Some(shared.iter().map(|e| RecordedEvent::clone(e)).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::saga::Timestamp;

    fn ev(position: u64, event_type: &str) -> RecordedEvent {
        RecordedEvent {
            stream: "saga-x".into(),
            revision: position,
            position,
            event_type: event_type.into(),
            schema_version: 1,
            data: serde_json::json!({ "p": position }).into(),
            recorded_at: Timestamp(0),
        }
    }

    fn positions(events: Option<Vec<RecordedEvent>>) -> Option<Vec<u64>> {
        events.map(|es| es.iter().map(|e| e.position).collect())
    }

    #[test]
    fn it_answers_only_for_what_it_holds_whole() {
        let t = Tail::default();
        assert_eq!(positions(t.of_types(None, 10, &["A"])), None, "empty");
        t.extend([ev(5, "A"), ev(6, "B"), ev(8, "A")]);
        // position 4 or before may exist: only reads after 4 are answered
        assert_eq!(positions(t.of_types(Some(3), 10, &["A"])), None);
        assert_eq!(positions(t.of_types(None, 10, &["A"])), None);
        assert_eq!(positions(t.of_types(Some(4), 10, &["A"])), Some(vec![5, 8]));
        assert_eq!(
            positions(t.of_types(Some(5), 10, &["A", "B"])),
            Some(vec![6, 8])
        );
        assert_eq!(
            positions(t.of_types(Some(5), 1, &["A", "B"])),
            Some(vec![6])
        );
        assert_eq!(positions(t.of_types(Some(8), 10, &["A"])), Some(vec![]));
        assert_eq!(positions(t.of_types(Some(99), 10, &["A"])), Some(vec![]));
    }

    #[test]
    fn a_reset_forgets_and_the_next_append_starts_again() {
        let t = Tail::default();
        t.extend([ev(1, "A"), ev(2, "A")]);
        assert_eq!(positions(t.of_types(None, 10, &["A"])), Some(vec![1, 2]));
        t.reset();
        assert_eq!(positions(t.of_types(Some(2), 10, &["A"])), None);
        // a removal wrote position 3 behind the tail's back
        t.extend([ev(4, "A")]);
        assert_eq!(positions(t.of_types(Some(2), 10, &["A"])), None);
        assert_eq!(positions(t.of_types(Some(3), 10, &["A"])), Some(vec![4]));
    }

    #[test]
    fn the_oldest_go_first_and_take_the_claim_with_them() {
        let t = Tail::default();
        t.extend((1..=KEPT as u64 + 10).map(|p| ev(p, "A")));
        assert_eq!(positions(t.of_types(Some(9), 1, &["A"])), None);
        assert_eq!(positions(t.of_types(Some(10), 1, &["A"])), Some(vec![11]));
    }

    #[test]
    fn events_out_of_order_are_not_claimed() {
        let t = Tail::default();
        t.extend([ev(5, "A"), ev(6, "A")]);
        t.extend([ev(6, "A")]);
        assert_eq!(positions(t.of_types(Some(4), 10, &["A"])), None);
        assert_eq!(positions(t.of_types(Some(5), 10, &["A"])), Some(vec![6]));
    }
}
