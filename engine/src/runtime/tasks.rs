//! Task queues for external workers: a task waits on its queue until a
//! worker long-polls for it; the worker then holds a lease until it answers.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::Duration;

use serde::Serialize;
use serde_json::Value;
use tokio::sync::oneshot;
use uuid::Uuid;

use crate::saga::{Phase, Timestamp};

/// A unit of work for a worker. Its id is the effect's idempotency key.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Task {
    pub id: String,
    pub queue: String,
    pub instance: Uuid,
    pub workflow: String,
    pub step: String,
    #[serde(skip)]
    pub step_index: usize,
    pub attempt: u32,
    pub phase: Phase,
    pub input: Value,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub heartbeat_seconds: Option<u64>,
}

#[derive(Default)]
struct Queue {
    ready: VecDeque<Task>,
    waiters: VecDeque<oneshot::Sender<Task>>,
}

struct Lease {
    task: Task,
    last_heartbeat: Timestamp,
}

#[derive(Default)]
struct Inner {
    queues: HashMap<String, Queue>,
    leases: HashMap<String, Lease>,
}

#[derive(Default)]
pub struct TaskQueues {
    inner: Mutex<Inner>,
}

impl TaskQueues {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Puts a task on its queue, or hands it straight to a waiting worker.
    /// A task already queued or leased under the same id is not added twice.
    pub fn offer(&self, mut task: Task) {
        let mut inner = self.lock();
        if inner.leases.contains_key(&task.id) {
            return;
        }
        let q = inner.queues.entry(task.queue.clone()).or_default();
        if q.ready.iter().any(|t| t.id == task.id) {
            return;
        }
        while let Some(waiter) = q.waiters.pop_front() {
            match waiter.send(task) {
                Ok(()) => return,
                Err(back) => task = back, // that worker gave up waiting
            }
        }
        q.ready.push_back(task);
    }

    /// Takes the next task of `queue`, waiting up to `wait` for one.
    pub async fn poll(&self, queue: &str, wait: Duration, now: Timestamp) -> Option<Task> {
        let rx = {
            let mut inner = self.lock();
            let q = inner.queues.entry(queue.to_string()).or_default();
            if let Some(task) = q.ready.pop_front() {
                inner.leases.insert(
                    task.id.clone(),
                    Lease {
                        task: task.clone(),
                        last_heartbeat: now,
                    },
                );
                return Some(task);
            }
            let (tx, rx) = oneshot::channel();
            q.waiters.push_back(tx);
            rx
        };
        let mut rx = rx;
        let task = match tokio::time::timeout(wait, &mut rx).await {
            Ok(Ok(task)) => task,
            _ => {
                // A task sent just as the wait ended is still ours: take it rather than lose it.
                rx.close();
                rx.try_recv().ok()?
            }
        };
        self.lock().leases.insert(
            task.id.clone(),
            Lease {
                task: task.clone(),
                last_heartbeat: now,
            },
        );
        Some(task)
    }

    /// Removes a task that a worker answers: leased, or still queued (a worker
    /// that took it before a restart may answer it after).
    pub fn take(&self, id: &str) -> Option<Task> {
        let mut inner = self.lock();
        if let Some(lease) = inner.leases.remove(id) {
            return Some(lease.task);
        }
        for q in inner.queues.values_mut() {
            if let Some(i) = q.ready.iter().position(|t| t.id == id) {
                return q.ready.remove(i);
            }
        }
        None
    }

    /// The queue of a task that is queued or leased.
    pub fn queue_of(&self, id: &str) -> Option<String> {
        let inner = self.lock();
        if let Some(lease) = inner.leases.get(id) {
            return Some(lease.task.queue.clone());
        }
        inner
            .queues
            .iter()
            .find(|(_, q)| q.ready.iter().any(|t| t.id == id))
            .map(|(name, _)| name.clone())
    }

    /// Records a worker's sign of life; false if the task is not leased.
    pub fn heartbeat(&self, id: &str, now: Timestamp) -> bool {
        match self.lock().leases.get_mut(id) {
            Some(lease) => {
                lease.last_heartbeat = now;
                true
            }
            None => false,
        }
    }

    /// Removes and returns the leased tasks whose worker missed its heartbeat.
    pub fn expired(&self, now: Timestamp) -> Vec<Task> {
        let mut inner = self.lock();
        let late: Vec<String> = inner
            .leases
            .iter()
            .filter(|(_, l)| {
                l.task
                    .heartbeat_seconds
                    .is_some_and(|h| l.last_heartbeat.plus(Duration::from_secs(h)) < now)
            })
            .map(|(id, _)| id.clone())
            .collect();
        late.iter()
            .filter_map(|id| inner.leases.remove(id))
            .map(|l| l.task)
            .collect()
    }

    /// Withdraws the queued (not yet taken) tasks of an instance other than `keep`.
    pub fn withdraw(&self, instance: Uuid, keep: Option<&str>) {
        let mut inner = self.lock();
        for q in inner.queues.values_mut() {
            q.ready
                .retain(|t| t.instance != instance || Some(t.id.as_str()) == keep);
        }
    }

    /// Queued tasks per queue, for status pages.
    pub fn depth(&self) -> Vec<(String, usize)> {
        let inner = self.lock();
        let mut out: Vec<_> = inner
            .queues
            .iter()
            .map(|(k, q)| (k.clone(), q.ready.len()))
            .collect();
        out.sort();
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn task(id: &str) -> Task {
        Task {
            id: id.into(),
            queue: "q".into(),
            instance: Uuid::nil(),
            workflow: "w".into(),
            step: "s".into(),
            step_index: 0,
            attempt: 1,
            phase: Phase::Forward,
            input: Value::Null,
            heartbeat_seconds: None,
        }
    }

    #[tokio::test]
    async fn a_queued_task_goes_to_the_next_poller_once() {
        let q = TaskQueues::default();
        q.offer(task("a"));
        q.offer(task("a"));
        assert_eq!(
            q.poll("q", Duration::ZERO, Timestamp(0))
                .await
                .map(|t| t.id),
            Some("a".into())
        );
        assert_eq!(
            q.poll("q", Duration::from_millis(10), Timestamp(0)).await,
            None
        );
        assert!(q.heartbeat("a", Timestamp(5)));
        assert!(q.take("a").is_some());
        assert!(q.take("a").is_none());
    }

    #[tokio::test]
    async fn a_waiting_poller_gets_a_task_offered_later() {
        let q = std::sync::Arc::new(TaskQueues::default());
        let poller = {
            let q = q.clone();
            tokio::spawn(async move { q.poll("q", Duration::from_secs(5), Timestamp(0)).await })
        };
        tokio::task::yield_now().await;
        tokio::time::sleep(Duration::from_millis(20)).await;
        q.offer(task("b"));
        assert_eq!(poller.await.unwrap().map(|t| t.id), Some("b".into()));
        assert!(
            q.heartbeat("b", Timestamp(1)),
            "the handed-over task is leased"
        );
    }

    #[tokio::test]
    async fn a_lease_without_heartbeats_expires() {
        let q = TaskQueues::default();
        q.offer(Task {
            heartbeat_seconds: Some(10),
            ..task("h")
        });
        q.poll("q", Duration::ZERO, Timestamp(0)).await.unwrap();
        assert!(q.expired(Timestamp(9_000)).is_empty());
        assert!(q.heartbeat("h", Timestamp(9_000)));
        assert!(
            q.expired(Timestamp(18_000)).is_empty(),
            "the heartbeat renewed the lease"
        );
        assert_eq!(q.expired(Timestamp(19_001)).len(), 1);
        assert!(q.take("h").is_none());
    }

    #[tokio::test]
    async fn withdrawn_tasks_are_not_handed_out() {
        let q = TaskQueues::default();
        q.offer(task("x"));
        q.withdraw(Uuid::nil(), None);
        assert_eq!(q.poll("q", Duration::ZERO, Timestamp(0)).await, None);
    }
}
