//! `WorkflowSpec`: the workflow file as written, before compilation.
//!
//! These types are the language's syntax. They deliberately keep durations
//! and templates as text: the compiler parses them, so that every bad
//! duration or template in a file is reported at once, with its location.
//! The published JSON Schema (`sagaflow schema`) is generated from them.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// A sagaflow workflow: an ordered list of steps, each with the compensation that undoes it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(title = "sagaflow workflow")]
pub struct WorkflowSpec {
    /// The workflow's name: lowercase letters, digits and `-`, starting with a letter (e.g. `order`).
    pub name: String,
    /// The definition's version; a running instance always keeps the version it started on.
    #[serde(default = "default_version")]
    #[schemars(range(min = 1))]
    pub version: u32,
    /// What the workflow does, for people.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// A JSON Schema that every instance's input must satisfy when the instance starts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input: Option<serde_json::Value>,
    /// Input fields that listings search by (`input_field=customer_id=c-1`), kept in an index: paths of letters, digits and `_` joined by `.` (e.g. `customer_id`, `address.city`). Only these fields can be searched.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 8))]
    pub search: Vec<String>,
    /// Default values for `${ .env.NAME }` in templates; the server's configuration may override them.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    /// Defaults for every step that does not set its own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub defaults: Option<DefaultsSpec>,
    /// The whole saga must end within this time (e.g. `1h`); past it, it compensates.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deadline: Option<String>,
    /// The steps, run in order.
    pub steps: Vec<StepSpec>,
    /// The saga's output when it completes, a template (defaults to every step's output).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<serde_json::Value>,
    /// Start instances on a schedule.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub triggers: Vec<TriggerSpec>,
}

/// A schedule that starts instances.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TriggerSpec {
    /// A cron expression in UTC: `minute hour day month weekday` (e.g. `0 3 * * *`), or with a seconds field first.
    pub cron: String,
    /// The input of every instance it starts (default `{}`); it must satisfy the workflow's `input` schema.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input: Option<serde_json::Value>,
    /// Ticks missed while sagaflow was not running: `skip` them (default), or `run_once` for all of them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub missed: Option<MissedRuns>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum MissedRuns {
    #[default]
    Skip,
    RunOnce,
}

/// The longest duration the language and the API accept (100 years): far
/// beyond any saga, and far from the end of the calendar.
pub const MAX_DURATION: std::time::Duration = std::time::Duration::from_secs(100 * 365 * 24 * 3600);

fn default_version() -> u32 {
    1
}

/// Defaults applied to every step.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DefaultsSpec {
    /// How long one attempt of a step may take (e.g. `10s`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<String>,
    /// The retry policy of steps that set none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry: Option<RetrySpec>,
}

/// One step: exactly one action (`http`, `task`, `wait` or `parallel`), and how to undo it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct StepSpec {
    /// The step's name, an identifier (`reserve`, `take_payment`): templates refer to it as `.steps.NAME`.
    pub name: String,
    /// What the step does, for people.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Call an HTTP endpoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<HttpSpec>,
    /// Put a task on a queue for an external worker.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task: Option<TaskSpec>,
    /// Wait for a signal or for some time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wait: Option<WaitSpec>,
    /// Branches that start at once, each a step with one action, its own
    /// timeout, retry and compensation; the step succeeds when all have.
    /// Its output is an object of the branches' outputs, by name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parallel: Option<Vec<StepSpec>>,
    /// A condition, a template evaluated when the step is reached: `false` or
    /// `null` skips the step (no effect, nothing to compensate, output `null`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub when: Option<String>,
    /// A template that yields an array: the step's action runs once per
    /// element (at most 1,000), with `.item` and `.index` in its templates.
    /// Its output is the array of the elements' outputs, in order.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub for_each: Option<String>,
    /// How many elements of a `for_each` run at once (default 1: one after another, in order).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1000))]
    pub max_concurrency: Option<u32>,
    /// How long one attempt may take (for a `wait` on a signal: how long to wait).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<String>,
    /// When and how a failed attempt is retried.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry: Option<RetrySpec>,
    /// The action that undoes this step, or `none` when there is nothing to undo.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compensate: Option<CompensateSpec>,
    /// The point of no return: steps after it are retried until they succeed and never compensated.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub pivot: bool,
    /// The idempotency key the step's effect carries: `stable` (default), the
    /// same key on every attempt, so a receiver that honours it does the effect
    /// once; or `per_attempt`, a new key each attempt, for a receiver that must
    /// see a retry as a new operation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idempotency: Option<IdempotencyMode>,
}

/// Which attempts of a step share an idempotency key.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum IdempotencyMode {
    /// `{instance}:{step}` on every attempt (compensation: `{instance}:{step}:compensate`).
    #[default]
    Stable,
    /// `{instance}:{step}:{attempt}` (compensation: `{instance}:{step}:compensate:{attempt}`).
    PerAttempt,
}

/// Either `none` (nothing to undo) or an action.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum CompensateSpec {
    /// `none`: the step changes nothing that needs undoing.
    None(NoCompensation),
    /// The action that undoes the step.
    Action(ActionSpec),
}

/// The word `none`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum NoCompensation {
    None,
}

/// A compensation: exactly one of `http` or `task`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ActionSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<HttpSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task: Option<TaskSpec>,
}

/// An HTTP call. 2xx is success (its JSON body is the step's output), 4xx a
/// business failure, 5xx, connection errors and timeouts are transient.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HttpSpec {
    #[serde(default)]
    pub method: HttpMethod,
    /// The URL, a template (e.g. `${ .env.inventory_url }/reservations`).
    pub url: String,
    /// Request headers; values are templates.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
    /// The JSON body; any string in it may be a template.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<serde_json::Value>,
    /// Status codes that count as transient rather than business failures (default 408 and 429).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retryable_status: Option<Vec<u16>>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "UPPERCASE")]
pub enum HttpMethod {
    Get,
    #[default]
    Post,
    Put,
    Patch,
    Delete,
}

/// A task on a named queue, taken and answered by an external worker through the API.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TaskSpec {
    /// The queue workers poll (e.g. `payments`).
    pub queue: String,
    /// The task's input; any string in it may be a template.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input: Option<serde_json::Value>,
    /// A worker that holds the task must heartbeat at least this often, or the task is handed out again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub heartbeat: Option<String>,
}

/// Wait for a named signal (bounded by the step's `timeout`), or for a duration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WaitSpec {
    /// The signal's name (e.g. `approval`); its payload becomes the step's output.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signal: Option<String>,
    /// Wait this long, then go on (e.g. `10m`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration: Option<String>,
}

/// When a failed attempt is tried again.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RetrySpec {
    /// How many attempts in all (1 means no retry), or `unlimited`.
    pub max_attempts: MaxAttempts,
    /// The delay between attempts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backoff: Option<BackoffSpec>,
    /// The share of each delay that is randomised, from 0 to 1 (spreads retries of many sagas apart).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0.0, max = 1.0))]
    pub jitter: Option<f64>,
    /// Which failures are retried (default: `timeout` and `transient`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_on: Option<Vec<FailureKind>>,
}

/// `unlimited`, or a number of attempts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum MaxAttempts {
    Count(#[schemars(range(min = 1))] u32),
    Unlimited(Unlimited),
}

/// The word `unlimited`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Unlimited {
    Unlimited,
}

/// Exponential backoff: `initial`, then times `multiplier`, capped at `max`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BackoffSpec {
    pub initial: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1.0))]
    pub multiplier: Option<f64>,
}

/// A class of failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum FailureKind {
    /// The attempt did not answer in time.
    Timeout,
    /// 5xx, connection errors, 408/429, or a worker's retryable failure.
    Transient,
    /// 4xx or a worker's non-retryable failure: the answer was "no".
    Business,
}

impl StepSpec {
    /// The action keys present on this step, in a fixed order.
    pub fn action_keys(&self) -> Vec<&'static str> {
        let mut keys = Vec::new();
        if self.http.is_some() {
            keys.push("http");
        }
        if self.task.is_some() {
            keys.push("task");
        }
        if self.wait.is_some() {
            keys.push("wait");
        }
        if self.parallel.is_some() {
            keys.push("parallel");
        }
        keys
    }
}

/// The JSON Schema of the workflow language, for editors and `sagaflow schema`.
pub fn json_schema() -> serde_json::Value {
    let schema = schemars::schema_for!(WorkflowSpec);
    serde_json::to_value(schema).unwrap_or_default()
}
