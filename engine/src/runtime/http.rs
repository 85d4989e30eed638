//! `http` steps: render the request from the saga's context, call, and
//! classify the answer (2xx success, 4xx business failure, 5xx and
//! connection errors transient, timeouts timeouts).

use std::time::Duration;

use serde_json::Value;

use crate::compile::model::HttpCall;
use crate::dsl::spec::{FailureKind, HttpMethod};
use crate::dsl::template::Context;

/// A request ready to send.
#[derive(Debug, Clone)]
pub struct HttpRequest {
    pub method: HttpMethod,
    pub url: String,
    pub headers: Vec<(String, String)>,
    pub body: Option<Value>,
    pub timeout: Duration,
    pub idempotency_key: String,
    /// The attempt number, sent as `Sagaflow-Attempt` beside the key.
    pub attempt: u32,
    pub retryable_status: Vec<u16>,
}

/// The header carrying the attempt number of an effect (its key stays the same).
pub const ATTEMPT_HEADER: &str = "Sagaflow-Attempt";

/// What an attempt came to.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    Succeeded(Value),
    Failed(FailureKind, String),
}

/// Renders the call's templates; an expression that fails is a business failure of the attempt
/// (retrying would fail the same way).
pub fn render(
    call: &HttpCall,
    ctx: &Context,
    timeout: Duration,
    idempotency_key: String,
    attempt: u32,
) -> Result<HttpRequest, Outcome> {
    let template_error = |e: crate::dsl::template::TemplateError| {
        Outcome::Failed(FailureKind::Business, format!("template: {e}"))
    };
    let url = match call.url.render(ctx).map_err(template_error)? {
        Value::String(s) => s,
        other => other.to_string(),
    };
    let mut headers = Vec::with_capacity(call.headers.len());
    for (k, t) in &call.headers {
        let v = match t.render(ctx).map_err(template_error)? {
            Value::String(s) => s,
            other => other.to_string(),
        };
        headers.push((k.clone(), v));
    }
    let body = match &call.body {
        Some(b) => Some(b.render(ctx).map_err(template_error)?),
        None => None,
    };
    Ok(HttpRequest {
        method: call.method,
        url,
        headers,
        body,
        timeout,
        idempotency_key,
        attempt,
        retryable_status: call.retryable_status.clone(),
    })
}

/// The longest error text kept from a response body.
const ERROR_EXCERPT: usize = 300;

pub async fn execute(client: &reqwest::Client, req: HttpRequest) -> Outcome {
    let method = match req.method {
        HttpMethod::Get => reqwest::Method::GET,
        HttpMethod::Post => reqwest::Method::POST,
        HttpMethod::Put => reqwest::Method::PUT,
        HttpMethod::Patch => reqwest::Method::PATCH,
        HttpMethod::Delete => reqwest::Method::DELETE,
    };
    let mut builder = client
        .request(method, &req.url)
        .timeout(req.timeout)
        .header("Idempotency-Key", &req.idempotency_key)
        .header(ATTEMPT_HEADER, req.attempt);
    for (k, v) in &req.headers {
        builder = builder.header(k, v);
    }
    if let Some(body) = &req.body {
        builder = builder.json(body);
    }
    let response = match builder.send().await {
        Ok(r) => r,
        Err(e) if e.is_timeout() => {
            return Outcome::Failed(
                FailureKind::Timeout,
                format!(
                    "no answer within {}",
                    humantime::format_duration(req.timeout)
                ),
            )
        }
        Err(e) if e.is_builder() => {
            return Outcome::Failed(FailureKind::Business, format!("bad request: {e}"))
        }
        Err(e) => {
            return Outcome::Failed(
                FailureKind::Transient,
                format!("calling {}: {}", req.url, error_chain(&e)),
            )
        }
    };
    let status = response.status();
    let text = match response.text().await {
        Ok(t) => t,
        Err(e) if e.is_timeout() => {
            return Outcome::Failed(
                FailureKind::Timeout,
                "the answer did not finish in time".into(),
            )
        }
        Err(e) => {
            return Outcome::Failed(FailureKind::Transient, format!("reading the answer: {e}"))
        }
    };
    if status.is_success() {
        let output = if text.trim().is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or(Value::String(text))
        };
        return Outcome::Succeeded(output);
    }
    let excerpt: String = text.chars().take(ERROR_EXCERPT).collect();
    let error = format!("HTTP {}: {}", status.as_u16(), excerpt.trim());
    let kind = if req.retryable_status.contains(&status.as_u16()) || status.is_server_error() {
        FailureKind::Transient
    } else if status.is_client_error() {
        FailureKind::Business
    } else {
        FailureKind::Transient
    };
    Outcome::Failed(kind, error)
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}
