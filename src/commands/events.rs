//! `sagaflow events`: the embedded store's event log as JSON lines, event
//! data decoded (it is compressed in the file, ADR 18). Reads the file
//! read-only, so it also runs beside a server.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use sagaflow_engine::store::sqlite::SqliteReader;
use sagaflow_engine::store::RecordedEvent;

#[derive(Debug, clap::Args)]
pub struct EventsArgs {
    /// The data directory whose `events.db` is read.
    #[arg(long, env = "SAGAFLOW_DATA_DIR", default_value = "sagaflow-data")]
    pub data_dir: PathBuf,
    /// Only this stream (`saga-{id}`, `workflow-{name}`), from its first event.
    #[arg(long, conflicts_with = "instance")]
    pub stream: Option<String>,
    /// Only this saga instance's stream.
    #[arg(long)]
    pub instance: Option<uuid::Uuid>,
    /// The whole log after this position (not with --stream or --instance).
    #[arg(long, conflicts_with_all = ["stream", "instance"])]
    pub after: Option<u64>,
    /// At most this many events.
    #[arg(long, default_value_t = 1000)]
    pub limit: usize,
}

pub async fn run(args: EventsArgs) -> anyhow::Result<ExitCode> {
    let path = args.data_dir.join("events.db");
    let reader = SqliteReader::open(&path)
        .await
        .with_context(|| format!("cannot read {}", path.display()))?;
    let stream = args
        .stream
        .clone()
        .or_else(|| args.instance.map(|id| format!("saga-{id}")));
    let events = match &stream {
        Some(s) => {
            let mut all = reader.read_stream(s, 0).await?;
            all.truncate(args.limit);
            all
        }
        None => reader.read_all(args.after, args.limit).await?,
    };
    let mut out = std::io::stdout().lock();
    for e in &events {
        serde_json::to_writer(&mut out, &line(e))?;
        writeln!(out)?;
    }
    if events.is_empty() {
        if let Some(s) = stream {
            eprintln!("stream `{s}` has no events in {}", path.display());
            return Ok(ExitCode::from(1));
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn line(e: &RecordedEvent) -> serde_json::Value {
    serde_json::json!({
        "position": e.position,
        "stream": e.stream,
        "revision": e.revision,
        "type": e.event_type,
        "schema_version": e.schema_version,
        "recorded_at": e.recorded_at,
        "data": e.data,
    })
}
