//! `sagaflow projections rebuild`: replays the whole event log into fresh read models.

use std::io::Write;

use anyhow::Context;

#[derive(Debug, clap::Args)]
pub struct RebuildArgs {
    /// The server's stores, as for `serve` (its data-directory lock keeps a running server out).
    #[command(flatten)]
    pub stores: super::serve::StoreArgs,
}

pub async fn rebuild(args: RebuildArgs) -> anyhow::Result<()> {
    std::fs::create_dir_all(&args.stores.data_dir)
        .with_context(|| format!("cannot create {}", args.stores.data_dir.display()))?;
    let _lock = super::serve::lock_data_dir(&args.stores.data_dir)?;
    let (store, projections, _shared) = super::serve::open_stores(&args.stores).await?;
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
    // the old rows' pages go back to the file system (SQLite)
    projections.reclaim().await?;
    projections.close().await;
    store.close().await;
    Ok(())
}
