//! The state of one saga instance, folded from its events by [`evolve`].
//! No decisions here: `evolve` only records what the events say.

use std::collections::BTreeMap;

use serde::Serialize;
use serde_json::Value;

use super::event::{ActionKind, CompensationReason, Event, Phase, TimerPurpose};
use super::time::Timestamp;
use crate::compile::State;

/// The attempt currently waiting for an outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct InFlight {
    pub step: usize,
    pub attempt: u32,
    pub phase: Phase,
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
    pub workflow: String,
    pub version: u32,
    pub definition_hash: String,
    pub input: Value,
    pub idempotency_key: Option<String>,
    pub started_at: Timestamp,
    pub deadline: Option<Timestamp>,
    /// Where the saga is in its machine (`None` before it starts).
    pub at: Option<State>,
    pub in_flight: Option<InFlight>,
    /// The attempt number of the current step or compensation.
    pub attempt: u32,
    /// When the current attempt started.
    pub attempt_started_at: Timestamp,
    /// Paused by an operator: no new attempt starts.
    pub paused: bool,
    /// The attempt that came due while paused, started on resume.
    pub held: Option<InFlight>,
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
            s.workflow.clone_from(workflow);
            s.version = *version;
            s.definition_hash.clone_from(definition_hash);
            s.input = input.clone();
            s.idempotency_key.clone_from(idempotency_key);
            s.deadline = *deadline;
            s.started_at = *started_at;
            s.updated_at = *started_at;
        }
        Event::StepStarted {
            step,
            attempt,
            phase,
            action,
            at,
            ..
        } => {
            s.at = Some(match (phase, action) {
                (Phase::Compensation, _) => State::Compensating(*step),
                (Phase::Forward, ActionKind::Wait) => State::Waiting(*step),
                (Phase::Forward, _) => State::Running(*step),
            });
            s.attempt = *attempt;
            s.attempt_started_at = *at;
            s.in_flight = (*action != ActionKind::Wait).then_some(InFlight {
                step: *step,
                attempt: *attempt,
                phase: *phase,
            });
            remove_timer(
                &mut s,
                &TimerPurpose::Backoff {
                    step: *step,
                    attempt: *attempt,
                    phase: *phase,
                },
            );
            s.updated_at = *at;
        }
        Event::StepSucceeded {
            step,
            name,
            attempt,
            output,
            signal,
            at,
        } => {
            s.outputs.insert(name.clone(), output.clone());
            if let Some(sig) = signal {
                if let Some(i) = s.signals.iter().position(|(n, _)| n == sig) {
                    s.signals.remove(i);
                }
            }
            finish_attempt(&mut s, *step, *attempt, Phase::Forward);
            s.timers.retain(|_, t| !matches!(t.purpose, TimerPurpose::WaitTimeout { step: w } | TimerPurpose::WaitElapsed { step: w } if w == *step));
            s.updated_at = *at;
        }
        Event::StepFailed {
            step,
            attempt,
            error,
            at,
            ..
        } => {
            s.error = Some(error.clone());
            s.last_failure = Some(InFlight {
                step: *step,
                attempt: *attempt,
                phase: Phase::Forward,
            });
            finish_attempt(&mut s, *step, *attempt, Phase::Forward);
            s.timers.retain(
                |_, t| !matches!(t.purpose, TimerPurpose::WaitTimeout { step: w } if w == *step),
            );
            s.updated_at = *at;
        }
        Event::StepCompensated {
            step, attempt, at, ..
        } => {
            finish_attempt(&mut s, *step, *attempt, Phase::Compensation);
            s.updated_at = *at;
        }
        Event::CompensationFailed {
            step,
            attempt,
            error,
            at,
            ..
        } => {
            s.error = Some(error.clone());
            s.last_failure = Some(InFlight {
                step: *step,
                attempt: *attempt,
                phase: Phase::Compensation,
            });
            finish_attempt(&mut s, *step, *attempt, Phase::Compensation);
            s.updated_at = *at;
        }
        Event::RetryScheduled {
            step,
            attempt,
            phase,
            due,
            ..
        } => {
            let purpose = TimerPurpose::Backoff {
                step: *step,
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
            s.in_flight = None;
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
            end(&mut s, State::Completed, *at);
        }
        Event::SagaCompensated { at } => end(&mut s, State::Compensated, *at),
        Event::SagaFailed { reason, at } => {
            s.error = Some(reason.clone());
            // a saga stopped by a fault is retried from the attempt it had in flight
            if let Some(f) = s.in_flight {
                s.last_failure = Some(f);
            }
            end(&mut s, State::Failed, *at);
        }
        Event::SagaCancelled { at } => end(&mut s, State::Cancelled, *at),
        Event::SagaPaused { at, .. } => {
            s.paused = true;
            s.updated_at = *at;
        }
        Event::SagaResumed { at } => {
            s.paused = false;
            s.held = None;
            s.updated_at = *at;
        }
        Event::StepHeld {
            step,
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
            s.held = Some(InFlight {
                step: *step,
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
            attempt,
            phase,
            timeout_due,
            at,
            ..
        } => {
            let timeout = TimerPurpose::StepTimeout {
                step: *step,
                attempt: *attempt,
                phase: *phase,
            };
            if let (Some(due), Some(t)) = (timeout_due, s.timers.get_mut(&timeout.id())) {
                t.due = *due;
            }
            s.attempt_started_at = *at;
            s.updated_at = *at;
        }
    }
    s
}

fn remove_timer(s: &mut SagaState, purpose: &TimerPurpose) {
    s.timers.remove(&purpose.id());
}

fn finish_attempt(s: &mut SagaState, step: usize, attempt: u32, phase: Phase) {
    if s.in_flight
        == Some(InFlight {
            step,
            attempt,
            phase,
        })
    {
        s.in_flight = None;
    }
    remove_timer(
        s,
        &TimerPurpose::StepTimeout {
            step,
            attempt,
            phase,
        },
    );
}

fn end(s: &mut SagaState, state: State, at: Timestamp) {
    s.at = Some(state);
    s.in_flight = None;
    s.timers.clear();
    s.finished_at = Some(at);
    s.updated_at = at;
}

/// Folds a whole history.
pub fn fold<'a>(events: impl IntoIterator<Item = &'a Event>) -> SagaState {
    events.into_iter().fold(SagaState::default(), evolve)
}
