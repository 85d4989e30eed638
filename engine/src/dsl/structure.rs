//! Structural checks: the document against the language's JSON Schema, each
//! violation turned into a diagnostic that names the field and suggests a fix.

use std::sync::OnceLock;

use jsonschema::error::{TypeKind, ValidationErrorKind};
use jsonschema::paths::LocationSegment;
use jsonschema::{ValidationError, Validator};
use serde_json::Value;

use crate::diagnostic::{did_you_mean, Diagnostic, DocPath};

fn schema() -> &'static Value {
    static SCHEMA: OnceLock<Value> = OnceLock::new();
    SCHEMA.get_or_init(super::spec::json_schema)
}

fn validator() -> Option<&'static Validator> {
    static VALIDATOR: OnceLock<Option<Validator>> = OnceLock::new();
    VALIDATOR
        .get_or_init(|| jsonschema::validator_for(schema()).ok())
        .as_ref()
}

/// Every structural problem of `doc`.
pub fn check(doc: &Value) -> Vec<Diagnostic> {
    let Some(validator) = validator() else {
        return vec![Diagnostic::error(
            "internal",
            DocPath::root(),
            "the language schema failed to compile; this is a bug in sagaflow",
        )];
    };
    let mut out = Vec::new();
    for err in validator.iter_errors(doc) {
        translate(&err, &mut out);
    }
    out.dedup_by(|a, b| a.path == b.path && a.message == b.message);
    out
}

fn doc_path(err: &ValidationError<'_>) -> DocPath {
    let mut path = DocPath::root();
    for seg in err.instance_path() {
        path = match seg {
            LocationSegment::Property(p) => path.key(p.as_ref()),
            LocationSegment::Index(i) => path.index(i),
        };
    }
    path
}

fn translate(err: &ValidationError<'_>, out: &mut Vec<Diagnostic>) {
    let path = doc_path(err);
    let found = describe(err.instance());
    let diag = match err.kind() {
        ValidationErrorKind::AdditionalProperties { unexpected } => {
            let allowed = allowed_fields(&path);
            for field in unexpected {
                let mut d = Diagnostic::error(
                    "unknown-field",
                    path.key(field),
                    format!("unknown field `{field}`"),
                )
                .at_key();
                d = match did_you_mean(field, allowed.iter().map(String::as_str)) {
                    Some(s) => d.with_help(format!("did you mean `{s}`?")),
                    None => d.with_help(format!("expected one of: {}", allowed.join(", "))),
                };
                out.push(d);
            }
            return;
        }
        ValidationErrorKind::Required { property } => {
            let name = property.as_str().unwrap_or_default();
            Diagnostic::error(
                "missing-field",
                path,
                format!("missing required field `{name}`"),
            )
        }
        ValidationErrorKind::Type { kind } => Diagnostic::error(
            "wrong-type",
            path,
            format!("expected {}, found {found}", type_name(kind)),
        ),
        ValidationErrorKind::Enum { options } => {
            let opts: Vec<&str> = options
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                .collect();
            let d = Diagnostic::error(
                "unknown-value",
                path,
                format!("expected one of {}, found {found}", quoted(&opts)),
            );
            match err
                .instance()
                .as_str()
                .and_then(|s| did_you_mean(s, opts.iter().copied()))
            {
                Some(s) => d.with_help(format!("did you mean `{s}`?")),
                None => d,
            }
        }
        ValidationErrorKind::AnyOf { context } | ValidationErrorKind::OneOfNotValid { context } => {
            // Report inside the branch that got furthest, if any got past this node.
            // Report inside the branch whose shape the value has (an object
            // where an object is allowed), if there is one.
            let depth = err.instance_path().iter().count();
            let fitting = context
                .iter()
                .filter(|branch| branch.iter().all(|e| fits(e, depth)))
                .max_by_key(|branch| branch.iter().map(reach).max().unwrap_or(0));
            if let Some(branch) = fitting {
                for e in branch {
                    translate(e, out);
                }
                return;
            }
            let mut expected: Vec<String> = context
                .iter()
                .flat_map(|b| b.iter().flat_map(expectations))
                .collect();
            expected.dedup();
            let mut d = Diagnostic::error(
                "wrong-type",
                path,
                format!("expected {}, found {found}", expected.join(" or ")),
            );
            if let Some(s) = err.instance().as_str() {
                let words: Vec<String> = context.iter().flatten().flat_map(enum_words).collect();
                if let Some(w) = did_you_mean(s, words.iter().map(String::as_str)) {
                    d = d.with_help(format!("did you mean `{w}`?"));
                }
            }
            d
        }
        ValidationErrorKind::Minimum { limit } => Diagnostic::error(
            "out-of-range",
            path,
            format!("must be at least {limit}, found {found}"),
        ),
        ValidationErrorKind::Maximum { limit } => Diagnostic::error(
            "out-of-range",
            path,
            format!("must be at most {limit}, found {found}"),
        ),
        _ => Diagnostic::error("invalid-value", path, err.to_string()),
    };
    out.push(diag);
}

/// False when the error says the value at `depth` has the wrong kind for its branch.
fn fits(err: &ValidationError<'_>, depth: usize) -> bool {
    if err.instance_path().iter().count() != depth {
        return true;
    }
    match err.kind() {
        ValidationErrorKind::Type { .. }
        | ValidationErrorKind::Enum { .. }
        | ValidationErrorKind::Constant { .. } => false,
        ValidationErrorKind::AnyOf { context } | ValidationErrorKind::OneOfNotValid { context } => {
            context.iter().any(|b| b.iter().all(|e| fits(e, depth)))
        }
        _ => true,
    }
}

/// How deep into the document an error (or any branch nested in it) got.
fn reach(err: &ValidationError<'_>) -> usize {
    let own = err.instance_path().iter().count();
    match err.kind() {
        ValidationErrorKind::AnyOf { context } | ValidationErrorKind::OneOfNotValid { context } => {
            context
                .iter()
                .flatten()
                .map(reach)
                .max()
                .unwrap_or(own)
                .max(own)
        }
        _ => own,
    }
}

/// What the branches of an `anyOf` wanted, in words (absence is always allowed, so `null` is left out).
fn expectations(err: &ValidationError<'_>) -> Vec<String> {
    match err.kind() {
        ValidationErrorKind::Type { kind } => vec![type_name(kind)]
            .into_iter()
            .filter(|t| !t.is_empty())
            .collect(),
        ValidationErrorKind::Enum { .. } => vec![quoted(
            &enum_words(err)
                .iter()
                .map(String::as_str)
                .collect::<Vec<_>>(),
        )],
        ValidationErrorKind::AnyOf { context } | ValidationErrorKind::OneOfNotValid { context } => {
            context.iter().flatten().flat_map(expectations).collect()
        }
        _ => Vec::new(),
    }
}

/// The words an `enum` (possibly inside an `anyOf`) allows.
fn enum_words(err: &ValidationError<'_>) -> Vec<String> {
    match err.kind() {
        ValidationErrorKind::Enum { options } => options
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .map(str::to_string)
            .collect(),
        ValidationErrorKind::AnyOf { context } | ValidationErrorKind::OneOfNotValid { context } => {
            context.iter().flatten().flat_map(enum_words).collect()
        }
        _ => Vec::new(),
    }
}

fn quoted(words: &[&str]) -> String {
    words
        .iter()
        .map(|w| format!("`{w}`"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn type_name(kind: &TypeKind) -> String {
    let name = |t: &jsonschema::JsonType| match t.to_string().as_str() {
        "object" => "an object".to_string(),
        "array" => "a list".to_string(),
        "integer" => "a whole number".to_string(),
        "number" => "a number".to_string(),
        "string" => "text".to_string(),
        "boolean" => "true or false".to_string(),
        other => other.to_string(),
    };
    match kind {
        TypeKind::Single(t) if t.to_string() == "null" => String::new(),
        TypeKind::Single(t) => name(t),
        TypeKind::Multiple(set) => {
            let names: Vec<String> = set
                .iter()
                .filter(|t| t.to_string() != "null")
                .map(|t| name(&t))
                .collect();
            names.join(" or ")
        }
    }
}

fn describe(v: &Value) -> String {
    match v {
        Value::Null => "nothing".into(),
        Value::Bool(b) => format!("`{b}`"),
        Value::Number(n) => format!("the number {n}"),
        Value::String(s) if s.chars().count() > 40 => {
            format!("text \"{}…\"", s.chars().take(40).collect::<String>())
        }
        Value::String(s) => format!("text \"{s}\""),
        Value::Array(_) => "a list".into(),
        Value::Object(_) => "an object".into(),
    }
}

/// The field names the schema allows at `path` (for "did you mean").
fn allowed_fields(path: &DocPath) -> Vec<String> {
    use crate::diagnostic::PathSeg;
    let root = schema();
    let mut nodes = vec![root];
    for seg in &path.0 {
        nodes = nodes
            .into_iter()
            .flat_map(|n| branches(root, n))
            .filter_map(|n| match seg {
                PathSeg::Key(k) => n.get("properties")?.get(k),
                PathSeg::Index(_) => n.get("items"),
            })
            .collect();
    }
    let mut names: Vec<String> = nodes
        .into_iter()
        .flat_map(|n| branches(root, n))
        .filter_map(|n| n.get("properties")?.as_object())
        .flat_map(|props| props.keys().cloned())
        .collect();
    names.dedup();
    names
}

/// A schema node with `$ref` followed and `anyOf`/`oneOf` spread out.
fn branches<'a>(root: &'a Value, node: &'a Value) -> Vec<&'a Value> {
    let node = match node.get("$ref").and_then(Value::as_str) {
        Some(r) => r
            .strip_prefix("#/")
            .and_then(|p| p.split('/').try_fold(root, |n, seg| n.get(seg)))
            .unwrap_or(node),
        None => node,
    };
    let alts = ["anyOf", "oneOf"]
        .iter()
        .filter_map(|k| node.get(*k)?.as_array())
        .flatten()
        .flat_map(|alt| branches(root, alt))
        .collect::<Vec<_>>();
    if alts.is_empty() {
        vec![node]
    } else {
        alts
    }
}
