//! The client `http` steps call with.
//!
//! hyper's pooled HTTP/1.1 client over TCP or rustls, driven directly: the
//! URL is parsed once per call. reqwest, which it replaces on this path,
//! parsed it three times (its own parse, its redirect layer's, the
//! response's) and ran each call through layers a step does not use:
//! redirects, retries, proxy matching; about a third of a step call's
//! instructions (docs/performance.md). When the machine names an HTTP proxy
//! the binary says so, and calls go through reqwest, which honours
//! `HTTP_PROXY`, `HTTPS_PROXY`, `ALL_PROXY` and `NO_PROXY` (ADR 25).
//!
//! Neither follows a redirect: on a 301, 302 or 303 an HTTP client turns a
//! `POST` into a `GET` without its body, so an effect would not happen while
//! its step took the `GET`'s answer for its result.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{HeaderValue, ACCEPT, AUTHORIZATION, CONTENT_TYPE, LOCATION};
use http_body_util::{BodyExt, Full};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};

use super::http::{HttpRequest, Outcome, ATTEMPT_HEADER};
use crate::dsl::spec::{FailureKind, HttpMethod};

/// Idle connections kept per host: a step's service sees many calls at once.
const IDLE_PER_HOST: usize = 256;

type Direct = hyper_util::client::legacy::Client<HttpsConnector<HttpConnector>, Full<Bytes>>;

/// The client of `http` steps; cheap to clone (one shared pool).
#[derive(Clone)]
pub struct StepClient {
    inner: Arc<Inner>,
    /// The longest success kept, in bytes.
    limit: usize,
}

// one of them per runtime, behind the `Arc`: the size of a variant costs nothing
#[allow(clippy::large_enum_variant)]
enum Inner {
    /// hyper directly: no proxy is named.
    Direct(Direct),
    /// reqwest, for the proxy the environment names.
    Proxied(reqwest::Client),
}

/// An answer, before it is judged.
pub(super) struct Answer {
    pub status: u16,
    pub location: Option<String>,
    pub body: Bytes,
}

impl StepClient {
    /// A client; `through_proxy` when the machine names an HTTP proxy;
    /// `answer_limit` the longest success it keeps, in bytes. Loads the
    /// system's root certificates (those that do not parse are skipped;
    /// with none, `https` calls fail and `http` ones work).
    pub fn new(through_proxy: bool, answer_limit: usize) -> Result<Self, String> {
        let client = |inner| Self {
            inner: Arc::new(inner),
            limit: answer_limit,
        };
        if through_proxy {
            return reqwest::Client::builder()
                .pool_max_idle_per_host(IDLE_PER_HOST)
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .map(|c| client(Inner::Proxied(c)))
                .map_err(|e| e.to_string());
        }
        let mut roots = rustls::RootCertStore::empty();
        let found = rustls_native_certs::load_native_certs();
        roots.add_parsable_certificates(found.certs);
        let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
        let mut tcp = HttpConnector::new();
        tcp.enforce_http(false);
        tcp.set_nodelay(true);
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .wrap_connector(tcp);
        let direct = hyper_util::client::legacy::Client::builder(TokioExecutor::new())
            .pool_max_idle_per_host(IDLE_PER_HOST)
            .pool_timer(TokioTimer::new())
            .build(connector);
        Ok(client(Inner::Direct(direct)))
    }

    /// Sends the request and reads the whole answer within its timeout.
    /// A failure to send is the attempt's outcome: a bad URL or header a
    /// business failure, no answer in time a timeout, anything else transient.
    pub(super) async fn call(&self, req: &HttpRequest) -> Result<Answer, Outcome> {
        match &*self.inner {
            Inner::Direct(client) => direct(client, req, self.limit).await,
            Inner::Proxied(client) => proxied(client, req, self.limit).await,
        }
    }
}

fn bad_request(e: impl std::fmt::Display) -> Outcome {
    Outcome::Failed(FailureKind::Business, format!("bad request: {e}"))
}

fn no_answer(timeout: Duration) -> Outcome {
    Outcome::Failed(
        FailureKind::Timeout,
        format!("no answer within {}", humantime::format_duration(timeout)),
    )
}

fn unfinished() -> Outcome {
    Outcome::Failed(
        FailureKind::Timeout,
        "the answer did not finish in time".into(),
    )
}

/// An answer longer than a step's output may be. The effect may well have
/// happened (the answer began), so the step is not refused: it retries under
/// its key, and when its retries run out it is compensated with the steps
/// before it (ADR 3), as after a lost answer.
fn too_long(announced: Option<u64>, limit: usize) -> Outcome {
    let size = match announced {
        Some(n) => format!("{n} bytes"),
        None => "more".into(),
    };
    Outcome::Failed(
        FailureKind::Transient,
        format!("the answer is too long: {size}, and a step's answer may be at most {limit} bytes"),
    )
}

/// The length an answer announces, when it is longer than a step may take.
fn announced_too_long(length: Option<u64>, limit: usize) -> Result<(), Outcome> {
    match length {
        Some(n) if n > limit as u64 => Err(too_long(Some(n), limit)),
        _ => Ok(()),
    }
}

/// An answer's body as it is read, up to the client's limit. A success's
/// body is the step's output: longer is a failure ([`too_long`]). Of any
/// other answer only the beginning is used (an excerpt in the error), so
/// a longer one is cut there.
struct Kept {
    success: bool,
    limit: usize,
    bytes: Vec<u8>,
}

impl Kept {
    fn new(success: bool, limit: usize) -> Self {
        Self {
            success,
            limit,
            bytes: Vec::new(),
        }
    }

    /// Keeps `data`; `false` once there is no room for more.
    fn keep(&mut self, data: &[u8]) -> Result<bool, Outcome> {
        let room = self.limit - self.bytes.len();
        if data.len() <= room {
            self.bytes.extend_from_slice(data);
            return Ok(true);
        }
        if self.success {
            return Err(too_long(None, self.limit));
        }
        self.bytes.extend_from_slice(&data[..room]);
        Ok(false)
    }

    fn into_bytes(self) -> Bytes {
        Bytes::from(self.bytes)
    }
}

fn location(headers: &http::HeaderMap) -> Option<String> {
    headers
        .get(LOCATION)
        .map(|l| String::from_utf8_lossy(l.as_bytes()).into_owned())
}

fn method(m: HttpMethod) -> http::Method {
    match m {
        HttpMethod::Get => http::Method::GET,
        HttpMethod::Post => http::Method::POST,
        HttpMethod::Put => http::Method::PUT,
        HttpMethod::Patch => http::Method::PATCH,
        HttpMethod::Delete => http::Method::DELETE,
    }
}

/// The URL as hyper takes it, and the credentials it carries (`user:password`,
/// sent as HTTP Basic authentication, as reqwest sends them). Parsed as it
/// is when it can be, else through the URL standard's parser, which
/// percent-encodes what a rendered value may bring (a space, a letter
/// outside ASCII) and encodes a host name.
fn uri(url: &str) -> Result<(http::Uri, Option<String>), String> {
    let bad = |e: &dyn std::fmt::Display| format!("{url}: {e}");
    let mut credentials = None;
    let uri = match http::Uri::try_from(url) {
        Ok(u) if !u.authority().is_some_and(|a| a.as_str().contains('@')) => u,
        _ => {
            let mut parsed = url::Url::parse(url).map_err(|e| bad(&e))?;
            if !parsed.username().is_empty() || parsed.password().is_some() {
                credentials = Some(format!(
                    "{}:{}",
                    parsed.username(),
                    parsed.password().unwrap_or_default()
                ));
                let _ = parsed.set_username("");
                let _ = parsed.set_password(None);
            }
            http::Uri::try_from(parsed.as_str()).map_err(|e| bad(&e))?
        }
    };
    match uri.scheme_str() {
        Some("http" | "https") if uri.authority().is_some() => Ok((uri, credentials)),
        _ => Err(format!("{url}: not an http or https URL")),
    }
}

async fn direct(client: &Direct, req: &HttpRequest, limit: usize) -> Result<Answer, Outcome> {
    let (uri, credentials) = uri(&req.url).map_err(bad_request)?;
    let mut builder = http::Request::builder()
        .method(method(req.method))
        .uri(uri)
        .header("Idempotency-Key", &req.idempotency_key)
        .header(ATTEMPT_HEADER, req.attempt);
    for (k, v) in &req.headers {
        builder = builder.header(k.as_str(), v.as_str());
    }
    let mut request = builder.body(Full::default()).map_err(bad_request)?;
    let headers = request.headers_mut();
    if !headers.contains_key(ACCEPT) {
        headers.insert(ACCEPT, HeaderValue::from_static("*/*"));
    }
    if let Some(credentials) = credentials {
        if !headers.contains_key(AUTHORIZATION) {
            use base64::Engine as _;
            let encoded = base64::engine::general_purpose::STANDARD.encode(credentials);
            let mut value =
                HeaderValue::try_from(format!("Basic {encoded}")).map_err(bad_request)?;
            value.set_sensitive(true);
            headers.insert(AUTHORIZATION, value);
        }
    }
    if let Some(value) = &req.body {
        if !headers.contains_key(CONTENT_TYPE) {
            headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        }
        let json = serde_json::to_vec(value).map_err(bad_request)?;
        *request.body_mut() = Full::new(Bytes::from(json));
    }
    let deadline = tokio::time::Instant::now() + req.timeout;
    let response = match tokio::time::timeout_at(deadline, client.request(request)).await {
        Err(_) => return Err(no_answer(req.timeout)),
        Ok(Err(e)) => {
            return Err(Outcome::Failed(
                FailureKind::Transient,
                format!("calling {}: {}", req.url, super::http::error_chain(&e)),
            ))
        }
        Ok(Ok(r)) => r,
    };
    let status = response.status().as_u16();
    let location = location(response.headers());
    let success = (200..300).contains(&status);
    if success {
        let length = response
            .headers()
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok()?.parse().ok());
        announced_too_long(length, limit)?;
    }
    let mut incoming = response.into_body();
    let mut body = Kept::new(success, limit);
    let read = async {
        while let Some(frame) = incoming.frame().await {
            let frame = frame.map_err(|e| {
                Outcome::Failed(FailureKind::Transient, format!("reading the answer: {e}"))
            })?;
            if let Ok(data) = frame.into_data() {
                if !body.keep(&data)? {
                    break;
                }
            }
        }
        Ok::<_, Outcome>(())
    };
    match tokio::time::timeout_at(deadline, read).await {
        Err(_) => return Err(unfinished()),
        Ok(Err(failed)) => return Err(failed),
        Ok(Ok(())) => {}
    }
    let body = body.into_bytes();
    Ok(Answer {
        status,
        location,
        body,
    })
}

async fn proxied(
    client: &reqwest::Client,
    req: &HttpRequest,
    limit: usize,
) -> Result<Answer, Outcome> {
    let mut builder = client
        .request(method(req.method), &req.url)
        .timeout(req.timeout)
        .header("Idempotency-Key", &req.idempotency_key)
        .header(ATTEMPT_HEADER, req.attempt);
    for (k, v) in &req.headers {
        builder = builder.header(k, v);
    }
    if let Some(body) = &req.body {
        builder = builder.json(body);
    }
    let mut response = match builder.send().await {
        Ok(r) => r,
        Err(e) if e.is_timeout() => return Err(no_answer(req.timeout)),
        Err(e) if e.is_builder() => return Err(bad_request(e)),
        Err(e) => {
            return Err(Outcome::Failed(
                FailureKind::Transient,
                format!("calling {}: {}", req.url, super::http::error_chain(&e)),
            ))
        }
    };
    let status = response.status().as_u16();
    let location = location(response.headers());
    let success = (200..300).contains(&status);
    if success {
        announced_too_long(response.content_length(), limit)?;
    }
    let mut body = Kept::new(success, limit);
    loop {
        match response.chunk().await {
            Ok(Some(chunk)) => {
                if !body.keep(&chunk)? {
                    break;
                }
            }
            Ok(None) => break,
            Err(e) if e.is_timeout() => return Err(unfinished()),
            Err(e) => {
                return Err(Outcome::Failed(
                    FailureKind::Transient,
                    format!("reading the answer: {e}"),
                ))
            }
        }
    }
    Ok(Answer {
        status,
        location,
        body: body.into_bytes(),
    })
}
