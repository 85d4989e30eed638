//! The worker protocol: long-poll a queue, heartbeat, complete or fail.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use poem_openapi::param::{Path, Query};
use poem_openapi::payload::Json;
use poem_openapi::{ApiResponse, Object, OpenApi};
use sagaflow_engine::runtime::{Heartbeat, Runtime};

use crate::auth::{Auth, Need};
use crate::problem::ApiError;
use crate::relay::{Relay, RELAYED_HEADER};
use crate::Tag;

const MAX_POLL: Duration = Duration::from_secs(60);

/// A task for a worker: one attempt of a step's effect (or of its compensation).
#[derive(Object, serde::Deserialize)]
#[oai(skip_serializing_if_is_none)]
pub struct WorkerTask {
    /// This attempt's handle, to complete, fail or heartbeat it with
    /// (`{instance}:{step}[.{element}][:compensate]:{attempt}`).
    pub id: String,
    /// The effect's idempotency key: the same on every attempt of the step
    /// (unless it sets `idempotency: per_attempt`). Do the effect once per key.
    pub idempotency_key: String,
    pub queue: String,
    pub instance_id: uuid::Uuid,
    pub workflow: String,
    /// The step's name, or the branch's for a branch of a parallel step.
    pub step: String,
    /// The element's position, for an element of a for-each step (its
    /// `.item` is whatever the step's `task.input` puts in `input`).
    pub element: Option<u32>,
    pub attempt: u32,
    /// `forward`, or `compensation` when the task undoes its step.
    pub phase: String,
    pub input: serde_json::Value,
    /// Heartbeat at least this often, if set.
    pub heartbeat_seconds: Option<u64>,
}

#[derive(Object)]
#[oai(skip_serializing_if_is_none)]
pub struct CompleteTask {
    /// The step's output, readable by later steps as `.steps.NAME.output`.
    pub output: Option<serde_json::Value>,
}

#[derive(Object)]
#[oai(skip_serializing_if_is_none)]
pub struct FailTask {
    pub error: String,
    /// True if the step may succeed when tried again (within its retry policy).
    #[oai(default)]
    pub retryable: bool,
}

#[derive(Object)]
#[oai(skip_serializing_if_is_none)]
pub struct TaskAnswer {
    /// Always true: the answer was recorded. An answer to an attempt that had
    /// already ended is refused with 409 `/problems/task-gone` instead.
    pub accepted: bool,
}

#[derive(ApiResponse)]
pub enum PollResponse {
    /// A task, leased to the caller.
    #[oai(status = 200)]
    Task(Json<Box<WorkerTask>>),
    /// No task came within the wait.
    #[oai(status = 204)]
    Empty,
}

#[derive(ApiResponse)]
pub enum HeartbeatResponse {
    #[oai(status = 204)]
    Alive,
}

pub struct TasksApi {
    pub rt: Runtime,
    pub polls: PollSlots,
    pub relay: Relay,
}

/// How many polls one token may have waiting at once; more answer 429.
pub const POLLS_PER_TOKEN: usize = 64;

/// The polls each token has waiting.
#[derive(Clone, Default)]
pub struct PollSlots(Arc<Mutex<HashMap<String, usize>>>);

/// One poll's place, given back when the poll ends however it ends.
struct PollSlot {
    slots: PollSlots,
    token: String,
}

impl PollSlots {
    fn take(&self, token: &str) -> Result<PollSlot, ApiError> {
        let mut held = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let n = held.entry(token.to_string()).or_default();
        if *n >= POLLS_PER_TOKEN {
            return Err(ApiError::too_many_polls(POLLS_PER_TOKEN));
        }
        *n += 1;
        Ok(PollSlot {
            slots: self.clone(),
            token: token.to_string(),
        })
    }
}

impl Drop for PollSlot {
    fn drop(&mut self) {
        let mut held = self
            .slots
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(n) = held.get_mut(&self.token) {
            *n -= 1;
            if *n == 0 {
                held.remove(&self.token);
            }
        }
    }
}

impl TasksApi {
    /// A worker may answer the tasks of the queues its token serves.
    async fn may_answer(&self, auth: &Auth, task_id: &str) -> Result<(), ApiError> {
        auth.require(Need::Work)?;
        if let Some(queue) = self.rt.task_queue(task_id).await {
            auth.require_queue(&queue)?;
        }
        Ok(())
    }
}

fn worker_task(t: sagaflow_engine::runtime::Task) -> WorkerTask {
    WorkerTask {
        id: t.id,
        idempotency_key: t.idempotency_key,
        queue: t.queue,
        instance_id: t.instance,
        workflow: t.workflow,
        step: t.step,
        element: t.element,
        attempt: t.attempt,
        phase: match t.phase {
            sagaflow_engine::saga::Phase::Forward => "forward".into(),
            sagaflow_engine::saga::Phase::Compensation => "compensation".into(),
        },
        input: t.input,
        heartbeat_seconds: t.heartbeat_seconds,
    }
}

#[OpenApi(prefix_path = "/tasks", tag = "Tag::Tasks")]
impl TasksApi {
    /// Take the next task of a queue, waiting up to `wait` (default `30s`, at most `60s`) for one.
    #[oai(path = "/:queue/poll", method = "post", operation_id = "poll_task")]
    async fn poll(
        &self,
        auth: Auth,
        queue: Path<String>,
        wait: Query<Option<String>>,
        req: &poem::Request,
    ) -> Result<PollResponse, ApiError> {
        auth.require(Need::Work)?;
        auth.require_queue(&queue)?;
        let _slot = self.polls.take(&auth.0.token)?;
        let wait = match wait.0.as_deref().filter(|w| !w.is_empty()) {
            Some(w) => humantime::parse_duration(w)
                .map_err(|e| ApiError::bad_request("bad-wait", format!("wait `{w}`: {e}")))?,
            None => Duration::from_secs(30),
        };
        let relayed = req.headers().contains_key(RELAYED_HEADER);
        if self.rt.is_replica() && !relayed && !wait.is_zero() {
            // with replicas: a task waiting here, else one waiting on another replica, else wait here
            if let Some(t) = self.rt.poll_task(&queue, Duration::ZERO).await? {
                return Ok(PollResponse::Task(Json(Box::new(worker_task(t)))));
            }
            let authorization = req
                .headers()
                .get("authorization")
                .and_then(|v| v.to_str().ok());
            let replicas = self.rt.other_replicas().await;
            if let Some(t) = self.relay.poll(&replicas, &queue, authorization).await {
                if let Ok(t) = serde_json::from_value::<WorkerTask>(t) {
                    return Ok(PollResponse::Task(Json(Box::new(t))));
                }
            }
        }
        Ok(match self.rt.poll_task(&queue, wait.min(MAX_POLL)).await? {
            Some(t) => PollResponse::Task(Json(Box::new(worker_task(t)))),
            None => PollResponse::Empty,
        })
    }

    /// Complete a task with its output.
    #[oai(
        path = "/:id/complete",
        method = "post",
        operation_id = "complete_task"
    )]
    async fn complete(
        &self,
        auth: Auth,
        id: Path<String>,
        body: Json<CompleteTask>,
    ) -> Result<Json<TaskAnswer>, ApiError> {
        self.may_answer(&auth, &id).await?;
        self.rt
            .complete_task(&id, body.0.output.unwrap_or(serde_json::Value::Null))
            .await?;
        Ok(Json(TaskAnswer { accepted: true }))
    }

    /// Fail a task.
    #[oai(path = "/:id/fail", method = "post", operation_id = "fail_task")]
    async fn fail(
        &self,
        auth: Auth,
        id: Path<String>,
        body: Json<FailTask>,
    ) -> Result<Json<TaskAnswer>, ApiError> {
        self.may_answer(&auth, &id).await?;
        self.rt
            .fail_task(&id, body.0.error, body.0.retryable)
            .await?;
        Ok(Json(TaskAnswer { accepted: true }))
    }

    /// Tell the engine the worker is still on the task.
    #[oai(
        path = "/:id/heartbeat",
        method = "post",
        operation_id = "heartbeat_task"
    )]
    async fn heartbeat(
        &self,
        auth: Auth,
        id: Path<String>,
        req: &poem::Request,
    ) -> Result<HeartbeatResponse, ApiError> {
        self.may_answer(&auth, &id).await?;
        if req.headers().contains_key(RELAYED_HEADER) {
            // relayed by another replica: this one holds the task or nobody does
            self.rt.heartbeat(&id).await?;
        } else {
            let authorization = req
                .headers()
                .get("authorization")
                .and_then(|v| v.to_str().ok());
            if let Heartbeat::HeldBy(holder) = self.rt.heartbeat_anywhere(&id).await? {
                self.relay.heartbeat(&holder, &id, authorization).await?;
            }
        }
        Ok(HeartbeatResponse::Alive)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_holds_at_most_its_share_of_polls_and_gets_them_back() {
        let slots = PollSlots::default();
        let held: Vec<PollSlot> = (0..POLLS_PER_TOKEN)
            .map(|_| slots.take("worker-a").unwrap_or_else(|_| panic!("a slot")))
            .collect();
        let Err(ApiError::TooManyRequests(p)) = slots.take("worker-a") else {
            panic!("the cap did not hold")
        };
        assert_eq!(p.0.kind, "/problems/too-many-polls");
        assert!(p.0.retryable);
        assert!(
            slots.take("worker-b").is_ok(),
            "other tokens are not counted"
        );
        drop(held);
        assert!(
            slots.take("worker-a").is_ok(),
            "ended polls give their places back"
        );
        assert!(
            slots.0.lock().unwrap().is_empty(),
            "nothing kept for idle tokens"
        );
    }
}
