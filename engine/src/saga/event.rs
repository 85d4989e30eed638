//! The events of a saga: the public, versioned contract (docs/events.md).
//!
//! Each event is stored as a type name, a schema version and a JSON body.
//! Reading goes through [`Event::from_stored`], which upcasts older versions
//! to the current one; stored events are never rewritten.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::time::Timestamp;
use crate::dsl::spec::FailureKind;

/// The newest schema version (each event is written with the lowest that
/// describes it: [`Event::schema_version`]).
pub const SCHEMA_VERSION: u16 = 3;

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
        #[serde(default, skip_serializing_if = "Option::is_none")]
        index: Option<u32>,
        attempt: u32,
        phase: Phase,
    },
    /// The next attempt starts at `due`.
    Backoff {
        step: usize,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        index: Option<u32>,
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
    /// A stable id, unique within the instance: `timeout:1:f:2`,
    /// `backoff:2.0:c:1`, `wait-timeout:3`, `wait:3`, `deadline`. Written
    /// piece by piece (about a dozen per saga), not through `format!`.
    pub fn id(&self) -> String {
        let mut out = String::with_capacity(24);
        let number = |out: &mut String, n: u64| out.push_str(itoa::Buffer::new().format(n));
        match self {
            TimerPurpose::StepTimeout {
                step,
                index,
                attempt,
                phase,
            }
            | TimerPurpose::Backoff {
                step,
                index,
                attempt,
                phase,
            } => {
                out.push_str(match self {
                    TimerPurpose::StepTimeout { .. } => "timeout:",
                    _ => "backoff:",
                });
                number(&mut out, *step as u64);
                if let Some(i) = index {
                    out.push('.');
                    number(&mut out, u64::from(*i));
                }
                out.push_str(match phase {
                    Phase::Forward => ":f:",
                    Phase::Compensation => ":c:",
                });
                number(&mut out, u64::from(*attempt));
            }
            TimerPurpose::WaitTimeout { step } => {
                out.push_str("wait-timeout:");
                number(&mut out, *step as u64);
            }
            TimerPurpose::WaitElapsed { step } => {
                out.push_str("wait:");
                number(&mut out, *step as u64);
            }
            TimerPurpose::Deadline => out.push_str("deadline"),
        }
        out
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
        /// The branch of a parallel step, or the element of a for-each step, by position.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        index: Option<u32>,
        name: String,
        attempt: u32,
        phase: Phase,
        action: ActionKind,
        at: Timestamp,
        /// When the attempt times out (its `step_timeout` timer, armed by
        /// this event; version 3).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        timeout_due: Option<Timestamp>,
    },
    StepSucceeded {
        step: usize,
        /// The branch of a parallel step, or the element of a for-each step, by position.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        index: Option<u32>,
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
        /// The branch of a parallel step, or the element of a for-each step, by position.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        index: Option<u32>,
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
        /// The branch of a parallel step, or the element of a for-each step, by position.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        index: Option<u32>,
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
        /// The branch of a parallel step, or the element of a for-each step, by position.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        index: Option<u32>,
        name: String,
        attempt: u32,
        output: Value,
        at: Timestamp,
    },
    CompensationFailed {
        step: usize,
        /// The branch of a parallel step, or the element of a for-each step, by position.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        index: Option<u32>,
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
        /// The branch of a parallel step, or the element of a for-each step, by position.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        index: Option<u32>,
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
    /// A step's `when` was false (or null) when the step was reached: it is
    /// passed over, its output is null, and it is never compensated.
    StepSkipped {
        step: usize,
        name: String,
        at: Timestamp,
    },
    /// A parallel step started: its branches, by position, start at once.
    BranchesStarted {
        step: usize,
        name: String,
        branches: Vec<String>,
        at: Timestamp,
    },
    /// A for-each step started over these elements (`.item`, by `.index`).
    ElementsListed {
        step: usize,
        name: String,
        items: Vec<Value>,
        at: Timestamp,
    },
    /// The branches or elements of a step that are to be undone, by position:
    /// those that succeeded and those whose outcome is unknown.
    UnitsToCompensate {
        step: usize,
        name: String,
        units: Vec<u32>,
        at: Timestamp,
    },
    /// The attempt in flight was sent again after the runtime resumed the saga
    /// (a restart, or a replica taking it over), with the same idempotency key.
    /// Its timeout counts from here: `timeout_due` is the attempt's new deadline.
    AttemptReissued {
        step: usize,
        /// The branch of a parallel step, or the element of a for-each step, by position.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        index: Option<u32>,
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
            Event::StepSkipped { .. } => "StepSkipped",
            Event::BranchesStarted { .. } => "BranchesStarted",
            Event::ElementsListed { .. } => "ElementsListed",
            Event::UnitsToCompensate { .. } => "UnitsToCompensate",
        }
    }

    /// The schema version this event is written with: 3 for a start with a
    /// deadline or an attempt with a timeout (the event arms the timer), 2
    /// for the shapes version 2 brought (an attempt of a branch or element,
    /// the group events), 1 for every other. A sagaflow that knows an older
    /// version refuses a history it would misread.
    pub fn schema_version(&self) -> u16 {
        match self {
            // the event arms a timer itself, where versions 1 and 2 wrote a
            // `TimerArmed` after it: an older sagaflow would miss the timer
            Event::SagaStarted {
                deadline: Some(_), ..
            }
            | Event::StepStarted {
                timeout_due: Some(_),
                ..
            } => 3,
            // attempt 0: a step that failed before any attempt (`when`, `for_each`)
            Event::StepFailed { attempt: 0, .. } => 2,
            Event::StepStarted { index, .. }
            | Event::StepSucceeded { index, .. }
            | Event::StepFailed { index, .. }
            | Event::RetryScheduled { index, .. }
            | Event::StepCompensated { index, .. }
            | Event::CompensationFailed { index, .. }
            | Event::StepHeld { index, .. }
            | Event::AttemptReissued { index, .. } => 1 + u16::from(index.is_some()),
            Event::TimerArmed {
                purpose:
                    TimerPurpose::StepTimeout { index, .. } | TimerPurpose::Backoff { index, .. },
                ..
            } => 1 + u16::from(index.is_some()),
            Event::StepSkipped { .. }
            | Event::BranchesStarted { .. }
            | Event::ElementsListed { .. }
            | Event::UnitsToCompensate { .. } => 2,
            _ => 1,
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
        Self::decode(kind, version, &data)
    }

    /// [`Event::from_stored`] of borrowed data, which is not copied when it
    /// is of this version (the read models decode every event this way).
    pub fn from_stored_ref(kind: &str, version: u16, data: &Value) -> Result<Event, EventError> {
        if version == SCHEMA_VERSION {
            Self::decode(kind, version, data)
        } else {
            Self::from_stored(kind, version, data.clone())
        }
    }

    /// Decodes the data of a `kind` event. The type is given before the data,
    /// so serde decodes the data where it lies (in a `{"type", "data"}`
    /// object the data comes first, and serde copies it aside until the type).
    fn decode(kind: &str, version: u16, data: &Value) -> Result<Event, EventError> {
        use serde::de::value::MapDeserializer;
        use serde::Deserialize;
        let tag = Value::String(kind.to_owned());
        let fields = [("type", &tag), ("data", data)];
        let map = MapDeserializer::<_, serde_json::Error>::new(fields.into_iter());
        Event::deserialize(map).map_err(|source| {
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
/// A schema change bumps [`SCHEMA_VERSION`], adds an arm here for the old
/// version (e.g. filling in a new field's default), and adds golden
/// fixtures of the new shape under `engine/tests/events/`.
///
/// Version 2 added the `index` of a branch or element to the attempt events
/// and timer purposes, and the events `StepSkipped`, `BranchesStarted`,
/// `ElementsListed` and `UnitsToCompensate`. A version 1 body is a version 2
/// body without `index` (a plain step), so it reads unchanged.
///
/// Version 3 added `timeout_due` to `StepStarted`, and a `SagaStarted` with a
/// `deadline` arms the deadline timer: neither is followed by a `TimerArmed`
/// any more. Older bodies read unchanged: their `TimerArmed` events follow
/// (arming the same timer twice is the same as once).
fn upcast(kind: &str, version: u16, data: Value) -> Result<Value, EventError> {
    match version {
        0 => Err(EventError::TooNew(kind.to_string(), version)),
        _ => Ok(data),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Timer ids are stored (pending timers, the API, timer moves by id), so
    /// their text never changes: checked against the `format!` they were.
    #[test]
    fn timer_ids_keep_their_text() {
        let unit = |step: usize, index: Option<u32>| match index {
            Some(i) => format!("{step}.{i}"),
            None => step.to_string(),
        };
        for step in [0, 1, 9, 10, 12_345] {
            for index in [None, Some(0), Some(7), Some(u32::MAX)] {
                for attempt in [1, 2, 10, u32::MAX] {
                    for (phase, p) in [(Phase::Forward, "f"), (Phase::Compensation, "c")] {
                        let u = unit(step, index);
                        let timeout = TimerPurpose::StepTimeout {
                            step,
                            index,
                            attempt,
                            phase,
                        };
                        assert_eq!(timeout.id(), format!("timeout:{u}:{p}:{attempt}"));
                        let backoff = TimerPurpose::Backoff {
                            step,
                            index,
                            attempt,
                            phase,
                        };
                        assert_eq!(backoff.id(), format!("backoff:{u}:{p}:{attempt}"));
                    }
                }
            }
            assert_eq!(
                TimerPurpose::WaitTimeout { step }.id(),
                format!("wait-timeout:{step}")
            );
            assert_eq!(
                TimerPurpose::WaitElapsed { step }.id(),
                format!("wait:{step}")
            );
        }
        assert_eq!(TimerPurpose::Deadline.id(), "deadline");
    }
}
