//! `sagaflow schema`: the workflow language's JSON Schema, as docs/workflow.schema.json holds it.

use std::process::ExitCode;

pub fn run() -> anyhow::Result<ExitCode> {
    println!(
        "{}",
        serde_json::to_string_pretty(&sagaflow_engine::dsl::spec::json_schema())?
    );
    Ok(ExitCode::SUCCESS)
}
