//! `sagaflow projections rebuild`: replays the whole event log into fresh read models.

use std::io::Write;
use std::path::PathBuf;

use anyhow::Context;

#[derive(Debug, clap::Args)]
pub struct RebuildArgs {
    /// The data directory of the server (its lock keeps a running server out).
    #[arg(long, env = "SAGAFLOW_DATA_DIR", default_value = "sagaflow-data")]
    pub data_dir: PathBuf,
    /// The event store, as for `serve`: `sqlite` or a PostgreSQL URL.
    #[arg(
        long,
        env = "SAGAFLOW_STORE",
        default_value = "sqlite",
        hide_env_values = true
    )]
    pub store: String,
    /// The read models, as for `serve` (with an EventStoreDB store).
    #[arg(
        long,
        env = "SAGAFLOW_READ_MODELS",
        default_value = "sqlite",
        hide_env_values = true
    )]
    pub read_models: String,
}

pub async fn rebuild(args: RebuildArgs) -> anyhow::Result<()> {
    std::fs::create_dir_all(&args.data_dir)
        .with_context(|| format!("cannot create {}", args.data_dir.display()))?;
    let _lock = super::serve::lock_data_dir(&args.data_dir)?;
    let (store, projections, _single) =
        super::serve::open_stores(&args.data_dir, &args.store, &args.read_models).await?;
    let head = (*store.head().borrow()).unwrap_or(0);
    let started = std::time::Instant::now();
    projections.reset().await?;
    // A progress line on stderr, redrawn after each batch (hand-written: one line needs no crate).
    let mut err = std::io::stderr();
    let events = projections
        .catch_up_with(store.as_ref(), |at| {
            let pct = (at * 100).checked_div(head).unwrap_or(100);
            let filled = (pct / 5) as usize;
            let _ = write!(
                err,
                "\rrebuilding [{}{}] {pct:>3}%  {at}/{head}",
                "#".repeat(filled),
                " ".repeat(20 - filled.min(20))
            );
            let _ = err.flush();
        })
        .await?;
    let _ = writeln!(err);
    println!(
        "read models rebuilt: {events} events applied up to position {head} in {:.1}s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}
