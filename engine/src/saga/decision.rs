//! What goes into [`decide`](super::decide) and what comes out: inputs,
//! the actions it asks the runtime to perform, and its refusals.

use serde_json::Value;

use super::event::{Event, Phase};
use super::time::Timestamp;
use crate::dsl::spec::FailureKind;

/// Something that happened outside the core.
#[derive(Debug, Clone, PartialEq)]
pub enum Input {
    /// Start the saga (the stream is empty).
    Start {
        input: Value,
        idempotency_key: Option<String>,
    },
    /// An attempt answered.
    Succeeded {
        step: usize,
        /// The branch or element, for a parallel or for-each step.
        index: Option<u32>,
        attempt: u32,
        phase: Phase,
        output: Value,
    },
    /// An attempt failed.
    Failed {
        step: usize,
        /// The branch or element, for a parallel or for-each step.
        index: Option<u32>,
        attempt: u32,
        phase: Phase,
        kind: FailureKind,
        error: String,
    },
    TimerFired {
        timer: String,
    },
    Signal {
        name: String,
        payload: Value,
    },
    Cancel {
        reason: Option<String>,
    },
    /// An operator moves a pending timer to `due` (now, to fire it at once).
    MoveTimer {
        timer: String,
        due: Timestamp,
    },
    /// An operator pauses the saga.
    Pause {
        reason: Option<String>,
    },
    /// An operator resumes a paused saga.
    Resume,
    /// An operator retries a failed saga from the step that failed.
    Retry,
    /// The runtime resumed the saga (a restart, a replica taking it over):
    /// send the attempt in flight again, its timeout counting from now.
    Reissue,
    /// The runtime could not decide, render or perform for this saga (a bug,
    /// or a workflow that breaks the engine): it stops, failed, for an
    /// operator to retry or cancel. Other sagas are untouched.
    Fault {
        reason: String,
    },
}

impl Input {
    /// The answer to attempt `f`: its output, or how it failed.
    pub fn answer(
        f: super::state::InFlight,
        result: Result<Value, (FailureKind, String)>,
    ) -> Input {
        let super::state::InFlight {
            step,
            index,
            attempt,
            phase,
        } = f;
        match result {
            Ok(output) => Input::Succeeded {
                step,
                index,
                attempt,
                phase,
                output,
            },
            Err((kind, error)) => Input::Failed {
                step,
                index,
                attempt,
                phase,
                kind,
                error,
            },
        }
    }
}

/// An effect for the runtime to carry out.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Perform an attempt: call the HTTP endpoint or offer the task.
    Perform {
        step: usize,
        index: Option<u32>,
        attempt: u32,
        phase: Phase,
    },
    /// Deliver `TimerFired { timer }` at `due`.
    ArmTimer { timer: String, due: Timestamp },
    /// The saga reached an end.
    Finished,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Decision {
    pub events: Vec<Event>,
    pub actions: Vec<Action>,
}

/// Why an input was refused; nothing is written.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    #[error("the saga has already started")]
    AlreadyStarted,
    #[error("the saga has not started")]
    NotStarted,
    #[error("the saga has ended ({0})")]
    Finished(&'static str),
    #[error("the saga is past its pivot step and will complete; it can no longer be cancelled")]
    PastPivot,
    #[error("the saga is already compensating after a {0}")]
    Compensating(&'static str),
    #[error("no pending timer `{0}`")]
    NoSuchTimer(String),
    #[error("the saga is not paused")]
    NotPaused,
    #[error("only a failed saga can be retried; this one is {0}")]
    NotFailed(&'static str),
}
