//! `sagaflow demo-services`: the demo inventory, payment and shipping services as their own process.

use std::net::{SocketAddr, TcpListener};
use std::time::Duration;

use anyhow::Context;
use poem::{EndpointExt, Route};
use sagaflow_api::demo::{routes, DemoConfig};

#[derive(Debug, clap::Args)]
pub struct DemoArgs {
    #[arg(long, env = "SAGAFLOW_DEMO_LISTEN", default_value = "127.0.0.1:8081")]
    pub listen: SocketAddr,
    /// Payments above this amount are declined.
    #[arg(long, env = "SAGAFLOW_DEMO_PAYMENT_LIMIT", default_value_t = 1000.0)]
    pub payment_limit: f64,
    /// How many idempotency keys (and orders) are remembered; the oldest go first.
    #[arg(long, default_value_t = sagaflow_api::demo::LEDGER_SIZE)]
    pub ledger_size: usize,
    /// Added to every call, e.g. `20ms`.
    #[arg(long, default_value = "0s", value_parser = humantime::parse_duration)]
    pub latency: Duration,
}

pub async fn run(args: DemoArgs) -> anyhow::Result<()> {
    let listener = TcpListener::bind(args.listen)
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let url = format!("http://{}/demo", listener.local_addr()?);
    let app = Route::new()
        .nest(
            "/demo",
            routes(DemoConfig {
                payment_limit: args.payment_limit,
                ledger_size: args.ledger_size,
                latency: args.latency,
            }),
        )
        .catch_all_error(sagaflow_api::problem::from_poem_error);
    println!("sagaflow demo services listening on {url}");
    sagaflow_api::serve(
        listener,
        app,
        super::serve::shutdown_signal(),
        Default::default(),
    )
    .await?;
    Ok(())
}
