//! The pure core of a saga: events, state, `decide` and `evolve`.
//!
//! Nothing here performs I/O or reads a clock: the runtime feeds inputs in,
//! appends the events `decide` returns, then carries out its actions.

pub mod decide;
mod decision;
pub mod event;
mod group;
pub mod state;
pub mod time;

pub use decide::{context, decide, decide_to, resume, Action, Decision, Input, Rejection};
pub use event::{
    ActionKind, CompensationReason, Event, EventError, Phase, TimerPurpose, ENDINGS, SCHEMA_VERSION,
};
pub use group::unit_context;
pub use state::{evolve, fold, InFlight, SagaState, Unit, UnitStatus};
pub use time::{Clock, ManualClock, SystemClock, Timestamp, MAX_DURATION};

#[cfg(test)]
mod group_tests;
#[cfg(test)]
mod tests;
