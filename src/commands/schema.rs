//! `sagaflow schema`: the workflow language's JSON Schema, as docs/workflow.schema.json holds it.

use std::process::ExitCode;

/// The workflow language's schema, or with `tests` that of workflow test files
/// (docs/workflow-test.schema.json).
pub fn run(tests: bool) -> anyhow::Result<ExitCode> {
    let schema = if tests {
        sagaflow_engine::testing::json_schema()
    } else {
        sagaflow_engine::dsl::spec::json_schema()
    };
    println!("{}", serde_json::to_string_pretty(&schema)?);
    Ok(ExitCode::SUCCESS)
}
