//! `sagaflow serve`: the engine and its HTTP API on the embedded SQLite store.

use std::collections::BTreeMap;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use sagaflow_api::auth::{hash, Role, Tokens};
use sagaflow_api::demo::DemoConfig;
use sagaflow_api::ApiConfig;
use sagaflow_engine::projection::Projections;
use sagaflow_engine::runtime::cluster::PARTITIONS;
use sagaflow_engine::runtime::{
    ClusterConfig, RetentionConfig, Runtime, RuntimeConfig, RuntimeError,
};
use sagaflow_engine::saga::SystemClock;
use sagaflow_engine::secrets::Secrets;
use sagaflow_engine::store::sqlite::SqliteStore;
use sagaflow_engine::store::EventStore;

/// Everything `serve` needs, resolved from flags and `SAGAFLOW_*` variables.
/// Where the events and the read models live (`serve` and `projections rebuild`).
#[derive(Debug, clap::Args)]
pub struct StoreArgs {
    /// Where the SQLite files (events and read models), the lock and the admin token's hash live.
    #[arg(long, env = "SAGAFLOW_DATA_DIR", default_value = "sagaflow-data")]
    pub data_dir: PathBuf,
    /// The event store: `sqlite` (files in the data directory), a PostgreSQL URL
    /// (`postgres://user:password@host:5432/db`, also holding the read models), or an
    /// EventStoreDB connection string (`esdb://host:2113?tls=false`).
    #[arg(
        long,
        env = "SAGAFLOW_STORE",
        default_value = "sqlite",
        hide_env_values = true
    )]
    pub store: String,
    /// Where the read models live when the store is EventStoreDB: `sqlite` (the data
    /// directory) or a PostgreSQL URL.
    #[arg(
        long,
        env = "SAGAFLOW_READ_MODELS",
        default_value = "sqlite",
        hide_env_values = true
    )]
    pub read_models: String,
}

#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    /// Address to listen on (port 0 picks a free port).
    #[arg(long, env = "SAGAFLOW_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    #[command(flatten)]
    pub stores: StoreArgs,
    /// Workflow files (*.yaml) published at start; a missing folder is skipped.
    #[arg(long, env = "SAGAFLOW_WORKFLOWS", default_value = "workflows")]
    pub workflows: PathBuf,
    /// Override a workflow `env` value, e.g. `api_key=...` (repeatable). These values are secrets: templates may send them to a service, and they are masked as *** everywhere else.
    #[arg(long = "workflow-env", env = "SAGAFLOW_WORKFLOW_ENV", value_delimiter = ',', value_parser = parse_pair, hide_env_values = true)]
    pub workflow_env: Vec<(String, String)>,
    /// A file of `NAME=VALUE` lines (blank lines and `#` comments skipped) read like --workflow-env.
    #[arg(long = "workflow-env-file", env = "SAGAFLOW_WORKFLOW_ENV_FILE")]
    pub workflow_env_file: Option<PathBuf>,
    /// Do not serve the demo services under /demo.
    #[arg(long, env = "SAGAFLOW_NO_DEMO", value_parser = clap::builder::BoolishValueParser::new())]
    pub no_demo: bool,
    /// The demo payment service declines amounts above this.
    #[arg(long, env = "SAGAFLOW_DEMO_PAYMENT_LIMIT", default_value_t = 1000.0)]
    pub demo_payment_limit: f64,
    /// How many idempotency keys (and orders) the demo services remember; the oldest go first.
    #[arg(long, env = "SAGAFLOW_DEMO_LEDGER_SIZE", default_value_t = sagaflow_api::demo::LEDGER_SIZE)]
    pub demo_ledger_size: usize,
    /// Largest request body accepted, in bytes.
    #[arg(long, env = "SAGAFLOW_BODY_LIMIT", default_value_t = 1024 * 1024)]
    pub body_limit: usize,
    /// Longest success an `http` step keeps as its output, in bytes; a
    /// longer one is not read to its end, and the step retries (its effect
    /// may have happened) and is compensated when its retries run out.
    #[arg(long, env = "SAGAFLOW_STEP_ANSWER_LIMIT", default_value_t = sagaflow_engine::runtime::http::ANSWER_LIMIT)]
    pub step_answer_limit: usize,
    /// Connections served at once; more wait to be accepted.
    #[arg(long, env = "SAGAFLOW_MAX_CONNECTIONS", default_value_t = 1024)]
    pub max_connections: usize,
    /// Time a client has, from connecting, to send its first request's headers.
    #[arg(long, env = "SAGAFLOW_HEADER_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub header_timeout: Duration,
    /// The admin token. Without it, one is generated on the first start, printed once, and its hash kept in the data directory.
    #[arg(long, env = "SAGAFLOW_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,
    /// More tokens as `ROLE:TOKEN` (roles: admin, operator, client, worker), or
    /// `worker@QUEUE+QUEUE:TOKEN` for a worker limited to those queues; comma-separated in the variable.
    #[arg(long = "token", env = "SAGAFLOW_TOKENS", value_delimiter = ',', hide_env_values = true, value_parser = parse_role_token)]
    pub tokens: Vec<ConfiguredToken>,
    /// With a shared store (PostgreSQL or EventStoreDB), how long a replica that
    /// stops renewing its lease keeps its partitions before the others take its
    /// instances over. Replicas renew every fifth of this.
    #[arg(long, env = "SAGAFLOW_LEASE_TTL", default_value = "10s", value_parser = humantime::parse_duration)]
    pub lease_ttl: Duration,
    /// With replicas: the URL the other replicas reach this one's API at (to
    /// relay a worker's heartbeat to the replica that handed out its task).
    /// Default: `http://` and the listening address, or the host name and port
    /// when listening on all interfaces.
    #[arg(long, env = "SAGAFLOW_ADVERTISE_URL")]
    pub advertise_url: Option<String>,
    /// Serve no Prometheus metrics at /metrics.
    #[arg(long, env = "SAGAFLOW_NO_METRICS", value_parser = clap::builder::BoolishValueParser::new())]
    pub no_metrics: bool,
    /// Remove instances that ended longer ago than this (e.g. `30d`, `12h`),
    /// from the event log and the read models, in the background; `off`
    /// keeps them for ever.
    #[arg(long, env = "SAGAFLOW_RETENTION", default_value = "30d", value_parser = parse_retention)]
    pub retention: Retention,
    /// How long a removed instance's Idempotency-Key stays refused (its
    /// tombstone). On EventStoreDB the refusal is for ever.
    #[arg(long, env = "SAGAFLOW_TOMBSTONE_WINDOW", default_value = "30d", value_parser = humantime::parse_duration)]
    pub tombstone_window: Duration,
    /// Archive removed instances first: one gzip JSON-lines file per day
    /// under this folder (`sagaflow archive read FILE` shows one).
    #[arg(long, env = "SAGAFLOW_ARCHIVE_DIR")]
    pub archive_dir: Option<PathBuf>,
}

/// How long ended instances are kept (`None`: for ever).
#[derive(Debug, Clone, Copy)]
pub struct Retention(pub Option<Duration>);

fn parse_retention(s: &str) -> Result<Retention, String> {
    if s.eq_ignore_ascii_case("off") {
        return Ok(Retention(None));
    }
    let age = humantime::parse_duration(s).map_err(|e| format!("{e} (or `off`)"))?;
    if age.is_zero() {
        return Err("a retention of zero would remove instances as they end; use `off` to keep them, or an age".into());
    }
    Ok(Retention(Some(age)))
}

/// A token from the command line or `SAGAFLOW_TOKENS`.
#[derive(Debug, Clone)]
pub struct ConfiguredToken {
    role: Role,
    queues: Option<Vec<String>>,
    token: String,
}

fn parse_role_token(s: &str) -> Result<ConfiguredToken, String> {
    let (who, token) = s
        .split_once(':')
        .ok_or_else(|| "expected ROLE:TOKEN or worker@QUEUE+QUEUE:TOKEN".to_string())?;
    if token.len() < 16 {
        return Err("a token has at least 16 characters".into());
    }
    let (role, queues) = match who.split_once('@') {
        Some((role, queues)) => {
            let queues: Vec<String> = queues.split('+').map(|q| q.trim().to_string()).collect();
            if queues.iter().any(String::is_empty) {
                return Err(format!("`{who}`: empty queue name"));
            }
            (role, Some(queues))
        }
        None => (who, None),
    };
    let role: Role = role.parse()?;
    if queues.is_some() && role != Role::Worker {
        return Err("only a worker token names queues".into());
    }
    Ok(ConfiguredToken {
        role,
        queues,
        token: token.to_string(),
    })
}

/// The accepted tokens, and what to tell the person starting the server about the admin token.
fn tokens(args: &ServeArgs) -> anyhow::Result<(Tokens, String)> {
    let mut entries: Vec<(String, Role, Option<Vec<String>>)> = args
        .tokens
        .iter()
        .map(|t| (hash(&t.token), t.role, t.queues.clone()))
        .collect();
    let file = args.stores.data_dir.join("admin-token.sha256");
    let note = if let Some(t) = &args.admin_token {
        if t.len() < 16 {
            bail!("SAGAFLOW_ADMIN_TOKEN must have at least 16 characters");
        }
        entries.push((hash(t), Role::Admin, None));
        "admin token: from SAGAFLOW_ADMIN_TOKEN".to_string()
    } else if let Ok(stored) = std::fs::read_to_string(&file) {
        entries.push((stored.trim().to_string(), Role::Admin, None));
        format!("admin token: the one printed on the first start (its hash is in {}; delete that file to get a new one)", file.display())
    } else {
        let token = sagaflow_api::auth::generate();
        write_private(&file, &hash(&token))?;
        entries.push((hash(&token), Role::Admin, None));
        format!("admin token: {token}   (shown once; send it as `Authorization: Bearer ...`)")
    };
    Ok((Tokens::from_hashes(entries), note))
}

/// Writes a file only its owner can read.
fn write_private(path: &Path, contents: &str) -> anyhow::Result<()> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut f = options
        .open(path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    f.write_all(contents.as_bytes())?;
    Ok(())
}

pub fn parse_pair(s: &str) -> Result<(String, String), String> {
    let (k, v) = s
        .split_once('=')
        .ok_or_else(|| format!("`{s}` is not NAME=VALUE"))?;
    Ok((k.trim().to_string(), v.trim().to_string()))
}

fn read_env_file(path: &Path) -> anyhow::Result<Vec<(String, String)>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the workflow env file {}", path.display()))?;
    text.lines()
        .enumerate()
        .map(|(i, l)| (i, l.trim()))
        .filter(|(_, l)| !l.is_empty() && !l.starts_with('#'))
        .map(|(i, l)| {
            parse_pair(l).map_err(|e| anyhow::anyhow!("{}:{}: {e}", path.display(), i + 1))
        })
        .collect()
}

/// Templates of published workflows run in child processes of this binary
/// (`sagaflow sandbox`): a memory and time limit, no environment.
fn install_sandbox() -> anyhow::Result<()> {
    use sagaflow_engine::dsl::sandbox::{self, process::ProcessPool, Budget};
    let exe =
        std::env::current_exe().context("cannot find this program for the template sandbox")?;
    let pool = ProcessPool::new(exe, vec!["sandbox".into()], Budget::default());
    pool.check().context("the template sandbox does not work")?;
    sandbox::install(Arc::new(pool));
    Ok(())
}

pub async fn run(args: ServeArgs) -> anyhow::Result<()> {
    std::fs::create_dir_all(&args.stores.data_dir).with_context(|| {
        format!(
            "cannot create the data directory {}",
            args.stores.data_dir.display()
        )
    })?;
    let _lock = lock_data_dir(&args.stores.data_dir)?;
    let (tokens, token_note) = tokens(&args)?;
    let listener = TcpListener::bind(args.listen)
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let addr = listener.local_addr()?;
    let url = format!("http://{addr}");

    install_sandbox()?;
    let (store, projections, shared) = open_stores(&args.stores).await?;
    let mut env: BTreeMap<String, String> = BTreeMap::new();
    if !args.no_demo {
        env.insert("demo_url".into(), format!("{url}/demo"));
    }
    let mut given = args.workflow_env.clone();
    if let Some(file) = &args.workflow_env_file {
        given.extend(read_env_file(file)?);
    }
    // what the server is given is secret; the workflows' own defaults are not
    let secrets = Secrets::new(
        given
            .iter()
            .map(|(_, v)| v.clone())
            .chain(args.admin_token.clone()),
    );
    env.extend(given);
    if shared && args.lease_ttl < Duration::from_millis(500) {
        bail!("--lease-ttl must be at least 500ms");
    }
    let config = RuntimeConfig {
        env,
        // On a shared store, replicas split the instances between them.
        cluster: shared.then(|| {
            let url = args
                .advertise_url
                .clone()
                .unwrap_or_else(|| advertised(addr));
            ClusterConfig::new(args.lease_ttl, Some(url.trim_end_matches('/').to_string()))
        }),
        secrets: Arc::new(secrets),
        retention: RetentionConfig {
            max_age: args.retention.0,
            tombstone_window: args.tombstone_window,
            archive_dir: args.archive_dir.clone(),
            ..RetentionConfig::default()
        },
        http_proxy: proxy_named(),
        step_answer_limit: args.step_answer_limit,
        ..RuntimeConfig::default()
    };
    // before the runtime records anything: the engine keeps the handles it
    // is first given (`telemetry`)
    let metrics = if args.no_metrics {
        None
    } else {
        Some(install_metrics()?)
    };
    let rt = Runtime::new(
        store.clone(),
        Some(projections.clone()),
        Arc::new(SystemClock),
        config,
    )
    .await?;
    let issued = tokens.load(store.as_ref()).await?;
    tracing::info!(issued, "tokens issued through the API loaded");
    // tokens issued or revoked through another replica
    let (learner, mut learnt) = (tokens.clone(), rt.stream_events());
    tokio::spawn(async move {
        loop {
            match learnt.recv().await {
                Ok(e) => learner.learn(&e),
                Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                    tracing::warn!(missed = n, "fell behind the log's token events");
                }
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
            }
        }
    });
    publish_folder(&rt, &args.workflows).await?;
    let resumed = rt.run_background().await?;

    let api = ApiConfig {
        body_limit: args.body_limit,
        demo: (!args.no_demo).then(|| DemoConfig {
            payment_limit: args.demo_payment_limit,
            ledger_size: args.demo_ledger_size,
            ..DemoConfig::default()
        }),
        public_url: url.clone(),
        tokens,
        metrics,
    };
    let app = sagaflow_api::app(rt.clone(), &api);
    println!("sagaflow listening on {url}");
    println!("  Console: {url}/ui    Swagger UI: {url}/docs    OpenAPI: {url}/openapi.json");
    println!(
        "  data: {}    events: {}    resumed sagas: {resumed}",
        args.stores.data_dir.display(),
        rt.store().durability()
    );
    if let Some((replica, held)) = rt.partitions_held() {
        println!(
            "  replica {replica}: holds {} of {PARTITIONS} partitions (shared store; lease {}s)",
            held.len(),
            args.lease_ttl.as_secs_f64()
        );
    }
    println!("  {token_note}");
    let limits = sagaflow_api::connections::ConnectionLimits {
        max_connections: args.max_connections,
        header_timeout: args.header_timeout,
    };
    sagaflow_api::serve(listener, app, shutdown_signal(), limits).await?;
    tracing::info!("shutting down");
    rt.shutdown(Duration::from_secs(10)).await;
    projections.close().await;
    rt.store().close().await;
    Ok(())
}

/// The event store and read models the arguments name, and whether the store
/// is one several servers may share (PostgreSQL, EventStoreDB).
pub async fn open_stores(
    args: &StoreArgs,
) -> anyhow::Result<(Arc<dyn EventStore>, Arc<Projections>, bool)> {
    let (data_dir, store_arg, read_models) = (&args.data_dir, &args.store, &args.read_models);
    if store_arg == "sqlite" {
        let db = data_dir.join("events.db");
        let store: Arc<dyn EventStore> = Arc::new(
            SqliteStore::open(&db)
                .await
                .with_context(|| format!("cannot open {}", db.display()))?,
        );
        let projections = Arc::new(Projections::open(&data_dir.join("readmodels.db")).await?);
        return Ok((store, projections, false));
    }
    if store_arg.starts_with("esdb://")
        || store_arg.starts_with("esdb+discover://")
        || store_arg.starts_with("kurrentdb://")
        || store_arg.starts_with("kurrentdb+discover://")
    {
        let store: Arc<dyn EventStore> = Arc::new(
            sagaflow_engine::store::esdb::EsdbStore::open(store_arg)
                .await
                .context("cannot open the EventStoreDB event store")?,
        );
        let projections = if read_models == "sqlite" {
            Projections::open(&data_dir.join("readmodels.db")).await?
        } else {
            Projections::open_postgres(read_models)
                .await
                .context("cannot open the PostgreSQL read models")?
        };
        return Ok((store, Arc::new(projections), true));
    }
    if !(store_arg.starts_with("postgres://") || store_arg.starts_with("postgresql://")) {
        bail!(
            "--store is `sqlite`, a postgres:// URL or an esdb:// connection string, not `{}`",
            redact(store_arg)
        );
    }
    let store: Arc<dyn EventStore> = Arc::new(
        sagaflow_engine::store::postgres::PostgresStore::open(store_arg)
            .await
            .context("cannot open the PostgreSQL event store")?,
    );
    let projections = Arc::new(
        Projections::open_postgres(store_arg)
            .await
            .context("cannot open the PostgreSQL read models")?,
    );
    Ok((store, projections, true))
}

/// Where other replicas reach a server listening on `addr`: the address itself,
/// or on all interfaces, the host name (a container's name in its network).
fn advertised(addr: SocketAddr) -> String {
    if !addr.ip().is_unspecified() {
        return format!("http://{addr}");
    }
    let host = std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".into());
    format!("http://{host}:{}", addr.port())
}

/// A database URL without its password, for messages.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => {
            let creds = &url[s + 3..at];
            let user = creds.split(':').next().unwrap_or_default();
            format!("{}{user}:***{}", &url[..s + 3], &url[at..])
        }
        _ => url.to_string(),
    }
}

/// Installs the Prometheus recorder that `/metrics` renders.
fn install_metrics() -> anyhow::Result<metrics_exporter_prometheus::PrometheusHandle> {
    let mut builder = metrics_exporter_prometheus::PrometheusBuilder::new();
    for (name, buckets) in sagaflow_engine::telemetry::HISTOGRAMS {
        builder = builder.set_buckets_for_metric(
            metrics_exporter_prometheus::Matcher::Full(name.to_string()),
            buckets,
        )?;
    }
    let handle = builder
        .install_recorder()
        .context("cannot install the metrics recorder")?;
    sagaflow_engine::telemetry::describe();
    // Histogram samples wait in buffers until upkeep folds them in; without a scrape they would pile up.
    let upkeep = handle.clone();
    tokio::spawn(async move {
        let mut every = tokio::time::interval(Duration::from_secs(5));
        loop {
            every.tick().await;
            upkeep.run_upkeep();
        }
    });
    Ok(handle)
}

/// Publishes every workflow file of a folder; invalid ones are reported and skipped.
async fn publish_folder(rt: &Runtime, dir: &Path) -> anyhow::Result<()> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        tracing::info!(folder = %dir.display(), "no workflow folder; none published at start");
        return Ok(());
    };
    let mut files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "yaml" || x == "yml"))
        .filter(|p| !sagaflow_engine::testing::is_test_file(p))
        .collect();
    files.sort();
    for file in files {
        let source = std::fs::read_to_string(&file)
            .with_context(|| format!("cannot read {}", file.display()))?;
        match rt.publish(&source).await {
            Ok((p, outcome)) => {
                tracing::info!(workflow = %p.machine.name, version = p.machine.version, ?outcome, file = %file.display(), "workflow ready")
            }
            Err(RuntimeError::InvalidWorkflow(diags)) => {
                eprintln!(
                    "{}: invalid, not published ({} problems; run `sagaflow validate {}`)",
                    file.display(),
                    diags.len(),
                    file.display()
                );
            }
            Err(e) => eprintln!("{}: not published: {e}", file.display()),
        }
    }
    Ok(())
}

/// One server per data directory: a second would interleave writes to the same file.
pub fn lock_data_dir(dir: &Path) -> anyhow::Result<std::fs::File> {
    let path = dir.join("sagaflow.lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .with_context(|| format!("cannot open {}", path.display()))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => {
            bail!("another sagaflow server is using {}", dir.display())
        }
        Err(std::fs::TryLockError::Error(e)) => {
            Err(e).with_context(|| format!("cannot lock {}", path.display()))
        }
    }
}

/// Completes on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = term => {}
    }
}

/// Whether the environment names an HTTP proxy for `http` steps to go through
/// (the variables reqwest reads; it also honours `NO_PROXY`).
fn proxy_named() -> bool {
    [
        "HTTP_PROXY",
        "http_proxy",
        "HTTPS_PROXY",
        "https_proxy",
        "ALL_PROXY",
        "all_proxy",
    ]
    .iter()
    .any(|name| std::env::var_os(name).is_some_and(|v| !v.is_empty()))
}
