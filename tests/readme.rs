//! The README's examples, run as a newcomer runs them: every ```sh block in
//! order as one shell session, then the ```python block with a client
//! generated from the served spec. Only the address (`localhost:8080`) and
//! the token (`export TOKEN=sf_...`) are the test server's.

mod common;

use std::process::Command;

use common::{run_tool as run, serve, venv_bin, ADMIN_TOKEN};

const README: &str = include_str!("../README.md");

/// The fenced blocks whose info string is `lang`, in order.
fn blocks(lang: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut current: Option<String> = None;
    for line in README.lines() {
        match (&mut current, line.strip_prefix("```")) {
            (None, Some(info)) if info.trim() == lang => current = Some(String::new()),
            (Some(_), Some("")) => out.push(current.take().unwrap()),
            (Some(text), _) => {
                text.push_str(line);
                text.push('\n');
            }
            (None, _) => {}
        }
    }
    out
}

fn local(text: &str, url: &str) -> String {
    let host = url.trim_start_matches("http://");
    text.replace("127.0.0.1:8080", host)
        .replace("localhost:8080", host)
}

#[test]
fn the_readme_examples_run_verbatim_and_print_the_final_status() {
    let (s, dir) = serve("readme", &[]);
    let root = env!("CARGO_MANIFEST_DIR");

    let shell: String = blocks("sh")
        .iter()
        .flat_map(|b| b.lines().map(str::to_string).collect::<Vec<_>>())
        .filter(|l| !l.starts_with("export TOKEN="))
        .map(|l| local(&l, &s.url) + "\n")
        .collect();
    assert!(
        shell.contains("signals/approval"),
        "the sh blocks were found"
    );
    let mut cmd = Command::new("bash");
    cmd.args(["-euo", "pipefail", "-c", &shell])
        .current_dir(root)
        .env("TOKEN", ADMIN_TOKEN);
    let out = run(cmd, "the README's shell examples");
    assert_eq!(out.matches(r#""status":"completed""#).count(), 2, "{out}");
    assert!(out.contains(r#""status":"shipped""#), "{out}");
    assert!(out.contains(r#""status":"waiting""#), "{out}");
    assert!(out.contains(r#""event_type":"SagaCompleted""#), "{out}");

    // the Python example, with the client the README's generator command makes
    let mut gen = Command::new(venv_bin("openapi-python-client"));
    gen.args(["generate", "--url", &format!("{}/openapi.json", s.url)])
        .args(["--meta", "none", "--output-path", "sagaflow_client"])
        .current_dir(&dir);
    run(gen, "openapi-python-client");
    let python = blocks("python");
    assert_eq!(python.len(), 1, "one python example");
    let mut py = Command::new(venv_bin("python"));
    py.args(["-c", &local(&python[0], &s.url)])
        .current_dir(root)
        .env("PYTHONPATH", &dir)
        .env("TOKEN", ADMIN_TOKEN);
    let out = run(py, "the README's Python example");
    assert!(out.contains("workflow order version 1"), "{out}");
    assert!(out.contains("order o-3: shipped"), "{out}");
}
