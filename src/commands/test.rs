//! `sagaflow test PATH...`: runs workflow test files (`*.test.yaml`); exit 0
//! when every case passes, 1 when one fails, 2 when a file cannot be used.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use sagaflow_engine::diagnostic::DocPath;
use sagaflow_engine::testing::{self, TestFile};
use sagaflow_engine::{compile, dsl};
use serde_json::json;

use super::validate::{expand_where, read_workflow};
use crate::ReportFormat;

pub fn run(paths: &[PathBuf], format: ReportFormat) -> anyhow::Result<ExitCode> {
    let files = expand_where(paths, testing::is_test_file)?;
    if files.is_empty() {
        anyhow::bail!("no test files (*.test.yaml) in {paths:?}");
    }
    let started = std::time::Instant::now();
    let (mut passed, mut failed) = (0, 0);
    let mut results = Vec::new();
    for file in &files {
        let name = file.display().to_string();
        let (tests, tree, machine) =
            load(file).with_context(|| format!("{name}: cannot run it"))?;
        for (i, case) in tests.cases.iter().enumerate() {
            let line = tree
                .get(&DocPath::root().key("cases").index(i))
                .map_or(1, |n| n.head_span().line);
            let at = format!("{name}:{line}");
            let clock = std::time::Instant::now();
            let outcome = testing::run_case(&machine, case)
                .map_err(|e| anyhow::anyhow!("{at}: case `{}`: {e}", case.name))?;
            let micros = clock.elapsed().as_micros();
            let ok = outcome.problems.is_empty();
            if ok {
                passed += 1;
            } else {
                failed += 1;
            }
            match format {
                ReportFormat::Json => results.push(json!({
                    "file": name,
                    "line": line,
                    "case": case.name,
                    "passed": ok,
                    "problems": outcome.problems,
                    "status": outcome.status,
                    "effects": outcome.effects,
                    "output": outcome.output,
                    "error": outcome.error,
                    "micros": micros,
                })),
                ReportFormat::Human if ok => println!(
                    "ok    {at}: {} ({} effects, {:.1} ms)",
                    case.name,
                    outcome.effects.len(),
                    micros as f64 / 1000.0
                ),
                ReportFormat::Human => {
                    println!("FAIL  {at}: {}", case.name);
                    for p in &outcome.problems {
                        for l in p.lines() {
                            println!("    {l}");
                        }
                    }
                }
            }
        }
    }
    match format {
        ReportFormat::Json => println!("{}", serde_json::to_string_pretty(&results)?),
        ReportFormat::Human => println!(
            "{} cases: {passed} passed, {failed} failed ({} files, {} ms)",
            passed + failed,
            files.len(),
            started.elapsed().as_millis()
        ),
    }
    Ok(if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// A test file, its YAML tree (for the cases' lines), and the workflow it
/// tests compiled with the file's `env` over the workflow's.
fn load(file: &Path) -> anyhow::Result<(TestFile, dsl::yaml::Node, compile::Machine)> {
    let text = std::fs::read_to_string(file)?;
    let tree = dsl::yaml::parse(&text, Default::default()).map_err(|e| {
        anyhow::anyhow!(
            "line {}, column {}: {}",
            e.span.line,
            e.span.column,
            e.message
        )
    })?;
    let tests: TestFile = serde_json::from_value(tree.to_json())
        .map_err(|e| anyhow::anyhow!("not a test file: {e}"))?;
    let workflow = match &tests.workflow {
        Some(w) => file.parent().unwrap_or(Path::new(".")).join(w),
        None => {
            let name = file
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or_default();
            let name = name
                .replace(".test.yaml", ".yaml")
                .replace(".test.yml", ".yml");
            file.with_file_name(name)
        }
    };
    let bytes = read_workflow(&workflow)
        .with_context(|| format!("reading the workflow {}", workflow.display()))?;
    let checked = compile::check_bytes(&bytes);
    let Some(mut machine) = checked.machine else {
        let first = checked
            .errors()
            .next()
            .map_or(String::new(), |d| format!(": {}", d.message));
        anyhow::bail!(
            "the workflow {} is invalid{first} (run `sagaflow validate` on it)",
            workflow.display()
        );
    };
    machine.env.extend(tests.env.clone());
    Ok((tests, tree, machine))
}
