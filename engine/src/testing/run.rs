//! Running one case: `decide` in a loop, every effect answered from the
//! case's `answers` as soon as it is asked for (in the order asked), and
//! when nothing is left to perform, time jumps to the next timer, signal or
//! cancel. Deterministic: the same case always gives the same run.

use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

use serde::Serialize;
use serde_json::{json, Value};

use super::{Answer, AnswerWord, Case, ExpectedEffect};
use crate::compile::{Action as StepAction, Machine};
use crate::dsl::spec::FailureKind;
use crate::saga::{self, Action, InFlight, Input, Phase, SagaState, Timestamp};

/// The instance id every case runs as.
const INSTANCE: &str = "00000000-0000-7000-8000-000000000000";
/// 2027-01-01T00:00:00Z: when every case starts.
const T0: Timestamp = Timestamp(1_798_761_600_000);
/// More decisions than this and the case is stopped (a retry loop without end).
const MAX_STEPS: usize = 100_000;

/// One attempt performed.
#[derive(Debug, Clone, Serialize)]
pub struct Performed {
    /// `pay`, `reserve_items[2]`, `undo pay`.
    pub effect: String,
    pub attempt: u32,
    /// The rendered request: `{method, url, headers, body}` or `{queue, input}`.
    pub request: Value,
}

/// How a case ran, and what in it differs from what it expects.
#[derive(Debug, Clone, Serialize)]
pub struct CaseOutcome {
    pub status: String,
    pub effects: Vec<Performed>,
    pub output: Option<Value>,
    pub error: Option<String>,
    /// Each difference from the expectation, readable; empty when it passed.
    pub problems: Vec<String>,
}

/// Runs `case` against `machine`; `Err` when the case itself is unusable
/// (its input breaks the workflow's schema, a duration does not parse).
pub fn run_case(machine: &Machine, case: &Case) -> Result<CaseOutcome, String> {
    if let Some(schema) = &machine.input_schema {
        let v = jsonschema::validator_for(schema).map_err(|e| e.to_string())?;
        let errors: Vec<String> = v.iter_errors(&case.input).map(|e| e.to_string()).collect();
        if !errors.is_empty() {
            return Err(format!(
                "the input does not satisfy the workflow's `input`: {}",
                errors.join("; ")
            ));
        }
    }
    let after = |text: &str| {
        humantime::parse_duration(text.trim())
            .map(|d| T0.plus(d))
            .map_err(|e| format!("`{text}` is not a duration: {e}"))
    };
    let mut world = World {
        m: machine,
        answers: &case.answers,
        st: SagaState::default(),
        now: T0,
        queue: VecDeque::new(),
        effects: Vec::new(),
    };
    world.apply(Input::Start {
        input: case.input.clone(),
        idempotency_key: None,
    });
    let mut signals: VecDeque<(Option<Timestamp>, &super::Signal)> = VecDeque::new();
    for s in &case.signals {
        signals.push_back((s.after.as_deref().map(after).transpose()?, s));
    }
    let mut cancel = case.cancel_after.as_deref().map(after).transpose()?;
    let mut stuck = None;
    for _ in 0..MAX_STEPS {
        if world.st.is_terminal() {
            break;
        }
        if let Some((f, answer)) = world.queue.pop_front() {
            if world.st.in_flight.contains(&f) {
                world.answered(f, answer);
            }
            continue;
        }
        // Idle: the world's next move, earliest first.
        if let Some(i) = signals.iter().position(|(at, _)| at.is_none()) {
            let (_, s) = signals.remove(i).expect("found");
            world.apply(Input::Signal {
                name: s.name.clone(),
                payload: s.payload.clone(),
            });
            continue;
        }
        let timer = world
            .st
            .timers
            .iter()
            .min_by_key(|(id, t)| (t.due, (*id).clone()))
            .map(|(id, t)| (t.due, id.clone()));
        let signal = signals
            .iter()
            .enumerate()
            .filter_map(|(i, (at, _))| at.map(|at| (at, i)))
            .min();
        let mut next: Vec<(Timestamp, u8)> = Vec::new();
        if let Some(at) = cancel {
            next.push((at, 0));
        }
        if let Some((at, _)) = signal {
            next.push((at, 1));
        }
        if let Some((due, _)) = &timer {
            next.push((*due, 2));
        }
        let Some(&(at, what)) = next.iter().min() else {
            stuck = Some(format!(
                "the instance stopped {} at {}: nothing is left to answer, no timer is pending (a signal that never comes?)",
                world.st.status(),
                world.where_()
            ));
            break;
        };
        world.now = world.now.max(at);
        match what {
            0 => {
                cancel = None;
                world.apply(Input::Cancel {
                    reason: Some("cancel_after".into()),
                });
            }
            1 => {
                let (_, i) = signal.expect("chosen");
                let (_, s) = signals.remove(i).expect("found");
                world.apply(Input::Signal {
                    name: s.name.clone(),
                    payload: s.payload.clone(),
                });
            }
            _ => {
                let (_, id) = timer.expect("chosen");
                world.apply(Input::TimerFired { timer: id });
            }
        }
    }
    if !world.st.is_terminal() && stuck.is_none() {
        stuck = Some(format!(
            "the instance did not end within {MAX_STEPS} decisions"
        ));
    }
    let mut outcome = CaseOutcome {
        status: world.st.status().to_string(),
        effects: world.effects,
        output: world.st.output.clone(),
        error: world.st.error.clone(),
        problems: Vec::new(),
    };
    outcome.problems = compare(case, &outcome);
    if let Some(s) = stuck {
        outcome.problems.insert(0, s);
    }
    Ok(outcome)
}

struct World<'a> {
    m: &'a Machine,
    answers: &'a BTreeMap<String, Vec<Answer>>,
    st: SagaState,
    now: Timestamp,
    /// Attempts performed and their answers, to be given in this order
    /// (`None`: it never answers).
    queue: VecDeque<(InFlight, Outcome)>,
    effects: Vec<Performed>,
}

/// What an attempt comes to: its output, or a failure.
type Outcome = Result<Value, (FailureKind, String)>;

impl World<'_> {
    fn apply(&mut self, input: Input) {
        // a refused input (e.g. a signal after the end) changes nothing
        if let Ok((d, next)) = saga::decide_to(self.m, INSTANCE, &self.st, input, self.now) {
            self.st = next;
            // each attempt goes out as soon as its event is recorded; the
            // answers come back afterwards, in the order they went out
            for a in d.actions {
                if let Action::Perform {
                    step,
                    index,
                    attempt,
                    phase,
                } = a
                {
                    let f = InFlight {
                        step,
                        index,
                        attempt,
                        phase,
                    };
                    if let Some(answer) = self.perform(f) {
                        self.queue.push_back((f, answer));
                    }
                }
            }
        }
    }

    fn where_(&self) -> String {
        self.st.current_step().map_or("its start".into(), |i| {
            format!("`{}`", self.m.steps[i].name)
        })
    }

    /// Performs an attempt: renders and records its request; its answer
    /// (`None` when it never answers, or for a wait).
    fn perform(&mut self, f: InFlight) -> Option<Outcome> {
        let group = &self.m.steps[f.step];
        let unit = group.unit(f.index);
        let action = match f.phase {
            Phase::Forward => &unit.action,
            Phase::Compensation => unit.compensation.as_ref()?,
        };
        let element = f.index.filter(|_| group.for_each.is_some());
        let name = match element {
            Some(i) => format!("{}[{i}]", unit.name),
            None => unit.name.clone(),
        };
        let undo = if f.phase == Phase::Compensation {
            "undo "
        } else {
            ""
        };
        let effect = format!("{undo}{name}");
        let ctx = saga::unit_context(self.m, INSTANCE, &self.st, f.step, f.index);
        let key = unit.effect_key(INSTANCE, element, f.phase == Phase::Compensation, f.attempt);
        let rendered = match action {
            StepAction::Http(call) => crate::runtime::http::render(
                call,
                &ctx,
                unit.timeout.unwrap_or(Duration::from_secs(30)),
                key,
                f.attempt,
            )
            .map(|r| {
                json!({
                    "method": r.method,
                    "url": r.url,
                    "headers": r.headers.into_iter().collect::<BTreeMap<_, _>>(),
                    "body": r.body,
                })
            })
            .map_err(|o| match o {
                crate::runtime::http::Outcome::Failed(kind, error) => (kind, error),
                crate::runtime::http::Outcome::Succeeded(_) => {
                    (FailureKind::Business, "template".into())
                }
            }),
            StepAction::Task(call) => match &call.input {
                Some(t) => t.render(&ctx),
                None => Ok(Value::clone(&self.st.input)),
            }
            .map(|input| json!({"queue": call.queue, "input": input}))
            .map_err(|e| (FailureKind::Business, format!("template: {e}"))),
            StepAction::Wait(_) | StepAction::Parallel => return None,
        };
        let request = match rendered {
            Ok(r) => r,
            // a template that fails is the attempt's failure
            Err(failure) => return Some(Err(failure)),
        };
        self.effects.push(Performed {
            effect: effect.clone(),
            attempt: f.attempt,
            request,
        });
        let answers = self.answers;
        let given = answers
            .get(&effect)
            .or_else(|| element.and_then(|_| answers.get(&format!("{undo}{}", unit.name))));
        let answer = given.and_then(|list| {
            list.get(f.attempt.saturating_sub(1) as usize)
                .or_else(|| list.last())
        });
        let retryable_status: &[u16] = match action {
            StepAction::Http(call) => &call.retryable_status,
            _ => &[],
        };
        Some(match answer {
            None | Some(Answer::Word(AnswerWord::Ok)) => Ok(json!({})),
            Some(Answer::Word(AnswerWord::Timeout)) => return None, // its timer decides
            Some(Answer::Http(h)) if (200..300).contains(&h.status) => {
                Ok(h.body.clone().unwrap_or(Value::Null))
            }
            Some(Answer::Http(h)) => {
                let transient = retryable_status.contains(&h.status) || h.status >= 500;
                // as the server classifies an answer (`runtime::http`): a
                // redirect is not followed, and fails like a 4xx
                let kind = if transient || h.status < 300 {
                    FailureKind::Transient
                } else {
                    FailureKind::Business
                };
                let body = h.body.as_ref().map_or(String::new(), Value::to_string);
                Err((kind, format!("HTTP {}: {body}", h.status)))
            }
            Some(Answer::Complete(c)) => Ok(c.complete.clone()),
            Some(Answer::Fail(fail)) => {
                let kind = if fail.retryable {
                    FailureKind::Transient
                } else {
                    FailureKind::Business
                };
                Err((kind, fail.fail.clone()))
            }
        })
    }

    fn answered(&mut self, f: InFlight, result: Outcome) {
        self.apply(Input::answer(f, result));
    }
}

/// What in the outcome differs from the case's expectation.
fn compare(case: &Case, got: &CaseOutcome) -> Vec<String> {
    let want = &case.expect;
    let mut problems = Vec::new();
    if want.status != got.status {
        problems.push(format!(
            "status: expected {}, got {}{}",
            want.status,
            got.status,
            got.error
                .as_deref()
                .map_or(String::new(), |e| format!(" ({e})"))
        ));
    }
    if let Some(effects) = &want.effects {
        let names: Vec<&str> = effects
            .iter()
            .map(|e| match e {
                ExpectedEffect::Name(n) => n.as_str(),
                ExpectedEffect::Detailed(d) => d.effect.as_str(),
            })
            .collect();
        let actual: Vec<&str> = got.effects.iter().map(|p| p.effect.as_str()).collect();
        if names != actual {
            problems.push(format!(
                "effects differ (- expected, + performed):\n{}",
                diff(&names, &actual)
            ));
        } else {
            for (i, (e, p)) in effects.iter().zip(&got.effects).enumerate() {
                if let ExpectedEffect::Detailed(d) = e {
                    if let Some(req) = &d.request {
                        if let Some(at) = mismatch(req, &p.request, "request") {
                            problems.push(format!("effects[{i}] ({}): {at}", p.effect));
                        }
                    }
                }
            }
        }
    }
    if let Some(output) = &want.output {
        if got.output.as_ref() != Some(output) {
            let pretty = |v: Option<&Value>| {
                serde_json::to_string_pretty(&v.cloned().unwrap_or(Value::Null)).unwrap_or_default()
            };
            let (a, b) = (pretty(Some(output)), pretty(got.output.as_ref()));
            let a: Vec<&str> = a.lines().collect();
            let b: Vec<&str> = b.lines().collect();
            problems.push(format!(
                "output differs (- expected, + got):\n{}",
                diff(&a, &b)
            ));
        }
    }
    if let Some(text) = &want.error {
        if !got
            .error
            .as_deref()
            .is_some_and(|e| e.contains(text.as_str()))
        {
            problems.push(format!(
                "error: expected it to contain {text:?}, got {:?}",
                got.error.as_deref().unwrap_or("none")
            ));
        }
    }
    problems
}

/// A line diff: ` ` same, `-` only expected, `+` only actual.
fn diff(expected: &[&str], actual: &[&str]) -> String {
    let ops = similar::capture_diff_slices(similar::Algorithm::Myers, expected, actual);
    let mut out = String::new();
    for op in ops {
        for change in op.iter_changes(expected, actual) {
            let sign = match change.tag() {
                similar::ChangeTag::Equal => ' ',
                similar::ChangeTag::Delete => '-',
                similar::ChangeTag::Insert => '+',
            };
            out.push_str(&format!("    {sign} {}\n", change.value()));
        }
    }
    out.trim_end().to_string()
}

/// Where `got` does not have what `want` asks for (objects: the keys given).
fn mismatch(want: &Value, got: &Value, at: &str) -> Option<String> {
    match (want, got) {
        (Value::Object(w), Value::Object(g)) => w.iter().find_map(|(k, v)| {
            let here = format!("{at}.{k}");
            match g.get(k) {
                Some(gv) => mismatch(v, gv, &here),
                None => Some(format!("{here}: expected {v}, got nothing")),
            }
        }),
        _ if want == got => None,
        _ => Some(format!("{at}: expected {want}, got {got}")),
    }
}
