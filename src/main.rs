//! The `sagaflow` command line.

mod commands;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

#[derive(Parser)]
#[command(
    name = "sagaflow",
    version,
    about = "A saga orchestration engine: YAML workflows, every step an event."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Check workflow files (or folders of them) and explain every problem.
    Validate {
        /// Workflow files, or folders whose *.yaml / *.yml files are checked.
        #[arg(required = true)]
        files: Vec<PathBuf>,
        #[arg(long, value_enum, default_value_t = ReportFormat::Human)]
        format: ReportFormat,
    },
    /// Draw a workflow's compiled state machine.
    Graph {
        file: PathBuf,
        #[arg(long, value_enum, default_value_t = GraphFormat::Mermaid)]
        format: GraphFormat,
    },
    /// Print the JSON Schema of the workflow language (for editors).
    Schema,
}

#[derive(Clone, Copy, ValueEnum)]
pub enum ReportFormat {
    Human,
    Json,
}

#[derive(Clone, Copy, ValueEnum)]
pub enum GraphFormat {
    Dot,
    Mermaid,
    Json,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Validate { files, format } => commands::validate::run(&files, format),
        Command::Graph { file, format } => commands::graph::run(&file, format),
        Command::Schema => commands::schema::run(),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}
