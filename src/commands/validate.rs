//! `sagaflow validate FILE...`: exit 0 when every file is valid, 1 otherwise.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use sagaflow_engine::compile;

use super::report;
use crate::ReportFormat;

pub fn run(paths: &[PathBuf], format: ReportFormat) -> anyhow::Result<ExitCode> {
    let files = expand(paths)?;
    let mut all_valid = true;
    let mut results = Vec::new();
    for file in &files {
        let name = file.display().to_string();
        let bytes = read_workflow(file).with_context(|| format!("cannot read {name}"))?;
        let checked = compile::check_bytes(&bytes);
        let valid = checked.errors().next().is_none();
        all_valid &= valid;
        match format {
            ReportFormat::Json => results.push(report::json(&name, &checked.diagnostics)),
            ReportFormat::Human => {
                let source = String::from_utf8_lossy(&bytes);
                for d in &checked.diagnostics {
                    eprint!("{}", report::human(&name, &source, d));
                }
                let errors = checked.errors().count();
                let warnings = checked.diagnostics.len() - errors;
                match (&checked.machine, errors) {
                    (Some(m), 0) => println!(
                        "{name}: ok: workflow `{}` v{}, {} steps{}",
                        m.name,
                        m.version,
                        m.steps.len(),
                        plural(warnings, "warning")
                    ),
                    _ => println!(
                        "{name}: invalid: {}{}",
                        plural_count(errors, "error"),
                        plural(warnings, "warning")
                    ),
                }
            }
        }
    }
    if let ReportFormat::Json = format {
        println!("{}", serde_json::to_string_pretty(&results)?);
    }
    Ok(if all_valid {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn plural_count(n: usize, what: &str) -> String {
    format!("{n} {what}{}", if n == 1 { "" } else { "s" })
}

fn plural(n: usize, what: &str) -> String {
    if n == 0 {
        String::new()
    } else {
        format!(", {}", plural_count(n, what))
    }
}

/// Files as given, and the workflow files inside folders (not their
/// `*.test.yaml` test files), sorted.
fn expand(paths: &[PathBuf]) -> anyhow::Result<Vec<PathBuf>> {
    expand_where(paths, |f| {
        f.extension().is_some_and(|x| x == "yaml" || x == "yml")
            && !sagaflow_engine::testing::is_test_file(f)
    })
}

/// Files as given, and the files inside folders that `keep` keeps, sorted.
pub fn expand_where(
    paths: &[PathBuf],
    keep: impl Fn(&Path) -> bool,
) -> anyhow::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for p in paths {
        if p.is_dir() {
            let mut inside: Vec<PathBuf> = std::fs::read_dir(p)
                .with_context(|| format!("cannot list {}", p.display()))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|f| keep(f))
                .collect();
            inside.sort();
            out.extend(inside);
        } else {
            out.push(p.clone());
        }
    }
    Ok(out)
}

/// Reads at most one byte past the engine's limit, so a huge file is refused without reading it all.
pub fn read_workflow(path: &Path) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    let limit = sagaflow_engine::dsl::yaml::Limits::default().max_bytes as u64;
    let mut bytes = Vec::new();
    std::fs::File::open(path)?
        .take(limit + 1)
        .read_to_end(&mut bytes)?;
    Ok(bytes)
}
