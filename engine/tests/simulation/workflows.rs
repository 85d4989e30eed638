//! Workflows for the simulation: generated from the seed (random step
//! counts, pivots, waits and retry policies), all of whose effects are
//! worker tasks, so the simulated downstream sees every one.

use std::fmt::Write;

/// A generated workflow: its YAML, and per step the signal it waits for
/// (`None` for a task step).
pub struct Generated {
    pub name: String,
    pub yaml: String,
    pub waits: Vec<Option<String>>,
    /// Per step: whether it has a compensation task.
    pub compensable: Vec<bool>,
}

pub fn generate(rng: &mut fastrand::Rng, name: &str) -> Generated {
    let steps = rng.usize(1..=5);
    let pivot = (steps >= 2 && rng.bool()).then(|| rng.usize(0..steps));
    let mut yaml = format!("name: {name}\n");
    if rng.u32(0..10) < 3 {
        let _ = writeln!(yaml, "deadline: {}m", rng.u32(2..10));
    }
    yaml.push_str("steps:\n");
    let mut waits = Vec::new();
    let mut compensable = Vec::with_capacity(steps);
    for i in 0..steps {
        let before_pivot = pivot.is_none_or(|p| i < p);
        let after_pivot = pivot.is_some_and(|p| i > p);
        let _ = writeln!(yaml, "  - name: s{i}");
        if before_pivot && rng.u32(0..100) < 20 {
            let signal = format!("go{i}");
            let _ = writeln!(yaml, "    wait: {{ signal: {signal} }}");
            let _ = writeln!(yaml, "    timeout: {}s", [20, 60, 300][rng.usize(0..3)]);
            waits.push(Some(signal));
            compensable.push(false);
            continue;
        }
        waits.push(None);
        let mut undo = false;
        let _ = writeln!(yaml, "    task: {{ queue: q{} }}", i % 2);
        let _ = writeln!(yaml, "    timeout: {}s", [1, 3, 10][rng.usize(0..3)]);
        if pivot == Some(i) {
            yaml.push_str("    pivot: true\n");
        }
        if after_pivot {
            let _ = writeln!(
                yaml,
                "    retry: {{ max_attempts: unlimited, backoff: {{ initial: {}ms, max: 2s }} }}",
                rng.u32(1..10) * 100
            );
        } else {
            let _ = writeln!(
                yaml,
                "    retry: {{ max_attempts: {}, backoff: {{ initial: {}ms, max: 2s }} }}",
                rng.u32(1..=4),
                rng.u32(1..10) * 100
            );
        }
        if before_pivot {
            if rng.u32(0..100) < 80 {
                yaml.push_str("    compensate:\n      task: { queue: undo }\n");
                undo = true;
            } else {
                yaml.push_str("    compensate: none\n");
            }
        }
        compensable.push(undo);
    }
    Generated {
        name: name.to_string(),
        yaml,
        waits,
        compensable,
    }
}
