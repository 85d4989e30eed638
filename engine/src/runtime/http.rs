//! `http` steps: render the request from the saga's context, call, and
//! classify the answer (2xx success, 3xx and 4xx business failures, 5xx and
//! connection errors transient, timeouts timeouts).

use std::time::Duration;

use serde_json::Value;

use crate::compile::model::HttpCall;
use crate::dsl::spec::{FailureKind, HttpMethod};
use crate::dsl::template::Context;

pub use super::step_client::StepClient;

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

/// The longest success a step takes by default, in bytes
/// ([`RuntimeConfig::step_answer_limit`](super::RuntimeConfig)): its output
/// becomes an event, and a worker's output through the API has the same
/// default limit.
pub const ANSWER_LIMIT: usize = 1024 * 1024;

/// The longest error text kept from a response body.
const ERROR_EXCERPT: usize = 300;

/// Calls and judges the answer: 2xx succeeds (its body as JSON, or as text
/// when it is not JSON), a redirect or a 4xx is a business failure, a 5xx,
/// a status the step lists as retryable or a lost connection transient.
pub async fn execute(client: &StepClient, req: HttpRequest) -> Outcome {
    let answer = match client.call(&req).await {
        Ok(a) => a,
        Err(failed) => return failed,
    };
    let status = answer.status;
    if (200..300).contains(&status) {
        let body = &answer.body;
        let output = if body.trim_ascii().is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(body)
                .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(body).into_owned()))
        };
        return Outcome::Succeeded(output);
    }
    let text = String::from_utf8_lossy(&answer.body);
    let excerpt: String = text.chars().take(ERROR_EXCERPT).collect();
    let redirect = (300..400).contains(&status);
    let error = if redirect {
        let to = answer.location.as_deref().unwrap_or("nowhere named");
        format!(
            "HTTP {status} to {to}: redirects are not followed (point the step at the URL that answers)"
        )
    } else {
        format!("HTTP {status}: {}", excerpt.trim())
    };
    let kind = if req.retryable_status.contains(&status) || status >= 500 {
        FailureKind::Transient
    } else if (400..500).contains(&status) || redirect {
        FailureKind::Business
    } else {
        FailureKind::Transient
    };
    Outcome::Failed(kind, error)
}

pub(super) fn error_chain(e: &dyn std::error::Error) -> String {
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
                    let head = read_request(&mut conn).await;
                    let reply = answer(&head);
                    kept.lock().unwrap().push(head);
                    tokio::time::sleep(delay).await;
                    let _ = conn.write_all(reply.as_bytes()).await;
                });
            }
        });
        (url, seen)
    }

    /// A request's head and body (as far as its `content-length`), lowercased.
    async fn read_request(conn: &mut tokio::net::TcpStream) -> String {
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        loop {
            let text = String::from_utf8_lossy(&buf).to_lowercase();
            if let Some(end) = text.find("\r\n\r\n") {
                let length = text[..end]
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length: "))
                    .and_then(|n| n.trim().parse::<usize>().ok())
                    .unwrap_or(0);
                if buf.len() >= end + 4 + length {
                    return text;
                }
            }
            match conn.read(&mut chunk).await {
                Ok(0) | Err(_) => return String::from_utf8_lossy(&buf).to_lowercase(),
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
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

    /// Both clients: hyper's own, and reqwest (for a proxy).
    fn clients() -> [StepClient; 2] {
        [
            StepClient::new(false, ANSWER_LIMIT).unwrap(),
            StepClient::new(true, ANSWER_LIMIT).unwrap(),
        ]
    }

    /// The outcome of a call answered `status` and `body`, the same through both clients.
    async fn outcome(status: u16, body: &'static str, retryable: Vec<u16>) -> Outcome {
        let (url, _) = answering(status, body, Duration::ZERO).await;
        let [direct, proxied] = clients();
        let req = request(url, Duration::from_secs(5), retryable);
        let o = execute(&direct, req.clone()).await;
        assert_eq!(o, execute(&proxied, req).await, "the two clients differ");
        o
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
        for (n, client) in clients().iter().enumerate() {
            let o = execute(client, request(url.clone(), Duration::from_secs(5), vec![])).await;
            match &o {
                Outcome::Failed(FailureKind::Business, e) => {
                    assert!(e.starts_with("HTTP 302 to /elsewhere"), "{e}")
                }
                o => panic!("{o:?}"),
            }
            let seen = seen.lock().unwrap();
            assert_eq!(seen.len(), n + 1, "only the step's own calls: {seen:?}");
        }
    }

    #[tokio::test]
    async fn a_refused_connection_is_transient_and_a_slow_answer_a_timeout() {
        // a port nobody listens on: bind one, then let it go
        let free = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/effect", free.local_addr().unwrap());
        drop(free);
        let (slow, _) = answering(200, "{}", Duration::from_secs(5)).await;
        for client in clients() {
            let o = execute(
                &client,
                request(url.clone(), Duration::from_secs(5), vec![]),
            )
            .await;
            assert_eq!(kind(&o), Some(FailureKind::Transient), "{o:?}");
            let o = execute(
                &client,
                request(slow.clone(), Duration::from_millis(200), vec![]),
            )
            .await;
            assert_eq!(
                o,
                Outcome::Failed(FailureKind::Timeout, "no answer within 200ms".into())
            );
        }
    }

    #[tokio::test]
    async fn every_call_carries_the_effect_key_and_the_attempt() {
        let (url, seen) = answering(200, "{}", Duration::ZERO).await;
        for (n, client) in clients().iter().enumerate() {
            let o = execute(client, request(url.clone(), Duration::from_secs(5), vec![])).await;
            assert_eq!(o, Outcome::Succeeded(json!({})));
            let head = seen.lock().unwrap()[n].clone();
            for line in [
                "post /effect http/1.1\r\n",
                "idempotency-key: i-1:pay\r\n",
                "sagaflow-attempt: 3\r\n",
                "content-type: application/json\r\n",
                "accept: */*\r\n",
                "\r\n\r\n{\"a\":1}",
            ] {
                assert!(head.contains(line), "{line:?} in {head}");
            }
        }
    }

    /// A URL a template made is sent as the URL standard reads it (a space
    /// percent-encoded); one no client can send, or a header no request can
    /// carry, is a business failure (a retry would fail the same way).
    #[tokio::test]
    async fn urls_are_read_as_the_standard_says_and_bad_requests_are_business_failures() {
        let (url, seen) = answering(200, "{}", Duration::ZERO).await;
        for (n, client) in clients().iter().enumerate() {
            let spaced = format!("{url}?q=a b&city=Zürich");
            let o = execute(client, request(spaced, Duration::from_secs(5), vec![])).await;
            assert_eq!(o, Outcome::Succeeded(json!({})));
            let head = seen.lock().unwrap()[2 * n].clone();
            assert!(
                head.starts_with("post /effect?q=a%20b&city=z%c3%bcrich http/1.1\r\n"),
                "{head}"
            );
            for bad in ["not a url", "ftp://127.0.0.1/x", "/effect"] {
                let o = execute(client, request(bad.into(), Duration::from_secs(5), vec![])).await;
                match &o {
                    Outcome::Failed(FailureKind::Business, e) => {
                        assert!(e.starts_with("bad request: "), "{bad}: {e}")
                    }
                    o => panic!("{bad}: {o:?}"),
                }
            }
            let with_credentials = url.replace("http://", "http://ann:s3cret@");
            let o = execute(
                client,
                request(with_credentials, Duration::from_secs(5), vec![]),
            )
            .await;
            assert_eq!(o, Outcome::Succeeded(json!({})));
            let head = seen.lock().unwrap()[2 * n + 1].clone();
            assert!(head.starts_with("post /effect http/1.1\r\n"), "{head}");
            assert!(
                head.contains("authorization: basic yw5uonmzy3jlda==\r\n"),
                "credentials in the URL are sent as Basic authentication: {head}"
            );
            let mut req = request(url.clone(), Duration::from_secs(5), vec![]);
            req.headers.push(("x-bad".into(), "line\nbreak".into()));
            let o = execute(client, req).await;
            assert_eq!(kind(&o), Some(FailureKind::Business), "{o:?}");
        }
        assert_eq!(seen.lock().unwrap().len(), 4, "no bad request was sent");
    }

    /// Headers in time and a body that stops: a timeout, named as such.
    #[tokio::test]
    async fn an_answer_that_stops_halfway_is_a_timeout() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/effect", listener.local_addr().unwrap());
        tokio::spawn(async move {
            let mut open = Vec::new();
            while let Ok((mut conn, _)) = listener.accept().await {
                read_request(&mut conn).await;
                let _ = conn
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n{\"a\":")
                    .await;
                open.push(conn);
            }
        });
        for client in clients() {
            let o = execute(
                &client,
                request(url.clone(), Duration::from_millis(300), vec![]),
            )
            .await;
            assert_eq!(
                o,
                Outcome::Failed(
                    FailureKind::Timeout,
                    "the answer did not finish in time".into()
                )
            );
        }
    }

    /// A success longer than [`ANSWER_LIMIT`] is not read to its end, said
    /// length or not: a transient failure (the effect may have happened, so
    /// the step retries under its key and is compensated when retries run
    /// out). A refusal's long body is cut: still a business failure.
    #[tokio::test]
    async fn an_answer_too_long_is_cut_off_and_transient() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move {
            let mut open = Vec::new();
            while let Ok((mut conn, _)) = listener.accept().await {
                let head = read_request(&mut conn).await;
                let fits = format!("\"{}\"", "a".repeat(ANSWER_LIMIT - 2));
                let reply = if head.starts_with("post /fits ") {
                    format!(
                        "HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{fits}",
                        fits.len()
                    )
                } else if head.starts_with("post /refused ") {
                    // a refusal's long body: only its beginning is read
                    format!(
                        "HTTP/1.1 402 X\r\ncontent-length: 5000000000\r\n\r\n{}",
                        "n".repeat(ANSWER_LIMIT + 10)
                    )
                } else if head.starts_with("post /said ") {
                    "HTTP/1.1 200 OK\r\ncontent-length: 5000000000\r\n\r\n{".into()
                } else {
                    // chunked, never ending: 64 KiB at a time
                    let chunk = format!("10000\r\n{}\r\n", "b".repeat(0x10000));
                    let mut r = "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n".to_string();
                    r.push_str(&chunk.repeat(ANSWER_LIMIT / 0x10000 + 1));
                    r
                };
                let _ = conn.write_all(reply.as_bytes()).await;
                open.push(conn);
            }
        });
        for client in clients() {
            let call = |path: &str| {
                execute(
                    &client,
                    request(format!("{base}{path}"), Duration::from_secs(20), vec![]),
                )
            };
            match call("/fits").await {
                Outcome::Succeeded(Value::String(s)) => assert_eq!(s.len(), ANSWER_LIMIT - 2),
                o => panic!("{:?}", kind(&o)),
            }
            match call("/refused").await {
                Outcome::Failed(FailureKind::Business, e) => {
                    assert_eq!(e, format!("HTTP 402: {}", "n".repeat(ERROR_EXCERPT)))
                }
                o => panic!("{:?}", kind(&o)),
            }
            assert_eq!(
                call("/said").await,
                Outcome::Failed(
                    FailureKind::Transient,
                    "the answer is too long: 5000000000 bytes, and a step's answer may be at most 1048576 bytes".into()
                )
            );
            assert_eq!(
                call("/streams").await,
                Outcome::Failed(
                    FailureKind::Transient,
                    "the answer is too long: more, and a step's answer may be at most 1048576 bytes".into()
                )
            );
        }
    }
}
