//! What must hold after every simulated run, per acknowledged instance.

use std::collections::{BTreeMap, HashMap};

use sagaflow_engine::runtime::Runtime;
use sagaflow_engine::saga::{Event, Phase, ENDINGS};
use uuid::Uuid;

use crate::workflows::Generated;
use crate::world::{Delivery, Downstream};

/// Checks one instance once the run has calmed down; the first broken invariant.
pub async fn check(
    rt: &Runtime,
    id: Uuid,
    wf: &Generated,
    downstream: &Downstream,
) -> Result<(), String> {
    let view = rt.get(id).await.map_err(|e| format!("reading it: {e}"))?;
    // every acknowledged instance ends
    if view.finished_at.is_none() {
        return Err(format!(
            "did not end: {} at {:?}",
            view.status, view.current_step
        ));
    }
    let history = rt
        .history(id, 0)
        .await
        .map_err(|e| format!("its history: {e}"))?;
    // gap-free, one start, one end (one more per operator retry)
    for (i, e) in history.iter().enumerate() {
        if e.revision != i as u64 {
            return Err(format!(
                "history has a gap: revision {} at index {i}",
                e.revision
            ));
        }
    }
    let types: Vec<&str> = history.iter().map(|e| e.event_type.as_str()).collect();
    if types.first() != Some(&"SagaStarted")
        || types.iter().filter(|t| **t == "SagaStarted").count() != 1
    {
        return Err(format!("not exactly one start, first: {types:?}"));
    }
    let endings = types.iter().filter(|t| ENDINGS.contains(t)).count();
    let retried = types.iter().filter(|t| **t == "SagaRetried").count();
    if endings != retried + 1 || !types.last().is_some_and(|t| ENDINGS.contains(t)) {
        return Err(format!(
            "{endings} endings after {retried} retries, last {:?}",
            types.last()
        ));
    }
    let events: Vec<Event> = history
        .iter()
        .map(|r| r.to_event().map_err(|e| format!("undecodable event: {e}")))
        .collect::<Result<_, _>>()?;
    // the instance is the fold of its history, and state_at(N) the fold of its first N + 1 events
    let folded = sagaflow_engine::saga::fold(&events);
    if folded.status() != view.status || folded.events != history.len() as u64 {
        return Err(format!(
            "the fold is {} with {} events, the instance {}",
            folded.status(),
            folded.events,
            view.status
        ));
    }
    let mid = (history.len() as u64 - 1) / 2;
    let at_mid = rt
        .state_at(id, mid)
        .await
        .map_err(|e| format!("state_at: {e}"))?;
    let upto = sagaflow_engine::saga::fold(&events[..=mid as usize]);
    if at_mid.events != mid + 1 || at_mid.status != upto.status() {
        return Err(format!(
            "state_at({mid}) is {} with {} events, the fold {}",
            at_mid.status,
            at_mid.events,
            upto.status()
        ));
    }
    let mut compensated: BTreeMap<(usize, Option<u32>), usize> = BTreeMap::new();
    // per step: how many branches or elements it started with (0: a plain step)
    let mut units: BTreeMap<usize, u32> = BTreeMap::new();
    let mut skipped = Vec::new();
    for e in &events {
        match e {
            Event::StepCompensated { step, index, .. } => {
                *compensated.entry((*step, *index)).or_default() += 1;
            }
            Event::BranchesStarted { step, branches, .. } => {
                units.insert(*step, branches.len() as u32);
            }
            Event::ElementsListed { step, items, .. } => {
                units.insert(*step, items.len() as u32);
            }
            Event::StepSkipped { step, .. } => skipped.push(*step),
            _ => {}
        }
    }
    if let Some((step, n)) = compensated.iter().find(|(_, n)| **n > 1) {
        return Err(format!("step {step:?} compensated {n} times"));
    }

    let mine: Vec<&Delivery> = downstream
        .deliveries
        .iter()
        .filter(|d| d.instance == id)
        .collect();
    // one key per effect, the same on every delivery, different between effects
    let mut keys: HashMap<(usize, Option<u32>, Phase), &str> = HashMap::new();
    for d in &mine {
        let k = keys.entry((d.step, d.unit, d.phase)).or_insert(&d.key);
        if *k != d.key {
            return Err(format!(
                "step {} {:?} {:?} delivered with keys {k} and {}",
                d.step, d.unit, d.phase, d.key
            ));
        }
    }
    let mut seen: HashMap<&str, (usize, Option<u32>, Phase)> = HashMap::new();
    for (effect, key) in &keys {
        if let Some(other) = seen.insert(key, *effect) {
            return Err(format!(
                "effects {other:?} and {effect:?} share the key {key}"
            ));
        }
    }
    // nothing of a step after its compensation began; compensations newest first
    let mut compensation_order = Vec::new();
    for (i, d) in mine.iter().enumerate() {
        match d.phase {
            Phase::Forward => {
                // (a group is undone once all its units have stopped)
                if mine[..i]
                    .iter()
                    .any(|p| p.step == d.step && p.phase == Phase::Compensation)
                {
                    return Err(format!(
                        "step {} {:?} attempt {} handed out after its compensation",
                        d.step, d.unit, d.attempt
                    ));
                }
            }
            Phase::Compensation => {
                if !compensation_order.contains(&d.step) {
                    compensation_order.push(d.step);
                }
            }
        }
        if d.while_paused {
            return Err(format!(
                "step {} attempt {} {:?} handed out while paused",
                d.step, d.attempt, d.phase
            ));
        }
    }
    if compensation_order.windows(2).any(|w| w[0] <= w[1]) {
        return Err(format!(
            "compensations out of order: {compensation_order:?}"
        ));
    }
    let done = |step: usize, unit: Option<u32>, phase: Phase| {
        keys.get(&(step, unit, phase))
            .is_some_and(|k| downstream.done(k))
    };
    // a plain step is its one effect; a group, each of its units'
    let effects = |step: usize| -> Vec<Option<u32>> {
        match units.get(&step) {
            Some(n) => (0..*n).map(Some).collect(),
            None => vec![None],
        }
    };
    // the end its effects' answers imply
    match view.status {
        "completed" => {
            for (step, wait) in wf.waits.iter().enumerate() {
                if wait.is_some() || skipped.contains(&step) {
                    continue;
                }
                for unit in effects(step) {
                    if !done(step, unit, Phase::Forward) {
                        return Err(format!(
                            "completed, but step {step} {unit:?}'s effect never took place"
                        ));
                    }
                }
            }
            if !compensation_order.is_empty() {
                return Err(format!(
                    "completed, yet compensations ran: {compensation_order:?}"
                ));
            }
        }
        "compensated" | "cancelled" => {
            for (step, can) in wf.compensable.iter().enumerate() {
                for unit in effects(step) {
                    if *can
                        && done(step, unit, Phase::Forward)
                        && !done(step, unit, Phase::Compensation)
                    {
                        return Err(format!(
                            "{}, but step {step} {unit:?}'s effect stands uncompensated",
                            view.status
                        ));
                    }
                }
            }
        }
        _ => {} // failed: it waits for an operator
    }
    Ok(())
}
