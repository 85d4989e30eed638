//! `sagaflow graph FILE --format dot|mermaid|json`.

use std::path::Path;
use std::process::ExitCode;

use anyhow::Context;
use sagaflow_engine::compile::{self, export};

use super::{report, validate::read_workflow};
use crate::GraphFormat;

pub fn run(file: &Path, format: GraphFormat) -> anyhow::Result<ExitCode> {
    let name = file.display().to_string();
    let bytes = read_workflow(file).with_context(|| format!("cannot read {name}"))?;
    let checked = compile::check_bytes(&bytes);
    let Some(machine) = checked.machine else {
        let source = String::from_utf8_lossy(&bytes);
        for d in &checked.diagnostics {
            eprint!("{}", report::human(&name, &source, d));
        }
        eprintln!("{name}: invalid; run `sagaflow validate {name}` for details");
        return Ok(ExitCode::FAILURE);
    };
    match format {
        GraphFormat::Dot => print!("{}", export::dot(&machine)),
        GraphFormat::Mermaid => print!("{}", export::mermaid(&machine)),
        GraphFormat::Json => println!("{}", serde_json::to_string_pretty(&export::json(&machine))?),
    }
    Ok(ExitCode::SUCCESS)
}
