//! The instance API: start, read, wait for and steer one instance. Every
//! change goes through the executor's `apply`.

use super::*;
use executor::Live;

/// Namespace of instance ids derived from an Idempotency-Key.
const IDEMPOTENCY_NAMESPACE: Uuid = Uuid::from_u128(0x5a6a_f10e_0000_4000_8000_0000_0000_0001);

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

/// The id of the instance an Idempotency-Key starts (ADR 4).
pub fn keyed_id(workflow: &str, key: &str) -> Uuid {
    Uuid::new_v5(
        &IDEMPOTENCY_NAMESPACE,
        format!("{workflow}\n{key}").as_bytes(),
    )
}

impl Runtime {
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
            Some(k) => keyed_id(workflow, k),
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
        let new: Vec<NewEvent> = d.events.into_iter().map(NewEvent::from).collect();
        match self.noted(self.0.store.append(&stream, Expected::NoStream, new).await) {
            Ok(a) => self.wrote(id, a.revision),
            Err(crate::store::StoreError::Removed { removed_at, .. }) => {
                return Err(RuntimeError::StartOfRemoved { id, removed_at });
            }
            Err(e) if e.is_conflict() && idempotency_key.is_some() => {
                let existing = self.get(id).await?;
                if existing.input != input || existing.workflow != workflow {
                    return Err(RuntimeError::IdempotencyMismatch(id));
                }
                // The first request may have recorded the start and never heard
                // back: then nothing drives the instance yet.
                if self.drives(id) && !self.lock_live().contains_key(&id) {
                    self.catch_up(id, None).await?;
                }
                return Ok(Started { id, created: false });
            }
            Err(e) => {
                if e.is_transient() {
                    // it may have been recorded with its answer lost
                    self.catch_up_later(id);
                }
                return Err(e.into());
            }
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
        // (a stale instance is shown as its stream has it)
        if let Some(live) = live.filter(|l| !l.stale.load(std::sync::atomic::Ordering::SeqCst)) {
            let st = live.state.lock().await;
            return Ok(view(id, &live.published.machine, &st));
        }
        let events = self.read_events(id).await?;
        if events.is_empty() {
            return Err(self.why_missing(id).await);
        }
        self.view_of(id, &events)
    }

    /// The view of an instance folded from `events` (not necessarily all of its stream).
    pub(crate) fn view_of(
        &self,
        id: Uuid,
        events: &[saga::Event],
    ) -> Result<InstanceView, RuntimeError> {
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

    /// The instance as soon as `done` holds for it or it has ended, or as it
    /// stands when `timeout` passes: a wait for a revision or a status
    /// without polling. Reads it again whenever the log moves (at most every
    /// 10 ms), so it also sees instances another replica drives.
    pub async fn wait_until(
        &self,
        id: Uuid,
        timeout: Duration,
        done: impl Fn(&InstanceView) -> bool,
    ) -> Result<InstanceView, RuntimeError> {
        let mut head = self.0.store.head();
        let until = tokio::time::Instant::now() + timeout;
        loop {
            head.borrow_and_update();
            let view = self.get(id).await?;
            if view.finished_at.is_some() || done(&view) {
                return Ok(view);
            }
            match tokio::time::timeout_at(until, head.changed()).await {
                Ok(Ok(())) => tokio::time::sleep(Duration::from_millis(10)).await,
                _ => return self.get(id).await,
            }
        }
    }

    /// Like [`wait`](Self::wait) for an instance this process does not hold:
    /// reads it again whenever the log moves, until it ends or this process
    /// takes it in (then waits as for its own).
    pub(crate) async fn wait_in_store(
        &self,
        id: Uuid,
        timeout: Duration,
    ) -> Result<InstanceView, RuntimeError> {
        let until = tokio::time::Instant::now() + timeout;
        let held_here = |_: &InstanceView| self.lock_live().contains_key(&id);
        let view = self.wait_until(id, timeout, held_here).await?;
        if view.finished_at.is_none() && self.lock_live().contains_key(&id) {
            let left = until.saturating_duration_since(tokio::time::Instant::now());
            return Box::pin(self.wait(id, left)).await;
        }
        Ok(view)
    }

    /// The instance's stream, in order.
    pub async fn history(&self, id: Uuid, from: u64) -> Result<Vec<RecordedEvent>, RuntimeError> {
        let events = self
            .0
            .store
            .read_stream(&format!("saga-{id}"), from)
            .await?;
        if events.is_empty() && from == 0 {
            return Err(self.why_missing(id).await);
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
            return Err(self.why_missing(id).await);
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
    pub(crate) async fn apply_and_view(
        &self,
        id: Uuid,
        input: Input,
    ) -> Result<InstanceView, RuntimeError> {
        self.apply(id, input).await?;
        self.get(id).await
    }
}

pub(crate) fn view(id: Uuid, machine: &Machine, st: &SagaState) -> InstanceView {
    InstanceView {
        id,
        workflow: st.workflow.to_string(),
        version: st.version,
        status: st.status(),
        current_step: st
            .current_step()
            .and_then(|i| machine.steps.get(i))
            .map(|s| s.name.clone()),
        attempt: st.attempt,
        input: Value::clone(&st.input),
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
