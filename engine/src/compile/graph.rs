//! The state machine: which transitions each state allows, and where they lead.
//!
//! Failure rules (docs/workflow-language.md, "What happens when a step fails"):
//! a business failure of step `i` means its effect did not happen, so
//! compensation starts at the step before it; a timeout, exhausted retries,
//! a cancel or a deadline leave the outcome unknown, so compensation starts
//! with step `i` itself. Cancels and deadlines no longer apply once the pivot
//! has started: from then on the saga only goes forward.

use std::collections::{HashMap, VecDeque};

use petgraph::graph::{DiGraph, NodeIndex};
use petgraph::Direction;

use crate::dsl::spec::FailureKind;

use super::build::{can_time_out, retries_on};
use super::model::{step_state, Action, Role, State, Step, Transition, Wait};

/// The highest step at or below `upto` that has a compensation.
fn compensate_from(steps: &[Step], upto: Option<usize>) -> Option<usize> {
    let upto = upto?;
    (0..=upto).rev().find(|&j| steps[j].undoes())
}

struct GraphBuilder {
    graph: DiGraph<State, Transition>,
    nodes: HashMap<State, NodeIndex>,
}

impl GraphBuilder {
    fn node(&mut self, s: State) -> NodeIndex {
        *self
            .nodes
            .entry(s)
            .or_insert_with(|| self.graph.add_node(s))
    }

    fn has(&self, from: State, on: Transition) -> bool {
        self.nodes
            .get(&from)
            .is_some_and(|&n| self.graph.edges(n).any(|e| *e.weight() == on))
    }

    fn edge(&mut self, from: State, on: Transition, to: State) {
        let (a, b) = (self.node(from), self.node(to));
        self.graph.add_edge(a, b, on);
    }
}

pub(crate) fn build(steps: &[Step], has_deadline: bool) -> DiGraph<State, Transition> {
    let mut g = GraphBuilder {
        graph: DiGraph::new(),
        nodes: HashMap::new(),
    };
    let start = step_state(steps, 0);
    g.node(start);
    let undo = |from: Option<usize>| {
        compensate_from(steps, from).map_or(State::Compensated, State::Compensating)
    };
    let cancel_to = |from: Option<usize>| {
        compensate_from(steps, from).map_or(State::Cancelled, State::Compensating)
    };

    for (i, step) in steps.iter().enumerate() {
        let here = step_state(steps, i);
        let next = step_state(steps, i + 1);
        let before = i.checked_sub(1);
        let after_pivot = step.role == Role::AfterPivot;
        match &step.action {
            _ if step.is_group() => {
                // Units retry by their own policies; the group fails when one
                // of them fails for good, and is undone from itself: some
                // units may have done their effect.
                g.edge(here, Transition::Succeeded, next);
                let to = if after_pivot {
                    State::Failed
                } else {
                    undo(Some(i))
                };
                for on in [
                    Transition::BusinessFailure,
                    Transition::RetriesExhausted,
                    Transition::Timeout,
                ] {
                    g.edge(here, on, to);
                }
            }
            Action::Wait(Wait::Signal(_)) => {
                g.edge(here, Transition::SignalReceived, next);
                if step.timeout.is_some() {
                    g.edge(
                        here,
                        Transition::Timeout,
                        if after_pivot {
                            State::Failed
                        } else {
                            undo(before)
                        },
                    );
                }
            }
            Action::Wait(Wait::Duration(_)) => g.edge(here, Transition::TimerElapsed, next),
            Action::Parallel => {}
            Action::Http(_) | Action::Task(_) => {
                g.edge(here, Transition::Succeeded, next);
                if step.retry.retries() {
                    g.edge(here, Transition::Retry, here);
                }
                if after_pivot {
                    // Retried until it succeeds; what the policy does not retry needs an operator.
                    for (kind, on) in [
                        (FailureKind::Business, Transition::BusinessFailure),
                        (FailureKind::Transient, Transition::RetriesExhausted),
                        (FailureKind::Timeout, Transition::Timeout),
                    ] {
                        let possible = kind != FailureKind::Timeout || can_time_out(step);
                        if possible && !retries_on(step, kind) {
                            g.edge(here, on, State::Failed);
                        }
                    }
                } else {
                    g.edge(here, Transition::BusinessFailure, undo(before));
                    g.edge(here, Transition::RetriesExhausted, undo(Some(i)));
                    if can_time_out(step) {
                        g.edge(here, Transition::Timeout, undo(Some(i)));
                    }
                }
            }
        }
        if step.when.is_some() {
            g.edge(here, Transition::Skipped, next);
        }
        if step.when.is_some() || step.for_each.is_some() {
            // `when` or `for_each` that cannot be evaluated: nothing of the
            // step happened, so it is undone from the step before.
            if !g.has(here, Transition::BusinessFailure) {
                let to = if after_pivot {
                    State::Failed
                } else {
                    undo(before)
                };
                g.edge(here, Transition::BusinessFailure, to);
            }
        }
        if step.role == Role::Compensable {
            g.edge(here, Transition::Cancel, cancel_to(Some(i)));
            if has_deadline {
                g.edge(here, Transition::Deadline, undo(Some(i)));
            }
        }
        if step.undoes() {
            let comp = State::Compensating(i);
            match compensate_from(steps, before) {
                Some(j) => g.edge(comp, Transition::Compensated, State::Compensating(j)),
                None => {
                    g.edge(comp, Transition::AllCompensated, State::Compensated);
                    g.edge(comp, Transition::CancelCompensated, State::Cancelled);
                }
            }
            if step.retry.retries() || step.branches.iter().any(|b| b.retry.retries()) {
                g.edge(comp, Transition::Retry, comp);
            }
            g.edge(comp, Transition::CompensationFailed, State::Failed);
        }
    }
    g.graph
}

/// States from which no terminal state can be reached.
pub(crate) fn dead_ends(graph: &DiGraph<State, Transition>) -> Vec<State> {
    let mut reaches = vec![false; graph.node_count()];
    let mut queue: VecDeque<NodeIndex> = graph
        .node_indices()
        .filter(|&n| graph[n].is_terminal())
        .collect();
    for n in &queue {
        reaches[n.index()] = true;
    }
    while let Some(n) = queue.pop_front() {
        for pred in graph.neighbors_directed(n, Direction::Incoming) {
            if !reaches[pred.index()] {
                reaches[pred.index()] = true;
                queue.push_back(pred);
            }
        }
    }
    graph
        .node_indices()
        .filter(|n| !reaches[n.index()])
        .map(|n| graph[n])
        .collect()
}
