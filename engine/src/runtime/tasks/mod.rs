//! Worker tasks, as the runtime hands them out and takes their answers.
//! The queues themselves are in [`queues`].

mod queues;

pub use queues::*;

use super::*;

impl Runtime {
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

    /// The task a worker answers: held here, or (after a restart, or handed
    /// out by another replica) the attempt its id names, if that is the
    /// attempt in flight.
    pub(crate) async fn answered_task(&self, task_id: &str) -> Result<Task, RuntimeError> {
        match self.0.tasks.take(task_id) {
            Some(t) => Ok(t),
            None => self.task_in_store(task_id).await,
        }
    }

    /// The task with this id if it is the attempt in flight of its instance;
    /// [`RuntimeError::TaskGone`] if it names an attempt of a known instance
    /// that has ended.
    pub(crate) async fn task_in_store(&self, task_id: &str) -> Result<Task, RuntimeError> {
        let unknown = || RuntimeError::UnknownTask(task_id.to_string());
        let gone = || RuntimeError::TaskGone(task_id.to_string());
        let tid: TaskId = task_id.parse().map_err(|()| unknown())?;
        let events = self.read_events(tid.instance).await?;
        if events.is_empty() {
            return Err(unknown());
        }
        let st = fold(&events);
        let published = self.0.registry.get(&st.workflow, Some(st.version))?;
        let machine = &published.machine;
        let Some((index, branch)) = machine.unit_named(&tid.step) else {
            return Err(unknown());
        };
        let unit = branch.or(tid.element);
        let s = machine.steps[index].unit(unit);
        let action = match tid.phase {
            Phase::Forward => &s.action,
            Phase::Compensation => s.compensation.as_ref().ok_or_else(unknown)?,
        };
        let StepAction::Task(call) = action else {
            return Err(unknown());
        };
        let in_flight = saga::InFlight {
            step: index,
            index: unit,
            attempt: tid.attempt,
            phase: tid.phase,
        };
        if !st.in_flight.contains(&in_flight) {
            return Err(gone());
        }
        Ok(Task {
            id: task_id.to_string(),
            idempotency_key: s.effect_key(
                &tid.instance.to_string(),
                tid.element,
                tid.phase == Phase::Compensation,
                tid.attempt,
            ),
            queue: call.queue.clone(),
            instance: tid.instance,
            workflow: st.workflow.to_string(),
            step: tid.step,
            step_index: index,
            index: unit,
            element: tid.element,
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
            index: task.index,
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
            index: task.index,
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
            Some(c) => c.holder_url(self.0.store.as_ref(), task.instance).await,
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
}
