//! Templates: text with `${ jq }` expressions, evaluated with jaq against the
//! saga's context `{input, steps, env, instance}`.
//!
//! A string that is exactly one `${ … }` yields the expression's JSON value
//! (a number stays a number); anywhere else the value is spliced into the
//! text (strings as they are, other values as JSON).

use std::fmt;
use std::sync::Arc;

use super::sandbox::{self, CompileError, Compiled, EvalError};

/// The top-level names a template's context holds.
pub const ROOTS: [&str; 6] = ["input", "steps", "env", "instance", "item", "index"];

#[derive(Clone)]
enum Part {
    Text(String),
    /// The expression's text and its compiled filter (compiled once, run many times).
    Expr(String, Arc<Compiled>),
    /// An expression that is only a path (`.input.order_id`): read directly,
    /// without jq. Most templates are these.
    /// The compiled filter is used when the path meets a value of another
    /// type, so that the answer is always jq's.
    Path(String, Vec<Segment>, Arc<Compiled>),
}

/// A step of a path expression.
#[derive(Debug, Clone, PartialEq)]
pub enum Segment {
    Key(String),
    Index(i64),
}

impl PartialEq for Part {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (Part::Text(a), Part::Text(b))
            | (Part::Expr(a, _), Part::Expr(b, _))
            | (Part::Path(a, ..), Part::Path(b, ..)) => a == b,
            _ => false,
        }
    }
}

impl fmt::Debug for Part {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Part::Text(t) => f.debug_tuple("Text").field(t).finish(),
            Part::Expr(e, _) => f.debug_tuple("Expr").field(e).finish(),
            Part::Path(e, ..) => f.debug_tuple("Path").field(e).finish(),
        }
    }
}

/// A parsed template, its expressions compiled.
#[derive(Debug, Clone, PartialEq)]
pub struct Template {
    parts: Vec<Part>,
}

/// Why a template cannot be used.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum TemplateError {
    #[error("`${{` at byte {0} is never closed by `}}`")]
    Unclosed(usize),
    #[error("expression `{expr}` does not parse: {reason}")]
    Syntax { expr: String, reason: String },
    #[error("expression `{expr}` uses `{name}`, which templates may not use: it {why}")]
    Forbidden {
        expr: String,
        name: String,
        why: &'static str,
    },
    #[error("expression `{expr}` failed: {reason}")]
    Eval { expr: String, reason: String },
    #[error("expression `{expr}` was stopped: {exceeded} (see the template budget)")]
    Budget {
        expr: String,
        exceeded: sandbox::Exceeded,
    },
}

/// A reference from a template to an earlier step's data (`.steps.NAME`) or an env value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reference {
    Step(String),
    Env(String),
    /// The expression starts with `.NAME` where NAME is not a context root.
    UnknownRoot(String),
    /// `.item` or `.index`: the element of a for-each step.
    Element(String),
}

impl Template {
    /// Splits `text` into literal text and checked jq expressions.
    pub fn parse(text: &str) -> Result<Self, TemplateError> {
        let mut parts = Vec::new();
        let mut rest = text;
        let mut offset = 0;
        while let Some(open) = rest.find("${") {
            if open > 0 {
                parts.push(Part::Text(rest[..open].to_string()));
            }
            let body_start = open + 2;
            let len =
                closing_brace(&rest[body_start..]).ok_or(TemplateError::Unclosed(offset + open))?;
            let expr = rest[body_start..body_start + len].trim().to_string();
            let filter = Arc::new(compile(&expr)?);
            parts.push(match path_of(&expr) {
                Some(path) => Part::Path(expr, path, filter),
                None => Part::Expr(expr, filter),
            });
            let consumed = body_start + len + 1;
            offset += consumed;
            rest = &rest[consumed..];
        }
        if !rest.is_empty() {
            parts.push(Part::Text(rest.to_string()));
        }
        Ok(Self { parts })
    }

    /// True when the text holds no expression.
    pub fn is_literal(&self) -> bool {
        self.parts.iter().all(|p| matches!(p, Part::Text(_)))
    }

    /// The expressions, in order.
    pub fn expressions(&self) -> impl Iterator<Item = &str> {
        self.parts.iter().filter_map(|p| match p {
            Part::Expr(e, _) | Part::Path(e, ..) => Some(e.as_str()),
            Part::Text(_) => None,
        })
    }

    /// What the expressions read from the context: steps and env values by name.
    pub fn references(&self) -> Vec<Reference> {
        self.expressions().flat_map(references_in).collect()
    }

    /// Each expression with what it reads.
    pub fn references_by_expression(&self) -> Vec<(&str, Vec<Reference>)> {
        self.expressions().map(|e| (e, references_in(e))).collect()
    }

    /// Evaluates the template against `ctx`.
    pub fn render(&self, ctx: &Context<'_>) -> Result<serde_json::Value, TemplateError> {
        if let [part] = self.parts.as_slice() {
            if !matches!(part, Part::Text(_)) {
                return eval(part, ctx);
            }
        }
        let mut out = String::new();
        for part in &self.parts {
            match part {
                Part::Text(t) => out.push_str(t),
                _ => match eval(part, ctx)? {
                    serde_json::Value::String(s) => out.push_str(&s),
                    other => out.push_str(&other.to_string()),
                },
            }
        }
        Ok(serde_json::Value::String(out))
    }
}

impl fmt::Display for Template {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for part in &self.parts {
            match part {
                Part::Text(t) => f.write_str(t)?,
                Part::Expr(e, _) | Part::Path(e, ..) => write!(f, "${{ {e} }}")?,
            }
        }
        Ok(())
    }
}

/// The data templates are evaluated against: an object of named roots.
///
/// A saga's context is made of roots that borrow the saga's state, so a path
/// (`.input.order_id`, most templates) reads its value without the whole
/// object being built; the object is built once, when an expression needs jq.
pub struct Context<'a> {
    roots: Vec<(&'static str, Root<'a>)>,
    whole: std::sync::OnceLock<serde_json::Value>,
}

/// One top-level value of a [`Context`].
pub enum Root<'a> {
    Value(std::borrow::Cow<'a, serde_json::Value>),
    /// `{NAME: {"output": OUTPUT}}` for each step's output.
    Outputs(&'a std::collections::BTreeMap<String, serde_json::Value>),
    /// An object of strings.
    Strings(&'a std::collections::BTreeMap<String, String>),
    /// A value made when it is read (seldom read, and not worth making each time).
    Made(Box<dyn Fn() -> serde_json::Value + Send + Sync + 'a>),
}

impl Root<'_> {
    /// The root as one JSON value.
    pub fn to_value(&self) -> serde_json::Value {
        use serde_json::Value;
        match self {
            Root::Value(v) => v.as_ref().clone(),
            Root::Outputs(outputs) => Value::Object(
                outputs
                    .iter()
                    .map(|(k, v)| (k.clone(), output_of(v)))
                    .collect(),
            ),
            Root::Strings(strings) => Value::Object(
                strings
                    .iter()
                    .map(|(k, v)| (k.clone(), Value::String(v.clone())))
                    .collect(),
            ),
            Root::Made(make) => make(),
        }
    }

    /// What jq gives for `path` inside this root (see [`read_path`]).
    fn read(&self, path: &[Segment]) -> Option<serde_json::Value> {
        use serde_json::Value;
        match (self, path.split_first()) {
            (Root::Value(v), _) => read_path(v, path),
            (Root::Made(make), _) => read_path(&make(), path),
            (_, None) => Some(self.to_value()),
            // an object indexed by a number: jq's error
            (_, Some((Segment::Index(_), _))) => None,
            (Root::Outputs(outputs), Some((Segment::Key(name), rest))) => {
                match (outputs.get(name), rest.split_first()) {
                    (None, _) => Some(Value::Null),
                    (Some(v), None) => Some(output_of(v)),
                    (Some(v), Some((Segment::Key(k), rest))) if k == "output" => read_path(v, rest),
                    (Some(_), Some((Segment::Key(_), _))) => Some(Value::Null),
                    (Some(_), Some((Segment::Index(_), _))) => None,
                }
            }
            (Root::Strings(strings), Some((Segment::Key(name), rest))) => match strings.get(name) {
                None => Some(Value::Null),
                Some(v) => read_path(&Value::String(v.clone()), rest),
            },
        }
    }
}

/// A step's entry in `.steps`.
fn output_of(v: &serde_json::Value) -> serde_json::Value {
    let mut entry = serde_json::Map::new();
    entry.insert("output".into(), v.clone());
    serde_json::Value::Object(entry)
}

impl<'a> Context<'a> {
    pub fn new(value: &serde_json::Value) -> Self {
        Self::owned(value.clone())
    }

    pub fn owned(value: serde_json::Value) -> Self {
        Self {
            roots: Vec::new(),
            whole: std::sync::OnceLock::from(value),
        }
    }

    /// An object of these roots, in this order (a name given twice: the last counts).
    pub fn of(roots: Vec<(&'static str, Root<'a>)>) -> Self {
        Self {
            roots,
            whole: std::sync::OnceLock::new(),
        }
    }

    /// The context with more roots (a name it holds already is replaced).
    pub fn with(mut self, more: impl IntoIterator<Item = (&'static str, Root<'a>)>) -> Self {
        match self.whole.take() {
            Some(mut whole) => {
                for (name, root) in more {
                    whole[name] = root.to_value();
                }
                self.whole = std::sync::OnceLock::from(whole);
            }
            None => self.roots.extend(more),
        }
        self
    }

    /// The whole object, built the first time it is asked for.
    pub fn value(&self) -> &serde_json::Value {
        self.whole.get_or_init(|| {
            serde_json::Value::Object(
                self.roots
                    .iter()
                    .map(|(name, root)| (name.to_string(), root.to_value()))
                    .collect(),
            )
        })
    }

    /// The whole object, taken.
    pub fn into_value(self) -> serde_json::Value {
        self.value();
        self.whole.into_inner().unwrap_or_default()
    }

    /// What jq gives for `path`; `None` when jq must decide.
    fn read(&self, path: &[Segment]) -> Option<serde_json::Value> {
        if let Some(whole) = self.whole.get() {
            return read_path(whole, path);
        }
        match path.split_first() {
            Some((Segment::Key(name), rest)) => {
                match self.roots.iter().rev().find(|(n, _)| n == name) {
                    Some((_, root)) => root.read(rest),
                    None => Some(serde_json::Value::Null),
                }
            }
            // an object indexed by a number (a path is never empty): jq's error
            _ => None,
        }
    }
}

/// A JSON value whose strings may hold templates, compiled once.
#[derive(Debug, Clone, PartialEq)]
pub enum ValueTemplate {
    /// A value without templates, used as is.
    Literal(serde_json::Value),
    Template(Template),
    Array(Vec<ValueTemplate>),
    Object(Vec<(String, ValueTemplate)>),
}

impl ValueTemplate {
    /// Compiles every template inside `value`.
    pub fn compile(value: &serde_json::Value) -> Result<Self, TemplateError> {
        Ok(match value {
            serde_json::Value::String(s) if s.contains("${") => {
                ValueTemplate::Template(Template::parse(s)?)
            }
            serde_json::Value::Array(items) => {
                ValueTemplate::Array(items.iter().map(Self::compile).collect::<Result<_, _>>()?)
            }
            serde_json::Value::Object(map) => ValueTemplate::Object(
                map.iter()
                    .map(|(k, v)| Ok((k.clone(), Self::compile(v)?)))
                    .collect::<Result<_, TemplateError>>()?,
            ),
            other => ValueTemplate::Literal(other.clone()),
        }
        .simplify())
    }

    /// A subtree without templates becomes one literal.
    pub fn simplify(self) -> Self {
        match &self {
            ValueTemplate::Array(items)
                if items.iter().all(|i| matches!(i, ValueTemplate::Literal(_))) =>
            {
                ValueTemplate::Literal(serde_json::Value::Array(
                    items.iter().filter_map(Self::literal).cloned().collect(),
                ))
            }
            ValueTemplate::Object(entries)
                if entries
                    .iter()
                    .all(|(_, v)| matches!(v, ValueTemplate::Literal(_))) =>
            {
                ValueTemplate::Literal(serde_json::Value::Object(
                    entries
                        .iter()
                        .filter_map(|(k, v)| Some((k.clone(), v.literal()?.clone())))
                        .collect(),
                ))
            }
            _ => self,
        }
    }

    fn literal(&self) -> Option<&serde_json::Value> {
        match self {
            ValueTemplate::Literal(v) => Some(v),
            _ => None,
        }
    }

    pub fn render(&self, ctx: &Context<'_>) -> Result<serde_json::Value, TemplateError> {
        Ok(match self {
            ValueTemplate::Literal(v) => v.clone(),
            ValueTemplate::Template(t) => t.render(ctx)?,
            ValueTemplate::Array(items) => serde_json::Value::Array(
                items
                    .iter()
                    .map(|i| i.render(ctx))
                    .collect::<Result<_, _>>()?,
            ),
            ValueTemplate::Object(entries) => serde_json::Value::Object(
                entries
                    .iter()
                    .map(|(k, v)| Ok((k.clone(), v.render(ctx)?)))
                    .collect::<Result<_, TemplateError>>()?,
            ),
        })
    }
}

/// The length of the expression before its closing `}`, skipping nested braces and strings.
fn closing_brace(s: &str) -> Option<usize> {
    let mut depth = 0usize;
    let mut in_string = false;
    let mut escaped = false;
    for (i, c) in s.char_indices() {
        match (in_string, c) {
            (true, _) if escaped => escaped = false,
            (true, '\\') => escaped = true,
            (true, '"') => in_string = false,
            (true, _) => {}
            (false, '"') => in_string = true,
            (false, '{') => depth += 1,
            (false, '}') if depth == 0 => return Some(i),
            (false, '}') => depth -= 1,
            _ => {}
        }
    }
    None
}

fn compile(expr: &str) -> Result<Compiled, TemplateError> {
    if expr.is_empty() {
        return Err(TemplateError::Syntax {
            expr: String::new(),
            reason: "the expression is empty".into(),
        });
    }
    Compiled::new(expr).map_err(|e| match e {
        CompileError::Syntax(reason) => TemplateError::Syntax {
            expr: expr.to_string(),
            reason,
        },
        CompileError::Forbidden { name, why } => TemplateError::Forbidden {
            expr: expr.to_string(),
            name,
            why,
        },
    })
}

fn eval(part: &Part, ctx: &Context<'_>) -> Result<serde_json::Value, TemplateError> {
    match part {
        Part::Text(t) => Ok(serde_json::Value::String(t.clone())),
        Part::Path(expr, path, compiled) => match ctx.read(path) {
            Some(v) => Ok(v),
            None => eval(&Part::Expr(expr.clone(), compiled.clone()), ctx),
        },
        Part::Expr(expr, compiled) => {
            sandbox::eval(expr, compiled, ctx.value()).map_err(|e| match e {
                EvalError::Failed(reason) => TemplateError::Eval {
                    expr: expr.clone(),
                    reason,
                },
                EvalError::Exceeded(exceeded) => TemplateError::Budget {
                    expr: expr.clone(),
                    exceeded,
                },
            })
        }
    }
}

/// The segments of an expression that is only a path of plain names and
/// indexes (`.a.b`, `.a["b-c"]`, `.a[0]`), else `None` (jq evaluates it).
fn path_of(expr: &str) -> Option<Vec<Segment>> {
    let mut rest = expr.strip_prefix('.')?;
    let mut path = Vec::new();
    let mut first = true;
    while !rest.is_empty() {
        if let Some(r) = rest.strip_prefix("[\"") {
            let end = r.find('"')?;
            let key = &r[..end];
            if key.contains('\\') {
                return None;
            }
            path.push(Segment::Key(key.to_string()));
            rest = r[end + 1..].strip_prefix(']')?;
        } else if let Some(r) = rest.strip_prefix('[') {
            let end = r.find(']')?;
            let digits = &r[..end];
            if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) || digits.len() > 9
            {
                return None;
            }
            path.push(Segment::Index(digits.parse().ok()?));
            rest = &r[end + 1..];
        } else {
            let r = if first { rest } else { rest.strip_prefix('.')? };
            let len = r
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(r.len());
            let name = &r[..len];
            if name.is_empty() || name.starts_with(|c: char| c.is_ascii_digit()) {
                return None;
            }
            path.push(Segment::Key(name.to_string()));
            rest = &r[len..];
        }
        first = false;
    }
    (!path.is_empty()).then_some(path)
}

/// What jq gives for a path through objects, arrays and nulls; `None` when
/// it meets a value of another type (jq decides what that means).
fn read_path(value: &serde_json::Value, path: &[Segment]) -> Option<serde_json::Value> {
    use serde_json::Value;
    let mut at = value;
    for seg in path {
        at = match (at, seg) {
            (Value::Null, _) => return Some(Value::Null),
            (Value::Object(map), Segment::Key(k)) => match map.get(k) {
                Some(v) => v,
                None => return Some(Value::Null),
            },
            (Value::Array(items), Segment::Index(i)) => match items.get(*i as usize) {
                Some(v) => v,
                None => return Some(Value::Null),
            },
            _ => return None,
        };
    }
    Some(at.clone())
}

/// `.steps.NAME`, `.steps["NAME"]` and `.env.NAME` in an expression, and an unknown first root.
fn references_in(expr: &str) -> Vec<Reference> {
    let mut refs = Vec::new();
    for (root, make) in [
        ("steps", Reference::Step as fn(String) -> Reference),
        ("env", Reference::Env),
    ] {
        let needle = format!(".{root}");
        let mut from = 0;
        while let Some(i) = expr[from..].find(&needle) {
            let start = from + i;
            from = start + needle.len();
            let preceded_by_ident = expr[..start]
                .chars()
                .next_back()
                .is_some_and(|c| c.is_alphanumeric() || c == '_');
            if preceded_by_ident {
                continue;
            }
            let rest = &expr[from..];
            let name = if let Some(r) = rest.strip_prefix('.') {
                ident(r)
            } else if let Some(r) = rest.strip_prefix("[\"") {
                r.split('"').next().map(str::to_string)
            } else {
                continue;
            };
            if let Some(name) = name.filter(|n| !n.is_empty()) {
                refs.push(make(name));
            }
        }
    }
    for root in ["item", "index"] {
        let needle = format!(".{root}");
        let mut from = 0;
        while let Some(i) = expr[from..].find(&needle) {
            let start = from + i;
            from = start + needle.len();
            let preceded = expr[..start]
                .chars()
                .next_back()
                .is_some_and(|c| c.is_alphanumeric() || c == '_' || c == ']' || c == '"');
            let followed = expr[from..]
                .chars()
                .next()
                .is_some_and(|c| c.is_alphanumeric() || c == '_');
            if !preceded && !followed {
                refs.push(Reference::Element(root.to_string()));
                break;
            }
        }
    }
    if let Some(first) = expr.trim_start().strip_prefix('.').and_then(ident) {
        if !first.is_empty() && !ROOTS.contains(&first.as_str()) {
            refs.push(Reference::UnknownRoot(first));
        }
    }
    refs
}

fn ident(s: &str) -> Option<String> {
    let name: String = s
        .chars()
        .take_while(|c| c.is_alphanumeric() || *c == '_')
        .collect();
    Some(name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn ctx() -> Context<'static> {
        Context::new(
            &json!({"input": {"order_id": "o-1", "amount": 120.5, "items": [{"sku": "a", "qty": 2}]},
               "steps": {"reserve": {"output": {"reservation_id": "r-9"}}},
               "env": {"base": "http://127.0.0.1:8080"}}),
        )
    }

    #[test]
    fn paths_read_from_borrowed_roots_as_jq_reads_the_whole_object() {
        let input = json!({"order_id": "o-1", "items": [{"sku": "a", "qty": 2}], "n": null});
        let outputs: std::collections::BTreeMap<String, serde_json::Value> = [
            ("reserve".to_string(), json!({"reservation_id": "r-9"})),
            ("pay".to_string(), json!([1, 2])),
        ]
        .into();
        let env: std::collections::BTreeMap<String, String> =
            [("base".to_string(), "http://127.0.0.1:8080".to_string())].into();
        let roots = || {
            Context::of(vec![
                ("input", Root::Value(std::borrow::Cow::Borrowed(&input))),
                ("steps", Root::Outputs(&outputs)),
                ("env", Root::Strings(&env)),
                ("instance", Root::Made(Box::new(|| json!({"id": "i-1"})))),
            ])
        };
        let whole = roots().into_value();
        assert_eq!(
            whole,
            json!({"input": input, "steps": {"reserve": {"output": {"reservation_id": "r-9"}}, "pay": {"output": [1, 2]}},
                   "env": {"base": "http://127.0.0.1:8080"}, "instance": {"id": "i-1"}})
        );
        for path in [
            ".input",
            ".input.order_id",
            ".input.items[0].qty",
            ".input.items[7]",
            ".input.n.deeper",
            ".input.order_id.x",
            ".steps",
            ".steps.reserve",
            ".steps.reserve.output",
            ".steps.reserve.output.reservation_id",
            ".steps.reserve.other",
            ".steps.reserve[0]",
            ".steps.pay.output[1]",
            ".steps.missing.output",
            ".env",
            ".env.base",
            ".env.missing",
            ".env.base.x",
            ".instance.id",
            ".nothing.at_all",
            ".[0]",
        ] {
            let t = Template::parse(&format!("${{ {path} }}")).unwrap();
            assert_eq!(
                format!("{:?}", t.render(&roots())),
                format!("{:?}", t.render(&Context::new(&whole))),
                "{path}"
            );
        }
        // with more roots, and a context given whole
        let more = roots().with([("item", Root::Value(std::borrow::Cow::Owned(json!(3))))]);
        assert_eq!(more.read(&[Segment::Key("item".into())]), Some(json!(3)));
        let more = Context::new(&whole).with([("item", Root::Strings(&env))]);
        assert_eq!(more.value()["item"]["base"], json!("http://127.0.0.1:8080"));
    }

    #[test]
    fn a_lone_expression_keeps_its_type() {
        let t = Template::parse("${ .input.amount }").unwrap();
        assert_eq!(t.render(&ctx()).unwrap(), json!(120.5));
    }

    #[test]
    fn text_splices_values() {
        let t = Template::parse(
            "${ .env.base }/demo/orders/${ .input.order_id }?qty=${ .input.items[0].qty }",
        )
        .unwrap();
        assert_eq!(
            t.render(&ctx()).unwrap(),
            json!("http://127.0.0.1:8080/demo/orders/o-1?qty=2")
        );
    }

    #[test]
    fn expressions_may_hold_braces_and_strings() {
        let t = Template::parse("${ {id: .input.order_id, s: \"}\"} }").unwrap();
        assert_eq!(t.render(&ctx()).unwrap(), json!({"id": "o-1", "s": "}"}));
    }

    #[test]
    fn renders_templates_inside_values() {
        let body = json!({"order": "${ .input.order_id }", "lines": ["${ .steps.reserve.output.reservation_id }", 3], "fixed": {"a": [1, 2]}});
        let t = ValueTemplate::compile(&body).unwrap();
        assert_eq!(
            t.render(&ctx()).unwrap(),
            json!({"order": "o-1", "lines": ["r-9", 3], "fixed": {"a": [1, 2]}})
        );
        let ValueTemplate::Object(entries) = &t else {
            panic!("{t:?}")
        };
        let fixed = entries.iter().find(|(k, _)| k == "fixed").map(|(_, v)| v);
        assert!(
            matches!(fixed, Some(ValueTemplate::Literal(_))),
            "a subtree without templates is one literal"
        );
        assert_eq!(
            ValueTemplate::compile(&json!({"a": [1]})).unwrap(),
            ValueTemplate::Literal(json!({"a": [1]}))
        );
    }

    #[test]
    fn refuses_bad_syntax_and_unclosed_expressions() {
        assert!(matches!(
            Template::parse("${ .input. | }"),
            Err(TemplateError::Syntax { .. })
        ));
        assert!(matches!(
            Template::parse("${ nosuchfn(1) }"),
            Err(TemplateError::Syntax { .. })
        ));
        assert!(matches!(
            Template::parse("x ${ .input"),
            Err(TemplateError::Unclosed(2))
        ));
        assert!(matches!(
            Template::parse("${}"),
            Err(TemplateError::Syntax { .. })
        ));
    }

    #[test]
    fn finds_references() {
        let t = Template::parse("${ .steps.reserve.output.id } ${ .steps[\"pay\"].output } ${ .env.base } ${ .inputs.x }").unwrap();
        assert_eq!(
            t.references(),
            vec![
                Reference::Step("reserve".into()),
                Reference::Step("pay".into()),
                Reference::Env("base".into()),
                Reference::UnknownRoot("inputs".into()),
            ]
        );
    }
}

#[cfg(test)]
mod properties {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    fn context() -> serde_json::Value {
        json!({"input": {"order_id": "o-1", "n": 3, "items": [{"sku": "a"}, null], "s": "text"},
               "steps": {"pay": {"output": {"id": 7}}}, "env": {}, "instance": {"id": "i"}})
    }

    fn segment() -> impl Strategy<Value = String> {
        prop_oneof![
            prop::sample::select(vec![
                "input", "steps", "order_id", "items", "sku", "pay", "output", "id", "s", "n",
                "missing"
            ])
            .prop_map(|k| format!(".{k}")),
            prop::sample::select(vec!["input", "a b", "order_id"])
                .prop_map(|k| format!("[\"{k}\"]")),
            (0u8..3).prop_map(|i| format!("[{i}]")),
        ]
    }

    proptest! {
        /// A path read without jq gives what jq gives (value or error).
        #[test]
        fn fast_paths_agree_with_jq(segs in prop::collection::vec(segment(), 1..5)) {
            let mut expr = segs.concat();
            if !expr.starts_with('.') {
                expr.insert(0, '.');
            }
            let Some(path) = path_of(&expr) else { return Ok(()) };
            let ctx = context();
            let Some(fast) = read_path(&ctx, &path) else { return Ok(()) };
            let jq = Compiled::new(&expr)
                .map_err(|e| format!("{e:?}"))
                .and_then(|c| c.run(&ctx, &sandbox::Budget::default()).map_err(|e| format!("{e:?}")));
            prop_assert_eq!(Ok(fast), jq, "{}", expr);
        }

        /// Any text as a template: parse and render never panic, and every
        /// evaluation ends within its budget.
        #[test]
        fn any_text_is_safe_to_parse_and_render(expr in "[ -~]{0,40}") {
            let text = format!("${{ {expr} }}");
            if let Ok(t) = Template::parse(&text) {
                let _ = t.render(&Context::owned(context()));
            }
        }

    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(32))]
        /// Programs built from jq's looping and growing parts end within the
        /// budget in process. (Single operations that build huge values, like
        /// `tostring` of a value shared 2^50 times, or `catch` taking an error
        /// that quotes it, are only bounded by the process sandbox:
        /// tests/template_sandbox.rs. So the doubling here stops at 2^16.)
        #[test]
        fn generated_programs_end_within_the_budget(
            parts in prop::collection::vec(prop::sample::select(vec![
                "range(.input.n)", "repeat(.)", "[.,.]", ". + .", "recurse", "..", "limit(3; repeat(1))",
                "length", "[.[]?]", "def f: f; f", "def g: [g]; g", "\"x\" * 1000",
                "reduce range(16) as $i (.; [., .])", "until(false; .)", "while(true; .)", "keys?", "add?",
                "to_entries?", "paths", "getpath([\"a\"])", "splits(\"x\")?",
            ]), 1..5)
        ) {
            // one doubling at most: two make 2^32 leaves, which one native
            // operation (an error message) writes out whole, between two terms
            prop_assume!(parts.iter().filter(|p| p.starts_with("reduce")).count() <= 1);
            let expr = parts.join(" | ");
            if let Ok(t) = Template::parse(&format!("${{ {expr} }}")) {
                let _ = t.render(&Context::owned(context()));
            }
        }
    }
}

#[cfg(test)]
mod send_check {
    fn is_send_sync<T: Send + Sync>() {}
    #[test]
    fn filters_can_be_shared() {
        is_send_sync::<super::Compiled>();
        is_send_sync::<super::Template>();
    }
}
