//! The state of one saga instance, folded from its events by [`evolve`].
//! No decisions here: `evolve` only records what the events say.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use serde::Serialize;
use serde_json::Value;

use super::event::{ActionKind, CompensationReason, Event, Phase, TimerPurpose};
use super::time::Timestamp;
use crate::compile::State;
use crate::dsl::spec::FailureKind;

/// An attempt waiting for an outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct InFlight {
    pub step: usize,
    /// The branch or element, for an attempt of a parallel or for-each step.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub index: Option<u32>,
    pub attempt: u32,
    pub phase: Phase,
}

/// Where a branch or element of the step the saga is at stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum UnitStatus {
    /// Not started yet.
    Pending,
    /// An attempt is in flight, due (backoff) or held.
    Active,
    Succeeded,
    /// Failed for good (forward: its `kind` says whether its effect may have happened).
    Failed(FailureKind),
    Compensated,
}

/// A branch of a parallel step or an element of a for-each step.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Unit {
    pub status: UnitStatus,
    /// Its last attempt's number (0 before the first).
    pub attempt: u32,
    /// When its last attempt started.
    pub started_at: Timestamp,
    /// An element's output (a branch's is in `outputs`, by name).
    #[serde(skip_serializing_if = "Value::is_null")]
    pub output: Value,
}

impl Unit {
    fn pending() -> Self {
        Self {
            status: UnitStatus::Pending,
            attempt: 0,
            started_at: Timestamp::default(),
            output: Value::Null,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PendingTimer {
    pub purpose: TimerPurpose,
    pub due: Timestamp,
}

/// Everything the core needs to decide what happens next.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct SagaState {
    /// False until `SagaStarted`.
    pub started: bool,
    // (shared: a decision works on a copy of the state, and these never
    // change after the start)
    pub workflow: Arc<str>,
    pub version: u32,
    pub definition_hash: Arc<str>,
    pub input: Arc<Value>,
    pub idempotency_key: Option<String>,
    pub started_at: Timestamp,
    pub deadline: Option<Timestamp>,
    /// Where the saga is in its machine (`None` before it starts).
    pub at: Option<State>,
    /// The attempts waiting for an outcome: one for a plain step, one per
    /// running branch or element of a parallel or for-each step.
    pub in_flight: BTreeSet<InFlight>,
    /// The attempt number of the current step or compensation.
    pub attempt: u32,
    /// When the current attempt started.
    pub attempt_started_at: Timestamp,
    /// Paused by an operator: no new attempt starts.
    pub paused: bool,
    /// The attempts that came due while paused, started on resume.
    pub held: Vec<InFlight>,
    /// The step, phase and attempt of the last failure (where a retry starts again).
    pub last_failure: Option<InFlight>,
    /// Outputs of the steps that succeeded, by step name.
    pub outputs: BTreeMap<String, Value>,
    pub reason: Option<CompensationReason>,
    /// The last failure, for people.
    pub error: Option<String>,
    /// Signals received and not yet consumed by a wait step, oldest first.
    pub signals: Vec<(String, Value)>,
    /// Timers armed and not yet fired or made moot, by id.
    pub timers: BTreeMap<String, PendingTimer>,
    pub output: Option<Value>,
    /// The branches or elements of the parallel or for-each step the saga is at, by position.
    pub units: BTreeMap<u32, Unit>,
    /// The elements of each for-each step that started, by step.
    pub items: BTreeMap<usize, Vec<Value>>,
    /// The steps whose `when` was false.
    pub skipped: BTreeSet<usize>,
    pub finished_at: Option<Timestamp>,
    /// Events folded so far (the stream's next revision).
    pub events: u64,
    pub updated_at: Timestamp,
}

impl SagaState {
    pub fn is_terminal(&self) -> bool {
        self.at.is_some_and(State::is_terminal)
    }

    /// The status word the API shows.
    pub fn status(&self) -> &'static str {
        match self.at {
            None => "pending",
            Some(State::Running(_)) => "running",
            Some(State::Waiting(_)) => "waiting",
            Some(State::Compensating(_)) => "compensating",
            Some(State::Completed) => "completed",
            Some(State::Compensated) => "compensated",
            Some(State::Failed) => "failed",
            Some(State::Cancelled) => "cancelled",
        }
    }

    /// The step the saga is at, if any.
    pub fn current_step(&self) -> Option<usize> {
        match self.at? {
            State::Running(i) | State::Waiting(i) | State::Compensating(i) => Some(i),
            _ => None,
        }
    }
}

/// Applies one event. Pure and total: an event that does not fit is recorded as best it can be.
pub fn evolve(mut s: SagaState, e: &Event) -> SagaState {
    apply(&mut s, e);
    s
}

/// [`evolve`] in place: a decision folds each event it emits into the
/// state it holds, without moving the state in and out.
pub fn apply(s: &mut SagaState, e: &Event) {
    s.events += 1;
    match e {
        Event::SagaStarted {
            workflow,
            version,
            definition_hash,
            input,
            idempotency_key,
            deadline,
            started_at,
        } => {
            s.started = true;
            s.workflow = workflow.as_str().into();
            s.version = *version;
            s.definition_hash = definition_hash.as_str().into();
            s.input = Arc::new(input.clone());
            s.idempotency_key.clone_from(idempotency_key);
            s.deadline = *deadline;
            s.started_at = *started_at;
            s.updated_at = *started_at;
            if let Some(due) = deadline {
                arm(s, TimerPurpose::Deadline, *due);
            }
        }
        Event::StepStarted {
            step,
            index,
            attempt,
            phase,
            action,
            at,
            timeout_due,
            ..
        } => {
            if let Some(due) = timeout_due {
                let purpose = TimerPurpose::StepTimeout {
                    step: *step,
                    index: *index,
                    attempt: *attempt,
                    phase: *phase,
                };
                arm(s, purpose, *due);
            }
            s.at = Some(match (phase, action) {
                (Phase::Compensation, _) => State::Compensating(*step),
                (Phase::Forward, ActionKind::Wait) => State::Waiting(*step),
                (Phase::Forward, _) => State::Running(*step),
            });
            s.attempt = *attempt;
            s.attempt_started_at = *at;
            let f = InFlight {
                step: *step,
                index: *index,
                attempt: *attempt,
                phase: *phase,
            };
            match index {
                Some(u) => {
                    s.in_flight.insert(f);
                    activate(s, *u, *attempt);
                    if let Some(unit) = s.units.get_mut(u) {
                        unit.started_at = *at;
                    }
                }
                None => {
                    s.in_flight.clear();
                    if *action != ActionKind::Wait {
                        s.in_flight.insert(f);
                    }
                }
            }
            remove_timer(
                s,
                &TimerPurpose::Backoff {
                    step: *step,
                    index: *index,
                    attempt: *attempt,
                    phase: *phase,
                },
            );
            s.updated_at = *at;
        }
        Event::StepSucceeded {
            step,
            index,
            name,
            attempt,
            output,
            signal,
            at,
        } => {
            match index {
                Some(u) => {
                    let element = s.items.contains_key(step);
                    if let Some(unit) = s.units.get_mut(u) {
                        unit.status = UnitStatus::Succeeded;
                        if element {
                            unit.output = output.clone();
                        }
                    }
                    if !element {
                        s.outputs.insert(name.clone(), output.clone());
                    }
                }
                None => {
                    s.outputs.insert(name.clone(), output.clone());
                    s.units.clear();
                }
            }
            if let Some(sig) = signal {
                if let Some(i) = s.signals.iter().position(|(n, _)| n == sig) {
                    s.signals.remove(i);
                }
            }
            finish_attempt(s, *step, *index, *attempt, Phase::Forward);
            s.timers.retain(|_, t| !matches!(t.purpose, TimerPurpose::WaitTimeout { step: w } | TimerPurpose::WaitElapsed { step: w } if w == *step));
            s.updated_at = *at;
        }
        Event::StepFailed {
            step,
            index,
            attempt,
            kind,
            error,
            retryable,
            at,
            ..
        } => {
            s.error = Some(error.clone());
            s.last_failure = Some(InFlight {
                step: *step,
                index: *index,
                attempt: *attempt,
                phase: Phase::Forward,
            });
            if let (Some(u), false) = (index, retryable) {
                if let Some(unit) = s.units.get_mut(u) {
                    unit.status = UnitStatus::Failed(*kind);
                }
            }
            finish_attempt(s, *step, *index, *attempt, Phase::Forward);
            s.timers.retain(
                |_, t| !matches!(t.purpose, TimerPurpose::WaitTimeout { step: w } if w == *step),
            );
            s.updated_at = *at;
        }
        Event::StepCompensated {
            step,
            index,
            attempt,
            at,
            ..
        } => {
            if let Some(unit) = index.and_then(|u| s.units.get_mut(&u)) {
                unit.status = UnitStatus::Compensated;
            }
            finish_attempt(s, *step, *index, *attempt, Phase::Compensation);
            s.updated_at = *at;
        }
        Event::CompensationFailed {
            step,
            index,
            attempt,
            kind,
            error,
            retryable,
            at,
            ..
        } => {
            s.error = Some(error.clone());
            s.last_failure = Some(InFlight {
                step: *step,
                index: *index,
                attempt: *attempt,
                phase: Phase::Compensation,
            });
            if let (Some(u), false) = (index, retryable) {
                if let Some(unit) = s.units.get_mut(u) {
                    unit.status = UnitStatus::Failed(*kind);
                }
            }
            finish_attempt(s, *step, *index, *attempt, Phase::Compensation);
            s.updated_at = *at;
        }
        Event::RetryScheduled {
            step,
            index,
            attempt,
            phase,
            due,
            ..
        } => {
            let purpose = TimerPurpose::Backoff {
                step: *step,
                index: *index,
                attempt: *attempt,
                phase: *phase,
            };
            s.timers
                .insert(purpose.id(), PendingTimer { purpose, due: *due });
        }
        Event::TimerArmed {
            timer,
            purpose,
            due,
        } => {
            s.timers.insert(
                timer.clone(),
                PendingTimer {
                    purpose: *purpose,
                    due: *due,
                },
            );
        }
        Event::TimerFired { timer, at } => {
            s.timers.remove(timer);
            s.updated_at = *at;
        }
        Event::TimerMoved { timer, due, at, .. } => {
            if let Some(t) = s.timers.get_mut(timer) {
                t.due = *due;
            }
            s.updated_at = *at;
        }
        Event::SignalReceived { name, payload, at } => {
            s.signals.push((name.clone(), payload.clone()));
            s.updated_at = *at;
        }
        Event::CancelRequested { reason, at } => {
            s.error = Some(match reason {
                Some(r) => format!("cancelled: {r}"),
                None => "cancelled".into(),
            });
            s.updated_at = *at;
        }
        Event::CompensationStarted { reason, at, .. } => {
            s.reason = Some(*reason);
            if *reason == CompensationReason::Deadline {
                s.error = Some("the saga's deadline passed".into());
            }
            s.in_flight.clear();
            // (an attempt held while paused is abandoned too)
            s.held.retain(|h| h.phase == Phase::Compensation);
            // Forward work is abandoned: its timers are moot, the deadline too.
            s.timers.retain(|_, t| {
                matches!(
                    t.purpose,
                    TimerPurpose::StepTimeout {
                        phase: Phase::Compensation,
                        ..
                    } | TimerPurpose::Backoff {
                        phase: Phase::Compensation,
                        ..
                    }
                )
            });
            s.updated_at = *at;
        }
        Event::SagaCompleted { output, at } => {
            s.output = Some(output.clone());
            end(s, State::Completed, *at);
        }
        Event::SagaCompensated { at } => end(s, State::Compensated, *at),
        Event::SagaFailed { reason, at } => {
            s.error = Some(reason.clone());
            // a saga stopped by a fault is retried from the attempt it had in flight
            if let Some(f) = s.in_flight.first() {
                s.last_failure = Some(*f);
            }
            end(s, State::Failed, *at);
        }
        Event::SagaCancelled { at } => end(s, State::Cancelled, *at),
        Event::SagaPaused { at, .. } => {
            s.paused = true;
            s.updated_at = *at;
        }
        Event::SagaResumed { at } => {
            s.paused = false;
            s.held.clear();
            s.updated_at = *at;
        }
        Event::StepHeld {
            step,
            index,
            attempt,
            phase,
            at,
            ..
        } => {
            s.at = Some(match phase {
                Phase::Forward => State::Running(*step),
                Phase::Compensation => State::Compensating(*step),
            });
            s.attempt = *attempt;
            match index {
                Some(u) => activate(s, *u, *attempt),
                // a plain step has one attempt at a time
                None => s.held.clear(),
            }
            s.held
                .retain(|h| (h.step, h.index, h.phase) != (*step, *index, *phase));
            s.held.push(InFlight {
                step: *step,
                index: *index,
                attempt: *attempt,
                phase: *phase,
            });
            s.updated_at = *at;
        }
        Event::SagaRetried {
            step, phase, at, ..
        } => {
            s.at = Some(match phase {
                Phase::Forward => State::Running(*step),
                Phase::Compensation => State::Compensating(*step),
            });
            s.finished_at = None;
            s.updated_at = *at;
        }
        Event::AttemptReissued {
            step,
            index,
            attempt,
            phase,
            timeout_due,
            at,
            ..
        } => {
            let timeout = TimerPurpose::StepTimeout {
                step: *step,
                index: *index,
                attempt: *attempt,
                phase: *phase,
            };
            if let (Some(due), Some(t)) = (timeout_due, s.timers.get_mut(&timeout.id())) {
                t.due = *due;
            }
            s.attempt_started_at = *at;
            s.updated_at = *at;
        }
        Event::StepSkipped { step, name, at } => {
            s.skipped.insert(*step);
            s.outputs.insert(name.clone(), Value::Null);
            s.updated_at = *at;
        }
        Event::BranchesStarted {
            step, branches, at, ..
        } => {
            s.at = Some(State::Running(*step));
            s.units = (0..branches.len() as u32)
                .map(|u| (u, Unit::pending()))
                .collect();
            s.updated_at = *at;
        }
        Event::ElementsListed {
            step, items, at, ..
        } => {
            s.at = Some(State::Running(*step));
            s.units = (0..items.len() as u32)
                .map(|u| (u, Unit::pending()))
                .collect();
            s.items.insert(*step, items.clone());
            s.updated_at = *at;
        }
        Event::UnitsToCompensate {
            step, units, at, ..
        } => {
            s.at = Some(State::Compensating(*step));
            s.units = units.iter().map(|&u| (u, Unit::pending())).collect();
            s.updated_at = *at;
        }
    }
}

fn activate(s: &mut SagaState, unit: u32, attempt: u32) {
    let u = s.units.entry(unit).or_insert_with(Unit::pending);
    u.status = UnitStatus::Active;
    u.attempt = attempt;
}

/// A timer armed by the event that sets it (version 3: a start's deadline,
/// an attempt's timeout), keyed as a `TimerArmed` would key it.
fn arm(s: &mut SagaState, purpose: TimerPurpose, due: Timestamp) {
    s.timers.insert(purpose.id(), PendingTimer { purpose, due });
}

fn remove_timer(s: &mut SagaState, purpose: &TimerPurpose) {
    s.timers.remove(&purpose.id());
}

fn finish_attempt(s: &mut SagaState, step: usize, index: Option<u32>, attempt: u32, phase: Phase) {
    s.in_flight.remove(&InFlight {
        step,
        index,
        attempt,
        phase,
    });
    remove_timer(
        s,
        &TimerPurpose::StepTimeout {
            step,
            index,
            attempt,
            phase,
        },
    );
}

fn end(s: &mut SagaState, state: State, at: Timestamp) {
    s.at = Some(state);
    s.in_flight.clear();
    s.held.clear();
    s.timers.clear();
    s.finished_at = Some(at);
    s.updated_at = at;
}

/// Folds a whole history.
pub fn fold<'a>(events: impl IntoIterator<Item = &'a Event>) -> SagaState {
    events.into_iter().fold(SagaState::default(), evolve)
}
