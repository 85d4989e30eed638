//! Workflows for the simulation: generated from the seed (random step
//! counts, pivots, waits, retry policies, parallel branches, for-each
//! elements and `when` conditions), all of whose effects are worker tasks,
//! so the simulated downstream sees every one.

use std::fmt::Write;

/// A generated workflow: its YAML, and per step the signal it waits for
/// (`None` for a task step).
#[derive(Clone)]
pub struct Generated {
    pub name: String,
    /// The steps' names, in order.
    pub steps: Vec<String>,
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
        let group = if pivot == Some(i) {
            99
        } else {
            rng.u32(0..100)
        };
        if group < 12 {
            // a condition that holds for about half of the instances
            yaml.push_str("    when: ${ .instance.id | test(\"[0-7]$\") }\n");
        }
        if (12..24).contains(&group) {
            let _ = writeln!(yaml, "    for_each: ${{ [range({})] }}", rng.u32(0..5));
            let _ = writeln!(yaml, "    max_concurrency: {}", rng.u32(1..4));
        }
        if (24..36).contains(&group) {
            yaml.push_str("    parallel:\n");
            let undo = before_pivot && rng.u32(0..100) < 80;
            for b in 0..rng.u32(2..4) {
                let _ = writeln!(yaml, "      - name: s{i}b{b}");
                let _ = writeln!(yaml, "        task: {{ queue: q{} }}", b % 2);
                let _ = writeln!(yaml, "        timeout: {}s", [1, 3, 10][rng.usize(0..3)]);
                let _ =
                    writeln!(
                    yaml,
                    "        retry: {{ max_attempts: {}, backoff: {{ initial: {}ms, max: 2s }} }}",
                    if after_pivot { "unlimited".to_string() } else { rng.u32(1..=3).to_string() },
                    rng.u32(1..10) * 100
                );
                if undo {
                    yaml.push_str("        compensate:\n          task: { queue: undo }\n");
                } else if before_pivot {
                    yaml.push_str("        compensate: none\n");
                }
            }
            compensable.push(undo);
            continue;
        }
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
        steps: (0..steps).map(|i| format!("s{i}")).collect(),
        yaml,
        waits,
        compensable,
    }
}

/// The example workflows of `workflows/`, with every effect made a worker
/// task (HTTP calls need sockets, which the simulation has none of) and no
/// input schema (the simulation starts instances with `{}`): the same
/// steps, waits, pivots, retries, timeouts and deadlines.
pub fn examples() -> Vec<Generated> {
    use serde_json::{json, Value};
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../workflows");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .expect("the example workflows")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .filter(|p| !sagaflow_engine::testing::is_test_file(p))
        .collect();
    files.sort();
    let as_task = |action: &mut Value, queue: &str| {
        let Some(map) = action.as_object_mut() else {
            return;
        };
        if map.remove("http").is_some() {
            map.insert("task".into(), json!({ "queue": queue }));
        } else if let Some(task) = map.get_mut("task").and_then(Value::as_object_mut) {
            task.insert("queue".into(), json!(queue));
        }
    };
    files
        .iter()
        .map(|path| {
            let text = std::fs::read_to_string(path).expect("readable");
            let tree = sagaflow_engine::dsl::yaml::parse(&text, Default::default())
                .expect("an example parses");
            let mut doc = tree.to_json();
            doc.as_object_mut().expect("a mapping").remove("input");
            let mut waits = Vec::new();
            let mut compensable = Vec::new();
            let steps = doc["steps"].as_array_mut().expect("steps");
            for (i, step) in steps.iter_mut().enumerate() {
                as_task(step, ["q0", "q1"][i % 2]);
                if let Some(c) = step.get_mut("compensate") {
                    as_task(c, "undo");
                }
                let mut undoes = step["compensate"].is_object();
                for (b, branch) in step["parallel"]
                    .as_array_mut()
                    .into_iter()
                    .flatten()
                    .enumerate()
                {
                    as_task(branch, ["q0", "q1"][b % 2]);
                    if let Some(c) = branch.get_mut("compensate") {
                        as_task(c, "undo");
                        undoes |= c.is_object();
                    }
                }
                waits.push(step["wait"]["signal"].as_str().map(str::to_string));
                compensable.push(undoes);
            }
            let names = steps
                .iter()
                .map(|s| s["name"].as_str().expect("a step name").to_string())
                .collect();
            Generated {
                name: doc["name"].as_str().expect("a name").to_string(),
                steps: names,
                // JSON is YAML
                yaml: doc.to_string(),
                waits,
                compensable,
            }
        })
        .collect()
}
