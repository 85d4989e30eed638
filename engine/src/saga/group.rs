//! Steps that are more than one effect: `when` (a step that may be passed
//! over), `parallel` (branches at once) and `for_each` (an effect per
//! element). Their branches and elements are *units*, addressed by the
//! step and a position; each has its own attempts, retries and
//! compensation (docs/adr/0013-parallel-when-for-each.md).

use std::borrow::Cow;

use serde_json::{json, Value};

use super::decide::{template_context, Decider};
use super::event::{Event, Phase};
use super::state::UnitStatus;
use crate::compile::model::{step_state, MAX_ELEMENTS};
use crate::compile::{Role, State, Transition};
use crate::dsl::spec::FailureKind;
use crate::dsl::template::{Context, Root};

impl Decider<'_> {
    /// The saga reaches step `i`: its `when` decides whether it runs.
    pub(super) fn reach(&mut self, i: usize) {
        let step = &self.m.steps[i];
        if let Some(when) = &step.when {
            let verdict = when.render(&template_context(self.m, self.instance, &self.s));
            match verdict {
                Ok(Value::Bool(false) | Value::Null) => {
                    self.emit(Event::StepSkipped {
                        step: i,
                        name: step.name.clone(),
                        at: self.now,
                    });
                    let here = step_state(&self.m.steps, i);
                    match self.m.next(here, Transition::Skipped) {
                        Some(next) => self.enter(next),
                        None => {
                            self.s.error = Some(format!("no `skipped` transition from {here}"));
                            self.enter(State::Failed);
                        }
                    }
                    return;
                }
                Ok(_) => {}
                Err(e) => return self.fail_unreached(i, format!("when: {e}")),
            }
        }
        self.begin(i);
    }

    /// Step `i` could not start (its `when` or `for_each` failed): nothing
    /// of it happened, so the steps before it are undone. Its `StepFailed`
    /// has attempt 0: no attempt was made (an operator's retry reaches the
    /// step again).
    fn fail_unreached(&mut self, i: usize, error: String) {
        let step = &self.m.steps[i];
        self.emit(Event::StepFailed {
            step: i,
            index: None,
            name: step.name.clone(),
            attempt: 0,
            kind: FailureKind::Business,
            error: format!("{}: {error}", step.name),
            retryable: false,
            at: self.now,
        });
        if step.role == Role::AfterPivot {
            return self.enter(State::Failed);
        }
        let to = (0..i)
            .rev()
            .find(|&j| self.m.steps[j].undoes())
            .map_or(State::Compensated, State::Compensating);
        self.compensate(super::event::CompensationReason::Failure, i, to);
    }

    pub(super) fn start_branches(&mut self, i: usize) {
        let step = &self.m.steps[i];
        self.emit(Event::BranchesStarted {
            step: i,
            name: step.name.clone(),
            branches: step.branches.iter().map(|b| b.name.clone()).collect(),
            at: self.now,
        });
        self.pump(i, Phase::Forward);
    }

    pub(super) fn start_elements(&mut self, i: usize) {
        let step = &self.m.steps[i];
        let Some(each) = &step.for_each else { return };
        let listed = each
            .items
            .render(&template_context(self.m, self.instance, &self.s));
        let items = match listed {
            Ok(Value::Array(items)) if items.len() <= MAX_ELEMENTS => items,
            Ok(Value::Array(items)) => {
                return self.fail_unreached(
                    i,
                    format!(
                        "for_each: {} elements, more than the {MAX_ELEMENTS} a for-each step takes",
                        items.len()
                    ),
                )
            }
            Ok(other) => {
                let kind = match other {
                    Value::Null => "null",
                    Value::Bool(_) => "a boolean",
                    Value::Number(_) => "a number",
                    Value::String(_) => "a string",
                    _ => "an object",
                };
                return self.fail_unreached(i, format!("for_each: expected an array, got {kind}"));
            }
            Err(e) => return self.fail_unreached(i, format!("for_each: {e}")),
        };
        self.emit(Event::ElementsListed {
            step: i,
            name: step.name.clone(),
            items,
            at: self.now,
        });
        self.pump(i, Phase::Forward);
    }

    /// Starts pending units of step `i` up to its concurrency (in order going
    /// forward, newest first when undoing); ends the step when all are done.
    fn pump(&mut self, i: usize, phase: Phase) {
        let step = &self.m.steps[i];
        let limit = step
            .for_each
            .as_ref()
            .map_or(usize::MAX, |f| f.max_concurrency as usize);
        loop {
            let active = self
                .s
                .units
                .values()
                .filter(|u| u.status == UnitStatus::Active)
                .count();
            if active >= limit {
                break;
            }
            let mut pending = self
                .s
                .units
                .iter()
                .filter(|(_, u)| u.status == UnitStatus::Pending)
                .map(|(&k, _)| k);
            let next = match phase {
                Phase::Forward => pending.next(),
                Phase::Compensation => pending.next_back(),
            };
            let Some(u) = next else { break };
            self.start_attempt(i, Some(u), 1, phase);
        }
        let done = match phase {
            Phase::Forward => UnitStatus::Succeeded,
            Phase::Compensation => UnitStatus::Compensated,
        };
        if self.s.units.values().all(|u| u.status == done) {
            self.units_done(i, phase);
        }
    }

    fn units_done(&mut self, i: usize, phase: Phase) {
        let step = &self.m.steps[i];
        let name = step.name.clone();
        match phase {
            Phase::Forward => {
                let output = if step.branches.is_empty() {
                    Value::Array(self.s.units.values().map(|u| u.output.clone()).collect())
                } else {
                    let by_name: serde_json::Map<String, Value> = step
                        .branches
                        .iter()
                        .map(|b| {
                            let out = self.s.outputs.get(&b.name).cloned();
                            (b.name.clone(), out.unwrap_or(Value::Null))
                        })
                        .collect();
                    Value::Object(by_name)
                };
                self.emit(Event::StepSucceeded {
                    step: i,
                    index: None,
                    name,
                    attempt: 1,
                    output,
                    signal: None,
                    at: self.now,
                });
                self.go(Transition::Succeeded);
            }
            Phase::Compensation => {
                self.emit(Event::StepCompensated {
                    step: i,
                    index: None,
                    name,
                    attempt: 1,
                    output: Value::Null,
                    at: self.now,
                });
                self.compensation_done(i);
            }
        }
    }

    pub(super) fn unit_succeeded(
        &mut self,
        i: usize,
        u: u32,
        attempt: u32,
        phase: Phase,
        output: Value,
    ) {
        let name = self.m.steps[i].unit(Some(u)).name.clone();
        let e = match phase {
            Phase::Forward => Event::StepSucceeded {
                step: i,
                index: Some(u),
                name,
                attempt,
                output,
                signal: None,
                at: self.now,
            },
            Phase::Compensation => Event::StepCompensated {
                step: i,
                index: Some(u),
                name,
                attempt,
                output,
                at: self.now,
            },
        };
        self.emit(e);
        self.pump(i, phase);
    }

    /// Undoes the units of step `i`: if the saga stopped in it, those that
    /// succeeded and those whose outcome is unknown (in flight, timed out,
    /// retries exhausted); if it had completed, all of them.
    pub(super) fn compensate_units(&mut self, i: usize) {
        let step = &self.m.steps[i];
        let undoes = |u: u32| step.unit(Some(u)).compensation.is_some();
        let units: Vec<u32> = if self.s.at == Some(State::Running(i)) {
            self.s
                .units
                .iter()
                .filter(|(_, x)| match x.status {
                    UnitStatus::Succeeded | UnitStatus::Active => true,
                    UnitStatus::Failed(kind) => kind != FailureKind::Business,
                    UnitStatus::Pending | UnitStatus::Compensated => false,
                })
                .map(|(&k, _)| k)
                .filter(|&u| undoes(u))
                .collect()
        } else {
            let n = if step.branches.is_empty() {
                self.s.items.get(&i).map_or(0, Vec::len)
            } else {
                step.branches.len()
            };
            (0..n as u32).filter(|&u| undoes(u)).collect()
        };
        self.emit(Event::UnitsToCompensate {
            step: i,
            name: step.name.clone(),
            units,
            at: self.now,
        });
        self.pump(i, Phase::Compensation);
    }

    /// An operator retries a saga that failed in step `i`: the units that
    /// failed or were cut short start again, then the rest go on.
    pub(super) fn retry_units(&mut self, i: usize, phase: Phase) {
        let restart: Vec<(u32, u32)> = self
            .s
            .units
            .iter()
            .filter(|(_, u)| matches!(u.status, UnitStatus::Active | UnitStatus::Failed(_)))
            .map(|(&k, u)| (k, u.attempt))
            .collect();
        for (u, attempt) in restart {
            self.start_attempt(i, Some(u), attempt + 1, phase);
        }
        self.pump(i, phase);
    }
}

/// The data a unit's templates see: the saga's context, and for an element
/// of a for-each step its `.item` and `.index`.
pub fn unit_context<'a>(
    m: &'a crate::compile::Machine,
    instance: &'a str,
    s: &'a super::state::SagaState,
    step: usize,
    index: Option<u32>,
) -> Context<'a> {
    let ctx = template_context(m, instance, s);
    match (index, s.items.get(&step)) {
        (Some(u), Some(items)) => {
            let item = match items.get(u as usize) {
                Some(v) => Cow::Borrowed(v),
                None => Cow::Owned(Value::Null),
            };
            ctx.with([
                ("item", Root::Value(item)),
                ("index", Root::Value(Cow::Owned(json!(u)))),
            ])
        }
        _ => ctx,
    }
}
