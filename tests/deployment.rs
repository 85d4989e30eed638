//! docker-compose.yml and the Dockerfile cannot be run here (no Docker engine);
//! these tests keep them valid and consistent with the binary.

use std::collections::BTreeSet;

use sagaflow_engine::dsl::yaml;
use serde_json::Value;

fn read(name: &str) -> String {
    std::fs::read_to_string(format!("{}/{name}", env!("CARGO_MANIFEST_DIR"))).unwrap()
}

fn compose() -> Value {
    yaml::parse(&read("docker-compose.yml"), yaml::Limits::default())
        .expect("docker-compose.yml is YAML")
        .to_json()
}

/// The `SAGAFLOW_*` variables `sagaflow serve` reads (from its help).
fn serve_variables() -> BTreeSet<String> {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_sagaflow"))
        .args(["serve", "--help"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|w| w.starts_with("SAGAFLOW_"))
        .map(str::to_string)
        .collect()
}

#[test]
fn compose_starts_sagaflow_after_healthy_stores() {
    let c = compose();
    let services = c["services"].as_object().expect("services");
    for (name, s) in services {
        assert!(
            s["healthcheck"]["test"].is_array(),
            "{name} has a health check"
        );
        let image = s["image"].as_str().unwrap_or_default();
        assert!(
            image.contains(':') && !image.ends_with(":latest"),
            "{name}'s image is pinned: {image}"
        );
    }
    let sf = &c["services"]["sagaflow"];
    assert_eq!(sf["depends_on"]["postgres"]["condition"], "service_healthy");
    assert_eq!(
        sf["depends_on"]["eventstore"]["condition"],
        "service_healthy"
    );
    assert_eq!(sf["build"]["dockerfile"], "Dockerfile");
    let events = sf["environment"]["SAGAFLOW_STORE"].as_str().unwrap();
    assert_eq!(events, "esdb://eventstore:2113?tls=false");
    assert_eq!(
        c["services"]["eventstore"]["environment"]["EVENTSTORE_INSECURE"],
        "true"
    );
    let store = sf["environment"]["SAGAFLOW_READ_MODELS"].as_str().unwrap();
    assert!(
        store.starts_with("postgres://") && store.contains("@postgres:5432/"),
        "{store}"
    );
    let pg = &c["services"]["postgres"]["environment"];
    assert!(store.contains(&format!(
        "{}:{}@",
        pg["POSTGRES_USER"].as_str().unwrap(),
        pg["POSTGRES_PASSWORD"].as_str().unwrap()
    )));
    // replicas share the stores, never a data directory
    let replicas = sf["deploy"]["replicas"].as_u64().unwrap();
    assert!(replicas >= 2, "{replicas}");
    assert!(sf["volumes"].is_null(), "one data volume for all replicas");
    let ports = sf["ports"][0].as_str().unwrap();
    let (range, _) = ports.split_once(':').unwrap();
    let (lo, hi) = range.split_once('-').unwrap();
    assert_eq!(
        hi.parse::<u64>().unwrap() - lo.parse::<u64>().unwrap() + 1,
        replicas,
        "a host port per replica: {ports}"
    );
    assert_eq!(
        sf["environment"]["SAGAFLOW_NO_DEMO"], "true",
        "the demo services (no token, an in-memory ledger) are off in production"
    );
    let known = serve_variables();
    for var in sf["environment"].as_object().unwrap().keys() {
        assert!(
            known.contains(var),
            "sagaflow serve reads {var} ({known:?})"
        );
    }
}

#[test]
fn the_dockerfile_builds_in_one_stage_and_runs_from_another() {
    let d = read("Dockerfile");
    let stages: Vec<&str> = d.lines().filter(|l| l.starts_with("FROM ")).collect();
    assert_eq!(stages.len(), 2, "{stages:?}");
    assert!(stages[0].contains(" AS build") && stages[0].contains("rust:"));
    assert!(d.contains("COPY --from=build /src/target/release/sagaflow"));
    assert!(d.contains("cargo build --release --locked"));
    assert!(d.contains("EXPOSE 8080") && d.contains("/ready"));
    let rust = stages[0]
        .split(':')
        .nth(1)
        .unwrap()
        .split('-')
        .next()
        .unwrap();
    assert!(
        read("Cargo.toml").contains(&format!("rust-version = \"{rust}\"")),
        "the build image is the workspace's rust-version ({rust})"
    );
    let known = serve_variables();
    for var in d
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|w| w.starts_with("SAGAFLOW_"))
    {
        assert!(known.contains(var), "sagaflow serve reads {var}");
    }
}
