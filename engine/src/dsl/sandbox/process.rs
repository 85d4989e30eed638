//! Expressions evaluated in child processes: a memory limit, a wall-clock
//! limit and an empty environment, so that nothing an expression does can
//! reach the server's secrets or stop it.
//!
//! The protocol is one JSON line each way over the child's stdin and stdout:
//! `{"expr": "...", "input": {...}}` in, `{"ok": value}` or `{"err": ...}` out.
//! A child that overruns the time is killed; one that dies (out of memory or
//! stack) is not reused. Either way only that evaluation fails.

use std::collections::HashMap;
use std::io::{self, BufRead, Read, Write};
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::time::Instant;

use serde_json::Value;

use super::{Budget, Compiled, EvalError, Evaluator, Exceeded};

/// Children kept waiting for work.
const IDLE_CHILDREN: usize = 8;
/// Compiled expressions a child keeps.
const CACHED_FILTERS: usize = 1024;
/// The stack of the child's evaluating thread: deep enough that the metered
/// depth limit, not the stack, stops recursion.
const CHILD_STACK: usize = 64 * 1024 * 1024;

#[derive(serde::Serialize)]
struct Request<'a> {
    expr: &'a str,
    input: &'a Value,
}

#[derive(serde::Deserialize)]
struct Incoming {
    expr: String,
    input: jaq_json::Val,
}

#[derive(serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
enum Answer {
    Ok(Value),
    Err(EvalError),
}

/// The evaluator the server installs: a pool of child processes running
/// `program args…`, which must call [`serve`].
pub struct ProcessPool {
    program: PathBuf,
    args: Vec<String>,
    budget: Budget,
    idle: Mutex<Vec<Worker>>,
    /// Evaluations running now, at most `max_children`: each child may use
    /// the whole memory budget, so their number is what bounds the total.
    running: Mutex<usize>,
    freed: Condvar,
    max_children: usize,
}

/// A place among the running evaluations, given back on drop.
struct Slot<'a>(&'a ProcessPool);

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        let mut n = self
            .0
            .running
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        *n -= 1;
        self.0.freed.notify_one();
    }
}

struct Worker {
    child: Child,
    stdin: ChildStdin,
    stdout: ChildStdout,
}

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

enum Reply {
    Line(Vec<u8>),
    Late,
    Died,
}

impl ProcessPool {
    /// At most one child per core (and at least two) evaluates at once.
    pub fn new(program: PathBuf, args: Vec<String>, budget: Budget) -> Self {
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        Self {
            program,
            args,
            budget,
            idle: Mutex::new(Vec::new()),
            running: Mutex::new(0),
            freed: Condvar::new(),
            max_children: cores.max(2),
        }
    }

    fn slot(&self) -> Slot<'_> {
        let mut n = self.running.lock().unwrap_or_else(PoisonError::into_inner);
        while *n >= self.max_children {
            n = self.freed.wait(n).unwrap_or_else(PoisonError::into_inner);
        }
        *n += 1;
        Slot(self)
    }

    /// Starts one child and evaluates `1` in it: the server refuses to start
    /// with a sandbox that does not work.
    pub fn check(&self) -> io::Result<()> {
        match self.evaluate("1 + 1", &Value::Null) {
            Ok(v) if v == 2 => Ok(()),
            other => Err(io::Error::other(format!(
                "the template sandbox did not answer: {other:?}"
            ))),
        }
    }

    fn spawn(&self) -> io::Result<Worker> {
        let mut child = Command::new(&self.program)
            .args(&self.args)
            .env_clear()
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()?;
        let (Some(stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
            let _ = child.kill();
            return Err(io::Error::other("the sandbox child has no pipes"));
        };
        Ok(Worker {
            child,
            stdin,
            stdout,
        })
    }

    fn evaluate(&self, expr: &str, input: &Value) -> Result<Value, EvalError> {
        let mut line = serde_json::to_vec(&Request { expr, input })
            .map_err(|e| EvalError::Failed(format!("the context is not JSON: {e}")))?;
        line.push(b'\n');
        let _slot = self.slot();
        let idle = self.idle.lock().ok().and_then(|mut idle| idle.pop());
        let mut worker = match idle {
            Some(w) => w,
            None => self.spawn().map_err(unavailable)?,
        };
        if worker.stdin.write_all(&line).is_err() {
            // an idle child that died since: one fresh try
            worker = self.spawn().map_err(unavailable)?;
            worker.stdin.write_all(&line).map_err(unavailable)?;
        }
        let deadline = Instant::now() + self.budget.time;
        match read_line(&mut worker.stdout, deadline) {
            Reply::Line(text) => {
                let answer = serde_json::from_slice::<Answer>(&text);
                if let Ok(mut idle) = self.idle.lock() {
                    if idle.len() < IDLE_CHILDREN {
                        idle.push(worker);
                    }
                }
                match answer {
                    Ok(Answer::Ok(v)) => Ok(v),
                    Ok(Answer::Err(e)) => Err(e),
                    Err(e) => Err(EvalError::Failed(format!(
                        "the sandbox answered nonsense: {e}"
                    ))),
                }
            }
            Reply::Late => Err(EvalError::Exceeded(Exceeded::Time)),
            Reply::Died => Err(EvalError::Exceeded(Exceeded::Memory)),
        }
    }
}

fn unavailable(e: io::Error) -> EvalError {
    EvalError::Failed(format!("the template sandbox cannot start: {e}"))
}

impl Evaluator for ProcessPool {
    fn eval(&self, expr: &str, _compiled: &Compiled, input: &Value) -> Result<Value, EvalError> {
        // Waiting on the child must not hold a runtime worker thread.
        match tokio::runtime::Handle::try_current() {
            Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
                tokio::task::block_in_place(|| self.evaluate(expr, input))
            }
            _ => self.evaluate(expr, input),
        }
    }
}

/// One answer line, or why there is none by `deadline`.
fn read_line(out: &mut ChildStdout, deadline: Instant) -> Reply {
    let mut text = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Reply::Late;
        }
        let mut fds = libc::pollfd {
            fd: out.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        let ms = left.as_millis().clamp(1, i32::MAX as u128) as i32;
        // SAFETY: one valid pollfd for the duration of the call.
        let ready = unsafe { libc::poll(&mut fds, 1, ms) };
        if ready < 0 {
            if io::Error::last_os_error().kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Reply::Died;
        }
        if ready == 0 {
            continue;
        }
        match out.read(&mut chunk) {
            Ok(0) | Err(_) => return Reply::Died,
            Ok(n) => {
                text.extend_from_slice(&chunk[..n]);
                if text.last() == Some(&b'\n') {
                    text.pop();
                    return Reply::Line(text);
                }
            }
        }
    }
}

/// The child's side: limits itself, then answers requests from stdin until it closes.
pub fn serve(budget: Budget) -> io::Result<()> {
    let (limited, ready) = std::sync::mpsc::channel();
    let worker = std::thread::Builder::new()
        .name("sandbox".into())
        .stack_size(CHILD_STACK)
        .spawn(move || {
            ready.recv().map_err(io::Error::other)??;
            answer_all(budget)
        })?;
    // The limit counts what is mapped already (the allocator's reserve, the
    // thread's stack); the budget is what evaluations may add.
    let _ = limited.send(limit_memory(
        mapped_bytes()?.saturating_add(budget.memory_bytes),
    ));
    worker
        .join()
        .map_err(|_| io::Error::other("the sandbox thread panicked"))?
}

fn answer_all(budget: Budget) -> io::Result<()> {
    let stdin = io::stdin().lock();
    let mut stdout = io::stdout().lock();
    let mut cache: HashMap<String, Arc<Compiled>> = HashMap::new();
    for line in stdin.lines() {
        let line = line?;
        let answer = match serde_json::from_str::<Incoming>(&line) {
            Err(e) => Answer::Err(EvalError::Failed(format!("bad request: {e}"))),
            Ok(req) => match compiled(&mut cache, &req.expr) {
                Err(e) => Answer::Err(e),
                Ok(filter) => match filter.run_val(req.input, &budget) {
                    Ok(v) => Answer::Ok(v),
                    Err(e) => Answer::Err(e),
                },
            },
        };
        serde_json::to_writer(&mut stdout, &answer)?;
        stdout.write_all(b"\n")?;
        stdout.flush()?;
    }
    Ok(())
}

fn compiled(
    cache: &mut HashMap<String, Arc<Compiled>>,
    expr: &str,
) -> Result<Arc<Compiled>, EvalError> {
    if let Some(c) = cache.get(expr) {
        return Ok(c.clone());
    }
    let c = Arc::new(
        Compiled::new(expr).map_err(|e| EvalError::Failed(format!("does not compile: {e:?}")))?,
    );
    if cache.len() >= CACHED_FILTERS {
        cache.clear();
    }
    cache.insert(expr.to_string(), c.clone());
    Ok(c)
}

/// The process's virtual size, from /proc/self/statm (in pages).
fn mapped_bytes() -> io::Result<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm")?;
    let pages: u64 = statm
        .split_whitespace()
        .next()
        .and_then(|p| p.parse().ok())
        .ok_or_else(|| io::Error::other("unreadable /proc/self/statm"))?;
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(4096) as u64;
    Ok(pages * page)
}

fn limit_memory(bytes: u64) -> io::Result<()> {
    let limit = libc::rlimit {
        rlim_cur: bytes as libc::rlim_t,
        rlim_max: bytes as libc::rlim_t,
    };
    // SAFETY: a valid rlimit for the duration of the call.
    if unsafe { libc::setrlimit(libc::RLIMIT_AS, &limit) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // a crash of the child writes no core file
    let none = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: as above.
    unsafe { libc::setrlimit(libc::RLIMIT_CORE, &none) };
    Ok(())
}
