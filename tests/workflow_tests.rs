//! `sagaflow test`: the example workflows' test files pass, a wrong
//! expectation fails with a readable diff at the case's line, `--format
//! json` reports the same for tools, and the published schema is current.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn sagaflow(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_sagaflow"))
        .args(args)
        .output()
        .expect("run sagaflow")
}

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn text(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).to_string() + &String::from_utf8_lossy(&o.stderr)
}

/// A scratch folder holding a copy of `order.yaml` and `test` as its test file.
fn scratch(name: &str, test: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("sagaflow-wftest-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::copy(root().join("workflows/order.yaml"), dir.join("order.yaml")).unwrap();
    std::fs::write(dir.join("order.test.yaml"), test).unwrap();
    dir
}

const WRONG: &str = "cases:
  - name: fine
    input: { order_id: o-1, customer_id: c-1, items: [{ sku: a, qty: 1 }], amount: 10 }
    expect: { status: completed, effects: [reserve, pay, ship] }
  - name: wrong on purpose
    input: { order_id: o-2, customer_id: c-1, items: [{ sku: a, qty: 1 }], amount: 10 }
    answers:
      pay: [{ status: 402 }]
    expect:
      status: completed
      effects: [reserve, pay, ship]
      output: { order_id: o-2 }
";

#[test]
fn every_example_workflow_passes_its_tests() {
    let out = sagaflow(&["test", root().join("workflows").to_str().unwrap()]);
    let t = text(&out);
    assert_eq!(out.status.code(), Some(0), "{t}");
    for file in ["order", "trip-booking", "refund-approval", "fulfilment"] {
        assert!(
            t.contains(&format!("workflows/{file}.test.yaml")),
            "{file} has tests: {t}"
        );
    }
    assert!(t.contains(" 0 failed"), "{t}");
}

#[test]
fn a_wrong_expectation_fails_with_a_diff_at_the_cases_line() {
    let dir = scratch("wrong", WRONG);
    let file = dir.join("order.test.yaml");
    let out = sagaflow(&["test", file.to_str().unwrap()]);
    let t = text(&out);
    assert_eq!(out.status.code(), Some(1), "{t}");
    assert!(
        t.contains(&format!("ok    {}:2: fine", file.display())),
        "{t}"
    );
    assert!(
        t.contains(&format!("FAIL  {}:5: wrong on purpose", file.display())),
        "{t}"
    );
    assert!(
        t.contains("status: expected completed, got compensated"),
        "{t}"
    );
    assert!(
        t.contains("- ship") && t.contains("+ undo reserve"),
        "the effects' diff: {t}"
    );
    assert!(t.contains("2 cases: 1 passed, 1 failed"), "{t}");
}

#[test]
fn json_output_is_for_tools() {
    let dir = scratch("json", WRONG);
    let out = sagaflow(&["test", "--format", "json", dir.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    let cases = report.as_array().unwrap();
    assert_eq!(cases.len(), 2);
    assert_eq!(
        (cases[0]["passed"].as_bool(), cases[0]["line"].as_u64()),
        (Some(true), Some(2))
    );
    assert_eq!(cases[1]["passed"], false);
    assert_eq!(cases[1]["status"], "compensated");
    let effects: Vec<&str> = cases[1]["effects"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["effect"].as_str().unwrap())
        .collect();
    assert_eq!(effects, ["reserve", "pay", "undo reserve"]);
    assert_eq!(cases[1]["effects"][1]["request"]["body"]["amount"], 10);
    assert!(cases[1]["problems"].as_array().unwrap().len() >= 3);
}

#[test]
fn an_unusable_test_file_is_an_error_not_a_failure() {
    let dir = scratch(
        "bad",
        "cases:\n  - name: x\n    input: { order_id: 1 }\n    expect: { status: completed }\n",
    );
    let out = sagaflow(&["test", dir.to_str().unwrap()]);
    let t = text(&out);
    assert_eq!(out.status.code(), Some(2), "{t}");
    assert!(t.contains("does not satisfy the workflow's `input`"), "{t}");
    let out = sagaflow(&["test", root().join("tests/fixtures").to_str().unwrap()]);
    assert_eq!(
        out.status.code(),
        Some(2),
        "no test files there: {}",
        text(&out)
    );
}

#[test]
fn the_published_test_schema_is_current() {
    let out = sagaflow(&["schema", "--tests"]);
    let served: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let published: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(root().join("docs/workflow-test.schema.json")).unwrap(),
    )
    .unwrap();
    assert!(
        served == published,
        "docs/workflow-test.schema.json is stale: run `sagaflow schema --tests > docs/workflow-test.schema.json`"
    );
}
