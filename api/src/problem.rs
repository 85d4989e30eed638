//! RFC 9457 problem+json: the one place where errors become HTTP statuses.

use poem::http::StatusCode;
use poem::{IntoResponse, Response};
use poem_openapi::payload::Json;
use poem_openapi::{ApiResponse, Object};
use sagaflow_engine::runtime::RuntimeError;
use sagaflow_engine::saga::Rejection;

/// An error, as RFC 9457 describes: a stable `type`, a title, the status,
/// what happened, and whether the same request may be retried.
#[derive(Debug, Clone, Object)]
#[oai(skip_serializing_if_is_none)]
pub struct Problem {
    /// A stable identifier of the kind of problem, e.g. `/problems/unknown-workflow`.
    #[oai(rename = "type")]
    pub kind: String,
    pub title: String,
    pub status: u16,
    pub detail: String,
    /// Whether sending the same request again may succeed.
    pub retryable: bool,
    /// The individual problems, for validation errors.
    #[oai(skip_serializing_if_is_none)]
    pub errors: Option<Vec<FieldError>>,
}

/// One located problem in a request.
#[derive(Debug, Clone, Object)]
#[oai(skip_serializing_if_is_none)]
pub struct FieldError {
    /// Where: a path in a workflow (`steps[2].compensate`) or a JSON pointer in an input (`/items/0/qty`).
    pub path: String,
    pub message: String,
    #[oai(skip_serializing_if_is_none)]
    pub code: Option<String>,
    #[oai(skip_serializing_if_is_none)]
    pub severity: Option<String>,
    #[oai(skip_serializing_if_is_none)]
    pub line: Option<u32>,
    #[oai(skip_serializing_if_is_none)]
    pub column: Option<u32>,
    #[oai(skip_serializing_if_is_none)]
    pub help: Option<String>,
}

/// Every error an operation can answer with.
#[derive(Debug, ApiResponse)]
pub enum ApiError {
    /// The request is malformed.
    #[oai(status = 400, content_type = "application/problem+json")]
    BadRequest(Json<Problem>),
    /// No valid bearer token.
    #[oai(status = 401, content_type = "application/problem+json")]
    Unauthorized(Json<Problem>),
    /// The token's role may not do this.
    #[oai(status = 403, content_type = "application/problem+json")]
    Forbidden(Json<Problem>),
    /// No such workflow, instance or task.
    #[oai(status = 404, content_type = "application/problem+json")]
    NotFound(Json<Problem>),
    /// The request conflicts with the current state.
    #[oai(status = 409, content_type = "application/problem+json")]
    Conflict(Json<Problem>),
    /// The body is larger than the server accepts.
    #[oai(status = 413, content_type = "application/problem+json")]
    TooLarge(Json<Problem>),
    /// The body is not in a media type the operation accepts.
    #[oai(status = 415, content_type = "application/problem+json")]
    UnsupportedMediaType(Json<Problem>),
    /// The request is well-formed but its content is invalid.
    #[oai(status = 422, content_type = "application/problem+json")]
    Unprocessable(Json<Problem>),
    /// A limit on what one caller may hold at once (concurrent polls, queues) was reached; retry later.
    #[oai(status = 429, content_type = "application/problem+json")]
    TooManyRequests(Json<Problem>),
    /// A fault of the server.
    #[oai(status = 500, content_type = "application/problem+json")]
    Internal(Json<Problem>),
    /// A dependency (the event store) is unavailable; retry later.
    #[oai(status = 503, content_type = "application/problem+json")]
    Unavailable(Json<Problem>),
}

/// The server is not ready to take traffic, and why (`/ready`).
pub fn not_ready(detail: String) -> Problem {
    problem(503, "not-ready", "Not ready", detail, true)
}

pub fn problem(
    status: u16,
    kind: &str,
    title: &str,
    detail: impl Into<String>,
    retryable: bool,
) -> Problem {
    Problem {
        kind: format!("/problems/{kind}"),
        title: title.to_string(),
        status,
        detail: detail.into(),
        retryable,
        errors: None,
    }
}

impl ApiError {
    pub fn from_problem(p: Problem) -> Self {
        let p = Json(p);
        match p.0.status {
            400 => ApiError::BadRequest(p),
            401 => ApiError::Unauthorized(p),
            403 => ApiError::Forbidden(p),
            404 => ApiError::NotFound(p),
            409 => ApiError::Conflict(p),
            413 => ApiError::TooLarge(p),
            415 => ApiError::UnsupportedMediaType(p),
            422 => ApiError::Unprocessable(p),
            429 => ApiError::TooManyRequests(p),
            503 => ApiError::Unavailable(p),
            _ => ApiError::Internal(p),
        }
    }

    pub fn bad_request(kind: &str, detail: impl Into<String>) -> Self {
        Self::from_problem(problem(400, kind, "Bad request", detail, false))
    }

    pub fn internal(detail: &str) -> Self {
        Self::from_problem(problem(500, "internal", "Internal error", detail, false))
    }

    pub fn unauthorized() -> Self {
        let detail = "the bearer token is not valid";
        Self::from_problem(problem(401, "unauthorized", "Unauthorized", detail, false))
    }

    pub fn forbidden(detail: String) -> Self {
        Self::from_problem(problem(403, "forbidden", "Forbidden", detail, false))
    }

    /// A duration (`what`, as the caller wrote it) past the longest allowed.
    pub fn duration_too_long(what: &str) -> Self {
        let detail = format!("{what} is longer than the longest allowed, 100 years");
        Self::from_problem(problem(
            422,
            "duration-too-long",
            "Duration too long",
            detail,
            false,
        ))
    }

    pub fn metrics_off() -> Self {
        let detail = "this server was started without a metrics recorder";
        Self::from_problem(problem(404, "metrics-off", "No metrics", detail, false))
    }

    pub fn read_model_behind() -> Self {
        let detail = "the read models did not catch up in time; retry";
        Self::from_problem(problem(
            503,
            "read-model-behind",
            "Read model behind",
            detail,
            true,
        ))
    }

    pub fn order_exists(order_id: &str) -> Self {
        let detail = format!("order `{order_id}` exists with other content; use another order id");
        Self::from_problem(problem(
            409,
            "order-exists",
            "Order id taken",
            detail,
            false,
        ))
    }

    pub fn unknown_order(order_id: &str) -> Self {
        let detail = format!("no order `{order_id}`");
        Self::from_problem(problem(
            404,
            "unknown-order",
            "Unknown order",
            detail,
            false,
        ))
    }

    /// Another replica, which holds what the request is about, did not answer.
    pub fn replica_unavailable(detail: String) -> Self {
        Self::from_problem(problem(
            503,
            "replica-unavailable",
            "Replica unavailable",
            detail,
            true,
        ))
    }

    pub fn too_many_polls(per_token: usize) -> Self {
        let detail =
            format!("this token has {per_token} polls waiting already; poll again when one ends");
        Self::from_problem(problem(
            429,
            "too-many-polls",
            "Too many polls",
            detail,
            true,
        ))
    }

    pub fn configured_token() -> Self {
        let detail = "this token is set in the server's configuration; remove it there";
        Self::from_problem(problem(
            409,
            "configured-token",
            "Configured token",
            detail,
            false,
        ))
    }

    pub fn unknown_token(id: &str) -> Self {
        let detail = format!("no token `{id}`");
        Self::from_problem(problem(
            404,
            "unknown-token",
            "Unknown token",
            detail,
            false,
        ))
    }
}

impl From<RuntimeError> for ApiError {
    fn from(e: RuntimeError) -> Self {
        let detail = e.to_string();
        let p = match &e {
            RuntimeError::UnknownWorkflow(_) => {
                problem(404, "unknown-workflow", "Unknown workflow", detail, false)
            }
            RuntimeError::Overloaded(_) => {
                problem(429, "too-many", "Too many at once", detail, true)
            }
            RuntimeError::NotSearchable { .. } => problem(
                400,
                "field-not-searchable",
                "Field not searchable",
                detail,
                false,
            ),
            RuntimeError::NoReadModels => {
                problem(503, "no-read-models", "No read models", detail, false)
            }
            RuntimeError::UnknownVersion(..) => problem(
                404,
                "unknown-workflow-version",
                "Unknown workflow version",
                detail,
                false,
            ),
            RuntimeError::UnknownInstance(_) => {
                problem(404, "unknown-instance", "Unknown instance", detail, false)
            }
            RuntimeError::Removed { .. } => {
                problem(404, "instance-removed", "Instance removed", detail, false)
            }
            RuntimeError::Store(sagaflow_engine::store::StoreError::Removed { .. }) => {
                problem(404, "instance-removed", "Instance removed", detail, false)
            }
            RuntimeError::StartOfRemoved { .. } => {
                problem(409, "instance-removed", "Instance removed", detail, false)
            }
            RuntimeError::NoSuchRevision(..) => {
                problem(404, "unknown-revision", "Unknown revision", detail, false)
            }
            RuntimeError::UnknownTask(_) => {
                problem(404, "unknown-task", "Unknown task", detail, false)
            }
            RuntimeError::TaskGone(_) => problem(409, "task-gone", "Task gone", detail, false),
            RuntimeError::InvalidWorkflow(diags) => {
                let mut p = problem(422, "invalid-workflow", "Invalid workflow", detail, false);
                p.errors = Some(
                    diags
                        .iter()
                        .map(|d| FieldError {
                            path: d.path.to_string(),
                            message: d.message.clone(),
                            code: Some(d.code.to_string()),
                            severity: Some(if d.is_error() { "error" } else { "warning" }.into()),
                            line: d.span.map(|s| s.line as u32),
                            column: d.span.map(|s| s.column as u32),
                            help: d.help.clone(),
                        })
                        .collect(),
                );
                p
            }
            RuntimeError::VersionConflict { .. } => problem(
                409,
                "version-conflict",
                "Version already published",
                detail,
                false,
            ),
            RuntimeError::InvalidInput(errors) => {
                let mut p = problem(422, "invalid-input", "Invalid input", detail, false);
                p.errors = Some(
                    errors
                        .iter()
                        .map(|e| FieldError {
                            path: e.pointer.clone(),
                            message: e.message.clone(),
                            code: None,
                            severity: None,
                            line: None,
                            column: None,
                            help: None,
                        })
                        .collect(),
                );
                p
            }
            RuntimeError::IdempotencyMismatch(_) => problem(
                422,
                "idempotency-key-reused",
                "Idempotency-Key reused",
                detail,
                false,
            ),
            RuntimeError::Rejected(Rejection::NoSuchTimer(_)) => {
                problem(404, "unknown-timer", "Unknown timer", detail, false)
            }
            RuntimeError::Rejected(r) => {
                let kind = match r {
                    Rejection::Finished(_) => "instance-finished",
                    Rejection::PastPivot => "past-pivot",
                    Rejection::Compensating(_) => "instance-compensating",
                    Rejection::NotPaused => "not-paused",
                    Rejection::NotFailed(_) => "not-failed",
                    Rejection::AlreadyStarted
                    | Rejection::NotStarted
                    | Rejection::NoSuchTimer(_) => "instance-state",
                };
                problem(
                    409,
                    kind,
                    "Not possible in the instance's state",
                    detail,
                    false,
                )
            }
            RuntimeError::Store(s) if s.is_conflict() => {
                problem(409, "concurrent-update", "Concurrent update", detail, true)
            }
            RuntimeError::Store(s) if s.is_transient() => problem(
                503,
                "store-unavailable",
                "Event store unavailable",
                detail,
                true,
            ),
            RuntimeError::Store(_) | RuntimeError::Corrupt(_) | RuntimeError::Archive(_) => {
                problem(500, "internal", "Internal error", detail, false)
            }
        };
        if p.status >= 500 {
            tracing::error!(error = %e, status = p.status, "request failed");
        } else {
            tracing::debug!(error = %e, status = p.status, "request refused");
        }
        ApiError::from_problem(p)
    }
}

/// Turns errors raised outside operations (unknown routes, unparsable
/// bodies, size limits) into problem+json too.
pub async fn from_poem_error(err: poem::Error) -> Response {
    if err.is_from_response() {
        // an operation's own problem+json answer
        return err.into_response();
    }
    let status = err.status();
    let (kind, title) = match status {
        StatusCode::NOT_FOUND => ("not-found", "Not found"),
        StatusCode::UNAUTHORIZED => ("unauthorized", "Unauthorized"),
        StatusCode::METHOD_NOT_ALLOWED => ("method-not-allowed", "Method not allowed"),
        StatusCode::PAYLOAD_TOO_LARGE => ("too-large", "Request body too large"),
        StatusCode::UNSUPPORTED_MEDIA_TYPE => ("unsupported-media-type", "Unsupported media type"),
        s if s.is_client_error() => ("bad-request", "Bad request"),
        _ => ("internal", "Internal error"),
    };
    if status.is_server_error() {
        tracing::error!(error = %err, "request failed");
    }
    // where the request went wrong, when the parser says
    let (kind, errors) = if let Some(e) = err.downcast_ref::<poem_openapi::error::ParseParamError>()
    {
        (
            "bad-parameter",
            vec![(e.name.to_string(), e.reason.clone())],
        )
    } else if let Some(e) = err.downcast_ref::<poem_openapi::error::ParseRequestPayloadError>() {
        let field = e
            .reason
            .split("field `")
            .nth(1)
            .and_then(|rest| rest.split('`').next());
        (
            "invalid-body",
            vec![(
                field.map_or_else(|| "body".to_string(), |f| format!("body.{f}")),
                e.reason.clone(),
            )],
        )
    } else {
        (kind, Vec::new())
    };
    let detail = if err.is::<poem_openapi::error::AuthorizationError>() {
        // no `Authorization` header, or not a bearer token
        "the request carries no bearer token: send `Authorization: Bearer TOKEN` (`sagaflow serve` prints an admin token at start)".to_string()
    } else {
        err.to_string()
    };
    let p = problem(
        status.as_u16(),
        kind,
        title,
        detail,
        status.is_server_error(),
    );
    let mut body = problem_body(&p);
    if !errors.is_empty() {
        body["errors"] = errors
            .into_iter()
            .map(|(path, message)| serde_json::json!({"path": path, "message": message}))
            .collect();
    }
    poem::web::Json(body)
        .with_status(status)
        .with_content_type("application/problem+json")
        .into_response()
}

/// A problem's JSON body, for answers built outside an operation.
fn problem_body(p: &Problem) -> serde_json::Value {
    serde_json::json!({"type": p.kind, "title": p.title, "status": p.status, "detail": p.detail, "retryable": p.retryable})
}

/// The answer to a request whose handler panicked: a 500 problem+json, with
/// the panic logged (the connection and the server go on).
pub fn from_panic(panic: Box<dyn std::any::Any + Send + 'static>) -> Response {
    let message = panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".into());
    tracing::error!(panic = %message, "a request handler panicked");
    let p = problem(
        500,
        "internal",
        "Internal error",
        "the server failed on this request; it has been logged",
        false,
    );
    poem::web::Json(problem_body(&p))
        .with_status(StatusCode::INTERNAL_SERVER_ERROR)
        .with_content_type("application/problem+json")
        .into_response()
}

#[cfg(test)]
mod tests {
    use poem::{Endpoint, EndpointExt};

    #[tokio::test]
    async fn a_panicking_handler_answers_500_problem_json() {
        let app = poem::Route::new()
            .at(
                "/",
                poem::endpoint::make(|_| async {
                    if true {
                        panic!("a bug");
                    }
                }),
            )
            .with(poem::middleware::CatchPanic::new().with_handler(super::from_panic));
        let resp = app.get_response(poem::Request::default()).await;
        assert_eq!(resp.status(), poem::http::StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(resp.headers()["content-type"], "application/problem+json");
        let body: serde_json::Value =
            serde_json::from_slice(&resp.into_body().into_vec().await.unwrap()).unwrap();
        assert_eq!(body["type"], "/problems/internal");
    }
}
