//! A located YAML tree: every node keeps the span it came from, so later
//! stages can point at the exact line and column of a problem.
//!
//! The tree is built from `saphyr-parser` events with an explicit stack (no
//! recursion), under limits that make hostile input fail fast: a byte limit,
//! a nesting limit, and a node budget that counts alias expansions (so an
//! alias bomb is refused after a bounded amount of work).

use std::collections::HashMap;

use saphyr_parser::{Event, Marker, Parser, ScalarStyle};

use crate::diagnostic::{DocPath, PathSeg, Span};

/// Bounds on what a workflow file may be.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_bytes: usize,
    pub max_depth: usize,
    pub max_nodes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_bytes: 1024 * 1024,
            max_depth: 64,
            max_nodes: 100_000,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    pub value: Value,
    pub span: Span,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Key {
    pub name: String,
    pub span: Span,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    Seq(Vec<Node>),
    Map(Vec<(Key, Node)>),
}

/// Why the text is not a usable YAML document.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{message}")]
pub struct YamlError {
    pub code: &'static str,
    pub message: String,
    pub span: Span,
    pub help: Option<String>,
}

impl Node {
    /// The node at `path`, if there is one.
    pub fn get(&self, path: &DocPath) -> Option<&Node> {
        let mut node = self;
        for seg in &path.0 {
            node = node.child(seg)?.1;
        }
        Some(node)
    }

    /// Where to point at this node: a mapping or list is pointed at by its
    /// first line (its first key, or its first item), not its whole extent.
    pub fn head_span(&self) -> Span {
        match &self.value {
            Value::Map(entries)
                if entries
                    .last()
                    .is_some_and(|(_, v)| v.span.line == self.span.line) =>
            {
                self.span
            }
            Value::Map(entries) => entries.first().map_or(self.span, |(k, v)| {
                if v.span.line == k.span.line && !matches!(v.value, Value::Map(_) | Value::Seq(_)) {
                    Span {
                        end: v.span.end,
                        ..k.span
                    }
                } else {
                    k.span
                }
            }),
            Value::Seq(items) if self.span.line != items.last().map_or(0, |n| n.span.line) => {
                items.first().map_or(self.span, Node::head_span)
            }
            _ => self.span,
        }
    }

    /// The span of the key that leads to the node at `path`, or of the node itself.
    pub fn key_span(&self, path: &DocPath) -> Option<Span> {
        let (last, parent) = path.0.split_last()?;
        let (key, _) = self.get(&DocPath(parent.to_vec()))?.child(last)?;
        key.map(|k| k.span)
    }

    fn child(&self, seg: &PathSeg) -> Option<(Option<&Key>, &Node)> {
        match (&self.value, seg) {
            (Value::Map(entries), PathSeg::Key(k)) => entries
                .iter()
                .find(|(key, _)| &key.name == k)
                .map(|(key, node)| (Some(key), node)),
            (Value::Seq(items), PathSeg::Index(i)) => items.get(*i).map(|n| (None, n)),
            _ => None,
        }
    }

    /// The same data as JSON; YAML mappings keep their key order.
    pub fn to_json(&self) -> serde_json::Value {
        use serde_json::Value as J;
        match &self.value {
            Value::Null => J::Null,
            Value::Bool(b) => J::Bool(*b),
            Value::Int(i) => J::from(*i),
            Value::Float(f) => serde_json::Number::from_f64(*f).map_or(J::Null, J::Number),
            Value::Str(s) => J::String(s.clone()),
            Value::Seq(items) => J::Array(items.iter().map(Node::to_json).collect()),
            Value::Map(entries) => J::Object(
                entries
                    .iter()
                    .map(|(k, v)| (k.name.clone(), v.to_json()))
                    .collect(),
            ),
        }
    }
}

/// Maps the parser's character positions to byte offsets.
struct Lines<'a> {
    text: &'a str,
    starts: Vec<usize>,
}

impl<'a> Lines<'a> {
    fn new(text: &'a str) -> Self {
        let starts = std::iter::once(0)
            .chain(text.match_indices('\n').map(|(i, _)| i + 1))
            .collect();
        Self { text, starts }
    }

    fn span(&self, start: Marker, end: Marker) -> Span {
        let start_byte = self.byte(start);
        Span {
            start: start_byte,
            end: self.byte(end).max(start_byte),
            line: start.line().max(1),
            column: start.col() + 1,
        }
    }

    fn point(&self, at: Marker) -> Span {
        self.span(at, at)
    }

    fn byte(&self, m: Marker) -> usize {
        let Some(&line_start) = self.starts.get(m.line().saturating_sub(1)) else {
            return self.text.len();
        };
        let rest = &self.text[line_start..];
        rest.char_indices()
            .nth(m.col())
            .map_or(self.text.len(), |(i, _)| line_start + i)
    }
}

enum Frame {
    Seq {
        items: Vec<Node>,
        start: Marker,
        anchor: usize,
        size: usize,
    },
    Map {
        entries: Vec<(Key, Node)>,
        key: Option<Key>,
        start: Marker,
        anchor: usize,
        size: usize,
    },
}

struct Builder<'a> {
    lines: Lines<'a>,
    limits: Limits,
    stack: Vec<Frame>,
    anchors: HashMap<usize, (Node, usize)>,
    nodes: usize,
    root: Option<Node>,
}

/// Parses one YAML document into a located tree.
pub fn parse(text: &str, limits: Limits) -> Result<Node, YamlError> {
    let lines = Lines::new(text);
    if text.len() > limits.max_bytes {
        return Err(YamlError {
            code: "file-too-large",
            message: format!(
                "the file is {} bytes; workflow files are limited to {} bytes",
                text.len(),
                limits.max_bytes
            ),
            span: lines.point(Marker::new(0, 1, 0)),
            help: None,
        });
    }
    let mut b = Builder {
        lines,
        limits,
        stack: Vec::new(),
        anchors: HashMap::new(),
        nodes: 0,
        root: None,
    };
    let mut documents = 0;
    for item in Parser::new_from_str(text) {
        let (event, span) = item.map_err(|e| YamlError {
            code: "yaml-syntax",
            message: e.info().to_string(),
            span: b.lines.point(*e.marker()),
            help: tab_help(text, *e.marker()),
        })?;
        match event {
            Event::DocumentStart(_) => {
                documents += 1;
                if documents > 1 {
                    return Err(b.error(
                        "multiple-documents",
                        "a workflow file holds one YAML document; found a second one",
                        span.start,
                    ));
                }
            }
            Event::Scalar(text, style, anchor, tag) => {
                let str_tag = match tag {
                    None => false,
                    Some(t) if t.is_yaml_core_schema() && t.suffix == "str" => true,
                    Some(t) => {
                        return Err(b.error(
                            "yaml-tag",
                            format!(
                                "YAML tags such as `{}{}` are not supported",
                                t.handle, t.suffix
                            ),
                            span.start,
                        ))
                    }
                };
                let forced_str = str_tag || style != ScalarStyle::Plain;
                let value = if forced_str {
                    Value::Str(text.into_owned())
                } else {
                    resolve_plain(&text)
                };
                let node = Node {
                    value,
                    span: b.lines.span(span.start, span.end),
                };
                b.complete(node, anchor, 1)?;
            }
            Event::Alias(id) => {
                let Some((node, size)) = b.anchors.get(&id).cloned() else {
                    return Err(b.error("yaml-alias", "alias to an unknown anchor", span.start));
                };
                let node = Node {
                    span: b.lines.span(span.start, span.end),
                    ..node
                };
                b.complete(node, 0, size)?;
            }
            Event::SequenceStart(anchor, tag) | Event::MappingStart(anchor, tag)
                if tag.is_some() =>
            {
                let _ = anchor;
                return Err(b.error("yaml-tag", "YAML tags are not supported", span.start));
            }
            Event::SequenceStart(anchor, _) => {
                b.open(span.start)?;
                b.stack.push(Frame::Seq {
                    items: Vec::new(),
                    start: span.start,
                    anchor,
                    size: 1,
                });
            }
            Event::MappingStart(anchor, _) => {
                b.open(span.start)?;
                b.stack.push(Frame::Map {
                    entries: Vec::new(),
                    key: None,
                    start: span.start,
                    anchor,
                    size: 1,
                });
            }
            Event::SequenceEnd | Event::MappingEnd => {
                let (value, start, anchor, size) = match b.stack.pop() {
                    Some(Frame::Seq {
                        items,
                        start,
                        anchor,
                        size,
                    }) => (Value::Seq(items), start, anchor, size),
                    Some(Frame::Map {
                        entries,
                        start,
                        anchor,
                        size,
                        ..
                    }) => (Value::Map(entries), start, anchor, size),
                    None => continue,
                };
                // The nodes inside were counted as they completed.
                b.nodes -= size - 1;
                b.complete(
                    Node {
                        value,
                        span: b.lines.span(start, span.end),
                    },
                    anchor,
                    size,
                )?;
            }
            Event::StreamStart | Event::StreamEnd | Event::DocumentEnd | Event::Nothing => {}
        }
    }
    b.root.ok_or_else(|| YamlError {
        code: "empty-document",
        message: "the file is empty: expected a workflow (a mapping with `name` and `steps`)"
            .into(),
        span: b.lines.point(Marker::new(0, 1, 0)),
        help: None,
    })
}

impl Builder<'_> {
    fn error(&self, code: &'static str, message: impl Into<String>, at: Marker) -> YamlError {
        YamlError {
            code,
            message: message.into(),
            span: self.lines.point(at),
            help: None,
        }
    }

    fn open(&mut self, at: Marker) -> Result<(), YamlError> {
        if self.stack.len() >= self.limits.max_depth {
            return Err(self.error(
                "too-deep",
                format!("nesting deeper than {} levels", self.limits.max_depth),
                at,
            ));
        }
        Ok(())
    }

    /// Adds a finished node to its parent, or makes it the document root.
    fn complete(&mut self, node: Node, anchor: usize, size: usize) -> Result<(), YamlError> {
        self.nodes += size;
        if self.nodes > self.limits.max_nodes {
            return Err(YamlError {
                code: "too-many-nodes",
                message: format!(
                    "the document expands to more than {} nodes (aliases count once per use)",
                    self.limits.max_nodes
                ),
                span: node.span,
                help: Some("a workflow never needs this many; is this an alias bomb?".into()),
            });
        }
        if anchor != 0 {
            self.anchors.insert(anchor, (node.clone(), size));
        }
        match self.stack.last_mut() {
            None => self.root = Some(node),
            Some(Frame::Seq {
                items,
                size: parent,
                ..
            }) => {
                *parent += size;
                items.push(node);
            }
            Some(Frame::Map {
                entries,
                key,
                size: parent,
                ..
            }) => match key.take() {
                Some(k) => {
                    *parent += size;
                    entries.push((k, node));
                }
                None => {
                    let name = match node.value {
                        Value::Str(s) => s,
                        Value::Int(i) => i.to_string(),
                        Value::Bool(b) => b.to_string(),
                        Value::Float(f) => f.to_string(),
                        Value::Null | Value::Seq(_) | Value::Map(_) => {
                            return Err(YamlError {
                                code: "bad-key",
                                message: "mapping keys must be plain text".into(),
                                span: node.span,
                                help: None,
                            })
                        }
                    };
                    if let Some((first, _)) = entries.iter().find(|(k, _)| k.name == name) {
                        return Err(YamlError {
                            code: "duplicate-key",
                            message: format!("duplicate key `{name}`"),
                            span: node.span,
                            help: Some(format!("first defined on line {}", first.span.line)),
                        });
                    }
                    *key = Some(Key {
                        name,
                        span: node.span,
                    });
                }
            },
        }
        Ok(())
    }
}

/// YAML 1.2 core schema resolution of a plain scalar.
fn resolve_plain(text: &str) -> Value {
    match text {
        "" | "~" | "null" | "Null" | "NULL" => return Value::Null,
        "true" | "True" | "TRUE" => return Value::Bool(true),
        "false" | "False" | "FALSE" => return Value::Bool(false),
        ".inf" | ".Inf" | ".INF" | "+.inf" | "+.Inf" | "+.INF" => {
            return Value::Float(f64::INFINITY)
        }
        "-.inf" | "-.Inf" | "-.INF" => return Value::Float(f64::NEG_INFINITY),
        ".nan" | ".NaN" | ".NAN" => return Value::Float(f64::NAN),
        _ => {}
    }
    let int = if let Some(hex) = text.strip_prefix("0x") {
        i64::from_str_radix(hex, 16).ok()
    } else if let Some(oct) = text.strip_prefix("0o") {
        i64::from_str_radix(oct, 8).ok()
    } else if text
        .bytes()
        .all(|c| c.is_ascii_digit() || c == b'-' || c == b'+')
    {
        text.parse().ok()
    } else {
        None
    };
    if let Some(i) = int {
        return Value::Int(i);
    }
    let looks_numeric = text
        .bytes()
        .all(|c| c.is_ascii_digit() || matches!(c, b'.' | b'-' | b'+' | b'e' | b'E'))
        && text.bytes().any(|c| c.is_ascii_digit());
    match text.parse::<f64>() {
        Ok(f) if looks_numeric => Value::Float(f),
        _ => Value::Str(text.to_string()),
    }
}

fn tab_help(text: &str, at: Marker) -> Option<String> {
    let line = text.lines().nth(at.line().checked_sub(1)?)?;
    let indent = &line[..line.len() - line.trim_start().len()];
    indent
        .contains('\t')
        .then(|| "YAML indentation must use spaces, not tabs".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(text: &str) -> Result<Node, YamlError> {
        parse(text, Limits::default())
    }

    #[test]
    fn resolves_scalars_by_the_core_schema() {
        let n =
            p("a: 1\nb: 1.5\nc: true\nd: ~\ne: '1'\nf: hello\ng: 0x1f\nh: 1e3\ni: 1.2.3").unwrap();
        assert_eq!(
            n.to_json(),
            serde_json::json!({"a": 1, "b": 1.5, "c": true, "d": null, "e": "1", "f": "hello", "g": 31, "h": 1000.0, "i": "1.2.3"})
        );
    }

    #[test]
    fn keeps_locations_of_keys_and_values() {
        let n = p("name: x\nsteps:\n  - name: a\n    http: {}\n").unwrap();
        let path = DocPath::root().key("steps").index(0).key("http");
        let v = n.get(&path).unwrap();
        assert_eq!((v.span.line, v.span.column), (4, 11));
        let k = n.key_span(&path).unwrap();
        assert_eq!((k.line, k.column), (4, 5));
    }

    #[test]
    fn byte_offsets_follow_multibyte_characters() {
        let text = "description: «é»\nname: x\n";
        let n = p(text).unwrap();
        let v = n.get(&DocPath::root().key("name")).unwrap();
        assert_eq!(&text[v.span.start..v.span.end], "x");
    }

    #[test]
    fn refuses_duplicate_keys_at_the_second() {
        let e = p("a: 1\nb: 2\na: 3\n").unwrap_err();
        assert_eq!(
            (e.code, e.span.line, e.span.column),
            ("duplicate-key", 3, 1)
        );
    }

    #[test]
    fn refuses_alias_bombs_within_the_budget() {
        let mut text = String::from("a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n");
        for i in 1..12 {
            let prev = i - 1;
            text.push_str(&format!("a{i}: &a{i} [*a{prev}, *a{prev}, *a{prev}, *a{prev}, *a{prev}, *a{prev}, *a{prev}, *a{prev}, *a{prev}, *a{prev}]\n"));
        }
        let started = std::time::Instant::now();
        let e = p(&text).unwrap_err();
        assert_eq!(e.code, "too-many-nodes");
        assert!(started.elapsed() < std::time::Duration::from_secs(1));
    }

    #[test]
    fn refuses_deep_nesting_without_recursion() {
        let deep = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
        assert!(p(&deep).is_err());
        let block: String = (0..200).map(|i| format!("{}k:\n", " ".repeat(i))).collect();
        assert_eq!(p(&block).unwrap_err().code, "too-deep");
    }

    #[test]
    fn refuses_empty_and_multi_document_files() {
        assert_eq!(p("").unwrap_err().code, "empty-document");
        assert_eq!(p("# only a comment\n").unwrap_err().code, "empty-document");
        assert_eq!(
            p("a: 1\n---\nb: 2\n").unwrap_err().code,
            "multiple-documents"
        );
    }

    #[test]
    fn explains_tabs() {
        let e = p("steps:\n\t- name: a\n").unwrap_err();
        assert_eq!(e.code, "yaml-syntax");
        assert!(e.help.unwrap().contains("tabs"));
    }

    #[test]
    fn refuses_files_over_the_byte_limit() {
        let big = "a: b\n".repeat(300_000);
        assert_eq!(p(&big).unwrap_err().code, "file-too-large");
    }
}
