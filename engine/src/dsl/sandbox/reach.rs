//! Which standard definitions an expression can reach.
//!
//! jaq compiles every definition it is given into the filter, so compiling
//! each template against the whole library cost about 65 KB of memory and
//! 1.5 M instructions per template, most of it for definitions the template
//! never calls. A template is compiled against the definitions it names and
//! the ones those call, in the library's order; a name is matched whatever
//! its arity, which can only keep more than needed.

use std::collections::HashSet;
use std::sync::OnceLock;

use jaq_core::load::lex::{Lexer, StrPart, Tok, Token};
use jaq_core::load::parse::{BinaryOp, Def, Pattern, Term};
use jaq_core::path::Part;

use super::std_defs;

/// The definitions of the library ([`std_defs`]) that `expr` can reach, in their order.
pub(super) fn reachable(expr: &str) -> Vec<Def<&'static str>> {
    let defs = std_defs();
    let mut wanted: HashSet<&str> = HashSet::new();
    if let Ok(tokens) = Lexer::new(expr).lex() {
        words(&tokens, &mut wanted);
    }
    let calls = calls_of();
    // a definition calls only itself and those before it, so one pass from
    // the last definition to the first finds everything reachable
    let mut keep = vec![false; defs.len()];
    for i in (0..defs.len()).rev() {
        if wanted.contains(defs[i].name) {
            keep[i] = true;
            wanted.extend(calls[i].iter().copied());
        }
    }
    defs.iter()
        .zip(keep)
        .filter(|(_, k)| *k)
        .map(|(d, _)| d.clone())
        .collect()
}

/// The names each definition of the library calls, computed once.
fn calls_of() -> &'static [Vec<&'static str>] {
    static CALLS: OnceLock<Vec<Vec<&'static str>>> = OnceLock::new();
    CALLS.get_or_init(|| {
        std_defs()
            .iter()
            .map(|d| {
                let mut out = Vec::new();
                calls(&d.body, &mut out);
                out
            })
            .collect()
    })
}

/// Every word and format of the tokens (names of filters among them).
fn words<'a>(tokens: &[Token<&'a str>], out: &mut HashSet<&'a str>) {
    for Token(text, tok) in tokens {
        match tok {
            Tok::Word | Tok::Fmt => {
                out.insert(text);
            }
            Tok::Block(inner) => words(inner, out),
            Tok::Str(parts) => {
                for part in parts {
                    if let StrPart::Term(t) = part {
                        words(std::slice::from_ref(t), out);
                    }
                }
            }
            Tok::Var | Tok::Num | Tok::Sym => {}
        }
    }
}

/// The names `t` calls, formats included.
fn calls<'a>(t: &Term<&'a str>, out: &mut Vec<&'a str>) {
    match t {
        Term::Id | Term::Recurse | Term::Num(_) | Term::Var(_) | Term::Break(_) => {}
        Term::Str(format, parts) => {
            out.extend(format.iter().copied());
            for part in parts {
                if let StrPart::Term(t) = part {
                    calls(t, out);
                }
            }
        }
        Term::Arr(t) => t.iter().for_each(|t| calls(t, out)),
        Term::Obj(pairs) => {
            for (k, v) in pairs {
                calls(k, out);
                v.iter().for_each(|v| calls(v, out));
            }
        }
        Term::Neg(t) | Term::Label(_, t) => calls(t, out),
        Term::BinOp(l, op, r) => {
            calls(l, out);
            if let BinaryOp::Pipe(Some(p)) = op {
                pattern(p, out);
            }
            calls(r, out);
        }
        Term::Fold(_, xs, p, args) => {
            calls(xs, out);
            pattern(p, out);
            args.iter().for_each(|t| calls(t, out));
        }
        Term::TryCatch(t, c) => {
            calls(t, out);
            c.iter().for_each(|c| calls(c, out));
        }
        Term::IfThenElse(branches, otherwise) => {
            for (cond, then) in branches {
                calls(cond, out);
                calls(then, out);
            }
            otherwise.iter().for_each(|t| calls(t, out));
        }
        Term::Def(defs, t) => {
            defs.iter().for_each(|d| calls(&d.body, out));
            calls(t, out);
        }
        Term::Call(name, args) => {
            out.push(name);
            args.iter().for_each(|t| calls(t, out));
        }
        Term::Path(t, path) => {
            calls(t, out);
            for (part, _) in &path.0 {
                match part {
                    Part::Index(i) => calls(i, out),
                    Part::Range(from, upto) => {
                        from.iter().chain(upto).for_each(|t| calls(t, out));
                    }
                }
            }
        }
    }
}

fn pattern<'a>(p: &Pattern<&'a str>, out: &mut Vec<&'a str>) {
    match p {
        Pattern::Var(_) => {}
        Pattern::Arr(ps) => ps.iter().for_each(|p| pattern(p, out)),
        Pattern::Obj(pairs) => {
            for (k, p) in pairs {
                calls(k, out);
                pattern(p, out);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(expr: &str) -> Vec<&'static str> {
        reachable(expr).iter().map(|d| d.name).collect()
    }

    #[test]
    fn a_template_keeps_what_it_calls_and_what_that_calls() {
        let kept = names(".items | map(.qty) | add");
        assert!(kept.contains(&"map"), "{kept:?}");
        assert!(kept.len() < 10, "{kept:?}");
        assert!(names(".a").is_empty());
        // `@sh` calls `escape_sh`, a definition of its own
        let kept = names("@sh \"echo \\(.a)\"");
        assert!(kept.contains(&"@sh"), "{kept:?}");
        assert!(kept.len() < std_defs().len() / 4, "{kept:?}");
    }

    /// The pruned library compiles these (no fallback to the whole one), and
    /// they give what they give against the whole library.
    #[test]
    fn templates_run_alike_against_what_they_reach() {
        use super::super::{Budget, Compiled};
        use serde_json::json;
        let input = json!({"items": [{"sku": "a", "qty": 2}, {"sku": "b", "qty": 3}],
            "name": "x y", "n": 3, "nested": {"a": {"b": 1}}});
        for expr in [
            ".items | map(.qty) | add",
            "\"order-\\(.name)-\\(.n)\"",
            "@sh \"echo \\(.name)\"",
            "@base64 \"\\(.name)\"",
            "[..] | length",
            "reduce .items[] as $i (0; . + $i.qty)",
            "[limit(2; range(10))]",
            "first(.items[]) | .sku",
            "[paths] | length",
            ".nested |= with_entries(.value |= keys)",
            ".n += 1 | .n",
            "to_entries | map(.key) | join(\",\")",
            "[.items[] as {sku: $s, qty: $q} | [$s, $q]]",
            "[.items[] | select(.qty > 2) | .sku] | first // \"none\"",
            "def twice(f): f | f; .n | twice(. * 2)",
            "tostring | ascii_downcase | test(\"items\")",
        ] {
            let pruned = Compiled::against(expr, reachable(expr))
                .unwrap_or_else(|e| panic!("{expr}: {e:?}"));
            let whole = Compiled::against(expr, std_defs().iter().cloned()).unwrap();
            let budget = Budget::default();
            assert_eq!(
                pruned.run(&input, &budget),
                whole.run(&input, &budget),
                "{expr}"
            );
        }
    }

    #[test]
    fn the_library_calls_only_what_comes_before_it() {
        // the one pass of `reachable` relies on this
        let defs = std_defs();
        for (i, called) in calls_of().iter().enumerate() {
            for name in called {
                let later = defs[i + 1..].iter().any(|d| d.name == *name);
                let before = defs[..=i].iter().any(|d| d.name == *name);
                assert!(
                    !later || before,
                    "{} calls {name}, defined after it",
                    defs[i].name
                );
            }
        }
    }
}
