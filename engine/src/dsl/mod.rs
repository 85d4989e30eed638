//! The workflow language: YAML text in, a typed [`WorkflowSpec`] out, or every
//! problem located by line, column and path.
//!
//! Three passes, each reporting all it finds: [`yaml`] builds a located tree
//! under size, depth and alias limits; [`structure`] checks the tree against
//! the language's JSON Schema (generated from [`spec`]) and turns each
//! violation into a diagnostic with a "did you mean"; then serde builds the
//! typed spec. Meaning (references, templates, durations, pivots) is the
//! compiler's job.

pub mod sandbox;
pub mod spec;
mod structure;
pub mod template;
pub mod yaml;

pub use spec::WorkflowSpec;

use crate::diagnostic::{Anchor, Diagnostic, DocPath};

/// A workflow file that parsed: its typed spec and the tree it came from
/// (kept so later stages can locate what they find).
///
/// When the structure had problems that could be set aside (an unknown or
/// mistyped optional field), `problems` lists them and `spec` is the file
/// without those fields: good enough to find the file's other problems,
/// never to run.
#[derive(Debug, Clone)]
pub struct Parsed {
    pub spec: WorkflowSpec,
    pub tree: yaml::Node,
    pub problems: Vec<Diagnostic>,
}

/// How many rounds of setting fields aside are tried before giving up.
const REPAIR_ROUNDS: usize = 4;

/// Parses a workflow file. On failure, every syntax and structure problem
/// found, located.
pub fn parse(text: &str) -> Result<Parsed, Vec<Diagnostic>> {
    parse_with_limits(text, yaml::Limits::default())
}

pub fn parse_with_limits(text: &str, limits: yaml::Limits) -> Result<Parsed, Vec<Diagnostic>> {
    let tree = yaml::parse(text, limits).map_err(|e| {
        let d = Diagnostic::error(e.code, DocPath::root(), e.message).at(e.span);
        vec![match e.help {
            Some(h) => d.with_help(h),
            None => d,
        }]
    })?;
    let mut json = tree.to_json();
    let mut problems = structure::check(&json);
    let mut round = problems.clone();
    for _ in 0..REPAIR_ROUNDS {
        if round.is_empty() {
            break;
        }
        if !round.iter().all(|d| remove(&mut json, &d.path)) {
            locate(&mut problems, &tree);
            return Err(problems);
        }
        round = structure::check(&json);
        let fresh: Vec<Diagnostic> = round
            .iter()
            .filter(|d| !problems.iter().any(|p| knock_on(p, d)))
            .cloned()
            .collect();
        problems.extend(fresh);
    }
    if !round.is_empty() {
        locate(&mut problems, &tree);
        return Err(problems);
    }
    match serde_json::from_value::<WorkflowSpec>(json) {
        Ok(spec) => {
            locate(&mut problems, &tree);
            Ok(Parsed {
                spec,
                tree,
                problems,
            })
        }
        Err(e) => {
            problems.push(Diagnostic::error(
                "invalid-workflow",
                DocPath::root(),
                e.to_string(),
            ));
            locate(&mut problems, &tree);
            Err(problems)
        }
    }
}

/// Sets aside the field at `path`; false when it is not a field (the
/// document itself, or a list item whose removal would shift the others).
fn remove(json: &mut serde_json::Value, path: &DocPath) -> bool {
    use crate::diagnostic::PathSeg;
    let Some((PathSeg::Key(last), parent)) = path.0.split_last() else {
        return false;
    };
    let mut node = json;
    for seg in parent {
        node = match (node, seg) {
            (serde_json::Value::Object(o), PathSeg::Key(k)) => match o.get_mut(k) {
                Some(n) => n,
                None => return false,
            },
            (serde_json::Value::Array(a), PathSeg::Index(i)) => match a.get_mut(*i) {
                Some(n) => n,
                None => return false,
            },
            _ => return false,
        };
    }
    node.as_object_mut().and_then(|o| o.remove(last)).is_some()
}

/// Whether the problem `d` is only a knock-on effect of setting aside the
/// field `set_aside` complained of: it lies inside that field, repeats it,
/// or lies around it and names that field or the field it was probably
/// meant to be (a mistyped `max_attempts` is then missing; a misspelt `htp`
/// makes the step lack `http`; but a misspelt `retires` does not hide that
/// the step lacks an action).
pub fn knock_on(set_aside: &Diagnostic, d: &Diagnostic) -> bool {
    use crate::diagnostic::PathSeg;
    let (a, b) = (&set_aside.path, &d.path);
    if b.0.len() >= a.0.len() && b.0[..a.0.len()] == a.0[..] {
        return true;
    }
    if !related(a, b) {
        return false;
    }
    let field = match a.0.last() {
        Some(PathSeg::Key(k)) => Some(k.as_str()),
        _ => None,
    };
    let meant = set_aside.help.as_deref().and_then(|h| h.split('`').nth(1));
    let says = |text: &str| {
        [field, meant]
            .into_iter()
            .flatten()
            .any(|n| text.contains(&format!("`{n}`")) || text.contains(&format!("`{n}:")))
    };
    says(&d.message) || d.help.as_deref().is_some_and(says)
}

/// Whether one path lies inside the other (the document itself excepted).
fn related(a: &DocPath, b: &DocPath) -> bool {
    let n = a.0.len().min(b.0.len());
    n > 0 && a.0[..n] == b.0[..n]
}

/// Fills in the span of every diagnostic from its path: the key or the
/// value it names, or the nearest enclosing node that exists.
pub fn locate(diags: &mut [Diagnostic], tree: &yaml::Node) {
    for d in diags.iter_mut().filter(|d| d.span.is_none()) {
        let mut path = d.path.clone();
        loop {
            let span = match d.anchor {
                Anchor::Key if path == d.path => tree.key_span(&path),
                _ => None,
            }
            .or_else(|| tree.get(&path).map(yaml::Node::head_span));
            if let Some(span) = span {
                d.span = Some(span);
                break;
            }
            if path.0.pop().is_none() {
                break;
            }
        }
    }
    diags.sort_by_key(|d| (d.span.map(|s| s.start), d.severity));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn errors(text: &str) -> Vec<String> {
        let problems = match parse(text) {
            Ok(p) => p.problems,
            Err(e) => e,
        };
        problems.iter().map(ToString::to_string).collect()
    }

    #[test]
    fn parses_a_minimal_workflow() {
        let p = parse(
            "name: w\nsteps:\n  - name: a\n    http: {url: 'http://x'}\n    compensate: none\n",
        )
        .unwrap();
        assert_eq!(p.spec.name, "w");
        assert_eq!(p.spec.version, 1);
        assert_eq!(
            p.spec.steps[0].compensate,
            Some(spec::CompensateSpec::None(spec::NoCompensation::None))
        );
    }

    #[test]
    fn reports_all_structure_problems_at_once_with_locations() {
        let text = "name: w\nstepz: []\nsteps:\n  - name: a\n    retires: 3\n    timeout: 5\n";
        let errs = errors(text);
        assert_eq!(errs.len(), 3, "{errs:#?}");
        assert!(
            errs[0].starts_with("2:1: error[unknown-field] stepz"),
            "{errs:#?}"
        );
        assert!(errs[0].contains("did you mean `steps`"), "{errs:#?}");
        assert!(
            errs[1].starts_with("5:5: error[unknown-field] steps[0].retires"),
            "{errs:#?}"
        );
        assert!(errs[1].contains("`retry`"), "{errs:#?}");
        assert!(
            errs[2].starts_with("6:14: error[wrong-type] steps[0].timeout"),
            "{errs:#?}"
        );
    }

    #[test]
    fn explains_a_bad_compensation() {
        let errs = errors("name: w\nsteps:\n  - name: a\n    compensate: nothing\n");
        assert_eq!(errs.len(), 1, "{errs:#?}");
        assert!(
            errs[0].contains("expected `none` or an object"),
            "{errs:#?}"
        );
    }

    #[test]
    fn goes_inside_the_branch_that_fits() {
        let errs = errors("name: w\nsteps:\n  - name: a\n    compensate:\n      htp: {url: x}\n");
        assert_eq!(errs.len(), 1, "{errs:#?}");
        assert!(
            errs[0].starts_with("5:7: error[unknown-field] steps[0].compensate.htp"),
            "{errs:#?}"
        );
        assert!(errs[0].contains("did you mean `http`"), "{errs:#?}");
    }

    #[test]
    fn a_misspelt_field_hides_no_other_problem_of_its_step() {
        let text = "name: w\nsteps:\n  - name: a\n    retires: 3\n";
        let parsed = parse(text).unwrap();
        let checked = crate::compile::compile(&parsed);
        let codes: Vec<&str> = checked.diagnostics.iter().map(|d| d.code).collect();
        assert_eq!(
            codes,
            ["missing-action", "unknown-field"],
            "{:?}",
            checked.diagnostics
        );
        // a misspelt action is one problem, not two
        let text =
            "name: w\nsteps:\n  - name: a\n    htp: {url: 'http://x'}\n    compensate: none\n";
        let checked = crate::compile::compile(&parse(text).unwrap());
        let codes: Vec<&str> = checked.diagnostics.iter().map(|d| d.code).collect();
        assert_eq!(codes, ["unknown-field"], "{:?}", checked.diagnostics);
    }

    #[test]
    fn names_missing_fields_where_they_belong() {
        let errs = errors("name: w\nsteps:\n  - http: {url: x}\n");
        assert_eq!(errs.len(), 1, "{errs:#?}");
        assert!(
            errs[0]
                .starts_with("3:5: error[missing-field] steps[0]: missing required field `name`"),
            "{errs:#?}"
        );
    }
}
