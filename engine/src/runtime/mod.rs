//! The runtime: runs saga instances of compiled workflows.
//!
//! For each input (a start, an effect's outcome, a timer, a signal, a
//! cancel) it takes the instance's lock, asks [`decide`](crate::saga::decide)
//! what happens, appends the events with the expected revision (a conflict
//! means reload and decide again), folds them into the in-memory state, and
//! only then performs the actions: HTTP calls, tasks for workers, timers.
//! Live instances stay in memory until they end; no stream is re-read per
//! step. On start, every unfinished instance is resumed: its in-flight
//! effect is re-issued with the same idempotency key and its timers re-armed.

pub mod cluster;
mod cron;
mod error;
pub mod http;
mod registry;
pub mod tasks;
pub mod timers;

pub use cluster::ClusterConfig;
pub use error::{InputError, RuntimeError};
pub use registry::{PublishOutcome, Published};
pub use tasks::{Task, TaskId};

use std::collections::{BTreeMap, HashMap, HashSet};
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
use crate::dsl::template::Context;
use crate::projection::{Cursor, InstanceFilter, InstanceRow, OrderRow, Page, Projections};
use crate::saga::{
    self, context, decide_to, fold, Action, Clock, Input, Phase, SagaState, Timestamp,
};
use crate::secrets::Secrets;
use crate::store::{EventStore, Expected, NewEvent, RecordedEvent};

use registry::Registry;
use tasks::TaskQueues;
use timers::Timers;

/// Namespace of instance ids derived from an Idempotency-Key.
const IDEMPOTENCY_NAMESPACE: Uuid = Uuid::from_u128(0x5a6a_f10e_0000_4000_8000_0000_0000_0001);
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
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        Self {
            env: BTreeMap::new(),
            default_http_timeout: Duration::from_secs(30),
            cluster: None,
            secrets: Arc::default(),
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
    live: Mutex<HashMap<Uuid, Arc<Live>>>,
    http: reqwest::Client,
    tasks: TaskQueues,
    timers: Timers,
    config: RuntimeConfig,
    stop: CancellationToken,
    tracker: TaskTracker,
    cron: Mutex<cron::CronTable>,
    cluster: Option<cluster::Cluster>,
    /// Events of streams other than sagas' that another replica may have
    /// written (workflows, tokens), for whoever keeps state from them.
    stream_events: tokio::sync::broadcast::Sender<RecordedEvent>,
    /// With replicas: the last revision this process appended per instance,
    /// until the log follower has passed it (its own writes need no taking in).
    written: Mutex<HashMap<Uuid, u64>>,
    /// The last append's failure and when it happened, until an append succeeds again.
    write_failure: Mutex<Option<(std::time::Instant, String)>>,
    /// Fault injection: this many of the next performs panic.
    perform_faults: std::sync::atomic::AtomicU32,
}

/// An instance that has not ended, held in memory.
struct Live {
    id: Uuid,
    key: String,
    stream: String,
    published: Arc<Published>,
    state: tokio::sync::Mutex<SagaState>,
    ended: watch::Sender<bool>,
    /// The attempts this process has performed, so an attempt learnt again
    /// from the log (written by another replica) is not performed twice.
    performed: Mutex<HashSet<(usize, u32, Phase)>>,
}

impl Live {
    fn new(id: Uuid, published: Arc<Published>, st: SagaState) -> Self {
        let ended = st.is_terminal();
        Self {
            id,
            key: id.to_string(),
            stream: format!("saga-{id}"),
            published,
            state: tokio::sync::Mutex::new(st),
            ended: watch::channel(ended).0,
            performed: Mutex::default(),
        }
    }

    /// True the first time an attempt is seen.
    fn first_performance(&self, step: usize, attempt: u32, phase: Phase) -> bool {
        self.performed
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert((step, attempt, phase))
    }
}

/// An instance as the API shows it.
#[derive(Debug, Clone, Serialize)]
pub struct InstanceView {
    pub id: Uuid,
    pub workflow: String,
    pub version: u32,
    pub status: &'static str,
    pub current_step: Option<String>,
    pub attempt: u32,
    pub input: Value,
    pub output: Option<Value>,
    pub error: Option<String>,
    pub started_at: Timestamp,
    pub updated_at: Timestamp,
    pub finished_at: Option<Timestamp>,
    /// Events in the instance's stream.
    pub events: u64,
    /// Paused by an operator.
    pub paused: bool,
    /// The outputs of the steps that succeeded, by step name.
    pub outputs: BTreeMap<String, Value>,
    /// Timers armed and not yet fired: `(id, what for, due)`.
    pub timers: Vec<(String, saga::TimerPurpose, Timestamp)>,
}

/// The result of a start request.
#[derive(Debug, Clone)]
pub struct Started {
    pub id: Uuid,
    /// False when an Idempotency-Key matched an instance started before.
    pub created: bool,
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
        let http = reqwest::Client::builder()
            .pool_max_idle_per_host(256)
            .build()
            .map_err(|e| RuntimeError::Corrupt(format!("HTTP client: {e}")))?;
        Ok(Self(Arc::new(Inner {
            store,
            projections,
            clock,
            registry,
            live: Mutex::default(),
            http,
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

    // ---- workflows -------------------------------------------------------

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

    // ---- instances -------------------------------------------------------

    /// Starts an instance. With an Idempotency-Key, the instance id derives from
    /// the workflow and the key, so a retried start finds the instance it made.
    pub async fn start(
        &self,
        workflow: &str,
        version: Option<u32>,
        input: Value,
        idempotency_key: Option<String>,
    ) -> Result<Started, RuntimeError> {
        let published = self.0.registry.get(workflow, version)?;
        published
            .check_input(&input)
            .map_err(RuntimeError::InvalidInput)?;
        let id = match &idempotency_key {
            Some(k) => Uuid::new_v5(
                &IDEMPOTENCY_NAMESPACE,
                format!("{workflow}\n{k}").as_bytes(),
            ),
            None => Uuid::now_v7(),
        };
        let key = id.to_string();
        let start = Input::Start {
            input: input.clone(),
            idempotency_key: idempotency_key.clone(),
        };
        let (d, state) = decide_to(
            &published.machine,
            &key,
            &SagaState::default(),
            start,
            self.now(),
        )?;
        let stream = format!("saga-{id}");
        let new: Vec<NewEvent> = d.events.iter().map(NewEvent::from).collect();
        match self.noted(self.0.store.append(&stream, Expected::NoStream, new).await) {
            Ok(a) => self.wrote(id, a.revision),
            Err(e) if e.is_conflict() && idempotency_key.is_some() => {
                let existing = self.get(id).await?;
                return if existing.input == input && existing.workflow == workflow {
                    Ok(Started { id, created: false })
                } else {
                    Err(RuntimeError::IdempotencyMismatch(id))
                };
            }
            Err(e) => return Err(e.into()),
        }
        tracing::debug!(instance_id = %id, workflow, "saga started");
        crate::telemetry::saga_started(workflow);
        if !self.drives(id) {
            // The replica holding its partition learns of it from the log.
            return Ok(Started { id, created: true });
        }
        let live = Arc::new(Live::new(id, published, state));
        let first = match self.lock_live().entry(id) {
            std::collections::hash_map::Entry::Vacant(v) => {
                v.insert(live.clone());
                true
            }
            // already taken in from the log, which performs it
            std::collections::hash_map::Entry::Occupied(_) => false,
        };
        if first {
            let st = live.state.lock().await;
            self.perform(&live, &st, d.actions);
        }
        Ok(Started { id, created: true })
    }

    /// The instance as it stands.
    pub async fn get(&self, id: Uuid) -> Result<InstanceView, RuntimeError> {
        let live = self.lock_live().get(&id).cloned();
        if let Some(live) = live {
            let st = live.state.lock().await;
            return Ok(view(id, &live.published.machine, &st));
        }
        let events = self.read_events(id).await?;
        if events.is_empty() {
            return Err(RuntimeError::UnknownInstance(id));
        }
        self.view_of(id, &events)
    }

    /// The view of an instance folded from `events` (not necessarily all of its stream).
    fn view_of(&self, id: Uuid, events: &[saga::Event]) -> Result<InstanceView, RuntimeError> {
        let st = fold(events);
        let published = self.0.registry.get(&st.workflow, Some(st.version))?;
        Ok(view(id, &published.machine, &st))
    }

    /// The instance once it has ended, or as it stands when `timeout` passes.
    pub async fn wait(&self, id: Uuid, timeout: Duration) -> Result<InstanceView, RuntimeError> {
        let live = self.lock_live().get(&id).cloned();
        let Some(live) = live else {
            return self.wait_in_store(id, timeout).await;
        };
        let mut ended = live.ended.subscribe();
        let _ = tokio::time::timeout(timeout, ended.wait_for(|e| *e)).await;
        // The handle holds the final state even once the instance has left memory.
        let st = live.state.lock().await;
        Ok(view(id, &live.published.machine, &st))
    }

    /// Like [`wait`](Self::wait) for an instance this process does not hold:
    /// reads it again whenever the log moves.
    async fn wait_in_store(
        &self,
        id: Uuid,
        timeout: Duration,
    ) -> Result<InstanceView, RuntimeError> {
        let mut head = self.0.store.head();
        let until = tokio::time::Instant::now() + timeout;
        loop {
            head.borrow_and_update();
            let view = self.get(id).await?;
            if view.finished_at.is_some() || self.lock_live().contains_key(&id) {
                return if view.finished_at.is_some() {
                    Ok(view)
                } else {
                    Box::pin(self.wait(
                        id,
                        until.saturating_duration_since(tokio::time::Instant::now()),
                    ))
                    .await
                };
            }
            match tokio::time::timeout_at(until, head.changed()).await {
                // under load the head moves with every commit: read again at most every 20 ms
                Ok(Ok(())) => tokio::time::sleep(Duration::from_millis(20)).await,
                _ => return self.get(id).await,
            }
        }
    }

    /// The instance's stream, in order.
    pub async fn history(&self, id: Uuid, from: u64) -> Result<Vec<RecordedEvent>, RuntimeError> {
        let events = self
            .0
            .store
            .read_stream(&format!("saga-{id}"), from)
            .await?;
        if events.is_empty() && from == 0 {
            return Err(RuntimeError::UnknownInstance(id));
        }
        Ok(events)
    }

    pub async fn signal(
        &self,
        id: Uuid,
        name: String,
        payload: Value,
    ) -> Result<InstanceView, RuntimeError> {
        self.apply_and_view(id, Input::Signal { name, payload })
            .await
    }

    pub async fn cancel(
        &self,
        id: Uuid,
        reason: Option<String>,
    ) -> Result<InstanceView, RuntimeError> {
        self.apply_and_view(id, Input::Cancel { reason }).await
    }

    /// Pauses an instance: attempts in flight finish, no new one starts until it resumes.
    pub async fn pause(
        &self,
        id: Uuid,
        reason: Option<String>,
    ) -> Result<InstanceView, RuntimeError> {
        self.apply_and_view(id, Input::Pause { reason }).await
    }

    /// Resumes a paused instance, starting the attempt that came due meanwhile.
    pub async fn resume_paused(&self, id: Uuid) -> Result<InstanceView, RuntimeError> {
        self.apply_and_view(id, Input::Resume).await
    }

    /// Retries a failed instance from the step (or compensation) that failed.
    pub async fn retry(&self, id: Uuid) -> Result<InstanceView, RuntimeError> {
        self.apply_and_view(id, Input::Retry).await
    }

    /// The instance as it stood once the event at `revision` was recorded (time travel).
    pub async fn state_at(&self, id: Uuid, revision: u64) -> Result<InstanceView, RuntimeError> {
        let events = self.read_events(id).await?;
        if events.is_empty() {
            return Err(RuntimeError::UnknownInstance(id));
        }
        let upto = usize::try_from(revision.saturating_add(1)).unwrap_or(usize::MAX);
        if upto > events.len() {
            return Err(RuntimeError::NoSuchRevision(
                id,
                revision,
                events.len() as u64,
            ));
        }
        self.view_of(id, &events[..upto])
    }

    /// Moves a pending timer (an operator extending a deadline, or firing a wait now).
    pub async fn move_timer(
        &self,
        id: Uuid,
        timer: String,
        due: Timestamp,
    ) -> Result<InstanceView, RuntimeError> {
        self.apply_and_view(id, Input::MoveTimer { timer, due })
            .await
    }

    /// Records an operator's or client's input and answers with the instance as it then stands.
    async fn apply_and_view(&self, id: Uuid, input: Input) -> Result<InstanceView, RuntimeError> {
        self.apply(id, input).await?;
        self.get(id).await
    }

    /// Instances from the read model, newest first, one page at a time.
    pub async fn search(&self, filter: &InstanceFilter) -> Result<Page<InstanceRow>, RuntimeError> {
        Ok(self.read_models()?.search(filter).await?)
    }

    /// An order from the orders read model.
    pub async fn order(&self, order_id: &str) -> Result<Option<OrderRow>, RuntimeError> {
        Ok(self.read_models()?.order(order_id).await?)
    }

    /// A customer's orders from the read model, newest first.
    pub async fn customer_orders(
        &self,
        customer_id: &str,
        after: Option<&Cursor>,
        limit: u32,
    ) -> Result<Page<OrderRow>, RuntimeError> {
        Ok(self
            .read_models()?
            .customer_orders(customer_id, after, limit)
            .await?)
    }

    /// Waits until the read models hold every event stored before this call
    /// (read-your-writes); false if `timeout` passed first.
    pub async fn catch_up_read_models(&self, timeout: Duration) -> Result<bool, RuntimeError> {
        let p = self.read_models()?;
        let head = *self.0.store.head().borrow();
        Ok(match head {
            Some(h) => p.wait_for(h, timeout).await,
            None => true,
        })
    }

    /// How many positions of the log the read models have yet to apply (`None` without read models).
    pub fn read_model_lag(&self) -> Option<u64> {
        let p = self.0.projections.as_ref()?;
        let head = (*self.0.store.head().borrow()).unwrap_or(0);
        Some(head.saturating_sub(p.applied().unwrap_or(0)))
    }

    /// Remembers whether the store took the last append (a conflict is an answer, not a refusal).
    fn noted<T>(
        &self,
        r: Result<T, crate::store::StoreError>,
    ) -> Result<T, crate::store::StoreError> {
        let failure = match &r {
            Err(e) if !e.is_conflict() => Some((std::time::Instant::now(), e.to_string())),
            _ => None,
        };
        *self
            .0
            .write_failure
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = failure;
        r
    }

    /// Why the event store refused the last append, if it did within
    /// [`WRITE_FAILURE_WINDOW`] and none has succeeded since. The window lets a
    /// server that takes no traffic (because it said it was not ready) say it
    /// is ready again once the cause is gone; the next refusal says otherwise.
    pub fn store_write_failure(&self) -> Option<String> {
        self.0
            .write_failure
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .as_ref()
            .filter(|(at, _)| at.elapsed() < WRITE_FAILURE_WINDOW)
            .map(|(_, e)| e.clone())
    }

    /// How long the read models have been failing to catch up, and why (`None` while they keep up).
    pub fn read_model_stall(&self) -> Option<(Duration, String)> {
        self.0.projections.as_ref()?.stalled()
    }

    /// Whether the event store answers a read.
    pub async fn store_reachable(&self) -> Result<(), RuntimeError> {
        self.0.store.read_stream("$readiness-probe", 0).await?;
        Ok(())
    }

    fn read_models(&self) -> Result<&Projections, RuntimeError> {
        self.0
            .projections
            .as_deref()
            .ok_or(RuntimeError::NoReadModels)
    }

    // ---- tasks -----------------------------------------------------------

    pub async fn poll_task(
        &self,
        queue: &str,
        wait: Duration,
    ) -> Result<Option<Task>, RuntimeError> {
        let stop = self.0.stop.clone();
        tokio::select! {
            t = self.0.tasks.poll(queue, wait, self.now()) => t.map_err(|tasks::TooManyQueues| {
                RuntimeError::Overloaded(format!(
                    "workers are polling {} queues already; poll again later",
                    tasks::MAX_QUEUES
                ))
            }),
            () = stop.cancelled() => Ok(None),
        }
    }

    /// With replicas: the API addresses of the other replicas, in an order
    /// that changes from call to call (so no one replica gets every relay).
    pub async fn other_replicas(&self) -> Vec<String> {
        match &self.0.cluster {
            Some(c) => c.other_urls().await,
            None => Vec::new(),
        }
    }

    /// The task a worker answers: held here, or (after a restart, or handed
    /// out by another replica) the attempt its id names, if that is the
    /// attempt in flight.
    async fn answered_task(&self, task_id: &str) -> Result<Task, RuntimeError> {
        match self.0.tasks.take(task_id) {
            Some(t) => Ok(t),
            None => self.task_in_store(task_id).await,
        }
    }

    /// The task with this id if it is the attempt in flight of its instance;
    /// [`RuntimeError::TaskGone`] if it names an attempt of a known instance
    /// that has ended.
    async fn task_in_store(&self, task_id: &str) -> Result<Task, RuntimeError> {
        let unknown = || RuntimeError::UnknownTask(task_id.to_string());
        let gone = || RuntimeError::TaskGone(task_id.to_string());
        let tid: TaskId = task_id.parse().map_err(|()| unknown())?;
        let events = self.read_events(tid.instance).await?;
        if events.is_empty() {
            return Err(unknown());
        }
        let st = fold(&events);
        let published = self.0.registry.get(&st.workflow, Some(st.version))?;
        let Some((index, s)) = published
            .machine
            .steps
            .iter()
            .enumerate()
            .find(|(_, s)| s.name == tid.step)
        else {
            return Err(unknown());
        };
        let action = match tid.phase {
            Phase::Forward => &s.action,
            Phase::Compensation => s.compensation.as_ref().ok_or_else(unknown)?,
        };
        let StepAction::Task(call) = action else {
            return Err(unknown());
        };
        let in_flight = saga::InFlight {
            step: index,
            attempt: tid.attempt,
            phase: tid.phase,
        };
        if st.in_flight != Some(in_flight) {
            return Err(gone());
        }
        Ok(Task {
            id: task_id.to_string(),
            idempotency_key: s.effect_key(
                &tid.instance.to_string(),
                tid.phase == Phase::Compensation,
                tid.attempt,
            ),
            queue: call.queue.clone(),
            instance: tid.instance,
            workflow: st.workflow.clone(),
            step: tid.step,
            step_index: index,
            attempt: tid.attempt,
            phase: tid.phase,
            input: Value::Null,
            heartbeat_seconds: call.heartbeat.map(|h| h.as_secs()),
        })
    }

    /// A worker's answer, recorded; [`RuntimeError::TaskGone`] if its attempt
    /// had already ended.
    pub async fn complete_task(&self, task_id: &str, output: Value) -> Result<(), RuntimeError> {
        let task = self.answered_task(task_id).await?;
        let input = Input::Succeeded {
            step: task.step_index,
            attempt: task.attempt,
            phase: task.phase,
            output,
        };
        match self.apply(task.instance, input).await? {
            true => Ok(()),
            false => Err(RuntimeError::TaskGone(task_id.to_string())),
        }
    }

    pub async fn fail_task(
        &self,
        task_id: &str,
        error: String,
        retryable: bool,
    ) -> Result<(), RuntimeError> {
        let task = self.answered_task(task_id).await?;
        let kind = if retryable {
            FailureKind::Transient
        } else {
            FailureKind::Business
        };
        let input = Input::Failed {
            step: task.step_index,
            attempt: task.attempt,
            phase: task.phase,
            kind,
            error,
        };
        match self.apply(task.instance, input).await? {
            true => Ok(()),
            false => Err(RuntimeError::TaskGone(task_id.to_string())),
        }
    }

    /// A heartbeat for a task leased here; [`RuntimeError::TaskGone`] if its
    /// attempt has ended, so the worker can stop.
    pub async fn heartbeat(&self, task_id: &str) -> Result<(), RuntimeError> {
        if self.0.tasks.heartbeat(task_id, self.now()) {
            return Ok(());
        }
        match self.task_in_store(task_id).await {
            // in flight but not leased here: no lease to renew
            Ok(_) => Err(RuntimeError::UnknownTask(task_id.to_string())),
            Err(e) => Err(e),
        }
    }

    /// A heartbeat for a task handed out here or, with replicas, by another
    /// replica: renewed here, or the address of the replica that holds it
    /// (the API relays it there).
    pub async fn heartbeat_anywhere(&self, task_id: &str) -> Result<Heartbeat, RuntimeError> {
        if self.0.tasks.heartbeat(task_id, self.now()) {
            return Ok(Heartbeat::Renewed);
        }
        let task = self.task_in_store(task_id).await?;
        let holder = match &self.0.cluster {
            Some(c) => c.holder_url(task.instance).await,
            None => None,
        };
        holder
            .map(Heartbeat::HeldBy)
            .ok_or_else(|| RuntimeError::UnknownTask(task_id.to_string()))
    }

    /// The queue of a task that is waiting for a worker or leased to one
    /// (here, or with replicas, anywhere).
    pub async fn task_queue(&self, task_id: &str) -> Option<String> {
        match self.0.tasks.queue_of(task_id) {
            Some(q) => Some(q),
            None => self.task_in_store(task_id).await.ok().map(|t| t.queue),
        }
    }

    /// Timers armed and not yet fired, across all instances.
    pub fn pending_timers(&self) -> usize {
        self.0.timers.pending()
    }

    /// Instances held in memory (those that have not ended).
    pub fn live_instances(&self) -> usize {
        self.lock_live().len()
    }

    // ---- replicas --------------------------------------------------------

    /// Whether this process drives the instance (always, without replicas).
    fn drives(&self, id: Uuid) -> bool {
        self.0.cluster.as_ref().is_none_or(|c| c.holds(id))
    }

    /// Whether this server is one of several replicas on a shared store.
    pub fn is_replica(&self) -> bool {
        self.0.cluster.is_some()
    }

    /// This replica's name and the partitions it holds (`None` without replicas).
    pub fn partitions_held(&self) -> Option<(String, Vec<u32>)> {
        let c = self.0.cluster.as_ref()?;
        let held = c.held();
        let list = (0..cluster::PARTITIONS)
            .filter(|p| held & (1 << p) != 0)
            .collect();
        Some((c.config.replica.clone(), list))
    }

    /// Events of non-saga streams as this process learns them from the log
    /// (only with replicas; a single server knows what it wrote).
    pub fn stream_events(&self) -> tokio::sync::broadcast::Receiver<RecordedEvent> {
        self.0.stream_events.subscribe()
    }

    /// Notes an append of this process for the log follower (with replicas).
    fn wrote(&self, id: Uuid, revision: u64) {
        if self.0.cluster.is_some() {
            let mut w = self
                .0
                .written
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let r = w.entry(id).or_insert(revision);
            *r = (*r).max(revision);
        }
    }

    /// Whether this process appended the event at `revision` of an instance
    /// (forgotten once the follower reaches the last such event).
    fn written_here(&self, id: Uuid, revision: u64) -> bool {
        let mut w = self
            .0
            .written
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match w.get(&id) {
            Some(&last) if revision < last => true,
            Some(&last) if revision == last => {
                w.remove(&id);
                true
            }
            _ => false,
        }
    }

    /// Renews the lease and moves partitions in and out, every `ttl / 5`.
    async fn cluster_loop(&self) {
        let Some(c) = &self.0.cluster else { return };
        let every = c.config.renew_every();
        // partitions gained whose instances are yet to be resumed (retried until it works)
        let mut to_resume: u64 = 0;
        loop {
            tokio::select! {
                () = self.0.stop.cancelled() => return,
                () = tokio::time::sleep(every) => {}
            }
            match c.round(self.0.store.as_ref(), self.now(), false).await {
                Ok(change) => {
                    if change.lost != 0 {
                        self.release(change.lost);
                    }
                    if change.gained != 0 {
                        tracing::info!(
                            partitions = change.gained.count_ones(),
                            "partitions taken over"
                        );
                    }
                    to_resume = (to_resume | change.gained) & c.held();
                    if to_resume != 0 {
                        match self.resume_partitions(to_resume).await {
                            Ok(_) => to_resume = 0,
                            Err(e) => {
                                tracing::warn!(error = %e, "could not resume the instances of partitions taken over; retrying")
                            }
                        }
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "could not renew the replica lease");
                    let dropped = c.fence(self.now());
                    if dropped != 0 {
                        tracing::error!(
                            "the replica lease ran out; driving nothing until it is renewed"
                        );
                        self.release(dropped);
                    }
                }
            }
        }
    }

    /// Forgets the instances of partitions given up: no timers, no tasks, no
    /// state. Effects still in flight record their outcome like any writer would.
    fn release(&self, partitions: u64) {
        let gone: Vec<Arc<Live>> = {
            let mut live = self.lock_live();
            let ids: Vec<Uuid> = live
                .keys()
                .filter(|id| partitions & (1 << cluster::partition(**id)) != 0)
                .copied()
                .collect();
            ids.iter().filter_map(|id| live.remove(id)).collect()
        };
        for l in &gone {
            self.0.timers.set(l.id, []);
            self.0.tasks.withdraw(l.id, None);
        }
        tracing::info!(
            partitions = partitions.count_ones(),
            instances = gone.len(),
            "partitions handed over"
        );
    }

    /// Follows the log from `from` and acts on what other replicas wrote: new
    /// inputs of the instances this one drives, workflows published, tokens.
    async fn follow_log(&self, mut from: Option<u64>) {
        let mut head = self.0.store.head();
        loop {
            head.borrow_and_update();
            match self.0.store.read_all_refs(from, 512).await {
                Ok(batch) if !batch.is_empty() => {
                    from = batch.last().map(|e| e.position);
                    self.learn(batch).await;
                    continue;
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "could not follow the log; retrying");
                    tokio::select! {
                        () = self.0.stop.cancelled() => return,
                        () = tokio::time::sleep(Duration::from_secs(1)) => {}
                    }
                    continue;
                }
            }
            tokio::select! {
                () = self.0.stop.cancelled() => return,
                changed = head.changed() => if changed.is_err() { return },
            }
        }
    }

    async fn learn(&self, batch: Vec<crate::store::EventRef>) {
        // the newest revision seen per instance driven here
        let mut moved: HashMap<Uuid, u64> = HashMap::new();
        for e in batch {
            if let Some(id) = e.stream.strip_prefix("saga-") {
                if let Ok(id) = Uuid::parse_str(id) {
                    // (asked first, so the note of an append here is dropped whoever drives it)
                    if !self.written_here(id, e.revision) && self.drives(id) {
                        let r = moved.entry(id).or_default();
                        *r = (*r).max(e.revision);
                    }
                }
                continue;
            }
            if e.stream == cluster::STREAM {
                continue;
            }
            // the few events others keep state from are read whole
            let whole = match self.0.store.read_stream(&e.stream, e.revision).await {
                Ok(events) => events.into_iter().next(),
                Err(err) => {
                    tracing::warn!(stream = %e.stream, error = %err, "could not read an event another replica wrote");
                    None
                }
            };
            if let Some(whole) = whole.filter(|w| w.revision == e.revision) {
                if whole.stream.starts_with("workflow-") {
                    self.0.registry.learn(&whole);
                }
                let _ = self.0.stream_events.send(whole);
            }
        }
        for (id, revision) in moved {
            if let Err(e) = self.refresh(id, revision).await {
                tracing::warn!(instance_id = %id, error = %e, "could not take in another replica's events");
            }
        }
    }

    /// Brings a driven instance up to `revision` (written by another replica)
    /// and performs what it now asks for that this process has not performed.
    async fn refresh(&self, id: Uuid, revision: u64) -> Result<(), RuntimeError> {
        let known = self.lock_live().get(&id).cloned();
        let held = known.is_some();
        let live = match known {
            Some(l) => l,
            None => self.live(id).await?,
        };
        let mut st = live.state.lock().await;
        if !held {
            // just loaded: the whole stream is in
            if !st.is_terminal() {
                self.perform(&live, &st, saga::resume(&st));
            }
            return Ok(());
        }
        if st.events > revision {
            return Ok(()); // already taken in
        }
        self.take_in(&live, &mut st).await
    }

    /// Folds an instance's stream again (another writer moved it) and acts on
    /// what it now says: forgets it if it ended, else performs what is in
    /// flight (attempts this process already performed are skipped).
    async fn take_in(&self, live: &Arc<Live>, st: &mut SagaState) -> Result<(), RuntimeError> {
        *st = fold(&self.read_events(live.id).await?);
        if st.is_terminal() {
            if self.lock_live().remove(&live.id).is_some() {
                self.0.timers.set(live.id, []);
                self.0.tasks.withdraw(live.id, None);
            }
            live.ended.send_replace(true);
        } else {
            self.perform(live, st, saga::resume(st));
        }
        Ok(())
    }

    // ---- the loop --------------------------------------------------------

    fn lock_live(&self) -> std::sync::MutexGuard<'_, HashMap<Uuid, Arc<Live>>> {
        self.0
            .live
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    async fn read_events(&self, id: Uuid) -> Result<Vec<saga::Event>, RuntimeError> {
        let recorded = self.0.store.read_stream(&format!("saga-{id}"), 0).await?;
        recorded
            .iter()
            .map(|r| r.to_event().map_err(RuntimeError::from))
            .collect()
    }

    /// The live instance, loaded from the store if it is not in memory.
    async fn live(&self, id: Uuid) -> Result<Arc<Live>, RuntimeError> {
        let known = self.lock_live().get(&id).cloned();
        if let Some(l) = known {
            return Ok(l);
        }
        let events = self.read_events(id).await?;
        if events.is_empty() {
            return Err(RuntimeError::UnknownInstance(id));
        }
        let st = fold(&events);
        let published = self.0.registry.get(&st.workflow, Some(st.version))?;
        if published.machine.hash != st.definition_hash {
            return Err(RuntimeError::Corrupt(format!(
                "instance {id} ran {} v{} with hash {}, the catalogue has {}",
                st.workflow, st.version, st.definition_hash, published.machine.hash
            )));
        }
        let terminal = st.is_terminal();
        let live = Arc::new(Live::new(id, published, st));
        if terminal || !self.drives(id) {
            // Not kept: another replica drives it, or it has ended.
            return Ok(live);
        }
        Ok(self.lock_live().entry(id).or_insert(live).clone())
    }

    /// Decides and records what `input` does to instance `id`, then performs
    /// the actions; true if anything changed.
    async fn apply(&self, id: Uuid, input: Input) -> Result<bool, RuntimeError> {
        let input = self.redacted(input);
        let live = self.live(id).await?;
        for _ in 0..CONFLICT_ROUNDS {
            let mut st = live.state.lock().await;
            let machine = &live.published.machine;
            let now = self.now();
            // A panic deciding for one saga fails that saga, not the server.
            let decided = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                decide_to(machine, &live.key, &st, input.clone(), now)
            }));
            let (d, next) = match decided {
                Ok(d) => d?,
                Err(panic) => {
                    let reason = fault("deciding", &panic);
                    tracing::error!(instance_id = %id, %reason, "the saga is failed by a fault");
                    decide_to(machine, &live.key, &st, Input::Fault { reason }, now)?
                }
            };
            if d.events.is_empty() {
                return Ok(false);
            }
            let new: Vec<NewEvent> = d.events.iter().map(NewEvent::from).collect();
            match self.noted(
                self.0
                    .store
                    .append(&live.stream, Expected::after(st.events), new)
                    .await,
            ) {
                Ok(a) => {
                    self.wrote(id, a.revision);
                    crate::telemetry::observe(&live.published.machine.name, &st, &d.events);
                    let revived = st.is_terminal() && !next.is_terminal();
                    *st = next;
                    if revived && self.drives(id) {
                        // a retried instance is live again
                        live.ended.send_replace(false);
                        self.lock_live().insert(id, live.clone());
                    }
                    self.perform(&live, &st, d.actions);
                    return Ok(true);
                }
                Err(e) if e.is_conflict() => {
                    tracing::debug!(instance_id = %id, "another writer moved the stream; reloading");
                    self.take_in(&live, &mut st).await?;
                }
                Err(e) => return Err(e.into()),
            }
        }
        Err(RuntimeError::Store(crate::store::StoreError::Unavailable(
            format!("instance {id}: the stream kept moving under us"),
        )))
    }

    /// Feeds an outcome back, retrying while the store is unavailable.
    async fn feed(&self, id: Uuid, input: Input) {
        let mut delay = Duration::from_millis(50);
        loop {
            match self.apply(id, input.clone()).await {
                Ok(_) => return,
                Err(e) if e.is_transient() && !self.0.stop.is_cancelled() => {
                    tracing::warn!(instance_id = %id, error = %e, "could not record an outcome; retrying");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(5));
                }
                Err(e) => {
                    tracing::error!(instance_id = %id, error = %e, "dropped an outcome; it is re-issued when the instance resumes");
                    return;
                }
            }
        }
    }

    /// Carries out actions whose events are durable. Called with the instance's lock held.
    /// Only the replica driving the instance acts; others have recorded the events only.
    /// Carries out `actions`. A panic while doing so (rendering, offering,
    /// arming) fails this saga, from a task of its own, and nothing else.
    fn perform(&self, live: &Arc<Live>, st: &SagaState, actions: Vec<Action>) {
        let performed = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            self.perform_unguarded(live, st, actions)
        }));
        if let Err(panic) = performed {
            self.fail_by_fault(live.id, fault("performing", &panic));
        }
    }

    /// Fault injection, for tests of isolation: the next `n` performs panic
    /// as a bug in rendering or offering would.
    pub fn panic_next_performs(&self, n: u32) {
        self.0
            .perform_faults
            .store(n, std::sync::atomic::Ordering::SeqCst);
    }

    fn perform_unguarded(&self, live: &Arc<Live>, st: &SagaState, actions: Vec<Action>) {
        let faults = &self.0.perform_faults;
        if faults.load(std::sync::atomic::Ordering::Relaxed) > 0
            && faults
                .fetch_update(
                    std::sync::atomic::Ordering::SeqCst,
                    std::sync::atomic::Ordering::SeqCst,
                    |n| n.checked_sub(1),
                )
                .is_ok()
        {
            panic!("injected fault");
        }
        if !self.drives(live.id) {
            return;
        }
        self.0
            .timers
            .set(live.id, st.timers.iter().map(|(id, t)| (id.clone(), t.due)));
        let machine = &live.published.machine;
        // A task lives as long as its attempt: any other of this instance has ended.
        let current_task = st.in_flight.and_then(|f| {
            let s = machine.steps.get(f.step)?;
            let action = match f.phase {
                Phase::Forward => Some(&s.action),
                Phase::Compensation => s.compensation.as_ref(),
            };
            matches!(action, Some(StepAction::Task(_))).then(|| task_id(live.id, s, f))
        });
        self.0.tasks.withdraw(live.id, current_task.as_deref());
        for action in actions {
            match action {
                Action::Perform {
                    step,
                    attempt,
                    phase,
                } => self.perform_attempt(live, machine, st, step, attempt, phase),
                // The timer set mirrors the state's pending timers, set below.
                Action::ArmTimer { .. } => {}
                Action::Finished => {
                    self.lock_live().remove(&live.id);
                    self.0.tasks.withdraw(live.id, None);
                    live.ended.send_replace(true);
                    tracing::debug!(instance_id = %live.id, status = st.status(), "saga ended");
                }
            }
        }
    }

    fn perform_attempt(
        &self,
        live: &Arc<Live>,
        machine: &Machine,
        st: &SagaState,
        step: usize,
        attempt: u32,
        phase: Phase,
    ) {
        if !live.first_performance(step, attempt, phase) {
            return;
        }
        let s = &machine.steps[step];
        let action = match phase {
            Phase::Forward => &s.action,
            Phase::Compensation => match &s.compensation {
                Some(c) => c,
                None => return,
            },
        };
        let key = s.effect_key(&live.key, phase == Phase::Compensation, attempt);
        let id = live.id;
        let ctx = match action {
            StepAction::Wait(_) => return,
            _ => Context::owned(context(machine, &live.key, st)),
        };
        // Outcomes are fed back from a task of their own: the caller holds the instance's lock.
        let report = |outcome: http::Outcome| {
            let rt = self.clone();
            self.0.tracker.spawn(async move {
                rt.feed(id, outcome_input(step, attempt, phase, outcome))
                    .await
            });
        };
        let template_failed = |e: crate::dsl::template::TemplateError| {
            http::Outcome::Failed(FailureKind::Business, format!("template: {e}"))
        };
        // Everything logged while the attempt runs carries its instance, step and attempt.
        let span = tracing::info_span!("attempt", instance_id = %id, workflow = %machine.name, step = %s.name, attempt, phase = ?phase);
        tracing::debug!(parent: &span, "performing");
        match action {
            StepAction::Http(call) => {
                let timeout = s.timeout.unwrap_or(self.0.config.default_http_timeout);
                let rt = self.clone();
                match http::render(call, &ctx, timeout, key, attempt) {
                    Ok(req) => {
                        let client = self.0.http.clone();
                        let attempt_span = span.clone();
                        self.0.tracker.spawn(tracing::Instrument::instrument(
                            async move {
                                let outcome = http::execute(&client, req).await;
                                if let http::Outcome::Failed(kind, error) = &outcome {
                                    let error = rt.0.config.secrets.redact(error);
                                    tracing::info!(?kind, %error, "attempt failed");
                                }
                                rt.feed(id, outcome_input(step, attempt, phase, outcome))
                                    .await;
                            },
                            attempt_span,
                        ));
                    }
                    Err(outcome) => report(outcome),
                }
            }
            StepAction::Task(call) => {
                let input = match &call.input {
                    Some(t) => t.render(&ctx),
                    None => Ok(st.input.clone()),
                };
                let input = match input {
                    Ok(v) => v,
                    Err(e) => return report(template_failed(e)),
                };
                // (`perform` has withdrawn every other task of the instance)
                self.0.tasks.offer(Task {
                    id: task_id(
                        id,
                        s,
                        saga::InFlight {
                            step,
                            attempt,
                            phase,
                        },
                    ),
                    idempotency_key: key,
                    queue: call.queue.clone(),
                    instance: id,
                    workflow: machine.name.clone(),
                    step: s.name.clone(),
                    step_index: step,
                    attempt,
                    phase,
                    input,
                    heartbeat_seconds: call.heartbeat.map(|h| h.as_secs()),
                });
            }
            StepAction::Wait(_) => {}
        }
    }

    /// Fires every timer due at the clock's "now" and records the outcome
    /// before returning; the number fired. With a manual clock, tests advance
    /// time and call this instead of sleeping.
    pub async fn tick(&self) -> usize {
        let due = self.0.timers.due(self.now());
        let mut n = due.len();
        for (id, timer) in due {
            self.feed(id, Input::TimerFired { timer }).await;
        }
        for (id, input) in self.expired_leases() {
            self.feed(id, input).await;
            n += 1;
        }
        n
    }

    async fn timer_loop(&self) {
        loop {
            let now = self.now();
            for (id, timer) in self.0.timers.due(now) {
                let rt = self.clone();
                self.0
                    .tracker
                    .spawn(async move { rt.feed(id, Input::TimerFired { timer }).await });
            }
            let sleep = self
                .0
                .timers
                .next_due()
                .map_or(Duration::from_secs(3600), |due| {
                    now.until(due).max(Duration::from_millis(1))
                });
            tokio::select! {
                () = self.0.stop.cancelled() => return,
                () = tokio::time::sleep(sleep) => {}
                () = self.0.timers.changed.notified() => {}
            }
        }
    }

    /// Fails the attempts whose worker stopped heartbeating (checked every second).
    async fn lease_loop(&self) {
        loop {
            self.expire_leases();
            tokio::select! {
                () = self.0.stop.cancelled() => return,
                () = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
        }
    }

    /// One sweep of [`Self::lease_loop`]: returns how many leases expired.
    pub fn expire_leases(&self) -> usize {
        let expired = self.expired_leases();
        let n = expired.len();
        for (id, input) in expired {
            let rt = self.clone();
            self.0
                .tracker
                .spawn(async move { rt.feed(id, input).await });
        }
        n
    }

    /// The failures to record for the leases whose worker stopped heartbeating.
    fn expired_leases(&self) -> Vec<(Uuid, Input)> {
        self.0
            .tasks
            .expired(self.now())
            .into_iter()
            .map(|task| {
                let error = format!(
                    "the worker sent no heartbeat for {}s",
                    task.heartbeat_seconds.unwrap_or_default()
                );
                (
                    task.instance,
                    Input::Failed {
                        step: task.step_index,
                        attempt: task.attempt,
                        phase: task.phase,
                        kind: FailureKind::Timeout,
                        error,
                    },
                )
            })
            .collect()
    }

    /// Resumes every unfinished instance: re-issues its effect in flight and re-arms its timers.
    pub(crate) async fn resume(&self) -> Result<usize, RuntimeError> {
        self.resume_partitions(u64::MAX).await
    }

    /// Resumes the unfinished instances of the partitions in `mask` that this process drives.
    async fn resume_partitions(&self, mask: u64) -> Result<usize, RuntimeError> {
        let Some(p) = &self.0.projections else {
            return Ok(0);
        };
        p.catch_up(self.0.store.as_ref()).await?;
        let ids = p.unfinished().await?;
        let mut resumed = 0;
        let mut reissuing = tokio::task::JoinSet::new();
        for id in ids {
            if mask & (1 << cluster::partition(id)) == 0 || !self.drives(id) {
                continue;
            }
            let live = match self.live(id).await {
                Ok(l) => l,
                Err(e) if e.is_transient() => {
                    tracing::error!(instance_id = %id, error = %e, "cannot resume");
                    continue;
                }
                Err(e) => {
                    // It would fail the same way on every start: it stops, failed,
                    // and the server starts anyway.
                    tracing::error!(instance_id = %id, error = %e, "cannot resume; the saga is failed");
                    self.fail_unresumable(id, &e).await;
                    continue;
                }
            };
            let st = live.state.lock().await;
            if st.is_terminal() {
                continue;
            }
            resumed += 1;
            if st.in_flight.is_none() {
                self.perform(&live, &st, saga::resume(&st));
                continue;
            }
            drop(st);
            // The attempt in flight goes out again, its timeout restarted (recorded as
            // `AttemptReissued`); many at once, so their appends share commits.
            if reissuing.len() >= REISSUE_AT_ONCE {
                reissuing.join_next().await;
            }
            let rt = self.clone();
            reissuing.spawn(async move { rt.reissue(live).await });
        }
        reissuing.join_all().await;
        tracing::info!(resumed, "unfinished sagas resumed");
        Ok(resumed)
    }

    /// Fails a saga whose actions could not be performed, from a task of its own.
    fn fail_by_fault(&self, id: Uuid, reason: String) {
        tracing::error!(instance_id = %id, %reason, "the saga is failed by a fault");
        let rt = self.clone();
        self.0.tracker.spawn(async move {
            rt.feed(id, Input::Fault { reason }).await;
        });
    }

    /// Records `SagaFailed` for an instance that cannot even be loaded (its
    /// definition no longer compiles, its history does not decode).
    async fn fail_unresumable(&self, id: Uuid, e: &RuntimeError) {
        let event = saga::Event::SagaFailed {
            reason: self
                .0
                .config
                .secrets
                .redact(&format!("cannot resume: {e}"))
                .into_owned(),
            at: self.now(),
        };
        let stream = format!("saga-{id}");
        if let Err(err) = self
            .0
            .store
            .append(
                &stream,
                Expected::StreamExists,
                vec![NewEvent::from(&event)],
            )
            .await
        {
            tracing::error!(instance_id = %id, error = %err, "could not record the failure");
        }
    }

    /// Sends an instance's attempt in flight again with its key, its timeout
    /// counting from now. If that cannot be recorded the attempt is sent all
    /// the same (its key keeps it one effect) with its timers as they were.
    async fn reissue(&self, live: Arc<Live>) {
        if let Err(e) = self.apply(live.id, Input::Reissue).await {
            tracing::warn!(instance_id = %live.id, error = %e, "could not record the re-issue; sending the attempt as it stood");
            let st = live.state.lock().await;
            if !st.is_terminal() {
                self.perform(&live, &st, saga::resume(&st));
            }
        }
    }
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod timer_tests;

/// The handle of a task for attempt `f` of step `s`.
fn task_id(instance: Uuid, s: &crate::compile::Step, f: saga::InFlight) -> String {
    TaskId {
        instance,
        step: s.name.clone(),
        phase: f.phase,
        attempt: f.attempt,
    }
    .to_string()
}

impl Runtime {
    /// A failure's text with the server's secrets masked: it becomes an event.
    fn redacted(&self, input: Input) -> Input {
        match input {
            Input::Failed {
                step,
                attempt,
                phase,
                kind,
                error,
            } => Input::Failed {
                step,
                attempt,
                phase,
                kind,
                error: self.0.config.secrets.redact(&error).into_owned(),
            },
            other => other,
        }
    }
}

/// Why a saga was failed by a panic, for its `SagaFailed` event.
fn fault(doing: &str, panic: &Box<dyn std::any::Any + Send>) -> String {
    let what = panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic".into());
    format!("internal error while {doing}: {what}")
}

fn outcome_input(step: usize, attempt: u32, phase: Phase, outcome: http::Outcome) -> Input {
    match outcome {
        http::Outcome::Succeeded(output) => Input::Succeeded {
            step,
            attempt,
            phase,
            output,
        },
        http::Outcome::Failed(kind, error) => Input::Failed {
            step,
            attempt,
            phase,
            kind,
            error,
        },
    }
}

fn view(id: Uuid, machine: &Machine, st: &SagaState) -> InstanceView {
    InstanceView {
        id,
        workflow: st.workflow.clone(),
        version: st.version,
        status: st.status(),
        current_step: st
            .current_step()
            .and_then(|i| machine.steps.get(i))
            .map(|s| s.name.clone()),
        attempt: st.attempt,
        input: st.input.clone(),
        output: st.output.clone(),
        error: st.error.clone(),
        started_at: st.started_at,
        updated_at: st.updated_at,
        finished_at: st.finished_at,
        events: st.events,
        paused: st.paused,
        outputs: st.outputs.clone(),
        timers: st
            .timers
            .iter()
            .map(|(id, t)| (id.clone(), t.purpose, t.due))
            .collect(),
    }
}
