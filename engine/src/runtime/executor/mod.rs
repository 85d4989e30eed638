//! The executor: the only code that calls `decide` and appends a saga's events.
//!
//! For each input it takes the instance's lock, asks [`decide`](crate::saga::decide)
//! what happens, appends the events with the expected revision (a conflict
//! means reload and decide again), folds them into the in-memory state, and
//! only then performs the actions: HTTP calls, tasks for workers, timers.
//! Live instances stay in memory until they end; no stream is re-read per step.

mod resume;

#[cfg(test)]
pub(crate) use resume::unfinished_in_store;

use super::*;
use crate::store::Payload;

/// An instance that has not ended, held in memory.
pub(crate) struct Live {
    pub(crate) id: Uuid,
    pub(crate) key: String,
    pub(crate) stream: String,
    pub(crate) published: Arc<Published>,
    pub(crate) state: tokio::sync::Mutex<SagaState>,
    pub(crate) ended: watch::Sender<bool>,
    /// The attempts this process has performed, so an attempt learnt again
    /// from the log (written by another replica) is not performed twice.
    pub(crate) performed: Mutex<HashSet<saga::InFlight>>,
    /// The saga's span: every attempt's span is a child of it (not of the
    /// attempt whose outcome led to it).
    pub(crate) span: tracing::Span,
    /// An append's answer was lost: the stream may hold more than the state,
    /// so nothing is decided or shown from memory until it is read again.
    pub(crate) stale: std::sync::atomic::AtomicBool,
}

impl Live {
    pub(crate) fn new(id: Uuid, published: Arc<Published>, st: SagaState) -> Self {
        let ended = st.is_terminal();
        let key = id.to_string();
        // (the id's text made once: formatting a Uuid per span cost more)
        let span = tracing::info_span!(parent: None, "saga", instance_id = %key, workflow = %published.machine.name);
        Self {
            id,
            stream: format!("saga-{key}"),
            key,
            published,
            state: tokio::sync::Mutex::new(st),
            ended: watch::channel(ended).0,
            performed: Mutex::default(),
            span,
            stale: Default::default(),
        }
    }

    /// True the first time an attempt is seen.
    pub(crate) fn first_performance(&self, attempt: saga::InFlight) -> bool {
        self.performed
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(attempt)
    }
}

impl Runtime {
    pub(crate) fn lock_live(&self) -> std::sync::MutexGuard<'_, HashMap<Uuid, Arc<Live>>> {
        self.0
            .live
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub(crate) async fn read_events(&self, id: Uuid) -> Result<Vec<saga::Event>, RuntimeError> {
        let recorded = self.0.store.read_stream(&format!("saga-{id}"), 0).await?;
        recorded
            .iter()
            .map(|r| r.to_event().map_err(RuntimeError::from))
            .collect()
    }

    /// The live instance, loaded from the store if it is not in memory.
    pub(crate) async fn live(&self, id: Uuid) -> Result<Arc<Live>, RuntimeError> {
        let known = self.lock_live().get(&id).cloned();
        if let Some(l) = known {
            return Ok(l);
        }
        let events = self.read_events(id).await?;
        if events.is_empty() {
            return Err(self.why_missing(id).await);
        }
        let st = fold(&events);
        let published = self.0.registry.get(&st.workflow, Some(st.version))?;
        if *published.machine.hash != *st.definition_hash {
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
    pub(crate) async fn apply(&self, id: Uuid, input: Input) -> Result<bool, RuntimeError> {
        let input = self.redacted(input);
        let live = self.live(id).await?;
        for _ in 0..CONFLICT_ROUNDS {
            let mut st = live.state.lock().await;
            if live.stale.load(std::sync::atomic::Ordering::SeqCst) {
                self.take_in(&live, &mut st).await?;
            }
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
            // the events go to the store typed; what was stored is observed after
            let new: Vec<NewEvent> = d.events.into_iter().map(NewEvent::from).collect();
            let stored: Vec<Payload> = new.iter().map(|e| e.data.clone()).collect();
            match self.noted(
                self.0
                    .store
                    .append(&live.stream, Expected::after(st.events), new)
                    .await,
            ) {
                Ok(a) => {
                    self.wrote(id, a.revision);
                    crate::telemetry::observe(
                        &live.published.machine.name,
                        &st,
                        stored.iter().filter_map(Payload::as_saga),
                    );
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
                Err(e) => {
                    if e.is_transient() {
                        // The append may have been recorded with its answer lost.
                        live.stale.store(true, std::sync::atomic::Ordering::SeqCst);
                        self.catch_up_later(id);
                    }
                    return Err(e.into());
                }
            }
        }
        Err(RuntimeError::Store(crate::store::StoreError::Unavailable(
            format!("instance {id}: the stream kept moving under us"),
        )))
    }

    /// Brings an instance in memory in line with its stream and performs what
    /// it asks that this process has not performed (attempts performed before
    /// are skipped): after an append whose answer was lost, or a start
    /// recorded by a request that never heard back; or (with `revision`)
    /// after another replica wrote up to that revision, unless it is in already.
    pub(crate) async fn catch_up(
        &self,
        id: Uuid,
        revision: Option<u64>,
    ) -> Result<(), RuntimeError> {
        let known = self.lock_live().get(&id).cloned();
        let Some(live) = known else {
            let live = self.live(id).await?;
            let st = live.state.lock().await;
            if !st.is_terminal() && self.drives(id) {
                self.perform(&live, &st, saga::resume(&st));
            }
            return Ok(());
        };
        let mut st = live.state.lock().await;
        if revision.is_some_and(|r| st.events > r) {
            return Ok(()); // already taken in
        }
        self.take_in(&live, &mut st).await
    }

    /// [`catch_up`](Self::catch_up) from a task of its own, retried while the
    /// store is unavailable (one such task per instance at a time).
    pub(crate) fn catch_up_later(&self, id: Uuid) {
        let first = self
            .0
            .catching_up
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(id);
        if !first {
            return;
        }
        let rt = self.clone();
        self.0.tracker.spawn(async move {
            let mut delay = Duration::from_millis(50);
            loop {
                tokio::select! {
                    () = rt.0.stop.cancelled() => break,
                    () = tokio::time::sleep(delay) => {}
                }
                match rt.catch_up(id, None).await {
                    Err(e) if e.is_transient() => {
                        delay = (delay * 2).min(Duration::from_secs(5));
                    }
                    Err(RuntimeError::UnknownInstance(_)) | Ok(()) => break,
                    Err(e) => {
                        tracing::error!(instance_id = %id, error = %e, "could not catch up with the stream");
                        break;
                    }
                }
            }
            rt.0.catching_up
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .remove(&id);
        });
    }

    /// The HTTP client of `http` steps, built on first use.
    fn http_client(&self) -> Result<http::StepClient, http::Outcome> {
        if let Some(c) = self.0.http.get() {
            return Ok(c.clone());
        }
        let config = &self.0.config;
        let built =
            http::StepClient::new(config.http_proxy, config.step_answer_limit).map_err(|e| {
                http::Outcome::Failed(FailureKind::Transient, format!("HTTP client: {e}"))
            })?;
        Ok(self.0.http.get_or_init(|| built).clone())
    }

    /// Feeds an outcome back, retrying while the store is unavailable.
    pub(crate) async fn feed(&self, id: Uuid, input: Input) {
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
    pub(crate) fn perform(&self, live: &Arc<Live>, st: &SagaState, actions: Vec<Action>) {
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

    pub(crate) fn perform_unguarded(&self, live: &Arc<Live>, st: &SagaState, actions: Vec<Action>) {
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
        let current_tasks: Vec<String> = st
            .in_flight
            .iter()
            .filter_map(|&f| {
                let s = machine.steps.get(f.step)?;
                let unit = s.unit(f.index);
                let action = match f.phase {
                    Phase::Forward => Some(&unit.action),
                    Phase::Compensation => unit.compensation.as_ref(),
                };
                matches!(action, Some(StepAction::Task(_))).then(|| task_id(live.id, s, f))
            })
            .collect();
        self.0.tasks.withdraw(live.id, &current_tasks);
        for action in actions {
            match action {
                Action::Perform {
                    step,
                    index,
                    attempt,
                    phase,
                } => {
                    let f = saga::InFlight {
                        step,
                        index,
                        attempt,
                        phase,
                    };
                    self.perform_attempt(live, machine, st, f)
                }
                // The timer set mirrors the state's pending timers, set below.
                Action::ArmTimer { .. } => {}
                Action::Finished => {
                    self.lock_live().remove(&live.id);
                    self.0.tasks.withdraw(live.id, &[]);
                    live.ended.send_replace(true);
                    tracing::debug!(instance_id = %live.id, status = st.status(), "saga ended");
                }
            }
        }
    }

    pub(crate) fn perform_attempt(
        &self,
        live: &Arc<Live>,
        machine: &Machine,
        st: &SagaState,
        f: saga::InFlight,
    ) {
        if !live.first_performance(f) {
            return;
        }
        let saga::InFlight {
            step,
            index,
            attempt,
            phase,
        } = f;
        let s = machine.steps[step].unit(index);
        let action = match phase {
            Phase::Forward => &s.action,
            Phase::Compensation => match &s.compensation {
                Some(c) => c,
                None => return,
            },
        };
        let element = index.filter(|_| machine.steps[step].for_each.is_some());
        let key = s.effect_key(&live.key, element, phase == Phase::Compensation, attempt);
        let id = live.id;
        let ctx = match action {
            StepAction::Wait(_) | StepAction::Parallel => return,
            _ => saga::unit_context(machine, &live.key, st, step, index),
        };
        // Outcomes are fed back from a task of their own: the caller holds the instance's lock.
        let report = |outcome: http::Outcome| {
            let rt = self.clone();
            self.0
                .tracker
                .spawn(async move { rt.feed(id, outcome_input(f, outcome)).await });
        };
        let template_failed = |e: crate::dsl::template::TemplateError| {
            http::Outcome::Failed(FailureKind::Business, format!("template: {e}"))
        };
        // Everything logged while the attempt runs carries its instance, step and attempt.
        let span = tracing::info_span!(parent: &live.span, "attempt", instance_id = %live.key, workflow = %machine.name, step = %s.name, attempt, phase = ?phase);
        tracing::debug!(parent: &span, "performing");
        match action {
            StepAction::Http(call) => {
                let timeout = s.timeout.unwrap_or(self.0.config.default_http_timeout);
                let rt = self.clone();
                match http::render(call, &ctx, timeout, key, attempt) {
                    Ok(req) => {
                        let client = match self.http_client() {
                            Ok(c) => c,
                            Err(e) => return report(e),
                        };
                        let attempt_span = span.clone();
                        self.0.tracker.spawn(tracing::Instrument::instrument(
                            async move {
                                let outcome = http::execute(&client, req).await;
                                if let http::Outcome::Failed(kind, error) = &outcome {
                                    let error = rt.0.config.secrets.redact(error);
                                    tracing::info!(?kind, %error, "attempt failed");
                                }
                                rt.feed(id, outcome_input(f, outcome)).await;
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
                    None => Ok(Value::clone(&st.input)),
                };
                let input = match input {
                    Ok(v) => v,
                    Err(e) => return report(template_failed(e)),
                };
                // (`perform` has withdrawn every other task of the instance)
                self.0.tasks.offer(Task {
                    id: task_id(id, &machine.steps[step], f),
                    idempotency_key: key,
                    queue: call.queue.clone(),
                    instance: id,
                    workflow: machine.name.clone(),
                    step: s.name.clone(),
                    step_index: step,
                    index,
                    element,
                    attempt,
                    phase,
                    input,
                    heartbeat_seconds: call.heartbeat.map(|h| h.as_secs()),
                });
            }
            StepAction::Wait(_) | StepAction::Parallel => {}
        }
    }

    /// Fails a saga whose actions could not be performed, from a task of its own.
    pub(crate) fn fail_by_fault(&self, id: Uuid, reason: String) {
        tracing::error!(instance_id = %id, %reason, "the saga is failed by a fault");
        let rt = self.clone();
        self.0.tracker.spawn(async move {
            rt.feed(id, Input::Fault { reason }).await;
        });
    }

    /// Remembers whether the store took the last append (a conflict is an answer, not a refusal).
    pub(crate) fn noted<T>(
        &self,
        r: Result<T, crate::store::StoreError>,
    ) -> Result<T, crate::store::StoreError> {
        let failure = match &r {
            Err(e) if !e.is_conflict() && !e.is_removed() => {
                Some((std::time::Instant::now(), e.to_string()))
            }
            _ => None,
        };
        *self
            .0
            .write_failure
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = failure;
        r
    }

    /// Folds an instance's stream again (another writer moved it) and acts on
    /// what it now says: forgets it if it ended, else performs what is in
    /// flight (attempts this process already performed are skipped).
    pub(crate) async fn take_in(
        &self,
        live: &Arc<Live>,
        st: &mut SagaState,
    ) -> Result<(), RuntimeError> {
        *st = fold(&self.read_events(live.id).await?);
        live.stale.store(false, std::sync::atomic::Ordering::SeqCst);
        if st.is_terminal() {
            if self.lock_live().remove(&live.id).is_some() {
                self.0.timers.set(live.id, []);
                self.0.tasks.withdraw(live.id, &[]);
            }
            live.ended.send_replace(true);
        } else {
            self.perform(live, st, saga::resume(st));
        }
        Ok(())
    }

    /// A failure's text with the server's secrets masked: it becomes an event.
    pub(crate) fn redacted(&self, input: Input) -> Input {
        match input {
            Input::Failed {
                step,
                index,
                attempt,
                phase,
                kind,
                error,
            } => Input::Failed {
                step,
                index,
                attempt,
                phase,
                kind,
                error: self.0.config.secrets.redact(&error).into_owned(),
            },
            other => other,
        }
    }
}

/// The handle of a task for attempt `f` of step `s` (of its branch or element).
pub(crate) fn task_id(instance: Uuid, s: &crate::compile::Step, f: saga::InFlight) -> String {
    TaskId {
        instance,
        step: s.unit(f.index).name.clone(),
        element: f.index.filter(|_| s.for_each.is_some()),
        phase: f.phase,
        attempt: f.attempt,
    }
    .to_string()
}

/// Why a saga was failed by a panic, for its `SagaFailed` event.
pub(crate) fn fault(doing: &str, panic: &Box<dyn std::any::Any + Send>) -> String {
    let what = panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic".into());
    format!("internal error while {doing}: {what}")
}

pub(crate) fn outcome_input(f: saga::InFlight, outcome: http::Outcome) -> Input {
    Input::answer(
        f,
        match outcome {
            http::Outcome::Succeeded(output) => Ok(output),
            http::Outcome::Failed(kind, error) => Err((kind, error)),
        },
    )
}
