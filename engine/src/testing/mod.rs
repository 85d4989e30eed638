//! Workflow tests (`sagaflow test`): cases that give a workflow an input and
//! say what the world answers (per step, branch or element and attempt;
//! signals; a cancel), run on the pure core with a manual clock, and compare
//! the end status, the effects performed in order, and the output with
//! what the case expects. No server, no network, no store.
//!
//! The file format is [`TestFile`]; its JSON Schema is `sagaflow schema --tests`.

mod run;

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;

pub use run::{run_case, CaseOutcome, Performed};

/// A file of workflow tests, e.g. `workflows/order.test.yaml` beside `order.yaml`.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(title = "sagaflow workflow tests")]
pub struct TestFile {
    /// The workflow file, relative to this one (default: this file's name
    /// without `.test`, e.g. `order.yaml` for `order.test.yaml`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workflow: Option<String>,
    /// Values for `${ .env.NAME }`, over the workflow's defaults.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    pub cases: Vec<Case>,
}

/// One run of the workflow: its input, what the world answers, what must come of it.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Case {
    pub name: String,
    /// The instance's input (it must satisfy the workflow's `input` schema).
    #[serde(default)]
    pub input: Value,
    /// What each effect answers, attempt after attempt (the last answer
    /// repeats). Keys name the effect: `pay` (a step or a branch),
    /// `reserve_items[2]` (an element; `reserve_items` answers for every
    /// element without its own entry), `undo pay` (its compensation). An
    /// effect without an entry succeeds with `{}`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub answers: BTreeMap<String, Vec<Answer>>,
    /// Signals sent to the instance, in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub signals: Vec<Signal>,
    /// Cancel the instance this long after it starts (e.g. `5m`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cancel_after: Option<String>,
    pub expect: Expect,
}

/// What one attempt of an effect answers.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(untagged)]
pub enum Answer {
    /// `timeout`: no answer; the attempt times out (or a `wait` step's signal
    /// never comes). `ok`: success with `{}`.
    Word(AnswerWord),
    /// An HTTP answer: 2xx succeeds with `body`, 4xx is a business failure,
    /// 5xx (and the step's `retryable_status`) a transient one.
    Http(HttpAnswer),
    /// A worker completes its task with this output.
    Complete(CompleteAnswer),
    /// A worker fails its task (`retryable: true` for a transient failure).
    Fail(FailAnswer),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum AnswerWord {
    Timeout,
    Ok,
}

#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HttpAnswer {
    pub status: u16,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<Value>,
}

#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CompleteAnswer {
    pub complete: Value,
}

#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FailAnswer {
    pub fail: String,
    #[serde(default)]
    pub retryable: bool,
}

/// A signal sent to the instance.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Signal {
    pub name: String,
    #[serde(default)]
    pub payload: Value,
    /// When, after the start (e.g. `2h`); without it, as soon as the
    /// instance has nothing left to perform.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after: Option<String>,
}

/// What must come of the case.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Expect {
    /// `completed`, `compensated`, `failed` or `cancelled`.
    pub status: String,
    /// Every attempt performed, in order: `reserve`, `reserve_items[1]`,
    /// `undo pay`, or `{effect, request}` to check the rendered request too
    /// (the fields given must match).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub effects: Option<Vec<ExpectedEffect>>,
    /// The saga's output, exactly.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<Value>,
    /// Text the instance's error contains.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// An expected effect: its name, or its name and (part of) its request.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(untagged)]
pub enum ExpectedEffect {
    Name(String),
    Detailed(DetailedEffect),
}

#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DetailedEffect {
    pub effect: String,
    /// The parts of the rendered request that must match: for `http`,
    /// `method`, `url`, `headers`, `body`; for `task`, `queue` and `input`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request: Option<Value>,
}

/// The JSON Schema of test files, for editors and `sagaflow schema --tests`.
pub fn json_schema() -> Value {
    serde_json::to_value(schemars::schema_for!(TestFile)).unwrap_or_default()
}

/// Whether a file name is a test file (`*.test.yaml` / `*.test.yml`), not a workflow.
pub fn is_test_file(path: &std::path::Path) -> bool {
    path.file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.ends_with(".test.yaml") || n.ends_with(".test.yml"))
}
