//! Golden fixtures pin the stored shape of every event, version by version.
//! Each file under `tests/events/v{N}/` must keep decoding (through the
//! upcaster) into the current event, and today's events must serialize to
//! exactly the v1 files. Set `UPDATE_GOLDEN=1` to write missing files.

use std::path::PathBuf;

use sagaflow_engine::dsl::spec::FailureKind;
use sagaflow_engine::saga::{
    ActionKind, CompensationReason, Event, Phase, TimerPurpose, Timestamp, SCHEMA_VERSION,
};
use sagaflow_engine::store::NewEvent;
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
            index: None,
            name: "pay".into(),
            attempt: 2,
            phase: Phase::Forward,
            action: ActionKind::Http,
            at,
            timeout_due: None,
        },
        Event::StepSucceeded {
            step: 1,
            index: None,
            name: "pay".into(),
            attempt: 2,
            output: json!({"payment_id": "pay-7"}),
            signal: None,
            at,
        },
        Event::StepFailed {
            step: 1,
            index: None,
            name: "pay".into(),
            attempt: 1,
            kind: FailureKind::Transient,
            error: "pay: HTTP 503: busy".into(),
            retryable: true,
            at,
        },
        Event::RetryScheduled {
            step: 1,
            index: None,
            name: "pay".into(),
            attempt: 2,
            phase: Phase::Forward,
            due: Timestamp(1_800_000_000_100),
        },
        Event::TimerArmed {
            timer: "timeout:1:f:2".into(),
            purpose: TimerPurpose::StepTimeout {
                step: 1,
                index: None,
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
            index: None,
            name: "reserve".into(),
            attempt: 1,
            output: json!({"released": true}),
            at,
        },
        Event::CompensationFailed {
            step: 0,
            index: None,
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
            index: None,
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
            index: None,
            name: "pay".into(),
            attempt: 2,
            phase: Phase::Forward,
            timeout_due: Some(Timestamp(1_800_000_005_000)),
            at,
        },
        // version 2: attempts of branches and elements, and the group events
        Event::StepStarted {
            step: 2,
            index: Some(1),
            name: "hotel".into(),
            attempt: 1,
            phase: Phase::Forward,
            action: ActionKind::Http,
            at,
            timeout_due: None,
        },
        Event::StepSucceeded {
            step: 3,
            index: Some(0),
            name: "reserve_items".into(),
            attempt: 1,
            output: json!({"reservation": "r-1"}),
            signal: None,
            at,
        },
        Event::StepFailed {
            step: 3,
            index: Some(2),
            name: "reserve_items".into(),
            attempt: 1,
            kind: FailureKind::Business,
            error: "reserve_items[2]: HTTP 409: out of stock".into(),
            retryable: false,
            at,
        },
        Event::RetryScheduled {
            step: 2,
            index: Some(0),
            name: "flight".into(),
            attempt: 2,
            phase: Phase::Forward,
            due: Timestamp(1_800_000_000_100),
        },
        Event::TimerArmed {
            timer: "timeout:2.0:f:1".into(),
            purpose: TimerPurpose::StepTimeout {
                step: 2,
                index: Some(0),
                attempt: 1,
                phase: Phase::Forward,
            },
            due: Timestamp(1_800_000_005_000),
        },
        Event::StepCompensated {
            step: 3,
            index: Some(1),
            name: "reserve_items".into(),
            attempt: 1,
            output: json!({"released": true}),
            at,
        },
        Event::CompensationFailed {
            step: 2,
            index: Some(1),
            name: "hotel".into(),
            attempt: 1,
            kind: FailureKind::Transient,
            error: "hotel: HTTP 503".into(),
            retryable: true,
            at,
        },
        Event::StepHeld {
            step: 3,
            index: Some(4),
            name: "reserve_items".into(),
            attempt: 1,
            phase: Phase::Forward,
            at,
        },
        Event::AttemptReissued {
            step: 2,
            index: Some(0),
            name: "flight".into(),
            attempt: 1,
            phase: Phase::Forward,
            timeout_due: None,
            at,
        },
        Event::StepSkipped {
            step: 1,
            name: "insure".into(),
            at,
        },
        Event::BranchesStarted {
            step: 2,
            name: "book".into(),
            branches: vec!["flight".into(), "hotel".into()],
            at,
        },
        Event::ElementsListed {
            step: 3,
            name: "reserve_items".into(),
            items: vec![json!({"sku": "a", "qty": 1}), json!({"sku": "b", "qty": 2})],
            at,
        },
        Event::UnitsToCompensate {
            step: 3,
            name: "reserve_items".into(),
            units: vec![0, 1],
            at,
        },
        // version 3: an attempt that arms its own timeout (the SagaStarted
        // above, with its deadline, is version 3 too)
        Event::StepStarted {
            step: 1,
            index: Some(2),
            name: "pay".into(),
            attempt: 2,
            phase: Phase::Forward,
            action: ActionKind::Http,
            at,
            timeout_due: Some(Timestamp(1_800_000_005_000)),
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
        | Event::AttemptReissued { .. }
        | Event::StepSkipped { .. }
        | Event::BranchesStarted { .. }
        | Event::ElementsListed { .. }
        | Event::UnitsToCompensate { .. } => {}
    }
}

fn dir(version: u16) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(format!("tests/events/v{version}"))
}

#[test]
fn every_event_type_has_a_fixture_and_matches_it() {
    assert_eq!(
        SCHEMA_VERSION, 3,
        "a new schema version needs its own fixtures directory and upcasters"
    );
    for event in samples() {
        let version = event.schema_version();
        let path = dir(version).join(format!("{}.json", event.type_name()));
        let data = event.data();
        if !path.exists() && std::env::var("UPDATE_GOLDEN").is_ok() {
            std::fs::create_dir_all(dir(version)).unwrap();
            std::fs::write(&path, serde_json::to_string_pretty(&data).unwrap() + "\n").unwrap();
        }
        let golden: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(&path)
                .unwrap_or_else(|_| panic!("missing {}", path.display())),
        )
        .unwrap();
        assert_eq!(data, golden, "{} no longer serializes as its v{version} fixture: a stored-shape change needs a new schema version", event.type_name());
        assert_eq!(
            Event::from_stored(event.type_name(), version, golden).unwrap(),
            event
        );
    }
}

/// Each event is written with the lowest version that describes it: 3 when
/// it arms a timer itself (a deadline, an attempt's timeout), 2 with an
/// `index` or a group event, else 1 (what an older sagaflow still reads).
#[test]
fn each_event_keeps_the_lowest_version_that_describes_it() {
    for event in samples() {
        let data = event.data();
        let arms_a_timer = data.get("timeout_due").is_some() && event.type_name() == "StepStarted"
            || data.get("deadline").is_some_and(|d| !d.is_null())
                && event.type_name() == "SagaStarted";
        let has_index = data.get("index").is_some() || data.pointer("/purpose/index").is_some();
        let new_type = matches!(
            event,
            Event::StepSkipped { .. }
                | Event::BranchesStarted { .. }
                | Event::ElementsListed { .. }
                | Event::UnitsToCompensate { .. }
        );
        let want = if arms_a_timer {
            3
        } else if has_index || new_type {
            2
        } else {
            1
        };
        assert_eq!(event.schema_version(), want, "{}", event.type_name());
    }
}

/// A saga event reaches the store typed, and the store writes its text from
/// it directly (not through a JSON value): that text is byte for byte the
/// text of the event's data as a value, and decodes back into the event.
#[test]
fn every_event_kept_typed_is_written_as_its_data() {
    for event in samples() {
        let kind = event.type_name();
        let new = NewEvent::from(event.clone());
        let text = new.data.json_text();
        let read: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(read, event.data(), "{kind}: {text}");
        assert_eq!(text, serde_json::to_string(&read).unwrap(), "{kind}");
        assert_eq!(
            Event::from_stored(kind, new.schema_version, read).unwrap(),
            event,
            "{kind}"
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
    // a fixture per sample, and the shapes only older versions wrote
    assert_eq!(checked, samples().len() + WRITTEN_NO_MORE.len());
    for f in WRITTEN_NO_MORE {
        assert!(dir(1).parent().unwrap().join(f).exists(), "{f}");
    }
}

/// Fixtures of shapes today's sagaflow no longer writes, still read: a
/// start with a deadline was version 1 (with a `TimerArmed` after it).
const WRITTEN_NO_MORE: &[&str] = &["v1/SagaStarted.json"];

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
