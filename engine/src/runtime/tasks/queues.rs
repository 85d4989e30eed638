//! Task queues for external workers: a task waits on its queue until a
//! worker long-polls for it; the worker then holds a lease until it answers.
//! A task lives only as long as its attempt: when the attempt ends (answered,
//! timed out, cancelled, compensated) the task is withdrawn, queued or leased.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::sync::Mutex;
use std::time::Duration;

use serde::Serialize;
use serde_json::Value;
use tokio::sync::oneshot;
use uuid::Uuid;

use crate::saga::{Phase, Timestamp};

/// Names one attempt of a step (or of its compensation) of an instance:
/// `{instance}:{step}:{attempt}` or `{instance}:{step}:compensate:{attempt}`,
/// where `{step}` is `{name}.{index}` for an element of a for-each step.
/// A worker answers the attempt it was handed by this id.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TaskId {
    pub instance: Uuid,
    /// The step's or branch's name.
    pub step: String,
    /// The element, for a for-each step.
    pub element: Option<u32>,
    pub phase: Phase,
    pub attempt: u32,
}

impl fmt::Display for TaskId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.instance, self.step)?;
        if let Some(e) = self.element {
            write!(f, ".{e}")?;
        }
        match self.phase {
            Phase::Forward => write!(f, ":{}", self.attempt),
            Phase::Compensation => write!(f, ":compensate:{}", self.attempt),
        }
    }
}

impl std::str::FromStr for TaskId {
    type Err = ();

    fn from_str(s: &str) -> Result<Self, ()> {
        let (instance, rest) = s.split_once(':').ok_or(())?;
        let instance = Uuid::parse_str(instance).map_err(|_| ())?;
        let (rest, attempt) = rest.rsplit_once(':').ok_or(())?;
        let attempt = attempt.parse().map_err(|_| ())?;
        let (step, phase) = match rest.strip_suffix(":compensate") {
            Some(step) => (step, Phase::Compensation),
            None => (rest, Phase::Forward),
        };
        let (step, element) = match step.split_once('.') {
            Some((name, e)) => (name, Some(e.parse().map_err(|_| ())?)),
            None => (step, None),
        };
        if step.is_empty() {
            return Err(());
        }
        Ok(TaskId {
            instance,
            step: step.to_string(),
            element,
            phase,
            attempt,
        })
    }
}

/// A unit of work for a worker: one attempt of an effect.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Task {
    /// The attempt's handle ([`TaskId`]), to answer it with.
    pub id: String,
    /// The effect's idempotency key: the same on every attempt of the step
    /// (unless the step asks for one per attempt), so a worker can do it once.
    pub idempotency_key: String,
    pub queue: String,
    pub instance: Uuid,
    pub workflow: String,
    pub step: String,
    #[serde(skip)]
    pub step_index: usize,
    /// The branch or element, by position.
    #[serde(skip)]
    pub index: Option<u32>,
    /// The element of a for-each step, by position.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub element: Option<u32>,
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
    /// The tasks (queued or leased) of each instance, with their queue.
    by_instance: HashMap<Uuid, Vec<(String, String)>>,
}

impl Inner {
    /// Drops a queue's entry once it holds no task and no live waiter: the
    /// names workers poll must not accumulate.
    fn tidy(&mut self, queue: &str) {
        if let Some(q) = self.queues.get_mut(queue) {
            q.waiters.retain(|w| !w.is_closed());
            if q.ready.is_empty() && q.waiters.is_empty() {
                self.queues.remove(queue);
            }
        }
    }

    fn forget(&mut self, task: &Task) {
        if let Some(ids) = self.by_instance.get_mut(&task.instance) {
            ids.retain(|(id, _)| *id != task.id);
            if ids.is_empty() {
                self.by_instance.remove(&task.instance);
            }
        }
    }
}

/// How many queues may be known at once (with a task or a waiting worker).
/// Workers polling more distinct names than this wait their turn (429).
pub const MAX_QUEUES: usize = 10_000;

/// A poll refused: as many queues as [`MAX_QUEUES`] are known already.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TooManyQueues;

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
    pub fn offer(&self, task: Task) {
        let mut inner = self.lock();
        if inner.leases.contains_key(&task.id) {
            return;
        }
        let q = inner.queues.entry(task.queue.clone()).or_default();
        if q.ready.iter().any(|t| t.id == task.id) {
            return;
        }
        let (instance, id, queue) = (task.instance, task.id.clone(), task.queue.clone());
        let mut task = task;
        loop {
            let Some(waiter) = q.waiters.pop_front() else {
                q.ready.push_back(task);
                break;
            };
            match waiter.send(task) {
                Ok(()) => break,
                Err(back) => task = back, // that worker gave up waiting
            }
        }
        inner
            .by_instance
            .entry(instance)
            .or_default()
            .push((id, queue));
    }

    /// Takes the next task of `queue`, waiting up to `wait` for one.
    pub async fn poll(
        &self,
        queue: &str,
        wait: Duration,
        now: Timestamp,
    ) -> Result<Option<Task>, TooManyQueues> {
        let rx = {
            let mut inner = self.lock();
            if let Some(task) = inner
                .queues
                .get_mut(queue)
                .and_then(|q| q.ready.pop_front())
            {
                inner.tidy(queue);
                inner.leases.insert(
                    task.id.clone(),
                    Lease {
                        task: task.clone(),
                        last_heartbeat: now,
                    },
                );
                return Ok(Some(task));
            }
            if wait.is_zero() {
                return Ok(None);
            }
            if !inner.queues.contains_key(queue) && inner.queues.len() >= MAX_QUEUES {
                return Err(TooManyQueues);
            }
            let (tx, rx) = oneshot::channel();
            let q = inner.queues.entry(queue.to_string()).or_default();
            q.waiters.push_back(tx);
            rx
        };
        let mut rx = WaiterGuard {
            queues: self,
            queue,
            rx,
        };
        let task = match tokio::time::timeout(wait, &mut rx.rx).await {
            Ok(Ok(task)) => task,
            _ => {
                // A task sent just as the wait ended is still ours: take it rather than lose it.
                rx.rx.close();
                match rx.rx.try_recv() {
                    Ok(task) => task,
                    Err(_) => return Ok(None),
                }
            }
        };
        let mut inner = self.lock();
        let current = inner
            .by_instance
            .get(&task.instance)
            .is_some_and(|ids| ids.iter().any(|(id, _)| *id == task.id));
        if !current {
            return Ok(None); // withdrawn on its way to this worker
        }
        inner.leases.insert(
            task.id.clone(),
            Lease {
                task: task.clone(),
                last_heartbeat: now,
            },
        );
        Ok(Some(task))
    }

    /// Removes a task that a worker answers: leased, or still queued (a worker
    /// that took it before a restart may answer it after).
    pub fn take(&self, id: &str) -> Option<Task> {
        let mut inner = self.lock();
        let task = match inner.leases.remove(id) {
            Some(lease) => Some(lease.task),
            None => inner.queues.values_mut().find_map(|q| {
                let i = q.ready.iter().position(|t| t.id == id)?;
                q.ready.remove(i)
            }),
        }?;
        inner.forget(&task);
        inner.tidy(&task.queue);
        Some(task)
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
        let tasks: Vec<Task> = late
            .iter()
            .filter_map(|id| inner.leases.remove(id))
            .map(|l| l.task)
            .collect();
        for t in &tasks {
            inner.forget(t);
        }
        tasks
    }

    /// Withdraws the tasks of an instance other than `keep`, queued or leased:
    /// their attempts have ended, so no worker is handed them or may answer them.
    pub fn withdraw(&self, instance: Uuid, keep: &[String]) {
        let mut inner = self.lock();
        let Some(ids) = inner.by_instance.remove(&instance) else {
            return;
        };
        let (kept, gone): (Vec<_>, Vec<_>) = ids.into_iter().partition(|(id, _)| keep.contains(id));
        for (id, queue) in &gone {
            inner.leases.remove(id);
            if let Some(q) = inner.queues.get_mut(queue) {
                q.ready.retain(|t| t.id != *id);
            }
            inner.tidy(queue);
        }
        if !kept.is_empty() {
            inner.by_instance.insert(instance, kept);
        }
    }

    /// How many queues are known (with a task or a waiting worker).
    pub fn queue_count(&self) -> usize {
        self.lock().queues.len()
    }

    /// How many leases are held.
    pub fn lease_count(&self) -> usize {
        self.lock().leases.len()
    }
}

/// Removes a poll's waiter when the poll ends, however it ends (an answer,
/// the wait running out, or the worker hanging up and the poll being dropped).
struct WaiterGuard<'a> {
    queues: &'a TaskQueues,
    queue: &'a str,
    rx: oneshot::Receiver<Task>,
}

impl Drop for WaiterGuard<'_> {
    fn drop(&mut self) {
        self.rx.close();
        // a task handed over after the poll gave up goes back to the front
        if let Ok(task) = self.rx.try_recv() {
            let mut inner = self.queues.lock();
            let current = inner
                .by_instance
                .get(&task.instance)
                .is_some_and(|ids| ids.iter().any(|(id, _)| *id == task.id));
            if current {
                inner
                    .queues
                    .entry(task.queue.clone())
                    .or_default()
                    .ready
                    .push_front(task);
            }
        }
        self.queues.lock().tidy(self.queue);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn task(id: &str) -> Task {
        Task {
            id: id.into(),
            idempotency_key: id.into(),
            queue: "q".into(),
            instance: Uuid::nil(),
            workflow: "w".into(),
            step: "s".into(),
            step_index: 0,
            index: None,
            element: None,
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
                .unwrap()
                .map(|t| t.id),
            Some("a".into())
        );
        assert_eq!(
            q.poll("q", Duration::from_millis(10), Timestamp(0)).await,
            Ok(None)
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
        assert_eq!(
            poller.await.unwrap().unwrap().map(|t| t.id),
            Some("b".into())
        );
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
        q.withdraw(Uuid::nil(), &[]);
        assert_eq!(q.poll("q", Duration::ZERO, Timestamp(0)).await, Ok(None));
    }

    #[tokio::test]
    async fn a_withdrawn_lease_can_neither_be_answered_nor_expire() {
        let q = TaskQueues::default();
        q.offer(Task {
            heartbeat_seconds: Some(1),
            ..task("old")
        });
        q.poll("q", Duration::ZERO, Timestamp(0)).await.unwrap();
        q.offer(task("new"));
        q.withdraw(Uuid::nil(), &["new".to_string()]);
        assert!(!q.heartbeat("old", Timestamp(10)));
        assert!(q.expired(Timestamp(60_000)).is_empty());
        assert!(q.take("old").is_none());
        assert_eq!(
            q.queue_of("new").as_deref(),
            Some("q"),
            "the kept task stays"
        );
        assert!(q.take("new").is_some());
        q.withdraw(Uuid::nil(), &[]);
        assert!(q.lock().by_instance.is_empty(), "nothing left indexed");
    }

    #[tokio::test]
    async fn queues_and_waiters_go_when_their_polls_end() {
        let q = std::sync::Arc::new(TaskQueues::default());
        for i in 0..100 {
            let name = format!("q-{i}");
            assert_eq!(
                q.poll(&name, Duration::from_millis(1), Timestamp(0)).await,
                Ok(None)
            );
        }
        assert_eq!(q.queue_count(), 0, "timed-out polls leave nothing");
        // a poll dropped while waiting (its worker hung up) leaves nothing either
        let poller = {
            let q = q.clone();
            tokio::spawn(async move { q.poll("q", Duration::from_secs(60), Timestamp(0)).await })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert_eq!(q.queue_count(), 1);
        poller.abort();
        let _ = poller.await;
        assert_eq!(q.queue_count(), 0);
        // a queue goes when its last task is taken
        q.offer(task("t"));
        assert_eq!(q.queue_count(), 1);
        q.poll("q", Duration::ZERO, Timestamp(0)).await.unwrap();
        assert_eq!(q.queue_count(), 0);
        assert!(q.take("t").is_some());
        assert_eq!((q.queue_count(), q.lease_count()), (0, 0));
    }

    #[tokio::test]
    async fn polls_on_too_many_queues_are_refused() {
        let q = std::sync::Arc::new(TaskQueues::default());
        let mut polls = tokio::task::JoinSet::new();
        for i in 0..MAX_QUEUES {
            let q = q.clone();
            polls.spawn(async move {
                q.poll(&format!("q-{i}"), Duration::from_secs(60), Timestamp(0))
                    .await
            });
        }
        while q.queue_count() < MAX_QUEUES {
            tokio::task::yield_now().await;
        }
        assert_eq!(
            q.poll("one-more", Duration::from_secs(1), Timestamp(0))
                .await,
            Err(TooManyQueues)
        );
        polls.abort_all();
        while polls.join_next().await.is_some() {}
        q.offer(Task {
            queue: "q-0".into(),
            ..task("t")
        });
        assert_eq!(
            q.poll("q-0", Duration::ZERO, Timestamp(0))
                .await
                .map(|t| t.map(|t| t.id)),
            Ok(Some("t".into()))
        );
        assert!(q.take("t").is_some());
        assert_eq!(q.queue_count(), 0);
    }

    #[test]
    fn task_ids_round_trip() {
        for phase in [Phase::Forward, Phase::Compensation] {
            let id = TaskId {
                instance: Uuid::from_u128(7),
                step: "take:payment".into(),
                element: None,
                phase,
                attempt: 3,
            };
            assert_eq!(id.to_string().parse::<TaskId>(), Ok(id));
            let element = TaskId {
                instance: Uuid::from_u128(7),
                step: "reserve_items".into(),
                element: Some(12),
                phase,
                attempt: 1,
            };
            assert_eq!(element.to_string().parse::<TaskId>(), Ok(element));
        }
        assert!("nope".parse::<TaskId>().is_err());
        assert!("00000000-0000-0000-0000-000000000007::1"
            .parse::<TaskId>()
            .is_err());
    }
}
