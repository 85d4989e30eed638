//! `decide`: given the machine, the state and an input, what happens next.
//!
//! Pure: no I/O, no clock (`now` is an argument), no randomness (jitter is
//! derived from the instance, step and attempt). Effects are returned as
//! [`Action`]s for the runtime to perform once the events are durable.

use std::borrow::Cow;
use std::time::Duration;

use serde_json::{json, Value};

use super::event::{ActionKind, CompensationReason, Event, Phase, TimerPurpose};
use super::state::{apply, InFlight, SagaState};
use super::time::Timestamp;
use crate::compile::{Action as StepAction, Machine, Role, State, Transition, Wait};
use crate::dsl::spec::FailureKind;
use crate::dsl::template::{Context, Root};

pub use super::decision::{Action, Decision, Input, Rejection};

/// Decides what `input` does to a saga in `state`.
pub fn decide(
    machine: &Machine,
    instance: &str,
    state: &SagaState,
    input: Input,
    now: Timestamp,
) -> Result<Decision, Rejection> {
    decide_to(machine, instance, state, input, now).map(|(d, _)| d)
}

/// Like [`decide`], also returning the state its events lead to (what
/// folding them into `state` gives), so a caller need not fold them again.
pub fn decide_to(
    machine: &Machine,
    instance: &str,
    state: &SagaState,
    input: Input,
    now: Timestamp,
) -> Result<(Decision, SagaState), Rejection> {
    let mut d = Decider {
        m: machine,
        instance,
        s: state.clone(),
        now,
        out: Decision::default(),
    };
    match input {
        Input::Start {
            input,
            idempotency_key,
        } => {
            if state.started {
                return Err(Rejection::AlreadyStarted);
            }
            d.start(input, idempotency_key);
        }
        other => {
            if !state.started {
                return Err(Rejection::NotStarted);
            }
            d.handle(other)?;
        }
    }
    Ok((d.out, d.s))
}

/// The actions that must be (re)issued for a saga loaded from the store:
/// the attempt in flight (with its original attempt number, so the same
/// idempotency key) and every pending timer.
pub fn resume(state: &SagaState) -> Vec<Action> {
    let mut actions = Vec::new();
    for f in &state.in_flight {
        actions.push(Action::Perform {
            step: f.step,
            index: f.index,
            attempt: f.attempt,
            phase: f.phase,
        });
    }
    for (id, t) in &state.timers {
        actions.push(Action::ArmTimer {
            timer: id.clone(),
            due: t.due,
        });
    }
    actions
}

pub(super) struct Decider<'a> {
    pub(super) m: &'a Machine,
    pub(super) instance: &'a str,
    pub(super) s: SagaState,
    pub(super) now: Timestamp,
    pub(super) out: Decision,
}

impl Decider<'_> {
    pub(super) fn emit(&mut self, e: Event) {
        apply(&mut self.s, &e);
        self.out.events.push(e);
    }

    pub(super) fn act(&mut self, a: Action) {
        self.out.actions.push(a);
    }

    pub(super) fn at(&self) -> State {
        self.s.at.unwrap_or(State::Running(0))
    }

    fn start(&mut self, input: Value, idempotency_key: Option<String>) {
        let deadline = self.m.deadline.map(|d| self.now.plus(d));
        self.emit(Event::SagaStarted {
            workflow: self.m.name.clone(),
            version: self.m.version,
            definition_hash: self.m.hash.clone(),
            input,
            idempotency_key,
            deadline,
            started_at: self.now,
        });
        // (the start arms the deadline timer itself)
        if let Some(due) = deadline {
            self.act(Action::ArmTimer {
                timer: TimerPurpose::Deadline.id(),
                due,
            });
        }
        self.enter(self.m.start());
    }

    fn handle(&mut self, input: Input) -> Result<(), Rejection> {
        match input {
            Input::Start { .. } => return Err(Rejection::AlreadyStarted),
            Input::Succeeded {
                step,
                index,
                attempt,
                phase,
                output,
            } => {
                let f = InFlight {
                    step,
                    index,
                    attempt,
                    phase,
                };
                if self.s.in_flight.contains(&f) {
                    match index {
                        Some(u) => self.unit_succeeded(step, u, attempt, phase, output),
                        None => self.succeeded(step, attempt, phase, output, None),
                    }
                }
            }
            Input::Failed {
                step,
                index,
                attempt,
                phase,
                kind,
                error,
            } => {
                let f = InFlight {
                    step,
                    index,
                    attempt,
                    phase,
                };
                if self.s.in_flight.contains(&f) {
                    self.failed(step, index, attempt, phase, kind, error);
                }
            }
            Input::TimerFired { timer } => self.timer_fired(timer),
            Input::Signal { name, payload } => self.signal(name, payload)?,
            Input::Cancel { reason } => self.cancel(reason)?,
            Input::MoveTimer { timer, due } => self.move_timer(timer, due)?,
            Input::Pause { reason } => self.pause(reason)?,
            Input::Resume => self.resume()?,
            Input::Retry => self.retry()?,
            Input::Reissue => self.reissue(),
            Input::Fault { reason } => {
                if self.s.at.is_some() && !self.s.is_terminal() {
                    self.emit(Event::SagaFailed {
                        reason,
                        at: self.now,
                    });
                    self.act(Action::Finished);
                }
            }
        }
        Ok(())
    }

    /// Sends the attempt in flight again with its key. Its timeout restarts:
    /// an outage longer than the timeout must not fail an attempt that has
    /// not been given its time, nor start another beside it.
    fn reissue(&mut self) {
        // (an ended saga has nothing in flight)
        for f in self.s.in_flight.clone() {
            let step = self.m.steps[f.step].unit(f.index);
            let timer = TimerPurpose::StepTimeout {
                step: f.step,
                index: f.index,
                attempt: f.attempt,
                phase: f.phase,
            }
            .id();
            let timeout_due = match (step.timeout, self.s.timers.contains_key(&timer)) {
                (Some(t), true) => Some(self.now.plus(t)),
                _ => None,
            };
            self.emit(Event::AttemptReissued {
                step: f.step,
                index: f.index,
                name: step.name.clone(),
                attempt: f.attempt,
                phase: f.phase,
                timeout_due,
                at: self.now,
            });
            if let Some(due) = timeout_due {
                self.act(Action::ArmTimer { timer, due });
            }
            self.act(Action::Perform {
                step: f.step,
                index: f.index,
                attempt: f.attempt,
                phase: f.phase,
            });
        }
    }

    fn pause(&mut self, reason: Option<String>) -> Result<(), Rejection> {
        if self.s.is_terminal() {
            return Err(Rejection::Finished(self.s.status()));
        }
        if !self.s.paused {
            self.emit(Event::SagaPaused {
                reason,
                at: self.now,
            });
        }
        Ok(())
    }

    fn resume(&mut self) -> Result<(), Rejection> {
        if self.s.is_terminal() {
            return Err(Rejection::Finished(self.s.status()));
        }
        if !self.s.paused {
            return Err(Rejection::NotPaused);
        }
        let held = self.s.held.clone();
        self.emit(Event::SagaResumed { at: self.now });
        for h in held {
            self.start_attempt(h.step, h.index, h.attempt, h.phase);
        }
        Ok(())
    }

    fn retry(&mut self) -> Result<(), Rejection> {
        if self.s.at != Some(State::Failed) {
            return Err(Rejection::NotFailed(self.s.status()));
        }
        let Some(f) = self.s.last_failure else {
            return Err(Rejection::NotFailed(self.s.status()));
        };
        self.emit(Event::SagaRetried {
            step: f.step,
            name: self.m.steps[f.step].name.clone(),
            phase: f.phase,
            at: self.now,
        });
        let step = &self.m.steps[f.step];
        match (&step.action, f.phase) {
            // `when` or `for_each` could not be evaluated (attempt 0): reach the step again
            (_, Phase::Forward) if f.attempt == 0 => self.reach(f.step),
            _ if step.is_group() => self.retry_units(f.step, f.phase),
            (StepAction::Wait(_), Phase::Forward) => self.begin(f.step),
            _ => self.start_attempt(f.step, None, f.attempt + 1, f.phase),
        }
        Ok(())
    }

    /// Enters a state: starts its step, arms its timers, or ends the saga.
    pub(super) fn enter(&mut self, target: State) {
        match target {
            State::Running(i) | State::Waiting(i) => self.reach(i),
            State::Compensating(i) if self.s.skipped.contains(&i) => self.compensation_done(i),
            State::Compensating(i) if self.m.steps[i].is_group() => self.compensate_units(i),
            State::Compensating(i) => self.start_attempt(i, None, 1, Phase::Compensation),
            State::Completed => {
                let output = self.output();
                self.emit(Event::SagaCompleted {
                    output,
                    at: self.now,
                });
                self.act(Action::Finished);
            }
            State::Compensated => {
                self.emit(Event::SagaCompensated { at: self.now });
                self.act(Action::Finished);
            }
            State::Cancelled => {
                self.emit(Event::SagaCancelled { at: self.now });
                self.act(Action::Finished);
            }
            State::Failed => {
                let reason = self.s.error.clone().unwrap_or_else(|| "failed".into());
                self.emit(Event::SagaFailed {
                    reason,
                    at: self.now,
                });
                self.act(Action::Finished);
            }
        }
    }

    /// Starts step `i` (its `when` already passed): its branches, its
    /// elements, its wait or its first attempt.
    pub(super) fn begin(&mut self, i: usize) {
        let step = &self.m.steps[i];
        if !step.branches.is_empty() {
            return self.start_branches(i);
        }
        if step.for_each.is_some() {
            return self.start_elements(i);
        }
        match &step.action {
            StepAction::Wait(_) => self.wait(i),
            _ => self.start_attempt(i, None, 1, Phase::Forward),
        }
    }

    fn wait(&mut self, i: usize) {
        let step = &self.m.steps[i];
        self.emit(Event::StepStarted {
            step: i,
            index: None,
            name: step.name.clone(),
            attempt: 1,
            phase: Phase::Forward,
            action: ActionKind::Wait,
            at: self.now,
            timeout_due: None,
        });
        match &step.action {
            StepAction::Wait(Wait::Duration(d)) => {
                self.arm(TimerPurpose::WaitElapsed { step: i }, self.now.plus(*d))
            }
            StepAction::Wait(Wait::Signal(name)) => {
                if let Some((_, payload)) = self.s.signals.iter().find(|(n, _)| n == name).cloned()
                {
                    self.succeeded(i, 1, Phase::Forward, payload, Some(name.clone()));
                    return;
                }
                if let Some(t) = step.timeout {
                    self.arm(TimerPurpose::WaitTimeout { step: i }, self.now.plus(t));
                }
            }
            StepAction::Http(_) | StepAction::Task(_) | StepAction::Parallel => {}
        }
    }

    pub(super) fn start_attempt(
        &mut self,
        i: usize,
        index: Option<u32>,
        attempt: u32,
        phase: Phase,
    ) {
        let step = self.m.steps[i].unit(index);
        if self.s.paused {
            self.emit(Event::StepHeld {
                step: i,
                index,
                name: step.name.clone(),
                attempt,
                phase,
                at: self.now,
            });
            return;
        }
        let action = match phase {
            Phase::Forward => &step.action,
            Phase::Compensation => step.compensation.as_ref().unwrap_or(&step.action),
        };
        let kind = match action {
            StepAction::Http(_) => ActionKind::Http,
            StepAction::Task(_) => ActionKind::Task,
            StepAction::Wait(_) | StepAction::Parallel => ActionKind::Wait,
        };
        let timeout_due = step.timeout.map(|t| self.now.plus(t));
        self.emit(Event::StepStarted {
            step: i,
            index,
            name: step.name.clone(),
            attempt,
            phase,
            action: kind,
            at: self.now,
            timeout_due,
        });
        // (the start of the attempt arms its timeout timer itself)
        if let Some(due) = timeout_due {
            let purpose = TimerPurpose::StepTimeout {
                step: i,
                index,
                attempt,
                phase,
            };
            self.act(Action::ArmTimer {
                timer: purpose.id(),
                due,
            });
        }
        self.act(Action::Perform {
            step: i,
            index,
            attempt,
            phase,
        });
    }

    pub(super) fn arm(&mut self, purpose: TimerPurpose, due: Timestamp) {
        let timer = purpose.id();
        self.emit(Event::TimerArmed {
            timer: timer.clone(),
            purpose,
            due,
        });
        self.act(Action::ArmTimer { timer, due });
    }

    fn succeeded(
        &mut self,
        i: usize,
        attempt: u32,
        phase: Phase,
        output: Value,
        signal: Option<String>,
    ) {
        let name = self.m.steps[i].name.clone();
        match phase {
            Phase::Forward => {
                let transition = match (&self.m.steps[i].action, &signal) {
                    (StepAction::Wait(Wait::Duration(_)), _) => Transition::TimerElapsed,
                    (_, Some(_)) => Transition::SignalReceived,
                    _ => Transition::Succeeded,
                };
                self.emit(Event::StepSucceeded {
                    step: i,
                    index: None,
                    name,
                    attempt,
                    output,
                    signal,
                    at: self.now,
                });
                self.go(transition);
            }
            Phase::Compensation => {
                self.emit(Event::StepCompensated {
                    step: i,
                    index: None,
                    name,
                    attempt,
                    output,
                    at: self.now,
                });
                self.compensation_done(i);
            }
        }
    }

    /// The compensation of the step the saga is at is done: on to the one before, or the end.
    pub(super) fn compensation_done(&mut self, i: usize) {
        let here = State::Compensating(i);
        let done = match self.s.reason {
            Some(CompensationReason::Cancel) => Transition::CancelCompensated,
            _ => Transition::AllCompensated,
        };
        let next = self
            .m
            .next(here, Transition::Compensated)
            .or_else(|| self.m.next(here, done));
        match next {
            Some(next) => self.enter(next),
            None => {
                self.s.error = Some(format!("no `{done}` transition from {here}"));
                self.enter(State::Failed);
            }
        }
    }

    pub(super) fn failed(
        &mut self,
        i: usize,
        index: Option<u32>,
        attempt: u32,
        phase: Phase,
        kind: FailureKind,
        error: String,
    ) {
        let step = self.m.steps[i].unit(index);
        let name = step.name.clone();
        let retry = match phase {
            // a branch or element retries by its own policy, the group's state unchanged
            Phase::Forward if index.is_some() => step.retry.should_retry(attempt, kind),
            Phase::Forward => {
                step.retry.should_retry(attempt, kind)
                    && self.m.next(self.at(), Transition::Retry).is_some()
            }
            // A compensation's "no" cannot be retried away; anything else is tried again within the policy.
            Phase::Compensation => {
                kind != FailureKind::Business
                    && step.retry.max_attempts.is_none_or(|max| attempt < max)
            }
        };
        let error = match index {
            Some(u) if self.m.steps[i].for_each.is_some() => format!("{name}[{u}]: {error}"),
            _ => format!("{name}: {error}"),
        };
        match phase {
            Phase::Forward => self.emit(Event::StepFailed {
                step: i,
                index,
                name: name.clone(),
                attempt,
                kind,
                error,
                retryable: retry,
                at: self.now,
            }),
            Phase::Compensation => self.emit(Event::CompensationFailed {
                step: i,
                index,
                name: name.clone(),
                attempt,
                kind,
                error,
                retryable: retry,
                at: self.now,
            }),
        }
        if retry {
            self.schedule_retry(i, index, attempt + 1, phase);
            return;
        }
        let transition = match (phase, kind) {
            (Phase::Compensation, _) => Transition::CompensationFailed,
            (_, FailureKind::Business) => Transition::BusinessFailure,
            (_, FailureKind::Transient) => Transition::RetriesExhausted,
            (_, FailureKind::Timeout) => Transition::Timeout,
        };
        match self.m.next(self.at(), transition) {
            Some(State::Failed) | None => self.enter(State::Failed),
            Some(next) if phase == Phase::Forward => {
                self.compensate(CompensationReason::Failure, i, next)
            }
            Some(next) => self.enter(next),
        }
    }

    fn schedule_retry(&mut self, i: usize, index: Option<u32>, attempt: u32, phase: Phase) {
        let step = self.m.steps[i].unit(index);
        let base = step.retry.delay(attempt - 1);
        let delay = jittered(base, step.retry.jitter, self.instance, i, index, attempt);
        if delay.is_zero() {
            self.start_attempt(i, index, attempt, phase);
            return;
        }
        let due = self.now.plus(delay);
        self.emit(Event::RetryScheduled {
            step: i,
            index,
            name: step.name.clone(),
            attempt,
            phase,
            due,
        });
        self.act(Action::ArmTimer {
            timer: TimerPurpose::Backoff {
                step: i,
                index,
                attempt,
                phase,
            }
            .id(),
            due,
        });
    }

    /// Follows a transition from the current state and enters where it leads.
    pub(super) fn go(&mut self, on: Transition) {
        match self.m.next(self.at(), on) {
            Some(next) => self.enter(next),
            None => {
                self.s.error = Some(format!("no `{on}` transition from {}", self.at()));
                self.enter(State::Failed);
            }
        }
    }

    pub(super) fn compensate(&mut self, reason: CompensationReason, step: usize, next: State) {
        self.emit(Event::CompensationStarted {
            reason,
            step,
            at: self.now,
        });
        self.enter(next);
    }

    fn move_timer(&mut self, timer: String, due: Timestamp) -> Result<(), Rejection> {
        if self.s.is_terminal() {
            return Err(Rejection::Finished(self.s.status()));
        }
        let Some(pending) = self.s.timers.get(&timer).cloned() else {
            return Err(Rejection::NoSuchTimer(timer));
        };
        let due = due.max(self.now);
        self.emit(Event::TimerMoved {
            timer: timer.clone(),
            from: pending.due,
            due,
            at: self.now,
        });
        self.act(Action::ArmTimer {
            timer: timer.clone(),
            due,
        });
        if due <= self.now {
            self.timer_fired(timer);
        }
        Ok(())
    }

    fn timer_fired(&mut self, timer: String) {
        let Some(pending) = self.s.timers.get(&timer).cloned() else {
            return; // fired before, or made moot: nothing to do
        };
        if pending.due > self.now {
            return; // moved later since it was armed: its new time has not come
        }
        self.emit(Event::TimerFired {
            timer,
            at: self.now,
        });
        match pending.purpose {
            TimerPurpose::Backoff {
                step,
                index,
                attempt,
                phase,
            } => self.start_attempt(step, index, attempt, phase),
            TimerPurpose::StepTimeout {
                step,
                index,
                attempt,
                phase,
            } => {
                let after = self.m.steps[step]
                    .unit(index)
                    .timeout
                    .map_or(String::new(), |t| {
                        format!(" after {}", humantime::format_duration(t))
                    });
                self.failed(
                    step,
                    index,
                    attempt,
                    phase,
                    FailureKind::Timeout,
                    format!("timed out{after}"),
                );
            }
            TimerPurpose::WaitTimeout { step } => {
                if self.s.at == Some(State::Waiting(step)) {
                    let name = self.m.steps[step].name.clone();
                    let error = format!("{name}: no signal came in time");
                    self.emit(Event::StepFailed {
                        step,
                        index: None,
                        name,
                        attempt: 1,
                        kind: FailureKind::Timeout,
                        error,
                        retryable: false,
                        at: self.now,
                    });
                    match self.m.next(State::Waiting(step), Transition::Timeout) {
                        Some(State::Failed) | None => self.enter(State::Failed),
                        Some(next) => self.compensate(CompensationReason::Failure, step, next),
                    }
                }
            }
            TimerPurpose::WaitElapsed { step } => {
                if self.s.at == Some(State::Waiting(step)) {
                    self.succeeded(step, 1, Phase::Forward, Value::Null, None);
                }
            }
            TimerPurpose::Deadline => {
                let at = self.at();
                if let Some(next) = self.m.next(at, Transition::Deadline) {
                    let step = self.s.current_step().unwrap_or(0);
                    self.compensate(CompensationReason::Deadline, step, next);
                }
            }
        }
    }

    fn signal(&mut self, name: String, payload: Value) -> Result<(), Rejection> {
        if self.s.is_terminal() {
            return Err(Rejection::Finished(self.s.status()));
        }
        self.emit(Event::SignalReceived {
            name: name.clone(),
            payload: payload.clone(),
            at: self.now,
        });
        if let Some(State::Waiting(i)) = self.s.at {
            if matches!(&self.m.steps[i].action, StepAction::Wait(Wait::Signal(n)) if *n == name) {
                self.succeeded(i, 1, Phase::Forward, payload, Some(name));
            }
        }
        Ok(())
    }

    fn cancel(&mut self, reason: Option<String>) -> Result<(), Rejection> {
        if self.s.is_terminal() {
            return Err(Rejection::Finished(self.s.status()));
        }
        match self.s.reason {
            Some(CompensationReason::Cancel) => return Ok(()), // already cancelling: nothing more to do
            Some(CompensationReason::Failure) => return Err(Rejection::Compensating("failure")),
            Some(CompensationReason::Deadline) => return Err(Rejection::Compensating("deadline")),
            None => {}
        }
        let at = self.at();
        let step = self.s.current_step().unwrap_or(0);
        if self
            .m
            .steps
            .get(step)
            .is_some_and(|s| s.role != Role::Compensable)
        {
            return Err(Rejection::PastPivot);
        }
        let Some(next) = self.m.next(at, Transition::Cancel) else {
            return Err(Rejection::PastPivot);
        };
        self.emit(Event::CancelRequested {
            reason,
            at: self.now,
        });
        self.compensate(CompensationReason::Cancel, step, next);
        Ok(())
    }

    /// The saga's output: the workflow's `output` template, or every step's output.
    fn output(&self) -> Value {
        let ctx = template_context(self.m, self.instance, &self.s);
        match &self.m.output {
            Some(t) => {
                let mut out = t
                    .render(&ctx)
                    .unwrap_or_else(|e| json!({ "error": e.to_string() }));
                self.m.secrets.redact_value(&mut out);
                out
            }
            None => Root::Outputs(&self.s.outputs).to_value(),
        }
    }
}

/// The data templates see: `{input, steps: {NAME: {output}}, env, instance:
/// {id, workflow, version, started_at}}`, borrowed from the saga.
pub fn template_context<'a>(m: &'a Machine, instance: &'a str, s: &'a SagaState) -> Context<'a> {
    let started_at = s.started_at;
    Context::of(vec![
        ("input", Root::Value(Cow::Borrowed(&s.input))),
        ("steps", Root::Outputs(&s.outputs)),
        ("env", Root::Strings(&m.env)),
        (
            "instance",
            Root::Made(Box::new(
                move || json!({ "id": instance, "workflow": m.name, "version": m.version, "started_at": started_at }),
            )),
        ),
    ])
}

/// [`template_context`] as one JSON object.
pub fn context(m: &Machine, instance: &str, s: &SagaState) -> Value {
    template_context(m, instance, s).into_value()
}

/// A delay with up to `jitter` of it randomised, reproducibly from the
/// instance, step, branch or element, and attempt.
fn jittered(
    base: Duration,
    jitter: f64,
    instance: &str,
    step: usize,
    index: Option<u32>,
    attempt: u32,
) -> Duration {
    if base.is_zero() || jitter <= 0.0 {
        return base;
    }
    let mut seed: u64 = 0xcbf2_9ce4_8422_2325;
    let unit = index.map(u32::to_le_bytes).unwrap_or_default();
    for b in instance
        .bytes()
        .chain(step.to_le_bytes())
        .chain(unit.into_iter().take(if index.is_some() { 4 } else { 0 }))
        .chain(attempt.to_le_bytes())
    {
        seed = (seed ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
    }
    let r = fastrand::Rng::with_seed(seed).f64();
    base.mul_f64(1.0 - jitter.clamp(0.0, 1.0) * r)
}
