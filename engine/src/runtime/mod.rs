//! The runtime: runs saga instances of compiled workflows.
//!
//! [`Runtime`] is a small facade over its parts, each in a module of its own:
//!
//! - [`executor`]: live instances; the only caller of `decide` and of the
//!   store's append; performs actions once their events are durable; resumes
//!   unfinished instances on start.
//! - [`scheduler`]: durable timers and cron starts, and the sweep of worker
//!   leases.
//! - [`tasks`]: the worker task queues and task ids.
//! - [`cluster`]: with replicas, the partition lease and the log follower.
//! - [`instances`] and [`queries`]: the API over one instance (start, read,
//!   steer) and over the read models.
//! - [`retention`]: removes instances that ended long enough ago, archiving
//!   them first if asked.
//! - [`http`]: `http` steps' requests rendered, sent and judged, through
//!   `step_client` (hyper directly, or reqwest for a proxy: ADR 25).
//!
//! The relay of a worker's request to the replica that holds its instance
//! belongs to the API; the engine only says which replica that is.

pub mod cluster;
mod error;
mod executor;
pub mod http;
mod instances;
mod queries;
mod registry;
mod retention;
pub mod scheduler;
mod step_client;
pub mod tasks;

pub use cluster::ClusterConfig;
pub use error::{InputError, RuntimeError};
pub use instances::{keyed_id, InstanceView, Started};
pub use registry::{PublishOutcome, Published};
pub use retention::{RetentionConfig, Swept};
pub use scheduler::timers;
pub use tasks::{Task, TaskId};

use std::collections::BTreeMap;

// ahash: keyed at random per process as std's maps are, and several times
// cheaper on stream names and ids (docs/performance.md, seventh session)
use ahash::{AHashMap as HashMap, AHashSet as HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;
use serde_json::Value;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use uuid::Uuid;

use crate::compile::{Action as StepAction, Machine};
use crate::dsl::spec::FailureKind;
use crate::projection::{Cursor, InstanceFilter, InstanceRow, OrderRow, Page, Projections};
use crate::saga::{self, decide_to, fold, Action, Clock, Input, Phase, SagaState, Timestamp};
use crate::secrets::Secrets;
use crate::store::{EventStore, Expected, NewEvent, RecordedEvent};

use registry::Registry;
use tasks::TaskQueues;
use timers::Timers;

/// Where a worker's heartbeat went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Heartbeat {
    /// The lease is held here and was renewed.
    Renewed,
    /// Another replica holds the instance, at this API address.
    HeldBy(String),
}
/// Reload-and-decide-again rounds before a conflict is given up on.
const CONFLICT_ROUNDS: usize = 16;
/// How long a refused append keeps the server "not ready" (see [`Runtime::store_write_failure`]).
pub const WRITE_FAILURE_WINDOW: Duration = Duration::from_secs(5);
/// Instances whose attempt in flight is re-issued at once on resume.
const REISSUE_AT_ONCE: usize = 64;

#[derive(Debug, Clone)]
pub struct RuntimeConfig {
    /// Values that override the workflows' `env` defaults.
    pub env: BTreeMap<String, String>,
    /// The request timeout of `http` steps that set no `timeout`.
    pub default_http_timeout: Duration,
    /// Share the instances with other replicas on the same store (`None`: this
    /// process drives every instance).
    pub cluster: Option<ClusterConfig>,
    /// Values masked wherever text leaves the template engine.
    pub secrets: Arc<Secrets>,
    /// How long ended instances are kept.
    pub retention: RetentionConfig,
    /// The machine names an HTTP proxy (`HTTP_PROXY`, `HTTPS_PROXY` or
    /// `ALL_PROXY`): `http` steps then go through a client that honours it
    /// and `NO_PROXY` (ADR 25).
    pub http_proxy: bool,
    /// The longest success an `http` step keeps, in bytes; a longer one is
    /// a transient failure (ADR 3).
    pub step_answer_limit: usize,
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        Self {
            env: BTreeMap::new(),
            default_http_timeout: Duration::from_secs(30),
            cluster: None,
            secrets: Arc::default(),
            retention: RetentionConfig::default(),
            http_proxy: false,
            step_answer_limit: http::ANSWER_LIMIT,
        }
    }
}

/// A handle on the runtime; cheap to clone.
#[derive(Clone)]
pub struct Runtime(Arc<Inner>);

struct Inner {
    store: Arc<dyn EventStore>,
    projections: Option<Arc<Projections>>,
    clock: Arc<dyn Clock>,
    registry: Registry,
    live: Mutex<HashMap<Uuid, Arc<executor::Live>>>,
    /// Built on the first `http` step: loading the system's root
    /// certificates costs milliseconds a runtime without HTTP steps need not pay.
    http: std::sync::OnceLock<http::StepClient>,
    tasks: TaskQueues,
    timers: Timers,
    config: RuntimeConfig,
    stop: CancellationToken,
    tracker: TaskTracker,
    cron: Mutex<scheduler::cron::CronTable>,
    cluster: Option<cluster::Cluster>,
    /// Events of streams other than sagas' that another replica may have
    /// written (workflows, tokens), for whoever keeps state from them.
    stream_events: tokio::sync::broadcast::Sender<RecordedEvent>,
    /// With replicas: the last revision this process appended per instance,
    /// until the log follower has passed it (its own writes need no taking in).
    written: Mutex<HashMap<Uuid, u64>>,
    /// The last append's failure and when it happened, until an append succeeds again.
    write_failure: Mutex<Option<(std::time::Instant, String)>>,
    /// Instances with a catch-up task (after an append of unknown outcome).
    catching_up: Mutex<HashSet<Uuid>>,
    /// Fault injection: this many of the next performs panic.
    perform_faults: std::sync::atomic::AtomicU32,
}

impl Runtime {
    /// Builds the runtime and loads every published workflow from the store.
    pub async fn new(
        store: Arc<dyn EventStore>,
        projections: Option<Arc<Projections>>,
        clock: Arc<dyn Clock>,
        config: RuntimeConfig,
    ) -> Result<Self, RuntimeError> {
        let registry = Registry::new(config.env.clone(), config.secrets.clone());
        let cluster = config.cluster.clone().map(cluster::Cluster::new);
        let loaded = registry.load(store.as_ref()).await?;
        tracing::info!(versions = loaded, "workflows loaded from the store");

        Ok(Self(Arc::new(Inner {
            store,
            projections,
            clock,
            registry,
            live: Mutex::default(),
            http: std::sync::OnceLock::new(),
            tasks: TaskQueues::default(),
            timers: Timers::default(),
            config,
            stop: CancellationToken::new(),
            tracker: TaskTracker::new(),
            cron: Mutex::default(),
            cluster,
            stream_events: tokio::sync::broadcast::channel(256).0,
            written: Mutex::default(),
            write_failure: Mutex::default(),
            catching_up: Mutex::default(),
            perform_faults: Default::default(),
        })))
    }

    /// Starts the timer loop and the projection follower, and resumes every
    /// unfinished instance (with replicas: of the partitions this one holds).
    pub async fn run_background(&self) -> Result<usize, RuntimeError> {
        if let Some(c) = &self.0.cluster {
            // Follow the log from here, so nothing written from now on is missed.
            let from = *self.0.store.head().borrow();
            c.round(self.0.store.as_ref(), self.now(), false).await?;
            let rt = self.clone();
            self.0.tracker.spawn(async move { rt.cluster_loop().await });
            let rt = self.clone();
            self.0
                .tracker
                .spawn(async move { rt.follow_log(from).await });
        }
        let rt = self.clone();
        self.0.tracker.spawn(async move { rt.timer_loop().await });
        let rt = self.clone();
        self.0.tracker.spawn(async move { rt.lease_loop().await });
        let rt = self.clone();
        self.0.tracker.spawn(async move { rt.cron_loop().await });
        if self.0.config.retention.max_age.is_some() {
            let rt = self.clone();
            self.0
                .tracker
                .spawn(async move { rt.retention_loop().await });
        }
        let resumed = self.resume().await?;
        if let Some(p) = self.0.projections.clone() {
            let store = self.0.store.clone();
            let stop = self.0.stop.clone();
            self.0
                .tracker
                .spawn(async move { p.follow(store.as_ref(), stop).await });
        }
        Ok(resumed)
    }

    /// Stops the background work and waits (up to `grace`) for effects in flight to record their outcome.
    pub async fn shutdown(&self, grace: Duration) {
        if let Some(c) = &self.0.cluster {
            // Give the partitions back so the other replicas take them at once.
            if let Err(e) = c.round(self.0.store.as_ref(), self.now(), true).await {
                tracing::warn!(error = %e, "could not hand the partitions back; they are taken once the lease runs out");
            }
        }
        self.0.stop.cancel();
        self.0.tracker.close();
        if tokio::time::timeout(grace, self.0.tracker.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                "effects still in flight at shutdown; they are re-issued on the next start"
            );
        }
    }

    pub fn store(&self) -> &Arc<dyn EventStore> {
        &self.0.store
    }

    pub fn now(&self) -> Timestamp {
        self.0.clock.now()
    }

    pub async fn publish(
        &self,
        source: &str,
    ) -> Result<(Arc<Published>, PublishOutcome), RuntimeError> {
        self.0
            .registry
            .publish(self.0.store.as_ref(), self.0.clock.as_ref(), source)
            .await
    }

    pub fn workflow(
        &self,
        name: &str,
        version: Option<u32>,
    ) -> Result<Arc<Published>, RuntimeError> {
        self.0.registry.get(name, version)
    }

    pub fn workflows(&self) -> Vec<(String, Vec<Arc<Published>>)> {
        self.0.registry.list()
    }
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod timer_tests;

#[cfg(test)]
mod retention_tests;
