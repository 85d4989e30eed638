//! given/when/then tests of `parallel`, `when` and `for_each`, and a
//! property test of their compensation rule.

use proptest::prelude::*;
use serde_json::{json, Value};

use super::tests::{types, Saga, ID};
use super::*;
use crate::dsl::spec::FailureKind;

const TRIP: &str = "
name: trip
steps:
  - name: quote
    http: { url: 'http://x/quote' }
    compensate: { http: { url: 'http://x/unquote' } }
  - name: book
    parallel:
      - name: flight
        http: { url: 'http://x/flight' }
        timeout: 2m
        retry: { max_attempts: 2, backoff: { initial: 1s } }
        compensate: { http: { url: 'http://x/flight/${ .steps.flight.output.ref // \"none\" }' } }
      - name: hotel
        http: { url: 'http://x/hotel' }
        compensate: { http: { method: DELETE, url: 'http://x/hotel' } }
      - name: car
        http: { url: 'http://x/car' }
        compensate: { http: { method: DELETE, url: 'http://x/car' } }
  - name: notify
    http: { url: 'http://x/notify' }
    compensate: none
";

const FULFIL: &str = "
name: fulfil
steps:
  - name: hold
    http: { url: 'http://x/hold' }
    compensate: { http: { url: 'http://x/unhold' } }
  - name: insure
    when: ${ .input.amount > 500 }
    http: { url: 'http://x/policies' }
    compensate: { http: { method: DELETE, url: 'http://x/policies' } }
  - name: reserve
    for_each: ${ .input.items }
    max_concurrency: 2
    http: { url: 'http://x/${ .item.sku }/reserve' }
    compensate: { http: { url: 'http://x/${ .item.sku }/release?line=${ .index }' } }
  - name: pay
    http: { url: 'http://x/pay' }
    compensate: none
";

fn items(n: usize) -> Value {
    Value::Array(
        (0..n)
            .map(|i| json!({"sku": format!("s{i}"), "qty": 1}))
            .collect(),
    )
}

impl Saga {
    fn answer(
        &mut self,
        step: usize,
        index: u32,
        phase: Phase,
        outcome: Result<Value, FailureKind>,
    ) -> Decision {
        let attempt = self.state().units.get(&index).map_or(1, |u| u.attempt);
        match outcome {
            Ok(output) => self.ok(Input::Succeeded {
                step,
                index: Some(index),
                attempt,
                phase,
                output,
            }),
            Err(kind) => self.ok(Input::Failed {
                step,
                index: Some(index),
                attempt,
                phase,
                kind,
                error: "no".into(),
            }),
        }
    }
}

/// The (step, index, phase) of every `Perform` in a decision.
fn performs(d: &Decision) -> Vec<(usize, Option<u32>, Phase)> {
    d.actions
        .iter()
        .filter_map(|a| match a {
            Action::Perform {
                step, index, phase, ..
            } => Some((*step, *index, *phase)),
            _ => None,
        })
        .collect()
}

/// The units whose compensations started, in the order they started.
fn compensated_units(events: &[Event], step: usize) -> Vec<u32> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::StepStarted {
                step: s,
                index: Some(u),
                phase: Phase::Compensation,
                ..
            } if *s == step => Some(*u),
            _ => None,
        })
        .collect()
}

#[test]
fn branches_start_at_once_and_the_step_succeeds_when_all_have() {
    let mut s = Saga::given(TRIP).start(json!({}));
    let d = s.succeed(0, Phase::Forward, json!({"q": 1}));
    assert_eq!(types(&d.events)[..2], ["StepSucceeded", "BranchesStarted"]);
    assert_eq!(
        performs(&d),
        [
            (1, Some(0), Phase::Forward),
            (1, Some(1), Phase::Forward),
            (1, Some(2), Phase::Forward)
        ]
    );
    assert_eq!(s.state().in_flight.len(), 3);
    s.answer(1, 1, Phase::Forward, Ok(json!({"id": "h"})));
    s.answer(1, 0, Phase::Forward, Ok(json!({"ref": "f"})));
    assert_eq!(s.status(), "running");
    let d = s.answer(1, 2, Phase::Forward, Ok(json!({"id": "c"})));
    assert_eq!(performs(&d), [(2, None, Phase::Forward)]);
    let st = s.state();
    assert_eq!(
        st.outputs["book"],
        json!({"flight": {"ref": "f"}, "hotel": {"id": "h"}, "car": {"id": "c"}})
    );
    assert_eq!(st.outputs["flight"], json!({"ref": "f"}));
    s.succeed(2, Phase::Forward, json!({}));
    assert_eq!(s.status(), "completed");
}

#[test]
fn a_failed_branch_stops_its_siblings_and_undoes_them_then_the_earlier_steps() {
    let mut s = Saga::given(TRIP).start(json!({}));
    s.succeed(0, Phase::Forward, json!({}));
    s.answer(1, 1, Phase::Forward, Ok(json!({"id": "h"})));
    // car says no; flight is still in flight: its outcome is unknown
    let d = s.answer(1, 2, Phase::Forward, Err(FailureKind::Business));
    assert!(types(&d.events).contains(&"CompensationStarted"));
    assert!(d
        .events
        .iter()
        .any(|e| matches!(e, Event::UnitsToCompensate { units, .. } if *units == [0, 1])));
    // both undone at once; the car, which did nothing, is not
    assert_eq!(
        performs(&d),
        [
            (1, Some(1), Phase::Compensation),
            (1, Some(0), Phase::Compensation)
        ]
    );
    // the stopped flight's late answer changes nothing
    let late = s.ok(Input::Succeeded {
        step: 1,
        index: Some(0),
        attempt: 1,
        phase: Phase::Forward,
        output: json!({"ref": "late"}),
    });
    assert!(late.events.is_empty());
    s.answer(1, 0, Phase::Compensation, Ok(json!({})));
    let d = s.answer(1, 1, Phase::Compensation, Ok(json!({})));
    // then the earlier step, newest first
    assert_eq!(performs(&d), [(0, None, Phase::Compensation)]);
    s.succeed(0, Phase::Compensation, json!({}));
    assert_eq!(s.status(), "compensated");
}

#[test]
fn a_branch_retries_by_its_own_policy_and_its_timeout_makes_it_unknown() {
    let mut s = Saga::given(TRIP).start(json!({}));
    s.succeed(0, Phase::Forward, json!({}));
    // flight: 2 attempts, 2m timeout each
    let d = s.fire("timeout:1.0:f:1");
    assert_eq!(
        types(&d.events),
        ["TimerFired", "StepFailed", "RetryScheduled"]
    );
    assert_eq!(s.status(), "running");
    let d = s.fire("backoff:1.0:f:2");
    assert_eq!(performs(&d), [(1, Some(0), Phase::Forward)]);
    s.answer(1, 1, Phase::Forward, Ok(json!({})));
    s.answer(1, 2, Phase::Forward, Ok(json!({})));
    let d = s.fire("timeout:1.0:f:2");
    // the timed-out flight may have been booked: it is undone with the others
    assert!(d
        .events
        .iter()
        .any(|e| matches!(e, Event::UnitsToCompensate { units, .. } if *units == [0, 1, 2])));
}

#[test]
fn a_cancel_in_a_parallel_step_undoes_what_is_in_flight_and_what_succeeded() {
    let mut s = Saga::given(TRIP).start(json!({}));
    s.succeed(0, Phase::Forward, json!({}));
    s.answer(1, 2, Phase::Forward, Ok(json!({})));
    let d = s.ok(Input::Cancel { reason: None });
    assert_eq!(compensated_units(&d.events, 1), [2, 1, 0]);
    for u in [0, 1, 2] {
        s.answer(1, u, Phase::Compensation, Ok(json!({})));
    }
    s.succeed(0, Phase::Compensation, json!({}));
    assert_eq!(s.status(), "cancelled");
}

#[test]
fn a_false_when_skips_the_step_and_it_is_never_compensated() {
    let mut s = Saga::given(FULFIL).start(json!({"amount": 100, "items": items(1)}));
    let d = s.succeed(0, Phase::Forward, json!({}));
    assert_eq!(
        types(&d.events),
        [
            "StepSucceeded",
            "StepSkipped",
            "ElementsListed",
            "StepStarted"
        ]
    );
    assert_eq!(s.state().outputs["insure"], Value::Null);
    s.answer(2, 0, Phase::Forward, Ok(json!({"r": 0})));
    let d = s.fail(3, Phase::Forward, FailureKind::Business);
    assert_eq!(compensated_units(&d.events, 2), [0]);
    s.answer(2, 0, Phase::Compensation, Ok(json!({})));
    // insure was skipped: straight on to `hold`
    assert_eq!(s.state().at, Some(crate::compile::State::Compensating(0)));
    s.succeed(0, Phase::Compensation, json!({}));
    assert_eq!(s.status(), "compensated");
}

#[test]
fn a_true_when_runs_the_step() {
    let mut s = Saga::given(FULFIL).start(json!({"amount": 900, "items": items(1)}));
    let d = s.succeed(0, Phase::Forward, json!({}));
    assert_eq!(performs(&d), [(1, None, Phase::Forward)]);
}

#[test]
fn elements_run_max_concurrency_at_a_time_and_a_failure_undoes_exactly_those_that_ran() {
    let mut s = Saga::given(FULFIL).start(json!({"amount": 100, "items": items(5)}));
    let d = s.succeed(0, Phase::Forward, json!({}));
    assert_eq!(
        performs(&d),
        [(2, Some(0), Phase::Forward), (2, Some(1), Phase::Forward)]
    );
    let d = s.answer(2, 0, Phase::Forward, Ok(json!({"r": 0})));
    assert_eq!(performs(&d), [(2, Some(2), Phase::Forward)]);
    // element 2 is refused while 1 is in flight; 3 and 4 never start
    let d = s.answer(2, 2, Phase::Forward, Err(FailureKind::Business));
    assert!(d
        .events
        .iter()
        .any(|e| matches!(e, Event::UnitsToCompensate { units, .. } if *units == [0, 1])));
    // newest first, two at a time
    assert_eq!(
        performs(&d),
        [
            (2, Some(1), Phase::Compensation),
            (2, Some(0), Phase::Compensation)
        ]
    );
    assert!(s.events.iter().all(|e| !matches!(
        e,
        Event::StepStarted {
            step: 2,
            index: Some(3 | 4),
            ..
        }
    )));
}

#[test]
fn an_elements_templates_see_its_item_and_index_forward_and_undoing() {
    let mut s = Saga::given(FULFIL).start(json!({"amount": 100, "items": items(3)}));
    s.succeed(0, Phase::Forward, json!({}));
    let st = s.state();
    let ctx = unit_context(&s.m, ID, &st, 2, Some(1));
    assert_eq!(
        (
            ctx.value()["item"]["sku"].clone(),
            ctx.value()["index"].clone()
        ),
        (json!("s1"), json!(1))
    );
    let crate::compile::Action::Http(call) = &s.m.steps[2].action else {
        unreachable!()
    };
    let url = call.url.render(&ctx).unwrap();
    assert_eq!(url, json!("http://x/s1/reserve"));
    drop(ctx);
    for u in 0..3 {
        s.answer(2, u, Phase::Forward, Ok(json!({"r": u})));
    }
    assert_eq!(
        s.state().outputs["reserve"],
        json!([{"r": 0}, {"r": 1}, {"r": 2}])
    );
    // pay fails: every element is undone, each with its own item
    s.fail(3, Phase::Forward, FailureKind::Business);
    let st = s.state();
    let undo = unit_context(&s.m, ID, &st, 2, Some(2));
    assert_eq!(undo.value()["item"]["sku"], json!("s2"));
    assert_eq!(compensated_units(&s.events, 2), [2, 1]);
}

#[test]
fn a_for_each_over_anything_but_an_array_fails_the_step_without_retry() {
    for (input, error) in [
        (
            json!({"amount": 1, "items": {"a": 1}}),
            "expected an array, got an object",
        ),
        (
            json!({"amount": 1, "items": items(1001)}),
            "1001 elements, more than the 1000",
        ),
    ] {
        let mut s = Saga::given(FULFIL).start(input);
        let d = s.succeed(0, Phase::Forward, json!({}));
        let failed = d.events.iter().find_map(|e| match e {
            Event::StepFailed {
                error, retryable, ..
            } => Some((error.clone(), *retryable)),
            _ => None,
        });
        let (text, retryable) = failed.expect("the step failed");
        assert!(text.contains(error), "{text}");
        assert!(!retryable);
        // nothing of `reserve` happened: undone from `hold`
        assert_eq!(performs(&d), [(0, None, Phase::Compensation)]);
    }
}

#[test]
fn an_empty_for_each_succeeds_with_an_empty_output() {
    let mut s = Saga::given(FULFIL).start(json!({"amount": 1, "items": []}));
    let d = s.succeed(0, Phase::Forward, json!({}));
    assert_eq!(performs(&d), [(3, None, Phase::Forward)]);
    assert_eq!(s.state().outputs["reserve"], json!([]));
}

#[test]
fn a_paused_saga_holds_new_elements_and_starts_them_on_resume() {
    let mut s = Saga::given(FULFIL).start(json!({"amount": 1, "items": items(3)}));
    s.succeed(0, Phase::Forward, json!({}));
    s.ok(Input::Pause { reason: None });
    let d = s.answer(2, 0, Phase::Forward, Ok(json!({})));
    assert!(types(&d.events).contains(&"StepHeld"));
    assert!(performs(&d).is_empty());
    let d = s.ok(Input::Resume);
    assert_eq!(performs(&d), [(2, Some(2), Phase::Forward)]);
}

#[test]
fn a_restart_reissues_every_branch_in_flight() {
    let mut s = Saga::given(TRIP).start(json!({}));
    s.succeed(0, Phase::Forward, json!({}));
    s.answer(1, 1, Phase::Forward, Ok(json!({})));
    let d = s.ok(Input::Reissue);
    assert_eq!(
        performs(&d),
        [(1, Some(0), Phase::Forward), (1, Some(2), Phase::Forward)]
    );
    assert_eq!(resume(&s.state()).len(), 2 + s.state().timers.len());
}

#[derive(Debug, Clone, Copy)]
enum Answer {
    Ok,
    No,
    Late,
}

proptest! {
    /// Whatever the elements answer, in whatever order: the saga ends, and
    /// exactly the elements that started and did not answer "no" are undone,
    /// each once.
    #[test]
    fn exactly_the_started_and_not_refused_elements_are_undone(
        answers in prop::collection::vec(prop_oneof![Just(Answer::Ok), Just(Answer::No), Just(Answer::Late)], 1..8),
        order in prop::collection::vec(any::<prop::sample::Index>(), 16),
        pay_fails in any::<bool>(),
    ) {
        let n = answers.len();
        let mut s = Saga::given(FULFIL).start(json!({"amount": 1, "items": items(n)}));
        s.succeed(0, Phase::Forward, json!({}));
        let mut turn = 0;
        // answer in-flight elements in a random order until the step is left
        while s.state().at == Some(crate::compile::State::Running(2)) {
            let flying: Vec<_> = s.state().in_flight.iter().copied().collect();
            prop_assert!(!flying.is_empty());
            let f = flying[order[turn % order.len()].index(flying.len())];
            turn += 1;
            let u = f.index.unwrap();
            match answers[u as usize] {
                Answer::Ok | Answer::Late => { s.answer(2, u, Phase::Forward, Ok(json!({"r": u}))); }
                Answer::No => { s.answer(2, u, Phase::Forward, Err(FailureKind::Business)); }
            }
        }
        if s.state().at == Some(crate::compile::State::Running(3)) {
            if pay_fails { s.fail(3, Phase::Forward, FailureKind::Business); } else { s.succeed(3, Phase::Forward, json!({})); }
        }
        // undo everything asked for
        for _ in 0..64 {
            let st = s.state();
            let Some(&f) = st.in_flight.iter().next() else { break };
            prop_assert_eq!(f.phase, Phase::Compensation);
            match f.index {
                Some(u) => { s.answer(f.step, u, Phase::Compensation, Ok(json!({}))); }
                None => { s.succeed(f.step, Phase::Compensation, json!({})); }
            }
        }
        let st = s.state();
        prop_assert!(st.is_terminal(), "ended: {}", st.status());
        let started: Vec<u32> = s.events.iter().filter_map(|e| match e {
            Event::StepStarted { step: 2, index: Some(u), phase: Phase::Forward, .. } => Some(*u),
            _ => None,
        }).collect();
        let refused: Vec<u32> = s.events.iter().filter_map(|e| match e {
            Event::StepFailed { step: 2, index: Some(u), kind: FailureKind::Business, .. } => Some(*u),
            _ => None,
        }).collect();
        let mut expected: Vec<u32> = if st.status() == "completed" {
            Vec::new()
        } else {
            started.iter().copied().filter(|u| !refused.contains(u)).collect()
        };
        let mut undone = compensated_units(&s.events, 2);
        expected.sort_unstable();
        undone.sort_unstable();
        prop_assert_eq!(undone, expected);
        // at most two elements ever ran at once
        prop_assert!(started.len() <= n);
    }
}

/// A history written before version 2 (every event version 1, as stored)
/// replays unchanged, and the instance in flight across the upgrade
/// finishes: its new attempts arm their timeouts themselves (version 3),
/// without a `TimerArmed` after them.
#[test]
fn a_version_1_history_replays_and_its_saga_finishes() {
    let m = super::tests::machine(super::tests::ORDER);
    let at = "2027-01-15T08:00:00.000Z";
    let stored = [
        (
            "SagaStarted",
            json!({"workflow": "order", "version": 1, "definition_hash": m.hash, "input": {"order_id": "o-1", "customer_id": "c", "items": [], "amount": 5}, "started_at": at}),
        ),
        (
            "StepStarted",
            json!({"step": 0, "name": "reserve", "attempt": 1, "phase": "forward", "action": "http", "at": at}),
        ),
        (
            "TimerArmed",
            json!({"timer": "timeout:0:f:1", "purpose": {"kind": "step_timeout", "step": 0, "attempt": 1, "phase": "forward"}, "due": "2027-01-15T08:00:05.000Z"}),
        ),
        (
            "StepSucceeded",
            json!({"step": 0, "name": "reserve", "attempt": 1, "output": {"reservation_id": "r"}, "at": at}),
        ),
        (
            "StepStarted",
            json!({"step": 1, "name": "pay", "attempt": 1, "phase": "forward", "action": "http", "at": at}),
        ),
    ];
    let events: Vec<Event> = stored
        .into_iter()
        .map(|(kind, data)| Event::from_stored(kind, 1, data).expect("a v1 event reads"))
        .collect();
    let st = fold(&events);
    assert_eq!(st.status(), "running");
    assert_eq!(
        st.in_flight.iter().copied().collect::<Vec<_>>(),
        [InFlight {
            step: 1,
            index: None,
            attempt: 1,
            phase: Phase::Forward
        }]
    );
    assert_eq!(resume(&st).len(), 1, "the payment in flight is re-issued");
    let mut s = Saga::given(super::tests::ORDER);
    s.events = events;
    s.succeed(1, Phase::Forward, json!({"payment_id": "p"}));
    let timers: Vec<String> = fold(&s.events).timers.keys().cloned().collect();
    assert_eq!(
        timers,
        ["timeout:2:f:1"],
        "the ship attempt's timeout is pending"
    );
    s.succeed(2, Phase::Forward, json!({"shipment_id": "s"}));
    assert_eq!(s.status(), "completed");
    let written: Vec<(&str, u16)> = s.events[5..]
        .iter()
        .map(|e| (e.type_name(), e.schema_version()))
        .collect();
    assert_eq!(
        written,
        [
            ("StepSucceeded", 1),
            ("StepStarted", 3),
            ("StepSucceeded", 1),
            ("SagaCompleted", 1)
        ]
    );
}

#[test]
fn a_retry_after_an_unevaluable_for_each_reaches_the_step_again() {
    // after the pivot nothing is undone: the saga fails for an operator
    const AFTER: &str = "
name: after
steps:
  - name: pay
    pivot: true
    http: { url: 'http://x/pay' }
  - name: ship
    for_each: ${ .input.items }
    http: { url: 'http://x/ship/${ .item }' }
    retry: { max_attempts: unlimited, backoff: { initial: 1s } }
";
    let mut s = Saga::given(AFTER).start(json!({"items": "not a list"}));
    let d = s.succeed(0, Phase::Forward, json!({}));
    assert!(d
        .events
        .iter()
        .any(|e| matches!(e, Event::StepFailed { attempt: 0, .. })));
    assert_eq!(s.status(), "failed");
    let d = s.ok(Input::Retry);
    // evaluated again (still not a list), never an attempt of nothing
    assert!(performs(&d).is_empty());
    assert_eq!(s.status(), "failed");
}

#[test]
fn a_retry_after_a_branch_compensation_failed_restarts_only_what_is_not_undone() {
    let mut s = Saga::given(TRIP).start(json!({}));
    s.succeed(0, Phase::Forward, json!({}));
    s.answer(1, 0, Phase::Forward, Ok(json!({"ref": "f"})));
    s.answer(1, 1, Phase::Forward, Ok(json!({})));
    s.answer(1, 2, Phase::Forward, Err(FailureKind::Business));
    // the hotel is undone; the flight's undo is refused: the saga needs an operator
    s.answer(1, 1, Phase::Compensation, Ok(json!({})));
    s.answer(1, 0, Phase::Compensation, Err(FailureKind::Business));
    assert_eq!(s.status(), "failed");
    let d = s.ok(Input::Retry);
    // only the flight's undo starts again, as its next attempt
    assert_eq!(performs(&d), [(1, Some(0), Phase::Compensation)]);
    assert!(d.events.iter().any(|e| matches!(
        e,
        Event::StepStarted {
            index: Some(0),
            attempt: 2,
            ..
        }
    )));
    s.answer(1, 0, Phase::Compensation, Ok(json!({})));
    s.succeed(0, Phase::Compensation, json!({}));
    assert_eq!(s.status(), "compensated");
    assert_eq!(compensated_units(&s.events, 1), [1, 0, 0]);
}

#[test]
fn the_deadline_in_a_for_each_undoes_what_ran() {
    const TIMED: &str = "
name: timed
deadline: 1m
steps:
  - name: lines
    for_each: ${ .input.items }
    max_concurrency: 2
    http: { url: 'http://x/${ .item.sku }' }
    compensate: { http: { url: 'http://x/undo/${ .item.sku }' } }
";
    let mut s = Saga::given(TIMED).start(json!({"items": items(4)}));
    s.answer(0, 0, Phase::Forward, Ok(json!({})));
    let d = s.fire("deadline");
    assert!(types(&d.events).contains(&"CompensationStarted"));
    // elements 0 (done) and 1, 2 (in flight); 3 never started
    assert!(d
        .events
        .iter()
        .any(|e| matches!(e, Event::UnitsToCompensate { units, .. } if *units == [0, 1, 2])));
}
