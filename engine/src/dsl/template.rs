//! Templates: text with `${ jq }` expressions, evaluated with jaq against the
//! saga's context `{input, steps, env, instance}`.
//!
//! A string that is exactly one `${ … }` yields the expression's JSON value
//! (a number stays a number); anywhere else the value is spliced into the
//! text (strings as they are, other values as JSON).

use std::fmt;
use std::sync::{Arc, OnceLock};

use jaq_core::load::{parse::Def, Arena, File, Loader};
use jaq_core::{data, Compiler, Ctx, Vars};
use jaq_json::Val;

/// The top-level names a template's context holds.
pub const ROOTS: [&str; 4] = ["input", "steps", "env", "instance"];

#[derive(Clone)]
enum Part {
    Text(String),
    /// The expression's text and its compiled filter (compiled once, run many times).
    Expr(String, Arc<Filter>),
}

impl PartialEq for Part {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (Part::Text(a), Part::Text(b)) | (Part::Expr(a, _), Part::Expr(b, _)) => a == b,
            _ => false,
        }
    }
}

impl fmt::Debug for Part {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Part::Text(t) => f.debug_tuple("Text").field(t).finish(),
            Part::Expr(e, _) => f.debug_tuple("Expr").field(e).finish(),
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
    #[error("expression `{expr}` failed: {reason}")]
    Eval { expr: String, reason: String },
}

/// A reference from a template to an earlier step's data (`.steps.NAME`) or an env value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reference {
    Step(String),
    Env(String),
    /// The expression starts with `.NAME` where NAME is not a context root.
    UnknownRoot(String),
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
            parts.push(Part::Expr(expr, filter));
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
            Part::Expr(e, _) => Some(e.as_str()),
            Part::Text(_) => None,
        })
    }

    /// What the expressions read from the context: steps and env values by name.
    pub fn references(&self) -> Vec<Reference> {
        self.expressions().flat_map(references_in).collect()
    }

    /// Evaluates the template against `ctx`.
    pub fn render(&self, ctx: &Context) -> Result<serde_json::Value, TemplateError> {
        if let [Part::Expr(e, filter)] = self.parts.as_slice() {
            return eval(e, filter, ctx);
        }
        let mut out = String::new();
        for part in &self.parts {
            match part {
                Part::Text(t) => out.push_str(t),
                Part::Expr(e, filter) => match eval(e, filter, ctx)? {
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
                Part::Expr(e, _) => write!(f, "${{ {e} }}")?,
            }
        }
        Ok(())
    }
}

/// The data templates are evaluated against, converted once for all of a render's expressions.
pub struct Context(Val);

impl Context {
    pub fn new(value: &serde_json::Value) -> Result<Self, TemplateError> {
        jaq_json::read::parse_single(value.to_string().as_bytes())
            .map(Context)
            .map_err(|e| TemplateError::Eval {
                expr: String::new(),
                reason: format!("the context is not JSON: {e}"),
            })
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

    pub fn render(&self, ctx: &Context) -> Result<serde_json::Value, TemplateError> {
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

type Filter = jaq_core::compile::Filter<jaq_core::Native<data::JustLut<Val>>>;

fn compile(expr: &str) -> Result<Filter, TemplateError> {
    let syntax = |reason: String| TemplateError::Syntax {
        expr: expr.to_string(),
        reason,
    };
    if expr.is_empty() {
        return Err(syntax("the expression is empty".into()));
    }
    let defs = std_defs().iter().cloned();
    let funs = jaq_core::funs()
        .chain(jaq_std::funs())
        .chain(jaq_json::funs());
    let arena = Arena::default();
    let modules = Loader::new(defs)
        .load(
            &arena,
            File {
                code: expr,
                path: (),
            },
        )
        .map_err(|errs| syntax(load_errors(expr, &errs)))?;
    Compiler::default()
        .with_funs(funs)
        .compile(modules)
        .map_err(|errs| {
            let names: Vec<String> = errs
                .iter()
                .flat_map(|(_, es)| {
                    es.iter()
                        .map(|(name, kind)| format!("undefined {kind:?} `{name}`").to_lowercase())
                })
                .collect();
            syntax(names.join(", "))
        })
}

/// jq's standard definitions, parsed once.
fn std_defs() -> &'static [Def<&'static str>] {
    static DEFS: OnceLock<Vec<Def<&'static str>>> = OnceLock::new();
    DEFS.get_or_init(|| {
        jaq_core::defs()
            .chain(jaq_std::defs())
            .chain(jaq_json::defs())
            .collect()
    })
}

fn load_errors(expr: &str, errs: &jaq_core::load::Errors<&str, ()>) -> String {
    use jaq_core::load::Error;
    let at = |s: &str| {
        let pos = (s.as_ptr() as usize).saturating_sub(expr.as_ptr() as usize);
        if s.is_empty() || pos >= expr.len() {
            "at the end".to_string()
        } else {
            format!("at `{}`", s.chars().take(12).collect::<String>())
        }
    };
    let msgs: Vec<String> = errs
        .iter()
        .flat_map(|(_, e)| match e {
            Error::Io(es) => es.iter().map(|(_, m)| m.clone()).collect::<Vec<_>>(),
            Error::Lex(es) => es
                .iter()
                .map(|(want, s)| format!("expected {} {}", want.as_str(), at(s)))
                .collect(),
            Error::Parse(es) => es
                .iter()
                .map(|(want, s)| format!("expected {} {}", want.as_str(), at(s)))
                .collect(),
        })
        .collect();
    msgs.join("; ")
}

fn eval(expr: &str, filter: &Filter, ctx: &Context) -> Result<serde_json::Value, TemplateError> {
    let fail = |reason: String| TemplateError::Eval {
        expr: expr.to_string(),
        reason,
    };
    let input = ctx.0.clone();
    let ctx = Ctx::<data::JustLut<Val>>::new(&filter.lut, Vars::new([]));
    let mut out = filter.id.run((ctx, input)).map(jaq_core::unwrap_valr);
    let value = match out.next() {
        None => return Ok(serde_json::Value::Null),
        Some(Err(e)) => return Err(fail(e.to_string())),
        Some(Ok(v)) => v,
    };
    serde_json::from_str(&value.to_string())
        .map_err(|e| fail(format!("the result is not JSON: {e}")))
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

    fn ctx() -> Context {
        Context::new(&json!({"input": {"order_id": "o-1", "amount": 120.5, "items": [{"sku": "a", "qty": 2}]},
               "steps": {"reserve": {"output": {"reservation_id": "r-9"}}},
               "env": {"base": "http://127.0.0.1:8080"}}))
        .unwrap()
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
mod send_check {
    fn is_send_sync<T: Send + Sync>() {}
    #[test]
    fn filters_can_be_shared() {
        is_send_sync::<super::Filter>();
    }
}
