//! The compiled workflow: typed steps and the state machine the runtime walks.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use petgraph::graph::{DiGraph, NodeIndex};
use serde::Serialize;

use crate::dsl::spec::{FailureKind, HttpMethod, IdempotencyMode};
use crate::dsl::template::{Template, ValueTemplate};

/// A workflow ready to run: its steps and the graph of what may happen next.
#[derive(Debug, Clone)]
pub struct Machine {
    pub name: String,
    pub version: u32,
    /// sha256 of the definition (its canonical JSON): which exact text an instance runs.
    pub hash: String,
    pub description: Option<String>,
    pub input_schema: Option<serde_json::Value>,
    /// The input fields kept in the search index (`search:`), as dotted paths.
    pub search: Vec<String>,
    pub env: BTreeMap<String, String>,
    pub deadline: Option<Duration>,
    pub steps: Vec<Step>,
    pub output: Option<ValueTemplate>,
    pub pivot: Option<usize>,
    pub graph: DiGraph<State, Transition>,
    pub triggers: Vec<CronTrigger>,
    /// The server's secret values: masked in what the saga shows (its output).
    pub secrets: std::sync::Arc<crate::secrets::Secrets>,
}

/// A compiled `triggers:` entry.
#[derive(Debug, Clone)]
pub struct CronTrigger {
    /// The expression as written.
    pub expr: String,
    pub schedule: cron::Schedule,
    pub input: serde_json::Value,
    pub missed: crate::dsl::spec::MissedRuns,
}

/// Where a step stands relative to the pivot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Before the pivot (or in a workflow without one): undone on failure.
    Compensable,
    /// The point of no return: if it fails, earlier steps are undone; once it succeeds, the saga will complete.
    Pivot,
    /// After the pivot: retried until it succeeds, never undone.
    AfterPivot,
}

#[derive(Debug, Clone)]
pub struct Step {
    pub name: String,
    pub action: Action,
    pub compensation: Option<Action>,
    pub timeout: Option<Duration>,
    pub retry: RetryPolicy,
    pub role: Role,
    pub idempotency: IdempotencyMode,
    /// Evaluated when the step is reached: false or null skips it.
    pub when: Option<Template>,
    /// The step runs its action once per element of this array.
    pub for_each: Option<ForEach>,
    /// The branches of a `parallel` step (its action is [`Action::Parallel`]).
    pub branches: Vec<Step>,
}

/// The most elements a `for_each` takes; more fail the step.
pub const MAX_ELEMENTS: usize = 1000;

/// A compiled `for_each`.
#[derive(Debug, Clone)]
pub struct ForEach {
    pub items: Template,
    pub max_concurrency: u32,
}

impl Step {
    /// The idempotency key of this step's effect (or of its compensation) in
    /// `instance`: it names the effect, not the attempt, unless the step asks
    /// for a key per attempt.
    pub fn effect_key(
        &self,
        instance: &str,
        element: Option<u32>,
        compensation: bool,
        attempt: u32,
    ) -> String {
        let undo = if compensation { ":compensate" } else { "" };
        let at = element.map_or(String::new(), |i| format!(":{i}"));
        match self.idempotency {
            IdempotencyMode::Stable => format!("{instance}:{}{at}{undo}", self.name),
            IdempotencyMode::PerAttempt => {
                format!("{instance}:{}{at}{undo}:{attempt}", self.name)
            }
        }
    }

    /// Whether the step runs units (branches or elements) rather than one action.
    pub fn is_group(&self) -> bool {
        self.for_each.is_some() || !self.branches.is_empty()
    }

    /// The step that performs unit `index` of this one: a branch of a
    /// parallel step, or this step itself (a plain step, or a for-each element).
    pub fn unit(&self, index: Option<u32>) -> &Step {
        match index {
            Some(b) if !self.branches.is_empty() => &self.branches[b as usize],
            _ => self,
        }
    }

    /// Whether undoing this step (or any of its branches) does anything.
    pub fn undoes(&self) -> bool {
        self.compensation.is_some() || self.branches.iter().any(|b| b.compensation.is_some())
    }
}

#[derive(Debug, Clone)]
pub enum Action {
    Http(HttpCall),
    Task(TaskCall),
    Wait(Wait),
    /// Start every branch at once (the step's `branches`).
    Parallel,
}

#[derive(Debug, Clone)]
pub struct HttpCall {
    pub method: HttpMethod,
    pub url: Template,
    pub headers: Vec<(String, Template)>,
    /// The body, its templates compiled.
    pub body: Option<ValueTemplate>,
    /// Statuses counted as transient rather than business failures.
    pub retryable_status: Vec<u16>,
}

#[derive(Debug, Clone)]
pub struct TaskCall {
    pub queue: String,
    pub input: Option<ValueTemplate>,
    pub heartbeat: Option<Duration>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Wait {
    Signal(String),
    Duration(Duration),
}

/// When a failed attempt is tried again.
#[derive(Debug, Clone, PartialEq)]
pub struct RetryPolicy {
    /// Attempts in all; `None` is unlimited.
    pub max_attempts: Option<u32>,
    pub backoff: Option<Backoff>,
    pub jitter: f64,
    pub retry_on: Vec<FailureKind>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Backoff {
    pub initial: Duration,
    pub max: Option<Duration>,
    pub multiplier: f64,
}

impl RetryPolicy {
    pub const DEFAULT_RETRY_ON: [FailureKind; 2] = [FailureKind::Timeout, FailureKind::Transient];

    /// One attempt, no retry.
    pub fn once() -> Self {
        Self {
            max_attempts: Some(1),
            backoff: None,
            jitter: 0.0,
            retry_on: Self::DEFAULT_RETRY_ON.to_vec(),
        }
    }

    /// Whether a step may retry at all.
    pub fn retries(&self) -> bool {
        self.max_attempts != Some(1)
    }

    /// Whether attempt number `attempt` (1-based) that failed with `kind` is tried again.
    pub fn should_retry(&self, attempt: u32, kind: FailureKind) -> bool {
        self.retry_on.contains(&kind) && self.max_attempts.is_none_or(|max| attempt < max)
    }

    /// The delay before attempt `attempt + 1`, before jitter: `initial * multiplier^(attempt-1)`, capped.
    pub fn delay(&self, attempt: u32) -> Duration {
        let Some(b) = &self.backoff else {
            return Duration::ZERO;
        };
        let exp = attempt.saturating_sub(1).min(64) as i32;
        let secs = b.initial.as_secs_f64() * b.multiplier.powi(exp);
        let cap = b.max.map_or(f64::MAX, |m| m.as_secs_f64());
        Duration::try_from_secs_f64(secs.min(cap)).unwrap_or(Duration::MAX)
    }
}

/// A state of a saga instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(tag = "state", content = "step", rename_all = "snake_case")]
pub enum State {
    /// Step `i` is being performed (an HTTP call or a task).
    Running(usize),
    /// Step `i` waits for a signal or for time to pass.
    Waiting(usize),
    /// The compensation of step `i` is being performed.
    Compensating(usize),
    Completed,
    Compensated,
    /// Needs an operator: a compensation failed, or a step after the pivot was refused.
    Failed,
    Cancelled,
}

impl State {
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            State::Completed | State::Compensated | State::Failed | State::Cancelled
        )
    }
}

/// Why a saga moves from one state to another.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Transition {
    Succeeded,
    SignalReceived,
    TimerElapsed,
    /// Another attempt of the same step (or compensation).
    Retry,
    /// The step answered "no" (4xx, or a worker's non-retryable failure).
    BusinessFailure,
    /// The last allowed attempt timed out.
    Timeout,
    /// The last allowed attempt failed transiently.
    RetriesExhausted,
    Cancel,
    Deadline,
    Compensated,
    CompensationFailed,
    /// Every compensation ran after a failure or deadline.
    AllCompensated,
    /// Every compensation ran after a cancel.
    CancelCompensated,
    /// The step's `when` was false: it is passed over.
    Skipped,
}

impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            State::Running(i) => write!(f, "running({i})"),
            State::Waiting(i) => write!(f, "waiting({i})"),
            State::Compensating(i) => write!(f, "compensating({i})"),
            State::Completed => f.write_str("completed"),
            State::Compensated => f.write_str("compensated"),
            State::Failed => f.write_str("failed"),
            State::Cancelled => f.write_str("cancelled"),
        }
    }
}

impl fmt::Display for Transition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = serde_json::to_value(self).ok();
        f.write_str(s.as_ref().and_then(|v| v.as_str()).unwrap_or("?"))
    }
}

impl Machine {
    /// The node of `state` in the graph.
    pub fn node(&self, state: State) -> Option<NodeIndex> {
        self.graph.node_indices().find(|&n| self.graph[n] == state)
    }

    /// The state a transition leads to from `from`, if the machine allows it.
    pub fn next(&self, from: State, on: Transition) -> Option<State> {
        let node = self.node(from)?;
        self.graph
            .edges(node)
            .find(|e| *e.weight() == on)
            .map(|e| self.graph[petgraph::visit::EdgeRef::target(&e)])
    }

    /// The state a new instance starts in.
    pub fn start(&self) -> State {
        step_state(&self.steps, 0)
    }

    pub fn step_index(&self, name: &str) -> Option<usize> {
        self.steps.iter().position(|s| s.name == name)
    }

    /// The step (or branch) named `name`: its index and, for a branch, its position.
    pub fn unit_named(&self, name: &str) -> Option<(usize, Option<u32>)> {
        self.steps.iter().enumerate().find_map(|(i, s)| {
            if s.name == name {
                return Some((i, None));
            }
            let b = s.branches.iter().position(|b| b.name == name)?;
            Some((i, Some(b as u32)))
        })
    }
}

/// The state that performs step `i`, or `Completed` past the last one.
pub(crate) fn step_state(steps: &[Step], i: usize) -> State {
    match steps.get(i).map(|s| &s.action) {
        None => State::Completed,
        Some(Action::Wait(_)) => State::Waiting(i),
        Some(_) => State::Running(i),
    }
}
