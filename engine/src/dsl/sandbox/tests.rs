use super::*;
use serde_json::json;

fn run(expr: &str, input: Value) -> Result<Value, EvalError> {
    Compiled::new(expr)
        .map_err(|e| panic!("{expr}: {e:?}"))
        .and_then(|c| c.run(&input, &Budget::default()))
}

#[test]
fn pure_jq_runs() {
    assert_eq!(
        run(
            "[.items[] | .qty * 2] | add",
            json!({"items": [{"qty": 1}, {"qty": 3}]})
        ),
        Ok(json!(8))
    );
    assert_eq!(run("empty", json!(null)), Ok(json!(null)));
    assert_eq!(
        run("\"a-b\" | split(\"-\")", json!(null)),
        Ok(json!(["a", "b"]))
    );
}

#[test]
fn whatever_reaches_outside_is_forbidden_by_name() {
    for (expr, name) in [
        ("env.HOME", "env"),
        ("$ENV.HOME", "$ENV"),
        ("input", "input"),
        ("[inputs]", "inputs"),
        ("if .boom then halt_error else 1 end", "halt_error"),
        ("halt", "halt"),
        ("debug", "debug"),
        ("debug(\"x\")", "debug"),
        ("stderr", "stderr"),
        ("input_filename", "input_filename"),
        ("$__loc__", "$__loc__"),
        ("now", "now"),
        ("localtime", "localtime"),
        ("import \"/etc/passwd\" as $x; $x", "import"),
        ("include \"x\"; 1", "include"),
        ("import \"x\" as x; 1", "import"),
    ] {
        match Compiled::new(expr) {
            Err(CompileError::Forbidden { name: n, .. }) => assert_eq!(n, name, "{expr}"),
            Err(e) => panic!("{expr}: {e:?}"),
            Ok(_) => panic!("{expr} compiled"),
        }
    }
}

#[test]
fn a_user_definition_may_reuse_a_forbidden_name() {
    assert_eq!(run("def env: 1; env + 1", json!(null)), Ok(json!(2)));
}

#[test]
fn loops_recursion_and_growth_stop_at_the_budget() {
    assert_eq!(
        run("last(range(.n))", json!({"n": 1e13})),
        Err(EvalError::Exceeded(Exceeded::Fuel))
    );
    assert_eq!(
        run("def f: f; f", json!(null)),
        Err(EvalError::Exceeded(Exceeded::Fuel))
    );
    assert_eq!(
        run("def f: 1 + f; f", json!(null)),
        Err(EvalError::Exceeded(Exceeded::Depth))
    );
    assert_eq!(
        run("[repeat(1)]", json!(null)),
        Err(EvalError::Exceeded(Exceeded::Fuel))
    );
    assert_eq!(
        run("[..] | length", json!({"a": [1, {"b": 2}]})),
        Ok(json!(5))
    );
    assert_eq!(
        run("[range(0; 10; 3)]", json!(null)),
        Ok(json!([0, 3, 6, 9]))
    );
    assert_eq!(run("[range(3; 0; -1)]", json!(null)), Ok(json!([3, 2, 1])));
    assert_eq!(
        run("reduce range(60) as $i (1; [., .]) | last(..)", json!(null)),
        Err(EvalError::Exceeded(Exceeded::Fuel))
    );
    assert_eq!(
        run("\"x\" * 10000000", json!(null)),
        Err(EvalError::Exceeded(Exceeded::Output))
    );
    assert_eq!(
        run("reduce range(64) as $i (1; [., .])", json!(null)),
        Err(EvalError::Exceeded(Exceeded::Output))
    );
}

#[test]
fn errors_and_halts_are_values_not_exits() {
    assert_eq!(
        run("error(\"no\")", json!(null)),
        Err(EvalError::Failed("no".into()))
    );
    assert!(matches!(
        run("1 | .a", json!(null)),
        Err(EvalError::Failed(_))
    ));
}

#[test]
fn an_error_quoting_a_huge_value_is_cut_not_written_out() {
    // `.input` of an array names the array in its message: 2^50 leaves, shared
    let Err(EvalError::Failed(text)) = run("reduce range(50) as $i (.; [., .]) | .input", json!(1))
    else {
        panic!("expected a failure")
    };
    assert!(text.len() <= ERROR_TEXT + '…'.len_utf8(), "{}", text.len());
    assert!(text.ends_with('…'), "{text}");
}

#[test]
fn a_loop_around_a_costly_native_operation_runs_out_of_time_in_process() {
    // each `splits` writes the 2^16-leaf array out in its error: few terms, much work
    let c =
        Compiled::new("reduce range(16) as $i (.; [., .]) | repeat(.) | splits(\"x\")?").unwrap();
    let short = Budget {
        time: std::time::Duration::from_millis(50),
        ..Budget::default()
    };
    let started = std::time::Instant::now();
    assert_eq!(
        c.run(&json!(null), &short),
        Err(EvalError::Exceeded(Exceeded::Time))
    );
    assert!(started.elapsed() < std::time::Duration::from_secs(5));
}

#[test]
fn a_budget_is_per_evaluation() {
    let c = Compiled::new("[range(10)] | length").unwrap();
    let tight = Budget {
        fuel: 5,
        ..Budget::default()
    };
    assert_eq!(
        c.run(&json!(null), &tight),
        Err(EvalError::Exceeded(Exceeded::Fuel))
    );
    for _ in 0..3 {
        assert_eq!(c.run(&json!(null), &Budget::default()), Ok(json!(10)));
    }
}
