//! The events of a saga: the public, versioned contract (docs/events.md).
//!
//! Each event is stored as a type name, a schema version and a JSON body.
//! Reading goes through [`Event::from_stored`], which upcasts older versions
//! to the current one; stored events are never rewritten.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::time::Timestamp;
use crate::dsl::spec::FailureKind;

/// The schema version every event is written with today.
pub const SCHEMA_VERSION: u16 = 1;

/// Whether an attempt performs a step or undoes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    Forward,
    Compensation,
}

/// What kind of action a step performs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ActionKind {
    Http,
    Task,
    Wait,
}

/// Why a saga compensates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CompensationReason {
    Failure,
    Deadline,
    Cancel,
}

/// What a timer is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum TimerPurpose {
    /// An attempt that has not answered by `due` times out.
    StepTimeout {
        step: usize,
        attempt: u32,
        phase: Phase,
    },
    /// The next attempt starts at `due`.
    Backoff {
        step: usize,
        attempt: u32,
        phase: Phase,
    },
    /// A signal that has not come by `due` fails the wait.
    WaitTimeout { step: usize },
    /// A `wait: { duration }` step ends at `due`.
    WaitElapsed { step: usize },
    /// The saga's deadline.
    Deadline,
}

impl TimerPurpose {
    /// A stable id, unique within the instance.
    pub fn id(&self) -> String {
        let ph = |p: &Phase| match p {
            Phase::Forward => "f",
            Phase::Compensation => "c",
        };
        match self {
            TimerPurpose::StepTimeout {
                step,
                attempt,
                phase,
            } => format!("timeout:{step}:{}:{attempt}", ph(phase)),
            TimerPurpose::Backoff {
                step,
                attempt,
                phase,
            } => format!("backoff:{step}:{}:{attempt}", ph(phase)),
            TimerPurpose::WaitTimeout { step } => format!("wait-timeout:{step}"),
            TimerPurpose::WaitElapsed { step } => format!("wait:{step}"),
            TimerPurpose::Deadline => "deadline".into(),
        }
    }
}

/// The types of the events that end a saga (a retry after `SagaFailed`
/// appends more).
pub const ENDINGS: [&str; 4] = [
    "SagaCompleted",
    "SagaCompensated",
    "SagaFailed",
    "SagaCancelled",
];

/// Something that happened to a saga instance.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", content = "data")]
pub enum Event {
    SagaStarted {
        workflow: String,
        version: u32,
        definition_hash: String,
        input: Value,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        idempotency_key: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        deadline: Option<Timestamp>,
        started_at: Timestamp,
    },
    /// An attempt of a step (or of its compensation) began.
    StepStarted {
        step: usize,
        name: String,
        attempt: u32,
        phase: Phase,
        action: ActionKind,
        at: Timestamp,
    },
    StepSucceeded {
        step: usize,
        name: String,
        attempt: u32,
        output: Value,
        /// The signal whose payload completed a wait step.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        signal: Option<String>,
        at: Timestamp,
    },
    StepFailed {
        step: usize,
        name: String,
        attempt: u32,
        kind: FailureKind,
        error: String,
        /// Whether another attempt follows.
        retryable: bool,
        at: Timestamp,
    },
    /// Another attempt starts at `due`.
    RetryScheduled {
        step: usize,
        name: String,
        attempt: u32,
        phase: Phase,
        due: Timestamp,
    },
    TimerArmed {
        timer: String,
        purpose: TimerPurpose,
        due: Timestamp,
    },
    TimerFired {
        timer: String,
        at: Timestamp,
    },
    /// An operator moved a pending timer (extended a deadline, fired a wait now).
    TimerMoved {
        timer: String,
        from: Timestamp,
        due: Timestamp,
        at: Timestamp,
    },
    SignalReceived {
        name: String,
        payload: Value,
        at: Timestamp,
    },
    CancelRequested {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
        at: Timestamp,
    },
    CompensationStarted {
        reason: CompensationReason,
        /// The step whose failure (or interruption) started it.
        step: usize,
        at: Timestamp,
    },
    StepCompensated {
        step: usize,
        name: String,
        attempt: u32,
        output: Value,
        at: Timestamp,
    },
    CompensationFailed {
        step: usize,
        name: String,
        attempt: u32,
        kind: FailureKind,
        error: String,
        retryable: bool,
        at: Timestamp,
    },
    SagaCompleted {
        output: Value,
        at: Timestamp,
    },
    SagaCompensated {
        at: Timestamp,
    },
    /// The saga stopped and needs an operator.
    SagaFailed {
        reason: String,
        at: Timestamp,
    },
    SagaCancelled {
        at: Timestamp,
    },
    /// An operator paused the saga: attempts in flight finish, no new one starts until it resumes.
    SagaPaused {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
        at: Timestamp,
    },
    SagaResumed {
        at: Timestamp,
    },
    /// An attempt that was due while the saga was paused; it starts when the saga resumes.
    StepHeld {
        step: usize,
        name: String,
        attempt: u32,
        phase: Phase,
        at: Timestamp,
    },
    /// An operator retried a failed saga from the step (or compensation) that failed.
    SagaRetried {
        step: usize,
        name: String,
        phase: Phase,
        at: Timestamp,
    },
    /// The attempt in flight was sent again after the runtime resumed the saga
    /// (a restart, or a replica taking it over), with the same idempotency key.
    /// Its timeout counts from here: `timeout_due` is the attempt's new deadline.
    AttemptReissued {
        step: usize,
        name: String,
        attempt: u32,
        phase: Phase,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        timeout_due: Option<Timestamp>,
        at: Timestamp,
    },
}

/// Why a stored event cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum EventError {
    #[error(
        "event type `{0}` has version {1}; this sagaflow reads versions 1 to {SCHEMA_VERSION}"
    )]
    TooNew(String, u16),
    #[error("event type `{0}` is unknown")]
    UnknownType(String),
    #[error("event `{kind}` v{version} does not decode: {source}")]
    Decode {
        kind: String,
        version: u16,
        #[source]
        source: serde_json::Error,
    },
}

impl Event {
    /// The type name, as stored and shown in histories.
    pub fn type_name(&self) -> &'static str {
        match self {
            Event::SagaStarted { .. } => "SagaStarted",
            Event::StepStarted { .. } => "StepStarted",
            Event::StepSucceeded { .. } => "StepSucceeded",
            Event::StepFailed { .. } => "StepFailed",
            Event::RetryScheduled { .. } => "RetryScheduled",
            Event::TimerArmed { .. } => "TimerArmed",
            Event::TimerFired { .. } => "TimerFired",
            Event::TimerMoved { .. } => "TimerMoved",
            Event::SignalReceived { .. } => "SignalReceived",
            Event::CancelRequested { .. } => "CancelRequested",
            Event::CompensationStarted { .. } => "CompensationStarted",
            Event::StepCompensated { .. } => "StepCompensated",
            Event::CompensationFailed { .. } => "CompensationFailed",
            Event::SagaCompleted { .. } => "SagaCompleted",
            Event::SagaCompensated { .. } => "SagaCompensated",
            Event::SagaFailed { .. } => "SagaFailed",
            Event::SagaCancelled { .. } => "SagaCancelled",
            Event::SagaPaused { .. } => "SagaPaused",
            Event::SagaResumed { .. } => "SagaResumed",
            Event::StepHeld { .. } => "StepHeld",
            Event::SagaRetried { .. } => "SagaRetried",
            Event::AttemptReissued { .. } => "AttemptReissued",
        }
    }

    /// The JSON body (without the type), as stored.
    pub fn data(&self) -> Value {
        match serde_json::to_value(self) {
            Ok(Value::Object(mut o)) => o.remove("data").unwrap_or(Value::Null),
            _ => Value::Null,
        }
    }

    /// Reads a stored event of any known version.
    pub fn from_stored(kind: &str, version: u16, data: Value) -> Result<Event, EventError> {
        if version > SCHEMA_VERSION {
            return Err(EventError::TooNew(kind.to_string(), version));
        }
        let data = upcast(kind, version, data)?;
        let wrapped = serde_json::json!({"type": kind, "data": data});
        serde_json::from_value(wrapped).map_err(|source| {
            if source.to_string().contains("unknown variant") {
                EventError::UnknownType(kind.to_string())
            } else {
                EventError::Decode {
                    kind: kind.to_string(),
                    version,
                    source,
                }
            }
        })
    }

    /// Whether this event ends the saga.
    pub fn is_terminal(&self) -> bool {
        matches!(
            self,
            Event::SagaCompleted { .. }
                | Event::SagaCompensated { .. }
                | Event::SagaFailed { .. }
                | Event::SagaCancelled { .. }
        )
    }
}

/// Brings an event body from `version` up to [`SCHEMA_VERSION`].
///
/// Version 1 is the first published schema, so no older shape exists yet.
/// A schema change bumps [`SCHEMA_VERSION`], adds an arm here for the old
/// version (e.g. filling in a new field's default), and adds a golden
/// fixture of the old shape under `engine/tests/events/`.
fn upcast(kind: &str, version: u16, data: Value) -> Result<Value, EventError> {
    match version {
        0 => Err(EventError::TooNew(kind.to_string(), version)),
        _ => Ok(data),
    }
}
