use super::*;

const ORDER: &str = include_str!("../../../workflows/order.yaml");
const TRIP: &str = include_str!("../../../workflows/trip-booking.yaml");
const APPROVAL: &str = include_str!("../../../workflows/refund-approval.yaml");

fn machine(text: &str) -> Machine {
    let c = check(text);
    let errs: Vec<String> = c.diagnostics.iter().map(ToString::to_string).collect();
    c.machine.unwrap_or_else(|| panic!("{errs:#?}"))
}

/// Diagnostics as `line:col code path` for compact assertions.
fn diags(text: &str) -> Vec<String> {
    check(text)
        .diagnostics
        .iter()
        .map(|d| {
            let s = d.span.expect("every diagnostic is located");
            format!("{}:{} {} {}", s.line, s.column, d.code, d.path)
        })
        .collect()
}

#[test]
fn the_examples_compile_without_warnings() {
    for text in [ORDER, TRIP, APPROVAL] {
        let c = check(text);
        assert!(
            c.machine.is_some() && c.diagnostics.is_empty(),
            "{:#?}",
            c.diagnostics
        );
    }
}

#[test]
fn order_runs_forward_and_compensates_backward() {
    let m = machine(ORDER);
    use State::*;
    use Transition::*;
    assert_eq!(m.start(), Running(0));
    assert_eq!(m.pivot, Some(2));
    assert_eq!(m.next(Running(0), Succeeded), Some(Running(1)));
    assert_eq!(m.next(Running(2), Succeeded), Some(Completed));
    // pay declined: its effect did not happen, so only the reservation is undone
    assert_eq!(m.next(Running(1), BusinessFailure), Some(Compensating(0)));
    // pay timed out: the outcome is unknown, so pay is undone too
    assert_eq!(m.next(Running(1), Timeout), Some(Compensating(1)));
    assert_eq!(
        m.next(Compensating(1), Transition::Compensated),
        Some(Compensating(0))
    );
    assert_eq!(
        m.next(Compensating(0), AllCompensated),
        Some(State::Compensated)
    );
    assert_eq!(m.next(Compensating(0), CancelCompensated), Some(Cancelled));
    assert_eq!(m.next(Compensating(0), CompensationFailed), Some(Failed));
    // shipping is the pivot: failing it undoes pay and reserve, cancels no longer apply
    assert_eq!(m.next(Running(2), BusinessFailure), Some(Compensating(1)));
    assert_eq!(m.next(Running(2), Cancel), None);
    assert_eq!(m.next(Running(0), Cancel), Some(Compensating(0)));
    assert_eq!(m.next(Running(0), Deadline), Some(Compensating(0)));
    assert_eq!(m.next(Running(0), Retry), Some(Running(0)));
    assert_eq!(m.next(Completed, Retry), None);
}

#[test]
fn a_failure_before_anything_to_undo_ends_compensated() {
    let m = machine(
        "name: w\nsteps:\n  - name: a\n    http: {url: 'http://x'}\n    compensate: none\n",
    );
    assert_eq!(
        m.next(State::Running(0), Transition::BusinessFailure),
        Some(State::Compensated)
    );
    assert_eq!(
        m.next(State::Running(0), Transition::Cancel),
        Some(State::Cancelled)
    );
    assert_eq!(
        m.next(State::Running(0), Transition::Retry),
        None,
        "one attempt by default"
    );
}

#[test]
fn after_the_pivot_steps_only_go_forward() {
    let m = machine(APPROVAL);
    use State::*;
    use Transition::*;
    assert_eq!(m.steps[3].role, Role::AfterPivot);
    assert_eq!(m.next(Running(3), Retry), Some(Running(3)));
    assert_eq!(m.next(Running(3), Timeout), None, "retried forever");
    assert_eq!(
        m.next(Running(3), BusinessFailure),
        Some(Failed),
        "a refusal after the pivot needs an operator"
    );
    assert_eq!(m.next(Running(3), Cancel), None);
    assert_eq!(m.next(Waiting(1), SignalReceived), Some(Running(2)));
    assert_eq!(m.next(Waiting(1), Timeout), Some(Compensating(0)));
}

#[test]
fn every_state_reaches_an_end() {
    for text in [ORDER, TRIP, APPROVAL] {
        let m = machine(text);
        assert!(graph::dead_ends(&m.graph).is_empty());
    }
    let mut g = petgraph::graph::DiGraph::new();
    let a = g.add_node(State::Running(0));
    let b = g.add_node(State::Running(1));
    let end = g.add_node(State::Completed);
    g.add_edge(a, b, Transition::Succeeded);
    g.add_edge(b, b, Transition::Retry);
    g.add_edge(a, end, Transition::BusinessFailure);
    assert_eq!(graph::dead_ends(&g), vec![State::Running(1)]);
}

#[test]
fn reports_every_semantic_problem_located() {
    let text = "\
name: Bad_Name
deadline: soon
steps:
  - name: reserve
    http: {url: 'http://x/${ .steps.ship.output.id }'}
  - name: reserve
    http: {url: 'http://x/${ .stepz }'}
    compensate: none
    timeout: 10 parsecs
  - name: ship
    pivot: true
    http: {url: 'http://x/${ .steps.reserv.output.id }'}
  - name: notify
    http: {url: 'http://x/${ .input. | }'}
    compensate:
      http: {url: 'http://x'}
";
    assert_eq!(
        diags(text),
        vec![
            "1:7 bad-name name",
            "2:11 bad-duration deadline",
            "4:5 missing-compensation steps[0]",
            "5:17 later-step steps[0].http.url",
            "6:11 duplicate-step steps[1].name",
            "7:17 unknown-root steps[1].http.url",
            "9:14 bad-duration steps[1].timeout",
            "12:17 unknown-step steps[2].http.url",
            "13:5 bounded-after-pivot steps[3].retry",
            "14:17 bad-template steps[3].http.url",
            "15:5 compensate-after-pivot steps[3].compensate",
        ]
    );
    let c = check(text);
    let unknown = c
        .diagnostics
        .iter()
        .find(|d| d.code == "unknown-step")
        .unwrap();
    assert_eq!(unknown.help.as_deref(), Some("did you mean `reserve`?"));
}

#[test]
fn warns_about_smells() {
    let text = "\
name: w
steps:
  - name: a
    task: {queue: q}
    retry: {max_attempts: 3}
    compensate: none
  - name: b
    wait: {signal: go}
";
    assert_eq!(
        diags(text),
        vec![
            "3:5 task-without-timeout steps[0]",
            "5:12 retry-without-backoff steps[0].retry",
            "7:5 wait-without-timeout steps[1]"
        ]
    );
    assert!(check(text).machine.is_some(), "warnings do not reject");
}

#[test]
fn checks_actions_and_waits() {
    let text = "\
name: w
input: {type: objekt}
steps:
  - name: a
    compensate: none
  - name: b
    http: {url: x}
    task: {queue: q}
    compensate: none
  - name: c
    wait: {signal: s, duration: 1s}
  - name: d
    wait: {}
";
    assert_eq!(
        diags(text),
        vec![
            "2:8 bad-input-schema input",
            "4:5 missing-action steps[0]",
            "8:5 many-actions steps[1].task",
            "11:11 ambiguous-wait steps[2].wait",
            "13:11 empty-wait steps[3].wait",
        ]
    );
}

#[test]
fn retry_delays_grow_and_cap() {
    let m = machine(ORDER);
    let r = &m.steps[0].retry;
    let ms = |n| r.delay(n).as_millis();
    assert_eq!((ms(1), ms(2), ms(3), ms(10)), (100, 200, 400, 2000));
    assert!(r.should_retry(2, crate::dsl::spec::FailureKind::Transient));
    assert!(!r.should_retry(3, crate::dsl::spec::FailureKind::Transient));
    assert!(!r.should_retry(1, crate::dsl::spec::FailureKind::Business));
}

#[test]
fn exports_show_the_compensation_path() {
    let m = machine(ORDER);
    let mermaid = export::mermaid(&m);
    assert!(mermaid.starts_with("stateDiagram-v2\n"));
    assert!(
        mermaid.contains("run_1 --> undo_0: business_failure (compensation)"),
        "{mermaid}"
    );
    assert!(
        mermaid.contains("undo_1 --> undo_0: compensated (compensation)"),
        "{mermaid}"
    );
    assert!(
        mermaid.contains("undo_0 --> compensated: all_compensated (compensation)"),
        "{mermaid}"
    );
    let dot = export::dot(&m);
    assert!(
        dot.contains("run_1 -> undo_0 [label=\"business_failure\", style=dashed"),
        "{dot}"
    );
    let json = export::json(&m);
    assert_eq!(json["start"], "run_0");
}

#[test]
fn refuses_binary_and_oversized_files() {
    let c = check_bytes(b"name: w\nsteps: \xff\xfe\x00");
    let d = &c.diagnostics[0];
    assert_eq!(
        (d.code, d.span.unwrap().line, d.span.unwrap().column),
        ("not-text", 2, 8)
    );
    let big = vec![b'#'; 10 * 1024 * 1024];
    assert_eq!(check_bytes(&big).diagnostics[0].code, "file-too-large");
    let bom = check_bytes(b"\xEF\xBB\xBFname: w\nsteps: []\n");
    assert_eq!(bom.diagnostics[0].code, "no-steps");
}

mod never_panics {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

        #[test]
        fn on_arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let c = check_bytes(&bytes);
            prop_assert!(c.machine.is_some() || c.diagnostics.iter().any(|d| d.is_error()));
        }

        #[test]
        fn on_yaml_like_text(text in "[a-z:\\-\\[\\]{}&*!|>'\" \n\t#,0-9$.]{0,300}") {
            let c = check(&text);
            prop_assert!(c.machine.is_some() || c.diagnostics.iter().any(|d| d.is_error()));
            for d in &c.diagnostics {
                prop_assert!(d.span.is_some(), "unlocated: {}", d);
            }
        }

        /// Cut a piece out of a real workflow and splice in some noise: whatever
        /// comes out is either a machine or located errors.
        #[test]
        fn on_mutations_of_the_order_workflow(at in 0usize..ORDER.len(), cut in 0usize..40, noise in "[a-z:\\-{}\\[\\] \n$.]{0,8}") {
            let at = (0..=at).rev().find(|&i| ORDER.is_char_boundary(i)).unwrap_or(0);
            let end = (at + cut..=ORDER.len()).find(|&i| ORDER.is_char_boundary(i)).unwrap_or(ORDER.len());
            let text = format!("{}{}{}", &ORDER[..at], noise, &ORDER[end..]);
            let c = check(&text);
            prop_assert!(c.machine.is_some() || c.diagnostics.iter().any(|d| d.is_error()));
            for d in &c.diagnostics {
                let span = d.span.expect("located");
                prop_assert!(span.start <= span.end && span.end <= text.len());
            }
        }
    }
}

#[test]
fn effect_keys_name_the_effect_unless_a_step_asks_for_one_per_attempt() {
    let m = machine(
        "name: keys\nsteps:\n  - name: pay\n    http: { url: 'http://x' }\n    compensate: { http: { url: 'http://x' } }\n  - name: notify\n    idempotency: per_attempt\n    http: { url: 'http://x' }\n    compensate: none\n",
    );
    let (pay, notify) = (&m.steps[0], &m.steps[1]);
    assert_eq!(
        pay.effect_key("i", None, false, 1),
        pay.effect_key("i", None, false, 7)
    );
    assert_eq!(pay.effect_key("i", None, false, 3), "i:pay");
    assert_eq!(pay.effect_key("i", None, true, 2), "i:pay:compensate");
    assert_eq!(notify.effect_key("i", None, false, 3), "i:notify:3");
    assert_eq!(
        notify.effect_key("i", None, true, 2),
        "i:notify:compensate:2"
    );
}

#[test]
fn durations_past_a_hundred_years_are_refused() {
    for (text, code) in [
        ("deadline: 101y\n", "duration-too-long"),
        ("deadline: 20000000y\n", "duration-too-long"),
    ] {
        let src = format!("name: long\n{text}steps:\n  - name: a\n    http: {{ url: 'http://x' }}\n    compensate: none\n");
        assert!(
            diags(&src).iter().any(|d| d.contains(code)),
            "{text}: {:?}",
            diags(&src)
        );
    }
    let ok = "name: long\ndeadline: 99y\nsteps:\n  - name: a\n    http: { url: 'http://x' }\n    compensate: none\n";
    assert!(machine(ok).deadline.is_some());
}

#[test]
fn the_graph_shows_forks_joins_skips_and_for_each() {
    let m = machine(include_str!("../../../workflows/trip-booking.yaml"));
    let mermaid = export::mermaid(&m);
    for line in [
        "run_0: fork book",
        "state join_0 <<join>>",
        "run_0_1: hotel",
        "run_0 --> run_0_1",
        "run_0_1 --> join_0",
        "join_0 --> completed: succeeded",
        "run_0 --> undo_0: business_failure (compensation)",
        "undo_0 --> compensated: all_compensated (compensation)",
    ] {
        assert!(mermaid.contains(line), "{line}\n{mermaid}");
    }
    let dot = export::dot(&m);
    assert!(
        dot.contains("run_0 -> run_0_2;")
            && dot.contains("join_0 -> completed [label=\"succeeded\"];"),
        "{dot}"
    );
    let json = export::json(&m);
    assert_eq!(json["branches"].as_array().map(Vec::len), Some(3));

    let m = machine(include_str!("../../../workflows/fulfilment.yaml"));
    let mermaid = export::mermaid(&m);
    for line in [
        "run_0: for each reserve_items (4 at a time)",
        "run_1: insure (when)",
        "run_1 --> run_2: skipped",
        "run_1 --> run_2: succeeded",
    ] {
        assert!(mermaid.contains(line), "{line}\n{mermaid}");
    }
    // every state still reaches an end
    assert!(graph::dead_ends(&m.graph).is_empty());
}

#[test]
fn element_keys_carry_the_index() {
    let m = machine(include_str!("../../../workflows/fulfilment.yaml"));
    let reserve = &m.steps[0];
    assert_eq!(
        reserve.effect_key("i", Some(3), false, 1),
        "i:reserve_items:3"
    );
    assert_eq!(
        reserve.effect_key("i", Some(3), true, 2),
        "i:reserve_items:3:compensate"
    );
    let m = machine(include_str!("../../../workflows/trip-booking.yaml"));
    let hotel = m.steps[0].unit(Some(1));
    assert_eq!(hotel.effect_key("i", None, false, 1), "i:hotel");
    assert_eq!(m.unit_named("car"), Some((0, Some(2))));
}

#[test]
fn checks_search_fields() {
    let text = "\
name: w
input:
  type: object
  additionalProperties: false
  properties:
    customer_id: {type: string}
    address: {type: object, properties: {city: {type: string}}}
    meta: {type: object, additionalProperties: false}
search: [customer_id, address.city, address.zip, customer_id, 'a-b', customer, meta.x, '']
steps:
  - name: a
    http: {url: 'http://x'}
    compensate: none
";
    assert_eq!(
        diags(text),
        vec![
            "9:50 duplicate-search-field search[3]",
            "9:63 bad-search-field search[4]",
            "9:70 search-field-not-in-input search[5]",
            "9:80 search-field-not-in-input search[6]",
            "9:88 bad-search-field search[7]",
        ]
    );
    let c = check(text);
    let closed = c
        .diagnostics
        .iter()
        .find(|d| d.code == "search-field-not-in-input")
        .unwrap();
    assert_eq!(
        closed.help.as_deref(),
        Some("it names `address`, `customer_id`, `meta`")
    );
    // open schemas, and no schema, allow any path
    let m = machine(&text.replace(
        ", address.zip, customer_id, 'a-b', customer, meta.x, ''",
        "",
    ));
    assert_eq!(m.search, ["customer_id", "address.city"]);
    let open = "name: w\nsearch: [anything.at_all]\nsteps:\n  - name: a\n    http: {url: 'http://x'}\n    compensate: none\n";
    assert_eq!(machine(open).search, ["anything.at_all"]);
}
