//! `sagaflow bench`: the order-saga workload of the peer comparison
//! (reserve, pay, ship; every tenth order declined at payment and
//! compensated), driven over HTTP. Prints one JSON line, last.

use std::io::Write;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde_json::{json, Value};

#[derive(Debug, clap::Args)]
pub struct BenchArgs {
    /// A running server to measure; without it, bench starts its own on a temporary data directory.
    #[arg(long)]
    pub url: Option<String>,
    /// Sagas in the throughput phase.
    #[arg(short = 'n', long, default_value_t = 2000)]
    pub n: usize,
    /// Concurrent clients in the throughput phase.
    #[arg(short = 'c', long, default_value_t = 64)]
    pub c: usize,
    /// Sagas run one at a time for the serial latency.
    #[arg(long, default_value_t = 50)]
    pub serial: usize,
    /// Sagas run first and not measured.
    #[arg(long, default_value_t = 20)]
    pub warmup: usize,
    /// A client (or admin) token for `--url`; bench sets its own server's.
    #[arg(long, env = "SAGAFLOW_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// With `--url`: the server's process id on this machine, to report its
    /// CPU time per saga (bench measures its own server without it).
    #[arg(long)]
    pub server_pid: Option<u32>,
    /// With `--url`: the process id of the services the saga's steps call
    /// (`sagaflow demo-services`), to report their CPU time and memory apart.
    #[arg(long)]
    pub demo_pid: Option<u32>,
    /// Serve the demo services from the server bench starts (`serve` with
    /// its demo on), so its CPU and memory figures include theirs. Without
    /// it they run in a process of their own, as a deployment's services
    /// would, and are reported apart.
    #[arg(long)]
    pub demo_in_server: bool,
    /// First fill the store with this many finished sagas (at concurrency
    /// C, not measured), so the figures are those of a store that size.
    #[arg(long, default_value_t = 0)]
    pub fill: usize,
    /// Times each listing is asked for, after the throughput phase.
    #[arg(long, default_value_t = 20)]
    pub listings: usize,
    /// Give up when no saga has ended for this long (a server that takes
    /// connections but no longer answers), instead of waiting out every
    /// request's own timeout.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    pub stall_timeout: Duration,
}

/// What bench started itself: the server, the demo services unless they
/// are served by the server, and the temporary directory.
struct Own {
    server: Child,
    demo: Option<Child>,
    dir: std::path::PathBuf,
    /// `serve`'s arguments after the data directory.
    serve_args: Vec<String>,
}

/// Stopping what bench started and removing its directory, at the end of a
/// run and when a run fails half-way (an error drops it too).
impl Drop for Own {
    fn drop(&mut self) {
        for child in [Some(&mut self.server), self.demo.as_mut()]
            .into_iter()
            .flatten()
        {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// One saga's result.
struct Outcome {
    latency: Duration,
    status: String,
}

pub async fn run(args: BenchArgs) -> anyhow::Result<()> {
    let mut own = None;
    let mut token = args.token.clone();
    let url = match &args.url {
        Some(u) => u.trim_end_matches('/').to_string(),
        None => {
            let t = format!("bench-{}", uuid::Uuid::new_v4().simple());
            let (started, url) = start(&t, args.demo_in_server)?;
            own = Some(started);
            token = Some(t);
            url
        }
    };
    let mut headers = reqwest::header::HeaderMap::new();
    if let Some(t) = &token {
        headers.insert(
            reqwest::header::AUTHORIZATION,
            format!("Bearer {t}").parse()?,
        );
    }
    let client = reqwest::Client::builder()
        .default_headers(headers)
        .pool_max_idle_per_host(args.c.max(1) * 2)
        .timeout(Duration::from_secs(120))
        .build()?;
    let health: Value = client
        .get(format!("{url}/health"))
        .timeout(args.stall_timeout)
        .send()
        .await
        .context("the server does not answer /health")?
        .json()
        .await?;
    let order = client
        .get(format!("{url}/workflows/order"))
        .timeout(args.stall_timeout)
        .send()
        .await?;
    if order.status() == reqwest::StatusCode::NOT_FOUND {
        bail!(
            "the server at {url} has no `order` workflow: run bench from the repository's folder \
             (its server loads ./workflows), or publish workflows/order.yaml to it"
        );
    }
    order
        .error_for_status()
        .context("the server refused to show the `order` workflow")?;
    let server_pid = args
        .server_pid
        .or_else(|| own.as_ref().map(|o| o.server.id()));
    let demo_pid = args
        .demo_pid
        .or_else(|| own.as_ref().and_then(|o| o.demo.as_ref()).map(Child::id));
    let run_tag = format!(
        "{:x}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_millis()
    );

    eprintln!("warm-up: {} sagas", args.warmup);
    let stall = args.stall_timeout;
    for i in 0..args.warmup {
        within(stall, &url, one_saga(&client, &url, &run_tag, "w", i + 1)).await?;
    }
    eprintln!("serial: {} sagas one at a time", args.serial);
    let mut serial = Vec::with_capacity(args.serial);
    for i in 0..args.serial {
        let one = within(stall, &url, one_saga(&client, &url, &run_tag, "s", i + 1)).await?;
        serial.push(one.latency);
    }

    if args.fill > 0 {
        eprintln!("fill: {} sagas, {} at a time", args.fill, args.c);
        let (filled, _) = drive(&client, &url, &run_tag, "f", args.fill, args.c, stall).await?;
        let failed = filled.iter().filter(|r| r.status == "error").count();
        if failed > 0 {
            eprintln!("fill: {failed} sagas did not end well");
        }
    }

    eprintln!("throughput: {} sagas, {} at a time", args.n, args.c);
    let cpu_before = server_pid.and_then(cpu_seconds);
    let demo_cpu_before = demo_pid.and_then(cpu_seconds);
    // a process's CPU per saga from the phase's start until now, in µs
    let per_saga = |pid: Option<u32>, before: Option<f64>| {
        before
            .zip(pid.and_then(cpu_seconds))
            .map(|(before, after)| round((after - before) * 1e6 / args.n.max(1) as f64, 1))
    };
    let cpu_per_saga = || per_saga(server_pid, cpu_before);
    let (results, wall) = drive(&client, &url, &run_tag, "t", args.n, args.c, stall).await?;
    let server_cpu = cpu_per_saga();
    let demo_cpu = per_saga(demo_pid, demo_cpu_before);
    let lag = read_model_lag(&client, &url).await;
    // The read models' share of the phase may be left for later; CPU counted
    // until they hold it too, so a build that defers work does not look cheaper.
    let catch_up = match lag {
        Some(_) => caught_up(&client, &url).await,
        None => None,
    };
    let server_cpu_caught_up = catch_up.and_then(|_| cpu_per_saga());

    eprintln!("listings: each {} times", args.listings);
    let listings = listing_latencies(&client, &url, args.listings).await?;
    let stored = args.warmup + args.serial + args.fill + args.n;
    let bytes_per_saga = own
        .as_ref()
        .map(|o| dir_bytes(&o.dir) as f64 / stored.max(1) as f64);

    let rss_mib = server_pid.and_then(rss_mib);
    let demo_rss_mib = demo_pid.and_then(self::rss_mib);
    let mut latencies: Vec<Duration> = results
        .iter()
        .filter(|r| r.status != "error")
        .map(|r| r.latency)
        .collect();
    latencies.sort();
    serial.sort();
    let count = |s: &str| results.iter().filter(|r| r.status == s).count();
    let (completed, compensated) = (count("completed"), count("compensated"));
    let line = json!({
        "peer": "sagaflow",
        "n": args.n,
        "c": args.c,
        "sagas_per_s": round(args.n as f64 / wall.as_secs_f64(), 1),
        "p50_ms": ms(percentile(&latencies, 50.0)),
        "p99_ms": ms(percentile(&latencies, 99.0)),
        "serial_p50_ms": ms(percentile(&serial, 50.0)),
        "completed": completed,
        "compensated": compensated,
        "other": args.n - completed - compensated,
        "rss_mib": rss_mib.map(|r| round(r, 1)),
        "stored_sagas": stored,
        "bytes_per_saga": bytes_per_saga.map(|b| round(b, 0)),
        "listing_ms": listings,
        // user + system time of the server's process during the throughput phase
        "server_cpu_us_per_saga": server_cpu,
        "durability": health["durability"],
        // events stored that the read models had not applied when the throughput phase ended
        "read_model_lag_events": lag,
        // how long after the throughput phase the read models held all of it, and the
        // server's CPU per saga from the phase's start until then
        "read_model_catch_up_s": catch_up.map(|d| round(d.as_secs_f64(), 2)),
        "server_cpu_us_per_saga_caught_up": server_cpu_caught_up,
        // the services the steps call, when they run in a process of their own
        // (null: served by the server, and counted in its figures)
        "demo_cpu_us_per_saga": demo_cpu,
        "demo_rss_mib": demo_rss_mib.map(|r| round(r, 1)),
    });
    // the time a restart takes at this size, once everything is measured
    let mut restart_s = None;
    if let Some(o) = own.as_mut() {
        let token = token.as_deref().unwrap_or_default();
        restart_s = Some(round(restart(o, token).await?, 2));
    }
    let mut line = line;
    line["restart_s"] = restart_s.into();
    drop(own);
    println!("{line}");
    Ok(())
}

/// Runs `n` order sagas, `c` at a time; their outcomes and the wall time.
/// Fails at the first connection the server refuses, and when no saga has
/// ended for `stall`.
async fn drive(
    client: &reqwest::Client,
    url: &str,
    tag: &str,
    phase: &'static str,
    n: usize,
    c: usize,
    stall: Duration,
) -> anyhow::Result<(Vec<Outcome>, Duration)> {
    let next = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(AtomicUsize::new(0));
    // the first connection the server refused: the phase stops there
    let unreachable = Arc::new(std::sync::Mutex::new(None::<String>));
    let started = Instant::now();
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..c.max(1) {
        let (client, url, tag, next, done, unreachable) = (
            client.clone(),
            url.to_string(),
            tag.to_string(),
            next.clone(),
            done.clone(),
            unreachable.clone(),
        );
        workers.spawn(async move {
            let mut out = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n {
                    return out;
                }
                let r = match one_saga(&client, &url, &tag, phase, i + 1).await {
                    Ok(r) => r,
                    Err(e) if refused(&e) => {
                        // no saga after this one can start: the others stop too
                        next.store(n, Ordering::Relaxed);
                        let mut first = unreachable.lock().unwrap_or_else(|p| p.into_inner());
                        first.get_or_insert_with(|| format!("{e:#}"));
                        return out;
                    }
                    Err(_) => Outcome {
                        latency: Duration::ZERO,
                        status: "error".into(),
                    },
                };
                done.fetch_add(1, Ordering::Relaxed);
                out.push(r);
            }
        });
    }
    let progress = tokio::spawn(progress_bar(done.clone(), n));
    let mut results = Vec::with_capacity(n);
    // the last time a saga ended, and how many had then
    let mut last = (Instant::now(), 0);
    let look = (stall / 4).clamp(Duration::from_millis(10), Duration::from_secs(1));
    loop {
        tokio::select! {
            w = workers.join_next() => match w {
                Some(w) => results.extend(w?),
                None => break,
            },
            () = tokio::time::sleep(look) => {
                let now = done.load(Ordering::Relaxed);
                if now != last.1 {
                    last = (Instant::now(), now);
                } else if last.0.elapsed() >= stall {
                    workers.abort_all();
                    progress.abort();
                    eprintln!();
                    bail!(
                        "the server at {url} stopped answering: no saga ended for {} after {now} of {n} sagas",
                        humantime::format_duration(stall)
                    );
                }
            }
        }
    }
    let wall = started.elapsed();
    progress.abort();
    eprintln!();
    if let Some(e) = unreachable.lock().unwrap_or_else(|p| p.into_inner()).take() {
        bail!(
            "the server at {url} stopped taking connections after {} of {n} sagas: {e}",
            results.len()
        );
    }
    Ok((results, wall))
}

/// One saga of the warm-up or serial phase, failing as `drive` does when it
/// has not ended within `stall`.
async fn within(
    stall: Duration,
    url: &str,
    saga: impl std::future::Future<Output = anyhow::Result<Outcome>>,
) -> anyhow::Result<Outcome> {
    tokio::time::timeout(stall, saga).await.map_err(|_| {
        anyhow::anyhow!(
            "the server at {url} stopped answering: a saga did not end within {}",
            humantime::format_duration(stall)
        )
    })?
}

/// p50 and p99 (ms) of each listing and search of the API, asked `times`
/// times one after the other: a status with no match, a status with many,
/// a time range, the second page through a cursor, a customer's orders,
/// and a search by a declared input field.
async fn listing_latencies(
    client: &reqwest::Client,
    url: &str,
    times: usize,
) -> anyhow::Result<Value> {
    let now = humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string();
    let hour_ago =
        humantime::format_rfc3339_seconds(std::time::SystemTime::now() - Duration::from_secs(3600))
            .to_string();
    let first: Value = client
        .get(format!("{url}/instances?workflow=order&limit=100"))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    let cursor = first["next_cursor"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let queries = [
        (
            "status_no_match",
            "/instances?workflow=order&status=failed&limit=100".to_string(),
        ),
        (
            "status_many",
            "/instances?workflow=order&status=completed&limit=100".to_string(),
        ),
        (
            "time_range",
            format!("/instances?started_from={hour_ago}&started_until={now}&limit=100"),
        ),
        (
            "cursor_page",
            format!("/instances?workflow=order&limit=100&cursor={cursor}"),
        ),
        (
            "customer_orders",
            "/customers/c-42/orders?limit=50".to_string(),
        ),
        (
            "input_field",
            "/instances?workflow=order&input_field=customer_id=c-42&limit=50".to_string(),
        ),
    ];
    let mut out = serde_json::Map::new();
    for (name, path) in queries {
        let mut took = Vec::with_capacity(times);
        for _ in 0..times.max(1) {
            let t = Instant::now();
            client
                .get(format!("{url}{path}"))
                .send()
                .await?
                .error_for_status()
                .with_context(|| format!("listing {path}"))?
                .bytes()
                .await?;
            took.push(t.elapsed());
        }
        took.sort();
        out.insert(
            name.into(),
            json!({"p50": ms(percentile(&took, 50.0)), "p99": ms(percentile(&took, 99.0))}),
        );
    }
    Ok(Value::Object(out))
}

/// How long until the read models have applied every stored event (polled
/// every 20 ms); `None` if they have not within five minutes or the lag cannot
/// be read.
async fn caught_up(client: &reqwest::Client, url: &str) -> Option<Duration> {
    let began = std::time::Instant::now();
    while began.elapsed() < Duration::from_secs(300) {
        if read_model_lag(client, url).await? == 0 {
            return Some(began.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    None
}

/// `sagaflow_projection_lag_events` from `/metrics`; `None` when the token
/// may not read metrics, or the server keeps none.
async fn read_model_lag(client: &reqwest::Client, url: &str) -> Option<u64> {
    let text = client
        .get(format!("{url}/metrics"))
        .send()
        .await
        .ok()?
        .error_for_status()
        .ok()?
        .text()
        .await
        .ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("sagaflow_projection_lag_events "))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .map(|v| v as u64)
}

/// The bytes of the files under `dir` (the store, read models, WAL).
fn dir_bytes(dir: &std::path::Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .filter_map(Result::ok)
        .map(|e| match e.file_type() {
            Ok(t) if t.is_dir() => dir_bytes(&e.path()),
            Ok(_) => e.metadata().map(|m| m.len()).unwrap_or(0),
            Err(_) => 0,
        })
        .sum()
}

/// Starts one order saga and waits for it to end: one request that answers
/// with the saga's outcome (`?wait=`), as a client of a synchronous start
/// would, polling `GET /instances/{id}?wait=` only if that wait ran out.
/// Whether a saga's request failed because the server refused the
/// connection (it is gone, or not listening): a phase cannot go on, where a
/// saga that failed or an answer that timed out is one outcome among many.
fn refused(e: &anyhow::Error) -> bool {
    e.downcast_ref::<reqwest::Error>()
        .is_some_and(reqwest::Error::is_connect)
}

async fn one_saga(
    client: &reqwest::Client,
    url: &str,
    tag: &str,
    phase: &str,
    n: usize,
) -> anyhow::Result<Outcome> {
    let amount = if n.is_multiple_of(10) { 5000.0 } else { 25.0 };
    let order = json!({"order_id": format!("bench-{tag}-{phase}-{n}"), "customer_id": format!("c-{}", n % 97), "items": [{"sku": "widget", "qty": 1 + n % 3}], "amount": amount});
    let t0 = Instant::now();
    let started: Value = client
        .post(format!("{url}/workflows/order/instances?wait=60s"))
        .header("Idempotency-Key", format!("bench-{tag}-{phase}-{n}"))
        .json(&order)
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    let id = started["id"]
        .as_str()
        .context("no id in the start answer")?;
    let mut status = started["status"].as_str().unwrap_or_default().to_string();
    let deadline = t0 + Duration::from_secs(120);
    while !matches!(
        status.as_str(),
        "completed" | "compensated" | "failed" | "cancelled"
    ) {
        if Instant::now() > deadline {
            bail!("saga {id} did not end within 120 s");
        }
        let v: Value = client
            .get(format!("{url}/instances/{id}?wait=60s"))
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        status = v["status"].as_str().unwrap_or_default().to_string();
    }
    Ok(Outcome {
        latency: t0.elapsed(),
        status,
    })
}

async fn progress_bar(done: Arc<AtomicUsize>, total: usize) {
    let started = Instant::now();
    loop {
        let d = done.load(Ordering::Relaxed);
        let filled = (d * 30).checked_div(total).unwrap_or(30).min(30);
        let rate = d as f64 / started.elapsed().as_secs_f64().max(0.001);
        eprint!(
            "\r[{}{}] {d}/{total}  {rate:.0} sagas/s ",
            "#".repeat(filled),
            " ".repeat(30 - filled)
        );
        let _ = std::io::stderr().flush();
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Starts the demo services on port 0 unless the server is to serve them,
/// then `sagaflow serve` on port 0 with a temporary data directory calling
/// them; returns what it started and the server's URL.
fn start(admin_token: &str, demo_in_server: bool) -> anyhow::Result<(Own, String)> {
    let workflows = std::env::current_dir()?.join("workflows");
    if !workflows.join("order.yaml").exists() {
        bail!(
            "{} is missing: run bench from the repository's folder, or give --url of a server with the `order` workflow",
            workflows.join("order.yaml").display()
        );
    }
    let dir = std::env::temp_dir().join(format!("sagaflow-bench-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let mut serve_args = vec!["--workflows".to_string(), workflows.display().to_string()];
    let demo = if demo_in_server {
        None
    } else {
        match spawn(&["demo-services", "--listen", "127.0.0.1:0"], &[]) {
            Ok((child, url)) => {
                serve_args.push("--no-demo".into());
                serve_args.push("--workflow-env".into());
                serve_args.push(format!("demo_url={url}"));
                Some(child)
            }
            Err(e) => {
                let _ = std::fs::remove_dir_all(&dir);
                return Err(e);
            }
        }
    };
    match spawn_server(&dir, &serve_args, admin_token) {
        Ok((server, url)) => Ok((
            Own {
                server,
                demo,
                dir,
                serve_args,
            },
            url,
        )),
        Err(e) => {
            if let Some(mut d) = demo {
                let _ = d.kill();
                let _ = d.wait();
            }
            let _ = std::fs::remove_dir_all(&dir);
            Err(e)
        }
    }
}

/// Starts `sagaflow serve` on port 0 on the data directory `dir/data` with
/// `args`; returns it once it listens, and its URL.
fn spawn_server(
    dir: &std::path::Path,
    args: &[String],
    admin_token: &str,
) -> anyhow::Result<(Child, String)> {
    let data = dir.join("data").display().to_string();
    let mut all = vec!["serve", "--listen", "127.0.0.1:0", "--data-dir", &data];
    all.extend(args.iter().map(String::as_str));
    spawn(
        &all,
        &[
            ("SAGAFLOW_LOG", "warn"),
            ("SAGAFLOW_ADMIN_TOKEN", admin_token),
        ],
    )
}

/// Runs this binary with `args` and `env`, ending with bench however bench
/// ends; returns it once it prints the URL it listens on, and that URL.
fn spawn(args: &[&str], env: &[(&str, &str)]) -> anyhow::Result<(Child, String)> {
    use std::io::BufRead;
    let mut command = Command::new(std::env::current_exe()?);
    #[cfg(target_os = "linux")]
    {
        use std::os::unix::process::CommandExt;
        // SAFETY: prctl is async-signal-safe, and the closure touches no memory of the parent.
        unsafe {
            command.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
                Ok(())
            });
        }
    }
    let mut child = command
        .args(args)
        .envs(env.iter().copied())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .with_context(|| format!("cannot start sagaflow {}", args[0]))?;
    let stdout = child.stdout.take().context("no stdout")?;
    let mut lines = std::io::BufReader::new(stdout).lines();
    let url = loop {
        match lines.next() {
            Some(Ok(line)) => {
                if let Some(u) = line.split_whitespace().find(|w| w.starts_with("http://")) {
                    break u.to_string();
                }
            }
            _ => {
                let _ = child.kill();
                bail!("sagaflow {} stopped before it listened", args[0]);
            }
        }
    };
    // keep draining stdout so the process never blocks on it
    std::thread::spawn(move || lines.for_each(drop));
    Ok((child, url))
}

/// Stops the server gracefully (SIGTERM, as an operator would) and starts it
/// again on the same data directory; returns the new process and the seconds
/// from the new start until it answered `/ready`.
async fn restart(own: &mut Own, admin_token: &str) -> anyhow::Result<f64> {
    // SAFETY: kill sends a signal to a process id; no memory is involved.
    unsafe { libc::kill(own.server.id() as libc::pid_t, libc::SIGTERM) };
    let _ = own.server.wait();
    let t = Instant::now();
    let (child, url) = spawn_server(&own.dir, &own.serve_args, admin_token)?;
    own.server = child;
    let ready = format!("{url}/ready");
    while !reqwest::get(&ready)
        .await
        .is_ok_and(|r| r.status().is_success())
    {
        if t.elapsed() > Duration::from_secs(600) {
            bail!("the restarted server was not ready within 600 s");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Ok(t.elapsed().as_secs_f64())
}

/// The CPU time (user and system, all threads) a process has used, from
/// `/proc/PID/stat`, in seconds (at the kernel's clock-tick resolution).
fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    cpu_from_stat(&stat, clock_ticks())
}

fn clock_ticks() -> f64 {
    // SAFETY: sysconf reads a constant of the system.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks > 0 {
        ticks as f64
    } else {
        100.0
    }
}

/// utime and stime (fields 14 and 15) of a `/proc/PID/stat` line; the
/// command name (field 2) may hold spaces and parentheses, so fields are
/// counted after its closing parenthesis.
fn cpu_from_stat(stat: &str, ticks_per_s: f64) -> Option<f64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace().skip(11);
    let user: f64 = fields.next()?.parse().ok()?;
    let system: f64 = fields.next()?.parse().ok()?;
    Some((user + system) / ticks_per_s)
}

fn rss_mib(pid: u32) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kb: f64 = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    Some(kb / 1024.0)
}

/// Nearest-rank percentile.
fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn ms(d: Duration) -> f64 {
    round(d.as_secs_f64() * 1000.0, 2)
}

fn round(x: f64, places: i32) -> f64 {
    let f = 10f64.powi(places);
    (x * f).round() / f
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_time_is_read_after_the_command_name() {
        let line = "4242 (sagaflow (x) y) S 1 4242 4242 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 9 0";
        assert_eq!(cpu_from_stat(line, 100.0), Some(3.0));
        assert_eq!(cpu_from_stat("garbage", 100.0), None);
        // this process has used some CPU
        assert!(cpu_seconds(std::process::id()).is_some());
    }

    #[test]
    fn nearest_rank_percentiles() {
        let v: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        assert_eq!(percentile(&v, 50.0), Duration::from_millis(50));
        assert_eq!(percentile(&v, 99.0), Duration::from_millis(99));
        assert_eq!(percentile(&v[..1], 99.0), Duration::from_millis(1));
        assert_eq!(percentile(&[], 50.0), Duration::ZERO);
    }
}
