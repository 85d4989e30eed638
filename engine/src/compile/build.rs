//! The semantic checks: from a parsed spec to typed steps, reporting every
//! problem it finds (the spec is already structurally valid).

use std::collections::HashMap;
use std::time::Duration;

use crate::diagnostic::{did_you_mean, Diagnostic, DocPath};
use crate::dsl::spec::{
    ActionSpec, CompensateSpec, FailureKind, MaxAttempts, RetrySpec, StepSpec, WorkflowSpec,
};
use crate::dsl::template::{Reference, Template, TemplateError, ValueTemplate, ROOTS};

use super::model::{
    Action, Backoff, ForEach, HttpCall, RetryPolicy, Role, Step, TaskCall, Wait, MAX_ELEMENTS,
};

pub(crate) struct Checker<'a> {
    spec: &'a WorkflowSpec,
    pub diags: Vec<Diagnostic>,
    /// The workflow's compiled `output`.
    pub output: Option<ValueTemplate>,
    /// The branch whose templates are being checked: (step, branch).
    branch: Option<(usize, usize)>,
    /// Whether the templates being checked belong to a for-each step.
    in_for_each: bool,
}

/// Which step names a template at some place may refer to.
#[derive(Clone, Copy)]
enum Scope {
    /// Steps before index `n`.
    Before(usize),
    /// Steps up to and including index `n` (a compensation may read its own step's output).
    UpTo(usize),
    /// Every step (the workflow's output).
    All,
}

impl<'a> Checker<'a> {
    pub fn new(spec: &'a WorkflowSpec) -> Self {
        Self {
            spec,
            diags: Vec::new(),
            output: None,
            branch: None,
            in_for_each: false,
        }
    }

    fn error(
        &mut self,
        code: &'static str,
        path: DocPath,
        message: impl Into<String>,
    ) -> &mut Diagnostic {
        self.diags.push(Diagnostic::error(code, path, message));
        self.diags.last_mut().expect("just pushed")
    }

    fn warn(
        &mut self,
        code: &'static str,
        path: DocPath,
        message: impl Into<String>,
    ) -> &mut Diagnostic {
        self.diags.push(Diagnostic::warning(code, path, message));
        self.diags.last_mut().expect("just pushed")
    }

    pub fn duration(&mut self, text: &str, path: DocPath) -> Option<Duration> {
        match humantime::parse_duration(text.trim()) {
            Ok(d) if d.is_zero() => {
                self.error(
                    "bad-duration",
                    path,
                    format!("duration `{text}` must be longer than zero"),
                );
                None
            }
            Ok(d) if d > crate::dsl::spec::MAX_DURATION => {
                self.error(
                    "duration-too-long",
                    path,
                    format!("duration `{text}` is longer than the longest allowed, 100 years"),
                )
                .help = Some("sagas and their timers are bounded to 100 years".into());
                None
            }
            Ok(d) => Some(d),
            Err(e) => {
                self.error(
                    "bad-duration",
                    path,
                    format!("`{text}` is not a duration: {e}"),
                )
                .help = Some(
                    "write a number and a unit, e.g. `500ms`, `30s`, `5m`, `2h`, `1h 30m`".into(),
                );
                None
            }
        }
    }

    pub fn workflow_level(&mut self) {
        let spec = self.spec;
        let name_ok = spec.name.starts_with(|c: char| c.is_ascii_lowercase())
            && spec
                .name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
        if !name_ok {
            self.error("bad-name", DocPath::root().key("name"), format!("workflow name `{}` must be lowercase letters, digits and `-`, starting with a letter", spec.name));
        }
        if spec.steps.is_empty() {
            self.error(
                "no-steps",
                DocPath::root().key("steps"),
                "a workflow needs at least one step",
            );
        }
        if let Some(schema) = &spec.input {
            if let Err(e) = jsonschema::validator_for(schema) {
                self.error(
                    "bad-input-schema",
                    DocPath::root().key("input"),
                    format!("not a valid JSON Schema: {e}"),
                );
            }
        }
        if let Some(output) = &spec.output {
            self.output = self.value_template(output, DocPath::root().key("output"), Scope::All);
        }
        self.search_fields();
        let mut seen: HashMap<&str, String> = HashMap::new();
        let named = spec.steps.iter().enumerate().flat_map(|(i, step)| {
            let here = DocPath::root().key("steps").index(i);
            let branches = step
                .parallel
                .iter()
                .flatten()
                .enumerate()
                .map(move |(b, br)| {
                    (
                        here.clone().key("parallel").index(b),
                        format!("steps[{i}].parallel[{b}]"),
                        br,
                    )
                });
            std::iter::once((
                DocPath::root().key("steps").index(i),
                format!("steps[{i}]"),
                step,
            ))
            .chain(branches)
        });
        for (at, label, step) in named {
            let path = at.key("name");
            let ident = step
                .name
                .starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
                && step
                    .name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_');
            if !ident {
                self.error(
                    "bad-name",
                    path.clone(),
                    format!(
                        "step name `{}` must be an identifier (letters, digits, `_`)",
                        step.name
                    ),
                )
                .help = Some(format!(
                    "templates read it as `.steps.NAME`; try `{}`",
                    step.name.replace(['-', ' ', '.'], "_")
                ));
            }
            if let Some(first) = seen.insert(&step.name, label) {
                self.error(
                    "duplicate-step",
                    path,
                    format!("step name `{}` is used twice", step.name),
                )
                .help = Some(format!(
                    "first used by {first}; step and branch names are unique across the workflow"
                ));
                seen.insert(&step.name, first);
            }
        }
        let pivots: Vec<usize> = spec
            .steps
            .iter()
            .enumerate()
            .filter(|(_, s)| s.pivot)
            .map(|(i, _)| i)
            .collect();
        for (i, step) in spec.steps.iter().enumerate() {
            let path = DocPath::root().key("steps").index(i);
            if step.pivot {
                for (key, what) in [
                    (step.when.is_some(), "when"),
                    (step.for_each.is_some(), "for_each"),
                    (step.parallel.is_some(), "parallel"),
                ]
                .into_iter()
                .filter_map(|(on, k)| on.then_some((k, k)))
                {
                    let d = self.error(
                        "group-pivot",
                        path.key(key),
                        format!("the pivot `{}` cannot have `{what}`: the point of no return is one effect that happens", step.name),
                    );
                    d.anchor = crate::diagnostic::Anchor::Key;
                    d.help = Some("make a plain step the pivot".into());
                }
            }
            for (b, br) in step.parallel.iter().flatten().enumerate() {
                if br.pivot {
                    let d = self.error(
                        "group-pivot",
                        path.key("parallel").index(b).key("pivot"),
                        format!("branch `{}` cannot be the pivot: branches run at once and are undone together", br.name),
                    );
                    d.anchor = crate::diagnostic::Anchor::Key;
                    d.help = Some("make a plain step after the parallel step the pivot".into());
                }
            }
        }
        for &extra in pivots.iter().skip(1) {
            self.error(
                "many-pivots",
                DocPath::root().key("steps").index(extra).key("pivot"),
                "a workflow has at most one pivot step",
            )
            .help = Some(format!("steps[{}] is already the pivot", pivots[0]));
        }
    }

    /// `search:` names input fields: dotted paths, each once, that the input
    /// schema allows (a schema that closes its properties must name them).
    fn search_fields(&mut self) {
        let spec = self.spec;
        let mut seen = std::collections::HashSet::new();
        for (i, field) in spec.search.iter().enumerate() {
            let path = DocPath::root().key("search").index(i);
            let ok = !field.is_empty()
                && field.len() <= 200
                && field.split('.').all(|p| {
                    !p.is_empty() && p.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
                });
            if !ok {
                self.error(
                    "bad-search-field",
                    path,
                    format!("search field `{field}` must be a path of letters, digits and `_`, joined by `.`"),
                )
                .help = Some("e.g. `customer_id` or `address.city`".into());
                continue;
            }
            if !seen.insert(field.as_str()) {
                self.error(
                    "duplicate-search-field",
                    path,
                    format!("search field `{field}` is named twice"),
                );
                continue;
            }
            if let Some((at, known)) = spec.input.as_ref().and_then(|s| closed_off(s, field)) {
                self.error(
                    "search-field-not-in-input",
                    path,
                    format!("search field `{field}` can never be in the input: the input schema allows no `{at}`"),
                )
                .help = Some(if known.is_empty() {
                    "the schema there names no properties".into()
                } else {
                    format!("it names {}", known.join(", "))
                });
            }
        }
    }

    /// Parses the cron triggers; their inputs must satisfy the input schema.
    pub fn triggers(&mut self) -> Vec<super::model::CronTrigger> {
        use std::str::FromStr;
        let spec = self.spec;
        let validator = spec
            .input
            .as_ref()
            .and_then(|s| jsonschema::validator_for(s).ok());
        let mut out = Vec::new();
        for (i, t) in spec.triggers.iter().enumerate() {
            let path = DocPath::root().key("triggers").index(i);
            // Five fields is classic cron; the library wants seconds first.
            let fields = t.cron.split_whitespace().count();
            let expr = if fields == 5 {
                format!("0 {}", t.cron.trim())
            } else {
                t.cron.trim().to_string()
            };
            let schedule = match cron::Schedule::from_str(&expr) {
                Ok(s) => Some(s),
                Err(e) => {
                    self.error("bad-cron", path.key("cron"), format!("`{}` is not a cron expression: {e}", t.cron))
                        .help = Some("five fields, in UTC: minute hour day-of-month month day-of-week, e.g. `*/5 * * * *`".into());
                    None
                }
            };
            let input = t.input.clone().unwrap_or_else(|| serde_json::json!({}));
            if let Some(v) = &validator {
                let errors: Vec<String> = v.iter_errors(&input).map(|e| e.to_string()).collect();
                if !errors.is_empty() {
                    self.error(
                        "trigger-input",
                        path.key("input"),
                        format!(
                            "the trigger's input does not satisfy `input`: {}",
                            errors.join("; ")
                        ),
                    );
                }
            }
            if let Some(schedule) = schedule {
                out.push(super::model::CronTrigger {
                    expr: t.cron.clone(),
                    schedule,
                    input,
                    missed: t.missed.unwrap_or_default(),
                });
            }
        }
        out
    }

    pub fn default_timeout(&mut self) -> Option<Duration> {
        let text = self.spec.defaults.as_ref()?.timeout.as_ref()?;
        self.duration(text, DocPath::root().key("defaults").key("timeout"))
    }

    pub fn default_retry(&mut self) -> RetryPolicy {
        match self.spec.defaults.as_ref().and_then(|d| d.retry.as_ref()) {
            Some(r) => self.retry(r, DocPath::root().key("defaults").key("retry")),
            None => RetryPolicy::once(),
        }
    }

    pub fn retry(&mut self, r: &RetrySpec, path: DocPath) -> RetryPolicy {
        let max_attempts = match r.max_attempts {
            MaxAttempts::Count(n) => Some(n),
            MaxAttempts::Unlimited(_) => None,
        };
        let backoff = r.backoff.as_ref().and_then(|b| {
            let bp = path.key("backoff");
            let initial = self.duration(&b.initial, bp.key("initial"))?;
            let max = match &b.max {
                Some(m) => Some(self.duration(m, bp.key("max"))?),
                None => None,
            };
            if max.is_some_and(|m| m < initial) {
                self.error(
                    "bad-backoff",
                    bp.key("max"),
                    "the longest delay is shorter than the first",
                );
            }
            Some(Backoff {
                initial,
                max,
                multiplier: b.multiplier.unwrap_or(2.0),
            })
        });
        let policy = RetryPolicy {
            max_attempts,
            backoff,
            jitter: r.jitter.unwrap_or(0.0),
            retry_on: r
                .retry_on
                .clone()
                .unwrap_or_else(|| RetryPolicy::DEFAULT_RETRY_ON.to_vec()),
        };
        if policy.retries() && r.backoff.is_none() {
            self.warn(
                "retry-without-backoff",
                path,
                "retries without `backoff` are immediate",
            )
            .help = Some(
                "add e.g. `backoff: { initial: 200ms, max: 10s }` so a struggling service gets air"
                    .into(),
            );
        }
        policy
    }

    /// Typed steps; `None` where a step had errors.
    pub fn steps(
        &mut self,
        default_timeout: Option<Duration>,
        default_retry: &RetryPolicy,
    ) -> Vec<Option<Step>> {
        let pivot = self.spec.steps.iter().position(|s| s.pivot);
        let spec = self.spec;
        spec.steps
            .iter()
            .enumerate()
            .map(|(i, s)| {
                let role = match pivot {
                    Some(p) if i == p => Role::Pivot,
                    Some(p) if i > p => Role::AfterPivot,
                    _ => Role::Compensable,
                };
                self.step(i, s, role, default_timeout, default_retry)
            })
            .collect()
    }

    fn step(
        &mut self,
        i: usize,
        s: &StepSpec,
        role: Role,
        default_timeout: Option<Duration>,
        default_retry: &RetryPolicy,
    ) -> Option<Step> {
        let path = DocPath::root().key("steps").index(i);
        let before = self.errors();
        self.branch = None;
        self.in_for_each = false;
        let when = s
            .when
            .as_ref()
            .and_then(|w| self.template(w, path.key("when"), Scope::Before(i)));
        let for_each = s.for_each.as_ref().and_then(|f| {
            let items = self.template(f, path.key("for_each"), Scope::Before(i))?;
            Some(ForEach {
                items,
                max_concurrency: s.max_concurrency.unwrap_or(1).clamp(1, MAX_ELEMENTS as u32),
            })
        });
        if s.max_concurrency.is_some() && s.for_each.is_none() {
            let d = self.error(
                "concurrency-without-for-each",
                path.key("max_concurrency"),
                "`max_concurrency` bounds the elements of a `for_each`; this step has none",
            );
            d.anchor = crate::diagnostic::Anchor::Key;
        }
        if s.for_each.is_some() && (s.parallel.is_some() || s.wait.is_some()) {
            let what = if s.wait.is_some() { "wait" } else { "parallel" };
            let d = self.error(
                "bad-for-each",
                path.key("for_each"),
                format!(
                    "a for-each step performs an `http` or `task` action per element, not `{what}`"
                ),
            );
            d.anchor = crate::diagnostic::Anchor::Key;
        }
        self.in_for_each = s.for_each.is_some();
        let step = match &s.parallel {
            Some(branches) => self.parallel(i, s, branches, role, default_timeout, default_retry),
            None => self.single_at(i, s, &path, role, default_timeout, default_retry),
        };
        self.in_for_each = false;
        let mut step = step?;
        step.when = when;
        step.for_each = for_each;
        (self.errors() == before).then_some(step)
    }

    fn errors(&self) -> usize {
        self.diags.iter().filter(|d| d.is_error()).count()
    }

    /// A `parallel` step: its branches are steps of one action each, with the
    /// parallel step's `timeout` and `retry` as their defaults.
    fn parallel(
        &mut self,
        i: usize,
        s: &StepSpec,
        branches: &[StepSpec],
        role: Role,
        default_timeout: Option<Duration>,
        default_retry: &RetryPolicy,
    ) -> Option<Step> {
        let path = DocPath::root().key("steps").index(i);
        let timeout = match &s.timeout {
            Some(t) => self.duration(t, path.key("timeout")),
            None => default_timeout,
        };
        let retry = match &s.retry {
            Some(r) => self.retry(r, path.key("retry")),
            None => default_retry.clone(),
        };
        let others: Vec<&str> = s
            .action_keys()
            .into_iter()
            .filter(|k| *k != "parallel")
            .collect();
        if let Some(other) = others.first() {
            let d = self.error(
                "many-actions",
                path.key(*other),
                format!(
                    "step `{}` runs branches in parallel; put `{other}` in a branch",
                    s.name
                ),
            );
            d.anchor = crate::diagnostic::Anchor::Key;
        }
        if s.compensate.is_some() {
            let d = self.error(
                "compensate-on-parallel",
                path.key("compensate"),
                "a parallel step is undone by its branches' compensations, not its own",
            );
            d.anchor = crate::diagnostic::Anchor::Key;
            d.help = Some("move `compensate` into the branches".into());
        }
        if branches.is_empty() {
            self.error(
                "no-branches",
                path.key("parallel"),
                format!("parallel step `{}` has no branches", s.name),
            );
        }
        let mut compiled = Vec::new();
        for (b, br) in branches.iter().enumerate() {
            let bp = path.key("parallel").index(b);
            for (on, key) in [
                (br.parallel.is_some(), "parallel"),
                (br.for_each.is_some(), "for_each"),
                (br.when.is_some(), "when"),
                (br.wait.is_some(), "wait"),
            ] {
                if on {
                    let d = self.error(
                        "nested-group",
                        bp.key(key),
                        format!("branch `{}` cannot use `{key}`: a branch performs one `http` or `task` action", br.name),
                    );
                    d.anchor = crate::diagnostic::Anchor::Key;
                }
            }
            self.branch = Some((i, b));
            compiled.push(self.single_at(i, br, &bp, role, timeout, &retry));
            self.branch = None;
        }
        let branches: Vec<Step> = compiled.into_iter().collect::<Option<_>>()?;
        Some(Step {
            name: s.name.clone(),
            action: Action::Parallel,
            compensation: None,
            timeout: None,
            retry: RetryPolicy::once(),
            role,
            idempotency: s.idempotency.unwrap_or_default(),
            when: None,
            for_each: None,
            branches,
        })
    }

    /// A step of one action (a plain step, a for-each step or a branch) at `path`.
    fn single_at(
        &mut self,
        i: usize,
        s: &StepSpec,
        path: &DocPath,
        role: Role,
        default_timeout: Option<Duration>,
        default_retry: &RetryPolicy,
    ) -> Option<Step> {
        let path = path.clone();
        let before = self.errors();
        let timeout = match &s.timeout {
            Some(t) => self.duration(t, path.key("timeout")),
            None => default_timeout,
        };
        let retry = match &s.retry {
            Some(r) => self.retry(r, path.key("retry")),
            None => default_retry.clone(),
        };
        let action = self.action(s, &path, i);
        let is_wait = matches!(action, Some(Action::Wait(_)));
        let compensation = match (&s.compensate, role) {
            (Some(_), Role::AfterPivot) => {
                let d = self.error(
                    "compensate-after-pivot",
                    path.key("compensate"),
                    "a step after the pivot is never compensated",
                );
                d.anchor = crate::diagnostic::Anchor::Key;
                d.help = Some(
                    "remove `compensate`: once the pivot succeeds the saga only goes forward"
                        .into(),
                );
                None
            }
            (Some(CompensateSpec::Action(a)), _) => {
                self.compensation(a, &path.key("compensate"), i)
            }
            (Some(CompensateSpec::None(_)), _) => None,
            (None, Role::Compensable) if !is_wait && action.is_some() => {
                self.error("missing-compensation", path.clone(), format!("step `{}` changes something but says nothing about undoing it", s.name))
                    .help = Some("add `compensate:` with an action, or `compensate: none` if there is nothing to undo (or mark a later step as the pivot)".into());
                None
            }
            (None, _) => None,
        };
        if role == Role::AfterPivot && retry.max_attempts.is_some() && !is_wait {
            self.error(
                "bounded-after-pivot",
                path.key("retry"),
                format!(
                    "step `{}` comes after the pivot, so it must be retried until it succeeds",
                    s.name
                ),
            )
            .help = Some(
                "set `retry: { max_attempts: unlimited, backoff: { initial: 1s, max: 1m } }`"
                    .into(),
            );
        }
        if matches!(action, Some(Action::Task(_))) && timeout.is_none() {
            let heartbeat = s.task.as_ref().is_some_and(|t| t.heartbeat.is_some());
            if !heartbeat {
                self.warn(
                    "task-without-timeout",
                    path.clone(),
                    format!(
                        "task step `{}` has no timeout: a lost worker stalls the saga",
                        s.name
                    ),
                )
                .help = Some(
                    "set `timeout:` on the step (or in `defaults`), or `task.heartbeat`".into(),
                );
            }
        }
        if let (Some(Action::Wait(Wait::Signal(sig))), None) = (&action, timeout) {
            self.warn(
                "wait-without-timeout",
                path.clone(),
                format!("step `{}` waits for `{sig}` with no timeout", s.name),
            )
            .help = Some(
                "set `timeout:` on the step so a signal that never comes compensates the saga"
                    .into(),
            );
        }
        let errors_now = self.diags.iter().filter(|d| d.is_error()).count();
        (errors_now == before).then(|| Step {
            name: s.name.clone(),
            action: action.expect("no errors means the action was built"),
            compensation,
            timeout,
            retry,
            role,
            idempotency: s.idempotency.unwrap_or_default(),
            when: None,
            for_each: None,
            branches: Vec::new(),
        })
    }

    fn action(&mut self, s: &StepSpec, path: &DocPath, i: usize) -> Option<Action> {
        let keys = s.action_keys();
        match keys.as_slice() {
            [] => {
                self.error(
                    "missing-action",
                    path.clone(),
                    format!("step `{}` has no action", s.name),
                )
                .help = Some("add one of `http`, `task` or `wait`".into());
                None
            }
            [_] => {
                if let Some(h) = &s.http {
                    return self
                        .http(h, path.key("http"), Scope::Before(i))
                        .map(Action::Http);
                }
                if let Some(t) = &s.task {
                    return self
                        .task(t, path.key("task"), Scope::Before(i))
                        .map(Action::Task);
                }
                let w = s.wait.as_ref()?;
                let wp = path.key("wait");
                match (&w.signal, &w.duration) {
                    (Some(sig), None) if !sig.trim().is_empty() => {
                        Some(Action::Wait(Wait::Signal(sig.clone())))
                    }
                    (None, Some(d)) => self
                        .duration(d, wp.key("duration"))
                        .map(|d| Action::Wait(Wait::Duration(d))),
                    (Some(_), Some(_)) => {
                        self.error(
                            "ambiguous-wait",
                            wp,
                            "a wait has either `signal` or `duration`, not both",
                        )
                        .help = Some("to bound a signal wait, set the step's `timeout`".into());
                        None
                    }
                    _ => {
                        self.error(
                            "empty-wait",
                            wp,
                            "a wait needs `signal` (a name) or `duration`",
                        );
                        None
                    }
                }
            }
            many => {
                self.error(
                    "many-actions",
                    path.key(many[1]),
                    format!(
                        "step `{}` has {} actions ({}); a step does one thing",
                        s.name,
                        many.len(),
                        many.join(", ")
                    ),
                )
                .anchor = crate::diagnostic::Anchor::Key;
                None
            }
        }
    }

    fn compensation(&mut self, a: &ActionSpec, path: &DocPath, i: usize) -> Option<Action> {
        match (&a.http, &a.task) {
            (Some(h), None) => self
                .http(h, path.key("http"), Scope::UpTo(i))
                .map(Action::Http),
            (None, Some(t)) => self
                .task(t, path.key("task"), Scope::UpTo(i))
                .map(Action::Task),
            (Some(_), Some(_)) => {
                self.error(
                    "many-actions",
                    path.key("task"),
                    "a compensation is one action: `http` or `task`, not both",
                )
                .anchor = crate::diagnostic::Anchor::Key;
                None
            }
            (None, None) => {
                self.error("missing-action", path.clone(), "a compensation needs an action: `http` or `task` (or write `compensate: none`)");
                None
            }
        }
    }

    fn http(
        &mut self,
        h: &crate::dsl::spec::HttpSpec,
        path: DocPath,
        scope: Scope,
    ) -> Option<HttpCall> {
        let url = self.template(&h.url, path.key("url"), scope);
        let headers: Vec<_> = h
            .headers
            .iter()
            .map(|(k, v)| {
                (
                    k.clone(),
                    self.template(v, path.key("headers").key(k), scope),
                )
            })
            .collect();
        let body = h
            .body
            .as_ref()
            .map(|b| self.value_template(b, path.key("body"), scope));
        for (j, code) in h.retryable_status.iter().flatten().enumerate() {
            if !(100..=599).contains(code) {
                self.error(
                    "bad-status",
                    path.key("retryable_status").index(j),
                    format!("{code} is not an HTTP status"),
                );
            }
        }
        Some(HttpCall {
            method: h.method,
            url: url?,
            headers: headers
                .into_iter()
                .map(|(k, v)| Some((k, v?)))
                .collect::<Option<_>>()?,
            body: match body {
                Some(Some(b)) => Some(b),
                Some(None) => return None,
                None => None,
            },
            retryable_status: h.retryable_status.clone().unwrap_or_else(|| vec![408, 429]),
        })
    }

    fn task(
        &mut self,
        t: &crate::dsl::spec::TaskSpec,
        path: DocPath,
        scope: Scope,
    ) -> Option<TaskCall> {
        if t.queue.trim().is_empty() {
            self.error("empty-queue", path.key("queue"), "the queue name is empty");
        }
        let input = match &t.input {
            Some(i) => Some(self.value_template(i, path.key("input"), scope)?),
            None => None,
        };
        let heartbeat = match &t.heartbeat {
            Some(h) => Some(self.duration(h, path.key("heartbeat"))?),
            None => None,
        };
        Some(TaskCall {
            queue: t.queue.clone(),
            input,
            heartbeat,
        })
    }

    /// Checks and compiles every template inside a JSON value; `None` if any is bad.
    fn value_template(
        &mut self,
        value: &serde_json::Value,
        path: DocPath,
        scope: Scope,
    ) -> Option<ValueTemplate> {
        let compiled = match value {
            serde_json::Value::String(s) if s.contains("${") => {
                ValueTemplate::Template(self.template(s, path, scope)?)
            }
            serde_json::Value::Array(items) => {
                // every item is checked, even after a bad one
                let parts: Vec<_> = items
                    .iter()
                    .enumerate()
                    .map(|(i, v)| self.value_template(v, path.index(i), scope))
                    .collect();
                ValueTemplate::Array(parts.into_iter().collect::<Option<_>>()?)
            }
            serde_json::Value::Object(map) => {
                let parts: Vec<_> = map
                    .iter()
                    .map(|(k, v)| {
                        (
                            k.clone(),
                            self.value_template(v, path.key(k.as_str()), scope),
                        )
                    })
                    .collect();
                ValueTemplate::Object(
                    parts
                        .into_iter()
                        .map(|(k, v)| Some((k, v?)))
                        .collect::<Option<_>>()?,
                )
            }
            other => ValueTemplate::Literal(other.clone()),
        };
        Some(compiled.simplify())
    }

    fn template(&mut self, text: &str, path: DocPath, scope: Scope) -> Option<Template> {
        let t = match Template::parse(text) {
            Ok(t) => t,
            Err(e @ TemplateError::Forbidden { .. }) => {
                self.error("forbidden-function", path, e.to_string()).help = Some(
                    "templates are pure jq: they see the saga's context (`.input`, `.steps`, `.env`, `.instance`) and nothing of the server".into(),
                );
                return None;
            }
            Err(e) => {
                self.error("bad-template", path, e.to_string());
                return None;
            }
        };
        // Every step and branch: (name, step index, branch position, skippable).
        let names: Vec<(&str, usize, Option<usize>, bool)> = self
            .spec
            .steps
            .iter()
            .enumerate()
            .flat_map(|(i, s)| {
                let branches = s
                    .parallel
                    .iter()
                    .flatten()
                    .enumerate()
                    .map(move |(b, br)| (br.name.as_str(), i, Some(b), s.when.is_some()));
                std::iter::once((s.name.as_str(), i, None, s.when.is_some())).chain(branches)
            })
            .collect();
        for (expr, refs) in t.references_by_expression() {
            for r in refs {
                self.reference(r, expr, &names, &path, scope);
            }
        }
        Some(t)
    }

    /// Checks one thing a template's expression reads.
    fn reference(
        &mut self,
        r: Reference,
        expr: &str,
        names: &[(&str, usize, Option<usize>, bool)],
        path: &DocPath,
        scope: Scope,
    ) {
        {
            match r {
                Reference::Step(name) => {
                    let Some(&(_, at, branch, skippable)) = names.iter().find(|n| n.0 == name)
                    else {
                        let d = self.error(
                            "unknown-step",
                            path.clone(),
                            format!("template refers to step `{name}`, which does not exist"),
                        );
                        if let Some(s) = did_you_mean(&name, names.iter().map(|n| n.0)) {
                            d.help = Some(format!("did you mean `{s}`?"));
                        }
                        return;
                    };
                    let own = self
                        .branch
                        .is_some_and(|(i, b)| at == i && branch == Some(b));
                    if let (Some((i, _)), Some(_)) = (self.branch, branch) {
                        if at == i && !own {
                            self.error("sibling-branch", path.clone(), format!("template refers to branch `{name}`, which runs at the same time as this one"))
                                .help = Some("branches start at once: read a sibling's output in a step after the parallel step".into());
                            return;
                        }
                    }
                    let visible = match scope {
                        Scope::Before(i) => at < i,
                        Scope::UpTo(i) => at < i || (at == i && (self.branch.is_none() || own)),
                        Scope::All => true,
                    };
                    if !visible {
                        self.error("later-step", path.clone(), format!("template refers to step `{name}`, which has not run yet at this point"))
                            .help = Some("a step can read the output of the steps before it".into());
                    } else if skippable
                        && !expr.contains("//")
                        && !matches!(scope, Scope::UpTo(i) if at == i)
                    {
                        self.warn("maybe-skipped", path.clone(), format!("template reads step `{name}`, which has a `when` and may be skipped (its output is then null)"))
                            .help = Some(format!("give a fallback, e.g. `${{ .steps.{name}.output.id // \"none\" }}`"));
                    }
                }
                Reference::Element(root) if !self.in_for_each => {
                    self.error("element-outside-for-each", path.clone(), format!("template reads `.{root}`, which only the templates of a `for_each` step see"))
                        .help = Some("add `for_each:` to the step, or read the data from `.input` or `.steps`".into());
                }
                Reference::Element(_) => {}
                Reference::Env(name) if !self.spec.env.contains_key(&name) => {
                    self.warn(
                        "undeclared-env",
                        path.clone(),
                        format!("template reads `.env.{name}`, which `env` does not declare"),
                    )
                    .help = Some(format!("declare a default: `env: {{ {name}: ... }}`"));
                }
                Reference::Env(_) => {}
                Reference::UnknownRoot(root) => {
                    let d = self.error("unknown-root", path.clone(), format!("templates see `.input`, `.steps`, `.env` and `.instance` (and `.item`, `.index` in a for-each), not `.{root}`"));
                    if let Some(s) = did_you_mean(&root, ROOTS) {
                        d.help = Some(format!("did you mean `.{s}`?"));
                    }
                }
            }
        }
    }
}

/// Whether a failure of this kind can reach the step at all.
/// Where a dotted input path leaves a schema that closes its properties
/// (`additionalProperties: false`): the part of the path up to there, and the
/// properties the schema names there. `None` when the path may be present.
fn closed_off(schema: &serde_json::Value, field: &str) -> Option<(String, Vec<String>)> {
    let mut node = schema;
    let mut walked = Vec::new();
    for part in field.split('.') {
        walked.push(part);
        let props = node.get("properties").and_then(|p| p.as_object());
        if let Some(next) = props.and_then(|p| p.get(part)) {
            node = next;
            continue;
        }
        let closed = node.get("additionalProperties") == Some(&serde_json::Value::Bool(false));
        return closed.then(|| {
            let known = props.map(|p| p.keys().map(|k| format!("`{k}`")).collect());
            (walked.join("."), known.unwrap_or_default())
        });
    }
    None
}

pub(crate) fn can_time_out(step: &Step) -> bool {
    step.timeout.is_some() || matches!(&step.action, Action::Task(t) if t.heartbeat.is_some())
}

pub(crate) fn retries_on(step: &Step, kind: FailureKind) -> bool {
    step.retry.retries() && step.retry.retry_on.contains(&kind)
}
