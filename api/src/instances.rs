//! Starting instances and following them: status, history, signals, cancels.

use std::time::Duration;

use poem_openapi::param::{Header, Path, Query};
use poem_openapi::payload::Json;
use poem_openapi::{ApiResponse, Object, OpenApi};
use sagaflow_engine::runtime::{InstanceView, Runtime};
use sagaflow_engine::saga::Timestamp;
use uuid::Uuid;

use crate::auth::{Auth, Need};
use crate::problem::ApiError;
use crate::Tag;

/// The longest a request may wait for an instance to end.
const MAX_WAIT: Duration = Duration::from_secs(300);

/// A saga instance.
#[derive(Object)]
pub struct Instance {
    pub id: String,
    pub workflow: String,
    pub version: u32,
    /// `running`, `waiting`, `compensating`, `completed`, `compensated`, `failed` or `cancelled`.
    pub status: String,
    /// The step being performed, waited on or compensated.
    pub current_step: Option<String>,
    /// The attempt number of the current step.
    pub attempt: u32,
    pub input: serde_json::Value,
    pub output: Option<serde_json::Value>,
    /// The last failure, or why the saga compensated, failed or was cancelled.
    pub error: Option<String>,
    pub started_at: String,
    pub updated_at: String,
    pub finished_at: Option<String>,
    /// Events in the instance's history.
    pub events: u64,
    /// Timers armed and not yet fired.
    pub timers: Vec<PendingTimer>,
}

/// A timer that will fire unless the saga moves on first.
#[derive(Object)]
pub struct PendingTimer {
    /// The timer's id, e.g. `deadline`, `timeout:1:f:2`, `wait-timeout:1`.
    pub timer: String,
    /// What it is for: `step_timeout`, `backoff`, `wait_timeout`, `wait_elapsed`, `deadline`.
    pub kind: String,
    pub due: String,
}

/// Where to move a timer: exactly one of the three.
#[derive(Object)]
pub struct MoveTimer {
    /// A new due time (RFC 3339).
    pub due: Option<String>,
    /// Push the due time back by this much (e.g. `1h`).
    pub extend_by: Option<String>,
    /// Fire it now.
    #[oai(default)]
    pub fire_now: bool,
}

impl From<InstanceView> for Instance {
    fn from(v: InstanceView) -> Self {
        Self {
            id: v.id.to_string(),
            workflow: v.workflow,
            version: v.version,
            status: v.status.to_string(),
            current_step: v.current_step,
            attempt: v.attempt,
            input: v.input,
            output: v.output,
            error: v.error,
            started_at: v.started_at.to_string(),
            updated_at: v.updated_at.to_string(),
            finished_at: v.finished_at.map(|t| t.to_string()),
            events: v.events,
            timers: v
                .timers
                .into_iter()
                .map(|(timer, purpose, due)| PendingTimer {
                    timer,
                    kind: serde_json::to_value(purpose)
                        .ok()
                        .and_then(|p| p["kind"].as_str().map(str::to_string))
                        .unwrap_or_default(),
                    due: due.to_string(),
                })
                .collect(),
        }
    }
}

/// A row of the instances read model.
#[derive(Object)]
pub struct InstanceSummary {
    pub id: String,
    pub workflow: String,
    pub version: u32,
    pub status: String,
    pub current_step: Option<String>,
    pub attempts: u32,
    pub error: Option<String>,
    pub started_at: String,
    pub updated_at: String,
    pub finished_at: Option<String>,
}

/// One event of an instance's history.
#[derive(Object)]
pub struct HistoryEvent {
    pub revision: u64,
    pub position: u64,
    /// The event type, e.g. `StepSucceeded` (docs/events.md).
    #[oai(rename = "type")]
    pub event_type: String,
    pub schema_version: u16,
    pub recorded_at: String,
    pub data: serde_json::Value,
}

#[derive(Object)]
pub struct CancelRequest {
    pub reason: Option<String>,
}

#[derive(ApiResponse)]
pub enum StartResponse {
    /// Started.
    #[oai(status = 201)]
    Created(Json<Instance>, #[oai(header = "Location")] String),
    /// An instance was already started with this Idempotency-Key and input.
    #[oai(status = 200)]
    Existing(Json<Instance>, #[oai(header = "Location")] String),
}

#[derive(ApiResponse)]
pub enum AcceptedResponse {
    /// Recorded; the instance as it now stands.
    #[oai(status = 202)]
    Accepted(Json<Instance>),
}

fn parse_id(id: &str) -> Result<Uuid, ApiError> {
    Uuid::parse_str(id).map_err(|_| {
        ApiError::bad_request("bad-id", format!("`{id}` is not an instance id (a UUID)"))
    })
}

fn parse_wait(wait: Option<&str>) -> Result<Option<Duration>, ApiError> {
    wait.map(|w| {
        humantime::parse_duration(w)
            .map(|d| d.min(MAX_WAIT))
            .map_err(|e| {
                ApiError::bad_request(
                    "bad-wait",
                    format!("wait `{w}` is not a duration ({e}); e.g. `30s`"),
                )
            })
    })
    .transpose()
}

pub struct InstancesApi {
    pub rt: Runtime,
}

#[OpenApi(tag = "Tag::Instances")]
impl InstancesApi {
    /// Start an instance of a workflow.
    ///
    /// The body is the instance's input, checked against the workflow's input
    /// schema. With an `Idempotency-Key`, a retried start returns the same instance.
    #[oai(path = "/workflows/:name/instances", method = "post")]
    async fn start(
        &self,
        auth: Auth,
        name: Path<String>,
        /// Start this version instead of the newest.
        version: Query<Option<u32>>,
        #[oai(name = "Idempotency-Key")] idempotency_key: Header<Option<String>>,
        input: Json<serde_json::Value>,
    ) -> Result<StartResponse, ApiError> {
        auth.require(Need::Start)?;
        if idempotency_key
            .0
            .as_ref()
            .is_some_and(|k| k.is_empty() || k.len() > 256)
        {
            return Err(ApiError::bad_request(
                "bad-idempotency-key",
                "an Idempotency-Key has 1 to 256 characters",
            ));
        }
        let started = self
            .rt
            .start(&name, version.0, input.0, idempotency_key.0)
            .await?;
        let view = self.rt.get(started.id).await?;
        let location = format!("/instances/{}", started.id);
        Ok(if started.created {
            StartResponse::Created(Json(view.into()), location)
        } else {
            StartResponse::Existing(Json(view.into()), location)
        })
    }

    /// List instances (from the read model), newest first.
    #[oai(path = "/instances", method = "get")]
    async fn list(
        &self,
        auth: Auth,
        workflow: Query<Option<String>>,
        status: Query<Option<String>>,
        limit: Query<Option<u32>>,
    ) -> Result<Json<Vec<InstanceSummary>>, ApiError> {
        auth.require(Need::Read)?;
        let rows = self
            .rt
            .list(
                workflow.0.as_deref(),
                status.0.as_deref(),
                limit.0.unwrap_or(100).min(1000),
            )
            .await?;
        Ok(Json(
            rows.into_iter()
                .map(|r| InstanceSummary {
                    id: r.id.to_string(),
                    workflow: r.workflow,
                    version: r.version,
                    status: r.status,
                    current_step: r.current_step,
                    attempts: r.attempts,
                    error: r.error,
                    started_at: r.started_at.to_string(),
                    updated_at: r.updated_at.to_string(),
                    finished_at: r.finished_at.map(|t| t.to_string()),
                })
                .collect(),
        ))
    }

    /// Get an instance.
    ///
    /// With `wait` (e.g. `30s`, at most `5m`), the answer comes as soon as the
    /// instance has ended, or when the wait is over: no polling needed.
    #[oai(path = "/instances/:id", method = "get")]
    async fn get(
        &self,
        auth: Auth,
        id: Path<String>,
        wait: Query<Option<String>>,
    ) -> Result<Json<Instance>, ApiError> {
        auth.require(Need::Read)?;
        let id = parse_id(&id)?;
        let view = match parse_wait(wait.0.as_deref())? {
            Some(d) => self.rt.wait(id, d).await?,
            None => self.rt.get(id).await?,
        };
        Ok(Json(view.into()))
    }

    /// An instance's event history, in order.
    #[oai(path = "/instances/:id/events", method = "get")]
    async fn events(
        &self,
        auth: Auth,
        id: Path<String>,
        from: Query<Option<u64>>,
    ) -> Result<Json<Vec<HistoryEvent>>, ApiError> {
        auth.require(Need::Read)?;
        let id = parse_id(&id)?;
        let events = self.rt.history(id, from.0.unwrap_or(0)).await?;
        Ok(Json(
            events
                .into_iter()
                .map(|e| HistoryEvent {
                    revision: e.revision,
                    position: e.position,
                    event_type: e.event_type,
                    schema_version: e.schema_version,
                    recorded_at: e.recorded_at.to_string(),
                    data: e.data,
                })
                .collect(),
        ))
    }

    /// Send a signal (e.g. an approval); the body is its payload.
    ///
    /// A wait step for this signal goes on with the payload as its output; a
    /// signal that arrives before its wait step is kept for it.
    #[oai(path = "/instances/:id/signals/:name", method = "post")]
    async fn signal(
        &self,
        auth: Auth,
        id: Path<String>,
        name: Path<String>,
        payload: Json<serde_json::Value>,
    ) -> Result<AcceptedResponse, ApiError> {
        auth.require(Need::Operate)?;
        let id = parse_id(&id)?;
        let view = self.rt.signal(id, name.0, payload.0).await?;
        Ok(AcceptedResponse::Accepted(Json(view.into())))
    }

    /// Move a pending timer: extend a deadline, give an approval more time, or fire a wait now.
    #[oai(path = "/instances/:id/timers/:timer", method = "post")]
    async fn move_timer(
        &self,
        auth: Auth,
        id: Path<String>,
        timer: Path<String>,
        body: Json<MoveTimer>,
    ) -> Result<AcceptedResponse, ApiError> {
        auth.require(Need::Operate)?;
        let id = parse_id(&id)?;
        let current = self.rt.get(id).await?;
        let Some((_, _, old_due)) = current.timers.iter().find(|(t, _, _)| *t == timer.0) else {
            return Err(ApiError::from(
                sagaflow_engine::runtime::RuntimeError::Rejected(
                    sagaflow_engine::saga::Rejection::NoSuchTimer(timer.0),
                ),
            ));
        };
        let due = match (&body.due, &body.extend_by, body.fire_now) {
            (Some(d), None, false) => {
                let t = humantime::parse_rfc3339_weak(d)
                    .map_err(|e| ApiError::bad_request("bad-due", format!("due `{d}`: {e}")))?;
                let ms = t
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_err(|e| ApiError::bad_request("bad-due", e.to_string()))?
                    .as_millis();
                Timestamp(u64::try_from(ms).unwrap_or(u64::MAX))
            }
            (None, Some(by), false) => {
                old_due.plus(humantime::parse_duration(by).map_err(|e| {
                    ApiError::bad_request("bad-extend-by", format!("extend_by `{by}`: {e}"))
                })?)
            }
            (None, None, true) => self.rt.now(),
            _ => {
                return Err(ApiError::bad_request(
                    "bad-move",
                    "give exactly one of `due`, `extend_by` or `fire_now: true`",
                ))
            }
        };
        let view = self.rt.move_timer(id, timer.0, due).await?;
        Ok(AcceptedResponse::Accepted(Json(view.into())))
    }

    /// Cancel an instance: the steps done so far are compensated.
    ///
    /// Refused (409) once the pivot step has started, or when the instance has ended.
    #[oai(path = "/instances/:id/cancel", method = "post")]
    async fn cancel(
        &self,
        auth: Auth,
        id: Path<String>,
        body: Json<Option<CancelRequest>>,
    ) -> Result<AcceptedResponse, ApiError> {
        auth.require(Need::Operate)?;
        let id = parse_id(&id)?;
        let view = self.rt.cancel(id, body.0.and_then(|b| b.reason)).await?;
        Ok(AcceptedResponse::Accepted(Json(view.into())))
    }
}
