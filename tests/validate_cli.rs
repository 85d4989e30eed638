//! `sagaflow validate`, `graph` and `schema` as a user runs them: the real binary.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

fn sagaflow(args: &[&str]) -> Output {
    run_bounded(Command::new(env!("CARGO_BIN_EXE_sagaflow")).args(args))
}

/// Runs a command, killing it if it has not finished in 20 s (a hang is a failure, not a stuck CI).
fn run_bounded(cmd: &mut Command) -> Output {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start sagaflow");
    let started = Instant::now();
    while child.try_wait().expect("wait").is_none() {
        if started.elapsed() > Duration::from_secs(20) {
            let _ = child.kill();
            panic!(
                "sagaflow {:?} did not finish within 20 s",
                cmd.get_args().collect::<Vec<_>>()
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    child.wait_with_output().expect("output")
}

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn fixtures() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(root().join("tests/fixtures/invalid"))
        .expect("fixtures")
        .map(|e| e.expect("entry").path())
        .collect();
    files.sort();
    files
}

/// The `# expect:` header of a fixture: `code line:col` items (or just `code`).
fn expectations(text: &str) -> Vec<String> {
    text.lines()
        .next()
        .and_then(|l| l.strip_prefix("# expect:"))
        .map(|l| {
            l.split(',')
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty())
                .collect()
        })
        .unwrap_or_default()
}

fn json_report(file: &Path) -> (Output, serde_json::Value) {
    let out = sagaflow(&[
        "validate",
        "--format",
        "json",
        file.to_str().expect("utf-8 path"),
    ]);
    let report: serde_json::Value =
        serde_json::from_slice(&out.stdout).expect("validate --format json prints JSON");
    (out, report)
}

#[test]
fn every_invalid_fixture_is_rejected_where_it_says() {
    let files = fixtures();
    assert!(files.len() >= 15, "the corpus is there");
    for file in files {
        let name = file.file_stem().unwrap().to_string_lossy().to_string();
        let text = std::fs::read_to_string(&file).unwrap();
        let (out, report) = json_report(&file);
        assert_eq!(out.status.code(), Some(1), "{name} must be rejected");
        let diags = report[0]["diagnostics"].as_array().expect("diagnostics");
        let found: Vec<String> = diags
            .iter()
            .map(|d| {
                format!(
                    "{} {}:{}",
                    d["code"].as_str().unwrap(),
                    d["line"],
                    d["column"]
                )
            })
            .collect();
        for want in expectations(&text) {
            let hit = if want.contains(' ') {
                found.contains(&want)
            } else {
                found
                    .iter()
                    .any(|f| f.split(' ').next() == Some(want.as_str()))
            };
            assert!(hit, "{name}: expected `{want}` among {found:#?}");
        }
        if name == "empty" {
            assert_eq!(found, vec!["empty-document 1:1"]);
        }
        let lines: Vec<String> = diags
            .iter()
            .map(|d| {
                let help = d["help"]
                    .as_str()
                    .map(|h| format!("\n    help: {h}"))
                    .unwrap_or_default();
                format!(
                    "{} {}:{} [{}] {}: {}{help}",
                    d["severity"].as_str().unwrap(),
                    d["line"],
                    d["column"],
                    d["code"].as_str().unwrap(),
                    d["path"].as_str().unwrap(),
                    d["message"].as_str().unwrap()
                )
            })
            .collect();
        insta::assert_snapshot!(name, lines.join("\n"));
    }
}

#[test]
fn human_output_shows_the_line_and_a_caret() {
    let file = root().join("tests/fixtures/invalid/unknown-fields.yaml");
    let out = sagaflow(&["validate", file.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("error[unknown-field]: unknown field `retires`"),
        "{err}"
    );
    assert!(err.contains("unknown-fields.yaml:8:5"), "{err}");
    assert!(
        err.contains("    retires: 3\n  │     ^^^^^^^ steps[0].retires"),
        "{err}"
    );
    assert!(err.contains("= help: did you mean `retry`?"), "{err}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("invalid: 3 errors"), "{stdout}");
}

#[test]
fn the_examples_are_valid() {
    let out = sagaflow(&["validate", root().join("workflows").to_str().unwrap()]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for wf in ["order", "trip-booking", "refund-approval"] {
        assert!(stdout.contains(&format!("ok: workflow `{wf}`")), "{stdout}");
    }
}

#[test]
fn several_files_fail_if_any_fails() {
    let good = root().join("workflows/order.yaml");
    let bad = root().join("tests/fixtures/invalid/names.yaml");
    let out = sagaflow(&[
        "validate",
        "--format",
        "json",
        good.to_str().unwrap(),
        bad.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report[0]["valid"], true);
    assert_eq!(report[1]["valid"], false);
}

#[test]
fn hostile_input_is_refused_quickly() {
    let dir = tempdir();
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "garbage.yaml",
            (0..4096u32)
                .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
                .collect(),
            "not-text",
        ),
        (
            "huge.yaml",
            "name: big\n".repeat(1_100_000).into_bytes(),
            "file-too-large",
        ),
        (
            "deep-flow.yaml",
            format!("{}{}", "[".repeat(10_000), "]".repeat(10_000)).into_bytes(),
            "yaml-syntax",
        ),
        (
            "deep-block.yaml",
            (0..10_000)
                .map(|i| format!("{}k{i}:\n", " ".repeat(i)))
                .collect::<String>()
                .into_bytes(),
            "",
        ),
        ("nul.yaml", b"name: a\0b\nsteps: []\n".to_vec(), ""),
    ];
    for (name, bytes, code) in cases {
        let path = dir.join(name);
        std::fs::write(&path, &bytes).unwrap();
        let started = Instant::now();
        let (out, report) = json_report(&path);
        let took = started.elapsed();
        assert_eq!(out.status.code(), Some(1), "{name}");
        let first = &report[0]["diagnostics"][0];
        if !code.is_empty() {
            assert_eq!(first["code"], code, "{name}: {report:#}");
        }
        assert!(
            first["line"].as_u64().is_some(),
            "{name} is located: {report:#}"
        );
        // Generous: a hang guard for slow CI machines; the measured figures are well under a second.
        assert!(took < Duration::from_secs(10), "{name} took {took:?}");
    }
}

#[test]
fn missing_files_are_an_error_not_a_panic() {
    let out = sagaflow(&["validate", "/nonexistent/order.yaml"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot read /nonexistent/order.yaml"));
}

#[test]
fn graph_shows_the_compensation_path() {
    let order = root().join("workflows/order.yaml");
    let out = sagaflow(&["graph", order.to_str().unwrap(), "--format", "mermaid"]);
    assert_eq!(out.status.code(), Some(0));
    let m = String::from_utf8_lossy(&out.stdout);
    assert!(m.starts_with("stateDiagram-v2"), "{m}");
    for line in [
        "[*] --> run_0",
        "run_0 --> run_1: succeeded",
        "run_1 --> undo_0: business_failure (compensation)",
        "run_2 --> undo_1: business_failure (compensation)",
        "undo_1 --> undo_0: compensated (compensation)",
        "undo_0 --> compensated: all_compensated (compensation)",
        "run_2 --> completed: succeeded",
    ] {
        assert!(m.contains(line), "missing `{line}` in\n{m}");
    }
    let dot = sagaflow(&["graph", order.to_str().unwrap(), "--format", "dot"]);
    let d = String::from_utf8_lossy(&dot.stdout);
    assert!(d.starts_with("digraph \"order\""), "{d}");
    assert!(
        d.contains("undo_0 [label=\"undo reserve\", color=orange]"),
        "{d}"
    );
}

#[test]
fn graph_of_an_invalid_file_explains_and_fails() {
    let bad = root().join("tests/fixtures/invalid/names.yaml");
    let out = sagaflow(&["graph", bad.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(out.stdout.is_empty());
    assert!(String::from_utf8_lossy(&out.stderr).contains("error[bad-name]"));
}

#[test]
fn the_published_schema_is_current() {
    let out = sagaflow(&["schema"]);
    assert_eq!(out.status.code(), Some(0));
    let served: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let file = std::fs::read_to_string(root().join("docs/workflow.schema.json"))
        .expect("docs/workflow.schema.json");
    let published: serde_json::Value = serde_json::from_str(&file).unwrap();
    assert_eq!(
        served, published,
        "docs/workflow.schema.json is stale: run `sagaflow schema > docs/workflow.schema.json`"
    );
    assert_eq!(served["properties"]["steps"]["type"], "array");
}

fn tempdir() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("sagaflow-validate-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}
