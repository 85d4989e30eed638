//! given(events).when(input).then(events, actions) tests of the core.

use serde_json::json;

use super::*;
use crate::compile::{check, Machine, State};
use crate::dsl::spec::FailureKind;

pub(super) const ORDER: &str = include_str!("../../../workflows/order.yaml");
const APPROVAL: &str = include_str!("../../../workflows/refund-approval.yaml");
pub(super) const ID: &str = "0190d7a4-0000-7000-8000-000000000001";
pub(super) const T0: Timestamp = Timestamp(1_800_000_000_000);

/// Compiled once per test thread: compiling templates is the slow part.
pub(super) fn machine(text: &'static str) -> Machine {
    thread_local! {
        static CACHE: std::cell::RefCell<std::collections::HashMap<&'static str, Machine>> = Default::default();
    }
    CACHE.with(|c| {
        c.borrow_mut()
            .entry(text)
            .or_insert_with(|| check(text).machine.expect("valid workflow"))
            .clone()
    })
}

fn order_input(amount: f64) -> serde_json::Value {
    json!({"order_id": "o-1", "customer_id": "c-1", "items": [{"sku": "a", "qty": 1}], "amount": amount})
}

/// A saga under test: its machine, its history, and the clock.
pub(super) struct Saga {
    pub(super) m: Machine,
    pub(super) events: Vec<Event>,
    pub(super) now: Timestamp,
}

impl Saga {
    pub(super) fn given(text: &'static str) -> Self {
        Self {
            m: machine(text),
            events: Vec::new(),
            now: T0,
        }
    }

    pub(super) fn state(&self) -> SagaState {
        fold(&self.events)
    }

    /// Decides and appends; returns the decision.
    pub(super) fn when(&mut self, input: Input) -> Result<Decision, Rejection> {
        let d = decide(&self.m, ID, &self.state(), input, self.now)?;
        self.events.extend(d.events.iter().cloned());
        Ok(d)
    }

    pub(super) fn ok(&mut self, input: Input) -> Decision {
        self.when(input).expect("accepted")
    }

    pub(super) fn start(mut self, input: serde_json::Value) -> Self {
        self.ok(Input::Start {
            input,
            idempotency_key: Some("k".into()),
        });
        self
    }

    pub(super) fn succeed(
        &mut self,
        step: usize,
        phase: Phase,
        output: serde_json::Value,
    ) -> Decision {
        let attempt = self.state().attempt;
        self.ok(Input::Succeeded {
            step,
            index: None,
            attempt,
            phase,
            output,
        })
    }

    pub(super) fn fail(&mut self, step: usize, phase: Phase, kind: FailureKind) -> Decision {
        let attempt = self.state().attempt;
        self.ok(Input::Failed {
            step,
            index: None,
            attempt,
            phase,
            kind,
            error: "boom".into(),
        })
    }

    pub(super) fn fire(&mut self, timer: &str) -> Decision {
        let due = self
            .state()
            .timers
            .get(timer)
            .map(|t| t.due)
            .expect("timer pending");
        self.now = due;
        self.ok(Input::TimerFired {
            timer: timer.into(),
        })
    }

    pub(super) fn status(&self) -> &'static str {
        self.state().status()
    }
}

pub(super) fn types(events: &[Event]) -> Vec<&'static str> {
    events.iter().map(Event::type_name).collect()
}

#[test]
fn start_records_the_start_and_performs_the_first_step() {
    let mut s = Saga::given(ORDER);
    let d = s.ok(Input::Start {
        input: order_input(10.0),
        idempotency_key: Some("k".into()),
    });
    assert_eq!(types(&d.events), ["SagaStarted", "StepStarted"]);
    assert!(
        matches!(&d.events[0], Event::SagaStarted { deadline: Some(t), .. } if *t == T0.plus(std::time::Duration::from_secs(600)))
    );
    assert_eq!(
        d.actions,
        vec![
            Action::ArmTimer {
                timer: "deadline".into(),
                due: T0.plus(std::time::Duration::from_secs(600))
            },
            Action::ArmTimer {
                timer: "timeout:0:f:1".into(),
                due: T0.plus(std::time::Duration::from_secs(5))
            },
            Action::Perform {
                step: 0,
                index: None,
                attempt: 1,
                phase: Phase::Forward
            },
        ]
    );
    // the start and the attempt arm their timers themselves (version 3)
    assert!(
        matches!(&d.events[1], Event::StepStarted { timeout_due: Some(t), .. } if *t == T0.plus(std::time::Duration::from_secs(5)))
    );
    let timers: Vec<String> = s.state().timers.keys().cloned().collect();
    assert_eq!(timers, ["deadline", "timeout:0:f:1"]);
    assert_eq!(s.status(), "running");
    assert_eq!(
        s.when(Input::Start {
            input: json!({}),
            idempotency_key: None
        }),
        Err(Rejection::AlreadyStarted)
    );
}

#[test]
fn the_happy_path_completes_with_the_output_template() {
    let mut s = Saga::given(ORDER).start(order_input(10.0));
    s.succeed(0, Phase::Forward, json!({"reservation_id": "r-1"}));
    s.succeed(1, Phase::Forward, json!({"payment_id": "p-1"}));
    let d = s.succeed(2, Phase::Forward, json!({"shipment_id": "s-1"}));
    assert_eq!(types(&d.events), ["StepSucceeded", "SagaCompleted"]);
    assert_eq!(d.actions, vec![Action::Finished]);
    let st = s.state();
    assert_eq!(st.status(), "completed");
    assert_eq!(
        st.output,
        Some(
            json!({"order_id": "o-1", "reservation_id": "r-1", "payment_id": "p-1", "shipment_id": "s-1"})
        )
    );
    assert!(
        st.timers.is_empty(),
        "the deadline and timeouts are moot: {:?}",
        st.timers
    );
}

#[test]
fn a_declined_payment_releases_the_reservation_only() {
    let mut s = Saga::given(ORDER).start(order_input(5000.0));
    s.succeed(0, Phase::Forward, json!({"reservation_id": "r-1"}));
    let d = s.fail(1, Phase::Forward, FailureKind::Business);
    assert_eq!(
        types(&d.events),
        ["StepFailed", "CompensationStarted", "StepStarted"]
    );
    assert!(matches!(
        d.events[0],
        Event::StepFailed {
            retryable: false,
            ..
        }
    ));
    assert!(matches!(
        d.events[1],
        Event::CompensationStarted {
            reason: CompensationReason::Failure,
            step: 1,
            ..
        }
    ));
    assert_eq!(
        d.actions.last(),
        Some(&Action::Perform {
            step: 0,
            index: None,
            attempt: 1,
            phase: Phase::Compensation
        })
    );
    assert_eq!(s.status(), "compensating");
    let d = s.succeed(0, Phase::Compensation, json!({}));
    assert_eq!(types(&d.events), ["StepCompensated", "SagaCompensated"]);
    assert_eq!(s.status(), "compensated");
}

#[test]
fn transient_failures_retry_after_a_backoff_then_give_up() {
    let mut s = Saga::given(ORDER).start(order_input(10.0));
    let d = s.fail(0, Phase::Forward, FailureKind::Transient);
    assert_eq!(types(&d.events), ["StepFailed", "RetryScheduled"]);
    let Event::RetryScheduled {
        due, attempt: 2, ..
    } = d.events[1]
    else {
        panic!("{:?}", d.events[1])
    };
    // 100 ms initial backoff with 20% jitter
    assert!(
        due >= T0.plus(std::time::Duration::from_millis(80))
            && due <= T0.plus(std::time::Duration::from_millis(100)),
        "{due:?}"
    );
    assert!(s.state().in_flight.is_empty());
    let d = s.fire("backoff:0:f:2");
    assert_eq!(types(&d.events), ["TimerFired", "StepStarted"]);
    assert_eq!(
        d.actions.last(),
        Some(&Action::Perform {
            step: 0,
            index: None,
            attempt: 2,
            phase: Phase::Forward
        })
    );
    s.fail(0, Phase::Forward, FailureKind::Transient);
    s.fire("backoff:0:f:3");
    // the third and last attempt: the outcome is unknown, and reserve has a compensation, so it is undone
    let d = s.fail(0, Phase::Forward, FailureKind::Transient);
    assert_eq!(
        types(&d.events),
        ["StepFailed", "CompensationStarted", "StepStarted"]
    );
    assert_eq!(
        d.actions.last(),
        Some(&Action::Perform {
            step: 0,
            index: None,
            attempt: 1,
            phase: Phase::Compensation
        })
    );
}

#[test]
fn a_timeout_fails_the_attempt_and_a_late_answer_is_ignored() {
    let mut s = Saga::given(ORDER).start(order_input(10.0));
    s.succeed(0, Phase::Forward, json!({"reservation_id": "r-1"}));
    let d = s.fire("timeout:1:f:1");
    assert_eq!(
        types(&d.events),
        ["TimerFired", "StepFailed", "RetryScheduled"]
    );
    assert!(
        matches!(&d.events[1], Event::StepFailed { kind: FailureKind::Timeout, error, .. } if error == "pay: timed out after 5s")
    );
    // the first attempt answers after all: too late, nothing happens
    let late = s.ok(Input::Succeeded {
        step: 1,
        index: None,
        attempt: 1,
        phase: Phase::Forward,
        output: json!({}),
    });
    assert_eq!(late, Decision::default());
    // and a timer that already fired fires no more
    assert_eq!(
        s.ok(Input::TimerFired {
            timer: "timeout:1:f:1".into()
        }),
        Decision::default()
    );
}

#[test]
fn a_success_makes_its_timeout_moot() {
    let mut s = Saga::given(ORDER).start(order_input(10.0));
    s.succeed(0, Phase::Forward, json!({}));
    assert!(!s.state().timers.contains_key("timeout:0:f:1"));
    assert_eq!(
        s.ok(Input::TimerFired {
            timer: "timeout:0:f:1".into()
        }),
        Decision::default()
    );
}

#[test]
fn pay_timing_out_for_good_refunds_it_too() {
    let mut s = Saga::given(ORDER).start(order_input(10.0));
    s.succeed(0, Phase::Forward, json!({}));
    for attempt in 1..=3 {
        s.fire(&format!("timeout:1:f:{attempt}"));
        if attempt < 3 {
            s.fire(&format!("backoff:1:f:{}", attempt + 1));
        }
    }
    assert_eq!(
        s.state().at,
        Some(State::Compensating(1)),
        "refund first, then release"
    );
    s.succeed(1, Phase::Compensation, json!({}));
    assert_eq!(s.state().at, Some(State::Compensating(0)));
    s.succeed(0, Phase::Compensation, json!({}));
    assert_eq!(s.status(), "compensated");
}

#[test]
fn cancel_compensates_and_ends_cancelled() {
    let mut s = Saga::given(ORDER).start(order_input(10.0));
    s.succeed(0, Phase::Forward, json!({}));
    let d = s.ok(Input::Cancel {
        reason: Some("customer asked".into()),
    });
    assert_eq!(
        types(&d.events),
        ["CancelRequested", "CompensationStarted", "StepStarted"]
    );
    assert_eq!(
        s.state().at,
        Some(State::Compensating(1)),
        "pay was in flight: refund it too"
    );
    assert_eq!(
        s.ok(Input::Cancel { reason: None }),
        Decision::default(),
        "a second cancel changes nothing"
    );
    s.succeed(1, Phase::Compensation, json!({}));
    let d = s.succeed(0, Phase::Compensation, json!({}));
    assert_eq!(types(&d.events), ["StepCompensated", "SagaCancelled"]);
    assert_eq!(s.status(), "cancelled");
    assert_eq!(
        s.when(Input::Cancel { reason: None }),
        Err(Rejection::Finished("cancelled"))
    );
    assert_eq!(
        s.when(Input::Signal {
            name: "x".into(),
            payload: json!(1)
        }),
        Err(Rejection::Finished("cancelled"))
    );
}

#[test]
fn cancel_is_refused_once_the_pivot_started() {
    let mut s = Saga::given(ORDER).start(order_input(10.0));
    s.succeed(0, Phase::Forward, json!({}));
    s.succeed(1, Phase::Forward, json!({}));
    assert_eq!(
        s.when(Input::Cancel { reason: None }),
        Err(Rejection::PastPivot)
    );
    assert_eq!(s.status(), "running");
}

#[test]
fn cancel_during_compensation_after_a_failure_is_refused() {
    let mut s = Saga::given(ORDER).start(order_input(10.0));
    s.succeed(0, Phase::Forward, json!({}));
    s.fail(1, Phase::Forward, FailureKind::Business);
    assert_eq!(
        s.when(Input::Cancel { reason: None }),
        Err(Rejection::Compensating("failure"))
    );
}

#[test]
fn the_deadline_compensates_like_a_failure() {
    let mut s = Saga::given(ORDER).start(order_input(10.0));
    s.succeed(0, Phase::Forward, json!({}));
    let d = s.fire("deadline");
    assert_eq!(
        types(&d.events),
        ["TimerFired", "CompensationStarted", "StepStarted"]
    );
    assert!(matches!(
        d.events[1],
        Event::CompensationStarted {
            reason: CompensationReason::Deadline,
            step: 1,
            ..
        }
    ));
    s.succeed(1, Phase::Compensation, json!({}));
    s.succeed(0, Phase::Compensation, json!({}));
    assert_eq!(s.status(), "compensated");
    assert_eq!(
        s.state().error.as_deref(),
        Some("the saga's deadline passed")
    );
}

#[test]
fn an_operator_can_extend_a_deadline_and_fire_a_wait_now() {
    let mut s = Saga::given(ORDER).start(order_input(10.0));
    let later = T0.plus(std::time::Duration::from_secs(3600));
    let d = s.ok(Input::MoveTimer {
        timer: "deadline".into(),
        due: later,
    });
    assert_eq!(types(&d.events), ["TimerMoved"]);
    assert_eq!(
        d.actions,
        vec![Action::ArmTimer {
            timer: "deadline".into(),
            due: later
        }]
    );
    // the old due time comes: nothing happens
    s.now = T0.plus(std::time::Duration::from_secs(600));
    assert_eq!(
        s.ok(Input::TimerFired {
            timer: "deadline".into()
        }),
        Decision::default()
    );
    assert_eq!(
        s.when(Input::MoveTimer {
            timer: "nope".into(),
            due: later
        }),
        Err(Rejection::NoSuchTimer("nope".into()))
    );

    let mut w =
        Saga::given(APPROVAL).start(json!({"refund_id": "r", "customer_id": "c", "amount": 5}));
    w.succeed(0, Phase::Forward, json!({"hold_id": "h"}));
    let d = w.ok(Input::MoveTimer {
        timer: "wait-timeout:1".into(),
        due: T0,
    });
    assert_eq!(
        types(&d.events)[..3],
        ["TimerMoved", "TimerFired", "StepFailed"]
    );
    assert_eq!(w.status(), "compensating");
}

#[test]
fn a_signal_completes_the_wait_and_its_payload_is_the_output() {
    let mut s =
        Saga::given(APPROVAL).start(json!({"refund_id": "r", "customer_id": "c", "amount": 5}));
    s.succeed(0, Phase::Forward, json!({"hold_id": "h-1"}));
    assert_eq!(s.status(), "waiting");
    assert!(s.state().timers.contains_key("wait-timeout:1"));
    let d = s.ok(Input::Signal {
        name: "approval".into(),
        payload: json!({"approved_by": "kim"}),
    });
    assert_eq!(
        types(&d.events),
        ["SignalReceived", "StepSucceeded", "StepStarted"]
    );
    assert_eq!(s.state().outputs["approval"], json!({"approved_by": "kim"}));
    assert!(!s.state().timers.contains_key("wait-timeout:1"));
    assert_eq!(s.state().at, Some(State::Running(2)));
}

#[test]
fn an_early_signal_waits_for_its_step() {
    let mut s =
        Saga::given(APPROVAL).start(json!({"refund_id": "r", "customer_id": "c", "amount": 5}));
    let d = s.ok(Input::Signal {
        name: "approval".into(),
        payload: json!({"approved_by": "early"}),
    });
    assert_eq!(types(&d.events), ["SignalReceived"]);
    let d = s.succeed(0, Phase::Forward, json!({"hold_id": "h-1"}));
    assert_eq!(
        types(&d.events),
        [
            "StepSucceeded",
            "StepStarted",
            "StepSucceeded",
            "StepStarted"
        ]
    );
    assert_eq!(
        s.state().outputs["approval"],
        json!({"approved_by": "early"})
    );
    assert!(s.state().signals.is_empty());
}

#[test]
fn an_approval_that_never_comes_releases_the_hold() {
    let mut s =
        Saga::given(APPROVAL).start(json!({"refund_id": "r", "customer_id": "c", "amount": 5}));
    s.succeed(0, Phase::Forward, json!({"hold_id": "h-1"}));
    let d = s.fire("wait-timeout:1");
    assert_eq!(
        types(&d.events),
        [
            "TimerFired",
            "StepFailed",
            "CompensationStarted",
            "StepStarted"
        ]
    );
    assert_eq!(s.state().at, Some(State::Compensating(0)));
    s.succeed(0, Phase::Compensation, json!({}));
    assert_eq!(s.status(), "compensated");
}

#[test]
fn after_the_pivot_a_step_retries_without_end() {
    let mut s =
        Saga::given(APPROVAL).start(json!({"refund_id": "r", "customer_id": "c", "amount": 5}));
    s.succeed(0, Phase::Forward, json!({"hold_id": "h-1"}));
    s.ok(Input::Signal {
        name: "approval".into(),
        payload: json!({}),
    });
    s.succeed(2, Phase::Forward, json!({}));
    for attempt in 1..50u32 {
        let d = s.fail(3, Phase::Forward, FailureKind::Transient);
        assert_eq!(
            types(&d.events),
            ["StepFailed", "RetryScheduled"],
            "attempt {attempt}"
        );
        s.fire(&format!("backoff:3:f:{}", attempt + 1));
    }
    // the backoff is capped at 5m (minus jitter)
    let d = s.fail(3, Phase::Forward, FailureKind::Transient);
    let Event::RetryScheduled { due, .. } = d.events[1] else {
        panic!()
    };
    assert!(s.now.until(due) <= std::time::Duration::from_secs(300));
    let d = s.fail(3, Phase::Forward, FailureKind::Business);
    assert_eq!(d, Decision::default(), "stale: that attempt already failed");
}

#[test]
fn a_compensation_that_keeps_failing_needs_an_operator() {
    let mut s = Saga::given(ORDER).start(order_input(10.0));
    s.succeed(0, Phase::Forward, json!({}));
    s.fail(1, Phase::Forward, FailureKind::Business);
    s.fail(0, Phase::Compensation, FailureKind::Transient);
    s.fire("backoff:0:c:2");
    s.fail(0, Phase::Compensation, FailureKind::Transient);
    s.fire("backoff:0:c:3");
    let d = s.fail(0, Phase::Compensation, FailureKind::Transient);
    assert_eq!(types(&d.events), ["CompensationFailed", "SagaFailed"]);
    assert_eq!(s.status(), "failed");
    assert!(s.state().error.unwrap().contains("reserve: boom"));
}

#[test]
fn resume_reissues_the_attempt_in_flight_with_its_number() {
    let mut s = Saga::given(ORDER).start(order_input(10.0));
    s.fail(0, Phase::Forward, FailureKind::Transient);
    s.fire("backoff:0:f:2");
    let actions = resume(&s.state());
    assert!(actions.contains(&Action::Perform {
        step: 0,
        index: None,
        attempt: 2,
        phase: Phase::Forward
    }));
    assert!(actions
        .iter()
        .any(|a| matches!(a, Action::ArmTimer { timer, .. } if timer == "deadline")));
    assert!(actions
        .iter()
        .any(|a| matches!(a, Action::ArmTimer { timer, .. } if timer == "timeout:0:f:2")));
}

#[test]
fn events_round_trip_through_their_stored_form() {
    let mut s = Saga::given(ORDER).start(order_input(10.0));
    s.succeed(0, Phase::Forward, json!({"reservation_id": "r-1"}));
    s.fail(1, Phase::Forward, FailureKind::Business);
    for e in &s.events {
        let back = Event::from_stored(e.type_name(), SCHEMA_VERSION, e.data()).unwrap();
        assert_eq!(&back, e);
        let borrowed = Event::from_stored_ref(e.type_name(), SCHEMA_VERSION, &e.data());
        assert_eq!(&borrowed.unwrap(), e);
        let older = Event::from_stored_ref(e.type_name(), SCHEMA_VERSION - 1, &e.data());
        assert_eq!(&older.unwrap(), e);
    }
    assert!(matches!(
        Event::from_stored_ref("SagaStarted", 1, &json!({"workflow": 5})),
        Err(EventError::Decode { .. })
    ));
    assert!(matches!(
        Event::from_stored_ref("SagaExploded", SCHEMA_VERSION, &json!({})),
        Err(EventError::UnknownType(_))
    ));
    assert!(matches!(
        Event::from_stored("SagaStarted", 99, json!({})),
        Err(EventError::TooNew(..))
    ));
    assert!(matches!(
        Event::from_stored("SagaExploded", 1, json!({})),
        Err(EventError::UnknownType(_))
    ));
}

mod properties {
    use super::*;
    use proptest::prelude::*;

    #[derive(Debug, Clone, Copy)]
    enum Outcome {
        Ok,
        Business,
        Transient,
        Timeout,
    }

    fn outcome() -> impl Strategy<Value = Outcome> {
        prop_oneof![4 => Just(Outcome::Ok), 1 => Just(Outcome::Business), 1 => Just(Outcome::Transient), 1 => Just(Outcome::Timeout)]
    }

    /// Runs a saga to its end, answering each attempt from `outcomes` (then
    /// always Ok), optionally cancelling or passing the deadline after `interrupt_at` answers.
    fn run(
        text: &'static str,
        input: serde_json::Value,
        outcomes: &[Outcome],
        interrupt_at: Option<(usize, bool)>,
    ) -> Vec<Event> {
        let mut s = Saga::given(text).start(input);
        let mut answered = 0;
        for _ in 0..500 {
            let st = s.state();
            if st.is_terminal() {
                return s.events;
            }
            if let Some((n, cancel)) = interrupt_at {
                if answered == n {
                    answered += 1;
                    if cancel {
                        let _ = s.when(Input::Cancel { reason: None });
                    } else if st.timers.contains_key("deadline") {
                        s.fire("deadline");
                    }
                    continue;
                }
            }
            if let Some(&f) = st.in_flight.first() {
                let o = outcomes.get(answered).copied().unwrap_or(Outcome::Ok);
                answered += 1;
                match o {
                    Outcome::Ok => s.succeed(f.step, f.phase, json!({"n": answered})),
                    Outcome::Business => s.fail(f.step, f.phase, FailureKind::Business),
                    Outcome::Transient => s.fail(f.step, f.phase, FailureKind::Transient),
                    Outcome::Timeout => match st
                        .timers
                        .keys()
                        .find(|k| k.starts_with("timeout:"))
                        .cloned()
                    {
                        Some(t) => s.fire(&t),
                        None => s.fail(f.step, f.phase, FailureKind::Timeout),
                    },
                };
            } else if let Some((id, _)) = st
                .timers
                .iter()
                .filter(|(k, _)| k.as_str() != "deadline")
                .min_by_key(|(_, t)| t.due)
            {
                let id = id.clone();
                s.fire(&id);
            } else if let Some(State::Waiting(_)) = st.at {
                s.ok(Input::Signal {
                    name: "approval".into(),
                    payload: json!({}),
                });
            } else {
                panic!("stuck in {:?} with {:?}", st.at, st.timers);
            }
        }
        panic!("did not terminate: {:?}", types(&s.events));
    }

    fn check_invariants(m: &Machine, events: &[Event]) -> Result<(), TestCaseError> {
        // nothing happens after an end, and there is exactly one end
        let end = events.iter().position(Event::is_terminal);
        prop_assert_eq!(end, Some(events.len() - 1), "{:?}", types(events));
        let Some(start) = events
            .iter()
            .position(|e| matches!(e, Event::CompensationStarted { .. }))
        else {
            let compensated = events
                .iter()
                .any(|e| matches!(e, Event::StepCompensated { .. }));
            prop_assert!(!compensated, "compensated without CompensationStarted");
            return Ok(());
        };
        let Event::CompensationStarted { step: failed, .. } = events[start] else {
            unreachable!()
        };
        let business = matches!(
            events[..start].last(),
            Some(Event::StepFailed {
                kind: FailureKind::Business,
                ..
            })
        );
        // what must be undone: steps that succeeded, and the interrupted one unless it said "no"
        let mut expected: Vec<usize> = (0..m.steps.len())
            .filter(|&i| m.steps[i].compensation.is_some())
            .filter(|&i| {
                let succeeded = events[..start]
                    .iter()
                    .any(|e| matches!(e, Event::StepSucceeded { step, .. } if *step == i));
                succeeded || (i == failed && !business)
            })
            .collect();
        expected.reverse();
        let undone: Vec<usize> = events[start..]
            .iter()
            .filter_map(|e| match e {
                Event::StepCompensated { step, .. } => Some(*step),
                _ => None,
            })
            .collect();
        let gave_up = matches!(events.last(), Some(Event::SagaFailed { .. }));
        if gave_up {
            prop_assert!(
                expected.starts_with(&undone),
                "undone {:?} must be a prefix of {:?}",
                undone,
                expected
            );
        } else {
            prop_assert_eq!(undone, expected, "{:?}", types(events));
        }
        // no forward step runs once compensation has started
        let forward_after = events[start..].iter().any(|e| {
            matches!(
                e,
                Event::StepStarted {
                    phase: Phase::Forward,
                    ..
                }
            )
        });
        prop_assert!(
            !forward_after,
            "a forward step started during compensation: {:?}",
            types(events)
        );
        Ok(())
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 400, ..ProptestConfig::default() })]

        #[test]
        fn order_sagas_compensate_exactly_what_they_did(outcomes in proptest::collection::vec(outcome(), 0..12)) {
            let m = machine(ORDER);
            let events = run(ORDER, order_input(10.0), &outcomes, None);
            check_invariants(&m, &events)?;
        }

        #[test]
        fn cancels_and_deadlines_compensate_the_same_way(outcomes in proptest::collection::vec(outcome(), 0..8), at in 0usize..6, cancel in any::<bool>()) {
            let m = machine(ORDER);
            let events = run(ORDER, order_input(10.0), &outcomes, Some((at, cancel)));
            check_invariants(&m, &events)?;
            if let Some(Event::CompensationStarted { reason, .. }) = events.iter().find(|e| matches!(e, Event::CompensationStarted { .. })) {
                let last = events.last().unwrap();
                let fits = match reason {
                    CompensationReason::Cancel => matches!(last, Event::SagaCancelled { .. } | Event::SagaFailed { .. }),
                    _ => matches!(last, Event::SagaCompensated { .. } | Event::SagaFailed { .. }),
                };
                prop_assert!(fits, "{:?} ended with {:?}", reason, last.type_name());
            }
        }

        #[test]
        fn sagas_with_waits_and_pivots_terminate(outcomes in proptest::collection::vec(outcome(), 0..12)) {
            let m = machine(APPROVAL);
            let events = run(APPROVAL, json!({"refund_id": "r", "customer_id": "c", "amount": 5}), &outcomes, None);
            check_invariants(&m, &events)?;
        }
    }
}

#[test]
fn decide_to_returns_the_state_its_events_fold_into() {
    let m = machine(ORDER);
    let mut st = SagaState::default();
    let mut events = Vec::new();
    let inputs = [
        Input::Start {
            input: order_input(10.0),
            idempotency_key: None,
        },
        Input::Succeeded {
            step: 0,
            index: None,
            attempt: 1,
            phase: Phase::Forward,
            output: json!({"reservation_id": "r"}),
        },
        Input::Failed {
            step: 1,
            index: None,
            attempt: 1,
            phase: Phase::Forward,
            kind: FailureKind::Business,
            error: "no".into(),
        },
        Input::Failed {
            step: 0,
            index: None,
            attempt: 1,
            phase: Phase::Compensation,
            kind: FailureKind::Business,
            error: "stuck".into(),
        },
    ];
    for input in inputs {
        let (d, next) = decide_to(&m, ID, &st, input, T0).unwrap();
        events.extend(d.events);
        assert_eq!(next, fold(&events));
        st = next;
    }
    assert_eq!(st.status(), "failed");
}

#[test]
fn a_paused_saga_holds_its_next_attempt_until_it_resumes() {
    let mut s = Saga::given(ORDER).start(order_input(10.0));
    let d = s.ok(Input::Pause {
        reason: Some("supplier outage".into()),
    });
    assert_eq!(types(&d.events), ["SagaPaused"]);
    assert!(
        s.ok(Input::Pause { reason: None }).events.is_empty(),
        "pausing twice changes nothing"
    );
    // the attempt in flight finishes and is recorded; the next one is held
    let d = s.succeed(0, Phase::Forward, json!({"reservation_id": "r-1"}));
    assert_eq!(types(&d.events), ["StepSucceeded", "StepHeld"]);
    assert!(
        !d.actions
            .iter()
            .any(|a| matches!(a, Action::Perform { .. })),
        "{:?}",
        d.actions
    );
    assert!(s.state().paused && s.status() == "running");
    let d = s.ok(Input::Resume);
    assert_eq!(types(&d.events), ["SagaResumed", "StepStarted"]);
    assert!(d.actions.contains(&Action::Perform {
        step: 1,
        index: None,
        attempt: 1,
        phase: Phase::Forward
    }));
    assert_eq!(s.when(Input::Resume), Err(Rejection::NotPaused));
    s.succeed(1, Phase::Forward, json!({"payment_id": "p-1"}));
    s.succeed(2, Phase::Forward, json!({"shipment_id": "s-1"}));
    assert_eq!(s.status(), "completed");
    assert!(matches!(
        s.when(Input::Pause { reason: None }),
        Err(Rejection::Finished(_))
    ));
}

#[test]
fn a_failed_saga_is_retried_from_the_compensation_that_failed() {
    let mut s = Saga::given(ORDER).start(order_input(10.0));
    s.succeed(0, Phase::Forward, json!({"reservation_id": "r-1"}));
    s.fail(1, Phase::Forward, FailureKind::Business);
    assert_eq!(s.status(), "compensating");
    assert_eq!(
        s.when(Input::Retry),
        Err(Rejection::NotFailed("compensating"))
    );
    s.fail(0, Phase::Compensation, FailureKind::Business);
    assert_eq!(s.status(), "failed");
    let attempt_before = s.state().attempt;
    let d = s.ok(Input::Retry);
    assert_eq!(types(&d.events)[..2], ["SagaRetried", "StepStarted"]);
    assert!(
        d.actions.contains(&Action::Perform {
            step: 0,
            index: None,
            attempt: attempt_before + 1,
            phase: Phase::Compensation
        }),
        "a new attempt, so a new idempotency key"
    );
    assert_eq!(s.status(), "compensating");
    s.succeed(0, Phase::Compensation, json!({}));
    assert_eq!(s.status(), "compensated");
    assert_eq!(
        s.when(Input::Retry),
        Err(Rejection::NotFailed("compensated"))
    );
}

#[test]
fn a_reissue_after_an_outage_restarts_the_timeout_and_keeps_the_attempt() {
    let mut s = Saga::given(ORDER).start(order_input(10.0));
    // reserve (attempt 1) is in flight with a 5 s timeout; the server was down for 12 s
    s.now = T0.plus(std::time::Duration::from_secs(12));
    let d = s.ok(Input::Reissue);
    assert_eq!(types(&d.events), ["AttemptReissued"]);
    let timeout = TimerPurpose::StepTimeout {
        step: 0,
        index: None,
        attempt: 1,
        phase: Phase::Forward,
    }
    .id();
    let due = s.now.plus(std::time::Duration::from_secs(5));
    assert_eq!(
        d.actions,
        [
            Action::ArmTimer {
                timer: timeout.clone(),
                due
            },
            Action::Perform {
                step: 0,
                index: None,
                attempt: 1,
                phase: Phase::Forward
            }
        ]
    );
    assert_eq!(s.state().timers[&timeout].due, due);
    // the overdue timer, delivered late, no longer fires: its time has not come
    let d = s.ok(Input::TimerFired {
        timer: timeout.clone(),
    });
    assert!(d.events.is_empty(), "{:?}", d.events);
    // the re-issued attempt's answer is taken as the attempt's own
    let d = s.succeed(0, Phase::Forward, json!({"reservation_id": "r-1"}));
    assert_eq!(types(&d.events)[0], "StepSucceeded");
    assert_eq!(
        s.state().in_flight.first().map(|f| (f.step, f.attempt)),
        Some((1, 1))
    );
}

#[test]
fn a_reissue_with_nothing_in_flight_records_nothing() {
    let mut s = Saga::given(ORDER).start(order_input(10.0));
    s.fail(0, Phase::Forward, FailureKind::Transient);
    assert!(
        s.state().in_flight.is_empty(),
        "a backoff is pending instead"
    );
    let d = s.ok(Input::Reissue);
    assert_eq!(d, Decision::default());
}

#[test]
fn a_fault_fails_the_saga_and_a_retry_resends_the_attempt_in_flight() {
    let mut s = Saga::given(ORDER).start(order_input(10.0));
    s.succeed(0, Phase::Forward, json!({"reservation_id": "r-1"}));
    let d = s.ok(Input::Fault {
        reason: "internal error while performing: boom".into(),
    });
    assert_eq!(types(&d.events), ["SagaFailed"]);
    assert!(d.actions.contains(&Action::Finished));
    assert_eq!(s.status(), "failed");
    assert_eq!(
        s.state().error.as_deref(),
        Some("internal error while performing: boom")
    );
    // a fault of an ended saga changes nothing
    let d = s.ok(Input::Fault {
        reason: "again".into(),
    });
    assert!(d.events.is_empty());
    let d = s.ok(Input::Retry);
    assert!(d.actions.contains(&Action::Perform {
        step: 1,
        index: None,
        attempt: 2,
        phase: Phase::Forward
    }));
    s.succeed(1, Phase::Forward, json!({"payment_id": "p-1"}));
    s.succeed(2, Phase::Forward, json!({"shipment_id": "s-1"}));
    assert_eq!(s.status(), "completed");
}

/// What a template sees: the input, each step's output, the workflow's env
/// and the instance.
#[test]
fn a_template_context_holds_input_outputs_env_and_instance() {
    let mut s = Saga::given(ORDER).start(order_input(10.0));
    s.succeed(0, Phase::Forward, json!({"reservation_id": "r-1"}));
    s.m.env = [("region".to_owned(), "eu".to_owned())].into();
    let ctx = super::decide::context(&s.m, ID, &s.state());
    let input = order_input(10.0);
    assert_eq!(
        ctx,
        json!({
            "input": input,
            "steps": {"reserve": {"output": {"reservation_id": "r-1"}}},
            "env": {"region": "eu"},
            "instance": {"id": ID, "workflow": "order", "version": s.m.version, "started_at": T0},
        })
    );
}
