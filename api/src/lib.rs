//! The sagaflow HTTP service: an OpenAPI API (poem-openapi) over the engine's
//! runtime, Swagger UI, and the demo services.
//!
//! # Layout
//!
//! - [`workflows`]: publish, list, get, graph.
//! - [`instances`]: start (Idempotency-Key), get (with `wait`), history,
//!   signal, cancel, search with cursor pages, the change stream.
//! - [`tasks`]: the worker protocol: poll, complete, fail, heartbeat.
//! - [`orders`]: create an order, its status, a customer's orders (read model).
//! - [`tokens`]: issue, list and revoke bearer tokens.
//! - [`operations`]: liveness, readiness, Prometheus metrics.
//! - [`auth`]: bearer tokens with roles and worker queues;
//!   [`token_events`]: the versioned events of the `tokens` stream.
//! - [`serde_json_body`]: JSON answers written by serde in one pass.
//! - [`problem`]: every error as RFC 9457 problem+json, mapped in one place.
//! - [`relay`]: worker requests passed between replicas.
//! - [`connections`]: the connection cap and the header deadline.
//! - [`console`]: the operator console at `/ui` (embedded static files).
//! - [`demo`]: inventory, payment and shipping services for the examples
//!   (a bounded ledger; never exposed in production).

pub mod auth;
pub mod connections;
pub mod console;
pub mod demo;
pub mod instances;
mod limit;
pub mod operations;
pub mod orders;
pub mod problem;
pub mod relay;
pub mod serde_json_body;
pub mod tasks;
pub mod token_events;
pub mod tokens;
pub mod types;
pub mod workflows;

use std::future::Future;
use std::time::Duration;

use poem::listener::{Acceptor, TcpAcceptor};
use poem::{Endpoint, EndpointExt, Route, Server};
use poem_openapi::{OpenApiService, Tags};
use sagaflow_engine::runtime::Runtime;

#[derive(Tags)]
pub enum Tag {
    /// Workflow definitions.
    Workflows,
    /// Orders: create one (it starts the `order` workflow), follow its status, list a customer's.
    Orders,
    /// Saga instances: start, follow, signal, cancel.
    Instances,
    /// The protocol for workers in any language.
    Tasks,
    /// Tokens and their roles (admin only).
    Tokens,
    /// Liveness, readiness, metrics.
    Operations,
}

#[derive(Debug, Clone)]
pub struct ApiConfig {
    /// The largest request body accepted (bigger ones get 413).
    pub body_limit: usize,
    /// Serve the demo services under `/demo`.
    pub demo: Option<demo::DemoConfig>,
    /// The URL the service is reached at (shown in the spec and Swagger UI).
    pub public_url: String,
    /// The accepted bearer tokens.
    pub tokens: auth::Tokens,
    /// Where `/metrics` reads from; `None` serves no metrics.
    pub metrics: Option<metrics_exporter_prometheus::PrometheusHandle>,
}

/// The OpenAPI service (also used to write the spec to a file).
pub fn openapi(
    rt: Runtime,
    config: &ApiConfig,
) -> OpenApiService<
    (
        workflows::WorkflowsApi,
        instances::InstancesApi,
        orders::OrdersApi,
        tasks::TasksApi,
        tokens::TokensApi,
        operations::OperationsApi,
    ),
    (),
> {
    OpenApiService::new(
        (
            workflows::WorkflowsApi { rt: rt.clone() },
            instances::InstancesApi { rt: rt.clone() },
            orders::OrdersApi { rt: rt.clone() },
            tasks::TasksApi {
                rt: rt.clone(),
                polls: tasks::PollSlots::default(),
                relay: relay::Relay::default(),
            },
            tokens::TokensApi {
                rt: rt.clone(),
                tokens: config.tokens.clone(),
            },
            operations::OperationsApi {
                rt,
                metrics: config.metrics.clone(),
            },
        ),
        "sagaflow",
        env!("CARGO_PKG_VERSION"),
    )
    .description("Publish YAML saga workflows, start and follow their instances, and take tasks as a worker. Errors are RFC 9457 problem+json.")
    .server(&config.public_url)
}

/// The whole HTTP application.
pub fn app(rt: Runtime, config: &ApiConfig) -> impl Endpoint {
    let ui = docs_page(rt.clone(), config.clone());
    let api = openapi(rt, config);
    let spec_json = api.spec_endpoint();
    let spec_yaml = api.spec_endpoint_yaml();
    let mut route = Route::new()
        .nest("/", api)
        .nest("/docs", ui)
        .nest("/ui", console::routes())
        .at("/openapi.json", spec_json)
        .at("/openapi.yaml", spec_yaml);
    if let Some(d) = &config.demo {
        route = route.nest("/demo", demo::routes(d.clone()));
    }
    route
        .data(std::sync::Arc::new(config.tokens.clone()))
        .with(limit::BodyLimit(config.body_limit))
        .catch_all_error(problem::from_poem_error)
        // a bug must cost one request a 500, never the connection or the server
        .with(poem::middleware::CatchPanic::new().with_handler(problem::from_panic))
}

/// Swagger UI: one page holding its script, its style and the spec, about
/// 1.7 MB. It is built at the first request for it, kept once at its length,
/// and shared by every answer. (poem-openapi's own endpoint builds it at
/// start, keeps it with as much again reserved, and copies it for each
/// request: about 3 MB of a server's memory, and the pages of the binary
/// that hold the script, for a page few servers are ever asked for.)
fn docs_page(rt: Runtime, config: ApiConfig) -> impl Endpoint {
    let page = std::sync::Arc::new(std::sync::OnceLock::<bytes::Bytes>::new());
    Route::new().at(
        "/",
        poem::endpoint::make_sync(move |_| {
            let page = page.get_or_init(|| {
                let html = openapi(rt.clone(), &config).swagger_ui_html();
                bytes::Bytes::from(html.into_bytes().into_boxed_slice())
            });
            poem::Response::builder()
                .content_type("text/html; charset=utf-8")
                .body(poem::Body::from_bytes(page.clone()))
        }),
    )
}

/// Serves `app` on an already bound listener until `shutdown` completes.
pub async fn serve(
    listener: std::net::TcpListener,
    app: impl Endpoint + 'static,
    shutdown: impl Future<Output = ()> + Send + 'static,
    limits: connections::ConnectionLimits,
) -> std::io::Result<()> {
    listener.set_nonblocking(true)?;
    let listener = tokio::net::TcpListener::from_std(listener)?;
    let acceptor = connections::LimitedAcceptor::new(TcpAcceptor::from_tokio(listener)?, limits);
    tracing::debug!(addr = ?acceptor.local_addr(), "serving");
    Server::new_with_acceptor(acceptor)
        .run_with_graceful_shutdown(app, shutdown, Some(Duration::from_secs(10)))
        .await
}
