//! Drawing the machine: Graphviz DOT and Mermaid, compensation edges dashed.

use std::fmt::Write;

use petgraph::visit::EdgeRef;

use super::model::{Action, Machine, State, Transition, Wait};

fn label(m: &Machine, s: State) -> String {
    match s {
        State::Running(i) if !m.steps[i].branches.is_empty() => {
            format!("fork {}", m.steps[i].name)
        }
        State::Running(i) => match &m.steps[i].for_each {
            Some(f) if f.max_concurrency > 1 => {
                format!(
                    "for each {} ({} at a time)",
                    m.steps[i].name, f.max_concurrency
                )
            }
            Some(_) => format!("for each {}", m.steps[i].name),
            None if m.steps[i].when.is_some() => format!("{} (when)", m.steps[i].name),
            None => m.steps[i].name.clone(),
        },
        State::Waiting(i) => format!("wait {}", m.steps[i].name),
        State::Compensating(i) => format!("undo {}", m.steps[i].name),
        other => other.to_string(),
    }
}

fn id(s: State) -> String {
    match s {
        State::Running(i) => format!("run_{i}"),
        State::Waiting(i) => format!("wait_{i}"),
        State::Compensating(i) => format!("undo_{i}"),
        other => other.to_string(),
    }
}

/// Edges that belong to the compensation path (drawn dashed).
fn is_compensation(from: State, to: State) -> bool {
    matches!(
        to,
        State::Compensating(_) | State::Compensated | State::Cancelled | State::Failed
    ) || matches!(from, State::Compensating(_))
}

fn edges(m: &Machine) -> Vec<(State, Transition, State)> {
    let mut out: Vec<_> = m
        .graph
        .edge_references()
        .map(|e| (m.graph[e.source()], *e.weight(), m.graph[e.target()]))
        .collect();
    out.sort_by_key(|(a, t, b)| (*a, *b, t.to_string()));
    out
}

/// The id an edge leaves from: a parallel step succeeds from its join.
fn source_id(m: &Machine, from: State, on: Transition) -> String {
    match from {
        State::Running(i) if on == Transition::Succeeded && !m.steps[i].branches.is_empty() => {
            format!("join_{i}")
        }
        other => id(other),
    }
}

/// The branches of parallel steps, drawn between their fork and join:
/// (branch id, label, fork id, join id).
fn branches(m: &Machine) -> Vec<(String, String, String, String)> {
    m.steps
        .iter()
        .enumerate()
        .flat_map(|(i, s)| {
            s.branches.iter().enumerate().map(move |(b, br)| {
                (
                    format!("run_{i}_{b}"),
                    br.name.clone(),
                    format!("run_{i}"),
                    format!("join_{i}"),
                )
            })
        })
        .collect()
}

/// Graphviz DOT.
pub fn dot(m: &Machine) -> String {
    let mut s = format!(
        "digraph \"{}\" {{\n  rankdir=LR;\n  node [shape=box, style=rounded];\n",
        m.name
    );
    let mut states: Vec<State> = m.graph.node_weights().copied().collect();
    states.sort();
    for st in states {
        let shape = if st.is_terminal() {
            ", shape=doublecircle"
        } else {
            ""
        };
        let color = if matches!(st, State::Compensating(_)) {
            ", color=orange"
        } else {
            ""
        };
        let _ = writeln!(
            s,
            "  {} [label=\"{}\"{shape}{color}];",
            id(st),
            label(m, st)
        );
    }
    let mut joins = Vec::new();
    for (branch, name, fork, join) in branches(m) {
        let _ = writeln!(s, "  {branch} [label=\"{name}\"];");
        let _ = writeln!(s, "  {fork} -> {branch};");
        let _ = writeln!(s, "  {branch} -> {join};");
        if !joins.contains(&join) {
            let _ = writeln!(s, "  {join} [label=\"join\", shape=box, height=0.2];");
            joins.push(join);
        }
    }
    for (a, t, b) in edges(m) {
        let style = if is_compensation(a, b) {
            ", style=dashed, color=orange"
        } else {
            ""
        };
        let _ = writeln!(
            s,
            "  {} -> {} [label=\"{t}\"{style}];",
            source_id(m, a, t),
            id(b)
        );
    }
    s.push_str("}\n");
    s
}

/// Mermaid `stateDiagram-v2`.
pub fn mermaid(m: &Machine) -> String {
    let mut s = String::from("stateDiagram-v2\n");
    let mut states: Vec<State> = m.graph.node_weights().copied().collect();
    states.sort();
    for st in &states {
        let _ = writeln!(s, "    {}: {}", id(*st), label(m, *st));
    }
    let mut joins = Vec::new();
    for (branch, name, fork, join) in branches(m) {
        if !joins.contains(&join) {
            let _ = writeln!(s, "    state {join} <<join>>");
            joins.push(join.clone());
        }
        let _ = writeln!(s, "    {branch}: {name}");
        let _ = writeln!(s, "    {fork} --> {branch}");
        let _ = writeln!(s, "    {branch} --> {join}");
    }
    let _ = writeln!(s, "    [*] --> {}", id(m.start()));
    for (a, t, b) in edges(m) {
        let marker = if is_compensation(a, b) {
            " (compensation)"
        } else {
            ""
        };
        let _ = writeln!(s, "    {} --> {}: {t}{marker}", source_id(m, a, t), id(b));
    }
    for st in states.iter().filter(|s| s.is_terminal()) {
        let _ = writeln!(s, "    {} --> [*]", id(*st));
    }
    for st in states
        .iter()
        .filter(|s| matches!(s, State::Compensating(_)))
    {
        let _ = writeln!(s, "    class {} compensation", id(*st));
    }
    s.push_str("    classDef compensation fill:#fde2c8,stroke:#d9822b\n");
    s
}

/// The graph as JSON: states and transitions.
pub fn json(m: &Machine) -> serde_json::Value {
    let states: Vec<_> = m
        .graph
        .node_weights()
        .map(|s| {
            let mut state = serde_json::json!({"id": id(*s), "label": label(m, *s), "terminal": s.is_terminal()});
            if let State::Waiting(i) = s {
                if let Action::Wait(Wait::Signal(name)) = &m.steps[*i].action {
                    state["signal"] = name.clone().into();
                }
            }
            state
        })
        .collect();
    let transitions: Vec<_> = edges(m)
        .into_iter()
        .map(|(a, t, b)| serde_json::json!({"from": id(a), "on": t, "to": id(b), "compensation": is_compensation(a, b)}))
        .collect();
    let branches: Vec<_> = branches(m)
        .into_iter()
        .map(|(id, label, fork, join)| serde_json::json!({"id": id, "label": label, "fork": fork, "join": join}))
        .collect();
    serde_json::json!({"workflow": m.name, "version": m.version, "start": id(m.start()), "states": states, "transitions": transitions, "branches": branches})
}
