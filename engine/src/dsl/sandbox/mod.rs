//! The sandbox templates run in: pure jq only, and a budget for every evaluation.
//!
//! A published workflow is code that clients trigger with inputs they choose,
//! so an expression must not reach outside its value (the environment, files,
//! the clock, the log, the process) and must not run, nest or grow without
//! end. Three layers (ADR 11):
//!
//! - **Compile time.** Filters that reach outside (`env`, `$ENV`, `input`,
//!   `halt_error`, `debug`, `now`, imports, …) are not in the library an
//!   expression is compiled against; using one is a [`Forbidden`] error that
//!   `validate` and publish report as `forbidden-function`.
//! - **Metered evaluation.** Every term jaq evaluates costs one unit of fuel,
//!   and the stack an evaluation uses is measured at each term, so loops and
//!   recursion stop with a budget error ([`Exceeded`]) instead of pinning a
//!   thread or overflowing its stack. The result's size is capped.
//! - **A separate process** ([`process`]). The server evaluates expressions in
//!   child processes with a memory limit, a wall-clock limit and no
//!   environment. A single jq operation can allocate without bound
//!   (`"x" * 1e12`), which no in-process meter can stop before the allocation
//!   aborts the process; a child that dies takes only its evaluation with it.
//!
//! Which evaluator runs is process-wide: [`install`] sets it once (the server
//! installs the process pool); without it, expressions are metered in process.

pub mod process;
mod reach;

use std::cell::Cell;
use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use jaq_core::load::{parse::Def, Arena, File, Loader};
use jaq_core::{data::HasLut, Compiler, Ctx, DataT, Exn, Vars};
use jaq_json::Val;
use serde_json::Value;

/// What an expression may not use, and why.
pub const FORBIDDEN: &[(&str, &str)] = &[
    ("env", "reads the server's environment"),
    ("$ENV", "reads the server's environment"),
    ("input", "reads the server's input"),
    ("inputs", "reads the server's input"),
    ("input_filename", "reads the server's input"),
    ("input_line_number", "reads the server's input"),
    ("import", "reads files of the server"),
    ("include", "reads files of the server"),
    ("halt", "stops the server"),
    ("halt_error", "stops the server"),
    ("debug", "writes to the server's log"),
    ("debug_empty", "writes to the server's log"),
    ("stderr", "writes to the server's log"),
    ("stderr_empty", "writes to the server's log"),
    ("$__loc__", "exposes the template's source location"),
    (
        "$__prog_args",
        "reads the server's command line (and is not pure jq)",
    ),
    (
        "now",
        "reads the clock, so a replay would differ: use `.instance.started_at`",
    ),
    (
        "localtime",
        "depends on the server's time zone: use `gmtime`",
    ),
    (
        "strflocaltime",
        "depends on the server's time zone: use `strftime`",
    ),
    ("get_search_list", "reads the server's module paths"),
    ("get_prog_origin", "reads the server's file system"),
    ("get_jq_origin", "reads the server's file system"),
    ("$__jq_origin", "reads the server's file system"),
];

/// Why `name` is forbidden, when it is.
pub fn forbidden(name: &str) -> Option<&'static str> {
    FORBIDDEN
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, why)| *why)
}

/// An evaluation's limits. The defaults are documented in the language reference.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Budget {
    /// Terms evaluated (each filter application costs one).
    pub fuel: u64,
    /// Stack the evaluation may use: the depth of recursion.
    pub stack_bytes: usize,
    /// The result, as JSON text.
    pub output_bytes: usize,
    /// Wall-clock time of one evaluation: checked between terms in process,
    /// and enforced by the process sandbox also within a native operation.
    pub time: Duration,
    /// Memory of an evaluator process (address space; enforced by the process sandbox).
    pub memory_bytes: u64,
}

impl Default for Budget {
    fn default() -> Self {
        Self {
            fuel: 1_000_000,
            stack_bytes: 256 * 1024,
            output_bytes: 1024 * 1024,
            time: Duration::from_secs(1),
            memory_bytes: 1024 * 1024 * 1024,
        }
    }
}

/// A limit of the [`Budget`] that an evaluation reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Exceeded {
    Fuel,
    Depth,
    Output,
    Time,
    /// The evaluator ran out of memory or stack and stopped.
    Memory,
}

impl std::fmt::Display for Exceeded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Exceeded::Fuel => "it ran too long (fuel exhausted)",
            Exceeded::Depth => "it recursed too deep",
            Exceeded::Output => "its result is too large",
            Exceeded::Time => "it ran out of time",
            Exceeded::Memory => "it ran out of memory",
        })
    }
}

/// Why an evaluation produced no value.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EvalError {
    /// The expression raised an error (`error(...)`, a type error, …).
    Failed(String),
    Exceeded(Exceeded),
}

/// An expression compiled against the sandbox's library.
pub struct Compiled {
    filter: Filter,
}

/// Why an expression cannot be compiled.
#[derive(Debug, Clone, PartialEq)]
pub enum CompileError {
    Syntax(String),
    /// The expression uses something outside pure jq.
    Forbidden {
        name: String,
        why: &'static str,
    },
}

/// Evaluates compiled expressions. One is installed per process.
pub trait Evaluator: Send + Sync {
    fn eval(&self, expr: &str, compiled: &Compiled, input: &Value) -> Result<Value, EvalError>;
}

static EVALUATOR: OnceLock<Arc<dyn Evaluator>> = OnceLock::new();

/// Sets the process-wide evaluator; false when one was already set.
pub fn install(evaluator: Arc<dyn Evaluator>) -> bool {
    EVALUATOR.set(evaluator).is_ok()
}

/// Evaluates with the installed evaluator, or in process with the default budget.
pub fn eval(expr: &str, compiled: &Compiled, input: &Value) -> Result<Value, EvalError> {
    match EVALUATOR.get() {
        Some(e) => e.eval(expr, compiled, input),
        None => compiled.run(input, &Budget::default()),
    }
}

/// Evaluation in the calling thread, metered (fuel, stack, output) but not
/// protected from a single huge allocation. For tests, tools and the child
/// processes of [`process`].
pub struct InProcess(pub Budget);

impl Evaluator for InProcess {
    fn eval(&self, _expr: &str, compiled: &Compiled, input: &Value) -> Result<Value, EvalError> {
        compiled.run(input, &self.0)
    }
}

/// Marks the data jaq runs with: the look-up table of the filter plus the meter.
pub struct Metered;

impl DataT for Metered {
    type V<'a> = Val;
    type Data<'a> = MeteredData<'a>;
}

#[derive(Clone)]
pub struct MeteredData<'a> {
    lut: &'a jaq_core::Lut<Metered>,
    meter: &'a Meter,
}

impl<'a> HasLut<'a, Metered> for MeteredData<'a> {
    /// jaq looks its table up once per term it evaluates: the place to meter.
    fn lut(&self) -> &'a jaq_core::Lut<Metered> {
        self.meter.charge();
        self.lut
    }
}

struct Meter {
    fuel: Cell<u64>,
    /// When the evaluation must have ended: looked at every [`CLOCK_EVERY`]
    /// terms, so a loop around a costly native operation (`splits` on a huge
    /// value writes it out) ends in process too.
    deadline: std::time::Instant,
    /// The address of a local of the evaluation's first frame.
    stack_top: usize,
    stack_bytes: usize,
}

/// Terms between two looks at the clock.
const CLOCK_EVERY: u64 = 1024;

/// The unwinding payload that stops an evaluation (never printed: `resume_unwind`
/// skips the panic hook).
struct Stop(Exceeded);

impl Meter {
    fn charge(&self) {
        let left = self.fuel.get();
        if left == 0 {
            resume_unwind(Box::new(Stop(Exceeded::Fuel)));
        }
        self.fuel.set(left - 1);
        if left.is_multiple_of(CLOCK_EVERY) && std::time::Instant::now() > self.deadline {
            resume_unwind(Box::new(Stop(Exceeded::Time)));
        }
        let here = 0u8;
        let depth = self
            .stack_top
            .saturating_sub(std::ptr::addr_of!(here) as usize);
        if depth > self.stack_bytes {
            resume_unwind(Box::new(Stop(Exceeded::Depth)));
        }
    }
}

type Filter = jaq_core::compile::Filter<jaq_core::Native<Metered>>;

/// Natives that loop without evaluating a term per output, replaced by
/// metered definitions.
const UNMETERED: &[&str] = &["range"];

/// `range/3` as jq 1.5 defined it: each output costs fuel.
const METERED_DEFS: &str = "def range($from; $upto; $by): \
    if $by > 0 then $from | def rec: if . < $upto then ., (. + $by | rec) else {}[] end; rec \
    elif $by < 0 then $from | def rec: if . > $upto then ., (. + $by | rec) else {}[] end; rec \
    else {}[] end;";

/// jq's standard definitions without the forbidden ones, parsed once.
fn std_defs() -> &'static [Def<&'static str>] {
    static DEFS: OnceLock<Vec<Def<&'static str>>> = OnceLock::new();
    DEFS.get_or_init(|| {
        let metered: Vec<Def<&'static str>> =
            jaq_core::load::parse(METERED_DEFS, |p| p.defs()).unwrap_or_default();
        metered
            .into_iter()
            .chain(jaq_core::defs())
            .chain(jaq_std::defs())
            .chain(jaq_json::defs())
            .filter(|d| forbidden(d.name).is_none())
            .collect()
    })
}

/// `expr` with every `..` written as `recurse`, its definition: jaq runs `..`
/// natively, where no fuel is charged per value it visits.
fn metered_text(expr: &str) -> std::borrow::Cow<'_, str> {
    use jaq_core::load::lex::{Lexer, StrPart, Tok, Token};
    fn spans(tokens: &[Token<&str>], base: usize, out: &mut Vec<usize>) {
        for Token(text, tok) in tokens {
            match tok {
                Tok::Sym if *text == ".." => out.push(text.as_ptr() as usize - base),
                Tok::Block(inner) => spans(inner, base, out),
                Tok::Str(parts) => {
                    for part in parts {
                        if let StrPart::Term(t) = part {
                            spans(std::slice::from_ref(t), base, out);
                        }
                    }
                }
                _ => {}
            }
        }
    }
    if !expr.contains("..") {
        return expr.into();
    }
    let Ok(tokens) = Lexer::new(expr).lex() else {
        return expr.into();
    };
    let mut at = Vec::new();
    spans(&tokens, expr.as_ptr() as usize, &mut at);
    if at.is_empty() {
        return expr.into();
    }
    at.sort_unstable();
    let mut out = String::with_capacity(expr.len() + 8 * at.len());
    let mut from = 0;
    for i in at {
        out.push_str(&expr[from..i]);
        out.push_str(" recurse ");
        from = i + 2;
    }
    out.push_str(&expr[from..]);
    out.into()
}

impl Compiled {
    /// Compiles `expr` against pure jq: the standard library minus [`FORBIDDEN`].
    pub fn new(expr: &str) -> Result<Self, CompileError> {
        let text = metered_text(expr);
        let expr = text.as_ref();
        // against the definitions it reaches; should that fail, against the
        // whole library, so that what an error says does not depend on the pruning
        Self::against(expr, reach::reachable(expr))
            .or_else(|_| Self::against(expr, std_defs().iter().cloned()))
    }

    fn against(
        expr: &str,
        defs: impl IntoIterator<Item = Def<&'static str>>,
    ) -> Result<Self, CompileError> {
        let funs = jaq_core::funs::<Metered>()
            .chain(jaq_std::funs::<Metered>())
            .chain(jaq_json::funs::<Metered>())
            .filter(|(name, ..)| forbidden(name).is_none() && !UNMETERED.contains(name));
        let arena = Arena::default();
        let modules = Loader::new(defs)
            .load(
                &arena,
                File {
                    code: expr,
                    path: (),
                },
            )
            .map_err(|errs| load_errors(expr, &errs))?;
        // `import "file" as $x;` binds a file's data: the compiler would need it.
        jaq_core::load::import(&modules, |_| Err(String::new())).map_err(|_| {
            CompileError::Forbidden {
                name: "import".into(),
                why: forbidden("import").unwrap_or_default(),
            }
        })?;
        let filter = Compiler::default()
            .with_funs(funs)
            .compile(modules)
            .map_err(|errs| {
                let names: Vec<(String, String)> = errs
                    .iter()
                    .flat_map(|(_, es)| {
                        es.iter()
                            .map(|(name, kind)| (name.to_string(), format!("{kind:?}")))
                    })
                    .collect();
                if let Some((name, why)) = names
                    .iter()
                    .find_map(|(n, _)| forbidden(n).map(|why| (n.clone(), why)))
                {
                    return CompileError::Forbidden { name, why };
                }
                let text: Vec<String> = names
                    .iter()
                    .map(|(name, kind)| format!("undefined {} `{name}`", kind.to_lowercase()))
                    .collect();
                CompileError::Syntax(text.join(", "))
            })?;
        Ok(Self { filter })
    }

    /// Runs the filter on `input` within `budget`; its first output (null when none).
    pub fn run(&self, input: &Value, budget: &Budget) -> Result<Value, EvalError> {
        use serde::Deserialize;
        let input = Val::deserialize(input)
            .map_err(|e| EvalError::Failed(format!("the context is not JSON: {e}")))?;
        self.run_val(input, budget)
    }

    fn run_val(&self, input: Val, budget: &Budget) -> Result<Value, EvalError> {
        let top = 0u8;
        let meter = Meter {
            fuel: Cell::new(budget.fuel),
            deadline: std::time::Instant::now() + budget.time,
            stack_top: std::ptr::addr_of!(top) as usize,
            stack_bytes: budget.stack_bytes,
        };
        let data = MeteredData {
            lut: &self.filter.lut,
            meter: &meter,
        };
        let first = catch_unwind(AssertUnwindSafe(|| {
            let ctx = Ctx::<Metered>::new(data, Vars::new([]));
            let mut out = self.filter.id.run((ctx, input));
            // the rest of the outputs are never computed
            out.next().map(|r| r.map_err(describe))
        }));
        let first = match first {
            Ok(first) => first,
            Err(payload) => match payload.downcast::<Stop>() {
                Ok(stop) => return Err(EvalError::Exceeded(stop.0)),
                Err(other) => {
                    return Err(EvalError::Failed(format!(
                        "the evaluator failed: {}",
                        panic_text(&other)
                    )))
                }
            },
        };
        let value = match first {
            None => return Ok(Value::Null),
            Some(Err(reason)) => return Err(EvalError::Failed(reason)),
            Some(Ok(v)) => v,
        };
        to_json(&value, budget.output_bytes)
    }
}

/// An error or a `halt` out of jaq as text; `halt` never exits the process.
fn describe(e: Exn<'_, Val>) -> String {
    match e.get_err() {
        // `error("text")` reads as the text, not as a JSON string
        Ok(err) => {
            // The message may quote the value: one shared 2^50 times is cut, not written out.
            use std::fmt::Write;
            let mut text = Bounded(String::new(), ERROR_TEXT);
            if write!(text, "{err}").is_err() {
                return format!("{}…", text.0);
            }
            let text = text.0;
            serde_json::from_str::<String>(&text).unwrap_or(text)
        }
        Err(_) => "the expression stopped without a value".into(),
    }
}

fn panic_text(payload: &Box<dyn std::any::Any + Send>) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic".into())
}

/// The value as JSON, refused beyond `limit` bytes of text.
fn to_json(value: &Val, limit: usize) -> Result<Value, EvalError> {
    use std::fmt::Write;
    let mut text = Bounded(String::new(), limit);
    if write!(text, "{value}").is_err() {
        return Err(EvalError::Exceeded(Exceeded::Output));
    }
    let text = text.0;
    serde_json::from_str(&text)
        .map_err(|e| EvalError::Failed(format!("the result is not JSON: {e}")))
}

/// The longest error message kept from an evaluation.
const ERROR_TEXT: usize = 1024;

/// Text that refuses to grow past its limit, so a huge result is never
/// written out whole (it keeps what fitted, up to a character boundary).
struct Bounded(String, usize);

impl std::fmt::Write for Bounded {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        if self.0.len() + s.len() > self.1 {
            let mut room = self.1 - self.0.len();
            while !s.is_char_boundary(room) {
                room -= 1;
            }
            self.0.push_str(&s[..room]);
            return Err(std::fmt::Error);
        }
        self.0.push_str(s);
        Ok(())
    }
}

fn load_errors(expr: &str, errs: &jaq_core::load::Errors<&str, ()>) -> CompileError {
    use jaq_core::load::Error;
    let at = |s: &str| {
        let pos = (s.as_ptr() as usize).saturating_sub(expr.as_ptr() as usize);
        if s.is_empty() || pos >= expr.len() {
            "at the end".to_string()
        } else {
            format!("at `{}`", s.chars().take(12).collect::<String>())
        }
    };
    let mut msgs = Vec::new();
    for (_, e) in errs {
        match e {
            // the only reader refuses every module: an `import` or `include`
            Error::Io(_) => {
                let name = if expr.contains("include") {
                    "include"
                } else {
                    "import"
                };
                return CompileError::Forbidden {
                    name: name.into(),
                    why: forbidden(name).unwrap_or_default(),
                };
            }
            Error::Lex(es) => msgs.extend(
                es.iter()
                    .map(|(want, s)| format!("expected {} {}", want.as_str(), at(s))),
            ),
            Error::Parse(es) => msgs.extend(
                es.iter()
                    .map(|(want, s)| format!("expected {} {}", want.as_str(), at(s))),
            ),
        }
    }
    CompileError::Syntax(msgs.join("; "))
}

#[cfg(test)]
mod tests;
