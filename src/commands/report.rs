//! Printing diagnostics for people (source line and caret) and for tools (JSON).

use codespan_reporting::diagnostic::{Diagnostic as Report, Label, Severity as Level};
use codespan_reporting::files::SimpleFile;
use codespan_reporting::term::{self, Config};
use sagaflow_engine::diagnostic::{Diagnostic, Severity};

/// One diagnostic, rendered with the source line it points at.
pub fn human(file: &str, source: &str, d: &Diagnostic) -> String {
    let files = SimpleFile::new(file, source);
    let level = match d.severity {
        Severity::Error => Level::Error,
        Severity::Warning => Level::Warning,
    };
    let mut report = Report::new(level)
        .with_code(d.code)
        .with_message(&d.message);
    if let Some(span) = d.span {
        let end = span.end.max(span.start).min(source.len());
        let start = span.start.min(end);
        report = report.with_labels(vec![
            Label::primary((), start..end).with_message(d.path.to_string())
        ]);
    } else {
        report = report.with_notes(vec![format!("at {}", d.path)]);
    }
    if let Some(help) = &d.help {
        report = report.with_notes(vec![format!("help: {help}")]);
    }
    term::emit_into_string(&Config::default(), &files, &report)
        .unwrap_or_else(|_| format!("{file}: {d}\n"))
}

/// One file's result as JSON.
pub fn json(file: &str, diagnostics: &[Diagnostic]) -> serde_json::Value {
    let items: Vec<_> = diagnostics
        .iter()
        .map(|d| {
            let mut v = serde_json::json!({
                "severity": d.severity,
                "code": d.code,
                "message": d.message,
                "path": d.path.to_string(),
            });
            if let Some(s) = d.span {
                v["line"] = s.line.into();
                v["column"] = s.column.into();
            }
            if let Some(h) = &d.help {
                v["help"] = h.as_str().into();
            }
            v
        })
        .collect();
    let valid = !diagnostics.iter().any(Diagnostic::is_error);
    serde_json::json!({"file": file, "valid": valid, "diagnostics": items})
}
