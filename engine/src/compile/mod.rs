//! The compiler: a parsed [`WorkflowSpec`](crate::dsl::WorkflowSpec) becomes a
//! [`Machine`], or every semantic problem is reported, located.

mod build;
pub mod export;
mod graph;
pub mod model;

pub use model::{Action, Machine, RetryPolicy, Role, State, Step, Transition, Wait};

use crate::diagnostic::{Diagnostic, DocPath};
use crate::dsl::{self, Parsed};

/// The result of checking one workflow file: the machine when there are no
/// errors, and every diagnostic (errors and warnings), located and in order.
#[derive(Debug)]
pub struct Checked {
    pub machine: Option<Machine>,
    pub diagnostics: Vec<Diagnostic>,
}

impl Checked {
    pub fn errors(&self) -> impl Iterator<Item = &Diagnostic> {
        self.diagnostics.iter().filter(|d| d.is_error())
    }
}

/// Checks a workflow file's raw bytes: refuses oversized files before
/// reading them as text, and text that is not UTF-8 (binary garbage).
pub fn check_bytes(bytes: &[u8]) -> Checked {
    let limit = dsl::yaml::Limits::default().max_bytes;
    let refuse = |d: Diagnostic| Checked {
        machine: None,
        diagnostics: vec![d],
    };
    if bytes.len() > limit {
        let d = Diagnostic::error(
            "file-too-large",
            DocPath::root(),
            format!(
                "the file is {} bytes; workflow files are limited to {limit} bytes",
                bytes.len()
            ),
        );
        return refuse(d.at(crate::diagnostic::Span {
            start: 0,
            end: 0,
            line: 1,
            column: 1,
        }));
    }
    let bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes);
    match std::str::from_utf8(bytes) {
        Ok(text) => check(text),
        Err(e) => {
            let good = &bytes[..e.valid_up_to()];
            let line = good.iter().filter(|&&b| b == b'\n').count() + 1;
            let line_start = good.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
            let column = String::from_utf8_lossy(&good[line_start..]).chars().count() + 1;
            let span = crate::diagnostic::Span {
                start: e.valid_up_to(),
                end: e.valid_up_to(),
                line,
                column,
            };
            refuse(
                Diagnostic::error(
                    "not-text",
                    DocPath::root(),
                    "the file is not UTF-8 text (is it binary?)",
                )
                .at(span),
            )
        }
    }
}

/// Parses and compiles a workflow file's text.
pub fn check(text: &str) -> Checked {
    match dsl::parse(text) {
        Ok(parsed) => compile(&parsed),
        Err(diagnostics) => Checked {
            machine: None,
            diagnostics,
        },
    }
}

/// Compiles a parsed workflow. If parsing set fields aside, the semantic
/// problems are still found, less those the missing fields would cause,
/// and no machine is built.
pub fn compile(parsed: &Parsed) -> Checked {
    let mut checked = compile_spec(parsed);
    if !parsed.problems.is_empty() {
        checked.machine = None;
        checked
            .diagnostics
            .retain(|d| !parsed.problems.iter().any(|p| dsl::knock_on(p, d)));
        checked.diagnostics.extend(parsed.problems.iter().cloned());
        checked
            .diagnostics
            .sort_by_key(|d| (d.span.map(|s| s.start), d.severity));
    }
    checked
}

fn compile_spec(parsed: &Parsed) -> Checked {
    let spec = &parsed.spec;
    let mut c = build::Checker::new(spec);
    c.workflow_level();
    let deadline = spec
        .deadline
        .as_ref()
        .and_then(|d| c.duration(d, DocPath::root().key("deadline")));
    let default_timeout = c.default_timeout();
    let default_retry = c.default_retry();
    let triggers = c.triggers();
    let steps = c.steps(default_timeout, &default_retry);
    let output = c.output.take();
    let mut diagnostics = c.diags;
    let mut machine = None;
    if !diagnostics.iter().any(Diagnostic::is_error) {
        let steps: Vec<Step> = steps.into_iter().flatten().collect();
        let graph = graph::build(&steps, deadline.is_some());
        for state in graph::dead_ends(&graph) {
            let path = match state {
                State::Running(i) | State::Waiting(i) | State::Compensating(i) => {
                    DocPath::root().key("steps").index(i)
                }
                _ => DocPath::root(),
            };
            diagnostics.push(Diagnostic::error("no-way-out", path, format!("from state {state} no end (completed, compensated, failed, cancelled) can be reached")));
        }
        if !diagnostics.iter().any(Diagnostic::is_error) {
            machine = Some(Machine {
                name: spec.name.clone(),
                hash: definition_hash(spec),
                version: spec.version,
                description: spec.description.clone(),
                input_schema: spec.input.clone(),
                search: spec.search.clone(),
                env: spec.env.clone(),
                deadline,
                pivot: steps.iter().position(|s| s.role == Role::Pivot),
                steps,
                output,
                graph,
                triggers,
                secrets: Default::default(),
            });
        }
    }
    dsl::locate(&mut diagnostics, &parsed.tree);
    Checked {
        machine,
        diagnostics,
    }
}

/// sha256 of the spec's canonical JSON, hex.
fn definition_hash(spec: &dsl::WorkflowSpec) -> String {
    use sha2::{Digest, Sha256};
    let canonical = serde_json::to_vec(spec).unwrap_or_default();
    Sha256::digest(&canonical)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[cfg(test)]
mod tests;
