//! The service as its users reach it, with their tools: a Python client
//! generated from the served spec, Swagger UI and the operator console in
//! headless Chromium, and schemathesis fuzzing the API against its spec.
//!
//! The tools come from `scripts/test-tools.sh` (the test command runs it):
//! a virtualenv with `tests/clients/requirements.txt`, and Debian's
//! chromium and chromium-driver. `SAGAFLOW_TEST_VENV` points elsewhere.

mod common;

use std::path::PathBuf;
use std::process::Command;

use common::{run_tool as run, serve, venv_bin, ADMIN_TOKEN, CLIENT_TOKEN};

fn script(name: &str) -> String {
    format!("{}/tests/clients/{name}", env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn a_generated_python_client_runs_orders_and_a_worker() {
    let (s, dir) = serve("python-client", &[]);
    let mut cmd = Command::new(venv_bin("python"));
    cmd.arg(script("python_client.py"))
        .arg(&s.url)
        .arg(&dir)
        .env("SAGAFLOW_TOKEN", ADMIN_TOKEN);
    let out = run(cmd, "the Python client");
    assert!(
        out.contains("python client: orders shipped / compensated, trip completed"),
        "{out}"
    );
}

#[test]
fn swagger_ui_creates_an_order_in_headless_chromium() {
    let (s, dir) = serve("swagger-ui", &[]);
    let shots = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/target/test-output"));
    let mut cmd = Command::new(venv_bin("python"));
    cmd.arg(script("swagger_ui.py"))
        .arg(&s.url)
        .arg(&shots)
        .env("SAGAFLOW_TOKEN", CLIENT_TOKEN)
        .env("HOME", &dir);
    let out = run(cmd, "the browser test");
    assert!(out.contains("created from the page"), "{out}");
    assert!(shots.join("swagger-ui-create-order.png").exists());
}

#[test]
fn the_console_shows_and_drives_sagas_in_headless_chromium() {
    let (s, dir) = serve("console", &[]);
    let shots = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/target/test-output"));
    let mut cmd = Command::new(venv_bin("python"));
    cmd.arg(script("console.py"))
        .arg(&s.url)
        .arg(&shots)
        .env("SAGAFLOW_TOKEN", ADMIN_TOKEN)
        .env("SAGAFLOW_CLIENT_TOKEN", CLIENT_TOKEN)
        .env("HOME", &dir);
    let out = run(cmd, "the console test");
    assert!(out.contains("approval sent, paused and resumed"), "{out}");
    for shot in [
        "declined-order",
        "refund-approved",
        "paused",
        "publish-errors",
        "overview",
    ] {
        assert!(shots.join(format!("console-{shot}.png")).exists(), "{shot}");
    }
    assert!(!s.log().contains("panicked"), "{}", s.log());
}

#[test]
fn schemathesis_finds_no_server_error_and_no_answer_outside_the_spec() {
    let (s, dir) = serve("schemathesis", &[]);
    let mut cmd = Command::new(venv_bin("st"));
    cmd.current_dir(&dir)
        .args(["run", &format!("{}/openapi.json", s.url)])
        .args(["-H", &format!("Authorization: Bearer {ADMIN_TOKEN}")])
        .args([
            "--checks",
            "not_a_server_error,status_code_conformance,content_type_conformance,response_headers_conformance,response_schema_conformance",
        ])
        .args(["--max-examples", "25", "--max-time", "150", "--request-timeout", "70"])
        .args(["--seed", "20261127"])
        // The change stream is a server-sent event stream: its spec follows
        // poem-openapi's convention (an array of events, format `event-stream`),
        // which schemathesis reads as the schema of one event. tests/serve_api.rs
        // checks the stream itself.
        .args(["--exclude-path", "/changes"])
        .env("HOME", &dir)
        .env("SCHEMATHESIS_TELEMETRY", "false");
    let out = run(cmd, "schemathesis");
    assert!(out.contains("Tested: "), "{out}");
    assert!(
        !s.log().contains("panicked"),
        "the server panicked:\n{}",
        s.log()
    );
}
