//! Cron triggers. Each tick starts an instance whose id derives from the
//! workflow, the trigger and the tick (an idempotent start), so two
//! processes or a restart never start the same tick twice. Fired ticks are
//! recorded in the stream `cron-{workflow}-{trigger}`, which a restart reads
//! to apply the missed-run policy.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use serde_json::json;

use super::{Runtime, RuntimeError};
use crate::compile::model::CronTrigger;
use crate::dsl::spec::MissedRuns;
use crate::saga::Timestamp;
use crate::store::{Expected, NewEvent};

/// The next tick of each trigger, by (workflow, version, trigger index).
#[derive(Default)]
pub(crate) struct CronTable {
    next: HashMap<(String, u32, usize), Timestamp>,
}

fn to_chrono(t: Timestamp) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(t.millis() as i64).unwrap_or_default()
}

fn from_chrono(t: DateTime<Utc>) -> Timestamp {
    Timestamp(u64::try_from(t.timestamp_millis()).unwrap_or(0))
}

/// The first tick strictly after `t`.
fn after(trigger: &CronTrigger, t: Timestamp) -> Option<Timestamp> {
    trigger
        .schedule
        .after(&to_chrono(t))
        .next()
        .map(from_chrono)
}

/// The first tick at or after `t`.
fn at_or_after(trigger: &CronTrigger, t: Timestamp) -> Option<Timestamp> {
    after(trigger, Timestamp(t.millis().saturating_sub(1)))
}

impl Runtime {
    /// Starts the instances of every cron tick due at the clock's "now"; returns how many ticks fired.
    pub async fn cron_tick(&self) -> usize {
        let now = self.now();
        let mut fired = 0;
        for (name, versions) in self.0.registry.list() {
            // Only the newest version's triggers are in force.
            let Some(p) = versions.last() else { continue };
            for (i, trigger) in p.machine.triggers.iter().enumerate() {
                let key = (name.clone(), p.machine.version, i);
                let known = self
                    .0
                    .cron
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .next
                    .get(&key)
                    .copied();
                let next = match known {
                    Some(n) => n,
                    None => match self.first_tick(&name, i, trigger, now).await {
                        Ok((due_now, next)) => {
                            if let Some(tick) = due_now {
                                fired += usize::from(
                                    self.fire(&name, p.machine.version, i, trigger, tick).await,
                                );
                            }
                            next
                        }
                        Err(e) => {
                            tracing::warn!(workflow = %name, trigger = i, error = %e, "cannot read the trigger's history; retrying");
                            continue;
                        }
                    },
                };
                let next = if next <= now {
                    fired +=
                        usize::from(self.fire(&name, p.machine.version, i, trigger, next).await);
                    // Ticks skipped by a jump of the clock are not made up for.
                    after(trigger, now).unwrap_or(Timestamp(u64::MAX))
                } else {
                    next
                };
                self.0
                    .cron
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .next
                    .insert(key, next);
            }
        }
        fired
    }

    /// Where a trigger stands when first seen by this process: a missed tick
    /// to run now (per its policy), and its next tick.
    async fn first_tick(
        &self,
        name: &str,
        i: usize,
        trigger: &CronTrigger,
        now: Timestamp,
    ) -> Result<(Option<Timestamp>, Timestamp), RuntimeError> {
        let history = self
            .0
            .store
            .read_stream(&format!("cron-{name}-{i}"), 0)
            .await?;
        let last = history
            .last()
            .and_then(|e| serde_json::from_value::<Timestamp>(e.data["tick"].clone()).ok());
        let next = at_or_after(trigger, now).unwrap_or(Timestamp(u64::MAX));
        let Some(last) = last else {
            return Ok((None, next));
        };
        // missed: strictly between the last fired tick and now (a tick at now is due, not missed)
        let missed = trigger
            .schedule
            .after(&to_chrono(last))
            .take_while(|t| from_chrono(*t) < now)
            .last()
            .map(from_chrono);
        Ok(match (trigger.missed, missed) {
            (MissedRuns::RunOnce, Some(tick)) => (Some(tick), next),
            _ => (None, next),
        })
    }

    /// Starts the tick's instance (once, whoever asks) and records the tick; true if this call started it.
    async fn fire(
        &self,
        name: &str,
        version: u32,
        i: usize,
        trigger: &CronTrigger,
        tick: Timestamp,
    ) -> bool {
        let key = format!("cron:{i}:{}", tick.millis());
        match self
            .start(name, Some(version), trigger.input.clone(), Some(key))
            .await
        {
            Ok(started) => {
                let record = NewEvent {
                    event_type: "CronFired".into(),
                    schema_version: 1,
                    data: json!({"tick": tick, "instance": started.id, "cron": trigger.expr})
                        .into(),
                };
                if started.created {
                    if let Err(e) = self
                        .0
                        .store
                        .append(&format!("cron-{name}-{i}"), Expected::Any, vec![record])
                        .await
                    {
                        tracing::warn!(workflow = %name, error = %e, "could not record a cron tick");
                    }
                    tracing::info!(workflow = %name, tick = %tick, instance_id = %started.id, "cron started an instance");
                }
                started.created
            }
            Err(e) => {
                tracing::error!(workflow = %name, tick = %tick, error = %e, "cron could not start an instance");
                false
            }
        }
    }

    pub(crate) async fn cron_loop(&self) {
        loop {
            self.cron_tick().await;
            tokio::select! {
                () = self.0.stop.cancelled() => return,
                () = tokio::time::sleep(std::time::Duration::from_millis(500)) => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use serde_json::json;

    use crate::runtime::{Runtime, RuntimeConfig};
    use crate::saga::{ManualClock, Timestamp};
    use crate::store::memory::MemoryStore;
    use crate::store::EventStore;

    /// 2027-01-15T08:00:30Z
    const T0: Timestamp = Timestamp(1_800_000_030_000);

    fn nightly(missed: &str) -> String {
        format!(
            "name: sweep\ninput: {{ type: object, required: [scope] }}\ntriggers:\n  - cron: '* * * * *'\n    input: {{ scope: all }}\n    missed: {missed}\nsteps:\n  - name: wait\n    wait: {{ duration: 1s }}\n"
        )
    }

    async fn runtime(store: Arc<dyn EventStore>, clock: Arc<ManualClock>, source: &str) -> Runtime {
        let rt = Runtime::new(store, None, clock, RuntimeConfig::default())
            .await
            .unwrap();
        rt.publish(source).await.unwrap();
        rt
    }

    async fn ticks(store: &Arc<dyn EventStore>) -> usize {
        store.read_stream("cron-sweep-0", 0).await.unwrap().len()
    }

    #[tokio::test]
    async fn fires_once_per_tick_across_a_restart() {
        let store: Arc<dyn EventStore> = Arc::new(MemoryStore::new());
        let clock = Arc::new(ManualClock::new(T0));
        let rt = runtime(store.clone(), clock.clone(), &nightly("skip")).await;
        assert_eq!(rt.cron_tick().await, 0, "the first tick is at 08:01:00");
        clock.advance(Duration::from_secs(30));
        assert_eq!(rt.cron_tick().await, 1);
        assert_eq!(rt.cron_tick().await, 0, "the same tick does not fire twice");
        // a second process (or a restart) sees the same tick: the start is idempotent
        let other = runtime(store.clone(), clock.clone(), &nightly("skip")).await;
        clock.advance(Duration::from_secs(60));
        assert_eq!(
            other.cron_tick().await + rt.cron_tick().await,
            1,
            "08:02:00 starts one instance between the two"
        );
        assert_eq!(ticks(&store).await, 2);
    }

    #[tokio::test]
    async fn missed_ticks_run_once_or_are_skipped() {
        for (policy, expected) in [("run_once", 1), ("skip", 0)] {
            let store: Arc<dyn EventStore> = Arc::new(MemoryStore::new());
            let clock = Arc::new(ManualClock::new(T0));
            let rt = runtime(store.clone(), clock.clone(), &nightly(policy)).await;
            clock.advance(Duration::from_secs(30));
            assert_eq!(rt.cron_tick().await, 1);
            drop(rt);
            // down until 08:11:30: ten ticks missed
            clock.advance(Duration::from_secs(630));
            let rt = runtime(store.clone(), clock.clone(), &nightly(policy)).await;
            assert_eq!(rt.cron_tick().await, expected, "{policy}");
            let started = store.read_stream("cron-sweep-0", 0).await.unwrap();
            assert_eq!(started.len(), 1 + expected, "{policy}");
            if expected == 1 {
                assert_eq!(
                    started[1].data["tick"],
                    json!("2027-01-15T08:11:00.000Z"),
                    "the latest missed tick"
                );
            }
        }
    }
}
