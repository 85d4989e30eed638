//! The `sagaflow` command line.

mod alloc;
mod commands;

// The engine allocates many small, short-lived values across threads (events,
// JSON, HTTP buffers); glibc's allocator spent a third of the server's CPU on them.
// mimalloc also serves the C libraries' malloc (SQLite's page caches, zstd's
// dictionary training): glibc kept what they freed, about 27 MB after a
// training, where mimalloc gives it back (docs/performance.md, "Memory").
#[global_allocator]
static ALLOCATOR: alloc::Mimalloc = alloc::Mimalloc;

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
    /// Run workflow tests (`*.test.yaml`, or the test files in folders) on the pure core.
    Test {
        /// Test files, or folders whose *.test.yaml files are run.
        #[arg(required = true)]
        paths: Vec<PathBuf>,
        #[arg(long, value_enum, default_value_t = ReportFormat::Human)]
        format: ReportFormat,
    },
    /// Print the JSON Schema of the workflow language (for editors).
    Schema {
        /// The schema of workflow test files instead.
        #[arg(long)]
        tests: bool,
    },
    /// Print the HTTP API's OpenAPI document (docs/openapi.json is this output).
    Openapi {
        #[arg(long, value_enum, default_value_t = SpecFormat::Json)]
        format: SpecFormat,
    },
    /// Run the engine and its HTTP API (Swagger UI at /docs) on the embedded SQLite store.
    #[command(
        after_help = "Logs go to stderr: SAGAFLOW_LOG filters them (e.g. `info`, `debug`), SAGAFLOW_LOG_FORMAT=json writes JSON lines. SAGAFLOW_OTLP_ENDPOINT (e.g. http://collector:4318) exports spans over OTLP/HTTP."
    )]
    Serve(Box<commands::serve::ServeArgs>),
    /// Run the demo inventory, payment and shipping services on their own.
    DemoServices(commands::demo::DemoArgs),
    /// Read models: `rebuild` replays the event log into fresh ones.
    Projections {
        #[command(subcommand)]
        action: ProjectionsAction,
    },
    /// Print the embedded store's events as JSON lines, their data decoded
    /// (a whole stream, or the log after a position); safe beside a running server.
    Events(commands::events::EventsArgs),
    /// Archives of removed instances: `read FILE` prints them as JSON lines.
    Archive {
        #[command(subcommand)]
        action: ArchiveAction,
    },
    /// Measure the order-saga workload: throughput, latency, memory (one JSON line).
    Bench(commands::bench::BenchArgs),
    /// The template sandbox: evaluates jq expressions sent by a server on stdin.
    #[command(hide = true)]
    Sandbox,
}

#[derive(Subcommand)]
enum ProjectionsAction {
    /// Empty the read models and replay the whole event log into them (stop the server first).
    Rebuild(commands::projections::RebuildArgs),
}

#[derive(Subcommand)]
enum ArchiveAction {
    /// Print the instances in an archive file (written by `serve --archive-dir`), one JSON line each.
    Read(commands::archive::ReadArgs),
}

#[derive(Clone, Copy, ValueEnum)]
pub enum ReportFormat {
    Human,
    Json,
}

#[derive(Clone, Copy, ValueEnum)]
pub enum SpecFormat {
    Json,
    Yaml,
}

#[derive(Clone, Copy, ValueEnum)]
pub enum GraphFormat {
    Dot,
    Mermaid,
    Json,
}

/// The command line, with `--help` naming each option's environment
/// variable but never showing its value (unset ones showed as `NAME=`, and
/// set ones may be secrets).
fn parse_cli() -> Cli {
    use clap::{CommandFactory, FromArgMatches};
    fn hide_env_values(cmd: clap::Command) -> clap::Command {
        cmd.mut_args(|a| a.hide_env_values(true))
            .mut_subcommands(hide_env_values)
    }
    let matches = hide_env_values(Cli::command()).get_matches();
    Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit())
}

fn main() -> ExitCode {
    alloc::purge_freed_memory_at_once();
    let cli = parse_cli();
    let result = match cli.command {
        Command::Validate { files, format } => commands::validate::run(&files, format),
        Command::Graph { file, format } => commands::graph::run(&file, format),
        Command::Test { paths, format } => commands::test::run(&paths, format),
        Command::Schema { tests } => commands::schema::run(tests),
        Command::Openapi { format } => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(anyhow::Error::from)
            .and_then(|r| r.block_on(commands::openapi::run(format)))
            .map(|()| ExitCode::SUCCESS),
        Command::Serve(args) => serve(commands::serve::run(*args)),
        Command::DemoServices(args) => serve(commands::demo::run(args)),
        Command::Bench(args) => serve(commands::bench::run(args)),
        Command::Sandbox => sagaflow_engine::dsl::sandbox::process::serve(Default::default())
            .map(|()| ExitCode::SUCCESS)
            .map_err(anyhow::Error::from),
        Command::Projections {
            action: ProjectionsAction::Rebuild(args),
        } => serve(commands::projections::rebuild(args)),
        Command::Events(args) => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(anyhow::Error::from)
            .and_then(|r| r.block_on(commands::events::run(args))),
        Command::Archive {
            action: ArchiveAction::Read(args),
        } => commands::archive::read(&args),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

/// Runs a long-lived command on a tokio runtime, with logs on stderr
/// (`SAGAFLOW_LOG` filters them, `SAGAFLOW_LOG_FORMAT=json` for JSON lines)
/// and, with `SAGAFLOW_OTLP_ENDPOINT`, spans exported over OTLP/HTTP.
fn serve(job: impl std::future::Future<Output = anyhow::Result<()>>) -> anyhow::Result<ExitCode> {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    use tracing_subscriber::Layer;

    let filter = tracing_subscriber::EnvFilter::try_from_env("SAGAFLOW_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    let fmt = if std::env::var("SAGAFLOW_LOG_FORMAT").is_ok_and(|f| f == "json") {
        fmt.json().boxed()
    } else {
        fmt.boxed()
    };
    let otel = match std::env::var("SAGAFLOW_OTLP_ENDPOINT") {
        Ok(endpoint) if !endpoint.is_empty() => Some(otel::provider(&endpoint)?),
        _ => None,
    };
    let otel_layer = otel.as_ref().map(otel::layer);
    tracing_subscriber::registry()
        .with(filter)
        .with(fmt)
        .with(otel_layer)
        .init();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let result = runtime.block_on(job);
    if let Some(p) = otel {
        // send what is still buffered
        let _ = p.shutdown();
    }
    result?;
    Ok(ExitCode::SUCCESS)
}

/// OpenTelemetry: the process's spans (HTTP steps' attempts with instance,
/// step and attempt) exported to an OTLP/HTTP collector, in batches.
mod otel {
    use opentelemetry::trace::TracerProvider as _;
    use opentelemetry_otlp::{Protocol, WithExportConfig};
    use opentelemetry_sdk::trace::SdkTracerProvider;

    pub fn provider(endpoint: &str) -> anyhow::Result<SdkTracerProvider> {
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_protocol(Protocol::HttpBinary)
            .with_endpoint(format!("{}/v1/traces", endpoint.trim_end_matches('/')))
            .build()?;
        Ok(SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_resource(
                opentelemetry_sdk::Resource::builder()
                    .with_service_name("sagaflow")
                    .build(),
            )
            .build())
    }

    pub fn layer<S>(provider: &SdkTracerProvider) -> impl tracing_subscriber::Layer<S>
    where
        S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
    {
        tracing_opentelemetry::layer().with_tracer(provider.tracer("sagaflow"))
    }
}
