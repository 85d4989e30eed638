//! `sagaflow archive read`: the instances retention archived to a file, one
//! JSON line each (instance, workflow, times and every event).

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use sagaflow_engine::archive;

#[derive(Debug, clap::Args)]
pub struct ReadArgs {
    /// An archive file (`sagaflow-YYYY-MM-DD.jsonl.gz` under `--archive-dir`).
    pub file: PathBuf,
    /// Only this instance (its id).
    #[arg(long)]
    pub instance: Option<uuid::Uuid>,
}

pub fn read(args: &ReadArgs) -> anyhow::Result<ExitCode> {
    let instances = archive::read(&args.file)?;
    let mut out = std::io::stdout().lock();
    let mut shown = 0;
    for i in instances
        .iter()
        .filter(|i| args.instance.is_none_or(|id| i.instance_id == id))
    {
        serde_json::to_writer(&mut out, i)?;
        writeln!(out)?;
        shown += 1;
    }
    if shown == 0 {
        if let Some(id) = args.instance {
            eprintln!("instance {id} is not in {}", args.file.display());
            return Ok(ExitCode::from(1));
        }
    }
    Ok(ExitCode::SUCCESS)
}
