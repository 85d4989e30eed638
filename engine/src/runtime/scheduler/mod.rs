//! The scheduler: durable timers (step timeouts, retry backoff, waits,
//! deadlines) and cron starts, each with a loop and a step function for tests
//! ([`Runtime::tick`], [`Runtime::cron_tick`]), and the sweep of worker leases
//! whose heartbeat stopped.

pub(crate) mod cron;
pub mod timers;

use super::*;

impl Runtime {
    /// Fires every timer due at the clock's "now" and records the outcome
    /// before returning; the number fired. With a manual clock, tests advance
    /// time and call this instead of sleeping.
    pub async fn tick(&self) -> usize {
        let due = self.0.timers.due(self.now());
        let mut n = due.len();
        for (id, timer) in due {
            self.feed(id, Input::TimerFired { timer }).await;
        }
        for (id, input) in self.expired_leases() {
            self.feed(id, input).await;
            n += 1;
        }
        n
    }

    pub(crate) async fn timer_loop(&self) {
        loop {
            let now = self.now();
            for (id, timer) in self.0.timers.due(now) {
                let rt = self.clone();
                self.0
                    .tracker
                    .spawn(async move { rt.feed(id, Input::TimerFired { timer }).await });
            }
            let sleep = self
                .0
                .timers
                .next_due()
                .map_or(Duration::from_secs(3600), |due| {
                    now.until(due).max(Duration::from_millis(1))
                });
            tokio::select! {
                () = self.0.stop.cancelled() => return,
                () = tokio::time::sleep(sleep) => {}
                () = self.0.timers.changed.notified() => {}
            }
        }
    }

    /// Fails the attempts whose worker stopped heartbeating (checked every second).
    pub(crate) async fn lease_loop(&self) {
        loop {
            self.expire_leases();
            tokio::select! {
                () = self.0.stop.cancelled() => return,
                () = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
        }
    }

    /// One sweep of [`Self::lease_loop`]: returns how many leases expired.
    pub fn expire_leases(&self) -> usize {
        let expired = self.expired_leases();
        let n = expired.len();
        for (id, input) in expired {
            let rt = self.clone();
            self.0
                .tracker
                .spawn(async move { rt.feed(id, input).await });
        }
        n
    }

    /// The failures to record for the leases whose worker stopped heartbeating.
    pub(crate) fn expired_leases(&self) -> Vec<(Uuid, Input)> {
        self.0
            .tasks
            .expired(self.now())
            .into_iter()
            .map(|task| {
                let error = format!(
                    "the worker sent no heartbeat for {}s",
                    task.heartbeat_seconds.unwrap_or_default()
                );
                (
                    task.instance,
                    Input::Failed {
                        step: task.step_index,
                        index: task.index,
                        attempt: task.attempt,
                        phase: task.phase,
                        kind: FailureKind::Timeout,
                        error,
                    },
                )
            })
            .collect()
    }
}
