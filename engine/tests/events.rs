//! Golden fixtures pin the stored shape of every event, version by version.
//! Each file under `tests/events/v{N}/` must keep decoding (through the
//! upcaster) into the current event, and today's events must serialize to
//! exactly the v1 files. Set `UPDATE_GOLDEN=1` to write missing files.

use std::path::PathBuf;

use sagaflow_engine::dsl::spec::FailureKind;
use sagaflow_engine::saga::{
    ActionKind, CompensationReason, Event, Phase, TimerPurpose, Timestamp, SCHEMA_VERSION,
};
use serde_json::json;

fn samples() -> Vec<Event> {
    let at = Timestamp(1_800_000_000_000);
    vec![
        Event::SagaStarted {
            workflow: "order".into(),
            version: 1,
            definition_hash: "39022d6fd3efe083".into(),
            input: json!({"order_id": "o-1", "amount": 120.5}),
            idempotency_key: Some("order-1".into()),
            deadline: Some(Timestamp(1_800_000_600_000)),
            started_at: at,
        },
        Event::StepStarted {
            step: 1,
            name: "pay".into(),
            attempt: 2,
            phase: Phase::Forward,
            action: ActionKind::Http,
            at,
        },
        Event::StepSucceeded {
            step: 1,
            name: "pay".into(),
            attempt: 2,
            output: json!({"payment_id": "pay-7"}),
            signal: None,
            at,
        },
        Event::StepFailed {
            step: 1,
            name: "pay".into(),
            attempt: 1,
            kind: FailureKind::Transient,
            error: "pay: HTTP 503: busy".into(),
            retryable: true,
            at,
        },
        Event::RetryScheduled {
            step: 1,
            name: "pay".into(),
            attempt: 2,
            phase: Phase::Forward,
            due: Timestamp(1_800_000_000_100),
        },
        Event::TimerArmed {
            timer: "timeout:1:f:2".into(),
            purpose: TimerPurpose::StepTimeout {
                step: 1,
                attempt: 2,
                phase: Phase::Forward,
            },
            due: Timestamp(1_800_000_005_000),
        },
        Event::TimerFired {
            timer: "deadline".into(),
            at,
        },
        Event::TimerMoved {
            timer: "deadline".into(),
            from: Timestamp(1_800_000_600_000),
            due: Timestamp(1_800_003_600_000),
            at,
        },
        Event::SignalReceived {
            name: "approval".into(),
            payload: json!({"approved_by": "kim"}),
            at,
        },
        Event::CancelRequested {
            reason: Some("customer asked".into()),
            at,
        },
        Event::CompensationStarted {
            reason: CompensationReason::Failure,
            step: 1,
            at,
        },
        Event::StepCompensated {
            step: 0,
            name: "reserve".into(),
            attempt: 1,
            output: json!({"released": true}),
            at,
        },
        Event::CompensationFailed {
            step: 0,
            name: "reserve".into(),
            attempt: 3,
            kind: FailureKind::Transient,
            error: "reserve: HTTP 500".into(),
            retryable: false,
            at,
        },
        Event::SagaCompleted {
            output: json!({"shipment_id": "ship-3"}),
            at,
        },
        Event::SagaCompensated { at },
        Event::SagaFailed {
            reason: "reserve: HTTP 500".into(),
            at,
        },
        Event::SagaCancelled { at },
        Event::SagaPaused {
            reason: Some("supplier outage".into()),
            at,
        },
        Event::SagaResumed { at },
        Event::StepHeld {
            step: 1,
            name: "pay".into(),
            attempt: 1,
            phase: Phase::Forward,
            at,
        },
        Event::SagaRetried {
            step: 0,
            name: "reserve".into(),
            phase: Phase::Compensation,
            at,
        },
        Event::AttemptReissued {
            step: 1,
            name: "pay".into(),
            attempt: 2,
            phase: Phase::Forward,
            timeout_due: Some(Timestamp(1_800_000_005_000)),
            at,
        },
    ]
}

/// Fails to compile when an event type is added without a sample above.
#[allow(dead_code)]
fn every_variant_has_a_sample(e: &Event) {
    match e {
        Event::SagaStarted { .. }
        | Event::StepStarted { .. }
        | Event::StepSucceeded { .. }
        | Event::StepFailed { .. }
        | Event::RetryScheduled { .. }
        | Event::TimerArmed { .. }
        | Event::TimerFired { .. }
        | Event::TimerMoved { .. }
        | Event::SignalReceived { .. }
        | Event::CancelRequested { .. }
        | Event::CompensationStarted { .. }
        | Event::StepCompensated { .. }
        | Event::CompensationFailed { .. }
        | Event::SagaCompleted { .. }
        | Event::SagaCompensated { .. }
        | Event::SagaFailed { .. }
        | Event::SagaCancelled { .. }
        | Event::SagaPaused { .. }
        | Event::SagaResumed { .. }
        | Event::StepHeld { .. }
        | Event::SagaRetried { .. }
        | Event::AttemptReissued { .. } => {}
    }
}

fn dir(version: u16) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(format!("tests/events/v{version}"))
}

#[test]
fn every_event_type_has_a_fixture_and_matches_it() {
    assert_eq!(
        SCHEMA_VERSION, 1,
        "a new schema version needs its own fixtures directory and upcasters"
    );
    for event in samples() {
        let path = dir(1).join(format!("{}.json", event.type_name()));
        let data = event.data();
        if !path.exists() && std::env::var("UPDATE_GOLDEN").is_ok() {
            std::fs::write(&path, serde_json::to_string_pretty(&data).unwrap() + "\n").unwrap();
        }
        let golden: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(&path)
                .unwrap_or_else(|_| panic!("missing {}", path.display())),
        )
        .unwrap();
        assert_eq!(data, golden, "{} no longer serializes as its v1 fixture: a stored-shape change needs a new schema version", event.type_name());
        assert_eq!(
            Event::from_stored(event.type_name(), 1, golden).unwrap(),
            event
        );
    }
}

#[test]
fn every_fixture_of_every_version_still_decodes() {
    let mut checked = 0;
    for version in 1..=SCHEMA_VERSION {
        for entry in std::fs::read_dir(dir(version)).unwrap() {
            let path = entry.unwrap().path();
            let kind = path.file_stem().unwrap().to_str().unwrap().to_string();
            let data: serde_json::Value =
                serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
            Event::from_stored(&kind, version, data)
                .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            checked += 1;
        }
    }
    assert_eq!(checked, samples().len());
}

#[test]
fn the_public_catalogue_lists_every_event() {
    let doc = std::fs::read_to_string(
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../docs/events.md"),
    )
    .expect("docs/events.md");
    for event in samples() {
        assert!(
            doc.contains(&format!("### {}\n", event.type_name())),
            "docs/events.md lacks {}",
            event.type_name()
        );
    }
}
