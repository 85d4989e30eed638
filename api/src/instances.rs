//! Starting instances and following them: status, history, signals, cancels.

use std::time::Duration;

use futures_util::stream::{BoxStream, StreamExt};
use poem_openapi::param::{Header, Path, Query};
use poem_openapi::payload::{EventStream, Json};
use poem_openapi::types::ToJSON;
use poem_openapi::{ApiResponse, Object, OpenApi};
use sagaflow_engine::projection::{Cursor, InstanceFilter};
use sagaflow_engine::runtime::{InstanceView, Runtime};
use sagaflow_engine::saga::MAX_DURATION;
use uuid::Uuid;

use crate::auth::{Auth, Need};
use crate::problem::ApiError;
use crate::serde_json_body::SerdeJson;
use crate::types::{status, word, InstanceStatus, Time};
use crate::Tag;

/// The longest a request may wait for an instance to end.
const MAX_WAIT: Duration = Duration::from_secs(300);

/// A saga instance.
// Written by serde (`SerdeJson`): its `serde` attributes keep the JSON the
// schema describes, and a test below compares it with `ToJSON`'s.
#[derive(Object, serde::Serialize)]
#[oai(skip_serializing_if_is_none)]
pub struct Instance {
    pub id: Uuid,
    pub workflow: String,
    pub version: u32,
    pub status: InstanceStatus,
    /// The step being performed, waited on or compensated.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub current_step: Option<String>,
    /// The attempt number of the current step.
    pub attempt: u32,
    pub input: serde_json::Value,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub output: Option<serde_json::Value>,
    /// The last failure, or why the saga compensated, failed or was cancelled.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub started_at: Time,
    pub updated_at: Time,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<Time>,
    /// Events in the instance's history (its newest revision plus one).
    pub events: u64,
    /// Paused by an operator: no new attempt starts until it is resumed.
    pub paused: bool,
    /// The outputs of the steps that succeeded, by step name.
    pub outputs: std::collections::BTreeMap<String, serde_json::Value>,
    /// Timers armed and not yet fired.
    pub timers: Vec<PendingTimer>,
}

/// A timer that will fire unless the saga moves on first.
#[derive(Object, serde::Serialize)]
#[oai(skip_serializing_if_is_none)]
pub struct PendingTimer {
    /// The timer's id, e.g. `deadline`, `timeout:1:f:2`, `wait-timeout:1`.
    pub timer: String,
    /// What it is for: `step_timeout`, `backoff`, `wait_timeout`, `wait_elapsed`, `deadline`.
    pub kind: String,
    pub due: Time,
}

/// Where to move a timer: exactly one of the three.
#[derive(Object)]
#[oai(skip_serializing_if_is_none)]
pub struct MoveTimer {
    /// A new due time.
    pub due: Option<Time>,
    /// Push the due time back by this much (e.g. `1h`).
    pub extend_by: Option<String>,
    /// Fire it now.
    #[oai(default)]
    pub fire_now: bool,
}

impl TryFrom<InstanceView> for Instance {
    type Error = ApiError;

    fn try_from(v: InstanceView) -> Result<Self, ApiError> {
        Ok(Self {
            id: v.id,
            workflow: v.workflow,
            version: v.version,
            status: status(v.status)?,
            current_step: v.current_step,
            attempt: v.attempt,
            input: v.input,
            output: v.output,
            error: v.error,
            started_at: v.started_at.into(),
            updated_at: v.updated_at.into(),
            finished_at: v.finished_at.map(Time),
            events: v.events,
            paused: v.paused,
            outputs: v.outputs,
            timers: v
                .timers
                .into_iter()
                .map(|(timer, purpose, due)| PendingTimer {
                    timer,
                    kind: serde_json::to_value(purpose)
                        .ok()
                        .and_then(|p| p["kind"].as_str().map(str::to_string))
                        .unwrap_or_default(),
                    due: due.into(),
                })
                .collect(),
        })
    }
}

/// A row of the instances read model.
#[derive(Object)]
#[oai(skip_serializing_if_is_none)]
pub struct InstanceSummary {
    pub id: Uuid,
    pub workflow: String,
    pub version: u32,
    pub status: InstanceStatus,
    /// The step being performed, waited on or compensated.
    pub current_step: Option<String>,
    /// The attempt number of the current step.
    pub attempt: u32,
    pub error: Option<String>,
    pub started_at: Time,
    pub updated_at: Time,
    pub finished_at: Option<Time>,
    pub input: serde_json::Value,
    pub paused: bool,
}

/// A page of instances.
#[derive(Object)]
#[oai(skip_serializing_if_is_none)]
pub struct InstancePage {
    pub items: Vec<InstanceSummary>,
    /// Pass as `cursor` for the next page; absent on the last page.
    pub next_cursor: Option<String>,
}

/// One event of an instance's history.
#[derive(Object)]
#[oai(skip_serializing_if_is_none)]
pub struct HistoryEvent {
    pub revision: u64,
    pub position: u64,
    /// The event type, e.g. `StepSucceeded` (docs/events.md).
    pub event_type: String,
    pub schema_version: u16,
    pub recorded_at: Time,
    pub data: serde_json::Value,
}

#[derive(Object)]
#[oai(skip_serializing_if_is_none)]
pub struct CancelRequest {
    pub reason: Option<String>,
}

#[derive(Object)]
#[oai(skip_serializing_if_is_none)]
pub struct PauseRequest {
    /// Why, for the history.
    pub reason: Option<String>,
}

/// A page of an instance's history.
#[derive(Object)]
#[oai(skip_serializing_if_is_none)]
pub struct EventPage {
    pub items: Vec<HistoryEvent>,
    /// Pass as `from_revision` for the next page; absent on the last page.
    pub next_from: Option<u64>,
}

#[derive(ApiResponse)]
pub enum StartResponse {
    /// Started.
    #[oai(status = 201)]
    Created(SerdeJson<Instance>, #[oai(header = "Location")] String),
    /// An instance was already started with this Idempotency-Key and input.
    #[oai(status = 200)]
    Existing(SerdeJson<Instance>, #[oai(header = "Location")] String),
}

#[derive(ApiResponse)]
pub enum AcceptedResponse {
    /// Recorded; the instance as it now stands.
    #[oai(status = 202)]
    Accepted(SerdeJson<Instance>),
}

pub(crate) fn parse_wait(wait: Option<&str>) -> Result<Option<Duration>, ApiError> {
    wait.filter(|w| !w.is_empty())
        .map(|w| {
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

/// The log moved: instances were started or changed.
#[derive(Object)]
pub struct Change {
    /// The position of the newest event in the log.
    pub position: u64,
}

/// How often the change stream may tell of a change.
const CHANGE_EVERY: Duration = Duration::from_millis(250);
/// How long one change stream lasts; the client connects again.
const CHANGE_STREAM_FOR: Duration = Duration::from_secs(300);

pub struct InstancesApi {
    pub rt: Runtime,
}

#[OpenApi(tag = "Tag::Instances")]
impl InstancesApi {
    /// Start an instance of a workflow.
    ///
    /// The body is the instance's input, checked against the workflow's input
    /// schema. With an `Idempotency-Key`, a retried start returns the same instance.
    ///
    /// With `wait` (e.g. `30s`, at most `5m`), the answer comes once the
    /// instance has ended, or when the wait is over (then it shows the instance
    /// as it stands: poll `GET /instances/{id}?wait=` for the rest): one request
    /// starts a saga and returns its outcome. The instance runs on whether or
    /// not the client waits.
    #[oai(
        path = "/workflows/:name/instances",
        method = "post",
        operation_id = "start_instance"
    )]
    async fn start(
        &self,
        auth: Auth,
        name: Path<String>,
        /// Start this version instead of the newest.
        #[oai(validator(minimum(value = "1")))]
        version: Query<Option<u32>>,
        #[oai(name = "Idempotency-Key")] idempotency_key: Header<Option<String>>,
        wait: Query<Option<String>>,
        input: Json<serde_json::Value>,
    ) -> Result<StartResponse, ApiError> {
        auth.require(Need::Start)?;
        let wait = parse_wait(wait.0.as_deref())?;
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
        let view = match wait {
            None => self.rt.get(started.id).await?,
            Some(d) => self.rt.wait(started.id, d).await?,
        };
        let location = format!("/instances/{}", started.id);
        Ok(if started.created {
            StartResponse::Created(SerdeJson(view.try_into()?), location)
        } else {
            StartResponse::Existing(SerdeJson(view.try_into()?), location)
        })
    }

    /// List and search instances (from the read model), newest first, a page at a time.
    #[oai(path = "/instances", method = "get", operation_id = "list_instances")]
    #[allow(clippy::too_many_arguments)]
    async fn list(
        &self,
        auth: Auth,
        workflow: Query<Option<String>>,
        status: Query<Option<InstanceStatus>>,
        /// Started at or after this time.
        started_from: Query<Option<Time>>,
        /// Started before this time.
        started_until: Query<Option<Time>>,
        /// Input fields that must match, as `path=value` (repeatable), e.g.
        /// `customer_id=c-42` or `address.city=Oslo`; numbers match however they
        /// are written (`5000`, `5000.0`). Only fields the workflow declares
        /// searchable (`search:`) can be searched; others get 400
        /// `/problems/field-not-searchable`.
        #[oai(default)]
        input_field: Query<Vec<String>>,
        /// From `next_cursor` of the previous page.
        cursor: Query<Option<String>>,
        /// At most this many (default 100).
        #[oai(validator(minimum(value = "1"), maximum(value = "1000")))]
        limit: Query<Option<u32>>,
        /// Wait until the read model holds every write made before this request.
        #[oai(default)]
        consistent: Query<bool>,
    ) -> Result<Json<InstancePage>, ApiError> {
        auth.require(Need::Read)?;
        let mut fields = Vec::new();
        for f in &input_field.0 {
            let bad = || {
                ApiError::bad_request(
                    "bad-input-filter",
                    format!(
                        "`{f}` is not `path=value` with a path of letters, digits, `_` and `.`"
                    ),
                )
            };
            let (path, value) = f.split_once('=').ok_or_else(bad)?;
            let path_ok = !path.is_empty()
                && path.len() <= 200
                && path.split('.').all(|p| {
                    !p.is_empty() && p.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
                });
            if !path_ok {
                return Err(bad());
            }
            fields.push((path.to_string(), value.to_string()));
        }
        let filter = InstanceFilter {
            workflow: workflow.0,
            status: status.0.as_ref().map(word),
            started_from: started_from.0.map(|t| t.0),
            started_until: started_until.0.map(|t| t.0),
            input: fields,
            after: crate::orders::parse_cursor(cursor.0.as_deref(), Cursor::fits_instances)?,
            limit: limit.0.unwrap_or(100),
        };
        crate::orders::read_your_writes(&self.rt, consistent.0).await?;
        let page = self.rt.search(&filter).await?;
        Ok(Json(InstancePage {
            next_cursor: page.next.map(|c| c.encode()),
            items: page
                .items
                .into_iter()
                .map(|r| {
                    Ok(InstanceSummary {
                        id: r.id,
                        workflow: r.workflow,
                        version: r.version,
                        status: crate::types::status(&r.status)?,
                        current_step: r.current_step,
                        attempt: r.attempts,
                        error: r.error,
                        started_at: r.started_at.into(),
                        updated_at: r.updated_at.into(),
                        finished_at: r.finished_at.map(Time),
                        input: r.input,
                        paused: r.paused,
                    })
                })
                .collect::<Result<_, ApiError>>()?,
        }))
    }

    /// Get an instance.
    ///
    /// With `wait` (e.g. `30s`, at most `5m`), the answer comes as soon as the
    /// instance has ended, or when the wait is over: no polling needed. With
    /// `after_revision` too, it comes as soon as the history has grown past
    /// that revision (pass the `events` of the last answer minus one to see the
    /// next change); with `until_status`, as soon as the status is one of those
    /// given (e.g. `waiting`, to send a signal once the instance waits for it).
    #[oai(path = "/instances/:id", method = "get", operation_id = "get_instance")]
    async fn get(
        &self,
        auth: Auth,
        id: Path<Uuid>,
        wait: Query<Option<String>>,
        /// With `wait`: answer once the newest revision is past this one.
        after_revision: Query<Option<u64>>,
        /// With `wait`: answer once the status is one of these (repeatable).
        #[oai(default)]
        until_status: Query<Vec<InstanceStatus>>,
    ) -> Result<SerdeJson<Instance>, ApiError> {
        auth.require(Need::Read)?;
        let id = id.0;
        let wait = parse_wait(wait.0.as_deref())?;
        if wait.is_none() && (after_revision.0.is_some() || !until_status.0.is_empty()) {
            return Err(ApiError::bad_request(
                "bad-wait",
                "`after_revision` and `until_status` say what to wait for: give `wait` too (e.g. `wait=30s`)",
            ));
        }
        let view = match wait {
            None => self.rt.get(id).await?,
            Some(d) if after_revision.0.is_none() && until_status.0.is_empty() => {
                self.rt.wait(id, d).await?
            }
            Some(d) => {
                let after = after_revision.0;
                let statuses: Vec<String> = until_status.0.iter().map(word).collect();
                self.rt
                    .wait_until(id, d, |v| {
                        after.is_some_and(|r| v.events > r.saturating_add(1))
                            || statuses.iter().any(|s| s == v.status)
                    })
                    .await?
            }
        };
        Ok(SerdeJson(view.try_into()?))
    }

    /// An instance's event history, in order, a page at a time.
    #[oai(
        path = "/instances/:id/events",
        method = "get",
        operation_id = "get_instance_events"
    )]
    async fn events(
        &self,
        auth: Auth,
        id: Path<Uuid>,
        /// The first revision to return (default 0).
        from_revision: Query<Option<u64>>,
        /// At most this many (default 1000).
        #[oai(validator(minimum(value = "1"), maximum(value = "1000")))]
        limit: Query<Option<u32>>,
    ) -> Result<Json<EventPage>, ApiError> {
        auth.require(Need::Read)?;
        let mut events = self.rt.history(id.0, from_revision.0.unwrap_or(0)).await?;
        let limit = limit.0.unwrap_or(1000) as usize;
        let next_from = (events.len() > limit).then(|| events[limit].revision);
        events.truncate(limit);
        Ok(Json(EventPage {
            next_from,
            items: events
                .into_iter()
                .map(|e| HistoryEvent {
                    revision: e.revision,
                    position: e.position,
                    event_type: e.event_type,
                    schema_version: e.schema_version,
                    recorded_at: e.recorded_at.into(),
                    data: e.data.into_value(),
                })
                .collect(),
        }))
    }

    /// The instance as it stood at a revision of its history (time travel).
    ///
    /// `revision` counts events from 0 (`SagaStarted`); the answer is the
    /// state folded from events 0 to `revision`.
    #[oai(
        path = "/instances/:id/state",
        method = "get",
        operation_id = "get_instance_state"
    )]
    async fn state_at(
        &self,
        auth: Auth,
        id: Path<Uuid>,
        revision: Query<u64>,
    ) -> Result<SerdeJson<Instance>, ApiError> {
        auth.require(Need::Read)?;
        Ok(SerdeJson(
            self.rt.state_at(id.0, revision.0).await?.try_into()?,
        ))
    }

    /// Pause an instance: attempts in flight finish and are recorded, no new one starts until it is resumed.
    #[oai(
        path = "/instances/:id/pause",
        method = "post",
        operation_id = "pause_instance"
    )]
    async fn pause(
        &self,
        auth: Auth,
        id: Path<Uuid>,
        body: Json<Option<PauseRequest>>,
    ) -> Result<AcceptedResponse, ApiError> {
        auth.require(Need::Operate)?;
        let view = self.rt.pause(id.0, body.0.and_then(|b| b.reason)).await?;
        Ok(AcceptedResponse::Accepted(SerdeJson(view.try_into()?)))
    }

    /// Resume a paused instance; an attempt that came due meanwhile starts now.
    #[oai(
        path = "/instances/:id/resume",
        method = "post",
        operation_id = "resume_instance"
    )]
    async fn resume(&self, auth: Auth, id: Path<Uuid>) -> Result<AcceptedResponse, ApiError> {
        auth.require(Need::Operate)?;
        let view = self.rt.resume_paused(id.0).await?;
        Ok(AcceptedResponse::Accepted(SerdeJson(view.try_into()?)))
    }

    /// Retry a failed instance from the step (or compensation) that failed, with a new attempt.
    ///
    /// Refused (409) unless the instance's status is `failed`.
    #[oai(
        path = "/instances/:id/retry",
        method = "post",
        operation_id = "retry_instance"
    )]
    async fn retry(&self, auth: Auth, id: Path<Uuid>) -> Result<AcceptedResponse, ApiError> {
        auth.require(Need::Operate)?;
        let view = self.rt.retry(id.0).await?;
        Ok(AcceptedResponse::Accepted(SerdeJson(view.try_into()?)))
    }

    /// Send a signal (e.g. an approval); the body is its payload.
    ///
    /// A wait step for this signal goes on with the payload as its output; a
    /// signal that arrives before its wait step is kept for it.
    #[oai(
        path = "/instances/:id/signals/:name",
        method = "post",
        operation_id = "signal_instance"
    )]
    async fn signal(
        &self,
        auth: Auth,
        id: Path<Uuid>,
        name: Path<String>,
        payload: Json<serde_json::Value>,
    ) -> Result<AcceptedResponse, ApiError> {
        auth.require(Need::Operate)?;
        let id = id.0;
        let view = self.rt.signal(id, name.0, payload.0).await?;
        Ok(AcceptedResponse::Accepted(SerdeJson(view.try_into()?)))
    }

    /// Move a pending timer: extend a deadline, give an approval more time, or fire a wait now.
    #[oai(
        path = "/instances/:id/timers/:timer",
        method = "post",
        operation_id = "move_timer"
    )]
    async fn move_timer(
        &self,
        auth: Auth,
        id: Path<Uuid>,
        timer: Path<String>,
        body: Json<MoveTimer>,
    ) -> Result<AcceptedResponse, ApiError> {
        auth.require(Need::Operate)?;
        let id = id.0;
        let current = self.rt.get(id).await?;
        let Some((_, _, old_due)) = current.timers.iter().find(|(t, _, _)| *t == timer.0) else {
            return Err(ApiError::from(
                sagaflow_engine::runtime::RuntimeError::Rejected(
                    sagaflow_engine::saga::Rejection::NoSuchTimer(timer.0),
                ),
            ));
        };
        let due = match (&body.due, &body.extend_by, body.fire_now) {
            (Some(d), None, false) => d.0,
            (None, Some(by), false) => {
                let d = humantime::parse_duration(by).map_err(|e| {
                    ApiError::bad_request("bad-extend-by", format!("extend_by `{by}`: {e}"))
                })?;
                old_due
                    .checked_plus(d)
                    .filter(|_| d <= MAX_DURATION)
                    .ok_or_else(|| ApiError::duration_too_long(&format!("extend_by `{by}`")))?
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
        Ok(AcceptedResponse::Accepted(SerdeJson(view.try_into()?)))
    }

    /// Cancel an instance: the steps done so far are compensated.
    ///
    /// Refused (409) once the pivot step has started, or when the instance has ended.
    #[oai(
        path = "/instances/:id/cancel",
        method = "post",
        operation_id = "cancel_instance"
    )]
    async fn cancel(
        &self,
        auth: Auth,
        id: Path<Uuid>,
        body: Json<Option<CancelRequest>>,
    ) -> Result<AcceptedResponse, ApiError> {
        auth.require(Need::Operate)?;
        let id = id.0;
        let view = self.rt.cancel(id, body.0.and_then(|b| b.reason)).await?;
        Ok(AcceptedResponse::Accepted(SerdeJson(view.try_into()?)))
    }
    /// A server-sent event stream (`text/event-stream`) that tells when
    /// instances change: one `change` event, with the log's newest position,
    /// at most every 250 ms while the log moves, and a comment every 15 s to
    /// keep the connection open. The stream ends after 5 minutes; connect
    /// again. A listing refreshes on each event instead of polling.
    #[oai(path = "/changes", method = "get", operation_id = "watch_changes")]
    async fn changes(
        &self,
        auth: Auth,
    ) -> Result<EventStream<BoxStream<'static, Change>>, ApiError> {
        auth.require(Need::Read)?;
        let head = self.rt.store().head();
        let until = tokio::time::Instant::now() + CHANGE_STREAM_FOR;
        let stream =
            futures_util::stream::unfold((head, true), move |(mut head, first)| async move {
                if !first {
                    tokio::time::sleep(CHANGE_EVERY).await;
                    tokio::time::timeout_at(until, head.changed())
                        .await
                        .ok()?
                        .ok()?;
                }
                let position = (*head.borrow_and_update()).unwrap_or(0);
                Some((Change { position }, (head, false)))
            });
        Ok(EventStream::new(stream.boxed())
            .keep_alive(Duration::from_secs(15))
            .to_event(|c| poem::web::sse::Event::message(c.to_json_string()).event_type("change")))
    }
}

#[cfg(test)]
mod tests {
    use poem::IntoResponse;
    use poem_openapi::types::ToJSON;
    use sagaflow_engine::saga::{TimerPurpose, Timestamp};
    use serde_json::json;

    use super::*;

    fn view(full: bool) -> InstanceView {
        InstanceView {
            id: Uuid::from_u128(7),
            workflow: "order".into(),
            version: 3,
            status: if full { "compensating" } else { "pending" },
            current_step: full.then(|| "pay".into()),
            attempt: 2,
            input: json!({"order_id": "o-1", "amount": 12.5, "items": [1, "two", null], "ü": true}),
            output: full.then(|| json!({"shipment": {"id": "s-1"}})),
            error: full.then(|| "pay: HTTP 402: \"declined\"\n".into()),
            started_at: Timestamp(1_795_000_000_123),
            updated_at: Timestamp(1_795_000_001_000),
            finished_at: full.then_some(Timestamp(1_795_000_002_999)),
            events: 9,
            paused: full,
            outputs: if full {
                [
                    ("reserve".to_string(), json!({"reservation": "r-1"})),
                    ("x".to_string(), json!(null)),
                ]
                .into()
            } else {
                Default::default()
            },
            timers: if full {
                vec![
                    (
                        "deadline".into(),
                        TimerPurpose::Deadline,
                        Timestamp(1_795_000_600_000),
                    ),
                    (
                        "wait:2".into(),
                        TimerPurpose::WaitElapsed { step: 2 },
                        Timestamp(1_795_000_060_000),
                    ),
                ]
            } else {
                vec![]
            },
        }
    }

    /// The body [`SerdeJson`] writes is the one `Json` would write from the
    /// schema's `ToJSON`, all fields present or the optional ones left out.
    #[tokio::test]
    async fn an_instance_is_written_as_its_schema_says() {
        for full in [true, false] {
            let instance = Instance::try_from(view(full)).unwrap();
            let want = instance.to_json().unwrap();
            let body = SerdeJson(instance)
                .into_response()
                .into_body()
                .into_vec()
                .await
                .unwrap();
            let got: serde_json::Value = serde_json::from_slice(&body).unwrap();
            assert_eq!(got, want, "full: {full}");
        }
    }
}
