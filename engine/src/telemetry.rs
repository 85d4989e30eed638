//! Metrics the engine records, through the `metrics` facade: nothing is kept
//! unless the process installs a recorder (`sagaflow serve` installs the
//! Prometheus one and serves it at `/metrics`).

use std::sync::{Mutex, MutexGuard, OnceLock};

use ahash::AHashMap;
use metrics::{
    counter, describe_counter, describe_gauge, describe_histogram, histogram, Counter, Histogram,
    Unit,
};

use crate::saga::{Event, SagaState};

pub const SAGAS_STARTED: &str = "sagaflow_sagas_started_total";
pub const SAGAS_ENDED: &str = "sagaflow_sagas_ended_total";
pub const STEP_DURATION: &str = "sagaflow_step_duration_seconds";
pub const STEP_RETRIES: &str = "sagaflow_step_retries_total";
pub const TIMER_LAG: &str = "sagaflow_timer_lag_seconds";
pub const PROJECTION_LAG: &str = "sagaflow_projection_lag_events";
pub const STORE_APPEND: &str = "sagaflow_store_append_seconds";
pub const STORE_BATCH: &str = "sagaflow_store_batch_appends";
pub const LIVE_INSTANCES: &str = "sagaflow_live_instances";
pub const PENDING_TIMERS: &str = "sagaflow_pending_timers";
pub const PARTITIONS_HELD: &str = "sagaflow_partitions_held";
pub const INSTANCES_REMOVED: &str = "sagaflow_instances_removed_total";
pub const RETENTION_BEHIND: &str = "sagaflow_retention_behind_seconds";

/// The histograms, with the bucket bounds that suit them (seconds, or appends per commit).
pub const HISTOGRAMS: [(&str, &[f64]); 4] = [
    (
        STEP_DURATION,
        &[
            0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
            60.0, 300.0,
        ],
    ),
    (
        TIMER_LAG,
        &[
            0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
        ],
    ),
    (
        STORE_APPEND,
        &[
            0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
        ],
    ),
    (
        STORE_BATCH,
        &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0],
    ),
];

/// Registers what each metric means (shown as `# HELP`).
pub fn describe() {
    describe_counter!(SAGAS_STARTED, "Sagas started, by workflow.");
    describe_counter!(
        SAGAS_ENDED,
        "Sagas ended, by workflow and outcome (completed, compensated, failed, cancelled)."
    );
    describe_histogram!(
        STEP_DURATION,
        Unit::Seconds,
        "From an attempt's start to its outcome, by workflow, step, phase and outcome."
    );
    describe_counter!(STEP_RETRIES, "Retries scheduled, by workflow and step.");
    describe_histogram!(
        TIMER_LAG,
        Unit::Seconds,
        "How late timers fired after their due time."
    );
    describe_gauge!(
        PROJECTION_LAG,
        "Events stored that the read models have not applied yet."
    );
    describe_histogram!(
        STORE_APPEND,
        Unit::Seconds,
        "Time to write and commit one group of appends."
    );
    describe_histogram!(STORE_BATCH, "Appends per commit (group commit).");
    describe_gauge!(
        LIVE_INSTANCES,
        "Instances that have not ended, held in memory."
    );
    describe_gauge!(PENDING_TIMERS, "Timers armed and not yet fired.");
    describe_gauge!(
        PARTITIONS_HELD,
        "Partitions of instances this replica drives (shared stores only)."
    );
    describe_counter!(
        INSTANCES_REMOVED,
        "Ended instances removed by retention (this process)."
    );
    describe_gauge!(
        RETENTION_BEHIND,
        Unit::Seconds,
        "How long past the retention age the oldest ended instance still to remove was kept, as retention's last batch found it (0: nothing was due)."
    );
}

/// The handles of one workflow's labelled metrics, made the first time each
/// is recorded. Finding a labelled metric through the facade builds its key
/// (the labels as owned strings) and looks it up in the recorder, which cost
/// several times more than recording it, a few times per saga.
#[derive(Default)]
struct Handles {
    started: Option<Counter>,
    /// By outcome: completed, compensated, failed, cancelled.
    ended: [Option<Counter>; 4],
    steps: AHashMap<String, StepHandles>,
}

#[derive(Default)]
struct StepHandles {
    /// By phase and outcome: forward succeeded, forward failed, compensation
    /// succeeded, compensation failed.
    durations: [Option<Histogram>; 4],
    retries: Option<Counter>,
}

/// The handles by workflow name. The recorder is the process's, installed
/// once before anything is recorded (`sagaflow serve`), so a handle stays
/// the recorder's for the life of the process; without one, every handle
/// records nothing.
fn handles() -> MutexGuard<'static, AHashMap<String, Handles>> {
    static HANDLES: OnceLock<Mutex<AHashMap<String, Handles>>> = OnceLock::new();
    HANDLES
        .get_or_init(Mutex::default)
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Handles {
    fn of<'a>(all: &'a mut AHashMap<String, Handles>, workflow: &str) -> &'a mut Handles {
        if !all.contains_key(workflow) {
            all.insert(workflow.to_string(), Handles::default());
        }
        all.get_mut(workflow).expect("inserted above")
    }

    fn step(&mut self, step: &str) -> &mut StepHandles {
        if !self.steps.contains_key(step) {
            self.steps.insert(step.to_string(), StepHandles::default());
        }
        self.steps.get_mut(step).expect("inserted above")
    }
}

const PHASES_AND_OUTCOMES: [(&str, &str); 4] = [
    ("forward", "succeeded"),
    ("forward", "failed"),
    ("compensation", "succeeded"),
    ("compensation", "failed"),
];

const ENDINGS: [&str; 4] = ["completed", "compensated", "failed", "cancelled"];

pub(crate) fn saga_started(workflow: &str) {
    let mut all = handles();
    let h = Handles::of(&mut all, workflow);
    h.started
        .get_or_insert_with(|| counter!(SAGAS_STARTED, "workflow" => workflow.to_string()))
        .increment(1);
}

/// Records what newly stored `events` say, against the state they were decided on.
pub(crate) fn observe<'a>(
    workflow: &str,
    before: &SagaState,
    events: impl IntoIterator<Item = &'a Event>,
) {
    // locked at the first event that records something
    let mut all = None;
    fn of<'a>(
        all: &'a mut Option<MutexGuard<'static, AHashMap<String, Handles>>>,
        workflow: &str,
    ) -> &'a mut Handles {
        Handles::of(all.get_or_insert_with(handles), workflow)
    }
    for e in events {
        // which of PHASES_AND_OUTCOMES, and the attempt's step and unit
        let (kind, name, index, at) = match e {
            Event::StepSucceeded {
                name, index, at, ..
            } => (0, name, index, at),
            Event::StepFailed {
                name, index, at, ..
            } => (1, name, index, at),
            Event::StepCompensated {
                name, index, at, ..
            } => (2, name, index, at),
            Event::CompensationFailed {
                name, index, at, ..
            } => (3, name, index, at),
            Event::RetryScheduled { name, .. } => {
                of(&mut all, workflow)
                    .step(name)
                    .retries
                    .get_or_insert_with(|| {
                        counter!(STEP_RETRIES, "workflow" => workflow.to_string(), "step" => name.clone())
                    })
                    .increment(1);
                continue;
            }
            Event::TimerFired { timer, at } => {
                if let Some(t) = before.timers.get(timer) {
                    histogram!(TIMER_LAG).record(t.due.until(*at).as_secs_f64());
                }
                continue;
            }
            Event::SagaCompleted { .. }
            | Event::SagaCompensated { .. }
            | Event::SagaFailed { .. }
            | Event::SagaCancelled { .. } => {
                let i = match e {
                    Event::SagaCompleted { .. } => 0,
                    Event::SagaCompensated { .. } => 1,
                    Event::SagaFailed { .. } => 2,
                    _ => 3,
                };
                of(&mut all, workflow).ended[i]
                    .get_or_insert_with(|| {
                        counter!(SAGAS_ENDED, "workflow" => workflow.to_string(), "outcome" => ENDINGS[i])
                    })
                    .increment(1);
                continue;
            }
            _ => continue,
        };
        let (phase, outcome) = PHASES_AND_OUTCOMES[kind];
        of(&mut all, workflow).step(name).durations[kind]
            .get_or_insert_with(|| {
                histogram!(
                    STEP_DURATION,
                    "workflow" => workflow.to_string(),
                    "step" => name.clone(),
                    "phase" => phase,
                    "outcome" => outcome
                )
            })
            .record(started(before, *index).until(*at).as_secs_f64());
    }
}

/// When the attempt that ends started: a branch's or element's own, or the step's.
fn started(before: &SagaState, index: Option<u32>) -> crate::saga::Timestamp {
    index
        .and_then(|u| before.units.get(&u))
        .map_or(before.attempt_started_at, |u| u.started_at)
}

pub(crate) fn instances_removed(n: usize) {
    counter!(INSTANCES_REMOVED).increment(n as u64);
}

pub(crate) fn retention_behind(behind: std::time::Duration) {
    metrics::gauge!(RETENTION_BEHIND).set(behind.as_secs_f64());
}

pub(crate) fn store_commit(seconds: f64, appends: usize) {
    histogram!(STORE_APPEND).record(seconds);
    histogram!(STORE_BATCH).record(appends as f64);
}
