//! What the runtime refuses or fails at, told apart so the API can map each to a status.

use uuid::Uuid;

use crate::diagnostic::Diagnostic;
use crate::saga::{EventError, Rejection, Timestamp};
use crate::store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("no workflow named `{0}`")]
    UnknownWorkflow(String),
    #[error("workflow `{0}` has no version {1}")]
    UnknownVersion(String, u32),
    #[error("no instance {0}")]
    UnknownInstance(Uuid),
    #[error(
        "instance {id} ended long enough ago to be removed (retention){}",
        at(removed_at)
    )]
    Removed {
        id: Uuid,
        removed_at: Option<Timestamp>,
    },
    #[error("the Idempotency-Key started instance {id}, which was removed (retention){}; the key cannot start another while its tombstone is kept", at(removed_at))]
    StartOfRemoved {
        id: Uuid,
        removed_at: Option<Timestamp>,
    },
    #[error("archiving removed instances failed: {0}")]
    Archive(String),
    #[error("instance {0} has no revision {1} (its revisions are 0 to {2} minus one)")]
    NoSuchRevision(Uuid, u64, u64),
    #[error("no task {0} is waiting for an answer")]
    UnknownTask(String),
    #[error("task {0} belongs to an attempt that has ended (answered, timed out, cancelled, paused or compensated); its answer is not used")]
    TaskGone(String),
    #[error("the workflow is invalid: {}", invalid_summary(.0))]
    InvalidWorkflow(Vec<Diagnostic>),
    #[error("version {version} of `{name}` is already published with a different definition; publish it as a new version")]
    VersionConflict { name: String, version: u32 },
    #[error("the input does not match the workflow's input schema")]
    InvalidInput(Vec<InputError>),
    #[error("the Idempotency-Key was already used to start an instance with a different input")]
    IdempotencyMismatch(Uuid),
    #[error(transparent)]
    Rejected(#[from] Rejection),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("stored history is unreadable: {0}")]
    Corrupt(String),
    /// A search by an input field no workflow (or not the one named)
    /// declares searchable: it would find nothing, so it is refused.
    #[error("input field `{field}` is not searchable{}: a workflow declares the fields listings may search by, e.g. `search: [{field}]`{}", in_workflow(.workflow), declared_by(.elsewhere))]
    NotSearchable {
        field: String,
        workflow: Option<String>,
        /// Workflows that do declare it.
        elsewhere: Vec<String>,
    },
    /// Listings and searches need the read models, and this runtime keeps none.
    #[error("this server keeps no read models, which listings and searches need")]
    NoReadModels,
    /// A limit on what callers may make the server hold was reached; the
    /// same request may succeed later.
    #[error("{0}")]
    Overloaded(String),
}

fn in_workflow(w: &Option<String>) -> String {
    w.as_ref()
        .map(|w| format!(" in workflow `{w}`"))
        .unwrap_or_default()
}

fn declared_by(elsewhere: &[String]) -> String {
    if elsewhere.is_empty() {
        String::new()
    } else {
        let names: Vec<String> = elsewhere.iter().map(|w| format!("`{w}`")).collect();
        format!(" (declared by {})", names.join(", "))
    }
}

fn at(t: &Option<Timestamp>) -> String {
    t.map(|t| format!(" at {t}")).unwrap_or_default()
}

/// The first error's message, with the count of the others.
fn invalid_summary(diagnostics: &[Diagnostic]) -> String {
    let mut errors = diagnostics.iter().filter(|d| d.is_error());
    let Some(first) = errors.next() else {
        return "no error reported".into();
    };
    let at = first
        .span
        .map(|s| format!(" (line {}, column {})", s.line, s.column))
        .unwrap_or_default();
    match errors.count() {
        0 => format!("{}{at}", first.message),
        1 => format!("{}{at}, and 1 more error", first.message),
        n => format!("{}{at}, and {n} more errors", first.message),
    }
}

/// One way an input fails its schema.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct InputError {
    /// JSON pointer into the input, e.g. `/items/0/qty`.
    pub pointer: String,
    pub message: String,
}

impl From<EventError> for RuntimeError {
    fn from(e: EventError) -> Self {
        RuntimeError::Corrupt(e.to_string())
    }
}

impl RuntimeError {
    /// Whether the same request may succeed if retried as is.
    pub fn is_transient(&self) -> bool {
        match self {
            RuntimeError::Store(e) => e.is_transient() || e.is_conflict(),
            RuntimeError::Overloaded(_) => true,
            _ => false,
        }
    }
}
