//! `http` steps: render the request from the saga's context, call, and
//! classify the answer (2xx success, 3xx and 4xx business failures, 5xx and
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

/// Every byte outside RFC 3986's unreserved set as `%XX`: a value made safe
/// as one path segment (a queue name with `/` stays one segment).
pub fn percent_encode(s: &str) -> String {
    use std::fmt::Write;
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

/// The longest error text kept from a response body.
const ERROR_EXCERPT: usize = 300;

/// The client `http` steps call with. It follows no redirect: on a 301, 302
/// or 303 an HTTP client turns a `POST` into a `GET` without its body, so an
/// effect would not happen while its step took the `GET`'s answer for its
/// result. A redirect is a business failure that names where it points.
pub fn client() -> reqwest::Result<reqwest::Client> {
    reqwest::Client::builder()
        .pool_max_idle_per_host(256)
        .redirect(reqwest::redirect::Policy::none())
        .build()
}

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
    let location = response
        .headers()
        .get(reqwest::header::LOCATION)
        .map(|l| String::from_utf8_lossy(l.as_bytes()).into_owned());
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
    let error = if status.is_redirection() {
        let to = location.as_deref().unwrap_or("nowhere named");
        format!(
            "HTTP {} to {to}: redirects are not followed (point the step at the URL that answers)",
            status.as_u16()
        )
    } else {
        format!("HTTP {}: {}", status.as_u16(), excerpt.trim())
    };
    let kind = if req.retryable_status.contains(&status.as_u16()) || status.is_server_error() {
        FailureKind::Transient
    } else if status.is_client_error() || status.is_redirection() {
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

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use serde_json::json;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    /// A server on 127.0.0.1 that answers each request with what `answer`
    /// makes of its head (after `delay`), keeping the heads it saw, lowercased.
    async fn serving(
        answer: impl Fn(&str) -> String + Send + Sync + 'static,
        delay: Duration,
    ) -> (String, Arc<Mutex<Vec<String>>>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/effect", listener.local_addr().unwrap());
        let seen = Arc::new(Mutex::new(Vec::new()));
        let kept = seen.clone();
        let answer = Arc::new(answer);
        tokio::spawn(async move {
            while let Ok((mut conn, _)) = listener.accept().await {
                let (kept, answer) = (kept.clone(), answer.clone());
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 16 * 1024];
                    let n = conn.read(&mut buf).await.unwrap_or(0);
                    let head = String::from_utf8_lossy(&buf[..n]).to_lowercase();
                    let reply = answer(&head);
                    kept.lock().unwrap().push(head);
                    tokio::time::sleep(delay).await;
                    let _ = conn.write_all(reply.as_bytes()).await;
                });
            }
        });
        (url, seen)
    }

    /// [`serving`] every request `status` and `body`.
    async fn answering(
        status: u16,
        body: &'static str,
        delay: Duration,
    ) -> (String, Arc<Mutex<Vec<String>>>) {
        let reply = format!(
            "HTTP/1.1 {status} X\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        );
        serving(move |_| reply.clone(), delay).await
    }

    fn request(url: String, timeout: Duration, retryable_status: Vec<u16>) -> HttpRequest {
        HttpRequest {
            method: HttpMethod::Post,
            url,
            headers: Vec::new(),
            body: Some(json!({"a": 1})),
            timeout,
            idempotency_key: "i-1:pay".into(),
            attempt: 3,
            retryable_status,
        }
    }

    async fn outcome(status: u16, body: &'static str, retryable: Vec<u16>) -> Outcome {
        let (url, _) = answering(status, body, Duration::ZERO).await;
        execute(
            &reqwest::Client::new(),
            request(url, Duration::from_secs(5), retryable),
        )
        .await
    }

    fn kind(o: &Outcome) -> Option<FailureKind> {
        match o {
            Outcome::Failed(k, _) => Some(*k),
            Outcome::Succeeded(_) => None,
        }
    }

    #[tokio::test]
    async fn answers_are_classified_by_status() {
        let defaults = || vec![408, 429];
        assert_eq!(
            outcome(201, r#"{"id": 7}"#, defaults()).await,
            Outcome::Succeeded(json!({"id": 7}))
        );
        assert_eq!(
            outcome(204, "", defaults()).await,
            Outcome::Succeeded(Value::Null)
        );
        assert_eq!(
            outcome(200, "plain words", defaults()).await,
            Outcome::Succeeded(json!("plain words"))
        );
        for (status, want) in [
            (500, FailureKind::Transient),
            (503, FailureKind::Transient),
            (429, FailureKind::Transient),
            (408, FailureKind::Transient),
            (402, FailureKind::Business),
            (404, FailureKind::Business),
            (409, FailureKind::Business),
            (301, FailureKind::Business),
        ] {
            let o = outcome(status, r#"{"error": "x"}"#, defaults()).await;
            assert_eq!(kind(&o), Some(want), "{status}: {o:?}");
        }
        let o = outcome(409, "busy", vec![409]).await;
        assert_eq!(
            kind(&o),
            Some(FailureKind::Transient),
            "retryable_status wins: {o:?}"
        );
        match outcome(402, "declined", defaults()).await {
            Outcome::Failed(_, e) => assert_eq!(e, "HTTP 402: declined"),
            o => panic!("{o:?}"),
        }
    }

    /// A redirect is not followed (a `POST` would come back as a `GET`
    /// without its body): the step fails as a business failure naming it.
    #[tokio::test]
    async fn a_redirect_is_a_business_failure_not_a_get() {
        let (url, seen) = serving(
            |head| {
                if head.starts_with("post /effect") {
                    "HTTP/1.1 302 Found\r\nlocation: /elsewhere\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
                } else {
                    "HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\n{}"
                }
                .to_string()
            },
            Duration::ZERO,
        )
        .await;
        let o = execute(
            &client().unwrap(),
            request(url, Duration::from_secs(5), vec![]),
        )
        .await;
        match &o {
            Outcome::Failed(FailureKind::Business, e) => {
                assert!(e.starts_with("HTTP 302 to /elsewhere"), "{e}")
            }
            o => panic!("{o:?}"),
        }
        let seen = seen.lock().unwrap();
        assert_eq!(seen.len(), 1, "only the step's own call: {seen:?}");
    }

    #[tokio::test]
    async fn a_refused_connection_is_transient_and_a_slow_answer_a_timeout() {
        // a port nobody listens on: bind one, then let it go
        let free = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/effect", free.local_addr().unwrap());
        drop(free);
        let o = execute(
            &reqwest::Client::new(),
            request(url, Duration::from_secs(5), vec![]),
        )
        .await;
        assert_eq!(kind(&o), Some(FailureKind::Transient), "{o:?}");

        let (url, _) = answering(200, "{}", Duration::from_secs(5)).await;
        let o = execute(
            &reqwest::Client::new(),
            request(url, Duration::from_millis(200), vec![]),
        )
        .await;
        assert_eq!(kind(&o), Some(FailureKind::Timeout), "{o:?}");
    }

    #[tokio::test]
    async fn every_call_carries_the_effect_key_and_the_attempt() {
        let (url, seen) = answering(200, "{}", Duration::ZERO).await;
        execute(
            &reqwest::Client::new(),
            request(url, Duration::from_secs(5), vec![]),
        )
        .await;
        let head = seen.lock().unwrap()[0].clone();
        assert!(head.contains("idempotency-key: i-1:pay\r\n"), "{head}");
        assert!(head.contains("sagaflow-attempt: 3\r\n"), "{head}");
    }
}
