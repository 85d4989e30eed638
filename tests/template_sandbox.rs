//! The template sandbox as the server runs it: expressions in child processes
//! of the real binary. Whatever an expression does, only its evaluation fails,
//! within the time budget, and the pool keeps answering.

use std::time::{Duration, Instant};

use proptest::prelude::*;
use sagaflow_engine::dsl::sandbox::process::ProcessPool;
use sagaflow_engine::dsl::sandbox::{Budget, Compiled, EvalError, Evaluator, Exceeded};
use serde_json::{json, Value};

fn pool() -> ProcessPool {
    ProcessPool::new(
        env!("CARGO_BIN_EXE_sagaflow").into(),
        vec!["sandbox".into()],
        Budget::default(),
    )
}

/// The budget's time plus room for starting a child on a busy machine.
const WITHIN: Duration = Duration::from_secs(4);

fn eval(pool: &ProcessPool, expr: &str, input: &Value) -> Result<Value, EvalError> {
    let compiled = Compiled::new(expr).expect("compiles");
    let started = Instant::now();
    let out = pool.eval(expr, &compiled, input);
    assert!(
        started.elapsed() < WITHIN,
        "`{expr}` took {:?}",
        started.elapsed()
    );
    out
}

#[test]
fn a_hostile_expression_costs_only_its_own_evaluation() {
    let pool = pool();
    pool.check().expect("the sandbox starts");
    let cases: &[(&str, &[Exceeded])] = &[
        ("\"x\" * 1000000000000", &[Exceeded::Memory]),
        (
            "reduce range(40) as $i (\"x\"; . + .)",
            &[Exceeded::Memory, Exceeded::Time],
        ),
        (
            "reduce range(60) as $i (1; [., .]) | tostring",
            &[Exceeded::Memory, Exceeded::Time],
        ),
        // `catch` turns the error into text first, and that text quotes the value
        (
            "reduce range(60) as $i (1; [., .]) | try .a catch \"caught\"",
            &[Exceeded::Memory, Exceeded::Time],
        ),
        ("last(range(.n))", &[Exceeded::Fuel]),
        ("def f: f; f", &[Exceeded::Fuel]),
        ("def f: 1 + f; f", &[Exceeded::Depth]),
        ("\"x\" * 10000000", &[Exceeded::Output]),
    ];
    for (expr, expected) in cases {
        match eval(&pool, expr, &json!({"n": 1e13})) {
            Err(EvalError::Exceeded(e)) => assert!(expected.contains(&e), "`{expr}`: {e:?}"),
            other => panic!("`{expr}`: {other:?}"),
        }
        // and the next evaluation is answered as if nothing happened
        assert_eq!(
            eval(&pool, "[.n, 1 + 1]", &json!({"n": 3})),
            Ok(json!([3, 2]))
        );
    }
}

#[test]
fn many_hostile_evaluations_at_once_wait_their_turn_and_all_end() {
    let pool = std::sync::Arc::new(pool());
    let started = Instant::now();
    let threads: Vec<_> = (0..12)
        .map(|i| {
            let pool = pool.clone();
            std::thread::spawn(move || {
                let expr = if i % 2 == 0 {
                    "\"x\" * 1000000000000"
                } else {
                    "last(range(1e13))"
                };
                pool.eval(expr, &Compiled::new(expr).unwrap(), &json!(null))
            })
        })
        .collect();
    for t in threads {
        assert!(matches!(
            t.join().unwrap(),
            Err(EvalError::Exceeded(Exceeded::Memory | Exceeded::Fuel))
        ));
    }
    // twelve evaluations of up to a second each, a few at a time
    assert!(started.elapsed() < Duration::from_secs(30));
    assert_eq!(
        pool.eval("1 + 1", &Compiled::new("1 + 1").unwrap(), &json!(null)),
        Ok(json!(2))
    );
}

#[test]
fn the_child_sees_no_environment() {
    // `env` does not even compile; `$ENV`-like access through a user
    // definition finds nothing either, because the child's environment is empty.
    assert!(Compiled::new("env").is_err());
    let pool = pool();
    assert_eq!(
        eval(&pool, "def env: {}; env | length", &json!(null)),
        Ok(json!(0))
    );
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]
    /// Programs from jq's looping, growing and converting parts, through the
    /// sandbox: each ends within the budget, and the pool survives.
    #[test]
    fn generated_programs_end_within_the_budget(
        parts in prop::collection::vec(prop::sample::select(vec![
            "range(.n)", "repeat(.)", "[.,.]", ". + .", "recurse", "..", "tostring", "tojson",
            "length", "[.[]?]", "def f: f; f", "def g: [g]; g", "\"x\" * .n", "@base64",
            "reduce range(50) as $i (.; [., .])", "until(false; .)", "explode?", "implode?",
            "to_entries?", "paths", "fromjson?", "ascii_downcase?", "combinations?",
            "[limit(5; repeat(.))]", "splits(\"x\")?", "sort?", "group_by(.)?", "@json",
        ]), 1..5),
        n in prop_oneof![Just(3.0), Just(1e6), Just(1e13)],
    ) {
        let pool = pool();
        let expr = parts.join(" | ");
        let compiled = Compiled::new(&expr).expect("compiles");
        let started = Instant::now();
        let _ = pool.eval(&expr, &compiled, &json!({"n": n}));
        prop_assert!(started.elapsed() < WITHIN, "`{}` took {:?}", expr, started.elapsed());
        prop_assert_eq!(pool.eval("1 + 1", &Compiled::new("1 + 1").unwrap(), &json!(null)), Ok(json!(2)));
    }
}
