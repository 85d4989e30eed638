//! The sagaflow engine: everything that is not HTTP.
//!
//! # Layout
//!
//! - [`dsl`]: YAML text -> [`dsl::WorkflowSpec`], with every syntax and
//!   structure problem located by line, column and path; templates and the
//!   sandbox they run in ([`dsl::sandbox`]: pure jq, a budget, child processes).
//! - [`compile`]: `WorkflowSpec` -> [`compile::Machine`], a petgraph state
//!   machine of the saga, after the semantic checks (references, templates,
//!   durations, pivot rules, reachability); DOT and Mermaid export.
//! - [`diagnostic`]: the located problems both stages report.
//! - [`saga`]: the pure core: events, state, `decide` and `evolve`.
//! - [`store`]: the event store port; in-memory, SQLite, PostgreSQL and
//!   EventStoreDB adapters and the conformance suite they pass.
//! - [`runtime`]: runs instances: a facade over the executor (decide,
//!   append, evolve, then perform HTTP calls, worker tasks, timers; resume on
//!   start), the scheduler (timers, cron), the task queues, the cluster
//!   (replicas' lease and log follower) and retention (removing ended
//!   instances). `tests/simulation/` runs these
//!   parts under injected faults from a seed (ADR 12).
//! - [`projection`]: read models that follow the log (`saga_instances`).
//! - [`archive`]: the files retention writes removed instances to (gzip
//!   JSON lines, a file per day), and reading them back.
//! - [`testing`]: workflow tests (`sagaflow test`): cases run on the pure
//!   core with a manual clock, their effects and end compared.
//! - [`secrets`]: the server's secret values, masked wherever text leaves
//!   the template engine.

pub mod archive;
pub mod compile;
pub mod diagnostic;
pub mod dsl;
pub mod projection;
pub mod runtime;
pub mod saga;
pub mod secrets;
pub mod store;
pub mod telemetry;
pub mod testing;
